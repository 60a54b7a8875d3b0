"""`pyggml test-backend-ops`: ggml's op test-suite for pyggml's backends.

    pyggml test-backend-ops [test|perf|grad|support] [-o OP[,OP]|-o 'OP(vars)'] [-b BACKEND]
                            [-p REGEX] [--output console|csv|sql] [--list-ops]
                            [--show-coverage] [-j N] [--seed N] [--compare ggml]
                            [--baseline ggml.csv] [--guard-pages]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

from .harness import CaseResult
from .harness import all_cases
from .harness import op_cases
from .harness import run_perf
from .harness import run_test
from .report import load_baseline
from .report import make_printer
from .report import print_baseline_ratios

MODES = ("test", "perf", "grad", "support")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyggml test-backend-ops",
                                description="ggml's test-backend-ops for pyggml backends")
    p.add_argument("mode", nargs="?", default="test", choices=MODES)
    p.add_argument("-o", dest="ops", default=None,
                   help="op names (comma separated) or one full case string 'OP(vars)'")
    p.add_argument("-b", dest="backend", default=None,
                   help="backend to test (default: every backend but the reference)")
    p.add_argument("-p", dest="pattern", default=None, help="regex over the case's vars string")
    p.add_argument("--output", default="console", choices=("console", "csv", "sql"))
    p.add_argument("--list-ops", action="store_true", help="list the registered ops and exit")
    p.add_argument("--show-coverage", action="store_true",
                   help="which ops lack cases, a reference or a kernel on each backend")
    p.add_argument("-j", dest="jobs", type=int, default=1, help="run cases in N processes")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads of the numba backend")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (printed on failures)")
    p.add_argument("--compare", choices=("ggml",), default=None,
                   help="also run every case on real ggml (libggml-python) and compare")
    p.add_argument("--baseline", default=None,
                   help="perf: a csv written by ggml's test-backend-ops; prints ratios per case and op")
    p.add_argument("--budget", type=float, default=0.25, help="perf: seconds per case")
    p.add_argument("--no-slow", action="store_true", help="skip cases tagged slow")
    p.add_argument("--guard-pages", action="store_true",
                   help="test: every tensor against PROT_NONE pages (out-of-bounds reads fault), "
                        "each case in a child process")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    return p


def _threads(args) -> Optional[int]:
    """-t, or with -j N the cores shared among the N workers (no oversubscribed spin barriers)."""
    if args.threads:
        return args.threads
    if args.jobs > 1:
        return max(1, (os.cpu_count() or 1) // args.jobs)
    return None


def _backends(args):
    from ..compute import BACKENDS
    from ..compute import backend_init_by_name
    n_threads = _threads(args)
    names = [args.backend] if args.backend else [n for n in ("numba",) if n in BACKENDS]
    if args.compare == "ggml" and "ggml" not in [n.lower() for n in names]:
        names.append("ggml")
    out = []
    for n in names:
        try:
            if n.lower() == "ggml":      # real ggml (the repro line of a --compare failure)
                from .ggml_backend import GGMLBackend
                out.append(GGMLBackend(n_threads or 1))
            else:
                out.append(backend_init_by_name(n, n_threads))
        except Exception as e:  # a backend that cannot start is reported, not fatal
            print(f"Backend {n}: cannot initialize: {e}", file=sys.stderr)
    return out


def _repro(args, backend: str, case) -> str:
    mode = "" if args.mode == "test" else f"{args.mode} "
    return (f"pyggml test-backend-ops {mode}-b {shlex.quote(backend)} -o {shlex.quote(str(case))}"
            f" --seed {args.seed}" + (f" -t {_threads(args)}" if _threads(args) else "")
            + (" --guard-pages" if args.guard_pages else ""))


# --- workers (module level so -j can pickle them) ---------------------------------------------

_W: dict = {}


def _worker_init(argv):
    args = _parser().parse_args(argv)
    if _W.get("argv") != argv:       # forked workers inherit the parent's case list
        _W["cases"] = list(all_cases(args.ops, args.pattern, not args.no_slow))
    _W["args"], _W["argv"] = args, argv
    _W["backends"] = {b.name: b for b in _backends(args)}
    from ..backends.reference.backend import ReferenceBackend
    _W["ref"] = ReferenceBackend()


def _ping(_):
    return True


def _run_one(item) -> tuple:
    i, bname = item
    args = _W["args"]
    op, case = _W["cases"][i]
    be = _W["backends"][bname]
    if args.mode == "perf":
        r = run_perf(case, be, seed=args.seed, budget_s=args.budget)
    elif args.mode == "support":
        from .harness import build_graph
        from .harness import case_excluded
        from .harness import supported
        r = CaseResult(case, bname, mode="support")
        try:
            ok = not case_excluded(be, case) and supported(be, build_graph(case)[2])
            r.status = "OK" if ok else "NOT SUPPORTED"
        except Exception as e:
            r.status, r.message = "ERROR", str(e)
    elif args.mode == "grad":
        from .grad import run_grad
        r = run_grad(case, be, seed=args.seed)
    elif args.guard_pages:
        from .guard import run_test_guarded
        r = run_test_guarded(case, be, _W["ref"], seed=args.seed)
    else:
        r = run_test(case, be, _W["ref"], seed=args.seed)
    return i, bname, r.status, r.err, r.max_err, r.message, r.node, r.runs, r.us_per_run, \
        r.flops, r.nbytes


def _check_args(args) -> None:
    """Flag values argparse does not check: a GGMLError (the `pyggml` command prints it)."""
    import re

    from ..errors import GGMLError
    for flag, v in (("-j", args.jobs), ("-t", args.threads)):
        if v is not None and v < 1:
            raise GGMLError(f"{flag} {v}: must be >= 1")
    if args.pattern is not None:
        try:
            re.compile(args.pattern)
        except re.error as e:
            raise GGMLError(f"-p {args.pattern!r}: not a regular expression ({e})") from None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _check_args(args)
    from .. import ops as _ops  # noqa: F401  (registers every op)
    from ..ops.registry import OPS

    if args.list_ops:
        for name in sorted(OPS):
            op = OPS[name]
            n = len(op_cases(op)) if op.cases else 0
            print(f"{name:<28} {n:5d} cases  {op.doc}")
        return 0
    if args.show_coverage:
        from .report import coverage
        print(coverage(_backends(args)))
        return 0
    if args.mode == "perf" and args.jobs > 1:
        print("perf: -j ignored (timed runs must not share the cores)", file=sys.stderr)
        args.jobs = 1
    if args.mode == "perf":       # ggml's perf list (make_test_cases_perf), not the eval grid
        from .perf_cases import perf_cases
        cases, skipped = perf_cases(args.ops, args.pattern)
        if skipped:
            print(f"perf: {skipped} of ggml's perf cases skipped (ops, types or families "
                  f"pyggml's perf list lacks)", file=sys.stderr)
    else:
        cases = list(all_cases(args.ops, args.pattern, not args.no_slow))
    if not cases:        # ggml runs no test and passes ("0/0 tests passed", exit 0)
        print("no test cases match", file=sys.stderr)
    _W["args"], _W["argv"], _W["cases"] = args, argv, cases
    pool = None
    if args.jobs > 1:
        # start the workers before this process starts backend threads (they are forked)
        pool = ProcessPoolExecutor(args.jobs, initializer=_worker_init, initargs=(argv,))
        list(pool.map(_ping, range(args.jobs)))
    _W["backends"] = backends = {b.name: b for b in _backends(args)}
    try:
        if not backends:
            print("no backend to test", file=sys.stderr)
            return 1
        return _run_all(args, cases, backends, pool)
    finally:
        if pool is not None:
            pool.shutdown()
        for be in backends.values():     # their worker threads
            be.free()
        _W.pop("backends", None)


def _run_all(args, cases, backends, pool) -> int:
    printer = make_printer(args.output, args.mode)
    printer.header()
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    baseline = load_baseline(args.baseline) if args.baseline else None
    all_ok = True
    for bi, (bname, be) in enumerate(backends.items()):
        printer.backend_start(bi, len(backends), bname)
        work = [(i, bname) for i in range(len(cases))]
        results = []
        t0 = time.time()
        if pool is not None:
            it = pool.map(_run_one, work, chunksize=4)
        else:
            from ..backends.reference.backend import ReferenceBackend
            _W.setdefault("ref", ReferenceBackend())
            it = map(_run_one, work)
        n_ok = n_total = 0
        failed = []
        for k, (i, _, status, err, max_err, msg, node, runs, us, flops, nb) in enumerate(it):
            op, case = cases[i]
            r = CaseResult(case, bname, args.mode, status, err, max_err, msg, node, runs, us, flops, nb)
            results.append(r)
            printer.result(r)
            if status != "NOT SUPPORTED":
                n_total += 1
                n_ok += status == "OK"
            if status in ("FAIL", "ERROR"):
                failed.append(str(case))
                printer.note(f"    seed {args.seed}; repro: {_repro(args, bname, case)}")
            if progress:
                el = time.time() - t0
                print(f"\r[{k + 1}/{len(work)}] {bname} {el:6.1f}s", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
        ok = n_ok == n_total
        all_ok &= ok
        printer.backend_end(bname, n_ok, n_total, ok, failed)
        if baseline is not None and args.mode == "perf":
            print_baseline_ratios(results, baseline)
    printer.footer(len(backends), all_ok)
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
