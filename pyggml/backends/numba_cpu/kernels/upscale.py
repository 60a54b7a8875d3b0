"""Kernel for UPSCALE (pyggml/ops/upscale.py): nearest, bilinear and bicubic (with
align-corners and antialias flags) over any strides, float64 sums; identical for every
thread count.
"""
from __future__ import annotations

import numba
import numpy as np

from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import param_i32
from ..desc import row_coords
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne4
from ..desc import t_row
from ..intrinsics import ptr_of
from . import kernel
from . import param_words

F32 = int(GGMLType.F32)
_jit = numba.njit(nogil=True, cache=True)
_W_UPSCALE = param_words("UPSCALE")


# --- UPSCALE ----------------------------------------------------------------------------------
# Coordinates and weights in float32 exactly as ggml computes them, the sums in float64.

@_jit
def _up_nearest(i, sf, n_src):
    return min(np.int64(np.trunc(np.float32(i) / sf)), n_src - 1)


@_jit
def _up_lin(i, sf, po, n_src):
    c = (np.float32(i) + po) / sf - po
    c0 = np.int64(np.floor(c))
    c1 = min(max(c0 + 1, 0), n_src - 1)
    c0 = min(max(c0, 0), n_src - 1)
    dd = c - np.float32(c0)
    dd = min(max(dd, np.float32(0.0)), np.float32(1.0))
    return c0, c1, np.float64(dd)


@_jit
def _cubic_w(t, a):
    w1 = ((a + np.float32(2.0)) * t - (a + np.float32(3.0))) * t * t + np.float32(1.0)
    return w1


@_jit
def _cubic_w2(t, a):
    return ((a * t - np.float32(5.0) * a) * t + np.float32(8.0) * a) * t - np.float32(4.0) * a


@_jit
def _cubic_weights(d, a):
    return (np.float64(_cubic_w2(d + np.float32(1.0), a)), np.float64(_cubic_w(d, a)),
            np.float64(_cubic_w(np.float32(1.0) - d, a)),
            np.float64(_cubic_w2(np.float32(2.0) - d, a)))


@_jit
def _aa_w(s, c, po, inv):
    w = np.float32(1.0) - abs((np.float32(s) - c + po) * inv)
    return np.float64(max(w, np.float32(0.0)))


@kernel("UPSCALE", supports=lambda node: node.src[0].type == GGMLType.F32, n_tasks=lambda node, n: n)
def upscale(desc, ith, nth):
    f1 = np.float32(1.0)
    mode_flags = param_i32(desc, _W_UPSCALE.mode)
    mode = mode_flags & 0xFF
    ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
    n0, n1, n2, n3 = t_ne4(desc, SRC0)
    sf0 = np.float32(ne0) / np.float32(n0)
    sf1 = np.float32(ne1) / np.float32(n1)
    sf2 = np.float32(ne2) / np.float32(n2)
    sf3 = np.float32(ne3) / np.float32(n3)
    po = np.float32(0.5)
    if mode_flags & (1 << 8):                       # align corners
        po = np.float32(0.0)
        if ne0 > 1 and n0 > 1:
            sf0 = np.float32(ne0 - 1) / np.float32(n0 - 1)
        if ne1 > 1 and n1 > 1:
            sf1 = np.float32(ne1 - 1) / np.float32(n1 - 1)
    antialias = (mode_flags & (1 << 9)) != 0
    sn0, sn1 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        plane = t_addr(desc, SRC0) + _up_nearest(i2, sf2, n2) * t_nb(desc, SRC0, 2) + \
            _up_nearest(i3, sf3, n3) * t_nb(desc, SRC0, 3)
        d = t_row(desc, DST, i1, i2, i3)
        for i0 in range(ne0):
            val = 0.0
            if mode == 0:
                val = np.float64(ptr_of(plane + _up_nearest(i1, sf1, n1) * sn1 +
                                        _up_nearest(i0, sf0, n0) * sn0, np.float32)[0])
            elif mode == 1 and antialias:
                sup1 = max(f1, f1 / sf1)
                sup0 = max(f1, f1 / sf0)
                inv1, inv0 = f1 / sup1, f1 / sup0
                cy = (np.float32(i1) + po) / sf1
                cx = (np.float32(i0) + po) / sf0
                ylo = max(np.int64(np.trunc(cy - sup1 + po)), 0)
                yhi = min(np.int64(np.trunc(cy + sup1 + po)), n1)
                xlo = max(np.int64(np.trunc(cx - sup0 + po)), 0)
                xhi = min(np.int64(np.trunc(cx + sup0 + po)), n0)
                num, wys, wxs = 0.0, 0.0, 0.0
                for sx in range(xlo, xhi):
                    wxs += _aa_w(sx, cx, po, inv0)
                for sy in range(ylo, yhi):
                    wy = _aa_w(sy, cy, po, inv1)
                    wys += wy
                    if wy <= 0.0:
                        continue
                    for sx in range(xlo, xhi):
                        wx = _aa_w(sx, cx, po, inv0)
                        if wx > 0.0:
                            num += wy * np.float64(ptr_of(plane + sy * sn1 + sx * sn0,
                                                          np.float32)[0]) * wx
                den = wys * wxs
                val = num / den if den > 0.0 else 0.0
            elif mode == 1:
                y0, y1, dy = _up_lin(i1, sf1, po, n1)
                x0, x1, dx = _up_lin(i0, sf0, po, n0)
                a = np.float64(ptr_of(plane + y0 * sn1 + x0 * sn0, np.float32)[0])
                b = np.float64(ptr_of(plane + y0 * sn1 + x1 * sn0, np.float32)[0])
                c = np.float64(ptr_of(plane + y1 * sn1 + x0 * sn0, np.float32)[0])
                e = np.float64(ptr_of(plane + y1 * sn1 + x1 * sn0, np.float32)[0])
                val = a * (1 - dx) * (1 - dy) + b * dx * (1 - dy) + c * (1 - dx) * dy + e * dx * dy
            else:                                   # bicubic, alpha = -0.75
                al = np.float32(-0.75)
                cy = (np.float32(i1) + po) / sf1 - po
                cx = (np.float32(i0) + po) / sf0 - po
                y0 = np.int64(np.floor(cy))
                x0 = np.int64(np.floor(cx))
                wy = _cubic_weights(cy - np.float32(y0), al)
                wx = _cubic_weights(cx - np.float32(x0), al)
                for jy in range(4):
                    yy = min(max(y0 + jy - 1, 0), n1 - 1)
                    h = 0.0
                    for jx in range(4):
                        xx = min(max(x0 + jx - 1, 0), n0 - 1)
                        h += np.float64(ptr_of(plane + yy * sn1 + xx * sn0, np.float32)[0]) * wx[jx]
                    val += h * wy[jy]
            ptr_of(d + i0 * t_nb(desc, DST, 0), np.float32)[0] = np.float32(val)
