"""Kernels for the shape family (pyggml/ops/shape.py): CONCAT, REPEAT, PAD, SET, ACC move raw
element bits (every element type exact), reading sources through their strides (views,
permutes); destination rows (SET/ACC: destination elements) are split over the threads, so
no thread waits for another inside a node. ARANGE, TIMESTEP_EMBEDDING: float32 math as ggml
computes it. REPEAT_BACK: float64 sums over any strides. Results are identical for every
thread count. (sort.py, conv.py and upscale.py hold the kernels of the other ops files.)
"""
from __future__ import annotations

import numba
import numpy as np

from ....tensor import is_contiguous_rows
from ....types import TRAITS
from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import SRC1
from ..desc import blck_size
from ..desc import param_f32
from ..desc import param_i32
from ..desc import row_coords
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..desc import t_ne4
from ..desc import t_row
from ..desc import t_type
from ..desc import type_size
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from . import kernel
from . import param_words
from .copy import copy_bits
from .copy import copy_bytes
from .copy import load_f32
from .copy import store_f32

_W_CONCAT, _W_PAD, _W_ARANGE = param_words("CONCAT"), param_words("PAD"), param_words("ARANGE")
_W_SET, _W_TSE = param_words("SET"), param_words("TIMESTEP_EMBEDDING")     # ACC: as SET

F32 = int(GGMLType.F32)
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
    dim = param_i32(desc, _W_CONCAT.dim)
    ne0u = t_ne(desc, DST, 0) // bs
    ne1, ne2, ne3 = t_ne(desc, DST, 1), t_ne(desc, DST, 2), t_ne(desc, DST, 3)
    ne00u = t_ne(desc, SRC0, 0) // bs
    ne01, ne02, ne03 = t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2), t_ne(desc, SRC0, 3)
    o1 = ne01 if dim == 1 else 0
    o2 = ne02 if dim == 2 else 0
    o3 = ne03 if dim == 3 else 0
    nb0 = t_nb(desc, DST, 0)
    nb00, nb10 = t_nb(desc, SRC0, 0), t_nb(desc, SRC1, 0)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        d = t_row(desc, DST, i1, i2, i3)
        if i1 < ne01 and i2 < ne02 and i3 < ne03:
            s = t_row(desc, SRC0, i1, i2, i3)
            if dim == 0:
                _copy_units(d, nb0, s, nb00, ne00u, us)
                s = t_row(desc, SRC1, i1, i2, i3)
                _copy_units(d + ne00u * nb0, nb0, s, nb10, ne0u - ne00u, us)
            else:
                _copy_units(d, nb0, s, nb00, ne0u, us)
        else:
            s = t_row(desc, SRC1, i1 - o1, i2 - o2, i3 - o3)
            _copy_units(d, nb0, s, nb10, ne0u, us)


# --- REPEAT -----------------------------------------------------------------------------------

def _supports_element_op(node) -> bool:
    return _element(node.src[0].type) and _element(node.type)


@kernel("REPEAT", supports=_supports_element_op, n_tasks=lambda node, n: n)
def repeat(desc, ith, nth):
    es = type_size(t_type(desc, DST))
    ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
    ne00, ne01, ne02, ne03 = t_ne4(desc, SRC0)
    if ne00 * ne01 * ne02 * ne03 == 0:
        return
    nb0, nb00 = t_nb(desc, DST, 0), t_nb(desc, SRC0, 0)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        d = t_row(desc, DST, i1, i2, i3)
        s = t_row(desc, SRC0, i1 % ne01, i2 % ne02, i3 % ne03)
        for k in range(ne0 // ne00):
            _copy_units(d + k * ne00 * nb0, nb0, s, nb00, ne00, es)


# --- PAD --------------------------------------------------------------------------------------

@kernel("PAD", supports=_supports_element_op)
def pad(desc, ith, nth):
    es = type_size(t_type(desc, DST))
    lp0 = param_i32(desc, _W_PAD.lp0)
    lp1, lp2, lp3 = param_i32(desc, _W_PAD.lp1), param_i32(desc, _W_PAD.lp2), param_i32(desc, _W_PAD.lp3)
    circular = param_i32(desc, _W_PAD.circular) != 0
    ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
    ne00, ne01, ne02, ne03 = t_ne4(desc, SRC0)
    nb0, nb00 = t_nb(desc, DST, 0), t_nb(desc, SRC0, 0)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        d = t_row(desc, DST, i1, i2, i3)
        k1, k2, k3 = i1 - lp1, i2 - lp2, i3 - lp3
        if circular:                  # a torus: wrap every coordinate (floor modulo)
            s = t_row(desc, SRC0, k1 % ne01, k2 % ne02, k3 % ne03)
            for i0 in range(ne0):
                copy_bits(d + i0 * nb0, s + ((i0 - lp0) % ne00) * nb00, es)
            continue
        if not (0 <= k1 < ne01 and 0 <= k2 < ne02 and 0 <= k3 < ne03):
            for i0 in range(ne0):
                _zero(d + i0 * nb0, es)
            continue
        s = t_row(desc, SRC0, k1, k2, k3)
        for i0 in range(lp0):
            _zero(d + i0 * nb0, es)
        _copy_units(d + lp0 * nb0, nb0, s, nb00, ne00, es)
        for i0 in range(lp0 + ne00, ne0):
            _zero(d + i0 * nb0, es)


# --- ARANGE -----------------------------------------------------------------------------------

@kernel("ARANGE", supports=lambda node: node.type == GGMLType.F32)
def arange(desc, ith, nth):
    start = param_f32(desc, _W_ARANGE.start)
    step = param_f32(desc, _W_ARANGE.step)
    n = t_ne(desc, DST, 0)
    nb0 = t_nb(desc, DST, 0)
    d = t_addr(desc, DST)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        # float32 throughout, as ggml: start + step * (float) i (no FMA contraction)
        ptr_of(d + i * nb0, np.float32)[0] = start + step * np.float32(i)


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
    d_addr, a_addr = t_addr(desc, DST), t_addr(desc, SRC0)
    nb1, nb2, nb3 = param_i32(desc, _W_SET.nb1), param_i32(desc, _W_SET.nb2), param_i32(desc, _W_SET.nb3)
    offset = param_i32(desc, _W_SET.offset)
    inplace = param_i32(desc, _W_SET.inplace) != 0
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
                brow = t_row(desc, SRC1, i1, i2, i3)
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
    """Each output element: the float64 sum of its repeats, in the source's order (rows split
    over the threads; a row's sums gathered source row by source row)."""
    from_t = t_type(desc, SRC0)
    dt = t_type(desc, DST)
    ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
    nr0, nr1 = t_ne(desc, SRC0, 0) // ne0, t_ne(desc, SRC0, 1) // ne1
    nr2, nr3 = t_ne(desc, SRC0, 2) // ne2, t_ne(desc, SRC0, 3) // ne3
    nb00, nb0 = t_nb(desc, SRC0, 0), t_nb(desc, DST, 0)
    acc = np.empty(ne0, dtype=np.float64)
    ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(ir0, ir1):
        k1, k2, k3 = row_coords(r, ne1, ne2)
        acc[:] = 0.0
        for i3 in range(nr3):
            for i2 in range(nr2):
                for i1 in range(nr1):
                    s = t_row(desc, SRC0, i1 * ne1 + k1, i2 * ne2 + k2, i3 * ne3 + k3)
                    for i0 in range(nr0):
                        for k0 in range(ne0):
                            acc[k0] += load_f32(s + (i0 * ne0 + k0) * nb00, from_t)
        d = t_row(desc, DST, k1, k2, k3)
        for k0 in range(ne0):
            store_f32(d + k0 * nb0, dt, np.float32(acc[k0]))


# --- TIMESTEP_EMBEDDING -------------------------------------------------------------------------

@kernel("TIMESTEP_EMBEDDING", supports=lambda node: node.src[0].type == GGMLType.F32)
def timestep_embedding(desc, ith, nth):
    dim = param_i32(desc, _W_TSE.dim)
    max_period = param_i32(desc, _W_TSE.max_period)
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
