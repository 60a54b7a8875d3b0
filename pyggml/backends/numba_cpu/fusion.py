"""Backend fusion of node groups when a graph is lowered (as ggml's GPU backends fuse
RMS_NORM + MUL, ADD + RMS_NORM + MUL and the FFN's GLU): one kernel row where the graph
has two or three, so one pass over the data and barriers fewer (SmolLM2's decode token:
513 -> 393 rows, 363 -> 273 barriers).

RMS_NORM -> MUL by a weight: the norm's result n = x / sqrt(mean(x^2) + eps) feeds only a
MUL with a row-broadcast weight w. The fused row computes n and n * w row by row with the
two kernels' own arithmetic (norm.sum_sq, the same float32 products in the same order), so
its results are bitwise the pair's. It still writes n (a row of stores: keeps an eval
callback on the norm, or a reader outside the graph, seeing its value) but nothing in the
graph waits for it. The fused row's descriptor is the MUL's with the norm's input x in
slot SRC2 and the norm's op_params (eps).

ADD -> RMS_NORM -> MUL: the residual sum s = a + b right before such a norm is computed in
the same row (a and b in SRC3, SRC4) and stored, then read back as x; its later readers
(the next residual ADD) see it written.

MUL_MAT, MUL_MAT -> SWIGLU (decode's FFN, one column x): the GLU's row runs both mat-vecs
in mul_mat's chunked decode path, each chunk's GLU right after its rows (gate and up in
SRC0, SRC1, still written; Wg, Wu, x in SRC2..SRC4).

plan.schedule sees a fused row as a FusedNode: its sources, and the ones it writes.
"""
from __future__ import annotations

import math
from itertools import chain
from itertools import compress
from operator import attrgetter
from operator import not_

import numba
import numpy as np

from ...tensor import MAX_SRC
from ...tensor import nbytes
from ...types import TRAITS
from ...types import GGMLType
from .desc import DST
from .desc import ERR_SCRATCH
from .desc import ERR_WORK_SIZE
from .desc import SRC0
from .desc import SRC1
from .desc import SRC2
from .desc import SRC3
from .desc import SRC4
from .desc import byte_spans
from .desc import has_scratch
from .desc import param_f32
from .desc import row_coords
from .desc import row_range
from .desc import set_error
from .desc import t_addr
from .desc import t_nb
from .desc import t_ne
from .desc import t_row
from .desc import t_type
from .desc import table_slots
from .desc import wdata
from .desc import wsize
from .intrinsics import f32_array
from .kernels import FUSED
from .kernels import add_kernel
from .kernels import make_kernel
from .kernels import matmul as mm
from .kernels import param_words
from .kernels import rows_n_tasks
from .kernels.elementwise import _in_exp_range
from .kernels.elementwise import _silu
from .kernels.elementwise import _silu_small
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


@numba.njit(nogil=True, cache=True, inline="always")
def _norm_mul_row(desc, x, i1, i2, i3, n, eps):
    """Row (i1, i2, i3) of both norm rows: norm.py's RMS_NORM of x, exactly (SRC0), times
    the weight's broadcast row (SRC1) into dst."""
    mean = _F(sum_sq(x, n) / n)
    f = fdiv(1.0, math.sqrt(mean + eps))
    w = f32_array(t_addr(desc, SRC1) + (i1 % t_ne(desc, SRC1, 1)) * t_nb(desc, SRC1, 1)
                  + (i2 % t_ne(desc, SRC1, 2)) * t_nb(desc, SRC1, 2)
                  + (i3 % t_ne(desc, SRC1, 3)) * t_nb(desc, SRC1, 3), n)
    _scale_mul(x, f, w, f32_array(t_row(desc, SRC0, i1, i2, i3), n),
               f32_array(t_row(desc, DST, i1, i2, i3), n), n)


def rms_norm_mul_f32(desc, ith, nth):
    """dst = rms_norm(x) * w per row (x in SRC2, the norm's result in SRC0, w in SRC1)."""
    n = t_ne(desc, SRC2, 0)
    eps = param_f32(desc, _W_EPS)
    ne1, ne2 = t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    ir0, ir1 = row_range(ne1 * ne2 * t_ne(desc, DST, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        _norm_mul_row(desc, f32_array(t_row(desc, SRC2, i1, i2, i3), n), i1, i2, i3, n, eps)


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
        _norm_mul_row(desc, x, i1, i2, i3, n, eps)


ADD_RMS_NORM_MUL = make_kernel("MUL", add_rms_norm_mul_f32, n_tasks=rows_n_tasks)
ADD_RMS_NORM_MUL.name = "add_rms_norm_mul_f32"
add_kernel(FUSED, ADD_RMS_NORM_MUL)


@numba.njit(nogil=True, cache=True, error_model="numpy")     # SWIGLU's k_swiglu row, exactly
def _swiglu(x, g, y, n):
    if _in_exp_range(x, n):             # the cheap exp is exact there: per chunk as per row
        for i in range(n):
            y[i] = _silu_small(x[i]) * g[i]
    else:
        for i in range(n):
            y[i] = _silu(x[i]) * g[i]


def mul_mat_swiglu(desc, ith, nth):
    """gate = Wg x, up = Wu x, dst = silu(gate) * up for one column x (decode's FFN): gate
    and up in SRC0 and SRC1 (written), Wg, Wu, x in SRC2..SRC4. mul_mat's decode path (each
    thread prepares x, then takes chunks of rows from the row's segment counters) with both
    weights per chunk and the chunk's SWIGLU right after: no barrier before the GLU, x
    prepared once for both products, and the GLU shared by the threads."""
    nth = mm.eff_nth(desc, nth)
    if not has_scratch(desc):
        set_error(desc, ERR_SCRATCH)
        return
    wt, bt = t_type(desc, SRC2), t_type(desc, SRC4)
    k, m = t_ne(desc, SRC2, 0), t_ne(desc, SRC2, 1)
    per = mm.mul_mat_thread_bytes(wt, bt, m, 1, k, 1)
    base = (wdata(desc) + 63) // 64 * 64
    if per > 0 and base + nth * per > wdata(desc) + wsize(desc):
        set_error(desc, ERR_WORK_SIZE)
        return
    region = base + ith * per
    prep = mm.needs_prep(wt, bt)
    arb = mm.act_row_bytes(wt, k)
    chunk = mm.row_chunk(m, nth)
    nchunks = (m + chunk - 1) // chunk
    nseg = mm.dyn_segments(nth)
    if mm.dyn_left(desc, nchunks, nseg):
        if prep:
            mm.prep_tile(desc, SRC4, wt, bt, k, 0, 1, arb, region, region + arb)
        j = 0
        while True:
            u, j = mm.dyn_next(desc, nchunks, nseg, ith, j)
            if u < 0:
                break
            r0, r1 = u * chunk, min(m, (u + 1) * chunk)
            mm.dot_tile(desc, SRC2, SRC4, SRC0, wt, k, r0, r1, 0, 1, prep, arb, region)
            mm.dot_tile(desc, SRC3, SRC4, SRC1, wt, k, r0, r1, 0, 1, prep, arb, region)
            _swiglu(f32_array(t_addr(desc, SRC0) + 4 * r0, r1 - r0),
                    f32_array(t_addr(desc, SRC1) + 4 * r0, r1 - r0),
                    f32_array(t_addr(desc, DST) + 4 * r0, r1 - r0), r1 - r0)
    mm.dyn_out(desc, nth, nseg)


def _swiglu_region(node, n_threads) -> int:
    """Thread ith prepares x in, and reads from, region ith only (as mul_mat)."""
    a, b = node.src[2], node.src[4]
    return mm.mul_mat_thread_bytes(int(a.type), int(b.type), a.ne[1], 1, a.ne[0], 1)


MUL_MAT_SWIGLU = make_kernel("SWIGLU", mul_mat_swiglu, private_work=_swiglu_region)
MUL_MAT_SWIGLU.name = "mul_mat_swiglu"
add_kernel(FUSED, MUL_MAT_SWIGLU)


def fused_kernels(nodes) -> list:
    """The fused kernels lowering may pick for these nodes (warm-up compiles them with the
    graph's own): RMS_NORM_MUL where an F32 RMS_NORM is, ADD_RMS_NORM_MUL where one reads
    an ADD, MUL_MAT_SWIGLU where a SWIGLU reads two fusable mat-vecs."""
    out = {}
    for node in nodes:
        if node.op is None:
            continue
        if node.op.name == "RMS_NORM" and node.type == GGMLType.F32:
            out[RMS_NORM_MUL.key] = RMS_NORM_MUL
            x = node.src[0]
            if x is not None and x.op is not None and x.op.name == "ADD":
                out[ADD_RMS_NORM_MUL.key] = ADD_RMS_NORM_MUL
        elif node.op.name == "SWIGLU" and _swiglu_of(node) is not None:
            out[MUL_MAT_SWIGLU.key] = MUL_MAT_SWIGLU
    return list(out.values())


class _Writes:
    """The op a FusedNode shows plan.schedule: the sources its row writes besides dst (the
    norm's result; the ADD's sum when the ADD is fused too)."""

    def __init__(self, op, writes):
        self._op = op
        self.writes = writes

    def __getattr__(self, k):
        return getattr(self._op, k)


class FusedNode:
    """A fused row's last node as its descriptor and plan.schedule see it: other sources
    (`src`), op_params and written sources (`writes`); everything else is the node's."""

    def __init__(self, node, src, op_params, writes):
        self.node = node
        self.src = tuple(src) + (None,) * (MAX_SRC - len(src))
        self.op_params = op_params
        self.op = _Writes(node.op, writes)

    def __getattr__(self, k):
        return getattr(self.node, k)


def _norm_row(mul, norm, w, add=None) -> FusedNode:
    """The MUL's row: sources (n, w, x), or with the ADD fused (n, w, s, a, b); the norm's
    op_params (eps)."""
    if add is None:
        return FusedNode(mul, (norm, w, norm.src[0]), norm.op_params, (0,))
    return FusedNode(mul, (norm, w, add, add.src[0], add.src[1]), norm.op_params, (0, 2))


_F32 = GGMLType.F32             # (an enum member looked up on its class costs ~0.3 µs)


def _packed_f32(t) -> bool:
    return t.type == _F32 and t.nb[0] == 4


def _pair(norm, mul):
    """The weight of a fusable (RMS_NORM, MUL) pair, or None."""
    if mul.op is None or mul.op.name != "MUL" or len(mul.ne) != 4:
        return None
    a, b = mul.src[0], mul.src[1]
    w = b if a is norm else a if b is norm else None
    x = norm.src[0]
    ne = norm.ne                        # (shape lists compare as lists: no tuples made)
    if w is None or w is norm or x is None or mul.ne != ne:
        return None
    if not (_packed_f32(x) and _packed_f32(norm) and _packed_f32(w) and _packed_f32(mul)):
        return None
    wne = w.ne
    if wne[0] != ne[0] or ne[1] % wne[1] or ne[2] % wne[2] or ne[3] % wne[3]:
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
    ne = add.ne
    return _packed_f32(a) and a.ne == ne and _packed_f32(b) and b.ne == ne


def _span(t) -> tuple:
    """(first byte, one past the last) of t."""
    a = t.data_ptr
    return a, a + nbytes(t)


def _row_aligned(outs, ins, span=_span) -> bool:
    """The fused row may write outs row by row while it reads ins: no two of them overlap
    unless they are the same rows (same address, shape and strides; the graph allocator
    hands a dead source's slot to a result). A skewed overlap would let one row's store
    clobber a row another thread, or a later iteration, still reads. span(t): t's bytes."""
    ts = outs + ins
    spans = list(map(span, ts))
    for i in range(len(outs)):
        a0, a1 = spans[i]
        j = -1
        for b0, b1 in spans:
            j += 1
            if a0 < b1 and b0 < a1 and j != i and not (
                    a0 == b0 and ts[i].ne == ts[j].ne and ts[i].nb == ts[j].nb):
                return False
    return True


_view_src = attrgetter("view_src")


def _uses(nodes, is_row, idx, slot_of, of) -> dict:
    """{t: how many nodes read t (as a source or as the tensor they view)} for the tensors
    `of`: the rows' source slots counted at once from their slot indices (idx, slot_of:
    desc.table_slots of the rows, is_row[i] for node i), the other nodes' sources (views,
    empty results) and every node's view_src one by one."""
    counts = np.bincount(idx[:, 1:].ravel(), minlength=len(slot_of) + 1)
    uses = dict(zip(of, counts[[slot_of[t] for t in of]].tolist()))
    # the other nodes' sources and every node's view_src, filtered in C down to the set
    # ones, then to the few tensors asked about, then counted
    srcs = list(filter(None, chain.from_iterable(
        [node.src for node in compress(nodes, map(not_, is_row))])))
    seen = list(compress(srcs, map(uses.__contains__, srcs)))
    views = list(filter(None, map(_view_src, nodes)))
    seen += compress(views, map(uses.__contains__, views))
    for t in seen:
        uses[t] += 1
    return uses


def _swiglu_of(glu):
    """(gate, up) when the SWIGLU glu = silu(gate) * up takes two one-column F32 mat-vecs of
    the same x by weights of one type and shape (mul_mat's decode path), else None."""
    gate, up = glu.src[0], glu.src[1]
    if gate is None or up is None or gate is up:
        return None
    if gate.op is None or gate.op.name != "MUL_MAT" or up.op is None or \
            up.op.name != "MUL_MAT":
        return None
    wg, wu, x = gate.src[0], up.src[0], gate.src[1]
    if up.src[1] is not x or wg.type != wu.type or wg.ne != wu.ne:
        return None
    col = [wg.ne[1], 1, 1, 1]
    if not (_packed_f32(x) and x.ne == [wg.ne[0], 1, 1, 1] and wg.ne[2] == wg.ne[3] == 1):
        return None
    if not (_packed_f32(gate) and gate.ne == col and _packed_f32(up) and up.ne == col
            and _packed_f32(glu) and glu.ne == col):
        return None
    tr = TRAITS[wg.type]
    ts = tr.type_size
    if wg.nb[0] != ts or wu.nb[0] != ts or wg.ne[0] % tr.blck_size:
        return None
    return gate, up


def _disjoint(outs, ins, span=_span) -> bool:
    """No byte of outs is a byte of ins (every thread reads all of x while others store)."""
    spans = [span(t) for t in ins]
    for o in outs:
        a0, a1 = span(o)
        for b0, b1 in spans:
            if a0 < b1 and b0 < a1:
                return False
    return True


def fuse(nodes, rows: list, kernels: list, slots: tuple = None, spans: tuple = None):
    """Fuse rows (graph indices into nodes, kernels the selected variant per row):
    - (RMS_NORM, MUL) pairs, the MUL the norm's only reader and the row right after it;
      and the ADD whose sum such a norm reads when it is the row right before (its other
      readers come later: the fused row still writes the sum);
    - the two mat-vecs right before a SWIGLU that reads them (_swiglu_of; the fused row
      still writes both products).
    `slots`: desc.table_slots of the rows' nodes (words, idx, slot_of) when the caller has
    them (else made here): byte spans come from their words (`spans`: desc.byte_spans of
    those words, when the caller has them).
    Returns (rows, kernels, row_nodes, moved, idx): the dropped rows gone, the last row of
    each group running the fused kernel, row_nodes what to pack and schedule per row (a
    FusedNode for a fused row), moved {dropped graph index: its fused row's graph index},
    idx the slot indices of row_nodes into the same words (a fused row's from its
    FusedNode; None when no slots were given and nothing fused)."""
    row_nodes = [nodes[i] for i in rows]
    names = [node.op.name for node in row_nodes]
    if "RMS_NORM" not in names and "SWIGLU" not in names:
        return rows, kernels, row_nodes, {}, (None if slots is None else slots[1])
    words, idx, slot_of = table_slots(row_nodes) if slots is None else slots
    lo, hi = byte_spans(words) if spans is None else spans
    lo, hi = lo.tolist(), hi.tolist()

    def span(t):
        s = slot_of[t]
        return lo[s], hi[s]

    is_row = bytearray(len(nodes))
    for i in rows:
        is_row[i] = 1
    uses = _uses(nodes, is_row, idx, slot_of,
                 [n for n, name in zip(row_nodes, names) if name == "RMS_NORM"])
    drop = set()
    moved = {}
    fused = []
    kernels = list(kernels)
    last = len(names) - 1
    for p, name in enumerate(names):
        if name == "SWIGLU":
            if _fuse_swiglu(p, rows, row_nodes, kernels, drop, moved, span):
                fused.append(p)
            continue
        if name != "RMS_NORM" or p == last:
            continue
        norm = row_nodes[p]
        # the MUL, the norm's only reader, must be the next row: no row between may write x
        # or w (in place) under it (_pair: the next row is a MUL that reads the norm)
        if uses[norm] != 1:
            continue
        q = p + 1
        mul = row_nodes[q]
        w = _pair(norm, mul)
        if w is None or not _row_aligned([norm, mul], [norm.src[0], w], span):
            continue
        drop.add(p)
        moved[rows[p]] = rows[q]
        fused.append(q)
        # the ADD right before: nothing runs between it and the norm (the executor runs
        # the ADD's other readers, later rows, after the fused row that writes the sum)
        add = row_nodes[p - 1] if p > 0 and p - 1 not in drop else None
        if (add is not None and _sum(add, norm) and w is not add
                and _row_aligned([norm, mul, add], [add.src[0], add.src[1], w], span)):
            drop.add(p - 1)
            moved[rows[p - 1]] = rows[q]
            row_nodes[q] = _norm_row(mul, norm, w, add)
            kernels[q] = ADD_RMS_NORM_MUL
        else:
            row_nodes[q] = _norm_row(mul, norm, w)
            kernels[q] = RMS_NORM_MUL
    kept = bytearray(b"\x01") * len(rows)          # the rows that stay, as a mask
    for p in drop:
        kept[p] = 0
    kidx = idx[np.frombuffer(kept, dtype=np.bool_)]
    if fused:                           # a fused row's tensors are its group's rows' tensors
        at = np.cumsum(np.frombuffer(kept, dtype=np.bool_))[fused] - 1
        kidx[at] = np.array([slot_of[f.node] if t is f else 0 if t is None else slot_of[t]
                             for f in map(row_nodes.__getitem__, fused)
                             for t in (f, *f.src)], dtype=np.intp).reshape(len(fused), -1)
    return (list(compress(rows, kept)), list(compress(kernels, kept)),
            list(compress(row_nodes, kept)), moved, kidx)


def _fuse_swiglu(p, rows, row_nodes, kernels, drop, moved, span) -> bool:
    """Row p (a SWIGLU) runs MUL_MAT_SWIGLU when rows p-2 and p-1 are its two mat-vecs."""
    glu = row_nodes[p]
    pair = _swiglu_of(glu)
    if pair is None or p < 2 or {id(row_nodes[p - 2]), id(row_nodes[p - 1])} != set(map(id, pair)):
        return False
    if kernels[p - 2].name != "mul_mat" or kernels[p - 1].name != "mul_mat":
        return False
    gate, up = pair
    ins = [gate.src[0], up.src[0], gate.src[1]]
    if not (_disjoint([gate, up, glu], ins, span) and _disjoint([gate], [up], span)
            and _row_aligned([glu], [gate, up], span)):
        return False
    for r in (p - 2, p - 1):
        drop.add(r)
        moved[rows[r]] = rows[p]
    row_nodes[p] = FusedNode(glu, (gate, up) + tuple(ins), glu.op_params, (0, 1))
    kernels[p] = MUL_MAT_SWIGLU
    return True
