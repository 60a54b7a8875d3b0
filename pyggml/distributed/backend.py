"""RayBackend: a backend whose buffers and compute live in a Ray actor (ggml's RPC backend,
on Ray instead of a home-made protocol).

The driver side is a `Backend` like any other (name, supports_op, graph_compute), so a
scheduler splits graphs across it and local backends. Tensors `adopt`ed by it (weights,
its layers' or its shard's KV cache) are re-homed into buffers tagged with its name (the
scheduler sends nodes that read them here) and uploaded once; their driver copies are never
read again. Each subgraph the scheduler hands it is described once (worker.py) and then
computed with only its inputs' bytes sent (Ray's object store carries them; NumPy arrays
travel zero-copy); the roots other splits read come back and are written into the driver's
memory of those tensors, so the scheduler's copies read fresh data.

Every call waits at most `timeout` seconds: a dead worker is a WorkerDiedError, a silent one
a WorkerTimeoutError (the worker is killed), and the backend refuses further work until
`attach()` gives it a new worker (its resident tensors are uploaded again; a KV cache comes
back zeroed, so the caller must start its context over)."""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from ..backends.base import Backend
from ..errors import GraphError
from ..tensor import Buffer
from ..tensor import Tensor
from ..tensor import nbytes
from .errors import RayUnavailableError
from .errors import WorkerDiedError
from .errors import WorkerTimeoutError
from .worker import MISSING
from .worker import Worker
from .worker import root_bytes

DEFAULT_TIMEOUT = 120.0          # seconds a call may take (a first call loads kernels)
STARTUP_TIMEOUT = 60.0           # at least this long for a new worker process to answer
_KEYS = itertools.count(1)
_GRAPH_KEYS = itertools.count(1)
EXPORTS = "ray exports"          # CGraph.cache entry: roots a split must send back


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(f"pyggml.distributed needs Ray ({e}); install it with "
                                  f"pip install 'pyggml[distributed]'") from None
    return ray


def _root(t: Tensor) -> Tensor:
    return t.view_src if t.view_src is not None else t


class RayBackend(Backend):
    def __init__(self, index: int, n_threads: int = 1, timeout: float = DEFAULT_TIMEOUT,
                 backend: str = "numba", actor_options: Optional[dict] = None):
        self.index = index
        self.name = f"ray:{index}"
        self.timeout = float(timeout)
        self._n_threads, self._kind = n_threads, backend
        self._actor_options = dict(actor_options or {})
        self._resident: dict[int, tuple] = {}     # id(root) -> (key, root, upload)
        self._slot = ("ray", id(self))            # this backend's entry in a graph's cache
        self._sent: set = set()                   # graph keys the current worker has
        self.dead: Optional[str] = None
        self.actor = None
        self.stats = {"computes": 0, "bytes_sent": 0, "bytes_received": 0}   # activations
        self.attach()

    # --- the worker -------------------------------------------------------------------------
    def attach(self) -> None:
        """Start a new worker (replacing a dead one) and upload the resident tensors to it."""
        ray = _ray()
        if self.actor is not None and self.dead is None:
            raise GraphError(f"{self.name}: a live worker is attached; kill() it first")
        opts = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 1}
        opts.update(self._actor_options)
        self.actor = ray.remote(Worker).options(**opts).remote(self._n_threads, self._kind)
        self.dead = None
        self._sent = set()
        self.pid = self._call("pid", timeout=max(self.timeout, STARTUP_TIMEOUT))
        if self._resident:
            self._upload(list(self._resident.values()))

    def park(self) -> bool:
        """Make this live worker clean (nothing resident, nothing mirrored) so that another
        group of this process may take it (group.py); False if it is dead or silent (then
        it is killed)."""
        if self.dead is not None or self.actor is None:
            return False
        try:
            self._call("reset")
        except (WorkerDiedError, WorkerTimeoutError):
            return False
        self._resident, self._sent = {}, set()
        self.stats = {"computes": 0, "bytes_sent": 0, "bytes_received": 0}
        return True

    def rename(self, index: int, timeout: float) -> None:
        """A parked worker joins a group as its worker `index`."""
        self.index, self.name, self.timeout = index, f"ray:{index}", float(timeout)

    def kill(self) -> None:
        if self.actor is not None:
            try:
                _ray().kill(self.actor, no_restart=True)
            except Exception:                        # already gone
                pass
        self.dead = self.dead or "killed by the driver"

    def _call(self, method: str, *args, timeout: Optional[float] = None):
        """actor.method(*args), waiting at most `timeout` (default: the backend's); failures
        become WorkerErrors."""
        return self._wait(self._submit(method, *args), method, timeout)

    def _submit(self, method: str, *args):
        if self.dead is not None:
            raise WorkerDiedError(f"{self.name}: worker is dead ({self.dead}); attach() a new "
                                  f"one before computing again")
        return getattr(self.actor, method).remote(*args)

    def _wait(self, ref, method: str, timeout: Optional[float] = None):
        ray = _ray()
        from ray.exceptions import GetTimeoutError
        from ray.exceptions import RayActorError
        try:
            return ray.get(ref, timeout=timeout or self.timeout)
        except GetTimeoutError:
            self.kill()
            self.dead = f"no answer to {method}() within {timeout or self.timeout:g} s"
            raise WorkerTimeoutError(f"{self.name}: {self.dead}; the worker was killed") from None
        except RayActorError as e:
            self.dead = f"its process ended during {method}()"
            raise WorkerDiedError(f"{self.name}: worker died ({type(e).__name__}) during "
                                  f"{method}(); attach() a new one") from None

    # --- resident tensors -------------------------------------------------------------------
    def adopt(self, tensors, upload: bool = True) -> None:
        """Make root tensors resident on this worker: their buffers are tagged with this
        backend's name (same driver bytes, no copy) and their data uploaded once (upload=False:
        the worker starts them zeroed, as a fresh KV cache)."""
        new = []
        for t in tensors:
            if t.view_src is not None:
                raise GraphError(f"{self.name}.adopt: {t.name!r} is a view; adopt its root")
            if id(t) in self._resident:
                continue
            raw = root_bytes(t)
            t.set_buffer(Buffer.from_array(raw, name=f"{t.name}@{self.name}",
                                           backend=self.name), 0)
            entry = (next(_KEYS), t, upload)
            self._resident[id(t)] = entry
            new.append(entry)
        if new:
            self._upload(new)

    def _upload(self, entries) -> None:
        payload = [(key, int(t.type), list(t.ne), root_bytes(t) if up else None)
                   for key, t, up in entries]
        self._call("adopt", payload)

    def release(self, tensors) -> None:
        """Drop resident tensors (e.g. a KV cache being replaced) on the worker."""
        keys = []
        for t in tensors:
            e = self._resident.pop(id(t), None)
            if e is not None:
                keys.append(e[0])
        if keys and self.dead is None:
            self._call("release", keys)
            self._sent = set()

    def resident_bytes(self) -> int:
        return sum(nbytes(t) for _, t, _ in self._resident.values())

    # --- the backend interface --------------------------------------------------------------
    def supports_op(self, node: Tensor) -> bool:
        # the worker falls back to its reference backend: anything with a reference runs
        return node.op is None or node.op.view or node.op.reference is not None

    def graph_compute(self, gf, eval_cb=None) -> None:
        if eval_cb is not None:
            raise GraphError(f"{self.name}: eval callbacks do not reach Ray workers; run the "
                             f"graph on a local backend to inspect nodes")
        self.collect(self.submit(gf))

    def submit(self, gf) -> tuple:
        """Start computing gf on the worker (its inputs' bytes are taken now); collect() waits
        for it. Several workers' submits may be outstanding at once."""
        d = gf.cache.get(self._slot)
        if d is None:
            d = gf.cache[self._slot] = self._describe(gf)
        key, spec, inputs, exports = d
        args = [root_bytes(t) for t in inputs]
        ref = self._submit("compute", key, None if key in self._sent else spec, args)
        return ref, d, args

    def collect(self, pending: tuple) -> None:
        """Wait for a submitted compute; write the exported roots into the driver's memory."""
        ref, (key, spec, inputs, exports), args = pending
        out = self._wait(ref, "compute")
        if isinstance(out, str) and out == MISSING:     # the worker dropped it: send it again
            out = self._call("compute", key, spec, args)
        self._sent.add(key)
        for t, b in zip(exports, out):
            root_bytes(t)[...] = b
        st = self.stats
        st["computes"] += 1
        st["bytes_sent"] += sum(a.nbytes for a in args)
        st["bytes_received"] += sum(b.nbytes for b in out)

    def _describe(self, g) -> tuple:
        """(key, spec, input roots, export roots) of a subgraph (see worker.py)."""
        idx: dict[int, int] = {}
        spec: list = []
        inputs: list = []
        written = {id(_root(n)) for n in g.nodes if n.op is not None and not n.op.view}
        want = {id(t) for t in g.cache.get(EXPORTS, ())}
        exports: list = []

        def add(t: Tensor, node: bool = False) -> int:
            i = idx.get(id(t))
            if i is not None and not node:
                return i
            view = add(t.view_src) if t.view_src is not None else -1
            e = {"type": int(t.type), "ne": list(t.ne), "nb": list(t.nb), "view": view,
                 "offs": t.view_offs, "flags": t.flags, "name": t.name, "op": None,
                 "export": False}
            if t.view_src is not None:
                e["kind"] = "view"
            elif id(t) in self._resident:
                e["kind"], e["key"] = "res", self._resident[id(t)][0]
            elif id(t) in written:
                e["kind"] = "node"
            else:
                e["kind"] = "in"
                inputs.append(t)
            if node:
                e["op"] = t.op.name
                e["params"] = np.asarray(t.op_params, dtype=np.int32).tobytes()
                e["src"] = [add(s) if s is not None and s is not t else -1 for s in t.src]
                e["self_src"] = next((j for j, s in enumerate(t.src) if s is t), -1)
            if view < 0 and id(t) in want and e["kind"] != "res":
                e["export"] = True
                exports.append(t)
            idx[id(t)] = len(spec)
            spec.append(e)
            return len(spec) - 1

        for n in g.nodes:
            add(n, node=True)
        missing = want - {id(t) for t in exports}
        if missing:
            raise GraphError(f"{self.name}: {len(missing)} tensor(s) to export are not "
                             f"written by this subgraph (scheduler bookkeeping error)")
        return next(_GRAPH_KEYS), spec, inputs, exports

    def set_n_threads(self, n_threads: int) -> None:
        self._n_threads = int(n_threads)         # used by the next attach()

    def free(self) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "dead: " + self.dead if self.dead else f"pid {getattr(self, 'pid', '?')}"
        return f"<backend {self.name} ({state})>"
