"""A fast, deterministic subset of `pyggml test-backend-ops` inside pytest.

For every registered op, up to SAMPLE cases are drawn by a seeded RNG (seeded by the op's
name, so the choice is stable and independent of other ops) among its cases not tagged slow,
from the smaller half by bytes touched. Each runs on the numba backend (2 threads) against
the reference backend with ggml's rules (harness.run_test); a case whose op has no numba
kernel for it is NOT SUPPORTED and passes. The full grid is `pyggml test-backend-ops`.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from pyggml.ops.registry import OPS
from pyggml.tensor import nbytes
from pyggml.testing.harness import build_graph, op_cases, run_test

SAMPLE = 3
SEED = 20240611


def _cost(case) -> int:
    """Bytes of every tensor the case's graph holds (a proxy of its run time)."""
    try:
        _, _, gf = build_graph(case)
    except Exception:
        return 1 << 62              # a case that does not build: still sampled last, reported
    return sum(nbytes(t) for t in list(gf.leafs) + list(gf.nodes))


def sample_cases(name: str, k: int = SAMPLE, seed: int = SEED) -> list:
    """Up to k cases of op `name`: not slow, among the smaller half, chosen by a seeded RNG."""
    cases = [c for c in op_cases(OPS[name]) if "slow" not in c.tags]
    if not cases:
        return []
    if len(cases) > k:
        costs = sorted((_cost(c), i) for i, c in enumerate(cases))
        small = [i for _, i in costs[:max(k, (len(cases) + 1) // 2)]]
        rng = np.random.default_rng(seed ^ zlib.crc32(name.encode()))
        cases = [cases[i] for i in sorted(rng.choice(small, size=k, replace=False))]
    return cases


CASES = [c for name in sorted(OPS) for c in sample_cases(name)]


@pytest.fixture(scope="module")
def backends():
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.reference.backend import ReferenceBackend
    be = NumbaBackend(2)
    yield be, ReferenceBackend()
    be.free()


def test_every_op_is_sampled():
    sampled = {c.op for c in CASES}
    missing = [n for n in sorted(OPS) if n not in sampled
               and any("slow" not in c.tags for c in op_cases(OPS[n]))]
    assert not missing
    assert len({str(c) for c in CASES}) == len(CASES)


def test_sample_is_deterministic():
    for name in ("ADD", "MUL_MAT", "SOFT_MAX"):
        assert [str(c) for c in sample_cases(name)] == [str(c) for c in sample_cases(name)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_case(case, backends):
    be, ref = backends
    r = run_test(case, be, ref, seed=0)
    detail = f"{r.status}: {r.message}" + (f" (node {r.node!r})" if r.node else "")
    assert r.passed, (f"{case} on numba: {detail}; NMSE {r.err:.3e} (max {r.max_err:.1e}); "
                      f"repro: pyggml test-backend-ops -b numba -t 2 -o '{case}' --seed 0")
