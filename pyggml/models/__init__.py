"""Small model graphs built from pyggml ops (the demo's llama-style decoder)."""
from .llama import LlamaConfig, LlamaModel, Decoder  # noqa: F401
