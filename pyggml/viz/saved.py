"""Graphs saved as JSON (structure only: names, ops, types, shapes, params, edges), so a graph
built elsewhere can be drawn later with `pyggml dump-graph --graph FILE.json`."""
from __future__ import annotations

import json

import numpy as np

from ..errors import GGMLError
from ..graph import CGraph
from ..tensor import Tensor
from ..types import as_type


def save_graph(gf: CGraph, path: str) -> None:
    items = list(gf.leafs) + list(gf.nodes)
    idx = {id(t): i for i, t in enumerate(items)}
    extra = []
    for t in items:                       # sources outside the graph (rare) are kept too
        for s in t.src:
            if s is not None and id(s) not in idx:
                idx[id(s)] = len(items) + len(extra)
                extra.append(s)
    out = []
    for t in items + extra:
        out.append({"name": t.name, "op": t.op_name, "type": t.type.tname, "ne": t.ne, "nb": t.nb,
                    "flags": t.flags, "op_params": t.op_params.tolist(),
                    "src": [idx.get(id(s)) if s is not None else None for s in t.src],
                    "leaf": t in gf.leafs, "node": any(t is n for n in gf.nodes)})
    with open(path, "w") as f:
        json.dump({"format": "pyggml-graph-1", "tensors": out}, f)


def load_graph(path: str) -> CGraph:
    from ..ops.registry import OPS
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != "pyggml-graph-1":
        raise GGMLError(f"{path}: not a graph saved by pyggml (format {doc.get('format')!r})")
    ts = []
    for d in doc["tensors"]:
        t = Tensor(None, as_type(d["type"]), d["ne"], nb=d["nb"])
        t.name, t.flags = d["name"], d["flags"]
        t.op = OPS.get(d["op"]) if d["op"] != "NONE" else None
        t.op_params = np.array(d["op_params"], dtype=np.int32)
        ts.append(t)
    for t, d in zip(ts, doc["tensors"]):
        t.src = [ts[i] if i is not None else None for i in d["src"]]
    g = CGraph(max(1, len(ts)))
    g.leafs = [t for t, d in zip(ts, doc["tensors"]) if d["leaf"]]
    g.nodes = [t for t, d in zip(ts, doc["tensors"]) if d["node"]]
    return g
