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
            min·sum for Q4_0 straight from the cache (AVX512-VNNI, else ggml's AVX2
            pmaddubsw sequence, else portable LLVM: the same integers), the others with
            ggml's AVX2 sequence on decoded rows (a portable loop without AVX2);
            PREC_F32 reads the dequantized K. Head sizes that are not
            whole vectors take plain loops (LLVM-vectorized).
  fold      each segment's keys fall in aligned units of FOLD keys; a unit's partial
            (online softmax from nothing: M, S, unnormalized acc) is folded into the row's
            running (M, S, normalized O) in key order by the with_state merge rule
            (_fold_row, the one copy every path runs). The reduction order is thus fixed
            by key positions alone: a call that continues from o_prev and the state at a
            unit boundary computes bit for bit what one call over both ranges computes,
            which is what makes context-split shards chained in key order
            (distributed/context_split.py) equal one process exactly.
  threads   work units are handed out through an atomic counter (ggml's chunking: a thread
            that starts late, or runs on a busy core, simply takes fewer). When there are
            too few tiles for the threads (fewer than TILES_PER_THREAD each) and many keys
            (decode: one query, n_batch = 1, few KV heads), every tile's fold units are
            split into chunks of UPC units (CHUNK keys), each a work unit: the fold units'
            partials go to the work buffer and, once all are there, the threads share the
            rows, each row's units folded in key order by the same _fold_row. So 2 threads
            help one query, and the result is bitwise the one of the unsplit kernel (any
            thread count); only the traffic of the partials is extra.
  with_state the same tiles run over the hot and then the cold segment (each with its own
            K/V types and mask, q converted per segment); a row's fold starts from the
            incoming state (M, S) and o_prev when they hold a previous contribution, and
            the result is written with the state (pyggml.ops.fa_state has the rule). When
            o_prev is None the first thread to arrive checks that the state is fresh before
            any unit is handed out: a failure (ERR_STATE) leaves state and output untouched.

Shared counters live in the node's scratch line (desc.py: zero when the graph is lowered,
kept between computes of it): every run each thread takes an arrival ticket; the first of
a run (ticket % n_tasks == 0) resets the unit counter, runs the state check and publishes
(run, verdict); the others wait only for that (microseconds), never for each other.

Files: this one holds the kernel body, the tiling, the work size and the registration;
fa_rows.py reads rows (K/V rows to F32 or 8-bit codes, q rows to 8-bit blocks, the LLVM
block decoders), fa_dots.py computes the products (integer dots, float loops, the dispatch
to simd.py's micro-kernels) and vexp.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ....types import FA_KV_TYPES
from ....types import PREC_F32
from ....types import TRAITS
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_SCRATCH
from ..desc import ERR_STATE
from ..desc import ERR_WORK_SIZE
from ..desc import H_NTASKS
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import SRC3
from ..desc import SRC4
from ..desc import SRC5
from ..desc import SRC6
from ..desc import SRC7
from ..desc import SRC8
from ..desc import has_scratch
from ..desc import param_f32
from ..desc import param_i32
from ..desc import register_error
from ..desc import scratch_addr
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_ne4
from ..desc import t_type
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import atomic_add
from ..intrinsics import atomic_load
from ..intrinsics import atomic_store
from ..intrinsics import cpu_pause
from ..intrinsics import f32_array
from ..intrinsics import i8_array
from ..intrinsics import ptr_of
from ..intrinsics import u16_array
from . import kernel
from . import param_words
from . import simd
from .fa_dots import axpy
from .fa_dots import axpy4
from .fa_dots import dot_1x4
from .fa_dots import dot_2x4
from .fa_dots import dot_q8_1x4
from .fa_dots import dot_u8_1x4
from .fa_dots import pv1
from .fa_dots import pv1x4
from .fa_dots import pv4
from .fa_dots import qk1
from .fa_dots import qk4
from .fa_dots import reads_in_place
from .fa_dots import scale_acc
from .fa_dots import vexp
from .fa_rows import BF16
from .fa_rows import F16
from .fa_rows import F32
from .fa_rows import Q4_0
from .fa_rows import Q8_0
from .fa_rows import QK
from .fa_rows import f16_to_f32
from .fa_rows import quant_q_row
from .fa_rows import row_to_f32
from .fa_rows import row_to_i8
from .simd import VL
from .softmax import alibi_slope

_W = param_words("FLASH_ATTN_EXT")     # FLASH_ATTN_EXT_WITH_STATE has the same words


def _bad_state_row(node) -> str:
    """Names the inconsistent state row (the kernel left the state untouched)."""
    from ....ops import fa_state as st
    m, s = st.state_values(node.src[6])
    return st.bad_row_message(node.op.name, node.src[6], m, s, node.src[0].ne[2]) or ""


ERR_STATE_BAD = register_error(
    120, "an inconsistent with_state row (NaN, S <= 0 with a finite M, ...): a row is fresh "
         "(M=-inf, S=0) or a previous contribution (finite M, S > 0)", detail=_bad_state_row)

RMAX = 32          # query rows per tile
KB = 32            # keys per block
KG = 4             # keys per group inside a block (K rows dotted / V rows accumulated together)
FOLD = 64          # keys per fold unit (aligned in each segment): its partial is folded into
                   # the row's running (O, M, S) in key order (module doc: exact shards)
CHUNK = 512        # keys per chunk when a tile's keys are split (few tiles, long KV)
UPC = CHUNK // FOLD  # fold units per chunk
SPLIT_TILES = 16   # split the keys when there are fewer tiles than this
TILES_PER_THREAD = 4  # ... and fewer than this many per thread (enough to balance without)
PF_GROUPS = 8       # K/V rows read in place are prefetched this many key groups ahead
# words of the node's scratch line (desc.scratch_addr) shared by its threads
C_TICKET = 0       # arrival tickets: run = ticket // n_tasks
C_READY = 1        # (run + 1) * 2 + (1 if the state check failed)
C_NEXT = 2         # next work unit of the current run
C_DONE = 3         # threads done with their chunks (split mode: then all fold rows)

L_TOTAL = 17       # scratch arrays per thread (see layout)

NEG_INF = np.float32(-np.inf)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)

_FM = {"contract", "reassoc", "afn", "arcp"}      # no nnan/ninf: -inf masks must work
_jit = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy")
_jit_inline = numba.njit(nogil=True, cache=True, fastmath=_FM, error_model="numpy",
                         inline="always")


# --- scratch layout (bytes), per thread, then the split partials -----------------------------

def _al(x):
    return (x + 63) // 64 * 64


@_jit
def layout(dk, dv):
    """Byte offsets of the per-thread scratch: qf qi8 qd qs kf ki8 kd kc vf sc mv acc M S sl
    qx of (the rows' running outputs); offs[L_TOTAL] is the per-thread total."""
    nbk = (dk + QK - 1) // QK
    sizes = (RMAX * dk * 4, RMAX * dk, RMAX * nbk * 4, RMAX * nbk * 4, KG * dk * 4, KG * dk,
             KG * nbk * 4, KG * nbk * 4, KG * dv * 4, RMAX * KB * 4, RMAX * KB * 4,
             RMAX * dv * 4, RMAX * 4, RMAX * 4, RMAX * 4, RMAX * nbk * 16 * 4, RMAX * dv * 4)
    offs = np.zeros(L_TOTAL + 1, dtype=np.int64)
    o = 0
    for i in range(L_TOTAL):
        offs[i] = o
        o += (sizes[i] + 63) // 64 * 64
    offs[L_TOTAL] = o
    return offs


@_jit
def n_split_chunks(n_tiles, n_units, n_threads):
    """Chunks of UPC fold units (CHUNK keys) per tile when there are too few tiles to keep
    n_threads busy and the keys are many (decode), else 1. Split or not, the folds are
    the same, so results are bitwise the same for any number of threads; the split costs
    the partials' traffic (a tenth of an F16 cache's bytes), so it is taken only when
    needed. n_threads <= 0: the most any thread count splits (sizes the work buffer)."""
    if n_tiles >= SPLIT_TILES or n_units * FOLD < 2 * CHUNK:
        return 1
    if n_threads > 0 and n_tiles >= TILES_PER_THREAD * n_threads:
        return 1
    return (n_units + UPC - 1) // UPC


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


def _n_units(node):
    """Fold units over the segments (each segment's keys in aligned units of FOLD)."""
    sl = _segment_slots(node)
    return sum(-(-node.src[sl[i]].ne[1] // FOLD) for i in range(0, len(sl), 2))


def work_size(node, n_threads: int) -> int:
    q = node.src[0]
    dk, dv = q.ne[0], node.ne[0]
    per = int(layout(dk, dv)[L_TOTAL])
    nt = max(1, int(n_threads))
    rk = _group(node)
    hb, pb, nhb, npb = tiling(q.ne[2], q.ne[1], rk)
    n_tiles = q.ne[3] * (q.ne[2] // rk) * nhb * npb
    total = per * nt
    n_units = _n_units(node)
    if int(n_split_chunks(n_tiles, n_units, 0)) > 1:
        total += _al(q.ne[1] * q.ne[2] * q.ne[3] * n_units * (2 + dv) * 4)
    return total + 64


@_jit_inline
def _raw_group(scp, o, gn, x0, x1, x2, x3):
    """The group's gn (<= 4) q·k dots into the row's score slots (constant indices: no
    spilled tuples); _score_row turns the block's slots into scores."""
    scp[o] = x0
    if gn > 1:
        scp[o + 1] = x1
    if gn > 2:
        scp[o + 2] = x2
    if gn > 3:
        scp[o + 3] = x3


@_jit_inline
def _score_row(scp, mvp, o, b, nk, scale, softcap):
    """A row's nk dots -> scaled (soft-capped) scores plus mask values, -inf where masked
    (whatever the dot: junk K rows under the mask may give NaN); returns their max. One
    pass over the block (vectorized) instead of a scalar step per dot."""
    bm = NEG_INF
    if softcap != _F0:
        for u in range(nk):
            m = mvp[b + u]
            x = softcap * np.float32(math.tanh(scp[o + u] * scale)) + m
            x = x if m != NEG_INF else NEG_INF
            scp[o + u] = x
            if x > bm:
                bm = x
    else:
        for u in range(nk):
            m = mvp[b + u]
            x = scp[o + u] * scale + m
            x = x if m != NEG_INF else NEG_INF
            scp[o + u] = x
            if x > bm:
                bm = x
    return bm


# --- one tile over a key range of one segment ----------------------------------------------------

@_jit_inline
def _any_visible(cv, g0, gn):
    """Does any row of the tile see a key of the group [g0, g0 + gn) of the block?"""
    for u in range(gn):
        if cv[g0 + u] != 0:
            return True
    return False


@_jit_inline
def _group_rows(base, j, gn, nb1):
    """Addresses of the KG rows of the key group starting at key j (gn of them real: the
    rest repeat the last, so a 4-key product never reads past the keys)."""
    return (base + j * nb1, base + (j + min(1, gn - 1)) * nb1,
            base + (j + min(2, gn - 1)) * nb1, base + (j + min(3, gn - 1)) * nb1)


@_jit
def _tile_keys(R, rows_pos, rows_h, iq3, dk, dv, kt, ka, knb1, knb2, knb3, vt, va, vnb1, vnb2,
               vnb3, ik2, ik3, iv2, iv3, mt, ma, mnb1, mnb2, mnb3, mne2, mne3, j_begin, j_end,
               scale, softcap, int_dots, qf, qi8, qd, qs, qx, kf, ki8, kd, kc, vf, sc, mv,
               acc, Mr, Sr, slope, mrix, cv, s16, u_base, split, part_base, n_units, H, N,
               ob, Mf, Sf):
    """The tile's R rows over keys [j_begin, j_end) of one segment (j_begin a unit start):
    an online softmax per fold unit, each unit's partial handed to _unit_end (unit k of
    the segment is unit u_base + k of the tile)."""
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
    s16_addr = np.int64(s16.ctypes.data)
    # SIMD products when the head sizes fit whole vectors, rows read in place when simd
    # reads their type; Q4_0 K with integer dots through VNNI
    k_i8 = int_dots and kt == Q4_0
    k_simd = not int_dots and dk % VL == 0
    k_direct = k_i8 or (k_simd and reads_in_place(kt, dk))
    kq = kt if k_direct else F32
    v_simd = dv % VL == 0
    v_direct = v_simd and reads_in_place(vt, dv)
    vq = vt if v_direct else F32
    qx_addr = np.int64(qx.ctypes.data)
    # software prefetch distance for rows read in place: PF_GROUPS groups of keys ahead
    kpf = PF_GROUPS * KG * knb1 if k_direct else 0
    vpf = PF_GROUPS * KG * vnb1 if v_direct else 0
    # a last group of 3 rows (GQA 3, e.g. SmolLM2's decode tiles) runs the 4-row products
    # with a padding row: each K/V row decoded once instead of once per row; the padding
    # row's q is a copy (_prep_q), its p and acc zero, its results never read
    pad = R % 4 == 3
    if pad:
        accz = ptr_of(acc_addr, np.float32)
        for i in range(dv):
            accz[R * dv + i] = _F0
        for jj in range(KB):
            scp[R * KB + jj] = _F0
    j0 = j_begin
    while j0 < j_end:
        if j0 > j_begin and j0 % FOLD == 0:         # (KB divides FOLD)
            _unit_end(R, rows_pos, rows_h, iq3, dv, acc, Mr, Sr, u_base + j0 // FOLD - 1,
                      split, part_base, n_units, H, N, ob, Mf, Sf)
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
                    x = f16_to_f32(m16[j0 + jj]) * sl
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
            if not _any_visible(cv, g0, gn):
                for r in range(R):
                    for u in range(gn):
                        scp[r * KB + g0 + u] = NEG_INF
                continue
            if k_direct:    # rows read in place; keys nobody sees are read too, then masked
                k0, k1, k2, k3 = _group_rows(kbase, j0 + g0, gn, knb1)
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
                        if nr == 4 or pad and nr == 3:
                            simd.qk_4x4_q4_0_i8(nbk, qi8_addr + r0 * dk, dk, qx_addr + r0 * nbk * 64,
                                                k0, k1, k2, k3, s16_addr, kpf)
                        else:
                            for rr in range(nr):
                                simd.qk_1x4_q4_0_i8(nbk, qi8_addr + (r0 + rr) * dk, 0,
                                                    qx_addr + (r0 + rr) * nbk * 64,
                                                    k0, k1, k2, k3, s16_addr + rr * 16, kpf)
                    elif nr == 4 or pad and nr == 3:
                        qk4(kq, dk, qf_addr + r0 * dk * 4, dk * 4, k0, k1, k2, k3, s16_addr, kpf)
                    else:
                        for rr in range(nr):
                            qk1(kq, dk, qf_addr + (r0 + rr) * dk * 4, k0, k1, k2, k3,
                                 s16_addr + rr * 16, kpf)
                    for rr in range(nr):
                        _raw_group(scp, (r0 + rr) * KB + g0, gn, s16[rr * 4], s16[rr * 4 + 1],
                                   s16[rr * 4 + 2], s16[rr * 4 + 3])
                continue
            for r in range(R):
                if int_dots:
                    if small_k:     # 4/5-bit K: unsigned codes against q, + kc·(q sums)
                        s4 = dot_u8_1x4(ki8_addr, qi8_addr + r * dk, kd_addr,
                                         qd_addr + r * nbk * 4, kc_addr,
                                         qs_addr + r * nbk * 4, nbk)
                    else:
                        s4 = dot_q8_1x4(ki8_addr, qi8_addr + r * dk, kd_addr,
                                         qd_addr + r * nbk * 4, nbk)
                elif r % 2 == 0 and r + 1 < R:
                    s8 = dot_2x4(qf, r * dk, (r + 1) * dk, kf, dk)
                    s4 = (s8[0], s8[1], s8[2], s8[3])
                    s4b = (s8[4], s8[5], s8[6], s8[7])
                elif r % 2 == 1:
                    s4 = s4b
                else:
                    s4 = dot_1x4(qf, r * dk, kf, dk)
                _raw_group(scp, r * KB + g0, gn, s4[0], s4[1], s4[2], s4[3])
        # per row: scores (scaled, soft-capped, masked) and their max, rescale, probabilities
        for r in range(R):
            bm = _score_row(scp, mvp, r * KB, mrix[r] * KB, nk, scale, softcap)
            if bm == NEG_INF:
                for jj in range(nk):
                    scp[r * KB + jj] = _F0
                continue
            mo = Mr[r]
            if bm > mo:
                if mo == NEG_INF:           # the row's first keys of the unit: acc starts at 0
                    accp = ptr_of(acc_addr, np.float32)
                    for i in range(dv):
                        accp[r * dv + i] = _F0
                    Sr[r] = _F0
                else:
                    f = np.float32(math.exp(mo - bm))
                    scale_acc(acc_addr, r * dv, f, dv)
                    Sr[r] *= f
                Mr[r] = bm
            mr = Mr[r]
            ssum = _F0
            for jj in range(nk):
                p = vexp(scp[r * KB + jj] - mr)
                scp[r * KB + jj] = p
                ssum += p
            Sr[r] += ssum
        # V accumulation, KG keys at a time; a key no row of the tile sees is never read, and
        # a row only touches the V rows of its visible keys (p != 0: masked cache slots may
        # hold junk, and 0 * junk could be NaN)
        for g0 in range(0, nk, KG):
            gn = min(KG, nk - g0)
            if not _any_visible(cv, g0, gn):
                continue
            if v_direct:
                v0, v1, v2, v3 = _group_rows(vbase, j0 + g0, gn, vnb1)
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
                if v_simd and (nr == 4 or pad and nr == 3) and gn == KG:
                    full = True
                    for rr in range(nr):
                        o = (r0 + rr) * KB + g0
                        if scp[o] == _F0 or scp[o + 1] == _F0 or scp[o + 2] == _F0 or \
                                scp[o + 3] == _F0:
                            full = False
                    if full:
                        pv4(vq, dv, acc_addr + r0 * dv * 4, dv * 4, sc_addr + (r0 * KB + g0) * 4,
                             KB * 4, v0, v1, v2, v3, vpf)
                        continue
                for r in range(r0, r0 + nr):
                    o = r * KB + g0
                    full = gn == KG and scp[o] != _F0 and scp[o + 1] != _F0 and \
                        scp[o + 2] != _F0 and scp[o + 3] != _F0
                    if v_simd:
                        if full:
                            pv1x4(vq, dv, acc_addr + r * dv * 4, sc_addr + o * 4, v0, v1, v2, v3, vpf)
                        else:
                            for u in range(gn):
                                if scp[o + u] != _F0:
                                    vu = v0 if u == 0 else (v1 if u == 1 else (v2 if u == 2 else v3))
                                    pv1(vq, dv, acc_addr + r * dv * 4, sc_addr + (o + u) * 4, vu, vpf)
                    elif full:
                        axpy4(acc, r * dv, scp[o], scp[o + 1], scp[o + 2], scp[o + 3], vf, dv)
                    else:
                        for u in range(gn):
                            p = scp[o + u]
                            if p != _F0:
                                axpy(acc, r * dv, p, vf[u * dv:], dv)
        j0 += nk
    if j_end > j_begin:
        _unit_end(R, rows_pos, rows_h, iq3, dv, acc, Mr, Sr, u_base + (j_end - 1) // FOLD,
                  split, part_base, n_units, H, N, ob, Mf, Sf)


@_jit_inline
def _unit_end(R, rows_pos, rows_h, iq3, dv, acc, Mr, Sr, k, split, part_base, n_units, H, N,
              ob, Mf, Sf):
    """Unit k of the tile is done: its rows' partials folded into their running (M, S, O),
    or stored for the final fold (decode split); the next unit starts from nothing (a
    row's acc is zeroed at its first keys)."""
    psz = 2 + dv
    for r in range(R):
        if split:
            grow = (iq3 * H + rows_h[r]) * N + rows_pos[r]
            pp = ptr_of(part_base + ((grow * n_units + k) * psz) * 4, np.float32)
            pp[0] = Mr[r]
            pp[1] = Sr[r]
            if Sr[r] > _F0:
                ap = ptr_of(acc.ctypes.data, np.float32)
                for i in range(dv):
                    pp[2 + i] = ap[r * dv + i]
        else:
            Mf[r], Sf[r] = _fold_row(ob, r * dv, acc, r * dv, dv, Mf[r], Sf[r], Mr[r], Sr[r])
        Mr[r] = NEG_INF
        Sr[r] = _F0


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
    if R % 4 == 3:      # the padding row of a last group of 3 (_tile_keys): a copy of row R-1
        for i in range(dk):
            qf[R * dk + i] = qf[(R - 1) * dk + i]
        if int_dots:
            for i in range(dk):
                qi8[R * dk + i] = qi8[(R - 1) * dk + i]
            for i in range(nbk * 16):
                qx[R * nbk * 16 + i] = qx[(R - 1) * nbk * 16 + i]



# --- the kernel body ---------------------------------------------------------------------------

@_jit
def _init_row(ws, ob, oo, dv, h, iq3, pos, N, oa, onb1, onb2, onb3, sa, snb1, snb2):
    """A row's running (O, M, S) before its first key: with_state's previous contribution
    (o_prev and the state) when there is one, else nothing seen (M=-inf, S=0)."""
    if ws == 1 and oa != 0:
        st = f32_array(sa + (h * N + pos) * snb1 + iq3 * snb2, 2)
        if st[1] > _F0 and st[0] != NEG_INF:
            op = f32_array(oa + h * onb1 + pos * onb2 + iq3 * onb3, dv)
            for i in range(dv):
                ob[oo + i] = op[i]
            return st[0], st[1]
    return NEG_INF, _F0


@_jit
def _fold_row(ob, oo, acc, ao, dv, M, S, Mc, Sc):
    """Folds one unit's partial (Mc, Sc, unnormalized acc) into the row's running (M, S,
    normalized O at ob[oo:]): the with_state merge rule. Every fold of every path (one
    thread, the decode split, a call continuing from o_prev) runs this one function, so
    a chain of calls split at unit boundaries equals one call bit for bit."""
    if not Sc > _F0:
        return M, S
    # raw pointers: indexing arrays at oo + i adds negative-index code that keeps these
    # loops scalar (they run once per row and unit: a few % of a prompt's time)
    op = ptr_of(ob.ctypes.data, np.float32)
    ap = ptr_of(acc.ctypes.data, np.float32)
    if S > _F0:
        mn = max(M, Mc)             # one side's factor is exp(0) = 1 exactly
        a = _F1 if M == mn else np.float32(math.exp(M - mn))
        b = _F1 if Mc == mn else np.float32(math.exp(Mc - mn))
        sn = S * a + Sc * b
        inv = _F1 / sn
        wa = S * a * inv
        wb = b * inv
        for i in range(dv):
            op[oo + i] = op[oo + i] * wa + ap[ao + i] * wb
        return mn, sn
    inv = _F1 / Sc
    for i in range(dv):
        op[oo + i] = ap[ao + i] * inv
    return Mc, Sc


@_jit
def _finish_row(ws, ob, oo, dv, M, S, h, iq3, pos, N, sinks_a, sa, snb1, snb2, da, dnb1,
                dnb2, dnb3):
    """Writes one row's output (sinks weigh in) and, for with_state, its state."""
    out = f32_array(da + h * dnb1 + pos * dnb2 + iq3 * dnb3, dv)
    if not S > _F0:                          # nothing seen (ob holds nothing): 0
        for i in range(dv):
            out[i] = _F0
    else:
        w = _F1
        if ws == 0 and sinks_a != 0:         # the sink: one more score, with value 0
            s = f32_array(sinks_a, h + 1)[h]
            if s > M:
                a = np.float32(math.exp(M - s))
                w = S * a / (S * a + _F1)
            else:
                w = S / (S + np.float32(math.exp(s - M)))
        for i in range(dv):
            out[i] = ob[oo + i] * w
    if ws == 1:
        st = f32_array(sa + (h * N + pos) * snb1 + iq3 * snb2, 2)
        st[0] = M if S > _F0 else NEG_INF
        st[1] = S


@_jit
def _state_check(sa, snb1, snb2, rows, ne3):
    """0: every row fresh (M=-inf, S=0); 1: some row holds a previous contribution (finite
    M, finite S > 0); 2: some row is neither (attention.state.row_kinds, in float32)."""
    r = 0
    for i3 in range(ne3):
        for row in range(rows):
            st = f32_array(sa + row * snb1 + i3 * snb2, 2)
            m = st[0]
            s = st[1]
            if m == NEG_INF and s == _F0:
                continue
            if np.isfinite(m) and np.isfinite(s) and s > _F0:
                r = 1
            else:
                return 2
    return r


@_jit
def fa_body(desc, ith, nth, ws):
    nt = desc[H_NTASKS]
    if nt <= 0 or nt > nth:
        nt = nth
    if ith >= nt:
        return
    # q, dst, params
    qa = t_addr(desc, SRC0)
    dk, N, H, ne3 = t_ne4(desc, SRC0)
    qnb1, qnb2, qnb3 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    da = t_addr(desc, DST)
    dv = t_ne(desc, DST, 0)
    dnb1, dnb2, dnb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    scale = param_f32(desc, _W.scale)
    max_bias = param_f32(desc, _W.max_bias)
    softcap = param_f32(desc, _W.logit_softcap)
    prec = param_i32(desc, _W.prec)
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
    seg_nu = np.zeros(2, dtype=np.int64)        # fold units per segment
    n_units = 0
    for s in range(nseg):
        rk = min(rk, H // t_ne(desc, seg_k[s], 2))
        seg_nu[s] = (t_ne(desc, seg_k[s], 1) + FOLD - 1) // FOLD
        n_units += seg_nu[s]
    for s in range(nseg):
        if H // t_ne(desc, seg_k[s], 2) != rk or H // t_ne(desc, seg_v[s], 2) != rk:
            rk = 1
    hb, pb, nhb, npb = tiling(H, N, rk)
    n_groups = H // rk
    n_tiles = ne3 * n_groups * nhb * npb
    n_chunks = n_split_chunks(n_tiles, n_units, nt)
    split = n_chunks > 1
    psz = 2 + dv
    # scratch (checked before the first shared counter is touched: every thread agrees)
    lay = layout(dk, dv)
    per = lay[L_TOTAL]
    need = per * nt
    if split:
        need += ((N * H * ne3 * n_units * psz * 4) + 63) // 64 * 64
    wb = (wdata(desc) + 63) // 64 * 64
    if wdata(desc) == 0 or wb + need > wdata(desc) + wsize(desc):
        if ith == 0:
            set_error(desc, ERR_WORK_SIZE)
        return
    if not has_scratch(desc):           # a descriptor packed outside a node table
        if ith == 0:
            set_error(desc, ERR_SCRATCH)
        return
    # this run's ticket: the first thread to arrive resets the work counter and, for
    # with_state without o_prev, checks that the state is fresh before anyone writes
    ticket = atomic_add(scratch_addr(desc, C_TICKET), 1)
    run = ticket // nt
    first = ticket % nt == 0
    if first:
        bad = 0
        if ws == 1:
            bad = _state_check(sa, snb1, snb2, H * N, ne3)
            if bad == 1 and oa != 0:
                bad = 0                 # a previous contribution with its o_prev: fine
        atomic_store(scratch_addr(desc, C_NEXT), 0)
        atomic_store(scratch_addr(desc, C_READY), (run + 1) * 4 + bad)
    else:
        while atomic_load(scratch_addr(desc, C_READY)) // 4 != run + 1:
            cpu_pause()
    bad = atomic_load(scratch_addr(desc, C_READY)) % 4
    if bad != 0:
        if first:
            set_error(desc, ERR_STATE if bad == 1 else ERR_STATE_BAD)
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
    ob = f32_array(tb + lay[16], RMAX * dv)
    part_base = wb + per * nt
    rows_pos = np.zeros(RMAX, dtype=np.int64)
    rows_h = np.zeros(RMAX, dtype=np.int64)
    Mf = np.zeros(RMAX, dtype=np.float32)       # the rows' running (M, S); O in ob
    Sf = np.zeros(RMAX, dtype=np.float32)
    mrix = np.zeros(RMAX, dtype=np.int64)
    cv = np.zeros(KB, dtype=np.uint8)
    s16 = np.empty(16, dtype=np.float32)       # a 4x4 product's scores

    n_work = n_tiles * n_chunks
    q_tile = -1                # the tile whose q rows the scratch holds, and how
    q_int = False
    while True:
        # units are handed out dynamically (a thread that starts late takes fewer)
        u = atomic_add(scratch_addr(desc, C_NEXT), 1)
        if u >= n_work:
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
            slope[r] = alibi_slope(rows_h[r], H, max_bias)
        # the unit's fold units: the tile's keys over the concatenated segments, each
        # segment in aligned units of FOLD keys; a chunk of the decode split is UPC units
        k0 = 0
        k1 = n_units
        if split:
            k0 = c * UPC
            k1 = min(k0 + UPC, n_units)
        else:
            for r in range(R):
                Mf[r], Sf[r] = _init_row(ws, ob, r * dv, dv, rows_h[r], iq3, rows_pos[r], N,
                                         oa, onb1, onb2, onb3, sa, snb1, snb2)
        for r in range(R):
            Mr[r] = NEG_INF
            Sr[r] = _F0
        s_first = 0                 # the first unit of segment s
        for s in range(nseg):
            # this segment's keys among units [k0, k1)
            ks, vs, ms = seg_k[s], seg_v[s], seg_m[s]
            u0 = max(k0, s_first)
            u1 = min(k1, s_first + seg_nu[s])
            u_base = s_first
            s_first += seg_nu[s]
            if u0 >= u1:
                continue
            a = (u0 - u_base) * FOLD
            b = min((u1 - u_base) * FOLD, t_ne(desc, ks, 1))
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
                       vf, sc, mv, acc, Mr, Sr, slope, mrix, cv, s16, u_base, split, part_base,
                       n_units, H, N, ob, Mf, Sf)
        if not split:
            for r in range(R):
                _finish_row(ws, ob, r * dv, dv, Mf[r], Sf[r], rows_h[r], iq3, rows_pos[r], N,
                            sinks_a, sa, snb1, snb2, da, dnb1, dnb2, dnb3)
    if not split:
        return
    # when every chunk is done, each thread folds a share of the rows, each row's unit
    # partials in key order by one thread (the result does not depend on which thread
    # computed a chunk or folds a row). Every thread of a split run arrives here once, and
    # the next run starts only after all have left, so the arrivals of a run are one
    # block of nt on the counter.
    done = atomic_add(scratch_addr(desc, C_DONE), 1)
    target = (done // nt + 1) * nt
    while atomic_load(scratch_addr(desc, C_DONE)) < target:
        cpu_pause()
    n_rows = ne3 * H * N
    for grow in range(ith, n_rows, nt):
        pos = grow % N
        h = (grow // N) % H
        iq3 = grow // (N * H)
        M, S = _init_row(ws, ob, 0, dv, h, iq3, pos, N, oa, onb1, onb2, onb3, sa, snb1, snb2)
        for k in range(n_units):
            pp = f32_array(part_base + ((grow * n_units + k) * psz) * 4, psz)
            M, S = _fold_row(ob, 0, pp, 2, dv, M, S, pp[0], pp[1])
        _finish_row(ws, ob, 0, dv, M, S, h, iq3, pos, N, sinks_a, sa, snb1, snb2, da, dnb1,
                    dnb2, dnb3)


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


# ws as an int64, not a literal: both kernels share one compiled fa_body (a literal 0 / 1
# compiled the whole body twice; ws only picks a few addresses and how rows finish)
@kernel("FLASH_ATTN_EXT", supports=_supports, work_size=work_size)
def flash_attn_ext_kernel(desc, ith, nth):
    fa_body(desc, ith, nth, np.int64(0))


@kernel("FLASH_ATTN_EXT_WITH_STATE", supports=_supports, work_size=work_size)
def flash_attn_ext_with_state_kernel(desc, ith, nth):
    fa_body(desc, ith, nth, np.int64(1))
