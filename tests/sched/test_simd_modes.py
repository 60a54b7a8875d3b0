"""PYGGML_SIMD: every fast path has a narrower twin, and the twin is tested here too.

On an AVX-512 machine `PYGGML_SIMD=avx2` makes the kernels compile the code an AVX2-only
machine runs (AVX2/FMA/F16C intrinsics, 8 float lanes); those kernels are checked against
the reference backend on a sample of every SIMD-using op's cases, in a child process (the
switch is read at import). The portable path (generic) is tests/ops/test_matmul.py's."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyggml.backends.numba_cpu.kernels import simd

# ops whose numba kernels contain SIMD code (kernels/simd.py, fa_dots.py)
SIMD_OPS = {"MUL_MAT": 16, "MUL_MAT_ID": 4, "OUT_PROD": 4, "FLASH_ATTN_EXT": 16,
            "FLASH_ATTN_EXT_WITH_STATE": 8}

_TWIN = r"""
import sys
from pyggml.backends.numba_cpu.kernels import simd
assert simd.HAVE_AVX2 and not simd.HAVE_AVX512 and not simd.HAVE_VNNI and simd.VL == 8, \
    (simd.HAVE_AVX2, simd.HAVE_AVX512, simd.VL)
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.testing.harness import run_test
from pyggml.testing.sample import sample_cases
be, ref = NumbaBackend(2), ReferenceBackend()
bad = n = 0
for op, k in %r.items():
    for case in sample_cases(op, k):
        r = run_test(case, be, ref, seed=0)
        n += 1
        if not r.passed:
            bad += 1
            print(f"FAIL {case}: {r.status} {r.message} NMSE {r.err:.3e}", flush=True)
print(f"avx2 twin: {n - bad}/{n} passed")
sys.exit(1 if bad else 0)
"""


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
def test_avx2_twin_matches_reference():
    r = subprocess.run([sys.executable, "-c", _TWIN % SIMD_OPS], env=_env("avx2"),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout[-4000:] + r.stderr[-4000:])
    assert "avx2 twin:" in r.stdout
