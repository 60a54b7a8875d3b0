"""Numba rows of MXFP4 (quants/mxfp4.py has the format and the NumPy codec; same bytes and
floats): quantize_row_mxfp4 = ggml's quantize_row_mxfp4_ref (ggml_quantize_chunk and the
CPU's from_float alike), dequantize_row_mxfp4 = dequantize_row_mxfp4. nb.py dispatches here."""
from __future__ import annotations

import numba
import numpy as np

from .mxfp4 import KVALUES_MXFP4
from .nb_scalar import _bits_f32

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")

QK = 32
BS = 17
_TWO31 = np.float32(2.0 ** 31)


@_jit
def e8m0_half(e):
    """ggml_e8m0_to_fp32_half: byte e -> 2^(e - 128) as float32."""
    e = np.uint32(e)
    return _bits_f32(np.uint32(0x00200000 << e) if e < 2 else np.uint32((e - 1) << 23))


@_jit
def _exponent(src, b):
    amax = np.float32(0.0)
    for j in range(QK):
        v = abs(src[b + j])
        if amax < v:
            amax = v
    if not amax > 0:
        return 0
    # log2f: log2 in double rounded once to float; (uint8_t) of the float as compiled C does
    # it (cvttss2si, INT_MIN when out of range, low byte)
    v = np.floor(np.float32(np.log2(np.float64(amax)))) - np.float32(2.0) + np.float32(127.0)
    i = np.int64(v) if abs(v) < _TWO31 else np.int64(-2147483648)
    return i & 0xFF


@_jit
def _best_index(x, d):
    best = 0
    best_err = abs(np.float32(KVALUES_MXFP4[0]) * d - x)
    for i in range(1, 16):
        err = abs(np.float32(KVALUES_MXFP4[i]) * d - x)
        if err < best_err:
            best = i
            best_err = err
    return best


@_jit
def quantize_row_mxfp4(src, dst, n):
    for i in range(n // QK):
        b, o = i * QK, i * BS
        e = _exponent(src, b)
        d = e8m0_half(e)
        dst[o] = np.uint8(e)
        for j in range(16):
            dst[o + 1 + j] = np.uint8(_best_index(src[b + j], d)
                                      | (_best_index(src[b + 16 + j], d) << 4))


@_jit
def dequantize_row_mxfp4(src, dst, n):
    for i in range(n // QK):
        b, o = i * QK, i * BS
        d = e8m0_half(src[o])
        for j in range(16):
            q = src[o + 1 + j]
            dst[b + j] = np.float32(KVALUES_MXFP4[q & 0x0F]) * d
            dst[b + 16 + j] = np.float32(KVALUES_MXFP4[q >> 4]) * d
