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


def _add_norm_mul(ctx, rng, b_rows=5, between=False):
    """s = a + b; y = rms_norm(s) * w; r = y + s (the residual reads s again, later)."""
    a = gg.from_numpy(ctx, rng.standard_normal((3, 5, 576)).astype(np.float32))
    b = gg.from_numpy(ctx, rng.standard_normal((3, b_rows, 576)).astype(np.float32))
    w = gg.from_numpy(ctx, rng.standard_normal(576).astype(np.float32))
    s = gg.add(ctx, a, b)
    if between:                        # a row between the ADD and the norm
        s = gg.scale(ctx, s, 1.0)
    n = gg.rms_norm(ctx, s, 1e-5)
    y = gg.mul(ctx, n, w)
    r = gg.add(ctx, y, s)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, r)
    return gf, (s, n, y, r)


def _kernel_names(be, gf):
    return [k.name for k in be.table(gf).kernels]


def test_add_rms_norm_mul_fuses_bitwise():
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=8 << 20)
    gf, outs = _add_norm_mul(ctx, np.random.default_rng(8))
    be.graph_compute(gf)
    assert _kernel_names(be, gf).count("add_rms_norm_mul_f32") == 1 and be.table(gf).n == 2
    from pyggml.backends.numba_cpu.fusion import ADD_RMS_NORM_MUL
    from pyggml.backends.numba_cpu.kernels import find
    from pyggml.backends.numba_cpu.warmup import graph_kernels
    assert ADD_RMS_NORM_MUL.key in {k.key for k in graph_kernels([gf])}
    assert find(ADD_RMS_NORM_MUL.key) is ADD_RMS_NORM_MUL
    got = [gg.to_numpy(t).copy() for t in outs]
    be.fusion = False
    ctx2 = gg.init(mem_size=8 << 20)
    gf2, outs2 = _add_norm_mul(ctx2, np.random.default_rng(8))
    be.graph_compute(gf2)
    assert be.table(gf2).n == 4
    for g, t in zip(got, outs2):          # the sum, the norm, the product, the residual
        assert np.array_equal(g.view(np.uint32), gg.to_numpy(t).view(np.uint32))
    be.free()


@pytest.mark.parametrize("b_rows,between", [(1, False), (5, True)])
def test_add_not_fused_when_broadcast_or_not_next(b_rows, between):
    # a broadcast ADD, or a row between the ADD and the norm: only the norm and MUL fuse
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=8 << 20)
    gf, (s, n, y, r) = _add_norm_mul(ctx, np.random.default_rng(9), b_rows, between)
    be.graph_compute(gf)
    names = _kernel_names(be, gf)
    assert "add_rms_norm_mul_f32" not in names and names.count("rms_norm_mul_f32") == 1
    sv = gg.to_numpy(s).astype(np.float64)
    want = sv / np.sqrt((sv * sv).mean(-1, keepdims=True) + 1e-5) * gg.to_numpy(y.src[1])
    np.testing.assert_allclose(gg.to_numpy(y), want, rtol=1e-5, atol=1e-6)
    be.free()


def test_row_aligned_refuses_skewed_overlap():
    # a result placed over a source one row off would clobber rows still to be read
    from pyggml.backends.numba_cpu.fusion import _row_aligned
    ctx = gg.init(mem_size=1 << 20)
    big = gg.new_tensor_2d(ctx, gg.GGMLType.F32, 64, 6)
    lo = gg.view_2d(ctx, big, 64, 4, big.nb[1], 0)
    hi = gg.view_2d(ctx, big, 64, 4, big.nb[1], big.nb[1])
    same = gg.view_2d(ctx, big, 64, 4, big.nb[1], 0)
    other = gg.new_tensor_2d(ctx, gg.GGMLType.F32, 64, 4)
    assert not _row_aligned([lo], [hi])
    assert _row_aligned([lo], [same]) and _row_aligned([lo], [other])
    assert not _row_aligned([lo, hi], [other])


def _ffn(ctx, rng, wtype, ncols=1, m=300, k=576, reader=False):
    """h = swiglu_split(Wg x, Wu x) (decode's FFN before the down projection)."""
    def weight():
        v = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        if wtype == gg.GGMLType.F32:
            return gg.from_numpy(ctx, v)
        t = gg.new_tensor_2d(ctx, wtype, k, m)
        gg.tensor_set(t, gg.quantize(wtype, v))
        return t
    wg, wu = weight(), weight()
    x = gg.from_numpy(ctx, (4 * rng.standard_normal((ncols, k))).astype(np.float32))
    gate, up = gg.mul_mat(ctx, wg, x), gg.mul_mat(ctx, wu, x)
    h = gg.swiglu_split(ctx, gate, up)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, h)
    if reader:                         # the gate read again, later
        gg.build_forward_expand(gf, gg.add(ctx, h, gate))
    return gf, (gate, up, h)


@pytest.mark.parametrize("wtype,threads", [(gg.GGMLType.Q4_1, 2), (gg.GGMLType.F32, 2),
                                           (gg.GGMLType.Q4_1, 1)])
def test_mul_mat_swiglu_fuses_bitwise(wtype, threads):
    # one thread: the unfused mat-vecs take mul_mat's static split, the fused row its chunks
    be = NumbaBackend(threads)
    outs = []
    for fusion in (True, False):
        be.fusion = fusion
        ctx = gg.init(mem_size=16 << 20)
        gf, ts = _ffn(ctx, np.random.default_rng(4), wtype, reader=True)
        for _ in range(2):             # the row's chunk counter is reset for the next compute
            be.graph_compute(gf)
        names = _kernel_names(be, gf)
        assert names.count("mul_mat_swiglu") == (1 if fusion else 0)
        assert be.table(gf).n == (2 if fusion else 4)
        outs.append([gg.to_numpy(t).copy() for t in ts])
        if fusion:
            from pyggml.backends.numba_cpu.fusion import MUL_MAT_SWIGLU
            from pyggml.backends.numba_cpu.warmup import graph_kernels
            assert MUL_MAT_SWIGLU.key in {k.key for k in graph_kernels([gf])}
    for a, b in zip(*outs):               # gate, up (still written) and the GLU
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    be.free()


def test_mul_mat_swiglu_not_fused_for_batches():
    # two columns: the mat-muls keep their own rows (only decode's one column is fused)
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=16 << 20)
    gf, (gate, up, h) = _ffn(ctx, np.random.default_rng(2), gg.GGMLType.F32, ncols=2, m=64)
    be.graph_compute(gf)
    assert "mul_mat_swiglu" not in _kernel_names(be, gf) and be.table(gf).n == 3
    g = gg.to_numpy(gate).astype(np.float64)
    want = g / (1 + np.exp(-g)) * gg.to_numpy(up)
    np.testing.assert_allclose(gg.to_numpy(h), want, rtol=1e-5, atol=1e-5)
    be.free()
