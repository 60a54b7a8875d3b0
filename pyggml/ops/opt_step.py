"""Optimizer steps as ops: OPT_STEP_ADAMW and OPT_STEP_SGD (ggml_opt_step_adamw/_sgd).

Both update the parameter a in place (the result is a view of a, as in ggml):
- adamw(a, grad, m, v, params[7] = alpha, beta1, beta2, eps, wd, beta1h, beta2h):
  m = m*beta1 + g*(1-beta1); v = v*beta2 + g^2*(1-beta2);
  a = a*(1 - alpha*wd) - alpha * (m*beta1h) / (sqrt(v*beta2h) + eps)   (m, v written too;
  beta1h = 1/(1 - beta1^t) and beta2h = 1/(1 - beta2^t) are the bias corrections of step t)
- sgd(a, grad, params[2] = alpha, wd): a = a*(1 - alpha*wd) - alpha*g.
graph_reset zeroes AdamW's m and v (OpDef.extra["reset_srcs"]).
"""
from __future__ import annotations

import numpy as np

from ..tensor import TENSOR_FLAG_PARAM
from ..tensor import are_same_shape
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from . import cases_common as cc
from .case import uniform
from .registry import OpDef
from .registry import inplace_of
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

F32 = GGMLType.F32


def _check_param(op, a, grad, params, n_params):
    need_type(op, a, (F32,), "a")
    need(bool(a.flags & TENSOR_FLAG_PARAM), op, "a must be a trainable parameter (set_param)", a)
    need(a.nb[0] == 4, op, "a's rows must be packed (nb0 == 4)", a)
    need_type(op, grad, (F32,), "grad")
    need(are_same_shape(a, grad), op, "grad must have a's shape", a, grad)
    need_type(op, params, (F32,), "params")
    need(nelements(params) == n_params, op, f"params must hold {n_params} values", params)


def _same_layout(op, a, *ts):
    for t in ts:      # ggml's kernels address every tensor with a's strides
        need(list(t.nb) == list(a.nb), op, "must have a's strides", a, t)


def _infer_adamw(srcs, p):
    a, grad, m, v, params = (need_src("OPT_STEP_ADAMW", srcs, i, w) for i, w in
                             enumerate(("a", "grad", "m", "v", "adamw_params")))
    _check_param("OPT_STEP_ADAMW", a, grad, params, 7)
    for t, w in ((m, "m"), (v, "v")):
        need_type("OPT_STEP_ADAMW", t, (F32,), w)
        need(are_same_shape(a, t), "OPT_STEP_ADAMW", f"{w} must have a's shape", a, t)
    _same_layout("OPT_STEP_ADAMW", a, grad, m, v)
    return inplace_of(a)


def _f32(x):
    return np.float32(x)


def _ref_adamw(node, ins, p):
    """In float32, operation by operation as ggml's loop (the update is not an NMSE-tolerant
    function of its inputs when v is near 0)."""
    w, g, m, v = (x.astype(np.float32) for x in ins[:4])
    alpha, beta1, beta2, eps, wd, beta1h, beta2h = (_f32(x) for x in ins[4].reshape(-1))
    one = _f32(1.0)
    m = m * beta1 + g * (one - beta1)
    v = v * beta2 + g * g * (one - beta2)
    mh = m * beta1h
    vh = np.sqrt(v * beta2h) + eps
    w = w * (one - alpha * wd) - alpha * mh / vh
    return {"dst": w, 2: m, 3: v}


def _infer_sgd(srcs, p):
    a, grad, params = (need_src("OPT_STEP_SGD", srcs, i, w) for i, w in
                       enumerate(("a", "grad", "sgd_params")))
    _check_param("OPT_STEP_SGD", a, grad, params, 2)
    _same_layout("OPT_STEP_SGD", a, grad)
    return inplace_of(a)


def _ref_sgd(node, ins, p):
    w, g = ins[0].astype(np.float32), ins[1].astype(np.float32)
    alpha, wd = (_f32(x) for x in ins[2].reshape(-1))
    return w * (_f32(1.0) - alpha * wd) - alpha * g


_NE = [10, 5, 4, 3]


def _leafs(ctx, names):
    from ..tensor import set_param
    ts = [cc.leaf(ctx, "f32", _NE, n) for n in names]
    set_param(ts[0])
    return ts


def _adamw_cases():
    def build(ctx):
        a, grad, m, v = _leafs(ctx, ("a", "grad", "grad_m", "grad_v"))
        return opt_step_adamw(ctx, a, grad, m, v, cc.leaf(ctx, "f32", [7], "adamw_params"))
    # non-negative values: v and the hyper-parameters (ggml's initialize_tensors)
    return [cc.case("OPT_STEP_ADAMW", dict(type=cc.ggml_type("f32"), ne=_NE), build, init=uniform(0.0, 1.0))]


def _sgd_cases():
    def build(ctx):
        a, grad = _leafs(ctx, ("a", "grad"))
        return opt_step_sgd(ctx, a, grad, cc.leaf(ctx, "f32", [2], "sgd_params"))
    return [cc.case("OPT_STEP_SGD", dict(type=cc.ggml_type("f32"), ne=_NE), build, init=uniform(0.0, 1.0))]


def _rw(node):
    return sum(2 * nbytes(s) for s in node.src if s is not None)


OPT_STEP_ADAMW = register(OpDef(
    "OPT_STEP_ADAMW", _infer_adamw, reference=_ref_adamw, cases=_adamw_cases, writes=(2, 3),
    flops=lambda n: 14 * nelements(n), nbytes=_rw, extra={"reset_srcs": (2, 3)},
    ggml=lambda g, c, s, p, node: g.ggml_opt_step_adamw(c, s[0], s[1], s[2], s[3], s[4]),
    doc="One AdamW step on parameter a in place (m, v updated)."))

OPT_STEP_SGD = register(OpDef(
    "OPT_STEP_SGD", _infer_sgd, reference=_ref_sgd, cases=_sgd_cases,
    flops=lambda n: 3 * nelements(n), nbytes=_rw,
    ggml=lambda g, c, s, p, node: g.ggml_opt_step_sgd(c, s[0], s[1], s[2]),
    doc="One SGD step with weight decay on parameter a in place."))


def opt_step_adamw(ctx, a, grad, m, v, adamw_params):
    """ggml_opt_step_adamw: adamw_params F32[7] = alpha, beta1, beta2, eps, wd, beta1h, beta2h."""
    return OPT_STEP_ADAMW.build(ctx, [a, grad, m, v, adamw_params])


def opt_step_sgd(ctx, a, grad, sgd_params):
    """ggml_opt_step_sgd: sgd_params F32[2] = alpha, wd."""
    return OPT_STEP_SGD.build(ctx, [a, grad, sgd_params])
