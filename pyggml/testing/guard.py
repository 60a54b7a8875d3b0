"""Guard pages for test-backend-ops (`--guard-pages`): out-of-bounds reads fault too.

Canary bytes (harness.alloc_guarded) catch a kernel that *writes* past a tensor; a read past
the end goes unnoticed. In this mode every tensor of a case gets its own anonymous mapping:
a PROT_NONE page, the data pages, a PROT_NONE page, with the data's end flush against the
trailing guard page (the canary bytes still fill the slack before the data). A read or
write of even one byte past the end faults, as does one reaching back into the page before.

A fault kills the process, so each case runs in a forked child (`run_isolated`); a child
killed by a signal becomes a FAIL naming the signal, and the run goes on.
"""
from __future__ import annotations

import ctypes
import faulthandler
import mmap
import os
import pickle
import signal

import numpy as np

from ..tensor import Buffer
from ..tensor import nbytes
from . import harness

PAGE = mmap.PAGESIZE
PROT_NONE = 0                 # <sys/mman.h>; the mmap module exports only READ, WRITE, EXEC
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _protect(addr: int, size: int) -> None:
    if _libc.mprotect(addr, size, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), f"mprotect failed: {os.strerror(ctypes.get_errno())}")


def guarded_buffer(n: int, lead: int, name: str = "") -> Buffer:
    """A Buffer of lead + n bytes whose last byte is the last before a PROT_NONE page, with a
    PROT_NONE page before its first data page too."""
    total = lead + n
    data_pages = max(1, -(-total // PAGE))
    mm = mmap.mmap(-1, (data_pages + 2) * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    raw = np.frombuffer(mm, dtype=np.uint8)
    base = raw.ctypes.data
    _protect(base, PAGE)
    _protect(base + (data_pages + 1) * PAGE, PAGE)
    end = (data_pages + 1) * PAGE
    buf = Buffer.__new__(Buffer)
    buf.data = raw[end - total:end]          # keeps the mapping alive
    buf.name, buf.backend = name, None
    return buf


def alloc_guard_pages(gf) -> list:
    """harness.alloc_guarded with every tensor against guard pages (same canary check)."""
    guards = []
    for r in harness._roots(gf):
        if r.buffer is not None:
            continue
        n = nbytes(r)
        buf = guarded_buffer(n, harness.GUARD, name=f"guard-paged {r.name}")
        buf.data[:] = harness.CANARY
        r.set_buffer(buf, harness.GUARD)
        guards.append((r, buf))
    return guards


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def run_isolated(fn, *args):
    """fn(*args) in a forked child; returns ("ok", result) or ("signal", number) when the
    child dies by a signal (or ("exit", code) when it exits without a result)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child: never returns into the caller
        code = 0
        try:
            faulthandler.disable()                 # the parent reports the signal, briefly
            os.close(rfd)
            payload = pickle.dumps(fn(*args))
            with os.fdopen(wfd, "wb") as w:
                w.write(payload)
        except BaseException:                      # noqa: BLE001 - report as exit status
            code = 3
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        payload = r.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    if payload:
        return "ok", pickle.loads(payload)
    return "exit", os.WEXITSTATUS(status)


def _fresh(backend):
    """The same backend anew: a forked child has none of its parent's worker threads."""
    n = getattr(backend, "n_threads", None)
    return type(backend)(n) if n is not None else backend


def _load_kernels(case, backend) -> None:
    """Compile or load the case's kernels here, before forking: a child's loads die with it,
    and loading them from the disk cache in every child costs more than the case."""
    table = getattr(backend, "kernels", None)
    if table is None:
        return
    try:
        _, _, gf = harness.build_graph(case)
    except Exception:                    # noqa: BLE001 - run_test reports it in the child
        return
    for node in gf.nodes:
        entry = table.get(node.op.name) if node.op is not None else None
        k = entry.select(node) if entry is not None else None
        if k is not None:
            _ = k.address              # compiles or loads it


def run_test_guarded(case, backend, ref_backend, seed: int = 0) -> harness.CaseResult:
    """harness.run_test with every tensor against guard pages, in a forked child: a fault is
    a FAIL naming the signal instead of the end of the run."""
    _load_kernels(case, backend)

    def child():
        be = _fresh(backend)
        r = harness.run_test(case, be, ref_backend, seed, alloc=alloc_guard_pages)
        return r.status, r.err, r.max_err, r.message, r.node

    res = harness.CaseResult(case, backend.name)
    kind, got = run_isolated(child)
    if kind == "ok":
        res.status, res.err, res.max_err, res.message, res.node = got
    elif kind == "signal":
        res.status = "FAIL"
        res.message = f"killed by {signal_name(got)}: out-of-bounds access (guard pages)"
    else:
        res.status, res.message = "ERROR", f"the case's child process exited with status {got}"
    return res
