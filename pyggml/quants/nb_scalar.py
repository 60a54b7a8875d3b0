"""Numba scalar helpers shared by the row codecs (nb.py, kq_nb.py) and the kernels: LLVM bit
casts, the half <-> float and bf16 <-> float conversions (F16C instructions), C's roundf and
SSE's round-half-even, and fp16 fields loaded from / stored into byte arrays. Float math is
float32 throughout, as in ggml's reference C (see nb.py)."""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.core import types
from numba.extending import intrinsic

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")


# ---------------------------------------------------------------------------
# LLVM intrinsics: bit casts and the half <-> float conversions

def cast_intrinsic(src, dst, emit, doc=""):
    """An intrinsic dst(x) whose code is emit(builder, x): one LLVM cast, so loops around it
    vectorize. src: the Numba type x must have, or a type class (types.Integer: any width)."""
    @intrinsic
    def fn(typingctx, x):
        if not (isinstance(x, src) if isinstance(src, type) else x == src):
            return None

        def codegen(context, builder, sig, args):
            return emit(builder, args[0])
        return dst(x), codegen
    fn.__doc__ = doc
    return fn


_half_bits_to_f32 = cast_intrinsic(
    types.uint16, types.float32, lambda b, h: b.fpext(b.bitcast(h, ir.HalfType()), ir.FloatType()))
_f32_to_half_bits = cast_intrinsic(
    types.float32, types.uint16, lambda b, x: b.bitcast(b.fptrunc(x, ir.HalfType()), ir.IntType(16)))
_f32_bits = cast_intrinsic(types.float32, types.uint32, lambda b, x: b.bitcast(x, ir.IntType(32)))
_bits_f32 = cast_intrinsic(types.uint32, types.float32, lambda b, u: b.bitcast(u, ir.FloatType()))


def _unary_f32_intrinsic(llvm_name, doc):
    @intrinsic
    def fn(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, sig, args):
            f = ir.FloatType()
            callee = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f]),
                                                    llvm_name)
            return builder.call(callee, [args[0]])
        return types.float32(x), codegen
    fn.__doc__ = doc
    return fn


_roundf = _unary_f32_intrinsic("llvm.round.f32", "C roundf: half away from zero.")
_roundeven = _unary_f32_intrinsic("llvm.roundeven.f32", "Half to even (SSE4.1 roundps mode 0).")


# ---------------------------------------------------------------------------
# scalar conversions

@_jit
def f16_to_f32(h):
    """fp16 bits -> float32 (exact; a signaling NaN comes out quiet, as ggml's)."""
    return _half_bits_to_f32(np.uint16(h))


@_jit
def f32_to_f16(x):
    """float32 -> fp16 bits, round to nearest-even; every NaN -> 0x7E00 | sign (ggml)."""
    x = np.float32(x)
    h = _f32_to_half_bits(x)
    if x != x:
        h = np.uint16(0x7E00 | ((_f32_bits(x) >> 16) & 0x8000))
    return h


@_jit
def bf16_to_f32(h):
    """bf16 bits -> float32: the bits become the upper half."""
    return _bits_f32(np.uint32(np.uint32(h) << 16))


@_jit
def f32_to_bf16(x):
    """ggml_compute_fp32_to_bf16: round to nearest-even, NaN forced quiet."""
    u = np.int64(_f32_bits(np.float32(x)))
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 64)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@_jit
def _load_f16(src, o):
    return f16_to_f32(np.uint16(src[o] | (np.uint16(src[o + 1]) << 8)))


@_jit
def _store_f16(dst, o, x):
    h = f32_to_f16(x)
    dst[o] = np.uint8(h & 0xFF)
    dst[o + 1] = np.uint8(h >> 8)
