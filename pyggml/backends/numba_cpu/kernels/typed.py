"""Per-type dispatch resolved when a kernel compiles, not when it runs.

`dequantize_row_t(t, src, dst, n)` and `quantize_row_t(t, src, dst, n)` do what
quants.nb's dequantize_row / quantize_row do (0, or ERR_UNSUPPORTED), but when `t` is a
literal (a template kernel's constant, kernels/__init__.py) the call compiles to that
type's row function alone: the if-chain over every type (the K-quants' scale searches
included) is what made GET_ROWS and SET_ROWS seconds-long cold compiles. A non-literal t
falls back to the if-chain.
"""
from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from ....quants import kq_nb as kq
from ....quants import nb as qnb
from ....types import GGMLType

_DEQ = {GGMLType.F32: qnb.dequantize_row_f32, GGMLType.F16: qnb.dequantize_row_f16,
        GGMLType.BF16: qnb.dequantize_row_bf16, GGMLType.Q4_0: qnb.dequantize_row_q4_0,
        GGMLType.Q4_1: qnb.dequantize_row_q4_1, GGMLType.Q5_0: qnb.dequantize_row_q5_0,
        GGMLType.Q5_1: qnb.dequantize_row_q5_1, GGMLType.Q8_0: qnb.dequantize_row_q8_0,
        GGMLType.Q8_1: qnb.dequantize_row_q8_1, GGMLType.Q2_K: kq.dequantize_row_q2_K,
        GGMLType.Q3_K: kq.dequantize_row_q3_K, GGMLType.Q4_K: kq.dequantize_row_q4_K,
        GGMLType.Q5_K: kq.dequantize_row_q5_K, GGMLType.Q6_K: kq.dequantize_row_q6_K,
        GGMLType.Q8_K: kq.dequantize_row_q8_K, GGMLType.IQ4_NL: kq.dequantize_row_iq4_nl,
        GGMLType.IQ4_XS: kq.dequantize_row_iq4_xs, GGMLType.MXFP4: qnb.dequantize_row_mxfp4}
_DEQ = {int(t): f for t, f in _DEQ.items()}

# quants.nb.quantize_row's rows (ggml-cpu's from_float); the K-quants and IQ4_XS through
# kq_nb.quantize_blocks(t, src, dst, 1, n, no weights) as kq_nb.quantize_row calls them
_Q_ROW = {GGMLType.F32: qnb.quantize_row_f32, GGMLType.F16: qnb.quantize_row_f16,
          GGMLType.BF16: qnb.quantize_row_bf16, GGMLType.Q4_0: qnb.quantize_row_q4_0,
          GGMLType.Q4_1: qnb.quantize_row_q4_1, GGMLType.Q5_0: qnb.quantize_row_q5_0,
          GGMLType.Q5_1: qnb.quantize_row_q5_1, GGMLType.Q8_0: qnb.quantize_row_q8_0,
          GGMLType.Q8_1: qnb.quantize_row_q8_1, GGMLType.IQ4_NL: kq.quantize_row_iq4_nl_cpu,
          GGMLType.MXFP4: qnb.quantize_row_mxfp4}
_Q_ROW = {int(t): f for t, f in _Q_ROW.items()}
_Q_BLOCKS = frozenset(int(t) for t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K,
                                        GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_XS))

ERR_UNSUPPORTED = qnb.ERR_UNSUPPORTED


def dequantize_row_t(t, src, dst, n):
    """Row of n values of type t (raw bytes in src) -> float32 dst (numba only)."""
    raise NotImplementedError("numba only")


def quantize_row_t(t, src, dst, n):
    """float32 row of n values -> raw bytes of type t in dst (numba only)."""
    raise NotImplementedError("numba only")


def _impl(t, generic, rows: dict, blocks: frozenset = frozenset()):
    """The implementation for type argument t: the if-chain `generic(t, src, dst, n)` when t
    is not a literal, else that type's function alone (`rows`: fn(src, dst, n); `blocks`:
    types kq_nb.quantize_blocks(t, src, dst, 1, n, no weights) handles), or ERR_UNSUPPORTED
    when it has none."""
    if not isinstance(t, types.IntegerLiteral):
        return lambda t, src, dst, n: generic(t, src, dst, n)
    lit = t.literal_value
    fn = rows.get(lit)
    if fn is not None:
        def impl(t, src, dst, n):
            fn(src, dst, n)
            return 0
        return impl
    if lit not in blocks:
        return lambda t, src, dst, n: ERR_UNSUPPORTED

    def impl_blocks(t, src, dst, n):
        kq.quantize_blocks(lit, src, dst, 1, n, np.zeros(0, np.float32), 7)
        return 0
    return impl_blocks


@overload(dequantize_row_t, prefer_literal=True)
def _ol_dequantize_row_t(t, src, dst, n):
    return _impl(t, qnb.dequantize_row, _DEQ)


@overload(quantize_row_t, prefer_literal=True)
def _ol_quantize_row_t(t, src, dst, n):
    return _impl(t, qnb.quantize_row, _Q_ROW, _Q_BLOCKS)
