"""The ops ggml's test-backend-ops has that pyggml gained for parity (issue 20).

(a) every non-slow case: the NumPy reference against real ggml's CPU (a child process per op,
    so a GGML_ASSERT abort cannot take pytest down), within the case's threshold;
(b) numba == reference at 1, 2 and 3 threads on every non-slow case;
(c) misuse raises a GGMLError subclass naming the op (tests/ops/test_parity_errors.py).
"""
from __future__ import annotations

import pytest
from _cases import assert_isolated_vs_ggml
from _cases import assert_numba_matches
from _cases import sample

PARITY_OPS = ["FILL", "TRI", "DIAG", "SOLVE_TRI", "ROLL", "PAD_REFLECT_1D", "CONV_2D_DW",
              "CONV_TRANSPOSE_2D", "IM2COL_3D", "CONV_3D", "COL2IM_1D", "RWKV_WKV6", "GATED_LINEAR_ATTN", "RWKV_WKV7",
              "GATED_DELTA_NET", "MUL_MAT_HADAMARD", "LIGHTNING_INDEXER", "DSV4_HC_COMB",
              "DSV4_HC_PRE", "DSV4_HC_POST"]


def _op_cases(name):
    """The cases ggml prints under name (MUL_MAT_HADAMARD's belong to MUL_MAT)."""
    from pyggml.ops.registry import OPS
    owner = next(op for op in OPS.values() if name in (op.name, *op.extra.get("case_ops", ())))
    return [c for c in owner.cases() if c.op == name]


def _cases(name, k=160):
    return sample([c for c in _op_cases(name) if "slow" not in c.tags and "no_ggml" not in c.tags],
                   k)


def _reference_vs_ggml(cases):
    from pyggml.testing.conformance import reference_vs_ggml
    out = []
    for case in cases:
        try:
            ok, err, msg = reference_vs_ggml(case, seed=1)
            out.append((str(case), ok, f"nmse {err:.3g} {msg}"))
        except Exception as e:                     # noqa: BLE001 (reported per case)
            out.append((str(case), False, f"{type(e).__name__}: {e}"))
    return out


@pytest.mark.parametrize("name", PARITY_OPS)
def test_reference_matches_ggml(name, ggml):
    assert_isolated_vs_ggml(name, _cases(name), _reference_vs_ggml)


@pytest.mark.parametrize("name", PARITY_OPS)
def test_numba_matches_reference(name, numba_backends):
    # at most 40 cases an op (IM2COL_3D alone has 2,051)
    assert_numba_matches(sample([c for c in _op_cases(name) if "slow" not in c.tags], 40),
                         numba_backends, seed=5)
