"""Running graphs: backend constructors and ggml's compute entry points.

The state here is this module's own: the process-wide CPU backend per thread count
(`cpu_backend_for`, shared by graph_compute and graph_compute_with_ctx) and
graph_compute_with_ctx's scheduler over it per thread count. Nothing below this module
reads or writes them.
"""
from __future__ import annotations

from typing import Optional

from .backends.base import Backend
from .backends.base import EvalCallback
from .backends.base import default_n_threads
from .backends.numba_cpu.plan import CPlan
from .backends.numba_cpu.plan import check_threads
from .backends.numba_cpu.plan import graph_plan
from .backends.reference.backend import ReferenceBackend
from .errors import GGMLError
from .graph import CGraph
from .sched.scheduler import Sched
from .sched.scheduler import sched_alloc_graph
from .sched.scheduler import sched_get_n_copies
from .sched.scheduler import sched_get_n_splits
from .sched.scheduler import sched_get_tensor_backend
from .sched.scheduler import sched_graph_compute
from .sched.scheduler import sched_new
from .sched.scheduler import sched_print_assignments
from .sched.scheduler import sched_reset
from .sched.scheduler import sched_set_eval_callback
from .sched.scheduler import sched_set_tensor_backend

__all__ = ["backend_reference_init", "backend_numba_init", "backend_cpu_init",
           "backend_graph_compute", "backend_supports_op", "backend_name", "backend_free",
           "backend_set_n_threads", "graph_compute_with_ctx", "default_n_threads",
           "backend_init_by_name", "BACKENDS",
           "Sched", "sched_new", "sched_graph_compute", "sched_alloc_graph", "sched_reset",
           "sched_get_n_splits", "sched_get_n_copies", "sched_get_tensor_backend",
           "sched_set_tensor_backend", "sched_set_eval_callback", "sched_print_assignments",
           "CPlan", "graph_plan", "graph_compute"]


def backend_reference_init() -> Backend:
    return ReferenceBackend()


def backend_numba_init(n_threads: Optional[int] = None) -> Backend:
    from .backends.numba_cpu.backend import NumbaBackend
    return NumbaBackend(n_threads or default_n_threads())


def backend_cpu_init(n_threads: Optional[int] = None) -> Backend:
    """The fast CPU backend (Numba), as ggml_backend_cpu_init."""
    return backend_numba_init(n_threads)


BACKENDS = {"reference": backend_reference_init, "numba": backend_numba_init,
            "cpu": backend_cpu_init}


def backend_init_by_name(name: str, n_threads: Optional[int] = None) -> Backend:
    try:
        make = BACKENDS[name.lower()]
    except KeyError:
        raise GGMLError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
    return make() if make is backend_reference_init else make(n_threads)


def backend_name(backend: Backend) -> str:
    return backend.name


def backend_supports_op(backend: Backend, node) -> bool:
    return backend.supports_op(node)


def backend_set_n_threads(backend: Backend, n_threads: int) -> None:
    backend.set_n_threads(n_threads)


def backend_free(backend: Backend) -> None:
    backend.free()


def backend_graph_compute(backend: Backend, gf: CGraph, eval_cb: Optional[EvalCallback] = None):
    backend.graph_compute(gf, eval_cb)
    return 0   # GGML_STATUS_SUCCESS; failures raise


_CPU_BACKENDS: dict = {}      # n_threads -> the process-wide CPU (Numba) backend
_CTX_SCHEDS: dict = {}        # n_threads -> graph_compute_with_ctx's scheduler over it


def cpu_backend_for(n_threads: int) -> Backend:
    """The process-wide CPU backend for n_threads (one worker pool per thread count, shared
    by graph_compute and graph_compute_with_ctx)."""
    be = _CPU_BACKENDS.get(n_threads)
    if be is None:
        be = _CPU_BACKENDS[n_threads] = backend_cpu_init(n_threads)
    return be


def graph_compute_with_ctx(ctx, gf: CGraph, n_threads: Optional[int] = None):
    """ggml_graph_compute_with_ctx: compute on the CPU backend (a pool kept per thread count)."""
    n = n_threads or default_n_threads()
    sched = _CTX_SCHEDS.get(n)
    if sched is None:
        # the CPU backend first; the reference backend takes any node it has no kernel for
        sched = _CTX_SCHEDS[n] = Sched([cpu_backend_for(n), backend_reference_init()])
    try:
        sched.graph_compute(gf)
    finally:
        sched.release()      # the graph's plan stays on gf.cache; nothing here keeps gf alive
    return 0


def graph_compute(gf: CGraph, cplan: Optional[CPlan] = None) -> int:
    """ggml_graph_compute: run gf as planned (plans for the default thread count if None) on
    the process-wide CPU backend of cplan.n_threads; graph_compute_with_ctx's scheduler over
    that backend is left as it is."""
    if cplan is None:
        cplan = graph_plan(gf)
    # the backend checks the rest of the plan (check_plan) when it is new for gf
    be = _CPU_BACKENDS.get(cplan.n_threads) or \
        cpu_backend_for(check_threads("graph_compute", cplan.n_threads))
    be.compute_planned(gf, cplan)
    return 0   # GGML_STATUS_SUCCESS; failures raise
