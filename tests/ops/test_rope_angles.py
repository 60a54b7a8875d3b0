"""The reference ROPE's cos/sin table (ops/rope.py _angles) is computed for the whole table at
once; here it is held bit for bit to ggml's per-pair loop, transcribed as it was before
(theta recurrence in float32, one pair at a time, each multi-section angle restarting where
ggml restarts it), on every mode with freq factors, YaRN's ext_factor and odd sections."""
from __future__ import annotations

import itertools
import math
import types

import numpy as np
import pytest

from pyggml.ops import rope as R

_f32 = np.float32


def _yarn_loop(theta_extrap, i, p, corr):
    freq_scale, ext_factor = _f32(p.freq_scale), _f32(p.ext_factor)
    mscale = _f32(p.attn_factor)
    theta_interp = freq_scale * theta_extrap
    theta = theta_interp
    if ext_factor != 0.0:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            den = _f32(corr[1]) - _f32(corr[0])
            den = _f32(0.001) if _f32(0.001) > den else den
            y = (_f32(i) - _f32(corr[0])) / den
        y = _f32(0) if _f32(0) > y else y
        y = _f32(1) if _f32(1) < y else y
        ramp_mix = (_f32(1) - y) * ext_factor
        theta = theta_interp * (_f32(1) - ramp_mix) + theta_extrap * ramp_mix
        mscale = mscale * (_f32(1) + _f32(0.1) * np.log(_f32(1) / freq_scale))
    theta = np.asarray(theta, dtype=np.float64)
    return np.cos(theta) * np.float64(mscale), np.sin(theta) * np.float64(mscale)


def _angles_loop(pos, p, ne0, ff):
    """ggml_rope_cache_init / ggml_mrope_cache_init, one pair after the other."""
    n_dims, mode = p.n_dims, p.mode
    multi = bool(mode & R.ROPE_TYPE_MROPE)
    ne2 = pos.shape[0] // 4 if multi else pos.shape[0]
    theta_scale = np.power(_f32(p.freq_base), _f32(-2.0) / _f32(n_dims))
    corr = R.rope_yarn_corr_dims(n_dims, p.n_ctx_orig, p.freq_base, p.beta_fast, p.beta_slow)
    npair = ne0 // 2 if mode == R.ROPE_TYPE_VISION else n_dims // 2
    cos, sin = np.empty((ne2, npair)), np.empty((ne2, npair))
    sec = list(p.sections)
    base = [pos[k * ne2:(k + 1) * ne2].astype(_f32) for k in range(4)] if multi else None
    theta = [b.copy() for b in base] if multi else [pos.astype(_f32)]
    sect_dims, sec_w = sum(sec), sec[0] + sec[1]
    for i in range(npair):
        f = _f32(ff[i]) if ff is not None else _f32(1)
        k = 0
        if multi:
            sector = i % sect_dims
            if mode == R.ROPE_TYPE_VISION:
                for j, start in enumerate((0, sec[0], sec_w, sec_w + sec[2])):
                    if sector == start:
                        theta[j] = base[j].copy()
                        break
            if mode == R.ROPE_TYPE_IMROPE:
                k = (1 if sector % 3 == 1 and sector < 3 * sec[1] else
                     2 if sector % 3 == 2 and sector < 3 * sec[2] else
                     0 if sector % 3 == 0 and sector < 3 * sec[0] else 3)
            else:
                k = (1 if sec[0] <= sector < sec_w else 2 if sec_w <= sector < sec_w + sec[2]
                     else 3 if sector >= sec_w + sec[2] else 0)
        cos[:, i], sin[:, i] = _yarn_loop(theta[k] / f, i, p, corr)
        theta = [t * theta_scale for t in theta]
    return cos, sin


def _params(mode, n_dims, fs, ef, af, long_ctx, sections):
    n_ctx_orig, base, beta_fast = (4096, 500000.0, 32.0) if long_ctx else (0, 10000.0, 1.0)
    return types.SimpleNamespace(n_dims=n_dims, mode=mode, n_ctx_orig=n_ctx_orig,
                                 freq_base=base, freq_scale=fs, ext_factor=ef, attn_factor=af,
                                 beta_fast=beta_fast, beta_slow=1.0, sections=sections)


@pytest.mark.parametrize("mode", [0, 2, 8, 40, 24])
def test_angles_equal_ggmls_loop_bit_for_bit(mode):
    rng = np.random.default_rng(mode)
    n = 0
    for n_dims, (fs, ef, af), ff_on, long_ctx in itertools.product(
            (20, 36, 128), ((1.0, 0.0, 1.0), (1.4245, 0.7465, 1.4245), (0.25, 1.0, 1.0)),
            (False, True), (False, True)):
        ne2 = int(rng.integers(1, 12))
        if mode == R.ROPE_TYPE_VISION:
            ne0, sections = 2 * n_dims, [n_dims // 4, n_dims // 4, 0, 0]
        else:
            ne0, sections = n_dims + 4, [n_dims // 3, n_dims // 3, n_dims // 3, 0]
        if mode & R.ROPE_TYPE_MROPE and n % 2:        # uneven and empty sections too
            sections = [int(s) for s in rng.integers(0, 6, 4)]
            sections[0] += 1
        p = _params(mode, n_dims, fs, ef, af, long_ctx, sections)
        npos = ne2 * (4 if mode & R.ROPE_TYPE_MROPE else 1)
        pos = rng.integers(-50, 100000 if long_ctx else 512, npos).astype(np.float64)
        ff = rng.uniform(0.9, 1.1, n_dims).astype(np.float32).astype(np.float64) if ff_on \
            else None
        want = _angles_loop(pos, p, ne0, ff)
        got = R._angles(pos, p, ne0, ff)
        for w, g in zip(want, got):
            assert g.shape == w.shape and g.tobytes() == w.tobytes(), (n_dims, fs, ef, ff_on,
                                                                       long_ctx, sections)
        n += 1
    assert n == 36


def test_angle_table_cache_is_keyed_by_contents():
    """The cached table follows the positions' and freq factors' values, not their identity."""
    import pyggml as gg
    from pyggml import data
    from pyggml.backends.reference.backend import ReferenceBackend
    ctx = gg.init(mem_size=1 << 20)
    a = gg.new_tensor_3d(ctx, gg.TYPE_F32, 8, 1, 3)
    pos = gg.new_tensor_1d(ctx, gg.TYPE_I32, 3)
    ff = gg.new_tensor_1d(ctx, gg.TYPE_F32, 4)
    out = gg.rope_ext(ctx, a, pos, ff, 8, 0, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    data.write(a, np.ones((3, 1, 8)))
    be = ReferenceBackend()
    results = []
    for p, f in (([0, 1, 2], 1.0), ([5, 6, 7], 1.0), ([0, 1, 2], 2.0), ([0, 1, 2], 1.0)):
        data.write(pos, np.array(p))
        data.write(ff, np.full(4, f))
        be.graph_compute(gf)
        results.append(data.read(out).copy())
        theta = np.array(p)[:, None] * 10000.0 ** (-np.arange(4) / 4) / f
        want = np.stack([np.cos(theta) - np.sin(theta), np.sin(theta) + np.cos(theta)], -1)
        assert np.allclose(results[-1].reshape(3, 4, 2), want, atol=1e-5), (p, f)
    assert results[0].tobytes() == results[3].tobytes()


def test_powers_round_every_step():
    """p * s**j rounds once; ggml's recurrence rounds each step: they differ, _powers is the
    recurrence."""
    s = np.power(_f32(10000.0), _f32(-2.0) / _f32(128))
    got = R._powers(np.array([_f32(511)]), s, 64)[0]
    want, t = [], _f32(511)
    for _ in range(64):
        want.append(t)
        t = t * s
    assert got.tobytes() == np.array(want, dtype=_f32).tobytes()
    assert math.isfinite(float(got[-1]))
