"""Small model graphs built from pyggml ops (the demo's llama-style decoder)."""
from .llama import Decoder, LlamaConfig, LlamaModel  # noqa: F401
