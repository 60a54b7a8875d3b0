"""Shifts and reflections: ROLL (circular shift along every dim, ggml_roll) and PAD_REFLECT_1D
(dim 0 padded with its own mirror image, ggml_pad_reflect_1d). ggml's CPU kernels are F32 only.
"""
from __future__ import annotations

import numpy as np

from ..errors import ParamError
from ..tensor import is_contiguous
from ..tensor import nbytes
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32 = GGMLType.F32


def _moved(node) -> int:
    return nbytes(node) + nbytes(node.src[0])


# --- ROLL -----------------------------------------------------------------------------------

def _infer_roll(srcs, p):
    a = need_src("ROLL", srcs, 0, "a")
    need_type("ROLL", a, (_F32,), "a")
    need(a.nb[0] == 4, "ROLL", "a's rows must be contiguous (nb0 == type size)", a)
    for d, s in enumerate((p.shift0, p.shift1, p.shift2, p.shift3)):
        if not abs(s) < a.ne[d]:
            raise ParamError(f"ROLL: |shift{d}|={abs(s)} must be < ne{d}={a.ne[d]} [{a.name!r}]")
    return Out(_F32, a.ne)


def _ref_roll(node, ins, p):
    # ins is (ne3, ne2, ne1, ne0): shift k of ggml's dim d rolls numpy axis 3 - d
    return np.roll(ins[0], (p.shift3, p.shift2, p.shift1, p.shift0), axis=(0, 1, 2, 3))


def _roll_cases():
    out = []
    for permute in (False, True):
        def build(ctx, permute=permute):
            a = cc.leaf(ctx, "f32", (10, 5, 4, 3), "a")
            if permute:     # ggml_roll needs only nb0 == type size: a permuted source is valid
                from .view import permute as _permute
                a = _permute(ctx, a, 0, 2, 1, 3)
                a.name = "a_permuted"
            return roll(ctx, a, 3, -2, 1, -1)
        out.append(cc.case("ROLL", dict(shift0=3, shift1=-2, shift3=1, shift4=-1,
                                        permute=permute), build))
    return out


ROLL = register(OpDef(
    "ROLL", _infer_roll, params="shift0:i32 shift1:i32 shift2:i32 shift3:i32",
    reference=_ref_roll, cases=_roll_cases, exact=True, nbytes=_moved,
    ggml=lambda g, c, s, p, node: g.ggml_roll(c, s[0], p.shift0, p.shift1, p.shift2, p.shift3),
    doc="a shifted circularly by shift_d along each dim d (|shift_d| < ne_d)."))


def roll(ctx, a, shift0, shift1, shift2, shift3):
    """ggml_roll(a, shift0, shift1, shift2, shift3): element i moves to i + shift (mod ne)."""
    return ROLL.build(ctx, [a], dict(shift0=shift0, shift1=shift1, shift2=shift2, shift3=shift3))


# --- PAD_REFLECT_1D -----------------------------------------------------------------------------

def _infer_pad_reflect(srcs, p):
    a = need_src("PAD_REFLECT_1D", srcs, 0, "a")
    if p.p0 < 0 or p.p1 < 0:
        raise ParamError(f"PAD_REFLECT_1D: paddings must be >= 0 (p0={p.p0}, p1={p.p1}) "
                         f"[{a.name!r}]")
    if p.p0 >= a.ne[0] or p.p1 >= a.ne[0]:
        raise ParamError(f"PAD_REFLECT_1D: each padding must be < ne0={a.ne[0]} (p0={p.p0}, "
                         f"p1={p.p1}) [{a.name!r}]")
    need_type("PAD_REFLECT_1D", a, (_F32,), "a")
    need(is_contiguous(a), "PAD_REFLECT_1D", "a must be contiguous", a)
    return Out(_F32, [a.ne[0] + p.p0 + p.p1, a.ne[1], a.ne[2], a.ne[3]])


def _ref_pad_reflect(node, ins, p):
    return np.pad(ins[0], [(0, 0)] * 3 + [(p.p0, p.p1)], mode="reflect")


def _pad_reflect_cases():
    out = []
    for ne, p0, p1 in (((512, 34, 2, 1), 10, 9), ((3000, 384, 4, 1), 10, 9),
                       ((7, 3, 2, 1), 6, 5)):          # the last: pyggml's, pads of ne0 - 1
        # test_pad_reflect_1d makes a 2-D tensor of ne_a's first two sizes
        def build(ctx, ne=ne, p0=p0, p1=p1):
            return pad_reflect_1d(ctx, cc.leaf(ctx, "f32", ne[:2], "a"), p0, p1)
        out.append(cc.case("PAD_REFLECT_1D", dict(type=cc.ggml_type("f32"), ne_a=list(ne), pad_0=p0,
                                                  pad_1=p1), build))
    return out


PAD_REFLECT_1D = register(OpDef(
    "PAD_REFLECT_1D", _infer_pad_reflect, params="p0:i32 p1:i32", reference=_ref_pad_reflect,
    cases=_pad_reflect_cases, exact=True, nbytes=_moved,
    ggml=lambda g, c, s, p, node: g.ggml_pad_reflect_1d(c, s[0], p.p0, p.p1),
    doc="a with p0 / p1 mirrored elements before / after dim 0 (the edge itself not repeated)."))


def pad_reflect_1d(ctx, a, p0, p1):
    """ggml_pad_reflect_1d(a, p0, p1): p0, p1 < ne0."""
    return PAD_REFLECT_1D.build(ctx, [a], dict(p0=p0, p1=p1))
