"""UTF-8 the way llama.cpp reads it (src/unicode.cpp), and a streaming decoder.

llama.cpp decodes text to code points leniently: a byte that does not start a well-formed
sequence becomes U+FFFD and decoding resumes at the next byte (Python's 'replace' would
fold a truncated sequence into one U+FFFD instead). It checks continuation bytes only, so
surrogates and overlong forms decode to their value.
"""
from __future__ import annotations


def utf8_len(lead: int) -> int:
    """Sequence length implied by a lead byte (llama.cpp's unicode_len_utf8: high nibble)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]


def codepoints(data: bytes) -> list:
    """Code points of `data` as llama.cpp's unicode_cpts_from_utf8 yields them."""
    out, i, n = [], 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            out.append(b)
            i += 1
            continue
        need = 0 if not b & 0x40 else 1 if not b & 0x20 else 2 if not b & 0x10 else \
            3 if not b & 0x08 else 0
        if need and i + need < n and all(data[i + k] & 0xC0 == 0x80
                                         for k in range(1, need + 1)):
            cp = b & (0x7F >> (need + 1))
            for k in range(1, need + 1):
                cp = (cp << 6) | (data[i + k] & 0x3F)
            out.append(cp)
            i += need + 1
        else:
            out.append(0xFFFD)
            i += 1
    return out


def to_text(data: bytes) -> str:
    """`data` as a str with llama.cpp's replacement rule. Surrogates, which a str bound for
    the Rust tokenizer cannot hold, become U+FFFD (llama.cpp would keep their bytes)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(c) if c < 0xD800 or 0xDFFF < c <= 0x10FFFF else "\ufffd"
                       for c in codepoints(data))


def incomplete_tail(buf: bytes) -> int:
    """How many bytes at the end of `buf` are the start of a UTF-8 sequence still missing
    its continuation bytes (0 if the buffer ends on a character boundary)."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b & 0xC0 == 0x80:          # continuation byte: keep looking for the lead
            continue
        if b >= 0xC0 and utf8_len(b) > back:
            return back
        return 0
    return 0


class StreamDecoder:
    """Token ids in, text out, only ever whole UTF-8 characters: a character split across
    tokens (byte tokens, or an emoji cut by BPE) is held back until it is complete.
    Bytes that can never form a character come out as U+FFFD rather than stalling."""

    def __init__(self, tokenizer, special: bool = False):
        self._tok = tokenizer
        self._special = special
        self._buf = b""

    def feed(self, token_id: int) -> str:
        buf = self._buf + self._tok.token_to_piece(token_id, self._special)
        keep = incomplete_tail(buf)
        self._buf = buf[len(buf) - keep:] if keep else b""
        return buf[:len(buf) - keep].decode("utf-8", errors="replace")

    def flush(self) -> str:
        """Whatever is held back (an unfinished character decodes to U+FFFD)."""
        buf, self._buf = self._buf, b""
        return buf.decode("utf-8", errors="replace")
