"""Check that the reference backend's MUL_MAT memo (backends/reference/memo.py) changes no bit:
for every MUL_MAT grad-mode case (or those matching -p REGEX), move sampled elements of each
parameter as grad mode does and compare the loss bytes of a memo backend with a backend that
recomputes everything. Prints one line per case and DIFF lines; exit status 1 on any DIFF.

    PYTHONPATH=. python tools/check_ref_memo.py [-p REGEX] [-n SAMPLES]
"""
from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from pyggml import data
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.context import init
from pyggml.graph import CGraph
from pyggml.ops.reduce import sum as sum_
from pyggml.ops.registry import OPS
from pyggml.tensor import TENSOR_FLAG_PARAM
from pyggml.tensor import is_scalar
from pyggml.testing.grad import grad_params
from pyggml.testing.grad import settings
from pyggml.testing.harness import alloc_guarded
from pyggml.testing.harness import fill_leafs
from pyggml.testing.harness import op_cases


def check_case(case, n_samples: int, seed: int = 0) -> int:
    """Number of perturbed graphs whose loss differs between memo and full recomputation."""
    ctx = init(mem_size=64 << 20, no_alloc=True)
    out = case.build(ctx)
    params = [t for t in ctx.tensors if t.flags & TENSOR_FLAG_PARAM]
    if not is_scalar(out):
        out = sum_(ctx, out)
    gf = CGraph(2048)
    gf.expand(out)
    alloc_guarded(gf)
    fill_leafs(gf, case, seed)
    memo, full = ReferenceBackend(), ReferenceBackend(memo=False)
    eps = np.float32(settings(case)["eps"])
    rng = np.random.default_rng(seed)
    bad = 0
    memo.graph_compute(gf)
    for t in params:
        x = data.strided(t).reshape(-1)
        n = x.size
        idx = sorted({0, n - 1, min(1, n - 1)} | set(rng.integers(0, n, size=n_samples).tolist()))
        with memo.only_writing(t):                  # as grad mode's finite differences
            for i in idx:
                x0 = x[i]
                for v in (x0 + eps, x0 - eps):
                    x[i] = v
                    memo.graph_compute(gf)
                    got = data.tensor_get(out)
                    full.graph_compute(gf)
                    bad += got != data.tensor_get(out)
                x[i] = x0
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", default=None, help="regex on the case's text")
    ap.add_argument("-n", type=int, default=8, help="random elements per parameter (plus ends)")
    a = ap.parse_args(argv)
    total = bad = 0
    for c in op_cases(OPS["MUL_MAT"]):        # with test_mul_mat_hadamard's cases
        if a.p and not re.search(a.p, str(c)):
            continue
        if grad_params(c) is None:
            continue
        b = check_case(c, a.n)
        total += 1
        bad += bool(b)
        print(f"{'DIFF' if b else 'same'} {b} {c}", flush=True)
    print(f"{total} cases, {bad} with a differing loss")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
