"""The reference MUL_MAT / OUT_PROD broadcast a's matrices over b's batch dims without copying
them (ops/matmul.py _bcast_matmul): each of b's matrices (i3, i2) meets a's
(i3 // r3, i2 // r2), as ggml, and every product is the same BLAS call as one matrix at a time,
so the result is bit for bit the per-matrix loop."""
from __future__ import annotations

import numpy as np
import pytest

from pyggml.ops.matmul import _bcast_matmul


@pytest.mark.parametrize("ys, r, n", [((1, 1), (1, 1), 1), ((3, 8), (1, 4), 1),
                                      ((2, 3), (3, 2), 5), ((1, 2), (2, 1), 3)])
def test_bcast_matmul_is_the_per_matrix_loop(ys, r, n):
    rng = np.random.default_rng(0)
    k, m = 33, 17
    y = rng.uniform(-1, 1, (*ys, m, k)).swapaxes(-1, -2)        # a^T as MUL_MAT passes it
    x = rng.uniform(-1, 1, (ys[0] * r[0], ys[1] * r[1], n, k))
    got = _bcast_matmul(x, y)
    assert got.shape == (x.shape[0], x.shape[1], n, m)
    for i3 in range(x.shape[0]):
        for i2 in range(x.shape[1]):
            want = np.matmul(x[i3, i2], y[i3 // r[0], i2 // r[1]])
            assert got[i3, i2].tobytes() == want.tobytes(), (i3, i2)
