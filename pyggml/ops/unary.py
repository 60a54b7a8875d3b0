"""Unary elementwise ops.

Two kinds, as in ggml:
- GGML_OP_UNARY ops (ABS, SGN, NEG, STEP, TANH, ELU, RELU, SIGMOID, GELU, GELU_QUICK, SILU,
  HARDSWISH, HARDSIGMOID, EXP, EXPM1, SOFTPLUS, GELU_ERF, XIELU, FLOOR, CEIL, ROUND, TRUNC):
  pyggml registers one OpDef per unary (named as ggml_unary_op_name) with ggml_op="UNARY",
  and packs op_params[0] = the ggml_unary_op value, so a graph inspects the same as ggml's.
- ops that are their own GGML_OP: SQR, SQRT, LOG, SIN, COS, CLAMP, SCALE, LEAKY_RELU.

Values are converted to F32, the function applied, the result rounded to the tensor's type.
References compute in float64 (a correctly rounded oracle for ggml's libm F32 results),
except where ggml's result is *defined* by something else, which the reference reproduces:
- GELU and GELU_QUICK: ggml's CPU reads a 65536-entry F16 lookup table (x rounded to F16,
  the table holds F16(gelu(x))); for F32 GELU, x <= -10 gives 0 and x >= 10 gives x.
  `_gelu_table(kind)` builds the same table (F32 formula as ggml evaluates it, then F16).
- SGN, STEP, RELU, CLAMP, LEAKY_RELU: the comparisons ggml writes (NaN -> 0 / clamp bound).
- ROUND rounds half away from zero (roundf), not half to even.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ParamError
from ..errors import UnsupportedError
from ..errors import describe
from ..tensor import Tensor
from ..tensor import is_contiguous
from ..tensor import is_contiguous_1
from ..tensor import is_contiguous_rows
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import set_param
from ..types import TRAITS
from ..types import GGMLType
from . import cases_common as cc
from .builders import enum_name
from .builders import op_builders
from .case import uniform
from .registry import OpDef
from .registry import Out
from .registry import grad_rule
from .registry import grad_through
from .registry import inplace_of
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

F32, F16, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.BF16
_FLOATS = (F32, F16, BF16)
_F32_F16 = (F32, F16)

# ggml_unary_op values (ggml.h order)
UNARY_OPS = ("ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "SIGMOID", "GELU",
             "GELU_QUICK", "SILU", "HARDSWISH", "HARDSIGMOID", "EXP", "EXPM1", "SOFTPLUS",
             "GELU_ERF", "XIELU", "FLOOR", "CEIL", "ROUND", "TRUNC")
UNARY_OP_ID = {name: i for i, name in enumerate(UNARY_OPS)}

GELU_COEF_A = np.float32(0.044715)
GELU_QUICK_COEF = np.float32(-1.702)
SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)


# --- ggml's F16 lookup tables for GELU / GELU_QUICK ------------------------------------------

_TABLES: dict = {}


def _libm_f32(fn, x: np.ndarray) -> np.ndarray:
    """A libm float function (tanhf, expf) as glibc computes it: correctly rounded in practice,
    which float64 then rounding to float32 reproduces (NumPy's own float32 tanh is not)."""
    return fn(x.astype(np.float64)).astype(np.float32)


def _gelu_f32(x: np.ndarray) -> np.ndarray:
    """ggml_gelu_f32 evaluated in float32, operation by operation as the C code reads."""
    one, half = np.float32(1.0), np.float32(0.5)
    inner = (SQRT_2_OVER_PI * x) * (one + (GELU_COEF_A * x) * x)
    return (half * x) * (one + _libm_f32(np.tanh, inner))


def _gelu_quick_f32(x: np.ndarray) -> np.ndarray:
    one = np.float32(1.0)
    return x * (one / (one + _libm_f32(np.exp, GELU_QUICK_COEF * x)))


def _gelu_table(kind: str = "gelu") -> np.ndarray:
    """ggml_table_gelu_f16 / ggml_table_gelu_quick_f16 as float32 values, indexed by F16 bits."""
    t = _TABLES.get(kind)
    if t is None:
        x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
        with np.errstate(all="ignore"):
            y = (_gelu_f32 if kind == "gelu" else _gelu_quick_f32)(x)
        t = y.astype(np.float16).astype(np.float32)
        t.setflags(write=False)
        _TABLES[kind] = t
    return t


def _f16_bits(x: np.ndarray) -> np.ndarray:
    """x (values of F32 or F16 tensors) rounded to F16 (nearest-even, as F16C) -> bits."""
    with np.errstate(all="ignore"):
        return x.astype(np.float32).astype(np.float16).view(np.uint16)


def _gelu_values(x: np.ndarray, src_type: GGMLType) -> np.ndarray:
    """GELU as ggml's CPU computes it (lookup table; F32 inputs clamp at +-10)."""
    y = _gelu_table("gelu")[_f16_bits(x)].astype(np.float64)
    if src_type == F16:
        return y
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, y))


def _gelu_quick_values(x: np.ndarray, src_type: GGMLType) -> np.ndarray:
    return _gelu_table("gelu_quick")[_f16_bits(x)].astype(np.float64)


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu_erf_values(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))).astype(np.float64))


def _silu_values(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _softplus(x):
    with np.errstate(over="ignore"):
        return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _xielu(x, p):
    xn = np.minimum(x, p.eps)
    return np.where(x > 0.0, p.alpha_p * x * x + p.beta * x,
                    (np.expm1(xn) - x) * p.alpha_n + p.beta * x)


def _exp(x):
    with np.errstate(over="ignore"):
        return np.exp(x)


def _expm1(x):
    with np.errstate(over="ignore"):
        return np.expm1(x)      # ggml: expf(x) - 1.0f (an ulp worse near 0); exact here


# name -> (function (x, src_type, p) -> values, ggml CPU types, has _inplace, public name)
_UNARY_FNS = {
    "ABS": (lambda x, t, p: np.abs(x), _FLOATS, True),
    "SGN": (lambda x, t, p: np.where(x > 0, 1.0, np.where(x < 0, -1.0, 0.0)), _FLOATS, True),
    "NEG": (lambda x, t, p: -x, _FLOATS, True),
    "STEP": (lambda x, t, p: np.where(x > 0, 1.0, 0.0), _FLOATS, True),
    "TANH": (lambda x, t, p: np.tanh(x), _FLOATS, True),
    "ELU": (lambda x, t, p: np.where(x > 0, x, _expm1(np.minimum(x, 0.0))), _FLOATS, True),
    "RELU": (lambda x, t, p: np.where(x > 0, x, 0.0), _FLOATS, True),
    "SIGMOID": (lambda x, t, p: _sigmoid(x), _FLOATS, True),
    "GELU": (lambda x, t, p: _gelu_values(x, t), _F32_F16, True),
    "GELU_QUICK": (lambda x, t, p: _gelu_quick_values(x, t), _F32_F16, True),
    "SILU": (lambda x, t, p: _silu_values(x), _F32_F16, True),
    # fminf/fmaxf as ggml: a NaN input to the clamp gives 0, not NaN
    "HARDSWISH": (lambda x, t, p: x * np.fmin(1.0, np.fmax(0.0, (x + 3.0) / 6.0)), _FLOATS, False),
    "HARDSIGMOID": (lambda x, t, p: np.fmin(1.0, np.fmax(0.0, (x + 3.0) / 6.0)), _FLOATS, False),
    "EXP": (lambda x, t, p: _exp(x), _FLOATS, True),
    "EXPM1": (lambda x, t, p: _expm1(x), _FLOATS, True),
    "SOFTPLUS": (lambda x, t, p: _softplus(x), _FLOATS, True),
    "GELU_ERF": (lambda x, t, p: _gelu_erf_values(x), _F32_F16, True),
    "XIELU": (lambda x, t, p: _xielu(x, p), _FLOATS, False),
    "FLOOR": (lambda x, t, p: np.floor(x), _FLOATS, True),
    "CEIL": (lambda x, t, p: np.ceil(x), _FLOATS, True),
    "ROUND": (lambda x, t, p: _round_half_away(x), _FLOATS, True),
    "TRUNC": (lambda x, t, p: np.trunc(x), _FLOATS, True),
}


def _bytes_io(node: Tensor) -> int:
    return sum(nbytes(s) for s in node.src if s is not None and s is not node) + nbytes(node)


def _flops_1(node: Tensor) -> int:
    return nelements(node)


def _is_inplace(node: Tensor) -> bool:
    return node.view_src is not None


def _need_float(op: str, a: Tensor, allowed) -> None:
    need_type(op, a, allowed, "a")


def _ggml_needs_packed_rows(op: str, node: Tensor) -> None:
    a = node.src[0]
    if not is_contiguous_rows(a):
        raise UnsupportedError(f"{op}: real ggml's CPU needs packed rows of a [{describe(a)} nb={a.nb}]")


# --- GGML_OP_UNARY ------------------------------------------------------------------------------

def _make_unary(name: str) -> OpDef:
    fn, types, _ = _UNARY_FNS[name]
    uid = UNARY_OP_ID[name]
    spec = "op:i32 alpha_n:f32 alpha_p:f32 beta:f32 eps:f32" if name == "XIELU" else "op:i32"

    def infer(srcs, p):
        a = need_src(name, srcs, 0, "a")
        if p.op != uid:
            raise ParamError(f"{name}: op_params[0]={p.op} is not GGML_UNARY_OP_{name} ({uid})")
        _need_float(name, a, types)
        if name != "XIELU":      # ggml_unary_impl asserts packed rows (ggml_xielu does not)
            need(is_contiguous_rows(a), name,
                 f"a must have packed rows (nb0 == {TRAITS[a.type].type_size}), got nb={a.nb}", a)
        return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)

    def ref(node, ins, p):
        with np.errstate(invalid="ignore", over="ignore"):
            # stored through float32, as ggml's F32 result (overflow -> inf, quietly)
            return fn(ins[0], node.src[0].type, p).astype(np.float32)

    def recipe(g, c, s, p, node):
        _ggml_needs_packed_rows(name, node)
        if name == "XIELU":
            if not is_contiguous_1(node.src[0]):
                raise UnsupportedError(f"XIELU: real ggml's CPU needs contiguous rows and planes "
                                       f"[{describe(node.src[0])}]")
            return g.ggml_xielu(c, s[0], _inv_softplus(p.alpha_n - p.beta),
                                _inv_softplus(p.alpha_p), p.beta, p.eps)
        if _is_inplace(node):
            return g.ggml_unary_inplace(c, s[0], uid)
        return g.ggml_unary(c, s[0], uid)

    return register(OpDef(
        name, infer, params=spec, reference=ref, cases=lambda: _unary_cases(name),
        flops=_flops_1, nbytes=_bytes_io, ggml=recipe, ggml_op="UNARY",
        extra={"unary_op": uid}, doc=f"GGML_UNARY_OP_{name} applied elementwise."))


# test_unary's grad mode: the unaries whose cases mark a as a parameter, with ggml's
# grad_eps 15 and its expected values where the derivative jumps (kinks)
_UNARY_GRAD_CASES = {
    "ABS": dict(eps=15.0, expect=(-1.0, 1.0)), "SGN": dict(eps=15.0, expect=(0.0,)),
    "NEG": dict(eps=15.0), "STEP": dict(eps=15.0, expect=(0.0,)),
    "RELU": dict(eps=15.0, expect=(0.0, 1.0)), "SILU": dict(eps=15.0),
    # pyggml: expm1 overflows F32 past 88 and is far from linear over eps 15, so ggml's
    # settings give an infinite gradient; its derivative is checked on [-1, 1] instead
    "EXPM1": dict(eps=0.3, precise=True, init=uniform(-1.0, 1.0)), "SOFTPLUS": dict(eps=15.0)}


def _unary_cases(name: str):
    """test_unary: types f16/f32, v (1: a is a strided view), shapes [128,2,2,2] [5,7,11,13]."""
    if name == "XIELU":
        return _xielu_cases()
    out = []
    hi = 150.0
    grad = _UNARY_GRAD_CASES.get(name)
    for type in ("f16", "f32"):
        for v in (0, 1):
            for ne in ([128, 2, 2, 2], [5, 7, 11, 13]):
                def build(ctx, type=type, v=v, ne=ne):
                    from .view import view_4d
                    if v & 1:
                        big = [ne[0] * 3, ne[1] * 2, ne[2] * 5, ne[3] * 4]
                        a = cc.leaf(ctx, type, big, "a")
                        if grad is not None:
                            set_param(a)
                        a = view_4d(ctx, a, *ne, a.nb[1], a.nb[2], a.nb[3], 0)
                        a.name = "view_of_a"
                    else:
                        a = cc.leaf(ctx, type, ne, "a")
                        if grad is not None:
                            set_param(a)
                    out_ = unary(ctx, a, name)
                    out_.name = "out"
                    return out_
                r = 10.0 if (type == "f16" and name in ("EXP", "EXPM1")) else hi
                out.append(cc.case(name, dict(type=cc.ggml_type(type), ne_a=ne, v=v), build,
                                   init=_uniform(-r, r), grad=grad))
    if BF16 in _UNARY_FNS[name][1]:   # beyond ggml's grid: bf16, and an in-place one
        def build_bf16(ctx):
            return unary(ctx, cc.leaf(ctx, "bf16", [33, 3, 2, 1], "a"), name)
        r = 10.0 if name in ("EXP", "EXPM1") else hi
        out.append(cc.case(name, dict(type=cc.ggml_type("bf16"), ne_a=[33, 3, 2, 1], v=0), build_bf16,
                           init=_uniform(-r, r)))
    if name in ("FLOOR", "CEIL", "ROUND", "TRUNC"):     # test_floor & co: their own grid
        for type in ("f16", "f32"):
            for ne in ([10, 2, 2, 2], [7, 1, 5, 3], [1024, 1024, 1, 1]):
                def build_rounding(ctx, type=type, ne=ne):
                    return unary(ctx, cc.leaf(ctx, type, ne, "a"), name)
                out.append(cc.case(name, dict(type=cc.ggml_type(type), ne=ne), build_rounding,
                                   init=_uniform(-10.0, 10.0),
                                   tags=("slow",) if ne[0] > 100 else ()))
    if _UNARY_FNS[name][2]:
        def build_inplace(ctx):
            return unary_inplace(ctx, cc.leaf(ctx, "f32", [17, 3, 2, 1], "a"), name)
        out.append(cc.case(name, dict(type=cc.ggml_type("f32"), ne_a=[17, 3, 2, 1], v=0, inplace=1),
                           build_inplace, init=_uniform(-5.0, 5.0)))
    return out


def _uniform(lo, hi):
    def init(t, rng):
        return rng.uniform(lo, hi, size=t.ne[::-1])
    return init


def _softplus_f32(x: float) -> float:
    """ggml_compute_softplus_f32 (float32 arithmetic)."""
    x = np.float32(x)
    if x > np.float32(20.0):
        return float(x)
    return float(np.log(np.float32(1.0) + np.exp(x)))


def _inv_softplus(y: float) -> float:
    return y if y > 20.0 else math.log(math.expm1(y))


def _xielu_cases():
    out = []
    for type, ne in (("f32", [10, 5, 4, 3]), ("f16", [10, 5, 4, 3]), ("f32", [512, 16, 1, 1]),
                     ("f16", [512, 16, 1, 1])):
        def build(ctx, type=type, ne=ne):
            return xielu(ctx, cc.leaf(ctx, type, ne, "a"), 4.0, 20.0, 0.5, 0.0000001)
        out.append(cc.case("XIELU", dict(type=cc.ggml_type(type), ne=ne), build))
    return out


UNARY_DEFS = {name: _make_unary(name) for name in UNARY_OPS}


def _as_unary_name(op) -> str:
    return enum_name("unary", op, UNARY_OPS, ("GGML_UNARY_OP_", "UNARY_OP_"))


def unary(ctx, a, op):
    """ggml_unary(ctx, a, op): op is a ggml_unary_op value or name ('SILU')."""
    name = _as_unary_name(op)
    if name == "XIELU":
        raise ParamError("unary: XIELU needs its parameters; use xielu(ctx, a, alpha_n, alpha_p, beta, eps)")
    return UNARY_DEFS[name].build(ctx, [a], dict(op=UNARY_OP_ID[name]))


def unary_inplace(ctx, a, op):
    name = _as_unary_name(op)
    if name == "XIELU":
        raise ParamError("unary_inplace: XIELU has no in-place form")
    t = UNARY_DEFS[name].build(ctx, [a], dict(op=UNARY_OP_ID[name]), hints=dict(inplace=True))
    t.name = f"{a.name} (view)"[:63]
    return t


def abs(ctx, a):  # noqa: A001  (ggml's name)
    return unary(ctx, a, "ABS")


def abs_inplace(ctx, a):
    return unary_inplace(ctx, a, "ABS")


def sgn(ctx, a):
    return unary(ctx, a, "SGN")


def sgn_inplace(ctx, a):
    return unary_inplace(ctx, a, "SGN")


def neg(ctx, a):
    return unary(ctx, a, "NEG")


def neg_inplace(ctx, a):
    return unary_inplace(ctx, a, "NEG")


def step(ctx, a):
    return unary(ctx, a, "STEP")


def step_inplace(ctx, a):
    return unary_inplace(ctx, a, "STEP")


def tanh(ctx, a):
    return unary(ctx, a, "TANH")


def tanh_inplace(ctx, a):
    return unary_inplace(ctx, a, "TANH")


def elu(ctx, a):
    return unary(ctx, a, "ELU")


def elu_inplace(ctx, a):
    return unary_inplace(ctx, a, "ELU")


def relu(ctx, a):
    return unary(ctx, a, "RELU")


def relu_inplace(ctx, a):
    return unary_inplace(ctx, a, "RELU")


def sigmoid(ctx, a):
    return unary(ctx, a, "SIGMOID")


def sigmoid_inplace(ctx, a):
    return unary_inplace(ctx, a, "SIGMOID")


def gelu(ctx, a):
    return unary(ctx, a, "GELU")


def gelu_inplace(ctx, a):
    return unary_inplace(ctx, a, "GELU")


def gelu_erf(ctx, a):
    return unary(ctx, a, "GELU_ERF")


def gelu_erf_inplace(ctx, a):
    return unary_inplace(ctx, a, "GELU_ERF")


def gelu_quick(ctx, a):
    return unary(ctx, a, "GELU_QUICK")


def gelu_quick_inplace(ctx, a):
    return unary_inplace(ctx, a, "GELU_QUICK")


def silu(ctx, a):
    return unary(ctx, a, "SILU")


def silu_inplace(ctx, a):
    return unary_inplace(ctx, a, "SILU")


def hardswish(ctx, a):
    return unary(ctx, a, "HARDSWISH")


def hardsigmoid(ctx, a):
    return unary(ctx, a, "HARDSIGMOID")


def exp(ctx, a):
    return unary(ctx, a, "EXP")


def exp_inplace(ctx, a):
    return unary_inplace(ctx, a, "EXP")


def expm1(ctx, a):
    return unary(ctx, a, "EXPM1")


def expm1_inplace(ctx, a):
    return unary_inplace(ctx, a, "EXPM1")


def softplus(ctx, a):
    return unary(ctx, a, "SOFTPLUS")


def softplus_inplace(ctx, a):
    return unary_inplace(ctx, a, "SOFTPLUS")


def floor(ctx, a):
    return unary(ctx, a, "FLOOR")


def floor_inplace(ctx, a):
    return unary_inplace(ctx, a, "FLOOR")


def ceil(ctx, a):
    return unary(ctx, a, "CEIL")


def ceil_inplace(ctx, a):
    return unary_inplace(ctx, a, "CEIL")


def round(ctx, a):  # noqa: A001
    return unary(ctx, a, "ROUND")


def round_inplace(ctx, a):
    return unary_inplace(ctx, a, "ROUND")


def trunc(ctx, a):
    return unary(ctx, a, "TRUNC")


def trunc_inplace(ctx, a):
    return unary_inplace(ctx, a, "TRUNC")


def xielu(ctx, a, alpha_n, alpha_p, beta, eps):
    """ggml_xielu: op_params hold [op, beta + softplus(alpha_n), softplus(alpha_p), beta, eps]."""
    return UNARY_DEFS["XIELU"].build(ctx, [a], dict(
        op=UNARY_OP_ID["XIELU"], alpha_n=np.float32(beta) + np.float32(_softplus_f32(alpha_n)),
        alpha_p=_softplus_f32(alpha_p), beta=beta, eps=eps))


# --- SQR, SQRT, LOG, SIN, COS (their own GGML_OPs) ------------------------------------------------

def _sqrt(x):
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _log(x):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log(x)


_MATH_FNS = {"SQR": (np.square, "sqr"), "SQRT": (_sqrt, "sqrt"), "LOG": (_log, "log"),
             "SIN": (np.sin, "sin"), "COS": (np.cos, "cos")}
_MATH_DEFAULT_NE = {"SQR": [10, 5, 4, 3], "SQRT": [10, 3, 3, 2], "LOG": [10, 5, 4, 3],
                    "SIN": [10, 2, 2, 2], "COS": [10, 2, 2, 2]}
_MATH_INIT = {"SQRT": (50.0, 100.0), "LOG": (0.9, 1.1), "SIN": (-6.5, 6.5), "COS": (-6.5, 6.5)}


def _math_grad(name: str, ne) -> dict:
    """ggml's grad-mode settings of test_sqr, test_sqrt, test_log, test_sin, test_cos."""
    if name == "SQR":       # ggml: 10% of the expected value of the sum
        return dict(eps=0.1 * 0.25 * int(np.prod(ne)))
    return {"SQRT": dict(eps=20.0, precise=True), "LOG": dict(precise=True),
            "SIN": dict(eps=0.2, precise=True, max_maa=1e-3),
            "COS": dict(eps=0.2, precise=True, max_maa=1e-3)}[name]


def _make_math(name: str) -> OpDef:
    fn, fn_name = _MATH_FNS[name]

    def infer(srcs, p):
        a = need_src(name, srcs, 0, "a")
        _need_float(name, a, _FLOATS)
        return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)

    def ref(node, ins, p):
        return fn(ins[0])

    def recipe(g, c, s, p, node):
        _ggml_needs_packed_rows(name, node)
        f = getattr(g, f"ggml_{fn_name}_inplace" if _is_inplace(node) else f"ggml_{fn_name}")
        return f(c, s[0])

    def cases():
        lo, hi = _MATH_INIT.get(name, (-1.0, 1.0))
        out = []
        for type in ("f16", "f32", "bf16"):
            for ne in (_MATH_DEFAULT_NE[name], [7, 1, 5, 3], [1024, 1024, 1, 1]):
                if type == "bf16" and ne[0] == 1024:
                    continue

                def build(ctx, type=type, ne=ne):
                    a = cc.leaf(ctx, type, ne, "a")
                    set_param(a)          # ggml's test_sqr & co. check the gradient
                    return OPDEF.build(ctx, [a])
                out.append(cc.case(name, dict(type=cc.ggml_type(type), ne=ne), build,
                                   init=_uniform(lo, hi), grad=_math_grad(name, ne),
                                   tags=("slow",) if ne[0] == 1024 else ()))

        def build_perm(ctx):       # pyggml extra: a permuted (non-contiguous) source
            from .view import permute
            return OPDEF.build(ctx, [permute(ctx, cc.leaf(ctx, "f32", [6, 5, 4, 3], "a"), 0, 2, 1, 3)])

        def build_inplace(ctx):
            return OPDEF.build(ctx, [cc.leaf(ctx, "f32", [9, 4, 1, 1], "a")], hints=dict(inplace=True))
        out.append(cc.case(name, dict(type=cc.ggml_type("f32"), ne=[6, 4, 5, 3], permute=[0, 2, 1, 3]),
                           build_perm, init=_uniform(lo, hi)))
        out.append(cc.case(name, dict(type=cc.ggml_type("f32"), ne=[9, 4, 1, 1], inplace=1),
                           build_inplace, init=_uniform(lo, hi)))
        return out

    OPDEF = register(OpDef(name, infer, reference=ref, cases=cases, flops=_flops_1,
                           nbytes=_bytes_io, ggml=recipe, doc=f"ggml_{fn_name}, elementwise."))
    return OPDEF


SQR, SQRT, LOG, SIN, COS = (_make_math(name) for name in ("SQR", "SQRT", "LOG", "SIN", "COS"))


sqr, sqr_inplace = op_builders(SQR, "sqr", view_named=True)
sqrt, sqrt_inplace = op_builders(SQRT, "sqrt", view_named=True)
log, log_inplace = op_builders(LOG, "log", view_named=True)
sin, sin_inplace = op_builders(SIN, "sin", view_named=True)
cos, cos_inplace = op_builders(COS, "cos", view_named=True)


# --- CLAMP ------------------------------------------------------------------------------------

def _infer_clamp(srcs, p):
    a = need_src("CLAMP", srcs, 0, "a")
    _need_float("CLAMP", a, _F32_F16)
    return inplace_of(a)        # ggml_clamp always returns a view of a (computed in place)


def _ref_clamp(node, ins, p):
    x = ins[0]
    y = np.where(x < p.max, x, p.max)        # MIN(x, max): NaN -> max, as ggml's macro
    return np.where(y > p.min, y, p.min)     # MAX(.., min)


def _clamp_cases():
    out = []
    for type in ("f16", "f32"):
        for ne in ([10, 5, 4, 3], [7, 1, 5, 3], [1024, 1024, 1, 1]):
            def build(ctx, type=type, ne=ne):
                return clamp(ctx, cc.leaf(ctx, type, ne, "a"), -0.5, 0.5)
            out.append(cc.case("CLAMP", dict(type=cc.ggml_type(type), ne=ne, min=-0.5, max=0.5), build,
                               tags=("slow",) if ne[0] == 1024 else ()))

    def build2(ctx):
        return clamp(ctx, cc.leaf(ctx, "f32", [33, 3, 1, 1], "a"), 0.1, 0.25)
    out.append(cc.case("CLAMP", dict(type=cc.ggml_type("f32"), ne=[33, 3, 1, 1], min=0.1, max=0.25), build2))
    return out


def _recipe_clamp(g, c, s, p, node):
    _ggml_needs_packed_rows("CLAMP", node)
    return g.ggml_clamp(c, s[0], p.min, p.max)


CLAMP = register(OpDef(
    "CLAMP", _infer_clamp, params="min:f32 max:f32", reference=_ref_clamp, cases=_clamp_cases,
    flops=_flops_1, nbytes=_bytes_io, ggml=_recipe_clamp,
    doc="min(max(a, min), max), written in place (ggml_clamp returns a view of a)."))


def clamp(ctx, a, min, max):  # noqa: A002 (ggml's names)
    t = CLAMP.build(ctx, [a], dict(min=min, max=max))
    t.name = f"{a.name} (view)"[:63]
    return t


# --- SCALE --------------------------------------------------------------------------------------

def _infer_scale(srcs, p):
    a = need_src("SCALE", srcs, 0, "a")
    ts = TRAITS[a.type].type_size
    _need_float("SCALE", a, _FLOATS)
    need(a.nb[0] == ts and a.nb[2] == a.nb[1] * a.ne[1] and a.nb[3] == a.nb[2] * a.ne[2],
         "SCALE", f"a must be padded 1d (packed rows and planes), got nb={a.nb}", a)
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _ref_scale(node, ins, p):
    # ggml: x*s (b == 0) or fma(x, s, b); float64 x*s + b rounds like the fused form
    return ins[0] * p.s + p.b


def _scale_cases():
    out = []
    for ne, s, b, inplace, type in (([10, 10, 10, 10], 2.0, 0.0, False, "f32"),
                                    ([10, 10, 10, 10], 2.0, 1.0, False, "f32"),
                                    ([10, 10, 10, 10], 2.0, 1.0, True, "f32"),
                                    ([100, 10, 10, 10], 2.0, 1.0, False, "f32"),
                                    ([33, 7, 3, 1], 0.125, -0.5, False, "f32"),
                                    ([33, 7, 3, 1], 0.125, -0.5, False, "f16"),   # pyggml only
                                    ([33, 7, 3, 1], 3.0, 0.25, True, "bf16")):    # pyggml only
        def build(ctx, ne=ne, s=s, b=b, inplace=inplace, type=type):
            a = cc.leaf(ctx, type, ne, "a")
            set_param(a)                  # ggml's test_scale checks the gradient
            return (scale_bias_inplace if inplace else scale_bias)(ctx, a, s, b)
        # grad mode: eps 1 (ggml: 0.1). The loss is linear in a, and with a bias the summed
        # loss is large: a 0.1 step is not a whole number of its float32 ulps, so ggml's own
        # CPU fails the bias cases (MAA 0.000488043, which pyggml reproduces to the digit)
        out.append(cc.case("SCALE", dict(type=cc.ggml_type(type), ne=ne, scale=s, bias=b,
                                         inplace=inplace), build, grad=dict(eps=1.0)))
    return out


def _recipe_scale(g, c, s, p, node):
    a = node.src[0]
    if a.type != F32:
        raise UnsupportedError(f"SCALE: real ggml's CPU scales only f32 [{describe(a)}]")
    if not is_contiguous(a):
        raise UnsupportedError(f"SCALE: real ggml's CPU needs a contiguous a [{describe(a)}]")
    fn = g.ggml_scale_bias_inplace if _is_inplace(node) else g.ggml_scale_bias
    return fn(c, s[0], p.s, p.b)


SCALE = register(OpDef(
    "SCALE", _infer_scale, params="s:f32 b:f32", reference=_ref_scale, cases=_scale_cases,
    flops=lambda n: 2 * nelements(n), nbytes=_bytes_io, ggml=_recipe_scale,
    doc="a * s + b (ggml_scale, ggml_scale_bias). pyggml also scales f16/bf16 (ggml's CPU: f32)."))


def scale(ctx, a, s):
    return SCALE.build(ctx, [a], dict(s=s, b=0.0))


def scale_inplace(ctx, a, s):
    t = SCALE.build(ctx, [a], dict(s=s, b=0.0), hints=dict(inplace=True))
    t.name = f"{a.name} (view)"[:63]
    return t


def scale_bias(ctx, a, s, b):
    return SCALE.build(ctx, [a], dict(s=s, b=b))


def scale_bias_inplace(ctx, a, s, b):
    t = SCALE.build(ctx, [a], dict(s=s, b=b), hints=dict(inplace=True))
    t.name = f"{a.name} (view)"[:63]
    return t


# --- LEAKY_RELU ---------------------------------------------------------------------------------

def _infer_leaky(srcs, p):
    a = need_src("LEAKY_RELU", srcs, 0, "a")
    _need_float("LEAKY_RELU", a, _F32_F16)
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _ref_leaky(node, ins, p):
    x = ins[0]
    return np.where(x > 0, x, 0.0) + np.float64(np.float32(p.negative_slope)) * np.where(x < 0, x, 0.0)


def _leaky_cases():
    out = []
    for type in ("f16", "f32"):
        for ne in ([10, 5, 4, 3], [7, 1, 5, 3], [1024, 1024, 1, 1]):
            def build(ctx, type=type, ne=ne):
                return leaky_relu(ctx, cc.leaf(ctx, type, ne, "a"), 0.1, True)
            out.append(cc.case("LEAKY_RELU", dict(type=cc.ggml_type(type), ne_a=ne, negative_slope=0.1),
                               build, tags=("slow",) if ne[0] == 1024 else ()))

    def build2(ctx):
        return leaky_relu(ctx, cc.leaf(ctx, "f32", [19, 4, 2, 1], "a"), 0.3, False)
    out.append(cc.case("LEAKY_RELU", dict(type=cc.ggml_type("f32"), ne_a=[19, 4, 2, 1], negative_slope=0.3,
                                          inplace=0), build2))
    return out


def _recipe_leaky(g, c, s, p, node):
    a = node.src[0]
    if not (is_contiguous_1(a) and is_contiguous_rows(a)):
        raise UnsupportedError(f"LEAKY_RELU: real ggml's CPU needs contiguous rows and planes [{describe(a)}]")
    return g.ggml_leaky_relu(c, s[0], p.negative_slope, _is_inplace(node))


LEAKY_RELU = register(OpDef(
    "LEAKY_RELU", _infer_leaky, params="negative_slope:f32", reference=_ref_leaky,
    cases=_leaky_cases, flops=_flops_1, nbytes=_bytes_io, ggml=_recipe_leaky,
    doc="max(a, 0) + negative_slope * min(a, 0) (ggml_leaky_relu)."))


def leaky_relu(ctx, a, negative_slope, inplace=False):
    t = LEAKY_RELU.build(ctx, [a], dict(negative_slope=negative_slope),
                         hints=dict(inplace=bool(inplace)))
    if inplace:
        t.name = f"{a.name} (view)"[:63]
    return t


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

def _unary_grad(name: str, ignore: tuple = ()):
    return grad_rule(UNARY_DEFS[name], ignore=ignore)


@_unary_grad("ABS")
def _grad_abs(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, mul(g.ctx, sgn(g.ctx, node.src[0]), grad))


def _grad_none(g, node, grad):
    """Piecewise constant (SGN, STEP): no gradient flows (their source is ignored)."""


_unary_grad("SGN", ignore=(0,))(_grad_none)
_unary_grad("STEP", ignore=(0,))(_grad_none)


@_unary_grad("NEG")
def _grad_neg(g, node, grad):
    if g.needs(0):
        g.sub(0, grad)


@_unary_grad("RELU")
def _grad_relu(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, mul(g.ctx, step(g.ctx, node.src[0]), grad))


_grad_silu = _unary_grad("SILU")(grad_through("silu_back", "d silu(a) = silu_back(grad, a)."))


@_unary_grad("EXP")
def _grad_exp(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, mul(g.ctx, node, grad))


@_unary_grad("EXPM1")
def _grad_expm1(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, mul(g.ctx, grad, exp(g.ctx, node.src[0])))


@_unary_grad("SOFTPLUS")
def _grad_softplus(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, mul(g.ctx, grad, sigmoid(g.ctx, node.src[0])))


@_unary_grad("TANH")
def _grad_tanh(g, node, grad):
    """Beyond ggml's list: d tanh = (1 - y^2) dy."""
    mul, sub = g.fn('mul', 'sub')
    if g.needs(0):
        g.add(0, sub(g.ctx, grad, mul(g.ctx, grad, sqr(g.ctx, node))))


@_unary_grad("SIGMOID")
def _grad_sigmoid(g, node, grad):
    """Beyond ggml's list: d sigmoid = y (1 - y) dy."""
    mul, sub = g.fn('mul', 'sub')
    if g.needs(0):
        yg = mul(g.ctx, node, grad)
        g.add(0, sub(g.ctx, yg, mul(g.ctx, yg, node)))


@grad_rule(SQR)
def _grad_sqr(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, scale(g.ctx, mul(g.ctx, node.src[0], grad), 2.0))


@grad_rule(SQRT)
def _grad_sqrt(g, node, grad):
    div = g.fn('div')
    if g.needs(0):
        g.add(0, scale(g.ctx, div(g.ctx, grad, node), 0.5))


_grad_log = grad_rule(LOG)(grad_through("div", "d log(a) = grad / a."))


@grad_rule(SIN)
def _grad_sin(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.add(0, mul(g.ctx, grad, cos(g.ctx, node.src[0])))


@grad_rule(COS)
def _grad_cos(g, node, grad):
    mul = g.fn('mul')
    if g.needs(0):
        g.sub(0, mul(g.ctx, grad, sin(g.ctx, node.src[0])))


@grad_rule(SCALE)
def _grad_scale(g, node, grad):
    if g.needs(0):      # the bias b is a constant: only s scales the gradient
        g.add(0, scale(g.ctx, grad, SCALE.p(node).s))
