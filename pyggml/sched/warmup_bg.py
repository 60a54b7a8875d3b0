"""Background warm-up: cold kernels compile in worker processes while the caller keeps
computing (tiered execution, tiered.py); the caller asks which have landed between graphs
and loads them then. (It lives here, not in backends/numba_cpu, so that its edits do not
change the kernel cache's source key.)

Unlike warm() (backends/numba_cpu/warmup.py), nothing blocks: `submit(kernels)` loads the kernels that are in
the disk cache at once and queues the cold ones (biggest units first, as warm() balances);
`landed()` returns the keys that workers finished since the last call; `close()` stops the
workers. Workers run at a lower priority (`nice`), so the computing process keeps its core.
The worker, its protocol, the save lock and the fallback are warmup.py's: a key a worker fails on is
reported in `errors` and compiles here at its first use, as without warm-up.

The save lock is _numba_cache.py's one file in the kernel cache directory (SAVE_LOCK), not one per
process: a detached compiler (`detach()`, compile_detached.py) may still be saving when the
next pyggml process starts its own workers, or a `pyggml warmup`. `detach()` hands what is
still queued or compiling to a detached compiler and returns at once: the caller can exit.
The detached compiler has a session of its own (no terminal), so Linux's autogroup
scheduling gives it a group of its own too: it lowers that group's weight
(/proc/self/autogroup) as well as its nice, or it would take half the CPU from the user's
next command.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable
from typing import Optional

from .._numba_cache import drop_lock
from .._numba_cache import lock_saves
from .._numba_cache import save_lock_path
from ..backends.numba_cpu.warmup import EXECUTOR
from ..backends.numba_cpu.warmup import by_module
from ..backends.numba_cpu.warmup import cache_dir
from ..backends.numba_cpu.warmup import cold
from ..backends.numba_cpu.warmup import cost
from ..backends.numba_cpu.warmup import default_jobs
from ..backends.numba_cpu.warmup import parallel_ok
from ..backends.numba_cpu.warmup import plan_units
from ..backends.numba_cpu.warmup import worker_argv
from ..backends.numba_cpu.warmup import worker_env

NICE = 10                         # workers' niceness: the process computing keeps its core
DETACHED_LOG = "compile-detached.log"   # the detached compiler's log, in the cache directory
DETACHED: list = []               # detached compilers started here (Detached), newest last


@dataclass
class Detached:
    """A detached compiler: `n` kernels handed over, its process id and its log file."""
    pid: int
    log: str
    n: int
    proc: subprocess.Popen

    def wait(self, timeout: Optional[float] = None) -> int:
        """Its exit status (for tests and scripts: the CLIs never wait)."""
        return self.proc.wait(timeout)


DETACHED_CODE = ("import os, sys; os.nice(int(sys.argv[1])); "
                 "from pyggml.sched.compile_detached import autogroup_nice, main; "
                 "autogroup_nice(int(sys.argv[1])); sys.exit(main(sys.argv[2:]))")


def start_detached(keys: list, busy: dict, cache: Optional[str], jobs: int,
                   nice: int) -> Detached:
    """Launch the detached compiler (compile_detached.py) for `keys` and `busy` ({key: pid of
    the worker compiling it}) into `cache`; its log goes to the cache directory (a temp file
    when that cannot be written: the compiler then says why and exits)."""
    env = worker_env()
    if cache:
        env["NUMBA_CACHE_DIR"] = cache
    log = _open_log(cache)
    argv = [sys.executable, "-c", DETACHED_CODE, str(int(nice)), "--jobs", str(int(jobs))]
    for key, pid in sorted(busy.items()):
        argv += ["--after", f"{pid}:{key}"]
    try:
        p = subprocess.Popen(argv + ["--"] + list(keys), env=env, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             close_fds=True)
    finally:
        log.close()
    return Detached(pid=p.pid, log=log.name, n=len(keys) + len(busy), proc=p)


def _open_log(cache: Optional[str]):
    if cache:
        try:
            os.makedirs(cache, exist_ok=True)
            return open(os.path.join(cache, DETACHED_LOG), "a")
        except OSError:
            pass
    return tempfile.NamedTemporaryFile("a", prefix="pyggml-compile-detached-", suffix=".log",
                                       delete=False)


def disk_cache_empty(path: Optional[str] = None) -> bool:
    """True when Numba's cache directory (NUMBA_CACHE_DIR, which pyggml's import sets) holds
    no index file (*.nbi) at all: nothing can load from it, found without importing Numba.
    Numba's default per-source __pycache__ directories (no NUMBA_CACHE_DIR) are not looked
    at: False, as for any cache that may hold something."""
    path = path or os.environ.get("NUMBA_CACHE_DIR")
    if not path:
        return False
    for _, _, files in os.walk(path):
        if any(f.endswith(".nbi") for f in files):
            return False
    return True


class BackgroundWarmup:
    def __init__(self, jobs: Optional[int] = None, log: Optional[Callable] = None,
                 nice: int = NICE, cache: Optional[str] = None):
        self.jobs = default_jobs() if jobs is None else max(1, int(jobs))
        self.log = log or (lambda line: None)
        self.nice = nice
        self.cache = cache                    # kernel cache directory (None: cache_dir())
        self.queue: list = []                 # units (lists of keys), biggest first
        self.cond = threading.Condition()
        self.queued: set = set()              # keys ever queued
        self._landed: list = []               # keys done, not yet returned by landed()
        self.done: set = set()
        self.errors: list = []
        self.cpu: dict = {}                   # key -> worker CPU seconds
        self.procs: list = []
        self.threads: list = []
        self.busy: dict = {}                  # worker number -> (pid, key it is compiling)
        self.closed = False
        self.lock_path = None

    # --- caller side -------------------------------------------------------------------------
    def submit(self, kernels) -> list:
        """Queue the cold ones of these Kernel objects; the others load here now. Returns the
        keys ready in this process now (EXECUTOR among them when the executor loop is). The
        executor goes to a worker first when anything is cold (nothing runs without it)."""
        from ..backends.numba_cpu import executor as ex
        from ..backends.numba_cpu.kernels import find
        if self.lock_path is None and parallel_ok():    # before this process compiles
            self.lock_path = save_lock_path(self.cache or cache_dir())
            lock_saves(self.lock_path)
        ks = [k for k in kernels if k.key not in self.queued]
        todo = [k for k in ks if not k.compiled]
        cold_ks = [k for k in cold(todo) if find(k.key) is k] if parallel_ok() else []
        cold_keys = {k.key for k in cold_ks}
        ready = []
        for k in ks:
            if k.key not in cold_keys:
                k.address                    # from the disk cache (or compiled here: unknown)
                ready.append(k.key)
        if not cold_ks:
            if not ex._warm and EXECUTOR not in self.queued:
                ex.warm_up()
            if ex._warm:
                ready.append(EXECUTOR)
            return ready
        mods = by_module(cold_ks)
        if not ex._warm and EXECUTOR not in self.queued:
            mods = {EXECUTOR: [EXECUTOR], **mods}
        elif ex._warm:
            ready.append(EXECUTOR)
        units = self._enqueue(mods)
        self.log(f"tiered: compiling {len(cold_keys)} kernels in the background (about "
                 f"{sum(cost(k) for u in units for k in u):.0f} s of compile on one core)")
        return ready

    def queue_keys(self, keys) -> list:
        """Queue kernels by key ('OP:name', EXECUTOR) without loading anything here (the
        detached compiler): the ones the disk cache already holds are skipped, an unknown key
        goes to `errors`. Returns the keys queued."""
        from ..backends.numba_cpu import fusion  # noqa: F401  registers the fused kernels
        from ..backends.numba_cpu.kernels import find
        keys = [k for k in dict.fromkeys(keys) if k not in self.queued]
        ks = []
        for key in keys:
            if key != EXECUTOR:
                k = find(key)
                if k is None:
                    self.errors.append(f"{key}: no such kernel")
                else:
                    ks.append(k)
        mods = by_module(cold(ks))
        if EXECUTOR in keys:                  # a worker loads it if the cache has it
            mods = {EXECUTOR: [EXECUTOR], **mods}
        return [k for u in self._enqueue(mods) for k in u]

    def _enqueue(self, mods: dict) -> list:
        units = plan_units(mods, self.jobs) if mods else []
        with self.cond:
            for u in units:
                self.queued.update(u)
            # the executor first (nothing runs on Numba without it), then biggest first
            self.queue.extend(units)
            self.queue.sort(key=lambda u: (EXECUTOR not in u, -sum(cost(k) for k in u)))
            self.cond.notify_all()
        if units:
            self._start()
        return units

    def prestart(self) -> None:
        """Start the workers now with the executor loop queued, before any kernel is asked
        for: the caller knows the cache is empty (so the executor is cold) and keeps Numba out
        of its own process for now (tiered hold), while the workers' start-up (each imports
        Numba) and the executor's compile use the other core."""
        if not parallel_ok():
            return
        with self.cond:
            if EXECUTOR in self.queued:
                return
            self.queued.add(EXECUTOR)
            self.queue.insert(0, [EXECUTOR])
            self.cond.notify_all()
        self._start(self.jobs)

    def landed(self) -> list:
        with self.cond:
            out, self._landed = self._landed, []
        return out

    @property
    def pending(self) -> int:
        """Keys queued or compiling."""
        with self.cond:
            return len(self.queued - self.done)

    def drain(self) -> None:
        """Wait until every queued key is done (or its worker failed)."""
        with self.cond:
            while self.queued - self.done and any(t.is_alive() for t in self.threads):
                self.cond.wait(0.5)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.queue.clear()
            self.cond.notify_all()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for t in self.threads:
            t.join(timeout=5)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs, self.threads = [], []
        self._drop_private_lock()

    def _drop_private_lock(self) -> None:
        drop_lock(self.lock_path)
        self.lock_path = None

    def detach(self, jobs: Optional[int] = None) -> Optional[Detached]:
        """Stop here and hand every key still queued or compiling to a detached compiler
        (compile_detached.py: its own session, niced, stdio on its log in the cache
        directory), which fills the disk cache and exits by itself; returns at once (None
        when nothing was left: then this is close()). Workers busy with a key finish it
        (their save completes under the lock) and exit; the compiler takes those keys after
        their worker is gone, unless the cache has them by then."""
        with self.cond:
            self.closed = True
            busy = {key: pid for pid, key in self.busy.values() if key not in self.done}
            rest = sorted(self.queued - self.done - set(busy))
            self.queue.clear()
            self.cond.notify_all()              # idle feeders stop, busy ones after their key
        self.procs, self.threads = [], []       # left to finish: not killed
        self._drop_private_lock()
        if not rest and not busy:
            return None
        try:
            d = start_detached(rest, busy, self.cache or cache_dir(),
                               self.jobs if jobs is None else jobs, self.nice)
        except OSError as e:
            self.errors.append(f"detached compiler did not start: {e}")
            return None
        DETACHED.append(d)
        return d

    # --- workers -----------------------------------------------------------------------------
    def _start(self, n: Optional[int] = None) -> None:
        """Start feeders (one worker each): n, else one per queued unit, up to jobs."""
        if self.threads or self.closed:
            return
        if self.lock_path is None:
            self.lock_path = save_lock_path(self.cache or cache_dir())
        n = min(self.jobs, len(self.queue) if n is None else n)
        for i in range(max(1, n)):
            t = threading.Thread(target=self._feed, args=(i + 1,), name=f"tiered-warmup-{i + 1}",
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def _spawn(self, num: int):
        # warmup.py's worker, started below the computing process's priority
        argv = worker_argv(self.lock_path, self.nice)
        env = worker_env()
        if self.cache:
            env["NUMBA_CACHE_DIR"] = self.cache
        # (the caller's session: with autogroup scheduling a session of its own would weigh
        # as much as the caller's, whatever the workers' nice)
        p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, bufsize=1)
        with self.cond:
            self.procs.append(p)
        return p

    @staticmethod
    def _answer(p) -> dict:
        import json
        while True:
            line = p.stdout.readline()
            if not line:
                raise EOFError("worker exited")
            if line.startswith("{"):
                return json.loads(line)

    def _feed(self, num: int) -> None:
        try:
            p = self._spawn(num)
            self._answer(p)                                  # {"ready": seconds}
        except (OSError, EOFError, ValueError) as e:
            self.errors.append(f"tiered worker {num} did not start: {e}")
            return
        key, unit, i = "start-up", [], 0
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if self.closed:
                        break
                    unit = self.queue.pop(0)
                for i, key in enumerate(unit):
                    with self.cond:                 # closed or detached: no next key
                        if self.closed:
                            return
                        self.busy[num] = (p.pid, key)
                    p.stdin.write(key + "\n")
                    p.stdin.flush()
                    r = self._answer(p)
                    with self.cond:
                        self.busy.pop(num, None)
                        if "error" in r:
                            self.errors.append(f"worker {num}: {key}: {r['error']}")
                        else:
                            self.cpu[key] = r.get("cpu", r["seconds"])
                        self._landed.append(key)
                        self.done.add(key)
                        self.cond.notify_all()
                    self.log(f"  tiered: {key} ready ({r.get('cpu', 0.0):.1f} s CPU, "
                             f"worker {num})")
        except (OSError, EOFError, ValueError) as e:
            if not self.closed:
                self.errors.append(f"tiered worker {num} failed during {key}: {e}")
                with self.cond:                 # the caller compiles the rest itself
                    rest = [k for k in unit[i:] if k not in self.done]
                    self._landed.extend(rest)
                    self.done.update(rest)
        finally:
            try:
                p.stdin.close()
            except OSError:
                pass
