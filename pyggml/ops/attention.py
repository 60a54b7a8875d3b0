"""Attention: FLASH_ATTN_EXT (as ggml) and FLASH_ATTN_EXT_WITH_STATE (pyggml's headline op).

    flash_attn_ext(ctx, q, k, v, mask, scale, max_bias, logit_softcap)
        q    F32  [DK, n_batch, n_head,    ne3]
        k         [DK, n_kv,    n_head_kv, ne3k]   F32 F16 BF16 Q8_0 Q5_1 Q5_0 Q4_1 Q4_0
        v         [DV, n_kv,    n_head_kv, ne3k]   same set (DK != DV allowed; not transposed)
        mask F16/F32 [n_kv, n_batch_pad >= n_batch, ne32, ne33]   (optional)
        ->   F32  [DV, n_head, n_batch, ne3]        (permuted, as ggml)
      Broadcast as ggml's CPU indexes it: q head h reads K/V head h / (n_head / n_head_kv)
      (GQA) and K/V plane i3 / (ne3 / ne3k); the mask row of (h, i3) is
      mask[:, pos, h % ne32, i3 % ne33]. (ggml.c itself insists on ne3k == ne3; pyggml
      also accepts ne3 % ne3k == 0, which ggml's CPU kernel already indexes correctly.)
      Score of key j for query row (h, pos, i3):
          s = (q · k_j) * scale
          s = logit_softcap * tanh(s / logit_softcap)             if logit_softcap != 0
          s = s + slope_h * mask[j, pos]                          (-inf excludes key j)
      slope_h is ALiBi's (max_bias > 0; needs a mask) and 1 otherwise; the output is
      softmax(s) · V, with an optional sink logit per head (src[4], F32 [n_head]) that
      joins the softmax with a zero value vector. A row whose keys are all masked gives 0.
    op_params: [scale, max_bias, logit_softcap, prec] (floats bit-cast, prec int32):
      PREC_DEFAULT (0): kernels may round Q to K's dot type first (F16/BF16, Q8_0/Q8_1 for
        quantized K, integer dots), as ggml's CPU does;
      PREC_F32 (10): every product and sum in F32 on dequantized K/V.
      The reference computes both in float64 on the dequantized K/V (the exact math).
      ggml's own distance from it (GGML-FACTS.md): NMSE ~6e-6 for F16 K/V (Q rounded to
      F16, F16 V accumulation), ~1.5e-6 for quantized K/V, float32 rounding for F32 K/V.
      Threshold: ggml's max_nmse_err for the op, 5e-4.

    flash_attn_ext_with_state(ctx, q, k, v, mask, k_quant, v_quant, qk_mask_quant,
                              s_m_state, scale, max_bias, logit_softcap, o_prev=None)
      src[0..3] = q, hot K, hot V, hot mask; src[4..5] = cold K, cold V; src[6] = the
      softmax state (F32 [2, n_head*n_batch, ne3], rows [M, S], written in place);
      src[7] = cold mask; src[8] = o_prev (the output of the previous call). One online
      softmax over hot ∪ cold, merged with the incoming state (pyggml.ops.fa_state):
      chaining calls over consecutive key segments equals one call over all keys.

Helpers: flash_attn_ext_set_prec / get_prec / add_sinks as ggml; flash_attn_state_new,
flash_attn_state_init, flash_attn_state_reset for the state tensor.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from ..errors import ComputeError
from ..errors import GGMLError
from ..errors import ParamError
from ..errors import describe
from ..tensor import Tensor
from ..tensor import is_contiguous
from ..tensor import nbytes
from ..types import FA_KV_TYPES
from ..types import PREC_DEFAULT
from ..types import PREC_F32
from ..types import TRAITS
from ..types import GGMLType
from . import cases_common as cc
from . import fa_state as st
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .softmax import _alibi_slopes

T = GGMLType
MAX_NMSE = 5e-4
MASK_TYPES = (T.F16, T.F32)
_PARAMS = "scale:f32 max_bias:f32 logit_softcap:f32 prec:i32"
_OP = "FLASH_ATTN_EXT"
_OP_WS = "FLASH_ATTN_EXT_WITH_STATE"

# sources of FLASH_ATTN_EXT_WITH_STATE
WS_Q, WS_K, WS_V, WS_MASK, WS_KQ, WS_VQ, WS_STATE, WS_MASKQ, WS_OPREV = range(9)


# --- checks shared by both ops ---------------------------------------------------------------

def _rows_packed(op, t, what):
    tr = TRAITS[t.type]
    if t.nb[0] != tr.type_size:
        fail(op,
             f"{what} needs packed rows (nb[0] == {tr.type_size}), got nb={t.nb}; permute so "
             f"that dim 0 stays contiguous, or cont() it", t)


def _check_q(op, q):
    need_type(op, q, (T.F32,), "q")
    _rows_packed(op, q, "q")


def _need_divides(op, q, t, d, msg, *tensors):
    """t broadcasts over q along dim d (GQA heads, sequences): q.ne[d] a multiple of t.ne[d]."""
    if not (t.ne[d] > 0 and q.ne[d] % t.ne[d] == 0):
        fail(op, msg, *tensors)


def _check_segment(op, q, k, v, mask, names, max_bias):
    """One K/V segment (with its optional mask) against q; returns (n_kv, DV)."""
    kn, vn, mn = names
    need_type(op, k, FA_KV_TYPES, kn)
    need_type(op, v, FA_KV_TYPES, vn)
    if k.ne[0] != q.ne[0]:
        fail(op, f"{kn} rows have {k.ne[0]} values but q rows have "
             f"{q.ne[0]} (head size DK must match)", q, k)
    if v.ne[1] != k.ne[1]:
        fail(op, f"{vn} has {v.ne[1]} rows (keys) but {kn} has {k.ne[1]}", k, v)
    for t, n in ((k, kn), (v, vn)):
        _need_divides(op, q, t, 2, f"n_head={q.ne[2]} of q is not a multiple of the {t.ne[2]} heads of {n} (GQA)",
                      q, t)
        _need_divides(op, q, t, 3, f"ne[3]={q.ne[3]} of q is not a multiple of ne[3]={t.ne[3]} of {n}", q, t)
        _rows_packed(op, t, n)
    if mask is not None:
        need_type(op, mask, MASK_TYPES, mn)
        if mask.ne[0] != k.ne[1]:
            fail(op, f"{mn} has {mask.ne[0]} columns but there are "
                 f"{k.ne[1]} keys (mask ne[0] must be n_kv)", mask, k)
        if not (mask.ne[1] >= q.ne[1]):
            fail(op, f"{mn} has {mask.ne[1]} rows, fewer than the "
                 f"n_batch={q.ne[1]} queries", mask, q)
        _need_divides(op, q, mask, 2, f"n_head={q.ne[2]} is not a multiple of {mn} ne[2]={mask.ne[2]}", mask, q)
        _need_divides(op, q, mask, 3, f"q ne[3]={q.ne[3]} is not a multiple of {mn} ne[3]={mask.ne[3]}", mask, q)
        _rows_packed(op, mask, mn)
    elif max_bias > 0:
        fail(op, f"max_bias={max_bias} (ALiBi) needs a mask for {kn}", k, cls=ParamError)
    return k.ne[1], v.ne[0]


def _check_prec(op, prec):
    if prec not in (PREC_DEFAULT, PREC_F32):
        raise ParamError(f"{op}: prec must be PREC_DEFAULT (0) or PREC_F32 (10), got {prec}")


def _check_params(op, p):
    _check_prec(op, p.prec)
    for name in ("scale", "max_bias", "logit_softcap"):
        v = getattr(p, name)
        if not math.isfinite(v):
            raise ParamError(f"{op}: {name} must be finite, got {v}")
    if p.max_bias < 0:
        raise ParamError(f"{op}: max_bias must be >= 0, got {p.max_bias}")


# --- FLASH_ATTN_EXT ----------------------------------------------------------------------------

def _infer_fa(srcs, p):
    q = need_src(_OP, srcs, 0, "q")
    k = need_src(_OP, srcs, 1, "k")
    v = need_src(_OP, srcs, 2, "v")
    mask = srcs[3] if len(srcs) > 3 else None
    _check_params(_OP, p)
    _check_q(_OP, q)
    _, dv = _check_segment(_OP, q, k, v, mask, ("k", "v", "mask"), p.max_bias)
    if len(srcs) > 4 and srcs[4] is not None:
        _check_sinks(srcs[0], srcs[4])
    return Out(T.F32, [dv, q.ne[2], q.ne[1], q.ne[3]])


def _check_sinks(q, sinks):
    need_type(_OP, sinks, (T.F32,), "sinks")
    if sinks.ne[0] != q.ne[2]:
        fail(_OP, f"sinks has {sinks.ne[0]} values but q has "
             f"{q.ne[2]} heads (one sink logit per head)", sinks, q)
    if 0 in sinks.ne[1:]:     # ggml checks ne[0] only, then reads n_head floats of nothing
        fail(_OP, "sinks is empty (a zero in ne[1:]): there are no sink logits to read", sinks)
    if sinks.nb[0] != 4:      # ggml's CPU reads sinks[h] as a plain float array
        fail(_OP, f"sinks must hold its {sinks.ne[0]} logits contiguously (nb[0] = 4, got "
             f"{sinks.nb[0]}); cont() it first", sinks)


# --- the reference math (float64) -----------------------------------------------------------

def _broadcast_kv(x, ne3, n_head):
    """(ne3x, hx, n, d) -> (ne3, n_head, n, d) as ggml indexes it (i3 / r3, h / r2)."""
    i3 = np.arange(ne3) // (ne3 // x.shape[0])
    h = np.arange(n_head) // (n_head // x.shape[1])
    return x[i3][:, h]


def _segment_softmax(q, k, v, mask, scale, softcap, slopes):
    """One segment's partial softmax: (M, S, O) with O normalized.

    q (ne3, H, N, DK); k (k3, Hk, n_kv, DK); v (v3, Hv, n_kv, DV); mask (m3, m2, Np, n_kv)
    or None; all float64. M, S: (ne3, H, N); O: (ne3, H, N, DV). Rows whose keys are all
    masked (or with no keys) give M = -inf, S = 0, O = 0.
    """
    ne3, H, N, _ = q.shape
    n_kv, dv = k.shape[2], v.shape[3]
    if n_kv == 0:
        return (np.full((ne3, H, N), -np.inf), np.zeros((ne3, H, N)),
                np.zeros((ne3, H, N, dv)))
    kk = _broadcast_kv(k, ne3, H)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.einsum("ahnd,ahkd->ahnk", q, kk) * scale
        if softcap != 0.0:
            s = softcap * np.tanh(s / softcap)
        if mask is not None:
            mm = mask[np.arange(ne3) % mask.shape[0]][:, np.arange(H) % mask.shape[1]][:, :, :N, :]
            # a masked key is never looked at (as ggml: its K/V slots may hold anything)
            s = np.where(np.isneginf(mm), -np.inf, s + slopes[None, :, None, None] * mm)
    m = s.max(axis=-1)
    has = m > -np.inf
    e = np.where(has[..., None], np.exp(s - np.where(has, m, 0.0)[..., None]), 0.0)
    ssum = e.sum(axis=-1)
    vv = _broadcast_kv(v, ne3, H)
    finite = np.isfinite(vv)
    o = np.einsum("ahnk,ahkd->ahnd", e, np.where(finite, vv, 0.0))
    if not finite.all():
        # non-finite values of keys a row does see reach its output (only those keys')
        hit = np.einsum("ahnk,ahkd->ahnd", (e > 0).astype(np.float64), (~finite).astype(np.float64))
        for a, hh, n, d in zip(*np.nonzero(hit)):
            o[a, hh, n, d] = np.sum(e[a, hh, n] * vv[a, hh, :, d], where=e[a, hh, n] > 0)
    o = o / np.where(ssum > 0, ssum, 1.0)[..., None]
    return np.where(has, m, -np.inf), ssum, o


def _attention_ref(q, k, v, mask=None, scale=1.0, max_bias=0.0, softcap=0.0, sinks=None):
    """Reference flash attention on float64 arrays (ggml's 4-D NumPy order, see
    _segment_softmax); returns O as (ne3, H, N, DV) (not permuted)."""
    slopes = _alibi_slopes(q.shape[1], max_bias, np.float64)
    m, s, o = _segment_softmax(q, k, v, mask, scale, softcap, slopes)
    if sinks is not None:
        # the sink is one more key with logit sinks[h] and a zero value vector
        sk = np.broadcast_to(np.asarray(sinks, np.float64).reshape(-1)[None, :, None], m.shape)
        m, s, o = st.merge(m, s, o, sk, np.ones_like(s), np.zeros_like(o))
    return o


def _ref_fa(node, ins, p):
    q, k, v, mask = ins[0], ins[1], ins[2], ins[3]
    sinks = ins[4][0, 0, 0, :] if ins[4] is not None else None
    o = _attention_ref(q, k, v, mask, p.scale, p.max_bias, p.logit_softcap, sinks)
    return o.transpose(0, 2, 1, 3)         # (ne3, N, H, DV): ggml's permuted result


def _fa_flops(node):
    q = node.src[0]
    n_kv = (node.src[1].ne[1] if node.src[1] is not None else 0)
    if len(node.src) > 4 and node.op.name == _OP_WS and node.src[WS_KQ] is not None:
        n_kv += node.src[WS_KQ].ne[1]
    dk = q.ne[0]
    dv = node.ne[0]
    return 2 * q.ne[1] * q.ne[2] * q.ne[3] * n_kv * (dk + dv)


def _fa_nbytes(node):
    return sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


def _ggml_fa(g, c, s, p, node):
    mask = s[3]
    if mask is not None and node.src[3].type != T.F16:
        mask = g.ggml_cast(c, mask, int(T.F16))       # ggml's FA takes F16 masks only
    elif mask is not None and not is_contiguous(node.src[3]):
        mask = g.ggml_cont(c, mask)                   # ... and contiguous ones
    t = g.ggml_flash_attn_ext(c, s[0], s[1], s[2], mask, p.scale, p.max_bias, p.logit_softcap)
    if s[4] is not None:
        g.ggml_flash_attn_ext_add_sinks(t, s[4])
    g.ggml_flash_attn_ext_set_prec(t, int(p.prec))
    return t


# --- work buffer (the Numba kernels' scratch; see backends/numba_cpu/kernels/attention.py) ----

# --- cases (test-backend-ops' test_flash_attn_ext) ------------------------------------------

def _pad(x, n):
    return (x + n - 1) // n * n


def _init_kq_mask(t, rng, lo=-1.0, hi=1.0):
    """test-backend-ops' init_tensor_kq_mask, scaled for small tensors: uniform values with
    rectangles of -inf and of 0 (ggml uses 128x64 blocks covering ~20% of a big mask; small
    masks here get at least one of each, so masked keys and fully masked rows are tested)."""
    ne0, ne1, ne2, ne3 = t.ne
    vals = rng.uniform(lo, hi, size=(ne3, ne2, ne1, ne0))
    b0, b1 = max(1, min(128, ne0 // 2)), max(1, min(64, (ne1 + 1) // 2))
    n_blocks = max(2, int(0.2 * ne0 * ne1 * ne2 * ne3 / (b0 * b1)))
    for b in range(n_blocks):
        p3, p2 = rng.integers(ne3), rng.integers(ne2)
        p1, p0 = rng.integers(ne1), rng.integers(ne0)
        vals[p3, p2, p1:p1 + b1, p0:p0 + b0] = -np.inf if b % 2 == 0 else 0.0
    if ne1 >= 3 and ne0 > 1:       # one fully masked query row (ggml's CPU gives 0 there too)
        vals[rng.integers(ne3), rng.integers(ne2), rng.integers(ne1), :] = -np.inf
    return vals



def _fa_init(leaf, rng):
    if leaf.name == "s":
        return rng.uniform(-10.0, 10.0, size=leaf.ne[::-1])
    if leaf.name == "m":
        return _init_kq_mask(leaf, rng)
    return None


def _create_permuted(ctx, type, ne, permute, is_view, name):
    """test-backend-ops' create_permuted: optionally a view of a 2x larger buffer, permuted."""
    from .view import permute as _permute
    from .view import view_4d
    ne_perm = [0] * 4
    for i in range(4):
        ne_perm[permute[i]] = ne[i]
    if is_view:
        t0 = cc.leaf(ctx, type, [ne_perm[0], 2 * ne_perm[1], ne_perm[2], ne_perm[3]], name + "_buf")
        t = view_4d(ctx, t0, *ne_perm, t0.nb[1], t0.nb[2], t0.nb[3], 0)
    else:
        t = cc.leaf(ctx, type, ne_perm)
    if list(permute) != [0, 1, 2, 3]:
        t = _permute(ctx, t, *permute)
    t.name = name
    return t


def _fa_case(hsk=128, hsv=128, nh=32, nr23=(1, 1), kv=96, nb=8, mask=True, sinks=False,
            max_bias=0.0, logit_softcap=0.0, prec=PREC_F32, type_K=T.F16, type_V=T.F16,
            permute=(0, 1, 2, 3), kv_view=True, v_is_view_of_k=False, tags=()):
    """One test_flash_attn_ext case (same arguments, defaults, graph and case string)."""
    from .view import view_4d
    type_K, type_V = cc.ggml_type(type_K), cc.ggml_type(type_V)
    nr23, permute = list(nr23), list(permute)

    def build(ctx):
        hsk_p = _pad(hsk, TRAITS[type_K].blck_size)
        hsv_p = _pad(hsv, TRAITS[type_V].blck_size)
        q = _create_permuted(ctx, T.F32, [hsk_p, nb, nh * nr23[0], nr23[1]], permute, False, "q")
        k = _create_permuted(ctx, type_K, [hsk_p, kv, nh, nr23[1]], permute, kv_view, "k")
        if v_is_view_of_k:
            v = view_4d(ctx, k, hsv_p, kv, nh, nr23[1], k.nb[1], k.nb[2], k.nb[3], 0)
            v.name = "v"
        else:
            v = _create_permuted(ctx, type_V, [hsv_p, kv, nh, nr23[1]], permute, kv_view, "v")
        m = cc.leaf(ctx, T.F16, [kv, nb, 1, nr23[1]], "m") if mask else None
        s = cc.leaf(ctx, T.F32, [q.ne[2]], "s") if sinks else None
        out = flash_attn_ext(ctx, q, k, v, m, float(np.float32(1.0 / math.sqrt(hsk))),
                             max_bias, logit_softcap)
        flash_attn_ext_add_sinks(out, s)
        flash_attn_ext_set_prec(out, prec)
        out.name = "out"
        return out

    vars = dict(hsk=hsk, hsv=hsv, nh=nh, nr23=nr23, kv=kv, nb=nb, mask=bool(mask),
                sinks=bool(sinks), max_bias=float(max_bias), logit_softcap=float(logit_softcap),
                prec="f32" if prec == PREC_F32 else "def", type_K=type_K, type_V=type_V,
                permute=permute, kv_view=bool(kv_view), v_is_view_of_k=bool(v_is_view_of_k))
    return cc.case(_OP, vars, build, init=_fa_init, max_nmse=MAX_NMSE, tags=tuple(tags))


def _fa_case_cost(c) -> int:
    """Multiply-adds of a flash_attn_ext case (to keep the fast subset small)."""
    v = c.vars
    return (v["nh"] * v["nr23"][0] * v["nr23"][1] * v["nb"] * v["kv"] * (v["hsk"] + v["hsv"]))


# head sizes (hsk, hsv) of the grid: the list (192 != 128 as in DeepSeek-style MLA)
GRID_HEADS = ((64, 64), (80, 80), (128, 128), (192, 128), (256, 256))
GRID_KV = (1, 7, 113, 512)
GRID_NB = (1, 3, 32)
GRID_TYPES = FA_KV_TYPES
FAST_COST = 1_500_000          # multiply-adds of the largest case in the fast subset
FAST_PER_GROUP = 2             # fast cases per (type, prec, head sizes) group


def _stable_hash(s: str) -> int:
    return zlib.crc32(s.encode())


def _fa_grid():
    """The full grid of the issue (every K/V type, both precisions...), the slow part."""
    out = []
    for hsk, hsv in GRID_HEADS:
        for mask in (True, False):
            for sinks in (False, True):
                for max_bias in (0.0, 8.0):
                    if not mask and max_bias > 0:
                        continue
                    for softcap in (0.0, 10.0):
                        for nr2 in (1, 4):
                            for nr3 in (1, 2):
                                for kv in GRID_KV:
                                    for nb in GRID_NB:
                                        for prec in (PREC_F32, PREC_DEFAULT):
                                            for tkv in GRID_TYPES:
                                                args = (hsk, hsv, 4, (nr2, nr3), kv, nb, mask,
                                                        sinks, max_bias, softcap, prec, tkv, tkv)
                                                out.append(_fa_case(*args))
                                                if mask and max_bias == 0 and softcap == 0 \
                                                        and kv == 113 and nb > 1:
                                                    out.append(_fa_case(*args, permute=(0, 2, 1, 3)))
    return out


def _fa_extra():
    """ggml's own special cases: other head sizes, MLA (V a view of K), mixed K/V types,
    GQA 12/16 and the prefill shapes (slow)."""
    out = []
    for hs in (40, 72, 96):
        for nb in (1, 3):
            out.append(_fa_case(hs, hs, 4, (1, 1), 113, nb, True, False, 0.0, 0.0, PREC_F32,
                               T.F16, T.F16))
    out.append(_fa_case(72, 72, 4, (1, 3), 113, 3, True, True, 0.0, 0.0, PREC_F32, T.Q8_0, T.Q8_0))
    out.append(_fa_case(128, 128, 4, (12, 1), 512, 1, True, False, 0.0, 0.0, PREC_DEFAULT,
                       T.F16, T.F16))
    out.append(_fa_case(192, 192, 4, (16, 1), 512, 1, True, False, 0.0, 0.0, PREC_F32,
                       T.F16, T.F16))
    # DeepSeek MLA: V is a sub-view of K
    for nb in (1, 3):
        out.append(_fa_case(576, 512, 1, (4, 1), 113, nb, True, False, 0.0, 0.0, PREC_F32,
                           T.F16, T.F16, v_is_view_of_k=True))
    # mixed K/V types (ggml's list, without the types pyggml does not have)
    for args in ((64, 64, 4, (1, 1), 128, 2, True, False, 0, 0, PREC_F32, T.Q8_0, T.Q4_0),
                 (64, 64, 4, (1, 1), 128, 2, True, False, 0, 0, PREC_F32, T.Q4_0, T.F16),
                 (72, 72, 4, (1, 1), 96, 2, True, False, 0, 0, PREC_F32, T.Q4_0, T.Q8_0),
                 (64, 64, 4, (1, 1), 96, 2, True, False, 0, 0, PREC_F32, T.F16, T.F32),
                 (128, 128, 4, (1, 1), 256, 1, False, False, 0, 0, PREC_F32, T.F16, T.Q4_0),
                 (64, 128, 4, (1, 1), 128, 2, True, False, 0, 0, PREC_DEFAULT, T.Q4_1, T.Q5_0),
                 (128, 64, 4, (1, 1), 64, 2, True, False, 0, 0, PREC_DEFAULT, T.BF16, T.Q5_1)):
        out.append(_fa_case(*args))
    # prefill-shaped cases with a long KV (ggml's)
    for kv in (1024, 2048):
        for hs in (64, 128, 256):
            for nb in (32, 64):
                for tkv in (T.F16, T.Q8_0, T.Q4_0):
                    out.append(_fa_case(hs, hs, 8, (4, 1), kv, nb, True, False, 0.0, 0.0,
                                       PREC_F32, tkv, tkv, tags=("slow",)))
    return out


def _fa_kv_types(names):
    """ggml's K/V type names that pyggml's flash attention takes (the others skip)."""
    return [t for t in cc.have(names) if cc.ggml_type(t) in FA_KV_TYPES]


def _fa_ggml_grid():
    """make_test_cases_eval's flash_attn_ext list, in ggml's order and with its arguments,
    over the K/V types pyggml has (slow but for the sample _fa_cases picks)."""
    out = []
    f32 = PREC_F32

    def add(*args, **kw):
        ts = args[11:13]
        if len(_fa_kv_types(ts)) == len(ts):
            out.append(_fa_case(*args, **kw))
    # prefill-shaped cases with a long KV
    for kv in (1024, 2048):
        for hs in (64, 128, 256):
            for nb in (32, 64):
                for tkv in ("f16", "q8_0", "q4_0"):
                    add(hs, hs, 8, (4, 1), kv, nb, True, False, 0, 0, f32, tkv, tkv)
    kv_types = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
    for hsk in (40, 64, 72, 80, 96, 128, 192, 256, 320, 512, 576):
        for hsv in (40, 64, 72, 80, 96, 128, 192, 256, 512):
            if hsk not in (192, 320, 576) and hsk != hsv:
                continue
            if (hsk == 192 and hsv not in (128, 192)) or (hsk == 576 and hsv != 512) or \
                    (hsk == 320 and hsv != 256):
                continue
            for mask, sinks, max_bias, softcap, nh, nr3, nr2, kv, nb, prec, tkv in \
                    _fa_ggml_loops(hsk, kv_types):
                v_of_k = hsk == 576                 # DeepSeek MLA: V a sub-view of K
                args = (hsk, hsv, nh, (nr2, nr3), kv, nb, mask, sinks, max_bias, softcap,
                        prec, tkv, tkv)
                add(*args, v_is_view_of_k=v_of_k)
                if mask and max_bias == 0 and softcap == 0 and kv == 512:
                    add(*args, permute=(0, 2, 1, 3), v_is_view_of_k=v_of_k)
    # mixed quant (and Q1_0/Q2_0) cases
    for a in ((64, 64, 4, (1, 1), 128, 2, "q8_0", "q4_0"), (64, 64, 4, (1, 1), 128, 2, "q4_0", "f16"),
              (72, 72, 4, (1, 1), 96, 2, "q4_0", "q8_0"), (64, 64, 4, (1, 1), 96, 2, "f16", "f32"),
              (128, 128, 4, (1, 1), 256, 1, "f16", "q4_0"), (128, 128, 4, (1, 1), 96, 2, "q1_0", "q1_0"),
              (128, 64, 4, (1, 1), 128, 2, "q1_0", "q4_0"), (64, 128, 4, (1, 1), 128, 2, "q4_0", "q1_0"),
              (128, 64, 4, (1, 1), 64, 2, "q1_0", "f16"), (128, 128, 4, (1, 1), 96, 2, "q2_0", "q2_0"),
              (128, 64, 4, (1, 1), 128, 2, "q2_0", "q4_0"), (64, 128, 4, (1, 1), 128, 2, "q4_0", "q2_0"),
              (128, 64, 4, (1, 1), 64, 2, "q2_0", "f16")):
        mask = not (a[0] == 128 and a[4] == 256)
        add(*a[:6], mask, False, 0, 0, f32, *a[6:])
    # q8_0 KV: decode and prompt batches, KV pad, permuted KV, feature flags, long context
    p021 = (0, 2, 1, 3)
    add(256, 256, 2, (16, 1), 113, 1, True, False, 0, 0, f32, "q8_0", "q8_0")
    add(256, 256, 2, (16, 1), 1024, 1, True, False, 0, 0, f32, "q8_0", "q8_0")
    add(256, 256, 2, (16, 1), 1024, 1, True, False, 0, 0, f32, "q8_0", "q8_0", p021)
    add(256, 256, 2, (16, 2), 1025, 1, True, True, 8, 30, f32, "q8_0", "q8_0")
    add(256, 256, 2, (16, 1), 1025, 64, True, False, 0, 0, f32, "q8_0", "q8_0", p021)
    add(256, 256, 2, (16, 1), 16384, 1, True, False, 0, 0, f32, "q8_0", "q8_0")
    # MLA and other V-is-a-sub-view-of-K shapes
    for a in ((576, 512, 1, (20, 1), 113, 1, "q8_0"), (576, 512, 1, (20, 1), 1024, 1, "q8_0"),
              (576, 512, 1, (20, 1), 1024, 64, "q8_0"), (320, 256, 1, (32, 1), 512, 1, "f16"),
              (192, 128, 4, (8, 1), 512, 1, "f16"), (128, 128, 8, (4, 1), 512, 8, "f16"),
              (64, 64, 4, (1, 1), 512, 1, "q8_0")):
        add(*a[:6], True, False, 0, 0, f32, a[6], a[6], (0, 1, 2, 3), True, True)
    # ggml's large-KV F16 cases (kv 4096 and 16384 at nb=512: ~10^11 multiply-adds each, more
    # than the float64 reference can take here) are left out
    # dense-allocated (not a view) quantized K/V at batch >= 64
    for nr2, kv, perm in ((1, 512, p021), (4, 512, p021), (1, 1024, p021), (1, 512, (0, 1, 2, 3))):
        add(64, 64, 4, (nr2, 1), kv, 75, True, False, 0, 0, f32, "q8_0", "q8_0", perm, False)
    return out


def _fa_ggml_loops(hsk, kv_types):
    """The inner loops of ggml's head-size grid for one hsk, with its skips."""
    for mask in (True, False):
        for sinks in (True, False):
            for max_bias in (0.0, 8.0):
                if not mask and max_bias > 0:
                    continue
                for softcap in (0.0, 10.0):
                    if hsk != 128 and softcap != 0:
                        continue
                    for nh in (1, 4):
                        if nh == 1 and hsk not in (320, 576):
                            continue
                        for nr3 in (1, 3):
                            if hsk > 64 and nr3 > 1:
                                continue
                            for nr2 in _fa_nr2(hsk, nh):
                                for kv in (113, 512, 1024):
                                    if nr2 != 1 and kv != 512:
                                        continue
                                    for nb in (1, 3, 32, 75):
                                        for prec in (PREC_F32, PREC_DEFAULT):
                                            if hsk != 128 and prec == PREC_DEFAULT:
                                                continue
                                            for tkv in kv_types:
                                                if tkv != "f16" and hsk not in (64, 72):
                                                    continue
                                                yield (mask, sinks, max_bias, softcap, nh, nr3,
                                                       nr2, kv, nb, prec, tkv)


def _fa_nr2(hsk, nh):
    skip = {8: hsk != 192, 12: hsk != 128, 16: hsk != 192, 20: nh != 1 or hsk != 576,
            32: nh != 1 or hsk != 320}
    return [n for n in (1, 4, 8, 12, 16, 20, 32) if not skip.get(n, False)]


def _fa_cases():
    grid = _fa_grid()
    # the fast subset: per (K/V type, prec, head sizes) the cheapest-looking few by a stable
    # hash of the case string; everything else is tagged slow (the CLI runs it all)
    groups: dict = {}
    for c in grid:
        if _fa_case_cost(c) <= FAST_COST:
            key = (c.vars["type_K"], c.vars["prec"], c.vars["hsk"], c.vars["hsv"])
            groups.setdefault(key, []).append(c)
    fast = set()
    for cs in groups.values():
        cs.sort(key=lambda c: _stable_hash(str(c)))
        fast.update(id(c) for c in cs[:FAST_PER_GROUP])
    for c in grid:
        if id(c) not in fast:
            c.tags = tuple(c.tags) + ("slow",)
    extra = _fa_extra()
    for c in extra:
        if _fa_case_cost(c) > 4 * FAST_COST and "slow" not in c.tags:
            c.tags = tuple(c.tags) + ("slow",)
    out = cc.unique(extra + grid)
    # ggml's own list: the cases the grids above lack, slow but for one cheap case per
    # (head sizes, K/V types) group
    known = {str(c) for c in out}
    new = [c for c in cc.unique(_fa_ggml_grid()) if str(c) not in known]
    picked = set()
    for c in sorted(new, key=lambda c: _stable_hash(str(c))):
        key = (c.vars["hsk"], c.vars["hsv"], c.vars["type_K"], c.vars["type_V"])
        if key not in picked and _fa_case_cost(c) <= FAST_COST:
            picked.add(key)
        elif "slow" not in c.tags:
            c.tags = tuple(c.tags) + ("slow",)
    return out + new


FLASH_ATTN_EXT = register(OpDef(
    _OP, _infer_fa, params=_PARAMS, reference=_ref_fa, cases=_fa_cases,
    flops=_fa_flops, nbytes=_fa_nbytes, ggml=_ggml_fa,
    max_nmse=MAX_NMSE,
    doc="softmax(q·kᵀ·scale (softcap) + slope·mask)·v per head -> F32 [DV, n_head, n_batch, ne3] "
        "(GQA, ALiBi, softcap, sinks in src[4]); op_params [scale, max_bias, logit_softcap, prec]."))


def flash_attn_ext(ctx, q, k, v, mask, scale, max_bias=0.0, logit_softcap=0.0):
    """ggml_flash_attn_ext: attention of q over (k, v) with an optional mask -> F32
    [DV, n_head, n_batch, ne3] (permuted). PREC_DEFAULT; see flash_attn_ext_set_prec."""
    return FLASH_ATTN_EXT.build(ctx, [q, k, v, mask],
                                dict(scale=scale, max_bias=max_bias,
                                     logit_softcap=logit_softcap, prec=PREC_DEFAULT))


def _need_fa_node(a, what, ops=(_OP, _OP_WS)):
    if not isinstance(a, Tensor) or a.op is None or a.op.name not in ops:
        raise GGMLError(f"{what}: {describe(a) if isinstance(a, Tensor) else repr(a)} is not a "
                        f"{' or '.join(ops)} node (op {getattr(a, 'op_name', '?')})")


def flash_attn_ext_set_prec(a, prec):
    """ggml_flash_attn_ext_set_prec: PREC_DEFAULT (0) or PREC_F32 (10) into op_params[3]
    (also for flash_attn_ext_with_state, which shares the layout)."""
    _need_fa_node(a, "flash_attn_ext_set_prec")
    prec = int(prec)
    _check_prec(a.op.name, prec)
    a.op.set_params(a, dict(prec=prec))


def flash_attn_ext_get_prec(a) -> int:
    _need_fa_node(a, "flash_attn_ext_get_prec")
    return int(a.op_params[3])


def flash_attn_ext_add_sinks(a, sinks):
    """ggml_flash_attn_ext_add_sinks: one logit per head (F32 [n_head]) joins the softmax
    with a zero value vector (src[4]). sinks=None removes them, as in ggml."""
    _need_fa_node(a, "flash_attn_ext_add_sinks", (_OP,))   # with_state's src[4] is k_quant
    if sinks is None:
        a.src[4] = None
        return
    if not isinstance(sinks, Tensor):
        raise GGMLError(f"flash_attn_ext_add_sinks: sinks must be a Tensor, got "
                        f"{type(sinks).__name__}")
    need(a.src[4] is None, _OP, "this node already has sinks (src[4])", a, a.src[4])
    _check_sinks(a.src[0], sinks)
    a.src[4] = sinks


# --- FLASH_ATTN_EXT_WITH_STATE -------------------------------------------------------------

def _infer_ws(srcs, p):
    op = _OP_WS
    srcs = list(srcs) + [None] * (9 - len(srcs))
    q = need_src(op, srcs, WS_Q, "q")
    _check_params(op, p)
    _check_q(op, q)
    segs = []
    for ik, iv, im, names in ((WS_K, WS_V, WS_MASK, ("k", "v", "mask")),
                              (WS_KQ, WS_VQ, WS_MASKQ, ("k_quant", "v_quant", "qk_mask_quant"))):
        k, v, m = srcs[ik], srcs[iv], srcs[im]
        if k is None and v is None:
            if m is not None:
                fail(op, f"{names[2]} is given but its segment ({names[0]}, {names[1]}) "
                     f"is None", m)
            continue
        if k is None or v is None:
            raise GGMLError(f"{op}: {names[0]} and {names[1]} come together; got "
                            f"{names[0]}={describe(k)}, {names[1]}={describe(v)}")
        segs.append(_check_segment(op, q, k, v, m, names, p.max_bias))
    if not segs:
        raise GGMLError(f"{op}: both segments are None (k/v and k_quant/v_quant); give at "
                        f"least one [q {describe(q)}]")
    dv = segs[0][1]
    if not (all(s[1] == dv for s in segs)):
        fail(op, f"the hot and cold V head sizes differ "
             f"({srcs[WS_V].ne[0] if srcs[WS_V] is not None else '-'} vs "
             f"{srcs[WS_VQ].ne[0] if srcs[WS_VQ] is not None else '-'})", srcs[WS_V], srcs[WS_VQ])
    state = need_src(op, srcs, WS_STATE, "s_m_state")
    want = st.state_ne(q.ne[2], q.ne[1], q.ne[3])
    need_type(op, state, (T.F32,), "s_m_state")
    if list(state.ne) != want:
        fail(op, f"s_m_state must have ne={want} ([M, S] per row "
             f"head*n_batch+pos, ne3 planes) for q {describe(q)}; got ne={state.ne}", state, q)
    need(state.nb[0] == 4 and state.nb[1] == 8 and state.nb[2] == 8 * state.ne[1], op,
         "s_m_state must be contiguous (it is written in place)", state)
    out_ne = [dv, q.ne[2], q.ne[1], q.ne[3]]
    o_prev = srcs[WS_OPREV]
    if o_prev is not None:
        need_type(op, o_prev, (T.F32,), "o_prev")
        if list(o_prev.ne) != out_ne:
            fail(op, f"o_prev must have the result's shape ne={out_ne} "
                 f"(the output of the previous call); got ne={o_prev.ne}", o_prev)
        _rows_packed(op, o_prev, "o_prev")
    for i, s in enumerate(srcs):
        if s is not None and i != WS_STATE and s is state:
            fail(op, f"s_m_state is also src[{i}]", state)
    return Out(T.F32, out_ne)


def _ref_ws(node, ins, p):
    q = ins[WS_Q]
    ne3, H, N, _ = q.shape
    slopes = _alibi_slopes(H, p.max_bias, np.float64)
    dv = node.ne[0]
    # this call's keys: hot ∪ cold, one softmax (merging the two exact partial softmaxes)
    m = np.full((ne3, H, N), -np.inf)
    s = np.zeros((ne3, H, N))
    o = np.zeros((ne3, H, N, dv))
    for ik, iv, im in ((WS_K, WS_V, WS_MASK), (WS_KQ, WS_VQ, WS_MASKQ)):
        if ins[ik] is None:
            continue
        ms, ss, os_ = _segment_softmax(q, ins[ik], ins[iv], ins[im], p.scale,
                                      p.logit_softcap, slopes)
        m, s, o = st.merge(m, s, o, ms, ss, os_)
    # the incoming state: rows [M, S] at head*N + pos, plane i3
    prev = ins[WS_STATE][0].reshape(ne3, H, N, 2)
    m_prev, s_prev = prev[..., st.STATE_M], prev[..., st.STATE_S]
    bad = st.bad_row_message(_OP_WS, node.src[WS_STATE], m_prev.reshape(ne3, H * N),
                             s_prev.reshape(ne3, H * N), H)
    if bad is not None:
        raise ComputeError(bad)
    has_prev = st.row_kinds(m_prev, s_prev)[1]
    if ins[WS_OPREV] is None:
        if has_prev.any():
            i3, h, n = (int(x[0]) for x in np.nonzero(has_prev))
            raise ComputeError(
                f"{_OP_WS}: s_m_state {describe(node.src[WS_STATE])} row {h * N + n} (head {h}, "
                f"pos {n}, plane {i3}) holds a previous contribution (S={s_prev[i3, h, n]:g}) "
                f"but o_prev is None: pass the previous output as o_prev, or reset the state "
                f"(flash_attn_state_reset) to start over")
        o_prev = np.zeros_like(o)
    else:
        o_prev = ins[WS_OPREV].transpose(0, 2, 1, 3)      # (ne3, N, H, DV) -> (ne3, H, N, DV)
    m_new, s_new, o_new = st.merge(np.where(has_prev, m_prev, -np.inf),
                                   np.where(has_prev, s_prev, 0.0), o_prev, m, s, o)
    new_state = np.stack([m_new, s_new], axis=-1).reshape(1, ne3, H * N, 2)
    return {"dst": o_new.transpose(0, 2, 1, 3), WS_STATE: new_state}


def _ws_case(hsk=64, hsv=64, nh=2, nr23=(1, 1), kv_hot=33, kv_cold=64, nb=1, mask=True,
             max_bias=0.0, logit_softcap=0.0, prec=PREC_F32, type_hot=T.F16, type_cold=T.Q4_0,
             n_calls=1, o_prev=False, tags=()):
    """A chain of n_calls with_state calls in one graph sharing a fresh state; call i has its
    own hot segment of kv_hot keys and cold segment of kv_cold keys (0 = None)."""
    type_hot, type_cold = cc.ggml_type(type_hot), cc.ggml_type(type_cold)
    nr23 = list(nr23)

    def build(ctx):
        q = cc.leaf(ctx, T.F32, [hsk, nb, nh * nr23[0], nr23[1]], "q")
        state = cc.leaf(ctx, T.F32, st.state_ne(q.ne[2], nb, nr23[1]), "state")
        out = None
        for i in range(n_calls):
            seg = []
            for kvn, typ, tag in ((kv_hot, type_hot, "hot"), (kv_cold, type_cold, "cold")):
                if kvn == 0:
                    seg += [None, None, None]
                    continue
                k = cc.leaf(ctx, typ, [hsk, kvn, nh, nr23[1]], f"k_{tag}{i}")
                v = cc.leaf(ctx, typ, [hsv, kvn, nh, nr23[1]], f"v_{tag}{i}")
                m = cc.leaf(ctx, T.F16, [kvn, nb, 1, nr23[1]], f"m_{tag}{i}") if mask else None
                seg += [k, v, m]
            out = flash_attn_ext_with_state(ctx, q, seg[0], seg[1], seg[2], seg[3], seg[4],
                                            seg[5], state, float(np.float32(1 / math.sqrt(hsk))),
                                            max_bias, logit_softcap, o_prev=out)
            flash_attn_ext_set_prec(out, prec)
            out.name = f"out{i}"
        return out

    def init(leaf, rng):
        if leaf.name == "state":
            return st.fresh_values(leaf.ne)
        if leaf.name.startswith("m_"):
            return _init_kq_mask(leaf, rng)
        return None

    vars = dict(hsk=hsk, hsv=hsv, nh=nh, nr23=nr23, kv_hot=kv_hot, kv_cold=kv_cold, nb=nb,
                mask=bool(mask), max_bias=float(max_bias), logit_softcap=float(logit_softcap),
                prec="f32" if prec == PREC_F32 else "def", type_hot=type_hot,
                type_cold=type_cold, n_calls=n_calls)
    return cc.case(_OP_WS, vars, build, init=init, max_nmse=MAX_NMSE, tags=tuple(tags))


def _ws_cases():
    out = []
    # segment splits: hot only, cold only, both; chains of 1..3 calls; every cold type
    for n_calls in (1, 2, 3):
        for kv_hot, kv_cold in ((33, 64), (0, 96), (17, 0), (1, 32)):
            out.append(_ws_case(kv_hot=kv_hot, kv_cold=kv_cold, n_calls=n_calls))
    for tc in FA_KV_TYPES:
        for prec in (PREC_F32, PREC_DEFAULT):
            out.append(_ws_case(64, 64, 2, (4, 1), 40, 96, 3, True, 0.0, 0.0, prec, T.F16, tc,
                                n_calls=2))
    # GQA, ne3, ALiBi, softcap, no mask, DK != DV, a batch of queries
    out.append(_ws_case(64, 64, 2, (4, 2), 20, 64, 3, True, 8.0, 0.0, PREC_F32, n_calls=2))
    out.append(_ws_case(128, 128, 2, (2, 1), 50, 128, 1, True, 0.0, 10.0, PREC_F32, n_calls=3))
    out.append(_ws_case(64, 64, 4, (1, 1), 30, 64, 5, False, 0.0, 0.0, PREC_DEFAULT, n_calls=2))
    out.append(_ws_case(192, 128, 1, (4, 1), 30, 64, 2, True, 0.0, 0.0, PREC_F32, T.F16, T.Q8_0,
                        n_calls=2))
    out.append(_ws_case(64, 64, 2, (2, 1), 64, 64, 32, True, 0.0, 0.0, PREC_F32, T.F32, T.F32,
                        n_calls=3))
    out.append(_ws_case(128, 128, 8, (4, 1), 512, 2048, 1, True, 0.0, 0.0, PREC_DEFAULT,
                        T.F16, T.Q4_0, n_calls=2, tags=("slow",)))
    return out


FLASH_ATTN_EXT_WITH_STATE = register(OpDef(
    _OP_WS, _infer_ws, params=_PARAMS, reference=_ref_ws, cases=_ws_cases,
    flops=_fa_flops, nbytes=_fa_nbytes,
    writes=(WS_STATE,), max_nmse=MAX_NMSE,
    doc="flash_attn_ext over a hot (src 1-3) and a cold (src 4,5,7) KV segment, merged with "
        "the softmax state src[6] (F32 [2, n_head*n_batch, ne3], rows [M, S], written in "
        "place) and the previous output src[8]; result F32 [DV, n_head, n_batch, ne3]."))


def flash_attn_ext_with_state(ctx, q, k, v, mask, k_quant, v_quant, qk_mask_quant, s_m_state,
                              scale, max_bias=0.0, logit_softcap=0.0, o_prev=None):
    """Attention over a hot (k, v, mask) and a cold (k_quant, v_quant, qk_mask_quant) KV
    segment (either may be None, not both) that continues the softmax state s_m_state.

    The result is the attention output over every key seen by this chain of calls, given
    o_prev, the previous call's output, whenever the state holds a previous contribution.
    s_m_state (F32 [2, n_head*n_batch, ne3]) is updated in place; start from a fresh state
    (flash_attn_state_new / flash_attn_state_init / flash_attn_state_reset)."""
    srcs = [q, k, v, mask, k_quant, v_quant, s_m_state, qk_mask_quant, o_prev]
    return FLASH_ATTN_EXT_WITH_STATE.build(
        ctx, srcs, dict(scale=scale, max_bias=max_bias, logit_softcap=logit_softcap,
                        prec=PREC_DEFAULT))


# --- the state tensor ----------------------------------------------------------------------------

def flash_attn_state_new(ctx, n_head, n_batch, ne3=1):
    """A new F32 state tensor [2, n_head*n_batch, ne3] in ctx, filled fresh (M=-inf, S=0)
    when ctx holds data (no_alloc contexts: call flash_attn_state_reset after allocation)."""
    from ..context import new_tensor
    t = new_tensor(ctx, T.F32, 3, st.state_ne(n_head, n_batch, ne3)[:3])
    t.name = "s_m_state"
    if t.is_allocated:
        st.reset_state(t)
    return t


def flash_attn_state_init(ctx, state):
    """Fill `state` (F32 [2, n_head*n_batch, ne3], with data) with a fresh softmax state:
    M = -inf, S = 0. Returns it. (flash_attn_state_new makes a new one.)"""
    if not isinstance(state, Tensor):
        raise GGMLError(f"flash_attn_state_init: state must be a Tensor, got {type(state).__name__}")
    st.reset_state(state)
    return state


def flash_attn_state_reset(state):
    """Reset a state tensor's data to a fresh state (start a new chain of calls)."""
    st.reset_state(state)
    return state
