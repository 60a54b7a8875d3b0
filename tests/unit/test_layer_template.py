"""models/layer_template.py: layers stamped from the first give the graph the ops build
(every tensor's op, name, type, shape, strides, op_params, sources, view, flags; node and
leaf order; the allocator's offsets; the cache's inputs and the context's accounting), and
fall back to the ops where a layer differs or stamping could not give the same graph."""
import numpy as np
import pytest
from _models import small_cache

import pyggml as gg
from pyggml.models import layer_template
from pyggml.models import llama as llama_mod
from pyggml.models.llama import Decoder
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.sched.alloc import alloc_graph

CFG = LlamaConfig(n_vocab=64, n_embd=64, n_layer=4, n_head=2, n_head_kv=1, n_ff=96,
                  wtype="q8_0", n_ctx_train=256)


@pytest.fixture(scope="module")
def model():
    return LlamaModel.random(CFG, seed=1)


def _cache(kind, past=0):
    return small_cache(CFG, kind, past)


def _graph(model, kind, n_tokens, past, n_out=None, stamp=True, layers=None, cache=None,
           counts=None, monkeypatch=None):
    cache = cache or _cache(kind, past)
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 4096)
    cache.begin(n_tokens)
    if monkeypatch is not None:
        monkeypatch.setattr(LlamaModel, "stamp_layers", stamp)
    model.build(ctx, gf, cache, n_tokens, layers=layers, n_outputs=n_out)
    alloc_graph(gf)
    ref = {t: f"L{i}" for i, t in enumerate(gf.leafs)}
    ref.update({t: f"N{i}" for i, t in enumerate(gf.nodes)})

    def rec(t):
        root = t.view_src if t.view_src is not None else t
        return (t.op_name, t.name, int(t.type), list(t.ne), list(t.nb),
                np.asarray(t.op_params).tobytes(), t.flags,
                [None if s is None else ref.get(s, "?" + s.name) for s in t.src],
                None if t.view_src is None else (ref.get(t.view_src, "?" + t.view_src.name),
                                                 t.view_offs),
                (root._buffer.name, t.offs) if root._buffer is not None else None)

    out = dict(graph=[rec(t) for t in gf.leafs + gf.nodes],
               inputs=[(i.t.name, list(i.t.ne)) for i in cache.step_inputs()],
               ctx=(len(ctx.tensors), ctx.used),
               order=[t.name for t in ctx.tensors])
    cache.step = None
    return out


def _count_stamps(monkeypatch):
    n = [0]
    plain = layer_template.LayerTemplate.stamp

    def counted(self, *a):
        n[0] += 1
        return plain(self, *a)

    monkeypatch.setattr(layer_template.LayerTemplate, "stamp", counted)
    return n


@pytest.mark.parametrize("kind,n_tokens,past,n_out", [
    ("f16", 1, 20, None), ("mixed", 1, 40, None), ("f16", 8, 0, 1), ("mixed", 7, 30, 1),
    ("mixed", 16, 0, None)])
def test_stamped_graph_is_the_ops_graph(model, monkeypatch, kind, n_tokens, past, n_out):
    n = _count_stamps(monkeypatch)
    stamped = _graph(model, kind, n_tokens, past, n_out, True, monkeypatch=monkeypatch)
    # the last layer keeps only the output rows when n_out is set: built through the ops
    assert n[0] == CFG.n_layer - 1 - (n_out is not None)
    built = _graph(model, kind, n_tokens, past, n_out, False, monkeypatch=monkeypatch)
    assert n[0] == CFG.n_layer - 1 - (n_out is not None)
    assert stamped == built


def test_layer_subsets(model, monkeypatch):
    for layers in ([2, 0, 3], [1], [3, 3]):
        a = _graph(model, "mixed", 1, 40, None, True, layers, monkeypatch=monkeypatch)
        b = _graph(model, "mixed", 1, 40, None, False, layers, monkeypatch=monkeypatch)
        assert a == b


def test_a_layer_of_other_weight_types_is_built(monkeypatch):
    """Q4_K_M-style files vary a projection's type by layer: that layer (and only that one)
    goes through the ops; one lacking a weight the first has, too."""
    m = LlamaModel.random(CFG, seed=2)
    w = dict(m.w)
    w["blk.2.attn_v.weight"] = gg.from_numpy(m.ctx, np.ones((CFG.n_embd // 2, CFG.n_embd),
                                                            np.float32), type="f16")
    m2 = LlamaModel(CFG, w, m.ctx)
    n = _count_stamps(monkeypatch)
    a = _graph(m2, "f16", 1, 5, monkeypatch=monkeypatch)
    assert n[0] == CFG.n_layer - 2
    assert a == _graph(m2, "f16", 1, 5, stamp=False, monkeypatch=monkeypatch)
    assert a["graph"] != _graph(m, "f16", 1, 5, monkeypatch=monkeypatch)["graph"]
    # a weight replaced in place after a stamped build (the weight pairs kept are dropped)
    before = _graph(m, "f16", 1, 5, monkeypatch=monkeypatch)
    plain_v = m.w["blk.2.attn_v.weight"]
    m.w["blk.2.attn_v.weight"] = w["blk.2.attn_v.weight"]
    assert _graph(m, "f16", 1, 5, monkeypatch=monkeypatch) == a != before
    m.w["blk.2.attn_v.weight"] = plain_v
    w3 = dict(m.w)
    w3["blk.3.attn_q.bias"] = gg.from_numpy(m.ctx, np.ones(CFG.n_embd, np.float32))
    n[0] = 0
    a = _graph(LlamaModel(CFG, w3, m.ctx), "f16", 1, 5, monkeypatch=monkeypatch)
    assert n[0] == CFG.n_layer - 2
    assert a == _graph(LlamaModel(CFG, w3, m.ctx), "f16", 1, 5, stamp=False,
                       monkeypatch=monkeypatch)


class _PlainCache:
    """A cache without the layer-template API (a caller's own): every layer is built."""

    def __init__(self):
        self.c = _cache("f16", 3)

    def __getattr__(self, name):
        if name in ("layer_input", "layer_tensors"):
            raise AttributeError(name)
        return getattr(self.c, name)


def test_no_template_without_the_cache_api_or_room(model, monkeypatch):
    n = _count_stamps(monkeypatch)
    plain = _PlainCache()
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 4096)
    plain.begin(1)
    model.build(ctx, gf, plain, 1)
    plain.c.step = None
    assert n[0] == 0
    # a context with room for the first layer but not for the stamps: record declines, the
    # ops build the rest and raise the context's own error when it is full
    made = []
    plain_record = llama_mod.record

    def noted(*a):
        out = plain_record(*a)
        made.append(out[1])
        return out

    monkeypatch.setattr(llama_mod, "record", noted, raising=True)
    small = gg.init(mem_size=60 * gg.tensor_overhead(), no_alloc=True)
    cache = _cache("f16", 3)
    cache.begin(1)
    with pytest.raises(gg.GGMLError, match="context out of memory"):
        model.build(small, gg.new_graph_custom(None, 4096), cache, 1)
    assert made == [None] and n[0] == 0


def test_decoder_logits_bitwise(model):
    """A Decoder's logits (prompt, then decode steps past a block move) are bitwise those of
    graphs built through the ops, on both caches."""
    outs = {}
    for stamp in (True, False):
        LlamaModel.stamp_layers = stamp
        try:
            for kind in ("f16", "mixed"):
                d = Decoder(model, _cache(kind), gg.backend_reference_init())
                rows = [d.prefill(list(range(3, 40)), batch=16)]
                rows += [d.step([i % CFG.n_vocab]) for i in (5, 9, 31, 2)]
                outs[stamp, kind] = np.concatenate(rows)
        finally:
            LlamaModel.stamp_layers = True
    for kind in ("f16", "mixed"):
        assert outs[True, kind].tobytes() == outs[False, kind].tobytes()


def test_stamped_layers_replay_the_first_layers_appends(model, monkeypatch):
    """A stamped layer's expands are replayed from the first layer's noted appends (no walk
    over the layer); a replay that would append a node before its sources takes back what
    it appended and the layer is walked: the graph is the ops' graph either way."""
    built = _graph(model, "mixed", 1, 40, None, False, monkeypatch=monkeypatch)
    replays = []
    plain = layer_template.LayerTemplate._replay

    def noted(self, m, lmap):
        replays.append(plain(self, m, lmap))
        return replays[-1]

    monkeypatch.setattr(layer_template.LayerTemplate, "_replay", noted)
    assert _graph(model, "mixed", 1, 40, None, True, monkeypatch=monkeypatch) == built
    assert replays == [True] * (CFG.n_layer - 1)

    def scrambled(self, m, lmap):             # the last node noted before its first source
        added = list(self.added)
        k, j = max((i, min(added.index((True, s)) for s in t.src if (True, s) in added))
                   for i, (is_node, t) in enumerate(added)
                   if is_node and any((True, s) in added[:i] for s in t.src))
        assert j > 0                          # appends before it are taken back
        self.added = tuple(added[:j] + [added[k]] + added[j:k] + added[k + 1:])
        replays.append(plain(self, m, lmap))
        self.added = tuple(added)
        return replays[-1]

    replays.clear()
    monkeypatch.setattr(layer_template.LayerTemplate, "_replay", scrambled)
    assert _graph(model, "mixed", 1, 40, None, True, monkeypatch=monkeypatch) == built
    assert replays == [False] * (CFG.n_layer - 1)


def test_stamped_layers_replay_the_previous_layers_rest(model, monkeypatch):
    """The rest of a stamped layer (what the walk from its output appends) is replayed from
    the first layer's walk; a replay that would append a node before its sources takes back
    what it appended and the layer is walked: the graph is the ops' graph either way."""
    built = _graph(model, "mixed", 1, 40, None, False, monkeypatch=monkeypatch)
    walked = []
    plain = gg.CGraph.expand

    def noted(self, t):
        if t.name.startswith("l_out-"):
            walked.append(t.name)
        return plain(self, t)

    monkeypatch.setattr(gg.CGraph, "expand", noted)
    assert _graph(model, "mixed", 1, 40, None, True, monkeypatch=monkeypatch) == built
    assert walked == ["l_out-0"]            # noted once, then replayed
    plain_input = layer_template.LayerTemplate._expand_input

    def scrambled(self, inp):               # the rest's nodes in reverse: each before its sources
        tail = self.tail
        if tail is not None:
            self.tail = tail[::-1]          # nodes before their sources
        plain_input(self, inp)
        if tail is not None:
            self.tail = tail

    walked.clear()
    monkeypatch.setattr(layer_template.LayerTemplate, "_expand_input", scrambled)
    assert _graph(model, "mixed", 1, 40, None, True, monkeypatch=monkeypatch) == built
    assert walked == [f"l_out-{il}" for il in range(CFG.n_layer - 1)]
