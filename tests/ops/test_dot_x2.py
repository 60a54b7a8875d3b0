"""kernels/simd.py's multi-row dots against the per-row 256-bit dots they replace, on raw rows:
the AVX-512 two-block dots (Q4_1, Q4_0; Q8_0 with VNNI) and the AVX2 twin's passes of 4 rows
(Q4_1, Q4_0 two blocks per step; Q8_0 one, sharing the scale work: bit for bit). Even and odd
block counts (the odd last block runs with its partner zeroed), row counts 1..8 (passes of 4,
2, 1), and activations whose padding holds garbage (NaN bytes) that must not reach a result.
The MUL_MAT cases in test_matmul.py check them against the reference through whole graphs."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from pyggml.backends.numba_cpu.kernels import simd

needs_avx512 = pytest.mark.skipif(not simd.HAVE_AVX512, reason="AVX-512 host only")

_BLOCK = {"q4_1": 20, "q8_0": 34, "q4_0": 18}


def _pad(n):
    return (n + 63) // 64 * 64


def _runner(fn):
    @numba.njit
    def run(m, nb, x, xs, yq, yd, ys, out):
        fn(m, nb, x, xs, yq, yd, ys, out)
    return run


def _case(rng, fmt, m, nb):
    """m rows of nb raw blocks, and a Q8 split activation row with 0xFF in its padding."""
    w = rng.integers(0, 256, size=(m, nb, _BLOCK[fmt]), dtype=np.uint8)
    nh = 2 if fmt == "q4_1" else 1                       # (d, m) or d halves per block
    h = (rng.standard_normal((m, nb, nh)) * 0.01).astype(np.float16)
    w[..., :2 * nh] = h.view(np.uint8).reshape(m, nb, 2 * nh)
    k = 32 * nb
    act = np.full(_pad(k) + 2 * _pad(4 * nb), 0xFF, np.uint8)
    q = rng.integers(-127, 128, size=k, dtype=np.int8)
    d = (rng.random(nb) * 0.01).astype(np.float32)
    s = (d * q.reshape(nb, 32).sum(1)).astype(np.float32)
    act[:k] = q.view(np.uint8)
    act[_pad(k):_pad(k) + 4 * nb] = d.view(np.uint8)
    act[_pad(k) + _pad(4 * nb):_pad(k) + _pad(4 * nb) + 4 * nb] = s.view(np.uint8)
    return np.ascontiguousarray(w), act


def _both(old, new, fmt, m, nb, w, act):
    """(old's dots, new's dots) of the m rows w with the activation row act."""
    a = act.ctypes.data
    k = 32 * nb
    args = (m, nb, w.ctypes.data, nb * _BLOCK[fmt], a, a + _pad(k), a + _pad(k) + _pad(4 * nb))
    want, got = np.zeros(m, np.float32), np.zeros(m, np.float32)
    old(*args, want.ctypes.data)
    new(*args, got.ctypes.data)
    return want, got


@needs_avx512
@pytest.mark.parametrize("fmt", ["q4_1", "q8_0", "q4_0"])
def test_x2_dot_matches_256_bit(fmt):
    if fmt == "q8_0" and not simd.HAVE_VNNI:
        pytest.skip("the two-block Q8_0 dot needs VNNI")
    new = _runner(getattr(simd, f"dot_{fmt}"))
    old = _runner(simd._intrinsic_n(f"test_dot_{fmt}_256", 8, simd._q_dot_body(fmt)))
    rng = np.random.default_rng(0)
    for nb in (1, 2, 3, 18, 19):
        for m in (1, 2, 5, 7, 8):
            w, act = _case(rng, fmt, m, nb)
            want, got = _both(old, new, fmt, m, nb, w, act)
            assert np.isfinite(got).all(), (fmt, nb, m, got)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-5, (fmt, nb, m, err)


@needs_avx512
@pytest.mark.parametrize("fmt", ["q4_1", "q4_0"])
def test_x2_4bit_dot_without_vnni(fmt):
    """The AVX-512 machines without VNNI (pmaddubsw + pmaddwd): the high nibbles are shifted
    down there (left in place, 16 x their value, pmaddubsw's pair sums would saturate)."""
    want_fn = _runner(simd._intrinsic_n(f"test_dot_{fmt}_256b", 8, simd._q_dot_body(fmt)))
    got_fn = _runner(simd._intrinsic_n(f"test_dot_{fmt}_x2_novnni", 8,
                                       simd._x2_body(fmt, vnni=False)))
    rng = np.random.default_rng(1)
    for nb, m in ((1, 1), (18, 7), (19, 8)):
        w, act = _case(rng, fmt, m, nb)
        w[..., (4 if fmt == "q4_1" else 2):] = 0xFF     # every nibble 15: the largest sums
        want, got = _both(want_fn, got_fn, fmt, m, nb, w, act)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-5, (fmt, nb, m, err)


@pytest.mark.skipif(not simd.HAVE_AVX2, reason="AVX2 host only")
@pytest.mark.parametrize("fmt", ["q4_1", "q4_0", "q8_0"])
def test_avx2_multirow_dot_matches_per_row(fmt):
    """The AVX2 twin's dot (built here from its body: plain AVX2 code, it runs on an AVX-512
    host too) against the per-row 256-bit dot: Q8_0 bit for bit, Q4_* within rounding (their
    blocks' products summed in 4 lanes, not 8), for rows 1..8 and 1, 2, 3, 18, 19 blocks."""
    new = _runner(simd._intrinsic_n(f"test_dot_{fmt}_avx2_rows", 8, simd.avx2_q_body(fmt)))
    old = _runner(simd._intrinsic_n(f"test_dot_{fmt}_256c", 8, simd._q_dot_body(fmt)))
    rng = np.random.default_rng(2)
    for nb in (1, 2, 3, 18, 19):
        for m in range(1, 9):
            w, act = _case(rng, fmt, m, nb)
            if m == 8:                  # the largest nibbles / quants: no 16-bit sum saturates
                w[..., (4 if fmt == "q4_1" else 2):] = 0xFF if fmt != "q8_0" else 0x81
            want, got = _both(old, new, fmt, m, nb, w, act)
            assert np.isfinite(got).all(), (fmt, nb, m, got)
            if fmt == "q8_0":
                assert (got.view(np.uint32) == want.view(np.uint32)).all(), (nb, m, got, want)
            else:
                err = np.abs(got - want) / np.abs(want).max()
                assert err.max() < 1e-5, (fmt, nb, m, err)
