"""llama-bench and `pyggml bench`, alternately on the same model, and their ratios.

    python tools/compare_bench.py -p 32,512 -n 128 -t 2 -r 3 --rounds 3 [--mixed-kv-cache --kv-hot 256]

Each round runs both tools once (llama.cpp first in odd rounds, pyggml first in even ones,
so neither always gets the quieter moment) with the same tests; every run is llama-bench's
mean over -r repetitions. Printed per test: each side's t/s per round, and the ratio
pyggml / llama.cpp per round with its median and range - on a shared machine the range is
the honest part. Needs ../shared/llama.cpp (this machine's build of llama.cpp).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LLAMA_RUN = os.environ.get("LLAMA_CPP_RUN", os.path.join(ROOT, "..", "shared", "llama.cpp", "run"))
if not os.path.exists(LLAMA_RUN):
    LLAMA_RUN = "/work/shared/llama.cpp/run"


def bench(cmd: list) -> dict:
    """{test label: avg t/s} from a llama-bench-style json output."""
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    out = {}
    for t in json.loads(p.stdout):
        label = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
        out[label] = t["avg_ts"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-p", default="32,512")
    ap.add_argument("-n", default="128")
    ap.add_argument("-t", default="2")
    ap.add_argument("-r", default="3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mixed-kv-cache", action="store_true", help="pyggml side only")
    ap.add_argument("--kv-hot", default="256")
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from pyggml.llm.model_path import resolve_model_path
    model = resolve_model_path(args.model)
    common = ["-m", model, "-p", args.p, "-n", args.n, "-t", args.t, "-r", args.r, "-o", "json"]
    llama = [LLAMA_RUN, "llama-bench"] + common
    ours = [sys.executable, "-m", "pyggml", "bench"] + common
    if args.mixed_kv_cache:
        ours += ["--mixed-kv-cache", "--kv-hot", args.kv_hot]
    runs = {"llama.cpp": [], "pyggml": []}
    for r in range(args.rounds):
        order = ["llama.cpp", "pyggml"] if r % 2 == 0 else ["pyggml", "llama.cpp"]
        for side in order:
            runs[side].append(bench(llama if side == "llama.cpp" else ours))
            print(f"round {r + 1}/{args.rounds} {side}: "
                  + ", ".join(f"{k} {v:.2f} t/s" for k, v in runs[side][-1].items()),
                  file=sys.stderr, flush=True)
    cache = f"mixed {args.kv_hot} hot" if args.mixed_kv_cache else "f16"
    print(f"{os.path.basename(model)}, {args.t} threads, -r {args.r}, {args.rounds} alternating "
          f"rounds; pyggml cache {cache}, llama.cpp f16\n")
    print("| test | llama.cpp t/s per round | pyggml t/s per round | ratio per round | "
          "ratio median (min-max) |")
    print("|---|---|---|---|---|")
    for label in runs["llama.cpp"][0]:
        ll = [x[label] for x in runs["llama.cpp"]]
        py = [x[label] for x in runs["pyggml"]]
        ratios = [b / a for a, b in zip(ll, py)]
        print(f"| {label} | {', '.join(f'{x:.1f}' for x in ll)} | {', '.join(f'{x:.1f}' for x in py)} "
              f"| {', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
