"""Where one decode token's time goes, and the executor's barrier/spin settings A/B.

    python tools/bench_decode_split.py [-m smollm2-135m] [-t 2] [-n 48] [--rounds 4]

1. Per token through Llama.eval (after a warm-up, so the kept graph is reused): wall time of
   the whole step, of the executor run (WorkerPool.run) and what is left (Python: cache
   inputs, graph key, logits copy), the caller thread's CPU time, and graphs built.
2. The step's node table run on one thread, no barriers (run_nodes): the kernels' CPU time.
   Then per row each thread's share run alone on this thread (ith 0, then 1, of nth): the
   row's work per kernel and its imbalance, max share - mean share (what a thread waits at
   the row's barrier, load aside), summed per token. Rows that hand out chunks from a
   counter (the decode mat-vecs) give every chunk to the first caller here: they are
   listed as dynamic, their wait is at most a chunk.
3. Alternating rounds in one process, so machine load hits every side alike: the same model
   with ggml's rule (a barrier after every row) vs the planner's (plan.schedule), with
   the old spin limit (1 << 18 PAUSEs before yielding) vs the current one, and lowered
   without the backend's fusion (fusion.py: ADD + RMS_NORM + MUL, mat-vecs + SWIGLU). Wall and
   process CPU time per token (CPU time counts both threads, spinning included).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _llm(model, threads, n_ctx, fuse=True):
    from pyggml.llm import Llama
    llm = Llama(model, n_ctx=n_ctx, n_threads=threads, verbose=False)
    llm._backend.backends[0].fusion = fuse          # False: lowered without fusion.py's pairs
    llm.eval([1])
    llm.eval([2])                       # the decode graph is built and lowered
    return llm


def _table(llm):
    return llm._backend.backends[0].table(llm._decoder.last_graph)


def split(model, threads, n) -> None:
    from pyggml.backends.numba_cpu.executor import run_nodes
    llm = _llm(model, threads, n + 16)
    be = llm._backend.backends[0]
    runs, run_cpus = [], []
    orig = be.pool.run

    def timed(tab, i0=0, i1=None):
        t, c = time.perf_counter(), time.thread_time()
        r = orig(tab, i0, i1)
        run_cpus.append(time.thread_time() - c)
        runs.append(time.perf_counter() - t)
        return r
    be.pool.run = timed
    rng = np.random.default_rng(0)
    steps, cpus = [], []
    builds = llm._decoder.n_builds
    for _ in range(n):
        tok = int(rng.integers(0, llm.n_vocab()))
        t, c = time.perf_counter(), time.thread_time()
        llm.eval([tok])
        steps.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - c)
    be.pool.run = orig
    rest = [s - r for s, r in zip(steps, runs)]
    rest_cpu = [s - r for s, r in zip(cpus, run_cpus)]
    tab = _table(llm)
    kaddrs, descs, ntasks, status, sync = tab.addrs
    state = np.zeros(4096, dtype=np.int64)
    one = []
    for _ in range(10):
        c = time.thread_time()
        run_nodes(kaddrs, descs, ntasks, sync, 0, tab.n, state.ctypes.data, status, 0, 1)
        one.append(time.thread_time() - c)
    med = statistics.median
    print(f"per decode token, {threads} threads, load {os.getloadavg()[0]:.1f} (medians, ms):")
    print(f"  step (Llama.eval)         {med(steps) * 1e3:8.3f}   caller CPU {med(cpus) * 1e3:.3f}")
    print(f"  executor (pool.run)       {med(runs) * 1e3:8.3f}")
    print(f"  Python around it          {med(rest) * 1e3:8.3f}   caller CPU {med(rest_cpu) * 1e3:.3f}"
          f"   (cache inputs, key, logits)")
    print(f"  graphs built while timed  {llm._decoder.n_builds - builds}")
    print(f"  kernels, 1 thread, CPU    {med(one) * 1e3:8.3f}   ({tab.n} rows, "
          f"{int(tab.sync.sum())} barriers at {threads} threads)")
    balance(llm, threads)


_DYNAMIC = ("mul_mat", "mul_mat_swiglu")    # decode rows taken in chunks from a counter


def _shares():
    import numba

    from pyggml.backends.numba_cpu.intrinsics import call_kernel

    @numba.njit
    def shares(kaddr, desc, ith, nth, reps):
        for _ in range(reps):
            call_kernel(kaddr, desc, ith, nth)
    return shares


def balance(llm, threads, reps=20) -> None:
    """Per row, each thread's share timed alone (thread CPU time, reps calls); summed per
    kernel: the work, and the imbalance max - mean over the threads' shares."""
    from pyggml.backends.numba_cpu.desc import DESC_LEN
    tab = _table(llm)
    shares = _shares()
    base = tab.descs.ctypes.data
    work, wait, count = {}, {}, {}
    shares(int(tab.kaddrs[0]), base, 0, 1, 1)          # compiles the caller, not timed
    for i in range(tab.n):
        k = tab.kernels[i]
        nth = int(min(threads, tab.n_tasks[i]))
        t = []
        for ith in range(nth):
            c = time.thread_time()
            shares(int(tab.kaddrs[i]), base + i * DESC_LEN * 8, ith, nth, reps)
            t.append((time.thread_time() - c) / reps)
        name = k.name
        work[name] = work.get(name, 0.0) + sum(t)
        count[name] = count.get(name, 0) + 1
        if name not in _DYNAMIC:
            wait[name] = wait.get(name, 0.0) + max(t) - sum(t) / threads
    print(f"per row, each thread's share alone ({reps} calls, thread CPU, load "
          f"{os.getloadavg()[0]:.1f}; us per token):")
    print(f"  {'kernel':26s} {'rows':>5s} {'work':>9s} {'wait':>8s}")
    for name in sorted(work, key=work.get, reverse=True):
        w = f"{wait[name] * 1e6:8.1f}" if name in wait else "dynamic"
        print(f"  {name:26s} {count[name]:5d} {work[name] * 1e6:9.1f} {w:>8s}")
    print(f"  {'total':26s} {tab.n:5d} {sum(work.values()) * 1e6:9.1f} "
          f"{sum(wait.values()) * 1e6:8.1f}")


def ab(model, threads, n, rounds) -> None:
    from pyggml.backends.numba_cpu.executor import W_SPIN
    sides = {"every row, spin 1<<18": (True, 1 << 18, True),
             "planner, spin 1<<18": (False, 1 << 18, True),
             "planner, spin now": (False, None, True),
             "planner, spin now, unfused": (False, None, False)}
    llms = {}
    for name, (all_rows, spin, fuse) in sides.items():
        llm = llms[name] = _llm(model, threads, n + 16, fuse)
        if all_rows:
            _table(llm).sync[:] = 1
        if spin is not None:
            core = llm._backend.backends[0].pool._core
            core.spin = core.state[W_SPIN] = spin
    rng = np.random.default_rng(0)
    wall = {k: [] for k in sides}
    cpu = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            llm = llms[name]
            llm.reset()
            llm.eval([1])
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                llm.eval([int(rng.integers(0, llm.n_vocab()))])
            wall[name].append((time.perf_counter() - t) / n * 1e3)
            cpu[name].append((time.process_time() - c) / n * 1e3)
    print(f"A/B, {rounds} alternating rounds of {n} tokens, load {os.getloadavg()[0]:.1f} "
          f"(ms per token: median wall [min], median process CPU):")
    for name in names:
        print(f"  {name:28s} {statistics.median(wall[name]):8.2f} [{min(wall[name]):7.2f}]"
              f" {statistics.median(cpu[name]):8.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=48, help="tokens per measurement")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    split(args.model, args.threads, args.n)
    if args.rounds:
        ab(args.model, args.threads, args.n, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
