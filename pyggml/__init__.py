"""pyggml: ggml, the tensor library under llama.cpp, rebuilt in Python.

The API is ggml.h's, flat, without the ggml_ prefix:

    import pyggml as gg
    ctx = gg.init(mem_size=64 << 20)
    a = gg.new_tensor_2d(ctx, gg.TYPE_F32, 4, 3)
    ...
"""
from __future__ import annotations

from ._numba_cache import configure as _configure_numba_cache

_configure_numba_cache()           # before any Numba function exists (see _numba_cache.py)

from .context import (  # noqa: F401
    Context,
    InitParams,
    dup_tensor,
    free,
    get_first_tensor,
    get_next_tensor,
    get_no_alloc,
    get_tensor,
    graph_overhead,
    init,
    new_tensor,
    new_tensor_1d,
    new_tensor_2d,
    new_tensor_3d,
    new_tensor_4d,
    set_no_alloc,
    tensor_overhead,
)
from .data import (  # noqa: F401
    from_numpy,
    get_data_f32,
    get_f32_1d,
    get_f32_nd,
    get_i32_1d,
    set_f32,
    set_f32_1d,
    set_f32_nd,
    set_i32,
    set_i32_1d,
    tensor_get,
    tensor_memset,
    tensor_set,
    to_numpy,
)
from .errors import (  # noqa: F401
    ComputeError,
    ContextMemoryError,
    DataError,
    GGMLError,
    GraphError,
    ParamError,
    ShapeError,
    TypeError_,
    UnsupportedError,
)
from .graph import (  # noqa: F401
    CGraph,
    build_forward_expand,
    graph_add_node,
    graph_clear,
    graph_cpy,
    graph_get_grad,
    graph_get_grad_acc,
    graph_get_tensor,
    graph_n_nodes,
    graph_node,
    graph_nodes,
    graph_reset,
    graph_size,
    graph_view,
    new_graph,
    new_graph_custom,
)
from .ops import API as _OPS_API  # noqa: F401
from .ops import OPS, get_op, set_op_params  # noqa: F401
from .tensor import (  # noqa: F401
    MAX_DIMS,
    MAX_NAME,
    MAX_SRC,
    TENSOR_FLAG_INPUT,
    TENSOR_FLAG_LOSS,
    TENSOR_FLAG_OUTPUT,
    TENSOR_FLAG_PARAM,
    Buffer,
    Tensor,
    are_same_shape,
    are_same_stride,
    can_repeat,
    can_repeat_rows,
    element_size,
    format_name,
    get_name,
    is_contiguous,
    is_contiguous_0,
    is_contiguous_1,
    is_contiguous_2,
    is_contiguous_channels,
    is_contiguous_rows,
    is_contiguously_allocated,
    is_empty,
    is_matrix,
    is_permuted,
    is_scalar,
    is_transposed,
    is_vector,
    nbytes,
    nelements,
    nrows,
    set_input,
    set_loss,
    set_name,
    set_output,
    set_param,
)
from .types import *  # noqa: F401,F403  (GGMLType, TYPE_* constants, type facts)
from .types import GGMLType, blck_size, is_quantized, row_size, type_name, type_size  # noqa: F401

globals().update(_OPS_API)
from .autodiff import build_backward_expand  # noqa: F401,E402
from .ops.conv import OP_POOL_AVG, OP_POOL_MAX  # noqa: F401,E402
from .ops.glu import GLU_OP_ID as _G  # noqa: E402
from .ops.sort import SORT_ORDER_ASC, SORT_ORDER_DESC  # noqa: F401,E402
from .ops.tri import TRI_TYPE_LOWER, TRI_TYPE_LOWER_DIAG, TRI_TYPE_UPPER, TRI_TYPE_UPPER_DIAG  # noqa: F401,E402
from .ops.unary import UNARY_OP_ID as _U  # noqa: E402
from .ops.upscale import (  # noqa: F401,E402
    SCALE_FLAG_ALIGN_CORNERS,
    SCALE_FLAG_ANTIALIAS,
    SCALE_MODE_BICUBIC,
    SCALE_MODE_BILINEAR,
    SCALE_MODE_NEAREST,
)

globals().update({f"UNARY_OP_{k}": v for k, v in _U.items()})
globals().update({f"GLU_OP_{k}": v for k, v in _G.items()})

from .compute import *  # noqa: F401,F403,E402  (graph_plan, graph_compute, backends, sched)
from .ops.matmul import HINT_NONE, HINT_SRC0_IS_HADAMARD  # noqa: F401,E402
from .viz.dot import graph_dump_dot  # noqa: F401,E402


def quantize(type, values):
    """ggml_quantize_chunk for a flat float array: the bytes ggml's reference quantizer writes."""
    from . import quants
    return quants.quantize(type, values)


def dequantize(type, raw, n):
    from . import quants
    return quants.dequantize(type, raw, n)


__version__ = "0.1.0"
