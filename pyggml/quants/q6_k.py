"""Q6_K: super-blocks of 256 values, 210 bytes: ql[128], qh[64], int8 scales[16], f16 d.

16 sub-blocks of 16 values; x = d * sc * (q - 32), q 6-bit. Per 128 values (64 ql bytes,
32 qh bytes): value l (+32, +64, +96) has its low 4 bits in the low nibble of ql[l]
(ql[l+32], high nibble of ql[l], of ql[l+32]) and its high 2 bits at bits 0 (2, 4, 6) of
qh[l]. Quantizer = quantize_q6_K: make_qx_quants per sub-block (x^2 weights, or the
importance matrix as weights).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._kquant import blocks
from ._kquant import f16s
from ._kquant import quantizers


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.Q6_K)
    ql = b[:, :128].reshape(-1, 2, 1, 2, 32)          # [nb, chunk, -, half, l]
    low = (ql >> np.array([0, 4], np.uint8)[None, None, :, None, None]) & 0xF
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = (low.reshape(-1, 2, 4, 32) | (hi << 4)).astype(np.int32) - 32   # [nb, chunk, s, l]
    sc = b[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 16, 1)
    d = f16s(b, 208)[:, :, None]
    return ((d * sc) * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1)


register_codec(GGMLType.Q6_K, to_float, *quantizers(GGMLType.Q6_K))
