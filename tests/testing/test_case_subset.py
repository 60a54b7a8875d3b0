"""A fast, deterministic subset of `pyggml test-backend-ops` inside pytest.

For every registered op, up to SAMPLE cases are drawn by a seeded RNG (seeded by the op's
name, so the choice is stable and independent of other ops) among its cases not tagged slow,
from the smaller half by bytes touched. Each runs on the numba backend (2 threads) against
the reference backend with ggml's rules (harness.run_test); a case whose op has no numba
kernel for it is NOT SUPPORTED and passes. The full grid is `pyggml test-backend-ops`.
"""
from __future__ import annotations

import pytest

from pyggml.ops.registry import OPS
from pyggml.testing.harness import op_cases
from pyggml.testing.harness import run_test
from pyggml.testing.sample import sample_cases

SAMPLE = 3


CASES = [c for name in sorted(OPS) for c in sample_cases(name, SAMPLE)]


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
