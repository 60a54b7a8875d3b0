"""The gradients of IM2COL and POOL_2D: IM2COL_BACK, POOL_2D_BACK and the two gradient rules
that use them (ggml_compute_backward's cases for GGML_OP_IM2COL and GGML_OP_POOL_2D).

- im2col_back(a = d(im2col output), b = the conv kernel (its shape only), ne = the image's
  shape, s0, s1, p0, p1, d0, d1, is_2D) -> F32 [ne]: each image sample is the sum of the
  gradient columns that copied it (ggml_compute_forward_im2col_back_f32).
- pool_2d_back(a = d(pool output), af = the pooling's input, op, k0, k1, s0, s1, p0, p1)
  -> F32 af's shape: max pooling sends each output's gradient to the first maximum of its
  window (ggml's `val <= maxval` scan from -FLT_MAX, so a window of only -FLT_MAX/-inf
  sends nothing); average pooling spreads grad / (k0*k1) over the window's in-range samples
  (ggml_compute_forward_pool_2d_back).

ggml's CPU kernels address the gradient as packed rows and read af with the result's
strides, so both take contiguous F32 (ggml does not check; pyggml refuses the rest). ggml
has no test-backend-ops cases for these ops (its grad mode reaches them through IM2COL and
POOL_2D); the cases here are pyggml's, shaped like those forward cases.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..tensor import is_contiguous
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from . import cases_common as cc
from .conv import IM2COL
from .conv import OP_POOL_AVG
from .conv import OP_POOL_MAX
from .conv import POOL_2D
from .conv import _check_pool_op
from .conv import _conv_output_size
from .conv import _need_pos
from .conv import _pool_output_size
from .conv import pool_2d_grid
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32, _F16 = GGMLType.F32, GGMLType.F16
_POOL_NAMES = {OP_POOL_MAX: "max", OP_POOL_AVG: "avg"}
_FLT_MAX = float(np.finfo(np.float32).max)


# --- IM2COL_BACK --------------------------------------------------------------------------------

def _im2col_out_ne(k_ne, ne, p):
    """The im2col result's ne for a kernel of k_ne over an image of ne (ggml_im2col)."""
    if p.is_2D:
        oh = _conv_output_size(ne[1], k_ne[1], p.s1, p.p1, p.d1)
        ow = _conv_output_size(ne[0], k_ne[0], p.s0, p.p0, p.d0)
        return [k_ne[2] * k_ne[1] * k_ne[0], ow, oh, ne[3]]
    ow = _conv_output_size(ne[0], k_ne[0], p.s0, p.p0, p.d0)
    return [k_ne[1] * k_ne[0], ow, ne[2], 1]


def _infer_im2col_back(srcs, p):
    a = need_src("IM2COL_BACK", srcs, 0, "a (gradient of the im2col result)")
    b = need_src("IM2COL_BACK", srcs, 1, "b (conv kernel)")
    ne = getattr(p, "ne", None)
    need(ne is not None and len(ne) == 4, "IM2COL_BACK", "the image shape ne (4 sizes) is "
         "required", a, b)
    ne = [int(x) for x in ne]
    need_type("IM2COL_BACK", a, (_F32,), "a (ggml's CPU kernel asserts F32)")
    need_type("IM2COL_BACK", b, (_F32, _F16), "b")
    if p.is_2D:
        _need_pos("IM2COL_BACK", s0=p.s0, s1=p.s1, d0=p.d0, d1=p.d1)
        need(b.ne[2] == ne[2], "IM2COL_BACK", f"channels differ: b.ne[2]={b.ne[2]} ne[2]={ne[2]}",
             b)
    else:
        _need_pos("IM2COL_BACK", s0=p.s0, d0=p.d0)
        need(b.ne[1] == ne[1] and ne[3] == 1, "IM2COL_BACK", f"a 1-D image ne={ne} needs "
             f"ne[1] == b.ne[1] channels and ne[3] == 1", b)
    want = _im2col_out_ne(b.ne, ne, p)
    need(list(a.ne) == want, "IM2COL_BACK", f"a must have the im2col result's shape {want} "
         f"for an image of ne={ne}", a, b)
    need(is_contiguous(a), "IM2COL_BACK", "a must be contiguous (ggml's kernel indexes it "
         "as packed rows)", a)
    return Out(_F32, ne)


def _ref_im2col_back(node, ins, p):
    """The adjoint of im2col: scatter-add every column entry back to the sample it copied."""
    k = node.src[1]
    ne = list(node.ne)
    g = ins[0]
    if p.is_2D:
        N, IC, IH, IW, KH = ne[3], ne[2], ne[1], ne[0], k.ne[1]
        OH, OW = node.src[0].ne[2], node.src[0].ne[1]
        s1, p1, d1 = p.s1, p.p1, p.d1
    else:
        N, IC, IH, IW, KH = ne[2], ne[1], 1, ne[0], 1
        OH, OW = 1, node.src[0].ne[1]
        s1, p1, d1 = 1, 0, 1
    KW = k.ne[0]
    g = g.reshape(N, OH, OW, IC, KH, KW)
    out = np.zeros((N, IC, IH, IW))
    for kh in range(KH):
        ih = np.arange(OH) * s1 + kh * d1 - p1
        vh = (ih >= 0) & (ih < IH)
        for kw in range(KW):
            iw = np.arange(OW) * p.s0 + kw * p.d0 - p.p0
            vw = (iw >= 0) & (iw < IW)
            part = g[:, vh][:, :, vw][..., kh, kw]              # (N, oh', ow', IC)
            ihv, iwv = ih[vh], iw[vw]
            np.add.at(out, (slice(None), slice(None), ihv[:, None], iwv[None, :]),
                      part.transpose(0, 3, 1, 2))
    return out.reshape(node.ne[::-1])


def _im2col_back_cases():
    """The shapes of IM2COL's grad-mode cases (1-D (20, 2, 2) with every s0/p0/d0 of the
    grid, 2-D (10, 10, 3) and (20, 20, 2, 2) with strides, paddings, dilations), F32 and
    F16 kernels."""
    out = []

    def add(tk, ne_in, ne_k, s0, s1, p0, p1, d0, d1, is_2d):
        pn = type("P", (), dict(s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1, is_2D=is_2d))
        ne_g = _im2col_out_ne(list(ne_k), list(ne_in), pn)

        def f(ctx):
            grad = cc.leaf(ctx, "f32", ne_g, "grad")
            ker = cc.leaf(ctx, tk, ne_k, "kernel")
            return im2col_back(ctx, grad, ker, list(ne_in), s0, s1, p0, p1, d0, d1, is_2d)
        out.append(cc.case("IM2COL_BACK", dict(type_kernel=cc.ggml_type(tk), ne_input=list(ne_in),
                                               ne_kernel=list(ne_k), s0=s0, s1=s1, p0=p0, p1=p1,
                                               d0=d0, d1=d1, is_2D=is_2d), f))

    for s0 in (1, 3):
        for p0 in (0, 3):
            for d0 in (1, 3):
                add("f32", (20, 2, 2, 1), (3, 2, 2, 1), s0, 0, p0, 0, d0, 0, False)
    add("f32", (10, 10, 3, 1), (3, 3, 3, 1), 1, 1, 1, 1, 1, 1, True)
    add("f16", (10, 10, 3, 1), (3, 3, 3, 1), 1, 1, 1, 1, 1, 1, True)
    for s0, s1, p0, p1, d0, d1 in ((1, 1, 0, 0, 1, 1), (3, 1, 0, 3, 1, 3), (1, 3, 3, 0, 3, 1),
                                   (3, 3, 3, 3, 3, 3), (3, 3, 0, 0, 1, 1), (1, 1, 3, 3, 3, 3)):
        add("f32", (20, 20, 2, 2), (3, 3, 2, 2), s0, s1, p0, p1, d0, d1, True)
    add("f16", (12, 12, 2, 2), (3, 4, 2, 2), 2, 1, 1, 2, 1, 2, True)
    return out


def _im2col_back_ggml(g, c, s, p, node):
    ne = (ctypes.c_int64 * 4)(*[int(x) for x in node.ne])
    return g.ggml_im2col_back(c, s[0], s[1], ne, p.s0, p.s1, p.p0, p.p1, p.d0, p.d1,
                              bool(p.is_2D))


IM2COL_BACK = register(OpDef(
    "IM2COL_BACK", _infer_im2col_back,
    params="s0:i32 s1:i32 p0:i32 p1:i32 d0:i32 d1:i32 is_2D:i32",
    reference=_ref_im2col_back, cases=_im2col_back_cases,
    flops=lambda n: nelements(n.src[0]),
    nbytes=lambda n: nbytes(n) + nbytes(n.src[0]),
    ggml=_im2col_back_ggml,
    doc="Gradient of im2col: the image [ne] whose samples sum the gradient columns "
        "that copied them (b, the kernel, gives only its shape)."))


def im2col_back(ctx, a, b, ne, s0, s1, p0, p1, d0, d1, is_2D):
    """ggml_im2col_back(a = d(im2col result), b = conv kernel, ne = image shape, ...) -> F32."""
    ne = [int(x) for x in ne] + [1] * (4 - len(ne))
    return IM2COL_BACK.build(ctx, [a, b], dict(s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1,
                                               is_2D=int(bool(is_2D))), hints=dict(ne=ne))


@grad_rule(IM2COL, ignore=(0,))
def _grad_im2col(g, node, grad):
    """src[0] (the kernel) is only used for its shape; the image gets im2col_back."""
    if g.needs(1):
        p = IM2COL.p(node)
        g.add(1, im2col_back(g.ctx, grad, node.src[0], list(node.src[1].ne), p.s0, p.s1,
                             p.p0, p.p1, p.d0, p.d1, p.is_2D))


# --- POOL_2D_BACK -------------------------------------------------------------------------------

def _infer_pool_2d_back(srcs, p):
    a = need_src("POOL_2D_BACK", srcs, 0, "a (gradient of the pool result)")
    af = need_src("POOL_2D_BACK", srcs, 1, "af (the pooling's input)")
    _check_pool_op("POOL_2D_BACK", p.op)
    _need_pos("POOL_2D_BACK", k0=p.k0, k1=p.k1, s0=p.s0, s1=p.s1)
    need_type("POOL_2D_BACK", a, (_F32,), "a")
    need_type("POOL_2D_BACK", af, (_F32,), "af (ggml's kernel reads it as the F32 result)")
    want = [_pool_output_size(af.ne[0], p.k0, p.s0, p.p0),
            _pool_output_size(af.ne[1], p.k1, p.s1, p.p1), af.ne[2], af.ne[3]]
    need(list(a.ne) == want, "POOL_2D_BACK", f"a must have the pool result's shape {want}",
         a, af)
    need(is_contiguous(a) and is_contiguous(af), "POOL_2D_BACK", "a and af must be "
         "contiguous (ggml's kernel walks them as packed planes)", a, af)
    return Out(_F32, af.ne)


def _ref_pool_2d_back(node, ins, p):
    g, xf = ins[0], ins[1]
    a = node.src[0]
    OW, OH = a.ne[0], a.ne[1]
    IW, IH = node.ne[0], node.ne[1]
    planes = node.ne[2] * node.ne[3]
    g = g.reshape(planes, OH, OW)
    xf = xf.reshape(planes, IH, IW).astype(np.float32)
    out = np.zeros((planes, IH, IW))
    ka = p.k0 * p.k1
    for oy in range(OH):
        for ox in range(OW):
            iy, ix = oy * p.s1 - p.p1, ox * p.s0 - p.p0
            g0 = g[:, oy, ox]
            if p.op == OP_POOL_AVG:
                for ky in range(p.k1):
                    for kx in range(p.k0):
                        if 0 <= iy + ky < IH and 0 <= ix + kx < IW:
                            out[:, iy + ky, ix + kx] += g0 / ka
                continue
            best = np.full(planes, -_FLT_MAX, dtype=np.float32)
            ky_at = np.full(planes, -1)
            kx_at = np.full(planes, -1)
            for ky in range(p.k1):          # ggml's scan: replace unless val <= maxval
                if not 0 <= iy + ky < IH:
                    continue
                for kx in range(p.k0):
                    if not 0 <= ix + kx < IW:
                        continue
                    v = xf[:, iy + ky, ix + kx]
                    take = ~(v <= best)
                    best = np.where(take, v, best)
                    ky_at = np.where(take, ky, ky_at)
                    kx_at = np.where(take, kx, kx_at)
            hit = np.nonzero(ky_at >= 0)[0]
            np.add.at(out, (hit, iy + ky_at[hit], ix + kx_at[hit]), g0[hit])
    return out.reshape(node.ne[::-1])


def _pool_2d_back_cases():
    """POOL_2D's grid (10x10x3 input, k 1/3, s 1/2, p 0/1, max and avg) as backward cases."""
    out = []
    for pool, k0, k1, s0, s1, p0, p1 in pool_2d_grid():
        ne = [10, 10, 3, 1]
        ne_g = [_pool_output_size(ne[0], k0, s0, p0), _pool_output_size(ne[1], k1, s1, p1),
                ne[2], ne[3]]

        def f(ctx, a=(ne, ne_g, pool, k0, k1, s0, s1, p0, p1)):
            grad = cc.leaf(ctx, "f32", a[1], "grad")
            af = cc.leaf(ctx, "f32", a[0], "input")
            return pool_2d_back(ctx, grad, af, *a[2:])
        out.append(cc.case(
            "POOL_2D_BACK",
            dict(pool_type=_POOL_NAMES[pool], ne_input=ne, k0=k0, k1=k1,
                 s0=s0, s1=s1, p0=p0, p1=p1), f))
    return out


POOL_2D_BACK = register(OpDef(
    "POOL_2D_BACK", _infer_pool_2d_back,
    params="op:i32 k0:i32 k1:i32 s0:i32 s1:i32 p0:i32 p1:i32",
    reference=_ref_pool_2d_back, cases=_pool_2d_back_cases,
    nbytes=lambda n: nbytes(n) + nbytes(n.src[0]) + nbytes(n.src[1]),
    ggml=lambda g, c, s, p, node: g.ggml_pool_2d_back(c, s[0], s[1], p.op, p.k0, p.k1, p.s0,
                                                      p.s1, float(p.p0), float(p.p1)),
    doc="Gradient of pool_2d: max sends each output's gradient to its window's first "
        "maximum in af, avg spreads grad/(k0*k1) over the window."))


def pool_2d_back(ctx, a, af, op, k0, k1, s0, s1, p0, p1):
    """ggml_pool_2d_back(a = d(pool result), af = pool input, op, k0, k1, s0, s1, p0, p1)
    -> F32 of af's shape (p0, p1 floats, stored as int as in ggml)."""
    return POOL_2D_BACK.build(ctx, [a, af], dict(op=int(op), k0=k0, k1=k1, s0=s0, s1=s1,
                                                 p0=int(p0), p1=int(p1)))


@grad_rule(POOL_2D)
def _grad_pool_2d(g, node, grad):
    if g.needs(0):
        p = POOL_2D.p(node)
        g.add(0, pool_2d_back(g.ctx, grad, node.src[0], p.op, p.k0, p.k1, p.s0, p.s1,
                              p.p0, p.p1))
