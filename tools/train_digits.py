"""Train an MLP on scikit-learn's bundled 8x8 digits with pyggml (autodiff + ggml-opt's loop).

The data ship inside scikit-learn (load_digits: 1797 grey 8x8 images, 10 classes; no
download). Pixels are scaled to [0, 1]; a seeded shuffle puts 1440 images in training (10%
of them held out for validation each epoch) and 352 in the test set (5 are left over so both
are whole batches). The model is tools/train_mlp.py's: 64 -> hidden -> hidden -> 10 with
ReLU, cross entropy, AdamW.

    python tools/train_digits.py [--epochs 20] [--batch 32] [--hidden 64] [--threads 2]

Needs scikit-learn (`pip install -e '.[train]'`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import pyggml as gg
from pyggml import opt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mlp import build_model  # noqa: E402  (tools/ is not a package)
from train_mlp import dataset  # noqa: E402  (tools/ is not a package)

N_TRAIN, N_TEST = 1440, 352


def load(seed: int):
    """(x_train, y_train, x_test, y_test): x F32 [n, 64] in [0, 1], y one-hot F32 [n, 10]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[d.target]
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_TEST], y[N_TRAIN:N_TRAIN + N_TEST]


def train(epochs: int = 20, batch: int = 32, hidden: int = 64, lr: float = 0.003,
          threads: int = 2, seed: int = 42, silent: bool = True) -> dict:
    """Train and evaluate; returns losses, accuracies and the time per epoch."""
    if N_TRAIN % batch or N_TEST % batch:
        raise SystemExit(f"train_digits: --batch must divide {N_TRAIN} and {N_TEST}")
    rng = np.random.default_rng(seed)
    xtr, ytr, xte, yte = load(seed)
    ds_train, ds_test = dataset(xtr, ytr), dataset(xte, yte)
    _, ctx, inputs, logits = build_model(64, hidden, 10, batch, rng)
    sched = gg.Sched([gg.backend_cpu_init(threads), gg.backend_reference_init()])
    pars = opt.OptimizerParams()
    pars.adamw.alpha = lr
    t0, c0 = time.perf_counter(), time.process_time()
    history, octx = opt.fit(sched, ctx, inputs, logits, ds_train, opt.LOSS_TYPE_CROSS_ENTROPY,
                            opt.OPTIMIZER_TYPE_ADAMW, lambda epoch: pars, nepoch=epochs,
                            val_split=0.1, silent=silent)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0   # cpu: all threads
    test = opt.result_init()
    opt.epoch(octx, ds_test, None, test, 0)          # every batch evaluated, none trained
    return dict(first_loss=history[0][0].loss_unc()[0], last_loss=history[-1][0].loss_unc()[0],
                val_accuracy=history[-1][1].accuracy_unc()[0],
                test_accuracy=opt.result_accuracy(test)[0], test_loss=opt.result_loss(test)[0],
                n_test=test.ndata, seconds=dt, cpu_seconds=cpu, epochs=epochs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--silent", action="store_true")
    a = ap.parse_args(argv)
    r = train(a.epochs, a.batch, a.hidden, a.lr, a.threads, a.seed, a.silent)
    print(f"train loss {r['first_loss']:.4f} -> {r['last_loss']:.4f} over {a.epochs} epochs "
          f"({r['seconds']:.1f} s, {r['seconds'] / a.epochs * 1e3:.0f} ms/epoch, "
          f"{a.threads} threads; {r['cpu_seconds']:.1f} s CPU, load average "
          f"{os.getloadavg()[0]:.2f})")
    print(f"val accuracy {100 * r['val_accuracy']:.2f}%  test accuracy "
          f"{100 * r['test_accuracy']:.2f}% (loss {r['test_loss']:.4f}, {r['n_test']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
