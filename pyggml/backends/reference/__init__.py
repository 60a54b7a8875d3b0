"""The reference backend: runs every op with its NumPy reference. It is the executable spec."""
from .backend import ReferenceBackend  # noqa: F401
from .backend import compute_node_reference  # noqa: F401
