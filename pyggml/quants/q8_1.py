"""Q8_1: blocks of 32 values, 36 bytes: f16 d, f16 s = d * sum(q), then 32 int8 q.

The activation format of Q4_1/Q5_1 dot products. Quantizer = quantize_row_q8_1_ref
(q as Q8_0; s = (float)sum * d rounded to fp16). ggml has no to_float for Q8_1;
ours is x = q * d. ggml-cpu's own from_float (x86 SIMD) is from_float_cpu: q as Q8_0's,
s = d * (the int32 sum of q before saturation).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import blocks
from ._common import f16_at
from ._common import f16_field
from ._common import pack_blocks
from ._common import quiet
from ._common import raw_blocks
from ._common import scaled
from .q8_0 import quantize_blocks
from .q8_0 import quantize_blocks_cpu

QK = 32
TYPE_SIZE = 36


@quiet
def from_float(x) -> np.ndarray:
    xb = blocks(x, QK)
    d, q = quantize_blocks(xb)
    s = q.sum(axis=1, dtype=np.int32).astype(np.float32) * d
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), f16_field(s), q.view(np.uint8))


@quiet
def from_float_cpu(x) -> np.ndarray:
    xb = blocks(x, QK)
    d, q = quantize_blocks_cpu(xb)
    s32 = ((q.sum(axis=1) + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31     # int32 lane sums wrap
    s = d * s32.astype(np.float32)
    q8 = np.clip(q, -128, 127).astype(np.int8)
    return pack_blocks(len(xb), TYPE_SIZE, f16_field(d), f16_field(s), q8.view(np.uint8))


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = raw_blocks(raw, n, QK, TYPE_SIZE)
    return scaled(b[:, 4:].view(np.int8).astype(np.float32), f16_at(b, 0))


register_codec(GGMLType.Q8_1, to_float, from_float, from_float_cpu=from_float_cpu)
