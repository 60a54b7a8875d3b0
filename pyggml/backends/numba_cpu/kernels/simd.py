"""Explicit SIMD for the matrix-product kernels: LLVM vector code built with llvmlite.

LLVM's auto-vectorizer stops at the per-block scales of quantized dots, so the inner loops
of mul_mat are written here directly as LLVM IR (/work/shared/NUMBA-NOTES.md, "Quantized
mat-vec needs explicit SIMD"). Each public name is a `numba.extending.intrinsic` taking
int64 addresses; its body is one LLVM function emitted once per module. The dots loop over
several rows inside that function (a call per row costs ~60% more on this CPU: measured):

  dot_f32(nrows, n, x, xstride, y, out)
                                out[r] = sum_i x[r][i] * y[i] for r < nrows (rows xstride
                                bytes apart), x and y float32, out float32
  dot_f16(...), dot_bf16(...)   the same with x fp16 (F16C conversion) or bf16
  dot_q4_0 / dot_q4_1 / dot_q5_0 / dot_q5_1 / dot_q8_0 (nrows, nb, x, xstride, yq, yd, ys, out)
                                rows of nb raw ggml blocks against activations in the
                                "Q8 split" layout (int8 q contiguous; per block float d and
                                float s = d * sum(q)): u8 x i8 products with pmaddubsw, pairs
                                summed with pmaddwd, scaled per block in float (ggml's own
                                instruction sequence on AVX2); two weight rows per pass share
                                each activation block
  gemm_tile(kc, ap, bp, c, ldc, acc)
                                the register-blocked GEMM micro-kernel: C[MR, NR] (+)= Bp^T Ap
                                over kc steps of packed panels (see GEMM_MR / GEMM_NR)

The integer dots use x86 intrinsics when the CPU has AVX2 and a portable LLVM formulation
otherwise (chosen once, from the host's features, when this module is imported; vectors are
16 floats wide with AVX-512, else 8). Weights are read in ggml's own block layout: the
measured dots already beat ggml's single-thread speed, so no repacked copy is kept. All float
accumulation is float32 in several independent accumulators (the order differs from a
sequential sum by rounding only).
"""
from __future__ import annotations

import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_FEATURES = {k for k, v in llvm.get_host_cpu_features().items() if v}
# PYGGML_SIMD=generic forces the portable code (tests of that path; use it with a separate
# NUMBA_CACHE_DIR, since Numba's disk cache is keyed by the CPU, not by this switch)
_MODE = os.environ.get("PYGGML_SIMD", "auto").lower()
HAVE_AVX2 = "avx2" in _FEATURES and _MODE != "generic"
HAVE_AVX512 = {"avx512f", "avx512bw", "avx512vl"} <= _FEATURES and _MODE != "generic"
HAVE_F16C = "f16c" in _FEATURES

_F32 = ir.FloatType()
_HALF = ir.HalfType()
_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)

# float lanes of the GEMM micro-kernel and of the float dots (one AVX2 / AVX-512 register)
VL = 16 if HAVE_AVX512 else 8
GEMM_MR = 6                  # rows of C (columns of b) per micro-tile
GEMM_NR = 2 * VL             # columns of C (rows of a) per micro-tile: two vectors


def _v(t, n):
    return ir.VectorType(t, n)


def _c(t, v):
    return ir.Constant(t, v)


# --- IR helpers ---------------------------------------------------------------------------------

def _fn(module, name, fnty, build):
    """The module's function `name`, building its body on first request."""
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name=name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        build(b, *fn.args)
    return fn


def _intr(b, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return b.call(cgutils.get_or_insert_function(b.module, fnty, name), args)


def _load(b, addr, ty, align=1):
    return b.load(b.inttoptr(addr, ty.as_pointer()), align=align)


def _store(b, addr, val, align=1):
    b.store(val, b.inttoptr(addr, val.type.as_pointer()), align=align)


def _splat(b, x, n):
    v = b.insert_element(ir.Constant(_v(x.type, n), ir.Undefined), x, _c(_I32, 0))
    return b.shuffle_vector(v, v, ir.Constant(_v(_I32, n), [0] * n))


def _fma(b, x, y, z):
    n = x.type.count
    return _intr(b, f"llvm.fma.v{n}f32", x.type, [x, y, z])


def _hsum(b, v):
    n = v.type.count
    while n > 1:
        n //= 2
        lo = b.shuffle_vector(v, v, ir.Constant(_v(_I32, n), list(range(n))))
        hi = b.shuffle_vector(v, v, ir.Constant(_v(_I32, n), list(range(n, 2 * n))))
        v = b.fadd(lo, hi)
    return b.extract_element(v, _c(_I32, 0))


def _f16(b, addr):
    return b.fpext(b.bitcast(_load(b, addr, _I16), _HALF), _F32)


def _for(b, n, body):
    """for i in range(n): body(b, i)  (i is an i64)."""
    with cgutils.for_range(b, n) as loop:
        body(b, loop.index)


def _acc(b, init):
    return cgutils.alloca_once_value(b, init)


# --- float dots ----------------------------------------------------------------------------------

_UNROLL_F = 4          # independent vector accumulators in the float dots


def _float_dot_body(load_x, esize_x):
    """Body of dot_<x>(nrows, n, x, xstride, y, out): out[r] = sum_i x[r][i] * y[i]."""
    def one_row(b, n, x, y):
        zero = ir.Constant(_v(_F32, VL), [0.0] * VL)
        accs = [_acc(b, zero) for _ in range(_UNROLL_F)]
        step = VL * _UNROLL_F
        nfull = b.udiv(n, _c(_I64, step))

        def body(b, i):
            base = b.mul(i, _c(_I64, step))
            for u in range(_UNROLL_F):
                j = b.add(base, _c(_I64, u * VL))
                xv = load_x(b, b.add(x, b.mul(j, _c(_I64, esize_x))), VL)
                yv = _load(b, b.add(y, b.mul(j, _c(_I64, 4))), _v(_F32, VL))
                b.store(_fma(b, xv, yv, b.load(accs[u])), accs[u])
        _for(b, nfull, body)
        tot = b.load(accs[0])
        for u in range(1, _UNROLL_F):
            tot = b.fadd(tot, b.load(accs[u]))
        s = _acc(b, _hsum(b, tot))
        rest = b.sub(n, b.mul(nfull, _c(_I64, step)))

        def tail(b, i):
            j = b.add(b.mul(nfull, _c(_I64, step)), i)
            xv = load_x(b, b.add(x, b.mul(j, _c(_I64, esize_x))), 1)
            yv = _load(b, b.add(y, b.mul(j, _c(_I64, 4))), _F32)
            b.store(b.fadd(b.load(s), b.fmul(b.extract_element(xv, _c(_I32, 0)), yv)), s)
        _for(b, rest, tail)
        return b.load(s)

    def build(b, nrows, n, x, xstride, y, out):
        def row(b, r):
            v = one_row(b, n, b.add(x, b.mul(r, xstride)), y)
            _store(b, b.add(out, b.mul(r, _c(_I64, 4))), v, align=4)
        _for(b, nrows, row)
        b.ret_void()
    return build


def _ld_f32(b, addr, n):
    return _load(b, addr, _v(_F32, n))


def _ld_f16(b, addr, n):
    return b.fpext(b.bitcast(_load(b, addr, _v(_I16, n)), _v(_HALF, n)), _v(_F32, n))


def _ld_bf16(b, addr, n):
    w = b.zext(_load(b, addr, _v(_I16, n)), _v(_I32, n))
    return b.bitcast(b.shl(w, ir.Constant(_v(_I32, n), [16] * n)), _v(_F32, n))


def _float_dot_intrinsic(name, load_x, esize_x):
    fnty = ir.FunctionType(ir.VoidType(), [_I64] * 6)
    body = _float_dot_body(load_x, esize_x)

    @intrinsic
    def dot(typingctx, nrows, n, x, xstride, y, out):
        if not all(isinstance(t, types.Integer) for t in (nrows, n, x, xstride, y, out)):
            return None

        def codegen(context, builder, sig, args):
            a = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
            fn = _fn(builder.module, f"pyggml_{name}_v{VL}", fnty, body)
            builder.call(fn, a)
            return context.get_dummy_value()
        return types.none(nrows, n, x, xstride, y, out), codegen
    return dot


dot_f32 = _float_dot_intrinsic("dot_f32", _ld_f32, 4)
dot_f16 = _float_dot_intrinsic("dot_f16", _ld_f16, 2)
dot_bf16 = _float_dot_intrinsic("dot_bf16", _ld_bf16, 2)


# --- quantized dots --------------------------------------------------------------------------------
# Activations ("Q8 split" layout, written by the kernels): yq int8[32 * nb], yd float[nb] (scale),
# ys float[nb] (= d * sum of the block's q). Weights are raw ggml blocks.

def _maddubs_pairs(b, xu, yi):
    """<32 x u8> x <32 x i8> -> <8 x i32> sums of 4 adjacent products (pmaddubsw + pmaddwd)."""
    if HAVE_AVX2:
        p16 = _intr(b, "llvm.x86.avx2.pmadd.ub.sw", _v(_I16, 16), [xu, yi])
        ones = ir.Constant(_v(_I16, 16), [1] * 16)
        return _intr(b, "llvm.x86.avx2.pmadd.wd", _v(_I32, 8), [p16, ones])
    # portable: exact 32-bit products, summed in groups of 4 (no saturation can occur for
    # the operands used here, so the results equal the AVX2 sequence)
    p = b.mul(b.zext(xu, _v(_I32, 32)), b.sext(yi, _v(_I32, 32)))
    out = None
    for g in range(4):
        part = b.shuffle_vector(p, p, ir.Constant(_v(_I32, 8), [4 * i + g for i in range(8)]))
        out = part if out is None else b.add(out, part)
    return out


def _nibbles(b, addr):
    """16 bytes of packed nibbles -> <32 x i8> (low nibbles = values 0..15, high = 16..31)."""
    q = _load(b, addr, _v(_I8, 16))
    lo = b.and_(q, ir.Constant(_v(_I8, 16), [0x0F] * 16))
    hi = b.lshr(q, ir.Constant(_v(_I8, 16), [4] * 16))
    return b.shuffle_vector(lo, hi, ir.Constant(_v(_I32, 32), list(range(32))))


def _high_bits(b, addr):
    """qh (32 bits at addr): <32 x i8> with 16 where bit j is set (the 5th bit of Q5_*)."""
    qh = _load(b, addr, _I32)
    bits = b.zext(b.bitcast(qh, _v(_I1, 32)), _v(_I8, 32))
    return b.shl(bits, ir.Constant(_v(_I8, 32), [4] * 32))


# per type: (block bytes, offset of qs, offset of qh or None, has min m, int offset of q)
_QFMT = {
    "q4_0": (18, 2, None, False, 8),
    "q4_1": (20, 4, None, True, 0),
    "q5_0": (22, 6, 2, False, 16),
    "q5_1": (24, 8, 4, True, 0),
    "q8_0": (34, 2, None, False, 0),
}
_UNROLL_Q = 2


_QROWS = 2             # weight rows per pass: the activation block is loaded once for them


def _q_dot_body(fmt):
    bsize, qs_off, qh_off, has_min, offset = _QFMT[fmt]

    def block(b, xs, qy, dy, sy, i, accs, accms):
        """Block i of each row in xs against one activation block (qy, dy, sy)."""
        for x, acc, accm in zip(xs, accs, accms):
            xb = b.add(x, b.mul(i, _c(_I64, bsize)))
            dx = _f16(b, xb)
            if fmt == "q8_0":
                qx = _load(b, b.add(xb, _c(_I64, qs_off)), _v(_I8, 32))
                if HAVE_AVX2:           # |x| * sign(y, x): unsigned x signed, as ggml
                    ax = _intr(b, "llvm.abs.v32i8", _v(_I8, 32), [qx, _c(_I1, 0)])
                    sy_ = _intr(b, "llvm.x86.avx2.psign.b", _v(_I8, 32), [qy, qx])
                    isum = _maddubs_pairs(b, ax, sy_)
                else:
                    p = b.mul(b.sext(qx, _v(_I32, 32)), b.sext(qy, _v(_I32, 32)))
                    isum = None
                    for g in range(4):
                        part = b.shuffle_vector(
                            p, p, ir.Constant(_v(_I32, 8), [4 * j + g for j in range(8)]))
                        isum = part if isum is None else b.add(isum, part)
            else:
                qx = _nibbles(b, b.add(xb, _c(_I64, qs_off)))
                if qh_off is not None:
                    qx = b.or_(qx, _high_bits(b, b.add(xb, _c(_I64, qh_off))))
                isum = _maddubs_pairs(b, qx, qy)
            pf = b.sitofp(isum, _v(_F32, 8))
            b.store(_fma(b, pf, _splat(b, b.fmul(dx, dy), 8), b.load(acc)), acc)
            if has_min:                 # + m * d_y * sum(q_y)
                mx = _f16(b, b.add(xb, _c(_I64, 2)))
                b.store(_intr(b, "llvm.fma.f32", _F32, [mx, sy, b.load(accm)]), accm)
            elif offset:                # - offset * d_x * d_y * sum(q_y)
                b.store(_intr(b, "llvm.fma.f32", _F32, [dx, sy, b.load(accm)]), accm)

    def rows(b, nb, xs, yq, yd, ys):
        """Dots of the rows xs (1.._QROWS of them) with the activation row: a float per row."""
        zero8 = ir.Constant(_v(_F32, 8), [0.0] * 8)
        nacc = _UNROLL_Q if len(xs) == 1 else 1          # independent chains: rows or unroll
        accs = [[_acc(b, zero8) for _ in xs] for _ in range(nacc)]
        accms = [[_acc(b, _c(_F32, 0.0)) for _ in xs] for _ in range(nacc)]
        nit = b.udiv(nb, _c(_I64, nacc))

        def act(b, i):
            qy = _load(b, b.add(yq, b.mul(i, _c(_I64, 32))), _v(_I8, 32))
            dy = _load(b, b.add(yd, b.mul(i, _c(_I64, 4))), _F32)
            sy = _load(b, b.add(ys, b.mul(i, _c(_I64, 4))), _F32)
            return qy, dy, sy

        def body(b, it):
            for u in range(nacc):
                i = b.add(b.mul(it, _c(_I64, nacc)), _c(_I64, u))
                block(b, xs, *act(b, i), i, accs[u], accms[u])
        _for(b, nit, body)
        rest = b.sub(nb, b.mul(nit, _c(_I64, nacc)))

        def tail(b, j):
            i = b.add(b.mul(nit, _c(_I64, nacc)), j)
            block(b, xs, *act(b, i), i, accs[0], accms[0])
        _for(b, rest, tail)
        out = []
        for r in range(len(xs)):
            v = b.load(accs[0][r])
            m = b.load(accms[0][r])
            for u in range(1, nacc):
                v = b.fadd(v, b.load(accs[u][r]))
                m = b.fadd(m, b.load(accms[u][r]))
            s_ = _hsum(b, v)
            if has_min:
                s_ = b.fadd(s_, m)
            elif offset:
                s_ = b.fsub(s_, b.fmul(_c(_F32, float(offset)), m))
            out.append(s_)
        return out

    def build(b, nrows, nb, x, xstride, yq, yd, ys, out):
        ngrp = b.udiv(nrows, _c(_I64, _QROWS))

        def group(b, g):
            r0 = b.mul(g, _c(_I64, _QROWS))
            xs = [b.add(x, b.mul(b.add(r0, _c(_I64, j)), xstride)) for j in range(_QROWS)]
            for j, v in enumerate(rows(b, nb, xs, yq, yd, ys)):
                _store(b, b.add(out, b.mul(b.add(r0, _c(_I64, j)), _c(_I64, 4))), v, align=4)
        _for(b, ngrp, group)

        def single(b, j):
            r = b.add(b.mul(ngrp, _c(_I64, _QROWS)), j)
            v, = rows(b, nb, [b.add(x, b.mul(r, xstride))], yq, yd, ys)
            _store(b, b.add(out, b.mul(r, _c(_I64, 4))), v, align=4)
        _for(b, b.sub(nrows, b.mul(ngrp, _c(_I64, _QROWS))), single)
        b.ret_void()
    return build


def _q_dot_intrinsic(fmt):
    fnty = ir.FunctionType(ir.VoidType(), [_I64] * 8)
    body = _q_dot_body(fmt)
    tag = "avx2" if HAVE_AVX2 else "generic"

    @intrinsic
    def dot(typingctx, nrows, nb, x, xstride, yq, yd, ys, out):
        args_t = (nrows, nb, x, xstride, yq, yd, ys, out)
        if not all(isinstance(t, types.Integer) for t in args_t):
            return None

        def codegen(context, builder, sig, args):
            a = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
            fn = _fn(builder.module, f"pyggml_dot_{fmt}_{tag}_r{_QROWS}", fnty, body)
            builder.call(fn, a)
            return context.get_dummy_value()
        return types.none(*args_t), codegen
    return dot


dot_q4_0 = _q_dot_intrinsic("q4_0")
dot_q4_1 = _q_dot_intrinsic("q4_1")
dot_q5_0 = _q_dot_intrinsic("q5_0")
dot_q5_1 = _q_dot_intrinsic("q5_1")
dot_q8_0 = _q_dot_intrinsic("q8_0")


# --- GEMM micro-kernel -----------------------------------------------------------------------------
# Packed panels: ap float[kc][NR] (NR rows of a, k-major), bp float[kc][MR] (MR rows of b).
# C is row-major with row stride ldc bytes: C[i][j] = dst row i (a column of b), element j.

def _gemm_body(b, kc, ap, bp, c, ldc, accumulate):
    mr, nr, vl = GEMM_MR, GEMM_NR, VL
    nv = nr // vl
    zero = ir.Constant(_v(_F32, vl), [0.0] * vl)
    accs = [[_acc(b, zero) for _ in range(nv)] for _ in range(mr)]

    def body(b, p):
        ab = b.add(ap, b.mul(p, _c(_I64, 4 * nr)))
        bb = b.add(bp, b.mul(p, _c(_I64, 4 * mr)))
        av = [_load(b, b.add(ab, _c(_I64, 4 * vl * v)), _v(_F32, vl), align=4) for v in range(nv)]
        for i in range(mr):
            s = _splat(b, _load(b, b.add(bb, _c(_I64, 4 * i)), _F32, align=4), vl)
            for v in range(nv):
                b.store(_fma(b, av[v], s, b.load(accs[i][v])), accs[i][v])
    _for(b, kc, body)
    add = b.icmp_signed("!=", accumulate, _c(_I64, 0))
    for i in range(mr):
        row = b.add(c, b.mul(_c(_I64, i), ldc))
        for v in range(nv):
            addr = b.add(row, _c(_I64, 4 * vl * v))
            acc = b.load(accs[i][v])
            old = _load(b, addr, _v(_F32, vl))
            _store(b, addr, b.select(add, b.fadd(old, acc), acc))
    b.ret_void()


_GEMM_FNTY = ir.FunctionType(ir.VoidType(), [_I64] * 6)


@intrinsic
def gemm_tile(typingctx, kc, ap, bp, c, ldc, accumulate):
    """C[MR x NR] = (accumulate ? C : 0) + sum_p bp[p][i] * ap[p][j] (float32)."""
    if not all(isinstance(t, types.Integer) for t in (kc, ap, bp, c, ldc, accumulate)):
        return None

    def codegen(context, builder, sig, args):
        a = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
        fn = _fn(builder.module, f"pyggml_gemm_{GEMM_MR}x{GEMM_NR}", _GEMM_FNTY, _gemm_body)
        builder.call(fn, a)
        return context.get_dummy_value()
    return types.none(kc, ap, bp, c, ldc, accumulate), codegen
