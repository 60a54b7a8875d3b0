"""Byte-level BPE (`tokenizer.ggml.model = gpt2`) on the `tokenizers` library.

The engine is a `tokenizers.Tokenizer` built from the GGUF's own arrays: its vocabulary and
merges, and a pre-tokenizer made of the split regexes llama.cpp picks for the file's
`tokenizer.ggml.pre` (src/llama-vocab.cpp, llm_tokenizer_bpe), each applied in turn with
"isolated" behaviour (matches and the gaps between them become words), then the GPT-2 byte
to unicode mapping. The merge loop runs in Rust; only the special-token partition and the
UTF-8 decoding of the raw bytes are Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from ..errors import ModelFileError

# llama.cpp's split regexes (the adapted forms it runs, not the tokenizer.json originals)
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_CASED = r"((?=[\p{L}])([^a-z]))"
_GPT4O_LOWER = r"((?=[\p{L}])([^A-Z]))"
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_GPT4O_CASED}*{_GPT4O_LOWER}+{_CONTRACTIONS}?"
         rf"|[^\r\n\p{{L}}\p{{N}}]?{_GPT4O_CASED}+{_GPT4O_LOWER}*{_CONTRACTIONS}?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_GPT4O_CASED}*{_GPT4O_LOWER}+"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_GPT4O_CASED}+{_GPT4O_LOWER}*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PORO = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class PreTokenizer:
    """One row of llama.cpp's pre-tokenizer table: regexes and the vocab flags it sets."""
    regexes: tuple
    clean_spaces: bool = True       # llama.cpp's default for BPE; many pres turn it off
    ignore_merges: bool = False     # a word already in the vocab is one token
    add_bos: bool = False           # default before tokenizer.ggml.add_bos_token
    no_bos: bool = False            # the pre clears the BOS id (chatglm)
    names: tuple = field(default=())


_PRES = [
    PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
                 names=("default",)),
    PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True,
                 names=("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                        "midm-2.0", "lfm2")),
    PreTokenizer((LLAMA3,), names=("dbrx", "smaug-bpe")),
    PreTokenizer((LLAMA3,), no_bos=True, names=("chatglm-bpe", "glm4")),
    # llama.cpp runs a regex without \p{..} on text whose non-ASCII spaces became \v, so
    # its CJK ranges never match U+1680 or U+3000: intersect them with [^\s] to agree
    PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[[一-龥ࠀ-一가-퟿]&&[^\s]]+",
                  r"\p{N}"), clean_spaces=False, names=("deepseek-coder",)),
    PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"), names=("falcon",)),
    PreTokenizer((GPT2,), names=("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat",
                                 "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                                 "modern-bert", "mpt", "olmo", "jais", "exaone4")),
    PreTokenizer((GPT2,), clean_spaces=False, names=("trillion", "granite-docling")),
    PreTokenizer((r"\p{N}", GPT2), names=("starcoder", "refact", "codeshell", "exaone",
                                          "minerva-7b", "mellum2")),
    PreTokenizer((r"\p{N}", GPT2), clean_spaces=False, names=("smollm", "command-r")),
    PreTokenizer((QWEN2,), clean_spaces=False,
                 names=("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan",
                        "solar-open")),
    PreTokenizer((QWEN2,), names=("stablelm2", "megrez")),
    PreTokenizer((PORO,), clean_spaces=False, names=("poro-chat",)),
    PreTokenizer((PORO,), names=("bloom", "gpt3-finnish")),
    PreTokenizer((PORO, r"\p{N}"), clean_spaces=False, names=("viking",)),
    PreTokenizer((TEKKEN,), clean_spaces=False, ignore_merges=True, add_bos=True,
                 names=("tekken",)),
    PreTokenizer((GPT4O,), clean_spaces=False, names=("gpt-4o", "llama4", "kanana2")),
]
PRE_TOKENIZERS = {name: pre for pre in _PRES for name in pre.names}


def pre_tokenizer(pre: str, path: str) -> PreTokenizer:
    """The table row for `tokenizer.ggml.pre` (absent -> 'default', as llama.cpp)."""
    row = PRE_TOKENIZERS.get(pre or "default")
    if row is None:
        raise ModelFileError(f"{path}: unsupported tokenizer.ggml.pre {pre!r} for a gpt2 "
                             f"tokenizer (supported: {', '.join(sorted(PRE_TOKENIZERS))})")
    return row


def _bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character map (llama.cpp's unicode_byte_to_utf8_map)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# str.translate table: byte-level char -> chr(byte); any other char below 0x144 -> a char
# latin-1 cannot encode, so one encode() both decodes and detects a non-byte-level char
_UNMAPPED = "\uffff"
_DECODE_TABLE = {cp: chr(CHAR_TO_BYTE[chr(cp)]) if chr(cp) in CHAR_TO_BYTE else _UNMAPPED
                 for cp in range(0x144)}


def decode_byte_level(text: str, raw: bytes) -> bytes:
    """A BPE token's text -> its bytes (llama.cpp's llama_decode_text); a character outside
    the byte map becomes '[UNK_BYTE_0x<hex>' + token text + ']', as there."""
    try:
        return text.translate(_DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        pass
    from .utf8 import codepoints
    out = bytearray()
    for cp in codepoints(raw):
        ch = chr(cp) if cp < 0xD800 or cp > 0xDFFF else "\ufffd"
        if ch in CHAR_TO_BYTE:
            out.append(CHAR_TO_BYTE[ch])
        else:
            out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + raw + b"]"
    return bytes(out)


# A character missing from the vocabulary stays a symbol in llama.cpp's merge loop (it
# blocks merges across it) and is dropped at the end; tokenizers would drop it before
# merging. So it becomes this extra token, id n_vocab, which no merge uses, and the caller
# removes it from the ids.
UNKNOWN_CHAR = "\ue000pyggml-unknown-char\ue000"


def build_engine(tokens: list, merges: list, pre: PreTokenizer, path: str):
    """A `tokenizers.Tokenizer` over the GGUF's vocabulary and merges (no added tokens:
    special tokens are partitioned out before it sees the text, as in llama.cpp). Ids equal
    to len(tokens) stand for characters outside the vocabulary (see UNKNOWN_CHAR)."""
    try:
        from tokenizers import Regex
        from tokenizers import Tokenizer
        from tokenizers import models
        from tokenizers import pre_tokenizers
    except ImportError:
        raise ModelFileError(f"{path}: a gpt2 (BPE) tokenizer needs the `tokenizers` package: "
                             "pip install 'pyggml[llm]'") from None
    vocab = {}
    for i, t in enumerate(tokens):
        try:
            t.encode("utf-8")          # a token that is not UTF-8 (read with surrogateescape)
        except UnicodeEncodeError:     # is no byte-level string: BPE can never produce it
            continue
        vocab[t] = i
    pairs, seen = [], set()
    if not all(isinstance(m, str) for m in merges):
        raise ModelFileError(f"{path}: tokenizer.ggml.merges is not an array of strings")
    for m in merges:
        # llama.cpp splits at the first space after position 0; the first rank wins
        cut = m.find(" ", 1)
        if cut < 0:
            continue
        a, b = m[:cut], m[cut + 1:]
        # tokenizers rejects a merge whose parts or result are not tokens, so such a merge
        # is dropped (llama.cpp would apply it, then spell the non-token out in raw bytes);
        # converted vocabularies have none (SmolLM2: 0 of 48900)
        if (a, b) in seen or a not in vocab or b not in vocab or a + b not in vocab:
            continue
        seen.add((a, b))
        pairs.append((a, b))
    vocab.setdefault(UNKNOWN_CHAR, len(tokens))
    # ignore_merges needs tokenizers >= 0.19; only the pres that use it ask for it
    extra = {"ignore_merges": True} if pre.ignore_merges else {}
    try:
        model = models.BPE(vocab=vocab, merges=pairs, unk_token=UNKNOWN_CHAR, **extra)
    except TypeError:
        raise ModelFileError(f"{path}: this tokenizer.ggml.pre needs tokenizers >= 0.19 "
                             "(BPE ignore_merges)") from None
    engine = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    engine.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return engine
