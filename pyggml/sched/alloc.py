"""Graph allocator (ggml_gallocr-like): gives data to the tensors of no_alloc contexts.

Tensors that already have data (context pools, KV caches, weights) are left alone. Every
other tensor the graph needs gets a slot in one buffer. Slots are reused once a tensor's
last consumer has run, unless the tensor is a graph output or input (kept for the caller).
"""
from __future__ import annotations

from ..graph import CGraph
from ..tensor import Buffer, Tensor, nbytes, TENSOR_FLAG_OUTPUT, TENSOR_FLAG_INPUT

ALIGN = 64


def _pad(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


def _root(t: Tensor) -> Tensor:
    return t.view_src if t.view_src is not None else t


def alloc_graph(gf: CGraph, make_buffer=None) -> int:
    """Allocate every tensor of gf that lacks data; returns the bytes allocated."""
    make_buffer = make_buffer or (lambda n: Buffer(n, name="graph"))
    order = list(gf.leafs) + list(gf.nodes)
    todo = []
    seen = set()
    for t in order:
        for x in [t] + [s for s in t.src if s is not None]:
            r = _root(x)
            if r.buffer is None and id(r) not in seen:
                seen.add(id(r))
                todo.append(r)
    if not todo:
        return 0
    # last use of each root, in node order
    pos = {id(t): i for i, t in enumerate(order)}
    last = {}
    for i, t in enumerate(order):
        for s in t.src:
            if s is not None:
                last[id(_root(s))] = i
    keep = {id(t) for t in todo if t.flags & (TENSOR_FLAG_OUTPUT | TENSOR_FLAG_INPUT)
            or pos.get(id(t), -1) < len(gf.leafs)}
    keep.add(id(_root(gf.nodes[-1]))) if gf.nodes else None
    # greedy first-fit over a free list, in execution order
    free: list[tuple[int, int]] = []     # (offset, size)
    top = 0
    offsets = {}
    live = []                            # (last_use, id, offset, size)
    for t in sorted(todo, key=lambda r: pos.get(id(r), -1)):
        i = pos.get(id(t), -1)
        # release slots whose last consumer ran before this tensor is produced
        for item in [x for x in live if x[0] < i]:
            live.remove(item)
            free.append((item[2], item[3]))
        size = _pad(max(nbytes(t), 1))
        for j, (o, s) in enumerate(free):
            if s >= size:
                offsets[id(t)] = o
                free[j] = (o + size, s - size)
                break
        else:
            offsets[id(t)] = top
            top += size
        if id(t) not in keep:
            live.append((last.get(id(t), i), id(t), offsets[id(t)], size))
    buf = make_buffer(top)
    for t in todo:
        t.set_buffer(buf, offsets[id(t)])
    return top
