"""ReferenceBackend: single-threaded, clarity over speed; each node runs its OpDef.reference.

Sources are read as float64 (quantized and half types dequantized, views and strides
honoured), the reference computes in float64 where that makes a better oracle, and the
result is converted to the node's type exactly like ggml's CPU backend stores it (f32 -> f16
rounding, quantization by the CPU's from_float: the reference quantizer except Q8_0/Q8_1).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

from ... import data
from ...graph import CGraph
from ...tensor import Tensor
from ..base import Backend
from ..base import EvalCallback
from ..base import is_computed
from ..base import node_failed
from .memo import MatMulMemo


def compute_node_reference(node: Tensor, unread: int = -1) -> None:
    """node's OpDef.reference over its sources read as float64 (src[unread], one the
    reference does not read, passed as None) and its results stored as ggml's CPU stores."""
    op = node.op
    ins = [data.read(s) if s is not None and s is not node and i != unread else None
           for i, s in enumerate(node.src)]
    result = op.reference(node, ins, op.p(node))
    if result is None:           # the reference wrote its outputs itself (byte copies)
        return
    if not isinstance(result, dict):
        result = {"dst": result}
    for k, v in result.items():
        data.write(node if k == "dst" else node.src[k], v, cpu=True)


class ReferenceBackend(Backend):
    name = "reference"
    memo: Optional[MatMulMemo] = None        # (subclasses that skip __init__ run without it)

    def __init__(self, memo: bool = True):
        # a MUL_MAT run again recomputes only what changed (memo.py; bit for bit the same)
        self.memo = MatMulMemo() if memo else None

    def supports_op(self, node: Tensor) -> bool:
        return node.op is None or node.op.view or node.op.reference is not None

    def compute_node(self, node: Tensor) -> None:
        if self.memo is not None and node.op.name == "MUL_MAT":
            out = self.memo.mul_mat(node)
            if out is not None:
                data.write(node, out, cpu=True)
                return
        compute_node_reference(node)

    def only_writing(self, t: Tensor):
        """Context: until it ends the caller writes no memory but t's between graph runs
        (grad mode's finite differences); the MUL_MAT memo then compares other leaves once."""
        return self.memo.only_writing(t) if self.memo is not None else nullcontext()

    def graph_compute(self, gf: CGraph, eval_cb: Optional[EvalCallback] = None) -> None:
        self.check_supported(gf)
        self.alloc_graph(gf)
        if self.memo is not None:
            self.memo.graph_nodes = gf.nodes
        for i, node in enumerate(gf.nodes):
            want = eval_cb(node, True) if eval_cb else False
            if is_computed(node):
                try:
                    self.compute_node(node)
                except Exception as e:  # name the node; keep the cause chained
                    raise node_failed(node, i, e) from e
            if want and not eval_cb(node, False):
                break


def backend_reference_init() -> ReferenceBackend:
    return ReferenceBackend()
