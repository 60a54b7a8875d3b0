"""Shared fixtures: `ggml` (real ggml through ctypes, skips when libggml-python is absent), `rng`,
`simd_twin` (a script run again under another PYGGML_SIMD); a session warm-up of the Numba
kernels when the disk cache is cold."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

WARMUP_MIN_TESTS = 1000       # a big run (the suite, tests/ops) needs most kernels
WARMUP_MIN_SECONDS = 20.0     # estimated cold compile worth starting worker processes for


@pytest.fixture(scope="session", autouse=True)
def numba_warmup(request):
    """A cold Numba cache (fresh checkout, CI) would compile ~90 kernels one by one as tests
    reach them (about 2 minutes on one core): for a big run, compile them first in parallel
    processes (pyggml/backends/numba_cpu/warmup.py). PYGGML_TEST_WARMUP=0 turns it off."""
    if os.environ.get("PYGGML_TEST_WARMUP", "1") == "0" or \
            len(request.session.items) < WARMUP_MIN_TESTS:
        return
    from pyggml.backends.numba_cpu import warmup
    todo = warmup.cold(warmup.all_kernels())
    if sum(warmup.cost(k.key) for k in todo) >= WARMUP_MIN_SECONDS:
        warmup.warm(todo)


@pytest.fixture(scope="session")
def ggml():
    """The real ggml library (pyggml.testing.ggml_lib.lib()); the test skips without it."""
    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        pytest.skip("real ggml (libggml-python) is not available")
    return ggml_lib.lib()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


_TWIN_SCRIPT = r"""
import sys
sys.path.insert(0, %(folder)r)
from pyggml.backends.numba_cpu.kernels import simd
assert simd.HAVE_AVX2 == %(avx2)r and not simd.HAVE_AVX512, (simd.HAVE_AVX2, simd.HAVE_AVX512)
import %(module)s as T
bad = T.%(fn)s()
print("twin ok" if not bad else f"twin differs: {bad}")
sys.exit(1 if bad else 0)
"""


@pytest.fixture
def simd_twin(request):
    """twin(fn_name, mode, cache_dir=None): calls this test module's function `fn_name` (no
    arguments; it returns the list of mismatches) in a fresh interpreter with
    PYGGML_SIMD=mode (the SIMD width is fixed when the kernels compile, so each mode needs
    its own process) and asserts it found none. Its Numba cache: cache_dir, else pyggml's own
    (keyed by the mode)."""
    folder, module = str(request.path.parent), request.path.stem

    def twin(fn_name: str, mode: str, cache_dir=None) -> None:
        env = dict(os.environ, PYGGML_SIMD=mode)
        env.pop("NUMBA_CACHE_DIR", None)
        if cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = str(cache_dir)
        script = _TWIN_SCRIPT % dict(folder=folder, avx2=mode == "avx2", module=module, fn=fn_name)
        r = subprocess.run([sys.executable, "-c", script], env=env,
                           capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0 and "twin ok" in r.stdout, (r.stdout[-3000:] + r.stderr[-3000:])
    return twin
