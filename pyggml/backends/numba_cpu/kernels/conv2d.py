"""Kernels for pyggml/ops/conv2d.py (CONV_2D_DW, CONV_TRANSPOSE_2D): straight loops over any
strides with float64 sums, so results sit within rounding
of the float64 reference (an F16 transposed-conv kernel rounds the input to F16, as ggml).
Each output element is gathered, never scattered, so threads own disjoint output rows and the
results are identical for every thread count."""
from __future__ import annotations

import numpy as np

from ....quants import nb as qnb
from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_row
from ..desc import t_type
from ..intrinsics import ptr_of
from . import kernel
from .copy import load_f32

F16 = int(GGMLType.F16)


@kernel("CONV_2D_DW", supports=lambda node: node.src[1].type == GGMLType.F32)
def conv_2d_dw(desc, ith, nth):
    s0, s1 = param_i32(desc, 0), param_i32(desc, 1)
    p0, p1 = param_i32(desc, 2), param_i32(desc, 3)
    d0, d1 = param_i32(desc, 4), param_i32(desc, 5)
    kt = t_type(desc, SRC0)
    KW, KH = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    IW, IH = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1)
    OW, OH, C = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    r0, r1 = row_range(OH * C * t_ne(desc, DST, 3), ith, nth)
    for r in range(r0, r1):
        oy, c, n = r % OH, (r // OH) % C, r // (OH * C)
        k = t_addr(desc, SRC0) + c * t_nb(desc, SRC0, 3)
        x = t_addr(desc, SRC1) + c * t_nb(desc, SRC1, 2) + n * t_nb(desc, SRC1, 3)
        d = t_row(desc, DST, oy, c, n)
        for ox in range(OW):
            acc = 0.0
            for ky in range(KH):
                iy = oy * s1 + ky * d1 - p1
                if iy < 0 or iy >= IH:
                    continue
                for kx in range(KW):
                    ix = ox * s0 + kx * d0 - p0
                    if ix < 0 or ix >= IW:
                        continue
                    w = load_f32(k + kx * t_nb(desc, SRC0, 0) + ky * t_nb(desc, SRC0, 1), kt)
                    v = ptr_of(x + ix * t_nb(desc, SRC1, 0) + iy * t_nb(desc, SRC1, 1),
                               np.float32)[0]
                    acc += np.float64(w) * np.float64(v)
            ptr_of(d + ox * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)


@kernel("CONV_TRANSPOSE_2D", supports=lambda node: node.src[1].type == GGMLType.F32)
def conv_transpose_2d(desc, ith, nth):
    """out[n, co, oy, ox] = sum over ci and the taps (ky, kx) with (oy - ky, ox - kx) on the
    stride grid of x[n, ci, (oy - ky) / s, (ox - kx) / s] * k[kx, ky, co, ci]."""
    s = param_i32(desc, 0)
    kt = t_type(desc, SRC0)
    KW, KH, CI = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 3)
    IW, IH = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1)
    OW, OH, CO = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    r0, r1 = row_range(OH * CO * t_ne(desc, DST, 3), ith, nth)
    for r in range(r0, r1):
        oy, co, n = r % OH, (r // OH) % CO, r // (OH * CO)
        d = t_row(desc, DST, oy, co, n)
        xb = t_addr(desc, SRC1) + n * t_nb(desc, SRC1, 3)
        kb = t_addr(desc, SRC0) + co * t_nb(desc, SRC0, 2)
        for ox in range(OW):
            acc = 0.0
            for ky in range(KH):
                ty = oy - ky
                if ty < 0 or ty % s != 0 or ty // s >= IH:
                    continue
                iy = ty // s
                for kx in range(KW):
                    tx = ox - kx
                    if tx < 0 or tx % s != 0 or tx // s >= IW:
                        continue
                    ix = tx // s
                    for ci in range(CI):
                        w = load_f32(kb + kx * t_nb(desc, SRC0, 0) + ky * t_nb(desc, SRC0, 1) +
                                     ci * t_nb(desc, SRC0, 3), kt)
                        v = ptr_of(xb + ix * t_nb(desc, SRC1, 0) + iy * t_nb(desc, SRC1, 1) +
                                   ci * t_nb(desc, SRC1, 2), np.float32)[0]
                        if kt == F16:
                            v = qnb.f16_to_f32(qnb.f32_to_f16(v))
                        acc += np.float64(w) * np.float64(v)
            ptr_of(d + ox * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)
