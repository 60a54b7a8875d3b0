"""Kernels for pyggml/ops/conv3d.py: IM2COL_3D (element copies, F32 or F16 result, exact) and
CONV_3D (a direct loop with float64 sums; an F16 kernel rounds the input to F16, as ggml's
im2col buffer in the kernel's type does). Output rows are split over the threads."""
from __future__ import annotations

import numba
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
from .copy import store_f32

F16 = int(GGMLType.F16)


@numba.njit(nogil=True, cache=True, inline="always")
def _geometry(desc):
    """Stride, padding, dilation (op_params 0..8, x y z each) and the input's size (src1)."""
    return ((param_i32(desc, 0), param_i32(desc, 1), param_i32(desc, 2)),
            (param_i32(desc, 3), param_i32(desc, 4), param_i32(desc, 5)),
            (param_i32(desc, 6), param_i32(desc, 7), param_i32(desc, 8)),
            (t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2)))


@numba.njit(nogil=True, cache=True, inline="always")
def _input_at(desc, x, geo, ox, oy, oz, kw, kh, kd):
    """The F32 input (src1) value that kernel tap (kw, kh, kd) of output (ox, oy, oz) reads in
    the volume at x; 0 in the padding (as ggml's im2col writes)."""
    (s0, s1, s2), (p0, p1, p2), (d0, d1, d2), (IW, IH, ID) = geo
    ix, iy, iz = ox * s0 + kw * d0 - p0, oy * s1 + kh * d1 - p1, oz * s2 + kd * d2 - p2
    if 0 <= ix < IW and 0 <= iy < IH and 0 <= iz < ID:
        return ptr_of(x + ix * t_nb(desc, SRC1, 0) + iy * t_nb(desc, SRC1, 1) +
                      iz * t_nb(desc, SRC1, 2), np.float32)[0]
    return np.float32(0.0)


@kernel("IM2COL_3D", supports=lambda node: node.src[1].type == GGMLType.F32 and
        node.type in (GGMLType.F32, GGMLType.F16))
def im2col_3d(desc, ith, nth):
    geo = _geometry(desc)
    IC = param_i32(desc, 9)
    dt = t_type(desc, DST)
    KW, KH, KD = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    OW, OH, NOD = t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    N = t_ne(desc, SRC1, 3) // IC
    OD = NOD // N
    nb0 = t_nb(desc, DST, 0)
    r0, r1 = row_range(OW * OH * NOD, ith, nth)
    for r in range(r0, r1):
        ow, oh, j3 = r % OW, (r // OW) % OH, r // (OW * OH)
        n, od = j3 // OD, j3 % OD
        d = t_row(desc, DST, ow, oh, j3)
        for ic in range(IC):
            x = t_addr(desc, SRC1) + (n * IC + ic) * t_nb(desc, SRC1, 3)
            for kd in range(KD):
                for kh in range(KH):
                    for kw in range(KW):
                        v = _input_at(desc, x, geo, ow, oh, od, kw, kh, kd)
                        col = ((ic * KD + kd) * KH + kh) * KW + kw
                        store_f32(d + col * nb0, dt, v)


@kernel("CONV_3D", supports=lambda node: node.src[1].type == GGMLType.F32)
def conv_3d(desc, ith, nth):
    geo = _geometry(desc)
    IC, OC = param_i32(desc, 9), param_i32(desc, 11)
    kt = t_type(desc, SRC0)
    KW, KH, KD = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    OW, OH, OD = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    r0, r1 = row_range(OH * OD * t_ne(desc, DST, 3), ith, nth)
    for r in range(r0, r1):
        oy, oz, j3 = r % OH, (r // OH) % OD, r // (OH * OD)
        n, oc = j3 // OC, j3 % OC
        d = t_row(desc, DST, oy, oz, j3)
        for ox in range(OW):
            acc = 0.0
            for ic in range(IC):
                x = t_addr(desc, SRC1) + (n * IC + ic) * t_nb(desc, SRC1, 3)
                k = t_addr(desc, SRC0) + (oc * IC + ic) * t_nb(desc, SRC0, 3)
                # ggml's im2col writes 0 for padding and the gemm still multiplies it by
                # the weight: an inf/NaN weight over padding gives NaN, so no skipping
                for kd in range(KD):
                    for kh in range(KH):
                        for kw in range(KW):
                            v = _input_at(desc, x, geo, ox, oy, oz, kw, kh, kd)
                            if kt == F16:       # 0 (padding) stays 0
                                v = qnb.f16_to_f32(qnb.f32_to_f16(v))
                            w = load_f32(k + kw * t_nb(desc, SRC0, 0) + kh * t_nb(desc, SRC0, 1) +
                                         kd * t_nb(desc, SRC0, 2), kt)
                            acc += np.float64(w) * np.float64(v)
            ptr_of(d + ox * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)
