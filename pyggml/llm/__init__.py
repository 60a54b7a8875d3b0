"""Real models from GGUF files: loader, tokenizer, sampler, and `Llama` (llama-cpp-python's API).

`Llama` and the loader are imported on first use, so `import pyggml.llm` stays cheap."""
from .gguf_file import GGUFFile
from .gguf_file import TensorInfo
from .gguf_file import open_gguf
from .model_path import KNOWN_MODELS
from .model_path import installed_model
from .model_path import resolve_model_path
from .tokenizer import Tokenizer
from .utf8 import StreamDecoder

__all__ = ["KNOWN_MODELS", "LLAMA_DEFAULT_SEED", "GGUFFile", "Llama", "StreamDecoder",
           "TensorInfo", "Tokenizer", "installed_model", "load_model", "open_gguf",
           "resolve_model_path", "save_gguf"]

_LAZY = {"Llama": "llama", "LLAMA_DEFAULT_SEED": "llama", "load_model": "loader",
         "save_gguf": "loader"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
