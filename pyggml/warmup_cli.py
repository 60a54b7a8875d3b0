"""`pyggml warmup`: compile the Numba backend's kernels into the disk cache in parallel
processes (the machinery is backends/numba_cpu/warmup.py; `--demo` asks models/demo.py which
kernels the demo runs, so this command sits above both)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Callable

from .backends.numba_cpu.warmup import EXECUTOR
from .backends.numba_cpu.warmup import WarmReport
from .backends.numba_cpu.warmup import WarmupError
from .backends.numba_cpu.warmup import compile_in_workers
from .backends.numba_cpu.warmup import resolve
from .backends.numba_cpu.warmup import warm
from .errors import GGMLError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyggml warmup",
        description="Compile the Numba backend's kernels into Numba's disk cache, in parallel "
                    "processes (a fresh checkout otherwise compiles them one by one on first "
                    "use). Kernels already in the cache are only loaded.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every kernel (the default)")
    which.add_argument("--demo", action="store_true", help="the kernels `pyggml demo` runs")
    which.add_argument("--kernels", nargs="+", metavar="OP:name", help="these kernels")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="worker processes (default: usable cores; 1: compile in this process)")
    p.add_argument("--check", action="store_true",
                   help="only report which kernels are cold (exit status 1 if any)")
    p.add_argument("--list", action="store_true", help="list kernel keys and cache state")
    p.add_argument("--measure", action="store_true",
                   help="time every kernel's cold compile in one fresh process with an empty "
                        "cache (refreshes the COSTS table of warmup.py)")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    return p


def _cache_where() -> str:
    import numba
    return numba.config.CACHE_DIR or "__pycache__ next to the kernel modules"


def _measure(ks: list, log: Callable) -> dict:
    """Compile ks in order in one worker with an empty temporary cache: {key: CPU seconds}
    (CPU time: wall time is noise on a loaded machine)."""
    import numba
    saved = numba.config.CACHE_DIR
    with tempfile.TemporaryDirectory(prefix="pyggml-measure-") as d:
        numba.config.CACHE_DIR = d
        try:
            report = WarmReport()
            compile_in_workers({"": [k.key for k in ks] + [EXECUTOR]}, 1, report, log)
        finally:
            numba.config.CACHE_DIR = saved
    if report.errors:
        raise WarmupError("warm-up --measure: " + "; ".join(report.errors))
    return report.cpu


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.demo:
            from .models.demo import demo_kernels
            ks = demo_kernels()
        else:
            ks = resolve(args.kernels)
        if args.jobs is not None and args.jobs < 1:
            raise WarmupError(f"warm-up: -j must be >= 1, got {args.jobs}")
        if args.list or args.check:
            states = {k.key: k.in_disk_cache() for k in ks}
            if args.list:
                for key, st in states.items():
                    print(f"{key:<62} {'cached' if st else 'cold' if st is False else '?'}")
            n_cold = sum(st is False for st in states.values())
            print(f"{n_cold} of {len(ks)} kernels cold in {_cache_where()}")
            return 1 if args.check and n_cold else 0
        if args.measure:
            times = _measure(ks, print if not args.quiet else (lambda s: None))
            print(f"# {len(times)} kernels, {sum(times.values()):.1f} s of compile CPU")
            print("COSTS = {")
            for key, s in sorted(times.items(), key=lambda kv: -kv[1]):
                print(f"    {key!r}: {s:.1f},")
            print("}")
            return 0
        log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
        r = warm(ks, args.jobs, log=log)
    except GGMLError as e:
        print(f"pyggml warmup: {e}", file=sys.stderr)
        return 1
    for e in r.errors:
        print(f"warning: {e}", file=sys.stderr)
    for key, e in r.failed.items():
        print(f"error: {key} does not compile: {e}", file=sys.stderr)
    if not r.cold:
        print(f"all {r.requested} kernels were in the cache ({_cache_where()}); "
              f"loaded in {r.seconds:.1f} s")
        return 1 if r.failed else 0
    how = f"in {r.jobs} processes" if r.jobs else "in this process"
    print(f"compiled {len(r.cold)} of {r.requested} kernels {how} in {r.seconds:.1f} s wall "
          f"({r.parallel_seconds + sum(r.here.values()):.1f} s of compile"
          + (f", {len(r.here)} here after a worker failure" if r.jobs and r.here else "")
          + (f"; loading {len(r.loaded)} here took {sum(r.loaded.values()):.1f} s"
             if r.loaded else "")
          + f"); cache: {_cache_where()}")
    return 1 if r.failed else 0
