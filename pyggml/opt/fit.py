"""ggml_opt_epoch, its progress bar, and ggml_opt_fit (the whole training loop)."""
from __future__ import annotations

import sys
import time

from ..errors import GGMLError
from .context import LOSS_TYPE_MEAN
from .context import OPTIMIZER_TYPE_ADAMW
from .context import OptParams
from .context import get_default_optimizer_params
from .context import opt_init
from .dataset import Dataset
from .result import Result

_BLOCKS = ["\u258F", "\u258E", "\u258D", "\u258C", "\u258B", "\u258A", "\u2589", "\u2588"]


def epoch(opt_ctx, dataset: Dataset, result_train: Result = None, result_eval: Result = None,
          idata_split: int = -1, callback_train=None, callback_eval=None) -> None:
    """ggml_opt_epoch: train on the batches before idata_split, evaluate the rest."""
    inputs, labels = opt_ctx.inputs, opt_ctx.labels
    if dataset.data.ne[0] != inputs.ne[0]:
        raise GGMLError(f"opt_epoch: datapoints have {dataset.data.ne[0]} values, inputs "
                        f"{inputs.ne[0]}")
    ndata, ndata_batch = dataset.ndata, inputs.ne[1]
    if ndata % ndata_batch:
        raise GGMLError(f"opt_epoch: {ndata} datapoints are not a multiple of the batch "
                        f"{ndata_batch}")
    nbatches = ndata // ndata_batch
    idata_split = ndata if idata_split < 0 else idata_split
    if idata_split % ndata_batch:
        raise GGMLError(f"opt_epoch: idata_split={idata_split} is not a multiple of the batch "
                        f"{ndata_batch}")
    ibatch_split = idata_split // ndata_batch
    t0 = time.perf_counter()
    for ibatch in range(ibatch_split):
        opt_ctx.alloc(True)
        dataset.get_batch(inputs, labels, ibatch)
        opt_ctx.eval(result_train)
        if callback_train:
            callback_train(True, opt_ctx, dataset, result_train, ibatch + 1, ibatch_split, t0)
    t0 = time.perf_counter()
    for ibatch in range(ibatch_split, nbatches):
        opt_ctx.alloc(False)
        dataset.get_batch(inputs, labels, ibatch)
        opt_ctx.eval(result_eval)
        if callback_eval:
            callback_eval(False, opt_ctx, dataset, result_eval, ibatch + 1 - ibatch_split,
                          nbatches - ibatch_split, t0)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_line(train: bool, batch_size: int, result: Result, ibatch: int, ibatch_max: int,
                  elapsed: float) -> str:
    """ggml_opt_epoch_callback_progress_bar's line: 8 blocks with eighths, data, loss±,
    acc±, time and ETA."""
    bar = []
    for j in range(8):
        fill = next((k for k in range(8, 0, -1) if ibatch_max * (8 * j + k) // 8 < 8 * ibatch), 0)
        bar.append(_BLOCKS[fill - 1] if fill else " ")
    loss, loss_unc = result.loss_unc()
    acc, acc_unc = result.accuracy_unc()
    eta = elapsed * (ibatch_max - ibatch) / ibatch if ibatch else 0.0
    return (f"{'train: ' if train else 'val:   '}[{''.join(bar)}] "
            f"data={ibatch * batch_size:07d}/{ibatch_max * batch_size:07d} "
            f"loss={loss:.5f}\u00b1{loss_unc:.5f} acc={100 * acc:.2f}\u00b1{100 * acc_unc:.2f}% "
            f"t={_hms(elapsed)} ETA={_hms(eta)} ")


def epoch_callback_progress_bar(train, opt_ctx, dataset, result, ibatch, ibatch_max, t_start,
                                file=None):
    """ggml_opt_epoch_callback_progress_bar: one line on stderr, redrawn with \\r."""
    f = file or sys.stderr
    f.write(progress_line(train, opt_ctx.inputs.ne[1], result, ibatch, ibatch_max,
                          time.perf_counter() - t_start) + "\r")
    if ibatch == ibatch_max:
        f.write("\n")
    f.flush()


def fit(backend_sched, ctx_compute, inputs, outputs, dataset: Dataset,
        loss_type: int = LOSS_TYPE_MEAN, optimizer: int = OPTIMIZER_TYPE_ADAMW,
        get_opt_pars=get_default_optimizer_params, nepoch: int = 1, nbatch_logical: int = None,
        val_split: float = 0.0, silent: bool = False, callback=None):
    """ggml_opt_fit: shuffle, then nepoch epochs of training on the first (1 - val_split) of
    the dataset and validation on the rest, with a progress bar unless silent. get_opt_pars
    receives the current epoch (1-based). Returns (per-epoch list of (train Result, val
    Result), the OptContext) so the caller can read losses and accuracies."""
    t_start = time.perf_counter()
    ndata = dataset.ndata
    nbatch_physical = inputs.ne[1]
    nbatch_logical = nbatch_logical or nbatch_physical
    if ndata % nbatch_logical or nbatch_logical % nbatch_physical:
        raise GGMLError(f"opt_fit: ndata={ndata} must be a multiple of nbatch_logical="
                        f"{nbatch_logical}, itself a multiple of the input batch {nbatch_physical}")
    if not 0.0 <= val_split < 1.0:
        raise GGMLError(f"opt_fit: val_split={val_split} must be in [0, 1)")
    opt_period = nbatch_logical // nbatch_physical
    nbatches_logical = ndata // nbatch_logical
    ibatch_split = int((1.0 - val_split) * nbatches_logical) * opt_period
    idata_split = ibatch_split * nbatch_physical
    ep = [1]
    params = OptParams(backend_sched=backend_sched, ctx_compute=ctx_compute, inputs=inputs,
                       outputs=outputs, loss_type=loss_type, opt_period=opt_period,
                       get_opt_pars=lambda ud: get_opt_pars(ep[0]), optimizer=optimizer)
    opt_ctx = opt_init(params)
    if nbatch_logical < ndata:
        dataset.shuffle(opt_ctx.rng, -1)          # train and validation data alike
    cb = None if silent else epoch_callback_progress_bar
    history = []
    for e in range(1, nepoch + 1):
        ep[0] = e
        if nbatch_logical < idata_split:
            dataset.shuffle(opt_ctx.rng, idata_split)
        rt, rv = Result(), Result()
        if not silent:
            print(f"opt_fit: epoch {e:04d}/{nepoch:04d}:", file=sys.stderr)
        epoch(opt_ctx, dataset, rt, rv, idata_split, cb, cb)
        if not silent:
            print(file=sys.stderr)
        history.append((rt, rv))
        if callback is not None:
            callback(e, rt, rv)
    if not silent:
        print(f"opt_fit: training took {_hms(time.perf_counter() - t_start)}", file=sys.stderr)
    return history, opt_ctx
