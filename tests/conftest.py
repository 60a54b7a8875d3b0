"""Shared fixtures: `ggml` (real ggml through ctypes, skips when libggml-python is absent), `rng`."""
from __future__ import annotations

import numpy as np
import pytest


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
