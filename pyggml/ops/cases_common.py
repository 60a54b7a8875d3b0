"""Small helpers for the op families' test-case generators (cases mirror test-backend-ops)."""
from __future__ import annotations

from ..context import new_tensor
from ..tensor import set_name
from ..tensor import set_param
from ..types import GGMLType
from ..types import as_type
from .case import Case
from .registry import OPS


def ggml_type(name):
    """A type for a case's vars (printed by name, as ggml's var_to_str)."""
    return as_type(name)


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
