"""The `pyggml` command turns user errors into one line on stderr and exit code 2; `--debug`
shows the traceback instead."""
import json

import pytest

import pyggml as gg
from pyggml import viz
from pyggml.cli import main


def _saved_graph(path):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
    y = gg.silu(ctx, gg.add(ctx, a, a))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    viz.save_graph(gf, str(path))
    return json.loads(path.read_text())


def _edited(tmp_path, edit):
    p = tmp_path / "g.json"
    doc = _saved_graph(p)
    edit(doc)
    p.write_text(json.dumps(doc))
    return str(p)


def _bad_src(doc):
    doc["tensors"][-1]["src"][0] = 99


def _negative_src(doc):
    doc["tensors"][-1]["src"][0] = -1


def _unknown_op(doc):
    doc["tensors"][-1]["op"] = "NOT_AN_OP"


def _bad_ne(doc):
    doc["tensors"][0]["ne"] = [4, "x", 1, 1]


def _bad_type(doc):
    doc["tensors"][0]["type"] = "q9_9"


def _bad_params(doc):
    doc["tensors"][-1]["op_params"] = [1 << 40]


def _cases(tmp_path):
    truncated = tmp_path / "trunc.json"
    _saved_graph(truncated)
    truncated.write_text(truncated.read_text()[:57])
    a_list = tmp_path / "list.json"
    a_list.write_text("[1, 2, 3]")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    return {
        "backend-ops bad regex": ["test-backend-ops", "-p", "["],
        "backend-ops threads 0": ["test-backend-ops", "-t", "0", "-o", "ADD"],
        "backend-ops jobs -3": ["test-backend-ops", "-j", "-3", "-o", "ADD"],
        "graph truncated json": ["dump-graph", "--graph", str(truncated)],
        "graph a list": ["dump-graph", "--graph", str(a_list)],
        "graph a gguf": ["dump-graph", "--graph", str(gguf)],
        "graph missing": ["dump-graph", "--graph", str(tmp_path / "missing.json")],
        "graph bad src": ["dump-graph", "--graph", _edited(tmp_path, _bad_src)],
        "graph negative src": ["dump-graph", "--graph", _edited(tmp_path, _negative_src)],
        "graph unknown op": ["dump-graph", "--graph", _edited(tmp_path, _unknown_op)],
        "graph bad ne": ["dump-graph", "--graph", _edited(tmp_path, _bad_ne)],
        "graph bad type": ["dump-graph", "--graph", _edited(tmp_path, _bad_type)],
        "graph bad op_params": ["dump-graph", "--graph", _edited(tmp_path, _bad_params)],
        "layers out of range": ["dump-graph", "--layers", "7", "--out", str(tmp_path / "g.dot")],
        "layers not numbers": ["dump-graph", "--layers", "a-b", "--out", str(tmp_path / "g.dot")],
        "n-layer 0": ["dump-graph", "--n-layer", "0", "--out", str(tmp_path / "g.dot")],
        "ctx 0": ["dump-graph", "--ctx", "0", "--out", str(tmp_path / "g.dot")],
        "model missing": ["dump-graph", "--model", str(tmp_path / "none.gguf")],
        "model a text file": ["dump-graph", "--model", str(text)],
    }


NAMES = ["backend-ops bad regex", "backend-ops threads 0", "backend-ops jobs -3", "graph truncated json",
         "graph a list", "graph a gguf",
         "graph missing", "graph bad src", "graph negative src", "graph unknown op",
         "graph bad ne", "graph bad type", "graph bad op_params", "layers out of range",
         "layers not numbers", "n-layer 0", "ctx 0", "model missing", "model a text file"]


@pytest.mark.parametrize("name", NAMES)
def test_user_error_is_one_line_and_exit_2(name, tmp_path, capsys):
    argv = _cases(tmp_path)[name]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"pyggml {argv[0]}: ")


def _small_gguf(path):
    import gguf
    import numpy as np
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.ones((3, 64), np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


COMMANDS = {
    "run": lambda m, d: ["run", "-m", m, "-p", "hi", "-n", "1"],
    "chat": lambda m, d: ["chat", "-m", m],
    "tokenize": lambda m, d: ["tokenize", "-m", m, "-p", "hi"],
    "perplexity": lambda m, d: ["perplexity", "-m", m, "-f", str(d / "text.txt")],
    "bench": lambda m, d: ["bench", "-m", m],
    "quantize": lambda m, d: ["quantize", m, str(d / "out.gguf"), "q4_0"],
    "demo": lambda m, d: ["demo", "--model", m],
}


@pytest.mark.parametrize("keep", [6, 30, 200, -8])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_truncated_gguf_is_one_line_that_says_truncated(command, keep, tmp_path, capsys):
    """#16: truncated GGUF files gave IndexError, a reshape error, or (quantize, through the
    gguf package's reader) numpy's "When changing to a larger dtype..."."""
    raw = _small_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[:keep])
    (tmp_path / "text.txt").write_text("hello world\n")
    argv = COMMANDS[command](str(cut), tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"pyggml {command}: ") and "cut.gguf" in lines[0]
    assert "truncated" in lines[0] or "corrupt" in lines[0], lines[0]


def test_debug_shows_the_traceback(tmp_path):
    argv = _cases(tmp_path)["graph a list"]
    with pytest.raises(gg.GGMLError, match="not a graph saved by pyggml"):
        main(["--debug"] + argv)


def test_a_valid_saved_graph_still_draws(tmp_path, capsys):
    p = tmp_path / "g.json"
    _saved_graph(p)
    assert main(["dump-graph", "--graph", str(p), "--out", str(tmp_path / "g.dot")]) == 0
    assert "wrote" in capsys.readouterr().out


def test_internal_errors_are_one_line_exit_1(monkeypatch, capsys):
    import pyggml.viz.cli as vc

    def boom(argv):
        raise KeyError("x")
    monkeypatch.setattr(vc, "main", boom)
    assert main(["dump-graph"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error: KeyError" in err


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_an_unreadable_graph_file_is_named_in_a_ggml_error(what, tmp_path, capsys):
    path = tmp_path / "nope.json" if what == "missing" else tmp_path
    rc = main(["dump-graph", "--graph", str(path), "--out", str(tmp_path / "g.dot")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, (rc, err)
    assert f"{path}: cannot read the graph file" in err and "Errno" not in err
