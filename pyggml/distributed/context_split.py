"""Context parallelism: the KV cache sharded by token ranges across workers, attention
combined with the softmax-state rule of flash_attn_ext_with_state.

Shard w holds positions [w*C, (w+1)*C) of every layer (C = n_ctx / n_shards rounded up to
FOLD = 64, the Numba kernel's fold unit), in its own type (context_mixed.py: the mixed
cache over the shards, its hot ring on shard 0). Per layer and step the shards that hold
keys are combined one of two ways:

  chained (the default, exact): shard w's flash_attn_ext_with_state continues from shard
      w-1's state and output (o_prev), in key order. The kernel folds keys in aligned units
      of FOLD in key order and a shard's range is whole units, so the chain computes what
      one process computes over the whole cache, bit for bit. The shards run one after
      another: one round trip per shard and layer.
  parallel (chain=False): every shard from a fresh state at once, giving (O_w, M_w, S_w);
      the driver merges them in the graph (lse_merge):

          L_w = M_w + log S_w            (the log-sum-exp of shard w's scores; -inf when empty)
          a_w = softmax_w(L_w)           (= S_w e^(M_w - M) / sum_v S_v e^(M_v - M))
          O   = sum_w a_w O_w

      One round trip per layer and the shards read their keys concurrently, but the sums
      run in another order than one process's: outputs differ by float32 rounding, which
      a quantized model's activation quantization (Q8_1 blocks) amplifies over its layers
      (docs/DISTRIBUTED.md, Exactness).

An empty shard is skipped; a row empty everywhere (a padding token) gives O = 0. The
scheduler puts each shard's set_rows and attention on the worker holding it (its stores
live there); q and the new K/V rows travel to the workers, (O_w, state) come back.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..attention.kv_cache import CacheStep
from ..attention.kv_cache import F16KVCache
from ..attention.kv_cache import _CacheBase
from ..attention.kv_cache import _fill_fresh_state
from ..attention.kv_cache import _round_up
from ..backends.numba_cpu.kernels.attention import FOLD
from ..errors import ShapeError
from ..tensor import Tensor
from ..tensor import nbytes
from ..tensor import set_name
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type

EMPTY_LSE = -1e30        # stands for log 0: softmax then weighs an empty shard exactly 0


class ShardedKVCache(_CacheBase):
    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int,
                 n_shards: int, types=GGMLType.F16, head_dim_v: Optional[int] = None,
                 chain: bool = True):
        super().__init__(n_layer, n_head_kv, head_dim, n_ctx, head_dim_v, "sharded kv cache")
        if n_shards < 1:
            raise ShapeError(f"ShardedKVCache: n_shards must be >= 1, got {n_shards}")
        types = [as_type(t) for t in (types if isinstance(types, (list, tuple))
                                      else [types] * n_shards)]
        if len(types) != n_shards:
            raise ShapeError(f"ShardedKVCache: {len(types)} shard types for {n_shards} shards")
        for t in types:
            bs = TRAITS[t].blck_size
            if bs > 1 and (head_dim % bs or (head_dim_v or head_dim) % bs):
                raise ShapeError(f"ShardedKVCache: head_dim {head_dim} must be a multiple of "
                                 f"{bs} for a {t.tname} shard")
        self.n_shards, self.types, self.chain = n_shards, types, chain
        self.shard_cap = _round_up(-(-n_ctx // n_shards), FOLD)     # whole fold units
        self.starts = [w * self.shard_cap for w in range(n_shards)]
        self._make_stores()

    def _make_stores(self) -> None:
        n_layer, types = self.n_layer, self.types
        self._sink = self.shard_cap          # one row past each shard: rows not its own
        dk, dv = self.head_dim * self.n_head_kv, self.head_dim_v * self.n_head_kv
        rows = self.shard_cap + 1
        self.ctx = self._new_ctx([(t, d, rows) for t in types for _ in range(n_layer)
                                  for d in (dk, dv)])
        from ..context import new_tensor_2d
        self.k = [[set_name(new_tensor_2d(self.ctx, t, dk, rows), f"cache.k-{il}.s{w}")
                   for il in range(n_layer)] for w, t in enumerate(types)]
        self.v = [[set_name(new_tensor_2d(self.ctx, t, dv, rows), f"cache.v-{il}.s{w}")
                   for il in range(n_layer)] for w, t in enumerate(types)]

    def shard_tensors(self, w: int) -> list:
        return self.k[w] + self.v[w]

    # --- a step ------------------------------------------------------------------------------
    def begin(self, n_tokens: int, n_pad: Optional[int] = None) -> CacheStep:
        self._check_room(n_tokens)
        n_pad = self._pad_to(n_tokens, n_pad)
        pos = self._positions[self.n_past:self.n_past + n_tokens]
        self.step = CacheStep(n_tokens, pos, pos, [], 0, n_pad)
        self._inputs, self._shard_ids, self._masks = [], {}, {}
        return self.step

    def _used(self, w: int) -> int:
        """Rows of shard w holding keys once this step's tokens are written."""
        end = self.n_past + self._need_step().n_tokens
        return int(np.clip(end - self.starts[w], 0, self.shard_cap))

    def _n_kv(self, w: int) -> int:
        return self._kv_view(self._used(w), self.shard_cap)

    def _writes(self, w: int) -> bool:
        st = self._need_step()
        lo, hi = self.starts[w], self.starts[w] + self.shard_cap
        return bool(((st.positions >= lo) & (st.positions < hi)).any())

    def graph_key(self) -> tuple:
        return (self._need_step().n_pad,
                tuple((self._n_kv(w), self._writes(w)) for w in range(self.n_shards)))

    def _slots(self, w: int):
        """fill(view) of shard w's row ids: a token's shard-local position when the shard
        holds it, else (and for padding tokens) the sink row."""
        first, sink = self.starts[w], self._sink

        def fill(view: np.ndarray) -> None:
            st = self.step
            ids = view[0]
            if st.n_tokens == 1 == len(ids):              # a decode step: one element
                row = int(st.positions[0]) - first
                ids[0] = row if 0 <= row < self.shard_cap else sink
                return
            rows = ids[:st.n_tokens]
            np.subtract(st.positions, first, out=rows)
            rows[(rows < 0) | (rows >= self.shard_cap)] = sink
            ids[st.n_tokens:] = sink
        return fill

    def _mask(self, w: int):
        """fill(view) of shard w's mask: its key k is position starts[w] + k."""
        first = self.starts[w]

        def fill(m: np.ndarray) -> None:
            self._fill_prefix_mask(m, first, self.n_past + self.step.n_tokens)
        return fill

    def store(self, ctx, gf, il: int, k_cur: Tensor, v_cur: Tensor) -> None:
        """Keep this step's K/V rows of layer il; attention() writes them to the shards their
        positions fall in, right before that shard's attention, so a worker gets its writes
        and its attention in one split (one round trip)."""
        self._gf = gf
        self._pending = (k_cur, v_cur)

    def _shard_writes(self, ctx, gf, il: int, w: int) -> None:
        """This step's rows of shard w (if any are its own), before its attention."""
        if self._writes(w):
            self._write_rows(ctx, gf, self.k[w][il], self.v[w][il], il, w)

    def _segments(self, ctx, il: int, w: int):
        """with_state's (k, v, mask, k_cold, v_cold, mask_cold) over shard w's keys; None
        when it holds none."""
        n_kv = self._n_kv(w)
        if n_kv == 0:
            return None
        if w not in self._masks:
            self._masks[w] = self._input(ctx, GGMLType.F16, n_kv, self._need_step().n_pad,
                                         self._mask(w), f"kq_mask.s{w}")
        return (self._view3(self.k[w][il], ctx, n_kv, self.head_dim),
                self._view3(self.v[w][il], ctx, n_kv, self.head_dim_v), self._masks[w],
                None, None, None)

    def _write_rows(self, ctx, gf, k_store, v_store, il: int, w: int) -> None:
        """set_rows of this step's K/V into shard w's stores (row ids: _slots(w))."""
        from ..graph import build_forward_expand
        from ..ops.rows import set_rows
        from ..ops.view import reshape_2d
        st = self._need_step()
        if w not in self._shard_ids:
            self._shard_ids[w] = self._input(ctx, GGMLType.I64, st.n_pad, 0, self._slots(w),
                                             f"kv_slots.s{w}")
        for cache, cur, nm in ((k_store, self._pending[0], "k"),
                               (v_store, self._pending[1], "v")):
            out = set_rows(ctx, cache, reshape_2d(ctx, cur, cache.ne[0], st.n_pad),
                           self._shard_ids[w])
            set_name(out, f"kv_store.{nm}-{il}.s{w}")
            build_forward_expand(gf, out)

    def attention(self, ctx, il: int, q: Tensor, scale: float, prec: int = 0) -> Tensor:
        """Per shard: this step's rows written (if any are its own), then one
        flash_attn_ext_with_state over its keys, chained or merged (module doc). Graph
        order does what data cannot say: the attention reads the cache through views that
        do not depend on the writes, and the merge reads the states the attention writes."""
        from ..graph import build_forward_expand
        from ..ops.attention import flash_attn_ext_set_prec
        from ..ops.attention import flash_attn_ext_with_state
        self._need_step()
        gf = self._gf
        for t in (*self._pending, q):           # the driver's part first: one split
            build_forward_expand(gf, t)
        outs, states = [], []
        for w in range(self.n_shards):
            self._shard_writes(ctx, gf, il, w)
            seg = self._segments(ctx, il, w)
            if seg is None:
                continue
            if not (self.chain and states):     # chained: one state, carried along
                states.append(self._input(ctx, GGMLType.F32, 2, q.ne[2] * q.ne[1],
                                          _fill_fresh_state, f"attn_state-{il}.s{w}"))
            o_prev = outs[-1] if self.chain and outs else None
            k, v, mask, kq, vq, mask_q = seg
            o = flash_attn_ext_with_state(ctx, q, k, v, mask, kq, vq, mask_q, states[-1], scale,
                                          0.0, 0.0, o_prev=o_prev)
            if prec:
                flash_attn_ext_set_prec(o, prec)
            set_name(o, f"attn_out-{il}.s{w}")
            build_forward_expand(gf, o)
            outs.append(o)
        self._pending = None
        o = outs[-1] if self.chain or len(outs) == 1 else lse_merge(ctx, gf, outs, states)
        set_name(o, f"attn_out-{il}")
        return o

    commit = F16KVCache.commit           # the step's tokens are in: n_past moves on

    def nbytes(self) -> dict:
        per = [sum(nbytes(t) for t in self.shard_tensors(w)) for w in range(self.n_shards)]
        rows = self.shard_cap + 1                    # the same shards, all in F16
        f16 = self.n_shards * self.n_layer * rows * 2 * (self.head_dim + self.head_dim_v) \
            * self.n_head_kv
        hot = sum(b for b, t in zip(per, self.types) if t in (GGMLType.F16, GGMLType.F32,
                                                                GGMLType.BF16))
        total = sum(per)
        return {"hot": hot, "cold": total - hot, "total": total, "f16": f16,
                "ratio": total / f16, "shards": per}


def lse_merge(ctx, gf, outs: list, states: list) -> Tensor:
    """Merge per-shard attention outputs O_w [DV, n_head, n_batch] by their softmax states
    (rows head*n_batch + pos of [M, S]) with graph ops: softmax over the shards of
    M_w + log S_w gives each shard's weight (module doc). The outputs are expanded into gf
    first: the states are read through views of the state tensors, which depend on nothing,
    so only graph order puts those reads after the with_state nodes that write them."""
    import pyggml as gg
    for o in outs:
        gg.build_forward_expand(gf, o)
    n_head, n_batch = outs[0].ne[1], outs[0].ne[2]
    rows = n_head * n_batch
    lse = None
    for st in states:
        m = gg.cont(ctx, gg.view_2d(ctx, st, 1, rows, st.nb[1], 0))
        s = gg.cont(ctx, gg.view_2d(ctx, st, 1, rows, st.nb[1], st.nb[0]))
        lw = gg.clamp(ctx, gg.add(ctx, m, gg.log(ctx, s)), EMPTY_LSE, float("inf"))
        lse = lw if lse is None else gg.concat(ctx, lse, lw, 0)
    a = gg.soft_max(ctx, lse)                             # [n_shards, rows]
    set_name(a, "attn_shard_weights")
    out = None
    for w, o in enumerate(outs):
        aw = gg.cont(ctx, gg.view_2d(ctx, a, 1, rows, a.nb[1], w * a.nb[0]))
        aw = gg.permute(ctx, gg.reshape_3d(ctx, aw, 1, n_batch, n_head), 0, 2, 1, 3)
        term = gg.mul(ctx, o, aw)                         # [DV, n_head, n_batch] * [1, ...]
        out = term if out is None else gg.add(ctx, out, term)
    return out
