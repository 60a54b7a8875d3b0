#!/usr/bin/env python
"""A decode step's mat-vec rows alone, in one thread's CPU time (so it holds on a loaded machine).

One pass = SmolLM2-135M's weights by shape (30 layers of Q4_1 rows: q 576, k 192, v 192,
o 576, gate and up 1536 of k=576, down 576 of k=1536; the Q8_0 49152x576 output: ~96 MB)
through simd's row dots in 16-row calls, chunked as matmul.row_chunk does for 2 threads.
Printed, in GB/s of the bytes this thread read (alternating rounds in one process):

  in order      every chunk in order: one thread, or one thread's own row segment
                (matmul.dyn_take: what each thread mostly streams now)
  alternate     every other chunk: what a thread got when one counter handed the chunks to
                two threads in turn (the dots' 4 KB prefetch then overshoots every chunk)
  read          a plain vectorized read of the same bytes (the memory side's limit)
  hot           the first 64 rows of k=576 again and again (L1/L2: the compute side's limit)
  old ...       with --ab: in order and hot through the per-row 256-bit dots

    python tools/bench_decode_rows.py [--rounds 4] [--ab]
    PYGGML_SIMD=avx2 python tools/bench_decode_rows.py --ab     (the AVX2 twin's A/B)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyggml.backends.numba_cpu.kernels import simd  # noqa: E402

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def _weights(rng):
    """[(address, rows, k, block bytes)] and the arrays that hold them."""
    mats, keep = [], []
    for rows, k in SHAPES * 30 + [(49152, 576)]:
        bs = 34 if rows == 49152 else 20
        w = rng.integers(0, 256, size=(rows, k // 32, bs), dtype=np.uint8)
        w[..., 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)    # finite scales
        if bs == 20:
            w[..., 2:4] = np.frombuffer(np.float16(-0.02).tobytes(), np.uint8)
        keep.append(w)
        mats.append((w.ctypes.data, rows, k, bs))
    return np.array(mats, np.int64), keep


def _acts(rng, k):
    nb = k // 32
    q = np.zeros(k + 64, np.int8)
    q[:k] = rng.integers(-127, 128, size=k, dtype=np.int8)
    d = (rng.random(nb) * 0.01).astype(np.float32)
    return q, d, (d * q[:k].reshape(nb, 32).sum(1)).astype(np.float32)


def _kernels(dot_q4_1, dot_q8_0):
    """_pass(mats, step, y, out, reps) over these two row dots (simd intrinsics)."""
    @numba.njit(nogil=True)
    def _rows(addr, k, bs, r0, r1, y, out):
        nb = k // 32
        rs = nb * bs
        yi = 0 if k == 576 else 1
        for rb in range(r0, r1, 16):
            n = min(16, r1 - rb)
            if bs == 20:
                dot_q4_1(n, nb, addr + rb * rs, rs, y[yi, 0], y[yi, 1], y[yi, 2], out)
            else:
                dot_q8_0(n, nb, addr + rb * rs, rs, y[yi, 0], y[yi, 1], y[yi, 2], out)

    @numba.njit(nogil=True)
    def _pass(mats, step, y, out, reps):
        """Chunks 0, step, 2 step, ... of every matrix (matmul.row_chunk for 2 threads), reps
        times; bytes read."""
        nbytes = 0
        for i in range(mats.shape[0] * reps):
            i %= mats.shape[0]
            addr, m, k, bs = mats[i, 0], mats[i, 1], mats[i, 2], mats[i, 3]
            c = (m + 31) // 32
            chunk = max(16, (c + 15) // 16 * 16)
            for u in range(0, (m + chunk - 1) // chunk, step):
                r0, r1 = u * chunk, min(m, (u + 1) * chunk)
                _rows(addr, k, bs, r0, r1, y, out)
                nbytes += (r1 - r0) * (k // 32) * bs
        return nbytes
    return _pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--ab", action="store_true",
                    help="also the per-row 256-bit dots (simd._q_dot_body: the AVX2 twin "
                         "before session 11's multi-row passes), in order and hot")
    args = ap.parse_args(argv)
    passes = {"": _kernels(simd.dot_q4_1, simd.dot_q8_0)}
    if args.ab:
        passes["old "] = _kernels(simd._intrinsic_n("bench_q4_1_256", 8, simd._q_dot_body("q4_1")),
                                  simd._intrinsic_n("bench_q8_0_256", 8, simd._q_dot_body("q8_0")))
    rng = np.random.default_rng(0)
    mats, keep = _weights(rng)
    acts = [_acts(rng, 576), _acts(rng, 1536)]
    y = np.array([[a.ctypes.data for a in t] for t in acts], np.int64)
    out = np.zeros(64, np.float32)
    flat = [w.reshape(-1).view(np.uint64) for w in keep]
    hot = mats[:1].copy()
    hot[0, 1] = 64

    def dots(p, step):
        return lambda: p(mats, step, y, out.ctypes.data, 1)

    def read():
        nbytes = 0
        for a in flat:
            _sum(a)
            nbytes += a.size * 8
        return nbytes

    def hot_dots(p):
        return lambda: p(hot, 1, y, out.ctypes.data, 20000)

    sides = {"in order": dots(passes[""], 1), "alternate": dots(passes[""], 2), "read": read,
             "hot": hot_dots(passes[""])}
    for tag, p in passes.items():
        if tag:
            sides[tag + "in order"] = dots(p, 1)
            sides[tag + "hot"] = hot_dots(p)
    for fn in sides.values():
        fn()
    res = {k: [] for k in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            c = time.thread_time()
            nbytes = sides[name]()
            res[name].append(nbytes / (time.thread_time() - c) / 1e9)
    print(f"one thread's CPU time; {int(mats[:, 1].dot(mats[:, 2] // 32 * mats[:, 3])) / 1e6:.1f} MB "
          f"per pass; load {os.getloadavg()[0]:.1f}")
    for name, v in res.items():
        v = sorted(v)
        print(f"  {name:14s} GB/s median {v[len(v) // 2]:6.2f}  max {v[-1]:6.2f}")
    return 0


@numba.njit(nogil=True, fastmath=True)
def _sum(a):
    s = np.uint64(0)
    for i in range(a.size):
        s += a[i]
    return s


if __name__ == "__main__":
    sys.exit(main())
