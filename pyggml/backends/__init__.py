"""Backends: the NumPy reference (the spec) and the threaded Numba CPU backend."""
from .base import Backend  # noqa: F401
from .reference.backend import ReferenceBackend  # noqa: F401
from .reference.backend import backend_reference_init  # noqa: F401
