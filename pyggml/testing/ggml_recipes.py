"""Real-ggml recipes that need testing's own helpers, registered on their OpDefs from here
(the consumer's side, as JAX registers lowerings), so ops/ never imports testing/.

A recipe is `OpDef.ggml(g, ctx, gsrcs, p, node) -> ggml tensor pointer`: how real ggml builds
the same node (ggml_lib.Mirror calls it). Importing pyggml.testing registers these.
"""
from __future__ import annotations

import numpy as np

from ..errors import GGMLError
from ..errors import describe
from ..ops.attention import WS_K
from ..ops.attention import WS_KQ
from ..ops.attention import WS_MASK
from ..ops.attention import WS_MASKQ
from ..ops.attention import WS_OPREV
from ..ops.attention import WS_Q
from ..ops.attention import WS_STATE
from ..ops.attention import WS_V
from ..ops.attention import WS_VQ
from ..ops.registry import OPS
from ..ops.softmax import _alibi_slopes
from ..types import PREC_F32
from ..types import GGMLType as T
from . import ggml_lib as gl

_OP_WS = "FLASH_ATTN_EXT_WITH_STATE"


def flash_attn_ext_with_state(g, c, s, p, node):
    """Real ggml has no with_state op. For a chain of calls that starts from a fresh state,
    each call's output equals ggml_flash_attn_ext over every key so far, so the mirror
    builds that: this call's hot and cold K/V (as F32, concatenated after the keys of the
    previous call, read from the ggml node that stands for o_prev) and PREC_F32."""
    if node.src[WS_OPREV] is not None:
        prev = node.src[WS_OPREV]
        if prev.op is None or prev.op.name != _OP_WS or prev.src[WS_STATE] is not node.src[WS_STATE]:
            raise GGMLError(f"{_OP_WS}: the ggml mirror follows chains of with_state calls "
                            f"sharing one state; o_prev {describe(prev)} is not one")
    F32, F16 = int(T.F32), int(T.F16)
    ks, vs, ms = [], [], []
    if s[WS_OPREV] is not None:          # the ggml FA node of the previous call
        prev = gl.tensor(s[WS_OPREV])
        ks.append(prev.src[1])
        vs.append(prev.src[2])
        ms.append(prev.src[3] or None)
    for ik, iv, im in ((WS_K, WS_V, WS_MASK), (WS_KQ, WS_VQ, WS_MASKQ)):
        if s[ik] is None:
            continue
        k, v = s[ik], s[iv]
        ks.append(g.ggml_cast(c, k, F32) if node.src[ik].type != T.F32 else k)
        vs.append(g.ggml_cast(c, v, F32) if node.src[iv].type != T.F32 else v)
        m = s[im]
        if m is not None and node.src[im].type != T.F16:
            m = g.ggml_cast(c, m, F16)
        if m is not None:                # a view of the n_batch rows (the padding differs)
            mt = node.src[im]
            m = g.ggml_cont(c, g.ggml_view_4d(c, m, mt.ne[0], node.src[0].ne[1], mt.ne[2],
                                              mt.ne[3], mt.nb[1], mt.nb[2], mt.nb[3], 0))
        ms.append(m)
    if any(m is None for m in ms) and not all(m is None for m in ms):
        raise GGMLError(f"{_OP_WS}: the ggml mirror needs masks on all segments of a chain or on none")

    def cat(parts, dim):
        out = parts[0]
        for x in parts[1:]:
            out = g.ggml_concat(c, out, x, dim)
        return out
    # K/V of different GQA/ne3 layouts cannot be concatenated; the cases keep them alike
    k, v = cat(ks, 1), cat(vs, 1)
    mask = cat(ms, 0) if ms[0] is not None else None
    t = g.ggml_flash_attn_ext(c, s[WS_Q], k, v, mask, p.scale, p.max_bias, p.logit_softcap)
    g.ggml_flash_attn_ext_set_prec(t, PREC_F32)
    # the state too, from ggml ops: scores = q·k (scaled, capped, + slope·mask), M = row max
    # (pool_1d; an all-masked row gives -FLT_MAX, which compares as -inf), S = sum exp(s - M)
    kq = g.ggml_mul_mat(c, k, s[WS_Q])                     # [n_kv, N, H, ne3]
    if p.logit_softcap != 0.0:
        kq = g.ggml_scale(c, g.ggml_tanh(c, g.ggml_scale(c, kq, p.scale / p.logit_softcap)),
                          p.logit_softcap)
    else:
        kq = g.ggml_scale(c, kq, p.scale)
    if mask is not None:
        mf = g.ggml_repeat(c, g.ggml_cast(c, mask, F32), kq)
        if p.max_bias > 0:
            H = node.src[WS_Q].ne[2]
            sl = gl.new_tensor(c, F32, [1, 1, H, 1])
            gl.set_bytes(sl, _alibi_slopes(H, p.max_bias).astype(np.float32).tobytes())
            mf = g.ggml_mul(c, mf, sl)
        kq = g.ggml_add(c, kq, mf)
    n_kv = gl.tensor(kq).ne[0]
    m = g.ggml_pool_1d(c, kq, 0, n_kv, n_kv, 0)            # GGML_OP_POOL_MAX
    ssum = g.ggml_sum_rows(c, g.ggml_exp(c, g.ggml_sub(c, kq, m)))
    cp = g.ggml_cpy(c, g.ggml_concat(c, m, ssum, 0), s[WS_STATE])
    # ggml graphs have one root per pyggml node; these extra sources (ignored by the CPU
    # kernels) put the state update before the result, and after the previous call's
    if s[WS_OPREV] is not None:
        gl.tensor(cp).src[2] = s[WS_OPREV]
    gl.tensor(t).src[5] = cp
    return t


OPS[_OP_WS].ggml = flash_attn_ext_with_state
