"""test-backend-ops' engine: build a case, fill its inputs, run it on backends, compare.

Every tensor of a case graph gets its own allocation with guard bytes on both sides, so a
kernel writing out of bounds is caught (the guards must be intact after compute). Every node
(and every source an op declares it writes) is compared with ggml's rules: NaN or Inf on one
side only fails, infinities must agree in sign, then NMSE = Σ(a−b)²/Σa² (a = reference)
must stay under the case's threshold, or values must be identical for exact ops.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import data
from ..context import init
from ..errors import GGMLError
from ..errors import UnsupportedError
from ..graph import CGraph
from ..ops.case import Case
from ..tensor import Buffer
from ..tensor import Tensor
from ..tensor import nbytes
from ..types import TRAITS

GUARD = 64                      # bytes of canary on each side of every tensor
CANARY = 0xA5
FLT_MAX = float(np.finfo(np.float32).max)


@dataclass
class CaseResult:
    case: Case
    backend: str
    mode: str = "test"
    status: str = "OK"          # OK | FAIL | NOT SUPPORTED | ERROR
    err: float = 0.0
    max_err: float = 0.0
    message: str = ""
    node: str = ""
    # perf
    runs: int = 0
    us_per_run: float = 0.0
    flops: float = 0.0
    nbytes: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status in ("OK", "NOT SUPPORTED")


# --- building and filling ------------------------------------------------------------------

def build_graph(case: Case) -> tuple:
    """A fresh no_alloc context with the case's graph; returns (ctx, out, gf)."""
    ctx = init(mem_size=64 << 20, no_alloc=True)
    out = case.build(ctx)
    gf = CGraph(8192, ctx=ctx)
    gf.expand(out)
    return ctx, out, gf


def _roots(gf: CGraph) -> list[Tensor]:
    seen, roots = set(), []
    for t in list(gf.leafs) + list(gf.nodes):
        for x in [t] + [s for s in t.src if s is not None]:
            r = x.view_src if x.view_src is not None else x
            if id(r) not in seen:
                seen.add(id(r))
                roots.append(r)
    return roots


def alloc_guarded(gf: CGraph) -> list[tuple[Tensor, Buffer]]:
    """One buffer per tensor, with canary bytes around it."""
    guards = []
    for r in _roots(gf):
        if r.buffer is not None:
            continue
        n = nbytes(r)
        buf = Buffer(n + 2 * GUARD, name=f"guarded {r.name}")
        buf.data[:] = CANARY
        r.set_buffer(buf, GUARD)
        guards.append((r, buf))
    return guards


def check_guards(guards) -> list[str]:
    bad = []
    for r, buf in guards:
        n = nbytes(r)
        if (buf.data[:GUARD] != CANARY).any() or (buf.data[GUARD + n:] != CANARY).any():
            bad.append(r.name or "?")
    return bad


def default_values(t: Tensor, rng: np.random.Generator) -> np.ndarray:
    """ggml's default init: uniform [-1, 1] for floats and quants; small ints for int types."""
    shape = t.ne[::-1]
    if TRAITS[t.type].is_float or TRAITS[t.type].is_quantized:
        return rng.uniform(-1.0, 1.0, size=shape)
    return rng.integers(0, max(1, t.ne[0]), size=shape)


def fill_leafs(gf: CGraph, case: Case, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # parameters (set_param) are graph nodes without op, as in ggml: inputs all the same
    for leaf in list(gf.leafs) + [n for n in gf.nodes if n.op is None]:
        vals = case.init(leaf, rng) if case.init is not None else None
        if vals is None:
            vals = default_values(leaf, rng)
        data.write(leaf, vals)


# --- comparing -------------------------------------------------------------------------------

def nmse(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    den = float(np.dot(a, a))
    num = float(np.dot(a - b, a - b))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _inf_or_max(x: np.ndarray) -> np.ndarray:
    return np.isinf(x) | (np.abs(x) == FLT_MAX)


def compare_values(ref: np.ndarray, got: np.ndarray, max_err: float, exact: bool,
                   op: str = "") -> tuple[bool, float, str]:
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    if ref.shape != got.shape:
        return False, float("inf"), f"[{op}] shape mismatch {ref.shape} vs {got.shape}"
    nan_r, nan_g = np.isnan(ref), np.isnan(got)
    if (nan_r != nan_g).any():
        i = int(np.argmax(nan_r != nan_g))
        return False, float("nan"), f"[{op}] NaN at index {i} (ref={ref[i]} got={got[i]})"
    inf_r, inf_g = _inf_or_max(ref), _inf_or_max(got)
    if (inf_r != inf_g).any() or (np.signbit(ref[inf_r]) != np.signbit(got[inf_r])).any():
        i = int(np.argmax((inf_r != inf_g) | (inf_r & (np.signbit(ref) != np.signbit(got)))))
        return False, float("inf"), f"[{op}] inf mismatch at index {i} (ref={ref[i]} got={got[i]})"
    fin = ~(nan_r | inf_r)
    if exact:
        same = np.array_equal(ref[fin], got[fin])
        err = 0.0 if same else nmse(ref[fin], got[fin])
        return same, err, "" if same else f"[{op}] not identical (NMSE {err:.3e}) but the op is exact"
    err = nmse(ref[fin], got[fin])
    if err > max_err:
        return False, err, f"[{op}] NMSE = {err:.9f} > {max_err:.9f}"
    return True, err, ""


def _outputs(gf: CGraph) -> list[tuple[Tensor, str]]:
    """What a test compares: every computing node, and every source an op writes."""
    outs = []
    for node in gf.nodes:
        if node.op is None or node.op.view:
            continue
        outs.append((node, node.op.name))
        for i in node.op.writes:
            if node.src[i] is not None:
                outs.append((node.src[i], f"{node.op.name}.src[{i}]"))
    return outs


# --- running -----------------------------------------------------------------------------------

def _threshold(case: Case):
    from ..ops.registry import OPS
    op = OPS.get(case.op)
    max_err = case.max_nmse if case.max_nmse is not None else (op.max_nmse if op else 1e-7)
    exact = case.exact if case.exact is not None else (op.exact if op else False)
    return max_err, exact


def supported(backend, gf: CGraph) -> bool:
    return all(n.op is None or n.op.view or backend.supports_op(n) for n in gf.nodes)


def case_excluded(backend, case: Case) -> Optional[str]:
    """Why `backend` does not run `case` by the case's tags (a backend lists the tags of the
    cases it cannot run in `unsupported_tags`, e.g. real ggml: "no_ggml"), or None."""
    tags = [t for t in getattr(backend, "unsupported_tags", ()) if t in case.tags]
    return f"case tagged {', '.join(tags)}" if tags else None


def compare_node(case: Case, t_ref: Tensor, t: Tensor, max_err: float, exact: bool,
                 what: str) -> tuple[bool, float, str]:
    """ggml's rules (compare_values), or the case's own error function when it has one.

    `case.err(ref_values, got_values, ref_node) -> error` is ggml's test_case::err: for ops
    whose result is defined only up to an order or a choice among ties (TOP_K with ties).
    It is called for every compared node; ref_node says which, and its sources hold the
    inputs. The error must stay <= the threshold (0 if exact)."""
    hook = getattr(case, "err", None)
    a, b = data.read(t_ref), data.read(t)
    if hook is None:
        return compare_values(a, b, max_err, exact, what)
    e = float(hook(a, b, t_ref))
    lim = 0.0 if exact else max_err
    if not e <= lim:
        return False, e, f"[{what}] error = {e:.9f} > {lim:.9f} (the case's own error function)"
    return True, e, ""


def _run(backend, case: Case, seed: int, alloc=None):
    ctx, out, gf = build_graph(case)
    guards = (alloc or alloc_guarded)(gf)
    fill_leafs(gf, case, seed)
    for _ in range(2 if case.run_twice else 1):
        backend.graph_compute(gf)
    return gf, guards


def _built(case: Case, backend, res: CaseResult):
    """(ctx, out, gf) of the case when it builds and the backend runs it; else None, with
    res's status and message saying why (ERROR or NOT SUPPORTED)."""
    try:
        built = build_graph(case)
    except Exception as e:
        res.status, res.message = "ERROR", f"case does not build: {e}"
        return None
    excluded = case_excluded(backend, case)
    if excluded or not supported(backend, built[2]):
        res.status, res.message = "NOT SUPPORTED", excluded or ""
        return None
    return built


def run_test(case: Case, backend, ref_backend, seed: int = 0, alloc=None) -> CaseResult:
    """Compute the case on `backend` and on `ref_backend`; compare every node. `alloc(gf)`
    places the tensors (default alloc_guarded; guard.alloc_guard_pages for --guard-pages)."""
    res = CaseResult(case, backend.name)
    if _built(case, backend, res) is None:
        return res
    max_err, exact = _threshold(case)
    res.max_err = max_err
    try:
        gf_ref, _ = _run(ref_backend, case, seed, alloc)
        gf, guards = _run(backend, case, seed, alloc)
    except UnsupportedError as e:     # found out only while computing (real ggml)
        res.status, res.message = "NOT SUPPORTED", str(e)
        return res
    except GGMLError as e:
        res.status, res.message = "ERROR", str(e)
        return res
    except Exception as e:            # a bug in a reference or a backend: report, go on
        res.status, res.message = "ERROR", f"{type(e).__name__}: {e}"
        return res
    bad = check_guards(guards)
    if bad:
        res.status, res.message = "FAIL", f"out-of-bounds write: guard bytes around {bad} changed"
        return res
    for (t_ref, what), (t, _) in zip(_outputs(gf_ref), _outputs(gf)):
        ok, err, msg = compare_node(case, t_ref, t, max_err, exact, what)
        res.err = max(res.err, err) if err == err else err
        if not ok:
            res.status, res.message, res.node = "FAIL", msg, t.name
            return res
    return res


def run_perf(case: Case, backend, seed: int = 0, budget_s: float = 0.5,
             max_runs: int = 10000) -> CaseResult:
    """Time graph_compute on the case until the budget is spent (like ggml's perf mode)."""
    res = CaseResult(case, backend.name, mode="perf")
    built = _built(case, backend, res)
    if built is None:
        return res
    ctx, out, gf = built
    try:
        alloc_guarded(gf)
        fill_leafs(gf, case, seed)
        backend.graph_compute(gf)                 # warm-up: compile, lower, caches
        runs, t0 = 0, time.perf_counter()
        while runs < max_runs:
            backend.graph_compute(gf)
            runs += 1
            if time.perf_counter() - t0 > budget_s:
                break
        dt = time.perf_counter() - t0
    except UnsupportedError as e:
        res.status, res.message = "NOT SUPPORTED", str(e)
        return res
    except Exception as e:
        res.status, res.message = "ERROR", f"{type(e).__name__}: {e}"
        return res
    res.runs, res.us_per_run = runs, dt / runs * 1e6
    op = out.op
    res.flops = float(op.flops(out)) if op is not None and op.flops else 0.0
    res.nbytes = float(op.nbytes(out)) if op is not None and op.nbytes else \
        float(sum(nbytes(s) for s in out.src if s is not None) + nbytes(out))
    return res


def split_ops(ops) -> list[str]:
    """`-o` values: op names and full case strings, split on the commas outside ( ) and [ ].

    `-o ADD,MUL` is two ops; `-o 'ADD(type=f32,ne=[10,5,4,3],...)'` is one case string."""
    if not ops:
        return []
    items = [ops] if isinstance(ops, str) else list(ops)
    out = []
    for item in items:
        depth, cur = 0, []
        for ch in item:
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            if ch == "," and depth == 0:
                out.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        out.append("".join(cur))
    return [w.strip() for w in out if w.strip()]


def unique_cases(cases) -> list:
    """The cases with distinct case strings, first one kept (a case string names one test)."""
    seen, out = set(), []
    for c in cases:
        key = str(c)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


_CASES: dict = {}


def raw_cases(op) -> list:
    """op.cases() as the family returns it, generated once per process (FLASH_ATTN_EXT's
    grid takes seconds to build)."""
    key = (op.name, id(op.cases))
    got = _CASES.get(key)
    if got is None:
        got = _CASES[key] = (list(op.cases()), None)
    return got[0]


def op_cases(op) -> list:
    """The cases of op that run: op.cases() without repeated case strings (first kept)."""
    raw = raw_cases(op)
    key = (op.name, id(op.cases))
    uniq = _CASES[key][1]
    if uniq is None:
        uniq = unique_cases(raw)
        _CASES[key] = (raw, uniq)
    return uniq


def all_cases(ops=None, pattern: Optional[str] = None, include_slow: bool = True):
    """(OpDef, Case) pairs of the registry, filtered by op names or full case strings and regex.

    Cases of one op with the same case string are run once (the first); see
    `duplicate_cases` for the ones that differ in what they build."""
    import re

    from ..ops.registry import OPS
    wanted = split_ops(ops) or None
    names = {w.upper() for w in wanted} if wanted else set()
    full = {w for w in wanted if "(" in w} if wanted else set()
    rx = re.compile(pattern) if pattern else None
    for name in sorted(OPS):
        op = OPS[name]
        if op.cases is None:
            continue
        case_ops = (name, *op.extra.get("case_ops", ()))     # e.g. MUL_MAT_HADAMARD
        by_name = name in names
        if wanted and not names.intersection(case_ops) and \
                not any(w.startswith(n + "(") for w in full for n in case_ops):
            continue
        for c in op_cases(op):
            if wanted and not (by_name or c.op in names) and str(c) not in full:
                continue
            if rx and not rx.search(c.vars_str):
                continue
            if not include_slow and "slow" in c.tags:
                continue
            yield op, c


def graph_signature(case: Case, seed: int = 0) -> list:
    """What a case builds, as comparable data: per tensor of the graph its op, type, ne, nb,
    view offset, op_params and sources (by position), then the bytes its inputs get from
    `seed`. Two cases with equal signatures compute the same test."""
    ctx, out, gf = build_graph(case)
    alloc_guarded(gf)
    fill_leafs(gf, case, seed)
    order = {}
    sig = []
    for t in list(gf.leafs) + list(gf.nodes):
        for x in [s for s in t.src if s is not None] + [t]:
            if id(x) in order:
                continue
            order[id(x)] = len(order)
            vs = order.get(id(x.view_src)) if x.view_src is not None else None
            sig.append((x.op.name if x.op is not None else None, int(x.type), tuple(x.ne),
                        tuple(x.nb), vs, x.view_offs if x.view_src is not None else 0,
                        tuple(int(w) for w in x.op_params),
                        tuple(order.get(id(s)) if s is not None else None for s in x.src),
                        int(getattr(x, "flags", 0) or 0)))
    sig += [data.tensor_get(leaf) for leaf in gf.leafs]
    return sig


def duplicate_cases(op) -> list[tuple[str, bool, str]]:
    """Case strings that op.cases() yields more than once: (case string, same_graph, detail).

    same_graph is False when the duplicates build different graphs (a hidden build
    parameter is missing from vars: a bug of the op family's cases)."""
    groups: dict = {}
    for c in raw_cases(op):
        groups.setdefault(str(c), []).append(c)
    out = []
    for key, cs in groups.items():
        if len(cs) < 2:
            continue
        try:
            sigs = [graph_signature(c) for c in cs]
        except GGMLError as e:
            out.append((key, False, f"does not build: {e}"))
            continue
        diff = next((i for i in range(1, len(cs)) if sigs[i] != sigs[0]), None)
        detail = ""
        if diff is not None:
            a, b = sigs[0], sigs[diff]
            if len(a) != len(b):
                detail = f"{len(a)} vs {len(b)} tensors"
            else:
                k = next(i for i in range(len(a)) if a[i] != b[i])
                detail = f"tensor {k}: {a[k]} vs {b[k]}"
        extra = {(c.max_nmse, c.exact, c.run_twice) for c in cs}
        if diff is None and len(extra) > 1:
            detail = f"same graph, different test settings {sorted(map(str, extra))}"
        elif diff is None and len({c.tags for c in cs}) > 1:
            detail = f"same test, tags differ {sorted({c.tags for c in cs})}"
        out.append((key, diff is None and len(extra) == 1, detail))
    return out
