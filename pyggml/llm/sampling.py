"""Token sampling with llama.cpp's sampler chain: its stages, their order and their semantics.

llama.cpp's default chain (common/sampling.cpp, src/llama-sampling.cpp) is
    penalties -> top-k -> typical -> top-p -> min-p -> temperature -> dist
and `temperature <= 0` keeps only the largest logit, i.e. greedy. Each stage here is a
function over a candidate set (token ids with their logits, like llama_token_data_array),
vectorized with NumPy: top-k uses np.argpartition (O(n_vocab)), never a full sort of the
vocabulary, so a step costs tens of microseconds on a 49k vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ParamError

# llama.cpp's CLI defaults and llama-cpp-python's __call__ defaults (they agree)
DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0,
                repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
                repeat_last_n=64, min_keep=1)
LLAMA_DEFAULT_SEED = 0xFFFFFFFF     # llama.cpp / llama-cpp-python: "pick a random seed"


@dataclass
class SamplingParams:
    temperature: float = DEFAULTS["temperature"]
    top_k: int = DEFAULTS["top_k"]                  # <= 0: off
    top_p: float = DEFAULTS["top_p"]                # >= 1: off
    min_p: float = DEFAULTS["min_p"]                # <= 0: off
    typical_p: float = DEFAULTS["typical_p"]        # >= 1: off
    repeat_penalty: float = DEFAULTS["repeat_penalty"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    repeat_last_n: int = DEFAULTS["repeat_last_n"]  # 0: no penalties
    min_keep: int = DEFAULTS["min_keep"]
    seed: int | None = None     # None, < 0 or LLAMA_DEFAULT_SEED: random (llama.cpp's -1)

    def __post_init__(self):
        bad = [f"{name}={getattr(self, name)!r} ({why})" for name, ok, why in (
            ("top_p", 0.0 <= self.top_p, ">= 0"),
            ("min_p", self.min_p <= 1.0, "<= 1"),
            ("typical_p", 0.0 <= self.typical_p, ">= 0"),
            ("repeat_penalty", self.repeat_penalty > 0.0, "> 0"),
            ("repeat_last_n", self.repeat_last_n >= -1, ">= -1"),
            ("min_keep", self.min_keep >= 1, ">= 1"),
        ) if not ok]
        if bad:
            raise ParamError("sampling: " + ", ".join(bad))


# --- the stages: each takes and returns (ids, logits); `ids` None means the whole vocab ---

def penalties(logits: np.ndarray, last: np.ndarray, repeat: float, freq: float,
              present: float) -> np.ndarray:
    """llama_sampler_init_penalties: for each token seen in `last` (the last repeat_last_n
    tokens of the context) with count c: logit <= 0 ? logit * repeat : logit / repeat,
    then logit -= c * freq + present. Returns a copy when anything changes."""
    if len(last) == 0 or (repeat == 1.0 and freq == 0.0 and present == 0.0):
        return logits
    tok, count = np.unique(np.asarray(last, dtype=np.int64), return_counts=True)
    keep = (tok >= 0) & (tok < len(logits))
    tok, count = tok[keep], count[keep]
    out = logits.copy()
    v = out[tok]
    v = np.where(v <= 0, v * repeat, v / repeat)
    out[tok] = v - count * freq - present
    return out


def _largest(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, in no order. A threshold from a 1/16 subsample
    shrinks the set first (every value >= a value of x, at least k of them, holds the top
    k), so the partition runs on ~200 values instead of the whole vocabulary."""
    n = len(x)
    if n >= 64 * k:
        sub = x[::16]
        j = min(len(sub), k // 8 + 8)
        thr = np.partition(sub, len(sub) - j)[len(sub) - j]
        cand = np.flatnonzero(x >= thr)
        if len(cand) >= k:
            return cand[np.argpartition(x[cand], len(cand) - k)[len(cand) - k:]]
    return np.argpartition(x, n - k)[n - k:]


def top_k(ids, logits: np.ndarray, k: int):
    """Keep the k largest logits, sorted descending (k <= 0: no-op, as llama.cpp)."""
    n = len(logits)
    if k <= 0 or k >= n:
        return ids, logits
    part = _largest(logits, k)
    part = part[np.argsort(-logits[part], kind="stable")]
    return (part if ids is None else ids[part]), logits[part]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def typical(ids, logits, p: float, min_keep: int = 1):
    """Locally typical sampling (llama_sampler_init_typical): keep the tokens whose
    surprise is closest to the entropy until their probabilities sum to p."""
    if p >= 1.0:
        return ids, logits
    probs = _softmax(logits)
    logp = np.log(np.maximum(probs, 1e-45))
    entropy = -(probs * logp).sum()
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cum = np.cumsum(probs[order])
    n_keep = max(int(np.searchsorted(cum, p, side="right")) + 1, min_keep)
    n_keep = min(n_keep, len(order))
    sel = order[:n_keep]
    return (sel if ids is None else ids[sel]), logits[sel]


def top_p(ids, logits, p: float, min_keep: int = 1):
    """Nucleus (llama_sampler_init_top_p): sort, keep up to and including the token where
    the cumulative probability first reaches p (at least min_keep)."""
    if p >= 1.0:
        return ids, logits
    probs = _softmax(logits)
    if ids is None and len(logits) > 4096:
        # the whole vocabulary (top-k off): the nucleus is usually among the 1024 largest
        head = _largest(logits, 1024)
        if probs[head].sum() >= p:
            ids, logits, probs = head, logits[head], probs[head]
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(probs[order])
    n_keep = max(int(np.searchsorted(cum, p, side="left")) + 1, min_keep)
    sel = order[:min(n_keep, len(order))]
    return (sel if ids is None else ids[sel]), logits[sel]


def min_p(ids, logits, p: float, min_keep: int = 1):
    """llama_sampler_init_min_p: keep tokens with probability >= p * max probability,
    i.e. logit >= max logit + log(p) (unless that leaves fewer than min_keep)."""
    if p <= 0.0 or len(logits) == 0:
        return ids, logits
    keep = logits >= logits.max() + np.log(p)
    if keep.sum() < min_keep:
        return ids, logits
    sel = np.flatnonzero(keep)
    return (sel if ids is None else ids[sel]), logits[sel]


def temperature(logits, t: float):
    return logits / t


def dist(ids, logits, rng: np.random.Generator) -> int:
    """Draw one token from softmax(logits) (llama_sampler_init_dist)."""
    cum = np.cumsum(_softmax(logits.astype(np.float64)))
    i = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)
    return int(i if ids is None else ids[i])


class Sampler:
    """llama.cpp's default chain with a seeded generator. `sample(logits, context)` takes
    the last position's logits and the tokens of the context so far (prompt and generated;
    llama.cpp accepts the prompt's tokens into the penalty window too)."""

    def __init__(self, params: SamplingParams | None = None, **kw):
        self.params = params if params is not None else SamplingParams(**kw)
        seed = self.params.seed
        random = seed is None or seed < 0 or seed == LLAMA_DEFAULT_SEED
        self.rng = np.random.default_rng(None if random else seed)

    def apply(self, logits: np.ndarray, context=()) -> tuple:
        """The chain before the draw: (candidate ids, their logits after temperature)."""
        sp = self.params
        last_n = sp.repeat_last_n
        last = np.asarray(context)[-last_n:] if last_n != 0 else np.empty(0, np.int64)
        if last_n == -1:                     # llama.cpp: -1 = the whole context
            last = np.asarray(context)
        x = penalties(np.asarray(logits, dtype=np.float32), last, sp.repeat_penalty,
                      sp.frequency_penalty, sp.presence_penalty)
        if sp.temperature <= 0.0:            # temp-ext with t <= 0 keeps the largest only
            i = int(np.argmax(x))
            return np.array([i]), x[i:i + 1]
        ids, x = top_k(None, x, sp.top_k)
        ids, x = typical(ids, x, sp.typical_p, sp.min_keep)
        ids, x = top_p(ids, x, sp.top_p, sp.min_keep)
        ids, x = min_p(ids, x, sp.min_p, sp.min_keep)
        if ids is None:
            ids = np.arange(len(x))
        return ids, temperature(x, sp.temperature)

    def sample(self, logits: np.ndarray, context=()) -> int:
        ids, x = self.apply(logits, context)
        if len(ids) == 1:
            return int(ids[0])
        return dist(ids, x, self.rng)


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))
