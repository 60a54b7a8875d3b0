"""Errors of distributed runs: a worker that died or stopped answering.

Both are raised by the driver within the worker's timeout, before anything that depends on
the failed step is committed; the failed worker is marked dead (every later call raises at
once) until a new worker is attached in its place."""
from ..errors import GGMLError


class WorkerError(GGMLError, RuntimeError):
    """A Ray worker could not do what the driver asked (names the worker and the call)."""


class WorkerDiedError(WorkerError):
    """The worker's process is gone (killed, crashed, its node lost)."""


class WorkerTimeoutError(WorkerError):
    """The worker did not answer within its timeout (hung or overloaded); it is killed."""


class RayUnavailableError(GGMLError, ImportError):
    """Ray is not installed: pip install 'pyggml[distributed]'."""
