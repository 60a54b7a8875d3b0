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


def test_key_follows_numba_sources_only(tmp_path):
    pkg = _tree(tmp_path / "pkg", {"a.py": "import numba\n", "sub/b.py": "from numba import njit\n",
                                   "plain.py": "x = 1\n"})
    k0 = nc.source_key(pkg)
    (pkg / "plain.py").write_text("x = 2\n")                 # no numba: same cache
    assert nc.source_key(pkg) == k0
    (pkg / "sub" / "b.py").write_text("from numba import njit  # edited\n")
    assert nc.source_key(pkg) != k0
    assert len(k0) == 16


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
