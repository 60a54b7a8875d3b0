"""IQ4_XS: super-blocks of 256 values, 136 bytes: f16 d, u16 scales_h, scales_l[4], qs[128].

8 sub-blocks of 32 values with 6-bit scales ls (low 4 bits: nibble ib%2 of scales_l[ib/2];
high 2 bits: bits 2ib of scales_h); x = d*(ls - 32) * kvalues_iq4nl[q], nibbles per
sub-block as IQ4_NL. Quantizer = quantize_iq4_xs.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._common import unpack_nibbles
from ._kquant import KVALUES_IQ4NL
from ._kquant import blocks
from ._kquant import f16s
from ._kquant import quantizers


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.IQ4_XS)
    sh = b[:, 2].astype(np.int32) | (b[:, 3].astype(np.int32) << 8)
    ib = np.arange(8)
    ls = ((b[:, 4:8][:, ib // 2] >> (4 * (ib % 2))).astype(np.int32) & 0xF) \
        | (((sh[:, None] >> (2 * ib)) & 3) << 4)
    dl = (f16s(b, 0) * (ls - 32).astype(np.float32))[:, :, None]
    q = unpack_nibbles(b[:, 8:].reshape(-1, 16)).reshape(-1, 8, 32)
    return (dl * KVALUES_IQ4NL.astype(np.float32)[q]).reshape(-1)


register_codec(GGMLType.IQ4_XS, to_float, *quantizers(GGMLType.IQ4_XS))
