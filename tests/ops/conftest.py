"""Fixtures of the op tests: `numba_backends`, Numba backends at 1, 2 and 3 threads (ggml's
ith/nth split at an odd count too), one set per test module; `ctx`, a no-alloc context for
the misuse tests. Shared helpers: _cases.py."""
from __future__ import annotations

import pytest


@pytest.fixture
def ctx():
    """A context for the misuse tests: tensors without data."""
    import pyggml as gg
    return gg.init(mem_size=4 << 20, no_alloc=True)


@pytest.fixture(scope="module")
def numba_backends():
    """{n_threads: NumbaBackend}; the worker pools are freed when the module ends."""
    pytest.importorskip("numba")
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    bes = {n: NumbaBackend(n) for n in (1, 2, 3)}
    yield bes
    for be in bes.values():
        be.free()
