"""Real models from GGUF files: loader, tokenizer, sampler, and `Llama` (llama-cpp-python's API)."""
from .gguf_file import GGUFFile, TensorInfo, open_gguf
from .model_path import KNOWN_MODELS, installed_model, resolve_model_path

__all__ = ["GGUFFile", "TensorInfo", "open_gguf", "KNOWN_MODELS", "installed_model",
           "resolve_model_path"]
