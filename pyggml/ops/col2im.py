"""COL2IM_1D (ggml_col2im_1d): GEMM columns scattered back into a 1-D signal, the second half of
a transposed 1-D convolution written as mul_mat + col2im (DAC's decoder upsampling).

cols [K*OC, T_in] (row t_in holds OC blocks of K taps) -> signal [T_out, OC] with
T_out = (T_in - 1)*s0 + K - 2*p0: out[oc, t] = sum of cols[t_in, oc*K + k] over t_in*s0 + k =
t + p0. ggml sums in F32 and stores in the input's type (F32, F16 or BF16).
"""
from __future__ import annotations

import numpy as np

from ..errors import ParamError
from ..tensor import is_contiguous
from ..tensor import is_matrix
from ..tensor import nbytes
from ..types import GGMLType
from . import cases_common as cc
from .registry import OpDef
from .registry import Out
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

_F32, _F16, _BF16 = GGMLType.F32, GGMLType.F16, GGMLType.BF16


def _infer_col2im_1d(srcs, p):
    a = need_src("COL2IM_1D", srcs, 0, "a (columns)")
    need(is_matrix(a), "COL2IM_1D", "the columns must be a matrix [K*OC, T_in]", a)
    need(is_contiguous(a), "COL2IM_1D", "the columns must be contiguous", a)
    need_type("COL2IM_1D", a, (_F32, _F16, _BF16), "a")
    if p.s0 <= 0 or p.oc <= 0 or p.p0 < 0:
        raise ParamError(f"COL2IM_1D: need s0 > 0, oc > 0, p0 >= 0 (s0={p.s0}, oc={p.oc}, "
                         f"p0={p.p0}) [{a.name!r}]")
    k = a.ne[0] // p.oc
    need(a.ne[0] == k * p.oc, "COL2IM_1D", f"a.ne[0]={a.ne[0]} is not a whole number of "
         f"oc={p.oc} blocks", a)
    t_out = (a.ne[1] - 1) * p.s0 + k - 2 * p.p0
    need(k > 0 and t_out > 0, "COL2IM_1D", f"empty result (K={k}, T_out={t_out})", a)
    return Out(a.type, [t_out, p.oc])


def _ref_col2im_1d(node, ins, p):
    cols = ins[0][0, 0]                                   # (T_in, OC*K)
    t_in = cols.shape[0]
    k = cols.shape[1] // p.oc
    if t_in == 0:              # no columns: nothing is added (the slices below would wrap)
        return np.zeros((p.oc, node.ne[0]))
    cols = cols.reshape(t_in, p.oc, k)
    full = np.zeros((p.oc, (t_in - 1) * p.s0 + k))
    for j in range(k):
        full[:, j:j + p.s0 * (t_in - 1) + 1:p.s0] += cols[:, :, j].T
    return full[:, p.p0:p.p0 + node.ne[0]]


def _col2im_cases():
    out = []
    for t in ("f32", "f16", "bf16"):
        for k, oc, t_in, s0, p0 in ((16, 32, 197, 8, 0), (4, 3, 7, 2, 0), (1, 5, 13, 1, 0),
                                    (6, 4, 11, 3, 1), (2, 3, 9, 3, 0), (5, 4, 11, 2, 0),
                                    (8, 4, 13, 4, 2), (4, 3, 1, 2, 0), (16, 1, 197, 8, 0),
                                    (1, 5, 13, 3, 0), (8, 2, 3, 2, 5)):
            def build(ctx, t=t, k=k, oc=oc, t_in=t_in, s0=s0, p0=p0):
                return col2im_1d(ctx, cc.leaf(ctx, t, (k * oc, t_in), "cols"), s0, oc, p0)
            out.append(cc.case("COL2IM_1D", dict(type=cc.ggml_type(t), K=k, OC=oc, T_in=t_in, s0=s0,
                                                 p0=p0), build,
                               max_nmse=1e-7 if t == "f32" else 5e-4))
    return out


COL2IM_1D = register(OpDef(
    "COL2IM_1D", _infer_col2im_1d, params="s0:i32 oc:i32 p0:i32", reference=_ref_col2im_1d,
    cases=_col2im_cases, nbytes=lambda node: nbytes(node) + nbytes(node.src[0]),
    ggml=lambda g, c, s, p, node: g.ggml_col2im_1d(c, s[0], p.s0, p.oc, p.p0),
    doc="Columns [K*OC, T_in] overlap-added into a signal [(T_in-1)*s0 + K - 2*p0, OC]."))


def col2im_1d(ctx, a, s0, oc, p0):
    """ggml_col2im_1d(a = columns [K*OC, T_in], s0, oc, p0)."""
    return COL2IM_1D.build(ctx, [a], dict(s0=s0, oc=oc, p0=p0))
