"""Rows, shape, sort and upscale ops (pyggml/ops/rows.py, shape.py, sort.py, upscale.py): the
spec, real ggml, the Numba kernels.

(a) every non-slow case of every op: the NumPy reference against real ggml (libggml-python),
    within the case's threshold (exact for data movement), each op in a child process so a
    GGML_ASSERT abort cannot take pytest down;
(b) every misuse raises a GGMLError subclass that names the op;
(c) the Numba kernels equal the reference for 1, 2 and 3 threads (bit-exact where the op is).
"""
from __future__ import annotations

import numpy as np
import pytest
from _cases import NO_GGML
from _cases import assert_isolated_vs_ggml
from _cases import assert_numba_matches
from _cases import op_cases
from _cases import ref_backend
from _cases import run_graph
from _cases import sample

import pyggml as gg
from pyggml import data
from pyggml.errors import ComputeError
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops.upscale import SCALE_FLAG_ANTIALIAS
from pyggml.ops.upscale import SCALE_MODE_BICUBIC
from pyggml.ops.upscale import SCALE_MODE_BILINEAR
from pyggml.testing.asserts import assert_op_error
from pyggml.testing.asserts import named_tensor

ROW_OPS = ["GET_ROWS", "GET_ROWS_BACK", "SET_ROWS"]
SHAPE_OPS = ["CONCAT", "REPEAT", "REPEAT_BACK", "PAD", "SET", "ACC", "ARANGE",
             "TIMESTEP_EMBEDDING", "ARGSORT", "TOP_K", "UPSCALE"]


# --- helpers -----------------------------------------------------------------------------------

def _cases(name, ggml=False):
    return op_cases([name], skip=(NO_GGML,) if ggml else ())


# --- (a) the reference against real ggml -----------------------------------------------------------

@pytest.mark.parametrize("name", ROW_OPS + SHAPE_OPS)
def test_reference_matches_ggml(name, ggml):
    assert_isolated_vs_ggml(name, _cases(name, ggml=True))


# --- (c) Numba kernels against the reference -------------------------------------------------------

KERNEL_OPS = ["GET_ROWS", "GET_ROWS_BACK", "SET_ROWS", "CONCAT", "REPEAT", "PAD", "ARANGE",
              "ARGSORT", "TOP_K", "SET", "ACC", "REPEAT_BACK", "TIMESTEP_EMBEDDING", "UPSCALE"]
# how many cases of each op the pytest run checks on 3 thread counts (the CLI runs them all)
_PER_OP = {"SET_ROWS": 40, "CONCAT": 16, "TOP_K": 30}


@pytest.mark.parametrize("name", KERNEL_OPS)
def test_numba_matches_reference(name, numba_backends):
    from pyggml.backends.numba_cpu.kernels import KERNELS
    entry = KERNELS.get(name)
    if entry is None or not entry.variants:
        pytest.skip(f"no Numba kernel for {name}")
    assert_numba_matches(sample(_cases(name), _PER_OP.get(name, 30)), numba_backends, seed=3)


@pytest.mark.parametrize("type", ["q4_0", "q8_0", "q5_1", "f16", "bf16", "q4_K", "q6_K"])
def test_numba_set_rows_bytes_identical_to_reference(type, numba_backends):
    """Quantizing set_rows is byte-exact with the reference (ggml-cpu's from_float);
    the K-quants' rows are one 256-wide super-block."""
    rng = np.random.default_rng(7)
    w = 256 if type.endswith("_K") else 64
    ids = np.array([[5, 0, 9, 2, 5]])            # a repeated id: the last write wins

    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.as_type(type), w, 12)
        gg.set_name(a, "a")
        b = gg.new_tensor_2d(ctx, gg.TYPE_F32, w, 5)
        gg.set_name(b, "b")
        c = gg.new_tensor_1d(ctx, gg.TYPE_I64, 5)
        gg.set_name(c, "c")
        return gg.set_rows(ctx, a, b, c)
    fill = dict(a=rng.uniform(-1, 1, (12, w)), b=rng.uniform(-1, 1, (5, w)), c=ids)
    want = data.tensor_get(run_graph(ref_backend(), build, fill))
    for be in numba_backends.values():
        got = data.tensor_get(run_graph(be, build, fill))
        assert got == want
    # rows that were not addressed keep their exact bytes
    out = run_graph(ref_backend(), build, fill)
    ctx = gg.init(mem_size=1 << 20)
    a0 = gg.new_tensor_2d(ctx, gg.as_type(type), w, 12)
    data.write(a0, fill["a"])
    rs = gg.row_size(type, w)
    raw, raw0 = data.tensor_get(out), data.tensor_get(a0)
    for r in (1, 3, 4, 6, 7, 8, 10, 11):
        assert raw[r * rs:(r + 1) * rs] == raw0[r * rs:(r + 1) * rs]


@pytest.mark.parametrize("op", ["CPY", "SET_ROWS"])
def test_q8_0_stores_quantize_as_ggml_cpu(op, numba_backends):
    """cpy and set_rows into Q8_0 store what ggml-cpu's from_float stores (x86: 127/amax, ties
    to even; TypeTraits.from_float_cpu, checked against real ggml in test_quants), not the
    reference quantizer's round-half-away: the inputs are halves with amax 127 in every
    block, so every .5 is a tie the two round apart."""
    rng = np.random.default_rng(11)
    w, n = 64, 6
    vals = rng.integers(-254, 255, (n, w)).astype(np.float32) / 2
    vals[:, ::32] = 127.0
    q8 = gg.as_type("q8_0")

    def build(ctx):
        b = gg.new_tensor_2d(ctx, gg.TYPE_BF16 if op == "CPY" else gg.TYPE_F32, w, n)
        gg.set_name(b, "b")
        a = gg.new_tensor_2d(ctx, q8, w, n)
        if op == "CPY":
            return gg.cpy(ctx, b, a)
        c = gg.new_tensor_1d(ctx, gg.TYPE_I64, n)
        gg.set_name(c, "c")
        return gg.set_rows(ctx, a, b, c)
    fill = dict(b=vals, c=np.arange(n)[None])
    from pyggml.types import TRAITS
    want = TRAITS[q8].from_float_cpu(vals.reshape(-1)).tobytes()
    assert want != TRAITS[q8].from_float(vals.reshape(-1)).tobytes()    # the ties matter
    assert data.tensor_get(run_graph(ref_backend(), build, fill)) == want
    for be in numba_backends.values():
        assert data.tensor_get(run_graph(be, build, fill)) == want


def test_set_rows_writes_its_destination_in_place():
    """The result is a view of a: computing writes a (the KV cache update pattern)."""
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F16, 4, 6)
    b = gg.from_numpy(ctx, np.arange(8, dtype=np.float32).reshape(2, 4))
    c = gg.from_numpy(ctx, np.array([4, 1], dtype=np.int32))
    data.write(a, 0.0)
    r = gg.set_rows(ctx, a, b, c)
    assert r.view_src is a and r.op.name == "SET_ROWS" and r.src[2] is a
    assert r.src[0] is b and r.src[1] is c and 2 in r.op.writes
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, r)
    ref_backend().graph_compute(gf)
    got = gg.to_numpy(a)
    assert np.array_equal(got[4], [0, 1, 2, 3]) and np.array_equal(got[1], [4, 5, 6, 7])
    assert not got[[0, 2, 3, 5]].any()


def test_get_rows_result_types_and_shape():
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    ids = gg.new_tensor_3d(ctx, gg.TYPE_I32, 3, 2, 5)
    for t, want in ((gg.TYPE_F32, gg.TYPE_F32), (gg.TYPE_F16, gg.TYPE_F32),
                    (gg.TYPE_Q4_0, gg.TYPE_F32), (gg.TYPE_BF16, gg.TYPE_F32),
                    (gg.TYPE_I32, gg.TYPE_I32)):
        a = gg.new_tensor_4d(ctx, t, 64, 7, 2, 5)
        r = gg.get_rows(ctx, a, ids)
        assert r.type == want and r.ne == [64, 3, 2, 5]


def test_argsort_and_top_k_orders(numba_backends):
    """Ties keep index order (stable) and NaN sorts last; top_k swaps its first two, as ggml."""
    x = np.array([[3.0, 1.0, 3.0, np.nan, -2.0, 1.0, 7.0, 0.0]], dtype=np.float32)

    def fill():
        return dict(x=x)

    def argsort_graph(order):
        def build(ctx):
            t = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 1)
            gg.set_name(t, "x")
            return gg.argsort(ctx, t, order)
        return build

    def top_k_graph(ctx):
        t = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 1)
        gg.set_name(t, "x")
        return gg.top_k(ctx, t, 4)

    asc = [4, 7, 1, 5, 0, 2, 6, 3]
    desc = [6, 0, 2, 1, 5, 7, 4, 3]
    for be in [ref_backend()] + list(numba_backends.values()):
        assert gg.to_numpy(run_graph(be, argsort_graph(0), fill())).tolist() == asc
        assert gg.to_numpy(run_graph(be, argsort_graph(1), fill())).tolist() == desc
        assert gg.to_numpy(run_graph(be, top_k_graph, fill())).tolist() == [0, 6, 2, 1]


def test_top_k_of_a_long_row_with_ties_and_nan(numba_backends):
    """k << n takes the kernel's heap selection: same set and order as the full stable sort."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 20, (3, 200)).astype(np.float32)
    x[0, [5, 17]] = np.nan
    x[1, :] = 4.0                                  # all ties: the lowest indices win

    def build(ctx):
        t = gg.new_tensor_2d(ctx, gg.TYPE_F32, 200, 3)
        gg.set_name(t, "x")
        return gg.top_k(ctx, t, 7)
    want = gg.to_numpy(run_graph(ref_backend(), build, dict(x=x)))
    assert want[1].tolist() == [1, 0, 2, 3, 4, 5, 6]
    assert not np.isin(want[0], [5, 17]).any()
    for be in numba_backends.values():
        assert np.array_equal(gg.to_numpy(run_graph(be, build, dict(x=x))), want)


def test_concat_of_permuted_and_quantized_sources(numba_backends):
    """concat is a byte copy: quantized blocks are moved, never re-quantized."""
    rng = np.random.default_rng(1)
    va, vb = rng.uniform(-1, 1, (3, 64)), rng.uniform(-1, 1, (3, 32))

    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 64, 3)
        gg.set_name(a, "a")
        b = gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 32, 3)
        gg.set_name(b, "b")
        return gg.concat(ctx, a, b, 0)
    for be in [ref_backend()] + list(numba_backends.values()):
        out = run_graph(be, build, dict(a=va, b=vb))
        ctx = gg.init(mem_size=1 << 20)
        qa, qb = gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 64, 3), gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 32, 3)
        data.write(qa, va)
        data.write(qb, vb)
        ra, rb = data.tensor_get(qa), data.tensor_get(qb)
        raw = data.tensor_get(out)
        for r in range(3):
            assert raw[r * 54:(r + 1) * 54] == ra[r * 36:(r + 1) * 36] + rb[r * 18:(r + 1) * 18]


def test_get_rows_bad_id_is_an_error_not_a_crash(numba_backends):
    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
        gg.set_name(a, "a")
        b = gg.new_tensor_1d(ctx, gg.TYPE_I32, 2)
        gg.set_name(b, "b")
        return gg.get_rows(ctx, a, b)
    for be in [ref_backend()] + list(numba_backends.values()):
        with pytest.raises(ComputeError, match="GET_ROWS"):
            run_graph(be, build, dict(a=np.zeros((3, 4)), b=np.array([1, 3])))


def test_set_rows_bad_id_is_an_error_not_a_crash(numba_backends):
    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 32, 3)
        gg.set_name(a, "a")
        b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 32, 2)
        gg.set_name(b, "b")
        c = gg.new_tensor_1d(ctx, gg.TYPE_I64, 2)
        gg.set_name(c, "c")
        return gg.set_rows(ctx, a, b, c)
    for be in [ref_backend()] + list(numba_backends.values()):
        with pytest.raises(ComputeError, match="SET_ROWS"):
            run_graph(be, build, dict(a=np.zeros((3, 32)), b=np.ones((2, 32)), c=np.array([0, -1])))


def test_a_row_function_missing_from_the_table_is_an_error_not_a_crash(numba_backends):
    """GET_ROWS calls the type's row function through kernels/row_fns.TABLE: an empty slot
    (a function the node's kernel child did not make ready) stops the node, it is not called."""
    from pyggml.backends.numba_cpu.kernels import row_fns

    def build(ctx):
        a = gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 32, 3)
        gg.set_name(a, "a")
        b = gg.new_tensor_1d(ctx, gg.TYPE_I32, 2)
        gg.set_name(b, "b")
        return gg.get_rows(ctx, a, b)
    fill = dict(a=np.arange(96.0).reshape(3, 32), b=np.array([2, 0]))
    want = data.to_numpy(run_graph(ref_backend(), build, fill))
    be = numba_backends[1]
    assert np.array_equal(data.to_numpy(run_graph(be, build, fill)), want)
    slot = row_fns.DEQ * row_fns.N_TYPES + int(gg.TYPE_Q8_0)
    saved, row_fns.TABLE[slot] = row_fns.TABLE[slot], 0
    try:
        with pytest.raises(ComputeError, match="GET_ROWS"):
            run_graph(be, build, fill)
    finally:
        row_fns.TABLE[slot] = saved
    assert np.array_equal(data.to_numpy(run_graph(be, build, fill)), want)


# --- (b) misuse ----------------------------------------------------------------------------------

_t = named_tensor
_raises = assert_op_error


def test_get_rows_errors(ctx):
    a = _t(ctx, "f32", 8, 5, 2, 3, name="emb")
    ids = _t(ctx, "i32", 4, 2, 3, name="ids")
    e = _raises(TypeError_, "GET_ROWS", gg.get_rows, ctx, a, _t(ctx, "f32", 4, 2, 3))
    assert "emb" in str(e) or "row ids" in str(e)
    _raises(TypeError_, "GET_ROWS", gg.get_rows, ctx, _t(ctx, "i16", 8, 5, 2, 3), ids)
    _raises(ShapeError, "GET_ROWS", gg.get_rows, ctx, a, _t(ctx, "i32", 4, 3, 3))
    _raises(ShapeError, "GET_ROWS", gg.get_rows, ctx, a, _t(ctx, "i32", 4, 2, 2))
    _raises(ShapeError, "GET_ROWS", gg.get_rows, ctx, _t(ctx, "f32", 8, 5, 2, 1),
            _t(ctx, "i32", 4, 2, 1, 2))
    q = gg.transpose(ctx, _t(ctx, "q8_0", 64, 64))
    _raises(ShapeError, "GET_ROWS", gg.get_rows, ctx, q, _t(ctx, "i32", 2))


def test_get_rows_back_errors(ctx):
    grad, ids, fwd = _t(ctx, "f32", 8, 4), _t(ctx, "i32", 4), _t(ctx, "f32", 8, 6)
    _raises(TypeError_, "GET_ROWS_BACK", gg.get_rows_back, ctx, grad, _t(ctx, "f32", 4), fwd)
    _raises(TypeError_, "GET_ROWS_BACK", gg.get_rows_back, ctx, _t(ctx, "q8_0", 32, 4), ids,
            _t(ctx, "f32", 32, 6))
    _raises(ShapeError, "GET_ROWS_BACK", gg.get_rows_back, ctx, _t(ctx, "f32", 8, 4, 2), ids, fwd)
    _raises(ShapeError, "GET_ROWS_BACK", gg.get_rows_back, ctx, grad, ids, _t(ctx, "f32", 7, 6))
    _raises(ShapeError, "GET_ROWS_BACK", gg.get_rows_back, ctx, grad, _t(ctx, "i32", 5), fwd)


def test_set_rows_errors(ctx):
    a, b, c = _t(ctx, "f16", 8, 10, 2), _t(ctx, "f32", 8, 3, 2), _t(ctx, "i64", 3, 2)
    assert gg.set_rows(ctx, a, b, c).ne == a.ne
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, _t(ctx, "f16", 9, 10, 2), b, c)
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, _t(ctx, "f16", 8, 10, 3), b, c)
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, a, b, _t(ctx, "i64", 4, 2))
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, a, b, _t(ctx, "i64", 3, 3))
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, a, b, _t(ctx, "i64", 3, 1, 1, 2))
    _raises(TypeError_, "SET_ROWS", gg.set_rows, ctx, a, _t(ctx, "bf16", 8, 3, 2), c)
    _raises(TypeError_, "SET_ROWS", gg.set_rows, ctx, a, b, _t(ctx, "f32", 3, 2))
    _raises(TypeError_, "SET_ROWS", gg.set_rows, ctx, _t(ctx, "i32", 8, 10, 2), b, c)
    at = gg.transpose(ctx, _t(ctx, "f16", 10, 8, 2))
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, at, b, c)
    bt = gg.transpose(ctx, _t(ctx, "f32", 3, 8, 2))
    _raises(ShapeError, "SET_ROWS", gg.set_rows, ctx, a, bt, c)
    with pytest.raises(GGMLError, match="SET_ROWS"):
        gg.set_rows(ctx, a, b, None)


def test_concat_errors(ctx):
    a, b = _t(ctx, "f32", 4, 3, 2), _t(ctx, "f32", 4, 5, 2)
    assert gg.concat(ctx, a, b, 1).ne == [4, 8, 2, 1]
    _raises(ParamError, "CONCAT", gg.concat, ctx, a, b, 4)
    _raises(ParamError, "CONCAT", gg.concat, ctx, a, b, -1)
    _raises(TypeError_, "CONCAT", gg.concat, ctx, a, _t(ctx, "f16", 4, 5, 2), 1)
    _raises(ShapeError, "CONCAT", gg.concat, ctx, a, b, 0)
    qa = gg.transpose(ctx, _t(ctx, "q4_0", 64, 64))
    _raises(ShapeError, "CONCAT", gg.concat, ctx, qa, qa, 1)


def test_repeat_errors(ctx):
    a = _t(ctx, "f32", 3, 2)
    assert gg.repeat(ctx, a, _t(ctx, "f32", 6, 4, 2)).ne == [6, 4, 2, 1]
    _raises(ShapeError, "REPEAT", gg.repeat, ctx, a, _t(ctx, "f32", 5, 4))
    _raises(TypeError_, "REPEAT", gg.repeat, ctx, _t(ctx, "q4_0", 32, 2), _t(ctx, "q4_0", 64, 2))
    _raises(ShapeError, "REPEAT", gg.repeat_4d, ctx, a, 6, 3, 1, 1)
    _raises(ShapeError, "REPEAT_BACK", gg.repeat_back, ctx, a, _t(ctx, "f32", 2, 2))
    _raises(TypeError_, "REPEAT_BACK", gg.repeat_back, ctx, _t(ctx, "i32", 4, 2), _t(ctx, "i32", 2))


def test_pad_errors(ctx):
    a = _t(ctx, "f32", 3, 2)
    assert gg.pad_ext(ctx, a, 1, 2, 0, 1, 0, 0, 0, 0).ne == [6, 3, 1, 1]
    _raises(ParamError, "PAD", gg.pad, ctx, a, -1, 0, 0, 0)
    _raises(TypeError_, "PAD", gg.pad, ctx, _t(ctx, "i16", 3, 2), 1, 0, 0, 0)
    _raises(ShapeError, "PAD", gg.pad_circular, ctx, _t(ctx, "f32", 0, 2), 1, 0, 0, 0)


def test_set_and_acc_errors(ctx):
    a, b = _t(ctx, "f32", 6, 5), _t(ctx, "f32", 3, 2)
    assert gg.set_2d(ctx, a, b, a.nb[1], 4).ne == a.ne
    assert gg.set_inplace(ctx, a, b, a.nb[1], a.nb[2], a.nb[3], 0).view_src is a
    _raises(ShapeError, "SET", gg.set_1d, ctx, b, a, 0)                     # b larger than a
    _raises(ShapeError, "SET", gg.set_2d, ctx, a, b, a.nb[1], 1 << 30)
    _raises(ShapeError, "SET", gg.set_2d, ctx, a, b, a.nb[1], 4 * 28)        # runs past a's end
    _raises(ParamError, "SET", gg.set, ctx, a, b, -4, 0, 0, 0)
    _raises(TypeError_, "SET", gg.set_1d, ctx, a, _t(ctx, "i32", 3), 0)
    _raises(TypeError_, "SET", gg.set_1d, ctx, _t(ctx, "q4_0", 64), _t(ctx, "q4_0", 32), 0)
    _raises(ShapeError, "SET", gg.set_1d, ctx, gg.transpose(ctx, a), _t(ctx, "f32", 3), 0)
    assert gg.acc(ctx, a, b, a.nb[1], a.nb[2], a.nb[3], 8).ne == a.ne
    _raises(ShapeError, "ACC", gg.acc, ctx, b, a, b.nb[1], b.nb[2], b.nb[3], 0)
    _raises(ShapeError, "ACC", gg.acc, ctx, gg.transpose(ctx, a), b, 20, 100, 100, 0)
    _raises(TypeError_, "ACC", gg.acc, ctx, _t(ctx, "f16", 6, 5), b, 12, 60, 60, 0)
    _raises(TypeError_, "ACC", gg.acc, ctx, a, _t(ctx, "f16", 3, 2), a.nb[1], a.nb[2], a.nb[3], 0)
    _raises(ShapeError, "ACC", gg.acc, ctx, a, b, a.nb[1], a.nb[2], a.nb[3], 4 * 27)


def test_arange_timestep_errors(ctx):
    assert gg.arange(ctx, 0.0, 10.0, 3.0).ne[0] == 4
    _raises(ParamError, "ARANGE", gg.arange, ctx, 5.0, 5.0, 1.0)
    _raises(ParamError, "ARANGE", gg.arange, ctx, 0.0, 5.0, -1.0)
    _raises(ParamError, "ARANGE", gg.arange, ctx, 0.0, float("inf"), 1.0)
    ts = _t(ctx, "f32", 4)
    assert gg.timestep_embedding(ctx, ts, 7, 100).ne == [7, 4, 1, 1]
    _raises(TypeError_, "TIMESTEP_EMBEDDING", gg.timestep_embedding, ctx, _t(ctx, "f16", 4), 8, 100)
    _raises(ShapeError, "TIMESTEP_EMBEDDING", gg.timestep_embedding, ctx, _t(ctx, "f32", 4, 2),
            8, 100)
    _raises(ParamError, "TIMESTEP_EMBEDDING", gg.timestep_embedding, ctx, ts, 0, 100)


def test_argsort_top_k_errors(ctx):
    a = _t(ctx, "f32", 5, 3)
    _raises(TypeError_, "ARGSORT", gg.argsort, ctx, _t(ctx, "f16", 5), 0)
    _raises(ParamError, "ARGSORT", gg.argsort, ctx, a, 2)
    assert gg.top_k(ctx, a, 5).ne == [5, 3, 1, 1]
    _raises(ParamError, "TOP_K", gg.top_k, ctx, a, 6)
    _raises(TypeError_, "TOP_K", gg.top_k, ctx, _t(ctx, "i32", 5), 2)
    _raises(ShapeError, "ARGSORT_TOP_K", gg.argsort_top_k, ctx, a, 6)
    v = gg.argsort_top_k(ctx, a, 2)
    assert v.ne == [2, 3, 1, 1] and v.view_src is not None


def test_upscale_errors(ctx):
    a = _t(ctx, "f32", 4, 3, 2)
    assert gg.upscale(ctx, a, 2, SCALE_MODE_BILINEAR).ne == [8, 6, 2, 1]
    _raises(ParamError, "UPSCALE", gg.upscale, ctx, a, 1, 0)
    _raises(ParamError, "UPSCALE", gg.interpolate, ctx, a, 5, 5, 2, 1, 3)
    _raises(ParamError, "UPSCALE", gg.interpolate, ctx, a, 5, 5, 2, 1, 1 << 12)
    _raises(ParamError, "UPSCALE", gg.interpolate, ctx, a, 5, 5, 2, 1,
            SCALE_MODE_BICUBIC | SCALE_FLAG_ANTIALIAS)
    _raises(TypeError_, "UPSCALE", gg.interpolate, ctx, _t(ctx, "f16", 4, 3), 5, 5, 1, 1, 0)
    _raises(ShapeError, "UPSCALE", gg.interpolate, ctx, a, 0, 5, 2, 1, 0)


def test_op_params_layout_is_ggmls(ctx):
    """op_params words as ggml packs them (checked field by field against ggml.c)."""
    a = _t(ctx, "f32", 6, 5, 4)
    p = gg.pad_ext_circular(ctx, a, 1, 2, 3, 4, 5, 6, 7, 8)
    assert list(p.op_params[:9]) == [1, 2, 3, 4, 5, 6, 7, 8, 1]
    s = gg.set_2d_inplace(ctx, a, _t(ctx, "f32", 2, 2), 24, 8)
    assert list(s.op_params[:5]) == [24, a.nb[2], a.nb[3], 8, 1]
    assert gg.concat(ctx, a, a, 2).op_params[0] == 2
    assert gg.argsort(ctx, a, 1).op_params[0] == 1
    r = gg.arange(ctx, 1.5, 4.0, 0.5)
    assert r.op_params[:3].view(np.float32).tolist() == [1.5, 4.0, 0.5]
    assert gg.interpolate(ctx, a, 7, 7, 4, 1, 0x101).op_params[0] == 0x101
