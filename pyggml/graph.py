"""CGraph: the lazy compute graph, built by ggml's depth-first visit of sources."""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Optional

import numpy as np

from .errors import GraphError
from .tensor import TENSOR_FLAG_LOSS
from .tensor import TENSOR_FLAG_PARAM
from .tensor import Tensor

DEFAULT_GRAPH_SIZE = 2048


class CGraph:
    def __init__(self, size: int = DEFAULT_GRAPH_SIZE, grads: bool = False, ctx=None):
        if size <= 0:
            raise GraphError(f"new_graph_custom: size must be > 0, got {size}")
        self.size = int(size)
        # ggml's cgraph->grads / grad_accs: id(tensor) -> its gradient / gradient accumulator
        # (None for a graph made without grads); filled by autodiff.build_backward_expand
        self.grads: Optional[dict] = {} if grads else None
        self.grad_accs: Optional[dict] = {} if grads else None
        self.ctx = ctx
        if ctx is not None:       # as ggml_new_graph_custom: the graph's bookkeeping lives in ctx
            from .context import graph_overhead
            ctx._reserve(graph_overhead(self.size, bool(grads)), f"a graph of size {self.size}")
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self._visited: set[Tensor] = set()
        self.version = 0          # bumped on every change: backends cache lowered tables by it
        self.cache: dict = {}     # per-backend data derived from this graph (lowered tables)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_leafs(self) -> int:
        return len(self.leafs)

    def _add(self, t: Tensor) -> None:
        # ggml: a tensor without op (and not a trainable param) is a leaf, anything else a node
        if t.op is None and not (t.flags & TENSOR_FLAG_PARAM):
            if len(self.leafs) >= self.size:
                raise GraphError(f"graph is full: {self.size} leafs (use new_graph_custom with a larger size)")
            if not t.name:
                t.name = f"leaf_{len(self.leafs)}"
            self.leafs.append(t)
        else:
            if len(self.nodes) >= self.size:
                raise GraphError(f"graph is full: {self.size} nodes (use new_graph_custom with a larger size)")
            if not t.name:
                t.name = f"node_{len(self.nodes)}"
            self.nodes.append(t)

    def expand(self, tensor: Tensor) -> None:
        """ggml_visit_parents, iteratively: sources left to right, then the tensor itself."""
        if not isinstance(tensor, Tensor):
            raise GraphError(f"build_forward_expand: expected a Tensor, got {type(tensor).__name__}")
        visited = self._visited        # the tensors themselves: they hash by identity
        if tensor in visited:
            return
        n0 = len(self.nodes) + len(self.leafs)
        visited.add(tensor)
        nodes, leafs, size = self.nodes, self.leafs, self.size
        # (tensor, iterator over its sources): each source list is walked once, resumed
        # where the last visit stopped
        # (tensors are truthy: filter(None, src) walks the sources that are set)
        stack = [(tensor, filter(None, tensor.src))]
        while stack:
            t, it = stack[-1]
            for s in it:
                if s not in visited:
                    visited.add(s)
                    if s.op is None and not s.flags & TENSOR_FLAG_PARAM and not any(s.src):
                        # a leaf with no sources (a weight, an input): pushing it would pop
                        # it at once; _add, inlined
                        if len(leafs) >= size:
                            self._add(s)                  # raises: the graph is full
                        if not s.name:
                            s.name = f"leaf_{len(leafs)}"
                        leafs.append(s)
                        continue
                    stack.append((s, filter(None, s.src)))
                    break
            else:
                stack.pop()
                # _add, inlined: a tensor without op (and not a trainable param) is a leaf
                if t.op is None and not (t.flags & TENSOR_FLAG_PARAM):
                    if len(leafs) >= size:
                        self._add(t)                  # raises: the graph is full
                    if not t.name:
                        t.name = f"leaf_{len(leafs)}"
                    leafs.append(t)
                else:
                    if len(nodes) >= size:
                        self._add(t)
                    if not t.name:
                        t.name = f"node_{len(nodes)}"
                    nodes.append(t)
        if len(self.nodes) + len(self.leafs) != n0:
            self.version += 1

    def __repr__(self) -> str:
        return f"CGraph({len(self.nodes)} nodes, {len(self.leafs)} leafs, size {self.size})"


@contextmanager
def gc_paused():
    """Python's cycle collector paused while a new graph is built, allocated and lowered:
    those thousands of small objects (tensors, their shape lists) would trigger collections
    that walk every live object of the process (numba's included): 20-50% of a graph's
    Python cost, and pauses of 0.1-0.5 s when a full collection hits. Nothing is lost: the
    graph's garbage is collected at the next collection after the block."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def new_graph(ctx=None) -> CGraph:
    return CGraph(DEFAULT_GRAPH_SIZE, False, ctx)


def new_graph_custom(ctx, size: int = DEFAULT_GRAPH_SIZE, grads: bool = False) -> CGraph:
    return CGraph(size, grads, ctx)


def build_forward_expand(gf: CGraph, tensor: Tensor) -> None:
    gf.expand(tensor)


def graph_n_nodes(gf: CGraph) -> int:
    return len(gf.nodes)


def graph_nodes(gf: CGraph) -> list[Tensor]:
    return list(gf.nodes)


def graph_node(gf: CGraph, i: int) -> Tensor:
    """ggml_graph_node: i-th node; negative i counts from the end."""
    n = len(gf.nodes)
    if not -n <= i < n:
        raise GraphError(f"graph_node: index {i} out of range for a graph of {n} nodes")
    return gf.nodes[i]


def graph_size(gf: CGraph) -> int:
    return gf.size


def graph_add_node(gf: CGraph, t: Tensor) -> None:
    if len(gf.nodes) >= gf.size:
        raise GraphError(f"graph is full: {gf.size} nodes")
    gf.nodes.append(t)
    gf._visited.add(t)
    gf.version += 1


def graph_get_tensor(gf: CGraph, name: str) -> Optional[Tensor]:
    for t in gf.leafs:
        if t.name == name:
            return t
    for t in gf.nodes:
        if t.name == name:
            return t
    return None


def graph_view(gf: CGraph, i0: int, i1: int) -> CGraph:
    """ggml_graph_view: a graph of nodes [i0, i1) sharing the tensors (no leafs)."""
    if not 0 <= i0 <= i1 <= len(gf.nodes):
        raise GraphError(f"graph_view: [{i0}, {i1}) out of range for {len(gf.nodes)} nodes")
    g = CGraph(max(1, i1 - i0), False, gf.ctx)
    g.nodes = gf.nodes[i0:i1]
    g._visited = set(g.nodes)
    return g


def graph_cpy(src: CGraph, dst: CGraph) -> None:
    if len(src.nodes) > dst.size or len(src.leafs) > dst.size:
        raise GraphError(f"graph_cpy: destination of size {dst.size} is too small")
    if src.grads is not None and dst.grads is None:
        raise GraphError("graph_cpy: the source has gradients, the destination was made "
                         "without (new_graph_custom(ctx, size, grads=True))")
    dst.nodes = list(src.nodes)
    dst.leafs = list(src.leafs)
    dst._visited = set(src._visited)
    if dst.grads is not None:       # as ggml: the destination's gradients are the source's
        dst.grads = dict(src.grads or {})
        dst.grad_accs = dict(src.grad_accs or {})
    dst.version += 1


def graph_get_grad(gf: CGraph, node: Tensor) -> Optional[Tensor]:
    """ggml_graph_get_grad: the gradient of node in gf (None when it has none)."""
    return gf.grads.get(id(node)) if gf.grads is not None and node in gf._visited else None


def graph_get_grad_acc(gf: CGraph, node: Tensor) -> Optional[Tensor]:
    """ggml_graph_get_grad_acc: node's gradient accumulator in gf (None when it has none)."""
    return gf.grad_accs.get(id(node)) if gf.grad_accs is not None and node in gf._visited \
        else None


def graph_reset(gf: CGraph) -> None:
    """ggml_graph_reset: gradient accumulators to 0, the loss's to 1, AdamW momenta to 0.

    The tensors must have data (allocate the graph first), as in ggml. Backend caches of the
    graph (lowered tables) are dropped too."""
    if gf is None:
        return
    gf.cache.clear()
    if gf.grads is None:
        return
    from .data import write
    for node in gf.nodes:
        for i in node.op.extra.get("reset_srcs", ()) if node.op is not None else ():
            _fill(write, node.src[i], 0.0, "graph_reset")          # optimizer momenta
        acc = graph_get_grad_acc(gf, node)
        if acc is not None:
            loss = bool(node.flags & TENSOR_FLAG_LOSS)
            _fill(write, acc, 1.0 if loss else 0.0, "graph_reset")


def _fill(write, t: Tensor, value: float, what: str) -> None:
    if not t.is_allocated:
        raise GraphError(f"{what}: {t.name or 'a tensor'} has no data yet; allocate the graph's "
                         f"tensors (compute once, or sched.alloc.alloc_graph) before {what}")
    write(t, np.full(t.ne[::-1], value))


def graph_clear(gf: CGraph) -> None:
    gf.nodes.clear()
    gf.leafs.clear()
    gf._visited.clear()
    gf.cache.clear()
    if gf.grads is not None:
        gf.grads.clear()
        gf.grad_accs.clear()
    gf.version += 1
