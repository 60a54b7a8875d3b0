"""Q3_K: super-blocks of 256 values, 110 bytes: hmask[32], qs[64], scales[12], f16 d.

16 sub-blocks of 16 values with signed 6-bit scales (low 4 bits in scales[0..7] nibbles,
high 2 bits in scales[8..11]), minus 32; x = d*sc * (q - 4*(high bit clear)) with q the
2-bit low part (order as Q2_K) and the high bit of value j at bit j//32 of hmask[j%32].
Quantizer = quantize_q3_K: reference make_q3_quants, or make_qx_quants weighted by the
importance matrix.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._kquant import blocks
from ._kquant import crumbs
from ._kquant import f16s
from ._kquant import quantizers


def scales(s: np.ndarray) -> np.ndarray:
    """[nb, 12] bytes -> [nb, 16] signed scales."""
    s = s.astype(np.int32)
    lo = np.concatenate([s[:, :8] & 0xF, s[:, :8] >> 4], axis=1)
    hi = (s[:, 8:12][:, None, :] >> (2 * np.arange(4))[None, :, None]) & 3
    return (lo | (hi.reshape(-1, 16) << 4)) - 32


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.Q3_K)
    d = f16s(b, 108)
    dl = (d * scales(b[:, 96:108]).astype(np.float32))[:, :, None]
    low = crumbs(b[:, 32:96]).astype(np.int32)
    hm = np.unpackbits(b[:, :32][:, None, :], axis=1, bitorder="little").reshape(-1, 256)
    q = (low - 4 * (1 - hm.astype(np.int32))).astype(np.float32).reshape(-1, 16, 16)
    return (dl * q).reshape(-1)


register_codec(GGMLType.Q3_K, to_float, *quantizers(GGMLType.Q3_K))
