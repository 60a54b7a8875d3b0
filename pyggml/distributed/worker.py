"""The process side of a Ray worker backend: its own buffers and mirrors of the subgraphs it
computes (a plain class; backend.py wraps it in ray.remote).

The driver describes each subgraph once (`describe` in backend.py: one entry per tensor, in
an order where sources come first). The worker rebuilds it over its own memory:

    res    a resident tensor (weights, KV cache): uploaded once (or zero-filled), kept here
    in     an input the driver sends by value with every compute (activations, masks, ids)
    node   memory a node of the subgraph writes: given by the worker's graph allocator
    view   a view of an earlier entry (view_src, view_offs, nb as on the driver)

and computes it on its own scheduler (the Numba CPU backend, the reference backend for the
rest). A compute returns the bytes of the roots the driver asked to export (those read by
another split, or the graph's output)."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ..errors import GGMLError
from ..graph import CGraph
from ..tensor import TENSOR_FLAG_INPUT
from ..tensor import TENSOR_FLAG_OUTPUT
from ..tensor import Buffer
from ..tensor import Tensor
from ..tensor import nbytes
from ..types import GGMLType

MISSING = "missing graph"        # compute() answer when the driver must send the description
KEEP_MIRRORS = 256               # mirrored subgraphs kept (least recently used dropped): a
                                 # context-split step has one per layer per worker


def root_bytes(t: Tensor) -> np.ndarray:
    """The bytes of a root tensor, as a uint8 view of its buffer."""
    return t.buffer.data[t.offs:t.offs + nbytes(t)]


class Mirror:
    """A subgraph rebuilt over the worker's memory."""

    def __init__(self, spec: list, resident: dict):
        self.tensors: list[Tensor] = []
        self.inputs: list[Tensor] = []
        self.exports: list[Tensor] = []
        nodes = []
        for e in spec:
            kind, ty, ne, nb = e["kind"], GGMLType(e["type"]), e["ne"], e["nb"]
            if kind == "res":
                t = resident.get(e["key"])
                if t is None:
                    raise GGMLError(f"worker {os.getpid()}: resident tensor {e['name']!r} "
                                    f"(key {e['key']}) was never uploaded")
            elif e["view"] >= 0:
                t = Tensor(None, ty, ne, nb=nb, view_src=self.tensors[e["view"]],
                           view_offs=e["offs"])
            else:
                t = Tensor(None, ty, ne, nb=nb)
                if kind == "in":
                    t.set_buffer(Buffer(max(nbytes(t), 1), name="input"), 0)
                    t.flags |= TENSOR_FLAG_INPUT
                    self.inputs.append(t)
            if e.get("op") is not None:
                from ..ops.registry import OPS
                from ..ops.registry import frozen
                t.op = OPS[e["op"]]
                t.op_params = frozen(np.frombuffer(e["params"], dtype=np.int32))
                t.src = [self.tensors[i] if i >= 0 else None for i in e["src"]]
                if e["self_src"] >= 0:                 # ggml_cast writes into itself
                    t.src[e["self_src"]] = t
                nodes.append(t)
            if kind != "res":
                t.flags |= e["flags"]
                t.name = e["name"]
            self.tensors.append(t)
        for i in spec_exports(spec):
            self.tensors[i].flags |= TENSOR_FLAG_OUTPUT     # the allocator keeps its memory
            self.exports.append(self.tensors[i])
        self.graph = CGraph(max(1, len(nodes)))
        self.graph.nodes = nodes
        self.graph.version = 1


def spec_exports(spec: list) -> list:
    return [i for i, e in enumerate(spec) if e.get("export")]


class Worker:
    """One worker: resident tensors, mirrored subgraphs, a local scheduler."""

    def __init__(self, n_threads: int = 1, backend: str = "numba"):
        import pyggml as gg
        self.sched = gg.sched_new([gg.backend_init_by_name(backend, n_threads),
                                   gg.backend_reference_init()])
        self.resident: dict[int, Tensor] = {}
        self.mirrors: OrderedDict = OrderedDict()

    def pid(self) -> int:
        return os.getpid()

    def adopt(self, entries: list) -> int:
        """Make resident tensors: (key, type, ne, bytes or None for zeros). Returns bytes held."""
        for key, ty, ne, payload in entries:
            t = Tensor(None, GGMLType(ty), ne)
            t.set_buffer(Buffer(max(nbytes(t), 1), name="resident"), 0)
            if payload is not None:
                root_bytes(t)[...] = np.frombuffer(payload, dtype=np.uint8) \
                    if not isinstance(payload, np.ndarray) else payload
            self.resident[key] = t
        return sum(nbytes(t) for t in self.resident.values())

    def reset(self) -> int:
        """Forget every resident tensor and mirror: the worker is handed to another group."""
        self.resident.clear()
        self.mirrors.clear()
        return os.getpid()

    def release(self, keys: list) -> None:
        for k in keys:
            self.resident.pop(k, None)
        self.mirrors.clear()          # a mirror may point at a released tensor

    def compute(self, gkey, spec, inputs: list):
        m = self.mirrors.get(gkey)
        if m is None:
            if spec is None:
                return MISSING
            m = self.mirrors[gkey] = Mirror(spec, self.resident)
            while len(self.mirrors) > KEEP_MIRRORS:
                self.mirrors.popitem(last=False)
        self.mirrors.move_to_end(gkey)
        self.sched.alloc_graph(m.graph)        # inputs' memory exists before they are written
        for t, b in zip(m.inputs, inputs):
            root_bytes(t)[...] = b
        self.sched.graph_compute(m.graph)
        self.sched.release()
        return [root_bytes(t) for t in m.exports]

    def stall(self, seconds: float) -> None:
        """Sleep (tests: a worker that stops answering)."""
        import time
        time.sleep(seconds)
