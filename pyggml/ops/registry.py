"""The op registry: every op is declared once, as an OpDef, with all its rules attached.

An OpDef holds what ggml spreads over several places (enum, name table, constructor checks,
reference kernel, tests): shape/type inference, op_params layout, the NumPy reference (the
executable spec), test cases, flops/bytes for perf, and a slot for the recipe that builds the
same op in real ggml (conformance tests). Planning facts (n_tasks, work size) are the
backend's, as in ggml-cpu.c: they sit on its kernels. Backends look kernels up by
`OpDef.name`; nothing else branches on op names.
"""
from __future__ import annotations

import struct
from collections import namedtuple
from dataclasses import dataclass
from dataclasses import field
from types import SimpleNamespace
from typing import Callable
from typing import Optional
from typing import Sequence

import numpy as np

from .. import tensor as _tensor_mod
from ..errors import GGMLError
from ..errors import ParamError
from ..errors import ShapeError
from ..errors import TypeError_
from ..errors import describe
from ..errors import shown_ne
from ..tensor import MAX_OP_PARAMS
from ..tensor import MAX_SRC
from ..tensor import Dims
from ..tensor import Tensor
from ..tensor import are_same_shape
from ..tensor import kept_shape
from ..tensor import nbytes
from ..tensor import nelements
from ..tensor import shape_of
from ..types import TRAITS
from ..types import GGMLType

# --- op_params: ggml packs int32 words, floats bit-cast -----------------------------------

@dataclass(frozen=True)
class Field:
    name: str
    kind: str          # 'i32', 'f32' or 'i64' (two words, little-endian, like a size_t)
    count: int = 1     # values (arrays such as rope's sections)


def fields(spec: str) -> tuple[Field, ...]:
    """Parse 'scale:f32 max_bias:f32 sections:i32[4]' into Fields, in word order."""
    out = []
    for item in spec.split():
        name, kind = item.split(":")
        count = 1
        if "[" in kind:
            kind, n = kind[:-1].split("[")
            count = int(n)
        if kind not in ("i32", "f32", "i64"):
            raise ValueError(f"bad op_params kind {kind!r} in {spec!r}")
        out.append(Field(name, kind, count))
    return tuple(out)


def f32_bits(x: float) -> int:
    return struct.unpack("<i", struct.pack("<f", float(x)))[0]


class FrozenParams(np.ndarray):
    """op_params of a built node: int32 words over immutable bytes, so neither item
    assignment nor setflags(write=True) can change them behind the op's checks."""

    def __setitem__(self, key, value):
        raise ParamError("op_params of a built node are read-only: change them with "
                         "set_op_params(node, name=value), which re-runs the op's checks")


_FROZEN: dict = {}          # op_params bytes -> their read-only array, shared by every node
_FROZEN_MAX = 4096          # with those params (most nodes have few distinct ones: all zero)


def frozen(words: np.ndarray) -> np.ndarray:
    return frozen_bytes(np.ascontiguousarray(words, dtype=np.int32).tobytes())


def frozen_bytes(b: bytes) -> np.ndarray:
    """frozen() of op_params given as their MAX_OP_PARAMS bytes (no array made on a hit)."""
    f = _FROZEN.get(b)
    if f is None:
        if len(_FROZEN) >= _FROZEN_MAX:
            _FROZEN.clear()
        f = _FROZEN[b] = np.frombuffer(b, dtype=np.int32).view(FrozenParams)
    return f


def bits_f32(w: int) -> float:
    return struct.unpack("<f", struct.pack("<i", int(w)))[0]


_INT_RANGE = {"i32": (-(1 << 31), (1 << 31) - 1), "i64": (-(1 << 63), (1 << 63) - 1)}


def _word(op: str, f: Field, x):
    """One parameter value as ggml stores it; a value its C type cannot hold is a ParamError."""
    try:
        if f.kind == "f32":
            return f32_bits(x)
        v = int(x)
    except (TypeError, ValueError, OverflowError) as e:
        raise ParamError(f"{op}: parameter {f.name}={x!r} is not a valid {f.kind} ({e})") from None
    lo, hi = _INT_RANGE[f.kind]
    if not lo <= v <= hi:
        raise ParamError(f"{op}: parameter {f.name}={v} does not fit in {f.kind} "
                         f"[{lo}, {hi}]")
    return v


def pack_params(op: str, spec: Sequence[Field], values: dict) -> np.ndarray:
    words = np.zeros(MAX_OP_PARAMS // 4, dtype=np.int32)
    i = 0
    for f in spec:
        v = values.get(f.name, [0] * f.count if f.count > 1 else 0)
        try:
            vs = list(v) if f.count > 1 else [v]
        except TypeError:
            raise ParamError(f"{op}: parameter {f.name} needs {f.count} values, got {v!r}") from None
        if len(vs) != f.count:
            raise ParamError(f"{op}: parameter {f.name} needs {f.count} values, got {len(vs)}")
        for x in vs:
            if f.kind == "i64":
                words[i:i + 2] = np.array([_word(op, f, x)], dtype=np.int64).view(np.int32)
                i += 2
            else:
                words[i] = _word(op, f, x)
                i += 1
    if i > len(words):
        raise ParamError(f"{op}: op_params overflow ({i} words)")
    return words


def unpack_params(spec: Sequence[Field], words: np.ndarray) -> SimpleNamespace:
    ns = SimpleNamespace()
    if not spec:
        return ns
    ints = words.tolist()                       # one conversion, then plain Python values
    floats = words.view(np.float32).tolist()
    i = 0
    for f in spec:
        if f.kind == "i64":
            vals = words[i:i + 2 * f.count].view(np.int64).tolist()
            i += 2 * f.count
        else:
            vals = (floats if f.kind == "f32" else ints)[i:i + f.count]
            i += f.count
        setattr(ns, f.name, vals if f.count > 1 else vals[0])
    return ns


def param_words(spec: Sequence[Field]):
    """The op_params word index of each field of spec, as a namedtuple by field name (an
    array's first word; an i64 takes two words). Generated from the spec, so a kernel reads
    `param_f32(desc, W.freq_base)` instead of repeating the offset 5."""
    names, index, i = [], [], 0
    for f in spec:
        names.append(f.name)
        index.append(i)
        i += f.count * (2 if f.kind == "i64" else 1)
    return namedtuple("ParamWords", names)(*index)


class _Layout:
    """A spec compiled to one struct format: packing and unpacking all fields is one
    struct call. Anything the format refuses (an int out of int32 range, a float passed as
    an i32, a wrong array length) goes to pack_params/unpack_params, which raise (or
    convert) exactly as they always did."""

    __slots__ = ("spec", "st", "fields", "flat", "words", "names", "pad")

    _CODE = {"i32": "i", "f32": "f", "i64": "q"}

    def __init__(self, spec: Sequence[Field]):
        self.spec = spec
        self.st = struct.Struct("<" + "".join(f"{f.count}{self._CODE[f.kind]}" for f in spec))
        self.fields = tuple((f.name, f.count) for f in spec)
        self.flat = all(f.count == 1 for f in spec)        # no arrays: zip names and values
        self.words = param_words(spec)
        self.names = tuple(f.name for f in spec)
        self.pad = bytes(max(0, MAX_OP_PARAMS - self.st.size))

    def pack_bytes(self, op: str, values: dict) -> bytes:
        """pack() as the MAX_OP_PARAMS bytes of the words (what a node's frozen op_params
        are made from): one struct call for the common case, no array."""
        if not self.fields:
            return _ZERO_PARAMS
        if self.st.size <= MAX_OP_PARAMS:
            try:
                if self.flat:
                    return self.st.pack(*[values.get(n, 0) for n in self.names]) + self.pad
                return self.st.pack(*self._flat(values)) + self.pad
            except Exception:
                pass
        return self.pack(op, values).tobytes()             # converts, or raises as always

    def _flat(self, values: dict) -> list:
        """The words' values in field order (an array field must have its full count)."""
        flat = []
        for name, count in self.fields:
            if count == 1:
                flat.append(values.get(name, 0))
            else:
                vs = list(values.get(name, (0,) * count))
                if len(vs) != count:
                    raise ValueError
                flat += vs
        return flat

    def _namespace(self, vals) -> SimpleNamespace:
        """The unpacked words as named fields (array fields as lists)."""
        ns = SimpleNamespace()
        if self.flat:
            ns.__dict__.update(zip(self.names, vals))
            return ns
        i = 0
        for name, count in self.fields:
            setattr(ns, name, vals[i] if count == 1 else list(vals[i:i + count]))
            i += count
        return ns

    def unpack_bytes(self, b: bytes) -> SimpleNamespace:
        """unpack() of pack_bytes()'s bytes."""
        if not self.fields:
            return SimpleNamespace()
        return self._namespace(self.st.unpack_from(b))

    def pack(self, op: str, values: dict) -> np.ndarray:
        if not self.fields:
            return np.zeros(MAX_OP_PARAMS // 4, dtype=np.int32)
        try:
            if self.st.size > MAX_OP_PARAMS:
                raise OverflowError
            flat = self._flat(values)
            words = np.zeros(MAX_OP_PARAMS // 4, dtype=np.int32)
            self.st.pack_into(words, 0, *flat)
        except Exception:
            return pack_params(op, self.spec, values)      # raises as it always did
        return words

    def unpack(self, words: np.ndarray) -> SimpleNamespace:
        if not self.fields:
            return SimpleNamespace()
        try:
            vals = self.st.unpack_from(words)
        except Exception:                                   # not a contiguous int32 buffer
            return unpack_params(self.spec, words)
        return self._namespace(vals)


_ZERO_PARAMS = bytes(MAX_OP_PARAMS)


# --- inference results ----------------------------------------------------------------------

@dataclass(slots=True)
class Out:
    """What an op produces: a new tensor (type, ne), or a view of `view_of` (nb, offs)."""
    type: GGMLType
    ne: Sequence[int]
    view_of: Optional[Tensor] = None
    offs: int = 0
    nb: Optional[Sequence[int]] = None
    like_src: bool = False     # permute/transpose: ne may leave whole blocks (ggml allows it)


def inplace_of(a: Tensor) -> Out:
    """ggml_view_tensor(a): result aliases a with a's shape and strides (inplace ops)."""
    return Out(a.type, a.ne, view_of=a, offs=0, nb=a.nb)


# --- build memo -------------------------------------------------------------------------------
# A model builds the same nodes over and over (30 layers of the same shapes, every step):
# infer's answer depends only on the op_params, the build hints and the sources' types, ne
# and nb (infer must read nothing else: names go into error messages only), so OpDef.build
# keeps it per op by those and makes the node straight from it on the next build (the
# view bounds and the pool are still checked per node; anything unusual takes the checked
# way). It is a cache of infer, not of nodes: every build returns a new tensor.

_MEMO_MAX = 4096            # answers per op; the dict is emptied when full (steady graphs
                            # of a model hold a few hundred)


def _memo_key(b: bytes, srcs: list, hints: Optional[dict]) -> tuple:
    """(op_params, each source's type/ne/nb, hints) as a dict key (the lookup raises
    TypeError when a hint cannot be part of one: the build then runs infer as always)."""
    key = (b, *[None if s is None else (s.type, *s.ne, *s.nb) for s in srcs])
    if hints:
        key += tuple([(k, tuple(v) if v.__class__ is list or v.__class__ is Dims else v)
                      for k, v in hints.items()])
    return key


def _remember(memo: dict, key: tuple, t: Tensor, out: Out, srcs: list) -> None:
    """What the memo's fast path in OpDef.build needs to make a node like t: (shape_of(t),
    the source it views or -1, offset into that source, the bytes from the offset that must
    fit in the root, the frozen op_params)."""
    vi = -1
    if out.view_of is not None:
        vi = next((i for i, s in enumerate(srcs) if s is out.view_of), None)
        if vi is None:                      # aliases something that is not a source
            return
    shape = t.slot_shape = shape_of(t)     # shared with the nodes made from this answer
    reach = shape[4] if nelements(t) else 0
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = (shape, vi, int(out.offs), reach, t.op_params)


_NONES = [[None] * (MAX_SRC - n) for n in range(MAX_SRC + 1)]     # src[] padding of n sources


def _link(t, op, srcs, name):
    """Make t op's result over srcs, named as given or by the op's name format (ggml's
    default names): the checked build (the memo's fast path does the same inline)."""
    t.op = op
    t.src[:len(srcs)] = srcs
    if name:
        t.name = name
    elif op.name_fmt is not None:
        t.name = op.name_fmt(srcs)[:63]
    return t


def _past_end(offs: int, size: int, root: Tensor) -> bool:
    """Would a view of `size` bytes at byte `offs` of root reach past root's end? (The
    checked build raises on it; the memo's fast path leaves such a view to the checked one.)"""
    return offs + size > kept_shape(root)[4]        # nbytes(root), kept on it


# --- the OpDef -------------------------------------------------------------------------------

@dataclass(eq=False)
class OpDef:
    name: str                                   # ggml's op desc: "MUL_MAT", "SILU", ...
    infer: Callable[..., Out]                   # (srcs, p) -> Out; raises GGMLError on misuse
    params: tuple = ()                          # op_params layout (Fields)
    reference: Optional[Callable] = None        # (node, ins, p) -> ndarray | dict | None
    cases: Optional[Callable] = None            # () -> list[testing.Case]
    flops: Optional[Callable] = None            # (node) -> floating point operations
    nbytes: Optional[Callable] = None           # (node) -> bytes moved (for GB/s)
    ggml: Optional[Callable] = None             # (g, gctx, gsrcs, p) -> ggml tensor (ctypes)
    ggml_op: Optional[str] = None               # GGML_OP_* it maps to (defaults to name)
    view: bool = False                          # result aliases a source; nothing to compute
    writes: tuple = ()                          # src indices it writes in place besides dst
    max_nmse: float = 1e-7                      # test-backend-ops threshold; 0.0 = exact
    exact: bool = False                         # compare bitwise (argmax, get_rows, same-type cpy)
    name_fmt: Optional[Callable] = None         # (srcs) -> name ggml gives the result ("x (view)")
    doc: str = ""
    extra: dict = field(default_factory=dict)   # family-specific facts (unary id, glu id...)
    grad: Optional["GradRule"] = None           # backward rule (see grad_rule below)

    def __post_init__(self):
        if isinstance(self.params, str):
            self.params = fields(self.params)
        if self.ggml_op is None:
            self.ggml_op = self.name
        self._layout = None
        self._memo = (self.infer, {})       # see _memo_key

    # building ---------------------------------------------------------------------------
    def layout(self) -> _Layout:
        lay = self._layout
        if lay is None or lay.spec is not self.params:      # params reassigned: recompile
            if isinstance(self.params, str):
                self.params = fields(self.params)
            lay = self._layout = _Layout(self.params)
        return lay

    def pack(self, values: dict) -> np.ndarray:
        return self.layout().pack(self.name, values or {})

    def unpack(self, words: np.ndarray) -> SimpleNamespace:
        return self.layout().unpack(words)

    @property
    def words(self):
        """Word index of each op_params field by name (`OPS["ROPE"].words.freq_base`)."""
        return self.layout().words

    def build(self, ctx, srcs: Sequence[Optional[Tensor]], params: dict = None,
              name: str = None, hints: dict = None) -> Tensor:
        """Check the sources, infer the result, create the lazy node. Nothing is computed.

        `hints` reach infer beside the packed params without being stored in op_params
        (a view's ne/nb live on the tensor, as in ggml, not in its op_params)."""
        if ctx is None:
            raise GGMLError(f"{self.name.lower()}: ctx is None")
        srcs = list(srcs)
        if len(srcs) > MAX_SRC:
            raise GGMLError(f"{self.name}: at most {MAX_SRC} sources")
        for s in srcs:
            if s is not None and s.__class__ is not Tensor and not isinstance(s, Tensor):
                i = next(j for j, x in enumerate(srcs) if x is s)
                raise GGMLError(f"{self.name}: src[{i}] must be a Tensor, got {type(s).__name__}")
        lay = self._layout
        if lay is None or lay.spec is not self.params:
            lay = self.layout()
        b = lay.pack_bytes(self.name, params or {}) if lay.fields else _ZERO_PARAMS
        # the same op over the same shapes: infer's answer (_memo_key, inline without hints)
        key = _memo_key(b, srcs, hints) if hints else \
            (b, *[None if s is None else (s.type, *s.ne, *s.nb) for s in srcs])
        memo = self._memo
        if memo[0] is not self.infer:       # infer replaced (tests): forget its answers
            memo = self._memo = (self.infer, {})
        try:
            hit = memo[1].get(key)
        except TypeError:                   # an unhashable hint: no memo for this build
            hit = key = None
        if hit is not None:                 # the node from the remembered answer
            shape, vi, offs, reach, frozen_p = hit
            view_of = None
            if vi >= 0:
                view_of = srcs[vi]
                if reach:                   # the view must fit in the memory it aliases
                    root = view_of.view_src
                    if root is None:
                        root, start = view_of, offs
                    else:
                        start = offs + view_of.view_offs
                    if _past_end(start, reach, root):
                        hit = None          # the checked way raises the error
            # None: the pool is full or the result needs data (the checked way)
            t = ctx.new_node(shape, view_of, offs, frozen_p, self, srcs + _NONES[len(srcs)]) \
                if hit is not None else None
            if t is not None:
                if name:
                    t.name = name
                elif self.name_fmt is not None:
                    t.name = self.name_fmt(srcs)[:63]
                return t
        p = lay.unpack_bytes(b)
        if hints:
            p.__dict__.update(hints)
        out = self.infer(srcs, p)
        used = ctx.used
        # like_src views get their ne/nb below, unchecked against block sizes, as in ggml
        # (an empty placeholder: the parent may itself be empty)
        like_src, nb = out.like_src, out.nb
        t = ctx.new_tensor_impl(out.type, [0] if like_src else out.ne,
                                view_src=out.view_of, view_offs=out.offs, op_name=self.name,
                                op_params=frozen_bytes(b))
        if like_src:
            t.ne = Dims([int(x) for x in out.ne] + [1] * (4 - len(out.ne)))
        if nb is not None:
            t.nb = Dims(map(int, nb))
            if t.view_src is not None and not out.like_src and nelements(t) and \
                    _past_end(t.view_offs, nbytes(t), t.view_src):
                ctx.tensors.remove(t)
                ctx.used = used
                fail(self.name, f"view with ne={shown_ne(t)} nb={t.nb} at offset {t.view_offs} "
                     f"reaches byte {t.view_offs + nbytes(t)}, past the end of its parent "
                     f"({nbytes(t.view_src)} bytes)", t.view_src)
        _link(t, self, srcs, name)
        if key is not None:
            _remember(self._memo[1], key, t, out, srcs)
        return t

    def p(self, node: Tensor) -> SimpleNamespace:
        """The node's op_params, unpacked."""
        return self.unpack(node.op_params)

    def set_params(self, node: Tensor, named: dict) -> None:
        """Change some of a built node's op_params through this op's own checks (see
        set_op_params). The result must keep its type, shape and aliasing."""
        if node.op is not self:
            raise ParamError(f"{self.name}: node {describe(node)} is a {node.op_name} node")
        known = {f.name for f in self.params}
        unknown = sorted(set(named) - known)
        if unknown:
            raise ParamError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"{self.name} has {', '.join(sorted(known)) or 'none'}")
        if self.view:
            raise ParamError(f"{self.name}: a view's parameters are its layout; build a new "
                             f"view instead of editing {describe(node)}")
        values = vars(self.p(node))
        values.update(named)
        words = self.pack(values)
        srcs = [s for s in node.src]
        while srcs and srcs[-1] is None:
            srcs.pop()
        p = self.unpack(words)
        hints_of = self.extra.get("hints_of")     # build hints the node itself carries
        if hints_of is not None:
            p.__dict__.update(hints_of(node))
        out = self.infer(srcs, p)
        ne = [int(x) for x in out.ne] + [1] * (4 - len(out.ne))
        view_of = out.view_of.view_src if out.view_of is not None and \
            out.view_of.view_src is not None else out.view_of
        if out.type != node.type or ne != list(node.ne) or view_of is not node.view_src:
            fail(self.name, f"parameters {named} would change the result (type "
                 f"{TRAITS[out.type].tname}, ne={ne}, {'a view' if view_of else 'new data'}) "
                 f"of the built node; build a new node instead", node, cls=ParamError)
        node.op_params = frozen(words)
        if node.is_allocated:       # it may sit in a lowered table: make backends re-lower
            _tensor_mod.PARAMS_EPOCH += 1

    def __repr__(self) -> str:
        return f"OpDef({self.name})"


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise GGMLError(f"op {op.name} is registered twice")
    OPS[op.name] = op
    return op


@dataclass(frozen=True)
class GradRule:
    """How gradients flow through an op: ggml_compute_backward's case for it.

    `fn(g, node, grad)` is called once per node that has a gradient, last node first; it
    builds, with the op functions, the gradient contribution of each source that needs one
    (`g.needs(i)`) and hands it over with ggml's helpers `g.add(i, t)`, `g.sub(i, t)`,
    `g.add1(i, t)`, `g.acc(i, t, nb1, nb2, nb3, offset)` (pyggml/autodiff.py). `ignore`
    lists the sources whose gradients cannot affect the result (row ids, positions, a
    cpy's target, a step's input): nothing flows to them."""
    fn: Callable
    ignore: tuple = ()


def grad_rule(op: OpDef, ignore: tuple = ()):
    """Decorator declaring op's gradient rule, written right after the op in its file."""
    def deco(fn):
        if op.grad is not None:
            raise GGMLError(f"op {op.name} has two gradient rules")
        op.grad = GradRule(fn, tuple(ignore))
        return fn
    return deco


def grad_through(fn_name: str, doc: str) -> Callable:
    """The gradient rule "src[0] gets fn(grad, src[0])" (fn from the public API by name)."""
    def rule(g, node, grad):
        if g.needs(0):
            g.add(0, g.fn(fn_name)(g.ctx, grad, node.src[0]))
    rule.__doc__ = doc
    return rule


def set_op_params(node: Tensor, **named) -> Tensor:
    """Change a built node's op_params by name (e.g. `set_op_params(pad_node, lp0=2)`).

    A built node's op_params are read-only; this re-runs the op's own checks on the new
    values and refuses any that would change the node's type, shape or aliasing. A graph
    that was already computed notices the change and lowers again."""
    if not isinstance(node, Tensor) or node.op is None:
        raise ParamError(f"set_op_params: {describe(node) if isinstance(node, Tensor) else repr(node)}"
                         f" is not an op node")
    node.op.set_params(node, named)
    return node


def get_op(name: str) -> OpDef:
    try:
        return OPS[name.upper()]
    except KeyError:
        raise GGMLError(f"unknown op {name!r}") from None


# --- checks shared by infer functions (each raises with the op and tensors named) -------------

def fail(op: str, msg: str, *tensors, cls=ShapeError):
    names = ", ".join(describe(t) for t in tensors)
    raise cls(f"{op}: {msg}" + (f" [{names}]" if names else ""))


def need(cond: bool, op: str, msg: str, *tensors, cls=ShapeError) -> None:
    if not cond:
        fail(op, msg, *tensors, cls=cls)


def need_src(op: str, srcs, i: int, what: str = None) -> Tensor:
    if i >= len(srcs) or srcs[i] is None:
        raise GGMLError(f"{op}: missing source {what or f'src[{i}]'}")
    return srcs[i]


def need_pair(op: str, srcs, a_what: str, b_what: str, allowed) -> tuple:
    """Sources a and b of one shape, both of an allowed type (a backward op's gradient and
    the forward tensor it goes with)."""
    a = need_src(op, srcs, 0, a_what)
    b = need_src(op, srcs, 1, b_what)
    need_type(op, a, allowed, "a")
    need_type(op, b, allowed, "b")
    need(are_same_shape(a, b), op, "a and b must have the same shape", a, b)
    return a, b


def need_type(op: str, t: Tensor, allowed, what: str = "") -> None:
    if t.type not in allowed:
        names = ", ".join(x.tname for x in allowed)
        raise TypeError_(f"{op}: {what or 'tensor'} {describe(t)} has type {t.type.tname}; "
                         f"expected one of {names}")
