"""2-D convolutions beside conv.py's CONV_2D: CONV_2D_DW (depthwise, ggml_conv_2d_dw_direct)
and CONV_TRANSPOSE_2D (ggml_conv_transpose_2d_p0).

Layouts are ggml's: an image [W, H, C, N], a depthwise kernel [KW, KH, 1, C], a transposed
conv kernel [KW, KH, Cout, Cin]. CONV_2D_DW keeps a channels-contiguous (CWHN) input's layout
in its result, as ggml does. An F16 transposed-conv kernel makes ggml round the input to F16
first; the reference does the same. Sums are float64.
"""
from __future__ import annotations

import numpy as np

from ..tensor import is_contiguous
from ..tensor import is_contiguous_channels
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from . import cases_common as cc
from .conv import _conv_output_size
from .conv import _f16_round
from .conv import _gather
from .conv import _need_pos
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32, _F16 = GGMLType.F32, GGMLType.F16


def _io_bytes(node) -> int:
    return nbytes(node) + nbytes(node.src[0]) + nbytes(node.src[1])


# --- CONV_2D_DW -------------------------------------------------------------------------------

def _infer_conv_2d_dw(srcs, p):
    a = need_src("CONV_2D_DW", srcs, 0, "a (kernel)")
    b = need_src("CONV_2D_DW", srcs, 1, "b (input)")
    need(a.ne[2] == 1, "CONV_2D_DW", f"the kernel must be [KW, KH, 1, C] (ne2={a.ne[2]})", a)
    need(a.ne[3] == b.ne[2], "CONV_2D_DW", f"kernel channels a.ne[3]={a.ne[3]} != input "
         f"channels b.ne[2]={b.ne[2]}", a, b)
    _need_pos("CONV_2D_DW", s0=p.s0, s1=p.s1, d0=p.d0, d1=p.d1)
    need_type("CONV_2D_DW", a, (_F32, _F16), "kernel a")
    need_type("CONV_2D_DW", b, (_F32,), "input b")
    cwhn = is_contiguous_channels(b)
    need(cwhn or is_contiguous(b), "CONV_2D_DW",
         "the input must be contiguous (WHCN) or channels-contiguous (CWHN)", b)
    ow = _conv_output_size(b.ne[0], a.ne[0], p.s0, p.p0, p.d0)
    oh = _conv_output_size(b.ne[1], a.ne[1], p.s1, p.p1, p.d1)
    need(ow > 0 and oh > 0, "CONV_2D_DW", "input too small for the kernel", a, b)
    ne = [ow, oh, b.ne[2], b.ne[3]]
    if not cwhn:
        return Out(_F32, ne)
    nb0 = 4 * ne[2]                      # the result permuted like the input (CWHN)
    return Out(_F32, ne, nb=[nb0, nb0 * ne[0], 4, nb0 * ne[0] * ne[1]])


def _ref_conv_2d_dw(node, ins, p):
    k, x = ins[0][:, 0], ins[1]                                         # (C, KH, KW), (N, C, H, W)
    g = _gather(x, node.ne[1], node.ne[0], k.shape[1], k.shape[2], p.s1, p.s0, p.p1, p.p0, p.d1,
                p.d0)                                                   # (N, C, OH, OW, KH, KW)
    return np.einsum("ncyxhw,chw->ncyx", g, k)


def _conv_2d_dw_cases():
    out = []
    for tk in ("f32", "f16"):
        for ne_in, ne_k, s, pad in (((17, 34, 9, 1), (3, 3, 1, 9), 1, 0),
                                    ((32, 8, 64, 1), (3, 3, 1, 64), 2, 1)):
            for cwhn in (False, True):
                def build(ctx, tk=tk, ne_in=ne_in, ne_k=ne_k, s=s, pad=pad, cwhn=cwhn):
                    from .copy import cont
                    from .view import permute
                    x = cc.leaf(ctx, "f32", ne_in, "input")
                    k = cc.leaf(ctx, tk, ne_k, "kernel")
                    if cwhn:     # store channels first, then permute back to [W, H, C, N]
                        x = permute(ctx, cont(ctx, permute(ctx, x, 1, 2, 0, 3)), 2, 0, 1, 3)
                        k = permute(ctx, cont(ctx, permute(ctx, k, 2, 3, 1, 0)), 3, 2, 0, 1)
                    return conv_2d_dw_direct(ctx, k, x, s, s, pad, pad, 1, 1)
                out.append(cc.case("CONV_2D_DW", dict(ne_input=list(ne_in), ne_kernel=list(ne_k),
                                                      type_kernel=cc.ggml_type(tk), stride=s,
                                                      padding=pad, dilation=1, cwhn=cwhn), build))
    return out


CONV_2D_DW = register(OpDef(
    "CONV_2D_DW", _infer_conv_2d_dw, params="s0:i32 s1:i32 p0:i32 p1:i32 d0:i32 d1:i32",
    reference=_ref_conv_2d_dw, cases=_conv_2d_dw_cases,
    flops=lambda node: 2 * nelements(node) * node.src[0].ne[0] * node.src[0].ne[1],
    nbytes=_io_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_conv_2d_dw_direct(c, s[0], s[1], p.s0, p.s1, p.p0,
                                                           p.p1, p.d0, p.d1),
    doc="Depthwise 2-D convolution: kernel [KW, KH, 1, C], input [W, H, C, N] -> "
        "[OW, OH, C, N] (a CWHN input gives a CWHN result)."))


def conv_2d_dw_direct(ctx, a, b, stride0, stride1, pad0, pad1, dilation0, dilation1):
    """ggml_conv_2d_dw_direct(a = kernel, b = input, ...)."""
    return CONV_2D_DW.build(ctx, [a, b], dict(s0=stride0, s1=stride1, p0=pad0, p1=pad1,
                                              d0=dilation0, d1=dilation1))


# --- CONV_TRANSPOSE_2D --------------------------------------------------------------------------

def _infer_conv_t2d(srcs, p):
    a = need_src("CONV_TRANSPOSE_2D", srcs, 0, "a (kernel)")
    b = need_src("CONV_TRANSPOSE_2D", srcs, 1, "b (input)")
    need(a.ne[3] == b.ne[2], "CONV_TRANSPOSE_2D", f"kernel input channels a.ne[3]={a.ne[3]} != "
         f"input channels b.ne[2]={b.ne[2]}", a, b)
    _need_pos("CONV_TRANSPOSE_2D", stride=p.stride)
    need_type("CONV_TRANSPOSE_2D", a, (_F32, _F16), "kernel a")
    need_type("CONV_TRANSPOSE_2D", b, (_F32,), "input b")
    return Out(_F32, [(b.ne[0] - 1) * p.stride + a.ne[0], (b.ne[1] - 1) * p.stride + a.ne[1],
                      a.ne[2], b.ne[3]])


def _ref_conv_t2d(node, ins, p):
    k, x = ins[0], ins[1]                            # (Cin, Cout, KH, KW), (N, Cin, H, W)
    if node.src[0].type == _F16:
        x = _f16_round(x)
    s = p.stride
    n, _, h, w = x.shape
    out = np.zeros(node.ne[::-1])
    if h == 0 or w == 0:       # an empty input adds nothing (the slices below would wrap)
        return out
    for ky in range(k.shape[2]):
        for kx in range(k.shape[3]):
            out[:, :, ky:ky + s * (h - 1) + 1:s, kx:kx + s * (w - 1) + 1:s] += \
                np.einsum("nchw,co->nohw", x, k[:, :, ky, kx])
    return out


def _conv_t2d_cases():
    out = []
    for tk in ("f32", "f16"):
        for ne_in, ne_k, s in (((3, 2, 3, 1), (2, 2, 1, 3), 1), ((10, 10, 9, 1), (3, 3, 1, 9), 2),
                               ((129, 63, 35, 1), (3, 3, 48, 35), 1)):
            def build(ctx, tk=tk, ne_in=ne_in, ne_k=ne_k, s=s):
                return conv_transpose_2d_p0(ctx, cc.leaf(ctx, tk, ne_k, "kernel"),
                                            cc.leaf(ctx, "f32", ne_in, "input"), s)
            out.append(cc.case("CONV_TRANSPOSE_2D", dict(kernel_type=cc.ggml_type(tk), ne_input=list(ne_in),
                                                         ne_kernel=list(ne_k), stride=s), build))
    return out


CONV_TRANSPOSE_2D = register(OpDef(
    "CONV_TRANSPOSE_2D", _infer_conv_t2d, params="stride:i32", reference=_ref_conv_t2d,
    cases=_conv_t2d_cases, max_nmse=5e-4,
    flops=lambda node: 2 * nelements(node.src[0]) * node.src[1].ne[0] * node.src[1].ne[1] *
    node.src[1].ne[3], nbytes=_io_bytes,
    ggml=lambda g, c, s, p, node: g.ggml_conv_transpose_2d_p0(c, s[0], s[1], p.stride),
    doc="Transposed 2-D convolution, no padding: kernel [KW, KH, Cout, Cin], input "
        "[W, H, Cin, N] -> [(W-1)*s + KW, (H-1)*s + KH, Cout, N]."))


def conv_transpose_2d_p0(ctx, a, b, stride):
    """ggml_conv_transpose_2d_p0(a = kernel, b = input, stride)."""
    return CONV_TRANSPOSE_2D.build(ctx, [a, b], dict(stride=stride))
