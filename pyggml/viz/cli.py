"""`pyggml dump-graph`: draw the demo model's decode graph (or a saved graph) with overlays."""
from __future__ import annotations

import argparse

import numpy as np

from ..errors import GGMLError


def _parser():
    p = argparse.ArgumentParser(prog="pyggml dump-graph", description=__doc__)
    p.add_argument("--graph", default=None, help="a graph saved with pyggml.viz.save_graph (.json)")
    p.add_argument("--model", default=None, help="a llama GGUF file (default: the demo's random model)")
    p.add_argument("--n-layer", type=int, default=None, help="layers of the random model (default 4)")
    p.add_argument("--layers", default=None, help="only these layers, e.g. 0,1 or 0-3")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--hot", type=int, default=64)
    p.add_argument("--format", default=None, choices=("svg", "png", "pdf", "dot"))
    p.add_argument("--around", default=None, help="only the neighbourhood of this node name")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--no-collapse", action="store_true", help="draw every layer")
    p.add_argument("--no-cluster", action="store_true")
    p.add_argument("--profile", action="store_true", help="run once and overlay µs per node")
    p.add_argument("--backend", default="numba", choices=("numba", "reference"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="graph.svg")
    return p


def _parse_layers(s, n_layer: int):
    """'0,2' or '0-3' -> a set of layer indices, each in [0, n_layer)."""
    if not s:
        return None
    out = set()
    for part in s.split(","):
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise GGMLError(f"--layers {s!r}: expected layer numbers like 0,1 or 0-3") from None
        if not 0 <= lo <= hi < n_layer:
            raise GGMLError(f"--layers {s!r}: {part!r} is not a range of layers of this model "
                            f"(0..{n_layer - 1})")
        out |= set(range(lo, hi + 1))
    return out


def _check_args(args) -> None:
    """Flag values argparse cannot check by type alone."""
    for flag, v, lo in (("--n-layer", args.n_layer, 1), ("--ctx", args.ctx, 1),
                        ("--hot", args.hot, 0), ("--depth", args.depth, 0),
                        ("--threads", args.threads, 1)):
        if v is not None and v < lo:
            raise GGMLError(f"{flag} {v}: must be >= {lo}")


def _demo_graph(args):
    """The demo model's decode step (one token) through a mixed cache holding cold blocks."""
    import pyggml as gg

    from ..attention.kv_cache import MixedKVCache
    from ..models.llama import LlamaConfig
    from ..models.llama import LlamaModel
    if args.model:
        with open(args.model, "rb") as f:          # OSError: the command prints it
            if f.read(4) != b"GGUF":
                raise GGMLError(f"--model {args.model}: not a GGUF file")
    from ..llm.loader import load_model
    model = load_model(args.model) if args.model else LlamaModel.random(
        LlamaConfig(n_layer=4 if args.n_layer is None else args.n_layer))
    c = model.cfg
    layers = _parse_layers(args.layers, c.n_layer)
    cache = MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, args.ctx, hot_tokens=args.hot,
                         max_batch=32)
    n = min(args.hot + 31, args.ctx - 1)
    cache.hot_count = cache.n_past = n
    cache.slot_pos[:n] = np.arange(n)
    cache.begin(1)
    ctx = gg.init(mem_size=64 << 20, no_alloc=True)
    gf = gg.new_graph_custom(ctx, 16384)
    g = model.build(ctx, gf, cache, 1, layers=sorted(layers) if layers is not None else None)
    return gf, cache, g.tokens, g.positions


def main(argv=None) -> int:
    import pyggml as gg

    from . import DotOptions
    from . import profile_graph
    from . import render
    from . import to_dot
    from .saved import load_graph
    args = _parser().parse_args(argv)
    _check_args(args)
    if args.graph:
        gf, cache = load_graph(args.graph), None
    else:
        gf, cache, tok, pos = _demo_graph(args)
    opts = DotOptions(cluster=not args.no_cluster, around=args.around, depth=args.depth,
                      collapse=False if args.no_collapse else None,
                      title=f"{gf.n_nodes} nodes, {gf.n_leafs} leafs")
    if args.profile:
        if cache is None:
            raise gg.GGMLError("dump-graph: --profile needs a graph with data (not --graph)")
        be = (gg.backend_reference_init() if args.backend == "reference"
              else gg.backend_numba_init(args.threads))
        from ..sched.alloc import alloc_graph
        alloc_graph(gf)
        gg.tensor_set(tok, np.zeros(1, np.int32))
        gg.tensor_set(pos, cache.step.positions.astype(np.int32))
        cache.set_inputs()
        rows = profile_graph(gf, be)
        opts.times_us = {id(gf.nodes[r["index"]]): r["us"] for r in rows}
        opts.title += f", {rows[0]['total_us'] / 1e3:.2f} ms on {be.name}" if rows else ""
    path = render(to_dot(gf, None, opts), args.out, args.format)
    print(f"wrote {path} ({gf.n_nodes} nodes, {gf.n_leafs} leafs)")
    return 0
