"""Case lives with the ops that declare their cases (pyggml/ops/case.py); kept here for callers
of pyggml.testing.case."""
from ..ops.case import Case  # noqa: F401
from ..ops.case import uniform  # noqa: F401
from ..ops.case import var_to_str  # noqa: F401
from ..ops.case import vars_to_str  # noqa: F401
