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
