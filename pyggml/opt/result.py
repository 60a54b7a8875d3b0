"""ggml_opt_result: losses, predictions and correct counts accumulated over batches."""
from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field


@dataclass
class Result:
    ndata: int = 0
    loss: list = field(default_factory=list)     # one value per physical batch
    pred: list = field(default_factory=list)
    ncorrect: int = 0                            # -1: no accuracy (loss without labels)
    opt_period: int = 1
    loss_per_datapoint: bool = False

    def reset(self) -> None:
        self.ndata, self.loss, self.pred, self.ncorrect = 0, [], [], 0

    def loss_unc(self) -> tuple[float, float]:
        """ggml_opt_result_loss: (mean or sum of the batch losses, its uncertainty)."""
        n = len(self.loss)
        if n == 0:
            return 0.0, math.nan
        vals = [x * self.opt_period if self.loss_per_datapoint else x for x in self.loss]
        s, sq = sum(vals), sum(v * v for v in vals)
        mean = s / n
        loss = mean if self.loss_per_datapoint else s
        if n < 2:
            return loss, math.nan
        var = sq / n - mean * mean
        unc = math.sqrt(max(var, 0.0) / (n - 1)) if self.loss_per_datapoint else \
            math.sqrt(max(var, 0.0) * n / (n - 1))
        return loss, unc

    def accuracy_unc(self) -> tuple[float, float]:
        """ggml_opt_result_accuracy: (fraction correct, binomial uncertainty)."""
        if self.ncorrect < 0 or self.ndata == 0:
            return math.nan, math.nan
        acc = self.ncorrect / self.ndata
        unc = math.sqrt(acc * (1.0 - acc) / (self.ndata - 1)) if self.ndata >= 2 else math.nan
        return acc, unc


def result_init() -> Result:
    return Result()


def result_free(result: Result) -> None:
    pass


def result_reset(result: Result) -> None:
    result.reset()


def result_ndata(result: Result) -> int:
    return result.ndata


def result_loss(result: Result) -> tuple[float, float]:
    return result.loss_unc()


def result_pred(result: Result) -> list:
    return list(result.pred)


def result_accuracy(result: Result) -> tuple[float, float]:
    return result.accuracy_unc()
