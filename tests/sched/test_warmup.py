"""Parallel warm-up of the Numba kernels (backends/numba_cpu/warmup.py, `pyggml warmup`).

Anything that compiles into a fresh cache runs in a subprocess with its own NUMBA_CACHE_DIR
(this process's kernels may already be compiled); only small kernels are used."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import pyggml as gg
from pyggml._numba_cache import SAVE_LOCK
from pyggml.backends.numba_cpu import warmup as W
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.types import GGMLType

SMALL = ["NEG:k_neg", "ARANGE:arange"]         # two modules: two units, two workers


def _run(code: str, cache_dir, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _json_tail(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


WARM = """
    import json
    from numba.core import caching
    from pyggml.backends.numba_cpu.warmup import warm
    r = warm({keys!r}, jobs=2, min_seconds=0, executor=False)
    print(json.dumps({{"cold": r.cold, "compiled": sorted(r.compiled), "jobs": r.jobs,
                      "workers": sorted(set(r.worker_of.values())), "here": sorted(r.here),
                      "loaded": sorted(r.loaded), "errors": r.errors,
                      "lock": getattr(caching.IndexDataCacheFile.save, "pyggml_lock", None)}}))
"""


def test_warm_compiles_in_workers_then_finds_the_cache_warm(tmp_path):
    first = _json_tail(_run(WARM.format(keys=SMALL), tmp_path / "nbc"))
    assert sorted(first["cold"]) == sorted(SMALL)
    assert first["errors"] == []
    assert first["jobs"] == 2 and first["workers"] == [1, 2]
    assert first["compiled"] == sorted(SMALL)            # by the workers ...
    assert first["here"] == [] and first["loaded"] == sorted(SMALL)   # ... loaded here
    assert first["lock"] == str(tmp_path / "nbc" / SAVE_LOCK)       # own saves: its lock
    second = _json_tail(_run(WARM.format(keys=SMALL), tmp_path / "nbc"))
    assert second["cold"] == [] and second["jobs"] == 0   # warm: no worker started
    assert second["loaded"] == sorted(SMALL) and second["compiled"] == []


FAILING = """
    import json, sys
    from pyggml.backends.numba_cpu import warmup as W
    out = {}
    for name, key, code, timeout in [
            ("dies at start", "NEG:k_neg", "import sys; sys.exit(3)", 60),
            ("dies on a job", "ARANGE:arange",
             "import sys; print('{\\"ready\\": 0}', flush=True); sys.stdin.readline(); "
             "sys.exit(4)", 60),
            ("hangs", "ABS:k_abs", "import time; time.sleep(60)", 1.0)]:
        W.worker_argv = lambda lock, code=code: [sys.executable, "-c", code]
        r = W.warm([key], jobs=2, min_seconds=0, executor=False, timeout=timeout)
        k = W.resolve([key])[0]
        out[name] = {"cold": r.cold, "compiled": r.compiled, "here": sorted(r.here),
                     "errors": r.errors, "jobs": r.jobs, "ready": k.compiled,
                     "from_cache": k.from_cache}
    print(json.dumps(out))
"""


def test_failing_workers_fall_back_to_compiling_here(tmp_path):
    out = _json_tail(_run(FAILING, tmp_path / "nbc"))
    keys = {"dies at start": "NEG:k_neg", "dies on a job": "ARANGE:arange", "hangs": "ABS:k_abs"}
    for name, r in out.items():
        assert r["cold"] == [keys[name]], name
        assert r["compiled"] == {} and r["here"] == [keys[name]], name
        assert r["ready"] and not r["from_cache"], name
        assert r["errors"], name
    assert "start-up" in out["dies at start"]["errors"][0]
    assert "ARANGE:arange" in out["dies on a job"]["errors"][0]
    assert any("killed" in e for e in out["hangs"]["errors"])


SAVE = """
    import os, sys, time
    sys.path.insert(0, {moddir!r})
    from numba.core import caching
    slow = caching.IndexDataCacheFile._save_index
    def save_index(self, overloads):           # widen the read-index .. write-index window
        time.sleep(1.0)
        slow(self, overloads)
    caching.IndexDataCacheFile._save_index = save_index
    if {locked!r}:
        from pyggml._numba_cache import lock_saves
        lock_saves({lock!r})
    import helper_mod
    helper_mod.g(1)                            # Numba's first-compile set-up, before the race
    open({moddir!r} + "/ready-{arg}", "w").close()
    while len([f for f in os.listdir({moddir!r}) if f.startswith("ready-")]) < 2:
        time.sleep(0.01)
    helper_mod.h({arg})
"""

INDEX = """
    import json, sys
    sys.path.insert(0, {moddir!r})
    import helper_mod
    from numba.core.caching import FunctionCache
    c = FunctionCache(helper_mod.h.py_func)._cache_file
    print(json.dumps(sorted(c._load_index().values())))
"""


def test_every_compiler_of_a_cache_dir_takes_its_one_save_lock(tmp_path, monkeypatch):
    """warm()'s workers (`pyggml warmup`, the demo's --no-tiered warm-up, the tests'), the
    tiered workers and the detached compiler's (a BackgroundWarmup over its NUMBA_CACHE_DIR)
    of one cache directory all save under the directory's one lock file."""
    import numba

    from pyggml.sched.warmup_bg import BackgroundWarmup
    cache = str(tmp_path / "nb")
    monkeypatch.setattr(numba.config, "CACHE_DIR", cache)     # this process's cache
    started = []

    def popen(argv, **kw):                      # a worker's command: its lock is the last word
        started.append((argv[-1], kw["env"]["NUMBA_CACHE_DIR"]))
        raise OSError("not started in this test")
    monkeypatch.setattr(subprocess, "Popen", popen)
    report = W.WarmReport()
    W.compile_in_workers({"m": ["NEG:k_neg"]}, 1, report, lambda line: None)
    assert "did not start" in report.errors[0]
    for bw in (BackgroundWarmup(1), BackgroundWarmup(1, nice=0, cache=cache)):
        bw.prestart()
        for t in bw.threads:
            t.join(30)
        assert "did not start" in bw.errors[0]
        bw.close()
    lock = os.path.join(cache, SAVE_LOCK)
    assert started == [(lock, cache)] * 3 and os.path.isfile(lock)


@pytest.mark.parametrize("locked", [True, False])
def test_concurrent_saves_of_one_helper_keep_every_signature(tmp_path, locked):
    """Two processes save different signatures of one njit helper into one cache at once:
    with the warm-up's lock both index entries survive, with distinct data files; without
    it (Numba's own read-modify-write) one is lost."""
    (tmp_path / "helper_mod.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef h(x):\n    return x + 1\n\n\n"
        "@numba.njit\ndef g(x):\n    return x\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "nbc"))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(SAVE.format(
        moddir=str(tmp_path), locked=locked, lock=str(tmp_path / "lock"), arg=arg))],
        env=env, stderr=subprocess.PIPE, text=True) for arg in ("1", "1.5")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    names = _json_tail(_run(INDEX.format(moddir=str(tmp_path)), tmp_path / "nbc"))
    if locked:
        assert len(names) == 2 and len(set(names)) == 2
    else:
        assert len(names) == 1


def test_cli_check_then_warm_then_check(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "nbc"))
    cmd = [sys.executable, "-m", "pyggml.cli", "warmup", "--kernels", "NEG:k_neg"]
    r = subprocess.run(cmd + ["--check"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "1 of 1 kernels cold" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cmd + ["-j", "2"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "compiled 1 of 1 kernels" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cmd + ["--check"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "0 of 1 kernels cold" in r.stdout, r.stdout + r.stderr


def test_cli_usage_and_errors(capsys):
    from pyggml.cli import main
    from pyggml.warmup_cli import main as warmup_main
    assert main([]) == 0 and "warmup" in capsys.readouterr().out
    assert warmup_main(["--kernels", "NOPE:nothing"]) == 1
    assert "no kernel 'NOPE:nothing'" in capsys.readouterr().err
    assert warmup_main(["-j", "0", "--kernels", "NEG:k_neg"]) == 1
    with pytest.raises(W.WarmupError, match="jobs must be >= 1"):
        W.warm(["NEG:k_neg"], jobs=0)


def test_in_disk_cache_after_compiling_and_for_uncacheable_kernels():
    k = W.resolve(["NEG:k_neg"])[0]
    k.address
    assert k.in_disk_cache() is True
    ns = {}
    exec("def typed_here(desc, ith, nth):\n    pass\n", ns)      # no source file: no cache
    assert make_kernel("NOP", ns["typed_here"]).in_disk_cache() is False
    assert W.cold([make_kernel("NOP", ns["typed_here"])]) == []   # left to the lazy path


def does_not_compile(desc, ith, nth):
    no_such_helper(desc)                                        # noqa: F821  on purpose


def test_a_kernel_that_does_not_compile_is_reported_not_raised():
    k = make_kernel("NOP", does_not_compile)
    r = W.warm([k], jobs=2, min_seconds=0, executor=False)    # private: compiled here
    assert r.jobs == 0 and list(r.failed) == ["NOP:does_not_compile"]
    assert "no_such_helper" in r.failed["NOP:does_not_compile"]
    assert not k.compiled


def test_units_keep_sharing_modules_whole_and_cut_many_small_kernels():
    big = ["FLASH_ATTN_EXT:flash_attn_ext_kernel",
           "FLASH_ATTN_EXT_WITH_STATE:flash_attn_ext_with_state_kernel"]
    small = [f"OP{i}:k{i}" for i in range(200)]             # DEFAULT_COST each
    units = W.plan_units({"attention": big, "elementwise": small, "rope": ["ROPE:rope_fwd"]}, 2)
    assert units[0] == big                                   # biggest first, never cut
    cut = [u for u in units if u[0].startswith("OP")]
    assert len(cut) >= 2 and sum(cut, []) == small          # cut in order, nothing lost
    costs = [sum(W.cost(k) for k in u) for u in units]
    assert costs == sorted(costs, reverse=True)
    assert W.plan_units({"attention": big}, 8) == [big]


def test_graph_kernels_and_demo_kernels():
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_1d(ctx, GGMLType.F32, 8)
    b = gg.new_tensor_1d(ctx, GGMLType.F32, 8)
    gf = gg.new_graph(ctx)
    gg.build_forward_expand(gf, gg.mul(ctx, gg.add(ctx, a, b), b))
    assert sorted(k.key for k in W.graph_kernels([gf])) == ["ADD:k_add", "MUL:k_mul"]
    from pyggml.models.demo import _parser
    from pyggml.models.demo import demo_kernels
    args = _parser().parse_args(["--prompt", "40", "--tokens", "30", "--ctx", "128",
                                 "--hot", "32", "--random-weights"])     # Q4_0 weights
    keys = {k.key for k in demo_kernels(args)}
    # GET_ROWS / SET_ROWS are templates: only the types of the demo's graphs compile
    assert {"FLASH_ATTN_EXT:flash_attn_ext_kernel",       # F16 cache
            "FLASH_ATTN_EXT_WITH_STATE:flash_attn_ext_with_state_kernel",   # mixed cache
            "MUL_MAT:mul_mat", "GET_ROWS:get_rows[q8_0]",  # embeddings
            "GET_ROWS:get_rows[f16]",                       # (moves: get_rows/set_rows)
            "SET_ROWS:set_rows[q4_0]", "SET_ROWS:set_rows[f16]"} <= keys
    assert not any(k.startswith(("SET_ROWS:set_rows[q8_0", "GET_ROWS:get_rows[q4_1")) for k in keys)
    assert keys <= {k.key for k in W.all_kernels()}      # KERNELS and the fused ones


def test_templates_make_one_kernel_per_type_found_by_key():
    from pyggml.backends.numba_cpu.kernels import find
    from pyggml.backends.numba_cpu.kernels import lookup
    k = find("GET_ROWS:get_rows[q8_0]")
    assert k is not None and k.key == "GET_ROWS:get_rows[q8_0]"
    assert find("GET_ROWS:get_rows[q8_0]") is k                # made once, then kept
    assert find("GET_ROWS:get_rows[f16]") is not k
    assert find("GET_ROWS:get_rows") is None                   # a template does not compile
    assert find("GET_ROWS:get_rows[no_such_type]") is None
    assert find("GET_ROWS:nope[q8_0]") is None and find("NOPE:get_rows") is None
    assert W.resolve(["GET_ROWS:get_rows[q8_0]"]) == [k]
    with pytest.raises(W.WarmupError, match="no kernel"):
        W.resolve(["GET_ROWS:get_rows"])
    ctx = gg.init(mem_size=1 << 20, no_alloc=True)
    a = gg.new_tensor_2d(ctx, GGMLType.Q8_0, 64, 4)
    ids = gg.new_tensor_1d(ctx, GGMLType.I32, 2)
    assert lookup(gg.get_rows(ctx, a, ids)) is k               # the node's type picks it
    b = gg.new_tensor_2d(ctx, GGMLType.F16, 64, 4)
    assert lookup(gg.get_rows(ctx, b, ids)).key == "GET_ROWS:get_rows[f16]"
    entry = KERNELS["GET_ROWS"]
    assert entry.variants[0].is_template and k in entry.variants[0].children()


def test_row_functions_cover_every_settable_type():
    """GET_ROWS/SET_ROWS/CPY convert rows through kernels/row_fns.py's per-type row
    functions: a type the codecs (quants.nb) know but the tables miss would make those
    kernels refuse it (MXFP4 did, after two branches met)."""
    from pyggml.backends.numba_cpu.kernels import row_fns
    from pyggml.types import QUANT_TYPES
    from pyggml.types import GGMLType
    for t in set(QUANT_TYPES) | {GGMLType.F32, GGMLType.F16, GGMLType.BF16}:
        assert row_fns.has_row_fn(row_fns.DEQ, t), t
        assert row_fns.has_row_fn(row_fns.QUANT, t), t
