"""Generated-graph fuzzing: random chains and DAGs of registered ops, the fast CPU backend
(1-3 threads) vs the reference backend, inside test-backend-ops' harness (guard bytes, ggml's NMSE rules).

Validity comes from the OpDefs themselves. Every op's own test cases are *templates*: each
case graph is built once and its node of that op gives a valid (source types, shapes,
op_params, build hints, input init). A generated node takes a template and varies it: source
shapes remapped through a per-graph vocabulary (the same value maps to the same new value, so
equal dims stay equal; 0 and 1 among the choices), sources that are earlier nodes (chains and
DAGs, directly or transposed/permuted) or fresh leaves laid out non-contiguously (permuted,
row-padded or offset views). The candidate is built with `OpDef.build`; when its infer says no
(a GGMLError), the generator falls back to simpler candidates, down to the template itself,
so almost nothing is rejected.

A generated graph is a `GraphSpec` (JSON): op, params, hints and sources per node, nothing
else, so a failure prints a one-line repro. Choices go through a `Chooser`: seeded random
(`pyggml fuzz --seed S --example K`) or Hypothesis' data (tests/fuzz: shrinking).
"""
from __future__ import annotations

import json
import random
import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Optional

import numpy as np

from .. import data
from ..context import init
from ..context import new_tensor
from ..errors import GGMLError
from ..graph import CGraph
from ..ops.registry import OPS
from ..ops.registry import OpDef
from ..tensor import Tensor
from ..tensor import nbytes
from ..types import TRAITS
from ..types import GGMLType
from . import harness

# Ops whose output jumps under a tiny change of the input (rounding, sign, order, counts):
# fed only from exact paths (leaves, data movement), or a last-ulp difference upstream
# becomes a mismatch that is not a bug.
DISCONTINUOUS = {"FLOOR", "CEIL", "ROUND", "TRUNC", "STEP", "SGN", "ARGMAX", "ARGSORT",
                 "TOP_K", "COUNT_EQUAL"}

MAX_TEMPLATES = 40        # cases per op used as templates (spread over the op's grid)
MAX_ELEMENTS = 1 << 16    # templates with bigger sources are left out (fuzzing is about shapes)
# a drawn node bigger than this is turned away like one that does not build: DIAG of a chained
# 30000-vector is legal (3.6 GB, as in ggml), but every backend's copy plus the reference's
# float64 one took 24 GB and the OOM killer ended the run (seed 301 example 19410)
MAX_NODE_BYTES = 256 << 20
LAYOUTS = ("cont", "perm", "pad", "offs")


# --- templates ---------------------------------------------------------------------------------

@dataclass
class Slot:
    type: int
    ne: tuple
    name: str
    fresh: bool          # needs its own leaf (values from the case's init, or written in place)


@dataclass
class Template:
    op: str
    key: str             # the case string it comes from
    params: dict
    hints: dict
    slots: list          # Slot | None per source
    inplace: bool
    case: object         # for init, max_nmse, exact, err
    max_nmse: float
    exact: bool


@contextmanager
def _recording_hints(store: dict):
    """Record the hints each OpDef.build receives (they reach infer but are not stored)."""
    orig = OpDef.build

    def build(self, ctx, srcs, params=None, name=None, hints=None):
        t = orig(self, ctx, srcs, params, name, hints)
        store[id(t)] = dict(hints or {})
        return t
    OpDef.build = build
    try:
        yield
    finally:
        OpDef.build = orig


def _json_value(v):
    if isinstance(v, GGMLType):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _template(op: OpDef, case) -> Optional[Template]:
    hints: dict = {}
    with _recording_hints(hints):
        ctx, out, gf = harness.build_graph(case)
    nodes = [n for n in gf.nodes if n.op is op]
    if not nodes:
        return None
    node = nodes[-1]
    rng = np.random.default_rng(0)
    slots = []
    for i, s in enumerate(node.src):
        if s is None:
            slots.append(None)
            continue
        if s.ne[0] * s.ne[1] * s.ne[2] * s.ne[3] > MAX_ELEMENTS:
            return None
        root = s.view_src if s.view_src is not None else s
        # values the case chose (indices, positions, masks) stay the case's: only a float
        # src[0] whose init merely picks a range takes earlier nodes' outputs too
        custom = case.init is not None and case.init(root, rng) is not None and \
            not (i == 0 and TRAITS[s.type].is_float)
        slots.append(Slot(int(s.type), tuple(s.ne), root.name, custom or i in op.writes))
    while slots and slots[-1] is None:
        slots.pop()
    max_nmse, exact = harness._threshold(case)
    return Template(op.name, str(case), {k: _json_value(v) for k, v in vars(op.p(node)).items()},
                    {k: _json_value(v) for k, v in hints.get(id(node), {}).items()}, slots,
                    node.view_src is not None, case, max_nmse, exact)


_TEMPLATES: dict = {}


def fuzzable_ops(kernels) -> list[str]:
    """Ops with cases and an entry in a backend's kernel table (views come in as layouts)."""
    return sorted(n for n, op in OPS.items() if op.cases is not None and not op.view and n in kernels)


def templates(op_name: str) -> list[Template]:
    got = _TEMPLATES.get(op_name)
    if got is None:
        op = OPS[op_name]
        cases = [c for c in harness.op_cases(op) if "slow" not in c.tags]
        step = max(1, len(cases) // MAX_TEMPLATES)
        picked = cases[::step]
        # every name the op's cases print (MUL_MAT's MUL_MAT_HADAMARD) keeps a template, however
        # the even sample falls
        names = {str(c).split("(", 1)[0] for c in picked}
        for c in cases:
            name = str(c).split("(", 1)[0]
            if name not in names:
                names.add(name)
                picked.append(c)
        got = []
        for c in picked:
            try:
                t = _template(op, c)
            except GGMLError:
                t = None
            if t is not None:
                got.append(t)
        _TEMPLATES[op_name] = got
    return got


def _op_of_case(case_op: str) -> str:
    """The OpDef whose cases print `case_op` (MUL_MAT_HADAMARD cases belong to an OpDef that
    lists it in extra["case_ops"])."""
    if case_op in OPS:
        return case_op
    for name, op in OPS.items():
        if case_op in op.extra.get("case_ops", ()):
            return name
    raise GGMLError(f"fuzz: no op prints cases named {case_op!r}")


def template(key: str) -> Template:
    op = _op_of_case(key.split("(", 1)[0])
    for t in templates(op):
        if t.key == key:
            return t
    raise GGMLError(f"fuzz: no template {key!r}")


# --- choices -------------------------------------------------------------------------------------

class RandomChooser:
    """Choices from a seeded random.Random (the CLI's examples: seed and index say it all)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def choice(self, seq):
        return seq[self.r.randrange(len(seq))]

    def integer(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def boolean(self) -> bool:
        return self.r.random() < 0.5


class DataChooser:
    """Choices drawn from Hypothesis' `data` (first element = simplest, shrinks toward it)."""

    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def choice(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def boolean(self) -> bool:
        return self.data.draw(self.st.booleans())


# --- the graph spec --------------------------------------------------------------------------------
# src: None | {"leaf": [type, ne, name, layout]} | {"node": j, "view": [kind, axes]}
# layout: ["cont"] | ["perm", axes] | ["pad", pad0, pad1] | ["offs", rows]

@dataclass
class GraphSpec:
    nodes: list = field(default_factory=list)     # {"case": key, "srcs": [...]}

    def to_json(self) -> str:
        return json.dumps(self.nodes, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "GraphSpec":
        return cls(json.loads(s))

    def snippet(self) -> str:
        return "python -c " + shlex.quote(f"from pyggml.testing.fuzz import replay; "
                                          f"replay({self.to_json()!r})")

    def __str__(self) -> str:
        return " -> ".join(n["case"].split("(")[0] for n in self.nodes)


def _perm_axes(ch, quant: bool) -> list:
    axes = [1, 2, 3] if quant else [0, 1, 2, 3]
    out = []
    while axes:
        out.append(axes.pop(ch.integer(0, len(axes) - 1)))
    return ([0] + out) if quant else out


def _make_leaf(ctx, src) -> Tensor:
    type, ne, name, layout = src
    type = GGMLType(type)
    blck = TRAITS[type].blck_size
    kind = layout[0]
    if kind == "perm":
        axes = layout[1]
        leaf = new_tensor(ctx, type, 4, [ne[axes[i]] for i in range(4)])
        out = OPS["PERMUTE"].build(ctx, [leaf], dict(axes=axes))
    elif kind in ("pad", "offs"):
        pad0, pad1, rows = (layout[1], layout[2], 0) if kind == "pad" else (0, 0, layout[1])
        leaf = new_tensor(ctx, type, 4, [ne[0] + pad0 * blck, ne[1] + pad1 + rows, ne[2], ne[3]])
        from ..ops.view import view_4d
        out = view_4d(ctx, leaf, *ne, leaf.nb[1], leaf.nb[2], leaf.nb[3], rows * leaf.nb[1])
    else:
        leaf = out = new_tensor(ctx, type, 4, list(ne))
    leaf.name = name
    return out


def _make_src(ctx, src, built: list) -> Optional[Tensor]:
    if src is None:
        return None
    if "leaf" in src:
        return _make_leaf(ctx, src["leaf"])
    t = built[src["node"]]
    kind, axes = src["view"]
    if kind == "perm":
        return OPS["PERMUTE"].build(ctx, [t], dict(axes=axes))
    if kind == "transpose":
        return OPS["TRANSPOSE"].build(ctx, [t])
    return t


def _build_node(ctx, nspec: dict, built: list, srcs=None) -> Tensor:
    tpl = template(nspec["case"])
    if srcs is None:
        srcs = [_make_src(ctx, s, built) for s in nspec["srcs"]]
    hints = dict(nspec["hints"])
    if "cast_type" in hints:
        hints["cast_type"] = GGMLType(hints["cast_type"])
    return OPS[tpl.op].build(ctx, srcs, tpl.params, hints=hints)


def build_spec(ctx, spec: GraphSpec) -> list[Tensor]:
    built: list = []
    for nspec in spec.nodes:
        built.append(_build_node(ctx, nspec, built))
    return built


# --- generating --------------------------------------------------------------------------------------

def _alternatives(v: int) -> list:
    if v >= 32 and v % 32 == 0:
        return [v, 32, 64, 0]
    return [v, 1, 2, 3, 5, 0]


class _Stop(Exception):
    pass


class _Gen:
    def __init__(self, ch, ops: list[str], max_nodes: int, supports=None):
        self.ch, self.ops, self.max_nodes, self.supports = ch, ops, max_nodes, supports
        self.vocab: dict = {}
        self.ctx = init(mem_size=64 << 20, no_alloc=True)
        self.built: list = []
        self.pool: list = []            # (index, type, exact_path) of reusable outputs
        self.spec = GraphSpec()

    def remap(self, ne) -> list:
        out = []
        for v in ne:
            if v not in self.vocab:
                self.vocab[v] = self.ch.choice(_alternatives(v))
            out.append(self.vocab[v])
        return out

    def fresh(self, slot: Slot, ne, layout=True) -> dict:
        quant = TRAITS[GGMLType(slot.type)].is_quantized
        lay = ["cont"]
        kind = self.ch.choice(LAYOUTS) if layout else "cont"
        if kind == "perm":
            lay = ["perm", _perm_axes(self.ch, quant)]
        elif kind == "pad":
            lay = ["pad", self.ch.integer(0, 1), self.ch.integer(0, 2)]
        elif kind == "offs":
            lay = ["offs", self.ch.integer(1, 2)]
        return {"leaf": [slot.type, list(ne), slot.name, lay]}

    def drawn(self, tpl: Template) -> list:
        """The adventurous candidate: earlier nodes as sources where types allow, remapped shapes."""
        over: dict = {}
        srcs = []
        for slot in tpl.slots:
            if slot is None:
                srcs.append(None)
                continue
            ok = [p for p in self.pool if p[1] == slot.type and
                  (p[2] or tpl.op not in DISCONTINUOUS)]
            if ok and not slot.fresh and not tpl.inplace and self.ch.choice((False, True, True)):
                j, _, _ = self.ch.choice(ok)
                kind = self.ch.choice(["none", "transpose", "perm"])
                quant = TRAITS[GGMLType(slot.type)].is_quantized
                axes = _perm_axes(self.ch, quant) if kind == "perm" else None
                if quant and kind == "transpose":
                    kind = "none"
                src = {"node": j, "view": [kind, axes]}
                try:
                    t = _make_src(self.ctx, src, self.built)
                except GGMLError:
                    src, t = {"node": j, "view": ["none", None]}, self.built[j]
                over.setdefault(slot.ne, list(t.ne))
                srcs.append(src)
            else:
                ne = over.get(slot.ne) or self.remap(slot.ne)
                srcs.append(self.fresh(slot, ne))
        return srcs

    def same_shape(self, srcs: list) -> Optional[list]:
        """srcs with every fresh leaf shaped like the first earlier node used (binary ops, glu:
        a chain takes when the other operands match it), or None when no node is used."""
        first = next((s for s in srcs if s is not None and "node" in s), None)
        if first is None:
            return None
        ne = list(_make_src(self.ctx, first, self.built).ne)
        return [s if s is None or "node" in s else
                {"leaf": [s["leaf"][0], ne, *s["leaf"][2:]]} for s in srcs]

    def try_build(self, tpl: Template, srcs, hints: dict) -> Optional[Tensor]:
        nspec = {"case": tpl.key, "srcs": srcs, "hints": hints}
        try:
            ts = [_make_src(self.ctx, s, self.built) for s in srcs]
            t = _build_node(self.ctx, nspec, self.built, ts)
        except GGMLError:
            return None
        except Exception:
            # a build that fails with anything but a GGMLError is a finding: keep the node
            # (checking the spec rebuilds it and reports the exception) and stop here
            self.spec.nodes.append(nspec)
            raise _Stop from None
        if self.supports is not None and not all(
                self.supports(x) for x in [t] + [s for s in ts if s is not None and s.op is not None]):
            return None
        if nbytes(t) > MAX_NODE_BYTES:
            return None
        self.spec.nodes.append(nspec)
        self.built.append(t)
        return t

    def step(self) -> None:
        op = self.ch.choice(self.ops)
        tpls = templates(op)
        if not tpls:
            return
        tpl = self.ch.choice(tpls)
        drawn = self.drawn(tpl)
        cands = [
            drawn,
            self.same_shape(drawn),
            [None if s is None else self.fresh(s, self.remap(s.ne)) for s in tpl.slots],
            [None if s is None else self.fresh(s, s.ne, layout=False) for s in tpl.slots],
        ]
        remapped = dict(tpl.hints)
        if "ne" in remapped:           # a target shape (cont, repeat, upscale) remaps with the rest
            remapped["ne"] = self.remap(remapped["ne"])
        for srcs, hints in zip(cands, (remapped, remapped, remapped, tpl.hints)):
            if srcs is None:
                continue
            t = self.try_build(tpl, srcs, hints)
            if t is not None:
                break
        else:
            return
        exact_path = tpl.exact and all(
            "leaf" in s or self.pool_exact(s["node"]) for s in srcs if s is not None)
        self._exact.append(exact_path)
        self.pool.append((len(self.built) - 1, int(t.type), exact_path))

    _exact: list

    def pool_exact(self, j: int) -> bool:
        return self._exact[j]

    def run(self) -> GraphSpec:
        self._exact = []
        n = self.ch.integer(1, self.max_nodes)
        try:
            for _ in range(n):
                self.step()
        except _Stop:
            pass
        return self.spec


def gen_graph(ch, ops: list, max_nodes: int = 4, supports=None) -> GraphSpec:
    """A random graph of 1..max_nodes nodes of `ops`; `supports(node)` (a backend's
    supports_op) turns away candidates the backend under test has no kernel for."""
    return _Gen(ch, list(ops), max_nodes, supports).run()


def example(seed: int, k: int, ops: list, max_nodes: int = 4, supports=None) -> GraphSpec:
    """Example k of seed S: what `pyggml fuzz --seed S --example K` runs."""
    return gen_graph(RandomChooser(seed * 1_000_003 + k), ops, max_nodes, supports)


# --- checking ------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    status: str                  # OK | REJECTED (both backends refuse the inputs) | FAIL
    message: str = ""
    node: int = -1               # spec index of the failing node
    compared: int = 0


def _thresholds(spec: GraphSpec) -> list[tuple[float, bool]]:
    """Per node: the loosest threshold on its path from the leaves (errors propagate), exact
    only when every op on that path is exact."""
    out = []
    for nspec in spec.nodes:
        tpl = template(nspec["case"])
        err, exact = tpl.max_nmse, tpl.exact
        for s in nspec["srcs"]:
            if s is not None and "node" in s:
                e2, x2 = out[s["node"]]
                err, exact = max(err, e2), exact and x2
        out.append((err, exact))
    return out


def _compute(spec: GraphSpec, backend, seed: int, alloc=None):
    ctx = init(mem_size=64 << 20, no_alloc=True)
    built = build_spec(ctx, spec)
    gf = CGraph(8192, ctx=ctx)
    for t in built:
        gf.expand(t)
    guards = (alloc or harness.alloc_guarded)(gf)
    owner = {}
    for nspec, t in zip(spec.nodes, built):
        for s in t.src:
            if s is not None:
                owner.setdefault(id(s.view_src if s.view_src is not None else s), nspec["case"])
    rng = np.random.default_rng(seed)
    for leaf in gf.leafs:
        init_fn = template(owner[id(leaf)]).case.init if id(leaf) in owner else None
        try:
            vals = init_fn(leaf, rng) if init_fn is not None else None
        except ValueError:          # the case's init knows its own shapes only (e.g. empty)
            vals = None
        data.write(leaf, harness.default_values(leaf, rng) if vals is None else vals)
    backend.graph_compute(gf)
    return built, guards


def _outputs(spec: GraphSpec, built: list) -> list:
    """(spec index, tensor, label) of what is compared: every node and the sources it writes."""
    out = []
    for i, t in enumerate(built):
        out.append((i, t, f"node {i} {t.op.name}"))
        out += [(i, t.src[w], f"node {i} {t.op.name}.src[{w}]") for w in t.op.writes
                if t.src[w] is not None]
    return out


def check(spec: GraphSpec, backends: list, ref, seed: int = 0, alloc=None) -> Outcome:
    """Compute spec on the reference and on each backend; compare every node. `alloc(gf)`
    places the tensors (harness.alloc_guarded, or guard.alloc_guard_pages)."""
    try:
        ref_built, _ = _compute(spec, ref, seed, alloc)
        ref_err = None
    except GGMLError as e:
        ref_built, ref_err = None, e
    except Exception as e:
        return Outcome("FAIL", f"reference: {type(e).__name__}: {e}")
    th = _thresholds(spec)
    outcome = Outcome("REJECTED" if ref_err is not None else "OK", str(ref_err or ""))
    for be in backends:
        try:
            built, guards = _compute(spec, be, seed, alloc)
        except GGMLError as e:
            if ref_err is None:
                return Outcome("FAIL", f"{be.name}: {type(e).__name__}: {e} (the reference computes it)")
            continue
        except Exception as e:
            return Outcome("FAIL", f"{be.name}: {type(e).__name__}: {e}")
        bad = harness.check_guards(guards)
        if bad:
            return Outcome("FAIL", f"{be.name}: out-of-bounds write: guard bytes around {bad} changed")
        if ref_err is not None:
            return Outcome("FAIL", f"{be.name} computes what the reference rejects: {ref_err}")
        for (i, t_ref, what), (_, t, _) in zip(_outputs(spec, ref_built), _outputs(spec, built)):
            tpl = template(spec.nodes[i]["case"])
            ok, err, msg = harness.compare_node(tpl.case, t_ref, t, *th[i], what)
            outcome.compared += 1
            if not ok and not _same_op_result(tpl, t, what):
                return Outcome("FAIL", f"{be.name}: {msg}", i, outcome.compared)
    return outcome


def _same_op_result(tpl: Template, t: Tensor, what: str) -> bool:
    """ggml's own rule for one op: does the backend's node match the reference computed from
    the backend's *own* inputs (its threshold, not the path's)?

    The end-to-end comparison also sees differences that earlier nodes made within their
    thresholds, amplified by an op that is ill-conditioned there: sqrt/log of a value the
    reference rounds to a tiny negative denormal and ggml's float32 math to -0, a norm or a sum
    of values that cancel to ~0. Those nodes are right: the earlier ones were compared
    already. Ops that write sources or alias them are not recomputed (their inputs changed)."""
    from ..backends.reference.backend import compute_node_reference
    if t.op is None or t.op.writes or t.view_src is not None or \
            getattr(tpl.case, "err", None) is not None or what.endswith("]"):
        return False
    got = data.read(t)
    raw = data.tensor_get(t)
    try:
        compute_node_reference(t)
        local = data.read(t)
    except Exception:                      # noqa: BLE001 - then the end-to-end verdict stands
        return False
    finally:
        data.tensor_set(t, raw)
    if harness.compare_values(local, got, tpl.max_nmse, tpl.exact, what)[0]:
        return True
    try:
        ins = _ggml_rounded_inputs(t)
        if ins is None:
            return False
        local = np.asarray(t.op.reference(t, ins, t.op.p(t)), np.float64).reshape(got.shape)
    except Exception:                      # noqa: BLE001 - then the end-to-end verdict stands
        return False
    return harness.compare_values(local, got, tpl.max_nmse, tpl.exact, what)[0]


# ggml's CPU rounds a product's activations (src[1]) to the weight type's vec_dot_type (Q8_0,
# Q8_1, Q8_K, F16, BF16) before its dots. The reference multiplies the exact activations;
# where an output nearly cancels (few, small dots: k = 32, m = 3), that rounding alone puts
# ggml itself 1e-3 NMSE from the reference (seed 301 example 1588), above the op's 5e-4.
ROUNDS_ACTIVATIONS = ("MUL_MAT", "MUL_MAT_ID")


def _ggml_rounded_inputs(t: Tensor) -> Optional[list]:
    """The reference's inputs of node t with the activations rounded as ggml's CPU rounds
    them (ROUNDS_ACTIVATIONS), or None when the op does not round them."""
    from .. import quants
    if t.op.name not in ROUNDS_ACTIVATIONS:
        return None
    vdt = TRAITS[t.src[0].type].vec_dot_type
    if vdt == GGMLType.F32:
        return None
    ins = [data.read(s) if s is not None else None for s in t.src]
    b = np.asarray(ins[1], np.float32)
    if b.size:                             # rows of k values, k a multiple of the block size
        q = quants.quantize(vdt, b.ravel())
        ins[1] = quants.dequantize(vdt, q, b.size).reshape(b.shape).astype(np.float64)
    return ins


def ancestors(spec: GraphSpec, k: int) -> GraphSpec:
    """The sub-graph node k needs (a first, structural shrink of a failing graph)."""
    keep = set()

    def visit(i):
        if i not in keep:
            keep.add(i)
            for s in spec.nodes[i]["srcs"]:
                if s is not None and "node" in s:
                    visit(s["node"])
    visit(k)
    order = sorted(keep)
    where = {old: new for new, old in enumerate(order)}
    nodes = []
    for i in order:
        n = json.loads(json.dumps(spec.nodes[i]))
        for s in n["srcs"]:
            if s is not None and "node" in s:
                s["node"] = where[s["node"]]
        nodes.append(n)
    return GraphSpec(nodes)


def _cut(spec: GraphSpec, i: int, j: int) -> Optional[GraphSpec]:
    """spec with source j of node i (an earlier node) replaced by a contiguous leaf of the
    same type and shape, then only what node i needs; None when the leaf cannot be built."""
    nspec = spec.nodes[i]
    src = nspec["srcs"][j]
    ctx = init(mem_size=64 << 20, no_alloc=True)
    try:
        built = build_spec(ctx, spec)
        t = _make_src(ctx, src, built)
    except GGMLError:
        return None
    slot = template(nspec["case"]).slots[j] if j < len(template(nspec["case"]).slots) else None
    name = slot.name if slot is not None else f"src{j}"
    cut = json.loads(json.dumps(spec.nodes))
    cut[i]["srcs"][j] = {"leaf": [int(t.type), list(t.ne), name, ["cont"]]}
    return ancestors(GraphSpec(cut), i)


def shrink(spec: GraphSpec, out: Outcome, check) -> tuple[GraphSpec, Outcome]:
    """A failing graph made smaller while `check(spec)` still fails: only the failing node's
    ancestors, then earlier nodes feeding it replaced by leaves one at a time (a wrong kernel
    at the end of an unrelated chain shrinks to that one node). Hypothesis shrinks the draws;
    this removes what it cannot (a node that only shifts the later draws)."""
    if out.status != "FAIL" or out.node < 0:
        return spec, out
    small = ancestors(spec, out.node)
    if len(small.nodes) < len(spec.nodes):
        again = check(small)
        if again.status != "FAIL":
            return spec, out
        spec, out = small, again
    progress = True
    while progress and len(spec.nodes) > 1:
        progress = False
        last = len(spec.nodes) - 1
        for j, src in enumerate(spec.nodes[last]["srcs"]):
            if src is None or "node" not in src:
                continue
            cand = _cut(spec, last, j)
            if cand is None:
                continue
            again = check(cand)
            if again.status == "FAIL" and again.node == len(cand.nodes) - 1:
                spec, out, progress = cand, again, True
                break
    return spec, out


class Runner:
    """The backends an example runs on: the CPU backend at each thread count, the reference."""

    def __init__(self, threads=(1, 2, 3), backend: str = "cpu", guard_pages: bool = False):
        from ..compute import backend_init_by_name
        from ..compute import backend_reference_init
        from .guard import alloc_guard_pages
        self.alloc = alloc_guard_pages if guard_pages else None
        self.ref = backend_reference_init()
        self.backends = []
        for n in threads:
            be = backend_init_by_name(backend, n)
            be.name = f"{backend}/{n}t"
            self.backends.append(be)

    def ops(self, only=None) -> list[str]:
        """The ops to fuzz: `only` (names), else every op the backend has kernels for."""
        have = fuzzable_ops(getattr(self.backends[0], "kernels", {}))
        if not only:
            return have
        bad = [o for o in only if o.upper() not in have]
        if bad:
            raise GGMLError(f"fuzz: cannot fuzz {', '.join(bad)} (no cases, a view, or no kernel); "
                            f"fuzzable: {', '.join(have)}")
        return [o.upper() for o in only]

    def supports(self, node) -> bool:
        return all(be.supports_op(node) for be in self.backends)

    def example(self, seed: int, k: int, ops: list, max_nodes: int = 4) -> GraphSpec:
        return example(seed, k, ops, max_nodes, self.supports)

    def check(self, spec: GraphSpec, seed: int = 0) -> Outcome:
        return check(spec, self.backends, self.ref, seed, self.alloc)

    def check_shrunk(self, spec: GraphSpec, seed: int = 0) -> tuple[GraphSpec, Outcome]:
        """check, and a failure shrunk to the smallest graph that still fails (shrink)."""
        return shrink(spec, self.check(spec, seed), lambda s: self.check(s, seed))

    def free(self) -> None:
        for be in self.backends:
            be.free()


def replay(spec_json: str, threads=(1, 2, 3), seed: int = 0) -> Outcome:
    """Rebuild a printed GraphSpec and check it again (the Python repro of a failure)."""
    spec = GraphSpec.from_json(spec_json)
    r = Runner(threads)
    try:
        out = r.check(spec, seed)
    finally:
        r.free()
    print(f"{spec}: {out.status} {out.message}")
    return out
