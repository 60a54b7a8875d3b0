"""KV caches for decoding: the mixed hot F16 + cold quantized cache, and a plain F16 cache.

Layout is llama.cpp's: per layer one K and one V tensor of rows [head_dim * n_head_kv], one
row per token, so a 32-token block of the hot ring moves to the cold store as 32 rows: a
get_rows of the hot rows and a set_rows into the cold store (quantizing, inside the graph;
the row ids are inputs, so every step that moves a block shares one graph). Attention sees the stores
through 3-D views [head_dim, n_tokens, n_head_kv].

MixedKVCache keeps the most recent tokens in a hot F16 ring. When an append would take the
hot part past `hot_tokens`, the oldest tokens move to the cold store (default Q4_0) in whole
32-token blocks, first in first out. Positions, causal masks for both segments and GQA are
the cache's business; attention over the cache is one flash_attn_ext_with_state per layer.

Use per step (ggml's order: build, allocate, set inputs, compute, then commit):
    step = cache.begin(n_tokens)                  # plans slots and moves; checks n_ctx
    k_out = cache.store(ctx, gf, il, k_cur, v_cur)   # per layer: move ops, then writes
    o = cache.attention(ctx, il, q, scale)        # per layer
    ... allocate the graph ...; cache.set_inputs(); compute; cache.commit()

Graph reuse (llama.cpp's): the graph of a step depends only on cache.graph_key() (token
count, block moves, how many cold rows the views span: views are padded to KV_PAD keys
and the padding masked, so the key changes rarely) - everything else that varies per step
(row slots, masks, fresh softmax states) is an input whose values set_inputs() computes
from the current step. So a caller may keep the graph of a key and, for a later step with
the same key, skip building: cache.use_inputs(inputs kept from step_inputs()), then
set_inputs(), compute, commit (models.llama.Decoder does).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import data
from ..context import Context
from ..context import new_tensor_1d
from ..context import new_tensor_2d
from ..errors import GGMLError
from ..errors import ShapeError
from ..graph import CGraph
from ..graph import build_forward_expand
from ..ops.attention import flash_attn_ext
from ..ops.attention import flash_attn_ext_set_prec
from ..ops.attention import flash_attn_ext_with_state
from ..ops.fa_state import fresh_values
from ..ops.rows import get_rows
from ..ops.rows import set_rows
from ..ops.view import reshape_2d
from ..ops.view import view_3d
from ..tensor import Tensor
from ..tensor import nbytes
from ..tensor import set_input
from ..tensor import set_name
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type

BLOCK = 32          # tokens per move (and ggml's quant block, so rows stay whole blocks)
KV_PAD = 256        # attention views span a multiple of this many keys (llama.cpp's n_kv pad)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class CacheStep:
    """One step's plan (a plain class with slots: one is made per decoded token)."""

    __slots__ = ("n_tokens", "positions", "slots", "moves", "cold_after", "n_pad")

    def __init__(self, n_tokens: int, positions: np.ndarray, slots: np.ndarray, moves: list,
                 cold_after: int, n_pad: int = 0):
        self.n_tokens = n_tokens
        self.positions = positions     # positions of the new tokens
        self.slots = slots             # hot ring slots they go to
        self.moves = moves             # [(hot_slot_start, cold_start)] whole blocks, oldest first
        self.cold_after = cold_after   # cold tokens visible to this step's attention
        # tokens of the step's graph (>= n_tokens; 0: n_tokens)
        self.n_pad = n_pad if n_pad > n_tokens else n_tokens

    def __repr__(self) -> str:
        return (f"CacheStep(n_tokens={self.n_tokens}, positions={self.positions!r}, "
                f"slots={self.slots!r}, moves={self.moves!r}, cold_after={self.cold_after}, "
                f"n_pad={self.n_pad})")


class _Input:
    """A graph input of a cache and how its values are made: `fill(view)` writes them from
    the current step in place into a NumPy view (ne1, ne0) of its storage (no arrays made
    per step, the view made once per kept graph)."""

    __slots__ = ("t", "fill", "view", "buf", "offs")

    def __init__(self, t: Tensor, fill):
        self.t, self.fill = t, fill
        self.view = self.buf = self.offs = None

    def write(self) -> None:
        t = self.t
        # a kept graph's inputs keep their buffers; the view is checked, not remade
        if t._buffer is not self.buf or t._offs != self.offs or self.view is None:
            self.view = data.strided(t)[0, 0]
            self.buf, self.offs = t._buffer, t._offs
        self.fill(self.view)


class _CacheBase:
    """Bookkeeping and tensors shared by both caches."""

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                 head_dim_v: Optional[int] = None, name: str = "cache"):
        if min(n_layer, n_head_kv, head_dim, n_ctx) <= 0:
            raise ShapeError(f"{type(self).__name__}: n_layer, n_head_kv, head_dim and n_ctx must "
                             f"be > 0 (got {n_layer}, {n_head_kv}, {head_dim}, {n_ctx})")
        self.n_layer, self.n_head_kv, self.n_ctx = n_layer, n_head_kv, n_ctx
        self.head_dim, self.head_dim_v = head_dim, head_dim_v or head_dim
        self.name = name
        # a step's positions (and slots) are read-only views of these, not new arrays
        self._positions = _read_only(np.arange(n_ctx + 1, dtype=np.int64))
        self.n_past = 0
        self.step: Optional[CacheStep] = None
        self._ids: Optional[Tensor] = None
        self._inputs: list = []        # _Input per graph input, written after allocation
        self._layer_inputs: dict = {}  # input made for one layer -> how to make another's

    def _new_ctx(self, tensors: list[tuple]) -> Context:
        size = sum(TRAITS[t].row_size(ne0) * ne1 + 1024 for t, ne0, ne1 in tensors)
        return Context(size + (1 << 16), no_alloc=False, name=self.name)

    def _need_step(self) -> CacheStep:
        if self.step is None:
            raise GGMLError(f"{type(self).__name__}: call begin(n_tokens) before building or "
                            f"computing the step's graph")
        return self.step

    def _check_room(self, n_tokens: int) -> None:
        if n_tokens <= 0:
            raise ShapeError(f"{type(self).__name__}.begin: n_tokens must be > 0, got {n_tokens}")
        if self.n_past + n_tokens > self.n_ctx:
            raise GGMLError(f"{type(self).__name__}: appending {n_tokens} tokens to {self.n_past} "
                            f"exceeds n_ctx={self.n_ctx}; nothing was written")

    def _view3(self, t: Tensor, ctx, n: int, d: int, first: int = 0) -> Tensor:
        """[d, n tokens, n_head_kv] view of a row-per-token store, from token `first`."""
        tr = TRAITS[t.type]
        return view_3d(ctx, t, d, n, self.n_head_kv, t.nb[1], tr.row_size(d), first * t.nb[1])

    def _input(self, ctx, type, ne0: int, ne1: int, fill, name: str,
               layer: Optional[int] = None) -> Tensor:
        """A graph input whose values `fill(view)` writes from the current step (_Input; a
        1-D input's view is (1, ne0)); `layer`: the input is that layer's own (named
        f"{name}-{layer}"; see layer_input)."""
        t = new_tensor_2d(ctx, type, ne0, ne1) if ne1 else new_tensor_1d(ctx, type, ne0)
        set_name(t, name if layer is None else f"{name}-{layer}")
        set_input(t)
        self._inputs.append(_Input(t, fill))
        if layer is not None:
            self._layer_inputs[t] = (type, ne0, ne1, fill, name)
        return t

    # --- layer templates (models/layer_template.py) -------------------------------------------
    # A model may build its first layer through store/attention and stamp the others from
    # it. That holds while a layer's graph differs from another's only in the tensors
    # layer_tensors names and in the inputs made per layer (layer_input); anything else
    # store/attention make is shared by every layer of the step (made once, kept on self).

    def layer_input(self, ctx, t: Tensor, il: int) -> Optional[Tensor]:
        """The input of layer il like t, an input made for another layer of this step
        (registered as _input registers it); None when t is not a per-layer input."""
        spec = self._layer_inputs.get(t)
        if spec is None:
            return None
        type, ne0, ne1, fill, name = spec
        return self._input(ctx, type, ne0, ne1, fill, name, il)

    def _slot_ids(self, ctx) -> Tensor:
        """The step's row ids (I64) for set_rows, one input shared by every layer; padding
        tokens write the sink row (past the rows any view reads)."""
        if self._ids is None:
            self._ids = self._input(ctx, GGMLType.I64, self.step.n_pad, 0, self._fill_slots,
                                    "kv_slots")
        return self._ids

    def _fill_slots(self, view: np.ndarray) -> None:
        st = self.step
        ids = view[0]
        if st.n_tokens == 1 == len(ids):                 # a decode step: one element
            ids[0] = st.slots[0]
            return
        ids[:st.n_tokens] = st.slots
        ids[st.n_tokens:] = self._sink

    def _pad_to(self, n_tokens: int, n_pad: Optional[int]) -> int:
        """Tokens of a step's graph: n_tokens, or n_pad when the caller pads the step (a
        prompt's last micro-batch, so it reuses the graph of a full one). The padding
        tokens' rows go to the sink row and their mask rows mask everything."""
        if n_pad is None or n_pad == n_tokens:
            return n_tokens
        if n_pad < n_tokens:
            raise ShapeError(f"{type(self).__name__}.begin: n_pad={n_pad} is less than "
                             f"n_tokens={n_tokens}")
        return n_pad

    def set_inputs(self) -> None:
        """Write the step's masks, row ids and states (after the graph has been allocated)."""
        if self.step is None:
            self._need_step()                            # raises
        for inp in self._inputs:
            inp.write()

    def step_inputs(self) -> list:
        """The inputs of the graph built for this step (to reuse the graph: use_inputs)."""
        return list(self._inputs)

    def use_inputs(self, inputs: list) -> None:
        """Reuse a graph built for an earlier step with the same graph_key(): its inputs
        become this step's (set_inputs() then writes this step's values into them)."""
        self._inputs = list(inputs)

    def _kv_view(self, n: int, cap: int) -> int:
        """Keys an attention view spans for n used rows: n padded to KV_PAD, within cap."""
        return min(cap, _round_up(n, KV_PAD)) if n > 0 else 0

    def _fill_mask(self, m: np.ndarray, key_pos: np.ndarray, visible: np.ndarray) -> None:
        """A mask input's view [n_pad, n_keys]: 0 where the key is visible and key_pos <= the
        query's position, -inf elsewhere (padding rows: everywhere)."""
        q = self.step.positions
        m.fill(-np.inf)
        ok = visible[None, :] & (key_pos[None, :] <= q[:, None])
        m[:len(q)][ok] = 0.0

    def _fill_prefix_mask(self, m: np.ndarray, first: int, end: int) -> None:
        """A mask input's view [n_pad, n_keys] over keys in position order from `first`, all
        stored by then: row i sees the keys at positions < min(end, pos[i] + 1); padding
        rows see none (_fill_mask's values, without its per-step arrays)."""
        q = self.step.positions
        m.fill(-np.inf)
        if len(q) > 16:
            lim = np.minimum(q + 1, end) - first
            m[:len(q)][np.arange(m.shape[1])[None, :] < lim[:, None]] = 0.0
            return
        for i, p in enumerate(q.tolist()):          # a decode step: a slice per row
            n = min(p + 1, end) - first
            if n > 0:
                m[i, :n] = 0.0


_FRESH_ROW = fresh_values([2, 1, 1, 1])[0, 0, 0]      # [M, S] = [-inf, 0]


def _fill_fresh_state(view: np.ndarray) -> None:
    view[...] = _FRESH_ROW


class MixedKVCache(_CacheBase):
    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                 hot_tokens: int = 256, cold_type=GGMLType.Q4_0, max_batch: int = 64,
                 head_dim_v: Optional[int] = None, hot_type=GGMLType.F16):
        super().__init__(n_layer, n_head_kv, head_dim, n_ctx, head_dim_v, "mixed kv cache")
        self.cold_type, self.hot_type = as_type(cold_type), as_type(hot_type)
        if TRAITS[self.cold_type].blck_size > 1 and (head_dim % 32 or self.head_dim_v % 32):
            raise ShapeError(f"MixedKVCache: head_dim {head_dim}/{self.head_dim_v} must be a "
                             f"multiple of 32 for a {self.cold_type.tname} cold store")
        if hot_tokens < 0 or max_batch <= 0:
            raise ShapeError(f"MixedKVCache: hot_tokens >= 0 and max_batch > 0 required "
                             f"(got {hot_tokens}, {max_batch})")
        self.hot_tokens = hot_tokens
        self.max_batch = max_batch
        # Moves keep the newest `hot_tokens` hot, so the ring never holds more than
        # max(hot_tokens, batch) + 31 tokens; the cold store never more than n_ctx - hot_tokens.
        self.hot_cap = min(_round_up(n_ctx, BLOCK), _round_up(max(hot_tokens, max_batch) + BLOCK - 1, BLOCK))
        self.cold_cap = _round_up(max(n_ctx - hot_tokens, 0), BLOCK)
        dk, dv = head_dim * n_head_kv, self.head_dim_v * n_head_kv
        self._sink = self.hot_cap        # one row past the ring: padding tokens write it
        specs = []
        for _ in range(n_layer):
            specs += [(self.hot_type, dk, self.hot_cap + 1), (self.hot_type, dv, self.hot_cap + 1),
                      (self.cold_type, dk, self.cold_cap), (self.cold_type, dv, self.cold_cap)]
        self.ctx = self._new_ctx(specs)
        self.hot_k, self.hot_v, self.cold_k, self.cold_v = [], [], [], []
        for il in range(n_layer):
            for lst, t, d, cap, nm in ((self.hot_k, self.hot_type, dk, self.hot_cap + 1, "hot_k"),
                                       (self.hot_v, self.hot_type, dv, self.hot_cap + 1, "hot_v"),
                                       (self.cold_k, self.cold_type, dk, self.cold_cap, "cold_k"),
                                       (self.cold_v, self.cold_type, dv, self.cold_cap, "cold_v")):
                x = new_tensor_2d(self.ctx, t, d, cap)
                set_name(x, f"cache.{nm}-{il}")
                lst.append(x)
        # ring bookkeeping (host side, like llama.cpp's kv cells)
        self.slot_pos = np.full(self.hot_cap, -1, dtype=np.int64)
        self.head = 0                 # oldest hot slot (multiple of BLOCK)
        self.hot_count = 0
        self.cold_count = 0
        self.cold_pos = np.full(self.cold_cap, -1, dtype=np.int64)
        # ring slots from any tail, wrapping: a step's slots are a view (n <= hot_cap)
        self._ring_ids = _read_only(np.arange(2 * self.hot_cap, dtype=np.int64) % self.hot_cap)

    # --- planning ------------------------------------------------------------------------------
    def plan_moves(self, n_tokens: int) -> list:
        """Whole oldest blocks to move: as many as leave at least `hot_tokens` tokens hot."""
        excess = self.hot_count + n_tokens - self.hot_tokens
        if excess < BLOCK:
            return []
        k = min(excess // BLOCK, self.hot_count // BLOCK)
        return [((self.head + j * BLOCK) % self.hot_cap, self.cold_count + j * BLOCK)
                for j in range(k)]

    def begin(self, n_tokens: int, n_pad: Optional[int] = None) -> CacheStep:
        """Plan a step of n_tokens new tokens; its graph holds n_pad >= n_tokens (the
        padding computes nothing that is kept: see _pad_to)."""
        self._check_room(n_tokens)
        n_pad = self._pad_to(n_tokens, n_pad)
        if n_pad > self.max_batch:
            raise ShapeError(f"MixedKVCache.begin: {n_pad} tokens exceed max_batch="
                             f"{self.max_batch}; split the batch")
        moves = self.plan_moves(n_tokens)
        freed = len(moves) * BLOCK
        tail = (self.head + self.hot_count) % self.hot_cap
        slots = self._ring_ids[tail:tail + n_tokens]
        if self.hot_count - freed + n_tokens > self.hot_cap:   # cannot happen with hot_cap's sizing
            raise GGMLError("MixedKVCache: hot ring overflow (internal sizing error)")
        pos = self._positions[self.n_past:self.n_past + n_tokens]
        self.step = CacheStep(n_tokens, pos, slots, moves, self.cold_count + freed, n_pad)
        self._inputs, self._ids, self._layer_inputs = [], None, {}
        self._masks = self._moves_in = None
        return self.step

    def _cold_view(self) -> int:
        return self._kv_view(self._need_step().cold_after, self.cold_cap)

    def graph_key(self) -> tuple:
        """What this step's graph depends on (see the module doc: graph reuse)."""
        st = self._need_step()
        return (st.n_pad, len(st.moves), self._cold_view())

    def _move_rows(self) -> tuple:
        """(hot slots, cold rows) of this step's block moves, oldest first."""
        st = self._need_step()
        src = np.concatenate([s + np.arange(BLOCK) for s, _ in st.moves])
        dst = np.concatenate([c + np.arange(BLOCK) for _, c in st.moves])
        return src, dst

    def _fill_move_src(self, view: np.ndarray) -> None:
        view[0] = self._move_rows()[0]

    def _fill_move_dst(self, view: np.ndarray) -> None:
        view[0] = self._move_rows()[1]

    def _move_ids(self, ctx):
        """Row-id inputs of the moves (shared by every layer): I32 for get_rows, I64 for
        set_rows."""
        if self._moves_in is None:
            n = len(self._need_step().moves) * BLOCK
            self._moves_in = (
                self._input(ctx, GGMLType.I32, n, 0, self._fill_move_src, "kv_move_src"),
                self._input(ctx, GGMLType.I64, n, 0, self._fill_move_dst, "kv_move_dst"))
        return self._moves_in

    # --- graph building ----------------------------------------------------------------------
    def store(self, ctx, gf: CGraph, il: int, k_cur: Tensor, v_cur: Tensor) -> None:
        """Moves (hot -> cold, quantizing) then writes of this step's K/V, in graph order.

        k_cur: [head_dim, n_head_kv, n_tokens] (or any shape of the same rows), v_cur alike."""
        st = self._need_step()
        if st.moves:
            # the moved rows are inputs (slots out of the ring, rows into the cold store), so
            # every step moving as many blocks shares one graph: get_rows reads the hot F16
            # rows as F32, set_rows quantizes them into the cold store (ggml's from_float, as
            # a cpy would)
            src_ids, dst_ids = self._move_ids(ctx)
            for which_hot, which_cold, nm in ((self.hot_k, self.cold_k, "k"),
                                              (self.hot_v, self.cold_v, "v")):
                rows = get_rows(ctx, which_hot[il], src_ids)
                set_name(rows, f"kv_move_rows.{nm}-{il}")
                mv = set_rows(ctx, which_cold[il], rows, dst_ids)
                set_name(mv, f"kv_move.{nm}-{il}")
                build_forward_expand(gf, mv)
        for hot, cur, nm in ((self.hot_k[il], k_cur, "k"), (self.hot_v[il], v_cur, "v")):
            rows = reshape_2d(ctx, cur, hot.ne[0], st.n_pad) if cur.ne[1] != st.n_pad \
                or cur.ne[0] != hot.ne[0] else cur
            w = set_rows(ctx, hot, rows, self._slot_ids(ctx))
            set_name(w, f"kv_store.{nm}-{il}")
            build_forward_expand(gf, w)

    def _fill_hot_mask(self, view: np.ndarray) -> None:
        """The step's mask over the hot ring, positions as they will be after the step's
        moves and writes."""
        st = self._need_step()
        hot_pos = self.slot_pos.copy()
        moved = np.zeros(self.hot_cap, dtype=bool)
        for slot, _ in st.moves:
            moved[slot:slot + BLOCK] = True
        hot_pos[st.slots] = st.positions
        visible = (hot_pos >= 0) & ~moved
        visible[st.slots] = True
        self._fill_mask(view, hot_pos, visible)

    def _fill_cold_mask(self, view: np.ndarray) -> None:
        """The step's mask over the cold rows its views span (unused rows masked)."""
        st = self._need_step()
        cpos = self.cold_pos[:self._cold_view()].copy()
        cpos[st.cold_after:] = -1
        for slot, cstart in st.moves:
            cpos[cstart:cstart + BLOCK] = self.slot_pos[slot:slot + BLOCK]
        self._fill_mask(view, cpos, cpos >= 0)

    def _step_masks(self, ctx):
        """Hot and cold masks of this step (shared by every layer)."""
        if self._masks is not None:
            return self._masks
        st = self._need_step()
        hot_mask = self._input(ctx, GGMLType.F16, self.hot_cap, st.n_pad, self._fill_hot_mask,
                               "kq_mask_hot")
        cold_mask = None
        if st.cold_after > 0:
            cold_mask = self._input(ctx, GGMLType.F16, self._cold_view(), st.n_pad,
                                    self._fill_cold_mask, "kq_mask_cold")
        self._masks = (hot_mask, cold_mask)
        return self._masks

    def attention(self, ctx, il: int, q: Tensor, scale: float, prec: int = 0) -> Tensor:
        """flash_attn_ext_with_state over hot ∪ cold. q: [head_dim, n_tokens, n_head].

        Returns F32 [head_dim_v, n_head, n_tokens] like flash_attn_ext."""
        st = self._need_step()
        hot_mask, cold_mask = self._step_masks(ctx)
        k = self._view3(self.hot_k[il], ctx, self.hot_cap, self.head_dim)
        v = self._view3(self.hot_v[il], ctx, self.hot_cap, self.head_dim_v)
        kq = vq = None
        if st.cold_after > 0:
            kq = self._view3(self.cold_k[il], ctx, self._cold_view(), self.head_dim)
            vq = self._view3(self.cold_v[il], ctx, self._cold_view(), self.head_dim_v)
        # a fresh softmax state per step: all of this step's keys are in this one call
        state = self._input(ctx, GGMLType.F32, 2, q.ne[2] * q.ne[1], _fill_fresh_state,
                            "attn_state", il)
        o = flash_attn_ext_with_state(ctx, q, k, v, hot_mask, kq, vq, cold_mask, state,
                                      scale, 0.0, 0.0)
        if prec:
            flash_attn_ext_set_prec(o, prec)
        set_name(o, f"attn_out-{il}")
        return o

    def layer_tensors(self, il: int) -> tuple:
        """Layer il's own stores (a layer template's map: see _CacheBase.layer_input)."""
        return self.hot_k[il], self.hot_v[il], self.cold_k[il], self.cold_v[il]

    def commit(self) -> None:
        """The step's graph was computed: advance the ring and the cold store."""
        st = self._need_step()
        for slot, cstart in st.moves:
            self.cold_pos[cstart:cstart + BLOCK] = self.slot_pos[slot:slot + BLOCK]
            self.slot_pos[slot:slot + BLOCK] = -1
        self.cold_count = st.cold_after
        self.head = (self.head + len(st.moves) * BLOCK) % self.hot_cap
        self.hot_count -= len(st.moves) * BLOCK
        self.slot_pos[st.slots] = st.positions
        self.hot_count += st.n_tokens
        self.n_past += st.n_tokens
        self.step = None

    # --- introspection -------------------------------------------------------------------------
    def nbytes(self) -> dict:
        """Real allocations of the stores, against an all-F16 cache of the same n_ctx."""
        hot = sum(nbytes(t) for t in self.hot_k + self.hot_v)
        cold = sum(nbytes(t) for t in self.cold_k + self.cold_v)
        f16 = self.n_layer * self.n_ctx * 2 * (self.head_dim + self.head_dim_v) * self.n_head_kv
        return {"hot": hot, "cold": cold, "total": hot + cold, "f16": f16,
                "ratio": (hot + cold) / f16}

    def hot_positions(self) -> np.ndarray:
        """Positions held by the hot ring, oldest first."""
        idx = (self.head + np.arange(self.hot_count)) % self.hot_cap
        return self.slot_pos[idx].copy()

    def cold_positions(self) -> np.ndarray:
        return self.cold_pos[:self.cold_count].copy()

    def __repr__(self) -> str:
        nb = self.nbytes()
        return (f"MixedKVCache({self.n_layer} layers, {self.n_past}/{self.n_ctx} tokens: "
                f"{self.hot_count} hot {self.hot_type.tname}, {self.cold_count} cold "
                f"{self.cold_type.tname}; {nb['total'] / 2**20:.2f} MiB = {nb['ratio']:.2f}x F16)")


class F16KVCache(_CacheBase):
    """The plain llama.cpp cache: F16 rows for every position, attention by flash_attn_ext."""

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                 head_dim_v: Optional[int] = None, type=GGMLType.F16):
        super().__init__(n_layer, n_head_kv, head_dim, n_ctx, head_dim_v, "f16 kv cache")
        self.type = as_type(type)
        self.cap = _round_up(n_ctx, BLOCK)
        self._sink = self.cap            # one row past the cache: padding tokens write it
        dk, dv = head_dim * n_head_kv, self.head_dim_v * n_head_kv
        rows = self.cap + 1
        self.ctx = self._new_ctx([(self.type, d, rows) for _ in range(n_layer) for d in (dk, dv)])
        self.k = [set_name(new_tensor_2d(self.ctx, self.type, dk, rows), f"cache.k-{il}")
                  for il in range(n_layer)]
        self.v = [set_name(new_tensor_2d(self.ctx, self.type, dv, rows), f"cache.v-{il}")
                  for il in range(n_layer)]

    def begin(self, n_tokens: int, n_pad: Optional[int] = None) -> CacheStep:
        """Plan a step of n_tokens new tokens; its graph holds n_pad >= n_tokens (see
        _pad_to)."""
        self._check_room(n_tokens)
        n_pad = self._pad_to(n_tokens, n_pad)
        pos = self._positions[self.n_past:self.n_past + n_tokens]
        self.step = CacheStep(n_tokens, pos, pos, [], 0, n_pad)
        self._inputs, self._ids, self._mask, self._layer_inputs = [], None, None, {}
        return self.step

    def _n_kv(self) -> int:
        """Keys the attention views span: the used rows padded to KV_PAD."""
        st = self._need_step()
        return self._kv_view(self.n_past + st.n_tokens, self.cap)

    def graph_key(self) -> tuple:
        """What this step's graph depends on (see the module doc: graph reuse)."""
        st = self.step or self._need_step()
        return (st.n_pad, self._kv_view(self.n_past + st.n_tokens, self.cap))   # _n_kv's

    def _fill_kq_mask(self, m: np.ndarray) -> None:
        """The mask input's view [n_pad, n_kv]: key k is position k, so row i sees keys
        0..pos[i] (all stored by then)."""
        self._fill_prefix_mask(m, 0, self.n_past + self.step.n_tokens)

    def store(self, ctx, gf: CGraph, il: int, k_cur: Tensor, v_cur: Tensor) -> None:
        st = self._need_step()
        for cache, cur, nm in ((self.k[il], k_cur, "k"), (self.v[il], v_cur, "v")):
            w = set_rows(ctx, cache, reshape_2d(ctx, cur, cache.ne[0], st.n_pad),
                         self._slot_ids(ctx))
            set_name(w, f"kv_store.{nm}-{il}")
            build_forward_expand(gf, w)

    def attention(self, ctx, il: int, q: Tensor, scale: float, prec: int = 0) -> Tensor:
        st = self._need_step()
        n_kv = self._n_kv()
        if self._mask is None:
            self._mask = self._input(ctx, GGMLType.F16, n_kv, st.n_pad, self._fill_kq_mask,
                                     "kq_mask")
        k = self._view3(self.k[il], ctx, n_kv, self.head_dim)
        v = self._view3(self.v[il], ctx, n_kv, self.head_dim_v)
        o = flash_attn_ext(ctx, q, k, v, self._mask, scale, 0.0, 0.0)
        if prec:
            flash_attn_ext_set_prec(o, prec)
        set_name(o, f"attn_out-{il}")
        return o

    def layer_tensors(self, il: int) -> tuple:
        """Layer il's own stores (a layer template's map: see _CacheBase.layer_input)."""
        return self.k[il], self.v[il]

    def commit(self) -> None:
        st = self.step or self._need_step()
        self.n_past += st.n_tokens
        self.step = None

    def nbytes(self) -> dict:
        total = sum(nbytes(t) for t in self.k + self.v)
        return {"hot": total, "cold": 0, "total": total, "f16": total, "ratio": 1.0}
