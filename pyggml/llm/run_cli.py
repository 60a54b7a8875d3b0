"""`pyggml run`: llama.cpp's llama-completion. Generates after a prompt, streaming the text to
stdout, then prints llama.cpp's perf lines and the KV cache's memory on stderr.

    pyggml run -m MODEL (-p PROMPT | -f FILE) [-n N] [-c N] [-b N] [-t N] [-s SEED]
               [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] ...
               [-ctk TYPE] [-ctv TYPE] [--mixed-kv-cache [--kv-hot N]] [--no-display-prompt]
"""
from __future__ import annotations

import sys
import time

from ..errors import PromptError
from . import cli_common as C
from .completion import Timings
from .completion import prompt_tokens
from .completion import stream_text
from .sampling import Sampler


def _parser() -> C.Parser:
    p = C.Parser(prog="pyggml run", description="Generate text after a prompt with a GGUF "
                 "model (llama.cpp's llama-completion).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="prompt to start generation with")
    src.add_argument("-f", "--file", help="a file containing the prompt")
    C.add_model_flags(p)
    C.add_sampling_flags(p)
    p.add_argument("-e", "--escape", dest="escape", action="store_true", default=True,
                   help="process escape sequences (\\n, \\t, \\xNN...) in -p (default)")
    p.add_argument("--no-escape", dest="escape", action="store_false")
    p.add_argument("--display-prompt", dest="display_prompt", action="store_true", default=True)
    p.add_argument("--no-display-prompt", dest="display_prompt", action="store_false",
                   help="do not print the prompt before the generated text")
    p.add_argument("--no-perf", action="store_true", help="no timing and memory lines")
    return p


def read_prompt(args) -> str:
    if args.file is not None:
        with open(args.file, "rb") as f:
            data = f.read()
    else:
        data = args.prompt.encode("utf-8", errors="surrogateescape")
        if args.escape:
            from .tokenize_cli import process_escapes
            data = process_escapes(data)
    text = data.decode("utf-8", errors="replace")
    if not text:
        raise PromptError("empty prompt: give some text with -p or -f")
    return text


def generate_to(out, llama, text: str, args, timings: Timings) -> str:
    """Stream the completion of `text` to `out`; returns the finish reason."""
    tokens = prompt_tokens(llama, text)
    if args.display_prompt:
        out.write(text)
        out.flush()
    n = args.n_predict if args.n_predict >= 0 else None
    finish = "length"
    if n == 0:
        return finish
    for piece in stream_text(llama, tokens, Sampler(C.sampling_params(args)), n,
                             timings=timings):
        if piece.text:
            out.write(piece.text)
            out.flush()
        finish = piece.finish_reason or finish
    return finish


def _run(args) -> int:
    t0 = time.perf_counter()
    C.sampling_params(args)                  # bad sampling values fail before the load
    text = read_prompt(args)
    llama, t_load = C.open_llama(args)
    try:
        timings = Timings()
        generate_to(sys.stdout, llama, text, args, timings)
        sys.stdout.write("\n")
        sys.stdout.flush()
        C.print_perf(args, llama, t_load, timings, t0)
        C.finish_compiling(llama, args)
    finally:
        llama.close()                        # Ray workers (--workers) stop here
    return 0


def main(argv=None) -> int:
    return C.run_main("pyggml run", _parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
