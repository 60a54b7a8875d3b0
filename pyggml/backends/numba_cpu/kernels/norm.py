"""Kernels for NORM, RMS_NORM, RMS_NORM_BACK, L2_NORM and GROUP_NORM (F32; pyggml/ops/norm.py
is the spec).

Rows are split over threads with ggml's row_range (group_norm: groups over threads). Sums are
accumulated in float64 (ggml's ggml_float) with the 'reassoc' fastmath flag, so LLVM
vectorizes them (ggml's own double loop is sequential: same math, different rounding order).
Sources may have any strides; packed rows (nb0 == 4) take the vectorized paths.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import SRC1
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_addr
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from . import kernel
from . import param_words
from . import row_kernel
from . import rows_n_tasks

_W_EPS = param_words("NORM").eps     # the same word in RMS_NORM, L2_NORM, RMS_NORM_BACK
_W_GROUP = param_words("GROUP_NORM")

_F = np.float32
_jit = numba.njit(nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy")


def _f32_all(node) -> bool:
    return node.type == GGMLType.F32 and all(
        s.type == GGMLType.F32 for s in node.src if s is not None)


@_jit
def load_row(addr, nb0, n, out):
    """A strided row into the packed float32 array out (returns out)."""
    for i in range(n):
        out[i] = ptr_of(addr + i * nb0, np.float32)[0]
    return out


@_jit
def store_scaled(src, n, f, daddr, nb0):
    """dst[i] = src[i] * f (float32), dst with element stride nb0."""
    if nb0 == 4:
        y = f32_array(daddr, n)
        for i in range(n):
            y[i] = src[i] * f
    else:
        for i in range(n):
            ptr_of(daddr + i * nb0, np.float32)[0] = src[i] * f


@_jit
def fdiv(a, b):
    """a / b in float32 with IEEE results (inf, NaN): the kernels' own bodies compile with
    Python's error model, where a float division by zero raises (eps = 0, a zero row)."""
    return _F(a) / _F(b)


@_jit
def sum_sq(x, n):
    s = 0.0
    for i in range(n):
        v = x[i]
        s += np.float64(v * v)
    return s


@_jit
def row_sum(x, n):
    s = 0.0
    for i in range(n):
        s += np.float64(x[i])
    return s


@_jit
def _src_row(desc, r, n, tmp_addr):
    """src0 row r as a packed float32 array (a view, or a copy into the thread's scratch)."""
    a = row_addr(desc, SRC0, r)
    nb0 = t_nb(desc, SRC0, 0)
    if nb0 == 4:
        return f32_array(a, n)
    return load_row(a, nb0, n, f32_array(tmp_addr, n))


def _scratch(node, n_threads) -> int:
    """Per thread one row of ne0 floats (only when src0's rows are strided)."""
    s = node.src[0]
    return 0 if s.nb[0] == 4 else (4 * s.ne[0] + 64) * n_threads


@_jit
def _thread_tmp(desc, ith):
    """This thread's scratch row, or 0 (after reporting) when the work buffer is too small."""
    slot = 4 * t_ne(desc, SRC0, 0) + 64
    if t_nb(desc, SRC0, 0) != 4 and wsize(desc) < (ith + 1) * slot:
        set_error(desc, ERR_WORK_SIZE)
        return 0
    return wdata(desc) + ith * slot


# --- NORM, RMS_NORM, L2_NORM: one row loop, specialised per op --------------------------------

_NORM, _RMS_NORM, _L2_NORM = 0, 1, 2


@_jit
def centered_sq(x, n, mean):
    s = 0.0
    for i in range(n):
        v = x[i] - mean
        s += np.float64(v * v)
    return s


@_jit
def store_centered(x, n, mean, f, daddr, nb0):
    if nb0 == 4:
        y = f32_array(daddr, n)
        for i in range(n):
            y[i] = (x[i] - mean) * f
    else:
        for i in range(n):
            ptr_of(daddr + i * nb0, np.float32)[0] = (x[i] - mean) * f


@_jit
def _norm_rows(desc, ith, nth, kind):
    n = t_ne(desc, SRC0, 0)
    eps = param_f32(desc, _W_EPS)
    tmp = _thread_tmp(desc, ith)
    if tmp == 0 and t_nb(desc, SRC0, 0) != 4:
        return
    dnb0 = t_nb(desc, DST, 0)
    ir0, ir1 = row_range(t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3),
                         ith, nth)
    for r in range(ir0, ir1):
        x = _src_row(desc, r, n, tmp)
        d = row_addr(desc, DST, r)
        if kind == _NORM:
            mean = _F(row_sum(x, n) / n)
            var = _F(centered_sq(x, n, mean) / n)
            store_centered(x, n, mean, fdiv(1.0, math.sqrt(var + eps)), d, dnb0)
        elif kind == _RMS_NORM:
            mean = _F(sum_sq(x, n) / n)
            store_scaled(x, n, fdiv(1.0, math.sqrt(mean + eps)), d, dnb0)
        else:
            nrm = _F(math.sqrt(_F(sum_sq(x, n))))            # sqrtf((float)sum)
            nrm = nrm if nrm > eps else eps                   # fmaxf(sqrt(sum), eps)
            store_scaled(x, n, fdiv(1.0, nrm), d, dnb0)


for _op, _kind in (("RMS_NORM", _RMS_NORM), ("NORM", _NORM), ("L2_NORM", _L2_NORM)):
    row_kernel(_op, _norm_rows, _kind, supports=_f32_all, work_size=_scratch,
               n_tasks=rows_n_tasks, name=f"{_op.lower()}_f32")


# --- RMS_NORM_BACK ----------------------------------------------------------------------------

def _supports_packed_f32(node) -> bool:
    return _f32_all(node) and all(t.nb[0] == 4 for t in [node] + [s for s in node.src
                                                                    if s is not None])


@kernel("RMS_NORM_BACK", supports=_supports_packed_f32, n_tasks=rows_n_tasks)
def rms_norm_back_f32(desc, ith, nth):
    """dx = (dz + x * (-sum(x*dz) / (sum(x^2) + eps*n))) / sqrt(mean(x^2) + eps)."""
    n = t_ne(desc, SRC0, 0)
    eps = param_f32(desc, _W_EPS)
    ir0, ir1 = row_range(t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3),
                         ith, nth)
    for r in range(ir0, ir1):
        dz = f32_array(row_addr(desc, SRC0, r), n)
        x = f32_array(row_addr(desc, SRC1, r), n)
        dx = f32_array(row_addr(desc, DST, r), n)
        sxx = 0.0
        sxdz = 0.0
        for i in range(n):
            sxx += np.float64(x[i] * x[i])
            sxdz += np.float64(x[i] * dz[i])
        mean_eps = _F(sxx) / _F(n) + eps
        sum_eps = _F(sxx) + eps * _F(n)
        rrms = fdiv(1.0, math.sqrt(mean_eps))
        sx = fdiv(-sxdz, sum_eps)
        for i in range(n):
            # ggml's C compiles dz + x*sx to one fused multiply-add: with ne0 = 1 the sum
            # cancels, and only the single rounding reproduces its result
            dx[i] = _F(np.float64(x[i]) * np.float64(sx) + np.float64(dz[i])) * rrms


# --- GROUP_NORM -------------------------------------------------------------------------------

def _supports_group_norm(node) -> bool:
    return _supports_packed_f32(node)


def _group_n_tasks(node, n_threads) -> int:
    return max(1, min(n_threads, node.op.p(node).n_groups))


@kernel("GROUP_NORM", supports=_supports_group_norm, n_tasks=_group_n_tasks)
def group_norm_f32(desc, ith, nth):
    """Groups of ceil(ne2/n_groups) channels (ne2 slices) normalized over ne0*ne1, per ne3."""
    ne0, ne1, ne2, ne3 = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), \
        t_ne(desc, SRC0, 3)
    sa, da = t_addr(desc, SRC0), t_addr(desc, DST)
    snb1, snb2, snb3 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    dnb1, dnb2, dnb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    eps = param_f32(desc, _W_GROUP.eps)
    n_groups = param_i32(desc, _W_GROUP.n_groups)
    per = (ne2 + n_groups - 1) // n_groups
    for g in range(ith, n_groups, nth):
        start = g * per
        end = min(start + per, ne2)
        if end <= start:
            continue
        cnt = ne0 * ne1 * (end - start)
        for i3 in range(ne3):
            s = 0.0
            for i2 in range(start, end):
                for i1 in range(ne1):
                    s += row_sum(f32_array(sa + i1 * snb1 + i2 * snb2 + i3 * snb3, ne0), ne0)
            mean = _F(s / cnt)
            s2 = 0.0
            for i2 in range(start, end):
                for i1 in range(ne1):
                    s2 += centered_sq(f32_array(sa + i1 * snb1 + i2 * snb2 + i3 * snb3, ne0),
                                      ne0, mean)
            scale = _F(1.0) / _F(math.sqrt(_F(s2 / cnt) + eps))
            for i2 in range(start, end):
                for i1 in range(ne1):
                    store_centered(f32_array(sa + i1 * snb1 + i2 * snb2 + i3 * snb3, ne0), ne0,
                                   mean, scale, da + i1 * dnb1 + i2 * dnb2 + i3 * dnb3, 4)
