"""Row dots of the K-quants and IQ4_XS against activations quantized to Q8_K (MUL_MAT,
MUL_MAT_ID dot path): ggml-cpu's ggml_vec_dot_<type>_q8_K as LLVM vector code.

As in ggml, the activation row is quantized once (per thread and column) to Q8_K: blocks
of 256 values, float d, int8 q[256], int16 bsums[16] (sums of q over 16 values), the same
bytes as ggml's quantize_row_q8_K for finite input. A weight super-block then meets it in
integer arithmetic: u8 x i8 products summed in pairs (pmaddubsw), those multiplied by the
sub-block scales and summed in pairs (pmaddwd), the min/offset terms from bsums, so each
super-block's integer sum is exactly ggml's; only the float accumulation order differs
(d_x * d_y * sumi per super-block, 8 float lanes summed as ggml's hsum_float_8).
IQ4_NL (32-value blocks, vec_dot_type Q8_0) runs in simd.py with Q4_0's "Q8 split" path.

    is_kq(t)                        the types this file computes (Q2_K..Q6_K, IQ4_XS)
    act_bytes(k)                    bytes of one Q8_K activation row of k values
    quantize_act(src, k, dst)       float32 row at src -> Q8_K at dst (a block holding
                                    inf/NaN gets d = NaN: its products become NaN)
    dot_rows(t, k, x, xstride, nrows, y, out)
                                    out[r] = row r of x (type t) . Q8_K row y, r < nrows

The integer helpers use AVX2 intrinsics when the CPU has them (ggml's own sequence), 512-bit
pmaddubsw/pmaddwd over two 32-value chunks at a time with AVX-512 for Q4_K and Q6_K (~10%
faster here, not for the others; the AVX2 twin runs under PYGGML_SIMD=avx2), and a portable formulation otherwise
(PYGGML_SIMD=generic). All three give the same integers, hence the same floats.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir

from ....quants.iq4_values import KVALUES_IQ4NL
from ....types import GGMLType
from ..intrinsics import f32_array
from ..intrinsics import i8_array
from ..intrinsics import i16_array
from ..intrinsics import i32_array
from . import simd
from .simd import _F32
from .simd import _I8
from .simd import _I16
from .simd import _I32
from .simd import _I64
from .simd import _acc
from .simd import _c
from .simd import _f16
from .simd import _fma
from .simd import _for
from .simd import _hsum
from .simd import _load
from .simd import _store

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")

Q2_K, Q3_K, Q4_K = int(GGMLType.Q2_K), int(GGMLType.Q3_K), int(GGMLType.Q4_K)
Q5_K, Q6_K, IQ4_XS = int(GGMLType.Q5_K), int(GGMLType.Q6_K), int(GGMLType.IQ4_XS)
QK_K = 256
Q8K_BYTES = 292          # float d, int8 q[256], int16 bsums[16]
_QS, _BSUMS = 4, 260     # offsets in a Q8_K block


@_jit
def is_kq(t):
    return t == Q4_K or t == Q6_K or t == Q5_K or t == IQ4_XS or t == Q2_K or t == Q3_K


@_jit
def act_bytes(k):
    return (k // QK_K * Q8K_BYTES + 63) // 64 * 64


@_jit
def quantize_act(src, k, dst):
    """quantize_row_q8_K_ref (d = max / -127, q = min(127, nearest_int(x * -127 / max)),
    max the first value of largest |x|); nearest_int is round-half-even, as np.rint.
    |x| is compared on the float's bits (x & 0x7FFFFFFF orders finite floats as their
    magnitudes; inf and NaN are the words >= 0x7F800000): integer max reductions that LLVM
    vectorizes, where the float search with its NaN test stayed scalar (2x the time)."""
    x = f32_array(src, k)
    xi = i32_array(src, k)
    for i in range(k // QK_K):
        o = i * QK_K
        blk = dst + i * Q8K_BYTES
        q = i8_array(blk + _QS, QK_K)
        bs = i16_array(blk + _BSUMS, 16)
        d = f32_array(blk, 1)
        amax = np.int32(0)
        for j in range(QK_K):
            amax = max(amax, xi[o + j] & np.int32(0x7FFFFFFF))
        if amax == 0 or amax >= np.int32(0x7F800000):
            for j in range(QK_K):
                q[j] = 0
            for j in range(16):
                bs[j] = 0
            d[0] = np.float32(0.0) if amax == 0 else np.float32(np.nan)
            continue
        mx = np.float32(0.0)
        for j in range(QK_K):
            if (xi[o + j] & np.int32(0x7FFFFFFF)) == amax:
                mx = x[o + j]
                break
        iscale = np.float32(-127.0) / mx
        for j in range(QK_K):
            q[j] = np.int8(min(np.float32(127.0), np.rint(iscale * x[o + j])))
        for g in range(16):
            s = np.int32(0)
            for j in range(16):
                s += np.int32(q[16 * g + j])
            bs[g] = np.int16(s)
        d[0] = np.float32(1.0) / iscale


# --- integer vector helpers ----------------------------------------------------------------------

def _v(t, n):
    return ir.VectorType(t, n)


def _vc(t, n, x):
    return ir.Constant(_v(t, n), [x] * n if isinstance(x, int) else x)


def _pairs(b, p, n):
    """<2n x iN> -> <n x iN>: p[2i] + p[2i+1]."""
    ev = b.shuffle_vector(p, p, _vc(_I32, n, list(range(0, 2 * n, 2))))
    od = b.shuffle_vector(p, p, _vc(_I32, n, list(range(1, 2 * n, 2))))
    return b.add(ev, od)


def _maddubs(b, xu, yi):
    """<32 x u8> x <32 x i8> -> <16 x i16> sums of adjacent products (pmaddubsw; the operands
    here never saturate, so the portable form equals it)."""
    if simd.HAVE_AVX2:
        return simd._intr(b, "llvm.x86.avx2.pmadd.ub.sw", _v(_I16, 16), [xu, yi])
    return _pairs(b, b.mul(b.zext(xu, _v(_I16, 32)), b.sext(yi, _v(_I16, 32))), 16)


def _smul(b, xs, yi):
    """<32 x i8> x <32 x i8>, both signed (|x| <= 127) -> <16 x i16> pair sums: ggml's
    mul_add_epi8 (|x| times y with x's sign, unsigned x signed)."""
    if simd.HAVE_AVX2:
        ax = simd._intr(b, "llvm.abs.v32i8", _v(_I8, 32), [xs, _c(ir.IntType(1), 0)])
        sy = simd._intr(b, "llvm.x86.avx2.psign.b", _v(_I8, 32), [yi, xs])
        return _maddubs(b, ax, sy)
    return _pairs(b, b.mul(b.sext(xs, _v(_I16, 32)), b.sext(yi, _v(_I16, 32))), 16)


def _madd(b, a, c):
    """<2n x i16> x <2n x i16> -> <n x i32> sums of adjacent products (pmaddwd), n 8 or 4."""
    n = a.type.count // 2
    if simd.HAVE_AVX2:
        name = "llvm.x86.avx2.pmadd.wd" if n == 8 else "llvm.x86.sse2.pmadd.wd"
        return simd._intr(b, name, _v(_I32, n), [a, c])
    return _pairs(b, b.mul(b.sext(a, _v(_I32, 2 * n)), b.sext(c, _v(_I32, 2 * n))), n)


def _bytes(b, addr, n=32):
    return _load(b, addr, _v(_I8, n))


def _band(b, x, m):
    return b.and_(x, _vc(_I8, x.type.count, m - 256 if m > 127 else m))


def _shr(b, x, s):
    return b.lshr(x, _vc(_I8, x.type.count, s)) if s else x


def _shl(b, x, s):
    return b.shl(x, _vc(_I8, x.type.count, s)) if s else x


def _nib32(b, addr):
    """16 bytes of nibbles -> <32 x i8>: low nibbles then high nibbles."""
    q = _bytes(b, addr, 16)
    return b.shuffle_vector(_band(b, q, 15), _shr(b, q, 4), _vc(_I32, 32, list(range(32))))


def _bcast16(b, v, lanes):
    """<16 x i16> v -> <16 x i16> of v[lanes[i]]."""
    return b.shuffle_vector(v, v, _vc(_I32, 16, lanes))


def _scale_pair(b, sc16, g):
    """Scales of the 16-value groups g, g+1 for a <16 x i16> of pair sums over 32 values."""
    return _bcast16(b, sc16, [g] * 8 + [g + 1] * 8)


def _u32(b, addr):
    return _load(b, addr, _I32)


def _k4_scales(b, addr):
    """Q4_K/Q5_K's 12 scale bytes -> <16 x i16>: 8 scales then 8 mins (get_scale_min_k4,
    done on 32-bit words as ggml's utmp code)."""
    u0, u1, u2 = _u32(b, addr), _u32(b, b.add(addr, _c(_I64, 4))), _u32(b, b.add(addr, _c(_I64, 8)))
    m1, m2, m3 = _c(_I32, 0x3F3F3F3F), _c(_I32, 0x0F0F0F0F), _c(_I32, 0x03030303)
    w3 = b.or_(b.and_(b.lshr(u2, _c(_I32, 4)), m2), b.shl(b.and_(b.lshr(u1, _c(_I32, 6)), m3), _c(_I32, 4)))
    w2 = b.and_(u1, m1)
    w1 = b.or_(b.and_(u2, m2), b.shl(b.and_(b.lshr(u0, _c(_I32, 6)), m3), _c(_I32, 4)))
    w0 = b.and_(u0, m1)
    v = ir.Constant(_v(_I32, 4), ir.Undefined)
    for i, w in enumerate((w0, w1, w2, w3)):
        v = b.insert_element(v, w, _c(_I32, i))
    return b.zext(b.bitcast(v, _v(_I8, 16)), _v(_I16, 16))


def _q3_scales(b, addr):
    """Q3_K's 12 scale bytes -> <16 x i16> signed 6-bit scales minus 32."""
    u0, u1, u2 = _u32(b, addr), _u32(b, b.add(addr, _c(_I64, 4))), _u32(b, b.add(addr, _c(_I64, 8)))
    k1, k2 = _c(_I32, 0x03030303), _c(_I32, 0x0F0F0F0F)

    def w(lo, s_lo, s_hi):
        return b.or_(b.and_(b.lshr(lo, _c(_I32, s_lo)), k2),
                     b.shl(b.and_(b.lshr(u2, _c(_I32, s_hi)), k1), _c(_I32, 4)))
    v = ir.Constant(_v(_I32, 4), ir.Undefined)
    for i, x in enumerate((w(u0, 0, 0), w(u1, 0, 2), w(u0, 4, 4), w(u1, 4, 6))):
        v = b.insert_element(v, x, _c(_I32, i))
    s8 = b.sub(b.bitcast(v, _v(_I8, 16)), _vc(_I8, 16, 32))
    return b.sext(s8, _v(_I16, 16))


def _off(b, a, o):
    return b.add(a, _c(_I64, o))


# --- one super-block of each type: (sumi <8 x i32>, dx, mins) ----------------------------------
# dot = dx * dy * sum(sumi) - dmin_x * dy * sum(summ); mins = None or (how, summ, dmin_x), `how`
# being where ggml accumulates the min term (so that the float sums round as ggml's do):
#   "acc8": summ <8 x i32> into the main accumulator, before the sumi term (Q2_K)
#   "acc4": summ <4 x i32> into a second <4 x float> accumulator (Q4_K)
#   "sum": summ <4 x i32> summed to one integer, fused into a float scalar (Q5_K)

def _bsums(b, yb):
    return _load(b, _off(b, yb, _BSUMS), _v(_I16, 16))


def _chunk_products(b, kind, vals, y):
    """Pair sums of one chunk's products with its activation codes y (same width)."""
    n = y.type.count
    if n == 32:
        if kind == "u":
            return _maddubs(b, vals[0], y)
        if kind == "s":
            return _smul(b, vals[0], y)
        return b.sub(_maddubs(b, vals[0], y), _maddubs(b, vals[1], y))

    def mub(x):
        return simd._intr(b, "llvm.x86.avx512.pmaddubs.w.512", _v(_I16, 32), [x, y])
    if kind == "u":
        return mub(vals[0])
    if kind == "s":                 # |x| times y with x's sign (AVX-512 has no psignb)
        x = vals[0]
        ax = simd._intr(b, "llvm.abs.v64i8", _v(_I8, 64), [x, _c(ir.IntType(1), 0)])
        neg = b.icmp_signed("<", x, _vc(_I8, 64, 0))
        return simd._intr(b, "llvm.x86.avx512.pmaddubs.w.512", _v(_I16, 32),
                          [ax, b.select(neg, b.sub(_vc(_I8, 64, 0), y), y)])
    return b.sub(mub(vals[0]), mub(vals[1]))


def _concat(b, x, y):
    n = x.type.count
    return b.shuffle_vector(x, y, _vc(_I32, 2 * n, list(range(2 * n))))


def _sum_chunks(b, yb, kind, chunks, base=None, wide=False):
    """sum over the 8 chunks of 32 values of scale x (pair sums of the products) as <8 x i32>:
    chunks[j] = (values (one <32 x i8>, or two for kind "d"), <16 x i16> scales of the pair
    sums), j in value order. `wide` with AVX-512: two chunks go through one 512-bit pmaddubsw /
    pmaddwd (where that measured faster); the integer total is the same."""
    if not (wide and simd.HAVE_AVX512):
        acc = base
        for j, (vals, sc) in enumerate(chunks):
            y = _bytes(b, _off(b, yb, _QS + 32 * j))
            p = _madd(b, sc, _chunk_products(b, kind, vals, y))
            acc = p if acc is None else b.add(acc, p)
        return acc
    acc = None
    for j in range(0, 8, 2):
        (v0, s0), (v1, s1) = chunks[j], chunks[j + 1]
        y = _load(b, _off(b, yb, _QS + 32 * j), _v(_I8, 64))
        p = _chunk_products(b, kind, [_concat(b, x0, x1) for x0, x1 in zip(v0, v1)], y)
        p = simd._intr(b, "llvm.x86.avx512.pmaddw.d.512", _v(_I32, 16), [_concat(b, s0, s1), p])
        acc = p if acc is None else b.add(acc, p)
    lo = b.shuffle_vector(acc, acc, _vc(_I32, 8, list(range(8))))
    hi = b.shuffle_vector(acc, acc, _vc(_I32, 8, list(range(8, 16))))
    acc = b.add(lo, hi)
    return acc if base is None else b.add(acc, base)


def _blk_q45_k(b, xb, yb, five):
    qs = 48 if five else 16
    sm = _k4_scales(b, _off(b, xb, 4))
    mins = b.shuffle_vector(sm, sm, _vc(_I32, 8, list(range(8, 16))))
    summ = _madd(b, mins, _pairs(b, _bsums(b, yb), 8))      # m_j * (bsum_2j + bsum_2j+1)
    hb = _bytes(b, _off(b, xb, 16)) if five else None
    chunks = []
    for j in range(4):
        q = _bytes(b, _off(b, xb, qs + 32 * j))
        for h in range(2):
            v = _band(b, _shr(b, q, 4 * h), 15)
            if five:
                v = b.or_(v, _shl(b, _band(b, _shr(b, hb, 2 * j + h), 1), 4))
            chunks.append(([v], _bcast16(b, sm, [2 * j + h] * 16)))
    sumi = _sum_chunks(b, yb, "u", chunks, wide=not five)
    return sumi, _f16(b, xb), ("sum" if five else "acc4", summ, _f16(b, _off(b, xb, 2)))


def _blk_q4_k(b, xb, yb):
    return _blk_q45_k(b, xb, yb, False)


def _blk_q5_k(b, xb, yb):
    return _blk_q45_k(b, xb, yb, True)


def _blk_q6_k(b, xb, yb):
    sc = b.sext(_bytes(b, _off(b, xb, 192), 16), _v(_I16, 16))
    base = b.shl(_madd(b, _bsums(b, yb), sc), _vc(_I32, 8, 5))
    base = b.sub(_vc(_I32, 8, 0), base)                       # -32 * sum(scale * bsum)
    chunks = []
    for j in range(2):
        q1 = _bytes(b, _off(b, xb, 64 * j))
        q2 = _bytes(b, _off(b, xb, 64 * j + 32))
        qh = _bytes(b, _off(b, xb, 128 + 32 * j))
        vals = (b.or_(_band(b, q1, 15), _shl(b, _band(b, qh, 3), 4)),
                b.or_(_band(b, q2, 15), _shl(b, _band(b, qh, 12), 2)),
                b.or_(_shr(b, q1, 4), _band(b, qh, 48)),
                b.or_(_shr(b, q2, 4), _shr(b, _band(b, qh, 192), 2)))
        chunks += [([v], _scale_pair(b, sc, 8 * j + 2 * c)) for c, v in enumerate(vals)]
    return _sum_chunks(b, yb, "u", chunks, base, wide=True), _f16(b, _off(b, xb, 208)), None


def _blk_q3_k(b, xb, yb):
    sc = _q3_scales(b, _off(b, xb, 96))
    nh = b.xor(_bytes(b, xb), _vc(_I8, 32, -1))               # 4 is subtracted where unset
    chunks = []
    for j in range(2):
        q = _bytes(b, _off(b, xb, 32 + 32 * j))
        for s in range(4):
            lo = _band(b, _shr(b, q, 2 * s), 3)
            hi = _shl(b, _band(b, _shr(b, nh, 4 * j + s), 1), 2)
            chunks.append(([lo, hi], _scale_pair(b, sc, 8 * j + 2 * s)))
    return _sum_chunks(b, yb, "d", chunks), _f16(b, _off(b, xb, 108)), None


def _blk_q2_k(b, xb, yb):
    s8 = _bytes(b, xb, 16)
    sc = b.zext(_band(b, s8, 15), _v(_I16, 16))
    summ = _madd(b, b.zext(_shr(b, s8, 4), _v(_I16, 16)), _bsums(b, yb))
    chunks = []
    for j in range(2):
        q = _bytes(b, _off(b, xb, 16 + 32 * j))
        chunks += [([_band(b, _shr(b, q, 2 * s), 3)], _scale_pair(b, sc, 8 * j + 2 * s))
                   for s in range(4)]
    sumi = _sum_chunks(b, yb, "u", chunks)
    return sumi, _f16(b, _off(b, xb, 80)), ("acc8", summ, _f16(b, _off(b, xb, 82)))


def _blk_iq4_xs(b, xb, yb):
    sh = b.zext(_load(b, _off(b, xb, 2), _I16), _I32)
    chunks = []
    for ib in range(8):
        lo = b.zext(_load(b, _off(b, xb, 4 + ib // 2), _I8), _I32)
        ls = b.or_(b.and_(b.lshr(lo, _c(_I32, 4 * (ib % 2))), _c(_I32, 15)),
                   b.shl(b.and_(b.lshr(sh, _c(_I32, 2 * ib)), _c(_I32, 3)), _c(_I32, 4)))
        ls = b.trunc(b.sub(ls, _c(_I32, 32)), _I16)
        vals = simd.lookup16(b, KVALUES_IQ4NL, _nib32(b, _off(b, xb, 8 + 16 * ib)))
        chunks.append(([vals], simd._splat(b, ls, 16)))
    return _sum_chunks(b, yb, "s", chunks), _f16(b, xb), None


# type: (block bytes, block function)
_FMT = {"q2_k": (84, _blk_q2_k), "q3_k": (110, _blk_q3_k), "q4_k": (144, _blk_q4_k),
        "q5_k": (176, _blk_q5_k), "q6_k": (210, _blk_q6_k), "iq4_xs": (136, _blk_iq4_xs)}
def _dot_body(fmt):
    """dot_<fmt>(nrows, nb, x, xstride, y, out): one row at a time (two rows sharing the
    activation loads measured slower here: the unrolled super-block spills registers)."""
    bsize, blk = _FMT[fmt]
    zero8 = ir.Constant(_v(_F32, 8), [0.0] * 8)

    def row(b, r, nb, x, xstride, y, out):
        xr = b.add(x, b.mul(r, xstride))
        acc = _acc(b, zero8)
        acc4 = _acc(b, ir.Constant(_v(_F32, 4), [0.0] * 4))
        accs = _acc(b, _c(_F32, 0.0))
        hows = set()

        def body(b, i):
            yb = b.add(y, b.mul(i, _c(_I64, Q8K_BYTES)))
            dy = _load(b, yb, _F32)
            sumi, dx, mins = blk(b, b.add(xr, b.mul(i, _c(_I64, bsize))), yb)
            a = b.load(acc)
            if mins is not None:
                how, summ, dmx = mins
                hows.add(how)
                dmin = b.fmul(b.fneg(dy), dmx)              # ggml: -y.d * x.dmin
                if how == "acc8":
                    a = _fma(b, simd._splat(b, dmin, 8), b.sitofp(summ, _v(_F32, 8)), a)
                elif how == "acc4":
                    b.store(_fma(b, simd._splat(b, dmin, 4), b.sitofp(summ, _v(_F32, 4)),
                                 b.load(acc4)), acc4)
                else:
                    tot = b.extract_element(_pairs(b, _pairs(b, summ, 2), 1), _c(_I32, 0))
                    b.store(simd._intr(b, "llvm.fma.f32", _F32,            # ggml's C, contracted
                                       [dmin, b.sitofp(tot, _F32), b.load(accs)]), accs)
            b.store(_fma(b, simd._splat(b, b.fmul(dy, dx), 8), b.sitofp(sumi, _v(_F32, 8)), a),
                    acc)
        _for(b, nb, body)
        tot = _hsum(b, b.load(acc))
        if "acc4" in hows:
            tot = b.fadd(tot, _hsum(b, b.load(acc4)))
        if "sum" in hows:
            tot = b.fadd(tot, b.load(accs))
        _store(b, b.add(out, b.mul(r, _c(_I64, 4))), tot, align=4)

    def build(b, nrows, nb, x, xstride, y, out):
        _for(b, nrows, lambda b, r: row(b, r, nb, x, xstride, y, out))
        b.ret_void()
    return build


def _dot(fmt):
    tag = "avx512" if simd.HAVE_AVX512 else "avx2" if simd.HAVE_AVX2 else "generic"
    return simd._intrinsic_n(f"pyggml_dot_{fmt}_q8_k_{tag}", 6, _dot_body(fmt))


dot_q2_k, dot_q3_k, dot_q4_k, dot_q5_k, dot_q6_k, dot_iq4_xs = (
    _dot(f) for f in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs"))


@_jit
def dot_rows(t, k, x, xstride, nrows, y, out):
    """out[r] = dot(row r of type t at x + r*xstride, Q8_K row at y), r < nrows (float32)."""
    nb = k // QK_K
    if t == Q4_K:
        dot_q4_k(nrows, nb, x, xstride, y, out)
    elif t == Q6_K:
        dot_q6_k(nrows, nb, x, xstride, y, out)
    elif t == Q5_K:
        dot_q5_k(nrows, nb, x, xstride, y, out)
    elif t == IQ4_XS:
        dot_iq4_xs(nrows, nb, x, xstride, y, out)
    elif t == Q2_K:
        dot_q2_k(nrows, nb, x, xstride, y, out)
    else:
        dot_q3_k(nrows, nb, x, xstride, y, out)
