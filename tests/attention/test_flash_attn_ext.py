"""FLASH_ATTN_EXT: the reference against real ggml and exact float64 math, the misuse errors,
and the Numba kernels against the reference.

  (a) the reference equals real ggml (libggml-python) within test-backend-ops' threshold
      (NMSE 5e-4) on a sample of the grid (every K/V type x both precisions x every head
      size; the rest of the ~47k cases run with PYGGML_SLOW=1 or the CLI);
  (b) the reference equals a plain float64 softmax(q·k)·v within 1e-10 relative, with
      every feature (GQA, ne3, mask broadcast, ALiBi, softcap, sinks, DK != DV);
  (c) every misuse raises a GGMLError subclass naming the op and the tensors;
  (d) the Numba kernels equal the reference at 1, 2 and 3 threads (both precisions, every
      K/V type, the split-KV decode path, junk in masked cache slots).

Error bounds: the reference is exact math on the dequantized K/V for both precisions.
ggml's CPU sits ~6e-6 (F16 K/V: q rounded to F16, F16 V sums), ~1.5e-6 (quantized K/V: q
quantized to Q8_0) and ~1e-13 (F32 K/V) NMSE from it; pyggml's kernels ~1e-13 (PREC_F32,
F32 sums on dequantized rows) and ~2e-6 (PREC_DEFAULT with quantized K: q in 8-bit blocks,
integer dots). The threshold for all is ggml's 5e-4.
"""
from __future__ import annotations

import math
import os
import zlib

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.errors import GGMLError
from pyggml.errors import ParamError
from pyggml.errors import ShapeError
from pyggml.errors import TypeError_
from pyggml.ops import attention as A
from pyggml.testing import harness
from pyggml.testing.asserts import assert_ggml_error
from pyggml.types import FA_KV_TYPES
from pyggml.types import GGMLType as T

SLOW = os.environ.get("PYGGML_SLOW") == "1"
OP = gg.get_op("FLASH_ATTN_EXT")
ALL_CASES = OP.cases()
FAST = [c for c in ALL_CASES if "slow" not in c.tags]


def _run_reference(case, seed):
    from pyggml.backends.reference import ReferenceBackend
    ctx, out, gf = harness.build_graph(case)
    harness.alloc_guarded(gf)
    harness.fill_leafs(gf, case, seed)
    return out, gf, ReferenceBackend()


def vs_ggml(case, seed=0):
    from pyggml.testing import ggml_lib
    out, gf, ref = _run_reference(case, seed)
    with ggml_lib.Mirror([out]) as m:
        ref.graph_compute(gf)
        m.compute(1)
        got = m.value(out)
    max_err, exact = harness._threshold(case)
    return harness.compare_values(data.read(out), got, max_err, exact, case.op)


# --- (a) reference == real ggml -------------------------------------------------------------------

def test_fast_sample_covers_the_grid():
    seen = {(c.vars["type_K"], c.vars["prec"]) for c in FAST}
    assert seen >= {(t, p) for t in FA_KV_TYPES for p in ("f32", "def")}
    assert {c.vars["hsk"] for c in FAST} >= {64, 80, 128, 192, 256}
    for key, values in (("kv", {1, 7, 113, 512}), ("nb", {1, 3, 32}), ("mask", {0, 1}),
                        ("sinks", {0, 1}), ("max_bias", {0.0, 8.0}),
                        ("logit_softcap", {0.0, 10.0})):
        assert {c.vars[key] for c in FAST} >= values, key
    assert {tuple(c.vars["nr23"]) for c in FAST} >= {(1, 1), (4, 1), (1, 2), (4, 2)}
    assert any(c.vars["permute"] == [0, 2, 1, 3] for c in ALL_CASES)
    assert len(ALL_CASES) > 40000 and len(FAST) < 260


@pytest.mark.parametrize("case", FAST, ids=str)
def test_reference_matches_ggml(ggml, case):
    ok, err, msg = vs_ggml(case, seed=zlib.crc32(str(case).encode()) & 0xFFFF)
    assert ok, f"{case}: {msg}"


@pytest.mark.skipif(not SLOW, reason="the full grid: set PYGGML_SLOW=1 (or use the CLI)")
def test_reference_matches_ggml_full_grid(ggml):
    bad = []
    for i, case in enumerate(c for c in ALL_CASES if "slow" in c.tags):
        ok, err, msg = vs_ggml(case, seed=i)
        if not ok:
            bad.append(f"{case}: {msg}")
    assert not bad, "\n".join(bad[:20])


def test_case_strings_follow_test_backend_ops():
    strs = {str(c) for c in ALL_CASES}
    assert ("FLASH_ATTN_EXT(hsk=128,hsv=128,nh=4,nr23=[4,1],kv=512,nb=1,mask=1,sinks=0,"
            "max_bias=0.000000,logit_softcap=0.000000,prec=def,type_K=f16,type_V=f16,"
            "permute=[0,1,2,3],kv_view=1,v_is_view_of_k=0)") in strs
    assert ("FLASH_ATTN_EXT(hsk=576,hsv=512,nh=1,nr23=[4,1],kv=113,nb=3,mask=1,sinks=0,"
            "max_bias=0.000000,logit_softcap=0.000000,prec=f32,type_K=f16,type_V=f16,"
            "permute=[0,1,2,3],kv_view=1,v_is_view_of_k=1)") in strs


def _leaf(ctx, values, type=T.F32, name=None):
    arr = np.asarray(values, dtype=np.float32)
    t = gg.new_tensor(ctx, type, arr.ndim, list(arr.shape[::-1]))
    data.write(t, arr)
    if name:
        gg.set_name(t, name)
    return t


def _compute(out, backend=None):
    gf = gg.new_graph(None)
    gg.build_forward_expand(gf, out)
    (backend or gg.backend_reference_init()).graph_compute(gf)
    return data.read(out)


def test_f32_mask_and_padded_mask_rows_match_ggml(ggml, rng):
    """pyggml also takes F32 masks (ggml: F16 only; the mirror casts) and masks with more
    rows than queries (n_batch_pad >= n_batch, as llama.cpp pads them)."""
    from pyggml.testing import ggml_lib
    for mtype, pad in ((T.F32, 0), (T.F16, 5), (T.F32, 13)):
        ctx = gg.init(mem_size=32 << 20)
        q = _leaf(ctx, rng.uniform(-1, 1, (1, 4, 3, 64)), name="q")
        k = _leaf(ctx, rng.uniform(-1, 1, (1, 2, 40, 64)), T.F16, "k")
        v = _leaf(ctx, rng.uniform(-1, 1, (1, 2, 40, 64)), T.F16, "v")
        mv = rng.uniform(-1, 1, (1, 1, 3 + pad, 40))
        mv[0, 0, 1, 10:30] = -np.inf
        mv[0, 0, 2, :] = -np.inf                       # a fully masked row -> 0
        m = _leaf(ctx, mv, mtype, "m")
        out = gg.flash_attn_ext(ctx, q, k, v, m, 0.125, 0.0, 0.0)
        with ggml_lib.Mirror([out]) as mir:
            mir.compute(1)
            got = mir.value(out)
        ref = _compute(out)
        ok, err, msg = harness.compare_values(ref, got, 5e-4, False, "FA")
        assert ok, msg
        assert np.all(ref[:, 2] == 0) and np.all(got[:, 2] == 0)


# --- (b) the reference is exact float64 attention ---------------------------------------------

def _naive(q, k, v, mask, scale, max_bias, softcap, sinks):
    """softmax(scale·q·kᵀ (capped) + slope·mask)·v, one (plane, head, query) at a time."""
    ne3, H, N, DK = q.shape
    out = np.zeros((ne3, N, H, v.shape[3]))
    n_head_log2 = 2 ** int(math.floor(math.log2(H)))
    m0 = 2.0 ** (-max_bias / n_head_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_head_log2)
    for i3 in range(ne3):
        for h in range(H):
            slope = 1.0 if max_bias == 0 else (m0 ** (h + 1) if h < n_head_log2
                                               else m1 ** (2 * (h - n_head_log2) + 1))
            kh = k[i3 // (ne3 // k.shape[0]), h // (H // k.shape[1])]
            vh = v[i3 // (ne3 // v.shape[0]), h // (H // v.shape[1])]
            for n in range(N):
                s = kh @ q[i3, h, n] * scale
                if softcap:
                    s = softcap * np.tanh(s / softcap)
                if mask is not None:
                    mrow = mask[i3 % mask.shape[0], h % mask.shape[1], n].astype(np.float64)
                    s = np.where(np.isneginf(mrow), -np.inf, s + slope * mrow)
                logits = list(s) + ([sinks[h]] if sinks is not None else [])
                vals = list(vh) + ([np.zeros(vh.shape[1])] if sinks is not None else [])
                mx = max(logits)
                if mx == -np.inf:
                    continue
                w = np.exp(np.array(logits) - mx)
                out[i3, n, h] = (w[:, None] * np.array(vals)).sum(0) / w.sum()
    return out


@pytest.mark.parametrize("dk,dv,H,Hk,ne3,k3,N,n_kv,m2,m3,max_bias,softcap,sinks,mask", [
    (64, 64, 4, 4, 1, 1, 3, 17, 1, 1, 0.0, 0.0, False, True),
    (64, 32, 8, 2, 2, 2, 5, 40, 2, 1, 8.0, 0.0, True, True),     # GQA, DK != DV, ALiBi
    (32, 96, 6, 3, 4, 2, 2, 33, 3, 2, 0.0, 10.0, True, True),    # ne3 broadcast, softcap
    (128, 128, 4, 1, 1, 1, 1, 64, 1, 1, 0.0, 0.0, False, False),  # MQA, no mask
    (16, 16, 12, 12, 1, 1, 7, 9, 12, 1, 3.0, 5.0, True, True),   # non power-of-2 heads
])
def test_reference_is_exact_attention(rng, dk, dv, H, Hk, ne3, k3, N, n_kv, m2, m3, max_bias,
                                      softcap, sinks, mask):
    ctx = gg.init(mem_size=32 << 20)
    q = _leaf(ctx, rng.uniform(-1, 1, (ne3, H, N, dk)))
    k = _leaf(ctx, rng.uniform(-1, 1, (k3, Hk, n_kv, dk)))
    v = _leaf(ctx, rng.uniform(-1, 1, (k3, Hk, n_kv, dv)))
    mv = None
    m = None
    if mask:
        mv = rng.uniform(-1, 1, (m3, m2, N + 2, n_kv)).astype(np.float32)
        mv[..., ::3] = -np.inf
        mv[0, 0, 0, :] = -np.inf                        # fully masked row
        m = _leaf(ctx, mv)
    sv = rng.uniform(-3, 3, H).astype(np.float32) if sinks else None
    out = gg.flash_attn_ext(ctx, q, k, v, m, 0.3, max_bias, softcap)
    gg.flash_attn_ext_set_prec(out, gg.PREC_F32)
    if sinks:
        gg.flash_attn_ext_add_sinks(out, _leaf(ctx, sv))
    assert out.ne == [dv, H, N, ne3]
    # the reference's own float64 result (the backend then stores it as the node's F32)
    got = OP.reference(out, [data.read(t) if t is not None else None for t in out.src], OP.p(out))
    want = _naive(data.read(q), data.read(k), data.read(v), mv, float(np.float32(0.3)),
                  max_bias, softcap, sv)
    assert np.all(np.isfinite(got))
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-10, rel
    if mask and not sinks:
        assert np.all(got[0, 0, :, :] == 0)              # (i3=0, pos=0): every key masked


def test_masked_cache_slots_are_never_read(rng):
    """Keys masked for a row do not reach it even if their K/V slots hold NaN/inf (as ggml:
    a KV cache's unused slots are masked, not cleaned) - reference and kernels alike."""
    ctx = gg.init(mem_size=32 << 20)
    kv = rng.uniform(-1, 1, (1, 2, 50, 64))
    kvj = kv.copy()
    kvj[:, :, 40:] = np.nan
    kvj[:, 1, 35, 3] = np.inf
    mv = rng.uniform(-1, 1, (1, 1, 4, 50))
    mv[..., 40:] = -np.inf
    mv[..., 35] = -np.inf
    q = _leaf(ctx, rng.uniform(-1, 1, (1, 4, 4, 64)))
    m = _leaf(ctx, mv, T.F16)
    outs = []
    for vals in (kv, kvj):
        k = _leaf(ctx, vals, T.F16)
        v = _leaf(ctx, vals, T.F16)
        outs.append(gg.flash_attn_ext(ctx, q, k, v, m, 0.125, 0.0, 0.0))
    want = _compute(outs[0])
    assert np.array_equal(_compute(outs[1]), want)
    for n in (1, 2):
        be = gg.backend_numba_init(n)
        got = _compute(outs[1], be)
        assert np.all(np.isfinite(got))
        assert harness.nmse(want, got) < 1e-10
        be.free()


@pytest.mark.parametrize("kv_type", [T.F16, T.Q4_0, T.F32])
def test_junk_in_slots_some_rows_mask(rng, kv_type):
    """A key masked for some rows of a tile but visible to others (a causal prompt): the
    rows that mask it never read its V, even when it holds NaN - the fused 4-row SIMD
    products must fall back for them (rows that see it get NaN, as in ggml)."""
    ctx = gg.init(mem_size=32 << 20)
    n_kv, d = 64, 64
    kv = rng.uniform(-1, 1, (1, 1, n_kv, d))
    mv = np.zeros((1, 1, 8, n_kv))
    mv[0, 0, :4, 20] = -np.inf                      # rows 0..3 mask key 20, rows 4..7 see it
    q = _leaf(ctx, rng.uniform(-1, 1, (1, 1, 8, d)))
    m = _leaf(ctx, mv, T.F16)
    k = _leaf(ctx, kv, kv_type)
    v_clean = _leaf(ctx, kv, kv_type)
    vals = data.read(v_clean)
    vals[0, 0, 20, :] = np.nan
    v_junk = gg.new_tensor(ctx, T.F32 if kv_type == T.F32 else T.F16, 4, [d, n_kv, 1, 1])
    data.write(v_junk, vals)
    want = _compute(gg.flash_attn_ext(ctx, q, k, v_clean, m, 0.125, 0.0, 0.0))
    out = gg.flash_attn_ext(ctx, q, k, v_junk, m, 0.125, 0.0, 0.0)
    ref = _compute(out)
    for n in (1, 2):
        be = gg.backend_numba_init(n)
        got = _compute(out, be)
        be.free()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        assert np.all(np.isnan(got[0, 4:]))                   # rows that see the NaN
        assert np.all(np.isfinite(got[0, :4]))
        # quantized K: integer dots on q in 8-bit blocks (PREC_DEFAULT), ~1e-6 from exact
        assert harness.nmse(want[0, :4], got[0, :4]) < (1e-5 if kv_type == T.Q4_0 else 1e-10)


def test_op_params_layout_and_prec():
    ctx = gg.init(mem_size=8 << 20)
    q = gg.new_tensor_4d(ctx, T.F32, 64, 3, 4, 1)
    k = gg.new_tensor_4d(ctx, T.F16, 64, 10, 2, 1)
    m = gg.new_tensor_4d(ctx, T.F16, 10, 3, 1, 1)
    out = gg.flash_attn_ext(ctx, q, k, k, m, 0.125, 8.0, 30.0)
    w = out.op_params
    from pyggml.ops.registry import f32_bits
    assert list(w[:4]) == [f32_bits(0.125), f32_bits(8.0), f32_bits(30.0), 0]
    assert gg.flash_attn_ext_get_prec(out) == gg.PREC_DEFAULT == 0
    gg.flash_attn_ext_set_prec(out, gg.PREC_F32)
    assert out.op_params[3] == 10 and gg.flash_attn_ext_get_prec(out) == gg.PREC_F32
    assert out.type == T.F32 and out.ne == [64, 4, 3, 1]
    assert out.src[:4] == [q, k, k, m] and out.src[4] is None
    s = gg.new_tensor_1d(ctx, T.F32, 4)
    gg.flash_attn_ext_add_sinks(out, s)
    assert out.src[4] is s
    gg.flash_attn_ext_add_sinks(out, None)
    assert out.src[4] is None


# --- (c) misuse -----------------------------------------------------------------------------------

def _fa_inputs(ctx, dk=64, dv=64, N=3, H=4, ne3=1, n_kv=10, Hk=2, k3=1, tk=T.F16, tv=T.F16):
    q = gg.new_tensor_4d(ctx, T.F32, dk, N, H, ne3)
    gg.set_name(q, "q")
    k = gg.new_tensor_4d(ctx, tk, dk, n_kv, Hk, k3)
    gg.set_name(k, "k")
    v = gg.new_tensor_4d(ctx, tv, dv, n_kv, Hk, k3)
    gg.set_name(v, "v")
    return q, k, v


_raises = assert_ggml_error     # (cls, fn, *words) -> message


def test_errors_are_ggml_errors_naming_op_and_tensors():
    ctx = gg.init(mem_size=8 << 20)
    q, k, v = _fa_inputs(ctx)
    fa = gg.flash_attn_ext
    # q type, K/V types
    q16 = gg.new_tensor_4d(ctx, T.F16, 64, 3, 4, 1)
    gg.set_name(q16, "q16")
    _raises(TypeError_, lambda: fa(ctx, q16, k, v, None, 1.0), "FLASH_ATTN_EXT", "q16", "f16")
    ki = gg.new_tensor_4d(ctx, T.I32, 64, 10, 2, 1)
    gg.set_name(ki, "kint")
    _raises(TypeError_, lambda: fa(ctx, q, ki, v, None, 1.0), "FLASH_ATTN_EXT", "kint", "i32")
    _raises(TypeError_, lambda: fa(ctx, q, k, ki, None, 1.0), "kint")
    # head size, n_kv, GQA, ne3
    q2, k2, v2 = _fa_inputs(ctx, dk=32)
    _raises(ShapeError, lambda: fa(ctx, q, k2, v, None, 1.0), "FLASH_ATTN_EXT", "DK", "'q'", "'k'")
    _, _, v3 = _fa_inputs(ctx, n_kv=11)
    _raises(ShapeError, lambda: fa(ctx, q, k, v3, None, 1.0), "rows", "'v'")
    _, k3_, v3_ = _fa_inputs(ctx, Hk=3)
    _raises(ShapeError, lambda: fa(ctx, q, k3_, v3_, None, 1.0), "GQA", "ne=[64, 10, 3]")
    q4, _, _ = _fa_inputs(ctx, ne3=3)
    _, k4, v4 = _fa_inputs(ctx, k3=2)
    _raises(ShapeError, lambda: fa(ctx, q4, k4, v4, None, 1.0), "ne[3]")
    # rows must be packed (a transposed K)
    kt = gg.transpose(ctx, gg.new_tensor_2d(ctx, T.F16, 10, 64))
    gg.set_name(kt, "kT")
    _raises(ShapeError, lambda: fa(ctx, q, kt, kt, None, 1.0), "packed rows", "kT")
    # mask: type, columns, rows, broadcast
    for ne, words in (([11, 3, 1, 1], ["columns", "'m'"]), ([10, 2, 1, 1], ["rows", "n_batch=3"]),
                      ([10, 3, 3, 1], ["ne[2]=3"]), ([10, 3, 1, 2], ["ne[3]=2"])):
        m = gg.new_tensor_4d(ctx, T.F16, *ne)
        gg.set_name(m, "m")
        _raises(ShapeError, lambda: fa(ctx, q, k, v, m, 1.0), "FLASH_ATTN_EXT", *words)
    mb = gg.new_tensor_4d(ctx, T.BF16, 10, 3, 1, 1)
    gg.set_name(mb, "mbf")
    _raises(TypeError_, lambda: fa(ctx, q, k, v, mb, 1.0), "mbf", "bf16")
    # params: ALiBi needs a mask; finite values; prec values
    _raises(ParamError, lambda: fa(ctx, q, k, v, None, 1.0, 8.0), "max_bias", "mask")
    _raises(ParamError, lambda: fa(ctx, q, k, v, None, float("nan")), "scale")
    _raises(ParamError, lambda: fa(ctx, q, k, v, None, 1.0, -1.0), "max_bias")
    out = fa(ctx, q, k, v, None, 1.0)
    _raises(ParamError, lambda: gg.flash_attn_ext_set_prec(out, 3), "prec", "3")
    # sinks
    s = gg.new_tensor_1d(ctx, T.F32, 3)
    gg.set_name(s, "sinks3")
    _raises(ShapeError, lambda: gg.flash_attn_ext_add_sinks(out, s), "sinks3", "4 heads")
    s16 = gg.new_tensor_1d(ctx, T.F16, 4)
    _raises(TypeError_, lambda: gg.flash_attn_ext_add_sinks(out, s16), "sinks", "f16")
    # a strided sinks row (found by pyggml fuzz: ggml's CPU reads sinks[h] as a plain array)
    s44 = gg.new_tensor_2d(ctx, T.F32, 4, 4)
    gg.set_name(s44, "s44")
    _raises(ShapeError, lambda: gg.flash_attn_ext_add_sinks(out, gg.transpose(ctx, s44)),
            "s44", "contiguously", "nb[0] = 4, got 16")
    gg.flash_attn_ext_add_sinks(out, gg.new_tensor_1d(ctx, T.F32, 4))
    _raises(ShapeError, lambda: gg.flash_attn_ext_add_sinks(out, gg.new_tensor_1d(ctx, T.F32, 4)),
            "already has sinks")
    # helpers on a node of another op
    other = gg.new_tensor_1d(ctx, T.F32, 4)
    gg.set_name(other, "notfa")
    for fn in (lambda: gg.flash_attn_ext_set_prec(other, 10),
               lambda: gg.flash_attn_ext_get_prec(other),
               lambda: gg.flash_attn_ext_add_sinks(other, s)):
        _raises(GGMLError, fn, "notfa", "FLASH_ATTN_EXT")
    _raises(GGMLError, lambda: fa(ctx, None, k, v, None, 1.0), "missing", "q")
    _raises(GGMLError, lambda: fa(None, q, k, v, None, 1.0), "ctx")


# --- (d) Numba kernels == reference ------------------------------------------------------------

def _kernel_cases():
    # the fast sample, plus decode shapes that take the split-KV path (fewer tiles than
    # threads: MQA / few KV heads, long KV) and a mid-size prompt with a causal-like mask
    extra = [A._fa_case(128, 128, 1, (4, 1), 1100, 1, True, True, 0.0, 0.0, p, t, t)
             for p in (A.PREC_F32, A.PREC_DEFAULT) for t in (T.F16, T.Q4_0, T.Q8_0)]
    extra += [A._fa_case(64, 64, 3, (2, 1), 1300, 1, False, False, 0.0, 10.0, A.PREC_DEFAULT,
                         T.Q5_1, T.Q4_1),
              A._fa_case(80, 80, 2, (1, 2), 1030, 2, True, True, 8.0, 0.0, A.PREC_F32,
                         T.BF16, T.BF16)]
    # tiles whose last group has 3 rows (GQA 3 and 7 decode) run the 4-row products with a
    # padding row: integer Q4_0 dots, F16 and Q8_0 K read in place, Q4_0/F16 V
    extra += [A._fa_case(64, 64, 2, (3, 1), 300, 1, True, False, 0.0, 0.0, A.PREC_DEFAULT, t, t)
              for t in (T.Q4_0, T.F16)]
    extra += [A._fa_case(128, 128, 1, (7, 1), 200, 1, True, False, 0.0, 0.0, A.PREC_F32,
                         T.Q8_0, T.Q4_0)]
    return FAST + extra


KCASES = _kernel_cases()


@pytest.fixture(scope="module", params=[1, 2, 3])
def numba_backend(request):
    be = gg.backend_numba_init(request.param)
    yield be
    be.free()


def test_kernels_match_reference(numba_backend):
    from pyggml.backends.reference import ReferenceBackend
    ref = ReferenceBackend()
    bad = []
    for i, case in enumerate(KCASES):
        r = harness.run_test(case, numba_backend, ref, seed=i)
        if r.status != "OK":
            bad.append(f"{case}: {r.status} {r.message}")
    assert not bad, "\n".join(bad)


def test_split_kv_decode_path_is_taken():
    from pyggml.backends.numba_cpu.kernels import attention as K
    # decode (fewer tiles than threads can share) over a long KV splits the keys' fold
    # units (FOLD keys) into 512-key chunks; split or not, the results are bitwise equal
    # (test_kernel_results_do_not_depend_on_thread_count: 1 thread does not split there)
    def units(n_kv):
        return -(-n_kv // K.FOLD)
    assert K.n_split_chunks(1, units(1100), 1) == 3 and K.n_split_chunks(8, units(16384), 4) == 32
    assert K.n_split_chunks(8, units(16384), 2) == 1   # 4 tiles a thread: enough
    assert K.n_split_chunks(8, units(16384), 0) == 32  # the work buffer allows any count
    assert K.n_split_chunks(1, units(960), 2) == 1     # short KV: one work unit per tile
    assert K.n_split_chunks(64, units(16384), 8) == 1  # enough tiles: no split
    # the fast case set keeps decode cases over long KV, so the split path runs in CI
    split = [c for c in KCASES if c.vars["kv"] >= 1024 and c.vars["nb"] <= 2]
    assert len(split) >= 8


@pytest.mark.parametrize("n_kv_heads", [2, 4])
def test_kernel_results_do_not_depend_on_thread_count(n_kv_heads):
    # 2 tiles split their keys at every thread count; 4 tiles do not at 1 thread (enough
    # tiles for it) and do at 2 and 3: split and unsplit results are bitwise equal too
    from pyggml.backends.numba_cpu.kernels import attention as K
    units = -(-1300 // K.FOLD)
    splits = [K.n_split_chunks(n_kv_heads, units, n) > 1 for n in (1, 2, 3)]
    assert splits == ([True] * 3 if n_kv_heads == 2 else [False, True, True])
    outs = []
    case = A._fa_case(128, 128, n_kv_heads, (4, 1), 1300, 1, True, False, 0.0, 0.0,
                      A.PREC_DEFAULT, T.F16, T.Q4_0)
    for n in (1, 2, 3):
        ctx, out, gf = harness.build_graph(case)
        harness.alloc_guarded(gf)
        harness.fill_leafs(gf, case, 5)
        be = gg.backend_numba_init(n)
        be.graph_compute(gf)
        be.graph_compute(gf)                  # a recompute (counters carried over) too
        outs.append(data.read(out))
        be.free()
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_integer_dot_paths_agree(rng):
    """The AVX2 integer dots (ggml's pmaddubsw sequence, an LLVM intrinsic) and the portable
    loop used on CPUs without AVX2 give the same sums."""
    import numba

    from pyggml.backends.numba_cpu.kernels import fa_dots as K
    if not K.HAVE_AVX2:
        pytest.skip("no AVX2: only the portable path exists here")

    @numba.njit
    def both(k, q, kd, qd, kc, qs, nb):
        a = K._dot_q8_1x4_avx2(k.ctypes.data, q.ctypes.data, kd.ctypes.data, qd.ctypes.data, nb)
        b = K._dot_q8_1x4_portable(k.ctypes.data, q.ctypes.data, kd.ctypes.data,
                                   qd.ctypes.data, nb)
        c = K._dot_u8_1x4_avx2(k.ctypes.data, q.ctypes.data, kd.ctypes.data, qd.ctypes.data,
                               kc.ctypes.data, qs.ctypes.data, nb)
        d = K._dot_u8_1x4_portable(k.ctypes.data, q.ctypes.data, kd.ctypes.data,
                                   qd.ctypes.data, kc.ctypes.data, qs.ctypes.data, nb)
        return a, b, c, d

    def want(k, q, kd, qd, nb):
        return [sum(float(kd[u * nb + i]) * float(qd[i]) *
                    int(np.dot(k[(u * nb + i) * 32:(u * nb + i + 1) * 32].astype(np.int64),
                               q[i * 32:(i + 1) * 32].astype(np.int64))) for i in range(nb))
                for u in range(4)]

    for nb in (1, 4, 18):
        for lo, hi in ((-128, 128), (0, 32)):        # Q8_0 K; 4/5-bit codes (the u8 path)
            k = rng.integers(lo, hi, 4 * 32 * nb).astype(np.int8)
            q = rng.integers(-127, 128, 32 * nb).astype(np.int8)
            kd = rng.uniform(0.01, 1, 4 * nb).astype(np.float32)
            qd = rng.uniform(0.01, 1, nb).astype(np.float32)
            kc = rng.uniform(-1, 1, 4 * nb).astype(np.float32)
            qs = rng.uniform(-1, 1, nb).astype(np.float32)
            a, b, c, d = both(k, q, kd, qd, kc, qs, nb)
            w = want(k, q, kd, qd, nb)
            assert np.allclose(a, w, rtol=1e-5) and np.allclose(b, w, rtol=1e-5)
            if lo == 0:
                # codes against q, plus the offset/min part sum kc·qs
                w2 = [w[u] + sum(float(kc[u * nb + i]) * float(qs[i]) for i in range(nb))
                      for u in range(4)]
                assert np.allclose(c, w2, rtol=1e-4, atol=1e-4)
                assert np.allclose(d, w2, rtol=1e-4, atol=1e-4)
