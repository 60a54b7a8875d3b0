"""The fast reference's shortcuts are the reference's values: weights decoded in float32
(the codecs, against ggml's dequantization), SET_ROWS without reading its destination."""
import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.backends.reference.fast import FAST
from pyggml.backends.reference.fast import FastReferenceBackend

# (block bytes, offset of the codes, offset of the min or None, code offset, code bits)
_LEGACY = {gg.TYPE_Q4_0: (18, 2, None, 8, 4), gg.TYPE_Q4_1: (20, 4, 2, 0, 4),
           gg.TYPE_Q5_0: (22, 6, None, 16, 5), gg.TYPE_Q5_1: (24, 8, 2, 0, 5),
           gg.TYPE_Q8_0: (34, 2, None, 0, 8)}


def _decode_f64(raw, t):
    """The legacy blocks decoded from their bytes in float64, each step rounded to float32
    as ggml's dequantize_row computes: ((q - off) * d) then + m."""
    size, q0, m_at, off, bits = _LEGACY[t]
    b = raw.reshape(-1, size)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float64)
    if bits == 8:
        q = b[:, q0:].view(np.int8).astype(np.float64)
    else:
        lo = b[:, q0:q0 + 16]
        q = np.concatenate([lo & 15, lo >> 4], axis=1).astype(np.float64)
        if bits == 5:
            qh = np.unpackbits(b[:, q0 - 4:q0], axis=1, bitorder="little").astype(np.float64)
            q += 16 * qh
    x = ((q - off) * d).astype(np.float32)
    if m_at is not None:
        m = b[:, m_at:m_at + 2].copy().view(np.float16).astype(np.float32)
        x = (x.astype(np.float64) + m).astype(np.float32)
    return x.reshape(-1)


@pytest.mark.parametrize("t", sorted(_LEGACY))
def test_legacy_codecs_decode_in_float32(rng, t):
    """data.read(w, float32), which the fast MUL_MAT and attention decode weights and caches
    with, is ggml's float32 dequantization bit for bit, a strided view of rows too."""
    ctx = gg.init(mem_size=1 << 20)
    vals = rng.standard_normal((6, 64)).astype(np.float32) * 3
    vals[0, :32] = 0.0                                     # an all-zero block
    vals[1, 5] = 1e4                                       # a large scale
    w = gg.new_tensor_2d(ctx, t, 64, 6)
    raw = gg.quantize(t, vals)
    gg.tensor_set(w, raw)
    got = data.read(w, np.float32)
    assert got.dtype == np.float32 and got.shape == (1, 1, 6, 64)
    want = _decode_f64(np.frombuffer(raw, np.uint8), t).reshape(6, 64)
    np.testing.assert_array_equal(got[0, 0].view(np.uint32), want.view(np.uint32))
    # a strided 3-D view of whole rows (a KV cache's cold part): rows 1, 3, 5
    v = gg.view_3d(ctx, w, 64, 1, 3, w.nb[1], 2 * w.nb[1], w.nb[1])
    np.testing.assert_array_equal(data.read(v, np.float32).reshape(3, 64).view(np.uint32),
                                  want[1::2].view(np.uint32))


@pytest.mark.parametrize("dst", [gg.TYPE_F16, gg.TYPE_Q4_0])
def test_fast_set_rows_is_the_reference(rng, dst):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, dst, 64, 8)
    base = gg.quantize(dst, rng.standard_normal((8, 64)).astype(np.float32)) \
        if gg.is_quantized(dst) else rng.standard_normal((8, 64)).astype(np.float16).tobytes()
    b = gg.from_numpy(ctx, rng.standard_normal((3, 64)).astype(np.float32), name="b")
    ids = gg.from_numpy(ctx, np.array([6, 1, 6], dtype=np.int64), name="ids")  # repeated id
    y = gg.set_rows(ctx, a, b, ids)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    assert FAST["SET_ROWS"][0](y)
    outs = []
    for be in (FastReferenceBackend(), gg.backend_reference_init()):
        gg.tensor_set(a, base)
        be.graph_compute(gf)
        outs.append(gg.tensor_get(a))
    assert outs[0] == outs[1] and outs[0] != base


def test_fast_set_rows_bad_id_names_the_op():
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F16, 32, 4)
    b = gg.from_numpy(ctx, np.ones((1, 32), np.float32), name="b")
    ids = gg.from_numpy(ctx, np.array([9], dtype=np.int64), name="ids")
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, gg.set_rows(ctx, a, b, ids))
    with pytest.raises(gg.GGMLError, match="SET_ROWS"):
        FastReferenceBackend().graph_compute(gf)


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("b_ne", [[64, 3, 2, 1], [64, 1, 1, 1], [1, 3, 1, 1]])
def test_fast_binary_is_the_reference_bit_for_bit(rng, op, b_ne):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, rng.standard_normal((1, 2, 3, 64)).astype(np.float32), name="a")
    b = gg.from_numpy(ctx, rng.standard_normal(b_ne[::-1]).astype(np.float32), name="b")
    y = getattr(gg, op)(ctx, a, b)
    z = getattr(gg, f"{op}_inplace")(ctx, y, a)            # writes into y's memory
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, z)
    assert FAST[op.upper()][0](y) and FAST[op.upper()][0](z)
    FastReferenceBackend().graph_compute(gf)
    fast = gg.to_numpy(z).copy()
    gg.backend_reference_init().graph_compute(gf)
    np.testing.assert_array_equal(fast, gg.to_numpy(z))


def test_fast_binary_leaves_tiling_and_other_types_to_the_reference(rng):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, rng.standard_normal((4, 64)).astype(np.float32), name="a")
    b2 = gg.from_numpy(ctx, rng.standard_normal((2, 64)).astype(np.float32), name="b2")
    h = gg.new_tensor_2d(ctx, gg.TYPE_F16, 64, 4)
    assert not FAST["ADD"][0](gg.add(ctx, a, b2))          # ggml repeats b 2x: not NumPy's
    assert not FAST["ADD"][0](gg.add(ctx, h, a))


def test_fast_rms_norm_is_the_reference_bit_for_bit(rng):
    ctx = gg.init(mem_size=1 << 20)
    v = rng.standard_normal((2, 3, 5, 96)).astype(np.float32) * 10
    v[0, 0, 0] = 0.0                                       # a zero row: x * rsqrt(eps)
    v[0, 0, 1, 3] = 3e38                                   # a square overflows: the row is 0/NaN
    v[1, 2, 4] *= 1e-30                                    # tiny values
    x = gg.from_numpy(ctx, v, name="x")
    y = gg.rms_norm(ctx, x, 1e-6)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    assert FAST["RMS_NORM"][0](y)
    FastReferenceBackend().graph_compute(gf)
    fast = gg.to_numpy(y).copy()
    gg.backend_reference_init().graph_compute(gf)
    np.testing.assert_array_equal(fast.view(np.uint32), gg.to_numpy(y).view(np.uint32))
    t = gg.rms_norm(ctx, gg.permute(ctx, x, 0, 2, 1, 3), 1e-6)
    assert not FAST["RMS_NORM"][0](t)                      # not contiguous: the reference
