"""The GGUF loader: hyperparameters, tensor checks before anything is made, weights read in
place from the file's map, a tied output that is the embedding itself, and save_gguf files
that round-trip."""
import dataclasses

import numpy as np
import pytest

import pyggml as gg
from pyggml.errors import ModelFileError
from pyggml.llm import GGUFFile
from pyggml.llm.loader import config_from_gguf, load_model, save_gguf
from pyggml.models.llama import LlamaConfig, LlamaModel

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
    from pyggml.tensor import Buffer
    from pyggml.errors import DataError
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
    _patch_type(path, "blk.0.attn_q.weight", int(gguf.GGMLQuantizationType.IQ4_NL))
    with pytest.raises(ModelFileError, match=r"tensor 'blk\.0\.attn_q\.weight' has type IQ4_NL "
                                             r"\(ggml type 20\), which pyggml does not support"):
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


def test_model_delegations(tmp_path):
    _, path = saved(tmp_path)
    p2 = tmp_path / "again.gguf"
    LlamaModel.from_gguf(path).save_gguf(p2)
    assert LlamaModel.from_gguf(p2).cfg == LlamaModel.from_gguf(path).cfg
