"""The `pyggml` command. Each subcommand lives in its own module; this file only dispatches."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv) -> int, one-line help)
COMMANDS = {
    "demo": ("pyggml.models.demo", "SmolLM2 (or random weights) decoding: mixed F16/Q4_0 KV cache vs F16"),
    "run": ("pyggml.llm.run_cli", "generate text after a prompt with a GGUF model (llama-completion)"),
    "chat": ("pyggml.llm.chat_cli", "chat with a GGUF model through its chat template"),
    "test-backend-ops": ("pyggml.testing.cli", "ggml's op test-suite: test | perf | grad | support"),
    "fuzz": ("pyggml.testing.fuzz_cli", "random graphs of registered ops: CPU backend vs the reference"),
    "dump-graph": ("pyggml.viz.cli", "write a graph as DOT/SVG/PNG with overlays"),
    "perplexity": ("pyggml.llm.perplexity_cli", "perplexity of a model on a text, as llama-perplexity"),
    "bench": ("pyggml.llm.bench", "prompt and decode speed of a model, as llama-bench"),
    "bench-ops": ("pyggml.bench", "kernel benchmarks against real ggml (libggml-python) and NumPy"),
    "tokenize": ("pyggml.llm.tokenize_cli", "tokenize a prompt with a GGUF model's vocabulary"),
    "quantize": ("pyggml.quantize_cli", "quantize a GGUF model (llama-quantize's types and mixes)"),
    "warmup": ("pyggml.warmup_cli",
               "compile the Numba kernels into the disk cache, in parallel processes"),
}


def _usage() -> str:
    lines = ["usage: pyggml <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`pyggml <command> -h` for a command's options; `--debug` shows tracebacks."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv            # global flag, anywhere: show tracebacks
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print(f"pyggml {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pyggml: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    mod = importlib.import_module(COMMANDS[name][0])
    try:
        return int(mod.main(rest) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"pyggml {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        return _report(name, e)


def _report(name: str, e: Exception) -> int:
    """One line on stderr: a user error (bad input, flag value or file) exits 2; anything
    else is pyggml's bug, exit 1. `--debug` shows the traceback instead."""
    from .errors import GGMLError
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (GGMLError, OSError)):
        print(f"pyggml {name}: {msg}", file=sys.stderr)
        return 2
    print(f"pyggml {name}: internal error: {type(e).__name__}: {msg} "
          f"(--debug shows the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
