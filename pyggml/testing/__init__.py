"""Testing helpers: test-backend-ops cases and harness, real ggml through ctypes (`ggml_lib`)
and the real-ggml recipes that live on this side (`ggml_recipes`, registered on import)."""
from . import ggml_recipes  # noqa: F401  (registers recipes on their OpDefs)
