"""Kernels for the conv family (pyggml/ops/conv.py): IM2COL, CONV_2D, CONV_TRANSPOSE_1D,
POOL_1D/2D, SSM_CONV, SSM_SCAN.

Straight loops over any strides with float64 sums, so results sit within rounding of the
float64 reference. Where ggml rounds an input to F16 (an F16 conv kernel), so do these.
Results are identical for every thread count.
"""
from __future__ import annotations

import numba
import numpy as np

from ....quants import nb as qnb
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import SRC3
from ..desc import SRC4
from ..desc import SRC5
from ..desc import SRC6
from ..desc import param_i32
from ..desc import register_error
from ..desc import row_coords
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_nb4
from ..desc import t_ne
from ..desc import t_row
from ..desc import t_type
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from . import kernel
from . import param_words
from .copy import load_f32
from .copy import store_f32

F32 = int(GGMLType.F32)
_jit = numba.njit(nogil=True, cache=True)
F16 = int(GGMLType.F16)
_LINE = 64
_FLOAT_ELEMS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
ERR_SEQ_ID = register_error(171, "a sequence id of ssm_scan is out of range")
_W_IM2COL, _W_CONV2D, _W_CONVT1D = param_words("IM2COL"), param_words("CONV_2D"), param_words("CONV_TRANSPOSE_1D")
_W_POOL1D, _W_POOL2D, _W_SSM_SCAN = param_words("POOL_1D"), param_words("POOL_2D"), param_words("SSM_SCAN")
_FLT_MAX = np.float32(np.finfo(np.float32).max)


@_jit
def _to_f16_f32(v):
    """v rounded to F16 and back (ggml converts conv inputs to F16 for an F16 kernel)."""
    return qnb.f16_to_f32(qnb.f32_to_f16(v))


# --- IM2COL -------------------------------------------------------------------------------------

@kernel("IM2COL", supports=lambda node: node.type in (GGMLType.F32, GGMLType.F16)
        and node.src[1].type in _FLOAT_ELEMS, n_tasks=lambda node, n: n)
def im2col(desc, ith, nth):
    s0, s1 = param_i32(desc, _W_IM2COL.s0), param_i32(desc, _W_IM2COL.s1)
    p0, p1 = param_i32(desc, _W_IM2COL.p0), param_i32(desc, _W_IM2COL.p1)
    d0, d1 = param_i32(desc, _W_IM2COL.d0), param_i32(desc, _W_IM2COL.d1)
    is_2d = param_i32(desc, _W_IM2COL.is_2D) == 1
    bt, dt = t_type(desc, SRC1), t_type(desc, DST)
    KW = t_ne(desc, SRC0, 0)
    KH = t_ne(desc, SRC0, 1) if is_2d else 1
    IW = t_ne(desc, SRC1, 0)
    IH = t_ne(desc, SRC1, 1) if is_2d else 1
    IC = t_ne(desc, SRC1, 2) if is_2d else t_ne(desc, SRC1, 1)
    nbw = t_nb(desc, SRC1, 0)
    nbh = t_nb(desc, SRC1, 1) if is_2d else 0
    nbc = t_nb(desc, SRC1, 2) if is_2d else t_nb(desc, SRC1, 1)
    nbn = t_nb(desc, SRC1, 3) if is_2d else t_nb(desc, SRC1, 2)
    OW, d2, d3 = t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    nb0 = t_nb(desc, DST, 0)
    ir0, ir1 = row_range(OW * d2 * d3, ith, nth)
    for r in range(ir0, ir1):
        iow, j2, j3 = row_coords(r, OW, d2)
        ioh, n = (j2, j3) if is_2d else (0, j2)
        d = t_row(desc, DST, iow, j2, j3)
        for ic in range(IC):
            base = t_addr(desc, SRC1) + n * nbn + ic * nbc
            for kh in range(KH):
                ih = ioh * s1 + kh * d1 - p1
                for kw in range(KW):
                    iw = iow * s0 + kw * d0 - p0
                    v = np.float32(0.0)
                    if 0 <= ih < IH and 0 <= iw < IW:
                        v = load_f32(base + ih * nbh + iw * nbw, bt)
                    store_f32(d + ((ic * KH + kh) * KW + kw) * nb0, dt, v)


# --- CONV_2D (direct) ---------------------------------------------------------------------------

@kernel("CONV_2D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16)
        and node.src[1].type == GGMLType.F32, n_tasks=lambda node, n: n,
        work_size=lambda node, n: 0)
def conv_2d(desc, ith, nth):
    """out[n, oc, oh, ow] = sum over ic, kh, kw; an F16 kernel rounds the input to F16 (ggml)."""
    s0, s1 = param_i32(desc, _W_CONV2D.s0), param_i32(desc, _W_CONV2D.s1)
    p0, p1 = param_i32(desc, _W_CONV2D.p0), param_i32(desc, _W_CONV2D.p1)
    d0, d1 = param_i32(desc, _W_CONV2D.d0), param_i32(desc, _W_CONV2D.d1)
    kt = t_type(desc, SRC0)
    KW, KH, IC = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    IW, IH = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1)
    OW, OH, OC = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    k_addr, x_addr = t_addr(desc, SRC0), t_addr(desc, SRC1)
    kn0, kn1, kn2, kn3 = t_nb4(desc, SRC0)
    xn0, xn1, xn2, xn3 = t_nb4(desc, SRC1)
    ir0, ir1 = row_range(OH * OC * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        oh, oc, n = row_coords(r, OH, OC)
        d = t_row(desc, DST, oh, oc, n)
        for ow in range(OW):
            acc = 0.0
            for ic in range(IC):
                for kh in range(KH):
                    ih = oh * s1 + kh * d1 - p1
                    for kw in range(KW):
                        iw = ow * s0 + kw * d0 - p0
                        # ggml's im2col writes 0 for padding and the gemm still multiplies
                        # it: an inf/NaN weight over padding gives NaN, so no skipping
                        x = np.float32(0.0)
                        if ih >= 0 and ih < IH and iw >= 0 and iw < IW:
                            x = ptr_of(x_addr + iw * xn0 + ih * xn1 + ic * xn2 + n * xn3,
                                       np.float32)[0]
                            if kt == F16:
                                x = _to_f16_f32(x)
                        w = load_f32(k_addr + kw * kn0 + kh * kn1 + ic * kn2 + oc * kn3, kt)
                        acc += np.float64(x) * np.float64(w)
            ptr_of(d + ow * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)


# --- CONV_TRANSPOSE_1D --------------------------------------------------------------------------

def _work_conv_t1d(node, n_threads) -> int:
    return (8 * node.ne[0] + _LINE) * n_threads


@kernel("CONV_TRANSPOSE_1D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16)
        and node.src[1].type == GGMLType.F32, n_tasks=lambda node, n: n, work_size=_work_conv_t1d)
def conv_transpose_1d(desc, ith, nth):
    s0 = param_i32(desc, _W_CONVT1D.s0)
    kt = t_type(desc, SRC0)
    K, OC, IC = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    L = t_ne(desc, SRC1, 0)
    OL = t_ne(desc, DST, 0)
    scratch = 8 * OL + _LINE
    if wsize(desc) < (ith + 1) * scratch:
        set_error(desc, ERR_WORK_SIZE)
        return
    acc = numba.carray(ptr_of(wdata(desc) + ith * scratch, np.float64), OL)
    kn0, kn1, kn2 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2)
    xn0, xn1 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1)
    o0, o1 = row_range(OC, ith, nth)
    for oc in range(o0, o1):
        for t in range(OL):
            acc[t] = 0.0
        for l in range(L):
            for k in range(K):
                v = 0.0
                for ic in range(IC):
                    x = ptr_of(t_addr(desc, SRC1) + l * xn0 + ic * xn1, np.float32)[0]
                    if kt == F16:
                        x = _to_f16_f32(x)
                    v += np.float64(x) * np.float64(load_f32(t_addr(desc, SRC0) + k * kn0 +
                                                             oc * kn1 + ic * kn2, kt))
                acc[l * s0 + k] += v
        d = t_addr(desc, DST) + oc * t_nb(desc, DST, 1)
        for t in range(OL):
            ptr_of(d + t * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc[t])


# --- POOL_1D / POOL_2D --------------------------------------------------------------------------

@kernel("POOL_1D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16),
        n_tasks=lambda node, n: n)
def pool_1d(desc, ith, nth):
    w = _W_POOL1D
    op, k0, s0, p0 = param_i32(desc, w.op), param_i32(desc, w.k0), param_i32(desc, w.s0), param_i32(desc, w.p0)
    st = t_type(desc, SRC0)
    IW = t_ne(desc, SRC0, 0)
    OW, ne1, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        s = t_row(desc, SRC0, i1, i2, i3)
        d = t_row(desc, DST, i1, i2, i3)
        for ow in range(OW):
            total = 0.0
            best = -_FLT_MAX
            cnt = 0
            for k in range(k0):
                j = ow * s0 - p0 + k
                if j < 0 or j >= IW:
                    continue
                v = load_f32(s + j * t_nb(desc, SRC0, 0), st)
                total += v
                best = best if v < best else v      # std::max(v, best): NaN order as ggml
                cnt += 1
            if op == 1:                      # avg over the in-range samples (0 when none)
                res = np.float32(total / cnt) if cnt > 0 else np.float32(0.0)
            else:
                res = best
            ptr_of(d + ow * t_nb(desc, DST, 0), np.float32)[0] = res


@kernel("POOL_2D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16),
        n_tasks=lambda node, n: n)
def pool_2d(desc, ith, nth):
    w = _W_POOL2D
    op = param_i32(desc, w.op)
    k0, k1, s0, s1 = param_i32(desc, w.k0), param_i32(desc, w.k1), param_i32(desc, w.s0), param_i32(desc, w.s1)
    p0, p1 = param_i32(desc, w.p0), param_i32(desc, w.p1)
    st = t_type(desc, SRC0)
    IW, IH = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    OW, OH, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    sn0, sn1 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1)
    ir0, ir1 = row_range(OH * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        oy, i2, i3 = row_coords(r, OH, ne2)
        s = t_addr(desc, SRC0) + i2 * t_nb(desc, SRC0, 2) + i3 * t_nb(desc, SRC0, 3)
        d = t_row(desc, DST, oy, i2, i3)
        for ox in range(OW):
            total = 0.0
            best = -_FLT_MAX
            for ky in range(k1):
                iy = oy * s1 - p1 + ky
                if iy < 0 or iy >= IH:
                    continue
                for kx in range(k0):
                    ix = ox * s0 - p0 + kx
                    if ix < 0 or ix >= IW:
                        continue
                    v = load_f32(s + iy * sn1 + ix * sn0, st)
                    total += v
                    best = best if v < best else v      # std::max(v, best): NaN order as ggml
            res = np.float32(total / (k0 * k1)) if op == 1 else best   # avg: padding counts
            ptr_of(d + ox * t_nb(desc, DST, 0), np.float32)[0] = res


# --- SSM_CONV / SSM_SCAN --------------------------------------------------------------------------

@kernel("SSM_CONV", supports=lambda node: node.src[0].type == GGMLType.F32
        and node.src[1].type == GGMLType.F32, n_tasks=lambda node, n: n)
def ssm_conv(desc, ith, nth):
    nc = t_ne(desc, SRC1, 0)
    d_inner, n_t, n_s = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    sn0, sn1, sn2 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2)
    cn0, cn1 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1)
    r0, r1 = row_range(d_inner, ith, nth)          # channels split over threads, as ggml
    for s in range(n_s):
        for t in range(n_t):
            d = t_addr(desc, DST) + t * t_nb(desc, DST, 1) + s * t_nb(desc, DST, 2)
            for r in range(r0, r1):
                acc = 0.0
                for k in range(nc):
                    acc += np.float64(ptr_of(t_addr(desc, SRC0) + (t + k) * sn0 + r * sn1 + s * sn2,
                                             np.float32)[0]) * \
                        np.float64(ptr_of(t_addr(desc, SRC1) + k * cn0 + r * cn1, np.float32)[0])
                ptr_of(d + r * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)


@kernel("SSM_SCAN", supports=lambda node: all(s.type == GGMLType.F32 for s in node.src[:6]),
        n_tasks=lambda node, n: n)
def ssm_scan(desc, ith, nth):
    """Heads split over the threads (ggml's split); states kept in the result between tokens."""
    K = param_i32(desc, _W_SSM_SCAN.K)
    nc, nr = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    ns_s = t_ne(desc, SRC0, 3)
    nh, nt, ns = t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2), t_ne(desc, SRC1, 3)
    ng = t_ne(desc, SRC4, 1)
    a_ne0 = t_ne(desc, SRC3, 0)
    sb = nc * nr * nh                                  # floats per state block
    y = f32_array(t_addr(desc, DST), nr * nh * nt * ns + K * sb * ns)
    st_off = nr * nh * nt * ns
    h0, h1 = row_range(nh, ith, nth)
    for i3 in range(ns):
        sid = np.int64(ptr_of(t_addr(desc, SRC6) + i3 * t_nb(desc, SRC6, 0), np.int32)[0])
        if sid < 0 or sid >= ns_s:
            set_error(desc, ERR_SEQ_ID)
            return
        s_in = t_addr(desc, SRC0) + sid * t_nb(desc, SRC0, 3)
        out = st_off + i3 * sb                         # final state of sequence i3 (slot 0)
        for slot in range(max(1, nt), K):              # snapshots older than the sequence: 0
            snap = st_off + (slot * ns + i3) * sb
            for j in range(h0 * nr * nc, h1 * nr * nc):
                y[snap + j] = np.float32(0.0)
        for h in range(h0, h1):                        # start from the input state
            for i1 in range(nr):
                for i0 in range(nc):
                    y[out + (h * nr + i1) * nc + i0] = ptr_of(
                        s_in + i0 * 4 + i1 * t_nb(desc, SRC0, 1) + h * t_nb(desc, SRC0, 2),
                        np.float32)[0]
        for t in range(nt):
            for h in range(h0, h1):
                dtv = np.float64(ptr_of(t_addr(desc, SRC2) + h * 4 + t * t_nb(desc, SRC2, 1) +
                                        i3 * t_nb(desc, SRC2, 2), np.float32)[0])
                dsp = dtv if dtv > 20.0 else np.log1p(np.exp(dtv))
                g = h // (nh // ng)
                for i1 in range(nr):
                    x = np.float64(ptr_of(t_addr(desc, SRC1) + i1 * 4 + h * t_nb(desc, SRC1, 1) +
                                          t * t_nb(desc, SRC1, 2) + i3 * t_nb(desc, SRC1, 3),
                                          np.float32)[0])
                    xdt = x * dsp
                    acc = 0.0
                    for i0 in range(nc):
                        a = np.float64(ptr_of(t_addr(desc, SRC3) + (i0 if a_ne0 > 1 else 0) * 4 +
                                              h * t_nb(desc, SRC3, 1), np.float32)[0])
                        bo = i0 * 4 + g * t_nb(desc, SRC4, 1) + t * t_nb(desc, SRC4, 2) + \
                            i3 * t_nb(desc, SRC4, 3)
                        bv = np.float64(ptr_of(t_addr(desc, SRC4) + bo, np.float32)[0])
                        co = i0 * 4 + g * t_nb(desc, SRC5, 1) + t * t_nb(desc, SRC5, 2) + \
                            i3 * t_nb(desc, SRC5, 3)
                        cv = np.float64(ptr_of(t_addr(desc, SRC5) + co, np.float32)[0])
                        j = out + (h * nr + i1) * nc + i0
                        state = np.float64(y[j]) * np.exp(dsp * a) + bv * xdt
                        y[j] = np.float32(state)
                        acc += state * cv
                    y[((i3 * nt + t) * nh + h) * nr + i1] = np.float32(acc)
                slot = nt - 1 - t
                if K > 1 and 0 < slot < K:
                    snap = st_off + (slot * ns + i3) * sb
                    for j in range(h * nr * nc, (h + 1) * nr * nc):
                        y[snap + j] = y[out + j]
