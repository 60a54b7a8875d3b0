"""What `pyggml run` and `pyggml chat` share: llama.cpp's flags for the model, the context,
the KV cache and the sampler; opening the model; llama.cpp-style perf lines; and the rule
that every bad input is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time

from ..errors import GGMLError
from ..types import as_type
from .sampling import DEFAULTS
from .sampling import SamplingParams


class UsageError(Exception):
    """A bad flag or flag value (printed as one line, exit 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):            # one line and exit 2, not argparse's usage block
        raise UsageError(message)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True,
                   help="GGUF file, or a known model name (smollm2-135m)")
    p.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="size of the prompt context (default: 0, 0 = loaded from model)")
    p.add_argument("-b", "--batch-size", type=int, default=2048,
                   help="logical maximum batch size (default: 2048)")
    p.add_argument("-t", "--threads", type=int, default=-1,
                   help="number of threads to use during generation (default: -1 = all cores)")
    p.add_argument("-ctk", "--cache-type-k", default=None,
                   help="KV cache data type for K (default: f16; the cold type with "
                        "--mixed-kv-cache: q4_0)")
    p.add_argument("-ctv", "--cache-type-v", default=None, help="KV cache data type for V "
                   "(default: as -ctk)")
    p.add_argument("--mixed-kv-cache", action="store_true",
                   help="newest tokens hot in F16, older ones cold in -ctk/-ctv")
    p.add_argument("--kv-hot", type=int, default=None,
                   help="tokens kept hot by --mixed-kv-cache (default: the loader's)")
    p.add_argument("--backend", default="numba", choices=("numba", "reference"))
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the warm-up run (compiles kernels before anything is timed)")
    p.add_argument("--no-tiered", dest="tiered", action="store_false", default=None,
                   help="compile cold Numba kernels before running instead of starting on the "
                        "NumPy fast reference while they compile (also PYGGML_TIERED=0)")
    add_wait_compile_flag(p)
    add_worker_flags(p)


def add_wait_compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait-compile", action="store_true",
                   help="tiered: at exit, wait for the kernels still compiling instead of "
                        "leaving them to a detached background compiler (also "
                        "PYGGML_DETACH_COMPILE=0)")


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """Ray workers (pyggml.distributed; ggml's --rpc, on Ray)."""
    p.add_argument("--workers", type=int, default=0,
                   help="run the model on N Ray workers (default: 0 = in this process)")
    p.add_argument("--split", default="layer", choices=("layer", "context"),
                   help="with --workers: layer ranges per worker, or the KV cache sharded "
                        "by token ranges (default: layer)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to use (default: start a local one, stopped at exit)")


def worker_kwargs(args) -> dict:
    """Llama's keyword arguments for the worker flags ({} without --workers)."""
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be >= 0")
    if not args.workers:
        if args.ray_address:
            raise UsageError("--ray-address needs --workers N")
        return {}
    return dict(workers=args.workers, split=args.split, ray_address=args.ray_address)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("-n", "--predict", "--n-predict", dest="n_predict", type=int, default=-1,
                   help="number of tokens to predict (default: -1 = until end of generation "
                        "or a full context)")
    p.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed (default: -1 = random)")
    p.add_argument("--temp", "--temperature", dest="temp", type=float, default=d["temperature"],
                   help=f"temperature (default: {d['temperature']:.2f}; <= 0: greedy)")
    p.add_argument("--top-k", type=int, default=d["top_k"], help="top-k sampling (0 = disabled)")
    p.add_argument("--top-p", type=float, default=d["top_p"], help="top-p (1.0 = disabled)")
    p.add_argument("--min-p", type=float, default=d["min_p"], help="min-p (0.0 = disabled)")
    p.add_argument("--typical", type=float, default=d["typical_p"],
                   help="locally typical sampling (1.0 = disabled)")
    p.add_argument("--repeat-last-n", type=int, default=d["repeat_last_n"],
                   help="last n tokens to consider for penalties (0 = disabled, -1 = ctx)")
    p.add_argument("--repeat-penalty", type=float, default=d["repeat_penalty"])
    p.add_argument("--presence-penalty", type=float, default=d["presence_penalty"])
    p.add_argument("--frequency-penalty", type=float, default=d["frequency_penalty"])


def check_flags(args) -> None:
    """Values argparse cannot reject by type; UsageError names the flag."""
    bad = [(flag, why) for flag, ok, why in (
        ("-c", args.ctx_size >= 0, "must be >= 0 (0 = the model's context)"),
        ("-b", args.batch_size >= 1, "must be >= 1"),
        ("-t", args.threads == -1 or args.threads >= 1, "must be >= 1 (or -1: all cores)"),
        ("-n", args.n_predict >= -2, "must be >= 0, or -1 (until end of generation)"),
        ("--kv-hot", args.kv_hot is None or args.kv_hot >= 0, "must be >= 0"),
        ("--kv-hot", args.kv_hot is None or args.mixed_kv_cache, "needs --mixed-kv-cache"),
    ) if not ok]
    if bad:
        flag, why = bad[0]
        raise UsageError(f"{flag} {getattr(args, _DEST[flag])}: {why}")
    worker_kwargs(args)
    for flag in ("cache_type_k", "cache_type_v"):
        try:
            _type_or_none(getattr(args, flag))
        except GGMLError as e:
            raise UsageError(f"--{flag.replace('_', '-')}: {e}") from None


def _type_or_none(name):
    return None if name is None else as_type(name)


_DEST = {"-c": "ctx_size", "-b": "batch_size", "-t": "threads", "-n": "n_predict",
         "--kv-hot": "kv_hot"}


def sampling_params(args) -> SamplingParams:
    return SamplingParams(
        temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        typical_p=args.typical, repeat_penalty=args.repeat_penalty,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        repeat_last_n=args.repeat_last_n, seed=None if args.seed < 0 else args.seed)


def open_llama(args):
    """The model with the flags' context, threads and cache; (llama, load seconds)."""
    from .llama import Llama
    from .model_path import resolve_model_path
    kv = dict(kv_cache="mixed", kv_hot=args.kv_hot) if args.mixed_kv_cache else {}
    if args.mixed_kv_cache and args.kv_hot is None:
        kv.pop("kv_hot")
    t0 = time.perf_counter()
    llama = Llama(resolve_model_path(args.model), n_ctx=args.ctx_size, n_batch=args.batch_size,
                  n_threads=None if args.threads < 0 else args.threads,
                  seed=args.seed, verbose=False, type_k=_type_or_none(args.cache_type_k),
                  type_v=_type_or_none(args.cache_type_v or args.cache_type_k),
                  backend=args.backend, tiered=_tiered(args), **kv, **worker_kwargs(args))
    if args.warmup:
        warm_up(llama)
    return llama, time.perf_counter() - t0


def _tiered(args) -> bool:
    """Tiered execution for a command: on unless --no-tiered / PYGGML_TIERED=0, and only for
    the Numba backend in this process."""
    from ..sched.tiered import tiered_enabled
    return args.backend == "numba" and not getattr(args, "workers", 0) and \
        tiered_enabled(getattr(args, "tiered", None))


def finish_compiling(llama, args=None) -> None:
    """Tiered: the background compile goes on after exit (or, --wait-compile, finishes
    first), so the next start finds a warm cache."""
    be = getattr(llama, "_backend", None)
    if hasattr(be, "warmup"):
        finish_tiered(be, getattr(args, "wait_compile", False))


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command waits for its background compile (exit 143)."""


def finish_tiered(be, wait_compile: bool = False, quiet: bool = False):
    """End a TieredSched's background compile at a command's exit, with one line on stderr:
    by default it is handed to a detached compiler and this returns at once (its Detached);
    with --wait-compile / PYGGML_DETACH_COMPILE=0 this waits for it, and a Ctrl-C or SIGTERM
    stops the workers and raises KeyboardInterrupt (Terminated), both signals ignored from
    then on (the command is exiting: a second one must not cut that short). quiet: no
    waiting line (the detached compiler's line stays: it names a process left running)."""
    from ..sched.tiered import detach_enabled
    if detach_enabled(wait_compile):
        d = be.close(detach=True)
        if d is not None:
            print(f"tiered: {d.n} kernels keep compiling in the background (pid {d.pid}, log "
                  f"{d.log}); the next start finds them in the cache", file=sys.stderr,
                  flush=True)
        return d
    try:
        if be.pending and not quiet:
            print(f"tiered: waiting for {be.pending} kernels still compiling (the next start "
                  "finds them in the cache; Ctrl-C stops waiting)", file=sys.stderr, flush=True)
        with _sigterm_interrupts():
            be.close(wait=True)
    except KeyboardInterrupt:
        _ignore_interrupts()                   # on the way out: the workers are stopped and
        be.close()                             # a second Ctrl-C/SIGTERM changes nothing
        raise
    return None


def _on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread meanwhile."""
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:                         # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _ignore_interrupts() -> None:
    """Ctrl-C and SIGTERM ignored from now on (the command is exiting)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(s, signal.SIG_IGN)
        except ValueError:                     # not the main thread
            pass


def warm_up(llama) -> None:
    """llama.cpp's warm-up: evaluate a batch and a single token, then forget them, so the
    kernels a prompt and a decode step need are compiled (or loaded) before timing."""
    tok = llama.token_bos()
    tok = tok if tok is not None and tok >= 0 else 0
    llama.eval([tok, tok])
    llama.eval([tok])
    llama.reset()


def perf_lines(t_load: float, tm, t_total: float) -> list:
    """llama.cpp's common_perf_print lines (same labels and columns)."""
    def ms(s):
        return s * 1e3

    def per(t, n):
        return (ms(t) / n if n else 0.0, n / t if t > 0 else 0.0)
    pp, ev = per(tm.t_prompt, tm.n_prompt), per(tm.t_eval, tm.n_eval)
    return [
        f"   sampling time = {ms(tm.t_sample):10.2f} ms / {tm.n_sample:5d} tokens",
        f"       load time = {ms(t_load):10.2f} ms",
        f"prompt eval time = {ms(tm.t_prompt):10.2f} ms / {tm.n_prompt:5d} tokens "
        f"({pp[0]:8.2f} ms per token, {pp[1]:8.2f} tokens per second)",
        f"       eval time = {ms(tm.t_eval):10.2f} ms / {tm.n_eval:5d} runs   "
        f"({ev[0]:8.2f} ms per token, {ev[1]:8.2f} tokens per second)",
        f"      total time = {ms(t_total):10.2f} ms / {tm.n_prompt + tm.n_eval:5d} tokens",
    ]


def kv_line(llama) -> str:
    """The cache's memory: hot/cold bytes against an all-F16 cache of the same context."""
    nb = llama.kv_cache_bytes()
    def mib(b):
        return b / 2**20
    line = (f"      kv cache = {mib(nb['total']):10.2f} MiB ({llama.n_ctx()} cells): "
            f"hot {mib(nb['hot']):.2f} MiB + cold {mib(nb['cold']):.2f} MiB; "
            f"all-F16 cache {mib(nb['f16']):.2f} MiB")
    if nb["total"] and nb["total"] != nb["f16"]:
        line += f" ({nb['f16'] / nb['total']:.2f}x smaller)"
    return line


def print_perf(args, llama, t_load: float, timings, t_start: float) -> None:
    """The perf lines and the cache's memory on stderr (unless --no-perf)."""
    if not args.no_perf:
        lines = perf_lines(t_load, timings, time.perf_counter() - t_start) + [kv_line(llama)]
        print("\n".join(lines), file=sys.stderr)


def run_main(prog: str, parser: Parser, body, argv, check=check_flags) -> int:
    """Parse, check, run body(args) -> int; a bad flag or any GGMLError is one line, exit 2."""
    try:
        args = parser.parse_args(argv)
        check(args)
        return body(args)
    except (UsageError, GGMLError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                  # a prompt file that cannot be read, a closed pipe
        print(f"{prog}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
