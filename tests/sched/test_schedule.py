"""The barrier schedule (backends/numba_cpu/schedule.py) against its rules written out plainly.

schedule() reads byte spans from the descriptors' slot words and walks rows in njit code; the
reference below is the same rule over Python tuples, one node at a time (the implementation
before it was vectorized). They must agree row for row on a decoder's decode and prompt graphs
(F16 and mixed caches: set_rows, flash attention with state, shared and per-thread work).
"""
from __future__ import annotations

import pytest

import pyggml as gg
from pyggml.attention.kv_cache import F16KVCache
from pyggml.attention.kv_cache import MixedKVCache
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.schedule import LOOKAHEAD
from pyggml.backends.numba_cpu.schedule import schedule
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.sched.alloc import alloc_graph
from pyggml.tensor import nbytes


def _reference(nodes, kernels, n_threads, work_addr):
    n = len(nodes)
    if n_threads <= 1 or n < 2:
        return list(range(n)), [1] * n
    private = work_addr % 64 == 0

    def span(t):
        return t.data_ptr, t.data_ptr + nbytes(t)

    def access(node, k):
        reads = [span(t) for t in node.src if t is not None]
        writes = [span(node)] + [span(node.src[w]) for w in node.op.writes
                                 if node.src[w] is not None]
        if k.private_work is not None:
            work = int(k.private_work(node, n_threads))
            if work > 0 and not private:
                work = -1
        else:
            work = -1 if k.work_size is not None else 0
        return reads, writes, work

    def overlap(a, b):
        return any(lo < hi2 and lo2 < hi for lo, hi in a for lo2, hi2 in b)

    info = [access(nd, k) for nd, k in zip(nodes, kernels)]
    pending, order, sync = list(range(n)), [], [1] * n
    while pending:
        j = pending.pop(0)
        reads, writes, g_work = info[j]
        seen_r, seen_w = list(reads), list(writes)
        order.append(j)
        idx = 0
        for _ in range(min(LOOKAHEAD, len(pending))):
            r = pending[idx]
            reads, writes, work = info[r]
            if (work == 0 or g_work == 0 or (work == g_work and work > 0)) and not (
                    overlap(reads, seen_w) or overlap(writes, seen_w) or
                    overlap(writes, seen_r)):
                sync[len(order) - 1] = 0
                order.append(pending.pop(idx))
                g_work = g_work or work
            else:
                idx += 1
            seen_r += reads
            seen_w += writes
    return order, sync


CFG = LlamaConfig(n_vocab=256, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256)


@pytest.fixture(scope="module")
def model():
    return LlamaModel.random(CFG)


@pytest.mark.parametrize("kind", ["f16", "mixed"])
@pytest.mark.parametrize("n_tokens", [1, 5])
def test_schedule_matches_the_plain_rule_on_decoder_graphs(model, kind, n_tokens):
    if kind == "mixed":
        cache = MixedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 256, hot_tokens=32,
                             max_batch=64)
    else:
        cache = F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 256)
    while cache.n_past < 40:                       # some cold tokens in the mixed cache
        cache.begin(8)
        cache.commit()
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 4096)
    cache.begin(n_tokens)
    model.build(ctx, gf, cache, n_tokens)
    alloc_graph(gf)
    be = NumbaBackend(1)
    sel = be.select(gf)
    rows = [i for i, k in enumerate(sel) if k is not None]
    nodes, kernels = [gf.nodes[i] for i in rows], [sel[i] for i in rows]
    groups = 0
    for n_threads, waddr in ((2, 0), (4, 64), (2, 8)):      # 8: per-thread regions shared
        order, sync = schedule(nodes, kernels, n_threads, waddr)
        want = _reference(nodes, kernels, n_threads, waddr)
        assert (order.tolist(), sync.tolist()) == want, (kind, n_tokens, n_threads, waddr)
        groups += len(sync) - int(sync.sum())
    assert groups > 0                              # rows were grouped: the walk was exercised
    assert schedule(nodes, kernels, 1, 0)[1].tolist() == [1] * len(nodes)
    cache.step = None
