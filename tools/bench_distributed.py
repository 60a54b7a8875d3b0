"""Measure pyggml.distributed on this machine (numbers for docs/DISTRIBUTED.md).

1. Per-token cost of SmolLM2-135M on 2 Ray workers (layer split, context split) against one
   process: a prompt (default 32 tokens) and decode steps (default 16), n_ctx twice the
   prompt (context split decodes over both shards); the set-ups alternated in each of REPEAT
   rounds, overheads paired per round; wall time and CPU time (driver + workers, /proc), the
   load average at each round. --mixed: again with the mixed cache (kv_hot 32).
2. Context-split attention per layer against context length: one decode query (SmolLM2's
   shapes: 9 heads, 3 KV heads, head_dim 64, F16 K/V) over L keys, as one local
   flash_attn_ext, as 2 shards of L/2 on 2 workers chained (shard 1 continues from shard
   0's state and output: the default) and as the same 2 shards from fresh states at once,
   merged on the driver (chain=False); alternated in each round.

    python tools/bench_distributed.py [--repeat 3] [--lengths 4096,16384,65536] [--mixed]

A local Ray cluster is started with 2 CPUs and shut down at the end; every backend uses one
thread (the driver too), so the comparison is one process vs three on the same cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

SETUPS = {"1 process": {}, "2 workers, layer": dict(workers=2, split="layer"),
          "2 workers, context": dict(workers=2, split="context")}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (a Ray worker's, from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(llm) -> float:
    """CPU seconds of the driver and of the model's Ray workers."""
    w = llm._workers
    return time.process_time() + (sum(_cpu_s(b.pid) for b in w.workers) if w else 0.0)


def _spread(xs) -> str:
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def bench_tokens(path: str, repeat: int, n_prompt: int, n_gen: int, mixed: bool) -> None:
    from pyggml.llm import Llama
    # context split: n_ctx so that 2 shards each hold keys by the end of the prompt
    kw = dict(n_ctx=2 * max(n_prompt, 32), n_batch=n_prompt, n_threads=1, verbose=False)
    setups = dict(SETUPS)
    if mixed:
        kw.update(kv_cache="mixed", kv_hot=32)
    llamas = {name: Llama(path, **kw, **extra) for name, extra in setups.items()}
    prompt = list(range(100, 100 + n_prompt))
    res = {k: {"pp": [], "tg": [], "cpu_pp": [], "cpu_tg": []} for k in llamas}
    for name, llm in llamas.items():               # warm-up: graphs, kernels, first uploads
        llm.reset()
        llm.eval(prompt)
        llm.eval([7])
    loads = [os.getloadavg()[0]]
    for _ in range(repeat):                        # A/B/C alternated: the same load for all
        for name, llm in llamas.items():
            llm.reset()
            c0, t0 = _cpu(llm), time.perf_counter()
            llm.eval(prompt)
            c1, t1 = _cpu(llm), time.perf_counter()
            for i in range(n_gen):
                llm.eval([200 + i])
            c2, t2 = _cpu(llm), time.perf_counter()
            r = res[name]
            r["pp"].append((t1 - t0) * 1e3)
            r["tg"].append((t2 - t1) * 1e3 / n_gen)
            r["cpu_pp"].append((c1 - c0) * 1e3)
            r["cpu_tg"].append((c2 - c1) * 1e3 / n_gen)
        loads.append(os.getloadavg()[0])
    base = res["1 process"]
    print(f"\n{'mixed cache (kv_hot 32), ' if mixed else ''}prompt {n_prompt} tokens then "
          f"{n_gen} decodes, n_ctx {kw['n_ctx']}, {repeat} rounds; load average "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print(f"| set-up | prompt {n_prompt} tok (ms) | overhead vs 1 process (ms) | decode "
          f"(ms/token) | overhead (ms/token) | CPU prompt (ms) | CPU decode (ms/token) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res.items():
        # overheads: per round, paired with the single process's run of the same round
        d_pp = [a - b for a, b in zip(r["pp"], base["pp"])]
        d_tg = [a - b for a, b in zip(r["tg"], base["tg"])]
        print(f"| {name} | {_spread(r['pp'])} | {_spread(d_pp)} | {_spread(r['tg'])} | "
              f"{_spread(d_tg)} | {_spread(r['cpu_pp'])} | {_spread(r['cpu_tg'])} |")
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
    print("\n| context L | local flash_attn_ext (ms) | 2 shards chained (ms) | 2 shards in "
          "parallel + merge (ms) | load avg | chained: max abs diff | parallel: max abs diff |")
    print("|---|---|---|---|---|---|---|")
    try:
        for L in lengths:
            ctx = gg.init(mem_size=(L * D * HKV * 2 * 2) * 2 + (64 << 20))
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
            shards, masks = [], []
            for w in range(2):
                ks = gg.from_numpy(ctx, gg.to_numpy(kv[0])[:, w * h:(w + 1) * h], type=gg.TYPE_F16)
                vs = gg.from_numpy(ctx, gg.to_numpy(kv[1])[:, w * h:(w + 1) * h], type=gg.TYPE_F16)
                workers[w].adopt([ks, vs])
                shards += [ks, vs]
                masks.append(gg.from_numpy(ctx, np.zeros((1, h), np.float16)))

            def new_state():
                return gg.from_numpy(ctx, fresh_values([2, H, 1, 1]).reshape(H, 2))
            # parallel: each shard from a fresh state, merged on the driver (chain=False)
            g2 = gg.new_graph(ctx)
            states = [new_state() for _ in range(2)]
            outs = [gg.flash_attn_ext_with_state(ctx, q, shards[2 * w], shards[2 * w + 1],
                                                 masks[w], None, None, None, states[w],
                                                 0.125, 0.0, 0.0) for w in range(2)]
            merged = lse_merge(ctx, g2, outs, states)
            gg.build_forward_expand(g2, merged)
            # chained (the default): shard 1 continues from shard 0's state and output
            g3 = gg.new_graph(ctx)
            chain_state = new_state()
            o = None
            for w in range(2):
                o = gg.flash_attn_ext_with_state(ctx, q, shards[2 * w], shards[2 * w + 1],
                                                 masks[w], None, None, None, chain_state,
                                                 0.125, 0.0, 0.0, o_prev=o)
                gg.build_forward_expand(g3, o)
            chained = o
            backends = [gg.backend_cpu_init(1), *workers, gg.backend_reference_init()]
            s2 = DistributedSched(backends, follow=False)
            s3 = DistributedSched(backends, follow=False)
            fresh = fresh_values(states[0].ne)
            t_loc, t_chain, t_par = [], [], []
            for r in range(repeat + 1):
                t0 = time.perf_counter()
                s1.graph_compute(g1)
                t1 = time.perf_counter()
                gg.tensor_set(chain_state, fresh)
                s3.graph_compute(g3)
                t2 = time.perf_counter()
                for st in states:
                    gg.tensor_set(st, fresh)
                s2.graph_compute(g2)
                t3 = time.perf_counter()
                if r:                                 # the first round loads kernels
                    t_loc.append((t1 - t0) * 1e3)
                    t_chain.append((t2 - t1) * 1e3)
                    t_par.append((t3 - t2) * 1e3)
            ref = gg.to_numpy(local)
            e_chain = float(np.abs(ref - gg.to_numpy(chained)).max())
            e_par = float(np.abs(ref - gg.to_numpy(merged)).max())
            def ms(xs):
                return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"
            print(f"| {L} | {ms(t_loc)} | {ms(t_chain)} | {ms(t_par)} | "
                  f"{os.getloadavg()[0]:.1f} | {e_chain:.1e} | {e_par:.1e} |", flush=True)
            for w in range(2):
                workers[w].release(shards[2 * w:2 * w + 2])
    finally:
        for w in workers:
            w.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--mixed", action="store_true", help="also the mixed cache (kv_hot 32)")
    ap.add_argument("--skip-tokens", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    args = ap.parse_args()
    import ray

    from pyggml.llm.model_path import resolve_model_path
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 << 20)
    try:
        path = resolve_model_path("smollm2-135m")
        if not args.skip_tokens:
            bench_tokens(path, args.repeat, args.prompt, args.gen, False)
            if args.mixed:
                bench_tokens(path, args.repeat, args.prompt, args.gen, True)
        if not args.skip_attention:
            bench_attention([int(x) for x in args.lengths.split(",")], max(args.repeat, 5))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
