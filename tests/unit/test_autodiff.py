"""Backward graphs (build_backward_expand and the per-op gradient rules), as ggml.

Every rule is checked against central finite differences with ggml's grad-mode measure
(testing/grad.py) on the reference backend and the numba backend, on small graphs; the
API (graph_reset, accumulators, errors) is checked directly, and the gradients of a few
graphs against real ggml's own backward pass (libggml-python).
"""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.ops.registry import OPS
from pyggml.testing.case import Case
from pyggml.testing.case import uniform
from pyggml.testing.grad import mean_abs_asymm
from pyggml.testing.grad import run_grad

F32 = gg.TYPE_F32


def _p(ctx, ne, name):
    t = gg.new_tensor(ctx, F32, len(ne), list(ne))
    gg.set_name(t, name)
    gg.set_param(t)
    return t


def _c(ctx, ne, name):
    t = gg.new_tensor(ctx, F32, len(ne), list(ne))
    gg.set_name(t, name)
    return t


def _ids(ctx, n, name="rows"):
    return gg.set_name(gg.new_tensor_1d(ctx, gg.TYPE_I32, n), name)


def _rope(mode):
    def build(ctx):
        a = _p(ctx, [8, 3, 4], "a")
        pos = _ids(ctx, 4, "pos")
        return gg.rope_ext(ctx, a, pos, None, 8, mode, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    return build


def _pos_init(t, rng):
    if t.type == gg.TYPE_I32:
        return rng.integers(0, 5, size=t.ne[::-1])
    return rng.uniform(-1, 1, size=t.ne[::-1])


def _rows_init(t, rng):
    if t.type == gg.TYPE_I32:
        return np.array([2, 0, 2, 4])[: t.ne[0]]
    return rng.uniform(-1, 1, size=t.ne[::-1])


def _spread(t, rng):
    """Distinct values 0.5 apart: a window's maximum stays the maximum when moved by eps."""
    return (rng.permutation(int(np.prod(t.ne))) * 0.5 - 10.0).reshape(t.ne[::-1])


def _beyond_f16_table(t, rng):
    """|x| in [10, 14]: ggml's CPU GELU reads an F16 table below 10 (a staircase finite
    differences cannot follow); the b side is any value."""
    if t.name == "b":
        return rng.uniform(-1, 1, size=t.ne[::-1])
    return rng.choice([-1.0, 1.0], size=t.ne[::-1]) * rng.uniform(10, 14, size=t.ne[::-1])


def _labels(ctx):
    return gg.soft_max(ctx, _c(ctx, [7, 3], "labels"))


NE = [5, 3, 2]
# (op whose rule is checked, name, build(ctx) -> out, init, grad-mode settings)
GRAPHS = [
    ("ADD", "same", lambda c: gg.add(c, _p(c, NE, "a"), _p(c, NE, "b")), None, {}),
    ("ADD", "bcast", lambda c: gg.add(c, _p(c, NE, "a"), _p(c, [5, 1, 2], "b")), None, {}),
    ("SUB", "bcast", lambda c: gg.sub(c, _p(c, NE, "a"), _p(c, [5, 3, 1], "b")), None, {}),
    ("MUL", "bcast", lambda c: gg.mul(c, _p(c, NE, "a"), _p(c, [5, 1, 1], "b")),
     uniform(0.9, 1.1), {}),
    ("DIV", "bcast", lambda c: gg.div(c, _p(c, NE, "a"), _p(c, [1, 3, 2], "b")),
     uniform(0.9, 1.1), dict(precise=True)),
    ("ADD1", "", lambda c: gg.add1(c, _p(c, NE, "a"), _p(c, [1], "b")), None, {}),
    ("SQR", "", lambda c: gg.sqr(c, _p(c, NE, "a")), None, {}),
    ("SQRT", "", lambda c: gg.sqrt(c, _p(c, NE, "a")), uniform(0.5, 2.0), dict(precise=True)),
    ("LOG", "", lambda c: gg.log(c, _p(c, NE, "a")), uniform(0.5, 2.0), dict(precise=True)),
    ("SIN", "", lambda c: gg.sin(c, _p(c, NE, "a")), None, dict(precise=True, max_maa=1e-3)),
    ("COS", "", lambda c: gg.cos(c, _p(c, NE, "a")), None, dict(precise=True, max_maa=1e-3)),
    ("SCALE", "", lambda c: gg.scale_bias(c, _p(c, NE, "a"), 1.7, 0.3), None, {}),
    ("ABS", "", lambda c: gg.abs(c, _p(c, NE, "a")), None, dict(expect=(-1.0, 1.0))),
    ("SGN", "", lambda c: gg.sgn(c, _p(c, NE, "a")), None, dict(expect=(0.0,))),
    ("STEP", "", lambda c: gg.step(c, _p(c, NE, "a")), None, dict(expect=(0.0,))),
    ("NEG", "", lambda c: gg.neg(c, _p(c, NE, "a")), None, {}),
    ("RELU", "", lambda c: gg.relu(c, _p(c, NE, "a")), None, dict(expect=(0.0, 1.0))),
    ("SILU", "", lambda c: gg.silu(c, _p(c, NE, "a")), uniform(-3, 3), dict(precise=True)),
    ("EXP", "", lambda c: gg.exp(c, _p(c, NE, "a")), None, dict(precise=True)),
    ("EXPM1", "", lambda c: gg.expm1(c, _p(c, NE, "a")), None, dict(precise=True)),
    ("SOFTPLUS", "", lambda c: gg.softplus(c, _p(c, NE, "a")), uniform(-3, 3), dict(precise=True)),
    ("TANH", "", lambda c: gg.tanh(c, _p(c, NE, "a")), None, dict(precise=True)),
    ("SIGMOID", "", lambda c: gg.sigmoid(c, _p(c, NE, "a")), None, dict(precise=True)),
    ("SUM", "", lambda c: gg.sum(c, gg.sqr(c, _p(c, NE, "a"))), None, {}),
    ("SUM_ROWS", "", lambda c: gg.sqr(c, gg.sum_rows(c, _p(c, NE, "a"))), None, {}),
    ("MEAN", "", lambda c: gg.sqr(c, gg.mean(c, _p(c, NE, "a"))), None, {}),
    ("REPEAT", "", lambda c: gg.sqr(c, gg.repeat(c, _p(c, [5, 1, 2], "a"), _c(c, NE, "b"))),
     None, {}),
    ("REPEAT_BACK", "", lambda c: gg.sqr(c, gg.repeat_back(c, _p(c, NE, "a"), _c(c, [5, 1, 1], "b"))),
     None, {}),
    ("CONCAT", "dim1", lambda c: gg.sqr(c, gg.concat(c, _p(c, NE, "a"), _p(c, [5, 2, 2], "b"), 1)),
     None, {}),
    ("ACC", "", lambda c: gg.sqr(c, gg.acc(c, _p(c, NE, "a"), _p(c, [2, 2], "b"), 20, 60, 120, 4)),
     None, {}),
    ("SET", "", lambda c: gg.sqr(c, gg.set(c, _p(c, NE, "a"), _p(c, [2, 2], "b"), 20, 60, 120, 4)),
     None, {}),
    ("CPY", "", lambda c: gg.sqr(c, gg.cpy(c, _p(c, NE, "a"), _c(c, [15, 2], "b"))), None, {}),
    ("CONT", "", lambda c: gg.sqr(c, gg.cont(c, gg.transpose(c, _p(c, [5, 3], "a")))), None, {}),
    ("DUP", "", lambda c: gg.sqr(c, gg.dup(c, _p(c, NE, "a"))), None, {}),
    ("RESHAPE", "", lambda c: gg.sqr(c, gg.reshape_2d(c, _p(c, NE, "a"), 10, 3)), None, {}),
    ("VIEW", "", lambda c: gg.sqr(c, gg.view_2d(c, _p(c, NE, "a"), 3, 2, 20, 8)), None, {}),
    ("PERMUTE", "", lambda c: gg.sqr(c, gg.cont(c, gg.permute(c, _p(c, NE, "a"), 2, 0, 1, 3))),
     None, {}),
    ("TRANSPOSE", "", lambda c: gg.sqr(c, gg.transpose(c, _p(c, [5, 3], "a"))), None, {}),
    ("GET_ROWS", "", lambda c: gg.sqr(c, gg.get_rows(c, _p(c, [5, 6], "a"), _ids(c, 4))),
     _rows_init, {}),
    ("MUL_MAT", "", lambda c: gg.mul_mat(c, _p(c, [4, 3, 2], "a"), _p(c, [4, 5, 2], "b")),
     None, {}),
    ("MUL_MAT", "bcast", lambda c: gg.mul_mat(c, _p(c, [4, 3, 1], "a"), _p(c, [4, 5, 3], "b")),
     None, {}),
    ("OUT_PROD", "", lambda c: gg.out_prod(c, _p(c, [4, 3], "a"), _p(c, [5, 3], "b")), None, {}),
    # ggml's test_rms_norm settings: values in [-10, 10], eps 1, the 4-point estimate
    ("RMS_NORM", "", lambda c: gg.mul(c, gg.rms_norm(c, _p(c, [32, 3], "a"), 1e-6), _c(c, [32, 3], "w")),
     uniform(-10, 10), dict(eps=1.0, precise=True)),
    ("NORM", "", lambda c: gg.mul(c, gg.norm(c, _p(c, [32, 3], "a"), 1e-5), _c(c, [32, 3], "w")),
     uniform(-10, 10), dict(eps=1.0, precise=True)),
    ("SOFT_MAX", "", lambda c: gg.mul(c, gg.soft_max(c, _p(c, NE, "a")), _c(c, NE, "w")),
     None, dict(precise=True)),
    ("SOFT_MAX", "ext", lambda c: gg.mul(c, gg.soft_max_ext(c, _p(c, [5, 3], "a"), _c(c, [5, 3], "m"),
                                                            0.7, 0.0), _c(c, [5, 3], "w")),
     None, dict(precise=True)),
    ("DIAG_MASK_INF", "", lambda c: gg.soft_max(c, gg.diag_mask_inf(c, _p(c, [4, 4, 2], "a"), 1)),
     None, dict(precise=True)),
    ("DIAG_MASK_ZERO", "", lambda c: gg.sqr(c, gg.diag_mask_zero(c, _p(c, [4, 4, 2], "a"), 1)),
     None, {}),
    ("ROPE", "norm", _rope(0), _pos_init, dict(precise=True)),
    ("ROPE", "neox", _rope(2), _pos_init, dict(precise=True)),
    ("SWIGLU", "split", lambda c: gg.swiglu_split(c, _p(c, NE, "a"), _p(c, NE, "b")),
     None, dict(precise=True)),
    ("REGLU", "split", lambda c: gg.reglu_split(c, _p(c, NE, "a"), _p(c, NE, "b")),
     None, {}),
    ("CROSS_ENTROPY_LOSS", "", lambda c: gg.cross_entropy_loss(c, _p(c, [7, 3], "logits"), _labels(c)),
     uniform(-3, 3), dict(precise=True)),
    ("GEGLU", "split", lambda c: gg.geglu_split(c, _p(c, NE, "a"), _p(c, NE, "b")),
     _beyond_f16_table, dict(precise=True)),
    ("IM2COL", "2d", lambda c: gg.sqr(c, gg.im2col(c, _c(c, [3, 2, 2, 1], "kernel"), _p(c, [6, 5, 2, 2], "x"),
                                                   2, 1, 1, 0, 1, 2, True, F32)), None, {}),
    ("IM2COL", "1d", lambda c: gg.sqr(c, gg.im2col(c, _c(c, [3, 2, 1], "kernel"), _p(c, [9, 2, 2], "x"),
                                                   2, 0, 2, 0, 2, 0, False, F32)), None, {}),
    ("POOL_2D", "avg", lambda c: gg.sqr(c, gg.pool_2d(c, _p(c, [7, 6, 2], "x"), gg.OP_POOL_AVG,
                                                      3, 2, 2, 1, 1, 1)), None, {}),
    ("POOL_2D", "max", lambda c: gg.sqr(c, gg.pool_2d(c, _p(c, [7, 6, 2], "x"), gg.OP_POOL_MAX,
                                                      3, 2, 2, 1, 1, 0)), _spread, {}),
]


def _cases():
    return [Case(op, dict(graph=name), build, init=init, grad=g)
            for op, name, build, init, g in GRAPHS]


@pytest.fixture(scope="module")
def numba_backend():
    be = NumbaBackend(2)
    yield be
    be.free()


def test_every_declared_rule_is_checked():
    declared = {name for name, op in OPS.items() if op.grad is not None}
    assert declared <= {op for op, *_ in GRAPHS}, sorted(declared - {op for op, *_ in GRAPHS})


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c.op}-{c.vars['graph']}")
def test_rule_vs_finite_differences_reference(case):
    r = run_grad(case, ReferenceBackend(), seed=1)
    assert r.status == "OK", f"{r.status}: {r.message}"


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c.op}-{c.vars['graph']}")
def test_rule_vs_finite_differences_numba(case, numba_backend):
    r = run_grad(case, numba_backend, seed=2)
    assert r.status in ("OK", "NOT SUPPORTED"), f"{r.status}: {r.message}"
    if r.status == "NOT SUPPORTED":     # only for nodes numba has no kernel for
        assert "numba" in r.message


def test_mean_abs_asymm_is_ggmls():
    a, b = np.array([1.0, 2.0, 0.0]), np.array([1.0, 1.0, 0.0])
    assert mean_abs_asymm(a[:2], b[:2], ()) == pytest.approx((0 + 1 / 3) / 2)
    assert mean_abs_asymm(a, b, (1.0,)) == 0.0                     # only where a ~ 1
    assert np.isnan(mean_abs_asymm(a[2:], b[2:], ()))              # 0/0: never a failure


# --- the API --------------------------------------------------------------------------------

def _mlp(ctx):
    w = _p(ctx, [4, 3], "w")
    x = _c(ctx, [4, 5], "x")
    loss = gg.sum(ctx, gg.sqr(ctx, gg.mul_mat(ctx, w, x)))
    gg.set_loss(loss)
    return w, x, loss


def _fill(*ts, seed=0):
    rng = np.random.default_rng(seed)
    for t in ts:
        gg.tensor_set(t, rng.uniform(-1, 1, size=t.ne[::-1]).astype(np.float32).tobytes())


def test_backward_values_and_graph_reset():
    ctx = gg.init(mem_size=16 << 20)
    w, x, loss = _mlp(ctx)
    gf = gg.new_graph_custom(ctx, 256, grads=True)
    gg.build_forward_expand(gf, loss)
    n_fwd = gg.graph_n_nodes(gf)
    gg.build_backward_expand(ctx, gf, None)
    assert gg.graph_n_nodes(gf) > n_fwd
    _fill(w, x)
    gg.graph_reset(gf)
    acc = gg.graph_get_grad_acc(gf, loss)
    assert gg.to_numpy(acc).reshape(-1).tolist() == [1.0]
    gg.graph_compute_with_ctx(ctx, gf, 2)
    W, X = gg.to_numpy(w), gg.to_numpy(x)           # (3, 4), (5, 4)
    expect = 2 * (X @ W.T).T @ X                     # d sum((W X^T)^2) / dW
    gw = gg.graph_get_grad(gf, w)
    assert gw.name == "grad for w"
    np.testing.assert_allclose(gg.to_numpy(gw), expect, rtol=1e-5, atol=1e-5)
    assert gg.graph_get_grad(gf, x) is None          # x is no parameter
    assert gg.graph_get_grad_acc(gf, w) is None      # no accumulator asked for


def test_gradient_accumulation_adds_in_place():
    ctx = gg.init(mem_size=16 << 20)
    w, x, loss = _mlp(ctx)
    gf = gg.new_graph_custom(ctx, 256, grads=True)
    gg.build_forward_expand(gf, loss)
    acc = gg.new_tensor_2d(ctx, F32, 4, 3)
    accs = [acc if n is w else None for n in gf.nodes]
    gg.build_backward_expand(ctx, gf, accs)
    assert gg.graph_get_grad_acc(gf, w) is acc
    _fill(w, x)
    gg.tensor_set(acc, np.full(12, 7.0, dtype=np.float32).tobytes())
    gg.graph_reset(gf)                               # zeroes the accumulator
    assert not gg.to_numpy(acc).any()
    gg.graph_compute_with_ctx(ctx, gf, 1)
    once = gg.to_numpy(acc).copy()
    gg.graph_compute_with_ctx(ctx, gf, 1)            # a second micro-batch adds to it
    np.testing.assert_allclose(gg.to_numpy(acc), 2 * once, rtol=1e-6)


def test_errors_name_the_problem():
    ctx = gg.init(mem_size=16 << 20)
    a = _p(ctx, [4], "a")
    with pytest.raises(gg.GraphError, match="only a tensor without op"):
        gg.set_param(gg.sqr(ctx, a))
    with pytest.raises(gg.GraphError, match="scalar F32"):
        gg.set_loss(gg.sqr(ctx, a))
    # an op without a gradient rule on the path: a GGMLError naming it
    loss = gg.sum(ctx, gg.floor(ctx, a))
    gg.set_loss(loss)
    gf = gg.new_graph_custom(ctx, 64, True)
    gg.build_forward_expand(gf, loss)
    with pytest.raises(gg.GGMLError, match="FLOOR has no gradient rule"):
        gg.build_backward_expand(ctx, gf, None)
    # in-place ops cannot be differentiated
    loss2 = gg.sum(ctx, gg.sqr_inplace(ctx, gg.scale(ctx, a, 2.0)))
    gg.set_loss(loss2)
    gf2 = gg.new_graph_custom(ctx, 64, True)
    gg.build_forward_expand(gf2, loss2)
    with pytest.raises(gg.GGMLError, match="in-place SQR"):
        gg.build_backward_expand(ctx, gf2, None)
    # graphs without grads, parameters or a loss
    gf3 = gg.new_graph(ctx)
    gg.build_forward_expand(gf3, loss)
    with pytest.raises(gg.GraphError, match="without gradients"):
        gg.build_backward_expand(ctx, gf3, None)
    b = _c(ctx, [4], "b")
    gf4 = gg.new_graph_custom(ctx, 64, True)
    l4 = gg.sum(ctx, gg.sqr(ctx, b))
    gg.set_loss(l4)
    gg.build_forward_expand(gf4, l4)
    with pytest.raises(gg.GraphError, match="forget to call set_param"):
        gg.build_backward_expand(ctx, gf4, None)
    gf5 = gg.new_graph_custom(ctx, 64, True)
    gg.build_forward_expand(gf5, gg.sqr(ctx, a))
    with pytest.raises(gg.GraphError, match="forget to call set_loss"):
        gg.build_backward_expand(ctx, gf5, None)


def test_geglu_rule_is_the_derivative_of_ggmls_gelu():
    """Where ggml's GELU reads its F16 table (|x| < 10) finite differences see a staircase,
    so the rule's gelu'(x) is checked against the formula's derivative instead."""
    ctx = gg.init(mem_size=16 << 20)
    a, b = _p(ctx, [41], "a"), _p(ctx, [41], "b")
    loss = gg.sum(ctx, gg.geglu_split(ctx, a, b))
    gg.set_loss(loss)
    gf = gg.new_graph_custom(ctx, 256, True)
    gg.build_forward_expand(gf, loss)
    gg.build_backward_expand(ctx, gf, None)
    x = np.linspace(-6, 6, 41).astype(np.float32)
    bv = np.linspace(0.5, 1.5, 41).astype(np.float32)
    gg.tensor_set(a, x.tobytes())
    gg.tensor_set(b, bv.tobytes())
    gg.graph_reset(gf)
    gg.graph_compute_with_ctx(ctx, gf, 1)
    c, k = np.sqrt(2 / np.pi), 0.044715
    xd = x.astype(np.float64)
    t = np.tanh(c * (xd + k * xd ** 3))
    dgelu = 0.5 * (1 + t) + 0.5 * xd * (1 - t * t) * c * (1 + 3 * k * xd * xd)
    np.testing.assert_allclose(gg.to_numpy(gg.graph_get_grad(gf, a)), dgelu * bv, rtol=1e-5,
                               atol=1e-6)
    gelu = 0.5 * xd * (1 + t)
    np.testing.assert_allclose(gg.to_numpy(gg.graph_get_grad(gf, b)), gelu, rtol=2e-3, atol=2e-3)


def test_labels_of_cross_entropy_get_no_gradient():
    ctx = gg.init(mem_size=16 << 20)
    logits, labels = _p(ctx, [5, 2], "logits"), _p(ctx, [5, 2], "labels")
    loss = gg.cross_entropy_loss(ctx, logits, labels)
    gg.set_loss(loss)
    gf = gg.new_graph_custom(ctx, 64, True)
    gg.build_forward_expand(gf, loss)
    with pytest.raises(gg.GGMLError, match="no gradient for the labels"):
        gg.build_backward_expand(ctx, gf, None)


# --- against real ggml's backward pass ----------------------------------------------------------

def _ggml_grads(build, seed):
    """Build with pyggml, mirror the forward graph into real ggml, run ggml's own
    build_backward_expand there; return pyggml's and ggml's gradients of the parameters."""
    from pyggml.testing import ggml_lib
    ctx = gg.init(mem_size=16 << 20)
    out = build(ctx)
    loss = out if gg.nelements(out) == 1 else gg.sum(ctx, out)
    gg.set_loss(loss)
    gf = gg.new_graph_custom(ctx, 512, True)
    gg.build_forward_expand(gf, loss)
    params = [t for t in ctx.tensors if t.flags & gg.TENSOR_FLAG_PARAM]
    rng = np.random.default_rng(seed)
    for t in ctx.tensors:
        if t.op is None:                 # row ids and positions: small valid integers
            v = rng.integers(0, 3, size=t.ne[::-1]).astype(np.int32) if t.type == gg.TYPE_I32 \
                else rng.uniform(-1, 1, size=t.ne[::-1]).astype(np.float32)
            gg.tensor_set(t, v.tobytes())
    with ggml_lib.Mirror([loss], mem_extra=16 << 20) as m:
        g = m.g
        gb = g.ggml_new_graph_custom(m.ctx, 1024, True)
        lp = m.ptrs[id(loss)]
        g.ggml_set_loss(lp)
        g.ggml_build_forward_expand(gb, lp)
        g.ggml_build_backward_expand(m.ctx, gb, None)
        m.gf = gb
        m._expand_all = []
        # the accumulators ggml made have no data: a CPU context allocates them; reset then run
        g.ggml_graph_reset(gb)
        m.compute(1)
        theirs = [ggml_lib.read(g.ggml_graph_get_grad(gb, m.ptrs[id(t)])) for t in params]
    gg.build_backward_expand(ctx, gf, None)
    gg.graph_reset(gf)
    gg.graph_compute_with_ctx(ctx, gf, 2)
    ours = [gg.to_numpy(gg.graph_get_grad(gf, t)) for t in params]
    return ours, theirs


GGML_GRAPHS = [
    ("mlp", lambda c: gg.cross_entropy_loss(
        c, gg.mul_mat(c, _p(c, [6, 7], "w2"), gg.silu(c, gg.mul_mat(c, _p(c, [5, 6], "w1"),
                                                                     _c(c, [5, 3], "x")))),
        _labels(c))),
    ("norm_rope_softmax", lambda c: gg.soft_max(c, gg.rope_ext(
        c, gg.rms_norm(c, _p(c, [8, 2, 3], "a"), 1e-6), _pos(c),
        None, 8, 0, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0))),
    ("views_rows", lambda c: gg.sqr(c, gg.get_rows(c, gg.cont(c, gg.transpose(c, _p(c, [4, 5], "a"))),
                                                    _const_rows(c)))),
    ("swiglu_sum_rows", lambda c: gg.sum_rows(c, gg.swiglu_split(c, _p(c, [6, 2], "a"),
                                                                 gg.scale(c, _p(c, [6, 2], "b"), 0.5)))),
]


def _pos(ctx):
    t = gg.new_tensor_1d(ctx, gg.TYPE_I32, 3)
    gg.set_name(t, "pos")
    return t


def _const_rows(ctx):
    return _ids(ctx, 3)


@pytest.mark.parametrize("name,build", GGML_GRAPHS, ids=[n for n, _ in GGML_GRAPHS])
def test_gradients_match_real_ggml(name, build):
    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        pytest.skip("libggml-python is not installed")

    ours, theirs = ggml_lib.run_isolated(lambda: _ggml_grads(build, 3))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.reshape(-1), np.asarray(b).reshape(-1), rtol=2e-4, atol=2e-6)

