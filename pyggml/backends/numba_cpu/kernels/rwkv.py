"""Kernels for pyggml/ops/rwkv.py (RWKV_WKV6, GATED_LINEAR_ATTN, RWKV_WKV7) and
ops/delta_net.py (GATED_DELTA_NET): matrix-state recurrences, one (head, sequence) state at a
time in a float64 scratch matrix, heads split over the threads as ggml does. Sums are float64 as
in the reference, so results do not depend on the thread count."""
from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import SRC3
from ..desc import SRC4
from ..desc import SRC5
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_nelements
from ..intrinsics import f32_array
from . import kernel
from . import row_kernel

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


# --- RWKV_WKV6, GATED_LINEAR_ATTN, RWKV_WKV7: one driver, one token step per op ---------------
# Sources: the op's packed F32 inputs x (src0..), then the state (the source after them). The
# driver walks this thread's heads and every sequence, loads the (head, sequence) state into
# st, calls the op's step for each of the sequence's tokens (o = offset of the token's head),
# and stores the state after the outputs. Each step is specialised into its own kernel.

def _wkv6_step(st, x, o, h, S, scale, dst):
    k, v, r, tf, td = x[0], x[1], x[2], x[3], x[4]
    for j in range(S):
        acc = 0.0
        for i in range(S):
            kv = np.float64(k[o + i]) * v[o + j]
            acc += r[o + i] * (kv * tf[h * S + i] + st[i, j])
            st[i, j] = st[i, j] * td[o + i] + kv
        dst[o + j] = acc


def _gla_step(st, x, o, h, S, scale, dst):
    k, v, q, g = x[0], x[1], x[2], x[3]
    for j in range(S):
        acc = 0.0
        for i in range(S):
            st[i, j] = st[i, j] * g[o + i] + np.float64(k[o + i]) * v[o + j]
            acc += q[o + i] * scale * st[i, j]
        dst[o + j] = acc


def _wkv7_step(st, x, o, h, S, scale, dst):
    r, w, k, v, a, b = x[0], x[1], x[2], x[3], x[4], x[5]
    for i in range(S):
        sa = 0.0
        for j in range(S):
            sa += a[o + j] * st[i, j]
        acc = 0.0
        for j in range(S):
            st[i, j] = st[i, j] * w[o + j] + np.float64(v[o + i]) * k[o + j] + sa * b[o + j]
            acc += st[i, j] * r[o + j]
        dst[o + i] = acc


# op -> (number of inputs before the state, step); the list index is the kernel's code
_RECURRENCES = [("RWKV_WKV6", 5, _wkv6_step), ("GATED_LINEAR_ATTN", 4, _gla_step),
                ("RWKV_WKV7", 6, _wkv7_step)]


@_jit
def _flat(desc, slot):
    return f32_array(t_addr(desc, slot), t_nelements(desc, slot))


def _recurrence(desc, ith, nth, op):
    raise NotImplementedError("only callable from jitted kernels")


@overload(_recurrence, prefer_literal=True, jit_options=dict(nogil=True))
def _ov_recurrence(desc, ith, nth, op):
    if not isinstance(op, types.IntegerLiteral):
        return None
    _, n_in, step_py = _RECURRENCES[op.literal_value]
    step = numba.njit(nogil=True)(step_py)
    state = SRC0 + n_in

    def impl(desc, ith, nth, op):
        S, H, T = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
        n_seqs = t_ne(desc, state, 1)
        C, L = S * H, T // n_seqs
        scale = np.float64(param_f32(desc, 0))          # GATED_LINEAR_ATTN's only parameter
        x = (_flat(desc, SRC0), _flat(desc, SRC1), _flat(desc, SRC2), _flat(desc, SRC3),
             _flat(desc, SRC4), _flat(desc, SRC5))      # the inputs (and what follows them)
        s_in = _flat(desc, state)
        dst = f32_array(t_addr(desc, DST), C * (T + S * n_seqs))
        st = np.empty((S, S), dtype=np.float64)
        h0, h1 = row_range(H, ith, nth)
        for h in range(h0, h1):
            for sq in range(n_seqs):
                base = sq * C * S + h * S * S
                _load(st, s_in, base)
                for t in range(sq * L, (sq + 1) * L):
                    step(st, x, t * C + h * S, h, S, scale, dst)
                _store(dst, C * T + base, st)
    return impl


for _code, (_op, _n_in, _step) in enumerate(_RECURRENCES):
    row_kernel(_op, _recurrence, _code, name=_op.lower())


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
