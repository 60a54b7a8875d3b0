"""The softmax state of flash_attn_ext_with_state is part of the op's definition and lives in
pyggml/ops/fa_state.py; these names stay importable from here."""
from ..ops.fa_state import STATE_M  # noqa: F401
from ..ops.fa_state import STATE_S  # noqa: F401
from ..ops.fa_state import bad_row_message  # noqa: F401
from ..ops.fa_state import check_state_tensor  # noqa: F401
from ..ops.fa_state import fresh_values  # noqa: F401
from ..ops.fa_state import merge  # noqa: F401
from ..ops.fa_state import reset_state  # noqa: F401
from ..ops.fa_state import row_kinds  # noqa: F401
from ..ops.fa_state import state_ne  # noqa: F401
from ..ops.fa_state import state_values  # noqa: F401
