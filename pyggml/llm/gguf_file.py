"""GGUF files: metadata and tensor directory, read once, tensor data memory-mapped.

The gguf package's GGUFReader builds a NumPy view per string of the vocabulary (about
100k strings in a small model: ~3-5 s on these machines); this reader decodes the header in
one pass (~0.1 s) and keeps the file as one private copy-on-write memory map, so weights
are read in place (a graph that writes into a weight changes its own pages, never the
file). Every way a file can be wrong (missing, not GGUF, old version, truncated,
corrupt counts or types) is a ModelFileError that names the file. Writing stays with the
gguf package (GGUFWriter).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import ModelFileError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value types: id -> (struct code, byte size) for scalars; 8 = string, 9 = array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4),
            5: ("<i", 4), 6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8),
            12: ("<d", 8)}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
       10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9
_U64 = struct.Struct("<Q")

# ggml type id -> (block size, bytes per block) for every type a GGUF file may hold, so the
# directory can be checked against the file size even for types pyggml does not compute.
try:
    from gguf.constants import GGML_QUANT_SIZES as _GQ
    BLOCK_SIZES = {int(k): v for k, v in _GQ.items()}
except ImportError:          # the gguf extra is optional for reading; these are ggml's values
    BLOCK_SIZES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
                   8: (32, 34), 9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144),
                   13: (256, 176), 14: (256, 210), 15: (256, 292), 20: (32, 18),
                   23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
                   28: (1, 8), 30: (1, 2), 39: (32, 17)}


def value_str(v, true: str = "true", false: str = "false") -> str:
    """A metadata value as llama.cpp's gguf_kv_to_str prints it (floats as %f); llama-bench
    writes bools as 1/0."""
    if isinstance(v, bool):
        return true if v else false
    if isinstance(v, float):
        return f"{v:f}"
    return str(v)


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory. ne is ggml's order (ne[0] contiguous)."""
    name: str
    type_id: int          # ggml type id as stored (may be a type pyggml does not compute)
    ne: tuple
    offset: int           # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """A GGUF file opened for reading.

    `metadata` maps each key to a Python value (int, float, bool, str, or a list of them;
    numeric arrays are NumPy arrays). `tensors` maps names to TensorInfo in file order.
    `tensor_data(name)` is a zero-copy uint8 view of the tensor's bytes in the map."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ModelFileError(f"{self.path}: empty file, not a GGUF model")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.path}: is a directory, not a GGUF file") from None
        except PermissionError:
            raise ModelFileError(f"{self.path}: permission denied") from None
        self.size = size
        self._pos = 0
        self._parse()

    # --- reading primitives (every read is bounds-checked: a short file says "truncated") --
    def _need(self, n: int, what: str) -> int:
        p = self._pos
        if n < 0 or p + n > self.size:
            raise ModelFileError(f"{self.path}: truncated or corrupt GGUF: {what} needs "
                                 f"bytes [{p}, {p + n}) but the file has {self.size} bytes")
        self._pos = p + n
        return p

    def _scalar(self, vtype: int, what: str):
        code, n = _SCALARS[vtype]
        return struct.unpack_from(code, self._map, self._need(n, what))[0]

    def _string(self, what: str) -> str:
        n = self._scalar(10, what)
        p = self._need(n, what)
        raw = self._map[p:p + n]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="surrogateescape")

    def _strings(self, count: int, key: str) -> list:
        """A string array in one tight loop (a vocabulary has ~100k of them); the same
        checks as _string, messages built only on failure."""
        buf, size, pos, out = self._map, self.size, self._pos, []
        unpack = _U64.unpack_from
        for i in range(count):
            if pos + 8 > size:
                self._pos = pos
                self._need(8, f"length of string {i} of {key!r}")
            n = unpack(buf, pos)[0]
            end = pos + 8 + n
            if end > size:
                self._pos = pos + 8
                self._need(n, f"string {i} of {key!r}")
            out.append(buf[pos + 8:end].decode("utf-8", errors="surrogateescape"))
            pos = end
        self._pos = pos
        return out

    def _value(self, vtype: int, key: str):
        if vtype in _SCALARS:
            return self._scalar(vtype, f"value of {key!r}")
        if vtype == STRING:
            return self._string(f"value of {key!r}")
        if vtype == ARRAY:
            etype = self._scalar(4, f"array type of {key!r}")
            count = self._scalar(10, f"array length of {key!r}")
            if etype in _SCALARS:
                n = _SCALARS[etype][1] * count
                p = self._need(n, f"array {key!r} ({count} values)")
                arr = np.frombuffer(self._map, dtype=_NP[etype], count=count, offset=p)
                return arr.astype(bool) if etype == 7 else arr
            if etype == STRING:
                # each string takes at least its 8-byte length: a corrupt count is caught here
                self._need(0, f"array {key!r}")
                if count * 8 > self.size - self._pos:
                    raise ModelFileError(f"{self.path}: truncated or corrupt GGUF: array "
                                         f"{key!r} claims {count} strings")
                return self._strings(count, key)
            if etype == ARRAY:
                if count * 12 > self.size - self._pos:
                    raise ModelFileError(f"{self.path}: truncated or corrupt GGUF: array "
                                         f"{key!r} claims {count} nested arrays")
                return [self._value(ARRAY, key) for _ in range(count)]
            raise ModelFileError(f"{self.path}: corrupt GGUF: array {key!r} has element "
                                 f"type {etype}")
        raise ModelFileError(f"{self.path}: corrupt GGUF: key {key!r} has value type {vtype}")

    def _parse(self) -> None:
        magic = bytes(self._map[self._need(4, "magic"):4]) if self.size >= 4 else b""
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{self.path}: not a GGUF file (starts with {magic!r}, "
                                 f"expected {GGUF_MAGIC!r})")
        self.version = self._scalar(4, "version")
        if self.version not in (2, 3):
            raise ModelFileError(f"{self.path}: GGUF version {self.version} is not supported "
                                 "(2 and 3 are)")
        n_tensors = self._scalar(10, "tensor count")
        n_kv = self._scalar(10, "metadata count")
        # a key takes >= 12 bytes, a tensor entry >= 28: corrupt counts fail before any loop
        if n_kv * 12 + n_tensors * 28 > self.size:
            raise ModelFileError(f"{self.path}: truncated or corrupt GGUF header: {n_kv} metadata "
                                 f"keys and {n_tensors} tensors cannot fit in {self.size} bytes")
        md = {}
        for _ in range(n_kv):
            key = self._string("metadata key")
            vtype = self._scalar(4, f"type of {key!r}")
            md[key] = self._value(vtype, key)
        self.metadata = md
        infos = []
        for i in range(n_tensors):
            name = self._string(f"name of tensor {i}")
            n_dims = self._scalar(4, f"dimensions of {name!r}")
            if not 1 <= n_dims <= 4:
                raise ModelFileError(f"{self.path}: corrupt GGUF: tensor {name!r} has "
                                     f"{n_dims} dimensions")
            ne = tuple(self._scalar(10, f"shape of {name!r}") for _ in range(n_dims))
            type_id = self._scalar(4, f"type of {name!r}")
            offs = self._scalar(10, f"offset of {name!r}")
            infos.append((name, type_id, ne, offs))
        align = int(md.get("general.alignment", DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise ModelFileError(f"{self.path}: corrupt GGUF: general.alignment = {align}")
        self.alignment = align
        self.data_offset = -(-self._pos // align) * align
        tensors = {}
        for name, type_id, ne, offs in infos:
            if type_id not in BLOCK_SIZES:
                raise ModelFileError(f"{self.path}: tensor {name!r} has unknown ggml type "
                                     f"{type_id}")
            blck, tsize = BLOCK_SIZES[type_id]
            if ne[0] % blck:
                raise ModelFileError(f"{self.path}: corrupt GGUF: tensor {name!r} ne[0]={ne[0]} "
                                     f"is not a multiple of its type's block size {blck}")
            nbytes = int(np.prod(ne, dtype=np.int64)) // blck * tsize
            start = self.data_offset + offs
            if start + nbytes > self.size:
                raise ModelFileError(
                    f"{self.path}: truncated GGUF: tensor {name!r} needs bytes "
                    f"[{start}, {start + nbytes}) but the file has {self.size} bytes")
            if name in tensors:
                raise ModelFileError(f"{self.path}: corrupt GGUF: tensor {name!r} appears twice")
            tensors[name] = TensorInfo(name, type_id, ne, start, nbytes)
        self.tensors = tensors

    # --- access ---------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def require(self, key: str):
        """A metadata value the caller cannot do without; its absence names file and key."""
        if key not in self.metadata:
            raise ModelFileError(f"{self.path}: GGUF metadata has no {key!r}")
        return self.metadata[key]

    def tensor_data(self, name: str) -> np.ndarray:
        """The tensor's raw bytes: a uint8 view of the (copy-on-write) memory map, no copy."""
        t = self.tensors.get(name)
        if t is None:
            raise ModelFileError(f"{self.path}: no tensor {name!r}")
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def close(self) -> None:
        """Release the map (views handed out keep it alive until they are dropped)."""
        try:
            self._map.close()
        except BufferError:      # views still exported: the map closes when they go
            pass

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, v{self.version}, arch={self.arch!r}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")


def open_gguf(path) -> GGUFFile:
    return GGUFFile(path)
