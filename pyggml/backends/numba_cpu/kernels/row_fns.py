"""Row (de)quantizers compiled once each, called by the kernels through a table of addresses.

GET_ROWS, SET_ROWS and CPY convert rows of ~17 types. Numba links a callee's LLVM code into
each caller and optimizes and compiles it again there, so every kernel that called a row
function paid its compile again: one template child per type (34 for GET_ROWS/SET_ROWS)
each compiled the whole kernel body, and the K-quant ones every K-quant quantizer
(kq_nb.quantize_blocks is one function over all of them), up to 30 s CPU for one child.

Here each type's row function is its own cfunc `int64(int64 src, int64 dst, int64 n)` (0,
or ERR_RAISED), compiled or loaded from the disk cache when a node first needs it, and its
address goes in TABLE. Kernels compile once for every type and call
`dequantize_row_at(t, src, dst, n)` / `quantize_row_at(...)`: a load from TABLE and an
indirect call, one per row. Kernel code reaches TABLE through an external LLVM global that
the JIT resolves when the code is loaded (llvmlite's add_symbol), so the machine code that
Numba caches holds no address of this process.

`row_kernel_template` registers such a kernel: a template whose per-type children (keyed
and named as kernels/__init__.py's templates, 'OP:name[q4_k]') share the one compiled body
and differ in the row functions their `address` makes ready first.
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Callable
from typing import Optional

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ....quants import kq_nb as kq
from ....quants import nb as qnb
from ....types import TRAITS
from ....types import GGMLType
from ..desc import ERR_EXCEPTION
from ..desc import ERR_UNSUPPORTED
from ..desc import set_error
from ..intrinsics import f32_array
from ..intrinsics import i32_array
from ..intrinsics import u8_array
from . import KERNELS
from . import Kernel
from . import _const_name
from . import add_kernel
from . import cfunc_in_disk_cache

DEQ, QUANT = 0, 1
ERR_RAISED = 2                              # a row function raised (an allocation failed)
N_TYPES = max(int(t) for t in GGMLType) + 1
TABLE = np.zeros(2 * N_TYPES, np.int64)     # [kind * N_TYPES + type] -> row function address
_SYMBOL = "pyggml_row_fn_table"
llvm.add_symbol(_SYMBOL, TABLE.ctypes.data)

ROW_SIG = types.int64(types.int64, types.int64, types.int64)

# the row functions: fn(src, dst, n) over arrays (quants.nb / kq_nb)
_DEQ = {GGMLType.F32: qnb.dequantize_row_f32, GGMLType.F16: qnb.dequantize_row_f16,
        GGMLType.BF16: qnb.dequantize_row_bf16, GGMLType.Q4_0: qnb.dequantize_row_q4_0,
        GGMLType.Q4_1: qnb.dequantize_row_q4_1, GGMLType.Q5_0: qnb.dequantize_row_q5_0,
        GGMLType.Q5_1: qnb.dequantize_row_q5_1, GGMLType.Q8_0: qnb.dequantize_row_q8_0,
        GGMLType.Q8_1: qnb.dequantize_row_q8_1, GGMLType.Q2_K: kq.dequantize_row_q2_K,
        GGMLType.Q3_K: kq.dequantize_row_q3_K, GGMLType.Q4_K: kq.dequantize_row_q4_K,
        GGMLType.Q5_K: kq.dequantize_row_q5_K, GGMLType.Q6_K: kq.dequantize_row_q6_K,
        GGMLType.Q8_K: kq.dequantize_row_q8_K, GGMLType.IQ4_NL: kq.dequantize_row_iq4_nl,
        GGMLType.IQ4_XS: kq.dequantize_row_iq4_xs, GGMLType.MXFP4: qnb.dequantize_row_mxfp4}
# quants.nb.quantize_row's rows (ggml-cpu's from_float: Q8_0/Q8_1 its SIMD quantizers)
_Q_ROW = {GGMLType.F32: qnb.quantize_row_f32, GGMLType.F16: qnb.quantize_row_f16,
          GGMLType.BF16: qnb.quantize_row_bf16, GGMLType.Q4_0: qnb.quantize_row_q4_0,
          GGMLType.Q4_1: qnb.quantize_row_q4_1, GGMLType.Q5_0: qnb.quantize_row_q5_0,
          GGMLType.Q5_1: qnb.quantize_row_q5_1, GGMLType.Q8_0: qnb.quantize_row_q8_0_cpu,
          GGMLType.Q8_1: qnb.quantize_row_q8_1_cpu, GGMLType.MXFP4: qnb.quantize_row_mxfp4}
# ... and the K-quants and IQ4 as kq_nb.quantize_row does them: quantize_blocks(t, src, dst,
# 1, n, no weights, ntry), IQ4_NL without the scale search (ggml's quantize_row_iq4_nl_ref)
_Q_BLOCKS = {GGMLType.Q2_K: 7, GGMLType.Q3_K: 7, GGMLType.Q4_K: 7, GGMLType.Q5_K: 7,
             GGMLType.Q6_K: 7, GGMLType.IQ4_XS: 7, GGMLType.IQ4_NL: -1}
# quantize_blocks inlined (Numba IR) into each type's row function, where its type argument
# is a constant: the other types' branches are pruned before typing, so a row function
# compiles its own type's quantizer only, not all seven
_quantize_blocks_inline = numba.njit(nogil=True, error_model="numpy",
                                     inline="always")(kq.quantize_blocks.py_func)


@numba.njit(nogil=True, cache=True)
def _copy_f32(src, dst, n):
    d = i32_array(dst, n)                 # as bits: NaN payloads kept
    s = i32_array(src, n)
    for i in range(n):
        d[i] = s[i]


def has_row_fn(kind: int, t) -> bool:
    return int(t) in (_DEQ if kind == DEQ else _Q_ROW.keys() | _Q_BLOCKS.keys())


def _source(kind: int, t: int) -> tuple:
    """(name, source, globals) of type t's row function."""
    tt = GGMLType(t)
    nbytes = f"n // {TRAITS[tt].blck_size} * {TRAITS[tt].type_size}"
    if tt == GGMLType.F32:           # a byte copy (quants.nb's array-slice copy: ~5 s compile)
        name, fn = f"{'de' if kind == DEQ else ''}quantize_row_f32", _copy_f32
        call = "_fn(src, dst, n)"
    elif kind == DEQ:
        name, fn = f"dequantize_row_{tt.name.lower()}", _DEQ[tt]
        call = f"_fn(u8_array(src, {nbytes}), f32_array(dst, n), n)"
    elif tt in _Q_ROW:
        name, fn = f"quantize_row_{tt.name.lower()}", _Q_ROW[tt]
        call = f"_fn(f32_array(src, n), u8_array(dst, {nbytes}), n)"
    else:
        name, fn = f"quantize_row_{tt.name.lower()}", _quantize_blocks_inline
        call = (f"_fn({t}, f32_array(src, n), u8_array(dst, {nbytes}), 1, n, "
                f"np.zeros(0, np.float32), {_Q_BLOCKS[tt]})")
    src = (f"def {name}(src, dst, n):\n"
           f"    try:\n"
           f"        {call}\n"
           f"    except Exception:\n"
           f"        return {ERR_RAISED}\n"
           f"    return 0\n")
    return name, src, {"_fn": fn, "u8_array": u8_array, "f32_array": f32_array, "np": np,
                       "__name__": __name__}


_lock = threading.RLock()
_cfuncs: dict = {}          # (kind, type) -> the row function's cfunc


def _pyfunc(kind: int, t: int):
    name, src, ns = _source(kind, t)
    exec(compile(src, inspect.getfile(_source), "exec"), ns)   # cached next to this module
    return ns[name]


def row_cfunc(kind: int, t: int):
    """Type t's row function (compiled, or loaded from the disk cache, on first use), its
    address in TABLE. KeyError when t has none."""
    key = (kind, int(t))
    cf = _cfuncs.get(key)
    if cf is None:
        with _lock:
            cf = _cfuncs.get(key)
            if cf is None:
                cf = numba.cfunc(ROW_SIG, cache=True, nogil=True,
                                 error_model="numpy")(_pyfunc(*key))
                TABLE[kind * N_TYPES + key[1]] = cf.address
                _cfuncs[key] = cf
    return cf


def ready(rows) -> bool:
    """Make the (kind, type) row functions ready; True when none had to compile (all were
    loaded already or came from the disk cache). Types without a row function are skipped
    (their kernels report ERR_UNSUPPORTED)."""
    compiled = False
    for kind, t in rows:
        if has_row_fn(kind, t) and (kind, t) not in _cfuncs:
            compiled |= not row_cfunc(kind, t).cache_hits
    return not compiled


def row_in_disk_cache(kind: int, t: int) -> Optional[bool]:
    """Would type t's row function load from the disk cache (Kernel.in_disk_cache's check)?"""
    return cfunc_in_disk_cache(_pyfunc(kind, t), ROW_SIG, {"nogil": True, "error_model": "numpy"})


# --- the kernels' side -------------------------------------------------------------------------

_I64 = ir.IntType(64)
_ROW_FNTY = ir.FunctionType(_I64, [_I64, _I64, _I64])


@intrinsic
def _table_at(typingctx, i):
    """TABLE[i], read through the external global the JIT binds to TABLE."""
    def codegen(context, builder, sig, args):
        mod = builder.module
        g = mod.globals.get(_SYMBOL)
        if g is None:
            g = ir.GlobalVariable(mod, ir.ArrayType(_I64, len(TABLE)), _SYMBOL)
            g.linkage = "external"
        i64 = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.load(builder.gep(g, [ir.Constant(_I64, 0), i64]))
    return types.int64(i), codegen


@intrinsic
def _call_row(typingctx, fn, src, dst, n):
    """Call the row function at address fn."""
    def codegen(context, builder, sig, args):
        a = [context.cast(builder, v, t, types.int64) for t, v in zip(sig.args, args)]
        return builder.call(builder.inttoptr(a[0], _ROW_FNTY.as_pointer()), a[1:])
    return types.int64(fn, src, dst, n), codegen


_jit = numba.njit(nogil=True, cache=True)


@_jit
def _call(kind, t, src, dst, n):
    if t < 0 or t >= N_TYPES:
        return ERR_UNSUPPORTED
    fn = _table_at(kind * N_TYPES + t)
    if fn == 0:
        return ERR_UNSUPPORTED
    return _call_row(fn, src, dst, n)


@_jit
def dequantize_row_at(t, src, dst, n):
    """n values of type t at address src -> float32 at dst: 0, ERR_UNSUPPORTED (no row
    function ready for t) or ERR_RAISED."""
    return _call(DEQ, t, src, dst, n)


@_jit
def quantize_row_at(t, src, dst, n):
    """n float32 at address src -> type t's bytes at dst: 0, ERR_UNSUPPORTED or ERR_RAISED."""
    return _call(QUANT, t, src, dst, n)


@_jit
def row_error(desc, rc):
    """A row function's non-zero result as the node's error."""
    set_error(desc, ERR_EXCEPTION if rc == ERR_RAISED else ERR_UNSUPPORTED)


# --- kernels whose nodes need row functions -----------------------------------------------------

@dataclass(eq=False)
class RowFnChild(Kernel):
    """A template child sharing `body`'s cfunc; its `rows` ((kind, type) pairs) are made
    ready before its address is given out."""
    body: Optional[Kernel] = None
    rows: tuple = ()

    def guarded(self) -> tuple:
        return self.body.guarded()

    @property
    def cfunc(self):
        if self._cfunc is None:
            t0 = time.perf_counter()
            loaded = ready(self.rows)
            fresh = not self.body.compiled
            cf = self.body.cfunc
            self.compile_seconds = time.perf_counter() - t0
            self.from_cache = loaded and (not fresh or self.body.from_cache)
            self._cfunc = cf
        return self._cfunc

    def in_disk_cache(self) -> Optional[bool]:
        states = [self.body.in_disk_cache()] + [row_in_disk_cache(k, t) for k, t in self.rows
                                                  if has_row_fn(k, t)]
        if False in states:
            return False
        return None if None in states else True


@dataclass(eq=False)
class RowFnTemplate(Kernel):
    """A template (spec, common, keys 'OP:name[...]') compiled once: `needs(consts)` gives
    the (kind, type) row functions a child for those constants calls."""
    needs: Optional[Callable] = None
    _body: Optional[Kernel] = field(default=None, repr=False)

    def child(self, consts) -> Kernel:
        key = tuple(int(c) for c in consts)
        k = self._children.get(key)
        if k is None:
            with _lock:
                k = self._children.get(key)
                if k is None:
                    if self._body is None:
                        self._body = Kernel(self.op, self.pyfunc, self.supports, self.n_tasks,
                                            self.work_size, name=self.name,
                                            private_work=self.private_work)
                    name = f"{self.name}[{','.join(_const_name(c) for c in key)}]"
                    k = self._children[key] = RowFnChild(
                        self.op, self.pyfunc, self.supports, self.n_tasks, self.work_size,
                        name=name, private_work=self.private_work, body=self._body,
                        rows=tuple(self.needs(key)))
        return k


def row_kernel_template(op, needs: Callable, spec: Callable, supports: Callable = None,
                        n_tasks: Callable = None, work_size: Callable = None, common=(),
                        private_work: Callable = None):
    """Decorator: register `def k(desc, ith, nth)` (the row types read from the descriptor)
    as op's RowFnTemplate; `op` may be a tuple of ops sharing it (CONT, DUP, CPY)."""
    ops = (op,) if isinstance(op, str) else tuple(op)

    def deco(fn):
        k = RowFnTemplate(ops[0].upper(), fn, supports or (lambda node: True), n_tasks,
                          work_size, spec=spec,
                          common=tuple(tuple(int(x) for x in c) for c in common),
                          private_work=private_work, needs=needs)
        for name in ops:
            add_kernel(KERNELS, k, name)
        fn.kernel = k
        return fn
    return deco
