"""IQ4_NL: blocks of 32 values, 18 bytes: f16 d, qs[16]; x = d * kvalues_iq4nl[q].

4-bit indices into ggml's non-linear table {-127 .. 113}, nibble order as Q4_0.
Quantizer (quantize(), ggml_quantize_chunk) = quantize_iq4_nl: per block the scale that best
fits the table (x^2 weights, or the importance matrix), searched over 15 trial scales; the
codec's from_float (what ggml's CPU uses in cpy/set_rows) is quantize_row_iq4_nl_ref,
which keeps the first trial scale.
"""
from __future__ import annotations

import numpy as np

from ..types import GGMLType
from ..types import register_codec
from ._common import quiet
from ._common import unpack_nibbles
from ._kquant import KVALUES_IQ4NL
from ._kquant import blocks
from ._kquant import f16s
from ._kquant import quantizers


@quiet
def to_float(raw, n: int) -> np.ndarray:
    b = blocks(raw, n, GGMLType.IQ4_NL)
    v = KVALUES_IQ4NL.astype(np.float32)[unpack_nibbles(b[:, 2:])]
    return (f16s(b, 0) * v).reshape(-1)


# from_float (cpy / set_rows on ggml's CPU) is quantize_row_iq4_nl_ref: no scale search
register_codec(GGMLType.IQ4_NL, to_float,
               *quantizers(GGMLType.IQ4_NL))
