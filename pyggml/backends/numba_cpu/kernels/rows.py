"""Kernels for GET_ROWS, SET_ROWS and GET_ROWS_BACK (pyggml/ops/rows.py).

get_rows    rows of any float/quantized/I32 source, dequantized through pyggml.quants.nb;
            the ids' rows are split over the threads (ggml runs it on one thread).
set_rows    F32/F16 rows converted/quantized into the destination's type with quantize_row.
            Rows are split over the threads by source row; when several source rows of one
            slab name the same destination row, only the LAST one writes it (each thread keeps
            a private last-writer map in the work buffer), so the result is the sequential
            one for every thread count, as in the reference.
get_rows_back  zero the result, then add the gradient rows at their ids. Threads split the
            destination rows; each scans all ids in order, so the sums are the sequential ones.
An id outside the source's rows stops the graph with ERR_ROW_ID (ggml asserts).

GET_ROWS and SET_ROWS compile once for every type: they convert a row through the type's
row function, compiled on its own and called through row_fns.TABLE (see row_fns.py). Their
per-type template children ('GET_ROWS:get_rows[q4_k]') share that body and make the
type's row functions ready.
"""
from __future__ import annotations

import numba
import numpy as np

from ....tensor import is_contiguous_rows
from ....types import TRAITS
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import SRC1
from ..desc import register_error
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_type
from ..desc import type_size
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from . import kernel
from .copy import _ROW_CODEC as _COPY_ROW_CODEC
from .copy import convert_row_at
from .copy import copy_bits
from .copy import copy_bytes
from .copy import load_f32
from .row_fns import DEQ
from .row_fns import QUANT
from .row_fns import dequantize_row_at
from .row_fns import row_error
from .row_fns import row_kernel_template

ERR_ROW_ID = register_error(170, "a row id is out of range (get_rows / set_rows / get_rows_back)")

F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
I32, I64 = int(GGMLType.I32), int(GGMLType.I64)
_ROW_CODEC = _COPY_ROW_CODEC - {GGMLType.Q8_1}
_LINE = 64

_jit = numba.njit(nogil=True, cache=True)


@_jit
def _load_id(addr, t):
    if t == I64:
        return ptr_of(addr, np.int64)[0]
    return np.int64(ptr_of(addr, np.int32)[0])


# --- GET_ROWS ---------------------------------------------------------------------------------

def _supports_get_rows(node) -> bool:
    a = node.src[0]
    if node.ne[0] and node.nb[0] != TRAITS[node.type].type_size:
        return False
    if a.type == GGMLType.I32:
        return True
    if TRAITS[a.type].is_quantized:
        return a.type in _ROW_CODEC and is_contiguous_rows(a)
    return a.type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def _get_rows_spec(node) -> tuple:
    return (int(node.src[0].type),)


# a child per source type (its row decoder is made ready); `warmup --all` compiles the types
# models keep embeddings and caches in (others compile on first use)
_COMMON_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1,
                 GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K)
_GET_ROWS_COMMON = [(int(t),) for t in _COMMON_TYPES + (GGMLType.I32,)]


def _get_rows_needs(consts) -> tuple:
    return () if consts[0] in (F32, I32) else ((DEQ, consts[0]),)     # F32, I32: copied


@row_kernel_template("GET_ROWS", _get_rows_needs, _get_rows_spec, supports=_supports_get_rows,
                     common=_GET_ROWS_COMMON)
def get_rows(desc, ith, nth):
    at = t_type(desc, SRC0)
    nc = t_ne(desc, SRC0, 0)
    ne01 = t_ne(desc, SRC0, 1)
    ne10, ne11 = t_ne(desc, SRC1, 0), t_ne(desc, SRC1, 1)
    nr = ne10 * ne11 * t_ne(desc, SRC1, 2)
    a_addr, b_addr, d_addr = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
    nb00 = t_nb(desc, SRC0, 0)
    es = type_size(at)
    packed = nb00 == es or nc <= 1
    ir0, ir1 = row_range(nr, ith, nth)
    for i in range(ir0, ir1):
        i12 = i // (ne11 * ne10)
        i11 = (i - i12 * ne11 * ne10) // ne10
        i10 = i - i12 * ne11 * ne10 - i11 * ne10
        i01 = _load_id(b_addr + i10 * t_nb(desc, SRC1, 0) + i11 * t_nb(desc, SRC1, 1)
                       + i12 * t_nb(desc, SRC1, 2), I32)
        if i01 < 0 or i01 >= ne01:
            set_error(desc, ERR_ROW_ID)
            return
        s = a_addr + i01 * t_nb(desc, SRC0, 1) + i11 * t_nb(desc, SRC0, 2) + i12 * t_nb(desc, SRC0, 3)
        d = d_addr + i10 * t_nb(desc, DST, 1) + i11 * t_nb(desc, DST, 2) + i12 * t_nb(desc, DST, 3)
        if at == I32 or at == F32:
            if packed:
                copy_bytes(d, s, nc * 4)
            else:
                for j in range(nc):
                    copy_bits(d + 4 * j, s + j * nb00, 4)
        elif packed:
            rc = dequantize_row_at(at, s, d, nc)
            if rc != 0:
                row_error(desc, rc)
                return
        else:
            y = f32_array(d, nc)
            for j in range(nc):
                y[j] = load_f32(s + j * nb00, at)


# --- SET_ROWS ---------------------------------------------------------------------------------

def _supports_set_rows(node) -> bool:
    b, c = node.src[0], node.src[1]
    return (node.type in _ROW_CODEC and b.type in (GGMLType.F32, GGMLType.F16)
            and c.type in (GGMLType.I32, GGMLType.I64)
            and is_contiguous_rows(node) and is_contiguous_rows(b))


def _set_rows_scratch(node) -> int:
    """Per thread: the last-writer map (int64 per destination row) and an f32 row."""
    return (8 * node.ne[1] + _LINE - 1) // _LINE * _LINE + 4 * node.ne[0] + _LINE


def _work_set_rows(node, n_threads) -> int:
    return _set_rows_scratch(node) * n_threads


def _set_rows_spec(node) -> tuple:
    # the destination type only: an F16 source reuses the F32 path through a row decoded
    # to F32 (one child per cache type, not two)
    return (int(node.type),)


def _set_rows_needs(consts) -> tuple:
    return ((QUANT, consts[0]), (DEQ, F16))


_SET_ROWS_COMMON = [(int(d),) for d in _COMMON_TYPES[:8]]   # KV caches


def _region_set_rows(node, n_threads) -> int:
    return _set_rows_scratch(node)         # set_rows: thread ith's map and row only


@row_kernel_template("SET_ROWS", _set_rows_needs, _set_rows_spec, supports=_supports_set_rows,
                     work_size=_work_set_rows, common=_SET_ROWS_COMMON,
                     private_work=_region_set_rows)
def set_rows(desc, ith, nth):
    dt = t_type(desc, DST)
    bt = t_type(desc, SRC0)
    it = t_type(desc, SRC1)
    nc = t_ne(desc, SRC0, 0)
    nr = t_ne(desc, SRC0, 1)
    ne02, ne03 = t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    ne11, ne12 = t_ne(desc, SRC1, 1), t_ne(desc, SRC1, 2)
    ne1 = t_ne(desc, DST, 1)
    b_addr, c_addr, d_addr = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
    nb01, nb02, nb03 = t_nb(desc, SRC0, 1), t_nb(desc, SRC0, 2), t_nb(desc, SRC0, 3)
    nb10, nb11, nb12 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1), t_nb(desc, SRC1, 2)
    nb1, nb2, nb3 = t_nb(desc, DST, 1), t_nb(desc, DST, 2), t_nb(desc, DST, 3)
    ir0, ir1 = row_range(nr, ith, nth)
    if ir0 >= ir1:
        return
    map_bytes = (8 * ne1 + _LINE - 1) // _LINE * _LINE
    scratch = map_bytes + 4 * nc + _LINE
    if wsize(desc) < (ith + 1) * scratch:
        set_error(desc, ERR_WORK_SIZE)
        return
    base = wdata(desc) + ith * scratch
    last = numba.carray(ptr_of(base, np.int64), ne1)
    tmp = base + map_bytes
    for i03 in range(ne03):
        for i02 in range(ne02):
            i12 = i03 % ne12
            i11 = i02 % ne11
            ids = c_addr + i11 * nb11 + i12 * nb12
            if nth > 1:
                # which source row writes each destination row last (the sequential result)
                for i in range(nr):
                    r = _load_id(ids + i * nb10, it)
                    if 0 <= r < ne1:
                        last[r] = i
            for i in range(ir0, ir1):
                i1 = _load_id(ids + i * nb10, it)
                if i1 < 0 or i1 >= ne1:
                    set_error(desc, ERR_ROW_ID)
                    return
                if nth > 1 and last[i1] != i:
                    continue
                s = b_addr + i * nb01 + i02 * nb02 + i03 * nb03
                d = d_addr + i1 * nb1 + i02 * nb2 + i03 * nb3
                rc = convert_row_at(bt, dt, s, d, nc, tmp)      # bt: F32 or F16
                if rc != 0:
                    row_error(desc, rc)
                    return


# --- GET_ROWS_BACK ----------------------------------------------------------------------------

def _supports_get_rows_back(node) -> bool:
    a = node.src[0]
    return a.type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) and \
        node.nb[0] == 4 and node.nb[1] == 4 * node.ne[0]


@kernel("GET_ROWS_BACK", supports=_supports_get_rows_back, n_tasks=lambda node, n: n)
def get_rows_back(desc, ith, nth):
    at = t_type(desc, SRC0)
    nc = t_ne(desc, DST, 0)
    n_out = t_ne(desc, DST, 1)
    n_ids = t_ne(desc, SRC1, 0)
    a_addr, b_addr, d_addr = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
    nb00, nb01 = t_nb(desc, SRC0, 0), t_nb(desc, SRC0, 1)
    nb10 = t_nb(desc, SRC1, 0)
    nb1 = t_nb(desc, DST, 1)
    r0, r1 = row_range(n_out, ith, nth)
    for r in range(r0, r1):
        y = f32_array(d_addr + r * nb1, nc)
        for j in range(nc):
            y[j] = np.float32(0.0)
    for i in range(n_ids):
        r = _load_id(b_addr + i * nb10, I32)
        if r < 0 or r >= n_out:
            set_error(desc, ERR_ROW_ID)
            return
        if r < r0 or r >= r1:
            continue
        y = f32_array(d_addr + r * nb1, nc)
        s = a_addr + i * nb01
        if at == F32 and nb00 == 4:
            x = f32_array(s, nc)
            for j in range(nc):
                y[j] += x[j]
        else:
            for j in range(nc):
                y[j] += load_f32(s + j * nb00, at)
