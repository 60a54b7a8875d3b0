"""Kernels for SOFT_MAX (soft_max / soft_max_ext, mask F16/F32, ALiBi, scale, sinks),
SOFT_MAX_BACK, DIAG_MASK_INF and DIAG_MASK_ZERO (pyggml/ops/softmax.py is the spec).

Rows are split over threads with ggml's row_range. The soft max of a row is three passes over
the destination row (it doubles as scratch, so no work buffer is needed):
  1. w = x*scale (+ slope*mask), stored in dst, and its maximum (8 independent lanes);
  2. e = exp(w - max) stored in dst, summed in float64 (as ggml's ggml_float);
  3. dst *= 1/sum.
`expf` below is a vectorizable float32 exp (Cody-Waite reduction + degree-7 polynomial,
max error ~1 ulp, results below 2^-126 flushed to 0) written for the softmax domain x <= 0;
it keeps NaN (a fully -inf row gives NaN, as in ggml) and exp(-inf) = 0. The kernels use the
fastmath flags {'contract', 'reassoc'} only: no 'nnan'/'ninf', so -inf and NaN keep their
IEEE meaning; expf itself is compiled without 'reassoc' so its range reduction stays exact.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ....quants import nb as qnb
from ....quants.nb import _bits_f32
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_SHAPE
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
from ..desc import t_ne4
from ..desc import t_type
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from ..intrinsics import u16_array
from . import kernel
from . import param_words
from . import rows_n_tasks

_W_SM, _W_SMB = param_words("SOFT_MAX"), param_words("SOFT_MAX_BACK")
_W_DIAG = param_words("DIAG_MASK_INF")     # DIAG_MASK_ZERO has the same words

F32, F16 = int(GGMLType.F32), int(GGMLType.F16)
_F = np.float32
_FM = {"contract", "reassoc"}

_jit = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy")

# expf constants: log2(e), ln2 split in two (Cody-Waite), the valid range, Cephes' polynomial
_LOG2E = _F(1.44269504088896341)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.12194440e-4)
_LO = _F(-87.33654)          # 2^-126: below it the result is flushed to 0
_HI = _F(88.0)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_NEG_INF = _F(-np.inf)


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
def expf(x):
    """exp(x) for float32 x <= 0 (accurate to ~1 ulp; NaN kept; -inf -> 0). Vectorizable."""
    t = _LO if _LO > x else x
    t = _HI if t > _HI else t
    n = np.floor(t * _LOG2E + _F(0.5))          # float32 (math.floor would give an int64)
    r = t - n * _LN2_HI
    r = r - n * _LN2_LO
    z = r * r
    p = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * z + r + _F(1.0)
    y = p * _bits_f32(np.uint32((np.int32(n) + np.int32(127)) << np.int32(23)))
    y = _F(0.0) if x < _LO else y
    return y if x == x else x


@_jit
def row_max(w, n):
    """max of w[0:n] with 8 independent lanes (so LLVM vectorizes it)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = _NEG_INF
    i = 0
    while i + 8 <= n:
        v = w[i]
        m0 = m0 if m0 > v else v
        v = w[i + 1]
        m1 = m1 if m1 > v else v
        v = w[i + 2]
        m2 = m2 if m2 > v else v
        v = w[i + 3]
        m3 = m3 if m3 > v else v
        v = w[i + 4]
        m4 = m4 if m4 > v else v
        v = w[i + 5]
        m5 = m5 if m5 > v else v
        v = w[i + 6]
        m6 = m6 if m6 > v else v
        v = w[i + 7]
        m7 = m7 if m7 > v else v
        i += 8
    while i < n:
        v = w[i]
        m0 = m0 if m0 > v else v
        i += 1
    a = m0 if m0 > m1 else m1
    b = m2 if m2 > m3 else m3
    c = m4 if m4 > m5 else m5
    d = m6 if m6 > m7 else m7
    a = a if a > b else b
    c = c if c > d else d
    return a if a > c else c


@_jit
def exp_sum(w, n, mx):
    """w[i] = exp(w[i] - mx) in place; returns the float64 sum."""
    s = 0.0
    for i in range(n):
        e = expf(w[i] - mx)
        w[i] = e
        s += np.float64(e)
    return s


@_jit
def scale_row(w, n, f):
    for i in range(n):
        w[i] = w[i] * f


@_jit
def alibi_slope(h, n_head, max_bias):
    """ggml's ALiBi slope for head h (float32 powf), 1 without ALiBi (soft_max and flash
    attention share it)."""
    if max_bias <= _F(0.0):
        return _F(1.0)
    n_head_log2 = 1
    while n_head_log2 * 2 <= n_head:
        n_head_log2 *= 2
    if h < n_head_log2:
        m0 = _F(math.pow(_F(2.0), -max_bias / _F(n_head_log2)))
        return _F(math.pow(m0, _F(h + 1)))
    m1 = _F(math.pow(_F(2.0), -(max_bias / _F(2.0)) / _F(n_head_log2)))
    return _F(math.pow(m1, _F(2 * (h - n_head_log2) + 1)))


def _supports_soft_max(node) -> bool:
    a, m, s = node.src[0], node.src[1], node.src[2]
    if a.type != GGMLType.F32 or node.type != GGMLType.F32 or a.nb[0] != 4 or node.nb[0] != 4:
        return False
    if m is not None and (m.type not in (GGMLType.F32, GGMLType.F16) or
                          m.nb[0] != (4 if m.type == GGMLType.F32 else 2)):
        return False
    return s is None or s.type == GGMLType.F32


@kernel("SOFT_MAX", supports=_supports_soft_max, n_tasks=rows_n_tasks)
def soft_max_f32(desc, ith, nth):
    ne00, ne01, ne02, ne03 = t_ne4(desc, SRC0)
    nb01, nb02, nb03 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    nb1, nb2, nb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    sa = t_addr(desc, SRC0)
    da = t_addr(desc, DST)
    scale = param_f32(desc, _W_SM.scale)
    max_bias = param_f32(desc, _W_SM.max_bias)
    ma = t_addr(desc, SRC1)
    mt = t_type(desc, SRC1)
    ne11, ne12, ne13 = t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2), t_ne(desc, SRC1, 3)
    nb11, nb12, nb13 = t_nb(desc, SRC1, 1), t_nb(desc, SRC1, 2), t_nb(desc, SRC1, 3)
    ka = t_addr(desc, SRC2)
    knb0 = t_nb(desc, SRC2, 0)
    if ma != 0 and (t_ne(desc, SRC1, 0) != ne00 or ne11 < ne01 or ne12 <= 0 or ne13 <= 0):
        set_error(desc, ERR_SHAPE)
        return
    ir0, ir1 = row_range(ne01 * ne02 * ne03, ith, nth)
    last_h = -1
    slope = _F(1.0)
    for r in range(ir0, ir1):
        i01, i02, i03 = row_coords(r, ne01, ne02)
        if i02 != last_h:
            slope = alibi_slope(i02, ne02, max_bias)
            last_h = i02
        x = f32_array(sa + i01 * nb01 + i02 * nb02 + i03 * nb03, ne00)
        w = f32_array(da + i01 * nb1 + i02 * nb2 + i03 * nb3, ne00)
        if ma == 0:
            for i in range(ne00):
                w[i] = x[i] * scale
        else:
            mrow = ma + i01 * nb11 + (i02 % ne12) * nb12 + (i03 % ne13) * nb13
            if mt == F16:
                m16 = u16_array(mrow, ne00)
                for i in range(ne00):
                    w[i] = x[i] * scale + slope * qnb.f16_to_f32(m16[i])
            else:
                m32 = f32_array(mrow, ne00)
                for i in range(ne00):
                    w[i] = x[i] * scale + slope * m32[i]
        mx = row_max(w, ne00)
        sink = _F(0.0)
        if ka != 0:
            sink = ptr_of(ka + i02 * knb0, np.float32)[0]
            mx = mx if mx > sink else sink
        s = exp_sum(w, ne00, mx)
        if ka != 0:
            s += np.float64(expf(sink - mx))
        scale_row(w, ne00, _F(1.0 / s))


# --- SOFT_MAX_BACK ----------------------------------------------------------------------------

def _supports_soft_max_back(node) -> bool:
    a, b = node.src[0], node.src[1]
    return all(t.type == GGMLType.F32 and t.nb[0] == 4 for t in (a, b, node))


@kernel("SOFT_MAX_BACK", supports=_supports_soft_max_back, n_tasks=rows_n_tasks)
def soft_max_back_f32(desc, ith, nth):
    """dx = scale * y * (dy - dot(y, dy)) per row; a = dy, b = y."""
    ne0, ne1, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    scale = param_f32(desc, _W_SMB.scale)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        dy = f32_array(t_addr(desc, SRC0) + i1 * t_nb(desc, SRC0, 1) + i2 * t_nb(desc, SRC0, 2)
                       + i3 * t_nb(desc, SRC0, 3), ne0)
        y = f32_array(t_addr(desc, SRC1) + i1 * t_nb(desc, SRC1, 1) + i2 * t_nb(desc, SRC1, 2)
                      + i3 * t_nb(desc, SRC1, 3), ne0)
        dx = f32_array(t_addr(desc, DST) + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2)
                       + i3 * t_nb(desc, DST, 3), ne0)
        dot = 0.0
        for i in range(ne0):
            dot += np.float64(y[i] * dy[i])
        d = _F(dot)
        for i in range(ne0):
            dx[i] = (dy[i] - d) * y[i] * scale


# --- DIAG_MASK_INF / DIAG_MASK_ZERO -------------------------------------------------------------

def _supports_diag_mask(node) -> bool:
    return node.type == GGMLType.F32 and node.src[0].type == GGMLType.F32 and \
        node.nb[0] == 4 and node.src[0].nb[0] == 4


@_jit
def diag_mask(desc, ith, nth, value):
    """dst = a with dst[.., j, i] = value where i > n_past + j. Each thread copies and masks
    its own rows (ggml copies the whole tensor first on thread 0 and meets at a barrier)."""
    n_past = param_i32(desc, _W_DIAG.n_past)
    ne0, ne1, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    sa = t_addr(desc, SRC0)
    da = t_addr(desc, DST)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        j, i2, i3 = row_coords(r, ne1, ne2)
        x = f32_array(sa + j * t_nb(desc, SRC0, 1) + i2 * t_nb(desc, SRC0, 2)
                      + i3 * t_nb(desc, SRC0, 3), ne0)
        y = f32_array(da + j * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2)
                      + i3 * t_nb(desc, DST, 3), ne0)
        keep = min(max(n_past + j + 1, 0), ne0)
        if sa != da:
            for i in range(keep):
                y[i] = x[i]
        for i in range(keep, ne0):
            y[i] = value


@kernel("DIAG_MASK_INF", supports=_supports_diag_mask, n_tasks=rows_n_tasks)
def diag_mask_inf_f32(desc, ith, nth):
    diag_mask(desc, ith, nth, _NEG_INF)


@kernel("DIAG_MASK_ZERO", supports=_supports_diag_mask, n_tasks=rows_n_tasks)
def diag_mask_zero_f32(desc, ith, nth):
    diag_mask(desc, ith, nth, _F(0.0))
