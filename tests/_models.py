"""Small-model helpers the test folders share (imported as `_models`: pytest puts tests/ on
sys.path for its conftest.py)."""
from __future__ import annotations

from pyggml.attention.kv_cache import F16KVCache
from pyggml.attention.kv_cache import MixedKVCache


def small_cache(cfg, kind, past=0, n_ctx=256):
    """A KV cache for cfg's model: "mixed" (32 hot tokens, batches up to 32) or F16, with
    `past` tokens already committed (in batches of up to 16)."""
    if kind == "mixed":
        c = MixedKVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, n_ctx, hot_tokens=32,
                         max_batch=32)
    else:
        c = F16KVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, n_ctx)
    while c.n_past < past:
        c.begin(min(16, past - c.n_past))
        c.commit()
    return c
