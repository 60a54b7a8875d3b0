"""`Llama`: a GGUF model behind llama-cpp-python's API (names, defaults, eval semantics).

    from pyggml.llm import Llama
    llm = Llama("model.gguf", n_ctx=2048)               # or Llama("smollm2-135m")
    ids = llm.tokenize(b"The capital of France is")
    llm.eval(ids)                                        # appends to the KV cache
    next_id = int(llm.logits().argmax())

Text generation (`__call__`, create_completion, create_chat_completion) lives in
pyggml.llm.completion / pyggml.llm.chat, on top of this class. pyggml's additions are
keyword-only: `kv_cache="f16" | "mixed"` (MixedKVCache: the newest `kv_hot` tokens in F16,
older ones in type_k/type_v, Q4_0 by default) and `backend`, a name of pyggml.compute.BACKENDS
("cpu": the fast threaded CPU backend, as ggml_backend_cpu_init; "reference": the NumPy spec).
`workers=N, split="layer" | "context"` (and `ray_address`, `worker_timeout`) run the model on
N Ray workers (pyggml.distributed): layer ranges, or token-range shards of the KV cache.
"""
from __future__ import annotations

import sys
import time
from typing import Optional
from typing import Sequence

import numpy as np

from ..errors import GGMLError
from ..errors import ShapeError
from ..types import FA_KV_TYPES
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type
from .gguf_file import GGUFFile
from .gguf_file import value_str
from .model_path import resolve_model_path

LLAMA_DEFAULT_SEED = 0xFFFFFFFF        # llama.cpp's "random seed"
KV_CACHES = ("f16", "mixed")


def _cache_type(t, default: GGMLType, what: str) -> GGMLType:
    if t is None:
        return default
    t = as_type(t)
    if t not in FA_KV_TYPES:
        raise GGMLError(f"Llama: {what} {TRAITS[t].tname} is not a KV cache type (use one of "
                        f"{', '.join(TRAITS[x].tname for x in FA_KV_TYPES)})")
    return t


def _worker_group(workers: int, split: str, address, timeout):
    """Ray workers for Llama(workers=N, split=...) (pyggml.distributed, extra [distributed])."""
    from ..distributed import WorkerGroup
    from ..distributed.backend import DEFAULT_TIMEOUT
    return WorkerGroup(workers, split, address, timeout or DEFAULT_TIMEOUT)


class Llama:
    """A llama-family GGUF model with a KV cache (llama-cpp-python's `Llama`)."""

    def __init__(self, model_path: str, *, n_ctx: int = 512, n_batch: int = 512,
                 n_threads: Optional[int] = None, seed: int = LLAMA_DEFAULT_SEED,
                 logits_all: bool = False, vocab_only: bool = False, type_k=None, type_v=None,
                 verbose: bool = True, kv_cache: str = "f16", kv_hot: int = 256,
                 backend: str = "cpu", workers: int = 0, split: str = "layer",
                 ray_address: Optional[str] = None, worker_timeout: Optional[float] = None,
                 tiered: bool = False):
        import pyggml as gg
        t0 = time.perf_counter()
        self.tiered = tiered        # cold Numba kernels compile in the background (sched/tiered.py)
        self.verbose = verbose
        self.model_path = resolve_model_path(model_path)
        if kv_cache not in KV_CACHES:
            raise GGMLError(f"Llama: kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
        from ..compute import BACKENDS
        if backend not in BACKENDS:
            raise GGMLError(f"Llama: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if n_ctx < 0 or n_batch <= 0:
            raise GGMLError(f"Llama: n_ctx must be >= 0 and n_batch > 0 (got {n_ctx}, {n_batch})")
        self._gguf = GGUFFile(self.model_path)
        self.metadata = {k: value_str(v) for k, v in self._gguf.metadata.items()
                         if not isinstance(v, (list, np.ndarray))}
        self._seed = seed
        self._logits_all = logits_all
        self._pending = None            # (logits view, its graph): see the scores property
        self.vocab_only = vocab_only
        self._tokenizer = None
        self._model = self._decoder = self._cache = self._workers = None
        self.n_threads = n_threads or gg.default_n_threads()
        self.n_tokens = 0
        if vocab_only:
            toks = self._gguf.metadata.get("tokenizer.ggml.tokens")
            self._n_vocab = len(toks) if toks is not None else 0
            self._n_ctx = n_ctx
            self.n_batch = n_batch
            self.input_ids = np.zeros(0, dtype=np.intc)
            self.scores = np.zeros((0, self._n_vocab), dtype=np.single)
            return
        from .loader import load_model
        try:
            self._model = load_model(self._gguf)
        except BaseException:
            self._gguf.close()             # a bad file leaves no map behind
            raise
        cfg = self._model.cfg
        self._n_vocab = cfg.n_vocab
        self._n_ctx = n_ctx or cfg.n_ctx_train            # 0: the model's training context
        self.n_batch = min(self._n_ctx, n_batch)
        default = GGMLType.F16 if kv_cache == "f16" else GGMLType.Q4_0
        self.type_k = _cache_type(type_k, default, "type_k")
        self.type_v = _cache_type(type_v, self.type_k, "type_v")
        if self.type_v != self.type_k:
            raise GGMLError(f"Llama: pyggml's caches keep K and V in one type; got type_k "
                            f"{TRAITS[self.type_k].tname} and type_v {TRAITS[self.type_v].tname}")
        self.kv_cache_kind, self.kv_hot = kv_cache, kv_hot
        if workers:
            self._workers = _worker_group(workers, split, ray_address, worker_timeout)
        try:
            self._backend = self._make_backend(backend)
            self._backend_name = backend
            self._new_cache()
        except BaseException:
            if self._workers is not None:      # no Ray workers left behind
                self._workers.shutdown()
            raise
        # llama-cpp-python: scores holds every position's logits with logits_all, else the
        # last evaluated position's (one row here, so scores[:n_tokens][-1] is it either way)
        self.input_ids = np.zeros(self._n_ctx, dtype=np.intc)
        self.scores = np.zeros((self._n_ctx if logits_all else 1, self._n_vocab), dtype=np.single)
        if verbose:
            print(f"llama_model_load: {self.model_path}: {cfg.arch}, {cfg.n_layer} layers, "
                  f"n_embd {cfg.n_embd}, n_vocab {cfg.n_vocab}; n_ctx {self._n_ctx}, "
                  f"{kv_cache} KV cache ({TRAITS[self.type_k].tname}); loaded in "
                  f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)

    # --- engine ----------------------------------------------------------------------------
    def _make_backend(self, name: str):
        """The chosen backend behind a scheduler that falls back to the reference backend."""
        import pyggml as gg
        if self._workers is not None:      # the driver's backend and the Ray workers
            return self._workers.scheduler(self._model, gg.backend_init_by_name(name, self.n_threads))
        if name == "reference":
            return gg.backend_reference_init()
        if self.tiered and name in ("cpu", "numba"):
            from ..sched.tiered import TieredSched
            return TieredSched(lambda: gg.backend_init_by_name(name, self.n_threads))
        return gg.sched_new([gg.backend_init_by_name(name, self.n_threads),
                             gg.backend_reference_init()])

    def _new_cache(self) -> None:
        from ..attention.kv_cache import F16KVCache
        from ..attention.kv_cache import MixedKVCache
        from ..models.llama import Decoder
        c = self._model.cfg
        mixed = self.kv_cache_kind == "mixed"
        # mixed: steps of at most max(kv_hot, 32) tokens keep the hot ring near kv_hot tokens
        self._ubatch = min(self.n_batch, max(self.kv_hot, 32)) if mixed else self.n_batch
        if self._workers is not None and self._workers.split == "context":
            self._cache = self._workers.make_cache(c.n_layer, c.n_head_kv, c.head_dim, self._n_ctx,
                                                   self.type_k, mixed, self.kv_hot, self._ubatch)
        elif mixed:
            self._cache = MixedKVCache(c.n_layer, c.n_head_kv, c.head_dim, self._n_ctx,
                                       hot_tokens=self.kv_hot, cold_type=self.type_k,
                                       max_batch=self._ubatch)
        else:
            self._cache = F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, self._n_ctx,
                                     type=self.type_k)
        if self._workers is not None and self._workers.split == "layer":
            self._workers.place_cache(self._cache)
        self._decoder = Decoder(self._model, self._cache, self._backend)

    def attach_worker(self, i: int) -> None:
        """Replace Ray worker i (after a WorkerDiedError/WorkerTimeoutError) with a new one.
        The KV cache starts over empty (n_tokens = 0): nothing is recomputed behind the
        caller's back; eval the tokens again to rebuild the context."""
        if self._workers is None:
            raise GGMLError("Llama.attach_worker: this model runs without workers")
        self._workers.attach(i)
        self._new_cache()
        self.n_tokens = 0

    def _rewind(self) -> None:
        """Drop cached positions past n_tokens (llama-cpp-python's kv_cache_seq_rm before
        eval): the F16 cache just forgets them; the mixed cache is rebuilt from the kept
        tokens (its cold store holds no per-position undo)."""
        keep = self.n_tokens
        if not 0 <= keep <= self._cache.n_past:
            raise GGMLError(f"Llama: n_tokens = {keep} but the cache holds {self._cache.n_past} "
                            f"tokens; n_tokens may only be lowered")
        if self.kv_cache_kind == "f16":
            self._cache.n_past = keep
            return
        self._new_cache()
        self.n_tokens = 0
        if keep:
            self.eval(self.input_ids[:keep].tolist())

    def eval(self, tokens: Sequence[int]) -> None:
        """Append tokens to the cache (batches of n_batch); keep their logits in scores."""
        if self._decoder is None:
            raise GGMLError("Llama.eval: this model was loaded with vocab_only=True (no weights)"
                            if self.vocab_only else "Llama.eval: the model is closed")
        if type(tokens) is list and len(tokens) == 1 and type(tokens[0]) is int:
            ids, n = tokens, 1           # a decode step: no array made here
            lo = hi = tokens[0]
        else:
            ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
            n = ids.size
            if n == 0:
                raise ShapeError("Llama.eval: empty token list")
            if n <= 64:              # Python's min/max beat two NumPy reductions
                vals = ids.tolist()
                lo, hi = min(vals), max(vals)
            else:
                lo, hi = int(ids.min()), int(ids.max())
        if self.n_tokens + n > self._n_ctx:
            raise ShapeError(f"Llama.eval: {n} tokens after {self.n_tokens} exceed n_ctx "
                             f"{self._n_ctx} (requested {self.n_tokens + n} > {self._n_ctx})")
        if lo < 0 or hi >= self._n_vocab:
            bad = lo if lo < 0 else hi
            raise GGMLError(f"Llama.eval: token id {bad} out of range [0, {self._n_vocab})")
        if self._cache.n_past != self.n_tokens:
            self._rewind()
        step, ub, every = self._decoder.step, self._ubatch, self._logits_all
        for i in range(0, n, ub):
            batch = ids[i:i + ub]
            k, m = self.n_tokens, len(batch)
            try:
                if every:        # straight into scores (one copy, as llama.cpp's)
                    step(batch, out=self._score_rows[k:k + m])
                else:            # kept as a view of the graph's output (no copy: scores)
                    self._pending = (step(batch, all_logits=False, copy=False)[0],
                                     self._decoder.last_graph)
            except BaseException:
                self._drop_pending()
                raise
            if m == 1:
                self.input_ids[k] = batch[0]
            else:
                self.input_ids[k:k + m] = batch
            self.n_tokens = k + m

    # llama-cpp-python leaves the logits of a decode in the context (llama_get_logits, valid
    # until the next decode) unless logits_all; here the last row stays a view of the step
    # graph's output until scores is read (or a step of that graph fails: then it is lost)
    @property
    def scores(self) -> np.ndarray:
        """Logits rows: every evaluated position's with logits_all, else [1, n_vocab]: the
        last evaluated position's."""
        if self._pending is not None:
            self._score_rows[0] = self._pending[0]
            self._pending = None
        return self._score_rows

    @scores.setter
    def scores(self, value: np.ndarray) -> None:
        self._score_rows, self._pending = value, None

    def _drop_pending(self) -> None:
        """A step failed: keep the pending logits unless the failed step ran their graph
        (it may have overwritten them: NaN then, until the next eval)."""
        if self._pending is not None:
            view, gf = self._pending
            self._pending = None
            self._score_rows[0] = np.nan if self._decoder.running is gf else view

    def logits(self) -> np.ndarray:
        """The last evaluated position's logits: a view, into scores or (without logits_all)
        into the step graph's output; its values change with the next eval."""
        if self.n_tokens == 0:
            raise GGMLError("Llama.logits: nothing evaluated yet")
        if self._logits_all:
            return self._score_rows[self.n_tokens - 1]
        p = self._pending
        return p[0] if p is not None else self._score_rows[0]

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids[:self.n_tokens]

    @property
    def _scores(self) -> np.ndarray:
        return self.scores[:self.n_tokens, :]

    def reset(self) -> None:
        """Forget the evaluated tokens (the cache is cut on the next eval)."""
        self.n_tokens = 0

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    def kv_cache_bytes(self) -> dict:
        """{'hot', 'cold', 'total', 'f16', 'ratio'}: the cache's allocations (f16 = an all-F16
        cache of the same n_ctx)."""
        if self._cache is None:
            return {"hot": 0, "cold": 0, "total": 0, "f16": 0, "ratio": 1.0}
        return self._cache.nbytes()

    # --- sizes ----------------------------------------------------------------------------
    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self._n_vocab

    def n_embd(self) -> int:
        if self._model is not None:
            return self._model.cfg.n_embd
        return int(self._gguf.metadata.get(f"{self._gguf.arch}.embedding_length", 0))

    # --- vocabulary ----------------------------------------------------------------------
    @property
    def tokenizer_(self):
        """The GGUF's own tokenizer (pyggml.llm.tokenizer.Tokenizer), built on first use."""
        if self._tokenizer is None:
            try:
                from .tokenizer import Tokenizer
            except ImportError as e:
                raise GGMLError(f"Llama: no tokenizer available ({e})") from e
            self._tokenizer = Tokenizer.from_gguf(self._gguf)
        return self._tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list:
        """Token ids of text (bytes). add_bos adds the model's BOS/prefix tokens when the
        model asks for them; special parses special-token text like <|im_start|>."""
        return self.tokenizer_.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        return self.tokenizer_.detokenize(tokens, special=special)

    def token_bos(self) -> int:
        return self.tokenizer_.bos_id

    def token_eos(self) -> int:
        return self.tokenizer_.eos_id

    # --- text generation (pyggml.llm.completion / chat) ----------------------------------
    def create_completion(self, prompt, *args, **kwargs):
        from .completion import create_completion
        return create_completion(self, prompt, *args, **kwargs)

    def __call__(self, prompt, *args, **kwargs):
        return self.create_completion(prompt, *args, **kwargs)

    def create_chat_completion(self, messages, *args, **kwargs):
        from .chat import create_chat_completion
        return create_chat_completion(self, messages, *args, **kwargs)

    # --- lifetime ---------------------------------------------------------------------------
    def close(self, wait: bool = False, detach: bool = False):
        """Release the cache, the weights and the file map (tiered: stop the background
        compile; wait=True lets it finish first, detach=True leaves it to a detached compiler
        that finishes after this process exits: returns its Detached, or None)."""
        detached = None
        if hasattr(getattr(self, "_backend", None), "warmup"):
            detached = self._backend.close(wait=wait, detach=detach)
        self._decoder = self._cache = self._model = None
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None
        self.scores = np.zeros((0, self._n_vocab), dtype=np.single)
        if self._gguf is not None:
            self._gguf.close()
        return detached

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Llama({self.model_path!r}, n_ctx={self._n_ctx}, n_tokens={self.n_tokens}, "
                f"kv_cache={getattr(self, 'kv_cache_kind', None)!r})")
