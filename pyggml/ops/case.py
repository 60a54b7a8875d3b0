"""A test case of test-backend-ops: a small graph built around one op, named as ggml names it.

Each OpDef's `cases()` returns a list of Case (it lives beside the ops that declare them and
depends only on types; testing/ consumes it). The harness (testing/harness.py) builds the graph in a fresh
context, fills the leafs (uniform [-1, 1] unless the case says otherwise), runs it on each
backend and compares node by node. `str(case)` is ggml's case string, e.g.
`MUL_MAT(type_a=q4_0,type_b=f32,m=16,n=1,k=256,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from typing import Optional

import numpy as np

from ..types import GGMLType


def var_to_str(x) -> str:
    """test-backend-ops' var_to_str: bools 0/1, floats %f, types by name, arrays [a,b]."""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, GGMLType):
        return x.tname
    if isinstance(x, float):
        return "%f" % x
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(var_to_str(v) for v in x) + "]"
    return str(x)


def vars_to_str(vars: dict) -> str:
    return ",".join(f"{k}={var_to_str(v)}" for k, v in vars.items())


@dataclass
class Case:
    op: str                                      # ggml op desc as printed: "MUL_MAT"
    vars: dict                                   # ordered, as ggml's vars()
    build: Callable                              # (ctx) -> output Tensor (leafs made inside)
    init: Optional[Callable] = None              # (leaf, rng) -> values or None (default fill)
    max_nmse: Optional[float] = None             # overrides the OpDef's threshold
    exact: Optional[bool] = None
    run_twice: bool = False                      # with_state: recompute continues from state
    tags: tuple = ()                             # e.g. ("slow",) kept out of the pytest subset
    note: str = ""
    err: Optional[Callable] = None               # (ref, got, node) -> error: ggml's test_case::err
    grad: Optional[dict] = None                  # grad mode's overrides, ggml's names without
    #   grad_: eps (0.1), precise (False), nmax (10000), expect ([]), max_maa (1e-4)

    @property
    def vars_str(self) -> str:
        return vars_to_str(self.vars)

    def __str__(self) -> str:
        return f"{self.op}({self.vars_str})"

    __repr__ = __str__


def uniform(lo: float = -1.0, hi: float = 1.0):
    """An init that fills a leaf with uniform values (used for positive-only inputs)."""
    def fill(t, rng: np.random.Generator):
        return rng.uniform(lo, hi, size=t.ne[::-1])
    return fill
