"""What a kernel's verdicts may read of a node, and their memo by node signature.

The contract (kernels/__init__.py states it where kernels are registered): a kernel
variant's verdicts — `supports(node)`, a template's `spec(node)`, `n_tasks(node, n)`,
`work_size(node, n)`, `private_work(node, n)` — are pure functions of the node's
signature: its op, type, ne, nb and op_params, and the type, ne and nb of each source
(None where a source is absent), plus the thread count. Never its data, name, buffer,
address, view, flags or a source's own op or sources.

It is enforced, not trusted: KernelEntry.select and the planner hand the verdicts a
`NodeSig`, a stand-in that holds exactly those fields (an attribute outside them is an
AttributeError), so a verdict cannot read anything else. That is what makes `Verdicts` (the
backend's memo) safe: nodes of equal `sig_key` get equal verdicts, so a SmolLM2 decode graph
asks its kernels about its 14 distinct signatures once instead of about its 574
computed nodes every graph.

A node stamped from a layer template (models/layer_template.py) has its template node's
signature by construction: `Tensor.twin` names that node, and `get_all` hands it the
twin's verdicts (checked: same op, op_params and shape record), so a SmolLM2 decode graph
computes 23 keys, not 574.

The memo is stale only if the kernel table or a verdict function changed: every change
through the registry (add_kernel, unsupported, a KernelEntry's variants list edited in
place, a Kernel's verdict attribute set) bumps `EPOCH`, which empties every memo.
"""
from __future__ import annotations

from typing import Optional

from ...tensor import kept_shape

EPOCH = 0           # bumped by table_changed(): kernel tables or verdict functions changed


def table_changed() -> None:
    global EPOCH
    EPOCH += 1


class TensorSig:
    """A source as verdicts see it: type, ne, nb (the tensor's own read-only Dims)."""

    __slots__ = ("type", "ne", "nb")

    def __init__(self, t):
        self.type, self.ne, self.nb = t.type, t.ne, t.nb

    @property
    def n_dims(self) -> int:
        """ggml_n_dims (Tensor.n_dims)."""
        for i in range(3, 0, -1):
            if self.ne[i] > 1:
                return i + 1
        return 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.type.name}, ne={list(self.ne)}, nb={list(self.nb)})"


class NodeSig(TensorSig):
    """A node as verdicts see it: TensorSig plus op, op_params and src (TensorSig or None)."""

    __slots__ = ("op", "op_params", "src")

    def __init__(self, node):
        self.type, self.ne, self.nb = node.type, node.ne, node.nb
        self.op, self.op_params = node.op, node.op_params
        self.src = [None if s is None else TensorSig(s) for s in node.src]

    @property
    def op_name(self) -> str:
        return self.op.name if self.op is not None else "NONE"


def node_sig(node) -> NodeSig:
    """node as a NodeSig (a NodeSig as it is)."""
    return node if type(node) is NodeSig else NodeSig(node)


def sig_key(node) -> tuple:
    """Everything a NodeSig exposes, as a hashable value: the op (by identity), the
    op_params bytes, and the 9 slot words (type, ne, nb; tensor.shape_of) of the node and of
    each source (None where absent). Equal keys, equal NodeSigs. (kept_shape inline while a
    kept shape is valid: a call per source was a third of the key's cost.)"""
    c = node.slot_shape
    if c is None or c[0] is not node.ne or c[1] is not node.nb or c[2] is not node.type:
        c = kept_shape(node)
    return (node.op, node.op_params.tobytes(), c[3],
            *[None if s is None else
              c[3] if (c := s.slot_shape) is not None and c[0] is s.ne and c[1] is s.nb
              and c[2] is s.type else kept_shape(s)[3] for s in node.src])


class Verdicts:
    """The memo of one kernel table's verdicts for one thread count, by sig_key:
    `get(node)` -> (kernel or None, n_tasks, work_size, private_work), n_tasks clamped to
    1..n_threads and work_size >= 0 as graph_plan takes them, private_work None when the
    kernel states none. Computed once per signature on a NodeSig."""

    MAX = 4096              # signatures kept (a model's graphs have tens to hundreds)

    def __init__(self, table: dict, n_threads: int):
        self.table = table
        self.n_threads = n_threads
        self.memo: dict = {}
        self.epoch = EPOCH

    def get(self, node) -> tuple:
        if self.epoch != EPOCH:
            self.memo.clear()
            self.epoch = EPOCH
        key = sig_key(node)
        v = self.memo.get(key)
        if v is None:
            v = self._verdicts(NodeSig(node))
            if len(self.memo) >= self.MAX:
                self.memo.clear()
            self.memo[key] = v
        return v

    def get_all(self, nodes) -> list:
        """get(node) for each node that computes (an op, not a view, a non-empty result),
        None for the others: a graph's nodes in one call (per node, the calls cost about as
        much as the lookups)."""
        if self.epoch != EPOCH:
            self.memo.clear()
            self.epoch = EPOCH
        memo = self.memo
        out = []
        seen = {}                       # node -> its verdicts, for the nodes stamped from it
        for node in nodes:
            op = node.op
            if op is None or op.view or 0 in node.ne:
                out.append(None)
                continue
            tw = node.twin
            if tw is not None and tw.op is op and tw.op_params is node.op_params:
                v = seen.get(tw)
                c = node.slot_shape
                if v is not None and c is tw.slot_shape and c[0] is node.ne and \
                        c[1] is node.nb and c[2] is node.type:
                    out.append(v)
                    continue
            v = memo.get(sig_key(node))
            if v is None:
                v = self.get(node)
            seen[node] = v
            out.append(v)
        return out

    def _verdicts(self, sig: NodeSig) -> tuple:
        entry = self.table.get(sig.op.name)
        k = entry.select(sig) if entry is not None else None
        if k is None:
            return _NONE
        n = self.n_threads
        nt, ws = plan_facts(k, sig, n)
        pw = int(k.private_work(sig, n)) if k.private_work is not None else None
        return k, nt, ws, pw


_NONE = (None, 0, 0, None)


def plan_facts(k, sig, n_threads: int) -> tuple:
    """(n_tasks, work_size) of a node by the rules of its kernel variant k: all threads and
    no scratch when k states none; n_tasks clamped to 1..n_threads, work_size >= 0."""
    fn = k.n_tasks
    nt = int(fn(sig, n_threads)) if fn is not None else n_threads
    nt = 1 if nt < 1 else n_threads if nt > n_threads else nt
    fn = k.work_size
    ws = int(fn(sig, n_threads)) if fn is not None else 0
    return nt, max(0, ws)


def verdicts_for(table: Optional[dict], n_threads: int, memo: Optional[Verdicts]) -> Verdicts:
    """memo when it is for this table and thread count, else a new one."""
    if memo is not None and memo.table is table and memo.n_threads == n_threads:
        return memo
    return Verdicts(table, n_threads)
