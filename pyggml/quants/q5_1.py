"""Q5_1: blocks of 32 values, 24 bytes: f16 d, f16 m, u32 qh, 16 bytes of low nibbles.

x = q * d + m. Quantizer = quantize_row_q5_1_ref: d = (max - min) / 31,
q = (uint8)((x - min) / d + 0.5) -- note: no clamp to 31 here, unlike Q4_1.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import F32
from ._common import as_f32
from ._common import as_u8
from ._common import c_int8
from ._common import f16_at
from ._common import f16_field
from ._common import high_bits
from ._common import inverse
from ._common import min_max_c
from ._common import nibbles
from ._common import pack_blocks
from ._common import quiet
from ._common import unpack_high_bits
from ._common import unpack_nibbles

QK = 32
TYPE_SIZE = 24


@quiet
def from_float(x) -> np.ndarray:
    xb = as_f32(x).reshape(-1, QK)
    mn, mx = min_max_c(xb)
    d = (mx - mn) / F32(31)
    idd = inverse(d)
    q = c_int8((xb - mn[:, None]) * idd[:, None] + F32(0.5)).astype(np.uint8)
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), f16_field(mn), high_bits(q),
                       nibbles(q & 0x0F))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = as_u8(raw)[: n // QK * TYPE_SIZE].reshape(-1, TYPE_SIZE)
    d, m = f16_at(b, 0), f16_at(b, 2)
    q = (unpack_nibbles(b[:, 8:]) | unpack_high_bits(b[:, 4:8])).astype(np.float32)
    return (q * d[:, None] + m[:, None]).reshape(-1)


register_codec(GGMLType.Q5_1, to_float, from_float)
