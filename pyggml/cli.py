"""The `pyggml` command. Each subcommand lives in its own module; this file only dispatches."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv) -> int, one-line help)
COMMANDS = {
    "demo": ("pyggml.models.demo", "decode a small transformer through the mixed F16/Q4_0 KV cache"),
    "test-backend-ops": ("pyggml.testing.cli", "ggml's op test-suite: test | perf | grad | support"),
    "dump-graph": ("pyggml.viz.cli", "write a graph as DOT/SVG/PNG with overlays"),
    "bench": ("pyggml.bench", "benchmarks against real ggml (libggml-python) and NumPy"),
    "quantize": ("pyggml.quantize_cli", "quantize a GGUF model (llama-quantize's types and mixes)"),
    "warmup": ("pyggml.backends.numba_cpu.warmup",
               "compile the Numba kernels into the disk cache, in parallel processes"),
}


def _usage() -> str:
    lines = ["usage: pyggml <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`pyggml <command> -h` for a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    return int(mod.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
