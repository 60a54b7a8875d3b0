"""SILU_BACK: the gradient of silu (ggml_silu_back, GGML_OP_SILU_BACK).

silu_back(a, b) with a = d(output) and b = silu's input x (ggml's order: src[0] is the
gradient): dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x) (ggml_vec_silu_backward_f32).
"""
from __future__ import annotations

import numpy as np

from ..tensor import are_same_shape
from ..tensor import is_contiguous_1
from ..tensor import nbytes
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_TYPES = (GGMLType.F32, GGMLType.F16)


def _infer(srcs, p):
    a = need_src("SILU_BACK", srcs, 0, "a (gradient dy)")
    b = need_src("SILU_BACK", srcs, 1, "b (forward input x)")
    need_type("SILU_BACK", a, _TYPES, "a")
    need(b.type == a.type, "SILU_BACK", "a and b must have the same type", a, b)
    need(are_same_shape(a, b), "SILU_BACK", "a and b must have the same shape", a, b)
    need(is_contiguous_1(a) and is_contiguous_1(b), "SILU_BACK",
         "rows must be packed (ggml's CPU kernel asserts contiguous rows)", a, b)
    return Out(a.type, a.ne)


def _ref(node, ins, p):
    dy, x = ins[0], ins[1]
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-x))
    return dy * s * (1.0 + x * (1.0 - s))


def _cases():
    """test_silu_back: f32 [64, 5, 4, 3], eps 1e-6 (ggml names the sources a and grad)."""
    def build(ctx):
        a = cc.leaf(ctx, "f32", [64, 5, 4, 3], "a")
        grad = cc.leaf(ctx, "f32", [64, 5, 4, 3], "grad")
        return silu_back(ctx, a, grad)
    return [cc.case("SILU_BACK", dict(type=cc.ggml_type("f32"), ne=[64, 5, 4, 3], eps=1e-6), build)]


SILU_BACK = register(OpDef(
    "SILU_BACK", _infer, reference=_ref, cases=_cases,
    flops=lambda n: 8 * int(np.prod(n.ne)),
    nbytes=lambda n: nbytes(n.src[0]) + nbytes(n.src[1]) + nbytes(n),
    ggml=lambda g, c, s, p, node: g.ggml_silu_back(c, s[0], s[1]),
    doc="Gradient of silu: a = d(output), b = silu's input x."))


def silu_back(ctx, a, b):
    """ggml_silu_back(a = gradient, b = forward input)."""
    return SILU_BACK.build(ctx, [a, b])
