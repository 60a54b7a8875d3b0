"""PYGGML_SIMD: every fast path has a narrower twin, and the twin is tested here too.

On an AVX-512 machine `PYGGML_SIMD=avx2` makes the kernels compile the code an AVX2-only
machine runs (AVX2/FMA/F16C intrinsics, 8 float lanes); those kernels are checked against
the reference backend on a sample of every SIMD-using op's cases, in a child process (the
switch is read at import; the session runs it with the other avx2 twins in one background
child: tests/conftest.py). The portable path (generic) is tests/ops/test_matmul.py's."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyggml.backends.numba_cpu.kernels import simd

# ops whose numba kernels contain SIMD code (kernels/simd.py, fa_dots.py)
SIMD_OPS = {"MUL_MAT": 16, "MUL_MAT_ID": 4, "OUT_PROD": 4, "FLASH_ATTN_EXT": 16,
            "FLASH_ATTN_EXT_WITH_STATE": 8}


def _twin_mismatches():
    """A sample of every SIMD-using op's cases against the reference, on this process's SIMD
    mode (run by the simd_twin fixture)."""
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.reference.backend import ReferenceBackend
    from pyggml.testing.harness import run_test
    from pyggml.testing.sample import sample_cases
    be, ref = NumbaBackend(2), ReferenceBackend()
    bad, n = [], 0
    for op, k in SIMD_OPS.items():
        for case in sample_cases(op, k):
            r = run_test(case, be, ref, seed=0)
            n += 1
            if not r.passed:
                bad.append(f"{case}: {r.status} {r.message} NMSE {r.err:.3e}")
    be.free()
    return bad if n == sum(SIMD_OPS.values()) else bad + [f"ran {n} cases"]


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


def test_a_malformed_twin_marker_is_a_usage_error():
    from conftest import _twin_marks
    assert _twin_marks(_Item(pytest.mark.twin("f", "avx2"), pytest.mark.twin("g", "generic"))) \
        == [("avx2", "f"), ("generic", "g")]
    for bad in (pytest.mark.twin("f"), pytest.mark.twin("f", 2), pytest.mark.twin("f", mode="avx2")):
        with pytest.raises(pytest.UsageError, match=r"t.py::test: write @pytest.mark.twin"):
            _twin_marks(_Item(bad))
    item = _Item(pytest.mark.twin("f", "avx2"))
    item.fixturenames = ()
    with pytest.raises(pytest.UsageError, match="simd_twin fixture"):
        _twin_marks(item)
