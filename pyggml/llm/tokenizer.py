"""The tokenizer of a GGUF file, with llama.cpp's semantics (src/llama-vocab.cpp).

`Tokenizer.from_gguf(g)` reads `tokenizer.ggml.*`: the vocabulary, token types, scores,
merges, special ids, add_bos/add_eos and the pre-tokenizer. Two vocabulary types:
`gpt2` (byte-level BPE, engine in tokenizer_bpe.py on the `tokenizers` library) and
`llama` (SentencePiece merge by score, tokenizer_spm.py). Around the engine this file does
what llama.cpp's vocab does: special-token partition (tokenizer_st_partition), BOS/EOS,
the end-of-generation set, token_to_piece per token type, and llama_detokenize.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelFileError
from ..errors import ParamError
from .tokenizer_bpe import build_engine
from .tokenizer_bpe import decode_byte_level
from .tokenizer_bpe import pre_tokenizer
from .tokenizer_spm import spm_tokenize
from .utf8 import StreamDecoder
from .utf8 import to_text

# llama_token_attr bits (llama.h)
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 1 << 4, 1 << 5, 1 << 7, 1 << 8
# GGUF token_type -> attr (llama_token_type: 0 undefined .. 6 byte)
_TYPE_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED,
              5: ATTR_UNUSED, 6: ATTR_BYTE}

SPACE_ESCAPE = "\u2581".encode()            # SentencePiece's visible space, '▁'
_C_SPACE = b" \t\n\v\f\r"                   # C isspace(): what lstrip/rstrip remove

# metadata key suffix -> attribute; order is llama.cpp's (deprecated fim keys last)
_SPECIAL_KEYS = [("bos", "bos_id"), ("eos", "eos_id"), ("eot", "eot_id"), ("eom", "eom_id"),
                 ("unknown", "unk_id"), ("seperator", "sep_id"), ("padding", "pad_id"),
                 ("mask", "mask_id"), ("fim_pre", "fim_pre_id"), ("fim_suf", "fim_suf_id"),
                 ("fim_mid", "fim_mid_id"), ("fim_pad", "fim_pad_id"),
                 ("fim_rep", "fim_rep_id"), ("fim_sep", "fim_sep_id"),
                 ("prefix", "fim_pre_id"), ("suffix", "fim_suf_id"), ("middle", "fim_mid_id")]

# tokens llama.cpp recognises by text when the metadata does not name them
_AUTO_IDS = {
    "eot_id": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
               "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
               "<end_of_utterance>"),
    "eom_id": ("<|eom_id|>",),
    "fim_pre_id": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                   "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf_id": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                   "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid_id": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                   "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep_id": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]",
    "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~["))


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary. Texts are bytes (UTF-8), as in
    llama.cpp and llama-cpp-python."""

    @classmethod
    def from_gguf(cls, g) -> Tokenizer:
        return cls(g.metadata, g.path)

    def __init__(self, metadata: dict, path: str = "<metadata>"):
        self.path = path
        md = metadata
        self.model = md.get("tokenizer.ggml.model")
        if self.model is None:
            raise ModelFileError(f"{path}: GGUF metadata has no 'tokenizer.ggml.model'")
        self.pre = str(md.get("tokenizer.ggml.pre", "") or "")
        if self.model == "llama":
            ids = {"bos_id": 1, "eos_id": 2, "unk_id": 0}
            self.add_space_prefix, self.add_bos, self.add_eos = True, True, False
            self.clean_spaces, self.escape_whitespaces = False, True
        elif self.model == "gpt2":
            pre = pre_tokenizer(self.pre, path)
            ids = {"bos_id": None if pre.no_bos else 11, "eos_id": 11}
            self.add_space_prefix, self.add_bos, self.add_eos = False, pre.add_bos, False
            self.clean_spaces, self.escape_whitespaces = pre.clean_spaces, False
        else:
            raise ModelFileError(f"{path}: unsupported tokenizer.ggml.model {self.model!r} "
                                 "(pyggml reads 'gpt2' BPE and 'llama' SentencePiece)")
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix",
                                            self.add_space_prefix))
        self._load_vocab(md)
        self._engine = None
        if self.model == "gpt2":
            merges = md.get("tokenizer.ggml.merges")
            if not isinstance(merges, list):
                raise ModelFileError(f"{path}: gpt2 tokenizer without tokenizer.ggml.merges")
            self._engine = build_engine(self.tokens, merges, pre, path)
        self._load_special_ids(md, ids)
        self._find_special_tokens(md)
        self._pieces = [None] * self.n_vocab      # token_to_piece(special=True), on demand

    # --- loading --------------------------------------------------------------------------
    def _load_vocab(self, md: dict) -> None:
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelFileError(f"{self.path}: GGUF metadata has no tokenizer.ggml.tokens")
        if not all(isinstance(t, str) for t in tokens):
            raise ModelFileError(f"{self.path}: tokenizer.ggml.tokens is not an array of "
                                 "strings")
        n = len(tokens)
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        raw = [t.encode("utf-8", "surrogateescape") for t in tokens]
        to_id = {}
        for i, b in enumerate(raw):
            if to_id.setdefault(b, i) != i:
                raise ModelFileError(f"{self.path}: duplicate token {tokens[i]!r} in the "
                                     f"vocabulary (ids {to_id[b]} and {i})")
        scores = md.get("tokenizer.ggml.scores")
        types = md.get("tokenizer.ggml.token_type")
        for key, arr in (("scores", scores), ("token_type", types)):
            if arr is not None and len(arr) < n:
                raise ModelFileError(f"{self.path}: tokenizer.ggml.{key} has {len(arr)} "
                                     f"entries for {n} tokens")
        self.tokens, self._raw, self._to_id, self.n_vocab = tokens, raw, to_id, n
        try:
            self.scores = (np.asarray(scores[:n], dtype=np.float32) if scores is not None
                           else np.zeros(n, np.float32))
            types = None if types is None else np.asarray(types[:n], dtype=np.int64)
        except (TypeError, ValueError):
            raise ModelFileError(f"{self.path}: tokenizer.ggml.scores / token_type are not "
                                 "numeric arrays") from None
        self.attrs = [ATTR_NORMAL] * n if types is None else \
            [_TYPE_ATTR.get(t, 0) for t in types.tolist()]

    def _load_special_ids(self, md: dict, defaults: dict) -> None:
        n = self.n_vocab
        ids = dict.fromkeys(("bos_id", "eos_id", "eot_id", "eom_id", "unk_id", "sep_id",
                             "pad_id", "mask_id", "fim_pre_id", "fim_suf_id", "fim_mid_id",
                             "fim_pad_id", "fim_rep_id", "fim_sep_id"))
        ids.update(defaults)
        for key, name in _SPECIAL_KEYS:
            if ids[name] is not None and ids[name] >= n:   # a default outside this vocab
                ids[name] = None
            value = md.get(f"tokenizer.ggml.{key}_token_id")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ModelFileError(f"{self.path}: tokenizer.ggml.{key}_token_id is "
                                     f"{value!r}, not a token id")
            if 0 <= int(value) < n:                    # out of range: keep the default
                ids[name] = int(value)
        for name, value in ids.items():
            setattr(self, name, value)
        if self.model == "llama":
            self.nl_id = self._to_id.get(b"<0x0A>", self._to_id.get(b"\n", self.pad_id))
        flag = md.get("tokenizer.ggml.add_bos_token")
        if flag is not None:
            self.add_bos = bool(flag)
        flag = md.get("tokenizer.ggml.add_eos_token")
        if flag is not None:
            self.add_eos = bool(flag)
        for add, tid, what in ((self.add_bos, self.bos_id, "bos"),
                               (self.add_eos, self.eos_id, "eos")):
            if add and tid is None:
                raise ModelFileError(f"{self.path}: tokenizer.ggml.add_{what}_token is true "
                                     f"but tokenizer.ggml.{what}_token_id is not set")

    def _find_special_tokens(self, md: dict) -> None:
        """EOT/EOM/FIM ids by text, the end-of-generation set, and the per-model token
        attributes, in llama.cpp's order. Where llama.cpp takes the first candidate in
        hash-map order, this takes the lowest id (what llama.cpp picks on SmolLM2)."""
        attrs, to_id = self.attrs, self._to_id
        present = {t: to_id[t.encode("utf-8")]
                   for names in (*_AUTO_IDS.values(), _EOG_TEXTS) for t in names
                   if t.encode("utf-8") in to_id}
        for name, texts in _AUTO_IDS.items():
            if getattr(self, name) is None:
                found = sorted(present[t] for t in texts if t in present)
                if found:
                    setattr(self, name, found[0])
                    attrs[found[0]] |= ATTR_CONTROL
        for i, a in enumerate(attrs):
            if a & ATTR_CONTROL and "unused" in self.tokens[i]:
                attrs[i] |= ATTR_UNUSED
        eog = {i for i in (self.fim_pad_id, self.fim_rep_id, self.fim_sep_id) if i is not None}
        for t in _EOG_TEXTS:
            if t in present:
                eog.add(present[t])
                attrs[present[t]] |= ATTR_CONTROL
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
            if t.encode() in to_id:
                attrs[to_id[t.encode()]] = ATTR_USER_DEFINED
        eog |= {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        texts = {self.tokens[i]: i for i in eog}
        if "<|end|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts) and \
                ("<|return|>" in texts or "<|flush|>" in texts):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "<|tool_response>" in texts and "</s>" in texts:
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = ATTR_NORMAL
        self.eog_ids = frozenset(eog)
        # the special tokens the partition looks for, longest text first
        special = [i for i, a in enumerate(attrs)
                   if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        special.sort(key=lambda i: -len(self._raw[i]))
        self._special = special
        self._set_model_attrs(md)
        if self.model == "gpt2":
            ids = self.tokenize(b"\n", add_special=False)
            self.nl_id = ids[0] if ids else self.pad_id

    def _set_model_attrs(self, md: dict) -> None:
        """llama.cpp's per-model lstrip/rstrip attributes (not stored in GGUF files)."""
        name = str(md.get("general.name", "")).lower()
        arch = str(md.get("general.architecture", ""))
        to_id, attrs = self._to_id, self.attrs
        if any(p in self.pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
            if b"<mask>" in to_id:
                attrs[to_id[b"<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in self._special:
                attrs[i] |= ATTR_RSTRIP
            for t, on in ((b"</s>", True), (b"<unk>", False), (b"<s>", False),
                          (b"<|endoftext|>", False)):
                if t in to_id:
                    attrs[to_id[t]] = attrs[to_id[t]] | ATTR_RSTRIP if on else \
                        attrs[to_id[t]] & ~ATTR_RSTRIP
        elif "modern-bert" in name and b"[MASK]" in to_id:
            attrs[to_id[b"[MASK]"]] |= ATTR_LSTRIP

    def _piece_for_cache(self, i: int) -> bytes:
        """llama.cpp's token_to_piece(special=True) for token i."""
        a, raw = self.attrs[i], self._raw[i]
        if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return raw
        if a & ATTR_NORMAL:
            if self.escape_whitespaces:
                return raw.replace(SPACE_ESCAPE, b" ")
            return decode_byte_level(self.tokens[i], raw)
        if a & ATTR_BYTE:
            return bytes([int(raw[3:5], 16)])
        return b""

    # --- public API -----------------------------------------------------------------------
    def tokenize(self, text, add_special: bool = True, parse_special: bool = False) -> list:
        """Token ids of `text` (bytes; a str is UTF-8 encoded). add_special adds BOS/EOS as
        the vocabulary says; parse_special turns control-token texts into their ids."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        elif not isinstance(text, (bytes, bytearray, memoryview)):
            raise ParamError(f"tokenize: text must be bytes or str, not {type(text).__name__}")
        text = bytes(text)
        fragments = self._partition(text, parse_special) if text else []
        out = []
        if add_special and self.add_bos:
            out.append(self.bos_id)
        if self.model == "llama":
            prev_special = True               # a space prefix goes before the first text
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = b" " + frag
                out += spm_tokenize(frag.replace(b" ", SPACE_ESCAPE), self._to_id,
                                    self.scores, self._byte_token)
                prev_special = False
        else:
            # one encode() per fragment: encode_batch would start tokenizers' thread pool,
            # which then warns and disables itself in any process forked later
            encode, unknown = self._engine.encode, self.n_vocab
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                ids = encode(to_text(frag), add_special_tokens=False).ids
                out += [i for i in ids if i != unknown] if unknown in ids else ids
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes of one token (llama_token_to_piece): control and unknown tokens are
        empty unless `special`."""
        i = self._check_id(token_id)
        if not special and self.attrs[i] & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        piece = self._pieces[i]
        if piece is None:
            piece = self._pieces[i] = self._piece_for_cache(i)
        return piece

    def detokenize(self, ids, special: bool = False, remove_special: bool = False) -> bytes:
        """Bytes of a token sequence (llama_detokenize with unparse_special=`special`):
        SentencePiece's leading space is dropped, BPE vocabularies that ask for it get
        llama.cpp's clean-up of spaces before punctuation and contractions."""
        ids = [self._check_id(t) for t in ids]
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for t in ids:
            piece = self.token_to_piece(t, special)
            if remove_space and piece.startswith(b" "):
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        text = b"".join(parts)
        return _clean_spaces(text) if self.clean_spaces else text

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def is_control(self, token_id: int) -> bool:
        return bool(self.attrs[self._check_id(token_id)] & ATTR_CONTROL)

    def decoder(self, special: bool = False) -> StreamDecoder:
        """A streaming detokenizer: .feed(id) returns only complete UTF-8 text."""
        return StreamDecoder(self, special)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab}, "
                f"bos={self.bos_id}, eos={self.eos_id}, add_bos={self.add_bos})")

    # --- helpers --------------------------------------------------------------------------
    def _check_id(self, token_id) -> int:
        i = int(token_id)
        if not 0 <= i < self.n_vocab:
            raise ParamError(f"token id {token_id} is outside the vocabulary "
                             f"[0, {self.n_vocab}) of {self.path}")
        return i

    def _byte_token(self, b: int) -> int:
        """The id spelling byte b in a SentencePiece vocabulary (<0xXX>, else the byte)."""
        tid = self._to_id.get(b"<0x%02X>" % b, self._to_id.get(bytes([b])))
        if tid is None:
            raise ModelFileError(f"{self.path}: the vocabulary has no token for byte "
                                 f"0x{b:02X} (<0x{b:02X}>) to spell an unknown piece")
        return tid

    def _partition(self, text: bytes, parse_special: bool) -> list:
        """Split text into raw byte fragments and special-token ids (llama.cpp's
        tokenizer_st_partition): special tokens longest first, each over the text
        fragments left by the previous ones; control and unknown tokens only when
        parse_special; lstrip/rstrip tokens eat the whitespace beside them."""
        frags = [text]
        for tid in self._special:
            a = self.attrs[tid]
            if not parse_special and a & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            needle = self._raw[tid]
            if not any(isinstance(f, bytes) and needle in f for f in frags):
                continue
            out = []
            for f in frags:
                if isinstance(f, int) or needle not in f:
                    out.append(f)
                    continue
                pos = 0
                while True:
                    hit = f.find(needle, pos)
                    if hit < 0:
                        if pos < len(f):
                            out.append(f[pos:])
                        break
                    left = f[pos:hit]
                    if a & ATTR_LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        out.append(left)
                    out.append(tid)
                    pos = hit + len(needle)
                    if a & ATTR_RSTRIP:
                        while pos < len(f) and f[pos] in _C_SPACE:
                            pos += 1
            frags = out
        return frags


def _clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces (three passes over the bytes)."""
    # " ?", " !", " .", " ,": drop the space
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        x = text[i]
        if text[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    # " ' ": a lone apostrophe between spaces loses both spaces; llama.cpp overwrites the
    # second space with NUL in place, so the next character never sees a space before it
    t, out = bytearray(out), bytearray(out[:1])
    i = 1
    while i < len(t):
        x = t[i]
        if x == 0x27 and i + 1 < len(t) and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            i += 1
            t[i] = 0
        out.append(x)
        i += 1
    # " 's", " 'm", " 're", " 've": drop the space
    t, out = bytes(out), bytearray(out[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < len(t):
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < len(t) and (t[i + 1:i + 3] in (b"re", b"ve"))):
                out.pop()
        out.append(x)
    return bytes(out)
