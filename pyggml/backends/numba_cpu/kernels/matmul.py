"""Matrix-product kernels: MUL_MAT, MUL_MAT_ID, OUT_PROD for every weight type.

MUL_MAT has two paths, chosen from the shapes alone (so the plan's work size and the kernel
agree):

  dot path (mat-vec and small batches, n = b.ne1 < GEMM_MIN_N): every output element is one
    SIMD row dot (kernels/simd.py). Float weights (F32/F16/BF16) meet F32 activations
    directly: F16 through F16C, BF16 by a shift, in float32 (more exact than ggml, which
    rounds the activations to F16/BF16 first). Quantized weights meet activations quantized
    to 8 bits per 32-block ("Q8 split": int8 q, float d, float d*sum(q)) and integer
    pmaddubsw/pmaddwd dots with per-block float scales, as ggml's Q8_0/Q8_1 vec_dots do
    (IQ4_NL too, its codes looked up first). The K-quants and IQ4_XS meet activations
    quantized to Q8_K (kq_dots.py: ggml's vec_dot_<t>_q8_K, the same results bit for bit).
  GEMM path (n >= GEMM_MIN_N, the prompt case): a packed, register-blocked float32 GEMM
    (BLIS/GotoBLAS structure, simd.gemm_tile micro-kernel). Weight panels are converted to
    float32 while packing (F16, BF16 and every quantized type dequantized exactly), so this
    path never rounds the activations. No BLAS call: NumPy may not be called from a cfunc,
    and a BLAS sharing the cores with the executor's spinning threads would oversubscribe.

Threads: no barrier is needed inside a node. Each thread prepares (converts or quantizes)
exactly the activation columns it uses, in its own slice of the work buffer: the rows of `a`
are split over threads when a has more rows than there are columns (decode: up to CT
columns, chunks of rows handed out from counters in the node's scratch line, each thread's
own row segment first, as ggml's chunked mul_mat, so a thread slowed by load does less),
otherwise the columns are.
Preparing costs O(n*k) against O(m*n*k) for the dots, so repeating the activation
quantization per thread costs ~nth/m of the node.

MUL_MAT_ID runs the dot path per (token, slot) with rows grouped by expert (a counting sort
per thread); OUT_PROD accumulates rows (dequantized once per source row) like ggml.
"""
from __future__ import annotations

import numba
import numpy as np

from ....quants import nb as qnb
from ....types import TRAITS
from ....types import GGMLType
from ..desc import BLCK_SIZE
from ..desc import DST
from ..desc import ERR_SHAPE
from ..desc import ERR_TYPE
from ..desc import ERR_WORK_SIZE
from ..desc import SCRATCH_LEN
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import TYPE_SIZE
from ..desc import has_scratch
from ..desc import n_tasks
from ..desc import register_error
from ..desc import row_coords
from ..desc import row_range
from ..desc import scratch_addr
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_nb4
from ..desc import t_ne
from ..desc import t_type
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import atomic_add
from ..intrinsics import atomic_load
from ..intrinsics import atomic_store
from ..intrinsics import f32_array
from ..intrinsics import i8_array
from ..intrinsics import i64_array
from ..intrinsics import ptr_of
from ..intrinsics import u8_array
from ..intrinsics import u16_array
from . import kernel
from . import kq_dots as kq
from . import mxfp4_dot as mx
from . import simd
from .copy import load_f32

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")

F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
Q4_0, Q4_1, Q5_0 = int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0)
Q5_1, Q8_0, I32 = int(GGMLType.Q5_1), int(GGMLType.Q8_0), int(GGMLType.I32)
IQ4_NL, MXFP4 = int(GGMLType.IQ4_NL), int(GGMLType.MXFP4)

ERR_IDS = register_error(110, "MUL_MAT_ID: an expert id in ids is outside [0, n_expert)")

QK = 32
CT = 16               # dot path: activation columns prepared per tile
DYN_DONE, DYN_SEG = 0, 1    # dot path, decode: scratch-line words (threads out; from DYN_SEG
DYN_NSEG = SCRATCH_LEN - 1  # on, the next chunk of each of at most DYN_NSEG row segments)
RB = 16               # dot path: rows of a per block (kept in L1 while the tile's columns pass)
GEMM_MIN_N = 32       # columns (b.ne1) from which the GEMM path is used
MR = simd.GEMM_MR
NR = simd.GEMM_NR
KC = 256              # k per packed panel (a multiple of 32: whole quant blocks)
NC = 256              # rows of a per packed block (a multiple of NR)
MC = 1020             # rows of b per packed block (a multiple of MR)
PANEL_SCRATCH = 8 * NR + QK * NR     # pack_q_block: NR scales, NR mins, QK x NR quant bytes

_Q32 = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)
# K-quants and IQ4_XS: integer row dots in kq_dots.py against Q8_K activations; IQ4_NL
# (32-blocks) joins the Q8 split dots of simd.py
_KQ = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
       GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.MXFP4)     # MXFP4: mxfp4_dot.py, Q8_0
_WEIGHT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16) + _Q32 + _KQ
_ACT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
_OUT_PROD_A = (GGMLType.F32, GGMLType.F16) + _Q32 + _KQ


# --- sizes (njit: the same numbers in the planner and in the kernels) --------------------------

@_jit
def _pad(x):
    return (x + 63) // 64 * 64


@_jit
def is_quant(t):
    """Weights whose dots read Q8 split activations (32-value blocks)."""
    return t == Q4_0 or t == Q4_1 or t == Q5_0 or t == Q5_1 or t == Q8_0 or t == IQ4_NL


@_jit
def act_row_bytes(wt, k):
    """One prepared activation row: Q8 split (q, d, s) for 32-block weights, Q8_K for the
    K-quants, else float32."""
    if is_quant(wt):
        nb = k // QK
        return _pad(k) + 2 * _pad(4 * nb)
    if kq.is_kq(wt):
        return kq.act_bytes(k)
    if wt == MXFP4:
        return mx.act_bytes(k)
    return _pad(4 * k)


@_jit
def needs_prep(wt, bt):
    return is_quant(wt) or kq.is_kq(wt) or wt == MXFP4 or bt != F32


@_jit
def prep_bytes(wt, bt, k, ncols):
    """Scratch for ncols prepared columns (+ a float row to convert non-F32 b before quantizing)."""
    if not needs_prep(wt, bt):
        return 0
    extra = _pad(4 * k) if ((is_quant(wt) or kq.is_kq(wt) or wt == MXFP4) and bt != F32) else 0
    return ncols * act_row_bytes(wt, k) + extra


@_jit
def use_gemm(m, n, k):
    return n >= GEMM_MIN_N and m >= 16 and k >= 16


@_jit
def gemm_bytes():
    return (_pad(((MC + MR - 1) // MR * MR) * KC * 4) + _pad(NC * KC * 4) + _pad(MR * NR * 4)
            + _pad(4 * KC) + _pad(PANEL_SCRATCH))


@_jit
def mul_mat_thread_bytes(wt, bt, m, n, k, ncols):
    if use_gemm(m, n, k):
        return gemm_bytes()
    return prep_bytes(wt, bt, k, min(CT, ncols))


def mul_mat_work_size(node, n_threads) -> int:
    a, b = node.src[0], node.src[1]
    per = mul_mat_thread_bytes(int(a.type), int(b.type), a.ne[1], b.ne[1], a.ne[0],
                               b.ne[1] * b.ne[2] * b.ne[3])
    return n_threads * per + 64 if per else 0


@_jit
def mul_mat_id_thread_bytes(wt, bt, k, n_as, n_pairs, n_brows):
    return _pad(8 * (n_as + 1)) + _pad(8 * n_pairs) + prep_bytes(wt, bt, k, n_brows)


def mul_mat_id_work_size(node, n_threads) -> int:
    a, b, ids = node.src[0], node.src[1], node.src[2]
    per = mul_mat_id_thread_bytes(int(a.type), int(b.type), a.ne[0], a.ne[2],
                                  ids.ne[0] * ids.ne[1], b.ne[1] * b.ne[2])
    return n_threads * per + 64


@_jit
def out_prod_thread_bytes(at, m):
    return 0 if at == F32 else _pad(4 * m)


def out_prod_work_size(node, n_threads) -> int:
    per = out_prod_thread_bytes(int(node.src[0].type), node.src[0].ne[0])
    return n_threads * per + 64 if per else 0


# --- element access --------------------------------------------------------------------------

@_jit
def row_to_f32(t, src, n, dst):
    """n packed values of float type t at src -> float32 at dst."""
    y = f32_array(dst, n)
    if t == F32:
        x = f32_array(src, n)
        for i in range(n):
            y[i] = x[i]
    elif t == F16:
        h = u16_array(src, n)
        for i in range(n):
            y[i] = qnb.f16_to_f32(h[i])
    else:
        h = u16_array(src, n)
        for i in range(n):
            y[i] = qnb.bf16_to_f32(h[i])


@_jit
def dequant_blocks(t, src, n, dst):
    """n values (whole blocks) of quantized type t at src -> float32 at dst."""
    rs = (n // BLCK_SIZE[t]) * TYPE_SIZE[t]
    qnb.dequantize_row(t, u8_array(src, rs), f32_array(dst, n), n)


@_jit
def quantize_act(src, k, dst):
    """float32 row -> Q8 split at dst: q int8[k], d float[nb] at +pad(k), s float[nb] after."""
    nb = k // QK
    x = f32_array(src, k)
    q = i8_array(dst, k)
    d_ = f32_array(dst + _pad(k), nb)
    s_ = f32_array(dst + _pad(k) + _pad(4 * nb), nb)
    for ib in range(nb):
        o = ib * QK
        amax = np.float32(0.0)
        finite = True
        for j in range(QK):
            v = abs(x[o + j])
            if v > amax:
                amax = v
            finite &= v < np.inf          # False for inf and NaN
        d = amax / np.float32(127.0)
        idd = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        if not finite:                    # the block's products become NaN, not garbage
            d = np.float32(np.nan)
            idd = np.float32(0.0)
        isum = 0
        for j in range(QK):
            v = np.int32(np.rint(x[o + j] * idd))
            q[o + j] = np.int8(v)
            isum += v
        d_[ib] = d
        s_[ib] = d * np.float32(isum)


@_jit
def prep_act(wt, bt, k, src, dst, tmp):
    """Activation row (type bt at src) -> the form the dots of weight type wt read, at dst."""
    if is_quant(wt) or kq.is_kq(wt) or wt == MXFP4:
        if bt != F32:
            row_to_f32(bt, src, k, tmp)
            src = tmp
        if is_quant(wt):
            quantize_act(src, k, dst)
        elif wt == MXFP4:
            mx.quantize_act(src, k, dst)
        else:
            kq.quantize_act(src, k, dst)
    else:
        row_to_f32(bt, src, k, dst)


@_jit
def rows_dot(wt, k, x, xstride, nrows, y, out):
    """out[r] = dot(weight row r (type wt, k values, at x + r * xstride), prepared row y)."""
    if wt == F32:
        simd.dot_f32(nrows, k, x, xstride, y, out)
        return
    if wt == F16:
        simd.dot_f16(nrows, k, x, xstride, y, out)
        return
    if wt == BF16:
        simd.dot_bf16(nrows, k, x, xstride, y, out)
        return
    if kq.is_kq(wt):
        kq.dot_rows(wt, k, x, xstride, nrows, y, out)
        return
    if wt == MXFP4:
        mx.dot_rows(k, x, xstride, nrows, y, out)
        return
    nb = k // QK
    yd = y + _pad(k)
    ys = yd + _pad(4 * nb)
    if wt == Q4_0:
        simd.dot_q4_0(nrows, nb, x, xstride, y, yd, ys, out)
    elif wt == Q8_0:
        simd.dot_q8_0(nrows, nb, x, xstride, y, yd, ys, out)
    elif wt == Q4_1:
        simd.dot_q4_1(nrows, nb, x, xstride, y, yd, ys, out)
    elif wt == Q5_0:
        simd.dot_q5_0(nrows, nb, x, xstride, y, yd, ys, out)
    elif wt == IQ4_NL:
        simd.dot_iq4_nl(nrows, nb, x, xstride, y, yd, ys, out)
    else:
        simd.dot_q5_1(nrows, nb, x, xstride, y, yd, ys, out)


@_jit
def types_ok(wt, bt):
    """Weight and activation types this file's dots read (supports() keeps others away)."""
    return ((wt == F32 or wt == F16 or wt == BF16 or is_quant(wt) or kq.is_kq(wt) or wt == MXFP4)
            and (bt == F32 or bt == F16 or bt == BF16))


@_jit
def eff_nth(desc, nth):
    nt = n_tasks(desc)
    return min(nth, nt) if nt > 0 else nth


# --- MUL_MAT: dot path -------------------------------------------------------------------------

@_jit
def row_chunk(m, nth):
    """Rows of a per dynamically handed-out chunk of the dot path: about 16 chunks per
    thread, whole RB blocks (4096 rows, 2 threads: 128)."""
    c = (m + 16 * nth - 1) // (16 * nth)
    return max(RB, (c + RB - 1) // RB * RB)


@_jit
def _operand_strides(desc, sa, sb, sd):
    """What both MUL_MAT paths read of a, b and the product (slots sa, sb, sd): the row and
    batch strides of each (nb01, nb02, nb03, nb11, nb12, nb13, nb1, nb2, nb3) and the batch
    broadcast ratios of a (r2 = ne12 / ne02, r3 = ne13 / ne03)."""
    return (t_nb(desc, sa, 1), t_nb(desc, sa, 2), t_nb(desc, sa, 3),
            t_nb(desc, sb, 1), t_nb(desc, sb, 2), t_nb(desc, sb, 3),
            t_nb(desc, sd, 1), t_nb(desc, sd, 2), t_nb(desc, sd, 3),
            t_ne(desc, sb, 2) // t_ne(desc, sa, 2), t_ne(desc, sb, 3) // t_ne(desc, sa, 3))


@_jit
def dyn_segments(nth):
    """Row segments of the decode split: one per thread (up to DYN_NSEG)."""
    return min(nth, DYN_NSEG)


@_jit
def dyn_left(desc, nchunks, nseg):
    """Is a chunk of any segment not handed out yet?"""
    for s in range(nseg):
        if atomic_load(scratch_addr(desc, DYN_SEG + s)) < (s + 1) * nchunks // nseg - s * nchunks // nseg:
            return True
    return False


@_jit
def dyn_take(desc, nchunks, nseg, s):
    """The next chunk of segment s (chunks [s * nchunks // nseg, (s + 1) * nchunks // nseg),
    handed out in order from its counter), or -1 when none is left."""
    u = s * nchunks // nseg + atomic_add(scratch_addr(desc, DYN_SEG + s), 1)
    return u if u < (s + 1) * nchunks // nseg else -1


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")   # the loop as written out
def dyn_next(desc, nchunks, nseg, ith, j):
    """Thread ith's next chunk in the decode walk: its own segment's chunks in order, then
    the others' (segment (ith + j) % nseg, j = 0..nseg-1). j: where the thread's walk is (0
    at the start). Returns (chunk, j), chunk -1 when none is left.

        j = 0
        while True:
            u, j = dyn_next(desc, nchunks, nseg, ith, j)
            if u < 0:
                break
            ...rows [u * chunk, min(m, (u + 1) * chunk))..."""
    while j < nseg:
        u = dyn_take(desc, nchunks, nseg, (ith + j) % nseg)
        if u >= 0:
            return u, j
        j += 1
    return -1, j


@_jit
def dyn_out(desc, nth, nseg):
    """A thread leaves the node: the last one out resets the counters for the next compute
    (all grabs are done)."""
    if atomic_add(scratch_addr(desc, DYN_DONE), 1) == nth - 1:
        for s in range(nseg):
            atomic_store(scratch_addr(desc, DYN_SEG + s), 0)
        atomic_store(scratch_addr(desc, DYN_DONE), 0)


@_jit
def dot_tile(desc, sa, sb, sd, wt, k, r0, r1, c0, c1, prep, arb, region):
    """Rows [r0, r1) of a against the columns [c0, c1) of b (prepared at region when prep),
    a, b and the product in slots sa, sb, sd (fusion.py's fused rows use other slots)."""
    nb01, nb02, nb03, nb11, nb12, nb13, nb1, nb2, nb3, r2, r3 = _operand_strides(desc, sa, sb, sd)
    ne11, ne12 = t_ne(desc, sb, 1), t_ne(desc, sb, 2)
    a, b, d = t_addr(desc, sa), t_addr(desc, sb), t_addr(desc, sd)
    for rb0 in range(r0, r1, RB):
        rb1 = min(rb0 + RB, r1)
        for c in range(c0, c1):
            i11 = c % ne11
            i12 = (c // ne11) % ne12
            i13 = c // (ne11 * ne12)
            xa = a + (i12 // r2) * nb02 + (i13 // r3) * nb03
            y = region + (c - c0) * arb if prep else b + i11 * nb11 + i12 * nb12 + i13 * nb13
            rows_dot(wt, k, xa + rb0 * nb01, nb01, rb1 - rb0, y,
                     d + i11 * nb1 + i12 * nb2 + i13 * nb3 + 4 * rb0)


@_jit
def _dot_tile(desc, wt, k, r0, r1, c0, c1, prep, arb, region):
    dot_tile(desc, SRC0, SRC1, DST, wt, k, r0, r1, c0, c1, prep, arb, region)


@_jit
def prep_tile(desc, sb, wt, bt, k, c0, c1, arb, region, tmp):
    """Columns [c0, c1) of b (slot sb) prepared for weight type wt at region."""
    ne11, ne12 = t_ne(desc, sb, 1), t_ne(desc, sb, 2)
    nb11, nb12, nb13 = t_nb(desc, sb, 1), t_nb(desc, sb, 2), t_nb(desc, sb, 3)
    b = t_addr(desc, sb)
    for c in range(c0, c1):
        i11 = c % ne11
        i12 = (c // ne11) % ne12
        i13 = c // (ne11 * ne12)
        prep_act(wt, bt, k, b + i11 * nb11 + i12 * nb12 + i13 * nb13,
                 region + (c - c0) * arb, tmp)


@_jit
def _prep_tile(desc, wt, bt, k, c0, c1, arb, region, tmp):
    prep_tile(desc, SRC1, wt, bt, k, c0, c1, arb, region, tmp)


@_jit
def mul_mat_dot(desc, ith, nth, region):
    wt = t_type(desc, SRC0)
    bt = t_type(desc, SRC1)
    k, m = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    ncols = t_ne(desc, SRC1, 1) * t_ne(desc, SRC1, 2) * t_ne(desc, SRC1, 3)
    prep = needs_prep(wt, bt)
    arb = act_row_bytes(wt, k)
    tmp = region + min(CT, ncols) * arb     # as mul_mat_thread_bytes counts the tile
    if ncols <= CT and ncols <= m and nth > 1 and has_scratch(desc):
        # decode: every thread prepares the columns, then takes chunks of rows from counters
        # until none are left (as ggml's chunked mul_mat: a thread that is descheduled or
        # slowed by load does less, the node does not wait for its half). The rows are one
        # segment per thread, each handed out in order: a thread streams its own segment,
        # then helps with the others'. With one counter for all, the threads' chunks
        # alternate, and a row dot prefetching 4 KB ahead overshoots every chunk into rows
        # the other thread reads: one thread taking every other chunk of a decode step's
        # matrices streamed 7.0 GB/s, all of them in order 8.7 (thread CPU time, load 9).
        chunk = row_chunk(m, nth)
        nchunks = (m + chunk - 1) // chunk
        nseg = dyn_segments(nth)
        if dyn_left(desc, nchunks, nseg):
            if prep:
                _prep_tile(desc, wt, bt, k, 0, ncols, arb, region, tmp)
            j = 0
            while True:
                u, j = dyn_next(desc, nchunks, nseg, ith, j)
                if u < 0:
                    break
                _dot_tile(desc, wt, k, u * chunk, min(m, (u + 1) * chunk), 0, ncols,
                          prep, arb, region)
        dyn_out(desc, nth, nseg)
        return
    if ncols > m:                       # more columns than rows: split the columns
        j0, j1 = row_range(ncols, ith, nth)
        ir0, ir1 = 0, m
    else:                               # decode: split the rows of a
        j0, j1 = 0, ncols
        ir0, ir1 = row_range(m, ith, nth)
    if j0 >= j1 or ir0 >= ir1:
        return
    for c0 in range(j0, j1, CT):
        c1 = min(c0 + CT, j1)
        if prep:
            _prep_tile(desc, wt, bt, k, c0, c1, arb, region, tmp)
        _dot_tile(desc, wt, k, ir0, ir1, c0, c1, prep, arb, region)


# --- MUL_MAT: GEMM path ------------------------------------------------------------------------

@_jit
def _scatter(src, kc, out, o, stride):
    for p in range(kc):
        out[o + p * stride] = src[p]


@_jit
def _f16_at(addr):
    b = u8_array(addr, 2)
    return qnb.f16_to_f32(np.uint16(b[0] | (np.uint16(b[1]) << 8)))


@_jit
def pack_q_block(wt, base, nb01, nr, boff, scr, dst):
    """Block boff (bytes into each row) of nr <= NR rows of a Q4_0/Q4_1/Q8_0 weight -> the
    panel's QK x NR floats at dst (k-major), the values qnb.dequantize_row gives (same
    expressions). The rows' quant bytes are gathered column by column first (qt[j][r]), so
    every output row of the panel is one contiguous pass over r that LLVM vectorizes (raw
    pointers: no wraparound checks); the row-by-row dequantize + scatter took 2x as long."""
    dd = ptr_of(scr, np.float32)
    mn = ptr_of(scr + 4 * NR, np.float32)
    qt = ptr_of(scr + 8 * NR, np.uint8)
    out = ptr_of(dst, np.float32)
    src = ptr_of(base + boff, np.uint8)
    nq = QK if wt == Q8_0 else QK // 2
    qo = 4 if wt == Q4_1 else 2
    pad = 8 if wt == Q4_0 else 0            # rows past nr come out as 0.0
    for r in range(NR):
        dd[r] = _f16_at(base + r * nb01 + boff) if r < nr else np.float32(0.0)
        mn[r] = _f16_at(base + r * nb01 + boff + 2) if r < nr and wt == Q4_1 else np.float32(0.0)
    for j in range(nq):
        for r in range(nr):
            qt[j * NR + r] = src[r * nb01 + qo + j]
        for r in range(nr, NR):
            qt[j * NR + r] = pad
    if wt == Q8_0:
        for j in range(QK):
            for r in range(NR):
                out[j * NR + r] = np.float32(np.int8(qt[j * NR + r])) * dd[r]
    elif wt == Q4_0:
        for j in range(QK // 2):
            for r in range(NR):
                q = np.int32(qt[j * NR + r])
                out[j * NR + r] = np.float32((q & 0x0F) - 8) * dd[r]
                out[(QK // 2 + j) * NR + r] = np.float32((q >> 4) - 8) * dd[r]
    else:
        for j in range(QK // 2):
            for r in range(NR):
                q = np.int32(qt[j * NR + r])
                lo = np.float32(q & 0x0F) * dd[r]
                hi = np.float32(q >> 4) * dd[r]
                out[j * NR + r] = lo if lo != lo else lo + mn[r]      # qnb._mul_add
                out[(QK // 2 + j) * NR + r] = hi if hi != hi else hi + mn[r]


@_jit
def pack_rows(t, base, nbr, rows, pc, kc, w, dst, tmp):
    """Rows [0, rows) of a matrix of type t (row stride nbr), values [pc, pc+kc) -> float32
    panels of w rows, k-major, at dst (rows past `rows` up to the panel's end are 0.0): each
    row converted into tmp first (a vectorizable pass), then one scatter."""
    npan = (rows + w - 1) // w
    out = f32_array(dst, npan * kc * w)
    for r in range(npan * w):
        o = (r // w) * kc * w + r % w
        if r >= rows:
            for p in range(kc):
                out[o + p * w] = 0.0
            continue
        row = base + r * nbr
        if t == F32:
            _scatter(f32_array(row + 4 * pc, kc), kc, out, o, w)
            continue
        if t == F16 or t == BF16:
            row_to_f32(t, row + 2 * pc, kc, tmp)
        else:
            dequant_blocks(t, row + (pc // BLCK_SIZE[t]) * TYPE_SIZE[t], kc, tmp)
        _scatter(f32_array(tmp, kc), kc, out, o, w)


@_jit
def pack_a(wt, base, nb01, rows, pc, kc, ap, tmp, scr):
    """Rows [0, rows) of a, values [pc, pc+kc) -> float32 panels of NR rows, k-major
    (Q4_0/Q4_1/Q8_0 block by block through pack_q_block; other types row by row)."""
    if wt == Q4_0 or wt == Q4_1 or wt == Q8_0:
        for pn in range((rows + NR - 1) // NR):
            for ib in range(kc // QK):
                pack_q_block(wt, base + pn * NR * nb01, nb01, min(NR, rows - pn * NR),
                             (pc // QK + ib) * TYPE_SIZE[wt], scr,
                             ap + 4 * (pn * kc * NR + ib * QK * NR))
        return
    pack_rows(wt, base, nb01, rows, pc, kc, NR, ap, tmp)


@_jit
def gemm_block(kc, ap, bp, c, nb1, rows_a, rows_b, accumulate, tile):
    """C[rows_b, rows_a] (+)= packed B panels x packed A panels (edges through `tile`)."""
    for jr in range(0, rows_a, NR):
        apan = ap + (jr // NR) * kc * NR * 4
        cols = min(NR, rows_a - jr)
        for ir in range(0, rows_b, MR):
            bpan = bp + (ir // MR) * kc * MR * 4
            cc = c + ir * nb1 + jr * 4
            rows = min(MR, rows_b - ir)
            if rows == MR and cols == NR:
                simd.gemm_tile(kc, apan, bpan, cc, nb1, accumulate)
                continue
            t = f32_array(tile, MR * NR)
            if accumulate:
                for i in range(rows):
                    crow = f32_array(cc + i * nb1, cols)
                    for j in range(cols):
                        t[i * NR + j] = crow[j]
            simd.gemm_tile(kc, apan, bpan, tile, NR * 4, accumulate)
            for i in range(rows):
                crow = f32_array(cc + i * nb1, cols)
                for j in range(cols):
                    crow[j] = t[i * NR + j]


@_jit
def gemm_block_rows(m, nbatch, nth):
    """Rows of a per thread block (a multiple of NR; packed NC rows at a time). Many blocks
    (large m or many batches): NC. Few: the fewest blocks whose count is a multiple of nth,
    so every thread gets as many NR-row panels (576 rows on 2 threads: 2 x 288, not
    256 + 256 + 64, where one thread does twice the other's work)."""
    if nbatch * ((m + NC - 1) // NC) >= 8 * nth:
        return NC
    nblk = 1
    while (nbatch * nblk) % nth != 0:
        nblk += 1
    panels = (m + NR - 1) // NR
    return (panels + nblk - 1) // nblk * NR


@_jit
def mul_mat_gemm(desc, ith, nth, region):
    wt = t_type(desc, SRC0)
    bt = t_type(desc, SRC1)
    k, m = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    n, ne12, ne13 = t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2), t_ne(desc, SRC1, 3)
    nb01, nb02, nb03, nb11, nb12, nb13, nb1, nb2, nb3, r2, r3 = _operand_strides(desc, SRC0, SRC1,
                                                                                DST)
    a, b, d = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
    nbatch = ne12 * ne13
    nc = gemm_block_rows(m, nbatch, nth)
    nblk = (m + nc - 1) // nc
    it0, it1 = row_range(nbatch * nblk, ith, nth)
    bp = region
    ap = bp + _pad(((MC + MR - 1) // MR * MR) * KC * 4)
    tile = ap + _pad(NC * KC * 4)
    tmp = tile + _pad(MR * NR * 4)
    scr = tmp + _pad(4 * KC)
    it = it0
    while it < it1:
        # this thread's blocks of one batch: rows [j_lo, j_hi) of a
        batch = it // nblk
        it_end = min(it1, (batch + 1) * nblk)
        j_lo = (it % nblk) * nc
        j_hi = min(((it_end - 1) % nblk + 1) * nc, m)
        it = it_end
        i12 = batch % ne12
        i13 = batch // ne12
        abase = a + (i12 // r2) * nb02 + (i13 // r3) * nb03
        bbase = b + i12 * nb12 + i13 * nb13
        cbase = d + i12 * nb2 + i13 * nb3
        for ic in range(0, n, MC):
            mc = min(MC, n - ic)
            for pc in range(0, k, KC):
                kc = min(KC, k - pc)
                pack_rows(bt, bbase + ic * nb11, nb11, mc, pc, kc, MR, bp, tmp)    # once per (ic, pc)
                for j0 in range(j_lo, j_hi, NC):
                    j1 = min(j0 + NC, j_hi)
                    pack_a(wt, abase + j0 * nb01, nb01, j1 - j0, pc, kc, ap, tmp, scr)
                    gemm_block(kc, ap, bp, cbase + ic * nb1 + j0 * 4, nb1, j1 - j0, mc,
                               1 if pc > 0 else 0, tile)


# --- the MUL_MAT kernel ----------------------------------------------------------------------

def _supports_mul_mat(node) -> bool:
    a, b = node.src[0], node.src[1]
    return (a.type in _WEIGHT_TYPES and b.type in _ACT_TYPES and node.type == GGMLType.F32
            and a.nb[0] == TRAITS[a.type].type_size and b.nb[0] == TRAITS[b.type].type_size
            and node.nb[0] == 4)


def _work_mul_mat(node, n_threads):
    return mul_mat_work_size(node, n_threads)


def _region_mul_mat(node, n_threads):
    """Thread ith prepares columns in, and reads from, region ith only (mul_mat below)."""
    a, b = node.src[0], node.src[1]
    return mul_mat_thread_bytes(int(a.type), int(b.type), a.ne[1], b.ne[1], a.ne[0],
                                b.ne[1] * b.ne[2] * b.ne[3])


@kernel("MUL_MAT", supports=_supports_mul_mat, work_size=_work_mul_mat,
        private_work=_region_mul_mat)
def mul_mat(desc, ith, nth):
    nth = eff_nth(desc, nth)
    wt = t_type(desc, SRC0)
    bt = t_type(desc, SRC1)
    k, m = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    n = t_ne(desc, SRC1, 1)
    if t_ne(desc, SRC1, 0) != k or k % BLCK_SIZE[wt] != 0 or t_nb(desc, DST, 0) != 4:
        set_error(desc, ERR_SHAPE)
        return
    if not types_ok(wt, bt):
        set_error(desc, ERR_TYPE)
        return
    ncols = n * t_ne(desc, SRC1, 2) * t_ne(desc, SRC1, 3)
    per = mul_mat_thread_bytes(wt, bt, m, n, k, ncols)
    base = (wdata(desc) + 63) // 64 * 64
    if per > 0 and base + nth * per > wdata(desc) + wsize(desc):   # the same verdict
        set_error(desc, ERR_WORK_SIZE)                              # on every thread
        return
    region = base + ith * per
    if use_gemm(m, n, k):
        mul_mat_gemm(desc, ith, nth, region)
    else:
        mul_mat_dot(desc, ith, nth, region)


# --- MUL_MAT_ID -------------------------------------------------------------------------------

def _supports_mul_mat_id(node) -> bool:
    a, b, ids = node.src[0], node.src[1], node.src[2]
    return (a.type in _WEIGHT_TYPES and b.type in _ACT_TYPES and ids.type == GGMLType.I32
            and a.nb[0] == TRAITS[a.type].type_size and b.nb[0] == TRAITS[b.type].type_size)


def _work_mul_mat_id(node, n_threads):
    return mul_mat_id_work_size(node, n_threads)


@kernel("MUL_MAT_ID", supports=_supports_mul_mat_id, work_size=_work_mul_mat_id)
def mul_mat_id(desc, ith, nth):
    nth = eff_nth(desc, nth)
    wt = t_type(desc, SRC0)
    bt = t_type(desc, SRC1)
    k, m, n_as = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    nb01, nb02 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2)
    b1, ntok = t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2)
    nb11, nb12 = t_nb(desc, SRC1, 1), t_nb(desc, SRC1, 2)
    n_used = t_ne(desc, SRC2, 0)
    nbi0, nbi1 = t_nb(desc, SRC2, 0), t_nb(desc, SRC2, 1)
    nb1, nb2 = t_nb(desc, DST, 1), t_nb(desc, DST, 2)
    a, b, ids, d = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, SRC2), t_addr(desc, DST)
    if t_ne(desc, SRC1, 0) != k or k % BLCK_SIZE[wt] != 0:
        set_error(desc, ERR_SHAPE)
        return
    if not types_ok(wt, bt) or t_type(desc, SRC2) != I32:
        set_error(desc, ERR_TYPE)
        return
    n_pairs = n_used * ntok
    per = mul_mat_id_thread_bytes(wt, bt, k, n_as, n_pairs, b1 * ntok)
    base = (wdata(desc) + 63) // 64 * 64
    if base + (ith + 1) * per > wdata(desc) + wsize(desc):
        set_error(desc, ERR_WORK_SIZE)
        return
    region = base + ith * per
    ir0, ir1 = row_range(m, ith, nth)
    if ir0 >= ir1:
        return
    # group the (token, slot) pairs by expert: counting sort in this thread's scratch
    start = i64_array(region, n_as + 1)
    order = i64_array(region + _pad(8 * (n_as + 1)), max(n_pairs, 1))
    for x in range(n_as + 1):
        start[x] = 0
    for t in range(ntok):
        for e in range(n_used):
            x = np.int64(ptr_of(ids + t * nbi1 + e * nbi0, np.int32)[0])
            if x < 0 or x >= n_as:
                set_error(desc, ERR_IDS)
                return
            start[x + 1] += 1
    for x in range(n_as):
        start[x + 1] += start[x]
    for t in range(ntok):                 # stable fill; start[x] advances to the end of x
        for e in range(n_used):
            x = np.int64(ptr_of(ids + t * nbi1 + e * nbi0, np.int32)[0])
            order[start[x]] = t * n_used + e
            start[x] += 1
    for x in range(n_as, 0, -1):          # restore the starts
        start[x] = start[x - 1]
    start[0] = 0
    prep = needs_prep(wt, bt)
    acts = region + _pad(8 * (n_as + 1)) + _pad(8 * n_pairs)
    arb = act_row_bytes(wt, k)
    tmp = acts + b1 * ntok * arb
    if prep:
        for t in range(ntok):
            for j in range(b1):
                prep_act(wt, bt, k, b + t * nb12 + j * nb11, acts + (t * b1 + j) * arb, tmp)
    for x in range(n_as):
        p0, p1 = start[x], start[x + 1]
        if p0 == p1:
            continue
        xa = a + x * nb02
        for r0 in range(ir0, ir1, RB):
            r1 = min(r0 + RB, ir1)
            for p in range(p0, p1):
                t = order[p] // n_used
                e = order[p] % n_used
                j = e % b1
                y = acts + (t * b1 + j) * arb if prep else b + t * nb12 + j * nb11
                rows_dot(wt, k, xa + r0 * nb01, nb01, r1 - r0, y, d + e * nb1 + t * nb2 + 4 * r0)


# --- OUT_PROD --------------------------------------------------------------------------------

def _supports_out_prod(node) -> bool:
    a, b = node.src[0], node.src[1]
    return (a.type in _OUT_PROD_A and b.type in _ACT_TYPES and node.type == GGMLType.F32
            and a.nb[0] == TRAITS[a.type].type_size and node.nb[0] == 4)


def _work_out_prod(node, n_threads):
    return out_prod_work_size(node, n_threads)


OP_RB = 16            # out_prod: destination rows accumulated together


@kernel("OUT_PROD", supports=_supports_out_prod, work_size=_work_out_prod)
def out_prod(desc, ith, nth):
    nth = eff_nth(desc, nth)
    at = t_type(desc, SRC0)
    bt = t_type(desc, SRC1)
    m, kk = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    ne02, ne03 = t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    nb01, nb02, nb03 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    nb10, nb11, nb12, nb13 = t_nb4(desc, SRC1)
    ne1, ne2, ne3 = t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    nb1, nb2, nb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    a, b, d = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
    if t_ne(desc, SRC1, 1) != kk or t_nb(desc, DST, 0) != 4:
        set_error(desc, ERR_SHAPE)
        return
    if not types_ok(at, bt) or at == BF16:
        set_error(desc, ERR_TYPE)
        return
    per = out_prod_thread_bytes(at, m)
    base = (wdata(desc) + 63) // 64 * 64
    if per > 0 and base + (ith + 1) * per > wdata(desc) + wsize(desc):
        set_error(desc, ERR_WORK_SIZE)
        return
    tmp = base + ith * per
    dps2, dps3 = ne2 // ne02, ne3 // ne03
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    r = ir0
    while r < ir1:
        # a run of rows of one (i2, i3) matrix, at most OP_RB long
        i1, i2, i3 = row_coords(r, ne1, ne2)
        n_r = min(ir1 - r, ne1 - i1, OP_RB)
        for q in range(n_r):
            o = f32_array(d + (i1 + q) * nb1 + i2 * nb2 + i3 * nb3, m)
            for i0 in range(m):
                o[i0] = 0.0
        abase = a + (i2 // dps2) * nb02 + (i3 // dps3) * nb03
        bbase = b + i2 * nb12 + i3 * nb13
        for j in range(kk):
            row = abase + j * nb01
            if at == F32:
                x = f32_array(row, m)
            else:
                if at == F16:
                    row_to_f32(F16, row, m, tmp)
                else:
                    dequant_blocks(at, row, m, tmp)
                x = f32_array(tmp, m)
            for q in range(n_r):
                s = load_f32(bbase + (i1 + q) * nb10 + j * nb11, bt)
                o = f32_array(d + (i1 + q) * nb1 + i2 * nb2 + i3 * nb3, m)
                for i0 in range(m):
                    o[i0] += x[i0] * s
        r += n_r
