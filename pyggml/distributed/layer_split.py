"""Layer split (ggml's RPC backend): contiguous layer ranges, their weights and their KV
cache live on the workers; the token embedding and the output head stay on the driver.

The scheduler does the rest: a node reading a worker's weights or cache runs there, the
norms/ropes/adds between follow (DistributedSched), and one hidden state per token crosses
the network at each range boundary."""
from __future__ import annotations

import re

from ..errors import GGMLError
from ..tensor import Buffer
from .worker import root_bytes

_LAYER = re.compile(r"^blk\.(\d+)\.")
CACHE_LISTS = ("k", "v", "hot_k", "hot_v", "cold_k", "cold_v")   # per-layer tensor lists


def layer_ranges(n_layer: int, n_workers: int) -> list:
    """Contiguous ranges, the first n_layer % n_workers one layer longer."""
    if n_workers < 1 or n_workers > n_layer:
        raise GGMLError(f"layer split: {n_workers} workers for {n_layer} layers (need 1.."
                        f"{n_layer})")
    base, extra = divmod(n_layer, n_workers)
    out, start = [], 0
    for w in range(n_workers):
        n = base + (w < extra)
        out.append(range(start, start + n))
        start += n
    return out


def owner_of_layer(ranges: list, il: int) -> int:
    return next(w for w, r in enumerate(ranges) if il in r)


def tag_local(t, backend_name: str) -> None:
    """Re-home a root tensor into a buffer tagged with a local backend's name (no copy), so
    the scheduler keeps the nodes reading it there."""
    if t.buffer is not None and t.buffer.backend == backend_name:
        return
    t.set_buffer(Buffer.from_array(root_bytes(t), name=t.name, backend=backend_name), 0)


def place_weights(weights: dict, ranges: list, workers: list, driver_name: str) -> None:
    """blk.N.* weights to the worker owning layer N (uploaded once); the rest tagged for the
    driver's backend."""
    per_worker = [[] for _ in workers]
    for name, t in weights.items():
        m = _LAYER.match(name)
        if m:
            per_worker[owner_of_layer(ranges, int(m.group(1)))].append(t)
        elif not name.startswith("rope_freqs"):      # shared by every layer: sent by value
            tag_local(t, driver_name)
    for w, ts in zip(workers, per_worker):
        w.adopt(ts)


def cache_layer_tensors(cache, il: int) -> list:
    return [getattr(cache, a)[il] for a in CACHE_LISTS if hasattr(cache, a)]


def place_cache(cache, ranges: list, workers: list) -> None:
    """Each layer's K/V stores to the worker owning the layer (zeroed there, never sent)."""
    for il in range(cache.n_layer):
        workers[owner_of_layer(ranges, il)].adopt(cache_layer_tensors(cache, il), upload=False)
