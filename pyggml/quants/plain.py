"""Element types stored as a plain NumPy dtype: F32, F64, I8, I16, I32, I64.

to_float reads the values (little-endian, as ggml on x86) and converts them to
float32; from_float casts float32 values to the dtype (ints truncate toward zero,
as C's casts in ggml's cpy F32 -> I32).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import as_f32
from ._common import as_u8


def _codecs(dtype):
    dt = np.dtype(dtype).newbyteorder("<")

    def to_float(raw, n: int) -> np.ndarray:
        return as_u8(raw)[: n * dt.itemsize].view(dt).astype(np.float32)

    def from_float(x) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return as_f32(x).astype(dt).view(np.uint8)

    return to_float, from_float


for _t, _dt in ((GGMLType.F32, np.float32), (GGMLType.F64, np.float64),
                (GGMLType.I8, np.int8), (GGMLType.I16, np.int16),
                (GGMLType.I32, np.int32), (GGMLType.I64, np.int64)):
    register_codec(_t, *_codecs(_dt))
del _t, _dt
