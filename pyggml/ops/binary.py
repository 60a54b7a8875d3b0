"""Binary elementwise ops: ADD, SUB, MUL, DIV (src1 broadcast into src0), ADD1, ADD_ID.

Semantics follow ggml (ggml.c constructors, ggml-cpu binary-ops.cpp / ops.cpp):
- `op(a, b)`: b repeats whole into a (`can_repeat(b, a)`: every a.ne[i] is a multiple of
  b.ne[i]); the result has a's type and shape; `_inplace` variants return a view of a.
- Values are converted to F32, combined in F32 and rounded to the result type, so an
  F16 or BF16 result is round(round_f32(a op b)). The reference computes a op b in float64
  and stores through float32: for +, -, *, / that double rounding equals ggml's F32 result
  bit for bit (float64 carries more than 2*24+2 bits).
- Type combinations are the ones ggml's CPU backend computes (src0, src1 -> dst):
  f32,f32->f32  f16,f16->f16  bf16,bf16->bf16  f16,f32->f16  bf16,f32->bf16, and through
  `add_cast` also f16,f32->f32  bf16,f32->f32 and quantized src0 (+ f32) -> any float type.
- pyggml reads sources with any strides (ggml's CPU needs src0 rows packed); the ggml
  recipes refuse (UnsupportedError) what real ggml's CPU would abort on.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..errors import TypeError_
from ..errors import UnsupportedError
from ..errors import describe
from ..tensor import Tensor
from ..tensor import are_same_shape
from ..tensor import can_repeat
from ..tensor import can_repeat_rows
from ..tensor import is_empty
from ..tensor import is_matrix
from ..tensor import is_scalar
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import set_param
from ..types import QUANT_TYPES
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type
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

F32, F16, BF16, I32 = GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.I32
_FLOATS = (F32, F16, BF16)

# (src0, src1) -> dst = src0's type: what ggml's CPU binary_op computes without a cast
_BIN_TYPES = {(F32, F32), (F16, F16), (BF16, BF16), (F16, F32), (BF16, F32)}
# add_cast on float sources: (src0, src1, dst) the CPU computes
_CAST_TYPES = {(F16, F32, F32), (BF16, F32, F32), (F16, F32, F16), (BF16, F32, BF16),
               (F16, F16, F16), (BF16, BF16, BF16)}


def _tile(b: np.ndarray, shape) -> np.ndarray:
    """b (ne3, ne2, ne1, ne0) repeated whole into shape (ggml's broadcast: a[i] meets b[i % b.ne])."""
    if 0 in shape:                 # an empty a: nothing to meet (b may be empty in other dims)
        return np.zeros(shape, dtype=b.dtype)
    reps = [s // max(t, 1) for s, t in zip(shape, b.shape)]
    return np.tile(b, reps) if any(r != 1 for r in reps) else b


def _rows_packed(t: Tensor) -> bool:
    return t.ne[0] == 1 or t.nb[0] == TRAITS[t.type].type_size


def _is_inplace(node: Tensor) -> bool:
    return node.view_src is not None


def _unsupported(op: str, why: str, *tensors):
    raise UnsupportedError(f"{op}: real ggml's CPU backend {why} "
                           f"[{', '.join(describe(t) for t in tensors)}]")


def _bytes_io(node: Tensor) -> int:
    return sum(nbytes(s) for s in node.src if s is not None and s is not node) + nbytes(node)


def _flops_1(node: Tensor) -> int:
    return nelements(node)


# --- ADD, SUB, MUL, DIV ------------------------------------------------------------------

def _make_infer(name: str):
    def infer(srcs, p):
        a = need_src(name, srcs, 0, "a")
        b = need_src(name, srcs, 1, "b")
        if not (can_repeat(b, a)):
            fail(name,
                 f"b ne={b.ne} cannot be broadcast into a ne={a.ne} (each a.ne[i] must be a "
                 f"multiple of b.ne[i])", a, b)
        need(not is_empty(b) or is_empty(a), name, "b is empty but a is not", a, b)
        cast = getattr(p, "cast_type", None)
        inplace = getattr(p, "inplace", False)
        if cast is None:
            if (a.type, b.type) not in _BIN_TYPES:
                raise TypeError_(f"{name}: no {a.type.tname} {name.lower()} {b.type.tname} "
                                 f"(supported a, b: f32,f32 f16,f16 bf16,bf16 f16,f32 bf16,f32) "
                                 f"[a={a.name!r} b={b.name!r}]")
            return inplace_of(a) if inplace else Out(a.type, a.ne)
        # ggml_add_cast
        if not (can_repeat_rows(b, a)):
            fail(name,
                 f"add_cast needs b rows as long as a's (b.ne0={b.ne[0]}, a.ne0={a.ne[0]})", a, b)
        if a.type in QUANT_TYPES:
            need_type(name, b, (F32,), "b (add_cast of a quantized a)")
            if not (cast in _FLOATS or cast in QUANT_TYPES):
                fail(name,
                     f"add_cast to {cast.tname} is not supported", a, cls=TypeError_)
            if TRAITS[cast].is_quantized:
                if a.ne[0] % TRAITS[cast].blck_size != 0:
                    fail(name,
                         f"rows of {a.ne[0]} values are not whole {cast.tname} blocks", a)
        else:
            if a.type not in (F16, BF16):
                fail(name,
                     f"add_cast needs a quantized, f16 or bf16 a (ggml_add_cast), got {a.type.tname}",
                     a, cls=TypeError_)
            if (a.type, b.type, cast) not in _CAST_TYPES:
                fail(name,
                     f"add_cast {a.type.tname} + {b.type.tname} -> {cast.tname} is not supported",
                     a, b, cls=TypeError_)
        return Out(cast, a.ne)
    return infer


def _make_ref(fn):
    def ref(node, ins, p):
        a = ins[0]
        return fn(a, _tile(ins[1], a.shape))
    return ref


def _check_ggml_binary(name, node):
    a, b = node.src[0], node.src[1]
    if not _rows_packed(a):
        _unsupported(name, "needs src0 rows packed (nb0 == type size)", a)
    if a.type in QUANT_TYPES and (not are_same_shape(a, b) or b.nb[0] != 4):
        _unsupported(name, "adds a quantized src0 only to a same-shape f32 src1 with packed rows", a, b)


def _make_recipe(name: str, fn_name: str):
    def recipe(g, c, s, p, node):
        _check_ggml_binary(name, node)
        if node.type != node.src[0].type or (node.src[0].type in QUANT_TYPES):
            return g.ggml_add_cast(c, s[0], s[1], int(node.type))
        if _is_inplace(node):
            return getattr(g, f"ggml_{fn_name}_inplace")(c, s[0], s[1])
        return getattr(g, f"ggml_{fn_name}")(c, s[0], s[1])
    return recipe


def _bin_bcast_cases(name: str, fn):
    """test-backend-ops' test_bin_bcast grid (vars: type, ne, nr, nf, perm1, src_overlap)."""
    mul_div = name in ("MUL", "DIV")
    init = (lambda t, rng: rng.uniform(0.9, 1.1, size=t.ne[::-1])) if mul_div else None
    inplace_fn = globals()[f"{fn.__name__}_inplace"]

    def mk(type, ne, nr, nf=1, perm1=False, src_overlap=False, op=fn, type_b=None):
        grad_case = (op is add and list(nr) == [1, 1, 1, 1] and nf == 1 and not perm1
                     and not src_overlap and type_b is None)

        def build(ctx):
            from .view import permute
            from .view import view_4d
            a = cc.leaf(ctx, type, [ne[i] * nr[i] for i in range(4)], "a")
            tb = type_b or type
            bs = []
            for i in range(nf):
                if perm1:
                    b = cc.leaf(ctx, tb, [ne[1], ne[2], ne[0], ne[3]], f"b{i}")
                    b = permute(ctx, b, 1, 2, 0, 3)
                elif src_overlap:
                    b = view_4d(ctx, a, ne[0], ne[1], ne[2], 2 * (ne[3] // 3),
                                a.nb[1], a.nb[2], a.nb[3], (ne[3] // 3) * a.nb[3])
                else:
                    b = cc.leaf(ctx, tb, ne)
                b.name = f"b{i}"
                bs.append(b)
            if grad_case:       # ggml: the backward pass is checked for same-shape ADD only
                set_param(a)
                set_param(bs[0])
            out = (view_4d(ctx, a, ne[0], ne[1], ne[2], 2 * (ne[3] // 3),
                           a.nb[1], a.nb[2], a.nb[3], 0) if src_overlap else a)
            for b in bs:
                out = op(ctx, out, b)
            out.name = "out"
            return out
        n = np.prod([ne[i] * nr[i] for i in range(4)])
        tags = ("slow",) if n * nf > 300_000 else ()
        v = dict(type=cc.ggml_type(type), ne=list(ne), nr=list(nr), nf=nf, perm1=perm1,
                 src_overlap=src_overlap)
        if op is inplace_fn:      # not in ggml's string (its inplace case prints the same)
            v["inplace"] = True
        if type_b:                # pyggml extra: mixed types (f16/bf16 a, f32 b)
            v["type_b"] = cc.ggml_type(type_b)
        return cc.case(name, v, build, init=init, tags=tags)

    out = []
    for type in ("f16", "f32"):
        for perm1 in (False, True):
            for ne, nr in (([1, 1, 8, 1], [1, 1, 1, 1]), ([1, 1, 1, 1], [32, 1, 1, 1]),
                           ([1, 1, 320, 320], [1, 1, 1, 1]), ([10, 5, 1, 1], [1, 1, 1, 1]),
                           ([10, 5, 4, 1], [1, 1, 1, 1]), ([10, 5, 4, 3], [1, 1, 1, 1]),
                           ([10, 5, 4, 3], [2, 1, 1, 1]), ([10, 5, 4, 3], [1, 2, 1, 1]),
                           ([10, 5, 4, 3], [1, 1, 2, 1]), ([10, 5, 4, 3], [1, 1, 1, 2]),
                           ([10, 5, 4, 3], [1, 1, 2, 2]), ([10, 5, 4, 3], [1, 2, 2, 2]),
                           ([10, 5, 4, 3], [2, 2, 2, 2])):
                out.append(mk(type, ne, nr, perm1=perm1))
        for ne in ([10, 5, 4, 6], [10, 5, 4, 5], [1, 1, 120, 120], [1, 1, 4, 320]):
            out.append(mk(type, ne, [1, 1, 1, 1], src_overlap=True))
        out.append(mk(type, [1, 1, 65536, 1], [256, 1, 1, 1]))
        for ne, nr in (([1280, 1, 1, 1], [1, 1, 1, 1]), ([1280, 1, 1, 1], [1, 16, 16, 1]),
                       ([1280, 16, 16, 1], [1, 1, 1, 1]), ([1280, 1, 1, 1], [1, 256, 1, 1]),
                       ([1, 1, 1280, 1], [16, 16, 1, 1]), ([16, 16, 1280, 1], [1, 1, 1, 1]),
                       ([1, 1, 1920, 1], [16, 16, 1, 1]), ([1, 1, 2560, 1], [16, 16, 1, 1]),
                       ([1, 1, 1280, 1], [32, 32, 1, 1]), ([1, 1, 1920, 1], [32, 32, 1, 1]),
                       ([1, 1, 640, 1], [32, 32, 1, 1]), ([5120, 1, 1, 1], [1, 256, 1, 1]),
                       ([640, 1, 1, 1], [1, 1, 1, 1]), ([64, 262144, 1, 1], [1, 1, 1, 1])):
            out.append(mk(type, ne, nr))
    # beyond ggml's grid: broadcast in every dim at once, ne0 not a SIMD multiple, bf16,
    # and the mixed pairs ggml's CPU computes (f16/bf16 a with f32 b)
    for type in ("f32", "bf16"):
        out.append(mk(type, [7, 3, 2, 2], [3, 2, 3, 2]))
        out.append(mk(type, [33, 1, 3, 1], [1, 5, 1, 2], perm1=True))
    for type in ("f16", "bf16"):
        out.append(mk(type, [10, 5, 4, 3], [2, 1, 2, 1], type_b="f32"))
        out.append(mk(type, [1, 1, 8, 1], [1, 1, 1, 1], perm1=True, type_b="f32"))
    # inplace chains and fused chains (nf > 1)
    out.append(mk("f32", [16, 5, 4, 3], [1, 1, 1, 1], nf=16, op=inplace_fn))
    if name == "ADD":
        for ne, nr, nf in (([10, 5, 4, 3], [2, 1, 1, 1], 2), ([16, 5, 4, 3], [1, 2, 1, 1], 3),
                           ([10, 5, 4, 3], [1, 1, 2, 1], 4), ([16, 5, 4, 3], [1, 1, 1, 2], 5),
                           ([10, 5, 4, 3], [1, 1, 2, 2], 6), ([10, 5, 4, 3], [1, 2, 2, 2], 7),
                           ([16, 5, 4, 3], [2, 2, 2, 2], 8), ([16, 5, 4, 3], [1, 1, 1, 1], 16)):
            out.append(mk("f32", ne, nr, nf=nf))
        out.append(mk("f32", [4096, 1, 1, 1], [1, 1, 1, 1]))
        out.append(mk("f32", [4096, 1, 1, 1], [1, 512, 1, 1]))
        out[-1].tags = ("slow",)
        out += _add_cast_cases()
    return out


def _add_cast_cases():
    """ggml_add_cast: f16/bf16/quantized a + f32 b stored as another type."""
    out = []
    for ta, tb, td, ne, nr in (("f16", "f32", "f32", [10, 5, 4, 3], [1, 1, 1, 1]),
                               ("f16", "f32", "f32", [33, 1, 3, 1], [1, 4, 1, 2]),
                               ("bf16", "f32", "f32", [10, 5, 4, 3], [1, 2, 1, 1]),
                               ("bf16", "f32", "bf16", [10, 5, 4, 3], [1, 1, 1, 1]),
                               ("q8_0", "f32", "f32", [64, 3, 2, 1], [1, 1, 1, 1]),
                               ("q4_0", "f32", "f16", [64, 3, 2, 1], [1, 1, 1, 1]),
                               ("q4_0", "f32", "q4_0", [96, 3, 1, 1], [1, 1, 1, 1]),
                               ("q5_1", "f32", "q8_0", [32, 5, 1, 1], [1, 1, 1, 1])):
        def build(ctx, ta=ta, tb=tb, td=td, ne=ne, nr=nr):
            a = cc.leaf(ctx, ta, [ne[i] * nr[i] for i in range(4)], "a")
            b = cc.leaf(ctx, tb, a.ne if as_type(ta) in QUANT_TYPES else ne, "b")
            return add_cast(ctx, a, b, td)
        quant = as_type(td) in QUANT_TYPES
        # requantized results: ggml's CPU quantizer may round a rare tie the other way
        out.append(cc.case("ADD", dict(type_a=cc.ggml_type(ta), type_b=cc.ggml_type(tb),
                                       type_dst=cc.ggml_type(td), ne=ne, nr=nr), build,
                           max_nmse=1e-5 if quant else None))
    return out


def _register_binary(name: str, fn_name: str, np_fn, doc: str) -> OpDef:
    return register(OpDef(
        name, _make_infer(name), reference=_make_ref(np_fn),
        cases=lambda: _bin_bcast_cases(name, globals()[fn_name]),
        flops=_flops_1, nbytes=_bytes_io, ggml=_make_recipe(name, fn_name), doc=doc,
        extra={"binary": fn_name}))


ADD = _register_binary("ADD", "add", np.add, "a + b, b broadcast into a (ggml_add, ggml_add_cast).")
SUB = _register_binary("SUB", "sub", np.subtract, "a - b, b broadcast into a (ggml_sub).")
MUL = _register_binary("MUL", "mul", np.multiply, "a * b, b broadcast into a (ggml_mul).")
DIV = _register_binary("DIV", "div", np.divide, "a / b, b broadcast into a (ggml_div).")


def _view_name(t: Tensor, a: Tensor) -> Tensor:
    t.name = f"{a.name} (view)"[:63]
    return t


def add(ctx, a, b):
    return ADD.build(ctx, [a, b])


def add_inplace(ctx, a, b):
    return _view_name(ADD.build(ctx, [a, b], hints=dict(inplace=True)), a)


def add_cast(ctx, a, b, type):
    """ggml_add_cast: a + b stored as `type` (a quantized, f16 or bf16; b rows as long as a's)."""
    return ADD.build(ctx, [a, b], hints=dict(cast_type=as_type(type)))


def sub(ctx, a, b):
    return SUB.build(ctx, [a, b])


def sub_inplace(ctx, a, b):
    return _view_name(SUB.build(ctx, [a, b], hints=dict(inplace=True)), a)


def mul(ctx, a, b):
    return MUL.build(ctx, [a, b])


def mul_inplace(ctx, a, b):
    return _view_name(MUL.build(ctx, [a, b], hints=dict(inplace=True)), a)


def div(ctx, a, b):
    return DIV.build(ctx, [a, b])


def div_inplace(ctx, a, b):
    return _view_name(DIV.build(ctx, [a, b], hints=dict(inplace=True)), a)


# --- ADD1: a + scalar b ----------------------------------------------------------------------

_ADD1_TYPES = {(F32, F32), (F16, F16), (F16, F32), (BF16, BF16), (BF16, F32)} | \
    {(q, F32) for q in QUANT_TYPES}


def _infer_add1(srcs, p):
    a = need_src("ADD1", srcs, 0, "a")
    b = need_src("ADD1", srcs, 1, "b")
    need(is_scalar(b), "ADD1", f"b must be a scalar (one element), got ne={b.ne}", a, b)
    ts = TRAITS[a.type].type_size
    need(a.nb[0] == ts and a.nb[2] == a.nb[1] * a.ne[1] and a.nb[3] == a.nb[2] * a.ne[2],
         "ADD1", f"a must be padded 1d (packed rows, packed planes), got nb={a.nb}", a)
    if (a.type, b.type) not in _ADD1_TYPES:
        raise TypeError_(f"ADD1: no {a.type.tname} + scalar {b.type.tname} (supported: "
                         f"f32+f32, f16+f16/f32, bf16+bf16/f32, quantized+f32) "
                         f"[a={a.name!r} b={b.name!r}]")
    return inplace_of(a) if getattr(p, "inplace", False) else Out(a.type, a.ne)


def _ref_add1(node, ins, p):
    return ins[0] + ins[1].reshape(())


def _add1_cases():
    out = []
    for ta, tb in (("f32", "f32"), ("f16", "f16"), ("f16", "f32"), ("bf16", "bf16"),
                   ("bf16", "f32"), ("q8_0", "f32"), ("q4_0", "f32")):
        quant = as_type(ta) in QUANT_TYPES
        for ne in ([10, 5, 4, 3], [33, 1, 3, 1], [64, 3, 2, 1]):
            if quant and ne[0] % 32:
                continue
            for inplace in (False, True):
                if inplace and quant:
                    continue

                def build(ctx, ta=ta, tb=tb, ne=ne, inplace=inplace):
                    a = cc.leaf(ctx, ta, ne, "a")
                    b = cc.leaf(ctx, tb, [1], "b")
                    return (add1_inplace if inplace else add1)(ctx, a, b)
                # requantized results: ggml's CPU quantizer may round a rare tie the other way
                out.append(cc.case("ADD1", dict(type_a=cc.ggml_type(ta), type_b=cc.ggml_type(tb), ne=ne,
                                                inplace=inplace), build,
                                   max_nmse=(1e-5 if quant else None)))
    return out


def _recipe_add1(g, c, s, p, node):
    if node.src[0].type in QUANT_TYPES and _is_inplace(node):
        _unsupported("ADD1", "has no in-place add1 on quantized data here", node.src[0])
    fn = g.ggml_add1_inplace if _is_inplace(node) else g.ggml_add1
    return fn(c, s[0], s[1])


ADD1 = register(OpDef(
    "ADD1", _infer_add1, reference=_ref_add1, cases=_add1_cases, flops=_flops_1,
    nbytes=_bytes_io, ggml=_recipe_add1,
    doc="a + b for a scalar b (ggml_add1); quantized a is dequantized, added and requantized."))


def add1(ctx, a, b):
    return ADD1.build(ctx, [a, b])


def add1_inplace(ctx, a, b):
    return _view_name(ADD1.build(ctx, [a, b], hints=dict(inplace=True)), a)


# --- ADD_ID: a + b[ids] (per-expert biases) ---------------------------------------------------

def _infer_add_id(srcs, p):
    a = need_src("ADD_ID", srcs, 0, "a")
    b = need_src("ADD_ID", srcs, 1, "b")
    ids = need_src("ADD_ID", srcs, 2, "ids")
    need(a.ne[0] == b.ne[0], "ADD_ID", f"a.ne0={a.ne[0]} != b.ne0={b.ne[0]}", a, b)
    need(a.ne[1] == ids.ne[0], "ADD_ID", f"a.ne1={a.ne[1]} != ids.ne0={ids.ne[0]}", a, ids)
    need(a.ne[2] == ids.ne[1], "ADD_ID", f"a.ne2={a.ne[2]} != ids.ne1={ids.ne[1]}", a, ids)
    need(is_matrix(b), "ADD_ID", f"b must be a matrix [ne0, n_rows], got ne={b.ne}", b)
    need(ids.ne[2] == 1 and ids.ne[3] == 1, "ADD_ID",
         f"ids must be a matrix [n_used, n_tokens], got ne={ids.ne}", ids)
    need_type("ADD_ID", ids, (I32,), "ids")
    need_type("ADD_ID", a, (F32,), "a")
    need_type("ADD_ID", b, (F32,), "b")
    return Out(a.type, a.ne)


def _ref_add_id(node, ins, p):
    a, b, ids = ins[:3]
    idx = ids[0, 0]                        # (n_tokens, n_used) = (ne2, ne1) of a
    n_rows = b.shape[2]
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        bad = idx[(idx < 0) | (idx >= n_rows)][0]
        raise DataError(f"ADD_ID: id {int(bad)} out of range [0, {n_rows}) of b "
                        f"'{node.src[1].name}' (ids '{node.src[2].name}')")
    return a + b[0, 0][idx][None]


def _add_id_cases():
    out = []
    for n_mats in (4, 8):
        for n_used in (1, 2, 4):
            for n_embd in (32, 129):
                for n_token in (1, 32, 129):
                    def build(ctx, n_mats=n_mats, n_used=n_used, n_embd=n_embd, n_token=n_token):
                        from .view import view_2d
                        a = cc.leaf(ctx, "f32", [n_embd, n_used, n_token], "a")
                        b = cc.leaf(ctx, "f32", [n_embd, n_mats], "b")
                        ids = cc.leaf(ctx, "i32", [n_mats, n_token], "ids")
                        if n_used != n_mats:
                            ids = view_2d(ctx, ids, n_used, n_token, ids.nb[1], 0)
                            ids.name = "view_of_ids"
                        return add_id(ctx, a, b, ids)

                    def init(t, rng, n_mats=n_mats):
                        if t.type != I32:
                            return None
                        rows = t.ne[1]
                        return np.stack([rng.permutation(np.arange(t.ne[0]) % n_mats)
                                         for _ in range(rows)]).reshape(t.ne[::-1])
                    out.append(cc.case("ADD_ID", dict(type_a=cc.ggml_type("f32"), type_b=cc.ggml_type("f32"),
                                                      n_embd=n_embd, n_experts=n_mats,
                                                      n_experts_used=n_used, n_token=n_token),
                                       build, init=init))
    return out


def _recipe_add_id(g, c, s, p, node):
    a, b = node.src[0], node.src[1]
    if a.nb[0] != 4 or b.nb[0] != 4:
        _unsupported("ADD_ID", "needs packed rows of a and b", a, b)
    return g.ggml_add_id(c, s[0], s[1], s[2])


ADD_ID = register(OpDef(
    "ADD_ID", _infer_add_id, reference=_ref_add_id, cases=_add_id_cases, flops=_flops_1,
    nbytes=_bytes_io, ggml=_recipe_add_id,
    doc="a[:, i1, i2] + b[:, ids[i1, i2]] (ggml_add_id: per-expert biases selected by ids)."))


def add_id(ctx, a, b, ids):
    return ADD_ID.build(ctx, [a, b, ids])


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

def _reduced_to(g, t, src):
    """t summed over the dimensions src was broadcast along (repeat_back), when it was."""
    return t if are_same_shape(t, src) else g.fn("repeat_back")(g.ctx, t, src)


@grad_rule(ADD)
def _grad_add(g, node, grad):
    if g.needs(0):
        g.add(0, grad)
    if g.needs(1):
        g.add(1, _reduced_to(g, grad, node.src[1]))


@grad_rule(SUB)
def _grad_sub(g, node, grad):
    if g.needs(0):
        g.add(0, grad)
    if g.needs(1):      # ggml asserts same shapes here; a broadcast b is summed back
        g.sub(1, _reduced_to(g, grad, node.src[1]))


@grad_rule(MUL)
def _grad_mul(g, node, grad):
    a, b = node.src[0], node.src[1]
    if g.needs(0):
        g.add(0, mul(g.ctx, grad, b))
    if g.needs(1):
        g.add(1, _reduced_to(g, mul(g.ctx, a, grad), b))


@grad_rule(DIV)
def _grad_div(g, node, grad):
    b = node.src[1]
    if g.needs(0):
        g.add(0, div(g.ctx, grad, b))
    if g.needs(1):
        g.sub(1, _reduced_to(g, mul(g.ctx, grad, div(g.ctx, node, b)), b))


@grad_rule(ADD1)
def _grad_add1(g, node, grad):
    sum_ = g.fn('sum')
    if g.needs(0):
        g.add(0, grad)
    if g.needs(1):      # d/db of sum(a + b) is the sum of grad (ggml takes the mean: its TODO)
        g.add(1, sum_(g.ctx, grad))
