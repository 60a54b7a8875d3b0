"""Tiered execution's hold: with an empty kernel cache the first graphs run on the fast
reference without Numba being imported; start_compiling() hands the next graph's kernels to
the background compiler; a cache that holds anything starts at once."""
import os
import subprocess
import sys
import textwrap

import numpy as np

import pyggml as gg
from pyggml.backends.numba_cpu.warmup import EXECUTOR
from pyggml.sched import warmup_bg
from pyggml.sched.tiered import TieredSched
from pyggml.sched.warmup_bg import BackgroundWarmup
from pyggml.sched.warmup_bg import disk_cache_empty


class FakeWarmup:
    def __init__(self):
        self.submitted, self.prestarted = [], False

    def prestart(self):
        self.prestarted = True

    def submit(self, kernels):
        self.submitted += [k.key for k in kernels]
        return []

    def landed(self):
        return []

    pending = 0

    def close(self):
        pass


def _graph():
    ctx = gg.init(mem_size=1 << 20)
    x = gg.from_numpy(ctx, np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), name="x")
    y = gg.rms_norm(ctx, gg.add(ctx, x, x), 1e-5)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, y)
    return gf, y


def test_disk_cache_empty(tmp_path, monkeypatch):
    assert disk_cache_empty(str(tmp_path / "missing"))
    (tmp_path / "numba_cpu_x").mkdir()
    (tmp_path / "numba_cpu_x" / "k.py311.1.nbc").write_bytes(b"")   # data without an index
    assert disk_cache_empty(str(tmp_path))
    (tmp_path / "numba_cpu_x" / "k.py311.nbi").write_bytes(b"")
    assert not disk_cache_empty(str(tmp_path))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert not disk_cache_empty()             # Numba's own locations: not known to be empty


def test_hold_until_start_compiling(monkeypatch):
    # (not NUMBA_CACHE_DIR: Numba, imported below, would keep that directory for the session)
    monkeypatch.setattr(warmup_bg, "disk_cache_empty", lambda: True)
    fake = FakeWarmup()
    made = []
    ts = TieredSched(lambda: made.append(1), warmup=fake, hold=True)
    assert ts.held and fake.prestarted
    gf, y = _graph()
    ts.graph_compute(gf)
    assert fake.submitted == [] and made == []
    assert {ts.tensor_backend(nd).name for nd in gf.nodes} == {"fastref"}
    held = gg.to_numpy(y).copy()
    ts.start_compiling()
    ts.graph_compute(gf)                      # the same graph: now its kernels are submitted
    assert fake.submitted and not ts.held
    np.testing.assert_array_equal(gg.to_numpy(y), held)
    ts.close()


def test_no_hold_with_a_cache_that_holds_anything(monkeypatch):
    monkeypatch.setattr(warmup_bg, "disk_cache_empty", lambda: False)
    fake = FakeWarmup()
    ts = TieredSched(lambda: None, warmup=fake, hold=True)
    assert not ts.held and not fake.prestarted
    ts.close()


def test_held_demo_backend_does_not_import_numba(tmp_path):
    """The demo's tiered backend, a graph computed while held: Numba is not imported."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import pyggml as gg
        from pyggml.models.demo import make_backend
        be = make_backend("numba", 1, tiered=True, jobs=1)
        assert be.held, "not held"
        ctx = gg.init(mem_size=1 << 20)
        x = gg.from_numpy(ctx, np.ones((2, 32), np.float32), name="x")
        gf = gg.new_graph(ctx)
        gg.build_forward_expand(gf, gg.rms_norm(ctx, gg.add(ctx, x, x), 1e-5))
        be.graph_compute(gf)
        be.close()
        print(sorted(m for m in sys.modules if m == "numba" or m.startswith("llvmlite")))
    """)
    env = dict(os.environ, PYGGML_CACHE_DIR=str(tmp_path), NUMBA_CACHE_DIR=str(tmp_path / "nb"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_prestart_queues_the_executor_first_and_starts_every_worker(monkeypatch):
    bw = BackgroundWarmup(jobs=2)
    started = []
    monkeypatch.setattr(bw, "_start", lambda n=None: started.append(n))
    bw.prestart()
    bw.prestart()                             # once only
    assert bw.queue == [[EXECUTOR]] and bw.queued == {EXECUTOR} and started == [2]
    assert bw.pending == 1
    bw.close()


def test_worker_env_without_numba_is_worker_envs():
    """Numba not loaded (the hold): worker_env gives the same path and cache directory
    without importing it (pyggml's import exported NUMBA_CACHE_DIR)."""
    import sys as _sys

    from pyggml.backends.numba_cpu.warmup import worker_env
    want = worker_env()                       # Numba loaded (the suite has it anyway)
    numba = _sys.modules.pop("numba")
    try:
        got = worker_env()
        assert "numba" not in _sys.modules    # it did not import Numba
    finally:
        _sys.modules["numba"] = numba
    assert got["PYTHONPATH"] == want["PYTHONPATH"]
    assert got.get("NUMBA_CACHE_DIR") == want.get("NUMBA_CACHE_DIR")


def test_demo_first_token_line_says_held_and_bench_cold_reads_it():
    import re
    from types import SimpleNamespace

    from pyggml.models import demo
    cfg = SimpleNamespace(n_layer=2, n_embd=64, n_vocab=100)
    r = dict(mem={"hot": 1 << 20, "cold": 1 << 19, "total": 3 << 19}, cfg=cfg, label="x",
             n_prompt=40, tokens=[1, 2], parted=None, tok_s_f16=2.0, tok_s_mixed=1.5,
             tiered=True, n_fastref=2, mem_f16=4 << 20, hot=32, cold=10,
             max_abs_dlogits=0.1, logit_scale=10.0, first_token_cpu=(5.5, 0.0),
             first_token_s=6.25, prefill_s=5.0, pending_first=1, held_first=True,
             switches=0, pending_end=3)
    args = demo._parser().parse_args(["--quiet", "--graph", ""])
    line = next(x for x in demo._report(r, args) if x.startswith("first token"))
    assert "went to the background compile after it" in line
    m = re.search(r"first token\s+([0-9.]+) s after start.*?CPU ([0-9.]+) s", line)  # bench_cold
    assert m and float(m.group(1)) == 6.2 and float(m.group(2)) == 5.5
    r["held_first"] = False
    line = next(x for x in demo._report(r, args) if x.startswith("first token"))
    assert "1 kernels still compiling" in line
