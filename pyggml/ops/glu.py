"""Gated linear units (GGML_OP_GLU): out = act(x) * g.

Fused form `glu(a, op, swapped)`: a's rows hold [x | g] (ne0 split in halves, nc = ne0 // 2;
`swapped` reads [g | x]); the result has ne0 = nc. Split form `glu_split(a, b, op)`: x = a,
g = b (same shape and type). As ggml, one OpDef per glu op (named as ggml_glu_op_name) with
ggml_op="GLU" and op_params [glu_op, swapped] (+ [alpha, limit] floats for SWIGLU_OAI).

Activations as in ggml's CPU (see unary.py): GEGLU and GEGLU_QUICK read the F16 GELU
lookup tables (F32 GEGLU: x <= -10 -> 0, x >= 10 -> x * g), the others compute in F32
(references in float64). Types: f32 and f16 (SWIGLU_OAI: f32).
"""
from __future__ import annotations

import numpy as np

from ..errors import ParamError
from ..errors import UnsupportedError
from ..errors import describe
from ..tensor import Tensor
from ..tensor import are_same_shape
from ..tensor import is_contiguous_1
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from . import cases_common as cc
from .builders import enum_name
from .builders import forwarder
from .builders import signature
from .case import Case
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import grad_rule
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .unary import GELU_COEF_A
from .unary import SQRT_2_OVER_PI
from .unary import _gelu_erf_values
from .unary import _gelu_quick_values
from .unary import _gelu_values
from .unary import _silu_values

F32, F16 = GGMLType.F32, GGMLType.F16

# ggml_glu_op values (ggml.h order)
GLU_OPS = ("REGLU", "GEGLU", "SWIGLU", "SWIGLU_OAI", "GEGLU_ERF", "GEGLU_QUICK")
GLU_OP_ID = {name: i for i, name in enumerate(GLU_OPS)}


def _swiglu_oai(x, g, t, p):
    x = np.minimum(x, p.limit)
    y = np.clip(g, -p.limit, p.limit)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(p.alpha * -x)) * (y + 1.0)


_GLU_FNS = {
    "REGLU": (lambda x, g, t, p: np.where(x > 0, x * g, 0.0), (F32, F16)),
    "GEGLU": (lambda x, g, t, p: _gelu_values(x, t) * g, (F32, F16)),
    "SWIGLU": (lambda x, g, t, p: _silu_values(x) * g, (F32, F16)),
    "SWIGLU_OAI": (_swiglu_oai, (F32,)),
    "GEGLU_ERF": (lambda x, g, t, p: _gelu_erf_values(x) * g, (F32, F16)),
    "GEGLU_QUICK": (lambda x, g, t, p: _gelu_quick_values(x, t) * g, (F32, F16)),
}


def _halves(node: Tensor, ins, p):
    """(x, g) of a GLU node: split sources, or the two halves of src0's rows."""
    a = ins[0]
    if node.src[1] is not None:
        return a, ins[1]
    nc = node.ne[0]
    first, second = a[..., :nc], a[..., nc:2 * nc]
    return (second, first) if p.swapped else (first, second)


def _bytes_io(node: Tensor) -> int:
    return sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


def _make_glu(name: str) -> OpDef:
    fn, types = _GLU_FNS[name]
    gid = GLU_OP_ID[name]
    spec = "op:i32 swapped:i32" + (" alpha:f32 limit:f32" if name == "SWIGLU_OAI" else "")

    def infer(srcs, p):
        a = need_src(name, srcs, 0, "a")
        b = srcs[1] if len(srcs) > 1 else None
        if p.op != gid:
            raise ParamError(f"{name}: op_params[0]={p.op} is not GGML_GLU_OP_{name} ({gid})")
        need_type(name, a, types, "a")
        if not (is_contiguous_1(a)):
            fail(name, f"a must be contiguous in dims >= 1 (ggml_is_contiguous_1), "
                                           f"got nb={a.nb}", a)
        if b is not None:
            if not (is_contiguous_1(b)):
                fail(name, f"b must be contiguous in dims >= 1, got nb={b.nb}", b)
            need(are_same_shape(a, b), name, "a and b must have the same shape", a, b)
            if a.type != b.type:
                fail(name, f"a and b must have the same type "
                                             f"({a.type.tname} != {b.type.tname})", a, b)
            need(not p.swapped, name, "the split form has no swapped variant", a, b,
                 cls=ParamError)
            return Out(a.type, a.ne)
        return Out(a.type, [a.ne[0] // 2] + list(a.ne[1:]))

    def ref(node, ins, p):
        x, g = _halves(node, ins, p)
        with np.errstate(invalid="ignore"):
            return fn(x, g, node.src[0].type, p)

    def recipe(gl, c, s, p, node):
        for t in node.src[:2]:
            if t is not None and t.nb[0] != t.type.traits.type_size:
                raise UnsupportedError(f"{name}: real ggml's CPU needs packed rows [{describe(t)}]")
        if name == "SWIGLU_OAI":
            return gl.ggml_swiglu_oai(c, s[0], s[1], p.alpha, p.limit)
        if node.src[1] is not None:
            return gl.ggml_glu_split(c, s[0], s[1], gid)
        return gl.ggml_glu(c, s[0], gid, bool(p.swapped))

    return register(OpDef(
        name, infer, params=spec, reference=ref, cases=lambda: _glu_cases(name),
        flops=lambda n: 2 * nelements(n), nbytes=_bytes_io, ggml=recipe, ggml_op="GLU",
        extra={"glu_op": gid}, doc=f"GGML_GLU_OP_{name}: act(x) * g over row halves or split sources."))


class _SplitCase(Case):
    """test_glu_split's case string ends in ',split' (a bare word, not a var)."""

    @property
    def vars_str(self) -> str:
        return super().vars_str + ",split"


def _init_150(t, rng):
    return rng.uniform(-150.0, 150.0, size=t.ne[::-1])


def _src(ctx, type, ne, v, name, param=False):
    """A leaf of shape ne, or (v & 1) a view of one three times as wide (strided rows);
    param marks the leaf trainable (ggml's split and swiglu_oai cases do)."""
    from .view import view_4d
    if v & 1:
        big = cc.leaf(ctx, type, [ne[0] * 3] + list(ne[1:]), name, param=param)
        t = view_4d(ctx, big, *ne, big.nb[1], big.nb[2], big.nb[3], 0)
        t.name = f"view_of_{name}"
        return t
    return cc.leaf(ctx, type, ne, name, param=param)


def _glu_cases(name: str):
    gid = GLU_OP_ID[name]
    out = []
    if name == "SWIGLU_OAI":
        for v in (0, 1):
            for alpha in (0.5, 1.702):
                for limit in (2.0, 7.0):
                    def build(ctx, v=v, alpha=alpha, limit=limit):
                        ne = [128, 2, 2, 2]
                        return swiglu_oai(ctx, _src(ctx, "f32", ne, v, "a", True),
                                          _src(ctx, "f32", ne, v, "b", True), alpha, limit)
                    out.append(cc.case(name, dict(type=cc.ggml_type("f32"), ne_a=[128, 2, 2, 2], v=v,
                                                  alpha=alpha, limit=limit),
                                       build, init=_init_150))
        return out
    for type in ("f16", "f32"):
        for v in (0, 1):
            for swapped in (False, True):
                for ne in ([128, 2, 2, 2], [5, 7, 11, 13]):
                    def build(ctx, type=type, v=v, swapped=swapped, ne=ne):
                        return glu(ctx, _src(ctx, type, ne, v, "a"), gid, swapped)
                    out.append(cc.case(name, dict(type=cc.ggml_type(type), ne_a=ne, v=v, swapped=swapped),
                                       build, init=_init_150))
            for ne in ([128, 2, 2, 2], [5, 7, 11, 13]):
                def build_split(ctx, type=type, v=v, ne=ne):
                    return glu_split(ctx, _src(ctx, type, ne, v, "a", True),
                                     _src(ctx, type, ne, v, "b", True), gid)
                out.append(_SplitCase(name, dict(type=cc.ggml_type(type), ne_a=ne, v=v), build_split,
                                      init=_init_150))
    return out


GLU_DEFS = {name: _make_glu(name) for name in GLU_OPS}


def _as_glu_name(op) -> str:
    return enum_name("glu", op, GLU_OPS, ("GGML_GLU_OP_", "GLU_OP_"))


def glu(ctx, a, op, swapped=False):
    """ggml_glu: act(x) * g over the two halves of a's rows ([x | g], or [g | x] if swapped)."""
    name = _as_glu_name(op)
    return GLU_DEFS[name].build(ctx, [a], dict(op=GLU_OP_ID[name], swapped=int(bool(swapped))))


def glu_split(ctx, a, b, op):
    """ggml_glu_split: act(a) * b."""
    name = _as_glu_name(op)
    return GLU_DEFS[name].build(ctx, [a, b], dict(op=GLU_OP_ID[name], swapped=0))


def _glu_builders(op: str):
    """ggml_<op>(ctx, a), ggml_<op>_swapped(ctx, a) and ggml_<op>_split(ctx, a, b)."""
    n = op.lower()
    return (forwarder(n, signature("ctx", "a"), lambda ctx, a: glu(ctx, a, op, False), f"ggml_{n}"),
            forwarder(f"{n}_swapped", signature("ctx", "a"), lambda ctx, a: glu(ctx, a, op, True),
                      f"ggml_{n}_swapped"),
            forwarder(f"{n}_split", signature("ctx", "a", "b"), lambda ctx, a, b: glu_split(ctx, a, b, op),
                      f"ggml_{n}_split"))


reglu, reglu_swapped, reglu_split = _glu_builders("REGLU")
geglu, geglu_swapped, geglu_split = _glu_builders("GEGLU")
swiglu, swiglu_swapped, swiglu_split = _glu_builders("SWIGLU")
geglu_erf, geglu_erf_swapped, geglu_erf_split = _glu_builders("GEGLU_ERF")
geglu_quick, geglu_quick_swapped, geglu_quick_split = _glu_builders("GEGLU_QUICK")


def swiglu_oai(ctx, a, b, alpha, limit):
    """ggml_swiglu_oai: x = min(a, limit), y = clamp(b, -limit, limit),
    out = x * sigmoid(alpha * x) * (y + 1). b may be None (fused halves of a)."""
    srcs = [a] if b is None else [a, b]
    return GLU_DEFS["SWIGLU_OAI"].build(ctx, srcs, dict(op=GLU_OP_ID["SWIGLU_OAI"], swapped=0,
                                                        alpha=alpha, limit=limit))


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

def _split_only(node):
    need(node.src[1] is not None, node.op.name, "backward is implemented for the split form "
         "only (glu_split(a, b)), as in ggml", node)


@grad_rule(GLU_DEFS["SWIGLU"])
def _grad_swiglu(g, node, grad):
    """silu(a) * b: a gets silu_back(grad * b, a), b gets silu(a) * grad."""
    mul = g.fn('mul')
    silu_back = g.fn('silu_back')
    silu = g.fn('silu')
    _split_only(node)
    a, b = node.src[0], node.src[1]
    if g.needs(0):
        g.add(0, silu_back(g.ctx, mul(g.ctx, grad, b), a))
    if g.needs(1):
        g.add(1, mul(g.ctx, silu(g.ctx, a), grad))


@grad_rule(GLU_DEFS["REGLU"])
def _grad_reglu(g, node, grad):
    """Beyond ggml's list: relu(a) * b: a gets step(a) * b * grad, b gets relu(a) * grad."""
    mul = g.fn('mul')
    relu, step = g.fn('relu', 'step')
    _split_only(node)
    a, b = node.src[0], node.src[1]
    if g.needs(0):
        g.add(0, mul(g.ctx, step(g.ctx, a), mul(g.ctx, grad, b)))
    if g.needs(1):
        g.add(1, mul(g.ctx, relu(g.ctx, a), grad))


def _gelu_derivative(g, x):
    """d gelu(x) / dx of ggml's tanh form 0.5 x (1 + tanh(c (x + a x^3))), built from ops:
    0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2), t = tanh(c (x + a x^3))."""
    sqr, mul, add, tanh, scale, scale_bias = g.fn('sqr', 'mul', 'add', 'tanh', 'scale',
                                                  'scale_bias')
    a, c = float(GELU_COEF_A), float(SQRT_2_OVER_PI)
    x2 = sqr(g.ctx, x)
    t = tanh(g.ctx, scale(g.ctx, mul(g.ctx, x, scale_bias(g.ctx, x2, a, 1.0)), c))
    one_m_t2 = scale_bias(g.ctx, sqr(g.ctx, t), -1.0, 1.0)
    q = scale_bias(g.ctx, x2, 3.0 * a * c, c)
    return add(g.ctx, scale_bias(g.ctx, t, 0.5, 0.5),
               scale(g.ctx, mul(g.ctx, mul(g.ctx, x, one_m_t2), q), 0.5))



@grad_rule(GLU_DEFS["GEGLU"])
def _grad_geglu(g, node, grad):
    """Beyond ggml's list (ggml differentiates SWIGLU only): gelu(a) * b: a gets
    gelu'(a) * b * grad, b gets gelu(a) * grad."""
    mul, gelu = g.fn('mul', 'gelu')
    _split_only(node)
    a, b = node.src[0], node.src[1]
    if g.needs(0):
        g.add(0, mul(g.ctx, _gelu_derivative(g, a), mul(g.ctx, grad, b)))
    if g.needs(1):
        g.add(1, mul(g.ctx, gelu(g.ctx, a), grad))
