"""FastReferenceBackend: the reference backend with NumPy/BLAS fast paths for the nodes that
make it too slow to run a model (tiered execution's first tier: it computes while the Numba
kernels compile, see sched/tiered.py).

Each fast path computes what the Numba kernel computes, in its precision, rather than the
float64 oracle, so a graph that moves from this backend to Numba mid-run keeps its numbers:

- MUL_MAT of 2-D weights (F32/F16/BF16 and the 32-block quants) x F32 activations: the
  weights are dequantized to float32 once (data.read(w, np.float32), kept while their bytes
  are unchanged) and the product is one float32 BLAS call. Like numba_cpu/kernels/matmul.py,
  activations stay float32 on its GEMM path (n >= GEMM_MIN_N) and are quantized per 32-block
  ("Q8 split": d = amax/127, q = rint(x * 127/amax)) on its dot path for quantized weights;
  the integer dots then differ from this float dot of the same dequantized values by float32
  rounding.
- SET_ROWS: the OpDef reference without reading its destination (a whole KV cache layer) first.
- RMS_NORM of a contiguous F32 tensor: the reference's steps with the elementwise ones in
  float32 (a square or product of float32 values is exact in float64, so rounding it once
  to float32 is the float32 result); the row sums stay float64 as the reference's.
- ADD / MUL of F32 tensors (b broadcast as NumPy does): one float32 ufunc into the result, the
  reference's float64 result rounded once (double rounding is harmless for + and *).
- FLASH_ATTN_EXT(_WITH_STATE) without ALiBi, softcap or sinks: each segment's softmax in
  float32 with BLAS products, q rounded to 8-bit blocks for quantized K under PREC_DEFAULT
  (the kernel's quant_q_row), segments and the incoming state merged by ops/fa_state's rule.
Other nodes (and the cases above when a fast path does not apply: a bad row id, an
inconsistent state, non-finite K/V) run their OpDef reference, as in ReferenceBackend.
"""
from __future__ import annotations

import numpy as np

from ... import data
from ...ops import fa_state as st
from ...ops.attention import WS_K
from ...ops.attention import WS_KQ
from ...ops.attention import WS_MASK
from ...ops.attention import WS_MASKQ
from ...ops.attention import WS_OPREV
from ...ops.attention import WS_Q
from ...ops.attention import WS_STATE
from ...ops.attention import WS_V
from ...ops.attention import WS_VQ
from ...tensor import Tensor
from ...tensor import is_contiguous
from ...tensor import nbytes
from ...types import TRAITS
from ...types import GGMLType
from .backend import ReferenceBackend
from .backend import compute_node_reference

GEMM_MIN_N = 32           # numba_cpu/kernels/matmul.py: from here activations are not quantized
QK = 32
Q8_SPLIT = {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0}
FLOAT_W = {GGMLType.F32, GGMLType.F16, GGMLType.BF16}
CACHE_BYTES = 2 << 30     # float32 weights kept at most (least recently used dropped first)


def _fingerprint(t: Tensor) -> tuple:
    """Cheap content check of a tensor's bytes (a KV cache may be mul_mat'ed too): sum and xor
    of its 8-byte words, read in place (~0.02 ms for a 0.5 MB weight)."""
    if is_contiguous(t):
        b = t.buffer.data[t.offs:t.offs + nbytes(t)]
    else:
        raw = data.row_bytes(t) if TRAITS[t.type].blck_size != 1 else data.strided(t)
        b = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    n8 = b.size // 8
    w = b[:n8 * 8].view(np.uint64)
    return int(np.bitwise_xor.reduce(w)), int(w.sum(dtype=np.uint64)), bytes(b[n8 * 8:])


class WeightCache:
    """float32 (m, k) copies of weight matrices, keyed by where and what they are."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.entries: dict = {}          # key -> (fingerprint, float32 array)

    def get(self, w: Tensor) -> np.ndarray:
        key = (w.data_ptr, int(w.type), tuple(w.ne), tuple(w.nb))
        fp = _fingerprint(w)
        hit = self.entries.pop(key, None)
        if hit is not None and hit[0] == fp:
            self.entries[key] = hit                  # most recently used last
            return hit[1]
        f = data.read(w, np.float32).reshape(w.ne[1], w.ne[0])
        self.entries[key] = (fp, f)
        used = sum(e[1].nbytes for e in self.entries.values())
        while used > self.max_bytes and len(self.entries) > 1:
            _, (_, old) = next(iter(self.entries.items()))
            del self.entries[next(iter(self.entries))]
            used -= old.nbytes
        return f

    def clear(self) -> None:
        self.entries.clear()


def quantize_act_q8_split(x: np.ndarray, fa: bool = False) -> np.ndarray:
    """float32 rows (..., k), k % 32 == 0 -> the values the Numba kernels leave them as
    (q * d per 32-block, float32): q = rint(x * (127/amax)) (ties to even); mul_mat's
    quantize_act keeps d = amax/127 in F32, flash attention's quant_q_row (fa=True) converts
    q as ggml-cpu does, with the x86 from_float of K's vec_dot_type, which stores d as F16."""
    x = np.asarray(x, dtype=np.float32)
    blocks = x.reshape(x.shape[:-1] + (x.shape[-1] // QK, QK))
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = (amax / np.float32(127.0)).astype(np.float32)
        if fa:
            d = d.astype(np.float16).astype(np.float32)
        idd = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
        q = np.rint(blocks * idd)
        d = np.where(np.isfinite(amax), d, np.float32(np.nan)).astype(np.float32)
    return (q * d).astype(np.float32).reshape(x.shape)


def _fast_mul_mat_ok(node: Tensor) -> bool:
    a, b = node.src[0], node.src[1]
    return (a.type in Q8_SPLIT or a.type in FLOAT_W) and b.type == GGMLType.F32 \
        and a.ne[2] == 1 and a.ne[3] == 1 and a.ne[0] % QK == 0 and node.type == GGMLType.F32


def fast_mul_mat(be: "FastReferenceBackend", node: Tensor) -> bool:
    a, b = node.src[0], node.src[1]
    w = be.weights.get(a)                                    # (m, k) float32
    x = data.strided(b)                                      # (b3, b2, n, k) float32
    m, n, k = a.ne[1], b.ne[1], a.ne[0]
    gemm = n >= GEMM_MIN_N and m >= 16 and k >= 16
    if a.type in Q8_SPLIT and not gemm:
        x = quantize_act_q8_split(x)
    # w @ x^T: BLAS's NN-friendly order ran SmolLM2's 32-column products ~1.3x faster than
    # x @ w^T (one thread, min of 5 x 20 runs, CPU time)
    data.strided(node)[...] = np.matmul(w, x.swapaxes(-1, -2)).swapaxes(-1, -2)
    return True


def _fast_get_rows_ok(node: Tensor) -> bool:
    a, b = node.src[0], node.src[1]
    return node.type == GGMLType.F32 and a.ne[2] == 1 and a.ne[3] == 1 and b.ne[1] == 1 \
        and b.ne[2] == 1 and b.type == GGMLType.I32 and (a.type in Q8_SPLIT or a.type in FLOAT_W)


def fast_get_rows(be: "FastReferenceBackend", node: Tensor) -> bool:
    """Only the rows asked for are dequantized (an embedding table is large)."""
    a, ids = node.src[0], data.strided(node.src[1]).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= a.ne[1]):
        return False                              # the reference names the bad id
    if TRAITS[a.type].blck_size == 1:
        rows = data.read(a, np.float32)[0, 0][ids]
    else:
        rb = np.ascontiguousarray(data.row_bytes(a)[0, 0][ids])
        rows = data._codec(a.type, "to_float")(rb.reshape(-1), ids.size * a.ne[0])
    data.strided(node)[...] = np.asarray(rows, np.float32).reshape(data.strided(node).shape)
    return True


def _set_rows_ok(node: Tensor) -> bool:
    return True


def fast_set_rows(be, node: Tensor) -> bool:
    """compute_node_reference without reading the destination (src[2]: the KV cache layer the
    rows go into, ~0.7 ms a node as float64): the reference writes the addressed rows in
    place and never reads it."""
    compute_node_reference(node, unread=2)
    return True


def _binary_ok(node: Tensor) -> bool:
    a, b = node.src[0], node.src[1]
    return node.type == a.type == b.type == GGMLType.F32 and \
        all(nb in (1, na) for na, nb in zip(a.ne, b.ne))


def _binary(ufunc):
    def fast(be, node: Tensor) -> bool:
        ufunc(data.strided(node.src[0]), data.strided(node.src[1]), out=data.strided(node))
        return True
    return fast


def _rms_norm_ok(node: Tensor) -> bool:
    x = node.src[0]
    return node.type == x.type == GGMLType.F32 and is_contiguous(x) and is_contiguous(node) \
        and x.ne[0] > 0


def fast_rms_norm(be, node: Tensor) -> bool:
    from ...ops.norm import _eps
    from ...ops.norm import _f32
    from ...ops.norm import _rsqrt
    x = data.strided(node.src[0])
    with np.errstate(over="ignore", invalid="ignore"):
        sums = np.square(x).astype(np.float64).sum(axis=-1, keepdims=True)
        r = _rsqrt(_f32(_f32(sums / x.shape[-1]) + _eps(node.op.p(node))))
        np.multiply(x, r.astype(np.float32), out=data.strided(node))
    return True


# --- flash attention ---------------------------------------------------------------------------

FA_Q8 = Q8_SPLIT | {GGMLType.Q4_1}       # K types whose dots read q as 8-bit blocks (PREC_DEFAULT)


def _fa_params_ok(node: Tensor) -> bool:
    p = node.op.p(node)
    q = node.src[0]
    return p.max_bias == 0.0 and p.logit_softcap == 0.0 and q.ne[3] == 1 \
        and q.type == GGMLType.F32


def _segment(q, k: Tensor, v: Tensor, mask: Tensor, scale: float, prec: int):
    """One segment's (M, S, O) in float32 as the kernel computes it: q (H, N, D)."""
    H, N, _ = q.shape
    kk = data.read(k, np.float32)[0]                 # (Hk, n_kv, D)
    vv = data.read(v, np.float32)[0]
    if not np.isfinite(vv).all() or not np.isfinite(kk).all():
        return None                                  # the reference's per-key NaN rules
    if prec == 0 and k.type in FA_Q8:
        q = quantize_act_q8_split(q, fa=True)
    g = H // kk.shape[0]
    qg = q.reshape(kk.shape[0], g * N, q.shape[-1])  # q heads of one KV head together
    with np.errstate(invalid="ignore", over="ignore"):
        sc = np.matmul(qg, kk.swapaxes(-1, -2)).reshape(H, N, -1) * np.float32(scale)
        if mask is not None:
            mm = data.read(mask, np.float32)[0, 0, :N]   # (N, n_kv)
            sc = np.where(np.isneginf(mm), -np.inf, sc + mm)
        m = sc.max(axis=-1)
        has = m > -np.inf
        e = np.where(has[..., None], np.exp(sc - np.where(has, m, 0)[..., None]), 0)
        e = e.astype(np.float32)
    ssum = e.sum(axis=-1)
    o = np.matmul(e.reshape(kk.shape[0], g * N, -1), vv).reshape(H, N, -1)
    o = o / np.where(ssum > 0, ssum, 1)[..., None]
    return np.where(has, m, -np.inf), ssum, o


def _fa_ok(node: Tensor) -> bool:
    mask = node.src[3]
    return _fa_params_ok(node) and (len(node.src) < 5 or node.src[4] is None) and \
        (mask is None or (mask.ne[2] == 1 and mask.ne[3] == 1))


def fast_fa(be, node: Tensor) -> bool:
    p = node.op.p(node)
    q = data.strided(node.src[0])[0]                 # (H, N, D) float32
    r = _segment(q, node.src[1], node.src[2], node.src[3], p.scale, p.prec)
    if r is None:
        return False
    data.strided(node)[...] = r[2].transpose(1, 0, 2)[None]      # (N, H, DV)
    return True


def _ws_ok(node: Tensor) -> bool:
    return _fa_params_ok(node) and all(
        node.src[i] is None or (node.src[i].ne[2] == 1 and node.src[i].ne[3] == 1)
        for i in (WS_MASK, WS_MASKQ))


def fast_ws(be, node: Tensor) -> bool:
    """FLASH_ATTN_EXT_WITH_STATE: both segments, then the incoming state (fa_state's rule);
    an inconsistent state or a missing o_prev is left to the reference (it raises)."""
    p = node.op.p(node)
    q = data.strided(node.src[WS_Q])[0]
    H, N = q.shape[0], q.shape[1]
    prev = data.strided(node.src[WS_STATE]).reshape(H, N, 2).astype(np.float64)
    fresh, has_prev, bad = st.row_kinds(prev[..., st.STATE_M], prev[..., st.STATE_S])
    if bad.any() or (node.src[WS_OPREV] is None and has_prev.any()):
        return False
    dv = node.ne[0]
    m, s, o = np.full((H, N), -np.inf), np.zeros((H, N)), np.zeros((H, N, dv))
    for ik, iv, im in ((WS_K, WS_V, WS_MASK), (WS_KQ, WS_VQ, WS_MASKQ)):
        if node.src[ik] is None:
            continue
        r = _segment(q, node.src[ik], node.src[iv], node.src[im], p.scale, p.prec)
        if r is None:
            return False
        m, s, o = st.merge(m, s, o, *r)
    o_prev = (data.strided(node.src[WS_OPREV])[0].transpose(1, 0, 2)
              if node.src[WS_OPREV] is not None else np.zeros_like(o))
    m, s, o = st.merge(np.where(has_prev, prev[..., 0], -np.inf),
                       np.where(has_prev, prev[..., 1], 0.0), o_prev, m, s, o)
    data.strided(node.src[WS_STATE])[...] = np.stack([m, s], axis=-1).reshape(
        data.strided(node.src[WS_STATE]).shape)
    data.strided(node)[...] = o.transpose(1, 0, 2)[None]
    return True


# --- rope ------------------------------------------------------------------------------------

def _rope_ok(node: Tensor) -> bool:
    p = node.op.p(node)
    return p.mode in (0, 2) and (len(node.src) < 3 or node.src[2] is None) \
        and node.type == GGMLType.F32 and node.src[0].type == GGMLType.F32


def fast_rope(be, node: Tensor) -> bool:
    """The reference's own math, with its cos/sin table made once per positions and params
    (a model's graph has two ROPE nodes per layer over the same positions)."""
    from ...ops import rope
    p = node.op.p(node)
    pos = data.strided(node.src[1]).reshape(-1)
    key = (pos.tobytes(), bytes(node.op_params), node.ne[0])
    if be.rope_key != key:
        be.rope_key, be.rope_cs = key, rope._angles(pos.astype(np.int64), p, node.ne[0], None)
    cos, sin = be.rope_cs
    x = data.strided(node.src[0])
    half, nd = p.n_dims // 2, p.n_dims
    c, s = cos[None, :, None, :half], sin[None, :, None, :half]
    x0, x1 = (x[..., 0:nd:2], x[..., 1:nd:2]) if p.mode == 0 else (x[..., :half], x[..., half:nd])
    y = x.astype(np.float64)
    y0, y1 = x0 * c - x1 * s, x0 * s + x1 * c
    if p.mode == 0:
        y[..., 0:nd:2], y[..., 1:nd:2] = y0, y1
    else:
        y[..., :half], y[..., half:nd] = y0, y1
    data.strided(node)[...] = y
    return True


# op -> (applies(node), compute(backend, node) -> False to leave the node to the reference)
FAST = {"MUL_MAT": (_fast_mul_mat_ok, fast_mul_mat),
        "GET_ROWS": (_fast_get_rows_ok, fast_get_rows),
        "SET_ROWS": (_set_rows_ok, fast_set_rows),
        "RMS_NORM": (_rms_norm_ok, fast_rms_norm),
        "ADD": (_binary_ok, _binary(np.add)),
        "MUL": (_binary_ok, _binary(np.multiply)),
        "FLASH_ATTN_EXT": (_fa_ok, fast_fa),
        "ROPE": (_rope_ok, fast_rope),
        "FLASH_ATTN_EXT_WITH_STATE": (_ws_ok, fast_ws)}


class FastReferenceBackend(ReferenceBackend):
    name = "fastref"

    def __init__(self):
        self.weights = WeightCache()
        self.rope_key, self.rope_cs = None, None
        self._blas = None

    def graph_compute(self, gf, eval_cb=None) -> None:
        # one BLAS thread: OpenBLAS's two threads ran a 32x576x1536 product ~6x slower in CPU
        # time on the loaded 2-core box (they spin while waiting for a core), and the Numba
        # kernels compile beside this backend in tiered execution
        from threadpoolctl import ThreadpoolController
        if self._blas is None:
            self._blas = ThreadpoolController()
        with self._blas.limit(limits=1, user_api="blas"):
            super().graph_compute(gf, eval_cb)

    def compute_node(self, node: Tensor) -> None:
        fast = FAST.get(node.op.name)
        if fast is None or not fast[0](node) or not fast[1](self, node):
            compute_node_reference(node)
