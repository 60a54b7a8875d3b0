"""Sorting ops: ARGSORT (ggml_argsort, ggml_argsort_top_k) and TOP_K (ggml_top_k).

Semantics are ggml's (ggml.c constructors, ggml-cpu ops.cpp kernels). The reference sorts
stably (ties keep index order, a choice ggml leaves open). ARGSORT's cases have no ties
(each row a shuffle of 0..n-1, as ggml's test_argsort), so the order is fully defined.
TOP_K's cases carry ggml's test_top_k error function: the k indices of a row may come in
any order, and with ties any of the tied indices may be chosen, as long as the picked
values are the same (as a multiset) and no index repeats.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .. import data
from ..errors import ParamError
from ..tensor import nbytes
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import view_4d as _view_4d

_F32, _I32 = GGMLType.F32, GGMLType.I32
_F32_ONLY = (_F32,)


# --- ARGSORT -----------------------------------------------------------------------------------

SORT_ORDER_ASC = 0
SORT_ORDER_DESC = 1


def _infer_argsort(srcs, p):
    a = need_src("ARGSORT", srcs, 0, "a")
    need_type("ARGSORT", a, _F32_ONLY, "a")
    need(a.ne[0] <= 2**31 - 1, "ARGSORT", "rows longer than INT32_MAX", a)
    if p.order not in (SORT_ORDER_ASC, SORT_ORDER_DESC):
        raise ParamError(f"ARGSORT: order must be 0 (asc) or 1 (desc), got {p.order}")
    return Out(_I32, a.ne)


def _argsort_rows(x: np.ndarray, desc: bool) -> np.ndarray:
    """Stable: equal values keep their index order (ggml's std::sort leaves ties unspecified)."""
    return np.argsort(-x if desc else x, axis=-1, kind="stable")


def _ref_argsort(node, ins, p):
    return _argsort_rows(ins[0], p.order == SORT_ORDER_DESC)


def _init_unique_rows(t, rng):
    """test_argsort/test_top_k: each row a shuffle of 0..ne0-1 (no ties)."""
    if t.type != _F32:
        return None
    base = np.broadcast_to(np.arange(t.ne[0], dtype=np.float64), t.ne[::-1])
    return rng.permuted(base, axis=-1)


def _argsort_cases():
    out = []

    def add(ne, order, slow=False):
        out.append(cc.case("ARGSORT", dict(type=cc.ggml_type("f32"), ne=list(ne), order=order),
                           (lambda ne, o: lambda ctx: argsort(ctx, cc.leaf(ctx, "f32", ne, "a"), o))(
                               ne, order),
                           init=_init_unique_rows, exact=True, tags=("slow",) if slow else ()))

    # ggml's grid repeats this size loop inside its order loop with the default (asc) order
    i = 4
    while i <= 1024 * 1024:
        add((i - 1, 1, 1, 1), SORT_ORDER_ASC, slow=i > 4096)
        add((i, 1, 1, 1), SORT_ORDER_ASC, slow=i > 4096)
        i *= 2
    for order in (SORT_ORDER_ASC, SORT_ORDER_DESC):
        add((16, 10, 10, 10), order)
        add((60, 10, 10, 10), order, slow=True)
        for n in (1023, 1024, 1025):
            add((n, 2, 1, 3), order)
        add((1025, 256, 1, 1), order, slow=True)
        for n in (2047, 2048, 2049):
            add((n, 2, 1, 3), order, slow=True)
        add((2, 8, 8192, 1), order, slow=True)
        add((2048, 512, 1, 1), order, slow=True)
        add((7, 3, 2, 1), order)          # pyggml extra: tiny odd rows
    return out


ARGSORT = register(OpDef(
    "ARGSORT", _infer_argsort, params="order:i32", reference=_ref_argsort,
    cases=_argsort_cases, exact=True,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_argsort(c, s[0], p.order),
    doc="I32 indices sorting each row ascending (order 0) or descending (order 1)."))


def argsort(ctx, a, order):
    """ggml_argsort(a, order): ties keep index order (stable), a choice ggml leaves open."""
    return ARGSORT.build(ctx, [a], dict(order=int(order)))


def argsort_top_k(ctx, a, k):
    """ggml_argsort_top_k: the first k of a descending argsort (a view)."""
    need(a.ne[0] >= k, "ARGSORT_TOP_K", f"k={k} exceeds the row length", a)
    r = argsort(ctx, a, SORT_ORDER_DESC)
    return _view_4d(ctx, r, k, r.ne[1], r.ne[2], r.ne[3], r.nb[1], r.nb[2], r.nb[3], 0)


def _infer_top_k(srcs, p):
    a = need_src("TOP_K", srcs, 0, "a")
    need_type("TOP_K", a, _F32_ONLY, "a")
    if not 0 <= p.k <= a.ne[0]:
        raise ParamError(f"TOP_K: k={p.k} must be in [0, a.ne[0]={a.ne[0]}] [{a.name!r}]")
    return Out(_I32, [p.k, a.ne[1], a.ne[2], a.ne[3]])


def _ref_top_k(node, ins, p):
    k = node.ne[0]
    idx = _argsort_rows(ins[0], True)[..., :k].copy()
    if k > 1:        # ggml swaps the first two "to emphasize that the order is not important"
        idx[..., [0, 1]] = idx[..., [1, 0]]
    return idx


def _init_ties(k):
    def fill(t, rng):
        if t.type != _F32:
            return None
        denom = max(1, min(10, k // 2))
        base = np.broadcast_to(np.arange(t.ne[0]) // denom, t.ne[::-1]).astype(np.float64)
        return rng.permuted(base, axis=-1)
    return fill


def _jdst(a: list, b: list) -> float:
    """test-backend-ops' jdst: how much the multisets a and b differ (0 same, 1 disjoint)."""
    ca, cb = Counter(a), Counter(b)
    return sum(((ca - cb) + (cb - ca)).values()) / (2 * len(a))


def _top_k_err(ties: bool):
    """test_top_k::err: per row, the picked indices (ties: the values they pick) must agree
    as multisets, in any order; a row repeating an index (pyggml also: one outside the row)
    adds 1. ggml measures the index distance over the whole tensor, pyggml per row (a pick
    moved to another row fails too)."""
    def err(ref: np.ndarray, got: np.ndarray, node) -> float:
        k, src = node.ne[0], data.read(node.src[0])
        if k == 0:
            return 0.0
        n = src.shape[-1]
        src = src.reshape(-1, n)
        ia, ib = ref.reshape(-1, k).astype(np.int64), got.reshape(-1, k).astype(np.int64)
        e = 0.0
        for idx in (ia, ib):
            s = np.sort(idx, axis=1)
            e += np.count_nonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
            e += np.count_nonzero(((idx < 0) | (idx >= n)).any(axis=1))
        if ties:
            ka = np.take_along_axis(src, np.clip(ia, 0, n - 1), axis=1)
            kb = np.take_along_axis(src, np.clip(ib, 0, n - 1), axis=1)
        else:
            ka, kb = ia, ib
        sa, sb = np.sort(ka, axis=1), np.sort(kb, axis=1)
        same = ((sa == sb) | (np.isnan(sa) & np.isnan(sb))).all(axis=1)
        for r in np.flatnonzero(~same):      # only rows that differ pay for the exact distance
            e += _jdst(ka[r].tolist(), kb[r].tolist())
        return float(e)
    return err


def _top_k_cases():
    out = []

    def add(ne, k, ties=False, slow=False):
        c = cc.case("TOP_K", dict(type=cc.ggml_type("f32"), ne=list(ne), k=k, ties=ties),
                    (lambda ne, k: lambda ctx: top_k(ctx, cc.leaf(ctx, "f32", ne, "a"), k))(ne, k),
                    init=_init_ties(k) if ties else _init_unique_rows, exact=True,
                    tags=(("slow",) if slow else ()) + (("ties",) if ties else ()))
        c.err = _top_k_err(ties)       # the harness's hook for ggml's test_case::err
        out.append(c)

    for n in range(1, 5):
        for k in range(1, n + 1):
            add((n, 2, 1, 3), k, True)
    for i in range(20):
        for k in (1, 2, 3, 7, 15, 100, 500, 1023, 9999):
            if k <= 1 << i:
                slow = (1 << i) > 2048
                add((1 << i, 1, 1, 1), k, slow=slow)
                add(((1 << i) + 11, 1, 2, 1), k, slow=slow)
                add(((1 << i) + 11, 1, 2, 1), k, True, slow=slow)
    for k in (1, 2, 3, 7, 15):
        add((16, 10, 10, 10), k)
        add((60, 10, 10, 10), k, slow=True)
        for n in (1023, 1024, 1025):
            add((n, 2, 1, 3), k, slow=k > 3)
        add((16384, 1, 1, 1), k, slow=True)
        for n in (2047, 2048, 2049):
            add((n, 2, 1, 3), k, slow=True)
    return cc.unique(out)


TOP_K = register(OpDef(
    "TOP_K", _infer_top_k, reference=_ref_top_k, cases=_top_k_cases, exact=True, max_nmse=0.0,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_top_k(c, s[0], node.ne[0]),
    doc="I32 indices of the k largest values of each row (first two swapped, as ggml)."))


def top_k(ctx, a, k):
    """ggml_top_k(a, k): I32 [k, ne1, ne2, ne3]. The order is ggml's: the k largest in
    descending order (ties by index), then the first two swapped (ggml does this on purpose
    so callers do not rely on the order)."""
    # k lives in the result's ne[0] (ggml stores no op_params); infer reads it from hints
    return TOP_K.build(ctx, [a], hints=dict(k=int(k)))
