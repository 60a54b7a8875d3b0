"""Slices of real ggml's test-backend-ops output, for tests/testing/test_tbo_files.py.

    python tools/make_tbo_fixtures.py [--run ../shared/llama.cpp/run]

Writes tests/testing/fixtures/ggml_tbo_*: support mode as csv (ggml's 7 quoted columns),
perf mode as csv (no times), as sql (times) and as console text, for a few ops. The tests
check that pyggml prints the same csv byte for byte on the cases both have and that
`--baseline` reads ggml's perf files. Timings in the perf files are whatever this machine
gave: only their format matters.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "testing" / "fixtures"
RUNS = {
    "ggml_tbo_support_SQR_ADD.csv": ["support", "-o", "SQR,ADD", "--output", "csv"],
    "ggml_tbo_perf_ADD.csv": ["perf", "-o", "ADD", "--output", "csv"],
    "ggml_tbo_perf_ADD.sql": ["perf", "-o", "ADD", "--output", "sql"],
    "ggml_tbo_perf_ADD.txt": ["perf", "-o", "ADD"],
}
# a few cheap cases of ggml's perf list (make_test_cases_perf), console lines appended to one
# file: tests/testing/test_perf_cases.py checks pyggml's perf list prints these strings
PERF_SAMPLES = "ggml_tbo_perf_samples.txt"
PERF_PICKS = [
    ("ARGMAX", r"ne=\[(32|1024),10,"), ("MEAN", ""), ("CUMSUM", r"ne=\[128,128,"),
    ("SOFT_MAX", r"ne=\[(64|77),64,20,"), ("TRI", r"ne=\[256,256,"), ("CONT", r"ne=\[1024,64,"),
    ("PAD_REFLECT_1D", r"ne_a=\[512,34,"), ("MUL_MAT", r"type_a=q4_0,type_b=f32,m=4096,n=1,"),
]


def _console_lines(text: str) -> str:
    """The console's result lines, without the machine's description."""
    return "".join(line + "\n" for line in text.splitlines() if re.match(r"^  [A-Z0-9_]+\(", line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT.parent.parent / "shared" / "llama.cpp" / "run"),
                    help="llama.cpp's tool launcher")
    ap.add_argument("--samples-only", action="store_true", help=f"only {PERF_SAMPLES}")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, argv in ({} if args.samples_only else RUNS).items():
        res = subprocess.run([args.run, "test-backend-ops", *argv, "-b", "CPU"],
                             capture_output=True, text=True, check=True, timeout=1800)
        text = res.stdout
        if name.endswith(".txt"):       # the console: keep the result lines, drop the machine
            text = _console_lines(text)
        (OUT / name).write_text(text)
        print(f"{name}: {len(text.splitlines())} lines")
    text = ""
    for op, pattern in PERF_PICKS:
        argv = ["perf", "-o", op] + (["-p", pattern] if pattern else [])
        res = subprocess.run([args.run, "test-backend-ops", *argv, "-b", "CPU"],
                             capture_output=True, text=True, check=True, timeout=1800)
        text += _console_lines(res.stdout)
    (OUT / PERF_SAMPLES).write_text(text)
    print(f"{PERF_SAMPLES}: {len(text.splitlines())} lines")


if __name__ == "__main__":
    main()
