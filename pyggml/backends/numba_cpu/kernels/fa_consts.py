"""Flash attention's shared constants and compile flags (every kernels/fa_*.py and
attention.py import them from here: fa_tiling imports fa_rows, so they cannot live there)."""
from __future__ import annotations

import numba
import numpy as np

NEG_INF = np.float32(-np.inf)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)

# No nnan/ninf in the fastmath set: -inf masks must work.
_FM = {"contract", "reassoc", "afn", "arcp"}
_jit = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy")
_jit_inline = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy",
                         inline="always")
