"""llama-perplexity and `pyggml perplexity` on the same model, text and settings, side by side.

    python tools/compare_perplexity.py -f /usr/share/common-licenses/GPL-3 -c 256 -b 256 --chunks 8
    python tools/compare_perplexity.py -f TEXT -c 256 -b 32 --chunks 8 --mixed-kv-cache --kv-hot 64 -ctk q4_0 -ctv q4_0

llama.cpp has no mixed cache: its runs use the caches in --llama-caches (default: f16, plus
-ctk/-ctv's type as a whole cache when that is not f16), so the mixed cache is printed beside
llama.cpp's F16 and all-quantized figures. --fixture PATH also writes what the tests compare
against (tests/llm/fixtures/perplexity_smollm2.json): llama-tokenize's ids for the text and
llama-perplexity's numbers, keyed "CACHE -fa on|off" (a fixture of the same settings gains
the new runs). Needs ../shared/llama.cpp (this machine's build of llama.cpp).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LLAMA_RUN = os.environ.get("LLAMA_CPP_RUN", os.path.join(ROOT, "..", "shared", "llama.cpp", "run"))
if not os.path.exists(LLAMA_RUN):
    LLAMA_RUN = "/work/shared/llama.cpp/run"

RUNNING = re.compile(r"\[(\d+)\]([0-9.]+|nan|inf),")
FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def parse(out: str) -> dict:
    """The running line and final estimate of a llama-perplexity-style output."""
    m = FINAL.search(out)
    if m is None:
        raise SystemExit(f"no 'Final estimate' in the output:\n{out[-2000:]}")
    return {"running": [float(x) for _, x in RUNNING.findall(out)],
            "ppl": float(m.group(1)), "error": float(m.group(2))}


def run(cmd: list) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def llama_perplexity(model, args, cache: str) -> dict:
    cmd = [LLAMA_RUN, "llama-perplexity", "-m", model, "-f", args.file, "-c", str(args.n_ctx),
           "-b", str(args.n_batch), "--chunks", str(args.chunks), "-t", str(args.threads),
           "-fa", args.fa]
    if cache != "f16":
        cmd += ["-ctk", cache, "-ctv", cache]
    return parse(run(cmd))


def pyggml_perplexity(model, args) -> dict:
    cmd = [sys.executable, "-m", "pyggml", "perplexity", "-m", model, "-f", args.file,
           "-c", str(args.n_ctx), "-b", str(args.n_batch), "--chunks", str(args.chunks),
           "-t", str(args.threads), "-ctk", args.type_k, "-ctv", args.type_v]
    if args.mixed_kv_cache:
        cmd += ["--mixed-kv-cache", "--kv-hot", str(args.kv_hot)]
    return parse(run(cmd))


def llama_tokens(model, path) -> list:
    out = subprocess.run([LLAMA_RUN, "llama-tokenize", "-m", model, "-f", path, "--ids",
                          "--no-parse-special"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_fixture(path: str, fx: dict) -> None:
    """JSON with the token ids on one line (843 ids, one per line, would bury the numbers)."""
    text = json.dumps({k: v for k, v in fx.items() if k != "tokens"}, indent=1)
    with open(path, "w") as fh:
        fh.write(text[:-2] + ',\n "tokens": ' + json.dumps(fx["tokens"]) + "\n}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", default="smollm2-135m")
    p.add_argument("-f", "--file", required=True)
    p.add_argument("-c", type=int, default=256, dest="n_ctx")
    p.add_argument("-b", type=int, default=256, dest="n_batch")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("-t", type=int, default=2, dest="threads")
    p.add_argument("-ctk", default="f16", dest="type_k")
    p.add_argument("-ctv", default="f16", dest="type_v")
    p.add_argument("--mixed-kv-cache", action="store_true")
    p.add_argument("--kv-hot", type=int, default=256)
    p.add_argument("--fa", default="on", choices=("on", "off", "auto"), help="llama.cpp's -fa")
    p.add_argument("--llama-caches", default=None, help="comma list of llama.cpp cache types")
    p.add_argument("--fixture", default=None, help="write tokens and llama.cpp's numbers here")
    p.add_argument("--no-pyggml", action="store_true", help="run llama.cpp only")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from pyggml.llm.model_path import resolve_model_path
    model = resolve_model_path(args.model)
    caches = args.llama_caches.split(",") if args.llama_caches else \
        ["f16"] + ([args.type_k] if args.type_k != "f16" else [])
    rows = {f"llama.cpp {c} (-fa {args.fa})": llama_perplexity(model, args, c) for c in caches}
    ours = (f"pyggml mixed: {args.kv_hot} hot f16 + cold {args.type_k}"
            if args.mixed_kv_cache else f"pyggml {args.type_k}")
    if not args.no_pyggml:
        rows[ours] = pyggml_perplexity(model, args)
    ref = rows[next(iter(rows))]
    print(f"{os.path.basename(model)}, {args.file}: n_ctx {args.n_ctx}, batch {args.n_batch}, "
          f"{args.chunks} chunks, {args.threads} threads\n")
    print(f"| {'run':<45} | {'PPL':>18} | vs {next(iter(rows))} | per chunk")
    for name, r in rows.items():
        print(f"| {name:<45} | {r['ppl']:8.4f} ± {r['error']:7.4f} | {100 * (r['ppl'] / ref['ppl'] - 1):+6.2f}% | "
              + ",".join(f"{x:.4f}" for x in r["running"]))
    if args.fixture:
        fx = {"model": os.path.basename(model), "text": os.path.relpath(args.file, ROOT),
              "n_ctx": args.n_ctx, "n_batch": args.n_batch, "chunks": args.chunks,
              "llama_perplexity": {f"{c} -fa {args.fa}": rows[f"llama.cpp {c} (-fa {args.fa})"]
                                   for c in caches},
              "made_by": ["tools/compare_perplexity.py " + " ".join(argv or sys.argv[1:])],
              "tokens": llama_tokens(model, args.file)}
        if os.path.exists(args.fixture):       # same run settings: add to what is there
            with open(args.fixture) as fh:
                old = json.load(fh)
            if all(old.get(k) == fx[k] for k in ("model", "text", "n_ctx", "n_batch", "chunks",
                                                   "tokens")):
                old["llama_perplexity"].update(fx["llama_perplexity"])
                old["made_by"] += fx["made_by"]
                fx = old
        write_fixture(args.fixture, fx)
        print(f"\nfixture written to {args.fixture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
