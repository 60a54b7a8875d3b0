"""Triangular matrices: TRI (keep one triangle), DIAG (vector -> diagonal matrix), SOLVE_TRI
(forward substitution A X = B with A lower triangular), and FILL (every element set to c).

Semantics are ggml's (ggml.c constructors, ggml-cpu/ops.cpp kernels). Matrices are ggml's
[ne0 = columns, ne1 = rows] with ne2, ne3 batch dims; TRI's triangle is chosen by comparing
the column i0 with the row i1.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParamError
from ..tensor import is_contiguous
from ..tensor import nbytes
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32, _F16 = GGMLType.F32, GGMLType.F16

TRI_TYPE_UPPER_DIAG = 0
TRI_TYPE_UPPER = 1
TRI_TYPE_LOWER_DIAG = 2
TRI_TYPE_LOWER = 3

# column i0 kept in row i1 when pred(i0, i1): ggml_compute_forward_tri_f32's bipred
_TRI_KEEP = {TRI_TYPE_LOWER: np.less, TRI_TYPE_LOWER_DIAG: np.less_equal,
             TRI_TYPE_UPPER: np.greater, TRI_TYPE_UPPER_DIAG: np.greater_equal}


def _elems(node) -> int:
    return nbytes(node) + sum(nbytes(s) for s in node.src if s is not None)


# --- FILL -----------------------------------------------------------------------------------

def _infer_fill(srcs, p):
    a = need_src("FILL", srcs, 0, "a")
    need_type("FILL", a, (_F32, _F16), "a")
    need(is_contiguous(a), "FILL", "a must be contiguous", a)
    return Out(a.type, a.ne)


def _fill_cases():
    out = []
    for c, ne in ((0.0, (10, 10, 4, 3)), (2.0, (303, 207, 11, 3)), (-152.0, (800, 600, 4, 4)),
                  (3.5, (2048, 512, 2, 2))):
        out.append(cc.case("FILL", dict(type=cc.ggml_type("f32"), ne=list(ne), c=c),
                           lambda ctx, c=c, ne=ne: fill(ctx, cc.leaf(ctx, "f32", ne, "a"), c),
                           tags=("slow",) if np.prod(ne) > 1 << 20 else ()))
    out.append(cc.case("FILL", dict(type=cc.ggml_type("f16"), ne=[33, 7, 3, 2], c=0.1),
                       lambda ctx: fill(ctx, cc.leaf(ctx, "f16", (33, 7, 3, 2), "a"), 0.1)))
    return out


FILL = register(OpDef(
    "FILL", _infer_fill, params="c:f32",
    reference=lambda node, ins, p: np.full(ins[0].shape, np.float32(p.c), dtype=np.float64),
    cases=_fill_cases, exact=True, nbytes=lambda node: nbytes(node),
    ggml=lambda g, c, s, p, node: g.ggml_fill(c, s[0], p.c),
    doc="A tensor like a (F32 or F16, contiguous) with every element c."))


def fill(ctx, a, c):
    """ggml_fill(a, c)."""
    return FILL.build(ctx, [a], dict(c=float(c)))


# --- TRI ------------------------------------------------------------------------------------

def _infer_tri(srcs, p):
    a = need_src("TRI", srcs, 0, "a")
    if p.tri_type not in _TRI_KEEP:
        raise ParamError(f"TRI: unknown tri_type {p.tri_type} (0..3: upper_diag, upper, "
                         f"lower_diag, lower) [{a.name!r}]")
    need_type("TRI", a, (_F32,), "a")
    need(is_contiguous(a), "TRI", "a must be contiguous", a)
    need(a.ne[0] == a.ne[1], "TRI", f"a must be square in dims 0, 1 (ne0={a.ne[0]}, "
         f"ne1={a.ne[1]})", a)
    return Out(_F32, a.ne)


def _ref_tri(node, ins, p):
    n = node.ne[0]
    keep = _TRI_KEEP[p.tri_type](np.arange(n)[None, :], np.arange(n)[:, None])   # (i1, i0)
    return np.where(keep, ins[0], 0.0)


def _tri_cases():
    out = []
    for tt, ne, slow in ((TRI_TYPE_LOWER, (10, 10, 4, 3), False),
                         (TRI_TYPE_LOWER_DIAG, (10, 10, 4, 3), False),
                         (TRI_TYPE_UPPER, (10, 10, 4, 3), False),
                         (TRI_TYPE_UPPER_DIAG, (10, 10, 4, 3), False),
                         (TRI_TYPE_LOWER, (256, 256, 4, 4), True),        # ggml's perf cases
                         (TRI_TYPE_UPPER_DIAG, (1024, 1024, 8, 4), True)):
        out.append(cc.case("TRI", dict(type=cc.ggml_type("f32"), ne=list(ne), tri_type=tt),
                           lambda ctx, tt=tt, ne=ne: tri(ctx, cc.leaf(ctx, "f32", ne, "a"), tt),
                           tags=("slow",) if slow else ()))
    return out


TRI = register(OpDef(
    "TRI", _infer_tri, params="tri_type:i32", reference=_ref_tri, cases=_tri_cases, exact=True,
    nbytes=_elems, ggml=lambda g, c, s, p, node: g.ggml_tri(c, s[0], p.tri_type),
    doc="Square a with one triangle kept (tri_type: 0 upper+diag, 1 upper, 2 lower+diag, "
        "3 lower), the rest zero."))


def tri(ctx, a, type):
    """ggml_tri(a, type): type is TRI_TYPE_UPPER_DIAG, _UPPER, _LOWER_DIAG or _LOWER."""
    return TRI.build(ctx, [a], dict(tri_type=int(type)))


# --- DIAG -----------------------------------------------------------------------------------

def _infer_diag(srcs, p):
    a = need_src("DIAG", srcs, 0, "a")
    need(a.ne[1] == 1, "DIAG", f"a must be a row per matrix (ne1 == 1, got {a.ne[1]})", a)
    need_type("DIAG", a, (_F32,), "a")
    need(a.nb[0] == 4, "DIAG", "a's elements must be contiguous (nb0 == 4)", a)
    return Out(_F32, [a.ne[0], a.ne[0], a.ne[2], a.ne[3]])


def _ref_diag(node, ins, p):
    x = ins[0][:, :, 0, :]                                   # (ne3, ne2, n)
    return x[:, :, :, None] * np.eye(node.ne[0])[None, None]   # row i1 holds x[i1] at i0 = i1


def _diag_cases():
    return [cc.case("DIAG", dict(type=cc.ggml_type("f32"), ne=list(ne)),
                    lambda ctx, ne=ne: diag(ctx, cc.leaf(ctx, "f32", ne, "a")))
            for ne in ((10, 1, 4, 3), (79, 1, 19, 13), (256, 1, 8, 16))]


DIAG = register(OpDef(
    "DIAG", _infer_diag, reference=_ref_diag, cases=_diag_cases, exact=True, nbytes=_elems,
    ggml=lambda g, c, s, p, node: g.ggml_diag(c, s[0]),
    doc="a [n, 1, ne2, ne3] -> [n, n, ne2, ne3], a on the diagonal, zero elsewhere."))


def diag(ctx, a):
    """ggml_diag(a)."""
    return DIAG.build(ctx, [a])


# --- SOLVE_TRI --------------------------------------------------------------------------------

def _infer_solve_tri(srcs, p):
    a = need_src("SOLVE_TRI", srcs, 0, "a")
    b = need_src("SOLVE_TRI", srcs, 1, "b")
    need_type("SOLVE_TRI", a, (_F32,), "a")
    need_type("SOLVE_TRI", b, (_F32,), "b")
    need(a.ne[0] == a.ne[1], "SOLVE_TRI", "a must be square (ne0 == ne1)", a)
    need(a.ne[1] == b.ne[1], "SOLVE_TRI", "b must have as many rows as a (ne1)", a, b)
    need(a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3], "SOLVE_TRI",
         "a and b must have the same batch dims (ne2, ne3)", a, b)
    need(is_contiguous(a) and is_contiguous(b), "SOLVE_TRI", "a and b must be contiguous", a, b)
    return Out(_F32, b.ne)


def _ref_solve_tri(node, ins, p):
    """Forward substitution per batch, reading only A's lower triangle as ggml does; a zero
    on the diagonal gives inf/nan as in ggml (its assert is debug-only)."""
    a, b = ins[0], ins[1]                       # (…, n rows, n cols), (…, n rows, k cols)
    x = np.zeros_like(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(b.shape[2]):
            s = np.einsum("...t,...tk->...k", a[:, :, i, :i], x[:, :, :i, :])
            x[:, :, i, :] = (b[:, :, i, :] - s) / a[:, :, i, i][..., None]
    return x


def _tril_init(lo, hi):
    """test-backend-ops' init_tensor_tril: uniform [lo, hi] on and below the diagonal."""
    def init(t, rng):
        if t.name != "a":
            return None
        x = rng.uniform(lo, hi, size=t.ne[::-1])
        return np.tril(x)
    return init


def _solve_tri_cases():
    grid = [((10, 10, 4, 3), (3, 10, 4, 3)), ((11, 11, 1, 1), (5, 11, 1, 1)),
            ((17, 17, 2, 4), (9, 17, 2, 4)), ((30, 30, 7, 1), (8, 30, 7, 1)),
            ((42, 42, 5, 2), (10, 42, 5, 2)), ((64, 64, 2, 2), (10, 64, 2, 2)),
            ((64, 64, 2, 2), (64, 64, 2, 2)), ((79, 79, 5, 3), (417, 79, 5, 3)),
            ((128, 128, 4, 2), (32, 128, 4, 2)), ((80, 80, 2, 8), (80, 80, 2, 8)),
            ((80, 80, 2, 8), (79, 80, 2, 8)), ((80, 80, 2, 8), (81, 80, 2, 8)),
            ((80, 80, 8, 8), (80, 80, 8, 8)), ((80, 80, 8, 8), (79, 80, 8, 8)),
            ((80, 80, 8, 8), (81, 80, 8, 8)), ((84, 84, 4, 4), (32, 84, 4, 4)),
            ((95, 95, 8, 8), (40, 95, 8, 8)), ((100, 100, 4, 4), (41, 100, 4, 4)),
            ((128, 128, 4, 4), (31, 128, 4, 4)), ((128, 128, 4, 4), (32, 128, 4, 4)),
            ((128, 128, 3, 4), (32, 128, 3, 4)), ((128, 128, 4, 1), (32, 128, 4, 1)),
            ((64, 64, 4, 4), (200, 64, 4, 4)), ((64, 64, 4, 4), (384, 64, 4, 4))]
    out = []
    for ne_l, ne_r in grid:
        def build(ctx, ne_l=ne_l, ne_r=ne_r):
            return solve_tri(ctx, cc.leaf(ctx, "f32", ne_l, "a"), cc.leaf(ctx, "f32", ne_r, "b"),
                             True, True, False)
        work = ne_l[0] * ne_l[0] * ne_r[0] * ne_l[2] * ne_l[3]
        out.append(cc.case("SOLVE_TRI", dict(type=cc.ggml_type("f32"), ne_lhs=list(ne_l),
                                             ne_rhs=list(ne_r)), build,
                           init=_tril_init(0.1, 1.0), tags=("slow",) if work > 8 << 20 else ()))
    return out


SOLVE_TRI = register(OpDef(
    "SOLVE_TRI", _infer_solve_tri, reference=_ref_solve_tri, cases=_solve_tri_cases,
    flops=lambda node: node.src[0].ne[0] * (node.src[0].ne[0] + 1) * node.ne[0] * node.ne[2] *
    node.ne[3], nbytes=_elems,
    ggml=lambda g, c, s, p, node: g.ggml_solve_tri(c, s[0], s[1], True, True, False),
    doc="X with A X = B: A [n, n] lower triangular (non-zero diagonal), B [k, n] -> X [k, n]."))


def solve_tri(ctx, a, b, left=True, lower=True, uni=False):
    """ggml_solve_tri(a, b, left, lower, uni): only left, lower, non-unit (ggml's CPU has only it)."""
    if not (left and lower and not uni):
        raise ParamError(f"SOLVE_TRI: only left=True, lower=True, uni=False are implemented "
                         f"(got left={left}, lower={lower}, uni={uni}) [{a.name!r}]")
    return SOLVE_TRI.build(ctx, [a, b])

