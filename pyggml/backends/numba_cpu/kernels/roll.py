"""Kernels for pyggml/ops/roll.py: ROLL and PAD_REFLECT_1D (F32; element bits moved, exact).
Destination rows are split over the threads."""
from __future__ import annotations

from ....types import GGMLType
from ..desc import DST
from ..desc import SRC0
from ..desc import param_i32
from ..desc import row_range
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_ne
from ..intrinsics import f32_array
from . import kernel
from .tri import n_rows
from .tri import row_addr


def _IS_F32(node):
    return node.type == GGMLType.F32


@kernel("ROLL", supports=_IS_F32)
def roll(desc, ith, nth):
    ne0, ne1, ne2 = t_ne(desc, DST, 0), t_ne(desc, DST, 1), t_ne(desc, DST, 2)
    ne3 = t_ne(desc, DST, 3)
    s0, s1, s2, s3 = param_i32(desc, 0), param_i32(desc, 1), param_i32(desc, 2), param_i32(desc, 3)
    sh = (ne0 - s0) % ne0                      # source element of destination element 0
    r0, r1 = row_range(ne1 * ne2 * ne3, ith, nth)
    for r in range(r0, r1):
        i1, i2, i3 = r % ne1, (r // ne1) % ne2, r // (ne1 * ne2)
        src = (t_addr(desc, SRC0) + ((i1 - s1) % ne1) * t_nb(desc, SRC0, 1) +
               ((i2 - s2) % ne2) * t_nb(desc, SRC0, 2) + ((i3 - s3) % ne3) * t_nb(desc, SRC0, 3))
        s = f32_array(src, ne0)
        d = f32_array(row_addr(desc, DST, r), ne0)
        for i0 in range(ne0):
            j = i0 + sh
            d[i0] = s[j - ne0 if j >= ne0 else j]


@kernel("PAD_REFLECT_1D", supports=_IS_F32)
def pad_reflect_1d(desc, ith, nth):
    p0, p1 = param_i32(desc, 0), param_i32(desc, 1)
    n = t_ne(desc, SRC0, 0)
    r0, r1 = row_range(n_rows(desc, DST), ith, nth)
    for r in range(r0, r1):
        s = f32_array(row_addr(desc, SRC0, r), n)
        d = f32_array(row_addr(desc, DST, r), n + p0 + p1)
        d[p0:p0 + n] = s
        for i in range(1, p0 + 1):
            d[p0 - i] = s[i]
        for i in range(1, p1 + 1):
            d[p0 + n - 1 + i] = s[n - 1 - i]

