"""A fast, deterministic subset of `pyggml test-backend-ops` inside pytest.

For every registered op, up to SAMPLE cases are drawn by a seeded RNG (seeded by the op's
name, so the choice is stable and independent of other ops) among its cases not tagged slow,
from the smaller half by bytes touched. Each runs on the numba backend (2 threads) against
the reference backend with ggml's rules (harness.run_test); a case whose op has no numba
kernel for it is NOT SUPPORTED and passes, and the ops whose every case tests/ops/ already
runs this way are left to it. The full grid is `pyggml test-backend-ops`.
"""
from __future__ import annotations

import pytest

from pyggml.ops.registry import OPS
from pyggml.testing.harness import op_cases
from pyggml.testing.harness import run_test
from pyggml.testing.sample import sample_cases

SAMPLE = 3
# ops whose every non-slow case tests/ops/ already runs on numba against the reference at 1, 2
# and 3 threads (test_elementwise.py, test_norm_reduce.py; test_softmax_rope.py all but its
# ggml_wrong cases): a sample of them here would check the same thing again
_ELEMENTWISE = ("pyggml.ops.binary", "pyggml.ops.unary", "pyggml.ops.glu")
_NORM_REDUCE = ("SUM", "SUM_ROWS", "MEAN", "ARGMAX", "COUNT_EQUAL", "CUMSUM", "NORM", "RMS_NORM",
                "RMS_NORM_BACK", "GROUP_NORM", "L2_NORM")
_SOFTMAX_ROPE = ("SOFT_MAX", "SOFT_MAX_BACK", "DIAG_MASK_INF", "DIAG_MASK_ZERO", "ROPE",
                 "ROPE_BACK")


def checked_in_tests_ops(case) -> bool:
    op = OPS[case.op] if case.op in OPS else None
    return (op is not None and op.infer.__module__ in _ELEMENTWISE) or case.op in _NORM_REDUCE \
        or (case.op in _SOFTMAX_ROPE and "ggml_wrong" not in case.tags)


SAMPLED = [c for name in sorted(OPS) for c in sample_cases(name, SAMPLE)]
CASES = [c for c in SAMPLED if not checked_in_tests_ops(c)]


@pytest.fixture(scope="module")
def backends():
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.reference.backend import ReferenceBackend
    be = NumbaBackend(2)
    yield be, ReferenceBackend()
    be.free()


def test_every_op_is_sampled():
    sampled = {c.op for c in SAMPLED}
    missing = [n for n in sorted(OPS) if n not in sampled
               and any("slow" not in c.tags for c in op_cases(OPS[n]))]
    assert not missing
    assert len({str(c) for c in SAMPLED}) == len(SAMPLED)
    # the families tests/ops checks in full are left to it; the others stay here
    left = {c.op for c in SAMPLED if checked_in_tests_ops(c)}
    assert {"ADD", "SILU", "SWIGLU", "SUM", "RMS_NORM", "SOFT_MAX", "ROPE"} <= left
    assert not left & {"MUL_MAT", "GET_ROWS", "CPY", "FLASH_ATTN_EXT", "CONV_2D"}


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
