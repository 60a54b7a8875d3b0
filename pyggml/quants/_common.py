"""Helpers shared by the NumPy block codecs: C float semantics on whole arrays.

ggml's reference quantizers are scalar C on x86-64 (SSE, no FMA). To be bit-exact
the codecs redo each float32 operation in float32, and emulate the two C
conversions that matter: float -> int (cvttss2si: truncate; NaN and out-of-range
give INT_MIN) and roundf (half away from zero).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max
INT_MIN = np.int32(-2 ** 31)
_TWO31 = np.float32(2 ** 31)

# Codecs compute with inf/NaN exactly as C does; NumPy's warnings about it are noise.
quiet = np.errstate(all="ignore")


def as_u8(raw) -> np.ndarray:
    """bytes / bytearray / memoryview / ndarray -> flat uint8 view (no copy when possible)."""
    if isinstance(raw, np.ndarray):
        return raw.reshape(-1).view(np.uint8)
    return np.frombuffer(raw, dtype=np.uint8)


def as_f32(x) -> np.ndarray:
    """Any array-like -> flat contiguous float32."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1)


def c_int32(v: np.ndarray) -> np.ndarray:
    """(int)v as x86's cvttss2si does it: truncate toward zero, INT_MIN when NaN or |v| >= 2^31."""
    bad = ~(np.abs(v) < _TWO31)
    if not bad.any():
        return v.astype(np.int32)
    r = np.where(bad, F32(0), v).astype(np.int32)
    r[bad] = INT_MIN
    return r


def c_int8(v: np.ndarray) -> np.ndarray:
    """(int8_t)v: the low byte of the int32 conversion (what the compiled C stores)."""
    return c_int32(v).astype(np.int8)


def c_roundf(v: np.ndarray) -> np.ndarray:
    """roundf: half away from zero. x - trunc(x) is exact, so no double rounding."""
    t = np.trunc(v)
    frac = v - t
    return np.where(np.abs(frac) >= F32(0.5), t + np.sign(v), t).astype(np.float32)


def inverse(d: np.ndarray) -> np.ndarray:
    """C's `d ? 1.0f/d : 0.0f` (NaN is truthy, and NaN != 0 holds)."""
    out = np.zeros_like(d)
    with np.errstate(over="ignore"):  # 1/denormal overflows to inf in C too
        np.divide(F32(1), d, out=out, where=d != 0)
    return out


def pack_blocks(nb: int, type_size: int, *fields: np.ndarray) -> np.ndarray:
    """Concatenate per-block byte fields (each [nb, k] uint8) into ggml's block layout."""
    out = np.empty((nb, type_size), dtype=np.uint8)
    o = 0
    for f in fields:
        k = f.shape[1]
        out[:, o:o + k] = f
        o += k
    assert o == type_size
    return out.reshape(-1)


# fp16 as ggml converts it (ggml-impl.h; see f16.py for where NumPy differs)

_QUIET_F32 = np.uint32(0x00400000)


def fp32_to_fp16(x) -> np.ndarray:
    """float32 array -> uint16 array of ggml fp16 bits (round to nearest-even)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        h = np.where(nan, sign | np.uint16(0x7E00), h)
    return h


def fp16_to_fp32(h) -> np.ndarray:
    """uint16 array of fp16 bits -> float32 array (exact; signaling NaNs quieted as ggml)."""
    h = np.asarray(h, dtype=np.uint16)
    f = h.view(np.float16).astype(np.float32)
    nan = np.isnan(f)
    if nan.any():
        f = np.where(nan, (f.view(np.uint32) | _QUIET_F32).view(np.float32), f)
    return f


def f16_field(v: np.ndarray) -> np.ndarray:
    """Per-block float32 scales -> [nb, 2] bytes of their ggml fp16 encoding (little-endian)."""
    return fp32_to_fp16(v).astype("<u2").view(np.uint8).reshape(-1, 2)


def f16_at(raw_blocks: np.ndarray, off: int) -> np.ndarray:
    """Read an fp16 field at byte offset `off` of every block -> float32 [nb]."""
    h = raw_blocks[:, off].astype(np.uint16) | (raw_blocks[:, off + 1].astype(np.uint16) << 8)
    return fp16_to_fp32(h)


def absmax_signed(xb: np.ndarray) -> np.ndarray:
    """q4_0/q5_0's scale source: the value of largest |x| in each block.

    C keeps `max` on `amax < fabsf(v)` (strict, amax starting at 0): the first value
    wins on ties (-3 before 3 -> -3), NaN is never taken, and an all-zero block gives
    +0.0 (not a -0.0 taken from the data, which would flip the sign bit of d).
    """
    a = np.abs(xb)
    if np.isnan(a).any():
        a = np.where(np.isnan(a), F32(0), a)
    rows = np.arange(xb.shape[0])
    idx = a.argmax(axis=1)
    return np.where(a[rows, idx] > 0, xb[rows, idx], F32(0)).astype(np.float32)


def absmax_c(xb: np.ndarray) -> np.ndarray:
    """q8's `amax = MAX(amax, fabsf(v))` with MAX(a, b) = a > b ? a : b.

    A NaN resets the running value (amax > NaN is false -> NaN, then NaN > v is false
    -> v), so the result is the max over the values after the last NaN of the block,
    or NaN when the last value is NaN.
    """
    a = np.abs(xb)
    nan = np.isnan(a)
    if not nan.any():
        return a.max(axis=1, initial=F32(0))
    qk = xb.shape[1]
    last = np.where(nan.any(axis=1), qk - 1 - nan[:, ::-1].argmax(axis=1), -1)
    before = np.arange(qk)[None, :] <= last[:, None]
    r = np.where(before, F32(0), a).max(axis=1, initial=F32(0))
    return np.where(last == qk - 1, F32(np.nan), r).astype(np.float32)


def min_max_c(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q4_1/q5_1's `if (v < min) min = v; if (v > max) max = v;` from FLT_MAX / -FLT_MAX.

    Strict compares: NaN is skipped, the first of equal values is kept (0.0 before
    -0.0 matters: m is stored as fp16), and +-inf never replaces the start values.
    """
    rows = np.arange(xb.shape[0])
    nan = np.isnan(xb)
    has_nan = nan.any()
    lo = np.where(nan, F32(np.inf), xb) if has_nan else xb
    hi = np.where(nan, F32(-np.inf), xb) if has_nan else xb
    mn = lo[rows, lo.argmin(axis=1)]
    mx = hi[rows, hi.argmax(axis=1)]
    mn = np.where(mn < FLT_MAX, mn, FLT_MAX).astype(np.float32)
    mx = np.where(mx > -FLT_MAX, mx, -FLT_MAX).astype(np.float32)
    return mn, mx


def nibbles(q: np.ndarray) -> np.ndarray:
    """[nb, 32] small ints -> [nb, 16] bytes: value j in the low nibble, j+16 in the high one.

    The byte is `q0 | q1 << 4` truncated to 8 bits, as C stores it (q0 is not masked).
    """
    q = q.astype(np.uint8)
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def high_bits(q: np.ndarray) -> np.ndarray:
    """q5's qh: bit 4 of value j at bit j of a little-endian uint32 -> [nb, 4] bytes."""
    bits = ((q.astype(np.uint8) >> 4) & 1).astype(np.uint8)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """[nb, 16] bytes -> [nb, 32] uint8 values (low nibbles first)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """[nb, 4] bytes of qh -> [nb, 32] values 0 / 0x10."""
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


# --- the legacy 32-value block formats (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1) ----------------------

def blocks(x, qk: int) -> np.ndarray:
    """Values to quantize as [n_blocks, qk] float32."""
    return as_f32(x).reshape(-1, qk)


def raw_blocks(raw, n: int, qk: int, type_size: int) -> np.ndarray:
    """The blocks holding n values as [n_blocks, type_size] bytes."""
    return as_u8(raw)[: n // qk * type_size].reshape(-1, type_size)


def symmetric_q(xb: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q4_0_ref (half 8) / q5_0 (half 16): d = max / -half, max the value of
    largest magnitude (sign kept), q = min(2 half - 1, (int8)(x / d + half + 0.5))."""
    d = absmax_signed(xb) / F32(-half)
    q = np.minimum(np.int8(2 * half - 1), c_int8(xb * inverse(d)[:, None] + F32(half + 0.5)))
    return d, q


def affine_q(xb: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q4_1_ref (top 15) / q5_1 (top 31): d = (max - min) / top, m = min,
    q = (int8)((x - min) / d + 0.5), not clamped (Q4_1 clamps to 15 itself)."""
    mn, mx = min_max_c(xb)
    d = (mx - mn) / F32(top)
    return d, mn, c_int8((xb - mn[:, None]) * inverse(d)[:, None] + F32(0.5))


def scaled(x: np.ndarray, d: np.ndarray, m: np.ndarray = None) -> np.ndarray:
    """Flat float32 q * d (+ m) with one scale (and min) per block, two roundings, no FMA;
    x: the codes q as a new float32 [nb, qk] array (exact), scaled in place."""
    x *= d[:, None]
    if m is not None:
        x += m[:, None]
    return x.reshape(-1)


def _pack_bits(q: np.ndarray, bits: int) -> tuple:
    """4-bit block values as 16 bytes of nibbles; 5-bit ones as qh (bit 4 of each) first."""
    if bits == 4:
        return (nibbles(q),)
    q = q.astype(np.uint8)
    return high_bits(q), nibbles(q & 0x0F)


def _codes_f32(qb: np.ndarray, bits: int, off: int) -> np.ndarray:
    """_pack_bits' inverse on the bytes after a block's scales, minus off: the codes as a new
    float32 [nb, 32] array (small integers, exact), written in place (no widened copies)."""
    if bits == 5:
        qh, qb = qb[:, :4], qb[:, 4:]
    x = np.empty((len(qb), 32), np.float32)
    np.bitwise_and(qb, 0x0F, out=x[:, :16], casting="unsafe")
    np.right_shift(qb, 4, out=x[:, 16:], casting="unsafe")
    if bits == 5:
        x += unpack_high_bits(qh)
    if off:
        x -= np.float32(off)
    return x


def q4_q5_codec(bits: int, type_size: int, affine: bool):
    """(from_float, to_float) of Q4_0 / Q5_0 (x = (q - 2^(bits-1)) * d; fp16 d first) or, when
    affine, Q4_1 / Q5_1 (x = q * d + m, m the block's min; fp16 d then m)."""
    half = 1 << (bits - 1)

    @quiet
    def from_float(x) -> np.ndarray:
        xb = blocks(x, 32)
        if not affine:
            d, q = symmetric_q(xb, half)
            return pack_blocks(len(xb), type_size, f16_field(d), *_pack_bits(q, bits))
        d, m, q = affine_q(xb, 2 * half - 1)
        if bits == 4:                     # quantize_row_q4_1_ref clamps, q5_1's does not
            q = np.minimum(np.int8(15), q)
        return pack_blocks(len(xb), type_size, f16_field(d), f16_field(m), *_pack_bits(q, bits))

    @quiet
    def to_float(raw, n: int) -> np.ndarray:
        b = raw_blocks(raw, n, 32, type_size)
        if not affine:
            return scaled(_codes_f32(b[:, 2:], bits, half), f16_at(b, 0))
        return scaled(_codes_f32(b[:, 4:], bits, 0), f16_at(b, 0), f16_at(b, 2))
    return from_float, to_float
