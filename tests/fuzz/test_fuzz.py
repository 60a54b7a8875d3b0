"""Generated-graph fuzzing (pyggml/testing/fuzz.py): the CI profile and the fuzzer's own tests.

The property: any graph the generator builds from the registered ops computes on the CPU
backend at 1, 2 and 3 threads as on the reference, node by node, inside test-backend-ops'
harness (guard bytes, ggml's thresholds), or both backends refuse its inputs. CI runs a
bounded, derandomized profile over ops whose kernels the suite already compiles; long
campaigns are `pyggml fuzz --examples N --seed S`.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from pyggml import compute
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.desc import DST
from pyggml.backends.numba_cpu.desc import SRC0
from pyggml.backends.numba_cpu.desc import row_range
from pyggml.backends.numba_cpu.desc import t_addr
from pyggml.backends.numba_cpu.desc import t_ne
from pyggml.backends.numba_cpu.intrinsics import f32_array
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import KernelEntry
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.context import init
from pyggml.testing import fuzz
from pyggml.testing.fuzz_cli import main as fuzz_main
from pyggml.types import GGMLType

# the CI mix: cheap kernels the rest of the suite compiles anyway (no FLASH_ATTN grid)
CI_OPS = ["ADD", "SUB", "MUL", "DIV", "SCALE", "SQR", "SQRT", "NEG", "ABS", "SILU", "GELU", "TANH",
          "EXP", "SIGMOID", "CLAMP", "CONT", "CPY", "DUP", "CONCAT", "REPEAT", "GET_ROWS",
          "SET_ROWS", "SUM_ROWS", "SUM", "MEAN", "ARGMAX", "NORM", "RMS_NORM", "L2_NORM",
          "SOFT_MAX", "ROPE", "MUL_MAT", "SWIGLU", "GEGLU", "PAD", "CUMSUM", "DIAG_MASK_INF",
          "ARGSORT", "TOP_K", "ACC", "SET"]
CI_EXAMPLES = 300
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def runner():
    r = fuzz.Runner((1, 2, 3))
    yield r
    r.free()


def test_ci_profile(runner):
    ops = runner.ops(CI_OPS)
    seen = {"graphs": 0, "nodes": 0, "chained": 0}

    @settings(max_examples=CI_EXAMPLES, **SETTINGS)
    @given(st.data())
    def prop(data):
        spec = fuzz.gen_graph(fuzz.DataChooser(data), ops, 4, runner.supports)
        spec, out = runner.check_shrunk(spec)
        seen["graphs"] += 1
        seen["nodes"] += len(spec.nodes)
        seen["chained"] += any("node" in s for n in spec.nodes for s in n["srcs"] if s)
        assert out.status != "FAIL", f"{spec}: {out.message}\nrepro: {spec.snippet()}"

    prop()
    # the generator must not collapse into trivial graphs
    assert seen["graphs"] == CI_EXAMPLES and seen["nodes"] > 1.5 * CI_EXAMPLES
    assert seen["chained"] > CI_EXAMPLES // 10, seen     # ~1 in 4 measured


# --- the fuzzer finds a wrong kernel and shrinks it ------------------------------------------------

@numba.njit(nogil=True, cache=True)
def _sqr_off_by_a_bit(desc, ith, nth):
    n = t_ne(desc, SRC0, 0) * t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3)
    src = f32_array(t_addr(desc, SRC0), n)
    dst = f32_array(t_addr(desc, DST), n)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        dst[i] = src[i] * src[i] * np.float32(1.01)


def sqr_off_by_a_bit(desc, ith, nth):
    _sqr_off_by_a_bit(desc, ith, nth)


def _contiguous_f32(node) -> bool:
    s = node.src[0]
    return node.type == GGMLType.F32 and s.type == GGMLType.F32 and s.nb[0] == 4 and \
        s.nb[1] == 4 * s.ne[0] and s.nb[2] == s.nb[1] * s.ne[1] and s.nb[3] == s.nb[2] * s.ne[2]


class BadSqrBackend(NumbaBackend):
    name = "badsqr"

    def __init__(self, n_threads=None):
        table = dict(KERNELS)
        table["SQR"] = KernelEntry("SQR", [make_kernel("SQR", sqr_off_by_a_bit, _contiguous_f32)]
                                   + list(KERNELS["SQR"].variants))
        super().__init__(n_threads or 1, kernels=table)


def test_a_wrong_kernel_is_found_and_shrunk_to_one_node(monkeypatch):
    monkeypatch.setitem(compute.BACKENDS, BadSqrBackend.name, BadSqrBackend)
    r = fuzz.Runner((1, 2), backend=BadSqrBackend.name)
    failing = []
    try:
        @settings(max_examples=200, **SETTINGS)
        @given(st.data())
        def prop(data):
            spec = fuzz.gen_graph(fuzz.DataChooser(data), ["SQR", "ADD", "NEG", "CONT"], 4,
                                  r.supports)
            spec, out = r.check_shrunk(spec)
            if out.status == "FAIL":
                failing.append((spec, out))
            assert out.status != "FAIL", f"{spec}: {out.message}\nrepro: {spec.snippet()}"

        with pytest.raises(AssertionError) as e:
            prop()
    finally:
        r.free()
    # Hypothesis replays its shrunk example last; fuzz.shrink drops what Hypothesis cannot
    # (an unrelated CONT node drawn before the SQR)
    spec, out = failing[-1]
    assert [n["case"].split("(")[0] for n in spec.nodes] == ["SQR"], spec.nodes
    assert "NMSE" in out.message and "badsqr/1t" in out.message
    assert "from pyggml.testing.fuzz import replay" in str(e.value)
    # the printed repro rebuilds the graph: on the real kernel it passes
    assert fuzz.replay(spec.to_json(), threads=(1,)).status == "OK"


# --- the generator ------------------------------------------------------------------------------------

def test_examples_are_reproducible_and_round_trip_as_json(runner):
    ops = runner.ops(CI_OPS)
    for k in range(20):
        a = runner.example(7, k, ops)
        assert a.to_json() == runner.example(7, k, ops).to_json()
        b = fuzz.GraphSpec.from_json(a.to_json())
        ctx = init(mem_size=16 << 20, no_alloc=True)
        built = fuzz.build_spec(ctx, b)
        assert len(built) == len(a.nodes) and all(t.op is not None for t in built)


def test_generated_graphs_cover_layouts_zero_sizes_and_types(runner):
    ops = runner.ops(CI_OPS)
    layouts, zero, types, views = set(), 0, set(), set()
    for k in range(300):
        for n in runner.example(3, k, ops).nodes:
            for s in n["srcs"]:
                if s is None:
                    continue
                if "leaf" in s:
                    layouts.add(s["leaf"][3][0])
                    zero += 0 in s["leaf"][1]
                    types.add(s["leaf"][0])
                else:
                    views.add(s["view"][0])
    assert layouts == set(fuzz.LAYOUTS) and views == {"none", "transpose", "perm"}
    assert zero > 0
    assert {int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.Q4_0), int(GGMLType.I32)} <= types


def test_ancestors_keeps_what_a_node_needs():
    spec = fuzz.GraphSpec([
        {"case": "a", "srcs": [{"leaf": 1}]},
        {"case": "b", "srcs": [{"leaf": 1}]},
        {"case": "c", "srcs": [{"node": 1, "view": ["none", None]}, {"leaf": 2}]},
    ])
    small = fuzz.ancestors(spec, 2)
    assert [n["case"] for n in small.nodes] == ["b", "c"]
    assert small.nodes[1]["srcs"][0]["node"] == 0


def test_shrink_cuts_an_unrelated_chain_down_to_the_failing_node():
    """A wrong SQR fed by a NEG, beside an unrelated CONT: shrink keeps the SQR alone, its
    source a leaf of the NEG's shape and type, as long as the check still fails there."""
    sqr = fuzz.templates("SQR")[0]
    neg = next(t for t in fuzz.templates("NEG") if t.slots[0].type == sqr.slots[0].type)
    cont = fuzz.templates("CONT")[0]

    def leaf(tpl):
        s = tpl.slots[0]
        return {"leaf": [s.type, list(s.ne), s.name, ["cont"]]}
    spec = fuzz.GraphSpec([
        {"case": cont.key, "srcs": [leaf(cont)], "hints": cont.hints},
        {"case": neg.key, "srcs": [leaf(neg)], "hints": neg.hints},
        {"case": sqr.key, "srcs": [{"node": 1, "view": ["none", None]}], "hints": {}},
    ])
    checked = []

    def check(s):                    # "the SQR kernel is wrong": any graph with a SQR fails
        checked.append(s)
        ops = [n["case"].split("(")[0] for n in s.nodes]
        return fuzz.Outcome("FAIL", "NMSE", ops.index("SQR")) if "SQR" in ops else fuzz.Outcome("OK")
    small, out = fuzz.shrink(spec, check(spec), check)
    assert [n["case"] for n in small.nodes] == [sqr.key] and out.node == 0
    src = small.nodes[0]["srcs"][0]
    assert src["leaf"][:2] == [neg.slots[0].type, list(neg.slots[0].ne)]
    # a cut that makes the failure go away is not taken
    small, out = fuzz.shrink(spec, check(spec), lambda s: check(s) if len(s.nodes) > 1
                             else fuzz.Outcome("OK"))
    assert [n["case"].split("(")[0] for n in small.nodes] == ["NEG", "SQR"] and out.node == 1


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_campaign_and_single_example(capsys):
    assert fuzz_main(["--examples", "6", "--seed", "1", "--ops", "SQR,ADD,CONT",
                      "--threads", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "fuzz: seed 1: 6 graphs" in out and "0 FAIL" in out
    assert fuzz_main(["--examples", "6", "--start", "4", "--seed", "1", "--ops", "SQR,ADD,CONT",
                      "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "fuzz: seed 1 (examples 4..5): 2 graphs" in out and "0 FAIL" in out
    assert fuzz_main(["--seed", "1", "--example", "2", "--ops", "SQR,ADD,CONT"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("example 2: ") and "replay(" in out and out.rstrip().endswith("OK")


def test_cli_bad_ops_is_one_line_and_exit_2(capsys):
    assert fuzz_main(["--ops", "NO_SUCH_OP", "--examples", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NO_SUCH_OP" in err
    for argv, says in ((["--examples", "3", "--start", "5"], "--start 5"),
                       (["--examples", "-1"], "--examples -1"),
                       (["--threads", "0"], "--threads 0"), (["--threads", "a,2"], "--threads a,2"),
                       (["--max-nodes", "0"], "--max-nodes 0"), (["--example", "-2"], "--example -2")):
        assert fuzz_main(["--ops", "SQR"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (argv, err)


def test_templates_of_cases_printed_under_another_name_are_found():
    """Seed 301 example 329: a MUL_MAT_HADAMARD case (an OpDef's extra case_ops name) was
    looked up as an op of its own: KeyError in the reference run."""
    from pyggml.ops.registry import OPS
    owner = next(n for n, op in OPS.items() if "MUL_MAT_HADAMARD" in op.extra.get("case_ops", ()))
    tpl = next(t for t in fuzz.templates(owner) if t.key.startswith("MUL_MAT_HADAMARD("))
    assert fuzz.template(tpl.key) is tpl
