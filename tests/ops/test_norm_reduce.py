"""Norms and reductions: SUM, SUM_ROWS, MEAN, ARGMAX, COUNT_EQUAL, CUMSUM, NORM, RMS_NORM,
RMS_NORM_BACK, GROUP_NORM, L2_NORM.

  (a) every case's reference result against real ggml (libggml-python), within the case's
      threshold (cases ggml's CPU gets wrong are tagged `ggml_wrong` and checked against
      plain NumPy instead);
  (b) every misuse raises a GGMLError subclass naming the op and the tensors;
  (c) the Numba kernels equal the reference at 1, 2 and 3 threads.
Cases tagged "slow" run only with PYGGML_SLOW=1.
"""
from __future__ import annotations

import numpy as np
import pytest
from _cases import SLOW
from _cases import assert_slow_vs_ggml
from _cases import assert_vs_ggml
from _cases import op_cases
from _cases import ref_compute as _ref

import pyggml as gg
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops.reduce import GGML_WRONG
from pyggml.testing import harness
from pyggml.testing.asserts import assert_ggml_error

OPS = ("SUM", "SUM_ROWS", "MEAN", "ARGMAX", "COUNT_EQUAL", "CUMSUM",
       "NORM", "RMS_NORM", "RMS_NORM_BACK", "GROUP_NORM", "L2_NORM")


def _cases(slow: bool, ggml_ok: bool = True):
    return op_cases(OPS, slow, (GGML_WRONG,) if ggml_ok else ())


FAST = _cases(False)
FAST_ALL = _cases(False, ggml_ok=False)


# --- (a) reference == real ggml -------------------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_reference_matches_ggml(ggml, case):
    assert_vs_ggml(case)


@pytest.mark.skipif(not SLOW, reason="big cases: set PYGGML_SLOW=1")
def test_reference_matches_ggml_slow_cases(ggml):
    assert_slow_vs_ggml(_cases(True))


def test_case_strings_follow_test_backend_ops():
    names = {str(c) for c in gg.get_op("RMS_NORM").cases()}
    assert "RMS_NORM(type=f32,ne=[64,5,4,3],v=0,eps=0.000001,inplace=0)" in names
    names = {str(c) for c in gg.get_op("SUM_ROWS").cases()}
    assert "SUM_ROWS(type=f32,ne=[11,5,6,3],permute=1,slice=1)" in names
    names = {str(c) for c in gg.get_op("GROUP_NORM").cases()}
    assert "GROUP_NORM(type=f32,ne=[64,64,320,1],num_groups=32,eps=0.000001)" in names


def test_ggml_wrong_cases_give_the_mathematical_result(rng):
    # ggml's CPU sums rows as if packed; pyggml sums the elements of the view
    x = rng.uniform(-1, 1, size=(256, 33))
    out, _ = _ref(lambda ctx, a: gg.sum(ctx, gg.permute(ctx, a, 1, 0, 2, 3)),
                  (gg.TYPE_F32, [33, 256], x))
    assert np.isclose(gg.to_numpy(out)[0], x.astype(np.float32).sum(dtype=np.float64), rtol=1e-6)
    # argmax of a transposed matrix reads columns
    x = rng.permutation(280).reshape(7, 40).astype(np.float64)        # (7, 40): ne=[40, 7]
    out, _ = _ref(lambda ctx, a: gg.argmax(ctx, gg.transpose(ctx, a)), (gg.TYPE_F32, [40, 7], x))
    np.testing.assert_array_equal(gg.to_numpy(out), np.argmax(x, axis=0))
    # count_equal over 4-D i32 tensors counts every position once
    a = rng.integers(0, 3, size=(2, 3, 5, 7))
    b = rng.integers(0, 3, size=(2, 3, 5, 7))
    out, _ = _ref(lambda ctx, x, y: gg.count_equal(ctx, x, y),
                  (gg.TYPE_I32, [7, 5, 3, 2], a), (gg.TYPE_I32, [7, 5, 3, 2], b))
    assert gg.to_numpy(out)[0] == np.count_nonzero(a == b) and out.type == gg.TYPE_I64
    # cumsum of a permuted view (ggml aborts)
    x = rng.uniform(-1, 1, size=(2, 33, 6))
    out, _ = _ref(lambda ctx, a: gg.cumsum(ctx, gg.permute(ctx, a, 1, 0, 2, 3)),
                  (gg.TYPE_F32, [6, 33, 2], x))
    np.testing.assert_allclose(gg.to_numpy(out), np.cumsum(np.swapaxes(x, 1, 2), axis=-1),
                               rtol=1e-5, atol=1e-5)


def test_argmax_ties_take_the_last_index_and_nan_resets_like_ggml():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [np.nan, 5.0, 1.0, 5.0], [2.0, np.nan, 1.0, 0.5]])
    out, _ = _ref(lambda ctx, a: gg.argmax(ctx, a), (gg.TYPE_F32, [4, 3], x))
    # row 2: max=2 at 0, NaN makes max NaN, then MAX(NaN, 1) = 1 -> idx 2, MAX(1, .5) -> stays
    np.testing.assert_array_equal(gg.to_numpy(out), [2, 3, 2])


def test_shapes_and_types():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 10, 5, 4, 3)
    assert gg.sum(ctx, a).ne == [1, 1, 1, 1]
    assert gg.sum_rows(ctx, a).ne == [1, 5, 4, 3]
    m = gg.mean(ctx, a)
    assert m.ne == [1, 5, 4, 3] and m.type == gg.TYPE_F32
    am = gg.argmax(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 10, 7))
    assert am.ne == [7, 1, 1, 1] and am.type == gg.TYPE_I32
    h = gg.sum(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F16, 10, 7))
    assert h.type == gg.TYPE_F16
    n = gg.rms_norm_inplace(ctx, a, 1e-6)
    assert n.view_src is a and n.ne == a.ne and n.op.name == "RMS_NORM"
    g = gg.group_norm(ctx, a, 2, 1e-5)
    assert list(g.op_params[:2]) == [2, np.float32(1e-5).view(np.int32)]


# --- (b) error paths ------------------------------------------------------------------------------

_raises = assert_ggml_error     # (cls, fn, *words) -> message


def test_reduction_errors():
    ctx = gg.init(mem_size=1 << 20)
    f32 = gg.new_tensor_3d(ctx, gg.TYPE_F32, 4, 3, 2)
    f16 = gg.new_tensor_2d(ctx, gg.TYPE_F16, 4, 3)
    i32 = gg.new_tensor_2d(ctx, gg.TYPE_I32, 4, 3)
    gg.set_name(f32, "x")
    _raises(TypeError_, lambda: gg.sum(ctx, i32), "SUM", "i32")
    _raises(TypeError_, lambda: gg.sum_rows(ctx, f16), "SUM_ROWS", "f16")
    _raises(TypeError_, lambda: gg.mean(ctx, f16), "MEAN")
    _raises(ShapeError, lambda: gg.argmax(ctx, f32), "ARGMAX", "matrix", "'x'", "[4, 3, 2]")
    _raises(TypeError_, lambda: gg.argmax(ctx, f16), "ARGMAX")
    _raises(ShapeError, lambda: gg.count_equal(ctx, i32, gg.new_tensor_2d(ctx, gg.TYPE_I32, 4, 2)),
            "COUNT_EQUAL", "same shape")
    _raises(TypeError_, lambda: gg.count_equal(ctx, f16, f16), "COUNT_EQUAL", "f16")
    _raises(TypeError_, lambda: gg.cumsum(ctx, f16), "CUMSUM")
    _raises(GGMLError, lambda: gg.sum_rows(ctx, None), "SUM_ROWS", "missing")


def test_norm_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 3, 4)
    gg.set_name(a, "act")
    h = gg.new_tensor_2d(ctx, gg.TYPE_F16, 8, 3)
    t = gg.transpose(ctx, a)                       # rows not packed
    for fn, op in ((gg.norm, "NORM"), (gg.rms_norm, "RMS_NORM"), (gg.l2_norm, "L2_NORM")):
        _raises(TypeError_, lambda: fn(ctx, h, 1e-6), op, "f16")
        _raises(ParamError, lambda: fn(ctx, a, -1.0), op, "eps")
        _raises(ParamError, lambda: fn(ctx, a, float("nan")), op, "eps")
    gg.norm(ctx, t, 1e-6)                          # strided rows are fine for norm and l2_norm
    gg.l2_norm(ctx, t, 1e-6)
    _raises(ShapeError, lambda: gg.rms_norm(ctx, t, 1e-6), "RMS_NORM", "packed")
    _raises(ShapeError, lambda: gg.rms_norm_back(ctx, a, gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 3, 2),
                                                 1e-6), "RMS_NORM_BACK", "same shape")
    _raises(TypeError_, lambda: gg.rms_norm_back(ctx, h, h, 1e-6), "RMS_NORM_BACK")
    _raises(ShapeError, lambda: gg.rms_norm_back(ctx, t, t, 1e-6), "RMS_NORM_BACK", "packed")
    _raises(ParamError, lambda: gg.group_norm(ctx, a, 0, 1e-6), "GROUP_NORM", "n_groups")
    _raises(TypeError_, lambda: gg.group_norm(ctx, h, 2, 1e-6), "GROUP_NORM")
    _raises(ShapeError, lambda: gg.group_norm(ctx, t, 2, 1e-6), "GROUP_NORM", "packed")


# --- (c) Numba kernels == reference ----------------------------------------------------------------

@pytest.mark.parametrize("case", FAST_ALL, ids=str)
def test_numba_matches_reference(numba_backends, case):
    from pyggml.backends.reference import ReferenceBackend
    ref = ReferenceBackend()
    for be in numba_backends.values():
        if not be.supports_op(harness.build_graph(case)[1]):
            pytest.skip(f"no numba kernel for {case.op}")
        r = harness.run_test(case, be, ref, seed=1)
        assert r.status == "OK", f"{be.n_threads} threads: {case}: {r.status} {r.message}"


def test_numba_kernels_cover_the_family():
    from pyggml.backends.numba_cpu.kernels import KERNELS
    for name in OPS:
        assert name in KERNELS and KERNELS[name].variants, f"no Numba kernel for {name}"
