"""Planning (ggml_graph_plan): threads per node and the size of the shared work buffer.

`graph_plan(gf, n_threads)` asks each node's kernel (Numba backend table) and, where the
kernel says nothing, the node's OpDef: `n_tasks(node, n_threads)` (how many threads share
the node, clamped to 1..n_threads) and `work_size(node, n_threads)` (bytes of scratch). The
graph's work buffer is the maximum over its nodes (nodes run one after the other and share
it), plus a cache line per thread as ggml adds. Views compute nothing and are not planned
(n_tasks 0).

`graph_compute(gf, cplan)` runs the planned graph on the Numba backend's pool for
cplan.n_threads (one pool per thread count, shared with graph_compute_with_ctx).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import GraphError
from ..graph import CGraph

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


def is_computed(node) -> bool:
    """Nodes a backend runs: they have an op, it is not a view, and the result is not empty
    (ggml's CPU skips empty results too: ggml_compute_forward returns on ggml_is_empty)."""
    return node.op is not None and not node.op.view and 0 not in node.ne


def _kernel_table(backend):
    if backend is not None:
        return getattr(backend, "kernels", None)
    try:
        from ..backends.numba_cpu.kernels import KERNELS
    except ImportError:            # numba missing: plan from the OpDefs alone
        return None
    return KERNELS


def node_plan(node, n_threads: int, kernels=None, kernel=None) -> tuple[int, int]:
    """(n_tasks, work_size) of one node: the kernel's rules first, then the OpDef's.
    `kernel`: the variant already selected for node from `kernels` (saves selecting again)."""
    k = kernel
    if k is None and kernels is not None:
        entry = kernels.get(node.op.name)
        k = entry.select(node) if entry is not None else None
    op = node.op
    nt_fn = k.n_tasks if k is not None and k.n_tasks is not None else op.n_tasks
    ws_fn = k.work_size if k is not None and k.work_size is not None else op.work_size
    n_tasks = int(nt_fn(node, n_threads)) if nt_fn is not None else n_threads
    n_tasks = max(1, min(n_threads, n_tasks))
    ws = int(ws_fn(node, n_threads)) if ws_fn is not None else 0
    return n_tasks, max(0, ws)


def graph_plan(gf: CGraph, n_threads: Optional[int] = None, backend=None,
               selected: Optional[list] = None) -> CPlan:
    """ggml_graph_plan: per-node n_tasks and the work buffer size for n_threads.
    `selected`: the backend's kernel variant per node of gf, when the caller has them."""
    if n_threads is None:
        from ..compute import default_n_threads
        n_threads = default_n_threads()
    n_threads = _check_threads("graph_plan", n_threads)
    kernels = _kernel_table(backend)
    n_tasks = []
    work = 0
    for i, node in enumerate(gf.nodes):
        if not is_computed(node):
            n_tasks.append(0)
            continue
        nt, ws = node_plan(node, n_threads, kernels, selected[i] if selected else None)
        n_tasks.append(nt)
        work = max(work, ws)
    if work > 0:
        work += CACHE_LINE * n_threads
    return CPlan(n_threads, n_tasks, work)


MAX_THREADS = 512          # GGML_MAX_N_THREADS


def _check_threads(what: str, n_threads) -> int:
    try:
        n = int(n_threads)
    except (TypeError, ValueError):
        raise GraphError(f"{what}: n_threads must be an integer, got {n_threads!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise GraphError(f"{what}: n_threads must be in 1..{MAX_THREADS}, got {n}")
    return n


def graph_compute(gf: CGraph, cplan: Optional[CPlan] = None) -> int:
    """ggml_graph_compute: run gf as planned (plans for the default thread count if None)."""
    if cplan is None:
        cplan = graph_plan(gf)
    _check_threads("graph_compute", cplan.n_threads)
    if not (isinstance(cplan.work_size, (int, np.integer)) and cplan.work_size >= 0 and
            all(isinstance(x, (int, np.integer)) for x in cplan.n_tasks)):
        raise GraphError(f"graph_compute: the plan's work_size ({cplan.work_size!r}) and n_tasks "
                         f"must be integers (work_size >= 0); plan with graph_plan")
    if len(cplan.n_tasks) != len(gf.nodes):
        raise GraphError(f"graph_compute: the plan has {len(cplan.n_tasks)} nodes, the graph "
                         f"{len(gf.nodes)}; plan the graph again after changing it")
    from ..compute import cpu_backend_for
    cpu_backend_for(cplan.n_threads).compute_planned(gf, cplan)
    return 0   # GGML_STATUS_SUCCESS; failures raise
