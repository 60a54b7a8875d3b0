"""A small llama-style decoder built from pyggml ops, as llama.cpp's llm_build_llama builds it.

Weights are deterministic random by seed, or read from a GGUF file (llama.cpp tensor names).
Attention goes through a KV cache object (MixedKVCache or F16KVCache), which owns positions,
masks and the move of old tokens to the cold store.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from dataclasses import dataclass
from typing import NamedTuple
from typing import Optional

import numpy as np

import pyggml as gg

from .. import tensor as _tensor_mod
from ..context import Context
from ..data import strided
from ..errors import GGMLError
from ..graph import gc_paused
from ..tensor import Tensor
from ..tensor import set_input
from ..tensor import set_name
from ..tensor import set_output
from ..types import GGMLType
from ..types import as_type
from .layer_template import record
from .layer_template import same_layout


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
    rope_freq_scale: float = 1.0
    n_rot: int = 0               # rope dimensions (0: head_dim)
    n_embd_head: int = 0         # head size when it is not n_embd / n_head (attention.key_length)
    rope_type: int = 0           # rope mode: 0 adjacent pairs (llama), 2 NeoX halves (qwen2)
    arch: str = "llama"          # general.architecture written by save_gguf

    @property
    def head_dim(self) -> int:
        return self.n_embd_head or self.n_embd // self.n_head

    @property
    def rope_dims(self) -> int:
        return self.n_rot or self.head_dim


class LlamaModel:
    stamp_layers = True     # build layers after the first from its template (layer_template.py)

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

    # --- the graph ---------------------------------------------------------------------------
    def build(self, ctx, gf, cache, n_tokens: int, layers=None,
              n_outputs: int = None) -> "StepGraph":
        """Graph of one step over n_tokens new tokens: StepGraph(logits, tokens, positions,
        out_ids), the three last inputs to fill after allocation. n_outputs < n_tokens: only
        that many rows get logits, the rows out_ids names (llama.cpp's inp_out_ids: the last
        layer's FFN, the output norm and the vocabulary projection run on those rows only);
        None or n_tokens: every row, out_ids is None."""
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
        rope_freqs = w.get("rope_freqs.weight")        # llama 3's per-frequency factors
        out_ids = None
        if n_outputs is not None and n_outputs != n_tokens:
            out_ids = gg.new_tensor_1d(ctx, GGMLType.I32, n_outputs)
            set_name(out_ids, "inp_out_ids")
            set_input(out_ids)
        layer_ids = list(range(c.n_layer) if layers is None else layers)

        def build_layer(il, inpL):
            p = f"blk.{il}."
            cur = gg.mul(ctx, gg.rms_norm(ctx, inpL, c.eps), w[p + "attn_norm.weight"])
            set_name(cur, f"attn_norm-{il}")
            q = gg.reshape_3d(ctx, _proj(ctx, w, p + "attn_q", cur), hd, c.n_head, n_tokens)
            k = gg.reshape_3d(ctx, _proj(ctx, w, p + "attn_k", cur), hd, c.n_head_kv, n_tokens)
            v = gg.reshape_3d(ctx, _proj(ctx, w, p + "attn_v", cur), hd, c.n_head_kv, n_tokens)
            q = gg.rope_ext(ctx, q, pos, rope_freqs, c.rope_dims, c.rope_type, c.n_ctx_train,
                            c.rope_base, c.rope_freq_scale, 0.0, 1.0, 32.0, 1.0)
            k = gg.rope_ext(ctx, k, pos, rope_freqs, c.rope_dims, c.rope_type, c.n_ctx_train,
                            c.rope_base, c.rope_freq_scale, 0.0, 1.0, 32.0, 1.0)
            set_name(q, f"Qcur-{il}")
            set_name(k, f"Kcur-{il}")
            set_name(v, f"Vcur-{il}")
            cache.store(ctx, gf, il, k, v)
            o = cache.attention(ctx, il, gg.permute(ctx, q, 0, 2, 1, 3), kq_scale)
            o = gg.reshape_2d(ctx, o, hd * c.n_head, n_tokens)
            o = _proj(ctx, w, p + "attn_output", o)
            set_name(o, f"attn_proj-{il}")
            if out_ids is not None and il == layer_ids[-1]:   # only the rows that give logits
                o = gg.get_rows(ctx, o, out_ids)
                inpL = gg.get_rows(ctx, inpL, out_ids)
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
            return inpL

        # the first layer through the ops, the others stamped from it (layer_template.py);
        # a last layer that keeps only the output rows differs, and is built
        last = layer_ids[-1] if out_ids is not None else None
        n_stamps = sum(il != last for il in layer_ids[1:])
        tmpl = groups = None
        for j, il in enumerate(layer_ids):
            if j == 0 and n_stamps and self.stamp_layers:
                inpL, tmpl = record(ctx, gf, cache, il, inpL, build_layer, n_stamps)
                groups = self._layer_weights() if tmpl is not None else None
                continue
            lmap = self._layer_map(groups, cache, layer_ids[0], il) \
                if tmpl is not None and il != last else None
            inpL = tmpl.stamp(il, inpL, lmap) if lmap is not None else build_layer(il, inpL)
        cur = gg.mul(ctx, gg.rms_norm(ctx, inpL, c.eps), w["output_norm.weight"])
        set_name(cur, "result_norm")
        logits = gg.mul_mat(ctx, w["output.weight"], cur)
        set_name(logits, "result_output")
        set_output(logits)
        gg.build_forward_expand(gf, logits)
        return StepGraph(logits, tokens, pos, out_ids)


    def _layer_weights(self) -> dict:
        """{layer index as text: {name after "blk.N.": weight}}, in one pass; kept with the
        layer maps' checked weight pairs (_layer_map) while the model holds the same tensors
        under the same names (a tensor's type, ne and nb do not change)."""
        key = (tuple(self.w), tuple(self.w.values()))        # compared by identity first
        kept = self.__dict__.get("_kept_weights")
        if kept is not None and kept[0] == key:
            return kept[1]
        groups: dict = {"pairs": {}}                  # (il0, il) -> weight pairs or None
        for name, t in self.w.items():
            if name.startswith("blk."):
                i, _, rest = name[4:].partition(".")
                groups.setdefault(i, {})[rest] = t
        self._kept_weights = (key, groups)
        return groups

    @staticmethod
    def _layer_map(groups: dict, cache, il0: int, il: int) -> Optional[dict]:
        """{layer il0's weight or cache store: layer il's}, or None when layer il differs
        from il0 in more than which tensors it reads (another weight type or shape, a
        weight il0 lacks or has alone): then it is built through the ops."""
        kept = groups["pairs"]
        wpairs = kept.get((il0, il), False)
        if wpairs is False:
            g0, g = groups.get(str(il0), {}), groups.get(str(il), {})
            wpairs = None
            if len(g) == len(g0):
                wpairs = [(a, g.get(name)) for name, a in g0.items()]
                if not _same_layouts(wpairs):
                    wpairs = None
            kept[il0, il] = wpairs
        if wpairs is None:
            return None
        pairs = list(zip(cache.layer_tensors(il0), cache.layer_tensors(il)))
        if not _same_layouts(pairs):
            return None
        m = dict(wpairs)
        m.update(pairs)
        return m


def _same_layouts(pairs) -> bool:
    """Every (a, b) pair has b, of a's type, ne and nb."""
    return all(b is not None and same_layout(a, b) for a, b in pairs)


class StepGraph(NamedTuple):
    """A step's graph outputs and inputs (LlamaModel.build)."""
    logits: Tensor                 # F32 [n_vocab, n_outputs]
    tokens: Tensor                 # I32 [n_tokens] input
    positions: Tensor              # I32 [n_tokens] input
    out_ids: Optional[Tensor]      # I32 [n_outputs] input: rows that give logits (None: all)


def _proj(ctx, w: dict, name: str, x: Tensor) -> Tensor:
    """w[name.weight] @ x, plus name.bias when the model has one (qwen2's q/k/v)."""
    y = gg.mul_mat(ctx, w[name + ".weight"], x)
    b = w.get(name + ".bias")
    return y if b is None else gg.add(ctx, y, b)


def weight_table(cfg: LlamaConfig, qkv_bias: bool = False) -> dict[str, tuple]:
    """Every tensor a llama-family model may have, as llama.cpp's load_tensors makes them:
    name -> (ggml shape, required, role), role "matrix" (any weight type) or "vector" (F32).
    qkv_bias: the q/k/v biases are required (qwen2) rather than optional (llama)."""
    hd, e = cfg.head_dim, cfg.n_embd
    q, kv = hd * cfg.n_head, hd * cfg.n_head_kv
    mat, vec = "matrix", "vector"
    s = {"token_embd.weight": ((e, cfg.n_vocab), True, mat)}
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        s.update({
            p + "attn_norm.weight": ((e,), True, vec),
            p + "attn_q.weight": ((e, q), True, mat),
            p + "attn_k.weight": ((e, kv), True, mat),
            p + "attn_v.weight": ((e, kv), True, mat),
            p + "attn_output.weight": ((q, e), True, mat),
            p + "attn_q.bias": ((q,), qkv_bias, vec),
            p + "attn_k.bias": ((kv,), qkv_bias, vec),
            p + "attn_v.bias": ((kv,), qkv_bias, vec),
            p + "attn_output.bias": ((e,), False, vec),
            p + "ffn_norm.weight": ((e,), True, vec),
            p + "ffn_gate.weight": ((e, cfg.n_ff), True, mat),
            p + "ffn_up.weight": ((e, cfg.n_ff), True, mat),
            p + "ffn_down.weight": ((cfg.n_ff, e), True, mat),
        })
    s["output_norm.weight"] = ((e,), True, vec)
    s["output.weight"] = ((e, cfg.n_vocab), False, mat)          # absent: tied to token_embd
    s["rope_freqs.weight"] = ((cfg.rope_dims // 2,), False, vec)  # llama 3's rope factors
    return s


def _weight_specs(cfg: LlamaConfig) -> dict[str, tuple]:
    """name -> (type, ne) of a random model: the required tensors and an untied output."""
    wt, et = as_type(cfg.wtype), as_type(cfg.etype)
    return {name: (GGMLType.F32 if role == "vector" else et if name == "token_embd.weight"
                   else wt, list(ne))
            for name, (ne, required, role) in weight_table(cfg).items()
            if required or name == "output.weight"}


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
        self.running = None           # the graph being computed (step)
        self.n_builds = 0             # graphs built (the rest of the steps reused one)
        self._kept: dict = {}         # (cache key, n_outputs) -> (gf, StepGraph, cache inputs)

    def step(self, token_ids, n_pad: int = None, all_logits: bool = True,
             out: Optional[np.ndarray] = None, copy: bool = True) -> np.ndarray:
        """Feed tokens (ints); returns logits [n_tokens, n_vocab] (float32), or with
        all_logits=False only the last token's [1, n_vocab] (llama.cpp's default: the graph
        computes the last layer's FFN and the output for that row only). `n_pad`: run the
        step on a graph of n_pad >= n_tokens tokens (padding masked, see the class).
        `out`: an array of that shape the logits are copied into (and returned), instead
        of a new one; copy=False: a view of the graph's output (valid until the graph runs
        again: `running` is the graph being computed, None once it is done)."""
        if type(token_ids) is list and len(token_ids) == 1:
            ids, n = token_ids, 1                        # a decode step: no array made
        else:
            ids = np.asarray(token_ids, dtype=np.int32).reshape(-1)
            n = len(ids)
        cache = self.cache
        st = cache.begin(n, n_pad) if n_pad is not None else cache.begin(n)
        n_graph = getattr(st, "n_pad", n)
        n_out = n_graph if all_logits else 1
        key = cache.graph_key() if hasattr(cache, "graph_key") else None
        key = None if key is None else (key, n_out)
        kept = self._kept.pop(key, None) if self.reuse_graphs and key is not None else None
        if kept is not None:
            gf, views, inputs = kept
            cache.use_inputs(inputs)
        else:
            with gc_paused():
                ctx = gg.init(mem_size=64 << 20, no_alloc=True)
                gf = gg.new_graph_custom(ctx, 8192)
                g = self.model.build(ctx, gf, cache, n_graph, n_outputs=n_out)
                self.backend.alloc_graph(gf)
            self.n_builds += 1
            views = _StepViews(g)
            kept = (gf, views, cache.step_inputs())
        if self.reuse_graphs and key is not None:
            self._kept[key] = kept                       # most recent last
            if len(self._kept) > self.KEEP_GRAPHS:
                self._kept.pop(next(iter(self._kept)))
        views.set_inputs(ids, st.positions)
        cache.set_inputs()
        self.running = gf
        self.backend.graph_compute(gf)
        self.running = None
        cache.commit()
        self.last_graph = gf
        rows = views.logits                              # F32 [n_out, n_vocab], no copy
        if all_logits and n != n_out:
            rows = rows[:n]
        if out is None:
            return rows.copy() if copy else rows
        out[...] = rows
        return out

    def prefill(self, token_ids, batch: int = 32, pad: bool = True,
                all_logits: bool = True) -> np.ndarray:
        """Feed a prompt in micro-batches of `batch` tokens; returns the logits of the last
        micro-batch (all_logits=False: of its last token only, [1, n_vocab]). pad: a shorter
        last micro-batch runs padded (pad_tokens)."""
        out = None
        ids = list(token_ids)
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            out = self.step(chunk, pad_tokens(len(chunk), batch) if pad else None, all_logits)
        return out


class _StepViews:
    """A kept step graph (StepGraph) with NumPy views of its token, position, output-row and
    logits tensors, made once: a view costs microseconds, and a kept graph's tensors keep
    their data (remade if any tensor got data since: tensor.ALLOC_EPOCH)."""

    __slots__ = ("g", "epoch", "tok", "pos", "out_ids", "_logits")

    def __init__(self, g: StepGraph):
        self.g = g
        self.epoch = None

    def _views(self) -> None:
        g = self.g
        self.tok = strided(g.tokens).reshape(-1)
        self.pos = strided(g.positions).reshape(-1)
        self.out_ids = None if g.out_ids is None else strided(g.out_ids).reshape(-1)
        self._logits = strided(g.logits)[0, 0]
        self.epoch = _tensor_mod.ALLOC_EPOCH

    @property
    def logits(self) -> np.ndarray:
        """F32 [n_outputs, n_vocab] view of the logits."""
        if self.epoch != _tensor_mod.ALLOC_EPOCH:
            self._views()
        return self._logits

    def set_inputs(self, ids: np.ndarray, positions: np.ndarray) -> None:
        """Token ids, positions and output rows of a step; padding tokens (graph rows past
        len(ids)) repeat the last token at its position, and the output row is the last
        real token's."""
        if self.epoch != _tensor_mod.ALLOC_EPOCH:
            self._views()
        n = len(ids)
        tok, pos = self.tok, self.pos
        if n == 1 == len(tok):                           # a decode step: one element each
            tok[0] = ids[0]
            pos[0] = positions[0]
            if self.out_ids is not None:
                self.out_ids[0] = 0
            return
        tok[:n] = ids
        pos[:n] = positions
        if n < len(tok):
            tok[n:] = ids[-1]
            pos[n:] = positions[-1]
        if self.out_ids is not None:
            self.out_ids[:] = n - 1


def pad_tokens(n: int, batch: int) -> int:
    """Graph size of a micro-batch of n <= batch tokens: the next power of two, at most
    batch (a prompt of any length then runs on at most log2(batch) + 1 graph shapes)."""
    return min(batch, 1 << max(n - 1, 0).bit_length())


def config_dict(cfg: LlamaConfig) -> dict:
    return asdict(cfg)
