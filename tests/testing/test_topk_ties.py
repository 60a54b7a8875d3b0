"""TOP_K's cases compare as ggml's test_top_k::err does: any order, any choice among ties.

Real ggml breaks TOP_K ties differently from the reference (which keeps index order), so
an exact comparison fails ggml on every tied case. ggml's rule: per row the picked indices
(with ties: the values they pick) must agree as multisets, and no index may repeat.

Test-only TOP_K kernels, registered in a private numba kernel table, make both sides of the
rule real: one resolves ties the other way round (must pass), the others pick a wrong
element, repeat a tied index or point past the row (must fail).
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

from pyggml import data
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.desc import DST
from pyggml.backends.numba_cpu.desc import SRC0
from pyggml.backends.numba_cpu.desc import row_range
from pyggml.backends.numba_cpu.desc import t_addr
from pyggml.backends.numba_cpu.desc import t_nb
from pyggml.backends.numba_cpu.desc import t_ne
from pyggml.backends.numba_cpu.intrinsics import ptr_of
from pyggml.backends.numba_cpu.kernels import KernelEntry
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.backends.reference.backend import ReferenceBackend
from pyggml.ops.case import Case
from pyggml.ops.registry import OPS
from pyggml.testing import harness
from pyggml.testing.harness import all_cases
from pyggml.testing.harness import run_test
from pyggml.types import GGMLType

TIES = "TOP_K(type=f32,ne=[27,1,2,1],k=7,ties=1)"        # values 0..8, each 3 times
TIES_ALL = "TOP_K(type=f32,ne=[4,2,1,3],k=4,ties=1)"      # k == n: every index, any order
UNIQUE = "TOP_K(type=f32,ne=[16,10,10,10],k=3,ties=0)"

# what the test kernels do after picking the k largest (ties: highest index first)
OTHER_TIES, REPEAT_TIED, WRONG_PICK, PAST_ROW = 0, 1, 2, 3


@numba.njit(nogil=True, cache=True)
def _top_k_rows(desc, ith, nth, mode):
    n = t_ne(desc, SRC0, 0)
    ne01, ne02 = t_ne(desc, SRC0, 1), t_ne(desc, SRC0, 2)
    k = t_ne(desc, DST, 0)
    ir0, ir1 = row_range(ne01 * ne02 * t_ne(desc, SRC0, 3), ith, nth)
    for r in range(ir0, ir1):
        i1, i2, i3 = r % ne01, (r // ne01) % ne02, r // (ne01 * ne02)
        s = t_addr(desc, SRC0) + i1 * t_nb(desc, SRC0, 1) + i2 * t_nb(desc, SRC0, 2) + \
            i3 * t_nb(desc, SRC0, 3)
        d = t_addr(desc, DST) + i1 * t_nb(desc, DST, 1) + i2 * t_nb(desc, DST, 2) + \
            i3 * t_nb(desc, DST, 3)
        s0, d0 = t_nb(desc, SRC0, 0), t_nb(desc, DST, 0)
        # selection in the total order (value desc, index desc): ties the other way round
        pv, pi = np.float32(np.inf), n
        for j in range(k):
            bv, bi = np.float32(-np.inf), -1
            for i in range(n):
                v = ptr_of(s + i * s0, np.float32)[0]
                if (v < pv or (v == pv and i < pi)) and (bi < 0 or v > bv or (v == bv and i > bi)):
                    bv, bi = v, i
            ptr_of(d + j * d0, np.int32)[0] = bi
            pv, pi = bv, bi
        if mode == REPEAT_TIED:        # same values picked, but one index twice
            for j in range(1, k):
                a, b = ptr_of(d + (j - 1) * d0, np.int32)[0], ptr_of(d + j * d0, np.int32)[0]
                if ptr_of(s + a * s0, np.float32)[0] == ptr_of(s + b * s0, np.float32)[0]:
                    ptr_of(d + j * d0, np.int32)[0] = a
                    break
        elif mode == WRONG_PICK and k < n:   # the last pick becomes the row's minimum
            m = 0
            for i in range(n):
                if ptr_of(s + i * s0, np.float32)[0] < ptr_of(s + m * s0, np.float32)[0]:
                    m = i
            ptr_of(d + (k - 1) * d0, np.int32)[0] = m
        elif mode == PAST_ROW:
            ptr_of(d + (k - 1) * d0, np.int32)[0] = n


def top_k_other_ties(desc, ith, nth):
    _top_k_rows(desc, ith, nth, OTHER_TIES)


def top_k_repeat_tied(desc, ith, nth):
    _top_k_rows(desc, ith, nth, REPEAT_TIED)


def top_k_wrong_pick(desc, ith, nth):
    _top_k_rows(desc, ith, nth, WRONG_PICK)


def top_k_past_row(desc, ith, nth):
    _top_k_rows(desc, ith, nth, PAST_ROW)


def _backend(pyfunc) -> NumbaBackend:
    """numba, except that TOP_K runs `pyfunc` (a private table: the real one is untouched)."""
    from pyggml.backends.numba_cpu.kernels import KERNELS
    sup = lambda node: node.type == GGMLType.I32 and node.src[0].type == GGMLType.F32  # noqa
    table = dict(KERNELS)
    table["TOP_K"] = KernelEntry("TOP_K", [make_kernel("TOP_K", pyfunc, sup)])
    return NumbaBackend(2, kernels=table)


@pytest.fixture(scope="module")
def ref():
    return ReferenceBackend()


def _case(s: str) -> Case:
    got = [c for _, c in all_cases(s)]
    assert len(got) == 1, (s, got)
    return got[0]


def _exact(case: Case) -> Case:
    """The same case without its error function: the exact comparison of other ops."""
    return Case(case.op, case.vars, case.build, init=case.init, exact=True)


def _run(case, pyfunc, ref):
    be = _backend(pyfunc)
    try:
        return run_test(case, be, ref)
    finally:
        be.free()


def test_every_top_k_case_has_ggmls_error_function():
    cases = OPS["TOP_K"].cases()
    assert cases and all(callable(getattr(c, "err", None)) for c in cases)
    assert any(c.vars["ties"] for c in cases) and any(not c.vars["ties"] for c in cases)


def test_other_tie_resolution_passes(ref):
    for s in (TIES, TIES_ALL):
        case = _case(s)
        r = _run(case, top_k_other_ties, ref)
        assert r.status == "OK" and r.err == 0.0, (s, r)
        # the picks really differ from the reference's: only ggml's rule lets them pass
        r = _run(_exact(case), top_k_other_ties, ref)
        assert r.status == "FAIL" and "not identical" in r.message, (s, r)


def test_another_order_of_the_same_indices_passes(ref):
    """No ties: ggml compares index sets (the reference swaps the first two, this kernel not)."""
    r = _run(_case(UNIQUE), top_k_other_ties, ref)
    assert r.status == "OK", r
    assert _run(_exact(_case(UNIQUE)), top_k_other_ties, ref).status == "FAIL"


@pytest.mark.parametrize("pyfunc, case", [
    (top_k_wrong_pick, TIES), (top_k_wrong_pick, UNIQUE),
    (top_k_repeat_tied, TIES), (top_k_repeat_tied, TIES_ALL),
    (top_k_past_row, TIES), (top_k_past_row, UNIQUE)])
def test_a_wrong_selection_fails(ref, pyfunc, case):
    r = _run(_case(case), pyfunc, ref)
    assert r.status == "FAIL" and r.err > 0 and "own error function" in r.message, r


def _ref_and_node(s: str, ref):
    case = _case(s)
    _, out, gf = harness.build_graph(case)
    harness.alloc_guarded(gf)
    harness.fill_leafs(gf, case, 0)
    ref.graph_compute(gf)
    return case, data.read(out), out


def test_error_values_follow_ggml(ref):
    case, a, node = _ref_and_node(TIES, ref)
    src = data.read(node.src[0]).reshape(-1, 27)
    assert case.err(a, a, node) == 0.0
    # row 0: swap the last pick for another index holding the same value -> still 0
    b = a.copy().reshape(-1, 7)
    row = src[0]
    last = b[0, -1]
    twin = next(i for i in range(27) if row[i] == row[last] and i not in b[0])
    b[0, -1] = twin
    assert case.err(a, b.reshape(a.shape), node) == 0.0
    # a smaller value instead: jdst = 2 differing of 2k = 14 picks
    b[0, -1] = int(np.argmin(row))
    assert case.err(a, b.reshape(a.shape), node) == pytest.approx(2 / 14)
    # an index repeated (value unchanged) costs 1 for the row
    b = a.copy().reshape(-1, 7)
    j = next(j for j in range(1, 7) if row[b[0, j]] == row[b[0, j - 1]])
    b[0, j] = b[0, j - 1]
    assert case.err(a, b.reshape(a.shape), node) == 1.0


def test_ties_with_real_ggml(ref):
    from pyggml.testing.ggml_lib import available
    if not available():
        pytest.skip("libggml-python is not installed")
    from pyggml.testing.ggml_backend import GGMLBackend
    be = GGMLBackend()
    for s in (TIES, TIES_ALL, UNIQUE):
        r = run_test(_case(s), be, ref)
        assert r.status == "OK", (s, r)


def test_argsort_cases_have_no_ties():
    """ggml's test_argsort fills each row with a shuffle of 0..n-1: the order is defined, the
    comparison stays exact."""
    for c in OPS["ARGSORT"].cases():
        if "slow" in c.tags:
            continue
        assert c.exact and getattr(c, "err", None) is None
        _, out, gf = harness.build_graph(c)
        harness.alloc_guarded(gf)
        harness.fill_leafs(gf, c, 0)
        x = data.read(gf.leafs[0]).reshape(-1, out.ne[0])
        assert (np.sort(x, axis=1) == np.arange(out.ne[0])).all(), c
