"""Matrix products: MUL_MAT, MUL_MAT_ID, OUT_PROD.

  (a) every case's reference result against real ggml (libggml-python) within 5e-4 NMSE;
      the cases real ggml's CPU backend refuses (F16 activations with non-F16 weights,
      out_prod with F16 b or broadcasting non-F32 a) are checked to be exactly those;
  (b) every misuse raises a GGMLError subclass naming the op and the tensors;
  (c) the Numba kernels equal the reference at 1, 2 and 3 threads, on the case grid and on
      shapes chosen to cross every tile edge of the dot and GEMM paths.
Cases tagged "slow" run only with PYGGML_SLOW=1.

The reference is exact math (float64 on the dequantized weights); ggml and the Numba dot path
quantize the activations (Q8_0/Q8_1 per 32-block) which puts them ~1e-5 NMSE away from it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.errors import ComputeError
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops import matmul as mm
from pyggml.testing import harness
from pyggml.testing.asserts import assert_ggml_error
from pyggml.testing.asserts import named_tensor

OPS = ("MUL_MAT", "MUL_MAT_ID", "OUT_PROD")
SLOW = os.environ.get("PYGGML_SLOW") == "1"
VEC_DOT = {"f32": "f32", "f16": "f16", "bf16": "bf16", "q4_0": "q8_0", "q4_1": "q8_1",
           "q5_0": "q8_0", "q5_1": "q8_1", "q8_0": "q8_0", "q2_K": "q8_K", "q3_K": "q8_K",
           "q4_K": "q8_K", "q5_K": "q8_K", "q6_K": "q8_K", "iq4_xs": "q8_K", "iq4_nl": "q8_0",
           "mxfp4": "q8_0"}


def _cases(slow: bool):
    seen, out = set(), []
    for name in OPS:
        for c in gg.get_op(name).cases():
            if ("slow" in c.tags) == slow and str(c) not in seen:
                seen.add(str(c))
                out.append(c)
    return out


FAST = _cases(False)


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """NumPy's BLAS at one thread: multi-threaded ddot/dgemm under load (NMSE sums, float64
    references) is 10x slower on this shared 2-core machine, and it fights the Numba pool."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def ggml_cpu_supports(case) -> bool:
    """What ggml's CPU backend accepts (ggml_backend_cpu_device_supports_op), stated plainly."""
    v = case.vars
    ta, tb = v["type_a"].tname, v["type_b"].tname
    if case.op in ("MUL_MAT", "MUL_MAT_ID"):
        return tb == "f32" or tb == VEC_DOT[ta]
    # OUT_PROD: b must be f32; only f32 a broadcasts
    return tb == "f32" and (ta == "f32" or list(v["nr"]) == [1, 1])


def vs_ggml(case, seed=0, n_threads=2):
    """(supported, ok, nmse, message): the reference against real ggml on the same inputs."""
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import ggml_lib
    g = ggml_lib.lib()
    ctx, out, gf = harness.build_graph(case)
    harness.alloc_guarded(gf)
    harness.fill_leafs(gf, case, seed)
    with ggml_lib.Mirror([out]) as m:
        cpu = _ggml_cpu_backend()
        if not all(g.ggml_backend_supports_op(cpu, m.ptr(n)) for n in gf.nodes
                   if n.op is not None and not n.op.view):
            return False, True, 0.0, ""
        m.compute(n_threads)
        got = m.value(out)
    ReferenceBackend().graph_compute(gf)
    max_err, exact = harness._threshold(case)
    ok, err, msg = harness.compare_values(data.read(out), got, max_err, exact, case.op)
    return True, ok, err, msg


_CPU = []


def _ggml_cpu_backend():
    from pyggml.testing import ggml_lib
    if not _CPU:
        _CPU.append(ggml_lib.lib().ggml_backend_cpu_init())
    return _CPU[0]


# --- (a) reference == real ggml -------------------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_reference_matches_ggml(ggml, case):
    supported, ok, err, msg = vs_ggml(case)
    assert supported == ggml_cpu_supports(case), f"{case}: ggml CPU supports_op = {supported}"
    assert ok, f"{case}: {msg}"


@pytest.mark.skipif(not SLOW, reason="big cases: set PYGGML_SLOW=1")
def test_reference_matches_ggml_slow_cases(ggml):
    bad = []
    for case in _cases(True):
        supported, ok, err, msg = vs_ggml(case)
        if supported != ggml_cpu_supports(case) or not ok:
            bad.append(f"{case}: supported={supported} {msg}")
    assert not bad, "\n".join(bad)


def test_case_grids_follow_test_backend_ops():
    names = {str(c) for name in OPS for c in gg.get_op(name).cases()}
    for s in (
        "MUL_MAT(type_a=q4_0,type_b=f32,m=16,n=1,k=256,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1,src_overlap=0)",
        "MUL_MAT(type_a=f16,type_b=f16,m=16,n=16,k=4,bs=[3,2],nr=[2,2],per=[0,1,2,3],k_v=0,o=1,src_overlap=0)",
        "MUL_MAT(type_a=q8_0,type_b=f32,m=16,n=8,k=256,bs=[2,3],nr=[1,1],per=[0,3,2,1],k_v=0,o=1,src_overlap=0)",
        "MUL_MAT(type_a=bf16,type_b=f32,m=128,n=1,k=1057,bs=[8,3],nr=[4,1],per=[0,1,2,3],k_v=2113,o=1,src_overlap=0)",
        "MUL_MAT(type_a=f32,type_b=f32,m=32,n=4,k=96,bs=[3,2],nr=[1,1],per=[0,1,2,3],k_v=0,o=1,src_overlap=1)",
        "MUL_MAT(type_a=q5_1,type_b=f32,m=16,n=1,k=32,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1,src_overlap=0)",
        "MUL_MAT_ID(type_a=q4_0,type_b=f32,n_mats=4,n_used=2,b=0,m=512,n=1,k=256)",
        "MUL_MAT_ID(type_a=f16,type_b=f32,n_mats=1,n_used=1,b=0,m=8,n=16,k=1)",
        "MUL_MAT_ID(type_a=q5_1,type_b=f32,n_mats=4,n_used=2,b=0,m=64,n=16,k=96)",
        "OUT_PROD(type_a=q8_0,type_b=f16,m=256,n=16,k=1,bs=[3,1],nr=[2,2],trans_b=0)",
        "OUT_PROD(type_a=f32,type_b=f32,m=256,n=16,k=16,bs=[1,1],nr=[32,1],trans_b=0)",
    ):
        assert s in names, s
    # test_mul_mat's base grid: 5 types x {f32, f16} x (28 cases per k, 2 ks for float types) + 4
    base = [c for c in gg.get_op("MUL_MAT").cases() if c.vars["m"] == 16 and c.vars["k"] in (4, 256)
            and c.vars["type_b"] == gg.TYPE_F16]
    assert len({str(c) for c in base}) >= 5 * 28


def test_op_params_and_hint_like_ggml(ggml):
    """prec and hint live in op_params words 0 and 1, as ggml_mul_mat_set_prec/_set_hint put them."""
    from pyggml.testing import ggml_lib
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 64, 64)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 64, 5)
    y = gg.mul_mat(ctx, a, b)
    z = gg.mul_mat(ctx, a, b)
    gg.mul_mat_set_prec(y, gg.PREC_F32)
    gg.mul_mat_set_hint(z, mm.HINT_SRC0_IS_HADAMARD)
    assert list(y.op_params[:2]) == [10, 0] and list(z.op_params[:2]) == [0, 1]
    with ggml_lib.Mirror([y, z]) as m:
        for n in (y, z):
            assert list(n.op_params) == list(ggml_lib.op_params(m.ptr(n)))


def test_hadamard_hint_equals_plain_product(ggml):
    """ggml's CPU runs a fast Walsh-Hadamard transform for HINT_SRC0_IS_HADAMARD and ignores a;
    pyggml computes a @ b, which is the same number when a is the normalised Hadamard matrix."""
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.reference import ReferenceBackend
    from pyggml.testing import ggml_lib
    k = 64
    i = np.arange(k)
    h = np.where(np.vectorize(lambda v: bin(v).count("1") % 2)(i[:, None] & i[None, :]) == 0,
                 1.0, -1.0) / np.sqrt(k)
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, h.astype(np.float32))
    b = gg.from_numpy(ctx, np.random.default_rng(1).uniform(-1, 1, (7, k)).astype(np.float32))
    y = gg.mul_mat(ctx, a, b)
    gg.mul_mat_set_hint(y, mm.HINT_SRC0_IS_HADAMARD)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    with ggml_lib.Mirror([y]) as m:
        m.compute(1)
        want = m.value(y)
    ReferenceBackend().graph_compute(gf)
    assert harness.nmse(want, data.read(y)) < 1e-12
    NumbaBackend(2).graph_compute(gf)
    assert harness.nmse(want, data.read(y)) < 1e-12


# --- (b) misuse -----------------------------------------------------------------------------------

_t = named_tensor


_raises = assert_ggml_error     # (cls, fn, *words) -> message


def test_mul_mat_misuse():
    ctx = gg.init(mem_size=4 << 20)
    w = _t(ctx, "q4_0", 64, 8, name="w")
    x = _t(ctx, "f32", 64, 3, name="x")
    _raises(ShapeError, lambda: gg.mul_mat(ctx, w, _t(ctx, "f32", 32, 3, name="short")),
            "MUL_MAT", "'w'", "'short'", "a.ne[0] = 64 != b.ne[0] = 32")
    _raises(ShapeError, lambda: gg.mul_mat(ctx, _t(ctx, "f32", 64, 8, 3, name="a3"),
                                           _t(ctx, "f32", 64, 2, 4, name="b4")),
            "MUL_MAT", "broadcast", "'a3'", "'b4'")
    _raises(ShapeError, lambda: gg.mul_mat(ctx, _t(ctx, "f32", 8, 64, 2, name="a"),
                                           _t(ctx, "f32", 8, 3, 3, name="b")), "broadcast")
    at = gg.transpose(ctx, _t(ctx, "f32", 8, 64, name="at"))
    _raises(ShapeError, lambda: gg.mul_mat(ctx, at, x), "MUL_MAT", "transposed")
    bt = gg.transpose(ctx, _t(ctx, "f32", 3, 64, name="bt"))
    _raises(ShapeError, lambda: gg.mul_mat(ctx, _t(ctx, "f32", 64, 4), bt), "MUL_MAT", "packed rows")
    _raises(TypeError_, lambda: gg.mul_mat(ctx, _t(ctx, "i32", 64, 4, name="ints"), x),
            "MUL_MAT", "'ints'", "i32")
    _raises(TypeError_, lambda: gg.mul_mat(ctx, w, _t(ctx, "q8_0", 64, 2, name="qb")),
            "MUL_MAT", "'qb'", "q8_0")
    _raises(GGMLError, lambda: gg.mul_mat(ctx, w, None), "MUL_MAT", "missing")
    # (a view of a quantized tensor with rows of partial blocks cannot even be built)
    _raises(ShapeError, lambda: gg.view_2d(ctx, w, 48, 2, w.nb[1], 0), "block")
    y = gg.mul_mat(ctx, w, x)
    assert y.type == gg.TYPE_F32 and y.ne == [8, 3, 1, 1]
    _raises(ParamError, lambda: gg.mul_mat_set_prec(y, 3), "prec")
    _raises(ParamError, lambda: gg.mul_mat_set_prec(x, gg.PREC_F32), "MUL_MAT node")
    _raises(ParamError, lambda: gg.mul_mat_set_hint(y, 7), "hint")
    _raises(ParamError, lambda: gg.mul_mat_set_hint(gg.add(ctx, x, x) if hasattr(gg, "add") else x, 1),
            "MUL_MAT node")


def test_mul_mat_id_misuse():
    ctx = gg.init(mem_size=4 << 20)
    as_ = _t(ctx, "f16", 32, 16, 4, name="as")
    b = _t(ctx, "f32", 32, 2, 5, name="b")
    ids = _t(ctx, "i32", 2, 5, name="ids")
    y = gg.mul_mat_id(ctx, as_, b, ids)
    assert y.ne == [16, 2, 5, 1] and y.type == gg.TYPE_F32
    _raises(TypeError_, lambda: gg.mul_mat_id(ctx, as_, b, _t(ctx, "f32", 2, 5, name="fids")),
            "MUL_MAT_ID", "'fids'", "i32")
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, _t(ctx, "f16", 32, 16, 4, 2, name="as4"), b, ids),
            "MUL_MAT_ID", "'as4'", "3-D")
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, as_, _t(ctx, "f32", 32, 2, 5, 2, name="b4"), ids),
            "MUL_MAT_ID", "'b4'")
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, as_, b, _t(ctx, "i32", 2, 5, 2, name="ids3")),
            "MUL_MAT_ID", "'ids3'", "2-D")
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, as_, b, _t(ctx, "i32", 2, 4, name="ids4")),
            "MUL_MAT_ID", "ids.ne[1]", "'ids4'", "'b'")
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, as_, _t(ctx, "f32", 16, 2, 5, name="b16"), ids),
            "MUL_MAT_ID", "as.ne[0] = 32 != b.ne[0] = 16")
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, as_, _t(ctx, "f32", 32, 3, 5, name="b3"),
                                              _t(ctx, "i32", 4, 5)), "MUL_MAT_ID", "does not divide")
    ast = gg.transpose(ctx, _t(ctx, "f16", 16, 32, 4, name="ast"))
    _raises(ShapeError, lambda: gg.mul_mat_id(ctx, ast, b, ids), "MUL_MAT_ID", "transposed")


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_mul_mat_id_rejects_bad_expert_ids(backend):
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    from pyggml.backends.reference import ReferenceBackend
    ctx = gg.init(mem_size=4 << 20)
    as_ = _t(ctx, "q8_0", 32, 16, 4, name="as")
    b = _t(ctx, "f32", 32, 2, 3, name="b")
    ids = _t(ctx, "i32", 2, 3, name="ids")
    data.write(as_, np.ones((4, 16, 32)))
    data.write(b, np.ones((3, 2, 32)))
    data.write(ids, np.array([[0, 1], [2, 4], [3, 0]]))     # 4 is not an expert
    y = gg.mul_mat_id(ctx, as_, b, ids)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    be = ReferenceBackend() if backend == "reference" else NumbaBackend(2)
    with pytest.raises(ComputeError) as e:
        be.graph_compute(gf)
    assert "MUL_MAT_ID" in str(e.value) and ("[0, 4)" in str(e.value) or "n_expert" in str(e.value))


def test_out_prod_misuse():
    ctx = gg.init(mem_size=4 << 20)
    a = _t(ctx, "f32", 16, 8, name="a")
    _raises(ShapeError, lambda: gg.out_prod(ctx, a, _t(ctx, "f32", 5, 7, name="b7")),
            "OUT_PROD", "a.ne[1] = 8 != b.ne[1] = 7", "'a'", "'b7'")
    _raises(ShapeError, lambda: gg.out_prod(ctx, _t(ctx, "f32", 16, 8, 2), _t(ctx, "f32", 5, 8, 3)),
            "OUT_PROD", "broadcast")
    _raises(TypeError_, lambda: gg.out_prod(ctx, _t(ctx, "bf16", 16, 8, name="abf"), a), "OUT_PROD",
            "'abf'")
    _raises(TypeError_, lambda: gg.out_prod(ctx, a, _t(ctx, "i32", 5, 8, name="bi")), "'bi'")
    at = gg.transpose(ctx, _t(ctx, "f32", 8, 16, name="at"))
    _raises(ShapeError, lambda: gg.out_prod(ctx, at, _t(ctx, "f32", 5, 16)), "transposed")
    y = gg.out_prod(ctx, a, gg.transpose(ctx, _t(ctx, "f32", 8, 5)))      # transposed b is fine
    assert y.ne == [16, 5, 1, 1]


# --- (c) Numba kernels == reference ----------------------------------------------------------------

def _numba(n):
    from pyggml.backends.numba_cpu.backend import NumbaBackend
    return NumbaBackend(n)


_BACKENDS = {}


def _backend(n):
    if n not in _BACKENDS:
        _BACKENDS[n] = _numba(n)
    return _BACKENDS[n]


# every case at 2 threads, a third of them (different thirds) at 1 and 3 threads
_NUMBA = [(c, 2) for c in FAST] + [(c, 1) for c in FAST[0::3]] + [(c, 3) for c in FAST[1::3]]


@pytest.mark.parametrize("case,n_threads", _NUMBA, ids=lambda x: str(x))
def test_numba_matches_reference(case, n_threads):
    from pyggml.backends.reference import ReferenceBackend
    r = harness.run_test(case, _backend(n_threads), ReferenceBackend())
    if r.status == "NOT SUPPORTED" and case.vars.get("o", 1) > 1:
        pytest.skip("o > 1 sums products with ADD, which has no numba kernel here yet")
    assert r.status == "OK", f"{case} @{n_threads} threads: {r.status} {r.message}"


@pytest.mark.skipif(not SLOW, reason="big cases: set PYGGML_SLOW=1")
def test_numba_matches_reference_slow_cases():
    from pyggml.backends.reference import ReferenceBackend
    bad = []
    for case in _cases(True):
        r = harness.run_test(case, _backend(2), ReferenceBackend())
        if r.status != "OK":
            bad.append(f"{case}: {r.status} {r.message}")
    assert not bad, "\n".join(bad)


def _graph(build, seed=0):
    ctx = gg.init(mem_size=256 << 20)
    out = build(ctx)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    rng = np.random.default_rng(seed)
    for leaf in gf.leafs:
        if leaf.type == gg.TYPE_I32:
            continue
        data.write(leaf, rng.uniform(-1, 1, leaf.ne[::-1]))
    return gf, out


def _check_numba(build, threads=(1, 2, 3), max_nmse=5e-4, init=None):
    from pyggml.backends.reference import ReferenceBackend
    gf, out = _graph(build)
    if init is not None:
        init(gf)
    ReferenceBackend().graph_compute(gf)
    want = data.read(out)
    for n in threads:
        data.write(out, np.full(want.shape, np.nan))
        _backend(n).graph_compute(gf)
        got = data.read(out)
        ok, err, msg = harness.compare_values(want, got, max_nmse, False, "MUL_MAT")
        assert ok, f"{n} threads: {msg}"
    return want


@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
@pytest.mark.parametrize("m,n,k", [
    (37, 33, 64),          # GEMM path: partial micro-tiles on both sides
    (70, 45, 320),         # k crosses the packed panel depth (256)
    (19, 1031, 32),        # n crosses the packed block of b rows (1020)
    (300, 40, 96),         # a's rows cross the packed block (256)
    (130, 5, 288),         # dot path: odd column count, k > 256
    (9, 40, 64),           # many columns, few rows: the columns are split over threads
])
def test_numba_tile_edges(wtype, m, n, k):
    """Shapes crossing every tile edge of the dot and GEMM paths (k a whole number of blocks)."""
    if wtype in ("f32", "f16", "bf16") and k == 64:
        k = 67                              # float weights: k need not be a multiple of 32

    def build(ctx):
        a = _t(ctx, wtype, k, m, name="a")
        b = _t(ctx, "f32", k, n, name="b")
        return gg.mul_mat(ctx, a, b)
    _check_numba(build)


@pytest.mark.parametrize("btype", ["f16", "bf16"])
@pytest.mark.parametrize("wtype", ["f32", "f16", "q4_0", "q5_1"])
@pytest.mark.parametrize("n", [3, 40])
def test_numba_half_activations_and_permuted_broadcast(wtype, btype, n):
    """F16/BF16 activations (pyggml converts them; ggml's CPU refuses most such pairs), permuted b
    with contiguous rows, a broadcast over b's dims 2 and 3."""
    def build(ctx):
        a = _t(ctx, wtype, 64, 24, 2, 1, name="a")
        b = _t(ctx, btype, 64, 4, n, 3, name="b")
        bp = gg.permute(ctx, b, 0, 2, 1, 3)           # [64, n, 4, 3], rows still packed
        return gg.mul_mat(ctx, a, bp)
    _check_numba(build)


def test_numba_mul_mat_id_large_token_count():
    def build(ctx):
        as_ = _t(ctx, "q4_0", 64, 40, 6, name="as")
        b = _t(ctx, "f32", 64, 1, 300, name="b")
        ids = _t(ctx, "i32", 3, 300, name="ids")
        return gg.mul_mat_id(ctx, as_, b, ids)

    def init(gf):
        ids = next(t for t in gf.leafs if t.type == gg.TYPE_I32)
        rng = np.random.default_rng(3)
        data.write(ids, np.array([rng.permutation(6)[:3] for _ in range(300)]))
    _check_numba(build, init=init)


def test_numba_out_prod_quantized_and_transposed():
    def build(ctx):
        a = _t(ctx, "q8_0", 96, 37, 2, name="a")
        b = gg.transpose(ctx, _t(ctx, "f32", 37, 21, 4, name="b"))
        return gg.out_prod(ctx, a, b)
    _check_numba(build, max_nmse=1e-10)


def test_work_size_is_planned():
    """The plan reserves the kernel's scratch: quantized activations per thread, GEMM panels."""
    from pyggml.backends.numba_cpu.kernels import lookup
    from pyggml.backends.numba_cpu.plan import graph_plan
    ctx = gg.init(mem_size=16 << 20)
    w = _t(ctx, "q4_0", 256, 64)
    for n, expect_gemm in ((1, False), (64, True)):
        y = gg.mul_mat(ctx, w, _t(ctx, "f32", 256, n))
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, y)
        plan = graph_plan(gf, 3, _backend(3))
        assert plan.work_size >= lookup(y).work_size(y, 3) > 0
        from pyggml.backends.numba_cpu.kernels import matmul as km
        assert bool(km.use_gemm(64, n, 256)) == expect_gemm
    # float weights with F32 activations need no scratch on the dot path
    y = gg.mul_mat(ctx, _t(ctx, "f16", 256, 64), _t(ctx, "f32", 256, 2))
    assert lookup(y).work_size(y, 2) == 0


@pytest.mark.parametrize("wtype", ["f32", "f16", "q4_0", "q8_0"])
@pytest.mark.parametrize("n", [2, 40])
def test_numba_nan_propagates_like_the_reference(wtype, n):
    """A NaN activation makes its output column NaN (also through quantized activations)."""
    def build(ctx):
        return gg.mul_mat(ctx, _t(ctx, wtype, 64, 20, name="a"), _t(ctx, "f32", 64, n, name="b"))

    def init(gf):
        b = next(t for t in gf.leafs if t.name == "b")
        v = data.read(b)
        v[0, 0, 1, 5] = np.nan
        data.write(b, v)
    want = _check_numba(build, init=init)
    assert np.isnan(want[0, 0, 1]).all() and not np.isnan(want[0, 0, 0]).any()


_PORTABLE_CHECK = r"""
import numpy as np, pyggml as gg
from pyggml import data
from pyggml.backends.numba_cpu.kernels import simd
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.reference import ReferenceBackend
from pyggml.testing import harness
assert not simd.HAVE_AVX2 and simd.VL == 8
be = NumbaBackend(2)
for t in ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
    for n in (3, 40):
        ctx = gg.init(mem_size=16 << 20)
        a = gg.new_tensor_2d(ctx, gg.as_type(t), 96, 37)
        b = gg.new_tensor_2d(ctx, gg.TYPE_F32, 96, n)
        rng = np.random.default_rng(0)
        data.write(a, rng.uniform(-1, 1, (37, 96)))
        data.write(b, rng.uniform(-1, 1, (n, 96)))
        y = gg.mul_mat(ctx, a, b)
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, y)
        ReferenceBackend().graph_compute(gf)
        want = data.read(y)
        be.graph_compute(gf)
        err = harness.nmse(want, data.read(y))
        assert err < 5e-4, (t, n, err)
print("portable ok")
"""


@pytest.mark.skipif(not SLOW, reason="compiles every kernel again (~1 min): set PYGGML_SLOW=1")
def test_portable_simd_path(tmp_path):
    """PYGGML_SIMD=generic: the LLVM code without x86 intrinsics (for CPUs without AVX2)."""
    import subprocess
    import sys
    env = dict(os.environ, PYGGML_SIMD="generic", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _PORTABLE_CHECK], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and "portable ok" in r.stdout, r.stderr[-3000:]
