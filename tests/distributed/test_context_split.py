"""Context split without Ray: the sharded cache and the in-graph LSE merge in one process
(the Ray tests run the same graphs with the shards on workers)."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml.attention import merge
from pyggml.attention.kv_cache import F16KVCache
from pyggml.distributed import ShardedKVCache
from pyggml.distributed import lse_merge
from pyggml.errors import ShapeError
from pyggml.models.llama import Decoder
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.testing.harness import nmse

CFG = LlamaConfig(n_vocab=96, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)


def _sched():
    return gg.sched_new([gg.backend_cpu_init(1), gg.backend_reference_init()])


def _logits(cache) -> np.ndarray:
    dec = Decoder(LlamaModel.random(CFG, seed=5), cache, _sched())
    ids = list(np.random.default_rng(2).integers(0, CFG.n_vocab, 70))
    out = [dec.prefill(ids, batch=16)] + [dec.step([t]) for t in (1, 2, 3)]
    return np.concatenate(out)


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_sharded_cache_equals_one_cache_f32(n_shards):
    ref = _logits(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 96, type="f32"))
    cache = ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 96, n_shards, "f32")
    got = _logits(cache)
    assert nmse(ref, got) <= 1e-12
    assert cache.n_past == 73


def test_sharded_cache_cold_shards():
    # older shards quantized (Q8_0), the newest F16: attention still spans every shard
    ref = _logits(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 96))
    got = _logits(ShardedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, 96, 3,
                                 ["q8_0", "q8_0", "f16"]))
    assert nmse(ref, got) <= 1e-3
    with pytest.raises(ShapeError, match="2 shard types for 3 shards"):
        ShardedKVCache(2, 2, 32, 96, 3, ["f16", "f16"])
    with pytest.raises(ShapeError, match="multiple of 32 for a q4_0 shard"):
        ShardedKVCache(2, 2, 16, 96, 2, "q4_0")


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
