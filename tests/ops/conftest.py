"""Fixtures of the op tests: `numba_backends`, Numba backends at 1, 2 and 3 threads (ggml's
ith/nth split at an odd count too), one set per test module."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def numba_backends():
    """{n_threads: NumbaBackend}; the worker pools are freed when the module ends."""
    pytest.importorskip("numba")
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    bes = {n: NumbaBackend(n) for n in (1, 2, 3)}
    yield bes
    for be in bes.values():
        be.free()
