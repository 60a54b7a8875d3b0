"""Graph allocator (ggml_gallocr-like): gives data to the tensors of no_alloc contexts.

Tensors that already have data (context pools, KV caches, weights) are left alone. Every
other tensor the graph needs gets a slot in one buffer. Slots are reused once a tensor's
last consumer has run, unless the tensor is a graph output or input (kept for the caller).
"""
from __future__ import annotations

from heapq import heappop, heappush

from ..graph import CGraph
from ..tensor import Buffer, nbytes, TENSOR_FLAG_OUTPUT, TENSOR_FLAG_INPUT

ALIGN = 64


def alloc_graph(gf: CGraph, make_buffer=None) -> int:
    """Allocate every tensor of gf that lacks data; returns the bytes allocated."""
    order = gf.leafs + gf.nodes
    n_leafs = len(gf.leafs)
    # roots (tensors owning memory) that lack data, in first-seen order; where each
    # tensor sits in the order, and the last position that reads each root
    todo: dict[int, object] = {}
    pos: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, t in enumerate(order):
        pos[id(t)] = i
        r = t.view_src if t.view_src is not None else t
        if r._buffer is None and id(r) not in todo:
            todo[id(r)] = r
        for s in t.src:
            if s is not None:
                r = s.view_src if s.view_src is not None else s
                if r._buffer is None and id(r) not in todo:
                    todo[id(r)] = r
                last[id(r)] = i
    if not todo:
        return 0
    keep_mask = TENSOR_FLAG_OUTPUT | TENSOR_FLAG_INPUT
    out = gf.nodes[-1] if gf.nodes else None
    out_root = id(out.view_src if out.view_src is not None else out) if out is not None else None
    # greedy first-fit over a free list, in execution order; a slot is released once the
    # last node reading it has run (graph inputs, outputs and leafs keep theirs)
    free: list[list[int]] = []          # [offset, size]
    top = 0
    offsets: dict[int, int] = {}
    live: list[tuple] = []              # heap of (last use, seq, offset, size)
    for seq, (i, k, t) in enumerate(sorted((pos.get(k, -1), k, t) for k, t in todo.items())):
        while live and live[0][0] < i:
            _, _, o, s = heappop(live)
            free.append([o, s])
        size = (max(nbytes(t), 1) + ALIGN - 1) // ALIGN * ALIGN
        for j, f in enumerate(free):
            if f[1] >= size:
                o = f[0]
                if f[1] == size:
                    del free[j]
                else:
                    f[0] += size
                    f[1] -= size
                break
        else:
            o = top
            top += size
        offsets[k] = o
        if not (t.flags & keep_mask or i < n_leafs or k == out_root):
            heappush(live, (last.get(k, i), seq, o, size))
    buf = make_buffer(top) if make_buffer is not None else Buffer(top, name="graph")
    for k, t in todo.items():
        t.set_buffer(buf, offsets[k])
    return top
