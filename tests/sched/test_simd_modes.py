"""PYGGML_SIMD: every fast path has a narrower twin, and the twin is tested here too.

On an AVX-512 machine `PYGGML_SIMD=avx2` makes the kernels compile the code an AVX2-only
machine runs (AVX2/FMA/F16C intrinsics, 8 float lanes, and everything else compiled for an
AVX2 CPU: test_avx2_mode_targets_an_avx2_cpu); those kernels are checked against
the reference backend on a sample of every SIMD-using op's cases, in a child process (the
switch is read at import; the session runs it with the other avx2 twins in one background
child: tests/conftest.py). The sample: twin_cases(). The portable path (generic) is
tests/ops/test_matmul.py's."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.kernels import simd

_TARGET = """
import numba
import numpy as np
import pyggml
from numba.core.registry import cpu_target
from pyggml.backends.numba_cpu.kernels import simd

@numba.njit
def scale_sum(a):
    s = 0.0
    for i in range(a.size):
        s += a[i] * 2.0
    return s

cg = cpu_target.target_context.codegen()
scale_sum(np.ones(64, np.float32))
asm = scale_sum.inspect_asm(scale_sum.signatures[0])
print(simd.HAVE_AVX2, simd.HAVE_AVX512, simd.VL, cg._get_host_cpu_name(),
      "avx512" in cg._tm_features, "zmm" in asm, "ymm" in asm)
"""


def test_avx2_mode_targets_an_avx2_cpu(tmp_path):
    """PYGGML_SIMD=avx2 compiles for an AVX2 CPU: LLVM's own vector code (here a plain
    vectorizable loop) uses ymm registers and never zmm, on any host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYGGML_SIMD="avx2", PYGGML_CACHE_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", _TARGET], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["True", "False", "8", "haswell", "False", "False", "True"]


def twin_cases() -> list:
    """The cases the avx2 twin runs: the kernels whose code differs under PYGGML_SIMD=avx2 are
    MUL_MAT (simd.py's float and quantized row dots for every weight type, kq_dots.py's K-quant
    and mxfp4_dot.py's dots, the GEMM micro-kernel) and FLASH_ATTN_EXT (fa_dots.py, fa_simd.py's
    attention micro-kernels). MUL_MAT_ID runs the same compiled row dots as MUL_MAT, OUT_PROD
    has no explicit SIMD, FLASH_ATTN_EXT_WITH_STATE shares FLASH_ATTN_EXT's compiled fa_body:
    their kernels would only compile again. So one MUL_MAT case of each (weight type,
    activation type) on the row-dot path and of GEMM_TYPES on the GEMM path, and one
    FLASH_ATTN_EXT case of each (K type, V type, precision: the default one takes the integer
    dots of quantized K): the smallest of those long enough for the
    vector loops' main bodies (rows of >= 256 values; >= 64 keys, >= 4 queries), else the
    smallest."""
    from pyggml.backends.numba_cpu.kernels.matmul import GEMM_MIN_N
    from pyggml.ops.registry import OPS
    from pyggml.testing.harness import op_cases

    def mm(v):
        size = v["m"] * v["n"] * v["k"] * int(np.prod(v["bs"])) * int(np.prod(v["nr"]))
        return (v["type_a"], v["type_b"], is_gemm(v)), (v["k"] < 256, False, size)

    def fa(v):
        size = (v["hsk"] + v["hsv"]) * v["kv"] * v["nb"] * v["nh"] * int(np.prod(v["nr23"]))
        return (v["type_K"], v["type_V"], v["prec"]), (v["kv"] < 64, v["nb"] < 4, size)

    def is_gemm(v):
        return v["n"] >= GEMM_MIN_N and v["m"] >= 16 and v["k"] >= 16
    best = {}
    for op, rank in (("MUL_MAT", mm), ("FLASH_ATTN_EXT", fa)):
        for c in op_cases(OPS[op]):
            g, order = rank(c.vars)
            if "slow" in c.tags or (op == "MUL_MAT" and g[2] and g[0] not in GEMM_TYPES):
                continue
            if (op,) + g not in best or order < best[(op,) + g][0]:
                best[(op,) + g] = (order, c)
    return [c for _, c in best.values()]


GEMM_TYPES = (gg.TYPE_F32, gg.TYPE_Q4_0)      # GEMM: float panels, whatever the weight type


def _twin_mismatches():
    """twin_cases() against the reference on this process's SIMD mode (run by the simd_twin
    fixture)."""
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.reference.backend import ReferenceBackend
    from pyggml.testing.harness import run_test
    be, ref = NumbaBackend(2), ReferenceBackend()
    bad = []
    for case in twin_cases():
        r = run_test(case, be, ref, seed=0)
        if not r.passed:
            bad.append(f"{case}: {r.status} {r.message} NMSE {r.err:.3e}")
    be.free()
    return bad


def test_twin_cases_cover_every_type_and_path():
    """Every weight/activation type pair of MUL_MAT on the row dots, the GEMM path, and every
    K/V type pair of FLASH_ATTN_EXT (so a type added to the ops' cases joins the twin)."""
    from pyggml.backends.numba_cpu.kernels.matmul import GEMM_MIN_N
    from pyggml.ops.registry import OPS
    from pyggml.testing.harness import op_cases
    cases = twin_cases()
    mm = [c.vars for c in cases if c.op == "MUL_MAT"]
    fa = {(c.vars["type_K"], c.vars["type_V"], c.vars["prec"]) for c in cases
          if c.op == "FLASH_ATTN_EXT"}
    want_mm = {(c.vars["type_a"], c.vars["type_b"]) for c in op_cases(OPS["MUL_MAT"])
               if "slow" not in c.tags}
    assert {(v["type_a"], v["type_b"]) for v in mm if v["n"] < GEMM_MIN_N} == want_mm
    assert {v["type_a"] for v in mm if v["n"] >= GEMM_MIN_N} == set(GEMM_TYPES)
    want_fa = {(c.vars["type_K"], c.vars["type_V"], c.vars["prec"])
               for c in op_cases(OPS["FLASH_ATTN_EXT"]) if "slow" not in c.tags}
    assert fa == want_fa and (gg.TYPE_Q4_0, gg.TYPE_Q4_0, "def") in fa
    assert len({str(c) for c in cases}) == len(cases) == len(mm) + len(fa)


def _env(mode):
    env = dict(os.environ, PYGGML_SIMD=mode)
    env.pop("NUMBA_CACHE_DIR", None)     # the default cache directory is keyed by the mode
    return env


def test_unknown_mode_is_refused():
    r = subprocess.run([sys.executable, "-c", "import pyggml.backends.numba_cpu.kernels.simd"],
                       env=_env("avx9000"), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "PYGGML_SIMD='avx9000'" in r.stderr


def test_mode_is_part_of_the_cache_key(monkeypatch):
    from pyggml import _numba_cache as nc
    monkeypatch.delenv("PYGGML_SIMD", raising=False)
    auto = nc.source_key()
    monkeypatch.setenv("PYGGML_SIMD", "avx2")
    assert nc.source_key() != auto


@pytest.mark.skipif(not simd.HAVE_AVX512,
                    reason="no AVX-512 here: the default kernels already are the AVX2 ones")
@pytest.mark.twin("_twin_mismatches", "avx2")
def test_avx2_twin_matches_reference(simd_twin):
    simd_twin("_twin_mismatches", "avx2")


def _differs_on_purpose():
    """A twin check that always finds a mismatch."""
    return [("MUL_MAT", "on purpose")]


def _raises_on_purpose():
    return 1 // 0


@pytest.mark.skipif(not simd.HAVE_AVX2, reason="no AVX2 here: the avx2 mode cannot run")
@pytest.mark.twin("_differs_on_purpose", "avx2")
@pytest.mark.twin("_raises_on_purpose", "avx2")
def test_a_twin_check_that_differs_or_raises_fails_its_test(simd_twin):
    """The twin fixture fails its test on a mismatch and on an error in the child (both run in
    the session's shared avx2 child, as the real twins do)."""
    with pytest.raises(AssertionError, match=r"_differs_on_purpose differs: \[\"\('MUL_MAT'"):
        simd_twin("_differs_on_purpose", "avx2")
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        simd_twin("_raises_on_purpose", "avx2")


def test_a_twin_call_needs_its_marker(simd_twin, simd_twins):
    """An undeclared check fails its test at once, starting no child of its own."""
    n = len(simd_twins.runs)
    with pytest.raises(pytest.fail.Exception, match=r"mark the test @pytest.mark.twin"):
        simd_twin("_differs_on_purpose", "avx2")
    assert len(simd_twins.runs) == n


class _Item:
    nodeid, fixturenames = "t.py::test", ("simd_twin",)

    def __init__(self, *marks):
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name):
        return [m for m in self.marks if m.name == name]


def test_a_malformed_twin_marker_is_a_usage_error(request):
    top = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py")
    _twin_marks, = [m._twin_marks for m in request.config.pluginmanager.get_plugins()
                    if getattr(m, "__file__", None) == top]     # tests/conftest.py
    assert _twin_marks(_Item(pytest.mark.twin("f", "avx2"), pytest.mark.twin("g", "generic"))) \
        == [("avx2", "f"), ("generic", "g")]
    for bad in (pytest.mark.twin("f"), pytest.mark.twin("f", 2), pytest.mark.twin("f", mode="avx2")):
        with pytest.raises(pytest.UsageError, match=r"t.py::test: write @pytest.mark.twin"):
            _twin_marks(_Item(bad))
    item = _Item(pytest.mark.twin("f", "avx2"))
    item.fixturenames = ()
    with pytest.raises(pytest.UsageError, match="simd_twin fixture"):
        _twin_marks(item)
