"""`pyggml chat`: an interactive conversation through the model's chat template (llama.cpp's
llama-cli in conversation mode). Each line read is a user turn; the reply streams back. The
cache is kept across turns: only the new turn is evaluated (with --mixed-kv-cache, older
turns go cold). `/exit` or end of input ends it; the perf lines follow on stderr.

    pyggml chat -m MODEL [-sys TEXT] [-n N] [-c N] [--temp T] ... [--mixed-kv-cache]
"""
from __future__ import annotations

import sys
import time

from . import cli_common as C
from .chat import chat_prompt
from .completion import Timings
from .completion import stream_text
from .sampling import Sampler


def _parser() -> C.Parser:
    p = C.Parser(prog="pyggml chat", description="Chat with a GGUF model through its chat "
                 "template (llama.cpp's llama-cli conversation mode).")
    p.add_argument("-sys", "--system-prompt", default=None, help="system prompt")
    C.add_model_flags(p)
    C.add_sampling_flags(p)
    p.add_argument("--no-perf", action="store_true", help="no timing and memory lines")
    return p


def converse(llama, args, lines, out, timings: Timings) -> int:
    """Run the conversation over an iterator of input lines; returns the number of turns."""
    messages = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    sampler = Sampler(C.sampling_params(args))
    n = args.n_predict if args.n_predict >= 0 else None
    turns = 0
    while True:
        out.write("\n> ")
        out.flush()
        line = next(lines, None)
        if line is None:
            break
        line = line.rstrip("\r\n")
        if line.strip() == "/exit":
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        tokens, stops = chat_prompt(llama, messages)
        reply = ""
        for piece in stream_text(llama, tokens, sampler, n, stops, timings):
            reply += piece.text
            out.write(piece.text)
            out.flush()
        messages.append({"role": "assistant", "content": reply})
        turns += 1
    out.write("\n")
    return turns


def _chat(args) -> int:
    t0 = time.perf_counter()
    C.sampling_params(args)                  # bad sampling values fail before the load
    llama, t_load = C.open_llama(args)
    timings = Timings()
    try:
        converse(llama, args, iter(sys.stdin.readline, ""), sys.stdout, timings)
    finally:
        C.print_perf(args, llama, t_load, timings, t0)
    C.finish_compiling(llama, args)
    return 0


def main(argv=None) -> int:
    return C.run_main("pyggml chat", _parser(), _chat, argv)


if __name__ == "__main__":
    raise SystemExit(main())
