"""MatMulMemo: a MUL_MAT node run again recomputes only the batch matrices whose inputs changed.

Grad mode's finite differences run the same graph ~10^4 times with one element of one leaf
moved. A MUL_MAT reference then spent its time converting the unchanged weights to float64
(data.read) and multiplying matrices whose inputs did not change (~15 ms CPU per graph for
MUL_MAT(f16, m=1057, k=128, bs=[8,3], nr=[4,1])). The memo keeps, per node, its sources'
bytes as last read, their float64 values and the float64 product. On the next run it
compares the sources' bytes exactly (memcmp of the byte range they span, then element by
element to find which matrices differ): no version counter or fingerprint, so any write is
seen, whoever made it (data API, a kernel, a view, a NumPy view of the buffer). A changed
source is read again in full (data.read, the same conversion), and each output matrix whose
a- or b-matrix changed is recomputed by the OpDef reference on that one pair of matrices:
the same BLAS call on the same values and strides as inside the batched call, so the
product is bit for bit the one a full recomputation gives (tests/unit/test_reference_memo.py, tools/check_ref_memo.py).

The compare itself reads every byte: 1.9 ms CPU for a 13 MB weight, most of a grad-mode
graph once nothing else is recomputed. So a caller that writes one tensor only between runs
can say so (only_writing(t): grad mode's finite differences): then a source that is a leaf
(or a view of one) outside t's bytes and outside every byte the graph's own nodes write is
compared once, at its first run in the block, and trusted after that.
"""
from __future__ import annotations

import ctypes
import weakref
from contextlib import contextmanager
from typing import Optional

import numpy as np

from ... import data
from ...tensor import Tensor
from ...types import TRAITS

MAX_BYTES = 512 << 20     # memo arrays kept at most (least recently used dropped first)
MAX_ENTRIES = 16

try:                      # memcmp: the whole-span check is half the cost of np.array_equal
    _memcmp = ctypes.CDLL(None).memcmp
    _memcmp.restype = ctypes.c_int
    _memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
except (OSError, AttributeError):      # no libc symbols in the process: NumPy compares
    _memcmp = None


def _span(t: Tensor) -> tuple:
    """Byte range [lo, hi) of t's buffer that holds every element of t (ggml's nb >= 0)."""
    tr = TRAITS[t.type]
    if tr.blck_size == 1:
        dims, last = range(4), tr.type_size
    else:                 # rows are packed blocks (MUL_MAT's requirement)
        dims, last = range(1, 4), tr.row_size(t.ne[0])
    return t.offs, t.offs + sum((t.ne[d] - 1) * t.nb[d] for d in dims) + last


def _raw(t: Tensor) -> np.ndarray:
    """t's storage as unsigned integers (ne3, ne2, ne1, x): compared bit for bit (a float
    compare would take -0.0 for 0.0 and never match a NaN)."""
    if TRAITS[t.type].blck_size != 1:
        return data.row_bytes(t)
    a = data.strided(t)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _same(cur: np.ndarray, snap: np.ndarray) -> bool:
    if _memcmp is not None:
        return cur.size == snap.size and _memcmp(cur.ctypes.data, snap.ctypes.data, cur.size) == 0
    return np.array_equal(cur, snap)


def _overlap(t: Tensor, u: Tensor) -> bool:
    if t.buffer is not u.buffer:
        return False
    (lo, hi), (ulo, uhi) = _span(t), _span(u)
    return lo < uhi and ulo < hi


def _layout(t: Tensor) -> tuple:
    return (t, t.buffer.data.ctypes.data, t.offs, t.type, tuple(t.ne), tuple(t.nb))


class _Entry:
    __slots__ = ("node", "layout", "spans", "snaps", "raws", "vals", "out", "nbytes", "epoch")

    def __init__(self, node: Tensor, srcs: list):
        self.node = weakref.ref(node)
        self.layout = self.layout_of(node, srcs)
        self.spans = [_span(s) for s in srcs]
        self.snaps = [s.buffer.data[lo:hi].copy() for s, (lo, hi) in zip(srcs, self.spans)]
        self.raws = [np.array(_raw(s)) for s in srcs]
        self.vals = [data.read(s) for s in srcs]
        self.out = None
        self.nbytes = 0
        self.epoch = 0                   # the only_writing block it was last compared in

    @staticmethod
    def layout_of(node: Tensor, srcs: list) -> tuple:
        return (node.op, node.type, tuple(node.ne), node.op_params.tobytes(),
                tuple(_layout(s) for s in srcs))

    def size(self) -> int:
        arrs = self.snaps + self.raws + self.vals + [self.out]
        return sum(a.nbytes for a in arrs)


class MatMulMemo:
    """Per-node memo of MUL_MAT references (a backend's; single-threaded, as the backend)."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_entries: int = MAX_ENTRIES):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.entries: dict = {}          # id(node) -> _Entry, most recently used last
        self.hits = 0                    # runs that reused the memo (tests and profiling)
        self.epoch = 0                   # counts only_writing blocks
        self.written = None              # the tensor an only_writing block writes, or None
        self.graph_nodes = ()            # nodes of the graph being computed (set by the backend)
        self.trusted: dict = {}          # id(source) -> (source, trusted?) in this block

    @contextmanager
    def only_writing(self, t: Tensor):
        """The caller promises: until the block ends, nothing but t's bytes and the graphs'
        own nodes write memory that a MUL_MAT source reads."""
        self.epoch += 1
        self.written, self.trusted = t, {}
        try:
            yield
        finally:
            self.written, self.trusted = None, {}

    def _is_trusted(self, s: Tensor) -> bool:
        hit = self.trusted.get(id(s))
        if hit is not None and hit[0] is s:
            return hit[1]
        root = s.view_src if s.view_src is not None else s
        ok = root.op is None and not _overlap(s, self.written) and not any(
            n.op is not None and not n.op.view and _overlap(s, n) for n in self.graph_nodes)
        self.trusted[id(s)] = (s, ok)
        return ok

    def mul_mat(self, node: Tensor) -> Optional[np.ndarray]:
        """The float64 product (b3, b2, n, m) of MUL_MAT node: OpDef reference's result."""
        srcs = node.src[:2]
        if any(s is None or s.buffer is None or 0 in s.ne for s in srcs):
            return None
        op = node.op
        p = op.p(node)
        e = self.entries.pop(id(node), None)
        if e is not None and (e.node() is not node or e.layout != _Entry.layout_of(node, srcs)):
            e = None
        if e is None:
            e = _Entry(node, srcs)
            e.out = op.reference(node, e.vals, p)
            e.epoch = self.epoch if self.written is not None else 0
        else:
            self._update(e, srcs, op, p)
            self.hits += 1
        e.nbytes = e.size()
        self.entries[id(node)] = e
        self._evict()
        return e.out

    def _update(self, e: _Entry, srcs: list, op, p) -> None:
        masks = []
        block = self.written is not None
        for i, s in enumerate(srcs):
            if block and e.epoch == self.epoch and self._is_trusted(s):
                masks.append(None)
                continue
            lo, hi = e.spans[i]
            cur = s.buffer.data[lo:hi]
            if _same(cur, e.snaps[i]):
                masks.append(None)
                continue
            raw = _raw(s)
            masks.append((raw != e.raws[i]).any(axis=(2, 3)))     # which (i3, i2) matrices
            e.snaps[i][...] = cur
            e.raws[i][...] = raw
            e.vals[i] = data.read(s)
        if block:
            e.epoch = self.epoch
        ma, mb = masks
        if ma is None and mb is None:
            return
        a, b = e.vals
        r3, r2 = b.shape[0] // a.shape[0], b.shape[1] // a.shape[1]
        redo = np.zeros(b.shape[:2], dtype=bool)
        if mb is not None:
            redo |= mb
        if ma is not None:               # a's matrix (j3, j2) meets b's (j3 * r3 + q3, j2 * r2 + q2)
            redo |= np.repeat(np.repeat(ma, r3, axis=0), r2, axis=1)
        if redo.all():
            e.out = op.reference(e.node(), e.vals, p)
            return
        for i3, i2 in zip(*np.nonzero(redo)):
            j3, j2 = i3 // r3, i2 // r2
            sub = op.reference(e.node(), [a[j3:j3 + 1, j2:j2 + 1], b[i3:i3 + 1, i2:i2 + 1]], p)
            e.out[i3, i2] = sub[0, 0]

    def _evict(self) -> None:
        for k in [k for k, e in self.entries.items() if e.node() is None]:
            del self.entries[k]
        used = sum(e.nbytes for e in self.entries.values())
        while self.entries and (used > self.max_bytes or len(self.entries) > self.max_entries):
            k = next(iter(self.entries))
            used -= self.entries.pop(k).nbytes
