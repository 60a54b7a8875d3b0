"""Convolution and pooling ops (pyggml/ops/conv.py): the spec, real ggml, the Numba kernels.

(a) every non-slow case: the NumPy reference against real ggml's CPU (in a child process per op,
    so a GGML_ASSERT abort cannot take pytest down), within the case's threshold;
(b) every misuse raises a GGMLError subclass that names the op;
(c) ops with Numba kernels: numba == reference for 1, 2 and 3 threads;
plus ggml's composite conv_1d / conv_2d (im2col + mul_mat) against the direct convolution.
"""
from __future__ import annotations

import numpy as np
import pytest
from _cases import NO_GGML
from _cases import assert_isolated_vs_ggml
from _cases import assert_numba_matches
from _cases import op_cases
from _cases import ref_backend
from _cases import run_graph
from _cases import sample

import pyggml as gg
from pyggml.errors import ComputeError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops.conv import OP_POOL_AVG
from pyggml.ops.conv import OP_POOL_MAX
from pyggml.testing import harness as H
from pyggml.testing.asserts import assert_op_error
from pyggml.testing.asserts import named_tensor

CONV_OPS = ["IM2COL", "CONV_2D", "CONV_TRANSPOSE_1D", "POOL_1D", "POOL_2D", "SSM_CONV",
            "SSM_SCAN"]


def _cases(name, ggml=False):
    return op_cases([name], skip=(NO_GGML,) if ggml else ())


# --- (a) against real ggml ---------------------------------------------------------------------

@pytest.mark.parametrize("name", CONV_OPS)
def test_reference_matches_ggml(name, ggml):
    assert_isolated_vs_ggml(name, _cases(name, ggml=True))


# --- (c) Numba kernels ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONV_OPS)
def test_numba_matches_reference(name, numba_backends):
    from pyggml.backends.numba_cpu.kernels import KERNELS
    entry = KERNELS.get(name)
    if entry is None or not entry.variants:
        pytest.skip(f"no Numba kernel for {name}")
    assert_numba_matches(sample(_cases(name), 24), numba_backends, seed=5)


# --- composites: ggml_conv_1d / ggml_conv_2d (im2col in F16 + mul_mat) -----------------------------

def _run(build, fill):
    return gg.to_numpy(run_graph(ref_backend(), build, fill))


def _need(*names):
    for n in names:
        if not hasattr(gg, n):
            pytest.skip(f"{n} is not available yet")


def test_conv_2d_composite_equals_direct():
    _need("mul_mat", "cont", "permute", "reshape_2d", "reshape_4d")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 3, 9, 11))              # [W=11, H=9, C=3, N=2]
    k = rng.uniform(-1, 1, (4, 3, 3, 2))               # [KW=2, KH=3, IC=3, OC=4]

    def build(direct):
        def f(ctx):
            a = gg.new_tensor_4d(ctx, gg.TYPE_F16, 2, 3, 3, 4)
            gg.set_name(a, "k")
            b = gg.new_tensor_4d(ctx, gg.TYPE_F32, 11, 9, 3, 2)
            gg.set_name(b, "x")
            fn = gg.conv_2d_direct if direct else gg.conv_2d
            return fn(ctx, a, b, 2, 1, 1, 0, 1, 2)
        return f
    want = _run(build(True), dict(k=k, x=x))
    got = _run(build(False), dict(k=k, x=x))
    assert got.shape == want.shape == (2, 4, 5, 6)
    assert H.nmse(want, got) < 1e-6


def test_conv_1d_composite_matches_numpy():
    """ggml_conv_1d's final reshape is right for one sequence (N = 1), its use in practice."""
    _need("mul_mat", "reshape_2d", "reshape_3d")
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (1, 3, 20))                 # [L=20, IC=3, N=1]
    k = rng.uniform(-1, 1, (5, 3, 4))                  # [K=4, IC=3, OC=5]

    def build(ctx):
        a = gg.new_tensor_3d(ctx, gg.TYPE_F16, 4, 3, 5)
        gg.set_name(a, "k")
        b = gg.new_tensor_3d(ctx, gg.TYPE_F32, 20, 3, 1)
        gg.set_name(b, "x")
        return gg.conv_1d(ctx, a, b, 2, 1, 2)
    got = _run(build, dict(k=k, x=x)).reshape(1, 5, -1)
    kq = k.astype(np.float16).astype(np.float64)
    xq = np.pad(x.astype(np.float16).astype(np.float64), ((0, 0), (0, 0), (1, 1)))
    ol = (20 + 2 - 2 * 3 - 1) // 2 + 1
    want = np.zeros((1, 5, ol))
    for t in range(ol):
        win = xq[:, :, t * 2 + np.arange(4) * 2]           # (N, IC, K)
        want[:, :, t] = np.einsum("nck,ock->no", win, kq)
    assert got.shape == want.shape
    assert H.nmse(want, got) < 1e-6


def test_pool_semantics_are_ggmls():
    """pool_1d averages over the in-range samples; pool_2d divides by k0*k1 (padding counts)."""
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])

    def p1(op, k, s, p):
        def f(ctx):
            a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 5, 1)
            gg.set_name(a, "a")
            return gg.pool_1d(ctx, a, op, k, s, p)
        return _run(f, dict(a=x))
    assert p1(OP_POOL_AVG, 3, 2, 1).tolist() == [1.5, 3.0, 4.5]
    assert p1(OP_POOL_MAX, 3, 2, 1).tolist() == [2.0, 4.0, 5.0]
    lo = float(np.finfo(np.float32).min)
    assert p1(OP_POOL_MAX, 1, 1, 2).tolist() == [lo, lo, 1, 2, 3, 4, 5, lo, lo]

    def f2(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 2, 2)
        gg.set_name(a, "a")
        return gg.pool_2d(ctx, a, OP_POOL_AVG, 2, 2, 2, 2, 1, 1)
    got = _run(f2, dict(a=np.array([[1.0, 2.0], [3.0, 4.0]])))
    assert got.tolist() == [[0.25, 0.5], [0.75, 1.0]]


def test_ssm_scan_layout_and_snapshots():
    """y first, then K state blocks: slot 0 the final state, slot j the state j tokens earlier."""
    rng = np.random.default_rng(4)
    d_state, head_dim, n_head, n_tok, K = 4, 2, 2, 4, 3

    def build(k):
        def f(ctx):
            s = gg.new_tensor_4d(ctx, gg.TYPE_F32, d_state, head_dim, n_head, 1)
            x = gg.new_tensor_4d(ctx, gg.TYPE_F32, head_dim, n_head, n_tok, 1)
            dt = gg.new_tensor_3d(ctx, gg.TYPE_F32, n_head, n_tok, 1)
            A = gg.new_tensor_2d(ctx, gg.TYPE_F32, 1, n_head)
            B = gg.new_tensor_4d(ctx, gg.TYPE_F32, d_state, 1, n_tok, 1)
            C = gg.new_tensor_4d(ctx, gg.TYPE_F32, d_state, 1, n_tok, 1)
            ids = gg.new_tensor_1d(ctx, gg.TYPE_I32, 1)
            for t, nm in ((s, "s"), (x, "x"), (dt, "dt"), (A, "A"), (B, "B"), (C, "C"),
                          (ids, "ids")):
                gg.set_name(t, nm)
            return gg.ssm_scan(ctx, s, x, dt, A, B, C, ids, k)
        return f
    fill = dict(s=rng.uniform(-1, 1, (1, n_head, head_dim, d_state)),
                x=rng.uniform(-1, 1, (1, n_tok, n_head, head_dim)),
                dt=rng.uniform(-1, 1, (1, n_tok, n_head)), A=rng.uniform(-1, -0.5, (n_head, 1)),
                B=rng.uniform(-1, 1, (1, n_tok, 1, d_state)),
                C=rng.uniform(-1, 1, (1, n_tok, 1, d_state)), ids=np.array([0]))
    full = _run(build(K), fill)
    ny = head_dim * n_head * n_tok
    nsb = d_state * head_dim * n_head
    assert full.shape == (ny + K * nsb,)
    # the same scan over the first n_tok - j tokens ends in snapshot slot j
    for j in range(K):
        short = dict(fill)
        for nm in ("x", "dt", "B", "C"):
            short[nm] = fill[nm][:, :n_tok - j]

        def build_short(ctx, j=j):
            s = gg.new_tensor_4d(ctx, gg.TYPE_F32, d_state, head_dim, n_head, 1)
            x = gg.new_tensor_4d(ctx, gg.TYPE_F32, head_dim, n_head, n_tok - j, 1)
            dt = gg.new_tensor_3d(ctx, gg.TYPE_F32, n_head, n_tok - j, 1)
            A = gg.new_tensor_2d(ctx, gg.TYPE_F32, 1, n_head)
            B = gg.new_tensor_4d(ctx, gg.TYPE_F32, d_state, 1, n_tok - j, 1)
            C = gg.new_tensor_4d(ctx, gg.TYPE_F32, d_state, 1, n_tok - j, 1)
            ids = gg.new_tensor_1d(ctx, gg.TYPE_I32, 1)
            for t, nm in ((s, "s"), (x, "x"), (dt, "dt"), (A, "A"), (B, "B"), (C, "C"),
                          (ids, "ids")):
                gg.set_name(t, nm)
            return gg.ssm_scan(ctx, s, x, dt, A, B, C, ids, 1)
        part = _run(build_short, short)
        ny_j = head_dim * n_head * (n_tok - j)
        assert np.allclose(part[ny_j:], full[ny + j * nsb: ny + (j + 1) * nsb], atol=1e-6)
        assert np.allclose(part[:ny_j], full[:ny_j], atol=1e-6)


def test_ssm_scan_bad_sequence_id_is_an_error():
    def f(ctx):
        s = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 1, 2, 1)
        x = gg.new_tensor_4d(ctx, gg.TYPE_F32, 1, 2, 3, 1)
        dt = gg.new_tensor_3d(ctx, gg.TYPE_F32, 2, 3, 1)
        A = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2)
        B = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 1, 3, 1)
        C = gg.new_tensor_4d(ctx, gg.TYPE_F32, 4, 1, 3, 1)
        ids = gg.new_tensor_1d(ctx, gg.TYPE_I32, 1)
        gg.set_name(ids, "ids")
        return gg.ssm_scan(ctx, s, x, dt, A, B, C, ids, 1)
    with pytest.raises(ComputeError, match="SSM_SCAN"):
        _run(f, dict(ids=np.array([1])))


# --- (b) misuse ----------------------------------------------------------------------------------

_t = named_tensor
_raises = assert_op_error


def test_im2col_errors(ctx):
    k2, x2 = _t(ctx, "f16", 3, 3, 2, 4), _t(ctx, "f32", 10, 10, 2, 1)
    assert gg.im2col(ctx, k2, x2, 1, 1, 1, 1, 1, 1, True, gg.TYPE_F16).ne == [18, 10, 10, 1]
    _raises(ShapeError, "IM2COL", gg.im2col, ctx, k2, _t(ctx, "f32", 10, 10, 3), 1, 1, 0, 0, 1, 1,
            True, gg.TYPE_F32)
    _raises(ShapeError, "IM2COL", gg.im2col, ctx, _t(ctx, "f16", 3, 2, 4), _t(ctx, "f32", 10, 3),
            1, 0, 0, 0, 1, 0, False, gg.TYPE_F32)
    _raises(ShapeError, "IM2COL", gg.im2col, ctx, _t(ctx, "f16", 3, 2, 4),
            _t(ctx, "f32", 10, 2, 1, 2), 1, 0, 0, 0, 1, 0, False, gg.TYPE_F32)
    _raises(ParamError, "IM2COL", gg.im2col, ctx, k2, x2, 0, 1, 1, 1, 1, 1, True, gg.TYPE_F32)
    _raises(ParamError, "IM2COL", gg.im2col, ctx, k2, x2, 1, 1, 1, 1, 1, 0, True, gg.TYPE_F32)
    _raises(ParamError, "IM2COL", gg.im2col, ctx, k2, x2, 1, 1, 1, 1, 1, 1, True, gg.TYPE_Q8_0)
    _raises(TypeError_, "IM2COL", gg.im2col, ctx, k2, _t(ctx, "i32", 10, 10, 2), 1, 1, 1, 1, 1, 1,
            True, gg.TYPE_F32)
    _raises(ShapeError, "IM2COL", gg.im2col, ctx, k2, _t(ctx, "f32", 2, 2, 2), 1, 1, 0, 0, 1, 1,
            True, gg.TYPE_F32)


def test_conv_2d_errors(ctx):
    k, x = _t(ctx, "f32", 3, 3, 2, 4), _t(ctx, "f32", 8, 8, 2, 1)
    assert gg.conv_2d_direct(ctx, k, x, 1, 1, 0, 0, 1, 1).ne == [6, 6, 4, 1]
    _raises(ShapeError, "CONV_2D", gg.conv_2d_direct, ctx, k, _t(ctx, "f32", 8, 8, 3), 1, 1, 0, 0,
            1, 1)
    _raises(TypeError_, "CONV_2D", gg.conv_2d_direct, ctx, _t(ctx, "bf16", 3, 3, 2, 4), x, 1, 1, 0,
            0, 1, 1)
    _raises(TypeError_, "CONV_2D", gg.conv_2d_direct, ctx, k, _t(ctx, "f16", 8, 8, 2), 1, 1, 0, 0,
            1, 1)
    _raises(ParamError, "CONV_2D", gg.conv_2d_direct, ctx, k, x, 1, 0, 0, 0, 1, 1)
    _raises(ShapeError, "CONV_2D", gg.conv_2d_direct, ctx, k, _t(ctx, "f32", 2, 8, 2), 1, 1, 0, 0,
            1, 1)


def test_conv_transpose_1d_errors(ctx):
    k, x = _t(ctx, "f32", 3, 4, 2), _t(ctx, "f32", 7, 2)
    assert gg.conv_transpose_1d(ctx, k, x, 2, 0, 1).ne == [15, 4, 1, 1]
    _raises(ShapeError, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, k, _t(ctx, "f32", 7, 2, 2),
            2, 0, 1)
    _raises(ShapeError, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, k, _t(ctx, "f32", 7, 3),
            2, 0, 1)
    _raises(ShapeError, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, _t(ctx, "f32", 3, 4, 2, 2),
            x, 2, 0, 1)
    _raises(ParamError, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, k, x, 2, 1, 1)
    _raises(ParamError, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, k, x, 2, 0, 2)
    _raises(ParamError, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, k, x, 0, 0, 1)
    _raises(TypeError_, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, _t(ctx, "q8_0", 32, 4, 2),
            x, 1, 0, 1)
    _raises(TypeError_, "CONV_TRANSPOSE_1D", gg.conv_transpose_1d, ctx, k, _t(ctx, "f16", 7, 2),
            1, 0, 1)


def test_pool_errors(ctx):
    a = _t(ctx, "f32", 10, 3)
    assert gg.pool_1d(ctx, a, OP_POOL_MAX, 3, 2, 1).ne == [5, 3, 1, 1]
    _raises(ParamError, "POOL_1D", gg.pool_1d, ctx, a, 2, 3, 2, 1)
    _raises(TypeError_, "POOL_1D", gg.pool_1d, ctx, _t(ctx, "i32", 10), OP_POOL_MAX, 3, 2, 1)
    _raises(ParamError, "POOL_1D", gg.pool_1d, ctx, a, OP_POOL_MAX, 0, 2, 1)
    _raises(ShapeError, "POOL_1D", gg.pool_1d, ctx, _t(ctx, "f32", 2), OP_POOL_AVG, 5, 1, 0)
    b = _t(ctx, "f32", 6, 5, 3)
    assert gg.pool_2d(ctx, b, OP_POOL_AVG, 2, 2, 2, 2, 0, 0).ne == [3, 2, 3, 1]
    _raises(ParamError, "POOL_2D", gg.pool_2d, ctx, b, 7, 2, 2, 2, 2, 0, 0)
    _raises(ParamError, "POOL_2D", gg.pool_2d, ctx, b, OP_POOL_AVG, 2, 2, 2, -1, 0, 0)
    _raises(TypeError_, "POOL_2D", gg.pool_2d, ctx, _t(ctx, "q8_0", 32, 2), OP_POOL_AVG, 2, 2, 2, 2,
            0, 0)
    _raises(ShapeError, "POOL_2D", gg.pool_2d, ctx, b, OP_POOL_AVG, 2, 9, 2, 2, 0, 0)


def test_ssm_conv_errors(ctx):
    sx, c = _t(ctx, "f32", 6, 8, 2), _t(ctx, "f32", 3, 8)
    assert gg.ssm_conv(ctx, sx, c).ne == [8, 4, 2, 1]
    _raises(ShapeError, "SSM_CONV", gg.ssm_conv, ctx, _t(ctx, "f32", 6, 8, 2, 2), c)
    _raises(ShapeError, "SSM_CONV", gg.ssm_conv, ctx, sx, _t(ctx, "f32", 3, 8, 2))
    _raises(ShapeError, "SSM_CONV", gg.ssm_conv, ctx, sx, _t(ctx, "f32", 3, 7))
    _raises(ShapeError, "SSM_CONV", gg.ssm_conv, ctx, _t(ctx, "f32", 1, 8, 2), c)
    _raises(TypeError_, "SSM_CONV", gg.ssm_conv, ctx, _t(ctx, "f16", 6, 8, 2), c)


def test_ssm_scan_errors(ctx):
    def parts(**over):
        p = dict(s=_t(ctx, "f32", 8, 2, 4, 3), x=_t(ctx, "f32", 2, 4, 5, 3),
                 dt=_t(ctx, "f32", 4, 5, 3), A=_t(ctx, "f32", 1, 4),
                 B=_t(ctx, "f32", 8, 2, 5, 3), C=_t(ctx, "f32", 8, 2, 5, 3), ids=_t(ctx, "i32", 3))
        p.update(over)
        return [p[k] for k in ("s", "x", "dt", "A", "B", "C", "ids")]
    assert gg.ssm_scan(ctx, *parts(), 2).ne[0] == 2 * 4 * 5 * 3 + 2 * 8 * 2 * 4 * 3
    _raises(ParamError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(), 0)
    _raises(TypeError_, "SSM_SCAN", gg.ssm_scan, ctx, *parts(ids=_t(ctx, "i64", 3)), 1)
    _raises(TypeError_, "SSM_SCAN", gg.ssm_scan, ctx, *parts(x=_t(ctx, "f16", 2, 4, 5, 3)), 1)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(dt=_t(ctx, "f32", 4, 4, 3)), 1)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(B=_t(ctx, "f32", 8, 3, 5, 3),
                                                             C=_t(ctx, "f32", 8, 3, 5, 3)), 1)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(C=_t(ctx, "f32", 8, 2, 5, 2)), 1)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(A=_t(ctx, "f32", 8, 4)), 2)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(A=_t(ctx, "f32", 5, 4)), 1)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(ids=_t(ctx, "i32", 2)), 1)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(s=_t(ctx, "f32", 8, 3, 4, 3)), 1)
    xt = gg.permute(ctx, _t(ctx, "f32", 4, 2, 5, 3), 1, 0, 2, 3)
    _raises(ShapeError, "SSM_SCAN", gg.ssm_scan, ctx, *parts(x=xt), 1)


def test_op_params_layout_is_ggmls(ctx):
    k2, x2 = _t(ctx, "f16", 3, 3, 2, 4), _t(ctx, "f32", 10, 10, 2, 1)
    r = gg.im2col(ctx, k2, x2, 1, 2, 3, 4, 5, 6, True, gg.TYPE_F32)
    assert list(r.op_params[:7]) == [1, 2, 3, 4, 5, 6, 1] and r.type == gg.TYPE_F32
    p = gg.pool_2d(ctx, x2, OP_POOL_AVG, 3, 2, 2, 1, 1.0, 0.0)
    assert list(p.op_params[:7]) == [OP_POOL_AVG, 3, 2, 2, 1, 1, 0]
    assert list(gg.pool_1d(ctx, x2, OP_POOL_MAX, 3, 2, 1).op_params[:4]) == [0, 3, 2, 1]
    c = gg.conv_2d_direct(ctx, _t(ctx, "f32", 3, 3, 2, 4), x2, 1, 2, 3, 1, 1, 2)
    assert list(c.op_params[:6]) == [1, 2, 3, 1, 1, 2]
    t = gg.conv_transpose_1d(ctx, _t(ctx, "f32", 3, 4, 2), _t(ctx, "f32", 7, 2), 2, 0, 1)
    assert list(t.op_params[:3]) == [2, 0, 1]
