"""pyggml bench: llama-bench's tests (warm-up, repetitions from an empty cache, batches),
its markdown columns and csv/json fields (headers copied from llama-bench's own output)."""
import json

import pytest

from pyggml.llm import bench
from pyggml.llm.model_info import ModelInfo
from pyggml.llm.model_info import ftype_name

# llama-bench -m SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -p 32 -n 16 -r 2 (this machine's build)
LLAMA_MD = """\
| model                          |       size |     params | backend    | threads |            test |                  t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |
| llama 256M Q4_1                |  92.10 MiB |   134.52 M | CPU        |       2 |            pp32 |          7.14 ± 1.78 |"""
LLAMA_MD_CTK = """\
| model                          |       size |     params | backend    | threads | n_batch | type_k | type_v |            test |                  t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ------: | ------: | -----: | -----: | --------------: | -------------------: |"""
LLAMA_CSV = ("build_commit,build_number,cpu_info,gpu_info,backends,model_filename,model_type,"
             "model_size,model_n_params,n_batch,n_ubatch,n_threads,cpu_mask,cpu_strict,poll,"
             "type_k,type_v,n_gpu_layers,n_cpu_moe,split_mode,main_gpu,no_kv_offload,flash_attn,"
             "devices,tensor_split,tensor_buft_overrides,load_mode,embeddings,no_op_offload,"
             "no_host,fit_target,fit_min_ctx,n_prompt,n_gen,n_depth,test_time,avg_ns,stddev_ns,"
             "avg_ts,stddev_ts")

MODEL = ModelInfo("/m/SmolLM2.gguf", "llama 256M Q4_1", 96576768, 134515008, 49152, None)


def _test(**kw):
    base = dict(model=MODEL, n_prompt=32, n_gen=0, n_batch=2048, n_threads=2, type_k="f16",
                type_v="f16", kv_hot=None, backend="CPU")
    base.update(kw)
    return bench.BenchTest(**base)


def test_markdown_matches_llama_bench():
    t = _test()
    t.samples_ns = [int(32e9 / 8.92), int(32e9 / 5.36)]      # 8.92 and 5.36 t/s: 7.14 ± 2.52
    cols = bench.md_columns([t], dict(bench.DEFAULTS))
    head = LLAMA_MD.splitlines()
    assert bench.md_header(cols).splitlines() == head[:2]
    row = bench.md_row(t, cols)
    assert row == head[2].replace("7.14 ± 1.78", "7.14 ± 2.52")


def test_markdown_shows_changed_settings():
    seen = dict(bench.DEFAULTS, n_batch=[256], type_k=["q8_0"], type_v=["q8_0"])
    t = _test(n_batch=256, type_k="q8_0", type_v="q8_0")
    assert bench.md_header(bench.md_columns([t], seen)) == LLAMA_MD_CTK
    t_mixed = _test(kv_hot=64)
    cols = bench.md_columns([t_mixed], dict(bench.DEFAULTS))
    assert cols[-3:] == ["kv_hot", "test", "t/s"]


def test_csv_and_json_fields():
    t = _test(n_prompt=0, n_gen=16)
    t.samples_ns = [8_000_000_000, 6_000_000_000]
    names = bench.fields([t])
    assert ",".join(names) == LLAMA_CSV
    row = bench.csv_row(t, names).split(",")
    assert len(row) == len(names) and all(x.startswith('"') and x.endswith('"') for x in row)
    v = dict(zip(names, (x.strip('"') for x in row)))
    assert v["n_gen"] == "16" and v["n_prompt"] == "0" and v["model_size"] == "96576768"
    assert float(v["avg_ts"]) == pytest.approx((2 + 16 / 6) / 2)
    obj = json.loads("[" + bench.json_object(t, names) + "]")[0]
    assert list(obj)[:len(names)] == names and obj["samples_ns"] == t.samples_ns
    assert obj["samples_ts"] == pytest.approx([2.0, 16 / 6], rel=1e-5)
    assert obj["cpu_strict"] is False and obj["n_threads"] == 2
    mixed = _test(kv_hot=64)
    mixed.samples_ns = [1]
    assert bench.fields([mixed])[bench.fields([mixed]).index("type_v") + 1] == "kv_hot"


class CountingLlama:
    def __init__(self):
        self.log = []

    def reset(self):
        self.log.append("reset")

    def eval(self, toks):
        self.log.append(len(toks))


def test_run_test_prompt_and_gen():
    llm = CountingLlama()
    t = _test(n_prompt=100, n_batch=32)
    bench.run_test(llm, t, reps=3, warmup=True, n_vocab=50, bos=None)
    one = ["reset", 32, 32, 32, 4]
    assert llm.log == one * 4 and len(t.samples_ns) == 3
    llm = CountingLlama()
    t = _test(n_prompt=0, n_gen=5)
    bench.run_test(llm, t, reps=2, warmup=False, n_vocab=50, bos=1)
    assert llm.log == ["reset"] + [1] * 5 + ["reset"] + [1] * 5
    assert t.label == "tg5" and len(t.samples_ts()) == 2


def test_cli_errors(capsys):
    assert bench.main(["-r", "0", "-m", "/nonexistent.gguf"]) == 2
    assert capsys.readouterr().err.startswith("pyggml bench: error: -r must be > 0")
    assert bench.main(["-m", "/nonexistent.gguf", "-p", "8", "-n", "0", "-r", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyggml bench:") and "/nonexistent.gguf" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        bench.main(["-p", "1,x"])


def test_ftype_names():
    assert ftype_name(3) == "Q4_1" and ftype_name(15) == "Q4_K - Medium"
    assert ftype_name(1024 + 7) == "Q8_0 (guessed)" and ftype_name(None) == "all F32"
