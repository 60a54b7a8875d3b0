"""pyggml's benchmarks against real ggml (libggml-python) and NumPy, in one process.

    python tools/bench.py [all|quant|ops|kvcache|dispatch|matmul|attention] [--threads 2] [--quick]

Every section runs pyggml and the real ggml library on the same inputs with the same thread
count and prints times and ratios (pyggml time / ggml time: below 1 means pyggml is faster).
Numba compile time is excluded (each path is warmed up first) and reported by the sections
that compile. Timings are medians over repeated runs; the machine is shared, so read ratios,
not absolute numbers, and rerun when in doubt.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import pyggml as gg  # noqa: E402


def median_time(fn, min_runs=5, budget=1.0):
    fn()
    times = []
    t_end = time.perf_counter() + budget
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return float(np.median(times))


def _ggml():
    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        print("  (libggml-python not installed: pip install '.[ggml]' for the ggml columns)")
        return None
    return ggml_lib


# --- quantization ----------------------------------------------------------------------------

def bench_quant(args):
    ggml = _ggml()
    n = (1 << 20) if args.quick else (16 << 20)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    print(f"quantize / dequantize {n / 2**20:.0f}M floats, one thread "
          f"(ggml: ggml_quantize_chunk / to_float)")
    print(f"  {'type':<6} {'op':<11} {'pyggml ms':>10} {'ggml ms':>9} {'ratio':>6}")
    for t in (gg.TYPE_Q4_0, gg.TYPE_Q8_0):
        raw = gg.quantize(t, x)
        ours_q = median_time(lambda: gg.quantize(t, x), 3, 0.5)
        ours_d = median_time(lambda: gg.dequantize(t, raw, n), 3, 0.5)
        if ggml:
            theirs_q = median_time(lambda: ggml.quantize_chunk(t, x), 3, 0.5)
            theirs_d = median_time(lambda: ggml.dequantize(t, raw, n), 3, 0.5)
            same = ggml.quantize_chunk(t, x) == bytes(raw)
        else:
            theirs_q = theirs_d = float("nan")
            same = None
        for op, a, b in (("quantize", ours_q, theirs_q), ("dequantize", ours_d, theirs_d)):
            print(f"  {t.tname:<6} {op:<11} {a * 1e3:10.1f} {b * 1e3:9.1f} {a / b:6.2f}x")
        if same is not None:
            print(f"  {t.tname:<6} bytes identical to ggml: {same}")


# --- elementwise, norms, softmax --------------------------------------------------------------

def _op_graph(kind, rows, cols):
    ctx = gg.init(mem_size=8 * rows * cols * 4 + (16 << 20))
    rng = np.random.default_rng(0)
    a = gg.from_numpy(ctx, rng.uniform(-1, 1, (rows, cols)).astype(np.float32), name="a")
    if kind == "rms_norm":
        out = gg.rms_norm(ctx, a, 1e-5)
        ref = lambda x: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)  # noqa: E731
    elif kind == "soft_max":
        out = gg.soft_max_ext(ctx, a, None, 1.0, 0.0)
        ref = lambda x: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(x - x.max(-1, keepdims=True)))  # noqa: E731
    elif kind == "silu":
        out = gg.silu(ctx, a)
        ref = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    elif kind == "add":
        b = gg.from_numpy(ctx, rng.uniform(-1, 1, (rows, cols)).astype(np.float32), name="b")
        out = gg.add(ctx, a, b)
        bv = gg.to_numpy(b)
        ref = lambda x: x + bv  # noqa: E731
    else:
        raise ValueError(kind)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    return ctx, gf, out, gg.to_numpy(a), ref


def bench_ops(args):
    ggml = _ggml()
    rows, cols = (512, 4096)
    be = gg.backend_numba_init(args.threads)
    print(f"elementwise / norms on {cols}x{rows} F32, {args.threads} threads")
    print(f"  {'op':<10} {'pyggml us':>10} {'ggml us':>9} {'numpy us':>9} {'vs ggml':>8} {'vs numpy':>9}")
    for kind in ("rms_norm", "soft_max", "silu", "add"):
        ctx, gf, out, x, ref = _op_graph(kind, rows, cols)
        if not all(be.supports_op(n) for n in gf.nodes):
            print(f"  {kind:<10} (no numba kernel)")
            continue
        ours = median_time(lambda: be.graph_compute(gf))
        theirs = float("nan")
        if ggml:
            with ggml.Mirror(out) as m:
                theirs = median_time(lambda: m.compute(args.threads))
        npt = median_time(lambda: ref(x))
        print(f"  {kind:<10} {ours * 1e6:10.1f} {theirs * 1e6:9.1f} {npt * 1e6:9.1f} "
              f"{ours / theirs:7.2f}x {ours / npt:8.2f}x")


# --- decode through the KV caches at a long context --------------------------------------------

def _prefilled(cache, n, rng):
    """Put n random past tokens into a cache without decoding them (a benchmark shortcut)."""
    from pyggml.attention.kv_cache import BLOCK
    from pyggml.attention.kv_cache import MixedKVCache
    def fill(t, rows):
        vals = rng.uniform(-1, 1, (rows, t.ne[0])).astype(np.float32)
        gg.data.write(t, np.pad(vals, ((0, t.ne[1] - rows), (0, 0))))
    if isinstance(cache, MixedKVCache):
        n_cold = (n - cache.hot_tokens) // BLOCK * BLOCK
        n_hot = n - n_cold
        for t in cache.cold_k + cache.cold_v:
            fill(t, n_cold)
        for t in cache.hot_k + cache.hot_v:
            fill(t, n_hot)
        cache.cold_pos[:n_cold] = np.arange(n_cold)
        cache.cold_count = n_cold
        cache.slot_pos[:n_hot] = n_cold + np.arange(n_hot)
        cache.hot_count, cache.head = n_hot, 0
    else:
        for t in cache.k + cache.v:
            fill(t, n)
    cache.n_past = n


def bench_kvcache(args):
    from pyggml.attention.kv_cache import F16KVCache
    from pyggml.attention.kv_cache import MixedKVCache
    from pyggml.models.demo import make_backend
    from pyggml.models.llama import Decoder
    from pyggml.models.llama import LlamaConfig
    from pyggml.models.llama import LlamaModel
    n_ctx = 4096 if args.quick else 16384
    cfg = LlamaConfig()
    model = LlamaModel.random(cfg)
    be = make_backend("numba", args.threads)
    rng = np.random.default_rng(0)
    print(f"decode at a {n_ctx}-token context, demo model ({cfg.n_layer} layers, "
          f"{cfg.n_head}/{cfg.n_head_kv} heads, head_dim {cfg.head_dim}), {args.threads} threads")
    res = {}
    for reuse in (False, True):
        label = "graph reused per step" if reuse else "graph built every step"
        print(f" {label}:")
        for name, cache in (("mixed (hot 256 F16 + cold Q4_0)",
                             MixedKVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, n_ctx + 64,
                                          hot_tokens=256, max_batch=32)),
                            ("all F16", F16KVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim,
                                                   n_ctx + 64))):
            _prefilled(cache, n_ctx, rng)
            dec = Decoder(model, cache, be, reuse_graphs=reuse)
            dec.step([1])                       # warm-up (compile, caches)
            steps = 8 if args.quick else 24
            t0 = time.perf_counter()
            for i in range(steps):
                dec.step([i % cfg.n_vocab])
            dt = (time.perf_counter() - t0) / steps
            nb = cache.nbytes()
            res[(reuse, name)] = dt
            print(f"  {name:<32} {1 / dt:7.1f} tok/s   cache {nb['total'] / 2**20:7.2f} MiB")
        a, b = res[(reuse, "mixed (hot 256 F16 + cold Q4_0)")], res[(reuse, "all F16")]
        print(f"  mixed / F16 time per token: {a / b:.2f}x")


# --- sections written beside the kernels -----------------------------------------------------

def _run_tool(name, argv):
    mod = importlib.import_module(name)
    return mod.main(argv)


SECTIONS = {
    "quant": bench_quant,
    "ops": bench_ops,
    "kvcache": bench_kvcache,
    "dispatch": lambda a: _run_tool("bench_dispatch", ["--threads", f"1,{a.threads}"]
                                    + (["--reps", "20"] if a.quick else [])),
    "matmul": lambda a: _run_tool("bench_matmul", ["--threads", str(a.threads)]
                                  + (["--quick"] if a.quick else [])),
    # bench_attention has no --quick: fewer runs of its two smaller cases instead
    "attention": lambda a: _run_tool("bench_attention", ["--threads", str(a.threads)]
                                     + (["--runs", "3", "--only", "decode_f16_4k,prompt_f16_512"]
                                        if a.quick else [])),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", default=["all"],
                   help=f"all or any of: {', '.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller inputs, fewer runs")
    args = p.parse_args(argv)
    names = list(SECTIONS) if "all" in args.sections else args.sections
    for n in names:
        if n not in SECTIONS:
            p.error(f"unknown section {n!r}")
    for n in names:
        print(f"\n=== {n} ===")
        t0 = time.perf_counter()
        try:
            SECTIONS[n](args)
        except SystemExit:
            pass
        print(f"  ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
