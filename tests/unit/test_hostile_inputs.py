"""Inputs a hostile caller may pass: each is a GGMLError naming the problem, never a raw
exception, a crash or a read outside a tensor."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.errors import ContextMemoryError
from pyggml.errors import GraphError
from pyggml.errors import ShapeError


@pytest.fixture
def ctx():
    return gg.init(mem_size=4 << 20)


@pytest.mark.parametrize("nb1, offset", [(-16, 0), (-4, 0), (-4, 40)])
def test_views_with_negative_strides_are_refused(ctx, nb1, offset):
    """ggml's strides are size_t; a negative one read before the view's first byte."""
    b = gg.from_numpy(ctx, np.arange(12, dtype=np.float32))
    with pytest.raises(ShapeError, match="negative stride"):
        gg.view_2d(ctx, b, 4, 3, nb1, offset)


def test_a_buffer_that_cannot_be_allocated_is_a_context_error():
    with pytest.raises(ContextMemoryError, match="cannot allocate"):
        gg.init(mem_size=1 << 62)


def test_new_tensor_in_a_freed_context(ctx):
    gg.free(ctx)
    with pytest.raises(ContextMemoryError, match="freed"):
        gg.new_tensor_1d(ctx, gg.TYPE_F32, 4)


@pytest.mark.parametrize("n", [0, -1, 10 ** 6, "two"])
def test_thread_counts_out_of_range(ctx, n):
    y = gg.scale(ctx, gg.new_tensor_1d(ctx, gg.TYPE_F32, 4), 2.0)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    with pytest.raises(GraphError, match="n_threads"):
        gg.graph_plan(gf, n)
    plan = gg.graph_plan(gf, 1)
    plan.n_threads = n
    with pytest.raises(GraphError, match="n_threads"):
        gg.graph_compute(gf, plan)


def test_numba_backend_thread_limit():
    with pytest.raises(GraphError, match="n_threads"):
        gg.backend_numba_init(100_000)


@pytest.mark.parametrize("field, value", [("work_size", "big"), ("work_size", -1),
                                          ("n_tasks", ["2"]), ("n_tasks", [None])])
def test_forged_plan_fields(ctx, field, value):
    y = gg.scale(ctx, gg.new_tensor_1d(ctx, gg.TYPE_F32, 4), 2.0)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    plan = gg.graph_plan(gf, 1)
    setattr(plan, field, value)
    with pytest.raises(GraphError, match="plan"):
        gg.graph_compute(gf, plan)
