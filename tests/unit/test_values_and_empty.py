"""Values that do not fit a tensor's type are errors; empty tensors behave the same on both
backends and as in real ggml."""
import numpy as np
import pytest

import pyggml as gg
from pyggml import DataError
from pyggml import ShapeError
from pyggml.testing import ggml_lib

BACKENDS = ["reference", "numba"]


@pytest.fixture
def ctx():
    return gg.init(mem_size=4 << 20)


@pytest.mark.parametrize("arr, type", [
    (np.array([2 ** 40]), None),                       # int64 -> I32 by default
    (np.array([-2 ** 31 - 1]), gg.TYPE_I32),
    (np.array([300]), gg.TYPE_I8),
    (np.array([1.0, np.nan]), gg.TYPE_I32),
    (np.array([np.inf]), gg.TYPE_I16),
    (np.array([3e9]), gg.TYPE_I32),
])
def test_from_numpy_refuses_values_the_type_cannot_hold(ctx, arr, type):
    used = ctx.used
    with pytest.raises(DataError, match="does not fit|cannot be stored"):
        gg.from_numpy(ctx, arr, type=type)
    assert ctx.used == used                              # no tensor left behind


def test_from_numpy_integer_rules(ctx):
    t = gg.from_numpy(ctx, np.array([2 ** 31 - 1, -2 ** 31, 7]))
    assert gg.to_numpy(t).tolist() == [2 ** 31 - 1, -2 ** 31, 7]
    # floats into integers truncate toward zero, as a C cast
    assert gg.to_numpy(gg.from_numpy(ctx, np.array([2.9, -2.9]), type=gg.TYPE_I32)).tolist() == [2, -2]
    # float types follow IEEE rounding: too large is inf, as ggml_fp32_to_fp16
    assert np.isinf(gg.to_numpy(gg.from_numpy(ctx, np.array([1e6], np.float32), type=gg.TYPE_F16)))


def test_setters_refuse_values_that_do_not_fit(ctx):
    t = gg.new_tensor_1d(ctx, gg.TYPE_I32, 4)
    for fn in (lambda: gg.set_i32(t, 2 ** 40), lambda: gg.set_i32_1d(t, 0, 2 ** 40),
               lambda: gg.set_f32(t, float("nan")), lambda: gg.set_f32_1d(t, 1, 1e12)):
        with pytest.raises(DataError):
            fn()
    i8 = gg.new_tensor_1d(ctx, gg.TYPE_I8, 2)
    with pytest.raises(DataError):
        gg.set_i32_1d(i8, 0, 200)


def test_to_numpy_of_empty_tensors(ctx):
    assert gg.to_numpy(gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 0)).shape == (0, 8)
    assert gg.to_numpy(gg.new_tensor_3d(ctx, gg.TYPE_F16, 0, 3, 1)).shape == (3, 0)
    assert gg.to_numpy(gg.new_tensor_1d(ctx, gg.TYPE_Q4_0, 0)).shape == (0,)


def _empty_rows(op):
    def build(c):
        a = gg.new_tensor_2d(c, gg.TYPE_F32, 0, 3)
        if op in ("rms_norm", "norm"):
            return getattr(gg, op)(c, a, 1e-5)
        return getattr(gg, op)(c, a)
    return build


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["soft_max", "rms_norm", "norm", "argmax"])
def test_rows_of_no_values_agree_with_ggml(backend, op):
    """ggml skips empty results, and argmax of an empty row is 0 (its loop never runs)."""
    c = gg.init(mem_size=1 << 20)
    y = _empty_rows(op)(c)
    gf = gg.new_graph(c)
    gg.build_forward_expand(gf, y)
    gg.backend_graph_compute(gg.backend_init_by_name(backend, 2), gf)
    got = gg.to_numpy(y)
    if op == "argmax":
        assert got.tolist() == [0, 0, 0]
    else:
        assert got.shape == (3, 0)
    if ggml_lib.available():
        with ggml_lib.Mirror(y) as m:
            m.compute(1)
            np.testing.assert_array_equal(ggml_lib.read(m.ptr(y)).reshape(got.shape), got)


def test_transpose_and_cont_of_an_empty_tensor(ctx):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 0, 3)
    y = gg.cont(ctx, gg.transpose(ctx, a))
    assert y.ne[:2] == [3, 0]
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    gg.graph_compute_with_ctx(ctx, gf, 1)
    assert gg.to_numpy(y).shape == (0, 3)


def test_mul_mat_of_rows_of_no_values_says_so(ctx):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 0, 3)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 0, 2)
    with pytest.raises(ShapeError, match=r"ne\[0\] = 0") as ei:
        gg.mul_mat(ctx, a, b)
    assert "transposed (nb" not in str(ei.value)


@pytest.mark.parametrize("ne, shown", [
    ([256, 0, 1, 1], [256, 0]), ([0, 1, 1, 1], [0]), ([4, 1, 1, 0], [4, 1, 1, 0]),
    ([4, 3, 1, 1], [4, 3]), ([1, 1, 1, 1], [1]), ([5, 1, 2, 1], [5, 1, 2]),
])
def test_error_messages_show_empty_tensors_as_empty(ne, shown):
    """ggml's n_dims rule stops at the last dim > 1, so [256, 0, 1, 1] printed as [256]: an
    empty tensor looked like a full row in an error message."""
    from pyggml.errors import describe
    t = gg.new_tensor(gg.init(mem_size=1 << 16, no_alloc=True), gg.TYPE_F32, 4, ne)
    assert describe(t).endswith(f"ne={shown}")
    assert f"ne={shown}" in repr(t)


def test_a_shape_error_names_the_empty_dim(ctx):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 256, 0)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 128, 4)
    with pytest.raises(ShapeError, match=r"ne=\[256, 0\]"):
        gg.add(ctx, b, a)
