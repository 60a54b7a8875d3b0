"""Defects the generated-graph fuzzer found (pyggml fuzz), each pinned by the smallest graph."""
from __future__ import annotations

import pytest

import pyggml as gg
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.errors import ShapeError
from pyggml.ops.case import Case
from pyggml.testing import harness


def _both(build):
    """Run a one-op case on the reference and the CPU backend through the harness."""
    from pyggml.compute import backend_cpu_init
    be = backend_cpu_init(2)
    try:
        return harness.run_test(Case("X", {}, build), be, ReferenceBackend())
    finally:
        be.free()


def test_permute_and_transpose_of_an_empty_tensor():
    """ggml views empty tensors; the view's size check refused a 0-byte parent."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 7, 2, 5)
    assert gg.permute(ctx, a, 2, 0, 1, 3).ne == [7, 2, 0, 5]
    assert gg.transpose(ctx, a).ne == [7, 0, 2, 5]


def test_binary_op_of_empty_tensors_broadcast_with_zeros_elsewhere():
    """a ne=[0,5,7,2] + b ne=[0,0,6,1]: the reference's broadcast tiled b into the wrong shape."""
    def build(ctx):
        a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 5, 7, 2)
        b = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 0, 6, 1)
        return gg.add(ctx, a, b)
    r = _both(build)
    assert r.status == "OK", r.message


def test_im2col_of_an_empty_input_is_all_padding():
    """An input with IW = IH = 0 and padding 3: every column is padding (zeros)."""
    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 1, 1, 5, 5)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 0, 5, 5)
        return gg.im2col(ctx, k, x, 1, 1, 3, 3, 1, 1, True, gg.TYPE_F32)
    r = _both(build)
    assert r.status == "OK", r.message


def test_out_prod_with_an_empty_broadcast_dim_is_a_clear_error():
    """It raised ZeroDivisionError while building (ggml divides by a.ne[2] too)."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 32, 1, 0, 1)
    b = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 1, 0, 1)
    with pytest.raises(ShapeError, match="OUT_PROD.*empty"):
        gg.out_prod(ctx, a, b)


def test_soft_max_built_with_sinks_checks_them():
    """Built with src[2] directly (not through soft_max_add_sinks), a [2,2,2,2] sinks tensor
    went unchecked: the CPU backend read its first row, the reference failed to broadcast."""
    from pyggml.ops.registry import OPS
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 16, 16, 2, 2)
    sinks = gg.new_tensor_4d(ctx, gg.TYPE_F32, 2, 2, 2, 2)
    with pytest.raises(ShapeError, match="sinks must be a vector"):
        OPS["SOFT_MAX"].build(ctx, [a, None, sinks], dict(scale=1.0, max_bias=0.0))
    ok = gg.new_tensor_1d(ctx, gg.TYPE_F32, 2)
    assert OPS["SOFT_MAX"].build(ctx, [a, None, ok], dict(scale=1.0, max_bias=0.0)).src[2] is ok


# --- pyggml fuzz --examples 20000 --seed 301 (issue #16) -----------------------------------------

def _case(build, init=None):
    return Case("X", {}, build, init=init)


def _run(build, init=None, backend=None):
    """The case on `backend` (default: the CPU backend at 2 threads) against the reference."""
    if backend is not None:
        return harness.run_test(_case(build, init), backend, ReferenceBackend())
    from pyggml.compute import backend_cpu_init
    be = backend_cpu_init(2)
    try:
        return harness.run_test(_case(build, init), be, ReferenceBackend())
    finally:
        be.free()


def _ggml():
    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        pytest.skip("libggml-python is not installed")
    from pyggml.testing.ggml_backend import GGMLBackend
    return GGMLBackend(1)


def _rows(values):
    """An init writing `values` (a 2-D list, one list per row) into every leaf."""
    import numpy as np
    arr = np.asarray(values, np.float64)

    def init(leaf, rng):
        return arr.reshape(leaf.ne[::-1])
    return init


def test_flash_attn_ext_with_empty_sinks_is_a_clear_error():
    """Examples 3493, 9398, 9939, 19938 (SIGSEGV under guard pages): sinks ne=[4,0,0,0] passed
    ggml's check (ne[0] == n_head only) and the kernel read 4 floats of a 0-byte tensor."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    q = gg.new_tensor_4d(ctx, gg.TYPE_F32, 32, 3, 4, 2)
    k = gg.new_tensor_4d(ctx, gg.TYPE_F16, 32, 0, 4, 2)
    out = gg.flash_attn_ext(ctx, q, k, k, None, 1.0, 0.0, 0.0)
    with pytest.raises(ShapeError, match="sinks is empty"):
        gg.flash_attn_ext_add_sinks(out, gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 0, 0, 0))
    gg.flash_attn_ext_add_sinks(out, gg.new_tensor_1d(ctx, gg.TYPE_F32, 4))    # still fine


def test_empty_results_need_no_kernel():
    """An empty CPY into Q5_0 from a permuted source (no kernel for that layout): ggml skips
    empty nodes, so the CPU backend must not refuse it (it said 'does not support')."""
    def build(ctx):
        a = gg.permute(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 3, 2, 256), 3, 1, 2, 0)
        return gg.cpy(ctx, a, gg.new_tensor_4d(ctx, gg.TYPE_Q5_0, 256, 2, 3, 0))
    r = _run(build)
    assert r.status == "OK", r.message


def test_mul_mat_id_with_an_empty_b_row_dim_is_a_clear_error():
    """ids.ne[0] % b.ne[1] with b.ne[1] = 0: ZeroDivisionError while building (ggml: SIGFPE)."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    as_ = gg.new_tensor_3d(ctx, gg.TYPE_F32, 96, 32, 3)
    b = gg.new_tensor_3d(ctx, gg.TYPE_F32, 96, 0, 1)
    ids = gg.new_tensor_2d(ctx, gg.TYPE_I32, 0, 1)
    with pytest.raises(ShapeError, match="MUL_MAT_ID.*does not divide"):
        gg.mul_mat_id(ctx, as_, b, ids)


@pytest.mark.parametrize("make", [
    lambda ctx: gg.pool_1d(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 1, 2, 3), gg.OP_POOL_AVG, 3, 1, 2),
    lambda ctx: gg.pool_1d(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 1, 2, 3), gg.OP_POOL_MAX, 3, 1, 2),
    lambda ctx: gg.pool_2d(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 0, 3, 1), gg.OP_POOL_AVG,
                           1, 1, 1, 1, 1, 1),
    lambda ctx: gg.pool_2d(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 0, 3, 1), gg.OP_POOL_MAX,
                           1, 1, 1, 1, 1, 1),
    lambda ctx: gg.conv_2d(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 2, 2, 3, 2),
                           gg.new_tensor_4d(ctx, gg.TYPE_F32, 2, 0, 3, 2), 3, 5, 5, 5, 2, 4),
    lambda ctx: gg.conv_transpose_1d(ctx, gg.new_tensor_4d(ctx, gg.TYPE_F32, 5, 1, 1, 1),
                                     gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 1, 1, 1), 2, 0, 1),
], ids=["pool_1d_avg", "pool_1d_max", "pool_2d_avg", "pool_2d_max", "conv_2d", "conv_transpose_1d"])
def test_windows_over_an_empty_input_are_all_padding(make):
    """The references indexed an empty axis (IndexError) where the CPU backend (and ggml)
    return the padding value: the output is not empty, the input is."""
    r = _run(make)
    assert r.status == "OK", r.message


def test_max_pool_keeps_nan_in_ggml_order():
    """ggml folds res = std::max(v, res): a NaN stays only until a later sample replaces it.
    The reference's np.max kept every NaN, the kernel's max() dropped them."""
    import numpy as np
    nan = float("nan")

    def build(ctx):
        return gg.pool_1d(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2), gg.OP_POOL_MAX, 2, 2, 0)
    init = _rows([[nan, 1.0, 1.0, nan], [nan, nan, -2.0, 3.0]])
    r = _run(build, init)
    assert r.status == "OK", r.message
    ctx = gg.init(mem_size=1 << 20)
    out = build(ctx)
    gg.data.write(out.src[0], init(out.src[0], None))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    gg.graph_compute_with_ctx(ctx, gf, 1)
    got = gg.to_numpy(out)
    assert got[0, 0] == 1.0 and np.isnan(got[0, 1]) and np.isnan(got[1, 0]) and got[1, 1] == 3.0


@pytest.mark.parametrize("op", ["norm", "rms_norm", "l2_norm"])
def test_norms_with_eps_0_of_a_zero_row_give_nan_not_an_exception(op):
    """Examples 680, 132, 11330...: 1 / sqrtf(0) raised ZeroDivisionError in the kernel
    (error 7); ggml's float math gives inf, and the row 0 * inf = NaN on both backends."""
    def build(ctx):
        return getattr(gg, op)(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2), 0.0)
    r = _run(build, _rows([[0.0] * 4, [1.0, 2.0, 3.0, 4.0]]))
    assert r.status == "OK", r.message


_BIG = [[7.95e29, 1e-3, 2.0, -1.0], [3e38, -3e38, 1.0, 0.5]]


@pytest.mark.parametrize("op", ["norm", "rms_norm", "l2_norm"])
def test_norm_squares_overflow_in_float32_as_in_ggml(op):
    """Examples 14222, 19097, 1233, 17780: ggml squares in float32, so a row with a value
    past ~1.8e19 normalizes to 0 (or NaN); the float64 reference gave O(1) values."""
    def build(ctx):
        return getattr(gg, op)(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2), 1e-6)
    r = _run(build, _rows(_BIG))
    assert r.status == "OK", r.message
    r = _run(build, _rows(_BIG), backend=_ggml())
    assert r.status == "OK", r.message


def test_rms_norm_back_of_one_value_rows_follows_ggml_float32_steps():
    """Examples 2243, 17138: with ne0 = 1 the result is the cancellation dz - dz*x^2/(x^2+eps),
    which only ggml's own float32 steps reproduce (float64 math differed by NMSE ~1)."""
    def build(ctx):
        return gg.rms_norm_back(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 1, 8),
                                gg.new_tensor_2d(ctx, gg.TYPE_F32, 1, 8), 1e-6)

    def init(leaf, rng):
        return rng.uniform(-10, 10, size=leaf.ne[::-1])
    r = _run(build, init)
    assert r.status == "OK", r.message
    r = _run(build, init, backend=_ggml())
    assert r.status == "OK", r.message


def test_antialiased_upscale_skips_zero_weight_infinities():
    """Example 17247: a -inf that the window gives weight 0 made the reference's matrix
    product NaN (0 * inf); ggml skips zero-weight samples."""
    import numpy as np

    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 3, 12)
        return gg.interpolate(ctx, a, 1, 2, 1, 1, gg.SCALE_MODE_BILINEAR | gg.SCALE_FLAG_ANTIALIAS)

    def init(leaf, rng):
        x = rng.uniform(-1, 1, size=(12, 3))
        x[0, 1] = x[0, 2] = x[1, 2] = -np.inf
        return x
    r = _run(build, init)
    assert r.status == "OK", r.message
    r = _run(build, init, backend=_ggml())
    assert r.status == "OK", r.message


def test_hardsigmoid_of_nan_is_zero_as_fmaxf():
    """Example 19897: ggml clamps with fminf(1, fmaxf(0, (x+3)/6)), so NaN gives 0."""
    nan = float("nan")

    def build(ctx):
        return gg.hardsigmoid(ctx, gg.new_tensor_1d(ctx, gg.TYPE_F32, 4))
    r = _run(build, _rows([[nan, 0.0, -9.0, 9.0]]))
    assert r.status == "OK", r.message


def test_ne_and_nb_cannot_be_edited_after_build():
    """ne/nb were plain lists: node.ne[1] = 5 after build made kernels read past the data."""
    import copy
    import pickle

    from pyggml.tensor import Dims
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2)
    y = gg.soft_max(ctx, a)
    for t in (a, y):
        for edit in (lambda d: d.__setitem__(1, 5), lambda d: d.append(1), lambda d: d.pop(),
                     lambda d: d.__iadd__([1])):
            with pytest.raises(ShapeError, match="read-only"):
                edit(t.ne)
            with pytest.raises(ShapeError, match="read-only"):
                edit(t.nb)
    assert y.ne == [4, 2, 1, 1] and a.nb == [4, 16, 32, 32]
    assert pickle.loads(pickle.dumps(y.ne)) == y.ne and isinstance(copy.deepcopy(y.nb), Dims)


def test_conv_padding_next_to_an_infinite_pixel_is_zero():
    """Seeds 200/201 (DIAG_MASK_INF -> CONV_2D, EXPM1 -> IM2COL): the reference zeroed padding
    as clipped_read * mask, and a clipped read of -inf times 0 is NaN."""
    import numpy as np

    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 3, 3, 2, 1)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 4, 2, 1)
        return gg.conv_2d(ctx, k, x, 1, 1, 2, 2, 1, 1)

    def init(leaf, rng):
        v = rng.uniform(-1, 1, size=leaf.ne[::-1])
        if leaf.ne[0] == 4:
            v[..., 0, 0] = -np.inf
        return v
    r = _run(build, init)
    assert r.status == "OK", r.message


def test_an_empty_view_past_its_parents_end_reads_as_empty():
    """Seed 302 example 37 (SUM of an empty row-offset view): data.read checked the view's
    offset against a 0-byte buffer although no element is read."""
    def build(ctx):
        a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 3, 2, 2, 0)
        v = gg.view_4d(ctx, a, 3, 0, 2, 0, a.nb[1], a.nb[2], a.nb[3], 2 * a.nb[1])
        return gg.sum(ctx, v)
    r = _run(build)
    assert r.status == "OK", r.message


def test_empty_broadcast_dims_of_mul_mat_and_soft_max_masks_are_clear_errors():
    """Fuzz seed 301 examples 57, 60 once empty sources were allowed: b.ne[2] % a.ne[2] and
    a.ne[2] % mask.ne[2] with a zero raised ZeroDivisionError while building (ggml: SIGFPE)."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 5, 3, 0, 1)
    b = gg.new_tensor_4d(ctx, gg.TYPE_F32, 5, 4, 0, 1)
    with pytest.raises(ShapeError, match="MUL_MAT.*broadcast"):
        gg.mul_mat(ctx, a, b)
    x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 8, 2, 0, 5)
    mask = gg.new_tensor_4d(ctx, gg.TYPE_F16, 8, 2, 0, 5)
    with pytest.raises(ShapeError, match="SOFT_MAX.*broadcast"):
        gg.soft_max_ext(ctx, x, mask, 1.0, 0.0)


def test_conv_2d_multiplies_padding_by_an_infinite_weight():
    """Seed 301 example 8565 (EXPM1 -> CONV_2D): ggml's im2col writes 0 for padding and the
    gemm multiplies it by every weight, so an inf weight over padding gives NaN; the kernel
    skipped padded taps and gave 0.0 (or -inf)."""
    import numpy as np

    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 3, 3, 2, 2)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 4, 2, 1)
        return gg.conv_2d_direct(ctx, k, x, 1, 1, 1, 1, 1, 1)

    def init(leaf, rng):
        v = rng.uniform(-1, 1, size=leaf.ne[::-1])
        if leaf.ne[0] == 3:
            v[0, 0, 0, 0] = np.inf        # top-left tap: padding for the first output row/column
        return v
    r = _run(build, init)
    assert r.status == "OK", r.message
    r = _run(build, init, backend=_ggml())
    assert r.status == "OK", r.message
    ctx = gg.init(mem_size=1 << 20)
    out = build(ctx)
    for s in out.src[:2]:
        gg.data.write(s, init(s, np.random.default_rng(0)))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    gg.graph_compute_with_ctx(ctx, gf, 1)
    assert np.isnan(gg.to_numpy(out).reshape(-1)[0])


def test_mean_of_a_row_past_flt_max_is_infinite_as_in_ggml():
    """Seed 301 example 10338 (RELU -> POOL_2D -> MEAN, a window all padding is -FLT_MAX):
    ggml stores the row sum as float (-inf past FLT_MAX) before dividing; the float64
    reference divided first and gave -9.7e37."""
    flt_max = 3.4028234663852886e38

    def build(ctx):
        return gg.mean(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2))
    rows = [[-flt_max, -flt_max, 1.0, 2.0], [1e38, 1e38, 1e38, 1e38]]
    init = _rows(rows)
    for backend in (None, _ggml()):
        r = _run(build, init, backend=backend)
        assert r.status == "OK", r.message
    import numpy as np

    from pyggml.ops.reduce import _ref_mean
    got = _ref_mean(None, [np.array(rows)], None)
    assert got[0, 0] == -np.inf and got[1, 0] == np.inf


def test_conv_3d_over_an_empty_input_axis_is_all_padding():
    """Seed 301 example 33 (RMS_NORM_BACK of an empty row -> permuted -> CONV_3D): with
    IH = 0 and padding 1 every window is padding; the reference indexed the empty axis
    (IndexError) where the CPU backend returns zeros."""
    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 1, 1, 1, 4)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 5, 0, 4, 1)
        return gg.conv_3d_direct(ctx, k, x, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4)
    r = _run(build)
    assert r.status == "OK", r.message


def test_conv_3d_multiplies_padding_by_an_infinite_weight():
    """As CONV_2D (example 8565): ggml's CONV_3D is im2col with 0 for padding then a gemm, so an
    inf weight over padding gives NaN; the kernel skipped padded taps, the reference made
    NaN of a clipped read of inf times its 0 mask."""
    import numpy as np

    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 3, 3, 3, 2)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 4, 3, 1)
        return gg.conv_3d_direct(ctx, k, x, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2)

    def init(leaf, rng):
        v = rng.uniform(-1, 1, size=leaf.ne[::-1])
        if leaf.ne[0] == 3:
            v[0, 0, 0, 0] = np.inf            # a corner tap: padding for the first outputs
        else:
            v[0, 0, 0, 3] = -np.inf           # an input corner: padding reads clip to it
        return v
    r = _run(build, init)
    assert r.status == "OK", r.message
    r = _run(build, init, backend=_ggml())
    assert r.status == "OK", r.message


def test_cross_entropy_loss_of_no_rows_is_nan_not_an_exception():
    """Seed 301 example 240: logits ne=[2,3,0,3] (no rows) made the kernel divide by nr = 0
    (error 7); ggml's sum * (-1.0f / nr) is 0 * -inf = NaN, as the reference's."""
    def build(ctx):
        a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 2, 3, 0, 3)
        b = gg.new_tensor_4d(ctx, gg.TYPE_F32, 2, 3, 0, 3)
        return gg.cross_entropy_loss(ctx, a, b)
    r = _run(build)
    assert r.status == "OK", r.message


def test_cross_entropy_loss_of_rows_of_no_values_is_zero():
    """Seed 301 example 607: logits ne=[0,3,2,1] (rows of no values): the reference's max over
    an empty row raised; ggml sums nothing per row and gives -0."""
    def build(ctx):
        a = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 3, 2, 1)
        b = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 3, 2, 1)
        return gg.cross_entropy_loss(ctx, a, b)
    r = _run(build)
    assert r.status == "OK", r.message


def test_cross_entropy_loss_overflows_in_float32_as_ggml():
    """Seed 301 example 5288: a padded max POOL_1D gives -FLT_MAX logits and the labels leaf
    holds values beyond 1, so ggml's float32 (x - max - lse) * label is -inf in one row and
    +inf in another: NaN. The reference multiplied in float64 (no overflow) and gave inf."""
    import numpy as np

    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 2)
        a.name = "logits"
        b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 2)
        b.name = "labels"
        return gg.cross_entropy_loss(ctx, a, b)

    def init(leaf, rng):
        v = rng.uniform(-1, 1, size=(2, 8))
        v[:, 0] = -np.finfo(np.float32).max if leaf.name == "logits" else (2.0, -2.0)
        return v
    for backend in (None, _ggml()):
        r = _run(build, init, backend=backend)
        assert r.status == "OK", r.message


def test_im2col_3d_of_an_empty_input_depth_is_all_padding():
    """Seed 301 example 1150: input ne=[20,20,0,3] with padding 3: the reference's patch
    gather (shared with CONV_3D) indexed the empty axis."""
    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 3, 3, 3, 3)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 20, 20, 0, 3)
        return gg.im2col_3d(ctx, k, x, 1, 3, 1, 1, 3, 3, 3, 3, 3, 1, gg.TYPE_F32)
    r = _run(build)
    assert r.status == "OK", r.message


_EX1588 = ('[{"case":"MUL_MAT(type_a=q8_0,type_b=f32,m=16,n=1,k=32,bs=[1,1],nr=[1,1],'
           'per=[0,1,2,3],k_v=0,o=1,src_overlap=0)","srcs":[{"leaf":[8,[32,3,1,1],"a",["cont"]]},'
           '{"leaf":[0,[32,1,1,1],"b",["pad",1,1]]}],"hints":{}}]')


def test_mul_mat_judged_with_activations_rounded_as_ggml():
    """Seed 301 example 1588: q8_0 weights [32, 3] times one row whose dots nearly cancel:
    ggml's CPU rounds b to Q8_0 first, which alone puts it (and the numba kernel, 2e-8 from
    ggml) 1e-3 NMSE from the exact reference. The fuzzer's single-op rule now also takes the
    reference with ggml's rounding of the activations, and a wrong product still fails."""
    import numpy as np

    from pyggml.testing import fuzz
    spec = fuzz.GraphSpec.from_json(_EX1588)
    r = fuzz.Runner((1,))
    try:
        assert r.check(spec, 301).status == "OK"
        ctx = gg.init(mem_size=1 << 20, no_alloc=True)
        gf = gg.new_graph(ctx)
        (node,) = fuzz.build_spec(ctx, spec)
        gg.build_forward_expand(gf, node)
        fuzz.harness.alloc_guarded(gf)
        rng = np.random.default_rng(301)
        for leaf in gf.leafs:
            gg.data.write(leaf, fuzz.harness.default_values(leaf, rng))
        r.backends[0].graph_compute(gf)
        tpl = fuzz.template(spec.nodes[0]["case"])
        assert fuzz._same_op_result(tpl, node, "node 0")
        got = gg.data.read(node)
        gg.data.write(node, got * np.array([1.0, 1.2, 1.0]))        # one output 20% off
        assert not fuzz._same_op_result(tpl, node, "node 0")
    finally:
        r.free()
    rg = fuzz.check(spec, [_ggml()], ReferenceBackend(), 301)     # real ggml passes the same rule
    assert rg.status == "OK", rg.message


def test_col2im_1d_of_no_columns_is_zeros():
    """Seed 301 example 2680: cols [24, 0] (T_in = 0), K = 6, s0 = 3, p0 = 1 gives a signal
    [1, 4]; ggml and the kernel add nothing (zeros), the reference's strided slice wrapped
    around (a broadcast error)."""
    def build(ctx):
        return gg.col2im_1d(ctx, gg.new_tensor_2d(ctx, gg.TYPE_BF16, 24, 0), 3, 4, 1)
    r = _run(build)
    assert r.status == "OK", r.message
    r = _run(build, backend=_ggml())
    assert r.status == "OK", r.message


def test_gated_delta_net_with_q_of_no_sequences_is_a_clear_error():
    """Seed 301 example 2844: q/k ne[3] = 0 (no sequences) made the build take a modulo by 0
    (ZeroDivisionError; ggml's C would raise SIGFPE)."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    qk = [gg.new_tensor_4d(ctx, gg.TYPE_F32, 32, 4, 5, 0) for _ in range(2)]
    v = gg.new_tensor_4d(ctx, gg.TYPE_F32, 32, 4, 5, 0)
    g = gg.new_tensor_4d(ctx, gg.TYPE_F32, 1, 4, 5, 0)
    beta = gg.new_tensor_4d(ctx, gg.TYPE_F32, 1, 4, 5, 0)
    state = gg.new_tensor_4d(ctx, gg.TYPE_F32, 32, 32, 4, 0)
    with pytest.raises(ShapeError, match="GATED_DELTA_NET.*no sequences"):
        gg.gated_delta_net(ctx, *qk, v, g, beta, state)


def test_conv_transpose_2d_of_an_empty_input_is_zeros():
    """Seed 301 examples 6498, 6739: input [0, 0, Cin, N] with a 5x5 kernel at stride 2 gives
    a 3x3 output of zeros in ggml and the kernel; the reference's strided slice wrapped."""
    def build(ctx):
        k = gg.new_tensor_4d(ctx, gg.TYPE_F32, 5, 5, 1, 2)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 0, 0, 2, 1)
        return gg.conv_transpose_2d_p0(ctx, k, x, 2)
    r = _run(build)
    assert r.status == "OK", r.message
    r = _run(build, backend=_ggml())
    assert r.status == "OK", r.message


def test_a_drawn_node_too_big_for_the_machine_is_turned_away():
    """Seed 301 example 19410 chained a 30000-value CROSS_ENTROPY_LOSS_BACK into DIAG: a
    [30000, 30000] result, 3.6 GB per backend, 24 GB in all; the OOM killer ended the run
    (SIGKILL). The generator now turns such a node away as it does one that does not build."""
    from pyggml.tensor import nbytes
    from pyggml.testing import fuzz
    r = fuzz.Runner((1,))
    try:
        spec = r.example(301, 19410, r.ops(None), 4)
    finally:
        r.free()
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    built = fuzz.build_spec(ctx, spec)
    assert built and max(nbytes(t) for t in built) <= fuzz.MAX_NODE_BYTES
