"""Normalizations: NORM, RMS_NORM, RMS_NORM_BACK, GROUP_NORM, L2_NORM (ggml.c, ggml-cpu ops.cpp).

All take F32 (ggml's CPU kernels abort on anything else, so pyggml refuses at build time) and
return a's shape and type; the `_inplace` variants return a view of a, as ggml_view_tensor.
Per row of ne0 values x (float64 references):
  norm:          (x - mean) / sqrt(var + eps)            var = mean((x - mean)^2)
  rms_norm:      x / sqrt(mean(x^2) + eps)
  l2_norm:       x / max(sqrt(sum(x^2)), eps)
  group_norm:    norm over each group of ceil(ne2 / n_groups) channels (ne2 slices) x all of
                 ne0*ne1, per ne3 index
  rms_norm_back: (dz + x * (-sum(x*dz) / (sum(x^2) + eps*ne0))) / sqrt(mean(x^2) + eps)
                 (a = dz, the gradient of rms_norm's output; b = x, rms_norm's input)
op_params: [eps] (f32) for all but group_norm: [n_groups (i32), eps (f32)].
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ParamError
from ..tensor import nbytes
from ..tensor import nelements
from ..types import TRAITS
from ..types import GGMLType
from . import cases_common as cc
from .builders import op_builders
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import inplace_of
from .registry import need
from .registry import need_pair
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import permute as _permute

F32 = GGMLType.F32


def _rw_bytes(node):
    return sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


def _flops(k):
    return lambda node: k * nelements(node)


def _infer_unary_f32(op):
    def infer(srcs, p):
        a = need_src(op, srcs, 0, "a")
        need_type(op, a, (F32,), "a")
        if p.eps < 0 or math.isnan(p.eps):
            raise ParamError(f"{op}: eps must be >= 0, got {p.eps} [a ne={a.ne}]")
        return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)
    return infer


def _is_inplace(node) -> bool:
    return node.view_src is not None


def _view_half(ctx, a):
    """test-backend-ops' `v`: a view of the first half along every dim (strided rows)."""
    from .view import view_4d
    return view_4d(ctx, a, a.ne[0] // 2, a.ne[1] // 2, a.ne[2] // 2, a.ne[3] // 2,
                   a.nb[1], a.nb[2], a.nb[3], 0)


_EPS_GRID = (0.0, 1e-6, 1e-4, 1e-1, 10.0)


# --- NORM -------------------------------------------------------------------------------------

def _f32(x):
    """Rounded to float32 where ggml stores a float (sums stay float64, ggml_float): squares of
    large values overflow to inf there and the row becomes 0 or NaN, as ggml's does."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def _eps(p):
    return np.float64(np.float32(p.eps))


def _rsqrt(x):
    """1 / sqrtf(x) with IEEE results (inf at 0, 0 at inf, NaN from NaN) and no warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _f32(1.0 / _f32(np.sqrt(x)))


def _ref_norm(node, ins, p):
    x = ins[0]
    n = x.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        d = _f32(x - _f32(x.sum(axis=-1, keepdims=True) / n))
        var = _f32(_f32(d * d).sum(axis=-1, keepdims=True) / n)
        return d * _rsqrt(_f32(var + _eps(p)))


def _norm_case(op, fn, n, eps, v, noncontig_rows, tags, vars):
    """A case of test-backend-ops' NORM / L2_NORM grids: fn(a, eps) with a f32 [n, 5, 4, 3],
    its rows strided (a permuted [5, n, 4, 3]) when noncontig_rows, a view of its first half
    when v; `vars` are the case string's fields between ne and noncontig_rows, in ggml's order."""
    def build(ctx):
        a = cc.leaf(ctx, "f32", [5, n, 4, 3] if noncontig_rows else [n, 5, 4, 3], "a")
        if noncontig_rows:
            a = _permute(ctx, a, 1, 0, 2, 3)
        return fn(ctx, _view_half(ctx, a) if v else a, eps)
    return cc.case(op, dict(type=cc.ggml_type("f32"), ne=[n, 5, 4, 3], **vars, noncontig_rows=noncontig_rows),
                   build, tags=tags)


def _norm_cases():
    out = []

    def add(n, v, eps, noncontig_rows=False, tags=()):
        out.append(_norm_case("NORM", norm, n, eps, v, noncontig_rows, tags, dict(v=v, eps=eps)))
    for eps in _EPS_GRID:
        for n in (64, 1025):
            for v in (False, True):
                add(n, v, eps, tags=("slow",) if n > 64 and eps not in (0.0, 1e-6) else ())
            add(n, False, eps, True, tags=("slow",) if n > 64 else ())
        for n in (33, 132, 260):
            for v in (False, True):
                add(n, v, eps, tags=("slow",) if eps not in (1e-6, 10.0) else ())
    return out


NORM = register(OpDef(
    "NORM", _infer_unary_f32("NORM"), params="eps:f32", reference=_ref_norm, cases=_norm_cases,
    flops=_flops(5), nbytes=_rw_bytes,
    ggml=lambda g, c, s, p, node: (g.ggml_norm_inplace if _is_inplace(node) else g.ggml_norm)(
        c, s[0], p.eps),
    doc="Per row: (x - mean) / sqrt(variance + eps)."))


norm, norm_inplace = op_builders(NORM, "norm", params=("eps",))


# --- RMS_NORM ---------------------------------------------------------------------------------

def _infer_rms_norm(srcs, p):
    out = _infer_unary_f32("RMS_NORM")(srcs, p)
    a = srcs[0]
    need(a.nb[0] == TRAITS[a.type].type_size, "RMS_NORM",
         "a's rows must be packed (nb0 == 4): ggml's CPU kernel asserts it", a)
    return out


def _ref_rms_norm(node, ins, p):
    x = ins[0]
    n = x.shape[-1]
    with np.errstate(invalid="ignore"):
        mean = _f32(_f32(x * x).sum(axis=-1, keepdims=True) / n)
        return x * _rsqrt(_f32(mean + _eps(p)))


def _init_pm10(leaf, rng):
    return rng.uniform(-10.0, 10.0, size=leaf.ne[::-1])


def _rms_norm_cases():
    out = []

    def add(n, v, eps, inplace=False, tags=()):
        def build(ctx):
            a = cc.leaf(ctx, "f32", [n, 5, 4, 3], "a", param=True)
            if v:
                a = _view_half(ctx, a)
            return (rms_norm_inplace if inplace else rms_norm)(ctx, a, eps)
        out.append(cc.case("RMS_NORM", dict(type=cc.ggml_type("f32"), ne=[n, 5, 4, 3], v=v, eps=eps,
                                            inplace=inplace), build, init=_init_pm10, tags=tags,
                           grad=dict(eps=1.0, precise=True)))
    for eps in _EPS_GRID:
        for n in (64, 1025):
            for v in (False, True):
                add(n, v, eps, tags=("slow",) if n > 64 and eps not in (0.0, 1e-6) else ())
        for n in (33, 132, 260):
            for v in (False, True):
                add(n, v, eps, tags=("slow",) if eps not in (1e-6, 10.0) else ())
    add(64, False, 1e-6, inplace=True)
    return out


RMS_NORM = register(OpDef(
    "RMS_NORM", _infer_rms_norm, params="eps:f32", reference=_ref_rms_norm,
    cases=_rms_norm_cases, flops=_flops(3), nbytes=_rw_bytes,
    ggml=lambda g, c, s, p, node: (g.ggml_rms_norm_inplace if _is_inplace(node)
                                   else g.ggml_rms_norm)(c, s[0], p.eps),
    doc="Per row: x / sqrt(mean(x^2) + eps)."))


rms_norm, rms_norm_inplace = op_builders(RMS_NORM, "rms_norm", params=("eps",))


# --- RMS_NORM_BACK ----------------------------------------------------------------------------

def _infer_rms_norm_back(srcs, p):
    a, b = need_pair("RMS_NORM_BACK", srcs, "a (gradient dz)", "b (forward input x)", (F32,))
    need(a.nb[0] == 4 and b.nb[0] == 4, "RMS_NORM_BACK",
         "rows must be packed (nb0 == 4): ggml's CPU kernel asserts it", a, b)
    return Out(a.type, a.ne)


def _ref_rms_norm_back(node, ins, p):
    dz, x = ins[0], ins[1]
    n = x.shape[-1]
    eps = _eps(p)
    # ggml's steps and float32 roundings: with n = 1 (or x ~ dz) the result is a cancellation
    # dz - dz * x^2 / (x^2 + eps) that float64 math would not reproduce
    sum_xx = _f32(_f32(x * x).sum(axis=-1, keepdims=True))
    sum_xdz = _f32(x * dz).sum(axis=-1, keepdims=True)
    rrms = _rsqrt(_f32(_f32(sum_xx / n) + eps))
    with np.errstate(divide="ignore", invalid="ignore"):
        sx = _f32(_f32(-sum_xdz) / _f32(sum_xx + _f32(eps * n)))
        return _f32(x * sx + dz) * rrms         # one rounding: ggml's compiler fuses it (FMA)


def _rms_norm_back_cases():
    out = []
    for eps in _EPS_GRID:
        for n in (64, 1025):
            def build(ctx, n=n, eps=eps):
                a = cc.leaf(ctx, "f32", [n, 5, 4, 3], "a")
                b = cc.leaf(ctx, "f32", [n, 5, 4, 3], "b")
                return rms_norm_back(ctx, a, b, eps)
            out.append(cc.case("RMS_NORM_BACK", dict(type=cc.ggml_type("f32"), ne=[n, 5, 4, 3], eps=eps),
                               build, init=_init_pm10, tags=("slow",) if n > 64 else ()))
    return out


RMS_NORM_BACK = register(OpDef(
    "RMS_NORM_BACK", _infer_rms_norm_back, params="eps:f32", reference=_ref_rms_norm_back,
    cases=_rms_norm_back_cases, flops=_flops(6), nbytes=_rw_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_rms_norm_back(c, s[0], s[1], p.eps),
    doc="Gradient of rms_norm: a = d(output), b = rms_norm's input x."))


def rms_norm_back(ctx, a, b, eps):
    return RMS_NORM_BACK.build(ctx, [a, b], dict(eps=eps))


# --- GROUP_NORM -------------------------------------------------------------------------------

def _infer_group_norm(srcs, p):
    a = need_src("GROUP_NORM", srcs, 0, "a")
    need_type("GROUP_NORM", a, (F32,), "a")
    if p.n_groups <= 0:
        raise ParamError(f"GROUP_NORM: n_groups must be > 0, got {p.n_groups} [a ne={a.ne}]")
    need(a.nb[0] == 4, "GROUP_NORM", "a's rows must be packed (nb0 == 4): ggml asserts it", a)
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _ref_group_norm(node, ins, p):
    x = ins[0]                                   # (ne3, ne2, ne1, ne0)
    ne2 = x.shape[1]
    per = (ne2 + p.n_groups - 1) // p.n_groups   # channels (ne2 slices) per group, as ggml
    eps = np.float64(np.float32(p.eps))
    y = np.empty_like(x)
    for start in range(0, ne2, per):
        g = x[:, start:start + per]
        d = g - g.mean(axis=(1, 2, 3), keepdims=True)
        y[:, start:start + per] = d / np.sqrt((d * d).mean(axis=(1, 2, 3), keepdims=True) + eps)
    return y


def _group_norm_cases():
    out = []
    for ne, groups, tags in (([64, 64, 320, 1], 32, ("slow",)), ([9, 9, 1280, 1], 32, ("slow",)),
                             ([8, 6, 40, 2], 32, ()), ([5, 3, 10, 1], 4, ()),
                             ([16, 4, 12, 1], 5, ())):
        def build(ctx, ne=ne, groups=groups):
            return group_norm(ctx, cc.leaf(ctx, "f32", ne, "a"), groups, 1e-6)
        out.append(cc.case("GROUP_NORM", dict(type=cc.ggml_type("f32"), ne=ne, num_groups=groups,
                                              eps=1e-6), build, tags=tags))
    return out


GROUP_NORM = register(OpDef(
    "GROUP_NORM", _infer_group_norm, params="n_groups:i32 eps:f32", reference=_ref_group_norm,
    cases=_group_norm_cases, flops=_flops(5), nbytes=_rw_bytes,
    ggml=lambda g, c, s, p, node: (g.ggml_group_norm_inplace if _is_inplace(node)
                                   else g.ggml_group_norm)(c, s[0], p.n_groups, p.eps),
    doc="Normalizes groups of ceil(ne2/n_groups) channels (ne2) over ne0*ne1, per ne3."))


group_norm, group_norm_inplace = op_builders(GROUP_NORM, "group_norm", params=("n_groups", "eps"))


# --- L2_NORM ----------------------------------------------------------------------------------

def _ref_l2_norm(node, ins, p):
    x = ins[0]
    nrm = _f32(np.sqrt(_f32(_f32(x * x).sum(axis=-1, keepdims=True))))    # sqrtf(sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x * _f32(1.0 / np.fmax(nrm, _eps(p)))      # fmaxf: a NaN norm gives eps


def _l2_norm_cases():
    out = []

    def add(n, eps, v=False, noncontig_rows=False, tags=()):
        out.append(_norm_case("L2_NORM", l2_norm, n, eps, v, noncontig_rows, tags, dict(eps=eps, v=v)))
    for eps in _EPS_GRID:
        for n in (64, 1025):
            slow = ("slow",) if n > 64 else ()
            add(n, eps, tags=slow)
            add(n, eps, v=True, tags=slow)
            add(n, eps, noncontig_rows=True, tags=slow)
    return out


L2_NORM = register(OpDef(
    "L2_NORM", _infer_unary_f32("L2_NORM"), params="eps:f32", reference=_ref_l2_norm,
    cases=_l2_norm_cases, flops=_flops(3), nbytes=_rw_bytes,
    ggml=lambda g, c, s, p, node: (g.ggml_l2_norm_inplace if _is_inplace(node)
                                   else g.ggml_l2_norm)(c, s[0], p.eps),
    doc="Per row: x / max(||x||_2, eps)."))


l2_norm, l2_norm_inplace = op_builders(L2_NORM, "l2_norm", params=("eps",))


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(RMS_NORM)
def _grad_rms_norm(g, node, grad):
    if g.needs(0):
        g.add(0, rms_norm_back(g.ctx, grad, node.src[0], RMS_NORM.p(node).eps))


@grad_rule(NORM)
def _grad_norm(g, node, grad):
    """Beyond ggml's list: y = (x - mean x) / s, s = sqrt(var x + eps):
    dx = (dy - mean(dy) - y * mean(dy * y)) / s, per row, from existing ops."""
    div, mul, sub = g.fn('div', 'mul', 'sub')
    mean = g.fn('mean')
    scale_bias, sqr, sqrt = g.fn('scale_bias', 'sqr', 'sqrt')
    if not g.needs(0):
        return
    c, x, y = g.ctx, node.src[0], node
    s = sqrt(c, scale_bias(c, mean(c, sqr(c, sub(c, x, mean(c, x)))), 1.0, NORM.p(node).eps))
    num = sub(c, sub(c, grad, mean(c, grad)), mul(c, y, mean(c, mul(c, grad, y))))
    g.add(0, div(c, num, s))
