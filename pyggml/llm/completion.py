"""Text completion in llama-cpp-python's shape: `create_completion(llama, prompt, ...)` returns
the OpenAI-style "text_completion" dict, or an iterator of chunks when streaming.

The pieces, each used by `Llama.__call__`, `create_chat_completion` and `pyggml run`:
- `generate`: tokens in, sampled tokens out; reuses the evaluated prefix of the cache
  when the new prompt starts with it (as llama-cpp-python does); times prompt and decode.
- `StopFilter`: holds back text that may be the start of a stop string, so a stop string
  never leaks into the output, not even in a stream.
- `stream_text`: the two together with the tokenizer's UTF-8-complete stream decoder,
  stopping at an end-of-generation token, a stop string, max_tokens or a full context.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

import numpy as np

from ..errors import PromptError
from .sampling import Sampler
from .sampling import SamplingParams


@dataclass
class Timings:
    """llama.cpp's perf counters (llama_perf_context_data), in seconds."""
    t_prompt: float = 0.0
    n_prompt: int = 0
    t_eval: float = 0.0
    n_eval: int = 0
    t_sample: float = 0.0
    n_sample: int = 0


def prompt_tokens(llama, prompt) -> list:
    """A str prompt is tokenized with special tokens parsed (llama-cpp-python: an empty
    prompt is the BOS token alone); a list of ids is taken as is."""
    if isinstance(prompt, str):
        return (llama.tokenize(prompt.encode("utf-8"), special=True) if prompt != ""
                else [llama.token_bos()])
    return [int(t) for t in prompt]


def generate(llama, tokens: list, sampler: Sampler, timings: Timings | None = None,
             ) -> Iterator[tuple]:
    """Evaluate `tokens` (only the part past what the cache already holds), then yield
    (token, logits) forever: sample, yield, evaluate the token when asked for the next one.
    The caller stops it (end of generation, stop string, max_tokens); a token it does not
    ask past is never evaluated, as in llama-cpp-python. Stops by itself when the context
    is full."""
    timings = timings if timings is not None else Timings()
    n_ctx = llama.n_ctx()
    if not tokens:
        raise PromptError("empty prompt: nothing to evaluate")
    if len(tokens) > n_ctx:
        raise PromptError(f"prompt of {len(tokens)} tokens exceeds the context of {n_ctx} "
                          f"tokens (n_ctx)")
    # llama-cpp-python's prefix reuse: keep the evaluated tokens the prompt starts with, and
    # re-evaluate at least the last one when the whole prompt is there but later tokens too
    k = _common_prefix(llama.input_ids[:llama.n_tokens], tokens)
    if k == len(tokens) and k < llama.n_tokens:
        k -= 1
    llama.n_tokens = k                           # Llama.eval drops cached positions past k
    todo = tokens[k:]
    if todo:
        t0 = time.perf_counter()
        llama.eval(todo)
        timings.t_prompt += time.perf_counter() - t0
        timings.n_prompt += len(todo)
    while True:
        t0 = time.perf_counter()
        logits = llama.logits()
        tok = sampler.sample(logits, llama.input_ids[:llama.n_tokens])
        timings.t_sample += time.perf_counter() - t0
        timings.n_sample += 1
        yield tok, logits
        if llama.n_tokens >= n_ctx:
            return
        t0 = time.perf_counter()
        llama.eval([tok])
        timings.t_eval += time.perf_counter() - t0
        timings.n_eval += 1


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if len(diff) else n


class StopFilter:
    """Passes text through, holding back any tail that could be the start of a stop string;
    `push` returns (text safe to emit, whether a stop string was hit)."""

    def __init__(self, stop):
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.stops = [s for s in stop if s]
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        hold = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.buf)), 0, -1)
                    if self.buf.endswith(s[:k])), default=0)
        out = self.buf[:len(self.buf) - hold]
        self.buf = self.buf[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


@dataclass
class Piece:
    """One step of a text stream: new text (maybe empty), the tokens behind it, and the
    finish reason on the last piece ("stop" or "length")."""
    text: str
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)   # (token text, logprob, top dict)
    finish_reason: str | None = None


def _logprob_entry(llama, tok: int, logits: np.ndarray, n_top: int) -> tuple:
    x = np.asarray(logits, dtype=np.float64)
    logp = x - x.max()
    logp -= np.log(np.exp(logp).sum())
    top = np.argsort(-logp)[:n_top]
    def piece(t):
        return llama.detokenize([int(t)]).decode("utf-8", errors="replace")
    return piece(tok), float(logp[tok]), {piece(t): float(logp[t]) for t in top}


def stream_text(llama, tokens: list, sampler: Sampler, max_tokens: int | None = 16,
                stop=(), timings: Timings | None = None, logprobs: int | None = None,
                ) -> Iterator[Piece]:
    """Generate after `tokens` and yield text pieces of complete UTF-8; the last piece has
    the finish reason. max_tokens None or <= 0: until the context is full (llama-cpp-python)."""
    n_ctx = llama.n_ctx()
    if max_tokens is None or max_tokens <= 0:        # llama-cpp-python: fill the context
        max_tokens = max(n_ctx - len(tokens), 1)
    tok_ = llama.tokenizer_
    decoder = tok_.decoder()
    stops = StopFilter(stop)
    pending_tokens, pending_lp = [], []
    finish = "length"
    n_gen = 0
    for tok, logits in generate(llama, tokens, sampler, timings):
        if tok_.is_eog(tok):
            finish = "stop"
            break
        n_gen += 1
        pending_tokens.append(tok)
        if logprobs is not None:
            pending_lp.append(_logprob_entry(llama, tok, logits, logprobs))
        text, hit = stops.push(decoder.feed(tok))
        if hit:
            finish = "stop"
            yield Piece(text, pending_tokens, pending_lp)
            pending_tokens, pending_lp = [], []
            break
        if text:
            yield Piece(text, pending_tokens, pending_lp)
            pending_tokens, pending_lp = [], []
        if n_gen >= max_tokens:
            break
    tail = stops.flush() if finish == "length" else ""
    yield Piece(tail, pending_tokens, pending_lp, finish_reason=finish)


def _model_name(llama) -> str:
    return str(getattr(llama, "model_path", ""))


def _logprobs_dict(entries: list, offset: int) -> dict:
    """llama-cpp-python's "logprobs" object for a run of tokens starting at text offset."""
    out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    for text, lp, top in entries:
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append(top)
        offset += len(text)
    return out


def create_completion(llama, prompt, suffix: str | None = None, max_tokens: int | None = 16,
                      temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                      typical_p: float = 1.0, logprobs: int | None = None, echo: bool = False,
                      stop=None, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                      repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                      seed: int | None = None, model: str | None = None):
    """llama-cpp-python's Llama.create_completion (and __call__) on a pyggml `Llama`."""
    sampler = Sampler(SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
        repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, repeat_last_n=_last_n(llama),
        seed=seed if seed is not None else getattr(llama, "_seed", None)))
    tokens = prompt_tokens(llama, prompt)
    head = dict(id=f"cmpl-{uuid.uuid4()}", object="text_completion", created=int(time.time()),
                model=model or _model_name(llama))
    prefix = ""
    if echo:
        prefix = prompt if isinstance(prompt, str) else \
            llama.detokenize(tokens).decode("utf-8", errors="replace")
    pieces = stream_text(llama, tokens, sampler, max_tokens, stop, logprobs=logprobs)
    if stream:
        return _chunks(head, pieces, prefix, suffix, logprobs is not None)
    text, n_gen, entries = prefix, 0, []
    for p in pieces:
        text += p.text
        n_gen += len(p.tokens)
        entries += p.logprobs
        finish = p.finish_reason
    if suffix is not None:
        text += suffix
    return dict(head, choices=[dict(
        text=text, index=0, finish_reason=finish,
        logprobs=_logprobs_dict(entries, len(prefix)) if logprobs is not None else None)],
        usage=dict(prompt_tokens=len(tokens), completion_tokens=n_gen,
                   total_tokens=len(tokens) + n_gen))


def _chunks(head: dict, pieces, prefix: str, suffix, want_lp: bool):
    offset = len(prefix)
    if prefix:
        yield dict(head, choices=[dict(text=prefix, index=0, logprobs=None, finish_reason=None)])
    for p in pieces:
        text = p.text + ((suffix or "") if p.finish_reason else "")
        if text or p.finish_reason:
            lp = _logprobs_dict(p.logprobs, offset) if want_lp else None
            yield dict(head, choices=[dict(text=text, index=0, logprobs=lp,
                                           finish_reason=p.finish_reason)])
            offset += len(text)


def _last_n(llama) -> int:
    """The penalty window: llama-cpp-python's last_n_tokens_size (64)."""
    return int(getattr(llama, "last_n_tokens_size", 64))
