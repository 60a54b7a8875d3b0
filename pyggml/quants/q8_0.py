"""Q8_0: blocks of 32 values, 34 bytes: f16 d, then 32 int8 q; x = q * d.

Quantizer = quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) (half away from
zero, computed as x * (1/d) in float32). ggml-cpu's own from_float (x86 SIMD; what cpy and
set_rows store) is from_float_cpu: q = rint(x * (127 / amax)), ties to even (quants.nb's
quantize_row_q8_0_cpu is its Numba twin).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import F32
from ._common import absmax_c
from ._common import blocks
from ._common import c_int8
from ._common import c_int32
from ._common import c_roundf
from ._common import f16_at
from ._common import f16_field
from ._common import inverse
from ._common import pack_blocks
from ._common import quiet
from ._common import raw_blocks
from ._common import scaled

QK = 32
TYPE_SIZE = 34


def quantize_blocks(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[nb, 32] float32 -> (d float32 [nb], q int8 [nb, 32]); shared with Q8_1."""
    d = absmax_c(xb) / F32(127)
    q = c_int8(c_roundf(xb * inverse(d)[:, None]))
    return d, q


@quiet
def from_float(x) -> np.ndarray:
    xb = blocks(x, QK)
    d, q = quantize_blocks(xb)
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), q.view(np.uint8))


def _max_ps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSE/AVX max_ps lane by lane: a > b ? a : b (b when either is NaN)."""
    return np.where(a > b, a, b)


def _amax_avx2(xb: np.ndarray) -> np.ndarray:
    """max |x| of each block, reduced in the order of ggml's AVX2 code (matters for NaN):
    8 lanes over the block's 4 vectors, then high half with low, then the 4 left."""
    a = np.abs(xb).reshape(-1, 4, 8)
    acc = a[:, 0]
    for k in range(1, 4):
        acc = _max_ps(acc, a[:, k])
    r = [_max_ps(acc[:, 4 + i], acc[:, i]) for i in range(4)]
    return _max_ps(_max_ps(r[0], r[2]), _max_ps(r[1], r[3]))


def quantize_blocks_cpu(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[nb, 32] float32 -> (d float32 [nb], q int64 [nb, 32] before the saturating packs)
    as ggml-cpu's AVX2 quantize_row_q8_0: id = 127 / amax, cvtps_epi32 of the value rounded
    half to even (INT_MIN for NaN); shared with Q8_1, whose s sums q before saturation."""
    amax = _amax_avx2(xb)
    d = amax / F32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        idd = np.where(amax != 0, F32(127) / amax, F32(0)).astype(np.float32)
        v = np.rint(xb * idd[:, None])
    return d, c_int32(v).astype(np.int64)     # v is integral: truncation is cvtps_epi32


@quiet
def from_float_cpu(x) -> np.ndarray:
    xb = blocks(x, QK)
    d, q = quantize_blocks_cpu(xb)
    q8 = np.clip(q, -128, 127).astype(np.int8)
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), q8.view(np.uint8))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = raw_blocks(raw, n, QK, TYPE_SIZE)
    return scaled(b[:, 2:].view(np.int8).astype(np.float32), f16_at(b, 0))


register_codec(GGMLType.Q8_0, to_float, from_float, from_float_cpu=from_float_cpu)
