"""Parallel warm-up of the Numba kernels: compile cold kernels in worker processes that fill
Numba's disk cache, then load them here from the cache (`pyggml warmup`, `pyggml demo`).

Why processes: a cold compile holds the GIL (threads do not help) and costs seconds per
kernel, about a minute for a model's set and two for all kernels on one core. Workers are
fresh interpreters (`subprocess`, never fork: the executor pool may already have threads).

    report = warm(kernels, jobs=2)     # kernels: Kernel objects, 'OP:name' keys, or None = all

Only kernels that are neither compiled in this process nor found in the disk cache
(`Kernel.in_disk_cache()`, checked without compiling) go to workers; a warm cache starts no
process. Work is balanced longest first: kernels are grouped by module (they share helper
functions, which a worker then compiles once) and the groups are handed out biggest first
to whichever worker is free, estimated from COSTS (seconds, measured with
`pyggml warmup --measure`). Modules of many small kernels are cut into chunks.

Safety: Numba saves a function's cache as index file + data file, each written to a temp
file then os.replace()d (readers never see a torn file), but saving is read-index, add
entry, write-index: two processes saving different signatures of one shared helper at the
same time lose one index entry, or both write entry number 1 (the index of one then names
the other's code). Every process compiling into a cache directory therefore holds an
exclusive lock on one file in it around each save (_numba_cache.py's SAVE_LOCK, taken from
the moment Numba loads; workers are pointed at it explicitly: save_lock_path). Anything that
fails (a worker dies, hangs, reports an error, no fcntl) leaves those kernels cold, and
they are compiled here as before: warm-up can only save time.

Worker protocol (one line each way): the parent writes 'OP:name' keys on stdin; the worker
answers one JSON line per key on its original stdout (stray output goes to stderr).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Callable
from typing import Iterable
from typing import Optional

from ..._numba_cache import drop_lock
from ..._numba_cache import lock_saves
from ..._numba_cache import save_lock_path
from ...errors import GGMLError

EXECUTOR = "executor"          # pseudo-key: the executor's njit loop (executor.warm_up)
JOB_TIMEOUT = 900.0            # seconds without an answer nor CPU progress: worker killed
MIN_PARALLEL_SECONDS = 3.0     # below this estimate a worker's start-up is not worth it
SPLIT_MIN_KERNELS = 4          # modules with fewer kernels share too much to be cut

# Seconds to compile each kernel (or, for the first of a module, with the helpers it
# shares) in one process on one core: `pyggml warmup --measure` (CPU seconds). The kernels a
# model runs were measured again on the 2-core dev box under heavy load (which inflates CPU
# time, so only their sizes relative to each other mean much); the rest are older quiet-box
# figures. Balancing only needs the order right: the biggest units start first.
COSTS = {
    EXECUTOR: 0.8,
    # FLASH_ATTN_EXT and _WITH_STATE share fa_body: together ~75 s, the second ~5 s
    "FLASH_ATTN_EXT:flash_attn_ext_kernel": 65.0,
    "FLASH_ATTN_EXT_WITH_STATE:flash_attn_ext_with_state_kernel": 65.0,
    "CONT:copy_elements": 1.8,
    "MUL_MAT:mul_mat": 70.0, "MUL_MAT_ID:mul_mat_id": 1.5, "OUT_PROD:out_prod": 1.4,
    "ADD:k_add_quant": 2.8, "ADD:k_add": 4.5, "GEGLU:k_geglu": 2.0, "SWIGLU:k_swiglu": 5.0,
    "MUL:k_mul": 4.3, "REGLU:k_reglu": 1.2, "SIGMOID:k_sigmoid": 1.2, "SILU:k_silu": 1.2,
    "SWIGLU_OAI:k_swiglu_oai": 1.2, "GEGLU_ERF:k_geglu_erf": 1.0,
    "ROPE:rope_fwd": 8.0, "ROPE_BACK:rope_back": 0.5,
    "GET_ROWS_BACK:get_rows_back": 0.4,
    # GET_ROWS, SET_ROWS, CPY's quantized copies: one body each (~4 s, paid by the first child
    # a process compiles) and a row function per type (kernels/row_fns.py), ~1 s but the
    # K-quant and IQ4 quantizers (SET_ROWS' children; CPY's share them)
    "GET_ROWS:get_rows": 1.3, "SET_ROWS:set_rows": 1.3, "CONT:copy_blocks": 1.3,
    "SET_ROWS:set_rows[q2_k]": 9.7, "SET_ROWS:set_rows[q3_k]": 7.4,
    "SET_ROWS:set_rows[q4_k]": 11.3, "SET_ROWS:set_rows[q5_k]": 7.0,
    "SET_ROWS:set_rows[q6_k]": 3.8, "SET_ROWS:set_rows[iq4_nl]": 4.2,
    "SET_ROWS:set_rows[iq4_xs]": 3.7,
    "RMS_NORM:rms_norm_f32": 4.6, "SOFT_MAX:soft_max_f32": 2.0, "ARGSORT:argsort": 1.6,
    "SSM_SCAN:ssm_scan": 1.2, "UPSCALE:upscale": 1.0,
}
DEFAULT_COST = 0.7             # most elementwise/shape kernels: 0.2 - 1 s


def cost(key: str) -> float:
    """Estimated cold compile seconds of a kernel ('OP:name', a template's child 'OP:name[...]'
    costs what COSTS says for its template)."""
    return COSTS.get(key, COSTS.get(key.split("[", 1)[0], DEFAULT_COST))


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class WarmupError(GGMLError, ValueError):
    """A misuse of the warm-up API (unknown kernel key, bad job count)."""


# --- which kernels ---------------------------------------------------------------------------

def all_kernels(table: dict = None) -> list:
    """Every kernel variant of the table (default: the backend's KERNELS), each once; a
    template contributes its common children."""
    from . import fusion  # noqa: F401  registers the fused kernels in FUSED
    from .kernels import FUSED
    from .kernels import KERNELS
    out = {}
    entries = list((KERNELS if table is None else table).values())
    if table is None:
        entries += FUSED.values()
    for entry in entries:
        for v in entry.variants:
            for k in v.children():
                out.setdefault(k.key, k)
    return list(out.values())


def resolve(kernels: Optional[Iterable] = None) -> list:
    """Kernel objects from Kernels and/or 'OP:name' keys (None: all), duplicates dropped."""
    if kernels is None:
        return all_kernels()
    from .kernels import find
    out = {}
    for k in kernels:
        if isinstance(k, str):
            found = find(k)
            if found is None:
                raise WarmupError(f"warm-up: no kernel {k!r} (keys are 'OP:name', e.g. "
                                  f"'GET_ROWS:get_rows[q8_0]'; `pyggml warmup --list` shows them)")
            k = found
        out.setdefault(k.key, k)
    return list(out.values())


def graph_kernels(graphs, table: dict = None) -> list:
    """The kernel variants that would run the computed nodes of the graphs on the backend."""
    from ..base import is_computed
    from .fusion import fused_kernels
    from .kernels import lookup
    out = {}
    for gf in graphs:
        for node in gf.nodes:
            if is_computed(node):
                k = lookup(node, table)
                if k is not None:
                    out.setdefault(k.key, k)
        if table is None:
            for k in fused_kernels(gf.nodes):
                out.setdefault(k.key, k)
    return list(out.values())


def cold(kernels: Iterable) -> list:
    """Kernels neither compiled in this process nor loadable from the disk cache (a kernel
    whose state cannot be told is left to the ordinary lazy path)."""
    return [k for k in kernels if not k.compiled and k.cacheable and k.in_disk_cache() is False]


# --- balancing -------------------------------------------------------------------------------

def plan_units(keys_by_module: dict, jobs: int) -> list:
    """Work units (lists of keys, each compiled in order by one worker), biggest first.

    A module stays one unit (its kernels share helpers) unless it has many kernels and is
    bigger than a fair chunk: then it is cut into consecutive chunks of about that size."""
    total = sum(cost(k) for keys in keys_by_module.values() for k in keys)
    chunk = max(total / max(jobs, 1) / 2, 1e-9)
    units = []
    for keys in keys_by_module.values():
        size = sum(cost(k) for k in keys)
        n = math.ceil(size / chunk) if len(keys) >= SPLIT_MIN_KERNELS else 1
        if n <= 1:
            units.append(list(keys))
            continue
        per, cur, acc = size / n, [], 0.0
        for k in keys:
            cur.append(k)
            acc += cost(k)
            if acc >= per:
                units.append(cur)
                cur, acc = [], 0.0
        if cur:
            units.append(cur)
    units.sort(key=lambda u: -sum(cost(k) for k in u))
    return units


def by_module(kernels: list) -> dict:
    """Kernels' keys grouped by the module that defines them (the unit plan_units hands out);
    kernels calling row_fns' row functions (GET_ROWS, SET_ROWS, CPY's) form one group: they
    share those, which two workers at once would both compile."""
    from .kernels.row_fns import RowFnChild
    out = {}
    for k in kernels:
        mod = "row_fns" if isinstance(k, RowFnChild) else getattr(k.pyfunc, "__module__", "?")
        out.setdefault(mod, []).append(k.key)
    return out


# --- the parent side -------------------------------------------------------------------------

@dataclass
class WarmReport:
    requested: int = 0                               # kernels asked for
    cold: list = field(default_factory=list)         # keys found cold
    compiled: dict = field(default_factory=dict)     # key -> seconds, in a worker
    cpu: dict = field(default_factory=dict)          # key -> CPU seconds of that compile
    worker_of: dict = field(default_factory=dict)    # key -> worker number
    here: dict = field(default_factory=dict)         # key -> seconds, cold, compiled here
    loaded: dict = field(default_factory=dict)       # key -> seconds loading here
    errors: list = field(default_factory=list)       # what went wrong in workers
    failed: dict = field(default_factory=dict)       # key -> error: not ready (compile error)
    jobs: int = 0                                    # worker processes started
    seconds: float = 0.0                             # wall time of warm()

    @property
    def parallel_seconds(self) -> float:
        return sum(self.compiled.values())


def worker_argv(lock_path: str, nice: int = 0) -> list:
    """The command of a compile worker (worker_main) saving under lock_path, at niceness
    nice."""
    return [sys.executable, "-c", f"import os; os.nice({int(nice)}); "
            "from pyggml.backends.numba_cpu.warmup import worker_main; worker_main()",
            lock_path]


def worker_env() -> dict:
    """The environment of a compile worker: this pyggml first on its path, this Numba cache.
    Numba is not imported for it: while it is not loaded (the tiered hold), its cache
    directory is the environment's NUMBA_CACHE_DIR (pyggml's import sets it), as Numba's
    config will read it."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["pyggml"].__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    numba = sys.modules.get("numba")
    if numba is not None and numba.config.CACHE_DIR:  # also when set in-process, not by env
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    return env


# --- the save lock (_numba_cache.py: one file per cache directory) --------------------------

def cache_dir() -> Optional[str]:
    """The kernel cache directory workers compile into (worker_env's NUMBA_CACHE_DIR:
    Numba's when it is loaded, else the environment's, which pyggml's import sets)."""
    return worker_env().get("NUMBA_CACHE_DIR") or None


class _Worker:
    """One worker process and the parent thread that feeds it units from the shared queue."""

    def __init__(self, num: int, lock_path: str, queue: list, qlock: threading.Lock,
                 report: WarmReport, log: Callable, timeout: float):
        self.num, self.queue, self.qlock = num, queue, qlock
        self.report, self.log, self.timeout = report, log, timeout
        self.errfile = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(worker_argv(lock_path), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.errfile,
                                         env=worker_env(), text=True, bufsize=1)
        except BaseException:
            self.errfile.close()
            raise
        self.deadline = time.monotonic() + timeout   # start-up counts as a job
        self.busy_with = "start-up"
        self.cpu_seen = 0
        self.killed = False
        self.thread = threading.Thread(target=self._run, name=f"warmup-{num}", daemon=True)
        self.thread.start()

    def _answer(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise EOFError("worker exited")
            if line.startswith("{"):       # anything printed before the worker took fd 1: skip
                return json.loads(line)

    def _run(self) -> None:
        unit, i = [], 0
        try:
            self._answer()                               # {"ready": seconds}
            while True:
                with self.qlock:
                    unit = self.queue.pop(0) if self.queue else None
                if unit is None:
                    break
                for i, key in enumerate(unit):
                    self.busy_with, self.deadline = key, time.monotonic() + self.timeout
                    self.proc.stdin.write(key + "\n")
                    self.proc.stdin.flush()
                    r = self._answer()
                    if "error" in r:
                        self.report.errors.append(f"worker {self.num}: {key}: {r['error']}")
                        continue                          # compiled here later
                    self.report.compiled[key] = r["seconds"]
                    self.report.cpu[key] = r.get("cpu", r["seconds"])
                    self.report.worker_of[key] = self.num
                    self.log(f"  {key:<62} {r['seconds']:6.1f} s  (worker {self.num}, "
                             f"{self.report.cpu[key]:.1f} s CPU)")
        except (EOFError, OSError, ValueError) as e:   # died, hung (killed) or garbled
            self.report.errors.append(f"worker {self.num} failed during {self.busy_with}: "
                                      f"{type(e).__name__}: {e}{self._stderr_tail()}")
            if unit and unit[i + 1:]:                  # the rest of its unit: other workers
                with self.qlock:
                    self.queue.insert(0, unit[i + 1:])
        finally:
            self.busy_with = None
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _stderr_tail(self) -> str:
        try:
            self.errfile.seek(0)
            tail = self.errfile.read().decode(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return ("; stderr: " + " | ".join(tail)) if tail else ""

    def overdue(self) -> bool:
        """No answer within the timeout and no CPU used since the last look: hung. A worker
        still using CPU is slow (a loaded machine), not hung: killing it would throw its
        compile away and redo it here."""
        if self.busy_with is None or self.killed or time.monotonic() <= self.deadline:
            return False
        cpu = _cpu_ticks(self.proc.pid)
        if cpu is not None and cpu > self.cpu_seen:
            self.cpu_seen = cpu
            self.deadline = time.monotonic() + self.timeout
            return False
        return True

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()

    def close(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errfile.close()


def _cpu_ticks(pid: int) -> Optional[int]:
    """CPU time a process has used (clock ticks), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])          # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def parallel_ok() -> bool:
    """Whether compiling in worker processes is safe here (their saves need fcntl's lock)."""
    try:
        import fcntl  # noqa: F401   (the save lock)
    except ImportError:
        return False
    return True


def compile_in_workers(keys_by_module: dict, jobs: int, report: WarmReport, log: Callable,
                       timeout: float = JOB_TIMEOUT, lock_path: Optional[str] = None) -> None:
    """Compile the keys into the disk cache in `jobs` worker processes (failures are recorded
    in report.errors and simply leave those kernels cold); their saves take lock_path
    (default: the cache directory's, save_lock_path)."""
    units = plan_units(keys_by_module, jobs)
    jobs = max(1, min(jobs, len(units)))
    queue, qlock = list(units), threading.Lock()
    own_lock = lock_path is None
    if own_lock:
        lock_path = save_lock_path(cache_dir())
    workers = []
    try:
        for i in range(jobs):
            try:
                workers.append(_Worker(i + 1, lock_path, queue, qlock, report, log, timeout))
            except OSError as e:
                report.errors.append(f"worker {i + 1} did not start: {e}")
        report.jobs = len(workers)
        while any(w.thread.is_alive() for w in workers):
            for w in workers:
                w.thread.join(0.2)
                if w.overdue():
                    report.errors.append(f"worker {w.num}: no answer for {w.busy_with} "
                                         f"within {timeout:.0f} s: killed")
                    w.kill()
    finally:
        for w in workers:                      # normally done; Ctrl-C or an error: stop them
            if w.proc.poll() is None and w.thread.is_alive():
                w.kill()
            w.close()
        if own_lock:
            drop_lock(lock_path)


def warm(kernels: Optional[Iterable] = None, jobs: Optional[int] = None,
         log: Optional[Callable] = None, timeout: float = JOB_TIMEOUT,
         executor: bool = True, min_seconds: float = MIN_PARALLEL_SECONDS) -> WarmReport:
    """Make the kernels ready in this process: cold ones compiled in `jobs` worker processes
    (default: usable cores; 1 compiles here), then all of them loaded here from the cache.

    Workers start only when the cold kernels' estimated compile time is at least
    `min_seconds`. `executor` also warms the executor loop. `log(line)` receives progress
    lines. A kernel that does not compile is listed in report.failed (and raises at its
    first use, as without warm-up). Returns a WarmReport."""
    t0 = time.perf_counter()
    log = log or (lambda line: None)
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise WarmupError(f"warm-up: jobs must be >= 1, got {jobs}")
    ks = resolve(kernels)
    report = WarmReport(requested=len(ks))
    todo = [k for k in ks if not k.compiled]
    report.cold = [k.key for k in cold(todo)]
    cold_keys = set(report.cold)
    est = sum(cost(key) for key in report.cold)
    from . import executor as ex
    from .kernels import find
    executor = executor and not ex._warm
    mine = [k for k in todo if k.key in cold_keys and find(k.key) is k]   # workers find these
    # this process's saves and its workers' take the cache directory's lock (a detached
    # compiler of another process may be saving into it)
    lock = save_lock_path(cache_dir()) if (todo or executor) and parallel_ok() else None
    try:
        if lock is not None:
            lock_saves(lock)
        if mine and jobs > 1 and est >= min_seconds and lock is not None:
            mods = by_module(mine)
            if executor:
                mods[EXECUTOR] = [EXECUTOR]
            log(f"compiling {len(report.cold)} cold kernels in up to {jobs} processes "
                f"(about {est:.0f} s of compile on one core)")
            compile_in_workers(mods, jobs, report, log, timeout, lock)
        for k in todo:                             # load; what no worker compiled compiles here
            try:
                k.address
            except Exception as e:                 # noqa: BLE001  raised again at first use
                report.failed[k.key] = f"{type(e).__name__}: {e}"
                log(f"  {k.key:<62} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            if k.key in cold_keys and not k.from_cache:
                report.here[k.key] = k.compile_seconds
                log(f"  {k.key:<62} {k.compile_seconds:6.1f} s  (here)")
            else:
                report.loaded[k.key] = k.compile_seconds
        if executor:
            ex.warm_up()
    finally:
        drop_lock(lock)
    report.seconds = time.perf_counter() - t0
    return report


# --- the worker side -------------------------------------------------------------------------

def worker_main(argv=None) -> None:
    """Entry point of a worker process (see the module doc for the protocol)."""
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                  # stray prints must not reach the protocol
    lock_saves(argv[0])
    from . import fusion  # noqa: F401  registers the fused kernels find() names
    from .kernels import find

    def send(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    send({"ready": time.perf_counter() - t0})
    for line in sys.stdin:
        key = line.strip()
        if not key:
            break
        t, c = time.perf_counter(), time.process_time()
        try:
            if key == EXECUTOR:
                from . import executor
                from . import schedule
                executor.warm_up()
                schedule.warm_up()          # the lowering's grouping walk (njit)
            else:
                find(key).address
            send({"key": key, "seconds": time.perf_counter() - t,
                  "cpu": time.process_time() - c})
        except Exception as e:                     # noqa: BLE001  reported, compiled by the parent
            send({"key": key, "error": f"{type(e).__name__}: {e}"})
