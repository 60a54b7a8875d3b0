"""Importance-matrix quantizers of the 32-value types Q4_0, Q4_1, Q5_0, Q5_1 (ggml-quants.c's
quantize_row_q4_0_impl .. quantize_row_q5_1_impl), bit-exact with ggml, in Numba.

Without an importance matrix ggml uses the plain reference quantizers (q4_0.py ..); with one,
each row gets sigma2 = mean(x^2) and per value the weight qw[j] * sqrt(sigma2 + x[j]^2), and
each block the K-quants' scale searches (kq_nb): make_qx_quants (symmetric Q4_0/Q5_0, nmax 8
and 16) or make_qkx3_quants (Q4_1/Q5_1 with a min, 15 and 31 levels).

    quantize_imatrix(t, x [nrow, n_per_row] float32, qw [n_per_row] float32) -> uint8 bytes
"""
from __future__ import annotations

import numba
import numpy as np

from ..types import TRAITS
from ..types import GGMLType
from .kq_nb import _sqrtf
from .kq_nb import make_qkx_quants
from .kq_nb import make_qx_quants
from .nb import _store_f16

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")

QK = 32
_F0 = np.float32(0.0)


@_jit
def _quantize(src, dst, nrow, n_per_row, qw, nmax, affine, five, bs):
    L = np.zeros(QK, np.int64)
    Laux = np.zeros(QK, np.int64)
    w = np.zeros(QK, np.float32)
    nb = n_per_row // QK
    for r in range(nrow):
        xo = r * n_per_row
        sum_x2 = _F0
        for j in range(n_per_row):
            sum_x2 += src[xo + j] * src[xo + j]
        sigma2 = sum_x2 / np.float32(n_per_row)
        for ib in range(nb):
            o = xo + QK * ib
            for j in range(QK):
                w[j] = qw[QK * ib + j] * _sqrtf(sigma2 + src[o + j] * src[o + j])
            y = (r * nb + ib) * bs
            if affine:
                d, the_min = make_qkx_quants(QK, nmax, src, o, w, L, 0, Laux, np.float32(-0.9),
                                             np.float32(0.05), 36, False, True)
                _store_f16(dst, y, d)
                _store_f16(dst, y + 2, -the_min)
            else:
                d = make_qx_quants(QK, nmax, src, o, L, 0, 1, w, 0, True)
                _store_f16(dst, y, d)
            qs = y + (4 if affine else 2) + (4 if five else 0)
            qh = 0
            for j in range(16):
                x0, x1 = L[j], L[j + 16]
                dst[qs + j] = np.uint8((x0 & 0x0F) | ((x1 & 0x0F) << 4))
                qh |= ((x0 & 0x10) >> 4) << j
                qh |= ((x1 & 0x10) >> 4) << (j + 16)
            if five:
                h = y + (4 if affine else 2)
                for k in range(4):
                    dst[h + k] = np.uint8((qh >> (8 * k)) & 0xFF)


# type: (nmax, has a min, has the 5th bit)
_PARAMS = {GGMLType.Q4_0: (8, False, False), GGMLType.Q4_1: (15, True, False),
           GGMLType.Q5_0: (16, False, True), GGMLType.Q5_1: (31, True, True)}
TYPES = tuple(_PARAMS)


def quantize_imatrix(t, x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """Rows x [nrow, n_per_row] of type t (one of TYPES) with weights qw [n_per_row]."""
    nmax, affine, five = _PARAMS[GGMLType(t)]
    nrow, n_per_row = x.shape
    tr = TRAITS[GGMLType(t)]
    dst = np.zeros(nrow * tr.row_size(n_per_row), np.uint8)
    _quantize(np.ascontiguousarray(x, np.float32).reshape(-1), dst, nrow, n_per_row,
              np.ascontiguousarray(qw, np.float32), nmax, affine, five, tr.type_size)
    return dst
