"""Linear-attention recurrences with a matrix state per head: RWKV_WKV6, GATED_LINEAR_ATTN and
RWKV_WKV7 (ggml_rwkv_wkv6, ggml_gated_linear_attn, ggml_rwkv_wkv7).

Inputs are [S, H, n_tokens] (S = head size, H = heads), the state [S*S*H, n_seqs]; the tokens
are n_seqs equal runs, each starting from its own sequence's state. The result packs the
outputs [S*H, n_tokens] followed by every sequence's final state (S rows of S*H per sequence):
[S*H, n_tokens + S*n_seqs]. Per head and token, with S_ij the state (as ggml's CPU kernels):

  WKV6: out_j = sum_i r_i (tf_i k_i v_j + S_ij);        S_ij <- td_i S_ij + k_i v_j
  GLA:  S_ij <- g_i S_ij + k_i v_j;                      out_j = scale sum_i q_i S_ij
  WKV7: sa_i = sum_j a_j S_ij;  S_ij <- w_j S_ij + v_i k_j + sa_i b_j;  out_i = sum_j r_j S_ij
"""
from __future__ import annotations

import numpy as np

from ..tensor import is_contiguous
from ..tensor import nbytes
from ..tensor import nelements
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32 = GGMLType.F32


def _check_recurrence(op, srcs, names, state_i):
    """The shared shape rules; returns (S, H, n_tokens, n_seqs)."""
    ts = [need_src(op, srcs, i, n) for i, n in enumerate(names)]
    for t, n in zip(ts, names):
        need_type(op, t, (_F32,), n)
        need(is_contiguous(t), op, f"{n} must be contiguous", t)
    x = ts[0]
    S, H, T = x.ne[0], x.ne[1], x.ne[2]
    state = ts[state_i]
    n_seqs = state.ne[1]
    for t, n in zip(ts, names):
        if t is not state and n != "tf":
            need(t.ne[:3] == [S, H, T] and t.ne[3] == 1, op, f"{n} must be [{S}, {H}, {T}] like "
                 f"{names[0]}", x, t)
    need(nelements(state) == S * S * H * n_seqs, op, f"the state must hold S*S*H*n_seqs = "
         f"{S * S * H * n_seqs} values", state)
    need(n_seqs > 0 and T % n_seqs == 0, op, f"n_tokens={T} must split into n_seqs={n_seqs} "
         f"equal runs", x, state)
    return S, H, T, n_seqs


def _runs(x, n_seqs):
    """(1, T, H, S) -> (n_seqs, T/n_seqs, H, S)."""
    return x[0].reshape(n_seqs, -1, *x.shape[2:])


def _pack(out, state, node):
    """Outputs (n_seqs, L, H, S) and states (n_seqs, H, S, S) as the result rows."""
    c = node.ne[0]
    return np.concatenate([out.reshape(-1, c), state.reshape(-1, c)])


def _state(ins_state, n_seqs, h, s):
    return ins_state.reshape(n_seqs, h, s, s).copy()


def _recurrence_cases(op, build):
    out = []
    for tokens, seqs in ((1, 1), (32, 1), (32, 4), (128, 4)) + (((1, 4),) if op == "RWKV_WKV7"
                                                                 else ()):
        out.append(cc.case(op, dict(type=cc.ggml_type("f32"), head_count=32, head_size=64,
                                    n_seq_tokens=tokens, n_seqs=seqs),
                           lambda ctx, t=tokens, s=seqs: build(ctx, 32, 64, t, s)))
    return out


def _leaves(ctx, names, S, H, n_tokens):
    return [cc.leaf(ctx, "f32", (S, H, n_tokens), n) for n in names]


def _state_leaf(ctx, S, H, n_seqs):
    return cc.leaf(ctx, "f32", (S * S * H, n_seqs), "s")


def _recurrence_flops(node) -> int:
    s = node.src[0].ne[0]
    return 4 * s * s * node.src[0].ne[1] * node.src[0].ne[2]


def _in_out_bytes(node) -> int:
    return nbytes(node) + sum(nbytes(t) for t in node.src if t is not None)


# --- RWKV_WKV6 ------------------------------------------------------------------------------

_WKV6 = ("k", "v", "r", "tf", "td", "state")


def _infer_wkv6(srcs, p):
    S, H, T, n_seqs = _check_recurrence("RWKV_WKV6", srcs, _WKV6, 5)
    tf = srcs[3]
    need(tf.ne[0] == S and tf.ne[1] == H and nelements(tf) == S * H, "RWKV_WKV6",
         f"tf (time_faaaa) must be [{S}, {H}]", tf)
    return Out(_F32, [S * H, T + S * n_seqs])


def _ref_wkv6(node, ins, p):
    n_seqs = node.src[5].ne[1]
    k, v, r, td = (_runs(ins[i], n_seqs) for i in (0, 1, 2, 4))
    tf = ins[3].reshape(k.shape[2], k.shape[3])                           # (H, S)
    st = _state(ins[5], n_seqs, k.shape[2], k.shape[3])                   # (n, H, S_i, S_j)
    out = np.empty_like(v)
    for t in range(k.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        out[:, t] = np.einsum("nhi,nhij->nhj", r[:, t], kv * tf[None, :, :, None] + st)
        st = st * td[:, t, :, :, None] + kv
    return _pack(out, st, node)


def _build_wkv6(ctx, H, S, tokens, seqs):
    k, v, r = _leaves(ctx, ("k", "v", "r"), S, H, tokens * seqs)
    tf = cc.leaf(ctx, "f32", (S, H), "tf")
    td = cc.leaf(ctx, "f32", (S, H, tokens * seqs), "td")
    return rwkv_wkv6(ctx, k, v, r, tf, td, _state_leaf(ctx, S, H, seqs))


def _recurrence_op(name, infer, ref, build, recipe, what, params=()):
    """One of the matrix-state recurrences: cases, costs and result layout are shared."""
    return register(OpDef(
        name, infer, params=params, reference=ref, cases=lambda: _recurrence_cases(name, build),
        flops=_recurrence_flops, nbytes=_in_out_bytes, ggml=recipe,
        doc=f"{what}: outputs [S*H, T] then the final states [S*H, S*n_seqs]."))


RWKV_WKV6 = _recurrence_op("RWKV_WKV6", _infer_wkv6, _ref_wkv6, _build_wkv6,
                           lambda g, c, s, p, node: g.ggml_rwkv_wkv6(c, *s[:6]), "RWKV v6 time mixing")


def rwkv_wkv6(ctx, k, v, r, tf, td, state):
    """ggml_rwkv_wkv6(k, v, r, tf (time_faaaa), td (time_decay), state)."""
    return RWKV_WKV6.build(ctx, [k, v, r, tf, td, state])


# --- GATED_LINEAR_ATTN --------------------------------------------------------------------------

_GLA = ("k", "v", "q", "g", "state")


def _infer_gla(srcs, p):
    S, H, T, n_seqs = _check_recurrence("GATED_LINEAR_ATTN", srcs, _GLA, 4)
    return Out(_F32, [S * H, T + S * n_seqs])


def _ref_gla(node, ins, p):
    n_seqs = node.src[4].ne[1]
    k, v, q, g = (_runs(ins[i], n_seqs) for i in range(4))
    st = _state(ins[4], n_seqs, k.shape[2], k.shape[3])
    scale = float(np.float32(p.scale))
    out = np.empty_like(v)
    for t in range(k.shape[1]):
        st = st * g[:, t, :, :, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out[:, t] = np.einsum("nhi,nhij->nhj", q[:, t] * scale, st)
    return _pack(out, st, node)


def _build_gla(ctx, H, S, tokens, seqs):
    k, v, q, g = _leaves(ctx, ("k", "v", "q", "g"), S, H, tokens * seqs)
    return gated_linear_attn(ctx, k, v, q, g, _state_leaf(ctx, S, H, seqs), S ** -0.5)


GATED_LINEAR_ATTN = _recurrence_op("GATED_LINEAR_ATTN", _infer_gla, _ref_gla, _build_gla,
                                   lambda g, c, s, p, node: g.ggml_gated_linear_attn(c, *s[:5], p.scale),
                                   "Gated linear attention", params="scale:f32")


def gated_linear_attn(ctx, k, v, q, g, state, scale):
    """ggml_gated_linear_attn(k, v, q, g, state, scale)."""
    return GATED_LINEAR_ATTN.build(ctx, [k, v, q, g, state], dict(scale=float(scale)))


# --- RWKV_WKV7 ------------------------------------------------------------------------------

_WKV7 = ("r", "w", "k", "v", "a", "b", "state")


def _infer_wkv7(srcs, p):
    S, H, T, n_seqs = _check_recurrence("RWKV_WKV7", srcs, _WKV7, 6)
    return Out(_F32, [S * H, T + S * n_seqs])


def _ref_wkv7(node, ins, p):
    n_seqs = node.src[6].ne[1]
    r, w, k, v, a, b = (_runs(ins[i], n_seqs) for i in range(6))
    st = _state(ins[6], n_seqs, k.shape[2], k.shape[3])                  # (n, H, S_i, S_j)
    out = np.empty_like(v)
    for t in range(k.shape[1]):
        sa = np.einsum("nhj,nhij->nhi", a[:, t], st)
        st = st * w[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :] + \
            sa[..., None] * b[:, t, :, None, :]
        out[:, t] = np.einsum("nhij,nhj->nhi", st, r[:, t])
    return _pack(out, st, node)


def _build_wkv7(ctx, H, S, tokens, seqs):
    from .norm import l2_norm
    r, w, k, v, a, b = _leaves(ctx, ("r", "w", "k", "v", "a", "b"), S, H, tokens * seqs)
    # test_rwkv_wkv7 normalizes a and b (long sequences overflow otherwise)
    a, b = l2_norm(ctx, a, 1e-7), l2_norm(ctx, b, 1e-7)
    return rwkv_wkv7(ctx, r, w, k, v, a, b, _state_leaf(ctx, S, H, seqs))


RWKV_WKV7 = _recurrence_op("RWKV_WKV7", _infer_wkv7, _ref_wkv7, _build_wkv7,
                           lambda g, c, s, p, node: g.ggml_rwkv_wkv7(c, *s[:7]), "RWKV v7 time mixing")


def rwkv_wkv7(ctx, r, w, k, v, a, b, state):
    """ggml_rwkv_wkv7(r, w, k, v, a, b, state)."""
    return RWKV_WKV7.build(ctx, [r, w, k, v, a, b, state])
