"""OpDef.build remembers infer's answer per (op_params, hints, sources' type/ne/nb): the same
op over the same shapes makes its node without inferring again, and every check that depends
on more than the shapes (view bounds in the aliased memory, the context's pool) still runs."""
import pytest

import pyggml as gg
from pyggml.ops.registry import OPS


@pytest.fixture
def nctx():
    return gg.init(mem_size=1 << 20, no_alloc=True)


def test_same_shapes_infer_once_and_make_new_nodes(nctx, monkeypatch):
    op = OPS["MUL_MAT"]
    calls = []
    infer = op.infer

    def counting(srcs, p):
        calls.append(1)
        return infer(srcs, p)
    monkeypatch.setattr(op, "infer", counting)
    w = gg.new_tensor_2d(nctx, gg.TYPE_Q4_0, 64, 32)
    x1 = gg.new_tensor_2d(nctx, gg.TYPE_F32, 64, 3)
    x2 = gg.new_tensor_2d(nctx, gg.TYPE_F32, 64, 3)
    y1, y2 = gg.mul_mat(nctx, w, x1), gg.mul_mat(nctx, w, x2)
    assert len(calls) == 1
    assert y1 is not y2 and y2.src[:2] == [w, x2] and y2.op is op
    assert (y2.type, list(y2.ne), list(y2.nb)) == (y1.type, [32, 3, 1, 1], list(y1.nb))
    gg.mul_mat(nctx, w, gg.new_tensor_2d(nctx, gg.TYPE_F32, 64, 4))   # other shape: infers
    assert len(calls) == 2


def test_replaced_infer_is_asked_again(nctx, monkeypatch):
    a = gg.new_tensor_1d(nctx, gg.TYPE_F32, 8)
    gg.add(nctx, a, a)

    def refuse(srcs, p):
        raise gg.ShapeError("ADD: refused")
    monkeypatch.setattr(OPS["ADD"], "infer", refuse)
    with pytest.raises(gg.ShapeError, match="refused"):
        gg.add(nctx, a, a)


def test_views_alias_their_own_source_and_are_bounds_checked(nctx):
    r = gg.new_tensor_2d(nctx, gg.TYPE_F32, 8, 4)
    nb1 = r.nb[1]
    s1 = gg.view_2d(nctx, r, 8, 2, nb1, 0)            # rows 0-1 of r
    s2 = gg.view_2d(nctx, r, 8, 2, nb1, 2 * nb1)      # rows 2-3: same type, ne, nb as s1
    v1 = gg.view_2d(nctx, s1, 8, 3, nb1, 0)           # 3 rows from row 0: fits r
    assert v1.view_src is r and v1.view_offs == 0
    v2 = gg.view_2d(nctx, s2, 8, 1, nb1, nb1)         # remembered shapes, other offset
    assert v2.view_src is r and v2.view_offs == 3 * nb1
    used = nctx.used_mem()
    with pytest.raises(gg.ShapeError, match="out of the bounds"):
        gg.view_2d(nctx, s2, 8, 3, nb1, 0)            # 3 rows from row 2: past r's end
    assert nctx.used_mem() == used


def test_a_full_pool_is_still_an_error():
    ctx = gg.init(mem_size=4 * gg.tensor_overhead(), no_alloc=True)
    a = gg.new_tensor_1d(ctx, gg.TYPE_F32, 8)
    gg.neg(ctx, a)                                    # remembered
    gg.neg(ctx, a)
    gg.neg(ctx, a)
    with pytest.raises(gg.ContextMemoryError):
        gg.neg(ctx, a)


def test_results_that_need_data_are_allocated_in_a_pool_context():
    ctx = gg.init(mem_size=1 << 16)
    a = gg.from_numpy(ctx, __import__("numpy").arange(8, dtype="float32"))
    gg.neg(ctx, a)
    b = gg.neg(ctx, a)                                # remembered, but needs its own data
    assert b.is_allocated and b.data_ptr != a.data_ptr


def test_kept_shape_is_shared_by_memo_nodes_and_follows_a_rebound_shape(nctx):
    """Lowering and the allocator read a tensor's descriptor words and nbytes from
    tensor.kept_shape: nodes made from one memo answer share it, and a tensor whose ne/nb
    were rebound (not policed) gets it made again, never the stale one."""
    from pyggml.tensor import Dims
    from pyggml.tensor import kept_shape
    from pyggml.tensor import nbytes
    from pyggml.tensor import shape_of
    w = gg.new_tensor_2d(nctx, gg.TYPE_F32, 64, 32)
    y1 = gg.mul_mat(nctx, w, gg.new_tensor_2d(nctx, gg.TYPE_F32, 64, 3))
    y2 = gg.mul_mat(nctx, w, gg.new_tensor_2d(nctx, gg.TYPE_F32, 64, 3))
    assert kept_shape(y2) is kept_shape(y1)
    assert kept_shape(y1)[3:] == shape_of(y1)[3:] and kept_shape(y1)[4] == nbytes(y1)
    old = kept_shape(w)
    w.ne, w.nb = Dims([64, 16, 1, 1]), Dims([4, 256, 4096, 4096])
    assert kept_shape(w) is not old and kept_shape(w)[3:] == shape_of(w)[3:]
    assert kept_shape(w)[4] == nbytes(w) == 64 * 16 * 4
