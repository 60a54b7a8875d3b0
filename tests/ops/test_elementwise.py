"""Elementwise ops: binary (ADD SUB MUL DIV ADD1 ADD_ID), unary (every GGML_OP_UNARY op, SQR
SQRT LOG SIN COS CLAMP SCALE LEAKY_RELU) and GLU (REGLU GEGLU SWIGLU SWIGLU_OAI GEGLU_ERF
GEGLU_QUICK).

  (a) every case's reference result against real ggml (libggml-python) within the case's
      threshold; cases real ggml's CPU cannot run (pyggml does more: f16/bf16 SCALE) say so
      through their recipe (UnsupportedError) and are checked to be exactly those;
  (b) every misuse raises a GGMLError subclass naming the op and the tensors;
  (c) the Numba kernels equal the reference at 1, 2 and 3 threads (guard bytes intact).
Cases tagged "slow" run only with PYGGML_SLOW=1.
"""
from __future__ import annotations

import numpy as np
import pytest
from _cases import SLOW
from _cases import assert_slow_vs_ggml
from _cases import assert_vs_ggml
from _cases import op_cases
from _cases import ref_compute

import pyggml as gg
from pyggml import data
from pyggml.errors import ComputeError
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.errors import UnsupportedError
from pyggml.testing import harness
from pyggml.testing.asserts import assert_ggml_error

FAMILY = ("pyggml.ops.binary", "pyggml.ops.unary", "pyggml.ops.glu")
OPS = tuple(sorted(n for n, op in gg.OPS.items() if op.infer.__module__ in FAMILY))
# cases real ggml's CPU backend cannot compute (pyggml supports more types there)
PYGGML_ONLY = {"SCALE(type=f16,ne=[33,7,3,1],scale=0.125000,bias=-0.500000,inplace=0)",
               "SCALE(type=bf16,ne=[33,7,3,1],scale=3.000000,bias=0.250000,inplace=1)"}


def _cases(slow: bool):
    return op_cases(OPS, slow)


FAST = _cases(False)


# --- (a) reference == real ggml -------------------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_reference_matches_ggml(ggml, case):
    if str(case) in PYGGML_ONLY:
        with pytest.raises(UnsupportedError):
            assert_vs_ggml(case, n_threads=2)
        return
    assert_vs_ggml(case, n_threads=2)


@pytest.mark.skipif(not SLOW, reason="big cases: set PYGGML_SLOW=1")
def test_reference_matches_ggml_slow_cases(ggml):
    assert_slow_vs_ggml(_cases(True), n_threads=2)


def test_case_grids_follow_test_backend_ops():
    names = {str(c) for name in OPS for c in gg.get_op(name).cases()}
    for s in ("ADD(type=f32,ne=[10,5,4,3],nr=[2,2,2,2],nf=1,perm1=1,src_overlap=0)",
              "DIV(type=f16,ne=[1,1,120,120],nr=[1,1,1,1],nf=1,perm1=0,src_overlap=1)",
              "SILU(type=f16,ne_a=[5,7,11,13],v=1)",
              "GELU_QUICK(type=f32,ne_a=[128,2,2,2],v=0)",
              "SWIGLU(type=f32,ne_a=[5,7,11,13],v=1,swapped=1)",
              "GEGLU(type=f16,ne_a=[128,2,2,2],v=0,split)",
              "SWIGLU_OAI(type=f32,ne_a=[128,2,2,2],v=1,alpha=1.702000,limit=7.000000)",
              "ADD_ID(type_a=f32,type_b=f32,n_embd=129,n_experts=8,n_experts_used=4,n_token=129)",
              "SCALE(type=f32,ne=[10,10,10,10],scale=2.000000,bias=1.000000,inplace=1)",
              "CLAMP(type=f16,ne=[7,1,5,3],min=-0.500000,max=0.500000)",
              "LEAKY_RELU(type=f32,ne_a=[10,5,4,3],negative_slope=0.100000)",
              "SQRT(type=f32,ne=[10,3,3,2])", "XIELU(type=f16,ne=[512,16,1,1])"):
        assert s in names, s
    # every unary op of ggml's enum but XIELU runs test_unary's grid (2 types x 2 views x 2 shapes)
    for name in gg.ops.unary.UNARY_OPS:
        if name != "XIELU":
            assert sum(1 for c in gg.get_op(name).cases() if "ne_a" in c.vars and "inplace" not in c.vars
                       and c.vars["type"] != gg.TYPE_BF16) == 8, name


def test_op_params_are_packed_like_ggml(ggml):
    """The nodes pyggml builds carry ggml's op_params words (compared with real ggml's nodes)."""
    from pyggml.testing import ggml_lib
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 3)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 3)
    nodes = [gg.silu(ctx, a), gg.gelu_quick_inplace(ctx, a), gg.swiglu_swapped(ctx, a),
             gg.geglu_split(ctx, a, b), gg.swiglu_oai(ctx, a, b, 1.702, 7.0),
             gg.scale_bias(ctx, a, 0.125, -3.0), gg.scale(ctx, a, 2.0), gg.clamp(ctx, a, -1.5, 2.5),
             gg.leaky_relu(ctx, a, 0.01, False), gg.xielu(ctx, a, 4.0, 20.0, 0.5, 1e-7),
             gg.add(ctx, a, b), gg.sqr(ctx, a)]
    with ggml_lib.Mirror(nodes) as m:
        for n in nodes:
            want = ggml_lib.op_params(m.ptr(n))
            assert list(n.op_params) == list(want), (n.op.name, list(n.op_params), list(want))
            desc = ggml.ggml_op_desc(m.ptr(n)).decode()
            assert desc == n.op.name, (desc, n.op.name)
    assert nodes[0].op.ggml_op == "UNARY" and nodes[0].op_params[0] == 10       # GGML_UNARY_OP_SILU
    assert nodes[2].op.ggml_op == "GLU" and list(nodes[2].op_params[:2]) == [2, 1]


def test_gelu_tables_match_ggml(ggml):
    """GELU / GELU_QUICK read ggml's F16 lookup tables; pyggml rebuilds them (every F16 input)."""
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import ggml_lib
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    x = x[np.isfinite(x)]
    for fn in (gg.gelu, gg.gelu_quick):
        ctx = gg.init(mem_size=4 << 20)
        y = fn(ctx, gg.from_numpy(ctx, x))
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, y)
        with ggml_lib.Mirror([y]) as m:
            m.compute(1)
            want = m.value(y).reshape(-1)
        ReferenceBackend().graph_compute(gf)
        got = gg.to_numpy(y).astype(np.float64)
        assert np.count_nonzero(got != want) <= 2, fn.__name__     # 1 rounding tie of 65536


# --- reference semantics that are easy to get wrong ------------------------------------------------

def _ref(out_fn, *specs):
    """out_fn of leafs (type, values) (ne from the values' shape) on the reference: an array."""
    vals = [np.asarray(v, dtype=np.float64) for _, v in specs]
    out, _ = ref_compute(out_fn, *[(t, list(v.shape[::-1]), v) for (t, _), v in zip(specs, vals)])
    return gg.to_numpy(out)


def test_reference_semantics():
    x = [-2.5, -1.5, -0.5, 0.49999997, 0.5, 1.5, 2.5, -0.0]
    np.testing.assert_array_equal(_ref(gg.round, (gg.TYPE_F32, x)),
                                  [-3, -2, -1, 0, 1, 2, 3, 0])           # half away from zero
    nan = float("nan")
    np.testing.assert_array_equal(_ref(lambda c, a: gg.clamp(c, a, -1, 1), (gg.TYPE_F32, [nan, -5, 5, 0.5])),
                                  [1, -1, 1, 0.5])                      # NaN -> max, as ggml
    np.testing.assert_array_equal(_ref(gg.sgn, (gg.TYPE_F32, [nan, -3, 0, 2])), [0, -1, 0, 1])
    np.testing.assert_array_equal(_ref(gg.relu, (gg.TYPE_F32, [nan, -3, 0, 2])), [0, 0, 0, 2])
    # fused GLU with odd ne0: nc = ne0 // 2, the last element is ignored
    a = np.arange(1, 6, dtype=np.float64)[None]
    np.testing.assert_allclose(_ref(gg.reglu, (gg.TYPE_F32, a)), [1 * 3, 2 * 4])
    np.testing.assert_allclose(_ref(gg.reglu_swapped, (gg.TYPE_F32, a)), [3 * 1, 4 * 2])
    # broadcast: b repeats whole (i1 % ne11), not elementwise stretching
    a = np.zeros((4, 6))
    b = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(_ref(gg.add, (gg.TYPE_F32, a), (gg.TYPE_F32, b)), np.tile(b, (2, 2)))
    # add_id picks rows of b by ids (a [ne0, n_used, n_tokens], ids [n_used, n_tokens])
    a = np.zeros((2, 3, 4))
    b = np.arange(20).reshape(5, 4)
    ids = np.array([[4, 0, 2], [1, 1, 3]])
    out = _ref(gg.add_id, (gg.TYPE_F32, a), (gg.TYPE_F32, b), (gg.TYPE_I32, ids))
    np.testing.assert_array_equal(out, b[ids])
    # f16 results are ggml's: f32 math, then one rounding to f16
    h = _ref(gg.add, (gg.TYPE_F16, [1.0]), (gg.TYPE_F32, [2.0 ** -12]))
    assert h[0] == np.float16(1.0 + 2.0 ** -12)


def test_shapes_types_inplace_and_names():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.set_name(gg.new_tensor_3d(ctx, gg.TYPE_F16, 8, 3, 2), "x")
    b = gg.new_tensor_1d(ctx, gg.TYPE_F32, 8)
    y = gg.add(ctx, a, b)
    assert y.type == gg.TYPE_F16 and y.ne == a.ne and y.view_src is None and y.name == ""
    y = gg.mul_inplace(ctx, a, b)
    assert y.view_src is a and y.nb == a.nb and y.name == "x (view)"
    c = gg.add_cast(ctx, a, b, gg.TYPE_F32)
    assert c.type == gg.TYPE_F32 and c.op.name == "ADD"
    q = gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 64, 2)
    assert gg.add_cast(ctx, q, gg.new_tensor_2d(ctx, gg.TYPE_F32, 64, 2), gg.TYPE_F16).type == gg.TYPE_F16
    assert gg.add1(ctx, q, gg.new_tensor_1d(ctx, gg.TYPE_F32, 1)).type == gg.TYPE_Q8_0
    assert gg.clamp(ctx, a, 0, 1).view_src is a                          # ggml_clamp is in place
    assert gg.glu(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 9, 2), "SWIGLU").ne == [4, 2, 1, 1]
    assert gg.glu(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 9, 2), 0, True).op.name == "REGLU"
    assert gg.glu_split(ctx, b, b, "GGML_GLU_OP_GEGLU_ERF").ne == b.ne
    assert gg.unary(ctx, b, 10).op.name == "SILU" and gg.unary(ctx, b, "gelu").op.name == "GELU"
    assert gg.leaky_relu(ctx, a, 0.1, True).view_src is a
    assert gg.scale_inplace(ctx, b, 3.0).view_src is b
    s = gg.sqrt_inplace(ctx, b)
    assert s.view_src is b and s.op.name == "SQRT"


# --- (b) error paths ----------------------------------------------------------------------------

_raises = assert_ggml_error     # (cls, fn, *words) -> message


def test_binary_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.set_name(gg.new_tensor_3d(ctx, gg.TYPE_F32, 6, 4, 2), "act")
    b = gg.set_name(gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 4), "bias")
    h = gg.new_tensor_3d(ctx, gg.TYPE_F16, 6, 4, 2)
    i = gg.new_tensor_3d(ctx, gg.TYPE_I32, 6, 4, 2)
    q = gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 64, 2)
    for fn, op in ((gg.add, "ADD"), (gg.sub, "SUB"), (gg.mul, "MUL"), (gg.div, "DIV"),
                   (gg.add_inplace, "ADD"), (gg.div_inplace, "DIV")):
        _raises(ShapeError, lambda: fn(ctx, a, b), op, "broadcast", "'act'", "'bias'", "[6, 4, 2]")
        _raises(TypeError_, lambda: fn(ctx, a, h), op, "f32", "f16")       # f32 op f16: no
        _raises(TypeError_, lambda: fn(ctx, i, i), op, "i32")
        _raises(GGMLError, lambda: fn(ctx, None, a), op, "missing")
    _raises(ShapeError, lambda: gg.add(ctx, a, gg.new_tensor_1d(ctx, gg.TYPE_F32, 0)), "ADD", "empty")
    _raises(TypeError_, lambda: gg.add(ctx, q, gg.new_tensor_2d(ctx, gg.TYPE_F32, 64, 2)), "ADD", "q4_0")
    # add_cast (ggml_add_cast): a quantized/f16/bf16, rows of equal length, supported results
    _raises(TypeError_, lambda: gg.add_cast(ctx, a, a, gg.TYPE_F16), "ADD", "add_cast", "f32")
    _raises(ShapeError, lambda: gg.add_cast(ctx, h, gg.new_tensor_1d(ctx, gg.TYPE_F32, 3), gg.TYPE_F32),
            "ADD", "rows")
    _raises(TypeError_, lambda: gg.add_cast(ctx, h, a, gg.TYPE_BF16), "ADD", "bf16")
    _raises(TypeError_, lambda: gg.add_cast(ctx, q, gg.new_tensor_2d(ctx, gg.TYPE_F16, 64, 2), gg.TYPE_F32),
            "ADD", "f16")
    _raises(TypeError_, lambda: gg.add_cast(ctx, q, gg.new_tensor_2d(ctx, gg.TYPE_F32, 64, 2), gg.TYPE_I32),
            "ADD", "i32")
    _raises(TypeError_, lambda: gg.add_cast(ctx, h, a, "nope"), "unknown ggml type")


def test_add1_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.set_name(gg.new_tensor_2d(ctx, gg.TYPE_F32, 6, 4), "a")
    s = gg.new_tensor_1d(ctx, gg.TYPE_F32, 1)
    _raises(ShapeError, lambda: gg.add1(ctx, a, gg.new_tensor_1d(ctx, gg.TYPE_F32, 2)), "ADD1", "scalar")
    _raises(ShapeError, lambda: gg.add1(ctx, gg.transpose(ctx, a), s), "ADD1", "padded")
    _raises(TypeError_, lambda: gg.add1(ctx, a, gg.new_tensor_1d(ctx, gg.TYPE_F16, 1)), "ADD1", "f16")
    _raises(TypeError_, lambda: gg.add1(ctx, gg.new_tensor_1d(ctx, gg.TYPE_I32, 4), s), "ADD1", "i32")
    _raises(TypeError_, lambda: gg.add1_inplace(ctx, gg.new_tensor_1d(ctx, gg.TYPE_Q8_0, 32),
                                                gg.new_tensor_1d(ctx, gg.TYPE_F16, 1)), "ADD1")


def test_add_id_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.set_name(gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 2, 5), "a")
    b = gg.set_name(gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 4), "b")
    ids = gg.set_name(gg.new_tensor_2d(ctx, gg.TYPE_I32, 2, 5), "ids")
    gg.add_id(ctx, a, b, ids)
    _raises(ShapeError, lambda: gg.add_id(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F32, 7, 4), ids), "ADD_ID", "ne0")
    _raises(ShapeError, lambda: gg.add_id(ctx, a, b, gg.new_tensor_2d(ctx, gg.TYPE_I32, 3, 5)), "ADD_ID", "ne1")
    _raises(ShapeError, lambda: gg.add_id(ctx, a, b, gg.new_tensor_2d(ctx, gg.TYPE_I32, 2, 4)), "ADD_ID", "ne2")
    _raises(ShapeError, lambda: gg.add_id(ctx, a, gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 4, 2), ids),
            "ADD_ID", "matrix")
    _raises(ShapeError, lambda: gg.add_id(ctx, a, b, gg.new_tensor_3d(ctx, gg.TYPE_I32, 2, 5, 2)),
            "ADD_ID", "matrix")
    _raises(TypeError_, lambda: gg.add_id(ctx, a, b, gg.new_tensor_2d(ctx, gg.TYPE_F32, 2, 5)), "ADD_ID", "ids")
    _raises(TypeError_, lambda: gg.add_id(ctx, gg.new_tensor_3d(ctx, gg.TYPE_F16, 8, 2, 5), b, ids), "ADD_ID")
    _raises(TypeError_, lambda: gg.add_id(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F16, 8, 4), ids), "ADD_ID")
    _raises(GGMLError, lambda: gg.add_id(ctx, a, b, None), "ADD_ID", "ids")


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_add_id_out_of_range_id_fails_at_compute(backend):
    be = gg.backend_init_by_name(backend, 2) if backend == "numba" else gg.backend_reference_init()
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, np.zeros((3, 2, 8), np.float32), name="a")
    b = gg.from_numpy(ctx, np.ones((4, 8), np.float32), name="b")
    ids = gg.from_numpy(ctx, np.array([[0, 1], [2, 4], [3, 3]], np.int32), name="ids")
    out = gg.add_id(ctx, a, b, ids)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    _raises(ComputeError, lambda: gg.backend_graph_compute(be, gf), "ADD_ID")


def test_unary_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.set_name(gg.new_tensor_2d(ctx, gg.TYPE_F32, 6, 4), "a")
    bf = gg.set_name(gg.new_tensor_2d(ctx, gg.TYPE_BF16, 6, 4), "w")
    i = gg.new_tensor_2d(ctx, gg.TYPE_I32, 6, 4)
    t = gg.transpose(ctx, a)
    for fn, op in ((gg.silu, "SILU"), (gg.gelu, "GELU"), (gg.gelu_quick, "GELU_QUICK"),
                   (gg.gelu_erf, "GELU_ERF")):
        _raises(TypeError_, lambda: fn(ctx, bf), op, "bf16", "'w'")        # ggml's CPU: f32/f16
    for fn, op in ((gg.neg, "NEG"), (gg.tanh, "TANH"), (gg.exp, "EXP"), (gg.hardswish, "HARDSWISH"),
                   (gg.silu_inplace, "SILU")):
        _raises(ShapeError, lambda: fn(ctx, t), op, "packed rows")        # ggml_unary_impl asserts
        _raises(TypeError_, lambda: fn(ctx, i), op, "i32")
    _raises(ParamError, lambda: gg.unary(ctx, a, "SWISH"), "unknown unary op")
    _raises(ParamError, lambda: gg.unary(ctx, a, 99), "unknown unary op")
    _raises(ParamError, lambda: gg.unary(ctx, a, "XIELU"), "xielu(")
    _raises(ParamError, lambda: gg.unary_inplace(ctx, a, "XIELU"), "XIELU")
    _raises(ParamError, lambda: gg.get_op("SILU").build(ctx, [a], dict(op=3)), "SILU", "op_params")
    _raises(TypeError_, lambda: gg.xielu(ctx, i, 1, 1, 0.5, 1e-6), "XIELU")
    for fn, op in ((gg.sqr, "SQR"), (gg.sqrt, "SQRT"), (gg.log, "LOG"), (gg.sin, "SIN"),
                   (gg.cos_inplace, "COS")):
        _raises(TypeError_, lambda: fn(ctx, i), op, "i32")
    gg.sqr(ctx, t)                                  # own ops read any strides (ggml: packed rows)
    _raises(TypeError_, lambda: gg.clamp(ctx, bf, 0, 1), "CLAMP", "bf16")
    _raises(TypeError_, lambda: gg.leaky_relu(ctx, bf, 0.1), "LEAKY_RELU", "bf16")
    _raises(TypeError_, lambda: gg.scale(ctx, i, 2.0), "SCALE", "i32")
    _raises(ShapeError, lambda: gg.scale(ctx, t, 2.0), "SCALE", "padded")
    _raises(ShapeError, lambda: gg.scale_bias_inplace(ctx, t, 2.0, 1.0), "SCALE", "padded")
    _raises(GGMLError, lambda: gg.silu(ctx, None), "SILU", "missing")
    _raises(GGMLError, lambda: gg.silu(None, a), "ctx")


def test_glu_errors():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.set_name(gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 3, 2), "gate_up")
    b = gg.set_name(gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 3, 2), "up")
    h = gg.new_tensor_3d(ctx, gg.TYPE_F16, 8, 3, 2)
    bf = gg.new_tensor_3d(ctx, gg.TYPE_BF16, 8, 3, 2)
    p = gg.permute(ctx, a, 0, 2, 1, 3)              # dims >= 1 not contiguous
    for fn, op in ((gg.swiglu, "SWIGLU"), (gg.geglu_swapped, "GEGLU"), (gg.reglu, "REGLU"),
                   (gg.geglu_erf, "GEGLU_ERF"), (gg.geglu_quick_swapped, "GEGLU_QUICK")):
        _raises(ShapeError, lambda: fn(ctx, p), op, "contiguous", "gate_up")
        _raises(TypeError_, lambda: fn(ctx, bf), op, "bf16")
    for fn, op in ((gg.swiglu_split, "SWIGLU"), (gg.geglu_split, "GEGLU"), (gg.reglu_split, "REGLU"),
                   (gg.geglu_erf_split, "GEGLU_ERF"), (gg.geglu_quick_split, "GEGLU_QUICK")):
        _raises(ShapeError, lambda: fn(ctx, a, gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 3, 1)), op, "same shape")
        _raises(ShapeError, lambda: fn(ctx, a, h), op, "same type")
        _raises(ShapeError, lambda: fn(ctx, a, p), op, "contiguous")
    _raises(TypeError_, lambda: gg.swiglu_oai(ctx, h, h, 1.702, 7.0), "SWIGLU_OAI", "f16")
    _raises(ParamError, lambda: gg.glu(ctx, a, "SWISH"), "unknown glu op")
    _raises(ParamError, lambda: gg.glu_split(ctx, a, b, 17), "unknown glu op")
    _raises(ParamError, lambda: gg.get_op("SWIGLU").build(ctx, [a, b], dict(op=2, swapped=1)),
            "SWIGLU", "swapped")
    _raises(ParamError, lambda: gg.get_op("GEGLU").build(ctx, [a], dict(op=2)), "GEGLU", "op_params")


# --- (c) Numba kernels == reference -------------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_numba_matches_reference(numba_backends, case):
    from pyggml.backends.reference import ReferenceBackend
    ref = ReferenceBackend()
    for n, be in numba_backends.items():
        r = harness.run_test(case, be, ref, seed=n)
        assert r.status == "OK", f"{case} at {n} threads: {r.status} {r.message}"


@pytest.mark.skipif(not SLOW, reason="big cases: set PYGGML_SLOW=1")
def test_numba_matches_reference_slow_cases(numba_backends):
    from pyggml.backends.reference import ReferenceBackend
    ref = ReferenceBackend()
    bad = []
    for case in _cases(True):
        r = harness.run_test(case, numba_backends[2], ref)
        if r.status != "OK":
            bad.append(f"{case}: {r.status} {r.message}")
    assert not bad, "\n".join(bad)


def test_numba_handles_what_ggml_cpu_does_not(numba_backends):
    """Strided src0 rows, f16/bf16 mixes and quantized add_cast, against NumPy directly."""
    rng = np.random.default_rng(3)
    ctx = gg.init(mem_size=8 << 20)
    x = rng.uniform(-2, 2, (3, 5, 7)).astype(np.float32)
    a = gg.from_numpy(ctx, x, name="a")
    at = gg.permute(ctx, a, 1, 0, 2, 3)             # nb0 != 4: ggml's CPU aborts on this
    yv = rng.uniform(-2, 2, (3, 7, 1)).astype(np.float32)
    y = gg.from_numpy(ctx, yv, name="y")
    a_bf = gg.from_numpy(ctx, x, type=gg.TYPE_BF16, name="a_bf")
    a_h = gg.from_numpy(ctx, x, type=gg.TYPE_F16, name="a_h")
    outs = [gg.mul(ctx, at, y), gg.tanh(ctx, a_bf), gg.sqr(ctx, at), gg.scale_bias(ctx, a_h, 0.5, 1.0)]
    q = gg.from_numpy(ctx, rng.uniform(-1, 1, (4, 64)).astype(np.float32), type=gg.TYPE_Q8_0)
    r = gg.from_numpy(ctx, rng.uniform(-1, 1, (4, 64)).astype(np.float32))
    outs.append(gg.add_cast(ctx, q, r, gg.TYPE_F32))
    outs.append(gg.add1(ctx, q, gg.from_numpy(ctx, np.array([0.25], np.float32))))
    gf = gg.new_graph(ctx)
    for o in outs:
        gg.build_forward_expand(gf, o)
    gg.backend_graph_compute(numba_backends[2], gf)
    xt = np.swapaxes(x, 1, 2)
    bf = lambda v: data.read(gg.from_numpy(gg.init(mem_size=1 << 16), v, type=gg.TYPE_BF16))[0]  # noqa: E731
    np.testing.assert_allclose(gg.to_numpy(outs[0]), xt * yv, rtol=1e-6)
    np.testing.assert_allclose(gg.to_numpy(outs[1]), np.tanh(bf(x)), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(gg.to_numpy(outs[2]), xt * xt, rtol=1e-6)
    np.testing.assert_allclose(gg.to_numpy(outs[3]), x.astype(np.float16).astype(np.float32) * 0.5 + 1,
                               rtol=1e-3)
    np.testing.assert_allclose(gg.to_numpy(outs[4]), data.read(q)[0, 0] + gg.to_numpy(r), rtol=1e-6, atol=1e-6)
    assert outs[5].type == gg.TYPE_Q8_0
    np.testing.assert_allclose(gg.to_numpy(outs[5]), data.read(q)[0, 0] + 0.25, atol=0.02)


def test_numba_silu_and_swiglu_are_ggmls_bit_for_bit(ggml, numba_backends):
    """SILU/SWIGLU use ggml's own vector expf (ggml_v_expf, same FMA sequence): on rows that
    are whole 8-lane vectors the results equal real ggml's exactly, in both of its paths."""
    from pyggml.testing import ggml_lib
    rng = np.random.default_rng(5)
    for lo, hi in ((-1.0, 1.0), (-150.0, 150.0)):          # cheap path only / rows with |x| > 87
        ctx = gg.init(mem_size=4 << 20)
        a = gg.from_numpy(ctx, rng.uniform(lo, hi, (6, 64)).astype(np.float32), name="a")
        b = gg.from_numpy(ctx, rng.uniform(lo, hi, (6, 64)).astype(np.float32), name="b")
        outs = [gg.silu(ctx, a), gg.swiglu_split(ctx, a, b), gg.swiglu(ctx, a)]
        gf = gg.new_graph(ctx)
        for o in outs:
            gg.build_forward_expand(gf, o)
        with ggml_lib.Mirror(outs) as m:
            m.compute(2)
            want = [m.value(o) for o in outs]
        gg.backend_graph_compute(numba_backends[2], gf)
        for o, w in zip(outs, want):
            np.testing.assert_array_equal(data.read(o), w, err_msg=f"{o.op.name} [{lo}, {hi}]")


def test_the_kernels_gelu_tables_are_the_references():
    """The CPU kernels own their GELU tables (kernels/tables.py, as ggml-cpu owns
    ggml_table_gelu_f16) instead of reading ops/unary.py's: the two must agree bit for bit."""
    from pyggml.backends.numba_cpu.kernels.tables import GELU_F16
    from pyggml.backends.numba_cpu.kernels.tables import GELU_QUICK_F16
    from pyggml.ops.unary import _gelu_table
    for mine, spec in ((GELU_F16, _gelu_table("gelu")), (GELU_QUICK_F16, _gelu_table("gelu_quick"))):
        assert mine.dtype == np.float32 and mine.shape == (1 << 16,)
        np.testing.assert_array_equal(mine.view(np.uint32), spec.view(np.uint32))
