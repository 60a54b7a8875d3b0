"""Q2_K: super-blocks of 256 values, 84 bytes: scales[16], qs[64], f16 d, f16 dmin.

16 sub-blocks of 16 values; scales[j] holds the 4-bit scale (low nibble) and 4-bit min
(high nibble) of sub-block j; x = d*sc * q - dmin*m with q 2-bit. qs byte l of 32-byte
chunk c holds values 128c + l + 32s at bits 2s. Quantizer = ggml's quantize_q2_K: the
reference (make_qkx2_quants, |x| weights) or, with an importance matrix, make_qkx3_quants
and make_qp_quants for the scales.
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


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.Q2_K)
    d, dmin = f16s(b, 80), f16s(b, 82)
    sc = b[:, :16]
    dl = (d * (sc & 0xF).astype(np.float32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    q = crumbs(b[:, 16:80]).reshape(-1, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(-1)


register_codec(GGMLType.Q2_K, to_float, *quantizers(GGMLType.Q2_K))
