"""Numba row codecs of the K-quants (Q2_K..Q8_K) and the 4-bit non-linear quants (IQ4_NL,
IQ4_XS), bit-exact with ggml's ggml-quants.c.

The quantizers are scalar loops that redo ggml's reference search (make_qx_quants,
make_qkx2/3_quants, make_qp_quants, ...) in float32 operation for operation: the same
evaluation order, no FMA, C's integer truncations (uint8_t/int8_t stores), NaN
comparisons as C does them, and nearest_int's magic-number rounding (round half to even,
done on the float's bits so that NaN/inf give the same garbage as ggml). These searches
are what makes K-quants costly; NumPy cannot express them without per-block Python work.

Entry points (C-contiguous arrays, n and n_per_row ints, qw an empty float32 array when
there is no importance matrix):
    quantize_blocks(t, src_f32, dst_u8, nrow, n_per_row, qw, 7)   # ggml_quantize_chunk
    dequantize_row_<fmt>(src_u8, dst_f32, n)                      # type_traits.to_float
    quantize_row(t, src_f32, dst_u8, n)                           # ggml-cpu's from_float
    dequantize_row(t, src, dst, n)                                # dispatch on the type id
"""
from __future__ import annotations

import numba
import numpy as np

from ..types import GGMLType
from .iq4_values import KVALUES_IQ4NL
from .nb_scalar import _bits_f32  # noqa: F401
from .nb_scalar import _f32_bits  # noqa: F401
from .nb_scalar import _load_f16  # noqa: F401
from .nb_scalar import _store_f16  # noqa: F401
from .nb_scalar import f16_to_f32  # noqa: F401

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")

ERR_UNSUPPORTED = 1
QK_K = 256
F = np.float32
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_EPS = np.float32(1e-15)        # GROUP_MAX_EPS
_MAGIC = np.float32(12582912.0)


# block sizes in bytes
SIZE = {GGMLType.Q2_K: 84, GGMLType.Q3_K: 110, GGMLType.Q4_K: 144, GGMLType.Q5_K: 176,
        GGMLType.Q6_K: 210, GGMLType.Q8_K: 292, GGMLType.IQ4_NL: 18, GGMLType.IQ4_XS: 136}
_Q2_K, _Q3_K, _Q4_K = int(GGMLType.Q2_K), int(GGMLType.Q3_K), int(GGMLType.Q4_K)
_Q5_K, _Q6_K, _Q8_K = int(GGMLType.Q5_K), int(GGMLType.Q6_K), int(GGMLType.Q8_K)
_IQ4_NL, _IQ4_XS = int(GGMLType.IQ4_NL), int(GGMLType.IQ4_XS)


# ---------------------------------------------------------------------------
# C helpers

@_jit
def nearest_int(fval):
    """ggml's nearest_int: add 1.5*2^23, keep the mantissa bits (half to even)."""
    i = np.int64(_f32_bits(np.float32(fval) + _MAGIC))
    return (i & 0x007FFFFF) - 0x00400000


@_jit
def _i8(v):
    """(int8_t)v."""
    return ((np.int64(v) & 0xFF) ^ 0x80) - 0x80


@_jit
def _u8(v):
    return np.int64(v) & 0xFF


@_jit
def _cmax(a, b):
    """C's MAX(a, b) = a > b ? a : b."""
    return a if a > b else b


@_jit
def _sqrtf(v):
    return np.float32(np.sqrt(np.float32(v)))


@_jit
def _store_u16(dst, o, v):
    dst[o] = np.uint8(v & 0xFF)
    dst[o + 1] = np.uint8((v >> 8) & 0xFF)


# ---------------------------------------------------------------------------
# ggml's scale searches. x, w: float32 arrays (w may be empty: weights from x as ggml).

@_jit
def _max_abs(n, x, xo):
    """(x[xo + i] of the largest magnitude, the first on ties; that magnitude), as ggml's
    symmetric searches start."""
    mx = _F0
    amax = _F0
    for i in range(n):
        ax = abs(x[xo + i])
        if ax > amax:
            amax = ax
            mx = x[xo + i]
    return mx, amax


@_jit
def make_qx_quants(n, nmax, x, xo, L, lo, rmse_type, qw, qo, has_qw):
    """Signed symmetric quants L[lo+i] = l + nmax; returns the scale (rmse_type 1 only: x^2
    weights or qw)."""
    mx, amax = _max_abs(n, x, xo)
    if amax < _EPS:
        for i in range(n):
            L[lo + i] = 0
        return _F0
    fn = np.float32(nmax)
    iscale = np.float32(-fn) / mx
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        xi = x[xo + i]
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * xi)))
        L[lo + i] = l + nmax
        w = qw[qo + i] if has_qw else xi * xi
        fl = np.float32(l)
        sumlx += w * xi * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != _F0 else _F0
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = np.float32(-(fn + np.float32(0.1) * np.float32(is_))) / mx
        sumlx = _F0
        suml2 = _F0
        for i in range(n):
            xi = x[xo + i]
            l = max(-nmax, min(nmax - 1, nearest_int(iscale * xi)))
            w = qw[qo + i] if has_qw else xi * xi
            fl = np.float32(l)
            sumlx += w * xi * fl
            suml2 += w * fl * fl
        if suml2 > _F0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[xo + i])
                L[lo + i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@_jit
def make_q3_quants(n, nmax, x, xo, L, lo):
    """make_q3_quants with do_rmse (Q3_K's reference quantizer)."""
    mx, amax = _max_abs(n, x, xo)
    if amax < _EPS:
        for i in range(n):
            L[lo + i] = 0
        return _F0
    iscale = np.float32(-np.float32(nmax)) / mx
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        xi = x[xo + i]
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * xi)))
        L[lo + i] = l
        w = xi * xi
        fl = np.float32(l)
        sumlx += w * xi * fl
        suml2 += w * fl * fl
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            xi = x[xo + i]
            w = xi * xi
            li = np.float32(L[lo + i])
            slx = sumlx - w * xi * li
            if slx > _F0:
                sl2 = suml2 - w * li * li
                new_l = max(-nmax, min(nmax - 1, nearest_int(xi * sl2 / slx)))
                if new_l != L[lo + i]:
                    fl = np.float32(new_l)
                    slx += w * xi * fl
                    sl2 += w * fl * fl
                    if sl2 > _F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[lo + i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[lo + i] += nmax
    return sumlx / suml2 if suml2 > _F0 else _F0


@_jit
def make_qkx_quants(n, nmax, x, xo, w, L, lo, Laux, rmin, rdelta, nstep, use_mad, v3):
    """make_qkx2_quants (v3 False) / make_qkx3_quants (v3 True): affine quants with a min.

    Returns (scale, the_min). The two differ only in the empty-range test (max == min vs
    max <= min). Weights w[0..n) are given explicitly in both."""
    mn = x[xo]
    mx = x[xo]
    sum_w = w[0]
    sum_x = sum_w * x[xo]
    for i in range(1, n):
        xi = x[xo + i]
        if xi < mn:
            mn = xi
        if xi > mx:
            mx = xi
        sum_w += w[i]
        sum_x += w[i] * xi
    if mn > _F0:
        mn = _F0
    if (mx <= mn) if v3 else (mx == mn):
        for i in range(n):
            L[lo + i] = 0
        return _F0, -mn
    fn = np.float32(nmax)
    iscale = fn / (mx - mn)
    scale = _F1 / iscale
    best = _F0
    for i in range(n):
        xi = x[xo + i]
        l = max(0, min(nmax, nearest_int(iscale * (xi - mn))))
        L[lo + i] = l
        diff = scale * np.float32(l) + mn - xi
        diff = abs(diff) if use_mad else diff * diff
        best += w[i] * diff
    if nstep < 1:
        return scale, -mn
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(is_) + fn) / (mx - mn)
        sum_l = _F0
        sum_l2 = _F0
        sum_xl = _F0
        for i in range(n):
            xi = x[xo + i]
            l = max(0, min(nmax, nearest_int(iscale * (xi - mn))))
            Laux[i] = l
            fl = np.float32(l)
            wi = w[i]
            sum_l += wi * fl
            sum_l2 += wi * fl * fl
            sum_xl += wi * fl * xi
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > _F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > _F0:
                this_min = _F0
                this_scale = sum_xl / sum_l2
            cur = _F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[xo + i]
                diff = abs(diff) if use_mad else diff * diff
                cur += w[i] * diff
            if cur < best:
                for i in range(n):
                    L[lo + i] = Laux[i]
                best = cur
                scale = this_scale
                mn = this_min
    return scale, -mn


@_jit
def make_qp_quants(n, nmax, x, L, qw):
    """Positive quants of the sub-block scales (uint8 L, as ggml stores them)."""
    mx = _F0
    for i in range(n):
        mx = _cmax(mx, x[i])
    if mx < _EPS:
        for i in range(n):
            L[i] = 0
        return _F0
    fn = np.float32(nmax)
    iscale = fn / mx
    for i in range(n):
        L[i] = _u8(nearest_int(iscale * x[i]))
    scale = _F1 / iscale
    best_mse = _F0
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        best_mse += qw[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (np.float32(0.1) * np.float32(is_) + fn) / mx
        scale_is = _F1 / iscale_is
        mse = _F0
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * np.float32(l)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = _u8(l)
        fl = np.float32(l)
        sumlx += qw[i] * x[i] * fl
        suml2 += qw[i] * fl * fl
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            li = np.float32(L[i])
            slx = sumlx - w * x[i] * li
            sl2 = suml2 - w * li * li
            if slx > _F0 and sl2 > _F0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    fl = np.float32(new_l)
                    slx += w * x[i] * fl
                    sl2 += w * fl * fl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = _u8(new_l)
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > _F0 else _F0


@_jit
def best_index_int8(n, val, x):
    if x <= np.float32(val[0]):
        return 0
    if x >= np.float32(val[n - 1]):
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < np.float32(val[mav]):
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - np.float32(val[mu - 1]) < np.float32(val[mu]) - x else mu


@_jit
def _sum_sq(x, o, n):
    s = _F0
    for j in range(n):
        s += x[o + j] * x[o + j]
    return s


# ---------------------------------------------------------------------------
# packing shared by several formats

@_jit
def _pack_2bit(dst, o, L):
    """qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            dst[o + j // 4 + l] = np.uint8((L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                            | (L[j + l + 96] << 6)) & 0xFF)


@_jit
def _scale_min_k4(j, s, so):
    """get_scale_min_k4 over the 12 scale bytes at s[so:]."""
    if j < 4:
        return np.int64(s[so + j] & 63), np.int64(s[so + j + 4] & 63)
    d = np.int64((s[so + j + 4] & 0xF) | ((s[so + j - 4] >> 6) << 4))
    m = np.int64((s[so + j + 4] >> 4) | ((s[so + j] >> 6) << 4))
    return d, m


@_jit
def _pack_scales_k4(dst, so, Ls, Lm):
    for j in range(8):
        ls = np.int64(Ls[j])
        lm = np.int64(Lm[j])
        if j < 4:
            dst[so + j] = np.uint8(ls & 0xFF)
            dst[so + j + 4] = np.uint8(lm & 0xFF)
        else:
            dst[so + j + 4] = np.uint8(((ls & 0xF) | ((lm & 0xF) << 4)) & 0xFF)
            dst[so + j - 4] = np.uint8((dst[so + j - 4] | ((ls >> 4) << 6)) & 0xFF)
            dst[so + j] = np.uint8((dst[so + j] | ((lm >> 4) << 6)) & 0xFF)


@_jit
def _requant_k4(x, xo, dst, o, L, nmax):
    """Q4_K/Q5_K: quants from the stored (fp16 d, dmin, 6-bit) scales."""
    dd = _load_f16(dst, o)
    dmin = _load_f16(dst, o + 2)
    for j in range(8):
        sc, m = _scale_min_k4(j, dst, o + 4)
        d = dd * np.float32(sc)
        if d == _F0:
            continue
        dm = dmin * np.float32(m)
        for ii in range(32):
            l = nearest_int((x[xo + 32 * j + ii] + dm) / d)
            L[32 * j + ii] = max(0, min(nmax, l))


@_jit
def _pack_q3_scale(dst, so, j, l):
    """Store 6-bit scale l (0..63) of sub-block j into the 12 scale bytes at so (zeroed)."""
    if j < 8:
        dst[so + j] = np.uint8(l & 0xF)
    else:
        dst[so + j - 8] = np.uint8((dst[so + j - 8] | ((l & 0xF) << 4)) & 0xFF)
    dst[so + j % 4 + 8] = np.uint8((dst[so + j % 4 + 8] | ((l >> 4) << (2 * (j // 4)))) & 0xFF)


@_jit
def _q3_scale(dst, so, j):
    """Signed 6-bit scale j of a Q3_K block (12 bytes at so)."""
    if j < 8:
        lo = np.int64(dst[so + j]) & 0xF
    else:
        lo = np.int64(dst[so + j - 8]) >> 4
    hi = (np.int64(dst[so + 8 + j % 4]) >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


# ---------------------------------------------------------------------------
# Q2_K: scales[16], qs[64], d, dmin (84 bytes)

@_jit
def _q2_k_block(x, xo, dst, o, qw, qo, has_qw, L, Laux, w, scales, mins, sw, Ls, Lm):
    if not has_qw:
        max_scale = _F0
        max_min = _F0
        for j in range(16):
            for l in range(16):
                w[l] = abs(x[xo + 16 * j + l])
            scales[j], mins[j] = make_qkx_quants(16, 3, x, xo + 16 * j, w, L, 16 * j, Laux,
                                                 np.float32(-0.5), np.float32(0.1), 15, True,
                                                 False)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        q4 = np.float32(15.0)
        if max_scale > _F0:
            iscale = q4 / max_scale
            for j in range(16):
                dst[o + j] = np.uint8(_u8(nearest_int(iscale * scales[j])))
            _store_f16(dst, o + 80, max_scale / q4)
        else:
            for j in range(16):
                dst[o + j] = 0
            _store_f16(dst, o + 80, _F0)
        if max_min > _F0:
            iscale = q4 / max_min
            for j in range(16):
                l = nearest_int(iscale * mins[j])
                dst[o + j] = np.uint8((dst[o + j] | (l << 4)) & 0xFF)
            _store_f16(dst, o + 82, max_min / q4)
        else:
            _store_f16(dst, o + 82, _F0)
    else:
        sumx2 = _sum_sq(x, xo, QK_K)
        sigma2 = sumx2 / np.float32(QK_K)
        for j in range(16):
            sw[j] = _F0
            for l in range(16):
                xi = x[xo + 16 * j + l]
                w[l] = qw[qo + 16 * j + l] * _sqrtf(sigma2 + xi * xi)
            for l in range(16):
                sw[j] += w[l]
            scales[j], mins[j] = make_qkx_quants(16, 3, x, xo + 16 * j, w, L, 16 * j, Laux,
                                                 np.float32(-0.9), np.float32(0.05), 36, False,
                                                 True)
        dm = make_qp_quants(16, 15, scales, Ls, sw)
        mm = make_qp_quants(16, 15, mins, Lm, sw)
        _store_f16(dst, o + 80, dm)
        _store_f16(dst, o + 82, mm)
        for j in range(16):
            dst[o + j] = np.uint8((Ls[j] | (Lm[j] << 4)) & 0xFF)
    dd = _load_f16(dst, o + 80)
    dmin = _load_f16(dst, o + 82)
    for j in range(16):
        d = dd * np.float32(dst[o + j] & 0xF)
        if d == _F0:
            continue
        m = dmin * np.float32(dst[o + j] >> 4)
        for ii in range(16):
            l = nearest_int((x[xo + 16 * j + ii] + m) / d)
            L[16 * j + ii] = max(0, min(3, l))
    _pack_2bit(dst, o + 16, L)


@_jit
def dequantize_row_q2_K(src, dst, n):
    for i in range(n // QK_K):
        o = i * 84
        d = _load_f16(src, o + 80)
        mn = _load_f16(src, o + 82)
        y = i * QK_K
        is_ = 0
        for half in range(2):
            q = o + 16 + 32 * half
            for shift in range(0, 8, 2):
                for k in range(2):
                    sc = src[o + is_]
                    is_ += 1
                    dl = d * np.float32(sc & 0xF)
                    ml = mn * np.float32(sc >> 4)
                    for l in range(16):
                        dst[y] = dl * np.float32((src[q + 16 * k + l] >> shift) & 3) - ml
                        y += 1


# ---------------------------------------------------------------------------
# Q3_K: hmask[32], qs[64], scales[12], d (110 bytes)

@_jit
def _q3_k_block(x, xo, dst, o, qw, qo, has_qw, L, w, scales, sw, Ls):
    so = o + 96
    for k in range(12):
        dst[so + k] = 0
    if not has_qw:
        max_scale = _F0
        amax = _F0
        for j in range(16):
            scales[j] = make_q3_quants(16, 4, x, xo + 16 * j, L, 16 * j)
            s = abs(scales[j])
            if s > amax:
                amax = s
                max_scale = scales[j]
        if max_scale != _F0:
            iscale = np.float32(-32.0) / max_scale
            for j in range(16):
                l = _i8(nearest_int(iscale * scales[j]))
                _pack_q3_scale(dst, so, j, max(-32, min(31, l)) + 32)
            _store_f16(dst, o + 108, _F1 / iscale)
        else:
            _store_f16(dst, o + 108, _F0)
    else:
        sumx2 = _sum_sq(x, xo, QK_K)
        sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
        for j in range(16):
            for l in range(16):
                xi = x[xo + 16 * j + l]
                w[l] = qw[qo + 16 * j + l] * _sqrtf(sigma2 + xi * xi)
            sumw = _F0
            for l in range(16):
                sumw += w[l]
            sw[j] = sumw
            scales[j] = make_qx_quants(16, 4, x, xo + 16 * j, L, 16 * j, 1, w, 0, True)
        d_block = make_qx_quants(16, 32, scales, 0, Ls, 0, 1, sw, 0, True)
        for j in range(16):
            _pack_q3_scale(dst, so, j, Ls[j])
        _store_f16(dst, o + 108, d_block)
    dd = _load_f16(dst, o + 108)
    for j in range(16):
        d = dd * np.float32(_q3_scale(dst, so, j))
        if d == _F0:
            continue
        for ii in range(16):
            l = nearest_int(x[xo + 16 * j + ii] / d)
            L[16 * j + ii] = max(-4, min(3, l)) + 4
    for k in range(32):
        dst[o + k] = 0
    m = 0
    hm = 1
    for j in range(QK_K):
        if L[j] > 3:
            dst[o + m] = np.uint8(dst[o + m] | hm)
            L[j] -= 4
        m += 1
        if m == 32:
            m = 0
            hm <<= 1
    _pack_2bit(dst, o + 32, L)


@_jit
def dequantize_row_q3_K(src, dst, n):
    for i in range(n // QK_K):
        o = i * 110
        d_all = _load_f16(src, o + 108)
        y = i * QK_K
        is_ = 0
        m = 1
        for half in range(2):
            q = o + 32 + 32 * half
            for shift in range(0, 8, 2):
                for k in range(2):
                    dl = d_all * np.float32(_q3_scale(src, o + 96, is_))
                    is_ += 1
                    for l in range(16):
                        v = np.int64((src[q + 16 * k + l] >> shift) & 3)
                        if (src[o + 16 * k + l] & m) == 0:
                            v -= 4
                        dst[y] = dl * np.float32(v)
                        y += 1
                m <<= 1


# ---------------------------------------------------------------------------
# Q4_K / Q5_K: d, dmin, scales[12], (Q5: qh[32]), qs[128]

@_jit
def _q45_k_block(x, xo, dst, o, qw, qo, has_qw, L, Laux, w, scales, mins, sw, Ls, Lm, nmax):
    is5 = nmax == 31
    if not has_qw:
        max_scale = _F0
        max_min = _F0
        for j in range(8):
            av_x = _sqrtf(_sum_sq(x, xo + 32 * j, 32) / np.float32(32.0))
            for l in range(32):
                w[l] = av_x + abs(x[xo + 32 * j + l])
            if is5:
                scales[j], mins[j] = make_qkx_quants(32, 31, x, xo + 32 * j, w, L, 32 * j, Laux,
                                                     np.float32(-0.5), np.float32(0.1), 15,
                                                     False, False)
            else:
                scales[j], mins[j] = make_qkx_quants(32, 15, x, xo + 32 * j, w, L, 32 * j, Laux,
                                                     np.float32(-1.0), np.float32(0.1), 20,
                                                     False, False)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        c63 = np.float32(63.0)
        inv_scale = c63 / max_scale if max_scale > _F0 else _F0
        inv_min = c63 / max_min if max_min > _F0 else _F0
        for j in range(8):
            Ls[j] = min(63, _u8(nearest_int(inv_scale * scales[j])))
            Lm[j] = min(63, _u8(nearest_int(inv_min * mins[j])))
        for k in range(12):
            dst[o + 4 + k] = 0
        _pack_scales_k4(dst, o + 4, Ls, Lm)
        _store_f16(dst, o, max_scale / c63)
        _store_f16(dst, o + 2, max_min / c63)
    else:
        sum_x2 = _sum_sq(x, xo, QK_K)
        sigma2 = np.float32(2.0) * sum_x2 / np.float32(QK_K)
        av_x = _sqrtf(sigma2)
        for j in range(8):
            for l in range(32):
                xi = x[xo + 32 * j + l]
                w[l] = qw[qo + 32 * j + l] * _sqrtf(sigma2 + xi * xi)
            sumw = _F0
            for l in range(32):
                sumw += w[l]
            sw[j] = sumw
            scales[j], mins[j] = make_qkx_quants(32, nmax, x, xo + 32 * j, w, L, 32 * j, Laux,
                                                 np.float32(-0.9), np.float32(0.05), 36, False,
                                                 True)
        d_block = make_qp_quants(8, 63, scales, Ls, sw)
        m_block = make_qp_quants(8, 63, mins, Lm, sw)
        if is5:  # quantize_row_q5_K_impl clamps (uint8_t)Ls to 63, q4_K_impl does not
            for j in range(8):
                Ls[j] = min(63, Ls[j])
                Lm[j] = min(63, Lm[j])
        for k in range(12):
            dst[o + 4 + k] = 0
        _pack_scales_k4(dst, o + 4, Ls, Lm)
        _store_f16(dst, o, d_block)
        _store_f16(dst, o + 2, m_block)
    _requant_k4(x, xo, dst, o, L, nmax)
    if is5:
        qh = o + 16
        ql = o + 48
        for k in range(32):
            dst[qh + k] = 0
        m1 = 1
        m2 = 2
        for n in range(0, QK_K, 64):
            for j in range(32):
                l1 = L[n + j]
                if l1 > 15:
                    l1 -= 16
                    dst[qh + j] = np.uint8(dst[qh + j] | m1)
                l2 = L[n + j + 32]
                if l2 > 15:
                    l2 -= 16
                    dst[qh + j] = np.uint8(dst[qh + j] | m2)
                dst[ql + j] = np.uint8((l1 | (l2 << 4)) & 0xFF)
            m1 <<= 2
            m2 <<= 2
            ql += 32
    else:
        q = o + 16
        for j in range(0, QK_K, 64):
            for l in range(32):
                dst[q + l] = np.uint8((L[j + l] | (L[j + l + 32] << 4)) & 0xFF)
            q += 32


@_jit
def _dequantize_q45_K(src, dst, n, bs):
    is5 = bs == 176
    qoff = 48 if is5 else 16
    for i in range(n // QK_K):
        o = i * bs
        d = _load_f16(src, o)
        mn = _load_f16(src, o + 2)
        y = i * QK_K
        u1 = 1
        u2 = 2
        for c in range(4):
            sc, m = _scale_min_k4(2 * c, src, o + 4)
            d1 = d * np.float32(sc)
            m1 = mn * np.float32(m)
            sc, m = _scale_min_k4(2 * c + 1, src, o + 4)
            d2 = d * np.float32(sc)
            m2 = mn * np.float32(m)
            q = o + qoff + 32 * c
            for l in range(32):
                v = np.int64(src[q + l] & 0xF)
                if is5 and (src[o + 16 + l] & u1) != 0:
                    v += 16
                dst[y + l] = d1 * np.float32(v) - m1
            for l in range(32):
                v = np.int64(src[q + l] >> 4)
                if is5 and (src[o + 16 + l] & u2) != 0:
                    v += 16
                dst[y + 32 + l] = d2 * np.float32(v) - m2
            y += 64
            u1 <<= 2
            u2 <<= 2


@_jit
def dequantize_row_q4_K(src, dst, n):
    _dequantize_q45_K(src, dst, n, 144)


@_jit
def dequantize_row_q5_K(src, dst, n):
    _dequantize_q45_K(src, dst, n, 176)


# ---------------------------------------------------------------------------
# Q6_K: ql[128], qh[64], scales[16] (int8), d (210 bytes)

@_jit
def _q6_k_block(x, xo, dst, o, qw, qo, has_qw, L, scales):
    max_scale = _F0
    max_abs = _F0
    for ib in range(16):
        scale = make_qx_quants(16, 32, x, xo + 16 * ib, L, 16 * ib, 1, qw, qo + 16 * ib, has_qw)
        scales[ib] = scale
        a = abs(scale)
        if a > max_abs:
            max_abs = a
            max_scale = scale
    if max_abs < _EPS:
        for k in range(210):
            dst[o + k] = 0
        return
    iscale = np.float32(-128.0) / max_scale
    _store_f16(dst, o + 208, _F1 / iscale)
    for ib in range(16):
        dst[o + 192 + ib] = np.uint8(min(127, nearest_int(iscale * scales[ib])) & 0xFF)
    dd = _load_f16(dst, o + 208)
    for j in range(16):
        d = dd * np.float32(_i8(dst[o + 192 + j]))
        if d == _F0:
            continue
        for ii in range(16):
            l = nearest_int(x[xo + 16 * j + ii] / d)
            L[16 * j + ii] = max(-32, min(31, l)) + 32
    ql = o
    qh = o + 128
    for j in range(0, QK_K, 128):
        for l in range(32):
            q1 = L[j + l] & 0xF
            q2 = L[j + l + 32] & 0xF
            q3 = L[j + l + 64] & 0xF
            q4 = L[j + l + 96] & 0xF
            dst[ql + l] = np.uint8((q1 | (q3 << 4)) & 0xFF)
            dst[ql + l + 32] = np.uint8((q2 | (q4 << 4)) & 0xFF)
            dst[qh + l] = np.uint8(((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                                    | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))
                                   & 0xFF)
        ql += 64
        qh += 32


@_jit
def dequantize_row_q6_K(src, dst, n):
    for i in range(n // QK_K):
        o = i * 210
        d = _load_f16(src, o + 208)
        for c in range(2):
            ql = o + 64 * c
            qh = o + 128 + 32 * c
            sc = o + 192 + 8 * c
            y = i * QK_K + 128 * c
            for l in range(32):
                is_ = l // 16
                a = src[ql + l]
                b = src[ql + l + 32]
                h = src[qh + l]
                q1 = np.int64((a & 0xF) | (((h >> 0) & 3) << 4)) - 32
                q2 = np.int64((b & 0xF) | (((h >> 2) & 3) << 4)) - 32
                q3 = np.int64((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = np.int64((b >> 4) | (((h >> 6) & 3) << 4)) - 32
                dst[y + l] = d * np.float32(_i8(src[sc + is_])) * np.float32(q1)
                dst[y + l + 32] = d * np.float32(_i8(src[sc + is_ + 2])) * np.float32(q2)
                dst[y + l + 64] = d * np.float32(_i8(src[sc + is_ + 4])) * np.float32(q3)
                dst[y + l + 96] = d * np.float32(_i8(src[sc + is_ + 6])) * np.float32(q4)


# ---------------------------------------------------------------------------
# Q8_K: float d, int8 qs[256], int16 bsums[16] (292 bytes); the K-quant activation type

@_jit
def quantize_row_q8_K(src, dst, n):
    """quantize_row_q8_K_ref."""
    for i in range(n // QK_K):
        xo = i * QK_K
        o = i * 292
        mx = _F0
        amax = _F0
        for j in range(QK_K):
            ax = abs(src[xo + j])
            if ax > amax:
                amax = ax
                mx = src[xo + j]
        if amax == _F0:
            for k in range(292):
                dst[o + k] = 0
            continue
        iscale = np.float32(-127.0) / mx
        for j in range(QK_K):
            v = nearest_int(iscale * src[xo + j])
            dst[o + 4 + j] = np.uint8(min(127, v) & 0xFF)
        for j in range(16):
            s = 0
            for ii in range(16):
                s += _i8(dst[o + 4 + 16 * j + ii])
            _store_u16(dst, o + 260 + 2 * j, s & 0xFFFF)
        b = _f32_bits(_F1 / iscale)
        for k in range(4):
            dst[o + k] = np.uint8((b >> (8 * k)) & 0xFF)


@_jit
def _load_f32(src, o):
    b = (np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8) | (np.uint32(src[o + 2]) << 16)
         | (np.uint32(src[o + 3]) << 24))
    return _bits_f32(np.uint32(b))


@_jit
def dequantize_row_q8_K(src, dst, n):
    for i in range(n // QK_K):
        o = i * 292
        d = _load_f32(src, o)
        for j in range(QK_K):
            dst[i * QK_K + j] = d * np.float32(_i8(src[o + 4 + j]))


# ---------------------------------------------------------------------------
# IQ4_NL (d, qs[16]; 32 values) and IQ4_XS (d, scales_h, scales_l[4], qs[128]; 256)

@_jit
def _iq4_block(sbs, x, xo, dst, o_d, o_sh, o_sl, o_q, qw, qo, has_qw, L, w, scales, ntry):
    """quantize_row_iq4_nl_impl for one super-block of sbs values (32 or 256)."""
    values = KVALUES_IQ4NL
    sigma2 = _F0
    for j in range(sbs):
        sigma2 += x[xo + j] * x[xo + j]
    sigma2 *= np.float32(2.0) / np.float32(sbs)
    for j in range(sbs // 2):
        dst[o_q + j] = 0
    _store_f16(dst, o_d, _F0)
    max_scale = _F0
    amax_scale = _F0
    v0 = np.float32(values[0])
    nb = sbs // 32
    for ib in range(nb):
        bo = xo + 32 * ib
        for j in range(32):
            xi = x[bo + j]
            w[j] = qw[qo + 32 * ib + j] * _sqrtf(sigma2 + xi * xi) if has_qw else xi * xi
        amax = _F0
        mx = _F0
        for j in range(32):
            ax = abs(x[bo + j])
            if ax > amax:
                amax = ax
                mx = x[bo + j]
        if amax < _EPS:
            scales[ib] = _F0
            continue
        d = -mx / v0 if ntry > 0 else mx / v0
        id_ = _F1 / d
        sumqx = _F0
        sumq2 = _F0
        for j in range(32):
            al = id_ * x[bo + j]
            l = best_index_int8(16, values, al)
            L[32 * ib + j] = l
            q = np.float32(values[l])
            sumqx += w[j] * q * x[bo + j]
            sumq2 += w[j] * q * q
        d = sumqx / sumq2 if sumq2 > _F0 else _F0
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            id_ = np.float32(itry + values[0]) / mx
            sumqx = _F0
            sumq2 = _F0
            for j in range(32):
                al = id_ * x[bo + j]
                l = best_index_int8(16, values, al)
                q = np.float32(values[l])
                sumqx += w[j] * q * x[bo + j]
                sumq2 += w[j] * q * q
            if sumq2 > _F0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        abs_d = abs(d)
        if abs_d > amax_scale:
            amax_scale = abs_d
            max_scale = d
    if nb > 1:
        sh = 0
        d = -max_scale / np.float32(32.0)
        _store_f16(dst, o_d, d)
        id_ = _F1 / d if d != _F0 else _F0
        for ib in range(nb):
            l = max(-32, min(31, nearest_int(id_ * scales[ib])))
            dl = d * np.float32(l)
            idl = _F1 / dl if dl != _F0 else _F0
            for j in range(32):
                L[32 * ib + j] = best_index_int8(16, values, idl * x[xo + 32 * ib + j])
            l += 32
            l_l = l & 0xF
            l_h = (l >> 4) & 0xFF
            if ib % 2 == 0:
                dst[o_sl + ib // 2] = np.uint8(l_l)
            else:
                dst[o_sl + ib // 2] = np.uint8(dst[o_sl + ib // 2] | (l_l << 4))
            sh |= l_h << (2 * (ib % 8))
        _store_u16(dst, o_sh, sh & 0xFFFF)
    else:
        _store_f16(dst, o_d, scales[0])
        if ntry > 0:
            id_ = _F1 / scales[0] if scales[0] != _F0 else _F0
            for j in range(sbs):
                L[j] = best_index_int8(16, values, id_ * x[xo + j])
    for i in range(sbs // 32):
        for j in range(16):
            dst[o_q + 16 * i + j] = np.uint8((L[32 * i + j] | (L[32 * i + 16 + j] << 4)) & 0xFF)


@_jit
def _dequantize_iq4(src, dst, n, xs):
    """IQ4_NL (xs False: d, qs[16] per 32 values) or IQ4_XS (d, scales_h, scales_l[4],
    qs[128] per 256): every 32 values are dl * kvalues[nibble], dl = d for IQ4_NL (d * 1.0:
    the same floats) and d * (6-bit scale - 32) for IQ4_XS."""
    values = KVALUES_IQ4NL
    sbs = QK_K if xs else 32
    bs = 136 if xs else 18
    for i in range(n // sbs):
        o = i * bs
        d = _load_f16(src, o)
        sh = np.int64(src[o + 2]) | (np.int64(src[o + 3]) << 8) if xs else np.int64(0)
        for ib in range(sbs // 32):
            dl = d
            q = o + 2
            if xs:
                ls = ((src[o + 4 + ib // 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
                dl = d * np.float32(np.int64(ls) - 32)
                q = o + 8 + 16 * ib
            y = i * sbs + 32 * ib
            for j in range(16):
                dst[y + j] = dl * np.float32(values[src[q + j] & 0xF])
                dst[y + j + 16] = dl * np.float32(values[src[q + j] >> 4])


@_jit
def dequantize_row_iq4_nl(src, dst, n):
    _dequantize_iq4(src, dst, n, False)


@_jit
def dequantize_row_iq4_xs(src, dst, n):
    _dequantize_iq4(src, dst, n, True)


# ---------------------------------------------------------------------------
# ggml_quantize_chunk: one driver, block functions picked by type

@_jit
def quantize_blocks(t, src, dst, nrow, n_per_row, qw, ntry):
    """nrow rows of n_per_row float32 values -> type t's blocks. The scratch arrays are
    allocated once per call and sized for every type; like ggml's stack arrays they carry
    over from block to block (IQ4's L does matter: unset entries keep earlier blocks' codes).
    ntry: IQ4's scale search (7 in ggml_quantize_chunk, -1 for quantize_row_iq4_nl_ref)."""
    L = np.zeros(QK_K, np.int64)
    Laux = np.zeros(32, np.int64)
    w = np.zeros(32, np.float32)
    scales = np.zeros(16, np.float32)
    mins = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int64)
    Lm = np.zeros(16, np.int64)
    has_qw = qw.size > 0
    sbs = 32 if t == _IQ4_NL else QK_K
    bs = block_bytes(t)
    nb = n_per_row // sbs
    for r in range(nrow):
        for i in range(nb):
            xo, o, qo = (r * nb + i) * sbs, (r * nb + i) * bs, i * sbs
            if t == _Q4_K or t == _Q5_K:
                _q45_k_block(src, xo, dst, o, qw, qo, has_qw, L, Laux, w, scales, mins, sw,
                             Ls, Lm, 15 if t == _Q4_K else 31)
            elif t == _Q6_K:
                _q6_k_block(src, xo, dst, o, qw, qo, has_qw, L, scales)
            elif t == _IQ4_XS:
                _iq4_block(QK_K, src, xo, dst, o, o + 2, o + 4, o + 8, qw, qo, has_qw, L, w,
                           scales, ntry)
            elif t == _IQ4_NL:
                _iq4_block(32, src, xo, dst, o, 0, 0, o + 2, qw, qo, has_qw, L, w, scales, ntry)
            elif t == _Q2_K:
                _q2_k_block(src, xo, dst, o, qw, qo, has_qw, L, Laux, w, scales, mins, sw,
                            Ls, Lm)
            else:
                _q3_k_block(src, xo, dst, o, qw, qo, has_qw, L, w, scales, sw, Ls)


_BYTES = tuple({int(t): v for t, v in SIZE.items()}.get(i, 0)
               for i in range(max(int(t) for t in SIZE) + 1))


@_jit
def block_bytes(t):
    """Bytes of one block of the K/IQ4 type t (SIZE, for numba code); 0 for other types."""
    return _BYTES[t] if 0 <= t < len(_BYTES) else 0


# ggml-cpu's from_float (cpy / set_rows into these types): the reference quantizers as
# one row, except IQ4_NL whose CPU path is quantize_row_iq4_nl_ref (no search: ntry -1)

@_jit
def quantize_row_iq4_nl_cpu(src, dst, n):
    quantize_blocks(_IQ4_NL, src, dst, 1, n, np.zeros(0, np.float32), -1)


@_jit
def dequantize_row(t, src, dst, n):
    """Row of n values of K/IQ4 type t -> float32. 0, or ERR_UNSUPPORTED."""
    if t == _Q4_K or t == _Q5_K:
        _dequantize_q45_K(src, dst, n, block_bytes(t))
    elif t == _Q6_K:
        dequantize_row_q6_K(src, dst, n)
    elif t == _Q2_K:
        dequantize_row_q2_K(src, dst, n)
    elif t == _IQ4_XS or t == _IQ4_NL:
        _dequantize_iq4(src, dst, n, t == _IQ4_XS)
    elif t == _Q3_K:
        dequantize_row_q3_K(src, dst, n)
    elif t == _Q8_K:
        dequantize_row_q8_K(src, dst, n)
    else:
        return ERR_UNSUPPORTED
    return 0


@_jit
def quantize_row(t, src, dst, n):
    """float32 row -> K/IQ4 type t as ggml-cpu's from_float does it (IQ4_NL without the
    scale search: quantize_row_iq4_nl_ref). 0, or ERR_UNSUPPORTED."""
    if t == _Q8_K or block_bytes(t) == 0:
        return ERR_UNSUPPORTED
    quantize_blocks(t, src, dst, 1, n, np.zeros(0, np.float32), -1 if t == _IQ4_NL else 7)
    return 0
