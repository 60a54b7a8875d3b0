"""Row gathers and scatters: GET_ROWS, GET_ROWS_BACK, SET_ROWS (ggml.c / ggml-cpu ops.cpp).

- get_rows(a, b): rows of a picked by the I32 ids in b, dequantized: the result is F32 for
  every float or quantized a (I32 for an I32 a), ne = [a.ne0, b.ne0, b.ne1, b.ne2]; a's
  dims 2 and 3 are matched by b's dims 1 and 2 (no broadcast).
- set_rows(a, b, c): writes the rows of b (F32 or F16) into a at the row ids c (I32 or I64),
  converting/quantizing to a's type. c broadcasts over b's dims 2 and 3. The result is a view
  of a: the op WRITES its destination (src[2], ggml's legacy source order b, c, a), which is
  how a KV cache is updated in place.
- get_rows_back(a, b, c): the gradient of get_rows: rows of a summed into F32 [c.ne0, c.ne1].
"""
from __future__ import annotations

import numpy as np

from .. import data
from ..errors import DataError
from ..errors import describe
from ..tensor import is_contiguous_rows
from ..tensor import is_matrix
from ..tensor import is_vector
from ..tensor import nbytes
from ..tensor import nelements
from ..types import QUANT_TYPES
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import grad_rule
from .registry import inplace_of
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import view_2d as _view_2d
from .view import view_3d as _view_3d
from .view import view_4d as _view_4d

_F32, _F16, _BF16, _I32, _I64 = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32,
                                 GGMLType.I64)
_FLOATS = (_F32, _F16, _BF16)
# types whose rows get_rows can read (ggml-cpu: floats, every quant type, I32)
GET_ROWS_TYPES = _FLOATS + QUANT_TYPES + (_I32,)
# types set_rows can write (those with a CPU from_float)
SET_ROWS_DST_TYPES = _FLOATS + QUANT_TYPES

_ALL_TYPES = tuple(cc.have(cc.GGML_ALL_TYPES))       # ggml's all_types that pyggml has


def _check_ids(op, ids: np.ndarray, n: int, node, idx_src) -> None:
    """ggml: GGML_ASSERT(i >= 0 && i < n) at compute time; pyggml raises instead."""
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)].reshape(-1)[0]
        raise DataError(f"{op}: row id {int(bad)} out of range [0, {n}) in "
                        f"{describe(idx_src)} (result {describe(node)})")


# --- GET_ROWS ---------------------------------------------------------------------------------

def _infer_get_rows(srcs, p):
    a = need_src("GET_ROWS", srcs, 0, "a")
    b = need_src("GET_ROWS", srcs, 1, "b")
    need_type("GET_ROWS", b, (_I32,), "row ids b")
    need_type("GET_ROWS", a, GET_ROWS_TYPES, "a")
    if a.ne[2] != b.ne[1]:
        fail("GET_ROWS", f"a.ne[2]={a.ne[2]} must equal b.ne[1]={b.ne[1]}", a, b)
    if a.ne[3] != b.ne[2]:
        fail("GET_ROWS", f"a.ne[3]={a.ne[3]} must equal b.ne[2]={b.ne[2]}", a, b)
    if b.ne[3] != 1:
        fail("GET_ROWS", f"b.ne[3]={b.ne[3]} must be 1", a, b)
    if TRAITS[a.type].is_quantized:
        need(is_contiguous_rows(a), "GET_ROWS", "rows of a quantized a must be packed", a)
    out_type = _I32 if a.type == _I32 else _F32
    return Out(out_type, [a.ne[0], b.ne[0], b.ne[1], b.ne[2]])


def _ref_get_rows(node, ins, p):
    a, b = ins[0], ins[1]
    ids = b[0]                                    # (b.ne2, b.ne1, b.ne0)
    _check_ids("GET_ROWS", ids, node.src[0].ne[1], node, node.src[1])
    # out[i12, i11, i10, :] = a[i12, i11, ids[i12, i11, i10], :]
    return np.take_along_axis(a, ids[..., None], axis=2)


def _get_rows_cases():
    out = []

    def build(type, n, m, r, be1, be2, v):
        def f(ctx):
            # ggml's grad mode: in is a parameter when it is a matrix and rows a vector
            a = cc.leaf(ctx, type, [n, m, be1, be2], "in", param=be1 == 1 and be2 == 1)
            rows = cc.leaf(ctx, "i32", [r, be1, be2], "rows")
            if v:
                rows = _view_3d(ctx, rows, r // 2, be1, be2, rows.nb[1], rows.nb[2], 0)
                rows.name = "view_of_rows"
            return get_rows(ctx, a, rows)
        return f

    def add(type, n, m, r, be1, be2, v, slow=False):
        out.append(cc.case("GET_ROWS", dict(type=cc.ggml_type(type), n=n, m=m, r=r, be1=be1, be2=be2,
                                            v=v),
                           build(type, n, m, r, be1, be2, v), init=cc.ids_below(m), exact=True,
                           tags=("slow",) if slow else ()))

    for type in ("f32", "q4_0"):
        add(type, 300 * 256, 5, 4, 1, 2, False, slow=True)
        add(type, 256, 80000, 70000, 2, 1, False, slow=True)
        add(type, 256, 5, 4, 700, 100, False, slow=True)
    add("f32", 1, 8, 2, 1, 1, False)
    for type in _ALL_TYPES:
        for b in (1, 7):
            for v in (False, True):
                add(type, 256, 5, 4, b, 1, v)
    for b in (1, 7):
        for v in (False, True):
            add("i32", 256, 5, 4, b, 1, v)
    # pyggml extras: odd widths, batches in dims 2 and 3
    add("f32", 7, 9, 5, 3, 2, True)
    add("f16", 33, 4, 6, 2, 3, False)
    return out


def _bytes_get_rows(node):
    a = node.src[0]
    return nelements(node.src[1]) * TRAITS[a.type].row_size(a.ne[0]) + nbytes(node) + \
        nbytes(node.src[1])


GET_ROWS = register(OpDef(
    "GET_ROWS", _infer_get_rows, reference=_ref_get_rows, cases=_get_rows_cases,
    nbytes=_bytes_get_rows, exact=True,
    ggml=lambda g, c, s, p, node: g.ggml_get_rows(c, s[0], s[1]),
    doc="Rows of a at the I32 ids b (dequantized to F32; I32 stays I32)."))


def get_rows(ctx, a, b):
    """ggml_get_rows: result [a.ne0, b.ne0, b.ne1, b.ne2], F32 (I32 for an I32 a)."""
    return GET_ROWS.build(ctx, [a, b])


# --- GET_ROWS_BACK -------------------------------------------------------------------------------

def _infer_get_rows_back(srcs, p):
    a = need_src("GET_ROWS_BACK", srcs, 0, "a (gradient rows)")
    b = need_src("GET_ROWS_BACK", srcs, 1, "b (row ids)")
    c = need_src("GET_ROWS_BACK", srcs, 2, "c (forward source)")
    need_type("GET_ROWS_BACK", b, (_I32,), "row ids b")
    need_type("GET_ROWS_BACK", a, _FLOATS, "a")
    need(is_matrix(a) and is_vector(b), "GET_ROWS_BACK", "a must be a matrix and b a vector",
         a, b)
    need(is_matrix(c) and a.ne[0] == c.ne[0], "GET_ROWS_BACK",
         "c must be a matrix with c.ne[0] == a.ne[0]", a, c)
    # ggml reads row i of a for every id i: a must hold at least nelements(b) rows
    need(a.ne[1] >= b.ne[0], "GET_ROWS_BACK",
         f"a has {a.ne[1]} rows, fewer than the {b.ne[0]} ids in b", a, b)
    return Out(_F32, [c.ne[0], c.ne[1], 1, 1])


def _ref_get_rows_back(node, ins, p):
    a, ids = ins[0][0, 0], ins[1].reshape(-1)
    n = node.src[2].ne[1]
    _check_ids("GET_ROWS_BACK", ids, n, node, node.src[1])
    out = np.zeros((n, a.shape[1]))
    np.add.at(out, ids, a[:ids.size])
    return out


def _get_rows_back_cases():
    out = []

    def build(type, n, m, r, b, v):
        def f(ctx):
            fwd = cc.leaf(ctx, type, [n, m, b], "in_forward")
            rows = cc.leaf(ctx, "i32", [r, b], "rows")
            if v:
                rows = _view_2d(ctx, rows, r // 2, b, rows.nb[1], 0)
                rows.name = "view_of_rows"
            grad = cc.leaf(ctx, type, [n, r, b], "grad")
            return get_rows_back(ctx, grad, rows, fwd)
        return f

    def add(type, n, m, r, b, v, slow=False):
        out.append(cc.case("GET_ROWS_BACK", dict(type=cc.ggml_type(type), n=n, m=m, r=r, b=b, v=v),
                           build(type, n, m, r, b, v), init=cc.ids_below(m),
                           tags=("slow",) if slow else ()))

    add("f32", 1, 8, 2, 1, False)
    add("f32", 1, 70000, 4, 1, False, slow=True)
    # ggml's CPU kernel reads f32 and f16 gradients (its grid also lists the other types)
    for type in ("f32", "f16"):
        for v in (False, True):
            add(type, 256, 5, 4, 1, v)
    add("f32", 13, 3, 9, 1, False)       # repeated ids accumulate
    return out


GET_ROWS_BACK = register(OpDef(
    "GET_ROWS_BACK", _infer_get_rows_back, reference=_ref_get_rows_back,
    cases=_get_rows_back_cases,
    nbytes=lambda node: 2 * nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_get_rows_back(c, s[0], s[1], s[2]),
    doc="Backward of get_rows: rows of a added into zeros shaped like c at the ids b."))


def get_rows_back(ctx, a, b, c):
    """ggml_get_rows_back(a grad rows, b I32 ids, c forward source): F32 [c.ne0, c.ne1]."""
    return GET_ROWS_BACK.build(ctx, [a, b, c])


# --- SET_ROWS ---------------------------------------------------------------------------------

def _infer_set_rows(srcs, p):
    b = need_src("SET_ROWS", srcs, 0, "b (source rows)")
    c = need_src("SET_ROWS", srcs, 1, "c (row ids)")
    a = need_src("SET_ROWS", srcs, 2, "a (destination)")
    if a.ne[0] != b.ne[0]:
        fail("SET_ROWS", f"a.ne[0]={a.ne[0]} must equal b.ne[0]={b.ne[0]}", a, b)
    need(a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3], "SET_ROWS",
         "a and b must agree in dims 2 and 3", a, b)
    if b.ne[1] != c.ne[0]:
        fail("SET_ROWS", f"b.ne[1]={b.ne[1]} must equal c.ne[0]={c.ne[0]}", b, c)
    need(c.ne[1] > 0 and c.ne[2] > 0 and b.ne[2] % c.ne[1] == 0 and b.ne[3] % c.ne[2] == 0,
         "SET_ROWS", "c must broadcast over b: b.ne[2] % c.ne[1] == 0 and b.ne[3] % c.ne[2] == 0",
         b, c)
    if c.ne[3] != 1:
        fail("SET_ROWS", f"c.ne[3]={c.ne[3]} must be 1", c)
    need_type("SET_ROWS", b, (_F32, _F16), "source rows b")
    need_type("SET_ROWS", c, (_I64, _I32), "row ids c")
    need_type("SET_ROWS", a, SET_ROWS_DST_TYPES, "destination a")
    need(is_contiguous_rows(a), "SET_ROWS", "rows of the destination a must be packed", a)
    need(is_contiguous_rows(b), "SET_ROWS", "rows of the source b must be packed", b)
    return inplace_of(a)


def _ref_set_rows(node, ins, p):
    """Writes only the addressed rows (re-encoding untouched quantized rows could change them)."""
    c_src, a = node.src[1], node.src[2]
    b, c = ins[0], ins[1][0]                       # (b3, b2, r, ne0), (c2, c1, r)
    if b.size == 0:
        return None
    _check_ids("SET_ROWS", c, a.ne[1], node, c_src)
    b3, b2, r = b.shape[0], b.shape[1], b.shape[2]
    # row id for (i03, i02, i): c[i03 % c.ne2, i02 % c.ne1, i]
    ids = c[np.arange(b3)[:, None] % c.shape[0], np.arange(b2)[None, :] % c.shape[1]]
    enc = np.ascontiguousarray(data.encode(a.type, b.astype(np.float32), cpu=True))
    enc = enc.view(np.uint8).reshape(b3, b2, r, -1)
    dst = data.row_bytes(node)                     # a's rows, written in place
    for i3 in range(b3):
        for i2 in range(b2):
            rows = ids[i3, i2]
            if np.unique(rows).size == rows.size:
                dst[i3, i2, rows] = enc[i3, i2]
            else:                                  # repeated ids: the last write wins, as in ggml
                for i in range(r):
                    dst[i3, i2, rows[i]] = enc[i3, i2, i]
    return None


def _set_rows_nmse(type_src, type_dst, ne, nr23, r):
    """test_set_rows::max_nmse_err: one quantization step off per value, as a relative error."""
    td = as_type(type_dst)
    if td not in QUANT_TYPES:
        return 1e-7
    err = 1.0 / 8.0
    if td in (GGMLType.Q5_0, GGMLType.Q5_1):
        err /= 2.0
    if td == GGMLType.Q8_0:
        err /= 8.0
    err *= err
    if as_type(type_src) == _F16:
        err *= 16.0
    err /= 0.25 * float(ne[0] * r * ne[2] * nr23[0] * ne[3] * nr23[1])
    return err


def _init_set_rows_ids(num_rows):
    """init_set_rows_row_ids: each id row is a shuffled subset of [0, num_rows)."""
    def fill(t, rng):
        if t.type not in (_I32, _I64):
            return None
        vals = np.zeros(t.ne[::-1], dtype=np.int64)
        for i3 in range(t.ne[3]):
            for i2 in range(t.ne[2]):
                for i1 in range(t.ne[1]):
                    vals[i3, i2, i1] = rng.permutation(num_rows)[:t.ne[0]]
        return vals
    return fill


def _set_rows_cases():
    out = []

    def build(type_src, type_dst, type_idx, ne, nr23, r, v):
        def f(ctx):
            dst = cc.leaf(ctx, type_dst, [ne[0], ne[1], ne[2] * nr23[0], ne[3] * nr23[1]], "dst")
            src = cc.leaf(ctx, type_src, [ne[0], r, ne[2] * nr23[0], ne[3] * nr23[1]], "src")
            ids = cc.leaf(ctx, type_idx, [r, ne[2], ne[3]], "row_idxs")
            if v:
                src = _view_4d(ctx, src, ne[0], r // 2, ne[2] * nr23[0], ne[3] * nr23[1],
                               src.nb[1], src.nb[2], src.nb[3], 0)
                ids = _view_3d(ctx, ids, r // 2, ne[2], ne[3], ids.nb[1], ids.nb[2], 0)
                ids.name = "view_of_rows"
            return set_rows(ctx, dst, src, ids)
        return f

    def add(type_src, type_dst, type_idx, ne, nr23, r, v=False):
        out.append(cc.case(
            "SET_ROWS", dict(type_src=cc.ggml_type(type_src), type_dst=cc.ggml_type(type_dst),
                             type_idx=cc.ggml_type(type_idx), ne=list(ne), nr23=list(nr23), r=r, v=v),
            build(type_src, type_dst, type_idx, ne, nr23, r, v), init=_init_set_rows_ids(ne[1]),
            max_nmse=_set_rows_nmse(type_src, type_dst, ne, nr23, r),
            exact=(as_type(type_dst) not in QUANT_TYPES) or None))

    add("f32", "f32", "i64", (1, 8, 1, 3), (1, 1), 2)
    add("f32", "f32", "i32", (1, 8, 1, 3), (1, 1), 2)
    add("f32", "q8_0", "i32", (256, 5, 1, 3), (1, 1), 1)
    for src_type in ("f16", "f32"):
        for type in _ALL_TYPES:
            bs = TRAITS[as_type(type)].blck_size
            for b in (1, 7):
                for v in (False, True):
                    add(src_type, type, "i64", (256, 5, b, 3), (1, 1), 1, v)
                    add(src_type, type, "i64", (256, 11, 1, b), (2, 3), 7, v)
                    add(src_type, type, "i64", (3 * bs, 3, b, 1), (2, 3), 2, v)
                    if bs == 1:
                        add(src_type, type, "i64", (31, 3, b, 1), (2, 3), 2, v)
                        add(src_type, type, "i64", (33, 5, 1, b), (2, 3), 1, v)
    add("f16", "f16", "i64", (1, 8, 1, 3), (1, 1), 2, False)
    add("f16", "f16", "i32", (1, 8, 1, 3), (1, 1), 2, False)
    add("f16", "f16", "i64", (1, 8, 1, 3), (1, 1), 2, True)
    add("f16", "f16", "i32", (1, 8, 1, 3), (1, 1), 2, True)
    return out


SET_ROWS = register(OpDef(
    "SET_ROWS", _infer_set_rows, reference=_ref_set_rows, cases=_set_rows_cases,
    writes=(2,),
    nbytes=lambda node: 2 * nbytes(node.src[0]) + nbytes(node.src[1]),
    name_fmt=lambda s: f"{s[2].name} (view)",
    ggml=lambda g, c, s, p, node: g.ggml_set_rows(c, s[2], s[0], s[1]),
    doc="Writes rows of b into a at the ids c (converting/quantizing); returns a view of a."))


def set_rows(ctx, a, b, c):
    """ggml_set_rows(a destination, b F32/F16 rows, c I32/I64 ids): a view of a, written in place.

    The node's sources are ggml's: src[0] = b, src[1] = c, src[2] = a (the destination)."""
    return SET_ROWS.build(ctx, [b, c, a])


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(GET_ROWS, ignore=(1,))
def _grad_get_rows(g, node, grad):
    """Each picked row's gradient is summed into the row it came from (row ids: none)."""
    if g.needs(0):
        g.add(0, get_rows_back(g.ctx, grad, node.src[1], node.src[0]))
