"""`pyggml tokenize`: llama.cpp's llama-tokenize, same flags, same output.

    pyggml tokenize -m MODEL (-p TEXT | -f FILE | --stdin) [--ids] [--no-parse-special]
                    [--show-count] [--no-bos] [--no-escape]

Prints one `%6d -> '<piece>'` line per token (pieces with special tokens spelled out),
or `[id, id, ...]` with --ids, then `Total number of tokens: N` with --show-count. As in
llama-tokenize the prompt's escapes (\\n \\t \\xNN ...) are processed unless --no-escape,
BOS is added only if the vocabulary asks for it, and special tokens are parsed unless
--no-parse-special. Only the vocabulary is read from the file (the worker flags --workers/--split/--ray-address
are accepted, as by every command that takes -m, and start nothing).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import GGMLError
from .cli_common import Parser
from .cli_common import UsageError
from .cli_common import add_worker_flags
from .cli_common import worker_kwargs
from .gguf_file import GGUFFile
from .model_path import resolve_model_path
from .tokenizer import Tokenizer

_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'",
            ord('"'): b'"', ord("\\"): b"\\"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _strtol_hex2(two: bytes):
    """The value C's strtol(two, &end, 16) gives when it consumes both characters (it
    also takes a leading space or sign), else None."""
    a, b = two
    if b not in _HEX:
        return None
    if a in _HEX:
        return int(two, 16)
    if a in b" \t\n\v\f\r+":
        return int(two[1:], 16)
    return -int(two[1:], 16) if a == ord("-") else None


def process_escapes(data: bytes) -> bytes:
    """llama.cpp's string_process_escapes: \\n \\r \\t \\' \\" \\\\ and \\xNN (two hex
    digits, not at the very end); any other backslash pair is kept as written."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        c = data[i]
        if c != 0x5C or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = data[i + 1]
        if e in _ESCAPES:
            out += _ESCAPES[e]
            i += 2
        elif e == ord("x") and i + 3 < n and (v := _strtol_hex2(data[i + 2:i + 4])) is not None:
            out.append(v & 0xFF)
            i += 4
        else:
            out += data[i:i + 2]
            i += 2
    return bytes(out)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="pyggml tokenize", description="Tokenize a prompt with a GGUF model's "
                "vocabulary and print the tokens (llama.cpp's llama-tokenize).")
    p.add_argument("-m", "--model", required=True,
                   help="GGUF file, or a known model name (smollm2-135m)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="text to tokenize")
    src.add_argument("-f", "--file", help="file whose contents to tokenize")
    src.add_argument("--stdin", action="store_true", help="read the text from standard input")
    p.add_argument("--ids", action="store_true", help="print only the ids, as [1, 2, 3]")
    p.add_argument("--no-parse-special", action="store_true",
                   help="do not parse special tokens (chat, tool, etc)")
    p.add_argument("--show-count", action="store_true",
                   help="print the total number of tokens")
    p.add_argument("--no-bos", action="store_true",
                   help="do not add a BOS token even if the model normally uses one")
    p.add_argument("--no-escape", action="store_true",
                   help="do not process escape sequences (\\n, \\t, \\xNN, ...)")
    # every command that takes -m takes the worker flags (so one set of model flags serves
    # them all); they are checked, but tokenizing reads only the vocabulary and computes
    # nothing, so no worker is started
    add_worker_flags(p)
    return p


def _read_text(a) -> bytes:
    if a.prompt is not None:
        return os.fsencode(a.prompt)
    if a.stdin:
        return sys.stdin.buffer.read()
    try:
        with open(a.file, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {a.file}: {e.strerror or e}") from None


def format_tokens(tok: Tokenizer, ids: list, as_ids: bool, show_count: bool) -> bytes:
    """llama-tokenize's stdout for `ids`. A piece prints up to its first NUL byte, as
    printf("%s") does there."""
    if as_ids:
        out = [b"[" + ", ".join(map(str, ids)).encode() + b"]\n"]
    else:
        out = [b"%6d -> '" % t + tok.token_to_piece(t, special=True).split(b"\0", 1)[0] + b"'\n"
               for t in ids]
    if show_count:
        out.append(b"Total number of tokens: %d\n" % len(ids))
    return b"".join(out)


def main(argv=None) -> int:
    try:
        a = _parser().parse_args(argv)
        worker_kwargs(a)
        text = _read_text(a)
        tok = Tokenizer.from_gguf(GGUFFile(resolve_model_path(a.model)))
    except UsageError as e:
        print(f"pyggml tokenize: error: {e}", file=sys.stderr)
        return 2
    except GGMLError as e:
        print(f"pyggml tokenize: {e}", file=sys.stderr)
        return 2
    if not a.no_escape:
        text = process_escapes(text)
    # llama-tokenize passes add_bos as add_special: --no-bos also drops an EOS
    ids = tok.tokenize(text, add_special=tok.add_bos and not a.no_bos,
                       parse_special=not a.no_parse_special)
    sys.stdout.buffer.write(format_tokens(tok, ids, a.ids, a.show_count))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
