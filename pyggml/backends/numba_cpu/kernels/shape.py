"""Kernels for the shape, sort and upscale families (pyggml/ops/shape.py, sort.py, upscale.py)
and, until it has its own kernel file, the conv family (pyggml/ops/conv.py).

CONCAT, REPEAT, PAD, SET, ACC  move raw element bits (every element type exact), reading
    sources through their strides (views, permutes); destination rows (SET/ACC: destination
    elements) are split over the threads, so no thread waits for another inside a node.
ARANGE, TIMESTEP_EMBEDDING  float32 math as ggml computes it.
ARGSORT, TOP_K  a stable merge sort per row (ties keep index order, NaN last: the reference's
    order); TOP_K with k << n selects with a heap under the same total order. ggml's TOP_K
    swaps its first two results; so does this kernel.
REPEAT_BACK, IM2COL, CONV_2D, CONV_TRANSPOSE_1D, POOL_1D/2D, SSM_CONV, SSM_SCAN, UPSCALE
    straight loops over any strides with float64 sums, so results sit within rounding of the
    float64 reference. Where ggml rounds an input to F16 (an F16 conv kernel), so do these.
Results are identical for every thread count.
"""
from __future__ import annotations

import numba
import numpy as np

from ....tensor import is_contiguous_rows
from ....types import GGMLType, TRAITS
from ....quants import nb as qnb
from ..desc import (DST, SRC0, SRC1, SRC2, SRC3, SRC4, SRC5, SRC6, ERR_WORK_SIZE, param_f32,
                    param_i32, register_error, row_range, set_error, t_addr, t_nb, t_ne, t_type,
                    type_size, blck_size, wdata, wsize)
from ..intrinsics import f32_array, i32_array, ptr_of
from . import kernel
from .copy import copy_bits, copy_bytes, load_f32, store_f32

F32 = int(GGMLType.F32)
_LINE = 64
ERR_SEQ_ID = register_error(171, "a sequence id of ssm_scan is out of range")
_jit = numba.njit(nogil=True, cache=True)


def _element(t) -> bool:
    return TRAITS[t].blck_size == 1


@_jit
def _zero(d, n):
    for k in range(n):
        ptr_of(d + k, np.uint8)[0] = 0


@_jit
def _copy_units(d, dstride, s, sstride, n, us):
    """n units (elements or blocks) of us bytes, strided on both sides."""
    if sstride == us and dstride == us:
        copy_bytes(d, s, n * us)
    else:
        for k in range(n):
            copy_bits(d + k * dstride, s + k * sstride, us)


# --- CONCAT -----------------------------------------------------------------------------------

def _supports_concat(node) -> bool:
    a, b = node.src[0], node.src[1]
    if TRAITS[a.type].is_quantized:
        return is_contiguous_rows(a) and is_contiguous_rows(b) and is_contiguous_rows(node)
    return True


@kernel("CONCAT", supports=_supports_concat)
def concat(desc, ith, nth):
    t = t_type(desc, DST)
    us = type_size(t)
    bs = blck_size(t)
    dim = param_i32(desc, 0)
    ne0u = t_ne(desc, DST, 0) // bs
    ne1, ne2, ne3 = t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    ne00u = t_ne(desc, SRC0, 0) // bs
    ne01, ne02, ne03 = t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    a_addr, b_addr, d_addr = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
    o1 = ne01 if dim == 1 else 0
    o2 = ne02 if dim == 2 else 0
    o3 = ne03 if dim == 3 else 0
    nb0 = t_nb(desc, DST, 0)
    nb00, nb10 = t_nb(desc, SRC0, 0), t_nb(desc, SRC1, 0)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1 = r % ne1
        i2 = (r // ne1) % ne2
        i3 = r // (ne1 * ne2)
        d = d_addr + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + i3 * t_nb(desc, DST, 3)
        if i1 < ne01 and i2 < ne02 and i3 < ne03:
            s = a_addr + i1 * t_nb(desc, SRC0, 1) + i2 * t_nb(desc, SRC0, 2) + i3 * t_nb(desc, SRC0, 3)
            if dim == 0:
                _copy_units(d, nb0, s, nb00, ne00u, us)
                s = b_addr + i1 * t_nb(desc, SRC1, 1) + i2 * t_nb(desc, SRC1, 2) + \
                    i3 * t_nb(desc, SRC1, 3)
                _copy_units(d + ne00u * nb0, nb0, s, nb10, ne0u - ne00u, us)
            else:
                _copy_units(d, nb0, s, nb00, ne0u, us)
        else:
            s = b_addr + (i1 - o1) * t_nb(desc, SRC1, 1) + (i2 - o2) * t_nb(desc, SRC1, 2) + \
                (i3 - o3) * t_nb(desc, SRC1, 3)
            _copy_units(d, nb0, s, nb10, ne0u, us)


# --- REPEAT -----------------------------------------------------------------------------------

def _supports_element_op(node) -> bool:
    return _element(node.src[0].type) and _element(node.type)


@kernel("REPEAT", supports=_supports_element_op, n_tasks=lambda node, n: n)
def repeat(desc, ith, nth):
    es = type_size(t_type(desc, DST))
    ne0, ne1, ne2, ne3 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    ne00, ne01, ne02, ne03 = (t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2),
                              t_ne(desc, SRC0, 3))
    if ne00 * ne01 * ne02 * ne03 == 0:
        return
    nb0, nb00 = t_nb(desc, DST, 0), t_nb(desc, SRC0, 0)
    a_addr, d_addr = t_addr(desc, SRC0), t_addr(desc, DST)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1 = r % ne1
        i2 = (r // ne1) % ne2
        i3 = r // (ne1 * ne2)
        d = d_addr + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + i3 * t_nb(desc, DST, 3)
        s = a_addr + (i1 % ne01) * t_nb(desc, SRC0, 1) + (i2 % ne02) * t_nb(desc, SRC0, 2) + \
            (i3 % ne03) * t_nb(desc, SRC0, 3)
        for k in range(ne0 // ne00):
            _copy_units(d + k * ne00 * nb0, nb0, s, nb00, ne00, es)


# --- PAD --------------------------------------------------------------------------------------

@kernel("PAD", supports=_supports_element_op)
def pad(desc, ith, nth):
    es = type_size(t_type(desc, DST))
    lp0, rp0 = param_i32(desc, 0), param_i32(desc, 1)
    lp1, lp2, lp3 = param_i32(desc, 2), param_i32(desc, 4), param_i32(desc, 6)
    circular = param_i32(desc, 8) != 0
    ne0, ne1, ne2, ne3 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    ne00, ne01, ne02, ne03 = (t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2),
                              t_ne(desc, SRC0, 3))
    nb0, nb00 = t_nb(desc, DST, 0), t_nb(desc, SRC0, 0)
    a_addr, d_addr = t_addr(desc, SRC0), t_addr(desc, DST)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1 = r % ne1
        i2 = (r // ne1) % ne2
        i3 = r // (ne1 * ne2)
        d = d_addr + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + i3 * t_nb(desc, DST, 3)
        k1, k2, k3 = i1 - lp1, i2 - lp2, i3 - lp3
        if circular:                  # a torus: wrap every coordinate (floor modulo)
            s = a_addr + (k1 % ne01) * t_nb(desc, SRC0, 1) + (k2 % ne02) * t_nb(desc, SRC0, 2) + \
                (k3 % ne03) * t_nb(desc, SRC0, 3)
            for i0 in range(ne0):
                copy_bits(d + i0 * nb0, s + ((i0 - lp0) % ne00) * nb00, es)
            continue
        if not (0 <= k1 < ne01 and 0 <= k2 < ne02 and 0 <= k3 < ne03):
            for i0 in range(ne0):
                _zero(d + i0 * nb0, es)
            continue
        s = a_addr + k1 * t_nb(desc, SRC0, 1) + k2 * t_nb(desc, SRC0, 2) + k3 * t_nb(desc, SRC0, 3)
        for i0 in range(lp0):
            _zero(d + i0 * nb0, es)
        _copy_units(d + lp0 * nb0, nb0, s, nb00, ne00, es)
        for i0 in range(lp0 + ne00, ne0):
            _zero(d + i0 * nb0, es)


# --- ARANGE -----------------------------------------------------------------------------------

@kernel("ARANGE", supports=lambda node: node.type == GGMLType.F32)
def arange(desc, ith, nth):
    start = param_f32(desc, 0)
    step = param_f32(desc, 2)
    n = t_ne(desc, DST, 0)
    nb0 = t_nb(desc, DST, 0)
    d = t_addr(desc, DST)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        # float32 throughout, as ggml: start + step * (float) i (no FMA contraction)
        ptr_of(d + i * nb0, np.float32)[0] = start + step * np.float32(i)


# --- ARGSORT / TOP_K --------------------------------------------------------------------------

@_jit
def _lt(x, y):
    """x sorts before y: IEEE order with NaN after everything (NumPy's sort order)."""
    return x < y or (y != y and x == x)


@_jit
def _stable_argsort(key, idx, tmp, n):
    """idx[:n] = indices sorting key ascending; equal keys keep index order."""
    run = 16
    for i in range(n):
        idx[i] = i
    for lo in range(0, n, run):                     # insertion sort of short runs
        hi = min(lo + run, n)
        for i in range(lo + 1, hi):
            v = idx[i]
            kv = key[v]
            j = i - 1
            while j >= lo and _lt(kv, key[idx[j]]):
                idx[j + 1] = idx[j]
                j -= 1
            idx[j + 1] = v
    width = run
    src, dst = idx, tmp
    in_tmp = False
    while width < n:                                # bottom-up merges
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if _lt(key[src[j]], key[src[i]]):
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
        src, dst = dst, src
        in_tmp = not in_tmp
        width *= 2
    if in_tmp:
        for i in range(n):
            idx[i] = tmp[i]


@_jit
def _before(key, i, j):
    """Total order of the sort: key ascending (NaN last), then index ascending."""
    if _lt(key[i], key[j]):
        return True
    if _lt(key[j], key[i]):
        return False
    return i < j


@_jit
def _sift_down(key, h, pos, k):
    """Max-heap on the sort order: h[0] is the element that sorts last among the kept ones."""
    while True:
        c = 2 * pos + 1
        if c >= k:
            return
        if c + 1 < k and _before(key, h[c], h[c + 1]):
            c += 1
        if _before(key, h[pos], h[c]):
            t = h[pos]
            h[pos] = h[c]
            h[c] = t
            pos = c
        else:
            return


@_jit
def _select_first_k(key, h, n, k):
    """h[:k] = the k indices that sort first, in sorted order (heap selection, O(n log k))."""
    for i in range(k):
        h[i] = i
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(key, h, i, k)
    for e in range(k, n):
        if _before(key, e, h[0]):
            h[0] = e
            _sift_down(key, h, 0, k)
    for end in range(k - 1, 0, -1):               # heap sort: the last-sorting goes to the end
        t = h[0]
        h[0] = h[end]
        h[end] = t
        _sift_down(key, h, 0, end)


def _sort_scratch(n: int) -> int:
    return 12 * n + _LINE


def _work_sort(node, n_threads) -> int:
    return _sort_scratch(node.src[0].ne[0]) * n_threads


@_jit
def _sort_rows(desc, ith, nth, desc_order, k_out, swap01):
    n = t_ne(desc, SRC0, 0)
    ne01, ne02 = t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    nr = ne01 * ne02 * t_ne(desc, SRC0, 3)
    scratch = 12 * n + _LINE
    if wsize(desc) < (ith + 1) * scratch:
        set_error(desc, ERR_WORK_SIZE)
        return
    base = wdata(desc) + ith * scratch
    key = f32_array(base, n)
    idx = i32_array(base + 4 * n, n)
    tmp = i32_array(base + 8 * n, n)
    nb00 = t_nb(desc, SRC0, 0)
    nb0 = t_nb(desc, DST, 0)
    ir0, ir1 = row_range(nr, ith, nth)
    for r in range(ir0, ir1):
        i1 = r % ne01
        i2 = (r // ne01) % ne02
        i3 = r // (ne01 * ne02)
        s = t_addr(desc, SRC0) + i1 * t_nb(desc, SRC0, 1) + i2 * t_nb(desc, SRC0, 2) + \
            i3 * t_nb(desc, SRC0, 3)
        for j in range(n):
            v = ptr_of(s + j * nb00, np.float32)[0]
            key[j] = -v if desc_order else v
        if k_out * 16 <= n:      # a few of many (top_k): heap selection, same order as the sort
            _select_first_k(key, idx, n, k_out)
        else:
            _stable_argsort(key, idx, tmp, n)
        if swap01 and k_out > 1:
            t = idx[0]
            idx[0] = idx[1]
            idx[1] = t
        d = t_addr(desc, DST) + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + \
            i3 * t_nb(desc, DST, 3)
        for j in range(k_out):
            ptr_of(d + j * nb0, np.int32)[0] = idx[j]


def _supports_sort(node) -> bool:
    return node.src[0].type == GGMLType.F32 and node.type == GGMLType.I32


@kernel("ARGSORT", supports=_supports_sort, n_tasks=lambda node, n: n, work_size=_work_sort)
def argsort(desc, ith, nth):
    _sort_rows(desc, ith, nth, param_i32(desc, 0) == 1, t_ne(desc, DST, 0), False)


@kernel("TOP_K", supports=_supports_sort, n_tasks=lambda node, n: n, work_size=_work_sort)
def top_k(desc, ith, nth):
    # ggml: the k largest (descending), then the first two swapped
    _sort_rows(desc, ith, nth, True, t_ne(desc, DST, 0), True)


# --- SET / ACC ----------------------------------------------------------------------------------
# dst (contiguous) = a, then b written (SET) or added (ACC) into the window (nb1, nb2, nb3,
# offset). Without a barrier inside the node each thread owns a range of dst's elements: it
# copies a there, then handles the b elements that land in its range, in b's order.

@_jit
def _window_pass(desc, ith, nth, add):
    es = type_size(t_type(desc, DST))
    n = t_ne(desc, DST, 0) * t_ne(desc, DST, 1) * t_ne(desc, DST, 2) * t_ne(desc, DST, 3)
    e0, e1 = row_range(n, ith, nth)
    if e0 >= e1:
        return
    lo, hi = e0 * es, e1 * es
    d_addr, a_addr, b_addr = t_addr(desc, DST), t_addr(desc, SRC0), t_addr(desc, SRC1)
    nb1, nb2, nb3 = param_i32(desc, 0), param_i32(desc, 1), param_i32(desc, 2)
    offset = param_i32(desc, 3)
    inplace = param_i32(desc, 4) != 0
    if not inplace:
        copy_bytes(d_addr + lo, a_addr + lo, hi - lo)
    ne10, ne11, ne12, ne13 = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2), \
        t_ne(desc, SRC1, 3)
    nb10 = t_nb(desc, SRC1, 0)
    for i3 in range(ne13):
        for i2 in range(ne12):
            for i1 in range(ne11):
                s = offset + i1 * nb1 + i2 * nb2 + i3 * nb3       # byte of element 0 in dst
                if s + ne10 * es <= lo or s >= hi:
                    continue
                k0 = 0 if s >= lo else (lo - s + es - 1) // es
                k1 = min(ne10, (hi - s + es - 1) // es)
                brow = b_addr + i1 * t_nb(desc, SRC1, 1) + i2 * t_nb(desc, SRC1, 2) + \
                    i3 * t_nb(desc, SRC1, 3)
                for k in range(k0, k1):
                    p = s + k * es
                    if add:     # ACC (f32): dst = a + b, a read as ggml reads it (src0)
                        ptr_of(d_addr + p, np.float32)[0] = ptr_of(a_addr + p, np.float32)[0] + \
                            ptr_of(brow + k * nb10, np.float32)[0]
                    else:
                        copy_bits(d_addr + p, brow + k * nb10, es)


def _supports_window(node) -> bool:
    return _element(node.type) and node.src[0].type == node.type == node.src[1].type


@kernel("SET", supports=_supports_window, n_tasks=lambda node, n: n)
def set_window(desc, ith, nth):
    _window_pass(desc, ith, nth, False)


@kernel("ACC", supports=lambda node: node.type == GGMLType.F32 and _supports_window(node),
        n_tasks=lambda node, n: n, work_size=lambda node, n: 0)
def acc_window(desc, ith, nth):
    _window_pass(desc, ith, nth, True)


# --- REPEAT_BACK --------------------------------------------------------------------------------

_FLOAT_ELEMS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


@kernel("REPEAT_BACK", supports=lambda node: node.src[0].type in _FLOAT_ELEMS,
        n_tasks=lambda node, n: n)
def repeat_back(desc, ith, nth):
    """Each output element: the float64 sum of its repeats (rows split over the threads)."""
    from_t = t_type(desc, SRC0)
    dt = t_type(desc, DST)
    ne0, ne1, ne2, ne3 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    nr0 = t_ne(desc, SRC0, 0) // ne0
    nr1 = t_ne(desc, SRC0, 1) // ne1
    nr2 = t_ne(desc, SRC0, 2) // ne2
    nr3 = t_ne(desc, SRC0, 3) // ne3
    nb00, nb01, nb02, nb03 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), \
        t_nb(desc, SRC0, 3)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        k1 = r % ne1
        k2 = (r // ne1) % ne2
        k3 = r // (ne1 * ne2)
        d = t_addr(desc, DST) + k1 * t_nb(desc, DST, 1) + k2 * t_nb(desc, DST, 2) + \
            k3 * t_nb(desc, DST, 3)
        for k0 in range(ne0):
            acc = 0.0
            for i3 in range(nr3):
                for i2 in range(nr2):
                    for i1 in range(nr1):
                        s = t_addr(desc, SRC0) + (i3 * ne3 + k3) * nb03 + (i2 * ne2 + k2) * nb02 + \
                            (i1 * ne1 + k1) * nb01
                        for i0 in range(nr0):
                            acc += load_f32(s + (i0 * ne0 + k0) * nb00, from_t)
            store_f32(d + k0 * t_nb(desc, DST, 0), dt, np.float32(acc))


# --- TIMESTEP_EMBEDDING -------------------------------------------------------------------------

@kernel("TIMESTEP_EMBEDDING", supports=lambda node: node.src[0].type == GGMLType.F32)
def timestep_embedding(desc, ith, nth):
    dim = param_i32(desc, 0)
    max_period = param_i32(desc, 1)
    half = dim // 2
    n = t_ne(desc, SRC0, 0)
    nb00 = t_nb(desc, SRC0, 0)
    nb1 = t_nb(desc, DST, 1)
    lm = np.log(np.float32(max_period))
    ir0, ir1 = row_range(n, ith, nth)
    for i in range(ir0, ir1):
        ts = ptr_of(t_addr(desc, SRC0) + i * nb00, np.float32)[0]
        y = f32_array(t_addr(desc, DST) + i * nb1, dim)
        for j in range(half):
            # float32 frequencies as ggml: expf(-logf(max_period) * j / half)
            freq = np.float32(np.exp((-lm * np.float32(j)) / np.float32(half)))
            arg = np.float64(ts * freq)
            y[j] = np.float32(np.cos(arg))
            y[j + half] = np.float32(np.sin(arg))
        if dim % 2 != 0:
            y[2 * half] = np.float32(0.0)


# ================================================================================================
# The conv family (pyggml/ops/conv.py): IM2COL, CONV_2D, CONV_TRANSPOSE_1D, POOL_1D, POOL_2D,
# SSM_CONV, SSM_SCAN; and UPSCALE. Straight loops over any strides; sums in float64, so the
# results sit within rounding of the reference. (They live in this file until the conv family
# gets a kernels/conv.py of its own.)
# ================================================================================================

F16 = int(GGMLType.F16)
_FLT_MAX = np.float32(np.finfo(np.float32).max)


@_jit
def _to_f16_f32(v):
    """v rounded to F16 and back (ggml converts conv inputs to F16 for an F16 kernel)."""
    return qnb.f16_to_f32(qnb.f32_to_f16(v))


@_jit
def _rowcoords(r, ne1, ne2):
    return r % ne1, (r // ne1) % ne2, r // (ne1 * ne2)


# --- IM2COL -------------------------------------------------------------------------------------

@kernel("IM2COL", supports=lambda node: node.type in (GGMLType.F32, GGMLType.F16)
        and node.src[1].type in _FLOAT_ELEMS, n_tasks=lambda node, n: n)
def im2col(desc, ith, nth):
    s0, s1 = param_i32(desc, 0), param_i32(desc, 1)
    p0, p1 = param_i32(desc, 2), param_i32(desc, 3)
    d0, d1 = param_i32(desc, 4), param_i32(desc, 5)
    is_2d = param_i32(desc, 6) == 1
    bt, dt = t_type(desc, SRC1), t_type(desc, DST)
    KW = t_ne(desc, SRC0, 0)
    KH = t_ne(desc, SRC0, 1) if is_2d else 1
    IW = t_ne(desc, SRC1, 0)
    IH = t_ne(desc, SRC1, 1) if is_2d else 1
    IC = t_ne(desc, SRC1, 2) if is_2d else t_ne(desc, SRC1, 1)
    nbw = t_nb(desc, SRC1, 0)
    nbh = t_nb(desc, SRC1, 1) if is_2d else 0
    nbc = t_nb(desc, SRC1, 2) if is_2d else t_nb(desc, SRC1, 1)
    nbn = t_nb(desc, SRC1, 3) if is_2d else t_nb(desc, SRC1, 2)
    OW, d2, d3 = t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    nb0 = t_nb(desc, DST, 0)
    ir0, ir1 = row_range(OW * d2 * d3, ith, nth)
    for r in range(ir0, ir1):
        iow, j2, j3 = _rowcoords(r, OW, d2)
        ioh, n = (j2, j3) if is_2d else (0, j2)
        d = t_addr(desc, DST) + iow * t_nb(desc, DST, 1) + j2 * t_nb(desc, DST, 2) + \
            j3 * t_nb(desc, DST, 3)
        for ic in range(IC):
            base = t_addr(desc, SRC1) + n * nbn + ic * nbc
            for kh in range(KH):
                ih = ioh * s1 + kh * d1 - p1
                for kw in range(KW):
                    iw = iow * s0 + kw * d0 - p0
                    v = np.float32(0.0)
                    if 0 <= ih < IH and 0 <= iw < IW:
                        v = load_f32(base + ih * nbh + iw * nbw, bt)
                    store_f32(d + ((ic * KH + kh) * KW + kw) * nb0, dt, v)


# --- CONV_2D (direct) ---------------------------------------------------------------------------

@kernel("CONV_2D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16)
        and node.src[1].type == GGMLType.F32, n_tasks=lambda node, n: n,
        work_size=lambda node, n: 0)
def conv_2d(desc, ith, nth):
    """out[n, oc, oh, ow] = sum over ic, kh, kw; an F16 kernel rounds the input to F16 (ggml)."""
    s0, s1 = param_i32(desc, 0), param_i32(desc, 1)
    p0, p1 = param_i32(desc, 2), param_i32(desc, 3)
    d0, d1 = param_i32(desc, 4), param_i32(desc, 5)
    kt = t_type(desc, SRC0)
    KW, KH, IC = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    IW, IH = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1)
    OW, OH, OC = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    k_addr, x_addr = t_addr(desc, SRC0), t_addr(desc, SRC1)
    kn0, kn1, kn2, kn3 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    xn0, xn1, xn2, xn3 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1), t_nb(desc, SRC1, 2), t_nb(desc, SRC1, 3)
    ir0, ir1 = row_range(OH * OC * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        oh, oc, n = _rowcoords(r, OH, OC)
        d = t_addr(desc, DST) + oh * t_nb(desc, DST, 1) + oc * t_nb(desc, DST, 2) + \
            n * t_nb(desc, DST, 3)
        for ow in range(OW):
            acc = 0.0
            for ic in range(IC):
                for kh in range(KH):
                    ih = oh * s1 + kh * d1 - p1
                    if ih < 0 or ih >= IH:
                        continue
                    for kw in range(KW):
                        iw = ow * s0 + kw * d0 - p0
                        if iw < 0 or iw >= IW:
                            continue
                        x = ptr_of(x_addr + iw * xn0 + ih * xn1 + ic * xn2 + n * xn3, np.float32)[0]
                        if kt == F16:
                            x = _to_f16_f32(x)
                        w = load_f32(k_addr + kw * kn0 + kh * kn1 + ic * kn2 + oc * kn3, kt)
                        acc += np.float64(x) * np.float64(w)
            ptr_of(d + ow * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)


# --- CONV_TRANSPOSE_1D --------------------------------------------------------------------------

def _work_conv_t1d(node, n_threads) -> int:
    return (8 * node.ne[0] + _LINE) * n_threads


@kernel("CONV_TRANSPOSE_1D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16)
        and node.src[1].type == GGMLType.F32, n_tasks=lambda node, n: n, work_size=_work_conv_t1d)
def conv_transpose_1d(desc, ith, nth):
    s0 = param_i32(desc, 0)
    kt = t_type(desc, SRC0)
    K, OC, IC = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    L = t_ne(desc, SRC1, 0)
    OL = t_ne(desc, DST, 0)
    scratch = 8 * OL + _LINE
    if wsize(desc) < (ith + 1) * scratch:
        set_error(desc, ERR_WORK_SIZE)
        return
    acc = numba.carray(ptr_of(wdata(desc) + ith * scratch, np.float64), OL)
    kn0, kn1, kn2 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2)
    xn0, xn1 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1)
    o0, o1 = row_range(OC, ith, nth)
    for oc in range(o0, o1):
        for t in range(OL):
            acc[t] = 0.0
        for l in range(L):
            for k in range(K):
                v = 0.0
                for ic in range(IC):
                    x = ptr_of(t_addr(desc, SRC1) + l * xn0 + ic * xn1, np.float32)[0]
                    if kt == F16:
                        x = _to_f16_f32(x)
                    v += np.float64(x) * np.float64(load_f32(t_addr(desc, SRC0) + k * kn0 +
                                                             oc * kn1 + ic * kn2, kt))
                acc[l * s0 + k] += v
        d = t_addr(desc, DST) + oc * t_nb(desc, DST, 1)
        for t in range(OL):
            ptr_of(d + t * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc[t])


# --- POOL_1D / POOL_2D --------------------------------------------------------------------------

@kernel("POOL_1D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16),
        n_tasks=lambda node, n: n)
def pool_1d(desc, ith, nth):
    op, k0, s0, p0 = param_i32(desc, 0), param_i32(desc, 1), param_i32(desc, 2), param_i32(desc, 3)
    st = t_type(desc, SRC0)
    IW = t_ne(desc, SRC0, 0)
    OW, ne1, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = _rowcoords(r, ne1, ne2)
        s = t_addr(desc, SRC0) + i1 * t_nb(desc, SRC0, 1) + i2 * t_nb(desc, SRC0, 2) + \
            i3 * t_nb(desc, SRC0, 3)
        d = t_addr(desc, DST) + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + \
            i3 * t_nb(desc, DST, 3)
        for ow in range(OW):
            total = 0.0
            best = -_FLT_MAX
            cnt = 0
            for k in range(k0):
                j = ow * s0 - p0 + k
                if j < 0 or j >= IW:
                    continue
                v = load_f32(s + j * t_nb(desc, SRC0, 0), st)
                total += v
                best = best if v < best else v      # std::max(v, best): NaN order as ggml
                cnt += 1
            if op == 1:                      # avg over the in-range samples (0 when none)
                res = np.float32(total / cnt) if cnt > 0 else np.float32(0.0)
            else:
                res = best
            ptr_of(d + ow * t_nb(desc, DST, 0), np.float32)[0] = res


@kernel("POOL_2D", supports=lambda node: node.src[0].type in (GGMLType.F32, GGMLType.F16),
        n_tasks=lambda node, n: n)
def pool_2d(desc, ith, nth):
    op = param_i32(desc, 0)
    k0, k1, s0, s1 = param_i32(desc, 1), param_i32(desc, 2), param_i32(desc, 3), param_i32(desc, 4)
    p0, p1 = param_i32(desc, 5), param_i32(desc, 6)
    st = t_type(desc, SRC0)
    IW, IH = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    OW, OH, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    sn0, sn1 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1)
    ir0, ir1 = row_range(OH * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        oy, i2, i3 = _rowcoords(r, OH, ne2)
        s = t_addr(desc, SRC0) + i2 * t_nb(desc, SRC0, 2) + i3 * t_nb(desc, SRC0, 3)
        d = t_addr(desc, DST) + oy * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + \
            i3 * t_nb(desc, DST, 3)
        for ox in range(OW):
            total = 0.0
            best = -_FLT_MAX
            for ky in range(k1):
                iy = oy * s1 - p1 + ky
                if iy < 0 or iy >= IH:
                    continue
                for kx in range(k0):
                    ix = ox * s0 - p0 + kx
                    if ix < 0 or ix >= IW:
                        continue
                    v = load_f32(s + iy * sn1 + ix * sn0, st)
                    total += v
                    best = best if v < best else v  # std::max(v, best), as ggml
            res = np.float32(total / (k0 * k1)) if op == 1 else best   # avg: padding counts
            ptr_of(d + ox * t_nb(desc, DST, 0), np.float32)[0] = res


# --- SSM_CONV / SSM_SCAN --------------------------------------------------------------------------

@kernel("SSM_CONV", supports=lambda node: node.src[0].type == GGMLType.F32
        and node.src[1].type == GGMLType.F32, n_tasks=lambda node, n: n)
def ssm_conv(desc, ith, nth):
    nc = t_ne(desc, SRC1, 0)
    d_inner, n_t, n_s = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    sn0, sn1, sn2 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2)
    cn0, cn1 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1)
    r0, r1 = row_range(d_inner, ith, nth)          # channels split over threads, as ggml
    for s in range(n_s):
        for t in range(n_t):
            d = t_addr(desc, DST) + t * t_nb(desc, DST, 1) + s * t_nb(desc, DST, 2)
            for r in range(r0, r1):
                acc = 0.0
                for k in range(nc):
                    acc += np.float64(ptr_of(t_addr(desc, SRC0) + (t + k) * sn0 + r * sn1 + s * sn2,
                                             np.float32)[0]) * \
                        np.float64(ptr_of(t_addr(desc, SRC1) + k * cn0 + r * cn1, np.float32)[0])
                ptr_of(d + r * t_nb(desc, DST, 0), np.float32)[0] = np.float32(acc)


@kernel("SSM_SCAN", supports=lambda node: all(s.type == GGMLType.F32 for s in node.src[:6]),
        n_tasks=lambda node, n: n)
def ssm_scan(desc, ith, nth):
    """Heads split over the threads (ggml's split); states kept in the result between tokens."""
    K = param_i32(desc, 0)
    nc, nr = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1)
    ns_s = t_ne(desc, SRC0, 3)
    nh, nt, ns = t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2), t_ne(desc, SRC1, 3)
    ng = t_ne(desc, SRC4, 1)
    a_ne0 = t_ne(desc, SRC3, 0)
    sb = nc * nr * nh                                  # floats per state block
    y = f32_array(t_addr(desc, DST), nr * nh * nt * ns + K * sb * ns)
    st_off = nr * nh * nt * ns
    h0, h1 = row_range(nh, ith, nth)
    for i3 in range(ns):
        sid = np.int64(ptr_of(t_addr(desc, SRC6) + i3 * t_nb(desc, SRC6, 0), np.int32)[0])
        if sid < 0 or sid >= ns_s:
            set_error(desc, ERR_SEQ_ID)
            return
        s_in = t_addr(desc, SRC0) + sid * t_nb(desc, SRC0, 3)
        out = st_off + i3 * sb                         # final state of sequence i3 (slot 0)
        for slot in range(max(1, nt), K):              # snapshots older than the sequence: 0
            snap = st_off + (slot * ns + i3) * sb
            for j in range(h0 * nr * nc, h1 * nr * nc):
                y[snap + j] = np.float32(0.0)
        for h in range(h0, h1):                        # start from the input state
            for i1 in range(nr):
                for i0 in range(nc):
                    y[out + (h * nr + i1) * nc + i0] = ptr_of(
                        s_in + i0 * 4 + i1 * t_nb(desc, SRC0, 1) + h * t_nb(desc, SRC0, 2),
                        np.float32)[0]
        for t in range(nt):
            for h in range(h0, h1):
                dtv = np.float64(ptr_of(t_addr(desc, SRC2) + h * 4 + t * t_nb(desc, SRC2, 1) +
                                        i3 * t_nb(desc, SRC2, 2), np.float32)[0])
                dsp = dtv if dtv > 20.0 else np.log1p(np.exp(dtv))
                g = h // (nh // ng)
                for i1 in range(nr):
                    x = np.float64(ptr_of(t_addr(desc, SRC1) + i1 * 4 + h * t_nb(desc, SRC1, 1) +
                                          t * t_nb(desc, SRC1, 2) + i3 * t_nb(desc, SRC1, 3),
                                          np.float32)[0])
                    xdt = x * dsp
                    acc = 0.0
                    for i0 in range(nc):
                        a = np.float64(ptr_of(t_addr(desc, SRC3) + (i0 if a_ne0 > 1 else 0) * 4 +
                                              h * t_nb(desc, SRC3, 1), np.float32)[0])
                        bo = i0 * 4 + g * t_nb(desc, SRC4, 1) + t * t_nb(desc, SRC4, 2) + \
                            i3 * t_nb(desc, SRC4, 3)
                        bv = np.float64(ptr_of(t_addr(desc, SRC4) + bo, np.float32)[0])
                        co = i0 * 4 + g * t_nb(desc, SRC5, 1) + t * t_nb(desc, SRC5, 2) + \
                            i3 * t_nb(desc, SRC5, 3)
                        cv = np.float64(ptr_of(t_addr(desc, SRC5) + co, np.float32)[0])
                        j = out + (h * nr + i1) * nc + i0
                        state = np.float64(y[j]) * np.exp(dsp * a) + bv * xdt
                        y[j] = np.float32(state)
                        acc += state * cv
                    y[((i3 * nt + t) * nh + h) * nr + i1] = np.float32(acc)
                slot = nt - 1 - t
                if K > 1 and 0 < slot < K:
                    snap = st_off + (slot * ns + i3) * sb
                    for j in range(h * nr * nc, (h + 1) * nr * nc):
                        y[snap + j] = y[out + j]


# --- UPSCALE ----------------------------------------------------------------------------------
# Coordinates and weights in float32 exactly as ggml computes them, the sums in float64.

@_jit
def _up_nearest(i, sf, n_src):
    return min(np.int64(np.trunc(np.float32(i) / sf)), n_src - 1)


@_jit
def _up_lin(i, sf, po, n_src):
    c = (np.float32(i) + po) / sf - po
    c0 = np.int64(np.floor(c))
    c1 = min(max(c0 + 1, 0), n_src - 1)
    c0 = min(max(c0, 0), n_src - 1)
    dd = c - np.float32(c0)
    dd = min(max(dd, np.float32(0.0)), np.float32(1.0))
    return c0, c1, np.float64(dd)


@_jit
def _cubic_w(t, a):
    w1 = ((a + np.float32(2.0)) * t - (a + np.float32(3.0))) * t * t + np.float32(1.0)
    return w1


@_jit
def _cubic_w2(t, a):
    return ((a * t - np.float32(5.0) * a) * t + np.float32(8.0) * a) * t - np.float32(4.0) * a


@_jit
def _cubic_weights(d, a):
    return (np.float64(_cubic_w2(d + np.float32(1.0), a)), np.float64(_cubic_w(d, a)),
            np.float64(_cubic_w(np.float32(1.0) - d, a)),
            np.float64(_cubic_w2(np.float32(2.0) - d, a)))


@_jit
def _aa_w(s, c, po, inv):
    w = np.float32(1.0) - abs((np.float32(s) - c + po) * inv)
    return np.float64(max(w, np.float32(0.0)))


@kernel("UPSCALE", supports=lambda node: node.src[0].type == GGMLType.F32, n_tasks=lambda node, n: n)
def upscale(desc, ith, nth):
    f1 = np.float32(1.0)
    mode_flags = param_i32(desc, 0)
    mode = mode_flags & 0xFF
    ne0, ne1, ne2, ne3 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    n0, n1, n2, n3 = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    sf0 = np.float32(ne0) / np.float32(n0)
    sf1 = np.float32(ne1) / np.float32(n1)
    sf2 = np.float32(ne2) / np.float32(n2)
    sf3 = np.float32(ne3) / np.float32(n3)
    po = np.float32(0.5)
    if mode_flags & (1 << 8):                       # align corners
        po = np.float32(0.0)
        if ne0 > 1 and n0 > 1:
            sf0 = np.float32(ne0 - 1) / np.float32(n0 - 1)
        if ne1 > 1 and n1 > 1:
            sf1 = np.float32(ne1 - 1) / np.float32(n1 - 1)
    antialias = (mode_flags & (1 << 9)) != 0
    sn0, sn1 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = _rowcoords(r, ne1, ne2)
        plane = t_addr(desc, SRC0) + _up_nearest(i2, sf2, n2) * t_nb(desc, SRC0, 2) + \
            _up_nearest(i3, sf3, n3) * t_nb(desc, SRC0, 3)
        d = t_addr(desc, DST) + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + \
            i3 * t_nb(desc, DST, 3)
        for i0 in range(ne0):
            val = 0.0
            if mode == 0:
                val = np.float64(ptr_of(plane + _up_nearest(i1, sf1, n1) * sn1 +
                                        _up_nearest(i0, sf0, n0) * sn0, np.float32)[0])
            elif mode == 1 and antialias:
                sup1 = max(f1, f1 / sf1)
                sup0 = max(f1, f1 / sf0)
                inv1, inv0 = f1 / sup1, f1 / sup0
                cy = (np.float32(i1) + po) / sf1
                cx = (np.float32(i0) + po) / sf0
                ylo = max(np.int64(np.trunc(cy - sup1 + po)), 0)
                yhi = min(np.int64(np.trunc(cy + sup1 + po)), n1)
                xlo = max(np.int64(np.trunc(cx - sup0 + po)), 0)
                xhi = min(np.int64(np.trunc(cx + sup0 + po)), n0)
                num, wys, wxs = 0.0, 0.0, 0.0
                for sx in range(xlo, xhi):
                    wxs += _aa_w(sx, cx, po, inv0)
                for sy in range(ylo, yhi):
                    wy = _aa_w(sy, cy, po, inv1)
                    wys += wy
                    if wy <= 0.0:
                        continue
                    for sx in range(xlo, xhi):
                        wx = _aa_w(sx, cx, po, inv0)
                        if wx > 0.0:
                            num += wy * np.float64(ptr_of(plane + sy * sn1 + sx * sn0,
                                                          np.float32)[0]) * wx
                den = wys * wxs
                val = num / den if den > 0.0 else 0.0
            elif mode == 1:
                y0, y1, dy = _up_lin(i1, sf1, po, n1)
                x0, x1, dx = _up_lin(i0, sf0, po, n0)
                a = np.float64(ptr_of(plane + y0 * sn1 + x0 * sn0, np.float32)[0])
                b = np.float64(ptr_of(plane + y0 * sn1 + x1 * sn0, np.float32)[0])
                c = np.float64(ptr_of(plane + y1 * sn1 + x0 * sn0, np.float32)[0])
                e = np.float64(ptr_of(plane + y1 * sn1 + x1 * sn0, np.float32)[0])
                val = a * (1 - dx) * (1 - dy) + b * dx * (1 - dy) + c * (1 - dx) * dy + e * dx * dy
            else:                                   # bicubic, alpha = -0.75
                al = np.float32(-0.75)
                cy = (np.float32(i1) + po) / sf1 - po
                cx = (np.float32(i0) + po) / sf0 - po
                y0 = np.int64(np.floor(cy))
                x0 = np.int64(np.floor(cx))
                wy = _cubic_weights(cy - np.float32(y0), al)
                wx = _cubic_weights(cx - np.float32(x0), al)
                for jy in range(4):
                    yy = min(max(y0 + jy - 1, 0), n1 - 1)
                    h = 0.0
                    for jx in range(4):
                        xx = min(max(x0 + jx - 1, 0), n0 - 1)
                        h += np.float64(ptr_of(plane + yy * sn1 + xx * sn0, np.float32)[0]) * wx[jx]
                    val += h * wy[jy]
            ptr_of(d + i0 * t_nb(desc, DST, 0), np.float32)[0] = np.float32(val)
