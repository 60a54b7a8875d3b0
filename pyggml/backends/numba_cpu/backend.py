"""NumbaBackend: the fast CPU backend (ggml-cpu's design in Numba).

graph_compute(gf):
  1. first time for this graph (version, thread count): check every node is supported,
     allocate missing tensor data (sched.alloc), plan (plan.py), lower to a NodeTable
     (kernel address + descriptor per node) and cache it in gf.cache;
  2. later computes only verify that no tensor moved (buffers/offsets), then run the
     executor: all threads walk the node table in nogil Numba code.
With an eval callback the same table runs in pieces so the callback sees each node it asked
for right after that node ran.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Optional

import numpy as np

from ... import tensor as _tensor_mod
from ...errors import ComputeError
from ...errors import GraphError
from ...graph import CGraph
from ...graph import gc_paused
from ...tensor import Buffer
from ...tensor import Tensor
from ..base import PART_OF
from ..base import Backend
from ..base import EvalCallback
from ..base import is_computed
from . import verdicts as _verdicts_mod
from .desc import DESC_LEN
from .desc import SCRATCH_LEN
from .desc import STATUS_LEN
from .desc import byte_spans
from .desc import int64s
from .desc import pack_table
from .desc import table_slots
from .executor import MAX_THREADS
from .executor import NodeTable
from .executor import WorkerPool
from .fusion import fuse
from .kernels import KERNELS
from .kernels import lookup
from .plan import CPlan
from .plan import check_plan
from .plan import graph_plan
from .schedule import schedule
from .verdicts import Verdicts
from .verdicts import verdicts_for

_loc = attrgetter("_buffer", "_offs")
_MISSING = object()             # _node_facts: a node the whole graph's answers do not hold


def _aligned_zeros(shape, align: int = 64) -> np.ndarray:
    n = int(np.prod(shape))
    raw = np.zeros(n + align // 8, dtype=np.int64)
    start = (-raw.ctypes.data) % align // 8
    return raw[start:start + n].reshape(shape)


def _check_work_data(cplan: CPlan) -> np.ndarray:
    """A caller's cplan.work_data: kernels write work_size bytes from its address, so it must
    be one writable, contiguous block that large (ggml's uint8_t * work_data)."""
    w = cplan.work_data
    if not isinstance(w, np.ndarray):
        raise GraphError(f"graph_compute: cplan.work_data must be a NumPy array, got "
                         f"{type(w).__name__}")
    if not (w.flags.c_contiguous and w.flags.writeable):
        raise GraphError(f"graph_compute: cplan.work_data must be writable and contiguous "
                         f"(got strides {w.strides}, writeable={w.flags.writeable}); pass "
                         f"np.zeros(cplan.work_size, np.uint8)")
    if w.nbytes < cplan.work_size:
        raise GraphError(f"graph_compute: work_data has {w.nbytes} bytes, the plan "
                         f"needs {cplan.work_size}")
    return w


class LoweredGraph(NodeTable):
    """A NodeTable plus what is needed to know it is still valid for its graph.

    `scratch` holds the nodes' scratch lines (desc.py: int64[n, SCRATCH_LEN], one 64-byte
    line per row, zero when lowered; kernels keep their cross-thread counters there).

    Descriptors hold data addresses, so the table is valid while every root tensor it reads
    or writes keeps its (buffer, offset). Checking that costs ~40-80 µs per 1,000 roots; an
    unchanged count of allocations (tensor.ALLOC_EPOCH) skips the check."""

    epoch = None
    params_epoch = None
    scratch = None              # int64[n, SCRATCH_LEN], set by lower()
    default_plan = True         # lowered with the backend's own plan (not a caller's CPlan)

    def locations(self) -> list:
        return list(map(_loc, self.roots))

    def still_valid(self, cplan: Optional[CPlan]) -> bool:
        if self.params_epoch != _tensor_mod.PARAMS_EPOCH:    # set_op_params on a computed node
            return False
        ep = _tensor_mod.ALLOC_EPOCH
        if ep != self.epoch:
            if self.locations() != self.snapshot:
                return False
            self.epoch = ep
        if cplan is None:
            return self.default_plan          # a caller's plan is not reused for the default
        # the plan it was lowered with, as it was then (a caller may edit a plan in place):
        # a plan equal to it passed check_plan, or was made by graph_plan
        n_threads, n_tasks, work_size = self.plan_copy
        if cplan.work_size != work_size or cplan.n_threads != n_threads or \
                cplan.n_tasks != n_tasks:
            return False
        return cplan.work_data is None or cplan.work_data is self.wbuf


class Selection(list):
    """select()'s kernel per node, with `facts`: per node the memo's (kernel, n_tasks,
    work_size, private_work) for `n_threads` (None where the node computes nothing)."""

    __slots__ = ("facts", "n_threads")


class NumbaBackend(Backend):
    name = "numba"
    fusion = True                 # fuse node pairs when lowering (fusion.py); read per lowering

    def __init__(self, n_threads: int = 1, kernels: Optional[dict] = None):
        n_threads = int(n_threads)
        if not 1 <= n_threads <= MAX_THREADS:
            raise GraphError(f"numba backend: n_threads must be in 1..{MAX_THREADS}, got "
                             f"{n_threads}")
        self.n_threads = n_threads
        self.kernels = KERNELS if kernels is None else kernels
        self.pool = WorkerPool(n_threads)
        self.n_lowerings = 0          # how many times a graph was lowered (tests, stats)
        self._memo: Optional[Verdicts] = None

    def verdicts(self) -> Verdicts:
        """The memo of the kernel table's verdicts by node signature (verdicts.py) for this
        backend's table and thread count."""
        v = self._memo
        if v is None or v.table is not self.kernels or v.n_threads != self.n_threads:
            v = self._memo = verdicts_for(self.kernels, self.n_threads, v)
        return v

    # --- support -------------------------------------------------------------------------
    def supports_op(self, node: Tensor) -> bool:
        if not is_computed(node):
            return True
        return self.verdicts().get(node)[0] is not None

    def set_n_threads(self, n_threads: int) -> None:
        n_threads = int(n_threads)
        if not 1 <= n_threads <= MAX_THREADS:
            raise GraphError(f"numba backend: n_threads must be in 1..{MAX_THREADS}, got "
                             f"{n_threads}")
        if n_threads != self.n_threads:
            self.pool.close()
            self.n_threads = n_threads
            self.pool = WorkerPool(n_threads)

    def free(self) -> None:
        self.pool.close()

    # --- lowering ------------------------------------------------------------------------
    def _key(self, gf: CGraph) -> tuple:
        return ("numba", id(self), gf.version, self.n_threads)

    def _node_facts(self, gf: CGraph) -> tuple:
        """(facts, supported) of gf's nodes: per node the memo's verdicts (kernel, n_tasks,
        work_size, private_work), None for a node that computes nothing, and whether it is
        supported. Kept in gf.cache for the scheduler's assignment, select, plan and lower
        to share; keyed by all they depend on (the graph's version and node count, op_params
        edits, the verdict memo: kernel table, thread count, verdicts.EPOCH), so a kept
        answer is never stale. A graph made of another's nodes (PART_OF: a scheduler's
        split) takes the kept answers of its nodes from that graph, and of its shadow nodes
        their twins' (Tensor.twin: the node each stands for, when of its signature)."""
        memo = self.verdicts()
        key = (gf.version, len(gf.nodes), _tensor_mod.PARAMS_EPOCH, _verdicts_mod.EPOCH, memo)
        slot = ("numba facts", id(self))
        kept = gf.cache.get(slot)
        if kept is not None and kept[0] == key:
            return kept[1], kept[2]
        known = None
        ref = gf.cache.get(PART_OF)
        whole = ref() if ref is not None else None
        if whole is not None:
            wk = whole.cache.get(slot)
            if wk is not None and wk[0] == (whole.version, len(whole.nodes)) + key[2:]:
                known = gf.nodes == whole.nodes or dict(zip(whole.nodes, wk[1]))
        if known is None:
            facts = memo.get_all(gf.nodes)
        elif known is True:             # the same nodes in the same order: the same answers
            facts, supported = wk[1], wk[2]
            gf.cache[slot] = (key, facts, supported)
            return facts, supported
        else:
            facts = [known.get(node, _MISSING) for node in gf.nodes]
            if _MISSING in facts:           # a split's shadow nodes: their twins' answers
                facts = [known.get(n.twin, f) if f is _MISSING and n.twin is not None and
                         n.op_params is n.twin.op_params else f
                         for n, f in zip(gf.nodes, facts)]
            if _MISSING in facts:           # nodes of its own
                new = iter(memo.get_all([n for n, f in zip(gf.nodes, facts) if f is _MISSING]))
                facts = [next(new) if f is _MISSING else f for f in facts]
        supported = [f is None or f[0] is not None for f in facts]
        gf.cache[slot] = (key, facts, supported)
        return facts, supported

    def supports_graph(self, gf: CGraph) -> Optional[list]:
        if type(self).supports_op is not NumbaBackend.supports_op:
            return None               # a subclass with its own rule: asked node by node
        return self._node_facts(gf)[1]

    def support_epoch(self) -> int:
        """verdicts.EPOCH: every kernel table or verdict edit bumps it."""
        return _verdicts_mod.EPOCH

    def select(self, gf: CGraph) -> list:
        """The kernel variant of each node of gf (None for leafs and views); raises
        UnsupportedError naming the first node no kernel supports (check_supported).
        The result's `facts` carry the plan's per-node verdicts (Selection)."""
        facts, supported = self._node_facts(gf)
        if False in supported:
            i = supported.index(False)
            raise self.unsupported_node(i, gf.nodes[i])
        out = Selection([None if f is None else f[0] for f in facts])
        out.facts = facts
        out.n_threads = self.n_threads
        return out

    def lower(self, gf: CGraph, cplan: CPlan, selected: Optional[list] = None) -> LoweredGraph:
        """Turn the planned graph into the executor's node table (kernel address + desc).
        `selected`: select(gf), when the caller has it."""
        nodes = gf.nodes
        if selected is not None:        # select() gives None exactly for nodes not computed
            rows = [i for i, k in enumerate(selected) if k is not None]
            kernels = [selected[i] for i in rows]
        else:
            rows = [i for i, n in enumerate(nodes) if is_computed(n)]
            kernels = []
            for i in rows:
                k = lookup(nodes[i], self.kernels)
                if k is None:   # check_supported ran first; a caller's plan may still differ
                    raise GraphError(f"numba backend: no kernel for node {i} {nodes[i].op_name}")
                kernels.append(k)
        status = np.zeros(STATUS_LEN, dtype=np.int64)
        if cplan.work_data is not None:
            wbuf = _check_work_data(cplan)
        else:
            wbuf = Buffer(cplan.work_size, name="work").data if cplan.work_size > 0 else None
        waddr = wbuf.ctypes.data if wbuf is not None else 0
        # each distinct tensor's slot words (address, type, ne, nb) once: fusion's overlap
        # checks, the planner's byte spans and the descriptors are all made of them
        packed = [nodes[i] for i in rows]
        words, slots, tensors = table_slots(packed)
        spans = byte_spans(words)       # each tensor's bytes: fusion's and the planner's
        # RMS_NORM + MUL pairs as one row (fusion.py); packed nodes: a fused row's FusedNode
        # (its tensors are its group's: the words stay, the rows' slot indices change)
        if self.fusion:
            rows, kernels, packed, moved, slots = fuse(nodes, rows, kernels,
                                                       (words, slots, tensors), spans)
        else:
            moved = {}
        n = len(rows)
        # rows in the planner's order (independent rows grouped between barriers); a row's
        # work regions from select's memo unless the row is fused (its kernel is another)
        facts = getattr(selected, "facts", None)
        regions = None
        if facts is not None and selected.n_threads == self.n_threads:
            regions = [facts[r][3] if node is nodes[r] else None
                       for r, node in zip(rows, packed)]
        order, sync = schedule(packed, kernels, self.n_threads, waddr, (words, slots), regions,
                               spans)
        at = order.tolist()
        rows = list(map(rows.__getitem__, at))
        kernels = list(map(kernels.__getitem__, at))
        packed = list(map(packed.__getitem__, at))
        row_nodes = list(map(nodes.__getitem__, rows))
        rows_a = int64s(rows)           # (list -> array conversions cost per item)
        wsize = cplan.work_size if wbuf is not None else 0
        scratch = _aligned_zeros((n, SCRATCH_LEN))  # a zeroed 64-byte line per node
        n_tasks = np.clip(int64s(list(map(cplan.n_tasks.__getitem__, rows))), 1,
                          self.n_threads)
        descs = pack_table(packed, rows_a, n_tasks, waddr, wsize,
                           status.ctypes.data, scratch.ctypes.data,
                           _aligned_zeros((n, DESC_LEN)),   # 64-byte rows on 64-byte bounds
                           (words, slots[order]))
        tab = LoweredGraph(row_nodes, rows, kernels, descs, n_tasks, status, wbuf, sync)
        tab.scratch = scratch          # the descriptors point into it: keep it alive
        # every root the rows read or write, once (tensors hash by identity; first-seen order)
        tab.roots = list(dict.fromkeys([t if t.view_src is None else t.view_src
                                        for t in tensors]))
        tab.epoch = _tensor_mod.ALLOC_EPOCH
        tab.params_epoch = _tensor_mod.PARAMS_EPOCH
        tab.snapshot = tab.locations()
        tab.plan_copy = (cplan.n_threads, list(cplan.n_tasks), cplan.work_size)
        # rows to run to include each graph node and all before it (eval-callback mode;
        # rows may be out of graph order, see schedule)
        pos = np.full(len(nodes), -1, dtype=np.int64)
        pos[rows_a] = np.arange(n)
        for i, j in moved.items():      # a fused norm is computed in its MUL's row
            pos[i] = pos[j]
        tab.row_end = np.maximum.accumulate(pos) + 1 if len(nodes) else pos
        self.n_lowerings += 1
        return tab

    def table(self, gf: CGraph, cplan: Optional[CPlan] = None) -> LoweredGraph:
        """The cached node table of gf (lowering it first when needed). A caller's plan is
        checked (check_plan) only when it differs from the one the kept table was made with,
        so a graph recomputed with the same plan is not validated again per call."""
        key = self._key(gf)
        tab = gf.cache.get(key)
        if tab is not None and tab.still_valid(cplan):
            return tab
        if cplan is not None:
            check_plan(gf, cplan)
        with gc_paused():
            selected = self.select(gf)       # fails before anything is allocated
            self.alloc_graph(gf)
            default = cplan is None
            if default:
                cplan = graph_plan(gf, self.n_threads, self, selected)
            elif cplan.n_threads != self.n_threads:
                raise GraphError(f"graph_compute: plan for {cplan.n_threads} threads on a "
                                 f"backend with {self.n_threads}")
            tab = self.lower(gf, cplan, selected)
        tab.default_plan = default
        for k in [k for k in gf.cache if isinstance(k, tuple) and k[:2] == key[:2]]:
            del gf.cache[k]          # older versions of this graph on this backend
        gf.cache[key] = tab
        return tab

    # --- compute -------------------------------------------------------------------------
    def graph_compute(self, gf: CGraph, eval_cb: Optional[EvalCallback] = None) -> None:
        self.compute_planned(gf, None, eval_cb)

    def compute_planned(self, gf: CGraph, cplan: Optional[CPlan] = None,
                        eval_cb: Optional[EvalCallback] = None) -> None:
        if not gf.nodes:
            return
        # table(gf, cplan) with its cache hit inline: this is the per-call floor of a kept
        # graph (each Python call costs ~0.1-0.2 µs)
        tab = gf.cache.get(("numba", id(self), gf.version, self.n_threads))
        if tab is None or cplan is not None or tab.epoch != _tensor_mod.ALLOC_EPOCH or \
                tab.params_epoch != _tensor_mod.PARAMS_EPOCH or not tab.default_plan:
            if tab is None or not tab.still_valid(cplan):     # the whole check
                tab = self.table(gf, cplan)
        if eval_cb is None:
            n = tab.n
            stop = self.pool.run(tab, 0, n)
            if stop != n:
                self._fail(tab, 0, n, stop)
            return
        done = 0
        for i, node in enumerate(gf.nodes):
            if not eval_cb(node, True):
                continue
            end = int(tab.row_end[i])
            if end > done:
                self._run(tab, done, end)
                done = end
            if not eval_cb(node, False):
                return
        if done < tab.n:
            self._run(tab, done, tab.n)

    def _run(self, tab: LoweredGraph, i0: int, i1: int) -> None:
        stop = self.pool.run(tab, i0, i1)
        if stop != i1:                  # a kernel error always stops the loop early
            self._fail(tab, i0, i1, stop)

    @staticmethod
    def _fail(tab: LoweredGraph, i0: int, i1: int, stop: int) -> None:
        err = tab.error()
        if err is not None:
            raise err
        if stop != i1:
            raise ComputeError(f"the executor stopped at row {stop} of [{i0}, {i1}) "
                               f"without an error code")

    def __repr__(self) -> str:
        return f"<backend numba, {self.n_threads} threads>"


def backend_numba_init(n_threads: int = 1) -> NumbaBackend:
    return NumbaBackend(n_threads)
