"""A command's exit with its background compile unfinished: the kernels still queued or
compiling go to a detached compiler (sched/compile_detached.py) and the command exits at once;
--wait-compile / PYGGML_DETACH_COMPILE=0 wait as before, a Ctrl-C or SIGTERM stopping the
wait cleanly; a second start while the detached compiler works leaves a sound cache; the
detached compiler stops with a non-zero status when its cache directory goes bad."""
import glob
import os
import pickle
import shutil
import signal
import threading
import time

import pytest

from pyggml._numba_cache import lock_saves
from pyggml._numba_cache import save_lock_path
from pyggml.backends.numba_cpu import fusion  # noqa: F401  (Numba and the registry loaded
from pyggml.backends.numba_cpu.kernels import find  # with the session's cache directory)
from pyggml.backends.numba_cpu.warmup import EXECUTOR
from pyggml.llm import cli_common as C
from pyggml.sched import compile_detached
from pyggml.sched import warmup_bg
from pyggml.sched.tiered import TieredSched
from pyggml.sched.tiered import detach_enabled
from pyggml.sched.warmup_bg import BackgroundWarmup
from pyggml.sched.warmup_bg import Detached


class FakeProc:
    def __init__(self):
        self.killed = False

    def poll(self):
        return None

    def kill(self):
        self.killed = True


def test_detach_hands_over_queued_and_busy_keys(monkeypatch):
    bw = BackgroundWarmup(jobs=2)
    bw.queued, bw.done = {"a", "b", "c", "d", EXECUTOR}, {"a", EXECUTOR}
    bw.busy = {1: (4242, "b"), 2: (4343, "a")}          # worker 2's key already landed
    bw.queue = [["d"], ["c"]]
    proc = FakeProc()
    bw.procs = [proc]
    got = []

    def start(keys, busy, cache, jobs, nice):
        got.append((keys, busy, jobs))
        return Detached(pid=99, log="log", n=len(keys) + len(busy), proc=None)
    monkeypatch.setattr(warmup_bg, "start_detached", start)
    d = bw.detach()
    warmup_bg.DETACHED.remove(d)
    assert got == [(["c", "d"], {"b": 4242}, 2)] and d.n == 3
    assert bw.closed and bw.queue == [] and bw.procs == [] and not proc.killed
    bw.close()                                   # afterwards: nothing of theirs is stopped
    assert not proc.killed
    idle = BackgroundWarmup(jobs=1)
    assert idle.detach() is None and idle.closed  # nothing left: a plain close


class FakeBackend:
    """A TieredSched as the commands' exit sees it."""
    warmup = object()

    def __init__(self, on_wait=None, on_close=None):
        self.calls, self.on_wait, self.on_close = [], on_wait, on_close
        self.pending = 3

    def close(self, wait=False, detach=False):
        self.calls.append((wait, detach))
        if wait and self.on_wait:
            self.on_wait()
        if not wait and not detach and self.on_close:
            self.on_close()
        return Detached(pid=123, log="/c/compile-detached.log", n=3, proc=None) if detach \
            else None


def test_exit_detaches_by_default_and_waits_on_request(monkeypatch, capsys):
    monkeypatch.delenv("PYGGML_DETACH_COMPILE", raising=False)
    assert detach_enabled() and not detach_enabled(True)
    be = FakeBackend()
    assert C.finish_tiered(be).pid == 123 and be.calls == [(False, True)]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tiered: 3 kernels keep compiling in the background (pid 123, log "
                   "/c/compile-detached.log); the next start finds them in the cache"]
    be = FakeBackend()
    assert C.finish_tiered(be, wait_compile=True) is None and be.calls == [(True, False)]
    assert "waiting for 3 kernels" in capsys.readouterr().err
    monkeypatch.setenv("PYGGML_DETACH_COMPILE", "0")
    be = FakeBackend()
    C.finish_tiered(be)
    assert be.calls == [(True, False)] and not detach_enabled()
    from pyggml.llm import chat_cli
    from pyggml.llm import run_cli
    from pyggml.models import demo
    assert demo._parser().parse_args(["--wait-compile"]).wait_compile
    assert run_cli._parser().parse_args(["-m", "x", "-p", "hi", "--wait-compile"]).wait_compile
    assert chat_cli._parser().parse_args(["-m", "x", "--wait-compile"]).wait_compile
    assert not run_cli._parser().parse_args(["-m", "x", "-p", "hi"]).wait_compile


def test_tiered_close_detach_and_api_semantics():
    class Warm:
        def __init__(self):
            self.calls = []

        def drain(self):
            self.calls.append("drain")

        def close(self):
            self.calls.append("close")

        def detach(self):
            self.calls.append("detach")
            return "d"
    w = Warm()
    ts = TieredSched(lambda: None, warmup=w)
    assert ts.close(detach=True) == "d" and w.calls == ["detach"]
    w.calls.clear()
    assert ts.close(wait=True) is None and w.calls == ["drain", "close"]


def _run_exit(be) -> int:
    return C.run_main("pyggml run", C.Parser(prog="x"),
                      lambda args: C.finish_tiered(be, wait_compile=True) or 0, [],
                      check=lambda args: None)


@pytest.fixture
def restore_signals():
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield old
    for s, h in old.items():
        signal.signal(s, h)


def test_ctrl_c_or_sigterm_during_the_wait_exits_cleanly(capsys, restore_signals):
    def interrupt():
        raise KeyboardInterrupt
    be = FakeBackend(on_wait=interrupt)
    assert _run_exit(be) == 130 and be.calls == [(True, False), (False, False)]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN    # exiting: later ones ignored
    signal.signal(signal.SIGINT, restore_signals[signal.SIGINT])
    signal.signal(signal.SIGTERM, restore_signals[signal.SIGTERM])

    def term():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)                               # interrupted by the handler

    def again():                                 # a second Ctrl-C and SIGTERM: no effect
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    be = FakeBackend(on_wait=term, on_close=again)
    t0 = time.perf_counter()
    assert _run_exit(be) == 143 and time.perf_counter() - t0 < 5
    assert be.calls == [(True, False), (False, False)]


# --- the detached compiler ---------------------------------------------------------------------

def test_detached_compiler_unwritable_cache_exits_3(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "a-file"
    bad.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(bad))
    assert compile_detached.main(["ABS:k_abs"]) == 3
    assert "cannot be written" in capsys.readouterr().out
    d = warmup_bg.start_detached(["ABS:k_abs"], {}, str(bad), 1, 0)   # the real process
    try:
        assert d.wait(60) == 3
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    with open(d.log) as f:
        assert "cannot be written" in f.read()
    os.unlink(d.log)                             # (a temp file: the cache could not hold it)


def test_detached_compiler_cache_removed_exits_4_and_stall_exits_5(tmp_path, monkeypatch,
                                                                    capsys):
    cache = tmp_path / "nb"
    cache.mkdir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    busy = ["--after", f"{os.getpid()}:NEG:k_neg"]        # a busy worker that never exits
    threading.Timer(0.3, shutil.rmtree, args=(cache,)).start()
    assert compile_detached.main(busy) == 4
    assert "was removed" in capsys.readouterr().out
    cache.mkdir(exist_ok=True)               # (a save or Numba's import may make it again)
    assert compile_detached.main(busy + ["--timeout", "0.3"]) == 5
    assert "nothing landed" in capsys.readouterr().out


def _check_index_files(cache: str) -> int:
    """Every Numba index under cache names data files that exist and unpickle; no temp
    files left. Returns the number of entries."""
    n = 0
    for nbi in glob.glob(os.path.join(cache, "**", "*.nbi"), recursive=True):
        with open(nbi, "rb") as f:
            pickle.load(f)                               # Numba's version
            _, overloads = pickle.loads(f.read())
        for name in overloads.values():
            with open(os.path.join(os.path.dirname(nbi), name), "rb") as f:
                pickle.loads(f.read())
            n += 1
    assert not glob.glob(os.path.join(cache, "**", "*.tmp.*"), recursive=True)
    return n


def test_second_start_while_a_detached_compiler_works(tmp_path, monkeypatch):
    """The first start detaches while its worker compiles; a second start compiles what the
    cache lacks at the same time (duplicates allowed); then the cache is sound and holds all."""
    import numba
    cache = str(tmp_path / "nb")
    monkeypatch.setattr(numba.config, "CACHE_DIR", cache)   # workers' and the checks' cache
    # both starts are other processes, where nothing is compiled yet: what is cold is what
    # the (empty) disk cache lacks, whatever this test process compiled before
    monkeypatch.setattr(warmup_bg, "cold", lambda ks: [k for k in ks if k.cacheable
                                                       and k.in_disk_cache() is False])
    keys = ["ABS:k_abs", "NEG:k_neg"]
    first = BackgroundWarmup(jobs=1)
    assert sorted(first.queue_keys(keys)) == keys
    t0 = time.monotonic()
    while not first.busy and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    d = first.detach()
    try:
        assert d is not None and d.n == 2 and d.log == os.path.join(cache, "compile-detached.log")
        second = BackgroundWarmup(jobs=1)
        second.queue_keys(keys)                              # what is not in the cache yet
        second.drain()
        second.close()
        assert d.wait(300) == 0
    finally:
        if d is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    with open(d.log) as f:
        log = f.read()
    assert "done: " in log and not first.errors and not second.errors, log
    assert all(find(k).in_disk_cache() is True for k in keys)
    assert _check_index_files(cache) >= len(keys)


def test_own_saves_take_the_cache_directory_lock(tmp_path, monkeypatch):
    import fcntl

    from numba.core import caching
    lock = save_lock_path(str(tmp_path / "nb"))
    assert lock == str(tmp_path / "nb" / ".pyggml-save.lock")
    held = []

    def save(self, key, data):                   # Numba's save, seen from another process
        if not os.path.exists(lock):
            held.append(None)
            return
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
    monkeypatch.setattr(caching.IndexDataCacheFile, "save", save)
    lock_saves(lock)
    lock_saves(lock)                           # wrapped once per process
    caching.IndexDataCacheFile.save(None, "k", b"")
    assert held == [True]
    shutil.rmtree(tmp_path / "nb")               # the lock went with its directory: Numba saves
    caching.IndexDataCacheFile.save(None, "k", b"")
    assert held == [True, None]
