"""Shape and data-movement ops: CONCAT, REPEAT, REPEAT_BACK, PAD, SET, ACC, ARANGE,
TIMESTEP_EMBEDDING. Sorting (ARGSORT, TOP_K) lives in sort.py, resampling (UPSCALE) in
upscale.py.

Semantics are ggml's (ggml.c constructors, ggml-cpu ops.cpp kernels). Pure data movement
(concat, repeat, pad, set) is byte-exact for every element type; pyggml accepts strided
(permuted, viewed) sources everywhere ggml's CPU kernels assume packed rows.

Note: this module defines `set` (ggml_set), which shadows the builtin inside this file.
"""
from __future__ import annotations

import builtins

import numpy as np

from .. import data
from ..errors import ParamError
from ..errors import TypeError_
from ..tensor import Tensor
from ..tensor import is_contiguous
from ..tensor import is_contiguous_rows
from ..tensor import is_empty
from ..tensor import is_vector
from ..tensor import nbytes
from ..tensor import nelements
from ..types import TRAITS
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import inplace_of
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import permute as _permute
from .view import transpose as _transpose
from .view import view_4d as _view_4d

_F32, _F16, _BF16, _I32 = GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32
_ELEMENT_TYPES = tuple(t for t, tr in TRAITS.items() if tr.blck_size == 1)
_F32_ONLY = (_F32,)
# tag of cases beyond what ggml's CPU kernels accept (they would abort real ggml): pyggml only
NO_GGML = "no_ggml"


def _np(t: Tensor) -> np.ndarray:
    """Zero-copy (ne3, ne2, ne1, ne0) view of an element-type tensor in its storage dtype."""
    return data.strided(t)


# --- CONCAT -----------------------------------------------------------------------------------

def _infer_concat(srcs, p):
    a = need_src("CONCAT", srcs, 0, "a")
    b = need_src("CONCAT", srcs, 1, "b")
    dim = p.dim
    if not 0 <= dim < 4:
        raise ParamError(f"CONCAT: dim={dim} must be in [0, 4) [{a.name!r}, {b.name!r}]")
    need(a.type == b.type, "CONCAT", f"types differ ({a.type.tname} vs {b.type.tname})", a, b,
         cls=TypeError_)
    ne = list(a.ne)
    for d in range(4):
        if d == dim:
            ne[d] = a.ne[d] + b.ne[d]
        else:
            need(a.ne[d] == b.ne[d], "CONCAT",
                 f"a.ne[{d}]={a.ne[d]} != b.ne[{d}]={b.ne[d]} (only dim {dim} may differ)", a, b)
    if TRAITS[a.type].is_quantized:
        need(is_contiguous_rows(a) and is_contiguous_rows(b), "CONCAT",
             "quantized sources need packed rows", a, b)
    return Out(a.type, ne)


def _ref_concat(node, ins, p):
    a, b = node.src[0], node.src[1]
    if TRAITS[a.type].blck_size == 1:
        _np(node)[...] = np.concatenate([_np(a), _np(b)], axis=3 - p.dim)
    else:                        # whole blocks: bytes of packed rows (dim 0 joins row bytes)
        out = np.concatenate([data.row_bytes(a), data.row_bytes(b)], axis=3 - p.dim)
        data.row_bytes(node)[...] = out
    return None


def _concat_cases():
    out = []

    def build(type, ne_a, ne_b_d, dim, v):
        def operand(ctx, ne, grow, name):
            """A leaf of shape ne, or (grow: per-dim factors) a view of ne into a larger one."""
            if grow is None:
                return cc.leaf(ctx, type, ne, name)
            t = cc.leaf(ctx, type, [n * g for n, g in zip(ne, grow)], name)
            t = _view_4d(ctx, t, *ne, t.nb[1], t.nb[2], t.nb[3], 0)
            t.name = f"view_of_{name}"
            return t

        def f(ctx):
            ne_b = list(ne_a)
            ne_b[dim] = ne_b_d
            a = operand(ctx, ne_a, (2, 4, 3, 1) if v & 1 else (1, 1, 2, 4) if v & 4 else None, "a")
            b = operand(ctx, ne_b, (3, 2, 4, 1) if v & 2 else (1, 1, 3, 2) if v & 8 else None, "b")
            return concat(ctx, a, b, dim)
        return f

    def add(type, ne_a, ne_b_d, dim, v):
        out.append(cc.case("CONCAT", dict(type=cc.ggml_type(type), ne_a=list(ne_a), ne_b_d=ne_b_d,
                                          dim=dim, v=v), build(type, ne_a, ne_b_d, dim, v),
                           exact=True))

    for v in (0, 1, 2, 3):
        for dim in (0, 1, 2, 3):
            for type in ("f32", "f16", "bf16", "i8", "i16", "i32", "i64"):
                add(type, (11, 12, 13, 14), 7, dim, v)
    for type in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
        for v in (0, 4, 8, 12):
            for dim in (0, 1, 2, 3):
                add(type, (128, 12, 13, 14), 256 if dim == 0 else 7, dim, v)
    # pyggml extra: a permuted (transposed) source
    out.append(cc.case("CONCAT", dict(type=cc.ggml_type("f32"), ne_a=[5, 6, 3, 1], ne_b_d=4, dim=1,
                                      v=0, permute_a=[1, 0, 2, 3]),
                       lambda ctx: concat(ctx, _permute(ctx, cc.leaf(ctx, "f32", [6, 5, 3, 1], "a"),
                                                        1, 0, 2, 3),
                                          cc.leaf(ctx, "f32", [5, 4, 3, 1], "b"), 1),
                       exact=True))
    return out


CONCAT = register(OpDef(
    "CONCAT", _infer_concat, params="dim:i32", reference=_ref_concat, cases=_concat_cases,
    nbytes=lambda node: 2 * nbytes(node), exact=True,
    ggml=lambda g, c, s, p, node: g.ggml_concat(c, s[0], s[1], p.dim),
    doc="a and b joined along dim (all other dims equal; any strides)."))


def concat(ctx, a, b, dim):
    """ggml_concat(a, b, dim)."""
    return CONCAT.build(ctx, [a, b], dict(dim=dim))


# --- REPEAT / REPEAT_BACK -------------------------------------------------------------------

def _infer_repeat(srcs, p):
    a = need_src("REPEAT", srcs, 0, "a")
    ne = list(p.ne)
    need_type("REPEAT", a, _ELEMENT_TYPES, "a")
    ok = is_empty(a) or all(a.ne[i] > 0 and ne[i] % a.ne[i] == 0 for i in range(4))
    need(ok, "REPEAT", f"a cannot be repeated into ne={ne} (each dim must be a multiple)", a)
    return Out(a.type, ne)


def _ref_repeat(node, ins, p):
    a = node.src[0]
    if nelements(node) == 0 or nelements(a) == 0:
        return None
    reps = [node.ne[3 - i] // a.ne[3 - i] for i in range(4)]
    _np(node)[...] = np.tile(_np(a), reps)
    return None


def _repeat_cases():
    out = []

    def build(type, ne, nr):
        def f(ctx):
            target = cc.leaf(ctx, type, [ne[i] * nr[i] for i in range(4)], "target")
            src = cc.leaf(ctx, type, ne, "src", param=True)
            return repeat(ctx, src, target)
        return f

    for ne3 in (1, 3):
        for type, nr in (("f32", (1, 1, 1, 1)), ("f32", (2, 1, 1, 1)), ("f32", (1, 2, 1, 1)),
                         ("f32", (1, 1, 2, 1)), ("f32", (1, 1, 1, 2)), ("f16", (2, 1, 1, 1)),
                         ("i32", (2, 1, 1, 1)), ("i16", (1, 1, 1, 2)), ("bf16", (2, 1, 1, 1))):
            ne = [10, 5, 4, ne3]
            out.append(cc.case("REPEAT", dict(type=cc.ggml_type(type), ne=ne, nr=list(nr)),
                               build(type, ne, nr), exact=True))
    # pyggml extra: a transposed source
    out.append(cc.case("REPEAT", dict(type=cc.ggml_type("f32"), ne=[3, 7, 1, 1], nr=[2, 1, 3, 1],
                                      transpose=True),
                       lambda ctx: repeat_4d(ctx, _transpose(ctx, cc.leaf(ctx, "f32", [7, 3], "src")),
                                             6, 7, 3, 1), exact=True, tags=(NO_GGML,)))
    return out


REPEAT = register(OpDef(
    "REPEAT", _infer_repeat, reference=_ref_repeat, cases=_repeat_cases,
    nbytes=lambda node: 2 * nbytes(node), exact=True,
    ggml=lambda g, c, s, p, node: g.ggml_repeat_4d(c, s[0], *node.ne),
    doc="a tiled to the shape b (or ne0..ne3)."))


def repeat(ctx, a, b):
    """ggml_repeat(a, b): a tiled to b's shape (b's data is not used)."""
    return REPEAT.build(ctx, [a], hints=dict(ne=list(b.ne)))


def repeat_4d(ctx, a, ne0, ne1, ne2, ne3):
    return REPEAT.build(ctx, [a], hints=dict(ne=[ne0, ne1, ne2, ne3]))


def _infer_repeat_back(srcs, p):
    a = need_src("REPEAT_BACK", srcs, 0, "a")
    ne = list(p.ne)
    need_type("REPEAT_BACK", a, (_F32, _F16, _BF16), "a")
    ok = all(ne[i] > 0 and a.ne[i] % ne[i] == 0 for i in range(4))
    need(ok, "REPEAT_BACK", f"ne={ne} cannot be repeated into a (each dim must divide a's)", a)
    return Out(a.type, ne)


def _ref_repeat_back(node, ins, p):
    a = ins[0]
    shp = []
    for i in (3, 2, 1, 0):
        shp += [a.shape[3 - i] // node.ne[i], node.ne[i]]
    return a.reshape(shp).sum(axis=(0, 2, 4, 6))


def _repeat_back_cases():
    out = []

    def build(type, ne, nr, v):
        def f(ctx):
            big = [ne[i] * nr[i] for i in range(4)]
            src = cc.leaf(ctx, type, big, "src")
            if v:
                ne0 = [big[i] if nr[i] == 1 else big[i] // 2 for i in range(4)]
                src = _view_4d(ctx, src, *ne0, src.nb[1], src.nb[2], src.nb[3], 0)
            target = cc.leaf(ctx, type, ne, "target")
            return repeat_back(ctx, src, target)
        return f

    for v in (False, True):
        for nr in ((1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1), (1, 1, 1, 2)):
            ne = [8, 6, 4, 2]
            out.append(cc.case("REPEAT_BACK", dict(type=cc.ggml_type("f32"), ne=ne, nr=list(nr), v=v),
                               build("f32", ne, nr, v)))
    return out


def _repeat_back_ggml(g, c, s, p, node):
    # ggml_repeat_back takes b for its shape only: a fresh tensor of the result's shape
    b = g.ggml_new_tensor_4d(c, int(node.type), *node.ne)
    return g.ggml_repeat_back(c, s[0], b)


REPEAT_BACK = register(OpDef(
    "REPEAT_BACK", _infer_repeat_back, reference=_ref_repeat_back, cases=_repeat_back_cases,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=_repeat_back_ggml,
    doc="Sum of the repeats of a back into the shape of b (backward of repeat)."))


def repeat_back(ctx, a, b):
    """ggml_repeat_back(a, b): a summed into b's shape (b's data is not used)."""
    return REPEAT_BACK.build(ctx, [a], hints=dict(ne=list(b.ne)))


# --- PAD ------------------------------------------------------------------------------------

_PAD_TYPES = (_F32, _F16, _BF16, _I32)


def _infer_pad(srcs, p):
    a = need_src("PAD", srcs, 0, "a")
    need_type("PAD", a, _PAD_TYPES, "a")
    pads = [p.lp0, p.rp0, p.lp1, p.rp1, p.lp2, p.rp2, p.lp3, p.rp3]
    if any(x < 0 for x in pads):
        raise ParamError(f"PAD: pads must be >= 0, got {pads} [{a.name!r} ne={a.ne}]")
    if p.circular:
        need(all(x > 0 for x in a.ne), "PAD", "circular padding of an empty tensor", a)
    ne = [a.ne[i] + pads[2 * i] + pads[2 * i + 1] for i in range(4)]
    return Out(a.type, ne)


def _ref_pad(node, ins, p):
    a = node.src[0]
    lp = [p.lp0, p.lp1, p.lp2, p.lp3]
    src = _np(a)
    if p.circular:       # a torus: index (i - lp) modulo the source size, on every axis
        idx = [(np.arange(node.ne[d]) - lp[d]) % a.ne[d] for d in (3, 2, 1, 0)]
        _np(node)[...] = src[np.ix_(*idx)]
    else:
        dst = _np(node)
        dst[...] = 0
        dst[lp[3]:lp[3] + a.ne[3], lp[2]:lp[2] + a.ne[2], lp[1]:lp[1] + a.ne[1],
            lp[0]:lp[0] + a.ne[0]] = src
    return None


def _pad_cases():
    out = []

    def build_pad(ne_a, p0, p1, circular):
        def f(ctx):
            a = cc.leaf(ctx, "f32", ne_a, "a")
            return (pad_circular if circular else pad)(ctx, a, p0, p1, 0, 0)
        return f

    def add_pad(ne_a, p0, p1, circular=False, slow=False):
        out.append(cc.case("PAD", dict(type=cc.ggml_type("f32"), ne_a=list(ne_a), pad_0=p0, pad_1=p1,
                                       circular=circular), build_pad(ne_a, p0, p1, circular),
                           exact=True, tags=("slow",) if slow else ()))

    def build_ext(ne_a, pads, tfrm, circular):
        def f(ctx):
            a = cc.leaf(ctx, "f32", ne_a, "a")
            if tfrm == 1:
                a = _view_4d(ctx, a, *[(x + 1) // 2 for x in a.ne], a.nb[1], a.nb[2], a.nb[3], 0)
                a.name = "view of a"
            elif tfrm == 2:
                a = _permute(ctx, a, 2, 1, 0, 3)
                a.name = "permuted a"
            return (pad_ext_circular if circular else pad_ext)(ctx, a, *pads)
        return f

    def add_ext(ne_a, pads, tfrm=0, circular=False, slow=False):
        names = ("lp0", "rp0", "lp1", "rp1", "lp2", "rp2", "lp3", "rp3")
        v = dict(type=cc.ggml_type("f32"), ne_a=list(ne_a))
        v.update(zip(names, pads))
        v.update(tfrm=tfrm, circular=circular)
        out.append(cc.case("PAD", v, build_ext(ne_a, pads, tfrm, circular), exact=True,
                           tags=("slow",) if slow else ()))

    add_pad((512, 512, 1, 1), 1, 1, slow=True)
    add_pad((33, 17, 2, 1), 4, 3, True)
    add_ext((512, 512, 3, 1), (1,) * 8, slow=True)
    for ne, p0, p1 in (((1024, 1, 1, 1), 1, 0), ((1024, 2, 1, 1), 1, 0), ((1024, 16, 1, 1), 0, 1),
                       ((1023, 1, 1, 1), 1, 0), ((1023, 8, 1, 1), 1, 0), ((1025, 1, 1, 1), 1, 0),
                       ((1025, 8, 1, 1), 1, 0), ((2048, 1, 1, 1), 1, 0), ((2048, 4, 1, 1), 1, 0),
                       ((2049, 1, 1, 1), 1, 0), ((100, 1, 1, 1), 100, 0), ((100, 1, 1, 1), 0, 100),
                       ((100, 100, 1, 1), 50, 50)):
        add_pad(ne, p0, p1)
    for tfrm in (0, 1, 2):
        for circular in (False, True):
            add_ext((512, 512, 1, 1), (0, 1, 0, 1, 0, 0, 0, 0), tfrm, circular, slow=True)
            add_ext((11, 22, 33, 44), (1, 2, 3, 4, 5, 6, 7, 8), tfrm, circular, slow=True)
            # pyggml extra: the same layouts at a small size
            add_ext((7, 6, 5, 3), (1, 2, 3, 1, 2, 0, 1, 1), tfrm, circular)
    return out


PAD = register(OpDef(
    "PAD", _infer_pad, params="lp0:i32 rp0:i32 lp1:i32 rp1:i32 lp2:i32 rp2:i32 lp3:i32 rp3:i32 "
                              "circular:i32",
    reference=_ref_pad, cases=_pad_cases, exact=True,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: (g.ggml_pad_ext_circular if p.circular else g.ggml_pad_ext)(
        c, s[0], p.lp0, p.rp0, p.lp1, p.rp1, p.lp2, p.rp2, p.lp3, p.rp3),
    doc="a with zeros (or, circular, its own wrapped values) added before/after each dim."))


def pad(ctx, a, p0, p1, p2, p3):
    """ggml_pad: pads after the end of each dim."""
    return pad_ext(ctx, a, 0, p0, 0, p1, 0, p2, 0, p3)


def pad_circular(ctx, a, p0, p1, p2, p3):
    return pad_ext_circular(ctx, a, 0, p0, 0, p1, 0, p2, 0, p3)


def pad_ext(ctx, a, lp0, rp0, lp1, rp1, lp2, rp2, lp3, rp3):
    return PAD.build(ctx, [a], dict(lp0=lp0, rp0=rp0, lp1=lp1, rp1=rp1, lp2=lp2, rp2=rp2,
                                    lp3=lp3, rp3=rp3, circular=0))


def pad_ext_circular(ctx, a, lp0, rp0, lp1, rp1, lp2, rp2, lp3, rp3):
    return PAD.build(ctx, [a], dict(lp0=lp0, rp0=rp0, lp1=lp1, rp1=rp1, lp2=lp2, rp2=rp2,
                                    lp3=lp3, rp3=rp3, circular=1))


# --- SET / ACC ------------------------------------------------------------------------------

def _check_window(op, a, b, p):
    """b viewed into a with strides (elsize, nb1, nb2, nb3) at byte offset must stay inside a."""
    es = TRAITS[a.type].type_size
    for name in ("nb1", "nb2", "nb3", "offset"):
        if getattr(p, name) < 0:
            raise ParamError(f"{op}: {name}={getattr(p, name)} must be >= 0 [{a.name!r}]")
    if nelements(b) == 0:
        return
    last = p.offset + (b.ne[0] - 1) * es + (b.ne[1] - 1) * p.nb1 + (b.ne[2] - 1) * p.nb2 + \
        (b.ne[3] - 1) * p.nb3
    need(last + es <= nbytes(a), op,
         f"b viewed with nb=[{es}, {p.nb1}, {p.nb2}, {p.nb3}] at offset {p.offset} reaches byte "
         f"{last + es}, past the end of a ({nbytes(a)} bytes)", a, b)


def _infer_set(srcs, p):
    a = need_src("SET", srcs, 0, "a")
    b = need_src("SET", srcs, 1, "b")
    need(nelements(a) >= nelements(b), "SET", "b has more elements than a", a, b)
    need(p.offset < (1 << 30), "SET", f"offset {p.offset} must be < 2^30", a)
    need_type("SET", a, _ELEMENT_TYPES, "a")
    need(a.type == b.type, "SET", f"a and b types differ ({a.type.tname} vs {b.type.tname})",
         a, b, cls=TypeError_)
    need(is_contiguous(a), "SET", "a must be contiguous", a)
    _check_window("SET", a, b, p)
    return inplace_of(a) if p.inplace else Out(a.type, a.ne)


def _window(node, b, p) -> np.ndarray:
    """node's bytes seen with b's shape and the op's strides, at the op's byte offset."""
    _check_window(node.op.name, node, b, p)      # never write past node, whatever op_params say
    tr = TRAITS[node.type]
    return np.ndarray(b.ne[::-1], dtype=tr.np_dtype, buffer=node.buffer.data,
                      offset=node.offs + p.offset, strides=[p.nb3, p.nb2, p.nb1, tr.type_size])


def _ref_set(node, ins, p):
    a, b = node.src[0], node.src[1]
    if not p.inplace:
        _np(node)[...] = _np(a)
    if nelements(b):
        _window(node, b, p)[...] = _np(b)
    return None


def _set_cases():
    out = []

    def build(type_src, type_dst, ne, dim, inplace):
        def f(ctx):
            src = cc.leaf(ctx, type_src, ne, "src", param=True)
            ne_dst = list(ne)
            for i in range(dim):
                ne_dst[i] *= 2
            dst = cc.leaf(ctx, type_dst, ne_dst, "dst", param=True)
            offset = builtins.sum(((ne_dst[i] - ne[i]) // 2) * dst.nb[i] for i in range(dim))
            fn = set_inplace if inplace else set
            return fn(ctx, dst, src, src.nb[1], src.nb[2], src.nb[3], offset)
        return f

    for type in ("f32", "i32"):
        for dim in range(1, 4):
            for inplace in (False, True):
                ne = [6, 5, 4, 3]
                out.append(cc.case("SET", dict(type_src=cc.ggml_type(type), type_dst=cc.ggml_type(type), ne=ne,
                                               dim=dim, inplace=inplace),
                                   build(type, type, ne, dim, inplace), exact=True))
    # pyggml extras: set_1d / set_2d into a larger f32, and an f16 pair
    out.append(cc.case("SET", dict(type_src=cc.ggml_type("f16"), type_dst=cc.ggml_type("f16"), ne=[6, 5, 4, 3],
                                   dim=2, inplace=False), build("f16", "f16", [6, 5, 4, 3], 2, False),
                       exact=True, tags=(NO_GGML,)))
    out.append(cc.case("SET", dict(type_src=cc.ggml_type("f32"), type_dst=cc.ggml_type("f32"), ne=[7, 1, 1, 1],
                                   dim=0, inplace=False, fn="set_1d"),
                       lambda ctx: set_1d(ctx, cc.leaf(ctx, "f32", [20], "dst"),
                                          cc.leaf(ctx, "f32", [7], "src"), 12), exact=True))
    out.append(cc.case("SET", dict(type_src=cc.ggml_type("f32"), type_dst=cc.ggml_type("f32"), ne=[3, 4, 1, 1],
                                   dim=0, inplace=True, fn="set_2d_inplace"),
                       lambda ctx: set_2d_inplace(ctx, cc.leaf(ctx, "f32", [8, 6], "dst"),
                                                  cc.leaf(ctx, "f32", [3, 4], "src"), 32, 8),
                       exact=True))
    return out


def _view_write_ggml(name):
    """The real-ggml recipe of SET and ACC: ggml_<name>[_inplace](a, b, nb1, nb2, nb3, offset)."""
    def recipe(g, c, s, p, node):
        fn = getattr(g, f"ggml_{name}_inplace" if p.inplace else f"ggml_{name}")
        return fn(c, s[0], s[1], p.nb1, p.nb2, p.nb3, p.offset)
    return recipe


SET = register(OpDef(
    "SET", _infer_set, params="nb1:i32 nb2:i32 nb3:i32 offset:i32 inplace:i32",
    reference=_ref_set, cases=_set_cases, exact=True,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]) + nbytes(node.src[1]),
    ggml=_view_write_ggml("set"),
    doc="a with b written into the strided window (nb1, nb2, nb3, offset) of its bytes."))


def _window_write(op: OpDef, ctx, a, b, nb1, nb2, nb3, offset, inplace):
    """SET or ACC of b into the strided window of a (in place: a view of a named as ggml's)."""
    t = op.build(ctx, [a, b], dict(nb1=nb1, nb2=nb2, nb3=nb3, offset=offset, inplace=int(bool(inplace))))
    if inplace:
        t.name = f"{a.name} (view)"
    return t


def _set(ctx, a, b, nb1, nb2, nb3, offset, inplace):
    return _window_write(SET, ctx, a, b, nb1, nb2, nb3, offset, inplace)


def set(ctx, a, b, nb1, nb2, nb3, offset):  # noqa: A001  (ggml_set)
    """ggml_set: a copy of a with b written at byte offset, b's rows strided nb1, nb2, nb3."""
    return _set(ctx, a, b, nb1, nb2, nb3, offset, False)


def set_inplace(ctx, a, b, nb1, nb2, nb3, offset):
    return _set(ctx, a, b, nb1, nb2, nb3, offset, True)


def set_1d(ctx, a, b, offset):
    return _set(ctx, a, b, a.nb[1], a.nb[2], a.nb[3], offset, False)


def set_1d_inplace(ctx, a, b, offset):
    return _set(ctx, a, b, a.nb[1], a.nb[2], a.nb[3], offset, True)


def set_2d(ctx, a, b, nb1, offset):
    return _set(ctx, a, b, nb1, a.nb[2], a.nb[3], offset, False)


def set_2d_inplace(ctx, a, b, nb1, offset):
    return _set(ctx, a, b, nb1, a.nb[2], a.nb[3], offset, True)


def _infer_acc(srcs, p):
    a = need_src("ACC", srcs, 0, "a")
    b = need_src("ACC", srcs, 1, "b")
    need(nelements(b) <= nelements(a), "ACC", "b has more elements than a", a, b)
    need(is_contiguous(a), "ACC", "a must be contiguous", a)
    need_type("ACC", a, _F32_ONLY, "a")
    need_type("ACC", b, _F32_ONLY, "b")
    _check_window("ACC", a, b, p)
    return inplace_of(a) if p.inplace else Out(a.type, a.ne)


def _ref_acc(node, ins, p):
    a, b = node.src[0], node.src[1]
    if not p.inplace:
        _np(node)[...] = _np(a)
    if nelements(b):
        w = _window(node, b, p)
        w[...] = w + _np(b)          # float32 adds, as ggml_vec_add_f32
    return None


def _acc_cases():
    out = []

    def build(ne_a, ne_b, stride_dim):
        def f(ctx):
            a = cc.leaf(ctx, "f32", ne_a, "a", param=True)
            if stride_dim in (1, 2, 3):
                ne_pad = list(ne_b)
                ne_pad[stride_dim] += 1
                bp = cc.leaf(ctx, "f32", ne_pad, "b_pad", param=True)
                b = _view_4d(ctx, bp, *ne_b, bp.nb[1], bp.nb[2], bp.nb[3], bp.nb[1])
            else:
                b = cc.leaf(ctx, "f32", ne_b, "b", param=True)
            b.name = "b"
            return acc(ctx, a, b, a.nb[1], a.nb[2], a.nb[3], 0)
        return f

    for ne_a, ne_b, sd in (((256, 17, 1, 1), (256, 16, 1, 1), -1),
                           ((256, 17, 2, 3), (256, 16, 2, 3), -1),
                           ((256, 17, 2, 3), (128, 16, 2, 3), -1),
                           ((256, 17, 2, 3), (256, 16, 2, 3), 1),
                           ((256, 17, 2, 3), (128, 16, 2, 3), 2),
                           ((256, 17, 2, 3), (64, 16, 2, 3), 3)):
        out.append(cc.case("ACC", dict(type=cc.ggml_type("f32"), ne_a=list(ne_a), ne_b=list(ne_b),
                                       stride_dim=sd), build(ne_a, ne_b, sd)))
    return out


ACC = register(OpDef(
    "ACC", _infer_acc, params="nb1:i32 nb2:i32 nb3:i32 offset:i32 inplace:i32",
    reference=_ref_acc, cases=_acc_cases,
    flops=lambda node: nelements(node.src[1]),
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]) + 2 * nbytes(node.src[1]),
    ggml=_view_write_ggml("acc"), doc="a with b added into the strided window (nb1, nb2, nb3, offset)."))


def acc(ctx, a, b, nb1, nb2, nb3, offset):
    """ggml_acc: a copy of a with b added at byte offset, b's rows strided nb1, nb2, nb3."""
    return _window_write(ACC, ctx, a, b, nb1, nb2, nb3, offset, False)


def acc_inplace(ctx, a, b, nb1, nb2, nb3, offset):
    return _window_write(ACC, ctx, a, b, nb1, nb2, nb3, offset, True)


# --- ARANGE ---------------------------------------------------------------------------------

def _arange_steps(start, stop, step) -> int:
    """ggml: (int64_t) ceilf((stop - start) / step), in float32."""
    return int(np.ceil((np.float32(stop) - np.float32(start)) / np.float32(step)))


def _infer_arange(srcs, p):
    vals = (p.start, p.stop, p.step)
    if not all(np.isfinite(v) for v in vals):
        raise ParamError(f"ARANGE: start, stop, step must be finite, got {vals}")
    if not p.stop > p.start:
        raise ParamError(f"ARANGE: stop ({p.stop}) must be greater than start ({p.start})")
    if not p.step > 0:
        raise ParamError(f"ARANGE: step ({p.step}) must be > 0")
    return Out(_F32, [_arange_steps(p.start, p.stop, p.step)])


def _ref_arange(node, ins, p):
    i = np.arange(node.ne[0]).astype(np.float32)
    return np.float32(p.start) + np.float32(p.step) * i       # float32, as ggml


def _arange_cases():
    out = []
    for start, stop, step, slow in ((0.0, 10.0, 1.0, False), (0.0, 1048576.0, 1.0, True),
                                    (-3.5, 7.25, 0.3, False), (2.0, 1000.0, 7.0, False)):
        out.append(cc.case("ARANGE", dict(type=cc.ggml_type("f32"), start=start, stop=stop, step=step),
                           (lambda a, b, c: lambda ctx: arange(ctx, a, b, c))(start, stop, step),
                           tags=("slow",) if slow else ()))
    return out


ARANGE = register(OpDef(
    "ARANGE", _infer_arange, params="start:f32 stop:f32 step:f32", reference=_ref_arange,
    cases=_arange_cases, nbytes=lambda node: nbytes(node),
    ggml=lambda g, c, s, p, node: g.ggml_arange(c, p.start, p.stop, p.step),
    doc="F32 [ceil((stop - start) / step)]: start + step * i."))


def arange(ctx, start, stop, step):
    """ggml_arange(start, stop, step): F32 values start + step*i, computed in float32."""
    return ARANGE.build(ctx, [], dict(start=start, stop=stop, step=step))


# --- TIMESTEP_EMBEDDING -------------------------------------------------------------------------

def _infer_timestep(srcs, p):
    t = need_src("TIMESTEP_EMBEDDING", srcs, 0, "timesteps")
    need_type("TIMESTEP_EMBEDDING", t, _F32_ONLY, "timesteps")
    need(is_vector(t), "TIMESTEP_EMBEDDING", "timesteps must be a vector", t)
    if p.dim <= 0 or p.max_period <= 0:
        raise ParamError(f"TIMESTEP_EMBEDDING: dim ({p.dim}) and max_period ({p.max_period}) "
                         f"must be > 0")
    return Out(_F32, [p.dim, t.ne[0]])


def _ref_timestep(node, ins, p):
    # frequencies as ggml computes them: expf(-logf(max_period) * j / half) in float32
    half = p.dim // 2
    f32 = np.float32
    j = np.arange(half).astype(f32)
    freq = np.exp((-np.log(f32(p.max_period)) * j) / f32(half)).astype(f32) if half else j
    ts = ins[0].reshape(-1).astype(f32)
    arg = (ts[:, None] * freq[None, :]).astype(np.float64)
    out = np.zeros((ts.size, p.dim))
    out[:, :half] = np.cos(arg)
    out[:, half:2 * half] = np.sin(arg)
    return out


def _timestep_cases():
    out = []
    for ne, dim, mp in (((2, 1, 1, 1), 320, 10000), ((5, 1, 1, 1), 33, 1000),
                        ((3, 1, 1, 1), 8, 10000)):
        out.append(cc.case("TIMESTEP_EMBEDDING", dict(type=cc.ggml_type("f32"), ne_a=list(ne), dim=dim,
                                                      max_period=mp),
                           (lambda ne, d, m: lambda ctx: timestep_embedding(
                               ctx, cc.leaf(ctx, "f32", ne, "a"), d, m))(ne, dim, mp)))
    return out


TIMESTEP_EMBEDDING = register(OpDef(
    "TIMESTEP_EMBEDDING", _infer_timestep, params="dim:i32 max_period:i32",
    reference=_ref_timestep, cases=_timestep_cases,
    ggml=lambda g, c, s, p, node: g.ggml_timestep_embedding(c, s[0], p.dim, p.max_period),
    doc="Sinusoidal embedding F32 [dim, n]: cos then sin of t * max_period^(-j/half)."))


def timestep_embedding(ctx, timesteps, dim, max_period):
    return TIMESTEP_EMBEDDING.build(ctx, [timesteps], dict(dim=dim, max_period=max_period))


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(REPEAT)
def _grad_repeat(g, node, grad):
    if g.needs(0):
        g.add(0, repeat_back(g.ctx, grad, node.src[0]))


@grad_rule(REPEAT_BACK)
def _grad_repeat_back(g, node, grad):
    if g.needs(0):
        g.add(0, repeat(g.ctx, grad, node.src[0]))


def _grad_window(g, node, grad, b):
    """The part of grad that b covered (an acc/set window), packed in b's shape."""
    cont = g.fn('cont')
    reshape, view_4d = g.fn('reshape', 'view_4d')
    p = node.op.p(node)
    win = view_4d(g.ctx, grad, b.ne[0], b.ne[1], b.ne[2], b.ne[3], p.nb1, p.nb2, p.nb3, p.offset)
    return win, reshape(g.ctx, cont(g.ctx, win), b)


@grad_rule(ACC)
def _grad_acc(g, node, grad):
    if g.needs(0):
        g.add(0, grad)
    if g.needs(1):
        g.add(1, _grad_window(g, node, grad, node.src[1])[1])


@grad_rule(SET)
def _grad_set(g, node, grad):
    """a outside the window keeps its gradient, b gets the window's."""
    neg = g.fn('neg')
    a, b = node.src[0], node.src[1]
    need(a.type == node.type, "SET", "backward needs a of the result's type", a, node)
    if not (g.needs(0) or g.needs(1)):
        return
    win, packed = _grad_window(g, node, grad, b)
    if g.needs(0):
        p = SET.p(node)
        g.add(0, acc(g.ctx, grad, neg(g.ctx, win), p.nb1, p.nb2, p.nb3, p.offset))
    if g.needs(1):
        g.add(1, packed)


@grad_rule(CONCAT)
def _grad_concat(g, node, grad):
    """Beyond ggml's list: each source gets its slab of grad along dim."""
    cont = g.fn('cont')
    view_4d = g.fn('view_4d')
    dim = CONCAT.p(node).dim
    offs = 0
    for i in (0, 1):
        s = node.src[i]
        if g.needs(i):
            g.add(i, cont(g.ctx, view_4d(g.ctx, grad, *s.ne, grad.nb[1], grad.nb[2], grad.nb[3],
                                         offs)))
        offs += s.ne[dim] * grad.nb[dim]
