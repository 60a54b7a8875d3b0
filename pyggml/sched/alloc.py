"""Graph allocator (ggml_gallocr-like): gives data to the tensors of no_alloc contexts.

Tensors that already have data (context pools, KV caches, weights) are left alone. Every
other tensor the graph needs gets a slot in one buffer. Slots are reused once a tensor's
last consumer has run, unless the tensor is a graph output or input (kept for the caller).
"""
from __future__ import annotations

from heapq import heappop
from heapq import heappush
from itertools import chain
from itertools import compress
from itertools import count

from .. import tensor as _tensor_mod
from ..graph import CGraph
from ..tensor import TENSOR_FLAG_INPUT
from ..tensor import TENSOR_FLAG_OUTPUT
from ..tensor import Buffer
from ..tensor import kept_shape
from ..tensor import set_buffers

ALIGN = 64

# gf.cache entry: the graph as it was when every tensor it holds had data. Tensors never
# lose data and every grant bumps tensor.ALLOC_EPOCH, so while the graph's lists and the
# epoch are unchanged the walk would find nothing to do (a scheduler allocates, then its
# backend asks again for the same graph or a split's graph of the same nodes).
ALLOCATED = "allocated"


# gf.cache entry: (allocated_mark, the buffers the roots of gf's sources live in), noted by
# the walk below, valid while the mark is (a root moves only through set_buffer, which bumps
# ALLOC_EPOCH): a scheduler with one backend for every node needs no copy when none of them
# names (Buffer.backend, read then: it may be set in place) another backend.
HELD = "held buffers"


def allocated_mark(gf: CGraph) -> tuple:
    return gf.version, len(gf.nodes), len(gf.leafs), _tensor_mod.ALLOC_EPOCH


def mark_allocated(gf: CGraph) -> None:
    """Note that every tensor of gf has data now (alloc_graph then returns at once)."""
    gf.cache[ALLOCATED] = allocated_mark(gf)


def first_fit(sizes: list, size: int) -> int:
    """The index of the first of sizes that is >= size, or -1. Mostly one of exactly that
    size with none larger before it (a graph's sizes repeat); the scans run in C (the free
    list holds tens of blocks and a graph has hundreds of tensors)."""
    try:
        j = sizes.index(size)
    except ValueError:
        return next(compress(count(), map(size.__le__, sizes)), -1)
    if j and max(sizes[:j]) > size:
        return next(compress(count(), map(size.__lt__, sizes)))
    return j


def alloc_graph(gf: CGraph, make_buffer=None) -> int:
    """Allocate every tensor of gf that lacks data; returns the bytes allocated."""
    if gf.cache.get(ALLOCATED) == allocated_mark(gf):
        return 0
    order = gf.leafs + gf.nodes
    n_leafs = len(gf.leafs)
    # roots (tensors owning memory) that lack data, in first-seen order; the place of
    # those the order holds, and the last position that reads each
    # (dicts keyed by the tensors themselves: they hash by identity)
    todo: dict = {}
    at: dict = {}                       # root of the order -> its (last) position
    n_at = 0                            # (more than len(at): a tensor is in the order twice)
    last: dict = {}
    held = set()                        # the buffers of the sources' roots
    for i, t in enumerate(order):
        r = t.view_src
        if r is None:
            if t._buffer is None:
                todo[t] = None
                at[t] = i
                n_at += 1
        elif r._buffer is None:
            todo[r] = None
        for s in filter(None, t.src):          # the sources that are set (tensors are truthy)
            r = s.view_src
            if r is None:
                r = s
            buf = r._buffer
            if buf is None:
                todo[r] = None
                last[r] = i
            else:
                held.add(buf)
    if not todo:
        mark_allocated(gf)
        gf.cache[HELD] = (gf.cache[ALLOCATED], held)
        return 0
    keep_mask = TENSOR_FLAG_OUTPUT | TENSOR_FLAG_INPUT
    out = gf.nodes[-1] if gf.nodes else None
    out_root = (out.view_src if out.view_src is not None else out) if out is not None else None
    # in execution order: roots outside the order first (by first sight), then the order's
    # by position (at holds them in that order unless a tensor is in the order twice)
    if n_at == len(at):
        ranked = at.items()
        if len(at) != len(todo):
            ranked = chain([(t, -1) for t in todo if t not in at], ranked)
    else:
        ranked = [(t, i) for i, _, t in
                  sorted((at.get(t, -1), j, t) for j, t in enumerate(todo))]  # (i, j) unique
    # greedy first-fit over a free list, in execution order; a slot is released once the
    # last node reading it has run (graph inputs, outputs and leafs keep theirs)
    foff: list[int] = []                # the free list: offsets and sizes, in release order
    fsize: list[int] = []
    top = 0
    offsets: dict = {}
    live: list[tuple] = []              # heap of (last use, seq, offset, size)
    for seq, (t, i) in enumerate(ranked):
        while live and live[0][0] < i:
            _, _, o, s = heappop(live)
            foff.append(o)
            fsize.append(s)
        c = t.slot_shape                # kept_shape(t), inline while it is valid
        if c is None or c[0] is not t.ne or c[1] is not t.nb or c[2] is not t.type:
            c = kept_shape(t)
        size = ((c[4] or 1) + ALIGN - 1) & -ALIGN       # nbytes(t), aligned
        j = first_fit(fsize, size)
        if j >= 0:
            o = foff[j]
            if fsize[j] == size:
                del foff[j], fsize[j]
            else:
                foff[j] += size
                fsize[j] -= size
        else:
            o = top
            top += size
        offsets[t] = o
        if not (t.flags & keep_mask or i < n_leafs or t is out_root):
            heappush(live, (last.get(t, i), seq, o, size))
    buf = make_buffer(top) if make_buffer is not None else Buffer(top, name="graph")
    set_buffers(buf, offsets)
    mark_allocated(gf)
    held.add(buf)                       # the roots without data live in it now
    gf.cache[HELD] = (gf.cache[ALLOCATED], held)
    return top
