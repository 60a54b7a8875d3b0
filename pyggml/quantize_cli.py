"""`pyggml quantize IN.gguf OUT.gguf TYPE [nthreads]`: llama.cpp's llama-quantize.

The same type names (Q4_K_M, Q5_K_S, IQ4_XS, Q8_0, ... or their numeric ftypes), the same
per-tensor mixes (which tensors get more bits, and the fallback types for rows that are not
whole blocks) as llama.cpp's src/llama-quant.cpp, the same progress lines, and tensors
quantized by pyggml.quants (ggml_quantize_chunk, bit for bit), so the output's tensors are
byte-identical to llama-quantize's. Flags (llama-quantize's names and meanings):
--allow-requantize, --imatrix FILE (llama.cpp's GGUF imatrix or the legacy .dat),
--include-weights / --exclude-weights, --pure, --leave-output-tensor, --output-tensor-type,
--token-embedding-type, --tensor-type NAME=TYPE, --tensor-type-file, --keep-split (split
inputs are read whole either way), --prune-layers L0,L1,.. (drop those blocks, renumber the
rest, block_count updated; as in llama.cpp, output block j holds the data of input block j
and the imatrix entry of the block renamed to j),
--override-kv KEY=TYPE:VALUE (TYPE int, float, bool or str; written as llama.cpp's
gguf_set_val_* does: u32 of |int|, f32, bool, string; the key moves to the end of the
metadata; overrides of the keys the type choice reads count there too), --dry-run (the
per-tensor sizes and totals, nothing quantized or written).
"""
from __future__ import annotations

import argparse
import os
import re
import struct
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Optional

import numpy as np

from . import quants
from .errors import GGMLError
from .types import TRAITS
from .types import GGMLType
from .types import as_type

T = GGMLType

# llama_ftype values, llama-quantize's names (tools/quantize/quantize.cpp QUANT_OPTIONS) and
# each ftype's default tensor type (llama_ftype_get_default_type). Only ftypes whose tensor
# types pyggml has.
FTYPES = {
    "Q4_0": (2, T.Q4_0), "Q4_1": (3, T.Q4_1), "MXFP4_MOE": (38, T.MXFP4),
    "Q5_0": (8, T.Q5_0), "Q5_1": (9, T.Q5_1),
    "Q2_K": (10, T.Q2_K), "Q2_K_S": (21, T.Q2_K),
    "Q3_K_S": (11, T.Q3_K), "Q3_K_M": (12, T.Q3_K), "Q3_K_L": (13, T.Q3_K),
    "IQ4_NL": (25, T.IQ4_NL), "IQ4_XS": (30, T.IQ4_XS),
    "Q4_K_S": (14, T.Q4_K), "Q4_K_M": (15, T.Q4_K), "Q5_K_S": (16, T.Q5_K),
    "Q5_K_M": (17, T.Q5_K), "Q6_K": (18, T.Q6_K), "Q8_0": (7, T.Q8_0),
    "F16": (1, T.F16), "BF16": (32, T.BF16), "F32": (0, T.F32),
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION
MIN_CHUNK = 32 * 512


class QuantizeError(GGMLError):
    """A model that cannot be quantized as asked."""


def parse_ftype(s: str) -> str:
    name = ALIASES.get(s.upper(), s.upper())
    if name in FTYPES:
        return name
    if s.isdigit():
        for n, (v, _) in FTYPES.items():
            if v == int(s):
                return n
    raise QuantizeError(f"invalid quantization type {s!r} (pyggml has: "
                        f"{', '.join(list(FTYPES) + list(ALIASES))})")


# --- which type each tensor gets (llama-quant.cpp) -------------------------------------------

def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


_NO_QUANT = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup",
             "laurel", "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight",
             "indexer.k_proj.weight", "indexer.q_proj.weight", "attn_rel_b.weight",
             ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
             ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
_RWKV = ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2",
         "decay_w1", "decay_w2", "lerp_fused")


def allows_quantization(name: str, n_dims: int, quantize_output: bool = True) -> bool:
    """tensor_allows_quantization: 2-D and 3-D weights, not norms, gates, small tables."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if not quantize_output and name == "output.weight":
        return False
    if any(s in name for s in _NO_QUANT):
        return False
    if any(f"time_mix_{s}.weight" in name for s in _RWKV):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or \
        (i_layer - n_layers // 8) % 3 == 2


# Fallbacks when a row is not whole blocks of the chosen type (tensor_type_fallback).
FALLBACK = {T.IQ4_XS: T.IQ4_NL, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0,
            T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


@dataclass
class Model:
    """What the type choice needs from the GGUF metadata."""
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass
class Mixer:
    """quantize_state_impl + llama_tensor_get_type: the per-tensor type of an ftype."""
    model: Model
    ftype: str
    has_imatrix: bool = False
    pure: bool = False
    output_type: Optional[GGMLType] = None
    token_embd_type: Optional[GGMLType] = None
    tensor_types: list = field(default_factory=list)    # [(compiled regex, type)]
    n_attention_wv: int = 0
    has_tied_embeddings: bool = True
    i_attention_wv: int = 0
    i_ffn: dict = field(default_factory=lambda: {"ffn_down": 0, "ffn_gate": 0, "ffn_up": 0})
    n_fallback: int = 0
    warnings: list = field(default_factory=list)

    def count(self, names):
        """init_quantize_state_counters."""
        for n in names:
            c = category(n)
            if c in ("attn_v", "attn_qkv", "attn_kv_b"):
                self.n_attention_wv += 1
            if c == "output":
                self.has_tied_embeddings = False

    def _layer(self, cat: str, name: str) -> tuple[int, int]:
        i, n = self.i_ffn[cat], self.model.n_layer
        if max(1, self.model.n_expert) > 1:
            m = re.match(r"blk\.(\d+)\.", name)
            if not m or not 0 <= int(m.group(1)) < n:
                raise QuantizeError(f"cannot determine the layer of tensor {name}")
            i = int(m.group(1))
        return i, n

    def _impl(self, t: GGMLType, name: str, ne: list, cat: str) -> GGMLType:
        f, m, ne0 = self.ftype, self.model, ne[0]
        if cat == "output" or (self.has_tied_embeddings and cat == "token_embd"):
            if self.output_type is not None:
                return self.output_type
            if f == "MXFP4_MOE" or m.arch == "falcon" or ne0 % TRAITS[t].blck_size:
                return T.Q8_0
            return T.Q6_K if t != T.Q8_0 else t
        if f == "MXFP4_MOE":             # expert tensors (3-D) MXFP4, every other one Q8_0
            return T.MXFP4 if len(ne) > 2 and ne[2] > 1 else T.Q8_0
        if cat == "token_embd":
            return self.token_embd_type if self.token_embd_type is not None else t
        if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            i, n = self.i_attention_wv, self.n_attention_wv
            if f == "Q2_K":
                t = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
            elif f == "Q2_K_S" and m.n_gqa >= 4:
                t = T.Q4_K
            elif f == "Q3_K_M":
                t = T.Q5_K if i < 2 else T.Q4_K
            elif f == "Q3_K_L":
                t = T.Q5_K
            elif f in ("IQ4_NL", "IQ4_XS") and m.n_gqa >= 4:
                t = T.Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
                t = T.Q6_K
            elif f == "Q4_K_S" and i < 4:
                t = T.Q5_K
            if m.is_70b and t in (T.Q3_K, T.Q4_K):
                t = T.Q5_K
            if m.n_expert == 8:
                t = T.Q8_0
            self.i_attention_wv += 1
            return t
        if cat == "attn_k":
            return T.Q8_0 if m.n_expert == 8 else t
        if cat == "ffn_down":
            i, n = self._layer(cat, name)
            falcon = m.arch == "falcon"
            if f == "Q2_K":
                t = T.Q3_K
            elif f == "Q2_K_S":
                if i < n // 8:
                    t = T.Q4_K
            elif f == "Q3_K_M":
                t = T.Q5_K if i < n // 16 else (
                    T.Q4_K if not falcon or use_more_bits(i, n) else T.Q3_K)
            elif f == "Q3_K_L":
                t = T.Q4_K if falcon else T.Q5_K
            elif f == "Q4_K_M":
                if falcon:
                    t = T.Q6_K if i < n // 16 else (T.Q5_K if use_more_bits(i, n) else T.Q4_K)
                elif use_more_bits(i, n):
                    t = T.Q6_K
            elif i < n // 8 and f in ("IQ4_NL", "IQ4_XS") and not self.has_imatrix:
                t = T.Q5_K
            elif f == "Q5_K_M" and use_more_bits(i, n):
                t = T.Q6_K
            elif f == "Q4_K_S" and not falcon and i < n // 8:
                t = T.Q5_K
            elif f in ("Q4_0", "Q5_0") and self.has_imatrix and i < n // 8:
                t = T.Q4_1 if f == "Q4_0" else T.Q5_1
            self.i_ffn[cat] += 1
            return t
        if cat == "attn_output":
            if m.arch != "falcon":
                if m.n_expert == 8:
                    if f in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                             "IQ4_XS"):
                        t = T.Q5_K
                elif f == "Q2_K":
                    t = T.Q3_K
                elif f == "Q3_K_M":
                    t = T.Q4_K
                elif f == "Q3_K_L":
                    t = T.Q5_K
            elif f == "Q3_K_L":
                t = T.Q4_K
            return t
        if cat == "attn_qkv":      # reached only through the attn_v branch above
            return t
        if cat in ("ffn_gate", "ffn_up"):
            self.i_ffn[cat] += 1
        return t

    def tensor_type(self, name: str, cur: GGMLType, ne: list, n_dims: int,
                    default: GGMLType, quantize_output: bool = True) -> GGMLType:
        """llama_tensor_get_type (called once per tensor, in the file's sorted order)."""
        if not allows_quantization(name, n_dims, quantize_output):
            return cur
        cat = category(name)
        if self.token_embd_type is not None and cat == "token_embd":
            return self.token_embd_type
        if self.output_type is not None and cat == "output":
            return self.output_type
        t = default
        if TRAITS[default].is_quantized:
            manual = False
            for pattern, qt in self.tensor_types:      # --tensor-type: the first match wins,
                if pattern.search(name):               # also with --pure
                    if qt != t:
                        self.warnings.append(f"llama_tensor_get_type: {name:<36} - applying "
                                             f"manual override: {t.tname} -> {qt.tname}")
                    t = qt
                    manual = True
                    break
            if not manual and not self.pure:
                t = self._impl(t, name, ne, cat)
            t = self._fallback(name, ne[0], t)
        return t

    def _fallback(self, name: str, ncols: int, t: GGMLType) -> GGMLType:
        qk = TRAITS[t].blck_size
        if ncols % qk == 0:
            return t
        self.n_fallback += 1
        if t not in FALLBACK:
            raise QuantizeError(f"no tensor type fallback is defined for type {t.tname}")
        new = FALLBACK[t]
        msg = (f"warning: {name:<36} - ncols {ncols:6d} not divisible by {qk:3d} "
               f"(required for type {t.tname:>7}) ")
        if ncols % TRAITS[new].blck_size:
            msg += "(WARNING: must use F16 due to unusual shape) "
            new = T.F16
        self.warnings.append(msg + f"-> falling back to {new.tname:>7}")
        return new


# --- reading, converting, writing --------------------------------------------------------------

def layer_sort_key(name: str):
    """llama_model_loader's weight_name_comparer: by layer (blk.N., else -1), then name."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def _field_value(f):
    return f.contents()


def model_info(reader, overrides=()) -> Model:
    """The hyperparameters the type choice reads; --override-kv values of the right kind
    replace the file's, as in llama_model_loader (one of another kind is ignored)."""
    ovr = {k: (tag, v) for k, tag, v in overrides}

    def get(key, default=None):
        if key in ovr and ovr[key][0] == ("str" if key == "general.architecture" else "int"):
            return ovr[key][1]
        f = reader.fields.get(key)
        return default if f is None else _field_value(f)
    arch = get("general.architecture")
    if arch is None:
        raise QuantizeError("general.architecture is missing")
    n_head = get(f"{arch}.attention.head_count", 0)
    n_head_kv = get(f"{arch}.attention.head_count_kv", n_head)
    if isinstance(n_head, list):
        n_head = n_head[0]
    if isinstance(n_head_kv, list):
        n_head_kv = n_head_kv[0]
    return Model(arch=arch, n_layer=int(get(f"{arch}.block_count", 0)), n_head=int(n_head),
                 n_head_kv=int(n_head_kv), n_expert=int(get(f"{arch}.expert_count", 0)))


def tensor_f32(t) -> np.ndarray:
    """A GGUF tensor's values as float32 rows [nrows, ne0] (ggml's to_float)."""
    ty = as_type(int(t.tensor_type))
    ne = [int(x) for x in t.shape]
    n = int(np.prod(ne))
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    return quants.dequantize(ty, raw, n).reshape(-1, ne[0])


def load_imatrix(path: str) -> tuple[dict, dict]:
    """llama.cpp's importance matrix: GGUF (<name>.in_sum2 / <name>.counts) or legacy .dat.

    Returns ({tensor name: float32 weights}, metadata for the output's quantize.imatrix.*)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        import gguf
        r = gguf.GGUFReader(path)
        ts = {t.name: t for t in r.tensors}
        out = {}
        for name, t in ts.items():
            if not name.endswith(".in_sum2"):
                continue
            base = name[: -len(".in_sum2")]
            c = ts.get(base + ".counts")
            if c is None:
                continue
            counts = np.asarray(c.data, np.float32).reshape(-1)
            sums = np.asarray(t.data, np.float32).reshape(len(counts), -1)
            vals = np.where(counts[:, None] > 0, sums / np.where(counts > 0, counts, 1)[:, None],
                            np.float32(1)).astype(np.float32)
            out[base] = vals.reshape(-1)
        chunks = r.fields.get("imatrix.chunk_count")
        meta = {"chunks": int(chunks.contents()) if chunks else 0}
        ds = r.fields.get("imatrix.datasets")
        if ds is not None:
            meta["dataset"] = ds.contents()[0] if ds.contents() else ""
        return out, meta
    out = {}
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        o = 0
        (n,) = struct.unpack_from("<i", data, o)
        o += 4
        for _ in range(n):
            (ln,) = struct.unpack_from("<i", data, o)
            name = data[o + 4:o + 4 + ln].decode()
            o += 4 + ln
            ncall, nval = struct.unpack_from("<ii", data, o)
            o += 8
            v = np.frombuffer(data, np.float32, nval, o).copy()
            o += 4 * nval
            if ncall > 0:
                v = (v / np.float32(ncall)).astype(np.float32)
            out[name] = v
        meta = {"chunks": 0}
        if o + 4 <= len(data):
            (meta["chunks"],) = struct.unpack_from("<i", data, o)
            o += 4
            if o + 4 <= len(data):
                (ln,) = struct.unpack_from("<i", data, o)
                meta["dataset"] = data[o + 4:o + 4 + ln].decode(errors="replace")
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise QuantizeError(f"{path}: not an importance matrix file ({e})") from None
    return out, meta


def _shape_str(ne) -> str:
    """llama_format_tensor_shape: all four dims."""
    ne = list(ne) + [1] * (4 - len(ne))
    return ", ".join(f"{int(x):6d}" for x in ne)


def parse_tensor_type(arg: str) -> tuple:
    """--tensor-type NAME=TYPE: (regex searched in tensor names, lowercased as llama.cpp
    does, type)."""
    name, sep, tname = arg.partition("=")
    if not sep:
        raise QuantizeError(f"malformed tensor type {arg!r} (expected NAME=TYPE)")
    if not name:
        raise QuantizeError(f"missing tensor name in {arg!r}")
    if not tname:
        raise QuantizeError(f"missing quantization type in {arg!r}")
    try:
        pattern = re.compile(name.lower())
    except re.error as e:
        raise QuantizeError(f"invalid tensor name pattern {name!r}: {e}") from None
    return pattern, parse_ggml_type(tname)


def parse_ggml_type(s: str) -> GGMLType:
    try:
        return as_type(s)
    except (GGMLError, KeyError, ValueError):
        raise QuantizeError(f"invalid ggml_type {s!r}") from None


def parse_kv_override(arg: str) -> tuple:
    """--override-kv KEY=TYPE:VALUE (common's string_parse_kv_override): (key, type, value),
    type one of int, float, bool, str; int and float values read as C's atol / atof do
    (the longest numeric prefix, 0 if none)."""
    key, sep, rest = arg.partition("=")
    if not sep or len(key) >= 128:
        raise QuantizeError(f"malformed KV override {arg!r}")
    tag, sep, val = rest.partition(":")
    if not sep or tag not in ("int", "float", "bool", "str"):
        raise QuantizeError(f"invalid type for KV override {arg!r}")
    if tag == "int":
        m = re.match(r"\s*[+-]?\d+", val)
        return key, tag, int(m.group()) if m else 0
    if tag == "float":
        m = re.match(r"\s*[+-]?(inf(inity)?|nan|(\d+\.?\d*|\.\d+)(e[+-]?\d+)?)", val, re.I)
        return key, tag, float(m.group()) if m else 0.0
    if tag == "bool":
        if val not in ("true", "false"):
            raise QuantizeError(f"invalid boolean value for KV override {arg!r}")
        return key, tag, val == "true"
    if len(val) > 127:
        raise QuantizeError(f"malformed KV override {arg!r}, value cannot exceed 127 chars")
    return key, tag, val


def parse_prune_layers(arg: str) -> list:
    """--prune-layers L0,L1,..: sorted unique layer ids (parse_layer_prune: stoi of each
    comma-separated part, a negative or unparsable id is an error)."""
    ids = []
    for part in arg.split(","):
        m = re.match(r"\s*[+-]?\d+", part)
        i = int(m.group()) if m else -1
        if i < 0:
            raise QuantizeError(f"invalid layer id {part!r}")
        ids.append(i)
    return sorted(set(ids))


_BLK = re.compile(r"blk\.(\d+)\.")


def prune_names(names: list, prune: list) -> dict:
    """remap_layer over the names in the loader's order: {name: new name, or None when its
    block is pruned}. Blocks below the first pruned id keep their number, the others are
    renumbered in order of appearance; also returns the new block count."""
    mapped, next_id, out = {}, 0, {}
    for n in names:
        m = _BLK.search(n)
        if not prune or m is None:
            out[n] = n
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in prune:
                mapped[blk] = None
            elif blk < prune[0]:
                mapped[blk] = blk
                next_id = blk + 1
            else:
                mapped[blk] = next_id
                next_id += 1
        new = mapped[blk]
        out[n] = None if new is None else n[:m.start(1)] + str(new) + n[m.end(1):]
    return out, next_id


def filter_imatrix(imat: dict, include=(), exclude=()) -> dict:
    """--include-weights / --exclude-weights: keep (drop) entries whose name contains one of
    the strings (prepare_imatrix)."""
    if include and exclude:
        raise QuantizeError("--include-weights and --exclude-weights cannot be used together")
    if exclude:
        imat = {k: v for k, v in imat.items() if not any(x in k for x in exclude)}
    if include:
        imat = {k: v for k, v in imat.items() if any(x in k for x in include)}
    return imat


_SPLIT_NAME = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


def _reader(path: str):
    """gguf.GGUFReader of a file pyggml's own parser accepted first: on a truncated or
    corrupt file the reader fails with numpy's reshape/view errors, pyggml's names the file
    and says "truncated"."""
    import gguf

    from .llm.gguf_file import GGUFFile
    GGUFFile(path).close()
    return gguf.GGUFReader(path)


def open_shards(inp: str) -> list:
    """GGUFReaders of a model file, or of all its shards (split.count > 1: the first shard's
    PREFIX-00001-of-0000N.gguf name gives the others', as llama_model_loader finds them)."""
    first = _reader(inp)
    f = first.fields.get("split.count")
    n = int(f.contents()) if f is not None else 1
    if n <= 1:
        return [first]
    m = _SPLIT_NAME.match(inp)
    if m is None or int(m.group(2)) != 1:
        raise QuantizeError(f"{inp}: split {n} ways, but not named PREFIX-00001-of-{n:05d}.gguf")
    out = [first]
    for i in range(2, n + 1):
        path = f"{m.group(1)}-{i:05d}-of-{n:05d}.gguf"
        if not os.path.exists(path):
            raise QuantizeError(f"{inp}: shard {path} not found")
        out.append(_reader(path))
    return out


def split_paths(out: str, n: int) -> list:
    """--keep-split outputs: llama_split_path of out without its .gguf suffix."""
    prefix = out[:-5] if out.endswith(".gguf") else out
    return [f"{prefix}-{i + 1:05d}-of-{n:05d}.gguf" for i in range(n)]


def _set_kv(writer, key: str, val, vtype, sub_type=None) -> None:
    """gguf_set_val_*: replace the key, which moves to the end of the metadata."""
    writer.kv_data[0].pop(key, None)
    writer.add_key_value(key, val, vtype, sub_type=sub_type)


def quantize_file(inp: str, out: str, ftype_name: str, *, allow_requantize=False,
                  imatrix: Optional[str] = None, pure=False, leave_output=False,
                  output_type=None, token_embd_type=None, tensor_types=(),
                  include_weights=(), exclude_weights=(), keep_split=False,
                  kv_overrides=(), prune_layers=(), dry_run=False, log=print) -> dict:
    """llama_model_quantize. Returns {tensor name: (type, nbytes)} of the written file(s)
    (with dry_run: of the file it would write; nothing is quantized or written).

    A split input (PREFIX-00001-of-0000N.gguf) is read whole; it is written as one file, or
    with keep_split as N shards holding the input shards' tensors (metadata in the first,
    split.no / split.count / split.tensors.count in each). kv_overrides: (key, type, value)
    from parse_kv_override; prune_layers: sorted layer ids (parse_prune_layers)."""
    import gguf
    ftype_id, default = FTYPES[ftype_name]
    shards = open_shards(inp)
    reader = shards[0]
    shard_of = {t.name: i for i, r in enumerate(shards) for t in r.tensors}
    model = model_info(reader, kv_overrides)
    imat, imeta = load_imatrix(imatrix) if imatrix else ({}, {})
    imat = filter_imatrix(imat, include_weights, exclude_weights)
    if imat:
        log(f"load_imatrix: loaded {len(imat)} importance matrix entries from {imatrix}")
        for k, v in imat.items():
            if not np.all(np.isfinite(v)):
                raise QuantizeError(f"imatrix contains non-finite value for {k}")
    mixer = Mixer(model, ftype_name, has_imatrix=bool(imat), pure=pure,
                  output_type=output_type, token_embd_type=token_embd_type,
                  tensor_types=list(tensor_types))
    every = sorted((t for r in shards for t in r.tensors), key=lambda t: layer_sort_key(t.name))
    n_input = len(every)                          # ml.n_tensors / ml.n_elements: pruned too
    n_elements = sum(int(np.prod([int(x) for x in t.shape])) for t in every)
    renamed, n_blocks = prune_names([t.name for t in every], list(prune_layers))
    tensors = [t for t in every if renamed[t.name] is not None]
    by_name = {t.name: t for t in every}
    mixer.count(renamed[t.name] for t in tensors)
    targets = {}
    needs_imatrix = False
    for t in tensors:
        ne = [int(x) for x in t.shape]
        cur = as_type(int(t.tensor_type))
        targets[t.name] = mixer.tensor_type(renamed[t.name], cur, ne, len(ne), default,
                                            quantize_output=not leave_output)
        if targets[t.name] == T.Q2_K and ftype_name == "Q2_K_S" and not imat and \
                category(renamed[t.name]) not in ("token_embd", "output"):
            if not dry_run:
                raise QuantizeError(f"this quantization requires an importance matrix "
                                    f"(tensor {renamed[t.name]}, type {targets[t.name].tname})")
            needs_imatrix = True
    for w in mixer.warnings:
        log(w)

    n_out = len(shards) if keep_split else 1
    paths = split_paths(out, n_out) if keep_split else [out]
    writers = [gguf.GGUFWriter(p, model.arch) for p in paths] if not dry_run else []
    for w in writers[1:]:                  # later shards: only the split keys
        w.kv_data[0].pop("general.architecture", None)
    writer = writers[0] if writers else None
    skip = {"general.architecture", "general.file_type", "general.quantization_version",
            "split.no", "split.count", "split.tensors.count"}
    # the input's metadata, then what llama_model_quantize_impl sets, in its order
    if writer is not None:
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or key in skip:
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
            writer.add_key_value(key, f.contents(), vtype, sub_type=sub)
        writer.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
        writer.add_uint32("general.file_type", ftype_id)
        V = gguf.GGUFValueType
        overrides = list(kv_overrides)
        if imat:                           # quantize.cpp passes these as overrides too
            overrides.append(("quantize.imatrix.file", "str", imatrix))
            if "dataset" in imeta:
                overrides.append(("quantize.imatrix.dataset", "str", imeta["dataset"]))
            overrides.append(("quantize.imatrix.entries_count", "int", len(imat)))
            if imeta.get("chunks", 0) > 0:
                overrides.append(("quantize.imatrix.chunks_count", "int", imeta["chunks"]))
        for key, tag, val in overrides:
            if tag == "int":               # llama.cpp writes every int override as u32
                _set_kv(writer, key, abs(int(val)) & 0xFFFFFFFF, V.UINT32)
            elif tag == "float":
                _set_kv(writer, key, float(val), V.FLOAT32)
            elif tag == "bool":
                _set_kv(writer, key, bool(val), V.BOOL)
            else:
                _set_kv(writer, key, str(val), V.STRING)
        if prune_layers:
            _set_kv(writer, f"{model.arch}.block_count", n_blocks, V.UINT32)
        if n_out > 1:
            for i, w in enumerate(writers):
                w.add_uint16("split.no", i)
                w.add_uint16("split.count", n_out)
                w.add_int32("split.tensors.count", len(tensors))

    written = {}
    total_org = total_new = 0
    t_start = time.perf_counter()
    for idx, t in enumerate(tensors, 1):
        name = renamed[t.name]
        ne = [int(x) for x in t.shape]
        cur = as_type(int(t.tensor_type))
        new = targets[t.name]
        # llama.cpp reads a renamed (pruned-model) tensor's data by its new name: block j of
        # the output holds the input's block j (load_data_for), typed and shaped as the
        # tensor that took the name, its imatrix found by the old name
        src = by_name.get(name)
        if src is None:
            raise QuantizeError(f"tensor '{name}' not found in the model")
        if src is not t and ([int(x) for x in src.shape] != ne or int(src.tensor_type) != cur):
            raise QuantizeError(f"tensor '{name}' (renamed from {t.name}) differs in shape or "
                                f"type from the input's {name}")
        raw = np.asarray(src.data).reshape(-1).view(np.uint8)
        size = raw.size
        line = (f"[{idx:4d}/{n_input:4d}] {name:<36} - [{_shape_str(ne)}], "
                f"type = {cur.tname:>6}, ")
        if dry_run:
            nrows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
            new_size = nrows * TRAITS[new].row_size(ne[0]) if new != cur else size
            if new != cur:
                log(line + f"size = {size / 1024 / 1024:8.2f} MiB -> "
                    f"{new_size / 1024 / 1024:8.2f} MiB ({new.tname})")
            else:
                log(line + f"size = {size / 1024 / 1024:8.3f} MiB")
            total_org += size
            total_new += new_size
            written[name] = (new, new_size)
            continue
        if new == cur:
            data = raw
            log(line + f"size = {size / 1024 / 1024:8.3f} MiB")
        else:
            if TRAITS[cur].is_quantized and not allow_requantize:
                raise QuantizeError(f"requantizing from type {cur.tname} is disabled "
                                    f"(tensor {name}; pass --allow-requantize)")
            if cur not in (T.F32, T.F16, T.BF16) and not TRAITS[cur].is_quantized:
                raise QuantizeError(f"cannot dequantize/convert tensor type {cur.tname} "
                                    f"(tensor {name})")
            qw = None
            if imat:                       # looked up by the name before pruning
                w = imat.get(t.name)
                if w is None:
                    log(f"\n====== quantize: did not find weights for {name}")
                elif w.size == ne[0] * (ne[2] if len(ne) > 2 else 1):
                    qw = w
                elif category(name) != "token_embd":
                    raise QuantizeError(f"imatrix size {w.size} is different from tensor "
                                        f"size {ne[0] * (ne[2] if len(ne) > 2 else 1)} for "
                                        f"{name}")
            x = tensor_f32(src)
            log(line + f"converting to {new.tname} .. ", end="")
            data = _quantize_tensor(new, x, ne, qw)
            log(f"size = {size / 1024 / 1024:8.2f} MiB -> {data.size / 1024 / 1024:8.2f} MiB")
        total_org += size
        total_new += data.size
        writer = writers[shard_of[t.name] if keep_split else 0]
        row = TRAITS[new].row_size(ne[0])
        if TRAITS[new].is_quantized:
            arr = data.reshape(*ne[:0:-1], row) if len(ne) > 1 else data.reshape(row)
            writer.add_tensor(name, arr, raw_dtype=gguf.GGMLQuantizationType(int(new)))
        else:
            dt = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16}.get(new)
            if dt is None:
                arr = data
                writer.add_tensor(name, arr, raw_shape=ne[::-1],
                                  raw_dtype=gguf.GGMLQuantizationType(int(new)))
            elif new == T.BF16:
                writer.add_tensor(name, data.view(np.uint16).reshape(ne[::-1]),
                                  raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                writer.add_tensor(name, data.view(dt).reshape(ne[::-1]))
        written[name] = (new, data.size)
    for w in writers:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    log(f"llama_model_quantize_impl: model size  = {total_org / 1024 / 1024:8.2f} MiB "
        f"({total_org * 8.0 / max(n_elements, 1):.2f} BPW)")
    log(f"llama_model_quantize_impl: quant size  = {total_new / 1024 / 1024:8.2f} MiB "
        f"({total_new * 8.0 / max(n_elements, 1):.2f} BPW)")
    if dry_run and needs_imatrix:
        log("llama_model_quantize_impl: WARNING: dry run completed successfully, but actually "
            "completing this quantization will require an imatrix!")
    if mixer.n_fallback:
        log(f"llama_model_quantize_impl: WARNING: {mixer.n_fallback} of {n_input} "
            f"tensor(s) required fallback quantization")
    log(f"\nmain: quantize time = {(time.perf_counter() - t_start) * 1000:10.2f} ms")
    return written


def _quantize_tensor(new: GGMLType, x: np.ndarray, ne: list, qw) -> np.ndarray:
    """Rows [nrows, ne0] -> bytes of type new; per expert matrix with its own imatrix slice."""
    n_mat = ne[2] if len(ne) > 2 else 1
    per = x.shape[0] // max(n_mat * (ne[3] if len(ne) > 3 else 1), 1)
    if qw is None or not quants.takes_imatrix(new):
        return np.frombuffer(quants.quantize(new, x), np.uint8)
    parts = []
    for i in range(x.shape[0] // per):
        w = qw[(i % n_mat) * ne[0]:(i % n_mat + 1) * ne[0]]
        parts.append(np.frombuffer(quants.quantize(new, x[i * per:(i + 1) * per], imatrix=w),
                                   np.uint8))
    return np.concatenate(parts)


def positional_args(files: list, dry_run=False, keep_split=False) -> tuple:
    """IN [OUT] TYPE [nthreads] as llama-quantize reads them: (input, output, ftype name).
    When the second word is a type, the output is ggml-model-TYPE.gguf in IN's directory
    (no suffix with --keep-split; none at all for --dry-run)."""
    if len(files) < 2:
        raise QuantizeError("bad arguments: expected IN [OUT] TYPE [nthreads]")
    inp, rest = files[0], files[1:]
    try:
        ftype = parse_ftype(rest[0])
        d = os.path.dirname(inp)
        out = None if dry_run else os.path.join(d, f"ggml-model-{ftype}") + \
            ("" if keep_split else ".gguf")
        rest = rest[1:]
    except QuantizeError:
        out, rest = rest[0], rest[1:]
        if not rest:
            raise QuantizeError("missing ftype") from None
        ftype = parse_ftype(rest[0])
        rest = rest[1:]
    if rest and not re.match(r"\s*[+-]?\d", rest[0]):          # std::stoi
        raise QuantizeError(f"invalid nthread {rest[0]!r}")
    if out is not None and os.path.exists(inp) and os.path.exists(out) and \
            os.path.samefile(inp, out):
        raise QuantizeError(f"input and output files are the same: '{inp}'")
    return inp, out, ftype


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pyggml quantize",
                                 description="llama-quantize: quantize a GGUF model file")
    ap.add_argument("files", nargs="+", metavar="IN [OUT] TYPE [nthreads]",
                    help="TYPE: Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS, ... or an ftype number; "
                         "without OUT the output is ggml-model-TYPE.gguf beside IN; nthreads "
                         "is accepted for llama-quantize compatibility (single process)")
    ap.add_argument("--allow-requantize", action="store_true")
    ap.add_argument("--leave-output-tensor", action="store_true")
    ap.add_argument("--pure", action="store_true")
    ap.add_argument("--imatrix", metavar="FILE")
    ap.add_argument("--include-weights", metavar="NAME", action="append", default=[],
                    help="use the importance matrix only for tensors whose name contains NAME")
    ap.add_argument("--exclude-weights", metavar="NAME", action="append", default=[],
                    help="do not use the importance matrix for tensors whose name contains NAME")
    ap.add_argument("--output-tensor-type", metavar="TYPE")
    ap.add_argument("--token-embedding-type", metavar="TYPE")
    ap.add_argument("--tensor-type", metavar="NAME=TYPE", action="append", default=[],
                    help="quantize tensors matching the regex NAME to TYPE (repeatable; the "
                         "first match wins), e.g. attn_q=q8_0")
    ap.add_argument("--tensor-type-file", metavar="FILE",
                    help="NAME=TYPE entries separated by spaces or newlines")
    ap.add_argument("--prune-layers", metavar="L0,L1,..",
                    help="comma-separated layer numbers to prune from the model")
    ap.add_argument("--override-kv", metavar="KEY=TYPE:VALUE", action="append", default=[],
                    help="override model metadata by key in the output (TYPE: int, float, "
                         "bool, str); repeatable")
    ap.add_argument("--dry-run", action="store_true",
                    help="show the per-tensor and total sizes without quantizing")
    ap.add_argument("--keep-split", action="store_true",
                    help="write the output in the same shards as the input "
                         "(OUT without .gguf, then -0000i-of-0000n.gguf)")
    args = ap.parse_args(argv)
    try:
        args.input, args.output, ftype = positional_args(args.files, args.dry_run,
                                                         args.keep_split)
        ot = parse_ggml_type(args.output_tensor_type) if args.output_tensor_type else None
        et = parse_ggml_type(args.token_embedding_type) if args.token_embedding_type else None
        specs = list(args.tensor_type)
        if args.tensor_type_file:
            with open(args.tensor_type_file, encoding="utf-8") as fh:
                specs += fh.read().split()
        tts = [parse_tensor_type(x) for x in specs]
        kvo = [parse_kv_override(x) for x in args.override_kv]
        prune = parse_prune_layers(args.prune_layers) if args.prune_layers is not None else []
        if args.dry_run:
            print(f"main: calculating quantization size for '{args.input}' as {ftype}")
        else:
            print(f"main: quantizing '{args.input}' to '{args.output}' as {ftype}")
        quantize_file(args.input, args.output, ftype, allow_requantize=args.allow_requantize,
                      imatrix=args.imatrix, pure=args.pure, leave_output=args.leave_output_tensor,
                      output_type=ot, token_embd_type=et, tensor_types=tts,
                      include_weights=args.include_weights, exclude_weights=args.exclude_weights,
                      keep_split=args.keep_split, kv_overrides=kvo, prune_layers=prune,
                      dry_run=args.dry_run, log=lambda *a, **k: print(*a, **k, flush=True))
    except (GGMLError, OSError, ValueError) as e:
        print(f"pyggml quantize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
