"""The visualizer: ggml's DOT look, rendering, neighbourhoods, collapsed layers, NaN finder,
profile."""
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import pyggml as gg
from pyggml import viz

NODE_RX = re.compile(r'^\s*"([0-9a-f]+|collapsed_layers)" \[ (.*) \]$')
EDGE_RX = re.compile(r'^\s*"([0-9a-f]+|collapsed_layers)" -> "([0-9a-f]+|collapsed_layers)" \[(.*)\]$')


def parse_dot(text):
    nodes, edges = {}, []
    for line in text.splitlines():
        m = EDGE_RX.match(line)
        if m:
            edges.append((m.group(1), m.group(2), re.search(r'label = "([^"]*)"', m.group(3)).group(1)))
            continue
        m = NODE_RX.match(line)
        if m:
            attrs = m.group(2)
            nodes[m.group(1)] = {
                "fill": re.search(r'fillcolor = "?([^";]+)"?', attrs).group(1),
                "label": re.search(r'label ?= ?"(.*)"', attrs).group(1)}
    return nodes, edges


def small_graph():
    ctx = gg.init(mem_size=8 << 20)
    a = gg.from_numpy(ctx, np.arange(12, dtype=np.float32).reshape(3, 4), name="a")
    b = gg.from_numpy(ctx, np.ones((3, 4), np.float32), name="b")
    s = gg.add(ctx, a, b)
    gg.set_name(s, "sum")
    t = gg.cont(ctx, gg.transpose(ctx, s))
    gg.set_name(t, "out")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, t)
    return ctx, gf


def test_dump_dot_has_ggml_records_colours_and_edges(tmp_path):
    ctx, gf = small_graph()
    path = tmp_path / "g.dot"
    gg.graph_dump_dot(gf, None, str(path))
    nodes, edges = parse_dot(path.read_text())
    assert len(nodes) == gf.n_nodes + gf.n_leafs == 5
    assert len(edges) == 4
    leafs = [n for n in nodes.values() if n["fill"] == "pink"]
    assert len(leafs) == 2 and any("CONST 0 [4, 3]" in n["label"] for n in leafs)
    add = next(n for n in nodes.values() if "<x>ADD" in n["label"])
    assert add["label"].startswith("sum (f32) | 0 [4, 3]")
    assert sorted(e[2] for e in edges) == ["src 0", "src 0", "src 0", "src 1"]
    # the view is drawn distinctly
    assert any(n["fill"] == "#eeeeee" and "TRANSPOSE" in n["label"] for n in nodes.values())


def test_with_state_shows_written_src6():
    ctx = gg.init(mem_size=16 << 20)
    q = gg.new_tensor_3d(ctx, gg.TYPE_F32, 32, 1, 4)
    k = gg.new_tensor_3d(ctx, gg.TYPE_F16, 32, 8, 2)
    v = gg.new_tensor_3d(ctx, gg.TYPE_F16, 32, 8, 2)
    st = gg.new_tensor_2d(ctx, gg.TYPE_F32, 2, 4)
    o = gg.flash_attn_ext_with_state(ctx, q, k, v, None, None, None, None, st, 0.1, 0.0, 0.0)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, o)
    _, edges = parse_dot(viz.to_dot(gf))
    assert any(lbl == "src 6 (written)" for _, _, lbl in edges)


def test_render_svg_is_valid(tmp_path):
    if not viz.dot_available():
        pytest.skip("graphviz `dot` binary not installed")
    _, gf = small_graph()
    out = viz.draw(gf, str(tmp_path / "g.svg"))
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    assert len([e for e in root.iter() if e.tag.endswith("g") and e.get("class") == "node"]) == 5


def test_render_without_dot_writes_dot_and_says_so(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setattr(sys.modules["pyggml.viz.render"].shutil, "which", lambda name: None)
    _, gf = small_graph()
    out = viz.draw(gf, str(tmp_path / "g.svg"))
    assert out.endswith(".dot")
    assert "apt-get install graphviz" in capsys.readouterr().err
    with pytest.raises(viz.RenderError):
        viz.draw(gf, str(tmp_path / "g.svg"), strict=True)


def chain(n_layers=8):
    ctx = gg.init(mem_size=16 << 20)
    cur = gg.from_numpy(ctx, np.ones((4, 8), np.float32), name="inp")
    for il in range(n_layers):
        w = gg.from_numpy(ctx, np.full((8,), 0.5, np.float32), name=f"blk.{il}.w")
        cur = gg.mul(ctx, cur, w)
        gg.set_name(cur, f"mul-{il}")
        cur = gg.add(ctx, cur, cur)
        gg.set_name(cur, f"add-{il}")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, cur)
    return gf


def test_around_depth_keeps_only_the_neighbourhood():
    gf = chain()
    nodes, edges = parse_dot(viz.to_dot(gf, None, viz.DotOptions(around="add-3", depth=1, collapse=False)))
    labels = [n["label"] for n in nodes.values()]
    assert len(nodes) == 3           # mul-3 -> add-3 -> mul-4
    assert any(l.startswith("add-3") for l in labels)
    assert any(l.startswith("mul-3") for l in labels) and any(l.startswith("mul-4") for l in labels)
    with pytest.raises(gg.GGMLError, match="no node named"):
        viz.to_dot(gf, None, viz.DotOptions(around="nope"))


def test_clusters_and_collapsed_layers():
    gf = chain(12)
    text = viz.to_dot(gf)
    nodes, _ = parse_dot(text)
    assert "collapsed_layers" in nodes and "layers 2..10" in nodes["collapsed_layers"]["label"]
    assert text.count("subgraph") == 3          # layers 0, 1 and 11 kept whole
    full = viz.to_dot(gf, None, viz.DotOptions(collapse=False))
    assert full.count("subgraph") == 12


def test_find_first_nan_points_at_the_right_node():
    ctx = gg.init(mem_size=8 << 20)
    a = gg.from_numpy(ctx, np.array([1.0, -2.0, 3.0], np.float32), name="a")
    x = gg.scale(ctx, a, 2.0)
    gg.set_name(x, "x")
    y = gg.log(ctx, x)                 # log of a negative value: NaN here
    gg.set_name(y, "y")
    z = gg.add(ctx, y, y)
    gg.set_name(z, "z")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, z)
    rep = viz.find_first_nan(gf, gg.backend_reference_init())
    assert rep is not None and rep.node is y and rep.index == 1
    assert rep.stats["n_nan"] == 1 and rep.inputs[0]["name"] == "x"
    assert "first non-finite node: #1 LOG 'y'" in str(rep)
    nodes, _ = parse_dot(viz.to_dot(gf, None, viz.DotOptions(bad_node=rep.node)))
    fills = {n["label"].split(" ")[0]: n["fill"] for n in nodes.values()}
    assert fills["y"] == "red" and fills["x"] == "orange"


def test_profile_sums_to_total():
    ctx = gg.init(mem_size=64 << 20)
    x = gg.from_numpy(ctx, np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32))
    w = gg.from_numpy(ctx, np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32))
    y = gg.mul_mat(ctx, w, x)
    y = gg.silu(ctx, y)
    y = gg.mul_mat(ctx, w, y)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    rows = viz.profile_graph(gf, gg.backend_reference_init(), runs=2)
    total = rows[0]["total_us"]
    assert len(rows) == 3
    assert abs(sum(r["us"] for r in rows) - total) <= 0.1 * total
    assert "total" in viz.format_profile(rows)


def test_saved_graph_round_trip(tmp_path):
    _, gf = small_graph()
    viz.save_graph(gf, str(tmp_path / "g.json"))
    g2 = viz.load_graph(str(tmp_path / "g.json"))
    assert [n.op_name for n in g2.nodes] == [n.op_name for n in gf.nodes]
    def labels(g):
        nodes, edges = parse_dot(viz.to_dot(g))
        return sorted(n["label"] for n in nodes.values()), sorted(e[2] for e in edges)
    assert labels(g2) == labels(gf)


def test_backward_graph_shows_gradients_as_ggml(tmp_path):
    """ggml_graph_dump_dot(gb, gf): params yellow, forward nodes with a gradient green,
    backward-only ones light blue, a `<g>` field with the gradient's op; pyggml adds a dotted
    'grad' link from each tensor to its gradient node."""
    ctx = gg.init(mem_size=1 << 20)
    w = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
    gg.set_name(w, "w")
    gg.set_param(w)
    x = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 2)
    h = gg.set_name(gg.mul_mat(ctx, w, x), "h")
    loss = gg.set_name(gg.sum(ctx, gg.sqr(ctx, h)), "loss")
    gg.set_loss(loss)
    gf = gg.new_graph_custom(ctx, 64, True)
    gg.build_forward_expand(gf, loss)
    gb = gg.new_graph_custom(ctx, 64, True)
    gg.graph_cpy(gf, gb)
    gg.build_backward_expand(ctx, gb, None)
    text = open(gg.graph_dump_dot(gb, gf, str(tmp_path / "gb.dot"))).read()
    grad_w = gg.graph_get_grad(gb, w)
    line = next(ln for ln in text.splitlines() if f'"{id(h):x}" [' in ln)
    assert "fillcolor = \"green\"" in line and "<g>" in line
    assert f'"{id(w):x}" -> "{id(grad_w):x}"' in text and 'label = "grad"' in text
    back_only = next(ln for ln in text.splitlines() if f'"{id(grad_w):x}" [' in ln)
    assert "fillcolor = \"yellow\"" not in back_only
    assert 'fillcolor = "yellow"' in next(ln for ln in text.splitlines() if f'"{id(w):x}" [' in ln)
