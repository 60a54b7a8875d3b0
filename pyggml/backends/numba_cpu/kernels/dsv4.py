"""Kernels for pyggml/ops/dsv4.py (DSV4_HC_COMB, _PRE, _POST) and ops/lightning.py
(LIGHTNING_INDEXER). Sums are float64 as in the reference; tokens (or keys) are split over the
threads, so results do not depend on the thread count."""
from __future__ import annotations

import numba
import numpy as np

from ....quants import nb as qnb
from ..desc import DST
from ..desc import ERR_UNSUPPORTED
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import SRC3
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_row_size
from ..desc import t_type
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from ..intrinsics import u8_array
from . import kernel

_HC = 4


@numba.njit(nogil=True, cache=True)
def _at(desc, slot, i0, i1, i2):
    return ptr_of(t_addr(desc, slot) + i0 * t_nb(desc, slot, 0) + i1 * t_nb(desc, slot, 1) +
                  i2 * t_nb(desc, slot, 2), np.float32)


@kernel("DSV4_HC_COMB")
def dsv4_hc_comb(desc, ith, nth):
    eps = np.float64(param_f32(desc, 0))
    n_iter = param_i32(desc, 1)
    sc = np.float64(ptr_of(t_addr(desc, SRC1) + 2 * t_nb(desc, SRC1, 0), np.float32)[0])
    c = np.empty((_HC, _HC), dtype=np.float64)            # c[s, d]
    t0, t1 = row_range(t_ne(desc, SRC0, 1), ith, nth)
    for t in range(t0, t1):
        for s in range(_HC):
            mx = -np.inf
            for d in range(_HC):
                i = 2 * _HC + d + _HC * s
                c[s, d] = _at(desc, SRC0, i, t, 0)[0] * sc + _at(desc, SRC2, i, 0, 0)[0]
                mx = max(mx, c[s, d])
            tot = 0.0
            for d in range(_HC):
                c[s, d] = np.exp(c[s, d] - mx)
                tot += c[s, d]
            for d in range(_HC):
                c[s, d] = c[s, d] / tot + eps
        for it in range(2 * n_iter - 1):         # over s first, then (over d, over s) ...
            over_s = it % 2 == 0
            for a in range(_HC):
                tot = eps
                for b in range(_HC):
                    tot += c[b, a] if over_s else c[a, b]
                for b in range(_HC):
                    if over_s:
                        c[b, a] /= tot
                    else:
                        c[a, b] /= tot
        for s in range(_HC):
            for d in range(_HC):
                _at(desc, DST, d, s, t)[0] = np.float32(c[s, d])


@kernel("DSV4_HC_PRE")
def dsv4_hc_pre(desc, ith, nth):
    n_embd, hc = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    r0, r1 = row_range(t_ne(desc, SRC0, 2), ith, nth)
    for t in range(r0, r1):
        for i in range(n_embd):
            acc = 0.0
            for h in range(hc):
                acc += np.float64(_at(desc, SRC0, i, h, t)[0]) * _at(desc, SRC1, h, t, 0)[0]
            _at(desc, DST, i, t, 0)[0] = np.float32(acc)


@kernel("DSV4_HC_POST")
def dsv4_hc_post(desc, ith, nth):
    n_embd, hc = t_ne(desc, SRC0, 0), t_ne(desc, SRC1, 1)
    r0, r1 = row_range(t_ne(desc, SRC0, 1) * hc, ith, nth)
    for r in range(r0, r1):
        d, t = r % hc, r // hc
        p = np.float64(_at(desc, SRC2, d, t, 0)[0])
        for i in range(n_embd):
            acc = np.float64(_at(desc, SRC0, i, t, 0)[0]) * p
            for s in range(hc):
                acc += np.float64(_at(desc, SRC1, i, s, t)[0]) * _at(desc, SRC3, d, s, t)[0]
            _at(desc, DST, i, d, t)[0] = np.float32(acc)


@kernel("LIGHTNING_INDEXER")
def lightning_indexer(desc, ith, nth):
    """Keys split over the threads; each key row converted to F32 once per (stream, token)."""
    D, H, T, NS = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    kt, krs = t_type(desc, SRC1), t_row_size(desc, SRC1)
    nm = t_ne(desc, SRC3, 3)
    krow = np.empty(D, dtype=np.float32)
    j0, j1 = row_range(t_ne(desc, SRC1, 2), ith, nth)
    for s in range(NS):
        for j in range(j0, j1):
            ka = t_addr(desc, SRC1) + j * t_nb(desc, SRC1, 2) + s * t_nb(desc, SRC1, 3)
            if qnb.dequantize_row(kt, u8_array(ka, krs), krow, D) != 0:
                set_error(desc, ERR_UNSUPPORTED)
                return
            for t in range(T):
                score = 0.0
                for h in range(H):
                    q = f32_array(t_addr(desc, SRC0) + h * t_nb(desc, SRC0, 1) +
                                  t * t_nb(desc, SRC0, 2) + s * t_nb(desc, SRC0, 3), D)
                    qk = 0.0
                    for e in range(D):
                        qk += np.float64(q[e]) * krow[e]
                    if qk > 0.0:
                        w = ptr_of(t_addr(desc, SRC2) + h * t_nb(desc, SRC2, 0) +
                                   t * t_nb(desc, SRC2, 1) + s * t_nb(desc, SRC2, 3), np.float32)[0]
                        score += qk * w
                m = ptr_of(t_addr(desc, SRC3) + j * t_nb(desc, SRC3, 0) + t * t_nb(desc, SRC3, 1) +
                           (s % nm) * t_nb(desc, SRC3, 3), np.uint16)[0]
                ptr_of(t_addr(desc, DST) + j * t_nb(desc, DST, 0) + t * t_nb(desc, DST, 1) +
                       s * t_nb(desc, DST, 3), np.float32)[0] = np.float32(score +
                                                                           qnb.f16_to_f32(m))
