"""Q5_0: blocks of 32 values, 22 bytes: f16 d, u32 qh (bit 4 of value j at bit j),
then 16 bytes of low nibbles (value j low, value j+16 high).

x = (q - 16) * d. Quantizer = quantize_row_q5_0_ref: d = max / -16 (max = the value of
largest magnitude, first on ties), q = min(31, (int8)(x/d + 16.5)).
"""
from __future__ import annotations

from ..types import GGMLType
from ..types import register_codec
from ._common import q4_q5_codec

QK = 32
TYPE_SIZE = 22

from_float, to_float = q4_q5_codec(5, TYPE_SIZE, affine=False)
register_codec(GGMLType.Q5_0, to_float, from_float)
