"""Flash attention's per-row state (kernels/attention.py): a row's running (M, S, O) set
up from with_state's previous contribution, one fold unit's partial folded in (the merge
rule every path runs), the row written out (sinks, state), and the check that an incoming
state is fresh.
"""
from __future__ import annotations

import math

import numpy as np

from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from .fa_consts import _F0
from .fa_consts import _F1
from .fa_consts import NEG_INF
from .fa_consts import _jit


@_jit
def _init_row(ws, ob, oo, dv, h, iq3, pos, N, oa, onb1, onb2, onb3, sa, snb1, snb2):
    """A row's running (O, M, S) before its first key: with_state's previous contribution
    (o_prev and the state) when there is one, else nothing seen (M=-inf, S=0)."""
    if ws == 1 and oa != 0:
        st = f32_array(sa + (h * N + pos) * snb1 + iq3 * snb2, 2)
        if st[1] > _F0 and st[0] != NEG_INF:
            op = f32_array(oa + h * onb1 + pos * onb2 + iq3 * onb3, dv)
            for i in range(dv):
                ob[oo + i] = op[i]
            return st[0], st[1]
    return NEG_INF, _F0


@_jit
def _fold_row(ob, oo, acc, ao, dv, M, S, Mc, Sc):
    """Folds one unit's partial (Mc, Sc, unnormalized acc) into the row's running (M, S,
    normalized O at ob[oo:]): the with_state merge rule. Every fold of every path (one
    thread, the decode split, a call continuing from o_prev) runs this one function, so
    a chain of calls split at unit boundaries equals one call bit for bit."""
    if not Sc > _F0:
        return M, S
    # raw pointers: indexing arrays at oo + i adds negative-index code that keeps these
    # loops scalar (they run once per row and unit: a few % of a prompt's time)
    op = ptr_of(ob.ctypes.data, np.float32)
    ap = ptr_of(acc.ctypes.data, np.float32)
    if S > _F0:
        mn = max(M, Mc)             # one side's factor is exp(0) = 1 exactly
        a = _F1 if M == mn else np.float32(math.exp(M - mn))
        b = _F1 if Mc == mn else np.float32(math.exp(Mc - mn))
        sn = S * a + Sc * b
        inv = _F1 / sn
        wa = S * a * inv
        wb = b * inv
        for i in range(dv):
            op[oo + i] = op[oo + i] * wa + ap[ao + i] * wb
        return mn, sn
    inv = _F1 / Sc
    for i in range(dv):
        op[oo + i] = ap[ao + i] * inv
    return Mc, Sc


@_jit
def _finish_row(ws, ob, oo, dv, M, S, h, iq3, pos, N, sinks_a, sa, snb1, snb2, da, dnb1,
                dnb2, dnb3):
    """Writes one row's output (sinks weigh in) and, for with_state, its state."""
    out = f32_array(da + h * dnb1 + pos * dnb2 + iq3 * dnb3, dv)
    if not S > _F0:                          # nothing seen (ob holds nothing): 0
        for i in range(dv):
            out[i] = _F0
    else:
        w = _F1
        if ws == 0 and sinks_a != 0:         # the sink: one more score, with value 0
            s = f32_array(sinks_a, h + 1)[h]
            if s > M:
                a = np.float32(math.exp(M - s))
                w = S * a / (S * a + _F1)
            else:
                w = S / (S + np.float32(math.exp(s - M)))
        for i in range(dv):
            out[i] = ob[oo + i] * w
    if ws == 1:
        st = f32_array(sa + (h * N + pos) * snb1 + iq3 * snb2, 2)
        st[0] = M if S > _F0 else NEG_INF
        st[1] = S


@_jit
def _state_check(sa, snb1, snb2, rows, ne3):
    """0: every row fresh (M=-inf, S=0); 1: some row holds a previous contribution (finite
    M, finite S > 0); 2: some row is neither (attention.state.row_kinds, in float32)."""
    r = 0
    for i3 in range(ne3):
        for row in range(rows):
            st = f32_array(sa + row * snb1 + i3 * snb2, 2)
            m = st[0]
            s = st[1]
            if m == NEG_INF and s == _F0:
                continue
            if np.isfinite(m) and np.isfinite(s) and s > _F0:
                r = 1
            else:
                return 2
    return r
