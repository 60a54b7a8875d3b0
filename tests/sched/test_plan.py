"""Planning: n_tasks per node and the work buffer size (ggml_graph_plan), and graph_compute."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.base import Backend
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import add_kernel
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.backends.numba_cpu.plan import CACHE_LINE
from pyggml.backends.numba_cpu.plan import CPlan
from pyggml.backends.numba_cpu.plan import graph_plan
from pyggml.compute import graph_compute
from pyggml.errors import GraphError

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


def test_the_kernel_carries_the_planning_rules(ctx):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 8)
    y = gg.cont(ctx, a)
    gf = _graph(ctx, y)
    assert not hasattr(gg.get_op("CONT"), "n_tasks")      # backend facts: not on the OpDef
    # a kernel that says nothing: all threads, no scratch; n_tasks is clamped to 1..n_threads
    for n_tasks, want in ((None, 3), (lambda n, nt: 100, 3), (lambda n, nt: 0, 1),
                          (lambda n, nt: 2, 2)):
        table = {}
        add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, n_tasks=n_tasks,
                                      work_size=lambda n, nt: 1000), "CONT")
        be = NumbaBackend(3, kernels=table)
        p = graph_plan(gf, 3, backend=be)
        assert p.n_tasks == [want] and p.work_size == 1000 + 3 * CACHE_LINE
        be.free()
    table = {}
    add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, n_tasks=lambda n, nt: 2), "CONT")
    be = NumbaBackend(3, kernels=table)
    p = graph_plan(gf, 3, backend=be)
    assert p.n_tasks == [2] and p.work_size == 0
    be.graph_compute(gf)
    assert list(be.table(gf).n_tasks) == [2]
    be.free()


def test_planning_the_reference_backend_needs_no_numba():
    """A backend without kernels plans every node on all threads with no scratch; neither
    importing pyggml nor planning/computing on the reference backend imports Numba."""
    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None          # any `import numba` now fails
        import numpy as np
        import pyggml as gg
        ctx = gg.init(mem_size=1 << 20)
        x = gg.from_numpy(ctx, np.arange(6, dtype=np.float32).reshape(2, 3))
        y = gg.soft_max(ctx, gg.mul_mat(ctx, x, x))
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, y)
        be = gg.backend_reference_init()
        p = gg.graph_plan(gf, 3, be)
        assert p.n_tasks == [3, 3] and p.work_size == 0, p
        be.graph_compute(gf)
        print(gg.to_numpy(y).sum())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert abs(float(r.stdout) - 2.0) < 1e-6


def test_a_supports_predicate_that_raises_is_not_a_quiet_fallback(ctx):
    """A buggy supports() propagates its exception (it used to be swallowed, and the node went
    to the slow reference backend without a word)."""
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 8)
    y = gg.cont(ctx, a)
    gf = _graph(ctx, y)

    def buggy(node):
        return node.src[5].type == gg.TYPE_F32          # src[5] is None: AttributeError

    table = {}
    add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, supports=buggy), "CONT")
    be = NumbaBackend(1, kernels=table)
    with pytest.raises(AttributeError):
        be.supports_op(y)
    with pytest.raises(AttributeError):
        gg.Sched([be, gg.backend_reference_init()]).graph_compute(gf)
    be.free()


def test_a_sched_is_a_backend(ctx):
    """Callers hold "a backend": a scheduler allocates, computes and sets threads like one."""
    a = gg.from_numpy(ctx, np.ones((2, 4), np.float32))
    y = gg.sum_rows(ctx, a)
    gf = _graph(ctx, y)
    cpu = NumbaBackend(1)
    s = gg.Sched([cpu, gg.backend_reference_init()])
    assert isinstance(s, Backend) and s.supports_op(y)
    s.set_n_threads(2)
    assert cpu.n_threads == 2
    s.alloc_graph(gf)
    seen = []
    s.graph_compute(gf, lambda t, ask: seen.append((t.op_name, ask)) or True)
    assert ("SUM_ROWS", False) in seen
    np.testing.assert_array_equal(gg.to_numpy(y).ravel(), [4.0, 4.0])
    cpu.free()


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


def test_a_plan_edited_in_place_after_a_compute_is_checked_again(ctx):
    """A kept graph's plan is not validated on every call, only when it differs from the
    copy its table was lowered with: an edit in place is still seen and refused."""
    x = gg.new_tensor_1d(ctx, gg.TYPE_F32, 4)
    gg.data.write(x, np.arange(4))
    gf = _graph(ctx, gg.cont(ctx, x))
    p = graph_plan(gf, 2)
    graph_compute(gf, p)
    graph_compute(gf, p)
    p.n_tasks[-1] = "2"
    with pytest.raises(GraphError, match="plan"):
        graph_compute(gf, p)
    p.n_tasks[-1] = 1
    graph_compute(gf, p)
    np.testing.assert_array_equal(gg.to_numpy(gf.nodes[-1]), np.arange(4))


def _rows(tab):
    return [(n.name, int(s)) for n, s in zip(tab.nodes, tab.sync)]


def test_independent_rows_share_a_barrier_and_dependent_ones_do_not():
    """plan.schedule: the three projections of one input run back to back (one barrier after
    the group), pulled forward past a row that needs the first one; rows that read what an
    earlier row of the group writes wait for it; the last row ends with a barrier."""
    ctx = gg.init(mem_size=8 << 20)
    rng = np.random.default_rng(0)
    x = gg.from_numpy(ctx, rng.standard_normal((1, 64)).astype(np.float32), name="x")
    ws = [gg.from_numpy(ctx, rng.standard_normal((32, 64)).astype(np.float32),
                        type=gg.TYPE_Q8_0, name=f"w{i}") for i in range(3)]
    y = []
    for i, w in enumerate(ws):
        t = gg.mul_mat(ctx, w, x)
        gg.set_name(t, f"y{i}")
        y.append(t)
    s0 = gg.scale(ctx, y[0], 2.0)                # between y0 and y1 in graph order
    gg.set_name(s0, "s0")
    z = gg.add(ctx, gg.add(ctx, s0, y[1]), y[2])
    gg.set_name(z, "z")
    gf = _graph(ctx, s0, z)
    be = NumbaBackend(2)
    tab = be.table(gf)
    assert _rows(tab)[:4] == [("y0", 0), ("y1", 0), ("y2", 1), ("s0", 1)], _rows(tab)
    assert int(tab.sync[-1]) == 1
    be.graph_compute(gf)
    got = gg.to_numpy(z)
    for n in gf.nodes:          # stale results would show if a node were shown before it ran
        gg.tensor_set(n, bytes(gg.nbytes(n)))
    seen = {}                   # eval callback: each node has run when it is shown, reordered or not
    be.graph_compute(gf, lambda t, ask: True if ask else seen.setdefault(t.name, gg.to_numpy(t)) is not None)
    assert sorted(seen) == sorted(n.name for n in gf.nodes)
    for n in gf.nodes:
        assert np.array_equal(seen[n.name], gg.to_numpy(n)), n.name
    one = NumbaBackend(1)
    assert list(one.table(gf).sync) == [1] * one.table(gf).n     # one thread: no groups
    one.graph_compute(gf)
    assert np.array_equal(got, gg.to_numpy(z))


def test_a_row_writing_what_another_reads_keeps_its_barrier():
    """SET_ROWS into a cache and a row reading that cache have no graph edge between them:
    the planner sees the shared bytes and keeps them apart (and in graph order)."""
    ctx = gg.init(mem_size=8 << 20)
    cache = gg.from_numpy(ctx, np.arange(32, dtype=np.float32).reshape(4, 8), name="cache")
    vals = gg.from_numpy(ctx, np.full((1, 8), 100.0, dtype=np.float32), name="vals")
    ids = gg.from_numpy(ctx, np.array([2], dtype=np.int64), name="ids")
    r = gg.scale(ctx, cache, 1.0)
    gg.set_name(r, "read")
    w = gg.set_rows(ctx, cache, vals, ids)
    gg.set_name(w, "write")
    gf = _graph(ctx, r, w)
    be = NumbaBackend(2)
    tab = be.table(gf)
    assert _rows(tab) == [("read", 1), ("write", 1)]
    be.graph_compute(gf)
    assert np.array_equal(gg.to_numpy(r), np.arange(32, dtype=np.float32).reshape(4, 8))
