"""`pyggml quantize` flags and `--imatrix` files against llama.cpp's llama-quantize.

Writes a tiny deterministic F32 llama model and an importance matrix for it in both formats
llama.cpp reads (the legacy .dat and the GGUF file llama-imatrix writes now: <name>.in_sum2
and <name>.counts, imatrix.datasets / chunk_count / chunk_size), quantizes the model with
llama-quantize for each case of CASES (ftypes whose quantizers take the imatrix: K-quant
mixes, Q4_0..Q5_1, IQ4_XS; the type-choosing flags) and records each output tensor's type
and sha256:

    python tools/quantize_cases_fixture.py ../shared/llama.cpp/run \
        > tests/unit/fixtures/quantize_cases_tiny.json

Cases that change the metadata (--override-kv, --prune-layers, --imatrix) also record it in
file order ("_kv"); --dry-run cases record the per-tensor and total lines ("_log").

tests/unit/test_quantize_cli.py builds the same inputs (make_inputs) and compares pyggml's
files with the fixture. (No llama-imatrix binary is available here; the files follow the
writer in llama.cpp's tools/imatrix/imatrix.cpp, and llama-quantize accepting them and
producing these bytes is the check.)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# "FTYPE flags..." ({dat} / {gguf}: the imatrix files)
CASES = [f"{ft} --imatrix {{{fmt}}}" for fmt in ("dat", "gguf")
         for ft in ("Q4_K_M", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_XS")] + [
    "Q4_K_M --imatrix {gguf} --exclude-weights attn_q --exclude-weights ffn_up",
    "Q4_K_M --imatrix {dat} --include-weights attn_v",
    "Q4_K_M --tensor-type attn_v=q4_k",
    "Q4_K_M --pure --tensor-type attn_v=q5_0",
    "Q4_K_M --tensor-type ATTN_.=q8_0 --tensor-type attn_q=q5_0",
    "Q4_K_M --tensor-type ffn_(up|gate)=iq4_xs --leave-output-tensor",
    "Q5_K_M --output-tensor-type q8_0 --token-embedding-type q5_0",
    "Q6_K --pure",
    "Q4_K_M @split",                     # a model in 3 shards, written as one file
    "Q4_K_M @split --keep-split",        # ... and as 3 shards
    "Q8_0 --keep-split",                 # one file in, PREFIX-00001-of-00001.gguf out
    # --prune-layers on a 4-layer model: renumbered blocks, block_count, the imatrix looked
    # up by the old names; --override-kv: each type, a key the type choice reads; --dry-run
    "Q4_K_M @deep --prune-layers 1,2",
    "Q4_K_M @deep --prune-layers 3,0,3 --imatrix {deepdat}",
    "Q4_K_M --override-kv llama.context_length=int:-512 --override-kv general.name=str:renamed "
    "--override-kv llama.rope.freq_base=float:2.5e4 --override-kv tokenizer.ggml.add_bos_token=bool:false",
    "Q4_K_M @deep --override-kv llama.block_count=int:16",
    "Q4_K_M --dry-run",
    "Q2_K_S --dry-run",
    "Q4_K_M @deep --dry-run --prune-layers 2",
    "MXFP4_MOE @moe",                    # expert tensors (3-D) MXFP4, the others Q8_0
    "MXFP4_MOE @moe --pure",             # every quantizable tensor MXFP4
    "MXFP4_MOE",                         # a dense model: all Q8_0
]
N_EMBD, N_FF, N_VOCAB = 256, 512, 64
N_EXPERT = 4
N_DEEP = 4                   # layers of the model the --prune-layers cases use


def _deep_weights():
    """A llama of N_DEEP small layers (FFN as wide as the embedding)."""
    rng = np.random.default_rng(4321)

    def m(rows, cols):
        return (rng.standard_normal((rows, cols)) * rng.uniform(0.5, 2, (1, cols))).astype(np.float32)
    w = {"token_embd.weight": m(N_VOCAB, N_EMBD)}
    for i in range(N_DEEP):
        w.update({f"blk.{i}.attn_norm.weight": np.ones(N_EMBD, np.float32),
                  f"blk.{i}.attn_q.weight": m(N_EMBD, N_EMBD),
                  f"blk.{i}.attn_k.weight": m(N_EMBD // 2, N_EMBD),
                  f"blk.{i}.attn_v.weight": m(N_EMBD // 2, N_EMBD),
                  f"blk.{i}.attn_output.weight": m(N_EMBD, N_EMBD),
                  f"blk.{i}.ffn_norm.weight": np.ones(N_EMBD, np.float32),
                  f"blk.{i}.ffn_gate.weight": m(N_EMBD, N_EMBD),
                  f"blk.{i}.ffn_up.weight": m(N_EMBD, N_EMBD),
                  f"blk.{i}.ffn_down.weight": m(N_EMBD, N_EMBD)})
    w["output_norm.weight"] = np.ones(N_EMBD, np.float32)
    w["output.weight"] = m(N_VOCAB, N_EMBD)
    return w


def _weights():
    """{name: float32 array [rows, cols]} of a one-layer llama (ggml's ne = cols, rows)."""
    rng = np.random.default_rng(1234)

    def m(rows, cols):
        return (rng.standard_normal((rows, cols)) * rng.uniform(0.5, 2, (1, cols))).astype(np.float32)
    return {
        "token_embd.weight": m(N_VOCAB, N_EMBD),
        "blk.0.attn_norm.weight": np.ones(N_EMBD, np.float32),
        "blk.0.attn_q.weight": m(N_EMBD, N_EMBD),
        "blk.0.attn_k.weight": m(N_EMBD // 2, N_EMBD),
        "blk.0.attn_v.weight": m(N_EMBD // 2, N_EMBD),
        "blk.0.attn_output.weight": m(N_EMBD, N_EMBD),
        "blk.0.ffn_norm.weight": np.ones(N_EMBD, np.float32),
        "blk.0.ffn_gate.weight": m(N_FF, N_EMBD),
        "blk.0.ffn_up.weight": m(N_FF, N_EMBD),
        "blk.0.ffn_down.weight": m(N_EMBD, N_FF),
        "output_norm.weight": np.ones(N_EMBD, np.float32),
        "output.weight": m(N_VOCAB, N_EMBD),
    }


def _moe_weights():
    """The model with its FFN as N_EXPERT experts (gpt-oss's layout: ffn_*_exps 3-D, the
    router ffn_gate_inp)."""
    rng = np.random.default_rng(4321)
    w = {k: v for k, v in _weights().items() if not k.startswith("blk.0.ffn_")
         or k == "blk.0.ffn_norm.weight"}

    def e(rows, cols):
        return (rng.standard_normal((N_EXPERT, rows, cols)) * 0.5).astype(np.float32)
    w["blk.0.ffn_gate_inp.weight"] = rng.standard_normal((N_EXPERT, N_EMBD)).astype(np.float32)
    w["blk.0.ffn_gate_exps.weight"] = e(N_FF, N_EMBD)
    w["blk.0.ffn_up_exps.weight"] = e(N_FF, N_EMBD)
    w["blk.0.ffn_down_exps.weight"] = e(N_EMBD, N_FF)
    return w


def _imatrix(weights=None):
    """{name: (sums of squared activations [ne0], count)} for the matrices (not token_embd)."""
    rng = np.random.default_rng(99)
    out = {}
    for name, w in (_weights() if weights is None else weights).items():
        if w.ndim == 2 and name != "token_embd.weight":
            count = 7 * 512
            out[name] = ((rng.gamma(0.6, 1.0, w.shape[1]) + 1e-3) * count).astype(np.float32), count
    return out


def _write_dat(path: Path, im: dict, chunks: int) -> None:
    """legacy .dat: n_entries, then per entry name, ncall, nval, values (= mean * ncall),
    then the chunk count and the dataset name"""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(im)))
        for name, (sums, count) in im.items():
            ncall = 3
            vals = (sums / np.float32(count) * np.float32(ncall)).astype(np.float32)
            nb = name.encode()
            f.write(struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, vals.size))
            f.write(vals.tobytes())
        ds = b"tiny.txt"
        f.write(struct.pack("<i", chunks) + struct.pack("<i", len(ds)) + ds)


def _write_model(path: Path, weights: dict, n_layer: int, n_ff: int, n_expert: int = 0) -> None:
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // 4)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(N_VOCAB)])
    w.add_token_types([1] * N_VOCAB)
    w.add_token_merges(["t 1"])
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    for name, x in weights.items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_inputs(d: Path) -> dict:
    """model.gguf, imatrix.dat, imatrix.gguf, the split model, deep.gguf, deep.dat and moe.gguf in d;
    returns their paths."""
    import gguf
    d = Path(d)
    _write_model(d / "model.gguf", _weights(), 1, N_FF)
    _write_model(d / "deep.gguf", _deep_weights(), N_DEEP, N_EMBD)
    _write_model(d / "moe.gguf", _moe_weights(), 1, N_FF, N_EXPERT)
    im = _imatrix()
    chunks = 7
    _write_dat(d / "imatrix.dat", im, chunks)
    _write_dat(d / "deep.dat", _imatrix(_deep_weights()), chunks)
    g = gguf.GGUFWriter(str(d / "imatrix.gguf"), arch="")
    g.add_type("imatrix")
    g.add_array("imatrix.datasets", ["tiny.txt"])
    g.add_uint32("imatrix.chunk_count", chunks)
    g.add_uint32("imatrix.chunk_size", 512)
    for name in sorted(im):
        sums, count = im[name]
        g.add_tensor(f"{name}.counts", np.full((1, 1), count, np.float32))
        g.add_tensor(f"{name}.in_sum2", sums.reshape(1, -1))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    # the same model in shards of at most 5 tensors (gguf-py's split writer)
    r = gguf.GGUFReader(str(d / "model.gguf"))
    w = gguf.GGUFWriter(str(d / "split.gguf"), "llama", split_max_tensors=5)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), vt, sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"model": d / "model.gguf", "dat": d / "imatrix.dat", "gguf": d / "imatrix.gguf",
            "split": d / "split-00001-of-00003.gguf", "deep": d / "deep.gguf",
            "deepdat": d / "deep.dat", "moe": d / "moe.gguf"}


def case_argv(case: str, paths: dict, out) -> list:
    """pyggml quantize's / llama-quantize's argv of a case (flags first, as llama-quantize
    needs them; "@split": the sharded model as input, "@deep": the 4-layer model, "@moe":
    the MoE model)."""
    ftype, *flags = case.split()
    inp = paths["split"] if "@split" in flags else paths["deep"] if "@deep" in flags \
        else paths["moe"] if "@moe" in flags else paths["model"]
    return [f.format(**{k: str(v) for k, v in paths.items()}) for f in flags
            if not f.startswith("@")] + [str(inp), str(out), ftype]


_LOG_LINE = re.compile(r"^(\[\s*\d+/\s*\d+\] .*|llama_model_quantize_impl: (model size|quant size|"
                       r"WARNING).*)$")


def log_lines(text: str) -> list:
    """The per-tensor lines and the totals / warnings of a quantize run's output."""
    return [ln.rstrip() for ln in text.splitlines() if _LOG_LINE.match(ln.rstrip())]


def kv_list(path: str) -> list:
    """The output's metadata in file order: [key, type, value] (arrays: a digest of the
    values; the imatrix file name without its directory)."""
    import gguf
    r = gguf.GGUFReader(path)
    out = []
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = "/".join(t.name for t in f.types)
        val = f.contents()
        if isinstance(val, list):
            val = hashlib.sha256(json.dumps(val).encode()).hexdigest()
        elif key == "quantize.imatrix.file":
            val = os.path.basename(val)
        elif isinstance(val, float):
            val = float(np.float32(val))
        out.append([key, types, val])
    return out


def case_digests(case: str, out: Path, log: str = "") -> dict:
    """Tensor digests of a case's output; with --keep-split those of every shard, and per
    shard its tensor names and split keys; "_kv": the metadata of cases that change it;
    "_log": the lines of a --dry-run (which writes nothing)."""
    import gguf
    from quantize_fixture import tensor_digests
    flags = case.split()
    if "--dry-run" in flags:
        return {"_log": log_lines(log)}
    if "--keep-split" not in flags:
        res = tensor_digests(str(out))
        if any(f in flags for f in ("--override-kv", "--prune-layers", "--imatrix")):
            res["_kv"] = kv_list(str(out))
        return res
    shards = sorted(out.parent.glob(out.name[:-5] + "-*-of-*.gguf"))
    res, layout = {}, []
    for p in shards:
        res.update(tensor_digests(str(p)))
        r = gguf.GGUFReader(str(p))
        layout.append({"file": p.name, "tensors": sorted(t.name for t in r.tensors),
                       "split": {k: int(r.fields[k].contents()) for k in
                                 ("split.no", "split.count", "split.tensors.count") if k in r.fields},
                       "has_metadata": "general.file_type" in r.fields})
    res["_shards"] = layout
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).parent))
    out = {}
    with tempfile.TemporaryDirectory() as td:
        p = make_inputs(Path(td))
        for i, case in enumerate(CASES):
            (Path(td) / f"o{i}").mkdir()
            dst = Path(td) / f"o{i}" / "out.gguf"
            r = subprocess.run([argv[0], "llama-quantize", *case_argv(case, p, dst)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(case, r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
                return 1
            out[case] = case_digests(case, dst, r.stdout + r.stderr)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
