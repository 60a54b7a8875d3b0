"""MXFP4 (ggml type 39, gpt-oss's weights) against real ggml, bit for bit.

The type's facts against ggml's traits; quantize (NumPy and Numba rows) == ggml_quantize_chunk
and the CPU's from_float on test_quants.py's input families plus MXFP4's own edge cases
(values halfway between two codes, amax just below a power of two, exponents that wrap,
inf/NaN blocks); dequantize == ggml's to_float for every exponent byte; the Numba kernels
(MUL_MAT dot path and MUL_MAT_ID through kernels/mxfp4_dot.py, GET_ROWS, SET_ROWS, CPY,
OUT_PROD) == real ggml's CPU results bit for bit at 1-3 threads, and the GEMM path and the
reference backend close to them.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from test_quants import INPUTS
from test_quants import assert_same_bits
from test_quants import assert_same_bytes
from test_quants import make_input

import pyggml as gg
from pyggml import data
from pyggml import quants as Q
from pyggml.backends.numba_cpu.kernels import simd
from pyggml.quants import mxfp4
from pyggml.types import TRAITS
from pyggml.types import GGMLType
from pyggml.types import as_type

T = GGMLType
MX = T.MXFP4
N = 32 * 37
SLOW = os.environ.get("PYGGML_SLOW") == "1"


# --- inputs of MXFP4's own corners -------------------------------------------------------------

def _level_ties(rng, n):
    """amax 8 gives d = 1: the codes are the values {0, 1, 2, 3, 4, 6, 8, 12} and their
    negatives, so halfway points (0.5, 2.5, 5, 7, 10, ...) tie: the first code must win."""
    mids = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10, 12.5, 13, 15.9], np.float32)
    row = np.concatenate([[8], mids, -mids, [-0.0, 0.0, 1, -1, 6, -6, 4, -12, 9, -9, 11]])
    x = np.resize(row.astype(np.float32), 32)
    scales = 2.0 ** rng.integers(-20, 20, n // 32)
    return (np.tile(x, n // 32) * np.repeat(scales, 32)).astype(np.float32)


def _pow2_edges(rng, n):
    """amax at 2^k and a few ulps below it, for every k: floor(log2f(amax)) rounds up to k
    just below 2^k (large |k|), which sets the block's exponent."""
    ks = np.arange(-149, 128)
    bits = np.float32(2.0) ** ks.astype(np.float32)
    amax = (bits.view(np.uint32)[:, None].astype(np.int64) - np.arange(-2, 60)[None, :])
    amax = amax[(amax > 0) & (amax < 0x7F800000)].astype(np.uint32).view(np.float32)
    amax = np.resize(amax, n // 32)
    x = amax[:, None] * rng.uniform(-1, 1, (amax.size, 32)).astype(np.float32)
    x[:, 0] = amax * rng.choice(np.array([-1, 1], np.float32), amax.size)
    return x.reshape(-1)


def _wrapping(rng, n):
    """Exponents outside E8M0: denormal amax (floor(log2) - 2 + 127 < 0 wraps to a high
    byte), amax near FLT_MAX, inf (the conversion gives 0) and all-NaN blocks."""
    rows = [np.full(32, 1e-40), np.full(32, -1.4e-45), np.linspace(-3.4e38, 3.4e38, 32),
            np.where(np.arange(32) == 5, np.inf, 1.0), np.where(np.arange(32) == 7, -np.inf, 2.0),
            np.full(32, np.nan), np.where(np.arange(32) % 2, np.nan, 3.0),
            np.where(np.arange(32) == 0, 1e-38, 1e-44), np.full(32, 2.0 ** -126)]
    x = np.concatenate(rows).astype(np.float32)
    return np.resize(x, n)


MX_INPUTS = {"level_ties": _level_ties, "pow2_edges": _pow2_edges, "wrapping": _wrapping}


def mx_input(name, n=N, seed=0):
    if name in INPUTS:
        return make_input(name, n, seed)
    rng = np.random.default_rng(seed + 100 + sorted(MX_INPUTS).index(name))
    with np.errstate(over="ignore"):
        return np.asarray(MX_INPUTS[name](rng, n)).astype(np.float32)


ALL_INPUTS = sorted(INPUTS) + sorted(MX_INPUTS)


@pytest.fixture(scope="module")
def real():
    from test_quants import RealGgml

    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        pytest.skip("real ggml (libggml-python) is not available")
    return RealGgml(ggml_lib)


# --- the type ------------------------------------------------------------------------------------

def test_type_facts_are_ggmls(real):
    import ctypes

    from test_quants import _TypeTraitsCpu
    assert int(MX) == 39 and gg.TYPE_MXFP4 is MX and as_type("mxfp4") is MX and str(MX) == "mxfp4"
    tr = real.g.ggml_get_type_traits(39).contents
    assert (tr.type_name.decode(), tr.blck_size, tr.type_size, bool(tr.is_quantized)) == \
        (TRAITS[MX].tname, TRAITS[MX].blck_size, TRAITS[MX].type_size, TRAITS[MX].is_quantized)
    cpu = _TypeTraitsCpu.from_address(real.g.ggml_get_type_traits_cpu(39))
    assert cpu.vec_dot_type == int(TRAITS[MX].vec_dot_type) == int(T.Q8_0)
    assert not Q.takes_imatrix(MX) and ctypes.sizeof(ctypes.c_uint8) * 17 == TRAITS[MX].type_size


def test_e8m0_half_table():
    e = np.arange(256)
    want = np.ldexp(1.0, e - 128).astype(np.float32)     # 2^-128 and 2^-127 are denormals
    assert np.array_equal(mxfp4.e8m0_half(e).view(np.uint32), want.view(np.uint32))


# --- quantize / dequantize --------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_INPUTS)
def test_quantize_matches_ggml(real, name):
    x = mx_input(name)
    ref = real.quantize_chunk(MX, x)
    assert_same_bytes(Q.quantize(MX, x, use_numba=False), ref, MX, f"numpy {name}")
    assert_same_bytes(Q.quantize(MX, x, use_numba=True), ref, MX, f"numba {name}")
    assert_same_bytes(real.from_float_cpu(MX, x), ref, MX, f"ggml-cpu from_float {name}")
    want = real.dequantize(MX, ref, N)
    assert_same_bits(Q.dequantize(MX, ref, N, use_numba=False), want, f"numpy {name}")
    assert_same_bits(Q.dequantize(MX, ref, N, use_numba=True), want, f"numba {name}")


def test_dequantize_every_exponent_matches_ggml(real):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (512, 17), dtype=np.uint8)
    raw[:256, 0] = np.arange(256)
    raw[256:, 0] = rng.permutation(256)
    n = raw.shape[0] * 32
    want = real.dequantize(MX, raw.tobytes(), n)
    assert_same_bits(Q.dequantize(MX, raw.tobytes(), n, use_numba=False), want, "numpy")
    assert_same_bits(Q.dequantize(MX, raw.tobytes(), n, use_numba=True), want, "numba")


def test_layout_and_roundtrip():
    x = np.concatenate([np.arange(32) * 0.25, -np.arange(32)]).astype(np.float32)
    raw = np.frombuffer(Q.quantize(MX, x), np.uint8).reshape(2, 17)
    # block 0: amax 7.75 -> e = floor(log2 7.75) - 2 + 127 = 127, d = 0.5: code k*0.5
    assert raw[0, 0] == 127 and raw[1, 0] == 129              # amax 31: d = 2
    assert raw[0, 1] == (0 | (mxfp4.KVALUES_MXFP4.tolist().index(8) << 4))   # 0.0 and 4.0
    y = Q.dequantize(MX, raw, 64)
    assert y[16] == 4.0 and y[0] == 0.0 and y[63] == -24.0     # -31 -> -12 * 2
    assert np.all(np.abs(y[:32] - x[:32]) <= 0.5 * np.abs(x[:32]) + 0.25)


def test_numba_dispatch_knows_mxfp4():
    from pyggml.quants import nb
    x = mx_input("normal", 64)
    buf = np.zeros(34, np.uint8)
    assert nb.quantize_row(int(MX), x, buf, 64) == 0
    assert buf.tobytes() == Q.quantize(MX, x, use_numba=False)
    y = np.zeros(64, np.float32)
    assert nb.dequantize_row(int(MX), buf, y, 64) == 0
    assert np.array_equal(y, Q.dequantize(MX, buf, 64, use_numba=False))


def test_bad_lengths_are_named_errors():
    from pyggml.errors import DataError
    from pyggml.errors import ShapeError
    with pytest.raises(ShapeError, match="mxfp4"):
        Q.quantize(MX, np.zeros(48, np.float32))
    with pytest.raises(DataError, match="mxfp4"):
        Q.dequantize(MX, b"\0" * 16, 32)
    ctx = gg.init(mem_size=1 << 20)
    with pytest.raises(gg.GGMLError, match="mxfp4|block"):
        gg.new_tensor_2d(ctx, MX, 48, 2)


# --- kernels against real ggml -----------------------------------------------------------------

_BE = {}


def _numba(n):
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    if n not in _BE:
        _BE[n] = NumbaBackend(n)
    return _BE[n]


def _mul_mat_graph(m, k, n, seed=1, bt="f32", batch=(1, 1)):
    rng = np.random.default_rng(seed)
    ctx = gg.init(mem_size=64 << 20)
    w = gg.new_tensor_4d(ctx, MX, k, m, batch[0], 1)
    b = gg.new_tensor_4d(ctx, as_type(bt), k, n, batch[0] * batch[1], 1)
    data.write(w, rng.standard_normal((1, batch[0], m, k)))
    data.write(b, rng.standard_normal((1, batch[0] * batch[1], n, k)))
    y = gg.mul_mat(ctx, w, b)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    _mul_mat_graph.b = b
    return gf, y


def _ggml_values(outs, nth=2):
    from pyggml.testing import ggml_lib
    with ggml_lib.Mirror(outs) as m:
        m.compute(nth)
        return [m.value(o) for o in outs]


def _same(got, want, what):
    assert got.shape == want.shape, what
    bad = np.flatnonzero(got.astype(np.float32).view(np.uint32)
                         != want.astype(np.float32).view(np.uint32))
    assert bad.size == 0, (what, bad.size, float(np.nanmax(np.abs(got - want))))


# m, k, n: odd and even block counts (the last odd block is ggml's scalar tail), one row left
# over from the two-row passes, batches broadcasting the weights
MATVEC = [(37, 512, 1), (16, 96, 3), (33, 32, 2), (6, 4096, 1), (64, 736, 17)]


@pytest.mark.parametrize("m,k,n", MATVEC)
def test_mul_mat_dot_path_is_ggmls_bit_for_bit(ggml, m, k, n):
    gf, y = _mul_mat_graph(m, k, n)
    want, = _ggml_values([y])
    for nth in (1, 2, 3):
        data.write(y, np.full(want.shape, np.nan))
        _numba(nth).graph_compute(gf)
        _same(data.read(y), want, (m, k, n, nth))


def test_mul_mat_broadcast_batches_and_f16_activations(ggml):
    gf, y = _mul_mat_graph(20, 256, 3, batch=(2, 3))
    want, = _ggml_values([y])
    _numba(2).graph_compute(gf)
    _same(data.read(y), want, "batched")
    # F16 activations: ggml's CPU refuses MXFP4 x F16; pyggml converts them to F32 first
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import harness
    gf, y = _mul_mat_graph(20, 256, 3, bt="f16")
    ReferenceBackend().graph_compute(gf)
    ref = data.read(y)
    _numba(2).graph_compute(gf)
    assert harness.nmse(ref, data.read(y)) < 5e-4


@pytest.mark.parametrize("m,n,k", [(70, 45, 512), (9, 40, 256)])
def test_gemm_path_matches_ggml_closely(ggml, m, n, k):
    """n >= 32: pyggml's GEMM dequantizes the weights exactly and keeps the activations in
    float32 (ggml quantizes them to Q8_0), so the two are close, not equal."""
    from pyggml.testing import harness
    gf, y = _mul_mat_graph(m, k, n)
    want, = _ggml_values([y])
    _numba(2).graph_compute(gf)
    assert harness.nmse(want, data.read(y)) < 5e-4


def test_nan_and_inf_activations_as_ggml(ggml):
    """NaN and inf in the activations go through ggml-cpu's Q8_0 quantizer as they do in ggml
    (a NaN becomes -128 with a finite scale, an inf makes the block's scale inf): the same
    columns come out NaN, inf or finite, the finite values bit for bit."""
    gf, y = _mul_mat_graph(20, 512, 4)
    b = _mul_mat_graph.b
    v = data.read(b)
    v[0, 0, 1, 7] = np.nan
    v[0, 0, 2, 300] = np.inf
    v[0, 0, 3, 40:72] = np.nan
    data.write(b, v)
    want, = _ggml_values([y])
    _numba(2).graph_compute(gf)
    got = data.read(y)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and not np.isfinite(want[0, 0, 2:]).all()
    fin = ~np.isnan(want)
    _same(got[fin], want[fin], "non-NaN values")


def test_mul_mat_id_is_ggmls_bit_for_bit(ggml):
    rng = np.random.default_rng(4)
    ctx = gg.init(mem_size=64 << 20)
    as_ = gg.new_tensor_3d(ctx, MX, 256, 24, 4)
    b = gg.new_tensor_3d(ctx, gg.TYPE_F32, 256, 2, 9)
    ids = gg.new_tensor_2d(ctx, gg.TYPE_I32, 2, 9)
    data.write(as_, rng.standard_normal((4, 24, 256)))
    data.write(b, rng.standard_normal((9, 2, 256)))
    data.write(ids, np.array([rng.permutation(4)[:2] for _ in range(9)]))
    y = gg.mul_mat_id(ctx, as_, b, ids)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    want, = _ggml_values([y])
    for nth in (1, 2):
        _numba(nth).graph_compute(gf)
        _same(data.read(y), want, ("mul_mat_id", nth))


def _rows_graph(seed=2):
    """get_rows from MXFP4, set_rows and cpy into MXFP4 (F32 and F16 sources), cpy back to F32."""
    rng = np.random.default_rng(seed)
    ctx = gg.init(mem_size=64 << 20)
    a = gg.new_tensor_2d(ctx, MX, 256, 7)
    data.write(a, rng.standard_normal((7, 256)) * 10.0 ** rng.uniform(-3, 3, (7, 1)))
    ids = gg.new_tensor_1d(ctx, gg.TYPE_I32, 5)
    data.write(ids, np.array([3, 0, 6, 3, 1]))
    got = gg.get_rows(ctx, a, ids)
    dst = gg.new_tensor_2d(ctx, MX, 256, 6)
    data.write(dst, rng.standard_normal((6, 256)))
    src = gg.new_tensor_2d(ctx, gg.TYPE_F32, 256, 3)
    data.write(src, mx_input("level_ties", 768).reshape(3, 256))
    sid = gg.new_tensor_1d(ctx, gg.TYPE_I64, 3)
    data.write(sid, np.array([5, 1, 2]))
    put = gg.set_rows(ctx, dst, src, sid)
    h = gg.new_tensor_2d(ctx, gg.TYPE_F16, 256, 4)
    data.write(h, rng.standard_normal((4, 256)) * 100)
    q = gg.cpy(ctx, h, gg.new_tensor_2d(ctx, MX, 256, 4))
    f = gg.new_tensor_2d(ctx, gg.TYPE_F32, 256, 4)
    data.write(f, mx_input("specials", 1024).reshape(4, 256))
    q2 = gg.cpy(ctx, f, gg.new_tensor_2d(ctx, MX, 256, 4))
    back = gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F32, 256, 7))
    outs = [got, put, q, q2, back]
    gf = gg.new_graph(ctx)
    for o in outs:
        gg.build_forward_expand(gf, o)
    return gf, outs


def test_rows_and_copies_are_ggmls_bit_for_bit(ggml):
    from pyggml.testing import ggml_lib
    gf, outs = _rows_graph()
    with ggml_lib.Mirror(outs) as m:
        m.compute(2)
        want = [m.raw(o) for o in outs]
    for nth in (1, 3):
        _numba(nth).graph_compute(gf)
        for o, w in zip(outs, want):
            assert ggml_lib.pyggml_raw(o) == w, (o.op, nth)


def test_out_prod_matches_ggml(ggml):
    """OUT_PROD with MXFP4 a: rows dequantized, then ggml's vec_mad accumulation."""
    from pyggml.testing import harness
    rng = np.random.default_rng(5)
    ctx = gg.init(mem_size=64 << 20)
    a = gg.new_tensor_2d(ctx, MX, 256, 16)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 10, 16)
    data.write(a, rng.standard_normal((16, 256)))
    data.write(b, rng.standard_normal((16, 10)))
    y = gg.out_prod(ctx, a, b)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    want, = _ggml_values([y])
    _numba(2).graph_compute(gf)
    assert harness.nmse(want, data.read(y)) < 1e-12


def test_reference_backend_computes_them(ggml):
    """The reference backend (float64 on the dequantized weights) agrees with ggml."""
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import ggml_lib
    from pyggml.testing import harness
    gf, outs = _rows_graph(seed=7)
    ReferenceBackend().graph_compute(gf)
    ours = [ggml_lib.pyggml_raw(o) for o in outs]
    with ggml_lib.Mirror(outs) as m:
        m.compute(2)
        assert ours == [m.raw(o) for o in outs]
    gf, y = _mul_mat_graph(37, 512, 3)
    want, = _ggml_values([y])
    ReferenceBackend().graph_compute(gf)
    assert harness.nmse(want, data.read(y)) < 5e-4


# --- the other SIMD modes --------------------------------------------------------------------

def _twin_mismatches():
    """The mat-vec shapes on this process's SIMD mode (run by the simd_twin fixture)."""
    bad = []
    for m, k, n in MATVEC[:3]:
        gf, y = _mul_mat_graph(m, k, n)
        want, = _ggml_values([y])
        _numba(2).graph_compute(gf)
        if not np.array_equal(data.read(y), want):
            bad.append((m, k, n))
    return bad


@pytest.mark.skipif(not simd.HAVE_AVX512, reason="no AVX-512: the default kernels are the AVX2 ones")
@pytest.mark.twin("_twin_mismatches", "avx2")
def test_avx2_twin_is_ggmls_bit_for_bit(ggml, simd_twin):
    simd_twin("_twin_mismatches", "avx2")


@pytest.mark.skipif(not SLOW, reason="compiles the kernels again (minutes): set PYGGML_SLOW=1")
@pytest.mark.twin("_twin_mismatches", "generic")
def test_portable_path_is_ggmls_bit_for_bit(ggml, simd_twin, tmp_path):
    simd_twin("_twin_mismatches", "generic", tmp_path)


# --- GGUF and `pyggml quantize` ------------------------------------------------------------------

def test_quantize_cli_knows_mxfp4_moe():
    from pyggml import quantize_cli as qc
    assert qc.parse_ftype("mxfp4_moe") == "MXFP4_MOE" and qc.parse_ftype("38") == "MXFP4_MOE"
    assert qc.FTYPES["MXFP4_MOE"] == (38, MX)
    mixer = qc.Mixer(qc.Model(arch="llama", n_layer=1, n_head=4, n_head_kv=2, n_expert=4),
                     "MXFP4_MOE")
    names = ["blk.0.ffn_up_exps.weight", "blk.0.attn_q.weight", "output.weight"]
    mixer.count(names)
    got = [mixer.tensor_type(n, T.F32, ne, len(ne), MX)
           for n, ne in zip(names, ([256, 512, 4], [256, 256], [256, 64]))]
    assert got == [MX, T.Q8_0, T.Q8_0]


def test_mxfp4_model_loads_and_runs(tmp_path):
    """A llama GGUF quantized with --pure MXFP4_MOE: the loader maps its MXFP4 weights, and
    its logits are those of the same weights dequantized to F32 (requantized to F32 by
    `pyggml quantize`) up to the Q8_0 rounding of the activations."""
    pytest.importorskip("gguf")
    import dataclasses

    from pyggml import quantize_cli as qc
    from pyggml.llm import Llama
    from pyggml.llm.loader import load_model
    from pyggml.llm.loader import save_gguf
    from pyggml.models.llama import LlamaConfig
    from pyggml.models.llama import LlamaModel
    cfg = LlamaConfig(n_vocab=96, n_embd=64, n_layer=2, n_head=2, n_head_kv=1, n_ff=96,
                      n_ctx_train=256)
    src, mx, back = tmp_path / "f32.gguf", tmp_path / "mxfp4.gguf", tmp_path / "back.gguf"
    save_gguf(LlamaModel.random(dataclasses.replace(cfg, wtype="f32", etype="f32"), seed=3), src)
    assert qc.main(["--pure", str(src), str(mx), "MXFP4_MOE"]) == 0
    assert qc.main(["--allow-requantize", str(mx), str(back), "F32"]) == 0
    m = load_model(mx)
    assert m.w["blk.0.attn_q.weight"].type == MX and m.w["blk.1.ffn_down.weight"].type == MX
    ids = [5, 17, 3, 88, 41, 2]
    rows = []
    for path in (back, mx):
        with Llama(str(path), n_ctx=32, logits_all=True, verbose=False) as llm:
            llm.eval(ids)
            rows.append(llm.scores[:len(ids)].copy())
    assert np.isfinite(rows[1]).all()
    assert ((rows[1] - rows[0]) ** 2).sum() / (rows[0] ** 2).sum() < 1e-3
