"""A built node's op_params are read-only; set_op_params edits them through the op's own
checks, and a computed graph notices the edit. Kernels/references never trust a window."""
import numpy as np
import pytest

import pyggml as gg
from pyggml import GGMLError
from pyggml import ParamError


@pytest.fixture
def ctx():
    return gg.init(mem_size=4 << 20)


def _rope(ctx):
    x = gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 2, 3)
    pos = gg.new_tensor_1d(ctx, gg.TYPE_I32, 3)
    return gg.rope_ext(ctx, x, pos, None, 8, 0, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def test_op_params_cannot_be_edited_in_place(ctx):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
    p = gg.pad(ctx, a, 1, 0, 0, 0)
    with pytest.raises(ParamError, match="set_op_params"):
        p.op_params[0] = -1000
    with pytest.raises(ValueError):
        p.op_params.setflags(write=True)
    with pytest.raises(ParamError):
        p.op_params[:2] = 0
    assert p.op.p(p).rp0 == 1 and p.op.p(p).lp0 == 0


@pytest.mark.parametrize("build, named, op, match", [
    (lambda c, a: gg.pad(c, a, 1, 0, 0, 0), dict(lp0=-1000), "PAD", "pads must be >= 0"),
    (lambda c, a: gg.timestep_embedding(c, gg.new_tensor_1d(c, gg.TYPE_F32, 3), 8, 100),
     dict(dim=10 ** 7), "TIMESTEP_EMBEDDING", "would change the result"),
    (lambda c, a: gg.concat(c, a, a, 1), dict(dim=0), "CONCAT", "would change the result"),
    (lambda c, a: _rope(c), dict(mode=8), "ROPE", "mode 8"),
    (lambda c, a: gg.set_1d(c, gg.new_tensor_1d(c, gg.TYPE_F32, 20),
                            gg.new_tensor_1d(c, gg.TYPE_F32, 7), 12), dict(offset=60),
     "SET", "past the end"),
    (lambda c, a: gg.acc(c, a, gg.new_tensor_1d(c, gg.TYPE_F32, 4), a.nb[1], a.nb[2],
                         a.nb[3], 0), dict(offset=40), "ACC", "past the end"),
    (lambda c, a: gg.pad(c, a, 1, 0, 0, 0), dict(nope=1), "PAD", "unknown parameter"),
    (lambda c, a: gg.pad(c, a, 1, 0, 0, 0), dict(lp0=2 ** 40), "PAD", "does not fit in i32"),
    (lambda c, a: gg.scale(c, a, 2.0), dict(s=1e39), "SCALE", "not a valid f32"),
    (lambda c, a: gg.view_1d(c, a, 4, 0), dict(offset=4), "VIEW", "build a new view"),
])
def test_set_op_params_revalidates(ctx, build, named, op, match):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
    node = build(ctx, a)
    before = list(node.op_params)
    with pytest.raises(GGMLError, match=match) as ei:
        gg.set_op_params(node, **named)
    assert str(ei.value).startswith(op)
    assert list(node.op_params) == before          # nothing changed


def test_set_op_params_applies_valid_values_and_recomputes(ctx):
    """An edit of a computed node's params makes the next compute lower the graph again."""
    a = gg.from_numpy(ctx, np.arange(20, dtype=np.float32))
    b = gg.from_numpy(ctx, -np.ones(7, dtype=np.float32))
    y = gg.set_1d(ctx, a, b, 12 * 4)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    for be in (gg.backend_reference_init(), gg.backend_numba_init(2)):
        gg.set_op_params(y, offset=12 * 4)
        gg.backend_graph_compute(be, gf)
        assert (gg.to_numpy(y)[12:19] == -1).all() and gg.to_numpy(y)[0] == 0
        gg.set_op_params(y, offset=0)
        assert y.op.p(y).offset == 0
        gg.backend_graph_compute(be, gf)
        want = np.arange(20, dtype=np.float32)
        want[:7] = -1
        np.testing.assert_array_equal(gg.to_numpy(y), want)


def test_set_prec_goes_through_the_checks(ctx):
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
    y = gg.mul_mat(ctx, a, a)
    gg.mul_mat_set_prec(y, gg.PREC_F32)
    assert y.op.p(y).prec == gg.PREC_F32
    with pytest.raises(ParamError):
        gg.mul_mat_set_prec(y, 3)


def test_offsets_past_int32_are_param_errors(ctx):
    a = gg.new_tensor_1d(ctx, gg.TYPE_F32, 20)
    b = gg.new_tensor_1d(ctx, gg.TYPE_F32, 7)
    for fn in (lambda: gg.set_1d(ctx, a, b, 2 ** 31),
               lambda: gg.acc(ctx, a, b, a.nb[1], a.nb[2], a.nb[3], 2 ** 31),
               lambda: gg.set_2d(ctx, a, b, 2 ** 40, 0)):
        with pytest.raises(ParamError, match="does not fit in i32"):
            fn()


def _outside(t):
    """Every byte of t's buffer except t's own."""
    raw = t.buffer.data
    return np.concatenate([raw[:t.offs], raw[t.offs + gg.nbytes(t):]]).copy()


def _forged(ctx, fn, a, b):
    """fn's node with offset 60 (8 bytes past a), forged behind set_op_params' back."""
    y = fn(ctx, a, b, 0)
    w = np.array(y.op_params)
    w[3] = 60
    y.op_params = w
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return gf


WINDOW_OPS = [gg.set_1d_inplace,
              lambda c, x, y, o: gg.acc_inplace(c, x, y, x.nb[1], x.nb[2], x.nb[3], o)]


@pytest.mark.parametrize("fn", WINDOW_OPS, ids=["set", "acc"])
def test_reference_set_acc_never_write_past_their_tensor(ctx, fn):
    """Even with op_params forged, the reference checks the window before writing (it once
    wrote 52 bytes past the tensor)."""
    a = gg.from_numpy(ctx, np.zeros(20, dtype=np.float32))
    b = gg.from_numpy(ctx, np.ones(7, dtype=np.float32))
    gf = _forged(ctx, fn, a, b)
    before = _outside(a)
    with pytest.raises(GGMLError, match="past the end"):
        gg.backend_graph_compute(gg.backend_reference_init(), gf)
    assert (_outside(a) == before).all()


@pytest.mark.parametrize("fn", WINDOW_OPS, ids=["set", "acc"])
def test_numba_set_acc_clip_to_their_tensor(ctx, fn):
    """The numba SET/ACC kernels only touch bytes of their own result, whatever the offset."""
    a = gg.from_numpy(ctx, np.zeros(20, dtype=np.float32))
    b = gg.from_numpy(ctx, np.ones(7, dtype=np.float32))
    gf = _forged(ctx, fn, a, b)
    before = _outside(a)
    be = gg.backend_numba_init(2)
    gg.backend_graph_compute(be, gf)
    be.free()
    assert (_outside(a) == before).all()


@pytest.mark.parametrize("dst", [gg.TYPE_F32, gg.TYPE_F16])
def test_set_op_params_on_im2col_keeps_its_result_type(ctx, dst):
    """IM2COL's result type is a build argument, not an op_param: set_op_params re-checks the
    node with it (it used to fail with an AttributeError on the missing dst_type)."""
    kernel = gg.new_tensor_4d(ctx, gg.TYPE_F16, 3, 3, 2, 1)
    x = gg.from_numpy(ctx, np.arange(2 * 10 * 10, dtype=np.float32).reshape(1, 2, 10, 10))
    y = gg.im2col(ctx, kernel, x, 1, 1, 1, 1, 1, 1, True, dst)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    gg.set_op_params(y, p0=2, d0=2)             # same width: (10 + 4 - 2*2 - 1) / 1 + 1
    assert y.type == dst and y.op.p(y).p0 == 2 and y.op.p(y).d0 == 2
    want = gg.im2col(ctx, kernel, x, 1, 1, 2, 1, 2, 1, True, dst)   # built with the new values
    gw = gg.new_graph(ctx)
    gg.build_forward_expand(gw, want)
    gg.backend_graph_compute(gg.backend_reference_init(), gw)
    for be in (gg.backend_reference_init(), gg.backend_numba_init(2)):
        gg.backend_graph_compute(be, gf)
        np.testing.assert_array_equal(gg.to_numpy(y), gg.to_numpy(want))
    with pytest.raises(ParamError, match="would change the result"):
        gg.set_op_params(y, s0=2)
    with pytest.raises(ParamError, match="IM2COL"):
        gg.set_op_params(y, d1=0)
