"""Backend fusion (backends/numba_cpu/fusion.py): RMS_NORM + MUL as one row, bitwise the pair."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.backend import NumbaBackend


def _norm_mul(ctx, rng, w_rows=1, extra=False):
    x = gg.from_numpy(ctx, rng.standard_normal((3, 5, 576)).astype(np.float32))
    w = gg.from_numpy(ctx, rng.standard_normal((w_rows, 576)).astype(np.float32))
    n = gg.rms_norm(ctx, x, 1e-5)
    y = gg.mul(ctx, n, w)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    if extra:                          # a second reader of the norm's result
        gg.build_forward_expand(gf, gg.add(ctx, n, x))
    return gf, n, y


def _fused_rows(be, gf):
    return [k.name for k in be.table(gf).kernels].count("rms_norm_mul_f32")


@pytest.mark.parametrize("w_rows", [1, 5])
def test_rms_norm_mul_fuses_bitwise(w_rows):
    rng = np.random.default_rng(7)
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=8 << 20)
    gf, n, y = _norm_mul(ctx, rng, w_rows)
    be.graph_compute(gf)
    assert _fused_rows(be, gf) == 1 and be.table(gf).n == 1
    got_y, got_n = gg.to_numpy(y).copy(), gg.to_numpy(n).copy()
    # the same graph unfused: the two kernels
    be.fusion = False
    ctx2 = gg.init(mem_size=8 << 20)
    gf2, n2, y2 = _norm_mul(ctx2, np.random.default_rng(7), w_rows)
    be.graph_compute(gf2)
    assert _fused_rows(be, gf2) == 0 and be.table(gf2).n == 2
    assert np.array_equal(got_y.view(np.uint32), gg.to_numpy(y2).view(np.uint32))
    assert np.array_equal(got_n.view(np.uint32), gg.to_numpy(n2).view(np.uint32))
    be.free()


def test_eval_callback_sees_the_fused_norm():
    rng = np.random.default_rng(3)
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=8 << 20)
    gf, n, y = _norm_mul(ctx, rng)
    seen = {}

    def cb(t, ask):
        if ask:
            return t is n
        seen["n"] = gg.to_numpy(t).copy()
        return True
    be.compute_planned(gf, None, cb)
    x = gg.to_numpy(n.src[0]).astype(np.float64)
    want = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(seen["n"], want, rtol=1e-5, atol=1e-6)
    be.free()


def test_not_fused_when_the_norm_has_another_reader():
    rng = np.random.default_rng(5)
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=8 << 20)
    gf, n, y = _norm_mul(ctx, rng, extra=True)
    be.graph_compute(gf)
    assert _fused_rows(be, gf) == 0 and be.table(gf).n == 3
    be.free()


def test_not_fused_when_a_row_runs_between_norm_and_mul():
    rng = np.random.default_rng(6)
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=8 << 20)
    x = gg.from_numpy(ctx, rng.standard_normal((4, 64)).astype(np.float32))
    a = gg.from_numpy(ctx, rng.standard_normal(64).astype(np.float32))
    n = gg.rms_norm(ctx, x, 1e-6)
    y = gg.mul(ctx, n, gg.add(ctx, a, a))         # the weight is made after the norm
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    assert [t.op_name for t in gf.nodes] == ["RMS_NORM", "ADD", "MUL"]
    be.graph_compute(gf)
    assert _fused_rows(be, gf) == 0
    xv = gg.to_numpy(x).astype(np.float64)
    want = xv / np.sqrt((xv * xv).mean(-1, keepdims=True) + 1e-6) * (2 * gg.to_numpy(a))
    np.testing.assert_allclose(gg.to_numpy(y), want, rtol=1e-5, atol=1e-6)
    be.free()


def test_warm_up_knows_the_fused_kernel():
    # lowering picks it, no node selects it: the warm-up (and tiered execution's "every kernel
    # ready" gate) must still compile it with the graph's kernels, and its workers find it
    from pyggml.backends.numba_cpu.fusion import RMS_NORM_MUL
    from pyggml.backends.numba_cpu.kernels import find
    from pyggml.backends.numba_cpu.warmup import all_kernels
    from pyggml.backends.numba_cpu.warmup import graph_kernels
    ctx = gg.init(mem_size=8 << 20)
    gf = _norm_mul(ctx, np.random.default_rng(1))[0]
    assert RMS_NORM_MUL.key in {k.key for k in graph_kernels([gf])}
    assert find(RMS_NORM_MUL.key) is RMS_NORM_MUL
    assert RMS_NORM_MUL.key in {k.key for k in all_kernels()}
    plain = gg.new_graph(ctx)
    gg.build_forward_expand(plain, gg.add(ctx, *[gg.new_tensor_1d(ctx, gg.GGMLType.F32, 4)] * 2))
    assert RMS_NORM_MUL.key not in {k.key for k in graph_kernels([plain])}
