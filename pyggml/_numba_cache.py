"""Where Numba keeps pyggml's compiled kernels: a directory keyed by pyggml's Numba sources.

Numba's disk cache (cache=True) revalidates an entry only against the source file of the
function it compiled. pyggml's kernels inline code from other files (kernels/simd.py's LLVM
intrinsics, quants/nb.py, the descriptor accessors): after an edit or an upgrade that
changes only those files, Numba would load stale machine code; kernels also freeze values of
the core and op modules they import (type ids, op tables, the GELU table). So unless the user
chose a directory (NUMBA_CACHE_DIR), the cache lives in PYGGML_CACHE_DIR (default
~/.cache/pyggml/numba) under a hash of every source compiled code can reach (KERNEL_DEPS):
any change to them starts a fresh cache, while an edit to the CLI, llm/, viz/, testing/,
models/ or attention/ (Python only) keeps it. The directory is exported as NUMBA_CACHE_DIR, so the
warm-up's worker processes (backends/numba_cpu/warmup.py) and Numba's own config reloads
agree on it. Old directories unused for a week are removed.

The save lock: Numba saves a function's cache entry as read-index, add entry, write-index;
two processes saving into one directory at once can lose an entry or number two entries
alike (the index of one then names the other's code). Every pyggml process therefore takes
an exclusive lock on one file in the directory (SAVE_LOCK) around each save: installed when
Numba's caching module loads (configure must not import Numba: the tiered start-up runs
without it), so lazy compiles are covered as well as the warm-up's workers, the tiered
workers and the detached compiler (backends/numba_cpu/warmup.py, sched/).
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

PKG = Path(__file__).resolve().parent
KEEP_SECONDS = 7 * 24 * 3600


# What compiled kernel code can reach, as paths under the package: the backend's kernels, the
# quant codecs they inline, the modules whose values they freeze when compiled (types,
# tensor, errors, the ops' op_params layouts) and what those import, and this file.
# tests/unit/test_layers.py checks that the kernel package's import closure stays inside.
KERNEL_DEPS = ("backends/numba_cpu/", "quants/", "ops/", "types.py", "tensor.py", "errors.py",
               "context.py", "data.py", "_numba_cache.py")


def source_key(pkg: Path = PKG) -> str:
    """Hash of the sources compiled code depends on (KERNEL_DEPS: path and content) and of
    the switches that change the generated code (PYGGML_SIMD, NUMBA_CPU_NAME): Numba keys
    its cache by the CPU, not by them."""
    h = hashlib.sha256()
    for var in ("PYGGML_SIMD", "NUMBA_CPU_NAME"):
        h.update(f"{var}={os.environ.get(var, '').lower()}\0".encode())
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg).as_posix()
        if rel.startswith(KERNEL_DEPS):
            h.update(rel.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


AVX2_CPU = "haswell"     # PYGGML_SIMD=avx2 compiles for it (see backends/numba_cpu/kernels/simd.py)


def _simd_target() -> None:
    """PYGGML_SIMD=avx2: compile for an AVX2 CPU (unless NUMBA_CPU_NAME names one), so that
    LLVM's own code is an AVX2-only machine's too. Set in the environment, before Numba reads
    it, so worker processes and Numba's config reloads agree."""
    if os.environ.get("PYGGML_SIMD", "").lower() != "avx2" or os.environ.get("NUMBA_CPU_NAME"):
        return
    os.environ["NUMBA_CPU_NAME"] = AVX2_CPU
    os.environ["NUMBA_CPU_FEATURES"] = ""           # that CPU's own features, not this host's
    cfg = sys.modules.get("numba.core.config")
    if cfg is not None:                              # numba imported before pyggml
        cfg.CPU_NAME, cfg.CPU_FEATURES = AVX2_CPU, ""


def default_base() -> str:
    if os.environ.get("PYGGML_CACHE_DIR"):
        return os.environ["PYGGML_CACHE_DIR"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "pyggml", "numba")


def configure() -> Optional[str]:
    """Point Numba's cache at the source-keyed directory (unless NUMBA_CACHE_DIR is set);
    returns the directory in use, or None when Numba's default (__pycache__) stays."""
    _simd_target()
    if os.environ.get("NUMBA_CACHE_DIR"):
        _lock_saves_when_loaded(os.environ["NUMBA_CACHE_DIR"])
        return os.environ["NUMBA_CACHE_DIR"]
    base = default_base()
    path = os.path.join(base, source_key())
    try:
        os.makedirs(path, exist_ok=True)
        os.utime(path)                       # marks it in use (see _prune)
    except OSError:                          # read-only home: Numba's default location
        return None
    os.environ["NUMBA_CACHE_DIR"] = path
    cfg = sys.modules.get("numba.core.config")
    if cfg is not None:                      # numba imported before pyggml
        cfg.CACHE_DIR = path
    _prune(base, keep=path)
    _lock_saves_when_loaded(path)
    return path


def _prune(base: str, keep: str) -> None:
    now = time.time()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for e in entries:
        if e.path == keep or len(e.name) != 16 or not e.is_dir():
            continue
        try:
            if now - e.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            pass


# --- the save lock (module doc) -------------------------------------------------------------

SAVE_LOCK = ".pyggml-save.lock"   # in the cache directory: every compiler of it takes it
_dir_lock: Optional[str] = None  # this process's directory lock (saves return to it)


def dir_lock(cache: Optional[str]) -> Optional[str]:
    """The save lock file of this cache directory (made if missing), or None when there is
    no directory or it cannot hold the file. Never unlinked: a process that opened the old
    file and one that made a new one would not exclude each other."""
    if not cache:
        return None
    path = os.path.join(cache, SAVE_LOCK)
    try:
        os.makedirs(cache, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError:
        return None
    return path


def save_lock_path(cache: Optional[str]) -> str:
    """The lock a compiler of `cache` takes: the directory's (dir_lock), else a private temp
    file (drop_lock removes it; saves into such a directory fail the same way, and the
    warm-up's workers report it)."""
    path = dir_lock(cache)
    if path is None:
        fd, path = tempfile.mkstemp(prefix="pyggml-warmup-", suffix=".lock")
        os.close(fd)
    return path


def drop_lock(path: Optional[str]) -> None:
    """Done with a lock of save_lock_path: a private one is removed (and this process's
    saves go back to the directory's lock); a cache directory's stays."""
    if path is None or os.path.basename(path) == SAVE_LOCK:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
    caching = sys.modules.get("numba.core.caching")
    save = getattr(getattr(caching, "IndexDataCacheFile", None), "save", None)
    if getattr(save, "pyggml_lock", None) == path:
        save.pyggml_lock = _dir_lock


def lock_saves(path: Optional[str]) -> None:
    """This process's Numba cache saves hold an exclusive lock on path (None: no lock).
    Numba's save is wrapped once per process (a second wrapper would wait on its own lock);
    a later call points it at another path. A lock file that cannot be opened (gone with
    its directory) leaves the save to Numba, which makes the directory again."""
    import fcntl

    from numba.core import caching
    save = caching.IndexDataCacheFile.save
    if hasattr(save, "pyggml_lock"):
        save.pyggml_lock = path
        return

    def locked_save(self, key, data):
        try:
            f = open(locked_save.pyggml_lock, "a") if locked_save.pyggml_lock else None
        except OSError:
            f = None
        if f is None:
            return save(self, key, data)
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)          # released when f closes
            return save(self, key, data)
    locked_save.pyggml_lock = path
    caching.IndexDataCacheFile.save = locked_save


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs then() right after the module `name` is executed, the first time it is imported
    (a post-import hook: it takes itself off sys.meta_path at once)."""

    def __init__(self, name: str, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, then = loader.exec_module, self.then

        def exec_module(module):
            run(module)
            then()
        loader.exec_module = exec_module           # this spec's own loader object
        return spec


def _lock_saves_when_loaded(cache: str) -> None:
    """This process's saves into `cache` take its directory lock from the moment Numba's
    caching module loads (at once if it already has); nothing without fcntl or a lock file."""
    global _dir_lock
    try:
        import fcntl  # noqa: F401
    except ImportError:                      # no flock (Windows): saves as Numba makes them
        return
    _dir_lock = dir_lock(cache)
    if _dir_lock is None:
        return

    def install() -> None:
        try:
            lock_saves(_dir_lock)
        except (ImportError, AttributeError):  # Numba's cache internals changed: unlocked
            pass
    if "numba.core.caching" in sys.modules:
        install()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("numba.core.caching", install))
