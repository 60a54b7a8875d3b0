"""How many of ggml's test-backend-ops cases pyggml has, per op.

Reads the csv ggml's `test-backend-ops support|test -b CPU --output csv` writes (default: the
fixture tests/testing/fixtures/ggml_support_cpu.csv.gz, made by tools/make_ggml_cases_fixture.py)
and pyggml's case list (in-process, or a `pyggml test-backend-ops support --output csv` file with
--pyggml), and matches cases on the fields ggml prints: a ggml case is covered when a pyggml case
of the same op has the same value in every one of its fields (pyggml's strings may carry extra
fields from a newer ggml, e.g. MUL_MAT's src_overlap; those are ignored).

usage: python tools/cases_vs_ggml.py [GGML_CSV] [--pyggml CSV] [-o OP,...] [--missing N]
                                     [--only-missing]
Prints one line per op (ggml's cases, matched, %, pyggml's cases), the ops pyggml lacks, and the
totals, overall and over the "core" types (F32, F16, BF16, the integer types, Q4_0..Q8_0, the
K-quants, IQ4_NL, IQ4_XS, MXFP4: issue 20's 95% target).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import sys
from collections import defaultdict

sys.path.append(os.path.join(os.path.dirname(__file__), ".."))   # PYTHONPATH first

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "testing", "fixtures",
                       "ggml_support_cpu.csv.gz")
CORE_TYPES = {"f32", "f16", "bf16", "i8", "i16", "i32", "i64", "q4_0", "q4_1", "q5_0", "q5_1",
              "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs", "mxfp4"}


def split_vars(s: str) -> dict:
    """'type=f32,ne=[4,3],v=0' -> {'type': 'f32', 'ne': '[4,3]', 'v': '0'} (commas inside
    brackets or parentheses kept)."""
    out, depth, cur = {}, 0, []
    for ch in s + ",":
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            item = "".join(cur)
            cur = []
            if item:
                k, _, v = item.partition("=")
                out[k] = v
        else:
            cur.append(ch)
    return out


def read_csv_cases(path: str, backend: str = None, unsupported: set = None) -> list[tuple[str, str]]:
    """(op_name, op_params) rows of a test-backend-ops csv (plain or .gz), first of each kept;
    the ones the backend said it does not support are added to `unsupported` when given."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    seen, out = set(), []
    for r in rows:
        if backend and r.get("backend_name") not in (backend, None):
            continue
        key = (r["op_name"], r["op_params"])
        if key not in seen:
            seen.add(key)
            out.append(key)
            if unsupported is not None and r.get("supported") == "0":
                unsupported.add(key)
    return out


def pyggml_cases(ops=None) -> list[tuple[str, str]]:
    from pyggml.testing.harness import all_cases
    return [(c.op, c.vars_str) for _, c in all_cases(ops)]


def match(ggml: list[tuple[str, str]], ours: list[tuple[str, str]]):
    """{op: (ggml case strings, matched flags)} and {op: pyggml case count}."""
    by_op = defaultdict(list)
    for op, vs in ours:
        by_op[op].append(split_vars(vs))
    index: dict = {}

    def projections(op, keys):
        got = index.get((op, keys))
        if got is None:
            got = index[(op, keys)] = {tuple(d[k] for k in keys) for d in by_op.get(op, ())
                                       if all(k in d for k in keys)}
        return got

    result = defaultdict(lambda: ([], []))
    for op, vs in ggml:
        d = split_vars(vs)
        keys = tuple(d)
        ok = tuple(d[k] for k in keys) in projections(op, keys)
        result[op][0].append(vs)
        result[op][1].append(ok)
    return result, {op: len(v) for op, v in by_op.items()}


def is_core(vs: str) -> bool:
    """Every type a case names is among CORE_TYPES."""
    types = [v for k, v in split_vars(vs).items() if "type" in k]
    return all(t in CORE_TYPES for t in types)


def report(result, ours_count, missing: int = 0, only_missing: bool = False,
           out=sys.stdout, unsupported: set = frozenset()) -> tuple[int, int]:
    tot = tot_ok = core = core_ok = run = run_ok = 0
    print(f"{'op':<28} {'ggml':>6} {'matched':>8} {'%':>6} {'pyggml':>7}", file=out)
    for op in sorted(result):
        cases, ok = result[op]
        n, m = len(cases), sum(ok)
        tot, tot_ok = tot + n, tot_ok + m
        for vs, hit in zip(cases, ok):
            if is_core(vs):
                core, core_ok = core + 1, core_ok + hit
            if (op, vs) not in unsupported:
                run, run_ok = run + 1, run_ok + hit
        if only_missing and m == n:
            continue
        print(f"{op:<28} {n:>6} {m:>8} {100.0 * m / n:>5.1f}% {ours_count.get(op, 0):>7}",
              file=out)
        for vs in [vs for vs, hit in zip(cases, ok) if not hit][:missing]:
            print(f"    lacks {op}({vs})", file=out)
    absent = sorted(op for op in result if op not in ours_count)
    print(f"\nops ggml has and pyggml lacks ({len(absent)}): {', '.join(absent) or 'none'}",
          file=out)
    print(f"total: {tot_ok}/{tot} of ggml's cases matched ({100.0 * tot_ok / max(tot, 1):.1f}%); "
          f"core types: {core_ok}/{core} ({100.0 * core_ok / max(core, 1):.1f}%); the ones ggml's "
          f"CPU runs: {run_ok}/{run} ({100.0 * run_ok / max(run, 1):.1f}%)", file=out)
    return tot_ok, tot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ggml_csv", nargs="?", default=FIXTURE)
    ap.add_argument("--pyggml", help="pyggml's support csv (default: generate the cases here)")
    ap.add_argument("-o", dest="ops", help="only these ops (comma-separated)")
    ap.add_argument("--missing", type=int, default=0, help="list up to N missing cases per op")
    ap.add_argument("--only-missing", action="store_true", help="hide fully matched ops")
    a = ap.parse_args(argv)
    try:
        unsupported: set = set()
        ggml = read_csv_cases(a.ggml_csv, backend="CPU", unsupported=unsupported)
        ours = read_csv_cases(a.pyggml) if a.pyggml else pyggml_cases()
    except (OSError, KeyError, csv.Error) as e:
        print(f"cases_vs_ggml: cannot read the cases: {e}", file=sys.stderr)
        return 2
    if a.ops:
        wanted = {o.strip().upper() for o in a.ops.split(",")}
        ggml = [c for c in ggml if c[0] in wanted]
    result, counts = match(ggml, ours)
    buf = io.StringIO()
    report(result, counts, a.missing, a.only_missing, out=buf, unsupported=unsupported)
    print(buf.getvalue(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
