"""pyggml's Numba cache directory is keyed by its Numba sources (pyggml/_numba_cache.py):
an edit to any file that uses Numba - even one whose functions are only inlined into
kernels of other files - must not let Numba load stale machine code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pyggml import _numba_cache as nc


def _tree(tmp_path, files):
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_key_follows_what_kernels_can_reach(tmp_path):
    """Kernel sources, the codecs they inline and the core/op modules whose values they
    freeze (e.g. ops/unary.py's GELU table) key the cache; Python-only layers do not."""
    pkg = _tree(tmp_path / "pkg", {
        "backends/numba_cpu/kernels/k.py": "import numba\n", "quants/nb.py": "x = 1\n",
        "ops/unary.py": "TABLE = [1]\n", "types.py": "F32 = 0\n",
        "cli.py": "# numba warm-up command\n", "llm/run.py": "x = 1\n", "viz/dot.py": "x = 1\n"})
    k0 = nc.source_key(pkg)
    assert len(k0) == 16
    for python_only in ("cli.py", "llm/run.py", "viz/dot.py"):
        (pkg / python_only).write_text("# edited, still Python only: numba\n")
        assert nc.source_key(pkg) == k0, python_only
    key = k0
    for dep in ("ops/unary.py", "quants/nb.py", "types.py", "backends/numba_cpu/kernels/k.py"):
        (pkg / dep).write_text((pkg / dep).read_text() + "# edited\n")
        assert nc.source_key(pkg) != key, dep
        key = nc.source_key(pkg)


def test_import_sets_the_directory_and_respects_the_user(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYGGML_CACHE_DIR"] = str(tmp_path / "c")
    code = "import os, pyggml, numba.core.config as c; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(tmp_path / "c" / nc.source_key())
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(tmp_path / "mine")


def test_old_directories_are_pruned(tmp_path):
    old, recent, other = (tmp_path / n for n in ("0123456789abcdef", "fedcba9876543210", "notes"))
    for d in (old, recent, other):
        d.mkdir()
    past = time.time() - nc.KEEP_SECONDS - 10
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    nc._prune(str(tmp_path), keep=str(tmp_path / "x"))
    assert not old.exists() and recent.exists() and other.exists()


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYGGML_CACHE_DIR"] = str(tmp_path / "c")
    return env


def test_every_process_saves_under_the_directory_lock_once_numba_loads(tmp_path):
    """Importing pyggml does not load Numba; when Numba's caching module loads (for any
    compile: a lazy one too, not only the warm-up's), its saves take the directory's lock."""
    code = ("import json, os, sys, pyggml; before = 'numba' in sys.modules; "
            "from numba.core import caching; "
            "print(json.dumps([before, os.environ['NUMBA_CACHE_DIR'], "
            "caching.IndexDataCacheFile.save.pyggml_lock]))")
    before, cache, lock = json.loads(subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
        check=True).stdout)
    assert before is False
    assert lock == os.path.join(cache, nc.SAVE_LOCK) and os.path.exists(lock)
    # Numba loaded before pyggml: installed at once, on the user's directory
    env = _env(tmp_path)
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    code = ("import json, numba, pyggml; from numba.core import caching; "
            "print(json.dumps(caching.IndexDataCacheFile.save.pyggml_lock))")
    lock = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                     text=True, check=True).stdout)
    assert lock == str(tmp_path / "mine" / nc.SAVE_LOCK)


def _blocked_flock(pid: int) -> bool:
    """Whether process pid waits for a flock (/proc/locks: blocked requests are '->' lines)."""
    with open("/proc/locks") as f:
        return any(w[1:3] == ["->", "FLOCK"] and w[5] == str(pid) for w in map(str.split, f))


@pytest.mark.skipif(not os.path.exists("/proc/locks") or os.name != "posix",
                    reason="needs flock and /proc/locks")
def test_a_lazy_compile_waits_for_the_directory_lock(tmp_path):
    """A plain process (no warm-up, no tiered workers) compiling a cache=True function
    saves only once the lock another compiler of the directory holds is released."""
    import fcntl
    (tmp_path / "lazy_mod.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    code = ("import sys, pyggml; sys.path.insert(0, sys.argv[1]); import lazy_mod; "
            "print('ready', flush=True); print(lazy_mod.f(1), flush=True)")
    env = _env(tmp_path)
    probe = "import os, pyggml; print(os.environ['NUMBA_CACHE_DIR'])"
    cache = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    with open(os.path.join(cache, nc.SAVE_LOCK), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            deadline = time.time() + 120
            while not _blocked_flock(p.pid):
                assert p.poll() is None, f"saved without the lock: {p.communicate()}"
                assert time.time() < deadline, "the child never asked for the lock"
                time.sleep(0.05)
            assert not any(n.endswith(".nbi") for _, _, fs in os.walk(cache) for n in fs)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and out.strip() == "2", err
    assert any(n.endswith(".nbi") for _, _, fs in os.walk(cache) for n in fs)
