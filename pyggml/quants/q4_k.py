"""Q4_K: super-blocks of 256 values, 144 bytes: f16 d, f16 dmin, scales[12], qs[128].

8 sub-blocks of 32 values, each with a 6-bit scale sc and 6-bit min m packed in the 12
scale bytes (get_scale_min_k4); x = d*sc * q - dmin*m. qs: 32 bytes per 64 values, value
l in the low nibble of byte l, value l+32 in the high nibble. Quantizer = quantize_q4_K:
reference make_qkx2_quants (weights av_x + |x|), or with an importance matrix
make_qkx3_quants and make_qp_quants for the scales.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._kquant import blocks
from ._kquant import f16s
from ._kquant import quantizers
from ._kquant import scale_min_k4


def nibbles64(qs: np.ndarray) -> np.ndarray:
    """[nb, 128] bytes -> [nb, 8, 32] 4-bit values (per 32-byte chunk: low nibbles, high)."""
    q = qs.reshape(-1, 4, 1, 32)
    return ((q >> np.array([0, 4], np.uint8)[None, None, :, None]) & 0xF).reshape(-1, 8, 32)


def affine(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """d*sc * q - dmin*m over [nb, 8, 32] quants (Q4_K and Q5_K)."""
    d, dmin = f16s(b, 0), f16s(b, 2)
    sc, m = scale_min_k4(b[:, 4:16])
    d1 = (d * sc.astype(np.float32))[:, :, None]
    m1 = (dmin * m.astype(np.float32))[:, :, None]
    return (d1 * q.astype(np.float32) - m1).reshape(-1)


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.Q4_K)
    return affine(b, nibbles64(b[:, 16:]))


register_codec(GGMLType.Q4_K, to_float, *quantizers(GGMLType.Q4_K))
