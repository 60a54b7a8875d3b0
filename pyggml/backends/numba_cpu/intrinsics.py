"""Low-level Numba intrinsics for the CPU backend, built directly with llvmlite.

What the executor and the kernels need that Numba does not offer:
  - atomics on an int64 address: `atomic_add` (returns the old value), `atomic_load`,
    `atomic_store`, `atomic_cas` (all sequentially consistent);
  - typed pointers from an int64 address (`ptr_of(addr, np.float32)`) and NumPy views of
    raw memory (`f32_array(addr, n)`, `u8_array`, `u16_array`, `i32_array`, `i64_array`);
  - `call_kernel(addr, desc_addr, ith, nth)`: an indirect call of a kernel's cfunc address
    (type `void(int64*, int64, int64)`), which is how one executor loop runs any node;
  - `cpu_pause()`: the spin-wait hint (x86 PAUSE; a no-op elsewhere).

All of them are plain LLVM instructions: they compile to a single machine instruction or
an indirect call, inline into the caller, and are usable in nogil code and in cfuncs.
Addresses are int64 (Python ints from `ndarray.ctypes.data` or `Tensor.data_ptr`).
"""
from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.core import types
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_SEQ_CST = "seq_cst"
_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _int64_arg(t) -> bool:
    return isinstance(t, types.Integer)


def _as_i64(context, builder, ty, val):
    """Any integer argument widened (sign/zero per its type) to i64."""
    return context.cast(builder, val, ty, types.int64)


def _i64_ptr(context, builder, ty, addr):
    return builder.inttoptr(_as_i64(context, builder, ty, addr), _I64.as_pointer())


# ---------------------------------------------------------------------------
# atomics on int64 words

def _atomic(name, n_args, ret, emit, doc):
    """An intrinsic name(addr, v1, ..) on the int64 word at addr: emit(builder, ptr, *values)
    with every value widened to i64 (seq_cst, one instruction)."""
    def typer(typingctx, *args_t):
        if not all(_int64_arg(t) for t in args_t):
            return None

        def codegen(context, builder, sig, args):
            ptr = _i64_ptr(context, builder, sig.args[0], args[0])
            vals = [_as_i64(context, builder, t, v) for t, v in zip(sig.args[1:], args[1:])]
            out = emit(builder, ptr, *vals)
            return context.get_dummy_value() if ret == types.none else out
        return ret(*args_t), codegen
    # Numba's intrinsics need explicit parameters (no *args)
    params = ", ".join(["addr"] + [f"v{i}" for i in range(1, n_args)])
    ns = {"typer": typer}
    exec(f"def {name}(typingctx, {params}):\n    return typer(typingctx, {params})\n", ns)
    ns[name].__doc__ = doc
    return intrinsic(ns[name])


atomic_add = _atomic("atomic_add", 2, types.int64,
                     lambda b, ptr, v: b.atomic_rmw("add", ptr, v, _SEQ_CST),
                     "*addr += val atomically (seq_cst); returns the previous value.")
atomic_load = _atomic("atomic_load", 1, types.int64,
                      lambda b, ptr: b.load_atomic(ptr, _SEQ_CST, 8),
                      "Atomic (seq_cst) read of the int64 at addr.")
atomic_store = _atomic("atomic_store", 2, types.none,
                       lambda b, ptr, v: b.store_atomic(v, ptr, _SEQ_CST, 8),
                       "Atomic (seq_cst) write of an int64 at addr.")
atomic_cas = _atomic("atomic_cas", 3, types.int64,
                     lambda b, ptr, e, n: b.extract_value(b.cmpxchg(ptr, e, n, _SEQ_CST, _SEQ_CST), 0),
                     "Compare-and-swap: if *addr == expected then *addr = new. Returns the old value.")


# ---------------------------------------------------------------------------
# typed pointers and array views of raw addresses

@intrinsic
def ptr_of(typingctx, addr, dtype):
    """A typed pointer (CPointer(dtype)) to the int64 address addr: `ptr_of(a, np.float32)`."""
    if not _int64_arg(addr):
        return None
    if isinstance(dtype, types.NumberClass):
        elem = dtype.instance_type
    elif isinstance(dtype, types.DType):
        elem = dtype.dtype
    else:
        return None
    rtype = types.CPointer(elem)

    def codegen(context, builder, sig, args):
        a = _as_i64(context, builder, sig.args[0], args[0])
        return builder.inttoptr(a, context.get_value_type(rtype))
    return rtype(addr, dtype), codegen


def _view(dtype, doc=""):
    """`name(addr, n)`: a 1-D NumPy view of n dtype values at addr (no copy, no bounds beyond
    n). Compiled into the kernels that call it (they are cached; these are one instruction)."""
    def view(addr, n):
        return numba.carray(ptr_of(addr, dtype), n)
    view.__doc__ = doc
    return numba.njit(nogil=True)(view)


f32_array = _view(np.float32)
f64_array = _view(np.float64)
u8_array = _view(np.uint8)
i8_array = _view(np.int8)
u16_array = _view(np.uint16, "F16 / BF16 storage: convert with pyggml.quants.nb (f16_to_f32...).")
i16_array = _view(np.int16)
i32_array = _view(np.int32)
i64_array = _view(np.int64)


# ---------------------------------------------------------------------------
# indirect kernel call and spin hint

_KERNEL_FNTY = ir.FunctionType(ir.VoidType(), [_I64.as_pointer(), _I64, _I64])


@intrinsic
def call_kernel(typingctx, addr, desc_addr, ith, nth):
    """Call the `void(int64* desc, int64 ith, int64 nth)` function at address addr."""
    if not all(_int64_arg(a) for a in (addr, desc_addr, ith, nth)):
        return None

    def codegen(context, builder, sig, args):
        a = [_as_i64(context, builder, t, v) for t, v in zip(sig.args, args)]
        fn = builder.inttoptr(a[0], _KERNEL_FNTY.as_pointer())
        desc = builder.inttoptr(a[1], _I64.as_pointer())
        builder.call(fn, [desc, a[2], a[3]])
        return context.get_dummy_value()
    return types.none(addr, desc_addr, ith, nth), codegen


@intrinsic
def cpu_pause(typingctx):
    """Spin-wait hint: x86 PAUSE (lets the sibling hyper-thread run); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if _IS_X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


_YIELD_SYMBOL = "SwitchToThread" if platform.system() == "Windows" else "sched_yield"


@intrinsic
def cpu_yield(typingctx):
    """Give the core away (sched_yield; SwitchToThread on Windows): the spin barrier's
    fallback when threads outnumber cores, so a spinning thread does not starve a worker."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            _YIELD_SYMBOL)
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


_HAVE_GETCPU = platform.system() == "Linux"


@intrinsic
def current_cpu(typingctx):
    """The CPU this thread runs on (glibc sched_getcpu: a few ns with rseq), or -1 where
    unknown. The executor uses it to notice threads that share a core."""
    def codegen(context, builder, sig, args):
        if not _HAVE_GETCPU:
            return ir.Constant(_I64, -1)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_getcpu")
        return builder.sext(builder.call(fn, []), _I64)
    return types.int64(), codegen


@intrinsic
def bits_to_f32(typingctx, w):
    """Reinterpret the low 32 bits of an integer as a float32 (op_params floats)."""
    if not _int64_arg(w):
        return None

    def codegen(context, builder, sig, args):
        v = _as_i64(context, builder, sig.args[0], args[0])
        return builder.bitcast(builder.trunc(v, ir.IntType(32)), ir.FloatType())
    return types.float32(w), codegen
