"""Real ggml through ctypes: the conformance oracle of pyggml's tests and `--compare ggml`.

The shared libraries come from the `libggml-python` package (extra `[ggml]`). Every function
of ggml.h, ggml-cpu.h, ggml-backend.h and ggml-alloc.h is declared automatically by parsing
the installed headers, so tests write `g.ggml_mul_mat(ctx, a, b)` with ggml's own argument
types (floats passed as floats, enums as int32, pointers as addresses).

    g = lib()                                # the singleton; ggml_cpu_init() already called
    with context(16 << 20) as ctx:           # a ggml context, freed on exit
        a = new_tensor(ctx, GGMLType.F32, [4, 3])
        ne, nb = ne_nb(a)

The mirror rebuilds a pyggml graph in real ggml, node by node through each OpDef's `ggml`
recipe, computes it with ggml's CPU code and returns every tensor's values:

    got = compute_graph([out])               # {id(pyggml tensor): float64 (ne3,ne2,ne1,ne0)}

Real ggml ABORTS the process on a failed GGML_ASSERT: hand it only shapes pyggml accepted,
or run the comparison through `run_isolated(fn, *args)` (a child process).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
import traceback
from ctypes import CFUNCTYPE
from ctypes import POINTER
from ctypes import Structure
from ctypes import c_bool
from ctypes import c_char
from ctypes import c_char_p
from ctypes import c_double
from ctypes import c_float
from ctypes import c_int8
from ctypes import c_int16
from ctypes import c_int32
from ctypes import c_int64
from ctypes import c_size_t
from ctypes import c_uint8
from ctypes import c_uint16
from ctypes import c_uint32
from ctypes import c_uint64
from ctypes import c_void_p
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from ..errors import GGMLError
from ..errors import ShapeError
from ..errors import UnsupportedError

__all__ = ["available", "lib", "GGMLTensor", "tensor", "ne_nb", "view_offs", "data_ptr",
           "op_params", "get_name", "type_of", "context", "new_tensor", "set_bytes", "read",
           "raw_bytes", "pyggml_raw", "quantize_chunk", "dequantize", "fp32_to_fp16",
           "fp16_to_fp32", "fp32_to_bf16", "bf16_to_fp32", "Mirror", "compute_graph",
           "run_isolated", "parse_prototypes", "HEADERS"]

HEADERS = ("ggml.h", "ggml-cpu.h", "ggml-backend.h", "ggml-alloc.h")
MAX_DIMS, MAX_SRC, MAX_NAME, MAX_OP_PARAMS = 4, 10, 64, 64


# --- where the library lives -------------------------------------------------------------

def _package_dir() -> Optional[Path]:
    env = os.environ.get("PYGGML_LIBGGML_DIR")
    if env:
        return Path(env)
    try:
        spec = importlib.util.find_spec("libggml")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --- the header parser ----------------------------------------------------------------------

class _VoidP(c_void_p):
    """Pointer arguments: addresses (int), None, ctypes objects, bytes, or NumPy arrays."""

    @classmethod
    def from_param(cls, obj):
        if isinstance(obj, np.ndarray):
            return c_void_p(obj.ctypes.data)
        if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            return c_void_p(int(obj))
        return c_void_p.from_param(obj)


class _CharP(c_char_p):
    """`const char *` arguments: str (UTF-8 encoded) or bytes."""

    @classmethod
    def from_param(cls, obj):
        if isinstance(obj, str):
            obj = obj.encode()
        return c_char_p.from_param(obj)


_SCALARS = {
    "int": c_int32, "int32_t": c_int32, "unsigned": c_uint32, "uint32_t": c_uint32,
    "int64_t": c_int64, "uint64_t": c_uint64, "size_t": c_size_t, "float": c_float,
    "double": c_double, "bool": c_bool, "_Bool": c_bool, "int8_t": c_int8, "uint8_t": c_uint8,
    "int16_t": c_int16, "uint16_t": c_uint16, "char": c_char, "long": c_int64,
    "ggml_fp16_t": c_uint16,
}
_DROP = {"const", "volatile", "GGML_RESTRICT", "restrict", "__restrict", "__restrict__"}


class _Unparsable(Exception):
    pass


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _typedefs(text: str) -> dict:
    """typedef name -> 'ptr' (pointer or function pointer), 'struct' (by value) or a scalar."""
    out = {}
    for m in re.finditer(r"typedef\s+([^;{}]*?)\(\s*\*\s*(\w+)\s*\)\s*\(", text):
        out[m.group(2)] = "ptr"
    for m in re.finditer(r"typedef\s+(?:struct|enum|union)?\s*\w*\s*\{[^{}]*\}\s*(\w+)\s*;", text):
        out[m.group(1)] = "enum" if "enum" in m.group(0).split("{")[0] else "struct"
    for m in re.finditer(r"typedef\s+([\w\s]+?)(\*?)\s*(\w+)\s*(\[\d+\])?\s*;", text):
        base, star, name, arr = m.groups()
        if star or arr:
            out[name] = "ptr" if star else "struct"
        else:
            words = [w for w in base.split() if w not in _DROP]
            if words and words[-1] in _SCALARS:
                out[name] = words[-1]
            elif words and words[0] == "enum":
                out[name] = "enum"
            else:
                out.setdefault(name, "struct")
    return out


def _ctype(decl: str, typedefs: dict, is_ret: bool, has_name: bool):
    """One C type (possibly followed by a parameter name) -> ctypes type (None for void)."""
    decl = decl.replace("*", " * ")
    n_ptr = decl.count("*")
    is_array = "[" in decl
    decl = re.sub(r"\[[^\]]*\]", " ", decl)
    words = [w for w in decl.replace("*", " ").split() if w not in _DROP]
    is_enum = "enum" in words
    is_struct = "struct" in words or "union" in words
    words = [w for w in words if w not in ("enum", "struct", "union")]
    if has_name and len(words) >= 2:
        words = words[:-1]          # the parameter's name (unnamed parameters keep one word)
    if not words:
        raise _Unparsable(decl)
    base = words[-1]
    if n_ptr or is_array:
        if is_ret and base == "char" and n_ptr == 1:
            return c_char_p
        if base == "char" and n_ptr == 1 and not is_ret:
            return _CharP
        return c_void_p if is_ret else _VoidP
    if is_enum:
        return c_int32
    if is_struct:
        raise _Unparsable(decl)       # struct by value
    if base == "void":
        return None
    if base in _SCALARS:
        return _SCALARS[base]
    kind = typedefs.get(base)
    if kind == "ptr":
        return c_void_p if is_ret else _VoidP
    if kind == "enum":
        return c_int32
    if kind in _SCALARS:
        return _SCALARS[kind]
    raise _Unparsable(decl)


def _split_args(args: str) -> list[str]:
    return [a.strip() for a in args.split(",")] if args.strip() else []


def parse_prototypes(text: str, typedefs: dict = None) -> dict:
    """`GGML_API <ret> <name>(<args>);` prototypes -> {name: (restype, [argtypes])}.

    Function-pointer parameters, structs passed by value and variadic functions are skipped.
    """
    text = _strip_comments(text)
    td = dict(typedefs or {})
    td.update(_typedefs(text))
    out = {}
    for m in re.finditer(r"\b(?:GGML_API|GGML_BACKEND_API)\b", text):
        end = text.find(";", m.end())
        if end < 0:
            break
        stmt = text[m.end():end]
        stmt = re.sub(r',\s*"[^"]*"\s*\)\s*$', "", stmt)      # GGML_DEPRECATED(..., "hint")
        stmt = re.sub(r"\bGGML_(?:ATTRIBUTE_FORMAT|DEPRECATED)\b\s*(\([^()]*\))?", " ", stmt)
        op = stmt.find("(")
        if op < 0:
            continue
        head, rest = stmt[:op], stmt[op + 1:]
        nm = re.search(r"(\w+)\s*$", head)
        if not nm:
            continue
        name = nm.group(1)
        close = rest.rfind(")")
        args = rest[:close] if close >= 0 else rest
        if "(" in args or "..." in args:
            continue                  # function pointer parameter or variadic
        try:
            ret = _ctype(head[:nm.start()], td, True, False)
            argl = _split_args(args)
            if argl == ["void"]:
                argl = []
            argtypes = [_ctype(a, td, False, True) for a in argl]
        except _Unparsable:
            continue
        if any(a is None for a in argtypes):
            continue
        out[name] = (ret, argtypes)
    return out


# --- structs declared by hand ---------------------------------------------------------------

class InitParams(Structure):
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


class CPlan(Structure):
    _fields_ = [("work_size", c_size_t), ("work_data", c_void_p), ("n_threads", c_int32),
                ("threadpool", c_void_p), ("abort_callback", c_void_p),
                ("abort_callback_data", c_void_p), ("use_ref", c_bool)]


class TypeTraits(Structure):
    _fields_ = [("type_name", c_char_p), ("blck_size", c_int64),
                ("blck_size_interleave", c_int64), ("type_size", c_size_t),
                ("is_quantized", c_bool), ("to_float", c_void_p), ("from_float_ref", c_void_p)]


class GGMLTensor(Structure):
    """struct ggml_tensor (ggml 0.20.x; checked against the library when it is loaded)."""
    _fields_ = [("type", c_int32), ("buffer", c_void_p), ("ne", c_int64 * MAX_DIMS),
                ("nb", c_size_t * MAX_DIMS), ("op", c_int32),
                ("op_params", c_int32 * (MAX_OP_PARAMS // 4)), ("flags", c_int32),
                ("src", c_void_p * MAX_SRC), ("view_src", c_void_p), ("view_offs", c_size_t),
                ("data", c_void_p), ("name", c_char * MAX_NAME), ("extra", c_void_p),
                ("padding", c_char * 8)]


_TO_FLOAT = CFUNCTYPE(None, c_void_p, c_void_p, c_int64)


class G:
    """Namespace of ggml functions (attributes named as in the headers) plus the CDLLs."""

    def __init__(self, libdir: Path, incdir: Path):
        mode = getattr(os, "RTLD_GLOBAL", ctypes.RTLD_GLOBAL)
        self._dlls = []
        for so in ("libggml-base.so", "libggml-cpu.so", "libggml.so"):
            p = libdir / so
            if p.exists():
                self._dlls.append(ctypes.CDLL(str(p), mode=mode))
        if len(self._dlls) < 2:
            raise GGMLError(f"libggml-base.so / libggml-cpu.so not found in {libdir}")
        text = "\n".join((incdir / h).read_text() for h in HEADERS if (incdir / h).exists())
        self.prototypes = parse_prototypes(text)
        self.declared = []
        for name, (ret, args) in self.prototypes.items():
            fn = self._find(name)
            if fn is None:
                continue
            fn.restype, fn.argtypes = ret, args
            setattr(self, name, fn)
            self.declared.append(name)
        # declared by hand: structs passed or returned by value
        self._declare("ggml_init", c_void_p, [InitParams])
        self._declare("ggml_graph_plan", CPlan, [c_void_p, c_int32, c_void_p])
        self._declare("ggml_graph_compute", c_int32, [c_void_p, POINTER(CPlan)])
        self._declare("ggml_get_type_traits", POINTER(TypeTraits), [c_int32])
        self.ggml_cpu_init()
        self._check_layout()

    def _find(self, name):
        for dll in reversed(self._dlls):      # cpu/backend before base
            try:
                return dll[name]
            except AttributeError:
                continue
        return None

    def _declare(self, name, ret, args):
        fn = self._find(name)
        if fn is None:
            raise GGMLError(f"ggml function {name} not found in the library")
        fn.restype, fn.argtypes = ret, args
        setattr(self, name, fn)

    def _check_layout(self):
        """Verify GGMLTensor against the library: size, field offsets and a round trip."""
        if ctypes.sizeof(GGMLTensor) + 32 != self.ggml_tensor_overhead():
            raise GGMLError(f"struct ggml_tensor size mismatch: ctypes {ctypes.sizeof(GGMLTensor)}"
                            f" + object 32 != ggml_tensor_overhead() {self.ggml_tensor_overhead()}")
        get_name_addr = self._find("ggml_get_name")        # a fresh function object
        get_name_addr.restype, get_name_addr.argtypes = c_void_p, [c_void_p]
        ctx = self.ggml_init(InitParams(1 << 16, None, False))
        try:
            t = self.ggml_new_tensor_2d(ctx, 0, 3, 2)
            self.ggml_set_name(t, b"layout")
            v = self.ggml_permute(ctx, self.ggml_view_1d(ctx, t, 2, 8), 1, 0, 2, 3)
            s, sv = GGMLTensor.from_address(t), GGMLTensor.from_address(v)
            ok = (s.type == 0 and list(s.ne) == [3, 2, 1, 1] and list(s.nb) == [4, 12, 24, 24]
                  and s.data == self.ggml_get_data(t) and s.name == b"layout"
                  and get_name_addr(t) == t + GGMLTensor.name.offset
                  and sv.view_src == t and sv.view_offs == 8 and sv.src[0] != 0
                  and list(sv.op_params[:4]) == [1, 0, 2, 3]
                  and self.ggml_op_name(sv.op) == b"PERMUTE"
                  and sv.data == s.data + 8 and sv.name == b"layout (view) (permuted)")
            if not ok:
                raise GGMLError("struct ggml_tensor layout does not match the loaded ggml library")
        finally:
            self.ggml_free(ctx)

    def __repr__(self):
        return f"<ggml library: {len(self.declared)} functions>"


_LIB: Optional[G] = None
_ERR: Optional[str] = None


def lib() -> G:
    """The ggml library singleton (loads and declares on first use)."""
    global _LIB, _ERR
    if _LIB is None:
        pkg = _package_dir()
        if pkg is None:
            _ERR = "libggml-python is not installed (pip install 'pyggml[ggml]')"
            raise GGMLError(_ERR)
        try:
            _LIB = G(pkg / "lib64" if (pkg / "lib64").exists() else pkg / "lib", pkg / "include")
        except OSError as e:
            _ERR = f"cannot load ggml from {pkg}: {e}"
            raise GGMLError(_ERR) from e
    return _LIB


def available() -> bool:
    try:
        lib()
        return True
    except GGMLError:
        return False


# --- tensor struct helpers ---------------------------------------------------------------------

def tensor(ptr: int) -> GGMLTensor:
    if not ptr:
        raise GGMLError("NULL ggml tensor")
    return GGMLTensor.from_address(int(ptr))


def ne_nb(ptr: int):
    t = tensor(ptr)
    return list(t.ne), list(t.nb)


def view_offs(ptr: int) -> int:
    return tensor(ptr).view_offs


def data_ptr(ptr: int) -> int:
    return tensor(ptr).data or 0


def op_params(ptr: int) -> np.ndarray:
    return np.array(tensor(ptr).op_params, dtype=np.int32)


def get_name(ptr: int) -> str:
    return tensor(ptr).name.decode(errors="replace")


def type_of(ptr: int) -> int:
    return tensor(ptr).type


class context:
    """A ggml context as a context manager: `with context(mem) as ctx: ...` (freed on exit)."""

    def __init__(self, mem_size: int = 16 << 20, no_alloc: bool = False):
        self.g = lib()
        self.ptr = self.g.ggml_init(InitParams(int(mem_size), None, bool(no_alloc)))
        if not self.ptr:
            raise GGMLError(f"ggml_init({mem_size}) failed")

    def __enter__(self):
        return self.ptr

    def __exit__(self, *exc):
        self.free()

    def free(self):
        if self.ptr:
            self.g.ggml_free(self.ptr)
            self.ptr = None


def new_tensor(ctx: int, type, ne, name: str = None) -> int:
    """ggml_new_tensor(ctx, type, len(ne), ne) with ne as a Python list."""
    g = lib()
    ne = [int(x) for x in ne]
    t = g.ggml_new_tensor(ctx, int(type), len(ne), (c_int64 * len(ne))(*ne))
    if name is not None:
        g.ggml_set_name(t, name.encode()[:MAX_NAME - 1])
    return t


def set_bytes(ptr: int, raw) -> None:
    """Copy raw bytes to the start of a ggml tensor's data (bounds checked by ggml_nbytes)."""
    b = bytes(raw)
    n = lib().ggml_nbytes(ptr)
    if len(b) > n:
        raise DataError(f"set_bytes: {len(b)} bytes do not fit a ggml tensor of {n} bytes")
    if not b:
        return                     # an empty tensor may have no data at all
    d = data_ptr(ptr)
    if not d:
        raise DataError("set_bytes: ggml tensor has no data")
    ctypes.memmove(d, b, len(b))


def _span(ptr: int) -> np.ndarray:
    t = tensor(ptr)
    n = lib().ggml_nbytes(ptr)
    if not t.data:
        raise DataError(f"ggml tensor '{get_name(ptr)}' has no data")
    return np.ctypeslib.as_array((c_uint8 * max(n, 1)).from_address(t.data))


def _storage(ptr: int):
    """(storage array (ne3,ne2,ne1,ne0) for element types | packed rows (nrows, row) for blocks)."""
    g = lib()
    t = tensor(ptr)
    ne, nb = list(t.ne), list(t.nb)
    tr = g.ggml_get_type_traits(t.type).contents
    if any(x == 0 for x in ne):
        return tr, None
    buf = _span(ptr)
    if tr.blck_size == 1:
        dt = _ELEM_DTYPES.get(t.type)
        if dt is None:
            raise GGMLError(f"reading ggml type {tr.type_name.decode()} is not supported")
        return tr, np.ndarray(ne[::-1], dtype=dt, buffer=buf, strides=nb[::-1])
    if ne[0] > tr.blck_size and nb[0] != tr.type_size:
        raise ShapeError(f"ggml tensor '{get_name(ptr)}' ({tr.type_name.decode()}) has unpacked "
                         f"blocks (nb={nb}); cannot read it")
    rs = tr.type_size * (ne[0] // tr.blck_size)
    rows = np.ndarray([ne[3], ne[2], ne[1], rs], dtype=np.uint8, buffer=buf,
                      strides=[nb[3], nb[2], nb[1], 1])
    return tr, np.ascontiguousarray(rows)


_ELEM_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float16), 30: np.dtype(np.uint16),
                28: np.dtype(np.float64), 24: np.dtype(np.int8), 25: np.dtype(np.int16),
                26: np.dtype(np.int32), 27: np.dtype(np.int64)}


def read(ptr: int) -> np.ndarray:
    """A ggml tensor's values as float64 (ne3,ne2,ne1,ne0), read through its own ne/nb.

    Quantized types are dequantized with ggml's to_float; integer types come back as int64."""
    t = tensor(ptr)
    ne = list(t.ne)
    tr, a = _storage(ptr)
    if a is None:
        return np.zeros(ne[::-1], dtype=np.float64)
    if tr.blck_size == 1:
        if t.type == 30:
            return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if t.type in (24, 25, 26, 27):
            return a.astype(np.int64)
        return a.astype(np.float64)
    return dequantize(t.type, a.tobytes(), int(np.prod(ne))).reshape(ne[::-1]).astype(np.float64)


def raw_bytes(ptr: int) -> bytes:
    """A ggml tensor's storage bytes in logical order (element by element, or packed rows)."""
    tr, a = _storage(ptr)
    return b"" if a is None else np.ascontiguousarray(a).tobytes()


def pyggml_raw(t) -> bytes:
    """The same byte layout as raw_bytes(), for a pyggml tensor (for exact comparisons)."""
    from .. import data
    from ..types import TRAITS
    if any(x == 0 for x in t.ne):
        return b""
    if TRAITS[t.type].blck_size == 1:
        return np.ascontiguousarray(data.strided(t)).tobytes()
    return np.ascontiguousarray(data.row_bytes(t)).tobytes()


# --- conversions and quantization -------------------------------------------------------------

def quantize_chunk(type, f32, imatrix=None) -> bytes:
    """ggml_quantize_chunk over rows: 1-D input is one row, N-D input rows of shape[-1].

    `imatrix`: the quant_weights (n_per_row float32 values) or None."""
    g = lib()
    type = int(type)
    x = np.ascontiguousarray(f32, dtype=np.float32)
    if x.ndim == 0:
        x = x.reshape(1)
    n_per_row = x.shape[-1]
    nrows = x.size // n_per_row if n_per_row else 0
    tr = g.ggml_get_type_traits(type).contents
    if n_per_row % tr.blck_size:
        raise ShapeError(f"quantize_chunk {tr.type_name.decode()}: row of {n_per_row} values "
                         f"is not a multiple of the block size {tr.blck_size}")
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if qw.size != n_per_row:
            raise ShapeError(f"quantize_chunk: imatrix of {qw.size} values for rows of "
                             f"{n_per_row}")
    elif g.ggml_quantize_requires_imatrix(type):
        raise GGMLError(f"quantize_chunk: type {tr.type_name.decode()} needs an importance matrix")
    g.ggml_quantize_init(type)
    size = g.ggml_row_size(type, n_per_row) * nrows
    dst = np.zeros(max(size, 1), dtype=np.uint8)
    n = g.ggml_quantize_chunk(type, x, dst, 0, nrows, n_per_row, qw)
    if n != size:
        raise GGMLError(f"ggml_quantize_chunk wrote {n} bytes, expected {size}")
    return dst[:size].tobytes()


def dequantize(type, raw, n: int) -> np.ndarray:
    """n values from ggml-format bytes, through ggml's type_traits.to_float -> float32."""
    g = lib()
    type = int(type)
    tr = g.ggml_get_type_traits(type).contents
    if n % tr.blck_size:
        raise ShapeError(f"dequantize {tr.type_name.decode()}: {n} is not a multiple of "
                         f"{tr.blck_size}")
    need = tr.type_size * (n // tr.blck_size)
    src = np.frombuffer(bytes(raw), dtype=np.uint8)
    if src.size < need:
        raise DataError(f"dequantize {tr.type_name.decode()}: {n} values need {need} bytes, "
                        f"got {src.size}")
    if type == 0:
        return src[:need].view(np.float32).copy()
    if not tr.to_float:
        raise GGMLError(f"ggml type {tr.type_name.decode()} has no to_float")
    out = np.zeros(max(n, 1), dtype=np.float32)
    src = np.ascontiguousarray(src[:need])
    _TO_FLOAT(tr.to_float)(src.ctypes.data, out.ctypes.data, n)
    return out[:n]


def _row_fn(name, x, in_dt, out_dt):
    x = np.ascontiguousarray(x, dtype=in_dt)
    out = np.zeros(x.shape, dtype=out_dt)
    getattr(lib(), name)(x.reshape(-1), out.reshape(-1), x.size)
    return out


def fp32_to_fp16(arr) -> np.ndarray:
    """ggml_fp32_to_fp16_row: float32 -> uint16 bit patterns (IEEE half)."""
    return _row_fn("ggml_fp32_to_fp16_row", arr, np.float32, np.uint16)


def fp16_to_fp32(arr) -> np.ndarray:
    a = np.asarray(arr)
    a = a.view(np.uint16) if a.dtype == np.float16 else a
    return _row_fn("ggml_fp16_to_fp32_row", a, np.uint16, np.float32)


def fp32_to_bf16(arr) -> np.ndarray:
    """ggml_fp32_to_bf16_row: float32 -> uint16 bf16 bit patterns."""
    return _row_fn("ggml_fp32_to_bf16_row", arr, np.float32, np.uint16)


def bf16_to_fp32(arr) -> np.ndarray:
    return _row_fn("ggml_bf16_to_fp32_row", arr, np.uint16, np.float32)


# --- the mirror: a pyggml graph rebuilt and computed in real ggml -----------------------------

class Mirror:
    """Rebuild the graph of `outputs` (pyggml tensors, or a CGraph) in a ggml context.

    Leafs are copied with their current bytes (a leaf that is a view is rebuilt as a view
    of its copied root, so aliasing is preserved); nodes are made by their OpDef's `ggml`
    recipe. Each ggml node must have the pyggml node's type, ne and nb, otherwise the
    mirror raises GGMLError (a conformance bug). Use as a context manager or call close().
    """

    def __init__(self, outputs, *, strict_strides: bool = True, mem_extra: int = 0):
        from ..graph import CGraph
        from ..tensor import nbytes
        self.g = lib()
        if isinstance(outputs, CGraph):
            order = list(outputs.leafs) + list(outputs.nodes)
            self.outputs = list(outputs.nodes[-1:]) if outputs.nodes else []
            self._expand_all = list(outputs.nodes)
        else:
            if not isinstance(outputs, (list, tuple)):
                outputs = [outputs]
            gf = CGraph(size=1 << 20)
            for o in outputs:
                gf.expand(o)
            order = list(gf.leafs) + list(gf.nodes)
            self.outputs = list(outputs)
            self._expand_all = list(gf.nodes)
        self.order = order
        self.strict_strides = strict_strides
        self.tensors: dict[int, object] = {}    # id -> pyggml tensor (keeps ids alive)
        self.ptrs: dict[int, int] = {}          # id -> ggml tensor pointer
        n = len(order)
        total = sum(nbytes(t) for t in order) + sum(nbytes(t.view_src) for t in order
                                                    if t.view_src is not None)
        self.graph_size = max(2048, 4 * n + 64)
        mem = (4 * total + (8 * n + 64) * self.g.ggml_tensor_overhead()
               + self.g.ggml_graph_overhead_custom(self.graph_size, False) + (16 << 20) + mem_extra)
        self._ctx = context(mem)
        self.ctx = self._ctx.ptr
        self.gf = None
        self._threadpools: dict = {}
        self._work = None
        try:
            for t in order:
                self._mirror(t)
        except BaseException:
            self.close()
            raise

    # -- building ------------------------------------------------------------------------
    def ptr(self, t) -> int:
        return self.ptrs[id(t)]

    def _leaf(self, t) -> int:
        from .. import data
        g = self.g
        if t.view_src is not None:
            root = self._mirror_leaf_root(t.view_src)
            p = g.ggml_view_4d(self.ctx, root, *t.ne, *t.nb[1:], t.view_offs)
            tensor(p).nb[0] = t.nb[0]
        else:
            p = new_tensor(self.ctx, int(t.type), t.ne)
            if t.buffer is not None:
                set_bytes(p, data.tensor_get(t))
            else:                      # no data yet (no_alloc): zeros, like a fresh allocation
                ctypes.memset(data_ptr(p), 0, g.ggml_nbytes(p))
            if t.flags & 4:            # GGML_TENSOR_FLAG_PARAM (opt_step asserts it)
                g.ggml_set_param(p)
        g.ggml_set_name(p, (t.name or "").encode()[:MAX_NAME - 1])
        return p

    def _mirror_leaf_root(self, root) -> int:
        if id(root) not in self.ptrs:
            self.tensors[id(root)] = root
            self.ptrs[id(root)] = self._leaf(root)
        return self.ptrs[id(root)]

    def _mirror(self, t) -> int:
        if id(t) in self.ptrs:
            return self.ptrs[id(t)]
        if t.op is None:
            p = self._leaf(t)
        else:
            op = t.op
            if op.ggml is None:
                raise UnsupportedError(f"op {op.name} has no ggml recipe (OpDef.ggml is None); "
                                       f"cannot mirror node '{t.name}'")
            srcs = [self._mirror(s) if (s is not None and s is not t) else None for s in t.src]
            p = op.ggml(self.g, self.ctx, srcs, op.p(t), t)
            if not p:
                raise GGMLError(f"the ggml recipe of {op.name} returned NULL for node '{t.name}'")
            self._check(t, p)
        self.tensors[id(t)] = t
        self.ptrs[id(t)] = p
        return p

    def _check(self, t, p) -> None:
        s = tensor(p)
        ne, nb = list(s.ne), list(s.nb)
        bad = []
        if s.type != int(t.type):
            tn = self.g.ggml_type_name(s.type).decode()
            bad.append(f"type {tn} (pyggml {t.type.tname})")
        if ne != list(t.ne):
            bad.append(f"ne {ne} (pyggml {list(t.ne)})")
        elif self.strict_strides and nb != list(t.nb):
            bad.append(f"nb {nb} (pyggml {list(t.nb)})")
        if bad:
            raise GGMLError(f"conformance: ggml builds {t.op.name} node '{t.name}' with "
                            + ", ".join(bad))

    # -- computing -------------------------------------------------------------------------
    def compute(self, n_threads: int = 1) -> "Mirror":
        g = self.g
        if self.gf is None:
            self.gf = g.ggml_new_graph_custom(self.ctx, self.graph_size, False)
            for o in self.outputs:
                g.ggml_build_forward_expand(self.gf, self.ptrs[id(o)])
            for t in self._expand_all:        # nodes not reachable from the outputs
                g.ggml_build_forward_expand(self.gf, self.ptrs[id(t)])
        # a persistent threadpool per thread count, as llama.cpp keeps one: creating threads
        # on every call would cost ggml ~10 ms and make timings against it unfair
        tp = self._threadpools.get(n_threads)
        if tp is None and n_threads > 1:
            params = (ctypes.c_uint8 * 4096)()
            g.ggml_threadpool_params_init(params, int(n_threads))
            tp = g.ggml_threadpool_new(params)
            self._threadpools[n_threads] = tp
        plan = g.ggml_graph_plan(self.gf, int(n_threads), tp)
        if self._work is None or self._work.nbytes < int(plan.work_size) + 64:
            self._work = np.zeros(max(int(plan.work_size), 1) + 64, dtype=np.uint8)
        plan.work_data = self._work.ctypes.data
        status = g.ggml_graph_compute(self.gf, ctypes.byref(plan))
        if status != 0:
            raise GGMLError(f"ggml_graph_compute failed: "
                            f"{g.ggml_status_to_string(status).decode()}")
        return self

    def value(self, t) -> np.ndarray:
        return read(self.ptrs[id(t)])

    def raw(self, t) -> bytes:
        return raw_bytes(self.ptrs[id(t)])

    def results(self, raw: bool = False) -> dict:
        """{id(pyggml tensor): values (float64, ints as int64) or raw bytes} for every tensor."""
        out = {}
        for k, p in self.ptrs.items():
            try:
                out[k] = raw_bytes(p) if raw else read(p)
            except ShapeError:
                continue              # unpacked quantized views cannot be read (nor in pyggml)
        return out

    def pause(self) -> "Mirror":
        """Send the threadpools' workers to sleep: they poll for work (spin) long after a
        graph, which would steal the cores from whatever runs next in this process (a
        benchmark's other contender). The next compute resumes them."""
        for tp in self._threadpools.values():
            if tp:
                self.g.ggml_threadpool_pause(tp)
        return self

    def close(self) -> None:
        for tp in getattr(self, "_threadpools", {}).values():
            if tp:
                self.g.ggml_threadpool_free(tp)
        self._threadpools = {}
        if getattr(self, "_ctx", None) is not None:
            self._ctx.free()
            self._ctx = None
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def compute_graph(outputs, n_threads: int = 1, raw: bool = False, **kw) -> dict:
    """Mirror outputs' graph in ggml, compute it, return {id(tensor): values or raw bytes}."""
    with Mirror(outputs, **kw) as m:
        m.compute(n_threads)
        return m.results(raw=raw)


# --- isolation: ggml aborts the process on a failed GGML_ASSERT --------------------------------

def _child(conn, fn, args, kwargs, errfile):
    import faulthandler
    faulthandler.disable()                      # the parent reports the death, not a dump
    os.environ["GGML_NO_BACKTRACE"] = "1"      # no gdb attach on GGML_ASSERT, just the message
    fd = os.open(errfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    try:
        res = ("ok", fn(*args, **kwargs))
    except BaseException as e:      # report Python errors to the parent
        tb = traceback.format_exc()
        try:
            import pickle
            pickle.dumps(e)
            res = ("exc", (e, tb))
        except Exception:
            res = ("exc", (GGMLError(f"{type(e).__name__}: {e}"), tb))
    try:
        conn.send(res)
    except Exception as e:
        conn.send(("exc", (GGMLError(f"result of {fn!r} cannot be sent back: {e}"), "")))
    conn.close()
    sys.stderr.flush()


def run_isolated(fn, *args, timeout: float = 600.0, method: str = "fork", **kwargs):
    """Run fn(*args, **kwargs) in a child process; return its result or re-raise its error.

    If the child dies (a GGML_ASSERT abort, a segfault) or times out, raise GGMLError with
    the signal and the tail of its stderr (ggml's assert message). `method="fork"` (default)
    accepts closures; "spawn" needs a picklable fn and avoids inheriting thread pools."""
    import multiprocessing as mp
    import tempfile
    ctx = mp.get_context(method)
    parent, child = ctx.Pipe(duplex=False)
    fd, errfile = tempfile.mkstemp(prefix="pyggml-isolated-", suffix=".err")
    os.close(fd)
    try:
        p = ctx.Process(target=_child, args=(child, fn, args, kwargs, errfile), daemon=True)
        p.start()
        child.close()
        got = None
        if parent.poll(timeout):
            try:
                got = parent.recv()
            except EOFError:
                got = None
        p.join(5 if got is not None else timeout)
        if p.is_alive():
            p.kill()
            p.join()
            if got is None:
                raise GGMLError(f"isolated call {getattr(fn, '__name__', fn)} timed out "
                                f"after {timeout} s")
        if got is None:
            err = Path(errfile).read_text(errors="replace").strip()[-2000:]
            code = p.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise GGMLError(f"isolated call {getattr(fn, '__name__', fn)} died ({how})"
                            + (f": {err}" if err else ""))
        kind, val = got
        if kind == "ok":
            return val
        exc, tb = val
        raise exc
    finally:
        parent.close()
        try:
            os.unlink(errfile)
        except OSError:
            pass
