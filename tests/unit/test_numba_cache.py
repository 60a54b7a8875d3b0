"""pyggml's Numba cache directory is keyed by its Numba sources (pyggml/_numba_cache.py):
an edit to any file that uses Numba - even one whose functions are only inlined into
kernels of other files - must not let Numba load stale machine code."""
from __future__ import annotations

import os
import subprocess
import sys
import time

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
