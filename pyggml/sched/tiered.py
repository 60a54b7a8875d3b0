"""Tiered execution, the way JIT runtimes start: a scheduler over [Numba, fast reference]
whose Numba side takes only the nodes whose kernel is ready in this process.

With an empty kernel cache, the first graph's cold kernels go to background worker
processes (warmup_bg.py) and its nodes run on the NumPy fast reference
(backends/reference/fast.py: dequantize-once weights + BLAS, the Numba kernels' activation
rounding), so the first token does not wait for minutes of compiling. Before each graph the
scheduler loads the kernels that landed since the last one; when any did, every graph is
re-planned, and the nodes they run move to Numba (between graphs, never inside one). Once
everything landed, the plan is the plain [Numba, reference] one.

With hold=True and an empty disk cache (warmup_bg.disk_cache_empty: nothing can load, so the
first graphs run on the fast reference whatever happens), the Numba side waits for
`start_compiling()`: Numba and the kernel registry are not even imported here until then
(~1.1 s of the first token's CPU on the 2-core box), and the commands call it once their
first token is out. The niced workers start at once all the same (their own Numba import and
the executor loop, which is surely cold, run on the other core). A warm or partly warm cache
starts at once, as without hold.

PYGGML_TIERED=0 (or the commands' --no-tiered) turns it off: `tiered_enabled()`. At exit the
commands leave the kernels still compiling to a detached compiler (`close(detach=True)`) and
exit at once; --wait-compile or PYGGML_DETACH_COMPILE=0 waits for them: `detach_enabled()`.
"""
from __future__ import annotations

import os
from typing import Callable
from typing import Optional

from ..backends.base import Backend
from ..backends.base import is_computed
from ..backends.numba_cpu.warmup import EXECUTOR
from ..backends.numba_cpu.warmup import graph_kernels
from ..backends.reference.fast import FastReferenceBackend
from .scheduler import Sched


def _switch_on(name: str) -> bool:
    """An on/off environment switch, on unless set to 0 / no / off / false."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "no", "off", "false")


def tiered_enabled(flag: Optional[bool] = None) -> bool:
    """A command's --no-tiered (flag False) wins; else PYGGML_TIERED (default on)."""
    if flag is not None:
        return flag
    return _switch_on("PYGGML_TIERED")


def detach_enabled(wait_compile: bool = False) -> bool:
    """Whether a command exits leaving its background compile to a detached compiler: not
    with --wait-compile (wait_compile True), else PYGGML_DETACH_COMPILE (default on)."""
    return not wait_compile and _switch_on("PYGGML_DETACH_COMPILE")


class ReadyKernels(Backend):
    """The Numba backend as the scheduler sees it in tiered mode: it supports a node only when
    the node's kernel and the executor loop are ready in this process (keys in `ready`).
    `numba` is the backend or a function making it: made at the first graph that needs it, so
    its thread pool does not compile the executor loop here while a worker compiles it."""

    name = "numba"

    def __init__(self, numba, ready: set):
        self.inner = None if callable(numba) and not isinstance(numba, Backend) else numba
        self.make = numba if self.inner is None else None
        if self.inner is not None:
            self.name = self.inner.name
        self.ready = ready
        self.kernels = getattr(self.inner, "kernels", None)
        self.graph_ready = None      # whole-graph policy: the graph being planned is all ready
        self._lookup = None

    def backend(self) -> Backend:
        if self.inner is None:
            self.inner = self.make()
        return self.inner

    def supports_op(self, node) -> bool:
        if not is_computed(node):
            return True
        if EXECUTOR not in self.ready or self.graph_ready is False:
            return False
        if self._lookup is None:               # the registry imports Numba: only once ready
            from ..backends.numba_cpu.kernels import lookup
            self._lookup = lookup
        k = self._lookup(node, self.kernels)
        return k is not None and k.key in self.ready

    def graph_compute(self, gf, eval_cb=None) -> None:
        if not any(is_computed(nd) for nd in gf.nodes):     # views only: nothing to run
            self.alloc_graph(gf)
            return
        self.backend().graph_compute(gf, eval_cb)

    def set_n_threads(self, n_threads: int) -> None:
        if self.inner is not None:
            self.inner.set_n_threads(n_threads)

    def free(self) -> None:
        if self.inner is not None:
            self.inner.free()


class TieredSched(Sched):
    """Sched([numba, fast reference]) that hands nodes to Numba as their kernels land.

    `numba`: the Numba backend, or a function that makes it (see ReadyKernels). `warmup` is
    the background compiler (a BackgroundWarmup; made from jobs/log when None).

    `per_node=False` (the default) moves a graph to Numba only when every kernel it runs is
    ready: a mixed plan cuts a decode graph into a split per switch (121 with ROPE alone on
    NumPy, 362 with MUL_MAT) and each costs copies and an executor hand-off, so SmolLM2's
    decode step took 661 (no ROPE) and 1687 (no MUL_MAT) ms of CPU against 165 all on the
    fast reference and 114 all on Numba (same process, load ~15). per_node=True hands over
    each node as its kernel lands.

    `hold=True`: when the disk cache is empty, nothing Numba starts (not even its import)
    until `start_compiling()`; every graph runs on the fast reference until then."""

    def __init__(self, numba, fallback: Optional[Backend] = None, warmup=None,
                 jobs: Optional[int] = None, log: Optional[Callable] = None,
                 eval_cb=None, per_node: bool = False, hold: bool = False):
        from .warmup_bg import disk_cache_empty
        self.per_node = per_node
        self.held = hold and disk_cache_empty()
        if warmup is None:
            from .warmup_bg import BackgroundWarmup
            warmup = BackgroundWarmup(jobs, log)
        self.warmup = warmup
        if self.held and hasattr(warmup, "prestart"):
            warmup.prestart()                  # workers start up and compile the executor
        self.log = log or (lambda line: None)
        self.n_switches = 0                    # re-plans because kernels landed
        self.ready: set = set()                # kernel keys (and EXECUTOR) usable here
        self._keys_slot = ("tiered-keys", id(self))     # gf.cache: the graph's kernel keys
        super().__init__([ReadyKernels(numba, self.ready), fallback or FastReferenceBackend()],
                         eval_cb)

    def _load_landed(self) -> None:
        """Load what workers finished into this process; they become ready."""
        from ..backends.numba_cpu import executor
        from ..backends.numba_cpu.kernels import find
        for key in self.warmup.landed():
            try:
                if key == EXECUTOR:
                    executor.warm_up()
                else:
                    find(key).address
            except Exception as e:              # noqa: BLE001  stays on the reference
                self.log(f"tiered: {key} not loaded: {type(e).__name__}: {e}")
                continue
            self.ready.add(key)

    def start_compiling(self) -> None:
        """End a hold: the next graph's kernels go to the background compiler."""
        self.held = False

    def alloc_graph(self, gf) -> None:
        gate = self.backends[0]
        if self.held:                          # all on the fast reference, Numba untouched
            gate.graph_ready = False
            super().alloc_graph(gf)
            return
        n = len(self.ready)
        keys = gf.cache.get(self._keys_slot)
        if keys is None:                       # a new graph: its kernels start compiling
            ks = graph_kernels([gf])
            keys = gf.cache[self._keys_slot] = frozenset(k.key for k in ks) | {EXECUTOR}
            self.ready.update(self.warmup.submit(ks))
        self._load_landed()
        if len(self.ready) != n:
            self.n_switches += 1
            self.reset()                       # every graph re-plans on its next compute
        gate.graph_ready = None if self.per_node else keys <= self.ready
        super().alloc_graph(gf)

    @property
    def pending(self) -> int:
        """Kernels still compiling in the background."""
        return self.warmup.pending

    def close(self, wait: bool = False, detach: bool = False):
        """Stop the background compiler; wait=True lets it finish the queue first (so the
        next start finds a warm cache); detach=True hands what is left to a detached compiler
        that finishes it after this process exits (warmup_bg.BackgroundWarmup.detach) and
        returns its Detached (None when nothing was left), without waiting."""
        if wait:
            self.warmup.drain()
        if detach and hasattr(self.warmup, "detach"):
            return self.warmup.detach()
        self.warmup.close()
        return None

    def free(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tiered sched [{', '.join(b.name for b in self.backends)}]>"
