"""Matrix products: MUL_MAT, MUL_MAT_ID (mixture of experts), OUT_PROD.

Shapes and checks follow ggml.c (ggml_mul_mat, ggml_mul_mat_id, ggml_out_prod) and the
GGML_ASSERTs of the CPU kernels (rows of both operands packed), raised here when the op is
built. The references compute in float64 on the dequantized weights and the exact
activations: ggml itself first rounds the activations to the weight's vec_dot_type (F16 for
F16 weights, BF16 for BF16, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1) and does integer
dots, which puts its results 4e-8 (F16) .. 1.5e-5 (quantized) NMSE away from this oracle;
test-backend-ops' threshold for all three ops is 5e-4.

    mul_mat(a, b)     a (weights) [k, m, a2, a3], b [k, n, b2, b3]  -> F32 [m, n, b2, b3]
                      b2 % a2 == 0, b3 % a3 == 0: a's matrix i2 // (b2/a2) meets b's i2
    mul_mat_id(as, b, ids)
                      as [k, m, n_as], b [k, b1, n_tok], ids I32 [n_used, n_tok]
                      -> F32 [m, n_used, n_tok]; out[:, e, t] = as[ids[e, t]] @ b[:, e % b1, t]
    out_prod(a, b)    a [m, k, a2, a3], b [n, k, b2, b3] -> F32 [m, n, b2, b3]
                      out[i0, i1] = sum_j a[i0, j] * b[i1, j]
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import DataError
from ..errors import ParamError
from ..tensor import Tensor
from ..tensor import is_transposed
from ..tensor import nbytes
from ..tensor import set_param
from ..types import PREC_DEFAULT  # noqa: F401
from ..types import PREC_F32  # noqa: F401
from ..types import QUANT_TYPES  # noqa: F401
from ..types import TRAITS  # noqa: F401
from ..types import GGMLType  # noqa: F401
from ..types import as_type  # noqa: F401
from . import cases_common as cc
from .registry import OPS
from .registry import OpDef
from .registry import Out
from .registry import fail
from .registry import grad_rule
from .registry import need
from .registry import need_src
from .registry import need_type
from .registry import register

T = GGMLType
HINT_NONE = 0
HINT_SRC0_IS_HADAMARD = 1

# Weight types with a CPU dot product, and the activation types accepted beside them.
WEIGHT_TYPES = (T.F32, T.F16, T.BF16) + QUANT_TYPES
ACT_TYPES = (T.F32, T.F16, T.BF16)
# out_prod: ggml's CPU has F32, F16 and dequantize-then-mad paths (no BF16).
OUT_PROD_A_TYPES = (T.F32, T.F16) + QUANT_TYPES
MAX_NMSE = 5e-4


def _rows_packed(op, t, what):
    tr = TRAITS[t.type]
    if t.ne[0] % tr.blck_size != 0:
        fail(op,
             f"{what} rows of {t.ne[0]} values are not whole {t.type.tname} blocks of {tr.blck_size}", t)
    if t.nb[0] != tr.type_size:
        fail(op,
             f"{what} needs packed rows (nb[0] == {tr.type_size}); got nb={t.nb} "
             f"(permute so that dim 0 stays contiguous, or cont() it)", t)


# --- MUL_MAT --------------------------------------------------------------------------------

def _infer_mul_mat(srcs, p):
    op = "MUL_MAT"
    a = need_src(op, srcs, 0, "a")
    b = need_src(op, srcs, 1, "b")
    need_type(op, a, WEIGHT_TYPES, "a (weights)")
    need_type(op, b, ACT_TYPES, "b")
    if a.ne[0] != b.ne[0]:
        fail(op, f"a.ne[0] = {a.ne[0]} != b.ne[0] = {b.ne[0]} "
             f"(both operands hold rows of k values)", a, b)
    if not (a.ne[2] > 0 and a.ne[3] > 0 and b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0):
        fail(op,              # (an empty a.ne[2:4]: ggml takes the modulo unchecked, SIGFPE)
             f"a cannot broadcast over b: b.ne[2:4] = {b.ne[2:]} must be multiples of "
             f"a.ne[2:4] = {a.ne[2:]}", a, b)
    if a.ne[0] <= 0:
        fail(op, "a and b have ne[0] = 0 (rows of no values); ggml rejects this "
             "(its rows of 0 bytes read as a transposed a)", a, b)
    if is_transposed(a):
        fail(op, f"a is transposed (nb={a.nb}); cont() it first", a)
    _rows_packed(op, a, "a")
    _rows_packed(op, b, "b")
    if p.prec not in (PREC_DEFAULT, PREC_F32):
        raise ParamError(f"{op}: prec must be PREC_DEFAULT (0) or PREC_F32 (10), got {p.prec}")
    if p.hint not in (HINT_NONE, HINT_SRC0_IS_HADAMARD):
        raise ParamError(f"{op}: unknown hint {p.hint}")
    return Out(T.F32, [a.ne[1], b.ne[1], b.ne[2], b.ne[3]])


def _bcast_matmul(x, y):
    """np.matmul(x, y) with y's matrices repeated over x's batch dims as ggml broadcasts:
    x's matrix (i3, i2) meets y's (i3 // r3, i2 // r2). x's batch dims are split into
    (y's, repeats) and y broadcast over the repeats, so y is never copied (np.repeat copied
    it r2 * r3 times per call, most of a grad-mode MUL_MAT graph's time); each matrix product
    is the same BLAS call on the same matrices as before, bit for bit."""
    (x3, x2), (y3, y2) = x.shape[:2], y.shape[:2]
    xs = x.reshape(y3, x3 // y3, y2, x2 // y2, *x.shape[2:])
    out = np.matmul(xs, y[:, None, :, None])
    return out.reshape(x3, x2, *out.shape[-2:])


def _ref_mul_mat(node, ins, p):
    a, b = ins[0], ins[1]                     # (a3, a2, m, k), (b3, b2, n, k) float64
    return _bcast_matmul(b, a.swapaxes(-1, -2))   # (b3, b2, n, m)


def _flops_mul_mat(node):
    a = node.src[0]
    return 2 * a.ne[0] * a.ne[1] * node.ne[1] * node.ne[2] * node.ne[3]


def _bytes_mul_mat(node):
    return nbytes(node.src[0]) + nbytes(node.src[1]) + nbytes(node)


def _ggml_mul_mat(g, c, s, p, node):
    t = g.ggml_mul_mat(c, s[0], s[1])
    if p.prec:
        g.ggml_mul_mat_set_prec(t, p.prec)
    if p.hint:
        g.ggml_mul_mat_set_hint(t, p.hint)
    return t


MUL_MAT = register(OpDef(
    "MUL_MAT", _infer_mul_mat, params="prec:i32 hint:i32", reference=_ref_mul_mat,
    cases=lambda: _mul_mat_cases(), flops=_flops_mul_mat, nbytes=_bytes_mul_mat,
    ggml=_ggml_mul_mat, max_nmse=MAX_NMSE,
    extra={"case_ops": ("MUL_MAT_HADAMARD",)},    # test_mul_mat_hadamard's name for its cases
    doc="a [k, m, a2, a3] (weights, any weight type) times b [k, n, b2, b3] -> F32 [m, n, b2, b3] "
        "(each output row i1 is a @ b[:, i1]); a broadcasts over b's dims 2 and 3."))


def mul_mat(ctx, a, b):
    """ggml_mul_mat: result[i0, i1, i2, i3] = sum_k a[k, i0, i2/r2, i3/r3] * b[k, i1, i2, i3]."""
    return MUL_MAT.build(ctx, [a, b])


def _need_mul_mat_node(a, what):
    if not isinstance(a, Tensor) or a.op is not MUL_MAT:
        got = f"{a.op_name} node {a.name!r}" if isinstance(a, Tensor) else type(a).__name__
        raise ParamError(f"{what}: a must be a MUL_MAT node, got {got}")


def mul_mat_set_prec(a, prec):
    """ggml_mul_mat_set_prec: PREC_F32 asks for F32 accumulation (the CPU always does so)."""
    _need_mul_mat_node(a, "mul_mat_set_prec")
    if int(prec) not in (PREC_DEFAULT, PREC_F32):
        raise ParamError(f"mul_mat_set_prec: prec must be PREC_DEFAULT (0) or PREC_F32 (10), "
                         f"got {prec}")
    a.op.set_params(a, dict(prec=int(prec)))


def mul_mat_set_hint(a, hint):
    """ggml_mul_mat_set_hint: HINT_SRC0_IS_HADAMARD promises a is the normalised Hadamard
    matrix (ggml's CPU then runs a fast Walsh-Hadamard transform); the product is the same."""
    _need_mul_mat_node(a, "mul_mat_set_hint")
    if int(hint) not in (HINT_NONE, HINT_SRC0_IS_HADAMARD):
        raise ParamError(f"mul_mat_set_hint: unknown hint {hint}")
    a.op.set_params(a, dict(hint=int(hint)))


# --- MUL_MAT_ID -----------------------------------------------------------------------------

def _infer_mul_mat_id(srcs, p):
    op = "MUL_MAT_ID"
    as_ = need_src(op, srcs, 0, "as")
    b = need_src(op, srcs, 1, "b")
    ids = need_src(op, srcs, 2, "ids")
    need_type(op, as_, WEIGHT_TYPES, "as (expert weights)")
    need_type(op, b, ACT_TYPES, "b")
    need_type(op, ids, (T.I32,), "ids")
    need(not is_transposed(as_), op, f"as is transposed (nb={as_.nb})", as_)
    need(as_.ne[3] == 1, op, "as must be 3-D [k, m, n_expert] (ne[3] == 1)", as_)
    need(b.ne[3] == 1, op, "b must be 3-D [k, n_b, n_tokens] (ne[3] == 1)", b)
    need(ids.ne[2] == 1 and ids.ne[3] == 1, op, "ids must be 2-D [n_expert_used, n_tokens]", ids)
    need(ids.ne[1] == b.ne[2], op, f"ids has {ids.ne[1]} token rows but b has {b.ne[2]} tokens "
         f"(ids.ne[1] must equal b.ne[2])", ids, b)
    need(as_.ne[0] == b.ne[0], op, f"as.ne[0] = {as_.ne[0]} != b.ne[0] = {b.ne[0]}", as_, b)
    # ggml takes the modulo unchecked (SIGFPE when b.ne[1] == 0)
    need(b.ne[1] > 0 and ids.ne[0] % b.ne[1] == 0, op, f"b.ne[1] = {b.ne[1]} does not divide ids.ne[0] = "
         f"{ids.ne[0]} (b's rows broadcast over the selected experts)", ids, b)
    _rows_packed(op, as_, "as")
    _rows_packed(op, b, "b")
    return Out(T.F32, [as_.ne[1], ids.ne[0], b.ne[2], 1])


def _ref_mul_mat_id(node, ins, p):
    as_, b, ids = ins[0][0], ins[1][0], ins[2][0, 0]   # (n_as, m, k), (n_tok, b1, k), (n_tok, n_used)
    n_as = as_.shape[0]
    n_tok, n_used = ids.shape
    bad = (ids < 0) | (ids >= n_as)
    if bad.any():
        t, e = np.argwhere(bad)[0]
        raise DataError(f"MUL_MAT_ID: ids[{t}, {e}] = {ids[t, e]} is not an expert index in "
                        f"[0, {n_as}) [{node.src[2].name!r} ne={node.src[2].ne[:2]}]")
    bsel = b[:, np.arange(n_used) % b.shape[1], :]            # (n_tok, n_used, k)
    out = np.zeros((n_tok, n_used, as_.shape[1]))
    for x in np.unique(ids):
        sel = ids == x
        out[sel] = bsel[sel] @ as_[x].T
    return out[None]


def _flops_mul_mat_id(node):
    a = node.src[0]
    return 2 * a.ne[0] * a.ne[1] * node.ne[1] * node.ne[2]


def _bytes_mul_mat_id(node):
    # only the selected experts are read; count each distinct one once at most
    a = node.src[0]
    per_expert = nbytes(a) // max(1, a.ne[2])
    used = min(a.ne[2], node.ne[1] * node.ne[2])
    return per_expert * used + nbytes(node.src[1]) + nbytes(node.src[2]) + nbytes(node)


MUL_MAT_ID = register(OpDef(
    "MUL_MAT_ID", _infer_mul_mat_id, reference=_ref_mul_mat_id,
    cases=lambda: _mul_mat_id_cases(), flops=_flops_mul_mat_id, nbytes=_bytes_mul_mat_id,
    max_nmse=MAX_NMSE,
    ggml=lambda g, c, s, p, node: g.ggml_mul_mat_id(c, s[0], s[1], s[2]),
    doc="Mixture of experts: out[:, e, t] = as[ids[e, t]] @ b[:, e % b.ne1, t] -> F32 "
        "[m, n_expert_used, n_tokens]."))


def mul_mat_id(ctx, as_, b, ids):
    """ggml_mul_mat_id(as, b, ids): per token t and slot e, expert ids[e, t] times b[:, e % b1, t]."""
    return MUL_MAT_ID.build(ctx, [as_, b, ids])


# --- OUT_PROD -------------------------------------------------------------------------------

def _infer_out_prod(srcs, p):
    op = "OUT_PROD"
    a = need_src(op, srcs, 0, "a")
    b = need_src(op, srcs, 1, "b")
    need_type(op, a, OUT_PROD_A_TYPES, "a")
    need_type(op, b, ACT_TYPES, "b")
    need(a.ne[1] == b.ne[1], op, f"a.ne[1] = {a.ne[1]} != b.ne[1] = {b.ne[1]} "
         f"(the summed dimension)", a, b)
    need(a.ne[2] > 0 and a.ne[3] > 0, op, f"a.ne[2:4] = {a.ne[2:]} is empty: nothing to "
         f"broadcast over b (ggml divides by it)", a, b)
    need(b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, op,
         f"a cannot broadcast over b: b.ne[2:4] = {b.ne[2:]} must be multiples of "
         f"a.ne[2:4] = {a.ne[2:]}", a, b)
    need(not is_transposed(a), op, f"a is transposed (nb={a.nb}); cont() it first", a)
    _rows_packed(op, a, "a")
    need(TRAITS[b.type].blck_size == 1, op, "b must be an element type", b)
    return Out(T.F32, [a.ne[0], b.ne[0], b.ne[2], b.ne[3]])


def _ref_out_prod(node, ins, p):
    a, b = ins[0], ins[1]                     # (a3, a2, k, m), (b3, b2, k, n)
    return _bcast_matmul(b.swapaxes(-1, -2), a)   # (b3, b2, n, m)


def _flops_out_prod(node):
    a = node.src[0]
    return 2 * a.ne[0] * a.ne[1] * node.ne[1] * node.ne[2] * node.ne[3]


OUT_PROD = register(OpDef(
    "OUT_PROD", _infer_out_prod, reference=_ref_out_prod, cases=lambda: _out_prod_cases(),
    flops=_flops_out_prod, nbytes=_bytes_mul_mat, max_nmse=MAX_NMSE,
    ggml=lambda g, c, s, p, node: g.ggml_out_prod(c, s[0], s[1]),
    doc="a [m, k, a2, a3], b [n, k, b2, b3] -> F32 [m, n, b2, b3]: sum over k of outer "
        "products a[:, j] b[:, j]^T; a broadcasts over b's dims 2 and 3."))


def out_prod(ctx, a, b):
    """ggml_out_prod: result[i0, i1, i2, i3] = sum_j a[i0, j, i2/r2, i3/r3] * b[i1, j, i2, i3]."""
    return OUT_PROD.build(ctx, [a, b])


# --- test cases (test-backend-ops' grids, restricted to pyggml's types) -----------------------

# ggml's type lists intersected with the types pyggml has, in ggml's order (a type that
# lands in pyggml.types gets its cases here)
_ALL_TYPES = tuple(cc.have(cc.GGML_ALL_TYPES))
_BASE_TYPES = tuple(cc.have(cc.GGML_BASE_TYPES))
_OTHER_TYPES = tuple(cc.have(cc.GGML_OTHER_TYPES))

# cases above these sizes are tagged slow (kept out of the default pytest subset)
_SLOW_MACS = 20_000_000
_SLOW_ELEMS = 1_100_000



def _slow(macs, elems):
    return ("slow",) if macs > _SLOW_MACS or elems > _SLOW_ELEMS else ()


def _blck(type_name):
    return TRAITS[as_type(type_name)].blck_size


def _is_quant(type_name):
    return TRAITS[as_type(type_name)].is_quantized


def _mm_case(type_a, type_b, m, n, k, bs=(10, 10), nr=(2, 2), per=(0, 1, 2, 3), k_v=0, o=1,
             src_overlap=False, tags=()):
    """test_mul_mat(type_a, type_b, m, n, k, bs, nr, per, k_v, o, src_overlap)."""
    bs, nr, per = list(bs), list(nr), list(per)

    def _mm_params(a, b):
        """ggml's grad mode: b always, a unless quantized or broadcast over dim 3."""
        if not _is_quant(type_a):
            if bs[1] == 1 and nr[1] == 1:
                set_param(a)
            set_param(b)

    def build(ctx):
        from .view import permute
        from .view import view_4d
        npermuted = sum(per[i] != i for i in range(4))
        if npermuted:
            ne_a = [k, m, bs[0], bs[1]]
            ne_b = [k, n, bs[0] * nr[0], bs[1] * nr[1]]
            a = cc.leaf(ctx, type_a, [ne_a[per[i]] for i in range(4)], "a")
            b = cc.leaf(ctx, type_b, [ne_b[per[i]] for i in range(4)], "b")
            _mm_params(a, b)
            a = permute(ctx, a, *per)
            b = permute(ctx, b, *per)
            a.name, b.name = "a_permuted", "b_permuted"
        elif src_overlap:
            base = cc.leaf(ctx, type_a, [2 * k, max(m, n), bs[0] * nr[0], bs[1] * nr[1]], "base")
            a = view_4d(ctx, base, k, m, bs[0], bs[1], base.nb[1], base.nb[2], base.nb[3], 0)
            b = view_4d(ctx, base, k, n, bs[0] * nr[0], bs[1] * nr[1], base.nb[1], base.nb[2],
                        base.nb[3], k * TRAITS[as_type(type_a)].type_size)
            a.name, b.name = "a", "b"
        else:
            kp = k_v or k
            a = cc.leaf(ctx, type_a, [kp, m, bs[0], bs[1]], "a")
            b = cc.leaf(ctx, type_b, [kp, n, bs[0] * nr[0], bs[1] * nr[1]], "b")
            _mm_params(a, b)
            if k_v:
                a = view_4d(ctx, a, k, m, bs[0], bs[1], a.nb[1], a.nb[2], a.nb[3], 0)
                b = view_4d(ctx, b, k, n, bs[0] * nr[0], bs[1] * nr[1], b.nb[1], b.nb[2],
                            b.nb[3], 0)
                a.name, b.name = "a", "b"
        out = mul_mat(ctx, a, b)
        out.name = "out"
        for _ in range(1, o):
            out2 = mul_mat(ctx, a, b)
            out2.name = "out2"
            out = OPS["ADD"].build(ctx, [out, out2])
        return out

    vars = dict(type_a=cc.ggml_type(type_a), type_b=cc.ggml_type(type_b), m=m, n=n, k=k, bs=bs, nr=nr, per=per,
                k_v=k_v, o=o, src_overlap=bool(src_overlap))
    bt = bs[0] * nr[0] * bs[1] * nr[1]
    tags = tuple(tags) or _slow(m * n * k * bt * o, (m * bs[0] * bs[1] + n * bt) * (k_v or k))
    # grad mode: ggml's nmax; eps 1 instead of 0.1 since the loss is linear in each parameter
    # (any step is exact but for rounding, which a 10x larger step makes 10x smaller: with
    # 0.1 ggml's own CPU fails two of these cases by rounding noise, MAA 9e-4 and 1.1e-4)
    return cc.case("MUL_MAT", vars, build, tags=tags, grad=dict(nmax=20000, eps=1.0))


def _mul_mat_cases():
    out = []
    add = out.append
    for ta in _ALL_TYPES:
        for i in range(1, 10):
            add(_mm_case(ta, "f32", 16, i, 256, (1, 1), (1, 1)))
    add(_mm_case("q4_0", "f32", 2880, 32, 2880, (1, 1), (1, 1)))
    add(_mm_case("q8_0", "f32", 2880, 32, 2880, (1, 1), (1, 1)))
    for ta in cc.have(["mxfp4"]):          # gpt-oss's shape, as ggml's list has it
        add(_mm_case(ta, "f32", 2880, 32, 2880, (1, 1), (1, 1)))
    for n in (1, 7, 8, 9, 16, 128, 512):
        add(_mm_case("f32", "f32", 1, n, 2048, (1, 1), (1, 1)))
    for ta in _BASE_TYPES:
        for tb in ("f32", "f16"):
            ks = [256] + ([4] if _blck(ta) == 1 else [])
            for k in ks:
                for n, bs, nr in ((1, (1, 1), (1, 1)), (1, (1, 1), (2, 1)), (1, (1, 1), (1, 2)),
                                  (1, (3, 1), (1, 1)), (1, (3, 1), (2, 1)), (1, (3, 2), (1, 1)),
                                  (1, (3, 2), (2, 1)), (1, (3, 2), (1, 2)), (1, (3, 2), (2, 2)),
                                  (4, (3, 2), (2, 2)),
                                  (16, (1, 1), (1, 1)), (16, (1, 1), (2, 1)), (16, (1, 1), (1, 2)),
                                  (16, (3, 1), (1, 1)), (16, (3, 1), (2, 1)), (16, (3, 2), (1, 1)),
                                  (16, (3, 2), (2, 1)), (16, (3, 2), (1, 2)), (16, (3, 2), (2, 2))):
                    add(_mm_case(ta, tb, 16, n, k, bs, nr))
                for n, per in ((1, (0, 2, 1, 3)), (1, (0, 1, 3, 2)), (1, (0, 3, 2, 1)),
                               (4, (0, 3, 2, 1)), (8, (0, 2, 1, 3)), (8, (0, 1, 3, 2)),
                               (8, (0, 3, 2, 1)), (16, (0, 2, 1, 3)), (16, (0, 1, 3, 2)),
                               (16, (0, 3, 2, 1))):
                    add(_mm_case(ta, tb, 16, n, k, (2, 3), (1, 1), per))
            add(_mm_case(ta, tb, 16, 1, 1024, (3, 2), (1, 1)))
            add(_mm_case(ta, tb, 16, 8, 1024, (3, 2), (1, 1)))
            add(_mm_case(ta, tb, 16, 16, 1024, (3, 2), (1, 1)))
            add(_mm_case(ta, tb, 16, 8, 256, (1536, 1), (1, 1)))
    for n in (1, 8, 16):
        for per in ((0, 2, 1, 3), (0, 1, 3, 2), (0, 3, 2, 1)):
            add(_mm_case("bf16", "f32", 16, n, 256, (2, 3), (1, 1), per))
    for ta in _OTHER_TYPES:
        if _blck(ta) != 256:
            add(_mm_case(ta, "f32", 16, 1, _blck(ta), (1, 1), (1, 1)))
        add(_mm_case(ta, "f32", 16, 1, 256, (1, 1), (1, 1)))
    add(_mm_case("f16", "f32", 64, 2, 128, (8, 1), (1, 1)))
    add(_mm_case("f16", "f32", 83, 2, 128, (8, 1), (4, 1)))
    add(_mm_case("f16", "f32", 64, 2, 64, (8, 1), (4, 1)))
    add(_mm_case("f16", "f32", 83, 2, 64, (8, 1), (4, 1)))
    add(_mm_case("f16", "f32", 64, 45, 128, (8, 1), (4, 1)))
    add(_mm_case("f16", "f32", 128, 45, 64, (8, 1), (4, 1)))
    add(_mm_case("f16", "f32", 1056, 1, 193, (1, 1), (4, 1), (0, 2, 1, 3)))
    add(_mm_case("f16", "f32", 1056, 1, 67, (1, 1), (4, 1), (0, 2, 1, 3)))
    if "ADD" in OPS:   # o > 1 sums several products with ggml_add (the binary family)
        add(_mm_case("f32", "f32", 16, 32, 32, (1, 1), (1, 1), (0, 1, 2, 3), 64, 3))
    add(_mm_case("f32", "f32", 64, 77, 77, (12, 1), (1, 1)))
    add(_mm_case("f32", "f32", 32, 4, 96, (3, 2), (1, 1), (0, 1, 2, 3), 0, 1, True))
    add(_mm_case("q4_0", "f32", 576, 512, 576, (1, 1), (1, 1)))
    add(_mm_case("q4_0", "f32", 1, 2048, 8192, (1, 1), (1, 1)))
    for ta in _ALL_TYPES:
        add(_mm_case(ta, "f32", 1, 64, 256, (1, 1), (1, 1)))
    add(_mm_case("q8_0", "f32", 6, 4096, 5120, (1, 1), (1, 1)))
    # k not a multiple of 32
    add(_mm_case("f16", "f16", 64, 32, 65, (1, 1), (1, 1)))
    add(_mm_case("f16", "f16", 64, 32, 80, (1, 1), (1, 1)))
    add(_mm_case("f16", "f32", 64, 32, 80, (1, 1), (1, 1)))
    add(_mm_case("f32", "f32", 64, 32, 80, (1, 1), (1, 1)))
    add(_mm_case("f16", "f16", 64, 32, 588, (1, 1), (1, 1)))
    add(_mm_case("f16", "f16", 64, 32, 80, (4, 1), (1, 1)))
    # permuted b with broadcast, and k_v views (non-contiguous rows of a and b)
    for bs2 in (1, 3):
        for bs in (1, 2, 4, 8):
            for nr in (1, 4):
                for m in (0, 1):
                    for k in (0, 1):
                        for t in ("f16", "bf16", "f32"):
                            # the full grid is large: keep one corner per type in the quick set
                            quick = bs2 == 1 and bs in (1, 2) and nr == 1 and m == k
                            tags = () if quick else ("slow",)
                            add(_mm_case(t, "f32", 1056 + m, 1, 128 + k, (bs, bs2), (nr, 1),
                                         (0, 2, 1, 3), tags=tags))
                            add(_mm_case(t, "f32", 128 + m, 1, 1056 + k, (bs, bs2), (nr, 1),
                                         (0, 1, 2, 3), 2 * 1056 + k, tags=tags))
    # pyggml additions: odd m/n/k for the float types, odd k for quantized (whole blocks),
    # activations already in the weight's dot type (bf16 x bf16), the GEMM path (n >= 32)
    for ta in _ALL_TYPES:
        k = {1: 67, 32: 96}.get(_blck(ta), _blck(ta))
        add(_mm_case(ta, "f32", 33, 7, k, (2, 1), (2, 1)))
        add(_mm_case(ta, "f32", 17, 19, k, (1, 3), (1, 1), (0, 2, 1, 3)))
        add(_mm_case(ta, "f32", 40, 37, 2 * k, (1, 2), (3, 1)))
    add(_mm_case("bf16", "bf16", 16, 5, 256, (3, 2), (2, 1)))
    add(_mm_case("bf16", "bf16", 48, 33, 80, (1, 1), (1, 1), (0, 2, 1, 3)))
    out += _hadamard_cases()
    return cc.unique(out)


def _hadamard_init(leaf, rng):
    """test_mul_mat_hadamard's a: row r, column i is +-1/sqrt(ne0) by the parity of r & i."""
    if leaf.name != "a":
        return None
    n = leaf.ne[0]
    r = np.arange(leaf.ne[1] * leaf.ne[2] * leaf.ne[3])[:, None] & np.arange(n)[None, :]
    parity = np.vectorize(lambda v: bin(v).count("1") & 1)(r)
    return np.where(parity == 0, 1.0, -1.0).reshape(leaf.ne[::-1]) / np.sqrt(np.float32(n))


def _hadamard_cases():
    """test_mul_mat_hadamard: MUL_MAT with a the normalised Hadamard matrix and the hint
    that says so (ggml's CPU then runs a fast Walsh-Hadamard transform of b)."""
    out = []
    for m, n, bs in ((128, 1, (1, 1)), (64, 1, (1, 1)), (256, 1, (1, 1)), (512, 1, (1, 1)),
                     (128, 32, (1, 1)), (128, 4, (2, 3)), (256, 512, (1, 1)), (32, 1, (1, 1)),
                     (1024, 1, (1, 1))):
        c = _mm_case("f32", "f32", m, n, m, bs, (1, 1), tags=("slow",) if n > 32 else ())

        def build(ctx, inner=c.build):
            out = inner(ctx)
            mul_mat_set_hint(out, HINT_SRC0_IS_HADAMARD)
            return out
        out.append(cc.case("MUL_MAT_HADAMARD", c.vars, build, init=_hadamard_init,
                           max_nmse=MAX_NMSE, tags=c.tags))
    return out


def _mmid_case(type_a, type_b, n_mats, n_used, b, m, n, k, tags=()):
    """test_mul_mat_id(type_a, type_b, n_mats, n_used, b, m, n, k)."""
    def build(ctx):
        from .view import view_2d
        as_ = cc.leaf(ctx, type_a, [k, m, n_mats], "as")
        ids = cc.leaf(ctx, "i32", [n_mats, n], "ids")
        if n_used != n_mats:
            ids = view_2d(ctx, ids, n_used, n, ids.nb[1], 0)
            ids.name = "view_of_ids"
        bb = cc.leaf(ctx, type_b, [k, 1 if b else n_used, n], "b")
        out = mul_mat_id(ctx, as_, bb, ids)
        out.name = "out"
        return out

    def init(leaf, rng):
        if leaf.type == T.I32:     # each token picks a shuffled list of distinct experts
            rows = np.array([rng.permutation(n_mats) for _ in range(leaf.ne[1])], dtype=np.int64)
            return rows.reshape(leaf.ne[::-1])
        return None

    vars = dict(type_a=cc.ggml_type(type_a), type_b=cc.ggml_type(type_b), n_mats=n_mats, n_used=n_used,
                b=bool(b), m=m, n=n, k=k)
    tags = tuple(tags) or _slow(m * n * n_used * k, m * k * n_mats + k * n * n_used)
    return cc.case("MUL_MAT_ID", vars, build, init=init, tags=tags)


def _mul_mat_id_cases():
    out = []
    add = out.append
    for b in (False, True):
        add(_mmid_case("f16", "f32", 16, 16, b, 32, 1024, 16))
        add(_mmid_case("f16", "f32", 2, 2, b, 32, 8192, 64))
        add(_mmid_case("f16", "f32", 16, 16, b, 50, 200, 64))
        add(_mmid_case("bf16", "f32", 16, 16, b, 32, 1024, 16))
        add(_mmid_case("bf16", "f32", 16, 16, b, 50, 200, 64))
    add(_mmid_case("f16", "f32", 1, 1, False, 8, 16, 1))
    for ta in cc.have(["mxfp4"]):
        add(_mmid_case(ta, "f32", 32, 2, False, 2880, 32, 2880))
    add(_mmid_case("q4_0", "f32", 32, 2, False, 2880, 32, 2880))
    for ta in _ALL_TYPES:
        add(_mmid_case(ta, "f32", 4, 2, False, 64, 16, 3 * _blck(ta)))
    for ta in _BASE_TYPES:
        for n_mats in (4, 8):
            for n_used in (1, 2, 4):
                for b in (False, True):
                    for n in (1, 4, 5, 17, 32, 129):
                        # quick subset: the small token counts of the 4-expert grid
                        quick = n_mats == 4 and n in (1, 5) and (n_used != 4 or not b)
                        add(_mmid_case(ta, "f32", n_mats, n_used, b, 512, n, 256,
                                       tags=() if quick else ("slow",)))
    for ta in _OTHER_TYPES:
        for n in (1, 32):
            add(_mmid_case(ta, "f32", 4, 2, False, 512, n, 256))
    return cc.unique(out)


def _op_case(type_a, type_b, m, n, k, bs=(10, 10), nr=(2, 2), trans_b=False, tags=()):
    """test_out_prod(type_a, type_b, m, n, k, bs, nr, trans_b)."""
    bs, nr = list(bs), list(nr)

    def build(ctx):
        from .view import transpose
        a = cc.leaf(ctx, type_a, [m, k, bs[0], bs[1]], "a")
        if trans_b:
            b = transpose(ctx, cc.leaf(ctx, type_b, [k, n, bs[0] * nr[0], bs[1] * nr[1]], "b"))
        else:
            b = cc.leaf(ctx, type_b, [n, k, bs[0] * nr[0], bs[1] * nr[1]], "b")
        b.name = "b"
        out = out_prod(ctx, a, b)
        out.name = "out"
        return out

    vars = dict(type_a=cc.ggml_type(type_a), type_b=cc.ggml_type(type_b), m=m, n=n, k=k, bs=bs, nr=nr,
                trans_b=bool(trans_b))
    bt = bs[0] * nr[0] * bs[1] * nr[1]
    tags = tuple(tags) or _slow(m * n * k * bt, m * k * bs[0] * bs[1] + n * k * bt)
    return cc.case("OUT_PROD", vars, build, tags=tags)


def _out_prod_cases():
    out = []
    add = out.append
    for ta, tb, n, k, bs2, bs3, nr2, nr3 in itertools.product(
            _BASE_TYPES, ("f32", "f16"), (1, 16), (1, 16), (1, 3), (1, 3), (1, 2), (1, 2)):
        add(_op_case(ta, tb, 256, n, k, (bs2, bs3), (nr2, nr3)))
    for ne2 in (1, 8, 16, 32):
        add(_op_case("f32", "f32", 256, 16, 16, (ne2, 1), (1, 1)))
    for nr2 in (8, 16, 32):
        add(_op_case("f32", "f32", 256, 16, 16, (1, 1), (nr2, 1)))
    # pyggml additions: transposed b (ggml's test class supports it), odd sizes
    for ta in ("f32", "f16", "q4_0", "q5_1"):
        add(_op_case(ta, "f32", 64, 7, 13, (2, 1), (2, 1), True))
        add(_op_case(ta, "f32", 96, 5, 33, (1, 2), (1, 1)))
    return cc.unique(out)


# --- gradients (ggml_compute_backward) ---------------------------------------------------------

@grad_rule(MUL_MAT)
def _grad_mul_mat(g, node, grad):
    """t = a^T b per plane: da = out_prod(b, grad) (summed over the planes a was broadcast
    to), db = out_prod(a, grad^T) (cs231n's staged rule, as ggml)."""
    repeat_back = g.fn('repeat_back')
    transpose, view_4d = g.fn('transpose', 'view_4d')
    a, b = node.src[0], node.src[1]
    if g.needs(0):
        need(grad.ne[2] == b.ne[2] and grad.ne[3] == b.ne[3], "MUL_MAT",
             "backward: grad must have b's batch dims", grad, b)
        tmp = out_prod(g.ctx, b, grad)
        if list(tmp.ne) != list(a.ne):
            need(tmp.ne[0] == a.ne[0] and tmp.ne[1] == a.ne[1] and tmp.ne[3] == 1, "MUL_MAT",
                 "backward: a broadcast over dim 3 is not supported (as in ggml)", a, b)
            nr2 = tmp.ne[2] // a.ne[2]
            tmp = view_4d(g.ctx, tmp, a.ne[0], a.ne[1], a.ne[2], nr2, tmp.nb[1],
                          tmp.nb[2] * nr2, tmp.nb[2], 0)
            tmp = repeat_back(g.ctx, tmp, a)
        g.add(0, tmp)
    if g.needs(1):
        g.add(1, out_prod(g.ctx, a, transpose(g.ctx, grad)))


@grad_rule(OUT_PROD)
def _grad_out_prod(g, node, grad):
    """Beyond ggml's list: t[i,j] = sum_k a[i,k] b[j,k], so da = out_prod(grad, b^T) and
    db = out_prod(grad^T, a^T) (a broadcast over b's planes is not supported; out_prod
    needs its first operand untransposed, hence the cont)."""
    cont = g.fn('cont')
    transpose = g.fn('transpose')
    a, b = node.src[0], node.src[1]
    need(a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3], "OUT_PROD",
         "backward: a broadcast over b's planes is not supported", a, b)
    if g.needs(0):
        g.add(0, out_prod(g.ctx, grad, transpose(g.ctx, b)))
    if g.needs(1):
        g.add(1, out_prod(g.ctx, cont(g.ctx, transpose(g.ctx, grad)), transpose(g.ctx, a)))
