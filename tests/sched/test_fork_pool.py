"""A forked child (multiprocessing 'fork', as ggml_lib.run_isolated uses) inherits a Numba
backend whose worker threads stayed in the parent: computing there must start new threads,
not wait forever at the first barrier (found as a hang in test_autodiff under the full suite)."""
import multiprocessing as mp

import numpy as np

import pyggml as gg


def _add_graph_sum(backend):
    ctx = gg.init(mem_size=16 << 20)
    a = gg.from_numpy(ctx, np.arange(4096, dtype=np.float32).reshape(64, 64))
    y = gg.add(ctx, a, a)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    backend.graph_compute(gf)
    return float(gg.to_numpy(y).sum())


def _child(backend, q):
    q.put(_add_graph_sum(backend))


def test_a_forked_child_computes_with_the_parents_pool():
    backend = gg.backend_cpu_init(n_threads=2) if hasattr(gg, "backend_cpu_init") else None
    if backend is None:
        from pyggml.backends.numba_cpu.backend import NumbaBackend
        backend = NumbaBackend(2)
    want = _add_graph_sum(backend)                 # the parent's worker threads are running
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(backend, q))
    p.start()
    p.join(120)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "the forked child hung in the worker pool"
    assert p.exitcode == 0 and q.get(timeout=5) == want
