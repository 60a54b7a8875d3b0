"""ggml's perf case list (make_test_cases_perf in test-backend-ops.cpp) for `test-backend-ops perf`.

The eval grid is made of small shapes for correctness; ggml times a different list of
model-sized cases. `pyggml test-backend-ops perf` runs this list so a `--baseline` written by
ggml's perf mode joins case by case: each case prints ggml's exact case string.

The list follows ggml's order. Entries are transcribed family by family; an entry whose op
or type pyggml lacks, or whose family is not transcribed yet (`UNTRANSCRIBED`), is skipped
and counted (`pyggml test-backend-ops perf` prints the count).
"""
from __future__ import annotations

import pyggml as gg

from ..errors import GGMLError
from ..ops import cases_common as cc
from ..ops.case import Case
from ..types import as_type

# ggml's all_types (the MUL_MAT sweep), by name: types pyggml lacks are skipped and counted
ALL_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q1_0", "q2_0",
             "mxfp4", "nvfp4", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "tq2_0", "iq2_xxs",
             "iq2_xs", "iq2_s", "iq3_xxs", "iq1_s", "iq1_m", "iq4_nl", "iq3_s", "iq4_xs")

# families of ggml's perf list not transcribed here, with their case counts in ggml's list
UNTRANSCRIBED = {
    "SWIGLU (split operands)": 4, "CONV_2D": 44, "CONV_3D": 10, "CPY (permuted/transposed)": 11,
    "MUL_MAT (permuted/k_v)": 2, "MUL_MAT_HADAMARD": 8, "SOLVE_TRI": 5, "MUL_MAT_ID": 232,
    "IM2COL": 10, "FLASH_ATTN_EXT": 32, "CONV_2D_DW": 6, "CONV_TRANSPOSE_2D": 6,
    "COL2IM_1D": 3, "ADD_ID": 4, "ROPE": 112, "SNAKE": 3, "SSM_CONV": 5, "SSM_SCAN": 4,
    "ACC": 6, "GATED_DELTA_NET": 12, "LIGHTNING_INDEXER": 324,
}


def _leaf(ctx, type, ne, name):
    return cc.leaf(ctx, type, ne, name)


def _case(op, vars, build) -> Case:
    return cc.case(op, vars, build)


def _glu(type, ne_a):
    return _case("SWIGLU", dict(type=as_type(type), ne_a=list(ne_a), v=0, swapped=False),
                 lambda ctx: gg.swiglu(ctx, _leaf(ctx, type, ne_a, "a")))


def _cont(type, ne, perm):
    def build(ctx):
        src = _leaf(ctx, type, ne, "src")
        return gg.cont(ctx, gg.permute(ctx, src, *perm))
    return _case("CONT", dict(type=as_type(type), ne=list(ne), use_view_slice=False,
                              permute=list(perm)), build)


def _add(type, ne, nr):
    def build(ctx):
        a = _leaf(ctx, type, [n * r for n, r in zip(ne, nr)], "a")
        return gg.add(ctx, a, _leaf(ctx, type, ne, "b"))
    return _case("ADD", dict(type=as_type(type), ne=list(ne), nr=list(nr), nf=1, perm1=False,
                             src_overlap=False), build)


def _cpy(type_src, type_dst, ne):
    def build(ctx):
        return gg.cpy(ctx, _leaf(ctx, type_src, ne, "src"), _leaf(ctx, type_dst, ne, "dst"))
    return _case("CPY", dict(type_src=as_type(type_src), type_dst=as_type(type_dst),
                             ne_src=list(ne), permute_src=[0, 0, 0, 0], permute_dst=[0, 0, 0, 0],
                             _src_transpose=False), build)


def _soft_max(ne):
    return _case("SOFT_MAX", dict(type=as_type("f32"), ne=list(ne), mask=False, sinks=False,
                                  m_prec=as_type("f32"), nr23=[1, 1], scale=1.0, max_bias=0.0,
                                  inplace=False),
                 lambda ctx: gg.soft_max_ext(ctx, _leaf(ctx, "f32", ne, "a"), None, 1.0, 0.0))


def _unary(op, fn, ne, **extra):
    return _case(op, dict(type=as_type("f32"), ne=list(ne), **extra),
                 lambda ctx: fn(ctx, _leaf(ctx, "f32", ne, "a")))


def _pad_reflect(ne_a, p0=10, p1=9):
    return _case("PAD_REFLECT_1D", dict(type=as_type("f32"), ne_a=list(ne_a), pad_0=p0, pad_1=p1),
                 lambda ctx: gg.pad_reflect_1d(ctx, _leaf(ctx, "f32", ne_a[:2], "a"), p0, p1))


def _tri(tri_type, ne):
    return _case("TRI", dict(type=as_type("f32"), ne=list(ne), tri_type=tri_type),
                 lambda ctx: gg.tri(ctx, _leaf(ctx, "f32", ne, "a"), tri_type))


def _mul_mat(type_a, m, n, k):
    from ..ops.matmul import _mm_case
    return _mm_case(type_a, "f32", m, n, k, bs=(1, 1), nr=(1, 1))


def _sum_rows(ne):
    return _case("SUM_ROWS", dict(type=as_type("f32"), ne=list(ne), permute=False, slice=False),
                 lambda ctx: gg.sum_rows(ctx, _leaf(ctx, "f32", ne, "a")))


def _entries():
    """ggml's perf list in order: (op name, thunk making the Case) per case it transcribes."""
    E = []
    for type in ("f16", "f32"):
        for n_tokens in (512, 2048):
            E.append(("SWIGLU", lambda t=type, n=n_tokens: _glu(t, [2 * 17408, n, 1, 1])))
    for n_kv in (1024, 1280, 2048, 2304):
        E.append(("CONT", lambda n=n_kv: _cont("f32", [n, 64, 64, 1], (2, 1, 0, 3))))
    for n_kv in (2048, 2304):
        E.append(("CONT", lambda n=n_kv: _cont("f32", [n, 512, 64, 1], (2, 1, 0, 3))))
    E.append(("ADD", lambda: _add("f32", [4096, 1, 1, 1], [1, 1, 1, 1])))
    E.append(("ADD", lambda: _add("f32", [4096, 1, 1, 1], [1, 512, 1, 1])))
    E.append(("CPY", lambda: _cpy("f32", "f16", [512, 3072, 1, 1])))
    E.append(("CPY", lambda: _cpy("f32", "q4_0", [8192, 512, 2, 1])))
    E.append(("CPY", lambda: _cpy("q4_0", "f32", [8192, 512, 2, 1])))
    for ne in ([4096, 4096, 5, 1], [12888, 256, 5, 1], [77, 4096, 5, 1], [1024, 1024, 10, 1],
               [77, 1024, 10, 1], [256, 256, 20, 1], [64, 64, 20, 1], [77, 64, 20, 1]):
        E.append(("SOFT_MAX", lambda ne=ne: _soft_max(ne)))
    for ne in ([32, 10, 1, 1], [1024, 10, 1, 1], [32000, 512, 1, 1]):
        E.append(("ARGMAX", lambda ne=ne: _unary("ARGMAX", gg.argmax, ne)))
    for ne in ([512, 34, 2, 1], [3000, 80, 1, 1], [3000, 80, 4, 1], [3000, 384, 1, 1],
               [3000, 384, 4, 1]):
        E.append(("PAD_REFLECT_1D", lambda ne=ne: _pad_reflect(ne)))
    E.append(("TRI", lambda: _tri(3, [256, 256, 4, 4])))        # GGML_TRI_TYPE_LOWER
    E.append(("TRI", lambda: _tri(0, [1024, 1024, 8, 4])))      # GGML_TRI_TYPE_UPPER_DIAG
    for ne in ([128, 128, 4, 4], [2048, 16, 5, 4], [20000, 10, 4, 1]):
        E.append(("CUMSUM", lambda ne=ne: _unary("CUMSUM", gg.cumsum, ne)))
    for bs in (1, 2, 3, 4, 5, 8, 512):
        for type_a in ALL_TYPES:
            E.append(("MUL_MAT", lambda t=type_a, b=bs: _mul_mat(t, 4096, b, 14336)))
    for col in (8192, 16384, 32768, 65536, 131072, 262144, 524288):
        for rows in (1, 4, 16):
            E.append(("SOFT_MAX", lambda c=col, r=rows: _soft_max([c, r, 1, 1])))
    E.append(("MEAN", lambda: _unary("MEAN", gg.mean, [256, 256, 3, 1])))
    for ne in ([8192, 1, 1, 1], [8192, 8192, 1, 1], [128, 8192, 1, 1]):
        E.append(("MEAN", lambda ne=ne: _unary("MEAN", gg.mean, ne)))
        E.append(("SUM_ROWS", lambda ne=ne: _sum_rows(ne)))
        E.append(("SUM", lambda ne=ne: _unary("SUM", gg.sum, ne)))
    for ne in ([65000, 16, 1, 1], [200000, 1, 1, 1], [200000, 16, 1, 1]):
        E.append(("ARGSORT", lambda ne=ne: _unary("ARGSORT", lambda c, a: gg.argsort(c, a, 0), ne,
                                                  order=0)))
    E.append(("TOP_K", lambda: _unary("TOP_K", lambda c, a: gg.top_k(c, a, 1), [2, 1, 1, 1],
                                      k=1, ties=False)))
    for k in (1, 10, 40, 400):
        for nrows in (1, 16):
            for cols in (k, 1000, 65000, 200000):
                E.append(("TOP_K", lambda k=k, ne=[cols, nrows, 1, 1]: _unary(
                    "TOP_K", lambda c, a: gg.top_k(c, a, k), ne, k=k, ties=False)))
    for nrows in (1, 4, 8, 16):
        for cols in (128, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 200000, 2000000):
            E.append(("CUMSUM", lambda ne=[cols, nrows, 1, 1]: _unary("CUMSUM", gg.cumsum, ne)))
    return E


def perf_cases(ops=None, pattern=None):
    """(OpDef, Case) of ggml's perf list that pyggml can build, filtered like all_cases
    (op names or full case strings, regex over the vars), and how many were skipped.
    A full case string that is not in the list is looked up in the eval grid."""
    import re

    from ..ops.registry import OPS
    from .harness import split_ops
    wanted = split_ops(ops) or None
    names = {w.upper() for w in wanted if "(" not in w} if wanted else set()
    full = {w for w in wanted if "(" in w} if wanted else set()
    rx = re.compile(pattern) if pattern else None
    out, skipped = [], 0
    for name, make in _entries():
        if wanted and name not in names and not any(w.startswith(name + "(") for w in full):
            continue
        if name not in OPS:
            skipped += 1
            continue
        try:
            case = make()
            _check_buildable(case)
        except (GGMLError, KeyError, ValueError):       # a type or shape pyggml lacks
            skipped += 1
            continue
        if full and names.isdisjoint({name}) and str(case) not in full:
            continue
        if rx and not rx.search(case.vars_str):
            continue
        out.append((OPS[name], case))
    if not wanted or names:
        skipped += sum(n for fam, n in UNTRANSCRIBED.items()
                       if not wanted or fam.split(" ")[0] in names)
    # a full case string that is not in ggml's perf list times that case of the eval grid
    # (ggml finds only its perf list's; timing one small eval case is still useful)
    listed = {str(c) for _, c in out}
    extra = sorted(full - listed)
    if extra:
        from .harness import all_cases
        out += list(all_cases(extra, pattern))
    return out, skipped


def _check_buildable(case: Case) -> None:
    """Build the case's graph without data: a type pyggml lacks fails here, not mid-run."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    case.build(ctx)
