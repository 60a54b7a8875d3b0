"""Debugging on the eval callback: the first node that produces NaN/Inf, and a per-node profile."""
from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import Optional

import numpy as np

from .. import data
from ..graph import CGraph
from ..tensor import Tensor


def _stats(t: Tensor) -> dict:
    v = data.read(t)
    fin = np.isfinite(v)
    out = {"name": t.name, "op": t.op_name, "type": t.type.tname, "ne": t.ne[:t.n_dims],
           "n_nan": int(np.isnan(v).sum()), "n_inf": int(np.isinf(v).sum())}
    if fin.any():
        f = v[fin]
        out.update(min=float(f.min()), max=float(f.max()), mean=float(f.mean()),
                   absmax=float(np.abs(f).max()))
    return out


@dataclass
class NanReport:
    node: Tensor
    index: int
    stats: dict
    inputs: list = field(default_factory=list)    # stats of each source

    def __str__(self) -> str:
        lines = [f"first non-finite node: #{self.index} {self.node.op_name} '{self.node.name}' "
                 f"({self.stats['n_nan']} NaN, {self.stats['n_inf']} Inf of "
                 f"{int(np.prod(self.node.ne))} values)"]
        for j, s in enumerate(self.inputs):
            if s is None:
                continue
            rng = (f"min {s.get('min', float('nan')):.4g} max {s.get('max', float('nan')):.4g} "
                   f"absmax {s.get('absmax', float('nan')):.4g}")
            lines.append(f"  src {j}: {s['op']} '{s['name']}' {s['type']} ne={s['ne']} "
                         f"NaN={s['n_nan']} Inf={s['n_inf']} {rng}")
        return "\n".join(lines)


def _graph_compute(backend, gf: CGraph, cb) -> None:
    if hasattr(backend, "graph_compute"):
        backend.graph_compute(gf, cb)
    else:                                  # a scheduler
        old = backend.eval_cb
        backend.eval_cb = cb
        try:
            backend.graph_compute(gf)
        finally:
            backend.eval_cb = old


def find_first_nan(gf: CGraph, backend) -> Optional[NanReport]:
    """Compute gf node by node and stop at the first node whose output has NaN or Inf."""
    found: list = []
    index = {id(t): i for i, t in enumerate(gf.nodes)}

    def cb(t: Tensor, ask: bool) -> bool:
        if ask:
            return t.op is not None
        if t.buffer is not None and not (t.op is not None and t.op.view):
            v = data.read(t)
            if not np.isfinite(v).all():
                found.append(t)
                return False           # stop the graph here
        return True

    _graph_compute(backend, gf, cb)
    if not found:
        return None
    t = found[0]
    return NanReport(t, index.get(id(t), -1), _stats(t),
                     [(_stats(s) if s is not None and s.buffer is not None else None)
                      for s in t.src[:len(t.srcs)]])


def profile_graph(gf: CGraph, backend, runs: int = 1) -> list[dict]:
    """Per-node wall time through the eval callback (node by node).

    A node's time runs from the end of the previous node to its own end, so it includes
    its dispatch and the rows sum to the measured total of the compute."""
    index = {id(t): i for i, t in enumerate(gf.nodes)}
    acc: dict[int, float] = {}
    last = [0.0]

    def cb(t: Tensor, ask: bool) -> bool:
        if ask:
            return True
        now = time.perf_counter()
        acc[id(t)] = acc.get(id(t), 0.0) + (now - last[0])
        last[0] = now
        return True

    total = 0.0
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        last[0] = t0
        _graph_compute(backend, gf, cb)
        total += time.perf_counter() - t0
    rows = []
    for t in gf.nodes:
        if id(t) not in acc:
            continue
        us = acc[id(t)] / runs * 1e6
        rows.append({"index": index[id(t)], "op": t.op_name, "name": t.name,
                     "type": t.type.tname, "ne": t.ne[:t.n_dims],
                     "backend": getattr(backend, "name", "sched"), "us": us})
    total_us = total / runs * 1e6
    for r in rows:
        r["pct"] = 100.0 * r["us"] / total_us if total_us else 0.0
        r["total_us"] = total_us
    return rows


def format_profile(rows: list[dict], top: Optional[int] = None) -> str:
    if not rows:
        return "(empty profile)"
    total = rows[0]["total_us"]
    shown = sorted(rows, key=lambda r: -r["us"])[:top] if top else rows
    w = max(len(r["name"]) for r in shown)
    out = [f"{'#':>4}  {'op':<22} {'name':<{w}}  {'type':<5} {'ne':<22} {'backend':<9} "
           f"{'µs':>10} {'%':>6}"]
    for r in shown:
        out.append(f"{r['index']:>4}  {r['op']:<22} {r['name']:<{w}}  {r['type']:<5} "
                   f"{str(r['ne']):<22} {r['backend']:<9} {r['us']:>10.1f} {r['pct']:>6.1f}")
    out.append(f"total {total:.1f} µs over {len(rows)} nodes "
               f"(sum of rows {sum(r['us'] for r in rows):.1f} µs)")
    return "\n".join(out)
