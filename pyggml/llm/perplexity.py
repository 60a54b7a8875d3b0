"""Perplexity, computed the way llama.cpp's llama-perplexity computes it.

The whole text is tokenized once (with the model's BOS when it adds one) and cut into chunks
of n_ctx tokens. Each chunk starts from an empty KV cache, its first token replaced by BOS
when the model adds one, and is fed in batches of n_batch tokens (so with n_batch < n_ctx
the early tokens are already in the cache - and, with the mixed cache, already cold - when
the later ones attend to them). Only the second half of each chunk is scored: the logits
at positions n_ctx/2 .. n_ctx-2 predict the tokens after them. The negative log-likelihood
of every scored token adds to a running sum (and its square, for the error):

    PPL = exp(mean nll)    +/-   PPL * sqrt((mean nll^2 - mean nll^2) / (count - 1))

llama-perplexity runs n_batch / n_ctx chunks side by side when n_batch > n_ctx; the chunks
are independent, so running them one after the other gives the same numbers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Callable
from typing import Optional
from typing import Sequence

import numpy as np

from ..errors import GGMLError


class PerplexityError(GGMLError, ValueError):
    """Settings or text that a perplexity run cannot use (too few tokens, bad n_ctx...)."""


@dataclass
class PerplexityResult:
    n_ctx: int
    n_batch: int
    n_chunk: int
    count: int = 0                # scored tokens
    nll: float = 0.0              # sum of negative log-likelihoods
    nll2: float = 0.0             # sum of their squares
    running: list = field(default_factory=list)   # PPL after each chunk ([1]x,[2]y,... line)
    seconds: float = 0.0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def error(self) -> float:
        """llama-perplexity's +/-: PPL times the standard error of the mean nll."""
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        return math.sqrt(var / (self.count - 1)) * self.ppl if var > 0 and self.count > 1 else 0.0

    def running_line(self) -> str:
        return "".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(self.running))

    def final_line(self) -> str:
        return f"Final estimate: PPL = {self.ppl:.4f} +/- {self.error:.5f}"


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, with llama.cpp's precisions: the max and the
    exponentials in float32, their sum and the logarithm in float64."""
    lg = np.asarray(logits, dtype=np.float32)
    mx = lg.max(axis=1)
    sum_exp = np.exp(lg - mx[:, None]).sum(axis=1, dtype=np.float64)
    picked = lg[np.arange(len(lg)), np.asarray(targets)]
    return -((picked - mx).astype(np.float64) - np.log(sum_exp))


def check_settings(n_tokens: int, n_ctx: int) -> int:
    """How many chunks the text holds; llama-perplexity's refusal when under two."""
    if n_ctx < 4 or n_ctx % 2:
        raise PerplexityError(f"perplexity: n_ctx must be an even number >= 4, got {n_ctx}")
    if n_tokens < 2 * n_ctx:
        raise PerplexityError(
            f"perplexity: you need at least {2 * n_ctx} tokens to evaluate perplexity with a "
            f"context of {n_ctx}; the data file you provided tokenizes to only {n_tokens} tokens")
    return n_tokens // n_ctx


def perplexity(llm, tokens: Sequence[int], n_ctx: int, n_batch: int, n_chunks: int = -1,
               bos: Optional[int] = None,
               on_chunk: Optional[Callable[[PerplexityResult, float], None]] = None
               ) -> PerplexityResult:
    """Run llama-perplexity's method on `llm`, a Llama made with logits_all=True and a cache
    of at least n_ctx tokens (eval, scores, reset). bos: the id written over each chunk's
    first token (None when the model adds no BOS). on_chunk(result, seconds of the chunk)
    is called after each chunk (the running line, the ETA)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n_chunk_max = check_settings(len(tokens), n_ctx)
    n_chunk = n_chunk_max if n_chunks is None or n_chunks < 0 else min(n_chunks, n_chunk_max)
    if n_chunk <= 0:
        raise PerplexityError(f"perplexity: --chunks must be > 0 (got {n_chunks})")
    if n_batch <= 0:
        raise PerplexityError(f"perplexity: n_batch must be > 0, got {n_batch}")
    n_batch = min(n_batch, n_ctx)
    res = PerplexityResult(n_ctx, n_batch, n_chunk)
    first = n_ctx // 2
    t_run = time.perf_counter()
    for i in range(n_chunk):
        t0 = time.perf_counter()
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx].tolist()
        if bos is not None:
            chunk[0] = int(bos)
        llm.reset()
        for j in range(0, n_ctx, n_batch):
            llm.eval(chunk[j:j + n_batch])
        logits = np.asarray(llm.scores[first:n_ctx - 1])
        v = token_nll(logits, tokens[i * n_ctx + first + 1:(i + 1) * n_ctx])
        res.nll += float(v.sum())
        res.nll2 += float((v * v).sum())
        res.count += len(v)
        res.running.append(math.exp(res.nll / res.count))
        if on_chunk is not None:
            on_chunk(res, time.perf_counter() - t0)
    res.seconds = time.perf_counter() - t_run
    return res


def model_bos(llm) -> Optional[int]:
    """The BOS id llama-perplexity writes at each chunk start, or None when the model adds no
    BOS (its tokenizer adds one to an empty text exactly when the model adds BOS)."""
    ids = list(llm.tokenize(b"", add_bos=True, special=False))
    return int(ids[0]) if ids else None
