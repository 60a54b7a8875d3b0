"""The multi-backend scheduler: assignment, splits, copies, fallback, eval callback."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.backend import NumbaBackend


class NoSoftmax(NumbaBackend):
    """The numba backend pretending it has no SOFT_MAX kernel."""
    name = "numba-nosoftmax"

    def supports_op(self, node):
        return node.op is None or (node.op.name != "SOFT_MAX" and super().supports_op(node))


def graph(ctx):
    rng = np.random.default_rng(0)
    x = gg.from_numpy(ctx, rng.uniform(-1, 1, (6, 40)).astype(np.float32), name="x")
    w = gg.from_numpy(ctx, rng.uniform(-1, 1, (24, 40)).astype(np.float32), name="w")
    h = gg.mul_mat(ctx, w, x)                  # numba
    gg.set_name(h, "h")
    p = gg.soft_max_ext(ctx, h, None, 0.5, 0.0)   # -> reference (fallback)
    gg.set_name(p, "p")
    y = gg.silu(ctx, gg.scale(ctx, p, 3.0))    # numba again
    gg.set_name(y, "y")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return gf, y


def test_fallback_node_runs_on_reference_with_splits_and_copies():
    ctx = gg.init(mem_size=16 << 20)
    gf, y = graph(ctx)
    sched = gg.sched_new([NoSoftmax(2), gg.backend_reference_init()])
    gg.sched_graph_compute(sched, gf)
    names = {n.name: gg.sched_get_tensor_backend(sched, n).name for n in gf.nodes}
    assert names["p"] == "reference" and names["h"] == "numba-nosoftmax"
    assert names["y"] == "numba-nosoftmax"
    assert gg.sched_get_n_splits(sched) == 3
    assert gg.sched_get_n_copies(sched) == 2        # h into the reference split, p back out
    text = sched.describe()
    assert "## SPLIT #1: reference # 1 inputs: [h" in text

    ctx2 = gg.init(mem_size=16 << 20)
    gf2, y2 = graph(ctx2)
    gg.backend_graph_compute(gg.backend_reference_init(), gf2)
    np.testing.assert_allclose(gg.to_numpy(y), gg.to_numpy(y2), rtol=1e-5, atol=1e-6)

    gg.sched_graph_compute(sched, gf)             # recompute reuses the plan
    np.testing.assert_allclose(gg.to_numpy(y), gg.to_numpy(y2), rtol=1e-5, atol=1e-6)


def test_weights_pull_nodes_to_their_backend():
    ctx = gg.init(mem_size=16 << 20)
    gf, y = graph(ctx)
    ref = gg.backend_reference_init()
    w = gg.graph_get_tensor(gf, "w")
    w.buffer.backend = None
    # a weight living in the reference backend's buffer moves its mul_mat there
    buf = ref.alloc_buffer(gg.nbytes(w))
    raw = gg.tensor_get(w)
    w.set_buffer(buf, 0)
    gg.tensor_set(w, raw)
    sched = gg.sched_new([NoSoftmax(2), ref])
    gg.sched_graph_compute(sched, gf)
    assert gg.sched_get_tensor_backend(sched, gg.graph_get_tensor(gf, "h")).name == "reference"


def test_no_backend_supports_a_node_fails_before_compute():
    class Nothing(gg.backends.ReferenceBackend):
        name = "nothing"

        def supports_op(self, node):
            return node.op is None or node.op.name != "SILU"

    ctx = gg.init(mem_size=16 << 20)
    gf, y = graph(ctx)
    before = gg.to_numpy(gg.graph_get_tensor(gf, "h")).copy()
    with pytest.raises(gg.UnsupportedError, match="SILU"):
        gg.sched_graph_compute(gg.sched_new([Nothing()]), gf)
    np.testing.assert_array_equal(gg.to_numpy(gg.graph_get_tensor(gf, "h")), before)


def test_eval_callback_sees_every_node_and_can_stop():
    ctx = gg.init(mem_size=16 << 20)
    gf, y = graph(ctx)
    seen = []

    def cb(t, ask):
        if ask:
            return True
        seen.append(t.name)
        return t.name != "p"              # stop after the softmax

    sched = gg.sched_new([NoSoftmax(2), gg.backend_reference_init()], eval_cb=cb)
    gg.sched_graph_compute(sched, gf)
    assert seen[-1] == "p" and "h" in seen and "y" not in seen


def test_graph_compute_with_ctx_uses_numba_then_reference():
    ctx = gg.init(mem_size=16 << 20)
    gf, y = graph(ctx)
    gg.graph_compute_with_ctx(ctx, gf, 2)
    ctx2 = gg.init(mem_size=16 << 20)
    gf2, y2 = graph(ctx2)
    gg.backend_graph_compute(gg.backend_reference_init(), gf2)
    np.testing.assert_allclose(gg.to_numpy(y), gg.to_numpy(y2), rtol=1e-5, atol=1e-6)


def test_alternating_graphs_keep_their_plans(monkeypatch):
    """Two graphs computed in turn on one scheduler (two decoders reusing their graphs)
    are planned once each; reset() forgets the plans."""
    ctx1, ctx2 = gg.init(mem_size=16 << 20), gg.init(mem_size=16 << 20)
    (gf1, y1), (gf2, y2) = graph(ctx1), graph(ctx2)
    sched = gg.sched_new([NoSoftmax(2), gg.backend_reference_init()])
    calls = []
    orig = sched._assign
    monkeypatch.setattr(sched, "_assign", lambda gf: (calls.append(gf), orig(gf)))
    for _ in range(3):
        gg.sched_graph_compute(sched, gf1)
        gg.sched_graph_compute(sched, gf2)
    assert calls == [gf1, gf2]
    assert gg.sched_get_n_splits(sched) == 3
    np.testing.assert_array_equal(gg.to_numpy(y1), gg.to_numpy(y2))
    gg.sched_reset(sched)
    gg.sched_graph_compute(sched, gf1)
    assert calls == [gf1, gf2, gf1]
