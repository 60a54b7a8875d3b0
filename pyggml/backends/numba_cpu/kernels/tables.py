"""Values the CPU kernels freeze when they compile, owned here so that no kernel reads an op
module's internals (ggml keeps the same tables in ggml-cpu.c, not ggml.c).

GELU_F16 / GELU_QUICK_F16: ggml_table_gelu_f16 / ggml_table_gelu_quick_f16 as float32,
indexed by F16 bits: ggml-cpu fills them at init with ggml_gelu_f32 / ggml_gelu_quick_f32 of
every F16 value, rounded to F16. The ops' reference (pyggml/ops/unary.py, the spec) builds its
own; tests compare the two.
"""
from __future__ import annotations

import numpy as np

_ONE, _HALF = np.float32(1.0), np.float32(0.5)
_GELU_COEF_A = np.float32(0.044715)
_GELU_QUICK_COEF = np.float32(-1.702)
_SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)


def _f16_values() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def _as_f16_table(y: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(y.astype(np.float16).astype(np.float32))


def _gelu_table() -> np.ndarray:
    x = _f16_values()
    with np.errstate(all="ignore"):
        # glibc's tanhf is correctly rounded in practice: float64 then float32 reproduces it
        t = np.tanh(((_SQRT_2_OVER_PI * x) * (_ONE + (_GELU_COEF_A * x) * x)).astype(np.float64))
        return _as_f16_table((_HALF * x) * (_ONE + t.astype(np.float32)))


def _gelu_quick_table() -> np.ndarray:
    x = _f16_values()
    with np.errstate(all="ignore"):
        e = np.exp((_GELU_QUICK_COEF * x).astype(np.float64)).astype(np.float32)
        return _as_f16_table(x * (_ONE / (_ONE + e)))


GELU_F16 = _gelu_table()
GELU_QUICK_F16 = _gelu_quick_table()
