"""Numba elementwise kernels: KL divergence, binary cross-entropy with logits, sigmoid and
log-sigmoid on flat C-contiguous arrays (any shape, no rows).

The formulas are those of fastsoftmax/_cython/elementwise.h. An element is computed in its
storage type (float32 at twice the vector lanes of float64), the element losses are summed
in that type over blocks of BLOCK elements and the blocks in float64 (``row_sum``).
float16 and bfloat16 arrays arrive as their bits (fastsoftmax/_dtypes.py): ``load`` and
``store`` convert, the math runs in float32 (their compute type), weights and the
``loss`` output are float32, and each output element is rounded once. The
kernels run a prange over fixed chunks of CHUNK elements whose sums are added in chunk
order (a loss does not depend on the thread count). A "stream" (weights, grad_output) is a
small array read periodically: element i uses stream[i % stream.size]; a chunk runs as
segments of constant stream offset. grad_output is float64 for both types.

The element functions are inlined into their loops by Numba (called, they kept the loops
scalar: kl_div + grad 10.4 ns/elem, one thread, float32), and those loops are compiled
without "reassoc", which would re-round the two-part ln2 of exp and log. So they write the
element losses into a scratch block, which a reassociating sum then adds up. Every
constant of an element function is of the element's type (``_like``): a float64 literal
would turn float32 math into float64.
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from ._math import (FASTMATH, JIT, JIT_PARALLEL, _atanh_coefficients, empty_like_compute, load,
                    row_sum, same_buffer, store, vexp, vlog)

CHUNK = 16384  # elements per parallel task (FS_EW_CHUNK in elementwise.h)
JIT_ELEMENT = dict(JIT, inline="always")


def _like(x, value):
    """``value`` as a scalar of ``x``'s float type."""
    raise NotImplementedError("_like is only callable from Numba-compiled code")


@overload(_like)
def _like_overload(x, value):
    convert = as_dtype(x).type
    return lambda x, value: convert(value)


def _make_log1p(dtype, n_terms):
    """log(1 + z) for z in [0, 1] or NaN of one float type, without forming 1 + z:
    2 atanh(t), t = z / (2 + z) <= 1/3, and log1p_reciprocal(z) -> (log(1 + z), 1 / (1 + z))
    from one division (elementwise.h's fs_ew_log1p_reciprocal, which says why: one range,
    no select between two halves; the reciprocal as 2 + z over (1 + z)(2 + z))."""
    f = dtype.type
    coeffs = _atanh_coefficients(f, n_terms)
    one, two = f(1), f(2)

    @njit(**JIT_ELEMENT)
    def series(t):
        t2 = t * t
        p = coeffs[0]
        for c in coeffs[1:]:
            p = p * t2 + c
        return two * t + two * t * t2 * p

    def log1p(z):
        return series(z / (two + z))

    def log1p_reciprocal(z):
        one_plus_z, two_plus_z = one + z, two + z
        inverse = one / (one_plus_z * two_plus_z)
        return series(z * one_plus_z * inverse), two_plus_z * inverse

    return log1p, log1p_reciprocal


# terms: those left out sum to < 2^-25 (2^-54) of the first at t = 1/3 (elementwise.h's
# FS_EW_SERIES_END 13 and 31)
_LOG1P = {types.float32: _make_log1p(np.dtype(np.float32), 7),
          types.float64: _make_log1p(np.dtype(np.float64), 16)}


def _log1p(z):
    """log(1 + z) for z in [0, 1] or NaN, computed in z's type."""
    raise NotImplementedError("_log1p is only callable from Numba-compiled code")


def _log1p_reciprocal(z):
    """(log(1 + z), 1 / (1 + z)) for z in [0, 1] or NaN, computed in z's type."""
    raise NotImplementedError("_log1p_reciprocal is only callable from Numba-compiled code")


@overload(_log1p, jit_options=dict(fastmath=FASTMATH))
def _log1p_overload(z):
    return _LOG1P[z][0] if z in _LOG1P else None


@overload(_log1p_reciprocal, jit_options=dict(fastmath=FASTMATH))
def _log1p_reciprocal_overload(z):
    return _LOG1P[z][1] if z in _LOG1P else None


@njit(**JIT_ELEMENT)
def _times(a, v):
    """a * v, 0 when a is 0 even for an infinite v."""
    zero = _like(a, 0.0)
    return zero if a == zero else a * v


@njit(**JIT_ELEMENT)
def _kl_div_term(x, t, log_target):
    """(loss, d loss / d x) of torch's kl_div term: xlogy(t, t) - t x and -t, or with
    log-probability targets exp(t) (t - x) and -exp(t)."""
    if log_target:
        e = vexp(t)
        return e * (t - x), -e
    zero = _like(t, 0.0)
    return (zero if t == zero else t * vlog(t)) - t * x, -t


@njit(**JIT_ELEMENT)
def _bce(x, y, w, pw):
    """(loss, d loss / d x) of binary cross-entropy with logits:
    w ((1 - y) softplus(x) + pw y softplus(-x)) and w ((1 - y) sigmoid(x) - pw y sigmoid(-x)).
    torch's (1 - y) x + (1 + (pw - 1) y) softplus(-x) rearranged: a term with a zero factor
    is 0 at x = +-inf (torch: inf - inf = NaN)."""
    zero, one = _like(x, 0.0), _like(x, 1.0)
    z = vexp(-abs(x))
    soft, r = _log1p_reciprocal(z)
    sp_pos = (x if x > zero else zero) + soft
    sp_neg = (-x if x < zero else zero) + soft
    neg, pos = one - y, pw * y
    sig = r if x >= zero else z * r
    sig_neg = z * r if x >= zero else r
    return w * (_times(neg, sp_pos) + _times(pos, sp_neg)), w * (neg * sig - pos * sig_neg)


@njit(**JIT_ELEMENT)
def _sigmoid(x):
    zero, one = _like(x, 0.0), _like(x, 1.0)
    z = vexp(-abs(x))
    r = one / (one + z)
    return r if x >= zero else z * r


@njit(**JIT_ELEMENT)
def _log_sigmoid(x):
    zero = _like(x, 0.0)
    return (x if x < zero else zero) - _log1p(vexp(-abs(x)))


@njit(**JIT_ELEMENT)
def _kl_loop(x, t, log_target, g_scaled, loss, grad, terms):
    """The loss terms of a segment into ``terms``, and into loss / grad (None: not
    written)."""
    for i in range(x.size):
        value, d = _kl_div_term(load(x, i), load(t, i), log_target)
        terms[i] = value
        if loss is not None:
            loss[i] = value
        if grad is not None:
            store(grad, i, d * g_scaled[i])


@njit(**JIT_ELEMENT)
def _bce_loop(x, t, w, pw, g_scaled, loss, grad, terms):
    for i in range(x.size):
        value, d = _bce(load(x, i), load(t, i), w[i], pw[i])
        terms[i] = value
        if loss is not None:
            loss[i] = value
        if grad is not None:
            store(grad, i, d * g_scaled[i])


# The segments: in place (grad is x), the loop reads and writes the one array grad; two
# aliasing arrays fail LLVM's overlap check and leave the loop scalar (float32, one
# thread, 65536 elements: kl_div + grad in place 6.9 -> 0.40 ns/elem, BCE 21 -> 1.22).
@njit(**JIT)
def _kl_segment(x, t, log_target, g_scaled, loss, grad, terms):
    if grad is not None and same_buffer(x, grad):
        _kl_loop(grad, t, log_target, g_scaled, loss, grad, terms)
    else:
        _kl_loop(x, t, log_target, g_scaled, loss, grad, terms)


@njit(**JIT)
def _bce_segment(x, t, w, pw, g_scaled, loss, grad, terms):
    if grad is not None and same_buffer(x, grad):
        _bce_loop(grad, t, w, pw, g_scaled, loss, grad, terms)
    else:
        _bce_loop(x, t, w, pw, g_scaled, loss, grad, terms)


@njit(**JIT)
def _period_end(i, stop, period):
    """End of the segment from i: ``stop``, or the stream's next wrap-around before it."""
    return min(stop, i - i % period + period)


def _part(a, lo, hi):
    """a[lo:hi] of an optional output (None stays None)."""
    raise NotImplementedError("_part is only callable from Numba-compiled code")


# An overload, not ``None if a is None else a[lo:hi]``: that is an Optional array, which
# ``load`` and ``store`` (16-bit arrays) cannot type; this is None or an array.
@overload(_part, inline="always")
def _part_overload(a, lo, hi):
    if isinstance(a, types.NoneType):
        return lambda a, lo, hi: None
    return lambda a, lo, hi: a[lo:hi]


@njit(**JIT)
def _scaled_stream(g, scale, out, grad):
    """out = scale * g (a segment of grad_output, float64) rounded to out's dtype, for the
    gradient loop; nothing when grad is None. A float64 stream read inside a float32 loop
    made LLVM vectorise it at 8 lanes instead of 16 (BCE + grad 2.55 -> 1.24 ns/elem,
    kl_div + grad 0.59 -> 0.41; float32, one thread, 65536 elements)."""
    if grad is not None:
        for j in range(g.size):
            out[j] = scale * g[j]
    return out


@njit(**JIT)
def _kl_chunk(x, t, log_target, g, scale, loss, grad, lo, hi):
    terms, g_scaled = empty_like_compute(hi - lo, x), empty_like_compute(hi - lo, x)
    i = lo
    while i < hi:
        stop = _period_end(i, hi, g.size)
        offset = i % g.size
        gs = _scaled_stream(g[offset:offset + stop - i], scale, g_scaled[i - lo:stop - lo], grad)
        _kl_segment(x[i:stop], t[i:stop], log_target, gs, _part(loss, i, stop),
                    _part(grad, i, stop), terms[i - lo:stop - lo])
        i = stop
    return row_sum(terms)


@njit(**JIT)
def _bce_chunk(x, t, w, pw, g, scale, loss, grad, lo, hi):
    terms, g_scaled = empty_like_compute(hi - lo, x), empty_like_compute(hi - lo, x)
    i = lo
    while i < hi:
        stop = min(_period_end(i, hi, g.size), _period_end(i, hi, w.size),
                   _period_end(i, hi, pw.size))
        n = stop - i
        a, b, c = i % w.size, i % pw.size, i % g.size
        gs = _scaled_stream(g[c:c + n], scale, g_scaled[i - lo:stop - lo], grad)
        _bce_segment(x[i:stop], t[i:stop], w[a:a + n], pw[b:b + n], gs, _part(loss, i, stop),
                     _part(grad, i, stop), terms[i - lo:stop - lo])
        i = stop
    return row_sum(terms)


@njit(**JIT)
def _in_order(parts):
    total = 0.0
    for c in range(parts.size):
        total += parts[c]
    return total


@njit(**JIT_PARALLEL)
def kl_div(input, target, log_target, grad_output, scale, loss, grad):
    """Sum of torch's kl_div terms; loss (None: not written) gets each term, grad (None:
    not written) ``d term / d input * scale * grad_output[i % grad_output.size]``."""
    n_chunks = (input.size + CHUNK - 1) // CHUNK
    parts = np.empty(n_chunks)
    for c in prange(n_chunks):
        parts[c] = _kl_chunk(input, target, log_target, grad_output, scale, loss, grad,
                             c * CHUNK, min(input.size, (c + 1) * CHUNK))
    return _in_order(parts)


@njit(**JIT_PARALLEL)
def binary_cross_entropy_with_logits(input, target, weight, pos_weight, grad_output, scale,
                                     loss, grad):
    n_chunks = (input.size + CHUNK - 1) // CHUNK
    parts = np.empty(n_chunks)
    for c in prange(n_chunks):
        parts[c] = _bce_chunk(input, target, weight, pos_weight, grad_output, scale, loss, grad,
                              c * CHUNK, min(input.size, (c + 1) * CHUNK))
    return _in_order(parts)


@njit(**JIT_ELEMENT)
def _sigmoid_loop(x, out):
    for i in range(x.size):
        store(out, i, _sigmoid(load(x, i)))


@njit(**JIT_ELEMENT)
def _log_sigmoid_loop(x, out):
    for i in range(x.size):
        store(out, i, _log_sigmoid(load(x, i)))


# In place, one array for LLVM, as _kl_segment (float32, one thread, 65536 elements:
# sigmoid in place 8.6 -> 0.28 ns/elem, log_sigmoid 19 -> 0.46).
@njit(**JIT)
def _sigmoid_segment(x, out):
    if same_buffer(x, out):
        _sigmoid_loop(out, out)
    else:
        _sigmoid_loop(x, out)


@njit(**JIT)
def _log_sigmoid_segment(x, out):
    if same_buffer(x, out):
        _log_sigmoid_loop(out, out)
    else:
        _log_sigmoid_loop(x, out)


@njit(**JIT_PARALLEL)
def sigmoid(x, out):
    for c in prange((x.size + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        _sigmoid_segment(x[lo:lo + CHUNK], out[lo:lo + CHUNK])


@njit(**JIT_PARALLEL)
def log_sigmoid(x, out):
    for c in prange((x.size + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        _log_sigmoid_segment(x[lo:lo + CHUNK], out[lo:lo + CHUNK])

