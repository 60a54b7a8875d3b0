"""Graph -> DOT text: ggml's look (records `name (type) | i [ne] | OP`, pink leafs, yellow
params, edges labelled `src j`) plus what makes large graphs readable: clusters by layer,
a neighbourhood around one node, collapsed repeated layers, and overlays (time per node,
backend per node, the first NaN/Inf node in red with its inputs highlighted).
"""
from __future__ import annotations

import re
from collections import Counter
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field
from typing import Optional

from ..errors import GGMLError
from ..graph import CGraph
from ..tensor import TENSOR_FLAG_INPUT
from ..tensor import TENSOR_FLAG_OUTPUT
from ..tensor import TENSOR_FLAG_PARAM
from ..tensor import Tensor

BACKEND_COLORS = ["#cfe8ff", "#ffe3b3", "#d8f5d0", "#e8d5ff", "#ffd6d6", "#f0f0b0"]
_LAYER_PATTERNS = [re.compile(r"^(blk|layers?|h|block)\.(\d+)\."), re.compile(r"^(.*?)-(\d+)$"),
                   re.compile(r"^(l|layer)(\d+)[._]")]
# ops whose parameters are worth reading on the graph (name -> op_params fields)
PARAMS_SHOWN = ("scale", "max_bias", "logit_softcap", "prec", "eps", "mode", "n_dims",
                "freq_base", "axes", "dim", "s", "b")


@dataclass
class DotOptions:
    cluster: bool = True                 # group nodes by layer (blk.N / name-N)
    around: Optional[str] = None         # only the neighbourhood of this node name ...
    depth: int = 2                       # ... up to this many edges away
    collapse: Optional[bool] = None      # collapse repeated layers (default: > 4 layers)
    keep_layers: tuple = (0, 1, -1)      # layers kept whole when collapsing
    layers: Optional[set] = None         # only these layer numbers
    times_us: dict = field(default_factory=dict)      # id(node) -> µs
    backend_of: dict = field(default_factory=dict)    # id(node) -> backend name
    bad_node: Optional[Tensor] = None                 # first NaN/Inf node (red)
    title: str = ""


def layer_of(t: Tensor) -> Optional[int]:
    """Layer number from llama.cpp-style names: 'blk.3.attn_q', 'Qcur-3', 'l3.x'."""
    base = t.name.split(" (")[0]
    for rx in _LAYER_PATTERNS:
        m = rx.match(base)
        if m:
            return int(m.group(2))
    return None


def _infer_layers(nodes: list[Tensor], leafs: list[Tensor]) -> dict[int, Optional[int]]:
    """Named tensors give their layer; unnamed ones take the layer of their sources."""
    lay: dict[int, Optional[int]] = {}
    for t in leafs:
        lay[id(t)] = layer_of(t)
    for t in nodes:
        ln = layer_of(t)
        if ln is None:
            srcs = [lay.get(id(s)) for s in t.src if s is not None]
            srcs = [x for x in srcs if x is not None]
            ln = max(srcs) if srcs else None
        lay[id(t)] = ln
    return lay


def _esc(s: str) -> str:
    return (s.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\{").replace("}", "\\}")
            .replace("|", "\\|").replace("<", "\\<").replace(">", "\\>"))


def _params_str(t: Tensor) -> str:
    if t.op is None or not t.op.params:
        return ""
    p = t.op.p(t)
    out = []
    for f in t.op.params:
        if f.name in PARAMS_SHOWN:
            v = getattr(p, f.name)
            if isinstance(v, float):
                v = f"{v:g}"
            out.append(f"{f.name}={v}")
    return ", ".join(out)


def _node_label(t: Tensor, i: int, opts: DotOptions, total_us: float) -> str:
    ne = t.ne[:2] if t.ne[2] == 1 and t.ne[3] == 1 else t.ne[:3] if t.ne[3] == 1 else t.ne
    name = f"{t.name} ({t.type.tname})" if t.name else f"({t.type.tname})"
    parts = [_esc(name), f"{i} [{', '.join(map(str, ne))}]", "<x>" + _esc(t.op_name)]
    ps = _params_str(t)
    if ps:
        parts.append(_esc(ps))
    if id(t) in opts.times_us:
        us = opts.times_us[id(t)]
        pct = 100.0 * us / total_us if total_us else 0.0
        parts.append(f"{us:.1f} µs ({pct:.1f}%)")
    if id(t) in opts.backend_of:
        parts.append(_esc(opts.backend_of[id(t)]))
    return " | ".join(parts)


def _heat(frac: float) -> str:
    """White -> orange by share of the total time."""
    frac = max(0.0, min(1.0, frac))
    g = int(255 - 120 * frac)
    b = int(255 - 230 * frac)
    return f"#ff{g:02x}{b:02x}"


def _select(gf: CGraph, opts: DotOptions) -> tuple[list, list]:
    nodes, leafs = list(gf.nodes), list(gf.leafs)
    if opts.around:
        by_name = {t.name: t for t in nodes + leafs}
        center = by_name.get(opts.around)
        if center is None:
            raise GGMLError(f"dump-graph: no node named {opts.around!r} in the graph")
        adj = defaultdict(set)
        for t in nodes:
            for s in t.src:
                if s is not None and s is not t:
                    adj[id(t)].add(id(s))
                    adj[id(s)].add(id(t))
        keep, frontier = {id(center)}, {id(center)}
        for _ in range(max(0, opts.depth)):
            frontier = {n for f in frontier for n in adj[f]} - keep
            keep |= frontier
        nodes = [t for t in nodes if id(t) in keep]
        leafs = [t for t in leafs if id(t) in keep]
    return nodes, leafs


def to_dot(gb: CGraph, gf: Optional[CGraph] = None, opts: Optional[DotOptions] = None) -> str:
    opts = opts or DotOptions()
    index = {id(t): i for i, t in enumerate(gb.nodes)}
    leaf_index = {id(t): i for i, t in enumerate(gb.leafs)}
    nodes, leafs = _select(gb, opts)
    lay = _infer_layers(list(gb.nodes), list(gb.leafs))
    layers = sorted({v for v in lay.values() if v is not None})
    if opts.layers is not None:
        nodes = [t for t in nodes if lay.get(id(t)) is None or lay[id(t)] in opts.layers]
        leafs = [t for t in leafs if lay.get(id(t)) is None or lay[id(t)] in opts.layers]
    collapse = opts.collapse if opts.collapse is not None else len(layers) > 4
    kept_layers = set(layers)
    if collapse and len(layers) > len(opts.keep_layers):
        kept_layers = {layers[k] for k in opts.keep_layers}
    hidden = {id(t) for t in nodes + leafs
              if lay.get(id(t)) is not None and lay[id(t)] not in kept_layers}
    hidden_layers = sorted({lay[i] for i in hidden if lay.get(i) is not None}) if hidden else []
    total_us = sum(opts.times_us.values())
    max_us = max(opts.times_us.values()) if opts.times_us else 0.0
    backends = sorted(set(opts.backend_of.values()))
    bad_inputs = {id(s) for s in opts.bad_node.src if s is not None} if opts.bad_node else set()
    grads = gb.grads or {}
    forward = {id(t) for t in gf.nodes} if gf is not None else set()

    def grad_of(t: Tensor):
        return grads.get(id(t))

    def in_forward(t: Tensor) -> bool:
        return id(t) in forward

    lines = ["digraph G {", "  newrank = true;", "  rankdir = TB;",
             '  node [fontname = "Helvetica"; fontsize = 10];',
             '  edge [fontname = "Helvetica"; fontsize = 8];']
    if opts.title:
        lines.append(f'  labelloc = "t"; label = "{_esc(opts.title)}";')

    def node_line(t: Tensor) -> str:
        if id(t) in leaf_index:
            color = "yellow" if t.flags & TENSOR_FLAG_PARAM else "pink"
            ne = ", ".join(map(str, t.ne[:2]))
            label = (f"<x>{_esc(t.name)} ({t.type.tname})|CONST {leaf_index[id(t)]} [{ne}]")
            style = "filled"
        else:
            i = index[id(t)]
            color = "white"
            style = "filled"
            if t.flags & TENSOR_FLAG_PARAM:
                color = "yellow"
            if id(t) in opts.backend_of and backends:
                color = BACKEND_COLORS[backends.index(opts.backend_of[id(t)]) % len(BACKEND_COLORS)]
            if id(t) in opts.times_us and max_us > 0:
                color = _heat(opts.times_us[id(t)] / max_us)
            if t.op is not None and t.op.view:
                style, color = "filled,dashed", "#eeeeee"
            grad = grad_of(t)
            if grad is not None and not t.flags & TENSOR_FLAG_PARAM:
                # ggml: a node with a gradient is green in the forward graph gf, light blue
                # when it belongs to the backward pass only
                color = "green" if in_forward(t) else "lightblue"
            if id(t) in bad_inputs:
                color = "orange"
            if opts.bad_node is t:
                color = "red"
            label = _node_label(t, i, opts, total_us)
            if grad is not None:     # ggml's record field: the op of the node's gradient
                label += " | <g>" + _esc(grad.op_name)
        extra = ""
        if t.flags & TENSOR_FLAG_OUTPUT:
            extra = "; penwidth = 2"
        elif t.flags & TENSOR_FLAG_INPUT:
            extra = "; peripheries = 2"
        return (f'  "{id(t):x}" [ style = "{style}"; fillcolor = "{color}"; shape = record; '
                f'label="{label}"{extra}; ]')

    shown = [t for t in nodes + leafs if id(t) not in hidden]
    if opts.cluster and layers:
        groups = defaultdict(list)
        for t in shown:
            groups[lay.get(id(t))].append(t)
        for ln, ts in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)):
            if ln is None:
                lines += [node_line(t) for t in ts]
                continue
            lines.append(f'  subgraph "cluster_layer_{ln}" {{')
            lines.append(f'    label = "layer {ln}"; style = "rounded,filled"; fillcolor = "#f7f7f7";')
            lines += ["  " + node_line(t) for t in ts]
            lines.append("  }")
    else:
        lines += [node_line(t) for t in shown]

    collapsed_id = "collapsed_layers"
    if hidden:
        per_layer = Counter(lay[i] for i in hidden)
        n_each = per_layer.most_common(1)[0][1]
        first, last = hidden_layers[0], hidden_layers[-1]
        lines.append(f'  "{collapsed_id}" [ shape = box3d; style = filled; fillcolor = "#dddddd"; '
                     f'label = "layers {first}..{last}: {len(hidden_layers)} layers collapsed\\n'
                     f'(about {n_each} tensors each, same structure as layer {min(kept_layers)})"; ]')

    def ref(t: Tensor) -> str:
        return collapsed_id if id(t) in hidden else f"{id(t):x}"

    visible = {id(t) for t in nodes + leafs}
    seen_edges = set()
    for t in nodes:
        for j, s in enumerate(t.src):
            if s is None or s is t or id(s) not in visible:
                continue
            a, b = ref(s), ref(t)
            if a == b == collapsed_id:
                continue
            key = (a, b, j) if collapsed_id not in (a, b) else (a, b)
            if key in seen_edges:
                continue
            seen_edges.add(key)
            style = "dashed" if (t.op is not None and t.op.view) else "solid"
            if t.op is not None and j in t.op.writes:
                style = "bold"
            lbl = f"src {j}" + (" (written)" if t.op is not None and j in t.op.writes else "")
            lines.append(f'  "{a}" -> "{b}" [ arrowhead = vee; style = {style}; label = "{lbl}"; ]')
    # pyggml: link each tensor to its gradient node (backward graphs)
    for t in nodes + leafs:
        g = grad_of(t)
        if g is not None and g is not t and id(g) in visible and id(t) not in hidden \
                and id(g) not in hidden:
            lines.append(f'  "{id(t):x}" -> "{id(g):x}" [ arrowhead = empty; style = dotted; '
                         f'color = "blue"; constraint = false; label = "grad"; ]')
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_dump_dot(gb: CGraph, gf: Optional[CGraph], filename: str, **options) -> str:
    """ggml_graph_dump_dot(gb, gf, filename): write the DOT file; options as DotOptions."""
    text = to_dot(gb, gf, DotOptions(**options))
    with open(filename, "w") as f:
        f.write(text)
    return filename
