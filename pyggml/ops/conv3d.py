"""3-D convolution: IM2COL_3D (ggml_im2col_3d) and CONV_3D (ggml_conv_3d_direct).

ggml packs channels and batch into dim 3: an input is [IW, IH, ID, N*IC] (plane n*IC + ic), a
kernel [KW, KH, KD, OC*IC] (plane oc*IC + ic), CONV_3D's result [OW, OH, OD, N*OC] and
IM2COL_3D's [IC*KD*KH*KW, OW, OH, N*OD]. N is ne3 / IC, C integer division as ggml (extra
planes are ignored; none at all gives an empty result). An F16 kernel makes ggml's CONV_3D
round the input to F16 (its im2col buffer has the kernel's type); the reference does the same.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import ParamError
from ..tensor import is_contiguous
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from ..types import as_type
from . import cases_common as cc
from .conv import _conv_output_size
from .conv import _f16_round
from .conv import _need_pos
from .conv import _readable
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32, _F16 = GGMLType.F32, GGMLType.F16


def _io_bytes(node) -> int:
    return nbytes(node) + nbytes(node.src[0]) + nbytes(node.src[1])


def _out_sizes(op, a, b, p):
    _need_pos(op, s0=p.s0, s1=p.s1, s2=p.s2, d0=p.d0, d1=p.d1, d2=p.d2)
    ow = _conv_output_size(b.ne[0], a.ne[0], p.s0, p.p0, p.d0)
    oh = _conv_output_size(b.ne[1], a.ne[1], p.s1, p.p1, p.d1)
    od = _conv_output_size(b.ne[2], a.ne[2], p.s2, p.p2, p.d2)
    need(ow > 0 and oh > 0 and od > 0, op, "b too small compared to a", a, b)
    return ow, oh, od


def _patches(x, ic, n, od, oh, ow, kd, kh, kw, p):
    """Input planes x (ne3, ID, IH, IW) -> (N, OD, OH, OW, IC, KD, KH, KW), zero outside."""
    x = x[:n * ic].reshape(n, ic, *x.shape[1:])
    sizes = x.shape[2:]
    x = _readable(x, (2, 3, 4))          # an empty axis: every window there is padding

    def idx(o, k, s, d, pad, size):
        i = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d - pad     # (O, K)
        return np.clip(i, 0, max(size - 1, 0)), (i >= 0) & (i < size)
    iz, vz = idx(od, kd, p.s2, p.d2, p.p2, sizes[0])
    iy, vy = idx(oh, kh, p.s1, p.d1, p.p1, sizes[1])
    ix, vx = idx(ow, kw, p.s0, p.d0, p.p0, sizes[2])
    g = x[:, :, iz[:, None, None, :, None, None], iy[None, :, None, None, :, None],
          ix[None, None, :, None, None, :]]                  # (N, IC, OD, OH, OW, KD, KH, KW)
    mask = vz[:, None, None, :, None, None] & vy[None, :, None, None, :, None] & \
        vx[None, None, :, None, None, :]
    # not g * mask: a clipped read of an inf is NaN times 0 (ggml's im2col writes 0 there)
    return np.where(mask, g, 0.0).transpose(0, 2, 3, 4, 1, 5, 6, 7)


# --- IM2COL_3D -----------------------------------------------------------------------------------

def _infer_im2col_3d(srcs, p):
    a = need_src("IM2COL_3D", srcs, 0, "a (kernel)")
    b = need_src("IM2COL_3D", srcs, 1, "b (input)")
    if p.IC <= 0:
        raise ParamError(f"IM2COL_3D: IC={p.IC} must be > 0 [{b.name!r}]")
    dst = as_type(p.dst_type)
    if dst not in (_F32, _F16):
        raise ParamError(f"IM2COL_3D: dst_type must be f32 or f16, got {dst.tname}")
    need_type("IM2COL_3D", b, (_F32,), "input b")
    need(b.nb[0] == 4, "IM2COL_3D", "the input's rows must be contiguous (nb0 == 4)", b)
    ow, oh, od = _out_sizes("IM2COL_3D", a, b, p)
    return Out(dst, [a.ne[0] * a.ne[1] * a.ne[2] * p.IC, ow, oh, od * (b.ne[3] // p.IC)])


def _ref_im2col_3d(node, ins, p):
    a = node.src[0]
    ow, oh, n_od = node.ne[1], node.ne[2], node.ne[3]
    n = node.src[1].ne[3] // p.IC
    if n == 0:
        return np.zeros(node.ne[::-1])
    g = _patches(ins[1], p.IC, n, n_od // n, oh, ow, a.ne[2], a.ne[1], a.ne[0], p)
    return g.reshape(node.ne[::-1])


def _im2col_3d_cases():
    out = []

    def add(tk, td, ne_in, ne_k, ic, s, pd, d, v):
        def build(ctx):
            x = cc.leaf(ctx, "f32", ne_in, "input")
            if v:
                from .view import view_4d
                x = view_4d(ctx, x, ne_in[0] - 2, ne_in[1] - 2, ne_in[2] - 2, ne_in[3] - 2,
                            x.nb[1], x.nb[2], x.nb[3], 0)
                x.name = "view_of_input"
            return im2col_3d(ctx, cc.leaf(ctx, tk, ne_k, "kernel"), x, ic, *s, *pd, *d,
                             as_type(td))
        out.append(cc.case("IM2COL_3D", dict(
            type_input=cc.ggml_type("f32"), type_kernel=cc.ggml_type(tk), dst_type=cc.ggml_type(td),
            ne_input=list(ne_in),
            ne_kernel=list(ne_k), IC=ic, s0=s[0], s1=s[1], s2=s[2], p0=pd[0], p1=pd[1], p2=pd[2],
            d0=d[0], d1=d[1], d2=d[2], v=v), build, exact=True))

    for tk, td in (("f32", "f32"), ("f16", "f32"), ("f16", "f16")):
        add(tk, td, (10, 10, 10, 9), (3, 3, 3, 1), 3, (1, 1, 1), (1, 1, 1), (1, 1, 1), False)
    strides, pads, dils = [(1, 3)] * 3, [(0, 3)] * 3, [(1, 3)] * 3
    for g in itertools.product(*strides, *pads, *dils, (1, 3), (False, True)):
        add("f32", "f32", (20, 20, 10, 3), (3, 3, 3, 3), g[9], g[0:3], g[3:6], g[6:9], g[10])
    return out


IM2COL_3D = register(OpDef(
    "IM2COL_3D", _infer_im2col_3d,
    params="s0:i32 s1:i32 s2:i32 p0:i32 p1:i32 p2:i32 d0:i32 d1:i32 d2:i32 IC:i32",
    reference=_ref_im2col_3d, cases=_im2col_3d_cases, exact=True,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[1]),
    extra=dict(hints_of=lambda node: dict(dst_type=int(node.type))),   # for set_op_params
    ggml=lambda g, c, s, p, node: g.ggml_im2col_3d(c, s[0], s[1], p.IC, p.s0, p.s1, p.s2, p.p0,
                                                   p.p1, p.p2, p.d0, p.d1, p.d2, int(node.type)),
    doc="3-D patches as rows: input [IW, IH, ID, N*IC] -> [IC*KD*KH*KW, OW, OH, N*OD]."))


def im2col_3d(ctx, a, b, IC, s0, s1, s2, p0, p1, p2, d0, d1, d2, dst_type):
    """ggml_im2col_3d(a = kernel [KW, KH, KD, OC*IC], b = input [IW, IH, ID, N*IC], ...)."""
    # dst_type is not an op_param in ggml (it is the result type); it reaches infer as a hint
    return IM2COL_3D.build(ctx, [a, b], dict(s0=s0, s1=s1, s2=s2, p0=p0, p1=p1, p2=p2, d0=d0,
                                             d1=d1, d2=d2, IC=IC),
                           hints=dict(dst_type=int(as_type(dst_type))))


# --- CONV_3D --------------------------------------------------------------------------------

def _infer_conv_3d(srcs, p):
    a = need_src("CONV_3D", srcs, 0, "a (kernel)")
    b = need_src("CONV_3D", srcs, 1, "b (input)")
    if min(p.c, p.n, p.oc) <= 0:
        raise ParamError(f"CONV_3D: c={p.c}, n={p.n}, oc={p.oc} must be > 0 [{a.name!r}]")
    need(a.ne[3] == p.c * p.oc, "CONV_3D", f"kernel planes a.ne[3]={a.ne[3]} != c*oc="
         f"{p.c * p.oc}", a)
    need(b.ne[3] == p.c * p.n, "CONV_3D", f"input planes b.ne[3]={b.ne[3]} != c*n={p.c * p.n}", b)
    need_type("CONV_3D", a, (_F32, _F16), "kernel a")
    need_type("CONV_3D", b, (_F32,), "input b")
    need(is_contiguous(a), "CONV_3D", "the kernel must be contiguous", a)
    ow, oh, od = _out_sizes("CONV_3D", a, b, p)
    return Out(_F32, [ow, oh, od, p.oc * p.n])


def _ref_conv_3d(node, ins, p):
    k, x = ins[0], ins[1]
    if node.src[0].type == _F16:
        x = _f16_round(x)
    kw, kh, kd = node.src[0].ne[:3]
    g = _patches(x, p.c, p.n, node.ne[2], node.ne[1], node.ne[0], kd, kh, kw, p)
    k = k.reshape(p.oc, p.c, kd, kh, kw)
    y = np.einsum("nzyxcdhw,ocdhw->nozyx", g, k)                  # (N, OC, OD, OH, OW)
    return y.reshape(node.ne[::-1])


def _conv_3d_cases():
    out = []

    def add(n, ic, idd, ih, iw, oc, kd, kh, kw, s, pd, d, tk):
        def build(ctx):
            return conv_3d_direct(ctx, cc.leaf(ctx, tk, (kw, kh, kd, ic * oc), "kernel"),
                                  cc.leaf(ctx, "f32", (iw, ih, idd, ic * n), "input"),
                                  *s, *pd, *d, ic, n, oc)
        out.append(cc.case("CONV_3D", dict(
            N=n, IC=ic, ID=idd, IH=ih, IW=iw, OC=oc, KD=kd, KH=kh, KW=kw, s0=s[0], s1=s[1],
            s2=s[2], p0=pd[0], p1=pd[1], p2=pd[2], d0=d[0], d1=d[1], d2=d[2],
            type_kernel=cc.ggml_type(tk)), build))

    def fits(ins, k, s, pd, d):
        return _conv_output_size(ins, k, s, pd, d) > 0

    iw, ih, idd = 20, 22, 18
    for tk in ("f32", "f16"):
        for n, ic, oc, s0, p1, d2 in itertools.product((1, 2), (1, 3), (1, 4), (1, 2), (0, 1),
                                                       (1, 2)):
            if not all(fits(x, 3, s0, p1, d2) for x in (iw, ih, idd)):
                continue
            add(n, ic, idd, ih, iw, oc, 3, 3, 3, (s0,) * 3, (p1,) * 3, (d2,) * 3, tk)
            # asymmetric kernel and params
            add(n, ic, idd, ih, iw, oc, 3, 1, 5, (2, 1, 1), (2, 0, 1), (1, 1, 2), tk)
        add(1, 4, 8, 8, 8, 8, 1, 1, 1, (1, 1, 1), (0, 0, 0), (1, 1, 1), tk)    # kernel size 1
    return cc.unique(out)


CONV_3D = register(OpDef(
    "CONV_3D", _infer_conv_3d,
    params="s0:i32 s1:i32 s2:i32 p0:i32 p1:i32 p2:i32 d0:i32 d1:i32 d2:i32 c:i32 n:i32 oc:i32",
    reference=_ref_conv_3d, cases=_conv_3d_cases, max_nmse=5e-4,
    flops=lambda node: 2 * nelements(node) * nelements(node.src[0]) // max(node.op_params[11], 1),
    nbytes=_io_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_conv_3d_direct(c, s[0], s[1], p.s0, p.s1, p.s2, p.p0,
                                                        p.p1, p.p2, p.d0, p.d1, p.d2, p.c, p.n,
                                                        p.oc),
    doc="3-D convolution: kernel [KW, KH, KD, OC*IC], input [IW, IH, ID, N*IC] -> "
        "[OW, OH, OD, N*OC]."))


def conv_3d_direct(ctx, a, b, s0, s1, s2, p0, p1, p2, d0, d1, d2, c, n, oc):
    """ggml_conv_3d_direct(a = kernel, b = input, strides, paddings, dilations, c = IC, n = N,
    oc = OC)."""
    return CONV_3D.build(ctx, [a, b], dict(s0=s0, s1=s1, s2=s2, p0=p0, p1=p1, p2=p2, d0=d0,
                                           d1=d1, d2=d2, c=c, n=n, oc=oc))
