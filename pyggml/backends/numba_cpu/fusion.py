"""Backend fusion of node pairs when a graph is lowered (as ggml's GPU backends fuse
RMS_NORM + MUL): one kernel row where the graph has two, so one pass over the data and one
barrier fewer (SmolLM2's decode token: 61 of them, two norms per layer and the final one).

RMS_NORM -> MUL by a weight: the norm's result n = x / sqrt(mean(x^2) + eps) feeds only a
MUL with a row-broadcast weight w. The fused row computes n and n * w row by row with the
two kernels' own arithmetic (norm.sum_sq, the same float32 products in the same order), so
its results are bitwise the pair's. It still writes n (a row of stores: keeps an eval
callback on the norm, or a reader outside the graph, seeing its value) but nothing in the
graph waits for it.

The fused row's descriptor is the MUL's with the norm's input x in slot SRC2 and the norm's
op_params (eps); plan.schedule sees it reading x, w and n's bytes and writing n and the
product (FusedNode).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ...tensor import MAX_SRC
from ...tensor import nbytes
from ...types import GGMLType
from .desc import DST
from .desc import SRC0
from .desc import SRC1
from .desc import SRC2
from .desc import SRC3
from .desc import SRC4
from .desc import param_f32
from .desc import row_coords
from .desc import row_range
from .desc import t_addr
from .desc import t_nb
from .desc import t_ne
from .desc import t_row
from .intrinsics import f32_array
from .kernels import FUSED
from .kernels import add_kernel
from .kernels import make_kernel
from .kernels import param_words
from .kernels import rows_n_tasks
from .kernels.norm import fdiv
from .kernels.norm import sum_sq

_F = np.float32
_W_EPS = param_words("RMS_NORM").eps


@numba.njit(nogil=True, cache=True, error_model="numpy")     # no fastmath: (x*f)*w stays
def _scale_mul(x, f, w, nrm, y, n):
    for i in range(n):
        v = x[i] * f
        nrm[i] = v
        y[i] = v * w[i]


def rms_norm_mul_f32(desc, ith, nth):
    """dst = rms_norm(x) * w per row (x in SRC2, the norm's result in SRC0, w in SRC1)."""
    n = t_ne(desc, SRC2, 0)
    eps = param_f32(desc, _W_EPS)
    ne1, ne2 = t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        x = f32_array(t_row(desc, SRC2, i1, i2, i3), n)
        mean = _F(sum_sq(x, n) / n)                      # norm.py's RMS_NORM row, exactly
        f = fdiv(1.0, math.sqrt(mean + eps))
        w = f32_array(t_addr(desc, SRC1) + (i1 % t_ne(desc, SRC1, 1)) * t_nb(desc, SRC1, 1)
                      + (i2 % t_ne(desc, SRC1, 2)) * t_nb(desc, SRC1, 2)
                      + (i3 % t_ne(desc, SRC1, 3)) * t_nb(desc, SRC1, 3), n)
        _scale_mul(x, f, w, f32_array(t_row(desc, SRC0, i1, i2, i3), n),
                   f32_array(t_row(desc, DST, i1, i2, i3), n), n)


RMS_NORM_MUL = make_kernel("MUL", rms_norm_mul_f32, n_tasks=rows_n_tasks)
RMS_NORM_MUL.name = "rms_norm_mul_f32"
add_kernel(FUSED, RMS_NORM_MUL)


@numba.njit(nogil=True, cache=True, error_model="numpy")     # no fastmath: ADD's a + b
def _add(a, b, s, n):
    for i in range(n):
        s[i] = a[i] + b[i]


def add_rms_norm_mul_f32(desc, ith, nth):
    """s = a + b, dst = rms_norm(s) * w per row (the norm's result in SRC0, w in SRC1, s in
    SRC2, a and b in SRC3 and SRC4, all of s's shape): the sum is stored, then read back as
    rms_norm_mul_f32 reads its x."""
    n = t_ne(desc, SRC2, 0)
    eps = param_f32(desc, _W_EPS)
    ne1, ne2 = t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        x = f32_array(t_row(desc, SRC2, i1, i2, i3), n)
        _add(f32_array(t_row(desc, SRC3, i1, i2, i3), n),
             f32_array(t_row(desc, SRC4, i1, i2, i3), n), x, n)
        mean = _F(sum_sq(x, n) / n)
        f = fdiv(1.0, math.sqrt(mean + eps))
        w = f32_array(t_addr(desc, SRC1) + (i1 % t_ne(desc, SRC1, 1)) * t_nb(desc, SRC1, 1)
                      + (i2 % t_ne(desc, SRC1, 2)) * t_nb(desc, SRC1, 2)
                      + (i3 % t_ne(desc, SRC1, 3)) * t_nb(desc, SRC1, 3), n)
        _scale_mul(x, f, w, f32_array(t_row(desc, SRC0, i1, i2, i3), n),
                   f32_array(t_row(desc, DST, i1, i2, i3), n), n)


ADD_RMS_NORM_MUL = make_kernel("MUL", add_rms_norm_mul_f32, n_tasks=rows_n_tasks)
ADD_RMS_NORM_MUL.name = "add_rms_norm_mul_f32"
add_kernel(FUSED, ADD_RMS_NORM_MUL)


def fused_kernels(nodes) -> list:
    """The fused kernels lowering may pick for these nodes (warm-up compiles them with the
    graph's own): RMS_NORM_MUL where an F32 RMS_NORM is, ADD_RMS_NORM_MUL where one reads
    an ADD."""
    out = []
    for node in nodes:
        if node.op is not None and node.op.name == "RMS_NORM" and node.type == GGMLType.F32:
            if not out:
                out.append(RMS_NORM_MUL)
            x = node.src[0]
            if x is not None and x.op is not None and x.op.name == "ADD":
                return [RMS_NORM_MUL, ADD_RMS_NORM_MUL]
    return out


class _Writes:
    """The op a FusedNode shows plan.schedule: the sources its row writes besides dst (the
    norm's result; the ADD's sum when the ADD is fused too)."""

    def __init__(self, op, writes):
        self._op = op
        self.writes = writes

    def __getattr__(self, k):
        return getattr(self._op, k)


class FusedNode:
    """The MUL node as the fused row's descriptor and plan.schedule see it: sources (n, w, x)
    or with the ADD fused (n, w, s, a, b), the norm's op_params; everything else is the MUL's."""

    def __init__(self, mul, norm, w, add=None):
        self.mul = mul
        src = (norm, w, norm.src[0]) + ((add.src[0], add.src[1]) if add is not None else ())
        self.src = src + (None,) * (MAX_SRC - len(src))
        self.op_params = norm.op_params
        self.op = _Writes(mul.op, (0,) if add is None else (0, 2))

    def __getattr__(self, k):
        return getattr(self.mul, k)


def _packed_f32(t) -> bool:
    return t.type == GGMLType.F32 and t.nb[0] == 4


def _pair(norm, mul):
    """The weight of a fusable (RMS_NORM, MUL) pair, or None."""
    if mul.op is None or mul.op.name != "MUL" or len(mul.ne) != 4:
        return None
    a, b = mul.src[0], mul.src[1]
    w = b if a is norm else a if b is norm else None
    x = norm.src[0]
    if w is None or w is norm or x is None or tuple(mul.ne) != tuple(norm.ne):
        return None
    if not all(_packed_f32(t) for t in (x, norm, w, mul)):
        return None
    if w.ne[0] != norm.ne[0] or any(norm.ne[d] % w.ne[d] for d in (1, 2, 3)):
        return None
    return w


def _sum(add, norm) -> bool:
    """add is a plain same-shape F32 ADD whose sum the norm reads (no broadcast, not a view
    of a or b: the fused row writes s row by row as the ADD kernel does)."""
    if add.op is None or add.op.name != "ADD" or norm.src[0] is not add:
        return False
    a, b = add.src[0], add.src[1]
    if a is None or b is None or add.view_src is not None:
        return False
    return all(_packed_f32(t) and tuple(t.ne) == tuple(add.ne) for t in (a, b))


def _row_aligned(outs, ins) -> bool:
    """The fused row may write outs row by row while it reads ins: no two of them overlap
    unless they are the same rows (same address, shape and strides; the graph allocator
    hands a dead source's slot to a result). A skewed overlap would let one row's store
    clobber a row another thread, or a later iteration, still reads."""
    spans = []
    for t in outs + ins:
        a = t.data_ptr
        spans.append((a, a + nbytes(t), tuple(t.ne), tuple(t.nb)))
    for i in range(len(outs)):
        a0, a1, ne, nb = spans[i]
        for j in range(len(spans)):
            b0, b1, ne2, nb2 = spans[j]
            if j != i and a0 < b1 and b0 < a1 and (a0, ne, nb) != (b0, ne2, nb2):
                return False
    return True


def _uses(nodes) -> dict:
    """id(tensor) -> how many nodes read it (as a source or as the tensor they view)."""
    uses: dict = {}
    for node in nodes:
        for t in node.src:
            if t is not None:
                uses[id(t)] = uses.get(id(t), 0) + 1
        if node.view_src is not None:
            uses[id(node.view_src)] = uses.get(id(node.view_src), 0) + 1
    return uses


def fuse(nodes, rows: list, kernels: list):
    """Fuse the (RMS_NORM, MUL) pairs among the rows (graph indices into nodes, kernels the
    selected variant per row), the MUL the norm's only reader and the row right after it;
    and the ADD whose sum such a norm reads when it is the row right before (its other
    readers come later: the fused row still writes the sum). Returns (rows, kernels,
    row_nodes, moved): the norm (and ADD) rows gone, their MUL rows running RMS_NORM_MUL or
    ADD_RMS_NORM_MUL, row_nodes what to pack and schedule per row (a FusedNode for a fused
    row), moved {norm or ADD graph index: MUL graph index}."""
    row_nodes = [nodes[i] for i in rows]
    norms = [p for p, node in enumerate(row_nodes) if node.op.name == "RMS_NORM"]
    if not norms:
        return rows, kernels, row_nodes, {}
    uses = _uses(nodes)
    consumer: dict = {}                   # id(norm) -> the row of its only consumer
    for p, node in enumerate(row_nodes):
        for t in node.src:
            if t is not None and t.op is not None and t.op.name == "RMS_NORM":
                consumer[id(t)] = p
    drop = set()
    moved = {}
    kernels = list(kernels)
    for p in norms:
        norm = row_nodes[p]
        q = consumer.get(id(norm))
        # the MUL must be the next row: no row between may write x or w (in place) under it
        if q != p + 1 or uses.get(id(norm)) != 1:
            continue
        mul = row_nodes[q]
        w = _pair(norm, mul)
        if w is None or not _row_aligned([norm, mul], [norm.src[0], w]):
            continue
        drop.add(p)
        moved[rows[p]] = rows[q]
        # the ADD right before: nothing runs between it and the norm (the executor runs
        # the ADD's other readers, later rows, after the fused row that writes the sum)
        add = row_nodes[p - 1] if p > 0 and p - 1 not in drop else None
        if (add is not None and _sum(add, norm) and w is not add
                and _row_aligned([norm, mul, add], [add.src[0], add.src[1], w])):
            drop.add(p - 1)
            moved[rows[p - 1]] = rows[q]
            row_nodes[q] = FusedNode(mul, norm, w, add)
            kernels[q] = ADD_RMS_NORM_MUL
        else:
            row_nodes[q] = FusedNode(mul, norm, w)
            kernels[q] = RMS_NORM_MUL
    keep = [p for p in range(len(rows)) if p not in drop]
    return ([rows[p] for p in keep], [kernels[p] for p in keep], [row_nodes[p] for p in keep],
            moved)
