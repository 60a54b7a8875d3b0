"""ggml's own test-backend-ops eval case list, for tools/cases_vs_ggml.py and its test.

Runs `test-backend-ops support -b CPU --output csv` (llama.cpp's build; ggml's
tests/test-backend-ops.cpp make_test_cases_eval) and writes its csv, unchanged, gzipped, to
tests/testing/fixtures/ggml_support_cpu.csv.gz (~80 KB; ~19,500 cases over ~110 ops).

usage: python tools/make_ggml_cases_fixture.py [--run PATH_TO_llama.cpp/run] [-o OUT]
The tests read the fixture; they never need llama.cpp.
"""
from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "testing", "fixtures",
                   "ggml_support_cpu.csv.gz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="/work/shared/llama.cpp/run",
                    help="llama.cpp's tool launcher (run TOOL args...)")
    ap.add_argument("-o", "--out", default=OUT)
    a = ap.parse_args(argv)
    res = subprocess.run([a.run, "test-backend-ops", "support", "-b", "CPU", "--output", "csv"],
                         capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.startswith('"'):
        print(f"test-backend-ops failed ({res.returncode}): {res.stderr.strip()[-400:]}",
              file=sys.stderr)
        return 2
    # mtime=0: the same csv gives the same bytes (a re-run is not a diff)
    with open(a.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(res.stdout.encode())
    print(f"{a.out}: {res.stdout.count(chr(10)) - 1} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
