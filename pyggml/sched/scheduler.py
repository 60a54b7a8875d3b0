"""Multi-backend scheduler, like ggml_backend_sched.

Given backends in priority order, every node goes to the first backend that supports it —
except that a node reading a weight stored in a backend's buffer goes to that backend when
it can (weights stay where they live), and a view goes where its source went. Consecutive
nodes on the same backend form a split. A split reading a tensor that another backend
produced (or that lives in another backend's buffer) gets an explicit copy of it, made
right before the split runs; the split computes on "shadow" nodes that read the copies and
write into the original nodes' memory, so the user's graph is never rewired.

A Sched is itself a Backend (alloc_graph, graph_compute, set_n_threads, supports_op), so a
caller holding "a backend" never needs to know whether it holds a scheduler.
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from dataclasses import field
from itertools import repeat
from operator import is_not
from typing import Optional

from .. import data
from .. import tensor as _tensor_mod
from ..backends.base import PART_OF
from ..backends.base import Backend
from ..errors import GraphError
from ..errors import UnsupportedError
from ..errors import describe
from ..graph import CGraph
from ..tensor import Buffer
from ..tensor import Tensor
from ..tensor import nbytes
from ..types import TRAITS
from .alloc import HELD
from .alloc import alloc_graph
from .alloc import allocated_mark
from .alloc import mark_allocated


@dataclass
class Split:
    backend: object
    nodes: list = field(default_factory=list)        # original nodes, in graph order
    inputs: list = field(default_factory=list)       # original tensors copied in
    copies: dict = field(default_factory=dict)       # id(original) -> copy Tensor
    graph: Optional[CGraph] = None                   # shadow graph that the backend runs


def _fmt_size(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else f"{n}B"


_TOKENS = itertools.count(1)
_ASK = object()                 # Sched._support: a backend not asked yet


def buffer_owner(t: Tensor, owners: dict):
    """The backend (of owners: Sched._buffer_owners) whose buffer holds t's data (its
    root's: a view's source's), or None: no data yet, or a buffer that names no backend
    here. (Sched._assign inlines it in its per-source loop.)"""
    r = t.view_src if t.view_src is not None else t
    buf = r._buffer
    if buf is None or buf.backend is None:
        return None
    return owners.get(buf.backend)


class Sched(Backend):
    name = "sched"

    # Each graph keeps its own assignment/splits in gf.cache under this scheduler's token (a
    # decoder alternating between reused graphs does not re-plan on every switch), so they
    # live exactly as long as the graph: the scheduler holds no graph but its current one.

    def __init__(self, backends, eval_cb=None):
        if not backends:
            raise GraphError("sched_new: needs at least one backend")
        self.backends = list(backends)
        self.eval_cb = eval_cb
        self.assignment: dict[int, object] = {}      # id(node) -> backend
        self.pinned: dict[int, object] = {}
        self._pins = 0                             # bumped by every sched_set_tensor_backend
        self.splits: list[Split] = []
        self._graph: Optional[CGraph] = None
        self._key = None
        self._slot = ("sched", next(_TOKENS))      # this scheduler's entry in gf.cache
        self._generation = 0                       # bumped by reset: older entries are stale

    # --- assignment ------------------------------------------------------------------------
    def _buffer_owners(self) -> dict:
        """Backend name -> the first backend of that name (a buffer's `backend` tag names its
        owner): resolved once per plan, not per source."""
        owners = {}
        for b in reversed(self.backends):
            owners[b.name] = b
        self._owners = owners
        return owners

    def _backend_of_buffer(self, t: Tensor):
        owners = self.__dict__.get("_owners")
        return buffer_owner(t, owners if owners is not None else self._buffer_owners())

    def _support(self, gf: CGraph):
        """supported(b, i, node): does backend b run gf.nodes[i]? A backend with a whole-graph
        answer (Backend.supports_graph) is asked once for the graph, the first time one of
        its answers is needed; the others per node (supports_op), as before."""
        tables = {}

        def supported(b, i, node):
            tab = tables.get(b, _ASK)
            if tab is _ASK:
                tab = tables[b] = b.supports_graph(gf)
            return tab[i] if tab is not None else b.supports_op(node)
        supported.tables = tables       # (_assign inlines it in its per-node loop)
        return supported

    def _sole_backend(self, gf: CGraph, owners: dict):
        """The backend _assign's walk would give every node, found without walking, or None
        (walk): the first backend, when it supports the whole graph (one supports_graph
        answer), no pin names another and no source lives in a buffer named for another.
        The sources' buffers are the allocator's note (HELD), so gf is allocated here first
        (nothing is unsupported then: allocating before the walk changes nothing)."""
        be = self.backends[0]
        if not gf.nodes or any(b is not be for b in self.pinned.values()):
            return None
        tab = be.supports_graph(gf)
        if tab is None or False in tab:
            return None
        alloc_graph(gf)
        held = gf.cache.get(HELD)
        if held is None or held[0] != allocated_mark(gf):
            return None
        for b in held[1]:
            o = owners.get(b.backend) if b.backend is not None else None
            if o is not None and o is not be:
                return None
        return be

    def _assign(self, gf: CGraph) -> None:
        owners = self._buffer_owners()
        be = self._sole_backend(gf, owners)
        if be is not None:
            self.assignment = dict.fromkeys(map(id, gf.nodes), be)
            return
        self.assignment = a = {}
        pinned = self.pinned
        backends = self.backends
        supported = self._support(gf)
        tables = supported.tables
        unsupported = []
        prev = None
        for i, node in enumerate(gf.nodes):
            nid = id(node)
            op = node.op
            if nid in pinned:
                be = pinned[nid]
            elif op is not None and op.view:
                src = node.src[0]
                be = a.get(id(src)) or buffer_owner(src, owners) or prev or backends[0]
            else:
                be = None
                # weights first: a source that lives in a backend's buffer pulls the node there
                # (buffer_owner, inline: the loop runs per source of every node)
                for s in filter(None, node.src):
                    r = s.view_src if s.view_src is not None else s
                    buf = r._buffer
                    if buf is not None and buf.backend is not None:
                        wb = owners.get(buf.backend)
                        if wb is not None and supported(wb, i, node):
                            be = wb
                            break
                if be is None:
                    for b in backends:
                        tab = tables.get(b, _ASK)
                        if tab is _ASK:
                            tab = tables[b] = b.supports_graph(gf)
                        if tab[i] if tab is not None else b.supports_op(node):
                            be = b
                            break
                    else:
                        unsupported.append((i, node))
                        continue
            a[nid] = be
            prev = be
        if unsupported:
            lines = [f"  node {i} {n.op_name} {describe(n)} srcs "
                     f"{[describe(s) for s in n.src if s is not None]}" for i, n in unsupported]
            raise UnsupportedError(
                f"no backend among [{', '.join(b.name for b in self.backends)}] supports "
                f"{len(unsupported)} node(s):\n" + "\n".join(lines))

    def _one_split(self, gf: CGraph, owners: dict) -> Optional[Split]:
        """The split _split's walk would make when every node runs on one backend and no
        source lives in a buffer named for another (the allocator noted the sources'
        buffers, HELD): all the nodes, no inputs. None when that does not hold or is not
        known (the walk then)."""
        nodes = gf.nodes
        held = gf.cache.get(HELD)
        if not nodes or held is None or held[0] != allocated_mark(gf):
            return None
        a = self.assignment
        be = a[id(nodes[0])]
        if any(map(is_not, map(a.__getitem__, map(id, nodes)), repeat(be))):
            return None
        for b in held[1]:
            o = owners.get(b.backend) if b.backend is not None else None
            if o is not None and o is not be:
                return None
        return Split(be, list(nodes))

    def _split(self, gf: CGraph) -> None:
        owners = self.__dict__.get("_owners") or self._buffer_owners()
        one = self._one_split(gf, owners)
        if one is not None:
            self.splits = [one]
            return
        self.splits = splits = []
        assignment = self.assignment
        producer = {}                   # id(node) -> its backend
        sp = None
        for node in gf.nodes:
            nid = id(node)
            be = assignment[nid]
            if sp is None or sp.backend is not be:
                sp = Split(be)
                splits.append(sp)
                copies = sp.copies
            for s in filter(None, node.src):
                if s is node:
                    continue
                src_be = producer.get(id(s))
                if src_be is None:      # not made here: where its memory lives, if anywhere
                    src_be = buffer_owner(s, owners)
                if src_be is not None and src_be is not be and id(s) not in copies:
                    sp.inputs.append(s)
                    copies[id(s)] = None
            sp.nodes.append(node)
            producer[nid] = be

    def _build_shadow_graphs(self, gf: CGraph) -> None:
        """Each split's graph: its own nodes when it copies nothing in (a graph made of gf's
        nodes: PART_OF tells its backend, which may reuse what it kept for gf), else copies
        of its inputs and shadow nodes that read them (PART_OF too: a shadow node of its
        node's signature names it as its twin). Every tensor of them has data (gf was
        allocated, copies get their own buffers): marked, so no backend walks them."""
        for sp in self.splits:
            shadow_of: dict[int, Tensor] = {}
            for s in sp.inputs:
                c = Tensor(None, s.type, s.ne)
                c.name = f"{s.name}#{sp.backend.name}"[:63]
                c.set_buffer(Buffer(max(nbytes(c), 1), name="sched copy",
                                    backend=sp.backend.name), 0)
                sp.copies[id(s)] = c
                shadow_of[id(s)] = c
            g = CGraph(max(1, len(sp.nodes)))
            if not sp.inputs:
                g.nodes = sp.nodes
                g.version = gf.version
                g.cache[PART_OF] = weakref.ref(gf)    # no cycle: gf.cache holds g
                sp.graph = g
                continue
            for node in sp.nodes:
                sh = Tensor(None, node.type, node.ne, nb=node.nb,
                            view_src=node.view_src if node.view_src is not None else node,
                            view_offs=node.view_offs if node.view_src is not None else 0)
                sh.op, sh.op_params, sh.flags, sh.name = node.op, node.op_params, node.flags, node.name
                sh.src = [shadow_of.get(id(s), s) if s is not None else None for s in node.src]
                if node.src and node.src[1] is node:     # ggml_cast writes into itself
                    sh.src[1] = sh
                # the node's signature when every copy it reads has its original's strides
                # (a copy is contiguous): its backend may take the node's kept verdicts
                if all(c is s or c is sh or c.nb == s.nb for c, s in zip(sh.src, node.src)
                       if s is not None):
                    sh.twin = node
                shadow_of[id(node)] = sh
                g.nodes.append(sh)
            g.version = 1
            g.cache[PART_OF] = weakref.ref(gf)
            sp.graph = g
        for sp in self.splits:           # after the copies' buffers (each bumps ALLOC_EPOCH)
            mark_allocated(sp.graph)

    def _copy_inputs(self, sp: Split) -> None:
        """Byte-exact copy of each input (same type; the copy is contiguous)."""
        for s in sp.inputs:
            c = sp.copies[id(s)]
            if TRAITS[s.type].blck_size == 1:
                data.strided(c)[...] = data.strided(s)
            else:
                data.row_bytes(c)[...] = data.row_bytes(s)

    # --- public ----------------------------------------------------------------------------
    def alloc_graph(self, gf: CGraph) -> None:
        # (support_epoch: a backend's support answers may change at run time, e.g. the Numba
        # backend's after a kernel table or verdict edit)
        key = (gf.version, _tensor_mod.PARAMS_EPOCH,
               tuple([b.support_epoch() for b in self.backends]), self._generation, self._pins)
        if gf is self._graph and key == self._key:
            return
        kept = gf.cache.get(self._slot)
        if kept is not None and kept[0] == key:
            _, self.assignment, self.splits = kept
        else:
            self._assign(gf)      # raises before any compute when a node is unsupported
            alloc_graph(gf)
            self._split(gf)
            self._build_shadow_graphs(gf)
            gf.cache[self._slot] = (key, self.assignment, self.splits)
        self._key = key
        self._graph = gf

    def release(self) -> None:
        """Drop the references to the current graph (its plan stays cached on the graph)."""
        self._key = None
        self._graph = None
        self.splits = []
        self.assignment = {}

    def supports_op(self, node: Tensor) -> bool:
        return any(b.supports_op(node) for b in self.backends)

    def set_n_threads(self, n_threads: int) -> None:
        for b in self.backends:
            b.set_n_threads(n_threads)

    def graph_compute(self, gf: CGraph, eval_cb=None) -> None:
        """Compute gf over the backends; `eval_cb` (for this call) replaces the scheduler's
        own callback (sched_set_eval_callback)."""
        eval_cb = eval_cb if eval_cb is not None else self.eval_cb
        self.alloc_graph(gf)
        for sp in self.splits:
            self._copy_inputs(sp)
            stopped = []
            cb = None
            if eval_cb is not None:
                def cb(t, ask, _stopped=stopped):
                    r = eval_cb(t, ask)
                    if not ask and not r:
                        _stopped.append(t)
                    return r
            sp.backend.graph_compute(sp.graph, cb)
            if stopped:
                break

    @property
    def n_splits(self) -> int:
        return len(self.splits)

    @property
    def n_copies(self) -> int:
        return sum(len(sp.inputs) for sp in self.splits)

    def tensor_backend(self, node: Tensor):
        return self.assignment.get(id(node))

    def describe(self) -> str:
        """The assignment, printed like GGML_SCHED_DEBUG."""
        out = []
        for k, sp in enumerate(self.splits):
            ins = ", ".join(f"{s.name} ({_fmt_size(nbytes(s))})" for s in sp.inputs)
            out.append(f"## SPLIT #{k}: {sp.backend.name} # {len(sp.inputs)} inputs: [{ins}]")
            for node in sp.nodes:
                srcs = " ".join(
                    f"{s.name}{'*' if id(s) in sp.copies else ''}" for s in node.src if s is not None)
                out.append(f"node #{self._graph.nodes.index(node):3d} ({node.op_name:>10.10}): "
                           f"{node.name:>20.20} ({_fmt_size(nbytes(node)):>5}) "
                           f"[{sp.backend.name:>9}]: {srcs}")
        return "\n".join(out)

    def reset(self) -> None:
        self.release()
        self._generation += 1

    def __repr__(self) -> str:
        return f"<sched [{', '.join(b.name for b in self.backends)}]>"


# ggml-style free functions

def sched_new(backends, eval_cb=None) -> Sched:
    return Sched(backends, eval_cb)


def sched_graph_compute(sched: Sched, gf: CGraph) -> int:
    sched.graph_compute(gf)
    return 0


def sched_alloc_graph(sched: Sched, gf: CGraph) -> bool:
    sched.alloc_graph(gf)
    return True


def sched_reset(sched: Sched) -> None:
    sched.reset()


def sched_get_n_splits(sched: Sched) -> int:
    return sched.n_splits


def sched_get_n_copies(sched: Sched) -> int:
    return sched.n_copies


def sched_get_tensor_backend(sched: Sched, node: Tensor):
    return sched.tensor_backend(node)


def sched_set_tensor_backend(sched: Sched, node: Tensor, backend) -> None:
    sched.pinned[id(node)] = backend
    sched._pins += 1
    sched._key = None


def sched_set_eval_callback(sched: Sched, eval_cb) -> None:
    sched.eval_cb = eval_cb


def sched_print_assignments(sched: Sched) -> str:
    s = sched.describe()
    print(s)
    return s
