"""`pyggml test-backend-ops grad`: ggml's grad-enabled cases (those whose graph marks
parameters) checked against finite differences, as ggml's eval_grad. The full run is the CLI;
here each op with a gradient rule runs its smallest grad case on both backends."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pyggml.ops.registry import OPS
from pyggml.tensor import nelements
from pyggml.testing.grad import grad_params
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
            ps = grad_params(c)
            if ps is None:
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


def test_mul_mat_eps_one_is_rounding_not_the_rule(monkeypatch):
    """MUL_MAT's grad cases use eps 1 (ggml: 0.1); see testing/grad.py's docstring. At ggml's
    eps the one failing draw is a near-zero gradient under float32 rounding of the loss: every
    element's absolute error is within that rounding, the rule is right; at eps 1 it passes."""
    from dataclasses import replace

    import numpy as np

    import pyggml.testing.grad as G
    from pyggml.backends.reference.backend import ReferenceBackend
    name = ("MUL_MAT(type_a=f32,type_b=f32,m=1057,n=1,k=128,bs=[1,3],nr=[1,1],per=[0,2,1,3],"
            "k_v=0,o=1,src_overlap=0)")
    case = next(c for c in op_cases(OPS["MUL_MAT"]) if str(c) == name)
    assert settings(case)["eps"] == 1.0 and settings(case)["nmax"] == 20000
    seen = []
    orig = G.mean_abs_asymm

    def spy(gn, ga, expect):
        seen.append((np.asarray(gn, np.float64), np.asarray(ga, np.float64)))
        return orig(gn, ga, expect)

    monkeypatch.setattr(G, "mean_abs_asymm", spy)
    r = run_grad(case, ReferenceBackend(), seed=0)
    assert r.status == "OK", r.message
    r01 = run_grad(replace(case, grad={**case.grad, "eps": 0.1}), ReferenceBackend(), seed=0)
    gn, ga = seen[-1]
    # the loss (a sum of ~3000 outputs) is a few hundred: ulp ~3e-5, over 2 eps = 0.2
    assert np.abs(gn - ga).max() < 2e-4
    if r01.status == "FAIL":          # the failure is one element whose gradient is ~0
        terms = np.abs((gn - ga) / (gn + ga))
        worst = int(np.argmax(terms))
        assert abs(ga[worst]) < 1e-2 < np.median(np.abs(ga))
        assert np.delete(terms, worst).mean() < G.settings(case)["max_maa"]


def test_cpy_grad_at_ggmls_inputs_fails_by_the_losss_float32_rounding(monkeypatch):
    """ggml's own grad mode FAILs most f32 CPY cases (e.g. this one, MAA 4.9e-4, printed under
    the name SUM: eval_grad renames out to the sum it adds; the OK line above it is only the
    case's header). The gradient is exactly 1; over ggml's inputs, [-150, 150], the loss is a
    sum in the thousands, every loss value is rounded to float32 by up to ulp(loss)/2, and the
    central difference (f(x+eps) - f(x-eps)) / 0.2 carries that rounding: each numeric
    gradient is bit for bit the rounded exact sums' difference. So pyggml's CPY cases check
    the derivative on [-1, 1] in grad mode (as EXPM1's), where the same case passes."""
    from dataclasses import replace

    import numpy as np

    import pyggml.testing.grad as G
    from pyggml import data
    from pyggml.backends.reference.backend import ReferenceBackend
    name = ("CPY(type_src=f32,type_dst=f32,ne_src=[256,4,1,1],permute_src=[0,0,0,0],"
            "permute_dst=[0,0,0,0],_src_transpose=1)")
    case = next(c for c in op_cases(OPS["CPY"]) if str(c) == name)
    seen = {}
    orig = G._numeric

    def spy(backend, gf, out, t, eps, precise):
        seen["x"] = data.read(t).reshape(-1).astype(np.float32)
        seen["gn"] = orig(backend, gf, out, t, eps, precise)
        return seen["gn"]

    monkeypatch.setattr(G, "_numeric", spy)
    r = run_grad(replace(case, grad=None), ReferenceBackend(), seed=0)     # ggml's inputs
    assert r.status == "FAIL" and 1e-4 < r.err < 1e-2, (r.status, r.message)
    x, f32 = seen["x"], np.float32
    e = f32(settings(case)["eps"])
    s = x.astype(np.float64).sum()
    fu = (s - x + (x + e).astype(np.float64)).astype(np.float32)
    fd = (s - x + (x - e).astype(np.float64)).astype(np.float32)
    assert np.abs(s) > 1024          # ulp(loss) >= 1.2e-4: the measure cannot reach 1e-4
    np.testing.assert_array_equal(seen["gn"], (fu - fd) / (f32(2) * e))
    r = run_grad(case, ReferenceBackend(), seed=0)
    assert r.status == "OK" and r.err < 1e-5, (r.status, r.message)


def test_finite_differences_run_on_one_thread_only_when_the_loss_is_the_same():
    """The perturbed forward graphs run on one thread when that computes the loss bit for bit
    as the backend's own thread count does; a backend whose one-thread loss differs keeps its
    threads; the thread count is restored either way."""
    from pyggml import data
    from pyggml.backends.reference.backend import ReferenceBackend

    class Threaded(ReferenceBackend):
        """The reference with a thread count; on one thread its last node is off by 1 when
        asked to differ."""

        def __init__(self, one_thread_differs):
            self.n_threads, self.differs = 2, one_thread_differs
            self.computes = {1: 0, 2: 0}

        def set_n_threads(self, n):
            self.n_threads = n

        def graph_compute(self, gf, eval_cb=None):
            super().graph_compute(gf, eval_cb)
            self.computes[self.n_threads] += 1
            if self.differs and self.n_threads == 1:
                last = gf.nodes[-1]
                data.write(last, data.read(last) + 1.0)

    case = next(c for c in CASES if c.op == "SQR")
    n = 2 * nelements(next(t for t in grad_params(case)))
    same, differs = Threaded(False), Threaded(True)
    for be in (same, differs):
        assert run_grad(case, be, seed=0).status == "OK"
        assert be.n_threads == 2
    assert same.computes[1] == 1 + n          # the check, then every perturbation
    assert differs.computes[1] == 1 and differs.computes[2] >= n


