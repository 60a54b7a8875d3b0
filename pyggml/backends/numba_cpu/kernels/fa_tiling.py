"""Flash attention's tiling and work sizes (kernels/attention.py): the tile, block, fold and
chunk constants, the per-thread scratch layout, when a decode splits its keys into chunks,
and the work buffer a node needs.
"""
from __future__ import annotations

import numpy as np

from .fa_consts import _jit
from .fa_rows import QK

RMAX = 32          # query rows per tile
KB = 32            # keys per block
KG = 4             # keys per group inside a block (K rows dotted / V rows accumulated together)
FOLD = 64          # keys per fold unit (aligned in each segment): its partial is folded into
                   # the row's running (O, M, S) in key order (module doc: exact shards)
CHUNK = 512        # keys per chunk when a tile's keys are split (few tiles, long KV)
UPC = CHUNK // FOLD  # fold units per chunk
SPLIT_TILES = 16   # split the keys when there are fewer tiles than this
TILES_PER_THREAD = 4  # ... and fewer than this many per thread (enough to balance without)
PF_GROUPS = 8       # K/V rows read in place are prefetched this many key groups ahead

L_TOTAL = 17       # scratch arrays per thread (see layout)



# --- scratch layout (bytes), per thread, then the split partials -----------------------------

def _al(x):
    return (x + 63) // 64 * 64


@_jit
def layout(dk, dv):
    """Byte offsets of the per-thread scratch: qf qi8 qd qs kf ki8 kd kc vf sc mv acc M S sl
    qx of (the rows' running outputs); offs[L_TOTAL] is the per-thread total."""
    nbk = (dk + QK - 1) // QK
    sizes = (RMAX * dk * 4, RMAX * dk, RMAX * nbk * 4, RMAX * nbk * 4, KG * dk * 4, KG * dk,
             KG * nbk * 4, KG * nbk * 4, KG * dv * 4, RMAX * KB * 4, RMAX * KB * 4,
             RMAX * dv * 4, RMAX * 4, RMAX * 4, RMAX * 4, RMAX * nbk * 16 * 4, RMAX * dv * 4)
    offs = np.zeros(L_TOTAL + 1, dtype=np.int64)
    o = 0
    for i in range(L_TOTAL):
        offs[i] = o
        o += (sizes[i] + 63) // 64 * 64
    offs[L_TOTAL] = o
    return offs


@_jit
def n_split_chunks(n_tiles, n_units, n_threads):
    """Chunks of UPC fold units (CHUNK keys) per tile when there are too few tiles to keep
    n_threads busy and the keys are many (decode), else 1. Split or not, the folds are
    the same, so results are bitwise the same for any number of threads; the split costs
    the partials' traffic (a tenth of an F16 cache's bytes), so it is taken only when
    needed. n_threads <= 0: the most any thread count splits (sizes the work buffer)."""
    if n_tiles >= SPLIT_TILES or n_units * FOLD < 2 * CHUNK:
        return 1
    if n_threads > 0 and n_tiles >= TILES_PER_THREAD * n_threads:
        return 1
    return (n_units + UPC - 1) // UPC


@_jit
def tiling(H, N, rk):
    """(heads per tile, positions per tile, head blocks per group, position blocks)."""
    hb = min(rk, RMAX)
    pb = max(1, RMAX // hb)
    if pb > N:
        pb = N
    return hb, pb, (rk + hb - 1) // hb, (N + pb - 1) // pb


def _group(node):
    """Heads per KV head shared by every segment's K and V (1 if they differ)."""
    H = node.src[0].ne[2]
    rs = set()
    for i in _segment_slots(node):
        rs.add(H // node.src[i].ne[2])
    return rs.pop() if len(rs) == 1 else 1


def _segment_slots(node):
    ws = node.op.name == "FLASH_ATTN_EXT_WITH_STATE"
    out = []
    for k, v in ((1, 2), (4, 5)) if ws else ((1, 2),):
        if node.src[k] is not None:
            out += [k, v]
    return out


def _n_units(node):
    """Fold units over the segments (each segment's keys in aligned units of FOLD)."""
    sl = _segment_slots(node)
    return sum(-(-node.src[sl[i]].ne[1] // FOLD) for i in range(0, len(sl), 2))


def work_size(node, n_threads: int) -> int:
    q = node.src[0]
    dk, dv = q.ne[0], node.ne[0]
    per = int(layout(dk, dv)[L_TOTAL])
    nt = max(1, int(n_threads))
    rk = _group(node)
    hb, pb, nhb, npb = tiling(q.ne[2], q.ne[1], rk)
    n_tiles = q.ne[3] * (q.ne[2] // rk) * nhb * npb
    total = per * nt
    n_units = _n_units(node)
    if int(n_split_chunks(n_tiles, n_units, 0)) > 1:
        total += _al(q.ne[1] * q.ne[2] * q.ne[3] * n_units * (2 + dv) * 4)
    return total + 64
