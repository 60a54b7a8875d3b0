"""`pyggml bench`: llama-bench on pyggml's engine: same tests, flags, columns and fields.

    pyggml bench [-m smollm2-135m] [-p 512] [-n 128] [-t 2] [-r 5] [-b 2048]
                 [-ctk f16 -ctv f16] [--mixed-kv-cache --kv-hot 256] [-o md|csv|json]
                 [--workers N --split layer|context [--ray-address ADDR]]

Tests are llama-bench's: `ppN` evaluates one prompt of N random tokens (in batches of -b),
`tgN` N single-token decodes; each starts from an empty cache, after one warm-up run, and
is repeated -r times; t/s = tokens / seconds per repetition, reported as mean ± standard
deviation. Every flag takes a comma list (all combinations run, as in llama-bench).
The csv/json fields are llama-bench's, in its order; knobs pyggml does not have (GPU
layers, cpu mask, poll...) carry llama-bench's defaults so the files line up, and
`kv_hot` joins them after type_v when the mixed cache is benchmarked. With --workers N (Ray
workers, pyggml.distributed: llama-bench's --rpc) the backend reads `cpu,ray`, and
`workers` and `worker_split` join the fields (and the markdown columns) after type_v/kv_hot.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from dataclasses import field

import numpy as np

from ..compute import BACKENDS
from ..errors import GGMLError
from .cli_common import add_worker_flags
from .cli_common import run_main
from .cli_common import worker_kwargs
from .gguf_file import value_str
from .model_info import ModelInfo

# llama-bench's csv/json fields, in its order
FIELDS = ["build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename",
          "model_type", "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads",
          "cpu_mask", "cpu_strict", "poll", "type_k", "type_v", "n_gpu_layers", "n_cpu_moe",
          "split_mode", "main_gpu", "no_kv_offload", "flash_attn", "devices", "tensor_split",
          "tensor_buft_overrides", "load_mode", "embeddings", "no_op_offload", "no_host",
          "fit_target", "fit_min_ctx", "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns",
          "stddev_ns", "avg_ts", "stddev_ts"]
# llama-bench's values for knobs pyggml does not have
FIXED = {"gpu_info": "", "cpu_mask": "0x0", "cpu_strict": False, "poll": 50, "n_gpu_layers": 0,
         "n_cpu_moe": 0, "split_mode": "layer", "main_gpu": 0, "no_kv_offload": False,
         "flash_attn": 1, "devices": "auto", "tensor_split": "0.00",
         "tensor_buft_overrides": "none", "load_mode": "mmap", "embeddings": False,
         "no_op_offload": 0, "no_host": False, "fit_target": 0, "fit_min_ctx": 0, "n_depth": 0}
# markdown: field -> (shown name, width; negative = left-aligned), llama-bench's
MD_COLUMNS = {"model": ("model", -30), "size": ("size", 10), "params": ("params", 10),
              "backend": ("backend", -10), "n_threads": ("threads", 7),
              "n_batch": ("n_batch", 7), "type_k": ("type_k", 6), "type_v": ("type_v", 6),
              "kv_hot": ("kv_hot", 10), "workers": ("workers", 7),
              "worker_split": ("split", -7), "test": ("test", 15), "t/s": ("t/s", 20)}
DEFAULTS = {"n_prompt": [512], "n_gen": [128], "n_threads": [2], "n_batch": [2048],
            "type_k": ["f16"], "type_v": ["f16"]}


@dataclass
class BenchTest:
    model: ModelInfo
    n_prompt: int
    n_gen: int
    n_batch: int
    n_threads: int
    type_k: str
    type_v: str
    kv_hot: int | None            # None: the plain cache
    backend: str
    workers: int = 0              # Ray workers (0: this process)
    worker_split: str = ""        # "layer" | "context" with workers
    samples_ns: list = field(default_factory=list)
    test_time: str = ""

    @property
    def label(self) -> str:
        return f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"

    def samples_ts(self) -> list:
        n = self.n_prompt + self.n_gen
        return [1e9 * n / ns for ns in self.samples_ns]

    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts())

    def stdev_ts(self) -> float:
        ts = self.samples_ts()
        return statistics.stdev(ts) if len(ts) > 1 else 0.0

    def values(self) -> dict:
        ns = self.samples_ns
        v = dict(FIXED)
        v.update(build_commit=_build_commit(), build_number=0, cpu_info=_cpu_info(),
                 backends=self.backends, model_filename=self.model.path,
                 model_type=self.model.desc, model_size=self.model.size,
                 model_n_params=self.model.n_params, n_batch=self.n_batch,
                 n_ubatch=self.n_batch, n_threads=self.n_threads, type_k=self.type_k,
                 type_v=self.type_v, n_prompt=self.n_prompt, n_gen=self.n_gen,
                 test_time=self.test_time, avg_ns=int(statistics.fmean(ns)),
                 stddev_ns=int(statistics.stdev(ns)) if len(ns) > 1 else 0,
                 avg_ts=self.avg_ts(), stddev_ts=self.stdev_ts())
        if self.kv_hot is not None:
            v["kv_hot"] = self.kv_hot
        if self.workers:
            v.update(workers=self.workers, worker_split=self.worker_split)
        return v

    @property
    def backends(self) -> str:
        """llama-bench's backend names: the driver's, plus Ray's with workers (its "CPU,RPC")."""
        return f"{self.backend},ray" if self.workers else self.backend


def fields(tests) -> list:
    """llama-bench's fields, plus kv_hot after type_v when a test used the mixed cache, and
    workers, worker_split after those when a test ran on Ray workers."""
    i = FIELDS.index("type_v") + 1
    extra = [f for f, used in (("kv_hot", any(t.kv_hot is not None for t in tests)),
                               ("workers", any(t.workers for t in tests)),
                               ("worker_split", any(t.workers for t in tests))) if used]
    return FIELDS[:i] + extra + FIELDS[i:]


# --- running -------------------------------------------------------------------------------------
def run_test(llm, t: BenchTest, reps: int, warmup: bool, n_vocab: int, bos, seed: int = 0) -> None:
    """llama-bench's loop: a warm-up run, then `reps` timed runs, each from an empty cache."""
    rng = np.random.default_rng(seed)

    def prompt(n):
        toks = rng.integers(0, n_vocab, n).tolist()
        if bos is not None:
            toks[0] = bos
        for i in range(0, n, t.n_batch):
            llm.eval(toks[i:i + t.n_batch])

    def gen(n):
        # llama-bench draws each next token with std::rand() (nanoseconds) in its timed
        # loop; a NumPy draw costs microseconds, so the tokens are drawn before the clock
        toks = [bos if bos is not None else int(rng.integers(0, n_vocab))]
        toks += rng.integers(0, n_vocab, n - 1).tolist()
        return toks

    def run_gen(toks):
        for tok in toks:
            llm.eval([tok])

    if warmup:
        llm.reset()
        if t.n_prompt:
            prompt(t.n_prompt)
        if t.n_gen:
            run_gen(gen(1))
    t.test_time = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for _ in range(reps):
        llm.reset()
        toks = gen(t.n_gen) if t.n_gen else []
        t0 = time.perf_counter_ns()
        if t.n_prompt:
            prompt(t.n_prompt)
        run_gen(toks)
        t.samples_ns.append(time.perf_counter_ns() - t0)


# --- printers (llama-bench's formats) ----------------------------------------------------------------
def _md_value(t: BenchTest, f: str) -> str:
    m = t.model
    if f == "model":
        return m.desc
    if f == "size":
        return f"{m.size / 2**20:.2f} MiB" if m.size < 2**30 else f"{m.size / 2**30:.2f} GiB"
    if f == "params":
        return f"{m.n_params / 1e6:.2f} M" if m.n_params < 1e9 else f"{m.n_params / 1e9:.2f} B"
    if f == "backend":
        return t.backends
    if f == "test":
        return t.label
    if f == "t/s":
        return f"{t.avg_ts():.2f} ± {t.stdev_ts():.2f}"
    return str(getattr(t, f))


def md_columns(tests, args_seen: dict) -> list:
    """Columns llama-bench shows: the fixed ones, plus each setting that differs from its
    default or takes several values."""
    cols = ["model", "size", "params", "backend", "n_threads"]
    for f in ("n_batch", "type_k", "type_v"):
        if args_seen[f] != DEFAULTS[f]:
            cols.append(f)
    if any(t.kv_hot is not None for t in tests):
        cols.append("kv_hot")
    if any(t.workers for t in tests):
        cols += ["workers", "worker_split"]
    return cols + ["test", "t/s"]


def md_header(cols) -> str:
    head = "|" + "".join(f" {MD_COLUMNS[c][0]:{'<' if MD_COLUMNS[c][1] < 0 else '>'}{abs(MD_COLUMNS[c][1])}} |"
                         for c in cols)
    rule = "|" + "".join(f" {'-' * (abs(MD_COLUMNS[c][1]) - 1)}{':' if MD_COLUMNS[c][1] > 0 else '-'} |"
                         for c in cols)
    return head + "\n" + rule


def md_row(t: BenchTest, cols) -> str:
    out = "|"
    for c in cols:
        w = MD_COLUMNS[c][1]
        out += f" {_md_value(t, c):{'<' if w < 0 else '>'}{abs(w)}} |"
    return out


def csv_row(t: BenchTest, names) -> str:
    v = t.values()
    return ",".join('"' + _plain(v[f]).replace('"', '""') + '"' for f in names)


def _plain(x) -> str:
    return value_str(x, "1", "0")             # llama-bench's csv/json: bools 1/0, floats %f


def json_object(t: BenchTest, names) -> str:
    v = t.values()
    lines = []
    for f in names:
        x = v[f]
        s = (("true" if x else "false") if isinstance(x, bool) else f"{x:.6f}"
             if isinstance(x, float) else json.dumps(x) if isinstance(x, str) else str(x))
        lines.append(f'    "{f}": {s},')
    lines.append(f'    "samples_ns": [ {", ".join(str(n) for n in t.samples_ns)} ],')
    lines.append(f'    "samples_ts": [ {", ".join(f"{x:g}" for x in t.samples_ts())} ]')
    return "  {\n" + "\n".join(lines) + "\n  }"


@functools.lru_cache(None)
def _build_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], check=False,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(None)
def _cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# --- command line --------------------------------------------------------------------------------
def _list(kind):
    def parse(s):
        try:
            return [kind(x) for x in s.split(",") if x != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {kind.__name__}, got {s!r}")
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyggml bench",
                                description="llama-bench on pyggml: prompt (ppN) and decode (tgN) speed")
    p.add_argument("-m", "--model", type=_list(str), action="append",
                   help="GGUF file or known model name (default: smollm2-135m)")
    p.add_argument("-p", "--n-prompt", type=_list(int), action="append", dest="n_prompt")
    p.add_argument("-n", "--n-gen", type=_list(int), action="append", dest="n_gen")
    p.add_argument("-t", "--threads", type=_list(int), action="append", dest="n_threads")
    p.add_argument("-b", "--batch-size", type=_list(int), action="append", dest="n_batch")
    p.add_argument("-ctk", "--cache-type-k", type=_list(str), action="append", dest="type_k")
    p.add_argument("-ctv", "--cache-type-v", type=_list(str), action="append", dest="type_v")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-o", "--output", choices=("md", "csv", "json"), default="md")
    p.add_argument("--mixed-kv-cache", action="store_true",
                   help="hot F16 window + cold store in -ctk/-ctv's type")
    p.add_argument("--kv-hot", type=_list(int), action="append", dest="kv_hot")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--backend", default="cpu", choices=sorted(BACKENDS))
    add_worker_flags(p)
    return p


def _flat(v, default):
    return [x for part in v for x in part] if v else list(default)


def main(argv=None) -> int:
    return run_main("pyggml bench", _parser(), _run, argv, check=lambda args: None)


def _run(args) -> int:
    from .model_path import resolve_model_path
    seen = {k: _flat(getattr(args, k), DEFAULTS[k]) for k in DEFAULTS}
    if args.mixed_kv_cache:        # the cold store's type: q4_0 unless -ctk/-ctv say
        for k in ("type_k", "type_v"):
            seen[k] = _flat(getattr(args, k), ["q4_0"])
    models = _flat(args.model, ["smollm2-135m"])
    hots = _flat(args.kv_hot, [256]) if args.mixed_kv_cache else [None]
    wk = worker_kwargs(args)
    if args.repetitions <= 0:
        raise GGMLError(f"-r must be > 0, got {args.repetitions}")
    for k in ("n_prompt", "n_gen", "n_threads", "n_batch"):
        if any(x < 0 or (x == 0 and k in ("n_threads", "n_batch")) for x in seen[k]):
            raise GGMLError(f"{k} values must be > 0 (>= 0 for -p/-n), got {seen[k]}")
    tests = []
    for m in models:
        info = ModelInfo.read(resolve_model_path(m))
        for nt in seen["n_threads"]:
            for nb in seen["n_batch"]:
                for tk in seen["type_k"]:
                    for tv in seen["type_v"]:
                        for hot in hots:
                            base = dict(model=info, n_batch=nb, n_threads=nt, type_k=tk,
                                        type_v=tv, kv_hot=hot, backend=args.backend,
                                        workers=wk.get("workers", 0),
                                        worker_split=wk.get("split", ""))
                            tests += [BenchTest(n_prompt=n, n_gen=0, **base)
                                      for n in seen["n_prompt"] if n > 0]
                            tests += [BenchTest(n_prompt=0, n_gen=n, **base)
                                      for n in seen["n_gen"] if n > 0]
    names, cols = fields(tests), md_columns(tests, seen)
    if args.output == "md":
        print(md_header(cols), flush=True)
    elif args.output == "csv":
        print(",".join(names), flush=True)
    elif args.output == "json":
        print("[", flush=True)
    for i, t in enumerate(tests):
        with _make_llm(t, args.ray_address) as llm:       # closing stops its Ray workers
            run_test(llm, t, args.repetitions, not args.no_warmup, t.model.n_vocab, t.model.bos)
        if args.output == "md":
            print(md_row(t, cols), flush=True)
        elif args.output == "csv":
            print(csv_row(t, names), flush=True)
        else:
            print(("," if i else "") + ("\n" if i else "") + json_object(t, names), end="", flush=True)
    if args.output == "md":
        print(f"\nbuild: {_build_commit()} (0)")
    elif args.output == "json":
        print("\n]")
    return 0


def _make_llm(t: BenchTest, ray_address=None):
    from .llama import Llama
    kw = dict(type_k=t.type_k, type_v=t.type_v)
    if t.kv_hot is not None:
        kw.update(kv_cache="mixed", kv_hot=t.kv_hot)
    if t.workers:
        kw.update(workers=t.workers, split=t.worker_split, ray_address=ray_address)
    return Llama(t.model.path, n_ctx=t.n_prompt + t.n_gen, n_batch=t.n_batch,
                 n_threads=t.n_threads, logits_all=False, backend=t.backend, verbose=False,
                 **kw)
