"""`pyggml demo`: a small llama-style model decoding through the mixed F16/Q4_0 KV cache,
side by side with an all-F16 cache: speed, memory, and how far the logits move."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import pyggml as gg
from ..attention.kv_cache import MixedKVCache, F16KVCache
from .llama import LlamaConfig, LlamaModel, Decoder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyggml demo", description=__doc__)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: cores)")
    p.add_argument("--backend", default="numba", choices=("numba", "reference"))
    p.add_argument("--ctx", type=int, default=512, help="context length of the caches")
    p.add_argument("--hot", type=int, default=64, help="tokens kept hot (F16) in the mixed cache")
    p.add_argument("--prompt", type=int, default=96, help="prompt length (random token ids)")
    p.add_argument("--tokens", type=int, default=64, help="tokens to decode")
    p.add_argument("--model", default=None, help="a llama GGUF file (default: random weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", default="demo-graph.svg",
                   help="where to draw one layer's decode graph (.svg/.png/.dot; '' to skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="processes compiling cold Numba kernels before the run (default: "
                        "cores; 1: in this process)")
    return p


def make_backend(name: str, n_threads=None):
    """The chosen backend, behind a scheduler whose fallback is the reference backend."""
    if name == "reference":
        return gg.backend_reference_init()
    return gg.sched_new([gg.backend_numba_init(n_threads), gg.backend_reference_init()])


def _bar(i: int, n: int, t0: float, label: str, quiet: bool) -> None:
    if quiet:
        return
    w = 30
    k = int(w * i / max(n, 1))
    rate = i / max(time.perf_counter() - t0, 1e-9)
    print(f"\r{label} [{'#' * k}{'.' * (w - k)}] {i}/{n} {rate:6.1f} tok/s", end="",
          file=sys.stderr, flush=True)
    if i == n:
        print(file=sys.stderr)


BATCH = 32          # prompt tokens per prefill step


def _caches(model, args) -> tuple:
    c = model.cfg
    return (MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, args.ctx, hot_tokens=args.hot,
                         max_batch=BATCH),
            F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, args.ctx))


def _load_model(args):
    return LlamaModel.from_gguf(args.model) if args.model else \
        LlamaModel.random(LlamaConfig(), seed=args.seed)


def demo_kernels(args=None, model=None) -> list:
    """The Numba kernels the demo's graphs run (what `pyggml warmup --demo` compiles).

    The caches' step schedule is replayed without computing (begin/commit are bookkeeping):
    one graph per kind of step (token count, block moves or not, cold part or not), layer 0
    only (every layer has the same ops)."""
    from ..backends.numba_cpu.warmup import graph_kernels
    args = args if args is not None else _parser().parse_args([])
    model = model if model is not None else _load_model(args)
    steps = [min(BATCH, args.prompt - i) for i in range(0, args.prompt, BATCH)]
    steps += [1] * args.tokens
    graphs = []
    for cache in _caches(model, args):
        seen = set()
        for n in steps:
            st = cache.begin(n)
            key = (n, bool(st.moves), st.cold_after > 0)
            if key not in seen:
                seen.add(key)
                ctx = gg.init(mem_size=16 << 20, no_alloc=True)
                gf = gg.new_graph(ctx)
                model.build(ctx, gf, cache, n, layers=[0])
                graphs.append(gf)
            cache.commit()
    return graph_kernels(graphs)


def _warm_up(model, args) -> None:
    """Compile the demo's cold kernels in parallel processes before anything is timed."""
    from ..backends.numba_cpu.warmup import warm
    say = (lambda line: None) if args.quiet else \
        (lambda line: print(line, file=sys.stderr, flush=True))
    r = warm(demo_kernels(args, model), args.jobs, log=say)
    for e in r.errors + [f"{key} does not compile: {e}" for key, e in r.failed.items()]:
        say(f"warm-up: {e}")
    if r.cold:
        say(f"warm-up: {len(r.cold)} cold kernels ready in {r.seconds:.1f} s "
            f"({r.jobs or 1} process{'es' if r.jobs > 1 else ''})")


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    model = _load_model(args)
    c = model.cfg
    if args.prompt + args.tokens > args.ctx:
        raise gg.GGMLError(f"demo: prompt {args.prompt} + tokens {args.tokens} exceed --ctx {args.ctx}")
    if args.backend == "numba":
        _warm_up(model, args)
    backend = make_backend(args.backend, args.threads)
    mixed_cache, plain_cache = _caches(model, args)
    mixed = Decoder(model, mixed_cache, backend)
    plain = Decoder(model, plain_cache, backend)
    prompt = rng.integers(0, c.n_vocab, size=args.prompt)

    t0 = time.perf_counter()
    lm = mixed.prefill(prompt, BATCH)
    lp = plain.prefill(prompt, BATCH)
    t_prefill = time.perf_counter() - t0
    max_delta = float(np.abs(lm[-1] - lp[-1]).max())
    token = int(np.argmax(lp[-1]))
    t_mixed = t_plain = 0.0
    t0 = time.perf_counter()
    tokens = []
    for i in range(args.tokens):
        a = time.perf_counter()
        lm = mixed.step([token])
        b = time.perf_counter()
        lp = plain.step([token])
        e = time.perf_counter()
        t_mixed += b - a
        t_plain += e - b
        max_delta = max(max_delta, float(np.abs(lm[-1] - lp[-1]).max()))
        tokens.append(token)
        token = int(np.argmax(lp[-1]))     # both caches see the same tokens
        _bar(i + 1, args.tokens, t0, "decoding", args.quiet)
    nb = mixed.cache.nbytes()
    out = {"tok_s_mixed": args.tokens / t_mixed, "tok_s_f16": args.tokens / t_plain,
           "prefill_s": t_prefill, "max_abs_dlogits": max_delta, "mem": nb,
           "mem_f16": plain.cache.nbytes()["total"], "hot": mixed.cache.hot_count,
           "cold": mixed.cache.cold_count, "tokens": tokens, "logit_scale": float(np.abs(lp[-1]).max())}
    if args.graph:
        out["graph"] = _draw_layer(model, args.graph, args.ctx, args.hot)
    return out


def _draw_layer(model, path: str, n_ctx: int, hot: int) -> str:
    """One decode step of layer 0 through a mixed cache that already has cold blocks."""
    from ..viz import draw
    c = model.cfg
    cache = MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, n_ctx, hot_tokens=hot, max_batch=32)
    n = hot + 31                                            # pretend: a full hot window ...
    cache.hot_count, cache.n_past = n, n
    cache.slot_pos[:n] = np.arange(n)
    cache.begin(1)                                          # ... so this step moves a block
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph(ctx)
    model.build(ctx, gf, cache, 1, layers=[0])
    return draw(gf, path, title=f"pyggml demo: decode step, layer 0 ({gf.n_nodes} nodes)")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        r = run(args)
    except gg.GGMLError as e:
        print(f"pyggml demo: {e}", file=sys.stderr)
        return 1
    nb = r["mem"]
    mib = 1 / 2**20
    print(f"model: {LlamaConfig.__name__} random weights, prompt {args.prompt}, decoded {args.tokens}")
    print(f"decode speed: mixed cache {r['tok_s_mixed']:.1f} tok/s, F16 cache {r['tok_s_f16']:.1f} tok/s "
          f"({args.backend}, {args.threads or gg.default_n_threads()} threads)")
    print(f"cache memory (n_ctx {args.ctx}): hot {nb['hot'] * mib:.3f} MiB + cold {nb['cold'] * mib:.3f} MiB "
          f"= {nb['total'] * mib:.3f} MiB vs all-F16 {nb['f16'] * mib:.3f} MiB "
          f"({nb['f16'] / nb['total']:.2f}x smaller); now {r['hot']} tokens hot, {r['cold']} cold")
    print(f"max |logits(mixed) - logits(F16)| = {r['max_abs_dlogits']:.4g} "
          f"(logits up to {r['logit_scale']:.3g})")
    if r.get("graph"):
        print(f"decode graph of one layer: {r['graph']}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
