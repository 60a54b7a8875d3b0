"""Backends: the NumPy reference (the spec) and the threaded Numba CPU backend."""
from .base import Backend  # noqa: F401
from .reference.backend import ReferenceBackend, backend_reference_init  # noqa: F401
