"""The per-node descriptor: everything a kernel knows about its node, as one int64 vector.

A kernel is `void(int64* desc, int64 ith, int64 nth)`; `desc` points at its node's row of
the lowered node table. Layout (int64 words):

    header, HDR = 8 words
      [0] H_OP       reserved (op id; 0 for now)
      [1] H_NTASKS   threads that run this node (ith < n_tasks; the others skip it)
      [2] H_WDATA    address of the graph's work buffer (shared by all nodes; 0 if none)
      [3] H_WSIZE    its size in bytes (the planned maximum over the graph)
      [4] H_STATUS   address of the graph's int64 status block: [0] error code (0 = ok),
                     [1] index of the node that failed first
      [5] H_INDEX    index of this node in the graph (gf.nodes)
      [6] H_SCRATCH  address of this node's scratch line (below; 0 outside a lowered table)
      [7]            reserved
    11 tensor slots of SLOT = 10 words, at HDR + slot * SLOT:
      slot 0 = dst (DST), slot 1 + j = src[j] (SRC0 .. SRC9)
      [0] data address (0 when the source is None)   [1] GGMLType value
      [2..5] ne0..ne3                                [6..9] nb0..nb3 (bytes)
    op_params at PARAMS = HDR + 11 * SLOT: 16 words, each int32 op_params word
      sign-extended (read floats with param_f32, int64 pairs with param_i64)
    DESC_LEN = 136 words (134 used, padded to a multiple of 8: rows stay 64-byte aligned)

Descriptor rows are read-only for kernels: every word is a copy of the node (all 16
op_params words belong to the op). A kernel that needs state shared by its threads (atomic
counters: arrivals, work units handed out) uses its node's scratch line: SCRATCH_LEN = 8
int64 words, a 64-byte line per node in a block of its own (counters every thread hammers
do not false-share with read-only words), all zero when the table is lowered and kept as
the kernel left them between computes of that table (a new lowering starts from zero).
What each word means is the kernel's business; word i is at scratch_addr(desc, i) (an
address for the atomics). A descriptor packed on its own, outside a node table, has no
line (has_scratch is false): such a kernel reports ERR_SCRATCH.

The layout is frozen: every kernel and the executor (DESC_LEN is its row stride) have
these offsets compiled in, and Numba's disk cache only notices edits to a function's own
file, so changing them here would leave stale machine code in every existing cache. New
per-node data goes behind a header pointer, as the scratch line does.

Accessors (njit; they take the kernel's int64* as well as an int64 array): t_addr, t_type,
t_ne, t_nb, t_ne4 / t_nb4 (all four at once), row_coords / row_addr (a flat row number's
indices and address), t_nrows, t_nelements, t_row_size, t_rows_packed, t_is_contiguous, param_i32,
param_f32, param_i64, wdata, wsize, n_tasks, node_index, has_scratch, scratch_addr;
type_size / blck_size by type id; row_range(nr, ith, nth) is ggml's split of rows over
threads.

Errors: a kernel that cannot do its job calls `set_error(desc, code)`; the executor stops
every thread after the node and the backend raises ComputeError naming the node and the
code's meaning (`ERRORS`; kernel-specific codes >= 100 via register_error). Only the first
error of a graph is kept. An exception inside a kernel becomes ERR_EXCEPTION.
"""
from __future__ import annotations

import struct
from itertools import chain

import numba
import numpy as np

from ...tensor import MAX_SRC
from ...tensor import kept_shape
from ...types import TRAITS
from .intrinsics import atomic_cas
from .intrinsics import atomic_store
from .intrinsics import bits_to_f32

# --- layout ---------------------------------------------------------------------------------
HDR = 8
H_OP, H_NTASKS, H_WDATA, H_WSIZE, H_STATUS, H_INDEX, H_SCRATCH = 0, 1, 2, 3, 4, 5, 6
SLOT = 10
N_SLOTS = 1 + MAX_SRC
T_ADDR, T_TYPE, T_NE, T_NB = 0, 1, 2, 6
DST = 0
SRC0, SRC1, SRC2, SRC3, SRC4, SRC5, SRC6, SRC7, SRC8, SRC9 = range(1, 11)
PARAMS = HDR + N_SLOTS * SLOT
N_PARAMS = 16
DESC_LEN = 136
assert PARAMS + N_PARAMS <= DESC_LEN and DESC_LEN % 8 == 0

# status block (one per lowered graph; desc[H_STATUS] points at it)
S_CODE, S_NODE = 0, 1
STATUS_LEN = 8

# per-node scratch line (desc[H_SCRATCH] points at it): int64 words, zero after lowering
SCRATCH_LEN = 8
assert SCRATCH_LEN * 8 % 64 == 0        # whole lines: one node's counters never share another's

# --- error codes ----------------------------------------------------------------------------
ERR_OK = 0
ERR_UNSUPPORTED = 1     # same value as pyggml.quants.nb.ERR_UNSUPPORTED
ERR_TYPE = 2
ERR_SHAPE = 3
ERR_WORK_SIZE = 4
ERR_PARAM = 5
ERR_STATE = 6
ERR_EXCEPTION = 7       # the kernel raised (see kernels._guarded)
ERR_SCRATCH = 8         # the kernel needs its scratch line and the descriptor has none

ERRORS: dict[int, str] = {
    ERR_UNSUPPORTED: "the kernel does not support this combination of types",
    ERR_TYPE: "a tensor type the kernel does not accept",
    ERR_SHAPE: "shapes or strides the kernel cannot handle",
    ERR_WORK_SIZE: "the work buffer is smaller than the kernel needs (plan/work_size mismatch)",
    ERR_PARAM: "an op parameter out of the kernel's domain",
    ERR_EXCEPTION: "the kernel raised an exception (integer division by zero, a slice of the "
                   "wrong size, an allocation failure...); the node's output is incomplete",
    ERR_STATE: "invalid input state (e.g. a with_state row holds a previous contribution "
               "but o_prev is None: pass the previous output)",
    ERR_SCRATCH: "the kernel needs its node's scratch line and the descriptor has none "
                 "(packed on its own, outside a lowered node table)",
}


ERROR_DETAILS: dict = {}    # code -> fn(node) -> str: what exactly was wrong (read after the fact)


def register_error(code: int, meaning: str, detail=None) -> int:
    """Give a kernel-specific error code (use >= 100) its message; returns the code.
    `detail(node)`, when given, adds specifics to the ComputeError (e.g. which row)."""
    if code in ERRORS and ERRORS[code] != meaning:
        raise ValueError(f"error code {code} already means {ERRORS[code]!r}")
    ERRORS[code] = meaning
    if detail is not None:
        ERROR_DETAILS[code] = detail
    return code


def error_meaning(code: int) -> str:
    return ERRORS.get(int(code), f"kernel error code {int(code)}")


# --- njit accessors (work on the kernel's int64* and on int64 arrays alike) ------------------
# inline: a separate compile of each would be one per constant argument (t_nb(desc, SRC0, 1)
# types its arguments as literals: 21 copies of t_nb for the demo's kernels), each optimized
# and turned into machine code on its own before the caller inlines it anyway
_jit = numba.njit(nogil=True, cache=True, inline="always")


@_jit
def t_addr(desc, slot):
    """Data address of slot (DST, SRC0...); 0 when the source is None."""
    return desc[HDR + slot * SLOT + T_ADDR]


@_jit
def t_type(desc, slot):
    return desc[HDR + slot * SLOT + T_TYPE]


@_jit
def t_ne(desc, slot, d):
    return desc[HDR + slot * SLOT + T_NE + d]


@_jit
def t_nb(desc, slot, d):
    return desc[HDR + slot * SLOT + T_NB + d]


@_jit
def t_ne4(desc, slot):
    """(ne0, ne1, ne2, ne3) of slot: `ne0, ne1, ne2, ne3 = t_ne4(desc, DST)`."""
    b = HDR + slot * SLOT + T_NE
    return desc[b], desc[b + 1], desc[b + 2], desc[b + 3]


@_jit
def t_nb4(desc, slot):
    """(nb0, nb1, nb2, nb3) of slot, in bytes."""
    b = HDR + slot * SLOT + T_NB
    return desc[b], desc[b + 1], desc[b + 2], desc[b + 3]


@_jit
def row_coords(r, ne1, ne2):
    """(i1, i2, i3) of row r when rows are numbered flat over ne1 * ne2 * ne3 (ggml's order)."""
    return r % ne1, (r // ne1) % ne2, r // (ne1 * ne2)


@_jit
def t_row(desc, slot, i1, i2, i3):
    """Address of row (i1, i2, i3) of slot, through its strides."""
    return (t_addr(desc, slot) + i1 * t_nb(desc, slot, 1) + i2 * t_nb(desc, slot, 2)
            + i3 * t_nb(desc, slot, 3))


@_jit
def row_addr(desc, slot, r):
    """Address of row r (flat over ne1*ne2*ne3) of slot, through its strides."""
    i1, i2, i3 = row_coords(r, t_ne(desc, slot, 1), t_ne(desc, slot, 2))
    return t_row(desc, slot, i1, i2, i3)


@_jit
def t_nrows(desc, slot):
    b = HDR + slot * SLOT + T_NE
    return desc[b + 1] * desc[b + 2] * desc[b + 3]


@_jit
def t_nelements(desc, slot):
    b = HDR + slot * SLOT + T_NE
    return desc[b] * desc[b + 1] * desc[b + 2] * desc[b + 3]


# type traits by ggml type id (frozen into the compiled code as constants)
TYPE_SIZE = np.zeros(64, dtype=np.int64)           # bytes per block
BLCK_SIZE = np.ones(64, dtype=np.int64)            # values per block
for _t, _tr in TRAITS.items():
    TYPE_SIZE[int(_t)] = _tr.type_size
    BLCK_SIZE[int(_t)] = _tr.blck_size
del _t, _tr


@_jit
def type_size(t):
    """Bytes per block (per element for element types) of ggml type id t."""
    return TYPE_SIZE[t]


@_jit
def blck_size(t):
    return BLCK_SIZE[t]


@_jit
def t_row_size(desc, slot):
    """Bytes of one packed row of slot (ggml_row_size(type, ne0))."""
    t = t_type(desc, slot)
    return TYPE_SIZE[t] * (t_ne(desc, slot, 0) // BLCK_SIZE[t])


@_jit
def t_rows_packed(desc, slot):
    """Elements (blocks) inside each row are adjacent: nb0 == type size (or one block)."""
    t = t_type(desc, slot)
    return t_ne(desc, slot, 0) == BLCK_SIZE[t] or t_nb(desc, slot, 0) == TYPE_SIZE[t]


@_jit
def t_is_contiguous(desc, slot):
    """ggml_is_contiguous: the tensor is one packed run of bytes in ggml's element order."""
    t = t_type(desc, slot)
    nxt = TYPE_SIZE[t]
    if t_ne(desc, slot, 0) != BLCK_SIZE[t] and t_nb(desc, slot, 0) != nxt:
        return False
    nxt *= t_ne(desc, slot, 0) // BLCK_SIZE[t]
    for d in range(1, 4):
        ne = t_ne(desc, slot, d)
        if ne != 1:
            if t_nb(desc, slot, d) != nxt:
                return False
            nxt *= ne
    return True


@_jit
def param_i32(desc, i):
    return desc[PARAMS + i]


@_jit
def param_f32(desc, i):
    """op_params word i read as a float32 (ggml bit-casts float params)."""
    return bits_to_f32(desc[PARAMS + i])


@_jit
def param_i64(desc, i):
    """An int64 param stored as two words (low, high) at i, i+1 (as OpDef 'i64' fields)."""
    return (desc[PARAMS + i] & 0xFFFFFFFF) | (desc[PARAMS + i + 1] << 32)


def _header_word(name: str, word: int, doc: str):
    """The accessor `name(desc)` of header word `word` (its source compiled under this file:
    Numba caches it here, as if written out)."""
    ns = {"__name__": __name__}
    exec(compile(f"def {name}(desc):\n    return desc[{word}]\n", __file__, "exec"), ns)
    ns[name].__doc__ = doc
    return _jit(ns[name])


wdata = _header_word("wdata", H_WDATA, "Address of the graph's work buffer (0: none).")
wsize = _header_word("wsize", H_WSIZE, "Size of the work buffer in bytes.")
n_tasks = _header_word("n_tasks", H_NTASKS, "Threads that run this node.")
node_index = _header_word("node_index", H_INDEX, "Index of this node in the graph.")


@_jit
def has_scratch(desc):
    """Does this descriptor have a scratch line (it does in every lowered table)?"""
    return desc[H_SCRATCH] != 0


@_jit
def scratch_addr(desc, i):
    """Address of word i (0 <= i < SCRATCH_LEN) of this node's scratch line: int64, zero
    when the table was lowered, kept between computes; shared by the node's threads (use
    the atomics of intrinsics.py on it)."""
    return desc[H_SCRATCH] + 8 * i


@_jit
def set_error(desc, code):
    """Report a failure of this node: the first error of the graph wins (atomic CAS)."""
    status = desc[H_STATUS]
    if status != 0 and atomic_cas(status + S_CODE * 8, 0, code) == 0:
        atomic_store(status + S_NODE * 8, desc[H_INDEX])


@_jit
def row_range(nr, ith, nth):
    """ggml's split of nr rows over nth threads: rows [ir0, ir1) for thread ith."""
    dr = (nr + nth - 1) // nth
    ir0 = dr * ith
    ir1 = min(ir0 + dr, nr)
    if ir0 > ir1:
        ir0 = ir1
    return ir0, ir1


# --- packing (Python) ------------------------------------------------------------------------


def pack_into(out: np.ndarray, node, wdata_addr: int, wsize: int, status_addr: int,
              index: int, n_tasks: int, scratch_addr: int = 0) -> np.ndarray:
    """Fill one descriptor row (int64[DESC_LEN]) for node. scratch_addr: the node's
    SCRATCH_LEN zeroed int64 words on a 64-byte line of their own (0: none)."""
    row = [0] * DESC_LEN
    row[H_NTASKS] = int(n_tasks)
    row[H_WDATA] = int(wdata_addr)
    row[H_WSIZE] = int(wsize)
    row[H_STATUS] = int(status_addr)
    row[H_INDEX] = int(index)
    row[H_SCRATCH] = int(scratch_addr)
    for slot, t in enumerate([node] + list(node.src)):
        if t is None:
            continue
        b = HDR + slot * SLOT
        row[b + T_ADDR] = t.data_ptr
        row[b + T_TYPE] = int(t.type)
        row[b + T_NE:b + T_NE + 4] = t.ne
        row[b + T_NB:b + T_NB + 4] = t.nb
    row[PARAMS:PARAMS + N_PARAMS] = [int(w) for w in node.op_params[:N_PARAMS]]
    out[:] = row
    return out


def int64s(values: list) -> np.ndarray:
    """A list of Python ints as a read-only int64[len]: one struct call (a NumPy or array
    conversion costs two to three times more per item)."""
    return np.frombuffer(struct.pack(f"{len(values)}q", *values), dtype=np.int64)


def table_slots(nodes: list) -> tuple[np.ndarray, np.ndarray, dict]:
    """The slot words of a node table, each distinct tensor's made once: (words, slots,
    tensors) with words int64[T + 1, SLOT] (row 0 is an absent source: all zero), slots
    intp[len(nodes), N_SLOTS] (row i's tensors as rows of words; 0 = absent) and tensors the
    distinct tensors in first-seen order (dict keys; tensors hash by identity). The
    descriptors' tensor part is words[slots]; the planner reads byte spans from the same words."""
    # every slot of every row numbered in C: the distinct tensors in first-seen order
    # (dict.fromkeys) take 1, 2, ...; None (an absent source, most slots) is 0, so only
    # the set slots are numbered, then scattered into the rows
    flat = list(chain.from_iterable([(node, *node.src) for node in nodes]))
    if len(flat) != len(nodes) * N_SLOTS:
        bad = next(node for node in nodes if len(node.src) != N_SLOTS - 1)
        raise ValueError(f"pack_table: {bad!r} has {len(bad.src)} source slots, not "
                         f"{N_SLOTS - 1}")
    set_ = np.frombuffer(struct.pack(f"{len(flat)}?", *flat), dtype=np.bool_)
    flat = list(filter(None, flat))             # (tensors are truthy)
    slot_of = dict(zip(dict.fromkeys(flat), range(1, len(flat) + 1)))
    idx = np.zeros(len(set_), dtype=np.intp)
    idx[set_] = int64s(list(map(slot_of.__getitem__, flat)))
    addrs = [0]
    shapes = [_NO_SHAPE]
    for t in slot_of:
        r = t.view_src
        buf = (t if r is None else r)._buffer
        if buf is None:
            t.data_ptr                        # raises: the tensor has no data
        addrs.append(buf._address + (t._offs if r is None else r._offs + t.view_offs))
        c = t.slot_shape                      # kept_shape(t), inline while it is valid
        if c is None or c[0] is not t.ne or c[1] is not t.nb or c[2] is not t.type:
            c = kept_shape(t)
        shapes.append(c[3])
    words = np.empty((len(addrs), SLOT), dtype=np.int64)
    words[:, T_ADDR] = int64s(addrs)
    words[:, T_TYPE:] = np.frombuffer(b"".join(shapes), dtype=np.int64).reshape(-1, SLOT - 1)
    return words, idx.reshape(len(nodes), N_SLOTS), slot_of


_NO_SHAPE = bytes(8 * (SLOT - 1))


def byte_spans(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte span [lo, hi) of each tensor of table_slots' words: its address and ggml_nbytes
    (strides aware; 0 bytes when any ne <= 0), as tensor.nbytes computes it."""
    addr, typ = words[:, T_ADDR], words[:, T_TYPE]
    ne, nb = words[:, T_NE:T_NE + 4], words[:, T_NB:T_NB + 4]
    bs = BLCK_SIZE[typ]
    first = np.where(bs == 1, TYPE_SIZE[typ] + (ne[:, 0] - 1) * nb[:, 0],
                     ne[:, 0] * nb[:, 0] // bs)
    size = first + ((ne[:, 1:] - 1) * nb[:, 1:]).sum(axis=1)
    size[(ne <= 0).any(axis=1)] = 0
    return addr, addr + size


def pack_table(nodes: list, index: list, n_tasks: np.ndarray, wdata_addr: int, wsize: int,
               status_addr: int, scratch_base: int, out: np.ndarray,
               slots: tuple = None) -> np.ndarray:
    """Fill out (int64[len(nodes), DESC_LEN]) with the descriptors of nodes, as pack_into
    would one by one (index: each node's graph index; scratch lines SCRATCH_LEN words apart
    from scratch_base), in a few vector operations: each distinct tensor's slot words are
    made once, then gathered into the rows. `slots`: table_slots(nodes) when the caller has
    it (rows may have been reordered since, together with nodes)."""
    n = len(nodes)
    if n == 0:
        return out
    words, slot_idx = (table_slots(nodes) if slots is None else slots)[:2]
    out[:, HDR:HDR + N_SLOTS * SLOT] = words[slot_idx].reshape(n, -1)
    # the op_params words, sign-extended: one join of the nodes' (frozen) int32 buffers
    # when they are all N_PARAMS int32 words, else slice by slice
    ops = [node.op_params for node in nodes]
    params = None
    if all([p.itemsize == 4 and p.size == N_PARAMS for p in ops]):
        try:
            params = np.frombuffer(b"".join(ops), dtype=np.int32)
        except (TypeError, BufferError, ValueError):   # a non-contiguous buffer
            pass
    if params is None:
        params = np.concatenate([p[:N_PARAMS] for p in ops])
    out[:, PARAMS:PARAMS + N_PARAMS] = params.reshape(n, N_PARAMS)
    out[:, :HDR] = 0
    out[:, H_NTASKS] = n_tasks
    out[:, H_WDATA] = wdata_addr
    out[:, H_WSIZE] = wsize
    out[:, H_STATUS] = status_addr
    out[:, H_INDEX] = index
    out[:, H_SCRATCH] = scratch_base + 8 * SCRATCH_LEN * np.arange(n, dtype=np.int64)
    out[:, PARAMS + N_PARAMS:] = 0
    return out


def pack(node, wdata_addr: int = 0, wsize: int = 0, status_addr: int = 0, index: int = 0,
         n_tasks: int = 1, scratch_addr: int = 0) -> np.ndarray:
    """The descriptor of node as a fresh int64[DESC_LEN] array."""
    return pack_into(np.zeros(DESC_LEN, dtype=np.int64), node, wdata_addr, wsize,
                     status_addr, index, n_tasks, scratch_addr)


def unpack(desc: np.ndarray) -> dict:
    """Readable form of a descriptor (debugging, tests)."""
    d = {"n_tasks": int(desc[H_NTASKS]), "wdata": int(desc[H_WDATA]),
         "wsize": int(desc[H_WSIZE]), "status": int(desc[H_STATUS]), "index": int(desc[H_INDEX]),
         "scratch": int(desc[H_SCRATCH])}
    slots = []
    for s in range(N_SLOTS):
        b = HDR + s * SLOT
        slots.append(None if desc[b + T_ADDR] == 0 and desc[b + T_NE] == 0 else dict(
            addr=int(desc[b + T_ADDR]), type=int(desc[b + T_TYPE]),
            ne=[int(x) for x in desc[b + T_NE:b + T_NE + 4]],
            nb=[int(x) for x in desc[b + T_NB:b + T_NB + 4]]))
    d["slots"] = slots
    d["params"] = [int(x) for x in desc[PARAMS:PARAMS + N_PARAMS]]
    return d
