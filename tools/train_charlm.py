"""Train a tiny character-level transformer on a local text with pyggml; sample before/after.

The text is a file already on the machine (default: the GPL-3 under
/usr/share/common-licenses, else this repository's README). Characters are the vocabulary;
datapoints are windows of --ctx characters at seeded random offsets, labelled with the next
character at every position (one-hot), so the loss is ggml-opt's cross entropy over all
positions. The model: token + position embeddings, --layers pre-norm blocks (causal
multi-head self-attention with diag_mask_inf + soft_max, then a SiLU MLP), RMS norms with
learned gains, an output projection. Everything is differentiated by pyggml's gradient rules
(get_rows, mul_mat on 4-D batches, permute/cont/reshape, soft_max, rms_norm, silu, add
with broadcast) and trained with AdamW through opt.fit.

    python tools/train_charlm.py [--epochs 4] [--ctx 32] [--embd 64] [--heads 4] [--layers 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import pyggml as gg
from pyggml import opt

_TEXTS = (Path("/usr/share/common-licenses/GPL-3"),
          Path(__file__).resolve().parents[1] / "README.md")


def load_text(path=None) -> str:
    for p in ([Path(path)] if path else _TEXTS):
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace")
    raise SystemExit(f"train_charlm: no text found (tried {', '.join(map(str, _TEXTS))})")


class CharLM:
    """The weights (an allocated context, all set_param) and a builder of the forward graph
    for any batch, so training (batch B) and sampling (batch 1) share them."""

    def __init__(self, n_vocab, n_ctx, n_embd, n_head, n_layer, rng):
        self.n_vocab, self.n_ctx, self.n_embd, self.n_head = n_vocab, n_ctx, n_embd, n_head
        self.ctx_w = gg.init(mem_size=64 << 20)
        self.w = {}
        d, f = n_embd, 4 * n_embd

        def param(name, ne, std=None, value=None):
            t = gg.new_tensor(self.ctx_w, gg.TYPE_F32, len(ne), list(ne))
            gg.set_name(t, name)
            gg.set_param(t)
            v = np.full(ne[::-1], value, np.float32) if value is not None else \
                rng.normal(0.0, std if std else 1.0 / np.sqrt(ne[0]), ne[::-1]).astype(np.float32)
            gg.tensor_set(t, v.tobytes())
            self.w[name] = t

        param("tok_embd", (d, n_vocab), std=0.3)
        param("pos_embd", (d, n_ctx), std=0.1)
        for i in range(n_layer):
            for n in ("wq", "wk", "wv", "wo"):
                param(f"l{i}.{n}", (d, d))
            param(f"l{i}.w1", (d, f))
            param(f"l{i}.w2", (f, d), std=1.0 / np.sqrt(f))
            param(f"l{i}.attn_norm", (d,), value=1.0)
            param(f"l{i}.ffn_norm", (d,), value=1.0)
        param("out_norm", (d,), value=1.0)
        param("output", (d, n_vocab))
        self.n_layer = n_layer

    def forward(self, ctx, tokens, batch):
        """tokens I32 [n_ctx, batch] -> logits F32 [n_vocab, n_ctx*batch]."""
        w, T, B, d, H = self.w, self.n_ctx, batch, self.n_embd, self.n_head
        hd = d // H
        x = gg.get_rows(ctx, w["tok_embd"], gg.reshape_1d(ctx, tokens, T * B))     # [d, T*B]
        x = gg.add(ctx, gg.reshape_3d(ctx, x, d, T, B), w["pos_embd"])             # [d, T, B]
        x = gg.reshape_2d(ctx, x, d, T * B)
        for i in range(self.n_layer):
            h = gg.mul(ctx, gg.rms_norm(ctx, x, 1e-5), w[f"l{i}.attn_norm"])

            def heads(name, h=h, i=i):                                          # [hd, T, H, B]
                t = gg.reshape_4d(ctx, gg.mul_mat(ctx, w[f"l{i}.{name}"], h), hd, H, T, B)
                return gg.permute(ctx, t, 0, 2, 1, 3)
            q, k = heads("wq"), heads("wk")
            v = gg.cont(ctx, gg.permute(ctx, gg.reshape_4d(ctx, gg.mul_mat(ctx, w[f"l{i}.wv"], h),
                                                           hd, H, T, B), 1, 2, 0, 3))  # [T, hd, H, B]
            kq = gg.mul_mat(ctx, k, q)                                              # [T, T, H, B]
            kq = gg.soft_max(ctx, gg.diag_mask_inf(ctx, gg.scale(ctx, kq, 1.0 / np.sqrt(hd)), 0))
            o = gg.permute(ctx, gg.mul_mat(ctx, v, kq), 0, 2, 1, 3)                 # [hd, H, T, B]
            o = gg.reshape_2d(ctx, gg.cont(ctx, o), d, T * B)
            x = gg.add(ctx, x, gg.mul_mat(ctx, w[f"l{i}.wo"], o))
            h = gg.mul(ctx, gg.rms_norm(ctx, x, 1e-5), w[f"l{i}.ffn_norm"])
            h = gg.mul_mat(ctx, w[f"l{i}.w2"], gg.silu(ctx, gg.mul_mat(ctx, w[f"l{i}.w1"], h)))
            x = gg.add(ctx, x, h)
        x = gg.mul(ctx, gg.rms_norm(ctx, x, 1e-5), w["out_norm"])
        return gg.mul_mat(ctx, w["output"], x)


def windows(ids: np.ndarray, n_ctx: int, n: int, rng):
    """n windows of n_ctx ids at random offsets and their next-id targets."""
    off = rng.integers(0, len(ids) - n_ctx - 1, n)
    x = np.stack([ids[o:o + n_ctx] for o in off])
    y = np.stack([ids[o + 1:o + n_ctx + 1] for o in off])
    return x.astype(np.int32), y


def sample(model, chars, prompt, n, threads, rng, temperature=0.8) -> str:
    """Continue prompt by n characters (window of the last n_ctx, padded with spaces)."""
    ctx = gg.init(mem_size=64 << 20)
    tokens = gg.new_tensor_2d(ctx, gg.TYPE_I32, model.n_ctx, 1)
    logits = model.forward(ctx, tokens, 1)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, logits)
    index = {c: i for i, c in enumerate(chars)}
    ids = [index.get(c, index.get(" ", 0)) for c in prompt]
    out = []
    for _ in range(n):
        win = ids[-model.n_ctx:]
        pad = model.n_ctx - len(win)
        gg.tensor_set(tokens, np.array([index.get(" ", 0)] * pad + win, np.int32).tobytes())
        gg.graph_compute_with_ctx(ctx, gf, threads)
        row = np.frombuffer(gg.tensor_get(logits), np.float32).reshape(model.n_ctx, -1)[-1]
        p = np.exp((row - row.max()) / temperature)
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        ids.append(nxt)
        out.append(chars[nxt])
    return "".join(out)


def train(text_path=None, epochs=4, n_ctx=32, n_embd=64, n_head=4, n_layer=1, batch=16,
          ndata=2048, lr=3e-3, threads=2, seed=42, silent=True, n_sample=120):
    """Train and return losses, accuracies and samples before and after."""
    rng = np.random.default_rng(seed)
    text = load_text(text_path)
    chars = sorted(set(text))
    ids = np.searchsorted(np.array(chars), np.array(list(text)))
    x, y = windows(ids, n_ctx, ndata, rng)
    V = len(chars)
    ds = opt.dataset_init(gg.TYPE_I32, gg.TYPE_F32, n_ctx, V * n_ctx, ndata)
    gg.tensor_set(opt.dataset_data(ds), x.tobytes())
    gg.tensor_set(opt.dataset_labels(ds), np.eye(V, dtype=np.float32)[y].tobytes())
    model = CharLM(V, n_ctx, n_embd, n_head, n_layer, rng)
    prompt = " ".join(text.split())[:n_ctx]      # whitespace runs squeezed
    before = sample(model, chars, prompt, n_sample, threads, np.random.default_rng(seed))
    ctx = gg.init(mem_size=256 << 20, no_alloc=True)
    tokens = gg.new_tensor_2d(ctx, gg.TYPE_I32, n_ctx, batch)
    gg.set_name(tokens, "tokens")
    gg.set_input(tokens)
    logits = model.forward(ctx, tokens, batch)
    gg.set_name(logits, "logits")
    gg.set_output(logits)
    sched = gg.Sched([gg.backend_cpu_init(threads), gg.backend_reference_init()])
    pars = opt.OptimizerParams()
    pars.adamw.alpha = lr
    t0 = time.perf_counter()
    history, _ = opt.fit(sched, ctx, tokens, logits, ds, opt.LOSS_TYPE_CROSS_ENTROPY,
                         opt.OPTIMIZER_TYPE_ADAMW, lambda e: pars, nepoch=epochs,
                         val_split=0.1, silent=silent)
    dt = time.perf_counter() - t0
    after = sample(model, chars, prompt, n_sample, threads, np.random.default_rng(seed))
    return dict(vocab=V, chance_loss=float(np.log(V)), prompt=prompt, before=before, after=after,
                train_loss=[h[0].loss_unc()[0] for h in history],
                val_loss=[h[1].loss_unc()[0] for h in history],
                val_accuracy=[h[1].accuracy_unc()[0] for h in history], seconds=dt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=32)
    ap.add_argument("--embd", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ndata", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--silent", action="store_true")
    a = ap.parse_args(argv)
    r = train(a.text, a.epochs, a.ctx, a.embd, a.heads, a.layers, a.batch, a.ndata, a.lr,
              a.threads, a.seed, a.silent)
    print(f"vocab {r['vocab']} (uniform guess: loss {r['chance_loss']:.3f}); "
          f"{r['seconds']:.1f} s for {a.epochs} epochs")
    for e, (tl, vl, va) in enumerate(zip(r["train_loss"], r["val_loss"], r["val_accuracy"]), 1):
        print(f"epoch {e}: train loss {tl:.4f}  val loss {vl:.4f}  val accuracy {100 * va:.1f}%")
    print(f"prompt: {r['prompt']!r}")
    print(f"before: {r['before']!r}")
    print(f"after:  {r['after']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
