"""The Numba backend's kernel table: op name -> KernelEntry (one or more kernel variants).

Adding kernels is adding a file to this package (every module here is imported, like the op
families of pyggml.ops). A kernel is a plain Python function over the node descriptor:

    from ..desc import DST, SRC0, t_addr, t_ne, t_nb, t_type, row_range, set_error
    from ..intrinsics import f32_array
    from . import kernel

    @kernel("SCALE", supports=lambda n: n.type == F32 and n.src[0].type == F32)
    def scale_f32(desc, ith, nth):
        ...   # rows split by ith/nth as ggml does; report failures with set_error(desc, code)

It is compiled lazily (first use) as `numba.cfunc(void(int64*, int64, int64), cache=True)`
around a guard that turns an exception inside the kernel into set_error(desc,
ERR_EXCEPTION): one signature per kernel, cached on disk next to the module (a warm start
loads it in ~10 ms), its `.address` goes into the node table the executor walks. Several
variants may be registered for one op (e.g. per type family, in different files); the first
whose `supports(node)` is true runs the node. A family of one-line kernels over one row loop
specialised on a constant code is generated from a table with `row_kernel` (elementwise.py).
`unsupported("OP", reason)` records an explicit "no kernel" entry (for coverage reports).

A kernel whose cold compile is dominated by code for types the graph does not use is a
template: `@kernel("OP", ..., spec=fn)` on `def k(desc, ith, nth, t0, t1...)`, where
`spec(node)` gives the node's constants (type ids, -1 for none). `select(node)` returns the
child kernel for those constants, generated on first use as `def k__8(desc, ith, nth):
_k(desc, ith, nth, 8)`: the body is inlined with the constants as literal arguments, so
per-type branches compile only the code of those types. Each child compiles the shared body
again (flash attention, tried, did not pay). GET_ROWS, SET_ROWS and CPY's quantized copies
are templates of another kind (row_fns.RowFnTemplate): one body for every type, whose
children share it and make their types' separately compiled row functions ready. A
child's key is 'OP:k[q8_0]'; `find(key)` makes it from the key (warm-up workers); `common`
lists the constants `pyggml warmup --all` compiles.

A variant carries its planning rules (backend facts, as ggml-cpu.c keeps them, never the
op): `n_tasks(node, n_threads)` (threads sharing the node; all of them when omitted;
`rows_n_tasks` and `one_task` are the common ones) and `work_size(node, n_threads)` (bytes
of the shared work buffer; none when omitted; the plan takes the max over the nodes).

The verdict contract: a variant's `supports`, `spec`, `n_tasks`, `work_size` and
`private_work` are pure functions of the node's signature — op, type, ne, nb, op_params,
and each source's type, ne and nb (None when absent) — and the thread count; never data,
names, buffers, addresses, views, flags, or a source's op or sources, and no mutable state
outside the kernel table. They are handed a `verdicts.NodeSig`, which holds only those
fields (anything else is an AttributeError), so the backend may keep them per signature
(`verdicts.Verdicts`: one answer for a decoder's 30 layers). Every change to a table
(add_kernel, unsupported, an entry's variants edited, a variant's verdict set) bumps
`verdicts.EPOCH`, which empties those memos. tests/sched/test_verdicts.py holds every
registered verdict to it.

A cold compile is slow (seconds per kernel, about a minute for a model's set), so
`Kernel.in_disk_cache()` tells without compiling whether the cfunc would load from Numba's
disk cache, and `..warmup` compiles cold kernels in parallel processes (`pyggml warmup`).
"""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Callable
from typing import Optional

import numba
from numba import types

from ....errors import ComputeError
from ..desc import ERR_EXCEPTION
from ..desc import set_error
from ..verdicts import node_sig
from ..verdicts import table_changed

KERNEL_SIG = types.void(types.CPointer(types.int64), types.int64, types.int64)

_compile_lock = threading.Lock()


def _always(node) -> bool:
    return True


def rows_n_tasks(node, n_threads: int) -> int:
    """At most one thread per row of src[0] (row-parallel kernels of short inputs)."""
    s = node.src[0]
    return max(1, min(n_threads, s.ne[1] * s.ne[2] * s.ne[3]))


def one_task(node, n_threads: int) -> int:
    """Single-threaded (ggml's n_tasks = 1 ops)."""
    return 1


def param_words(op: str):
    """The op_params word index of each field of op, by name (a namedtuple generated from
    the OpDef's params spec). Kernels read `param_f32(desc, W.freq_base)`: the layout is
    written once, in the op's spec, and a kernel holds no offset of its own (the values are
    frozen when it compiles: ops/ is part of the cache key, _numba_cache.KERNEL_DEPS)."""
    from ....ops import OPS
    return OPS[op].words


def _guarded(pyfunc: Callable) -> Callable:
    """`pyfunc` wrapped so that an exception inside it (integer division by zero, a slice
    assignment of the wrong size, an allocation failure...) becomes set_error(desc,
    ERR_EXCEPTION) for its node instead of a message on stderr and a half-done node (a
    cfunc cannot raise into its caller).

    The wrapper is plain source compiled under the kernel module's file name, calling the
    kernel as an njit global: unlike a closure, Numba can cache it (cache=True) next to the
    kernel module, and it is invalidated with that file."""
    try:
        filename = inspect.getfile(pyfunc)
        cache = os.path.isfile(filename)
    except (TypeError, OSError):          # defined at a prompt: compile, do not cache
        filename, cache = "<kernel>", False
    # inlined (Numba IR): compiled on its own, the kernel's whole code would be optimized and
    # turned into machine code twice, once alone and again inside the wrapper
    body = numba.njit(nogil=True, cache=cache, inline="always")(pyfunc)
    name = f"{pyfunc.__name__}__guarded"
    src = (f"def {name}(desc, ith, nth):\n"
           f"    try:\n"
           f"        _body(desc, ith, nth)\n"
           f"    except Exception:\n"
           f"        _set_error(desc, _ERR_EXCEPTION)\n")
    ns = {"_body": body, "_set_error": set_error, "_ERR_EXCEPTION": ERR_EXCEPTION,
          "__name__": pyfunc.__module__}
    exec(compile(src, filename, "exec"), ns)
    fn = ns[name]
    fn.__qualname__ = f"{pyfunc.__qualname__}__guarded"
    fn.__doc__ = pyfunc.__doc__
    return fn, cache


_VERDICT_FIELDS = frozenset(("supports", "n_tasks", "work_size", "spec", "private_work"))


class _Variants(list):
    """A KernelEntry's variants: editing the list in place (tests insert a variant) bumps
    verdicts.EPOCH like add_kernel does."""

    def _edited(name):
        def edit(self, *args, **kwargs):
            table_changed()
            return getattr(list, name)(self, *args, **kwargs)
        edit.__name__ = name
        return edit

    for _m in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
               "__setitem__", "__delitem__", "__iadd__", "__imul__"):
        locals()[_m] = _edited(_m)
    del _m, _edited


@dataclass(eq=False)
class Kernel:
    """One compiled-on-demand kernel function."""
    op: str
    pyfunc: Callable
    supports: Callable = _always
    n_tasks: Optional[Callable] = None
    work_size: Optional[Callable] = None
    name: str = ""
    _cfunc: object = field(default=None, repr=False)
    _wrapper: object = field(default=None, repr=False)     # (guarded fn, cacheable)
    compile_seconds: float = 0.0          # first use: compile or load from the disk cache
    from_cache: bool = False
    spec: Optional[Callable] = None       # template: node -> its constants (see module doc)
    common: tuple = ()                    # template: the constants `warmup --all` compiles
    _children: dict = field(default_factory=dict, repr=False)
    # (node, n_threads) -> bytes per thread, when thread ith touches only its own region
    # [ith * bytes, (ith + 1) * bytes) of the work buffer: nodes with regions of one size
    # may then run without a barrier between them (plan.schedule); None: threads share it
    private_work: Optional[Callable] = None

    def __post_init__(self):
        self.name = self.name or getattr(self.pyfunc, "__name__", self.op.lower())

    def __setattr__(self, k, v):
        if k in _VERDICT_FIELDS and k in self.__dict__:     # memos made with the old one
            table_changed()                                # are stale
        object.__setattr__(self, k, v)

    @property
    def is_template(self) -> bool:
        return self.spec is not None

    def specialize(self, node) -> "Kernel":
        """The kernel that runs node: self, or a template's child for node's constants."""
        if self.spec is None:
            return self
        return self.child(self.spec(node))

    def child(self, consts) -> "Kernel":
        """A template's kernel for these constants (made once, then kept)."""
        key = tuple(int(c) for c in consts)
        k = self._children.get(key)
        if k is None:
            with _compile_lock:
                k = self._children.get(key)
                if k is None:
                    k = self._children[key] = _make_child(self, key)
        return k

    def children(self) -> list:
        """The template's common children (itself when not a template)."""
        return [self.child(c) for c in self.common] if self.spec is not None else [self]

    @property
    def key(self) -> str:
        """'OP:name', how warm-up workers and cost tables name this kernel."""
        return f"{self.op}:{self.name}"

    def guarded(self) -> tuple:
        """(the guarded function the cfunc compiles, whether it can be disk-cached)."""
        if self.spec is not None:
            raise ComputeError(f"numba kernel {self.key} is a template: compile its "
                               f"children (select(node) / child(constants))")
        if self._wrapper is None:
            self._wrapper = _guarded(self.pyfunc)
        return self._wrapper

    @property
    def cacheable(self) -> bool:
        return self.guarded()[1]

    @property
    def cfunc(self):
        if self._cfunc is None:
            with _compile_lock:                  # numba compiles one thing at a time anyway
                if self._cfunc is None:
                    t0 = time.perf_counter()
                    fn, cache = self.guarded()
                    try:
                        cf = numba.cfunc(KERNEL_SIG, cache=cache)(fn)
                    except Exception as e:   # a kernel that does not compile: name it
                        why = " ".join(str(e).split())[:600]
                        raise ComputeError(f"numba kernel {self.op}:{self.name} failed to "
                                           f"compile ({type(e).__name__}: {why})") from e
                    self.compile_seconds = time.perf_counter() - t0
                    self.from_cache = bool(getattr(cf, "cache_hits", 0))
                    self._cfunc = cf
        return self._cfunc

    @property
    def address(self) -> int:
        """The cfunc's address (compiles or loads it from the cache on first use)."""
        return self.cfunc.address

    @property
    def compiled(self) -> bool:
        return self._cfunc is not None

    def in_disk_cache(self) -> Optional[bool]:
        """Would the cfunc load from Numba's disk cache instead of compiling? Checked without
        compiling: the cache index (whose source stamp must match the module's current
        source) has an entry for this signature, CPU and bytecode, and its data file exists.
        None when it cannot tell (Numba's cache internals changed); False when not cacheable."""
        fn, cache = self.guarded()
        if not cache:
            return False
        return cfunc_in_disk_cache(fn, KERNEL_SIG, {})


def cfunc_in_disk_cache(fn, sig, options: dict) -> Optional[bool]:
    """Would numba.cfunc(sig, cache=True, **options)(fn) load from the disk cache? numba.cfunc's
    own steps minus compile(); None when Numba's cache internals changed (private API)."""
    try:
        from numba.core import sigutils
        from numba.core.ccallback import CFunc
        cf = CFunc(fn, sigutils.normalize_signature(sig), locals={}, options=options)
        cf.enable_caching()
        files = cf._cache._cache_file
        key = cf._cache._index_key(cf._sig, cf._targetdescr.target_context.codegen())
        name = files._load_index().get(key)
        return name is not None and os.path.isfile(files._data_path(name))
    except Exception:                          # private API: degrade to "unknown"
        return None


def _const_name(c: int) -> str:
    from ....types import GGMLType
    try:
        return GGMLType(c).name.lower() if c >= 0 else "none"
    except ValueError:
        return str(c)


def _const_value(name: str) -> int:
    from ....types import GGMLType
    if name == "none":
        return -1
    if name.lstrip("-").isdigit():
        return int(name)
    for t in GGMLType:
        if t.name.lower() == name:
            return int(t)
    raise KeyError(name)


_bodies: dict = {}      # template pyfunc -> its njit dispatcher (one per template)


def _make_child(tmpl: Kernel, key: tuple) -> Kernel:
    """`def <name>__<consts>(desc, ith, nth): _body(desc, ith, nth, *consts)`, compiled under
    the template's file (Numba caches it there under its own name, like row_kernel's)."""
    body = _bodies.get(tmpl.pyfunc)
    if body is None:
        body = _bodies[tmpl.pyfunc] = numba.njit(nogil=True, cache=True,
                                                 inline="always")(tmpl.pyfunc)
    ident = f"{tmpl.pyfunc.__name__}__" + "_".join(str(c) if c >= 0 else "n" for c in key)
    src = (f"def {ident}(desc, ith, nth):\n"
           f"    _body(desc, ith, nth, {', '.join(str(c) for c in key)})\n")
    try:
        filename = inspect.getfile(tmpl.pyfunc)
    except (TypeError, OSError):
        filename = "<kernel>"
    ns = {"_body": body, "__name__": tmpl.pyfunc.__module__}
    exec(compile(src, filename, "exec"), ns)
    fn = ns[ident]
    name = f"{tmpl.name}[{','.join(_const_name(c) for c in key)}]"
    return Kernel(tmpl.op, fn, tmpl.supports, tmpl.n_tasks, tmpl.work_size, name=name,
                  private_work=tmpl.private_work)


@dataclass(eq=False)
class KernelEntry:
    op: str
    variants: list = field(default_factory=_Variants)
    reason: str = ""                        # why there is no kernel (explicit unsupported)

    def __setattr__(self, k, v):
        if k == "variants":             # a new entry too: a memo may hold "no entry"
            v = v if type(v) is _Variants else _Variants(v)
            table_changed()
        object.__setattr__(self, k, v)

    def select(self, node) -> Optional[Kernel]:
        """The first variant whose supports(node) is true. A predicate that raises is a bug
        in it and propagates: it must not quietly send the node to a slower backend.
        The verdicts see node as a NodeSig (the contract in the module doc)."""
        sig = node_sig(node)
        for k in self.variants:
            if k.supports(sig):
                return k.specialize(sig) if k.spec is not None else k
        return None

    def supports(self, node) -> bool:
        return self.select(node) is not None

    @property
    def address(self) -> int:
        """Address of the only/first variant (tests, tools)."""
        if not self.variants:
            raise LookupError(f"no kernel for {self.op}: {self.reason or 'none registered'}")
        return self.variants[0].children()[0].address

    def n_tasks(self, node, n_threads: int) -> Optional[int]:
        sig = node_sig(node)
        k = self.select(sig)
        return k.n_tasks(sig, n_threads) if k is not None and k.n_tasks else None

    def work_size(self, node, n_threads: int) -> Optional[int]:
        sig = node_sig(node)
        k = self.select(sig)
        return k.work_size(sig, n_threads) if k is not None and k.work_size else None


KERNELS: dict[str, KernelEntry] = {}
# kernels no node selects, only lowering's fusion pass (../fusion.py registers them):
# find() and the warm-up know them, so they compile with a graph's other kernels
FUSED: dict[str, KernelEntry] = {}


def make_kernel(op: str, pyfunc: Callable, supports: Callable = None, n_tasks: Callable = None,
                work_size: Callable = None, spec: Callable = None, common=(),
                private_work: Callable = None) -> Kernel:
    """A Kernel object without registering it (tests, private tables)."""
    return Kernel(op.upper(), pyfunc, supports or _always, n_tasks, work_size, spec=spec,
                  common=tuple(tuple(int(x) for x in c) for c in common),
                  private_work=private_work)


def add_kernel(table: dict, k: Kernel, op: str = None) -> Kernel:
    op = (op or k.op).upper()
    entry = table.setdefault(op, KernelEntry(op))
    entry.variants.append(k)                # bumps verdicts.EPOCH
    entry.reason = ""
    return k


def kernel(op, supports: Callable = None, n_tasks: Callable = None,
           work_size: Callable = None, table: dict = None, spec: Callable = None, common=(),
           private_work: Callable = None):
    """Decorator: register `def k(desc, ith, nth)` as a kernel variant of op (with `spec`:
    `def k(desc, ith, nth, *consts)`, a template; see the module doc).

    `op` may be a tuple of op names sharing one compiled function (CONT, DUP, CPY)."""
    ops = (op,) if isinstance(op, str) else tuple(op)

    def deco(fn):
        k = make_kernel(ops[0], fn, supports, n_tasks, work_size, spec, common, private_work)
        for name in ops:
            add_kernel(KERNELS if table is None else table, k, name)
        fn.kernel = k
        return fn
    return deco


def row_kernel(op, rows: Callable, code: int, supports: Callable = None, name: str = None,
               **rules) -> Callable:
    """Register `def k_<op>(desc, ith, nth): rows(desc, ith, nth, code)`, a kernel generated
    from a table entry (an elementwise family: one overloaded row loop, specialised on the
    constant op code). The source is compiled under the caller's file, so Numba caches each
    kernel under its own name next to the module that owns the table, as if written there."""
    first = op if isinstance(op, str) else op[0]
    name = name or f"k_{first.lower()}"
    caller = sys._getframe(1).f_globals
    src = f"def {name}(desc, ith, nth):\n    _rows(desc, ith, nth, {int(code)})\n"
    ns = {"_rows": rows, "__name__": caller["__name__"]}
    exec(compile(src, caller["__file__"], "exec"), ns)
    fn = ns[name]
    kernel(op, supports, **rules)(fn)
    caller[name] = fn
    return fn


def unsupported(op: str, reason: str, table: dict = None) -> KernelEntry:
    """An explicit 'no kernel for op' entry (kept only if no variant exists)."""
    t = KERNELS if table is None else table
    entry = t.setdefault(op.upper(), KernelEntry(op.upper()))
    if not entry.variants:
        entry.reason = reason
    table_changed()
    return entry


def lookup(node, table: dict = None) -> Optional[Kernel]:
    """The kernel variant that runs node, or None."""
    entry = (KERNELS if table is None else table).get(node.op.name) if node.op else None
    return entry.select(node) if entry is not None else None


def find(key: str, table: dict = None) -> Optional[Kernel]:
    """The kernel named 'OP:name' or a template's child 'OP:name[c0,c1]' (made if needed)."""
    op, _, name = key.partition(":")
    if table is None:
        k = find(key, KERNELS)
        if k is None:      # FUSED is filled when ../fusion.py is imported (warm-up does)
            k = find(key, FUSED)
        return k
    entry = table.get(op)
    if entry is None:
        return None
    base, _, rest = name.partition("[")
    for k in entry.variants:
        if k.name != base:
            continue
        if not rest:
            return None if k.spec is not None else k
        if k.spec is None or not rest.endswith("]"):
            return None
        try:
            return k.child(_const_value(c) for c in rest[:-1].split(","))
        except KeyError:
            return None
    return None


def compile_all(table: dict = None) -> dict:
    """Compile (or load) every registered kernel (templates: their common children);
    returns {name: seconds}."""
    out = {}
    for entry in (KERNELS if table is None else table).values():
        for v in entry.variants:
            for k in v.children():
                if k.key not in out:
                    k.address
                    out[k.key] = k.compile_seconds
    return out


def _load_kernel_modules() -> None:
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")


_load_kernel_modules()
