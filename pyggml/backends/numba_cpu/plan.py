"""The Numba backend's planning step (ggml_graph_plan): threads per node and the size of
the shared work buffer.

`graph_plan(gf, n_threads)` asks each node's kernel (the backend's kernel table): its
`n_tasks(node, n_threads)` (how many threads share the node, clamped to 1..n_threads;
all of them when the kernel says nothing) and `work_size(node, n_threads)` (bytes of
scratch; none when it says nothing). These are backend facts, as in ggml-cpu.c: a backend
without a kernel table (the reference) plans every node on all threads with no scratch.
The graph's work buffer is the maximum over its nodes (nodes run one after the other and
share it), plus a cache line per thread as ggml adds. Views and empty results compute
nothing and are not planned (n_tasks 0).

`pyggml.graph_compute(gf, cplan)` (compute.py) runs a plan on the process-wide CPU backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Optional

import numpy as np

from ...errors import GraphError
from ...graph import CGraph
from ...tensor import nbytes
from ..base import default_n_threads
from ..base import is_computed

CACHE_LINE = 64


@dataclass
class CPlan:
    n_threads: int
    n_tasks: list = field(default_factory=list)    # per gf.nodes index; 0 = not computed
    work_size: int = 0                             # bytes of the shared work buffer
    work_data: Optional[np.ndarray] = None         # caller's buffer (ggml's cplan.work_data)

    def __repr__(self) -> str:
        return (f"CPlan(n_threads={self.n_threads}, nodes={len(self.n_tasks)}, "
                f"work_size={self.work_size})")


def _kernel_table(backend):
    """The kernel table planning asks: the backend's (None for one without kernels, such as
    the reference), the Numba backend's own when no backend is given."""
    if backend is not None:
        return getattr(backend, "kernels", None)
    from .kernels import KERNELS
    return KERNELS


def node_plan(node, n_threads: int, kernels=None, kernel=None) -> tuple[int, int]:
    """(n_tasks, work_size) of one node, by the rules of its kernel variant (all threads and
    no scratch without one). `kernel`: the variant already selected for node from `kernels`
    (saves selecting again)."""
    k = kernel
    if k is None and kernels is not None:
        entry = kernels.get(node.op.name)
        k = entry.select(node) if entry is not None else None
    nt_fn = k.n_tasks if k is not None else None
    ws_fn = k.work_size if k is not None else None
    n_tasks = int(nt_fn(node, n_threads)) if nt_fn is not None else n_threads
    n_tasks = max(1, min(n_threads, n_tasks))
    ws = int(ws_fn(node, n_threads)) if ws_fn is not None else 0
    return n_tasks, max(0, ws)


def graph_plan(gf: CGraph, n_threads: Optional[int] = None, backend=None,
               selected: Optional[list] = None) -> CPlan:
    """ggml_graph_plan: per-node n_tasks and the work buffer size for n_threads.
    `selected`: the backend's kernel variant per node of gf, when the caller has them."""
    if n_threads is None:
        n_threads = default_n_threads()
    n_threads = check_threads("graph_plan", n_threads)
    kernels = _kernel_table(backend)
    n_tasks = []
    work = 0
    for i, node in enumerate(gf.nodes):
        k = selected[i] if selected else None
        # select() gives a kernel exactly for the nodes that compute
        if (k is None) if selected else not is_computed(node):
            n_tasks.append(0)
            continue
        if k is None:
            nt, ws = node_plan(node, n_threads, kernels)
        else:                       # node_plan's rules, inlined (a call per node costs)
            fn = k.n_tasks
            nt = int(fn(node, n_threads)) if fn is not None else n_threads
            nt = 1 if nt < 1 else n_threads if nt > n_threads else nt
            fn = k.work_size
            ws = int(fn(node, n_threads)) if fn is not None else 0
        n_tasks.append(nt)
        if ws > work:
            work = ws
    if work > 0:
        work += CACHE_LINE * n_threads
    return CPlan(n_threads, n_tasks, work)


LOOKAHEAD = 6              # rows a barrier group looks at past its first (schedule)


def schedule(nodes, kernels, n_threads: int, work_addr: int = 0) -> tuple[list, np.ndarray]:
    """The order of a node table's rows and which end with a barrier: (order, sync), order a
    permutation of range(len(nodes)), sync int64 1/0 per position of order.

    ggml meets at a barrier after every node. Here a row may instead start while threads are
    still in the rows since the last barrier (its group) when neither can see the other: it
    reads no bytes the group writes, writes none the group reads or writes, and the work
    buffer is not shared across threads (only one side uses it, or both keep to per-thread
    regions of the same size: Kernel.private_work; regions start at the buffer's address or
    its first 64-byte boundary, the same only when `work_addr` is aligned). A group also
    pulls forward rows up to LOOKAHEAD places later when they are independent, in the same
    sense, of the rows they pass. In a decoder layer the q/k/v projections run as one group,
    the two ropes as one, the two cache stores as one and the gate/up projections as one (5
    of 19 barriers per layer). The last row always ends with one."""
    n = len(nodes)
    if n_threads <= 1 or n < 2:
        return list(range(n)), np.ones(n, dtype=np.int64)
    private = work_addr % 64 == 0
    spans: dict = {}                        # id(tensor) -> its byte span, made once
    info = [_access(nodes[j], kernels[j], n_threads, private, spans) for j in range(n)]
    pending = list(range(n))
    order: list = []
    sync = np.ones(n, dtype=np.int64)
    while pending:
        j = pending.pop(0)
        reads, writes, g_work = info[j]
        # what a candidate must not touch: the group's rows and the rows it passes
        seen_reads, seen_writes = list(reads), list(writes)
        order.append(j)
        idx = 0
        for _ in range(min(LOOKAHEAD, len(pending))):
            r = pending[idx]
            reads, writes, work = info[r]
            if (work == 0 or g_work == 0 or (work == g_work and work > 0)) and \
                    not _conflict(reads, writes, seen_reads, seen_writes):
                sync[len(order) - 1] = 0
                order.append(pending.pop(idx))
                g_work = g_work or work
            else:
                idx += 1
            seen_reads += reads
            seen_writes += writes
    return order, sync


def _access(node, k, n_threads: int, private: bool, spans: dict) -> tuple:
    """(byte spans read, byte spans written, work): work 0 = no work buffer, -1 = one the
    threads share (or `private` is False), else the bytes of each thread's own region."""
    reads = []
    for t in node.src:
        if t is not None:
            sp = spans.get(id(t))
            if sp is None:
                sp = spans[id(t)] = _span(t)
            reads.append(sp)
    sp = spans.get(id(node))               # made once: later rows read it as a source
    if sp is None:
        sp = spans[id(node)] = _span(node)
    writes = [sp]
    for w in node.op.writes:
        if node.src[w] is not None:
            writes.append(spans[id(node.src[w])])
    if k.private_work is not None:          # its regions' size, 0 when it uses none
        work = int(k.private_work(node, n_threads))
        if work > 0 and not private:
            work = -1
    else:                                   # may use a shared one (not asked: FA's costs)
        work = -1 if k.work_size is not None else 0
    return reads, writes, work


def _span(t) -> tuple:
    lo = t.data_ptr
    return lo, lo + nbytes(t)


def _conflict(reads: list, writes: list, seen_reads: list, seen_writes: list) -> bool:
    """Does a row with these byte spans see, or get seen by, rows with the seen ones?"""
    for lo, hi in reads:                    # reads what they write (the usual case first)
        for lo2, hi2 in seen_writes:
            if lo < hi2 and lo2 < hi:
                return True
    for lo, hi in writes:                   # writes what they write or read
        for lo2, hi2 in seen_writes:
            if lo < hi2 and lo2 < hi:
                return True
        for lo2, hi2 in seen_reads:
            if lo < hi2 and lo2 < hi:
                return True
    return False


MAX_THREADS = 512          # GGML_MAX_N_THREADS


def check_threads(what: str, n_threads) -> int:
    try:
        n = int(n_threads)
    except (TypeError, ValueError):
        raise GraphError(f"{what}: n_threads must be an integer, got {n_threads!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise GraphError(f"{what}: n_threads must be in 1..{MAX_THREADS}, got {n}")
    return n


def check_plan(gf: CGraph, cplan: CPlan) -> None:
    """A caller's plan must be one graph_plan could have made for gf (ggml_graph_compute's
    checks, with messages)."""
    check_threads("graph_compute", cplan.n_threads)
    if not (isinstance(cplan.work_size, (int, np.integer)) and cplan.work_size >= 0 and
            all(isinstance(x, (int, np.integer)) for x in cplan.n_tasks)):
        raise GraphError(f"graph_compute: the plan's work_size ({cplan.work_size!r}) and n_tasks "
                         f"must be integers (work_size >= 0); plan with graph_plan")
    if len(cplan.n_tasks) != len(gf.nodes):
        raise GraphError(f"graph_compute: the plan has {len(cplan.n_tasks)} nodes, the graph "
                         f"{len(gf.nodes)}; plan the graph again after changing it")
