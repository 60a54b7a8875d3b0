"""Numba versions of the codecs, for the CPU backend kernels (bit-exact with the NumPy ones).

Scalars: f16_to_f32 / f32_to_f16 (LLVM half conversions: F16C instructions),
bf16_to_f32 / f32_to_bf16. Rows: dequantize_row_<fmt>(src_u8, dst_f32, n) and
quantize_row_<fmt>(src_f32, dst_u8, n) over contiguous 1-D arrays (numba.carray views
are fine), plus dequantize_row / quantize_row dispatching on the ggml type id and
returning 0, or ERR_UNSUPPORTED for a type without a row codec. Formats: q4_0, q4_1,
q5_0, q5_1, q8_0, q8_1, f16, bf16, f32, mxfp4 (mxfp4_nb), and through kq_nb the K-quants
and IQ4.
quantize_row_q8_0_cpu / _q8_1_cpu are ggml-cpu's SIMD activation quantizers (they differ from the reference in ties).

Float math is float32 throughout (constants are np.float32: a Python float literal
would promote to float64 and change roundings) and never contracted to FMA, as in
ggml's reference C. Pass C-contiguous, writable arrays and an int n so each function
compiles once.
"""
from __future__ import annotations

import numba
import numpy as np

from ..types import GGMLType
from .nb_scalar import _bits_f32  # noqa: F401
from .nb_scalar import _f32_bits  # noqa: F401
from .nb_scalar import _f32_to_half_bits  # noqa: F401
from .nb_scalar import _half_bits_to_f32  # noqa: F401
from .nb_scalar import _load_f16  # noqa: F401
from .nb_scalar import _roundeven  # noqa: F401
from .nb_scalar import _roundf  # noqa: F401
from .nb_scalar import _store_f16  # noqa: F401
from .nb_scalar import bf16_to_f32  # noqa: F401
from .nb_scalar import f16_to_f32  # noqa: F401
from .nb_scalar import f32_to_bf16  # noqa: F401
from .nb_scalar import f32_to_f16  # noqa: F401

# error_model="numpy": float division by zero gives inf instead of a Python check.
_jit = numba.njit(nogil=True, cache=True, error_model="numpy")
# The body rows of several types share, inlined into each in Numba's IR (the caller's
# constants fold in: the machine code is that of a body written out per type). Only for a
# body called once per row: array arguments cost an NRT incref/decref per call.
_inline = numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")

ERR_UNSUPPORTED = 1

QK = 32
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_TWO31 = np.float32(2.0 ** 31)
_FLT_MAX = np.float32(np.finfo(np.float32).max)


@_jit
def _c_int8(v):
    """(int8_t)v as compiled C does it on x86: cvttss2si (INT_MIN on NaN/overflow), low byte."""
    i = np.int32(v) if abs(v) < _TWO31 else np.int32(-2147483648)
    return np.int64(np.int8(i))


@_jit
def _runtime(k, n):
    """k, as a value LLVM cannot fold (n >= k whenever a block is processed).

    A block loop with a constant trip count gets fully unrolled into scalar code (the
    SLP vectorizer gives up: src and dst might alias); with a runtime trip count the
    loop vectorizer takes it, behind one alias check. 2-4x faster dequantization.
    """
    return min(k, n)


@_jit
def _mul_add(x, d, m):
    """C's `x*d + m` (no FMA). When both terms are NaN, x86 returns the product's NaN;
    LLVM may commute the add, so that case is chosen explicitly."""
    p = x * d
    return p if p != p else p + m


@_jit
def _inverse(d):
    return _F1 / d if d != _F0 else _F0


# ---------------------------------------------------------------------------
# block scales, as the reference quantizers compute them

@_jit
def _absmax_signed(src, b):
    """Value of largest |x| in the block (first on ties, NaN skipped; 0.0 if none)."""
    amax = _F0
    mx = _F0
    for j in range(QK):
        v = src[b + j]
        if amax < abs(v):
            amax = abs(v)
            mx = v
    return mx


@_jit
def _absmax_c(src, b):
    """amax = MAX(amax, fabsf(v)) with C's MAX(a, b) = a > b ? a : b."""
    amax = _F0
    for j in range(QK):
        a = abs(src[b + j])
        amax = amax if amax > a else a
    return amax


@_jit
def _min_max(src, b):
    """min/max from FLT_MAX / -FLT_MAX with strict compares (NaN skipped, first of equals)."""
    mn = _FLT_MAX
    mx = -_FLT_MAX
    for j in range(QK):
        v = src[b + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


# ---------------------------------------------------------------------------
# Q4_0 / Q4_1

@_jit
def quantize_row_q4_0(src, dst, n):
    c = np.float32(8.5)
    for i in range(n // QK):
        b, o = i * QK, i * 18
        d = _absmax_signed(src, b) / np.float32(-8.0)
        idd = _inverse(d)
        _store_f16(dst, o, d)
        for j in range(16):
            q0 = min(15, _c_int8(src[b + j] * idd + c))
            q1 = min(15, _c_int8(src[b + j + 16] * idd + c))
            dst[o + 2 + j] = np.uint8((q0 & 0xFF) | ((q1 << 4) & 0xFF))


@_jit
def dequantize_row_q4_0(src, dst, n):
    h = _runtime(16, n)
    for i in range(n // QK):
        b, o = i * QK, i * 18 + 2
        d = _load_f16(src, o - 2)
        for j in range(h):
            dst[b + j] = np.float32(np.int32(src[o + j] & 0x0F) - 8) * d
        for j in range(h):
            dst[b + 16 + j] = np.float32(np.int32(src[o + j] >> 4) - 8) * d


@_jit
def quantize_row_q4_1(src, dst, n):
    for i in range(n // QK):
        b, o = i * QK, i * 20
        mn, mx = _min_max(src, b)
        d = (mx - mn) / np.float32(15.0)
        idd = _inverse(d)
        _store_f16(dst, o, d)
        _store_f16(dst, o + 2, mn)
        for j in range(16):
            q0 = min(15, _c_int8((src[b + j] - mn) * idd + _HALF))
            q1 = min(15, _c_int8((src[b + j + 16] - mn) * idd + _HALF))
            dst[o + 4 + j] = np.uint8((q0 & 0xFF) | ((q1 << 4) & 0xFF))


@_jit
def dequantize_row_q4_1(src, dst, n):
    h = _runtime(16, n)
    for i in range(n // QK):
        b, o = i * QK, i * 20 + 4
        d = _load_f16(src, o - 4)
        m = _load_f16(src, o - 2)
        for j in range(h):
            dst[b + j] = _mul_add(np.float32(src[o + j] & 0x0F), d, m)
        for j in range(h):
            dst[b + 16 + j] = _mul_add(np.float32(src[o + j] >> 4), d, m)


# ---------------------------------------------------------------------------
# Q5_0 / Q5_1: qh bit j = bit 4 of value j

@_jit
def _store_q5(dst, o, qs_off, q0, q1, j, qh):
    dst[o + qs_off + j] = np.uint8((q0 & 0x0F) | ((q1 & 0x0F) << 4))
    return qh | (((q0 >> 4) & 1) << j) | (((q1 >> 4) & 1) << (j + 16))


@_jit
def _store_u32(dst, o, v):
    for k in range(4):
        dst[o + k] = np.uint8((v >> (8 * k)) & 0xFF)


@_jit
def _load_u32(src, o):
    return (np.int64(src[o]) | (np.int64(src[o + 1]) << 8)
            | (np.int64(src[o + 2]) << 16) | (np.int64(src[o + 3]) << 24))


@_jit
def quantize_row_q5_0(src, dst, n):
    c = np.float32(16.5)
    for i in range(n // QK):
        b, o = i * QK, i * 22
        d = _absmax_signed(src, b) / np.float32(-16.0)
        idd = _inverse(d)
        _store_f16(dst, o, d)
        qh = np.int64(0)
        for j in range(16):
            q0 = min(31, _c_int8(src[b + j] * idd + c)) & 0xFF
            q1 = min(31, _c_int8(src[b + j + 16] * idd + c)) & 0xFF
            qh = _store_q5(dst, o, 6, q0, q1, j, qh)
        _store_u32(dst, o + 2, qh)


@_jit
def dequantize_row_q5_0(src, dst, n):
    h = _runtime(16, n)
    for i in range(n // QK):
        b, o = i * QK, i * 22 + 6
        d = _load_f16(src, o - 6)
        qh = _load_u32(src, o - 4)
        for j in range(h):
            x = np.int64(src[o + j] & 0x0F) | (((qh >> j) << 4) & 0x10)
            dst[b + j] = np.float32(x - 16) * d
        for j in range(h):
            x = np.int64(src[o + j] >> 4) | ((qh >> (j + 12)) & 0x10)
            dst[b + 16 + j] = np.float32(x - 16) * d


@_jit
def quantize_row_q5_1(src, dst, n):
    for i in range(n // QK):
        b, o = i * QK, i * 24
        mn, mx = _min_max(src, b)
        d = (mx - mn) / np.float32(31.0)
        idd = _inverse(d)
        _store_f16(dst, o, d)
        _store_f16(dst, o + 2, mn)
        qh = np.int64(0)
        for j in range(16):
            q0 = _c_int8((src[b + j] - mn) * idd + _HALF) & 0xFF
            q1 = _c_int8((src[b + j + 16] - mn) * idd + _HALF) & 0xFF
            qh = _store_q5(dst, o, 8, q0, q1, j, qh)
        _store_u32(dst, o + 4, qh)


@_jit
def dequantize_row_q5_1(src, dst, n):
    h = _runtime(16, n)
    for i in range(n // QK):
        b, o = i * QK, i * 24 + 8
        d = _load_f16(src, o - 8)
        m = _load_f16(src, o - 6)
        qh = _load_u32(src, o - 4)
        for j in range(h):
            x = np.int64(src[o + j] & 0x0F) | (((qh >> j) << 4) & 0x10)
            dst[b + j] = _mul_add(np.float32(x), d, m)
        for j in range(h):
            x = np.int64(src[o + j] >> 4) | ((qh >> (j + 12)) & 0x10)
            dst[b + 16 + j] = _mul_add(np.float32(x), d, m)


# ---------------------------------------------------------------------------
# Q8_0 / Q8_1

@_inline
def _quantize_q8(src, dst, n, qs_off, block_size):
    """Q8_0 (qs at 2, 34-byte blocks) or Q8_1 (qs at 4, 36 bytes, s = d * sum(q) at 2)."""
    for i in range(n // QK):
        b, o = i * QK, i * block_size
        d = _absmax_c(src, b) / np.float32(127.0)
        idd = _inverse(d)
        _store_f16(dst, o, d)
        s = 0
        for j in range(QK):
            q = _c_int8(_roundf(src[b + j] * idd))
            dst[o + qs_off + j] = np.uint8(q & 0xFF)
            s += q
        if qs_off == 4:
            _store_f16(dst, o + 2, np.float32(s) * d)


@_inline
def _dequantize_q8(src, dst, n, qs_off, block_size):
    qk = _runtime(QK, n)
    for i in range(n // QK):
        b, o = i * QK, i * block_size + qs_off
        d = _load_f16(src, o - qs_off)
        for j in range(qk):
            dst[b + j] = np.float32(np.int8(src[o + j])) * d


@_jit
def quantize_row_q8_0(src, dst, n):
    _quantize_q8(src, dst, n, 2, 34)


@_jit
def dequantize_row_q8_0(src, dst, n):
    _dequantize_q8(src, dst, n, 2, 34)


@_jit
def quantize_row_q8_1(src, dst, n):
    _quantize_q8(src, dst, n, 4, 36)


@_jit
def dequantize_row_q8_1(src, dst, n):
    _dequantize_q8(src, dst, n, 4, 36)


# ---------------------------------------------------------------------------
# ggml-cpu's own Q8_0 / Q8_1 quantizers (the CPU traits' from_float, x86 AVX2 path)
#
# ggml_quantize_chunk uses the reference quantizers above. The CPU backend converts
# activations for mul_mat (vec_dot_type), Q for flash attention and cpy F32 -> Q8_0
# with SIMD versions that round differently: id = 127/amax (not 1/(amax/127)), round
# half to EVEN, NaN -> -128 (saturating packs). (Scales: the same fp16 conversion as
# the reference, in libggml-python's build.) Use these to match real ggml's CPU results
# bit for bit.

@_jit
def _max_ps(a, b):
    """One lane of SSE/AVX max_ps(a, b): a > b ? a : b (b when either is NaN)."""
    return a if a > b else b


@_jit
def _amax_lane(src, b, lane):
    """Lane `lane` of the 8-wide accumulator: max_ps over |x[lane + 8k]|, k = 0..3."""
    a = abs(src[b + lane])
    for k in range(1, 4):
        a = _max_ps(a, abs(src[b + 8 * k + lane]))
    return a


@_jit
def _amax_avx2(src, b):
    """max |x| of a block, reduced in the order of ggml's AVX2 code (matters for NaN)."""
    r0 = _max_ps(_amax_lane(src, b, 4), _amax_lane(src, b, 0))  # max(high half, low half)
    r1 = _max_ps(_amax_lane(src, b, 5), _amax_lane(src, b, 1))
    r2 = _max_ps(_amax_lane(src, b, 6), _amax_lane(src, b, 2))
    r3 = _max_ps(_amax_lane(src, b, 7), _amax_lane(src, b, 3))
    return _max_ps(_max_ps(r0, r2), _max_ps(r1, r3))  # movehl, then movehdup + max_ss


@_jit
def _cvtps_epi32(v):
    """_mm256_cvtps_epi32 on an integral value: INT_MIN on NaN/overflow."""
    return np.int64(v) if abs(v) < _TWO31 else np.int64(-2147483648)


@_jit
def _quantize_q8_cpu(src, dst, n, qs_off, block_size):
    """Q8_0 (qs at 2, 34-byte blocks) or Q8_1 (qs at 4, 36 bytes, s at 2) the AVX2 way."""
    for i in range(n // QK):
        b, o = i * QK, i * block_size
        amax = _amax_avx2(src, b)
        d = amax / np.float32(127.0)
        _store_f16(dst, o, d)
        idd = np.float32(127.0) / amax if amax != _F0 else _F0
        s = np.int64(0)
        for j in range(QK):
            q = _cvtps_epi32(_roundeven(src[b + j] * idd))
            s += q
            dst[o + qs_off + j] = np.uint8(max(-128, min(127, q)) & 0xFF)
        if qs_off == 4:
            s = ((s + 2147483648) & 0xFFFFFFFF) - 2147483648  # int32 lane sums wrap
            _store_f16(dst, o + 2, d * np.float32(s))


@_jit
def quantize_row_q8_0_cpu(src, dst, n):
    """As ggml-cpu's quantize_row_q8_0 (AVX2), the CPU backend's activation quantizer."""
    _quantize_q8_cpu(src, dst, n, 2, 34)


@_jit
def quantize_row_q8_1_cpu(src, dst, n):
    """As ggml-cpu's quantize_row_q8_1 (AVX2): s = d * (int32 sum of q before saturation)."""
    _quantize_q8_cpu(src, dst, n, 4, 36)


# ---------------------------------------------------------------------------
# element types

@_jit
def quantize_row_f16(src, dst, n):
    h = dst[: 2 * n].view(np.uint16)
    for i in range(n):
        h[i] = f32_to_f16(src[i])


@_jit
def dequantize_row_f16(src, dst, n):
    h = src[: 2 * n].view(np.uint16)
    for i in range(n):
        dst[i] = f16_to_f32(h[i])


@_jit
def quantize_row_bf16(src, dst, n):
    h = dst[: 2 * n].view(np.uint16)
    for i in range(n):
        h[i] = f32_to_bf16(src[i])


@_jit
def dequantize_row_bf16(src, dst, n):
    h = src[: 2 * n].view(np.uint16)
    for i in range(n):
        dst[i] = bf16_to_f32(h[i])


@_jit
def quantize_row_f32(src, dst, n):
    dst[: 4 * n].view(np.float32)[:] = src[:n]


@_jit
def dequantize_row_f32(src, dst, n):
    dst[:n] = src[: 4 * n].view(np.float32)


# ---------------------------------------------------------------------------
# dispatch on the ggml type id (an if-chain: callable from other numba code); the K-quants
# and IQ4 rows live in kq_nb (which shares nb_scalar's helpers with this module)

from . import kq_nb as _kq  # noqa: E402,F401  (the generated dispatch calls these)
from .mxfp4_nb import dequantize_row_mxfp4  # noqa: E402,F401
from .mxfp4_nb import quantize_row_mxfp4  # noqa: E402,F401

# the row codecs in the order the dispatch tests them (most used first)
_ROW_TYPES = ("q4_0", "q8_0", "f16", "f32", "bf16", "q4_1", "q5_0", "q5_1", "q8_1", "mxfp4")


def _row_dispatch(verb: str, doc: str):
    """`{verb}_row(t, src, dst, n)`: an if-chain over _ROW_TYPES calling {verb}_row_<type>,
    else kq_nb's; returns 0, or kq_nb's ERR_UNSUPPORTED. Generated from the table and
    compiled under this file (so Numba caches it here, as if written out)."""
    lines = [f"def {verb}_row(t, src, dst, n):"]
    for i, name in enumerate(_ROW_TYPES):
        cpu = "_cpu" if verb == "quantize" and name in ("q8_0", "q8_1") else ""
        lines += [f"    {'elif' if i else 'if'} t == {int(GGMLType[name.upper()])}:",
                  f"        {verb}_row_{name}{cpu}(src, dst, n)"]
    lines += ["    else:", f"        return _kq.{verb}_row(t, src, dst, n)", "    return 0"]
    ns = {}
    exec(compile("\n".join(lines) + "\n", __file__, "exec"), globals(), ns)
    fn = ns[f"{verb}_row"]
    fn.__doc__ = doc
    return _jit(fn)


dequantize_row = _row_dispatch(
    "dequantize", "Row of n values of type t (raw bytes in src) -> float32 dst. 0, or ERR_UNSUPPORTED.")
quantize_row = _row_dispatch(
    "quantize", "float32 row of n values -> raw bytes of type t in dst, as ggml-cpu's from_float "
    "(Q8_0/Q8_1: its SIMD quantizers). 0, or ERR_UNSUPPORTED.")
