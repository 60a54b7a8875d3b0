"""Elementwise kernels: binary (ADD SUB MUL DIV ADD1 ADD_ID), unary (every GGML_OP_UNARY op,
SQR SQRT LOG SIN COS CLAMP SCALE LEAKY_RELU) and GLU (REGLU GEGLU SWIGLU SWIGLU_OAI
GEGLU_ERF GEGLU_QUICK).

How the family is cut, and why:
  - Three row drivers (`_unary_rows`, `_binary_rows`, `_glu_rows`) walk their node's rows
    (split by ith/nth as ggml does), read sources through any strides and convert
    F32/F16/BF16 through F32; each has a fast loop for packed F32 rows that LLVM vectorizes,
    and the hot ops (SILU GELU GELU_QUICK SCALE ADD MUL SWIGLU GEGLU) one for packed F16 too.
  - The math of one element is picked at compile time: each driver is an `@overload` with
    `prefer_literal=True`, called by its kernels with a constant op code, so Numba compiles
    one specialization per op whose inner loop holds only that op's element function (LLVM
    inlines it and vectorizes the packed loops). Passing jitted functions as arguments would
    make the kernels uncacheable, closures are not cached, and an `inline='always'` switch
    over every op cost ~8 s of compile per kernel; this costs well under a second.
  - Drivers and element functions are compiled with error_model="numpy": no ZeroDivision
    branch that would stop vectorization.
  - exp in SILU, SWIGLU, SIGMOID and SWIGLU_OAI is ggml's own vectorizable expf (ggml_v_expf,
    ~1.5 ulp, written with an llvm.fma intrinsic; like ggml's, rows whose |x| <= 87 take the
    cheap common path only); GELU / GELU_QUICK / GEGLU / GEGLU_QUICK
    read ggml's F16 lookup tables (built once by pyggml.ops.unary), other functions call libm.
  - Quantized sources/results of ADD (add_cast) and ADD1 go row by row through a per-thread
    F32 scratch row with pyggml.quants.nb's row codecs.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic
from numba.extending import overload

from ....quants import nb as qnb
from ....tensor import is_contiguous_rows
from ....types import QUANT_TYPES
from ....types import TRAITS
from ....types import GGMLType
from ..desc import DST
from ..desc import ERR_UNSUPPORTED
from ..desc import ERR_WORK_SIZE
from ..desc import SRC0
from ..desc import SRC1
from ..desc import SRC2
from ..desc import param_f32
from ..desc import param_i32
from ..desc import register_error
from ..desc import row_coords
from ..desc import row_range
from ..desc import set_error
from ..desc import t_addr
from ..desc import t_nb
from ..desc import t_nb4
from ..desc import t_ne
from ..desc import t_ne4
from ..desc import t_row_size
from ..desc import t_type
from ..desc import wdata
from ..desc import wsize
from ..intrinsics import f32_array
from ..intrinsics import ptr_of
from ..intrinsics import u8_array
from ..intrinsics import u16_array
from . import kernel
from . import param_words
from . import row_kernel
from .copy import load_f32
from .copy import store_f32
from .tables import GELU_F16
from .tables import GELU_QUICK_F16

F32, F16, BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)

ERR_ADD_ID_RANGE = register_error(140, "ADD_ID: an id is outside [0, rows of b)")

_OPTS = dict(nogil=True, error_model="numpy")
_jit = numba.njit(cache=True, **_OPTS)

# ggml's F16 lookup tables as float32 (frozen into the kernels that use them: 256 KB each)
_GELU_TAB, _GELU_QUICK_TAB = GELU_F16, GELU_QUICK_F16
# GLU words: every GLU op has op and swapped; SWIGLU_OAI adds alpha and limit
_W_GLU = param_words("SWIGLU_OAI")


# --- intrinsics -----------------------------------------------------------------------------

@intrinsic
def _fma(typingctx, a, b, c):
    """llvm.fma.f32: a*b + c rounded once (vectorizes to vfmadd)."""
    if not all(x == types.float32 for x in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 3)
        fn = builder.module.declare_intrinsic("llvm.fma", [ir.FloatType()], fnty)
        return builder.call(fn, args)
    return types.float32(a, b, c), codegen


@intrinsic
def _as_i32(typingctx, x):
    """Bits of a float32 as int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(x), codegen


@intrinsic
def _as_f32(typingctx, x):
    """The low 32 bits of an integer as a float32."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif x.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(x), codegen


# --- scalar math ------------------------------------------------------------------------------

_0 = np.float32(0.0)
_1 = np.float32(1.0)
_HALF = np.float32(0.5)
_SQRT_2_INV = np.float32(0.70710678118654752440084436210484)


@_jit
def _expf(x):
    """ggml_v_expf (ggml-cpu vec.h) one lane at a time: branch-free, so loops vectorize."""
    r = np.float32(12582912.0)                                  # 0x1.8p23
    z = _fma(x, np.float32(1.4426950216293335), r)              # 0x1.715476p+0
    n = z - r
    b = _fma(-n, np.float32(1.428606765330187e-06),             # 0x1.7f7d1cp-20
             _fma(-n, np.float32(0.693145751953125), x))        # 0x1.62e4p-1
    e = np.int64(_as_i32(z)) << 23
    k = _as_f32(e + 0x3F800000)
    u = b * b
    j = _fma(_fma(_fma(np.float32(0.008247390389442444), b, np.float32(0.04189976677298546)), u,
                  _fma(np.float32(0.16668395698070526), b, np.float32(0.4999912679195404))),
             u, np.float32(0.9999994039535522) * b)
    an = abs(n)
    g = np.int64(0x82000000) if n <= _0 else np.int64(0)
    s1 = _as_f32(g + 0x7F000000)
    s2 = _as_f32(e - g)
    res = _fma(k, j, k)
    if an > np.float32(126.0):
        res = _fma(s2, j, s2) * s1
    if an > np.float32(192.0):
        res = s1 * s1
    return res


@_jit
def _expf_small(x):
    """_expf's common path alone: exact same result for |x| <= 87 (|n| <= 126), where ggml's
    vector code also returns early. Callers check a row's range first (see _EXP_RANGE)."""
    r = np.float32(12582912.0)
    z = _fma(x, np.float32(1.4426950216293335), r)
    n = z - r
    b = _fma(-n, np.float32(1.428606765330187e-06), _fma(-n, np.float32(0.693145751953125), x))
    k = _as_f32((np.int64(_as_i32(z)) << 23) + 0x3F800000)
    u = b * b
    j = _fma(_fma(_fma(np.float32(0.008247390389442444), b, np.float32(0.04189976677298546)), u,
                  _fma(np.float32(0.16668395698070526), b, np.float32(0.4999912679195404))),
             u, np.float32(0.9999994039535522) * b)
    return _fma(k, j, k)


_EXP_RANGE = np.float32(87.0)


@_jit
def _silu(x):
    return x / (_1 + _expf(-x))


@_jit
def _silu_small(x):
    return x / (_1 + _expf_small(-x))


@_jit
def _sigmoid_small(x):
    return _1 / (_1 + _expf_small(-x))


@_jit
def _in_exp_range(x, n):
    """True when every x[i] satisfies |x[i]| <= 87 (the cheap exp path is exact there)."""
    out = 0
    for i in range(n):
        out += abs(x[i]) > _EXP_RANGE
    return out == 0


@_jit
def _sigmoid(x):
    return _1 / (_1 + _expf(-x))


@_jit
def _gelu(x, t):
    """GELU as ggml's CPU: F16 table; F32 inputs clamp at -10 (-> 0) and 10 (-> x)."""
    if t == F32:
        if x <= np.float32(-10.0):
            return _0
        if x >= np.float32(10.0):
            return x
    return _GELU_TAB[qnb.f32_to_f16(x)]


@_jit
def _gelu_quick(x):
    return _GELU_QUICK_TAB[qnb.f32_to_f16(x)]


@_jit
def _gelu_erf(x):
    return _HALF * x * (_1 + np.float32(math.erf(x * _SQRT_2_INV)))


@_jit
def _hardsigmoid(x):
    return min(_1, max(_0, (x + np.float32(3.0)) / np.float32(6.0)))


@_jit
def _round_away(x):
    """roundf: half away from zero (x - trunc(x) is exact in float32)."""
    t = np.float32(np.trunc(x))
    if abs(x - t) >= _HALF:
        t += _1 if x > _0 else -_1
    return t


@_jit
def _softplus(x):
    if x > np.float32(20.0):
        return x
    return np.float32(math.log1p(np.float32(math.exp(x))))


@_jit
def _xielu(x, alpha_n, alpha_p, beta, eps):
    if x > _0:
        return alpha_p * x * x + beta * x
    return (np.float32(math.expm1(min(x, eps))) - x) * alpha_n + beta * x


@_jit
def _sqrt(x):
    return np.float32(np.sqrt(x))


@_jit
def _log(x):
    return np.float32(np.log(x))


@_jit
def _swiglu_oai(x, g, alpha, limit):
    xx = limit if limit < x else x
    yy = min(max(g, -limit), limit)
    return xx / (_1 + _expf(alpha * -xx)) * (yy + _1)



# element access by type: copy.py's load_f32 / store_f32 (F32, F16, BF16 here)
_ld, _st = load_f32, store_f32


def _floats(node) -> bool:
    return all(t.type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
               for t in [node] + [s for s in node.src if s is not None])


# --- unary: element functions  f(x, t, p0..p4) -> float32 ---------------------------------------
# t: the source's ggml type; p0..p4: op_params words 0..4 read as floats (for GGML_OP_UNARY
# word 0 is the op id and XIELU's parameters are words 1..4).

@_jit
def _u_abs(x, t, p0, p1, p2, p3, p4):
    return abs(x)


@_jit
def _u_sgn(x, t, p0, p1, p2, p3, p4):
    return _1 if x > _0 else (-_1 if x < _0 else _0)


@_jit
def _u_neg(x, t, p0, p1, p2, p3, p4):
    return -x


@_jit
def _u_step(x, t, p0, p1, p2, p3, p4):
    return _1 if x > _0 else _0


@_jit
def _u_tanh(x, t, p0, p1, p2, p3, p4):
    return np.float32(math.tanh(x))


@_jit
def _u_elu(x, t, p0, p1, p2, p3, p4):
    return x if x > _0 else np.float32(math.expm1(x))


@_jit
def _u_relu(x, t, p0, p1, p2, p3, p4):
    return x if x > _0 else _0


@_jit
def _u_sigmoid(x, t, p0, p1, p2, p3, p4):
    return _sigmoid(x)


@_jit
def _u_sigmoid_small(x, t, p0, p1, p2, p3, p4):
    return _sigmoid_small(x)


@_jit
def _u_silu_small(x, t, p0, p1, p2, p3, p4):
    return _silu_small(x)


@_jit
def _u_gelu(x, t, p0, p1, p2, p3, p4):
    return _gelu(x, t)


@_jit
def _u_gelu_quick(x, t, p0, p1, p2, p3, p4):
    return _gelu_quick(x)


@_jit
def _u_silu(x, t, p0, p1, p2, p3, p4):
    return _silu(x)


@_jit
def _u_hardswish(x, t, p0, p1, p2, p3, p4):
    return x * _hardsigmoid(x)


@_jit
def _u_hardsigmoid(x, t, p0, p1, p2, p3, p4):
    return _hardsigmoid(x)


@_jit
def _u_exp(x, t, p0, p1, p2, p3, p4):
    return np.float32(math.exp(x))


@_jit
def _u_expm1(x, t, p0, p1, p2, p3, p4):
    return np.float32(math.expm1(x))


@_jit
def _u_softplus(x, t, p0, p1, p2, p3, p4):
    return _softplus(x)


@_jit
def _u_gelu_erf(x, t, p0, p1, p2, p3, p4):
    return _gelu_erf(x)


@_jit
def _u_xielu(x, t, p0, p1, p2, p3, p4):
    return _xielu(x, p1, p2, p3, p4)


@_jit
def _u_floor(x, t, p0, p1, p2, p3, p4):
    return np.float32(np.floor(x))


@_jit
def _u_ceil(x, t, p0, p1, p2, p3, p4):
    return np.float32(np.ceil(x))


@_jit
def _u_round(x, t, p0, p1, p2, p3, p4):
    return _round_away(x)


@_jit
def _u_trunc(x, t, p0, p1, p2, p3, p4):
    return np.float32(np.trunc(x))


@_jit
def _u_sqr(x, t, p0, p1, p2, p3, p4):
    return x * x


@_jit
def _u_sqrt(x, t, p0, p1, p2, p3, p4):
    return _sqrt(x)


@_jit
def _u_log(x, t, p0, p1, p2, p3, p4):
    return _log(x)


@_jit
def _u_sin(x, t, p0, p1, p2, p3, p4):
    return np.float32(math.sin(x))


@_jit
def _u_cos(x, t, p0, p1, p2, p3, p4):
    return np.float32(math.cos(x))


@_jit
def _u_clamp(x, t, p0, p1, p2, p3, p4):
    y = x if x < p1 else p1                # MAX(MIN(x, max), min): NaN -> max, as ggml's macros
    return y if y > p0 else p0


@_jit
def _u_scale(x, t, p0, p1, p2, p3, p4):
    return _fma(x, p0, p1)                 # x*s + b rounded once, as ggml_vec_mad1_f32


@_jit
def _u_leaky(x, t, p0, p1, p2, p3, p4):
    return (x if x > _0 else _0) + p0 * (x if x < _0 else _0)


# op codes: ggml_unary_op values, then pyggml's own GGML_OPs
(U_ABS, U_SGN, U_NEG, U_STEP, U_TANH, U_ELU, U_RELU, U_SIGMOID, U_GELU, U_GELU_QUICK, U_SILU,
 U_HARDSWISH, U_HARDSIGMOID, U_EXP, U_EXPM1, U_SOFTPLUS, U_GELU_ERF, U_XIELU, U_FLOOR, U_CEIL,
 U_ROUND, U_TRUNC) = range(22)
U_SQR, U_SQRT, U_LOG, U_SIN, U_COS, U_CLAMP, U_SCALE, U_LEAKY = range(100, 108)

# ops with a dedicated packed-F16 loop (the others read F16 through the generic strided loop:
# slower, but each fast loop costs compile time in every kernel that has it)
_F16_FAST_UNARY = {U_SILU, U_GELU, U_GELU_QUICK, U_SCALE}

# exp-based ops with a cheaper element function for rows whose |x| <= 87 (ggml's expf takes
# the same early exit per vector); rows with larger values use the full one
_UNARY_SMALL = {U_SILU: _u_silu_small, U_SIGMOID: _u_sigmoid_small}

_UNARY_ELEMS = {
    U_ABS: _u_abs, U_SGN: _u_sgn, U_NEG: _u_neg, U_STEP: _u_step, U_TANH: _u_tanh,
    U_ELU: _u_elu, U_RELU: _u_relu, U_SIGMOID: _u_sigmoid, U_GELU: _u_gelu,
    U_GELU_QUICK: _u_gelu_quick, U_SILU: _u_silu, U_HARDSWISH: _u_hardswish,
    U_HARDSIGMOID: _u_hardsigmoid, U_EXP: _u_exp, U_EXPM1: _u_expm1, U_SOFTPLUS: _u_softplus,
    U_GELU_ERF: _u_gelu_erf, U_XIELU: _u_xielu, U_FLOOR: _u_floor, U_CEIL: _u_ceil,
    U_ROUND: _u_round, U_TRUNC: _u_trunc, U_SQR: _u_sqr, U_SQRT: _u_sqrt, U_LOG: _u_log,
    U_SIN: _u_sin, U_COS: _u_cos, U_CLAMP: _u_clamp, U_SCALE: _u_scale, U_LEAKY: _u_leaky,
}


def _unary_rows(desc, ith, nth, op):
    """dst = f(src0) row by row (f chosen by the constant op code; see the overload)."""
    raise NotImplementedError("only callable from jitted kernels")


@overload(_unary_rows, prefer_literal=True, jit_options=_OPTS)
def _ov_unary_rows(desc, ith, nth, op):
    if not isinstance(op, types.IntegerLiteral):
        return None
    f = _UNARY_ELEMS[op.literal_value]
    f16_fast = op.literal_value in _F16_FAST_UNARY
    has_small = op.literal_value in _UNARY_SMALL
    fs = _UNARY_SMALL.get(op.literal_value, f)

    def impl(desc, ith, nth, op):
        st = t_type(desc, SRC0)
        dt = t_type(desc, DST)
        ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
        nb00, nb01, nb02, nb03 = t_nb4(desc, SRC0)
        nb0, nb1, nb2, nb3 = t_nb4(desc, DST)
        sa = t_addr(desc, SRC0)
        da = t_addr(desc, DST)
        p0, p1, p2 = param_f32(desc, 0), param_f32(desc, 1), param_f32(desc, 2)
        p3, p4 = param_f32(desc, 3), param_f32(desc, 4)
        f32_rows = st == F32 and dt == F32 and nb00 == 4 and nb0 == 4
        f16_rows = f16_fast and st == F16 and dt == F16 and nb00 == 2 and nb0 == 2
        nr = ne1 * ne2 * ne3
        if nr == 0:
            return
        ir0, ir1 = row_range(nr, ith, nth)
        for r in range(ir0, ir1):
            i1, i2, i3 = row_coords(r, ne1, ne2)
            s = sa + i1 * nb01 + i2 * nb02 + i3 * nb03
            d = da + i1 * nb1 + i2 * nb2 + i3 * nb3
            if f32_rows:
                x = f32_array(s, ne0)
                y = f32_array(d, ne0)
                if has_small and _in_exp_range(x, ne0):
                    for i in range(ne0):
                        y[i] = fs(x[i], F32, p0, p1, p2, p3, p4)
                else:
                    for i in range(ne0):
                        y[i] = f(x[i], F32, p0, p1, p2, p3, p4)
            elif f16_rows:
                xh = u16_array(s, ne0)
                yh = u16_array(d, ne0)
                for i in range(ne0):
                    yh[i] = qnb.f32_to_f16(f(qnb.f16_to_f32(xh[i]), F16, p0, p1, p2, p3, p4))
            else:
                for i in range(ne0):
                    _st(d + i * nb0, dt, f(_ld(s + i * nb00, st), st, p0, p1, p2, p3, p4))
    return impl


# One small kernel per op, cached under its own name (k_<op>), generated from this table.
UNARY_KERNELS = {
    "ABS": U_ABS,
    "SGN": U_SGN,
    "NEG": U_NEG,
    "STEP": U_STEP,
    "TANH": U_TANH,
    "ELU": U_ELU,
    "RELU": U_RELU,
    "SIGMOID": U_SIGMOID,
    "GELU": U_GELU,
    "GELU_QUICK": U_GELU_QUICK,
    "SILU": U_SILU,
    "HARDSWISH": U_HARDSWISH,
    "HARDSIGMOID": U_HARDSIGMOID,
    "EXP": U_EXP,
    "EXPM1": U_EXPM1,
    "SOFTPLUS": U_SOFTPLUS,
    "GELU_ERF": U_GELU_ERF,
    "XIELU": U_XIELU,
    "FLOOR": U_FLOOR,
    "CEIL": U_CEIL,
    "ROUND": U_ROUND,
    "TRUNC": U_TRUNC,
    "SQR": U_SQR,
    "SQRT": U_SQRT,
    "LOG": U_LOG,
    "SIN": U_SIN,
    "COS": U_COS,
    "CLAMP": U_CLAMP,
    "SCALE": U_SCALE,
    "LEAKY_RELU": U_LEAKY,
}
for _op, _code in UNARY_KERNELS.items():
    row_kernel(_op, _unary_rows, _code, supports=_floats)


# --- binary -----------------------------------------------------------------------------------

@_jit
def _b_add(a, b):
    return a + b


@_jit
def _b_sub(a, b):
    return a - b


@_jit
def _b_mul(a, b):
    return a * b


@_jit
def _b_div(a, b):
    return a / b


B_ADD, B_SUB, B_MUL, B_DIV = 0, 1, 2, 3
_BINARY_ELEMS = {B_ADD: _b_add, B_SUB: _b_sub, B_MUL: _b_mul, B_DIV: _b_div}


def _binary_rows(desc, ith, nth, op):
    """dst = src0 op src1, src1 repeated into src0 (ggml's can_repeat broadcast)."""
    raise NotImplementedError("only callable from jitted kernels")


@overload(_binary_rows, prefer_literal=True, jit_options=_OPTS)
def _ov_binary_rows(desc, ith, nth, op):
    if not isinstance(op, types.IntegerLiteral):
        return None
    f = _BINARY_ELEMS[op.literal_value]
    f16_fast = op.literal_value in (B_ADD, B_MUL)

    def impl(desc, ith, nth, op):
        st = t_type(desc, SRC0)
        bt = t_type(desc, SRC1)
        dt = t_type(desc, DST)
        ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
        ne10, ne11, ne12, ne13 = t_ne4(desc, SRC1)
        nb00, nb01, nb02, nb03 = t_nb4(desc, SRC0)
        nb10, nb11, nb12, nb13 = t_nb4(desc, SRC1)
        nb0, nb1, nb2, nb3 = t_nb4(desc, DST)
        sa, ba, da = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
        nr = ne1 * ne2 * ne3
        if nr == 0 or ne0 == 0 or ne10 * ne11 * ne12 * ne13 == 0:
            return
        f32_rows = st == F32 and bt == F32 and dt == F32 and nb00 == 4 and nb0 == 4 and nb10 == 4
        f16_rows = (f16_fast and st == F16 and bt == F16 and dt == F16 and nb00 == 2 and nb0 == 2 and nb10 == 2
                    and ne10 == ne0)
        ir0, ir1 = row_range(nr, ith, nth)
        for r in range(ir0, ir1):
            i1, i2, i3 = row_coords(r, ne1, ne2)
            s = sa + i1 * nb01 + i2 * nb02 + i3 * nb03
            b = ba + (i1 % ne11) * nb11 + (i2 % ne12) * nb12 + (i3 % ne13) * nb13
            d = da + i1 * nb1 + i2 * nb2 + i3 * nb3
            if f32_rows:
                x = f32_array(s, ne0)
                z = f32_array(d, ne0)
                if ne10 == ne0:
                    y = f32_array(b, ne0)
                    for i in range(ne0):
                        z[i] = f(x[i], y[i])
                elif ne10 == 1:
                    v = ptr_of(b, np.float32)[0]
                    for i in range(ne0):
                        z[i] = f(x[i], v)
                else:
                    y = f32_array(b, ne10)
                    for j0 in range(0, ne0, ne10):
                        for i in range(ne10):
                            z[j0 + i] = f(x[j0 + i], y[i])
            elif f16_rows:
                xh = u16_array(s, ne0)
                yh = u16_array(b, ne0)
                zh = u16_array(d, ne0)
                for i in range(ne0):
                    zh[i] = qnb.f32_to_f16(f(qnb.f16_to_f32(xh[i]), qnb.f16_to_f32(yh[i])))
            else:
                i10 = 0
                for i in range(ne0):
                    _st(d + i * nb0, dt, f(_ld(s + i * nb00, st), _ld(b + i10 * nb10, bt)))
                    i10 += 1
                    if i10 == ne10:
                        i10 = 0
    return impl


def _binary_quant_rows(desc, ith, nth, op):
    """src0 and/or dst quantized (add_cast, add1): dequantize a row into this thread's scratch,
    combine in F32 with src1, store as floats or quantize (pyggml.quants.nb row codecs)."""
    raise NotImplementedError("only callable from jitted kernels")


@overload(_binary_quant_rows, prefer_literal=True, jit_options=_OPTS)
def _ov_binary_quant_rows(desc, ith, nth, op):
    if not isinstance(op, types.IntegerLiteral):
        return None
    f = _BINARY_ELEMS[op.literal_value]

    def impl(desc, ith, nth, op):
        st = t_type(desc, SRC0)
        bt = t_type(desc, SRC1)
        dt = t_type(desc, DST)
        ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
        ne10, ne11, ne12, ne13 = t_ne4(desc, SRC1)
        nb00, nb01, nb02, nb03 = t_nb4(desc, SRC0)
        nb10, nb11, nb12, nb13 = t_nb4(desc, SRC1)
        nb0, nb1, nb2, nb3 = t_nb4(desc, DST)
        sa, ba, da = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, DST)
        nr = ne1 * ne2 * ne3
        if nr == 0 or ne0 == 0:
            return
        scratch = 4 * ne0 + 64
        if wsize(desc) < (ith + 1) * scratch:
            set_error(desc, ERR_WORK_SIZE)
            return
        tmp = f32_array(wdata(desc) + ith * scratch, ne0)
        srs = t_row_size(desc, SRC0)
        drs = t_row_size(desc, DST)
        s_is_q = st != F32 and st != F16 and st != BF16
        d_is_q = dt != F32 and dt != F16 and dt != BF16
        ir0, ir1 = row_range(nr, ith, nth)
        for r in range(ir0, ir1):
            i1, i2, i3 = row_coords(r, ne1, ne2)
            s = sa + i1 * nb01 + i2 * nb02 + i3 * nb03
            b = ba + (i1 % ne11) * nb11 + (i2 % ne12) * nb12 + (i3 % ne13) * nb13
            d = da + i1 * nb1 + i2 * nb2 + i3 * nb3
            if s_is_q:
                if qnb.dequantize_row(st, u8_array(s, srs), tmp, ne0) != 0:
                    set_error(desc, ERR_UNSUPPORTED)
                    return
            else:
                for i in range(ne0):
                    tmp[i] = _ld(s + i * nb00, st)
            i10 = 0
            for i in range(ne0):
                tmp[i] = f(tmp[i], _ld(b + i10 * nb10, bt))
                i10 += 1
                if i10 == ne10:
                    i10 = 0
            if d_is_q:
                if qnb.quantize_row(dt, tmp, u8_array(d, drs), ne0) != 0:
                    set_error(desc, ERR_UNSUPPORTED)
                    return
            else:
                for i in range(ne0):
                    _st(d + i * nb0, dt, tmp[i])
    return impl


def _bin_quant(node) -> bool:
    a, b = node.src[0], node.src[1]
    fl = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
    if b.type not in fl:
        return False
    if not (TRAITS[a.type].is_quantized or TRAITS[node.type].is_quantized):
        return False
    for t in (a, node):
        if t.type not in fl and (t.type not in QUANT_TYPES or not is_contiguous_rows(t)):
            return False
    return True


def _work_quant(node, n_threads) -> int:
    return (4 * node.ne[0] + 64) * n_threads


BINARY_KERNELS = {("ADD", "ADD1"): B_ADD, "SUB": B_SUB, "MUL": B_MUL, "DIV": B_DIV}
for _op, _code in BINARY_KERNELS.items():
    row_kernel(_op, _binary_rows, _code, supports=_floats)
row_kernel(("ADD", "ADD1"), _binary_quant_rows, B_ADD, supports=_bin_quant, work_size=_work_quant,
           name="k_add_quant")


# --- ADD_ID -----------------------------------------------------------------------------------

def _add_id_supported(node) -> bool:
    return node.type == GGMLType.F32 and node.src[0].type == GGMLType.F32 and \
        node.src[1].type == GGMLType.F32 and node.src[2].type == GGMLType.I32


@kernel("ADD_ID", supports=_add_id_supported)
def k_add_id(desc, ith, nth):
    _add_id_rows(desc, ith, nth)


@_jit
def _add_id_rows(desc, ith, nth):
    ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
    nb00, nb01, nb02, nb03 = t_nb4(desc, SRC0)
    nb10, nb11 = t_nb(desc, SRC1, 0), t_nb(desc, SRC1, 1)
    nb20, nb21 = t_nb(desc, SRC2, 0), t_nb(desc, SRC2, 1)
    nb0, nb1, nb2, nb3 = t_nb4(desc, DST)
    ne11 = t_ne(desc, SRC1, 1)
    sa, ba, ia, da = t_addr(desc, SRC0), t_addr(desc, SRC1), t_addr(desc, SRC2), t_addr(desc, DST)
    nr = ne1 * ne2 * ne3
    if nr == 0:
        return
    packed = nb00 == 4 and nb10 == 4 and nb0 == 4
    ir0, ir1 = row_range(nr, ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = row_coords(r, ne1, ne2)
        row = np.int64(ptr_of(ia + i1 * nb20 + i2 * nb21, np.int32)[0])
        if row < 0 or row >= ne11:
            set_error(desc, ERR_ADD_ID_RANGE)
            return
        s = sa + i1 * nb01 + i2 * nb02 + i3 * nb03
        b = ba + row * nb11
        d = da + i1 * nb1 + i2 * nb2 + i3 * nb3
        if packed:
            x = f32_array(s, ne0)
            y = f32_array(b, ne0)
            z = f32_array(d, ne0)
            for i in range(ne0):
                z[i] = x[i] + y[i]
        else:
            for i in range(ne0):
                ptr_of(d + i * nb0, np.float32)[0] = (ptr_of(s + i * nb00, np.float32)[0]
                                                      + ptr_of(b + i * nb10, np.float32)[0])


# --- GLU: element functions f(x, g, t, alpha, limit) -------------------------------------------

@_jit
def _g_reglu(x, g, t, alpha, limit):
    return x * g if x > _0 else _0


@_jit
def _g_geglu(x, g, t, alpha, limit):
    return _gelu(x, t) * g


@_jit
def _g_swiglu(x, g, t, alpha, limit):
    return _silu(x) * g


@_jit
def _g_swiglu_small(x, g, t, alpha, limit):
    return _silu_small(x) * g


@_jit
def _g_swiglu_oai(x, g, t, alpha, limit):
    return _swiglu_oai(x, g, alpha, limit)


@_jit
def _g_geglu_erf(x, g, t, alpha, limit):
    return _gelu_erf(x) * g


@_jit
def _g_geglu_quick(x, g, t, alpha, limit):
    return _gelu_quick(x) * g


G_REGLU, G_GEGLU, G_SWIGLU, G_SWIGLU_OAI, G_GEGLU_ERF, G_GEGLU_QUICK = range(6)
_GLU_SMALL = {G_SWIGLU: _g_swiglu_small}
_GLU_ELEMS = {G_REGLU: _g_reglu, G_GEGLU: _g_geglu, G_SWIGLU: _g_swiglu,
              G_SWIGLU_OAI: _g_swiglu_oai, G_GEGLU_ERF: _g_geglu_erf, G_GEGLU_QUICK: _g_geglu_quick}


def _glu_rows(desc, ith, nth, op):
    """dst = act(x) * g; x, g are src0 and src1, or the two halves of src0's rows."""
    raise NotImplementedError("only callable from jitted kernels")


@overload(_glu_rows, prefer_literal=True, jit_options=_OPTS)
def _ov_glu_rows(desc, ith, nth, op):
    if not isinstance(op, types.IntegerLiteral):
        return None
    f = _GLU_ELEMS[op.literal_value]
    f16_fast = op.literal_value in (G_SWIGLU, G_GEGLU)
    has_small = op.literal_value in _GLU_SMALL
    fs = _GLU_SMALL.get(op.literal_value, f)

    def impl(desc, ith, nth, op):
        st = t_type(desc, SRC0)
        dt = t_type(desc, DST)
        nc, ne1, ne2, ne3 = t_ne4(desc, DST)
        nb00, nb01, nb02, nb03 = t_nb4(desc, SRC0)
        nb0, nb1, nb2, nb3 = t_nb4(desc, DST)
        sa, da = t_addr(desc, SRC0), t_addr(desc, DST)
        ba = t_addr(desc, SRC1)
        nb10, nb11, nb12, nb13 = nb00, nb01, nb02, nb03
        gt = st
        xo = 0
        go = 0
        if ba != 0:                     # split form: g = src1
            nb10, nb11, nb12, nb13 = t_nb4(desc, SRC1)
            gt = t_type(desc, SRC1)
        else:                           # fused: [x | g], or [g | x] when swapped
            ba = sa
            if param_i32(desc, _W_GLU.swapped) != 0:
                xo = nc * nb00
            else:
                go = nc * nb00
        alpha = param_f32(desc, _W_GLU.alpha)
        limit = param_f32(desc, _W_GLU.limit)
        nr = ne1 * ne2 * ne3
        if nr == 0:
            return
        f32_rows = st == F32 and gt == F32 and dt == F32 and nb00 == 4 and nb10 == 4 and nb0 == 4
        f16_rows = f16_fast and st == F16 and gt == F16 and dt == F16 and nb00 == 2 and nb10 == 2 and nb0 == 2
        ir0, ir1 = row_range(nr, ith, nth)
        for r in range(ir0, ir1):
            i1, i2, i3 = row_coords(r, ne1, ne2)
            xa = sa + i1 * nb01 + i2 * nb02 + i3 * nb03 + xo
            ga = ba + i1 * nb11 + i2 * nb12 + i3 * nb13 + go
            d = da + i1 * nb1 + i2 * nb2 + i3 * nb3
            if f32_rows:
                x = f32_array(xa, nc)
                g = f32_array(ga, nc)
                y = f32_array(d, nc)
                if has_small and _in_exp_range(x, nc):
                    for i in range(nc):
                        y[i] = fs(x[i], g[i], F32, alpha, limit)
                else:
                    for i in range(nc):
                        y[i] = f(x[i], g[i], F32, alpha, limit)
            elif f16_rows:
                xh = u16_array(xa, nc)
                gh = u16_array(ga, nc)
                yh = u16_array(d, nc)
                for i in range(nc):
                    yh[i] = qnb.f32_to_f16(f(qnb.f16_to_f32(xh[i]), qnb.f16_to_f32(gh[i]), F16,
                                             alpha, limit))
            else:
                for i in range(nc):
                    _st(d + i * nb0, dt, f(_ld(xa + i * nb00, st), _ld(ga + i * nb10, gt), st,
                                           alpha, limit))
    return impl


GLU_KERNELS = {"REGLU": G_REGLU, "GEGLU": G_GEGLU, "SWIGLU": G_SWIGLU, "SWIGLU_OAI": G_SWIGLU_OAI,
               "GEGLU_ERF": G_GEGLU_ERF, "GEGLU_QUICK": G_GEGLU_QUICK}
for _op, _code in GLU_KERNELS.items():
    row_kernel(_op, _glu_rows, _code, supports=_floats)
