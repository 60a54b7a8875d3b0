"""Attention on top of the ops: the mixed KV cache.

The ops themselves (flash_attn_ext, flash_attn_ext_with_state, flash_attn_state_init...)
live in pyggml.ops.attention and are part of pyggml's flat API; the with_state softmax
state (layout, fresh values, reset, the merge rule) is part of that op: pyggml.ops.fa_state
(re-exported here and as pyggml.attention.state).

    kv_cache   MixedKVCache (hot F16 ring + cold quantized store), imported on first use
"""
from __future__ import annotations

from ..ops.fa_state import STATE_M  # noqa: F401
from ..ops.fa_state import STATE_S  # noqa: F401
from ..ops.fa_state import check_state_tensor  # noqa: F401
from ..ops.fa_state import fresh_values  # noqa: F401
from ..ops.fa_state import merge  # noqa: F401
from ..ops.fa_state import reset_state  # noqa: F401
from ..ops.fa_state import state_ne  # noqa: F401
from ..ops.fa_state import state_values  # noqa: F401


def __getattr__(name):
    # kv_cache builds graphs with pyggml's ops: imported on first use, so importing this
    # package stays cheap.
    if name in ("MixedKVCache", "F16KVCache", "kv_cache"):
        import importlib
        mod = importlib.import_module(f"{__name__}.kv_cache")
        return mod if name == "kv_cache" else getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
