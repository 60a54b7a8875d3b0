"""Flash attention's inner loop (kernels/attention.py): one tile of query rows over a key
range of one segment (masks, q·K scores, online softmax per block, p·V accumulation), the
end of a fold unit, and the tile's q rows loaded (and quantized for integer dots).
"""
from __future__ import annotations

import math

import numpy as np

from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from ..intrinsics import u16_array
from . import fa_simd
from .fa_consts import _F0
from .fa_consts import NEG_INF
from .fa_consts import _jit
from .fa_consts import _jit_inline
from .fa_dots import _i32_as_f32
from .fa_dots import axpy
from .fa_dots import axpy4
from .fa_dots import dot_1x4
from .fa_dots import dot_2x4
from .fa_dots import dot_q8_1x4
from .fa_dots import dot_u8_1x4
from .fa_dots import exp_block
from .fa_dots import exp_rows
from .fa_dots import max_rows
from .fa_dots import pv1
from .fa_dots import pv1x4
from .fa_dots import pv4
from .fa_dots import qk1
from .fa_dots import qk4
from .fa_dots import qk_blk
from .fa_dots import reads_in_place
from .fa_dots import scale_acc
from .fa_dots import score_rows
from .fa_dots import vexp
from .fa_fold import _fold_row
from .fa_rows import F16
from .fa_rows import F32
from .fa_rows import Q4_0
from .fa_rows import Q8_0
from .fa_rows import QK
from .fa_rows import f16_to_f32
from .fa_rows import quant_q_row
from .fa_rows import row_to_f32
from .fa_rows import row_to_i8
from .fa_tiling import FOLD
from .fa_tiling import KB
from .fa_tiling import KG
from .fa_tiling import PF_GROUPS
from .fa_tiling import RMAX
from .simd import VL


@_jit_inline
def _raw_group(scp, o, x0, x1, x2, x3):
    """The group's q·k dots into the row's 4 score slots (constant indices: no spilled
    tuples); _score_row turns the block's slots into scores. A short last group (gn < 4)
    writes its padding dots too, into slots past the block's nk keys that nothing reads:
    4 unconditional stores (one vector move) instead of a branch per slot."""
    scp[o] = x0
    scp[o + 1] = x1
    scp[o + 2] = x2
    scp[o + 3] = x3


@_jit_inline
def _raw_group_from(scp, o, s4p, so):
    """_raw_group from 4 dots s4p[so:so + 4] (a qk micro-kernel's output)."""
    for u in range(4):
        scp[o + u] = s4p[so + u]


@_jit_inline
def _score_row(scp, mvp, o, b, nk, scale, softcap):
    """A row's nk dots -> scaled (soft-capped) scores plus mask values, -inf where masked
    (whatever the dot: junk K rows under the mask may give NaN). Branch-free and vectorized;
    their max is a second pass (max_rows / _block_max: a float max in this pass kept it
    scalar, ~12% of a decode). Whole vectors without soft-cap: fa_dots.score_rows, the
    tile's rows in one call, bitwise this."""
    if softcap != _F0:
        for u in range(nk):
            m = mvp[b + u]
            x = softcap * np.float32(math.tanh(scp[o + u] * scale)) + m
            scp[o + u] = x if m != NEG_INF else NEG_INF
    else:
        for u in range(nk):
            m = mvp[b + u]
            x = scp[o + u] * scale + m
            scp[o + u] = x if m != NEG_INF else NEG_INF


@_jit_inline
def _block_max(scip, o, nk):
    """The max of the nk float32 at scip[o:] (read as int32 bits), in integers: with a
    negative float's magnitude bits flipped, integer order is float order (-inf lowest).
    LLVM vectorizes an integer max; a float one (select on >) only with nnan, which the
    -inf masks rule out. A NaN score (a visible junk K row) makes the max NaN: the row's
    output is NaN either way."""
    km = np.int64(-2147483648)
    for u in range(nk):
        i = np.int64(scip[o + u])
        k = i ^ ((i >> 31) & 0x7FFFFFFF)
        km = k if k > km else km
    return _i32_as_f32(np.int32(km ^ ((km >> 31) & 0x7FFFFFFF)))


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
    scip = ptr_of(sc.ctypes.data, np.int32)
    mvp = ptr_of(mv.ctypes.data, np.float32)
    kc_addr = kc.ctypes.data
    qs_addr = qs.ctypes.data
    qf_addr = np.int64(qf.ctypes.data)
    kf_addr = np.int64(kf.ctypes.data)
    vf_addr = np.int64(vf.ctypes.data)
    sc_addr = np.int64(sc.ctypes.data)
    acc_addr = np.int64(acc.ctypes.data)
    s16_addr = np.int64(s16.ctypes.data)
    s16p = ptr_of(s16_addr, np.float32)
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
    # whole blocks (every key visible to some row, nk a multiple of 4): one qk_blk (pv_blk for
    # Q4_0 V) call per 4 rows instead of a 4x4 product per key group (rows padded as below)
    quads = R % 4 == 0 or pad
    k_blk = quads and k_direct and (k_simd or k_i8)
    v_blk = quads and v_direct and vt == Q4_0 and dv % (2 * VL) == 0    # (fa_simd: why Q4_0)
    bmx = np.empty(RMAX, dtype=np.float32)          # the block's row maxes
    exs = np.empty(2 * RMAX, dtype=np.float32)      # exp_rows: (sum, zeros) per row
    bmx_addr = bmx.ctypes.data
    exs_addr = exs.ctypes.data
    Mr_addr = Mr.ctypes.data
    mv_addr = np.int64(mv.ctypes.data)
    mrix_addr = np.int64(mrix.ctypes.data)
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
        all_vis = True
        if ma != 0:
            for jj in range(nk):
                if cv[jj] == 0:
                    all_vis = False
        k_whole = k_blk and all_vis and nk % KG == 0
        if k_whole:
            for r0 in range(0, R, 4):
                if k_i8:
                    fa_simd.qk_blk_q4_0_i8(nbk, qi8_addr + r0 * dk, dk, qx_addr + r0 * nbk * 64,
                                           kbase + j0 * knb1, knb1, nk // KG,
                                           sc_addr + r0 * KB * 4, KB * 4, kpf)
                else:
                    qk_blk(kq, dk, qf_addr + r0 * dk * 4, dk * 4, kbase + j0 * knb1, knb1,
                           nk // KG, sc_addr + r0 * KB * 4, KB * 4, kpf)
            if pad:                 # the padding row's dots: back to p = 0
                for jj in range(nk):
                    scp[R * KB + jj] = _F0
        # scores, KG keys at a time (each K row converted at most once for the whole tile)
        for g0 in range(0, 0 if k_whole else nk, KG):
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
                            fa_simd.qk_4x4_q4_0_i8(nbk, qi8_addr + r0 * dk, dk, qx_addr + r0 * nbk * 64,
                                                k0, k1, k2, k3, s16_addr, kpf)
                        else:
                            for rr in range(nr):
                                fa_simd.qk_1x4_q4_0_i8(nbk, qi8_addr + (r0 + rr) * dk, 0,
                                                    qx_addr + (r0 + rr) * nbk * 64,
                                                    k0, k1, k2, k3, s16_addr + rr * 16, kpf)
                    elif nr == 4 or pad and nr == 3:
                        qk4(kq, dk, qf_addr + r0 * dk * 4, dk * 4, k0, k1, k2, k3, s16_addr, kpf)
                    else:
                        for rr in range(nr):
                            qk1(kq, dk, qf_addr + (r0 + rr) * dk * 4, k0, k1, k2, k3,
                                 s16_addr + rr * 16, kpf)
                    for rr in range(nr):
                        _raw_group_from(scp, (r0 + rr) * KB + g0, s16p, rr * 4)
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
                _raw_group(scp, r * KB + g0, s4[0], s4[1], s4[2], s4[3])
        # per row: scores (scaled, soft-capped, masked) and their max, rescale, probabilities;
        # n_zero counts the block's zero probabilities (masked or underflowed): with none,
        # every 4-key group of every row is full (no per-group checks below)
        n_zero = 0
        vec = nk % VL == 0          # whole vectors (every block but a last short one)
        if vec and softcap == _F0:
            score_rows(sc_addr, mv_addr, nk, R, KB * 4, mrix_addr, KB * 4, scale)
        else:
            for r in range(R):
                _score_row(scp, mvp, r * KB, mrix[r] * KB, nk, scale, softcap)
        if vec:
            max_rows(sc_addr, nk, R, KB * 4, bmx_addr)
        else:
            for r in range(R):
                bmx[r] = _block_max(scip, r * KB, nk)
        all_rows = vec
        for r in range(R):
            bm = bmx[r]
            if bm == NEG_INF:
                for jj in range(nk):
                    scp[r * KB + jj] = _F0
                n_zero += nk
                all_rows = False
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
        if all_rows:                # every row sees some key: one exp pass for all
            exp_rows(sc_addr, nk, R, KB * 4, Mr_addr, exs_addr)
            for r in range(R):
                Sr[r] += exs[2 * r]
                n_zero += np.int64(exs[2 * r + 1])
        else:
            for r in range(R):
                if bmx[r] == NEG_INF:
                    continue
                mr = Mr[r]
                if vec:
                    exp_block(sc_addr + r * KB * 4, nk, mr, s16_addr)
                    Sr[r] += s16[0]
                    n_zero += np.int64(s16[1])
                    continue
                ssum = _F0
                nz = 0
                for jj in range(nk):
                    p = vexp(scp[r * KB + jj] - mr)
                    scp[r * KB + jj] = p
                    ssum += p
                    nz += 1 if p == _F0 else 0
                Sr[r] += ssum
                n_zero += nz
        # V accumulation, KG keys at a time; a key no row of the tile sees is never read, and
        # a row only touches the V rows of its visible keys (p != 0: masked cache slots may
        # hold junk, and 0 * junk could be NaN). No zero p at all: whole blocks.
        pv_whole = v_blk and n_zero == 0 and nk % KG == 0
        if pv_whole:
            for r0 in range(0, R, 4):
                fa_simd.pv_blk_q4_0(dv, acc_addr + r0 * dv * 4, dv * 4, sc_addr + r0 * KB * 4,
                                    KB * 4, vpf, vbase + j0 * vnb1, vnb1, nk)
        for g0 in range(0, 0 if pv_whole else nk, KG):
            gn = min(KG, nk - g0)
            if n_zero != 0 and not _any_visible(cv, g0, gn):
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
                    full = n_zero == 0
                    for rr in range(0 if full else nr):
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
def _prep_q(R, rows_pos, rows_h, iq3, qa, qnb1, qnb2, qnb3, dk, int_dots, q8_1, qf, qi8, qd, qs,
            qx):
    """Load the tile's q rows (F32), and quantize them when the segment uses integer dots
    (as K's vec_dot_type: Q8_1 when q8_1, else Q8_0; qx: each row's block scales qd, then
    -qd·Σq, spread over 8 lanes per block, the layout of fa_simd.qk_*_q4_0_i8)."""
    nbk = dk // QK
    for r in range(R):
        x = f32_array(qa + rows_pos[r] * qnb1 + rows_h[r] * qnb2 + iq3 * qnb3, dk)
        for i in range(dk):
            qf[r * dk + i] = x[i]
        if int_dots:
            quant_q_row(qf, r * dk, qi8, r * dk, qd, qs, r * nbk, dk, q8_1)
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
