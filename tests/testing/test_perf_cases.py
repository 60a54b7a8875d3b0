"""`test-backend-ops perf` runs ggml's perf list (make_test_cases_perf), not the eval grid, so a
`--baseline` written by ggml's perf mode joins case by case (pyggml/testing/perf_cases.py)."""
from __future__ import annotations

import io
import pathlib
import re
from contextlib import redirect_stderr
from contextlib import redirect_stdout

from pyggml.testing.cli import main
from pyggml.testing.perf_cases import perf_cases
from pyggml.testing.report import baseline_key
from pyggml.testing.report import load_baseline

FIX = pathlib.Path(__file__).parent / "fixtures"
_LINE = re.compile(r"^  ([A-Z0-9_]+)\((.*)\):")


def _ggml_samples() -> list[tuple[str, str]]:
    """(op, vars) of the cases ggml's perf mode printed (tools/make_tbo_fixtures.py)."""
    out = []
    for line in (FIX / "ggml_tbo_perf_samples.txt").read_text().splitlines():
        m = _LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def test_ggmls_printed_perf_case_strings_are_reproduced_exactly():
    """Exactly, or (baseline_key) with trailing vars at 0 that the recorded ggml build
    predates: its MUL_MAT prints no src_overlap, pyggml's follows ggml's current source."""
    samples = _ggml_samples()
    assert len({op for op, _ in samples}) >= 6
    cases, _ = perf_cases()
    theirs = dict.fromkeys(samples, 1.0)
    joined = [baseline_key(c.op, c.vars_str, theirs) for _, c in cases]
    missing = [s for s in samples if s not in joined]
    assert not missing, missing
    exact = [s for s in samples if s in {(c.op, c.vars_str) for _, c in cases}]
    assert len(exact) >= len(samples) - 1          # all but the MUL_MAT one
    for op in {op for op, _ in samples}:        # and in ggml's order within an op
        want = [s for s in samples if s[0] == op]
        assert [k for k in joined if k in want] == want, op


def test_a_baseline_joins_past_newer_trailing_default_vars():
    base = {("MUL_MAT", "type_a=q4_0,m=1,k_v=0,o=1"): 5.0, ("ADD", "a=1,b=0"): 1.0}
    assert baseline_key("MUL_MAT", "type_a=q4_0,m=1,k_v=0,o=1,src_overlap=0", base) == \
        ("MUL_MAT", "type_a=q4_0,m=1,k_v=0,o=1")
    assert baseline_key("MUL_MAT", "type_a=q4_0,m=1,k_v=0,o=1,src_overlap=1", base) is None
    assert baseline_key("ADD", "a=1,b=0", base) == ("ADD", "a=1,b=0")
    assert baseline_key("ADD", "a=1", base) is None


def test_perf_list_counts_what_it_skips():
    cases, skipped = perf_cases("MUL_MAT")
    types = {c.vars["type_a"].tname for _, c in cases}
    assert {"f32", "f16", "q4_0", "q4_K", "q6_K", "iq4_xs"} <= types
    assert len(cases) == 7 * len(types)          # ggml's bs sweep {1,2,3,4,5,8,512}
    assert skipped >= 7 * (27 - len(types))      # types pyggml lacks, and families not transcribed
    assert perf_cases("NOT_AN_OP") == ([], 0)


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_perf_mode_runs_ggmls_list_and_joins_ggmls_baseline():
    rc, out, err = _cli("perf", "-b", "numba", "-o", "ADD", "-p", r"nr=\[1,1,1,1\]",
                        "--budget", "0.01", "--baseline", FIX / "ggml_tbo_perf_ADD.sql")
    assert rc == 0, err
    ran = [m.group(2) for m in map(_LINE.match, out.splitlines()) if m]
    assert ran[0] == "type=f32,ne=[4096,1,1,1],nr=[1,1,1,1],nf=1,perm1=0,src_overlap=0"
    base = load_baseline(str(FIX / "ggml_tbo_perf_ADD.sql"))
    assert ("ADD", ran[0]) in base
    assert re.search(r"^  ADD\s+[0-9.]+x over 1 cases$", out, re.M), out
