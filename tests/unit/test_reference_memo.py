"""The reference backend's MUL_MAT memo (backends/reference/memo.py): a graph run again after
any kind of write to a source gives the bytes a backend without the memo gives. A stale
read would be a silent wrong answer, so each way of writing a tensor is tried: data API
(write, set_f32_1d, tensor_set, tensor_memset), a NumPy view of the buffer, a kernel whose
output feeds MUL_MAT, a write through another view of the same memory, and a bit change a
float compare misses (-0.0 for 0.0)."""
from __future__ import annotations

import numpy as np
import pytest

from pyggml import data
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.backends.reference.memo import MatMulMemo
from pyggml.context import init
from pyggml.context import new_tensor
from pyggml.graph import CGraph
from pyggml.ops.matmul import mul_mat
from pyggml.ops.unary import scale
from pyggml.ops.view import permute
from pyggml.ops.view import view_4d

K, M, N = 40, 6, 3


def _graph(type_a="f16"):
    """a (type_a) [K, M, 2, 1] viewed out of a larger base, times b = scale(x) permuted,
    broadcast over b's 4 matrices; returns (gf, out, base, a, x, src_b) allocated and filled."""
    ctx = init(mem_size=8 << 20)
    base = new_tensor(ctx, type_a, 4, [K + 8, M, 2, 1])
    a = view_4d(ctx, base, K, M, 2, 1, base.nb[1], base.nb[2], base.nb[3], 8 * base.nb[0])
    x = new_tensor(ctx, "f32", 4, [K, 4, N, 1])          # scaled, then permuted to [K, N, 4, 1]
    xs = scale(ctx, x, 0.5)
    b = permute(ctx, xs, 0, 2, 1, 3)
    out = mul_mat(ctx, a, b)
    gf = CGraph(64)
    gf.expand(out)
    rng = np.random.default_rng(0)
    data.write(base, rng.uniform(-1, 1, base.ne[::-1]))
    data.write(x, rng.uniform(-1, 1, x.ne[::-1]))
    return gf, out, base, a, x, xs


def _same_as_full(memo_be, gf, out) -> bytes:
    memo_be.graph_compute(gf)
    got = data.tensor_get(out)
    ReferenceBackend(memo=False).graph_compute(gf)
    assert got == data.tensor_get(out)
    return got


WRITES = {
    "write": lambda base, a, x: data.write(x, data.read(x) * 1.5),
    "set_f32_1d_a": lambda base, a, x: data.set_f32_1d(a, 7, 0.25),
    "set_f32_1d_x": lambda base, a, x: data.set_f32_1d(x, 100, -3.0),
    "tensor_set": lambda base, a, x: data.tensor_set(base, np.full(4, 0x3c00, np.uint16),
                                                      offset=base.nb[1] + 16),
    "tensor_memset": lambda base, a, x: data.tensor_memset(x, 0, offset=4 * K, size=8 * K),
    "numpy_view": lambda base, a, x: data.strided(x).__setitem__((0, 1, 2, 3), 9.0),
    "other_view": lambda base, a, x: data.strided(base).__setitem__((0, 1, 3, 8), 2.0),
}


@pytest.mark.parametrize("how", sorted(WRITES))
def test_every_kind_of_write_is_seen(how):
    gf, out, base, a, x, _ = _graph()
    be = ReferenceBackend()
    before = _same_as_full(be, gf, out)
    assert _same_as_full(be, gf, out) == before and be.memo.hits == 1
    WRITES[how](base, a, x)
    after = _same_as_full(be, gf, out)
    assert after != before and be.memo.hits == 2


def test_bytes_outside_the_view_change_nothing():
    gf, out, base, a, x, _ = _graph()
    be = ReferenceBackend()
    before = _same_as_full(be, gf, out)
    data.strided(base)[0, 1, 3, 0] = 5.0          # base's column 0 is not in a's view
    assert _same_as_full(be, gf, out) == before


def test_a_kernel_output_feeding_mul_mat_is_compared_each_run():
    gf, out, base, a, x, xs = _graph()
    be = ReferenceBackend()
    _same_as_full(be, gf, out)
    data.write(xs, 0.0)       # scale's output overwritten: the next run's scale rewrites it
    _same_as_full(be, gf, out)
    entry = next(iter(be.memo.entries.values()))
    assert np.array_equal(entry.vals[1], data.read(xs).transpose(0, 2, 1, 3))


def test_negative_zero_is_a_change():
    """-0.0 == 0.0 as floats; the memo compares bits, so its float64 copy takes the sign."""
    gf, out, base, a, x, _ = _graph("f32")
    data.write(base, 0.0)
    be = ReferenceBackend()
    _same_as_full(be, gf, out)
    data.strided(a)[0, 1, 2, 5] = -0.0
    _same_as_full(be, gf, out)
    a64 = next(iter(be.memo.entries.values())).vals[0]
    assert np.signbit(a64).sum() == 1 and be.memo.hits == 1


def test_one_element_moved_recomputes_one_matrix_bit_for_bit():
    """As grad mode moves one element: the memo recomputes the matrices it feeds only."""
    gf, out, base, a, x, _ = _graph("f32")
    be = ReferenceBackend()
    _same_as_full(be, gf, out)
    xv, av = data.strided(x), data.strided(a)
    for arr, idx in ((xv, (0, 2, 3, 11)), (av, (0, 1, 4, 39)), (xv, (0, 0, 0, 0))):
        old = arr[idx]
        for v in (old + np.float32(1), old - np.float32(1)):
            arr[idx] = v
            _same_as_full(be, gf, out)
        arr[idx] = old


def test_a_new_buffer_or_layout_is_a_new_entry():
    gf, out, base, a, x, _ = _graph()
    be = ReferenceBackend()
    _same_as_full(be, gf, out)
    new = np.array(base.buffer.data)             # same bytes elsewhere, then different ones
    base.buffer.data = new
    _same_as_full(be, gf, out)
    assert be.memo.hits == 0
    data.write(x, 1.0)
    _same_as_full(be, gf, out)
    assert be.memo.hits == 1


def test_memo_is_bounded():
    memo = MatMulMemo(max_entries=1)
    be = ReferenceBackend()
    be.memo = memo
    g1, g2 = _graph(), _graph("f32")
    for _ in range(2):
        _same_as_full(be, g1[0], g1[1])
        _same_as_full(be, g2[0], g2[1])
        assert len(memo.entries) == 1
    assert memo.hits == 0


def test_only_writing_trusts_other_leaves_and_sees_its_tensor():
    """Grad mode's promise (only_writing(x)): x's writes are seen; a, a leaf elsewhere, is
    compared at the block's first run only (a write to it inside the block breaks the
    promise and goes unseen: that is what the promise buys)."""
    gf, out, base, a, x, _ = _graph("f32")
    be = ReferenceBackend()
    _same_as_full(be, gf, out)
    data.strided(a)[0, 0, 0, 0] = 3.0                 # before the block: seen at its first run
    with be.only_writing(x):
        _same_as_full(be, gf, out)
        xv = data.strided(x)
        for v in (1.0, -2.0):
            xv[0, 1, 2, 3] = v
            _same_as_full(be, gf, out)
        data.strided(a)[0, 0, 0, 1] = 7.0
        be.graph_compute(gf)
        stale = data.tensor_get(out)
    assert stale != _same_as_full(be, gf, out)       # out of the block: compared again


def test_only_writing_still_compares_what_the_graph_or_the_tensor_writes():
    """A source inside the written tensor's bytes, or written by a node of the graph (a CPY
    into a leaf that MUL_MAT reads), is compared on every run of the block."""
    from pyggml.ops.copy import cpy
    ctx = init(mem_size=8 << 20)
    y = new_tensor(ctx, "f32", 2, [K, M])
    w = new_tensor(ctx, "f32", 2, [K, M])
    b = new_tensor(ctx, "f32", 2, [K, N])
    out = mul_mat(ctx, cpy(ctx, y, w), b)
    gf = CGraph(16)
    gf.expand(out)
    rng = np.random.default_rng(1)
    for t in (y, w, b):
        data.write(t, rng.uniform(-1, 1, t.ne[::-1]))
    be = ReferenceBackend()
    with be.only_writing(y):
        first = _same_as_full(be, gf, out)
        data.strided(y)[0, 0, 2, 5] = 4.0
        assert _same_as_full(be, gf, out) != first
    base_gf, base_out, base, a, x, _ = _graph("f32")
    with be.only_writing(base):                       # a is a view into base
        before = _same_as_full(be, base_gf, base_out)
        data.strided(a)[0, 1, 3, 2] = 6.0
        assert _same_as_full(be, base_gf, base_out) != before
