"""Planning: n_tasks per node and the work buffer size (ggml_graph_plan), and graph_compute."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.kernels import KERNELS, add_kernel, make_kernel
from pyggml.errors import GraphError
from pyggml.sched.plan import CACHE_LINE, CPlan, graph_compute, graph_plan

COPY_ELEMENTS = KERNELS["CONT"].variants[0].pyfunc


def _graph(ctx, *outs):
    gf = gg.new_graph(ctx)
    for o in outs:
        gg.build_forward_expand(gf, o)
    return gf


@pytest.fixture
def ctx():
    return gg.init(mem_size=8 << 20)


def test_views_are_not_planned_and_ops_use_all_threads(ctx):
    a = gg.new_tensor_3d(ctx, gg.TYPE_F32, 6, 5, 4)
    y = gg.cont(ctx, gg.permute(ctx, a, 1, 0, 2, 3))
    gf = _graph(ctx, y)
    assert [n.op_name for n in gf.nodes] == ["PERMUTE", "CONT"]
    for nt in (1, 2, 3):
        p = graph_plan(gf, nt)
        assert isinstance(p, CPlan) and p.n_threads == nt
        assert p.n_tasks == [0, nt]
        assert p.work_size == 0


def test_work_size_is_the_max_over_nodes_plus_a_line_per_thread(ctx):
    ne0 = 96
    a = gg.new_tensor_2d(ctx, gg.TYPE_F16, ne0, 3)
    q8 = gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, ne0, 3))      # f16 -> f32 row -> q8_0
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 2 * ne0, 2)
    q4 = gg.cpy(ctx, b, gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 2 * ne0, 2))  # from f32: no scratch
    for nt in (1, 2, 3):
        assert graph_plan(_graph(ctx, q4), nt).work_size == 0
        want = (4 * ne0 + 64) * nt + CACHE_LINE * nt
        assert graph_plan(_graph(ctx, q8), nt).work_size == want
        assert graph_plan(_graph(ctx, q4, q8), nt).work_size == want


def test_kernel_rules_override_the_opdef(ctx, monkeypatch):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 8)
    y = gg.cont(ctx, a)
    gf = _graph(ctx, y)
    cont_op = gg.get_op("CONT")
    # the OpDef's rules apply when the kernel has none; n_tasks is clamped to 1..n_threads
    monkeypatch.setattr(cont_op, "n_tasks", lambda node, nt: 100)
    monkeypatch.setattr(cont_op, "work_size", lambda node, nt: 1000)
    p = graph_plan(gf, 3)
    assert p.n_tasks == [3] and p.work_size == 1000 + 3 * CACHE_LINE
    monkeypatch.setattr(cont_op, "n_tasks", lambda node, nt: 0)
    assert graph_plan(gf, 3).n_tasks == [1]
    # a backend whose kernel says otherwise wins
    table = {}
    add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, n_tasks=lambda n, nt: 2,
                                  work_size=lambda n, nt: 0), "CONT")
    be = NumbaBackend(3, kernels=table)
    p = graph_plan(gf, 3, backend=be)
    assert p.n_tasks == [2] and p.work_size == 0
    be.graph_compute(gf)
    assert list(be.table(gf).n_tasks) == [2]
    be.free()


def test_graph_compute_runs_a_plan(ctx):
    x = gg.from_numpy(ctx, np.arange(35, dtype=np.float32).reshape(5, 7))
    y = gg.cont(ctx, gg.transpose(ctx, x))
    h = gg.cpy(ctx, y, gg.new_tensor_2d(ctx, gg.TYPE_F16, 5, 7))
    gf = _graph(ctx, h)
    for nt in (1, 2):
        gg.tensor_memset(h, 0)
        assert graph_compute(gf, graph_plan(gf, nt)) == 0
        np.testing.assert_array_equal(gg.to_numpy(h), np.arange(35).reshape(5, 7).T)
    # a caller-provided work buffer is used as is
    a = gg.from_numpy(ctx, np.ones((2, 64), dtype=np.float16))
    q = gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 64, 2))
    gq = _graph(ctx, q)
    p = graph_plan(gq, 2)
    p.work_data = np.zeros(p.work_size, dtype=np.uint8)
    graph_compute(gq, p)
    np.testing.assert_allclose(gg.to_numpy(q), np.ones((2, 64)), rtol=1e-3)   # q8_0 scale
    from pyggml.compute import cpu_backend_for
    assert cpu_backend_for(2).table(gq, p).wbuf is p.work_data


def test_graph_compute_rejects_a_stale_plan(ctx):
    x = gg.new_tensor_1d(ctx, gg.TYPE_F32, 4)
    gf = _graph(ctx, gg.cont(ctx, x))
    p = graph_plan(gf, 2)
    gg.build_forward_expand(gf, gg.cont(ctx, gf.nodes[-1]))
    with pytest.raises(GraphError, match="plan"):
        graph_compute(gf, p)
    p = graph_plan(gf, 2)
    p.work_size = 0
    p.work_data = None
    graph_compute(gf, p)
