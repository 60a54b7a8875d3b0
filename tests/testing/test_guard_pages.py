"""`pyggml test-backend-ops --guard-pages`: tensors against PROT_NONE pages, cases in children.

A test-only backend runs a CONT that *reads* one element past the end of its source (it
writes correct values). Canary bytes cannot see a read, so the ordinary mode passes it; with
guard pages the read faults in the case's child process and the case is a FAIL naming the
signal, while the run goes on and a correct kernel passes.
"""
from __future__ import annotations

import ctypes
import io
import signal
from contextlib import redirect_stderr
from contextlib import redirect_stdout

import numba
import numpy as np
import pytest

from pyggml import compute
from pyggml.backends.numba_cpu.backend import NumbaBackend
from pyggml.backends.numba_cpu.desc import DST
from pyggml.backends.numba_cpu.desc import SRC0
from pyggml.backends.numba_cpu.desc import row_range
from pyggml.backends.numba_cpu.desc import t_addr
from pyggml.backends.numba_cpu.desc import t_ne
from pyggml.backends.numba_cpu.intrinsics import f32_array
from pyggml.backends.numba_cpu.kernels import KERNELS
from pyggml.backends.numba_cpu.kernels import KernelEntry
from pyggml.backends.numba_cpu.kernels import make_kernel
from pyggml.testing import guard
from pyggml.testing.cli import main
from pyggml.types import GGMLType

CONT_F32 = "CONT(type=f32,ne=[10,10,10,1],use_view_slice=0,permute=[0,1,2,3])"
SQR_F32 = "SQR(type=f32,ne=[10,5,4,3])"


@numba.njit(nogil=True, cache=True)
def _cont_reads_past_end(desc, ith, nth):
    """CONT of a contiguous F32 source; thread 0 also loads src[n] (one past the end)."""
    n = t_ne(desc, SRC0, 0) * t_ne(desc, SRC0, 1) * t_ne(desc, SRC0, 2) * t_ne(desc, SRC0, 3)
    src = f32_array(t_addr(desc, SRC0), n + 1)
    dst = f32_array(t_addr(desc, DST), n)
    i0, i1 = row_range(n, ith, nth)
    for i in range(i0, i1):
        dst[i] = src[i]
    if ith == 0 and n > 0 and src[n] == np.float32(12345.678):   # the load must stay
        dst[0] = np.float32(0.0)


def cont_reads_past_end(desc, ith, nth):
    _cont_reads_past_end(desc, ith, nth)


def _contiguous_f32(node) -> bool:
    s = node.src[0]
    return node.type == GGMLType.F32 and s.type == GGMLType.F32 and \
        s.nb[0] == 4 and s.nb[1] == 4 * s.ne[0] and s.nb[2] == s.nb[1] * s.ne[1]


class OOBReadBackend(NumbaBackend):
    """numba, except that CONT of a contiguous F32 source reads one element past its end."""
    name = "oobread"

    def __init__(self, n_threads=None):
        table = dict(KERNELS)
        table["CONT"] = KernelEntry("CONT", [make_kernel("CONT", cont_reads_past_end, _contiguous_f32)]
                                    + list(KERNELS["CONT"].variants))
        super().__init__(n_threads or 2, kernels=table)


@pytest.fixture
def oob_backend(monkeypatch):
    monkeypatch.setitem(compute.BACKENDS, OOBReadBackend.name, OOBReadBackend)


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def case_line(out: str, case: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith(f"  {case}: ")]
    return line[len(case) + 4:]


def test_guarded_buffer_faults_one_byte_past_either_end():
    buf = guard.guarded_buffer(100, 8)
    end = buf.address + buf.size
    assert buf.size == 108 and end % guard.PAGE == 0        # the data's end meets the page
    buf.data[:] = 7                                         # every byte of it is usable
    assert guard.run_isolated(lambda: int(buf.data.sum())) == ("ok", 7 * 108)
    assert guard.run_isolated(lambda: ctypes.string_at(end, 1)) == ("signal", signal.SIGSEGV)
    first_page = buf.address - buf.address % guard.PAGE
    assert guard.run_isolated(lambda: ctypes.string_at(first_page - 1, 1)) == \
        ("signal", signal.SIGSEGV)


def test_an_out_of_bounds_read_is_a_fail_naming_the_signal(oob_backend):
    rc, out, _ = cli("-b", "oobread", "-o", CONT_F32)           # canaries cannot see a read
    assert rc == 0 and case_line(out, CONT_F32) == "OK"
    rc, out, _ = cli("-b", "oobread", "-o", f"{CONT_F32},{SQR_F32}", "--guard-pages")
    assert rc == 1
    assert "SIGSEGV" in case_line(out, CONT_F32) and case_line(out, CONT_F32).endswith("FAIL")
    assert case_line(out, SQR_F32) == "OK"                       # the run went on
    assert f"-o '{CONT_F32}' --seed 0 --guard-pages" in out + _  # the repro keeps the mode


def test_good_ops_pass_with_guard_pages():
    rc, out, _ = cli("-b", "numba", "-o", f"{SQR_F32},{CONT_F32}", "--guard-pages", "-j", "2")
    assert rc == 0, out
    assert case_line(out, SQR_F32) == "OK" and case_line(out, CONT_F32) == "OK"
