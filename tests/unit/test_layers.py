"""The layer rules of docs/INTERNALS.md, read from the source: every import statement of every
module under pyggml/ (function-level ones included) must point down or sideways, and no two
files may import each other, directly or around a loop. No exceptions are listed here: a
violation is fixed by moving code, not by adding it to an allow list."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pyggml"

CORE = {"types", "tensor", "context", "graph", "quants", "data", "errors", "_numba_cache"}
FACE = {"pyggml", "pyggml.compute"}          # the public face: the package root and compute.py


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _targets(mod: str, is_pkg: bool, node) -> list[str]:
    """The pyggml modules an import statement loads (a `from X import name` whose name is a
    submodule loads that submodule; otherwise X itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "pyggml"]
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)] + ([node.module] if node.module else [])
        base = ".".join(base)
    else:
        base = node.module or ""
    if base.split(".")[0] != "pyggml":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _edges() -> dict:
    """{module: {(imported module, line)}} for every pyggml module."""
    out = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        out[mod] = {(t, n.lineno) for n in ast.walk(tree)
                    if isinstance(n, (ast.Import, ast.ImportFrom))
                    for t in _targets(mod, is_pkg, n) if t != mod}
    return out


EDGES = _edges()


def layer(mod: str) -> str:
    """core, ops, backends, sched, attention, face, or the top-level area (testing, models,
    llm, viz, cli ...)."""
    if mod in FACE:
        return "face"
    area = mod.split(".")[1]
    return "core" if area in CORE else area


# layer -> the layers it may import (besides itself). Everything else sits on top and may
# import anything below it (cycles excepted).
ALLOWED = {
    "core": set(),
    "ops": {"core"},
    "sched": {"core", "ops", "backends"},
    "backends": {"core", "ops", "sched"},
    "attention": {"core", "ops"},
}


def _violations() -> list[str]:
    bad = []
    for mod, targets in EDGES.items():
        lay = layer(mod)
        if lay not in ALLOWED:
            continue
        for t, line in sorted(targets):
            tl = layer(t)
            if tl != lay and tl not in ALLOWED[lay]:
                bad.append(f"{MODULES[mod].relative_to(PKG.parent)}:{line}: {lay} module {mod} "
                           f"imports {t} ({tl})")
    return bad


def test_imports_point_down():
    assert _violations() == []


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    graph = {m: sorted({t for t, _ in ts if t in MODULES}) for m, ts in EDGES.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter[0]
                counter[0] += 1
                stack.append(v)
                on.add(v)
            if i < len(graph[v]):
                work.append((v, i + 1))
                w = graph[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def test_no_import_cycles_between_files():
    assert _cycles() == []


@pytest.mark.parametrize("src, expect", [
    ("from ..backends.numba_cpu.kernels import KERNELS\n", "imports pyggml.backends"),
    ("def f():\n    from ..testing import ggml_lib\n", "imports pyggml.testing"),
    ("import pyggml as gg\n", "imports pyggml (face)"),
])
def test_the_checker_sees_a_forbidden_import(src, expect, monkeypatch):
    """The rules are live: an op module that imported upward (even inside a function) fails."""
    mod = "pyggml.ops.unary"
    tree = ast.parse(src)
    extra = {(t, n.lineno) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for t in _targets(mod, False, n)}
    monkeypatch.setitem(EDGES, mod, EDGES[mod] | extra)
    assert any(expect in v for v in _violations())


def test_the_checker_sees_a_cycle(monkeypatch):
    monkeypatch.setitem(EDGES, "pyggml.types", EDGES["pyggml.types"] | {("pyggml.data", 1)})
    assert any("pyggml.types" in c and "pyggml.data" in c for c in _cycles())


def _closure(roots) -> set:
    """Modules reachable from roots by imports; reaching a package reaches all its modules
    (pyggml.ops and the kernel package import their members dynamically)."""
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen or m not in MODULES:
            continue
        seen.add(m)
        todo += [t for t, _ in EDGES[m]]
        if MODULES[m].name == "__init__.py":
            todo += [x for x in MODULES if x.startswith(m + ".")]
    return seen


def test_the_kernel_cache_key_covers_what_compiled_code_can_reach():
    """The stale-kernel bug: kernels froze values of modules the cache key did not hash (the
    GELU table of ops/unary.py), so an edit there left old machine code in the cache. Every
    module the kernel package can reach must be part of _numba_cache.KERNEL_DEPS."""
    from pyggml._numba_cache import KERNEL_DEPS
    reach = _closure(["pyggml.backends.numba_cpu.kernels", "pyggml.backends.numba_cpu.executor"])
    paths = {MODULES[m].relative_to(PKG).as_posix() for m in reach}
    assert {p for p in paths if not p.startswith(KERNEL_DEPS)} == set()
    assert "ops/unary.py" in paths or not any(p.startswith("ops/") for p in paths)
