"""Llama-family models from GGUF files, and back.

`load_model(path)` reads the hyperparameters with llama.cpp's keys and defaults
(llama-model.cpp: load_hparams), checks every tensor's presence, type and shape against
them BEFORE anything is created (errors name the tensor and the file), then makes weight
tensors that point into the GGUFFile's copy-on-write map: nothing is copied, the pages are
read from the file as the graph touches them. A tied output (no `output.weight`) is
`token_embd.weight` itself. `save_gguf(model, path)` writes a file that load_model and
llama.cpp read.

Architectures (llama.cpp's rope type for each, llama_model_rope_type):
  llama  rope mode 0 (llama.cpp's converter permutes Q/K for it); optional q/k/v/o biases
  qwen2  rope mode 2 (NeoX); q/k/v biases required
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..context import Context
from ..context import tensor_overhead
from ..errors import ModelFileError
from ..tensor import Buffer
from ..tensor import Tensor
from ..tensor import set_name
from ..types import TRAITS
from ..types import GGMLType
from .gguf_file import GGUFFile

ROPE_NORM, ROPE_NEOX = 0, 2
# arch -> (rope mode, q/k/v biases required)
ARCHS = {"llama": (ROPE_NORM, False), "qwen2": (ROPE_NEOX, True)}
WEIGHT_ALIGN = 32       # weights at an address this aligned are used in place (GGUF's default)


def _open(src) -> GGUFFile:
    return src if isinstance(src, GGUFFile) else GGUFFile(src)


def _uniform(g: GGUFFile, key: str, required: bool = True, default=None):
    """A per-model integer that llama.cpp also accepts as a per-layer array (equal values)."""
    v = g.metadata.get(key)
    if v is None:
        if required:
            raise ModelFileError(f"{g.path}: GGUF metadata has no {key!r}")
        return default
    if isinstance(v, (list, np.ndarray)):
        vals = {int(x) for x in v}
        if len(vals) != 1:
            raise ModelFileError(f"{g.path}: {key} differs between layers ({sorted(vals)}); "
                                 f"pyggml's llama graph needs one value")
        return vals.pop()
    return int(v)


def config_from_gguf(src):
    """LlamaConfig from a GGUF's metadata (llama.cpp's keys and defaults)."""
    from ..models.llama import LlamaConfig
    g = _open(src)
    arch = g.arch
    if arch not in ARCHS:
        raise ModelFileError(f"{g.path}: architecture {arch!r} is not supported (pyggml runs "
                             f"{', '.join(sorted(ARCHS))})")
    md = g.metadata
    if int(md.get(f"{arch}.expert_count", 0) or 0) > 0:
        raise ModelFileError(f"{g.path}: mixture-of-experts models ({arch}.expert_count = "
                             f"{md[f'{arch}.expert_count']}) are not supported")
    n_embd = _uniform(g, f"{arch}.embedding_length")
    n_layer = _uniform(g, f"{arch}.block_count")
    n_head = _uniform(g, f"{arch}.attention.head_count")
    n_head_kv = _uniform(g, f"{arch}.attention.head_count_kv", False, n_head)
    if min(n_embd, n_layer, n_head, n_head_kv) <= 0 or n_head % n_head_kv:
        raise ModelFileError(f"{g.path}: bad hyperparameters: n_embd {n_embd}, n_layer "
                             f"{n_layer}, n_head {n_head}, n_head_kv {n_head_kv}")
    head_k = _uniform(g, f"{arch}.attention.key_length", False, n_embd // n_head)
    head_v = _uniform(g, f"{arch}.attention.value_length", False, n_embd // n_head)
    if head_k != head_v or head_k <= 0:
        raise ModelFileError(f"{g.path}: key_length {head_k} != value_length {head_v} is "
                             f"not supported")
    n_rot = _uniform(g, f"{arch}.rope.dimension_count", False, head_k)
    if arch == "llama" and n_rot != head_k:      # llama.cpp: "invalid n_rot"
        raise ModelFileError(f"{g.path}: invalid n_rot {n_rot}, expected {head_k}")
    scaling = str(md.get(f"{arch}.rope.scaling.type", "linear"))
    if scaling not in ("none", "linear"):
        raise ModelFileError(f"{g.path}: rope scaling {scaling!r} is not supported "
                             f"(none and linear are)")
    factor = float(md.get(f"{arch}.rope.scaling.factor", md.get(f"{arch}.rope.scale_linear", 0.0)))
    eps_key = f"{arch}.attention.layer_norm_rms_epsilon"
    n_vocab = md.get(f"{arch}.vocab_size")
    if n_vocab is None:
        toks = md.get("tokenizer.ggml.tokens")
        n_vocab = len(toks) if toks is not None else _tensor_ne(g, "token_embd.weight")[1]
    rope_type, _ = ARCHS[arch]
    return LlamaConfig(
        n_vocab=int(n_vocab), n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        n_head_kv=n_head_kv, n_ff=_uniform(g, f"{arch}.feed_forward_length"),
        rope_base=float(md.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_freq_scale=1.0 if factor == 0.0 else 1.0 / factor,
        n_ctx_train=_uniform(g, f"{arch}.context_length"),
        eps=float(g.require(eps_key)),
        n_rot=n_rot if n_rot != head_k else 0,
        n_embd_head=head_k if head_k != n_embd // n_head else 0,
        rope_type=rope_type, arch=arch)


def _tensor_ne(g: GGUFFile, name: str) -> tuple:
    t = g.tensors.get(name)
    if t is None:
        raise ModelFileError(f"{g.path}: missing tensor {name!r}")
    return t.ne


def _type_name(type_id: int) -> str:
    try:
        from gguf import GGMLQuantizationType
        return GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        return f"type {type_id}"


def check_tensors(g: GGUFFile, cfg) -> dict:
    """Every tensor present, of a type pyggml knows, of the shape cfg says: name ->
    (TensorInfo, GGMLType). Raises ModelFileError naming tensor and file; nothing is made."""
    out = {}
    from ..models.llama import weight_table
    for name, (ne, required, role) in weight_table(cfg, ARCHS[cfg.arch][1]).items():
        info = g.tensors.get(name)
        if info is None:
            if required:
                raise ModelFileError(f"{g.path}: missing tensor {name!r}")
            continue
        try:
            t = GGMLType(info.type_id)
            tr = TRAITS[t]
        except (ValueError, KeyError):
            raise ModelFileError(
                f"{g.path}: tensor {name!r} has type {_type_name(info.type_id)} (ggml type "
                f"{info.type_id}), which pyggml does not support") from None
        if role == "vector" and t != GGMLType.F32:
            raise ModelFileError(f"{g.path}: tensor {name!r} is {tr.tname}; pyggml needs F32 "
                                 f"for norms, biases and rope factors")
        if role == "matrix" and not (tr.is_float or tr.is_quantized):
            raise ModelFileError(f"{g.path}: tensor {name!r} has type {tr.tname}, which cannot "
                                 f"be a weight matrix")
        have = tuple(info.ne) + (1,) * (4 - len(info.ne))
        want = tuple(ne) + (1,) * (4 - len(ne))
        if have != want:
            raise ModelFileError(f"{g.path}: tensor {name!r} has shape {list(info.ne)}, "
                                 f"expected {list(ne)} for {cfg.arch} with n_embd {cfg.n_embd}, "
                                 f"n_head {cfg.n_head}/{cfg.n_head_kv}, head_dim {cfg.head_dim}, "
                                 f"n_ff {cfg.n_ff}, n_vocab {cfg.n_vocab}")
        out[name] = (info, t)
    return out


def load_model(src):
    """A LlamaModel whose weights live in the file's copy-on-write map (no copy).

    `src` is a path or an open GGUFFile; the model keeps the GGUFFile (`model.gguf`)."""
    from ..models.llama import LlamaModel
    g = _open(src)
    cfg = config_from_gguf(g)
    found = check_tensors(g, cfg)
    cfg = dataclasses.replace(cfg, wtype=TRAITS[found["blk.0.attn_q.weight"][1]].tname,
                              etype=TRAITS[found["token_embd.weight"][1]].tname)
    ctx = Context(tensor_overhead() * (len(found) + 1), no_alloc=True, name="weights")
    w = {}
    for name, (info, t) in found.items():
        x = ctx.new_tensor_impl(t, info.ne)
        set_name(x, name)
        raw = g.tensor_data(name)
        if raw.ctypes.data % WEIGHT_ALIGN:          # a file with a smaller alignment: copy
            buf = Buffer(raw.nbytes, name=name)
            buf.data[:] = raw
        else:
            buf = Buffer.from_array(raw, name=name)
        x.set_buffer(buf, 0)
        w[name] = x
    if "output.weight" not in w:                      # tied: the embedding itself
        w["output.weight"] = w["token_embd.weight"]
    model = LlamaModel(cfg, w, ctx)
    model.gguf = g
    return model


# --- writing ------------------------------------------------------------------------------
def _write_hparams(wr, cfg) -> None:
    wr.add_context_length(cfg.n_ctx_train)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_block_count(cfg.n_layer)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_head_count_kv(cfg.n_head_kv)
    wr.add_rope_dimension_count(cfg.rope_dims)
    wr.add_rope_freq_base(cfg.rope_base)
    if cfg.rope_freq_scale != 1.0:
        wr.add_rope_scaling_type(_rope_scaling_linear())
        wr.add_rope_scaling_factor(1.0 / cfg.rope_freq_scale)
    wr.add_layer_norm_rms_eps(cfg.eps)
    if cfg.n_embd_head:
        wr.add_key_length(cfg.n_embd_head)
        wr.add_value_length(cfg.n_embd_head)
    wr.add_vocab_size(cfg.n_vocab)


def _rope_scaling_linear():
    from gguf import RopeScalingType
    return RopeScalingType.LINEAR


def _byte_vocab(wr, n_vocab: int) -> None:
    """A vocabulary for a model without one (random weights), so that llama.cpp can load the
    file: GPT-2 byte-level tokens for the 256 bytes, then placeholders."""
    from gguf import TokenType
    # GPT-2's printable stand-ins for the 256 bytes (its bytes_to_unicode table)
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    byte_char = {b: chr(b if b in keep else next(extra)) for b in range(256)}
    toks = [byte_char[b] for b in range(256)] + [byte_char[32] * 2]    # and the one merge's
    toks = toks[:n_vocab] + [f"<unused{i}>" for i in range(n_vocab - len(toks))]
    types = [TokenType.NORMAL] * min(256, n_vocab) + [TokenType.USER_DEFINED] * (n_vocab - 256)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(toks)
    wr.add_token_types(types)
    wr.add_token_merges([f"{byte_char[32]} {byte_char[32]}"])
    wr.add_bos_token_id(0)
    wr.add_eos_token_id(0)
    wr.add_add_bos_token(False)


def add_kv(wr, key: str, value) -> None:
    """One metadata value into a GGUFWriter, typed as GGUF files usually hold it: bool, str,
    float -> F32, int -> U32, array of ints -> I32 / floats -> F32 / strings (empty arrays
    are skipped, as GGUFWriter.add_array does)."""
    if isinstance(value, bool):
        wr.add_bool(key, value)
    elif isinstance(value, str):
        wr.add_string(key, value)
    elif isinstance(value, float):
        wr.add_float32(key, value)
    elif isinstance(value, int):
        wr.add_uint32(key, value)
    elif isinstance(value, (np.ndarray, list)):
        wr.add_array(key, list(value.tolist() if isinstance(value, np.ndarray) else value))
    else:
        raise ModelFileError(f"GGUF metadata {key!r}: cannot write a {type(value).__name__}")


def save_gguf(model, path) -> None:
    """Write `model` as a GGUF file that load_model and llama.cpp read.

    Tensor data is written raw in its own type; GGUFWriter takes raw data with byte shapes
    (the last NumPy dimension in bytes) and converts them to element shapes. A tied output
    is not written twice. The vocabulary is copied from the model's source file if it has
    one, else a byte-level placeholder vocabulary is written."""
    from ..data import tensor_get
    try:
        from gguf import GGMLQuantizationType
        from gguf import GGUFWriter
    except ImportError as e:
        raise ModelFileError("writing GGUF needs the gguf package: "
                             "pip install 'pyggml[gguf]'") from e
    cfg = model.cfg
    wr = GGUFWriter(os.fspath(path), cfg.arch)
    src = getattr(model, "gguf", None)
    md = src.metadata if src is not None else {}
    for key, v in md.items():          # the source's description (name, license...) stays
        if key.startswith("general.") and key not in ("general.architecture",
                                                      "general.alignment"):
            add_kv(wr, key, v)
    if "general.name" not in md:
        wr.add_name("pyggml")
    _write_hparams(wr, cfg)
    if "tokenizer.ggml.model" in md:
        for key, v in md.items():
            if key.startswith("tokenizer."):
                add_kv(wr, key, v)
    else:
        _byte_vocab(wr, cfg.n_vocab)
    tied = model.w.get("output.weight") is model.w.get("token_embd.weight")
    for name, t in model.w.items():
        if tied and name == "output.weight":
            continue
        _add_tensor(wr, name, t, tensor_get, GGMLQuantizationType)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def _add_tensor(wr, name: str, t: Tensor, tensor_get, qtype) -> None:
    tr = TRAITS[t.type]
    ne = t.ne[:t.n_dims]
    byte_shape = list(ne[::-1])
    byte_shape[-1] = tr.row_size(ne[0])                # gguf wants bytes in the last dimension
    raw = np.frombuffer(tensor_get(t), dtype=np.uint8).reshape(byte_shape)
    wr.add_tensor(name, raw, raw_shape=byte_shape, raw_dtype=qtype(int(t.type)))
