"""An interrupt during a multi-thread Numba graph compute leaves the process usable: a
KeyboardInterrupt (Ctrl-C) propagates out of graph_compute, the pool's abort word set while the
threads are between barriers makes them all leave with a ComputeError, and in both cases the
next compute on the same backend runs the whole graph correctly."""
import _thread
import signal
import threading
import time

import numpy as np
import pytest

import pyggml as gg
from pyggml import data
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.executor import W_ABORT
from pyggml.backends.numba_cpu.executor import W_GEN
from pyggml.errors import ComputeError

N_NODES = 400             # in-place adds of 256k floats, one barrier each: ~40 ms on 2 threads
NE = 1 << 18
# the watcher thread may be scheduled only after a compute ends (loaded machine): try again
# for this long, not a fixed number of times
TRY_FOR = 30.0


@pytest.fixture(scope="module")
def chain():
    """x += one, N_NODES times (each node depends on the one before), and a 2-thread backend."""
    ctx = gg.init(mem_size=(2 * NE * 4) + (N_NODES + 8) * 1024)
    x = gg.new_tensor_1d(ctx, gg.TYPE_F32, NE)
    one = gg.new_tensor_1d(ctx, gg.TYPE_F32, NE)
    data.write(one, np.ones(NE, np.float32))
    y = x
    for _ in range(N_NODES):
        y = gg.add_inplace(ctx, y, one)
    gf = gg.new_graph_custom(ctx, N_NODES + 16)
    gg.build_forward_expand(gf, y)
    be = NumbaBackend(2)
    yield gf, x, be
    be.free()


def _run_correctly(gf, x, be):
    data.write(x, np.zeros(NE, np.float32))
    be.graph_compute(gf)
    assert np.array_equal(data.read(x).ravel(), np.full(NE, N_NODES, np.float32))


def _once_running(be, act, done):
    """A thread that calls act() once the compute has passed a barrier (is running), unless
    the compute is done first (then the caller tries again)."""
    st = be.pool._core.state

    def watch():
        gen = int(st[W_GEN])
        while int(st[W_GEN]) == gen and not done:
            time.sleep(0)
        if not done:
            act()
    return threading.Thread(target=watch, daemon=True)


@pytest.fixture
def default_sigint():
    """Ctrl-C raises KeyboardInterrupt (Python's default handler) whatever the runner was
    started with: a shell starts background jobs with SIGINT ignored, Python then keeps it
    ignored, and interrupt_main does nothing."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_keyboard_interrupt_leaves_the_pool_usable(chain, default_sigint):
    gf, x, be = chain
    _run_correctly(gf, x, be)                        # compiled, threads started
    where = None
    deadline = time.monotonic() + TRY_FOR
    while time.monotonic() < deadline:               # the watcher can miss a (fast) compute
        data.write(x, np.zeros(NE, np.float32))
        done = []
        t = _once_running(be, _thread.interrupt_main, done)
        try:
            t.start()
            be.graph_compute(gf)
            where = "after"
            done.append(1)
            t.join()                                 # a late interrupt lands here, in the try
            time.sleep(0.01)
        except KeyboardInterrupt:
            where = where or "compute"
        t.join()
        if where == "compute":
            break
        where = None
    assert where == "compute"
    _run_correctly(gf, x, be)
    _run_correctly(gf, x, be)


def test_abort_word_mid_graph_leaves_the_pool_usable(chain):
    gf, x, be = chain
    _run_correctly(gf, x, be)
    st = be.pool._core.state
    aborted = False
    deadline = time.monotonic() + TRY_FOR
    while time.monotonic() < deadline:
        data.write(x, np.zeros(NE, np.float32))
        done = []

        def abort():
            st[W_ABORT] = 1
        t = _once_running(be, abort, done)
        t.start()
        try:
            be.graph_compute(gf)
        except ComputeError as e:
            assert "aborted" in str(e)
            aborted = True
        done.append(1)
        t.join()
        if aborted:
            break
    assert aborted
    assert st[W_ABORT] == 0                          # reset for the next compute
    assert 0 < data.read(x).ravel()[0] < N_NODES            # stopped part-way
    assert all(th.is_alive() for th in be.pool.threads)
    _run_correctly(gf, x, be)
    _run_correctly(gf, x, be)
