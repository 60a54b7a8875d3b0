"""Sched's one-split shortcut (_one_split): when every node lands on one backend and no
source lives in a buffer named for another, the split walk is skipped. Its splits must be
exactly the walk's, and it must not be taken where the walk makes copies (a source in
another backend's buffer, a node pinned elsewhere). Planning only: nothing is computed."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.tensor import Buffer


class NoMulMat(gg.backends.ReferenceBackend):
    """A backend that runs everything but MUL_MAT (a weight in its buffer cannot pull it)."""
    name = "nomulmat"

    def supports_op(self, node):
        return node.op is None or node.op.name != "MUL_MAT"


def _graph(ctx):
    rng = np.random.default_rng(1)
    x = gg.from_numpy(ctx, rng.uniform(-1, 1, (3, 32)).astype(np.float32), name="x")
    w = gg.from_numpy(ctx, rng.uniform(-1, 1, (16, 32)).astype(np.float32), name="w")
    h = gg.mul_mat(ctx, w, x)
    y = gg.silu(ctx, gg.scale(ctx, gg.reshape_2d(ctx, h, 8, 6), 0.5))
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return gf, w


def _move(w, backend=None):
    """w's data into a buffer of its own: `backend`'s (named for it), or one named for none."""
    raw = gg.tensor_get(w)
    w.set_buffer(backend.alloc_buffer(gg.nbytes(w)) if backend is not None
                 else Buffer(gg.nbytes(w), name="w"), 0)
    gg.tensor_set(w, raw)


def _allocated(backends, gf, pins, shortcut: str, take: bool):
    """A scheduler that allocated gf with `pins`, its method `shortcut` spied on (or made to
    decline when not take), and whether the shortcut answered."""
    sched = gg.sched_new(backends)
    for node, be in pins:
        gg.sched_set_tensor_backend(sched, node, be)
    answers = []
    real = getattr(sched, shortcut)
    setattr(sched, shortcut, (lambda g, o: answers.append(real(g, o)) or answers[-1]) if take
            else (lambda g, o: None))
    gg.sched_alloc_graph(sched, gf)
    return sched, bool(answers) and answers[-1] is not None


def _plan(backends, gf, pins=(), shortcut=True):
    """(splits as (backend, node ids, input ids), whether _one_split answered)."""
    sched, taken = _allocated(backends, gf, pins, "_one_split", shortcut)
    splits = [(sp.backend, [id(n) for n in sp.nodes], [id(s) for s in sp.inputs])
              for sp in sched.splits]
    return splits, taken


@pytest.mark.parametrize("weight_in", [None, "numba"])
def test_one_backend_is_one_split_as_the_walk_makes_it(weight_in):
    ctx = gg.init(mem_size=4 << 20)
    gf, w = _graph(ctx)
    nb, ref = NumbaBackend(1), gg.backend_reference_init()
    if weight_in:
        _move(w, nb)                          # the weight in the node's own backend's buffer
    fast, taken = _plan([nb, ref], gf)
    walk, _ = _plan([nb, ref], gf, shortcut=False)
    assert taken and fast == walk
    assert len(fast) == 1 and fast[0][0] is nb and fast[0][2] == []
    assert fast[0][1] == [id(n) for n in gf.nodes]


def test_a_source_in_another_backends_buffer_takes_the_walk():
    ctx = gg.init(mem_size=4 << 20)
    gf, w = _graph(ctx)
    nb, other = NumbaBackend(1), NoMulMat()
    _move(w, other)                           # every node on numba, w copied in from other
    fast, taken = _plan([nb, other], gf)
    walk, _ = _plan([nb, other], gf, shortcut=False)
    assert not taken and fast == walk
    assert len(fast) == 1 and fast[0][0] is nb and fast[0][2] == [id(w)]


def test_a_buffer_named_in_place_after_allocation_is_seen():
    """The allocator noted w's buffer when it had no backend name; naming it afterwards
    (in place: no allocation, the mark stays valid) must still stop the shortcut."""
    ctx = gg.init(mem_size=4 << 20)
    gf, w = _graph(ctx)
    nb, other = NumbaBackend(1), NoMulMat()
    _move(w)
    assert _plan([nb, other], gf)[1]
    w.buffer.backend = other.name
    fast, taken = _plan([nb, other], gf)
    assert not taken and fast == _plan([nb, other], gf, shortcut=False)[0]
    assert len(fast) == 1 and fast[0][2] == [id(w)]


def test_a_pinned_node_takes_the_walk_unless_pinned_where_it_goes():
    ctx = gg.init(mem_size=4 << 20)
    gf, w = _graph(ctx)
    nb, ref = NumbaBackend(1), gg.backend_reference_init()
    scale = next(n for n in gf.nodes if n.op_name == "SCALE")
    fast, taken = _plan([nb, ref], gf, pins=[(scale, ref)])
    walk, _ = _plan([nb, ref], gf, pins=[(scale, ref)], shortcut=False)
    assert not taken and fast == walk and len(fast) == 3
    fast, taken = _plan([nb, ref], gf, pins=[(scale, nb)])
    assert taken and fast == _plan([nb, ref], gf, pins=[(scale, nb)], shortcut=False)[0]


def _assignment(backends, gf, pins=(), shortcut=True):
    """(assignment as {node index: backend}, whether _sole_backend answered)."""
    sched, answered = _allocated(backends, gf, pins, "_sole_backend", shortcut)
    return {i: sched.tensor_backend(n) for i, n in enumerate(gf.nodes)}, answered


@pytest.mark.parametrize("case", ["plain", "weight_in_numba", "weight_elsewhere", "pinned_same",
                                  "pinned_other", "unsupported"])
def test_the_sole_backend_shortcut_assigns_as_the_walk(case):
    """_sole_backend answers only where the per-node walk would put every node on the first
    backend, and then its assignment is the walk's."""
    ctx = gg.init(mem_size=4 << 20)
    gf, w = _graph(ctx)
    nb = NumbaBackend(1)
    other = NoMulMat() if case == "weight_elsewhere" else gg.backend_reference_init()
    first = NumbaBackend(1, kernels={}) if case == "unsupported" else nb   # runs nothing
    backends = [first, other]
    if case == "weight_in_numba":
        _move(w, nb)
    elif case == "weight_elsewhere":
        _move(w, other)                       # w copied in, every node still on numba
    scale = next(n for n in gf.nodes if n.op_name == "SCALE")
    pins = {"pinned_same": [(scale, first)], "pinned_other": [(scale, backends[1])]}.get(case, ())
    fast, answered = _assignment(backends, gf, pins)
    walk, _ = _assignment(backends, gf, pins, shortcut=False)
    assert fast == walk
    assert answered == (case in ("plain", "weight_in_numba", "pinned_same"))
    if answered:
        assert set(fast.values()) == {first}
