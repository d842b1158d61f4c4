"""Numba elementwise kernels: KL divergence, binary cross-entropy with logits, sigmoid and
log-sigmoid on flat C-contiguous arrays (any shape, no rows).

The formulas are those of fastsoftmax/_cython/elementwise.h: every element is computed in
float64 whatever its storage type, the element losses are summed in float64, and a
float32 result is rounded once. The kernels run a prange over fixed chunks of CHUNK
elements whose sums are added in chunk order (a loss does not depend on the thread
count). A "stream" (weights, grad_output) is a small array read periodically: element i
uses stream[i % stream.size]; a chunk runs as segments of constant stream offset.

The element functions are inlined into their loops by Numba (called, they kept the loops
scalar: kl_div + grad 10.4 ns/elem, one thread, float32), and those loops are compiled
without "reassoc", which would fold the (1 + z) - 1 of log1p into z. So they write the
element losses into a scratch block, which a reassociating sum then adds up.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._math import JIT, JIT_PARALLEL, _bitcast_to_float, row_sum, vexp

CHUNK = 16384  # elements per parallel task (FS_EW_CHUNK in elementwise.h)
JIT_ELEMENT = dict(JIT, inline="always")
_LN2 = 0.6931471805599453


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float64 as an int64, one LLVM bitcast."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@njit(**JIT_ELEMENT)
def _log(x):
    """log(x) for every float64 (0: -inf, < 0 or NaN: NaN, +inf: +inf), vectorisable:
    x = 2^k f with f in [sqrt(1/2), sqrt(2)), log f = 2 atanh(t), t = (f - 1) / (f + 1)
    (the series of rows.h's fs_log_d); a subnormal x is scaled by 2^54 first."""
    tiny = x < 2.2250738585072014e-308
    s = x * 18014398509481984.0 if tiny else x
    bits = _float_bits(s)
    k = float((bits >> 52) & 0x7FF) - (1077.0 if tiny else 1023.0)
    f = _bitcast_to_float((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    high = f > 1.4142135623730951
    f = 0.5 * f if high else f
    k = k + 1.0 if high else k
    t = (f - 1.0) / (f + 1.0)
    t2 = t * t
    p = 1.0 / 23
    for c in (21, 19, 17, 15, 13, 11, 9, 7, 5, 3):
        p = p * t2 + 1.0 / c
    y = k * 6.93147180369123816490e-01 + (2.0 * t + (2.0 * t * t2 * p
                                                     + k * 1.90821492927058770002e-10))
    y = y if x > 0.0 else (-np.inf if x == 0.0 else np.nan)
    return x if x == np.inf else y


@njit(**JIT_ELEMENT)
def _log1p(z):
    """log(1 + z) for z in [0, 1] or NaN: log(u) z / (u - 1), u = 1 + z rounded."""
    u = 1.0 + z
    return z if u == 1.0 else _log(u) * (z / (u - 1.0))


@njit(**JIT_ELEMENT)
def _times(a, v):
    """a * v, 0 when a is 0 even for an infinite v."""
    return 0.0 if a == 0.0 else a * v


@njit(**JIT_ELEMENT)
def _kl_div_term(x, t, log_target):
    """(loss, d loss / d x) of torch's kl_div term: xlogy(t, t) - t x and -t, or with
    log-probability targets exp(t) (t - x) and -exp(t)."""
    if log_target:
        e = vexp(t)
        return e * (t - x), -e
    return (0.0 if t == 0.0 else t * _log(t)) - t * x, -t


@njit(**JIT_ELEMENT)
def _bce(x, y, w, pw):
    """(loss, d loss / d x) of binary cross-entropy with logits:
    w ((1 - y) softplus(x) + pw y softplus(-x)) and w ((1 - y) sigmoid(x) - pw y sigmoid(-x)).
    torch's (1 - y) x + (1 + (pw - 1) y) softplus(-x) rearranged: a term with a zero factor
    is 0 at x = +-inf (torch: inf - inf = NaN)."""
    z = vexp(-abs(x))
    soft = _log1p(z)
    sp_pos = (x if x > 0.0 else 0.0) + soft
    sp_neg = (-x if x < 0.0 else 0.0) + soft
    neg, pos = 1.0 - y, pw * y
    r = 1.0 / (1.0 + z)
    sig = r if x >= 0.0 else z * r
    sig_neg = z * r if x >= 0.0 else r
    return w * (_times(neg, sp_pos) + _times(pos, sp_neg)), w * (neg * sig - pos * sig_neg)


@njit(**JIT_ELEMENT)
def _sigmoid(x):
    z = vexp(-abs(x))
    r = 1.0 / (1.0 + z)
    return r if x >= 0.0 else z * r


@njit(**JIT_ELEMENT)
def _log_sigmoid(x):
    return (x if x < 0.0 else 0.0) - _log1p(vexp(-abs(x)))


@njit(**JIT)
def _kl_segment(x, t, log_target, g, scale, loss, grad, terms):
    """The loss terms of a segment into ``terms``, and into loss / grad (None: not
    written)."""
    for i in range(x.size):
        value, d = _kl_div_term(float(x[i]), float(t[i]), log_target)
        terms[i] = value
        if loss is not None:
            loss[i] = value
        if grad is not None:
            grad[i] = d * (scale * g[i])


@njit(**JIT)
def _bce_segment(x, t, w, pw, g, scale, loss, grad, terms):
    for i in range(x.size):
        value, d = _bce(float(x[i]), float(t[i]), float(w[i]), float(pw[i]))
        terms[i] = value
        if loss is not None:
            loss[i] = value
        if grad is not None:
            grad[i] = d * (scale * g[i])


@njit(**JIT)
def _period_end(i, stop, period):
    """End of the segment from i: ``stop``, or the stream's next wrap-around before it."""
    return min(stop, i - i % period + period)


@njit(**JIT)
def _part(a, lo, hi):
    """a[lo:hi] of an optional output (None stays None)."""
    return None if a is None else a[lo:hi]


@njit(**JIT)
def _kl_chunk(x, t, log_target, g, scale, loss, grad, lo, hi):
    terms = np.empty(hi - lo)
    i = lo
    while i < hi:
        stop = _period_end(i, hi, g.size)
        offset = i % g.size
        _kl_segment(x[i:stop], t[i:stop], log_target, g[offset:offset + stop - i], scale,
                    _part(loss, i, stop), _part(grad, i, stop), terms[i - lo:stop - lo])
        i = stop
    return row_sum(terms)


@njit(**JIT)
def _bce_chunk(x, t, w, pw, g, scale, loss, grad, lo, hi):
    terms = np.empty(hi - lo)
    i = lo
    while i < hi:
        stop = min(_period_end(i, hi, g.size), _period_end(i, hi, w.size),
                   _period_end(i, hi, pw.size))
        n = stop - i
        a, b, c = i % w.size, i % pw.size, i % g.size
        _bce_segment(x[i:stop], t[i:stop], w[a:a + n], pw[b:b + n], g[c:c + n], scale,
                     _part(loss, i, stop), _part(grad, i, stop), terms[i - lo:stop - lo])
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


@njit(**JIT)
def _sigmoid_segment(x, out):
    for i in range(x.size):
        out[i] = _sigmoid(float(x[i]))


@njit(**JIT)
def _log_sigmoid_segment(x, out):
    for i in range(x.size):
        out[i] = _log_sigmoid(float(x[i]))


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

