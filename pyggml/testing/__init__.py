"""Testing helpers: test-backend-ops cases (`case`), real ggml through ctypes (`ggml_lib`)."""
