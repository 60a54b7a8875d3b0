"""A small, deterministic sample of an op's test-backend-ops cases (pytest subsets, twin runs).

Up to k cases among those not tagged slow, from the smaller half by bytes touched, drawn by
an RNG seeded by the op's name: the choice is stable and independent of other ops."""
from __future__ import annotations

import zlib

import numpy as np

from ..ops.registry import OPS
from ..tensor import nbytes
from .harness import build_graph
from .harness import op_cases

SEED = 20240611


def case_cost(case) -> int:
    """Bytes of every tensor the case's graph holds (a proxy of its run time)."""
    try:
        _, _, gf = build_graph(case)
    except Exception:
        return 1 << 62              # a case that does not build: still sampled last, reported
    return sum(nbytes(t) for t in list(gf.leafs) + list(gf.nodes))


def sample_cases(name: str, k: int = 3, seed: int = SEED) -> list:
    """Up to k cases of op `name`: not slow, among the smaller half, chosen by a seeded RNG."""
    cases = [c for c in op_cases(OPS[name]) if "slow" not in c.tags]
    if not cases:
        return []
    if len(cases) > k:
        costs = sorted((case_cost(c), i) for i, c in enumerate(cases))
        small = [i for _, i in costs[:max(k, (len(cases) + 1) // 2)]]
        rng = np.random.default_rng(seed ^ zlib.crc32(name.encode()))
        cases = [cases[i] for i in sorted(rng.choice(small, size=k, replace=False))]
    return cases
