"""Kernel for pyggml/ops/col2im.py: COL2IM_1D gathers each output sample from the columns
that overlap it (float64 sums, stored in the input's type); any thread count, same bits."""
from __future__ import annotations

import numpy as np

from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_type
from . import kernel
from .copy import load_f32
from .copy import store_f32


@kernel("COL2IM_1D", supports=lambda node: node.type in (GGMLType.F32, GGMLType.F16,
                                                          GGMLType.BF16))
def col2im_1d(desc, ith, nth):
    s0, OC, p0 = param_i32(desc, 0), param_i32(desc, 1), param_i32(desc, 2)
    t = t_type(desc, SRC0)
    K = t_ne(desc, SRC0, 0) // OC
    T_in, T_out = t_ne(desc, SRC0, 1), t_ne(desc, DST, 0)
    u0, u1 = row_range(OC * T_out, ith, nth)     # units (oc, t): balanced even for OC = 1
    for u in range(u0, u1):
        oc, to = u // T_out, u % T_out
        ta = to + p0                        # position in the uncropped signal
        lo = max((ta - K + s0) // s0, 0)    # first t_in with ta - t_in*s0 < K
        hi = min(ta // s0, T_in - 1)
        acc = 0.0
        for ti in range(lo, hi + 1):
            k = ta - ti * s0
            acc += np.float64(load_f32(t_addr(desc, SRC0) + ti * t_nb(desc, SRC0, 1) +
                                       (oc * K + k) * t_nb(desc, SRC0, 0), t))
        d = t_addr(desc, DST) + oc * t_nb(desc, DST, 1) + to * t_nb(desc, DST, 0)
        store_f32(d, t, np.float32(acc))
