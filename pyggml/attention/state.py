"""The softmax state of flash_attn_ext_with_state is part of the op's definition and lives in
pyggml/ops/fa_state.py; these names stay importable from here."""
from ..ops.fa_state import (  # noqa: F401
                            STATE_M,
                            STATE_S,
                            bad_row_message,
                            check_state_tensor,
                            fresh_values,
                            merge,
                            reset_state,
                            row_kinds,
                            state_ne,
                            state_values,
)
