"""ggml's tensor types, with ggml's numeric values, and one traits table for per-type facts.

Codecs (to_float / from_float) are attached by the modules of `pyggml.quants`, each block
format registering itself with its type (the gguf-py idea: a format is one file).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from dataclasses import field
from typing import Callable
from typing import Optional

import numpy as np

from .errors import TypeError_


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ4_NL = 20
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30
    MXFP4 = 39

    @property
    def traits(self) -> "TypeTraits":
        return TRAITS[self]

    @property
    def tname(self) -> str:
        return TRAITS[self].tname

    def __str__(self) -> str:  # ggml_type_name
        return TRAITS[self].tname


@dataclass
class TypeTraits:
    type: GGMLType
    tname: str                      # ggml_type_name(): "f32", "q4_0", ...
    blck_size: int                  # elements per block (1 for element types)
    type_size: int                  # bytes per block
    is_quantized: bool
    np_dtype: Optional[np.dtype]    # storage dtype of element types (None for block types)
    vec_dot_type: GGMLType          # what mul_mat converts activations to for this weight type
    is_float: bool = False          # F32/F16/BF16/F64 (values are floats, not ints or blocks)
    # Codecs, attached by pyggml.quants:
    #   to_float(raw: uint8 ndarray, n) -> float32 ndarray of n values
    #   from_float(x: float32 ndarray, n % blck_size == 0) -> uint8 ndarray
    to_float: Optional[Callable] = field(default=None, repr=False)
    from_float: Optional[Callable] = field(default=None, repr=False)
    #   from_float_imatrix(x: float32 [nrows, n_per_row], imatrix: float32 [n_per_row])
    #   -> uint8 ndarray (ggml_quantize_chunk with quant_weights; None: no imatrix variant)
    from_float_imatrix: Optional[Callable] = field(default=None, repr=False)
    #   from_float_cpu(x) -> uint8 ndarray: ggml-cpu's own from_float where it is not the
    #   reference quantizer (x86 SIMD Q8_0/Q8_1: 127/amax, ties to even). It is what the CPU
    #   backend's ops store (cpy, set_rows, requantized results); None: from_float is it.
    from_float_cpu: Optional[Callable] = field(default=None, repr=False)

    def row_size(self, ne0: int) -> int:
        """ggml_row_size: bytes of ne0 elements (ne0 must be a multiple of blck_size)."""
        return self.type_size * (ne0 // self.blck_size)


T = GGMLType
TRAITS: dict[GGMLType, TypeTraits] = {
    T.F32: TypeTraits(T.F32, "f32", 1, 4, False, np.dtype(np.float32), T.F32, True),
    T.F16: TypeTraits(T.F16, "f16", 1, 2, False, np.dtype(np.float16), T.F16, True),
    T.BF16: TypeTraits(T.BF16, "bf16", 1, 2, False, np.dtype(np.uint16), T.BF16, True),
    T.F64: TypeTraits(T.F64, "f64", 1, 8, False, np.dtype(np.float64), T.F64, True),
    T.I8: TypeTraits(T.I8, "i8", 1, 1, False, np.dtype(np.int8), T.I8),
    T.I16: TypeTraits(T.I16, "i16", 1, 2, False, np.dtype(np.int16), T.I16),
    T.I32: TypeTraits(T.I32, "i32", 1, 4, False, np.dtype(np.int32), T.I32),
    T.I64: TypeTraits(T.I64, "i64", 1, 8, False, np.dtype(np.int64), T.I64),
    T.Q4_0: TypeTraits(T.Q4_0, "q4_0", 32, 18, True, None, T.Q8_0),
    T.Q4_1: TypeTraits(T.Q4_1, "q4_1", 32, 20, True, None, T.Q8_1),
    T.Q5_0: TypeTraits(T.Q5_0, "q5_0", 32, 22, True, None, T.Q8_0),
    T.Q5_1: TypeTraits(T.Q5_1, "q5_1", 32, 24, True, None, T.Q8_1),
    T.Q8_0: TypeTraits(T.Q8_0, "q8_0", 32, 34, True, None, T.Q8_0),
    T.Q8_1: TypeTraits(T.Q8_1, "q8_1", 32, 36, True, None, T.Q8_1),
    T.Q2_K: TypeTraits(T.Q2_K, "q2_K", 256, 84, True, None, T.Q8_K),
    T.Q3_K: TypeTraits(T.Q3_K, "q3_K", 256, 110, True, None, T.Q8_K),
    T.Q4_K: TypeTraits(T.Q4_K, "q4_K", 256, 144, True, None, T.Q8_K),
    T.Q5_K: TypeTraits(T.Q5_K, "q5_K", 256, 176, True, None, T.Q8_K),
    T.Q6_K: TypeTraits(T.Q6_K, "q6_K", 256, 210, True, None, T.Q8_K),
    T.Q8_K: TypeTraits(T.Q8_K, "q8_K", 256, 292, True, None, T.Q8_K),
    T.IQ4_NL: TypeTraits(T.IQ4_NL, "iq4_nl", 32, 18, True, None, T.Q8_0),
    T.IQ4_XS: TypeTraits(T.IQ4_XS, "iq4_xs", 256, 136, True, None, T.Q8_K),
    T.MXFP4: TypeTraits(T.MXFP4, "mxfp4", 32, 17, True, None, T.Q8_0),
}
del T

# Flat constants, as ggml's GGML_TYPE_* (exported by pyggml as TYPE_*).
TYPE_F32 = GGMLType.F32
TYPE_F16 = GGMLType.F16
TYPE_BF16 = GGMLType.BF16
TYPE_F64 = GGMLType.F64
TYPE_I8 = GGMLType.I8
TYPE_I16 = GGMLType.I16
TYPE_I32 = GGMLType.I32
TYPE_I64 = GGMLType.I64
TYPE_Q4_0 = GGMLType.Q4_0
TYPE_Q4_1 = GGMLType.Q4_1
TYPE_Q5_0 = GGMLType.Q5_0
TYPE_Q5_1 = GGMLType.Q5_1
TYPE_Q8_0 = GGMLType.Q8_0
TYPE_Q8_1 = GGMLType.Q8_1
TYPE_Q2_K = GGMLType.Q2_K
TYPE_Q3_K = GGMLType.Q3_K
TYPE_Q4_K = GGMLType.Q4_K
TYPE_Q5_K = GGMLType.Q5_K
TYPE_Q6_K = GGMLType.Q6_K
TYPE_Q8_K = GGMLType.Q8_K
TYPE_IQ4_NL = GGMLType.IQ4_NL
TYPE_IQ4_XS = GGMLType.IQ4_XS
TYPE_MXFP4 = GGMLType.MXFP4

# enum ggml_prec: the precision an op may be asked for (mul_mat, flash_attn_ext set_prec)
PREC_DEFAULT = 0
PREC_F32 = 10

# The types flash attention accepts for K and V (ggml's CPU set).
FA_KV_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0,
               GGMLType.Q5_1, GGMLType.Q5_0, GGMLType.Q4_1, GGMLType.Q4_0)
QUANT_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
               GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
               GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.MXFP4)
# The 256-value super-block formats (Q8_K, their activation type, is not a storage type).
K_TYPES = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
           GGMLType.IQ4_XS)


def as_type(t) -> GGMLType:
    """Accept a GGMLType, its int value or its ggml name ('q4_0')."""
    if isinstance(t, GGMLType):
        return t
    if isinstance(t, str):
        for tt in TRAITS.values():
            if tt.tname.lower() == t.lower():
                return tt.type
        raise TypeError_(f"unknown ggml type name {t!r}")
    try:
        return GGMLType(int(t))
    except (ValueError, TypeError):
        raise TypeError_(f"unknown ggml type {t!r}") from None


def type_name(t) -> str:
    return TRAITS[as_type(t)].tname


def blck_size(t) -> int:
    return TRAITS[as_type(t)].blck_size


def type_size(t) -> int:
    return TRAITS[as_type(t)].type_size


def is_quantized(t) -> bool:
    return TRAITS[as_type(t)].is_quantized


def row_size(t, ne0: int) -> int:
    return TRAITS[as_type(t)].row_size(ne0)


def register_codec(t: GGMLType, to_float: Callable, from_float: Callable,
                   from_float_imatrix: Optional[Callable] = None,
                   from_float_cpu: Optional[Callable] = None) -> None:
    """Attach a format's codecs to its type (called by each pyggml.quants module)."""
    TRAITS[t].to_float = to_float
    TRAITS[t].from_float = from_float
    TRAITS[t].from_float_imatrix = from_float_imatrix
    TRAITS[t].from_float_cpu = from_float_cpu
