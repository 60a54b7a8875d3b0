"""Tiered execution: nodes run on the NumPy fast reference until their Numba kernel is ready,
then move to Numba between graphs with the same results; the switch that turns it off; the
fast reference's mul_mat/get_rows against the Numba kernels."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.kernels import lookup
from pyggml.backends.numba_cpu.warmup import EXECUTOR
from pyggml.backends.reference.fast import FAST
from pyggml.backends.reference.fast import FastReferenceBackend
from pyggml.backends.reference.fast import quantize_act_q8_split
from pyggml.sched.tiered import TieredSched
from pyggml.sched.tiered import tiered_enabled


class FakeWarmup:
    """A background compiler whose kernels land when the test says so (no processes)."""

    def __init__(self):
        self.submitted, self.pending_keys, self.closed = [], [], False

    def submit(self, kernels):
        self.submitted += [k.key for k in kernels]
        return []                                  # nothing ready: everything "compiles"

    def land(self, keys):
        self.pending_keys += list(keys)

    def landed(self):
        out, self.pending_keys = self.pending_keys, []
        return out

    @property
    def pending(self):
        return 0

    def drain(self):
        pass

    def close(self):
        self.closed = True


def _graph(ctx, n, rng):
    """A decoder-like slice: get_rows from a Q8_0 table, rms_norm, a Q4_1 mat-mul, add."""
    emb = gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 64, 50)
    gg.tensor_set(emb, gg.quantize(gg.TYPE_Q8_0, rng.uniform(-1, 1, (50, 64)).astype(np.float32)))
    w = gg.new_tensor_2d(ctx, gg.TYPE_Q4_1, 64, 48)
    gg.tensor_set(w, gg.quantize(gg.TYPE_Q4_1, rng.uniform(-1, 1, (48, 64)).astype(np.float32)))
    ids = gg.from_numpy(ctx, rng.integers(0, 50, n).astype(np.int32), name="ids")
    x = gg.get_rows(ctx, emb, ids)
    h = gg.rms_norm(ctx, x, 1e-5)
    y = gg.mul_mat(ctx, w, h)
    out = gg.add(ctx, y, gg.mul_mat(ctx, w, x))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    return gf, out


def _nmse(a, b):
    return float(((a - b) ** 2).sum() / max((b ** 2).sum(), 1e-30))


@pytest.mark.parametrize("n,per_node", [(3, True), (32, True), (3, False)])
def test_tiered_switch_over_same_results(n, per_node):
    """n: numba's dot path (quantized activations) or its GEMM; per_node: nodes move as their
    kernel lands (a mixed plan in between), else the graph moves when all of them landed."""
    rng = np.random.default_rng(n)
    ctx = gg.init(mem_size=8 << 20)
    gf, out = _graph(ctx, n, rng)
    numba = gg.backend_numba_init(2)
    plain = gg.sched_new([numba, gg.backend_reference_init()])
    gg.sched_graph_compute(plain, gf)
    want = gg.to_numpy(out).copy()

    fake = FakeWarmup()
    ts = TieredSched(numba, warmup=fake, per_node=per_node)
    ts.graph_compute(gf)                      # nothing ready: all on the fast reference
    assert {ts.tensor_backend(nd).name for nd in gf.nodes} == {"fastref"}
    first = gg.to_numpy(out).copy()
    keys = {lookup(nd).key for nd in gf.nodes if nd.op is not None and not nd.op.view}
    assert keys <= set(fake.submitted)
    # float32 BLAS vs the kernels' integer dots / own summation order: rounding apart
    assert _nmse(first, want) < 1e-10

    fake.land([EXECUTOR, lookup(gf.nodes[1]).key])        # the executor and RMS_NORM land
    ts.graph_compute(gf)                      # re-planned between graphs
    names = [ts.tensor_backend(nd).name for nd in gf.nodes]
    if per_node:                              # a mixed plan
        assert "numba" in names and "fastref" in names and ts.n_splits > 1
    else:                                     # still all on NumPy: not every kernel is ready
        assert set(names) == {"fastref"} and ts.n_splits == 1
    assert ts.n_switches == 1
    assert _nmse(gg.to_numpy(out), want) < 1e-10

    fake.land(sorted(set(fake.submitted)))    # everything landed (with the fused RMS_NORM_MUL)
    ts.graph_compute(gf)
    assert {ts.tensor_backend(nd).name for nd in gf.nodes} == {"numba"}
    assert ts.n_splits == 1 and ts.n_switches == 2
    np.testing.assert_array_equal(gg.to_numpy(out), want)
    ts.close()
    assert fake.closed


def test_fast_reference_weight_cache_sees_new_bytes(rng):
    ctx = gg.init(mem_size=8 << 20)
    gf, out = _graph(ctx, 4, rng)
    be = FastReferenceBackend()
    be.graph_compute(gf)
    a = gg.to_numpy(out).copy()
    w = gf.nodes[2].src[0]                    # the Q4_1 weight, now cached as float32
    assert len(be.weights.entries) >= 1
    gg.tensor_set(w, gg.quantize(gg.TYPE_Q4_1, rng.uniform(-1, 1, (48, 64)).astype(np.float32)))
    be.graph_compute(gf)
    fast_new = gg.to_numpy(out).copy()
    gg.backend_reference_init().graph_compute(gf)
    assert not np.allclose(fast_new, a)
    assert _nmse(fast_new, gg.to_numpy(out)) < 5e-4     # test-backend-ops' mul_mat bound


def test_fast_reference_bad_row_id_is_the_reference_error():
    ctx = gg.init(mem_size=1 << 20)
    emb = gg.new_tensor_2d(ctx, gg.TYPE_Q8_0, 32, 4)
    ids = gg.from_numpy(ctx, np.array([1, 7], dtype=np.int32), name="ids")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, gg.get_rows(ctx, emb, ids))
    with pytest.raises(gg.GGMLError, match="GET_ROWS"):
        FastReferenceBackend().graph_compute(gf)


def test_q8_split_emulation():
    x = np.array([[0.0] * 32, list(np.linspace(-1, 1, 32))], dtype=np.float32)
    q = quantize_act_q8_split(x)
    assert (q[0] == 0).all()                             # an all-zero block stays zero
    d = np.float32(1.0) / np.float32(127.0)
    assert np.allclose(q[1] / d, np.rint(q[1] / d)) and abs(q[1]).max() == pytest.approx(1.0)


def test_fast_fa_q_is_ggml_cpu_q8_0():
    """Flash attention over a quantized K reads q as ggml-cpu converts it (Q8_0's x86
    from_float: 127/amax, ties to even, F16 d): the fast reference's emulation holds the
    values those bytes decode to, bit for bit (halves make every .5 a tie)."""
    from pyggml.quants import q8_0
    rng = np.random.default_rng(7)
    ties = np.arange(-31.5, 32.5, dtype=np.float32)     # amax 127 per block: 1/d = 1
    ties[[31, 63]] = 127
    x = np.concatenate([rng.standard_normal((3, 64)).astype(np.float32) * 3, ties[None],
                        np.zeros((1, 64), np.float32)])
    want = gg.dequantize(gg.TYPE_Q8_0, q8_0.from_float_cpu(x.reshape(-1)), x.size)
    np.testing.assert_array_equal(quantize_act_q8_split(x, fa=True).reshape(-1), want)


def test_tiered_switch(monkeypatch):
    monkeypatch.delenv("PYGGML_TIERED", raising=False)
    assert tiered_enabled() and not tiered_enabled(False)
    monkeypatch.setenv("PYGGML_TIERED", "0")
    assert not tiered_enabled() and tiered_enabled(True)
    from pyggml.models import demo
    assert demo._parser().parse_args(["--no-tiered"]).tiered is False
    assert demo._parser().parse_args([]).tiered is None
    be = demo.make_backend("numba", 1, tiered=False)
    assert not isinstance(be, TieredSched)
    tb = demo.make_backend("numba", 1, tiered=True)
    assert isinstance(tb, TieredSched)
    tb.close()


def test_run_and_chat_flags(monkeypatch):
    monkeypatch.delenv("PYGGML_TIERED", raising=False)
    from pyggml.llm import cli_common as C
    from pyggml.llm import run_cli
    p = run_cli._parser()
    assert C._tiered(p.parse_args(["-p", "hi", "-m", "x"]))
    assert not C._tiered(p.parse_args(["-p", "hi", "-m", "x", "--no-tiered"]))
    assert not C._tiered(p.parse_args(["-p", "hi", "-m", "x", "--backend", "reference"]))
    monkeypatch.setenv("PYGGML_TIERED", "0")
    assert not C._tiered(p.parse_args(["-p", "hi", "-m", "x"]))


@pytest.mark.parametrize("mode", [0, 2])
def test_fast_rope_is_the_reference_bit_for_bit(rng, mode):
    ctx = gg.init(mem_size=1 << 20)
    x = gg.from_numpy(ctx, rng.uniform(-1, 1, (2, 5, 3, 16)).astype(np.float32), name="x")
    pos = gg.from_numpy(ctx, np.array([0, 3, 7, 100, 9], dtype=np.int32), name="pos")
    y = gg.rope_ext(ctx, x, pos, None, 12, mode, 4096, 10000.0, 1.0, 0.5, 1.0, 32.0, 1.0)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    assert FAST["ROPE"][0](y)                        # the fast path takes this node
    FastReferenceBackend().graph_compute(gf)
    fast = gg.to_numpy(y).copy()
    gg.backend_reference_init().graph_compute(gf)
    np.testing.assert_array_equal(fast, gg.to_numpy(y))
