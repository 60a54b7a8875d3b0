"""Case lives with the ops that declare their cases (pyggml/ops/case.py); kept here for callers
of pyggml.testing.case."""
from ..ops.case import Case, uniform, var_to_str, vars_to_str  # noqa: F401
