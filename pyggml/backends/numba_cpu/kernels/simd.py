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
  dot_q4_0 / dot_q4_1 / dot_q5_0 / dot_q5_1 / dot_q8_0 / dot_iq4_nl
                (nrows, nb, x, xstride, yq, yd, ys, out)
                                rows of nb raw ggml blocks against activations in the
                                "Q8 split" layout (int8 q contiguous; per block float d and
                                float s = d * sum(q)): u8 x i8 products with pmaddubsw, pairs
                                summed with pmaddwd, scaled per block in float (ggml's own
                                instruction sequence on AVX2); several weight rows per pass
                                share each activation block (AVX2 Q4_1/Q4_0/Q8_0: 4 rows and
                                their scale work; AVX-512 Q4_*/Q8_0: see _x2_body)
  (flash attention's micro-kernels qk_/pv_ are built from these helpers in fa_simd.py)
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
from numba.core import cgutils
from numba.core import types
from numba.extending import intrinsic

from ...._numba_cache import AVX2_CPU
from ....quants.iq4_values import KVALUES_IQ4NL

# PYGGML_SIMD chooses the widest instruction set the kernels may use, so every fast path's
# narrower twin can be tested and benchmarked on any machine: auto (what the CPU has),
# avx2 (AVX2/FMA/F16C even where AVX-512 exists: the code an AVX2-only machine runs),
# generic (no x86 intrinsics). The mode is part of the kernel cache key (_numba_cache.py).
SIMD_MODES = ("auto", "avx512", "avx2", "generic")
_MODE = os.environ.get("PYGGML_SIMD", "auto").lower()
if _MODE not in SIMD_MODES:
    raise ImportError(f"PYGGML_SIMD={_MODE!r}: expected one of {', '.join(SIMD_MODES)}")


# avx2 mode compiles for an AVX2 CPU (_numba_cache.AVX2_CPU), not only with AVX2 intrinsics:
# what LLVM generates itself (its vectorizer, the width of our vector IR) follows the target,
# and on an AVX-512 host it would otherwise be zmm code an AVX2-only machine never runs.
AVX2_CPU_FEATURES = {"avx", "avx2", "fma", "f16c", "bmi", "bmi2", "popcnt", "sse4.1", "sse4.2"}


def _check_avx2_target() -> None:
    from numba.core.registry import cpu_target
    if "avx512" in cpu_target.target_context.codegen()._tm_features:
        raise ImportError("PYGGML_SIMD=avx2: Numba's target was fixed before pyggml was imported "
                          f"(it has AVX-512); set NUMBA_CPU_NAME={AVX2_CPU} NUMBA_CPU_FEATURES= too")


def _host_features() -> set:
    import numba
    if _MODE == "avx2" and numba.config.CPU_NAME == AVX2_CPU:
        _check_avx2_target()
        return set(AVX2_CPU_FEATURES)
    if numba.config.CPU_NAME is not None:   # code compiled for another CPU: portable only
        return set()
    try:
        return {k for k, v in llvm.get_host_cpu_features().items() if v}
    except Exception:                       # pragma: no cover (no feature query)
        return set()


_FEATURES = _host_features()
HAVE_AVX2 = {"avx2", "fma"} <= _FEATURES and _MODE != "generic"
HAVE_AVX512 = {"avx512f", "avx512bw", "avx512vl"} <= _FEATURES and _MODE in ("auto", "avx512")
HAVE_F16C = "f16c" in _FEATURES
HAVE_VNNI = HAVE_AVX512 and "avx512vnni" in _FEATURES

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

def _fn(module, name, fnty, build, noinline=True):
    """The module's function `name`, building its body on first request."""
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name=name)
        fn.linkage = "internal"
        if noinline:
            fn.attributes.add("noinline")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        build(b, *fn.args)
    return fn


def _intrinsic_n(name, n_args, body, noinline=True):
    """A Numba intrinsic `name(a0, .., a{n_args-1})` (int64 addresses/sizes) calling the LLVM
    function built by body (emitted once per module; noinline=False leaves LLVM free to
    inline it into its caller)."""
    fnty = ir.FunctionType(ir.VoidType(), [_I64] * n_args)

    def typer(typingctx, *args_t):
        if not all(isinstance(t, types.Integer) for t in args_t):
            return None

        def codegen(context, builder, sig, args):
            a = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args)]
            builder.call(_fn(builder.module, name, fnty, body, noinline), a)
            return context.get_dummy_value()
        return types.none(*args_t), codegen
    # Numba's intrinsics need explicit parameters (no *args): a typer of n_args names
    params = ", ".join(f"a{i}" for i in range(n_args))
    ns = {"typer": typer}
    exec(f"def {name}(typingctx, {params}):\n    return typer(typingctx, {params})\n", ns)
    return intrinsic(ns[name])


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


def _prefetch(b, addr):
    """Prefetch the line at addr for reading (into all cache levels)."""
    _intr(b, "llvm.prefetch.p0", ir.VoidType(),
          [b.inttoptr(addr, _I8.as_pointer()), _c(_I32, 0), _c(_I32, 3), _c(_I32, 1)])


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
    """dot(nrows, n, x, xstride, y, out) for float rows of one element type."""
    return _intrinsic_n(f"pyggml_{name}_v{VL}", 6, _float_dot_body(load_x, esize_x))


dot_f32 = _float_dot_intrinsic("dot_f32", _ld_f32, 4)
dot_f16 = _float_dot_intrinsic("dot_f16", _ld_f16, 2)
dot_bf16 = _float_dot_intrinsic("dot_bf16", _ld_bf16, 2)


# --- quantized dots --------------------------------------------------------------------------------
# Activations ("Q8 split" layout, written by the kernels): yq int8[32 * nb], yd float[nb] (scale),
# ys float[nb] (= d * sum of the block's q). Weights are raw ggml blocks.

def maddubs_i16(b, xu, yi):
    """pmaddubsw: <32 x u8> x <32 x i8> -> <16 x i16>, adjacent products summed (AVX2
    saturates those sums; the portable form wraps: the same while they fit in int16)."""
    if HAVE_AVX2:
        return _intr(b, "llvm.x86.avx2.pmadd.ub.sw", _v(_I16, 16), [xu, yi])
    return adj_sum(b, b.mul(b.zext(xu, _v(_I16, 32)), b.sext(yi, _v(_I16, 32))))


def madd_ones_i32(b, x):
    """pmaddwd with ones: <16 x i16> -> <8 x i32>, adjacent pairs summed."""
    if HAVE_AVX2:
        return _intr(b, "llvm.x86.avx2.pmadd.wd", _v(_I32, 8),
                     [x, ir.Constant(_v(_I16, 16), [1] * 16)])
    return adj_sum(b, b.sext(x, _v(_I32, 16)))


def adj_sum(b, x):
    """<2n x iW> -> <n x iW>: x[2i] + x[2i+1] (the portable form of the pair sums above)."""
    n = x.type.count // 2
    ev = b.shuffle_vector(x, x, ir.Constant(_v(_I32, n), list(range(0, 2 * n, 2))))
    od = b.shuffle_vector(x, x, ir.Constant(_v(_I32, n), list(range(1, 2 * n, 2))))
    return b.add(ev, od)


def _maddubs_pairs(b, xu, yi):
    """<32 x u8> x <32 x i8> -> <8 x i32> sums of 4 adjacent products (pmaddubsw + pmaddwd)."""
    if HAVE_AVX2:
        return madd_ones_i32(b, maddubs_i16(b, xu, yi))
    # portable: exact 32-bit products, summed in groups of 4 (no saturation can occur for
    # the operands used here, so the results equal the AVX2 sequence)
    return sum_quads(b, b.mul(b.zext(xu, _v(_I32, 32)), b.sext(yi, _v(_I32, 32))))


def sum_quads(b, p):
    """<32 x i32> -> <8 x i32>: lane i is p[4i] + p[4i+1] + p[4i+2] + p[4i+3] (the portable
    form of pmaddwd's horizontal step)."""
    out = None
    for g in range(4):
        part = b.shuffle_vector(p, p, ir.Constant(_v(_I32, 8), [4 * i + g for i in range(8)]))
        out = part if out is None else b.add(out, part)
    return out


def lookup16(b, table, idx):
    """<32 x i8> indices 0..15 -> table[idx] (16 int8 constants): pshufb with AVX2."""
    if HAVE_AVX2:
        t = ir.Constant(_v(_I8, 32), [int(v) for v in table] * 2)
        return _intr(b, "llvm.x86.avx2.pshuf.b", _v(_I8, 32), [t, idx])
    out = ir.Constant(_v(_I8, 32), [0] * 32)
    for j, v in enumerate(table):
        hit = b.icmp_unsigned("==", idx, ir.Constant(_v(_I8, 32), [j] * 32))
        out = b.select(hit, ir.Constant(_v(_I8, 32), [int(v)] * 32), out)
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
    "iq4_nl": (18, 2, None, False, 0),     # codes -> kvalues_iq4nl, then as q8_0
}
_UNROLL_Q = 2


_QROWS = 2             # weight rows per pass: the activation block is loaded once for them
# bytes ahead of the block being read that the Q8_0 dot prefetches: the 30 MB 49152x576
# output projection of SmolLM2 ran 1.3-1.4x faster in repeated dots on one thread (both
# SIMD modes; alternating in-process runs, the weight in L3); a whole mul_mat node against
# ggml and the model's kernel time moved within their noise at load ~20. No change on
# small (L2-resident) rows. The 4-bit/5-bit rows of a decode step stream from memory too, so
# every format prefetches: 576x1536 rows streamed from a 100 MB set, one thread, alternating
# in one process (load ~4.5), PYGGML_SIMD=avx2: Q4_1 5.3 -> 6.8 GB/s, Q4_0 5.2 -> 6.8, Q5_0
# 5.6 -> 7.7; the same 256-bit Q4_0 body on AVX-512 5.4 -> 6.5.
Q_PREFETCH = 4096
_PREFETCH_FMTS = tuple(_QFMT)          # read at build time: an A/B script can drop one


def _q_isum(b, fmt, xb, qy):
    """<8 x i32> integer partial dots of the weight block at xb with the activation quants qy
    (the block's 32 products summed in groups of 4)."""
    qs_off, qh_off = _QFMT[fmt][1], _QFMT[fmt][2]
    if fmt in ("q8_0", "iq4_nl"):
        if fmt == "q8_0":
            qx = _load(b, b.add(xb, _c(_I64, qs_off)), _v(_I8, 32))
        else:
            qx = lookup16(b, KVALUES_IQ4NL, _nibbles(b, b.add(xb, _c(_I64, qs_off))))
        if HAVE_AVX2:           # |x| * sign(y, x): unsigned x signed, as ggml
            ax = _intr(b, "llvm.abs.v32i8", _v(_I8, 32), [qx, _c(_I1, 0)])
            sy_ = _intr(b, "llvm.x86.avx2.psign.b", _v(_I8, 32), [qy, qx])
            isum = _maddubs_pairs(b, ax, sy_)
        else:
            isum = sum_quads(b, b.mul(b.sext(qx, _v(_I32, 32)), b.sext(qy, _v(_I32, 32))))
    else:
        qx = _nibbles(b, b.add(xb, _c(_I64, qs_off)))
        if qh_off is not None:
            qx = b.or_(qx, _high_bits(b, b.add(xb, _c(_I64, qh_off))))
        isum = _maddubs_pairs(b, qx, qy)
    return isum


def _q_dot_body(fmt, nrows_pass=_QROWS, shared=False):
    """Body of dot_<fmt>: passes of nrows_pass rows (a power of 2), then of 2 and 1 row(s) for
    the rest. shared: a pass's half->float conversions and scale products are one vector op
    for all its rows (the results are bit for bit those of the per-row scalar work)."""
    bsize, qs_off, qh_off, has_min, offset = _QFMT[fmt]
    nh = 2 if has_min else 1            # halves per row and block: (d, m) or d

    def block(b, xs, qy, dy, sy, i, accs, accms):
        """Block i of each row in xs against one activation block (qy, dy, sy)."""
        for x, acc, accm in zip(xs, accs, accms):
            xb = b.add(x, b.mul(i, _c(_I64, bsize)))
            if Q_PREFETCH and fmt in _PREFETCH_FMTS:
                _prefetch(b, b.add(xb, _c(_I64, Q_PREFETCH)))
            dx = _f16(b, xb)
            isum = _q_isum(b, fmt, xb, qy)
            pf = b.sitofp(isum, _v(_F32, 8))
            b.store(_fma(b, pf, _splat(b, b.fmul(dx, dy), 8), b.load(acc)), acc)
            if has_min:                 # + m * d_y * sum(q_y)
                mx = _f16(b, b.add(xb, _c(_I64, 2)))
                b.store(_intr(b, "llvm.fma.f32", _F32, [mx, sy, b.load(accm)]), accm)
            elif offset:                # - offset * d_x * d_y * sum(q_y)
                b.store(_intr(b, "llvm.fma.f32", _F32, [dx, sy, b.load(accm)]), accm)

    def block_shared(b, xs, qy, dy, sy, i, accs, accm):
        """block() for n > 1 rows: their halves gathered into one vector, one conversion, one
        multiply by d_y, one fma of the min/offset term; per row only a broadcast of its scale.
        accm: <nh * n x float>, row r's term in lane nh * r + nh - 1."""
        n = len(xs)
        ht = _I32 if has_min else _I16
        xbs, dm = _row_headers(b, xs, i, bsize, ht, 1, False)
        sc = b.fmul(dm, _splat(b, dy, nh * n))
        if has_min:                     # lanes (d, m): + m * d_y * sum(q_y) in the m lanes
            zs = b.insert_element(ir.Constant(_v(_F32, 2), [0.0, 0.0]), sy, _c(_I32, 1))
            zs = b.shuffle_vector(zs, zs, ir.Constant(_v(_I32, nh * n), [0, 1] * n))
            b.store(_fma(b, dm, zs, b.load(accm)), accm)
        elif offset:
            b.store(_fma(b, dm, _splat(b, sy, n), b.load(accm)), accm)
        for r, (xb, acc) in enumerate(zip(xbs, accs)):
            if Q_PREFETCH and fmt in _PREFETCH_FMTS:
                _prefetch(b, b.add(xb, _c(_I64, Q_PREFETCH)))
            pf = b.sitofp(_q_isum(b, fmt, xb, qy), _v(_F32, 8))
            sc8 = b.shuffle_vector(sc, sc, ir.Constant(_v(_I32, 8), [nh * r] * 8))
            b.store(_fma(b, pf, sc8, b.load(acc)), acc)

    def rows(b, nb, xs, yq, yd, ys):
        """Dots of the rows xs (1..nrows_pass of them) with the activation row: a float per row."""
        zero8 = ir.Constant(_v(_F32, 8), [0.0] * 8)
        nacc = _UNROLL_Q if len(xs) == 1 else 1          # independent chains: rows or unroll
        vec = shared and len(xs) > 1
        accs = [[_acc(b, zero8) for _ in xs] for _ in range(nacc)]
        if vec:
            nv = nh * len(xs)
            accms = [_acc(b, ir.Constant(_v(_F32, nv), [0.0] * nv))]
        else:
            accms = [[_acc(b, _c(_F32, 0.0)) for _ in xs] for _ in range(nacc)]
        blk = block_shared if vec else block
        nit = b.udiv(nb, _c(_I64, nacc))

        def act(b, i):
            qy = _load(b, b.add(yq, b.mul(i, _c(_I64, 32))), _v(_I8, 32))
            dy = _load(b, b.add(yd, b.mul(i, _c(_I64, 4))), _F32)
            sy = _load(b, b.add(ys, b.mul(i, _c(_I64, 4))), _F32)
            return qy, dy, sy

        def body(b, it):
            for u in range(nacc):
                i = b.add(b.mul(it, _c(_I64, nacc)), _c(_I64, u))
                blk(b, xs, *act(b, i), i, accs[u], accms[u])
        _for(b, nit, body)
        rest = b.sub(nb, b.mul(nit, _c(_I64, nacc)))

        def tail(b, j):
            i = b.add(b.mul(nit, _c(_I64, nacc)), j)
            blk(b, xs, *act(b, i), i, accs[0], accms[0])
        _for(b, rest, tail)
        out = []
        for r in range(len(xs)):
            v = b.load(accs[0][r])
            if vec:
                m = b.extract_element(b.load(accms[0]), _c(_I32, nh * r + nh - 1))
            else:
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

    return _passes_body(nrows_pass, rows)


def _row_headers(b, xs, i, bsize, ht, per_row, second):
    """The rows' block headers (d, or d and m, as one integer of type ht) at block i in lane
    per_row * r of one vector, and at block i + 1 in lane per_row * r + 1 when `second`,
    widened to float with one conversion for all rows. Returns (the rows' block addresses,
    <halves x float>); unused lanes are zero."""
    xbs = [b.add(x, b.mul(i, _c(_I64, bsize))) for x in xs]
    n = per_row * len(xs)
    hv = ir.Constant(_v(ht, n), [0] * n)
    for r, xb in enumerate(xbs):
        hv = b.insert_element(hv, _load(b, xb, ht), _c(_I32, per_row * r))
        if second:
            hv = b.insert_element(hv, _load(b, b.add(xb, _c(_I64, bsize)), ht),
                                  _c(_I32, per_row * r + 1))
    h = ht.width // 16 * n
    return xbs, b.fpext(b.bitcast(hv, _v(_HALF, h)), _v(_F32, h))


def _row_passes(b, nrows, nrows_pass, x, xstride, out, rows):
    """out[r] = rows(b, row addresses)[..] in passes of nrows_pass rows (a power of 2), then
    one pass of each smaller power of 2 the rest holds (the last row alone, if any)."""
    def run(b, r0, n):
        xs = [b.add(x, b.mul(b.add(r0, _c(_I64, j)), xstride)) for j in range(n)]
        for j, v in enumerate(rows(b, xs)):
            _store(b, b.add(out, b.mul(b.add(r0, _c(_I64, j)), _c(_I64, 4))), v, align=4)

    ngrp = b.udiv(nrows, _c(_I64, nrows_pass))
    _for(b, ngrp, lambda b, g: run(b, b.mul(g, _c(_I64, nrows_pass)), nrows_pass))
    r0 = b.mul(ngrp, _c(_I64, nrows_pass))
    rest = b.sub(nrows, r0)
    n = nrows_pass // 2
    while n >= 1:
        bit = b.and_(rest, _c(_I64, n))
        with b.if_then(b.icmp_unsigned("!=", bit, _c(_I64, 0))):
            run(b, r0, n)
        r0 = b.add(r0, bit)
        n //= 2


def _passes_body(nrows_pass, rows):
    """A dot body: rows(b, nb, xs, yq, yd, ys) over the rows in _row_passes' passes."""
    def build(b, nrows, nb, x, xstride, yq, yd, ys, out):
        _row_passes(b, nrows, nrows_pass, x, xstride, out,
                    lambda b, xs: rows(b, nb, xs, yq, yd, ys))
        b.ret_void()
    return build


# The two-block steps (_nib2_body, and _x2_body on AVX-512): blocks i, i + 1 a step, an odd
# last block as a step with block i + 1 zeroed; Q4_1 / Q4_0's min / offset terms summed per
# row in two lanes and added once at the end.

def _pair_steps(b, nb, step):
    """step(b, i, one) for i = 0, 2, 4, ..: one is False for a pair of blocks, True for the odd
    last block alone."""
    npair = b.udiv(nb, _c(_I64, 2))
    _for(b, npair, lambda b, p: step(b, b.mul(p, _c(_I64, 2)), False))
    _for(b, b.sub(nb, b.mul(npair, _c(_I64, 2))),
         lambda b, j: step(b, b.mul(npair, _c(_I64, 2)), True))


def _pair_scales(b, yd, ys, i, one):
    """The activation blocks' (d_y, d_y * sum(q_y)) at i, i + 1 as two <2 x float> (the second
    lanes 0 when one)."""
    if one:
        z2 = ir.Constant(_v(_F32, 2), [0.0, 0.0])
        return (b.insert_element(z2, _load(b, b.add(yd, b.mul(i, _c(_I64, 4))), _F32), _c(_I32, 0)),
                b.insert_element(z2, _load(b, b.add(ys, b.mul(i, _c(_I64, 4))), _F32), _c(_I32, 0)))
    return (_load(b, b.add(yd, b.mul(i, _c(_I64, 4))), _v(_F32, 2)),
            _load(b, b.add(ys, b.mul(i, _c(_I64, 4))), _v(_F32, 2)))


def _pair_min(b, s_, m, o, q41):
    """A row's dot s_ with its min (Q4_1: + lanes o + 1, o + 3 of m) or offset term (Q4_0:
    - 8 x (lanes o, o + 1)) added."""
    if q41:
        return b.fadd(s_, b.fadd(b.extract_element(m, _c(_I32, o + 1)),
                                 b.extract_element(m, _c(_I32, o + 3))))
    return b.fsub(s_, b.fmul(_c(_F32, 8.0), b.fadd(b.extract_element(m, _c(_I32, o)),
                                                   b.extract_element(m, _c(_I32, o + 1)))))


def _nib2_body(fmt, nrows_pass):
    """256-bit Q4_1 / Q4_0 dot, two blocks per step: blocks i and i+1 of a row as one register
    of packed bytes ([qs_i | qs_i+1]); its low nibbles against [y_i[0:16] | y_i+1[0:16]], its
    high ones against [y_i[16:32] | y_i+1[16:32]] (those two activation registers made once per
    step for all rows), the two pmaddubsw results added in 16 bits (|sum| <= 4 x 15 x 127),
    one pmaddwd: 4 int32 per block, times [d_i dy_i] x 4 ++ [d_i+1 dy_i+1] x 4 in one fma.
    The halves of both blocks of every row: one conversion, one multiply (as _q_dot_body's
    shared passes). An odd last block runs the step with block i+1 zeroed."""
    bsize, qs_off = _QFMT[fmt][0], _QFMT[fmt][1]
    q41 = fmt == "q4_1"
    nm = 4 if q41 else 2                    # halves per row and step: (d, m) x 2 or d x 2
    ht = _I32 if q41 else _I16              # one block's halves as one integer
    m0f = ir.Constant(_v(_I8, 32), [0x0F] * 32)
    z16 = ir.Constant(_v(_I8, 16), [0] * 16)
    z2 = ir.Constant(_v(_F32, 2), [0.0, 0.0])

    def rows(b, nb, xs, yq, yd, ys):
        nr = len(xs)
        accs = [_acc(b, ir.Constant(_v(_F32, 8), [0.0] * 8)) for _ in xs]
        # Q4_1: m * d_y * sum(q_y) in lanes 4r+1, 4r+3; Q4_0: d_x * d_y * sum(q_y) in 2r, 2r+1
        accm = _acc(b, ir.Constant(_v(_F32, nm * nr), [0.0] * (nm * nr)))

        def tile(b, v, idx):
            return b.shuffle_vector(v, v, ir.Constant(_v(_I32, nm * nr), idx * nr))

        def step(b, i, one):
            ya = _load(b, b.add(yq, b.mul(i, _c(_I64, 32))), _v(_I8, 32))
            yb = (ir.Constant(_v(_I8, 32), [0] * 32) if one else
                  _load(b, b.add(yq, b.mul(b.add(i, _c(_I64, 1)), _c(_I64, 32))), _v(_I8, 32)))
            dy, sy = _pair_scales(b, yd, ys, i, one)
            ylo = b.shuffle_vector(ya, yb, ir.Constant(_v(_I32, 32),
                                                       list(range(16)) + list(range(32, 48))))
            yhi = b.shuffle_vector(ya, yb, ir.Constant(_v(_I32, 32),
                                                       list(range(16, 32)) + list(range(48, 64))))
            xb0s, dm = _row_headers(b, xs, i, bsize, ht, 2, not one)
            if q41:
                sc = b.fmul(dm, tile(b, dy, [0, 0, 1, 1]))
                zs = b.shuffle_vector(z2, sy, ir.Constant(_v(_I32, 4), [0, 2, 1, 3]))
                b.store(_fma(b, dm, tile(b, zs, [0, 1, 2, 3]), b.load(accm)), accm)
            else:
                sc = b.fmul(dm, tile(b, dy, [0, 1]))
                b.store(_fma(b, dm, tile(b, sy, [0, 1]), b.load(accm)), accm)
            for r, (xb0, acc) in enumerate(zip(xb0s, accs)):
                if Q_PREFETCH:
                    _prefetch(b, b.add(xb0, _c(_I64, Q_PREFETCH)))
                q0 = _load(b, b.add(xb0, _c(_I64, qs_off)), _v(_I8, 16))
                q1 = z16 if one else _load(b, b.add(xb0, _c(_I64, bsize + qs_off)), _v(_I8, 16))
                q = b.shuffle_vector(q0, q1, ir.Constant(_v(_I32, 32), list(range(32))))
                lo = b.and_(q, m0f)
                hi = b.and_(b.lshr(q, ir.Constant(_v(_I8, 32), [4] * 32)), m0f)
                p16 = b.add(maddubs_i16(b, lo, ylo), maddubs_i16(b, hi, yhi))
                f = b.sitofp(madd_ones_i32(b, p16), _v(_F32, 8))
                sc8 = b.shuffle_vector(sc, sc, ir.Constant(
                    _v(_I32, 8), [nm * r] * 4 + [nm * r + nm // 2] * 4))
                b.store(_fma(b, f, sc8, b.load(acc)), acc)

        _pair_steps(b, nb, step)
        m = b.load(accm)
        return [_pair_min(b, _hsum(b, b.load(acc)), m, nm * r, q41) for r, acc in enumerate(accs)]

    return _passes_body(nrows_pass, rows)


# The AVX2 row dots' passes (session 11; decode mat-vecs, one thread, compute-bound: L1-hot rows
# ran about as fast as streamed ones). Per block and row the dot above spends ~20 instructions
# (Q4_1), half on scalar scale work: two half->float conversions, a product, a broadcast, a
# scalar min fma. Passes of 4 rows share it: the rows' halves are gathered into one vector,
# converted, multiplied and (min/offset) fma'd once; per row only a broadcast is left. Q4_1 /
# Q4_0 then take two blocks per step (_nib2_body: one and, shift, and, two pmaddubsw, an add and
# one pmaddwd per row and block pair). Inner loop instructions per row and block, Q4_1 / Q4_0 /
# Q8_0: 20.5 / 18.5 / 15.5 -> shared 14.5 / 14.3 / 12.5 -> two-block 10.8 / 10.4 (Q4_*).
# One thread CPU time, alternating in one process, 576-wide rows, PYGGML_SIMD=avx2, load 9-12
# (medians swing up to 1.5x run to run; the order held in every run), medians of 10 rounds,
# hot (64 rows) / streamed (48 MB), GB/s: Q4_1 old 7.2 / 6.6, shared 9.8 / 9.0, two-block
# 10.8 / 9.6; Q4_0 old 6.3 / 5.9, shared 7.8 / 7.1, two-block 9.2 / 8.4 (one run); Q8_0 old
# 10.6 / 9.2, shared 13.0 / 9.5. tools/bench_decode_rows.py --ab (SmolLM2's rows: Q4_1 + the
# Q8_0 output, in order): 6.5 -> 8.6 GB/s, hot 5.3 -> 9.5,
# where a plain read of the same bytes runs 9.6.
# Q8_0 keeps the shared one-block pass (bit for bit the old results; it streams at the read
# limit either way); the two-block Q4_* dots sum a block's 32 products in 4 int32 lanes, not 8,
# so their float results differ from the old ones by rounding (~2e-7 relative here).
_AVX2_ROWS = {"q4_1": 4, "q4_0": 4, "q8_0": 4}


def avx2_q_body(fmt):
    """The AVX2 dot body dot_<fmt> uses (fmt in _AVX2_ROWS)."""
    if fmt in ("q4_1", "q4_0"):
        return _nib2_body(fmt, _AVX2_ROWS[fmt])
    return _q_dot_body(fmt, _AVX2_ROWS[fmt], shared=True)


# --- AVX-512: two blocks per 512-bit step (Q4_1, Q4_0; Q8_0 with VNNI) ---------------------------
# The 256-bit dot above spends most of a block on scalar work: two half->float conversions,
# a scale product and its broadcast per block and row. Here a step takes blocks i and i+1:
# their 64 quant bytes in one register against 64 activation bytes (one vpdpbusd with VNNI,
# else pmaddubsw + pmaddwd), 16 int32 partials (8 per block, the same integers as the 256-bit
# path) -> float, times [d_i dy_i] x 8 ++ [d_i+1 dy_i+1] x 8 in one fma. Q4_1's (d, m) halves of
# both blocks are one 64-bit gather and one conversion, (d dy, m sy) one multiply. With the
# compute halved the 4-bit rows stream from memory too, so they prefetch as Q8_0 does. Measured
# on one thread (SmolLM2's 576x1536 Q4_1 rows streamed from a 100 MB set, alternating in one
# process, load ~10): 5.0-6.1 -> 8.6-9.1 GB/s (without the prefetch ~6.5: no gain), where a
# plain read of the same buffer runs ~10.5 GB/s.
# An odd last block runs the same step with block i+1 zeroed (no byte past the row is read).
# Q4_0 is Q4_1's step with [d_i, d_i+1] for (d, m): its "- 8 d_x d_y sum(q_y)" is summed per
# lane as Q4_1's min is and subtracted once at the end, as the 256-bit dot does.
# Fewer instructions per byte (session 11; the decode mat-vecs are compute-bound on one
# thread: the same rows ran about as fast L1-hot as streamed): the 4-bit quants are two
# broadcast loads, one insert and one AND (no cross-lane permute; with VNNI no shift either:
# the high nibbles stay 16 x their value, their lanes scaled by 1/16 once per row, exactly;
# pmaddubsw's 16-bit sums would saturate, so without VNNI they are shifted down), and a pass
# takes four rows, whose halves are one conversion, one multiply and one min fma per step.
# The results are bit for bit those of the two-row step. One thread, thread CPU time,
# alternating in one process (load 8-9), 576-wide rows, hot (64 rows) / streamed (48 MB):
# Q4_1 9.7 -> 13.1 / 9.0 -> 9.9 GB/s; Q4_0 8.9 -> 11.1 / 8.7 -> 9.4; Q8_0 19.2 -> 24.1 /
# 10.2 -> 10.0 (Q8_0 streams at the read limit either way).
_X2_ROWS = 4

def _dpbusd(b, acc, xu, yi, vnni):
    """<16 x i32> acc + sums of 4 adjacent u8 x i8 products of <64 x i8> xu, yi (without VNNI
    through pmaddubsw, whose 16-bit pair sums saturate past 32767)."""
    if vnni:
        return _intr(b, "llvm.x86.avx512.vpdpbusd.512", _v(_I32, 16),
                     [acc, b.bitcast(xu, _v(_I32, 16)), b.bitcast(yi, _v(_I32, 16))])
    p16 = _intr(b, "llvm.x86.avx512.pmaddubs.w.512", _v(_I16, 32), [xu, yi])
    s = _intr(b, "llvm.x86.avx512.pmaddw.d.512", _v(_I32, 16),
              [p16, ir.Constant(_v(_I16, 32), [1] * 32)])
    return b.add(acc, s)


def _cat(b, x, y):
    n = x.type.count
    return b.shuffle_vector(x, y, ir.Constant(_v(_I32, 2 * n), list(range(2 * n))))


def _x2_body(fmt, nrows_pass=_X2_ROWS, vnni=None):
    bsize, qs_off = _QFMT[fmt][0], _QFMT[fmt][1]
    z16i = ir.Constant(_v(_I32, 16), [0] * 16)
    vnni = HAVE_VNNI if vnni is None else vnni
    nib = fmt in ("q4_1", "q4_0")
    x16 = nib and vnni          # high nibbles left in place: fine for vpdpbusd, not pmaddubsw
    nm = 4 if fmt == "q4_1" else 2          # halves per row and step: (d, m) or d, two blocks
    ht = _I32 if fmt == "q4_1" else _I16    # one block's halves as one integer

    def quants(b, xb0, xb1, one):
        """Blocks i, i+1 of a row as <64 x i8> in the activations' order (block i+1 zero
        when one). 4-bit: each block's 16 bytes twice (two broadcast loads, one insert), then
        one AND keeps the low nibbles in the first copy and the high ones, in place (16 x
        their value), in the second."""
        if nib:
            q0 = _load(b, b.add(xb0, _c(_I64, qs_off)), _v(_I8, 16))
            q1 = (ir.Constant(_v(_I8, 16), [0] * 16) if one
                  else _load(b, b.add(xb1, _c(_I64, qs_off)), _v(_I8, 16)))
            q = b.shuffle_vector(q0, q1, ir.Constant(_v(_I32, 64), 2 * list(range(16))
                                                     + 2 * list(range(16, 32))))
            if not x16:             # pmaddubsw: 240 x 127 x 2 would saturate; shift them down
                hi = ir.Constant(_v(_I1, 64), ([False] * 16 + [True] * 16) * 2)
                q = b.select(hi, b.lshr(q, ir.Constant(_v(_I8, 64), [4] * 64)), q)
                return b.and_(q, ir.Constant(_v(_I8, 64), [0x0F] * 64))
            return b.and_(q, ir.Constant(_v(_I8, 64), ([0x0F] * 16 + [0xF0] * 16) * 2))
        q0 = _load(b, b.add(xb0, _c(_I64, qs_off)), _v(_I8, 32))
        q1 = (ir.Constant(_v(_I8, 32), [0] * 32) if one
              else _load(b, b.add(xb1, _c(_I64, qs_off)), _v(_I8, 32)))
        return b.xor(_cat(b, q0, q1), ir.Constant(_v(_I8, 64), [-128] * 64))   # q + 128

    def build(b, nrows, nb, x, xstride, yq, yd, ys, out):
        z2 = ir.Constant(_v(_F32, 2), [0.0, 0.0])

        def rows(b, xs):
            nr = len(xs)
            accs = [_acc(b, ir.Constant(_v(_F32, 16), [0.0] * 16)) for _ in xs]
            # Q4_1: m * d_y * sum(q_y) in lanes 4r+1, 4r+3; Q4_0: d_x * d_y * sum(q_y) in 2r, 2r+1
            accm = _acc(b, ir.Constant(_v(_F32, nm * nr), [0.0] * (nm * nr)))

            def tile(b, v):
                return b.shuffle_vector(v, v, ir.Constant(_v(_I32, nm * nr), list(range(nm)) * nr))

            def step(b, i, one):
                ya = b.add(yq, b.mul(i, _c(_I64, 32)))
                y = (_cat(b, _load(b, ya, _v(_I8, 32)), ir.Constant(_v(_I8, 32), [0] * 32)) if one
                     else _load(b, ya, _v(_I8, 64)))
                dy, sy = _pair_scales(b, yd, ys, i, one)
                if fmt == "q4_1":
                    ysc = b.shuffle_vector(dy, sy, ir.Constant(_v(_I32, 4), [0, 2, 1, 3]))
                    ysm = b.shuffle_vector(z2, sy, ir.Constant(_v(_I32, 4), [0, 2, 1, 3]))
                    sel = [0] * 8 + [2] * 8
                    init = z16i
                elif fmt == "q4_0":     # nibbles . y, then - 8 * d_x * d_y * sum(q_y) at the end
                    ysc, ysm = dy, sy
                    sel = [0] * 8 + [1] * 8
                    init = z16i
                else:                   # (q + 128) . y - 128 * (sums of 4 y)
                    ysc = dy
                    init = b.sub(z16i, _dpbusd(b, z16i, ir.Constant(_v(_I8, 64), [-128] * 64), y,
                                               vnni))
                    sel = [0] * 8 + [1] * 8
                # every row's halves of both blocks in one vector: one conversion, one multiply
                xb0s, dm = _row_headers(b, xs, i, bsize, ht, 2, not one)
                sc = b.fmul(dm, tile(b, ysc))
                for r, (xb0, acc) in enumerate(zip(xb0s, accs)):
                    if Q_PREFETCH:
                        _prefetch(b, b.add(xb0, _c(_I64, Q_PREFETCH)))
                    q = quants(b, xb0, b.add(xb0, _c(_I64, bsize)), one)
                    f = b.sitofp(_dpbusd(b, init, q, y, vnni), _v(_F32, 16))
                    sc16 = b.shuffle_vector(sc, sc, ir.Constant(_v(_I32, 16),
                                                                [nm * r + e for e in sel]))
                    b.store(_fma(b, f, sc16, b.load(acc)), acc)
                if fmt != "q8_0":
                    b.store(_fma(b, dm, tile(b, ysm), b.load(accm)), accm)

            _pair_steps(b, nb, step)
            res = []
            m = b.load(accm)
            for r, acc in enumerate(accs):
                v = b.load(acc)
                if x16:                 # the high-nibble lanes hold 16 x their sums, exactly
                    v = b.fmul(v, ir.Constant(_v(_F32, 16), ([1.0] * 4 + [0.0625] * 4) * 2))
                s_ = _hsum(b, v)
                res.append(s_ if fmt == "q8_0" else _pair_min(b, s_, m, nm * r, fmt == "q4_1"))
            return res

        ngrp = b.udiv(nrows, _c(_I64, nrows_pass))

        def group(b, g):
            r0 = b.mul(g, _c(_I64, nrows_pass))
            xs = [b.add(x, b.mul(b.add(r0, _c(_I64, j)), xstride)) for j in range(nrows_pass)]
            for j, v in enumerate(rows(b, xs)):
                _store(b, b.add(out, b.mul(b.add(r0, _c(_I64, j)), _c(_I64, 4))), v, align=4)
        _for(b, ngrp, group)

        def single(b, j):
            r = b.add(b.mul(ngrp, _c(_I64, nrows_pass)), j)
            v, = rows(b, [b.add(x, b.mul(r, xstride))])
            _store(b, b.add(out, b.mul(r, _c(_I64, 4))), v, align=4)
        _for(b, b.sub(nrows, b.mul(ngrp, _c(_I64, nrows_pass))), single)
        b.ret_void()
    return build


def _q_dot_intrinsic(fmt):
    """dot(nrows, nb, x, xstride, yq, yd, ys, out): weight rows of format fmt x activations
    in the Q8 split layout."""
    if HAVE_AVX512 and (fmt in ("q4_1", "q4_0") or (fmt == "q8_0" and HAVE_VNNI)):
        tag = "avx512vnni" if HAVE_VNNI else "avx512"
        return _intrinsic_n(f"pyggml_dot_{fmt}_{tag}_x2_r{_X2_ROWS}", 8, _x2_body(fmt))
    if HAVE_AVX2 and fmt in _AVX2_ROWS:
        kind = "nib2" if fmt in ("q4_1", "q4_0") else "s"
        return _intrinsic_n(f"pyggml_dot_{fmt}_avx2_{kind}_r{_AVX2_ROWS[fmt]}", 8,
                            avx2_q_body(fmt))
    tag = "avx2" if HAVE_AVX2 else "generic"
    return _intrinsic_n(f"pyggml_dot_{fmt}_{tag}_r{_QROWS}", 8, _q_dot_body(fmt))


dot_q4_0 = _q_dot_intrinsic("q4_0")
dot_q4_1 = _q_dot_intrinsic("q4_1")
dot_q5_0 = _q_dot_intrinsic("q5_0")
dot_q5_1 = _q_dot_intrinsic("q5_1")
dot_q8_0 = _q_dot_intrinsic("q8_0")
dot_iq4_nl = _q_dot_intrinsic("iq4_nl")


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


# gemm_tile(kc, ap, bp, c, ldc, accumulate):
# C[MR x NR] = (accumulate ? C : 0) + sum_p bp[p][i] * ap[p][j] (float32)
gemm_tile = _intrinsic_n(f"pyggml_gemm_{GEMM_MR}x{GEMM_NR}", 6, _gemm_body)
