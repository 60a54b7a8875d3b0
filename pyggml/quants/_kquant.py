"""What the K-quant and IQ4 modules share: quantizers that run ggml's scale searches in
Numba (pyggml.quants.kq_nb, compiled once and cached), with and without an importance
matrix, and the NumPy helpers their dequantizers use.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..types import TRAITS
from ._common import as_f32
from ._common import as_u8
from ._common import f16_at
from .iq4_values import KVALUES_IQ4NL  # noqa: F401  (re-exported for iq4_nl/iq4_xs)

_NO_QW = np.zeros(0, np.float32)


def quantizers(t):
    """(from_float, from_float_imatrix) of type t.

    from_float_imatrix(x, imatrix=None) is ggml_quantize_chunk: kq_nb.quantize_blocks (the
    reference quantizer when there are no weights). from_float is ggml's traits
    from_float_ref, the row quantizer the CPU backend uses for cpy/set_rows: kq_nb.quantize_row
    (the same, except IQ4_NL's quantize_row_iq4_nl_ref, which skips the scale search)."""
    tr = TRAITS[t]

    def run(x2, qw):
        from . import kq_nb
        nrow, n_per_row = x2.shape
        dst = np.zeros(nrow * tr.row_size(n_per_row), np.uint8)
        kq_nb.quantize_blocks(int(t), np.ascontiguousarray(x2).reshape(-1), dst, nrow, n_per_row,
                              qw, 7)
        return dst

    def from_float_imatrix(x, imatrix=None) -> np.ndarray:
        x = np.array(np.asarray(x, np.float32).reshape(-1))   # private copy: one signature
        if imatrix is None:
            return run(x.reshape(1, -1), _NO_QW) if x.size else np.zeros(0, np.uint8)
        return run(*imatrix_rows(tr, x, imatrix))

    def from_float(x) -> np.ndarray:
        from . import kq_nb
        x = np.array(as_f32(x))
        dst = np.zeros(tr.row_size(x.size), np.uint8)
        kq_nb.quantize_row(int(t), x, dst, x.size)
        return dst

    return from_float, from_float_imatrix


def imatrix_rows(tr, x: np.ndarray, imatrix):
    """(rows [nrow, len(imatrix)] of x, float32 weights): ggml_quantize_chunk's shapes."""
    qw = np.array(as_f32(imatrix))
    if qw.size == 0 or x.size % qw.size or qw.size % tr.blck_size:
        raise ShapeError(f"quantize {tr.tname}: importance matrix of {qw.size} values does "
                         f"not fit rows of {x.size} values (blocks of {tr.blck_size})")
    return x.reshape(-1, qw.size), qw


def blocks(raw, n: int, t) -> np.ndarray:
    """raw bytes -> [nb, type_size] uint8 blocks of type t holding n values."""
    tr = TRAITS[t]
    return as_u8(raw)[: n // tr.blck_size * tr.type_size].reshape(-1, tr.type_size)


def f16s(b: np.ndarray, off: int) -> np.ndarray:
    return f16_at(b, off)[:, None]


def crumbs(qs: np.ndarray) -> np.ndarray:
    """[nb, 64] bytes of 2-bit quants -> [nb, 256] values in ggml's order (Q2_K, Q3_K):
    byte l of 32-byte chunk c holds values 128c + l + 32*s at bits 2s."""
    q = qs.reshape(-1, 2, 1, 32)
    return ((q >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3).reshape(-1, 256)


def scale_min_k4(s: np.ndarray):
    """12 scale bytes [nb, 12] -> (sc, m) [nb, 8] 6-bit ints (get_scale_min_k4)."""
    s = s.astype(np.int32)
    sc = np.empty((s.shape[0], 8), np.int32)
    m = np.empty_like(sc)
    sc[:, :4] = s[:, :4] & 63
    m[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m
