"""Real models from GGUF files: loader, tokenizer, sampler, and `Llama` (llama-cpp-python's API)."""
from .gguf_file import GGUFFile, TensorInfo, open_gguf
from .model_path import KNOWN_MODELS, installed_model, resolve_model_path
from .tokenizer import Tokenizer
from .utf8 import StreamDecoder

__all__ = ["KNOWN_MODELS", "GGUFFile", "StreamDecoder", "TensorInfo", "Tokenizer",
           "installed_model", "open_gguf", "resolve_model_path"]
