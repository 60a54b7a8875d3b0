"""The kernels' verdict contract (kernels/__init__.py, verdicts.py): supports, spec, n_tasks,
work_size and private_work read only a node's signature, so the backend keeps them per
signature; a memo answer is never stale."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.base import is_computed
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import add_kernel
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.backends.numba_cpu.plan import graph_plan
from pyggml.backends.numba_cpu.verdicts import NodeSig
from pyggml.backends.numba_cpu.verdicts import Verdicts
from pyggml.backends.numba_cpu.verdicts import sig_key
from pyggml.errors import GGMLError
from pyggml.testing.harness import build_graph
from pyggml.testing.harness import op_cases

COPY_ELEMENTS = KERNELS["CONT"].variants[0].pyfunc
CASES_PER_OP = 12            # spread over each op's grid
# FLASH_ATTN_EXT's grid takes seconds to generate; its kernel's verdicts are WITH_STATE's
# (one body, one supports and work_size), sampled from that op's grid and _fa_nodes
SKIP_GRID = {"FLASH_ATTN_EXT"}


def _fa_nodes():
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    for kt in (gg.TYPE_F16, gg.TYPE_Q4_0, gg.TYPE_F32, gg.TYPE_Q8_0):
        for n_batch, prec in ((1, gg.PREC_DEFAULT), (7, gg.PREC_F32), (40, gg.PREC_DEFAULT)):
            q = gg.new_tensor_3d(ctx, gg.TYPE_F32, 64, n_batch, 8)
            k = gg.new_tensor_3d(ctx, kt, 64, 256, 2)
            v = gg.new_tensor_3d(ctx, kt, 64, 256, 2)
            m = gg.new_tensor_2d(ctx, gg.TYPE_F16, 256, 64)
            y = gg.flash_attn_ext(ctx, q, k, v, m, 0.125)
            gg.flash_attn_ext_set_prec(y, prec)
            yield y


def _sampled_nodes():
    """Computed nodes of a spread of every op's own cases (types, shapes, views, params)."""
    from pyggml.ops.registry import OPS
    yield from _fa_nodes()
    for name in sorted(OPS):
        op = OPS[name]
        if op.cases is None or name in SKIP_GRID:
            continue
        cases = op_cases(op)
        step = max(1, len(cases) // CASES_PER_OP)
        for case in cases[::step]:
            try:
                _, _, gf = build_graph(case)
            except GGMLError:
                continue
            yield from (n for n in gf.nodes if is_computed(n))


def _verdicts(k, node, n_threads):
    ok = bool(k.supports(node))
    if not ok:
        return (False,)
    spec = tuple(k.spec(node)) if k.spec is not None else None
    return (True, spec) + tuple(None if f is None else int(f(node, n_threads))
                                for f in (k.n_tasks, k.work_size, k.private_work))


def test_every_registered_verdict_reads_only_the_signature():
    """Each variant of every kernel entry answers a NodeSig (which has nothing but the
    signature: any other attribute is an AttributeError) as it answers the node itself."""
    seen = set()
    n = 0
    for node in _sampled_nodes():
        entry = KERNELS.get(node.op.name)
        if entry is None:
            continue
        key = sig_key(node)
        if key in seen:
            continue
        seen.add(key)
        sig = NodeSig(node)
        for k in entry.variants:
            for nt in (1, 3):
                assert _verdicts(k, sig, nt) == _verdicts(k, node, nt), (k.key, node)
                n += 1
    assert n > 1000 and len({key[0].name for key in seen}) > 100


def test_a_verdict_that_reads_more_than_the_signature_fails():
    """A supports() reading the node's name (or data, or buffer) raises where the kernel
    table is asked, instead of quietly keying a memo on too little."""
    ctx = gg.init(mem_size=1 << 20)
    y = gg.cont(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 8))
    for peek in (lambda n: n.name == "x", lambda n: n.data_ptr > 0, lambda n: n.view_src is None,
                 lambda n: n.src[0].op is None, lambda n: n.src[0].name != ""):
        table = {}
        add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, supports=peek), "CONT")
        be = NumbaBackend(1, kernels=table)
        with pytest.raises(AttributeError):
            be.supports_op(y)
        with pytest.raises(AttributeError):
            table["CONT"].select(y)
        be.free()


def _probe_table():
    """A CONT kernel whose work size reads every signature field: any change is a new plan."""
    def work(node, n_threads):
        s = node.src[0]
        return hash((int(node.type), tuple(node.ne), tuple(node.nb), node.op_params.tobytes(),
                     int(s.type), tuple(s.ne), tuple(s.nb), n_threads)) % 100_000 + 1
    table = {}
    add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, work_size=work), "CONT")
    return table, work


def test_the_memo_keys_on_every_field_a_verdict_reads():
    """Nodes that differ in one field of the signature (dst or source type, ne, nb,
    op_params) get their own verdicts from a memo that already holds the first's."""
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6)
    b = gg.new_tensor_2d(ctx, gg.TYPE_F16, 8, 6)
    base = gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6))
    variants = [
        gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6)),          # equal signature
        gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F16, 8, 6)),          # dst type
        gg.cpy(ctx, b, gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6)),          # source type
        gg.cpy(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 6, 8),
               gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6)),                 # source ne
        gg.cpy(ctx, gg.view_2d(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 9, 6), 8, 6, 36, 0),
               gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6)),                 # source nb
        gg.cpy(ctx, a, gg.new_tensor_2d(ctx, gg.TYPE_F32, 6, 8)),          # dst ne
    ]
    table, work = _probe_table()
    table["CPY"] = table["CONT"]
    be = NumbaBackend(2, kernels=table)
    memo = be.verdicts()
    first = memo.get(base)
    assert first[2] == work(NodeSig(base), 2)
    keys = {sig_key(base)}
    for i, node in enumerate(variants):
        got = memo.get(node)
        assert got == Verdicts(table, 2).get(node), i          # a fresh memo agrees
        assert got[2] == work(NodeSig(node), 2), i
        if i == 0:
            assert sig_key(node) == sig_key(base) and got is first
        else:
            assert sig_key(node) not in keys and got[2] != first[2], i
            keys.add(sig_key(node))
    be.free()


def test_the_memo_keys_on_op_params_and_thread_count():
    """op_params (set_op_params on a node) and the backend's thread count change the plan."""
    def n_tasks(node, n_threads):
        return 1 + node.op_params[0] % n_threads
    table = {}
    add_kernel(table, make_kernel("SCALE", COPY_ELEMENTS, n_tasks=n_tasks), "SCALE")
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    x = gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 6)
    nodes = [gg.scale(ctx, x, s) for s in (1.0, 2.0, 3.0)]
    be = NumbaBackend(3, kernels=table)
    got = [be.verdicts().get(n)[1] for n in nodes]
    assert got == [1 + int(n.op_params[0]) % 3 for n in nodes] and len(set(got)) > 1
    be.set_n_threads(2)
    assert [be.verdicts().get(n)[1] for n in nodes] == \
        [1 + int(n.op_params[0]) % 2 for n in nodes]
    be.free()


def test_a_changed_kernel_table_empties_the_memo():
    """Editing an entry's variants in place, adding a kernel or setting a variant's verdict
    function: the next plan sees the change."""
    ctx = gg.init(mem_size=1 << 20)
    y = gg.cont(ctx, gg.new_tensor_2d(ctx, gg.TYPE_F32, 8, 8))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    table = {}
    k = make_kernel("CONT", COPY_ELEMENTS, work_size=lambda n, nt: 100)
    add_kernel(table, k, "CONT")
    be = NumbaBackend(2, kernels=table)
    assert be.supports_op(y) and graph_plan(gf, 2, be, be.select(gf)).work_size == 100 + 128
    k.work_size = lambda n, nt: 200
    assert graph_plan(gf, 2, be, be.select(gf)).work_size == 200 + 128
    k.supports = lambda n: False
    assert not be.supports_op(y)
    k.supports = lambda n: True
    assert be.supports_op(y)
    table["CONT"].variants.clear()
    assert not be.supports_op(y)
    with pytest.raises(gg.UnsupportedError):
        be.select(gf)
    add_kernel(table, make_kernel("CONT", COPY_ELEMENTS, n_tasks=lambda n, nt: 1), "CONT")
    assert be.select(gf).facts[0][1:3] == (1, 0)
    be.free()


def test_select_and_plan_agree_with_asking_every_node():
    """The memo's plan of a graph with repeated signatures is the one asked node by node."""
    ctx = gg.init(mem_size=16 << 20, no_alloc=True)
    x = gg.new_tensor_2d(ctx, gg.TYPE_F32, 64, 3)
    w = gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 64, 32)
    h = x
    for _ in range(4):
        h = gg.rms_norm(ctx, gg.add(ctx, h, x), 1e-6)
        h = gg.mul_mat(ctx, gg.new_tensor_2d(ctx, gg.TYPE_Q4_0, 64, 64), h)
    y = gg.soft_max(ctx, gg.mul_mat(ctx, w, h))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    be = NumbaBackend(2)
    sel = be.select(gf)
    memo_plan = graph_plan(gf, 2, be, sel)
    asked = graph_plan(gf, 2, be, list(sel))            # no facts: asks each node's kernel
    assert memo_plan.n_tasks == asked.n_tasks and memo_plan.work_size == asked.work_size
    assert memo_plan.work_size > 0
    assert len(be.verdicts().memo) < sum(1 for n in gf.nodes if is_computed(n))
    np.testing.assert_equal([k is not None for k in sel], [is_computed(n) for n in gf.nodes])
    be.free()
