"""Graphs saved as JSON (structure only: names, ops, types, shapes, params, edges), so a graph
built elsewhere can be drawn later with `pyggml dump-graph --graph FILE.json`."""
from __future__ import annotations

import json

import numpy as np

from ..errors import GGMLError
from ..graph import CGraph
from ..ops.registry import frozen
from ..tensor import MAX_OP_PARAMS
from ..tensor import MAX_SRC
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
    """A graph written by save_graph. Anything else (not JSON, another JSON document, edges
    to tensors that are not there, ops this pyggml does not know) is a GGMLError naming
    the file and the tensor."""
    from ..ops.registry import OPS
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GGMLError(f"{path}: not a graph saved by pyggml (not JSON text: {e})") from None
    except OSError as e:                # missing, a directory, unreadable: name the file once
        raise GGMLError(f"{path}: cannot read the graph file ({e.strerror or e})") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != "pyggml-graph-1" or not isinstance(doc.get("tensors"), list):
        raise GGMLError(f"{path}: not a graph saved by pyggml (format {fmt!r})")
    entries = doc["tensors"]
    ts = []
    for i, d in enumerate(entries):
        try:
            ts.append(_tensor(d, OPS))
        except (GGMLError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise GGMLError(f"{path}: tensor {i} is not a saved tensor ({type(e).__name__}: "
                            f"{e})") from None
    for i, (t, d) in enumerate(zip(ts, entries)):
        src = d.get("src", [])
        if not isinstance(src, list) or len(src) > MAX_SRC or not all(
                j is None or (isinstance(j, int) and 0 <= j < len(ts)) for j in src):
            raise GGMLError(f"{path}: tensor {i} ({t.name!r}) has sources {src!r}; each must be "
                            f"null or an index in [0, {len(ts)})")
        t.src = [ts[j] if j is not None else None for j in src] + [None] * (MAX_SRC - len(src))
    g = CGraph(max(1, len(ts)))
    g.leafs = [t for t, d in zip(ts, entries) if d.get("leaf")]
    g.nodes = [t for t, d in zip(ts, entries) if d.get("node")]
    return g


def _tensor(d: dict, ops) -> Tensor:
    ne, nb, words = d["ne"], d["nb"], d["op_params"]
    if not (isinstance(ne, list) and isinstance(nb, list) and len(ne) == len(nb) == 4 and
            all(isinstance(x, int) and x >= 0 for x in ne + nb)):
        raise ValueError(f"ne={ne!r} nb={nb!r}: expected 4 sizes and 4 strides >= 0")
    t = Tensor(None, as_type(d["type"]), ne, nb=nb)
    t.name, t.flags = str(d["name"])[:63], int(d["flags"])
    if d["op"] != "NONE":
        if d["op"] not in ops:
            raise ValueError(f"unknown op {d['op']!r}")
        t.op = ops[d["op"]]
    t.op_params = frozen(_words(words))
    return t


def _words(words) -> np.ndarray:
    """Saved op_params: at most 16 int32 words."""
    w = np.zeros(MAX_OP_PARAMS // 4, dtype=np.int32)
    if not isinstance(words, list) or len(words) > len(w) or not all(
            isinstance(x, int) and -(1 << 31) <= x < (1 << 31) for x in words):
        raise ValueError(f"op_params {words!r}: expected at most {len(w)} int32 words")
    w[:len(words)] = words
    return w
