"""What the op test modules share: their case lists, the reference against real ggml (per case,
or per op in a child process so a GGML_ASSERT abort cannot take pytest down), the Numba
backends against the reference, and small graph runs. Imported as `_cases` (pytest puts this
folder on sys.path)."""
from __future__ import annotations

import os

import pyggml as gg
from pyggml import data
from pyggml.testing import harness as H

SLOW = os.environ.get("PYGGML_SLOW") == "1"     # the big cases too
NO_GGML = "no_ggml"         # cases beyond ggml's CPU kernels (pyggml-only extensions)


def op_cases(names, slow=False, skip=()):
    """The cases of the ops `names` that are slow (or not, as `slow`), without those tagged
    with any of `skip`."""
    return [c for name in names for c in gg.get_op(name).cases()
            if ("slow" in c.tags) == slow and not any(t in c.tags for t in skip)]


def sample(cases, k):
    """At most k cases, spread evenly over the list (keeps the pytest run short)."""
    if len(cases) <= k:
        return cases
    step = len(cases) / k
    return [cases[int(i * step)] for i in range(k)]


def ref_backend():
    from pyggml.backends.reference.backend import ReferenceBackend
    return ReferenceBackend()


def run_graph(backend, build, fill):
    """Build a small graph (build(ctx) -> output), fill its leafs (dict name -> values),
    compute it on backend; returns the output tensor."""
    ctx = gg.init(mem_size=32 << 20)
    out = build(ctx)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    for leaf in gf.leafs:
        if leaf.name in fill:
            data.write(leaf, fill[leaf.name])
    backend.graph_compute(gf)
    return out


def ref_compute(out_fn, *specs):
    """Leafs from (type, ne, values) specs, out_fn(ctx, *leafs) computed on the reference
    backend: (out, leafs)."""
    ctx = gg.init(mem_size=16 << 20)
    leafs = []
    for type, ne, values in specs:
        t = gg.new_tensor(ctx, type, len(ne), ne)
        data.write(t, values)
        leafs.append(t)
    out = out_fn(ctx, *leafs)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, out)
    ref_backend().graph_compute(gf)
    return out, leafs


# --- the reference against real ggml ------------------------------------------------------------

def assert_vs_ggml(case, n_threads=1):
    """Reference vs real ggml on the same inputs, every node (in-place and fused chains)."""
    from pyggml.testing.conformance import reference_vs_ggml
    ok, err, msg = reference_vs_ggml(case, 0, n_threads)
    assert ok, f"{case}: {msg}"


def assert_slow_vs_ggml(cases, n_threads=1):
    """assert_vs_ggml over the big cases, every failure reported."""
    from pyggml.testing.conformance import reference_vs_ggml
    bad = []
    for case in cases:
        ok, err, msg = reference_vs_ggml(case, 0, n_threads)
        if not ok:
            bad.append(f"{case}: {msg}")
    assert not bad, "\n".join(bad)


def compare_with_ggml(cases, seed=0):
    """(In a child process) the reference backend vs ggml's CPU for each case, every node;
    [(case, ok, message)]. Cases tagged "ties" accept any of ggml's tied indices."""
    from pyggml.testing import ggml_lib
    ref = ref_backend()
    out = []
    for case in cases:
        try:
            ctx, node_out, gf = H.build_graph(case)
            H.alloc_guarded(gf)
            H.fill_leafs(gf, case, seed)
            with ggml_lib.Mirror(gf) as m:        # copies the leafs before anything runs
                ref.graph_compute(gf)
                m.compute(1)
                max_err, exact = H._threshold(case)
                ok, msg = True, ""
                for node in gf.nodes:
                    if node.op is None or node.op.view:
                        continue
                    want, got = data.read(node), m.value(node)
                    if "ties" in case.tags:       # ggml's rule: any of the tied indices
                        err = case.err(want, got, node)
                        ok, msg = err == 0.0, f"[{node.op.name}] error {err} (ties)"
                    else:                         # ggml's order itself, swap included
                        ok, err, msg = H.compare_values(want, got, max_err, exact, node.op.name)
                    if not ok:
                        break
            out.append((str(case), ok, msg))
        except Exception as e:                     # noqa: BLE001 (reported per case)
            out.append((str(case), False, f"{type(e).__name__}: {e}"))
    return out


def assert_isolated_vs_ggml(name, cases, compare=compare_with_ggml):
    """compare(cases) in a child process; every case must match. Returns the case count."""
    from pyggml.testing import ggml_lib
    assert cases, name
    res = ggml_lib.run_isolated(compare, cases, timeout=900)
    bad = [f"{s}: {m}" for s, ok, m in res if not ok]
    assert not bad, f"{len(bad)}/{len(res)} {name} cases differ from ggml:\n" + "\n".join(bad[:10])
    return len(res)


# --- the Numba kernels against the reference ----------------------------------------------------

def assert_numba_matches(cases, numba_backends, seed):
    """Every case on every Numba backend (1, 2, 3 threads) equals the reference."""
    ref = ref_backend()
    fails = []
    for case in cases:
        for n, be in numba_backends.items():
            r = H.run_test(case, be, ref, seed=seed)
            if r.status != "OK":
                fails.append(f"{n} threads {case}: {r.status} {r.message}")
    assert not fails, "\n".join(fails[:10])
