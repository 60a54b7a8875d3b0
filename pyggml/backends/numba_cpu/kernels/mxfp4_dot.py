"""MXFP4 weights against Q8_0 activations (MUL_MAT, MUL_MAT_ID dot path): ggml-cpu's
ggml_vec_dot_mxfp4_q8_0 (its x86 AVX2 code) as LLVM vector code, the same floats bit for bit.

As ggml's mul_mat does for vec_dot_type Q8_0, each activation row is quantized once with the
CPU's own quantize_row_q8_0 (quants.nb.quantize_row_q8_0_cpu: fp16 d, int8 q[32], 34-byte
blocks). A weight row then runs over its blocks in pairs: the 4-bit codes looked up in
kvalues_mxfp4 (pshufb), |x| times sign(y, x) through pmaddubsw, pairs through pmaddwd (8
int32 lanes of 4 adjacent products, exact), converted to float and FMA'd with
fp16(y.d) * e8m0_half(x.e) into accumulator 1 (even blocks) or 2 (odd blocks), as ggml;
then hsum_float_8(acc1 + acc2) and an odd last block in scalar, fma(d, sumi, sumf) (ggml's
C, contracted in libggml's build). Two weight rows per pass share the activation loads;
each keeps its own two accumulators, so the order of every row's float sums is ggml's.

    act_bytes(k)                    bytes of one prepared activation row (Q8_0 blocks)
    quantize_act(src, k, dst)       float32 row at src -> Q8_0 at dst (ggml-cpu's bytes)
    dot_rows(k, x, xstride, nrows, y, out)
                                    out[r] = MXFP4 row r (at x + r*xstride) . Q8_0 row y

AVX2 intrinsics when the CPU has them, otherwise a portable formulation giving the same
integers (PYGGML_SIMD=generic); ggml has no AVX-512 variant of this dot, nor does this file.
"""
from __future__ import annotations

import numba
from llvmlite import ir

from ....quants import nb as qnb
from ....quants.mxfp4 import KVALUES_MXFP4
from ..intrinsics import f32_array
from ..intrinsics import u8_array
from . import simd
from .simd import _F32
from .simd import _I1
from .simd import _I8
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

QK = 32
XB = 17               # MXFP4 block: e, qs[16]
YB = 34               # Q8_0 block: fp16 d, qs[32]
_ROWS = 2             # weight rows per pass


@_jit
def act_bytes(k):
    return (k // QK * YB + 63) // 64 * 64


@_jit
def quantize_act(src, k, dst):
    qnb.quantize_row_q8_0_cpu(f32_array(src, k), u8_array(dst, k // QK * YB), k)


def _v(t, n):
    return ir.VectorType(t, n)


def _e8m0_half(b, addr):
    """ggml_e8m0_to_fp32_half of the byte at addr: bits 0x00200000 << e for e < 2, else
    (e - 1) << 23."""
    e = b.zext(_load(b, addr, _I8), _I32)
    small = b.shl(_c(_I32, 0x00200000), e)
    big = b.shl(b.sub(e, _c(_I32, 1)), _c(_I32, 23))
    return b.bitcast(b.select(b.icmp_unsigned("<", e, _c(_I32, 2)), small, big), _F32)


def _sums4(b, qx, qy):
    """<32 x i8> codes x <32 x i8> activations -> <8 x i32> sums of 4 adjacent products
    (ggml's mul_add_epi8 then madd with ones on AVX2; exact products otherwise)."""
    if simd.HAVE_AVX2:
        ax = simd._intr(b, "llvm.abs.v32i8", _v(_I8, 32), [qx, _c(_I1, 0)])
        sy = simd._intr(b, "llvm.x86.avx2.psign.b", _v(_I8, 32), [qy, qx])
        return simd._maddubs_pairs(b, ax, sy)
    return simd.sum_quads(b, b.mul(b.sext(qx, _v(_I32, 32)), b.sext(qy, _v(_I32, 32))))


def _block(b, xr, y, i):
    """Block i of the weight row at xr against activation block i: (<8 x i32> sums, scale)."""
    xb = b.add(xr, b.mul(i, _c(_I64, XB)))
    yb = b.add(y, b.mul(i, _c(_I64, YB)))
    qx = simd.lookup16(b, KVALUES_MXFP4, simd._nibbles(b, b.add(xb, _c(_I64, 1))))
    qy = _load(b, b.add(yb, _c(_I64, 2)), _v(_I8, 32))
    return _sums4(b, qx, qy), b.fmul(_f16(b, yb), _e8m0_half(b, xb))


def _rows(b, xrs, nb, y, out_addrs):
    zero8 = ir.Constant(_v(_F32, 8), [0.0] * 8)
    accs = [(_acc(b, zero8), _acc(b, zero8)) for _ in xrs]
    npair = b.udiv(nb, _c(_I64, 2))

    def pair(b, it):
        for u in range(2):
            i = b.add(b.mul(it, _c(_I64, 2)), _c(_I64, u))
            for xr, acc in zip(xrs, accs):
                isum, d = _block(b, xr, y, i)
                a = acc[u]
                b.store(_fma(b, simd._splat(b, d, 8), b.sitofp(isum, _v(_F32, 8)), b.load(a)), a)
    _for(b, npair, pair)
    sums = [_acc(b, _hsum(b, b.fadd(b.load(a1), b.load(a2)))) for a1, a2 in accs]
    odd = b.icmp_unsigned("!=", b.and_(nb, _c(_I64, 1)), _c(_I64, 0))
    with b.if_then(odd):
        last = b.sub(nb, _c(_I64, 1))
        for xr, s in zip(xrs, sums):
            isum, d = _block(b, xr, y, last)
            tot = b.extract_element(isum, _c(_I32, 0))
            for j in range(1, 8):
                tot = b.add(tot, b.extract_element(isum, _c(_I32, j)))
            b.store(simd._intr(b, "llvm.fma.f32", _F32, [d, b.sitofp(tot, _F32), b.load(s)]), s)
    for s, o in zip(sums, out_addrs):
        _store(b, o, b.load(s), align=4)


def _build(b, nrows, nb, x, xstride, y, out):
    ngrp = b.udiv(nrows, _c(_I64, _ROWS))

    def group(b, g):
        r0 = b.mul(g, _c(_I64, _ROWS))
        rs = [b.add(r0, _c(_I64, j)) for j in range(_ROWS)]
        _rows(b, [b.add(x, b.mul(r, xstride)) for r in rs], nb, y,
              [b.add(out, b.mul(r, _c(_I64, 4))) for r in rs])
    _for(b, ngrp, group)

    def single(b, j):
        r = b.add(b.mul(ngrp, _c(_I64, _ROWS)), j)
        _rows(b, [b.add(x, b.mul(r, xstride))], nb, y, [b.add(out, b.mul(r, _c(_I64, 4)))])
    _for(b, b.sub(nrows, b.mul(ngrp, _c(_I64, _ROWS))), single)
    b.ret_void()


_TAG = "avx2" if simd.HAVE_AVX2 else "generic"
dot_mxfp4 = simd._intrinsic_n(f"pyggml_dot_mxfp4_q8_0_{_TAG}_r{_ROWS}", 6, _build)


@_jit
def dot_rows(k, x, xstride, nrows, y, out):
    """out[r] = dot(MXFP4 row r at x + r*xstride, Q8_0 row at y), r < nrows (float32)."""
    dot_mxfp4(nrows, k // QK, x, xstride, y, out)
