"""`pyggml perplexity`: llama-perplexity's flags and output, on pyggml's engine.

    pyggml perplexity -m MODEL -f FILE [-c 512] [-b 2048] [--chunks N] [-t N]
                      [-ctk T -ctv T] [--mixed-kv-cache --kv-hot N] [--kv-sweep [--plot PNG]]

Like llama-perplexity, the progress and the final estimate go to stderr and the running
`[1]x,[2]y,...` line to stdout.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

from ..compute import BACKENDS
from ..types import TRAITS
from . import kv_sweep
from .cli_common import add_worker_flags
from .cli_common import run_main
from .cli_common import worker_kwargs
from .perplexity import model_bos
from .perplexity import perplexity


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyggml perplexity",
                                description="perplexity of a model on a text, as llama-perplexity")
    p.add_argument("-m", "--model", default="smollm2-135m", help="GGUF file or known model name")
    p.add_argument("-f", "--file", required=True, help="text file to score")
    p.add_argument("-c", "--ctx-size", type=int, default=512, dest="n_ctx")
    p.add_argument("-b", "--batch-size", type=int, default=2048, dest="n_batch")
    p.add_argument("--chunks", type=int, default=-1, help="max chunks to score (-1: all)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-ctk", "--cache-type-k", default=None, dest="type_k",
                   help="KV cache type (default f16; the mixed cache's cold store: q4_0)")
    p.add_argument("-ctv", "--cache-type-v", default=None, dest="type_v")
    p.add_argument("--mixed-kv-cache", action="store_true",
                   help="hot F16 window + cold store in -ctk/-ctv's type")
    p.add_argument("--kv-hot", type=int, default=256, help="hot tokens of the mixed cache")
    p.add_argument("--kv-sweep", action="store_true",
                   help="run every cache (F16, Q8_0, Q4_0, mixed windows) and print one table")
    p.add_argument("--plot", default="kv-sweep.png", help="PNG written by --kv-sweep")
    p.add_argument("--backend", default="cpu", choices=sorted(BACKENDS))
    add_worker_flags(p)
    return p


def _make_llm(args, path: str, **cache):
    """A Llama for the run: its cache from the flags, or as `cache` says (the sweep)."""
    from .llama import Llama
    kw = cache or dict(type_k=args.type_k, type_v=args.type_v)
    if args.mixed_kv_cache and not cache:
        kw.update(kv_cache="mixed", kv_hot=args.kv_hot)
    return Llama(path, n_ctx=args.n_ctx, n_batch=min(args.n_batch, args.n_ctx),
                 n_threads=args.threads, logits_all=True, backend=args.backend,
                 verbose=not cache, **kw, **worker_kwargs(args))


def _log(msg: str, end: str = "\n") -> None:
    print(msg, file=sys.stderr, end=end, flush=True)


def _progress(res, seconds: float) -> None:
    """llama-perplexity's ETA after the first chunk, and the running line on stdout."""
    if len(res.running) == 1:
        total = int(seconds * res.n_chunk)
        hours = f"{total // 3600} hours " if total >= 3600 else ""
        _log(f"perplexity: {seconds:.2f} seconds per pass - ETA {hours}{(total % 3600) / 60:.2f} minutes")
    print(f"[{len(res.running)}]{res.running[-1]:.4f},", end="", flush=True)


def main(argv=None) -> int:
    return run_main("pyggml perplexity", _parser(), _run, argv, check=lambda args: None)


def _run(args) -> int:
    from .model_path import resolve_model_path
    worker_kwargs(args)                      # bad flags before any file is read
    path = resolve_model_path(args.model)
    with open(args.file, "rb") as fh:
        text = fh.read()
    llm = _make_llm(args, path)
    _log("perplexity: tokenizing the input ..")
    t0 = time.perf_counter()
    tokens = llm.tokenize(text, add_bos=True, special=False)
    _log(f"perplexity: tokenization took {1e3 * (time.perf_counter() - t0):g} ms")
    bos = model_bos(llm)
    run = functools.partial(perplexity, tokens=tokens, n_ctx=args.n_ctx, n_batch=args.n_batch,
                            n_chunks=args.chunks, bos=bos)
    if args.kv_sweep:
        return _sweep(args, path, run, len(tokens))
    _log(f"perplexity: KV cache {_describe_cache(llm, args)}")
    n_chunk = min(len(tokens) // args.n_ctx, args.chunks) if args.chunks >= 0 else len(tokens) // args.n_ctx
    _log(f"perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={args.n_ctx}, "
         f"batch_size={min(args.n_batch, args.n_ctx)}, n_seq=1")
    res = run(llm, on_chunk=_progress)
    print(flush=True)
    _log(res.final_line())
    return 0


def _describe_cache(llm, args) -> str:
    mib = llm.kv_cache_bytes()["total"] / 2**20
    kind = TRAITS[llm.type_k].tname
    if args.mixed_kv_cache:
        return f"mixed: {args.kv_hot} hot f16 + cold {kind}, {mib:.2f} MiB at n_ctx {args.n_ctx}"
    return f"{kind}, {mib:.2f} MiB at n_ctx {args.n_ctx}"


def _sweep_progress(res, seconds: float) -> None:
    _log(f"[{len(res.running)}]{res.running[-1]:.4f},", end="\n" if len(res.running) == res.n_chunk else "")


def _sweep(args, path: str, run, n_tokens: int) -> int:
    if not kv_sweep.have_matplotlib():
        _log("pyggml perplexity: --kv-sweep draws its plot with matplotlib, which is not "
             "installed (pip install 'pyggml[plot]'); printing the table only")
    rows = kv_sweep.run_sweep(functools.partial(_make_llm, args, path),
                              functools.partial(run, on_chunk=_sweep_progress))
    n_chunk = rows and (n_tokens // args.n_ctx if args.chunks < 0 else
                        min(args.chunks, n_tokens // args.n_ctx))
    title = (f"{os.path.basename(path)}, {os.path.basename(args.file)}: n_ctx {args.n_ctx}, "
             f"batch {min(args.n_batch, args.n_ctx)}, {n_chunk} chunks")
    print(f"KV cache sweep: {title}\n")
    print(kv_sweep.format_table(rows), flush=True)
    if kv_sweep.have_matplotlib():
        kv_sweep.plot(rows, args.plot, title)
        _log(f"kv-sweep: plot written to {args.plot}")
    return 0
