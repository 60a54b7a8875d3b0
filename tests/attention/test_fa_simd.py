"""The flash-attention SIMD micro-kernels (backends/numba_cpu/kernels/fa_simd.py) against NumPy:
qk (q rows · K rows) and pv (accumulators += p · V rows) for every row type they read in
place, every row/key count, rows at arbitrary strides, the VNNI integer Q4_0 dot and its
twin; and the q rows those integer dots take (ggml-cpu's quantization)."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from pyggml import quants
from pyggml.backends.numba_cpu.kernels import fa_simd
from pyggml.backends.numba_cpu.kernels import simd
from pyggml.types import GGMLType as T

N = 128
KINDS = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}


def _rows(rng, kind, n_rows, gap=40, n=N):
    """n_rows rows of n values of type kind, `gap` junk bytes between rows; (raw bytes, row
    stride, the rows' exact values as float32)."""
    t = KINDS[kind]
    x = rng.uniform(-1, 1, (n_rows, n)).astype(np.float32)
    raw = [np.frombuffer(quants.quantize(t, r), np.uint8) for r in x]
    exact = np.stack([quants.dequantize(t, r.tobytes(), n) for r in raw]).astype(np.float32)
    stride = raw[0].size + gap
    buf = np.full(stride * n_rows, 0x7F, np.uint8)
    for i, r in enumerate(raw):
        buf[i * stride:i * stride + r.size] = r
    return buf, stride, exact


def _fns(kind):
    g = lambda name: getattr(fa_simd, f"{name}_{kind}")          # noqa: E731
    return g("qk_4x4"), g("qk_1x4"), g("pv_4x4"), g("pv_1x4"), g("pv_1x1")


@pytest.mark.parametrize("kind", list(KINDS))
def test_qk_pv_match_numpy(rng, kind):
    qk4, qk1, pv4, pv14, pv11 = _fns(kind)

    @numba.njit
    def run(q, kbuf, ks, out, acc, p, pf):
        a = kbuf.ctypes.data
        k0, k1, k2, k3 = a, a + ks, a + 2 * ks, a + 3 * ks
        o = out.ctypes.data
        qk4(N, q.ctypes.data, 2 * N * 4, k0, k1, k2, k3, o, pf)          # rows 0, 2, 4, 6
        qk1(N, q.ctypes.data + N * 4, 0, k0, k1, k2, k3, o + 64, pf)     # row 1
        c, pp = acc.ctypes.data, p.ctypes.data
        pv4(N, c, N * 4, pp, 16, pf, k0, k1, k2, k3)
        pv14(N, c + 4 * N * 4, 0, pp + 64, 0, pf, k0, k1, k2, k3)
        pv11(N, c + 5 * N * 4, 0, pp + 80, 0, pf, k2)

    kbuf, ks, kx = _rows(rng, kind, 4)
    q = rng.uniform(-1, 1, (8, N)).astype(np.float32)
    out = np.zeros(20, np.float32)
    acc = rng.uniform(-1, 1, (6, N)).astype(np.float32)
    p = rng.uniform(0, 1, 24).astype(np.float32)
    acc0 = acc.copy()
    run(q, kbuf, ks, out, acc, p, 4 * ks)
    dots = q.astype(np.float64) @ kx.T.astype(np.float64)
    np.testing.assert_allclose(out[:16], dots[[0, 2, 4, 6]].ravel(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(out[16:], dots[1], rtol=0, atol=2e-5)
    want = acc0.astype(np.float64)
    want[:4] += p[:16].reshape(4, 4) @ kx
    want[4] += p[16:20] @ kx
    want[5] += p[20] * kx[2]
    np.testing.assert_allclose(acc, want, rtol=0, atol=2e-5)


_I8_DOTS = {"vnni": (fa_simd.qk_4x4_q4_0_i8, fa_simd.qk_1x4_q4_0_i8),
            "hadd": (fa_simd.qk_4x4_q4_0_hadd, fa_simd.qk_1x4_q4_0_hadd)}


def _q8_dots(qk4, qk1, kbuf, ks, qi8, qd, nb):
    """A 4x4 (rows 0..3) and a 1x4 (row 3) 8-bit Q4_0 dot of q rows qi8 (block scales qd)
    with the 4 K rows at kbuf, ks bytes apart: their 16 + 4 outputs."""
    n = nb * 32
    qs = (qd * qi8.reshape(4, nb, 32).astype(np.int32).sum(-1)).astype(np.float32)
    qdx = np.concatenate([np.repeat(qd, 8, axis=1), -np.repeat(qs, 8, axis=1)], axis=1)
    qdx = np.ascontiguousarray(qdx, dtype=np.float32)
    out = np.zeros(20, np.float32)

    @numba.njit
    def run(qi8, qdx, kbuf, ks, out):
        a = kbuf.ctypes.data
        qk4(nb, qi8.ctypes.data, n, qdx.ctypes.data, a, a + ks, a + 2 * ks, a + 3 * ks,
            out.ctypes.data, 0)
        qk1(nb, qi8.ctypes.data + 3 * n, 0, qdx.ctypes.data + 3 * nb * 64, a, a + ks,
            a + 2 * ks, a + 3 * ks, out.ctypes.data + 64, 0)
    run(qi8, qdx, kbuf, ks, out)
    return out


@pytest.mark.parametrize("impl", list(_I8_DOTS))
@pytest.mark.parametrize("n", [32, 96, 128])
def test_q4_0_integer_dots(rng, n, impl):
    """Q4_0 K rows against 8-bit q blocks: the dot of the dequantized K with the
    dequantized q (the kernel's PREC_DEFAULT path), exact up to float rounding; VNNI and
    its twin without it (pmaddubsw and phaddw on AVX2, portable LLVM otherwise)."""
    if impl == "vnni" and not simd.HAVE_VNNI:
        pytest.skip("needs AVX512-VNNI (qk_*_q4_0_i8 is the hadd twin here)")
    kbuf, ks, kx = _rows(rng, "q4_0", 4, gap=0, n=n)
    nb = n // 32
    qi8 = rng.integers(-127, 128, (4, n)).astype(np.int8)
    qd = rng.uniform(0.001, 0.01, (4, nb)).astype(np.float32)
    out = _q8_dots(*_I8_DOTS[impl], kbuf, ks, qi8, qd, nb)
    qx = (qi8.reshape(4, nb, 32) * qd[:, :, None]).reshape(4, n).astype(np.float64)
    dots = qx @ kx.T.astype(np.float64)
    np.testing.assert_allclose(out[:16], dots.ravel(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[16:], dots[3], rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", list(_I8_DOTS))
def test_q4_0_integer_dots_extremes_do_not_overflow(impl):
    """The largest sums the integer lanes can hold: every K code 15 (and 0) against q all
    127 or all -128, the blocks' 32 products summed in int16 / int32 lanes (see the bound in
    fa_simd); a wrapped or saturated lane would be off by thousands of units."""
    if impl == "vnni" and not simd.HAVE_VNNI:
        pytest.skip("needs AVX512-VNNI (qk_*_q4_0_i8 is the hadd twin here)")
    nb = 4
    blk = np.zeros((4, nb, 18), np.uint8)
    blk[:, :, :2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    blk[0, :, 2:] = 0xFF                                 # codes 15: +7 after the offset
    blk[1, :, 2:] = 0x00                                 # codes 0: -8
    blk[2, :, 2:] = 0x0F                                 # low nibbles 15, high 0
    blk[3, :, 2:] = 0xF0
    kx = np.stack([quants.dequantize(T.Q4_0, r.tobytes(), nb * 32) for r in blk]).astype(np.float64)
    qi8 = np.empty((4, nb * 32), np.int8)
    qi8[0], qi8[1] = 127, -128
    qi8[2, ::2], qi8[2, 1::2] = 127, -128
    qi8[3] = np.where(np.arange(nb * 32) % 32 < 16, -128, 127)
    qd = np.ones((4, nb), np.float32)
    out = _q8_dots(*_I8_DOTS[impl], blk.ravel(), 18 * nb, qi8, qd, nb)
    dots = qi8.astype(np.float64) @ kx.T
    assert np.abs(dots).max() >= 128 * 8 * 32 * nb
    np.testing.assert_array_equal(out[:16], dots.ravel())
    np.testing.assert_array_equal(out[16:], dots[3])


def test_qk_key_passes_are_bitwise_one_pass(rng):
    """A 4x4 qk in passes of fewer keys (AVX2: 16 accumulators do not fit its registers)
    gives every dot bitwise as one pass over all 4 keys: each dot's products and their
    order are the same. Both layouts are built here whatever this CPU's default is."""
    nk = 4
    kind = "f16"

    def build(per_pass):
        name = f"pyggml_test_qk_{kind}_passes{per_pass}"
        return fa_simd._intrinsic_n(name, 5 + nk, fa_simd._qk_body(4, nk, kind, per_pass))

    outs = []
    kbuf, ks, _ = _rows(rng, kind, 4)
    q = rng.uniform(-1, 1, (4, N)).astype(np.float32)
    for per_pass in (2, 4):
        qk = build(per_pass)
        out = np.zeros(16, np.float32)

        @numba.njit
        def run(q, kbuf, ks, out):
            a = kbuf.ctypes.data
            qk(N, q.ctypes.data, N * 4, a, a + ks, a + 2 * ks, a + 3 * ks, out.ctypes.data, 0)
        run(q, kbuf, ks, out)
        outs.append(out)
    assert np.abs(outs[0]).max() > 0
    for o in outs[1:]:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))


def test_exp_block_is_vexp_and_block_max_is_max(rng):
    """The softmax block helpers (kernels/fa_dots.exp_block, fa_tile._block_max): exp_block
    gives vexp's values (its steps as VL-lane IR: the same zeros, at most an ulp apart where
    the loop's fastmath reorders a step), their sum and the count of zeros (masked -inf,
    underflow); the integer max of floats is the float max, -inf and negatives included."""
    from pyggml.backends.numba_cpu.intrinsics import ptr_of
    from pyggml.backends.numba_cpu.kernels.fa_dots import exp_block
    from pyggml.backends.numba_cpu.kernels.fa_dots import vexp
    from pyggml.backends.numba_cpu.kernels.fa_tile import _block_max

    @numba.njit
    def run(x, mr, out):
        want = np.empty_like(x)
        for i in range(x.size):
            want[i] = vexp(x[i] - mr)
        exp_block(x.ctypes.data, x.size, mr, out.ctypes.data)
        return want

    @numba.njit
    def bmax(x, o, n):
        return _block_max(ptr_of(x.ctypes.data, np.int32), o, n)

    x = rng.uniform(-120, 10, 64).astype(np.float32)
    x[[3, 10, 40]] = -np.inf
    out = np.zeros(2, np.float32)
    y = x.copy()
    want = run(y, np.float32(4.5), out)
    assert np.array_equal(want == 0, y == 0)
    np.testing.assert_allclose(y, want, rtol=2.4e-7, atol=0)
    assert (want == 0).sum() >= 3 and out[1] == (want == 0).sum()
    assert abs(out[0] - want.sum(dtype=np.float64)) <= 1e-6 * want.sum()
    for v in (x, -np.abs(x), np.full(8, -np.inf, np.float32),
              np.array([-0.0, -1e-30, -np.inf, -3.0], np.float32)):
        v = np.ascontiguousarray(v, np.float32)
        assert bmax(v, 1, v.size - 1) == v[1:].max()
        assert bmax(v, 0, v.size) == v.max()


def test_q_rows_quantized_as_ggml_cpu(rng):
    """Flash attention's q rows for integer dots (fa_rows.quant_q_row) are ggml-cpu's from_float
    of K's vec_dot_type (quants.nb's AVX2 twins): Q8_0's codes and F16 scale (ties to even:
    values at exactly .5 steps included), and for Q8_1 its stored s."""
    from pyggml.backends.numba_cpu.kernels.fa_rows import quant_q_row
    from pyggml.quants import nb as qnb
    n, nb = 128, 4
    x = rng.uniform(-1, 1, n).astype(np.float32)
    # amax 127 (id = 1): 62.5 rounds to 62 (ties to even), not 63 (roundf's away from zero)
    x[32:64] = np.array([-127, -62.5, 0, 62.5, 127], np.float32)[np.arange(32) % 5]
    for q8_1, bs, co, quant in ((False, 34, 2, qnb.quantize_row_q8_0_cpu),
                                (True, 36, 4, qnb.quantize_row_q8_1_cpu)):
        qv = np.zeros(n, np.int8)
        qd = np.zeros(nb, np.float32)
        qs = np.zeros(nb, np.float32)
        quant_q_row(x, 0, qv, 0, qd, qs, 0, n, q8_1)
        blk = np.zeros(bs * nb, np.uint8)
        quant(x, blk, n)
        blk = blk.reshape(nb, bs)
        want_q = blk[:, co:].view(np.int8).ravel()
        want_d = blk[:, :2].copy().view(np.float16).ravel().astype(np.float32)
        assert np.array_equal(qv, want_q) and qv[32 + 3] == 62 and qv[32 + 1] == -62
        assert np.array_equal(qd, want_d)
        if q8_1:
            assert np.array_equal(qs, blk[:, 2:4].copy().view(np.float16).ravel().astype(np.float32))
        else:
            assert np.array_equal(qs, want_d * qv.reshape(nb, 32).astype(np.int32).sum(1))


@pytest.mark.parametrize("kind", list(KINDS) + ["q4_0_i8"])
def test_block_kernels_are_bitwise_the_4x4_kernels(rng, kind):
    """qk_blk / pv_blk_q4_0 (a block of key groups in one call: scores straight into the score
    rows, p.V with the accumulators in registers over the keys) give bitwise what the 4x4
    kernels give group after group: each dot and accumulator element takes the same
    products in the same order. 12 keys (3 groups), rows at a stride with junk between."""
    nk, nb = 12, N // 32
    base = "q4_0" if kind == "q4_0_i8" else kind
    kbuf, ks, _ = _rows(rng, base, nk)
    q = rng.uniform(-1, 1, (4, N)).astype(np.float32)
    qi8 = rng.integers(-127, 128, (4, N)).astype(np.int8)
    qdx = rng.uniform(-0.01, 0.01, (4, nb * 16)).astype(np.float32)
    p = rng.uniform(0.01, 1, (4, 16)).astype(np.float32)           # p rows 64 bytes apart
    acc0 = rng.uniform(-1, 1, (4, N)).astype(np.float32)
    if kind == "q4_0_i8":
        qk4, qkb = fa_simd.qk_4x4_q4_0_i8, fa_simd.qk_blk_q4_0_i8

        @numba.njit
        def qks(q, qi8, qdx, kbuf, out_g, out_b):
            a = kbuf.ctypes.data
            for g in range(nk // 4):
                k = a + 4 * g * ks
                qk4(nb, qi8.ctypes.data, N, qdx.ctypes.data, k, k + ks, k + 2 * ks, k + 3 * ks,
                    out_g.ctypes.data + 64 * g, 0)
            qkb(nb, qi8.ctypes.data, N, qdx.ctypes.data, a, ks, nk // 4, out_b.ctypes.data,
                16 * 4, 0)
    else:
        qk4, qkb = getattr(fa_simd, f"qk_4x4_{kind}"), getattr(fa_simd, f"qk_blk_{kind}")

        @numba.njit
        def qks(q, qi8, qdx, kbuf, out_g, out_b):
            a = kbuf.ctypes.data
            for g in range(nk // 4):
                k = a + 4 * g * ks
                qk4(N, q.ctypes.data, N * 4, k, k + ks, k + 2 * ks, k + 3 * ks,
                    out_g.ctypes.data + 64 * g, 0)
            qkb(N, q.ctypes.data, N * 4, a, ks, nk // 4, out_b.ctypes.data, 16 * 4, 0)
    out_g = np.zeros((nk // 4, 4, 4), np.float32)       # [group][row][key]
    out_b = np.zeros((4, 16), np.float32)               # [row][key], 16-key row stride
    qks(q, qi8, qdx, kbuf, out_g, out_b)
    want = out_g.transpose(1, 0, 2).reshape(4, nk)
    assert np.abs(want).max() > 0
    assert np.array_equal(out_b[:, :nk].view(np.uint32), want.view(np.uint32))
    if kind != "q4_0":
        return
    pv4, pvb = fa_simd.pv_4x4_q4_0, fa_simd.pv_blk_q4_0

    @numba.njit
    def pvs(kbuf, p, acc_g, acc_b):
        a, pp = kbuf.ctypes.data, p.ctypes.data
        for g in range(nk // 4):
            k = a + 4 * g * ks
            pv4(N, acc_g.ctypes.data, N * 4, pp + 16 * g, 64, 0, k, k + ks, k + 2 * ks, k + 3 * ks)
        pvb(N, acc_b.ctypes.data, N * 4, pp, 64, 4 * ks, a, ks, nk)
    acc_g, acc_b = acc0.copy(), acc0.copy()
    pvs(kbuf, p, acc_g, acc_b)
    assert not np.array_equal(acc_g, acc0)
    assert np.array_equal(acc_b.view(np.uint32), acc_g.view(np.uint32))


def test_exp_rows_and_max_rows_are_the_per_row_helpers(rng):
    """exp_rows (a tile's rows in one call) is exp_block row by row, bitwise, with each row's
    sum and zero count; max_rows is _block_max row by row (-inf, negatives, a NaN row)."""
    from pyggml.backends.numba_cpu.intrinsics import ptr_of
    from pyggml.backends.numba_cpu.kernels.fa_dots import exp_block
    from pyggml.backends.numba_cpu.kernels.fa_dots import exp_rows
    from pyggml.backends.numba_cpu.kernels.fa_dots import max_rows
    from pyggml.backends.numba_cpu.kernels.fa_tile import _block_max
    nr, n, w = 5, 32, 40                    # 5 rows of 32 scores, 40 floats apart

    @numba.njit
    def run(x, y, mrs, out1, out2, bm1, bm2):
        for r in range(nr):
            bm1[r] = _block_max(ptr_of(x.ctypes.data, np.int32), r * w, n)
            exp_block(x.ctypes.data + r * w * 4, n, mrs[r], out1.ctypes.data + r * 8)
        max_rows(y.ctypes.data, n, nr, w * 4, bm2.ctypes.data)
        exp_rows(y.ctypes.data, n, nr, w * 4, mrs.ctypes.data, out2.ctypes.data)

    x = rng.uniform(-120, 10, (nr, w)).astype(np.float32)
    x[0, [3, 10, 31]] = -np.inf
    x[1, :] = -rng.uniform(1, 2, w).astype(np.float32)
    x[2, 7] = np.nan
    x[3, :n] = -np.inf
    y = x.copy()
    mrs = np.array([4.5, -1.0, 3.0, 0.0, 9.5], np.float32)
    out1, out2 = np.zeros(2 * nr, np.float32), np.zeros(2 * nr, np.float32)
    bm1, bm2 = np.zeros(nr, np.float32), np.zeros(nr, np.float32)
    y_max = y.copy()
    run(x, y, mrs, out1, out2, bm1, bm2)
    assert np.array_equal(bm1.view(np.uint32), bm2.view(np.uint32))
    assert bm2[3] == -np.inf and np.isnan(bm2[2]) and bm2[1] == y_max[1, :n].max()
    assert np.array_equal(x.view(np.uint32), y.view(np.uint32))
    assert np.array_equal(out1.view(np.uint32), out2.view(np.uint32))
    assert out2[7] == n                     # the all -inf row: every p zero


def test_score_rows_is_score_row(rng):
    """score_rows (a tile's rows in one call) is fa_tile._score_row without soft-cap, row by
    row, bitwise: dot·scale + mask in one rounding, -inf where the mask is -inf (whatever
    the dot, NaN included), rows sharing a mask row through mrix. _score_row compiled as
    in the kernels (their fastmath flags: LLVM contracts its multiply-add to an fma)."""
    from pyggml.backends.numba_cpu.intrinsics import ptr_of
    from pyggml.backends.numba_cpu.kernels.fa_consts import _FM
    from pyggml.backends.numba_cpu.kernels.fa_dots import score_rows
    from pyggml.backends.numba_cpu.kernels.fa_tile import _score_row
    nr, n, w = 5, 32, 40                    # 5 rows of 32 dots, 40 floats apart

    @numba.njit(fastmath=_FM)
    def run(x, y, mv, mrix, scale):
        xp = ptr_of(x.ctypes.data, np.float32)
        mp = ptr_of(mv.ctypes.data, np.float32)
        for r in range(nr):
            _score_row(xp, mp, r * w, mrix[r] * w, n, scale, np.float32(0.0))
        score_rows(y.ctypes.data, mv.ctypes.data, n, nr, w * 4, mrix.ctypes.data, w * 4, scale)

    x = rng.uniform(-30, 30, (nr, w)).astype(np.float32)
    x[1, 5] = np.nan
    x[2, 9] = np.nan
    mv = rng.uniform(-3, 0, (nr, w)).astype(np.float32)
    mv[0, [1, 2, 30]] = -np.inf
    mv[2, 9] = -np.inf                      # a NaN dot under the mask: -inf
    mv[3, :] = -np.inf
    mrix = np.array([0, 2, 2, 3, 0], np.int64)
    y = x.copy()
    run(x, y, mv, mrix, np.float32(0.0883883))
    assert np.array_equal(x.view(np.uint32), y.view(np.uint32))
    assert y[3, 0] == -np.inf and y[1, 9] == -np.inf and np.isnan(y[1, 5])
    assert np.array_equal(y[:, n:].view(np.uint32), x[:, n:].view(np.uint32))
