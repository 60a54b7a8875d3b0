"""Real ggml (libggml-python) as a pyggml backend, for `test-backend-ops --compare ggml`.

The graph is rebuilt in ggml through each OpDef's `ggml` recipe and computed by ggml's CPU
backend in a child process (a GGML_ASSERT in ggml aborts its process; here it becomes a
GGMLError). The results are copied back into the pyggml tensors byte for byte, so the
harness compares ggml with the reference exactly as it compares pyggml's own backends
(strided results are written back through their strides, element by element).
"""
from __future__ import annotations

from .. import data
from ..backends.base import Backend
from ..errors import GGMLError
from ..errors import UnsupportedError
from ..graph import CGraph
from ..tensor import Tensor


def _compute_in_ggml(gf: CGraph, n_threads: int) -> dict:
    from .ggml_lib import Mirror
    targets = _targets(gf)
    # headroom for recipes that compose an op from several ggml ops (with_state: dequantized
    # copies and concatenations of the cold segment); untouched pages cost nothing
    with Mirror(gf, mem_extra=256 << 20) as m:
        # ask ggml's CPU backend first: computing an op it lacks would abort
        be = m.g.ggml_backend_cpu_init()
        try:
            for n in gf.nodes:
                if n.op is not None and not n.op.view and \
                        not m.g.ggml_backend_supports_op(be, m.ptr(n)):
                    return {"unsupported": f"{n.op.name} {n.type.tname} node '{n.name}' with "
                            f"sources {[s.type.tname for s in n.src if s is not None]}"}
        finally:
            m.g.ggml_backend_free(be)
        m.compute(n_threads)
        return {i: m.raw(t) for i, t in enumerate(targets)}


def _targets(gf: CGraph) -> list[Tensor]:
    out = []
    for n in gf.nodes:
        if n.op is None or n.op.view:
            continue
        out.append(n)
        out += [n.src[i] for i in n.op.writes if n.src[i] is not None]
    return out


class GGMLBackend(Backend):
    name = "ggml"
    # cases the op families mark as beyond ggml's CPU kernels (ggml would abort or misread)
    # cases real ggml cannot run (it aborts) or gets wrong (ggml CPU bugs, see the families)
    unsupported_tags = ("no_ggml", "ggml_wrong")

    def __init__(self, n_threads: int = 1):
        from .ggml_lib import available
        if not available():
            raise GGMLError("--compare ggml needs libggml-python: pip install 'pyggml[ggml]'")
        self.n_threads = n_threads

    def supports_op(self, node: Tensor) -> bool:
        return node.op is not None and (node.op.view or node.op.ggml is not None)

    def graph_compute(self, gf: CGraph, eval_cb=None) -> None:
        from ..sched.alloc import alloc_graph
        from .ggml_lib import run_isolated
        self.check_supported(gf)
        alloc_graph(gf)
        try:
            results = run_isolated(_compute_in_ggml, gf, self.n_threads)
        except GGMLError as e:
            if "died" not in str(e):
                raise
            # ggml's CPU backend claims the op but aborts on this type combination
            raise UnsupportedError(f"real ggml aborted on this graph: {e}") from e
        if "unsupported" in results:
            raise UnsupportedError(f"real ggml's CPU backend does not support {results['unsupported']}")
        for i, t in enumerate(_targets(gf)):
            _write_logical(t, results[i])


def _write_logical(t: Tensor, raw: bytes) -> None:
    """Store ggml's values into t through t's own strides.

    `raw` is ggml_lib.raw_bytes' layout: elements (or packed block rows) in logical order,
    without the gaps of a strided tensor. Copying it as a byte span would put the rows of a
    strided result (an in-place op on a view) at the wrong addresses."""
    import numpy as np

    from ..types import TRAITS
    if not raw or any(x == 0 for x in t.ne):
        return
    if TRAITS[t.type].blck_size == 1:
        dst = data.strided(t)
    else:
        dst = data.row_bytes(t)
    dst[...] = np.frombuffer(raw, dtype=dst.dtype).reshape(dst.shape)
