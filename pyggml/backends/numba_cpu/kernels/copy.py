"""Copy kernels for CONT, DUP and CPY (the example to copy when writing a kernel).

How a kernel is written (see also kernels/__init__.py):
  - it reads its node through the descriptor: `t_addr/t_type/t_ne/t_nb(desc, slot, d)` with
    slot DST (the result) or SRC0.. (src[0]..), op_params with param_i32/param_f32;
  - it views memory with intrinsics.f32_array(addr, n) / u8_array / u16_array ... (no copy);
  - thread ith of nth does its share of rows (`row_range`), like ggml's kernels;
  - scratch lives in the graph's work buffer (`wdata(desc)`, size planned by `work_size`),
    thread ith using its own slice;
  - it never raises: on a case it cannot handle it calls `set_error(desc, code)` and returns.
  - `supports(node)` (plain Python, run at planning time) keeps nodes it cannot do away, so
    the backend reports them before any compute starts.

Two variants share the three ops:
  copy_elements  element types, any strides and shapes: F32/F16/BF16/I32 converted through
                 f32 (as ggml does), any same-type element copy as raw bits.
  copy_blocks    anything with a quantized side: same-type contiguous byte copies, and row
                 conversions through the types' row functions (row_fns.py: pyggml.quants'
                 codecs compiled once each, shared with GET_ROWS/SET_ROWS), which need
                 packed rows of the same length (ggml has the same limits). One body for
                 every pair of types; its children 'CONT:copy_blocks[q8_0,f32]' make the
                 pair's row functions ready.
Same-type copies are exact (bit copies), as in ggml.
"""
from __future__ import annotations

import numba
import numpy as np

from ....quants import nb as qnb
from ....tensor import is_contiguous
from ....tensor import is_contiguous_rows
from ....types import TRAITS
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_SHAPE
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import blck_size
from ..desc import row_coords
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_is_contiguous
from ..desc import t_nb
from ..desc import t_nb4
from ..desc import t_ne
from ..desc import t_row_size
from ..desc import t_rows_packed
from ..desc import t_type
from ..desc import type_size
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from ..intrinsics import u8_array
from ..intrinsics import u16_array
from . import kernel
from .row_fns import DEQ
from .row_fns import QUANT
from .row_fns import dequantize_row_at
from .row_fns import quantize_row_at
from .row_fns import row_error
from .row_fns import row_kernel_template

F32, F16, BF16, I32 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16), int(GGMLType.I32)
_CONVERTIBLE = {GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32}
# types with both row functions in row_fns.py
_ROW_CODEC = {GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1,
              GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q8_1, GGMLType.Q2_K,
              GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL,
              GGMLType.IQ4_XS, GGMLType.MXFP4}

_jit = numba.njit(nogil=True, cache=True)


# --- scalar helpers ---------------------------------------------------------------------------

@_jit
def load_f32(addr, t):
    """One element of type t at addr as float32 (ints converted like a C cast)."""
    if t == F32:
        return ptr_of(addr, np.float32)[0]
    if t == F16:
        return qnb.f16_to_f32(ptr_of(addr, np.uint16)[0])
    if t == BF16:
        return qnb.bf16_to_f32(ptr_of(addr, np.uint16)[0])
    return np.float32(ptr_of(addr, np.int32)[0])          # I32


@_jit
def store_f32(addr, t, v):
    if t == F32:
        ptr_of(addr, np.float32)[0] = v
    elif t == F16:
        ptr_of(addr, np.uint16)[0] = qnb.f32_to_f16(v)
    elif t == BF16:
        ptr_of(addr, np.uint16)[0] = qnb.f32_to_bf16(v)
    else:                                                  # I32: truncation, as (int32_t) v
        ptr_of(addr, np.int32)[0] = np.int32(v)


@_jit
def copy_bits(d, s, size):
    """Copy one element of `size` bytes (exact, NaN payloads kept)."""
    if size == 4:
        ptr_of(d, np.uint32)[0] = ptr_of(s, np.uint32)[0]
    elif size == 2:
        ptr_of(d, np.uint16)[0] = ptr_of(s, np.uint16)[0]
    elif size == 8:
        ptr_of(d, np.uint64)[0] = ptr_of(s, np.uint64)[0]
    else:
        for k in range(size):
            ptr_of(d + k, np.uint8)[0] = ptr_of(s + k, np.uint8)[0]


@_jit
def copy_bytes(d, s, n):
    dst = u8_array(d, n)
    src = u8_array(s, n)
    for i in range(n):
        dst[i] = src[i]


@numba.njit(nogil=True, cache=True, inline="always")    # inlined: constant types fold
def convert_row_at(st, dt, s, d, n, tmp):
    """A packed row of n values of type st at address s -> type dt at d: copied, quantized
    from F32, dequantized to F32, or else dequantized to F32 at tmp (4 * n bytes) and
    quantized from there. 0, or a row function's error code (row_error)."""
    if st == dt:
        copy_bytes(d, s, type_size(st) * (n // blck_size(st)))
        return 0
    if st == F32:
        return quantize_row_at(dt, s, d, n)
    if dt == F32:
        return dequantize_row_at(st, s, d, n)
    rc = dequantize_row_at(st, s, tmp, n)
    return quantize_row_at(dt, tmp, d, n) if rc == 0 else rc


@_jit
def flat_copy(desc, ith, nth):
    """Same type, both contiguous: one byte range split in 64-byte aligned chunks."""
    n = t_row_size(desc, SRC0) * t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3)
    chunk = ((n + nth - 1) // nth + 63) // 64 * 64
    b0 = min(ith * chunk, n)
    b1 = min(b0 + chunk, n)
    if b1 > b0:
        copy_bytes(t_addr(desc, DST) + b0, t_addr(desc, SRC0) + b0, b1 - b0)


@_jit
def convert_row(d, dt, s, st, n):
    """n packed elements st -> dt (element types), with tight loops for the float pairs."""
    if st == dt:
        copy_bytes(d, s, n * type_size(st))
    elif st == F32 and dt == F16:
        x = f32_array(s, n)
        y = u16_array(d, n)
        for i in range(n):
            y[i] = qnb.f32_to_f16(x[i])
    elif st == F16 and dt == F32:
        x = u16_array(s, n)
        y = f32_array(d, n)
        for i in range(n):
            y[i] = qnb.f16_to_f32(x[i])
    elif st == F32 and dt == BF16:
        x = f32_array(s, n)
        y = u16_array(d, n)
        for i in range(n):
            y[i] = qnb.f32_to_bf16(x[i])
    elif st == BF16 and dt == F32:
        x = u16_array(s, n)
        y = f32_array(d, n)
        for i in range(n):
            y[i] = qnb.bf16_to_f32(x[i])
    else:
        es, ed = type_size(st), type_size(dt)
        for i in range(n):
            store_f32(d + i * ed, dt, load_f32(s + i * es, st))


# --- element types, any strides ---------------------------------------------------------------

def _supports_elements(node) -> bool:
    s = node.src[0]
    st, dt = s.type, node.type
    if TRAITS[st].blck_size != 1 or TRAITS[dt].blck_size != 1:
        return False
    return st == dt or (st in _CONVERTIBLE and dt in _CONVERTIBLE)


@_jit
def copied_flat(desc, ith, nth):
    """Same type, both contiguous: copies this thread's share of the bytes, returns True."""
    if t_type(desc, SRC0) != t_type(desc, DST):
        return False
    if not (t_is_contiguous(desc, SRC0) and t_is_contiguous(desc, DST)):
        return False
    flat_copy(desc, ith, nth)
    return True


@kernel(("CONT", "DUP", "CPY"), supports=_supports_elements)
def copy_elements(desc, ith, nth):
    if copied_flat(desc, ith, nth):
        return
    st, dt = t_type(desc, SRC0), t_type(desc, DST)
    ne00, ne01, ne02 = t_ne(desc, SRC0, 0), t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    nb00, nb01, nb02, nb03 = t_nb4(desc, SRC0)
    ne0, ne1, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    nb0, nb1, nb2, nb3 = t_nb4(desc, DST)
    sa = t_addr(desc, SRC0)
    da = t_addr(desc, DST)
    es = type_size(st)
    ed = type_size(dt)
    rows_match = ne00 == ne0 and nb00 == es and nb0 == ed
    ir0, ir1 = row_range(ne01 * ne02 * t_ne(desc, SRC0, 3), ith, nth)
    for r in range(ir0, ir1):
        # source row r: its coordinates; the destination continues at the same flat index
        i01, i02, i03 = row_coords(r, ne01, ne02)
        s = sa + i01 * nb01 + i02 * nb02 + i03 * nb03
        e = r * ne00
        j0 = e % ne0
        e //= ne0
        j1 = e % ne1
        e //= ne1
        j2 = e % ne2
        j3 = e // ne2
        drow = da + j1 * nb1 + j2 * nb2 + j3 * nb3
        if rows_match:
            convert_row(drow, dt, s, st, ne00)
            continue
        for i00 in range(ne00):
            d = drow + j0 * nb0
            if st == dt:
                copy_bits(d, s + i00 * nb00, es)
            else:
                store_f32(d, dt, load_f32(s + i00 * nb00, st))
            j0 += 1
            if j0 == ne0:             # carry into the next destination row
                j0 = 0
                j1 += 1
                if j1 == ne1:
                    j1 = 0
                    j2 += 1
                    if j2 == ne2:
                        j2 = 0
                        j3 += 1
                drow = da + j1 * nb1 + j2 * nb2 + j3 * nb3


# --- anything with a quantized side -----------------------------------------------------------

def _supports_blocks(node) -> bool:
    s = node.src[0]
    st, dt = s.type, node.type
    if not (TRAITS[st].is_quantized or TRAITS[dt].is_quantized):
        return False
    if st == dt and is_contiguous(s) and is_contiguous(node):
        return True
    if s.ne[0] != node.ne[0] or not (is_contiguous_rows(s) and is_contiguous_rows(node)):
        return False
    if st == dt:
        return True
    return st in _ROW_CODEC and dt in _ROW_CODEC and all(
        s.ne[0] % TRAITS[t].blck_size == 0 for t in (st, dt))


def _row_scratch(node) -> int:
    """f32 bytes per thread for one row (plus a cache line), when neither side is F32."""
    return 4 * node.ne[0] + 64


def _work_blocks(node, n_threads) -> int:
    st, dt = node.src[0].type, node.type
    if st == dt or GGMLType.F32 in (st, dt):
        return 0
    return _row_scratch(node) * n_threads


def _blocks_spec(node) -> tuple:
    return (int(node.src[0].type), int(node.type))


def _blocks_needs(consts) -> tuple:
    st, dt = consts
    if st == dt:
        return ()
    return tuple(r for r in ((DEQ, st), (QUANT, dt)) if r[1] != F32)


# `warmup --all`: quantizing and dequantizing F32 rows of the common cache types
_BLOCKS_COMMON = [(F32, int(t)) for t in (GGMLType.Q4_0, GGMLType.Q8_0)] + \
    [(int(t), F32) for t in (GGMLType.Q4_0, GGMLType.Q8_0)]


@row_kernel_template(("CONT", "DUP", "CPY"), _blocks_needs, _blocks_spec,
                     supports=_supports_blocks, work_size=_work_blocks, common=_BLOCKS_COMMON)
def copy_blocks(desc, ith, nth):
    if copied_flat(desc, ith, nth):
        return
    st, dt = t_type(desc, SRC0), t_type(desc, DST)
    ne0 = t_ne(desc, SRC0, 0)
    if ne0 != t_ne(desc, DST, 0) or not (t_rows_packed(desc, SRC0) and t_rows_packed(desc, DST)):
        set_error(desc, ERR_SHAPE)
        return
    ne01, ne02 = t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    ne1, ne2 = t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    scratch = 4 * ne0 + 64
    tmp = wdata(desc) + ith * scratch
    if st != dt and st != F32 and dt != F32 and wsize(desc) < (ith + 1) * scratch:
        set_error(desc, ERR_WORK_SIZE)
        return
    ir0, ir1 = row_range(ne01 * ne02 * t_ne(desc, SRC0, 3), ith, nth)
    for r in range(ir0, ir1):
        s = (t_addr(desc, SRC0) + (r % ne01) * t_nb(desc, SRC0, 1)
             + ((r // ne01) % ne02) * t_nb(desc, SRC0, 2) + (r // (ne01 * ne02)) * t_nb(desc, SRC0, 3))
        d = (t_addr(desc, DST) + (r % ne1) * t_nb(desc, DST, 1)
             + ((r // ne1) % ne2) * t_nb(desc, DST, 2) + (r // (ne1 * ne2)) * t_nb(desc, DST, 3))
        rc = convert_row_at(st, dt, s, d, ne0, tmp)
        if rc != 0:
            row_error(desc, rc)
            return
