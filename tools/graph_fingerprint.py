"""A fingerprint of the SmolLM2 step graphs as bench_graph builds them, through every phase:
node order, names, types, shapes, strides, op_params, sources, views, flags (build);
each tensor's buffer and offset (alloc); n_tasks and work size (plan); the lowered table's
rows, kernels, n_tasks, barriers and descriptors (lower), addresses as (buffer, offset).

Run it on two trees (PYTHONPATH=tree) and compare the digests: a change that should only
make graph building cheaper must leave them all equal.

    python tools/graph_fingerprint.py [--dump DIR] [--stub-kernels] [--sched]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
from bench_graph import SMOLLM2
from bench_graph import make_cache
from bench_graph import stub_kernels

import pyggml as gg
from pyggml.backends.numba_cpu import desc as D
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.plan import graph_plan
from pyggml.models.llama import LlamaModel
from pyggml.sched.alloc import alloc_graph

# (cache, new tokens, tokens already cached, logits rows or None for all)
GRAPHS = (("f16", 1, 100, None), ("mixed", 1, 100, None), ("f16", 32, 0, None),
          ("mixed", 32, 0, None), ("mixed", 1, 64, None), ("mixed", 7, 60, 1),
          ("f16", 16, 40, 1))


def fingerprint(model, backend, kind, n_tokens, past, n_out, sched=None) -> dict:
    """One graph's phases hashed; `sched`: through Sched([numba, reference]) as the Decoder
    runs it (assignment, splits, allocation, each Numba split's table as compute makes it)."""
    cache = make_cache(kind, SMOLLM2, 1024, past)
    ctx = gg.init(mem_size=64 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 8192)
    cache.begin(n_tokens)
    model.build(ctx, gf, cache, n_tokens, n_outputs=n_out)
    tabs = []
    if sched is None:
        alloc_graph(gf)
        selected = backend.select(gf)
        cplan = graph_plan(gf, backend.n_threads, backend, selected)
        tabs.append(backend.lower(gf, cplan, selected))
        plan = dict(n_tasks=list(cplan.n_tasks), work=cplan.work_size)
    else:
        sched.alloc_graph(gf)
        for sp in sched.splits:
            if sp.backend is backend:
                g = sp.graph
                if g is None:                   # older pyggml: made at compute
                    g = gg.CGraph(len(sp.nodes))
                    g.nodes = sp.nodes
                    g.version = gf.version
                tabs.append(backend.table(g))
        plan = [[n, list(t), w] for n, t, w in (tab.plan_copy for tab in tabs)]
    ref = {}
    for i, t in enumerate(gf.leafs):
        ref[t] = f"L{i}"
    for i, t in enumerate(gf.nodes):
        ref[t] = f"N{i}"
    bufs = {}

    def where(t):
        r = t.view_src if t.view_src is not None else t
        b = r._buffer
        if b is None:
            return None
        tag = bufs.setdefault(id(b), (len(bufs), b))[0]
        return [tag, t.offs]

    def rec(t):
        return dict(op=t.op_name, name=t.name, type=int(t.type), ne=list(t.ne), nb=list(t.nb),
                    params=np.asarray(t.op_params).tobytes().hex(), flags=t.flags,
                    src=[None if s is None else ref.get(s, "?" + s.name) for s in t.src],
                    view=None if t.view_src is None else
                    [ref.get(t.view_src, "?" + t.view_src.name), t.view_offs],
                    at=where(t))

    out = dict(leafs=[rec(t) for t in gf.leafs], nodes=[rec(t) for t in gf.nodes])
    if sched is not None:
        out["splits"] = [dict(backend=sp.backend.name, nodes=[ref[n] for n in sp.nodes],
                              inputs=[ref.get(s, "?" + s.name) for s in sp.inputs])
                         for sp in sched.splits]
        for sp in sched.splits:                 # the copies' buffers, in split order
            for s in sp.inputs:
                where(sp.copies[id(s)])
    out["graph_buffer"] = [b.size for _, b in bufs.values() if b.name == "graph"]
    out["plan"] = plan
    spans = sorted((b.address, b.address + b.size, tag) for tag, b in bufs.values())
    out["table"] = [_table(tab, spans) for tab in tabs]
    if sched is None:
        out["table"] = out["table"][0]
    cache.step = None
    return out


def _table(tab, spans) -> dict:
    """A lowered table with addresses as (buffer tag, offset)."""
    descs = tab.descs.copy()
    for w in (D.H_WDATA, D.H_STATUS, D.H_SCRATCH):
        descs[:, w] = 0
    for s in range(D.N_SLOTS):
        col = D.HDR + s * D.SLOT + D.T_ADDR
        for r in range(len(descs)):
            a = int(descs[r, col])
            if a:
                tag = next(tag for lo, hi, tag in spans if lo <= a <= hi)
                descs[r, col] = tag << 40 | (a - dict((t, lo) for lo, _, t in spans)[tag])
    return dict(rows=list(tab.graph_index), kernels=[k.name for k in tab.kernels],
                n_tasks=tab.n_tasks.tolist(), sync=tab.sync.tolist(),
                descs=descs.tolist(), row_end=np.asarray(tab.row_end).tolist())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", metavar="DIR", help="write each graph's fingerprint as JSON")
    ap.add_argument("--stub-kernels", action="store_true",
                    help="no kernel compiled (bench_graph.stub_kernels; the table's kernel "
                         "names are still hashed, its addresses never were)")
    ap.add_argument("--sched", action="store_true",
                    help="through Sched([numba, reference]) as the Decoder runs (models.llama)")
    args = ap.parse_args(argv)
    if args.stub_kernels:
        stub_kernels()
    model = LlamaModel.random(SMOLLM2)
    backend = NumbaBackend(2)
    for g in GRAPHS:
        sched = gg.sched_new([backend, gg.backend_reference_init()]) if args.sched else None
        fp = fingerprint(model, backend, *g, sched=sched)
        text = json.dumps(fp, sort_keys=True)
        label = "{}-{}tok-{}past-{}out".format(*g)
        print(f"{label:28} {len(fp['nodes']):5} nodes  "
              f"{hashlib.sha256(text.encode()).hexdigest()[:16]}")
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            with open(os.path.join(args.dump, label + ".json"), "w") as f:
                f.write(text)
    backend.free()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
