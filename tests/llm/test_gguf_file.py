"""GGUFFile: the directory and metadata equal gguf's own reader; every broken file is a
ModelFileError naming the file."""
import numpy as np
import pytest

from pyggml.errors import ModelFileError
from pyggml.llm import GGUFFile

gguf = pytest.importorskip("gguf")


@pytest.fixture
def small_gguf(tmp_path):
    path = tmp_path / "small.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_string("general.name", "tiny é")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ĠHello", ""])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0, 0.0])
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    rng = np.random.default_rng(0)
    w.add_tensor("a", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("b", rng.standard_normal((2, 5)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_matches_gguf_reader(small_gguf):
    g = GGUFFile(small_gguf)
    r = gguf.GGUFReader(str(small_gguf))
    assert g.arch == "llama" and g.version == 3
    assert g.metadata["general.name"] == "tiny é"
    assert g.metadata["tokenizer.ggml.tokens"] == ["a", "b", "ĠHello", ""]
    np.testing.assert_array_equal(g.metadata["tokenizer.ggml.scores"], [0.5, -1.0, 2.0, 0.0])
    assert g.metadata["tokenizer.ggml.add_bos_token"] is True or \
        bool(g.metadata["tokenizer.ggml.add_bos_token"]) is True
    for t in r.tensors:
        info = g.tensors[t.name]
        assert info.ne == tuple(int(x) for x in t.shape)
        assert info.type_id == int(t.tensor_type)
        np.testing.assert_array_equal(g.tensor_data(t.name),
                                      np.asarray(t.data).view(np.uint8).reshape(-1))
    assert g.tensors["a"].ne == (64, 3) and g.tensors["a"].nbytes == 64 * 3 * 4


def test_missing_and_not_gguf(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        GGUFFile(tmp_path / "nope.gguf")
    p = tmp_path / "text.gguf"
    p.write_text("hello world, not a model")
    with pytest.raises(ModelFileError, match=r"text\.gguf: not a GGUF file"):
        GGUFFile(p)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        GGUFFile(tmp_path / "empty.gguf")
    with pytest.raises(ModelFileError, match="directory"):
        GGUFFile(tmp_path)


@pytest.mark.parametrize("keep", [6, 20, 60, 200, -33])
def test_truncated(small_gguf, tmp_path, keep):
    raw = small_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[:keep] if keep > 0 else raw[:keep])
    with pytest.raises(ModelFileError, match=r"cut\.gguf: (truncated|corrupt)"):
        GGUFFile(cut)


def test_corrupt_counts_and_version(small_gguf, tmp_path):
    raw = bytearray(small_gguf.read_bytes())
    bad = tmp_path / "bad.gguf"
    raw2 = raw.copy()
    raw2[8:16] = (2**60).to_bytes(8, "little")          # tensor count
    bad.write_bytes(raw2)
    with pytest.raises(ModelFileError, match="corrupt GGUF header"):
        GGUFFile(bad)
    raw3 = raw.copy()
    raw3[4:8] = (1).to_bytes(4, "little")
    bad.write_bytes(raw3)
    with pytest.raises(ModelFileError, match="version 1"):
        GGUFFile(bad)
