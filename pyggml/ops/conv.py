"""Convolutions and pooling: IM2COL, CONV_2D (ggml_conv_2d_direct), CONV_TRANSPOSE_1D, POOL_1D,
POOL_2D, SSM_CONV, SSM_SCAN; plus ggml's composite conv_1d / conv_2d (im2col + mul_mat).

Layouts are ggml's (ne0 first): an image is [W, H, C, N], a 2-D kernel [KW, KH, IC, OC], a 1-D
input [L, IC, N] with kernel [K, IC, OC]. Output sizes follow ggml_calc_conv_output_size and
ggml_calc_pool_output_size. Where ggml's CPU kernel rounds through F16 (an F16 kernel makes
conv_2d and conv_transpose_1d round the input to F16 first) the reference does the same and
says so; everything else is float64.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import GGMLError
from ..errors import ParamError
from ..tensor import is_contiguous
from ..tensor import is_matrix
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from ..types import as_type
from . import cases_common as cc
from .copy import cont as _cont
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import permute as _permute
from .view import view_4d as _view_4d

_F32, _F16, _BF16, _I32 = GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32
_FLOATS = (_F32, _F16, _BF16)
NO_GGML = "no_ggml"     # tag of cases beyond ggml's CPU kernels (real ggml would abort on them)


def _conv_output_size(ins: int, ks: int, s: int, p: int, d: int) -> int:
    """ggml_calc_conv_output_size (C integer division)."""
    num = ins + 2 * p - d * (ks - 1) - 1
    q = abs(num) // s
    return (q if num >= 0 else -q) + 1


def _pool_output_size(ins: int, ks: int, s: int, p: float) -> int:
    """ggml_calc_pool_output_size: float math, truncated toward zero."""
    f32 = np.float32
    return int((f32(ins) + f32(2) * f32(p) - f32(ks)) / f32(s) + f32(1))


def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float16).astype(np.float64)


def _gather(x, oh, ow, kh, kw, s1, s0, p1, p0, d1, d0):
    """Image x (N, C, IH, IW) -> patches (N, C, OH, OW, KH, KW), zero outside the image."""
    ih = np.arange(oh)[:, None] * s1 + np.arange(kh)[None, :] * d1 - p1       # (OH, KH)
    iw = np.arange(ow)[:, None] * s0 + np.arange(kw)[None, :] * d0 - p0       # (OW, KW)
    vh = (ih >= 0) & (ih < x.shape[2])
    vw = (iw >= 0) & (iw < x.shape[3])
    x = _readable(x, (2, 3))
    ihc = np.clip(ih, 0, x.shape[2] - 1)
    iwc = np.clip(iw, 0, x.shape[3] - 1)
    g = x[:, :, ihc[:, None, :, None], iwc[None, :, None, :]]               # (N,C,OH,OW,KH,KW)
    mask = vh[:, None, :, None] & vw[None, :, None, :]
    return np.where(mask, g, 0.0)          # not g * mask: a clipped read of inf would be NaN


def _need_pos(op, **vals):
    for k, v in vals.items():
        if v <= 0:
            raise ParamError(f"{op}: {k}={v} must be > 0")


# --- IM2COL -----------------------------------------------------------------------------------

def _infer_im2col(srcs, p):
    a = need_src("IM2COL", srcs, 0, "a (kernel)")
    b = need_src("IM2COL", srcs, 1, "b (input)")
    is_2d = bool(p.is_2D)
    if is_2d:
        need(a.ne[2] == b.ne[2], "IM2COL", f"channels differ: a.ne[2]={a.ne[2]} b.ne[2]={b.ne[2]}",
             a, b)
        _need_pos("IM2COL", s0=p.s0, s1=p.s1, d0=p.d0, d1=p.d1)
    else:
        need(b.ne[1] == a.ne[1], "IM2COL", f"channels differ: a.ne[1]={a.ne[1]} b.ne[1]={b.ne[1]}",
             a, b)
        need(b.ne[3] == 1, "IM2COL", "a 1-D input has b.ne[3] == 1", b)
        _need_pos("IM2COL", s0=p.s0, d0=p.d0)
    need_type("IM2COL", b, _FLOATS, "input b")
    dst = as_type(p.dst_type)
    if dst not in (_F32, _F16):
        raise ParamError(f"IM2COL: dst_type must be f32 or f16, got {dst.tname}")
    oh = _conv_output_size(b.ne[1], a.ne[1], p.s1, p.p1, p.d1) if is_2d else 0
    ow = _conv_output_size(b.ne[0], a.ne[0], p.s0, p.p0, p.d0)
    need((not is_2d or oh > 0) and ow > 0, "IM2COL", "b too small compared to a", a, b)
    ne = [a.ne[2] * a.ne[1] * a.ne[0] if is_2d else a.ne[1] * a.ne[0], ow,
          oh if is_2d else b.ne[2], b.ne[3] if is_2d else 1]
    return Out(dst, ne)


def _ref_im2col(node, ins, p):
    a, b = node.src[0], node.src[1]
    x = ins[1]
    if x.size == 0 or 0 in node.ne:                 # nothing to read: every column is padding
        return np.zeros(node.ne[::-1])
    if p.is_2D:
        n, oh, ow, kh = b.ne[3], node.ne[2], node.ne[1], a.ne[1]
    else:
        x = x[0][:, :, None, :]                      # (N, IC, 1, IW)
        n, oh, ow, kh = b.ne[2], 1, node.ne[1], 1
    g = _gather(x, oh, ow, kh, a.ne[0], p.s1, p.s0, p.p1, p.p0, p.d1, p.d0)
    g = g.transpose(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, -1)   # [N, OH, OW, IC*KH*KW]
    return g.reshape(node.ne[::-1])


def _im2col_cases():
    out = []

    def add(ti, tk, td, ne_in, ne_k, s0, s1, p0, p1, d0, d1, is_2d, slow=False):
        def f(ctx):
            inp = cc.leaf(ctx, ti, ne_in, "input", param=True)   # test_im2col: grad too
            ker = cc.leaf(ctx, tk, ne_k, "kernel")
            return im2col(ctx, ker, inp, s0, s1, p0, p1, d0, d1, is_2d, as_type(td))
        out.append(cc.case("IM2COL", dict(type_input=cc.ggml_type(ti), type_kernel=cc.ggml_type(tk),
                                          dst_type=cc.ggml_type(td), ne_input=list(ne_in),
                                          ne_kernel=list(ne_k), s0=s0, s1=s1, p0=p0, p1=p1,
                                          d0=d0, d1=d1, is_2D=is_2d), f, exact=True,
                           tags=("slow",) if slow else ()))

    F, H = "f32", "f16"
    # 1-D
    add(F, F, F, (3000, 128, 1, 1), (3, 128, 1280, 1), 1, 0, 1, 0, 1, 0, False, slow=True)
    add(F, H, F, (3000, 128, 1, 1), (3, 128, 1280, 1), 1, 0, 1, 0, 1, 0, False, slow=True)
    add(F, H, H, (3000, 128, 1, 1), (3, 128, 1280, 1), 1, 0, 1, 0, 1, 0, False, slow=True)
    add(F, H, H, (3000, 384, 1, 1), (3, 384, 384, 1), 1, 0, 1, 0, 1, 0, False, slow=True)
    for s0 in (1, 3):
        for p0 in (0, 3):
            for d0 in (1, 3):
                add(F, F, F, (20, 2, 2, 1), (3, 2, 2, 1), s0, 0, p0, 0, d0, 0, False)
    # 2-D (test_im2col's defaults: input {10, 10, 3, 1}, kernel {3, 3, 3, 1}, s=p=d=1)
    for tk, td in ((F, F), (F, H), (H, F), (H, H)):
        add(F, tk, td, (10, 10, 3, 1), (3, 3, 3, 1), 1, 1, 1, 1, 1, 1, True)
    for s0, s1, p0, p1, d0, d1 in itertools.product((1, 3), (1, 3), (0, 3), (0, 3), (1, 3), (1, 3)):
        add(F, F, F, (20, 20, 2, 2), (3, 3, 2, 2), s0, s1, p0, p1, d0, d1, True)
    for ne_in, ne_k, p in (((12, 12, 1, 32), (3, 3, 1, 32), 1), ((12, 12, 2, 32), (3, 3, 2, 32), 1),
                           ((12, 12, 1, 1024), (3, 3, 1, 1024), 1),
                           ((12, 12, 2, 1024), (3, 3, 2, 1024), 1),
                           ((12, 12, 1, 2048), (3, 3, 1, 2048), 1),
                           ((12, 12, 2, 2048), (3, 3, 2, 2048), 1),
                           ((12, 12, 1, 2560), (3, 3, 1, 2560), 1),
                           ((12, 12, 2, 2560), (3, 3, 2, 2560), 1),
                           ((5, 5, 1, 32), (3, 4, 1, 32), 0)):
        add(F, H, H, ne_in, ne_k, 1, 1, p, p, 1, 1, True, slow=ne_in[3] > 32)
    add(F, F, F, (2, 2, 1536, 729), (2, 2, 1536, 4096), 1, 1, 0, 0, 1, 1, True, slow=True)
    add(F, H, H, (128, 128, 1, 2), (32, 33, 1, 2), 1, 1, 1, 1, 1, 1, True, slow=True)
    add(F, H, H, (128, 128, 2, 1), (33, 34, 2, 1), 1, 1, 1, 1, 1, 1, True, slow=True)
    # pyggml extra: an f16 input
    add(H, H, H, (9, 7, 2, 2), (3, 2, 2, 1), 2, 1, 1, 0, 1, 2, True)
    return out


def _im2col_ggml(g, c, s, p, node):
    return g.ggml_im2col(c, s[0], s[1], p.s0, p.s1, p.p0, p.p1, p.d0, p.d1, bool(p.is_2D),
                         int(node.type))


IM2COL = register(OpDef(
    "IM2COL", _infer_im2col, params="s0:i32 s1:i32 p0:i32 p1:i32 d0:i32 d1:i32 is_2D:i32",
    reference=_ref_im2col, cases=_im2col_cases, exact=True,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[1]),
    ggml=_im2col_ggml,
    extra=dict(hints_of=lambda node: dict(dst_type=int(node.type))),   # for set_op_params
    doc="Image patches as rows: [N, IC, IH, IW] -> [N, OH, OW, IC*KH*KW] (1-D: KH = OH = 1)."))


def im2col(ctx, a, b, s0, s1, p0, p1, d0, d1, is_2D, dst_type):
    """ggml_im2col(a kernel (shape only), b input, strides, paddings, dilations, is_2D, type)."""
    # dst_type is not an op_param in ggml (it is the result type); it reaches infer as a hint
    return IM2COL.build(ctx, [a, b], dict(s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1,
                                          is_2D=int(bool(is_2D))),
                        hints=dict(dst_type=int(as_type(dst_type))))


# --- composite convolutions (ggml.c: im2col + mul_mat) ------------------------------------------

def _op(name):
    from . import API
    fn = API.get(name)
    if fn is None:
        raise GGMLError(f"{name} is not available (its op family is not loaded)")
    return fn


def conv_1d(ctx, a, b, s0, p0, d0):
    """ggml_conv_1d: a kernel [K, IC, OC], b input [L, IC, N] -> [OL, OC, N]."""
    col = im2col(ctx, a, b, s0, 0, p0, 0, d0, 0, False, _F32 if a.type == _BF16 else _F16)
    reshape_2d, reshape_3d = _op("reshape_2d"), _op("reshape_3d")
    r = _op("mul_mat")(ctx, reshape_2d(ctx, col, col.ne[0], col.ne[2] * col.ne[1]),
                       reshape_2d(ctx, a, a.ne[0] * a.ne[1], a.ne[2]))
    return reshape_3d(ctx, r, col.ne[1], a.ne[2], col.ne[2])


def conv_1d_ph(ctx, a, b, s, d):
    return conv_1d(ctx, a, b, s, a.ne[0] // 2, d)


def conv_2d(ctx, a, b, s0, s1, p0, p1, d0, d1):
    """ggml_conv_2d: a kernel [KW, KH, IC, OC], b input [W, H, IC, N] -> [OW, OH, OC, N]."""
    col = im2col(ctx, a, b, s0, s1, p0, p1, d0, d1, True, _F32 if a.type == _BF16 else _F16)
    reshape_2d, reshape_4d = _op("reshape_2d"), _op("reshape_4d")
    r = _op("mul_mat")(ctx, reshape_2d(ctx, col, col.ne[0], col.ne[3] * col.ne[2] * col.ne[1]),
                       reshape_2d(ctx, a, a.ne[0] * a.ne[1] * a.ne[2], a.ne[3]))
    r = reshape_4d(ctx, r, col.ne[1], col.ne[2], col.ne[3], a.ne[3])
    return _op("cont")(ctx, _op("permute")(ctx, r, 0, 1, 3, 2))


def conv_2d_sk_p0(ctx, a, b):
    return conv_2d(ctx, a, b, a.ne[0], a.ne[1], 0, 0, 1, 1)


def conv_2d_s1_ph(ctx, a, b):
    return conv_2d(ctx, a, b, 1, 1, a.ne[0] // 2, a.ne[1] // 2, 1, 1)


# --- CONV_2D (direct) -------------------------------------------------------------------------

IM2COL_WORK_SIZE = 16 * 1024 * 1024          # GGML_IM2COL_WORK_SIZE


def _infer_conv_2d(srcs, p):
    a = need_src("CONV_2D", srcs, 0, "a (kernel)")
    b = need_src("CONV_2D", srcs, 1, "b (input)")
    need(a.ne[2] == b.ne[2], "CONV_2D", f"channels differ: a.ne[2]={a.ne[2]} b.ne[2]={b.ne[2]}",
         a, b)
    need_type("CONV_2D", a, (_F32, _F16), "kernel a")
    need_type("CONV_2D", b, (_F32,), "input b")
    _need_pos("CONV_2D", s0=p.s0, s1=p.s1, d0=p.d0, d1=p.d1)
    ow = _conv_output_size(b.ne[0], a.ne[0], p.s0, p.p0, p.d0)
    oh = _conv_output_size(b.ne[1], a.ne[1], p.s1, p.p1, p.d1)
    need(ow > 0 and oh > 0, "CONV_2D", "input too small for the kernel", a, b)
    return Out(b.type, [ow, oh, a.ne[3], b.ne[3]])


def _ref_conv_2d(node, ins, p):
    """An F16 kernel makes ggml round the input patches to F16 before the product."""
    k, x = ins[0], ins[1]                          # (OC, IC, KH, KW), (N, IC, IH, IW)
    if node.src[0].type == _F16:
        x = _f16_round(x)
    ow, oh = node.ne[0], node.ne[1]
    out = np.zeros((x.shape[0], k.shape[0], oh, ow))
    for kh in range(k.shape[2]):                   # one kernel tap at a time keeps memory small
        for kw in range(k.shape[3]):
            g = _gather(x, oh, ow, 1, 1, p.s1, p.s0, p.p1 - kh * p.d1, p.p0 - kw * p.d0, 1, 1)
            g = g[..., 0, 0].reshape(x.shape[0], x.shape[1], oh * ow)           # (N, IC, OH*OW)
            out += (k[:, :, kh, kw] @ g).reshape(out.shape)                     # BLAS matmul
    return out


def _conv_2d_cases():
    out = []

    def add(ne_in, ne_k, tk, s0, s1, p0, p1, d0, d1, cwhn, subset=True):
        def f(ctx):
            inp = cc.leaf(ctx, "f32", ne_in, "input")
            ker = cc.leaf(ctx, tk, ne_k, "kernel")
            if cwhn:       # channel-most-contiguous memory, permuted back to the logical ne
                inp = _permute(ctx, _cont(ctx, _permute(ctx, inp, 1, 2, 0, 3)), 2, 0, 1, 3)
                ker = _permute(ctx, _cont(ctx, _permute(ctx, ker, 2, 3, 1, 0)), 3, 2, 0, 1)
            return conv_2d_direct(ctx, ker, inp, s0, s1, p0, p1, d0, d1)
        ow = _conv_output_size(ne_in[0], ne_k[0], s0, p0, d0)
        oh = _conv_output_size(ne_in[1], ne_k[1], s1, p1, d1)
        work = ne_in[3] * ow * oh * ne_k[0] * ne_k[1] * ne_k[2] * max(1, ne_k[3])
        # ggml's grid has ~3000 cases: the pytest subset keeps every 9th small one (9 is
        # coprime with the 4 kernel-type x layout variants, so all of them are sampled)
        slow = work > 400_000 or (subset and len(out) % 9 != 0)
        out.append(cc.case("CONV_2D", dict(ne_input=list(ne_in), ne_kernel=list(ne_k),
                                           type_kernel=cc.ggml_type(tk), stride0=s0, stride1=s1,
                                           padding0=p0, padding1=p1, dilation0=d0, dilation1=d1,
                                           cwhn=cwhn), f, max_nmse=5e-4,
                           # ggml's CPU kernel asserts a contiguous kernel: cwhn is pyggml-only
                           tags=(("slow",) if slow else ()) + ((NO_GGML,) if cwhn else ())))

    s1, p0, d0, d1 = 5, 5, 2, 4
    for s0 in (1, 3):
        for p1 in (2, 5):
            for cin in (1, 25):
                for cout in (1, 12):
                    for kh in (1, 2, 3, 11):
                        for kw in (1, 2, 3, 11):
                            for h in (1, 133):
                                for w in (1, 141):
                                    if _conv_output_size(w, kw, s0, p0, d0) > 0 and \
                                            _conv_output_size(h, kh, s1, p1, d1) > 0:
                                        for tk in ("f32", "f16"):
                                            for cwhn in (False, True):
                                                add((w, h, cin, 2), (kw, kh, cin, cout), tk,
                                                    s0, s1, p0, p1, d0, d1, cwhn)
    for tk in ("f32", "f16"):
        for cwhn in (False, True):
            add((256, 256, 192, 1), (3, 3, 192, 96), tk, 1, 1, 1, 1, 1, 1, cwhn)
    # pyggml extras: small, dense in the parameters
    for tk in ("f32", "f16"):
        add((9, 8, 3, 2), (3, 2, 3, 4), tk, 2, 1, 1, 0, 1, 2, False, subset=False)
        add((7, 6, 2, 1), (2, 3, 2, 3), tk, 1, 2, 0, 1, 2, 1, True, subset=False)
    return out


CONV_2D = register(OpDef(
    "CONV_2D", _infer_conv_2d, params="s0:i32 s1:i32 p0:i32 p1:i32 d0:i32 d1:i32",
    reference=_ref_conv_2d, cases=_conv_2d_cases, max_nmse=5e-4,
    flops=lambda node: 2 * nelements(node) * node.src[0].ne[0] * node.src[0].ne[1] *
    node.src[0].ne[2],
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]) + nbytes(node.src[1]),
    ggml=lambda g, c, s, p, node: g.ggml_conv_2d_direct(c, s[0], s[1], p.s0, p.s1, p.p0, p.p1,
                                                        p.d0, p.d1),
    doc="2-D convolution, kernel [KW, KH, IC, OC] over input [W, H, IC, N] -> [OW, OH, OC, N]."))


def conv_2d_direct(ctx, a, b, s0, s1, p0, p1, d0, d1):
    """ggml_conv_2d_direct (GGML_OP_CONV_2D): a kernel [KW, KH, IC, OC], b input [W, H, IC, N]."""
    return CONV_2D.build(ctx, [a, b], dict(s0=s0, s1=s1, p0=p0, p1=p1, d0=d0, d1=d1))


# --- CONV_TRANSPOSE_1D --------------------------------------------------------------------------

def _infer_conv_t1d(srcs, p):
    a = need_src("CONV_TRANSPOSE_1D", srcs, 0, "a (kernel)")
    b = need_src("CONV_TRANSPOSE_1D", srcs, 1, "b (input)")
    need(is_matrix(b), "CONV_TRANSPOSE_1D", "b must be a matrix [L, IC]", b)
    need(a.ne[2] == b.ne[1], "CONV_TRANSPOSE_1D",
         f"channels differ: a.ne[2]={a.ne[2]} b.ne[1]={b.ne[1]}", a, b)
    need(a.ne[3] == 1, "CONV_TRANSPOSE_1D", "a.ne[3] must be 1", a)
    if p.p0 != 0 or p.d0 != 1:
        raise ParamError(f"CONV_TRANSPOSE_1D: only p0 == 0 and d0 == 1 are implemented "
                         f"(got p0={p.p0}, d0={p.d0})")
    _need_pos("CONV_TRANSPOSE_1D", s0=p.s0)
    need_type("CONV_TRANSPOSE_1D", a, (_F32, _F16), "kernel a")
    need_type("CONV_TRANSPOSE_1D", b, (_F32,), "input b")
    return Out(_F32, [(b.ne[0] - 1) * p.s0 + a.ne[0], a.ne[1], b.ne[2], 1])


def _ref_conv_t1d(node, ins, p):
    """out[oc, l*s0 + k] += sum_ic x[ic, l] * w[ic, oc, k]; an F16 kernel rounds x to F16."""
    w, x = ins[0][0], ins[1][0, 0]                 # (IC, OC, K), (IC, L)
    if node.src[0].type == _F16:
        x = _f16_round(x)
    contrib = np.einsum("il,iok->olk", x, w)       # (OC, L, K)
    oc, n_l, k = contrib.shape
    out = np.zeros((oc, node.ne[0]))
    for j in range(k if n_l else 0):          # no input samples: all zeros (j:-1 would slice)
        out[:, j:j + p.s0 * (n_l - 1) + 1:p.s0] += contrib[:, :, j]
    return out


def _conv_t1d_cases():
    out = []

    def add(ne_in, ne_k, s0, p0=0, d0=1):
        def f(ctx):
            inp = cc.leaf(ctx, "f32", ne_in, "input")
            ker = cc.leaf(ctx, "f32", ne_k, "kernel")
            return conv_transpose_1d(ctx, ker, inp, s0, p0, d0)
        out.append(cc.case("CONV_TRANSPOSE_1D", dict(ne_input=list(ne_in), ne_kernel=list(ne_k),
                                                     s0=s0, p0=p0, d0=d0), f))

    for cout in (1, 9):
        for cin in (1, 7):
            for k in (1, 3, 1337):
                for n_l in (1, 2, 13):
                    for s0 in (1, 2, 3):
                        add((n_l, cin, 1, 1), (k, cout, cin, 1), s0)
    add((197, 32, 1, 1), (16, 32, 32, 1), 1)
    add((3, 2, 1, 1), (2, 3, 2, 1), 3)
    add((3, 2, 1, 1), (2, 3, 2, 1), 2)
    add((3, 2, 1, 1), (2, 3, 2, 1), 1)
    add((3, 2, 1, 1), (3, 2, 2, 1), 2)
    add((3, 2, 1, 1), (3, 2, 2, 1), 1)
    add((3, 2, 1, 1), (3, 1, 2, 1), 1)
    add((2, 1, 1, 1), (3, 1, 1, 1), 1)
    return cc.unique(out)


CONV_TRANSPOSE_1D = register(OpDef(
    "CONV_TRANSPOSE_1D", _infer_conv_t1d, params="s0:i32 p0:i32 d0:i32",
    reference=_ref_conv_t1d, cases=_conv_t1d_cases,
    flops=lambda node: 2 * node.src[0].ne[0] * node.src[0].ne[1] * node.src[0].ne[2] *
    node.src[1].ne[0],
    ggml=lambda g, c, s, p, node: g.ggml_conv_transpose_1d(c, s[0], s[1], p.s0, p.p0, p.d0),
    doc="Transposed 1-D convolution: kernel [K, OC, IC], input [L, IC] -> [(L-1)*s0 + K, OC]."))


def conv_transpose_1d(ctx, a, b, s0, p0, d0):
    """ggml_conv_transpose_1d(a kernel [K, OC, IC], b input [L, IC]); p0 = 0 and d0 = 1 only."""
    return CONV_TRANSPOSE_1D.build(ctx, [a, b], dict(s0=s0, p0=p0, d0=d0))


# --- POOL_1D / POOL_2D -------------------------------------------------------------------------

OP_POOL_MAX = 0
OP_POOL_AVG = 1
_POOL_NAMES = {OP_POOL_MAX: "max", OP_POOL_AVG: "avg"}
_FLT_MAX = float(np.finfo(np.float32).max)


def _check_pool_op(op, v):
    if v not in _POOL_NAMES:
        raise ParamError(f"{op}: pool op must be OP_POOL_MAX (0) or OP_POOL_AVG (1), got {v}")


def _infer_pool_1d(srcs, p):
    a = need_src("POOL_1D", srcs, 0, "a")
    _check_pool_op("POOL_1D", p.op)
    need_type("POOL_1D", a, (_F32, _F16), "a")
    _need_pos("POOL_1D", k0=p.k0, s0=p.s0)
    ow = _pool_output_size(a.ne[0], p.k0, p.s0, p.p0)
    need(ow > 0, "POOL_1D", "input too small for the window", a)
    return Out(_F32, [ow, a.ne[1], a.ne[2], a.ne[3]])


def _pool_windows(n_in, n_out, k, s, p):
    """Window indices (n_out, k) into a length-n_in axis and their validity."""
    j = np.arange(n_out)[:, None] * s - p + np.arange(k)[None, :]
    valid = (j >= 0) & (j < n_in)
    return np.clip(j, 0, max(n_in - 1, 0)), valid


def _readable(x, axes):
    """x, or zeros with 1 in place of its empty axes (every window there is padding)."""
    if all(x.shape[a] for a in axes):
        return x
    return np.zeros([1 if a in axes and n == 0 else n for a, n in enumerate(x.shape)])


def _max_fold(w, valid):
    """ggml's `res = std::max(v, res)` over the window in order, from -FLT_MAX: a NaN is kept
    until a later in-range sample replaces it (numpy's max would keep any NaN)."""
    res = np.full(w.shape[:-1], -_FLT_MAX)
    for i in range(w.shape[-1]):
        v = w[..., i]
        res = np.where(valid[..., i], np.where(v < res, res, v), res)
    return res


def _ref_pool_1d(node, ins, p):
    x = _readable(ins[0], (3,))
    j, valid = _pool_windows(ins[0].shape[-1], node.ne[0], p.k0, p.s0, p.p0)
    w = x[..., j]                                            # (..., OW, K)
    if p.op == OP_POOL_AVG:   # average over the in-range samples (0 when none)
        cnt = valid.sum(1)
        s = np.where(valid, w, 0.0).sum(-1)
        return np.where(cnt > 0, s / np.maximum(cnt, 1), 0.0)
    return _max_fold(w, np.broadcast_to(valid, w.shape))


def _pool1d_cases():
    out = []
    for pool in (OP_POOL_AVG, OP_POOL_MAX):
        for k0 in (1, 2, 3):
            for s0 in (1, 2, 3):
                for p0 in (0, 1, 2, 3):
                    for ne in ((10, 3, 2, 1), (11, 1, 3, 2), (128, 2, 1, 3)):
                        if _pool_output_size(ne[0], k0, s0, p0) <= 0:
                            continue
                        out.append(cc.case(
                            "POOL_1D", dict(pool_type=_POOL_NAMES[pool], type_input=cc.ggml_type("f32"),
                                            ne_input=list(ne), k0=k0, s0=s0, p0=p0),
                            (lambda ne, pool, k0, s0, p0: lambda ctx: pool_1d(
                                ctx, cc.leaf(ctx, "f32", ne, "input"), pool, k0, s0, p0))(
                                ne, pool, k0, s0, p0)))
    return out


POOL_1D = register(OpDef(
    "POOL_1D", _infer_pool_1d, params="op:i32 k0:i32 s0:i32 p0:i32", reference=_ref_pool_1d,
    cases=_pool1d_cases,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_pool_1d(c, s[0], p.op, p.k0, p.s0, p.p0),
    doc="Max or average over windows of k0 along dim 0 (average over the in-range samples)."))


def pool_1d(ctx, a, op, k0, s0, p0):
    """ggml_pool_1d(a, OP_POOL_MAX | OP_POOL_AVG, k0, s0, p0) -> F32."""
    return POOL_1D.build(ctx, [a], dict(op=int(op), k0=k0, s0=s0, p0=p0))


def _infer_pool_2d(srcs, p):
    a = need_src("POOL_2D", srcs, 0, "a")
    _check_pool_op("POOL_2D", p.op)
    need_type("POOL_2D", a, (_F32, _F16), "a")
    _need_pos("POOL_2D", k0=p.k0, k1=p.k1, s0=p.s0, s1=p.s1)
    # ggml sizes the result with the float paddings and stores them truncated to int32
    fp0 = getattr(p, "fp0", p.p0)
    fp1 = getattr(p, "fp1", p.p1)
    ow = _pool_output_size(a.ne[0], p.k0, p.s0, fp0)
    oh = _pool_output_size(a.ne[1], p.k1, p.s1, fp1)
    need(ow > 0 and oh > 0, "POOL_2D", "input too small for the window", a)
    return Out(_F32, [ow, oh, a.ne[2], a.ne[3]])


def _ref_pool_2d(node, ins, p):
    x = _readable(ins[0], (2, 3))
    jy, vy = _pool_windows(ins[0].shape[-2], node.ne[1], p.k1, p.s1, p.p1)
    jx, vx = _pool_windows(ins[0].shape[-1], node.ne[0], p.k0, p.s0, p.p0)
    w = x[:, :, jy[:, None, :, None], jx[None, :, None, :]]      # (A3, A2, OH, OW, K1, K0)
    valid = vy[:, None, :, None] & vx[None, :, None, :]
    if p.op == OP_POOL_AVG:   # ggml divides by k0*k1, padding included
        return np.where(valid, w, 0.0).sum((-2, -1)) / (p.k0 * p.k1)
    flat = w.shape[:-2] + (-1,)                                  # ky outer, kx inner: ggml's order
    return _max_fold(w.reshape(flat), np.broadcast_to(valid, w.shape).reshape(flat))


def pool_2d_grid():
    """ggml's POOL_2D case grid (test-backend-ops): (pool, k0, k1, s0, s1, p0, p1) for a
    10x10x3 input, k 1/3, s 1/2, p 0/1, avg and max; POOL_2D_BACK reuses it."""
    return itertools.product((OP_POOL_AVG, OP_POOL_MAX), (1, 3), (1, 3), (1, 2), (1, 2),
                             (0, 1), (0, 1))


def _pool2d_cases():
    out = []
    ne = (10, 10, 3, 1)
    for pool, k0, k1, s0, s1, p0, p1 in pool_2d_grid():
        out.append(cc.case(
            "POOL_2D",
            dict(pool_type=_POOL_NAMES[pool], type_input=cc.ggml_type("f32"),
                 ne_input=list(ne), k0=k0, k1=k1, s0=s0, s1=s1, p0=p0, p1=p1),
            (lambda a: lambda ctx: pool_2d(
                ctx, cc.leaf(ctx, "f32", a[0], "input", param=True), *a[1:]))(
                (ne, pool, k0, k1, s0, s1, p0, p1))))
    return out


POOL_2D = register(OpDef(
    "POOL_2D", _infer_pool_2d, params="op:i32 k0:i32 k1:i32 s0:i32 s1:i32 p0:i32 p1:i32",
    reference=_ref_pool_2d, cases=_pool2d_cases,
    nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_pool_2d(c, s[0], p.op, p.k0, p.k1, p.s0, p.s1,
                                                 float(p.p0), float(p.p1)),
    doc="Max or average over k0 x k1 windows of dims 0, 1 (average divides by k0*k1)."))


def pool_2d(ctx, a, op, k0, k1, s0, s1, p0, p1):
    """ggml_pool_2d(a, op, k0, k1, s0, s1, p0, p1) -> F32 (p0, p1 floats, stored as int)."""
    return POOL_2D.build(ctx, [a], dict(op=int(op), k0=k0, k1=k1, s0=s0, s1=s1, p0=int(p0),
                                        p1=int(p1)), hints=dict(fp0=float(p0), fp1=float(p1)))


# --- SSM_CONV ----------------------------------------------------------------------------------

def _infer_ssm_conv(srcs, p):
    sx = need_src("SSM_CONV", srcs, 0, "sx")
    c = need_src("SSM_CONV", srcs, 1, "c")
    need(sx.ne[3] == 1, "SSM_CONV", "sx must be 3-D [d_conv - 1 + n_t, d_inner, n_s]", sx)
    need(is_matrix(c), "SSM_CONV", "c must be a matrix [d_conv, d_inner]", c)
    d_conv, d_inner = c.ne[0], c.ne[1]
    n_t = sx.ne[0] - d_conv + 1
    need(sx.ne[1] == d_inner, "SSM_CONV", f"sx.ne[1]={sx.ne[1]} must equal d_inner={d_inner}",
         sx, c)
    need(n_t >= 0, "SSM_CONV", "sx is shorter than the convolution", sx, c)
    need_type("SSM_CONV", sx, (_F32,), "sx")
    need_type("SSM_CONV", c, (_F32,), "c")
    return Out(_F32, [d_inner, n_t, sx.ne[2], 1])


def _ref_ssm_conv(node, ins, p):
    sx, c = ins[0][0], ins[1][0, 0]                 # (n_s, d_inner, ncs), (d_inner, d_conv)
    win = np.lib.stride_tricks.sliding_window_view(sx, c.shape[1], axis=-1)  # (n_s, r, n_t, k)
    return np.einsum("srtk,rk->str", win, c)


def _ssm_conv_cases():
    out = []

    def add(ne_a, ne_b, slow=False):
        out.append(cc.case("SSM_CONV", dict(type=cc.ggml_type("f32"), ne_a=list(ne_a), ne_b=list(ne_b)),
                           lambda ctx: ssm_conv(ctx, cc.leaf(ctx, "f32", ne_a, "a"),
                                                cc.leaf(ctx, "f32", ne_b, "b")),
                           tags=("slow",) if slow else ()))

    for d_conv in (3, 4, 9):
        for d_inner in (1024, 1536, 2048):
            add((d_conv, d_inner, 1, 1), (d_conv, d_inner, 1, 1), slow=d_inner > 1024)
            add((2 * d_conv, d_inner, 1, 1), (d_conv, d_inner, 1, 1), slow=d_inner > 1024)
            add((d_conv, d_inner, 4, 1), (d_conv, d_inner, 1, 1), slow=d_inner > 1024)
            add((d_conv - 1 + 64, d_inner, 1, 1), (d_conv, d_inner, 1, 1), slow=True)
            add((d_conv - 1 + 64, d_inner, 4, 1), (d_conv, d_inner, 1, 1), slow=True)
    add((10, 10, 10, 1), (3, 10, 1, 1))               # test_ssm_conv's defaults, shapes fixed
    return out


SSM_CONV = register(OpDef(
    "SSM_CONV", _infer_ssm_conv, reference=_ref_ssm_conv, cases=_ssm_conv_cases,
    flops=lambda node: 2 * nelements(node) * node.src[1].ne[0],
    ggml=lambda g, c, s, p, node: g.ggml_ssm_conv(c, s[0], s[1]),
    doc="Mamba's causal depthwise conv: y[r, t, s] = sum_k sx[t + k, r, s] * c[k, r]."))


def ssm_conv(ctx, sx, c):
    """ggml_ssm_conv(sx [d_conv-1+n_t, d_inner, n_s], c [d_conv, d_inner]) -> [d_inner, n_t, n_s]."""
    return SSM_CONV.build(ctx, [sx, c])


# --- SSM_SCAN ----------------------------------------------------------------------------------

def _infer_ssm_scan(srcs, p):
    op = "SSM_SCAN"
    s = need_src(op, srcs, 0, "s (states)")
    x = need_src(op, srcs, 1, "x")
    dt = need_src(op, srcs, 2, "dt")
    A = need_src(op, srcs, 3, "A")
    B = need_src(op, srcs, 4, "B")
    C = need_src(op, srcs, 5, "C")
    ids = need_src(op, srcs, 6, "ids")
    K = p.K
    if not 1 <= K <= 2**31 - 1:
        raise ParamError(f"{op}: K={K} must be >= 1")
    for t, nm in ((s, "s"), (x, "x"), (dt, "dt"), (A, "A"), (B, "B"), (C, "C")):
        need_type(op, t, (_F32,), nm)
    need_type(op, ids, (_I32,), "ids")
    need(is_contiguous(s) and is_contiguous(dt) and is_contiguous(A), op,
         "s, dt and A must be contiguous", s, dt, A)
    for t in (x, B, C):
        need(t.nb[0] == 4 and t.nb[1] == t.ne[0] * 4, op, "x, B, C need packed dims 0 and 1", t)
    need(B.ne == C.ne, op, "B and C must have the same shape", B, C)
    d_state, head_dim, n_head, n_tok, n_seqs = s.ne[0], x.ne[0], x.ne[1], x.ne[2], x.ne[3]
    need(dt.ne[0] == n_head and dt.ne[1] == n_tok and dt.ne[2] == n_seqs and dt.ne[3] == 1, op,
         "dt must be [n_head, n_seq_tokens, n_seqs]", dt, x)
    need(s.ne[1] == head_dim and s.ne[2] == n_head, op, "s must be [d_state, head_dim, n_head, *]",
         s, x)
    need(B.ne[0] == d_state and B.ne[2] == n_tok and B.ne[3] == n_seqs, op,
         "B must be [d_state, n_group, n_seq_tokens, n_seqs]", B, s, x)
    need(B.ne[1] > 0 and n_head % B.ne[1] == 0, op, "n_head must be a multiple of n_group", B, x)
    need(ids.ne[0] == n_seqs and ids.ne[1] == ids.ne[2] == ids.ne[3] == 1, op,
         "ids must be a vector of n_seqs", ids, x)
    need(A.ne[1] == n_head and is_matrix(A), op, "A must be [d_state or 1, n_head]", A)
    if A.ne[0] != 1:
        need(A.ne[0] == d_state, op, "A.ne[0] must be 1 (Mamba-2) or d_state (Mamba-1)", A, s)
        need(K == 1, op, "rollback snapshots (K > 1) need a scalar A per head", A)
    n = nelements(x) + K * s.ne[0] * s.ne[1] * s.ne[2] * ids.ne[0]
    return Out(_F32, [n])


def _softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def _ref_ssm_scan(node, ins, p):
    """y and the final states (then K-1 rollback snapshots), as ggml's CPU kernel lays them out."""
    s, x, dt, A, B, C, ids = ins[:7]
    K = p.K
    ns, nt, nh, nr = x.shape
    ng, nc = B.shape[2], s.shape[3]
    ids = ids.reshape(-1)
    _check_range(ids, s.shape[0], node, node.src[6])
    g_of_h = np.arange(nh) // (nh // ng)
    A = A[0, 0]                                     # (nh, 1 or nc)
    y = np.zeros((ns, nt, nh, nr))
    states = np.zeros((K, ns, nh, nr, nc))
    for i3 in range(ns):
        st = s[ids[i3]].copy()                      # (nh, nr, nc)
        for t in range(nt):
            dsp = _softplus(dt[0, i3, t])           # (nh,)
            dA = np.exp(dsp[:, None] * A)           # (nh, 1) or (nh, nc)
            xdt = x[i3, t] * dsp[:, None]           # (nh, nr)
            Bg, Cg = B[i3, t][g_of_h], C[i3, t][g_of_h]          # (nh, nc)
            st = st * dA[:, None, :] + Bg[:, None, :] * xdt[:, :, None]
            y[i3, t] = (st * Cg[:, None, :]).sum(-1)
            slot = nt - 1 - t
            if K > 1 and 0 < slot < K:
                states[slot, i3] = st
        states[0, i3] = st
    return np.concatenate([y.reshape(-1), states.reshape(-1)])


def _check_range(ids, n, node, src):
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        from ..errors import DataError
        from ..errors import describe
        raise DataError(f"SSM_SCAN: sequence id out of range [0, {n}) in {describe(src)} "
                        f"(result {describe(node)})")


def _ssm_scan_cases():
    out = []

    def add(d_state, head_dim, n_head, n_group, n_tok, n_seqs, overlap=False, K=1, slow=False):
        def f(ctx):
            s = cc.leaf(ctx, "f32", [d_state, head_dim, n_head, n_seqs], "s")
            dt = cc.leaf(ctx, "f32", [n_head, n_tok, n_seqs], "dt")
            A = cc.leaf(ctx, "f32", [d_state if head_dim == 1 else 1, n_head], "A")
            if overlap:
                xbc = cc.leaf(ctx, "f32", [d_state, n_head, n_tok, 2 * n_seqs], "xbc")
                nb = xbc.nb
                x = _view_4d(ctx, xbc, head_dim, n_head, n_tok, n_seqs, nb[1], nb[2], nb[3], nb[3])
                B = _view_4d(ctx, xbc, d_state, n_group, n_tok, n_seqs, nb[1], nb[2], nb[3], 0)
                C = _view_4d(ctx, xbc, d_state, n_group, n_tok, n_seqs, nb[1], nb[2], nb[3],
                             2 * nb[3])
            else:
                x = cc.leaf(ctx, "f32", [head_dim, n_head, n_tok, n_seqs], "x")
                B = cc.leaf(ctx, "f32", [d_state, n_group, n_tok, n_seqs], "B")
                C = cc.leaf(ctx, "f32", [d_state, n_group, n_tok, n_seqs], "C")
            ids = cc.leaf(ctx, "i32", [n_seqs], "ids")
            return ssm_scan(ctx, s, x, dt, A, B, C, ids, K)

        def init(t, rng):
            if t.type == _I32:
                return rng.permutation(t.ne[0])
            if t.ne[1] == n_head and t.ne[2] == 1:       # A: negative decay
                return rng.uniform(-1.0, -0.5, size=t.ne[::-1])
            return None
        out.append(cc.case("SSM_SCAN", dict(type=cc.ggml_type("f32"), d_state=d_state, head_dim=head_dim,
                                            n_head=n_head, n_group=n_group,
                                            n_seq_tokens=n_tok, n_seqs=n_seqs,
                                            xbc_overlap=overlap, K=K), f, init=init,
                           max_nmse=2e-7 if head_dim > 1 else 1e-7,
                           tags=("slow",) if slow else ()))

    add(16, 1, 1024, 1, 32, 4)                           # Mamba-1
    add(128, 64, 16, 2, 32, 4, slow=True)                # Mamba-2
    add(256, 64, 8, 2, 32, 4, slow=True)                 # Falcon-H1
    add(128, 128, 4, 4, 16, 2, True, slow=True)          # x/B/C overlap
    add(128, 80, 128, 1, 256, 1, slow=True)              # Nemotron-9B SSD path
    add(128, 80, 128, 1, 512, 1, slow=True)
    add(128, 64, 80, 8, 300, 2, slow=True)
    add(128, 64, 16, 2, 4, 2, K=4, slow=True)            # rollback snapshots
    add(128, 64, 16, 2, 8, 2, K=3, slow=True)            # rollback overflow
    # pyggml extras: the same layouts, small
    add(16, 4, 4, 2, 6, 2)
    add(8, 8, 4, 4, 3, 2, True)
    add(16, 4, 4, 2, 5, 3, K=3)
    add(16, 4, 4, 2, 3, 2, K=3)
    return out


SSM_SCAN = register(OpDef(
    "SSM_SCAN", _infer_ssm_scan, params="K:i32", reference=_ref_ssm_scan,
    cases=_ssm_scan_cases, max_nmse=1e-7,
    flops=lambda node: 6 * nelements(node.src[1]) * node.src[0].ne[0],
    ggml=lambda g, c, s, p, node: g.ggml_ssm_scan(c, s[0], s[1], s[2], s[3], s[4], s[5], s[6],
                                                  p.K),
    doc="Mamba selective scan: F32 [y (x's size) | K state blocks per sequence]."))


def ssm_scan(ctx, s, x, dt, A, B, C, ids, K=1):
    """ggml_ssm_scan: y and the updated states (plus K-1 rollback snapshots) in one F32 vector."""
    return SSM_SCAN.build(ctx, [s, x, dt, A, B, C, ids], dict(K=K))
