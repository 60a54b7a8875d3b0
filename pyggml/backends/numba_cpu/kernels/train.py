"""Kernels for training: SILU_BACK, CROSS_ENTROPY_LOSS(_BACK), OPT_STEP_ADAMW, OPT_STEP_SGD
(F32, packed rows; pyggml/ops/silu_back.py, loss.py, opt_step.py are the spec).

Rows are split over threads with row_range, as ggml-cpu. CROSS_ENTROPY_LOSS sums over all
rows into one scalar; ggml meets its threads at a barrier for that, here one thread takes the
node (n_tasks 1) and sums in float64 (ggml_float).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import SRC3
from ..desc import SRC4
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_ne
from ..intrinsics import f32_array
from . import kernel
from .norm import row_addr

_F = np.float32
_jit = numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")


def _f32_packed(node) -> bool:
    ts = [node] + [s for s in node.src if s is not None]
    return all(t.type == GGMLType.F32 and t.nb[0] == 4 for t in ts)


def _one_task(node, n_threads):
    return 1


@_jit
def _nrows(desc, slot):
    return t_ne(desc, slot, 1) * t_ne(desc, slot, 2) * t_ne(desc, slot, 3)


@kernel("SILU_BACK", supports=_f32_packed)
def silu_back_f32(desc, ith, nth):
    """dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x); src0 = dy, src1 = x."""
    n = t_ne(desc, SRC1, 0)
    ir0, ir1 = row_range(_nrows(desc, SRC1), ith, nth)
    for r in range(ir0, ir1):
        dy = f32_array(row_addr(desc, SRC0, r), n)
        x = f32_array(row_addr(desc, SRC1, r), n)
        dx = f32_array(row_addr(desc, DST, r), n)
        for i in range(n):
            s = _F(1.0) / (_F(1.0) + _F(math.exp(-x[i])))
            dx[i] = dy[i] * s * (_F(1.0) + x[i] * (_F(1.0) - s))


@_jit
def _row_max(x, n):
    m = -np.inf
    for i in range(n):
        if x[i] > m:
            m = x[i]
    return _F(m)


@kernel("CROSS_ENTROPY_LOSS", supports=_f32_packed, n_tasks=_one_task)
def cross_entropy_loss_f32(desc, ith, nth):
    """-(1/nr) sum_rows sum_i labels_i * (logits_i - max - log sum exp(logits - max))."""
    n = t_ne(desc, SRC0, 0)
    nr = _nrows(desc, SRC0)
    total = 0.0
    for r in range(nr):
        x = f32_array(row_addr(desc, SRC0, r), n)
        y = f32_array(row_addr(desc, SRC1, r), n)
        m = _row_max(x, n)
        se = 0.0
        for i in range(n):
            se += math.exp(np.float64(x[i] - m))
        lse = _F(math.log(se))
        row = 0.0
        for i in range(n):
            row += np.float64((x[i] - m - lse) * y[i])
        total += row
    # no rows: ggml's 0 * (-1.0f / 0) is NaN (a Python-model division would raise here)
    f32_array(t_addr(desc, DST), 1)[0] = _F(-total / nr) if nr > 0 else _F(np.nan)


@kernel("CROSS_ENTROPY_LOSS_BACK", supports=_f32_packed)
def cross_entropy_loss_back_f32(desc, ith, nth):
    """(softmax(logits) - labels) * d / nr; src0 = d (scalar), src1 = logits, src2 = labels."""
    n = t_ne(desc, SRC1, 0)
    nr = _nrows(desc, SRC1)
    if nr == 0:                      # nothing to write; d / 0 would raise
        return
    d_by_nr = f32_array(t_addr(desc, SRC0), 1)[0] / _F(nr)
    ir0, ir1 = row_range(nr, ith, nth)
    for r in range(ir0, ir1):
        x = f32_array(row_addr(desc, SRC1, r), n)
        y = f32_array(row_addr(desc, SRC2, r), n)
        dx = f32_array(row_addr(desc, DST, r), n)
        m = _row_max(x, n)
        s = 0.0
        for i in range(n):
            e = _F(math.exp(x[i] - m))
            dx[i] = e
            s += np.float64(e)
        inv = _F(1.0 / s)
        for i in range(n):
            dx[i] = (dx[i] * inv - y[i]) * d_by_nr


@kernel("OPT_STEP_ADAMW", supports=_f32_packed)
def opt_step_adamw_f32(desc, ith, nth):
    """One AdamW step in place on src0 (m = src2, v = src3 updated), as ggml's loop."""
    n = t_ne(desc, SRC0, 0)
    hp = f32_array(t_addr(desc, SRC4), 7)
    alpha, beta1, beta2, eps, wd, beta1h, beta2h = hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6]
    keep = _F(1.0) - alpha * wd
    ir0, ir1 = row_range(_nrows(desc, SRC0), ith, nth)
    for r in range(ir0, ir1):
        w = f32_array(row_addr(desc, SRC0, r), n)
        g = f32_array(row_addr(desc, SRC1, r), n)
        m = f32_array(row_addr(desc, SRC2, r), n)
        v = f32_array(row_addr(desc, SRC3, r), n)
        for i in range(n):
            m[i] = m[i] * beta1 + g[i] * (_F(1.0) - beta1)
            v[i] = v[i] * beta2 + g[i] * g[i] * (_F(1.0) - beta2)
            mh = m[i] * beta1h
            vh = _F(math.sqrt(v[i] * beta2h)) + eps
            w[i] = w[i] * keep - alpha * mh / vh


@kernel("OPT_STEP_SGD", supports=_f32_packed)
def opt_step_sgd_f32(desc, ith, nth):
    """a = a * (1 - alpha * wd) - alpha * grad, in place on src0."""
    n = t_ne(desc, SRC0, 0)
    hp = f32_array(t_addr(desc, SRC2), 2)
    alpha = hp[0]
    keep = _F(1.0) - alpha * hp[1]
    ir0, ir1 = row_range(_nrows(desc, SRC0), ith, nth)
    for r in range(ir0, ir1):
        w = f32_array(row_addr(desc, SRC0, r), n)
        g = f32_array(row_addr(desc, SRC1, r), n)
        for i in range(n):
            w[i] = w[i] * keep - alpha * g[i]
