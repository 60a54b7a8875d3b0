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
from ..base import default_n_threads
from ..base import is_computed
from .verdicts import node_sig
from .verdicts import plan_facts

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
    sig = node_sig(node)            # what the kernel's rules may read (kernels/__init__.py)
    if k is None and kernels is not None:
        entry = kernels.get(node.op.name)
        k = entry.select(sig) if entry is not None else None
    if k is None:
        return n_threads, 0
    return plan_facts(k, sig, n_threads)


def graph_plan(gf: CGraph, n_threads: Optional[int] = None, backend=None,
               selected: Optional[list] = None) -> CPlan:
    """ggml_graph_plan: per-node n_tasks and the work buffer size for n_threads.
    `selected`: the backend's kernel variant per node of gf, when the caller has them (the
    Numba backend's select() also carries each node's (n_tasks, work_size) for its thread
    count, from its memo of verdicts by node signature: then nothing is asked again)."""
    if n_threads is None:
        n_threads = default_n_threads()
    n_threads = check_threads("graph_plan", n_threads)
    facts = getattr(selected, "facts", None)
    if facts is not None and getattr(selected, "n_threads", None) == n_threads:
        n_tasks = [0 if f is None else f[1] for f in facts]
        work = max([f[2] for f in facts if f is not None], default=0)
    else:
        kernels = _kernel_table(backend)
        n_tasks = []
        work = 0
        for i, node in enumerate(gf.nodes):
            k = selected[i] if selected else None
            # select() gives a kernel exactly for the nodes that compute
            if (k is None) if selected else not is_computed(node):
                n_tasks.append(0)
                continue
            nt, ws = node_plan(node, n_threads, kernels, k)
            n_tasks.append(nt)
            if ws > work:
                work = ws
    if work > 0:
        work += CACHE_LINE * n_threads
    return CPlan(n_threads, n_tasks, work)


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
