"""Q5_K: super-blocks of 256 values, 176 bytes: f16 d, f16 dmin, scales[12], qh[32], qs[128].

As Q4_K with a fifth bit: the high bit of sub-block s (0..7) value l is bit s of qh[l].
Quantizer = quantize_q5_K (reference make_qkx2_quants with nmax 31, or the importance
matrix search).
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._kquant import blocks
from ._kquant import quantizers
from .q4_k import affine
from .q4_k import nibbles64


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.Q5_K)
    hi = np.unpackbits(b[:, 16:48][:, None, :], axis=1, bitorder="little")  # [nb, 8, 32]
    return affine(b, nibbles64(b[:, 48:]) | (hi << 4))


register_codec(GGMLType.Q5_K, to_float, *quantizers(GGMLType.Q5_K))
