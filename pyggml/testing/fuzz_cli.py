"""`pyggml fuzz`: long generated-graph campaigns (pyggml/testing/fuzz.py).

    pyggml fuzz [--examples N] [--seed S] [--example K | --start K] [--ops A,B] [--threads 1,2,3]
                [--max-nodes N] [--guard-pages] [--progress]

Example K of seed S is one graph, the same on every machine, so a failure's repro is
`pyggml fuzz --seed S --example K`; the printed Python line rebuilds its shrunk graph.
Examples run in a forked child: a crash (a signal) is reported with its example and the
campaign goes on in a new child.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import GGMLError
from . import fuzz


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyggml fuzz",
                                description="random graphs of registered ops: CPU backend at "
                                            "several thread counts vs the reference")
    p.add_argument("--examples", type=int, default=200, help="graphs to generate and check")
    p.add_argument("--seed", type=int, default=0, help="campaign seed")
    p.add_argument("--example", type=int, default=None,
                   help="run only example K of the seed (a repro), verbosely")
    p.add_argument("--start", type=int, default=0,
                   help="first example of the campaign (resume a long run at K)")
    p.add_argument("--ops", default=None, help="only these ops (comma separated)")
    p.add_argument("--threads", default="1,2,3", help="thread counts of the CPU backend")
    p.add_argument("--max-nodes", type=int, default=4, help="nodes per graph at most")
    p.add_argument("--guard-pages", action="store_true",
                   help="tensors against PROT_NONE pages: out-of-bounds reads fault too")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    return p


def _repro(args, k: int) -> str:
    extra = "".join(f" --{name} {v}" for name, v in (("ops", args.ops), ("max-nodes", args.max_nodes),
                                                     ("threads", args.threads))
                    if v not in (None, 4, "1,2,3"))
    return f"pyggml fuzz --seed {args.seed} --example {k}{extra}" + \
        (" --guard-pages" if args.guard_pages else "")


def _kind(message: str) -> str:
    if "out-of-bounds" in message:
        return "oob"
    if any(w in message for w in ("NMSE", "NaN at", "inf mismatch", "not identical", "error =")):
        return "mismatch"
    return "error"


def _check_one(runner, args, ops, k: int) -> tuple:
    """(status, kind, one-line description) of example k; a failure shrunk (fuzz.shrink)."""
    spec = runner.example(args.seed, k, ops, args.max_nodes)
    if not spec.nodes:
        return "EMPTY", "", ""
    spec, out = runner.check_shrunk(spec, args.seed)
    if out.status != "FAIL":
        return out.status, "", f"{spec}"
    return "FAIL", _kind(out.message), f"{spec}: {out.message}\n    python: {spec.snippet()}"


def _child(args, ops, k0: int, wfd: int) -> None:
    """Run examples k0.. in this (forked) process; one line per event on wfd."""
    w = os.fdopen(wfd, "w", buffering=1)
    runner = fuzz.Runner(_threads(args), guard_pages=args.guard_pages)
    for k in range(k0, args.examples):
        w.write(f"start {k}\n")
        status, kind, text = _check_one(runner, args, ops, k)
        w.write(f"done {k} {status} {kind} {text.replace(chr(10), chr(1))}\n")
    w.close()


def _threads(args) -> tuple:
    try:
        n = tuple(int(x) for x in str(args.threads).split(","))
    except ValueError:
        n = ()
    if not n or min(n) < 1:
        raise ValueError(f"--threads {args.threads}: thread counts >= 1, comma separated")
    return n


def _check_args(args) -> None:
    _threads(args)
    for name, v, lo in (("examples", args.examples, 0), ("max-nodes", args.max_nodes, 1),
                        ("start", args.start, 0), ("example", args.example, 0)):
        if v is not None and v < lo:
            raise ValueError(f"--{name} {v}: must be >= {lo}")
    if args.start > args.examples:
        raise ValueError(f"--start {args.start} is past --examples {args.examples}")


def _campaign(args, ops) -> int:
    counts = dict(graphs=0, OK=0, REJECTED=0, EMPTY=0, FAIL=0, crash=0, oob=0, mismatch=0, error=0)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    t0 = time.time()
    k = args.start
    while k < args.examples:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            code = 0
            try:
                _child(args, ops, k, wfd)
            except BaseException as e:           # noqa: BLE001 - told to the parent
                print(f"fuzz: child failed: {type(e).__name__}: {e}", file=sys.stderr)
                code = 3
            finally:
                os._exit(code)
        os.close(wfd)
        current = None
        with os.fdopen(rfd) as r:
            for line in r:
                word, rest = line.rstrip("\n").split(" ", 1)
                if word == "start":
                    current = int(rest)
                    continue
                idx, status, kind, text = (rest.split(" ", 3) + ["", ""])[:4]
                current, k = None, int(idx) + 1
                counts["graphs"] += status != "EMPTY"
                counts[status] += 1
                if status == "FAIL":
                    counts[kind] += 1
                    print(f"FAIL example {idx} ({kind}): {text.replace(chr(1), chr(10))}\n"
                          f"    repro: {_repro(args, int(idx))}", flush=True)
                if progress:
                    print(f"\r[{k}/{args.examples}] {time.time() - t0:7.1f}s FAIL {counts['FAIL']} "
                          f"crash {counts['crash']}", end="", file=sys.stderr)
        _, status = os.waitpid(pid, 0)
        if current is not None:                   # died inside an example
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            from .guard import signal_name
            how = signal_name(sig) if sig else f"exit status {os.WEXITSTATUS(status)}"
            counts["graphs"] += 1
            counts["FAIL"] += 1
            counts["crash"] += 1
            print(f"CRASH example {current} ({how})\n    repro: {_repro(args, current)}", flush=True)
            k = current + 1
        elif k < args.examples:                   # the child stopped without finishing
            print(f"fuzz: the child stopped at example {k}", file=sys.stderr)
            return 2
    if progress:
        print(file=sys.stderr)
    span = f" (examples {args.start}..{args.examples - 1})" if args.start else ""
    print(f"fuzz: seed {args.seed}{span}: {counts['graphs']} graphs in {time.time() - t0:.0f}s: "
          f"{counts['OK']} OK, {counts['REJECTED']} rejected by both backends, {counts['FAIL']} FAIL "
          f"({counts['crash']} crashes, {counts['oob']} out-of-bounds, {counts['mismatch']} "
          f"mismatches, {counts['error']} errors)")
    return 1 if counts["FAIL"] else 0


def _one(args, ops) -> int:
    runner = fuzz.Runner(_threads(args), guard_pages=args.guard_pages)
    try:
        spec = runner.example(args.seed, args.example, ops, args.max_nodes)
        print(f"example {args.example}: {spec}\n    python: {spec.snippet()}")
        out = runner.check(spec, args.seed)
        print(f"{out.status} {out.message}".rstrip())
        return 1 if out.status == "FAIL" else 0
    finally:
        runner.free()


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .. import ops as _ops  # noqa: F401  (registers every op)
    try:
        _check_args(args)
        only = [o.strip() for o in args.ops.split(",") if o.strip()] if args.ops else None
        probe = fuzz.Runner(_threads(args)[:1])
        try:
            ops = probe.ops(only)
        finally:
            probe.free()
        if args.example is not None:
            return _one(args, ops)
        for op in ops:                           # templates once, shared by the children
            fuzz.templates(op)
        return _campaign(args, ops)
    except (GGMLError, ValueError) as e:
        print(f"pyggml fuzz: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
