"""GET_ROWS / SET_ROWS / CPY kernel run time: CPU time per node, one thread.

Each case is one node (token embeddings read with GET_ROWS, K/V rows written into a cache
with SET_ROWS, a quantizing CPY), lowered by the Numba backend and run alone through the
executor loop (run_nodes, one thread, as tools/bench_nodes.py does) -r times, timed with
process_time: CPU time is what other processes on a shared machine disturb least. Compile
time is excluded (each case runs once first). Compare two checkouts by alternating runs:

    PYTHONPATH=<checkout> python tools/bench_rows.py [-r 200] [--only get_rows]

Shapes: embeddings of 2048 x 8192 (Q4_K, Q6_K, Q8_0) read for a 512-token prompt and for
one token; a cache of 4096 rows of 192 values (SmolLM2-135M: 3 KV heads x 64) written for
512 tokens and for one (F16, Q4_0, Q8_0; ggml's set_rows from F32).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def cases():
    from pyggml.types import GGMLType as T
    for t in (T.Q4_K, T.Q6_K, T.Q8_0):
        for n in (512, 1):
            yield f"get_rows {t.name.lower():5s} 2048x8192, {n:3d} ids", "get_rows", t, n
    for t in (T.F16, T.Q4_0, T.Q8_0):
        for n in (512, 1):
            yield f"set_rows {t.name.lower():5s} 192x4096, {n:3d} rows", "set_rows", t, n
    yield "cpy f32 -> q8_0 2048x512", "cpy", T.Q8_0, 512


def build(kind, t, n, rng):
    import pyggml as gg
    from pyggml import data
    from pyggml.types import GGMLType as T
    ctx = gg.init(mem_size=256 << 20)
    gf = gg.new_graph(ctx)
    if kind == "get_rows":
        a = gg.new_tensor_2d(ctx, t, 2048, 8192)
        data.write(a, rng.standard_normal((8192, 2048)).astype(np.float32))
        ids = gg.new_tensor_1d(ctx, T.I32, n)
        data.write(ids, rng.integers(0, 8192, n).astype(np.int32))
        gg.build_forward_expand(gf, gg.get_rows(ctx, a, ids))
    elif kind == "set_rows":
        cache = gg.new_tensor_2d(ctx, t, 192, 4096)
        src = gg.new_tensor_2d(ctx, T.F32, 192, n)
        data.write(src, rng.standard_normal((n, 192)).astype(np.float32))
        ids = gg.new_tensor_1d(ctx, T.I64, n)
        data.write(ids, (np.arange(n) + 100).astype(np.int64))
        gg.build_forward_expand(gf, gg.set_rows(ctx, cache, src, ids))
    else:
        src = gg.new_tensor_2d(ctx, T.F32, 2048, n)
        data.write(src, rng.standard_normal((n, 2048)).astype(np.float32))
        dst = gg.new_tensor_2d(ctx, t, 2048, n)
        gg.build_forward_expand(gf, gg.cpy(ctx, src, dst))
    return ctx, gf


def node_seconds(be, gf, reps: int) -> float:
    """CPU seconds per run of the graph's node(s), one thread, through the executor loop."""
    from pyggml.backends.numba_cpu.executor import run_nodes
    tab = be.table(gf)
    kaddrs, descs, ntasks, status, sync = tab.addrs
    state = np.zeros(4096, dtype=np.int64)
    run_nodes(kaddrs, descs, ntasks, sync, 0, tab.n, state.ctypes.data, status, 0, 1)
    c0 = time.process_time()
    for _ in range(reps):
        run_nodes(kaddrs, descs, ntasks, sync, 0, tab.n, state.ctypes.data, status, 0, 1)
    return (time.process_time() - c0) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-r", "--repetitions", type=int, default=200)
    ap.add_argument("--only", default="", help="cases whose label contains this")
    args = ap.parse_args(argv)
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    be = NumbaBackend(1)
    rng = np.random.default_rng(0)
    for label, kind, t, n in cases():
        if args.only not in label:
            continue
        ctx, gf = build(kind, t, n, rng)
        be.graph_compute(gf)                     # compiles (or loads) the kernel
        reps = args.repetitions if n > 1 else args.repetitions * 20
        print(f"{label:40s} {node_seconds(be, gf, reps) * 1e6:10.2f} µs CPU", flush=True)
    be.free()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
