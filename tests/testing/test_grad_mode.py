"""`pyggml test-backend-ops grad`: ggml's grad-enabled cases (those whose graph marks
parameters) checked against finite differences, as ggml's eval_grad. The full run is the CLI;
here each op with a gradient rule runs its smallest grad case on both backends."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pyggml.context import init
from pyggml.ops.registry import OPS
from pyggml.tensor import TENSOR_FLAG_PARAM
from pyggml.tensor import nelements
from pyggml.testing.grad import run_grad
from pyggml.testing.grad import settings
from pyggml.testing.harness import op_cases
from pyggml.types import GGMLType


def _grad_cases():
    """Per op, its grad case with the fewest parameter elements (F32 parameters, within nmax)."""
    out = []
    for name in sorted(OPS):
        op = OPS[name]
        if op.cases is None:
            continue
        best = None
        for c in op_cases(op):
            if "slow" in c.tags:
                continue
            ctx = init(mem_size=64 << 20, no_alloc=True)
            try:
                c.build(ctx)
            except Exception:
                continue
            ps = [t for t in ctx.tensors if t.flags & TENSOR_FLAG_PARAM]
            if not ps or any(t.type != GGMLType.F32 for t in ps):
                continue
            n = sum(nelements(t) for t in ps) * (2 if settings(c)["precise"] else 1)
            if n <= settings(c)["nmax"] and (best is None or n < best[0]):
                best = (n, c)
        if best is not None:
            out.append(best[1])
    return out


CASES = _grad_cases()


@pytest.fixture(scope="module")
def numba_backend():
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    be = NumbaBackend(1)
    yield be
    be.free()


def test_grad_cases_cover_ggmls_list():
    ops = {c.op for c in CASES}
    for name in ("ADD", "ABS", "SILU", "SQR", "SQRT", "LOG", "SIN", "COS", "SCALE", "SUM",
                 "SUM_ROWS", "MEAN", "REPEAT", "ACC", "SET", "CPY", "CONT", "DUP", "GET_ROWS",
                 "MUL_MAT", "RMS_NORM", "SOFT_MAX", "DIAG_MASK_INF", "ROPE", "SWIGLU",
                 "CROSS_ENTROPY_LOSS"):
        assert name in ops, name


@pytest.mark.parametrize("case", CASES, ids=str)
def test_grad_case_reference(case):
    from pyggml.backends.reference.backend import ReferenceBackend
    r = run_grad(case, ReferenceBackend(), seed=0)
    # an op with a rule passes; one without (GEGLU_ERF, the optimizer steps) is NOT SUPPORTED
    want = "OK" if OPS[case.op].grad is not None else "NOT SUPPORTED"
    assert r.status == want, f"{r.status}: {r.message}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_grad_case_numba(case, numba_backend):
    r = run_grad(case, numba_backend, seed=0)
    want = "OK" if OPS[case.op].grad is not None else "NOT SUPPORTED"
    assert r.status == want or (r.status == "NOT SUPPORTED" and "numba" in r.message), \
        f"{r.status}: {r.message}"


def test_op_without_rule_is_not_supported_with_its_name():
    """GEGLU_ERF marks its parameters as ggml's case does, but has no rule: NOT SUPPORTED,
    named."""
    from pyggml.backends.reference.backend import ReferenceBackend
    case = next(c for c in op_cases(OPS["GEGLU_ERF"]) if "split" in str(c) and
                c.vars["type"] == GGMLType.F32)
    r = run_grad(case, ReferenceBackend())
    assert r.status == "NOT SUPPORTED" and "GEGLU_ERF has no gradient rule" in r.message


def test_cli_grad_mode_runs_and_reports():
    out = subprocess.run([sys.executable, "-m", "pyggml", "test-backend-ops", "grad", "-b",
                          "reference", "-o", "SQR,SILU_BACK,ABS"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SQR(type=f32,ne=[10,5,4,3]): OK" in out.stdout
    # eval_grad's reasons: no parameter names the op, F16 the output, nmax the skip
    assert "SILU_BACK(type=f32,ne=[64,5,4,3],eps=0.000001): not supported [SILU_BACK]" in out.stdout
    assert "ABS(type=f16,ne_a=[128,2,2,2],v=0): not supported [out->type != FP32]" in out.stdout
    assert "ABS(type=f32,ne_a=[128,2,2,2],v=1): skipping large tensors for speed" in out.stdout
