"""The Numba MUL_MAT GEMM path's helpers: Q4_0/Q4_1/Q8_0 weight panels packed block by block
hold exactly the dequantized values (partial panels included, rows past the panel zero), and
the split of a's rows gives every thread as many panels when there are few blocks."""
import numpy as np
import pytest

import pyggml as gg
from pyggml.data import read

mm = pytest.importorskip("pyggml.backends.numba_cpu.kernels.matmul")


@pytest.mark.parametrize("wt", ["q4_0", "q4_1", "q8_0"])
@pytest.mark.parametrize("rows", [mm.NR, 5, mm.NR + 3])
def test_pack_q_blocks_hold_dequantized_values(wt, rows):
    k, pc, kc = 3 * mm.KC, mm.KC, 96                 # a panel range not starting at 0
    rng = np.random.default_rng(7)
    vals = rng.standard_normal((rows, k)).astype(np.float32)
    vals[1, 40:72] = 0.0                             # an all-zero block (scale 0)
    ctx = gg.init(mem_size=16 << 20)
    w = gg.from_numpy(ctx, vals, type=wt)
    ref = read(w)[0, 0].astype(np.float32)[:, pc:pc + kc]
    npan = (rows + mm.NR - 1) // mm.NR
    ap = np.full(npan * kc * mm.NR, np.nan, dtype=np.float32)
    tmp = np.zeros(mm.KC, dtype=np.float32)
    scr = np.zeros(mm.PANEL_SCRATCH, dtype=np.uint8)
    mm.pack_a(int(w.type), w.data_ptr, w.nb[1], rows, pc, kc, ap.ctypes.data, tmp.ctypes.data,
              scr.ctypes.data)
    panels = ap.reshape(npan, kc, mm.NR)             # k-major panels of NR rows
    got = panels.transpose(0, 2, 1).reshape(npan * mm.NR, kc)
    assert np.array_equal(got[:rows].view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(got[rows:], np.zeros_like(got[rows:]))


@pytest.mark.parametrize("m", [16, 192, 576, 1000, 1536, 49152])
@pytest.mark.parametrize("nbatch", [1, 3])
@pytest.mark.parametrize("nth", [1, 2, 3, 4])
def test_gemm_blocks_balance_threads(m, nbatch, nth):
    """Each thread's rows (its blocks as row_range deals them) are within one NR-row panel
    of an even share; many blocks keep NC rows each."""
    from pyggml.backends.numba_cpu.desc import row_range
    nc = mm.gemm_block_rows(m, nbatch, nth)
    assert nc % mm.NR == 0
    nblk = -(-m // nc)
    if nbatch * -(-m // mm.NC) >= 8 * nth:
        assert nc == mm.NC
        return
    sizes = [min(nc, m - (i % nblk) * nc) for i in range(nbatch * nblk)]
    loads = [sum(sizes[slice(*row_range(len(sizes), ith, nth))]) for ith in range(nth)]
    even = -(-nbatch * -(-m // mm.NR) // nth) * mm.NR
    assert max(loads) <= even + mm.NR, (nc, loads)
