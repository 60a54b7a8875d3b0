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

from .errors import (GGMLError, ShapeError, TypeError_, ParamError, ContextMemoryError,  # noqa: F401
                     DataError, GraphError, ComputeError, UnsupportedError)
from .types import *  # noqa: F401,F403  (GGMLType, TYPE_* constants, type facts)
from .types import GGMLType, type_name, blck_size, type_size, is_quantized, row_size  # noqa: F401
from .tensor import (Tensor, Buffer, nelements, nrows, nbytes, element_size, is_empty,  # noqa: F401
                     is_scalar, is_vector, is_matrix, is_contiguous, is_contiguous_0,
                     is_contiguous_1, is_contiguous_2, is_contiguous_rows, is_contiguous_channels,
                     is_transposed,
                     is_permuted, are_same_shape, are_same_stride, can_repeat, can_repeat_rows,
                     is_contiguously_allocated, set_name, get_name, format_name, set_input,
                     set_output, set_param, set_loss, TENSOR_FLAG_INPUT, TENSOR_FLAG_OUTPUT,
                     TENSOR_FLAG_PARAM, TENSOR_FLAG_LOSS, MAX_DIMS, MAX_SRC, MAX_NAME)
from .context import (Context, InitParams, init, free, tensor_overhead, graph_overhead,  # noqa: F401
                      new_tensor, new_tensor_1d, new_tensor_2d, new_tensor_3d, new_tensor_4d,
                      dup_tensor, get_tensor, get_first_tensor, get_next_tensor, get_no_alloc,
                      set_no_alloc)
from .graph import (CGraph, new_graph, new_graph_custom, build_forward_expand,  # noqa: F401
                    graph_n_nodes, graph_nodes, graph_node, graph_size, graph_add_node,
                    graph_get_tensor, graph_view, graph_cpy, graph_reset, graph_clear,
                    graph_get_grad, graph_get_grad_acc)
from .data import (to_numpy, from_numpy, tensor_set, tensor_get, tensor_memset,  # noqa: F401
                   set_f32, set_i32, get_f32_1d, set_f32_1d, get_i32_1d, set_i32_1d,
                   get_f32_nd, set_f32_nd, get_data_f32)
from .ops import API as _OPS_API, OPS, get_op, set_op_params  # noqa: F401

globals().update(_OPS_API)
from .autodiff import build_backward_expand  # noqa: F401,E402
from .ops.sort import SORT_ORDER_ASC, SORT_ORDER_DESC  # noqa: F401,E402
from .ops.upscale import (SCALE_MODE_NEAREST, SCALE_MODE_BILINEAR, SCALE_MODE_BICUBIC,  # noqa: F401,E402
                          SCALE_FLAG_ALIGN_CORNERS, SCALE_FLAG_ANTIALIAS)
from .ops.conv import OP_POOL_MAX, OP_POOL_AVG  # noqa: F401,E402
from .ops.tri import (TRI_TYPE_UPPER_DIAG, TRI_TYPE_UPPER, TRI_TYPE_LOWER_DIAG,  # noqa: F401,E402
                      TRI_TYPE_LOWER)
from .ops.unary import UNARY_OP_ID as _U  # noqa: E402
from .ops.glu import GLU_OP_ID as _G  # noqa: E402
globals().update({f"UNARY_OP_{k}": v for k, v in _U.items()})
globals().update({f"GLU_OP_{k}": v for k, v in _G.items()})

from .compute import *  # noqa: F401,F403,E402  (graph_plan, graph_compute, backends, sched)
from .viz.dot import graph_dump_dot  # noqa: F401,E402

from .ops.matmul import HINT_NONE, HINT_SRC0_IS_HADAMARD  # noqa: F401,E402


def quantize(type, values):
    """ggml_quantize_chunk for a flat float array: the bytes ggml's reference quantizer writes."""
    from . import quants
    return quants.quantize(type, values)


def dequantize(type, raw, n):
    from . import quants
    return quants.dequantize(type, raw, n)


__version__ = "0.1.0"
