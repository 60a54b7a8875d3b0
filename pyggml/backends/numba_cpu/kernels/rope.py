"""Kernels for ROPE and ROPE_BACK (pyggml/ops/rope.py is the spec): F32 and F16 rows, modes
normal (0), NeoX (2), the multi-section modes MROPE (8), IMROPE (40) and VISION (24), YaRN,
freq factors, dimensions past n_dims copied through.

As ggml: rows (i1 head, i2 token, i3 batch) are split over threads with row_range; each
thread keeps a cos/sin cache of one token in its slice of the work buffer and rebuilds it
when the token changes. The angles follow ggml's float32 recurrence
theta_i = theta_{i-1} * freq_base^(-2/n_dims) (and its float32 YaRN mix); cos/sin of those
angles are computed by a vectorized float64-reduced sincos (error ~3e-8, like cosf/sinf),
scaled by the YaRN magnitude in float32; the rotation is float32.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from ....quants import nb as qnb
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_PARAM
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_coords
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_type
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from ..intrinsics import u16_array
from . import kernel
from . import param_words

_W = param_words("ROPE")        # ROPE_BACK has the same words

F32, F16 = int(GGMLType.F32), int(GGMLType.F16)
NORMAL, NEOX, MROPE, VISION, IMROPE = 0, 2, 8, 24, 40
_F = np.float32
_JIT_OPTS = dict(nogil=True, fastmath={"contract"}, error_model="numpy")
_jit = numba.njit(cache=True, **_JIT_OPTS)


@_jit
def corr_dim(n_dims, n_ctx_orig, n_rot, base):
    return _F(n_dims) * _F(math.log(_F(_F(n_ctx_orig) / (_F(n_rot) * _F(2.0) * _F(math.pi))))) \
        / (_F(2.0) * _F(math.log(base)))


@_jit
def corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow):
    """ggml_rope_yarn_corr_dims in float32, with C's MAX/MIN macro semantics."""
    # np.floor/np.ceil keep float32 (math.floor returns an int: -inf and NaN would not survive)
    start = np.floor(corr_dim(n_dims, n_ctx_orig, beta_fast, freq_base))
    end = np.ceil(corr_dim(n_dims, n_ctx_orig, beta_slow, freq_base))
    lo = _F(0.0) if _F(0.0) > start else start
    hi = _F(n_dims - 1) if _F(n_dims - 1) < end else end
    return lo, hi


@_jit
def yarn_theta(theta_extrap, freq_scale, lo, hi, i, ext_factor):
    """rope_yarn's angle for pair i (float32): interpolation, YaRN ramp mix when ext_factor."""
    theta_interp = freq_scale * theta_extrap
    if ext_factor == _F(0.0):
        return theta_interp
    den = hi - lo
    den = _F(0.001) if _F(0.001) > den else den
    y = (_F(i) - lo) / den
    y = _F(0.0) if _F(0.0) > y else y
    y = _F(1.0) if _F(1.0) < y else y
    ramp_mix = (_F(1.0) - y) * ext_factor
    return theta_interp * (_F(1.0) - ramp_mix) + theta_extrap * ramp_mix


@_jit
def yarn_mscale(freq_scale, ext_factor, attn_factor):
    """rope_yarn's magnitude: attn_factor, times 1 + 0.1 ln(1/freq_scale) with YaRN."""
    if ext_factor == _F(0.0):
        return attn_factor
    return attn_factor * (_F(1.0) + _F(0.1) * _F(math.log(_F(1.0) / freq_scale)))


# sin/cos: Cody-Waite reduction by pi/2 in float64 (exact enough for any float32 angle below
# 2^31), Taylor polynomials on [-pi/4, pi/4]; max error ~3e-8, like cosf/sinf. Vectorizable,
# unlike the libm calls (15x faster on a token's cache).
_TWO_OVER_PI = 0.63661977236758134308
_PIO2_HI = 1.57079632679489661923
_PIO2_LO = 6.123233995736766e-17
_S1, _S2, _S3, _S4, _S5 = -1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800
_C1, _C2, _C3, _C4, _C5, _C6 = -0.5, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800, 1 / 479001600


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
def sincos(t):
    x = np.float64(t)
    k = np.floor(x * _TWO_OVER_PI + 0.5)
    r = x - k * _PIO2_HI
    r = r - k * _PIO2_LO
    z = r * r
    sn = r + r * z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * _S5))))
    cs = 1.0 + z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
    q = k - 4.0 * np.floor(k * 0.25)                  # quadrant 0..3
    s = sn if q == 0.0 else (cs if q == 1.0 else (-sn if q == 2.0 else -cs))
    c = cs if q == 0.0 else (-sn if q == 1.0 else (-cs if q == 2.0 else sn))
    return c, s


@_jit
def angles_to_cache(cache, npair, mscale, sin_sign):
    """cache[2i] holds pair i's angle: replace it by (cos, sin) * mscale (sin * sin_sign)."""
    for i in range(npair):
        c, s = sincos(cache[2 * i])
        cache[2 * i] = _F(c) * mscale
        cache[2 * i + 1] = _F(s) * mscale * sin_sign


@_jit
def read_i32(addr, nb0, i):
    return ptr_of(addr + i * nb0, np.int32)[0]


@_jit
def fill_cache(desc, cache, i2, ne2, npair, mode, n_dims, theta_scale, lo, hi, sin_sign):
    """cos/sin of the npair rotated pairs for token i2 (ggml's rope / mrope cache)."""
    pa, pnb = t_addr(desc, SRC1), t_nb(desc, SRC1, 0)
    fa, fnb = t_addr(desc, SRC2), t_nb(desc, SRC2, 0)
    freq_scale = param_f32(desc, _W.freq_scale)
    ext_factor = param_f32(desc, _W.ext_factor)
    attn_factor = param_f32(desc, _W.attn_factor)
    if mode & MROPE:
        sw = _W.sections
        s0, s1, s2, s3 = (param_i32(desc, sw), param_i32(desc, sw + 1),
                          param_i32(desc, sw + 2), param_i32(desc, sw + 3))
        sect_dims = s0 + s1 + s2 + s3
        sec_w = s0 + s1
        sec_e = sec_w + s2
        b_t = _F(read_i32(pa, pnb, i2))
        b_h = _F(read_i32(pa, pnb, i2 + ne2))
        b_w = _F(read_i32(pa, pnb, i2 + 2 * ne2))
        b_e = _F(read_i32(pa, pnb, i2 + 3 * ne2))
        th_t, th_h, th_w, th_e = b_t, b_h, b_w, b_e
        for i in range(npair):
            sector = i % sect_dims
            if mode == VISION:                      # each section restarts its angle
                if sector == 0:
                    th_t = b_t
                elif sector == s0:
                    th_h = b_h
                elif sector == sec_w:
                    th_w = b_w
                elif sector == sec_e:
                    th_e = b_e
            if mode == IMROPE:
                if sector % 3 == 1 and sector < 3 * s1:
                    th = th_h
                elif sector % 3 == 2 and sector < 3 * s2:
                    th = th_w
                elif sector % 3 == 0 and sector < 3 * s0:
                    th = th_t
                else:
                    th = th_e
            else:
                th = th_t
                if sector >= s0 and sector < sec_w:
                    th = th_h
                elif sector >= sec_w and sector < sec_w + s2:
                    th = th_w
                elif sector >= sec_w + s2:
                    th = th_e
            ff = ptr_of(fa + i * fnb, np.float32)[0] if fa != 0 else _F(1.0)
            cache[2 * i] = yarn_theta(th / ff, freq_scale, lo, hi, i, ext_factor)
            th_t = th_t * theta_scale
            th_h = th_h * theta_scale
            th_w = th_w * theta_scale
            th_e = th_e * theta_scale
    else:
        theta = _F(read_i32(pa, pnb, i2))
        for i in range(npair):
            ff = ptr_of(fa + i * fnb, np.float32)[0] if fa != 0 else _F(1.0)
            cache[2 * i] = yarn_theta(theta / ff, freq_scale, lo, hi, i, ext_factor)
            theta = theta * theta_scale
    angles_to_cache(cache, npair, yarn_mscale(freq_scale, ext_factor, attn_factor), sin_sign)


def rotate(sa, da, cache, ne0, n_dims, mode, es):
    """Rotate one row at address sa into da (they may be the same: in place). es, a constant,
    picks the type: 4 F32, 2 F16 (converted through float32, rounded back to nearest-even)."""
    raise NotImplementedError("only callable from jitted kernels")


@_jit
def _same(x):
    return x


@overload(rotate, prefer_literal=True, jit_options=_JIT_OPTS)
def _ov_rotate(sa, da, cache, ne0, n_dims, mode, es):
    if not isinstance(es, types.IntegerLiteral):
        return None
    if es.literal_value == 2:
        view, ld, st = u16_array, qnb.f16_to_f32, qnb.f32_to_f16
    else:
        view, ld, st = f32_array, _same, _same

    def impl(sa, da, cache, ne0, n_dims, mode, es):
        if mode == NORMAL:
            x = view(sa, n_dims)
            y = view(da, n_dims)
            for i in range(n_dims // 2):
                c = cache[2 * i]
                s = cache[2 * i + 1]
                x0 = ld(x[2 * i])
                x1 = ld(x[2 * i + 1])
                y[2 * i] = st(x0 * c - x1 * s)
                y[2 * i + 1] = st(x0 * s + x1 * c)
        else:
            if mode == VISION:
                npair, off = ne0 // 2, n_dims
            else:
                npair, off = n_dims // 2, n_dims // 2
            # the two halves as separate arrays: LLVM vectorizes with runtime overlap checks
            # (y[i] and y[i + off] with a runtime off look like a dependence inside one array)
            xa = view(sa, npair)
            xb = view(sa + es * off, npair)
            ya = view(da, npair)
            yb = view(da + es * off, npair)
            for i in range(npair):
                c = cache[2 * i]
                s = cache[2 * i + 1]
                x0 = ld(xa[i])
                x1 = ld(xb[i])
                ya[i] = st(x0 * c - x1 * s)
                yb[i] = st(x0 * s + x1 * c)
        if mode != VISION and n_dims < ne0 and sa != da:
            xr = view(sa + es * n_dims, ne0 - n_dims)
            yr = view(da + es * n_dims, ne0 - n_dims)
            for i in range(ne0 - n_dims):
                yr[i] = xr[i]
    return impl


@_jit
def rope_body(desc, ith, nth, sin_sign):
    t = t_type(desc, SRC0)
    ne0, ne1, ne2 = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    n_dims = param_i32(desc, _W.n_dims)
    mode = param_i32(desc, _W.mode)
    n_ctx_orig = param_i32(desc, _W.n_ctx_orig)
    freq_base = param_f32(desc, _W.freq_base)
    beta_fast = param_f32(desc, _W.beta_fast)
    beta_slow = param_f32(desc, _W.beta_slow)
    if n_dims <= 0 or n_dims % 2 != 0 or (mode != VISION and n_dims > ne0) or \
            (mode == VISION and 2 * n_dims != ne0):
        set_error(desc, ERR_PARAM)
        return
    npair = ne0 // 2 if mode == VISION else n_dims // 2
    slot = 4 * (ne0 + 16)
    if wsize(desc) < (ith + 1) * slot:
        set_error(desc, ERR_WORK_SIZE)
        return
    cache = f32_array(wdata(desc) + ith * slot, 2 * npair)
    theta_scale = _F(math.pow(freq_base, _F(-2.0) / _F(n_dims)))
    lo, hi = corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
    snb1, snb2, snb3 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    dnb1, dnb2, dnb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    sa, da = t_addr(desc, SRC0), t_addr(desc, DST)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, SRC0, 3), ith, nth)
    last = -1
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        if i2 != last:
            fill_cache(desc, cache, i2, ne2, npair, mode, n_dims, theta_scale, lo, hi, sin_sign)
            last = i2
        s = sa + i1 * snb1 + i2 * snb2 + i3 * snb3
        d = da + i1 * dnb1 + i2 * dnb2 + i3 * dnb3
        if t == F32:
            rotate(s, d, cache, ne0, n_dims, mode, 4)
        else:
            rotate(s, d, cache, ne0, n_dims, mode, 2)


def _supports_rope(node) -> bool:
    a = node.src[0]
    if a.type not in (GGMLType.F32, GGMLType.F16) or node.type != a.type:
        return False
    es = 4 if a.type == GGMLType.F32 else 2
    return a.nb[0] == es and node.nb[0] == es and node.src[1].type == GGMLType.I32 and \
        (node.src[2] is None or node.src[2].type == GGMLType.F32)


def _rope_work(node, n_threads) -> int:
    return 4 * (node.ne[0] + 16) * n_threads


def _rope_region(node, n_threads) -> int:
    return 4 * (node.ne[0] + 16)          # rope_body's slot: thread ith's sin/cos cache


@kernel("ROPE", supports=_supports_rope, work_size=_rope_work, private_work=_rope_region)
def rope_fwd(desc, ith, nth):
    rope_body(desc, ith, nth, _F(1.0))


@kernel("ROPE_BACK", supports=_supports_rope, work_size=_rope_work)
def rope_back(desc, ith, nth):
    rope_body(desc, ith, nth, _F(-1.0))
