"""Q5_0: blocks of 32 values, 22 bytes: f16 d, u32 qh (bit 4 of value j at bit j),
then 16 bytes of low nibbles (value j low, value j+16 high).

x = (q - 16) * d. Quantizer = quantize_row_q5_0_ref: d = max / -16 (max = the value of
largest magnitude, first on ties), q = min(31, (int8)(x/d + 16.5)).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import F32
from ._common import absmax_signed
from ._common import as_f32
from ._common import as_u8
from ._common import c_int8
from ._common import f16_at
from ._common import f16_field
from ._common import high_bits
from ._common import inverse
from ._common import nibbles
from ._common import pack_blocks
from ._common import quiet
from ._common import unpack_high_bits
from ._common import unpack_nibbles

QK = 32
TYPE_SIZE = 22


@quiet
def from_float(x) -> np.ndarray:
    xb = as_f32(x).reshape(-1, QK)
    d = absmax_signed(xb) / F32(-16)
    idd = inverse(d)
    q = np.minimum(np.int8(31), c_int8(xb * idd[:, None] + F32(16.5))).astype(np.uint8)
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), high_bits(q), nibbles(q & 0x0F))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = as_u8(raw)[: n // QK * TYPE_SIZE].reshape(-1, TYPE_SIZE)
    d = f16_at(b, 0)
    q = (unpack_nibbles(b[:, 6:]) | unpack_high_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
    return (q.astype(np.float32) * d[:, None]).reshape(-1)


register_codec(GGMLType.Q5_0, to_float, from_float)
