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
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
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
