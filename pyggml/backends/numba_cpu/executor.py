"""The executor: a persistent pool of threads walking a node table inside nogil Numba code.

This is ggml's own design (ggml_graph_compute_thread): every thread runs the same loop over
the lowered graph, calls `kernel(desc, ith, nth)` for the nodes it has a task in, and meets
the others at an atomic spin barrier after each node. No Python runs between nodes: a
Python-level hand-off costs ~190 µs, the in-Numba barrier ~0.1 µs here
(/work/shared/NUMBA-NOTES.md).

Pieces:
  NodeTable    the lowered graph: kernel addresses, descriptors (desc.py), n_tasks, the
               status block kernels report errors into, the work buffer.
  run_nodes    the nogil executor loop over rows [i0, i1) of a table, as thread ith of nth.
  worker_loop  what a worker runs: the posted graph, then it polls (spins) a short while
               for the next one before returning to Python to sleep (ggml's threadpool
               polls the same way). Back-to-back graphs never go through Python wake-ups.
               How threads wait (spin, yield, move off a shared CPU) is explained at
               SPIN_DEFAULT below.
  WorkerPool   n_threads - 1 daemon threads + the calling thread (thread 0). A graph is
               posted by writing its table's addresses into the pool's state words and
               bumping the job sequence number; sleeping workers are woken with a Condition.

Failure handling: a kernel reports with desc.set_error; the last thread to reach the next
barrier sees it and publishes "stop", so every thread leaves the loop after the same node
and the pool is immediately reusable. A Python exception around a thread's executor call
sets the pool's abort word: spinning threads leave, the pool waits for them, resets its
state and raises in the caller.
"""
from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Optional

import numba
import numpy as np

from ...errors import ComputeError
from ...errors import describe
from .desc import DESC_LEN
from .desc import ERROR_DETAILS
from .desc import S_CODE
from .desc import S_NODE
from .desc import error_meaning
from .intrinsics import atomic_add
from .intrinsics import atomic_load
from .intrinsics import atomic_store
from .intrinsics import call_kernel
from .intrinsics import cpu_pause
from .intrinsics import cpu_yield
from .intrinsics import current_cpu
from .intrinsics import i64_array

# --- pool state words (int64 array; hot words on their own 64-byte lines) -------------------
W_COUNT = 0        # threads arrived at the current barrier
W_GEN = 8          # barrier generation: + 2 per barrier; bit 0 = stop (a kernel failed)
W_ABORT = 16       # nonzero: leave the loop now (a thread failed outside the kernels)
W_ACTIVE = 24      # workers inside Numba (running or polling); written by them under the lock
W_SEQ = 32         # job sequence number: bumped (after the job words) to post a graph
W_SPIN = 40        # barrier: PAUSE iterations before a waiting thread starts yielding
W_POLL = 41        # worker: PAUSE iterations polling for the next graph before sleeping
J_JOB, J_I0, J_I1 = 48, 49, 50   # posted graph: its job block (JOB_*), rows [i0, i1)
W_THREAD = 64      # + 8 * ith: a line per thread; word T_CPU: the CPU it last ran on
T_CPU = 0
MAX_THREADS = 256
STATE_LEN = W_THREAD + 8 * MAX_THREADS

# a table's job block: the addresses the loop needs, so a post or a call passes one word
JOB_KADDRS, JOB_DESCS, JOB_NTASKS, JOB_SYNC, JOB_STATUS = 0, 1, 2, 3, 4
JOB_LEN = 8
WAKE = -2          # run_posted: workers sleep; wake them, then run_nodes as thread 0

# Waiting, tuned on the 2-core box, idle and with other processes keeping it busy (load
# 5-8), against ggml's own threadpool in the same process:
#  - a thread waiting at a barrier spins (PAUSE, ~40 ns) like ggml's; it yields its core
#    (sched_yield) on each check after SPIN_* spins, or at once when a thread of the pool
#    reports the same CPU (a shared core: spinning would only keep the other thread from
#    arriving; without this, every barrier cost a scheduler tick, 4-16 ms, and yielding on
#    a timer instead made loaded runs bimodal, 0.1 or 30-200 µs/node);
#  - between graphs a worker polls POLL_* times for the next one (ggml polls too) and then
#    sleeps; waking up through a Condition and the GIL costs tens of µs idle, milliseconds
#    when busy. Linux wakes a thread on its waker's CPU, so a worker that finds itself on
#    the caller thread's CPU moves off it (_move_off) before polling;
#  - more threads than usable CPUs: someone must share, so yield almost at once and do not
#    poll (3 threads on 2 cores: 128 spins ~0.2 ms per 30-node graph, 4096 spins ~15 ms).
# Result: 1,000 tiny nodes at 2 threads ~0.08-0.1 µs/node idle (ggml ~0.09), ~0.3 loaded
# (ggml ~0.4); pinned to one CPU ~2.7 µs/node (ggml ~3,800).
# Session 7 (2-core Xeon, load 10-13 from other jobs), SmolLM2 decode at 2 threads,
# alternating in one process: 1 << 12 spins (~0.25 ms) before yielding instead of 1 << 18
# (~13 ms) took 24 ms of CPU per token instead of 72, and 1.3-2x less wall time: under load
# the partner thread is often descheduled, and spinning for it only burns this process's
# share of the CPU. Idle, waits are shorter than that and a yield with nothing else to run
# returns at once.
SPIN_DEFAULT = 1 << 12
SPIN_OVERSUBSCRIBED = 128
POLL_DEFAULT = 1 << 16
POLL_OVERSUBSCRIBED = 0

# posts to any pool of this process (polling workers of idle pools retire when it moves)
_POSTS = np.zeros(8, dtype=np.int64)
_POSTS_ADDR = _POSTS.ctypes.data


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def spin_limit(n_threads: int) -> int:
    return SPIN_OVERSUBSCRIBED if n_threads > usable_cpus() else SPIN_DEFAULT


def poll_limit(n_threads: int) -> int:
    return POLL_OVERSUBSCRIBED if n_threads > usable_cpus() else POLL_DEFAULT


_jit = numba.njit(nogil=True, cache=True)


@_jit
def publish_cpu(state_addr, ith):
    """Record the CPU thread ith runs on (read by threads waiting for it)."""
    a = state_addr + (W_THREAD + ith * 8 + T_CPU) * 8
    cpu = current_cpu()
    if atomic_load(a) != cpu:
        atomic_store(a, cpu)
    return cpu


@_jit
def shares_cpu(state_addr, ith, nth, cpu):
    """Does another thread of the pool last report running on `cpu`?"""
    if cpu < 0:
        return False
    for j in range(nth):
        if j != ith and atomic_load(state_addr + (W_THREAD + j * 8 + T_CPU) * 8) == cpu:
            return True
    return False


@_jit
def barrier(state_addr, nth, status_addr, ith):
    """Generation spin barrier that also agrees on whether to stop.

    The last thread to arrive reads the graph's status word while every other thread is
    waiting (no kernel runs, so it cannot change) and releases them with the verdict in
    bit 0 of the new generation (one word, one cache line to move); everyone returns that
    verdict. Reading the status word directly after the barrier would race: a fast thread
    may already be running the next node and report its error, making a slow thread stop
    one node early (and the barriers mismatch). The generation moves again only when every
    thread has arrived at the next barrier, so nobody can miss the verdict, and nothing has
    to be reset between graphs (no exit barrier).

    A waiting thread spins (PAUSE) like ggml's, but yields its core on each check once it
    has spun W_SPIN times, or at once when another thread of the pool reports running on
    the same CPU (then spinning only keeps that thread from arriving).
    Returns 0 (go on), 1 (stop: a kernel failed) or -1 (the pool was aborted)."""
    if atomic_load(state_addr + W_ABORT * 8) != 0:
        return -1
    cpu = publish_cpu(state_addr, ith)
    gen_addr = state_addr + W_GEN * 8
    gen = atomic_load(gen_addr)
    if atomic_add(state_addr + W_COUNT * 8, 1) == nth - 1:
        stop = 1 if atomic_load(status_addr + S_CODE * 8) != 0 else 0
        atomic_store(state_addr + W_COUNT * 8, 0)    # reset before releasing the others
        atomic_store(gen_addr, (gen | 1) + 1 + stop)
        return stop
    limit = atomic_load(state_addr + W_SPIN * 8)
    shared = False
    spins = 0
    g = atomic_load(gen_addr)
    while g == gen:
        if atomic_load(state_addr + W_ABORT * 8) != 0:
            return -1
        if (spins & 63) == 63:              # every 64 checks: are we sharing a core?
            cpu = publish_cpu(state_addr, ith)
            shared = shares_cpu(state_addr, ith, nth, cpu)
        if spins < limit and not shared:
            cpu_pause()
        else:
            cpu_yield()
        spins += 1
        g = atomic_load(gen_addr)
    return g & 1


@_jit
def run_nodes(kaddrs_addr, desc_base, ntasks_addr, sync_addr, i0, i1, state_addr, status_addr,
              ith, nth):
    """Run rows [i0, i1) of a node table as thread ith of nth, meeting at a barrier after
    each row whose sync word is nonzero (plan.barriers) and after the last one (so every
    thread's writes are done when any thread returns).

    Returns i1 when all ran, the row after which a kernel reported an error (every thread
    returns the same one; rows between a failing one and the next barrier, which do not
    depend on it, may have run), or -1 if the pool was aborted."""
    kaddrs = i64_array(kaddrs_addr, i1)
    ntasks = i64_array(ntasks_addr, i1)
    sync = i64_array(sync_addr, i1)
    row = DESC_LEN * 8
    stop = i1
    for i in range(i0, i1):
        if ith < ntasks[i]:
            call_kernel(kaddrs[i], desc_base + i * row, ith, nth)
        if nth > 1:
            if sync[i] == 0 and i + 1 < i1:
                continue
            verdict = barrier(state_addr, nth, status_addr, ith)
            if verdict < 0:
                return -1
        else:
            verdict = 1 if atomic_load(status_addr + S_CODE * 8) != 0 else 0
        if verdict != 0:
            return i
    return stop


@_jit
def run_job(job_addr, i0, i1, state_addr, ith, nth):
    """run_nodes on a table's job block."""
    job = i64_array(job_addr, JOB_LEN)
    return run_nodes(job[JOB_KADDRS], job[JOB_DESCS], job[JOB_NTASKS], job[JOB_SYNC], i0, i1,
                     state_addr, job[JOB_STATUS], ith, nth)


@_jit
def reset_status(job_addr):
    status = i64_array(i64_array(job_addr, JOB_LEN)[JOB_STATUS], S_NODE + 1)
    status[S_CODE] = 0
    status[S_NODE] = -1


@_jit
def post_job(state_addr, job_addr, i0, i1, posts_addr):
    """Publish a graph to the pool: job words first, then the sequence number (seq_cst).
    Also counts the post process-wide, which sends other pools' polling workers to sleep."""
    atomic_add(posts_addr, 1)
    publish_cpu(state_addr, 0)
    atomic_store(state_addr + J_JOB * 8, job_addr)
    atomic_store(state_addr + J_I0 * 8, i0)
    atomic_store(state_addr + J_I1 * 8, i1)
    return atomic_add(state_addr + W_SEQ * 8, 1) + 1


@_jit
def run_solo(job_addr, i0, i1, state_addr):
    """The caller alone (one thread, or rows of one task each): reset the status, run."""
    reset_status(job_addr)
    return run_job(job_addr, i0, i1, state_addr, 0, 1)


@_jit
def run_posted(job_addr, i0, i1, state_addr, nth, posts_addr):
    """The caller's whole compute in one call from Python (each call costs ~0.1 µs per
    argument): reset the status, post the graph, and run it as thread 0 when every worker
    is awake (polling); else return WAKE before running: the caller wakes them, then runs.
    The post's seq_cst add orders the job before the read of W_ACTIVE; a worker going to
    sleep lowers W_ACTIVE under a lock before it reads W_SEQ, so either it sees this post
    or the caller sees it asleep."""
    reset_status(job_addr)
    post_job(state_addr, job_addr, i0, i1, posts_addr)
    if atomic_load(state_addr + W_ACTIVE * 8) < nth - 1:
        return WAKE
    return run_job(job_addr, i0, i1, state_addr, 0, nth)


@_jit
def worker_loop(state_addr, ith, nth, seen, posts_addr, check_cpu):
    """A worker's life inside Numba: run each posted graph, poll for the next.

    Returns (last sequence number run, why): why 0 = polling timed out, the pool was aborted
    or another pool of the process posted (go to sleep); 1 = this thread polls on the CPU
    of the caller thread, which must run to post the next graph (move off, come back)."""
    while True:
        seq = atomic_load(state_addr + W_SEQ * 8)
        if seq != seen:
            seen = seq
            r = run_job(atomic_load(state_addr + J_JOB * 8),
                        atomic_load(state_addr + J_I0 * 8),
                        atomic_load(state_addr + J_I1 * 8), state_addr, ith, nth)
            if r < 0:
                return seen, 0
            continue
        # poll for the next graph (PAUSE); give up when the limit is reached, on abort, or
        # as soon as another pool of this process posts a graph (two polling pools would
        # fight over the cores with the one that works)
        limit = atomic_load(state_addr + W_POLL * 8)
        posts = atomic_load(posts_addr)
        spins = 0
        while atomic_load(state_addr + W_SEQ * 8) == seen:
            if spins >= limit or atomic_load(state_addr + W_ABORT * 8) != 0:
                return seen, 0
            if atomic_load(posts_addr) != posts and atomic_load(state_addr + W_SEQ * 8) == seen:
                return seen, 0
            if check_cpu != 0 and (spins & 255) == 0:
                cpu = publish_cpu(state_addr, ith)
                if cpu >= 0 and atomic_load(state_addr + (W_THREAD + T_CPU) * 8) == cpu:
                    return seen, 1
            cpu_pause()
            spins += 1


@_jit
def this_cpu():
    return current_cpu()


def _move_off(cpu: int) -> bool:
    """Leave `cpu` (the caller thread's) if this worker was woken up on it.

    Linux tends to wake a thread on the CPU of the thread that woke it; a worker sharing
    the caller's core makes every barrier a context switch (~3 µs/node instead of ~0.1).
    Briefly excluding that CPU from the thread's affinity moves it; the full mask is
    restored at once, so the scheduler stays free to balance later.
    Returns False when the thread is still on `cpu` (it cannot move)."""
    if cpu < 0 or this_cpu() != cpu:
        return True
    if not _CAN_MOVE:
        return False
    try:
        allowed = os.sched_getaffinity(0)
        if cpu in allowed and len(allowed) > 1:
            os.sched_setaffinity(0, allowed - {cpu})
            os.sched_setaffinity(0, allowed)
    except OSError:
        return False
    return this_cpu() != cpu


_CAN_MOVE = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


class NodeTable:
    """A graph lowered for the executor. Arrays are kept alive here; the loop sees addresses."""

    def __init__(self, nodes, graph_index, kernels, descs, n_tasks, status, wbuf, sync=None):
        self._addrs = None
        self.nodes = nodes                      # Tensor per row
        self.graph_index = list(graph_index)    # row -> index in gf.nodes (= desc[H_INDEX])
        self.kernels = kernels                  # Kernel per row (names for messages)
        addr = {}                               # one address lookup per distinct kernel
        self.kaddrs = np.ascontiguousarray(
            [addr[k] if k in addr else addr.setdefault(k, k.address) for k in kernels]
            if kernels else np.zeros(0), dtype=np.int64)
        self.descs = descs                      # int64[n, DESC_LEN]
        self.n_tasks = np.ascontiguousarray(n_tasks, dtype=np.int64)
        # 1: a barrier after the row (all rows unless the planner proved a row independent
        # of the next: plan.barriers)
        self.sync = np.ascontiguousarray(np.ones(len(nodes)) if sync is None else sync,
                                         dtype=np.int64)
        self.status = status                    # int64[STATUS_LEN]
        self.wbuf = wbuf                        # work buffer (uint8) or None
        self.n = len(nodes)
        self.max_tasks = int(self.n_tasks.max()) if self.n else 1
        self.snapshot = None                    # data locations the descriptors were packed from
        self.roots = None

    _ARRAYS = frozenset(("kaddrs", "descs", "n_tasks", "status", "sync"))

    def __setattr__(self, name, value):
        if name in NodeTable._ARRAYS:
            object.__setattr__(self, "_addrs", None)     # made again when next asked
        object.__setattr__(self, name, value)

    def _arrays(self):
        """The arrays' addresses and the job block (JOB_*) holding them, made once
        (ndarray.ctypes costs microseconds per call, on every compute of a kept graph; the
        arrays never move, but a caller may replace one: __setattr__ forgets them)."""
        a = self._addrs
        if a is None:
            addrs = (self.kaddrs.ctypes.data, self.descs.ctypes.data,
                     self.n_tasks.ctypes.data, self.status.ctypes.data, self.sync.ctypes.data)
            job = np.zeros(JOB_LEN, dtype=np.int64)
            job[[JOB_KADDRS, JOB_DESCS, JOB_NTASKS, JOB_STATUS, JOB_SYNC]] = addrs
            a = self._addrs = (self.kaddrs, self.descs, self.n_tasks, self.status, self.sync,
                               addrs, job, job.ctypes.data)
        return a

    @property
    def addrs(self):
        """(kaddrs, descs, n_tasks, status, sync) addresses: run_nodes' arguments."""
        return self._arrays()[5]

    @property
    def job_addr(self) -> int:
        """Address of the job block (run_job, run_posted)."""
        return self._arrays()[7]

    def reset_status(self) -> None:
        self.status[S_CODE] = 0
        self.status[S_NODE] = -1

    def error(self) -> Optional[ComputeError]:
        code = int(self.status[S_CODE])
        if code == 0:
            return None
        gi = int(self.status[S_NODE])          # desc[H_INDEX] of the failing node
        try:
            row = self.graph_index.index(gi)
        except ValueError:
            return ComputeError(f"a kernel failed (error {code}: {error_meaning(code)})")
        node, k = self.nodes[row], self.kernels[row]
        srcs = ", ".join(f"src[{j}]={describe(s)}" for j, s in enumerate(node.src) if s is not None)
        detail = ERROR_DETAILS.get(code)
        detail = detail(node) if detail is not None else ""
        return ComputeError(
            f"node {gi} {node.op_name} {describe(node)} ({srcs}) failed in numba kernel "
            f"{k.name!r}: error {code}: {error_meaning(code)}" + (f" -- {detail}" if detail else ""))


# ---------------------------------------------------------------------------------------------

class _Core:
    """State shared by the pool's threads (they hold this, not the pool, so the pool can be
    garbage-collected and finalized)."""

    def __init__(self, n_threads: int):
        self.n_threads = n_threads
        self.cond = threading.Condition()
        self.job = None                     # the posted table (kept alive while it runs)
        self.stop = False
        self.active = 0                     # workers inside Numba (running or polling)
        self.seen = [0] * n_threads         # last job sequence number each worker ran
        self.errors: list = []
        self.state = np.zeros(STATE_LEN, dtype=np.int64)
        self.state_addr = self.state.ctypes.data
        self.spin = spin_limit(n_threads)
        self.poll = poll_limit(n_threads)
        self.reset_state()
        self.threads: list[threading.Thread] = []

    def worker(self, ith: int) -> None:
        seen = 0
        st = self.state
        while True:
            with self.cond:
                while st[W_SEQ] == seen and not self.stop:
                    self.cond.wait()
                if self.stop:
                    return
                self.active += 1
                st[W_ACTIVE] = self.active
            try:
                check = 1
                while True:
                    if not _move_off(int(st[W_THREAD + T_CPU])):
                        check = 0              # cannot leave that CPU: do not ask again
                    seen, why = worker_loop(self.state_addr, ith, self.n_threads, seen,
                                            _POSTS_ADDR, check)
                    seen = int(seen)
                    if why != 1 or self.stop:
                        break
            except BaseException as e:  # noqa: BLE001 -- reported by the caller thread
                self.errors.append(e)
                st[W_ABORT] = 1
                seen = int(st[W_SEQ])
            finally:
                with self.cond:
                    self.active -= 1
                    st[W_ACTIVE] = self.active
                    self.seen[ith] = seen
                    self.cond.notify_all()

    def reset_state(self) -> None:
        """Barrier words back to rest (at start, or after an abort with every thread out);
        the job sequence number is kept (workers compare against it)."""
        seq = int(self.state[W_SEQ])
        self.state[:] = 0
        self.state[W_SEQ] = seq
        self.state[W_ACTIVE] = self.active
        self.state[W_SPIN] = self.spin
        self.state[W_POLL] = self.poll
        self.state[W_THREAD + T_CPU::8] = -1

    def wait_all_out(self) -> None:
        """Every worker has taken the last posted job and is back in Python."""
        seq = int(self.state[W_SEQ])
        with self.cond:
            while self.active > 0 or any(s != seq for s in self.seen[1:]):
                if self.stop and not any(t.is_alive() for t in self.threads):
                    return
                self.cond.wait(0.1)

    def shutdown(self) -> None:
        with self.cond:
            self.stop = True
            self.state[W_ABORT] = 1
            self.cond.notify_all()
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)
        self.threads = []


_LIVE_CORES: "weakref.WeakSet[_Core]" = weakref.WeakSet()
# forks of this process (a child inherits the pools but not their threads); a hook, because
# os.getpid() per compute is a system call
_FORKS = [0]


def _forked() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@atexit.register
def _shutdown_all() -> None:
    for core in list(_LIVE_CORES):
        core.shutdown()


class WorkerPool:
    """n_threads - 1 persistent worker threads plus the calling thread."""

    def __init__(self, n_threads: int):
        if not 1 <= n_threads <= MAX_THREADS:
            raise ValueError(f"n_threads must be in 1..{MAX_THREADS}, got {n_threads}")
        self.n_threads = int(n_threads)
        warm_up()
        self._start()

    def _start(self) -> None:
        self._forks = _FORKS[0]
        self._core = _Core(self.n_threads)
        self._run_lock = threading.Lock()
        for ith in range(1, self.n_threads):
            t = threading.Thread(target=self._core.worker, args=(ith,), daemon=True,
                                 name=f"pyggml-numba-{ith}")
            t.start()
            self._core.threads.append(t)
        _LIVE_CORES.add(self._core)
        self._finalizer = weakref.finalize(self, self._core.shutdown)

    @property
    def threads(self) -> list:
        return list(self._core.threads)

    def run(self, table: NodeTable, i0: int = 0, i1: Optional[int] = None) -> int:
        """Run rows [i0, i1) of table on all threads. Returns where the loop stopped (i1, or
        the row of the failing node: see table.error()). Thread-safe (one graph at a time)."""
        i1 = table.n if i1 is None else i1
        if i0 >= i1:
            return i1
        arrays = table._addrs or table._arrays()
        job = arrays[7]
        core = self._core
        nth = self.n_threads
        # single-task ranges (eval-callback mode, 1 thread) need no pool and no barriers
        if nth == 1 or table.max_tasks <= 1 or \
                (i1 - i0 < table.n and int(table.n_tasks[i0:i1].max()) <= 1):
            return _run_solo(job, i0, i1, core.state_addr)
        if self._forks != _FORKS[0]:
            # a forked child (multiprocessing, run_isolated) inherits the pool but not its
            # threads: the caller would wait forever at the first barrier. Start fresh ones.
            _LIVE_CORES.discard(core)
            self._finalizer.detach()
            self._start()
            core = self._core
        with self._run_lock:
            if core.stop:
                raise ComputeError("the worker pool was shut down")
            # what a worker may still read after the caller left the last barrier; not the
            # table itself, whose nodes would keep the graph's context alive until next run
            core.job = arrays
            try:
                r = _run_posted(job, i0, i1, core.state_addr, nth, _POSTS_ADDR)
                if r == WAKE:                # some workers sleep: wake them, then run
                    with core.cond:
                        core.cond.notify_all()
                    r = _run_job(job, i0, i1, core.state_addr, 0, nth)
            except BaseException:
                core.state[W_ABORT] = 1
                core.wait_all_out()
                core.reset_state()
                raise
            if r < 0 or core.errors:
                # a worker failed outside the kernels: wait for everyone, reset, report
                core.state[W_ABORT] = 1
                core.wait_all_out()
                errs, core.errors = core.errors, []
                core.reset_state()
                raise ComputeError(f"executor thread failed: {errs[0] if errs else 'aborted'}") \
                    from (errs[0] if errs else None)
            return r

    def close(self) -> None:
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"WorkerPool({self.n_threads} threads)"


_warm = False


def warm_up() -> None:
    """Compile (or load from the cache) the executor before threads call it concurrently."""
    global _warm
    if not _warm:
        z = np.zeros(STATE_LEN, dtype=np.int64)
        a = z.ctypes.data
        job = np.zeros(JOB_LEN + 8, dtype=np.int64)  # the job block, then its status words
        j = job.ctypes.data
        job[JOB_STATUS] = j + 8 * JOB_LEN
        posts = j + 8 * (JOB_LEN + 4)
        run_nodes(a, a, a, a, 0, 0, a, a, 0, 1)
        run_solo(j, 0, 0, a)
        run_job(j, 0, 0, a, 0, 1)
        this_cpu()
        z[W_POLL] = 0
        worker_loop(a, 1, 2, 0, posts, 1)            # returns at once: nothing posted
        z[W_ACTIVE] = 1
        run_posted(j, 0, 0, a, 2, posts)             # posts (seq 1), runs no rows
        global _run_solo, _run_posted, _run_job
        _run_solo, _run_posted, _run_job = map(_entry, (run_solo, run_posted, run_job))
        _warm = True


def _entry(fn):
    """The compiled all-int64 version of an njit function, called without the dispatcher's
    type resolution (a third of a small call's cost); the dispatcher itself when absent."""
    for sig, cres in getattr(fn, "overloads", {}).items():
        if all(t == numba.int64 for t in sig) and hasattr(cres, "entry_point"):
            return cres.entry_point
    return fn


_run_solo, _run_posted, _run_job = run_solo, run_posted, run_job
