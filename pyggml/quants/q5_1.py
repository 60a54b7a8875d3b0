"""Q5_1: blocks of 32 values, 24 bytes: f16 d, f16 m, u32 qh, 16 bytes of low nibbles.

x = q * d + m. Quantizer = quantize_row_q5_1_ref: d = (max - min) / 31,
q = (uint8)((x - min) / d + 0.5) -- note: no clamp to 31 here, unlike Q4_1.
"""
from __future__ import annotations

from ..types import GGMLType
from ..types import register_codec
from ._common import q4_q5_codec

QK = 32
TYPE_SIZE = 24

from_float, to_float = q4_q5_codec(5, TYPE_SIZE, affine=True)
register_codec(GGMLType.Q5_1, to_float, from_float)
