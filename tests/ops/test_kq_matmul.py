"""K-quant and IQ4 weights in the Numba MUL_MAT / MUL_MAT_ID dot path (kernels/kq_dots.py).

The activations are quantized to Q8_K once per column (IQ4_NL: the Q8 split of Q4_0's path)
and every super-block is an exact integer dot, as in ggml-cpu's vec_dot_<t>_q8_K; the float
accumulation follows ggml's order too, so for Q2_K..Q6_K and IQ4_XS the results are real
ggml's bit for bit, at any thread count, with the AVX-512, AVX2 (PYGGML_SIMD=avx2, a child
process) and portable (PYGGML_SIMD=generic, slow) code.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.backends.numba_cpu.kernels import simd
from pyggml.types import as_type

BITWISE = ["q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_xs"]
SHAPES = [(37, 512, 1), (64, 768, 3), (33, 256, 17), (5, 1024, 2)]   # m, k, n (dot path)
SLOW = os.environ.get("PYGGML_SLOW") == "1"

_BE = {}


def _numba(n):
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    if n not in _BE:
        _BE[n] = NumbaBackend(n)
    return _BE[n]


def _graph(t, m, k, n, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    ctx = gg.init(mem_size=64 << 20)
    w = gg.new_tensor_2d(ctx, as_type(t), k, m)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, k, n)
    data.write(w, rng.standard_normal((m, k)))
    data.write(b, rng.standard_normal((n, k)) * scale)
    y = gg.mul_mat(ctx, w, b)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return gf, y, b


def _ggml_value(y):
    from pyggml.testing import ggml_lib
    with ggml_lib.Mirror([y]) as m:
        m.compute(2)
        return m.value(y)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("t", BITWISE)
def test_kquant_dots_are_ggmls_bit_for_bit(ggml, t, m, k, n):
    gf, y, _ = _graph(t, m, k, n)
    want = _ggml_value(y)
    for nth in (1, 2, 3):
        data.write(y, np.full(want.shape, np.nan))
        _numba(nth).graph_compute(gf)
        got = data.read(y)
        assert np.array_equal(got, want), (t, nth, float(np.abs(got - want).max()))


@pytest.mark.parametrize("t", ["q4_K", "q4_0", "f16"])
def test_decode_row_chunks_across_repeated_computes(t):
    """Mat-vec rows are handed out in chunks from the node's scratch counters (decode path):
    every compute of the same table takes all rows once (the counters are back at zero after
    each), whatever the thread count, and equals the one-thread result."""
    from pyggml.backends.numba_cpu import desc as D
    rng = np.random.default_rng(7)
    gf, y, b = _graph(t, 600, 512, 2)
    for nth in (2, 3):
        be = _numba(nth)
        for _ in range(3):
            data.write(b, rng.standard_normal((2, 512)))
            _numba(1).graph_compute(gf)
            want = data.read(y)
            data.write(y, np.full(want.shape, np.nan))
            be.graph_compute(gf)
            assert np.array_equal(data.read(y), want), (t, nth)
            tab = be.table(gf)
            row = [r for r, node in enumerate(tab.nodes) if node.op.name == "MUL_MAT"][0]
            assert not tab.scratch[row].any() and D.has_scratch(tab.descs[row])


def test_iq4_nl_dots_match_ggml(ggml):
    """IQ4_NL runs through the Q8 split (float block scales where ggml rounds them to F16)."""
    gf, y, _ = _graph("iq4_nl", 37, 512, 3)
    want = _ggml_value(y)
    _numba(2).graph_compute(gf)
    got = data.read(y)
    assert ((got - want) ** 2).sum() / (want ** 2).sum() < 1e-6


def test_q8_k_activations_are_ggmls(ggml):
    """kq_dots.quantize_act writes ggml's quantize_row_q8_K bytes (ties to the first largest
    |x|, tiny and huge values); a block holding inf or NaN gets d = NaN."""
    from pyggml import quants
    from pyggml.backends.numba_cpu.kernels import kq_dots as kq
    rng = np.random.default_rng(3)
    x = rng.standard_normal(256 * 6).astype(np.float32)
    x[256:512] *= np.float32(1e-30)                             # tiny
    x[512:768] *= np.float32(3e37)                              # near FLT_MAX
    x[800], x[900] = 5.0, -5.0                                  # tie on |x|
    x[1024:1280] = 0.0
    dst = np.zeros(kq.act_bytes(x.size), np.uint8)
    kq.quantize_act(x.ctypes.data, x.size, dst.ctypes.data)
    want = np.frombuffer(quants.quantize(gg.TYPE_Q8_K, x), np.uint8)
    got = dst[:want.size].reshape(-1, 292)
    want = want.reshape(-1, 292)
    for i in range(6):
        if i == 4:      # all zeros: ggml leaves bsums unwritten
            assert not got[i].any()
            continue
        assert np.array_equal(got[i], want[i]), i
    x[1300] = np.inf
    x[1400] = np.nan
    kq.quantize_act(x.ctypes.data, x.size, dst.ctypes.data)
    assert np.isnan(dst[5 * 292:5 * 292 + 4].view(np.float32)[0])


@pytest.mark.parametrize("t", BITWISE + ["iq4_nl"])
def test_nan_and_inf_activations_give_nan_columns(t):
    gf, y, b = _graph(t, 20, 512, 3)
    v = data.read(b)
    v[0, 0, 1, 7] = np.nan
    v[0, 0, 2, 300] = np.inf
    data.write(b, v)
    _numba(2).graph_compute(gf)
    got = data.read(y)
    assert np.isnan(got[0, 0, 1]).all() and np.isnan(got[0, 0, 2]).all()
    assert np.isfinite(got[0, 0, 0]).all()


@pytest.mark.parametrize("t", BITWISE + ["iq4_nl"])
@pytest.mark.parametrize("m,n,k", [(70, 45, 512), (9, 40, 256), (130, 5, 768)])
def test_gemm_and_dot_paths_match_reference(t, m, n, k):
    """The GEMM path (n >= 32, weights dequantized exactly) and the dot path against the
    float64 reference; F16 activations are converted before quantizing."""
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import harness
    for bt in ("f32", "f16"):
        rng = np.random.default_rng(0)
        ctx = gg.init(mem_size=64 << 20)
        w = gg.new_tensor_2d(ctx, as_type(t), k, m)
        b = gg.new_tensor_2d(ctx, as_type(bt), k, n)
        data.write(w, rng.uniform(-1, 1, (m, k)))
        data.write(b, rng.uniform(-1, 1, (n, k)))
        y = gg.mul_mat(ctx, w, b)
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, y)
        ReferenceBackend().graph_compute(gf)
        want = data.read(y)
        for nth in (1, 3):
            _numba(nth).graph_compute(gf)
            assert harness.nmse(want, data.read(y)) < 5e-4, (t, bt, nth)


def test_mul_mat_id_kquant_matches_reference():
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import harness
    rng = np.random.default_rng(4)
    ctx = gg.init(mem_size=64 << 20)
    as_ = gg.new_tensor_3d(ctx, gg.TYPE_Q4_K, 256, 24, 4)
    b = gg.new_tensor_3d(ctx, gg.TYPE_F32, 256, 1, 9)
    ids = gg.new_tensor_2d(ctx, gg.TYPE_I32, 2, 9)
    data.write(as_, rng.uniform(-1, 1, (4, 24, 256)))
    data.write(b, rng.uniform(-1, 1, (9, 1, 256)))
    data.write(ids, np.array([rng.permutation(4)[:2] for _ in range(9)]))
    y = gg.mul_mat_id(ctx, as_, b, ids)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    ReferenceBackend().graph_compute(gf)
    want = data.read(y)
    _numba(2).graph_compute(gf)
    assert harness.nmse(want, data.read(y)) < 5e-4


def _twin_mismatches():
    """The bitwise cases on this process's SIMD mode (run by the simd_twin fixture)."""
    bad = []
    for t in BITWISE:
        for m, k, n in SHAPES[:2]:
            gf, y, _ = _graph(t, m, k, n)
            want = _ggml_value(y)
            _numba(2).graph_compute(gf)
            if not np.array_equal(data.read(y), want):
                bad.append((t, m, k, n))
    return bad


@pytest.mark.skipif(not simd.HAVE_AVX512, reason="no AVX-512: the default kernels are the AVX2 ones")
@pytest.mark.twin("_twin_mismatches", "avx2")
def test_avx2_twin_is_ggmls_bit_for_bit(ggml, simd_twin):
    simd_twin("_twin_mismatches", "avx2")


@pytest.mark.skipif(not SLOW, reason="compiles the kernels again (minutes): set PYGGML_SLOW=1")
@pytest.mark.twin("_twin_mismatches", "generic")
def test_portable_path_is_ggmls_bit_for_bit(ggml, simd_twin, tmp_path):
    simd_twin("_twin_mismatches", "generic", tmp_path)
