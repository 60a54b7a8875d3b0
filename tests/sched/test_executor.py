"""The Numba executor: node table, thread pool, barrier, errors, caching of lowered graphs."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu import desc as D
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.desc import DESC_LEN
from pyggml.backends.numba_cpu.desc import DST
from pyggml.backends.numba_cpu.desc import H_INDEX
from pyggml.backends.numba_cpu.desc import H_NTASKS
from pyggml.backends.numba_cpu.desc import H_STATUS
from pyggml.backends.numba_cpu.desc import HDR
from pyggml.backends.numba_cpu.desc import SLOT
from pyggml.backends.numba_cpu.desc import SRC0
from pyggml.backends.numba_cpu.desc import SRC1
from pyggml.backends.numba_cpu.desc import STATUS_LEN
from pyggml.backends.numba_cpu.desc import T_NE
from pyggml.backends.numba_cpu.desc import node_index
from pyggml.backends.numba_cpu.desc import row_range
from pyggml.backends.numba_cpu.desc import set_error
from pyggml.backends.numba_cpu.desc import t_addr
from pyggml.backends.numba_cpu.desc import t_ne
from pyggml.backends.numba_cpu.executor import NodeTable
from pyggml.backends.numba_cpu.executor import WorkerPool
from pyggml.backends.numba_cpu.intrinsics import atomic_add
from pyggml.backends.numba_cpu.intrinsics import f32_array
from pyggml.backends.numba_cpu.intrinsics import i64_array
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import add_kernel
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.backends.reference import ReferenceBackend

THREADS = (1, 2, 3)
ERR_TEST = D.register_error(101, "test kernel failure on purpose")


# --- test kernels (module level: compiled once, cached on disk) --------------------------------

def tiny_add(desc, ith, nth):
    n = t_ne(desc, DST, 0)
    d = f32_array(t_addr(desc, DST), n)
    a = f32_array(t_addr(desc, SRC0), n)
    b = f32_array(t_addr(desc, SRC1), n)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        d[i] = a[i] + b[i]


def count_calls(desc, ith, nth):
    """Counts calls per node and records the highest ith seen (dst = int64 counters)."""
    c = i64_array(t_addr(desc, DST), 2)
    atomic_add(t_addr(desc, DST), 1)
    if ith > c[1]:
        c[1] = ith


def fail_on_node_1(desc, ith, nth):
    """Copies like CONT (f32, contiguous) but fails on graph node 1, from the last thread."""
    if node_index(desc) == 1:
        if ith == nth - 1:
            set_error(desc, ERR_TEST)
        return
    n = t_ne(desc, DST, 0) * t_ne(desc, DST, 1) * t_ne(desc, DST, 2) * t_ne(desc, DST, 3)
    d = f32_array(t_addr(desc, DST), n)
    s = f32_array(t_addr(desc, SRC0), n)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        d[i] = s[i]


def divides_by_zero(desc, ith, nth):
    """Raises ZeroDivisionError inside the kernel (integer division by zero)."""
    d = f32_array(t_addr(desc, DST), 1)
    d[0] = t_ne(desc, DST, 0) // (t_ne(desc, DST, 1) - t_ne(desc, DST, 1))


@pytest.fixture(scope="module", params=THREADS, ids=lambda n: f"{n}t")
def backend(request):
    be = NumbaBackend(request.param)
    yield be
    be.free()


# --- the raw executor ------------------------------------------------------------------------

def _table(n_nodes, n_tasks, kern, dst_rows, src_rows, bufs):
    status = np.zeros(STATUS_LEN, dtype=np.int64)
    descs = np.zeros((n_nodes, DESC_LEN), dtype=np.int64)
    for i in range(n_nodes):
        d = descs[i]
        d[H_NTASKS], d[H_STATUS], d[H_INDEX] = n_tasks[i], status.ctypes.data, i
        for slot, row in ((DST, dst_rows[i]), (SRC0, src_rows[i][0]), (SRC1, src_rows[i][1])):
            b = HDR + slot * SLOT
            d[b] = bufs[row].ctypes.data
            d[b + T_NE:b + T_NE + 4] = [bufs.shape[1], 1, 1, 1]
    return NodeTable([None] * n_nodes, range(n_nodes), [kern] * n_nodes, descs, n_tasks,
                     status, None)


@pytest.mark.parametrize("n_threads", THREADS)
def test_executor_chain_of_tiny_kernels(n_threads):
    kern = make_kernel("TINY_ADD", tiny_add)
    n = 300
    bufs = np.zeros((n + 2, 13), dtype=np.float32)      # 13: not divisible by 2 or 3 threads
    bufs[0] = 1.0
    bufs[1] = np.arange(13)
    tab = _table(n, [n_threads] * n, kern, [i + 2 for i in range(n)],
                 [(i + 1, 0) for i in range(n)], bufs)
    with WorkerPool(n_threads) as pool:
        for rep in range(3):
            assert pool.run(tab) == n
            assert tab.error() is None
            np.testing.assert_array_equal(bufs[-1], np.arange(13) + n)
        # a sub-range runs only those rows
        bufs[2:] = 0
        assert pool.run(tab, 0, 5) == 5
        np.testing.assert_array_equal(bufs[6], np.arange(13) + 5)
        assert not bufs[7].any()


@pytest.mark.parametrize("n_threads", (2, 3))
def test_n_tasks_limits_the_threads_of_a_node(n_threads):
    kern = make_kernel("COUNT", count_calls)
    n = 50
    counters = np.zeros((n, 2), dtype=np.int64)
    n_tasks = [1 + i % n_threads for i in range(n)]       # 1, 2, (3), 1, 2, ...
    tab = _table(n, n_tasks, kern, list(range(n)), [(0, 0)] * n, counters)
    with WorkerPool(n_threads) as pool:
        pool.run(tab)
    np.testing.assert_array_equal(counters[:, 0], n_tasks)          # ith < n_tasks ran
    np.testing.assert_array_equal(counters[:, 1], np.array(n_tasks) - 1)  # single-task: thread 0


# --- copies vs the reference backend -----------------------------------------------------------

def _cases(ctx, rng):
    """(name, result tensor, graph) for odd shapes, permuted sources and type pairs."""
    out = []

    def leaf(type, ne):
        t = gg.new_tensor(ctx, gg.as_type(type), len(ne), ne)
        vals = rng.uniform(-4, 4, size=t.ne[::-1])
        if type == "i32":
            vals = rng.integers(-1000, 1000, size=t.ne[::-1])
        gg.data.write(t, vals)
        return t

    def add(name, t):
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, t)
        out.append((name, t, gf))

    for type in ("f32", "f16", "bf16", "i32"):
        a = leaf(type, [7, 5, 3, 2])
        add(f"cont_permuted_{type}", gg.cont(ctx, gg.permute(ctx, a, 2, 0, 3, 1)))
        add(f"cont_transposed_{type}", gg.cont(ctx, gg.transpose(ctx, leaf(type, [13, 11]))))
        add(f"dup_{type}", gg.dup(ctx, gg.permute(ctx, a, 0, 2, 1, 3)))
        add(f"cont_reshaped_{type}", gg.cont_2d(ctx, gg.permute(ctx, a, 1, 0, 2, 3), 15, 14))
    pairs = [("f32", "f16"), ("f16", "f32"), ("f32", "bf16"), ("bf16", "f32"), ("f16", "bf16"),
             ("i32", "f32"), ("f32", "i32"), ("i32", "f16"), ("f32", "f32"), ("i32", "i32")]
    for ta, tb in pairs:
        a = leaf(ta, [9, 7, 5, 1])
        src = gg.permute(ctx, a, 0, 2, 1, 3)
        b = gg.new_tensor(ctx, gg.as_type(tb), 4, src.ne)
        add(f"cpy_{ta}_{tb}_permuted", gg.cpy(ctx, src, b))
        b2 = gg.new_tensor_2d(ctx, gg.as_type(tb), 35, 9)        # other shape, same count
        add(f"cpy_{ta}_{tb}_reshaped", gg.cpy(ctx, gg.transpose(ctx, leaf(ta, [9, 35])), b2))
    for ta, tb in [("f32", "q4_0"), ("f32", "q8_0"), ("f16", "q5_1"), ("q4_0", "f32"),
                   ("q8_0", "f16"), ("q5_0", "bf16"), ("q4_1", "q4_1")]:
        a = leaf(ta, [64, 3, 5, 1])
        src = gg.permute(ctx, a, 0, 2, 1, 3) if not gg.is_quantized(a.type) else a
        b = gg.new_tensor(ctx, gg.as_type(tb), 4, src.ne)
        add(f"cpy_{ta}_{tb}", gg.cpy(ctx, src, b))
    add("cont_q8_0_reshaped", gg.cont_2d(ctx, leaf("q8_0", [64, 3]), 96, 2))
    add("cast_f32_f16", gg.cast(ctx, gg.transpose(ctx, leaf("f32", [5, 3])), gg.TYPE_F16))
    add("cast_f16_q8_0", gg.cast(ctx, leaf("f16", [64, 3]), gg.TYPE_Q8_0))
    return out


def test_copies_match_reference_bitwise(backend):
    ctx = gg.init(mem_size=32 << 20)
    rng = np.random.default_rng(1234)
    ref = ReferenceBackend()
    for name, t, gf in _cases(ctx, rng):
        assert backend.supports_op(t), name
        ref.graph_compute(gf)
        want = gg.tensor_get(t)
        gg.tensor_memset(t, 0)
        backend.graph_compute(gf)
        assert gg.tensor_get(t) == want, name


def test_unsupported_copy_is_rejected_before_compute(backend):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 64, 4)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 32, 8)          # rows of another length
    c = gg.cpy(ctx, a, b)
    assert not backend.supports_op(c)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, c)
    with pytest.raises(gg.UnsupportedError, match="CPY"):
        backend.graph_compute(gf)


# --- errors --------------------------------------------------------------------------------------

def _fail_table():
    table = {}
    add_kernel(table, make_kernel("CONT", fail_on_node_1), "CONT")
    return table


@pytest.mark.parametrize("n_threads", THREADS)
def test_kernel_error_names_the_node_and_pool_survives(n_threads):
    be = NumbaBackend(n_threads, kernels=_fail_table())
    ctx = gg.init(mem_size=1 << 20)
    x = gg.from_numpy(ctx, np.arange(6, dtype=np.float32).reshape(2, 3))
    y0 = gg.cont(ctx, x)
    y1 = gg.set_name(gg.cont(ctx, y0), "the_bad_one")
    y2 = gg.cont(ctx, y1)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y2)
    for _ in range(2):                                   # the same error each time
        gg.tensor_memset(y0, 0)
        gg.tensor_memset(y2, 0)
        with pytest.raises(gg.ComputeError) as ei:
            be.graph_compute(gf)
        msg = str(ei.value)
        for part in ("node 1", "CONT", "the_bad_one", "[3, 2]", "test kernel failure", "101"):
            assert part in msg, msg
        np.testing.assert_array_equal(gg.to_numpy(y0), gg.to_numpy(x))   # node 0 ran
        assert not gg.to_numpy(y2).any()                                  # node 2 did not
    # the pool still works
    gf2 = gg.new_graph(ctx)
    z = gg.cont(ctx, x)
    gg.build_forward_expand(gf2, z)
    be.graph_compute(gf2)
    np.testing.assert_array_equal(gg.to_numpy(z), gg.to_numpy(x))
    be.free()


@pytest.mark.parametrize("n_threads", (1, 2))
def test_exception_in_a_kernel_becomes_compute_error(n_threads):
    table = {}
    add_kernel(table, make_kernel("CONT", divides_by_zero), "CONT")
    be = NumbaBackend(n_threads, kernels=table)
    ctx = gg.init(mem_size=1 << 20)
    y = gg.set_name(gg.cont(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)), "div0")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    with pytest.raises(gg.ComputeError, match="node 0 CONT 'div0'.*raised an exception"):
        be.graph_compute(gf)
    be.free()


# --- threads, recomputes, caching ------------------------------------------------------------------

def _chain(ctx, n, ne=(5, 3)):
    x = gg.from_numpy(ctx, np.arange(np.prod(ne), dtype=np.float32).reshape(ne[::-1]))
    y = x
    for i in range(n):
        y = gg.cont(ctx, gg.transpose(ctx, y)) if i % 2 else gg.cont(ctx, y)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return x, y, gf


def test_recompute_200_times_no_thread_leak_no_relowering(backend):
    ctx = gg.init(mem_size=4 << 20)
    x, y, gf = _chain(ctx, 21)
    base = threading.active_count()
    n0 = backend.n_lowerings
    for i in range(200):
        gg.data.write(x, np.full((3, 5), float(i)))
        backend.graph_compute(gf)
        assert gg.to_numpy(y)[0, 0] == i
    assert threading.active_count() == base
    assert backend.n_lowerings == n0 + 1               # lowered once, then cached


def test_pools_are_released():
    base = threading.active_count()
    for _ in range(10):
        be = NumbaBackend(3)
        assert threading.active_count() == base + 2
        be.free()
    for _ in range(5):
        NumbaBackend(2)                                    # dropped without free()
    gc.collect()
    assert threading.active_count() == base
    be = NumbaBackend(2)
    be.set_n_threads(3)
    assert threading.active_count() == base + 2
    be.set_n_threads(1)
    assert threading.active_count() == base
    be.free()


def test_interpreter_exits_cleanly_with_live_pools():
    """Pools left open (workers polling or asleep) do not hold the interpreter at exit."""
    script = (
        "import numpy as np, pyggml as gg\n"
        "from pyggml.backends.numba_cpu.backend import NumbaBackend\n"
        "ctx = gg.init(mem_size=1 << 20)\n"
        "x = gg.from_numpy(ctx, np.arange(12, dtype=np.float32).reshape(3, 4))\n"
        "y = gg.cont(ctx, gg.transpose(ctx, x))\n"
        "gf = gg.new_graph(ctx)\n"
        "gg.build_forward_expand(gf, y)\n"
        "bes = [NumbaBackend(n) for n in (2, 3)]\n"
        "for be in bes:\n"
        "    be.graph_compute(gf)\n"
        "gg.graph_compute_with_ctx(ctx, gf, 2)\n"
        "print(gg.to_numpy(y)[1, 2])\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "9.0"


def test_lowered_table_is_cached_and_invalidated():
    be = NumbaBackend(2)
    ctx = gg.init(mem_size=4 << 20)
    x, y, gf = _chain(ctx, 4)
    be.graph_compute(gf)
    be.graph_compute(gf)
    assert be.n_lowerings == 1
    assert [k for k in gf.cache if k[0] == "numba"] == [("numba", id(be), gf.version, 2)]
    # a new node: new graph version -> lowered again (and the stale entry dropped)
    z = gg.cont(ctx, y)
    gg.build_forward_expand(gf, z)
    be.graph_compute(gf)
    assert be.n_lowerings == 2 and len([k for k in gf.cache if k[0] == "numba"]) == 1
    np.testing.assert_array_equal(gg.to_numpy(z), gg.to_numpy(y))
    # a tensor moved to another buffer -> lowered again, results follow the move
    want = gg.to_numpy(z).copy()
    y.set_buffer(gg.Buffer(4096), 128)
    gg.tensor_memset(z, 0)
    be.graph_compute(gf)
    assert be.n_lowerings == 3
    np.testing.assert_array_equal(gg.to_numpy(y), want)
    np.testing.assert_array_equal(gg.to_numpy(z), want)
    # other thread count -> its own table
    be.set_n_threads(3)
    be.graph_compute(gf)
    assert be.n_lowerings == 4
    be.free()


def test_eval_callback_sees_each_node_after_it_ran(backend):
    ctx = gg.init(mem_size=4 << 20)
    x, y, gf = _chain(ctx, 6)
    want = {}
    ReferenceBackend().graph_compute(gf)
    for n in gf.nodes:
        want[id(n)] = gg.to_numpy(n).copy()
    for n in gf.nodes:
        if n.view_src is None:
            gg.tensor_memset(n, 0)
    seen = []

    def cb(t, ask):
        if ask:
            return gf.nodes.index(t) % 2 == 0 or t is gf.nodes[-1]
        seen.append(t.name)
        np.testing.assert_array_equal(gg.to_numpy(t), want[id(t)])
        return True

    backend.graph_compute(gf, cb)
    assert len(seen) == sum(1 for i, t in enumerate(gf.nodes) if i % 2 == 0 or t is gf.nodes[-1])
    np.testing.assert_array_equal(gg.to_numpy(y), want[id(y)])

    # returning False stops the graph after that node
    for n in gf.nodes:
        if n.view_src is None:
            gg.tensor_memset(n, 0)
    stop_at = gf.nodes[2]
    backend.graph_compute(gf, lambda t, ask: True if ask else t is not stop_at)
    np.testing.assert_array_equal(gg.to_numpy(stop_at), want[id(stop_at)])
    assert not gg.to_numpy(gf.nodes[-1]).any()


def test_graph_compute_with_ctx_runs_on_numba():
    from pyggml import compute
    ctx = gg.init(mem_size=4 << 20)
    x, y, gf = _chain(ctx, 5)
    gg.graph_compute_with_ctx(ctx, gf, 2)
    sched = compute._CTX_SCHEDS[2]
    assert [b.name for b in sched.backends] == ["numba", "reference"]
    sched.alloc_graph(gf)                 # the plan graph_compute_with_ctx left on gf.cache
    assert {sched.tensor_backend(n).name for n in gf.nodes} == {"numba"}
    np.testing.assert_array_equal(gg.to_numpy(y), gg.to_numpy(x))     # two transposes


def test_kernel_table_entries():
    for op in ("CONT", "DUP", "CPY"):
        assert KERNELS[op].variants, op
    k = KERNELS["CPY"].variants[0]
    assert k.address == k.address != 0                  # compiled once, stable address


def test_a_kernel_that_does_not_compile_is_a_ggml_error():
    """A kernel Numba cannot compile fails the compute with a ComputeError naming it."""
    import numpy as np

    import pyggml as gg
    from pyggml.backends.numba_cpu import kernels as K

    def broken(desc, ith, nth):
        no_such_function(desc)  # noqa: F821

    k = K.make_kernel("SCALE", broken)
    K.KERNELS["SCALE"].variants.insert(0, k)
    try:
        ctx = gg.init(mem_size=1 << 20)
        y = gg.scale(ctx, gg.from_numpy(ctx, np.ones((2, 32), np.float32)), 2.0)
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, y)
        be = gg.backend_numba_init(1)
        with pytest.raises(gg.ComputeError, match="SCALE:broken.*no_such_function"):
            be.graph_compute(gf)
        be.free()
    finally:
        K.KERNELS["SCALE"].variants.remove(k)
