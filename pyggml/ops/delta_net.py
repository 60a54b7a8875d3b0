"""GATED_DELTA_NET (ggml_gated_delta_net): the gated delta rule of Qwen3.5 / Kimi-linear (KDA).

q, k [S, H_k, T, n_seqs_k]; v [S, H, T, n_seqs]; g [1 or S, H, T, n_seqs] (scalar or, KDA,
per-channel log gate); beta [1, H, T, n_seqs]; state [S, S, H, n_seqs] the initial state. q/k
broadcast over heads tiled (head h reads q head h % H_k) and over sequences (n_seqs / n_seqs_k
consecutive sequences share one). With M the state as stored (M[j, i] = element (i, j)), per
token, as ggml's CPU kernel:

  M[j, i] *= exp(g_i) (or exp(g));  delta_j = (v_j - sum_i M[j, i] k_i) * beta;
  M[j, i] += delta_j k_i;            out_j = sum_i M[j, i] q_i / sqrt(S)

The result [S*H, T*n_seqs + K*S*n_seqs] packs the outputs, then K state snapshots, the most
recent first (slot s = the state s tokens before the end). Slots older than the sequence (T < K)
ggml leaves untouched; pyggml writes zeros there.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParamError
from ..tensor import is_contiguous
from ..tensor import is_contiguous_rows
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
_NAMES = ("q", "k", "v", "g", "beta", "state")


def _infer_gdn(srcs, p):
    q, k, v, g, beta, state = (need_src("GATED_DELTA_NET", srcs, i, n)
                               for i, n in enumerate(_NAMES))
    for t, n in zip((q, k, v, g, beta, state), _NAMES):
        need_type("GATED_DELTA_NET", t, (_F32,), n)
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        need(is_contiguous_rows(t), "GATED_DELTA_NET", f"{n}'s rows must be contiguous", t)
    for t, n in ((g, "g"), (beta, "beta"), (state, "state")):
        need(is_contiguous(t), "GATED_DELTA_NET", f"{n} must be contiguous", t)
    if p.K < 1:
        raise ParamError(f"GATED_DELTA_NET: K={p.K} snapshot slots must be >= 1 [{v.name!r}]")
    S, H, T, ns = v.ne
    need(q.ne == k.ne, "GATED_DELTA_NET", "q and k must have the same shape", q, k)
    need(q.ne[0] == S and q.ne[2] == T, "GATED_DELTA_NET",
         f"q/k must be [{S}, H_k, {T}, n_seqs_k] (head size and tokens of v)", q, v)
    need(q.ne[1] > 0 and q.ne[3] > 0, "GATED_DELTA_NET",      # (ggml: modulo by 0, SIGFPE)
         "q/k have no heads or no sequences (ne[1] or ne[3] is 0)", q)
    need(H % q.ne[1] == 0 and ns % q.ne[3] == 0, "GATED_DELTA_NET",
         "v's heads and sequences must be multiples of q's", q, v)
    need(g.ne[0] in (1, S) and g.ne[1:] == [H, T, ns], "GATED_DELTA_NET",
         f"g must be [1 or {S}, {H}, {T}, {ns}]", g)
    need(beta.ne == [1, H, T, ns], "GATED_DELTA_NET", f"beta must be [1, {H}, {T}, {ns}]", beta)
    need(state.ne == [S, S, H, ns], "GATED_DELTA_NET", f"state must be [{S}, {S}, {H}, {ns}]",
         state)
    return Out(_F32, [S * H, T * ns + p.K * S * ns])


def _ref_gdn(node, ins, p):
    q, k, v, g, beta, state = ins[:6]
    ns, T, H, S = v.shape
    heads = np.arange(H) % q.shape[2]
    seqs = np.arange(ns) // (ns // q.shape[0])
    q, k = (x[seqs][:, :, heads] for x in (q, k))                   # (ns, T, H, S)
    m = state.copy()                                                 # (ns, H, S_j, S_i)
    out = np.empty_like(v)
    snaps = np.zeros((p.K, ns, H, S, S))
    scale = 1.0 / np.sqrt(np.float32(S))
    for t in range(T):
        m = m * np.exp(g[:, t])[:, :, None, :]                      # (ns, H, 1, 1 or S)
        delta = (v[:, t] - np.einsum("nhji,nhi->nhj", m, k[:, t])) * beta[:, t]
        m = m + delta[..., :, None] * k[:, t][..., None, :]
        out[:, t] = np.einsum("nhji,nhi->nhj", m, q[:, t]) * scale
        if T - 1 - t < p.K:
            snaps[T - 1 - t] = m
    return np.concatenate([out.reshape(-1), snaps.reshape(-1)]).reshape(node.ne[::-1])


def _gdn_init(t, rng):
    """test_gated_delta_net's value ranges (a decaying gate, positive beta, shifted v)."""
    lo, hi = {"g": (-20.0, -1e-4), "beta": (0.0, 1.0), "v": (-0.3, 5.0)}.get(t.name, (-1.0, 1.0))
    return rng.uniform(lo, hi, size=t.ne[::-1])


def _gdn_cases():
    from .norm import l2_norm
    from .view import permute
    out = []

    def add(hc, hs, tokens, seqs, v_repeat=1, permuted=False, kda=False, K=1, tags=()):
        def build(ctx):
            hv = hc * v_repeat
            if permuted:    # dims 1 and 2 swapped in memory, permuted back: strided rows
                qkv = [permute(ctx, cc.leaf(ctx, "f32", (hs, tokens, h, seqs), n), 0, 2, 1, 3)
                       for n, h in (("q", hc), ("k", hc), ("v", hv))]
            else:
                qkv = [cc.leaf(ctx, "f32", (hs, h, tokens, seqs), n)
                       for n, h in (("q", hc), ("k", hc), ("v", hv))]
            q, k, v = qkv
            v.name = "v"
            g = cc.leaf(ctx, "f32", (hs if kda else 1, hv, tokens, seqs), "g")
            beta = cc.leaf(ctx, "f32", (1, hv, tokens, seqs), "beta")
            state = cc.leaf(ctx, "f32", (hs, hs, hv, seqs), "state")
            # q/k are L2-normalised in qwen35/kimi-linear before delta_net
            return gated_delta_net(ctx, l2_norm(ctx, q, 1e-6), l2_norm(ctx, k, 1e-6), v, g, beta,
                                   state, K)
        out.append(cc.case("GATED_DELTA_NET", dict(
            type=cc.ggml_type("f32"), head_count=hc, head_size=hs, n_seq_tokens=tokens, n_seqs=seqs,
            v_repeat=v_repeat, permuted=permuted, kda=kda, K=K), build, init=_gdn_init, tags=tags))

    add(32, 128, 1, 1)
    add(32, 16, 1, 1)
    add(32, 16, 1, 1, 1, True, True)
    add(32, 16, 1, 1, 1, False, True)
    add(16, 64, 1, 2)
    add(4, 64, 4, 1)
    add(4, 64, 4, 2)
    add(8, 32, 4, 2, 2)
    add(4, 64, 4, 2, 1, True)
    add(4, 64, 4, 1, 1, True)
    add(4, 64, 1, 1, 1, False, True)
    add(4, 64, 1, 2, 1, False, True)
    add(4, 16, 1, 2, 1, False, True)
    add(4, 32, 4, 1, 1, False, True)
    add(4, 64, 4, 2, 1, False, True)
    add(8, 32, 4, 2, 2, False, True)
    add(4, 64, 4, 2, 1, True, True)
    add(4, 16, 4, 2, 1, True, True)
    for tokens, seqs in ((64, 1), (127, 1), (256, 1), (65, 1), (100, 1), (200, 1), (127, 2)):
        add(4, 64, tokens, seqs)
    for tokens in (64, 33, 100):
        add(4, 64, tokens, 1, 1, False, True)
    add(4, 16, 2, 1, 1, False, False, 2)
    add(4, 32, 4, 1, 1, False, False, 4)
    add(4, 64, 4, 2, 1, False, False, 4)
    add(8, 128, 4, 1, 1, False, False, 4)
    add(4, 64, 4, 2, 1, False, True, 4)
    add(8, 32, 4, 2, 2, False, True, 4)
    add(4, 32, 8, 1, 1, False, False, 3)
    add(4, 64, 16, 2, 1, False, False, 4)
    # pyggml's: T < K, the older slots are zeros (ggml leaves them as the buffer was)
    add(4, 16, 2, 1, 1, False, False, 4, tags=("no_ggml",))
    return out


GATED_DELTA_NET = register(OpDef(
    "GATED_DELTA_NET", _infer_gdn, params="K:i32", reference=_ref_gdn, cases=_gdn_cases,
    flops=lambda node: 6 * node.src[2].ne[0] ** 2 * node.src[2].ne[1] * node.src[2].ne[2] *
    node.src[2].ne[3],
    nbytes=lambda node: nbytes(node) + sum(nbytes(t) for t in node.src[:6]),
    ggml=lambda g, c, s, p, node: g.ggml_gated_delta_net(c, *s[:6], p.K),
    doc="Gated delta rule over T tokens per sequence: outputs [S*H, T*n_seqs], then K state "
        "snapshots (most recent first)."))


def gated_delta_net(ctx, q, k, v, g, beta, state, K=1):
    """ggml_gated_delta_net(q, k, v, g, beta, state, K)."""
    return GATED_DELTA_NET.build(ctx, [q, k, v, g, beta, state], dict(K=K))
