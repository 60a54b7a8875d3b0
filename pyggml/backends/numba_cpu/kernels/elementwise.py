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
from ....quants.nb_scalar import cast_intrinsic
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
from ..desc import t_nelements
from ..desc import t_row
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
# element functions of the op tables (lambdas): compiled into each kernel, which is cached
_elem = numba.njit(**_OPTS)

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


_as_i32 = cast_intrinsic(types.float32, types.int32, lambda b, x: b.bitcast(x, ir.IntType(32)),
                         "Bits of a float32 as int32.")


def _low32(b, v):
    w = v.type.width
    v = b.trunc(v, ir.IntType(32)) if w > 32 else b.zext(v, ir.IntType(32)) if w < 32 else v
    return b.bitcast(v, ir.FloatType())


_as_f32 = cast_intrinsic(types.Integer, types.float32, _low32,
                         "The low 32 bits of an integer as a float32.")


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
def _clamp(x, lo, hi):
    y = x if x < hi else hi                # MAX(MIN(x, max), min): NaN -> max, as ggml's macros
    return y if y > lo else lo


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


def _row_driver(elems):
    """Decorator: `make(f, code) -> impl` becomes `rows(desc, ith, nth, op)`, an overload that
    Numba specialises per constant op code, with f = elems[code] (see the module's notes)."""
    def deco(make):
        def rows(desc, ith, nth, op):
            raise NotImplementedError("only callable from jitted kernels")
        rows.__name__, rows.__doc__ = make.__name__, make.__doc__

        @overload(rows, prefer_literal=True, jit_options=_OPTS)
        def _ov(desc, ith, nth, op):
            if not isinstance(op, types.IntegerLiteral):
                return None
            return make(elems[op.literal_value], op.literal_value)
        return rows
    return deco


# --- unary: element functions  f(x, t, p) -> float32 ------------------------------------------
# t: the source's ggml type; p: op_params words 0..4 read as floats (for GGML_OP_UNARY word 0
# is the op id and XIELU's parameters are words 1..4). One table: op name -> element function;
# the kernels (k_<op>) and the overload's op codes (the table's order) are generated from it.

UNARY = {
    "ABS": lambda x, t, p: abs(x),
    "SGN": lambda x, t, p: _1 if x > _0 else (-_1 if x < _0 else _0),
    "NEG": lambda x, t, p: -x,
    "STEP": lambda x, t, p: _1 if x > _0 else _0,
    "TANH": lambda x, t, p: np.float32(math.tanh(x)),
    "ELU": lambda x, t, p: x if x > _0 else np.float32(math.expm1(x)),
    "RELU": lambda x, t, p: x if x > _0 else _0,
    "SIGMOID": lambda x, t, p: _sigmoid(x),
    "GELU": lambda x, t, p: _gelu(x, t),
    "GELU_QUICK": lambda x, t, p: _gelu_quick(x),
    "SILU": lambda x, t, p: _silu(x),
    "HARDSWISH": lambda x, t, p: x * _hardsigmoid(x),
    "HARDSIGMOID": lambda x, t, p: _hardsigmoid(x),
    "EXP": lambda x, t, p: np.float32(math.exp(x)),
    "EXPM1": lambda x, t, p: np.float32(math.expm1(x)),
    "SOFTPLUS": lambda x, t, p: _softplus(x),
    "GELU_ERF": lambda x, t, p: _gelu_erf(x),
    "XIELU": lambda x, t, p: _xielu(x, p[1], p[2], p[3], p[4]),
    "FLOOR": lambda x, t, p: np.float32(np.floor(x)),
    "CEIL": lambda x, t, p: np.float32(np.ceil(x)),
    "ROUND": lambda x, t, p: _round_away(x),
    "TRUNC": lambda x, t, p: np.float32(np.trunc(x)),
    "SQR": lambda x, t, p: x * x,
    "SQRT": lambda x, t, p: _sqrt(x),
    "LOG": lambda x, t, p: _log(x),
    "SIN": lambda x, t, p: np.float32(math.sin(x)),
    "COS": lambda x, t, p: np.float32(math.cos(x)),
    "CLAMP": lambda x, t, p: _clamp(x, p[0], p[1]),
    "SCALE": lambda x, t, p: _fma(x, p[0], p[1]),       # x*s + b rounded once (ggml_vec_mad1_f32)
    "LEAKY_RELU": lambda x, t, p: (x if x > _0 else _0) + p[0] * (x if x < _0 else _0),
}
_U = {name: code for code, name in enumerate(UNARY)}
_UNARY_ELEMS = [_elem(f) for f in UNARY.values()]

# ops with a dedicated packed-F16 loop (the others read F16 through the generic strided loop:
# slower, but each fast loop costs compile time in every kernel that has it)
_F16_FAST_UNARY = {_U["SILU"], _U["GELU"], _U["GELU_QUICK"], _U["SCALE"]}

# exp-based ops with a cheaper element function for rows whose |x| <= 87 (ggml's expf takes
# the same early exit per vector); rows with larger values use the full one
_UNARY_SMALL = {_U["SILU"]: _elem(lambda x, t, p: _silu_small(x)),
                _U["SIGMOID"]: _elem(lambda x, t, p: _sigmoid_small(x))}


@_row_driver(_UNARY_ELEMS)
def _unary_rows(f, code):
    """dst = f(src0) row by row (f chosen by the constant op code; see the overload)."""
    f16_fast = code in _F16_FAST_UNARY
    has_small = code in _UNARY_SMALL
    fs = _UNARY_SMALL.get(code, f)

    def impl(desc, ith, nth, op):
        st, dt = t_type(desc, SRC0), t_type(desc, DST)
        ne0, ne1, ne2, ne3 = t_ne4(desc, DST)
        nb00, nb0 = t_nb(desc, SRC0, 0), t_nb(desc, DST, 0)
        p = (param_f32(desc, 0), param_f32(desc, 1), param_f32(desc, 2), param_f32(desc, 3),
             param_f32(desc, 4))
        f32_rows = st == F32 and dt == F32 and nb00 == 4 and nb0 == 4
        f16_rows = f16_fast and st == F16 and dt == F16 and nb00 == 2 and nb0 == 2
        if ne1 * ne2 * ne3 == 0:
            return
        ir0, ir1 = row_range(ne1 * ne2 * ne3, ith, nth)
        for r in range(ir0, ir1):
            i1, i2, i3 = row_coords(r, ne1, ne2)
            s, d = t_row(desc, SRC0, i1, i2, i3), t_row(desc, DST, i1, i2, i3)
            if f32_rows:
                x = f32_array(s, ne0)
                y = f32_array(d, ne0)
                if has_small and _in_exp_range(x, ne0):
                    for i in range(ne0):
                        y[i] = fs(x[i], F32, p)
                else:
                    for i in range(ne0):
                        y[i] = f(x[i], F32, p)
            elif f16_rows:
                xh = u16_array(s, ne0)
                yh = u16_array(d, ne0)
                for i in range(ne0):
                    yh[i] = qnb.f32_to_f16(f(qnb.f16_to_f32(xh[i]), F16, p))
            else:
                for i in range(ne0):
                    _st(d + i * nb0, dt, f(_ld(s + i * nb00, st), st, p))
    return impl


# One small kernel per op, cached under its own name (k_<op>), generated from the table.
for _op, _code in _U.items():
    row_kernel(_op, _unary_rows, _code, supports=_floats)


# --- binary -----------------------------------------------------------------------------------

BINARY = {"ADD": lambda a, b: a + b, "SUB": lambda a, b: a - b, "MUL": lambda a, b: a * b,
          "DIV": lambda a, b: a / b}
_B = {name: code for code, name in enumerate(BINARY)}
_BINARY_ELEMS = [_elem(f) for f in BINARY.values()]


@numba.njit(inline="always", **_OPTS)
def _bcast_row(desc, r):
    """Addresses of dst row r and of the src0 and src1 rows it combines: src1 repeated into
    src0 (ggml's can_repeat broadcast), all through their strides."""
    i1, i2, i3 = row_coords(r, t_ne(desc, DST, 1), t_ne(desc, DST, 2))
    return (t_row(desc, SRC0, i1, i2, i3),
            t_row(desc, SRC1, i1 % t_ne(desc, SRC1, 1), i2 % t_ne(desc, SRC1, 2), i3 % t_ne(desc, SRC1, 3)),
            t_row(desc, DST, i1, i2, i3))


@_row_driver(_BINARY_ELEMS)
def _binary_rows(f, code):
    """dst = src0 op src1, src1 repeated into src0 (ggml's can_repeat broadcast)."""
    f16_fast = code in (_B["ADD"], _B["MUL"])

    def impl(desc, ith, nth, op):
        st, bt, dt = t_type(desc, SRC0), t_type(desc, SRC1), t_type(desc, DST)
        ne0, nb00, nb10, nb0 = t_ne(desc, DST, 0), t_nb(desc, SRC0, 0), t_nb(desc, SRC1, 0), t_nb(desc, DST, 0)
        ne10, nr = t_ne(desc, SRC1, 0), t_ne(desc, DST, 1) * t_ne(desc, DST, 2) * t_ne(desc, DST, 3)
        if nr == 0 or ne0 == 0 or t_nelements(desc, SRC1) == 0:
            return
        f32_rows = st == F32 and bt == F32 and dt == F32 and nb00 == 4 and nb0 == 4 and nb10 == 4
        f16_rows = (f16_fast and st == F16 and bt == F16 and dt == F16 and nb00 == 2 and nb0 == 2 and nb10 == 2
                    and ne10 == ne0)
        ir0, ir1 = row_range(nr, ith, nth)
        for r in range(ir0, ir1):
            s, b, d = _bcast_row(desc, r)
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


@_row_driver(_BINARY_ELEMS)
def _binary_quant_rows(f, code):
    """src0 and/or dst quantized (add_cast, add1): dequantize a row into this thread's scratch,
    combine in F32 with src1, store as floats or quantize (pyggml.quants.nb row codecs)."""

    def impl(desc, ith, nth, op):
        st, bt, dt = t_type(desc, SRC0), t_type(desc, SRC1), t_type(desc, DST)
        ne0, nb00, nb10, nb0 = t_ne(desc, DST, 0), t_nb(desc, SRC0, 0), t_nb(desc, SRC1, 0), t_nb(desc, DST, 0)
        ne10, nr = t_ne(desc, SRC1, 0), t_ne(desc, DST, 1) * t_ne(desc, DST, 2) * t_ne(desc, DST, 3)
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
            s, b, d = _bcast_row(desc, r)
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


for _op, _code in _B.items():
    row_kernel(("ADD", "ADD1") if _op == "ADD" else _op, _binary_rows, _code, supports=_floats)
row_kernel(("ADD", "ADD1"), _binary_quant_rows, _B["ADD"], supports=_bin_quant,
           work_size=_work_quant, name="k_add_quant")


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

GLU = {
    "REGLU": lambda x, g, t, alpha, limit: x * g if x > _0 else _0,
    "GEGLU": lambda x, g, t, alpha, limit: _gelu(x, t) * g,
    "SWIGLU": lambda x, g, t, alpha, limit: _silu(x) * g,
    "SWIGLU_OAI": lambda x, g, t, alpha, limit: _swiglu_oai(x, g, alpha, limit),
    "GEGLU_ERF": lambda x, g, t, alpha, limit: _gelu_erf(x) * g,
    "GEGLU_QUICK": lambda x, g, t, alpha, limit: _gelu_quick(x) * g,
}
_G = {name: code for code, name in enumerate(GLU)}
_GLU_ELEMS = [_elem(f) for f in GLU.values()]
_GLU_SMALL = {_G["SWIGLU"]: _elem(lambda x, g, t, alpha, limit: _silu_small(x) * g)}


@_row_driver(_GLU_ELEMS)
def _glu_rows(f, code):
    """dst = act(x) * g; x, g are src0 and src1, or the two halves of src0's rows."""
    f16_fast = code in (_G["SWIGLU"], _G["GEGLU"])
    has_small = code in _GLU_SMALL
    fs = _GLU_SMALL.get(code, f)

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


for _op, _code in _G.items():
    row_kernel(_op, _glu_rows, _code, supports=_floats)
