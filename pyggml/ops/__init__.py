"""Every op family module in this package registers its OpDefs on import.

Adding a family is adding one file: its public functions (ggml names without the ggml_
prefix) become part of pyggml's flat API automatically.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

from .registry import OPS  # noqa: F401
from .registry import OpDef  # noqa: F401
from .registry import get_op  # noqa: F401
from .registry import register  # noqa: F401
from .registry import set_op_params  # noqa: F401

_NOT_FAMILIES = {"registry", "cases_common", "case", "fa_state", "builders"}   # helpers, not families

API: dict = {}
LOAD_ERRORS: dict = {}      # family -> exception; the registry test requires it empty


def _load_families() -> None:
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name in _NOT_FAMILIES or m.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{m.name}")
        except Exception as e:  # one broken family must not take the others down
            LOAD_ERRORS[m.name] = e
            warnings.warn(f"pyggml: op family {m.name!r} failed to load: {e!r}")
            continue
        for name, obj in vars(mod).items():
            if (not name.startswith("_") and inspect.isfunction(obj)
                    and obj.__module__ == mod.__name__ and name not in API):
                API[name] = obj


_load_families()
