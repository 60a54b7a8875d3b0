"""Flash attention's row readers (kernels/attention.py): K/V rows of any FA_KV_TYPES type
converted to F32, quantized K rows to 8-bit codes for integer dots, q rows to 8-bit blocks.

The per-block decoders (Q4_x/Q5_x nibbles, Q8_0) are explicit LLVM vector code: Numba's loop
vectorizer does not get through the nibble unpacking (int64 promotion of the small ints),
and the IR runs ~10x faster. The IR is generic (no target intrinsics): any CPU.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ....quants import nb as qnb
from ....types import GGMLType
from ..desc import ERR_UNSUPPORTED
from ..intrinsics import f32_array
from ..intrinsics import i8_array
from ..intrinsics import u8_array
from ..intrinsics import u16_array
from .fa_consts import _F0
from .fa_consts import _jit
from .fa_consts import _jit_inline

F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
Q4_0, Q4_1, Q5_0 = int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0)
Q5_1, Q8_0 = int(GGMLType.Q5_1), int(GGMLType.Q8_0)
QK = 32            # quant block



# --- block decoders (vector IR) -----------------------------------------------------------------

_I8, _I32, _FT = ir.IntType(8), ir.IntType(32), ir.FloatType()


def _vt(t, n):
    return ir.VectorType(t, n)


def _splat(builder, x, n):
    vt = _vt(x.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(_vt(_I32, n), [0] * n))


def _vptr(context, builder, ty, val, vt):
    return builder.inttoptr(context.cast(builder, val, ty, types.int64), vt.as_pointer())


def _nibbles(context, builder, sig, args, qh_arg):
    """(lo, hi) <16 x i32> values of a 4/5-bit block: 16 bytes at args[0]; 5th bits from
    the 32-bit word qh (bit j for value j) when qh_arg is not None."""
    v = builder.load(_vptr(context, builder, sig.args[0], args[0], _vt(_I8, 16)), align=1)
    lo = builder.zext(builder.and_(v, ir.Constant(_vt(_I8, 16), [15] * 16)), _vt(_I32, 16))
    hi = builder.zext(builder.lshr(v, ir.Constant(_vt(_I8, 16), [4] * 16)), _vt(_I32, 16))
    if qh_arg is not None:
        qh = _splat(builder, context.cast(builder, args[qh_arg], sig.args[qh_arg], types.int32), 16)
        one = ir.Constant(_vt(_I32, 16), [1] * 16)
        four = ir.Constant(_vt(_I32, 16), [4] * 16)
        out = []
        for x, base in ((lo, 0), (hi, 16)):
            bit = builder.and_(builder.lshr(qh, ir.Constant(_vt(_I32, 16),
                                                            list(range(base, base + 16)))), one)
            out.append(builder.or_(x, builder.shl(bit, four)))
        lo, hi = out
    return lo, hi


def _store_f32_blocks(context, builder, sig, args, dst_i, d_i, m_i, off_i, parts):
    p = _vptr(context, builder, sig.args[dst_i], args[dst_i], _vt(_FT, 16))
    off = _splat(builder, context.cast(builder, args[off_i], sig.args[off_i], types.int32), 16)
    dd = _splat(builder, args[d_i], 16)
    mm = _splat(builder, args[m_i], 16)
    for k, x in enumerate(parts):
        xf = builder.sitofp(builder.sub(x, off), _vt(_FT, 16))
        builder.store(builder.fadd(builder.fmul(xf, dd), mm),
                      builder.gep(p, [ir.Constant(_I32, k)]), align=1)


def _store_i8_blocks(context, builder, sig, args, dst_i, off_i, parts):
    p = _vptr(context, builder, sig.args[dst_i], args[dst_i], _vt(_I8, 16))
    off = _splat(builder, context.cast(builder, args[off_i], sig.args[off_i], types.int32), 16)
    for k, x in enumerate(parts):
        builder.store(builder.trunc(builder.sub(x, off), _vt(_I8, 16)),
                      builder.gep(p, [ir.Constant(_I32, k)]), align=1)


@intrinsic
def _q4_block_f32(typingctx, src, dst, d, m, off):
    """32 values of a Q4_0/Q4_1 block (16 bytes at src) -> (q - off)·d + m at dst (f32)."""
    def codegen(context, builder, sig, args):
        parts = _nibbles(context, builder, sig, args, None)
        _store_f32_blocks(context, builder, sig, args, 1, 2, 3, 4, parts)
        return context.get_dummy_value()
    return types.none(src, dst, types.float32, types.float32, off), codegen


@intrinsic
def _q5_block_f32(typingctx, src, qh, dst, d, m, off):
    """Q5_0/Q5_1 block (16 bytes of low nibbles at src, 5th bits in qh) -> f32 at dst."""
    def codegen(context, builder, sig, args):
        parts = _nibbles(context, builder, sig, args, 1)
        _store_f32_blocks(context, builder, sig, args, 2, 3, 4, 5, parts)
        return context.get_dummy_value()
    return types.none(src, qh, dst, types.float32, types.float32, off), codegen


@intrinsic
def _q8_block_f32(typingctx, src, dst, d):
    """32 int8 at src times d -> f32 at dst."""
    def codegen(context, builder, sig, args):
        v = builder.load(_vptr(context, builder, sig.args[0], args[0], _vt(_I8, 32)), align=1)
        xf = builder.sitofp(v, _vt(_FT, 32))
        p = _vptr(context, builder, sig.args[1], args[1], _vt(_FT, 32))
        builder.store(builder.fmul(xf, _splat(builder, args[2], 32)), p, align=1)
        return context.get_dummy_value()
    return types.none(src, dst, types.float32), codegen


@intrinsic
def _q4_block_i8(typingctx, src, dst, off):
    """Q4_0/Q4_1 block (16 bytes at src) -> 32 bytes (q - off) at dst."""
    def codegen(context, builder, sig, args):
        parts = _nibbles(context, builder, sig, args, None)
        _store_i8_blocks(context, builder, sig, args, 1, 2, parts)
        return context.get_dummy_value()
    return types.none(src, dst, off), codegen


@intrinsic
def _q5_block_i8(typingctx, src, qh, dst, off):
    """Q5_0/Q5_1 block -> 32 bytes (q - off) at dst."""
    def codegen(context, builder, sig, args):
        parts = _nibbles(context, builder, sig, args, 1)
        _store_i8_blocks(context, builder, sig, args, 2, 3, parts)
        return context.get_dummy_value()
    return types.none(src, qh, dst, off), codegen


# --- row conversions ------------------------------------------------------------------------------

@_jit_inline
def f16_to_f32(h):
    """F16 bits -> float32 (F16C)."""
    return qnb.f16_to_f32(h)


@_jit_inline
def _ld16(addr):
    return np.uint16(u8_array(addr, 2)[0]) | (np.uint16(u8_array(addr, 2)[1]) << 8)


@_jit_inline
def _ld32(addr):
    return np.int64(u16_array(addr, 2)[0]) | (np.int64(u16_array(addr, 2)[1]) << 16)


@_jit
def row_to_f32(t, addr, out, n):
    """One K/V row of type t at addr -> out[:n] (float32). 0, or ERR_UNSUPPORTED."""
    oa = out.ctypes.data
    nbk = n // QK
    if t == F16:
        h = u16_array(addr, n)
        for i in range(n):
            out[i] = f16_to_f32(h[i])
    elif t == F32:
        x = f32_array(addr, n)
        for i in range(n):
            out[i] = x[i]
    elif t == Q4_0:
        for ib in range(nbk):
            o = addr + ib * 18
            _q4_block_f32(o + 2, oa + ib * QK * 4, f16_to_f32(_ld16(o)), _F0, 8)
    elif t == Q8_0:
        for ib in range(nbk):
            o = addr + ib * 34
            _q8_block_f32(o + 2, oa + ib * QK * 4, f16_to_f32(_ld16(o)))
    elif t == Q4_1:
        for ib in range(nbk):
            o = addr + ib * 20
            _q4_block_f32(o + 4, oa + ib * QK * 4, f16_to_f32(_ld16(o)), f16_to_f32(_ld16(o + 2)), 0)
    elif t == Q5_0:
        for ib in range(nbk):
            o = addr + ib * 22
            _q5_block_f32(o + 6, _ld32(o + 2), oa + ib * QK * 4, f16_to_f32(_ld16(o)), _F0, 16)
    elif t == Q5_1:
        for ib in range(nbk):
            o = addr + ib * 24
            _q5_block_f32(o + 8, _ld32(o + 4), oa + ib * QK * 4, f16_to_f32(_ld16(o)),
                          f16_to_f32(_ld16(o + 2)), 0)
    elif t == BF16:
        h = u16_array(addr, n)
        for i in range(n):
            out[i] = qnb.bf16_to_f32(h[i])
    else:
        return ERR_UNSUPPORTED
    return 0


@_jit_inline
def _block_dc(t, o):
    """A Q4_x/Q5_x block at o: (scale d, its codes' offset part c = m - offset·d, where its
    codes start); Q5's 32 fifth bits are the 4 bytes before the codes."""
    d = f16_to_f32(_ld16(o))
    if t == Q4_0:
        return d, np.float32(-8.0) * d, 2
    if t == Q5_0:
        return d, np.float32(-16.0) * d, 6
    return d, f16_to_f32(_ld16(o + 2)), (4 if t == Q4_1 else 8)


@_jit
def row_to_i8(t, addr, qv, kd, kc, n):
    """A quantized K row for integer dots -> its block scales kd and 8-bit values qv[:n]:
    Q8_0 signed; the 4/5-bit types as their unsigned codes (0..15 / 0..31), with
    kc = m - offset·d per block (Q4_0: -8d, Q5_0: -16d, Q4_1/Q5_1: their min m), so that
    the K·q dot is sum over blocks of d·qd·(codes·q) + kc·(qd·sum q)."""
    qa = qv.ctypes.data
    nbk = n // QK
    if t == Q8_0:
        for ib in range(nbk):
            o = addr + ib * 34
            kd[ib] = f16_to_f32(_ld16(o))
            kc[ib] = _F0
            src = i8_array(o + 2, QK)
            for j in range(QK):
                qv[ib * QK + j] = src[j]
    elif t == Q4_0 or t == Q4_1 or t == Q5_0 or t == Q5_1:
        four = t == Q4_0 or t == Q4_1
        bs = (18 if t == Q4_0 else 20) if four else (22 if t == Q5_0 else 24)
        for ib in range(nbk):
            o = addr + ib * bs
            d, c, co = _block_dc(t, o)
            kd[ib] = d
            kc[ib] = c
            if four:
                _q4_block_i8(o + co, qa + ib * QK, 0)
            else:
                _q5_block_i8(o + co, _ld32(o + co - 4), qa + ib * QK, 0)
    else:
        return ERR_UNSUPPORTED
    return 0


@_jit
def quant_q_row(x, xo, qv, qo, qd, qs, bo, n, q8_1):
    """q row x[xo:xo+n] -> 8-bit blocks as ggml-cpu's FA converts Q: the from_float of K's
    vec_dot_type (Q8_1 for Q4_1/Q5_1 K, else Q8_0), i.e. quants.nb's twins of its AVX2
    quantizers (id = 127/amax, ties to even, d stored as F16): qv[qo:] (int8), scale
    qd[bo+b] (the F16 d), qs[bo+b] = d·Σq in F32 (Q8_0) or Q8_1's stored s (F16)."""
    nbk = n // QK
    bs = 36 if q8_1 else 34
    co = 4 if q8_1 else 2
    blk = np.empty(bs * nbk, np.uint8)
    if q8_1:
        qnb.quantize_row_q8_1_cpu(x[xo:xo + n], blk, n)
    else:
        qnb.quantize_row_q8_0_cpu(x[xo:xo + n], blk, n)
    bi = blk.view(np.int8)
    for ib in range(nbk):
        o = ib * bs
        d = f16_to_f32(np.uint16(blk[o]) | (np.uint16(blk[o + 1]) << 8))
        s = 0
        for j in range(QK):
            v = bi[o + co + j]
            qv[qo + ib * QK + j] = v
            s += np.int32(v)
        qd[bo + ib] = d
        if q8_1:
            qs[bo + ib] = f16_to_f32(np.uint16(blk[o + 2]) | (np.uint16(blk[o + 3]) << 8))
        else:
            qs[bo + ib] = d * np.float32(s)
