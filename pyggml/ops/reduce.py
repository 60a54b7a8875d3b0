"""Reductions: SUM, SUM_ROWS, MEAN, ARGMAX, COUNT_EQUAL, CUMSUM (ggml.c constructors, ggml-cpu ops.cpp).

Shapes and types follow ggml exactly:
  sum(a)            -> a.type [1]                    (f32, f16, bf16)
  sum_rows(a)       -> a.type [1, ne1, ne2, ne3]     (f32)
  mean(a)           -> f32    [1, ne1, ne2, ne3]     (f32)
  argmax(a)         -> i32    [ne1]                  (f32 matrix; the LAST index of the maximum,
                                                      as ggml's `max = MAX(max, x); if (max == x) idx = i`)
  count_equal(a, b) -> i64    [1]                    (i32, same shapes)
  cumsum(a)         -> a.type, a's shape             (f32, running sum along ne0)
References compute in float64 (a better oracle than ggml's float/double mix). Where ggml's
CPU kernel reads memory wrongly (sum/mean of a tensor whose rows are not packed: ggml only
`assert`s nb0 == type size; count_equal of tensors with ne2 > 1: its row index arithmetic is
off), pyggml computes the mathematically right result and the conformance test says so.
"""
from __future__ import annotations

import builtins

import numpy as np

from ..tensor import are_same_shape
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import nrows
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import grad_through
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import permute as _permute
from .view import transpose as _transpose
from .view import view_4d as _view_4d

F32, F16, BF16, I32, I64 = GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32, GGMLType.I64

# Case tag: real ggml's CPU gives a wrong result (or aborts) on this case, pyggml the right one;
# conformance runs against real ggml must skip it (the reference is the spec there).
GGML_WRONG = "ggml_wrong"


def _read_write_bytes(node):
    return builtins.sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


def _flops_per_input(node):
    return nelements(node.src[0])


# --- SUM ------------------------------------------------------------------------------------

def _infer_sum(srcs, p):
    a = need_src("SUM", srcs, 0, "a")
    need_type("SUM", a, (F32, F16, BF16), "a")
    return Out(a.type, [1, 1, 1, 1])


def _ref_sum(node, ins, p):
    return np.sum(ins[0])


def _sum_init(leaf, rng):
    # test-backend-ops: "don't center the distribution around zero" (catastrophic cancellation)
    return rng.uniform(-0.9, 1.1, size=leaf.ne[::-1])


def _sum_cases():
    out = []
    grid = [("f32", [10, 5, 4, 3], None), ("f32", [11, 5, 6, 3], [0, 2, 1, 3]),
            ("f32", [11, 5, 6, 3], [0, 3, 2, 1]), ("f32", [11, 5, 6, 3], [0, 1, 3, 2]),
            ("f32", [33, 1, 1, 1], None), ("f32", [33, 1024, 1, 1], None),
            ("f32", [33, 256, 1, 1], None), ("f32", [33, 256, 1, 1], [1, 0, 2, 3]),
            ("f16", [10, 5, 4, 3], None), ("bf16", [10, 5, 4, 3], None),
            ("f16", [11, 5, 6, 3], [0, 2, 1, 3])]
    for type, ne, perm in grid:
        def build(ctx, type=type, ne=ne, perm=perm):
            a = cc.leaf(ctx, type, ne, "a", param=True)
            if perm:
                a = _permute(ctx, a, *perm)
            return sum(ctx, a)
        v = dict(type=cc.ggml_type(type), ne=ne)
        if perm:
            v["permute"] = perm
        # ggml's CPU sum reads rows as packed (it only asserts nb0 == type size, compiled out):
        # a permutation that moves dim 0 gives garbage in ggml, the right sum in pyggml
        note = "ggml-wrong: rows not packed" if perm and perm[0] != 0 else ""
        # f16/bf16: ggml accumulates in float and rounds the scalar to f16/bf16
        out.append(cc.case("SUM", v, build, init=_sum_init, note=note,
                           tags=(GGML_WRONG,) if note else (),
                           max_nmse=(1e-6 if type != "f32" else None),
                           grad=dict(eps=0.1 * float(np.sqrt(np.prod(ne))))))
    return out


SUM = register(OpDef(
    "SUM", _infer_sum, reference=_ref_sum, cases=_sum_cases,
    flops=_flops_per_input, nbytes=_read_write_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_sum(c, s[0]),
    doc="Sum of all elements of a, as a 1-element tensor of a's type."))


def sum(ctx, a):  # noqa: A001  (ggml's name)
    return SUM.build(ctx, [a])


# --- SUM_ROWS -------------------------------------------------------------------------------

def _infer_sum_rows(srcs, p):
    a = need_src("SUM_ROWS", srcs, 0, "a")
    need_type("SUM_ROWS", a, (F32,), "a")
    return Out(a.type, [1, a.ne[1], a.ne[2], a.ne[3]])


def _ref_sum_rows(node, ins, p):
    return np.sum(ins[0], axis=-1, keepdims=True)


def _sum_rows_cases():
    out = []
    grid = [([10, 5, 4, 3], False, False), ([11, 5, 6, 3], True, False),
            ([11, 5, 6, 3], False, True), ([11, 5, 6, 3], True, True),
            ([16, 5, 6, 3], True, False), ([16, 5, 6, 3], False, True),
            ([16, 5, 6, 3], True, True), ([33, 1, 1, 1], False, False),
            ([33, 1024, 1, 1], False, False), ([33, 256, 1, 1], False, False)]
    for ne, permute, slice_ in grid:
        def build(ctx, ne=ne, permute=permute, slice_=slice_):
            a = cc.leaf(ctx, "f32", ne, "a", param=True)
            if slice_:   # every other ne2 slice, dropping the first ne3 block
                a = _view_4d(ctx, a, ne[0], ne[1], ne[2] // 2, ne[3] - 1,
                             a.nb[1], a.nb[2] * 2, a.nb[3], a.nb[3])
            if permute:
                a = _permute(ctx, a, 0, 2, 3, 1)
            return sum_rows(ctx, a)
        out.append(cc.case("SUM_ROWS", dict(type=cc.ggml_type("f32"), ne=ne, permute=permute,
                                            slice=slice_), build))
    return out


SUM_ROWS = register(OpDef(
    "SUM_ROWS", _infer_sum_rows, reference=_ref_sum_rows, cases=_sum_rows_cases,
    flops=_flops_per_input, nbytes=_read_write_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_sum_rows(c, s[0]),
    doc="Sum of each row (along ne0): result ne = [1, ne1, ne2, ne3]."))


def sum_rows(ctx, a):
    return SUM_ROWS.build(ctx, [a])


# --- MEAN -----------------------------------------------------------------------------------

def _infer_mean(srcs, p):
    a = need_src("MEAN", srcs, 0, "a")
    need_type("MEAN", a, (F32,), "a")
    return Out(F32, [1, a.ne[1], a.ne[2], a.ne[3]])


def _ref_mean(node, ins, p):
    """ggml sums in double, stores the sum as float (past FLT_MAX: inf) and divides in float."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        s = np.sum(ins[0], axis=-1, keepdims=True).astype(np.float32)
        return s / np.float32(ins[0].shape[-1])


def _mean_cases():
    out = []
    for ne in ([10, 5, 4, 3], [33, 1, 1, 1], [33, 256, 1, 1], [32769, 1, 1, 1],
               [32, 1, 1, 1], [32, 256, 1, 1], [32768, 1, 1, 1]):
        def build(ctx, ne=ne):
            return mean(ctx, cc.leaf(ctx, "f32", ne, "a", param=True))
        out.append(cc.case("MEAN", dict(type=cc.ggml_type("f32"), ne=ne), build, init=_sum_init,
                           grad=dict(eps=0.1 * int(np.prod(ne)))))
    return out


MEAN = register(OpDef(
    "MEAN", _infer_mean, reference=_ref_mean, cases=_mean_cases,
    flops=_flops_per_input, nbytes=_read_write_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_mean(c, s[0]),
    doc="Mean of each row (along ne0): f32 [1, ne1, ne2, ne3]."))


def mean(ctx, a):
    return MEAN.build(ctx, [a])


# --- ARGMAX ---------------------------------------------------------------------------------

def _infer_argmax(srcs, p):
    a = need_src("ARGMAX", srcs, 0, "a")
    need(a.ne[2] == 1 and a.ne[3] == 1, "ARGMAX", "a must be a matrix (ne2 == ne3 == 1)", a)
    need(a.ne[0] <= 2**31 - 1, "ARGMAX", "rows longer than INT32_MAX", a)
    need_type("ARGMAX", a, (F32,), "a")
    return Out(I32, [a.ne[1], 1, 1, 1])


def _argmax_row(x: np.ndarray) -> int:
    """ggml_vec_argmax_f32 literally: max = MAX(max, x[i]) (MAX(a,b) = a > b ? a : b);
    idx = i whenever max == x[i]. Ties give the last index; a NaN resets the running max."""
    m, idx = -np.inf, 0
    for i, v in enumerate(x):
        m = m if m > v else v
        if m == v:
            idx = i
    return idx


def _ref_argmax(node, ins, p):
    rows = ins[0][0, 0]                                  # (ne1, ne0)
    out = np.empty(rows.shape[0], dtype=np.int64)
    for r, x in enumerate(rows):
        if x.size == 0 or np.isnan(x).any():          # an empty row gives 0, as in ggml
            out[r] = _argmax_row(x)
        else:                                            # the last index of the maximum
            out[r] = x.shape[0] - 1 - int(np.argmax(x[::-1]))
    return out


def _unique_rows_init(leaf, rng):
    """test-backend-ops' argmax init: each row a shuffled 0..ne0-1 (no ties)."""
    if leaf.type != F32:
        return None
    rows = np.tile(np.arange(leaf.ne[0], dtype=np.float64), (nrows(leaf), 1))
    rng.permuted(rows, axis=1, out=rows)
    return rows.reshape(leaf.ne[::-1])


def _argmax_cases():
    out = []
    for ne in ([10, 100, 1, 1], [32, 1, 1, 1], [32, 513, 1, 1], [100, 10, 1, 1],
               [1024, 10, 1, 1], [1024, 12, 1, 1], [2000, 10, 1, 1], [5438, 3, 1, 1]):
        def build(ctx, ne=ne):
            return argmax(ctx, cc.leaf(ctx, "f32", ne, "a"))
        out.append(cc.case("ARGMAX", dict(type=cc.ggml_type("f32"), ne=ne), build,
                           init=_unique_rows_init, exact=True))

    # pyggml extras: ties resolve to the last index, as ggml's loop does; a transposed view
    def ties(leaf, rng):
        return np.round(rng.uniform(0, 3, size=leaf.ne[::-1]))

    def build_ties(ctx):
        return argmax(ctx, cc.leaf(ctx, "f32", [33, 20, 1, 1], "a"))
    out.append(cc.case("ARGMAX", dict(type=cc.ggml_type("f32"), ne=[33, 20, 1, 1], ties=True),
                       build_ties, init=ties, exact=True))

    def build_t(ctx):
        return argmax(ctx, _transpose(ctx, cc.leaf(ctx, "f32", [7, 40, 1, 1], "a")))
    out.append(cc.case("ARGMAX", dict(type=cc.ggml_type("f32"), ne=[40, 7, 1, 1], transposed=True),
                       build_t, init=_unique_rows_init, exact=True,
                       note="ggml-wrong: rows not packed", tags=(GGML_WRONG,)))
    return out


ARGMAX = register(OpDef(
    "ARGMAX", _infer_argmax, reference=_ref_argmax, cases=_argmax_cases,
    flops=_flops_per_input, nbytes=_read_write_bytes,
    max_nmse=0.0, exact=True,
    ggml=lambda g, c, s, p, node: g.ggml_argmax(c, s[0]),
    doc="Index of the maximum of each row of a matrix: i32 [ne1] (last index on ties)."))


def argmax(ctx, a):
    return ARGMAX.build(ctx, [a])


# --- COUNT_EQUAL ----------------------------------------------------------------------------

def _infer_count_equal(srcs, p):
    a = need_src("COUNT_EQUAL", srcs, 0, "a")
    b = need_src("COUNT_EQUAL", srcs, 1, "b")
    need(are_same_shape(a, b), "COUNT_EQUAL", "a and b must have the same shape", a, b)
    need_type("COUNT_EQUAL", a, (I32,), "a")
    need_type("COUNT_EQUAL", b, (I32,), "b")
    return Out(I64, [1, 1, 1, 1])


def _ref_count_equal(node, ins, p):
    return np.array([np.count_nonzero(ins[0] == ins[1])], dtype=np.int64)


def _count_equal_cases():
    out = []
    for ne in ([4, 500, 1, 1], [4, 5000, 1, 1]):
        def build(ctx, ne=ne):
            a = argmax(ctx, cc.leaf(ctx, "f32", ne, "a"))
            b = argmax(ctx, cc.leaf(ctx, "f32", ne, "b"))
            return count_equal(ctx, a, b)
        out.append(cc.case("COUNT_EQUAL", dict(type=cc.ggml_type("f32"), ne=ne), build,
                           init=_unique_rows_init, exact=True))

    # pyggml extra: 4-D i32 inputs (ggml's CPU kernel mis-indexes rows when ne2 > 1)
    def small_ints(leaf, rng):
        return rng.integers(0, 3, size=leaf.ne[::-1])

    def build4(ctx):
        a = cc.leaf(ctx, "i32", [7, 5, 3, 2], "a")
        b = cc.leaf(ctx, "i32", [7, 5, 3, 2], "b")
        return count_equal(ctx, a, b)
    out.append(cc.case("COUNT_EQUAL", dict(type=cc.ggml_type("i32"), ne=[7, 5, 3, 2]), build4,
                       init=small_ints, exact=True, tags=(GGML_WRONG,),
                       note="ggml-wrong: its CPU kernel indexes rows out of bounds when ne2 > 1"))
    return out


COUNT_EQUAL = register(OpDef(
    "COUNT_EQUAL", _infer_count_equal, reference=_ref_count_equal, cases=_count_equal_cases,
    flops=_flops_per_input, nbytes=_read_write_bytes,
    max_nmse=0.0, exact=True,
    ggml=lambda g, c, s, p, node: g.ggml_count_equal(c, s[0], s[1]),
    doc="Number of positions where a == b (i32 inputs), as an i64 scalar."))


def count_equal(ctx, a, b):
    return COUNT_EQUAL.build(ctx, [a, b])


# --- CUMSUM ---------------------------------------------------------------------------------

def _infer_cumsum(srcs, p):
    a = need_src("CUMSUM", srcs, 0, "a")
    need_type("CUMSUM", a, (F32,), "a")
    return Out(a.type, a.ne)


def _ref_cumsum(node, ins, p):
    return np.cumsum(ins[0], axis=-1)


def _cumsum_cases():
    out = []
    for ne in ([10, 5, 4, 3], [127, 5, 4, 3], [128, 5, 4, 3], [128, 128, 4, 4],
               [255, 5, 4, 3], [256, 5, 4, 3], [511, 5, 4, 3], [512, 5, 4, 3],
               [1023, 5, 4, 3], [1024, 5, 4, 3], [2047, 5, 4, 3], [2048, 5, 4, 3],
               [201 * 1204, 1, 1, 1], [312 * 1205, 1, 1, 1], [20481, 4, 1, 1]):
        def build(ctx, ne=ne):
            return cumsum(ctx, cc.leaf(ctx, "f32", ne, "a"))
        big = ne[0] * ne[1] * ne[2] * ne[3] > 100_000
        out.append(cc.case("CUMSUM", dict(type=cc.ggml_type("f32"), ne=ne), build,
                           tags=("slow",) if big else ()))

    def build_p(ctx):     # pyggml extra: a permuted source (rows not packed)
        return cumsum(ctx, _permute(ctx, cc.leaf(ctx, "f32", [6, 33, 2, 1], "a"), 1, 0, 2, 3))
    out.append(cc.case("CUMSUM", dict(type=cc.ggml_type("f32"), ne=[33, 6, 2, 1], permute=[1, 0, 2, 3]),
                       build_p, tags=(GGML_WRONG,),
                       note="ggml aborts: GGML_ASSERT(nb0 == sizeof(float))"))
    return out


CUMSUM = register(OpDef(
    "CUMSUM", _infer_cumsum, reference=_ref_cumsum, cases=_cumsum_cases,
    flops=_flops_per_input, nbytes=_read_write_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_cumsum(c, s[0]),
    doc="Running sum along ne0 (inclusive), same shape as a."))


def cumsum(ctx, a):
    return CUMSUM.build(ctx, [a])


# --- helpers (other families' ops used by the cases) ------------------------------------------


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(SUM)
def _grad_sum(g, node, grad):
    if g.needs(0):
        g.add1(0, grad)


_grad_sum_rows = grad_rule(SUM_ROWS)(grad_through("repeat", "Each row's gradient repeated over the row."))


@grad_rule(MEAN)
def _grad_mean(g, node, grad):
    """grad / ne0 repeated over each row (ggml hands the row means to add1_or_set, which is
    the same for the first contribution and wrong for a second one)."""
    repeat = g.fn('repeat')
    scale = g.fn('scale')
    if g.needs(0):
        a = node.src[0]
        g.add(0, repeat(g.ctx, scale(g.ctx, grad, 1.0 / a.ne[0]), a))
