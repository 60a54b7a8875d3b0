"""Flash attention kernels: FLASH_ATTN_EXT and FLASH_ATTN_EXT_WITH_STATE (one body for both).

The math is an online softmax per query row (ggml's ops.cpp flash_attn_ext_f16_one_chunk),
reorganized for memory traffic:

  tiles     query rows that read the same K/V rows are processed together: the q heads of
            one KV head (GQA) times a few batch positions, at most RMAX rows. Each K row is
            dotted with every row of the tile and each V row accumulated into every row
            (F32 accumulators), read once per 4 rows. The cache is never dequantized as a
            whole: a row at a time, in registers or into per-thread scratch.
  keys      in blocks of KB: scores of the block (masked pairs skipped; a block masked for
            every row of the tile, e.g. above the causal diagonal, is not even read), one
            max/rescale per row and block, exp of the scores (a vectorizable polynomial
            expf), then the V accumulation. Keys masked for a row never touch it, so junk
            in unused cache slots cannot leak (as in ggml).
  products  kernels/simd.py's micro-kernels, 4 rows x 4 keys at a time (16 dots summed by
            a transposing tree; V added into 4 accumulator rows): F32/F16/BF16/Q8_0/Q4_0
            K/V rows are read in place and converted in registers (F16C, nibble
            unpacking), with software prefetch a few key groups ahead (decode streams
            the cache from DRAM: without it 2 threads reach ~60% of the bandwidth);
            other types are converted to F32 rows once per tile. Quantized K with
            PREC_DEFAULT quantizes the q rows to 8-bit blocks (ggml's vec_dot_type
            Q8_0/Q8_1) and uses integer dots per 32-block times the two scales (plus
            min·sum for Q4_1/Q5_1): Q4_0 through AVX512-VNNI straight from the cache,
            the others with ggml's AVX2 sequence on decoded rows (a portable loop
            without AVX2); PREC_F32 reads the dequantized K. Head sizes that are not
            whole vectors take plain loops (LLVM-vectorized).
  threads   work units are handed out through an atomic counter (ggml's chunking: a thread
            that starts late, or runs on a busy core, simply takes fewer). When there are
            few tiles and many keys (decode: one query, n_batch = 1, few KV heads), every
            tile's keys are split into chunks of CHUNK keys, each a unit: partials (M, S,
            acc) go to the work buffer and the last thread to finish merges them with the
            LSE rule, chunks in order. So 2 threads help one query, and the result is
            bitwise the same for any thread count (the split does not depend on it).
  with_state the same tiles run over the hot and then the cold segment (each with its own
            K/V types and mask, q converted per segment), and the finished row merges with
            the incoming state (M, S) and o_prev, then writes state and output
            (pyggml.attention.state has the rule). When o_prev is None the first thread
            to arrive checks that the state is fresh before any unit is handed out: a
            failure (ERR_STATE) leaves state and output untouched.

Shared counters: the kernel ABI has no per-node scratch that starts at zero, so the
counters live in four words of the node's own descriptor (the copies of op_params words
12..15, which these ops never set; the rows persist between computes). Every run each
thread takes an arrival ticket; the first of a run (ticket % n_tasks == 0) resets the unit
counter, runs the state check and publishes (run, verdict); the others wait only for that
(microseconds), never for each other.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import llvmlite.binding as _llb
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ....quants import nb as qnb
from ....types import GGMLType, TRAITS, FA_KV_TYPES
from ..desc import (DST, SRC0, SRC1, SRC2, SRC3, SRC4, SRC5, SRC6, SRC7, SRC8, PARAMS,
                    ERR_STATE, ERR_WORK_SIZE, ERR_UNSUPPORTED, H_NTASKS,
                    param_f32, param_i32, set_error, t_addr, t_nb, t_ne, t_type, wdata, wsize)
from ..intrinsics import (atomic_add, atomic_load, atomic_store, cpu_pause, f32_array,
                          i8_array, ptr_of, u8_array, u16_array)
from . import kernel, simd
from .simd import VL

F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
Q4_0, Q4_1, Q5_0 = int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0)
Q5_1, Q8_0 = int(GGMLType.Q5_1), int(GGMLType.Q8_0)
PREC_F32 = 10

RMAX = 32          # query rows per tile
KB = 32            # keys per block
KG = 4             # keys per group inside a block (K rows dotted / V rows accumulated together)
QK = 32            # quant block
CHUNK = 512        # keys per chunk when a tile's keys are split (few tiles, long KV)
SPLIT_TILES = 16   # split the keys when there are fewer tiles than this
PF_GROUPS = 8       # K/V rows read in place are prefetched this many key groups ahead
# descriptor words (copies of op_params words 12..15, which these ops never set) used as
# this node's shared counters; the descriptor rows persist between computes
W_TICKET = PARAMS + 12         # arrival tickets: run = ticket // n_tasks
W_READY = PARAMS + 13          # (run + 1) * 2 + (1 if the state check failed)
W_NEXT = PARAMS + 14           # next work unit of the current run
W_DONE = PARAMS + 15           # threads done (split mode: the last one merges)

L_TOTAL = 16       # scratch arrays per thread (see layout)

NEG_INF = np.float32(-np.inf)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)

_FM = {"contract", "reassoc", "afn", "arcp"}      # no nnan/ninf: -inf masks must work
_jit = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy")
_jit_inline = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy",
                         inline="always")


@intrinsic
def _ptr_addr(typingctx, p):
    """The integer address of a pointer (the kernel's int64* desc)."""
    if not isinstance(p, types.CPointer):
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], ir.IntType(64))
    return types.int64(p), codegen


@intrinsic
def _i32_as_f32(typingctx, u):
    """Bit cast int32 -> float32 (elementwise: vectorizes)."""
    if u != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(u), codegen


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


def _have_avx2() -> bool:
    try:
        return bool(_llb.get_host_cpu_features().get("avx2")) and numba.config.CPU_NAME is None
    except Exception:          # pragma: no cover  (no feature query: portable path)
        return False


HAVE_AVX2 = _have_avx2()


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
        i8x32 = ir.VectorType(ir.IntType(8), 32)
        i16x16 = ir.VectorType(ir.IntType(16), 16)
        i32x8 = ir.VectorType(ir.IntType(32), 8)
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        a64 = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
        mod = builder.module
        f1 = cgutils.get_or_insert_function(mod, ir.FunctionType(i16x16, [i8x32, i8x32]),
                                            "llvm.x86.avx2.pmadd.ub.sw")
        f2 = cgutils.get_or_insert_function(mod, ir.FunctionType(i32x8, [i16x16, i16x16]),
                                            "llvm.x86.avx2.pmadd.wd")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(f32x8, None)) for _ in range(4)]
        zero = ir.Constant(i8x32, None)
        ones = ir.Constant(i16x16, [1] * 16)
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
                scv = _splat(builder, builder.fmul(kd, qd), 8)
                acc = builder.load(accs[u])
                builder.store(builder.fadd(acc, builder.fmul(builder.sitofp(p32, f32x8), scv)),
                              accs[u])
        return context.make_tuple(builder, rtype, _hsum4(builder, [builder.load(x) for x in accs]))
    return rtype(kaddr, qaddr, kdaddr, qdaddr, nb), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def _dot_q8_1x4_portable(kaddr, qaddr, kdaddr, qdaddr, nb):
    s0 = _dot_q8_row_portable(kaddr, qaddr, kdaddr, qdaddr, nb)
    s1 = _dot_q8_row_portable(kaddr + 32 * nb, qaddr, kdaddr + 4 * nb, qdaddr, nb)
    s2 = _dot_q8_row_portable(kaddr + 64 * nb, qaddr, kdaddr + 8 * nb, qdaddr, nb)
    s3 = _dot_q8_row_portable(kaddr + 96 * nb, qaddr, kdaddr + 12 * nb, qdaddr, nb)
    return (s0, s1, s2, s3)


_dot_q8_1x4 = _dot_q8_1x4_avx2 if HAVE_AVX2 else _dot_q8_1x4_portable


@intrinsic
def _dot_u8_1x4_avx2(typingctx, kaddr, qaddr, kdaddr, qdaddr, kcaddr, qsaddr, nb):
    """As _dot_q8_1x4 for unsigned 4/5-bit K codes (0..31) against signed q: pmaddubsw
    takes them as they are (no sign juggling; 31·127·2 cannot saturate), plus the codes'
    offset/min part: sum over blocks of kc[b]·qs[b] (kc per K row, qs = q scale·q sum)."""
    if not all(isinstance(a, types.Integer)
               for a in (kaddr, qaddr, kdaddr, qdaddr, kcaddr, qsaddr, nb)):
        return None
    rtype = types.UniTuple(types.float32, 4)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i8x32 = ir.VectorType(ir.IntType(8), 32)
        i16x16 = ir.VectorType(ir.IntType(16), 16)
        i32x8 = ir.VectorType(ir.IntType(32), 8)
        f32 = ir.FloatType()
        f32x8 = ir.VectorType(f32, 8)
        a64 = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
        kaddr_, qaddr_, kdaddr_, qdaddr_, kcaddr_, qsaddr_, nb_ = a64
        mod = builder.module
        f1 = cgutils.get_or_insert_function(mod, ir.FunctionType(i16x16, [i8x32, i8x32]),
                                            "llvm.x86.avx2.pmadd.ub.sw")
        f2 = cgutils.get_or_insert_function(mod, ir.FunctionType(i32x8, [i16x16, i16x16]),
                                            "llvm.x86.avx2.pmadd.wd")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(f32x8, None)) for _ in range(4)]
        cors = [cgutils.alloca_once_value(builder, ir.Constant(f32, 0.0)) for _ in range(4)]
        ones = ir.Constant(i16x16, [1] * 16)
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
                scv = _splat(builder, builder.fmul(kd, qd), 8)
                acc = builder.load(accs[u])
                builder.store(builder.fadd(acc, builder.fmul(builder.sitofp(p32, f32x8), scv)),
                              accs[u])
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


_dot_u8_1x4 = _dot_u8_1x4_avx2 if HAVE_AVX2 else _dot_u8_1x4_portable


# --- block decoders as explicit LLVM vector code (generic IR: any target) -------------------------
# Numba's loop vectorizer does not get through the nibble unpacking (int64 promotion of the
# small ints), so the per-block decoders are written as vector IR directly: ~10x faster.

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


# --- scratch layout (bytes), per thread, then the split partials -----------------------------

def _al(x):
    return (x + 63) // 64 * 64


@_jit
def layout(dk, dv):
    """Byte offsets of the per-thread scratch: qf qi8 qd qs kf ki8 kd kc vf sc mv acc M S sl
    qx; offs[L_TOTAL] is the per-thread total."""
    nbk = (dk + QK - 1) // QK
    sizes = (RMAX * dk * 4, RMAX * dk, RMAX * nbk * 4, RMAX * nbk * 4, KG * dk * 4, KG * dk,
             KG * nbk * 4, KG * nbk * 4, KG * dv * 4, RMAX * KB * 4, RMAX * KB * 4,
             RMAX * dv * 4, RMAX * 4, RMAX * 4, RMAX * 4, RMAX * nbk * 16 * 4)
    offs = np.zeros(L_TOTAL + 1, dtype=np.int64)
    o = 0
    for i in range(L_TOTAL):
        offs[i] = o
        o += (sizes[i] + 63) // 64 * 64
    offs[L_TOTAL] = o
    return offs


@_jit
def n_split_chunks(n_tiles, n_kv_total):
    """Chunks of CHUNK keys per tile when there are too few tiles to keep threads busy and
    the keys are many (decode), else 1. Independent of the thread count, so results are
    bitwise the same for any number of threads."""
    if n_tiles >= SPLIT_TILES or n_kv_total < 2 * CHUNK:
        return 1
    return (n_kv_total + CHUNK - 1) // CHUNK


@_jit
def tiling(H, N, rk):
    """(heads per tile, positions per tile, head blocks per group, position blocks)."""
    hb = min(rk, RMAX)
    pb = max(1, RMAX // hb)
    if pb > N:
        pb = N
    return hb, pb, (rk + hb - 1) // hb, (N + pb - 1) // pb


def _group(node):
    """Heads per KV head shared by every segment's K and V (1 if they differ)."""
    H = node.src[0].ne[2]
    rs = set()
    for i in _segment_slots(node):
        rs.add(H // node.src[i].ne[2])
    return rs.pop() if len(rs) == 1 else 1


def _segment_slots(node):
    ws = node.op.name == "FLASH_ATTN_EXT_WITH_STATE"
    out = []
    for k, v in ((1, 2), (4, 5)) if ws else ((1, 2),):
        if node.src[k] is not None:
            out += [k, v]
    return out


def _n_kv_total(node):
    sl = _segment_slots(node)
    return sum(node.src[sl[i]].ne[1] for i in range(0, len(sl), 2))


def work_size(node, n_threads: int) -> int:
    q = node.src[0]
    dk, dv = q.ne[0], node.ne[0]
    per = int(layout(dk, dv)[L_TOTAL])
    nt = max(1, int(n_threads))
    rk = _group(node)
    hb, pb, nhb, npb = tiling(q.ne[2], q.ne[1], rk)
    n_tiles = q.ne[3] * (q.ne[2] // rk) * nhb * npb
    total = per * nt
    n_chunks = int(n_split_chunks(n_tiles, _n_kv_total(node)))
    if n_chunks > 1:
        total += _al(q.ne[1] * q.ne[2] * q.ne[3] * n_chunks * (2 + dv) * 4)
    return total + 64


# --- row conversions ------------------------------------------------------------------------------

@_jit_inline
def _f16(h):
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
            out[i] = _f16(h[i])
    elif t == F32:
        x = f32_array(addr, n)
        for i in range(n):
            out[i] = x[i]
    elif t == Q4_0:
        for ib in range(nbk):
            o = addr + ib * 18
            _q4_block_f32(o + 2, oa + ib * QK * 4, _f16(_ld16(o)), _F0, 8)
    elif t == Q8_0:
        for ib in range(nbk):
            o = addr + ib * 34
            _q8_block_f32(o + 2, oa + ib * QK * 4, _f16(_ld16(o)))
    elif t == Q4_1:
        for ib in range(nbk):
            o = addr + ib * 20
            _q4_block_f32(o + 4, oa + ib * QK * 4, _f16(_ld16(o)), _f16(_ld16(o + 2)), 0)
    elif t == Q5_0:
        for ib in range(nbk):
            o = addr + ib * 22
            _q5_block_f32(o + 6, _ld32(o + 2), oa + ib * QK * 4, _f16(_ld16(o)), _F0, 16)
    elif t == Q5_1:
        for ib in range(nbk):
            o = addr + ib * 24
            _q5_block_f32(o + 8, _ld32(o + 4), oa + ib * QK * 4, _f16(_ld16(o)),
                          _f16(_ld16(o + 2)), 0)
    elif t == BF16:
        h = u16_array(addr, n)
        for i in range(n):
            out[i] = qnb.bf16_to_f32(h[i])
    else:
        return ERR_UNSUPPORTED
    return 0


@_jit
def row_to_i8(t, addr, qv, kd, kc, n):
    """A quantized K row for integer dots -> its block scales kd and 8-bit values qv[:n]:
    Q8_0 signed; the 4/5-bit types as their unsigned codes (0..15 / 0..31), with
    kc = m - offset·d per block (Q4_0: -8d, Q5_0: -16d, Q4_1/Q5_1: their min m), so that
    the K·q dot is sum over blocks of d·qd·(codes·q) + kc·(qd·sum q)."""
    qa = qv.ctypes.data
    nbk = n // QK
    if t == Q4_0:
        for ib in range(nbk):
            o = addr + ib * 18
            d = _f16(_ld16(o))
            kd[ib] = d
            kc[ib] = np.float32(-8.0) * d
            _q4_block_i8(o + 2, qa + ib * QK, 0)
    elif t == Q8_0:
        for ib in range(nbk):
            o = addr + ib * 34
            kd[ib] = _f16(_ld16(o))
            kc[ib] = _F0
            src = i8_array(o + 2, QK)
            for j in range(QK):
                qv[ib * QK + j] = src[j]
    elif t == Q4_1:
        for ib in range(nbk):
            o = addr + ib * 20
            kd[ib] = _f16(_ld16(o))
            kc[ib] = _f16(_ld16(o + 2))
            _q4_block_i8(o + 4, qa + ib * QK, 0)
    elif t == Q5_0:
        for ib in range(nbk):
            o = addr + ib * 22
            d = _f16(_ld16(o))
            kd[ib] = d
            kc[ib] = np.float32(-16.0) * d
            _q5_block_i8(o + 6, _ld32(o + 2), qa + ib * QK, 0)
    elif t == Q5_1:
        for ib in range(nbk):
            o = addr + ib * 24
            kd[ib] = _f16(_ld16(o))
            kc[ib] = _f16(_ld16(o + 2))
            _q5_block_i8(o + 8, _ld32(o + 4), qa + ib * QK, 0)
    else:
        return ERR_UNSUPPORTED
    return 0


@_jit
def quant_q_row(x, xo, qv, qo, qd, qs, bo, n):
    """q row x[xo:xo+n] -> 8-bit blocks (ggml's Q8_0/Q8_1 activation format, scales in F32):
    qv[qo:] (int8), scale qd[bo+b], and qs[bo+b] = scale * sum of the block's values."""
    for ib in range(n // QK):
        amax = _F0
        for j in range(QK):
            a = abs(x[xo + ib * QK + j])
            if a > amax:
                amax = a
        d = amax / np.float32(127.0)
        idd = _F1 / d if d != _F0 else _F0
        s = 0
        for j in range(QK):
            y = x[xo + ib * QK + j] * idd          # roundf: half away from zero
            v = np.int32(y + np.float32(0.5)) if y >= _F0 else -np.int32(np.float32(0.5) - y)
            qv[qo + ib * QK + j] = np.int8(v)
            s += v
        qd[bo + ib] = d
        qs[bo + ib] = d * np.float32(s)


# --- dots and accumulation ------------------------------------------------------------------------

@_jit_inline
def _dot_1x4(q, qo, k, n):
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
def _dot_2x4(q, qo0, qo1, k, n):
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
def _axpy4(acc, ao, p0, p1, p2, p3, v, n):
    """acc[ao:ao+n] += p0·v[0:n] + p1·v[n:2n] + p2·v[2n:3n] + p3·v[3n:4n]."""
    for i in range(n):
        acc[ao + i] += p0 * v[i] + p1 * v[n + i] + p2 * v[2 * n + i] + p3 * v[3 * n + i]


@_jit_inline
def _axpy(acc, ao, p, v, n):
    for i in range(n):
        acc[ao + i] += p * v[i]


@_jit_inline
def _scale(acc, ao, f, n):
    for i in range(n):
        acc[ao + i] *= f


# --- SIMD products (kernels/simd.py) over a group of KG keys -------------------------------------
# qk: 4 (or 1) q rows against KG K rows; pv: 4 (or 1) accumulator rows += p · KG V rows. Rows
# of the types simd reads (F32/F16/BF16/Q8_0/Q4_0) are read where they lie, others from
# their F32 conversion (kf/vf). The type argument picks the variant.

@_jit_inline
def _direct(t, n):
    """Can simd read rows of type t and n values in place?"""
    if t == F32 or t == F16 or t == BF16:
        return n % VL == 0
    return (t == Q8_0 or t == Q4_0) and n % QK == 0


@_jit_inline
def _qk4(t, n, q, qstride, k0, k1, k2, k3, out, pf):
    if t == F16:
        simd.qk_4x4_f16(n, q, qstride, k0, k1, k2, k3, out, pf)
    elif t == Q4_0:
        simd.qk_4x4_q4_0(n, q, qstride, k0, k1, k2, k3, out, pf)
    elif t == Q8_0:
        simd.qk_4x4_q8_0(n, q, qstride, k0, k1, k2, k3, out, pf)
    elif t == BF16:
        simd.qk_4x4_bf16(n, q, qstride, k0, k1, k2, k3, out, pf)
    else:
        simd.qk_4x4_f32(n, q, qstride, k0, k1, k2, k3, out, pf)


@_jit_inline
def _qk1(t, n, q, k0, k1, k2, k3, out, pf):
    if t == F16:
        simd.qk_1x4_f16(n, q, 0, k0, k1, k2, k3, out, pf)
    elif t == Q4_0:
        simd.qk_1x4_q4_0(n, q, 0, k0, k1, k2, k3, out, pf)
    elif t == Q8_0:
        simd.qk_1x4_q8_0(n, q, 0, k0, k1, k2, k3, out, pf)
    elif t == BF16:
        simd.qk_1x4_bf16(n, q, 0, k0, k1, k2, k3, out, pf)
    else:
        simd.qk_1x4_f32(n, q, 0, k0, k1, k2, k3, out, pf)


@_jit_inline
def _pv4(t, n, acc, astride, p, pstride, v0, v1, v2, v3, pf):
    if t == F16:
        simd.pv_4x4_f16(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    elif t == Q4_0:
        simd.pv_4x4_q4_0(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    elif t == Q8_0:
        simd.pv_4x4_q8_0(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    elif t == BF16:
        simd.pv_4x4_bf16(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)
    else:
        simd.pv_4x4_f32(n, acc, astride, p, pstride, pf, v0, v1, v2, v3)


@_jit_inline
def _pv1x4(t, n, acc, p, v0, v1, v2, v3, pf):
    if t == F16:
        simd.pv_1x4_f16(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    elif t == Q4_0:
        simd.pv_1x4_q4_0(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    elif t == Q8_0:
        simd.pv_1x4_q8_0(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    elif t == BF16:
        simd.pv_1x4_bf16(n, acc, 0, p, 0, pf, v0, v1, v2, v3)
    else:
        simd.pv_1x4_f32(n, acc, 0, p, 0, pf, v0, v1, v2, v3)


@_jit_inline
def _pv1(t, n, acc, p, v0, pf):
    if t == F16:
        simd.pv_1x1_f16(n, acc, 0, p, 0, pf, v0)
    elif t == Q4_0:
        simd.pv_1x1_q4_0(n, acc, 0, p, 0, pf, v0)
    elif t == Q8_0:
        simd.pv_1x1_q8_0(n, acc, 0, p, 0, pf, v0)
    elif t == BF16:
        simd.pv_1x1_bf16(n, acc, 0, p, 0, pf, v0)
    else:
        simd.pv_1x1_f32(n, acc, 0, p, 0, pf, v0)


@_jit_inline
def _score(scp, mvp, o, b, u, x, scale, softcap):
    """Scaled (soft-capped) score of key u plus its mask value; -inf where masked."""
    x = x * scale
    if softcap != _F0:
        x = softcap * np.float32(math.tanh(x))
    m = mvp[b + u]
    scp[o + u] = x + m if m != NEG_INF else NEG_INF


@_jit_inline
def _score_group(scp, mvp, o, b, gn, x0, x1, x2, x3, scale, softcap):
    """_score of the group's gn (<= 4) keys (constant indices: no spilled tuples)."""
    _score(scp, mvp, o, b, 0, x0, scale, softcap)
    if gn > 1:
        _score(scp, mvp, o, b, 1, x1, scale, softcap)
    if gn > 2:
        _score(scp, mvp, o, b, 2, x2, scale, softcap)
    if gn > 3:
        _score(scp, mvp, o, b, 3, x3, scale, softcap)


# --- one tile over a key range of one segment ----------------------------------------------------

@_jit
def _tile_keys(R, rows_pos, rows_h, iq3, dk, dv, kt, ka, knb1, knb2, knb3, vt, va, vnb1, vnb2,
               vnb3, ik2, ik3, iv2, iv3, mt, ma, mnb1, mnb2, mnb3, mne2, mne3, j_begin, j_end,
               scale, softcap, int_dots, qf, qi8, qd, qs, qx, kf, ki8, kd, kc, vf, sc, mv,
               acc, Mr, Sr, slope, mrix, cv):
    """Online softmax of the tile's R rows over keys [j_begin, j_end) of one segment."""
    kbase = ka + ik2 * knb2 + ik3 * knb3
    vbase = va + iv2 * vnb2 + iv3 * vnb3
    nbk = dk // QK
    qi8_addr = np.int64(qi8.ctypes.data)
    ki8_addr = ki8.ctypes.data
    kd_addr = kd.ctypes.data
    qd_addr = qd.ctypes.data
    small_k = kt != Q8_0
    # raw pointers for the per-key bookkeeping (no negative-index wraparound code)
    scp = ptr_of(sc.ctypes.data, np.float32)
    mvp = ptr_of(mv.ctypes.data, np.float32)
    kc_addr = kc.ctypes.data
    qs_addr = qs.ctypes.data
    qf_addr = np.int64(qf.ctypes.data)
    kf_addr = np.int64(kf.ctypes.data)
    vf_addr = np.int64(vf.ctypes.data)
    sc_addr = np.int64(sc.ctypes.data)
    acc_addr = np.int64(acc.ctypes.data)
    s16 = np.empty(16, dtype=np.float32)
    s16_addr = np.int64(s16.ctypes.data)
    # SIMD products when the head sizes fit whole vectors, rows read in place when simd
    # reads their type; Q4_0 K with integer dots through VNNI
    k_i8 = int_dots and kt == Q4_0 and simd.HAVE_VNNI
    k_simd = not int_dots and dk % VL == 0
    k_direct = k_i8 or (k_simd and _direct(kt, dk))
    kq = kt if k_direct else F32
    v_simd = dv % VL == 0
    v_direct = v_simd and _direct(vt, dv)
    vq = vt if v_direct else F32
    qx_addr = np.int64(qx.ctypes.data)
    # software prefetch distance for rows read in place: PF_GROUPS groups of keys ahead
    kpf = PF_GROUPS * KG * knb1 if k_direct else 0
    vpf = PF_GROUPS * KG * vnb1 if v_direct else 0
    j0 = j_begin
    while j0 < j_end:
        nk = min(KB, j_end - j0)
        # mask values (slope * mask; slope > 0 keeps -inf) and cv[j]: does any row of the
        # tile see key j; rows with the same mask row and slope share one (mrix)
        n_vis_blk = 0
        for jj in range(nk):
            cv[jj] = 0
        for r in range(R):
            if ma == 0:
                mrix[r] = 0
                if r == 0:
                    for jj in range(nk):
                        mv[jj] = _F0
                        cv[jj] = 1
                    n_vis_blk += nk
                continue
            if r > 0 and rows_pos[r] == rows_pos[r - 1] and slope[r] == slope[r - 1] and \
                    rows_h[r] % mne2 == rows_h[r - 1] % mne2:
                mrix[r] = mrix[r - 1]
                continue
            mrix[r] = r
            mrow = (ma + rows_pos[r] * mnb1 + (rows_h[r] % mne2) * mnb2 + (iq3 % mne3) * mnb3)
            sl = slope[r]
            cnt = 0
            if mt == F16:
                m16 = u16_array(mrow, j0 + nk)
                for jj in range(nk):
                    x = _f16(m16[j0 + jj]) * sl
                    mv[r * KB + jj] = x
                    vis = 1 if x != NEG_INF else 0
                    cv[jj] |= vis
                    cnt += vis
            else:
                m32 = f32_array(mrow, j0 + nk)
                for jj in range(nk):
                    x = m32[j0 + jj] * sl
                    mv[r * KB + jj] = x
                    vis = 1 if x != NEG_INF else 0
                    cv[jj] |= vis
                    cnt += vis
            n_vis_blk += cnt
        if n_vis_blk == 0:
            j0 += nk
            continue
        # scores, KG keys at a time (each K row converted at most once for the whole tile)
        for g0 in range(0, nk, KG):
            gn = min(KG, nk - g0)
            n_vis = 0
            for u in range(gn):
                if cv[g0 + u] != 0:
                    n_vis += 1
            if n_vis == 0:
                for r in range(R):
                    for u in range(gn):
                        sc[r * KB + g0 + u] = NEG_INF
                continue
            if k_direct:    # rows read in place; keys nobody sees are read too, then masked
                k0 = kbase + (j0 + g0) * knb1
                k1 = kbase + (j0 + g0 + min(1, gn - 1)) * knb1
                k2 = kbase + (j0 + g0 + min(2, gn - 1)) * knb1
                k3 = kbase + (j0 + g0 + min(3, gn - 1)) * knb1
            else:
                for u in range(KG):
                    if u < gn and cv[g0 + u] != 0:
                        kaddr = kbase + (j0 + g0 + u) * knb1
                        if int_dots:
                            row_to_i8(kt, kaddr, ki8[u * dk:], kd[u * nbk:], kc[u * nbk:], dk)
                        else:
                            row_to_f32(kt, kaddr, kf[u * dk:], dk)
                    elif not int_dots:
                        for i in range(dk):
                            kf[u * dk + i] = _F0
                k0 = kf_addr
                k1 = kf_addr + dk * 4
                k2 = kf_addr + 2 * dk * 4
                k3 = kf_addr + 3 * dk * 4
            if k_simd or k_i8:
                for r0 in range(0, R, 4):
                    nr = min(4, R - r0)
                    if k_i8:
                        if nr == 4:
                            simd.qk_4x4_q4_0_i8(nbk, qi8_addr + r0 * dk, dk, qx_addr + r0 * nbk * 64,
                                                k0, k1, k2, k3, s16_addr)
                        else:
                            for rr in range(nr):
                                simd.qk_1x4_q4_0_i8(nbk, qi8_addr + (r0 + rr) * dk, 0,
                                                    qx_addr + (r0 + rr) * nbk * 64,
                                                    k0, k1, k2, k3, s16_addr + rr * 16)
                    elif nr == 4:
                        _qk4(kq, dk, qf_addr + r0 * dk * 4, dk * 4, k0, k1, k2, k3, s16_addr, kpf)
                    else:
                        for rr in range(nr):
                            _qk1(kq, dk, qf_addr + (r0 + rr) * dk * 4, k0, k1, k2, k3,
                                 s16_addr + rr * 16, kpf)
                    for rr in range(nr):
                        r = r0 + rr
                        _score_group(scp, mvp, r * KB + g0, mrix[r] * KB + g0, gn, s16[rr * 4],
                                     s16[rr * 4 + 1], s16[rr * 4 + 2], s16[rr * 4 + 3],
                                     scale, softcap)
                continue
            for r in range(R):
                if int_dots:
                    if small_k:     # 4/5-bit K: unsigned codes against q, + kc·(q sums)
                        s4 = _dot_u8_1x4(ki8_addr, qi8_addr + r * dk, kd_addr,
                                         qd_addr + r * nbk * 4, kc_addr,
                                         qs_addr + r * nbk * 4, nbk)
                    else:
                        s4 = _dot_q8_1x4(ki8_addr, qi8_addr + r * dk, kd_addr,
                                         qd_addr + r * nbk * 4, nbk)
                elif r % 2 == 0 and r + 1 < R:
                    s8 = _dot_2x4(qf, r * dk, (r + 1) * dk, kf, dk)
                    s4 = (s8[0], s8[1], s8[2], s8[3])
                    s4b = (s8[4], s8[5], s8[6], s8[7])
                elif r % 2 == 1:
                    s4 = s4b
                else:
                    s4 = _dot_1x4(qf, r * dk, kf, dk)
                _score_group(scp, mvp, r * KB + g0, mrix[r] * KB + g0, gn, s4[0], s4[1], s4[2],
                             s4[3], scale, softcap)
        # per row: block max, rescale, probabilities
        for r in range(R):
            bm = NEG_INF
            for jj in range(nk):
                if sc[r * KB + jj] > bm:
                    bm = sc[r * KB + jj]
            if bm == NEG_INF:
                for jj in range(nk):
                    sc[r * KB + jj] = _F0
                continue
            mo = Mr[r]
            if bm > mo:
                f = np.float32(math.exp(mo - bm)) if mo != NEG_INF else _F0
                _scale(acc, r * dv, f, dv)
                Sr[r] *= f
                Mr[r] = bm
            mr = Mr[r]
            ssum = _F0
            for jj in range(nk):
                p = vexp(sc[r * KB + jj] - mr)
                sc[r * KB + jj] = p
                ssum += p
            Sr[r] += ssum
        # V accumulation, KG keys at a time; a key no row of the tile sees is never read, and
        # a row only touches the V rows of its visible keys (p != 0: masked cache slots may
        # hold junk, and 0 * junk could be NaN)
        for g0 in range(0, nk, KG):
            gn = min(KG, nk - g0)
            n_vis = 0
            for u in range(gn):
                if cv[g0 + u] != 0:
                    n_vis += 1
            if n_vis == 0:
                continue
            if v_direct:
                v0 = vbase + (j0 + g0) * vnb1
                v1 = vbase + (j0 + g0 + min(1, gn - 1)) * vnb1
                v2 = vbase + (j0 + g0 + min(2, gn - 1)) * vnb1
                v3 = vbase + (j0 + g0 + min(3, gn - 1)) * vnb1
            else:
                for u in range(gn):
                    if cv[g0 + u] != 0:
                        row_to_f32(vt, vbase + (j0 + g0 + u) * vnb1, vf[u * dv:], dv)
                v0 = vf_addr
                v1 = vf_addr + dv * 4
                v2 = vf_addr + 2 * dv * 4
                v3 = vf_addr + 3 * dv * 4
            for r0 in range(0, R, 4):
                nr = min(4, R - r0)
                if v_simd and nr == 4 and gn == KG:
                    full = True
                    for rr in range(4):
                        o = (r0 + rr) * KB + g0
                        if scp[o] == _F0 or scp[o + 1] == _F0 or scp[o + 2] == _F0 or \
                                scp[o + 3] == _F0:
                            full = False
                    if full:
                        _pv4(vq, dv, acc_addr + r0 * dv * 4, dv * 4, sc_addr + (r0 * KB + g0) * 4,
                             KB * 4, v0, v1, v2, v3, vpf)
                        continue
                for r in range(r0, r0 + nr):
                    o = r * KB + g0
                    full = gn == KG and scp[o] != _F0 and scp[o + 1] != _F0 and \
                        scp[o + 2] != _F0 and scp[o + 3] != _F0
                    if v_simd:
                        if full:
                            _pv1x4(vq, dv, acc_addr + r * dv * 4, sc_addr + o * 4, v0, v1, v2, v3, vpf)
                        else:
                            for u in range(gn):
                                if scp[o + u] != _F0:
                                    vu = v0 if u == 0 else (v1 if u == 1 else (v2 if u == 2 else v3))
                                    _pv1(vq, dv, acc_addr + r * dv * 4, sc_addr + (o + u) * 4, vu, vpf)
                    elif full:
                        _axpy4(acc, r * dv, scp[o], scp[o + 1], scp[o + 2], scp[o + 3], vf, dv)
                    else:
                        for u in range(gn):
                            p = scp[o + u]
                            if p != _F0:
                                _axpy(acc, r * dv, p, vf[u * dv:], dv)
        j0 += nk


@_jit
def _prep_q(R, rows_pos, rows_h, iq3, qa, qnb1, qnb2, qnb3, dk, int_dots, qf, qi8, qd, qs, qx):
    """Load the tile's q rows (F32), and quantize them when the segment uses integer dots
    (qx: each row's block scales qd, then -qd·Σq, spread over 8 lanes per block, the layout
    of simd.qk_*_q4_0_i8)."""
    nbk = dk // QK
    for r in range(R):
        x = f32_array(qa + rows_pos[r] * qnb1 + rows_h[r] * qnb2 + iq3 * qnb3, dk)
        for i in range(dk):
            qf[r * dk + i] = x[i]
        if int_dots:
            quant_q_row(qf, r * dk, qi8, r * dk, qd, qs, r * nbk, dk)
            for b in range(nbk):
                for j in range(8):
                    qx[r * nbk * 16 + b * 8 + j] = qd[r * nbk + b]
                    qx[r * nbk * 16 + nbk * 8 + b * 8 + j] = -qs[r * nbk + b]



# --- the kernel body ---------------------------------------------------------------------------

@_jit
def _alibi(h, n_head, max_bias):
    if max_bias <= _F0:
        return _F1
    n_head_log2 = np.int64(1) << np.int64(math.floor(math.log2(n_head)))
    m0 = np.float32(2.0) ** (-max_bias / np.float32(n_head_log2))
    m1 = np.float32(2.0) ** (-(max_bias / np.float32(2.0)) / np.float32(n_head_log2))
    if h < n_head_log2:
        return np.float32(m0 ** np.float32(h + 1))
    return np.float32(m1 ** np.float32(2 * (h - n_head_log2) + 1))


@_jit
def _finish_row(ws, acc, ao, dv, M, S, h, iq3, pos, N, sinks_a, oa, onb1, onb2, onb3,
                sa, snb1, snb2, da, dnb1, dnb2, dnb3):
    """Normalize one row (sinks or state merge) and write the output (and state)."""
    out = f32_array(da + h * dnb1 + pos * dnb2 + iq3 * dnb3, dv)
    if ws == 0:
        if sinks_a != 0:
            s = f32_array(sinks_a, h + 1)[h]
            if s > M:
                f = np.float32(math.exp(M - s)) if M != NEG_INF else _F0
                _scale(acc, ao, f, dv)
                S = S * f + _F1
                M = s
            else:
                S += np.float32(math.exp(s - M))
        inv = _F1 / S if S != _F0 else _F0
        for i in range(dv):
            out[i] = acc[ao + i] * inv
        return
    st = f32_array(sa + (h * N + pos) * snb1 + iq3 * snb2, 2)
    mp = st[0]
    sp = st[1]
    has_prev = sp > _F0 and mp != NEG_INF
    has_cur = S > _F0
    if has_prev and has_cur:
        mn = max(mp, M)
        a = np.float32(math.exp(mp - mn))
        b = np.float32(math.exp(M - mn))
        sn = sp * a + S * b
        inv = _F1 / sn
        op = f32_array(oa + h * onb1 + pos * onb2 + iq3 * onb3, dv)
        wa = sp * a * inv
        wb = b * inv
        for i in range(dv):
            out[i] = op[i] * wa + acc[ao + i] * wb
        st[0] = mn
        st[1] = sn
    elif has_prev:
        op = f32_array(oa + h * onb1 + pos * onb2 + iq3 * onb3, dv)
        for i in range(dv):
            out[i] = op[i]
    elif has_cur:
        inv = _F1 / S
        for i in range(dv):
            out[i] = acc[ao + i] * inv
        st[0] = M
        st[1] = S
    else:
        for i in range(dv):
            out[i] = _F0
        st[0] = NEG_INF
        st[1] = _F0


@_jit
def _state_is_fresh(sa, snb1, snb2, rows, ne3):
    for i3 in range(ne3):
        for row in range(rows):
            st = f32_array(sa + row * snb1 + i3 * snb2, 2)
            if st[1] > _F0 and st[0] != NEG_INF:
                return False
    return True


@_jit
def fa_body(desc, ith, nth, ws):
    base = _ptr_addr(desc)
    nt = desc[H_NTASKS]
    if nt <= 0 or nt > nth:
        nt = nth
    if ith >= nt:
        return
    # q, dst, params
    qa = t_addr(desc, SRC0)
    dk, N, H, ne3 = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    qnb1, qnb2, qnb3 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    da = t_addr(desc, DST)
    dv = t_ne(desc, DST, 0)
    dnb1, dnb2, dnb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    scale = param_f32(desc, 0)
    max_bias = param_f32(desc, 1)
    softcap = param_f32(desc, 2)
    prec = param_i32(desc, 3)
    if softcap != _F0:
        scale = scale / softcap
    # segments: slots of (k, v, mask); with_state: hot (1,2,3) and cold (4,5,7)
    nseg = 0
    seg_k = np.zeros(2, dtype=np.int64)
    seg_v = np.zeros(2, dtype=np.int64)
    seg_m = np.zeros(2, dtype=np.int64)
    if t_addr(desc, SRC1) != 0:
        seg_k[nseg], seg_v[nseg], seg_m[nseg] = SRC1, SRC2, SRC3
        nseg += 1
    if ws == 1 and t_addr(desc, SRC4) != 0:
        seg_k[nseg], seg_v[nseg], seg_m[nseg] = SRC4, SRC5, SRC7
        nseg += 1
    sinks_a = t_addr(desc, SRC4) if ws == 0 else 0
    sa = t_addr(desc, SRC6) if ws == 1 else 0
    snb1 = t_nb(desc, SRC6, 1) if ws == 1 else 0
    snb2 = t_nb(desc, SRC6, 2) if ws == 1 else 0
    oa = t_addr(desc, SRC8) if ws == 1 else 0
    onb1 = t_nb(desc, SRC8, 1) if ws == 1 else 0
    onb2 = t_nb(desc, SRC8, 2) if ws == 1 else 0
    onb3 = t_nb(desc, SRC8, 3) if ws == 1 else 0
    # tiles: (i3, kv group, head block, position block)
    rk = H
    n_kv_total = 0
    for s in range(nseg):
        rk = min(rk, H // t_ne(desc, seg_k[s], 2))
        n_kv_total += t_ne(desc, seg_k[s], 1)
    for s in range(nseg):
        if H // t_ne(desc, seg_k[s], 2) != rk or H // t_ne(desc, seg_v[s], 2) != rk:
            rk = 1
    hb, pb, nhb, npb = tiling(H, N, rk)
    n_groups = H // rk
    n_tiles = ne3 * n_groups * nhb * npb
    n_chunks = n_split_chunks(n_tiles, n_kv_total)
    split = n_chunks > 1
    psz = 2 + dv
    # scratch (checked before the first shared counter is touched: every thread agrees)
    lay = layout(dk, dv)
    per = lay[L_TOTAL]
    need = per * nt
    if split:
        need += ((N * H * ne3 * n_chunks * psz * 4) + 63) // 64 * 64
    wb = (wdata(desc) + 63) // 64 * 64
    if wdata(desc) == 0 or wb + need > wdata(desc) + wsize(desc):
        if ith == 0:
            set_error(desc, ERR_WORK_SIZE)
        return
    # this run's ticket: the first thread to arrive resets the work counter and, for
    # with_state without o_prev, checks that the state is fresh before anyone writes
    ticket = atomic_add(base + W_TICKET * 8, 1)
    run = ticket // nt
    first = ticket % nt == 0
    if first:
        bad = 0
        if ws == 1 and oa == 0 and not _state_is_fresh(sa, snb1, snb2, H * N, ne3):
            bad = 1
        atomic_store(base + W_NEXT * 8, 0)
        atomic_store(base + W_READY * 8, (run + 1) * 2 + bad)
    else:
        while atomic_load(base + W_READY * 8) // 2 != run + 1:
            cpu_pause()
    if atomic_load(base + W_READY * 8) % 2 == 1:
        if first:
            set_error(desc, ERR_STATE)
        return
    tb = wb + ith * per
    nbk = max(1, (dk + QK - 1) // QK)
    qf = f32_array(tb + lay[0], RMAX * dk)
    qi8 = i8_array(tb + lay[1], RMAX * dk)
    qd = f32_array(tb + lay[2], RMAX * nbk)
    qs = f32_array(tb + lay[3], RMAX * nbk)
    kf = f32_array(tb + lay[4], KG * dk)
    ki8 = i8_array(tb + lay[5], KG * dk)
    kd = f32_array(tb + lay[6], KG * nbk)
    kc = f32_array(tb + lay[7], KG * nbk)
    vf = f32_array(tb + lay[8], KG * dv)
    sc = f32_array(tb + lay[9], RMAX * KB)
    mv = f32_array(tb + lay[10], RMAX * KB)
    acc = f32_array(tb + lay[11], RMAX * dv)
    Mr = f32_array(tb + lay[12], RMAX)
    Sr = f32_array(tb + lay[13], RMAX)
    slope = f32_array(tb + lay[14], RMAX)
    qx = f32_array(tb + lay[15], RMAX * nbk * 16)
    part_base = wb + per * nt
    rows_pos = np.zeros(RMAX, dtype=np.int64)
    rows_h = np.zeros(RMAX, dtype=np.int64)
    mrix = np.zeros(RMAX, dtype=np.int64)
    cv = np.zeros(KB, dtype=np.uint8)

    n_units = n_tiles * n_chunks
    q_tile = -1                # the tile whose q rows the scratch holds, and how
    q_int = False
    while True:
        # units are handed out dynamically (a thread that starts late takes fewer)
        u = atomic_add(base + W_NEXT * 8, 1)
        if u >= n_units:
            break
        t = u // n_chunks
        c = u % n_chunks
        # decode the tile
        pbi = t % npb
        rest = t // npb
        hbi = rest % nhb
        rest //= nhb
        g = rest % n_groups
        iq3 = rest // n_groups
        h0 = g * rk + hbi * hb
        h1 = min(h0 + hb, (g + 1) * rk)
        p0 = pbi * pb
        p1 = min(p0 + pb, N)
        R = 0
        for pos in range(p0, p1):
            for h in range(h0, h1):
                rows_pos[R] = pos
                rows_h[R] = h
                R += 1
        for r in range(R):
            Mr[r] = NEG_INF
            Sr[r] = _F0
            slope[r] = _alibi(rows_h[r], H, max_bias)
        for i in range(R * dv):
            acc[i] = _F0
        # the unit's key range over the concatenated segments
        c0 = 0
        c1 = n_kv_total
        if split:
            c0 = c * CHUNK
            c1 = min(c0 + CHUNK, n_kv_total)
        seg_start = 0
        for s in range(nseg):
            ks, vs, ms = seg_k[s], seg_v[s], seg_m[s]
            n_kv = t_ne(desc, ks, 1)
            a = max(c0 - seg_start, 0)
            b = min(c1 - seg_start, n_kv)
            seg_start += n_kv
            if a >= b:
                continue
            kt = t_type(desc, ks)
            int_dots = prec != PREC_F32 and kt != F32 and kt != F16 and kt != BF16
            if t != q_tile or int_dots != q_int:
                # the tile's q rows (quantized for integer dots); kept for the next unit
                # when it is a chunk of the same tile (decode splits), as is usual
                _prep_q(R, rows_pos, rows_h, iq3, qa, qnb1, qnb2, qnb3, dk, int_dots,
                        qf, qi8, qd, qs, qx)
                q_tile = t
                q_int = int_dots
            h_first = rows_h[0]
            ik2 = h_first // (H // t_ne(desc, ks, 2))
            ik3 = iq3 // (ne3 // t_ne(desc, ks, 3))
            iv2 = h_first // (H // t_ne(desc, vs, 2))
            iv3 = iq3 // (ne3 // t_ne(desc, vs, 3))
            ma = t_addr(desc, ms)
            _tile_keys(R, rows_pos, rows_h, iq3, dk, dv,
                       kt, t_addr(desc, ks), t_nb(desc, ks, 1), t_nb(desc, ks, 2), t_nb(desc, ks, 3),
                       t_type(desc, vs), t_addr(desc, vs), t_nb(desc, vs, 1), t_nb(desc, vs, 2),
                       t_nb(desc, vs, 3), ik2, ik3, iv2, iv3,
                       t_type(desc, ms), ma, t_nb(desc, ms, 1), t_nb(desc, ms, 2),
                       t_nb(desc, ms, 3), max(1, t_ne(desc, ms, 2)), max(1, t_ne(desc, ms, 3)),
                       a, b, scale, softcap, int_dots, qf, qi8, qd, qs, qx, kf, ki8, kd, kc,
                       vf, sc, mv, acc, Mr, Sr, slope, mrix, cv)
        if split:
            for r in range(R):
                grow = (iq3 * H + rows_h[r]) * N + rows_pos[r]
                pp = f32_array(part_base + ((grow * n_chunks + c) * psz) * 4, psz)
                pp[0] = Mr[r]
                pp[1] = Sr[r]
                for i in range(dv):
                    pp[2 + i] = acc[r * dv + i]
        else:
            for r in range(R):
                _finish_row(ws, acc, r * dv, dv, Mr[r], Sr[r], rows_h[r], iq3, rows_pos[r], N,
                            sinks_a, oa, onb1, onb2, onb3, sa, snb1, snb2, da, dnb1, dnb2, dnb3)
    if not split:
        return
    # the last thread to finish merges the chunks' partials (LSE rule, chunks in order:
    # the result does not depend on which thread computed which chunk)
    if atomic_add(base + W_DONE * 8, 1) % nt != nt - 1:
        return
    n_rows = ne3 * H * N
    for grow in range(n_rows):
        pos = grow % N
        h = (grow // N) % H
        iq3 = grow // (N * H)
        M = NEG_INF
        for c in range(n_chunks):
            pp = f32_array(part_base + ((grow * n_chunks + c) * psz) * 4, psz)
            if pp[1] > _F0 and pp[0] > M:
                M = pp[0]
        S = _F0
        for i in range(dv):
            acc[i] = _F0
        if M != NEG_INF:
            for c in range(n_chunks):
                pp = f32_array(part_base + ((grow * n_chunks + c) * psz) * 4, psz)
                if pp[1] > _F0:
                    f = np.float32(math.exp(pp[0] - M))
                    S += pp[1] * f
                    for i in range(dv):
                        acc[i] += pp[2 + i] * f
        _finish_row(ws, acc, 0, dv, M, S, h, iq3, pos, N, sinks_a, oa, onb1, onb2, onb3,
                    sa, snb1, snb2, da, dnb1, dnb2, dnb3)


# --- registration ---------------------------------------------------------------------------------

def _supports(node) -> bool:
    q = node.src[0]
    if q is None or q.type != GGMLType.F32 or node.type != GGMLType.F32:
        return False
    sl = _segment_slots(node)
    if not sl:
        return False
    for i in sl:
        t = node.src[i]
        if t.type not in FA_KV_TYPES or t.nb[0] != TRAITS[t.type].type_size:
            return False
    return True


@kernel("FLASH_ATTN_EXT", supports=_supports, work_size=work_size)
def flash_attn_ext_kernel(desc, ith, nth):
    fa_body(desc, ith, nth, 0)


@kernel("FLASH_ATTN_EXT_WITH_STATE", supports=_supports, work_size=work_size)
def flash_attn_ext_with_state_kernel(desc, ith, nth):
    fa_body(desc, ith, nth, 1)
