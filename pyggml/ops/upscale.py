"""Resampling: UPSCALE (ggml_upscale, ggml_upscale_ext, ggml_interpolate).

Semantics are ggml's CPU kernel (ops.cpp): nearest, bilinear (optionally antialiased) and
bicubic on dims 0 and 1, nearest on dims 2 and 3; align-corners as a flag. Coordinates and
weights are computed in float32 exactly as ggml does, the sums in float64.
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
from .view import transpose as _transpose

_F32 = GGMLType.F32
_F32_ONLY = (_F32,)


SCALE_MODE_NEAREST = 0
SCALE_MODE_BILINEAR = 1
SCALE_MODE_BICUBIC = 2
SCALE_FLAG_ALIGN_CORNERS = 1 << 8
SCALE_FLAG_ANTIALIAS = 1 << 9


def _mode_str(mode: int) -> str:
    """test-backend-ops' var_to_str(ggml_scale_mode)."""
    s = {0: "nearest", 1: "bilinear", 2: "bicubic"}.get(mode & 0xFF, str(mode))
    if mode & SCALE_FLAG_ALIGN_CORNERS:
        s += "|align_corners"
    if mode & SCALE_FLAG_ANTIALIAS:
        s += "|antialias"
    return s


def _infer_upscale(srcs, p):
    a = need_src("UPSCALE", srcs, 0, "a")
    mode = p.mode
    if not 0 <= (mode & 0xFF) < 3:
        raise ParamError(f"UPSCALE: unknown scale mode {mode & 0xFF} [{a.name!r}]")
    if mode & ~(0xFF | SCALE_FLAG_ALIGN_CORNERS | SCALE_FLAG_ANTIALIAS):
        raise ParamError(f"UPSCALE: unknown mode flags {mode:#x} [{a.name!r}]")
    if mode & SCALE_FLAG_ANTIALIAS and (mode & 0xFF) != SCALE_MODE_BILINEAR:
        raise ParamError(f"UPSCALE: antialias is implemented for bilinear only [{a.name!r}]")
    need_type("UPSCALE", a, _F32_ONLY, "a")
    ne = list(p.ne)
    need(all(x > 0 for x in ne) and all(x > 0 for x in a.ne), "UPSCALE",
         f"sizes must be > 0 (target ne={ne})", a)
    return Out(_F32, ne)


def _ref_upscale(node, ins, p):
    """ggml's CPU upscale: coordinates and weights in float32 exactly as ggml computes them,
    the weighted sums in float64."""
    f32 = np.float32
    x = ins[0]
    ne, ns = node.ne, node.src[0].ne
    sf = [f32(ne[i]) / f32(ns[i]) for i in range(4)]
    mode, flags = p.mode & 0xFF, p.mode
    po = f32(0.5)
    if flags & SCALE_FLAG_ALIGN_CORNERS:
        po = f32(0.0)
        for i in (0, 1):
            if ne[i] > 1 and ns[i] > 1:
                sf[i] = f32(ne[i] - 1) / f32(ns[i] - 1)

    def nearest(i):
        idx = np.trunc(np.arange(ne[i]).astype(f32) / sf[i]).astype(np.int64)
        return np.minimum(idx, ns[i] - 1)

    x = x[np.ix_(nearest(3), nearest(2))]          # dims 2 and 3 are always nearest
    if mode == SCALE_MODE_NEAREST:
        return x[:, :, nearest(1)][:, :, :, nearest(0)]

    if mode == SCALE_MODE_BILINEAR and flags & SCALE_FLAG_ANTIALIAS:
        def weights(i):
            support = max(f32(1.0), f32(1.0) / sf[i])
            inv = f32(1.0) / support
            c = (np.arange(ne[i]).astype(f32) + po) / sf[i]
            lo = np.maximum(np.trunc(c - support + po).astype(np.int64), 0)
            hi = np.minimum(np.trunc(c + support + po).astype(np.int64), ns[i])
            s = np.arange(ns[i])
            w = np.maximum(f32(1.0) - np.abs((s[None, :].astype(f32) - c[:, None] + po) * inv),
                           f32(0.0)).astype(f32)
            w[(s[None, :] < lo[:, None]) | (s[None, :] >= hi[:, None])] = 0
            return w.astype(np.float64)
        wy, wx = weights(1), weights(0)
        finite = np.isfinite(x)
        num = wy @ (np.where(finite, x, 0.0) @ wx.T)   # separable: rows, then columns
        if not finite.all():
            # ggml skips zero-weight samples: only an inf/NaN the window weighs reaches a result
            by, bx = (wy > 0).astype(np.float64), (wx > 0).astype(np.float64)
            hit = lambda m: (by @ (m.astype(np.float64) @ bx.T)) > 0          # noqa: E731
            pinf, ninf = hit(x == np.inf), hit(x == -np.inf)
            num = np.where(pinf, np.inf, np.where(ninf, -np.inf, num))
            num = np.where(hit(np.isnan(x)) | (pinf & ninf), np.nan, num)
        den = wy.sum(1)[:, None] * wx.sum(1)[None, :]
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def coords(i):
        c = (np.arange(ne[i]).astype(f32) + po) / sf[i] - po
        c0 = np.floor(c).astype(np.int64)
        return c, c0

    if mode == SCALE_MODE_BILINEAR:
        def lin(i):
            c, c0 = coords(i)
            c1 = np.clip(c0 + 1, 0, ns[i] - 1)
            c0 = np.clip(c0, 0, ns[i] - 1)
            d = np.clip(c - c0.astype(f32), f32(0), f32(1)).astype(np.float64)
            return c0, c1, d
        y0, y1, dy = lin(1)
        x0, x1, dx = lin(0)
        dy, dx = dy[:, None], dx[None, :]
        g = lambda yy, xx: x[:, :, yy][:, :, :, xx]                      # noqa: E731
        return (g(y0, x0) * (1 - dx) * (1 - dy) + g(y0, x1) * dx * (1 - dy) +
                g(y1, x0) * (1 - dx) * dy + g(y1, x1) * dx * dy)

    # bicubic (alpha = -0.75, as PyTorch and ggml)
    a = f32(-0.75)

    def w1(t):
        return ((a + f32(2)) * t - (a + f32(3))) * t * t + f32(1)

    def w2(t):
        return ((a * t - f32(5) * a) * t + f32(8) * a) * t - f32(4) * a

    def cubic(i):
        c, c0 = coords(i)
        d = (c - c0.astype(f32)).astype(f32)
        w = np.stack([w2(d + f32(1)), w1(d), w1(f32(1) - d), w2(f32(2) - d)], -1)
        idx = np.clip(c0[:, None] + np.arange(-1, 3)[None, :], 0, ns[i] - 1)
        return idx, w.astype(np.float64)
    iy, wy = cubic(1)
    ix, wx = cubic(0)
    horiz = sum(x[..., ix[:, k]] * wx[:, k] for k in range(4))            # (A3, A2, ns1, ne0)
    return sum(horiz[:, :, iy[:, j], :] * wy[:, j][:, None] for j in range(4))


def _upscale_cases():
    out = []
    modes = (SCALE_MODE_NEAREST, SCALE_MODE_BILINEAR, SCALE_MODE_BICUBIC,
             SCALE_MODE_BILINEAR | SCALE_FLAG_ANTIALIAS)

    def up(ne, sf, mode, transpose, slow=False):
        def f(ctx):
            a = cc.leaf(ctx, "f32", ne, "a")
            if transpose:
                a = _transpose(ctx, a)
                a.name = "a_transposed"
            return upscale(ctx, a, sf, mode)
        out.append(cc.case("UPSCALE", dict(type=cc.ggml_type("f32"), ne=list(ne), scale_factor=sf,
                                           mode=_mode_str(mode), transpose=transpose), f,
                           tags=("slow",) if slow else ()))

    def interp(ne, ne_tgt, mode):
        out.append(cc.case("UPSCALE", dict(type=cc.ggml_type("f32"), ne=list(ne), ne_tgt=list(ne_tgt),
                                           mode=_mode_str(mode)),
                           lambda ctx: interpolate(ctx, cc.leaf(ctx, "f32", ne, "a"), *ne_tgt,
                                                   mode)))

    for mode in modes:
        up((512, 512, 3, 2), 2, mode, False, slow=True)
        up((512, 512, 3, 2), 2, mode, True, slow=True)
        interp((2, 5, 7, 11), (5, 7, 11, 13), mode)
        interp((5, 7, 11, 13), (2, 5, 7, 11), mode)
        up((13, 9, 3, 2), 2, mode, False)       # pyggml extras: the upscale layouts, small
        up((13, 9, 3, 2), 3, mode, True)
    for mode in (SCALE_MODE_BILINEAR, SCALE_MODE_BICUBIC):
        m = mode | SCALE_FLAG_ALIGN_CORNERS
        interp((2, 5, 7, 11), (5, 7, 11, 13), m)
        interp((1, 4, 3, 2), (2, 8, 3, 2), m)
        interp((4, 1, 3, 2), (1, 1, 3, 2), m)
    return out


UPSCALE = register(OpDef(
    "UPSCALE", _infer_upscale, params="mode:i32", reference=_ref_upscale, cases=_upscale_cases,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_interpolate(c, s[0], *node.ne, p.mode),
    doc="a resampled to ne (nearest, bilinear, bicubic; align-corners, antialias flags)."))


def interpolate(ctx, a, ne0, ne1, ne2, ne3, mode):
    """ggml_interpolate(a, ne0..ne3, mode | flags)."""
    return UPSCALE.build(ctx, [a], dict(mode=int(mode)), hints=dict(ne=[ne0, ne1, ne2, ne3]))


def upscale_ext(ctx, a, ne0, ne1, ne2, ne3, mode):
    return interpolate(ctx, a, ne0, ne1, ne2, ne3, mode)


def upscale(ctx, a, scale_factor, mode):
    """ggml_upscale: dims 0 and 1 times scale_factor (> 1)."""
    if scale_factor <= 1:
        raise ParamError(f"UPSCALE: scale_factor must be > 1, got {scale_factor} [{a.name!r}]")
    return interpolate(ctx, a, a.ne[0] * scale_factor, a.ne[1] * scale_factor, a.ne[2], a.ne[3],
                       mode)
