"""Time per training step of tools/train_digits.py's MLP: pyggml (numba) beside PyTorch CPU.

Same model (64 -> hidden -> hidden -> 10, ReLU, cross entropy, AdamW lr 0.003), same batch,
same data (the digits when scikit-learn is there, else seeded noise of that shape), same
threads. One step = load a batch, forward, backward, optimizer step, read the loss (and
pyggml's accuracy count, which its opt graph computes anyway). The two sides alternate in
rounds of --steps steps inside one process, so both see the same machine load; the report
is the median and spread over rounds of wall and CPU time per step, and their ratio.

    python tools/bench_train_mlp.py [--rounds 7] [--steps 200] [--batch 32] [--threads 2]

Needs torch (CPU wheel) and, for the real digits, scikit-learn.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mlp import build_model  # noqa: E402  (tools/ is not a package)
from train_mlp import dataset  # noqa: E402  (tools/ is not a package)

import pyggml as gg  # noqa: E402
from pyggml import opt  # noqa: E402


def _data(n: int, rng):
    try:
        from train_digits import load
        x, y, _, _ = load(42)
        return x[:n], y[:n]
    except ImportError:
        return (rng.uniform(0, 1, (n, 64)).astype(np.float32),
                np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)])


class PyggmlSide:
    def __init__(self, x, y, batch, hidden, threads, lr):
        rng = np.random.default_rng(0)
        self.ds = dataset(x, y)
        _, ctx, inputs, logits = build_model(64, hidden, 10, batch, rng)
        sched = gg.Sched([gg.backend_cpu_init(threads), gg.backend_reference_init()])
        pars = opt.OptimizerParams()
        pars.adamw.alpha = lr
        self.octx = opt.opt_init(opt.OptParams(
            backend_sched=sched, ctx_compute=ctx, inputs=inputs, outputs=logits,
            loss_type=opt.LOSS_TYPE_CROSS_ENTROPY, get_opt_pars=lambda ud: pars))
        self.nb = len(x) // batch
        self.i = 0

    def step(self):
        r = opt.result_init()
        self.octx.alloc(True)
        self.ds.get_batch(self.octx.inputs, self.octx.labels, self.i % self.nb)
        self.octx.eval(r)
        self.i += 1
        return r.loss[-1]


class TorchSide:
    def __init__(self, x, y, batch, hidden, threads, lr):
        import torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y.argmax(1))
        self.batch, self.nb, self.i = batch, len(x) // batch, 0
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def step(self):
        b = (self.i % self.nb) * self.batch
        xb, yb = self.x[b:b + self.batch], self.y[b:b + self.batch]
        self.opt.zero_grad(set_to_none=True)
        out = self.model(xb)
        loss = self.loss_fn(out, yb)
        loss.backward()
        self.opt.step()
        self.i += 1
        return float(loss.item())


def _time(side, steps):
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        side.step()
    return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.003)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x, y = _data(1440, rng)
    n = len(x) // a.batch * a.batch
    x, y = x[:n], y[:n]
    sides = {"pyggml": PyggmlSide(x, y, a.batch, a.hidden, a.threads, a.lr),
             "torch": TorchSide(x, y, a.batch, a.hidden, a.threads, a.lr)}
    for s in sides.values():          # warm-up: compile, allocate, first-touch
        _time(s, 20)
    wall = {k: [] for k in sides}
    cpu = {k: [] for k in sides}
    for r in range(a.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for k in order:
            w, c = _time(sides[k], a.steps)
            wall[k].append(w)
            cpu[k].append(c)
    load = os.getloadavg()
    print(f"MLP 64-{a.hidden}-{a.hidden}-10, batch {a.batch}, {a.threads} threads, "
          f"{a.rounds} rounds x {a.steps} steps, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    for k in sides:
        w, c = np.array(wall[k]) * 1e6, np.array(cpu[k]) * 1e6
        print(f"  {k:7s} wall/step median {np.median(w):8.1f} us (min {w.min():.1f}, max "
              f"{w.max():.1f})  cpu/step median {np.median(c):8.1f} us")
    ratios = np.array(wall["pyggml"]) / np.array(wall["torch"])
    cratios = np.array(cpu["pyggml"]) / np.array(cpu["torch"])
    print(f"  pyggml/torch wall ratio per round: median {np.median(ratios):.2f} "
          f"(min {ratios.min():.2f}, max {ratios.max():.2f}); cpu ratio median "
          f"{np.median(cratios):.2f}")
    print(f"  final losses: pyggml {sides['pyggml'].step():.4f} torch {sides['torch'].step():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
