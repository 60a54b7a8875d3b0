"""Assertions shared by the op tests."""
from __future__ import annotations

import pytest

from ..errors import GGMLError


def assert_ggml_error(cls, fn, *words) -> str:
    """fn() must raise `cls`, a GGMLError whose message names every word; returns the message."""
    with pytest.raises(cls) as e:
        fn()
    msg = str(e.value)
    assert isinstance(e.value, GGMLError), f"{type(e.value).__name__} is not a GGMLError: {msg}"
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg
