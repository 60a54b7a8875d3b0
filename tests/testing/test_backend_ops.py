"""`pyggml test-backend-ops`: the engine (harness) and the CLI, tested as a user meets them.

A test-only backend carries deliberately broken kernels (a CONT that writes 0.9*x, a CONT
that writes one element past its destination) in a private kernel table, so a failure is
real: the suite must report it with its NMSE, exit non-zero, print a repro line that reruns
exactly that case, and catch the out-of-bounds write in its guard bytes.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr
from contextlib import redirect_stdout
from pathlib import Path

import numba
import numpy as np
import pytest

from pyggml import compute
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.desc import DST
from pyggml.backends.numba_cpu.desc import SRC0
from pyggml.backends.numba_cpu.desc import row_range
from pyggml.backends.numba_cpu.desc import t_addr
from pyggml.backends.numba_cpu.desc import t_nb
from pyggml.backends.numba_cpu.desc import t_ne
from pyggml.backends.numba_cpu.intrinsics import f32_array
from pyggml.backends.numba_cpu.intrinsics import ptr_of
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import KernelEntry
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.ops.case import Case
from pyggml.ops.registry import OPS
from pyggml.testing import harness
from pyggml.testing.cli import main
from pyggml.testing.harness import all_cases
from pyggml.testing.harness import check_guards
from pyggml.testing.harness import compare_values
from pyggml.testing.harness import duplicate_cases
from pyggml.testing.harness import run_perf
from pyggml.testing.harness import run_test
from pyggml.testing.harness import split_ops
from pyggml.testing.report import CSV_FIELDS
from pyggml.testing.report import FIELDS
from pyggml.types import GGMLType

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

CONT_F32 = "CONT(type=f32,ne=[10,10,10,1],use_view_slice=0,permute=[0,0,0,0])"
CONT_F32_PERM = "CONT(type=f32,ne=[2,3,5,7],use_view_slice=0,permute=[0,0,0,0])"
SQR_F32 = "SQR(type=f32,ne=[10,5,4,3])"


# --- broken kernels (registered only in private tables) -----------------------------------

def _cont_f32_scaled(desc, ith, nth, factor, overrun):
    """CONT F32 -> F32 over any source strides, times `factor`; thread 0 also writes
    `overrun` elements past the end of the destination."""
    ne00, ne01, ne02, ne03 = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), \
        t_ne(desc, SRC0, 3)
    nb00, nb01, nb02, nb03 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), \
        t_nb(desc, SRC0, 3)
    n = ne00 * ne01 * ne02 * ne03
    dst = f32_array(t_addr(desc, DST), n + overrun)
    src = t_addr(desc, SRC0)
    ir0, ir1 = row_range(ne01 * ne02 * ne03, ith, nth)
    for ir in range(ir0, ir1):
        i3 = ir // (ne01 * ne02)
        i2 = (ir // ne01) % ne02
        i1 = ir % ne01
        base = src + i1 * nb01 + i2 * nb02 + i3 * nb03
        for i0 in range(ne00):
            dst[ir * ne00 + i0] = np.float32(factor) * ptr_of(base + i0 * nb00, np.float32)[0]
    if ith == 0:
        for k in range(overrun):
            dst[n + k] = np.float32(12345.0)


_scaled = numba.njit(nogil=True, cache=True)(_cont_f32_scaled)


def cont_times_0_9(desc, ith, nth):
    _scaled(desc, ith, nth, 0.9, 0)


def cont_writes_past_end(desc, ith, nth):
    _scaled(desc, ith, nth, 1.0, 1)


def _f32_only(node) -> bool:
    return node.type == GGMLType.F32 and node.src[0].type == GGMLType.F32


def _table_with(op: str, pyfunc) -> dict:
    """A copy of the numba kernel table where `pyfunc` runs op's F32 nodes (others unchanged)."""
    table = dict(KERNELS)
    table[op] = KernelEntry(op, [make_kernel(op, pyfunc, _f32_only)] + list(KERNELS[op].variants))
    return table


class BrokenBackend(NumbaBackend):
    """numba, except that CONT F32 writes 0.9 * x."""
    name = "broken"

    def __init__(self, n_threads=None):
        super().__init__(n_threads or 2, kernels=_table_with("CONT", cont_times_0_9))


class OverrunBackend(NumbaBackend):
    """numba, except that CONT F32 writes one element past its destination."""
    name = "overrun"

    def __init__(self, n_threads=None):
        super().__init__(n_threads or 2, kernels=_table_with("CONT", cont_writes_past_end))


class EmptyBackend(NumbaBackend):
    """A backend without a single kernel: every computing node is not supported."""
    name = "empty"

    def __init__(self, n_threads=None):
        super().__init__(1, kernels={})


@pytest.fixture
def test_backends(monkeypatch):
    """Make the test backends selectable with -b (and visible to -j workers, which fork)."""
    for be in (BrokenBackend, OverrunBackend, EmptyBackend):
        monkeypatch.setitem(compute.BACKENDS, be.name, be)


@pytest.fixture(scope="module")
def ref():
    return ReferenceBackend()


def _case(s: str) -> Case:
    got = [c for _, c in all_cases(s)]
    assert len(got) == 1, (s, got)
    return got[0]


def cli(*argv) -> tuple[int, str, str]:
    """Run `pyggml test-backend-ops argv...` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


_LINE = re.compile(r"^  ([A-Z0-9_]+)\((.*)\): (.*)$")


def result_lines(out: str) -> list[tuple[str, str]]:
    """(case string, rest of line) of every case line of the console output."""
    got = []
    for line in out.splitlines():
        m = _LINE.match(line)
        if m:
            got.append((f"{m.group(1)}({m.group(2)})", m.group(3)))
    return got


# --- the engine -------------------------------------------------------------------------------

def test_broken_kernel_is_reported_fail_with_its_nmse(ref):
    be = BrokenBackend()
    try:
        for s in (CONT_F32, CONT_F32_PERM):
            r = run_test(_case(s), be, ref)
            assert r.status == "FAIL" and not r.passed, (s, r)
            # every value is 0.9 x: NMSE = 0.1² = 0.01
            assert r.err == pytest.approx(0.01, rel=1e-5)
            assert "NMSE 1.000e-02" in r.message and "CONT" in r.message
        # the other types still run the real kernels
        r = run_test(_case("CONT(type=f16,ne=[10,10,10,1],use_view_slice=0,permute=[0,0,0,0])"),
                     be, ref)
        assert r.status == "OK", r
    finally:
        be.free()


def test_broken_kernel_fails_a_tolerance_op_too(ref):
    """An op with an NMSE threshold (SQR, 1e-7) fails on the NMSE rule, not only exact ones."""
    table = _table_with("SQR", cont_times_0_9)      # copies 0.9 x instead of squaring
    be = NumbaBackend(2, kernels=table)
    try:
        r = run_test(_case(SQR_F32), be, ref)
    finally:
        be.free()
    assert r.status == "FAIL" and r.err > r.max_err == pytest.approx(1e-7)
    assert re.search(r"\[SQR\] NMSE = [0-9.]+ > 0\.000000100", r.message), r.message


def test_out_of_bounds_write_is_caught_by_the_guard_bytes(ref):
    be = OverrunBackend()
    try:
        r = run_test(_case(CONT_F32), be, ref)
    finally:
        be.free()
    assert r.status == "FAIL"
    assert "out-of-bounds write" in r.message and "guard bytes" in r.message
    # the same kernel without the overrun passes: it is the overrun that was caught
    be = NumbaBackend(2, kernels=_table_with("CONT", _exact_copy))
    try:
        assert run_test(_case(CONT_F32), be, ref).status == "OK"
    finally:
        be.free()


def _exact_copy(desc, ith, nth):
    _scaled(desc, ith, nth, 1.0, 0)


def test_guards_name_the_tensor_whose_guard_changed():
    from pyggml import tensor
    _, out, gf = harness.build_graph(_case(CONT_F32))
    guards = harness.alloc_guarded(gf)
    assert check_guards(guards) == []
    root, buf = next((r, b) for r, b in guards if r is out)
    buf.data[harness.GUARD + tensor.nbytes(out)] ^= 1          # one byte past the end
    assert check_guards(guards) == [out.name or "?"]
    buf.data[harness.GUARD + tensor.nbytes(out)] ^= 1
    buf.data[harness.GUARD - 1] ^= 1                           # one byte before the start
    assert check_guards(guards) == [out.name or "?"]


def test_not_supported_is_a_pass(ref):
    be = EmptyBackend()
    try:
        r = run_test(_case(SQR_F32), be, ref)
    finally:
        be.free()
    assert r.status == "NOT SUPPORTED" and r.passed


def test_a_cases_own_error_function_decides(ref):
    """ggml's test_case::err: a case may define its error (TOP_K with ties compares values)."""
    import dataclasses
    be = NumbaBackend(2, kernels=_table_with("SQR", cont_times_0_9))
    seen = []

    def lenient(a, b, node):
        seen.append((a.shape, b.shape, node.op.name, node.src[0].ne))
        return 0.0

    try:
        case = dataclasses.replace(_case(SQR_F32))
        case.err = lenient
        r = run_test(case, be, ref)
        assert r.status == "OK" and seen == [((3, 4, 5, 10), (3, 4, 5, 10), "SQR", [10, 5, 4, 3])]
        case.err = lambda a, b, node: 0.5
        r = run_test(case, be, ref)
        assert r.status == "FAIL" and r.err == 0.5 and "own error function" in r.message
    finally:
        be.free()


def test_backend_can_decline_cases_by_tag(ref):
    import dataclasses

    class Picky(NumbaBackend):
        unsupported_tags = ("no_picky",)
    be = Picky(1)
    try:
        case = dataclasses.replace(_case(SQR_F32), tags=("no_picky",))
        r = run_test(case, be, ref)
        assert r.status == "NOT SUPPORTED" and "no_picky" in r.message
        assert run_perf(case, be, budget_s=0.01).status == "NOT SUPPORTED"
        assert run_test(_case(SQR_F32), be, ref).status == "OK"
    finally:
        be.free()


@pytest.mark.parametrize("ref_v, got_v, exact, ok", [
    ([1.0, 2.0], [1.0, 2.0], True, True),
    ([1.0, 2.0], [1.0, 2.0000001], True, False),           # exact ops: identical or FAIL
    ([1.0, 2.0], [1.0, 2.0000001], False, True),           # NMSE 2e-15 < 1e-7
    ([1.0, 2.0], [1.0, 2.01], False, False),               # NMSE 2e-5 > 1e-7
    ([1.0, np.nan], [1.0, np.nan], False, True),           # NaN on both sides agrees
    ([1.0, np.nan], [1.0, 0.0], False, False),             # NaN on one side only
    ([1.0, 0.0], [1.0, np.nan], False, False),
    ([1.0, -np.inf], [1.0, -np.inf], False, True),
    ([1.0, -np.inf], [1.0, np.inf], False, False),         # infinities must agree in sign
    ([1.0, np.inf], [1.0, 3.4028234663852886e38], False, True),   # FLT_MAX counts as inf
    ([1.0, 5.0], [1.0, np.inf], False, False),
])
def test_comparison_rules_are_ggmls(ref_v, got_v, exact, ok):
    assert compare_values(np.array(ref_v), np.array(got_v), 1e-7, exact, "X")[0] is ok


def test_run_perf_times_a_case():
    be = NumbaBackend(1)
    try:
        r = run_perf(_case(SQR_F32), be, budget_s=0.01)
    finally:
        be.free()
    assert r.status == "OK" and r.runs > 0 and r.us_per_run > 0 and r.flops > 0


# --- case selection ----------------------------------------------------------------------------

def test_split_ops_keeps_case_strings_whole():
    assert split_ops("ADD,MUL") == ["ADD", "MUL"]
    assert split_ops(CONT_F32) == [CONT_F32]
    assert split_ops(f"SQR,{CONT_F32}, mul ") == ["SQR", CONT_F32, "mul"]
    assert split_ops(None) == [] and split_ops(["A", "B,C"]) == ["A", "B", "C"]


def test_all_cases_filters_by_op_case_string_and_regex():
    sqr = [c for _, c in all_cases("SQR")]
    assert sqr and all(c.op == "SQR" for c in sqr)
    assert [str(c) for _, c in all_cases(CONT_F32)] == [CONT_F32]
    assert {c.op for _, c in all_cases(["sqr", CONT_F32])} == {"SQR", "CONT"}
    f16 = [c for _, c in all_cases("SQR", pattern="type=f16")]
    assert f16 and all("type=f16" in c.vars_str for c in f16) and len(f16) < len(sqr)
    fast = [c for _, c in all_cases("ADD", include_slow=False)]
    assert fast and all("slow" not in c.tags for c in fast)


def test_case_strings_are_unique_per_op():
    """all_cases runs each case string once, whatever the families' grids repeat."""
    for name in sorted(OPS):
        strs = [str(c) for _, c in all_cases(name)]
        assert len(strs) == len(set(strs)), name


def test_repeated_case_strings_build_the_same_test():
    """A case string names one test: when a family's grid repeats a string (ggml's grids do),
    the repeats must build the same graph with the same inputs, or a build parameter is
    missing from the case's vars (the repeat would silently not run)."""
    hidden = {name: [(k, d) for k, same, d in duplicate_cases(OPS[name]) if not same]
              for name in sorted(OPS)}
    hidden = {k: v for k, v in hidden.items() if v}
    assert not hidden, f"case strings that hide different tests: {hidden}"


def _fake_op(*cases):
    class Op:
        name = "FAKE"

        def cases(self):
            return list(cases)
    return Op()


def test_duplicate_cases_tells_hidden_build_parameters_apart():
    import pyggml as gg

    def sqr(ne):
        return lambda ctx: gg.sqr(ctx, gg.new_tensor(ctx, GGMLType.F32, 4, list(ne)))
    same = _fake_op(Case("FAKE", {"n": 1}, sqr([4, 3, 1, 1])), Case("FAKE", {"n": 1}, sqr([4, 3, 1, 1])))
    (key, same_graph, _), = duplicate_cases(same)
    assert key == "FAKE(n=1)" and same_graph
    differ = _fake_op(Case("FAKE", {"n": 1}, sqr([4, 3, 1, 1])), Case("FAKE", {"n": 1}, sqr([4, 5, 1, 1])))
    (key, same_graph, detail), = duplicate_cases(differ)
    assert not same_graph and "(4, 3, 1, 1)" in detail and "(4, 5, 1, 1)" in detail
    # a different init is a hidden difference too
    init = _fake_op(Case("FAKE", {"n": 1}, sqr([4, 3, 1, 1])),
                    Case("FAKE", {"n": 1}, sqr([4, 3, 1, 1]), init=lambda t, rng: np.ones(t.ne[::-1])))
    assert duplicate_cases(init)[0][1] is False
    # and all_cases keeps the first of each case string
    assert len(harness.unique_cases(differ.cases())) == 1


# --- the CLI -----------------------------------------------------------------------------------

def test_cli_reports_the_broken_kernel_and_exits_1(test_backends):
    rc, out, _ = cli("-b", "broken", "-o", "CONT")
    assert rc == 1
    lines = dict(result_lines(out))
    f32 = [s for s in lines if "type=f32" in s]
    assert f32 and all(lines[s].endswith("FAIL") and "NMSE 1.000e-02" in lines[s] for s in f32)
    assert all(lines[s] == "OK" for s in lines if s not in f32)
    assert f"{len(lines) - len(f32)}/{len(lines)} tests passed" in out
    assert "Backend broken: FAIL" in out and out.rstrip().endswith("FAIL")
    assert "Failing tests:" in out and all(f"  {s}" in out for s in f32)


def test_repro_line_reruns_exactly_the_failing_case(test_backends):
    rc, out, _ = cli("-b", "broken", "-o", "CONT", "--seed", "7")
    assert rc == 1
    fails = [(s, rest) for s, rest in result_lines(out) if rest.endswith("FAIL")]
    repros = [line.split("repro: ", 1)[1] for line in out.splitlines() if "repro: " in line]
    assert len(repros) == len(fails) > 0
    assert all("seed 7" in line for line in out.splitlines() if "repro: " in line)
    for (case, rest), repro in zip(fails, repros):
        argv = shlex.split(repro)
        assert argv[:2] == ["pyggml", "test-backend-ops"] and "--seed" in argv
        rc2, out2, _ = cli(*argv[2:])
        assert rc2 == 1
        assert result_lines(out2) == [(case, rest)]        # the same case, the same FAIL


def test_cli_catches_the_out_of_bounds_write(test_backends):
    rc, out, _ = cli("-b", "overrun", "-o", CONT_F32)
    assert rc == 1
    (case, rest), = result_lines(out)
    assert case == CONT_F32 and "out-of-bounds write" in rest and rest.endswith("FAIL")


def test_o_op_and_o_case_string(test_backends):
    n_sqr = len(list(all_cases("SQR")))
    rc, out, _ = cli("-b", "numba", "-o", "SQR")
    lines = result_lines(out)
    assert rc == 0 and len(lines) == n_sqr and all(s.startswith("SQR(") for s, _ in lines)
    assert f"{n_sqr}/{n_sqr} tests passed" in out
    rc, out, _ = cli("-b", "numba", "-o", CONT_F32_PERM)
    assert rc == 0 and result_lines(out) == [(CONT_F32_PERM, "OK")]       # exactly one case
    rc, out, _ = cli("-b", "numba", "-o", f"SQR,{CONT_F32}")
    assert rc == 0 and len(result_lines(out)) == n_sqr + 1


def test_p_regex_selects_by_vars():
    rc, out, _ = cli("-b", "numba", "-o", "SQR,CONT", "-p", r"type=f16,ne=\[10,.*(5,4,3\]|0,0,0\])$")
    lines = result_lines(out)
    assert rc == 0 and {s for s, _ in lines} == {
        "SQR(type=f16,ne=[10,5,4,3])",
        "CONT(type=f16,ne=[10,10,10,1],use_view_slice=0,permute=[0,0,0,0])"}


def test_no_matching_case_passes_like_ggml():
    """ggml's test-backend-ops -o 'ADD(' (or an unknown op) runs nothing: '0/0 tests passed',
    exit 0. pyggml says so on stderr too."""
    for argv in (("-o", "SQR", "-p", "no-such-var"), ("-o", "ADD("), ("-o", "NO_SUCH_OP")):
        rc, out, err = cli("-b", "numba", *argv)
        assert rc == 0 and "0/0 tests passed" in out and "no test cases match" in err, argv


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_b_selects_the_backend(backend):
    rc, out, _ = cli("-b", backend, "-o", SQR_F32)
    assert rc == 0 and f"Backend 1/1: {backend}" in out and f"Backend {backend}: OK" in out
    assert result_lines(out) == [(SQR_F32, "OK")]


def test_unknown_backend_fails(capsys):
    rc, _, err = cli("-b", "nosuch", "-o", SQR_F32)
    assert rc == 1 and "nosuch" in err


def _csv_rows(out: str) -> tuple[list, list[dict]]:
    rows = list(csv.reader(io.StringIO(out)))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def test_output_csv_has_ggmls_columns_and_one_row_per_case(test_backends):
    cases = [c for _, c in all_cases("CONT")]
    rc, out, err = cli("-b", "broken", "-o", "CONT", "--output", "csv")
    assert rc == 1
    header, rows = _csv_rows(out)
    assert header == CSV_FIELDS == ["backend_name", "op_name", "op_params", "test_mode",
                                    "supported", "error_message", "backend_reg_name"]
    assert [(r["op_name"], r["op_params"]) for r in rows] == [(c.op, c.vars_str) for c in cases]
    for r in rows:
        assert r["backend_name"] == "broken" and r["test_mode"] == "test" and r["supported"] == "1"
        f32 = "type=f32" in r["op_params"]
        assert r["error_message"] == ("compare failed" if f32 else "")     # ggml's words
    assert "repro:" in err            # notes go to stderr, the csv stays clean


def test_output_sql_loads_into_sqlite(test_backends):
    rc, out, _ = cli("-b", "broken", "-o", "CONT,SQR", "--output", "sql")
    assert rc == 1
    db = sqlite3.connect(":memory:")
    db.executescript(out)
    n_cont = len(list(all_cases("CONT")))
    n_sqr = len(list(all_cases("SQR")))
    got = dict((op, (n, p)) for op, n, p in db.execute(
        "SELECT op_name, count(*), sum(passed) FROM test_backend_ops GROUP BY op_name"))
    n_f32 = sum("type=f32" in c.vars_str for _, c in all_cases("CONT"))
    assert got == {"CONT": (n_cont, n_cont - n_f32), "SQR": (n_sqr, n_sqr)}
    cols = [r[1] for r in db.execute("PRAGMA table_info(test_backend_ops)")]
    assert cols == FIELDS
    (typ,), = db.execute("SELECT typeof(passed) FROM test_backend_ops LIMIT 1")
    assert typ == "integer"
    failing = [r[0] for r in db.execute(
        "SELECT op_params FROM test_backend_ops WHERE passed = 0 ORDER BY rowid")]
    assert failing and all("type=f32" in p for p in failing)


def test_list_ops():
    rc, out, _ = cli("--list-ops")
    assert rc == 0
    listed = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}
    assert set(listed) == set(OPS)
    assert listed["SQR"] == len(list(all_cases("SQR")))


def test_show_coverage():
    rc, out, _ = cli("--show-coverage")
    assert rc == 0
    head, *rows = out.splitlines()
    assert head.split() == ["op", "cases", "ref", "ggml", "numba"]
    table = {r.split()[0]: r.split() for r in rows if r and not r.startswith(" ") and "ops (" not in r}
    assert set(table) == set(OPS)
    assert table["CONT"][2:] == ["yes", "yes", "yes"] and table["VIEW"][-1] == "view"
    assert re.search(r"numba: kernels for \d+/\d+ computed ops", out)


def test_support_mode(test_backends):
    rc, out, _ = cli("support", "-b", "numba", "-o", "SQR,CONT")
    lines = result_lines(out)
    assert rc == 0 and lines and all(rest == "SUPPORTED" for _, rest in lines)
    rc, out, _ = cli("support", "-b", "empty", "-o", "SQR")
    lines = result_lines(out)
    assert rc == 0 and lines and all(rest.startswith("not supported [empty]") for _, rest in lines)


_PERF = re.compile(r"^  (\S+\(.*\)):\s+(\d+) runs -\s+([0-9.]+) us/run - ")


def test_perf_mode_with_a_tiny_budget():
    rc, out, _ = cli("perf", "-b", "numba", "-o", f"{SQR_F32},{CONT_F32}", "--budget", "0.01")
    assert rc == 0
    got = {m.group(1): (int(m.group(2)), float(m.group(3)))
           for m in map(_PERF.match, out.splitlines()) if m}
    assert set(got) == {SQR_F32, CONT_F32}
    assert all(runs > 0 and us > 0 for runs, us in got.values())
    assert "FLOP/run" in out and "GB/s" in out      # SQR counts flops, CONT bytes


def test_perf_baseline_ratios(tmp_path):
    base = tmp_path / "ggml.csv"
    with open(base, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(FIELDS)
        for op, params, us in (("SQR", "type=f32,ne=[10,5,4,3]", "2.5"),
                               ("CONT", "type=f32,ne=[10,10,10,1],use_view_slice=0,permute=[0,0,0,0]", "4.0"),
                               ("SQR", "type=f32,ne=[99,1,1,1]", "1.0")):    # not run: ignored
            row = dict.fromkeys(FIELDS, "")
            row.update(backend_name="CPU", op_name=op, op_params=params, test_mode="perf",
                       supported="1", passed="1", time_us=us, n_runs="1000")
            w.writerow([row[k] for k in FIELDS])
    rc, out, _ = cli("perf", "-b", "numba", "-o", f"{SQR_F32},{CONT_F32}", "--budget", "0.01",
                     "--baseline", base)
    assert rc == 0 and "ratio to baseline" in out
    us = {m.group(1): float(m.group(3)) for m in map(_PERF.match, out.splitlines()) if m}
    ratios = dict(re.findall(r"^  (\S+\(.*\)):\s+([0-9.]+)x$", out, re.M))
    assert set(ratios) == {SQR_F32, CONT_F32}
    assert float(ratios[SQR_F32]) == pytest.approx(us[SQR_F32] / 2.5, abs=0.01)
    assert re.search(r"^  SQR\s+[0-9.]+x over 1 cases$", out, re.M)
    assert re.search(r"^  CONT\s+[0-9.]+x over 1 cases$", out, re.M)


def test_j2_gives_the_same_results_as_j1(test_backends):
    args = ("-b", "broken", "-o", "CONT,SQR", "--output", "csv", "--seed", "3")
    rc1, out1, _ = cli(*args, "-j", "1")
    rc2, out2, _ = cli(*args, "-j", "2")
    keep = ("op_name", "op_params", "supported", "error_message")
    rows1 = [tuple(r[k] for k in keep) for r in _csv_rows(out1)[1]]
    rows2 = [tuple(r[k] for k in keep) for r in _csv_rows(out2)[1]]
    assert rc1 == rc2 == 1 and rows1 == rows2 and any(r[3] == "compare failed" for r in rows1)


def test_grad_mode_checks_gradients():
    """grad mode runs ggml's eval_grad (tests/testing/test_grad_mode.py has the details)."""
    rc, out, _ = cli("grad", "-b", "reference", "-o", "SQR(type=f32,ne=[10,5,4,3])")
    assert rc == 0, out
    assert "SQR(type=f32,ne=[10,5,4,3]): OK" in out


def test_compare_ggml_passes_on_a_few_ops(ggml):
    rc, out, _ = cli("-o", f"SQR,{CONT_F32_PERM},{CONT_F32}", "--compare", "ggml")
    assert rc == 0, out
    assert "Backend 2/2: ggml" in out and "Backend ggml: OK" in out and "2/2 backends passed" in out
    n = len(list(all_cases("SQR"))) + 2
    assert out.count(f"{n}/{n} tests passed") == 2
    # an in-place op on a strided view: ggml's result is written back through the strides
    rope = ("ROPE(type=f32,ne_a=[128,32,2,3],n_dims=128,mode=0,n_ctx=512,fs=1.424500,"
            "ef=0.746500,af=1.424500,ff=0,v=1,inplace=1,n_offs=0)")
    if list(all_cases(rope)):
        rc, out, _ = cli("-b", "ggml", "-o", rope)
        assert rc == 0 and result_lines(out) == [(rope, "OK")], out
    # a --compare failure's repro line says -b ggml: it must run real ggml alone
    rc, out, _ = cli("-b", "ggml", "-o", SQR_F32)
    assert rc == 0 and "Backend 1/1: ggml" in out and result_lines(out) == [(SQR_F32, "OK")]


def test_entry_point_exit_codes():
    """`python -m pyggml test-backend-ops` as a user runs it: 0 on success, 1 on failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run([PY, "-m", "pyggml", "test-backend-ops", "-b", "numba", "-o", SQR_F32],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"  {SQR_F32}: OK" in ok.stdout
    bad = subprocess.run([PY, "-m", "pyggml", "test-backend-ops", "-o", SQR_F32, "-j", "0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "-j 0" in bad.stderr
