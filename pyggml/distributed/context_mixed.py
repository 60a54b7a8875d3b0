"""Context split over the mixed cache: every token-range shard is itself hot F16 + cold Q4_0.

Which tokens are cold is the single-process MixedKVCache's rule, taken over the whole
context: the newest `hot_tokens` tokens (up to 31 more, plus a step's batch) are hot; older
ones move to the cold type in whole 32-token blocks, oldest first. Cold positions are then
always [0, cold_count) with cold_count a multiple of 32, and a shard's range (a multiple of
32 long) never cuts a block.

Where the hot window lives: on the shards that own its positions - the newest shard, and
the one before it while the window straddles their boundary. Each shard keeps a small hot
ring (rows: shard-local position modulo the ring size) next to a cold store of its whole
range; a block turning cold is a get_rows of its ring rows and a set_rows (quantizing) into
its cold rows, on the worker that already holds it. So no K/V row ever crosses the network
(a worker dedicated to the hot window would ship every block that ages to the worker of its
range), a step's traffic stays q, the new K/V rows and (O, M, S), and each shard's attention
is one flash_attn_ext_with_state over its two segments (hot ring, cold rows), chained or
merged as context_split.py's: the same keys, the same values (F16 or Q4_0) as the
single-process mixed cache, so the result equals it up to float32 rounding (not bitwise: a
shard's ring holds its hot keys in another order than the single cache's ring, so they meet
the kernel's fold in another order).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..attention.kv_cache import BLOCK
from ..attention.kv_cache import CacheStep
from ..attention.kv_cache import _round_up
from ..errors import ShapeError
from ..tensor import nbytes
from ..tensor import set_name
from ..types import GGMLType
from ..types import as_type
from .context_split import ShardedKVCache


class MixedShardedKVCache(ShardedKVCache):
    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                 n_shards: int, hot_tokens: int = 256, cold_type=GGMLType.Q4_0,
                 max_batch: int = 64, head_dim_v: Optional[int] = None,
                 hot_type=GGMLType.F16):
        if hot_tokens < 0 or max_batch <= 0:
            raise ShapeError(f"MixedShardedKVCache: hot_tokens >= 0 and max_batch > 0 required "
                             f"(got {hot_tokens}, {max_batch})")
        self.hot_tokens, self.max_batch = hot_tokens, max_batch
        self.cold_type, self.hot_type = as_type(cold_type), as_type(hot_type)
        self.cold_count = 0            # positions [0, cold_count) are cold
        super().__init__(n_layer, n_head_kv, head_dim, n_ctx, n_shards,
                         [self.cold_type] * n_shards, head_dim_v)
        self.name = "mixed sharded kv cache"

    def _make_stores(self) -> None:
        from ..context import new_tensor_2d
        # the hot tokens never exceed max(hot_tokens, batch) + 31 (MixedKVCache's sizing),
        # and a shard never holds more than its range
        self.ring = min(self.shard_cap,
                        _round_up(max(self.hot_tokens, self.max_batch) + BLOCK - 1, BLOCK))
        self._sink = self.ring           # one row past the ring: rows not the shard's own
        dk, dv = self.head_dim * self.n_head_kv, self.head_dim_v * self.n_head_kv
        L, C, R = self.n_layer, self.shard_cap, self.ring + 1
        self.ctx = self._new_ctx([(t, d, n) for _ in range(self.n_shards) for _ in range(L)
                                  for t, n in ((self.hot_type, R), (self.cold_type, C))
                                  for d in (dk, dv)])

        def stores(kind, t, d, rows):
            return [[set_name(new_tensor_2d(self.ctx, t, d, rows), f"cache.{kind}-{il}.s{w}")
                     for il in range(L)] for w in range(self.n_shards)]
        self.hot_k, self.hot_v = stores("hot_k", self.hot_type, dk, R), \
            stores("hot_v", self.hot_type, dv, R)
        self.cold_k, self.cold_v = stores("cold_k", self.cold_type, dk, C), \
            stores("cold_v", self.cold_type, dv, C)

    def shard_tensors(self, w: int) -> list:
        return self.hot_k[w] + self.hot_v[w] + self.cold_k[w] + self.cold_v[w]

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
        pos = self.n_past + np.arange(n_tokens, dtype=np.int64)
        moves = [(b, b) for b in range(self.cold_count, cold_after, BLOCK)]
        self.step = CacheStep(n_tokens, pos, pos.copy(), moves, cold_after, n_pad)
        self._inputs, self._shard_ids, self._masks, self._move_in = [], {}, {}, {}
        return self.step

    def _range(self, lo: int, hi: int, w: int) -> tuple:
        """[lo, hi) clipped to shard w's range, as shard-local positions."""
        s = self.starts[w]
        a = min(max(lo - s, 0), self.shard_cap)
        return a, max(a, min(hi - s, self.shard_cap))

    def _hot(self, w: int) -> tuple:
        st = self._need_step()
        return self._range(st.cold_after, self.n_past + st.n_tokens, w)

    def _cold_view(self, w: int) -> int:
        return self._kv_view(self._range(0, self._need_step().cold_after, w)[1], self.shard_cap)

    def _moved(self, w: int) -> tuple:
        return self._range(self.cold_count, self._need_step().cold_after, w)

    def _moved_rows(self, w: int) -> np.ndarray:
        return np.arange(*self._moved(w), dtype=np.int64)

    def graph_key(self) -> tuple:
        def shard(w):
            a, b = self._moved(w)
            h0, h1 = self._hot(w)
            return self._cold_view(w), h1 > h0, b - a, self._writes(w)
        return (self._need_step().n_pad, tuple(shard(w) for w in range(self.n_shards)))

    def _row(self, local: np.ndarray) -> np.ndarray:
        return local % self.ring

    # --- graph building ----------------------------------------------------------------------
    def _shard_writes(self, ctx, gf, il: int, w: int) -> None:
        """Blocks of shard w turning cold (ring rows -> cold rows, quantized), then this
        step's rows into its ring; graph order puts the moves' reads before the writes that
        may reuse their ring rows."""
        from ..graph import build_forward_expand
        from ..ops.rows import get_rows
        from ..ops.rows import set_rows
        a, b = self._moved(w)
        if b > a:
            if w not in self._move_in:        # values from the current step (graph reuse)
                self._move_in[w] = (
                    self._input(ctx, GGMLType.I32, b - a, 0,
                                lambda t: self._row(self._moved_rows(w)), f"kv_move_src.s{w}"),
                    self._input(ctx, GGMLType.I64, b - a, 0,
                                lambda t: self._moved_rows(w), f"kv_move_dst.s{w}"))
            src, dst = self._move_in[w]
            for hot, cold, nm in ((self.hot_k, self.cold_k, "k"), (self.hot_v, self.cold_v, "v")):
                rows = set_name(get_rows(ctx, hot[w][il], src), f"kv_move_rows.{nm}-{il}.s{w}")
                build_forward_expand(gf, set_name(set_rows(ctx, cold[w][il], rows, dst),
                                                  f"kv_move.{nm}-{il}.s{w}"))
        if self._writes(w):
            self._write_rows(ctx, gf, self.hot_k[w][il], self.hot_v[w][il], il, w)

    def _segments(self, ctx, il: int, w: int):
        h0, h1 = self._hot(w)
        n_cold = self._cold_view(w)
        if h1 == h0 and n_cold == 0:
            return None
        if w not in self._masks:
            n_pad = self._need_step().n_pad
            hot_mask = cold_mask = None
            if h1 > h0:
                hot_mask = self._input(ctx, GGMLType.F16, self.ring, n_pad, self._hot_mask(w),
                                       f"kq_mask_hot.s{w}")
            if n_cold:
                cold_mask = self._input(ctx, GGMLType.F16, n_cold, n_pad, self._cold_mask(w),
                                        f"kq_mask_cold.s{w}")
            self._masks[w] = (hot_mask, cold_mask)
        hot_mask, cold_mask = self._masks[w]
        seg = [None] * 6
        if hot_mask is not None:
            seg[0:3] = (self._view3(self.hot_k[w][il], ctx, self.ring, self.head_dim),
                        self._view3(self.hot_v[w][il], ctx, self.ring, self.head_dim_v),
                        hot_mask)
        if cold_mask is not None:
            seg[3:6] = (self._view3(self.cold_k[w][il], ctx, n_cold, self.head_dim),
                        self._view3(self.cold_v[w][il], ctx, n_cold, self.head_dim_v),
                        cold_mask)
        return tuple(seg)

    def _hot_mask(self, w: int):
        def values(t=None) -> np.ndarray:
            h0, h1 = self._hot(w)
            kpos = np.full(self.ring, -1, dtype=np.int64)
            local = np.arange(h0, h1, dtype=np.int64)
            kpos[self._row(local)] = self.starts[w] + local
            return self._mask_values(kpos, kpos >= 0, self.step.n_pad)
        return values

    def _cold_mask(self, w: int):
        def values(t=None) -> np.ndarray:
            kpos = self.starts[w] + np.arange(self._cold_view(w), dtype=np.int64)
            return self._mask_values(kpos, kpos < self.step.cold_after, self.step.n_pad)
        return values

    def commit(self) -> None:
        st = self._need_step()
        self.cold_count = st.cold_after
        self.n_past += st.n_tokens
        self.step = None

    # --- introspection -------------------------------------------------------------------------
    def nbytes(self) -> dict:
        per = [sum(nbytes(t) for t in self.shard_tensors(w)) for w in range(self.n_shards)]
        hot = sum(nbytes(t) for w in range(self.n_shards) for t in self.hot_k[w] + self.hot_v[w])
        total = sum(per)
        f16 = self.n_layer * self.n_ctx * 2 * (self.head_dim + self.head_dim_v) * self.n_head_kv
        return {"hot": hot, "cold": total - hot, "total": total, "f16": f16,
                "ratio": total / f16, "shards": per}

    def __repr__(self) -> str:
        return (f"MixedShardedKVCache({self.n_layer} layers, {self.n_past}/{self.n_ctx} tokens "
                f"in {self.n_shards} shards of {self.shard_cap}: {self.cold_count} cold "
                f"{self.cold_type.tname}, {self.n_past - self.cold_count} hot "
                f"{self.hot_type.tname})")
