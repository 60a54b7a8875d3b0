"""graph_compute / graph_compute_with_ctx with hostile plans, and what they keep alive."""
import gc
import weakref

import numpy as np
import pytest

import pyggml as gg
from pyggml import compute
from pyggml.errors import GraphError


def _q8_graph(ctx):
    """A graph whose plan needs a work buffer (f16 -> q8_0 conversion through f32)."""
    a = gg.from_numpy(ctx, np.ones((2, 64), dtype=np.float16))
    q = gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 64, 2))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, q)
    return gf, q


def _mm_graph(ctx):
    a = gg.from_numpy(ctx, np.ones((8, 64), dtype=np.float32), type=gg.TYPE_Q8_0)
    b = gg.from_numpy(ctx, np.ones((3, 64), dtype=np.float32))
    y = gg.mul_mat(ctx, a, b)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return gf, y


@pytest.mark.parametrize("bad", ["reversed", "strided", "readonly", "list", "small"])
def test_bad_work_data_is_refused(bad):
    ctx = gg.init(mem_size=4 << 20)
    gf, y = _mm_graph(ctx)
    plan = gg.graph_plan(gf, 2)
    assert plan.work_size > 0
    n = plan.work_size
    plan.work_data = {
        "reversed": np.zeros(n, np.uint8)[::-1],
        "strided": np.zeros(2 * n, np.uint8)[::2],
        "readonly": np.frombuffer(bytes(n), np.uint8),
        "list": [0] * n,
        "small": np.zeros(n - 1, np.uint8),
    }[bad]
    with pytest.raises(GraphError, match="work_data"):
        gg.graph_compute(gf, plan)


def test_any_contiguous_work_data_is_used():
    ctx = gg.init(mem_size=4 << 20)
    gf, y = _mm_graph(ctx)
    plan = gg.graph_plan(gf, 2)
    plan.work_data = np.zeros((plan.work_size + 7) // 8, np.float64)     # dtype does not matter
    gg.graph_compute(gf, plan)
    np.testing.assert_allclose(gg.to_numpy(y), np.full((3, 8), 64.0), rtol=1e-2)


def test_graph_compute_with_ctx_keeps_no_graph_alive():
    """Freed contexts and graphs are really freed (weak references die), for every graph
    graph_compute_with_ctx has run."""
    refs = []
    for i in range(12):
        ctx = gg.init(mem_size=2 << 20)
        gf, y = _q8_graph(ctx)
        gg.graph_compute_with_ctx(ctx, gf, 2)
        refs.append((weakref.ref(ctx), weakref.ref(gf), weakref.ref(y)))
        del ctx, gf, y
    gc.collect()
    alive = [i for i, r in enumerate(refs) if any(x() is not None for x in r)]
    assert alive == []


def test_reused_graph_keeps_its_plan():
    """The plan lives on the graph: computing it again does not assign or lower again."""
    ctx = gg.init(mem_size=4 << 20)
    gf, y = _q8_graph(ctx)
    gg.graph_compute_with_ctx(ctx, gf, 2)
    be = compute.cpu_backend_for(2)
    n = be.n_lowerings
    gg.graph_compute_with_ctx(ctx, gf, 2)
    assert be.n_lowerings == n


def test_graph_compute_does_not_replace_the_ctx_scheduler(monkeypatch):
    """graph_compute(gf, plan) shares the CPU backend with graph_compute_with_ctx but leaves
    its scheduler, and so its reference fallback, in place."""
    ctx = gg.init(mem_size=4 << 20)
    gf, y = _q8_graph(ctx)
    gg.graph_compute_with_ctx(ctx, gf, 2)
    sched = compute._CTX_SCHEDS[2]
    gf2, _ = _mm_graph(ctx)
    gg.graph_compute(gf2, gg.graph_plan(gf2, 2))
    assert compute._CTX_SCHEDS[2] is sched and sched.backends[0] is compute.cpu_backend_for(2)
    # a node the CPU backend does not take still computes, on the reference backend
    cpu = compute.cpu_backend_for(2)
    plain = type(cpu).supports_op
    monkeypatch.setattr(cpu, "supports_op",
                        lambda node: node.op is None or (node.op.name != "SOFT_MAX"
                                                         and plain(cpu, node)))
    x = gg.from_numpy(ctx, np.array([[0.0, np.log(3.0)]], np.float32))
    p = gg.soft_max(ctx, x)
    gf3 = gg.new_graph(ctx)
    gg.build_forward_expand(gf3, p)
    gg.graph_compute_with_ctx(ctx, gf3, 2)
    np.testing.assert_allclose(gg.to_numpy(p), [0.25, 0.75], rtol=1e-6)
