"""Small model graphs built from pyggml ops (the demo's llama-style decoder)."""
from .llama import Decoder  # noqa: F401
from .llama import LlamaConfig  # noqa: F401
from .llama import LlamaModel  # noqa: F401
