"""LIGHTNING_INDEXER (ggml_lightning_indexer): DeepSeek sparse attention's key scorer.

q [D, n_head, n_batch, ns] (F32), k [D, 1, n_kv, ns] (any type ggml can convert to F32),
weights [n_head, n_batch, 1, ns] (F32, prescaled), mask [n_kv, n_batch, 1, nm] (F16, ns % nm
== 0: mask stream s % nm) -> F32 [n_kv, n_batch, 1, ns]:
    res[j, t, s] = sum_h max(q[:, h, t, s] . k[:, 0, j, s], 0) * weights[h, t, s] + mask[j, t]
"""
from __future__ import annotations

import numpy as np

from ..tensor import nbytes
from ..types import TRAITS
from ..types import GGMLType
from . import cases_common as cc
from .attention import _init_kq_mask
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32, _F16 = GGMLType.F32, GGMLType.F16
# the types ggml converts rows of to F32 (its to_float); F64 and the Q8_1/Q8_K dot types have none
K_TYPES = tuple(t for t, tr in TRAITS.items() if (tr.is_float or tr.is_quantized) and
                t not in (GGMLType.F64, GGMLType.Q8_1, GGMLType.Q8_K))


def _infer_li(srcs, p):
    op = "LIGHTNING_INDEXER"
    q, k, w, m = (need_src(op, srcs, i, n) for i, n in enumerate(("q", "k", "weights", "mask")))
    need_type(op, q, (_F32,), "q")
    need_type(op, w, (_F32,), "weights")
    need_type(op, m, (_F16,), "mask")
    need_type(op, k, K_TYPES, "k")
    need(q.ne[0] == k.ne[0], op, "q and k must have the same head size (ne0)", q, k)
    need(k.ne[1] == 1, op, "k must have one head (ne1 == 1)", k)
    need(m.ne[0] == k.ne[2] and m.ne[1] == q.ne[2] and m.ne[2] == 1, op,
         "mask must be [n_kv, n_batch, 1, nm]", m, q, k)
    need(w.ne[0] == q.ne[1] and w.ne[1] == q.ne[2] and w.ne[2] == 1, op,
         "weights must be [n_head, n_batch, 1, ns]", w, q)
    need(q.ne[3] == k.ne[3] == w.ne[3] and w.ne[3] % m.ne[3] == 0, op,
         "q, k and weights need the same streams (ne3), a multiple of the mask's", q, k, w, m)
    for t, n in ((q, "q"), (k, "k"), (w, "weights"), (m, "mask")):
        need(t.nb[0] == TRAITS[t.type].type_size, op, f"{n}'s rows must be contiguous", t)
    return Out(_F32, [k.ne[2], q.ne[2], 1, q.ne[3]])


def _ref_li(node, ins, p):
    q, k, w, m = ins[:4]            # (ns, T, H, D), (ns, n_kv, 1, D), (ns, 1, T, H), (nm, 1, T, n_kv)
    qk = q @ k[:, None, :, 0, :].swapaxes(-1, -2)                         # (ns, T, H, n_kv)
    score = (np.maximum(qk, 0.0) * w[:, 0, :, :, None]).sum(axis=2)       # (ns, T, n_kv)
    ns, nm = q.shape[0], m.shape[0]
    return (score + m[np.arange(ns) % nm, 0])[:, None]


def _li_init(leaf, rng):
    return _init_kq_mask(leaf, rng) if leaf.name == "m" else None


def _li_cases():
    out = []

    def add(hsk, nh, kv, nb, ns, nm, tk):
        def build(ctx):
            return lightning_indexer(ctx, cc.leaf(ctx, "f32", (hsk, nh, nb, ns), "q"),
                                     cc.leaf(ctx, tk, (hsk, 1, kv, ns), "k"),
                                     cc.leaf(ctx, "f32", (nh, nb, 1, ns), "w"),
                                     cc.leaf(ctx, "f16", (kv, nb, 1, nm), "m"))
        out.append(cc.case("LIGHTNING_INDEXER", dict(hsk=hsk, nh=nh, kv=kv, nb=nb, ns=ns, nm=nm,
                                                     type_K=cc.ggml_type(tk)), build, init=_li_init,
                           max_nmse=1e-6, tags=("slow",) if hsk * nh * kv * nb * ns > 1 << 26 else ()))

    types = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
    for bs in (1, 512):
        for nh in (32, 64):
            for ns, nm in ((1, 1), (4, 4), (4, 1)):
                for tk in types:
                    add(128, nh, 256, bs, ns, nm, tk)
    for kv in (1, 7, 8, 63, 64, 65):
        for tk in types[:-1]:
            add(128, 64, kv, 32, 4, 1, tk)
    return out


LIGHTNING_INDEXER = register(OpDef(
    "LIGHTNING_INDEXER", _infer_li, reference=_ref_li, cases=_li_cases, max_nmse=1e-6,
    flops=lambda node: (2 * node.src[0].ne[0] + 2) * node.src[0].ne[1] * node.ne[0] *
    node.ne[1] * node.ne[3],
    nbytes=lambda node: nbytes(node) + sum(nbytes(t) for t in node.src[:4]),
    ggml=lambda g, c, s, p, node: g.ggml_lightning_indexer(c, *s[:4]),
    doc="Per key and query token: the ReLU'd q.k of every indexer head, weighted and summed, "
        "plus the mask -> F32 [n_kv, n_batch, 1, ns]."))


def lightning_indexer(ctx, q, k, weights, mask):
    """ggml_lightning_indexer(q, k, weights, mask)."""
    return LIGHTNING_INDEXER.build(ctx, [q, k, weights, mask])
