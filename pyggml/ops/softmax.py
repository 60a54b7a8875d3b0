"""Soft max and causal masks: SOFT_MAX (soft_max, soft_max_ext, + soft_max_add_sinks),
SOFT_MAX_BACK (soft_max_ext_back), DIAG_MASK_INF, DIAG_MASK_ZERO.

soft_max_ext(a, mask, scale, max_bias), per row x of a (F32, contiguous) at (i1, i2, i3):
    w = x * scale + slope(i2) * mask[i1, i2 % mask.ne2, i3 % mask.ne3]
    y = exp(w - M) / (sum(exp(w - M)) + exp(sink[i2] - M)),   M = max(max(w), sink[i2])
mask (F16 or F32, contiguous) has mask.ne0 == a.ne0, mask.ne1 >= a.ne1 (rows past a.ne1 are
ignored: ggml pads masks to the batch size), and broadcasts over ne2/ne3 (a.ne2 % mask.ne2 == 0,
a.ne3 % mask.ne3 == 0). The sink term is present only after soft_max_add_sinks(y, sinks),
sinks F32 [a.ne2]. ALiBi (max_bias > 0, needs a mask): with n_head = a.ne2,
n_head_log2 = 2^floor(log2(n_head)), m0 = 2^(-max_bias/n_head_log2),
m1 = 2^(-(max_bias/2)/n_head_log2), slope(h) = m0^(h+1) if h < n_head_log2 else
m1^(2(h - n_head_log2) + 1); slope = 1 without ALiBi. A row that is entirely -inf (and has
no sink) gives NaN, exactly as ggml (exp(-inf - -inf)).
op_params: [scale, max_bias] (f32 bit-cast).
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import ParamError
from ..errors import describe
from ..tensor import Tensor
from ..tensor import is_contiguous
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from . import cases_common as cc
from .builders import op_builders
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import grad_rule
from .registry import inplace_of
from .registry import need
from .registry import need_pair
from .registry import need_src
from .registry import need_type
from .registry import register

F32, F16 = GGMLType.F32, GGMLType.F16


def _rw_bytes(node):
    return sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


def _is_inplace(node) -> bool:
    return node.view_src is not None


def _alibi_slopes(n_head: int, max_bias: float, dtype=np.float32) -> np.ndarray:
    """ALiBi slope per head (ne2 index): ggml's m0/m1 over n_head_log2, ones when max_bias <= 0.
    dtype np.float32 computes with powf as ggml's CPU does (soft_max_ext, the ggml mirror);
    np.float64 is the exact value (flash attention's float64 reference)."""
    if max_bias <= 0.0:
        return np.ones(n_head, dtype=np.float64)
    f = dtype
    n_head_log2 = f(1 << int(np.floor(np.log2(n_head))))
    two, mb = f(2.0), f(max_bias)
    m0 = np.power(two, -mb / n_head_log2)
    m1 = np.power(two, -(mb / two) / n_head_log2)
    h = np.arange(n_head)
    slopes = np.where(h < n_head_log2,
                      np.power(m0, (h + 1).astype(f)),
                      np.power(m1, (2 * (h - n_head_log2) + 1).astype(f)))
    return slopes.astype(f).astype(np.float64)


# --- SOFT_MAX ---------------------------------------------------------------------------------

def _infer_soft_max(srcs, p):
    a = need_src("SOFT_MAX", srcs, 0, "a")
    mask = srcs[1] if len(srcs) > 1 else None
    need_type("SOFT_MAX", a, (F32,), "a")
    need(is_contiguous(a), "SOFT_MAX", "a must be contiguous", a)
    if mask is not None:
        need_type("SOFT_MAX", mask, (F16, F32), "mask")
        need(is_contiguous(mask), "SOFT_MAX", "mask must be contiguous", mask)
        need(mask.ne[0] == a.ne[0], "SOFT_MAX", "mask.ne0 must equal a.ne0", a, mask)
        need(mask.ne[1] >= a.ne[1], "SOFT_MAX", "mask.ne1 must be >= a.ne1 (mask too small)",
             a, mask)
        need(mask.ne[2] > 0 and mask.ne[3] > 0 and a.ne[2] % mask.ne[2] == 0 and
             a.ne[3] % mask.ne[3] == 0, "SOFT_MAX",
             "mask must broadcast over a (a.ne2 % mask.ne2 == 0, a.ne3 % mask.ne3 == 0)", a, mask)
    sinks = srcs[2] if len(srcs) > 2 else None
    if sinks is not None:              # the node may be built with them (not only attached)
        _need_sinks(a, sinks)
    if np.isnan(p.max_bias):
        raise ParamError(f"SOFT_MAX: max_bias is NaN [{describe(a)}]")
    if p.max_bias > 0.0 and mask is None:
        raise ParamError(f"SOFT_MAX: max_bias > 0 (ALiBi) needs a mask [{describe(a)}]")
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _ref_soft_max(node, ins, p):
    x, mask, sinks = ins[0], ins[1], ins[2]
    ne3, ne2, ne1, ne0 = x.shape
    w = x * np.float64(np.float32(p.scale))
    if mask is not None:
        m = mask[:, :, :ne1, :]                                 # rows past a.ne1 unused
        m = np.tile(m, (ne3 // m.shape[0], ne2 // m.shape[1], 1, 1))
        w = w + _alibi_slopes(ne2, p.max_bias)[None, :, None, None] * m
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mx = w.max(axis=-1, keepdims=True)
        if sinks is not None:
            sk = sinks.reshape(-1)[None, :, None, None]          # one sink per head (ne2)
            mx = np.maximum(mx, sk)
        e = np.exp(w - mx)
        s = e.sum(axis=-1, keepdims=True)
        if sinks is not None:
            s = s + np.exp(sk - mx)
        return e / s


def _soft_max_cases():
    out = []

    def add(ne, mask, sinks, m_prec, nr23, scale, max_bias, inplace=False, tags=()):
        def build(ctx):
            # grad mode: a is a parameter as in ggml, except with sinks: sum(soft_max) is then
            # 1 - y_sink, whose tiny gradient float32 finite differences cannot resolve
            a = cc.leaf(ctx, "f32", [ne[0], ne[1], ne[2] * nr23[0], ne[3] * nr23[1]], "a",
                        param=not sinks)
            m = cc.leaf(ctx, m_prec, ne, "mask") if mask else None
            s = cc.leaf(ctx, "f32", [ne[2] * nr23[0]], "sinks") if sinks else None
            y = (soft_max_ext_inplace if inplace else soft_max_ext)(ctx, a, m, scale, max_bias)
            soft_max_add_sinks(y, s)
            return y
        out.append(cc.case("SOFT_MAX", dict(type=cc.ggml_type("f32"), ne=ne, mask=mask, sinks=sinks,
                                            m_prec=cc.ggml_type(m_prec), nr23=nr23, scale=scale,
                                            max_bias=max_bias, inplace=inplace), build, tags=tags,
                           grad=dict(precise=True)))

    for mask in (False, True):
        for sinks in (False, True):
            for max_bias, scale, ne0, ne1 in itertools.product((0.0, 8.0), (1.0, 0.1), (16, 1024), (16, 1024)):
                if not mask and max_bias > 0.0:
                    continue
                big = ("slow",) if ne0 * ne1 > 16 * 1024 else ()
                # keep one big grid point per (mask, sinks) in the fast subset
                if ne0 * ne1 == 16 * 1024 and not (scale == 0.1 and max_bias == 0.0):
                    big = ("slow",)
                if mask:
                    for m_prec in ("f32", "f16"):
                        add([ne0, ne1, 1, 1], mask, sinks, m_prec, [1, 1], scale,
                            max_bias, tags=big)
                        add([ne0 - 1, ne1 - 1, 1, 1], mask, sinks, m_prec, [1, 1],
                            scale, max_bias, tags=big)
                        if ne0 <= 32 and ne1 <= 32:
                            add([ne0, ne1, 1, 3], mask, sinks, m_prec, [3, 1], scale,
                                max_bias)
                            add([ne0 - 1, ne1 - 1, 1, 1], mask, sinks, m_prec, [2, 3],
                                scale, max_bias)
                else:
                    add([ne0, ne1, 1, 1], mask, sinks, "f32", [1, 1], scale, max_bias,
                        tags=big)
                    add([ne0 - 1, ne1 - 1, 1, 1], mask, sinks, "f32", [1, 1], scale,
                        max_bias, tags=big)
            add([16, 2, 32, 1], mask, sinks, "f32", [1, 1], 0.1, 0.0, inplace=True)
            add([16, 2, 32, 1], mask, sinks, "f16", [1, 1], 0.1, 0.0, inplace=True)
    add([16, 2, 32, 1], True, True, "f32", [1, 1], 0.1, 0.0)
    add([16, 2, 32, 1], True, False, "f16", [1, 1], 0.1, 0.0)
    add([16, 2, 32, 1], False, True, "f32", [1, 1], 0.1, 0.0)
    add([32, 2, 32, 1], True, True, "f32", [1, 1], 0.1, 0.0)
    add([32, 2, 32, 1], True, False, "f16", [1, 1], 0.1, 0.0)
    add([32, 2, 32, 1], True, True, "f32", [1, 1], 0.1, 8.0)
    add([32, 2, 32, 1], True, True, "f16", [1, 1], 0.1, 8.0)
    # pyggml extras: ALiBi with a head count that is not a power of two (the m1 slopes) and
    # a mask broadcast over ne2 and ne3 at once, with a mask taller than a (padded batch)
    add([24, 3, 6, 2], True, True, "f16", [2, 1], 0.5, 4.0)
    add([17, 5, 5, 1], True, False, "f32", [1, 1], 1.0, 2.0)
    slow = ("slow",)
    add([200001, 2, 3, 1], True, True, "f32", [1, 1], 0.1, 8.0, tags=slow)
    add([200001, 2, 3, 1], True, True, "f16", [1, 1], 0.1, 8.0, tags=slow)
    add([200000, 1, 1, 1], False, False, "f32", [1, 1], 1.0, 0.0, tags=slow)
    add([200000, 4, 1, 1], False, False, "f32", [1, 1], 1.0, 0.0, tags=slow)
    add([643251, 3, 1, 1], False, False, "f32", [1, 1], 1.0, 0.0, tags=slow)

    # a padded mask (more rows than a) and a causal -inf mask, built directly
    def build_pad(ctx):
        a = cc.leaf(ctx, "f32", [32, 7, 4, 1], "a")
        m = cc.leaf(ctx, "f16", [32, 16, 1, 1], "mask")
        return soft_max_ext(ctx, a, m, 0.125, 0.0)

    def causal(leaf, rng):
        if leaf.name != "mask":
            return None
        ne0, ne1 = leaf.ne[0], leaf.ne[1]
        i = np.arange(ne0)[None, :]
        j = np.arange(ne1)[:, None]
        return np.broadcast_to(np.where(i > j + (ne0 - 7), -np.inf, 0.0), leaf.ne[::-1])
    out.append(cc.case("SOFT_MAX", dict(type=cc.ggml_type("f32"), ne=[32, 7, 4, 1], mask=True,
                                        sinks=False, m_prec=cc.ggml_type("f16"), nr23=[1, 1],
                                        scale=0.125, max_bias=0.0, inplace=False,
                                        mask_rows=16, causal=True), build_pad, init=causal))
    return out


def _soft_max_ggml(g, c, s, p, node):
    mask = s[1] if node.src[1] is not None else None
    make = g.ggml_soft_max_ext_inplace if _is_inplace(node) else g.ggml_soft_max_ext
    t = make(c, s[0], mask, p.scale, p.max_bias)
    if node.src[2] is not None:
        g.ggml_soft_max_add_sinks(t, s[2])
    return t


SOFT_MAX = register(OpDef(
    "SOFT_MAX", _infer_soft_max, params="scale:f32 max_bias:f32", reference=_ref_soft_max,
    cases=_soft_max_cases, max_nmse=1e-6,
    flops=lambda node: 5 * nelements(node), nbytes=_rw_bytes, ggml=_soft_max_ggml,
    doc="Row soft max of a*scale + slope*mask, with optional ALiBi and attention sinks."))


def soft_max(ctx, a):
    return SOFT_MAX.build(ctx, [a], dict(scale=1.0, max_bias=0.0))


def soft_max_inplace(ctx, a):
    return SOFT_MAX.build(ctx, [a], dict(scale=1.0, max_bias=0.0), hints=dict(inplace=True))


def soft_max_ext(ctx, a, mask, scale, max_bias):
    return SOFT_MAX.build(ctx, [a, mask], dict(scale=scale, max_bias=max_bias))


def soft_max_ext_inplace(ctx, a, mask, scale, max_bias):
    return SOFT_MAX.build(ctx, [a, mask], dict(scale=scale, max_bias=max_bias),
                          hints=dict(inplace=True))


def _need_sinks(x, sinks):
    need_type("SOFT_MAX", sinks, (F32,), "sinks")
    need(sinks.ne[0] == x.ne[2] and nelements(sinks) == sinks.ne[0], "SOFT_MAX",
         "sinks must be a vector of a.ne2 values (one per head)", x, sinks)


def soft_max_add_sinks(a, sinks):
    """ggml_soft_max_add_sinks: attach sinks (F32 [a.src0.ne2]) to a soft_max node as src[2];
    sinks None removes them. Modifies `a` in place (returns None, as ggml)."""
    if not isinstance(a, Tensor):
        raise ParamError(f"soft_max_add_sinks: a must be a Tensor, got {type(a).__name__}")
    if sinks is None:
        a.src[2] = None
        return None
    if a.op is not SOFT_MAX:
        fail("SOFT_MAX", f"soft_max_add_sinks needs a SOFT_MAX node, got op {a.op_name}", a)
    need(a.src[2] is None, "SOFT_MAX", "the node already has sinks", a, a.src[2])
    _need_sinks(a.src[0], sinks)
    a.src[2] = sinks
    return None


# --- SOFT_MAX_BACK ----------------------------------------------------------------------------

def _infer_soft_max_back(srcs, p):
    a, b = need_pair("SOFT_MAX_BACK", srcs, "a (gradient dy)", "b (soft_max output y)", (F32,))
    need(is_contiguous(a) and is_contiguous(b), "SOFT_MAX_BACK",
         "a and b must be contiguous", a, b)
    if p.max_bias != 0.0:
        raise ParamError(f"SOFT_MAX_BACK: max_bias must be 0 (ALiBi has no backward in ggml's "
                         f"CPU kernel), got {p.max_bias} [{describe(a)}]")
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _ref_soft_max_back(node, ins, p):
    dy, y = ins[0], ins[1]
    # ggml keeps dot(y, dy) in a float: for sum(soft_max) (dy = 1) it rounds to exactly 1 and
    # the gradient is exactly 0, as it is in exact math; unrounded, ~1e-10 residues remain,
    # and grad mode's measure |gn - ga| / |gn + ga| is 1 for every element (gn = 0)
    dot = (y * dy).sum(axis=-1, keepdims=True).astype(np.float32).astype(np.float64)
    return (dy - dot) * y * np.float64(np.float32(p.scale))


def _soft_max_back_cases():
    out = []
    # ggml's grid also lists max_bias=8, which its CPU kernel rejects (GGML_ASSERT): omitted
    for scale in (1.0, 0.1):
        for ne0 in (16, 1024):
            for ne1 in (16, 1024):
                for ne in ([ne0, ne1, 1, 1], [ne0 - 1, ne1 - 1, 1, 1], [ne0, ne1, 2, 3]):
                    def build(ctx, ne=ne, scale=scale):
                        a = cc.leaf(ctx, "f32", ne, "a")
                        b = cc.leaf(ctx, "f32", ne, "b")
                        return soft_max_ext_back(ctx, a, b, scale, 0.0)
                    tags = ("slow",) if ne[0] * ne[1] * ne[2] * ne[3] > 20000 else ()
                    out.append(cc.case("SOFT_MAX_BACK", dict(type=cc.ggml_type("f32"), ne=ne,
                                                             scale=scale, max_bias=0.0),
                                       build, tags=tags))
    return out


SOFT_MAX_BACK = register(OpDef(
    "SOFT_MAX_BACK", _infer_soft_max_back, params="scale:f32 max_bias:f32",
    reference=_ref_soft_max_back, cases=_soft_max_back_cases,
    flops=lambda node: 4 * nelements(node), nbytes=_rw_bytes,
    ggml=lambda g, c, s, p, node: (g.ggml_soft_max_ext_back_inplace if _is_inplace(node)
                                   else g.ggml_soft_max_ext_back)(c, s[0], s[1], p.scale,
                                                                  p.max_bias),
    doc="Gradient of soft_max_ext: a = dy, b = y (the soft max output): scale*y*(dy - <y,dy>)."))


def soft_max_ext_back(ctx, a, b, scale, max_bias):
    return SOFT_MAX_BACK.build(ctx, [a, b], dict(scale=scale, max_bias=max_bias))


def soft_max_ext_back_inplace(ctx, a, b, scale, max_bias):
    return SOFT_MAX_BACK.build(ctx, [a, b], dict(scale=scale, max_bias=max_bias),
                               hints=dict(inplace=True))


# --- DIAG_MASK_INF / DIAG_MASK_ZERO -----------------------------------------------------------

def _infer_diag_mask(op):
    def infer(srcs, p):
        a = need_src(op, srcs, 0, "a")
        need_type(op, a, (F32,), "a")
        if p.n_past < 0:
            raise ParamError(f"{op}: n_past must be >= 0, got {p.n_past} [{describe(a)}]")
        inplace = getattr(p, "inplace", False)
        # ggml copies a into the result with one memcpy (non-inplace) and writes rows with nb0 == 4
        need(inplace or is_contiguous(a), op, "a must be contiguous (ggml memcpy's it)", a)
        need(a.nb[0] == 4, op, "a's rows must be packed (nb0 == 4)", a)
        return inplace_of(a) if inplace else Out(a.type, a.ne)
    return infer


def _ref_diag_mask(value):
    def ref(node, ins, p):
        x = ins[0].copy()
        ne1, ne0 = x.shape[2], x.shape[3]
        i = np.arange(ne0)[None, :]
        j = np.arange(ne1)[:, None]
        x[..., (i > p.n_past + j)] = value
        return x
    return ref


def _diag_mask_cases(op, fn):
    def cases():
        out = []
        for ne, n_past in (([10, 10, 1, 1], 5), ([10, 10, 3, 1], 5), ([10, 10, 3, 2], 5),
                           ([7, 12, 2, 1], 0), ([33, 5, 1, 2], 40)):
            def build(ctx, ne=ne, n_past=n_past):
                return fn(ctx, cc.leaf(ctx, "f32", ne, "a", param=True), n_past)
            out.append(cc.case(op, dict(type=cc.ggml_type("f32"), ne=ne, n_past=n_past), build))
        return out
    return cases


DIAG_MASK_INF = register(OpDef(
    "DIAG_MASK_INF", _infer_diag_mask("DIAG_MASK_INF"), params="n_past:i32",
    reference=_ref_diag_mask(-np.inf), nbytes=_rw_bytes,
    cases=lambda: _diag_mask_cases("DIAG_MASK_INF", diag_mask_inf)(),
    ggml=lambda g, c, s, p, node: (g.ggml_diag_mask_inf_inplace if _is_inplace(node)
                                   else g.ggml_diag_mask_inf)(c, s[0], p.n_past),
    doc="Sets a[.., j, i] = -inf where i > n_past + j (causal mask)."))

DIAG_MASK_ZERO = register(OpDef(
    "DIAG_MASK_ZERO", _infer_diag_mask("DIAG_MASK_ZERO"), params="n_past:i32",
    reference=_ref_diag_mask(0.0), nbytes=_rw_bytes,
    cases=lambda: _diag_mask_cases("DIAG_MASK_ZERO", diag_mask_zero)(),
    ggml=lambda g, c, s, p, node: (g.ggml_diag_mask_zero_inplace if _is_inplace(node)
                                   else g.ggml_diag_mask_zero)(c, s[0], p.n_past),
    doc="Sets a[.., j, i] = 0 where i > n_past + j."))


diag_mask_inf, diag_mask_inf_inplace = op_builders(DIAG_MASK_INF, "diag_mask_inf", params=("n_past",))


diag_mask_zero, diag_mask_zero_inplace = op_builders(DIAG_MASK_ZERO, "diag_mask_zero", params=("n_past",))


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(SOFT_MAX)
def _grad_soft_max(g, node, grad):
    p = SOFT_MAX.p(node)
    if g.needs(0):
        g.add(0, soft_max_ext_back(g.ctx, grad, node, p.scale, p.max_bias))
    for i in (1, 2):
        need(not g.needs(i), "SOFT_MAX", f"backward: no gradient for src[{i}] (the mask / "
             f"sinks) is implemented (as in ggml); do not make it depend on a parameter",
             node.src[i])


def _grad_diag_mask(g, node, grad):
    """Masked entries are constants: their gradient is 0 (diag_mask_zero), both masks."""
    if g.needs(0):
        g.add(0, diag_mask_zero(g.ctx, grad, node.op.p(node).n_past))


grad_rule(DIAG_MASK_INF)(_grad_diag_mask)
grad_rule(DIAG_MASK_ZERO)(_grad_diag_mask)
