"""Assertions shared by the op tests."""
from __future__ import annotations

import pytest

from ..errors import GGMLError
from ..types import as_type


def assert_ggml_error(cls, fn, *words) -> str:
    """fn() must raise `cls`, a GGMLError whose message names every word; returns the message."""
    with pytest.raises(cls) as e:
        fn()
    msg = str(e.value)
    assert isinstance(e.value, GGMLError), f"{type(e.value).__name__} is not a GGMLError: {msg}"
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def assert_op_error(cls, op: str, fn, *args) -> str:
    """fn(*args) must raise `cls`, a GGMLError naming op; returns the message."""
    return assert_ggml_error(cls, lambda: fn(*args), op)


def named_tensor(ctx, type, *ne, name: str = "t"):
    """A tensor of type (GGMLType or its name) and shape ne, named (error messages name it)."""
    from ..context import new_tensor
    from ..tensor import set_name
    t = new_tensor(ctx, as_type(type), len(ne), list(ne))
    set_name(t, name)
    return t
