"""Small helpers for the op families' test-case generators (cases mirror test-backend-ops)."""
from __future__ import annotations

from ..context import new_tensor
from ..tensor import set_name
from ..tensor import set_param
from ..types import TRAITS
from ..types import GGMLType
from ..types import as_type
from .case import Case
from .registry import OPS


def ggml_type(name):
    """A type for a case's vars (printed by name, as ggml's var_to_str)."""
    return as_type(name)


# test-backend-ops' type lists, in its order; `have` keeps the ones pyggml has
GGML_ALL_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q1_0", "q2_0",
                  "mxfp4", "nvfp4", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "tq2_0", "iq2_xxs",
                  "iq2_xs", "iq2_s", "iq3_xxs", "iq1_s", "iq1_m", "iq4_nl", "iq3_s", "iq4_xs")
GGML_BASE_TYPES = ("f32", "f16", "q8_0", "q1_0", "q2_0", "q4_0", "q4_1", "q4_K", "mxfp4", "nvfp4",
                   "iq2_xxs")
GGML_OTHER_TYPES = ("q4_1", "q5_0", "q5_1", "q8_0", "q1_0", "q2_0", "q2_K", "q3_K", "q5_K", "q6_K",
                    "tq2_0", "iq2_xs", "iq2_s", "iq3_xxs", "iq1_s", "iq1_m", "iq4_nl", "iq3_s",
                    "iq4_xs", "bf16")


def has_type(name) -> bool:
    """pyggml.types knows this ggml type name (grids are written over ggml's type lists and
    skip the types pyggml does not have yet, so their cases appear when the type lands)."""
    return any(tt.tname.lower() == str(name).lower() for tt in TRAITS.values())


def have(names) -> list:
    """The type names of `names` (ggml's list, in its order) that pyggml has."""
    return [n for n in names if has_type(n)]


def leaf(ctx, type, ne, name=None, param=False):
    """A leaf input of a case graph; 4-D ne trimmed of trailing ones like ggml's new_tensor.
    param=True marks it trainable (set_param) where ggml's test case does: grad mode then
    checks its gradient."""
    ne = list(ne)
    t = new_tensor(ctx, as_type(type), len(ne), ne)
    if name:
        set_name(t, name)
    if param:
        set_param(t)
    return t


def case(op, vars, build, **kw) -> Case:
    return Case(op, dict(vars), build, **kw)


def unique(cases):
    """Drop repeated case strings (ggml's grids list a few cases twice), keeping the first."""
    seen, out = set(), []
    for c in cases:
        if str(c) not in seen:
            seen.add(str(c))
            out.append(c)
    return out


def cont(ctx, a):
    """ggml_cont for a case graph, through the registry (view.py's cases use it; importing
    copy.py there would tie the two files into a loop)."""
    return OPS["CONT"].build(ctx, [a])


def ids_below(m):
    """A case's init: I32 sources (row ids) uniform in [0, m); the others as the case runner fills."""
    def fill(t, rng):
        if t.type == GGMLType.I32:
            return rng.integers(0, m, size=t.ne[::-1])
        return None
    return fill
