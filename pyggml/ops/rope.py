"""Rotary position embeddings: ROPE (rope, rope_ext, rope_multi) and ROPE_BACK (rope_ext_back,
rope_multi_back), as ggml.c's ggml_rope_impl and ggml-cpu's ggml_compute_forward_rope_flt.

For each row (i1 = head, i2 = token, i3 = batch) of a (F32 or F16, packed rows), with
p = pos[i2] (I32 vector of a.ne2 values; 4 * a.ne2 for the multi-section modes):
  theta_scale = freq_base^(-2/n_dims)
  theta_0 = p, theta_i = theta_{i-1} * theta_scale        (float32 recurrence, as ggml)
  pair i (i < n_dims/2) is rotated by rope_yarn(theta_i / freq_factors[i]):
    mode 0 (normal): (x[2i], x[2i+1])          mode 2 (NeoX): (x[i], x[i + n_dims/2])
    y0 = x0*cos - x1*sin, y1 = x0*sin + x1*cos  (sin negated for ROPE_BACK)
  elements past n_dims pass through unchanged.
rope_yarn (YaRN): theta_interp = freq_scale * theta_extrap; with ext_factor != 0,
  ramp_mix = ext_factor * (1 - clamp((i - low) / max(0.001, high - low), 0, 1)),
  theta = theta_interp*(1 - ramp_mix) + theta_extrap*ramp_mix and
  mscale = attn_factor * (1 + 0.1*ln(1/freq_scale)); cos/sin are scaled by mscale
  (attn_factor alone without ext_factor). [low, high] = rope_yarn_corr_dims(...).
Multi-section modes (rope_multi): MROPE (8) picks the position per pair from sections
[t, h, w, e] (pos[i2 + k*ne2]), IMROPE (40) interleaves t/h/w, VISION (24) rotates
(x[i], x[i + n_dims]) over all of ne0 = 2*n_dims with each section's theta restarting.

The reference mirrors ggml's float32 angle computation (theta recurrence, division by the
freq factor, the YaRN mix): at positions of hundreds, an angle's float32 rounding is ~3e-5 rad,
so ggml's result is defined by those float32 angles; cos/sin and the rotation are float64.
op_params (16 int32 words): [n_past=0, n_dims, mode, n_ctx=0, n_ctx_orig, freq_base,
freq_scale, ext_factor, attn_factor, beta_fast, beta_slow (f32), sections[4], n_offs=0].
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..errors import ParamError
from ..errors import describe
from ..tensor import is_vector
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import set_param
from ..types import TRAITS
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import grad_rule
from .registry import inplace_of
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register
from .view import view_4d as _view_4d

F32, F16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.I32

ROPE_TYPE_NORMAL = 0
ROPE_TYPE_NEOX = 2
ROPE_TYPE_MROPE = 8
ROPE_TYPE_VISION = 24
ROPE_TYPE_IMROPE = 40
_MODES_EXT = (ROPE_TYPE_NORMAL, ROPE_TYPE_NEOX)
_MODES_MULTI = (ROPE_TYPE_NORMAL, ROPE_TYPE_NEOX, ROPE_TYPE_MROPE, ROPE_TYPE_VISION,
                ROPE_TYPE_IMROPE)

_PARAMS = ("n_past:i32 n_dims:i32 mode:i32 n_ctx:i32 n_ctx_orig:i32 freq_base:f32 "
           "freq_scale:f32 ext_factor:f32 attn_factor:f32 beta_fast:f32 beta_slow:f32 "
           "sections:i32[4] n_offs:i32")

_f32 = np.float32


def rope_yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow):
    """ggml_rope_yarn_corr_dims: [start, end] correction dims (float32, as ggml computes them).

    ggml writes them into a float[2] out-parameter; pyggml returns the two values."""
    def corr_dim(n_rot):
        with np.errstate(divide="ignore", invalid="ignore"):
            num = _f32(n_ctx_orig) / (_f32(n_rot) * _f32(2) * _f32(math.pi))
            return _f32(n_dims) * np.log(num) / (_f32(2) * np.log(_f32(freq_base)))
    start = np.floor(corr_dim(beta_fast))
    end = np.ceil(corr_dim(beta_slow))
    # MAX(0, start) / MIN(n_dims - 1, end) with C's macro semantics (a > b ? a : b)
    lo = _f32(0) if _f32(0) > start else start
    hi = _f32(n_dims - 1) if _f32(n_dims - 1) < end else end
    return [float(lo), float(hi)]


def _yarn(theta_extrap, p, corr):
    """rope_yarn over float32 angles (n_tokens, n_pairs); column i is pair i (i0 = 2i).
    Returns (cos, sin) in float64, each scaled by mscale."""
    freq_scale, ext_factor = _f32(p.freq_scale), _f32(p.ext_factor)
    mscale = _f32(p.attn_factor)
    theta_interp = freq_scale * theta_extrap
    theta = theta_interp
    if ext_factor != 0.0:
        # rope_yarn_ramp with C's MAX/MIN macros (a > b ? a : b), NaN behaviour included
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            den = _f32(corr[1]) - _f32(corr[0])
            den = _f32(0.001) if _f32(0.001) > den else den
            y = (np.arange(theta.shape[1], dtype=_f32) - _f32(corr[0])) / den
        y = np.where(_f32(0) > y, _f32(0), y)
        y = np.where(_f32(1) < y, _f32(1), y)
        ramp_mix = (_f32(1) - y) * ext_factor
        theta = theta_interp * (_f32(1) - ramp_mix) + theta_extrap * ramp_mix
        mscale = mscale * (_f32(1) + _f32(0.1) * np.log(_f32(1) / freq_scale))
    theta = np.ascontiguousarray(theta, dtype=np.float64)
    return np.cos(theta) * np.float64(mscale), np.sin(theta) * np.float64(mscale)


def _powers(base, theta_scale, n):
    """ggml's float32 recurrence theta_0 = base, theta_j = theta_{j-1} * theta_scale for
    j < n, as (len(base), n): multiply.accumulate rounds to float32 after every step, as the
    C loop does (p * theta_scale**j would round once and differ)."""
    steps = np.empty((base.shape[0], n), dtype=_f32)
    steps[:, 0] = base
    steps[:, 1:] = theta_scale
    return np.multiply.accumulate(steps, axis=1, dtype=_f32)


def _mrope_picks(p, npair):
    """Multi-section modes: per rotated pair i, the section k whose position it uses and how
    many theta_scale steps its angle has taken since that section's angle last (re)started."""
    sections = list(p.sections)
    sect_dims = sum(sections)
    sec_w = sections[0] + sections[1]
    sec_e = sec_w + sections[2]
    starts = (0, sections[0], sec_w, sec_e)
    is_imrope, indep = p.mode == ROPE_TYPE_IMROPE, p.mode == ROPE_TYPE_VISION
    last = [0, 0, 0, 0]             # where each section's angle restarted (vision only)
    ks, steps = [], []
    for i in range(npair):
        sector = i % sect_dims
        if indep:     # vision: each section's angle restarts at its own position
            for k, start in enumerate(starts):
                if sector == start:           # ggml's else-if chain: the first match
                    last[k] = i
                    break
        if is_imrope:
            if sector % 3 == 1 and sector < 3 * sections[1]:
                k = 1
            elif sector % 3 == 2 and sector < 3 * sections[2]:
                k = 2
            elif sector % 3 == 0 and sector < 3 * sections[0]:
                k = 0
            else:
                k = 3
        else:
            k = 0
            if sections[0] <= sector < sec_w:
                k = 1
            elif sec_w <= sector < sec_w + sections[2]:
                k = 2
            elif sector >= sec_w + sections[2]:
                k = 3
        ks.append(k)
        steps.append(i - last[k])
    return np.array(ks), np.array(steps)


def _angles(pos, p, ne0, ff):
    """cos/sin per token and rotated pair, shape (n_tokens, n_pairs): ggml's rope/mrope cache.

    Whole-table NumPy: the same float32 operations as ggml's per-pair loop, element for
    element (tests/ops/test_rope_angles.py holds it bit for bit to that loop)."""
    n_dims, mode = p.n_dims, p.mode
    ne2 = pos.shape[0] if not (mode & ROPE_TYPE_MROPE) else pos.shape[0] // 4
    theta_scale = np.power(_f32(p.freq_base), _f32(-2.0) / _f32(n_dims))
    corr = rope_yarn_corr_dims(n_dims, p.n_ctx_orig, p.freq_base, p.beta_fast, p.beta_slow)
    npair = ne0 // 2 if mode == ROPE_TYPE_VISION else n_dims // 2     # pairs that rotate
    if mode & ROPE_TYPE_MROPE:
        ks, steps = _mrope_picks(p, npair)
        table = np.stack([_powers(pos[k * ne2:(k + 1) * ne2].astype(_f32), theta_scale, npair)
                          for k in range(4)])                         # t, h, w, e
        theta = table[ks, :, steps].T                                 # (ne2, npair)
    else:
        theta = _powers(pos.astype(_f32), theta_scale, npair)
    if ff is not None:
        theta = theta / ff[:npair].astype(_f32)
    return _yarn(theta, p, corr)


_TABLES: OrderedDict = OrderedDict()      # (positions, freq factors, op_params, ne0) -> cos, sin
_TABLES_MAX = 8


def _angles_cached(node, pos, p, ne0, ff):
    """_angles keyed by its inputs' contents: grad mode recomputes one graph once per
    perturbed element with the same positions (8192 graphs for a [128,32,2,1] case), and a
    model's graph has two ROPE nodes per layer over one set of positions."""
    key = (pos.tobytes(), ff.tobytes() if ff is not None else None, bytes(node.op_params), ne0)
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = _angles(pos, p, ne0, ff)
        for t in hit:
            t.flags.writeable = False        # shared by every later call with these inputs
        if len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return hit


def _rope_apply(node, ins, p, sin_sign):
    x = ins[0]                                        # (ne3, ne2, ne1, ne0)
    pos = ins[1].reshape(-1)
    ff = ins[2].reshape(-1) if ins[2] is not None else None
    ne0 = x.shape[3]
    n_dims, mode = p.n_dims, p.mode
    cos, sin = _angles_cached(node, pos, p, ne0, ff)
    sin = sin * sin_sign
    y = x.copy()
    if mode == ROPE_TYPE_VISION:
        nh, half = ne0 // 2, n_dims
        c, s = cos[None, :, None, :nh], sin[None, :, None, :nh]
        x0, x1 = x[..., :half], x[..., half:2 * half]
    else:
        half = n_dims // 2
        c, s = cos[None, :, None, :half], sin[None, :, None, :half]
        if mode == ROPE_TYPE_NORMAL:
            x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
        else:                                         # NeoX and the multi-section modes
            x0, x1 = x[..., :half], x[..., half:n_dims]
    y0 = x0 * c - x1 * s
    y1 = x0 * s + x1 * c
    if mode == ROPE_TYPE_NORMAL:
        y[..., 0:n_dims:2], y[..., 1:n_dims:2] = y0, y1
    elif mode == ROPE_TYPE_VISION:
        y[..., :half], y[..., half:2 * half] = y0, y1
    else:
        y[..., :half], y[..., half:n_dims] = y0, y1
    return y


def _ref_rope(node, ins, p):
    return _rope_apply(node, ins, p, 1.0)


def _ref_rope_back(node, ins, p):
    return _rope_apply(node, ins, p, -1.0)


# --- building -----------------------------------------------------------------------------------

def _infer_rope(op):
    def infer(srcs, p):
        a = need_src(op, srcs, 0, "a")
        b = need_src(op, srcs, 1, "b (positions)")
        c = srcs[2] if len(srcs) > 2 else None
        mode, n_dims = p.mode, p.n_dims
        if mode & 1:
            raise ParamError(f"{op}: mode & 1 == 1 is no longer supported (got mode {mode}) "
                             f"[{describe(a)}]")
        allowed = _MODES_MULTI if getattr(p, "multi", False) else _MODES_EXT
        if mode not in allowed:
            hint = " (use rope_multi for the multi-section modes)" if mode in _MODES_MULTI else ""
            raise ParamError(f"{op}: unsupported rope mode {mode}; expected one of "
                             f"{list(allowed)}{hint} [{describe(a)}]")
        need_type(op, a, (F32, F16), "a")
        need(a.nb[0] == TRAITS[a.type].type_size, op,
             "a's rows must be packed (nb0 == element size)", a)
        need_type(op, b, (I32,), "b (positions)")
        need(is_vector(b), op, "positions b must be a vector", b)
        mrope = bool(mode & ROPE_TYPE_MROPE)
        npos = 4 * a.ne[2] if mrope else a.ne[2]
        if b.ne[0] != npos:
            fail(op, f"positions b must hold {'4 * ' if mrope else ''}a.ne2 = "
                 f"{npos} values (one per token{', per section' if mrope else ''})", a, b)
        if n_dims <= 0 or n_dims % 2:
            raise ParamError(f"{op}: n_dims must be even and > 0, got {n_dims} [{describe(a)}]")
        if mode == ROPE_TYPE_VISION:
            if 2 * n_dims != a.ne[0]:
                fail(op, f"vision mode needs n_dims == ne0/2 (n_dims={n_dims})",
                     a)
        else:
            if not (n_dims <= a.ne[0]):
                fail(op, f"n_dims = {n_dims} exceeds a.ne0", a)
        if mrope:
            sec = list(p.sections)
            if any(s < 0 for s in sec) or sum(sec[:3]) <= 0:
                raise ParamError(f"{op}: sections {sec} must be >= 0 with one of the first "
                                 f"three > 0 [{describe(a)}]")
            if not (sum(sec) <= a.ne[0]):
                fail(op, f"sum of sections {sec} exceeds a.ne0", a)
        if c is not None:
            need_type(op, c, (F32,), "c (freq_factors)")
            # ggml asserts ne0 >= n_dims/2; the vision mode reads n_dims of them
            n_ff = n_dims if mode == ROPE_TYPE_VISION else n_dims // 2
            if not (c.ne[0] >= n_ff):
                fail(op, f"freq_factors c needs at least {n_ff} values", c)
        return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)
    return infer


def _rope_ggml(back):
    def make(g, c, s, p, node):
        ff = s[2] if node.src[2] is not None else None
        args = (p.mode, p.n_ctx_orig, p.freq_base, p.freq_scale, p.ext_factor, p.attn_factor,
                p.beta_fast, p.beta_slow)
        inplace = node.view_src is not None
        if p.mode & ROPE_TYPE_MROPE:
            import ctypes
            sec = (ctypes.c_int32 * 4)(*p.sections)
            fn = (g.ggml_rope_multi_back if back else
                  g.ggml_rope_multi_inplace if inplace else g.ggml_rope_multi)
            return fn(c, s[0], s[1], ff, p.n_dims, sec, *args)
        fn = (g.ggml_rope_ext_back if back else
              g.ggml_rope_ext_inplace if inplace else g.ggml_rope_ext)
        return fn(c, s[0], s[1], ff, p.n_dims, *args)
    return make


def _rope_flops(node):
    return 6 * nelements(node)


def _rw_bytes(node):
    return sum(nbytes(s) for s in node.src if s is not None) + nbytes(node)


def _pos_init(n_ctx):
    def init(leaf, rng):
        if leaf.type == I32:
            return rng.integers(0, n_ctx, size=leaf.ne[::-1])
        if leaf.name == "freq":
            return rng.uniform(0.9, 1.1, size=leaf.ne[::-1])     # frequency factors
        return None
    return init


def _param_if(forward, a):
    """ggml's test_rope marks a as a parameter in the forward cases (grad mode)."""
    if forward:
        set_param(a)


# test-backend-ops' rope shapes after the llama one: (ne, n_dims, mode, slow in its own right)
_ROPE_SHAPES = (
    ((128, 40, 2, 1), 128, 0, False),
    ((128, 52, 2, 1), 128, 0, False),
    ((128, 64, 2, 1), 128, 0, True),
    ((16, 16, 8192, 1), 16, 0, True),
    ((64, 1, 2, 1), 64, 2, False),
    ((64, 71, 2, 1), 64, 2, False),
    ((64, 8, 2, 1), 64, 2, False),
    ((80, 32, 2, 1), 20, 0, False),
    ((80, 32, 2, 1), 32, 0, False),
    ((80, 32, 4, 1), 32, 0, False),
    ((80, 32, 2, 1), 20, 2, False),
    ((80, 32, 2, 1), 32, 2, False),
    ((80, 32, 4, 1), 32, 2, False),
    ((16, 16, 8192, 1), 16, 2, True),
    ((128, 12, 2, 1), 128, 8, False),
    ((128, 28, 2, 1), 128, 8, False),
    ((128, 12, 2, 1), 20, 8, False),
    ((128, 28, 2, 1), 32, 8, False),
    ((128, 12, 2, 1), 128, 40, False),
    ((128, 28, 2, 1), 128, 40, False),
    ((128, 12, 2, 1), 20, 40, False),
    ((128, 28, 2, 1), 32, 40, False),
    ((80, 16, 2, 1), 80, 24, False),
    ((128, 16, 2, 1), 128, 40, False),
    ((16, 16, 8192, 1), 16, 40, True),
)


def _rope_cases(forward):
    op = "ROPE" if forward else "ROPE_BACK"
    out = []

    def add(type, ne_a, n_dims, mode, n_ctx, fs, ef, af, ff, v, inplace=False, tags=()):
        def build(ctx):
            if v & 1:
                ne = [ne_a[0] * 2, ne_a[1] * 4, ne_a[2] * 3, ne_a[3]]
                a = cc.leaf(ctx, type, ne, "a")
                _param_if(forward, a)
                a = _view_4d(ctx, a, *ne_a, a.nb[1], a.nb[2], a.nb[3], 0)
            elif v == 2:      # second half along dim 0: a view at an offset
                ne = [ne_a[0] * 2, ne_a[1], ne_a[2], ne_a[3]]
                a = cc.leaf(ctx, type, ne, "a")
                _param_if(forward, a)
                a = _view_4d(ctx, a, *ne_a, a.nb[1], a.nb[2], a.nb[3],
                             ne_a[0] * TRAITS[a.type].type_size)
            else:
                a = cc.leaf(ctx, type, ne_a, "a")
                _param_if(forward, a)
            multi = bool(mode & ROPE_TYPE_MROPE)
            pos = cc.leaf(ctx, "i32", [ne_a[2] * (4 if multi else 1)], "pos")
            freq = cc.leaf(ctx, "f32", [n_dims // 2], "freq") if ff else None
            if multi:
                if mode == ROPE_TYPE_VISION:
                    sections, nd = [n_dims // 4, n_dims // 4, 0, 0], n_dims // 2
                else:
                    sections, nd = [n_dims // 3, n_dims // 3, n_dims // 3, 0], n_dims
                fn = (rope_multi_back if not forward else
                      rope_multi_inplace if inplace else rope_multi)
                return fn(ctx, a, pos, freq, nd, sections, mode, 0, 10000.0, fs, ef, af,
                          1.0, 1.0)
            fn = rope_ext_back if not forward else rope_ext_inplace if inplace else rope_ext
            return fn(ctx, a, pos, freq, n_dims, mode, 0, 10000.0, fs, ef, af, 1.0, 1.0)
        out.append(cc.case(op, dict(type=cc.ggml_type(type), ne_a=ne_a, n_dims=n_dims, mode=mode,
                                    n_ctx=n_ctx, fs=fs, ef=ef, af=af, ff=ff, v=v,
                                    inplace=inplace, n_offs=0),
                           build, init=_pos_init(n_ctx), tags=tags,
                           grad=dict(precise=True, max_maa=1e-3)))

    first = True
    for fs in (1.0, 1.4245):
        for ef in (0.0, 0.7465):
            for af in (1.0, 1.4245):
                # the pytest subset keeps the llama shape for every parameter combination and
                # the rest of the grid for one combination (fs=1.4245, ef=0.7465, af=1.4245)
                full = fs == 1.4245 and ef == 0.7465 and af == 1.4245
                for type in ("f32", "f16"):
                    for ff in (False, True):
                        for v in (0, 1):
                            s = () if full else ("slow",)
                            add(type, [128, 32, 2, 1], 128, 0, 512, fs, ef, af, ff, v,
                                tags=() if v == 0 and not ff else s)
                            if first:
                                for ne, n_dims, mode, slow in _ROPE_SHAPES:
                                    add(type, list(ne), n_dims, mode, 512, fs, ef, af, ff, v,
                                        tags=("slow",) if slow else s)
                            add(type, [64, 128, 2, 1], 64, 2, 512, fs, ef, af, ff, v,
                                tags=("slow",))
                        for rmode in (0, 2, 8, 40, 24):
                            add(type, [36, 16, 2457, 1], 36, rmode, 512, fs, ef, af, ff, 2,
                                tags=("slow",))
                            if full:          # the same view-at-an-offset path, small
                                add(type, [36, 4, 3, 1], 36, rmode, 512, fs, ef, af, ff, 2)
                first = False
    if forward:
        for type in ("f32", "f16"):
            for mode in (0, 2, 8, 40, 24):
                for ff in (False, True):
                    add(type, [128, 32, 2, 1], 128, mode, 512, 1.4245, 0.7465, 1.4245, ff, 0,
                        inplace=True)
                    add(type, [128, 32, 2, 1], 128, mode, 512, 1.4245, 0.7465, 1.4245, ff, 1,
                        inplace=True, tags=("slow",))
                    add(type, [128, 32, 2, 3], 128, mode, 512, 1.4245, 0.7465, 1.4245, ff, 1,
                        inplace=True)
    # pyggml extras: large positions (theta recurrence in float32 matters) and a YaRN setup
    # with a real n_ctx_orig (corr dims strictly inside [0, n_dims))
    for type in ("f32", "f16"):
        for mode in (0, 2):
            def build(ctx, type=type, mode=mode):
                a = cc.leaf(ctx, type, [64, 4, 5, 2], "a")
                pos = cc.leaf(ctx, "i32", [5], "pos")
                freq = cc.leaf(ctx, "f32", [24], "freq")
                fn = rope_ext if forward else rope_ext_back
                return fn(ctx, a, pos, freq, 48, mode, 4096, 500000.0, 0.25, 1.0, 1.0, 32.0, 1.0)
            out.append(cc.case(op, dict(type=cc.ggml_type(type), ne_a=[64, 4, 5, 2], n_dims=48, mode=mode,
                                        n_ctx=100000, n_ctx_orig=4096, freq_base=500000.0,
                                        fs=0.25, ef=1.0, af=1.0, ff=True, beta_fast=32.0,
                                        beta_slow=1.0),
                               build, init=_pos_init(100000)))
    return out


ROPE = register(OpDef(
    "ROPE", _infer_rope("ROPE"), params=_PARAMS, reference=_ref_rope,
    cases=lambda: _rope_cases(True), flops=_rope_flops,
    nbytes=_rw_bytes, ggml=_rope_ggml(False),
    doc="Rotary position embedding (normal/NeoX, YaRN, freq factors, multi-section modes)."))

ROPE_BACK = register(OpDef(
    "ROPE_BACK", _infer_rope("ROPE_BACK"), params=_PARAMS, reference=_ref_rope_back,
    cases=lambda: _rope_cases(False), flops=_rope_flops,
    nbytes=_rw_bytes, ggml=_rope_ggml(True),
    doc="Gradient of rope: the inverse rotation (sin negated)."))


def _params(n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
            beta_fast, beta_slow, sections=None):
    return dict(n_past=0, n_dims=n_dims, mode=mode, n_ctx=0, n_ctx_orig=n_ctx_orig,
                freq_base=freq_base, freq_scale=freq_scale, ext_factor=ext_factor,
                attn_factor=attn_factor, beta_fast=beta_fast, beta_slow=beta_slow,
                sections=list(sections) if (sections is not None and mode & ROPE_TYPE_MROPE)
                else [0, 0, 0, 0], n_offs=0)


def _sections(sections):
    if sections is None:
        return None
    s = list(sections)
    if len(s) != 4:
        raise ParamError(f"rope_multi: sections must have 4 values, got {s}")
    return s


def rope(ctx, a, b, n_dims, mode):
    """ggml_rope: rope_ext with freq_base 10000, no scaling, no YaRN."""
    return ROPE.build(ctx, [a, b], _params(n_dims, mode, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0))


def rope_inplace(ctx, a, b, n_dims, mode):
    return ROPE.build(ctx, [a, b], _params(n_dims, mode, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0),
                      hints=dict(inplace=True))


def rope_ext(ctx, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
             attn_factor, beta_fast, beta_slow):
    return ROPE.build(ctx, [a, b, c], _params(n_dims, mode, n_ctx_orig, freq_base, freq_scale,
                                              ext_factor, attn_factor, beta_fast, beta_slow))


def rope_ext_inplace(ctx, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
                     attn_factor, beta_fast, beta_slow):
    return ROPE.build(ctx, [a, b, c], _params(n_dims, mode, n_ctx_orig, freq_base, freq_scale,
                                              ext_factor, attn_factor, beta_fast, beta_slow),
                      hints=dict(inplace=True))


def rope_custom(ctx, a, b, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
                attn_factor, beta_fast, beta_slow):
    """ggml_rope_custom (deprecated in ggml): rope_ext without freq factors."""
    return rope_ext(ctx, a, b, None, n_dims, mode, n_ctx_orig, freq_base, freq_scale,
                    ext_factor, attn_factor, beta_fast, beta_slow)


def rope_multi(ctx, a, b, c, n_dims, sections, mode, n_ctx_orig, freq_base, freq_scale,
               ext_factor, attn_factor, beta_fast, beta_slow):
    return ROPE.build(ctx, [a, b, c], _params(n_dims, mode, n_ctx_orig, freq_base, freq_scale,
                                              ext_factor, attn_factor, beta_fast, beta_slow,
                                              _sections(sections)),
                      hints=dict(multi=True))


def rope_multi_inplace(ctx, a, b, c, n_dims, sections, mode, n_ctx_orig, freq_base, freq_scale,
                       ext_factor, attn_factor, beta_fast, beta_slow):
    return ROPE.build(ctx, [a, b, c], _params(n_dims, mode, n_ctx_orig, freq_base, freq_scale,
                                              ext_factor, attn_factor, beta_fast, beta_slow,
                                              _sections(sections)),
                      hints=dict(multi=True, inplace=True))


def rope_ext_back(ctx, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
                  attn_factor, beta_fast, beta_slow):
    return ROPE_BACK.build(ctx, [a, b, c], _params(n_dims, mode, n_ctx_orig, freq_base,
                                                   freq_scale, ext_factor, attn_factor,
                                                   beta_fast, beta_slow))


def rope_multi_back(ctx, a, b, c, n_dims, sections, mode, n_ctx_orig, freq_base, freq_scale,
                    ext_factor, attn_factor, beta_fast, beta_slow):
    return ROPE_BACK.build(ctx, [a, b, c], _params(n_dims, mode, n_ctx_orig, freq_base,
                                                   freq_scale, ext_factor, attn_factor,
                                                   beta_fast, beta_slow, _sections(sections)),
                           hints=dict(multi=True))


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(ROPE, ignore=(1,))
def _grad_rope(g, node, grad):
    """The inverse rotation (rope_ext_back / rope_multi_back); positions have none."""
    p = ROPE.p(node)
    b, c = node.src[1], node.src[2]
    need(not g.needs(2), "ROPE", "backward: gradients for freq factors are not implemented "
         "(as in ggml)", c)
    if not g.needs(0):
        return
    tail = (p.mode, p.n_ctx_orig, p.freq_base, p.freq_scale, p.ext_factor, p.attn_factor,
            p.beta_fast, p.beta_slow)
    if grad.ne[2] == b.ne[0]:
        back = rope_ext_back(g.ctx, grad, b, c, p.n_dims, *tail)
    else:
        back = rope_multi_back(g.ctx, grad, b, c, p.n_dims, p.sections, *tail)
    g.add(0, back)
