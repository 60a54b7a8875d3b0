"""A group of Ray workers serving one model: the Ray connection, the workers, how the model
and its KV cache are placed on them (layer or context split), the scheduler over them.

Without an address a local Ray cluster is started (and shut down by `shutdown()`); with one
(`ray://host:port` or `host:port`, or "auto") the workers go to that cluster and it is left
running. `shutdown()` (also when an unclosed group is collected) stops the workers the group
holds: on a shared cluster closing a model frees what it started. Parking is the exception:
where the cluster is pyggml's own (started by another live group of this process) or after
`keep_workers()` (an explicit, process-wide opt-in: tests, notebooks that open many models),
a group's shutdown leaves its live workers parked, clean (nothing resident), for the next
group of this process to take instead of starting new processes (a worker process's start
and its kernel loads cost seconds); parked workers end with the Ray connection.

pyggml.llm.Llama(workers=N, split=...) uses this; so can any decoder:

    group = WorkerGroup(2, "layer")
    sched = group.scheduler(model, gg.backend_cpu_init(2))
    cache = group.place_cache(F16KVCache(...))        # or group.make_cache(...) for context
    Decoder(model, cache, sched).step(ids)
"""
from __future__ import annotations

import atexit
from typing import Optional

from ..errors import GGMLError
from ..types import GGMLType
from .backend import DEFAULT_TIMEOUT
from .backend import RayBackend
from .backend import _ray
from .context_mixed import MixedShardedKVCache
from .context_split import ShardedKVCache
from .layer_split import cache_layer_tensors
from .layer_split import layer_ranges
from .layer_split import place_cache
from .layer_split import place_weights
from .sched import DistributedSched

SPLITS = ("layer", "context")
LOCAL_CPUS = 2                  # CPUs a local cluster advertises (the workers ask for none)
_PARKED: list = []              # (Ray session, RayBackend): clean live workers to reuse
_OWNED: set = set()             # Ray sessions a live group of this process started
_keep = False                   # keep_workers(): park on any cluster


def keep_workers(on: bool = True) -> bool:
    """Opt in (on=True) or out of parking the workers of groups shut down on a cluster pyggml
    did not start, for this process's next groups (module doc). Returns the previous setting."""
    global _keep
    prev, _keep = _keep, bool(on)
    return prev


def _session() -> str:
    return _ray().get_runtime_context().get_session_name()


def _take_parked(index: int, n_threads: int, timeout: float) -> Optional[RayBackend]:
    """A parked worker of this Ray session with the same thread count, renamed ray:index."""
    here = _session()
    _PARKED[:] = [(s, be) for s, be in _PARKED if s == here]    # earlier sessions' are gone
    for k, (_, be) in enumerate(_PARKED):
        if be._n_threads == n_threads and be.dead is None:
            del _PARKED[k]
            be.rename(index, timeout)
            return be
    return None


class WorkerGroup:
    def __init__(self, n_workers: int, split: str = "layer", address: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, n_threads: int = 1):
        if split not in SPLITS:
            raise GGMLError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if n_workers < 1:
            raise GGMLError(f"workers must be >= 1, got {n_workers}")
        ray = _ray()
        self.split = split
        self.started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, log_to_driver=False,
                         object_store_memory=512 << 20)
                self.started = True
                _OWNED.add(_session())
                atexit.register(self.shutdown)      # a CLI that never closes its model
        self.workers: list[RayBackend] = []
        try:
            for i in range(n_workers):
                self.workers.append(_take_parked(i, n_threads, timeout) or
                                    RayBackend(i, n_threads=n_threads, timeout=timeout))
        except BaseException:
            self.shutdown()
            raise
        self.ranges = None
        self._cache = None

    def scheduler(self, model, driver_backend) -> DistributedSched:
        """The scheduler for this split; layer split places the model's weights first."""
        import pyggml as gg
        backends = [driver_backend, *self.workers, gg.backend_reference_init()]
        if self.split == "layer":
            self.ranges = layer_ranges(model.cfg.n_layer, len(self.workers))
            place_weights(model.w, self.ranges, self.workers, driver_backend.name)
        return DistributedSched(backends, follow=self.split == "layer")

    def place_cache(self, cache):
        """Layer split: each layer's stores go to its worker (a previous cache is released)."""
        self._release_cache()
        if self.ranges is None:
            raise GGMLError("WorkerGroup.place_cache: call scheduler(model, ...) first")
        place_cache(cache, self.ranges, self.workers)
        self._cache = cache
        return cache

    def make_cache(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                   type=GGMLType.F16, mixed: bool = False, hot_tokens: int = 256,
                   max_batch: int = 64) -> ShardedKVCache:
        """Context split: a cache of one token-range shard per worker, each in `type`; mixed:
        the newest `hot_tokens` in an F16 ring on worker 0, each shard's older tokens in
        `type` (context_mixed.py)."""
        self._release_cache()
        n = len(self.workers)
        if mixed:
            cache = MixedShardedKVCache(n_layer, n_head_kv, head_dim, n_ctx, n, hot_tokens,
                                        type, max_batch)
        else:
            cache = ShardedKVCache(n_layer, n_head_kv, head_dim, n_ctx, n, type)
        for w, be in enumerate(self.workers):
            be.adopt(cache.shard_tensors(w), upload=False)
        self._cache = cache
        return cache

    def _release_cache(self) -> None:
        c = self._cache
        if c is None:
            return
        for w, be in enumerate(self.workers):
            if isinstance(c, ShardedKVCache):
                be.release(c.shard_tensors(w))
            else:
                be.release([t for il in range(c.n_layer) for t in cache_layer_tensors(c, il)])
        self._cache = None

    def attach(self, i: int) -> None:
        """A new worker in place of worker i (dead or killed): resident tensors uploaded again.
        Its KV cache comes back empty: the caller must start its context over."""
        be = self.workers[i]
        be.kill()
        be.attach()

    def shutdown(self) -> None:
        """Stop the workers (park them where the module doc says) and the local Ray cluster
        if this group started it."""
        self._cache = None
        ray = _ray()
        session = _session() if ray.is_initialized() else None
        park = not self.started and session is not None and (_keep or session in _OWNED)
        for be in self.workers:
            if park and be.park():
                _PARKED.append((session, be))
            else:
                be.kill()
        self.workers = []
        if self.started:
            _OWNED.discard(session)
            _PARKED.clear()
            ray.shutdown()
            self.started = False

    def __del__(self):
        if getattr(self, "workers", None):      # dropped unclosed: free what it holds
            try:
                self.shutdown()
            except Exception:                   # interpreter exit: Ray may be gone already
                pass

    def __repr__(self) -> str:
        return f"WorkerGroup({self.split}, {self.workers})"
