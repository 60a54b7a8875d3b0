"""The ctypes driver of real ggml (pyggml.testing.ggml_lib): header parsing, struct layout,
quantization helpers, the graph mirror and process isolation."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.errors import GGMLError
from pyggml.errors import UnsupportedError
from pyggml.ops.registry import OpDef
from pyggml.ops.registry import Out
from pyggml.testing import ggml_lib as L

if not L.available():
    pytest.skip("real ggml (libggml-python) is not available", allow_module_level=True)

F32, F16, Q4_0, Q8_0, I32 = gg.TYPE_F32, gg.TYPE_F16, gg.TYPE_Q4_0, gg.TYPE_Q8_0, gg.TYPE_I32


# --- header parsing ----------------------------------------------------------------------------

HEADER = """
    typedef struct ggml_backend * ggml_backend_t;
    typedef uint16_t ggml_fp16_t;
    typedef struct { uint16_t bits; } ggml_bf16_t;
    typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
    // a comment with GGML_API void ggml_not_a_function(void);
    GGML_API struct ggml_tensor * ggml_rope_like(
            struct ggml_context * ctx,
            struct ggml_tensor  * a,
            int                   n_dims,
            float                 freq_base,   /* trailing comment */
            enum ggml_type        type,
            int64_t               ne0,
            size_t                offset,
            bool                  flag);
    GGML_API const char * ggml_type_name_like(enum ggml_type type);
    GGML_API void        ggml_row(const float *, ggml_fp16_t *, int64_t);
    GGML_API ggml_backend_t ggml_backend_like(void);
    GGML_API double ggml_d(uint32_t x, const int64_t ne[4], ggml_log_callback cb);
    GGML_API void ggml_set_name_like(struct ggml_tensor * t, const char * name);
    GGML_DEPRECATED(GGML_API struct ggml_tensor * ggml_old(
            struct ggml_context * ctx, struct ggml_tensor * a),
        "use ggml_new instead");
    GGML_API struct ggml_tensor * ggml_map_custom(struct ggml_tensor * a, void (*fn)(int), int n);
    GGML_API struct ggml_tensor * ggml_init_like(struct ggml_init_params params);
    GGML_API ggml_bf16_t ggml_to_bf16(float x);
    GGML_API void ggml_log(const char * fmt, ...);
    GGML_BACKEND_API void ggml_cpu_like(void);
"""


def test_parse_prototypes_maps_c_types():
    p = L.parse_prototypes(HEADER)
    ret, args = p["ggml_rope_like"]
    assert ret is ctypes.c_void_p
    assert [a.__name__ for a in args] == ["_VoidP", "_VoidP", "c_int", "c_float", "c_int",
                                          "c_long", "c_ulong", "c_bool"]
    assert p["ggml_type_name_like"] == (ctypes.c_char_p, [ctypes.c_int32])
    ret, args = p["ggml_row"]
    assert ret is None and args[2] is ctypes.c_int64 and len(args) == 3
    assert p["ggml_backend_like"] == (ctypes.c_void_p, [])
    ret, args = p["ggml_d"]
    assert ret is ctypes.c_double and args[0] is ctypes.c_uint32
    assert args[1].__name__ == "_VoidP" and args[2].__name__ == "_VoidP"   # array, callback typedef
    assert p["ggml_set_name_like"][1][1].__name__ == "_CharP"
    assert "ggml_old" in p and len(p["ggml_old"][1]) == 2                    # deprecated wrapper
    assert "ggml_cpu_like" in p
    for skipped in ("ggml_map_custom", "ggml_init_like", "ggml_to_bf16", "ggml_log",
                    "ggml_not_a_function"):
        assert skipped not in p, skipped


def test_library_declares_the_api(ggml):
    for name in ("ggml_mul_mat", "ggml_rope_ext", "ggml_soft_max_ext", "ggml_flash_attn_ext",
                 "ggml_view_4d", "ggml_permute", "ggml_graph_compute_with_ctx",
                 "ggml_backend_cpu_init", "ggml_gallocr_new", "ggml_new_graph_custom",
                 "ggml_quantize_chunk", "ggml_init", "ggml_graph_plan"):
        assert hasattr(ggml, name), name
    assert ggml.ggml_rope_ext.argtypes[7] is ctypes.c_float        # freq_base passed as float
    assert ggml.ggml_type_name(2) == b"q4_0"
    assert ggml.ggml_op_name(0) == b"NONE"
    assert ggml.ggml_blck_size(Q4_0) == 32 and ggml.ggml_type_size(Q4_0) == 18
    assert ggml.ggml_row_size(Q8_0, 64) == 68
    assert L.available()
    assert L.lib() is ggml


def test_tensor_struct_layout(ggml):
    offsets = {f: getattr(L.GGMLTensor, f).offset for f, _ in L.GGMLTensor._fields_}
    assert offsets == dict(type=0, buffer=8, ne=16, nb=48, op=80, op_params=84, flags=148,
                           src=152, view_src=232, view_offs=240, data=248, name=256,
                           extra=320, padding=328)
    assert ctypes.sizeof(L.GGMLTensor) + 32 == ggml.ggml_tensor_overhead()
    with L.context(1 << 20) as ctx:
        t = L.new_tensor(ctx, F16, [6, 5], name="w")
        ne, nb = L.ne_nb(t)
        assert ne == [6, 5, 1, 1] and nb == [2, 12, 60, 60]
        assert L.get_name(t) == "w" and ggml.ggml_get_name(t) == b"w"
        assert L.type_of(t) == F16 and ggml.ggml_n_dims(t) == 2
        assert L.data_ptr(t) == ggml.ggml_get_data(t) and ggml.ggml_nbytes(t) == 60
        v = ggml.ggml_view_2d(ctx, t, 3, 2, nb[1], 2 * nb[1] + 4)
        assert L.view_offs(v) == 28 and L.data_ptr(v) == L.data_ptr(t) + 28
        assert L.tensor(v).view_src == t and L.tensor(v).src[0] == t
        assert L.op_params(v)[:2].view(np.int64)[0] == 28      # VIEW keeps its offset (size_t)
        assert L.get_name(v) == "w (view)"
        p = ggml.ggml_permute(ctx, t, 1, 0, 2, 3)
        assert list(L.op_params(p)[:4]) == [1, 0, 2, 3]
        assert ggml.ggml_op_name(L.tensor(p).op) == b"PERMUTE"
        ggml.ggml_set_name(t, "x" * 100)          # ggml keeps 63 characters
        assert L.get_name(t) == "x" * 63


def test_set_bytes_and_read_strided(ggml):
    with L.context(1 << 20) as ctx:
        t = L.new_tensor(ctx, F32, [4, 3])
        vals = np.arange(12, dtype=np.float32).reshape(3, 4)
        L.set_bytes(t, vals.tobytes())
        np.testing.assert_array_equal(L.read(t)[0, 0], vals)
        tt = ggml.ggml_transpose(ctx, t)
        np.testing.assert_array_equal(L.read(tt)[0, 0], vals.T)
        assert L.raw_bytes(tt) == np.ascontiguousarray(vals.T).tobytes()
        i = L.new_tensor(ctx, I32, [3])
        L.set_bytes(i, np.array([-1, 2, 7], np.int32).tobytes())
        assert L.read(i).dtype == np.int64 and list(L.read(i).ravel()) == [-1, 2, 7]
        with pytest.raises(gg.DataError):
            L.set_bytes(i, bytes(16))


# --- quantization and conversions --------------------------------------------------------------

def test_quantize_chunk_q4_0_block_size(ggml, rng):
    x = rng.uniform(-1, 1, 256).astype(np.float32)
    raw = L.quantize_chunk(Q4_0, x)
    assert len(raw) == 18 * 256 // 32
    rows = L.quantize_chunk(Q4_0, x.reshape(4, 64))
    assert rows == raw                      # rows are independent blocks
    back = L.dequantize(Q4_0, raw, 256)
    assert back.dtype == np.float32 and np.abs(back - x).max() < 0.15
    with pytest.raises(gg.ShapeError):
        L.quantize_chunk(Q4_0, x[:40])
    with pytest.raises(gg.DataError):
        L.dequantize(Q4_0, raw[:10], 256)


def test_quantize_chunk_q8_0_and_f16(ggml, rng):
    x = rng.uniform(-1, 1, (3, 64)).astype(np.float32)
    raw = L.quantize_chunk(Q8_0, x)
    assert len(raw) == 3 * 2 * 34
    assert np.abs(L.dequantize(Q8_0, raw, x.size) - x.ravel()).max() < 1 / 127 + 1e-6
    h = L.quantize_chunk(F16, x)
    assert h == x.astype(np.float16).tobytes()
    np.testing.assert_array_equal(L.dequantize(F16, h, x.size), x.astype(np.float16).astype(np.float32).ravel())


def test_quantize_chunk_vs_pyggml_quants(ggml, rng):
    """Cross-check with pyggml's own codecs (named *quants* so it runs with that suite)."""
    quants = pytest.importorskip("pyggml.quants")
    x = rng.uniform(-1, 1, 512).astype(np.float32)
    for t in (Q4_0, Q8_0, gg.TYPE_Q4_1, gg.TYPE_Q5_0, gg.TYPE_Q5_1):
        assert bytes(quants.quantize(t, x)) == L.quantize_chunk(t, x), t.tname


def test_half_conversions_round_to_nearest_even(ggml, rng):
    x = np.concatenate([rng.normal(0, 100, 1000), [0.0, -0.0, 65504.0, 1e-8, 70000.0,
                                                   np.inf, -np.inf]]).astype(np.float32)
    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16)
    h = L.fp32_to_fp16(x)
    assert h.dtype == np.uint16 and h.shape == x.shape
    np.testing.assert_array_equal(h, x16.view(np.uint16))
    np.testing.assert_array_equal(L.fp16_to_fp32(h), x16.astype(np.float32))
    np.testing.assert_array_equal(L.fp16_to_fp32(x16), L.fp16_to_fp32(h))
    b = L.fp32_to_bf16(x)
    u = x.view(np.uint32).astype(np.uint64)
    rne = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)     # finite values
    np.testing.assert_array_equal(b[np.isfinite(x)], rne[np.isfinite(x)])
    np.testing.assert_array_equal(L.bf16_to_fp32(b), (b.astype(np.uint32) << 16).view(np.float32))


# --- the mirror --------------------------------------------------------------------------------

def _reference(*outs):
    gf = gg.new_graph(outs[0].ctx)
    for o in outs:
        gg.build_forward_expand(gf, o)
    gg.backend_graph_compute(gg.backend_reference_init(), gf)
    return gf


def test_mirror_cont_of_permuted_matches_reference(ggml, rng):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, rng.uniform(-1, 1, (3, 4, 5, 6)).astype(np.float32), name="a")
    c = gg.cont(ctx, gg.permute(ctx, a, 2, 0, 3, 1))
    got = L.compute_graph([c])                     # computed before pyggml: leafs as given
    gf = _reference(c)
    assert [n.op_name for n in gf.nodes] == ["PERMUTE", "CONT"]
    for t in gf.nodes + gf.leafs:
        np.testing.assert_array_equal(got[id(t)], data.read(t))
    raw = L.compute_graph([c], raw=True)
    assert raw[id(c)] == L.pyggml_raw(c)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_mirror_dup_and_cpy_f32_to_f16(ggml, rng, n_threads):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, rng.normal(0, 3, (2, 5, 33)).astype(np.float32), name="a")
    d = gg.dup(ctx, gg.transpose(ctx, a))
    b = gg.set_name(gg.new_tensor_3d(ctx, F16, 33, 5, 2), "b")
    y = gg.cpy(ctx, a, b)
    with L.Mirror([d, y]) as m:
        m.compute(n_threads)
        assert L.get_name(m.ptr(y)) == y.name == "b (copy of a)"
        _reference(d, y)
        np.testing.assert_array_equal(m.value(d), data.read(d))
        assert m.raw(y) == L.pyggml_raw(y) == L.pyggml_raw(b)     # bit-exact f16 rounding
        np.testing.assert_array_equal(m.value(b), data.read(b))   # the written source


def test_mirror_quantizing_cpy_and_leaf_views(ggml, rng):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, rng.uniform(-1, 1, (4, 64)).astype(np.float32), name="a")
    # a leaf that is itself a view (no op): the mirror rebuilds it on its copied root
    v = ctx.new_tensor_impl(F32, [64, 2], view_src=a, view_offs=a.nb[1])
    gg.set_name(v, "v")
    q = gg.set_name(gg.new_tensor_2d(ctx, Q8_0, 64, 2), "q")
    y = gg.cpy(ctx, v, q)
    r = gg.cont(ctx, gg.view_1d(ctx, a, 64, 3 * a.nb[1]))
    got = L.compute_graph([y, r])
    np.testing.assert_array_equal(got[id(v)][0, 0], data.read(a)[0, 0, 1:3])
    np.testing.assert_array_equal(got[id(r)].ravel(), data.read(a)[0, 0, 3])
    raw_q = L.quantize_chunk(Q8_0, data.read(a)[0, 0, 1:3].astype(np.float32))
    assert L.compute_graph([y], raw=True)[id(q)] == raw_q


def test_mirror_accepts_a_cgraph(ggml, rng):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, rng.uniform(-1, 1, (5, 7)).astype(np.float32), name="a")
    c = gg.cont(ctx, gg.transpose(ctx, a))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, c)
    got = L.compute_graph(gf)
    np.testing.assert_array_equal(got[id(c)][0, 0], data.read(a)[0, 0].T)


def test_mirror_rejects_ops_without_recipe_and_nonconforming_nodes(ggml):
    ctx = gg.init(mem_size=1 << 20)
    a = gg.from_numpy(ctx, np.ones((2, 3), np.float32), name="a")
    norecipe = OpDef("TEST_NO_RECIPE", lambda s, p: Out(s[0].type, s[0].ne))
    with pytest.raises(UnsupportedError, match="TEST_NO_RECIPE"):
        L.compute_graph([norecipe.build(ctx, [a])])
    wrong = OpDef("TEST_WRONG_SHAPE", lambda s, p: Out(s[0].type, [6, 1, 1, 1]),
                  ggml=lambda g, c, s, p, n: g.ggml_dup(c, s[0]))
    with pytest.raises(GGMLError, match=r"conformance.*ne \[3, 2, 1, 1\]"):
        L.compute_graph([wrong.build(ctx, [a])])
    wrong_type = OpDef("TEST_WRONG_TYPE", lambda s, p: Out(F16, s[0].ne),
                       ggml=lambda g, c, s, p, n: g.ggml_dup(c, s[0]))
    with pytest.raises(GGMLError, match="type f32"):
        L.compute_graph([wrong_type.build(ctx, [a])])


def test_mirror_zero_fills_unallocated_leafs(ggml):
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_2d(ctx, F32, 4, 2)
    got = L.compute_graph([gg.cont(ctx, gg.transpose(ctx, a))])
    assert not got[id(a)].any()


# --- isolation ---------------------------------------------------------------------------------

def _double(x):
    return 2 * x


def _raise():
    raise KeyError("inside the child")


def _ggml_assert():
    with L.context(1 << 16) as ctx:
        t = L.new_tensor(ctx, F32, [4, 3])
        L.lib().ggml_permute(ctx, t, 0, 0, 1, 2)     # GGML_ASSERT(axis0 != axis1): abort


def test_run_isolated(ggml):
    assert L.run_isolated(_double, 21) == 42
    zeros = np.zeros(32)
    assert L.run_isolated(lambda: L.quantize_chunk(Q4_0, zeros)) == L.quantize_chunk(Q4_0, zeros)
    with pytest.raises(KeyError, match="inside the child"):
        L.run_isolated(_raise)
    with pytest.raises(GGMLError, match=r"signal 6.*GGML_ASSERT\(axis0 != axis1\)"):
        L.run_isolated(_ggml_assert)
