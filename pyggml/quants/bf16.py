"""BF16: the upper 16 bits of an fp32 (ggml_compute_fp32_to_bf16 / _bf16_to_fp32).

fp32 -> bf16 rounds to nearest-even on the dropped 16 bits; a NaN keeps its upper
bits and is forced quiet (`| 64`, bit 6 of the bf16 = bit 22 of the fp32).
Denormals are kept (this is the reference path, not the AVX512-BF16 one).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import as_f32
from ._common import as_u8


def fp32_to_bf16(x) -> np.ndarray:
    """float32 array -> uint16 array of bf16 bits."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16  # wraps only for NaNs
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (u >> 16) | np.uint32(64)
    return np.where(nan, quiet, rounded).astype(np.uint16)


def bf16_to_fp32(h) -> np.ndarray:
    """uint16 array of bf16 bits -> float32 array (exact)."""
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_float(raw, n: int) -> np.ndarray:
    return bf16_to_fp32(as_u8(raw)[: 2 * n].view("<u2"))


def from_float(x) -> np.ndarray:
    return fp32_to_bf16(as_f32(x)).astype("<u2").view(np.uint8)


register_codec(GGMLType.BF16, to_float, from_float)
