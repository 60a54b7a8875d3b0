"""pyggml's exceptions: every misuse is a GGMLError subclass that names what went wrong.

Where real ggml aborts the process (GGML_ASSERT), pyggml raises one of these instead.
"""


class GGMLError(Exception):
    """Base class of every error pyggml raises on purpose."""


class ShapeError(GGMLError, ValueError):
    """Shapes (ne) or strides (nb) that an op or view cannot accept."""


class TypeError_(GGMLError, TypeError):
    """A tensor type (GGMLType) an op does not accept."""


class ParamError(GGMLError, ValueError):
    """An op parameter out of its domain (axes not a permutation, bad mode...)."""


class ContextMemoryError(GGMLError, MemoryError):
    """The context's memory pool has no room for a new tensor or its data."""


class DataError(GGMLError, ValueError):
    """Data given to or asked of a tensor does not fit it (size, offset, allocation)."""


class GraphError(GGMLError, RuntimeError):
    """A graph cannot be built, planned or computed (full graph, unsupported node...)."""


class ComputeError(GGMLError, RuntimeError):
    """A node failed while the graph was being computed; names the node."""


class UnsupportedError(GraphError):
    """No backend supports an op (raised before any compute starts)."""


def shown_ne(t) -> list:
    """t.ne up to the last dim that is not 1 (ggml's n_dims) or is 0: an empty tensor
    [256, 0, 1, 1] shows as [256, 0], not as [256]."""
    n = max([1, t.n_dims] + [i + 1 for i, v in enumerate(t.ne) if v == 0])
    return list(t.ne[:n])


def describe(t) -> str:
    """Short description of a tensor for error messages: 'name' (type) [ne]."""
    if t is None:
        return "None"
    try:
        return f"'{t.name or '?'}' ({t.type.tname}) ne={shown_ne(t)}"
    except AttributeError:
        return repr(t)


class ModelFileError(GGMLError, ValueError):
    """A model file that cannot be used (missing, not GGUF, truncated, corrupt, unsupported
    architecture or tensor type); the message names the file."""


class PromptError(GGMLError, ValueError):
    """A prompt a model cannot take (empty, longer than the context, a chat template that
    fails on the messages)."""
