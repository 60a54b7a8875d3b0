"""What llama.cpp's tools print about a model: llama_model_desc ("llama 256M Q4_1"), its
size in bytes and parameter count (llama_model_size / llama_model_n_params), read from the
GGUF's metadata and tensor directory without loading weights."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .gguf_file import GGUFFile

# llama.cpp's llm_type per architecture, chosen by layer count (llama-model.cpp load_hparams);
# a value is a name or a function of the hyperparameters
_SIZE_TYPES = {
    "llama": {16: "1B", 22: "1B", 26: "3B", 28: "3B", 30: "256M",
              32: lambda h: "3B" if h["n_vocab"] == 49152 else ("7B" if h["n_vocab"] < 40000 else "8B"),
              36: "8B", 40: "13B", 48: "34B", 60: "30B",
              80: lambda h: "65B" if h["n_head"] == h["n_head_kv"] else "70B"},
    "qwen2": {24: lambda h: "0.5B" if h["n_embd"] == 1024 else "1B",
              28: lambda h: "1.5B" if h["n_embd"] == 1536 else "7B",
              32: "7B", 36: "3B", 40: lambda h: "4B" if h["n_head"] == 20 else "13B",
              48: "14B", 64: "32B", 80: "70B"},
}
# general.file_type -> llama_model_ftype_name
_FTYPES = {0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
           10: "Q2_K - Medium", 11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large",
           14: "Q4_K - Small", 15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium",
           18: "Q6_K", 21: "Q2_K - Small", 32: "BF16"}
_GUESSED = 1024


@dataclass(frozen=True)
class ModelInfo:
    path: str
    desc: str             # llama_model_desc
    size: int             # bytes of all tensors
    n_params: int         # elements of all tensors
    n_vocab: int
    bos: Optional[int]    # the BOS id when the model adds one

    @classmethod
    def read(cls, path: str) -> "ModelInfo":
        g = GGUFFile(path)
        try:
            md, arch = g.metadata, g.arch
            n_head = int(_first(md.get(f"{arch}.attention.head_count", 0)))
            toks = md.get("tokenizer.ggml.tokens")
            n_vocab = int(md.get(f"{arch}.vocab_size") or (len(toks) if toks is not None else
                          g.tensors["token_embd.weight"].ne[1] if "token_embd.weight" in g.tensors else 0))
            hp = {"n_layer": int(md.get(f"{arch}.block_count", 0)), "n_vocab": n_vocab,
                  "n_embd": int(md.get(f"{arch}.embedding_length", 0)), "n_head": n_head,
                  "n_head_kv": int(_first(md.get(f"{arch}.attention.head_count_kv", n_head)))}
            size_type = _SIZE_TYPES.get(arch, {}).get(hp["n_layer"], "?B")
            if callable(size_type):
                size_type = size_type(hp)
            desc = f"{arch} {size_type} {ftype_name(md.get('general.file_type'))}"
            add_bos = bool(md.get("tokenizer.ggml.add_bos_token", False))
            bos = md.get("tokenizer.ggml.bos_token_id")
            return cls(g.path, desc, sum(t.nbytes for t in g.tensors.values()),
                       sum(int(np.prod(t.ne)) for t in g.tensors.values()), n_vocab,
                       int(bos) if add_bos and bos is not None else None)
        finally:
            g.close()


def _first(v):
    return v[0] if isinstance(v, (list, np.ndarray)) else v


def ftype_name(ftype) -> str:
    """llama_model_ftype_name for general.file_type (llama.cpp's names)."""
    if ftype is None:
        return "all F32"
    ftype = int(ftype)
    name = _FTYPES.get(ftype & ~_GUESSED, "unknown, may not work")
    return name + " (guessed)" if ftype & _GUESSED else name
