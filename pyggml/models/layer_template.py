"""Stamping a decoder's layers from its first one (issue #14: a new graph's Python cost).

The layers of a llama-style step graph are the same subgraph over different weights and KV
cache stores: the same ops, shapes, strides and op_params, in the same order. So the first
layer is built through the ops (checked, inferred, named) while `record` notes every tensor
it made and every build_forward_expand it asked for; `LayerTemplate.stamp` then makes each
later layer by copying those records with the layer's own weights and cache tensors in
place of the first layer's: one Context.new_node per tensor, no op building. The copies are
the tensors the ops would have made (shape records shared, op_params frozen and shared, as
the build memo already shares them) and the expands are replayed in the same places, so
the graph (node order, names, everything the allocator, planner and lowering read) is the
one the ops would build; tests/unit/test_layer_template.py holds it to that.

What a layer reads that is its own comes from a map {first layer's tensor: this layer's}
(the model's weights by name, the cache's stores by `layer_tensors`); inputs the cache makes
per layer (the mixed cache's softmax states) are made again by `cache.layer_input`; every
other tensor made before the layer (positions, masks, row ids, shared leaves) is shared.
Each stamped tensor names its first-layer tensor as `twin` (its signature: the Numba
backend takes that node's kernel verdicts) unless the layer's input or a cache input has
another layout than the first layer's.
Names are the first layer's with its index replaced (`-0` -> `-il`); names the graph gives
(node_N, leaf_N) are left for the graph to give. `record` declines (returns None; the
caller builds every layer through the ops) whenever that rule could give a different name.
"""
from __future__ import annotations

import re
from typing import Callable

from ..context import tensor_overhead
from ..graph import CGraph
from ..tensor import MAX_NAME
from ..tensor import TENSOR_FLAG_PARAM
from ..tensor import Tensor
from ..tensor import kept_shape

_AUTO_NAME = re.compile(r"(node|leaf)_\d+")
_OVERHEAD = tensor_overhead()
_record = Tensor._record


class LayerTemplate:
    """The records of one built layer; `stamp` makes another layer from them."""

    __slots__ = ("ctx", "gf", "il0", "inp0", "out0", "rows", "expands", "cache", "_added",
                 "_tail", "_added_checked", "_tail_checked", "prev")

    def __init__(self, ctx, gf: CGraph, cache, il0: int, inp0, out0, rows: list,
                 expands: list, added: tuple = None):
        self.ctx, self.gf, self.cache, self.il0 = ctx, gf, cache, il0
        self.inp0, self.out0 = inp0, out0
        # per tensor of the first layer: (tensor, name parts or None for a leaf, its record;
        # its sources as those up to the last set one and the Nones after)
        self.rows = rows
        self.expands = expands      # the first layer's build_forward_expand calls, in order
        # what those expands appended to the graph, in order: (is_node, tensor) pairs
        self.added = added
        # what the walk from the first layer's output appended (the rest of that layer, as
        # the second layer's expands reach it): its leafs, then its nodes, as (is_node,
        # tensor) pairs in order; and the
        # map of the last layer stamped ({first layer's tensor: that layer's})
        self.tail = self.prev = None

    # added and tail are replayed with the sources each tensor may lack (_checked), made
    # whenever they are set
    @property
    def added(self):
        return self._added

    @added.setter
    def added(self, pairs) -> None:
        self._added = pairs
        self._added_checked = None if pairs is None else _checked(pairs)

    @property
    def tail(self):
        return self._tail

    @tail.setter
    def tail(self, pairs) -> None:
        self._tail = pairs
        self._tail_checked = None if pairs is None else _checked(pairs)

    def stamp(self, il: int, inp, layer_map: dict):
        """Layer il over input inp (the previous layer's output): returns its output.
        layer_map: {first layer's tensor: layer il's} for what the layer reads that is its
        own (weights, cache stores)."""
        m = dict(layer_map)
        m[self.inp0] = inp
        get = m.get
        ctx = self.ctx
        add = ctx.tensors.append
        n0 = len(ctx.tensors)
        layer_input = self.cache.layer_input
        tag = str(il)
        n = 0
        # each tensor's twin is its first-layer tensor (its signature when every source the
        # layer reads of its own has the first layer's layout: the weights and cache stores
        # are checked by the caller, the input and the cache's inputs here)
        twins = same_layout(inp, self.inp0)
        # Context.new_node inline (its room for every stamp was checked by record)
        for t0, parts, shape, vs, offs, params, op, src, pad, flags in self.rows:
            if parts is None:                   # a leaf the layer made: the cache's input?
                t = layer_input(ctx, t0, il)
                if t is not None:
                    m[t0] = t
                    twins = twins and same_layout(t, t0)
                continue                        # else one all layers share
            t = _record(ctx, shape, None if vs is None else get(vs, vs), offs, params, op,
                        [*map(get, src, src), *pad])
            t.name = tag.join(parts)
            t.flags = flags
            t.twin = t0
            add(t)
            m[t0] = t
            n += 1
        ctx.used += n * _OVERHEAD
        if not twins:
            for t in ctx.tensors[n0:]:
                t.twin = None
        if not self._replay(m, layer_map):
            expand = self.gf.expand
            for e in self.expands:
                expand(get(e, e))
        self.prev = m
        return m[self.out0]

    def _replay(self, m: dict, layer_map: dict) -> bool:
        """The first layer's expands, replayed without walking the layer: what they appended
        to the graph (`added`, nodes and leafs in one sequence), each as this layer's
        tensor, skipping those the graph holds already (tensors all layers share). The walk
        over an isomorphic layer appends those in that order: the layer's tensors are copies
        with mapped sources and what it reads of its own is a plain leaf; the layer's input
        (the previous layer's output, not yet in the graph) is expanded where the first
        layer's was appended, as the walk would reach it. False (nothing done) when a
        mapped tensor is not a plain leaf or the graph could fill up."""
        if self.added is None:
            return False
        gf = self.gf
        for t in layer_map.values():
            if t.op is not None or t.flags & TENSOR_FLAG_PARAM or any(t.src):
                return False
        if len(gf.nodes) + len(self.added) > gf.size or len(gf.leafs) + len(self.added) > gf.size:
            return False
        nodes, leafs = gf.nodes, gf.leafs
        nn, nl = len(nodes), len(leafs)
        if not self._append_mapped(self._added_checked, m.get, m.get(self.inp0)):
            return False
        if len(nodes) + len(leafs) != nn + nl:
            gf.version += 1
        return True


    def _expand_input(self, inp) -> None:
        """gf.expand(inp), inp a layer's output: the rest of that layer is appended. When
        that layer was stamped from this template, the walk from the first layer's output
        (noted as `tail` the first time) is replayed with its tensors, checked as _replay
        checks; else (or when a check fails: what was appended is taken back) the layer is
        walked."""
        gf = self.gf
        nodes, leafs = gf.nodes, gf.leafs
        nn, nl = len(nodes), len(leafs)
        prev = self.prev
        if self.tail is not None and prev is not None and prev.get(self.out0) is inp:
            if self._append_mapped(self._tail_checked, prev.get) and inp in gf._visited:
                return
            _undo(gf._visited, nodes, nn, "node_")      # the layer is walked instead
            _undo(gf._visited, leafs, nl, "leaf_")
        gf.expand(inp)
        if inp is self.out0 and self.tail is None:
            self.tail = tuple([(False, t) for t in leafs[nl:]] + [(True, t) for t in nodes[nn:]])

    def _append_mapped(self, triples, get, inp=None) -> bool:
        """Append to the graph each (is_node, tensor, sources to check) of triples as the
        tensor get maps it to, as expand would append it: a node after its sources, a leaf
        a plain one; those the graph holds are skipped, inp (the previous layer's output)
        is expanded where it comes. False, with what was appended taken back, when a check
        fails. (A tensor get maps to another is a stamped copy, whose sources are its
        template's mapped by get, or a plain leaf; one it leaves is in the graph already.)"""
        gf = self.gf
        visited, nodes, leafs = gf._visited, gf.nodes, gf.leafs
        nn, nl = len(nodes), len(leafs)
        for is_node, t0, check in triples:
            t = get(t0, t0)
            if t in visited:
                continue
            if t is inp:                    # the previous layer's rest, then the input
                self._expand_input(inp)
                continue
            leaf = t.op is None and not t.flags & TENSOR_FLAG_PARAM
            if leaf == is_node or (check and not visited.issuperset([get(s, s) for s in check])):
                _undo(visited, nodes, nn, "node_")
                _undo(visited, leafs, nl, "leaf_")
                return False
            visited.add(t)
            if is_node:
                if not t.name:
                    t.name = f"node_{len(nodes)}"
                nodes.append(t)
            else:
                if not t.name:
                    t.name = f"leaf_{len(leafs)}"
                leafs.append(t)
        return True


def _checked(pairs) -> tuple:
    """(is_node, tensor) pairs as (is_node, tensor, its sources no earlier pair holds):
    appending a layer's copies in this order, only those can be missing from the graph (an
    earlier pair's copy was appended, or found there, just before)."""
    seen = set()
    out = []
    for is_node, t in pairs:
        out.append((is_node, t, tuple(s for s in t.src if s is not None and s not in seen)))
        seen.add(t)
    return tuple(out)


def same_layout(a, b) -> bool:
    """b has a's type, ne and nb (models/llama.py checks a layer's weights with it)."""
    return a.type is b.type and a.ne == b.ne and a.nb == b.nb


def _undo(visited: set, to: list, n: int, auto: str) -> None:
    """Take back what was appended to a graph list past n, and the names the graph gave."""
    for k, t in enumerate(to[n:], n):
        visited.discard(t)
        if t.name == f"{auto}{k}":
            t.name = ""
    del to[n:]


class _Noted(list):
    """A graph's node or leaf list while record builds the first layer: appends are noted
    in one sequence ((is_node, tensor), in order) for LayerTemplate._replay."""

    __slots__ = ("seq", "is_node")

    def append(self, t):
        self.seq.append((self.is_node, t))
        list.append(self, t)


def record(ctx, gf: CGraph, cache, il0: int, inp, build_layer: Callable,
           n_stamps: int) -> tuple:
    """Build layer il0 over inp with build_layer(il0, inp) -> its output, noting what it
    made: (output, LayerTemplate or None when the layers cannot be stamped from it).
    n_stamps: how many layers will be stamped (the context must have room for them all,
    checked here, so stamping cannot fail half way)."""
    n0 = len(ctx.tensors)
    expands = []
    added = []
    lists = gf.nodes, gf.leafs
    gf.nodes, gf.leafs = _Noted(gf.nodes), _Noted(gf.leafs)
    gf.nodes.seq = gf.leafs.seq = added
    gf.nodes.is_node, gf.leafs.is_node = True, False
    plain = gf.expand

    def expand_noted(t):
        expands.append(t)
        plain(t)

    gf.expand = expand_noted          # the graph's own method, noted (store's expands)
    try:
        out = build_layer(il0, inp)
    finally:
        del gf.expand
        lists[0][:], lists[1][:] = gf.nodes, gf.leafs     # the graph's own lists again
        gf.nodes, gf.leafs = lists
    made = ctx.tensors[n0:]
    if not made or not ctx.no_alloc or not hasattr(cache, "layer_input") or \
            not hasattr(cache, "layer_tensors"):
        return out, None
    if ctx.used + tensor_overhead() * len(made) * n_stamps > ctx.mem_size:
        return out, None
    split = re.compile(rf"(?<=-){il0}(?![0-9])")
    rows = []
    for t in made:
        if t.op is None:
            rows.append((t, None) + (None,) * 8)
            continue
        name = "" if _AUTO_NAME.fullmatch(t.name) else t.name
        # a name near the length limit could be cut differently for a longer index; a
        # graph-given name inside another (a view of node_3) depends on the node's place
        if len(name) > MAX_NAME - 8 or "node_" in name or "leaf_" in name:
            return out, None
        # the sources up to the last that is set, and the Nones after it (mapped: 2-3)
        n = len(t.srcs)
        rows.append((t, split.split(name), kept_shape(t), t.view_src, t.view_offs,
                     t.op_params, t.op, tuple(t.src[:n]), (None,) * (len(t.src) - n), t.flags))
    return out, LayerTemplate(ctx, gf, cache, il0, inp, out, rows, expands, tuple(added))
