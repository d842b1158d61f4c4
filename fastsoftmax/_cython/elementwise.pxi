# Elementwise kernels (KL divergence, binary cross-entropy with logits, sigmoid,
# log-sigmoid) on flat C-contiguous arrays: a prange over fixed chunks of FS_EW_CHUNK
# elements, each chunk run as segments of constant stream offset through the
# elementwise.h loops. Included at the end of _kernels.pyx.

cdef extern from "elementwise.h" nogil:
    enum: FS_EW_CHUNK
    double fs_kl_div_segment(const void *x, const void *t, const double *g, double scale,
                             void *loss, void *grad, Py_ssize_t n, int single, int log_target)
    double fs_bce_segment(const void *x, const void *t, const void *w, const void *pw,
                          const double *g, double scale, void *loss, void *grad, Py_ssize_t n,
                          int single)
    void fs_sigmoid_segment(const void *x, void *out, Py_ssize_t n, int single,
                            int log_sigmoid)


cdef inline Py_ssize_t _period_end(Py_ssize_t i, Py_ssize_t stop,
                                   Py_ssize_t period) noexcept nogil:
    """End of the segment from i: ``stop``, or the stream's next wrap-around before it."""
    return min(stop, i - i % period + period)


cdef inline real *_at(real *p, Py_ssize_t i) noexcept nogil:
    """p + i for an optional output (NULL stays NULL)."""
    return p + i if p != NULL else NULL


cdef real *_optional(real[::1] a):
    return &a[0] if a is not None else NULL


cdef double _kl_div_chunk(const real *x, const real *t, const double *g, Py_ssize_t g_period,
                          double scale, real *loss, real *grad, Py_ssize_t lo, Py_ssize_t hi,
                          int log_target) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i = lo, stop
    while i < hi:
        stop = _period_end(i, hi, g_period)
        total += fs_kl_div_segment(x + i, t + i, g + i % g_period, scale, _at(loss, i),
                                   _at(grad, i), stop - i, real is float, log_target)
        i = stop
    return total


cdef double _bce_chunk(const real *x, const real *t, const real *w, Py_ssize_t w_period,
                       const real *pw, Py_ssize_t pw_period, const double *g,
                       Py_ssize_t g_period, double scale, real *loss, real *grad, Py_ssize_t lo,
                       Py_ssize_t hi) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i = lo, stop
    while i < hi:
        stop = min(_period_end(i, hi, g_period), _period_end(i, hi, w_period),
                   _period_end(i, hi, pw_period))
        total += fs_bce_segment(x + i, t + i, w + i % w_period, pw + i % pw_period,
                                g + i % g_period, scale, _at(loss, i), _at(grad, i), stop - i,
                                real is float)
        i = stop
    return total


cdef inline double _total(const double *part, Py_ssize_t count) noexcept nogil:
    """part[0] + part[1] + ... in chunk order (a loss independent of the thread count)"""
    cdef double total = 0
    cdef Py_ssize_t c
    for c in range(count):
        total += part[c]
    return total


cdef double *_partials(Py_ssize_t n_chunks) except NULL:
    cdef double *part = <double *>malloc(max(n_chunks, 1) * sizeof(double))
    if part == NULL:
        raise MemoryError("no memory for the chunk sums of an elementwise loss")
    return part


def kl_div(const real[::1] input, const real[::1] target, bint log_target,
           const double[::1] grad_output, double scale, real[::1] loss, real[::1] grad):
    cdef Py_ssize_t c, n = input.shape[0], n_chunks = (n + FS_EW_CHUNK - 1) // FS_EW_CHUNK
    if n == 0:
        return 0.0
    cdef real *loss_p = _optional(loss)
    cdef real *grad_p = _optional(grad)
    cdef double *part = _partials(n_chunks)
    for c in prange(n_chunks, nogil=True, num_threads=_threads, schedule="static"):
        part[c] = _kl_div_chunk(&input[0], &target[0], &grad_output[0], grad_output.shape[0],
                                scale, loss_p, grad_p, c * FS_EW_CHUNK,
                                min(n, (c + 1) * FS_EW_CHUNK), log_target)
    total = _total(part, n_chunks)
    free(part)
    return total


def binary_cross_entropy_with_logits(const real[::1] input, const real[::1] target,
                                     const real[::1] weight, const real[::1] pos_weight,
                                     const double[::1] grad_output, double scale,
                                     real[::1] loss, real[::1] grad):
    cdef Py_ssize_t c, n = input.shape[0], n_chunks = (n + FS_EW_CHUNK - 1) // FS_EW_CHUNK
    if n == 0:
        return 0.0
    cdef real *loss_p = _optional(loss)
    cdef real *grad_p = _optional(grad)
    cdef double *part = _partials(n_chunks)
    for c in prange(n_chunks, nogil=True, num_threads=_threads, schedule="static"):
        part[c] = _bce_chunk(&input[0], &target[0], &weight[0], weight.shape[0], &pos_weight[0],
                             pos_weight.shape[0], &grad_output[0], grad_output.shape[0], scale,
                             loss_p, grad_p, c * FS_EW_CHUNK, min(n, (c + 1) * FS_EW_CHUNK))
    total = _total(part, n_chunks)
    free(part)
    return total


cdef void _sigmoid_family(const real[::1] x, real[::1] out, int log_sigmoid) noexcept:
    cdef Py_ssize_t c, lo, n = x.shape[0], n_chunks = (n + FS_EW_CHUNK - 1) // FS_EW_CHUNK
    for c in prange(n_chunks, nogil=True, num_threads=_threads, schedule="static"):
        lo = c * FS_EW_CHUNK
        fs_sigmoid_segment(&x[lo], &out[lo], min(n - lo, FS_EW_CHUNK), real is float,
                           log_sigmoid)


def sigmoid(const real[::1] x, real[::1] out):
    _sigmoid_family(x, out, 0)


def log_sigmoid(const real[::1] x, real[::1] out):
    _sigmoid_family(x, out, 1)
