"""Registry completeness: every op is declared once with every rule the product relies on."""
import inspect

import pytest

import pyggml as gg
from pyggml import ops
from pyggml.ops.case import Case
from pyggml.ops.registry import OPS
from pyggml.ops.registry import OpDef

# ops that exist only in pyggml, so real ggml has no recipe for them
PYGGML_ONLY = {"FLASH_ATTN_EXT_WITH_STATE"}


def test_every_family_loads():
    assert ops.LOAD_ERRORS == {}, f"op families failed to import: {ops.LOAD_ERRORS}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_complete(name):
    op: OpDef = OPS[name]
    assert op.name == name and callable(op.infer)
    assert op.doc, f"{name}: no doc"
    if not op.view:
        assert op.reference is not None, f"{name}: no reference implementation"
    assert op.cases is not None, f"{name}: no test cases"
    cases = op.cases()
    # a case prints its op's name, or one of the names ggml's test classes give it
    # (test_mul_mat_hadamard prints MUL_MAT_HADAMARD)
    names = (name, *op.extra.get("case_ops", ()))
    assert cases and all(isinstance(c, Case) and c.op in names for c in cases), name
    assert len({str(c) for c in cases}) == len(cases), f"{name}: duplicate case strings"
    if name not in PYGGML_ONLY:
        assert op.ggml is not None, f"{name}: no recipe for building it in real ggml"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_has_a_numba_kernel_entry(name):
    from pyggml.backends.numba_cpu.kernels import KERNELS
    op = OPS[name]
    if op.view:
        return
    entry = KERNELS.get(name)
    assert entry is not None, f"{name}: no kernel entry (register a kernel or unsupported(...))"
    assert entry.variants or entry.reason, f"{name}: empty kernel entry"


def test_public_api_is_flat_and_named_like_ggml():
    for fn in ("mul_mat", "flash_attn_ext", "flash_attn_ext_with_state", "rms_norm", "rope_ext",
               "soft_max_ext", "get_rows", "set_rows", "cpy", "cont", "view_2d", "permute",
               "graph_dump_dot", "graph_compute_with_ctx", "backend_graph_compute"):
        assert callable(getattr(gg, fn)), fn
    # ggml's argument order: ctx first, then the tensors
    params = list(inspect.signature(gg.mul_mat).parameters)
    assert params[:3] == ["ctx", "a", "b"]


def test_list_ops_cli(capsys):
    from pyggml.testing.cli import main
    assert main(["--list-ops"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in OPS)


def test_op_params_layouts_pack_and_unpack_like_the_field_loop():
    """OpDef.pack/unpack (one struct call per spec) give the words and values of
    pack_params/unpack_params (the field-by-field loop) for every op, and out-of-range or
    mistyped values still fail, or convert, the way the loop does."""
    import math

    import numpy as np

    from pyggml.errors import ParamError
    from pyggml.ops.registry import pack_params
    from pyggml.ops.registry import unpack_params
    rng = np.random.default_rng(0)
    for op in OPS.values():
        for trial in range(4):
            vals = {}
            for f in op.params:
                def one():
                    if f.kind == "f32":
                        return [0.0, -0.0, math.inf, float(rng.standard_normal())][trial]
                    if f.kind == "i64":
                        return int(rng.integers(-2**40, 2**40))
                    return [0, -1, 2**31 - 1, int(rng.integers(-2**31, 2**31))][trial]
                vals[f.name] = [one() for _ in range(f.count)] if f.count > 1 else one()
            if trial == 3:                         # a field left out packs as zero
                vals.pop(op.params[0].name, None) if op.params else None
            want = pack_params(op.name, op.params, vals)
            got = op.pack(vals)
            assert got.dtype == np.int32 and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), (op.name, vals)
            assert vars(op.unpack(got)) == vars(unpack_params(op.params, want)) or \
                any(isinstance(v, float) and v != v for v in vars(op.unpack(got)).values())
    rope = OPS["ROPE"]
    with pytest.raises(ParamError, match="sections needs 4 values"):
        rope.pack(dict(sections=[1, 2]))
    with pytest.raises(ParamError, match="n_dims=2147483648 does not fit in i32"):
        rope.pack(dict(n_dims=2**31))                  # a value its C type cannot hold
    assert rope.pack(dict(n_dims=7.9)).tolist() == pack_params("ROPE", rope.params,
                                                               dict(n_dims=7.9)).tolist()
