"""Running graphs: backend constructors and ggml's compute entry points."""
from __future__ import annotations

import os
from typing import Optional

from .backends.base import Backend, EvalCallback
from .backends.reference.backend import ReferenceBackend
from .errors import GGMLError
from .graph import CGraph

__all__ = ["backend_reference_init", "backend_numba_init", "backend_cpu_init",
           "backend_graph_compute", "backend_supports_op", "backend_name", "backend_free",
           "backend_set_n_threads", "graph_compute_with_ctx", "default_n_threads",
           "backend_init_by_name", "BACKENDS"]


def default_n_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


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


_CTX_BACKENDS: dict = {}


def graph_compute_with_ctx(ctx, gf: CGraph, n_threads: Optional[int] = None):
    """ggml_graph_compute_with_ctx: compute on the CPU backend (a pool kept per thread count)."""
    n = n_threads or default_n_threads()
    sched = _CTX_BACKENDS.get(n)
    if sched is None:
        # the CPU backend first; the reference backend takes any node it has no kernel for
        sched = Sched([backend_cpu_init(n), backend_reference_init()])
        _CTX_BACKENDS[n] = sched
    sched.graph_compute(gf)
    return 0


from .sched.scheduler import (Sched, sched_new, sched_graph_compute, sched_alloc_graph,  # noqa: E402
                              sched_reset, sched_get_n_splits, sched_get_n_copies,
                              sched_get_tensor_backend, sched_set_tensor_backend,
                              sched_set_eval_callback, sched_print_assignments)

__all__ += ["Sched", "sched_new", "sched_graph_compute", "sched_alloc_graph", "sched_reset",
            "sched_get_n_splits", "sched_get_n_copies", "sched_get_tensor_backend",
            "sched_set_tensor_backend", "sched_set_eval_callback", "sched_print_assignments"]


from .sched.plan import CPlan, graph_plan, graph_compute  # noqa: E402

__all__ += ["CPlan", "graph_plan", "graph_compute"]
