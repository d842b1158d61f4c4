"""Scalar math shared by every Numba kernel: a vectorisable exp and the jit options.

``math.exp`` in a Numba loop compiles to a libm call that LLVM cannot vectorise
(~2 ns per element per pass on the AVX-512 dev machine). ``vexp`` below is plain
arithmetic plus one bit cast, so a loop over a row becomes AVX-512 code.
"""
import math
import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import _isa


def _cache_probe():
    """A function defined beside the kernels, used only to ask Numba where it would cache."""


def _cache_available():
    """Whether Numba can cache kernels compiled from this directory.

    Numba tries NUMBA_CACHE_DIR, then ``__pycache__`` beside the source, then the
    user's cache directory; with none writable (a read-only install and home),
    ``cache=True`` would fail at import. Then kernels compile in every process.
    """
    from numba.core.caching import FunctionCache
    try:
        FunctionCache(_cache_probe)
    except RuntimeError:
        warnings.warn("fastsoftmax: no writable Numba cache directory, so kernels are compiled "
                      "in every process; set NUMBA_CACHE_DIR to a writable directory to keep "
                      "them", RuntimeWarning, stacklevel=2)
        return False
    return True


# The no-NaN / no-inf flags are deliberately left out: NaN and inf are data here.
FASTMATH = {"contract", "arcp", "nsz"}
# error_model="numpy": a float division by zero gives inf/NaN instead of a Python
# exception check in every kernel.
JIT = dict(cache=_cache_available(), nogil=True, fastmath=FASTMATH, error_model="numpy")
JIT_PARALLEL = dict(JIT, parallel=True)
# Reassociation lets LLVM split a row sum or max into vector lanes, so the row
# reductions (and only they) get it: elsewhere it rewrites rounding-sensitive
# expressions, e.g. (x - m) - log_sum into x - (m + log_sum), which cost
# log_softmax 3e-4 relative error on a row of 1e4s (found by the property tests).
JIT_REDUCTION = dict(JIT, fastmath=FASTMATH | {"reassoc"})
# Row writers are inlined into the kernel so that an in-place call can pass the same
# array as source and destination: LLVM then sees one pointer and vectorises the
# loop, where two aliasing arrays fail its overlap check and run a scalar loop
# (9.0 vs 1.6 ns/elem measured for an in-place exp-and-scale row).
# Row functions, which the kernels call once per row through the row driver
# (fastsoftmax/_numba/_split.py), are inlined into their kernel as well: an in-place
# kernel passes them one array twice, which must reach the row writers as one pointer.
JIT_ROW_WRITER = JIT_ROW = dict(JIT, inline="always")


@intrinsic
def _bitcast_to_float(typingctx, bits):
    """Reinterpret int32 bits as float32 (int64 as float64) with one LLVM bitcast."""
    if bits == types.int32:
        float_type, llvm_type = types.float32, ir.FloatType()
    elif bits == types.int64:
        float_type, llvm_type = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return float_type(bits), codegen


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float32 as an int32 (float64: int64), one LLVM bitcast."""
    if x == types.float32:
        int_type, llvm_type = types.int32, ir.IntType(32)
    elif x == types.float64:
        int_type, llvm_type = types.int64, ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_type)

    return int_type(x), codegen


# ---- 16-bit floats: storage types (fastsoftmax/_dtypes.py) ----
# Numba has no 16-bit float type on the CPU, so a bfloat16 array reaches a kernel as its
# bits in a uint16 array and a float16 array as an int16 array. A kernel reads and writes
# its arrays through ``load`` and ``store``, which are plain indexing for float32/float64
# and convert for the 16-bit types; the math runs in float32 (``scalar_like``).
_BFLOAT16_BITS, _FLOAT16_BITS = types.uint16, types.int16
HALF_BITS = (_BFLOAT16_BITS, _FLOAT16_BITS)


@intrinsic
def _bfloat16_to_float(typingctx, bits):
    """float32 from bfloat16 bits: they are the float's top half (exact)."""
    if bits != _BFLOAT16_BITS:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _float_to_bfloat16(typingctx, value):
    """bfloat16 bits of a float32, rounded to nearest even; NaN stays a (quiet) NaN."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        high = builder.lshr(bits, ir.Constant(i32, 16))
        odd = builder.and_(high, ir.Constant(i32, 1))
        # adding 0x7FFF (+1 when the kept half is odd) carries into it exactly when the
        # dropped half is above one half, or one half and the kept half odd
        rounded = builder.lshr(builder.add(builder.add(bits, ir.Constant(i32, 0x7FFF)), odd),
                               ir.Constant(i32, 16))
        quiet_nan = builder.or_(high, ir.Constant(i32, 0x40))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.trunc(builder.select(is_nan, quiet_nan, rounded), ir.IntType(16))

    return _BFLOAT16_BITS(value), codegen


# float16: on a target with F16C (every x86-64-v3 CPU), LLVM's half conversions, which
# become vcvtph2ps / vcvtps2ph over whole vectors; elsewhere they would be a libgcc call
# (__extendhfsf2) that the JIT cannot resolve, which aborted the process
# (NUMBA_CPU_NAME=generic), so there the conversions are integer operations, which
# vectorise at every level, as the C backend's fs_load_h / fs_store_h (rows.h). Both give
# the same bits (the tests compare each with NumPy). The integer ones cost about 10
# operations per element each way: float16 CE + grad in place, 2 threads, Numba
# (bench.ab, one run): 0.42 -> 0.25 ns/elem at 16777 x 1000, 2.65 -> 1.40 at 1677721 x 10.
_F16C = _isa.numba_level(_isa.numba_features()) != "baseline"


@intrinsic
def _float16_to_float_f16c(typingctx, bits):
    """float32 from IEEE half bits with LLVM's fpext (exact)."""
    if bits != _FLOAT16_BITS:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _float_to_float16_f16c(typingctx, value):
    """IEEE half bits of a float32 with LLVM's fptrunc: rounded to nearest even, +-inf
    from 65520 up, NaN a quiet NaN with the top payload bits."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return _FLOAT16_BITS(value), codegen


@intrinsic
def _float16_to_float_integer(typingctx, bits):
    """float32 from IEEE half bits, exact and without float32 subnormals (which a thread
    flushing denormals, e.g. after torch.set_flush_denormal(True), would read as 0): a
    normal half is its 15 bits moved to float's place plus the exponent bias difference
    (112 << 23); a subnormal one (or 0) is its mantissa times 2^-24; exponent 31 (inf,
    NaN) gets float's all-ones exponent."""
    if bits != _FLOAT16_BITS:
        return None

    def codegen(context, builder, signature, args):
        i32, f32 = ir.IntType(32), ir.FloatType()

        def const(v):
            return ir.Constant(i32, v)
        h = builder.zext(args[0], i32)
        magnitude = builder.and_(h, const(0x7FFF))
        moved = builder.shl(magnitude, const(13))
        normal = builder.add(moved, const(112 << 23))
        subnormal = builder.bitcast(builder.fmul(builder.sitofp(magnitude, f32),
                                                 ir.Constant(f32, 2.0 ** -24)), i32)
        special = builder.or_(moved, const(0x7F800000))
        out = builder.select(builder.icmp_unsigned("<", magnitude, const(0x400)), subnormal,
                             builder.select(builder.icmp_unsigned(">=", magnitude,
                                                                  const(0x7C00)),
                                            special, normal))
        sign = builder.shl(builder.and_(h, const(0x8000)), const(16))
        return builder.bitcast(builder.or_(out, sign), f32)

    return types.float32(bits), codegen


@intrinsic
def _float_to_float16_integer(typingctx, value):
    """IEEE half bits of a float32, rounded to nearest even. From 65520 up: +-inf; NaN: a
    quiet NaN with the top payload bits. A normal half: rebias the exponent and round by
    adding 0xFFF plus the lowest kept bit (a carry bumps the exponent). Below 2^-14
    (subnormal halves): adding 0.5 leaves the rounded half mantissa in the float's low
    bits, rounded by the float addition itself."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32, f32 = ir.IntType(32), ir.FloatType()

        def const(v):
            return ir.Constant(i32, v)
        bits = builder.bitcast(args[0], i32)
        sign = builder.and_(bits, const(0x80000000))
        a = builder.xor(bits, sign)
        kept = builder.lshr(a, const(13))
        special = builder.select(builder.icmp_unsigned(">", a, const(0x7F800000)),
                                 builder.or_(builder.and_(kept, const(0x3FF)), const(0x7E00)),
                                 const(0x7C00))
        # a + (-112 << 23) + 0xFFF + lowest kept bit, modulo 2^32
        normal = builder.lshr(builder.add(builder.add(a, const(0xC8000FFF)),
                                          builder.and_(kept, const(1))), const(13))
        shifted = builder.fadd(builder.bitcast(a, f32), ir.Constant(f32, 0.5))
        small = builder.sub(builder.bitcast(shifted, i32), const(0x3F000000))
        h = builder.select(builder.icmp_unsigned(">=", a, const(0x47800000)), special,
                           builder.select(builder.icmp_unsigned("<", a, const(0x38800000)),
                                          small, normal))
        return builder.trunc(builder.or_(h, builder.lshr(sign, const(16))), ir.IntType(16))

    return _FLOAT16_BITS(value), codegen


_DECODE = {_BFLOAT16_BITS: _bfloat16_to_float,
           _FLOAT16_BITS: _float16_to_float_f16c if _F16C else _float16_to_float_integer}
_ENCODE = {_BFLOAT16_BITS: _float_to_bfloat16,
           _FLOAT16_BITS: _float_to_float16_f16c if _F16C else _float_to_float16_integer}


def load(a, j):
    """Element j of a kernel array (j an index or a tuple of indices) as a compute-type
    float: ``a[j]``, decoded from 16-bit bits."""
    raise NotImplementedError("load is only callable from Numba-compiled code")


def store(a, j, value):
    """``a[j] = value``, encoded (rounded to nearest even) for a 16-bit array."""
    raise NotImplementedError("store is only callable from Numba-compiled code")


@overload(load, inline="always")
def _load_overload(a, j):
    decode = _DECODE.get(a.dtype)
    if decode is None:
        return lambda a, j: a[j]
    return lambda a, j: decode(a[j])


@overload(store, inline="always")
def _store_overload(a, j, value):
    encode = _ENCODE.get(a.dtype)
    if encode is None:
        def store_float(a, j, value):
            a[j] = value
        return store_float

    def store_half(a, j, value):
        a[j] = encode(np.float32(value))
    return store_half


def kept_exps(out):
    """Where a row function's exp pass keeps exp(z - m) (or z, capped) for the write pass
    into ``out`` (a row, or None): ``out`` itself, or for a 16-bit ``out``, which would
    round them (and the write pass round twice), a new float32 row. Before, the 16-bit
    write pass computed exp again from the logits: bfloat16 CE + grad in place at
    128 x 131072, 2 threads, kernel (bench.ab, idle): 0.23 -> 0.13 ns/elem; softmax
    0.28 -> 0.21."""
    raise NotImplementedError("kept_exps is only callable from Numba-compiled code")


def exps_source(out, kept):
    """What the write pass into ``out`` reads the kept values from (``restore_exp``):
    None for ``out`` itself, else ``kept``. One array rather than the same buffer twice:
    LLVM's overlap check of two arrays on one buffer fails and runs the loop scalar
    (bf16 CE + grad in place 3.5 vs 0.8 ns/elem at 16777 x 1000)."""
    raise NotImplementedError("exps_source is only callable from Numba-compiled code")


@overload(kept_exps)
def _kept_exps_overload(out):
    if isinstance(out, types.Array) and out.dtype in HALF_BITS:
        return lambda out: np.empty(out.shape, np.float32)
    return lambda out: out


def compute_rows(out):
    """Where a block kernel (_small.py) writes its output rows: ``out`` itself, or for a
    bfloat16 ``out`` a float32 array of its shape, which ``round_into`` then rounds into
    ``out`` in one contiguous, vectorised loop. Rounded element by element in the
    kernels' row loops, which stay scalar at C = 10, bfloat16 took 1.3-1.4x the float32
    time; this way (bench.ab --backend numba --dtype bfloat16, 1677721 x 10, 2 threads,
    time new / old): CE + grad 0.75, in place 0.67, softmax 0.82, log_softmax backward
    0.86, log_softmax 1.07. float16 rounds in one instruction (F16C) and keeps its
    direct stores: this way it was mixed (0.80-1.13)."""
    raise NotImplementedError("compute_rows is only callable from Numba-compiled code")


def round_into(out, rows):
    """``out[...] = rows`` rounded to bfloat16; nothing when ``rows`` is ``out`` (see
    ``compute_rows``). ``out`` is C-contiguous."""
    raise NotImplementedError("round_into is only callable from Numba-compiled code")


@overload(compute_rows)
def _compute_rows_overload(out):
    if isinstance(out, types.Array) and out.dtype == _BFLOAT16_BITS:
        return lambda out: np.empty(out.shape, np.float32)
    return lambda out: out


@overload(round_into)
def _round_into_overload(out, rows):
    if isinstance(out, types.Array) and out.dtype == _BFLOAT16_BITS:
        def round_rows(out, rows):
            flat_out, flat = out.reshape(out.size), rows.reshape(rows.size)
            for i in range(flat.size):
                store(flat_out, i, flat[i])
        return round_rows
    return lambda out, rows: None


@overload(exps_source)
def _exps_source_overload(out, kept):
    if isinstance(out, types.Array) and out.dtype in HALF_BITS:
        return lambda out, kept: kept
    return lambda out, kept: None


@intrinsic
def maximum(typingctx, a, b):
    """IEEE maximum (NaN if either is NaN) via llvm.maximum, which LLVM vectorises as a
    reduction; a compare-and-select max is left scalar without the no-NaN flag."""
    if a != b or not isinstance(a, types.Float):
        return None

    def codegen(context, builder, signature, args):
        llvm_type = args[0].type
        name = f"llvm.maximum.f{a.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(llvm_type, [llvm_type] * 2), name)
        return builder.call(fn, args)

    return a(a, b), codegen


def _make_exp_core(dtype, bits_dtype, mantissa_bits, exponent_bias, poly):
    """Build exp for one float type on [-inf, overflow threshold), without NaN handling.

    exp(x) = 2**k * P(r), r = x - k*ln2, |r| <= ln2/2. ``poly`` holds the coefficients
    of P from the highest degree down. ln2 is split in a high part with few mantissa
    bits (so k*ln2_hi is exact) and a low part (Cody-Waite), which keeps r accurate
    for |x| up to the overflow threshold.
    """
    f = dtype.type
    log2e = f(1.4426950408889634)
    ln2_hi = f(0.693359375)
    ln2_lo = f(-2.12194440054690583e-4)
    # Below lo the result is under the smallest normal number; 0 is returned.
    lo = f(-(exponent_bias - 1) * 0.6931471805599453)
    zero, half = f(0.0), f(0.5)
    bias = f(exponent_bias)
    # (k + bias) * 2**mantissa_bits is an exact integer in this float type, so the
    # exponent field is built with float arithmetic and one float->int conversion.
    shift = f(2.0 ** mantissa_bits)
    coeffs = tuple(f(c) for c in poly)
    n_coeffs = len(coeffs)
    to_bits = np.int32 if bits_dtype == np.int32 else np.int64

    def exp_core(x):
        xc = x if x > lo else lo
        k = np.floor(xc * log2e + half)
        r = (xc - k * ln2_hi) - k * ln2_lo
        p = coeffs[0]
        for i in range(1, n_coeffs):
            p = p * r + coeffs[i]
        scale = _bitcast_to_float(to_bits((k + bias) * shift))
        return p * scale if x > lo else zero  # -inf and deep underflow -> 0

    return exp_core


# float32: degree-6 minimax polynomial for exp on [-ln2/2, ln2/2] (the classic
# Cephes expf coefficients, ~1 ulp); float64: Taylor series to degree 12, whose
# truncation error on |r| <= ln2/2 is below 2e-16.
_EXP_CORE = {
    types.float32: _make_exp_core(np.dtype(np.float32), np.int32, 23, 127,
                                  (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                   4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1, 1.0, 1.0)),
    types.float64: _make_exp_core(np.dtype(np.float64), np.int64, 52, 1023,
                                  tuple(1.0 / float(np.prod(np.arange(1, n + 1)))
                                        for n in range(12, -1, -1))),
}
# exp overflows to inf from here on (127 and 1023 are the largest binary exponents).
_EXP_OVERFLOW = {types.float32: np.float32(127 * 0.6931471805599453),
                 types.float64: np.float64(1023 * 0.6931471805599453)}


def vexp_core(x):
    """exp(x) for x in [-inf, overflow threshold), not NaN; vectorised by LLVM.

    The row loops call it on ``x - max``, which is <= 0 once the row max is finite
    (rows whose max is NaN or inf are settled before the loop). Leaving out the NaN
    and overflow selects made the exp-sum loop 0.90 -> 0.65 ns/elem on one core.
    """
    raise NotImplementedError("vexp_core is only callable from Numba-compiled code")


def vexp(x):
    """exp(x) for any float32 or float64 scalar (NaN, +-inf), vectorised by LLVM."""
    raise NotImplementedError("vexp is only callable from Numba-compiled code")


# No "reassoc" here even inside a reduction: it would fold the two-step ln2 reduction
# into one and cost float64 ~100 ulp (measured). LLVM flags are per instruction, so
# they survive inlining into a reassociating caller.
@overload(vexp_core, jit_options=dict(fastmath=FASTMATH))
def _vexp_core_overload(x):
    return _EXP_CORE.get(x)


@overload(vexp, jit_options=dict(fastmath=FASTMATH))
def _vexp_overload(x):
    if x not in _EXP_OVERFLOW:
        return None
    hi, inf = _EXP_OVERFLOW[x], _EXP_OVERFLOW[x].dtype.type(np.inf)

    def exp_impl(x):
        y = vexp_core(x if x < hi else hi)
        y = y if x < hi else inf
        return y if x == x else x  # NaN in, NaN out

    return exp_impl


def _atanh_coefficients(f, n_terms):
    """1 / (2 n_terms - 1), ..., 1/5, 1/3 in the type f: the atanh series of the logs below
    after its first term, highest power first."""
    return tuple(f(1.0 / (2 * i + 1)) for i in range(n_terms - 1, 0, -1))


def _make_log(dtype, int_type, mantissa_bits, n_terms):
    """log(x) for every x of one float type (0: -inf, < 0 or NaN: NaN, +inf: +inf),
    vectorisable: x = 2^k f with f in [sqrt(1/2), sqrt(2)), log f = 2 atanh(t) with
    t = (f - 1) / (f + 1), |t| <= 0.172, summed to t^(2 n_terms - 1) (rows.h's fs_log_d;
    rows.h's fs_log_normal_f for float32); a subnormal x is scaled to a normal
    one first."""
    f = dtype.type
    info = np.finfo(dtype)
    bias = info.maxexp - 1
    subnormal_bits = mantissa_bits + 2  # 2^24 (2^54) makes every subnormal normal
    min_normal, subnormal_scale = f(info.tiny), f(2.0 ** subnormal_bits)
    exponent_mask = int_type(2 * bias + 1)
    mantissa_mask = int_type((1 << mantissa_bits) - 1)
    one_bits = int_type(bias << mantissa_bits)  # the bits of 1.0
    shifted_bias, shifted_tiny_bias = f(bias), f(bias + subnormal_bits)
    sqrt2, zero, one, two, half = f(np.sqrt(2.0)), f(0), f(1), f(2), f(0.5)
    coeffs = _atanh_coefficients(f, n_terms)
    ln2_hi, ln2_lo = ((f(6.93147180369123816490e-01), f(1.90821492927058770002e-10))
                      if dtype == np.float64 else (f(0.693359375), f(-2.12194440e-4)))
    inf, nan = f(np.inf), f(np.nan)

    def log(x):
        tiny = x < min_normal
        bits = _float_bits(x * subnormal_scale if tiny else x)
        k = f((bits >> mantissa_bits) & exponent_mask) - (shifted_tiny_bias if tiny
                                                           else shifted_bias)
        m = _bitcast_to_float(int_type((bits & mantissa_mask) | one_bits))  # in [1, 2)
        high = m > sqrt2
        m = half * m if high else m
        k = k + one if high else k
        t = (m - one) / (m + one)
        t2 = t * t
        p = coeffs[0]
        for c in coeffs[1:]:
            p = p * t2 + c
        y = k * ln2_hi + (two * t + (two * t * t2 * p + k * ln2_lo))
        y = y if x > zero else (-inf if x == zero else nan)
        return x if x == inf else y

    return log


# Terms of the atanh series: float32 to t^9 (truncation < 2e-9 relative, half an ulp is
# 6e-8), float64 to t^23 (< 1e-18).
_LOG = {types.float32: _make_log(np.dtype(np.float32), np.int32, 23, 5),
        types.float64: _make_log(np.dtype(np.float64), np.int64, 52, 12)}


def vlog(x):
    """log(x) for any float32 or float64 scalar, computed in its type, vectorised by LLVM."""
    raise NotImplementedError("vlog is only callable from Numba-compiled code")


# No "reassoc" (see vexp): it would re-round the two-part k ln2.
@overload(vlog, jit_options=dict(fastmath=FASTMATH))
def _vlog_overload(x):
    return _LOG.get(x)


# tanh(u) = u (1 + c1 u^2 + c2 u^4 + ...) for |u| < 1/4: the Taylor coefficients
# 2^2n (2^2n - 1) B_2n / (2n)! (B the Bernoulli numbers), as many as a float type needs
# there (float32 5, float64 10). Above 1/4, (1 - e) / (1 + e) with e = exp(-2|u|) loses
# at most a bit to cancellation. Max error over [-20, 20] against np.tanh in a wider
# type: float32 4.2 ulp, float64 2.7 ulp (measured).
_TANH_SERIES = (1.0, -1.0 / 3, 2.0 / 15, -17.0 / 315, 62.0 / 2835, -1382.0 / 155925,
                21844.0 / 6081075, -929569.0 / 638512875, 6404582.0 / 10854718875,
                -443861162.0 / 1856156927625)
_TANH_TERMS = {types.float32: 5, types.float64: 10}


def vtanh(u):
    """tanh(u) for any float32 or float64 scalar (NaN, +-inf), vectorised by LLVM."""
    raise NotImplementedError("vtanh is only callable from Numba-compiled code")


@overload(vtanh, jit_options=dict(fastmath=FASTMATH))
def _vtanh_overload(u):
    if u not in _TANH_TERMS:
        return None
    f = np.dtype(u.name).type
    coeffs = tuple(f(c) for c in reversed(_TANH_SERIES[:_TANH_TERMS[u]]))
    one, minus_two, series_below = f(1.0), f(-2.0), f(0.25)

    def tanh_impl(u):
        a = abs(u)
        e = vexp_core(minus_two * a)  # 0 for |u| = inf
        u2 = u * u
        p = coeffs[0]
        for c in coeffs[1:]:
            p = p * u2 + c
        t = u * p if a < series_below else math.copysign((one - e) / (one + e), u)
        return t if u == u else u  # NaN in, NaN out

    return tanh_impl


# Logit soft-capping (Gemma 2): z = cap * tanh(x / cap), with cap None for "no cap" (its
# own specialisation, where each helper below is the identity). A capped cross-entropy
# keeps z, not exp(z - m), from its exp pass: the write pass then has z for the slope
# dz/dx = 1 - (z / cap)^2 and computes exp(z - m) again (``softcap_restore``).
def softcap(x, cap):
    """``cap * tanh(x / cap)``; ``x`` when ``cap`` is None."""
    raise NotImplementedError("softcap is only callable from Numba-compiled code")


def softcap_stored(z, e, cap):
    """What the exp pass keeps of logit z with e = exp(z - m): e, or z when capped."""
    raise NotImplementedError("softcap_stored is only callable from Numba-compiled code")


def softcap_restore(v, m, cap):
    """(exp(z - m), dz/dx) from the value v kept by the exp pass (softcap_stored)."""
    raise NotImplementedError("softcap_restore is only callable from Numba-compiled code")


def softcap_slope(z, cap):
    """dz/dx of z = softcap(x, cap), from z: ``1 - (z / cap)**2``; 1 when cap is None."""
    raise NotImplementedError("softcap_slope is only callable from Numba-compiled code")


def _uncapped(cap):
    return isinstance(cap, (types.NoneType, types.Omitted))


@overload(softcap, jit_options=dict(fastmath=FASTMATH))
def _softcap_overload(x, cap):
    if _uncapped(cap):
        return lambda x, cap: x
    def softcap_impl(x, cap):
        c = scalar_like(x, cap)
        return c * vtanh(x / c)
    return softcap_impl


@overload(softcap_stored)
def _softcap_stored_overload(z, e, cap):
    if _uncapped(cap):
        return lambda z, e, cap: e
    return lambda z, e, cap: z


@overload(softcap_slope, jit_options=dict(fastmath=FASTMATH))
def _softcap_slope_overload(z, cap):
    if _uncapped(cap):
        return lambda z, cap: scalar_like(z, 1)

    def slope_impl(z, cap):
        u, one = z / scalar_like(z, cap), scalar_like(z, 1)
        return (one - u) * (one + u)  # 1 - u^2 without its cancellation near |u| = 1
    return slope_impl


@overload(softcap_restore, jit_options=dict(fastmath=FASTMATH))
def _softcap_restore_overload(v, m, cap):
    if _uncapped(cap):
        return lambda v, m, cap: (v, scalar_like(v, 1))
    return lambda v, m, cap: (vexp_core(v - m), softcap_slope(v, cap))


def kept_value(out, source, j):
    """Element j of what an exp pass kept for the write pass into ``out``: ``out[j]``
    when ``source`` is None, else ``source[j]`` (``exps_source``)."""
    raise NotImplementedError("kept_value is only callable from Numba-compiled code")


def keep_value(out, source, j, value):
    """Set element j of what a pass keeps for a later pass into ``out`` (``kept_value``)."""
    raise NotImplementedError("keep_value is only callable from Numba-compiled code")


def _no_source(source):
    return isinstance(source, (types.NoneType, types.Omitted))


@overload(kept_value, inline="always")
def _kept_value_overload(out, source, j):
    if _no_source(source):
        return lambda out, source, j: out[j]
    return lambda out, source, j: source[j]


@overload(keep_value, inline="always")
def _keep_value_overload(out, source, j, value):
    if _no_source(source):
        def keep_in_out(out, source, j, value):
            out[j] = value
        return keep_in_out

    def keep_in_source(out, source, j, value):
        source[j] = value
    return keep_in_source


def restore_exp(out, source, j, m, cap):
    """(exp(z_j - m), dz/dx at j) in a write pass into ``out``, from what the exp pass
    kept (``softcap_restore`` of ``kept_value``)."""
    raise NotImplementedError("restore_exp is only callable from Numba-compiled code")


@overload(restore_exp, jit_options=dict(fastmath=FASTMATH))
def _restore_exp_overload(out, source, j, m, cap):
    return lambda out, source, j, m, cap: softcap_restore(kept_value(out, source, j), m, cap)


def scalar_like(row, value):
    """``value`` converted to the compute type of ``row`` (an array or a scalar): its dtype,
    float32 for 16-bit arrays. Keeps float32 loops in float32."""
    raise NotImplementedError("scalar_like is only callable from Numba-compiled code")


@overload(scalar_like)
def _scalar_like_overload(row, value):
    dtype = row.dtype if isinstance(row, types.Array) else row
    convert = np.float32 if dtype in HALF_BITS else np.dtype(dtype.name).type
    return lambda row, value: convert(value)


def smallest_normal(row):
    """The smallest normal number of ``row``'s compute type (float32 for 16-bit arrays)."""
    raise NotImplementedError("smallest_normal is only callable from Numba-compiled code")


@overload(smallest_normal)
def _smallest_normal_overload(row):
    dtype = np.float32 if row.dtype in HALF_BITS else np.dtype(row.dtype.name)
    tiny = np.finfo(dtype).tiny
    return lambda row: tiny


def empty_like_compute(shape, like):
    """``np.empty(shape)`` of ``like``'s compute type (float32 for 16-bit arrays)."""
    raise NotImplementedError("empty_like_compute is only callable from Numba-compiled code")


@overload(empty_like_compute)
def _empty_like_compute_overload(shape, like):
    dtype = np.float32 if like.dtype in HALF_BITS else np.dtype(like.dtype.name)
    return lambda shape, like: np.empty(shape, dtype)


# Class weights: an array of C weights, or None for weight=None (every class weighs 1;
# no C-sized array of ones is built). Numba compiles a kernel per argument type, so the
# None case is its own specialisation with the weight terms folded away.
def class_weight(weight, j):
    """Weight of class j as a float (1.0 when ``weight`` is None)."""
    raise NotImplementedError("class_weight is only callable from Numba-compiled code")


def weighted(value, weight, j):
    """``value * weight[j]``, or ``value`` when ``weight`` is None."""
    raise NotImplementedError("weighted is only callable from Numba-compiled code")


def block_or_none(a, start, stop):
    """``a[start:stop]``, or None when ``a`` is None (class weights, a kept row)."""
    raise NotImplementedError("block_or_none is only callable from Numba-compiled code")


@overload(class_weight)
def _class_weight_overload(weight, j):
    if isinstance(weight, types.NoneType):
        return lambda weight, j: 1.0
    return lambda weight, j: float(weight[j])


@overload(weighted)
def _weighted_overload(value, weight, j):
    if isinstance(weight, types.NoneType):
        return lambda value, weight, j: value
    return lambda value, weight, j: value * weight[j]


@overload(block_or_none)
def _block_or_none_overload(a, start, stop):
    if isinstance(a, (types.NoneType, types.Omitted)):
        return lambda a, start, stop: None
    return lambda a, start, stop: a[start:stop]


# Inner loops index a block slice from 0: ``row[start + j]`` with an offset whose
# sign LLVM cannot prove makes Numba's negative-index wraparound a masked gather
# (3.0 vs 1.0 ns/elem measured for the exp sum).
# Partial sums run in the row's dtype over blocks of BLOCK elements and are added
# into a float64 total: a float64 accumulator fed by float32 terms is not vectorised
# by LLVM (1.4 ns/elem vs 0.65 measured), and a block keeps the float32 rounding
# error of each partial sum at the level of a short sum.
BLOCK = 1024


@njit(**JIT)
def row_scale_at(scale, row_scale, i):
    """The gradient scale of row i: ``scale``, times ``row_scale[i]`` when given."""
    return scale * row_scale[i] if row_scale.size else scale


@njit(**JIT)
def same_buffer(a, b):
    """True when two arrays start at the same address (an in-place call)."""
    return a.ctypes.data == b.ctypes.data


@njit(**JIT)
def fill_nan(row):
    """Every element of a row NaN (in any float type, 16-bit too)."""
    for j in range(row.size):
        store(row, j, np.nan)


@njit(**JIT_REDUCTION)
def row_max(row):
    """Largest element of a non-empty row; NaN if the row holds a NaN."""
    m = load(row, 0)
    for j in range(1, row.size):
        m = maximum(m, load(row, j))
    return m


@njit(**JIT_ROW_WRITER)
def _sumexp_blocks(row, m, out, in_place, cap):
    """sum(exp(z - m)) as float64, z = softcap(row, cap); with ``out`` (not None), also
    out = softcap_stored(z, exp(z - m)). ``in_place`` (a constant): read through out's
    slices, one pointer for LLVM."""
    total = 0.0
    for start in range(0, row.size, BLOCK):
        block = row[start:start + BLOCK]
        acc = scalar_like(row, 0)
        if out is None:
            for j in range(block.size):
                acc += vexp_core(softcap(load(block, j), cap) - m)
        else:
            dest = out[start:start + BLOCK]
            src = dest if in_place else block
            for j in range(dest.size):
                z = softcap(load(src, j), cap)
                e = vexp_core(z - m)
                dest[j] = softcap_stored(z, e, cap)
                acc += e
        total += acc
    return total


@njit(**JIT_REDUCTION)
def row_sumexp(row, m, out=None, cap=None):
    """sum(exp(row - m)) as float64, NaN when m is not finite; with ``cap``, of the
    capped row: sum(exp(softcap(row, cap) - m)), out as softcap_stored says.

    With ``out``, also out = exp(row - m) (``out`` may be ``row``): the write pass then
    rescales the stored values instead of computing exp again (CE + grad 0.96 -> 0.81
    ns/elem at 512 x 32768, Cython; the same here). A row function passes
    ``kept_exps(out)``: a float32 row for a 16-bit output.
    """
    if not math.isfinite(m):
        if out is not None:
            out[:] = np.nan
        return np.nan
    if out is not None:
        if same_buffer(row, out):
            return _sumexp_blocks(out, m, out, True, cap)
    return _sumexp_blocks(row, m, out, False, cap)


@njit(**JIT_ROW_WRITER)
def _sumexp_copy_blocks(row, m, copy):
    """sum(exp(row - m)) as float64; copy = row, as stored."""
    total = 0.0
    for start in range(0, row.size, BLOCK):
        block = row[start:start + BLOCK]
        dest = copy[start:start + BLOCK]
        acc = scalar_like(row, 0)
        for j in range(block.size):
            dest[j] = block[j]
            acc += vexp_core(load(block, j) - m)
        total += acc
    return total


@njit(**JIT_REDUCTION)
def row_sumexp_copy(row, m, copy):
    """row_sumexp(row, m), and copy = row (another array): log_softmax's write pass then
    reads the row from its output, whose cache lines this pass has fetched while its exps
    kept the core busy (as fs_log_softmax_row in fastsoftmax/_cython; 512 x 32768
    float32, 2 threads, bench.ab --backend numba: 0.75x the time)."""
    if not math.isfinite(m):
        copy[:] = row
        return np.nan
    return _sumexp_copy_blocks(row, m, copy)


@njit(**JIT)
def row_rescale(out, exp_scale, weight_scale, weight, m=0.0, cap=None, source=None):
    """out = e * exp_scale - weight_scale * weight (weight term skipped at 0; weight
    None: ones) with e = out; with ``cap``, (...) * dz/dx, e and the slope restored from
    out as row_sumexp stored them (softcap_restore); with ``source``, from it
    (``restore_exp``)."""
    k = scalar_like(out, exp_scale)
    if weight_scale != 0.0:
        f = scalar_like(out, weight_scale)
        for j in range(out.size):
            e, slope = restore_exp(out, source, j, m, cap)
            store(out, j, (e * k - weighted(f, weight, j)) * slope)
    else:
        for j in range(out.size):
            e, slope = restore_exp(out, source, j, m, cap)
            store(out, j, e * k * slope)


@njit(**JIT_REDUCTION)
def row_dot(a, b):
    """sum(a * b) as float64."""
    total = 0.0
    for start in range(0, a.size, BLOCK):
        block_a, block_b = a[start:start + BLOCK], b[start:start + BLOCK]
        acc = scalar_like(a, 0)
        for j in range(block_a.size):
            acc += load(block_a, j) * load(block_b, j)
        total += acc
    return total


@njit(**JIT_REDUCTION)
def row_shifted_dot(w, row, m, cap=None):
    """sum(w * (softcap(row, cap) - m)) as float64 (w None: ones)."""
    total = 0.0
    for start in range(0, row.size, BLOCK):
        block_w, block = block_or_none(w, start, start + BLOCK), row[start:start + BLOCK]
        acc = scalar_like(row, 0)
        for j in range(block.size):
            acc += weighted(softcap(load(block, j), cap) - m, block_w, j)
        total += acc
    return total


@njit(**JIT_REDUCTION)
def row_sum(a):
    """sum(a) as float64."""
    total = 0.0
    for start in range(0, a.size, BLOCK):
        block = a[start:start + BLOCK]
        acc = scalar_like(a, 0)
        for j in range(block.size):
            acc += load(block, j)
        total += acc
    return total
