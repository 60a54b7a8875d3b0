"""FLASH_ATTN_EXT_WITH_STATE: segmented attention that carries its softmax state.

The invariants of DESIGN.md §5, each on the reference backend and on the Numba kernels:
  (1) hot + cold in one call == flash_attn_ext over the concatenated, dequantized cache;
  (2) any split of the keys into 2, 3 or 7 consecutive calls chained through the state and
      o_prev == the unsegmented result (NMSE <= 1e-12 with F32 K/V and PREC_F32), in one
      graph or in one graph per call; a recompute continues from the written state;
  (3) three identical calls give S, 2S, 3S and an unchanged output;
  (4) fully masked rows and empty segments give 0 and M = -inf, S = 0, never NaN;
  (5) results do not depend on the thread count (bitwise where no KV split is involved);
  (6) a state holding a previous contribution without o_prev is an error that says to
      pass the previous output, and leaves state and output untouched.
Plus: the cases against real ggml (a fresh-state chain equals ggml_flash_attn_ext over all
keys so far), the kernels against the reference on every case, and the build-time errors.
"""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.errors import ComputeError
from pyggml.errors import DataError
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops import fa_state as st
from pyggml.testing import harness
from pyggml.types import GGMLType as T

OP = gg.get_op("FLASH_ATTN_EXT_WITH_STATE")
CASES = OP.cases()
FAST = [c for c in CASES if "slow" not in c.tags]
DK = DV = 64
H, HK, N = 4, 2, 3
SCALE = 0.125


def _ref():
    return gg.backend_reference_init()


@pytest.fixture(scope="module", params=[1, 2, 3])
def numba_backend(request):
    be = gg.backend_numba_init(request.param)
    yield be
    be.free()


def _leaf(ctx, values, type=T.F32, name=None):
    arr = np.asarray(values, dtype=np.float32)
    t = gg.new_tensor(ctx, type, arr.ndim, list(arr.shape[::-1]))
    data.write(t, arr)
    if name:
        gg.set_name(t, name)
    return t


def _compute(outs, backend):
    gf = gg.new_graph(None)
    for o in (outs if isinstance(outs, (list, tuple)) else [outs]):
        gg.build_forward_expand(gf, o)
    backend.graph_compute(gf)
    return gf


def _mask(rng, n_kv, n_rows=N, p_masked=0.25, ne3=1):
    m = rng.uniform(-1, 1, (ne3, 1, n_rows, n_kv))
    m[rng.uniform(size=m.shape) < p_masked] = -np.inf
    return m


class Problem:
    """q, a full KV cache (values) and its mask; segments are views of it in any type."""

    def __init__(self, rng, n_kv, ne3=1, h=H, hk=HK, n=N, dk=DK, dv=DV):
        self.q = rng.uniform(-1, 1, (ne3, h, n, dk))
        self.k = rng.uniform(-1, 1, (ne3, hk, n_kv, dk))
        self.v = rng.uniform(-1, 1, (ne3, hk, n_kv, dv))
        self.m = _mask(rng, n_kv, n, ne3=ne3)
        self.m[:, :, 0, :] = -np.inf                      # query 0 sees nothing
        self.ne3, self.h, self.n = ne3, h, n

    def seg(self, ctx, a, b, type=T.F32, mtype=T.F16):
        """K, V, mask tensors of keys [a, b) (None when empty and type is None)."""
        k = _leaf(ctx, self.k[:, :, a:b], type)
        v = _leaf(ctx, self.v[:, :, a:b], type)
        m = _leaf(ctx, self.m[:, :, :, a:b], mtype)
        return k, v, m

    def full(self, ctx, type=T.F32, prec=gg.PREC_F32):
        q = _leaf(ctx, self.q, name="q")
        k, v, m = self.seg(ctx, 0, self.k.shape[2], type)
        out = gg.flash_attn_ext(ctx, q, k, v, m, SCALE, 0.0, 0.0)
        gg.flash_attn_ext_set_prec(out, prec)
        return out


def _chain(ctx, prob, q, state, bounds, types=(T.F32, T.F32), prec=gg.PREC_F32, o_prev=None):
    """One with_state call per [a, b) of bounds: keys split in half into hot and cold."""
    out = o_prev
    for a, b in bounds:
        mid = (a + b) // 2
        hot = prob.seg(ctx, a, mid, types[0]) if mid > a else (None, None, None)
        cold = prob.seg(ctx, mid, b, types[1]) if b > mid else (None, None, None)
        out = gg.flash_attn_ext_with_state(ctx, q, hot[0], hot[1], hot[2], cold[0], cold[1],
                                           cold[2], state, SCALE, 0.0, 0.0, o_prev=out)
        gg.flash_attn_ext_set_prec(out, prec)
    return out


def _bounds(n_kv, n_calls, rng=None):
    if rng is None:
        cuts = np.linspace(0, n_kv, n_calls + 1).astype(int)
    else:
        cuts = np.sort(np.concatenate([[0, n_kv], rng.choice(np.arange(1, n_kv), n_calls - 1,
                                                             replace=False)]))
    return list(zip(cuts[:-1], cuts[1:]))


# --- ggml conformance and kernels on the cases ------------------------------------------------------

@pytest.mark.parametrize("case", FAST, ids=str)
def test_cases_match_ggml(ggml, case):
    """A chain from a fresh state equals ggml_flash_attn_ext over every key so far (the
    mirror concatenates the dequantized segments): every call of the chain is compared, and
    the final (M, S) state with the statistics ggml's own ops give."""
    from pyggml.testing import ggml_lib
    ctx, out, gf = harness.build_graph(case)
    harness.alloc_guarded(gf)
    harness.fill_leafs(gf, case, 7)
    with ggml_lib.Mirror([out]) as m:              # copies the inputs, the fresh state too
        _ref().graph_compute(gf)
        m.compute(1)
        for node in gf.nodes:
            if node.op is OP:
                ok, err, msg = harness.compare_values(data.read(node), m.value(node), 5e-4,
                                                      False, node.name)
                assert ok, f"{case}: {msg}"
        # the final state: the mirror computes M (row max; -FLT_MAX for an all-masked row,
        # which the comparison takes for -inf) and S with ggml ops
        state = out.src[6]
        ok, err, msg = harness.compare_values(data.read(state), m.value(state), 1e-6, False,
                                              "state")
        assert ok, f"{case}: {msg}"


def test_kernels_match_reference_on_cases(numba_backend):
    from pyggml.backends.reference import ReferenceBackend
    bad = []
    for i, case in enumerate(FAST):
        r = harness.run_test(case, numba_backend, ReferenceBackend(), seed=i)
        if r.status != "OK":
            bad.append(f"{case}: {r.status} {r.message}")
    assert not bad, "\n".join(bad)


# --- (1) hot + cold == flash_attn_ext over the concatenated cache ----------------------------------

@pytest.mark.parametrize("cold_type", [T.Q4_0, T.Q8_0, T.Q5_1, T.BF16])
def test_hot_plus_cold_equals_concatenated_cache(rng, cold_type):
    n_hot, n_cold = 40, 64
    prob = Problem(rng, n_hot + n_cold)
    ctx = gg.init(mem_size=64 << 20)
    q = _leaf(ctx, prob.q)
    hot = prob.seg(ctx, 0, n_hot, T.F16)
    cold = prob.seg(ctx, n_hot, n_hot + n_cold, cold_type)
    # the unsegmented problem on exactly the values the segments hold (dequantized)
    kcat = np.concatenate([data.read(hot[0]), data.read(cold[0])], axis=2)
    vcat = np.concatenate([data.read(hot[1]), data.read(cold[1])], axis=2)
    mcat = np.concatenate([data.read(hot[2]), data.read(cold[2])], axis=3)
    for prec, tol in ((gg.PREC_F32, 1e-12), (gg.PREC_DEFAULT, 5e-4)):
        full = gg.flash_attn_ext(ctx, q, _leaf(ctx, kcat), _leaf(ctx, vcat), _leaf(ctx, mcat),
                                 SCALE, 0.0, 0.0)
        gg.flash_attn_ext_set_prec(full, gg.PREC_F32)
        for be in (_ref(), gg.backend_numba_init(2)):
            state = gg.flash_attn_state_new(ctx, H, N)
            out = gg.flash_attn_ext_with_state(ctx, q, *hot, cold[0], cold[1], cold[2], state,
                                               SCALE, 0.0, 0.0)
            gg.flash_attn_ext_set_prec(out, prec)
            _compute([full, out], be)
            want, got = data.read(full), data.read(out)
            assert harness.nmse(want, got) <= tol, (be.name, prec)
            assert np.all(got[:, 0] == 0)                  # query 0: every key masked
            # the state: M = max score, S = sum exp(score - M), as float64 math says
            q64 = data.read(q)[0]
            s = np.einsum("hnd,hkd->hnk", q64, np.repeat(kcat[0], H // HK, axis=0)) * \
                float(np.float32(SCALE))
            s = np.where(np.isneginf(mcat[0, 0]), -np.inf, s + mcat[0, 0])
            mm, ss = st.state_values(state, H)
            with np.errstate(invalid="ignore"):
                m_want = s.max(-1)
                s_want = np.where(np.isfinite(m_want),
                                  np.exp(s - np.where(np.isfinite(m_want), m_want, 0)[..., None]).sum(-1), 0)
            assert np.array_equal(np.isneginf(mm[0]), np.isneginf(m_want))
            fin = np.isfinite(m_want)
            # PREC_DEFAULT with a quantized cold K: the kernels' q in 8-bit blocks moves the
            # scores by ~1e-3 (the reference stays exact)
            rel = 1e-6 if be.name == "reference" else (1e-5 if prec == gg.PREC_F32 else 1e-2)
            assert np.allclose(mm[0][fin], m_want[fin], rtol=rel, atol=rel)
            assert np.allclose(ss[0], s_want, rtol=rel * 10)
            if be.name == "numba":
                be.free()


# --- (2) chained segments == unsegmented ---------------------------------------------------------

@pytest.mark.parametrize("n_calls", [2, 3, 7])
@pytest.mark.parametrize("one_graph", [True, False])
def test_chained_calls_equal_unsegmented(rng, n_calls, one_graph):
    n_kv = 150
    prob = Problem(rng, n_kv, ne3=2)
    backends = [_ref()] + [gg.backend_numba_init(n) for n in (1, 2, 3)]
    for be in backends:
        ctx = gg.init(mem_size=64 << 20)
        full = prob.full(ctx)
        _compute(full, be)
        want = data.read(full)
        q = _leaf(ctx, prob.q)
        state = gg.flash_attn_state_new(ctx, H, N, 2)
        bounds = _bounds(n_kv, n_calls, rng)
        if one_graph:
            out = _chain(ctx, prob, q, state, bounds)
            _compute(out, be)
        else:
            # one graph per call; the previous output reaches the next graph as data (a
            # graph built on the previous node itself would recompute that node too)
            prev = None
            for ab in bounds:
                out = _chain(ctx, prob, q, state, [ab], o_prev=prev)
                _compute(out, be)
                prev = _leaf(ctx, data.read(out))
        got = data.read(out)
        assert harness.nmse(want, got) <= 1e-12, (be.name, n_calls)
        assert np.all(got[:, 0] == 0) and np.all(np.isfinite(got))
    for be in backends[1:]:
        be.free()


@pytest.mark.parametrize("kv_type", [T.F16, T.Q8_0])
@pytest.mark.parametrize("n,n_kv,cuts", [(3, 200, (64, 128)), (1, 1536, (1024,)),
                                         (1, 1600, (320, 1088))])
def test_chain_cut_at_fold_units_equals_one_call_bitwise(rng, kv_type, n, n_kv, cuts):
    """The Numba kernels fold keys in aligned units of FOLD in key order, so calls chained
    through the state and o_prev, cut at multiples of FOLD, give flash_attn_ext over all the
    keys bit for bit (context-split shards rely on it), with or without the decode split
    (1 KV head, 1 query: the 1024- and 1088-key calls split, the others do not), for any
    thread count."""
    from pyggml.backends.numba_cpu.kernels import attention as K
    assert all(c % K.FOLD == 0 for c in cuts)
    prob = Problem(rng, n_kv, hk=1 if n == 1 else HK, n=n)
    bounds = list(zip((0,) + cuts, cuts + (n_kv,)))
    for nt in (1, 2, 3):
        be = gg.backend_numba_init(nt)
        ctx = gg.init(mem_size=64 << 20)
        full = prob.full(ctx, kv_type, gg.PREC_DEFAULT)
        q = _leaf(ctx, prob.q)
        state = gg.flash_attn_state_new(ctx, H, n)
        out = None
        for a, b in bounds:
            k, v, m = prob.seg(ctx, a, b, kv_type)
            out = gg.flash_attn_ext_with_state(ctx, q, k, v, m, None, None, None, state,
                                               SCALE, 0.0, 0.0, o_prev=out)
        _compute([full, out], be)
        want, got = data.read(full), data.read(out)
        assert np.array_equal(want, got), (nt, float(np.abs(want - got).max()))
        assert harness.nmse(prob_ref(prob, kv_type, ctx), got) <= 5e-4
        be.free()


def prob_ref(prob, kv_type, ctx):
    """The reference backend's flash_attn_ext on the same problem (semantics unchanged)."""
    full = prob.full(ctx, kv_type, gg.PREC_F32)
    _compute(full, _ref())
    return data.read(full)


def test_recompute_continues_from_the_state(rng):
    """The state is in-place data: computing the same graph again merges again."""
    prob = Problem(rng, 70)
    for be in (_ref(), gg.backend_numba_init(2)):
        ctx = gg.init(mem_size=32 << 20)
        q = _leaf(ctx, prob.q)
        state = gg.flash_attn_state_new(ctx, H, N)
        prev = _leaf(ctx, np.zeros((1, N, H, DV)), name="o_prev")   # the caller's last output
        out = _chain(ctx, prob, q, state, [(0, 70)], o_prev=prev)
        gf = _compute(out, be)
        o1 = data.read(out)
        m1, s1 = st.state_values(state)
        data.write(prev, o1)
        be.graph_compute(gf)
        m2, s2 = st.state_values(state)
        assert np.allclose(data.read(out), o1, rtol=1e-6, atol=1e-7)
        assert np.array_equal(m2, m1) and np.allclose(s2, 2 * s1, rtol=1e-6)
        if be.name == "numba":
            be.free()


# --- (3) identical calls: S, 2S, 3S --------------------------------------------------------------

def test_identical_calls_accumulate_s(rng):
    prob = Problem(rng, 50)
    for be in (_ref(), gg.backend_numba_init(2)):
        ctx = gg.init(mem_size=32 << 20)
        q = _leaf(ctx, prob.q)
        state = gg.flash_attn_state_new(ctx, H, N)
        hot = prob.seg(ctx, 0, 20, T.F16)
        cold = prob.seg(ctx, 20, 50, T.Q4_0)
        outs, ss, ms = [], [], []
        prev = None
        for i in range(3):
            out = gg.flash_attn_ext_with_state(ctx, q, *hot, cold[0], cold[1], cold[2], state,
                                               SCALE, 0.0, 0.0, o_prev=prev)
            _compute(out, be)
            outs.append(data.read(out))
            prev = _leaf(ctx, outs[-1])
            m, s = st.state_values(state)
            ms.append(m)
            ss.append(s)
        for i in (1, 2):
            assert np.array_equal(ms[i], ms[0])
            assert np.allclose(ss[i], (i + 1) * ss[0], rtol=1e-6)
            assert np.allclose(outs[i], outs[0], rtol=1e-5, atol=1e-6)
        assert np.all(ss[0][0].reshape(H, N)[:, 0] == 0)       # query 0: nothing seen
        if be.name == "numba":
            be.free()


# --- (4) masked rows, empty segments ----------------------------------------------------------------

def test_masked_rows_and_empty_segments_give_zero_and_fresh_state(rng):
    prob = Problem(rng, 40)
    for be in (_ref(), gg.backend_numba_init(2), gg.backend_numba_init(3)):
        ctx = gg.init(mem_size=32 << 20)
        q = _leaf(ctx, prob.q)
        state = gg.flash_attn_state_new(ctx, H, N)
        # 1) every key masked for every row, and an empty (0-key) cold segment
        k, v, _ = prob.seg(ctx, 0, 40, T.F16)
        m_all = _leaf(ctx, np.full((1, 1, N, 40), -np.inf), T.F16)
        k0 = gg.new_tensor_4d(ctx, T.Q4_0, DK, 0, HK, 1)
        v0 = gg.new_tensor_4d(ctx, T.Q4_0, DV, 0, HK, 1)
        out1 = gg.flash_attn_ext_with_state(ctx, q, k, v, m_all, k0, v0, None, state, SCALE,
                                            0.0, 0.0)
        _compute(out1, be)
        o1 = data.read(out1)
        mm, ss = st.state_values(state)
        assert np.all(o1 == 0) and np.all(np.isneginf(mm)) and np.all(ss == 0)
        # 2) an empty call on a fresh state: o_prev not needed, still nothing
        out2 = gg.flash_attn_ext_with_state(ctx, q, None, None, None, k0, v0, None, state,
                                            SCALE, 0.0, 0.0)
        _compute(out2, be)
        assert np.all(data.read(out2) == 0)
        # 3) real keys (query 0 fully masked), then a call that sees nothing: unchanged
        out3 = _chain(ctx, prob, q, state, [(0, 40)], o_prev=_leaf(ctx, data.read(out2)))
        _compute(out3, be)
        o3 = data.read(out3)
        m3, s3 = st.state_values(state)
        assert np.all(np.isfinite(o3)) and np.all(o3[:, 0] == 0)
        out4 = gg.flash_attn_ext_with_state(ctx, q, k, v, m_all, None, None, None, state, SCALE,
                                            0.0, 0.0, o_prev=_leaf(ctx, o3))
        _compute(out4, be)
        m4, s4 = st.state_values(state)
        assert np.array_equal(data.read(out4), o3)
        assert np.array_equal(m4, m3) and np.array_equal(s4, s3)
        rows0 = np.arange(H) * N                               # rows of query 0
        assert np.all(np.isneginf(m4[0][rows0])) and np.all(s4[0][rows0] == 0)
        if be.name == "numba":
            be.free()


# --- (5) thread counts --------------------------------------------------------------------------

@pytest.mark.parametrize("hk,n,n_kv", [(2, 3, 200), (1, 1, 1500)])
def test_thread_count_does_not_matter(rng, hk, n, n_kv):
    """Bitwise: a tile's keys are always processed in the same order, and the decode split
    (1 KV head, 750 hot + 750 cold keys: 512-key chunks across the boundary) does not depend on
    the thread count."""
    prob = Problem(rng, n_kv, hk=hk, n=n)
    results = []
    for nt in (1, 2, 3):
        be = gg.backend_numba_init(nt)
        ctx = gg.init(mem_size=64 << 20)
        q = _leaf(ctx, prob.q)
        state = gg.flash_attn_state_new(ctx, H, n)
        out = _chain(ctx, prob, q, state, [(0, n_kv)] if n_kv > 1000 else _bounds(n_kv, 2),
                     (T.F16, T.Q4_0), gg.PREC_DEFAULT)
        _compute(out, be)
        results.append((data.read(out), *st.state_values(state)))
        be.free()
    for o, m, s in results[1:]:
        assert np.array_equal(o, results[0][0])
        assert np.array_equal(m, results[0][1]) and np.array_equal(s, results[0][2])


# --- (6) missing o_prev ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "numba1", "numba3"])
def test_missing_o_prev_is_an_error_and_changes_nothing(rng, backend):
    be = _ref() if backend == "reference" else gg.backend_numba_init(int(backend[-1]))
    prob = Problem(rng, 30)
    ctx = gg.init(mem_size=32 << 20)
    q = _leaf(ctx, prob.q)
    state = gg.flash_attn_state_new(ctx, H, N)
    _compute(_chain(ctx, prob, q, state, [(0, 30)]), be)
    before = data.tensor_get(state)
    out = _chain(ctx, prob, q, state, [(0, 30)])          # o_prev=None on a used state
    data.write(out, np.full((1, N, H, DV), 7.0))
    with pytest.raises(ComputeError) as e:
        _compute(out, be)
    msg = str(e.value)
    assert "FLASH_ATTN_EXT_WITH_STATE" in msg and "pass the previous output" in msg
    assert data.tensor_get(state) == before                # nothing written
    assert np.all(data.read(out) == 7.0)
    gg.flash_attn_state_reset(state)                        # a reset starts over
    _compute(out, be)
    assert np.all(np.isfinite(data.read(out)))
    if backend != "reference":
        be.free()


# --- (7) inconsistent state rows --------------------------------------------------------------------

BAD_ROWS = {"M nan": (np.nan, 1.0), "S nan": (0.5, np.nan), "S 0, M finite": (0.5, 0.0),
            "S < 0": (0.5, -2.0), "S > 0, M -inf": (-np.inf, 1.0), "M +inf": (np.inf, 1.0),
            "S inf": (0.5, np.inf)}


@pytest.mark.parametrize("o_prev", [False, True])
@pytest.mark.parametrize("backend", ["reference", "numba2"])
@pytest.mark.parametrize("bad", list(BAD_ROWS))
def test_inconsistent_state_row_is_an_error_naming_it(rng, backend, bad, o_prev):
    """A row is fresh (M=-inf, S=0) or a previous contribution (finite M, S > 0); any other
    row is never taken for fresh (which would drop o_prev): a ComputeError names it."""
    be = _ref() if backend == "reference" else gg.backend_numba_init(2)
    prob = Problem(rng, 20)
    ctx = gg.init(mem_size=32 << 20)
    q = _leaf(ctx, prob.q)
    state = gg.flash_attn_state_new(ctx, H, N)
    prev = _leaf(ctx, np.ones((1, N, H, DV))) if o_prev else None
    out = _chain(ctx, prob, q, state, [(0, 20)], o_prev=prev)
    vals = st.fresh_values(state.ne)
    if o_prev:
        vals[..., 1] = 1.0
        vals[..., 0] = 0.25                              # valid previous contributions
    vals[0, 0, 5] = BAD_ROWS[bad]                        # row 5 = head 1, pos 2
    data.write(state, vals)
    before = data.tensor_get(state)
    with pytest.raises(ComputeError) as e:
        _compute(out, be)
    msg = str(e.value)
    assert "row 5 (head 1, pos 2, plane 0) is inconsistent" in msg, msg
    assert data.tensor_get(state) == before


def test_row_kinds():
    m = np.array([-np.inf, 0.5, np.nan, 0.5, -np.inf])
    s = np.array([0.0, 2.0, 1.0, 0.0, 1.0])
    fresh, prev, bad = st.row_kinds(m, s)
    assert fresh.tolist() == [True, False, False, False, False]
    assert prev.tolist() == [False, True, False, False, False]
    assert bad.tolist() == [False, False, True, True, True]


# --- state helpers ------------------------------------------------------------------------------------

def test_state_helpers():
    ctx = gg.init(mem_size=8 << 20)
    s = gg.flash_attn_state_new(ctx, 4, 3, 2)
    assert s.type == T.F32 and s.ne == [2, 12, 2, 1]
    m, ss = st.state_values(s, 4)
    assert m.shape == (2, 4, 3) and np.all(np.isneginf(m)) and np.all(ss == 0)
    data.write(s, 1.0)
    assert gg.flash_attn_state_init(ctx, s) is s
    assert np.all(np.isneginf(st.state_values(s)[0]))
    data.write(s, 1.0)
    gg.flash_attn_state_reset(s)
    assert np.all(st.state_values(s)[1] == 0)
    noalloc = gg.init(mem_size=1 << 20, no_alloc=True)
    s2 = gg.flash_attn_state_new(noalloc, 4, 3)
    with pytest.raises(DataError, match="no data"):
        gg.flash_attn_state_reset(s2)
    bad = gg.new_tensor_2d(ctx, T.F32, 3, 12)
    gg.set_name(bad, "notstate")
    with pytest.raises(ShapeError, match="notstate"):
        gg.flash_attn_state_init(ctx, bad)
    with pytest.raises(TypeError_):
        gg.flash_attn_state_reset(gg.new_tensor_2d(ctx, T.F16, 2, 12))
    # the merge rule: empty sides never produce NaN
    o1 = np.array([[np.nan, np.nan], [3.0, 3.0], [np.nan, np.nan]])   # junk where S == 0
    mm, sm, om = st.merge([-np.inf, 1.0, -np.inf], [0, 2.0, 0], o1,
                          [-np.inf, -np.inf, 0.5], [0, 0, 1.0], np.ones((3, 2)))
    assert list(sm) == [0, 2.0, 1.0] and np.isneginf(mm[0]) and mm[1] == 1.0
    assert om.tolist() == [[0, 0], [3, 3], [1, 1]]


# --- build-time errors ------------------------------------------------------------------------------

def _inputs(ctx):
    q = gg.new_tensor_4d(ctx, T.F32, DK, N, H, 1)
    gg.set_name(q, "q")
    k = gg.new_tensor_4d(ctx, T.F16, DK, 10, HK, 1)
    gg.set_name(k, "k")
    v = gg.new_tensor_4d(ctx, T.F16, DV, 10, HK, 1)
    gg.set_name(v, "v")
    kq = gg.new_tensor_4d(ctx, T.Q4_0, DK, 32, HK, 1)
    gg.set_name(kq, "k_quant")
    vq = gg.new_tensor_4d(ctx, T.Q4_0, DV, 32, HK, 1)
    gg.set_name(vq, "v_quant")
    s = gg.flash_attn_state_new(ctx, H, N)
    return q, k, v, kq, vq, s


def _raises(cls, fn, *words):
    with pytest.raises(cls) as e:
        fn()
    for w in words:
        assert w in str(e.value), f"{w!r} not in {e.value}"


def test_build_errors_name_the_tensors():
    ctx = gg.init(mem_size=16 << 20)
    q, k, v, kq, vq, s = _inputs(ctx)
    ws = gg.flash_attn_ext_with_state
    OPN = "FLASH_ATTN_EXT_WITH_STATE"
    ok = ws(ctx, q, k, v, None, kq, vq, None, s, SCALE, 0.0, 0.0)
    assert ok.ne == [DV, H, N, 1] and ok.op is OP and OP.writes == (6,)
    assert ok.src[6] is s and ok.src[4] is kq and ok.src[5] is vq
    _raises(GGMLError, lambda: ws(ctx, q, None, None, None, None, None, None, s, SCALE), OPN,
            "both segments are None")
    _raises(GGMLError, lambda: ws(ctx, q, k, None, None, kq, vq, None, s, SCALE), "come together")
    m = gg.new_tensor_4d(ctx, T.F16, 32, N, 1, 1)
    gg.set_name(m, "cold_mask")
    _raises(GGMLError, lambda: ws(ctx, q, k, v, None, None, None, m, s, SCALE), "cold_mask",
            "segment")
    v48 = gg.new_tensor_4d(ctx, T.Q4_0, 96, 32, HK, 1)
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, kq, v48, None, s, SCALE), "V head sizes")
    k32 = gg.new_tensor_4d(ctx, T.Q4_0, 32, 32, HK, 1)
    gg.set_name(k32, "kq32")
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, k32, vq, None, s, SCALE), "kq32", "DK")
    k3 = gg.new_tensor_4d(ctx, T.Q4_0, DK, 32, 3, 1)
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, k3, k3, None, s, SCALE), "GQA")
    ki = gg.new_tensor_4d(ctx, T.I32, DK, 32, HK, 1)
    gg.set_name(ki, "kint")
    _raises(TypeError_, lambda: ws(ctx, q, k, v, None, ki, vq, None, s, SCALE), "kint", "i32")
    _raises(ParamError, lambda: ws(ctx, q, k, v, None, kq, vq, None, s, SCALE, 8.0), "max_bias",
            "mask")
    # the state
    s_bad = gg.new_tensor_3d(ctx, T.F32, 2, H * N + 1, 1)
    gg.set_name(s_bad, "bad_state")
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, kq, vq, None, s_bad, SCALE), "bad_state",
            "[2, 12, 1, 1]")
    s16 = gg.new_tensor_3d(ctx, T.F16, 2, H * N, 1)
    gg.set_name(s16, "state16")
    _raises(TypeError_, lambda: ws(ctx, q, k, v, None, kq, vq, None, s16, SCALE), "state16")
    big = gg.new_tensor_3d(ctx, T.F32, 4, H * N, 1)
    s_view = gg.view_3d(ctx, big, 2, H * N, 1, big.nb[1], big.nb[2], 0)
    gg.set_name(s_view, "strided_state")
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, kq, vq, None, s_view, SCALE),
            "contiguous", "strided_state")
    _raises(GGMLError, lambda: ws(ctx, q, k, v, None, kq, vq, None, None, SCALE), "s_m_state")
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, kq, vq, None, q, SCALE), "s_m_state")
    # o_prev
    op_bad = gg.new_tensor_4d(ctx, T.F32, DV, N, H, 1)
    gg.set_name(op_bad, "o_prev_wrong")
    _raises(ShapeError, lambda: ws(ctx, q, k, v, None, kq, vq, None, s, SCALE, o_prev=op_bad),
            "o_prev_wrong", "[64, 4, 3, 1]")
    op16 = gg.new_tensor_4d(ctx, T.F16, DV, H, N, 1)
    _raises(TypeError_, lambda: ws(ctx, q, k, v, None, kq, vq, None, s, SCALE, o_prev=op16),
            "o_prev")
    # sinks are flash_attn_ext's (src[4] is k_quant here); prec is shared
    _raises(GGMLError, lambda: gg.flash_attn_ext_add_sinks(ok, gg.new_tensor_1d(ctx, T.F32, H)),
            "FLASH_ATTN_EXT")
    gg.flash_attn_ext_set_prec(ok, gg.PREC_F32)
    assert gg.flash_attn_ext_get_prec(ok) == gg.PREC_F32
