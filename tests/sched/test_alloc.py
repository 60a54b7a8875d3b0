"""sched/alloc.py: the graph allocator's plan (every root's offset, the buffer's size) is
greedy first-fit in execution order, as written plainly here: the allocator's shortcuts
(no sort, the size inlined) must not change it."""
import heapq

import numpy as np
import pytest
from _models import small_cache

import pyggml as gg
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.sched.alloc import ALIGN
from pyggml.sched.alloc import alloc_graph
from pyggml.tensor import TENSOR_FLAG_INPUT
from pyggml.tensor import TENSOR_FLAG_OUTPUT
from pyggml.tensor import nbytes

CFG = LlamaConfig(n_vocab=64, n_embd=64, n_layer=3, n_head=2, n_head_kv=1, n_ff=96,
                  wtype="q8_0", n_ctx_train=256)


def _root(t):
    return t if t.view_src is None else t.view_src


def plain_plan(gf) -> tuple:
    """({root: offset}, size): the plan written plainly (no shortcut)."""
    order = gf.leafs + gf.nodes
    todo, pos, last = [], {}, {}
    for i, t in enumerate(order):
        if t.view_src is None:
            pos[t] = i
        for r in [_root(t)] + [_root(s) for s in t.src if s is not None]:
            if r._buffer is None and r not in todo:
                todo.append(r)
        for s in t.src:
            if s is not None and _root(s)._buffer is None:
                last[_root(s)] = i
    out_root = _root(gf.nodes[-1])
    free, live, top, plan = [], [], 0, {}          # free: [offset, size] in release order
    ranked = sorted((pos.get(t, -1), j, t) for j, t in enumerate(todo))
    for seq, (i, _, t) in enumerate(ranked):
        while live and live[0][0] < i:
            _, _, o, s = heapq.heappop(live)
            free.append([o, s])
        size = -(-max(nbytes(t), 1) // ALIGN) * ALIGN
        fit = [b for b in free if b[1] >= size]
        if fit:
            b = fit[0]
            o = b[0]
            b[0] += size
            b[1] -= size
            if b[1] == 0:
                free.remove(b)
        else:
            o, top = top, top + size
        plan[t] = o
        if not (t.flags & (TENSOR_FLAG_INPUT | TENSOR_FLAG_OUTPUT) or i < len(gf.leafs)
                or t is out_root):
            heapq.heappush(live, (last.get(t, i), seq, o, size))
    return plan, top


def _check(gf):
    want, size = plain_plan(gf)
    assert want
    assert alloc_graph(gf) == size
    assert {t: t._offs for t in want} == want
    assert all(t._buffer is want_t._buffer for t in want for want_t in want)
    assert next(iter(want))._buffer.size == size


@pytest.mark.parametrize("kind,n_tokens,past,n_out", [
    ("f16", 1, 20, None), ("mixed", 1, 40, None), ("mixed", 7, 30, 1), ("f16", 16, 0, None)])
def test_model_graphs_get_the_plain_first_fit_plan(kind, n_tokens, past, n_out):
    model = LlamaModel.random(CFG, seed=2)
    cache = small_cache(CFG, kind, past)
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 4096)
    cache.begin(n_tokens)
    model.build(ctx, gf, cache, n_tokens, n_outputs=n_out)
    _check(gf)
    cache.step = None


def _odd_graph(view_from=None):
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    x = gg.new_tensor_1d(ctx, gg.TYPE_F32, 96)
    gg.set_input(x)
    cur = x
    for k in range(12):
        n = (16, 96, 48, 200, 32, 96)[k % 6]
        y = gg.scale(ctx, gg.view_1d(ctx, cur, min(n, cur.ne[0]), 0), 0.5)
        y = gg.pad(ctx, y, max(0, n - y.ne[0]), 0, 0, 0)
        cur = gg.add(ctx, y, gg.scale(ctx, y, 2.0))
        if k % 5 == 4:
            gg.set_output(cur)
    gf = gg.new_graph_custom(ctx, 256)
    gg.build_forward_expand(gf, cur)
    if view_from is not None:           # no leafs; the first nodes' roots outside the order
        return gg.graph_view(gf, view_from, gf.n_nodes)
    gg.graph_add_node(gf, gf.nodes[5])
    gg.graph_add_node(gf, cur)
    return gf


@pytest.mark.parametrize("view_from", [None, 7])
def test_odd_graphs_get_the_plain_first_fit_plan(view_from):
    """Sizes that split blocks and fit blocks whole, inputs and outputs kept, a node added
    twice, roots outside the order (a graph view's)."""
    _check(_odd_graph(view_from))


def test_first_fit_is_the_first_block_large_enough():
    """The allocator's free-list search (exact sizes first) against its definition."""
    from pyggml.sched.alloc import first_fit
    rng = np.random.default_rng(7)
    for _ in range(2000):
        sizes = [int(x) * 64 for x in rng.integers(1, 6, rng.integers(0, 12))]
        size = int(rng.integers(1, 7)) * 64
        want = next((j for j, s in enumerate(sizes) if s >= size), -1)
        assert first_fit(sizes, size) == want, (sizes, size)
