"""Exit time of a cold `pyggml demo`: wall seconds from start to its last output line and to
its exit (the shell prompt), its first-token line, then (after) how long a detached compiler
it left runs, and a second demo's first token on the cache that leaves.

    python tools/bench_exit.py [--pythonpath TREE] [--tokens N] [--wait-compile]

Each run uses a new empty PYGGML_CACHE_DIR (its own NUMBA_CACHE_DIR under it); stdout and
stderr are pipes read to their end, as a shell pipeline would (a detached compiler holding
either would show up as a late exit). Prints the demo's stderr lines about the compile.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time


def _env(d: str, pythonpath: str = None) -> dict:
    env = dict(os.environ, PYGGML_CACHE_DIR=d, NUMBA_CACHE_DIR=os.path.join(d, "numba"))
    env.pop("PYGGML_DETACH_COMPILE", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def demo(env: dict, tokens: int, extra=()) -> dict:
    argv = [sys.executable, "-m", "pyggml.cli", "demo", "--quiet", "--graph", "",
            "--tokens", str(tokens), *extra]
    t0 = time.perf_counter()
    c0 = os.times()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    last = [t0]
    chunks = {"out": [], "err": []}

    def read(f, name):                      # each pipe to EOF, the time of its last line
        for line in f:
            chunks[name].append(line)
            last[0] = max(last[0], time.perf_counter())
    ts = [threading.Thread(target=read, args=(p.stdout, "out")),
          threading.Thread(target=read, args=(p.stderr, "err"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    t_eof = time.perf_counter() - t0
    p.wait()
    t_exit = time.perf_counter() - t0
    c1 = os.times()
    out, err = "".join(chunks["out"]), "".join(chunks["err"])
    m = re.search(r"first token\s+([0-9.]+) s after start.*?CPU ([0-9.]+) s", out)
    tot = re.search(r"^total ([0-9.]+) s", out, re.M)
    return {"rc": p.returncode, "exit": t_exit, "eof": t_eof, "last_line": last[0] - t0,
            "total_line": float(tot.group(1)) if tot else None,
            "ttft": float(m.group(1)) if m else None, "cpu_first": float(m.group(2)) if m else None,
            "child_cpu": c1.children_user + c1.children_system - c0.children_user -
            c0.children_system,
            "stderr": [x for x in err.splitlines() if "tiered" in x or "Traceback" in x]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pythonpath", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--wait-compile", action="store_true", help="pass --wait-compile")
    ap.add_argument("--warm-again", action="store_true",
                    help="a third demo: a warm start to compare the second with")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pyggml-exit-") as d:
        env = _env(d, args.pythonpath)
        print(f"load {os.getloadavg()[0]:.1f}", flush=True)
        r = demo(env, args.tokens, ["--wait-compile"] if args.wait_compile else [])
        print(f"cold demo: rc {r['rc']}, last line {r['last_line']:.1f} s, pipes closed "
              f"{r['eof']:.1f} s, exit {r['exit']:.1f} s after start; first token {r['ttft']} s "
              f"(CPU {r['cpu_first']} s); demo+workers CPU {r['child_cpu']:.1f} s", flush=True)
        for line in r["stderr"]:
            print("   ", line)
        m = next((re.search(r"pid (\d+), log ([^)]+)\)", x) for x in r["stderr"]
                  if "pid" in x), None)
        if m:
            pid, t0 = int(m.group(1)), time.perf_counter()
            while _alive(pid):
                time.sleep(0.5)
            print(f"detached compiler {pid}: gone {time.perf_counter() - t0:.1f} s after the "
                  f"demo exited; log tail:", flush=True)
            with open(m.group(2)) as f:
                for line in f.read().splitlines()[-3:]:
                    print("   ", line)
        print(f"load {os.getloadavg()[0]:.1f}", flush=True)
        r2 = demo(env, args.tokens)
        print(f"second demo: rc {r2['rc']}, last line {r2['last_line']:.1f} s, exit "
              f"{r2['exit']:.1f} s, first token {r2['ttft']} s (CPU {r2['cpu_first']} s)",
              flush=True)
        if args.warm_again:
            r3 = demo(env, args.tokens)
            print(f"third demo (warm): rc {r3['rc']}, last line {r3['last_line']:.1f} s, exit "
                  f"{r3['exit']:.1f} s, first token {r3['ttft']} s (CPU {r3['cpu_first']} s)",
                  flush=True)
        for line in r2["stderr"]:
            print("   ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
