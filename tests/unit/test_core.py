"""The core: Context, Tensor, data access, graph building — behaviour and every error path.

Where real ggml is available, graph order and accounting are cross-checked against it.
"""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml.errors import ContextMemoryError
from pyggml.errors import DataError
from pyggml.errors import GGMLError
from pyggml.errors import GraphError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops.registry import OpDef
from pyggml.ops.registry import Out

F32, F16, BF16, I32, Q4_0, Q8_0 = (gg.TYPE_F32, gg.TYPE_F16, gg.TYPE_BF16, gg.TYPE_I32,
                                   gg.TYPE_Q4_0, gg.TYPE_Q8_0)


@pytest.fixture
def ctx():
    return gg.init(mem_size=4 << 20)


def _quants_or_skip():
    try:
        import pyggml.quants  # noqa: F401
    except Exception as e:          # another engineer's module, possibly mid-edit
        pytest.skip(f"pyggml.quants not importable: {e}")


# --- context ---------------------------------------------------------------------------------

def test_init_accepts_ggml_style_params():
    assert gg.init(mem_size=1024).mem_size == 1024
    assert gg.init(gg.InitParams(mem_size=2048, no_alloc=True)).no_alloc
    assert gg.init({"mem_size": 4096}).get_mem_size() == 4096
    assert gg.init(512).mem_size == 512
    c = gg.init(gg.InitParams(mem_size=2048), no_alloc=True)
    assert c.no_alloc and gg.get_no_alloc(c)
    with pytest.raises(DataError, match="InitParams"):
        gg.init("16MB")
    with pytest.raises(ContextMemoryError, match="mem_size"):
        gg.init(mem_size=-1)


def test_context_out_of_memory_is_an_error_with_a_useful_message():
    c = gg.init(mem_size=4096)
    with pytest.raises(ContextMemoryError) as ei:
        gg.new_tensor_1d(c, F32, 1000)
    msg = str(ei.value)
    assert "out of memory" in msg and "f32" in msg and "[1000]" in msg
    assert "4096" in msg and "mem_size" in msg and "overhead" in msg
    assert isinstance(ei.value, GGMLError) and isinstance(ei.value, MemoryError)
    assert c.used_mem() == 0 and not c.tensors          # nothing half-created
    t = gg.new_tensor_1d(c, F32, 100)                   # what fits still fits
    assert t.is_allocated and c.used_mem() > 400
    # no_alloc contexts pay only the bookkeeping, so large tensors fit
    na = gg.init(mem_size=2 * gg.tensor_overhead(), no_alloc=True)
    gg.new_tensor_2d(na, F32, 1 << 20, 1 << 10)
    assert na.used_mem() == gg.tensor_overhead()
    with pytest.raises(ContextMemoryError):
        for _ in range(2):
            gg.new_tensor_1d(na, F32, 1)


def test_context_accounting_is_close_to_ggml(ggml):
    """Loosely: pyggml pads data to 64 bytes, ggml to 16; both charge tensor_overhead()."""
    from pyggml.testing import ggml_lib as L
    assert gg.tensor_overhead() == ggml.ggml_tensor_overhead()
    for size in (0, 1, 16, 17, 100, 2048, 8192, 100_000):     # hash primes, pads, grads
        for grads in (False, True):
            assert gg.graph_overhead(size, grads) == ggml.ggml_graph_overhead_custom(size, grads)
    assert gg.graph_overhead() == ggml.ggml_graph_overhead()
    shapes = [[4, 3], [7], [1000, 3], [32, 2, 2]]
    c = gg.init(mem_size=1 << 20)
    with L.context(1 << 20) as gctx:
        for ne in shapes:
            gg.new_tensor(c, F32, len(ne), ne)
            L.new_tensor(gctx, F32, ne)
            assert abs(c.used_mem() - ggml.ggml_used_mem(gctx)) <= 64 * len(shapes)


def test_context_lookup_and_iteration(ctx):
    a = gg.set_name(gg.new_tensor_1d(ctx, F32, 3), "a")
    b = gg.set_name(gg.new_tensor_1d(ctx, F32, 3), "b")
    assert gg.get_first_tensor(ctx) is a and gg.get_next_tensor(ctx, a) is b
    assert gg.get_next_tensor(ctx, b) is None
    assert gg.get_tensor(ctx, "b") is b and gg.get_tensor(ctx, "zz") is None
    d = gg.dup_tensor(ctx, gg.transpose(ctx, a))
    assert d.ne == [1, 3, 1, 1] and d.op is None and gg.is_contiguous(d)
    assert gg.get_first_tensor(gg.init(mem_size=1024)) is None


# --- tensor creation -------------------------------------------------------------------------

@pytest.mark.parametrize("n_dims,ne", [(0, [4]), (5, [1, 1, 1, 1, 1]), (3, [4, 2])])
def test_new_tensor_bad_n_dims(ctx, n_dims, ne):
    with pytest.raises(ShapeError, match="n_dims"):
        gg.new_tensor(ctx, F32, n_dims, ne)


@pytest.mark.parametrize("type,ne0", [(Q4_0, 33), (Q4_0, 16), (Q8_0, 1), (gg.TYPE_Q5_1, 48)])
def test_new_tensor_ne0_not_whole_blocks(ctx, type, ne0):
    with pytest.raises(ShapeError, match=rf"ne\[0\]={ne0}.*block size 32.*{type.tname}"):
        gg.new_tensor_2d(ctx, type, ne0, 2)
    assert not ctx.tensors


def test_new_tensor_negative_dim_and_shapes(ctx):
    with pytest.raises(ShapeError, match="negative"):
        gg.new_tensor_2d(ctx, F32, 4, -1)
    t = gg.new_tensor_4d(ctx, Q4_0, 64, 3, 2, 1)
    assert t.nb == [18, 36, 108, 216] and t.n_dims == 3 and gg.nbytes(t) == 216
    e = gg.new_tensor_2d(ctx, F32, 4, 0)
    assert gg.is_empty(e) and gg.nbytes(e) == 0
    h = gg.new_tensor_3d(ctx, F16, 5, 1, 3)
    assert h.nb == [2, 10, 10, 30] and h.n_dims == 3 and gg.nelements(h) == 15 and gg.nrows(h) == 3
    assert "F16" in repr(h).upper() and "[5, 1, 3]" in repr(h)


def test_set_name_truncates_to_63_chars(ctx, ggml):
    from pyggml.testing import ggml_lib as L
    t = gg.new_tensor_1d(ctx, F32, 4)
    assert gg.set_name(t, "n" * 100) is t
    assert gg.get_name(t) == "n" * 63
    v = gg.view_1d(ctx, t, 2, 0)               # derived names are truncated like vsnprintf's
    assert v.name == ("n" * 63 + " (view)")[:63]
    with L.context(1 << 16) as gctx:
        gt = L.new_tensor(gctx, F32, [4])
        ggml.ggml_set_name(gt, "n" * 100)
        assert L.get_name(gt) == t.name
        assert L.get_name(ggml.ggml_view_1d(gctx, gt, 2, 0)) == v.name
    assert gg.format_name(t, "blk.%d.%s", 3, "attn_q").name == "blk.3.attn_q"


# --- views: errors (the accepted ones are compared with ggml in test_views_vs_ggml) -----------

def test_views_out_of_the_parents_bounds(ctx):
    a = gg.set_name(gg.new_tensor_2d(ctx, F32, 4, 3), "a")
    with pytest.raises(ShapeError, match="out of the bounds.*'a'"):
        gg.view_1d(ctx, a, 13, 0)
    with pytest.raises(ShapeError, match="offset 36"):
        gg.view_1d(ctx, a, 4, 36)
    with pytest.raises(ShapeError, match="past the end"):
        gg.view_2d(ctx, a, 4, 3, 20, 0)           # strided extent 56 > 48 bytes
    with pytest.raises(ShapeError, match="negative offset"):
        gg.view_1d(ctx, a, 4, -4)
    v = gg.view_2d(ctx, a, 2, 3, a.nb[1], 8)      # the last two columns: in bounds
    assert gg.nbytes(v) == 40 and v.view_offs == 8
    q = gg.new_tensor_2d(ctx, Q4_0, 64, 2)
    with pytest.raises(ShapeError, match="block size"):
        gg.view_1d(ctx, q, 16, 0)


def test_failed_view_does_not_consume_context_memory(ctx):
    a = gg.new_tensor_2d(ctx, F32, 4, 3)
    used = ctx.used_mem()
    with pytest.raises(ShapeError):
        gg.view_2d(ctx, a, 4, 3, 20, 0)
    assert ctx.used_mem() == used


@pytest.mark.parametrize("axes", [(0, 0, 1, 2), (0, 1, 2, 4), (-1, 0, 1, 2), (3, 2, 1, 1)])
def test_permute_axes_not_a_permutation(ctx, axes):
    a = gg.set_name(gg.new_tensor_3d(ctx, F32, 4, 3, 2), "a")
    with pytest.raises(ParamError, match=r"PERMUTE.*not a permutation.*'a'"):
        gg.permute(ctx, a, *axes)
    with pytest.raises(ValueError):            # ParamError is also a ValueError
        gg.permute(ctx, a, *axes)


def test_reshape_errors(ctx):
    a = gg.set_name(gg.new_tensor_2d(ctx, F32, 4, 3), "a")
    with pytest.raises(ShapeError, match="contiguous"):
        gg.reshape_1d(ctx, gg.transpose(ctx, a), 12)
    with pytest.raises(ShapeError, match="contiguous"):
        gg.reshape_2d(ctx, gg.view_2d(ctx, a, 2, 3, a.nb[1], 0), 3, 2)
    with pytest.raises(ShapeError, match="12 elements"):
        gg.reshape_2d(ctx, a, 5, 2)
    r = gg.reshape(ctx, a, gg.new_tensor_3d(ctx, I32, 2, 3, 2))
    assert r.ne == [2, 3, 2, 1] and r.type == F32 and r.view_src is a
    with pytest.raises(ShapeError):
        gg.cont_2d(ctx, a, 5, 2)


def test_nbytes_of_views_and_permuted_tensors(ctx):
    a = gg.new_tensor_3d(ctx, F32, 4, 3, 2)
    assert gg.nbytes(a) == 96
    assert gg.nbytes(gg.transpose(ctx, a)) == 96
    assert gg.nbytes(gg.permute(ctx, a, 2, 0, 1, 3)) == 96
    assert gg.nbytes(gg.view_2d(ctx, a, 2, 3, 16, 4)) == 40        # 2 rows of 16 + 8
    assert gg.nbytes(gg.view_3d(ctx, a, 1, 1, 2, 16, 48, 0)) == 52  # 1 element per plane
    q = gg.new_tensor_2d(ctx, Q8_0, 64, 3)
    assert gg.nbytes(q) == 3 * 68
    assert gg.nbytes(gg.permute(ctx, q, 0, 2, 1, 3)) == 3 * 68
    assert gg.nbytes(gg.view_1d(ctx, q, 32, 68)) == 34
    assert gg.is_contiguously_allocated(a) and not gg.is_contiguously_allocated(gg.view_2d(ctx, a, 2, 3, 16, 4))


def test_build_rejects_bad_arguments(ctx):
    a = gg.new_tensor_1d(ctx, F32, 4)
    with pytest.raises(GGMLError, match="ctx is None"):
        gg.cont(None, a)
    with pytest.raises(GGMLError, match="must be a Tensor"):
        gg.cont(ctx, np.zeros(4))
    with pytest.raises(GGMLError, match="unknown op"):
        gg.get_op("NO_SUCH_OP")


# --- data --------------------------------------------------------------------------------------

def test_tensor_set_and_get_bounds(ctx):
    a = gg.set_name(gg.new_tensor_2d(ctx, F32, 4, 3), "a")
    for raw, off in ((bytes(52), 0), (bytes(8), 44), (bytes(4), -4)):
        with pytest.raises(DataError, match=r"tensor_set.*'a'.*48 bytes"):
            gg.tensor_set(a, raw, off)
    with pytest.raises(DataError, match="tensor_get"):
        gg.tensor_get(a, 40, 12)
    with pytest.raises(DataError):
        gg.tensor_get(a, -1, 4)
    vals = np.arange(12, dtype=np.float32)
    gg.tensor_set(a, vals)
    assert gg.tensor_get(a) == vals.tobytes()
    gg.tensor_set(a, np.float32([-1, -2]).tobytes(), 8)
    assert gg.tensor_get(a, 8, 8) == np.float32([-1, -2]).tobytes()
    # a view writes into its parent at its offset
    v = gg.view_1d(ctx, a, 4, 16)
    gg.tensor_set(v, np.float32([9, 9, 9, 9]))
    np.testing.assert_array_equal(gg.to_numpy(a)[1], [9, 9, 9, 9])
    with pytest.raises(DataError):
        gg.tensor_set(v, bytes(20))
    gg.tensor_memset(a, 0, 0, 16)
    assert not gg.to_numpy(a)[0].any()
    with pytest.raises(DataError):
        gg.tensor_memset(a, 0, 40, 16)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (2, 1, 3, 5), (1,)])
def test_numpy_round_trips_f32_f16_i32(ctx, rng, shape):
    x = rng.uniform(-10, 10, shape).astype(np.float32)
    t = gg.from_numpy(ctx, x, name="x")
    assert t.type == F32 and t.name == "x" and t.ne[:len(shape)] == list(shape[::-1])
    out = gg.to_numpy(t)
    assert out.dtype == np.float32 and out.shape == x.reshape(t.ne[:t.n_dims][::-1]).shape
    np.testing.assert_array_equal(out.reshape(shape), x)
    h = gg.from_numpy(ctx, x.astype(np.float16))
    assert h.type == F16
    np.testing.assert_array_equal(gg.to_numpy(h).reshape(shape), x.astype(np.float16).astype(np.float32))
    h2 = gg.from_numpy(ctx, x, type=F16)            # f32 -> f16 rounds to nearest-even
    assert gg.tensor_get(h2) == x.astype(np.float16).tobytes()
    i = rng.integers(-2**31, 2**31 - 1, shape, dtype=np.int64)
    ti = gg.from_numpy(ctx, i.astype(np.int32))
    assert ti.type == I32
    out = gg.to_numpy(ti)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out.reshape(shape), i.astype(np.int32))
    assert gg.from_numpy(ctx, x.astype(np.float64)).type == F32
    assert gg.from_numpy(ctx, i).type == I32
    b = gg.from_numpy(ctx, x, type="bf16")
    np.testing.assert_allclose(gg.to_numpy(b).reshape(shape), x, rtol=2 ** -8)


@pytest.mark.parametrize("type", [Q4_0, Q8_0, gg.TYPE_Q4_1, gg.TYPE_Q5_0, gg.TYPE_Q5_1])
def test_from_numpy_quantized_round_trip(ctx, rng, type):
    _quants_or_skip()
    x = rng.uniform(-1, 1, (3, 64)).astype(np.float32)
    t = gg.from_numpy(ctx, x, type=type)
    assert t.type == type and gg.nbytes(t) == 3 * gg.row_size(type, 64)
    y = gg.to_numpy(t)
    assert y.shape == (3, 64) and y.dtype == np.float32
    tol = {Q8_0: 1 / 127, Q4_0: 1 / 7, gg.TYPE_Q4_1: 1 / 15}.get(type, 1 / 15)
    assert np.abs(y - x).max() <= tol * 1.01
    assert gg.tensor_get(t) == bytes(gg.quantize(type, x))


def test_from_numpy_errors(ctx):
    with pytest.raises(ShapeError, match="4 dims"):
        gg.from_numpy(ctx, np.zeros((1, 1, 1, 1, 2), np.float32))
    with pytest.raises(TypeError_, match="complex"):
        gg.from_numpy(ctx, np.zeros(3, np.complex64))
    with pytest.raises(DataError, match="no_alloc"):
        gg.from_numpy(gg.init(mem_size=1 << 16, no_alloc=True), np.zeros(3, np.float32))
    with pytest.raises(ShapeError):
        gg.from_numpy(ctx, np.zeros(33, np.float32), type=Q4_0)
    t = gg.from_numpy(ctx, np.float32(2.5))               # a scalar becomes ne=[1]
    assert t.ne == [1, 1, 1, 1] and gg.get_f32_1d(t, 0) == 2.5


def test_set_f32_get_f32_1d_and_friends(ctx):
    t = gg.new_tensor_2d(ctx, F32, 3, 2)
    assert gg.set_f32(t, 1.5) is t
    np.testing.assert_array_equal(gg.to_numpy(t), np.full((2, 3), 1.5, np.float32))
    gg.set_f32_1d(t, 4, -2.0)
    assert gg.get_f32_1d(t, 4) == -2.0 and gg.get_f32_1d(t, -2) == -2.0
    assert gg.get_f32_nd(t, 1, 1) == -2.0
    gg.set_f32_nd(t, 2, 0, 0, 0, 7.0)
    assert gg.to_numpy(t)[0, 2] == 7.0
    for i in (6, -7):
        with pytest.raises(DataError, match="out of range"):
            gg.get_f32_1d(t, i)
    h = gg.new_tensor_1d(ctx, F16, 2)
    gg.set_f32_1d(h, 0, 0.1)
    assert gg.get_f32_1d(h, 0) == float(np.float16(0.1))
    b = gg.new_tensor_1d(ctx, BF16, 2)
    gg.set_f32(b, 1.0 + 2 ** -9)                     # rounds to 1.0 in bf16
    assert gg.get_f32_1d(b, 1) == 1.0
    i = gg.new_tensor_1d(ctx, I32, 3)
    gg.set_i32(i, 7)
    gg.set_i32_1d(i, 1, -3)
    assert [gg.get_i32_1d(i, k) for k in range(3)] == [7, -3, 7]
    q = gg.new_tensor_1d(ctx, Q4_0, 32)
    with pytest.raises(TypeError_, match="block type"):
        gg.get_f32_1d(q, 0)
    # element access through a view honours its strides
    tt = gg.transpose(ctx, t)
    assert gg.get_f32_1d(tt, 1) == gg.to_numpy(t)[1, 0]
    d = gg.get_data_f32(t)
    d[0] = 42.0
    assert gg.get_f32_1d(t, 0) == 42.0
    with pytest.raises(TypeError_):
        gg.get_data_f32(tt)


def test_to_numpy_of_views_reads_through_strides(ctx, rng):
    x = rng.uniform(-1, 1, (2, 3, 4)).astype(np.float32)
    a = gg.from_numpy(ctx, x)
    np.testing.assert_array_equal(gg.to_numpy(gg.transpose(ctx, a)), np.swapaxes(x, 1, 2))
    np.testing.assert_array_equal(gg.to_numpy(gg.permute(ctx, a, 1, 2, 0, 3)),
                                  np.transpose(x, (1, 2, 0)))
    np.testing.assert_array_equal(gg.to_numpy(gg.view_2d(ctx, a, 2, 3, a.nb[1], 4)), x[0, :, 1:3])


# --- no_alloc ----------------------------------------------------------------------------------

def test_no_alloc_tensors_have_no_data_until_a_backend_allocates_them():
    c = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.set_name(gg.new_tensor_2d(c, F32, 4, 3), "a")
    assert not a.is_allocated
    for f in (gg.to_numpy, gg.tensor_get, lambda t: gg.tensor_set(t, bytes(4)),
              lambda t: gg.set_f32(t, 1.0), lambda t: t.data_ptr):
        with pytest.raises(DataError, match="no data|no_alloc"):
            f(a)
    y = gg.cont(c, gg.transpose(c, a))
    gf = gg.new_graph(c)
    gg.build_forward_expand(gf, y)
    gg.backend_graph_compute(gg.backend_reference_init(), gf)
    assert a.is_allocated and y.is_allocated
    assert gg.to_numpy(y).shape == (4, 3)
    gg.set_f32(a, 2.0)
    gg.backend_graph_compute(gg.backend_reference_init(), gf)
    np.testing.assert_array_equal(gg.to_numpy(y), np.full((4, 3), 2.0, np.float32))


def test_set_no_alloc_switches_data_on():
    c = gg.init(mem_size=1 << 16, no_alloc=True)
    a = gg.new_tensor_1d(c, F32, 4)
    gg.set_no_alloc(c, False)
    b = gg.new_tensor_1d(c, F32, 4)
    assert not a.is_allocated and b.is_allocated
    gg.set_no_alloc(c, True)
    assert not gg.new_tensor_1d(c, F32, 4).is_allocated


# --- graphs ------------------------------------------------------------------------------------

def _diamond(ctx, api, new):
    """A graph with shared sources, built with the same calls on pyggml or real ggml."""
    a, b = new("a", [4, 3]), new("b", [3, 4])
    t = api("transpose", a)
    c = api("cont", t)
    v = api("view_1d", a, 4, 16)
    r = api("reshape_2d", c, 4, 3)
    y = api("cpy", r, b)                       # src0 chain first, then b
    z = api("cpy", api("cont", v), api("view_1d", y, 4, 0))
    return [t, c, v, r, y, z]


def test_graph_order_matches_ggml(ctx, ggml):
    from pyggml.testing import ggml_lib as L
    py_nodes = _diamond(ctx, lambda fn, *a: getattr(gg, fn)(ctx, *a),
                        lambda name, ne: gg.set_name(gg.new_tensor(ctx, F32, 2, ne), name))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, py_nodes[-1])
    with L.context(1 << 20) as gctx:
        g_nodes = _diamond(gctx, lambda fn, *a: getattr(ggml, "ggml_" + fn)(gctx, *a),
                           lambda name, ne: L.new_tensor(gctx, F32, ne, name=name))
        ggf = ggml.ggml_new_graph(gctx)
        ggml.ggml_build_forward_expand(ggf, g_nodes[-1])
        n = ggml.ggml_graph_n_nodes(ggf)
        theirs = [L.get_name(ggml.ggml_graph_node(ggf, i)) for i in range(n)]
        assert [t.name for t in py_nodes] == [L.get_name(p) for p in g_nodes]   # names agree
    assert [t.name for t in gf.nodes] == theirs
    assert [t.name for t in gf.leafs] == ["a", "b"]
    assert gg.graph_n_nodes(gf) == n == len(gg.graph_nodes(gf))


def test_graph_dfs_order_leafs_and_lookup(ctx):
    a = gg.new_tensor_2d(ctx, F32, 4, 3)                 # unnamed leafs get leaf_<i>
    b = gg.set_name(gg.new_tensor_2d(ctx, F32, 3, 4), "b")
    y = gg.cpy(ctx, gg.cont(ctx, gg.transpose(ctx, a)), b)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    gg.build_forward_expand(gf, y)                       # idempotent
    assert [t.op_name for t in gf.nodes] == ["TRANSPOSE", "CONT", "CPY"]
    assert gf.leafs == [a, b] and a.name == "leaf_0" and b.name == "b"
    assert gg.graph_node(gf, -1) is y and gg.graph_node(gf, 0) is gf.nodes[0]
    for i in (3, -4):
        with pytest.raises(GraphError, match="out of range"):
            gg.graph_node(gf, i)
    assert gg.graph_get_tensor(gf, "b") is b
    # derived names are fixed when the op is built (a was unnamed then), as in ggml
    assert gf.nodes[1].name == " (transposed) (cont)"
    assert gg.graph_get_tensor(gf, " (transposed) (cont)") is gf.nodes[1]
    assert gg.graph_get_tensor(gf, "nope") is None
    with pytest.raises(GraphError, match="Tensor"):
        gg.build_forward_expand(gf, "y")
    # a PARAM leaf is a node, as in ggml
    p = gg.new_tensor_1d(ctx, F32, 4)
    gg.set_param(p)
    g2 = gg.new_graph(ctx)
    gg.build_forward_expand(g2, gg.cont(ctx, p))
    assert g2.nodes[0] is p and not g2.leafs


def test_graph_view(ctx):
    a = gg.new_tensor_2d(ctx, F32, 4, 3)
    y = gg.cont(ctx, gg.transpose(ctx, gg.cont(ctx, a)))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    v = gg.graph_view(gf, 1, 3)
    assert v.nodes == gf.nodes[1:3] and v.leafs == [] and gg.graph_n_nodes(v) == 2
    assert gg.graph_node(v, -1) is gf.nodes[2]
    assert gg.graph_n_nodes(gg.graph_view(gf, 2, 2)) == 0
    for i0, i1 in ((2, 1), (-1, 2), (0, 4)):
        with pytest.raises(GraphError, match="graph_view"):
            gg.graph_view(gf, i0, i1)


def test_graph_full_is_an_error(ctx):
    a = gg.new_tensor_1d(ctx, F32, 4)
    gf = gg.new_graph_custom(ctx, 2)
    assert gg.graph_size(gf) == 2
    with pytest.raises(GraphError, match="graph is full.*new_graph_custom"):
        gg.build_forward_expand(gf, gg.cont(ctx, gg.cont(ctx, gg.cont(ctx, a))))
    b, c = gg.new_tensor_1d(ctx, F32, 4), gg.new_tensor_1d(ctx, F32, 4)
    g2 = gg.new_graph_custom(ctx, 2)
    with pytest.raises(GraphError, match="2 leafs"):
        gg.build_forward_expand(g2, gg.cpy(ctx, a, gg.cpy(ctx, b, c)))
    with pytest.raises(GraphError):
        gg.new_graph_custom(ctx, 0)


def test_graph_cpy_and_clear(ctx):
    a = gg.new_tensor_1d(ctx, F32, 4)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, gg.cont(ctx, gg.cont(ctx, a)))
    small = gg.new_graph_custom(ctx, 1)
    with pytest.raises(GraphError, match="too small"):
        gg.graph_cpy(gf, small)
    big = gg.new_graph_custom(ctx, 8)
    gg.graph_cpy(gf, big)
    assert big.nodes == gf.nodes and big.leafs == gf.leafs
    gg.graph_clear(gf)
    assert gg.graph_n_nodes(gf) == 0 and not gf.leafs


# --- divergences from ggml found by these tests (reported with patches) --------------------------

def test_cast_builds_and_is_named_like_ggml(ctx):
    a = gg.set_name(gg.new_tensor_1d(ctx, F32, 4), "a")
    c = gg.cast(ctx, a, F16)
    assert c.type == F16 and c.src[1] is c and c.name == "a (copy)"


def test_unnamed_nodes_are_named_like_ggml(ctx):
    op = OpDef("TEST_UNNAMED", lambda s, p: Out(s[0].type, s[0].ne))
    a = gg.new_tensor_1d(ctx, F32, 4)
    y = op.build(ctx, [op.build(ctx, [a])])
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    assert [t.name for t in gf.nodes] == ["node_0", "node_1"]
