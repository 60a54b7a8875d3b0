"""Q8_0: blocks of 32 values, 34 bytes: f16 d, then 32 int8 q; x = q * d.

Quantizer = quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) (half away from
zero, computed as x * (1/d) in float32).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import F32
from ._common import absmax_c
from ._common import blocks
from ._common import c_int8
from ._common import c_roundf
from ._common import f16_at
from ._common import f16_field
from ._common import inverse
from ._common import pack_blocks
from ._common import quiet
from ._common import raw_blocks
from ._common import scaled

QK = 32
TYPE_SIZE = 34


def quantize_blocks(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[nb, 32] float32 -> (d float32 [nb], q int8 [nb, 32]); shared with Q8_1."""
    d = absmax_c(xb) / F32(127)
    q = c_int8(c_roundf(xb * inverse(d)[:, None]))
    return d, q


@quiet
def from_float(x) -> np.ndarray:
    xb = blocks(x, QK)
    d, q = quantize_blocks(xb)
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), q.view(np.uint8))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = raw_blocks(raw, n, QK, TYPE_SIZE)
    return scaled(b[:, 2:].view(np.int8), f16_at(b, 0))


register_codec(GGMLType.Q8_0, to_float, from_float)
