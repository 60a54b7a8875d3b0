"""How long a new graph costs in Python before any compute: build, allocate, plan, lower.

The SmolLM2-135M shape (30 layers, 576 wide, Q4_1 weights: ~844 nodes for a decode step)
with random weights, through a KV cache, as models.llama.Decoder builds a step's graph.
Phases, per graph (process_time: single-threaded Python work, robust to other load):
  build  ctx + graph + cache.begin + model.build (op building, inference, DFS; layers after
         the first stamped from its template unless --ops-layers)
  alloc  sched.alloc.alloc_graph (the graph allocator)
  plan   NumbaBackend.select + graph_plan (kernel variant per node, n_tasks, work sizes)
  lower  NumbaBackend.lower (the node table: kernel addresses + descriptors)
The target (DESIGN.md §9) is <= 10 ms for the whole, <= 12 µs per node. Every run also
prints a host reference (host_speed: µs of a fixed pure-Python loop) to compare hosts by.

    python tools/bench_graph.py [--cache f16|mixed] [--tokens N] [--past N] [-r REPEATS]
                                [--sched] [--no-gc] [--ops-layers] [--profile] [--marks DIR]
                                [--stub-kernels]

Instruction counts (robust when the machine is shared): tools/callgrind_graph.sh runs this
under callgrind with instrumentation on only around the repeats (--marks).
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import time

import pyggml as gg
from pyggml.attention.kv_cache import F16KVCache
from pyggml.attention.kv_cache import MixedKVCache
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.plan import graph_plan
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.sched.alloc import alloc_graph

SMOLLM2 = LlamaConfig(n_vocab=49152, n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536,
                      rope_base=100000, wtype="q4_1", etype="q8_0")


class _StubCFunc:
    address = 0x1000            # never called: a stub-kernels run computes nothing


class _StubPool:
    def __init__(self, n_threads):
        self.n_threads = n_threads

    def close(self):
        pass


def stub_kernels() -> None:
    """Lower with stand-in kernel addresses and no worker pool: the phases' Python work
    exactly, without compiling any kernel (A/B of two trees whose kernel caches are cold:
    every edit under backends/numba_cpu starts a fresh one). Nothing can be computed after."""
    from pyggml.backends.numba_cpu import backend as backend_mod
    from pyggml.backends.numba_cpu import kernels as kernels_mod
    kernels_mod.Kernel.cfunc = property(lambda self: _StubCFunc)
    backend_mod.WorkerPool = _StubPool


def make_cache(kind: str, cfg: LlamaConfig, n_ctx: int, past: int):
    if kind == "mixed":
        cache = MixedKVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, n_ctx, hot_tokens=64,
                             max_batch=512)
    else:
        cache = F16KVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, n_ctx)
    while cache.n_past < past:                       # bookkeeping only: nothing computed
        cache.begin(min(32, past - cache.n_past))
        cache.commit()
    return cache


def phases(model, cache, backend, n_tokens: int, sched=None):
    """One graph through every phase; returns ({phase: seconds}, n_nodes)."""
    t = {}
    c0 = time.process_time()
    ctx = gg.init(mem_size=64 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 8192)
    cache.begin(n_tokens)
    model.build(ctx, gf, cache, n_tokens)
    c1 = time.process_time()
    if sched is not None:                            # the Decoder's path through a scheduler
        sched.alloc_graph(gf)                        # assign backends, allocate, split
        c2 = c3 = time.process_time()
        g = sched.splits[0].graph                    # the split's graph, as compute runs it
        if g is None:                                # older pyggml: made at compute
            g = gg.CGraph(len(sched.splits[0].nodes))
            g.nodes = sched.splits[0].nodes
        backend.table(g)                             # select, plan, lower
        c4 = time.process_time()
        cache.step = None
        return dict(build=c1 - c0, alloc=c2 - c1, plan=0.0, lower=c4 - c3, total=c4 - c0), \
            gf.n_nodes
    alloc_graph(gf)
    c2 = time.process_time()
    if hasattr(backend, "select"):
        selected = backend.select(gf)
        cplan = graph_plan(gf, backend.n_threads, backend, selected)
        c3 = time.process_time()
        backend.lower(gf, cplan, selected)
    else:                                            # older pyggml (before/after comparisons)
        backend.check_supported(gf)
        cplan = graph_plan(gf, backend.n_threads, backend)
        c3 = time.process_time()
        backend.lower(gf, cplan)
    c4 = time.process_time()
    cache.step = None                                # not computed: forget the step
    t["build"], t["alloc"], t["plan"], t["lower"] = c1 - c0, c2 - c1, c3 - c2, c4 - c3
    t["total"] = c4 - c0
    return t, gf.n_nodes


def host_speed(reps: int = 7) -> float:
    """µs of process_time for a fixed pure-Python loop (attribute stores, dict stores, int
    arithmetic: what graph building and lowering spend their time on), the minimum of
    `reps` runs: a host reference printed with every run, so that figures from different
    hosts (or loads) can be compared."""
    class _Obj:
        __slots__ = ("a", "b")

    o, d = _Obj(), {}
    best = float("inf")
    for _ in range(reps):
        c = time.process_time()
        for i in range(20000):
            o.a = i
            o.b = o.a + 1
            d[i & 255] = o.b
        best = min(best, time.process_time() - c)
    return best * 1e6


def _wait_for(marks: str, say: str, name: str) -> None:
    print(say, flush=True)
    while not os.path.exists(os.path.join(marks, name)):
        time.sleep(0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", choices=("f16", "mixed"), default="f16")
    ap.add_argument("--tokens", type=int, default=1, help="tokens of the step (1 = decode)")
    ap.add_argument("--past", type=int, default=100, help="tokens already in the cache")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("-r", "--repeats", type=int, default=20)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--sched", action="store_true",
                    help="through Sched([numba, reference]) as the Decoder runs (alloc = "
                         "assignment + allocation + splits; lower = select + plan + lower)")
    ap.add_argument("--no-gc", action="store_true",
                    help="Python's cycle collector paused, as Decoder and the backend do")
    ap.add_argument("--ops-layers", action="store_true",
                    help="build every layer through the ops (LlamaModel.stamp_layers off: "
                         "the build before layer templates)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the repeats (top 30 functions by own time)")
    ap.add_argument("--marks", metavar="DIR",
                    help="print READY and wait for DIR/go before the repeats, print DONE and "
                         "wait for DIR/end after them (tools/callgrind_graph.sh)")
    ap.add_argument("--stub-kernels", action="store_true",
                    help="stand-in kernel addresses, no worker pool: nothing compiles (A/B "
                         "of trees with cold kernel caches; the Python work is the same)")
    args = ap.parse_args(argv)

    if args.stub_kernels:
        stub_kernels()
    model = LlamaModel.random(SMOLLM2)
    if args.ops_layers:
        model.stamp_layers = False
    cache = make_cache(args.cache, SMOLLM2, args.ctx, args.past)
    backend = NumbaBackend(args.threads)
    sched = gg.sched_new([backend, gg.backend_reference_init()]) if args.sched else None
    phases(model, cache, backend, args.tokens, sched)   # compiles/loads the kernels once
    if args.no_gc:
        gc.disable()
    runs = []
    prof = cProfile.Profile() if args.profile else None
    if args.marks:
        _wait_for(args.marks, "READY", "go")
    for _ in range(args.repeats):
        if prof is not None:
            prof.enable()
        t, n = phases(model, cache, backend, args.tokens, sched)
        if prof is not None:
            prof.disable()
        runs.append(t)
    if args.marks:
        _wait_for(args.marks, "DONE", "end")
    backend.free()
    print(f"SmolLM2-135M shape, {args.cache} cache, {args.tokens} token(s), {args.past} past: "
          f"{n} nodes, {args.repeats} graphs (process_time{', sched' if args.sched else ''}"
          f"{', gc paused' if args.no_gc else ''}"
          f"{', every layer through the ops' if args.ops_layers else ''}"
          f"{', stub kernels' if args.stub_kernels else ''})")
    print(f"host reference: {host_speed():.0f} µs (fixed pure-Python loop, process_time, min of "
          f"7; lower is faster)")
    print(f"{'phase':>6} {'ms median':>10} {'min':>7} {'max':>7} {'µs/node':>8}")
    for ph in ("build", "alloc", "plan", "lower", "total"):
        xs = [r[ph] * 1e3 for r in runs]
        med = statistics.median(xs)
        print(f"{ph:>6} {med:10.2f} {min(xs):7.2f} {max(xs):7.2f} {med * 1e3 / n:8.2f}")
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
