"""MXFP4 (OCP microscaling FP4, the weights of gpt-oss): blocks of 32 values, 17 bytes:
e (an E8M0 exponent byte), qs[16] (4-bit codes, nibble order as Q4_0).

x = kvalues_mxfp4[q] * 2^(e - 128): the codes are the E2M1 values doubled
{0, 1, 2, 3, 4, 6, 8, 12, 0, -1, ..., -12}, so the scale is half of E8M0's 2^(e - 127)
(ggml's GGML_E8M0_TO_FP32_HALF; e 0 and 1 give the denormals 2^-128 and 2^-127).
Quantizer = ggml's quantize_row_mxfp4_ref, which is also ggml_quantize_chunk's and the CPU's
from_float: amax over the block (NaN skipped), e = (uint8_t)(floorf(log2f(amax)) - 2 + 127)
(0 for an all-zero block; out-of-range values wrap as the compiled C's conversion does), then
each value takes the first code of least |k*d - x| in float32.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import F32
from ._common import as_f32
from ._common import as_u8
from ._common import c_int32
from ._common import nibbles
from ._common import pack_blocks
from ._common import quiet
from ._common import unpack_nibbles

QK = 32
TYPE_SIZE = 17
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12],
                         dtype=np.int8)


def e8m0_half(e) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: E8M0 bytes -> float32 2^(e - 128) (bit patterns, no rounding)."""
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def log2f(x: np.ndarray) -> np.ndarray:
    """float32 log2 as libm's log2f: log2 in double, rounded once to float32 (what matters
    is floor(): values just below 2^k whose log2 rounds up to k)."""
    return np.log2(x.astype(np.float64)).astype(np.float32)


@quiet
def exponents(xb: np.ndarray) -> np.ndarray:
    """The E8M0 byte of each block [nb, 32] of float32 values."""
    a = np.abs(xb)
    amax = np.where(np.isnan(a), F32(0), a).max(axis=1)   # C: `if (amax < fabsf(v))`
    v = np.floor(log2f(np.where(amax > 0, amax, F32(1)))) - F32(2) + F32(127)
    return np.where(amax > 0, c_int32(v).astype(np.uint8), np.uint8(0))


@quiet
def best_index(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """best_index_mxfp4 for every value: the first code of least fabsf(k*d - x) (strict <,
    so NaN errors never win and code 0 stays)."""
    best = np.zeros(x.shape, np.uint8)
    best_err = np.abs(F32(KVALUES_MXFP4[0]) * d - x)
    for i in range(1, 16):
        err = np.abs(F32(KVALUES_MXFP4[i]) * d - x)
        better = err < best_err
        best = np.where(better, np.uint8(i), best)
        best_err = np.where(better, err, best_err)
    return best


@quiet
def from_float(x) -> np.ndarray:
    xb = as_f32(x).reshape(-1, QK)
    e = exponents(xb)
    q = best_index(xb, e8m0_half(e)[:, None])
    return pack_blocks(len(xb), TYPE_SIZE, e[:, None], nibbles(q))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = as_u8(raw)[: n // QK * TYPE_SIZE].reshape(-1, TYPE_SIZE)
    d = e8m0_half(b[:, 0])
    v = KVALUES_MXFP4.astype(np.float32)[unpack_nibbles(b[:, 1:])]
    return (v * d[:, None]).reshape(-1)


register_codec(GGMLType.MXFP4, to_float, from_float)
