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
            max/rescale per row and block, exp of the scores (a polynomial expf as VL-lane
            vector code), then the V accumulation. This per-block bookkeeping is branch-free
            vector code (fa_tile.py): as scalar code it was ~46% of a decode's time. Keys
            masked for a row never touch it, so junk in unused cache slots cannot leak (as
            in ggml).
  products  kernels/simd.py's micro-kernels, 4 rows x 4 keys at a time (16 dots summed by
            a transposing tree; V added into 4 accumulator rows): F32/F16/BF16/Q8_0/Q4_0
            K/V rows are read in place and converted in registers (F16C, nibble
            unpacking), with software prefetch a few key groups ahead (decode streams
            the cache from DRAM: without it 2 threads reach ~60% of the bandwidth);
            other types are converted to F32 rows once per tile. A block every row of
            the tile may see (no mask, or none that hides a key from all rows) takes one
            call for the block instead of one per group: fa_simd's qk_blk (scores straight
            into the score rows) and, for Q4_0 V without zero p, pv_blk (the 4 rows'
            accumulator chunks in registers over the keys), bitwise the 4x4 kernels; the
            tile's scores, row maxes and exps are one call each (score_rows, max_rows,
            exp_rows: bitwise the per-row helpers). Quantized K with
            PREC_DEFAULT quantizes the q rows to 8-bit blocks (ggml's vec_dot_type
            Q8_0/Q8_1, by ggml-cpu's own quantizer: the same bytes) and uses integer
            dots per 32-block times the two scales (plus min·sum for Q4_0 straight
            from the cache (AVX512-VNNI, else ggml's AVX2
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

Files: this one holds the kernel body (tiles handed out, segments, the decode split's final
fold) and the registration; fa_tiling.py the constants, the scratch layout and the work
size; fa_tile.py one tile over a key range (masks, scores, online softmax, V accumulation);
fa_fold.py a row's running state (init, the fold rule, finish, the state check);
fa_rows.py reads rows (K/V rows to F32 or 8-bit codes, q rows to 8-bit blocks, the LLVM
block decoders), fa_dots.py computes the products (integer dots, float loops, the dispatch
to simd.py's micro-kernels) and vexp.
"""
from __future__ import annotations

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
from . import kernel
from . import param_words
from .fa_consts import _F0
from .fa_consts import NEG_INF
from .fa_consts import _jit
from .fa_fold import _finish_row
from .fa_fold import _fold_row
from .fa_fold import _init_row
from .fa_fold import _state_check
from .fa_rows import BF16
from .fa_rows import F16
from .fa_rows import F32
from .fa_rows import Q4_1
from .fa_rows import Q5_1
from .fa_rows import QK
from .fa_tile import _prep_q
from .fa_tile import _tile_keys
from .fa_tiling import FOLD
from .fa_tiling import KB
from .fa_tiling import KG
from .fa_tiling import L_TOTAL
from .fa_tiling import RMAX
from .fa_tiling import UPC
from .fa_tiling import _segment_slots
from .fa_tiling import layout
from .fa_tiling import n_split_chunks
from .fa_tiling import tiling
from .fa_tiling import work_size
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

# words of the node's scratch line (desc.scratch_addr) shared by its threads
C_TICKET = 0       # arrival tickets: run = ticket // n_tasks
C_READY = 1        # (run + 1) * 2 + (1 if the state check failed)
C_NEXT = 2         # next work unit of the current run
C_DONE = 3         # threads done with their chunks (split mode: then all fold rows)



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
    q_int = -1                 # 0: F32 q rows, 1/2: also as Q8_0/Q8_1 blocks
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
            q8_1 = kt == Q4_1 or kt == Q5_1        # ggml's vec_dot_type for K: Q8_1, else Q8_0
            q_fmt = (2 if q8_1 else 1) if int_dots else 0
            if t != q_tile or q_fmt != q_int:
                # the tile's q rows (quantized for integer dots); kept for the next unit
                # when it is a chunk of the same tile (decode splits), as is usual
                _prep_q(R, rows_pos, rows_h, iq3, qa, qnb1, qnb2, qnb3, dk, int_dots, q8_1,
                        qf, qi8, qd, qs, qx)
                q_tile = t
                q_int = q_fmt
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
