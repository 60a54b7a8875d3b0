"""F16: IEEE binary16, stored as uint16; conversions exactly as ggml's (ggml-impl.h).

fp32 -> fp16 rounds to nearest-even (NumPy's cast does too), overflows to inf and
keeps denormals. The two places where NumPy differs from ggml are NaNs:
- ggml turns every NaN into 0x7E00 (sign kept); NumPy keeps the payload;
- ggml's fp16 -> fp32 goes through a float multiply, which quiets a signaling NaN
  (sets bit 22); NumPy's cast keeps it signaling.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType, register_codec
from ._common import as_f32, as_u8

_QUIET_F32 = np.uint32(0x00400000)


def fp32_to_fp16(x) -> np.ndarray:
    """float32 array -> uint16 array of ggml fp16 bits (round to nearest-even)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        h = np.where(nan, sign | np.uint16(0x7E00), h)
    return h


def fp16_to_fp32(h) -> np.ndarray:
    """uint16 array of fp16 bits -> float32 array (exact; signaling NaNs quieted as ggml)."""
    h = np.asarray(h, dtype=np.uint16)
    f = h.view(np.float16).astype(np.float32)
    nan = np.isnan(f)
    if nan.any():
        f = np.where(nan, (f.view(np.uint32) | _QUIET_F32).view(np.float32), f)
    return f


def to_float(raw, n: int) -> np.ndarray:
    return fp16_to_fp32(as_u8(raw)[: 2 * n].view("<u2"))


def from_float(x) -> np.ndarray:
    return fp32_to_fp16(as_f32(x)).astype("<u2").view(np.uint8)


register_codec(GGMLType.F16, to_float, from_float)
