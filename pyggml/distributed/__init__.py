"""Beyond one machine: Ray workers as scheduler backends.

    RayBackend        a backend whose buffers and compute live in a Ray actor (backend.py)
    DistributedSched  Sched plus follow/export rules for remote memory (sched.py)
    layer split       contiguous layer ranges and their KV cache per worker (layer_split.py)
    context split     the KV cache sharded by token ranges, attention chained (or merged) by
                      the softmax state rule (context_split.py: ShardedKVCache, lse_merge;
                      context_mixed.py: MixedShardedKVCache, bitwise one MixedKVCache)
    WorkerGroup       the Ray connection, the workers, placement (group.py); keep_workers
                      opts in to reusing workers on a cluster pyggml did not start
    errors            WorkerDiedError, WorkerTimeoutError (GGMLError subclasses)

Ray is imported only when a worker is started (pip install 'pyggml[distributed]').
See docs/DISTRIBUTED.md for the traffic model and measurements.
"""
from .backend import RayBackend  # noqa: F401
from .context_mixed import MixedShardedKVCache  # noqa: F401
from .context_split import ShardedKVCache  # noqa: F401
from .context_split import lse_merge  # noqa: F401
from .errors import RayUnavailableError  # noqa: F401
from .errors import WorkerDiedError  # noqa: F401
from .errors import WorkerError  # noqa: F401
from .errors import WorkerTimeoutError  # noqa: F401
from .group import SPLITS  # noqa: F401
from .group import WorkerGroup  # noqa: F401
from .group import keep_workers  # noqa: F401
from .layer_split import layer_ranges  # noqa: F401
from .sched import DistributedSched  # noqa: F401
