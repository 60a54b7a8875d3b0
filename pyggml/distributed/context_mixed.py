"""Context split over the mixed cache: hot F16 ring + cold Q4_0 token-range shards, chained
to compute what one MixedKVCache computes, bit for bit.

Which tokens are cold is the single-process MixedKVCache's rule, taken over the whole
context: the newest `hot_tokens` tokens (up to 31 more, plus a step's batch) are hot; older
ones move to the cold type in whole 32-token blocks, oldest first. Cold positions are then
always [0, cold_count) with cold_count a multiple of 32, and a shard's range (a multiple of
64 long) never cuts a block.

Bitwise equality fixes the layout. The kernel folds each segment's keys in aligned units of
64 keys (kernels/attention.py, FOLD), the hot segment's before the cold one's: one
MixedKVCache call folds its ring's units in ring-slot order (slot = position modulo the ring
size), then the cold rows' units in position order. A unit's partial is an online softmax
over the unit's keys at their offsets in it, so a chain of calls can reproduce that only if
every unit's keys sit in one call at the same offsets, and the calls come in that unit
order (a unit with no visible key folds nothing). Rings per shard cannot: while the hot
window straddles a shard boundary, one ring unit of the single cache holds keys of both
shards, and its hot keys would be folded after the earlier shards' cold ones. So:

- the ring (the single cache's size, row = position modulo it) lives on shard 0, the first
  worker of the chain: its call is (ring, cold rows of [0, C)), which is the single cache's
  call with the cold segment cut at C, a unit boundary;
- shard w > 0 holds only the cold rows of its range; its call (cold rows of [wC, (w+1)C))
  continues from shard w-1's state and output, as context_split.py chains (units beyond
  the cold boundary are masked: they fold nothing).
This step's K/V rows go into the ring on worker 0. A block turning cold is a get_rows of
its ring rows on worker 0 (before this step's writes, which may reuse those rows) and a
set_rows (quantizing, ggml's from_float as in the single cache) into the cold store of the
shard owning its positions; for a shard w > 0 the rows (F32) travel worker 0 -> driver ->
worker w in the splits already there: on average one K and one V row per token and layer,
as many as this step's new rows.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..attention.kv_cache import BLOCK
from ..attention.kv_cache import CacheStep
from ..attention.kv_cache import _read_only
from ..attention.kv_cache import _round_up
from ..errors import ShapeError
from ..tensor import nbytes
from ..tensor import set_name
from ..types import GGMLType
from ..types import as_type
from .context_split import ShardedKVCache

HOT = 0          # the shard whose worker holds the ring: the chain's first


class MixedShardedKVCache(ShardedKVCache):
    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                 n_shards: int, hot_tokens: int = 256, cold_type=GGMLType.Q4_0,
                 max_batch: int = 64, head_dim_v: Optional[int] = None,
                 hot_type=GGMLType.F16, chain: bool = True):
        if hot_tokens < 0 or max_batch <= 0:
            raise ShapeError(f"MixedShardedKVCache: hot_tokens >= 0 and max_batch > 0 required "
                             f"(got {hot_tokens}, {max_batch})")
        self.hot_tokens, self.max_batch = hot_tokens, max_batch
        self.cold_type, self.hot_type = as_type(cold_type), as_type(hot_type)
        self.cold_count = 0            # positions [0, cold_count) are cold
        super().__init__(n_layer, n_head_kv, head_dim, n_ctx, n_shards,
                         [self.cold_type] * n_shards, head_dim_v, chain)
        self.name = "mixed sharded kv cache"

    def _make_stores(self) -> None:
        from ..context import new_tensor_2d
        # MixedKVCache's ring size (the hot tokens never exceed max(hot_tokens, batch) + 31):
        # the same rows in the same slots is what makes the ring's units the single cache's
        self.ring = min(_round_up(self.n_ctx, BLOCK),
                        _round_up(max(self.hot_tokens, self.max_batch) + BLOCK - 1, BLOCK))
        self._sink = self.ring           # one row past the ring: padding tokens write it
        # ring slots from any tail, wrapping: a step's slots are a view (n <= ring)
        self._ring_ids = _read_only(np.arange(2 * self.ring, dtype=np.int64) % self.ring)
        dk, dv = self.head_dim * self.n_head_kv, self.head_dim_v * self.n_head_kv
        L, C, R = self.n_layer, self.shard_cap, self.ring + 1
        self.ctx = self._new_ctx([(self.hot_type, d, R) for _ in range(L) for d in (dk, dv)]
                                 + [(self.cold_type, d, C) for _ in range(self.n_shards)
                                    for _ in range(L) for d in (dk, dv)])

        def store(nm, t, d, rows, w=None):
            sfx = "" if w is None else f".s{w}"
            return [set_name(new_tensor_2d(self.ctx, t, d, rows), f"cache.{nm}-{il}{sfx}")
                    for il in range(L)]
        self.hot_k, self.hot_v = store("hot_k", self.hot_type, dk, R), \
            store("hot_v", self.hot_type, dv, R)
        self.cold_k = [store("cold_k", self.cold_type, dk, C, w) for w in range(self.n_shards)]
        self.cold_v = [store("cold_v", self.cold_type, dv, C, w) for w in range(self.n_shards)]

    def shard_tensors(self, w: int) -> list:
        ring = self.hot_k + self.hot_v if w == HOT else []
        return ring + self.cold_k[w] + self.cold_v[w]

    # --- a step ------------------------------------------------------------------------------
    def begin(self, n_tokens: int, n_pad: Optional[int] = None) -> CacheStep:
        """Plan a step: MixedKVCache.plan_moves over the whole context (whole oldest blocks,
        as many as leave at least hot_tokens hot)."""
        self._check_room(n_tokens)
        n_pad = self._pad_to(n_tokens, n_pad)
        if n_pad > self.max_batch:
            raise ShapeError(f"MixedShardedKVCache.begin: {n_pad} tokens exceed max_batch="
                             f"{self.max_batch}; split the batch")
        hot = self.n_past - self.cold_count
        excess = hot + n_tokens - self.hot_tokens
        k = 0 if excess < BLOCK else min(excess // BLOCK, hot // BLOCK)
        cold_after = self.cold_count + k * BLOCK
        pos = self._positions[self.n_past:self.n_past + n_tokens]
        tail = self.n_past % self.ring                  # slot = position modulo the ring
        moves = [(b % self.ring, b) for b in range(self.cold_count, cold_after, BLOCK)]
        self.step = CacheStep(n_tokens, pos, self._ring_ids[tail:tail + n_tokens], moves,
                              cold_after, n_pad)
        self._inputs, self._shard_ids, self._masks, self._move_in = [], {}, {}, {}
        self._moved_rows_of = {}
        return self.step

    def _range(self, lo: int, hi: int, w: int) -> tuple:
        """[lo, hi) clipped to shard w's range, as shard-local positions."""
        s = self.starts[w]
        a = min(max(lo - s, 0), self.shard_cap)
        return a, max(a, min(hi - s, self.shard_cap))

    def _cold_view(self, w: int) -> int:
        return self._kv_view(self._range(0, self._need_step().cold_after, w)[1], self.shard_cap)

    def _moved(self, w: int) -> tuple:
        """Shard-local positions of shard w's rows turning cold in this step."""
        return self._range(self.cold_count, self._need_step().cold_after, w)

    def _writes(self, w: int) -> bool:
        return w == HOT

    def graph_key(self) -> tuple:
        def shard(w):
            a, b = self._moved(w)
            return self._cold_view(w), b - a
        return (self._need_step().n_pad, tuple(shard(w) for w in range(self.n_shards)))

    def _slots(self, w: int):
        return self._fill_slots

    # --- graph building ----------------------------------------------------------------------
    def _move_ids(self, ctx, w: int) -> tuple:
        """(ring rows I32, cold rows I64) of shard w's block moves: inputs, values from the
        current step (graph reuse)."""
        if w not in self._move_in:
            first = self.starts[w]

            def src(view: np.ndarray) -> None:
                a, b = self._moved(w)
                view[0] = np.arange(first + a, first + b) % self.ring

            def dst(view: np.ndarray) -> None:
                view[0] = np.arange(*self._moved(w))
            n = self._moved(w)[1] - self._moved(w)[0]
            self._move_in[w] = (self._input(ctx, GGMLType.I32, n, 0, src, f"kv_move_src.s{w}"),
                                self._input(ctx, GGMLType.I64, n, 0, dst, f"kv_move_dst.s{w}"))
        return self._move_in[w]

    def _shard_writes(self, ctx, gf, il: int, w: int) -> None:
        """Shard 0's turn: every block turning cold read out of the ring (get_rows, on
        worker 0, before this step's writes may reuse its rows), shard 0's own into its
        cold store, then this step's rows into the ring. Shard w > 0: its blocks' rows
        (read in shard 0's turn) into its cold store (set_rows, quantizing, on worker w),
        before its attention."""
        from ..graph import build_forward_expand
        from ..ops.rows import get_rows
        from ..ops.rows import set_rows
        if w == HOT:
            for v in range(self.n_shards):
                a, b = self._moved(v)
                if b > a:
                    src = self._move_ids(ctx, v)[0]
                    rows = [set_name(get_rows(ctx, hot[il], src), f"kv_move_rows.{nm}-{il}.s{v}")
                            for hot, nm in ((self.hot_k, "k"), (self.hot_v, "v"))]
                    for r in rows:
                        build_forward_expand(gf, r)
                    self._moved_rows_of[(il, v)] = rows
        rows = self._moved_rows_of.pop((il, w), None)
        if rows is not None:
            dst = self._move_ids(ctx, w)[1]
            for r, cold, nm in zip(rows, (self.cold_k, self.cold_v), "kv"):
                build_forward_expand(gf, set_name(set_rows(ctx, cold[w][il], r, dst),
                                                  f"kv_move.{nm}-{il}.s{w}"))
        if w == HOT:
            self._write_rows(ctx, gf, self.hot_k[il], self.hot_v[il], il, w)

    def _segments(self, ctx, il: int, w: int):
        n_cold = self._cold_view(w)
        if w != HOT and n_cold == 0:
            return None
        if w not in self._masks:
            n_pad = self._need_step().n_pad
            hot_mask = cold_mask = None
            if w == HOT:
                hot_mask = self._input(ctx, GGMLType.F16, self.ring, n_pad, self._fill_hot_mask,
                                       "kq_mask_hot")
            if n_cold:
                cold_mask = self._input(ctx, GGMLType.F16, n_cold, n_pad, self._cold_mask(w),
                                        f"kq_mask_cold.s{w}")
            self._masks[w] = (hot_mask, cold_mask)
        hot_mask, cold_mask = self._masks[w]
        seg = [None] * 6
        if hot_mask is not None:
            seg[0:3] = (self._view3(self.hot_k[il], ctx, self.ring, self.head_dim),
                        self._view3(self.hot_v[il], ctx, self.ring, self.head_dim_v),
                        hot_mask)
        if cold_mask is not None:
            seg[3:6] = (self._view3(self.cold_k[w][il], ctx, n_cold, self.head_dim),
                        self._view3(self.cold_v[w][il], ctx, n_cold, self.head_dim_v),
                        cold_mask)
        return tuple(seg)

    def _fill_hot_mask(self, m: np.ndarray) -> None:
        """The ring's mask once the step's blocks have left it and its rows are in: the
        hot positions [cold_after, n_past + n_tokens) at their slots."""
        st = self.step
        kpos = np.full(self.ring, -1, dtype=np.int64)
        hot = np.arange(st.cold_after, self.n_past + st.n_tokens, dtype=np.int64)
        kpos[hot % self.ring] = hot
        self._fill_mask(m, kpos, kpos >= 0)

    def _cold_mask(self, w: int):
        """fill(view) of shard w's cold mask: its key k is position starts[w] + k, cold
        below cold_after (older than every query)."""
        first = self.starts[w]

        def fill(m: np.ndarray) -> None:
            self._fill_prefix_mask(m, first, self.step.cold_after)
        return fill

    def commit(self) -> None:
        st = self._need_step()
        self.cold_count = st.cold_after
        self.n_past += st.n_tokens
        self.step = None

    # --- introspection -------------------------------------------------------------------------
    def nbytes(self) -> dict:
        per = [sum(nbytes(t) for t in self.shard_tensors(w)) for w in range(self.n_shards)]
        hot = sum(nbytes(t) for t in self.hot_k + self.hot_v)
        total = sum(per)
        f16 = self.n_layer * self.n_ctx * 2 * (self.head_dim + self.head_dim_v) * self.n_head_kv
        return {"hot": hot, "cold": total - hot, "total": total, "f16": f16,
                "ratio": total / f16, "shards": per}

    def __repr__(self) -> str:
        return (f"MixedShardedKVCache({self.n_layer} layers, {self.n_past}/{self.n_ctx} tokens "
                f"in {self.n_shards} shards of {self.shard_cap}: {self.cold_count} cold "
                f"{self.cold_type.tname}, {self.n_past - self.cold_count} hot "
                f"{self.hot_type.tname} in shard {HOT}'s ring)")
