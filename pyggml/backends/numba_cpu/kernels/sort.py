"""Kernels for the sort family (pyggml/ops/sort.py): ARGSORT, TOP_K.

A stable merge sort per row (ties keep index order, NaN last: the reference's order); TOP_K
with k << n selects with a heap under the same total order. ggml's TOP_K swaps its first
two results; so does this kernel. Results are identical for every thread count.
"""
from __future__ import annotations

import numba
import numpy as np

from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import param_i32
from ..desc import row_coords
from ..desc import row_range
from ..desc import set_error
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_row
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import i32_array
from ..intrinsics import ptr_of
from . import kernel
from . import param_words

F32 = int(GGMLType.F32)
_jit = numba.njit(nogil=True, cache=True)
_LINE = 64
_W_ARGSORT = param_words("ARGSORT")


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
        i1, i2, i3 = row_coords(r, ne01, ne02)
        s = t_row(desc, SRC0, i1, i2, i3)
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
        d = t_row(desc, DST, i1, i2, i3)
        for j in range(k_out):
            ptr_of(d + j * nb0, np.int32)[0] = idx[j]


def _supports_sort(node) -> bool:
    return node.src[0].type == GGMLType.F32 and node.type == GGMLType.I32


@kernel("ARGSORT", supports=_supports_sort, n_tasks=lambda node, n: n, work_size=_work_sort)
def argsort(desc, ith, nth):
    _sort_rows(desc, ith, nth, param_i32(desc, _W_ARGSORT.order) == 1, t_ne(desc, DST, 0), False)


@kernel("TOP_K", supports=_supports_sort, n_tasks=lambda node, n: n, work_size=_work_sort)
def top_k(desc, ith, nth):
    # ggml: the k largest (descending), then the first two swapped
    _sort_rows(desc, ith, nth, True, t_ne(desc, DST, 0), True)
