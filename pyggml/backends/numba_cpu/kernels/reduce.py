"""Kernels for SUM_ROWS, MEAN, ARGMAX, SUM, CUMSUM and COUNT_EQUAL (pyggml/ops/reduce.py is
the spec). Sources may have any strides (ggml's CPU kernels assume packed rows).

Row-parallel ops split rows with ggml's row_range; SUM and COUNT_EQUAL produce one value and
run on one thread (as ggml's SUM; its COUNT_EQUAL partial sums would need a barrier inside
the node). Float sums accumulate in float64 (ggml's ggml_float) with the 'reassoc' flag so
LLVM vectorizes them. ARGMAX runs ggml's exact loop (last index of the maximum).
"""
from __future__ import annotations

import numba
import numpy as np

from ....quants import nb as qnb
from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import row_addr
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_type
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from . import kernel
from . import one_task
from . import rows_n_tasks

F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
_F = np.float32
_jit = numba.njit(nogil=True, cache=True, fastmath={"contract", "reassoc"}, error_model="numpy")


@_jit
def sum_row_f32(addr, nb0, n):
    s = 0.0
    if nb0 == 4:
        x = f32_array(addr, n)
        for i in range(n):
            s += np.float64(x[i])
    else:
        for i in range(n):
            s += np.float64(ptr_of(addr + i * nb0, np.float32)[0])
    return s


@_jit
def sum_row_any(addr, nb0, n, t):
    if t == F32:
        return sum_row_f32(addr, nb0, n)
    s = 0.0
    if t == F16:
        for i in range(n):
            s += np.float64(qnb.f16_to_f32(ptr_of(addr + i * nb0, np.uint16)[0]))
    else:
        for i in range(n):
            s += np.float64(qnb.bf16_to_f32(ptr_of(addr + i * nb0, np.uint16)[0]))
    return s


def _f32_in(node) -> bool:
    return node.src[0].type == GGMLType.F32


@_jit
def rows_sum_or_mean(desc, ith, nth, mean):
    n = t_ne(desc, SRC0, 0)
    nb0 = t_nb(desc, SRC0, 0)
    ir0, ir1 = row_range(t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3),
                         ith, nth)
    for r in range(ir0, ir1):
        v = _F(sum_row_f32(row_addr(desc, SRC0, r), nb0, n))
        if mean:
            v = v / _F(n)
        ptr_of(row_addr(desc, DST, r), np.float32)[0] = v


@kernel("SUM_ROWS", supports=lambda n: _f32_in(n) and n.type == GGMLType.F32, n_tasks=rows_n_tasks)
def sum_rows_f32(desc, ith, nth):
    rows_sum_or_mean(desc, ith, nth, False)


@kernel("MEAN", supports=_f32_in, n_tasks=rows_n_tasks)
def mean_f32(desc, ith, nth):
    rows_sum_or_mean(desc, ith, nth, True)


@kernel("ARGMAX", supports=_f32_in, n_tasks=rows_n_tasks)
def argmax_f32(desc, ith, nth):
    """ggml_vec_argmax_f32 per row: max = MAX(max, x); if (max == x) idx = i."""
    n = t_ne(desc, SRC0, 0)
    nb0, nb1 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1)
    sa = t_addr(desc, SRC0)
    dst = t_addr(desc, DST)
    dnb0 = t_nb(desc, DST, 0)
    ir0, ir1 = row_range(t_ne(desc, SRC0, 1), ith, nth)
    for r in range(ir0, ir1):
        m = _F(-np.inf)
        idx = 0
        a = sa + r * nb1
        if nb0 == 4:
            x = f32_array(a, n)
            for i in range(n):
                v = x[i]
                m = m if m > v else v
                if m == v:
                    idx = i
        else:
            for i in range(n):
                v = ptr_of(a + i * nb0, np.float32)[0]
                m = m if m > v else v
                if m == v:
                    idx = i
        ptr_of(dst + r * dnb0, np.int32)[0] = np.int32(idx)


@kernel("SUM", supports=lambda n: n.src[0].type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16),
        n_tasks=one_task)
def sum_all(desc, ith, nth):
    if ith != 0:
        return
    t = t_type(desc, SRC0)
    n = t_ne(desc, SRC0, 0)
    nb0 = t_nb(desc, SRC0, 0)
    s = 0.0
    for r in range(t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3)):
        s += sum_row_any(row_addr(desc, SRC0, r), nb0, n, t)
    d = t_addr(desc, DST)
    if t == F32:
        ptr_of(d, np.float32)[0] = _F(s)
    elif t == F16:
        ptr_of(d, np.uint16)[0] = qnb.f32_to_f16(_F(s))
    else:
        ptr_of(d, np.uint16)[0] = qnb.f32_to_bf16(_F(s))


@kernel("CUMSUM", supports=lambda n: _f32_in(n) and n.type == GGMLType.F32, n_tasks=rows_n_tasks)
def cumsum_f32(desc, ith, nth):
    """Running sum along ne0, accumulated in float64."""
    n = t_ne(desc, SRC0, 0)
    nb0, dnb0 = t_nb(desc, SRC0, 0), t_nb(desc, DST, 0)
    ir0, ir1 = row_range(t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3),
                         ith, nth)
    for r in range(ir0, ir1):
        a = row_addr(desc, SRC0, r)
        d = row_addr(desc, DST, r)
        s = 0.0
        for i in range(n):
            s += np.float64(ptr_of(a + i * nb0, np.float32)[0])
            ptr_of(d + i * dnb0, np.float32)[0] = _F(s)


@kernel("COUNT_EQUAL", supports=lambda n: n.src[0].type == GGMLType.I32 and
        n.src[1].type == GGMLType.I32, n_tasks=one_task)
def count_equal_i32(desc, ith, nth):
    if ith != 0:
        return
    n = t_ne(desc, SRC0, 0)
    nb0a, nb0b = t_nb(desc, SRC0, 0), t_nb(desc, SRC1, 0)
    c = 0
    for r in range(t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3)):
        a = row_addr(desc, SRC0, r)
        b = row_addr(desc, SRC1, r)
        for i in range(n):
            if ptr_of(a + i * nb0a, np.int32)[0] == ptr_of(b + i * nb0b, np.int32)[0]:
                c += 1
    ptr_of(t_addr(desc, DST), np.int64)[0] = c
