"""Q4_1: blocks of 32 values, 20 bytes: f16 d, f16 m, then 16 bytes of 4-bit q.

Nibble order as Q4_0; x = q * d + m (two float32 roundings, no FMA, as ggml).
Quantizer = quantize_row_q4_1_ref: d = (max - min) / 15, m = min,
q = min(15, (int8)((x - min) / d + 0.5)).
"""
from __future__ import annotations

from ..types import GGMLType
from ..types import register_codec
from ._common import q4_q5_codec

QK = 32
TYPE_SIZE = 20

from_float, to_float = q4_q5_codec(4, TYPE_SIZE, affine=True)
register_codec(GGMLType.Q4_1, to_float, from_float)
