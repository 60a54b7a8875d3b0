"""Kernels for pyggml/ops/rwkv.py (RWKV_WKV6, GATED_LINEAR_ATTN, RWKV_WKV7) and
ops/delta_net.py (GATED_DELTA_NET): matrix-state recurrences, one (head, sequence) state at a
time in a float64 scratch matrix, heads split over the threads as ggml does. Sums are float64 as
in the reference, so results do not depend on the thread count."""
from __future__ import annotations

import numba
import numpy as np

from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import SRC3
from ..desc import SRC4
from ..desc import SRC5
from ..desc import SRC6
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..intrinsics import f32_array
from . import kernel

_jit = numba.njit(nogil=True, cache=True)


@_jit
def _load(st, flat, off):
    """A state matrix from its place in a flat F32 array (row-major, as ggml stores it)."""
    n = st.shape[0]
    for i in range(n):
        for j in range(n):
            st[i, j] = flat[off + i * n + j]


@_jit
def _store(flat, off, st):
    n = st.shape[0]
    for i in range(n):
        for j in range(n):
            flat[off + i * n + j] = st[i, j]


@numba.njit(nogil=True, cache=True, inline="always")     # as if written out in each
def _wkv_frame(desc, state, ith, nth):
    """What RWKV_WKV6, GATED_LINEAR_ATTN and RWKV_WKV7 share: S, H, T (SRC0's ne), the
    sequences (the states in slot `state`), C = S * H channels, L tokens a sequence, the
    states in, dst (C * T outputs, then the last states), a float64 state matrix and this
    thread's heads [h0, h1)."""
    S, H, T = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    n_seqs = t_ne(desc, state, 1)
    C = S * H
    s_in = f32_array(t_addr(desc, state), C * S * n_seqs)
    dst = f32_array(t_addr(desc, DST), C * (T + S * n_seqs))
    h0, h1 = row_range(H, ith, nth)
    return S, H, T, n_seqs, C, T // n_seqs, s_in, dst, np.empty((S, S), dtype=np.float64), h0, h1


@kernel("RWKV_WKV6")
def rwkv_wkv6(desc, ith, nth):
    S, H, T, n_seqs, C, L, s_in, dst, st, h0, h1 = _wkv_frame(desc, SRC5, ith, nth)
    k, v, r = (f32_array(t_addr(desc, SRC0), C * T), f32_array(t_addr(desc, SRC1), C * T),
               f32_array(t_addr(desc, SRC2), C * T))
    tf, td = f32_array(t_addr(desc, SRC3), C), f32_array(t_addr(desc, SRC4), C * T)
    for h in range(h0, h1):
        for sq in range(n_seqs):
            base = sq * C * S + h * S * S
            _load(st, s_in, base)
            for t in range(sq * L, (sq + 1) * L):
                o = t * C + h * S
                for j in range(S):
                    acc = 0.0
                    for i in range(S):
                        kv = np.float64(k[o + i]) * v[o + j]
                        acc += r[o + i] * (kv * tf[h * S + i] + st[i, j])
                        st[i, j] = st[i, j] * td[o + i] + kv
                    dst[o + j] = acc
            _store(dst, C * T + base, st)


@kernel("GATED_LINEAR_ATTN")
def gated_linear_attn(desc, ith, nth):
    S, H, T, n_seqs, C, L, s_in, dst, st, h0, h1 = _wkv_frame(desc, SRC4, ith, nth)
    scale = np.float64(param_f32(desc, 0))
    k, v = f32_array(t_addr(desc, SRC0), C * T), f32_array(t_addr(desc, SRC1), C * T)
    q, g = f32_array(t_addr(desc, SRC2), C * T), f32_array(t_addr(desc, SRC3), C * T)
    for h in range(h0, h1):
        for sq in range(n_seqs):
            base = sq * C * S + h * S * S
            _load(st, s_in, base)
            for t in range(sq * L, (sq + 1) * L):
                o = t * C + h * S
                for j in range(S):
                    acc = 0.0
                    for i in range(S):
                        st[i, j] = st[i, j] * g[o + i] + np.float64(k[o + i]) * v[o + j]
                        acc += q[o + i] * scale * st[i, j]
                    dst[o + j] = acc
            _store(dst, C * T + base, st)


@kernel("RWKV_WKV7")
def rwkv_wkv7(desc, ith, nth):
    S, H, T, n_seqs, C, L, s_in, dst, st, h0, h1 = _wkv_frame(desc, SRC6, ith, nth)
    r, w = f32_array(t_addr(desc, SRC0), C * T), f32_array(t_addr(desc, SRC1), C * T)
    k, v = f32_array(t_addr(desc, SRC2), C * T), f32_array(t_addr(desc, SRC3), C * T)
    a, b = f32_array(t_addr(desc, SRC4), C * T), f32_array(t_addr(desc, SRC5), C * T)
    for h in range(h0, h1):
        for sq in range(n_seqs):
            base = sq * C * S + h * S * S
            _load(st, s_in, base)
            for t in range(sq * L, (sq + 1) * L):
                o = t * C + h * S
                for i in range(S):
                    sa = 0.0
                    for j in range(S):
                        sa += a[o + j] * st[i, j]
                    acc = 0.0
                    for j in range(S):
                        st[i, j] = st[i, j] * w[o + j] + np.float64(v[o + i]) * k[o + j] + \
                            sa * b[o + j]
                        acc += st[i, j] * r[o + j]
                    dst[o + i] = acc
            _store(dst, C * T + base, st)


@kernel("GATED_DELTA_NET")
def gated_delta_net(desc, ith, nth):
    """One (head, sequence) at a time; M[j, i] the state as stored (see ops/delta_net.py)."""
    S, H, T, ns = t_ne(desc, SRC2, 0), t_ne(desc, SRC2, 1), t_ne(desc, SRC2, 2), t_ne(desc, SRC2, 3)
    Hk, nsk = t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 3)
    K = param_i32(desc, 0)
    kda = t_ne(desc, SRC3, 0) == S
    scale = 1.0 / np.sqrt(np.float64(np.float32(S)))
    g = f32_array(t_addr(desc, SRC3), t_ne(desc, SRC3, 0) * H * T * ns)
    beta = f32_array(t_addr(desc, SRC4), H * T * ns)
    s_in = f32_array(t_addr(desc, SRC5), S * S * H * ns)
    n_out = S * H * T * ns
    snap = S * S * H * ns
    dst = f32_array(t_addr(desc, DST), n_out + K * snap)
    m = np.empty((S, S), dtype=np.float64)
    delta = np.empty(S, dtype=np.float64)
    decay = np.empty(S, dtype=np.float64)
    u0, u1 = row_range(H * ns, ith, nth)
    for u in range(u0, u1):
        h, sq = u % H, u // H
        hq, sqq = h % Hk, sq // (ns // nsk)
        base = (sq * H + h) * S * S
        _load(m, s_in, base)
        for t in range(T):
            qa = t_addr(desc, SRC0) + sqq * t_nb(desc, SRC0, 3) + t * t_nb(desc, SRC0, 2) + \
                hq * t_nb(desc, SRC0, 1)
            ka = t_addr(desc, SRC1) + sqq * t_nb(desc, SRC1, 3) + t * t_nb(desc, SRC1, 2) + \
                hq * t_nb(desc, SRC1, 1)
            va = t_addr(desc, SRC2) + sq * t_nb(desc, SRC2, 3) + t * t_nb(desc, SRC2, 2) + \
                h * t_nb(desc, SRC2, 1)
            qv, kv, vv = f32_array(qa, S), f32_array(ka, S), f32_array(va, S)
            gt = ((sq * T + t) * H + h)
            bt = np.float64(beta[gt])
            for i in range(S):
                decay[i] = np.exp(np.float64(g[gt * S + i] if kda else g[gt]))
            for j in range(S):
                for i in range(S):
                    m[j, i] *= decay[i]
            for j in range(S):
                acc = 0.0
                for i in range(S):
                    acc += m[j, i] * kv[i]
                delta[j] = (vv[j] - acc) * bt
            o = ((sq * T + t) * H + h) * S
            for j in range(S):
                acc = 0.0
                for i in range(S):
                    m[j, i] += delta[j] * kv[i]
                    acc += m[j, i] * qv[i]
                dst[o + j] = acc * scale
            slot = T - 1 - t
            if slot < K:
                _store(dst, n_out + slot * snap + base, m)
        for slot in range(T, K):                   # older than the sequence: zeros
            so = n_out + slot * snap + base
            for e in range(S * S):
                dst[so + e] = np.float32(0.0)
