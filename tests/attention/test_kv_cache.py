"""MixedKVCache: FIFO block moves, positions, masks, memory, and attention equal to the
attention over the whole (dequantized) cache."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.attention.kv_cache import BLOCK
from pyggml.attention.kv_cache import KV_PAD
from pyggml.attention.kv_cache import F16KVCache
from pyggml.attention.kv_cache import MixedKVCache
from pyggml.models.llama import Decoder
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel
from pyggml.testing.harness import nmse

SMALL = LlamaConfig(n_vocab=64, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)


def _backend():
    try:
        return gg.sched_new([gg.backend_numba_init(2), gg.backend_reference_init()])
    except Exception:
        return gg.backend_reference_init()


@pytest.fixture(scope="module")
def model():
    return LlamaModel.random(SMALL, seed=1)


def _run(model, cache, tokens, backend, batch=16):
    dec = Decoder(model, cache, backend)
    out = [dec.prefill(tokens[:batch * 2], batch=batch)]
    for t in tokens[batch * 2:]:
        out.append(dec.step([t]))
    return np.concatenate([o[-1:] for o in out])


def test_all_hot_equals_f16_cache(model):
    be = _backend()
    toks = np.random.default_rng(0).integers(0, SMALL.n_vocab, 44)
    mixed = MixedKVCache(SMALL.n_layer, SMALL.n_head_kv, SMALL.head_dim, 64, hot_tokens=64,
                         max_batch=16)
    a = _run(model, mixed, toks, be)
    assert mixed.cold_count == 0
    b = _run(model, F16KVCache(SMALL.n_layer, SMALL.n_head_kv, SMALL.head_dim, 64), toks, be)
    assert nmse(b, a) <= 1e-10


def test_small_hot_window_stays_close(model):
    be = _backend()
    toks = np.random.default_rng(1).integers(0, SMALL.n_vocab, 100)
    mixed = MixedKVCache(SMALL.n_layer, SMALL.n_head_kv, SMALL.head_dim, 128, hot_tokens=32,
                         max_batch=16)
    a = _run(model, mixed, toks, be)
    b = _run(model, F16KVCache(SMALL.n_layer, SMALL.n_head_kv, SMALL.head_dim, 128), toks, be)
    assert mixed.cold_count > 0
    # measured ~1e-3 with Q4_0 keys/values for 2/3 of the context; 2e-2 leaves room for seeds
    assert nmse(b, a) < 2e-2


def test_fifo_order_and_positions():
    c = MixedKVCache(1, 1, 32, 1024, hot_tokens=64, max_batch=8)
    rng = np.random.default_rng(0)
    n = 0
    while n < 900:
        k = int(rng.integers(1, 9))
        k = min(k, 1024 - n)
        st = c.begin(k)
        # every move is a whole block of the oldest hot tokens
        for j, (slot, cstart) in enumerate(st.moves):
            assert slot % BLOCK == 0 and cstart == c.cold_count + j * BLOCK
        c.commit()
        n += k
        hot, cold = c.hot_positions(), c.cold_positions()
        assert np.array_equal(np.concatenate([cold, hot]), np.arange(n))   # FIFO, nothing lost
        assert len(hot) >= min(n, 64) and len(hot) < 64 + BLOCK
        assert len(cold) % BLOCK == 0


def test_memory_at_4k_with_256_hot():
    c = MixedKVCache(4, 8, 128, 4096, hot_tokens=256, max_batch=32)
    nb = c.nbytes()
    assert nb["total"] == nb["hot"] + nb["cold"]
    assert nb["total"] <= 0.35 * nb["f16"]
    # real allocations: the cold store is Q4_0 (18 bytes per 32 values)
    assert all(t.type == gg.TYPE_Q4_0 for t in c.cold_k + c.cold_v)
    assert gg.nbytes(c.cold_k[0]) == (128 * 8 // 32) * 18 * (4096 - 256)


def test_append_beyond_ctx_raises_and_keeps_state():
    c = MixedKVCache(1, 1, 32, 64, hot_tokens=32, max_batch=64)
    c.begin(60)
    c.commit()
    before = (c.n_past, c.hot_count, c.cold_count, c.slot_pos.copy())
    with pytest.raises(gg.GGMLError, match="n_ctx"):
        c.begin(5)
    assert (c.n_past, c.hot_count, c.cold_count) == before[:3]
    assert np.array_equal(c.slot_pos, before[3])
    with pytest.raises(gg.GGMLError):
        MixedKVCache(1, 1, 20, 64)            # head_dim not a multiple of the Q4_0 block
    with pytest.raises(gg.GGMLError, match="begin"):
        MixedKVCache(1, 1, 32, 64).attention(gg.init(1 << 20, no_alloc=True), 0, None, 1.0)


def test_attention_equals_flash_attn_over_dequantized_cache():
    """One layer: with_state over hot ∪ cold == flash_attn_ext over the concatenated cache."""
    rng = np.random.default_rng(3)
    D, H, HQ, n_ctx = 32, 2, 4, 256
    c = MixedKVCache(1, H, D, n_ctx, hot_tokens=32, max_batch=16)
    be = _backend()
    n_done = 0
    for k in [16] * 6 + [1] * 3:
        st = c.begin(k)
        ctx = gg.init(mem_size=16 << 20, no_alloc=True)
        gf = gg.new_graph(ctx)
        kc = gg.new_tensor_3d(ctx, gg.TYPE_F32, D, H, k)
        vc = gg.new_tensor_3d(ctx, gg.TYPE_F32, D, H, k)
        q = gg.new_tensor_3d(ctx, gg.TYPE_F32, D, k, HQ)
        for t in (kc, vc, q):
            gg.set_input(t)
        c.store(ctx, gf, 0, kc, vc)
        o = c.attention(ctx, 0, q, 0.125, prec=gg.PREC_F32)
        gg.build_forward_expand(gf, o)
        be.alloc_graph(gf)
        for t in (kc, vc, q):
            gg.data.write(t, rng.uniform(-1, 1, t.ne[::-1]))
        c.set_inputs()
        be.graph_compute(gf)
        got = gg.to_numpy(o)
        # expected: flash_attn_ext over cold (dequantized) ++ hot, in position order; the cold
        # view spans cold_after rows padded to KV_PAD (the padding masked)
        ctx2 = gg.init(mem_size=32 << 20)
        hm = gg.data.read(c._masks[0])[0, 0]
        cm = gg.data.read(c._masks[1])[0, 0] if c._masks[1] is not None else np.zeros((k, 0))
        n_cold = cm.shape[1]
        assert n_cold == (min(c.cold_cap, -(-st.cold_after // KV_PAD) * KV_PAD)
                          if st.cold_after else 0)
        assert np.all(cm[:, st.cold_after:] == -np.inf)
        keys = np.concatenate([gg.data.read(c.cold_k[0])[0, 0, :n_cold],
                               gg.data.read(c.hot_k[0])[0, 0, :c.hot_cap]])   # not the sink row
        vals = np.concatenate([gg.data.read(c.cold_v[0])[0, 0, :n_cold],
                               gg.data.read(c.hot_v[0])[0, 0, :c.hot_cap]])
        mask = np.concatenate([cm, hm], axis=1)
        K = gg.from_numpy(ctx2, keys.reshape(-1, H, D).astype(np.float32))       # [D, H, n]
        V = gg.from_numpy(ctx2, vals.reshape(-1, H, D).astype(np.float32))
        Kp = gg.cont(ctx2, gg.permute(ctx2, K, 0, 2, 1, 3))                        # [D, n, H]
        Vp = gg.cont(ctx2, gg.permute(ctx2, V, 0, 2, 1, 3))
        M = gg.from_numpy(ctx2, mask.astype(np.float16))
        Q = gg.from_numpy(ctx2, gg.to_numpy(q))
        ref = gg.flash_attn_ext(ctx2, Q, Kp, Vp, M, 0.125, 0.0, 0.0)
        gg.flash_attn_ext_set_prec(ref, gg.PREC_F32)
        g2 = gg.new_graph(ctx2)
        gg.build_forward_expand(g2, ref)
        gg.backend_reference_init().graph_compute(g2)
        assert nmse(gg.to_numpy(ref), got) <= 5e-4
        c.commit()
        n_done += k
    assert c.cold_count > 0 and c.n_past == n_done


def _decoding_setup(kind: str, seed: int):
    """A 2-layer model, a factory of fresh caches of `kind` (320 tokens; mixed: 32 hot,
    batches up to 16) and a numba+reference scheduler."""
    cfg = LlamaConfig(n_vocab=64, n_embd=128, n_head=4, n_head_kv=2, n_layer=2, n_ff=128)
    model = LlamaModel.random(cfg, seed=seed)

    def cache():
        if kind == "mixed":
            return MixedKVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, 320, hot_tokens=32,
                                max_batch=16)
        return F16KVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, 320)
    return cfg, model, cache, gg.sched_new([gg.backend_numba_init(2), gg.backend_reference_init()])


@pytest.mark.parametrize("kind", ["mixed", "f16"])
def test_decoder_graph_reuse_is_exact(kind):
    """Reusing a step's graph for later steps with the same graph_key() (llama.cpp's graph
    reuse) gives bitwise the logits of building every step, across block moves and KV_PAD
    boundaries, and builds only when the key changes. Two decoders on one scheduler
    alternate without re-planning each other's graphs."""
    cfg, model, cache, be = _decoding_setup(kind, seed=1)
    fresh = Decoder(model, cache(), be, reuse_graphs=False)
    reuse = Decoder(model, cache(), be)
    toks = list(np.random.default_rng(0).integers(0, cfg.n_vocab, 290))
    a = fresh.prefill(toks[:40], batch=16)
    b = reuse.prefill(toks[:40], batch=16)
    assert np.array_equal(a, b)
    for t in toks[40:]:                     # crosses n_kv = 256 and many 32-token moves
        assert np.array_equal(fresh.step([t]), reuse.step([t]))
    n_steps = 3 + len(toks) - 40
    assert fresh.n_builds == n_steps
    assert reuse.n_builds < n_steps / 4, reuse.n_builds
    other = Decoder(model, cache(), be)
    other.prefill(toks[:40], batch=16)
    for t in toks[:2]:
        reuse.step([t])
        other.step([t])
    lowerings = be.backends[0].n_lowerings
    done = 0
    for t in toks[:6]:          # alternating decoders, no moves due: nothing lowered again
        if kind == "mixed" and (reuse.cache.plan_moves(1) or other.cache.plan_moves(1)):
            break
        reuse.step([t])
        other.step([t])
        done += 1
    assert done >= 3 and be.backends[0].n_lowerings == lowerings


@pytest.mark.parametrize("kind", ["mixed", "f16"])
def test_prompts_run_on_a_few_padded_graphs(kind):
    """Prompts of any length run in micro-batches of a fixed size, a shorter last one padded
    to a power of two (masked tokens writing the sink row): graphs are reused across
    prompts, logits are bitwise those of building every step, and the cache ends up as an
    unpadded run leaves it (same positions; logits of the next steps agree to rounding)."""
    cfg, model, cache, be = _decoding_setup(kind, seed=2)
    rng = np.random.default_rng(3)
    fresh = Decoder(model, cache(), be, reuse_graphs=False)
    reuse = Decoder(model, cache(), be)
    plain = Decoder(model, cache(), be, reuse_graphs=False)
    n_past = 0
    for n_prompt in (37, 45, 35, 19, 40):          # turns of one conversation
        toks = list(rng.integers(0, cfg.n_vocab, n_prompt + 3))
        a = fresh.prefill(toks[:n_prompt], batch=16)
        b = reuse.prefill(toks[:n_prompt], batch=16)
        c = plain.prefill(toks[:n_prompt], batch=16, pad=False)
        assert a.shape == c.shape == (n_prompt - 16 * ((n_prompt - 1) // 16), cfg.n_vocab)
        assert np.array_equal(a, b)
        assert nmse(c, a) < 1e-10
        for t in toks[n_prompt:]:
            la, lb, lc = fresh.step([t]), reuse.step([t]), plain.step([t])
            assert np.array_equal(la, lb) and nmse(lc, la) < 1e-10
        n_past += n_prompt + 3
        assert reuse.cache.n_past == plain.cache.n_past == n_past
        if kind == "mixed":
            assert np.array_equal(reuse.cache.hot_positions(), plain.cache.hot_positions())
            assert np.array_equal(reuse.cache.cold_positions(), plain.cache.cold_positions())
    # 5 prompts with tails of 5, 13, 3, 3 and 8 tokens: graphs of 16, 8, 16, 4 tokens
    # (with or without a block move, per KV_PAD span) and the decode steps, not one per step
    assert reuse.n_builds <= fresh.n_builds / 3, (reuse.n_builds, fresh.n_builds)
    with pytest.raises(gg.GGMLError, match="n_pad"):
        cache().begin(5, n_pad=4)


def test_padded_views_mask_the_padding():
    c = F16KVCache(1, 1, 32, 600)
    c.begin(5)
    assert c.graph_key() == (5, KV_PAD)
    m = np.zeros((5, KV_PAD), np.float32)       # the mask input's view [n_pad, n_kv]
    c._fill_kq_mask(m)
    assert np.all(m[:, 5:] == -np.inf) and np.all(np.isfinite(np.diag(m[:, :5])))
    c.commit()
    c.n_past = 590
    c.begin(1)
    assert c.graph_key() == (1, c.cap)          # padding stops at the store's capacity


@pytest.mark.parametrize("n_past, n_tokens, n_pad, first, end", [
    (0, 5, 8, 0, None), (40, 1, 1, 0, None), (40, 1, 1, 64, None), (100, 1, 1, 64, None),
    (100, 3, 4, 64, 96), (70, 20, 32, 64, None), (70, 20, 32, 0, 32), (130, 20, 20, 64, 128)])
def test_prefix_mask_is_the_general_mask(n_past, n_tokens, n_pad, first, end):
    """_fill_prefix_mask (keys in position order from `first`, the F16 cache's and the
    shards' masks, per-row slices for a decode) writes what _fill_mask writes for those key
    positions, visible below `end` (None: every key stored by the step)."""
    c = F16KVCache(1, 1, 32, 1024)
    c.n_past = n_past
    c.begin(n_tokens, n_pad)
    end = n_past + n_tokens if end is None else end
    kpos = first + np.arange(KV_PAD)
    want, got = (np.full((n_pad, KV_PAD), 7.0, np.float16) for _ in range(2))
    c._fill_mask(want, kpos, kpos < end)
    c._fill_prefix_mask(got, first, end)
    assert np.array_equal(got, want)
    assert (want == 0).any() or first >= n_past + n_tokens or end <= first


def test_moved_blocks_are_ggmls_quantization_of_the_hot_rows():
    """A block move (get_rows of the hot F16 rows, set_rows into the Q4_0 store) writes
    exactly the bytes ggml's quantizer makes of those rows, on both backends."""
    cfg = LlamaConfig(n_vocab=64, n_embd=128, n_head=4, n_head_kv=2, n_layer=1, n_ff=128)
    model = LlamaModel.random(cfg, seed=2)
    for be in (gg.backend_reference_init(), gg.backend_numba_init(2)):
        c = MixedKVCache(1, cfg.n_head_kv, cfg.head_dim, 256, hot_tokens=32, max_batch=16)
        dec = Decoder(model, c, be)
        n_checked = 0
        for t in range(150):
            moves = c.plan_moves(1)
            before = [gg.data.read(x)[0, 0].astype(np.float32) for x in (c.hot_k[0], c.hot_v[0])]
            dec.step([t % cfg.n_vocab])
            for (slot, cstart) in moves:
                for hot_vals, cold in zip(before, (c.cold_k[0], c.cold_v[0])):
                    want = gg.quantize(gg.TYPE_Q4_0, hot_vals[slot:slot + BLOCK].ravel())
                    rows = gg.data.row_bytes(cold).reshape(cold.ne[1], -1)
                    got = rows[cstart:cstart + BLOCK].tobytes()
                    assert got == bytes(want)
                n_checked += 1
        assert n_checked >= 3


@pytest.mark.parametrize("kind", ["mixed", "f16"])
def test_decoder_last_logits_only(kind):
    """all_logits=False (llama.cpp's default: inp_out_ids picks the last token's row before
    the last layer's FFN and the output) gives the last row of the all-rows logits, padded
    micro-batches included; the graphs built for it have fewer mul_mat rows."""
    cfg, model, cache, be = _decoding_setup(kind, seed=2)
    full = Decoder(model, cache(), be)
    last = Decoder(model, cache(), be)
    toks = list(np.random.default_rng(3).integers(0, cfg.n_vocab, 60))
    a = full.prefill(toks[:45], batch=16)            # 16 + 16 + 13 padded to 16
    b = last.prefill(toks[:45], batch=16, all_logits=False)
    assert a.shape == (13, cfg.n_vocab) and b.shape == (1, cfg.n_vocab)
    assert np.allclose(a[-1:], b, rtol=0, atol=1e-5)
    out = gg.graph_get_tensor(last.last_graph, "result_output")
    assert out.ne[1] == 1 and gg.graph_get_tensor(last.last_graph, "inp_out_ids") is not None
    for t in toks[45:]:
        assert np.allclose(full.step([t])[-1:], last.step([t], all_logits=False),
                           rtol=0, atol=1e-5)
