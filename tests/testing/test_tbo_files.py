"""pyggml test-backend-ops output beside real ggml's own files (fixtures made by
tools/make_tbo_fixtures.py with llama.cpp's test-backend-ops -b CPU)."""
from __future__ import annotations

import csv
import io
import pathlib
import re
from contextlib import redirect_stderr
from contextlib import redirect_stdout

import pytest

from pyggml.errors import GGMLError
from pyggml.testing.cli import main
from pyggml.testing.report import load_baseline

FIX = pathlib.Path(__file__).parent / "fixtures"


def _cli(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue()


def _rows(text: str) -> dict:
    """(op_name, op_params) -> the raw csv line."""
    lines = text.splitlines()
    return {tuple(next(csv.reader([line]))[1:3]): line for line in lines[1:]}


def _as_cpu(line: str, backend: str) -> str:
    """pyggml's line with ggml's backend names (pyggml's backend is 'numba', ggml's 'CPU')."""
    return line.replace(f'"{backend}"', '"CPU"')


def test_support_csv_is_ggmls_byte_for_byte():
    ggml = (FIX / "ggml_tbo_support_SQR_ADD.csv").read_text()
    rc, out = _cli("support", "-b", "numba", "-o", "SQR,ADD", "--output", "csv")
    assert rc == 0
    assert out.splitlines()[0] == ggml.splitlines()[0]          # header, quoting included
    ours, theirs = _rows(out), _rows(ggml)
    common = sorted(set(ours) & set(theirs))
    assert len(common) >= 10, "the slice should share cases with pyggml's grid"
    for key in common:
        assert _as_cpu(ours[key], "numba") == theirs[key], key


def test_perf_csv_has_ggmls_columns_and_no_times():
    ggml = (FIX / "ggml_tbo_perf_ADD.csv").read_text().splitlines()
    rc, out = _cli("perf", "-b", "numba", "-o", "SQR(type=f32,ne=[10,5,4,3])",
                   "--budget", "0.01", "--output", "csv")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == ggml[0] and len(lines) == 2
    ours, theirs = next(csv.reader([lines[1]])), next(csv.reader([ggml[1]]))
    assert ours[3:] == theirs[3:] == ["perf", "1", "", ""]      # mode, supported, message, reg
    assert lines[1].count('"') == ggml[1].count('"') == 14


def test_sql_header_is_ggmls():
    ggml = (FIX / "ggml_tbo_perf_ADD.sql").read_text()
    rc, out = _cli("perf", "-b", "numba", "-o", "SQR(type=f32,ne=[10,5,4,3])",
                   "--budget", "0.01", "--output", "sql")
    assert rc == 0
    head = ggml.split("INSERT", 1)[0]
    assert out.startswith(head)
    ours = re.match(r"INSERT INTO test_backend_ops \((.*?)\) VALUES", out[len(head):]).group(1)
    assert ours == re.search(r"INSERT INTO test_backend_ops \((.*?)\) VALUES", ggml).group(1)
    vals = re.findall(r"'([^']*)'", out[len(head):])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", vals[0])         # test_time
    assert all(re.fullmatch(r"\d+\.\d{6}", v) for v in vals[9:12])          # %f doubles
    assert float(vals[10]) > 0 and vals[11] == "0.000000"       # SQR counts flops, not GB/s


@pytest.mark.parametrize("name", ["ggml_tbo_perf_ADD.sql", "ggml_tbo_perf_ADD.txt"])
def test_baseline_reads_ggmls_perf_files(name):
    got = load_baseline(str(FIX / name))
    assert set(got) == {("ADD", "type=f32,ne=[4096,1,1,1],nr=[1,1,1,1],nf=1,perm1=0,src_overlap=0"),
                        ("ADD", "type=f32,ne=[4096,1,1,1],nr=[1,512,1,1],nf=1,perm1=0,src_overlap=0")}
    assert all(t > 0 for t in got.values())


def test_a_baseline_with_no_timed_cases_is_an_error(tmp_path):
    """A file that is not ggml's perf output joined nothing, silently (exit 0)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    with pytest.raises(GGMLError, match="notes.txt: no timed cases"):
        load_baseline(str(notes))


def test_baseline_from_ggmls_csv_says_it_has_no_times():
    with pytest.raises(GGMLError, match="no times.*--output sql"):
        load_baseline(str(FIX / "ggml_tbo_perf_ADD.csv"))
