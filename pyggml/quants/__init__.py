"""Every ggml storage format, bit-exact with real ggml.

One module per format registers its NumPy codecs with its type (pyggml.types.TRAITS);
`nb` holds the Numba versions for the CPU kernels. This package adds the user-facing
entry points:

    quantize(type, f32_values, imatrix=None) -> bytes   # ggml_quantize_chunk
    takes_imatrix(type) -> bool     # whether ggml's quantizer of the type uses one
    dequantize(type, data, n) -> float32 array   # type_traits.to_float
    fp32_to_fp16 / fp16_to_fp32 / fp32_to_bf16 / bf16_to_fp32

Large inputs go through the Numba row functions (same bytes, several times faster);
`use_numba=False` forces the NumPy codecs.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..errors import ShapeError
from ..errors import TypeError_
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type

# Importing a format module registers its codecs with its type.
from . import bf16  # noqa: F401  # noqa: F401
from . import f16  # noqa: F401  # noqa: F401
from . import iq4_nl  # noqa: F401  # noqa: F401
from . import iq4_xs  # noqa: F401  # noqa: F401
from . import mxfp4  # noqa: F401  # noqa: F401
from . import plain  # noqa: F401  # noqa: F401
from . import q2_k  # noqa: F401  # noqa: F401
from . import q3_k  # noqa: F401  # noqa: F401
from . import q4_0  # noqa: F401  # noqa: F401
from . import q4_1  # noqa: F401  # noqa: F401
from . import q4_k  # noqa: F401  # noqa: F401
from . import q5_0  # noqa: F401  # noqa: F401
from . import q5_1  # noqa: F401  # noqa: F401
from . import q5_k  # noqa: F401  # noqa: F401
from . import q6_k  # noqa: F401  # noqa: F401
from . import q8_0  # noqa: F401  # noqa: F401
from . import q8_1  # noqa: F401  # noqa: F401
from . import q8_k  # noqa: F401  # noqa: F401
from ._common import as_f32
from ._common import as_u8
from .bf16 import bf16_to_fp32
from .bf16 import fp32_to_bf16
from .f16 import fp16_to_fp32
from .f16 import fp32_to_fp16

__all__ = ["quantize", "dequantize", "takes_imatrix", "fp32_to_fp16", "fp16_to_fp32", "fp32_to_bf16",
           "bf16_to_fp32", "NUMBA_MIN_N"]

# From this many values on, quantize/dequantize use the Numba rows (compiled once, cached).
NUMBA_MIN_N = 1 << 16
_NUMBA_TYPES = frozenset({GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1,
                          GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q8_1,
                          GGMLType.MXFP4})
# K-quants and IQ4 always quantize through Numba (ggml's scale searches); their rows
# live in kq_nb.
_KQ_TYPES = frozenset({GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
                       GGMLType.Q6_K, GGMLType.Q8_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS})


def _nb_row(t, direction: str):
    """nb.quantize_row_<fmt> / nb.dequantize_row_<fmt>: calling the type's own row (not
    the dispatcher) compiles only that format on first use (bytes input is a read-only
    array, its own Numba signature)."""
    if t in _KQ_TYPES:
        from . import kq_nb
        return getattr(kq_nb, f"{direction}_row_{TRAITS[t].tname}")
    from . import nb
    return getattr(nb, f"{direction}_row_{TRAITS[t].tname}")


_LEGACY_IMATRIX = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1})


def takes_imatrix(type_) -> bool:
    """Whether ggml_quantize_chunk uses quant_weights for this type (Q8_0, F16, ... ignore
    them)."""
    t = as_type(type_)
    return TRAITS[t].from_float_imatrix is not None or t in _LEGACY_IMATRIX


def _traits(type_):
    t = as_type(type_)
    tr = TRAITS[t]
    if tr.to_float is None:
        raise TypeError_(f"type {tr.tname} has no codec")
    return t, tr


def _use_numba(t, n: int, use_numba) -> bool:
    if t in _KQ_TYPES:
        return n >= NUMBA_MIN_N if use_numba is None else bool(use_numba)
    if t not in _NUMBA_TYPES:
        return False
    return n >= NUMBA_MIN_N if use_numba is None else bool(use_numba)


def quantize(type_, values, *, imatrix=None, use_numba=None) -> bytes:
    """float32 values -> ggml's bytes of `type_` (as ggml_quantize_chunk).

    The length must be a multiple of the type's block size (32 for the Q types, 256 for
    the K-quants). `imatrix`: ggml's quant_weights, one weight per column; the values are
    then rows of len(imatrix) (the types with an importance-matrix quantizer only; types
    whose quantizer ignores it in ggml, like Q8_0 and F16, ignore it here too).
    """
    t, tr = _traits(type_)
    x = as_f32(values)
    n = x.size
    if n % tr.blck_size:
        raise ShapeError(f"quantize {tr.tname}: {n} values is not a multiple of the "
                         f"block size {tr.blck_size}")
    if tr.from_float_imatrix is not None:
        return tr.from_float_imatrix(x, imatrix).tobytes()
    if imatrix is not None and takes_imatrix(t):      # Q4_0 .. Q5_1
        from . import legacy_nb
        from ._kquant import imatrix_rows
        return legacy_nb.quantize_imatrix(t, *imatrix_rows(tr, x, imatrix)).tobytes()
    if _use_numba(t, n, use_numba):
        out = np.empty(tr.row_size(n), dtype=np.uint8)
        _nb_row(t, "quantize")(x, out, n)
        return out.tobytes()
    return tr.from_float(x).tobytes()


def dequantize(type_, data, n: int, *, out=None, use_numba=None) -> np.ndarray:
    """ggml bytes of `type_` holding n values -> float32 array of n values.

    `out`: an optional C-contiguous float32 array of n values to write into and return
    (saves allocating, and page-faulting, a fresh array for every call on big inputs).
    """
    t, tr = _traits(type_)
    n = int(n)
    if n < 0 or n % tr.blck_size:
        raise ShapeError(f"dequantize {tr.tname}: {n} values is not a multiple of the "
                         f"block size {tr.blck_size}")
    raw = as_u8(data)
    if raw.size != tr.row_size(n):
        raise DataError(f"dequantize {tr.tname}: {n} values need {tr.row_size(n)} bytes, "
                        f"got {raw.size}")
    if out is not None and not (isinstance(out, np.ndarray) and out.dtype == np.float32
                                and out.size == n and out.flags.c_contiguous):
        raise DataError(f"dequantize {tr.tname}: out must be a C-contiguous float32 array "
                        f"of {n} values")
    if _use_numba(t, n, use_numba):
        y = np.empty(n, dtype=np.float32) if out is None else out.reshape(-1)
        _nb_row(t, "dequantize")(raw, y, n)
        return y if out is None else out
    y = tr.to_float(raw, n)
    if out is None:
        return y
    out.reshape(-1)[:] = y
    return out
