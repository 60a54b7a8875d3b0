"""The reference backend against real ggml, case by case (pytest and tools share this)."""
from __future__ import annotations

from .. import data
from . import harness


def reference_vs_ggml(case, seed: int = 0, n_threads: int = 1) -> tuple[bool, float, str]:
    """(ok, worst NMSE, message): every computed node of the case, reference vs real ggml,
    on the same inputs (the mirror copies them before any in-place op runs)."""
    from ..backends.reference import ReferenceBackend
    from . import ggml_lib
    ctx, out, gf = harness.build_graph(case)
    harness.alloc_guarded(gf)
    harness.fill_leafs(gf, case, seed)
    with ggml_lib.Mirror([out]) as m:
        m.compute(n_threads)
        got = m.results()
    ReferenceBackend().graph_compute(gf)
    max_err, exact = harness._threshold(case)
    worst = 0.0
    for t, what in harness._outputs(gf):
        if id(t) not in got:
            continue
        ok, err, msg = harness.compare_values(data.read(t), got[id(t)], max_err, exact, what)
        if not ok:
            return ok, err, msg
        worst = max(worst, err)
    return True, worst, ""
