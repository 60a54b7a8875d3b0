"""Views: VIEW, RESHAPE, PERMUTE, TRANSPOSE. They compute nothing; the result aliases src[0].

ne/nb/offsets follow ggml exactly (ggml.c: ggml_view_impl, ggml_reshape_*, ggml_permute).
"""
from __future__ import annotations

from ..errors import ParamError
from ..tensor import Tensor
from ..tensor import is_contiguous
from ..tensor import nelements
from ..types import TRAITS
from . import cases_common as cc
from .builders import nd_builders
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import grad_rule
from .registry import need
from .registry import need_src
from .registry import register


def _named(suffix):
    return lambda srcs: f"{srcs[0].name} ({suffix})"


# --- VIEW -----------------------------------------------------------------------------------

def _infer_view(srcs, p):
    a = need_src("VIEW", srcs, 0, "a")
    if not (p.offset >= 0):
        fail("VIEW", f"negative offset {p.offset}", a)
    # ggml's strides are size_t: a negative one would reach before the view's first byte
    if any(int(x) < 0 for x in p.nb):
        fail("VIEW", f"negative stride in nb={list(p.nb)}", a)
    return Out(a.type, p.ne, view_of=a, offs=p.offset, nb=p.nb)


def _view_cases():
    def build(ne, off_rows):
        def f(ctx):
            a = cc.leaf(ctx, "f32", ne, "a")
            v = view_2d(ctx, a, ne[0] // 2, ne[1] - off_rows, a.nb[1], off_rows * a.nb[1])
            return cc.cont(ctx, v)
        return f
    return [cc.case("VIEW", dict(type=cc.ggml_type("f32"), ne=ne, off=o), build(ne, o))
            for ne in ([10, 5, 1, 1], [64, 7, 1, 1]) for o in (0, 2)]


VIEW = register(OpDef(
    "VIEW", _infer_view, params="offset:i64", view=True,
    cases=_view_cases, name_fmt=_named("view"),
    ggml=lambda g, c, s, p, n: g.ggml_view_4d(c, s[0], *n.ne, *n.nb[1:], p.offset),
    doc="A strided window of a's bytes (ggml_view_1d..4d)."))


def _view(ctx, a: Tensor, ne, nb_rest, offset: int) -> Tensor:
    tr = TRAITS[a.type]
    nb0 = tr.type_size
    nb = [nb0, nb0 * (ne[0] // tr.blck_size)]
    nb += [0, 0]
    # ggml: unspecified strides continue contiguously from the last given one
    for i in range(1, 4):
        if i - 1 < len(nb_rest):
            nb[i] = nb_rest[i - 1]
        elif i >= 2:
            nb[i] = nb[i - 1] * (ne[i - 1] if i - 1 < len(ne) else 1)
    return VIEW.build(ctx, [a], dict(offset=offset), hints=dict(ne=list(ne), nb=nb))


def view_1d(ctx, a, ne0, offset=0):
    return _view(ctx, a, [ne0], [], offset)


def view_2d(ctx, a, ne0, ne1, nb1, offset=0):
    return _view(ctx, a, [ne0, ne1], [nb1, nb1 * ne1, nb1 * ne1], offset)


def view_3d(ctx, a, ne0, ne1, ne2, nb1, nb2, offset=0):
    return _view(ctx, a, [ne0, ne1, ne2], [nb1, nb2, nb2 * ne2], offset)


def view_4d(ctx, a, ne0, ne1, ne2, ne3, nb1, nb2, nb3, offset=0):
    return _view(ctx, a, [ne0, ne1, ne2, ne3], [nb1, nb2, nb3], offset)


def view_tensor(ctx, a):
    """ggml_view_tensor: same shape and strides, aliasing a (op stays NONE-like VIEW)."""
    return VIEW.build(ctx, [a], dict(offset=0), hints=dict(ne=a.ne, nb=a.nb))


# --- RESHAPE --------------------------------------------------------------------------------

def _infer_reshape(srcs, p):
    a = need_src("RESHAPE", srcs, 0, "a")
    ne = list(p.ne)
    need(is_contiguous(a), "RESHAPE", "source must be contiguous (use cont first)", a)
    if nelements(a) != ne[0] * ne[1] * ne[2] * ne[3]:
        fail("RESHAPE",
             f"cannot reshape {nelements(a)} elements into ne={ne}", a)
    return Out(a.type, ne, view_of=a, offs=0)


def _reshape_cases():
    def build(ne, new):
        def f(ctx):
            a = cc.leaf(ctx, "f32", ne, "a")
            r = reshape_4d(ctx, a, *new)
            return cc.cont(ctx, r)
        return f
    return [cc.case("RESHAPE", dict(type=cc.ggml_type("f32"), ne=ne, ne_new=new), build(ne, new))
            for ne, new in (([12, 4, 1, 1], [6, 8, 1, 1]), ([32, 3, 2, 1], [16, 2, 3, 2]))]


RESHAPE = register(OpDef(
    "RESHAPE", _infer_reshape, view=True, cases=_reshape_cases,
    name_fmt=_named("reshaped"),
    ggml=lambda g, c, s, p, n: g.ggml_reshape_4d(c, s[0], *n.ne),
    doc="Same bytes, new shape (source must be contiguous)."))


def reshape(ctx, a, b):
    return RESHAPE.build(ctx, [a], hints=dict(ne=list(b.ne)))


reshape_1d, reshape_2d, reshape_3d, reshape_4d = nd_builders(RESHAPE, "reshape")


# --- PERMUTE / TRANSPOSE ------------------------------------------------------------------------

def _infer_permute(srcs, p):
    a = need_src("PERMUTE", srcs, 0, "a")
    axes = list(p.axes)
    if sorted(axes) != [0, 1, 2, 3]:
        raise ParamError(f"PERMUTE: axes {axes} are not a permutation of 0..3 "
                         f"[{a.name!r} ne={a.ne}]")
    ne, nb = [0] * 4, [0] * 4
    for i, ax in enumerate(axes):
        ne[ax] = a.ne[i]
        nb[ax] = a.nb[i]
    return Out(a.type, ne, view_of=a, offs=0, nb=nb, like_src=True)


def _permute_cases():
    def build(ne, axes, type):
        def f(ctx):
            a = cc.leaf(ctx, type, ne, "a")
            return cc.cont(ctx, permute(ctx, a, *axes))
        return f
    out = []
    for type in ("f32", "f16"):
        for ne in ([10, 5, 4, 3], [3, 7, 2, 5]):
            for axes in ([0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 1, 0, 2]):
                out.append(cc.case("PERMUTE", dict(type=cc.ggml_type(type), ne=ne, axes=axes),
                                   build(ne, axes, type)))
    return out


PERMUTE = register(OpDef(
    "PERMUTE", _infer_permute, params="axes:i32[4]", view=True, cases=_permute_cases,
    name_fmt=_named("permuted"),
    ggml=lambda g, c, s, p, n: g.ggml_permute(c, s[0], *p.axes),
    doc="Reorders dims: source dim i becomes dim axes[i]."))


def permute(ctx, a, axis0, axis1, axis2, axis3):
    return PERMUTE.build(ctx, [a], dict(axes=[axis0, axis1, axis2, axis3]))


def _infer_transpose(srcs, p):
    a = need_src("TRANSPOSE", srcs, 0, "a")
    return Out(a.type, [a.ne[1], a.ne[0], a.ne[2], a.ne[3]], view_of=a, offs=0,
               nb=[a.nb[1], a.nb[0], a.nb[2], a.nb[3]], like_src=True)


def _transpose_cases():
    def build(ne):
        def f(ctx):
            return cc.cont(ctx, transpose(ctx, cc.leaf(ctx, "f32", ne, "a")))
        return f
    return [cc.case("TRANSPOSE", dict(type=cc.ggml_type("f32"), ne=ne), build(ne))
            for ne in ([10, 5, 1, 1], [33, 17, 3, 2])]


TRANSPOSE = register(OpDef(
    "TRANSPOSE", _infer_transpose, view=True, cases=_transpose_cases,
    name_fmt=_named("transposed"),
    ggml=lambda g, c, s, p, n: g.ggml_transpose(c, s[0]), doc="Swaps dims 0 and 1 (a permuted view)."))


def transpose(ctx, a):
    return TRANSPOSE.build(ctx, [a])


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(RESHAPE)
def _grad_reshape(g, node, grad):
    if g.needs(0):
        g.add(0, reshape(g.ctx, g.contiguous(grad), node.src[0]))


@grad_rule(VIEW)
def _grad_view(g, node, grad):
    """The viewed window of the source gets grad (acc into zeros or into its gradient)."""
    if not g.needs(0):
        return
    a = node.src[0]
    offset = VIEW.p(node).offset
    nb1, nb2, nb3 = node.nb[1], node.nb[2], node.nb[3]
    cur = g.gf.grads.get(id(a))
    if cur is not None and cur.type != a.type:     # strides of a, counted in cur's elements
        n0, ng = TRAITS[a.type].type_size, TRAITS[cur.type].type_size
        need(all(x % n0 == 0 for x in (offset, nb1, nb2, nb3)), "VIEW",
             "backward: view strides are not whole elements of the source", node)
        offset, nb1, nb2, nb3 = (x // n0 * ng for x in (offset, nb1, nb2, nb3))
    g.acc(0, grad, nb1, nb2, nb3, offset)


@grad_rule(PERMUTE)
def _grad_permute(g, node, grad):
    if g.needs(0):
        axb = [0, 0, 0, 0]
        for k, ax in enumerate(PERMUTE.p(node).axes):
            axb[ax & 3] = k
        g.add(0, permute(g.ctx, grad, *axb))


@grad_rule(TRANSPOSE)
def _grad_transpose(g, node, grad):
    if g.needs(0):
        g.add(0, transpose(g.ctx, grad))
