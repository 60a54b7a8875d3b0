"""Flash attention's arithmetic (kernels/attention.py): q·K dots, p·V accumulation, exp.

  vexp          the exp of the scores, a polynomial LLVM can vectorize; exp_block, its
                steps as VL-lane IR over a row's block (with the sum and the zero count)
  integer dots  one q row quantized to 8-bit blocks against 4 quantized K rows (decoded to
                8-bit codes by fa_rows.row_to_i8): ggml's AVX2 sequence (pmaddubsw,
                pmaddwd) as LLVM intrinsics, with portable twins for CPUs without AVX2
                (HAVE_AVX2 picks dot_q8_1x4 / dot_u8_1x4 at import)
  float loops   dots and V accumulation over F32 rows, for head sizes that are not whole
                vectors (LLVM vectorizes them)
  SIMD dispatch qk4/qk1/pv4/pv1x4/pv1 call kernels/fa_simd.py's micro-kernel for a row type
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.core import types
from numba.extending import intrinsic

from ....quants.nb_scalar import cast_intrinsic
from ..intrinsics import f32_array
from ..intrinsics import i8_array
from ..intrinsics import ptr_of
from ..intrinsics import u8_array
from . import fa_simd
from . import simd
from .fa_consts import _F0
from .fa_consts import _F1
from .fa_consts import _FM
from .fa_consts import _jit_inline
from .fa_rows import BF16
from .fa_rows import F16
from .fa_rows import F32
from .fa_rows import Q4_0
from .fa_rows import Q8_0
from .fa_rows import QK
from .fa_rows import _splat
from .simd import VL

# --- vexp -----------------------------------------------------------------------------------------

_i32_as_f32 = cast_intrinsic(types.int32, types.float32, lambda b, u: b.bitcast(u, ir.FloatType()),
                             "Bit cast int32 -> float32 (elementwise: vectorizes).")


_LOG2E = np.float32(1.44269504088896341)
_LN2HI = np.float32(0.693359375)
_LN2LO = np.float32(-2.12194440e-4)
_XMIN = np.float32(-87.33654)
_XMAX = np.float32(88.3762626647949)


@numba.njit(nogil=True, cache=True, fastmath=_FM, inline="always")
def vexp(x):
    """expf that LLVM can vectorize (Cephes polynomial, rel. error < 1e-7 on [-80, 88]);
    exp(-inf) = 0 and anything below -87.3 gives 0 (no subnormals)."""
    xc = min(max(x, _XMIN), _XMAX)
    n = np.float32(math.floor(xc * _LOG2E + np.float32(0.5)))
    r = xc - n * _LN2HI - n * _LN2LO
    p = np.float32(1.9875691500E-4)
    p = p * r + np.float32(1.3981999507E-3)
    p = p * r + np.float32(8.3334519073E-3)
    p = p * r + np.float32(4.1665795894E-2)
    p = p * r + np.float32(1.6666665459E-1)
    p = p * r + np.float32(5.0000001201E-1)
    p = p * r * r + r + _F1
    y = p * _i32_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return y if x >= _XMIN else _F0


def _exp_block_ir(b, addrs, n, mrs, outs):
    """vexp's polynomial as explicit VL-lane vector code (LLVM's loop vectorizer stops at
    256 bits here), the same steps as vexp, fused: p = vexp(x - mr) in place over n floats
    (a multiple of VL) of each row (addrs[i], mrs[i]); outs[i][0] = the row's Σp (VL lane
    sums, then a tree), outs[i][1] = how many of its p are 0. Rows given together share a
    loop: their steps interleave (one row's chain of dependent steps left the FP pipes
    half idle), each row's arithmetic its own."""
    f32 = ir.FloatType()
    i32 = ir.IntType(32)
    fv = ir.VectorType(f32, VL)
    iv = ir.VectorType(i32, VL)

    def c(x):
        return ir.Constant(fv, [float(x)] * VL)

    mrvs = [_splat(b, mr, VL) for mr in mrs]
    saccs = [cgutils.alloca_once_value(b, ir.Constant(fv, [0.0] * VL)) for _ in addrs]
    zaccs = [cgutils.alloca_once_value(b, ir.Constant(iv, [0] * VL)) for _ in addrs]
    with cgutils.for_range(b, b.udiv(n, ir.Constant(n.type, VL))) as loop:
        for addr, mrv, sacc, zacc in zip(addrs, mrvs, saccs, zaccs):
            a = b.add(addr, b.mul(loop.index, ir.Constant(n.type, VL * 4)))
            ptr = b.inttoptr(a, fv.as_pointer())
            x = b.fsub(b.load(ptr, align=4), mrv)
            lo = b.fcmp_ordered(">", x, c(_XMIN))
            xc = b.select(lo, x, c(_XMIN))
            xc = b.select(b.fcmp_ordered("<", xc, c(_XMAX)), xc, c(_XMAX))
            nf = simd._intr(b, f"llvm.floor.v{VL}f32", fv, [simd._fma(b, xc, c(_LOG2E), c(0.5))])
            r = simd._fma(b, nf, c(-_LN2HI), xc)
            r = simd._fma(b, nf, c(-_LN2LO), r)
            p = c(np.float32(1.9875691500E-4))
            for k in (1.3981999507E-3, 8.3334519073E-3, 4.1665795894E-2, 1.6666665459E-1,
                      5.0000001201E-1):
                p = simd._fma(b, p, r, c(np.float32(k)))
            p = b.fadd(simd._fma(b, b.fmul(p, r), r, r), c(1.0))
            e = b.shl(b.add(b.fptosi(nf, iv), ir.Constant(iv, [127] * VL)),
                      ir.Constant(iv, [23] * VL))
            y = b.fmul(p, b.bitcast(e, fv))
            y = b.select(b.fcmp_ordered(">=", x, c(_XMIN)), y, c(0.0))
            b.store(y, ptr, align=4)
            b.store(b.fadd(b.load(sacc), y), sacc)
            b.store(b.add(b.load(zacc), b.zext(b.fcmp_ordered("==", y, c(0.0)), iv)), zacc)
    for out, sacc, zacc in zip(outs, saccs, zaccs):
        o = b.inttoptr(out, f32.as_pointer())
        b.store(simd._hsum(b, b.load(sacc)), o)
        # one reduction (a shuffle tree), not VL extract-and-adds
        zs = simd._intr(b, f"llvm.vector.reduce.add.v{VL}i32", i32, [b.load(zacc)])
        b.store(b.sitofp(zs, f32), b.gep(o, [ir.Constant(i32, 1)]))


@intrinsic
def exp_block(typingctx, addr, n, mr, out):
    """exp_block(addr, n, mr, out): p = vexp(x - mr) for the n float32 at addr (n a multiple
    of VL), out[0] = their sum, out[1] = how many are 0 (float32 at out)."""
    if not (isinstance(addr, types.Integer) and isinstance(n, types.Integer)
            and isinstance(out, types.Integer) and mr == types.float32):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        a, k, m, o = args
        fnty = ir.FunctionType(ir.VoidType(), [i64, i64, ir.FloatType(), i64])
        fn = builder.module.globals.get("pyggml_fa_exp_block")
        if fn is None:
            fn = ir.Function(builder.module, fnty, name="pyggml_fa_exp_block")
            fn.linkage = "internal"
            fb = ir.IRBuilder(fn.append_basic_block("entry"))
            fa, fk, fm, fo = fn.args
            _exp_block_ir(fb, [fa], fk, [fm], [fo])
            fb.ret_void()
        builder.call(fn, [context.cast(builder, a, sig.args[0], types.int64),
                          context.cast(builder, k, sig.args[1], types.int64), m,
                          context.cast(builder, o, sig.args[3], types.int64)])
        return context.get_dummy_value()
    return types.none(addr, n, mr, out), codegen


def _exp_rows_ir(b, addr, n, nr, rstride, mrs, out):
    """_exp_block_ir over nr rows (rstride bytes apart), row r's max at mrs[r], its sum and
    zero count at out[2r], out[2r + 1]: one call for a tile's rows, two rows a loop (their
    steps interleave), then an odd last row."""
    f32p = ir.FloatType().as_pointer()

    def rows(r0, k):
        rs = [b.add(r0, ir.Constant(r0.type, i)) for i in range(k)]
        _exp_block_ir(b, [b.add(addr, b.mul(r, rstride)) for r in rs], n,
                      [b.load(b.gep(b.inttoptr(mrs, f32p), [r])) for r in rs],
                      [b.add(out, b.mul(r, ir.Constant(r.type, 8))) for r in rs])
    two = ir.Constant(nr.type, 2)
    with cgutils.for_range(b, b.udiv(nr, two)) as loop:
        rows(b.mul(loop.index, two), 2)
    with b.if_then(b.icmp_unsigned("!=", b.urem(nr, two), ir.Constant(nr.type, 0))):
        rows(b.sub(nr, ir.Constant(nr.type, 1)), 1)


def _void(ir_body):
    """An LLVM function body that returns nothing after ir_body (simd._intrinsic_n's)."""
    def body(b, *args):
        ir_body(b, *args)
        b.ret_void()
    return body


# exp_rows(addr, n, nr, rstride, mrs, out): exp_block of nr rows of n float32 (n a multiple
# of VL) rstride bytes apart, row r against mrs[r]; out[2r] = row r's sum, out[2r + 1] = its
# zero count (float32 arrays at mrs and out). Inlinable: one call per block of a tile.
exp_rows = simd._intrinsic_n("pyggml_fa_exp_rows", 6, _void(_exp_rows_ir), noinline=False)


def _max_rows_ir(b, addr, n, nr, rstride, out):
    """fa_tile._block_max of nr rows in VL-lane int32 vectors (the same integer order of the
    floats, so the same max, NaN included): out[r] = row r's max."""
    i32 = ir.IntType(32)
    iv = ir.VectorType(i32, VL)
    f32p = ir.FloatType().as_pointer()
    m31 = ir.Constant(iv, [0x7FFFFFFF] * VL)
    s31 = ir.Constant(iv, [31] * VL)

    def key(x):
        return b.xor(x, b.and_(b.ashr(x, s31), m31))
    with cgutils.for_range(b, nr) as rl:
        row = b.add(addr, b.mul(rl.index, rstride))
        km = cgutils.alloca_once_value(b, ir.Constant(iv, [-2147483648] * VL))
        with cgutils.for_range(b, b.udiv(n, ir.Constant(n.type, VL))) as loop:
            a = b.add(row, b.mul(loop.index, ir.Constant(n.type, VL * 4)))
            k = key(b.load(b.inttoptr(a, iv.as_pointer()), align=4))
            m = b.load(km)
            b.store(b.select(b.icmp_signed(">", k, m), k, m), km)
        mx = simd._intr(b, f"llvm.vector.reduce.smax.v{VL}i32", i32, [b.load(km)])
        mx = b.xor(mx, b.and_(b.ashr(mx, ir.Constant(i32, 31)), ir.Constant(i32, 0x7FFFFFFF)))
        b.store(b.bitcast(mx, ir.FloatType()), b.gep(b.inttoptr(out, f32p), [rl.index]))


# max_rows(addr, n, nr, rstride, out): out[r] = the max of row r's n float32 (n a multiple of
# VL; rows rstride bytes apart), as fa_tile._block_max (-inf lowest, NaN propagates).
max_rows = simd._intrinsic_n("pyggml_fa_max_rows", 5, _void(_max_rows_ir), noinline=False)


def _score_rows_ir(b, sc, mv, n, nr, rstride, mrix, mstride, scale):
    """fa_tile._score_row without soft-capping for nr rows in VL-lane vectors, the same
    arithmetic (one fma, as LLVM contracts the scalar code): row r's n dots at sc + r·rstride
    become dot·scale + m, or -inf where m (its mask row, mrix[r]·mstride bytes into mv) is
    -inf. Each row's call of the scalar loop cost as much as its vector work."""
    f32 = ir.FloatType()
    fv = ir.VectorType(f32, VL)
    i64 = ir.IntType(64)
    sv = _splat(b, scale, VL)
    ninf = ir.Constant(fv, [float("-inf")] * VL)
    with cgutils.for_range(b, nr) as rl:
        row = b.add(sc, b.mul(rl.index, rstride))
        mi = b.load(b.gep(b.inttoptr(mrix, i64.as_pointer()), [rl.index]))
        mrow = b.add(mv, b.mul(mi, mstride))
        with cgutils.for_range(b, b.udiv(n, ir.Constant(n.type, VL))) as loop:
            off = b.mul(loop.index, ir.Constant(n.type, VL * 4))
            sp = b.inttoptr(b.add(row, off), fv.as_pointer())
            m = b.load(b.inttoptr(b.add(mrow, off), fv.as_pointer()), align=4)
            x = simd._fma(b, b.load(sp, align=4), sv, m)
            b.store(b.select(b.fcmp_unordered("!=", m, ninf), x, ninf), sp, align=4)


@intrinsic
def score_rows(typingctx, sc, mv, n, nr, rstride, mrix, mstride, scale):
    """score_rows(sc, mv, n, nr, rstride, mrix, mstride, scale): fa_tile._score_row (no
    soft-cap) of nr rows of n float32 (n a multiple of VL) in place: rows rstride bytes
    apart at sc, row r's mask values at mv + mrix[r]·mstride (mrix int64 at its address)."""
    ints = (sc, mv, n, nr, rstride, mrix, mstride)
    if not (all(isinstance(a, types.Integer) for a in ints) and scale == types.float32):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64] * 7 + [ir.FloatType()])
        fn = builder.module.globals.get("pyggml_fa_score_rows")
        if fn is None:
            fn = ir.Function(builder.module, fnty, name="pyggml_fa_score_rows")
            fn.linkage = "internal"
            fb = ir.IRBuilder(fn.append_basic_block("entry"))
            _score_rows_ir(fb, *fn.args)
            fb.ret_void()
        a = [context.cast(builder, v, t, types.int64) for v, t in zip(args[:7], sig.args[:7])]
        builder.call(fn, a + [args[7]])
        return context.get_dummy_value()
    return types.none(*ints, scale), codegen


# --- integer dots of 8-bit q blocks with quantized K rows -----------------------------------------

HAVE_AVX2 = simd.HAVE_AVX2


@numba.njit(nogil=True, cache=True, inline="always")
def _dot32_i8_portable(a, b):
    x = i8_array(a, 32)
    y = i8_array(b, 32)
    s = np.int32(0)
    for j in range(32):
        s += np.int32(np.int16(x[j]) * np.int16(y[j]))
    return s


@numba.njit(nogil=True, cache=True, inline="always")
def _dot_q8_row_portable(kaddr, qaddr, kdaddr, qdaddr, nb):
    kd = f32_array(kdaddr, nb)
    qd = f32_array(qdaddr, nb)
    s = _F0
    for b in range(nb):
        s += kd[b] * qd[b] * np.float32(_dot32_i8_portable(kaddr + 32 * b, qaddr + 32 * b))
    return s


def _hsum4(builder, a):
    """Horizontal sums of four <8 x float>: pairwise (even + odd lanes) three times."""
    i32 = ir.IntType(32)

    def pair(x, y, n):
        ev = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, n), list(range(0, 2 * n, 2))))
        od = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, n), list(range(1, 2 * n, 2))))
        return builder.fadd(ev, od)
    s01 = pair(a[0], a[1], 8)          # [a01 a23 a45 a67 b01 b23 b45 b67]
    s23 = pair(a[2], a[3], 8)
    s4 = pair(s01, s23, 8)             # [a0-3 a4-7 b0-3 b4-7 c.. c.. d.. d..]
    s = pair(s4, s4, 4)                # [a b c d]
    return [builder.extract_element(s, ir.Constant(i32, u)) for u in range(4)]


_I8X32 = ir.VectorType(ir.IntType(8), 32)
_I16X16 = ir.VectorType(ir.IntType(16), 16)
_F32X8 = ir.VectorType(ir.FloatType(), 8)


def _avx2_start(context, builder, sig, args):
    """What both integer dots start with: the arguments as i64, ggml's AVX2 pair
    pmaddubsw (u8 x i8 -> pairs summed to i16) and pmaddwd (i16 pairs -> i32), and four
    8-lane float accumulators (one per K row)."""
    mod = builder.module
    i32x8 = ir.VectorType(ir.IntType(32), 8)
    f1 = cgutils.get_or_insert_function(mod, ir.FunctionType(_I16X16, [_I8X32, _I8X32]),
                                        "llvm.x86.avx2.pmadd.ub.sw")
    f2 = cgutils.get_or_insert_function(mod, ir.FunctionType(i32x8, [_I16X16, _I16X16]),
                                        "llvm.x86.avx2.pmadd.wd")
    a64 = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_F32X8, None)) for _ in range(4)]
    return a64, f1, f2, accs


def _acc_block(builder, acc, p32, kd, qd):
    """acc += the block's 8 integer lane sums p32 times the two scales kd·qd."""
    scv = _splat(builder, builder.fmul(kd, qd), 8)
    builder.store(builder.fadd(builder.load(acc),
                               builder.fmul(builder.sitofp(p32, _F32X8), scv)), acc)


@intrinsic
def _dot_q8_1x4_avx2(typingctx, kaddr, qaddr, kdaddr, qdaddr, nb):
    """One q row (8-bit blocks) against 4 consecutive K rows (8-bit blocks, rows nb*32 bytes
    apart; their scales nb floats apart): 4 sums of kd·qd·(integer block dot), with four
    8-lane float accumulators (the q block is loaded and sign-split once for all four)."""
    if not all(isinstance(a, types.Integer) for a in (kaddr, qaddr, kdaddr, qdaddr, nb)):
        return None
    rtype = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i8x32 = _I8X32
        a64, f1, f2, accs = _avx2_start(context, builder, sig, args)
        zero = ir.Constant(i8x32, None)
        ones = ir.Constant(_I16X16, [1] * 16)
        fptr = ir.FloatType().as_pointer()
        rowb = builder.mul(a64[4], ir.Constant(i64, 32))        # bytes per K row
        rows = builder.mul(a64[4], ir.Constant(i64, 4))         # bytes per row of scales
        with cgutils.for_range(builder, a64[4]) as loop:
            b = loop.index
            off = builder.mul(b, ir.Constant(i64, 32))
            off4 = builder.mul(b, ir.Constant(i64, 4))
            vq = builder.load(builder.inttoptr(builder.add(a64[1], off), i8x32.as_pointer()), align=1)
            qd = builder.load(builder.inttoptr(builder.add(a64[3], off4), fptr))
            for u in range(4):
                ko = builder.add(builder.add(a64[0], off), builder.mul(rowb, ir.Constant(i64, u)))
                va = builder.load(builder.inttoptr(ko, i8x32.as_pointer()), align=1)
                neg = builder.icmp_signed("<", va, zero)
                ax = builder.select(neg, builder.sub(zero, va), va)
                sy = builder.select(neg, builder.sub(zero, vq), vq)
                p32 = builder.call(f2, [builder.call(f1, [ax, sy]), ones])
                kdo = builder.add(builder.add(a64[2], off4), builder.mul(rows, ir.Constant(i64, u)))
                kd = builder.load(builder.inttoptr(kdo, fptr))
                _acc_block(builder, accs[u], p32, kd, qd)
        return context.make_tuple(builder, rtype, _hsum4(builder, [builder.load(x) for x in accs]))
    return rtype(kaddr, qaddr, kdaddr, qdaddr, nb), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def _dot_q8_1x4_portable(kaddr, qaddr, kdaddr, qdaddr, nb):
    s0 = _dot_q8_row_portable(kaddr, qaddr, kdaddr, qdaddr, nb)
    s1 = _dot_q8_row_portable(kaddr + 32 * nb, qaddr, kdaddr + 4 * nb, qdaddr, nb)
    s2 = _dot_q8_row_portable(kaddr + 64 * nb, qaddr, kdaddr + 8 * nb, qdaddr, nb)
    s3 = _dot_q8_row_portable(kaddr + 96 * nb, qaddr, kdaddr + 12 * nb, qdaddr, nb)
    return (s0, s1, s2, s3)


dot_q8_1x4 = _dot_q8_1x4_avx2 if HAVE_AVX2 else _dot_q8_1x4_portable


@intrinsic
def _dot_u8_1x4_avx2(typingctx, kaddr, qaddr, kdaddr, qdaddr, kcaddr, qsaddr, nb):
    """As dot_q8_1x4 for unsigned 4/5-bit K codes (0..31) against signed q: pmaddubsw
    takes them as they are (no sign juggling; 31·127·2 cannot saturate), plus the codes'
    offset/min part: sum over blocks of kc[b]·qs[b] (kc per K row, qs = q scale·q sum)."""
    if not all(isinstance(a, types.Integer)
               for a in (kaddr, qaddr, kdaddr, qdaddr, kcaddr, qsaddr, nb)):
        return None
    rtype = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i8x32 = _I8X32
        f32 = ir.FloatType()
        a64, f1, f2, accs = _avx2_start(context, builder, sig, args)
        kaddr_, qaddr_, kdaddr_, qdaddr_, kcaddr_, qsaddr_, nb_ = a64
        cors = [cgutils.alloca_once_value(builder, ir.Constant(f32, 0.0)) for _ in range(4)]
        ones = ir.Constant(_I16X16, [1] * 16)
        fptr = f32.as_pointer()
        rowb = builder.mul(nb_, ir.Constant(i64, 32))
        rows = builder.mul(nb_, ir.Constant(i64, 4))
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            off = builder.mul(b, ir.Constant(i64, 32))
            off4 = builder.mul(b, ir.Constant(i64, 4))
            vq = builder.load(builder.inttoptr(builder.add(qaddr_, off), i8x32.as_pointer()), align=1)
            qd = builder.load(builder.inttoptr(builder.add(qdaddr_, off4), fptr))
            qs = builder.load(builder.inttoptr(builder.add(qsaddr_, off4), fptr))
            for u in range(4):
                ko = builder.add(builder.add(kaddr_, off), builder.mul(rowb, ir.Constant(i64, u)))
                vk = builder.load(builder.inttoptr(ko, i8x32.as_pointer()), align=1)
                p32 = builder.call(f2, [builder.call(f1, [vk, vq]), ones])
                so = builder.add(off4, builder.mul(rows, ir.Constant(i64, u)))
                kd = builder.load(builder.inttoptr(builder.add(kdaddr_, so), fptr))
                kc = builder.load(builder.inttoptr(builder.add(kcaddr_, so), fptr))
                _acc_block(builder, accs[u], p32, kd, qd)
                builder.store(builder.fadd(builder.load(cors[u]), builder.fmul(kc, qs)), cors[u])
        sums = _hsum4(builder, [builder.load(x) for x in accs])
        res = [builder.fadd(sums[u], builder.load(cors[u])) for u in range(4)]
        return context.make_tuple(builder, rtype, res)
    return rtype(kaddr, qaddr, kdaddr, qdaddr, kcaddr, qsaddr, nb), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def _dot_u8_1x4_portable(kaddr, qaddr, kdaddr, qdaddr, kcaddr, qsaddr, nb):
    q = i8_array(qaddr, 32 * nb)
    qd = f32_array(qdaddr, nb)
    qs = f32_array(qsaddr, nb)
    s0 = _F0
    s1 = _F0
    s2 = _F0
    s3 = _F0
    for u in range(4):
        k = u8_array(kaddr + u * 32 * nb, 32 * nb)
        kd = f32_array(kdaddr + u * 4 * nb, nb)
        kc = f32_array(kcaddr + u * 4 * nb, nb)
        t = _F0
        for b in range(nb):
            isum = 0
            for j in range(32):
                isum += np.int32(k[b * 32 + j]) * np.int32(q[b * 32 + j])
            t += kd[b] * qd[b] * np.float32(isum) + kc[b] * qs[b]
        if u == 0:
            s0 = t
        elif u == 1:
            s1 = t
        elif u == 2:
            s2 = t
        else:
            s3 = t
    return (s0, s1, s2, s3)


dot_u8_1x4 = _dot_u8_1x4_avx2 if HAVE_AVX2 else _dot_u8_1x4_portable


# --- float loops: dots and accumulation ----------------------------------------------------------

@_jit_inline
def dot_1x4(q, qo, k, n):
    """Dots of one q row with 4 consecutive K rows k[0:n], k[n:2n]... (shared q loads)."""
    s0 = _F0
    s1 = _F0
    s2 = _F0
    s3 = _F0
    for i in range(n):
        x = q[qo + i]
        s0 += x * k[i]
        s1 += x * k[n + i]
        s2 += x * k[2 * n + i]
        s3 += x * k[3 * n + i]
    return (s0, s1, s2, s3)


@_jit_inline
def dot_2x4(q, qo0, qo1, k, n):
    """Dots of two q rows with 4 consecutive K rows: 8 sums, each K load shared by 2 rows
    and each q load by 4 keys (8 accumulators stay in registers)."""
    a0 = _F0
    a1 = _F0
    a2 = _F0
    a3 = _F0
    b0 = _F0
    b1 = _F0
    b2 = _F0
    b3 = _F0
    for i in range(n):
        x = q[qo0 + i]
        y = q[qo1 + i]
        k0 = k[i]
        k1 = k[n + i]
        k2 = k[2 * n + i]
        k3 = k[3 * n + i]
        a0 += x * k0
        a1 += x * k1
        a2 += x * k2
        a3 += x * k3
        b0 += y * k0
        b1 += y * k1
        b2 += y * k2
        b3 += y * k3
    return (a0, a1, a2, a3, b0, b1, b2, b3)


@_jit_inline
def axpy4(acc, ao, p0, p1, p2, p3, v, n):
    """acc[ao:ao+n] += p0·v[0:n] + p1·v[n:2n] + p2·v[2n:3n] + p3·v[3n:4n]."""
    for i in range(n):
        acc[ao + i] += p0 * v[i] + p1 * v[n + i] + p2 * v[2 * n + i] + p3 * v[3 * n + i]


@_jit_inline
def axpy(acc, ao, p, v, n):
    for i in range(n):
        acc[ao + i] += p * v[i]


@_jit_inline
def scale_acc(acc_addr, ao, f, n):
    """acc[ao:ao + n] *= f, acc float32 at acc_addr (a pointer: no negative-index code,
    so the loop vectorizes)."""
    acc = ptr_of(acc_addr, np.float32)
    for i in range(n):
        acc[ao + i] *= f


# --- SIMD products (kernels/fa_simd.py) over a group of 4 keys --------------------------------------
# qk: 4 (or 1) q rows against 4 K rows; pv: 4 (or 1) accumulator rows += p · 4 V rows. Rows
# of the types simd reads (F32/F16/BF16/Q8_0/Q4_0) are read where they lie, others from
# their F32 conversion (kf/vf). The type argument picks the variant.

@_jit_inline
def reads_in_place(t, n):
    """Can simd read rows of type t and n values in place?"""
    if t == F32 or t == F16 or t == BF16:
        return n % VL == 0
    return (t == Q8_0 or t == Q4_0) and n % QK == 0


@_jit_inline
def qk4(t, n, q, qstride, k0, k1, k2, k3, out, pf):
    if t == F16:
        fa_simd.qk_4x4_f16(n, q, qstride, k0, k1, k2, k3, out, pf)
    elif t == Q4_0:
        fa_simd.qk_4x4_q4_0(n, q, qstride, k0, k1, k2, k3, out, pf)
    elif t == Q8_0:
        fa_simd.qk_4x4_q8_0(n, q, qstride, k0, k1, k2, k3, out, pf)
    elif t == BF16:
        fa_simd.qk_4x4_bf16(n, q, qstride, k0, k1, k2, k3, out, pf)
    else:
        fa_simd.qk_4x4_f32(n, q, qstride, k0, k1, k2, k3, out, pf)


@_jit_inline
def qk1(t, n, q, k0, k1, k2, k3, out, pf):
    if t == F16:
        fa_simd.qk_1x4_f16(n, q, 0, k0, k1, k2, k3, out, pf)
    elif t == Q4_0:
        fa_simd.qk_1x4_q4_0(n, q, 0, k0, k1, k2, k3, out, pf)
    elif t == Q8_0:
        fa_simd.qk_1x4_q8_0(n, q, 0, k0, k1, k2, k3, out, pf)
    elif t == BF16:
        fa_simd.qk_1x4_bf16(n, q, 0, k0, k1, k2, k3, out, pf)
    else:
        fa_simd.qk_1x4_f32(n, q, 0, k0, k1, k2, k3, out, pf)


@_jit_inline
def pv4(t, n, acc, astride, p, pstride, v0, v1, v2, v3, pf):
    if t == F16:
        fa_simd.pv_4x4_f16(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    elif t == Q4_0:
        fa_simd.pv_4x4_q4_0(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    elif t == Q8_0:
        fa_simd.pv_4x4_q8_0(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    elif t == BF16:
        fa_simd.pv_4x4_bf16(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    else:
        fa_simd.pv_4x4_f32(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)


@_jit_inline
def pv1x4(t, n, acc, p, v0, v1, v2, v3, pf):
    if t == F16:
        fa_simd.pv_1x4_f16(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    elif t == Q4_0:
        fa_simd.pv_1x4_q4_0(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    elif t == Q8_0:
        fa_simd.pv_1x4_q8_0(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    elif t == BF16:
        fa_simd.pv_1x4_bf16(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    else:
        fa_simd.pv_1x4_f32(n, acc, 0, p, 0, pf, v0, v1, v2, v3)


@_jit_inline
def pv1(t, n, acc, p, v0, pf):
    if t == F16:
        fa_simd.pv_1x1_f16(n, acc, 0, p, 0, pf, v0)
    elif t == Q4_0:
        fa_simd.pv_1x1_q4_0(n, acc, 0, p, 0, pf, v0)
    elif t == Q8_0:
        fa_simd.pv_1x1_q8_0(n, acc, 0, p, 0, pf, v0)
    elif t == BF16:
        fa_simd.pv_1x1_bf16(n, acc, 0, p, 0, pf, v0)
    else:
        fa_simd.pv_1x1_f32(n, acc, 0, p, 0, pf, v0)


@_jit_inline
def qk_blk(t, n, q, qstride, kbase, knb1, ng, out, ostride, pf):
    if t == F16:
        fa_simd.qk_blk_f16(n, q, qstride, kbase, knb1, ng, out, ostride, pf)
    elif t == Q4_0:
        fa_simd.qk_blk_q4_0(n, q, qstride, kbase, knb1, ng, out, ostride, pf)
    elif t == Q8_0:
        fa_simd.qk_blk_q8_0(n, q, qstride, kbase, knb1, ng, out, ostride, pf)
    elif t == BF16:
        fa_simd.qk_blk_bf16(n, q, qstride, kbase, knb1, ng, out, ostride, pf)
    else:
        fa_simd.qk_blk_f32(n, q, qstride, kbase, knb1, ng, out, ostride, pf)
