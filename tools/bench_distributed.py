"""Measure pyggml.distributed on this machine (numbers for docs/DISTRIBUTED.md).

1. Per-token cost of SmolLM2-135M on 2 Ray workers (layer split, context split) against one
   process: a 32-token prompt and 16 decode steps (n_ctx 64: context split decodes over both
   shards), the three set-ups alternated, REPEAT rounds.
2. Context-split attention per layer against context length: one decode query (SmolLM2's
   shapes: 9 heads, 3 KV heads, head_dim 64, F16 K/V) over L keys, as one local
   flash_attn_ext and as 2 shards of L/2 on 2 workers merged on the driver.

    python tools/bench_distributed.py [--repeat 3] [--lengths 1024,4096,16384]

A local Ray cluster is started with 2 CPUs and shut down at the end; every backend uses one
thread (the driver too), so the comparison is one process vs three on the same cores.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _llamas(path):
    from pyggml.llm import Llama
    kw = dict(n_ctx=64, n_batch=32, n_threads=1, verbose=False)   # context: 2 shards of 32
    return {"1 process": Llama(path, **kw),
            "2 workers, layer": Llama(path, workers=2, split="layer", **kw),
            "2 workers, context": Llama(path, workers=2, split="context", **kw)}


def bench_tokens(path: str, repeat: int) -> None:
    llamas = _llamas(path)
    prompt = list(range(100, 132))
    res = {k: ([], []) for k in llamas}
    for name, llm in llamas.items():               # warm-up: graphs, kernels, first uploads
        llm.reset()
        llm.eval(prompt)
        llm.eval([7])
    for _ in range(repeat):
        for name, llm in llamas.items():
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            for i in range(16):
                llm.eval([200 + i])
            t2 = time.perf_counter()
            res[name][0].append((t1 - t0) * 1e3)
            res[name][1].append((t2 - t1) * 1e3 / 16)
    print("| set-up | prompt 32 tok (ms) | decode (ms/token) |")
    print("|---|---|---|")
    for name, (pp, tg) in res.items():
        print(f"| {name} | {statistics.median(pp):.1f} ({min(pp):.1f}-{max(pp):.1f}) | "
              f"{statistics.median(tg):.1f} ({min(tg):.1f}-{max(tg):.1f}) |")
    for llm in llamas.values():
        llm.close()


def bench_attention(lengths, repeat: int) -> None:
    import pyggml as gg
    from pyggml.attention import fresh_values
    from pyggml.distributed import DistributedSched
    from pyggml.distributed import RayBackend
    from pyggml.distributed import lse_merge
    rng = np.random.default_rng(0)
    D, H, HKV = 64, 9, 3
    workers = [RayBackend(i) for i in range(2)]
    print("| context L | local flash_attn_ext (ms) | 2 shards on 2 workers + merge (ms) |")
    print("|---|---|---|")
    try:
        for L in lengths:
            ctx = gg.init(mem_size=(L * D * HKV * 2 * 2) + (64 << 20))
            q = gg.from_numpy(ctx, rng.standard_normal((H, 1, D)).astype(np.float32))
            kv = [gg.from_numpy(ctx, rng.standard_normal((HKV, L, D)).astype(np.float32),
                                type=gg.TYPE_F16) for _ in range(2)]
            mask = gg.from_numpy(ctx, np.zeros((1, L), np.float16))
            local = gg.flash_attn_ext(ctx, q, kv[0], kv[1], mask, 0.125, 0.0, 0.0)
            g1 = gg.new_graph(ctx)
            gg.build_forward_expand(g1, local)
            s1 = gg.sched_new([gg.backend_cpu_init(1), gg.backend_reference_init()])
            # shards: each worker holds half the keys of K and V (uploaded once)
            h = L // 2
            outs, states, shards = [], [], []
            g2 = gg.new_graph(ctx)
            for w in range(2):
                ks = gg.from_numpy(ctx, gg.to_numpy(kv[0])[:, w * h:(w + 1) * h], type=gg.TYPE_F16)
                vs = gg.from_numpy(ctx, gg.to_numpy(kv[1])[:, w * h:(w + 1) * h], type=gg.TYPE_F16)
                workers[w].adopt([ks, vs])
                shards += [ks, vs]
                m = gg.from_numpy(ctx, np.zeros((1, h), np.float16))
                st = gg.from_numpy(ctx, fresh_values([2, H, 1, 1]).reshape(H, 2))
                outs.append(gg.flash_attn_ext_with_state(ctx, q, ks, vs, m, None, None, None,
                                                         st, 0.125, 0.0, 0.0))
                states.append(st)
            merged = lse_merge(ctx, g2, outs, states)
            gg.build_forward_expand(g2, merged)
            s2 = DistributedSched([gg.backend_cpu_init(1), *workers, gg.backend_reference_init()],
                                  follow=False)
            fresh = [fresh_values(st.ne) for st in states]
            t_loc, t_dist = [], []
            for r in range(repeat + 1):
                t0 = time.perf_counter()
                s1.graph_compute(g1)
                t1 = time.perf_counter()
                for st, f in zip(states, fresh):
                    gg.tensor_set(st, f)
                s2.graph_compute(g2)
                t2 = time.perf_counter()
                if r:                                 # the first round loads kernels
                    t_loc.append((t1 - t0) * 1e3)
                    t_dist.append((t2 - t1) * 1e3)
            err = float(np.abs(gg.to_numpy(local) - gg.to_numpy(merged)).max())
            print(f"| {L} | {statistics.median(t_loc):.2f} ({min(t_loc):.2f}-{max(t_loc):.2f}) | "
                  f"{statistics.median(t_dist):.2f} ({min(t_dist):.2f}-{max(t_dist):.2f}) |"
                  f" max abs diff {err:.1e}")
            for w in range(2):
                workers[w].release(shards[2 * w:2 * w + 2])
    finally:
        for w in workers:
            w.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--skip-tokens", action="store_true")
    args = ap.parse_args()
    import ray

    from pyggml.llm.model_path import resolve_model_path
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 << 20)
    try:
        if not args.skip_tokens:
            bench_tokens(resolve_model_path("smollm2-135m"), args.repeat)
        bench_attention([int(x) for x in args.lengths.split(",")], max(args.repeat, 5))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
