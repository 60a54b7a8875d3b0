"""Misuse of the parity ops (issue 20) raises a GGMLError subclass naming the op, where ggml
asserts (ggml.c's constructors, ggml-cpu's kernels); good shapes give ggml's result shapes."""
from __future__ import annotations

import pytest

import pyggml as gg
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.testing.asserts import assert_op_error
from pyggml.testing.asserts import named_tensor

_t = named_tensor
_raises = assert_op_error


@pytest.fixture
def ctx():
    return gg.init(mem_size=16 << 20, no_alloc=True)


def test_fill_tri_diag_solve_tri(ctx):
    a = _t(ctx, "f32", 5, 5, 2)
    assert gg.fill(ctx, a, 2.0).ne == [5, 5, 2, 1]
    _raises(TypeError_, "FILL", gg.fill, ctx, _t(ctx, "i32", 5), 1.0)
    _raises(ShapeError, "FILL", gg.fill, ctx, gg.transpose(ctx, a), 1.0)
    assert gg.tri(ctx, a, gg.TRI_TYPE_LOWER).ne == [5, 5, 2, 1]
    _raises(ShapeError, "TRI", gg.tri, ctx, _t(ctx, "f32", 5, 4), gg.TRI_TYPE_LOWER)
    _raises(ParamError, "TRI", gg.tri, ctx, a, 7)
    _raises(TypeError_, "TRI", gg.tri, ctx, _t(ctx, "f16", 5, 5), 0)
    assert gg.diag(ctx, _t(ctx, "f32", 6, 1, 3)).ne == [6, 6, 3, 1]
    _raises(ShapeError, "DIAG", gg.diag, ctx, _t(ctx, "f32", 6, 2))
    b = _t(ctx, "f32", 3, 5, 2)
    assert gg.solve_tri(ctx, a, b).ne == [3, 5, 2, 1]
    _raises(ShapeError, "SOLVE_TRI", gg.solve_tri, ctx, a, _t(ctx, "f32", 3, 4, 2))
    _raises(ShapeError, "SOLVE_TRI", gg.solve_tri, ctx, a, _t(ctx, "f32", 3, 5, 3))
    _raises(ShapeError, "SOLVE_TRI", gg.solve_tri, ctx, _t(ctx, "f32", 5, 4, 2), b)
    _raises(ParamError, "SOLVE_TRI", gg.solve_tri, ctx, a, b, True, False, False)


def test_roll_pad_reflect(ctx):
    a = _t(ctx, "f32", 10, 5, 4, 3)
    assert gg.roll(ctx, a, 3, -2, 1, -1).ne == [10, 5, 4, 3]
    _raises(ParamError, "ROLL", gg.roll, ctx, a, 10, 0, 0, 0)
    _raises(ParamError, "ROLL", gg.roll, ctx, a, 0, 0, 0, -3)
    _raises(ShapeError, "ROLL", gg.roll, ctx, gg.transpose(ctx, a), 0, 0, 0, 0)
    _raises(TypeError_, "ROLL", gg.roll, ctx, _t(ctx, "f16", 4, 4), 1, 0, 0, 0)
    assert gg.pad_reflect_1d(ctx, a, 9, 2).ne == [21, 5, 4, 3]
    _raises(ParamError, "PAD_REFLECT_1D", gg.pad_reflect_1d, ctx, a, 10, 0)
    _raises(ParamError, "PAD_REFLECT_1D", gg.pad_reflect_1d, ctx, a, -1, 0)
    _raises(ShapeError, "PAD_REFLECT_1D", gg.pad_reflect_1d, ctx, gg.transpose(ctx, a), 1, 1)


def test_convs(ctx):
    k, x = _t(ctx, "f32", 3, 3, 1, 4), _t(ctx, "f32", 9, 8, 4, 2)
    assert gg.conv_2d_dw_direct(ctx, k, x, 2, 1, 1, 0, 1, 1).ne == [5, 6, 4, 2]
    _raises(ShapeError, "CONV_2D_DW", gg.conv_2d_dw_direct, ctx, _t(ctx, "f32", 3, 3, 1, 3), x,
            1, 1, 0, 0, 1, 1)
    _raises(ShapeError, "CONV_2D_DW", gg.conv_2d_dw_direct, ctx, _t(ctx, "f32", 3, 3, 2, 4), x,
            1, 1, 0, 0, 1, 1)
    _raises(TypeError_, "CONV_2D_DW", gg.conv_2d_dw_direct, ctx, _t(ctx, "q8_0", 32, 3, 1, 4),
            x, 1, 1, 0, 0, 1, 1)
    _raises(ParamError, "CONV_2D_DW", gg.conv_2d_dw_direct, ctx, k, x, 0, 1, 0, 0, 1, 1)
    kt = _t(ctx, "f16", 3, 3, 5, 4)
    assert gg.conv_transpose_2d_p0(ctx, kt, x, 2).ne == [19, 17, 5, 2]
    _raises(ShapeError, "CONV_TRANSPOSE_2D", gg.conv_transpose_2d_p0, ctx,
            _t(ctx, "f16", 3, 3, 5, 3), x, 1)
    _raises(ParamError, "CONV_TRANSPOSE_2D", gg.conv_transpose_2d_p0, ctx, kt, x, 0)
    _raises(TypeError_, "CONV_TRANSPOSE_2D", gg.conv_transpose_2d_p0, ctx, kt,
            _t(ctx, "f16", 9, 8, 4), 1)
    k3, x3 = _t(ctx, "f32", 3, 3, 3, 6), _t(ctx, "f32", 10, 10, 10, 4)
    assert gg.conv_3d_direct(ctx, k3, x3, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2, 3).ne == [8, 8, 8, 6]
    _raises(ShapeError, "CONV_3D", gg.conv_3d_direct, ctx, k3, x3, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2,
            3, 3)
    _raises(ShapeError, "CONV_3D", gg.conv_3d_direct, ctx, k3, _t(ctx, "f32", 2, 10, 10, 4),
            1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2, 3)
    _raises(ParamError, "CONV_3D", gg.conv_3d_direct, ctx, k3, x3, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0,
            2, 3)
    assert gg.im2col_3d(ctx, k3, x3, 2, 1, 1, 1, 0, 0, 0, 1, 1, 1, gg.TYPE_F16).ne == \
        [54, 8, 8, 16]
    _raises(ParamError, "IM2COL_3D", gg.im2col_3d, ctx, k3, x3, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1,
            gg.TYPE_F32)
    _raises(ParamError, "IM2COL_3D", gg.im2col_3d, ctx, k3, x3, 2, 1, 1, 1, 0, 0, 0, 1, 1, 1,
            gg.TYPE_Q8_0)
    _raises(ShapeError, "IM2COL_3D", gg.im2col_3d, ctx, k3, _t(ctx, "f32", 2, 10, 10, 4), 2,
            1, 1, 1, 0, 0, 0, 1, 1, 1, gg.TYPE_F32)
    cols = _t(ctx, "f32", 12, 7)
    assert gg.col2im_1d(ctx, cols, 2, 3, 0).ne == [16, 3, 1, 1]
    _raises(ShapeError, "COL2IM_1D", gg.col2im_1d, ctx, cols, 2, 5, 0)
    _raises(ParamError, "COL2IM_1D", gg.col2im_1d, ctx, cols, 0, 3, 0)
    _raises(ShapeError, "COL2IM_1D", gg.col2im_1d, ctx, cols, 1, 3, 9)
    _raises(ShapeError, "COL2IM_1D", gg.col2im_1d, ctx, _t(ctx, "f32", 12, 7, 2), 2, 3, 0)


def test_recurrences(ctx):
    S, H, T = 4, 2, 6

    def x(n="x", t=T):
        return _t(ctx, "f32", S, H, t, name=n)
    s = _t(ctx, "f32", S * S * H, 2, name="s")
    assert gg.rwkv_wkv6(ctx, x(), x(), x(), _t(ctx, "f32", S, H), x(), s).ne == [8, 14, 1, 1]
    _raises(ShapeError, "RWKV_WKV6", gg.rwkv_wkv6, ctx, x(), x(t=5), x(), _t(ctx, "f32", S, H),
            x(), s)
    _raises(ShapeError, "RWKV_WKV6", gg.rwkv_wkv6, ctx, x(), x(), x(), _t(ctx, "f32", S, 3), x(),
            s)
    _raises(ShapeError, "RWKV_WKV6", gg.rwkv_wkv6, ctx, x(), x(), x(), _t(ctx, "f32", S, H), x(),
            _t(ctx, "f32", S * S * H, 4))                      # 6 tokens into 4 sequences
    assert gg.gated_linear_attn(ctx, x(), x(), x(), x(), s, 0.5).ne == [8, 14, 1, 1]
    _raises(ShapeError, "GATED_LINEAR_ATTN", gg.gated_linear_attn, ctx, x(), x(), x(), x(),
            _t(ctx, "f32", S * S, 2), 0.5)
    _raises(TypeError_, "GATED_LINEAR_ATTN", gg.gated_linear_attn, ctx, x(), x(), x(),
            _t(ctx, "f16", S, H, T), s, 0.5)
    assert gg.rwkv_wkv7(ctx, x(), x(), x(), x(), x(), x(), s).ne == [8, 14, 1, 1]
    _raises(ShapeError, "RWKV_WKV7", gg.rwkv_wkv7, ctx, x(), x(), x(), x(), x(),
            gg.transpose(ctx, _t(ctx, "f32", H, S, T)), s)


def test_gated_delta_net(ctx):
    S, H, T, N = 8, 4, 3, 2

    def parts(**over):
        p = dict(q=_t(ctx, "f32", S, 2, T, N), k=_t(ctx, "f32", S, 2, T, N),
                 v=_t(ctx, "f32", S, H, T, N), g=_t(ctx, "f32", 1, H, T, N),
                 beta=_t(ctx, "f32", 1, H, T, N), state=_t(ctx, "f32", S, S, H, N))
        p.update(over)
        return [p[n] for n in ("q", "k", "v", "g", "beta", "state")]
    assert gg.gated_delta_net(ctx, *parts(), 2).ne == [S * H, T * N + 2 * S * N, 1, 1]
    assert gg.gated_delta_net(ctx, *parts(g=_t(ctx, "f32", S, H, T, N))).ne[1] == T * N + S * N
    _raises(ParamError, "GATED_DELTA_NET", gg.gated_delta_net, ctx, *parts(), 0)
    _raises(ShapeError, "GATED_DELTA_NET", gg.gated_delta_net, ctx,
            *parts(q=_t(ctx, "f32", S, 3, T, N), k=_t(ctx, "f32", S, 3, T, N)))
    _raises(ShapeError, "GATED_DELTA_NET", gg.gated_delta_net, ctx,
            *parts(g=_t(ctx, "f32", 2, H, T, N)))
    _raises(ShapeError, "GATED_DELTA_NET", gg.gated_delta_net, ctx,
            *parts(state=_t(ctx, "f32", S, S, H, 1)))
    _raises(TypeError_, "GATED_DELTA_NET", gg.gated_delta_net, ctx,
            *parts(beta=_t(ctx, "f16", 1, H, T, N)))


def test_lightning_and_dsv4(ctx):
    q, k = _t(ctx, "f32", 32, 4, 3, 2), _t(ctx, "q8_0", 32, 1, 5, 2)
    w, m = _t(ctx, "f32", 4, 3, 1, 2), _t(ctx, "f16", 5, 3, 1, 1)
    assert gg.lightning_indexer(ctx, q, k, w, m).ne == [5, 3, 1, 2]
    _raises(TypeError_, "LIGHTNING_INDEXER", gg.lightning_indexer, ctx, q, k, w,
            _t(ctx, "f32", 5, 3, 1, 1))
    _raises(ShapeError, "LIGHTNING_INDEXER", gg.lightning_indexer, ctx, q, k, w,
            _t(ctx, "f16", 5, 3, 1, 3))
    _raises(ShapeError, "LIGHTNING_INDEXER", gg.lightning_indexer, ctx, q,
            _t(ctx, "f32", 32, 2, 5, 2), w, m)
    mixes, scale, base = _t(ctx, "f32", 24, 7), _t(ctx, "f32", 3), _t(ctx, "f32", 24)
    assert gg.dsv4_hc_comb(ctx, mixes, scale, base, 1e-6, 3).ne == [4, 4, 7, 1]
    _raises(ShapeError, "DSV4_HC_COMB", gg.dsv4_hc_comb, ctx, _t(ctx, "f32", 15, 7), scale,
            _t(ctx, "f32", 15), 1e-6, 3)                       # hc = 3: ggml has only hc = 4
    _raises(ParamError, "DSV4_HC_COMB", gg.dsv4_hc_comb, ctx, mixes, scale, base, 1e-6, 0)
    x = _t(ctx, "f32", 9, 4, 7)
    assert gg.dsv4_hc_pre(ctx, x, _t(ctx, "f32", 4, 7)).ne == [9, 7, 1, 1]
    _raises(ShapeError, "DSV4_HC_PRE", gg.dsv4_hc_pre, ctx, x, _t(ctx, "f32", 4, 6))
    assert gg.dsv4_hc_post(ctx, _t(ctx, "f32", 9, 7), x, _t(ctx, "f32", 4, 7),
                           _t(ctx, "f32", 4, 4, 7)).ne == [9, 4, 7, 1]
    _raises(ShapeError, "DSV4_HC_POST", gg.dsv4_hc_post, ctx, _t(ctx, "f32", 9, 7), x,
            _t(ctx, "f32", 4, 7), _t(ctx, "f32", 4, 3, 7))


def test_missing_source_is_an_error(ctx):
    with pytest.raises(GGMLError, match="SOLVE_TRI"):
        gg.get_op("SOLVE_TRI").build(ctx, [_t(ctx, "f32", 3, 3)])
