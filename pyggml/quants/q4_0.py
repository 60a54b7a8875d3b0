"""Q4_0: blocks of 32 values, 18 bytes: f16 d, then 16 bytes of 4-bit q.

Byte j holds value j in its low nibble and value j+16 in its high nibble;
x = (q - 8) * d. Quantizer = ggml's quantize_row_q4_0_ref: d = max / -8 where max
is the value of largest magnitude (sign kept, first one on ties), so that value
maps to q = 0 exactly, and q = min(15, (int8)(x/d + 8.5)).
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
from ._common import inverse
from ._common import nibbles
from ._common import pack_blocks
from ._common import quiet
from ._common import unpack_nibbles

QK = 32
TYPE_SIZE = 18


@quiet
def from_float(x) -> np.ndarray:
    xb = as_f32(x).reshape(-1, QK)
    d = absmax_signed(xb) / F32(-8)
    idd = inverse(d)
    q = np.minimum(np.int8(15), c_int8(xb * idd[:, None] + F32(8.5)))
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), nibbles(q))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = as_u8(raw)[: n // QK * TYPE_SIZE].reshape(-1, TYPE_SIZE)
    d = f16_at(b, 0)
    q = unpack_nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return (q.astype(np.float32) * d[:, None]).reshape(-1)


register_codec(GGMLType.Q4_0, to_float, from_float)
