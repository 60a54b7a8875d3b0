"""ggml_opt_dataset: datapoints and labels as two tensors, shuffled in shards, read in batches."""
from __future__ import annotations

import numpy as np

from .. import data
from ..context import init
from ..context import new_tensor_2d
from ..errors import DataError
from ..tensor import Tensor
from ..types import GGMLType


class Dataset:
    """data [ne_datapoint, ndata] and labels [ne_label, ndata] (F32 unless told otherwise),
    in a context of their own; `order` is the current permutation of the shards."""

    def __init__(self, type_data, type_label, ne_datapoint: int, ne_label: int, ndata: int,
                 ndata_shard: int = 1):
        if ne_datapoint <= 0 or ndata <= 0 or ne_label < 0 or ndata_shard <= 0:
            raise DataError(f"dataset_init: bad sizes ne_datapoint={ne_datapoint} "
                            f"ne_label={ne_label} ndata={ndata} ndata_shard={ndata_shard}")
        if ndata % ndata_shard:
            raise DataError(f"dataset_init: ndata={ndata} is not a multiple of "
                            f"ndata_shard={ndata_shard}")
        size = (ne_datapoint * 8 + ne_label * 8) * ndata + (1 << 16)
        self.ctx = init(mem_size=size)
        self.data = new_tensor_2d(self.ctx, GGMLType(type_data), ne_datapoint, ndata)
        self.labels = new_tensor_2d(self.ctx, GGMLType(type_label), ne_label, ndata) \
            if ne_label > 0 else None
        self.ndata = ndata
        self.ndata_shard = ndata_shard
        self.order = np.arange(ndata // ndata_shard)

    def _rows(self, t: Tensor, ibatch: int, n: int) -> np.ndarray:
        shards = n // self.ndata_shard
        rows = []
        for s in self.order[ibatch * shards:(ibatch + 1) * shards]:
            rows.append(np.arange(s * self.ndata_shard, (s + 1) * self.ndata_shard))
        src = data.strided(t) if t.type == GGMLType.F32 else data.read(t)   # zero-copy for F32
        return src.reshape(-1, t.ne[0])[np.concatenate(rows)]

    def get_batch(self, data_batch: Tensor, labels_batch: Tensor = None, ibatch: int = 0) -> None:
        n = data_batch.ne[1]
        if data_batch.ne[0] != self.data.ne[0]:
            raise DataError(f"dataset_get_batch: batch rows have {data_batch.ne[0]} values, "
                            f"datapoints {self.data.ne[0]}")
        if n % self.ndata_shard or (ibatch + 1) * n > self.ndata:
            raise DataError(f"dataset_get_batch: batch {ibatch} of {n} datapoints does not fit "
                            f"{self.ndata} datapoints in shards of {self.ndata_shard}")
        data.write(data_batch, self._rows(self.data, ibatch, n).reshape(data_batch.ne[::-1]))
        if labels_batch is not None and self.labels is not None:
            data.write(labels_batch, self._rows(self.labels, ibatch, n).reshape(labels_batch.ne[::-1]))

    def shuffle(self, rng: np.random.Generator, idata: int = -1) -> None:
        """Shuffle the shards of the first idata datapoints (all when idata < 0)."""
        n = len(self.order) if idata < 0 else idata // self.ndata_shard
        self.order[:n] = self.order[:n][rng.permutation(n)]


def dataset_init(type_data, type_label, ne_datapoint, ne_label, ndata, ndata_shard=1) -> Dataset:
    return Dataset(type_data, type_label, ne_datapoint, ne_label, ndata, ndata_shard)


def dataset_free(dataset: Dataset) -> None:
    dataset.ctx = None


def dataset_ndata(dataset: Dataset) -> int:
    return dataset.ndata


def dataset_data(dataset: Dataset) -> Tensor:
    return dataset.data


def dataset_labels(dataset: Dataset) -> Tensor:
    return dataset.labels


def dataset_shuffle(opt_ctx, dataset: Dataset, idata: int = -1) -> None:
    dataset.shuffle(opt_ctx.rng, idata)


def dataset_get_batch(dataset: Dataset, data_batch, labels_batch, ibatch: int) -> None:
    dataset.get_batch(data_batch, labels_batch, ibatch)
