"""The public builder functions that only forward to an OpDef, made from one description.

Many ggml entry points differ only in the op they build and the op_params they name:
`norm(ctx, a, eps)` / `norm_inplace(ctx, a, eps)`, `reshape_1d` .. `reshape_4d`, `reglu` /
`reglu_swapped` / `reglu_split`. They are made here, each with ggml's argument names as its
signature (so a missing or extra argument is a TypeError naming it, as for a written-out def).
"""
from __future__ import annotations

import inspect
import sys
from typing import Callable

from ..errors import ParamError
from .registry import OpDef


def signature(*names: str) -> inspect.Signature:
    P = inspect.Parameter
    return inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD) for n in names])


def _family() -> str:
    """The op family module (pyggml.ops.<family>) that is asking for builders: the flat API
    (ops/__init__.py) takes the public functions whose __module__ is their family."""
    f = sys._getframe(1)
    while f.f_globals["__name__"] == __name__:
        f = f.f_back
    return f.f_globals["__name__"]


def forwarder(name: str, sig: inspect.Signature, body: Callable, doc: str = None) -> Callable:
    """A function called `name` with signature `sig` that calls body(*arguments in the
    signature's order)."""
    n = len(sig.parameters)

    def fn(*args, **kwargs):
        if not kwargs and len(args) == n:       # the usual call: no binding work
            return body(*args)
        return body(*sig.bind(*args, **kwargs).args)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = _family()
    fn.__signature__ = sig
    fn.__doc__ = doc
    return fn


def view_name(t, a):
    """ggml_view_tensor's name for an in-place result: "<a> (view)"."""
    t.name = f"{a.name} (view)"[:63]
    return t


def op_builders(op: OpDef, name: str, srcs=("a",), params=(), view_named=False):
    """ggml's `name(ctx, *srcs, *params)` and `name_inplace(...)` for op; the in-place result
    aliases srcs[0] (and is named "<a> (view)" when `view_named`, as ggml_view_tensor does)."""
    sig = signature("ctx", *srcs, *params)

    n_srcs = len(srcs)

    def build(inplace):
        def body(ctx, *args):                   # the sources, then the params
            t = op.build(ctx, args[:n_srcs], dict(zip(params, args[n_srcs:])),
                         hints=dict(inplace=True) if inplace else None)
            return view_name(t, args[0]) if inplace and view_named else t
        return body
    return (forwarder(name, sig, build(False), f"ggml_{name}"),
            forwarder(f"{name}_inplace", sig, build(True), f"ggml_{name}_inplace"))


def nd_builders(op: OpDef, name: str):
    """ggml's `name_1d(ctx, a, ne0)` .. `name_4d(ctx, a, ne0, ne1, ne2, ne3)`: op with the new
    shape as a hint (dims not given are 1)."""
    def make(n):
        dims = [f"ne{i}" for i in range(n)]
        ones = [1] * (4 - n)

        def body(ctx, a, *ne):
            return op.build(ctx, [a], hints=dict(ne=[*ne, *ones]))
        return forwarder(f"{name}_{n}d", signature("ctx", "a", *dims), body, f"ggml_{name}_{n}d")
    return tuple(make(n) for n in (1, 2, 3, 4))


def enum_name(what: str, op, names: tuple, prefixes: tuple) -> str:
    """The member of a ggml enum given by value or by name (with or without its C prefix)."""
    if isinstance(op, str):
        n = op.upper()
        for prefix in prefixes:
            if n.startswith(prefix):
                n = n[len(prefix):]
                break
        if n in names:
            return n
    else:
        try:
            return names[int(op)]
        except (IndexError, ValueError, TypeError):
            pass
    raise ParamError(f"{what}: unknown {what} op {op!r} (known: {', '.join(names)})")
