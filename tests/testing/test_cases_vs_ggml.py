"""tools/cases_vs_ggml.py against the committed ggml case list (tests/testing/fixtures/
ggml_support_cpu.csv.gz, from tools/make_ggml_cases_fixture.py): the matcher's rules, and the
ops issue 20 added cover every case ggml lists for them."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "cases_vs_ggml.py"
_spec = importlib.util.spec_from_file_location("cases_vs_ggml", _TOOL)
cvg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cvg)

PARITY_OPS = ["FILL", "TRI", "DIAG", "SOLVE_TRI", "ROLL", "PAD_REFLECT_1D", "CONV_2D_DW",
              "CONV_TRANSPOSE_2D", "IM2COL_3D", "CONV_3D", "COL2IM_1D", "RWKV_WKV6",
              "GATED_LINEAR_ATTN", "RWKV_WKV7", "GATED_DELTA_NET", "MUL_MAT_HADAMARD",
              "LIGHTNING_INDEXER", "DSV4_HC_COMB", "DSV4_HC_PRE", "DSV4_HC_POST"]


def test_split_vars_keeps_brackets():
    assert cvg.split_vars("type=f32,ne=[4,3,2,1],v=0,f=(1,2)") == \
        {"type": "f32", "ne": "[4,3,2,1]", "v": "0", "f": "(1,2)"}


def test_match_on_ggmls_fields_only():
    ggml = [("ROLL", "shift0=3,shift1=-2"), ("ROLL", "shift0=1,shift1=0")]
    ours = [("ROLL", "shift0=3,shift1=-2,permute=0")]          # an extra field is ignored
    result, counts = cvg.match(ggml, ours)
    assert result["ROLL"][1] == [True, False] and counts == {"ROLL": 1}
    buf = io.StringIO()
    assert cvg.report(result, counts, missing=5, out=buf) == (1, 2)
    assert "lacks ROLL(shift0=1,shift1=0)" in buf.getvalue()


def test_parity_ops_cover_ggmls_eval_cases():
    if not Path(cvg.FIXTURE).is_file():
        pytest.skip("no ggml case list fixture")
    ggml = [c for c in cvg.read_csv_cases(cvg.FIXTURE, backend="CPU") if c[0] in PARITY_OPS]
    assert {op for op, _ in ggml} == set(PARITY_OPS)
    result, _ = cvg.match(ggml, cvg.pyggml_cases(",".join(PARITY_OPS)))
    lacking = {op: [vs for vs, ok in zip(*result[op]) if not ok][:3] for op in result
               if not all(result[op][1])}
    assert not lacking, lacking


# ops whose grids follow make_test_cases_eval over ggml's type lists: every ggml case whose
# types pyggml has (and the op takes) is matched; `takes` narrows FLASH_ATTN_EXT to the K/V
# types its kernels accept
GRID_OPS = ["CPY", "FLASH_ATTN_EXT", "MUL_MAT", "MUL_MAT_ID", "OUT_PROD", "GET_ROWS", "SET_ROWS"]


def _types_we_have(op, vs):
    from pyggml.ops import cases_common as cc
    from pyggml.types import FA_KV_TYPES
    types = [v for k, v in cvg.split_vars(vs).items() if "type" in k]
    if not all(cc.has_type(t) for t in types):
        return False
    if op == "FLASH_ATTN_EXT":
        d = cvg.split_vars(vs)
        # ggml's large-KV F16 cases (kv >= 4096 at nb = 512) are too big for the reference
        return all(cc.ggml_type(t) in FA_KV_TYPES for t in types) and \
            not (int(d["kv"]) >= 4096 and int(d["nb"]) >= 512)
    return True


def test_grid_ops_cover_ggmls_cases_over_our_types():
    if not Path(cvg.FIXTURE).is_file():
        pytest.skip("no ggml case list fixture")
    ggml = [c for c in cvg.read_csv_cases(cvg.FIXTURE, backend="CPU")
            if c[0] in GRID_OPS and _types_we_have(*c)]
    assert {op for op, _ in ggml} == set(GRID_OPS)
    result, _ = cvg.match(ggml, cvg.pyggml_cases(",".join(GRID_OPS)))
    lacking = {op: [vs for vs, ok in zip(*result[op]) if not ok][:3] for op in result
               if not all(result[op][1])}
    assert not lacking, lacking


def test_core_coverage_counts_the_core_types_only():
    buf = io.StringIO()
    ggml = [("CPY", "type_src=f32,type_dst=q4_0"), ("CPY", "type_src=f32,type_dst=iq2_xs")]
    result, counts = cvg.match(ggml, [("CPY", "type_src=f32,type_dst=q4_0")])
    cvg.report(result, counts, out=buf)
    assert "core types: 1/1 (100.0%)" in buf.getvalue()
    assert cvg.is_core("type_src=f32,type_dst=mxfp4") and not cvg.is_core("type_K=q1_0")
