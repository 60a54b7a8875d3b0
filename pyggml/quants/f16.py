"""F16: IEEE binary16, stored as uint16; conversions exactly as ggml's (ggml-impl.h).

fp32 -> fp16 rounds to nearest-even (NumPy's cast does too), overflows to inf and
keeps denormals. The two places where NumPy differs from ggml are NaNs:
- ggml turns every NaN into 0x7E00 (sign kept); NumPy keeps the payload;
- ggml's fp16 -> fp32 goes through a float multiply, which quiets a signaling NaN
  (sets bit 22); NumPy's cast keeps it signaling.
The two conversions live in _common.py (every block format's fp16 fields use them).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import as_f32  # noqa: F401  (public here)
from ._common import as_u8  # noqa: F401  (public here)
from ._common import fp16_to_fp32  # noqa: F401  (public here)
from ._common import fp32_to_fp16  # noqa: F401  (public here)


def to_float(raw, n: int) -> np.ndarray:
    return fp16_to_fp32(as_u8(raw)[: 2 * n].view("<u2"))


def from_float(x) -> np.ndarray:
    return fp32_to_fp16(as_f32(x)).astype("<u2").view(np.uint8)


register_codec(GGMLType.F16, to_float, from_float)
