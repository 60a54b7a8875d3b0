"""Moving values in and out of tensors: strided NumPy views, (de)quantization, raw bytes.

Every access goes through NumPy arrays built on the tensor's buffer with its ne/nb, so a view
or a permuted tensor reads exactly the elements ggml would, and an access outside the buffer
is an error (NumPy checks the extent), never a stray write.
"""
from __future__ import annotations

import numpy as np

from .errors import DataError
from .errors import ShapeError
from .errors import TypeError_
from .errors import describe
from .tensor import Tensor
from .tensor import is_contiguous
from .tensor import nbytes
from .tensor import nelements
from .types import TRAITS
from .types import GGMLType
from .types import as_type


def _check_data(t: Tensor, what: str) -> None:
    if not isinstance(t, Tensor):
        raise DataError(f"{what}: expected a Tensor, got {type(t).__name__}")
    if t.buffer is None:
        raise DataError(f"{what}: tensor {describe(t)} has no data (no_alloc context, "
                        f"not yet allocated by a backend)")


def _ndarray(t: Tensor, dtype, shape, strides) -> np.ndarray:
    buf = t.buffer.data
    if 0 in shape:          # no element to touch: a view of an empty tensor may sit past its end
        return np.empty(shape, dtype=dtype)
    try:
        return np.ndarray(shape, dtype=dtype, buffer=buf, offset=t.offs, strides=strides)
    except (ValueError, TypeError) as e:
        raise DataError(f"tensor {describe(t)} with nb={t.nb} at offset {t.offs} does not fit "
                        f"its buffer of {buf.nbytes} bytes: {e}") from None


def strided(t: Tensor) -> np.ndarray:
    """Zero-copy view (ne3, ne2, ne1, ne0) of an element-type tensor in its storage dtype."""
    _check_data(t, "strided")
    tr = TRAITS[t.type]
    if tr.blck_size != 1:
        raise TypeError_(f"strided: {describe(t)} is a block type; use row_bytes()")
    return _ndarray(t, tr.np_dtype, t.ne[::-1], t.nb[::-1])


def row_bytes(t: Tensor) -> np.ndarray:
    """Zero-copy uint8 view (ne3, ne2, ne1, row_size) of any tensor whose rows are packed."""
    _check_data(t, "row_bytes")
    tr = TRAITS[t.type]
    if t.ne[0] > tr.blck_size and t.nb[0] != tr.type_size:
        raise ShapeError(f"row access needs packed rows (nb[0] == type size {tr.type_size}); "
                         f"{describe(t)} has nb={t.nb}")
    rs = tr.row_size(t.ne[0])
    return _ndarray(t, np.uint8, [t.ne[3], t.ne[2], t.ne[1], rs], [t.nb[3], t.nb[2], t.nb[1], 1])


def _codec(type: GGMLType, which: str):
    fn = getattr(TRAITS[type], which)
    if fn is None:
        import pyggml.quants  # noqa: F401  (registers every codec)
        fn = getattr(TRAITS[type], which)
    if fn is None:
        raise TypeError_(f"no {which} codec for type {type.tname}")
    return fn


def read(t: Tensor, dtype=np.float64) -> np.ndarray:
    """Values of t as a new (ne3, ne2, ne1, ne0) array: floats dequantized, ints kept as ints."""
    tr = TRAITS[t.type]
    if tr.blck_size == 1:
        a = strided(t)
        if t.type == GGMLType.BF16:
            return _codec(t.type, "to_float")(np.ascontiguousarray(a).view(np.uint8),
                                              a.size).reshape(a.shape).astype(dtype)
        if not tr.is_float:
            return a.astype(np.int64)
        return a.astype(dtype)
    rb = np.ascontiguousarray(row_bytes(t))
    vals = _codec(t.type, "to_float")(rb.reshape(-1), nelements(t))
    return vals.reshape(t.ne[::-1]).astype(dtype, copy=False)    # (vals is new: no copy)


def encode(type: GGMLType, values: np.ndarray, cpu: bool = False) -> np.ndarray:
    """Values (..., ne0) converted to the storage of `type`: element dtype or packed blocks.
    cpu: quantize as ggml-cpu's ops store results (TypeTraits.from_float_cpu), not as
    ggml_quantize_chunk does; the two differ for Q8_0/Q8_1 only."""
    tr = TRAITS[type]
    if tr.blck_size == 1:
        if type == GGMLType.BF16:
            v = np.ascontiguousarray(values, dtype=np.float32)
            return _codec(type, "from_float")(v.reshape(-1)).view(np.uint16).reshape(v.shape)
        if tr.is_float:
            # through float32 first, as ggml computes in f32 and then stores (overflow is
            # inf by IEEE rules, as ggml's conversions give)
            with np.errstate(over="ignore"):
                return np.asarray(values, dtype=np.float32).astype(tr.np_dtype)
        return np.asarray(values).astype(tr.np_dtype)
    v = np.ascontiguousarray(values, dtype=np.float32)
    ne0 = v.shape[-1]
    quantize = _codec(type, "from_float")
    if cpu and tr.from_float_cpu is not None:
        quantize = tr.from_float_cpu
    raw = quantize(v.reshape(-1))
    return raw.reshape(v.shape[:-1] + (tr.row_size(ne0),))


def write(t: Tensor, values, cpu: bool = False) -> None:
    """Write values (broadcast to t's shape) into t, converting/quantizing to t's type
    (cpu: as an op's result, see encode)."""
    _check_data(t, "write")
    shape = tuple(t.ne[::-1])
    v = np.asarray(values)
    try:
        v = np.broadcast_to(v, shape)
    except ValueError:
        raise ShapeError(f"write: values of shape {v.shape} do not fit {describe(t)} "
                         f"(NumPy shape {shape})") from None
    tr = TRAITS[t.type]
    if tr.blck_size == 1:
        strided(t)[...] = encode(t.type, v)
    else:
        row_bytes(t)[...] = encode(t.type, v, cpu)


def check_fits(type: GGMLType, values, what: str) -> None:
    """Integer types hold only the values their C type holds: anything else (2**40 for I32,
    NaN, inf) is a DataError, not a silent wrap. Floats convert to integers by truncation
    toward zero, as a C cast; float types follow IEEE rounding (overflow gives inf, as ggml)."""
    tr = TRAITS[type]
    if tr.is_float or tr.is_quantized:
        return
    a = np.asarray(values)
    if a.size == 0:
        return
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what}: values of dtype {a.dtype} cannot be stored as {tr.tname}")
    if a.dtype.kind == "f":
        bad = a[~np.isfinite(a)]
        if bad.size:
            raise DataError(f"{what}: {bad.flat[0]} cannot be stored in an {tr.tname} tensor")
        a = np.trunc(a)
    info = np.iinfo(tr.np_dtype)
    lo, hi = a.min(), a.max()
    if lo < info.min or hi > info.max:
        v = lo if lo < info.min else hi
        raise DataError(f"{what}: value {v} does not fit in {tr.tname} "
                        f"[{info.min}, {info.max}]")


# --- the public data API (ggml names) ---------------------------------------------------------

def to_numpy(t: Tensor) -> np.ndarray:
    """Values of t shaped (ne3, ne2, ne1, ne0) trimmed to n_dims; float types as float32."""
    _check_data(t, "to_numpy")
    tr = TRAITS[t.type]
    a = read(t, np.float32) if (tr.is_float or tr.is_quantized) and t.type != GGMLType.F64 \
        else (read(t, np.float64) if t.type == GGMLType.F64 else strided(t).copy())
    return a.reshape(_shape(t))


def _shape(t: Tensor) -> tuple:
    """NumPy shape of t: ne up to its last dimension that is not 1 (n_dims, but an empty
    dimension counts: ne=[8, 0] is shape (0, 8)), reversed."""
    nd = max((i + 1 for i, x in enumerate(t.ne) if x != 1), default=1)
    return tuple(t.ne[:nd][::-1])


_DEFAULT_TYPES = {
    np.dtype(np.float32): GGMLType.F32, np.dtype(np.float64): GGMLType.F32,
    np.dtype(np.float16): GGMLType.F16, np.dtype(np.int32): GGMLType.I32,
    np.dtype(np.int64): GGMLType.I32, np.dtype(np.int16): GGMLType.I16,
    np.dtype(np.int8): GGMLType.I8, np.dtype(np.bool_): GGMLType.I32,
}


def from_numpy(ctx, arr, type=None, name: str = None) -> Tensor:
    """A new tensor of ctx holding arr (last NumPy axis = ne0). Quantizes when type asks."""
    from .context import new_tensor
    a = np.asarray(arr)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim > 4:
        raise ShapeError(f"from_numpy: at most 4 dims, got shape {a.shape}")
    if type is None:
        if a.dtype not in _DEFAULT_TYPES:
            raise TypeError_(f"from_numpy: no ggml type for dtype {a.dtype}; pass type=")
        type = _DEFAULT_TYPES[a.dtype]
    type = as_type(type)
    check_fits(type, a, f"from_numpy(shape {a.shape}, dtype {a.dtype})")
    t = new_tensor(ctx, type, a.ndim, list(a.shape[::-1]))
    if name:
        t.name = name
    if ctx.no_alloc:
        raise DataError("from_numpy: context is no_alloc; its tensors have no data")
    write(t, a.reshape(t.ne[::-1]))
    return t


def tensor_set(t: Tensor, data, offset: int = 0) -> None:
    """ggml_backend_tensor_set: copy raw bytes into t's data at a byte offset."""
    _check_data(t, "tensor_set")
    b = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    n = nbytes(t)
    if offset < 0 or offset + b.size > n:
        raise DataError(f"tensor_set: {b.size} bytes at offset {offset} exceed {describe(t)} "
                        f"({n} bytes)")
    start = t.offs + offset
    t.buffer.data[start:start + b.size] = b


def tensor_get(t: Tensor, offset: int = 0, size: int = None) -> bytes:
    """ggml_backend_tensor_get: raw bytes of t's data (all from offset when size is None)."""
    _check_data(t, "tensor_get")
    n = nbytes(t)
    if size is None:
        size = n - offset
    if offset < 0 or size < 0 or offset + size > n:
        raise DataError(f"tensor_get: {size} bytes at offset {offset} exceed {describe(t)} ({n} bytes)")
    start = t.offs + offset
    return t.buffer.data[start:start + size].tobytes()


def tensor_memset(t: Tensor, value: int = 0, offset: int = 0, size: int = None) -> None:
    _check_data(t, "tensor_memset")
    n = nbytes(t)
    size = n - offset if size is None else size
    if offset < 0 or offset + size > n:
        raise DataError(f"tensor_memset: range exceeds {describe(t)} ({n} bytes)")
    t.buffer.data[t.offs + offset:t.offs + offset + size] = value


def _flat_index(t: Tensor, i: int):
    n = nelements(t)
    if not -n <= i < n:
        raise DataError(f"index {i} out of range for {describe(t)} ({n} elements)")
    i %= n
    idx = []
    for d in range(4):
        idx.append(i % t.ne[d])
        i //= t.ne[d]
    return tuple(idx[::-1])


def _element_view(t: Tensor, what: str) -> np.ndarray:
    if TRAITS[t.type].blck_size != 1:
        raise TypeError_(f"{what}: not available for block type {t.type.tname} ({describe(t)})")
    return strided(t)


def set_f32(t: Tensor, value: float) -> Tensor:
    """ggml_set_f32: every element = value."""
    check_fits(t.type, np.float32(value), "set_f32")
    write(t, np.float32(value))
    return t


def set_i32(t: Tensor, value: int) -> Tensor:
    value = _int32("set_i32", value)
    write(t, np.int64(value))
    return t


def get_f32_1d(t: Tensor, i: int) -> float:
    a = _element_view(t, "get_f32_1d")
    v = a[_flat_index(t, i)]
    if t.type == GGMLType.BF16:
        return float(_codec(t.type, "to_float")(np.array([v], np.uint16).view(np.uint8), 1)[0])
    return float(v)


def set_f32_1d(t: Tensor, i: int, value: float) -> None:
    a = _element_view(t, "set_f32_1d")
    check_fits(t.type, np.float32(value), "set_f32_1d")
    a[_flat_index(t, i)] = encode(t.type, np.array([value]))[0]


def get_i32_1d(t: Tensor, i: int) -> int:
    return int(get_f32_1d(t, i)) if TRAITS[t.type].is_float else int(_element_view(t, "get_i32_1d")[_flat_index(t, i)])


def set_i32_1d(t: Tensor, i: int, value: int) -> None:
    a = _element_view(t, "set_i32_1d")
    value = _int32("set_i32_1d", value)
    check_fits(t.type, value, "set_i32_1d")
    a[_flat_index(t, i)] = value


def _int32(what: str, value) -> int:
    """ggml's int32_t argument: an integer that fits."""
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{what}: {value!r} is not an integer ({e})") from None
    if not -(1 << 31) <= v < (1 << 31):
        raise DataError(f"{what}: value {v} does not fit in int32")
    return v


def get_f32_nd(t: Tensor, i0: int, i1: int = 0, i2: int = 0, i3: int = 0) -> float:
    return get_f32_1d(t, ((i3 * t.ne[2] + i2) * t.ne[1] + i1) * t.ne[0] + i0)


def set_f32_nd(t: Tensor, i0: int, i1: int, i2: int, i3: int, value: float) -> None:
    set_f32_1d(t, ((i3 * t.ne[2] + i2) * t.ne[1] + i1) * t.ne[0] + i0, value)


def get_data_f32(t: Tensor) -> np.ndarray:
    """ggml_get_data_f32: a zero-copy flat float32 view of a contiguous F32 tensor."""
    if t.type != GGMLType.F32 or not is_contiguous(t):
        raise TypeError_(f"get_data_f32: needs a contiguous f32 tensor, got {describe(t)}")
    return strided(t).reshape(-1)
