"""pyggml.quants against real ggml (libggml-python through ctypes), bit for bit.

For every block format and F16/BF16: our quantize() bytes == ggml_quantize_chunk's
(Q8_1, which ggml_quantize_chunk rejects, against its traits' from_float_ref), our
dequantize() == ggml's traits to_float, and the Numba rows == the NumPy codecs.
Floats are compared by their bits, so NaN payloads and signed zeros count too.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pyggml import quants as Q
from pyggml.errors import DataError
from pyggml.errors import ShapeError
from pyggml.types import TRAITS
from pyggml.types import GGMLType

T = GGMLType
BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1]
FLOAT16_TYPES = [T.F16, T.BF16]
ALL_TYPES = BLOCK_TYPES + FLOAT16_TYPES
N = 32 * 37


# ---------------------------------------------------------------------------
# real ggml, through the shared ctypes driver (pyggml.testing.ggml_lib)

class _TypeTraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


_ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class RealGgml:
    """What these tests ask of real ggml, on top of the shared driver."""

    def __init__(self, ggml_lib):
        self.lib = ggml_lib
        self.g = ggml_lib.lib()

    def quantize_chunk(self, t, x: np.ndarray) -> bytes:
        if t == T.Q8_1:  # not in ggml_quantize_chunk's switch (it would abort)
            return self._row(self.g.ggml_get_type_traits(int(t)).contents.from_float_ref, t, x)
        return self.lib.quantize_chunk(t, x)

    def from_float_cpu(self, t, x: np.ndarray) -> bytes:
        """The CPU backend's own quantizer (SIMD), used for mul_mat activations and cpy."""
        traits = _TypeTraitsCpu.from_address(self.g.ggml_get_type_traits_cpu(int(t)))
        return self._row(traits.from_float, t, x)

    def dequantize(self, t, raw: bytes, n: int) -> np.ndarray:
        return self.lib.dequantize(t, raw, n)

    @staticmethod
    def _row(fn_addr, t, x: np.ndarray) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        dst = np.zeros(TRAITS[t].row_size(x.size), dtype=np.uint8)
        _ROW_FN(fn_addr)(x.ctypes.data, dst.ctypes.data, x.size)
        return dst.tobytes()


def real_ggml(cls=RealGgml):
    """cls(ggml_lib) (RealGgml or a subclass); skips the test without real ggml."""
    pytest.importorskip("libggml")
    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        pytest.skip("real ggml (libggml-python) is not available")
    return cls(ggml_lib)


@pytest.fixture(scope="module")
def ggml_ref() -> RealGgml:
    return real_ggml()


# ---------------------------------------------------------------------------
# inputs

def _blocks(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1)


def _ties(rng, n):
    """Largest |x| with both signs (first must win), exact .5 after scaling, halves."""
    k = np.arange(32, dtype=np.float32)
    rows = [
        np.where(k == 3, 3, np.where(k == 9, -3, 0.5)),             # +3 first
        np.where(k == 3, -3, np.where(k == 9, 3, 0.5)),             # -3 first
        np.concatenate([[127], np.arange(-15.5, 15.5)]),           # q8: d = 1, halves
        np.concatenate([[-127], -np.arange(-15.5, 15.5)]),
        np.concatenate([[-8], np.arange(-7.5, 7.6, 0.5)]),     # q4_0: d = 1
        np.concatenate([[-16], np.arange(-15.5, 15.5)]),           # q5_0: d = 1
        np.linspace(0, 15, 32), np.linspace(-1, 30, 32), np.linspace(-31, 0, 32),
        np.tile([1.0, -1.0], 16), np.tile([-1.0, 1.0], 16),
    ]
    x = _blocks(rows)
    return np.resize(np.concatenate([x, x * rng.uniform(0.1, 10)]), n)


def _single_nonzero(rng, n):
    x = np.zeros(n, np.float32)
    idx = np.arange(0, n, 32) + rng.integers(0, 32, n // 32)
    x[idx] = rng.standard_normal(idx.size) * 10.0 ** rng.uniform(-5, 5, idx.size)
    return x


def _constant(rng, n):
    return np.repeat(rng.standard_normal(n // 32) * 100, 32)


def _signed_zeros(rng, n):
    x = rng.choice(np.array([0.0, -0.0, 1.0, -1.0], np.float32), n, p=[.4, .4, .1, .1])
    x[: 32 * 4] = np.where(np.arange(32 * 4) % 3 == 0, -0.0, 0.0)  # all-zero blocks
    return x


def _per_block_scale(rng, n):
    return rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-6, 6, n // 32), 32)


def _specials(rng, n):
    """NaN / inf / huge / denormal values sprinkled over normal ones."""
    x = rng.standard_normal(n).astype(np.float32)
    pick = rng.random(n)
    x[pick < 0.05] = np.nan
    x[(pick >= 0.05) & (pick < 0.08)] = np.inf
    x[(pick >= 0.08) & (pick < 0.10)] = -np.inf
    x[(pick >= 0.10) & (pick < 0.13)] = 3e38
    x[32:64] = np.nan                                     # an all-NaN block
    x[64:96] = 1e-40                                      # denormal block: 1/d overflows
    x[96:128] = np.inf
    x[128:160] = rng.standard_normal(32) * 1e-41
    x[160:192] = np.where(np.arange(32) % 2, 3e38, -3e38)  # max - min overflows
    return x


INPUTS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "uniform": lambda rng, n: rng.uniform(-1, 1, n),
    "zeros": lambda rng, n: np.zeros(n),
    "large": lambda rng, n: rng.choice([-1, 1], n) * 10.0 ** rng.uniform(4, 30, n),
    "huge": lambda rng, n: rng.choice([-1, 1], n) * 10.0 ** rng.uniform(30, 38.5, n),
    "tiny": lambda rng, n: rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-45, -28, n),
    "small_ints": lambda rng, n: rng.integers(-20, 21, n),
    "ties": _ties,
    "single_nonzero": _single_nonzero,
    "constant": _constant,
    "signed_zeros": _signed_zeros,
    "per_block_scale": _per_block_scale,
    "specials": _specials,
}


def make_input(name: str, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + sorted(INPUTS).index(name))
    with np.errstate(over="ignore"):
        return np.asarray(INPUTS[name](rng, n)).astype(np.float32)


def assert_same_bits(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    a, b = np.asarray(ours, np.float32).view(np.uint32), np.asarray(ref, np.float32).view(np.uint32)
    assert a.shape == b.shape, what
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, (f"{what}: {bad.size} values differ, first at {bad[0]}: "
                           f"ours {a[bad[0]]:#010x} ggml {b[bad[0]]:#010x}")


def assert_same_bytes(ours: bytes, ref: bytes, t, what: str) -> None:
    assert len(ours) == len(ref), what
    if ours != ref:
        a, b = np.frombuffer(ours, np.uint8), np.frombuffer(ref, np.uint8)
        i = int(np.flatnonzero(a != b)[0])
        ts = TRAITS[t].type_size
        blk = i // ts
        raise AssertionError(f"{what}: first difference in block {blk} (byte {i % ts}):\n"
                             f"ours {a[blk * ts:(blk + 1) * ts].tolist()}\n"
                             f"ggml {b[blk * ts:(blk + 1) * ts].tolist()}")


# ---------------------------------------------------------------------------
# quantize / dequantize vs ggml

@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("t", ALL_TYPES, ids=str)
def test_quantize_matches_ggml(ggml_ref, t, name):
    x = make_input(name)
    ref = ggml_ref.quantize_chunk(t, x)
    assert_same_bytes(Q.quantize(t, x, use_numba=False), ref, t, f"numpy {t} {name}")
    assert_same_bytes(Q.quantize(t, x, use_numba=True), ref, t, f"numba {t} {name}")


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("t", [t for t in ALL_TYPES if t != T.Q8_1], ids=str)
def test_dequantize_matches_ggml(ggml_ref, t, name):
    raw = ggml_ref.quantize_chunk(t, make_input(name))
    ref = ggml_ref.dequantize(t, raw, N)
    assert_same_bits(Q.dequantize(t, raw, N, use_numba=False), ref, f"numpy {t} {name}")
    assert_same_bits(Q.dequantize(t, raw, N, use_numba=True), ref, f"numba {t} {name}")


@pytest.mark.parametrize("t", [t for t in ALL_TYPES if t != T.Q8_1], ids=str)
def test_dequantize_random_bytes_matches_ggml(ggml_ref, t):
    assert_random_bytes_dequantize_as_ggml(ggml_ref, t, 32 * 4096)


def assert_random_bytes_dequantize_as_ggml(driver, t, n):
    """Arbitrary block contents (every fp16 scale: NaN, inf, denormal; every q): the NumPy
    and Numba dequantizers give ggml's bits (driver: RealGgml or a subclass)."""
    raw = np.random.default_rng(int(t)).integers(0, 256, TRAITS[t].row_size(n),
                                                  dtype=np.uint8).tobytes()
    ref = driver.dequantize(t, raw, n)
    assert_same_bits(Q.dequantize(t, raw, n, use_numba=False), ref, f"numpy {t}")
    assert_same_bits(Q.dequantize(t, raw, n, use_numba=True), ref, f"numba {t}")


def test_q8_1_dequantize_is_q_times_d():
    """ggml has no to_float for Q8_1: ours is q * d, the Q8_0 rule."""
    x = make_input("normal")
    raw = np.frombuffer(Q.quantize(T.Q8_1, x), np.uint8).reshape(-1, 36)
    as_q8_0 = np.concatenate([raw[:, :2], raw[:, 4:]], axis=1).tobytes()
    assert as_q8_0 == Q.quantize(T.Q8_0, x)
    y = Q.dequantize(T.Q8_1, raw.tobytes(), N)
    assert_same_bits(y, Q.dequantize(T.Q8_0, as_q8_0, N), "q8_1")
    assert_same_bits(Q.dequantize(T.Q8_1, raw.tobytes(), N, use_numba=True), y, "q8_1 numba")


@pytest.mark.parametrize("t", ALL_TYPES, ids=str)
def test_long_input_several_rows(ggml_ref, t):
    """Inputs large enough to take the default (Numba) path, as ggml_quantize_chunk."""
    n = Q.NUMBA_MIN_N * 2
    x = make_input("per_block_scale", n, seed=7)
    raw = Q.quantize(t, x)
    assert_same_bytes(raw, ggml_ref.quantize_chunk(t, x), t, f"{t} long")
    if t != T.Q8_1:
        assert_same_bits(Q.dequantize(t, raw, n), ggml_ref.dequantize(t, raw, n), f"{t} long")


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("t", [T.Q8_0, T.Q8_1], ids=str)
def test_cpu_q8_quantizers_match_ggml_cpu(ggml_ref, t, name):
    """nb.quantize_row_q8_*_cpu == ggml-cpu's from_float (round half to even, 127/amax)."""
    from pyggml.quants import nb
    x = make_input(name)
    fn = nb.quantize_row_q8_0_cpu if t == T.Q8_0 else nb.quantize_row_q8_1_cpu
    dst = np.zeros(TRAITS[t].row_size(x.size), np.uint8)
    fn(x, dst, x.size)
    want = ggml_ref.from_float_cpu(t, x)
    assert_same_bytes(dst.tobytes(), want, t, f"cpu {t} {name}")
    assert_same_bytes(TRAITS[t].from_float_cpu(x).tobytes(), want, t, f"numpy cpu {t} {name}")


# ---------------------------------------------------------------------------
# F16 / BF16 conversions

def _float_bit_patterns(n=1 << 20, seed=3) -> np.ndarray:
    """Random fp32 bit patterns plus the edges of fp16/bf16 rounding and range."""
    u = np.random.default_rng(seed).integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                      0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0x7F7FFFFF,
                      0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001,   # 65504 .. inf
                      0x387FC000, 0x38800000, 0x33800000, 0x33000000, 0x33000001,
                      0x337FFFFF, 0x00000001, 0x007FFFFF, 0x3F808000, 0x3F818000,
                      0x3F800001, 0x3F807FFF, 0x7F7F8000, 0x7F7FFFFF], np.uint32)
    # fp16 halfway points: values between adjacent fp16s, and their neighbours
    h = np.arange(0, 0x7C00, 7, dtype=np.uint32)
    mids = (np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)[h]
            + np.arange(1, 0x7C01, dtype=np.uint16).view(np.float16).astype(np.float64)[h]) / 2
    mids = mids.astype(np.float32).view(np.uint32)
    return np.concatenate([u, edges, mids, mids + 1, mids - 1, mids | 0x80000000]).view(np.float32)


@pytest.mark.parametrize("t", FLOAT16_TYPES, ids=str)
def test_fp32_to_16_bits_match_ggml(ggml_ref, t):
    x = _float_bit_patterns()
    ref = np.frombuffer(ggml_ref.quantize_chunk(t, x), np.uint16)
    to16 = Q.fp32_to_fp16 if t == T.F16 else Q.fp32_to_bf16
    ours = to16(x)
    assert ours.dtype == np.uint16
    bad = np.flatnonzero(ours != ref)
    assert bad.size == 0, f"{bad.size} differ, first {x.view(np.uint32)[bad[0]]:#x}"
    from pyggml.quants import nb
    row = nb.quantize_row_f16 if t == T.F16 else nb.quantize_row_bf16
    dst = np.zeros(2 * x.size, np.uint8)
    row(x, dst, x.size)
    assert np.array_equal(dst.view(np.uint16), ref)


@pytest.mark.parametrize("t", FLOAT16_TYPES, ids=str)
def test_16_to_fp32_exhaustive_matches_ggml(ggml_ref, t):
    h = np.arange(1 << 16, dtype=np.uint16)
    ref = ggml_ref.dequantize(t, h.tobytes(), h.size)
    to32 = Q.fp16_to_fp32 if t == T.F16 else Q.bf16_to_fp32
    assert_same_bits(to32(h), ref, f"{t} -> f32")
    from pyggml.quants import nb
    row = nb.dequantize_row_f16 if t == T.F16 else nb.dequantize_row_bf16
    out = np.zeros(h.size, np.float32)
    row(h.view(np.uint8).copy(), out, h.size)
    assert_same_bits(out, ref, f"{t} -> f32 numba")


def test_numba_scalar_conversions():
    from pyggml.quants import nb
    x = _float_bit_patterns(n=4096)
    h16, hb = Q.fp32_to_fp16(x), Q.fp32_to_bf16(x)
    for i in range(0, x.size, 7):
        assert nb.f32_to_f16(x[i]) == h16[i]
        assert nb.f32_to_bf16(x[i]) == hb[i]
    h = np.arange(0, 1 << 16, 13, dtype=np.uint16)
    h = h[(h & 0x7FC0) != 0x7F80]  # bf16 signaling NaNs: boxing into a Python float quiets them
    f16, fb = Q.fp16_to_fp32(h), Q.bf16_to_fp32(h)
    for i in range(h.size):
        assert np.float32(nb.f16_to_f32(h[i])).view(np.uint32) == f16[i].view(np.uint32)
        assert np.float32(nb.bf16_to_f32(h[i])).view(np.uint32) == fb[i].view(np.uint32)


# ---------------------------------------------------------------------------
# Numba rows and dispatch vs the NumPy codecs (no ggml needed)

@pytest.mark.parametrize("name", ["normal", "ties", "specials", "signed_zeros", "tiny"])
@pytest.mark.parametrize("t", ALL_TYPES, ids=str)
def test_numba_rows_match_numpy(t, name):
    from pyggml.quants import nb
    x = make_input(name)
    raw = TRAITS[t].from_float(x)
    cpu = (TRAITS[t].from_float_cpu or TRAITS[t].from_float)(x)   # the dispatch is ggml-cpu's
    dst = np.zeros_like(raw)
    assert nb.quantize_row(int(t), x, dst, x.size) == 0
    assert dst.tobytes() == cpu.tobytes()
    out = np.zeros(x.size, np.float32)
    assert nb.dequantize_row(int(t), raw.copy(), out, x.size) == 0
    assert_same_bits(out, TRAITS[t].to_float(raw, x.size), f"{t} {name}")


def test_numba_dispatch_unsupported_type():
    from pyggml.quants import nb
    x = np.ones(32, np.float32)
    buf = np.zeros(256, np.uint8)
    for t in (T.I32, T.F64, 99):
        assert nb.quantize_row(int(t), x, buf, 32) == nb.ERR_UNSUPPORTED
        assert nb.dequantize_row(int(t), buf, x, 32) == nb.ERR_UNSUPPORTED
    assert nb.quantize_row(int(T.F32), x, buf, 32) == 0
    assert nb.dequantize_row(int(T.F32), buf, x, 32) == 0


# ---------------------------------------------------------------------------
# API, layout, errors

def test_every_type_has_codecs():
    for t, tr in TRAITS.items():
        assert tr.to_float is not None and tr.from_float is not None, t


@pytest.mark.parametrize("t", [T.F32, T.F64, T.I8, T.I16, T.I32, T.I64])
def test_plain_types_roundtrip(t):
    x = np.array([0, 1, -2, 100, -7.9, 7.9], np.float32)
    raw = Q.quantize(t, x)
    assert len(raw) == x.size * TRAITS[t].type_size
    y = Q.dequantize(t, raw, x.size)
    expect = x if t in (T.F32, T.F64) else np.trunc(x)
    assert y.dtype == np.float32 and np.array_equal(y, expect)


def test_q4_0_layout():
    """d = max / -8 with max the value of largest |x|: low nibbles first half, high second."""
    x = np.arange(32, dtype=np.float32) - 16  # max |x| = 16 at x = -16 -> d = 2
    raw = Q.quantize(T.Q4_0, x)
    assert np.frombuffer(raw[:2], np.float16)[0] == 2.0
    qs = np.frombuffer(raw[2:], np.uint8)
    q = np.concatenate([qs & 15, qs >> 4]).astype(int)
    assert np.array_equal(q, np.minimum(15, np.trunc(x / 2 + 8.5)).astype(int))


def test_sign_tie_takes_first():
    """|3| == |-3|: the first one is the scale source, so the sign of d follows it."""
    a = np.zeros(32, np.float32)
    a[2], a[5] = 3, -3
    d_first_pos = np.frombuffer(Q.quantize(T.Q4_0, a)[:2], np.float16)[0]
    d_first_neg = np.frombuffer(Q.quantize(T.Q4_0, -a)[:2], np.float16)[0]
    assert d_first_pos == np.float16(-3 / 8) and d_first_neg == np.float16(3 / 8)


def test_accepts_bytes_memoryview_and_arrays():
    x = make_input("normal", 64)
    raw = Q.quantize("q8_0", x.tolist())
    assert isinstance(raw, bytes)
    for data in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        assert_same_bits(Q.dequantize(T.Q8_0, data, 64), Q.dequantize(8, raw, 64), "forms")


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=str)
def test_quantize_length_not_multiple_of_block(t):
    with pytest.raises(ShapeError, match=f"{t}.*33"):
        Q.quantize(t, np.zeros(33, np.float32))


@pytest.mark.parametrize("t", BLOCK_TYPES + FLOAT16_TYPES, ids=str)
def test_dequantize_wrong_byte_count(t):
    raw = Q.quantize(t, np.zeros(64, np.float32))
    with pytest.raises(DataError, match=str(t)):
        Q.dequantize(t, raw[:-1], 64)
    with pytest.raises(DataError):
        Q.dequantize(t, raw + b"\0", 64)


@pytest.mark.parametrize("use_numba", [False, True])
def test_dequantize_into_out(use_numba):
    x = make_input("normal", 64)
    raw = Q.quantize(T.Q4_0, x)
    out = np.full(64, np.nan, np.float32)
    y = Q.dequantize(T.Q4_0, raw, 64, out=out, use_numba=use_numba)
    assert y is out
    assert_same_bits(out, Q.dequantize(T.Q4_0, raw, 64), "out=")
    with pytest.raises(DataError, match="out"):
        Q.dequantize(T.Q4_0, raw, 64, out=np.zeros(64, np.float64))


def test_dequantize_n_not_multiple_of_block():
    with pytest.raises(ShapeError):
        Q.dequantize(T.Q4_0, b"\0" * 18, 31)


def test_conversion_dtypes():
    x = np.array([1.0, -2.5, 65504.0, 1e6], np.float32)
    assert Q.fp32_to_fp16(x).dtype == np.uint16 and Q.fp32_to_bf16(x).dtype == np.uint16
    assert Q.fp16_to_fp32(Q.fp32_to_fp16(x)).tolist() == [1.0, -2.5, 65504.0, np.inf]
    assert Q.bf16_to_fp32(Q.fp32_to_bf16(x)).dtype == np.float32
