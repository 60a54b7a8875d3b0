"""The scheduler over local and Ray backends: pyggml's Sched plus what remote memory needs.

Sched already puts a node that reads a tensor living in a backend's buffer on that backend
(weights, and here also the KV cache rows a worker holds), cuts splits and copies their
inputs. Remote memory adds two rules:

- follow (layer split): a node that reads nothing resident anywhere runs where its first
  computed source ran if that is a Ray worker, so a worker keeps the norms, ropes, adds and
  attention of its layers instead of bouncing each to the driver; a view of driver memory
  runs with the node before it (it computes nothing, but would cut a split);
- concurrency: consecutive splits on different workers that do not read what the others
  write run at the same time (each shard's attention, in context split);
- exports: a root written on a worker (a node's result, or a source the op writes, like
  flash_attn_ext_with_state's softmax state) that a node of another split reads, or that is
  the graph's result, is sent back after the worker's split; nothing else is, and a local
  node reading a worker's resident tensor (stale on the driver) is an error at planning.
"""
from __future__ import annotations

from ..errors import GraphError
from ..errors import describe
from ..graph import CGraph
from ..sched.scheduler import Sched
from ..tensor import TENSOR_FLAG_OUTPUT
from .backend import EXPORTS
from .backend import RayBackend


def _root(t):
    return t.view_src if t.view_src is not None else t


class DistributedSched(Sched):
    def __init__(self, backends, follow: bool = True, eval_cb=None):
        super().__init__(backends, eval_cb)
        self.follow = follow
        self.workers = [b for b in self.backends if isinstance(b, RayBackend)]

    def _owner(self, t):
        """The backend whose buffer holds t's data (None: plain driver memory)."""
        return self._backend_of_buffer(t)

    def _assign(self, gf: CGraph) -> None:
        super()._assign(gf)
        if self.follow:
            self._follow(gf)
        self._views_to_neighbours(gf)

    def _views_to_neighbours(self, gf: CGraph) -> None:
        """A view of driver memory runs with the node before it in graph order: it computes
        nothing, and any backend reads it correctly (a reader elsewhere copies it), but one
        placed away from its neighbours would cut a split in two (one more round trip)."""
        a = self.assignment
        prev = None
        for node in gf.nodes:
            if node.op.view and id(node) not in self.pinned and self._owner(node) is None:
                if prev is not None:
                    a[id(node)] = prev
            else:
                prev = a[id(node)]

    def _follow(self, gf: CGraph) -> None:
        a = self.assignment
        for node in gf.nodes:
            if id(node) in self.pinned:
                continue
            if node.op.view:
                src = node.src[0]
                be = a.get(id(src)) or self._owner(src)
                if be is not None:
                    a[id(node)] = be
                continue
            if isinstance(a[id(node)], RayBackend) or any(
                    s is not None and self._owner(s) is not None for s in node.src):
                continue
            for s in node.src:
                be = a.get(id(s)) if s is not None else None
                if be is not None:
                    if isinstance(be, RayBackend) and be.supports_op(node):
                        a[id(node)] = be
                    break

    def alloc_graph(self, gf: CGraph) -> None:
        super().alloc_graph(gf)
        if any(sp.graph is None or EXPORTS not in sp.graph.cache for sp in self.splits):
            self._plan_exports(gf)

    def _plan_exports(self, gf: CGraph) -> None:
        where = {}              # id(root) -> [(split index, root)] of the splits writing it
        for k, sp in enumerate(self.splits):
            if sp.graph is None:                     # Sched makes it on first compute
                g = CGraph(max(1, len(sp.nodes)))
                g.nodes = sp.nodes
                g.version = gf.version
                sp.graph = g
            if not isinstance(sp.backend, RayBackend):
                continue
            for n in sp.nodes:
                if n.op.view:
                    continue
                roots = [_root(n)] + [_root(n.src[j]) for j in n.op.writes
                                      if n.src[j] is not None]
                for r in roots:
                    if not isinstance(self._owner(r), RayBackend):
                        where.setdefault(id(r), []).append((k, r))
        exports = [dict() for _ in self.splits]
        for k, sp in enumerate(self.splits):
            for n in sp.nodes:
                for s in n.src:
                    if s is None:
                        continue
                    r = _root(s)
                    owner = self._owner(r)
                    if isinstance(owner, RayBackend) and owner is not sp.backend \
                            and not n.op.view:
                        raise GraphError(
                            f"node {describe(n)} on {sp.backend.name} reads {describe(s)}, "
                            f"which lives on {owner.name}: its driver copy is stale")
                    # the last split before this one to write it sends it back (a
                    # chain of with_state calls on several workers carries one state)
                    w = [x for x in where.get(id(r), ()) if x[0] < k]
                    if w:
                        exports[w[-1][0]][id(r)] = r
        last = gf.nodes[-1] if gf.nodes else None
        for n in gf.nodes:
            if n is last or n.flags & TENSOR_FLAG_OUTPUT:
                w = where.get(id(_root(n)))
                if w:
                    exports[w[-1][0]][id(w[-1][1])] = w[-1][1]
        for sp, ex in zip(self.splits, exports):
            sp.graph.cache[EXPORTS] = list(ex.values())
            sp.graph.cache[READS] = {id(_root(s)) for n in sp.nodes for s in n.src
                                     if s is not None}
            sp.graph.cache[WRITES] = {id(r) for r in ex.values()}

    def graph_compute(self, gf: CGraph, eval_cb=None) -> None:
        """Sched.graph_compute, with independent worker splits in flight together (an eval
        callback runs the plain Sched loop: node by node is local work anyway)."""
        if eval_cb is not None:
            return super().graph_compute(gf, eval_cb)
        if self.eval_cb is not None:
            return super().graph_compute(gf)
        self.alloc_graph(gf)
        splits, i = self.splits, 0
        while i < len(splits):
            batch = [splits[i]]
            if isinstance(batch[0].backend, RayBackend):
                while i + len(batch) < len(splits) and _independent(batch, splits[i + len(batch)]):
                    batch.append(splits[i + len(batch)])
            if len(batch) == 1 and not isinstance(batch[0].backend, RayBackend):
                self._copy_inputs(batch[0])
                batch[0].backend.graph_compute(batch[0].graph)
            else:
                pending = []
                for sp in batch:
                    self._copy_inputs(sp)
                    pending.append(sp.backend.submit(sp.graph))
                for sp, p in zip(batch, pending):
                    sp.backend.collect(p)
            i += len(batch)


READS, WRITES = "ray reads", "ray writes"


def _independent(batch: list, sp) -> bool:
    """sp may run alongside the batch: another worker, reading nothing the batch sends back."""
    if not isinstance(sp.backend, RayBackend) or any(b.backend is sp.backend for b in batch):
        return False
    reads = sp.graph.cache[READS]
    return not any(reads & b.graph.cache[WRITES] for b in batch)
