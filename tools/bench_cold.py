"""Cold start: time to the first token with an empty Numba kernel cache.

Each run is a fresh interpreter whose PYGGML_CACHE_DIR / NUMBA_CACHE_DIR point at a new
empty directory (nothing compiled), so it pays what a first `pyggml demo` pays on a fresh
machine. Phases (wall seconds): import pyggml, make the model, compile the kernels its
graphs run (warmup.warm: parallel worker processes, -j), then the prompt and the first
decoded token (building, lowering, computing).

    python tools/bench_cold.py smollm2 [-j N] [--cache f16|mixed]   # SmolLM2-135M graph shape
    python tools/bench_cold.py demo [-j N]                          # pyggml demo's model
    python tools/bench_cold.py measure [--cache ...]                # per-kernel compile seconds
    python tools/bench_cold.py pyggml-demo [-r N] [--no-tiered]      # the real `pyggml demo`
    python tools/bench_cold.py phases [--pythonpath TREE]            # where its CPU goes

By default the model runs tiered (sched/tiered.py: nodes start on the NumPy fast reference
while the kernels compile in niced background workers); --no-tiered compiles them first
(warmup.warm). `pyggml-demo` runs the real command with an empty cache and reads its "first
token" line (wall and CPU seconds of the demo process up to it).

With an empty cache the demo holds Numba back until its first token (sched/tiered.py: hold),
so the prompt runs on the fast reference without importing it. `phases` runs the demo's
setup and both prefills in one process with an empty cache and prints CPU seconds of the
main thread per phase and per op (no profiler: its overhead distorts NumPy-heavy code).

`measure` compiles the SmolLM2 graph's kernels one after the other in one fresh process
(warmup --measure's method) and prints each kernel's cold compile time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
import pyggml as gg
from pyggml.attention.kv_cache import F16KVCache, MixedKVCache
from pyggml.backends.numba_cpu.warmup import graph_kernels, warm
from pyggml.models.llama import Decoder, LlamaConfig, LlamaModel
t_import = time.perf_counter()
what, jobs, kind, n_prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
tiered = sys.argv[5] == "1"
if what == "demo":
    cfg = LlamaConfig()
else:
    cfg = LlamaConfig(n_vocab=49152, n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536,
                      rope_base=100000, wtype="q4_1", etype="q8_0")
model = LlamaModel.random(cfg)
def cache():
    if kind == "mixed":
        return MixedKVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, 512, hot_tokens=64,
                            max_batch=32)
    return F16KVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, 512)
t_model = time.perf_counter()
# the kernels of this run's graphs (one layer of each step kind), as pyggml demo does
graphs = []
c = cache()
for n in [32] * (n_prompt // 32) + [1]:
    c.begin(n)
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph(ctx)
    model.build(ctx, gf, c, n, layers=[0], n_outputs=1)
    graphs.append(gf)
    c.commit()
ks = graph_kernels(graphs)
if what == "measure":
    from pyggml.warmup_cli import _measure
    times = _measure(ks, lambda line: None)
    print(json.dumps({"kernels": times}))
    raise SystemExit
if tiered:
    from pyggml.sched.tiered import TieredSched
    be = TieredSched(lambda: gg.backend_numba_init(2), jobs=jobs)
    n_cold = len(ks)
else:
    n_cold = len(warm(ks, jobs).cold)
    be = gg.sched_new([gg.backend_numba_init(2), gg.backend_reference_init()])
t_warm = time.perf_counter()
dec = Decoder(model, cache(), be)
toks = list(np.random.default_rng(0).integers(0, cfg.n_vocab, n_prompt))
logits = dec.prefill(toks, 32, all_logits=False)
t_prompt = time.perf_counter()
dec.step([int(np.argmax(logits[-1]))])
t_first = time.perf_counter()
tm = os.times()
rec = {"import": t_import - t0, "model": t_model - t_import, "compile": t_warm - t_model,
       "prompt": t_prompt - t_warm, "first_token": t_first - t_prompt, "ttft": t_first - t0,
       "cpu": tm.user + tm.system, "kernels": len(ks), "cold": n_cold, "jobs": jobs}
if tiered:
    rec["pending"] = be.pending
    be.close()
print(json.dumps(rec))
"""


PHASES = r"""
import collections, json, os, sys, time
cpu = time.thread_time                       # this thread: the prefetch thread's work is not it
c0 = cpu()
from pyggml.models import demo
import pyggml.models.llama as L
from pyggml.backends.reference import fast as F
acc, cnt = collections.Counter(), collections.Counter()
acc["import"] = cpu() - c0
def timed(obj, name, label=None, count=False):
    orig = getattr(obj, name)
    def f(*a, **k):
        t = cpu()
        try:
            return orig(*a, **k)
        finally:
            key = label or a[1].op.name
            acc[key] += cpu() - t
            cnt[key] += count
    setattr(obj, name, f)
timed(F.FastReferenceBackend, "compute_node", count=True)
timed(F.WeightCache, "get", "  of which weights.get")
timed(demo.Setup, "__init__", "setup (model, tokenizer)")
timed(demo, "make_backend", "make_backend")
class FirstToken(Exception):
    pass
step = L.Decoder.step
def first_decode_stops(self, ids, n_pad=None, all_logits=True, **kw):
    if n_pad is None and len(ids) == 1:       # the first decode step: the first token is out
        raise FirstToken
    t = cpu()
    try:
        return step(self, ids, n_pad, all_logits, **kw)
    finally:
        acc["steps (graphs)"] += cpu() - t
L.Decoder.step = first_decode_stops
args = demo._parser().parse_args(["--quiet", "--graph", "", "--tokens", "1"])
try:
    demo.run(args, finish=False)
except FirstToken:
    pass
acc["total (main thread)"] = cpu()
tm = os.times()
acc["total (process, all threads)"] = tm.user + tm.system
print(json.dumps({"cpu": acc, "n": cnt, "numba_imported": "numba" in sys.modules}))
os._exit(0)
"""


def run_phases(pythonpath: str = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="pyggml-cold-") as d:
        out = subprocess.run([sys.executable, "-c", PHASES], env=_env(d, pythonpath),
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def _env(d: str, pythonpath: str = None) -> dict:
    env = dict(os.environ, PYGGML_CACHE_DIR=d, NUMBA_CACHE_DIR=os.path.join(d, "numba"))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def run_cold(what: str, jobs: int, kind: str, n_prompt: int, pythonpath: str = None,
             tiered: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="pyggml-cold-") as d:
        out = subprocess.run([sys.executable, "-c", CHILD, what, str(jobs), kind, str(n_prompt),
                              "1" if tiered else "0"],
                             env=_env(d, pythonpath), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def run_demo(jobs: int, tokens: int, pythonpath: str = None, tiered: bool = True) -> dict:
    """`pyggml demo` with an empty cache: its first-token line (wall seconds, CPU seconds of
    the demo process so far) and its text. Tiered, the demo then waits for the background
    compile; this stops it once the report is printed."""
    import re
    with tempfile.TemporaryDirectory(prefix="pyggml-cold-") as d:
        argv = [sys.executable, "-m", "pyggml.cli", "demo", "--quiet", "--graph", "",
                "--tokens", str(tokens), "-j", str(jobs)] + ([] if tiered else ["--no-tiered"])
        p = subprocess.Popen(argv, env=_env(d, pythonpath), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        out = []
        try:
            for line in p.stdout:
                out.append(line)
                if line.startswith("total "):
                    break
        finally:
            if p.poll() is None:
                os.killpg(p.pid, 9)           # the demo and its warm-up workers
            p.wait()
        text = "".join(out)
        m = re.search(r"first token\s+([0-9.]+) s after start.*?CPU ([0-9.]+) s", text)
        if m is None:
            raise SystemExit(f"pyggml demo printed no first-token line:\n{text[-3000:]}")
        body = re.search(r"\[(.*)\]", text, re.S)
        return {"ttft": float(m.group(1)), "cpu_first": float(m.group(2)),
                "text": body.group(1) if body else ""}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("smollm2", "demo", "measure", "pyggml-demo", "phases"))
    ap.add_argument("--no-tiered", dest="tiered", action="store_false")
    ap.add_argument("--tokens", type=int, default=16, help="pyggml-demo: tokens to decode")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--cache", choices=("f16", "mixed"), default="mixed")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("-r", "--repeats", type=int, default=1)
    ap.add_argument("--pythonpath", default=None, help="PYTHONPATH of the child (another tree)")
    args = ap.parse_args(argv)
    for _ in range(args.repeats):
        if args.what == "phases":
            r = run_phases(args.pythonpath)
            print(f"load {os.getloadavg()[0]:.1f}; CPU seconds to the first token (numba "
                  f"imported by then: {r['numba_imported']})")
            for k, v in sorted(r["cpu"].items(), key=lambda kv: -kv[1]):
                print(f"  {k:<32} {v:6.2f}" + (f"  {r['n'][k]} nodes" if r["n"].get(k) else ""))
            continue
        if args.what == "pyggml-demo":
            r = run_demo(args.jobs, args.tokens, args.pythonpath, args.tiered)
            print(f"ttft={r['ttft']:.1f} cpu_first={r['cpu_first']:.1f} "
                  f"text={r['text'][:80]!r}", flush=True)
            continue
        r = run_cold(args.what, args.jobs, args.cache, args.prompt, args.pythonpath,
                     args.tiered)
        if args.what == "measure":
            for k, s in sorted(r["kernels"].items(), key=lambda kv: -kv[1]):
                print(f"{k:<62} {s:6.1f} s")
            print(f"{'total':<62} {sum(r['kernels'].values()):6.1f} s")
        else:
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
