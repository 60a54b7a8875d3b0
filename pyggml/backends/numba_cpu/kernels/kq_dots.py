"""Row dots of the K-quant and IQ4 weight types against float32 activations (MUL_MAT,
MUL_MAT_ID dot path).

Each weight row is decoded block by block in registers and multiplied with the float32
activation row: per sub-block one sum of q*y (and, for the affine types, one sum of y for
the min term), then the sub-block's scale. No activation quantization: results are closer
to exact float math than ggml's Q8_K integer dots (test-backend-ops' 5e-4 NMSE bound holds
either way). The inner loops over 16/32 values are plain loops that LLVM vectorizes (hence
the reassociating fastmath flags); they carry no explicit SIMD yet.

    is_kq(t), blck(t)                          which types this file reads, block sizes
    dot_rows(t, k, x, xstride, nrows, y, out)  out[r] = row r of x (type t) . y
"""
from __future__ import annotations

import numba
import numpy as np

from ....quants.kq_nb import KVALUES_IQ4NL, _q3_scale, _scale_min_k4
from ....quants.kq_nb import _load_f16 as _f16
from ....types import GGMLType
from ..intrinsics import f32_array, u8_array

_jit = numba.njit(nogil=True, cache=True, error_model="numpy",
                  fastmath={"reassoc", "contract", "nsz", "arcp"})

Q2_K, Q3_K, Q4_K = int(GGMLType.Q2_K), int(GGMLType.Q3_K), int(GGMLType.Q4_K)
Q5_K, Q6_K, IQ4_NL, IQ4_XS = (int(GGMLType.Q5_K), int(GGMLType.Q6_K), int(GGMLType.IQ4_NL),
                              int(GGMLType.IQ4_XS))
QK_K = 256
_F0 = np.float32(0.0)


@_jit
def is_kq(t):
    return (t == Q4_K or t == Q6_K or t == Q5_K or t == IQ4_XS or t == Q2_K or t == Q3_K
            or t == IQ4_NL)


@_jit
def blck(t):
    return 32 if t == IQ4_NL else QK_K


@_jit
def block_bytes(t):
    if t == Q4_K:
        return 144
    if t == Q6_K:
        return 210
    if t == Q5_K:
        return 176
    if t == IQ4_XS:
        return 136
    if t == Q2_K:
        return 84
    if t == Q3_K:
        return 110
    return 18


@_jit
def dot_q45_k(b, nb, y, five):
    bs = 176 if five else 144
    qo = 48 if five else 16
    acc = _F0
    for i in range(nb):
        o = i * bs
        d = _f16(b, o)
        dmin = _f16(b, o + 2)
        yb = i * QK_K
        for c in range(4):
            sc1, m1 = _scale_min_k4(2 * c, b, o + 4)
            sc2, m2 = _scale_min_k4(2 * c + 1, b, o + 4)
            sc1, m1, sc2, m2 = np.float32(sc1), np.float32(m1), np.float32(sc2), np.float32(m2)
            q = o + qo + 32 * c
            s1 = _F0
            s2 = _F0
            t1 = _F0
            t2 = _F0
            y0 = yb + 64 * c
            if five:
                h1 = 2 * c
                for l in range(32):
                    v = b[q + l]
                    hb = b[o + 16 + l]
                    y1 = y[y0 + l]
                    y2 = y[y0 + 32 + l]
                    s1 += np.float32((v & 0xF) | (((hb >> h1) & 1) << 4)) * y1
                    s2 += np.float32((v >> 4) | (((hb >> (h1 + 1)) & 1) << 4)) * y2
                    t1 += y1
                    t2 += y2
            else:
                for l in range(32):
                    v = b[q + l]
                    y1 = y[y0 + l]
                    y2 = y[y0 + 32 + l]
                    s1 += np.float32(v & 0xF) * y1
                    s2 += np.float32(v >> 4) * y2
                    t1 += y1
                    t2 += y2
            acc += d * (sc1 * s1 + sc2 * s2) - dmin * (m1 * t1 + m2 * t2)
    return acc


@_jit
def dot_q6_k(b, nb, y):
    acc = _F0
    for i in range(nb):
        o = i * 210
        d = _f16(b, o + 208)
        for c in range(2):
            ql = o + 64 * c
            qh = o + 128 + 32 * c
            sc = o + 192 + 8 * c
            y0 = i * QK_K + 128 * c
            for h in range(2):
                s1 = _F0
                s2 = _F0
                s3 = _F0
                s4 = _F0
                for l in range(16 * h, 16 * h + 16):
                    a = b[ql + l]
                    a2 = b[ql + l + 32]
                    hh = b[qh + l]
                    s1 += np.float32(np.int32((a & 0xF) | ((hh & 3) << 4)) - 32) * y[y0 + l]
                    s2 += np.float32(np.int32((a2 & 0xF) | (((hh >> 2) & 3) << 4)) - 32) \
                        * y[y0 + l + 32]
                    s3 += np.float32(np.int32((a >> 4) | (((hh >> 4) & 3) << 4)) - 32) \
                        * y[y0 + l + 64]
                    s4 += np.float32(np.int32((a2 >> 4) | (((hh >> 6) & 3) << 4)) - 32) \
                        * y[y0 + l + 96]
                is_ = sc + h
                acc += d * (np.float32(np.int8(b[is_])) * s1 + np.float32(np.int8(b[is_ + 2])) * s2
                            + np.float32(np.int8(b[is_ + 4])) * s3
                            + np.float32(np.int8(b[is_ + 6])) * s4)
    return acc


@_jit
def dot_iq4(b, nblk, y, xs):
    """IQ4_XS (xs, 256-value blocks with 6-bit sub-scales) or IQ4_NL (32-value blocks)."""
    kv = KVALUES_IQ4NL
    acc = _F0
    if xs:
        for i in range(nblk):
            o = i * 136
            d = _f16(b, o)
            sh = np.int32(b[o + 2]) | (np.int32(b[o + 3]) << 8)
            for ib in range(8):
                ls = ((np.int32(b[o + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) \
                    | (((sh >> (2 * ib)) & 3) << 4)
                q = o + 8 + 16 * ib
                y0 = i * QK_K + 32 * ib
                s = _F0
                for j in range(16):
                    v = b[q + j]
                    s += np.float32(kv[v & 0xF]) * y[y0 + j] + np.float32(kv[v >> 4]) * y[y0 + j + 16]
                acc += d * np.float32(ls - 32) * s
    else:
        for i in range(nblk):
            o = i * 18
            d = _f16(b, o)
            s = _F0
            for j in range(16):
                v = b[o + 2 + j]
                s += np.float32(kv[v & 0xF]) * y[32 * i + j] + np.float32(kv[v >> 4]) * y[32 * i + j + 16]
            acc += d * s
    return acc


@_jit
def dot_q2_k(b, nb, y):
    acc = _F0
    for i in range(nb):
        o = i * 84
        d = _f16(b, o + 80)
        dmin = _f16(b, o + 82)
        is_ = 0
        y0 = i * QK_K
        for half in range(2):
            q = o + 16 + 32 * half
            for shift in range(0, 8, 2):
                for k in range(2):
                    sc = b[o + is_]
                    is_ += 1
                    s = _F0
                    t = _F0
                    for l in range(16):
                        yy = y[y0 + l]
                        s += np.float32((b[q + 16 * k + l] >> shift) & 3) * yy
                        t += yy
                    acc += d * np.float32(sc & 0xF) * s - dmin * np.float32(sc >> 4) * t
                    y0 += 16
    return acc


@_jit
def dot_q3_k(b, nb, y):
    acc = _F0
    for i in range(nb):
        o = i * 110
        d = _f16(b, o + 108)
        is_ = 0
        m = 1
        y0 = i * QK_K
        for half in range(2):
            q = o + 32 + 32 * half
            for shift in range(0, 8, 2):
                for k in range(2):
                    dl = d * np.float32(_q3_scale(b, o + 96, is_))
                    is_ += 1
                    s = _F0
                    for l in range(16):
                        v = np.int32((b[q + 16 * k + l] >> shift) & 3)
                        if (b[o + 16 * k + l] & m) == 0:
                            v -= 4
                        s += np.float32(v) * y[y0 + l]
                    acc += dl * s
                    y0 += 16
                m <<= 1
    return acc


@_jit
def dot_row(t, b, k, y):
    """One weight row (raw bytes b of type t, k values) . float32 y."""
    if t == Q4_K:
        return dot_q45_k(b, k // QK_K, y, False)
    if t == Q6_K:
        return dot_q6_k(b, k // QK_K, y)
    if t == Q5_K:
        return dot_q45_k(b, k // QK_K, y, True)
    if t == IQ4_XS:
        return dot_iq4(b, k // QK_K, y, True)
    if t == Q2_K:
        return dot_q2_k(b, k // QK_K, y)
    if t == Q3_K:
        return dot_q3_k(b, k // QK_K, y)
    return dot_iq4(b, k // 32, y, False)


@_jit
def dot_rows(t, k, x, xstride, nrows, y, out):
    """out[r] = dot(row r of type t at x + r*xstride, float32 row at y), r < nrows."""
    rs = (k // blck(t)) * block_bytes(t)
    yy = f32_array(y, k)
    o = f32_array(out, nrows)
    for r in range(nrows):
        o[r] = dot_row(t, u8_array(x + r * xstride, rs), k, yy)
