"""Dispatch cost per node: pyggml's Numba executor vs real ggml, 1,000 tiny nodes.

    python tools/bench_dispatch.py [--nodes 1000] [--reps 200] [--threads 1,2]

Measures, per thread count:
  executor   1,000 tiny ADD-like kernels (16 floats) in a hand-built node table, recomputed:
             the cost of the executor loop, the indirect kernel call and the barrier
  backend    the same through NumbaBackend.graph_compute on a real graph (a chain of
             1,000 ADD nodes when the ADD kernel exists, else 1,000 CONT nodes): adds the
             per-graph Python work (cache lookup, location check, waking the workers)
  ggml       real ggml (libggml-python), 1,000 ggml_add of 16-float tensors, computed with a
             persistent ggml threadpool (and with ggml_graph_compute_with_ctx, which makes a
             new threadpool per call)
and prints µs/node (min and median over the repetitions) and our/ggml ratios. First-call
compile (or cache load) times are reported separately.

    python tools/bench_dispatch.py --floor [--reps 2000] [--threads 1,2]

The per-call floor: one tiny ADD node (16 floats, n_tasks = n_threads) in a kept graph,
recomputed through the normal API, µs per call (min and median, wall) and process CPU µs
per call (both threads, spinning included), for
  backend    NumbaBackend.graph_compute(gf)
  compute    pyggml.graph_compute(gf, cplan) with one plan reused (ggml_graph_compute)
  ggml       ggml_graph_compute(gf, cplan) with a persistent threadpool, through ctypes
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pyggml as gg  # noqa: E402
from pyggml.backends.numba_cpu.desc import DESC_LEN  # noqa: E402
from pyggml.backends.numba_cpu.desc import DST  # noqa: E402
from pyggml.backends.numba_cpu.desc import H_INDEX  # noqa: E402
from pyggml.backends.numba_cpu.desc import H_NTASKS  # noqa: E402
from pyggml.backends.numba_cpu.desc import H_STATUS  # noqa: E402
from pyggml.backends.numba_cpu.desc import HDR  # noqa: E402
from pyggml.backends.numba_cpu.desc import SLOT  # noqa: E402
from pyggml.backends.numba_cpu.desc import SRC0  # noqa: E402
from pyggml.backends.numba_cpu.desc import SRC1  # noqa: E402
from pyggml.backends.numba_cpu.desc import STATUS_LEN  # noqa: E402
from pyggml.backends.numba_cpu.desc import T_NE  # noqa: E402
from pyggml.backends.numba_cpu.desc import row_range  # noqa: E402
from pyggml.backends.numba_cpu.desc import t_addr  # noqa: E402
from pyggml.backends.numba_cpu.desc import t_ne  # noqa: E402
from pyggml.backends.numba_cpu.executor import NodeTable  # noqa: E402
from pyggml.backends.numba_cpu.executor import WorkerPool  # noqa: E402
from pyggml.backends.numba_cpu.intrinsics import f32_array  # noqa: E402
from pyggml.backends.numba_cpu.kernels import make_kernel  # noqa: E402


def tiny_add(desc, ith, nth):
    """dst = src0 + src1 over ne0 floats, split over threads."""
    n = t_ne(desc, DST, 0)
    d = f32_array(t_addr(desc, DST), n)
    a = f32_array(t_addr(desc, SRC0), n)
    b = f32_array(t_addr(desc, SRC1), n)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        d[i] = a[i] + b[i]


def stats(times, n):
    t = np.array(times) / n * 1e6
    return float(t.min()), float(np.median(t))


def timeit(fn, reps):
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_executor(n_nodes, n_threads, reps, kern):
    bufs = np.zeros((n_nodes + 2, 16), dtype=np.float32)
    bufs[0] = 1.0
    bufs[1] = 2.0
    status = np.zeros(STATUS_LEN, dtype=np.int64)
    descs = np.zeros((n_nodes, DESC_LEN), dtype=np.int64)
    for i in range(n_nodes):
        d = descs[i]
        d[H_NTASKS], d[H_STATUS], d[H_INDEX] = n_threads, status.ctypes.data, i
        for slot, row in ((DST, i + 2), (SRC0, i + 1), (SRC1, 0)):
            b = HDR + slot * SLOT
            d[b] = bufs[row].ctypes.data
            d[b + T_NE:b + T_NE + 4] = [16, 1, 1, 1]
    tab = NodeTable([None] * n_nodes, range(n_nodes), [kern] * n_nodes, descs,
                    [n_threads] * n_nodes, status, None)
    with WorkerPool(n_threads) as pool:
        times = timeit(lambda: pool.run(tab), reps)
    assert bufs[-1, 0] == 2.0 + n_nodes, bufs[-1, :4]
    return stats(times, n_nodes)


def build_chain(n_nodes, op):
    """x -> op -> op -> ... (n_nodes tiny nodes of 16 floats)."""
    ctx = gg.init(mem_size=(n_nodes + 8) * 4096)
    x = gg.new_tensor_1d(ctx, gg.TYPE_F32, 16)
    gg.data.write(x, np.arange(16))
    y = x
    for _ in range(n_nodes):
        y = gg.add(ctx, y, x) if op == "ADD" else gg.cont(ctx, y)
    gf = gg.new_graph_custom(ctx, n_nodes + 16)
    gg.build_forward_expand(gf, y)
    return ctx, gf


def bench_backend(n_nodes, n_threads, reps):
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    be = NumbaBackend(n_threads)
    what = "CONT"
    if hasattr(gg, "add"):
        ctx, gf = build_chain(2, "ADD")
        if all(be.supports_op(n) for n in gf.nodes):
            what = "ADD"
    ctx, gf = build_chain(n_nodes, what)
    t0 = time.perf_counter()
    be.graph_compute(gf)
    first = time.perf_counter() - t0
    times = timeit(lambda: be.graph_compute(gf), reps)
    be.free()
    return what, first, stats(times, n_nodes)


def bench_ggml(n_nodes, n_threads, reps):
    try:
        from pyggml.testing import ggml_lib
        g = ggml_lib.lib()
    except Exception as e:  # noqa: BLE001
        return None, f"real ggml not available: {e}"
    ctx = g.ggml_init(ggml_lib.InitParams((n_nodes + 16) * 1024 + (16 << 20), None, False))
    x = g.ggml_new_tensor_1d(ctx, 0, 16)
    ctypes.memmove(g.ggml_get_data(x), np.ones(16, np.float32).ctypes.data, 64)
    y = x
    for _ in range(n_nodes):
        y = g.ggml_add(ctx, y, x)
    gf = g.ggml_new_graph_custom(ctx, n_nodes + 16, False)
    g.ggml_build_forward_expand(gf, y)
    out = {}
    # persistent threadpool (what llama.cpp does)
    tp, plan, work = _threadpool_plan(g, gf, n_threads)
    out["threadpool"] = stats(timeit(lambda: g.ggml_graph_compute(gf, ctypes.byref(plan)), reps),
                              n_nodes)
    g.ggml_threadpool_free(tp)
    out["with_ctx"] = stats(timeit(lambda: g.ggml_graph_compute_with_ctx(ctx, gf, n_threads),
                                   max(10, reps // 4)), n_nodes)
    res = np.ctypeslib.as_array(ctypes.cast(g.ggml_get_data(y), ctypes.POINTER(ctypes.c_float)),
                                shape=(16,))
    assert res[0] == 1.0 + n_nodes, res[:4]
    g.ggml_free(ctx)
    return out, None


def _threadpool_plan(g, gf, n_threads):
    """A persistent ggml threadpool and gf's plan on it with its work buffer (keep all three
    alive while computing; free the pool with ggml_threadpool_free)."""
    params = ctypes.create_string_buffer(4096)
    g.ggml_threadpool_params_init(params, n_threads)
    tp = g.ggml_threadpool_new(params)
    plan = g.ggml_graph_plan(gf, n_threads, tp)
    work = np.zeros(max(int(plan.work_size), 1) + 64, dtype=np.uint8)
    plan.work_data = work.ctypes.data
    return tp, plan, work


def _timed(fn, reps):
    """(wall µs per call: min, median; process CPU µs per call) over reps calls."""
    for _ in range(50):
        fn()
    out = []
    pc = time.process_time
    c0 = pc()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    cpu = (pc() - c0) / reps * 1e6
    t = np.array(out) * 1e6
    return float(t.min()), float(np.median(t)), cpu


def floor_ours(n_threads, reps):
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    ctx, gf = build_chain(1, "ADD")
    be = NumbaBackend(n_threads)
    be.graph_compute(gf)
    tab = be.table(gf)
    out = {"n_tasks": int(tab.n_tasks[0]),
           "backend": _timed(lambda: be.graph_compute(gf), reps)}
    be.free()
    cplan = gg.graph_plan(gf, n_threads)
    gg.graph_compute(gf, cplan)
    out["compute"] = _timed(lambda: gg.graph_compute(gf, cplan), reps)
    res = gg.data.read(gf.nodes[-1]).ravel()
    assert res[1] == 2.0, res[:4]
    return out


def floor_ggml(n_threads, reps):
    from pyggml.testing import ggml_lib
    g = ggml_lib.lib()
    ctx = g.ggml_init(ggml_lib.InitParams(1 << 20, None, False))
    x = g.ggml_new_tensor_1d(ctx, 0, 16)
    ctypes.memmove(g.ggml_get_data(x), np.ones(16, np.float32).ctypes.data, 64)
    y = g.ggml_add(ctx, x, x)
    gf = g.ggml_new_graph_custom(ctx, 16, False)
    g.ggml_build_forward_expand(gf, y)
    tp, plan, work = _threadpool_plan(g, gf, n_threads)
    ref = ctypes.byref(plan)
    compute = g.ggml_graph_compute
    r = _timed(lambda: compute(gf, ref), reps)
    g.ggml_threadpool_free(tp)
    g.ggml_free(ctx)
    return r


def floor(threads, reps):
    print(f"per-call floor: 1 tiny ADD node, kept graph, {reps} calls; load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'threads':>7}  {'path':>8}  {'µs/call min':>11}  {'median':>7}  {'CPU µs/call':>11}")
    for nt in threads:
        ours = floor_ours(nt, reps)
        rows = [("backend", ours["backend"]), ("compute", ours["compute"])]
        try:
            rows.append(("ggml", floor_ggml(nt, reps)))
        except Exception as e:  # noqa: BLE001
            print(f"    real ggml not available: {e}")
        for name, (mn, med, cpu) in rows:
            print(f"{nt:>7}  {name:>8}  {mn:11.2f}  {med:7.2f}  {cpu:11.2f}")
        print(f"{'':>7}  (our ADD node runs {ours['n_tasks']} task(s))")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--floor", action="store_true", help="the per-call floor only")
    a = ap.parse_args(argv)
    threads = [int(x) for x in a.threads.split(",")]
    if a.floor:
        floor(threads, a.reps)
        return

    t0 = time.perf_counter()
    kern = make_kernel("TINY_ADD", tiny_add)
    kern.address
    print(f"tiny kernel: first use {time.perf_counter() - t0:.3f} s "
          f"({'loaded from cache' if kern.from_cache else 'compiled'})")
    print(f"{a.nodes} tiny nodes, {a.reps} recomputes; µs/node as min / median")
    print(f"{'threads':>7}  {'executor':>15}  {'backend':>22}  {'ggml threadpool':>15}  "
          f"{'ggml with_ctx':>15}  {'ratio exec':>10}  {'ratio backend':>13}")
    for nt in threads:
        ex = bench_executor(a.nodes, nt, a.reps, kern)
        what, first, be = bench_backend(a.nodes, nt, a.reps)
        gres, gerr = bench_ggml(a.nodes, nt, a.reps)
        tp = gres["threadpool"] if gres else (float("nan"),) * 2
        wc = gres["with_ctx"] if gres else (float("nan"),) * 2
        print(f"{nt:>7}  {ex[0]:6.3f} / {ex[1]:6.3f}  {what:>4} {be[0]:6.3f} / {be[1]:6.3f}"
              f" (1st {first * 1e3:5.0f} ms)  {tp[0]:6.3f} / {tp[1]:6.3f}  {wc[0]:6.3f} / {wc[1]:6.3f}"
              f"  {ex[0] / tp[0]:10.2f}  {be[0] / tp[0]:13.2f}")
        if gerr:
            print("   ", gerr)
    print("ratio = ours / ggml threadpool (min times). Target: <= 2 µs/node at 2 threads.")


if __name__ == "__main__":
    main()
