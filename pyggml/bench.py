"""`pyggml bench-ops`: runs the source tree's tools/bench.py (benchmarks against real ggml)."""
from __future__ import annotations

import os
import runpy
import sys


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "..", "tools", "bench.py")
    if not os.path.exists(script):
        print("pyggml bench-ops: the benchmarks live in the source tree's tools/bench.py; "
              "run from a checkout (pip install -e .)", file=sys.stderr)
        return 2
    sys.argv = ["bench.py"] + list(argv or [])
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0
