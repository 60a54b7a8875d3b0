"""The softmax state of flash_attn_ext_with_state: layout, fresh values, the merge rule.

A state tensor is F32 with ne = [2, n_head * n_batch, ne3, 1]. Row `head * n_batch + pos`
(in plane i3 = ne[2] index) holds

    [0] M  the running maximum of the scaled, capped and masked scores seen so far
    [1] S  the running sum of exp(score - M) over those scores

A fresh state (nothing seen yet) is M = -inf, S = 0. Two partial softmaxes over disjoint
key sets, each given as (M, S, O) with O the normalized output, combine exactly:

    M = max(M1, M2)
    S = S1·e^(M1-M) + S2·e^(M2-M)
    O = (O1·S1·e^(M1-M) + O2·S2·e^(M2-M)) / S

An empty side (S == 0, M == -inf) contributes nothing and is never evaluated (no
inf - inf = NaN); both sides empty give M = -inf, S = 0, O = 0. An incoming row that is
neither fresh nor a previous contribution (finite M, finite S > 0) -- NaN, S <= 0 with a
finite M, ... -- is inconsistent: with_state raises a ComputeError naming it (`row_kinds`). This module is the one
place that rule is written for NumPy; the Numba kernels repeat it in float32.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..errors import ShapeError
from ..errors import TypeError_
from ..errors import describe
from ..types import GGMLType

STATE_M = 0          # element 0 of a row: running max
STATE_S = 1          # element 1 of a row: running sum


def state_ne(n_head: int, n_batch: int, ne3: int = 1) -> list[int]:
    """ne of the state of a query with n_head heads, n_batch rows per head and ne3 planes."""
    return [2, int(n_head) * int(n_batch), int(ne3), 1]


def fresh_values(ne) -> np.ndarray:
    """NumPy values (ne3, ne2, ne1, 2) of a fresh state of shape ne: M = -inf, S = 0."""
    v = np.zeros((ne[3], ne[2], ne[1], ne[0]), dtype=np.float32)
    v[..., STATE_M] = -np.inf
    return v


def check_state_tensor(t, what: str = "s_m_state") -> None:
    """A state must be a contiguous F32 tensor of rows [M, S]."""
    if t.type != GGMLType.F32:
        raise TypeError_(f"{what}: {describe(t)} has type {t.type.tname}; a softmax state is f32")
    if t.ne[0] != 2 or t.ne[3] != 1:
        raise ShapeError(f"{what}: {describe(t)} is not a softmax state: expected "
                         f"ne = [2, n_head*n_batch, ne3, 1]")


def reset_state(state) -> None:
    """Write a fresh state (M = -inf, S = 0) into the data of a state tensor."""
    from .. import data
    check_state_tensor(state)
    if not state.is_allocated:
        raise DataError(f"flash_attn_state_reset: {describe(state)} has no data yet (no_alloc "
                        f"context): allocate it first, then reset it")
    data.write(state, fresh_values(state.ne))


def state_values(state, n_head: int = None):
    """(M, S) of a state as float32 arrays shaped (ne3, n_head*n_batch), or
    (ne3, n_head, n_batch) when n_head is given."""
    from .. import data
    check_state_tensor(state)
    v = data.read(state, np.float32)[0]          # (ne3, rows, 2)
    m, s = v[..., STATE_M], v[..., STATE_S]
    if n_head is not None:
        if state.ne[1] % n_head:
            raise ShapeError(f"state_values: {state.ne[1]} rows do not split into {n_head} heads")
        m = m.reshape(state.ne[2], n_head, -1)
        s = s.reshape(state.ne[2], n_head, -1)
    return m, s


def row_kinds(m, s):
    """Classify state rows: (fresh, previous, inconsistent) boolean arrays.

    A row is fresh (M = -inf, S = 0) or holds a previous contribution (finite M, finite
    S > 0); anything else (NaN, S <= 0 with a finite M, S > 0 with M = -inf, infinities) is
    inconsistent and must never be taken for either."""
    m = np.asarray(m)
    s = np.asarray(s)
    fresh = (m == -np.inf) & (s == 0)
    prev = np.isfinite(m) & np.isfinite(s) & (s > 0)
    return fresh, prev, ~(fresh | prev)


def bad_row_message(op: str, state, m, s, n_head: int) -> str | None:
    """The message naming the first inconsistent row of a state's (M, S), shaped
    (ne3, n_head*n_batch); None when every row is fresh or a valid previous contribution."""
    _, _, bad = row_kinds(m, s)
    if not bad.any():
        return None
    i3, row = (int(x[0]) for x in np.nonzero(bad))
    n_batch = max(1, m.shape[-1] // max(1, n_head))
    return (f"{op}: s_m_state {describe(state)} row {row} (head {row // n_batch}, pos "
            f"{row % n_batch}, plane {i3}) is inconsistent: M={m[i3, row]:g}, S={s[i3, row]:g}; "
            f"a row is either fresh (M=-inf, S=0) or a previous contribution (finite M, S > 0)"
            f" (flash_attn_state_reset starts over)")


def merge(m1, s1, o1, m2, s2, o2):
    """Combine two partial softmaxes (M, S, normalized O) over disjoint key sets.

    m*, s*: arrays of the same shape R; o*: shape R + (DV,). Returns (M, S, O) in float64.
    Rows with S == 0 on a side ignore that side's M and O entirely (they may hold -inf or
    anything else); rows empty on both sides give M = -inf, S = 0, O = 0.
    """
    m1 = np.asarray(m1, np.float64)
    m2 = np.asarray(m2, np.float64)
    s1 = np.asarray(s1, np.float64)
    s2 = np.asarray(s2, np.float64)
    o1 = np.asarray(o1, np.float64)
    o2 = np.asarray(o2, np.float64)
    has1, has2 = s1 > 0, s2 > 0
    m = np.where(has1 & has2, np.maximum(m1, m2), np.where(has1, m1, np.where(has2, m2, -np.inf)))
    with np.errstate(invalid="ignore", over="ignore"):
        w1 = np.where(has1, s1 * np.exp(np.where(has1, m1, 0.0) - np.where(has1, m, 0.0)), 0.0)
        w2 = np.where(has2, s2 * np.exp(np.where(has2, m2, 0.0) - np.where(has2, m, 0.0)), 0.0)
    s = w1 + w2
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    o = (np.where(has1[..., None], o1, 0.0) * w1[..., None]
         + np.where(has2[..., None], o2, 0.0) * w2[..., None]) * inv[..., None]
    return m, s, o
