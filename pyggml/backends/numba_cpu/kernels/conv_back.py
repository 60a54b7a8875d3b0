"""Kernels for pyggml/ops/conv_back.py: IM2COL_BACK and POOL_2D_BACK (F32 results).

IM2COL_BACK gathers each image sample from the gradient columns that copied it (float64
sum, one store), split over (image, channel) units. POOL_2D_BACK scatters each output's
gradient into its window in ggml's order with float32 adds, as ggml's kernel; ggml runs it
on one thread, here whole planes go to threads (planes never share a sample), so the bits
are ggml's for every thread count.
"""
from __future__ import annotations

import numba
import numpy as np

from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..intrinsics import f32_array
from . import kernel
from . import param_words

_W_IM2COL_BACK, _W_POOL2D_BACK = param_words("IM2COL_BACK"), param_words("POOL_2D_BACK")
_FLT_MAX = np.float32(np.finfo(np.float32).max)


@numba.njit(nogil=True, cache=True, inline="always")
def _tap_out(i, p, k, d, s, n_out):
    """The output position whose kernel tap k reads input i (stride s, padding p, dilation
    d), or -1 when there is none."""
    t = i + p - k * d
    if t % s != 0:
        return -1
    o = t // s
    return o if 0 <= o < n_out else -1


def _f32_dst_grad(node) -> bool:
    return node.type == GGMLType.F32 and node.src[0].type == GGMLType.F32


@kernel("IM2COL_BACK", supports=_f32_dst_grad)
def im2col_back(desc, ith, nth):
    w = _W_IM2COL_BACK
    s0, s1 = param_i32(desc, w.s0), param_i32(desc, w.s1)
    p0, p1 = param_i32(desc, w.p0), param_i32(desc, w.p1)
    d0, d1 = param_i32(desc, w.d0), param_i32(desc, w.d1)
    is_2d = param_i32(desc, w.is_2D) == 1
    IW = t_ne(desc, DST, 0)
    IH = t_ne(desc, DST, 1) if is_2d else 1
    IC = t_ne(desc, DST, 2) if is_2d else t_ne(desc, DST, 1)
    N = t_ne(desc, DST, 3) if is_2d else t_ne(desc, DST, 2)
    KW = t_ne(desc, SRC1, 0)
    KH = t_ne(desc, SRC1, 1) if is_2d else 1
    OW = t_ne(desc, SRC0, 1)
    OH = t_ne(desc, SRC0, 2) if is_2d else 1
    if not is_2d:
        s1, p1, d1 = 1, 0, 1
    ckk = IC * KH * KW
    g = f32_array(t_addr(desc, SRC0), N * OH * OW * ckk)     # packed (ggml indexes it so)
    nbh = t_nb(desc, DST, 1) if is_2d else 0
    nbc = t_nb(desc, DST, 2) if is_2d else t_nb(desc, DST, 1)
    nbn = t_nb(desc, DST, 3) if is_2d else t_nb(desc, DST, 2)
    u0, u1 = row_range(N * IC, ith, nth)
    for u in range(u0, u1):
        n, ic = u // IC, u % IC
        base = t_addr(desc, DST) + n * nbn + ic * nbc
        for ih in range(IH):
            d = f32_array(base + ih * nbh, IW)
            for iw in range(IW):
                acc = 0.0
                for kh in range(KH):
                    oh = _tap_out(ih, p1, kh, d1, s1, OH)
                    if oh < 0:
                        continue
                    for kw in range(KW):
                        ow = _tap_out(iw, p0, kw, d0, s0, OW)
                        if ow < 0:
                            continue
                        acc += g[((n * OH + oh) * OW + ow) * ckk + (ic * KH + kh) * KW + kw]
                d[iw] = np.float32(acc)


@kernel("POOL_2D_BACK", supports=lambda node: node.type == GGMLType.F32
        and node.src[0].type == GGMLType.F32 and node.src[1].type == GGMLType.F32)
def pool_2d_back(desc, ith, nth):
    w = _W_POOL2D_BACK
    op = param_i32(desc, w.op)
    k0, k1, s0, s1 = param_i32(desc, w.k0), param_i32(desc, w.k1), param_i32(desc, w.s0), param_i32(desc, w.s1)
    p0, p1 = param_i32(desc, w.p0), param_i32(desc, w.p1)
    IW, IH = t_ne(desc, DST, 0), t_ne(desc, DST, 1)
    OW, OH = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    planes = t_ne(desc, DST, 2) * t_ne(desc, DST, 3)
    ka = np.float32(k0 * k1)
    r0, r1 = row_range(planes, ith, nth)
    for pl in range(r0, r1):
        d = f32_array(t_addr(desc, DST) + pl * IW * IH * 4, IW * IH)
        xf = f32_array(t_addr(desc, SRC1) + pl * IW * IH * 4, IW * IH)
        g = f32_array(t_addr(desc, SRC0) + pl * OW * OH * 4, OW * OH)
        for i in range(IW * IH):
            d[i] = np.float32(0.0)
        for oy in range(OH):
            for ox in range(OW):
                g0 = g[oy * OW + ox]
                ix, iy = ox * s0 - p0, oy * s1 - p1
                gv = g0 / ka
                best = -_FLT_MAX
                best_at = -1
                for ky in range(k1):
                    if iy + ky < 0 or iy + ky >= IH:
                        continue
                    for kx in range(k0):
                        if ix + kx < 0 or ix + kx >= IW:
                            continue
                        at = (iy + ky) * IW + ix + kx
                        if op != 0:      # avg: grad / (k0*k1) to every in-range sample
                            d[at] += gv
                        elif xf[at] > best:  # max: the window's first maximum (ggml's scan)
                            best = xf[at]
                            best_at = at
                if best_at >= 0:
                    d[best_at] += g0
