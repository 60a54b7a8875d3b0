"""The backend interface (ggml_backend_*): a name, which ops it supports, compute a graph."""
from __future__ import annotations

import os
from typing import Callable
from typing import Optional

from ..errors import ComputeError
from ..errors import UnsupportedError
from ..errors import describe
from ..graph import CGraph
from ..sched.alloc import alloc_graph
from ..tensor import Buffer
from ..tensor import Tensor

# eval callback, as ggml_backend_sched_eval_callback: cb(tensor, ask) -> bool.
# With ask=True it answers whether it wants to see this node; after the node ran it is
# called again with ask=False, and returning False stops the graph there.
EvalCallback = Callable[[Tensor, bool], bool]

# gf.cache key of a graph made of a slice of another graph's nodes (a scheduler's split):
# a weakref to that graph, whose per-node facts a backend may reuse (they are the same nodes)
PART_OF = "part of"


def default_n_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def is_computed(node) -> bool:
    """Nodes a backend runs: they have an op, it is not a view, and the result is not empty
    (ggml's CPU skips empty results too: ggml_compute_forward returns on ggml_is_empty)."""
    return node.op is not None and not node.op.view and 0 not in node.ne


class Backend:
    name = "base"

    def supports_op(self, node: Tensor) -> bool:
        raise NotImplementedError

    def supports_graph(self, gf: CGraph) -> Optional[list]:
        """supports_op of every node of gf at once (a list in gf.nodes order), for a
        backend that answers a whole graph cheaper than node by node (a scheduler asks it
        once per graph it plans); None: ask supports_op per node."""
        return None

    def support_epoch(self) -> int:
        """A number that changes whenever this backend's support answers may have changed
        (a scheduler's kept plan is keyed by it); 0: they never change at run time."""
        return 0

    def graph_compute(self, gf: CGraph, eval_cb: Optional[EvalCallback] = None) -> None:
        raise NotImplementedError

    def set_n_threads(self, n_threads: int) -> None:
        pass

    def alloc_graph(self, gf: CGraph) -> None:
        """Give data to every tensor of gf that lacks it (ggml_backend_sched_alloc_graph;
        a scheduler also assigns and splits here)."""
        alloc_graph(gf)

    def alloc_buffer(self, nbytes: int, name: str = "") -> Buffer:
        return Buffer(nbytes, name=name or self.name, backend=self.name)

    def free(self) -> None:
        pass

    def check_supported(self, gf: CGraph) -> None:
        """Fail before computing anything if a node is not supported here."""
        for i, node in enumerate(gf.nodes):
            if node.op is not None and not node.op.view and not self.supports_op(node):
                raise self.unsupported_node(i, node)

    def unsupported_node(self, i: int, node: Tensor) -> UnsupportedError:
        return UnsupportedError(
            f"backend {self.name} does not support node {i} {node.op_name} "
            f"{describe(node)} with sources "
            f"{[describe(s) for s in node.src if s is not None]}; "
            f"use a scheduler with a fallback backend")

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


def node_failed(node: Tensor, index: int, err: BaseException) -> ComputeError:
    return ComputeError(f"node {index} {node.op_name} {describe(node)} failed: {err}")
