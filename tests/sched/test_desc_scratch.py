"""Per-node scratch lines of the Numba backend (desc.py): zero after lowering, one 64-byte
line per node, kept between computes of a lowered table, fresh after a new lowering; the
descriptor rows (all 16 op_params words included) are never written by the kernels; the
flash-attention kernels keep their cross-thread counters there and stay correct over
repeated computes with 1, 2 and 3 threads."""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.backends.numba_cpu import desc as D
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import attention as K
from pyggml.errors import ComputeError
from pyggml.ops import fa_state as st
from pyggml.types import GGMLType as T

THREADS = (1, 2, 3)
DK = DV = 64
H, HK = 4, 2
SENTINELS = [0x5A5A5A5, -7, 123456789, -2 ** 31]     # op_params words 12..15 (unused by FA)


@pytest.fixture(scope="module", params=THREADS, ids=lambda n: f"{n}t")
def backend(request):
    be = NumbaBackend(request.param)
    yield be
    be.free()


def _fa(rng, n_kv, n_q, kv_type=T.F16, sentinels=True):
    """flash_attn_ext over a random cache (decode: n_q = 1 and n_kv > 1024 splits the keys
    into chunks merged by the last thread); op_params words 12..15 hold sentinels."""
    ctx = gg.init(mem_size=16 << 20)
    q = gg.from_numpy(ctx, rng.uniform(-1, 1, (1, H, n_q, DK)).astype(np.float32))
    k = gg.new_tensor_4d(ctx, kv_type, DK, n_kv, HK, 1)
    v = gg.new_tensor_4d(ctx, kv_type, DV, n_kv, HK, 1)
    data.write(k, rng.uniform(-1, 1, (1, HK, n_kv, DK)))
    data.write(v, rng.uniform(-1, 1, (1, HK, n_kv, DV)))
    m = rng.uniform(-1, 1, (n_q, n_kv))
    m[rng.uniform(size=m.shape) < 0.2] = -np.inf
    mask = gg.from_numpy(ctx, m.astype(np.float32), type=T.F16)
    out = gg.flash_attn_ext(ctx, q, k, v, mask, 1.0 / math.sqrt(DK))
    if sentinels:
        out.op_params = _with_sentinels(out.op_params)
    gf = gg.new_graph(None)
    gg.build_forward_expand(gf, out)
    return ctx, out, gf


def _with_sentinels(words):
    """Unused op_params words set to sentinels (bypassing set_op_params on purpose: they
    are outside the op's layout)."""
    w = np.array(words)
    w[12:16] = SENTINELS
    return w


def _fa_rows(tab):
    return [r for r, node in enumerate(tab.nodes) if node.op.name.startswith("FLASH_ATTN_EXT")]


def test_scratch_is_zero_after_lowering_one_line_per_node(rng, backend):
    ctx, out, gf = _fa(rng, 80, 3)
    gg.build_forward_expand(gf, gg.scale(ctx, out, 2.0))
    gg.build_forward_expand(gf, gg.add(ctx, out, out))
    tab = backend.table(gf)
    n = tab.n
    assert tab.scratch.shape == (n, D.SCRATCH_LEN) and not tab.scratch.any()
    addrs = [int(tab.descs[r, D.H_SCRATCH]) for r in range(n)]
    assert addrs == [tab.scratch[r].ctypes.data for r in range(n)]
    assert all(a % 64 == 0 for a in addrs) and len(set(a // 64 for a in addrs)) == n
    for r in range(n):
        assert D.has_scratch(tab.descs[r])
        assert D.scratch_addr(tab.descs[r], 3) == addrs[r] + 24
    assert D.unpack(tab.descs[0])["scratch"] == addrs[0]


@pytest.mark.parametrize("n_kv, n_q", [(80, 3), (1100, 1)], ids=["tiles", "split"])
def test_fa_repeated_computes_keep_descriptors_and_op_params(rng, backend, n_kv, n_q):
    """The kernel's counters live in the scratch line: the descriptor rows, op_params words
    12..15 (sentinels here) included, stay as lowered; results are bitwise the same on
    every compute and for every thread count (the KV split does not depend on it)."""
    _, out, gf = _fa(rng, n_kv, n_q)
    ref = gg.backend_reference_init()
    ref.graph_compute(gf)
    want = data.read(out).copy()
    tab = backend.table(gf)
    descs0 = tab.descs.copy()
    (r,) = _fa_rows(tab)
    assert list(tab.descs[r, D.PARAMS + 12:D.PARAMS + 16]) == SENTINELS
    got = []
    for i in range(4):
        backend.graph_compute(gf)
        got.append(data.read(out).copy())
        assert backend.table(gf) is tab                     # the same lowered table
        np.testing.assert_array_equal(tab.descs, descs0)
        # every thread of every run took one ticket: the words persist between computes
        assert tab.scratch[r, K.C_TICKET] == (i + 1) * tab.n_tasks[r]
    assert list(out.op_params[12:16]) == SENTINELS
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])
    np.testing.assert_allclose(got[0], want, rtol=0, atol=2e-3)
    # bitwise the same as one thread computing it
    be1 = NumbaBackend(1)
    try:
        be1.graph_compute(gf)
        np.testing.assert_array_equal(data.read(out), got[0])
    finally:
        be1.free()


def test_relowering_starts_from_a_fresh_scratch(rng):
    _, out, gf = _fa(rng, 1100, 1)
    be = NumbaBackend(2)
    try:
        be.graph_compute(gf)
        tab = be.table(gf)
        assert tab.scratch.any()
        want = data.read(out).copy()
        gg.graph_reset(gf)
        be.graph_compute(gf)
        tab2 = be.table(gf)
        assert tab2 is not tab and tab2.scratch[_fa_rows(tab2)[0], K.C_TICKET] == 2
        np.testing.assert_array_equal(data.read(out), want)
        be.set_n_threads(3)                                   # another table, zero again
        assert not be.table(gf).scratch.any()
        be.graph_compute(gf)
        np.testing.assert_array_equal(data.read(out), want)
    finally:
        be.free()


def test_with_state_check_across_computes(rng, backend):
    """The first thread of every run checks the state (o_prev None): a run that fails it
    and the next one after a reset agree on the counters."""
    ctx = gg.init(mem_size=16 << 20)
    q = gg.from_numpy(ctx, rng.uniform(-1, 1, (1, H, 2, DK)).astype(np.float32))
    k = gg.from_numpy(ctx, rng.uniform(-1, 1, (1, HK, 40, DK)).astype(np.float32), type=T.F16)
    v = gg.from_numpy(ctx, rng.uniform(-1, 1, (1, HK, 40, DV)).astype(np.float32), type=T.F16)
    state = gg.flash_attn_state_new(ctx, H, 2)
    out = gg.flash_attn_ext_with_state(ctx, q, k, v, None, None, None, None, state, 0.125)
    out.op_params = _with_sentinels(out.op_params)
    gf = gg.new_graph(None)
    gg.build_forward_expand(gf, out)
    backend.graph_compute(gf)
    want = data.read(out).copy()
    for _ in range(3):
        with pytest.raises(ComputeError, match="invalid input state"):
            backend.graph_compute(gf)                          # the state is not fresh
        st.reset_state(state)
        backend.graph_compute(gf)
        np.testing.assert_array_equal(data.read(out), want)
    assert list(out.op_params[12:16]) == SENTINELS


def test_a_descriptor_without_scratch_is_an_error(rng):
    """A descriptor packed on its own (no node table, H_SCRATCH = 0): the FA kernel reports
    ERR_SCRATCH instead of touching address 0."""
    _, out, gf = _fa(rng, 40, 1, sentinels=False)
    status = np.zeros(D.STATUS_LEN, dtype=np.int64)
    size = K.work_size(out, 1)
    work = np.zeros(size + 64, dtype=np.uint8)
    d = D.pack(out, work.ctypes.data, work.nbytes, status.ctypes.data, 0, 1)
    assert not D.has_scratch(d)
    kern = KERNELS["FLASH_ATTN_EXT"].select(out)
    kern.cfunc.ctypes(d.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), 0, 1)
    assert status[D.S_CODE] == D.ERR_SCRATCH
    assert "scratch" in D.error_meaning(D.ERR_SCRATCH)


def test_pack_table_rows_are_pack_into_rows(rng):
    """The lowered table (packed in vector gathers) holds, row by row, what pack_into packs
    for the node alone: views, absent sources, negative and float op_params, one tensor in
    several slots."""
    be = NumbaBackend(2)
    try:
        ctx, out, gf = _fa(rng, 80, 3)
        v = gg.view_2d(ctx, out, DV, 2, out.nb[1], out.nb[1])
        gg.build_forward_expand(gf, gg.add(ctx, gg.scale(ctx, v, -2.5), v))
        gg.build_forward_expand(gf, gg.soft_max_ext(ctx, out, None, 0.3, 0.0))
        tab = be.table(gf)
        assert tab.n >= 4
        for r, node in enumerate(tab.nodes):
            want = D.pack(node, int(tab.descs[r, D.H_WDATA]), int(tab.descs[r, D.H_WSIZE]),
                          tab.status.ctypes.data, tab.graph_index[r], int(tab.n_tasks[r]),
                          tab.scratch[r].ctypes.data)
            assert np.array_equal(tab.descs[r], want), (r, node)
    finally:
        be.free()


def test_table_slots_names_a_node_without_all_source_slots_and_one_without_data():
    """table_slots numbers every slot of every row in one pass; a node whose src list is
    not MAX_SRC long, or a tensor without data, is still named in the error."""
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_1d(ctx, T.F32, 8)
    y = gg.add(ctx, a, a)
    short = gg.add(ctx, a, a)
    short.src = short.src[:4]
    with pytest.raises(ValueError, match="has 4 source slots"):
        D.table_slots([y, short])
    nctx = gg.init(mem_size=1 << 20, no_alloc=True)
    b = gg.new_tensor_1d(nctx, T.F32, 8)
    with pytest.raises(gg.DataError, match="has no data"):
        D.table_slots([y, gg.add(nctx, b, b)])
    words, slots, tensors = D.table_slots([y, y])
    assert list(tensors) == [y, a] and slots[:, :3].tolist() == [[1, 2, 2]] * 2
    assert words[0].tolist() == [0] * D.SLOT and words[2, D.T_ADDR] == a.data_ptr
