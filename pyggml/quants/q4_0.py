"""Q4_0: blocks of 32 values, 18 bytes: f16 d, then 16 bytes of 4-bit q.

Byte j holds value j in its low nibble and value j+16 in its high nibble;
x = (q - 8) * d. Quantizer = ggml's quantize_row_q4_0_ref: d = max / -8 where max
is the value of largest magnitude (sign kept, first one on ties), so that value
maps to q = 0 exactly, and q = min(15, (int8)(x/d + 8.5)).
"""
from __future__ import annotations

from ..types import GGMLType
from ..types import register_codec
from ._common import q4_q5_codec

QK = 32
TYPE_SIZE = 18

from_float, to_float = q4_q5_codec(4, TYPE_SIZE, affine=False)
register_codec(GGMLType.Q4_0, to_float, from_float)
