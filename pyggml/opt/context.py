"""ggml_opt_context: the forward graph, its backward graph and the optimizer graph of a model.

As ggml-opt (static graphs): opt_init adds the loss (and for cross entropy the labels, the
predictions and the count of correct ones) to the outputs, builds
- gf: forward (inputs -> outputs -> loss),
- gb_grad: gf plus the backward pass (gradient accumulators for the parameters when an
  optimizer step spans several physical batches, opt_period > 1),
- gb_opt: gb_grad plus one optimizer step op per parameter (OPT_STEP_ADAMW with its momenta,
  or OPT_STEP_SGD) reading the step's hyper-parameters from a small input tensor,
and gives every tensor that lacks data its own memory, once. opt_alloc picks the graph of
the next evaluation, opt_eval fills the hyper-parameters (AdamW's bias corrections from the
iteration count), computes it and adds loss, predictions and accuracy to a Result.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Callable
from typing import Optional

import numpy as np

from .. import data
from ..autodiff import build_backward_expand
from ..context import new_tensor
from ..context import new_tensor_1d
from ..errors import GGMLError
from ..graph import CGraph
from ..graph import graph_cpy
from ..graph import graph_get_grad
from ..graph import graph_reset
from ..graph import new_graph_custom
from ..ops.binary import sub
from ..ops.loss import cross_entropy_loss
from ..ops.opt_step import opt_step_adamw
from ..ops.opt_step import opt_step_sgd
from ..ops.reduce import argmax
from ..ops.reduce import count_equal
from ..ops.reduce import sum as sum_
from ..ops.unary import scale
from ..ops.unary import sqr
from ..tensor import TENSOR_FLAG_LOSS
from ..tensor import TENSOR_FLAG_PARAM
from ..tensor import Buffer
from ..tensor import Tensor
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import set_input
from ..tensor import set_loss
from ..tensor import set_name
from ..tensor import set_output
from ..types import GGMLType
from .result import Result

LOSS_TYPE_MEAN, LOSS_TYPE_SUM, LOSS_TYPE_CROSS_ENTROPY, LOSS_TYPE_MEAN_SQUARED_ERROR = range(4)
BUILD_TYPE_FORWARD, BUILD_TYPE_GRAD, BUILD_TYPE_OPT = 10, 20, 30
OPTIMIZER_TYPE_ADAMW, OPTIMIZER_TYPE_SGD = 0, 1
_OPTIMIZER_NAMES = {OPTIMIZER_TYPE_ADAMW: "adamw", OPTIMIZER_TYPE_SGD: "sgd"}


@dataclass
class AdamWParams:
    alpha: float = 0.001      # learning rate
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    wd: float = 0.0           # weight decay, 0 to disable


@dataclass
class SGDParams:
    alpha: float = 1e-3
    wd: float = 0.0


@dataclass
class OptimizerParams:
    adamw: AdamWParams = field(default_factory=AdamWParams)
    sgd: SGDParams = field(default_factory=SGDParams)


def get_default_optimizer_params(userdata=None) -> OptimizerParams:
    """ggml_opt_get_default_optimizer_params."""
    return OptimizerParams()


def get_constant_optimizer_params(userdata: OptimizerParams) -> OptimizerParams:
    """ggml_opt_get_constant_optimizer_params: userdata is the OptimizerParams to use."""
    return userdata


def optimizer_name(optimizer: int) -> str:
    return _OPTIMIZER_NAMES.get(optimizer, "undefined")


@dataclass
class OptParams:
    """ggml_opt_params."""
    backend_sched: object = None              # a Sched / backend (graph_compute); None = CPU
    ctx_compute: object = None
    inputs: Optional[Tensor] = None
    outputs: Optional[Tensor] = None
    loss_type: int = LOSS_TYPE_MEAN
    build_type: int = BUILD_TYPE_OPT
    opt_period: int = 1
    get_opt_pars: Callable = get_default_optimizer_params
    get_opt_pars_ud: object = None
    optimizer: int = OPTIMIZER_TYPE_ADAMW


def default_params(backend_sched, loss_type: int) -> OptParams:
    return OptParams(backend_sched=backend_sched, loss_type=loss_type)


def _default_sched():
    from ..compute import Sched
    from ..compute import backend_reference_init
    from ..compute import cpu_backend_for
    from ..compute import default_n_threads
    return Sched([cpu_backend_for(default_n_threads()), backend_reference_init()])


class OptContext:
    def __init__(self, p: OptParams):
        if p.ctx_compute is None or p.inputs is None or p.outputs is None:
            raise GGMLError("opt_init: ctx_compute, inputs and outputs are required")
        if p.opt_period < 1:
            raise GGMLError(f"opt_init: opt_period must be >= 1, got {p.opt_period}")
        if p.optimizer not in _OPTIMIZER_NAMES:
            raise GGMLError(f"opt_init: unknown optimizer {p.optimizer}")
        self.p = p
        self.sched = p.backend_sched if p.backend_sched is not None else _default_sched()
        self.ctx = p.ctx_compute
        self.inputs, self.outputs = p.inputs, p.outputs
        self.loss_type, self.optimizer = p.loss_type, p.optimizer
        self.opt_period = p.opt_period
        self.iter = 1
        self.opt_i = 0
        self.rng = np.random.default_rng(0)
        self.labels = self.pred = self.ncorrect = None
        self._build()
        self.allocated_graph: Optional[CGraph] = None

    # building ---------------------------------------------------------------------------
    def _loss(self):
        c, out = self.ctx, self.outputs
        per_batch = 1.0 / (self.opt_period * nelements(out))
        if self.loss_type == LOSS_TYPE_MEAN:
            loss = scale(c, set_name(sum_(c, out), "loss_sum"), per_batch)
            return set_name(loss, "loss_mean"), True
        if self.loss_type == LOSS_TYPE_SUM:
            return set_name(sum_(c, out), "loss_sum"), False
        self.labels = set_name(new_tensor(c, GGMLType.F32, 4, out.ne), "labels")
        set_input(self.labels)
        if self.loss_type == LOSS_TYPE_CROSS_ENTROPY:
            loss = set_name(cross_entropy_loss(c, out, self.labels), "loss_cross_entropy")
            if self.opt_period > 1:
                loss = set_name(scale(c, loss, 1.0 / self.opt_period), "loss_cross_entropy_scaled")
            return loss, True
        if self.loss_type == LOSS_TYPE_MEAN_SQUARED_ERROR:
            loss = sum_(c, sqr(c, sub(c, out, self.labels)))
            return set_name(scale(c, loss, per_batch), "loss_mean_squared_error"), True
        raise GGMLError(f"opt_init: unknown loss type {self.loss_type}")

    def _build(self) -> None:
        c = self.ctx
        self.loss, self.loss_per_datapoint = self._loss()
        set_output(self.loss)
        set_loss(self.loss)
        self.gf = new_graph_custom(c, 8192, True)
        self.gf.expand(self.loss)
        if self.loss_type == LOSS_TYPE_CROSS_ENTROPY:
            self.pred = set_name(argmax(c, self.outputs), "pred")
            set_output(self.pred)
            self.gf.expand(self.pred)
            self.ncorrect = set_name(count_equal(c, self.pred, argmax(c, self.labels)), "ncorrect")
            set_output(self.ncorrect)
            self.gf.expand(self.ncorrect)
        nodes = list(self.gf.nodes)
        self.params = [n for n in nodes if n.flags & TENSOR_FLAG_PARAM]
        if not self.params:
            raise GGMLError("opt_init: the outputs depend on no parameter (set_param)")
        accumulate = self.opt_period > 1
        self.grad_accs = [new_tensor(c, GGMLType.F32, 4, n.ne)
                          if (accumulate and n.flags & TENSOR_FLAG_PARAM) or n.flags & TENSOR_FLAG_LOSS
                          else None for n in nodes]
        self.gb_grad = new_graph_custom(c, 8192, True)
        graph_cpy(self.gf, self.gb_grad)
        build_backward_expand(c, self.gb_grad, self.grad_accs)
        self.gb_opt = new_graph_custom(c, 8192, True)
        graph_cpy(self.gb_grad, self.gb_opt)
        adamw = self.optimizer == OPTIMIZER_TYPE_ADAMW
        self.opt_step_params = new_tensor_1d(c, GGMLType.F32, 7 if adamw else 2)
        set_input(self.opt_step_params)
        set_name(self.opt_step_params, f"{optimizer_name(self.optimizer)}_params")
        self.momenta = {}
        for n in reversed(nodes):
            grad = graph_get_grad(self.gb_opt, n)
            if grad is None or not n.flags & TENSOR_FLAG_PARAM:
                continue
            if adamw:
                m = set_name(new_tensor(c, GGMLType.F32, 4, n.ne), f"AdamW m for {n.name}")
                v = set_name(new_tensor(c, GGMLType.F32, 4, n.ne), f"AdamW v for {n.name}")
                self.momenta[id(n)] = (m, v)
                step = opt_step_adamw(c, n, grad, m, v, self.opt_step_params)
            else:
                step = opt_step_sgd(c, n, grad, self.opt_step_params)
            self.gb_opt.expand(step)
        _give_memory(self.gb_opt)
        _give_memory(_graph_of([t for t in self.grad_accs if t is not None]))
        graph_reset(self.gb_opt)        # loss gradient 1, accumulators and momenta 0

    # evaluation -------------------------------------------------------------------------
    def reset(self, optimizer: bool) -> None:
        """ggml_opt_reset: zero the gradients; with optimizer also the momenta and iter."""
        graph_reset(self.gb_opt if optimizer else self.gb_grad)
        if optimizer:
            self.iter = 1

    def alloc(self, backward: bool) -> None:
        if self.opt_period > 1 and self.opt_i == 0:
            graph_reset(self.gb_grad)
        if backward:
            last = (self.opt_i + 1) % self.opt_period == 0
            self.allocated_graph = self.gb_opt if last else self.gb_grad
        else:
            self.allocated_graph = self.gf

    def eval(self, result: Optional[Result] = None) -> None:
        if self.allocated_graph is None:
            raise GGMLError("opt_eval: call opt_alloc first")
        graph = self.allocated_graph
        if graph is self.gb_opt:
            self._set_step_params()
        self.sched.graph_compute(graph)
        if hasattr(self.sched, "release"):
            self.sched.release()
        self.iter += graph is self.gb_opt
        self.opt_i = (self.opt_i + 1) % self.opt_period
        self.allocated_graph = None
        if result is not None:
            self._record(result)

    def _set_step_params(self) -> None:
        pars = self.p.get_opt_pars(self.p.get_opt_pars_ud)
        if self.optimizer == OPTIMIZER_TYPE_ADAMW:
            a = pars.adamw
            if not (a.alpha > 0 and 0 <= a.beta1 <= 1 and 0 <= a.beta2 <= 1 and a.eps >= 0
                    and 0 <= a.wd <= 1):
                raise GGMLError(f"opt_eval: bad AdamW parameters {a}")
            b1h = 1.0 / (1.0 - np.float32(a.beta1) ** self.iter)
            b2h = 1.0 / (1.0 - np.float32(a.beta2) ** self.iter)
            vals = [a.alpha, a.beta1, a.beta2, a.eps, a.wd, b1h, b2h]
        else:
            s = pars.sgd
            if not (s.alpha > 0 and 0 <= s.wd <= 1):
                raise GGMLError(f"opt_eval: bad SGD parameters {s}")
            vals = [s.alpha, s.wd]
        data.strided(self.opt_step_params)[...] = np.array(vals, dtype=np.float32)

    def _record(self, result: Result) -> None:
        if result.ndata == 0:
            result.loss_per_datapoint = self.loss_per_datapoint
            result.opt_period = self.opt_period
        ndata = self.outputs.ne[1]
        result.ndata += ndata
        result.loss.append(float(data.strided(self.loss).reshape(-1)[0]))
        if self.pred is not None:
            result.pred.extend(int(x) for x in data.strided(self.pred).reshape(-1))
        if self.ncorrect is None or result.ncorrect < 0:
            result.ncorrect = -1
            return
        result.ncorrect += int(data.read(self.ncorrect).reshape(-1)[0])


def _graph_of(tensors) -> CGraph:
    g = CGraph(max(1, len(tensors)))
    for t in tensors:
        g.expand(t)
    return g


def _give_memory(gf: CGraph) -> None:
    """Every tensor of gf without data gets memory of its own (static graphs: the three
    graphs share tensors, and momenta and accumulators must outlive each compute)."""
    for t in list(gf.leafs) + list(gf.nodes):
        for x in [t] + [s for s in t.src if s is not None]:
            r = x.view_src if x.view_src is not None else x
            if r.buffer is None:
                r.set_buffer(Buffer(max(nbytes(r), 1), name=r.name or "opt tensor"), 0)


def opt_init(params: OptParams) -> OptContext:
    return OptContext(params)


def opt_free(opt_ctx: OptContext) -> None:
    opt_ctx.allocated_graph = None


def opt_reset(opt_ctx: OptContext, optimizer: bool) -> None:
    opt_ctx.reset(optimizer)


def opt_static_graphs(opt_ctx: OptContext) -> bool:
    return True


def opt_inputs(opt_ctx: OptContext) -> Tensor:
    return opt_ctx.inputs


def opt_outputs(opt_ctx: OptContext) -> Tensor:
    return opt_ctx.outputs


def opt_labels(opt_ctx: OptContext) -> Optional[Tensor]:
    return opt_ctx.labels


def opt_loss(opt_ctx: OptContext) -> Tensor:
    return opt_ctx.loss


def opt_pred(opt_ctx: OptContext) -> Optional[Tensor]:
    return opt_ctx.pred


def opt_ncorrect(opt_ctx: OptContext) -> Optional[Tensor]:
    return opt_ctx.ncorrect


def opt_grad_acc(opt_ctx: OptContext, node: Tensor) -> Optional[Tensor]:
    from ..graph import graph_get_grad_acc
    return graph_get_grad_acc(opt_ctx.gb_opt, node)


def opt_context_optimizer_type(opt_ctx: OptContext) -> int:
    return opt_ctx.optimizer


def opt_alloc(opt_ctx: OptContext, backward: bool) -> None:
    opt_ctx.alloc(backward)


def opt_eval(opt_ctx: OptContext, result: Optional[Result]) -> None:
    opt_ctx.eval(result)
