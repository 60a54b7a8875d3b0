"""Copies: DUP, CONT, CPY (also ggml_cast). Type conversion and quantization happen here."""
from __future__ import annotations

import numpy as np

from .. import data
from ..tensor import Tensor
from ..tensor import are_same_shape
from ..tensor import nbytes
from ..tensor import nelements
from ..types import QUANT_TYPES
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type
from . import cases_common as cc
from .builders import nd_builders
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import grad_through
from .registry import inplace_of
from .registry import need
from .registry import need_src
from .registry import register
from .view import permute as _permute
from .view import transpose as _transpose

_FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def _values(node, ins, p):
    """Elements of src[0] in ggml's logical order, reshaped to the destination's shape."""
    return ins[0].reshape(node.ne[::-1])


def _same_type_copy(node: Tensor, src: Tensor):
    """Same-type copies are byte copies in ggml (exact, no requantization)."""
    if TRAITS[src.type].blck_size == 1:
        data.strided(node)[...] = data.strided(src).reshape(node.ne[::-1])
    else:
        raw = np.ascontiguousarray(data.row_bytes(src)).reshape(-1)
        data.row_bytes(node)[...] = raw.reshape(data.row_bytes(node).shape)
    return None


def _ref_copy(node, ins, p):
    if node.src[0].type == node.type:
        return _same_type_copy(node, node.src[0])
    return _values(node, ins, p)


def _bytes_rw(node):
    return nbytes(node.src[0]) + nbytes(node)


# --- DUP ----------------------------------------------------------------------------------

def _infer_dup(srcs, p):
    a = need_src("DUP", srcs, 0, "a")
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _dup_cases():
    """test_dup's list (permute printed only when used), then pyggml's bf16 and 4-D extras."""
    out = []
    for type, ne, permute in (("f32", [10, 10, 20, 1], None), ("f16", [10, 10, 20, 1], None),
                              ("i32", [10, 10, 20, 1], None), ("i16", [10, 10, 20, 1], None),
                              ("f32", [10, 10, 5, 1], [0, 2, 1, 3]),
                              ("f16", [10, 10, 5, 1], [0, 2, 1, 3]),
                              ("f32", [10, 10, 5, 1], [1, 0, 2, 3]),
                              ("f16", [10, 10, 5, 1], [1, 0, 2, 3]),
                              ("i16", [10, 8, 3, 1], [0, 2, 1, 3]),
                              ("i16", [10, 8, 3, 1], [1, 2, 0, 3]),
                              ("bf16", [10, 10, 20, 1], None), ("bf16", [10, 10, 5, 1], [0, 2, 1, 3]),
                              ("f32", [5, 7, 3, 2], [1, 0, 2, 3]), ("i32", [5, 7, 3, 2], [1, 0, 2, 3])):
        def build(ctx, type=type, ne=ne, permute=permute):
            a = cc.leaf(ctx, type, ne, "src", param=True)
            if permute:
                a = _permute(ctx, a, *permute)
                a.name = "src_permuted"
            return dup(ctx, a)
        v = dict(type=cc.ggml_type(type), ne=ne)
        if permute:
            v["permute"] = permute
        out.append(cc.case("DUP", v, build, exact=True))
    return out


DUP = register(OpDef(
    "DUP", _infer_dup, reference=_ref_copy, cases=_dup_cases,
    nbytes=_bytes_rw, exact=True, name_fmt=lambda s: f"{s[0].name} (copy)",
    ggml=lambda g, c, s, p, node: g.ggml_dup(c, s[0]),
    doc="A copy of a (same type and shape)."))


def dup(ctx, a):
    return DUP.build(ctx, [a])


def dup_inplace(ctx, a):
    return DUP.build(ctx, [a], hints=dict(inplace=True))


# --- CONT ---------------------------------------------------------------------------------

def _infer_cont(srcs, p):
    a = need_src("CONT", srcs, 0, "a")
    ne = p.ne if getattr(p, "ne", None) else a.ne
    need(ne[0] * ne[1] * ne[2] * ne[3] == nelements(a), "CONT",
         f"cannot make {nelements(a)} elements contiguous as ne={list(ne)}", a)
    return Out(a.type, ne)


def _cont_cases():
    """test_cont's list: a transposed source or a one-row view slice (vars type, ne,
    use_view_slice, permute), then permuted sources; the big permutes are slow."""
    out = []

    def add(type, ne, use_view_slice, perm=(0, 0, 0, 0)):
        def build(ctx):
            from .view import view_4d
            a = cc.leaf(ctx, type, ne, "src", param=True)
            if any(perm):
                a = _permute(ctx, a, *perm)
                a.name = "src_permuted"
            elif use_view_slice:
                a = view_4d(ctx, a, ne[0], 1, ne[2], ne[3], a.nb[1], a.nb[2], a.nb[3],
                            a.nb[0] * (ne[1] - 1))
                a.name = "src_view_slice"
            else:
                a = _transpose(ctx, a)
                a.name = "src_transposed"
            return cont(ctx, a)
        big = ne[0] * ne[1] * ne[2] * ne[3] > 1 << 20
        out.append(cc.case("CONT", dict(type=cc.ggml_type(type), ne=list(ne), use_view_slice=use_view_slice,
                                        permute=list(perm)), build, exact=True,
                           tags=("slow",) if big else ()))

    for type in ("f32", "i32", "f16", "bf16"):
        for use_view_slice in (True, False):
            for ne in ((2, 1, 1, 1), (2, 1, 3, 5), (2, 3, 5, 7), (1, 4, 4, 1), (1, 8, 17, 1),
                       (10, 10, 10, 1)):
                if use_view_slice and type in ("f16", "bf16"):
                    continue                     # as ggml's list (a WebGPU TODO there)
                add(type, ne, use_view_slice)
    for type in ("f32", "f16"):
        for ne in ((10, 10, 10, 1), (33, 5, 7, 1), (64, 3, 65, 1), (2, 3, 5, 7), (1024, 64, 64, 1),
                   (2304, 64, 64, 1), (1000, 33, 65, 1)):
            for perm in ((2, 1, 0, 3), (1, 2, 0, 3), (0, 2, 1, 3)):
                add(type, ne, False, perm)
    add("f32", (10, 10, 10, 1), False, (0, 1, 2, 3))      # pyggml's: a contiguous source
    return out


CONT = register(OpDef(
    "CONT", _infer_cont, reference=_ref_copy, cases=_cont_cases, nbytes=_bytes_rw,
    exact=True, name_fmt=lambda s: f"{s[0].name} (cont)",
    ggml=lambda g, c, s, p, node: g.ggml_cont_4d(c, s[0], *node.ne),
    doc="A contiguous copy of a (optionally with a new shape of the same size)."))


def cont(ctx, a):
    return CONT.build(ctx, [a])


cont_1d, cont_2d, cont_3d, cont_4d = nd_builders(CONT, "cont")


# --- CPY ----------------------------------------------------------------------------------

_CPY_SRC = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32) + QUANT_TYPES
_CPY_DST = _CPY_SRC


def _infer_cpy(srcs, p):
    a = need_src("CPY", srcs, 0, "a")
    cast_type = getattr(p, "cast_type", None)
    if cast_type is not None:     # ggml_cast: a new tensor that is its own destination
        need(a.type in _CPY_SRC and cast_type in _CPY_DST, "CPY",
             f"no conversion {a.type.tname} -> {cast_type.tname}", a)
        return Out(cast_type, a.ne)
    b = need_src("CPY", srcs, 1, "b")
    need(nelements(a) == nelements(b), "CPY",
         f"a has {nelements(a)} elements, b has {nelements(b)}", a, b)
    need(a.type in _CPY_SRC and b.type in _CPY_DST, "CPY",
         f"no conversion {a.type.tname} -> {b.type.tname}", a, b)
    if a.type in QUANT_TYPES and b.type != a.type:
        need(b.type in _FLOATS, "CPY", "a quantized source converts only to f32/f16/bf16", a, b)
    if TRAITS[b.type].is_quantized:
        need(b.ne[0] % TRAITS[b.type].blck_size == 0, "CPY",
             f"destination rows must be whole {b.type.tname} blocks of "
             f"{TRAITS[b.type].blck_size}", b)
    return inplace_of(b)


def _blck(t):
    return TRAITS[as_type(t)].blck_size


def _cpy_cases():
    out = []
    pairs = [("f32", t) for t in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")]
    pairs += [("f16", "f32"), ("f16", "f16"), ("bf16", "f32"), ("q4_0", "f32"),
              ("q8_0", "f32"), ("q5_1", "f16"), ("i32", "i32"), ("f32", "i32"), ("i32", "f32")]
    # ggml's all_types into and out of f32 (the K-quants and IQ4)
    for t in ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs"):
        pairs += [("f32", t), (t, "f32"), (t, t)]
    for ta, tb in pairs:
        for ne, permute in (([256, 4, 4, 4], None), ([256, 2, 3, 4], [0, 2, 1, 3]),
                            ([64, 5, 1, 1], None)):
            quant = as_type(ta) in QUANT_TYPES or as_type(tb) in QUANT_TYPES
            if permute and as_type(ta) in QUANT_TYPES:
                continue
            if quant and ne[0] % max(_blck(ta), _blck(tb)):
                continue

            def build(ctx, ta=ta, tb=tb, ne=ne, permute=permute, quant=quant):
                a = cc.leaf(ctx, ta, ne, "a", param=True)
                src = _permute(ctx, a, *permute) if permute else a
                b = cc.leaf(ctx, tb, src.ne, "b")
                return cpy(ctx, src, b)
            out.append(cc.case("CPY", dict(type_src=cc.ggml_type(ta), type_dst=cc.ggml_type(tb), ne_src=ne,
                                           permute_src=permute or [0, 0, 0, 0],
                                           permute_dst=[0, 0, 0, 0], _src_transpose=False),
                               build, exact=(ta == tb) or None,
                               max_nmse=(5e-3 if quant else None)))
    return out


CPY = register(OpDef(
    "CPY", _infer_cpy, reference=_ref_copy, cases=_cpy_cases, nbytes=_bytes_rw,
    name_fmt=lambda s: (f"{s[1].name} (copy of {s[0].name})"
                        if len(s) > 1 and s[1] is not None and s[1].name else f"{s[0].name} (copy)"),
    ggml=lambda g, c, s, p, node: (g.ggml_cast(c, s[0], int(node.type)) if node.src[1] is node
                                   else g.ggml_cpy(c, s[0], s[1])),
    doc="Copies a into b's memory, converting/quantizing to b's type; returns a view of b."))


def cpy(ctx, a, b):
    return CPY.build(ctx, [a, b])


def cast(ctx, a, type):
    """ggml_cast: a new tensor of `type` holding a's values (a CPY into itself)."""
    t = CPY.build(ctx, [a], hints=dict(cast_type=as_type(type)))
    t.src[1] = t    # as ggml: the destination is the result itself
    return t


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(DUP)
def _grad_dup(g, node, grad):
    if g.needs(0):
        g.add(0, grad)


_grad_cpy = grad_rule(CPY, ignore=(1,))(grad_through(
    "reshape", "cpy(a, b) = a * 1 + b * 0: a gets the gradient, b (overwritten) none."))


@grad_rule(CONT)
def _grad_cont(g, node, grad):
    reshape = g.fn('reshape')
    if g.needs(0):
        a = node.src[0]
        g.add(0, grad if are_same_shape(node, a) else reshape(g.ctx, grad, a))
