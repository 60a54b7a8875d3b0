"""Soft max, causal masks and RoPE: SOFT_MAX (soft_max_ext + sinks + ALiBi), SOFT_MAX_BACK,
DIAG_MASK_INF, DIAG_MASK_ZERO, ROPE and ROPE_BACK (rope_ext, rope_multi, YaRN, freq factors).

  (a) every case's reference result against real ggml (libggml-python) within its threshold;
  (b) every misuse raises a GGMLError subclass naming the op and the tensors;
  (c) the Numba kernels equal the reference at 1, 2 and 3 threads.
Cases tagged "slow" run only with PYGGML_SLOW=1.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from _cases import SLOW
from _cases import assert_slow_vs_ggml
from _cases import assert_vs_ggml
from _cases import op_cases

import pyggml as gg
from pyggml import data
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.testing import harness
from pyggml.testing.asserts import assert_ggml_error

OPS = ("SOFT_MAX", "SOFT_MAX_BACK", "DIAG_MASK_INF", "DIAG_MASK_ZERO", "ROPE", "ROPE_BACK")


def _cases(slow: bool):
    return op_cases(OPS, slow, ("ggml_wrong",))


FAST = _cases(False)


# --- (a) reference == real ggml -------------------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_reference_matches_ggml(ggml, case):
    assert_vs_ggml(case)


@pytest.mark.skipif(not SLOW, reason="big cases: set PYGGML_SLOW=1")
def test_reference_matches_ggml_slow_cases(ggml):
    assert_slow_vs_ggml(_cases(True))


def test_case_strings_follow_test_backend_ops():
    sm = {str(c) for c in gg.get_op("SOFT_MAX").cases()}
    assert ("SOFT_MAX(type=f32,ne=[32,2,32,1],mask=1,sinks=1,m_prec=f16,nr23=[1,1],"
            "scale=0.100000,max_bias=8.000000,inplace=0)") in sm
    rp = {str(c) for c in gg.get_op("ROPE").cases()}
    assert ("ROPE(type=f32,ne_a=[128,32,2,1],n_dims=128,mode=0,n_ctx=512,fs=1.000000,"
            "ef=0.000000,af=1.000000,ff=0,v=0,inplace=0,n_offs=0)") in rp


def test_rope_yarn_corr_dims_match_ggml(ggml):
    for args in ((128, 4096, 10000.0, 32.0, 1.0), (64, 2048, 500000.0, 32.0, 1.0),
                 (48, 0, 10000.0, 1.0, 1.0), (20, 512, 1e4, 8.0, 2.0)):
        dims = np.zeros(2, dtype=np.float32)
        ggml.ggml_rope_yarn_corr_dims(*args, dims)
        assert gg.rope_yarn_corr_dims(*args) == [float(dims[0]), float(dims[1])], args


# --- semantics the tests spell out ----------------------------------------------------------------

def _run(build, leafs, backend=None):
    """build(ctx, *tensors) over leafs given as (type, ne, values); computes on backend."""
    from pyggml.backends.reference import ReferenceBackend
    ctx = gg.init(mem_size=32 << 20)
    ts = []
    for type, ne, values in leafs:
        t = gg.new_tensor(ctx, type, len(ne), ne)
        if values is not None:
            data.write(t, values)
        ts.append(t)
    out = build(ctx, *ts)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    (backend or ReferenceBackend()).graph_compute(gf)
    return data.read(out), ts


def test_soft_max_ext_formula_alibi_and_sinks(rng):
    ne0, ne1, nh = 12, 3, 6                     # 6 heads: n_head_log2 = 4, heads 4, 5 use m1
    x = rng.uniform(-2, 2, size=(nh, ne1, ne0))
    m = rng.uniform(-1, 1, size=(5, ne0))       # mask taller than a (padded batch)
    sk = rng.uniform(-1, 1, size=nh)

    def build(ctx, a, mask, sinks):
        y = gg.soft_max_ext(ctx, a, mask, 0.5, 3.0)
        gg.soft_max_add_sinks(y, sinks)
        return y
    got, _ = _run(build, [(gg.TYPE_F32, [ne0, ne1, nh], x), (gg.TYPE_F16, [ne0, 5], m),
                          (gg.TYPE_F32, [nh], sk)])
    mh = m.astype(np.float16).astype(np.float64)[:ne1]
    m0, m1 = 2 ** (-3.0 / 4), 2 ** (-1.5 / 4)
    for h in range(nh):
        slope = m0 ** (h + 1) if h < 4 else m1 ** (2 * (h - 4) + 1)
        w = x.astype(np.float32)[h] * 0.5 + slope * mh
        mx = np.maximum(w.max(axis=-1, keepdims=True), sk.astype(np.float32)[h])
        e = np.exp(w - mx)
        want = e / (e.sum(axis=-1, keepdims=True) + np.exp(sk.astype(np.float32)[h] - mx))
        np.testing.assert_allclose(got[0, h], want, rtol=1e-6, atol=1e-9)


def test_soft_max_fully_masked_row_is_nan_unless_a_sink_takes_it():
    x = np.zeros((2, 4))
    m = np.array([[0.0, 0.0, -np.inf, 0.0], [-np.inf] * 4])
    got, _ = _run(lambda ctx, a, mask: gg.soft_max_ext(ctx, a, mask, 1.0, 0.0),
                  [(gg.TYPE_F32, [4, 2], x), (gg.TYPE_F32, [4, 2], m)])
    np.testing.assert_allclose(got[0, 0, 0], [1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6)
    assert np.isnan(got[0, 0, 1]).all()         # ggml: exp(-inf - -inf) = NaN

    def with_sink(ctx, a, mask, s):
        y = gg.soft_max_ext(ctx, a, mask, 1.0, 0.0)
        gg.soft_max_add_sinks(y, s)
        return y
    got, _ = _run(with_sink, [(gg.TYPE_F32, [4, 2], x), (gg.TYPE_F32, [4, 2], m),
                              (gg.TYPE_F32, [1], [0.0])])
    np.testing.assert_array_equal(got[0, 0, 1], 0.0)


def test_rope_back_inverts_rope_and_passes_extra_dims_through(rng):
    x = rng.uniform(-1, 1, size=(3, 4, 40))
    pos = np.array([0, 7, 300])
    for mode in (0, 2):
        def fwd_back(ctx, a, p, mode=mode):
            y = gg.rope_ext(ctx, a, p, None, 24, mode, 4096, 10000.0, 0.5, 1.0, 1.0, 32.0, 1.0)
            return gg.rope_ext_back(ctx, y, p, None, 24, mode, 4096, 10000.0, 0.5, 1.0, 1.0,
                                    32.0, 1.0)
        got, _ = _run(fwd_back, [(gg.TYPE_F32, [40, 4, 3], x), (gg.TYPE_I32, [3], pos)])
        mscale = 1 + 0.1 * math.log(1 / 0.5)       # YaRN magnitude, applied twice
        x32 = x.astype(np.float32)
        np.testing.assert_allclose(got[0, ..., :24], x32[..., :24] * mscale ** 2, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(got[0, ..., 24:], x32[..., 24:])
        once, _ = _run(lambda ctx, a, p, mode=mode: gg.rope(ctx, a, p, 24, mode),
                       [(gg.TYPE_F32, [40, 4, 3], x), (gg.TYPE_I32, [3], pos)])
        np.testing.assert_array_equal(once[0, ..., 24:], x.astype(np.float32)[..., 24:])
        np.testing.assert_array_equal(once[0, 0], x.astype(np.float32)[0])     # position 0


def test_rope_modes_rotate_the_right_pairs():
    x = np.arange(8, dtype=np.float64).reshape(1, 1, 8) + 1
    pos = np.array([1])
    for mode, pairs in ((0, [(0, 1), (2, 3)]), (2, [(0, 2), (1, 3)])):
        got, _ = _run(lambda ctx, a, p, mode=mode: gg.rope(ctx, a, p, 4, mode),
                      [(gg.TYPE_F32, [8, 1, 1], x), (gg.TYPE_I32, [1], pos)])
        y = got[0, 0, 0]
        for k, (i, j) in enumerate(pairs):
            th = 1.0 * 10000.0 ** (-2 * k / 4)
            c, s = math.cos(th), math.sin(th)
            assert np.isclose(y[i], x[0, 0, i] * c - x[0, 0, j] * s, rtol=1e-6)
            assert np.isclose(y[j], x[0, 0, i] * s + x[0, 0, j] * c, rtol=1e-6)
        np.testing.assert_array_equal(y[4:], x[0, 0, 4:])


def test_op_params_layout():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_3d(ctx, gg.TYPE_F32, 16, 2, 3)
    p = gg.new_tensor_1d(ctx, gg.TYPE_I32, 3)
    r = gg.rope_ext(ctx, a, p, None, 8, 2, 4096, 500000.0, 0.25, 1.0, 1.0, 32.0, 1.0)
    w = r.op_params
    f = w.view(np.float32)
    assert list(w[:5]) == [0, 8, 2, 0, 4096]
    assert list(f[5:11]) == [np.float32(v) for v in (500000.0, 0.25, 1.0, 1.0, 32.0, 1.0)]
    assert list(w[11:16]) == [0, 0, 0, 0, 0]
    r = gg.rope_multi(ctx, gg.new_tensor_3d(ctx, gg.TYPE_F32, 16, 2, 3),
                      gg.new_tensor_1d(ctx, gg.TYPE_I32, 12), None, 12, [2, 2, 2, 0], 8, 0,
                      1e4, 1.0, 0.0, 1.0, 0.0, 0.0)
    assert list(r.op_params[11:15]) == [2, 2, 2, 0]
    s = gg.soft_max_ext(ctx, a, None, 0.125, 0.0)
    assert list(s.op_params[:2].view(np.float32)) == [0.125, 0.0]
    assert list(gg.diag_mask_inf(ctx, a, 5).op_params[:1]) == [5]


# --- (b) error paths ------------------------------------------------------------------------------

_raises = assert_ggml_error     # (cls, fn, *words) -> message


def test_soft_max_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_3d(ctx, gg.TYPE_F32, 16, 4, 6)
    gg.set_name(a, "kq")
    m16 = gg.new_tensor_2d(ctx, gg.TYPE_F16, 16, 4)
    _raises(ShapeError, lambda: gg.soft_max_ext(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F16, 16, 3),
                                                1.0, 0.0), "SOFT_MAX", "too small", "'kq'")
    _raises(ShapeError, lambda: gg.soft_max_ext(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F16, 15, 4),
                                                1.0, 0.0), "SOFT_MAX", "ne0")
    _raises(TypeError_, lambda: gg.soft_max_ext(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_I32, 16, 4),
                                                1.0, 0.0), "SOFT_MAX", "mask", "i32")
    _raises(TypeError_, lambda: gg.soft_max_ext(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_BF16, 16, 4),
                                                1.0, 0.0), "SOFT_MAX", "bf16")
    _raises(ShapeError, lambda: gg.soft_max_ext(ctx, a, gg.new_tensor_3d(ctx, gg.TYPE_F16, 16, 4, 4),
                                                1.0, 0.0), "SOFT_MAX", "broadcast")
    mt = gg.transpose(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 16, 16))
    _raises(ShapeError, lambda: gg.soft_max_ext(ctx, a, mt, 1.0, 0.0), "mask must be contiguous")
    _raises(ShapeError, lambda: gg.soft_max(ctx, gg.transpose(ctx, a)), "SOFT_MAX", "contiguous")
    _raises(TypeError_, lambda: gg.soft_max(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F16, 4, 4)),
            "SOFT_MAX")
    _raises(ParamError, lambda: gg.soft_max_ext(ctx, a, None, 1.0, 8.0), "SOFT_MAX", "mask")
    y = gg.soft_max_ext(ctx, a, m16, 1.0, 0.0)
    _raises(ShapeError, lambda: gg.soft_max_add_sinks(y, gg.new_tensor_1d(ctx, gg.TYPE_F32, 5)),
            "sinks")
    _raises(TypeError_, lambda: gg.soft_max_add_sinks(y, gg.new_tensor_1d(ctx, gg.TYPE_F16, 6)),
            "sinks")
    _raises(GGMLError, lambda: gg.soft_max_add_sinks(gg.rms_norm(ctx, a, 1e-6),
                                                     gg.new_tensor_1d(ctx, gg.TYPE_F32, 6)),
            "SOFT_MAX node")
    gg.soft_max_add_sinks(y, gg.new_tensor_1d(ctx, gg.TYPE_F32, 6))
    _raises(ShapeError, lambda: gg.soft_max_add_sinks(y, gg.new_tensor_1d(ctx, gg.TYPE_F32, 6)),
            "already has sinks")
    gg.soft_max_add_sinks(y, None)
    assert y.src[2] is None
    b = gg.new_tensor_3d(ctx, gg.TYPE_F32, 16, 4, 6)
    _raises(ParamError, lambda: gg.soft_max_ext_back(ctx, a, b, 1.0, 8.0), "SOFT_MAX_BACK",
            "max_bias")
    _raises(TypeError_, lambda: gg.soft_max_ext_back(ctx, a, m16, 1.0, 0.0), "SOFT_MAX_BACK")
    _raises(ShapeError, lambda: gg.soft_max_ext_back(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F32, 16, 4),
                                                     1.0, 0.0), "SOFT_MAX_BACK", "same shape")


def test_diag_mask_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 8)
    _raises(ParamError, lambda: gg.diag_mask_inf(ctx, a, -1), "DIAG_MASK_INF", "n_past")
    _raises(TypeError_, lambda: gg.diag_mask_zero(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F16, 8, 8), 0),
            "DIAG_MASK_ZERO")
    _raises(ShapeError, lambda: gg.diag_mask_inf(ctx, gg.transpose(ctx, a), 0), "contiguous")


def test_rope_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_3d(ctx, gg.TYPE_F32, 16, 2, 5)
    gg.set_name(a, "q")
    pos = gg.new_tensor_1d(ctx, gg.TYPE_I32, 5)
    ext = lambda a=a, pos=pos, c=None, n_dims=8, mode=0: gg.rope_ext(  # noqa: E731
        ctx, a, pos, c, n_dims, mode, 0, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0)
    ext()
    _raises(ShapeError, lambda: ext(pos=gg.new_tensor_1d(ctx, gg.TYPE_I32, 4)), "ROPE",
            "a.ne2", "'q'", "[16, 2, 5]")
    _raises(TypeError_, lambda: ext(pos=gg.new_tensor_1d(ctx, gg.TYPE_F32, 5)), "ROPE", "positions")
    _raises(ShapeError, lambda: ext(pos=gg.new_tensor_2d(ctx, gg.TYPE_I32, 5, 2)), "vector")
    _raises(ParamError, lambda: ext(n_dims=7), "ROPE", "even")
    _raises(ShapeError, lambda: ext(n_dims=18), "ROPE", "exceeds")
    _raises(ParamError, lambda: ext(mode=1), "no longer supported")
    _raises(ParamError, lambda: ext(mode=8), "rope_multi")
    _raises(ParamError, lambda: ext(mode=4), "unsupported rope mode")
    _raises(ShapeError, lambda: ext(c=gg.new_tensor_1d(ctx, gg.TYPE_F32, 3)), "freq_factors")
    _raises(TypeError_, lambda: ext(c=gg.new_tensor_1d(ctx, gg.TYPE_F16, 4)), "freq_factors")
    _raises(TypeError_, lambda: ext(a=gg.new_tensor_3d(ctx, gg.TYPE_I32, 16, 2, 5)), "ROPE")
    _raises(ShapeError, lambda: ext(a=gg.permute(ctx, gg.new_tensor_3d(ctx, gg.TYPE_F32, 2, 16, 5),
                                                 1, 0, 2, 3)), "packed")
    multi = lambda mode=8, sections=(2, 2, 2, 0), n_dims=12, pos=gg.new_tensor_1d(  # noqa: E731
        ctx, gg.TYPE_I32, 20): gg.rope_multi(ctx, a, pos, None, n_dims, sections, mode, 0,
                                             10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    multi()
    multi(mode=24, n_dims=8)
    _raises(ShapeError, lambda: multi(pos=pos), "4 * a.ne2")
    _raises(ParamError, lambda: multi(sections=(0, 0, 0, 4)), "sections")
    _raises(ShapeError, lambda: multi(sections=(8, 8, 8, 0)), "sections")
    _raises(ParamError, lambda: multi(sections=(1, 2, 3)), "4 values")
    _raises(ShapeError, lambda: multi(mode=24, n_dims=6), "vision")
    _raises(ShapeError, lambda: gg.rope_ext_back(ctx, a, gg.new_tensor_1d(ctx, gg.TYPE_I32, 2),
                                                 None, 8, 2, 0, 1e4, 1.0, 0.0, 1.0, 0.0, 0.0),
            "ROPE_BACK")


# --- (c) Numba kernels == reference ----------------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_numba_matches_reference(numba_backends, case):
    from pyggml.backends.reference import ReferenceBackend
    ref = ReferenceBackend()
    for be in numba_backends.values():
        r = harness.run_test(case, be, ref, seed=1)
        assert r.status == "OK", f"{be.n_threads} threads: {case}: {r.status} {r.message}"


def test_numba_soft_max_nan_and_inf_semantics(numba_backends):
    """-inf masks and fully masked rows behave as in the reference (no fastmath nnan/ninf)."""
    x = np.zeros((3, 19))
    m = np.zeros((3, 19))
    m[0, 5:] = -np.inf
    m[1, :] = -np.inf
    m[2, ::2] = -np.inf

    def build(ctx, a, mask):
        return gg.soft_max_ext(ctx, a, mask, 1.0, 0.0)
    leafs = [(gg.TYPE_F32, [19, 3], x), (gg.TYPE_F16, [19, 3], m)]
    want, _ = _run(build, leafs)
    for be in numba_backends.values():
        got, _ = _run(build, leafs, be)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6)
