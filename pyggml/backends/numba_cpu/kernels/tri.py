"""Kernels for pyggml/ops/tri.py: FILL, TRI, DIAG, SOLVE_TRI.

FILL, TRI and DIAG move element bits (exact). SOLVE_TRI is forward substitution per (batch,
column of B), the unit ggml's CPU splits over threads, with float64 sums as the reference.
Results are identical for every thread count.
"""
from __future__ import annotations

import numba
import numpy as np

from ....quants import nb as qnb
from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_type
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from . import kernel

F32, F16 = int(GGMLType.F32), int(GGMLType.F16)
_jit = numba.njit(nogil=True, cache=True)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _div(a, b):
    """a / b with IEEE results for b == 0 (inf, nan), as ggml's C division."""
    return a / b


@_jit
def row_addr(desc, slot, r):
    """Address of row r (rows counted over dims 1..3) of the tensor in slot."""
    ne1, ne2 = t_ne(desc, slot, 1), t_ne(desc, slot, 2)
    return (t_addr(desc, slot) + (r % ne1) * t_nb(desc, slot, 1) +
            ((r // ne1) % ne2) * t_nb(desc, slot, 2) + (r // (ne1 * ne2)) * t_nb(desc, slot, 3))


@_jit
def n_rows(desc, slot):
    return t_ne(desc, slot, 1) * t_ne(desc, slot, 2) * t_ne(desc, slot, 3)


@kernel("FILL", supports=lambda node: node.type in (GGMLType.F32, GGMLType.F16))
def fill(desc, ith, nth):
    c = param_f32(desc, 0)
    ne0 = t_ne(desc, DST, 0)
    r0, r1 = row_range(n_rows(desc, DST), ith, nth)
    if t_type(desc, DST) == F32:
        for r in range(r0, r1):
            f32_array(row_addr(desc, DST, r), ne0)[:] = c
    else:
        h = qnb.f32_to_f16(c)
        for r in range(r0, r1):
            d = row_addr(desc, DST, r)
            for i in range(ne0):
                ptr_of(d + 2 * i, np.uint16)[0] = h


@kernel("TRI", supports=lambda node: node.type == GGMLType.F32)
def tri(desc, ith, nth):
    tt = param_i32(desc, 0)
    ne0, ne1 = t_ne(desc, DST, 0), t_ne(desc, DST, 1)
    r0, r1 = row_range(n_rows(desc, DST), ith, nth)
    for r in range(r0, r1):
        i1 = r % ne1
        s = f32_array(row_addr(desc, SRC0, r), ne0)
        d = f32_array(row_addr(desc, DST, r), ne0)
        for i0 in range(ne0):
            if tt == 3:
                keep = i0 < i1
            elif tt == 2:
                keep = i0 <= i1
            elif tt == 1:
                keep = i0 > i1
            else:
                keep = i0 >= i1
            d[i0] = s[i0] if keep else np.float32(0.0)


@kernel("DIAG", supports=lambda node: node.type == GGMLType.F32)
def diag(desc, ith, nth):
    n = t_ne(desc, DST, 0)
    r0, r1 = row_range(n_rows(desc, DST), ith, nth)
    for r in range(r0, r1):
        i1 = r % n
        d = f32_array(row_addr(desc, DST, r), n)
        d[:] = np.float32(0.0)
        src_row = row_addr(desc, SRC0, r // n)       # a's row of this matrix (ne1 == 1)
        d[i1] = ptr_of(src_row + i1 * t_nb(desc, SRC0, 0), np.float32)[0]


@kernel("SOLVE_TRI", supports=lambda node: node.type == GGMLType.F32)
def solve_tri(desc, ith, nth):
    """Units (batch, column of B) as ggml; x[i] = (b[i] - sum_{t<i} A[i, t] x[t]) / A[i, i]."""
    k, n = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1)
    ne2 = t_ne(desc, SRC1, 2)
    u0, u1 = row_range(k * ne2 * t_ne(desc, SRC1, 3), ith, nth)
    x = np.empty(n, dtype=np.float64)
    for u in range(u0, u1):
        col = u % k
        i2, i3 = (u // k) % ne2, u // (k * ne2)
        a = t_addr(desc, SRC0) + i2 * t_nb(desc, SRC0, 2) + i3 * t_nb(desc, SRC0, 3)
        b = t_addr(desc, SRC1) + i2 * t_nb(desc, SRC1, 2) + i3 * t_nb(desc, SRC1, 3)
        d = t_addr(desc, DST) + i2 * t_nb(desc, DST, 2) + i3 * t_nb(desc, DST, 3)
        for i in range(n):
            arow = f32_array(a + i * t_nb(desc, SRC0, 1), n)
            s = 0.0
            for t in range(i):
                s += np.float64(arow[t]) * x[t]
            bi = np.float64(ptr_of(b + i * t_nb(desc, SRC1, 1) + col * 4, np.float32)[0])
            x[i] = _div(bi - s, np.float64(arow[i]))
            ptr_of(d + i * t_nb(desc, DST, 1) + col * 4, np.float32)[0] = np.float32(x[i])
