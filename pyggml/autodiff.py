"""Backward graphs: ggml_build_backward_expand and the helpers gradient rules hand results to.

The rules themselves are declared with each op (`@grad_rule(OP)` in its ops file, see
ops/registry.GradRule); this module only walks the forward graph, decides which nodes need
a gradient, calls the rules last node first, and adds the gradient nodes to the graph, as
ggml.c does:

- a node needs a gradient when it is a parameter or the loss, or when one of its sources
  (other than those its rule ignores) needs one; I32 nodes never do;
- the loss always gets an F32 accumulator (graph_reset sets it to 1); `grad_accs[i]`, when
  given, is the accumulator of nodes[i] (gradient accumulation over several computes: the
  contributions are added into it in place);
- contributions to one source are summed in graph order (add_or_set & co.), each partial
  sum named "grad for <source>".
"""
from __future__ import annotations

from typing import Optional
from typing import Sequence

from .context import new_tensor
from .errors import GGMLError
from .errors import GraphError
from .errors import describe
from .graph import CGraph
from .ops import API
from .ops.binary import add
from .ops.binary import add1
from .ops.binary import add1_inplace
from .ops.binary import add_inplace
from .ops.binary import sub
from .ops.binary import sub_inplace
from .ops.copy import cont
from .ops.shape import acc
from .ops.shape import acc_inplace
from .ops.shape import repeat
from .ops.unary import neg
from .ops.unary import scale
from .tensor import TENSOR_FLAG_LOSS
from .tensor import TENSOR_FLAG_PARAM
from .tensor import Tensor
from .tensor import are_same_shape
from .tensor import format_name
from .tensor import is_contiguous
from .types import GGMLType

_GRAD_TYPES = (GGMLType.F32, GGMLType.F16)


class Grads:
    """What a gradient rule sees: the node's context, which sources need a gradient, and
    ggml's add_or_set / sub_or_set / add1_or_set / acc_or_set."""

    __slots__ = ("ctx", "gf", "node", "_needed", "_ignore")

    def __init__(self, ctx, gf: CGraph, node: Tensor, needed: set, ignore: tuple):
        self.ctx, self.gf, self.node, self._needed, self._ignore = ctx, gf, node, needed, ignore

    def needs(self, i: int) -> bool:
        s = self.node.src[i]
        return s is not None and i not in self._ignore and id(s) in self._needed

    def _set(self, i: int, t: Tensor) -> None:
        src = self.node.src[i]
        format_name(t, "grad for %s", src.name)
        self.gf.grads[id(src)] = t
        self.gf.expand(t)

    def _current(self, i: int):
        key = id(self.node.src[i])
        return self.gf.grads.get(key), key in self.gf.grad_accs

    def fn(self, *names):
        """The public op functions of other families by name (ggml_mul ...): rules use them
        through here, so no op file imports another's at rule time (no cycles between files)."""
        fns = tuple(API[n] for n in names)
        return fns[0] if len(fns) == 1 else fns

    def contiguous(self, t: Tensor) -> Tensor:
        """t itself when contiguous, else ggml_cont(t) (the view rules need no copy import)."""
        return t if is_contiguous(t) else cont(self.ctx, t)

    def add(self, i: int, t: Tensor) -> None:
        cur, inplace = self._current(i)
        self._set(i, t if cur is None else (add_inplace if inplace else add)(self.ctx, cur, t))

    def sub(self, i: int, t: Tensor) -> None:
        cur, inplace = self._current(i)
        self._set(i, neg(self.ctx, t) if cur is None else
                  (sub_inplace if inplace else sub)(self.ctx, cur, t))

    def add1(self, i: int, t: Tensor) -> None:
        cur, inplace = self._current(i)
        self._set(i, repeat(self.ctx, t, self.node.src[i]) if cur is None else
                  (add1_inplace if inplace else add1)(self.ctx, cur, t))

    def acc(self, i: int, t: Tensor, nb1: int, nb2: int, nb3: int, offset: int) -> None:
        cur, inplace = self._current(i)
        if cur is None:      # ggml: scale(src, 0) as the zero base (NaN if src holds inf/NaN)
            self._set(i, acc(self.ctx, scale(self.ctx, self.node.src[i], 0.0), t,
                             nb1, nb2, nb3, offset))
        else:
            self._set(i, (acc_inplace if inplace else acc)(self.ctx, cur, t, nb1, nb2, nb3, offset))


def _aliases_only(node: Tensor, ignore: tuple) -> bool:
    """A result that is a view of one of its sources is differentiable only when that source
    is one whose gradient is ignored (cpy into its target) or when the op is a view."""
    if node.view_src is None or node.op.view:
        return True
    return any(j in ignore and s is not None and (s.view_src or s) is node.view_src
               for j, s in enumerate(node.src))


def build_backward_expand(ctx, gf: CGraph, grad_accs: Optional[Sequence] = None) -> None:
    """ggml_build_backward_expand: add to gf the nodes computing the gradient of the loss
    with respect to every parameter it depends on. Read them with graph_get_grad."""
    if not isinstance(gf, CGraph):
        raise GraphError(f"build_backward_expand: expected a CGraph, got {type(gf).__name__}")
    if gf.grads is None:
        raise GraphError("build_backward_expand: the graph was made without gradients; use "
                         "new_graph_custom(ctx, size, grads=True)")
    nodes = list(gf.nodes)
    if not nodes:
        raise GraphError("build_backward_expand: the graph has no nodes")
    if grad_accs is not None and len(grad_accs) < len(nodes):
        raise GraphError(f"build_backward_expand: grad_accs has {len(grad_accs)} entries for "
                         f"{len(nodes)} nodes (one per node, None where there is none)")
    gf.grads.clear()
    gf.grad_accs.clear()
    if not any(n.flags & TENSOR_FLAG_PARAM for n in nodes):
        raise GraphError("build_backward_expand: no trainable parameters found, did you forget "
                         "to call set_param?")
    if not any(n.flags & TENSOR_FLAG_LOSS for n in nodes):
        raise GraphError("build_backward_expand: no training loss found, did you forget to "
                         "call set_loss?")
    needed: set = set()
    for i, node in enumerate(nodes):
        if node.type == GGMLType.I32:
            continue
        rule = node.op.grad if node.op is not None else None
        ignore = rule.ignore if rule is not None else ()
        needs = bool(node.flags & (TENSOR_FLAG_PARAM | TENSOR_FLAG_LOSS))
        for j, s in enumerate(node.src):
            if s is None or j in ignore or id(s) not in needed:
                continue
            if s.type not in _GRAD_TYPES:
                raise GGMLError(f"build_backward_expand: {node.op_name} node {describe(node)} "
                                f"needs the gradient of src[{j}] {describe(s)}, which is "
                                f"{s.type.tname}; gradients flow through F32 and F16 only")
            needs = True
            break
        if not needs:
            continue
        if node.op is not None and not _aliases_only(node, ignore):
            raise GGMLError(f"build_backward_expand: in-place {node.op_name} node "
                            f"{describe(node)} is on the gradient path; in-place operations "
                            f"are not differentiable (use the out-of-place op)")
        acc_t = grad_accs[i] if grad_accs is not None else None
        if acc_t is not None:
            if not are_same_shape(acc_t, node):
                raise GraphError(f"build_backward_expand: grad_accs[{i}] {describe(acc_t)} "
                                 f"does not have the shape of node {describe(node)}")
            gf.grad_accs[id(node)] = gf.grads[id(node)] = acc_t
        elif node.flags & TENSOR_FLAG_LOSS:      # the loss always gets an accumulator
            acc_t = new_tensor(ctx, GGMLType.F32, 4, node.ne)
            gf.grad_accs[id(node)] = gf.grads[id(node)] = acc_t
        needed.add(id(node))

    for node in reversed(nodes):
        _compute_backward(ctx, gf, node, needed)


def _compute_backward(ctx, gf: CGraph, node: Tensor, needed: set) -> None:
    grad = gf.grads.get(id(node))
    if grad is None or node.op is None:
        return
    rule = node.op.grad
    if rule is None:
        raise GGMLError(f"build_backward_expand: {node.op_name} has no gradient rule, and the "
                        f"loss depends through node {describe(node)} on a parameter")
    g = Grads(ctx, gf, node, needed, rule.ignore)
    rule.fn(g, node, grad)
    for j, s in enumerate(node.src):
        if g.needs(j):
            got = gf.grads.get(id(s))
            if got is None or not are_same_shape(got, s):
                raise GGMLError(f"build_backward_expand: the {node.op_name} rule gave src[{j}] "
                                f"{describe(s)} the gradient "
                                f"{describe(got) if got is not None else 'None'}")
