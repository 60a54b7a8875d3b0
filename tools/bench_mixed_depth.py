"""Decode speed at depth, F16 KV cache vs the mixed cache (hot F16 ring + cold Q4_0).

    python tools/bench_mixed_depth.py [--rounds 3] [--depth 3800] [--n-gen 64] [--hot 256]
                                      [--n-ctx 4096] [--threads 2] [--model smollm2-135m]

Two Llama(n_ctx) of the same model, one per cache kind; each round, for each in turn:
reset, eval `depth` random tokens (untimed), then `n_gen` single-token greedy decodes, timed
(wall and this process's CPU time, all threads). Rounds alternate the two sides so the
machine's background load hits both alike; the medians and mixed/f16 (speed ratio: above 1
the mixed cache is faster) are printed for wall and CPU time. Issue #14's target: mixed
within 10% of F16 (ratio >= 0.9) at n_ctx 4096 with 256 hot.

--profile: after the rounds, where one decode step's time goes for each cache: the step's
CPU time outside graph_compute (Python: inputs, masks, graph reuse), and each node of its
lowered table run alone on one thread (process_time, --reps runs; as tools/bench_nodes.py,
with each flash_attn_ext_with_state's softmax state made fresh before every run), summed by
op, side by side.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyggml.llm.llama import Llama  # noqa: E402


def _last(lg):
    return int(np.argmax(lg[-1] if lg.ndim > 1 else lg))


def decode_round(m, toks, n_gen):
    """(tokens/s by wall time, tokens/s by CPU time) of n_gen decodes after toks."""
    m.reset()
    m.eval(toks)
    nxt = _last(m.logits())
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(n_gen):
        m.eval([nxt])
        nxt = _last(m.logits())
    return n_gen / (time.perf_counter() - t0), n_gen / (time.process_time() - c0)


def step_overhead(m, n=16):
    """CPU seconds per decode step spent outside graph_compute (median of n steps)."""
    be = m._backend
    inner = []
    orig = be.graph_compute

    def timed(gf, *a, **k):
        c0 = time.process_time()
        orig(gf, *a, **k)
        inner.append(time.process_time() - c0)
    be.graph_compute = timed
    tot = []
    try:
        nxt = _last(m.logits())
        for _ in range(n):
            c0 = time.process_time()
            m.eval([nxt])
            nxt = _last(m.logits())
            tot.append(time.process_time() - c0)
    finally:
        del be.graph_compute
    return statistics.median(t - i for t, i in zip(tot, inner))


def node_profile(m, reps):
    """{op: [CPU seconds, nodes]} of the last step's graph, each node alone on one thread."""
    from pyggml import data
    from pyggml.backends.numba_cpu.executor import run_nodes
    from pyggml.ops.fa_state import fresh_values
    tab = m._backend.backends[0].table(m._decoder.last_graph)
    kaddrs, descs, ntasks, status, sync = tab.addrs
    scratch = np.zeros(4096, dtype=np.int64)
    by = collections.defaultdict(lambda: [0.0, 0])
    for i in range(tab.n):
        node = tab.nodes[i]
        st = node.src[6] if node.op_name == "FLASH_ATTN_EXT_WITH_STATE" else None
        fresh = fresh_values(st.ne) if st is not None else None
        spent = 0.0
        for r in range(reps + 1):
            if st is not None:
                data.write(st, fresh)
            c0 = time.process_time()
            run_nodes(kaddrs, descs, ntasks, sync, i, i + 1, scratch.ctypes.data, status, 0, 1)
            if r:                                  # the first run warms the caches
                spent += time.process_time() - c0
        by[node.op_name][0] += spent / reps
        by[node.op_name][1] += 1
    return by


def profile(models, toks, reps):
    for m in models.values():
        m.reset()
        m.eval(toks)
        m.eval([_last(m.logits())])          # a decode step at depth: the profiled graph
    prof = {k: node_profile(m, reps) for k, m in models.items()}
    over = {k: step_overhead(m) for k, m in models.items()}
    ops = sorted(set(prof["f16"]) | set(prof["mixed"]),
                 key=lambda o: -max(prof["f16"].get(o, [0])[0], prof["mixed"].get(o, [0])[0]))
    print(f"one decode step, CPU ms on 1 thread (nodes alone, {reps} runs each):")
    print(f"{'op':28s} {'f16 ms':>8s} {'nodes':>5s} {'mixed ms':>9s} {'nodes':>5s}")
    for o in ops:
        a = prof["f16"].get(o, [0.0, 0])
        b = prof["mixed"].get(o, [0.0, 0])
        print(f"{o:28s} {a[0] * 1e3:8.2f} {a[1]:5d} {b[0] * 1e3:9.2f} {b[1]:5d}")
    tot = {k: sum(v[0] for v in p.values()) for k, p in prof.items()}
    print(f"{'nodes total':28s} {tot['f16'] * 1e3:8.2f} {'':5s} {tot['mixed'] * 1e3:9.2f}")
    print(f"{'outside graph_compute':28s} {over['f16'] * 1e3:8.2f} {'':5s} "
          f"{over['mixed'] * 1e3:9.2f}   (all threads, per step)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depth", type=int, default=3800)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--hot", type=int, default=256)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--profile", action="store_true", help="per-op profile of a decode step")
    ap.add_argument("--reps", type=int, default=5, help="runs per node with --profile")
    args = ap.parse_args(argv)
    if args.depth + args.n_gen > args.n_ctx:
        ap.error(f"depth {args.depth} + n_gen {args.n_gen} exceeds n_ctx {args.n_ctx}")
    rng = np.random.default_rng(0)
    toks = [int(t) for t in rng.integers(100, 40000, args.depth)]
    models = {k: Llama(args.model, n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
                       verbose=False, kv_cache=k, kv_hot=args.hot) for k in ("f16", "mixed")}
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    for r in range(args.rounds):
        for k, m in models.items():
            w, c = decode_round(m, toks, args.n_gen)
            wall[k].append(w)
            cpu[k].append(c)
            print(f"round {r} {k:5s} {w:6.1f} t/s wall  {c:6.1f} t/s cpu", flush=True)
    for name, res in (("wall", wall), ("cpu", cpu)) if args.rounds else ():
        med = {k: statistics.median(v) for k, v in res.items()}
        spread = ", ".join(f"{k} {min(v):.1f}-{max(v):.1f}" for k, v in res.items())
        print(f"{name}: f16 {med['f16']:.1f} t/s, mixed {med['mixed']:.1f} t/s ({spread}); "
              f"mixed/f16 {med['mixed'] / med['f16']:.3f}")
    if args.profile:
        profile(models, toks, args.reps)


if __name__ == "__main__":
    main()
