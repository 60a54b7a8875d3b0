"""Flash attention's SIMD micro-kernels (LLVM vector IR, built with simd.py's helpers).

Split from simd.py, which keeps the mat-mul dots and the GEMM micro-kernel; the instruction-set
choice (PYGGML_SIMD, VL, HAVE_VNNI) is simd.py's and read from there.
"""
from __future__ import annotations

from llvmlite import ir

from .simd import _F32
from .simd import _HALF
from .simd import _I8
from .simd import _I16
from .simd import _I32
from .simd import _I64
from .simd import HAVE_AVX2
from .simd import HAVE_VNNI
from .simd import VL
from .simd import _acc
from .simd import _c
from .simd import _f16
from .simd import _fma
from .simd import _for
from .simd import _intr
from .simd import _intrinsic_n
from .simd import _ld_bf16
from .simd import _ld_f16
from .simd import _ld_f32
from .simd import _load
from .simd import _nibbles
from .simd import _prefetch
from .simd import _splat
from .simd import _store
from .simd import _v
from .simd import madd_ones_i32
from .simd import maddubs_i16

# --- attention micro-kernels ----------------------------------------------------------------------
# Flash attention's two products over a group of nk keys for nr query rows, K/V rows read where
# they lie (cache rows of any stride), converted to F32 in registers: F32/F16/BF16, Q8_0 and
# Q4_0 (the cold cache's type), or rows converted to F32 beforehand. n (the head size) must be
# a multiple of VL (F32/F16/BF16) or of 32 (quantized).
#
#   qk_<nr>x<nk>_<x>(n, q, qstride, k0.., out)      out[r*nk + u] = sum_i q[r][i] * k_u[i]
#   pv_<nr>x<nk>_<x>(n, acc, astride, p, pstride, v0..)
#                                                   acc[r][i] += sum_u p[r][u] * v_u[i]
#   qk_<nr>x4_q4_0_i8(nb, q8, qstride, qdx, k0..k3, out, pf)
#                                                   as qk, K Q4_0 against q quantized to 8
#                                                   bits (VNNI integer dots, see below)
# q/acc rows are float32, qstride/astride bytes apart; p[r][u] at p + r*pstride + 4u.
# The nr*nk dots' vector partials are summed together by a transposing tree (even/odd lanes
# of two vectors at a time), ~3 instructions per dot instead of a horizontal sum each.

# the VNNI 8-bit Q4_0 dots decode their 4 K rows a pair at a time: 4 rows' codes and scales
# live beside 16 accumulators spilled ~20 vector registers per step (8 after), same float ops
KPAIR = 2


def _pair(b, x, y):
    n = x.type.count
    ev = b.shuffle_vector(x, y, ir.Constant(_v(_I32, n), list(range(0, 2 * n, 2))))
    od = b.shuffle_vector(x, y, ir.Constant(_v(_I32, n), list(range(1, 2 * n, 2))))
    return b.fadd(ev, od)


def _dot_totals(b, vecs):
    """Vectors of partial sums (one dot each) -> vectors holding the totals in order, one
    per lane (as many dots per vector as lanes; fewer dots: the first len(vecs) lanes of
    one vector)."""
    lanes = vecs[0].type.count
    while len(vecs) > 1 and lanes > 1:
        vecs = [_pair(b, vecs[i], vecs[i + 1]) for i in range(0, len(vecs), 2)]
        lanes //= 2
    while lanes > 1:
        vecs = [_pair(b, vecs[0], vecs[0])]
        lanes //= 2
    return vecs


def _store_totals(b, out, vecs, nd):
    _store_totals_of(b, out, _dot_totals(b, vecs), nd)


def _store_totals_of(b, out, tot, nd):
    """Summed totals vectors (_dot_totals) -> out[0:nd]."""
    lanes = tot[0].type.count
    if nd < lanes:
        _store(b, out, b.shuffle_vector(tot[0], tot[0], ir.Constant(_v(_I32, nd), list(range(nd)))))
    else:
        for j, v in enumerate(tot):
            _store(b, b.add(out, _c(_I64, 4 * lanes * j)), v)


# Accumulator vectors one pass of a micro-kernel keeps live: an nr x nk product needs nr*nk
# (plus the row chunks and q). AVX-512's 32 registers hold 16; AVX2's 16 spill them (LLVM
# shuffled 16 accumulators through the stack every step), so there the keys go in passes of
# ACC_REGS // nr keys, each over all of n: every key row is still read once, the q rows once
# per pass (hot in L1), and each dot sums the same products in the same order (bitwise as one
# pass).
ACC_REGS = 16 if VL == 16 else 8


def _key_passes(nr, nk, per_pass=None):
    kp = max(1, min(nk, ACC_REGS // nr)) if per_pass is None else per_pass
    return [list(range(u0, min(nk, u0 + kp))) for u0 in range(0, nk, kp)]


# row readers: (values per step, prep(b, row, i) -> the step's state, chunk(b, state, c) -> the
# step's chunk c as a VL-float vector, bytes per step). Chunks are made when used, so a step's
# decoded values are not all live at once (AVX2: a Q4_0 block is 4 vectors per key).
def _float_reader(load, esize):
    return (VL, lambda b, row, i: b.add(row, b.mul(i, _c(_I64, VL * esize))),
            lambda b, st, c: load(b, st, VL), VL * esize)


def _q4_0_prep(b, row, i):
    blk = b.add(row, b.mul(i, _c(_I64, 18)))
    return blk, _splat(b, _f16(b, blk), VL)


def _q4_0_chunk(b, st, c):
    """(code - 8)·d of the block's chunk c, one rounding as ggml's dequantization. One
    scale vector per row is live across the block's chunks: fma(code, d, -8d), the same
    value, needs two, and the whole block decoded at once needs 4 vectors a row (AVX2
    spilled both ways). (p.V folds d into p instead: _pv_body, _pv_blk_body.)"""
    blk, dv = st
    return b.fmul(_q4_0_codes(b, blk, c), dv)


def _q8_0_prep(b, row, i):
    blk = b.add(row, b.mul(i, _c(_I64, 34)))
    return blk, _splat(b, _f16(b, blk), VL)


def _q8_0_chunk(b, st, c):
    blk, dv = st
    x = b.sitofp(_load(b, b.add(blk, _c(_I64, 2 + c * VL)), _v(_I8, VL)), _v(_F32, VL))
    return b.fmul(x, dv)


_ROW_READERS = {"f32": _float_reader(_ld_f32, 4), "f16": _float_reader(_ld_f16, 2),
                "bf16": _float_reader(_ld_bf16, 2), "q4_0": (32, _q4_0_prep, _q4_0_chunk, 18),
                "q8_0": (32, _q8_0_prep, _q8_0_chunk, 34)}


def _prep_rows(b, rows, i, prep, sbytes, pf):
    """prep(b, row, i) of each row, after prefetching pf bytes ahead of step i (sbytes a
    step) in each."""
    for r in rows:
        _prefetch(b, b.add(b.add(r, pf), b.mul(i, _c(_I64, sbytes))))
    return [prep(b, r, i) for r in rows]


def _row_at(b, base, r, stride, off):
    """base + r * stride + off (row r of a strided block, then a byte offset)."""
    return b.add(b.add(base, b.mul(_c(_I64, r), stride)), off)


def _chunk_offset(b, i, per, c):
    """Byte offset of chunk c (VL floats) of step i (per floats a step)."""
    return b.mul(b.add(b.mul(i, _c(_I64, per)), _c(_I64, c * VL)), _c(_I64, 4))


def _qk_dots(b, nr, nk, x, n, q, qstride, ks, pf, per_pass=None):
    """The nr x nk dots' accumulator vectors (order r*nk + u), not yet summed."""
    per, prep, chunk, sbytes = _ROW_READERS[x]
    zero = ir.Constant(_v(_F32, VL), [0.0] * VL)
    accs = [_acc(b, zero) for _ in range(nr * nk)]

    def body(b, i, us):
        sts = _prep_rows(b, [ks[u] for u in us], i, prep, sbytes, pf)
        for c in range(per // VL):
            off = _chunk_offset(b, i, per, c)
            kv = [chunk(b, st, c) for st in sts]
            for r in range(nr):
                qv = _load(b, _row_at(b, q, r, qstride, off), _v(_F32, VL))
                for j, u in enumerate(us):
                    a = accs[r * nk + u]
                    b.store(_fma(b, qv, kv[j], b.load(a)), a)
    for us in _key_passes(nr, nk, per_pass):
        _for(b, b.udiv(n, _c(_I64, per)), lambda b, i, us=us: body(b, i, us))
    return [b.load(a) for a in accs]


def _qk_body(nr, nk, x, per_pass=None):
    def build(b, n, q, qstride, *rest):
        ks, out, pf = rest[:nk], rest[nk], rest[nk + 1]
        _store_totals(b, out, _qk_dots(b, nr, nk, x, n, q, qstride, ks, pf, per_pass), nr * nk)
        b.ret_void()
    return build


# --- whole key blocks ------------------------------------------------------------------------------
# A block of ng groups of 4 consecutive cache rows (knb1 / vnb1 bytes apart) in one call: the
# scores go straight into the score rows (out + r*ostride + 4u), and p.V (Q4_0 V) keeps the
# 4 rows' accumulator chunks in registers over all the keys (no accumulator load/store per
# group of 4 keys, p read per key). Each dot and each accumulator element takes the same products in
# the same order as the 4x4 kernels group after group: bitwise the same results.

def _group_keys(b, kbase, knb1, g):
    return [b.add(kbase, b.mul(b.add(b.mul(g, _c(_I64, 4)), _c(_I64, u)), knb1)) for u in range(4)]


def _store_row_totals(b, tot, nr, nk, out, ostride, goff):
    """Totals vectors (dots in order r*nk + u) -> row r's nk dots at out + r*ostride + goff."""
    lanes = tot[0].type.count
    for r in range(nr):
        d0 = r * nk
        v = tot[d0 // lanes]
        st = d0 % lanes
        row = b.shuffle_vector(v, v, ir.Constant(_v(_I32, nk), list(range(st, st + nk))))
        _store(b, _row_at(b, out, r, ostride, goff), row)


def _qk_blk_body(x):
    def build(b, n, q, qstride, kbase, knb1, ng, out, ostride, pf):
        def group(b, g):
            ks = _group_keys(b, kbase, knb1, g)
            tot = _dot_totals(b, _qk_dots(b, 4, 4, x, n, q, qstride, ks, pf))
            _store_row_totals(b, tot, 4, 4, out, ostride, b.mul(g, _c(_I64, 16)))
        _for(b, ng, group)
        b.ret_void()
    return build


# p.V over Q4_0 rows with AVX2 folds each key's block scale d into its p (p·d per row and
# key: acc += (p·d)·(code - 8), the codes exact) instead of scaling the decoded chunks
# ((code - 8)·d, then p times it: ggml's order): a block is 2 passes of 16 values there, and
# per key and pass this saves the scale's load, convert and broadcast and 2 multiplies for
# one multiply per row and key and block (pv_blk: a table made before the passes). AVX-512
# takes a block in one pass and the table did not pay (measured); either way each product
# is rounded once before the FMA. pv_blk and the 4x4 kernels agree bitwise in both modes.
PV_FOLD_D = VL == 8


def _q4_0_nibble_codes(b, w):
    """A Q4_0 chunk's widened bytes w (<VL x i32>) -> (low nibbles - 8, high nibbles - 8) as
    exact floats: 2^23 + code is the code or'ed into 2^23's mantissa, and (2^23 + code) -
    (2^23 + 8) is exact; one integer op and one float add a chunk instead of a subtract and
    a convert (the convert competes with the FMAs for their ports). (_q4_0_codes, K's
    chunks, is the same decode.)"""
    iv = _v(_I32, VL)
    magic = ir.Constant(iv, [0x4B000000] * VL)
    bias = ir.Constant(_v(_F32, VL), [8388616.0] * VL)          # 2^23 + 8
    lo = b.or_(b.and_(w, ir.Constant(iv, [0x0F] * VL)), magic)
    hi = b.or_(b.lshr(w, ir.Constant(iv, [4] * VL)), magic)
    return tuple(b.fsub(b.bitcast(c, _v(_F32, VL)), bias) for c in (lo, hi))


def _q4_0_pv_chunks(b, blk, h, dv):
    """Pass h of a Q4_0 block at blk for p.V: (low, high) nibble chunks of bytes h*VL..,
    as exact codes - 8 (PV_FOLD_D: d is in p) or times the scale vector dv."""
    w = b.zext(_load(b, b.add(blk, b.add(_c(_I64, 2), b.mul(h, _c(_I64, VL)))), _v(_I8, VL)),
               _v(_I32, VL))
    cs = _q4_0_nibble_codes(b, w)
    return cs if PV_FOLD_D else tuple(b.fmul(c, dv) for c in cs)


def _pv_blk_body():
    """p.V over a block for Q4_0 V rows. Float rows are not worth it: streaming from memory
    (a decode), F16 pv_blk took 1.5x the 4x4 kernel's time (its 8 accumulators' FMA chains
    over the keys wait on latency); Q4_0's decode work per key hides that (parity to -8%).
    With PV_FOLD_D the p·d table pd[blk][row][key] is made first (on the stack; nk a
    multiple of 4). The rows pf bytes ahead are prefetched a line per key and pass, spread
    over the passes (all of them at the start of the call measured ~5% slower: a burst
    of prefetches)."""
    nr = 4
    ph = 16 // VL
    f4 = _v(_F32, 4)

    def build(b, n, acc, astride, p, pstride, pf, vbase, vnb1, nk):
        nbv = b.udiv(n, _c(_I64, 32))
        rowb = b.mul(nbv, _c(_I64, 18))

        # each key's row pf bytes ahead, a line of it per pass (passes cycle over its lines:
        # 0, 64, .. while inside the row, then 0 again; a compare, not a division, a pass)
        poff = _acc(b, _c(_I64, 0))
        if PV_FOLD_D:
            pd = b.ptrtoint(b.alloca(_F32, size=b.mul(b.mul(nbv, nk), _c(_I64, nr))), _I64)

            def fold(b, g):
                """pd[blk][r][u] = p[r][u]·d[u][blk] for the 4 keys u of group g: a block's
                4 scales gathered and converted at once, then a multiply per row."""
                rows = _group_keys(b, vbase, vnb1, g)
                pg = b.mul(g, _c(_I64, 16))

                def blk(b, k):
                    hv = ir.Constant(_v(_I16, 4), ir.Undefined)
                    for u in range(4):
                        x = _load(b, b.add(rows[u], b.mul(k, _c(_I64, 18))), _I16)
                        hv = b.insert_element(hv, x, _c(_I32, u))
                    d = b.fpext(b.bitcast(hv, _v(_HALF, 4)), f4)
                    for r in range(nr):
                        pr = _load(b, _row_at(b, p, r, pstride, pg), f4)
                        o = b.mul(b.add(b.mul(k, _c(_I64, nr)), _c(_I64, r)),
                                  b.mul(nk, _c(_I64, 4)))
                        _store(b, b.add(b.add(pd, o), pg), b.fmul(pr, d))
                _for(b, nbv, blk)
            _for(b, b.udiv(nk, _c(_I64, 4)), fold)

        def chunk_pass(b, j):
            po = b.load(poff)
            pline = b.add(pf, po)
            nxt = b.add(po, _c(_I64, 64))
            b.store(b.select(b.icmp_unsigned(">=", nxt, rowb), _c(_I64, 0), nxt), poff)
            blk, h = b.udiv(j, _c(_I64, ph)), b.urem(j, _c(_I64, ph))
            o0 = b.add(b.mul(blk, _c(_I64, 32)), b.mul(h, _c(_I64, VL)))
            addrs = [[_row_at(b, acc, r, astride, b.mul(o, _c(_I64, 4)))
                      for o in (o0, b.add(o0, _c(_I64, 16)))] for r in range(nr)]
            accs = [[_acc(b, _load(b, addrs[r][k], _v(_F32, VL))) for k in range(2)]
                    for r in range(nr)]
            boff = b.mul(blk, _c(_I64, 18))
            if PV_FOLD_D:       # row r of pd[blk]
                pb = b.add(pd, b.mul(b.mul(blk, nk), _c(_I64, 4 * nr)))
                ps = b.mul(nk, _c(_I64, 4))
            else:
                pb, ps = p, pstride

            def group(b, g):            # 4 keys a step (less loop overhead per key)
                for u4 in range(4):
                    u = b.add(b.mul(g, _c(_I64, 4)), _c(_I64, u4))
                    row = b.add(vbase, b.mul(u, vnb1))
                    _prefetch(b, b.add(row, pline))
                    ba = b.add(row, boff)
                    dv = None if PV_FOLD_D else _splat(b, _f16(b, ba), VL)
                    vv = _q4_0_pv_chunks(b, ba, h, dv)
                    for r in range(nr):
                        pr = _splat(b, _load(b, _row_at(b, pb, r, ps, b.mul(u, _c(_I64, 4))),
                                             _F32), VL)
                        for k in range(2):
                            a = accs[r][k]
                            b.store(_fma(b, pr, vv[k], b.load(a)), a)
            _for(b, b.udiv(nk, _c(_I64, 4)), group)
            for r in range(nr):
                for k in range(2):
                    _store(b, addrs[r][k], b.load(accs[r][k]))
        _for(b, b.udiv(n, _c(_I64, 2 * VL)), chunk_pass)
        b.ret_void()
    return build


def _pv_body(nr, nk, x):
    per, prep, chunk, sbytes = _ROW_READERS[x]
    q4 = x == "q4_0"
    ph = 16 // VL

    def build(b, n, acc, astride, p, pstride, pf, *vs):
        ps = [[_splat(b, _load(b, _row_at(b, p, r, pstride, _c(_I64, 4 * u)), _F32), VL)
               for u in range(nk)] for r in range(nr)]

        def fmas(b, i, c, pr, vv):
            off = _chunk_offset(b, i, per, c)
            for r in range(nr):
                addr = _row_at(b, acc, r, astride, off)
                a = _load(b, addr, _v(_F32, VL))
                for u in range(nk):
                    a = _fma(b, pr[r][u], vv[u], a)
                _store(b, addr, a)

        def body(b, i):
            sts = _prep_rows(b, vs, i, prep, sbytes, pf)
            if not q4:
                for c in range(per // VL):
                    fmas(b, i, c, ps, [chunk(b, st, c) for st in sts])
                return
            # Q4_0 as pv_blk (PV_FOLD_D or not); a chunk of low nibbles, then the one of the
            # same bytes' high nibbles (one load and widening for both)
            pr = [[b.fmul(ps[r][u], sts[u][1]) for u in range(nk)] for r in range(nr)] \
                if PV_FOLD_D else ps
            for h in range(ph):
                cs = [_q4_0_pv_chunks(b, blk, _c(_I64, h), dv) for blk, dv in sts]
                for half, c in enumerate((h, h + ph)):
                    fmas(b, i, c, pr, [x[half] for x in cs])
        _for(b, b.udiv(n, _c(_I64, per)), body)
        b.ret_void()
    return build


def _q4_0_codes(b, blk, c):
    """Chunk c of a Q4_0 block as floats code - 8 (exact), the scale not applied (the low
    nibbles' chunks, then the high ones'; LLVM drops the half not taken)."""
    per_half = 16 // VL
    w = b.zext(_load(b, b.add(blk, _c(_I64, 2 + (c % per_half) * VL)), _v(_I8, VL)), _v(_I32, VL))
    return _q4_0_nibble_codes(b, w)[0 if c < per_half else 1]


# Q4_0 K against 8-bit q (PREC_DEFAULT, as ggml's vec_dot_q4_0_q8_0): two blocks per 512-bit
# step (an odd last block with the upper half zero). vpdpbusd sums 4 products of K codes
# (0..15, unsigned) and q (signed) per 32-bit lane,
# 8 lanes per block; each lane is converted to float and becomes d·(qd·lane - qs), d the K
# block's scale, qd the q block's and qs = qd·Σq (qdx holds both per row, spread over the
# block's 8 lanes): over the 8 lanes that is d·qd·(Σcode·q - 8·Σq), the dot of the
# dequantized K block, (code - 8)·d, with qd·q. Used only with AVX512-VNNI.
def _qk_q4_0_i8_body(nr):
    nk = 4
    i8x64 = _v(_I8, 64)
    i32x16 = _v(_I32, 16)
    f32x16 = _v(_F32, 16)

    def dots(b, nb, q8, qstride, qdx, ks, pf):
        """The nr x 4 dots' totals vectors (order r*4 + u)."""
        zero = ir.Constant(f32x16, [0.0] * 16)
        accs = [_acc(b, zero) for _ in range(nr * nk)]
        izero = ir.Constant(i32x16, [0] * 16)

        i8x32 = _v(_I8, 32)
        f32x8 = _v(_F32, 8)

        def widen(b, lo, hi):
            n = lo.type.count
            return b.shuffle_vector(lo, hi, ir.Constant(_v(_I32, 2 * n), list(range(2 * n))))

        def step(b, j, two):
            """Blocks j and j + 1 (two) or block j alone (the upper half zero)."""
            for u0 in range(0, nk, KPAIR):
                keys(b, j, two, u0)

        def keys(b, j, two, u0):
            """The step for keys u0 .. u0 + KPAIR - 1."""
            kc, kd = [], []
            for k in ks[u0:u0 + KPAIR]:
                b0 = b.add(k, b.mul(j, _c(_I64, 18)))
                _prefetch(b, b.add(b0, pf))
                b1 = b.add(b0, _c(_I64, 18))
                c0 = _nibbles(b, b.add(b0, _c(_I64, 2)))
                c1 = _nibbles(b, b.add(b1, _c(_I64, 2))) if two else ir.Constant(i8x32, [0] * 32)
                kc.append(b.bitcast(widen(b, c0, c1), i32x16))
                d1 = _splat(b, _f16(b, b1), 8) if two else ir.Constant(f32x8, [0.0] * 8)
                kd.append(widen(b, _splat(b, _f16(b, b0), 8), d1))
            for r in range(nr):
                qa = _row_at(b, q8, r, qstride, b.mul(j, _c(_I64, 32)))
                # qdx: per row, nb*8 floats of qd then nb*8 of -qs (row stride nb*64 bytes)
                rowx = b.add(qdx, b.mul(_c(_I64, r), b.mul(nb, _c(_I64, 64))))
                qda = b.add(rowx, b.mul(j, _c(_I64, 32)))
                qsa = b.add(qda, b.mul(nb, _c(_I64, 32)))
                if two:
                    qv = _load(b, qa, i8x64)
                    qd, qs = _load(b, qda, f32x16), _load(b, qsa, f32x16)
                else:
                    qv = widen(b, _load(b, qa, i8x32), ir.Constant(i8x32, [0] * 32))
                    z8 = ir.Constant(f32x8, [0.0] * 8)
                    qd, qs = widen(b, _load(b, qda, f32x8), z8), widen(b, _load(b, qsa, f32x8), z8)
                qv = b.bitcast(qv, i32x16)
                for i, u in enumerate(range(u0, u0 + len(kc))):
                    dots = _intr(b, "llvm.x86.avx512.vpdpbusd.512", i32x16, [izero, kc[i], qv])
                    t = _fma(b, qd, b.sitofp(dots, f32x16), qs)
                    a = accs[r * nk + u]
                    b.store(_fma(b, kd[i], t, b.load(a)), a)
        _for(b, b.udiv(nb, _c(_I64, 2)), lambda b, i: step(b, b.mul(i, _c(_I64, 2)), True))
        odd = b.icmp_unsigned("!=", b.and_(nb, _c(_I64, 1)), _c(_I64, 0))
        with b.if_then(odd):
            step(b, b.sub(nb, _c(_I64, 1)), False)
        return _dot_totals(b, [b.load(a) for a in accs])

    def build(b, nb, q8, qstride, qdx, *rest):
        ks, out, pf = rest[:nk], rest[nk], rest[nk + 1]
        _store_totals_of(b, out, dots(b, nb, q8, qstride, qdx, ks, pf), nr * nk)
        b.ret_void()
    build.dots = dots
    return build


# --- the 8-bit Q4_0 dots without VNNI, lanes reduced in integers -------------------------------
# ggml's AVX2 sequence (pmaddubsw; portable LLVM twins without AVX2). Per row and block, the 4
# keys' 32 code·q products are summed in integers down to one vector of 8 int32 lanes
# ([k0 k1 k2 k3] over the block's values 0..15, the same over 16..31) before the one convert
# and the two float steps, which then serve 4 keys at once (converting 8 lanes a key and
# block, as the VNNI dot does, was 4x the float work, and AVX2 has two ports for it).
# Exact, no int16 overflow: codes are 0..15 and |q| <= 128, so a pmaddubsw lane (2 products)
# is at most 2·15·128 = 3840 in size (no saturation), a phaddw lane after two steps sums 8
# products, <= 15360 < 2^15, and pmaddwd's int32 lane 16. (One block at a time: the blocks'
# scales differ, so block sums never meet in integers.)

def _hadd16(b, x, y):
    """phaddw of two <16 x i16>: per 128-bit half, that half's adjacent pairs of x summed,
    then y's."""
    if HAVE_AVX2:
        return _intr(b, "llvm.x86.avx2.phadd.w", _v(_I16, 16), [x, y])
    idx = [(0 if w < 4 else 16) + 2 * (h * 4 + w % 4) for h in range(2) for w in range(8)]
    e = b.shuffle_vector(x, y, ir.Constant(_v(_I32, 16), idx))
    o = b.shuffle_vector(x, y, ir.Constant(_v(_I32, 16), [i + 1 for i in idx]))
    return b.add(e, o)


def _keys_i32(b, m):
    """4 keys' pmaddubsw vectors -> <8 x i32> [k0 k1 k2 k3 | k0 k1 k2 k3] (per 128-bit half
    of the codes: the block's values 0..15, then 16..31)."""
    a, c = _hadd16(b, m[0], m[1]), _hadd16(b, m[2], m[3])      # [k0 x4 k1 x4] per half
    return madd_ones_i32(b, _hadd16(b, a, c))                 # [k0 k0 k1 k1 k2 k2 k3 k3]


def _codes32(b, addr):
    """A Q4_0 block's 16 nibble bytes -> <32 x i8> codes (0..15 low nibbles, then high):
    the bytes loaded into both halves, shifted per half, masked (no cross-lane shuffle)."""
    q = _load(b, addr, _v(_I8, 16))
    d = b.bitcast(b.shuffle_vector(q, q, ir.Constant(_v(_I32, 32), list(range(16)) * 2)),
                  _v(_I32, 8))
    d = b.lshr(d, ir.Constant(_v(_I32, 8), [0] * 4 + [4] * 4))
    return b.bitcast(b.and_(d, ir.Constant(_v(_I32, 8), [0x0F0F0F0F] * 8)), _v(_I8, 32))


def _qk_q4_0_hadd_body(nr):
    nk = 4
    f32x8 = _v(_F32, 8)

    four = ir.Constant(f32x8, [4.0] * 8)

    def qs4(b, nb, qdx, r, j):
        """4·(-qd·Σq) of row r's block j as 8 lanes (qdx, the 8-lane layout of the VNNI
        dot: qd, then -qd·Σq, summed 8 times there; 2 lanes a key here)."""
        qsa = b.add(b.add(qdx, b.mul(_c(_I64, r), b.mul(nb, _c(_I64, 64)))),
                    b.mul(b.add(nb, j), _c(_I64, 32)))
        return b.fmul(_splat(b, _load(b, qsa, _F32), 8), four)

    def prep(b, nb, qdx):
        """A block call's table of qs4 per row and block (on the stack, row r's block j at
        (r·nb + j)·32 bytes): made once instead of once per group of 4 keys."""
        tab = b.ptrtoint(b.alloca(f32x8, size=b.mul(nb, _c(_I64, nr))), _I64)
        for r in range(nr):
            _for(b, nb, lambda b, j, r=r: _store(
                b, b.add(tab, b.mul(b.add(b.mul(_c(_I64, r), nb), j), _c(_I64, 32))),
                qs4(b, nb, qdx, r, j)))
        return tab

    def dots(b, nb, q8, qstride, qdx, ks, pf, tab=None):
        """Row r's 4 dots as a <4 x float> each (tab: prep's table, else qs4 made here)."""
        zero = ir.Constant(f32x8, [0.0] * 8)
        accs = [_acc(b, zero) for _ in range(nr)]

        def step(b, j):
            codes, ds = [], []
            for k in ks:
                blk = b.add(k, b.mul(j, _c(_I64, 18)))
                _prefetch(b, b.add(blk, pf))
                codes.append(_codes32(b, b.add(blk, _c(_I64, 2))))
                ds.append(_load(b, blk, _I16))
            hv = ir.Constant(_v(_I16, 4), ir.Undefined)
            for i in range(4):
                hv = b.insert_element(hv, ds[i], _c(_I32, i))
            hv = b.shuffle_vector(hv, hv, ir.Constant(_v(_I32, 8), [0, 1, 2, 3] * 2))
            kdv = b.fpext(b.bitcast(hv, _v(_HALF, 8)), f32x8)       # [d0..d3 | d0..d3]
            for r in range(nr):
                qv = _load(b, _row_at(b, q8, r, qstride, b.mul(j, _c(_I64, 32))), _v(_I8, 32))
                s = _keys_i32(b, [maddubs_i16(b, c, qv) for c in codes])
                qda = b.add(b.add(qdx, b.mul(_c(_I64, r), b.mul(nb, _c(_I64, 64)))),
                            b.mul(j, _c(_I64, 32)))
                qd = _splat(b, _load(b, qda, _F32), 8)
                qs = qs4(b, nb, qdx, r, j) if tab is None else _load(
                    b, b.add(tab, b.mul(b.add(b.mul(_c(_I64, r), nb), j), _c(_I64, 32))), f32x8)
                t = _fma(b, qd, b.sitofp(s, f32x8), qs)
                b.store(_fma(b, kdv, t, b.load(accs[r])), accs[r])
        _for(b, nb, step)
        tot = []
        for r in range(nr):
            a = b.load(accs[r])
            lo = b.shuffle_vector(a, a, ir.Constant(_v(_I32, 4), [0, 1, 2, 3]))
            hi = b.shuffle_vector(a, a, ir.Constant(_v(_I32, 4), [4, 5, 6, 7]))
            tot.append(b.fadd(lo, hi))
        return tot

    def build(b, nb, q8, qstride, qdx, *rest):
        ks, out, pf = rest[:nk], rest[nk], rest[nk + 1]
        tot = dots(b, nb, q8, qstride, qdx, ks, pf)
        for r in range(nr):
            _store(b, b.add(out, _c(_I64, 16 * r)), tot[r])
        b.ret_void()
    build.dots = dots
    build.prep = prep
    return build


def _qk_i8_blk_body(one):
    """Block version of an 8-bit Q4_0 4x4 body (hadd or VNNI): totals per row stored (the
    hadd body's per-row constants made once for the call: its prep)."""
    def build(b, nb, q8, qstride, qdx, kbase, knb1, ng, out, ostride, pf):
        pre = one.prep(b, nb, qdx) if hasattr(one, "prep") else None

        def group(b, g):
            ks = _group_keys(b, kbase, knb1, g)
            tot = one.dots(b, nb, q8, qstride, qdx, ks, pf) if pre is None else \
                one.dots(b, nb, q8, qstride, qdx, ks, pf, pre)
            goff = b.mul(g, _c(_I64, 16))
            if len(tot) == 4 and tot[0].type.count == 4:       # hadd: one vector a row
                for r in range(4):
                    _store(b, _row_at(b, out, r, ostride, goff), tot[r])
            else:
                _store_row_totals(b, tot, 4, 4, out, ostride, goff)
        _for(b, ng, group)
        b.ret_void()
    return build


def _qk(nr, nk, x):
    return _intrinsic_n(f"pyggml_fa_qk_{nr}x{nk}_{x}_v{VL}", 5 + nk, _qk_body(nr, nk, x))


def _pv(nr, nk, x):
    return _intrinsic_n(f"pyggml_fa_pv_{nr}x{nk}_{x}_v{VL}", 6 + nk, _pv_body(nr, nk, x))


qk_4x4_f32, qk_4x4_f16, qk_4x4_bf16, qk_4x4_q8_0, qk_4x4_q4_0 = (
    _qk(4, 4, x) for x in ("f32", "f16", "bf16", "q8_0", "q4_0"))
qk_1x4_f32, qk_1x4_f16, qk_1x4_bf16, qk_1x4_q8_0, qk_1x4_q4_0 = (
    _qk(1, 4, x) for x in ("f32", "f16", "bf16", "q8_0", "q4_0"))
pv_4x4_f32, pv_4x4_f16, pv_4x4_bf16, pv_4x4_q8_0, pv_4x4_q4_0 = (
    _pv(4, 4, x) for x in ("f32", "f16", "bf16", "q8_0", "q4_0"))
pv_1x4_f32, pv_1x4_f16, pv_1x4_bf16, pv_1x4_q8_0, pv_1x4_q4_0 = (
    _pv(1, 4, x) for x in ("f32", "f16", "bf16", "q8_0", "q4_0"))
pv_1x1_f32, pv_1x1_f16, pv_1x1_bf16, pv_1x1_q8_0, pv_1x1_q4_0 = (
    _pv(1, 1, x) for x in ("f32", "f16", "bf16", "q8_0", "q4_0"))
# whole blocks: qk_blk_<x>(n, q, qstride, kbase, knb1, ng, out, ostride, pf),
# pv_blk_q4_0(n, acc, astride, p, pstride, pf, vbase, vnb1, nk) (4 rows; ng groups of 4 keys,
# nk keys, a multiple of 4; n a multiple of 2*VL)
qk_blk_f32, qk_blk_f16, qk_blk_bf16, qk_blk_q8_0, qk_blk_q4_0 = (
    _intrinsic_n(f"pyggml_fa_qk_blk_{x}_v{VL}", 9, _qk_blk_body(x))
    for x in ("f32", "f16", "bf16", "q8_0", "q4_0"))
pv_blk_q4_0 = _intrinsic_n(f"pyggml_fa_pv_blk_q4_0_v{VL}", 9, _pv_blk_body())
# the 8-bit Q4_0 dots: VNNI where the CPU has it, else the hadd twin (tested on every CPU)
qk_4x4_q4_0_hadd = _intrinsic_n("pyggml_fa_qk_4x4_q4_0_hadd", 10, _qk_q4_0_hadd_body(4))
qk_blk_q4_0_hadd = _intrinsic_n("pyggml_fa_qk_blk_q4_0_hadd", 10,
                                _qk_i8_blk_body(_qk_q4_0_hadd_body(4)))
qk_1x4_q4_0_hadd = _intrinsic_n("pyggml_fa_qk_1x4_q4_0_hadd", 10, _qk_q4_0_hadd_body(1))
if HAVE_VNNI:
    qk_4x4_q4_0_i8 = _intrinsic_n("pyggml_fa_qk_4x4_q4_0_i8", 10, _qk_q4_0_i8_body(4))
    qk_1x4_q4_0_i8 = _intrinsic_n("pyggml_fa_qk_1x4_q4_0_i8", 10, _qk_q4_0_i8_body(1))
    qk_blk_q4_0_i8 = _intrinsic_n("pyggml_fa_qk_blk_q4_0_i8", 10,
                                  _qk_i8_blk_body(_qk_q4_0_i8_body(4)))
else:
    qk_4x4_q4_0_i8, qk_1x4_q4_0_i8 = qk_4x4_q4_0_hadd, qk_1x4_q4_0_hadd
    qk_blk_q4_0_i8 = qk_blk_q4_0_hadd
