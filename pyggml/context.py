"""Context: ggml's memory pool. It owns tensor data (unless no_alloc) and accounts every object.

Memory accounting follows ggml so that ggml-style sizing works: each tensor costs
`tensor_overhead()` bytes of bookkeeping plus its data padded to MEM_ALIGN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from typing import Sequence

from .errors import ContextMemoryError
from .errors import DataError
from .errors import ShapeError
from .errors import describe
from .tensor import MAX_DIMS
from .tensor import Buffer
from .tensor import Tensor
from .tensor import nbytes
from .types import TRAITS
from .types import GGMLType
from .types import as_type

MEM_ALIGN = 16
OBJECT_SIZE = 32            # sizeof(struct ggml_object) on 64-bit
TENSOR_SIZE = 336           # sizeof(struct ggml_tensor) on 64-bit
DATA_ALIGN = 64             # pyggml aligns tensor data for SIMD loads


def tensor_overhead() -> int:
    """ggml_tensor_overhead(): bookkeeping bytes one tensor costs in a context."""
    return OBJECT_SIZE + TENSOR_SIZE


_OVERHEAD = tensor_overhead()
_ONES = [[1] * (MAX_DIMS - n) for n in range(MAX_DIMS + 1)]     # padding of an n-dim ne


# ggml_hash_size's table: the next primes after powers of two
_HASH_PRIMES = (2, 3, 5, 11, 17, 37, 67, 131, 257, 521, 1031, 2053, 4099, 8209, 16411, 32771,
                65537, 131101, 262147, 524309, 1048583, 2097169, 4194319, 8388617, 16777259,
                33554467, 67108879, 134217757, 268435459, 536870923, 1073741827, 2147483659)
CGRAPH_STRUCT_SIZE = 96          # sizeof(struct ggml_cgraph) on 64-bit (ggml 0.9.x)


def hash_size(min_sz: int) -> int:
    """ggml_hash_size(): the smallest table prime >= min_sz (min_sz | 1 past the table)."""
    for p in _HASH_PRIMES:
        if p >= min_sz:
            return p
    return min_sz | 1


def graph_overhead(size: int = 2048, grads: bool = False) -> int:
    """ggml_graph_overhead_custom(): bytes a graph's bookkeeping costs in a context (the
    object header, then the graph struct, nodes, leafs, use counts, hash keys, grads and
    grad accumulators when asked, and the hash set's bitset, padded as ggml pads them)."""
    hs = hash_size(2 * size)
    n = CGRAPH_STRUCT_SIZE
    n = _pad(n, 8) + 8 * size * 2                  # nodes, leafs
    n = _pad(n, 4) + 4 * hs                        # use_counts
    n = _pad(n, 8) + 8 * hs * (3 if grads else 1)  # hash keys (+ grads, grad_accs)
    n = _pad(n, 4) + 4 * ((hs + 31) // 32)         # bitset
    return OBJECT_SIZE + _pad(n, 16)


def _pad(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass
class InitParams:
    mem_size: int = 16 << 20
    mem_buffer: Optional[object] = None     # unused: pyggml owns its memory
    no_alloc: bool = False


class Context:
    def __init__(self, mem_size: int = 16 << 20, no_alloc: bool = False, name: str = "ctx"):
        if mem_size < 0:
            raise ContextMemoryError(f"init: mem_size must be >= 0, got {mem_size}")
        self.mem_size = int(mem_size)
        self.no_alloc = bool(no_alloc)
        self.used = 0
        self.tensors: list[Tensor] = []
        # the pool exists only when the context holds data; np.zeros maps pages lazily
        self.buffer = None if no_alloc else Buffer(self.mem_size, name=name)

    # ------------------------------------------------------------------------------
    def _reserve(self, nbytes_: int, what: str) -> int:
        """Take nbytes_ (already padded) from the pool; return the offset it starts at."""
        if callable(what):              # built only when needed (f-strings cost per tensor)
            what = what()
        if self.buffer is None and not self.no_alloc:
            raise ContextMemoryError(f"{what}: the context was freed (free(ctx)); create "
                                     f"tensors in a new context")
        if self.used + nbytes_ > self.mem_size:
            raise ContextMemoryError(
                f"context out of memory: {what} needs {nbytes_} bytes, "
                f"{self.mem_size - self.used} of {self.mem_size} left "
                f"(increase mem_size in init(); each tensor also costs "
                f"{tensor_overhead()} bytes of overhead)")
        offs = self.used
        self.used += nbytes_
        return offs

    def new_tensor_impl(self, type, ne: Sequence[int], view_src: Tensor = None,
                        view_offs: int = 0, op_name: str = "new_tensor",
                        op_params=None) -> Tensor:
        if type.__class__ is not GGMLType:
            type = as_type(type)
        tr = TRAITS[type]
        ne = list(map(int, ne))
        n = len(ne)
        if not 1 <= n <= MAX_DIMS:
            raise ShapeError(f"{op_name}: a tensor has 1 to {MAX_DIMS} dims, got ne={ne}")
        if min(ne) < 0:
            raise ShapeError(f"{op_name}: negative dimension in ne={ne}")
        if ne[0] % tr.blck_size:
            raise ShapeError(f"{op_name}: ne[0]={ne[0]} is not a multiple of the block size "
                             f"{tr.blck_size} of type {tr.tname}")
        ne4 = ne + _ONES[n] if n < MAX_DIMS else ne
        t = Tensor._new(self, type, ne4, tr, view_src, view_offs, op_params)
        data_size = tr.type_size * (ne4[0] // tr.blck_size) * ne4[1] * ne4[2] * ne4[3]
        if view_src is not None and data_size and t.view_offs + data_size > nbytes(t.view_src):
            raise ShapeError(f"{op_name}: view of {data_size} bytes at offset {t.view_offs} is out "
                             f"of the bounds of {describe(t.view_src)} ({nbytes(t.view_src)} bytes)")
        owns_data = view_src is None and not self.no_alloc
        if owns_data:
            # data starts DATA_ALIGN-aligned after the object's bookkeeping bytes
            data_offs = _pad(self.used + _OVERHEAD, DATA_ALIGN)
            need = data_offs + _pad(data_size, MEM_ALIGN) - self.used
        else:
            need = _OVERHEAD
        if self.used + need > self.mem_size or (owns_data and self.buffer is None):
            self._reserve(need, lambda: f"tensor {tr.tname} ne={ne}")      # raises
        self.used += need
        if owns_data:
            t.set_buffer(self.buffer, data_offs)
        self.tensors.append(t)
        return t

    def new_node(self, shape: tuple, view_src, view_offs: int, op_params, op, src: list):
        """A node whose type, ne and nb (shape: tensor.shape_of of a node its op made) its op
        has already checked (OpDef.build's memo of the same op over sources of the same
        shapes): no conversions, no checks but the pool's. Only for results that own no data
        here (views, or any no_alloc tensor); None when the pool is full or the result would
        need data (the caller goes the checked way, which raises or allocates)."""
        used = self.used + _OVERHEAD
        if used > self.mem_size or (view_src is None and not self.no_alloc):
            return None
        t = Tensor._record(self, shape, view_src, view_offs, op_params, op, src)
        self.used = used
        self.tensors.append(t)
        return t

    # ggml_get_mem_size / ggml_used_mem
    def get_mem_size(self) -> int:
        return self.mem_size

    def used_mem(self) -> int:
        return self.used

    def __repr__(self) -> str:
        return (f"Context({len(self.tensors)} tensors, {self.used}/{self.mem_size} bytes"
                f"{', no_alloc' if self.no_alloc else ''})")


def init(params=None, *, mem_size: int = None, no_alloc: bool = None, mem_buffer=None) -> Context:
    """ggml_init: init(mem_size=...) or init(InitParams(...)) or init({'mem_size': ...})."""
    if isinstance(params, InitParams):
        p = params
    elif isinstance(params, dict):
        p = InitParams(**params)
    elif isinstance(params, int):
        p = InitParams(mem_size=params)
    elif params is None:
        p = InitParams()
    else:
        raise DataError(f"init: expected InitParams, dict or mem_size, got {type(params).__name__}")
    if mem_size is not None:
        p.mem_size = mem_size
    if no_alloc is not None:
        p.no_alloc = no_alloc
    return Context(p.mem_size, p.no_alloc)


def free(ctx: Context) -> None:
    """ggml_free: drop the pool; tensors of this context must not be used afterwards."""
    ctx.buffer = None
    ctx.tensors.clear()


def get_no_alloc(ctx: Context) -> bool:
    return ctx.no_alloc


def set_no_alloc(ctx: Context, no_alloc: bool) -> None:
    if not no_alloc and ctx.buffer is None:
        ctx.buffer = Buffer(ctx.mem_size, name="ctx")
    ctx.no_alloc = bool(no_alloc)


def get_first_tensor(ctx: Context):
    return ctx.tensors[0] if ctx.tensors else None


def get_next_tensor(ctx: Context, t: Tensor):
    i = ctx.tensors.index(t)
    return ctx.tensors[i + 1] if i + 1 < len(ctx.tensors) else None


def get_tensor(ctx: Context, name: str):
    """ggml_get_tensor: the first tensor of the context with this name, or None."""
    for t in ctx.tensors:
        if t.name == name:
            return t
    return None


# --- tensor constructors (ggml_new_tensor_*) --------------------------------------------

def new_tensor(ctx: Context, type, n_dims: int, ne: Sequence[int]) -> Tensor:
    if not 1 <= n_dims <= MAX_DIMS or len(ne) < n_dims:
        raise ShapeError(f"new_tensor: n_dims={n_dims} does not fit ne={list(ne)}")
    return ctx.new_tensor_impl(type, list(ne)[:n_dims])


def new_tensor_1d(ctx: Context, type, ne0: int) -> Tensor:
    return ctx.new_tensor_impl(type, [ne0], op_name="new_tensor_1d")


def new_tensor_2d(ctx: Context, type, ne0: int, ne1: int) -> Tensor:
    return ctx.new_tensor_impl(type, [ne0, ne1], op_name="new_tensor_2d")


def new_tensor_3d(ctx: Context, type, ne0: int, ne1: int, ne2: int) -> Tensor:
    return ctx.new_tensor_impl(type, [ne0, ne1, ne2], op_name="new_tensor_3d")


def new_tensor_4d(ctx: Context, type, ne0: int, ne1: int, ne2: int, ne3: int) -> Tensor:
    return ctx.new_tensor_impl(type, [ne0, ne1, ne2, ne3], op_name="new_tensor_4d")


def dup_tensor(ctx: Context, src: Tensor) -> Tensor:
    """ggml_dup_tensor: a new tensor of the same type and shape (data not copied)."""
    return ctx.new_tensor_impl(src.type, src.ne, op_name="dup_tensor")
