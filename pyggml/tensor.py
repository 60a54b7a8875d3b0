"""Tensor: ggml's tensor record (type, ne, nb, op, src, op_params, flags, name, view) in Python.

A tensor is self-describing (the micrograd idea): `repr` shows its name, type, shape and op,
so printing or drawing a graph needs no side tables. Data lives in a `Buffer` (a NumPy byte
array) at a byte offset; a view reads its root's buffer at `view_offs`, exactly like ggml.
"""
from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from .errors import ContextMemoryError
from .errors import DataError
from .errors import GraphError
from .errors import ShapeError
from .errors import describe
from .errors import shown_ne
from .types import TRAITS
from .types import GGMLType

MAX_DIMS = 4
MAX_SRC = 10
MAX_OP_PARAMS = 64          # bytes, as GGML_MAX_OP_PARAMS
MAX_NAME = 64               # as GGML_MAX_NAME (names keep at most 63 characters)

TENSOR_FLAG_INPUT = 1
TENSOR_FLAG_OUTPUT = 2
TENSOR_FLAG_PARAM = 4
TENSOR_FLAG_LOSS = 8

ALLOC_EPOCH = 0     # bumped whenever a tensor gets data: backends key cached addresses on it
PARAMS_EPOCH = 0    # bumped when a computed node's op_params change (ops.registry.set_op_params)


class Dims(list):
    """A tensor's ne or nb: a list that cannot change. An op validated its sources' shapes and
    strides when it was built and kernels trust them, so editing them in place afterwards
    (node.ne[1] = 5) would let a kernel read or write past the data. Make a view instead."""
    __slots__ = ()

    def _frozen(self, *args, **kwargs):
        raise ShapeError("a tensor's ne and nb are read-only once it exists (an op checked them "
                         "when it was built): make a view (view_4d, reshape, permute) instead")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _frozen
    append = extend = insert = pop = remove = clear = sort = reverse = _frozen

    def __reduce__(self):            # pickle/copy rebuild it whole (not by append)
        return Dims, (list(self),)


class Buffer:
    """A block of bytes that tensors live in (a context pool or a backend allocation)."""

    __slots__ = ("_data", "_address", "name", "backend")

    def __init__(self, nbytes: int, name: str = "", backend: Optional[str] = None, align: int = 64):
        try:
            raw = np.zeros(nbytes + align, dtype=np.uint8)
        except (MemoryError, ValueError) as e:
            raise ContextMemoryError(f"cannot allocate a buffer of {nbytes} bytes"
                                     f"{f' for {name}' if name else ''}: {e}") from None
        start = (-raw.ctypes.data) % align          # SIMD-friendly alignment of the base
        self.data = raw[start:start + nbytes]
        self.name = name
        self.backend = backend

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, arr: np.ndarray) -> None:
        self._data = arr
        self._address = arr.ctypes.data      # ndarray.ctypes costs ~1 µs: ask once

    @property
    def address(self) -> int:
        return self._address

    @property
    def size(self) -> int:
        return self.data.nbytes

    @classmethod
    def from_array(cls, arr: np.ndarray, name: str = "", backend: Optional[str] = None) -> "Buffer":
        """A Buffer over existing bytes (no copy): e.g. a model file's memory map, so weight
        tensors are read in place. `arr` must be 1-D contiguous uint8; it stays referenced
        for as long as the buffer lives."""
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 1 \
                or not arr.flags.c_contiguous:
            raise DataError(f"Buffer.from_array: need a 1-D contiguous uint8 array, got "
                            f"{getattr(arr, 'dtype', type(arr).__name__)} "
                            f"shape {getattr(arr, 'shape', None)}")
        b = cls.__new__(cls)
        b.data = arr
        b.name = name
        b.backend = backend
        return b

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, {self.size} bytes)"


_object_new = object.__new__


def _contiguous_nb(ne, tr) -> Dims:
    """Strides of a contiguous tensor of ne (4 ints) with type traits tr, as ggml_new_tensor."""
    nb0 = tr.type_size
    nb1 = nb0 * (ne[0] // tr.blck_size)
    return Dims((nb0, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2]))


class Tensor:
    """One node or leaf of a ggml graph. Create tensors through a Context, never directly."""

    __slots__ = ("type", "ne", "nb", "op", "src", "op_params", "flags", "name",
                 "view_src", "view_offs", "ctx", "_buffer", "_offs", "extra", "slot_shape",
                 "twin", "__weakref__")

    def __init__(self, ctx, type: GGMLType, ne, nb=None, view_src: "Tensor" = None, view_offs: int = 0,
                 op_params: Optional[np.ndarray] = None):
        ne = Dims([int(x) for x in ne] + [1] * (MAX_DIMS - len(ne)))
        nb = _contiguous_nb(ne, TRAITS[type]) if nb is None else Dims([int(x) for x in nb])
        self._fill(ctx, type, ne, nb, view_src, view_offs, op_params)

    @classmethod
    def _new(cls, ctx, type: GGMLType, ne: list, tr, view_src, view_offs: int, op_params):
        """__init__ for Context.new_tensor_impl, which has checked ne (4 Python ints) and
        looked up the type's traits: the same record, without converting anything twice."""
        t = _object_new(cls)
        t._fill(ctx, type, Dims(ne), _contiguous_nb(ne, tr), view_src, view_offs, op_params)
        return t

    @classmethod
    def _record(cls, ctx, shape: tuple, view_src, view_offs: int, op_params, op, src: list):
        """Context.new_node: shape is shape_of() another node of the same op and shapes
        made (its ne and nb Dims shared: they cannot change); src is the node's own list of
        MAX_SRC sources. _fill and the op's linking, in one place (a call per node costs)."""
        t = _object_new(cls)
        t.ctx = ctx
        t.ne, t.nb, t.type = shape[0], shape[1], shape[2]
        t.slot_shape = shape
        t.op = op
        t.src = src
        t.op_params = op_params
        t.flags = 0
        t.name = ""
        if view_src is not None and view_src.view_src is not None:
            view_offs += view_src.view_offs
            view_src = view_src.view_src
        t.view_src = view_src
        t.view_offs = view_offs
        t._buffer = None
        t._offs = 0
        t.extra = None
        t.twin = None
        return t

    def _fill(self, ctx, type, ne, nb, view_src, view_offs, op_params) -> None:
        self.ctx = ctx
        self.type = type
        self.ne = ne
        self.nb = nb
        self.op = None                      # OpDef, or None for a leaf created by new_tensor
        self.src: list[Optional[Tensor]] = [None] * MAX_SRC
        self.op_params = np.zeros(MAX_OP_PARAMS // 4, dtype=np.int32) if op_params is None \
            else op_params
        self.flags = 0
        self.name = ""
        # ggml keeps view_src pointing at the root tensor that owns the memory
        if view_src is not None and view_src.view_src is not None:
            view_offs += view_src.view_offs
            view_src = view_src.view_src
        self.view_src = view_src
        self.view_offs = int(view_offs)
        self._buffer: Optional[Buffer] = None
        self._offs = 0
        self.extra = None                   # backend-private data (repacked weights...)
        self.slot_shape = None              # shape_of(self) once asked (kept_shape)
        # the node this one was stamped from (models/layer_template.py: same op, op_params,
        # type, ne, nb, and sources of the same type, ne and nb), else None
        self.twin = None

    # --- data location -------------------------------------------------------------
    @property
    def buffer(self) -> Optional[Buffer]:
        return self.view_src.buffer if self.view_src is not None else self._buffer

    @property
    def offs(self) -> int:
        """Byte offset of this tensor's first element inside `buffer`."""
        if self.view_src is not None:
            return self.view_src.offs + self.view_offs
        return self._offs

    @property
    def is_allocated(self) -> bool:
        return self.buffer is not None

    @property
    def data_ptr(self) -> int:
        """Address of the first byte (ggml's tensor->data)."""
        buf = self.buffer
        if buf is None:
            raise DataError(f"tensor {describe(self)} has no data: its context is no_alloc "
                            f"and it was not allocated by a backend or graph allocator")
        return buf.address + self.offs

    def set_buffer(self, buffer: Buffer, offs: int) -> None:
        if self.view_src is not None:
            raise DataError(f"view {describe(self)} shares its parent's buffer; allocate the parent")
        if offs < 0 or offs + nbytes(self) > buffer.size:
            raise DataError(f"tensor {describe(self)} ({nbytes(self)} bytes at {offs}) "
                            f"does not fit in {buffer!r}")
        self._buffer = buffer
        self._offs = int(offs)
        global ALLOC_EPOCH
        ALLOC_EPOCH += 1

    # --- shape facts ------------------------------------------------------------------
    @property
    def n_dims(self) -> int:
        """ggml_n_dims: index of the last dimension > 1, plus one (at least 1)."""
        for i in range(MAX_DIMS - 1, 0, -1):
            if self.ne[i] > 1:
                return i + 1
        return 1

    @property
    def op_name(self) -> str:
        return self.op.name if self.op is not None else "NONE"

    @property
    def srcs(self) -> list["Tensor"]:
        """The sources that are set (src[] without trailing Nones; inner Nones kept)."""
        n = MAX_SRC
        while n > 0 and self.src[n - 1] is None:
            n -= 1
        return self.src[:n]

    def __repr__(self) -> str:
        ne = shown_ne(self)
        s = f"Tensor({self.name!r}, {self.type.tname}, ne={ne}, op={self.op_name}"
        if self.view_src is not None:
            s += f", view of {self.view_src.name!r}+{self.view_offs}"
        return s + ")"

    # Tensors are graph nodes: identity semantics, hashable by id.
    __hash__ = object.__hash__


def set_buffers(buffer: Buffer, offsets: dict) -> None:
    """Tensor.set_buffer for many root tensors at once ({tensor: offset}): a graph
    allocator's plan, which sized buffer from the tensors' nbytes (so they fit; not
    measured again), with one ALLOC_EPOCH bump."""
    for t, offs in offsets.items():
        if t.view_src is not None or offs < 0:
            t.set_buffer(buffer, offs)           # raises as it always did
        t._buffer = buffer
        t._offs = int(offs)
    global ALLOC_EPOCH
    ALLOC_EPOCH += 1


_SHAPE = struct.Struct("<9q").pack


def shape_of(t: Tensor) -> tuple:
    """(ne, nb, type, those 9 values as int64 bytes, nbytes): the words after the address
    of a tensor's slot in a lowered node's descriptor (backends/numba_cpu/desc.py) and its
    span in bytes (what the graph allocator gives it)."""
    return (t.ne, t.nb, t.type, _SHAPE(t.type, *t.ne, *t.nb), nbytes(t))


def kept_shape(t) -> tuple:
    """shape_of(t), kept on the tensor (slot_shape) while its ne, nb and type are the
    objects it was made from (a node made from OpDef.build's memo gets it from there:
    nodes of the same op and shapes share it)."""
    c = t.slot_shape
    if c is None or c[0] is not t.ne or c[1] is not t.nb or c[2] is not t.type:
        c = shape_of(t)
        try:
            t.slot_shape = c
        except AttributeError:              # a stand-in without the slot
            pass
    return c


# ----------------------------------------------------------------------------------------
# ggml's shape predicates (ggml.h names), kept as free functions like ggml's API.

def nelements(t: Tensor) -> int:
    return t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]


def nrows(t: Tensor) -> int:
    return t.ne[1] * t.ne[2] * t.ne[3]


def nbytes(t: Tensor) -> int:
    """ggml_nbytes: span in bytes from the first to one past the last element (strides aware)."""
    ne0, ne1, ne2, ne3 = t.ne
    if ne0 <= 0 or ne1 <= 0 or ne2 <= 0 or ne3 <= 0:
        return 0
    nb0, nb1, nb2, nb3 = t.nb
    bs = TRAITS[t.type].blck_size
    n = TRAITS[t.type].type_size + (ne0 - 1) * nb0 if bs == 1 else ne0 * nb0 // bs
    return n + (ne1 - 1) * nb1 + (ne2 - 1) * nb2 + (ne3 - 1) * nb3


def row_size_of(t: Tensor) -> int:
    return TRAITS[t.type].row_size(t.ne[0])


def element_size(t: Tensor) -> int:
    return TRAITS[t.type].type_size


def is_empty(t: Tensor) -> bool:
    return any(x == 0 for x in t.ne)


def is_scalar(t: Tensor) -> bool:
    return all(x == 1 for x in t.ne)


def is_vector(t: Tensor) -> bool:
    return t.ne[1] == 1 and t.ne[2] == 1 and t.ne[3] == 1


def is_matrix(t: Tensor) -> bool:
    return t.ne[2] == 1 and t.ne[3] == 1


def _is_contiguous_n(t: Tensor, n: int) -> bool:
    tr = TRAITS[t.type]
    next_nb = tr.type_size
    if t.ne[0] != tr.blck_size and t.nb[0] != next_nb:
        return False
    next_nb *= t.ne[0] // tr.blck_size
    for i in range(1, MAX_DIMS):
        if i > n:
            if t.ne[i] != 1 and t.nb[i] != next_nb:
                return False
            next_nb *= t.ne[i]
        else:
            next_nb = t.ne[i] * t.nb[i]       # this dimension need not be contiguous
    return True


def is_contiguous(t: Tensor) -> bool:
    return _is_contiguous_n(t, 0)


def is_contiguous_0(t: Tensor) -> bool:
    return _is_contiguous_n(t, 0)


def is_contiguous_1(t: Tensor) -> bool:
    return _is_contiguous_n(t, 1)


def is_contiguous_2(t: Tensor) -> bool:
    return _is_contiguous_n(t, 2)


def is_contiguous_rows(t: Tensor) -> bool:
    """Elements inside each row are packed (ggml_is_contiguous_rows)."""
    return t.ne[0] == TRAITS[t.type].blck_size or t.nb[0] == TRAITS[t.type].type_size


def is_contiguous_channels(t: Tensor) -> bool:
    """A [W, H, C, N] tensor stored channels first, CWHN (ggml_is_contiguous_channels)."""
    return t.nb[0] > t.nb[2] and t.nb[1] > t.nb[0] and t.nb[2] == TRAITS[t.type].type_size


def is_contiguously_allocated(t: Tensor) -> bool:
    return nbytes(t) == nelements(t) * TRAITS[t.type].type_size // TRAITS[t.type].blck_size


def is_transposed(t: Tensor) -> bool:
    return t.nb[0] > t.nb[1]


def is_permuted(t: Tensor) -> bool:
    return t.nb[0] > t.nb[1] or t.nb[1] > t.nb[2] or t.nb[2] > t.nb[3]


def are_same_shape(a: Tensor, b: Tensor) -> bool:
    return a.ne == b.ne


def are_same_stride(a: Tensor, b: Tensor) -> bool:
    return a.nb == b.nb


def can_repeat(a: Tensor, b: Tensor) -> bool:
    """a can be broadcast (repeated whole) into b's shape."""
    return is_empty(a) or all(a.ne[i] != 0 and b.ne[i] % a.ne[i] == 0 for i in range(MAX_DIMS))


def can_repeat_rows(a: Tensor, b: Tensor) -> bool:
    return a.ne[0] == b.ne[0] and can_repeat(a, b)


# ----------------------------------------------------------------------------------------
# names and flags

def set_name(t: Tensor, name: str) -> Tensor:
    t.name = str(name)[:MAX_NAME - 1]
    return t


def get_name(t: Tensor) -> str:
    return t.name


def format_name(t: Tensor, fmt: str, *args) -> Tensor:
    return set_name(t, fmt % args if args else fmt)


def set_input(t: Tensor) -> None:
    t.flags |= TENSOR_FLAG_INPUT


def set_output(t: Tensor) -> None:
    t.flags |= TENSOR_FLAG_OUTPUT


def set_param(t: Tensor) -> None:
    """ggml_set_param: t is trainable (a leaf made by new_tensor, not an op's result)."""
    if t.op is not None:
        raise GraphError(f"set_param: {t!r} is the result of {t.op_name}; only a tensor "
                         f"without op can be a trainable parameter")
    t.flags |= TENSOR_FLAG_PARAM


def set_loss(t: Tensor) -> None:
    """ggml_set_loss: t is the scalar F32 loss that build_backward_expand differentiates."""
    if t.type != GGMLType.F32 or nelements(t) != 1:
        raise GraphError(f"set_loss: the loss must be a scalar F32 tensor, got {t!r}")
    t.flags |= TENSOR_FLAG_LOSS
