"""The Numba backend's barrier schedule: which rows of a node table may run without a
barrier between them (ggml meets at one after every node), and in which order.

Kept apart from plan.py, which the reference backend uses without Numba.
"""
from __future__ import annotations

import numba
import numpy as np

from .desc import byte_spans
from .desc import table_slots

LOOKAHEAD = 6              # rows a barrier group looks at past its first (schedule)


def schedule(nodes, kernels, n_threads: int, work_addr: int = 0,
             slots: tuple = None, regions: list = None,
             spans: tuple = None) -> tuple[np.ndarray, np.ndarray]:
    """The order of a node table's rows and which end with a barrier: (order, sync), order a
    permutation of range(len(nodes)) (intp), sync int64 1/0 per position of order.

    ggml meets at a barrier after every node. Here a row may instead start while threads are
    still in the rows since the last barrier (its group) when neither can see the other: it
    reads no bytes the group writes, writes none the group reads or writes, and the work
    buffer is not shared across threads (only one side uses it, or both keep to per-thread
    regions of the same size: Kernel.private_work; regions start at the buffer's address or
    its first 64-byte boundary, the same only when `work_addr` is aligned). A group also
    pulls forward rows up to LOOKAHEAD places later when they are independent, in the same
    sense, of the rows they pass. In a decoder layer the q/k/v projections run as one group,
    the two ropes as one, the two cache stores as one and the gate/up projections as one (5
    of 19 barriers per layer). The last row always ends with one.

    The byte spans come from the descriptors' slot words (`slots`: desc.table_slots(nodes)
    when the caller has them) in a few array operations; the grouping walk is a small njit
    loop (it ran in Python tuples at ~5 ms per SmolLM2 decode graph). `regions`: per row
    its kernel's private_work(node, n_threads) when the caller has it (the backend's memo
    of verdicts), None where it is to be asked here. `spans`: desc.byte_spans of the slot
    words, when the caller has them."""
    n = len(nodes)
    if n_threads <= 1 or n < 2:
        return np.arange(n, dtype=np.intp), np.ones(n, dtype=np.int64)
    words, idx = (table_slots(nodes) if slots is None else slots)[:2]
    lo, hi = byte_spans(words) if spans is None else spans
    present = idx != 0
    written = np.zeros(idx.shape, dtype=np.bool_)
    written[:, 0] = True
    work = [0] * n
    wrote = []                              # (row, slot) of the sources rows write in place
    private = work_addr % 64 == 0
    if regions is None:
        regions = [None] * n
    for i, k in enumerate(kernels):
        node = nodes[i]
        w = node.op.writes
        if w:                               # sources it writes in place, when set
            wrote += [(i, 1 + s) for s in w]
        if k.private_work is not None:      # its regions' size, 0 when it uses none
            r = regions[i]
            if r is None:
                r = int(k.private_work(node, n_threads))
            if r > 0:
                work[i] = r if private else -1
        elif k.work_size is not None:       # may use a shared one (not asked: FA's costs)
            work[i] = -1
    if wrote:
        rr, ss = zip(*wrote)
        written[rr, ss] = present[rr, ss]
    work = np.array(work, dtype=np.int64)
    present[:, 0] = False                   # slot 0 is the row's result: written, not read
    order = np.empty(n, dtype=np.intp)
    sync = np.ones(n, dtype=np.int64)
    # each row's read and written spans packed (row-major: slot order kept), rows apart by
    # offsets: the walk visits a row's two or three slots, not all N_SLOTS
    slo, shi = lo[idx], hi[idx]
    r_at = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(present.sum(axis=1), out=r_at[1:])
    w_at = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(written.sum(axis=1), out=w_at[1:])
    _group_rows(slo[present], shi[present], r_at, slo[written], shi[written], w_at, work,
                LOOKAHEAD, order, sync)
    return order, sync


@numba.njit(nogil=True, cache=True, inline="always")
def _push(lo, hi, n, src_lo, src_hi, k0, k1):
    """Append the spans src_lo/src_hi[k0:k1] to lo/hi[n:]; returns the new count."""
    for k in range(k0, k1):
        lo[n] = src_lo[k]
        hi[n] = src_hi[k]
        n += 1
    return n


@numba.njit(nogil=True, cache=True, inline="always")
def _hits(a, b, lo, hi, n):
    """Does the span [a, b) overlap any of lo/hi[:n] (lo < hi2 and lo2 < hi: an empty
    span inside another included)?"""
    for q in range(n):
        if a < hi[q] and lo[q] < b:
            return True
    return False


@numba.njit(nogil=True, cache=True)
def _group_rows(rlo, rhi, r_at, wlo_, whi_, w_at, work, lookahead, order, sync):
    """schedule's walk over rows whose read spans are rlo/rhi[r_at[j]:r_at[j + 1]] and
    written spans wlo_/whi_[w_at[j]:w_at[j + 1]], and work per row; fills order and sync
    (sync preset to 1). The first row not yet placed opens a group; each of the next
    `lookahead` unplaced rows joins it when independent of the group and of the rows it
    passes (spans overlap when lo < hi2 and lo2 < hi, an empty span inside another
    included), then counts as passed."""
    n = len(work)
    cap = 1
    for j in range(n):
        cap = max(cap, r_at[j + 1] - r_at[j], w_at[j + 1] - w_at[j])
    cap *= lookahead + 1
    slo = np.empty(cap, dtype=np.int64)     # spans the group and the passed rows read
    shi = np.empty(cap, dtype=np.int64)
    wlo = np.empty(cap, dtype=np.int64)     # ... and write
    whi = np.empty(cap, dtype=np.int64)
    taken = np.zeros(n, dtype=np.bool_)
    head = 0
    pos = 0
    while pos < n:
        while taken[head]:
            head += 1
        j = head
        taken[j] = True
        order[pos] = j
        pos += 1
        nr = _push(slo, shi, 0, rlo, rhi, r_at[j], r_at[j + 1])
        nw = _push(wlo, whi, 0, wlo_, whi_, w_at[j], w_at[j + 1])
        g_work = work[j]
        r = head
        for _ in range(min(lookahead, n - pos)):
            while taken[r]:
                r += 1
            w = work[r]
            ok = w == 0 or g_work == 0 or (w == g_work and w > 0)
            if ok:
                for k in range(r_at[r], r_at[r + 1]):       # reads what they write
                    if _hits(rlo[k], rhi[k], wlo, whi, nw):
                        ok = False
                        break
            if ok:
                for k in range(w_at[r], w_at[r + 1]):       # writes what they write or read
                    if _hits(wlo_[k], whi_[k], wlo, whi, nw) or \
                            _hits(wlo_[k], whi_[k], slo, shi, nr):
                        ok = False
                        break
            if ok:
                sync[pos - 1] = 0
                order[pos] = r
                pos += 1
                taken[r] = True
                if g_work == 0:
                    g_work = w
            nr = _push(slo, shi, nr, rlo, rhi, r_at[r], r_at[r + 1])
            nw = _push(wlo, whi, nw, wlo_, whi_, w_at[r], w_at[r + 1])
            r += 1


def warm_up() -> None:
    """Compile (or load from the disk cache) the grouping walk (warm-up workers call it)."""
    z = np.zeros(0, dtype=np.int64)
    at = np.zeros(2, dtype=np.int64)
    _group_rows(z, z, at, z, z, at, np.zeros(1, dtype=np.int64), LOOKAHEAD,
                np.empty(1, dtype=np.intp), np.ones(1, dtype=np.int64))
