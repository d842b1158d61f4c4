# Elementwise kernels (KL divergence, binary cross-entropy with logits, sigmoid,
# log-sigmoid) on flat C-contiguous arrays: a prange over fixed chunks of FS_EW_CHUNK
# elements, each chunk run as segments of constant stream offset through the
# elementwise.h loops. Included at the end of _kernels.pyx.
# float32, float64 and the 16-bit types (anyreal: their bits) share these functions: the
# arrays pass as untyped pointers with their storage type (_kind), and elementwise.h calls
# that type's instance. The losses and weight streams are of the compute type: double
# for double arrays, float32 otherwise.

cdef extern from "elementwise.h" nogil:
    enum: FS_EW_CHUNK, FS_EW_FLOAT, FS_EW_DOUBLE, FS_EW_BFLOAT16, FS_EW_FLOAT16
    double fs_kl_div_segment(const void *x, const void *t, const double *g, double scale,
                             void *loss, void *grad, Py_ssize_t i, Py_ssize_t n, int kind,
                             int log_target)
    double fs_bce_segment(const void *x, const void *t, const void *w, Py_ssize_t w_at,
                          const void *pw, Py_ssize_t pw_at, const double *g, double scale,
                          void *loss, void *grad, Py_ssize_t i, Py_ssize_t n, int kind)
    void fs_sigmoid_segment(const void *x, void *out, Py_ssize_t i, Py_ssize_t n, int kind,
                            int log_sigmoid)


cdef inline int _kind(const anyreal[::1] a) noexcept nogil:
    """The storage type of ``a``'s elements, as elementwise.h names it."""
    if anyreal is float:
        return FS_EW_FLOAT
    elif anyreal is double:
        return FS_EW_DOUBLE
    elif anyreal is uint16_t:
        return FS_EW_BFLOAT16
    else:
        return FS_EW_FLOAT16


cdef void *_data(anyreal[::1] a):
    """The data of an optional output (None: NULL)."""
    return <void *>&a[0] if a is not None else NULL


cdef void *_compute_data(object a, bint wide, Py_ssize_t *size) except? NULL:
    """The data of an optional array of the compute type (double when ``wide``, else
    float32; None: NULL), its length into ``size``. The caller's reference keeps it."""
    cdef const float[::1] single
    cdef const double[::1] double_
    if a is None:
        return NULL
    if wide:
        double_ = a
        size[0] = double_.shape[0]
        return <void *>&double_[0]
    single = a
    size[0] = single.shape[0]
    return <void *>&single[0]


cdef inline Py_ssize_t _period_end(Py_ssize_t i, Py_ssize_t stop,
                                   Py_ssize_t period) noexcept nogil:
    """End of the segment from i: ``stop``, or the stream's next wrap-around before it."""
    return min(stop, i - i % period + period)


cdef double _kl_div_chunk(const void *x, const void *t, const double *g, Py_ssize_t g_period,
                          double scale, void *loss, void *grad, Py_ssize_t lo, Py_ssize_t hi,
                          int kind, int log_target) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i = lo, stop
    while i < hi:
        stop = _period_end(i, hi, g_period)
        total += fs_kl_div_segment(x, t, g + i % g_period, scale, loss, grad, i, stop - i,
                                   kind, log_target)
        i = stop
    return total


cdef double _bce_chunk(const void *x, const void *t, const void *w, Py_ssize_t w_period,
                       const void *pw, Py_ssize_t pw_period, const double *g,
                       Py_ssize_t g_period, double scale, void *loss, void *grad, Py_ssize_t lo,
                       Py_ssize_t hi, int kind) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i = lo, stop
    while i < hi:
        stop = min(_period_end(i, hi, g_period), _period_end(i, hi, w_period),
                   _period_end(i, hi, pw_period))
        total += fs_bce_segment(x, t, w, i % w_period, pw, i % pw_period, g + i % g_period,
                                scale, loss, grad, i, stop - i, kind)
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


def kl_div(const anyreal[::1] input, const anyreal[::1] target, bint log_target,
           const double[::1] grad_output, double scale, loss, anyreal[::1] grad):
    cdef Py_ssize_t c, n = input.shape[0], n_chunks = (n + FS_EW_CHUNK - 1) // FS_EW_CHUNK
    cdef Py_ssize_t loss_size
    if n == 0:
        return 0.0
    cdef void *loss_p = _compute_data(loss, anyreal is double, &loss_size)
    cdef void *grad_p = _data(grad)
    cdef int kind = _kind(input)
    cdef double *part = _partials(n_chunks)
    for c in prange(n_chunks, nogil=True, num_threads=_threads, schedule="static"):
        part[c] = _kl_div_chunk(&input[0], &target[0], &grad_output[0], grad_output.shape[0],
                                scale, loss_p, grad_p, c * FS_EW_CHUNK,
                                min(n, (c + 1) * FS_EW_CHUNK), kind, log_target)
    total = _total(part, n_chunks)
    free(part)
    return total


def binary_cross_entropy_with_logits(const anyreal[::1] input, const anyreal[::1] target,
                                     weight, pos_weight, const double[::1] grad_output,
                                     double scale, loss, anyreal[::1] grad):
    cdef Py_ssize_t c, n = input.shape[0], n_chunks = (n + FS_EW_CHUNK - 1) // FS_EW_CHUNK
    cdef Py_ssize_t w_size, pw_size, loss_size
    if n == 0:
        return 0.0
    cdef const void *w_p = _compute_data(weight, anyreal is double, &w_size)
    cdef const void *pw_p = _compute_data(pos_weight, anyreal is double, &pw_size)
    cdef void *loss_p = _compute_data(loss, anyreal is double, &loss_size)
    cdef void *grad_p = _data(grad)
    cdef int kind = _kind(input)
    cdef double *part = _partials(n_chunks)
    for c in prange(n_chunks, nogil=True, num_threads=_threads, schedule="static"):
        part[c] = _bce_chunk(&input[0], &target[0], w_p, w_size, pw_p, pw_size,
                             &grad_output[0], grad_output.shape[0], scale, loss_p, grad_p,
                             c * FS_EW_CHUNK, min(n, (c + 1) * FS_EW_CHUNK), kind)
    total = _total(part, n_chunks)
    free(part)
    return total


cdef void _sigmoid_family(const anyreal[::1] x, anyreal[::1] out, int log_sigmoid) noexcept:
    cdef Py_ssize_t c, lo, n = x.shape[0], n_chunks = (n + FS_EW_CHUNK - 1) // FS_EW_CHUNK
    cdef int kind = _kind(x)
    for c in prange(n_chunks, nogil=True, num_threads=_threads, schedule="static"):
        lo = c * FS_EW_CHUNK
        fs_sigmoid_segment(&x[0], &out[0], lo, min(n - lo, FS_EW_CHUNK), kind, log_sigmoid)


def sigmoid(const anyreal[::1] x, anyreal[::1] out):
    _sigmoid_family(x, out, 0)


def log_sigmoid(const anyreal[::1] x, anyreal[::1] out):
    _sigmoid_family(x, out, 1)
