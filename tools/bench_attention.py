"""Benchmark pyggml's flash attention (Numba backend) against real ggml, same process, same inputs.

    python tools/bench_attention.py [--threads 2] [--runs 10] [--only decode_f16_4k,...]

Cases (D=128, 32 query heads over 8 KV heads, as a Llama-style GQA layer):
  decode_f16_4k     one query over a 4k F16 KV cache              goal <= 0.5x ggml
  decode_f16_16k    one query over a 16k F16 KV cache             goal <= 0.5x ggml
  decode_q4_0_16k   one query over a 16k Q4_0 KV cache            goal <= 0.25x ggml's Q4_0
  with_state_16k    flash_attn_ext_with_state, hot 512 F16 + cold Q4_0 (16k in all)
                                                                  goal <= 0.3x ggml's F16 16k
  prompt_f16_512    512 queries over 512 F16 keys, causal mask    goal <= 1.0x ggml
--micro: instead, the CPU time per call of the micro-kernels a decode runs per 4-key group
(kernels/fa_simd.py: qk and pv, 4 query rows x 4 keys, D=128, over 4096 keys; the _blk
kernels, a 32-key block per call, per 4 keys of it), F16 rows vs Q4_0 rows, in this
process's PYGGML_SIMD mode: where a Q4_0 cache's time goes against F16's
(the 8-bit Q4_0 qk is the VNNI dot with AVX512-VNNI, else its hadd twin).
Times are medians of --runs computes, in alternating blocks of pyggml and ggml runs, each
side's threads quiet while the other runs (Numba compile time, cached on disk, is reported
separately); beside the wall times, the CPU time of the process (all threads) per compute,
steadier on a shared machine. Ratios are
pyggml / ggml: below 1 means pyggml is faster.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyggml as gg  # noqa: E402
from pyggml import data  # noqa: E402
from pyggml.attention import state as st  # noqa: E402
from pyggml.graph import CGraph  # noqa: E402
from pyggml.types import GGMLType as T  # noqa: E402

D, H, HKV = 128, 32, 8


def _fill(t, rng, lo=-1.0, hi=1.0):
    data.write(t, rng.uniform(lo, hi, size=t.ne[::-1]))


def _causal(n_kv, n_q, n_past):
    m = np.zeros((n_q, n_kv), dtype=np.float32)
    for i in range(n_q):
        m[i, n_past + i + 1:] = -np.inf
    return m


def build_fa(ctx, type_kv, n_kv, n_q, causal, prec, rng):
    q = gg.new_tensor_4d(ctx, T.F32, D, n_q, H, 1)
    k = gg.new_tensor_4d(ctx, type_kv, D, n_kv, HKV, 1)
    v = gg.new_tensor_4d(ctx, type_kv, D, n_kv, HKV, 1)
    m = gg.new_tensor_4d(ctx, T.F16, n_kv, n_q, 1, 1)
    for t in (q, k, v):
        _fill(t, rng)
    data.write(m, _causal(n_kv, n_q, n_kv - n_q) if causal else np.zeros((n_q, n_kv)))
    out = gg.flash_attn_ext(ctx, q, k, v, m, 1.0 / math.sqrt(D), 0.0, 0.0)
    gg.flash_attn_ext_set_prec(out, prec)
    return out


def build_ws(ctx, n_hot, n_cold, prec, rng):
    q = gg.new_tensor_4d(ctx, T.F32, D, 1, H, 1)
    kh = gg.new_tensor_4d(ctx, T.F16, D, n_hot, HKV, 1)
    vh = gg.new_tensor_4d(ctx, T.F16, D, n_hot, HKV, 1)
    kc = gg.new_tensor_4d(ctx, T.Q4_0, D, n_cold, HKV, 1)
    vc = gg.new_tensor_4d(ctx, T.Q4_0, D, n_cold, HKV, 1)
    for t in (q, kh, vh, kc, vc):
        _fill(t, rng)
    state = gg.flash_attn_state_new(ctx, H, 1, 1)
    out = gg.flash_attn_ext_with_state(ctx, q, kh, vh, None, kc, vc, None, state,
                                       1.0 / math.sqrt(D), 0.0, 0.0)
    gg.flash_attn_ext_set_prec(out, prec)
    return out, state


def _median_time(fn, runs, warm=2):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _interleaved(fns, runs, settles=None, block=5, warm=2):
    """Median wall and process-CPU time of each fn, in alternating blocks of `block` runs.

    The machine may be shared: alternating exposes every contender to the same background
    load, and the CPU time (all threads of this process, spinning included) is much less
    sensitive to it than the wall time. After each block the contender's `settle` quiets
    its threads (ggml's threadpool polls for work for a long while after a graph, pyggml's
    workers for ~3 ms), so no contender runs against the other's spinning threads."""
    settles = settles or [None] * len(fns)
    ts = [[] for _ in fns]
    cs = [[] for _ in fns]
    done = 0
    first = True
    while done < runs:
        n = min(block, runs - done)
        for i, f in enumerate(fns):
            for _ in range(warm if first else 1):     # untimed: threads awake, caches warm
                f()
            for _ in range(n):
                c0 = time.process_time()
                t0 = time.perf_counter()
                f()
                ts[i].append(time.perf_counter() - t0)
                cs[i].append(time.process_time() - c0)
            if settles[i] is not None:
                settles[i]()
        done += n
        first = False
    return [statistics.median(t) for t in ts], [statistics.median(c) for c in cs]


def _park_pyggml():
    time.sleep(0.01)         # pyggml's workers stop polling and sleep after ~3 ms


def pyggml_runner(out, backend, before=None):
    gf = CGraph(64)
    gf.expand(out)

    def run():
        if before is not None:
            before()
        backend.graph_compute(gf)
    return run


def ggml_runner(out, n_threads):
    """A mirror of out's graph in real ggml (kept alive by the closure) and its compute."""
    from pyggml.testing import ggml_lib as gl
    m = gl.Mirror([out])
    run = lambda: m.compute(n_threads)          # noqa: E731
    run.settle = m.pause
    return run


def micro(runs, reps=100, n_keys=4096):
    """Median CPU ns per call of the F16 and Q4_0 qk/pv micro-kernels (one decode group)."""
    import numba

    from pyggml import quants
    from pyggml.backends.numba_cpu.kernels import fa_simd
    from pyggml.backends.numba_cpu.kernels import simd
    nb = D // 32
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n_keys, D)).astype(np.float32)
    rows = {"f16": (x.astype(np.float16).view(np.uint8).copy(), 2 * D),
            "q4_0": (np.frombuffer(quants.quantize(T.Q4_0, x), np.uint8).copy(), 18 * nb)}
    qf = rng.uniform(-1, 1, 4 * D).astype(np.float32)
    qi8 = rng.integers(-127, 128, 4 * D).astype(np.int8)
    qdx = rng.uniform(0.001, 0.01, 4 * nb * 16).astype(np.float32)
    p = rng.uniform(0, 1, 1024).astype(np.float32)      # p rows 128 bytes apart, 16 offsets
    acc = np.zeros(4 * D, np.float32)
    out = np.zeros(4 * 32, np.float32)          # a block's scores: 4 rows of 32

    def loop(kern, kind):
        """An njit loop over the keys in groups of 4 (blk: blocks of 32 keys, one call each),
        calling kern as a decode does."""
        if kind == "qk":
            @numba.njit(inline="always")
            def one(k, s, q, qx, a, pp, o):
                kern(D, q, D * 4, k, k + s, k + 2 * s, k + 3 * s, o, 0)
        elif kind == "qk8":
            @numba.njit(inline="always")
            def one(k, s, q, qx, a, pp, o):
                kern(nb, q, D, qx, k, k + s, k + 2 * s, k + 3 * s, o, 0)
        elif kind == "qk_blk":
            @numba.njit(inline="always")
            def one(k, s, q, qx, a, pp, o):
                kern(D, q, D * 4, k, s, 8, o, 128, 0)
        elif kind == "qk8_blk":
            @numba.njit(inline="always")
            def one(k, s, q, qx, a, pp, o):
                kern(nb, q, D, qx, k, s, 8, o, 128, 0)
        elif kind == "pv_blk":
            @numba.njit(inline="always")
            def one(k, s, q, qx, a, pp, o):
                kern(D, a, D * 4, pp, 128, 0, k, s, 32)
        else:
            @numba.njit(inline="always")
            def one(k, s, q, qx, a, pp, o):
                kern(D, a, D * 4, pp, 128, 0, k, k + s, k + 2 * s, k + 3 * s)
        step = 32 if kind.endswith("blk") else 4

        @numba.njit
        def run(kb, s, q, qx, a, pp, o, reps):
            for _ in range(reps):
                for j in range(0, n_keys, step):
                    one(kb + j * s, s, q, qx, a, pp + (j % 32) * 16 if step == 4 else pp, o)
        return run

    cases = [("qk f16", "f16", loop(fa_simd.qk_4x4_f16, "qk"), qf),
             ("qk q4_0 (8-bit q)", "q4_0", loop(fa_simd.qk_4x4_q4_0_i8, "qk8"), qi8),
             ("pv f16", "f16", loop(fa_simd.pv_4x4_f16, "pv"), qf),
             ("pv q4_0", "q4_0", loop(fa_simd.pv_4x4_q4_0, "pv"), qf),
             ("qk_blk f16", "f16", loop(fa_simd.qk_blk_f16, "qk_blk"), qf),
             ("qk_blk q4_0 (8-bit)", "q4_0", loop(fa_simd.qk_blk_q4_0_i8, "qk8_blk"), qi8),
             ("pv_blk q4_0", "q4_0", loop(fa_simd.pv_blk_q4_0, "pv_blk"), qf)]

    def call(run, kind, q, n):
        buf, stride = rows[kind]
        run(buf.ctypes.data, stride, q.ctypes.data, qdx.ctypes.data, acc.ctypes.data, p.ctypes.data,
            out.ctypes.data, n)
    for _, kind, run, q in cases:
        call(run, kind, q, 1)                   # compile, warm
    ts = {name: [] for name, *_ in cases}
    for _ in range(runs):                       # alternating, so background load hits all alike
        for name, kind, run, q in cases:
            c0 = time.process_time()
            call(run, kind, q, reps)
            ts[name].append((time.process_time() - c0) / (reps * n_keys / 4) * 1e9)
    print(f"micro-kernels, {simd.VL} float lanes (PYGGML_SIMD={simd._MODE}): CPU ns per call "
          f"(4 rows x 4 keys, D={D}; _blk: per 4 keys of a 32-key call)")
    for name in ts:
        print(f"  {name:20s} {statistics.median(ts[name]):8.1f}")
    return {name: statistics.median(v) for name, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--only", default="")
    ap.add_argument("--prec", default="default", choices=("default", "f32"))
    ap.add_argument("--micro", action="store_true",
                    help="CPU time per call of the F16 / Q4_0 qk and pv micro-kernels instead")
    args = ap.parse_args(argv)
    if args.micro:
        return micro(args.runs)
    prec = gg.PREC_F32 if args.prec == "f32" else gg.PREC_DEFAULT
    only = {s for s in args.only.split(",") if s}
    from pyggml.testing import ggml_lib as gl
    have_ggml = gl.available()
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.numba_cpu.kernels import attention as ka
    t0 = time.perf_counter()
    ka.flash_attn_ext_kernel.kernel.address
    ka.flash_attn_ext_with_state_kernel.kernel.address
    print(f"numba kernels ready in {time.perf_counter() - t0:.2f} s "
          f"(compile or disk cache), {args.threads} threads, prec {args.prec}")
    be = NumbaBackend(args.threads)
    rng = np.random.default_rng(0)
    ctx = gg.init(mem_size=1 << 30)
    rows = []

    def fa(type_kv, n_kv, n_q=1, causal=False):
        return build_fa(ctx, type_kv, n_kv, n_q, causal, prec, rng)

    def ggml_run(out):
        return ggml_runner(out, args.threads) if have_ggml else (lambda: None)

    def no_reset():
        return None

    plan = [   # name, pyggml node (+ per-run setup), ggml reference node, goal
        ("decode_f16_4k", lambda: (fa(T.F16, 4096), None), lambda: fa(T.F16, 4096), 0.5),
        ("decode_f16_16k", lambda: (fa(T.F16, 16384), None), lambda: fa(T.F16, 16384), 0.5),
        ("decode_q4_0_16k", lambda: (fa(T.Q4_0, 16384), None), lambda: fa(T.Q4_0, 16384), 0.25),
        ("with_state_16k", lambda: build_ws(ctx, 512, 16384 - 512, prec, rng),
         lambda: fa(T.F16, 16384), 0.3),
        ("prompt_f16_512", lambda: (fa(T.F16, 512, 512, True), None),
         lambda: fa(T.F16, 512, 512, True), 1.0),
    ]
    print(f"{'case':18s} {'pyggml ms':>10s} {'ggml ms':>10s} {'ratio':>7s} {'goal':>6s}   "
          f"{'cpu ms: pyggml':>14s} {'ggml':>8s} {'ratio':>6s}")
    for name, make, make_ref, goal in plan:
        if only and name not in only:
            continue
        out, state = make()
        reset = (lambda s=state: st.reset_state(s)) if state is not None else None
        fns = [pyggml_runner(out, be, reset), ggml_run(make_ref())]
        if reset is not None:
            fns.append(reset)             # timed alone, subtracted from pyggml's time
        settles = [_park_pyggml, getattr(fns[1], "settle", None)] + [None] * (len(fns) - 2)
        ts, cs = _interleaved(fns, args.runs, settles)
        tp, tg = ts[0] - (ts[2] if reset is not None else 0.0), ts[1]
        cp, cg = cs[0] - (cs[2] if reset is not None else 0.0), cs[1]
        if not have_ggml:
            tg = cg = float("nan")
        ratio = tp / tg if tg == tg and tg > 0 else float("nan")
        cratio = cp / cg if cg == cg and cg > 0 else float("nan")
        ok = "ok" if ratio <= goal else "MISS"
        rows.append((name, tp, tg, ratio, goal, cp, cg, cratio))
        print(f"{name:18s} {tp * 1e3:10.2f} {tg * 1e3:10.2f} {ratio:7.2f} {goal:6.2f} {ok:4s} "
              f"{cp * 1e3:14.2f} {cg * 1e3:8.2f} {cratio:6.2f}", flush=True)
    be.free()
    return rows


if __name__ == "__main__":
    main()
