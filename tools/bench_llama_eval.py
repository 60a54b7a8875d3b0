"""Decode speed through pyggml.llm.Llama.eval vs driving pyggml.models.llama.Decoder directly.

Both decode the same model one token at a time through their own F16 cache on the same
thread count; rounds alternate the two sides so machine load hits both alike. Prints tokens/s
per round and the median ratio. Since wall-clock rates swing with machine load, it also
times, inside the same Llama.eval calls, the part spent in Decoder.step: what is left is the
front end's own cost per token (argument checks, copying the logits row).

    python tools/bench_llama_eval.py [-m smollm2-135m] [-t 2] [-n 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default="smollm2-135m")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-n", type=int, default=64, help="tokens decoded per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens before decoding")
    args = p.parse_args(argv)

    import pyggml as gg
    from pyggml.attention.kv_cache import F16KVCache
    from pyggml.llm import Llama
    from pyggml.models.llama import Decoder

    n_ctx = args.prompt + args.n * (args.rounds + 1) + 8
    llm = Llama(args.model, n_ctx=n_ctx, n_threads=args.threads, verbose=False)
    model, c = llm._model, llm._model.cfg
    backend = gg.sched_new([gg.backend_init_by_name("cpu", args.threads),
                            gg.backend_reference_init()])
    dec = Decoder(model, F16KVCache(c.n_layer, c.n_head_kv, c.head_dim, n_ctx), backend)
    prompt = list(np.random.default_rng(0).integers(0, c.n_vocab, args.prompt))
    llm.eval(prompt)
    dec.step(prompt)
    tok_a = tok_b = int(llm.logits().argmax())
    for _ in range(2):                          # warm both graphs
        llm.eval([tok_a])
        tok_a = int(llm.logits().argmax())
        tok_b = int(dec.step([tok_b])[-1].argmax())
    rates = {"Llama.eval": [], "Decoder.step": []}
    for r in range(args.rounds):
        order = ("Llama.eval", "Decoder.step")
        for side in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            if side == "Llama.eval":
                for _ in range(args.n):
                    llm.eval([tok_a])
                    tok_a = int(llm.logits().argmax())
            else:
                for _ in range(args.n):
                    tok_b = int(dec.step([tok_b])[-1].argmax())
            rates[side].append(args.n / (time.perf_counter() - t0))
    for side, v in rates.items():
        print(f"{side:13s} " + "  ".join(f"{x:6.1f}" for x in v)
              + f"   median {statistics.median(v):6.1f} tok/s")
    inner = [0.0]
    step = llm._decoder.step

    def timed_step(ids):
        t = time.perf_counter()
        out = step(ids)
        inner[0] += time.perf_counter() - t
        return out
    llm._decoder.step = timed_step
    t0 = time.perf_counter()
    for _ in range(args.n):
        llm.eval([tok_a])
        tok_a = int(llm.logits().argmax())
    total = time.perf_counter() - t0
    own = (total - inner[0]) / args.n
    print(f"front end: {own * 1e6:.0f} us per token outside Decoder.step "
          f"(= {100 * own / (inner[0] / args.n):.2f}% of a {inner[0] / args.n * 1e3:.1f} ms step; "
          f"includes argmax of the logits)")
    ratios = [a / b for a, b in zip(rates["Llama.eval"], rates["Decoder.step"])]
    print(f"Llama.eval / Decoder.step per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.3f} ({args.threads} threads, {args.n} tokens "
          f"per round)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
