"""DeepSeek V4 hyper-connections: DSV4_HC_COMB, DSV4_HC_PRE, DSV4_HC_POST (ggml_dsv4_hc_*).

The residual stream is hc = 4 parallel streams. Per token t, as ggml's CPU kernels:
  COMB: logits[d, s] = mixes[2*hc + d + hc*s] * scale[2] + base[2*hc + d + hc*s]; a softmax over
        d, + eps; then normalise over s (sum + eps), and n_iter - 1 more rounds of over d, over
        s (Sinkhorn) -> [hc (d), hc (s), n_tokens]
  PRE:  out[i] = sum_h x[i, h] * w[h]                      x [n_embd, hc, T] -> [n_embd, T]
  POST: out[i, d] = x[i] * post[d] + sum_s res[i, s] * comb[d, s]  -> [n_embd, hc, T]
"""
from __future__ import annotations

import numpy as np

from ..errors import ParamError
from ..tensor import nbytes
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32 = GGMLType.F32
HC = 4                  # the only stream count ggml implements


def _f32s(op, srcs, names):
    ts = [need_src(op, srcs, i, n) for i, n in enumerate(names)]
    for t, n in zip(ts, names):
        need_type(op, t, (_F32,), n)
    return ts


def _io_bytes(node) -> int:
    return nbytes(node) + sum(nbytes(t) for t in node.src if t is not None)


def _init(ranges):
    """test_dsv4_hc's value ranges by tensor name."""
    def init(t, rng):
        lo, hi = ranges.get(t.name, (-1.0, 1.0))
        return rng.uniform(lo, hi, size=t.ne[::-1])
    return init


_RANGES = {"mixes": (-2.0, 2.0), "scale": (-0.5, 0.5), "base": (-0.25, 0.25),
           "weights": (0.0, 1.0), "comb": (0.0, 1.0), "post": (0.0, 2.0)}


# --- DSV4_HC_COMB ---------------------------------------------------------------------------

def _infer_comb(srcs, p):
    mixes, scale, base = _f32s("DSV4_HC_COMB", srcs, ("mixes", "scale", "base"))
    if p.n_iter <= 0:
        raise ParamError(f"DSV4_HC_COMB: n_iter={p.n_iter} must be > 0 [{mixes.name!r}]")
    dim = (2 + HC) * HC
    need(mixes.ne[0] == dim and mixes.ne[2] == 1 and mixes.ne[3] == 1, "DSV4_HC_COMB",
         f"mixes must be [(2 + hc)*hc = {dim}, n_tokens] (hc = {HC}, the only one ggml has)",
         mixes)
    need(scale.ne[0] >= 3 and scale.ne[1:] == [1, 1, 1], "DSV4_HC_COMB",
         "scale must be a vector of at least 3", scale)
    need(base.ne == [dim, 1, 1, 1], "DSV4_HC_COMB", f"base must be a vector of {dim}", base)
    return Out(_F32, [HC, HC, mixes.ne[1]])


def _ref_comb(node, ins, p):
    f32 = np.float32
    mixes, scale, base = ins[0][0, 0], ins[1].reshape(-1), ins[2].reshape(-1)   # (T, dim)
    eps = float(f32(p.eps))
    lg = mixes[:, 2 * HC:] * scale[2] + base[2 * HC:]           # (T, s*hc + d)
    lg = lg.reshape(-1, HC, HC)                                   # (T, s, d)
    e = np.exp(lg - lg.max(axis=2, keepdims=True))
    c = e / e.sum(axis=2, keepdims=True) + eps                    # softmax over d
    c = c / (c.sum(axis=1, keepdims=True) + eps)                  # normalise over s
    for _ in range(1, p.n_iter):
        c = c / (c.sum(axis=2, keepdims=True) + eps)
        c = c / (c.sum(axis=1, keepdims=True) + eps)
    return c                                                      # (T, s, d) = ggml's [d, s, T]


def _comb_cases():
    return [cc.case("DSV4_HC_COMB", dict(n_tokens=t, n_iter=it, eps=1e-6),
                    lambda ctx, t=t, it=it: dsv4_hc_comb(
                        ctx, cc.leaf(ctx, "f32", ((2 + HC) * HC, t), "mixes"),
                        cc.leaf(ctx, "f32", (3,), "scale"),
                        cc.leaf(ctx, "f32", ((2 + HC) * HC,), "base"), 1e-6, it),
                    init=_init(_RANGES))
            for t, it in ((1, 1), (17, 4), (257, 8), (17, 20))]


DSV4_HC_COMB = register(OpDef(
    "DSV4_HC_COMB", _infer_comb, params="eps:f32 n_iter:i32", reference=_ref_comb,
    cases=_comb_cases, nbytes=_io_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_dsv4_hc_comb(c, s[0], s[1], s[2], p.eps, p.n_iter),
    doc="Hyper-connection mixing matrices: softmax then Sinkhorn normalisation -> "
        "[hc, hc, n_tokens]."))


def dsv4_hc_comb(ctx, mixes, scale, base, eps, n_iter):
    """ggml_dsv4_hc_comb(mixes, scale, base, eps, n_iter)."""
    return DSV4_HC_COMB.build(ctx, [mixes, scale, base], dict(eps=float(eps), n_iter=n_iter))


# --- DSV4_HC_PRE ----------------------------------------------------------------------------

def _infer_pre(srcs, p):
    x, w = _f32s("DSV4_HC_PRE", srcs, ("x", "weights"))
    need(x.ne[1] > 0 and x.ne[3] == 1, "DSV4_HC_PRE", "x must be [n_embd, hc, n_tokens]", x)
    need(w.ne == [x.ne[1], x.ne[2], 1, 1], "DSV4_HC_PRE",
         f"weights must be [hc = {x.ne[1]}, n_tokens = {x.ne[2]}]", x, w)
    return Out(_F32, [x.ne[0], x.ne[2]])


def _hc_cases(op, build):
    return [cc.case(op, dict(n_embd=e, n_tokens=t), lambda ctx, e=e, t=t: build(ctx, e, t),
                    init=_init(_RANGES))
            for e, t in ((1, 1), (31, 17), (128, 257), (4096, 21))]


DSV4_HC_PRE = register(OpDef(
    "DSV4_HC_PRE", _infer_pre,
    reference=lambda node, ins, p: np.einsum("thi,th->ti", ins[0][0], ins[1][0, 0]),
    cases=lambda: _hc_cases("DSV4_HC_PRE", lambda ctx, e, t: dsv4_hc_pre(
        ctx, cc.leaf(ctx, "f32", (e, HC, t), "x"), cc.leaf(ctx, "f32", (HC, t), "weights"))),
    nbytes=_io_bytes, ggml=lambda g, c, s, p, node: g.ggml_dsv4_hc_pre(c, s[0], s[1]),
    doc="The streams weighted into one: x [n_embd, hc, T], weights [hc, T] -> [n_embd, T]."))


def dsv4_hc_pre(ctx, x, weights):
    """ggml_dsv4_hc_pre(x, weights)."""
    return DSV4_HC_PRE.build(ctx, [x, weights])


# --- DSV4_HC_POST ---------------------------------------------------------------------------

def _infer_post(srcs, p):
    x, res, post, comb = _f32s("DSV4_HC_POST", srcs, ("x", "residual", "post", "comb"))
    e, t, hc = x.ne[0], x.ne[1], res.ne[1]
    need(hc > 0 and x.ne[2] == 1 and x.ne[3] == 1, "DSV4_HC_POST", "x must be [n_embd, n_tokens]",
         x)
    need(res.ne == [e, hc, t, 1], "DSV4_HC_POST", f"residual must be [{e}, hc, {t}]", x, res)
    need(post.ne == [hc, t, 1, 1], "DSV4_HC_POST", f"post must be [{hc}, {t}]", post)
    need(comb.ne == [hc, hc, t, 1], "DSV4_HC_POST", f"comb must be [{hc}, {hc}, {t}]", comb)
    return Out(_F32, [e, hc, t])


def _ref_post(node, ins, p):
    x, res, post, comb = ins[0][0, 0], ins[1][0], ins[2][0, 0], ins[3][0]   # (T,E) (T,S,E) (T,D) (T,S,D)
    return x[:, None, :] * post[:, :, None] + np.einsum("tse,tsd->tde", res, comb)


DSV4_HC_POST = register(OpDef(
    "DSV4_HC_POST", _infer_post, reference=_ref_post,
    cases=lambda: _hc_cases("DSV4_HC_POST", lambda ctx, e, t: dsv4_hc_post(
        ctx, cc.leaf(ctx, "f32", (e, t), "x"), cc.leaf(ctx, "f32", (e, HC, t), "residual"),
        cc.leaf(ctx, "f32", (HC, t), "post"), cc.leaf(ctx, "f32", (HC, HC, t), "comb"))),
    nbytes=_io_bytes, ggml=lambda g, c, s, p, node: g.ggml_dsv4_hc_post(c, *s[:4]),
    doc="The layer output spread back over the streams and mixed with the residual streams "
        "-> [n_embd, hc, T]."))


def dsv4_hc_post(ctx, x, residual, post, comb):
    """ggml_dsv4_hc_post(x, residual, post, comb)."""
    return DSV4_HC_POST.build(ctx, [x, residual, post, comb])
