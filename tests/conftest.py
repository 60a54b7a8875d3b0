"""Shared fixtures: `ggml` (real ggml through ctypes, skips when libggml-python is absent), `rng`,
`simd_twin` (a test module's check run again under another PYGGML_SIMD, declared with
`@pytest.mark.twin`); a session warm-up of the Numba kernels when the disk cache is cold, after
which the avx2 twin checks start in one background child."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

# The commands' exit waits for their background compile in tests (the old behaviour): a
# detached compiler (sched/compile_detached.py) must never outlive the suite; the tests that
# detach do it through the API and wait for it.
os.environ["PYGGML_DETACH_COMPILE"] = "0"

WARMUP_MIN_TESTS = 1000       # a big run (the suite, tests/ops) needs most kernels
WARMUP_MIN_SECONDS = 20.0     # estimated cold compile worth starting worker processes for


def suite_kernels() -> list:
    """The kernels the session warm-up compiles: warmup.all_kernels() (every kernel and fused
    kernel, a template's common children) and the template children the ops' own non-slow
    cases reach beyond those (tests/ops/test_rows_shape.py runs every case of GET_ROWS and
    SET_ROWS, the fuzz profile draws from them, CPY's cases convert between many types): a
    child costs its types' row functions (kernels/row_fns.py, ~1 s CPU each, a K-quant
    quantizer 4-11 s), better spent in the warm-up's workers than in the tests."""
    from pyggml.backends.numba_cpu import warmup
    from pyggml.backends.numba_cpu.kernels import KERNELS
    from pyggml.backends.numba_cpu.kernels import lookup
    from pyggml.errors import GGMLError
    from pyggml.ops.registry import OPS
    from pyggml.testing.harness import build_graph
    from pyggml.testing.harness import op_cases
    out = warmup.all_kernels()
    for op, entry in KERNELS.items():
        if not any(v.is_template for v in entry.variants):
            continue
        for case in op_cases(OPS[op]):
            if "slow" in case.tags:
                continue
            try:
                _, _, gf = build_graph(case)
            except GGMLError:             # a case that does not build reaches no kernel
                continue
            out += [k for k in map(lookup, gf.nodes) if k is not None]
    return list({k.key: k for k in out}.values())


@pytest.fixture(scope="session", autouse=True)
def numba_warmup(request, simd_twins):
    """A cold Numba cache (fresh checkout, CI) would compile ~90 kernels one by one as tests
    reach them (about 2 minutes on one core): for a big run, compile them first in parallel
    processes (pyggml/backends/numba_cpu/warmup.py). PYGGML_TEST_WARMUP=0 turns it off.
    Then the avx2 twin checks start in a background child (it compiles its own kernels on the
    core the mostly single-threaded tests leave free; started after the warm-up, which needs
    both)."""
    if os.environ.get("PYGGML_TEST_WARMUP", "1") != "0" and \
            len(request.session.items) >= WARMUP_MIN_TESTS:
        from pyggml.backends.numba_cpu import warmup
        todo = warmup.cold(suite_kernels())
        if sum(warmup.cost(k.key) for k in todo) >= WARMUP_MIN_SECONDS:
            warmup.warm(todo)
    simd_twins.start(request.session.items)


@pytest.fixture(scope="session")
def ggml():
    """The real ggml library (pyggml.testing.ggml_lib.lib()); the test skips without it."""
    from pyggml.testing import ggml_lib
    if not ggml_lib.available():
        pytest.skip("real ggml (libggml-python) is not available")
    return ggml_lib.lib()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- SIMD twins: a test module's check run again under another PYGGML_SIMD ---------------------

_TWIN_SCRIPT = r"""
import importlib, json, sys, traceback
sys.path.insert(0, %(root)r)
from pyggml.backends.numba_cpu.kernels import simd
assert simd.HAVE_AVX2 == %(avx2)r and not simd.HAVE_AVX512 and not simd.HAVE_VNNI \
    and simd.VL == 8, (simd.HAVE_AVX2, simd.HAVE_AVX512, simd.HAVE_VNNI, simd.VL)
for folder, module, fn in %(checks)r:
    try:
        sys.path.insert(0, folder)
        rec = dict(bad=[str(b) for b in getattr(importlib.import_module(module), fn)()])
    except BaseException:
        rec = dict(error=traceback.format_exc())
    print("TWIN " + json.dumps(dict(rec, check=[folder, module, fn])), flush=True)
"""
TWIN_TIMEOUT = 3600.0       # all the checks of one child (its compile included), loaded machine


class TwinRun:
    """One child interpreter with PYGGML_SIMD=mode running a list of checks (test module
    functions of no arguments that return their mismatches) one after the other: the kernels
    compile once for all of them, while the parent goes on with other tests."""

    def __init__(self, mode: str, checks: list, cache_dir=None):
        import tempfile
        self.mode, self.checks, self.t0 = mode, [tuple(c) for c in checks], time.monotonic()
        env = dict(os.environ, PYGGML_SIMD=mode)
        env.pop("NUMBA_CACHE_DIR", None)         # pyggml's default cache is keyed by the mode
        if cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = str(cache_dir)
        root = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["pyggml"].__file__)))
        script = _TWIN_SCRIPT % dict(root=root, avx2=mode == "avx2", checks=self.checks)
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                                     stdout=self.out, stderr=self.err)

    def result(self, check: tuple) -> dict:
        """The check's record ({'bad': [...]} or {'error': traceback}), as soon as the child
        prints it (the checks after it may still run)."""
        while True:
            done = self.proc.poll() is not None          # then its output is complete
            rec = self._record(check)
            if rec is not None:
                return rec
            if done:
                break
            if time.monotonic() - self.t0 > TWIN_TIMEOUT:
                self.close()
                break
            time.sleep(0.5)
        return dict(error=f"PYGGML_SIMD={self.mode} child (rc {self.proc.returncode}) gave no "
                          f"result for {check}:\n{_text(self.out)[-3000:]}{_text(self.err)[-3000:]}")

    def _record(self, check: tuple):
        for line in _text(self.out).splitlines(keepends=True):
            if line.startswith("TWIN ") and line.endswith("\n"):
                rec = json.loads(line[5:])
                if tuple(rec["check"]) == tuple(check):
                    return rec
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _text(f) -> str:
    """What the child wrote to f so far (pread: the file offset the child writes at stays)."""
    return os.pread(f.fileno(), os.fstat(f.fileno()).st_size, 0).decode(errors="replace")


TWIN_MARK = "twin"     # @pytest.mark.twin("fn", "mode"): the twin checks a test calls


def _twin_marks(item) -> list:
    """(mode, fn) of a test's `@pytest.mark.twin("fn", "mode")` markers: the only checks its
    `simd_twin` fixture runs (a call not declared so fails its test: it cannot silently end up
    in a child of its own). A marker of another form is a usage error at collection."""
    out = []
    for m in item.iter_markers(TWIN_MARK):
        if (len(m.args) != 2 or m.kwargs or not all(isinstance(a, str) for a in m.args)
                or "simd_twin" not in getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.{TWIN_MARK}(\"fn\", "
                                    f"\"mode\") (two strings) on a test that takes the simd_twin "
                                    f"fixture, not {m.args!r} {m.kwargs!r}")
        if (m.args[1], m.args[0]) not in out:
            out.append((m.args[1], m.args[0]))
    return out


def _skipped(item) -> bool:
    """A skip or a skipif with a true (non-string) condition: known before the test runs."""
    if item.get_closest_marker("skip") is not None:
        return True
    return any(m.args and not isinstance(m.args[0], str) and m.args[0]
               for m in item.iter_markers("skipif"))


def _early_twins(item) -> list:
    """The (mode, fn) checks of a test that SimdTwins.start runs early: avx2 ones."""
    if _skipped(item):
        return []
    return [(mode, fn) for mode, fn in _twin_marks(item) if mode == "avx2"]


def pytest_collection_modifyitems(session, config, items):
    """The tests that read an early twin child's results run last: the child then has the
    whole session to finish in the background, and nobody waits for it."""
    for it in items:
        _twin_marks(it)                           # a malformed marker stops the session here
    late = [it for it in items if _early_twins(it)]
    if late:
        items[:] = [it for it in items if it not in late] + late


class SimdTwins:
    """The session's twin children: start() runs every collected avx2 twin check in ONE child
    early (after the warm-up, while the other tests run; their tests are moved to the end of
    the session); a check nobody started gets a child of its own when its test asks."""

    def __init__(self):
        self.runs = []

    def start(self, items) -> None:
        by_mode = {}
        for item in items:
            for mode, fn in _early_twins(item):   # generic (PYGGML_SLOW) twins: on demand
                checks = by_mode.setdefault(mode, [])
                check = (str(item.path.parent), item.path.stem, fn)
                if check not in checks:
                    checks.append(check)
        for mode, checks in by_mode.items():
            self.runs.append(TwinRun(mode, checks))

    def result(self, mode: str, check: tuple, cache_dir=None) -> dict:
        if cache_dir is None:
            for run in self.runs:
                if run.mode == mode and check in run.checks:
                    return run.result(check)
        run = TwinRun(mode, [check], cache_dir)
        self.runs.append(run)
        return run.result(check)

    def close(self) -> None:
        for run in self.runs:
            run.close()


@pytest.fixture(scope="session")
def simd_twins():
    twins = SimdTwins()
    yield twins
    twins.close()


@pytest.fixture
def simd_twin(request, simd_twins):
    """twin(fn_name, mode, cache_dir=None): calls this test module's function `fn_name` (no
    arguments; it returns the list of mismatches) in an interpreter with PYGGML_SIMD=mode (the
    SIMD width is fixed when the kernels compile, so each mode needs its own process) and
    asserts it found none. Its Numba cache: cache_dir, else pyggml's own (keyed by the mode).
    The test declares each (fn_name, mode) it calls with @pytest.mark.twin(fn_name, mode): the
    session starts the declared avx2 checks early, all in one child (SimdTwins.start)."""
    check = (str(request.path.parent), request.path.stem)
    declared = _twin_marks(request.node)

    def twin(fn_name: str, mode: str, cache_dir=None) -> None:
        if (mode, fn_name) not in declared:
            pytest.fail(f"simd_twin({fn_name!r}, {mode!r}) is not declared: mark the test "
                        f"@pytest.mark.{TWIN_MARK}({fn_name!r}, {mode!r})", pytrace=False)
        rec = simd_twins.result(mode, check + (fn_name,), cache_dir)
        assert "error" not in rec, rec["error"]
        assert not rec["bad"], f"PYGGML_SIMD={mode}: {fn_name} differs: {rec['bad']}"
    return twin
