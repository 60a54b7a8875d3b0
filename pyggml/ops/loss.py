"""Losses: CROSS_ENTROPY_LOSS and its gradient CROSS_ENTROPY_LOSS_BACK (ggml-cpu/ops.cpp).

cross_entropy_loss(a logits, b labels) = -(1/nr) * sum over rows of sum_i b_i log softmax(a)_i,
a scalar F32 (ggml_new_tensor_1d(a->type, 1)); the labels of a row are probabilities.
cross_entropy_loss_back(a d(loss) scalar, b logits, c labels) = (softmax(b) - c) * a / nr.
F32 with packed rows only, as ggml's CPU kernels.
"""
from __future__ import annotations

import numpy as np

from ..tensor import are_same_shape
from ..tensor import is_contiguous
from ..tensor import is_scalar
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import nrows
from ..types import GGMLType
from . import cases_common as cc
from .case import uniform
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

F32 = GGMLType.F32


def _infer_loss(srcs, p):
    a = need_src("CROSS_ENTROPY_LOSS", srcs, 0, "a (logits)")
    b = need_src("CROSS_ENTROPY_LOSS", srcs, 1, "b (labels)")
    need_type("CROSS_ENTROPY_LOSS", a, (F32,), "a")
    need_type("CROSS_ENTROPY_LOSS", b, (F32,), "b")
    need(are_same_shape(a, b), "CROSS_ENTROPY_LOSS", "logits and labels must have the same shape",
         a, b)
    need(a.nb[0] == 4 and b.nb[0] == 4, "CROSS_ENTROPY_LOSS",
         "rows must be packed (nb0 == 4): ggml's CPU kernel asserts it", a, b)
    return Out(a.type, [1])


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _ref_loss(node, ins, p):
    """Rows of no values add 0 (ggml sums nothing); no rows at all give 0 * (-1/0) = NaN.
    As ggml: (x - max) + (-log sum) and the product with the labels are float32 (so a huge
    logit times a label overflows to +-inf, and opposite infinities give NaN); sums are
    float64 (ggml_float)."""
    a, b = np.asarray(ins[0], np.float32), np.asarray(ins[1], np.float32)
    if a.shape[-1]:
        m = a.max(axis=-1, keepdims=True)
        lse = np.log(np.exp((a - m).astype(np.float64)).sum(axis=-1, keepdims=True))
        with np.errstate(over="ignore", invalid="ignore"):
            st = ((a - m) + (-lse).astype(np.float32)) * b
            s = np.float64(st.astype(np.float64).sum())
    else:
        s = np.float64(0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.array(-s / np.float64(nrows(node.src[0])))


def _infer_back(srcs, p):
    a = need_src("CROSS_ENTROPY_LOSS_BACK", srcs, 0, "a (d loss)")
    b = need_src("CROSS_ENTROPY_LOSS_BACK", srcs, 1, "b (logits)")
    c = need_src("CROSS_ENTROPY_LOSS_BACK", srcs, 2, "c (labels)")
    for t, w in ((a, "a"), (b, "b"), (c, "c")):
        need_type("CROSS_ENTROPY_LOSS_BACK", t, (F32,), w)
        need(is_contiguous(t), "CROSS_ENTROPY_LOSS_BACK",
             f"{w} must be contiguous (ggml's CPU kernel asserts it)", t)
    need(is_scalar(a), "CROSS_ENTROPY_LOSS_BACK", "a (the loss gradient) must be a scalar", a)
    need(are_same_shape(b, c), "CROSS_ENTROPY_LOSS_BACK",
         "logits and labels must have the same shape", b, c)
    return Out(b.type, b.ne)


def _ref_back(node, ins, p):
    d, x, labels = ins[0], ins[1], ins[2]
    sm = np.exp(_log_softmax(x))
    return (sm - labels) * (d.reshape(-1)[0] / nrows(node.src[1]))


def _labels(ctx, ne):
    """ggml's cases normalize random labels with soft_max so each row sums to 1."""
    from .softmax import soft_max
    t = soft_max(ctx, cc.leaf(ctx, "f32", ne, "labels"))
    t.name = "labels_normalized"
    return t


_NES = ([10, 5, 4, 3], [30000, 1, 1, 1])


def _loss_cases():
    out = []
    for ne in _NES:
        def build(ctx, ne=ne):
            from ..tensor import set_param
            logits = cc.leaf(ctx, "f32", ne, "logits")
            set_param(logits)
            return cross_entropy_loss(ctx, logits, _labels(ctx, ne))
        out.append(cc.case("CROSS_ENTROPY_LOSS", dict(type=cc.ggml_type("f32"), ne=ne), build,
                           init=uniform(-100.0, 100.0),
                           grad=dict(eps=1.0, precise=True)))
    return out


def _back_cases():
    out = []
    for ne in _NES:
        def build(ctx, ne=ne):
            grad = cc.leaf(ctx, "f32", [1], "grad")
            logits = cc.leaf(ctx, "f32", ne, "logits")
            return cross_entropy_loss_back(ctx, grad, logits, _labels(ctx, ne))
        out.append(cc.case("CROSS_ENTROPY_LOSS_BACK", dict(type=cc.ggml_type("f32"), ne=ne), build))
    return out


def _rw(node):
    return sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


CROSS_ENTROPY_LOSS = register(OpDef(
    "CROSS_ENTROPY_LOSS", _infer_loss, reference=_ref_loss, cases=_loss_cases,
    flops=lambda n: 6 * nelements(n.src[0]), nbytes=_rw,
    ggml=lambda g, c, s, p, node: g.ggml_cross_entropy_loss(c, s[0], s[1]),
    doc="Mean over rows of -sum(labels * log_softmax(logits)): a scalar F32."))

CROSS_ENTROPY_LOSS_BACK = register(OpDef(
    "CROSS_ENTROPY_LOSS_BACK", _infer_back, reference=_ref_back, cases=_back_cases,
    flops=lambda n: 5 * nelements(n), nbytes=_rw,
    ggml=lambda g, c, s, p, node: g.ggml_cross_entropy_loss_back(c, s[0], s[1], s[2]),
    doc="Gradient of cross_entropy_loss: (softmax(b) - c) * a / rows."))


def cross_entropy_loss(ctx, a, b):
    """ggml_cross_entropy_loss(a = logits, b = labels): scalar F32."""
    return CROSS_ENTROPY_LOSS.build(ctx, [a, b])


def cross_entropy_loss_back(ctx, a, b, c):
    """ggml_cross_entropy_loss_back(a = d loss, b = logits, c = labels)."""
    return CROSS_ENTROPY_LOSS_BACK.build(ctx, [a, b, c])


@grad_rule(CROSS_ENTROPY_LOSS)
def _grad_cross_entropy_loss(g, node, grad):
    need(not g.needs(1), "CROSS_ENTROPY_LOSS", "backward: no gradient for the labels is "
         "implemented (as in ggml); labels must not depend on a parameter", node.src[1])
    if g.needs(0):
        g.add(0, cross_entropy_loss_back(g.ctx, grad, node.src[0], node.src[1]))
