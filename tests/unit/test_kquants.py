"""K-quants (Q2_K..Q6_K, Q8_K) and IQ4_NL/IQ4_XS against real ggml, bit for bit.

ggml_quantize_chunk with and without an importance matrix (also Q4_0..Q5_1's importance-matrix
quantizers, quants/legacy_nb.py; Q8_K: quantize_row_q8_K_ref,
which ggml_quantize_chunk does not take), ggml's to_float for the dequantizers (NumPy and
Numba), on the input families of test_quants.py.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from test_quants import INPUTS
from test_quants import RealGgml
from test_quants import assert_random_bytes_dequantize_as_ggml
from test_quants import assert_same_bits
from test_quants import assert_same_bytes
from test_quants import make_input
from test_quants import real_ggml

from pyggml import quants as Q
from pyggml.errors import ShapeError
from pyggml.types import TRAITS
from pyggml.types import GGMLType

T = GGMLType
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]
ALL = K_TYPES + [T.Q8_K]
LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]          # 32-value types with an imatrix quantizer
N = 256 * 9
_ROW = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class Ggml(RealGgml):
    """test_quants' driver plus the K-quants' calls (Q8_K's row functions by name)."""

    def _addr(self, name):
        return ctypes.cast(self.g._find(name), ctypes.c_void_p).value

    def quantize(self, t, x, imatrix=None) -> bytes:
        if t == T.Q8_K:
            return self._row(self._addr("quantize_row_q8_K_ref"), t, np.reshape(x, -1))
        return self.lib.quantize_chunk(t, x, imatrix)

    def dequantize(self, t, raw: bytes, n: int) -> np.ndarray:
        if t == T.Q8_K:  # no to_float in the traits; the function exists
            src = np.frombuffer(raw, np.uint8).copy()
            out = np.zeros(n, np.float32)
            _ROW(self._addr("dequantize_row_q8_K"))(src.ctypes.data, out.ctypes.data, n)
            return out
        return self.lib.dequantize(t, raw, n)


@pytest.fixture(scope="module")
def gg() -> Ggml:
    return real_ggml(Ggml)


def _imatrix(n: int) -> np.ndarray:
    return (np.abs(make_input("normal", n, seed=5)) + np.float32(0.1)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("t", ALL, ids=str)
def test_quantize_and_dequantize_match_ggml(gg, t, name):
    x = make_input(name, N)
    ref = gg.quantize(t, x)
    assert_same_bytes(Q.quantize(t, x), ref, t, f"{t} {name}")
    want = gg.dequantize(t, ref, N)
    assert_same_bits(Q.dequantize(t, ref, N, use_numba=False), want, f"numpy {t} {name}")
    assert_same_bits(Q.dequantize(t, ref, N, use_numba=True), want, f"numba {t} {name}")


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("t", K_TYPES + LEGACY, ids=str)
def test_quantize_with_imatrix_matches_ggml(gg, t, name):
    rows = make_input(name, N).reshape(3, -1)
    qw = _imatrix(rows.shape[1])
    ref = gg.quantize(t, rows, qw)
    assert_same_bytes(Q.quantize(t, rows, imatrix=qw), ref, t, f"{t} {name} imatrix")
    if name == "normal":  # the weights do change the result
        assert Q.quantize(t, rows, imatrix=qw) != Q.quantize(t, rows)


@pytest.mark.parametrize("t", ALL, ids=str)
def test_dequantize_random_bytes_matches_ggml(gg, t):
    assert_random_bytes_dequantize_as_ggml(gg, t, 256 * 512)


@pytest.mark.parametrize("t", K_TYPES + LEGACY, ids=str)
def test_many_rows(gg, t):
    """Several rows in one call (the importance matrix applies per row)."""
    x = make_input("per_block_scale", 256 * 64, seed=9).reshape(16, -1)
    assert_same_bytes(Q.quantize(t, x), gg.quantize(t, x), t, f"{t} rows")
    qw = _imatrix(x.shape[1])
    assert_same_bytes(Q.quantize(t, x, imatrix=qw), gg.quantize(t, x, qw), t, f"{t} rows qw")


@pytest.mark.parametrize("t", K_TYPES, ids=str)
def test_numba_dispatch_rows(t):
    from pyggml.quants import kq_nb
    from pyggml.quants import nb
    x = make_input("normal", 512)
    raw = np.frombuffer(Q.quantize(t, x), np.uint8).copy()
    out = np.zeros(512, np.float32)
    assert nb.dequantize_row(int(t), raw, out, 512) == 0
    assert_same_bits(out, Q.dequantize(t, raw, 512, use_numba=False), f"{t} dispatch")
    dst = np.zeros_like(raw)
    assert kq_nb.quantize_row(int(t), x, dst, 512) == 0
    if t != T.IQ4_NL:   # ggml-cpu's IQ4_NL from_float is the search-less reference
        assert dst.tobytes() == raw.tobytes()


def test_layout_sizes():
    sizes = {T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210, T.Q8_K: 292,
             T.IQ4_NL: 18, T.IQ4_XS: 136}
    for t, size in sizes.items():
        assert TRAITS[t].type_size == size
        assert TRAITS[t].blck_size == (32 if t == T.IQ4_NL else 256)
    assert [int(t) for t in sizes] == [10, 11, 12, 13, 14, 15, 20, 23]


def test_errors():
    with pytest.raises(ShapeError, match="q4_K.*300"):
        Q.quantize(T.Q4_K, np.zeros(300, np.float32))
    with pytest.raises(ShapeError, match="importance matrix"):
        Q.quantize(T.Q4_K, np.zeros(512, np.float32), imatrix=np.ones(100, np.float32))
    with pytest.raises(ShapeError, match="importance matrix"):
        Q.quantize(T.Q4_K, np.zeros(768, np.float32), imatrix=np.ones(512, np.float32))
