"""Train a small MLP with pyggml's autodiff and optimizer ops (pyggml.opt, ggml-opt's loop).

The data are three interleaved 2-D spirals (a classic problem no linear model solves),
generated from a seed: no download. The model is 2 -> 64 -> 64 -> 3 with ReLU, trained with
cross entropy and AdamW in batches; validation on 10% of the training set each epoch, then
accuracy on a separate test set of the same distribution.

    python tools/train_mlp.py [--epochs 30] [--batch 50] [--threads 2] [--optimizer adamw|sgd]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import pyggml as gg
from pyggml import opt


def spirals(n_per_class: int, n_classes: int, rng: np.random.Generator):
    """n_classes spiral arms in 2-D with Gaussian noise; one-hot labels."""
    xs, ys = [], []
    for c in range(n_classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        t0 = c * 2 * np.pi / n_classes         # two full turns per arm, noisy angles
        t = np.linspace(t0, t0 + 4 * np.pi, n_per_class) + rng.normal(0.0, 0.25, n_per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n_per_class, c))
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    perm = rng.permutation(len(y))
    return x[perm], np.eye(n_classes, dtype=np.float32)[y[perm]]


def dataset(x: np.ndarray, y: np.ndarray) -> opt.Dataset:
    ds = opt.dataset_init(gg.TYPE_F32, gg.TYPE_F32, x.shape[1], y.shape[1], len(x))
    gg.tensor_set(opt.dataset_data(ds), x.tobytes())
    gg.tensor_set(opt.dataset_labels(ds), y.tobytes())
    return ds


def build_model(n_in: int, n_hidden: int, n_out: int, batch: int, rng: np.random.Generator):
    """Parameters in an allocated context; the batch graph in a no_alloc one (as ggml-opt's
    ctx_static / ctx_compute)."""
    ctx_w = gg.init(mem_size=16 << 20)
    shapes = {"w1": (n_in, n_hidden), "b1": (n_hidden,), "w2": (n_hidden, n_hidden),
              "b2": (n_hidden,), "w3": (n_hidden, n_out), "b3": (n_out,)}
    w = {}
    for name, ne in shapes.items():
        t = gg.new_tensor(ctx_w, gg.TYPE_F32, len(ne), list(ne))
        gg.set_name(t, name)
        gg.set_param(t)
        bound = np.sqrt(6.0 / ne[0]) if len(ne) == 2 else 0.0      # He-uniform weights, zero bias
        gg.tensor_set(t, rng.uniform(-bound, bound, size=ne[::-1]).astype(np.float32).tobytes())
        w[name] = t
    ctx = gg.init(mem_size=64 << 20, no_alloc=True)
    inputs = gg.new_tensor_2d(ctx, gg.TYPE_F32, n_in, batch)
    gg.set_name(inputs, "inputs")
    gg.set_input(inputs)
    h = gg.relu(ctx, gg.add(ctx, gg.mul_mat(ctx, w["w1"], inputs), w["b1"]))
    h = gg.relu(ctx, gg.add(ctx, gg.mul_mat(ctx, w["w2"], h), w["b2"]))
    logits = gg.add(ctx, gg.mul_mat(ctx, w["w3"], h), w["b3"])
    gg.set_name(logits, "logits")
    gg.set_output(logits)
    return ctx_w, ctx, inputs, logits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--silent", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x, y = spirals(1000, 3, rng)                    # 3000 points: 2700 train+val, 300 test
    n_train = 2700
    ds_train, ds_test = dataset(x[:n_train], y[:n_train]), dataset(x[n_train:], y[n_train:])
    _, ctx, inputs, logits = build_model(2, args.hidden, 3, args.batch, rng)
    sched = gg.Sched([gg.backend_cpu_init(args.threads), gg.backend_reference_init()])
    pars = opt.OptimizerParams()
    pars.adamw.alpha = pars.sgd.alpha = args.lr
    optimizer = opt.OPTIMIZER_TYPE_ADAMW if args.optimizer == "adamw" else opt.OPTIMIZER_TYPE_SGD
    t0 = time.perf_counter()
    history, octx = opt.fit(sched, ctx, inputs, logits, ds_train, opt.LOSS_TYPE_CROSS_ENTROPY,
                            optimizer, lambda epoch: pars, nepoch=args.epochs,
                            val_split=0.1, silent=args.silent)
    dt = time.perf_counter() - t0
    test = opt.result_init()
    opt.epoch(octx, ds_test, None, test, 0)          # every batch evaluated, none trained
    acc, unc = opt.result_accuracy(test)
    loss, _ = opt.result_loss(test)
    first, last = history[0][0].loss_unc()[0], history[-1][0].loss_unc()[0]
    print(f"train loss {first:.4f} -> {last:.4f} over {args.epochs} epochs "
          f"({dt / args.epochs * 1e3:.1f} ms/epoch, {args.threads} threads)")
    print(f"val accuracy {100 * history[-1][1].accuracy_unc()[0]:.2f}%  "
          f"test accuracy {100 * acc:.2f}% \u00b1 {100 * unc:.2f}% (loss {loss:.4f}, "
          f"{test.ndata} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
