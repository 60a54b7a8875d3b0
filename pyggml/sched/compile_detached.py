"""The detached compiler: what a command's background compile had left when it exited
(BackgroundWarmup.detach) compiles into the disk cache in a process of its own, so the command
exits when its output is done and the next start still finds the kernels in the cache.

warmup_bg.start_detached() launches it in its own session (no terminal, no signal from it),
niced as the workers are (its autogroup too: autogroup_nice), stdin from /dev/null and
stdout/stderr on DETACHED_LOG in the cache directory (never the command's pipes: a
`pyggml demo | tee` ends with the demo). `main()` is the process: a BackgroundWarmup (its own
workers, in its session, and the cache directory's save lock) over the
keys still queued, then, once the command's busy workers have exited (they finish the key they
were compiling, saving it under the same lock), over those of their keys the cache does not
hold by then. It exits by itself: 0 when every key is in the cache, 1 when some failed,
3 when the cache directory cannot be written, 4 when it was removed under it (Numba would
quietly make a new one), 5 when nothing landed for JOB_TIMEOUT seconds.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from ..backends.numba_cpu.warmup import JOB_TIMEOUT
from .warmup_bg import BackgroundWarmup


def autogroup_nice(nice: int) -> None:
    """Lower this session's autogroup weight (Linux with sched_autogroup: a new session is
    a scheduling group as heavy as the user's, whatever its processes' nice). Nothing where
    there is none."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(int(nice)))
    except OSError:
        pass


def _say(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {line}", flush=True)


def _alive(pid: int) -> bool:
    """Running (a zombie, or a pid gone, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _writable(cache: str) -> bool:
    """A file can be made in the directory (Numba's own check before a save)."""
    try:
        tempfile.TemporaryFile(dir=cache).close()
        return True
    except OSError:
        return False


def _removed(dfd: int, cache: str) -> bool:
    """The directory open as dfd is gone from its path (unlinked, or another in its place:
    Numba's next save would make a new one)."""
    try:
        st = os.stat(cache)
        return os.fstat(dfd).st_nlink == 0 or (st.st_dev, st.st_ino) != (
            os.fstat(dfd).st_dev, os.fstat(dfd).st_ino)
    except OSError:
        return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pyggml.sched.compile_detached")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--after", action="append", default=[],
                    help="PID:KEY: KEY once process PID has exited, unless cached by then")
    ap.add_argument("--timeout", type=float, default=JOB_TIMEOUT)
    ap.add_argument("keys", nargs="*")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cache = os.environ.get("NUMBA_CACHE_DIR", "")
    after = {}
    for item in args.after:
        pid, _, key = item.partition(":")
        after[key] = int(pid)
    n_after = len(after)
    _say(f"compiling {len(args.keys) + len(after)} kernels into {cache or '?'} "
         f"({len(after)} after the worker compiling them exits)")
    if not cache or not _writable(cache):
        _say(f"error: the kernel cache directory {cache!r} cannot be written: stopping")
        return 3
    dfd = os.open(cache, os.O_RDONLY)
    bw = BackgroundWarmup(args.jobs, _say, nice=0, cache=cache)   # this process is niced
    n_err = 0
    try:
        queued = bw.queue_keys(args.keys)
        _say(f"{len(queued)} of {len(args.keys)} queued (the rest are in the cache)")
        last = time.monotonic()
        n_done = 0
        while True:
            if after and not any(_alive(p) for p in after.values()):
                later = bw.queue_keys(list(after))
                _say(f"the command's workers are gone: {len(later)} of their {len(after)} "
                     "kernels still to compile")
                after = {}
            with bw.cond:
                bw.cond.wait(0.5)
                left = bw.queued - bw.done
                done = len(bw.done)
                running = any(t.is_alive() for t in bw.threads)
            if len(bw.errors) > n_err:
                for e in bw.errors[n_err:]:
                    _say(f"error: {e}")
                n_err = len(bw.errors)
                if not _writable(cache):
                    _say(f"error: the kernel cache directory {cache!r} cannot be written: "
                         "stopping")
                    return 3
            if _removed(dfd, cache):
                _say(f"error: the kernel cache directory {cache!r} was removed: stopping")
                return 4
            if done != n_done:
                n_done, last = done, time.monotonic()
            elif time.monotonic() - last > args.timeout:
                _say(f"error: nothing landed for {args.timeout:.0f} s: stopping")
                return 5
            if not after and (not left or not running):
                break
        bw.close()                               # (its feeders' last lines come first)
        n = len(args.keys) + n_after
        if bw.errors:
            _say(f"done with {len(bw.errors)} errors (above), {n} kernels, "
                 f"{time.perf_counter() - t0:.1f} s")
            return 1
        _say(f"done: {n} kernels in the cache ({len(bw.done)} compiled or loaded here) after "
             f"{time.perf_counter() - t0:.1f} s")
        return 0
    finally:
        bw.close()
        os.close(dfd)
