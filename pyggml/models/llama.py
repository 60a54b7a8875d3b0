"""A small llama-style decoder built from pyggml ops, as llama.cpp's llm_build_llama builds it.

Weights are deterministic random by seed, or read from a GGUF file (llama.cpp tensor names).
Attention goes through a KV cache object (MixedKVCache or F16KVCache), which owns positions,
masks and the move of old tokens to the cold store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import numpy as np

import pyggml as gg
from ..context import Context
from ..errors import GGMLError
from ..graph import gc_paused
from ..tensor import Tensor, set_name, set_input, set_output
from ..types import GGMLType, as_type


@dataclass
class LlamaConfig:
    n_vocab: int = 512
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 8
    n_head_kv: int = 2
    n_ff: int = 768
    rope_base: float = 10000.0
    n_ctx_train: int = 4096
    eps: float = 1e-5
    wtype: str = "q4_0"          # type of the projection weights
    etype: str = "q8_0"          # type of the token embeddings

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class LlamaModel:
    def __init__(self, cfg: LlamaConfig, weights: dict[str, Tensor], ctx: Context):
        self.cfg, self.w, self.ctx = cfg, weights, ctx

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def random(cls, cfg: LlamaConfig = None, seed: int = 0) -> "LlamaModel":
        cfg = cfg or LlamaConfig()
        if cfg.n_embd % cfg.n_head or cfg.n_head % cfg.n_head_kv:
            raise GGMLError(f"LlamaConfig: n_embd % n_head and n_head % n_head_kv must be 0: {cfg}")
        rng = np.random.default_rng(seed)
        specs = _weight_specs(cfg)
        size = sum(gg.row_size(t, ne[0]) * int(np.prod(ne[1:])) + 4096 for t, ne in specs.values())
        ctx = gg.init(mem_size=size + (1 << 20))
        w = {}
        for name, (t, ne) in specs.items():
            if name.endswith("norm.weight"):
                vals = 1.0 + 0.1 * rng.standard_normal(ne[::-1])
            else:   # scaled so activations stay O(1) through the layers
                vals = rng.standard_normal(ne[::-1]) / math.sqrt(ne[0])
            w[name] = gg.from_numpy(ctx, vals.astype(np.float32), type=t, name=name)
        return cls(cfg, w, ctx)

    @classmethod
    def from_gguf(cls, path: str) -> "LlamaModel":
        """Read a llama-architecture GGUF file (needs the `gguf` package: pip install '.[gguf]')."""
        try:
            from gguf import GGUFReader
        except ImportError as e:
            raise GGMLError("reading GGUF needs the gguf package: pip install 'pyggml[gguf]'") from e
        r = GGUFReader(path)

        def kv(key, default=None):
            f = r.fields.get(key)
            if f is None:
                if default is None:
                    raise GGMLError(f"{path}: GGUF metadata has no {key!r}")
                return default
            return f.parts[f.data[0]].tolist()[0] if len(f.data) == 1 else \
                [f.parts[i].tolist()[0] for i in f.data]

        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        n_embd = int(kv(f"{arch}.embedding_length"))
        tensors = {t.name: t for t in r.tensors}
        if "token_embd.weight" not in tensors:
            raise GGMLError(f"{path}: no token_embd.weight: not a llama-style model")
        tok = tensors["token_embd.weight"]
        cfg = LlamaConfig(
            n_vocab=int(tok.shape[1]), n_embd=n_embd, n_layer=int(kv(f"{arch}.block_count")),
            n_head=int(kv(f"{arch}.attention.head_count")),
            n_head_kv=int(kv(f"{arch}.attention.head_count_kv", kv(f"{arch}.attention.head_count"))),
            n_ff=int(kv(f"{arch}.feed_forward_length")),
            rope_base=float(kv(f"{arch}.rope.freq_base", 10000.0)),
            n_ctx_train=int(kv(f"{arch}.context_length", 4096)),
            eps=float(kv(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)))
        size = sum(int(t.n_bytes) + 4096 for t in r.tensors)
        ctx = gg.init(mem_size=size + (1 << 20))
        w = {}
        for name, (_, ne) in _weight_specs(cfg).items():
            src = tensors.get(name) or (tensors.get("token_embd.weight") if name == "output.weight" else None)
            if src is None:
                raise GGMLError(f"{path}: missing tensor {name}")
            t = gg.new_tensor(ctx, as_type(int(src.tensor_type)), len(src.shape),
                              [int(x) for x in src.shape])
            gg.set_name(t, name)
            gg.tensor_set(t, np.ascontiguousarray(src.data).view(np.uint8).reshape(-1))
            w[name] = t
        return cls(cfg, w, ctx)

    def save_gguf(self, path: str) -> None:
        """Write the model as a llama GGUF file that from_gguf (and llama.cpp's loader) reads."""
        from gguf import GGUFWriter, GGMLQuantizationType
        c = self.cfg
        wr = GGUFWriter(path, "llama")
        wr.add_embedding_length(c.n_embd)
        wr.add_block_count(c.n_layer)
        wr.add_head_count(c.n_head)
        wr.add_head_count_kv(c.n_head_kv)
        wr.add_feed_forward_length(c.n_ff)
        wr.add_rope_freq_base(c.rope_base)
        wr.add_context_length(c.n_ctx_train)
        wr.add_layer_norm_rms_eps(c.eps)
        for name, t in self.w.items():
            raw = np.frombuffer(gg.tensor_get(t), dtype=np.uint8)
            wr.add_tensor(name, raw, raw_shape=list(t.ne[:t.n_dims])[::-1],
                          raw_dtype=GGMLQuantizationType(int(t.type)))
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()

    # --- the graph ---------------------------------------------------------------------------
    def build(self, ctx, gf, cache, n_tokens: int, layers=None) -> tuple[Tensor, Tensor, Tensor]:
        """Graph of one step over n_tokens new tokens. Returns (logits, tokens, positions);
        tokens and positions are inputs to fill after allocation."""
        c, w = self.cfg, self.w
        hd = c.head_dim
        tokens = gg.new_tensor_1d(ctx, GGMLType.I32, n_tokens)
        set_name(tokens, "inp_tokens")
        set_input(tokens)
        pos = gg.new_tensor_1d(ctx, GGMLType.I32, n_tokens)
        set_name(pos, "inp_pos")
        set_input(pos)
        inpL = gg.get_rows(ctx, w["token_embd.weight"], tokens)
        set_name(inpL, "inp_embd")
        kq_scale = 1.0 / math.sqrt(hd)
        for il in (range(c.n_layer) if layers is None else layers):
            p = f"blk.{il}."
            cur = gg.mul(ctx, gg.rms_norm(ctx, inpL, c.eps), w[p + "attn_norm.weight"])
            set_name(cur, f"attn_norm-{il}")
            q = gg.reshape_3d(ctx, gg.mul_mat(ctx, w[p + "attn_q.weight"], cur), hd, c.n_head, n_tokens)
            k = gg.reshape_3d(ctx, gg.mul_mat(ctx, w[p + "attn_k.weight"], cur), hd, c.n_head_kv, n_tokens)
            v = gg.reshape_3d(ctx, gg.mul_mat(ctx, w[p + "attn_v.weight"], cur), hd, c.n_head_kv, n_tokens)
            q = gg.rope_ext(ctx, q, pos, None, hd, 0, c.n_ctx_train, c.rope_base, 1.0, 0.0, 1.0, 32.0, 1.0)
            k = gg.rope_ext(ctx, k, pos, None, hd, 0, c.n_ctx_train, c.rope_base, 1.0, 0.0, 1.0, 32.0, 1.0)
            set_name(q, f"Qcur-{il}")
            set_name(k, f"Kcur-{il}")
            set_name(v, f"Vcur-{il}")
            cache.store(ctx, gf, il, k, v)
            o = cache.attention(ctx, il, gg.permute(ctx, q, 0, 2, 1, 3), kq_scale)
            o = gg.reshape_2d(ctx, o, hd * c.n_head, n_tokens)
            o = gg.mul_mat(ctx, w[p + "attn_output.weight"], o)
            set_name(o, f"attn_proj-{il}")
            ffn_inp = gg.add(ctx, o, inpL)
            set_name(ffn_inp, f"ffn_inp-{il}")
            cur = gg.mul(ctx, gg.rms_norm(ctx, ffn_inp, c.eps), w[p + "ffn_norm.weight"])
            set_name(cur, f"ffn_norm-{il}")
            gate = gg.mul_mat(ctx, w[p + "ffn_gate.weight"], cur)
            up = gg.mul_mat(ctx, w[p + "ffn_up.weight"], cur)
            cur = gg.mul_mat(ctx, w[p + "ffn_down.weight"], gg.swiglu_split(ctx, gate, up))
            set_name(cur, f"ffn_out-{il}")
            inpL = gg.add(ctx, cur, ffn_inp)
            set_name(inpL, f"l_out-{il}")
        cur = gg.mul(ctx, gg.rms_norm(ctx, inpL, c.eps), w["output_norm.weight"])
        set_name(cur, "result_norm")
        logits = gg.mul_mat(ctx, w["output.weight"], cur)
        set_name(logits, "result_output")
        set_output(logits)
        gg.build_forward_expand(gf, logits)
        return logits, tokens, pos


def _weight_specs(cfg: LlamaConfig) -> dict[str, tuple]:
    wt, et, f32 = as_type(cfg.wtype), as_type(cfg.etype), GGMLType.F32
    hd = cfg.head_dim
    s = {"token_embd.weight": (et, [cfg.n_embd, cfg.n_vocab])}
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        s[p + "attn_norm.weight"] = (f32, [cfg.n_embd])
        s[p + "attn_q.weight"] = (wt, [cfg.n_embd, cfg.n_embd])
        s[p + "attn_k.weight"] = (wt, [cfg.n_embd, hd * cfg.n_head_kv])
        s[p + "attn_v.weight"] = (wt, [cfg.n_embd, hd * cfg.n_head_kv])
        s[p + "attn_output.weight"] = (wt, [cfg.n_embd, cfg.n_embd])
        s[p + "ffn_norm.weight"] = (f32, [cfg.n_embd])
        s[p + "ffn_gate.weight"] = (wt, [cfg.n_embd, cfg.n_ff])
        s[p + "ffn_up.weight"] = (wt, [cfg.n_embd, cfg.n_ff])
        s[p + "ffn_down.weight"] = (wt, [cfg.n_ff, cfg.n_embd])
    s["output_norm.weight"] = (f32, [cfg.n_embd])
    s["output.weight"] = (wt, [cfg.n_embd, cfg.n_vocab])
    return s


class Decoder:
    """Runs a model step by step through a cache on a backend (or a scheduler).

    Graphs are reused like llama.cpp's: the graphs built for steps are kept (the last
    KEEP_GRAPHS) by the cache's graph_key(), and a later step with the same key (same token
    count, as many block moves, the same padded view lengths: nearly every decode step)
    skips building, allocating and lowering: only the inputs (token ids, positions, the
    cache's slots/masks/states/move rows) are rewritten.

    Prompts run in micro-batches of a fixed size (prefill's `batch`); a last, shorter one is
    padded to the next power of two (at most `batch`) with masked tokens, so a prompt of any
    length runs on a few kept graph shapes. Padding tokens repeat the last token at its
    position; their K/V rows go to the cache's sink row and their mask rows mask every key,
    so nothing they compute is kept or seen."""

    KEEP_GRAPHS = 8                # graphs kept by key (decode, move, prompt batch, tails...)

    def __init__(self, model: LlamaModel, cache, backend, reuse_graphs: bool = True):
        self.model, self.cache, self.backend = model, cache, backend
        self.reuse_graphs = reuse_graphs
        self.last_graph = None
        self.n_builds = 0             # graphs built (the rest of the steps reused one)
        self._kept: dict = {}         # key -> (gf, logits, tok, pos, cache inputs)

    def step(self, token_ids, n_pad: int = None) -> np.ndarray:
        """Feed tokens (ints); returns logits [n_tokens, n_vocab] (float32). `n_pad`: run
        the step on a graph of n_pad >= n_tokens tokens (padding masked, see the class)."""
        ids = np.asarray(token_ids, dtype=np.int32).reshape(-1)
        n = len(ids)
        st = self.cache.begin(n, n_pad) if n_pad is not None else self.cache.begin(n)
        n_graph = getattr(st, "n_pad", n)
        key = self.cache.graph_key() if hasattr(self.cache, "graph_key") else None
        kept = self._kept.pop(key, None) if self.reuse_graphs and key is not None else None
        if kept is not None:
            gf, logits, tok, pos, inputs = kept
            self.cache.use_inputs(inputs)
        else:
            with gc_paused():
                ctx = gg.init(mem_size=64 << 20, no_alloc=True)
                gf = gg.new_graph_custom(ctx, 8192)
                logits, tok, pos = self.model.build(ctx, gf, self.cache, n_graph)
                _alloc(self.backend, gf)
            self.n_builds += 1
            kept = (gf, logits, tok, pos, self.cache.step_inputs())
        if self.reuse_graphs and key is not None:
            self._kept[key] = kept                       # most recent last
            while len(self._kept) > self.KEEP_GRAPHS:
                self._kept.pop(next(iter(self._kept)))
        positions = st.positions.astype(np.int32)
        if n_graph > n:                                  # padding: the last token again
            ids = np.concatenate([ids, np.full(n_graph - n, ids[-1], np.int32)])
            positions = np.concatenate([positions, np.full(n_graph - n, positions[-1])])
        gg.tensor_set(tok, ids)
        gg.tensor_set(pos, positions)
        self.cache.set_inputs()
        self.backend.graph_compute(gf)
        self.cache.commit()
        self.last_graph = gf
        return gg.to_numpy(logits).reshape(n_graph, -1)[:n].copy()

    def prefill(self, token_ids, batch: int = 32, pad: bool = True) -> np.ndarray:
        """Feed a prompt in micro-batches of `batch` tokens; returns the logits of the last
        micro-batch. pad: a shorter last micro-batch runs padded (pad_tokens)."""
        out = None
        ids = list(token_ids)
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            out = self.step(chunk, pad_tokens(len(chunk), batch) if pad else None)
        return out


def pad_tokens(n: int, batch: int) -> int:
    """Graph size of a micro-batch of n <= batch tokens: the next power of two, at most
    batch (a prompt of any length then runs on at most log2(batch) + 1 graph shapes)."""
    return min(batch, 1 << max(n - 1, 0).bit_length())


def _alloc(backend, gf) -> None:
    if isinstance(backend, gg.Sched):
        backend.alloc_graph(gf)
    else:
        from ..sched.alloc import alloc_graph
        alloc_graph(gf)


def config_dict(cfg: LlamaConfig) -> dict:
    return asdict(cfg)
