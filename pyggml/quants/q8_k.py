"""Q8_K: blocks of 256 values, 292 bytes: float32 d, int8 qs[256], int16 bsums[16].

The activation type of the K-quant dot products (never stored in files): x = d * q,
bsums[j] = sum of q over values 16j..16j+15. Quantizer = quantize_row_q8_K_ref:
d = max / -127 with max the value of largest |x|, q = min(127, nearest_int(x * -127/max)).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._kquant import blocks


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.Q8_K)
    d = np.ascontiguousarray(b[:, :4]).view("<f4").astype(np.float32)
    return (d * b[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)


def _from_float(x) -> np.ndarray:
    from . import kq_nb
    from ._common import as_f32
    x = np.array(as_f32(x))
    dst = np.zeros(x.size // 256 * 292, np.uint8)
    kq_nb.quantize_row_q8_K(x, dst, x.size)
    return dst


register_codec(GGMLType.Q8_K, to_float, _from_float)
