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

from .context import Context  # noqa: F401
from .context import InitParams  # noqa: F401
from .context import dup_tensor  # noqa: F401
from .context import free  # noqa: F401
from .context import get_first_tensor  # noqa: F401
from .context import get_next_tensor  # noqa: F401
from .context import get_no_alloc  # noqa: F401
from .context import get_tensor  # noqa: F401
from .context import graph_overhead  # noqa: F401
from .context import init  # noqa: F401
from .context import new_tensor  # noqa: F401
from .context import new_tensor_1d  # noqa: F401
from .context import new_tensor_2d  # noqa: F401
from .context import new_tensor_3d  # noqa: F401
from .context import new_tensor_4d  # noqa: F401
from .context import set_no_alloc  # noqa: F401
from .context import tensor_overhead  # noqa: F401
from .data import from_numpy  # noqa: F401
from .data import get_data_f32  # noqa: F401
from .data import get_f32_1d  # noqa: F401
from .data import get_f32_nd  # noqa: F401
from .data import get_i32_1d  # noqa: F401
from .data import set_f32  # noqa: F401
from .data import set_f32_1d  # noqa: F401
from .data import set_f32_nd  # noqa: F401
from .data import set_i32  # noqa: F401
from .data import set_i32_1d  # noqa: F401
from .data import tensor_get  # noqa: F401
from .data import tensor_memset  # noqa: F401
from .data import tensor_set  # noqa: F401
from .data import to_numpy  # noqa: F401
from .errors import ComputeError  # noqa: F401
from .errors import ContextMemoryError  # noqa: F401
from .errors import DataError  # noqa: F401
from .errors import GGMLError  # noqa: F401
from .errors import GraphError  # noqa: F401
from .errors import ParamError  # noqa: F401
from .errors import ShapeError  # noqa: F401
from .errors import TypeError_  # noqa: F401
from .errors import UnsupportedError  # noqa: F401
from .graph import CGraph  # noqa: F401
from .graph import build_forward_expand  # noqa: F401
from .graph import graph_add_node  # noqa: F401
from .graph import graph_clear  # noqa: F401
from .graph import graph_cpy  # noqa: F401
from .graph import graph_get_grad  # noqa: F401
from .graph import graph_get_grad_acc  # noqa: F401
from .graph import graph_get_tensor  # noqa: F401
from .graph import graph_n_nodes  # noqa: F401
from .graph import graph_node  # noqa: F401
from .graph import graph_nodes  # noqa: F401
from .graph import graph_reset  # noqa: F401
from .graph import graph_size  # noqa: F401
from .graph import graph_view  # noqa: F401
from .graph import new_graph  # noqa: F401
from .graph import new_graph_custom  # noqa: F401
from .ops import API as _OPS_API  # noqa: F401
from .ops import OPS  # noqa: F401
from .ops import get_op  # noqa: F401
from .ops import set_op_params  # noqa: F401
from .tensor import MAX_DIMS  # noqa: F401
from .tensor import MAX_NAME  # noqa: F401
from .tensor import MAX_SRC  # noqa: F401
from .tensor import TENSOR_FLAG_INPUT  # noqa: F401
from .tensor import TENSOR_FLAG_LOSS  # noqa: F401
from .tensor import TENSOR_FLAG_OUTPUT  # noqa: F401
from .tensor import TENSOR_FLAG_PARAM  # noqa: F401
from .tensor import Buffer  # noqa: F401
from .tensor import Tensor  # noqa: F401
from .tensor import are_same_shape  # noqa: F401
from .tensor import are_same_stride  # noqa: F401
from .tensor import can_repeat  # noqa: F401
from .tensor import can_repeat_rows  # noqa: F401
from .tensor import element_size  # noqa: F401
from .tensor import format_name  # noqa: F401
from .tensor import get_name  # noqa: F401
from .tensor import is_contiguous  # noqa: F401
from .tensor import is_contiguous_0  # noqa: F401
from .tensor import is_contiguous_1  # noqa: F401
from .tensor import is_contiguous_2  # noqa: F401
from .tensor import is_contiguous_channels  # noqa: F401
from .tensor import is_contiguous_rows  # noqa: F401
from .tensor import is_contiguously_allocated  # noqa: F401
from .tensor import is_empty  # noqa: F401
from .tensor import is_matrix  # noqa: F401
from .tensor import is_permuted  # noqa: F401
from .tensor import is_scalar  # noqa: F401
from .tensor import is_transposed  # noqa: F401
from .tensor import is_vector  # noqa: F401
from .tensor import nbytes  # noqa: F401
from .tensor import nelements  # noqa: F401
from .tensor import nrows  # noqa: F401
from .tensor import set_input  # noqa: F401
from .tensor import set_loss  # noqa: F401
from .tensor import set_name  # noqa: F401
from .tensor import set_output  # noqa: F401
from .tensor import set_param  # noqa: F401
from .types import *  # noqa: F401,F403  (GGMLType, TYPE_* constants, type facts)
from .types import GGMLType  # noqa: F401
from .types import blck_size  # noqa: F401
from .types import is_quantized  # noqa: F401
from .types import row_size  # noqa: F401
from .types import type_name  # noqa: F401
from .types import type_size  # noqa: F401

globals().update(_OPS_API)
from .autodiff import build_backward_expand  # noqa: F401,E402
from .ops.conv import OP_POOL_AVG  # noqa: F401,E402
from .ops.conv import OP_POOL_MAX  # noqa: F401,E402
from .ops.glu import GLU_OP_ID as _G  # noqa: E402
from .ops.sort import SORT_ORDER_ASC  # noqa: F401,E402
from .ops.sort import SORT_ORDER_DESC  # noqa: F401,E402
from .ops.tri import TRI_TYPE_LOWER  # noqa: F401,E402
from .ops.tri import TRI_TYPE_LOWER_DIAG  # noqa: F401,E402
from .ops.tri import TRI_TYPE_UPPER  # noqa: F401,E402
from .ops.tri import TRI_TYPE_UPPER_DIAG  # noqa: F401,E402
from .ops.unary import UNARY_OP_ID as _U  # noqa: E402
from .ops.upscale import SCALE_FLAG_ALIGN_CORNERS  # noqa: F401,E402
from .ops.upscale import SCALE_FLAG_ANTIALIAS  # noqa: F401,E402
from .ops.upscale import SCALE_MODE_BICUBIC  # noqa: F401,E402
from .ops.upscale import SCALE_MODE_BILINEAR  # noqa: F401,E402
from .ops.upscale import SCALE_MODE_NEAREST  # noqa: F401,E402

globals().update({f"UNARY_OP_{k}": v for k, v in _U.items()})
globals().update({f"GLU_OP_{k}": v for k, v in _G.items()})

from .compute import *  # noqa: F401,F403,E402  (graph_plan, graph_compute, backends, sched)
from .ops.matmul import HINT_NONE  # noqa: F401,E402
from .ops.matmul import HINT_SRC0_IS_HADAMARD  # noqa: F401,E402
from .viz.dot import graph_dump_dot  # noqa: F401,E402


def quantize(type, values):
    """ggml_quantize_chunk for a flat float array: the bytes ggml's reference quantizer writes."""
    from . import quants
    return quants.quantize(type, values)


def dequantize(type, raw, n):
    from . import quants
    return quants.dequantize(type, raw, n)


__version__ = "0.1.0"
