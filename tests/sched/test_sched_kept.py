"""What the scheduler path keeps between planning steps: the Numba backend's per-node verdicts
(asked once per node for a graph, reused by select/plan/lower of the split's graph) and the
allocator's mark (no second walk). Whatever invalidates them must be followed."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu import verdicts
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.kernels import lookup
from pyggml.sched.alloc import alloc_graph


def _graph(ctx):
    x = gg.from_numpy(ctx, np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), name="x")
    y = gg.scale(ctx, x, 2.0)
    gg.set_name(y, "y")
    z = gg.add(ctx, y, x)
    gg.set_name(z, "z")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, z)
    return gf, x, y, z


def _expect(x, s):
    """z = s * x + x in float32, as the kernels compute it."""
    xv = gg.to_numpy(x)
    return np.float32(s) * xv + xv


class _Counting(verdicts.Verdicts):
    """The verdict memo, counting how often a node is asked about."""
    asked = 0

    def get(self, node):
        type(self).asked += 1
        return super().get(node)

    def get_all(self, nodes):
        before = type(self).asked          # (a miss is asked through get: counted once)
        out = super().get_all(nodes)
        type(self).asked = before + sum(f is not None for f in out)
        return out


@pytest.fixture
def sched():
    be = NumbaBackend(2)
    be._memo = _Counting(be.kernels, be.n_threads)
    s = gg.sched_new([be, gg.backend_reference_init()])
    yield s
    be.free()


def test_each_node_is_asked_once_per_graph(sched):
    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    _Counting.asked = 0
    sched.graph_compute(gf)
    assert _Counting.asked == 2                 # assignment, select, plan, lower: once each node
    assert gg.sched_get_n_splits(sched) == 1
    np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 2))


def test_a_pin_moves_the_node_and_the_split_graphs_follow(sched):
    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    sched.graph_compute(gf)
    ref = sched.backends[1]
    gg.sched_set_tensor_backend(sched, y, ref)
    sched.graph_compute(gf)
    assert gg.sched_get_tensor_backend(sched, y) is ref
    assert gg.sched_get_tensor_backend(sched, z) is sched.backends[0]
    assert gg.sched_get_n_splits(sched) == 2 and gg.sched_get_n_copies(sched) == 1
    np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 2))


def test_a_copying_splits_shadow_nodes_are_not_asked_again(sched):
    """A split that copies an input in runs shadow nodes; one of its node's signature (the
    copy has the original's strides) takes the node's kept verdicts (Tensor.twin)."""
    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    gg.sched_set_tensor_backend(sched, y, sched.backends[1])
    _Counting.asked = 0
    sched.graph_compute(gf)
    assert gg.sched_get_n_splits(sched) == 2 and gg.sched_get_n_copies(sched) == 1
    shadow = sched.splits[1].graph.nodes[0]
    assert shadow is not z and shadow.twin is z
    assert _Counting.asked == 2                 # y and z, for the whole graph only
    np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 2))


def test_an_op_param_change_is_followed(sched):
    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    sched.graph_compute(gf)
    gg.set_op_params(y, s=5.0)
    _Counting.asked = 0
    sched.graph_compute(gf)
    assert _Counting.asked == 2                 # asked again: the kept answers are stale
    np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 5))


def test_the_thread_count_is_followed(sched):
    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    be = sched.backends[0]
    sched.graph_compute(gf)
    sched.set_n_threads(1)
    sched.graph_compute(gf)
    sel = be.select(sched.splits[0].graph)
    assert sel.n_threads == 1 and all(f is None or f[1] == 1 for f in sel.facts)
    np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 2))


@pytest.mark.parametrize("reset", [True, False], ids=["sched_reset", "no_reset"])
def test_a_kernel_verdict_change_is_followed(sched, reset):
    """A node whose kernel stops supporting it moves to the fallback at the next compute,
    after sched_reset or without one (the kept plan names verdicts.EPOCH: a stale plan
    would hand the node to a backend that refuses it); restored, it comes back."""
    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    be, ref = sched.backends
    sched.graph_compute(gf)
    assert gg.sched_get_tensor_backend(sched, y) is be
    k = lookup(y, be.kernels)
    saved = k.supports
    k.supports = lambda node: False             # bumps verdicts.EPOCH
    try:
        if reset:
            gg.sched_reset(sched)
        sched.graph_compute(gf)
        assert gg.sched_get_tensor_backend(sched, y) is ref
        assert gg.sched_get_n_splits(sched) == 2
        assert not be.supports_graph(gf)[gf.nodes.index(y)]
        with pytest.raises(gg.UnsupportedError, match="SCALE"):
            be.select(gf)
    finally:
        k.supports = saved
    np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 2))
    sched.graph_compute(gf)                     # restored: back on one backend
    assert gg.sched_get_tensor_backend(sched, y) is be and gg.sched_get_n_splits(sched) == 1


def test_a_subclass_with_its_own_support_rule_is_asked_per_node():
    class NoScale(NumbaBackend):
        name = "numba-noscale"

        def supports_op(self, node):
            return node.op is None or (node.op.name != "SCALE" and super().supports_op(node))

    ctx = gg.init(mem_size=1 << 20)
    gf, x, y, z = _graph(ctx)
    be = NoScale(1)
    try:
        assert be.supports_graph(gf) is None
        sched = gg.sched_new([be, gg.backend_reference_init()])
        sched.graph_compute(gf)
        assert gg.sched_get_tensor_backend(sched, y).name == "reference"
        np.testing.assert_array_equal(gg.to_numpy(z), _expect(x, 2))
    finally:
        be.free()


def test_the_allocation_mark_skips_only_an_unchanged_graph():
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_1d(ctx, gg.TYPE_F32, 16)
    b = gg.scale(ctx, a, 2.0)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, b)
    assert alloc_graph(gf) > 0
    where = [(t._buffer, t._offs) for t in (a, b)]
    assert alloc_graph(gf) == 0                 # marked: nothing walked, nothing moved
    assert [(t._buffer, t._offs) for t in (a, b)] == where
    c = gg.add(ctx, b, a)
    gg.build_forward_expand(gf, c)              # a new node: walked again, and allocated
    assert c._buffer is None
    assert alloc_graph(gf) > 0 and c._buffer is not None
    assert [(t._buffer, t._offs) for t in (a, b)] == where
