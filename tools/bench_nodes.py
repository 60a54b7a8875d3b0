"""Where a model step's compute time goes: CPU time of each node of the lowered table, summed
by op (and by weight for MUL_MAT / GET_ROWS), one thread.

Each row of the step's node table is run alone through the executor loop (run_nodes over
[i, i+1), one thread, no barriers), -r times, timed with process_time: single-threaded CPU
time, which other processes on a shared machine disturb far less than wall time. The sum is
the step's 1-thread compute cost; the graph's build, allocation and lowering are not in it
(tools/bench_graph.py measures those). A node repeated alone runs with its weights in the
CPU caches when they fit (a SmolLM2 FFN matrix: 0.55 MB), so memory-bound steps (decode:
every weight streamed from DRAM once per token) look faster here than in a real step;
prompt steps (compute-bound) are measured fairly.

    python tools/bench_nodes.py [-m smollm2-135m] [-n 32] [-r 5] [--top 20]

-n is the step's token count: 32 = llama-bench's pp32 (one batch, last token's logits only),
1 = one decode step (after a prompt of --past tokens).
"""
from __future__ import annotations

import argparse
import collections
import re
import time

import numpy as np


def node_times(model: str, n_tokens: int, past: int, reps: int):
    """[(label, seconds per run)] for every row of the step's lowered table."""
    from pyggml.backends.numba_cpu.executor import run_nodes
    from pyggml.llm.llama import Llama
    llm = Llama(model, n_ctx=past + n_tokens + 1, n_batch=max(n_tokens, past, 1),
                n_threads=1, verbose=False)
    rng = np.random.default_rng(0)
    if past:
        llm.eval(rng.integers(0, llm.n_vocab(), past).tolist())
    llm.eval(rng.integers(0, llm.n_vocab(), n_tokens).tolist())
    gf = llm._decoder.last_graph
    tab = llm._backend.backends[0].table(gf)
    kaddrs, descs, ntasks, status, sync = tab.addrs
    state = np.zeros(4096, dtype=np.int64)
    out = []
    for i in range(tab.n):
        run_nodes(kaddrs, descs, ntasks, sync, i, i + 1, state.ctypes.data, status, 0, 1)
        c0 = time.process_time()
        for _ in range(reps):
            run_nodes(kaddrs, descs, ntasks, sync, i, i + 1, state.ctypes.data, status, 0, 1)
        node = tab.nodes[i]
        label = node.op_name
        if node.op_name in ("MUL_MAT", "GET_ROWS"):
            w = node.src[0]
            label += f" {re.sub(r'blk[.][0-9]+[.]', '', w.name) or '(activation)'} {w.type.tname}"
        out.append((label, (time.process_time() - c0) / reps))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-n", "--tokens", type=int, default=32)
    ap.add_argument("--past", type=int, default=0, help="tokens in the cache before the step")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    rows = node_times(args.model, args.tokens, args.past, args.repetitions)
    by = collections.defaultdict(lambda: [0.0, 0])
    for label, s in rows:
        by[label][0] += s
        by[label][1] += 1
    total = sum(s for _, s in rows)
    print(f"{args.model}: step of {args.tokens} token(s) after {args.past}: {len(rows)} rows, "
          f"{total * 1e3:.1f} ms CPU on 1 thread (sum of nodes, process_time)")
    print(f"{'op':44s} {'nodes':>5s} {'ms':>8s} {'%':>6s} {'µs/node':>9s}")
    for label, (s, c) in sorted(by.items(), key=lambda x: -x[1][0])[:args.top]:
        print(f"{label:44s} {c:5d} {s * 1e3:8.2f} {100 * s / total:6.1f} {s / c * 1e6:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
