# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython + OpenMP kernels: the same interface and algorithms as fastsoftmax._numba.

Every kernel takes C-contiguous (rows, classes) arrays and a caller-allocated output
and runs one ``prange`` over rows without the GIL, on ``set_num_threads`` threads.
float32 and float64 share each body through the fused type ``real``; the vector
loops live in ``rows.h`` (instantiated per type).
"""
import os

from libc.math cimport log, isfinite
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t
from cython.parallel cimport prange

cdef extern from "rows.h" nogil:
    float fs_exp_f(float x)
    double fs_exp_d(double x)
    float fs_row_max_f(const float *row, Py_ssize_t n)
    double fs_row_max_d(const double *row, Py_ssize_t n)
    double fs_row_sumexp_f(const float *row, Py_ssize_t n, float m, float *out)
    double fs_row_sumexp_d(const double *row, Py_ssize_t n, double m, double *out)
    double fs_row_dot_f(const float *a, const float *b, Py_ssize_t n)
    double fs_row_dot_d(const double *a, const double *b, Py_ssize_t n)
    double fs_row_shifted_dot_f(const float *w, const float *row, Py_ssize_t n, float m)
    double fs_row_shifted_dot_d(const double *w, const double *row, Py_ssize_t n, double m)
    double fs_prob_sums_f(const float *row, const float *t, const float *w, Py_ssize_t n,
                          float m, float keep, float eps, float *out, double *total_wt,
                          double *shifted_wt)
    double fs_prob_sums_d(const double *row, const double *t, const double *w, Py_ssize_t n,
                          double m, double keep, double eps, double *out, double *total_wt,
                          double *shifted_wt)
    void fs_rescale_f(float *out, float k, float f, const float *w, Py_ssize_t n)
    void fs_rescale_d(double *out, double k, double f, const double *w, Py_ssize_t n)
    void fs_prob_rescale_f(float *out, const float *t, const float *w, float k, float f,
                           float keep, float eps, Py_ssize_t n)
    void fs_prob_rescale_d(double *out, const double *t, const double *w, double k, double f,
                           double keep, double eps, Py_ssize_t n)
    void fs_shift_f(const float *row, float m, float log_sum, float *out, Py_ssize_t n)
    void fs_shift_d(const double *row, double m, double log_sum, double *out, Py_ssize_t n)
    void fs_softmax_bwd_f(const float *y, const float *dy, float dot, float *out, Py_ssize_t n)
    void fs_softmax_bwd_d(const double *y, const double *dy, double dot, double *out,
                          Py_ssize_t n)
    void fs_log_softmax_bwd_f(const float *logp, const float *dy, float total, float *out,
                              Py_ssize_t n)
    void fs_log_softmax_bwd_d(const double *logp, const double *dy, double total, double *out,
                              Py_ssize_t n)

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FS_OPENMP 1
    #else
    #define FS_OPENMP 0
    #endif
    """
    int FS_OPENMP

# Built without OpenMP (FASTSOFTMAX_NO_OPENMP=1) the prange loops run serially.
def _usable_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


max_threads = _usable_cores() if FS_OPENMP else 1
openmp = bool(FS_OPENMP)

ctypedef fused real:
    float
    double

cdef int _threads = max_threads

# Below SMALL_C classes the kernels work on transposed blocks of rows (as
# fastsoftmax/_numba/_small.py; the reasons and measurements are there).
SMALL_C = 64
cdef Py_ssize_t BLOCK_ELEMENTS = 4096


def set_num_threads(int n):
    """Threads for the next kernel calls (validated by fastsoftmax.set_num_threads)."""
    global _threads
    _threads = max(1, min(n, max_threads))


# One-line fused wrappers: pick the float or double instance of a rows.h helper.
cdef inline real _max(const real *row, Py_ssize_t n) noexcept nogil:
    if real is float:
        return fs_row_max_f(row, n)
    else:
        return fs_row_max_d(row, n)

cdef inline double _sumexp(const real *row, Py_ssize_t n, real m, real *out) noexcept nogil:
    if real is float:
        return fs_row_sumexp_f(row, n, m, out)
    else:
        return fs_row_sumexp_d(row, n, m, out)

cdef inline double _dot(const real *a, const real *b, Py_ssize_t n) noexcept nogil:
    if real is float:
        return fs_row_dot_f(a, b, n)
    else:
        return fs_row_dot_d(a, b, n)

cdef inline double _shifted_dot(const real *w, const real *row, Py_ssize_t n,
                                real m) noexcept nogil:
    if real is float:
        return fs_row_shifted_dot_f(w, row, n, m)
    else:
        return fs_row_shifted_dot_d(w, row, n, m)

cdef inline real _exp(real x) noexcept nogil:
    if real is float:
        return fs_exp_f(x)
    else:
        return fs_exp_d(x)

cdef inline void _rescale(real *out, real k, real f, const real *w, Py_ssize_t n) noexcept nogil:
    if real is float:
        fs_rescale_f(out, k, f, w, n)
    else:
        fs_rescale_d(out, k, f, w, n)


# ---- few classes: a task takes a block of rows and works on it transposed ----

cdef Py_ssize_t _block_rows(Py_ssize_t n_classes) noexcept nogil:
    return max(1, BLOCK_ELEMENTS // n_classes)


cdef void _columns(const real *x, Py_ssize_t rows, Py_ssize_t n, real *e,
                   real *m) noexcept nogil:
    """e[j, r] = x[r, j] - m[r] (e is n x rows), m[r] = max of row r ignoring NaN (a NaN
    still makes the row's exp sum NaN; a compare-select max vectorises, an `or` does not)."""
    cdef Py_ssize_t r, j
    cdef real v
    for r in range(rows):
        for j in range(n):
            e[j * rows + r] = x[r * n + j]
    for r in range(rows):
        m[r] = e[r]
    for j in range(1, n):
        for r in range(rows):
            v = e[j * rows + r]
            m[r] = v if v > m[r] else m[r]
    for j in range(n):
        for r in range(rows):
            e[j * rows + r] -= m[r]


cdef void _exp_columns(real *e, Py_ssize_t rows, Py_ssize_t n, double *sums) noexcept nogil:
    """e = exp(e) in place; sums[r] = sum over the classes of row r."""
    cdef Py_ssize_t r, j
    cdef real v
    for r in range(rows):
        sums[r] = 0
    for j in range(n):
        for r in range(rows):
            v = _exp(e[j * rows + r])
            e[j * rows + r] = v
            sums[r] += v


cdef struct Scratch:
    void *e
    void *m
    double *sums
    double *a
    double *b


cdef Scratch _scratch(Py_ssize_t rows, Py_ssize_t n, size_t item) noexcept nogil:
    cdef Scratch s
    s.e = malloc(rows * n * item)
    s.m = malloc(rows * item)
    s.sums = <double *> malloc(rows * sizeof(double))
    s.a = <double *> malloc(rows * sizeof(double))
    s.b = <double *> malloc(rows * sizeof(double))
    return s


cdef void _release(Scratch s) noexcept nogil:
    free(s.e)
    free(s.m)
    free(s.sums)
    free(s.a)
    free(s.b)


cdef void _softmax_family_block(const real *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                real *out) noexcept nogil:
    """op 0: softmax, 1: log_softmax (out rows x n), 2: logsumexp (out rows)."""
    cdef Scratch s = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> s.e
    cdef real *m = <real *> s.m
    cdef Py_ssize_t r, j
    cdef real scale
    _columns(x, rows, n, e, m)
    _exp_columns(e, rows, n, s.sums)
    for r in range(rows):
        if op == 0:
            scale = <real>(1.0 / s.sums[r])
            for j in range(n):
                out[r * n + j] = e[j * rows + r] * scale
        elif op == 1:
            scale = <real>log(s.sums[r])
            for j in range(n):
                out[r * n + j] = (x[r * n + j] - m[r]) - scale
        elif isfinite(m[r]):
            out[r] = <real>(m[r] + log(s.sums[r]))
        else:  # as torch.logsumexp: a row whose max is +-inf gives it, unless it holds NaN
            out[r] = m[r]
            for j in range(n):
                if x[r * n + j] != x[r * n + j]:
                    out[r] = x[r * n + j]
    _release(s)


cdef void _softmax_family_small(const real[:, ::1] x, real *out, int op,
                                Py_ssize_t out_row) noexcept nogil:
    cdef Py_ssize_t b, lo, n = x.shape[1], rows = _block_rows(n)
    cdef Py_ssize_t n_blocks = (x.shape[0] + rows - 1) // rows
    for b in prange(n_blocks, num_threads=_threads):
        lo = b * rows
        _softmax_family_block(&x[lo, 0], min(rows, x.shape[0] - lo), n, op,
                              out + lo * out_row)


cdef void _index_block(const real *x, const int64_t *target, const real *weight,
                       double weight_sum, int64_t ignore_index, double smoothing, double scale,
                       const double *row_scale, Py_ssize_t rows, Py_ssize_t n,
                       double *row_loss, real *grad) noexcept nogil:
    """cross_entropy_index on one block; grad (NULL: loss only) may be x itself."""
    cdef Scratch sc = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> sc.e
    cdef real *m = <real *> sc.m
    cdef double *shifted_y = sc.a
    cdef double *shifted_w = sc.b
    cdef double eps_c = smoothing / n, log_sum, w_y, s, onehot_coef
    cdef Py_ssize_t r, j
    cdef int64_t y
    cdef real k, f
    _columns(x, rows, n, e, m)
    for r in range(rows):
        shifted_w[r] = 0
        shifted_y[r] = e[target[r] * rows + r] if target[r] != ignore_index else 0
    if smoothing != 0:
        for j in range(n):
            for r in range(rows):
                shifted_w[r] += weight[j] * e[j * rows + r]
    _exp_columns(e, rows, n, sc.sums)
    for r in range(rows):
        y = target[r]
        if y == ignore_index:
            row_loss[r] = 0
            if grad != NULL:
                for j in range(n):
                    grad[r * n + j] = 0
            continue
        log_sum = log(sc.sums[r])
        w_y = weight[y]
        row_loss[r] = (1.0 - smoothing) * w_y * (log_sum - shifted_y[r])
        if smoothing != 0:
            row_loss[r] += eps_c * (weight_sum * log_sum - shifted_w[r])
        if grad != NULL:
            s = scale * row_scale[r] if row_scale != NULL else scale
            onehot_coef = (1.0 - smoothing) * w_y
            k = <real>(s * (onehot_coef + eps_c * weight_sum) / sc.sums[r])
            f = <real>(s * eps_c)
            for j in range(n):
                grad[r * n + j] = e[j * rows + r] * k - f * weight[j]
            grad[r * n + y] -= <real>(s * onehot_coef)
    _release(sc)


cdef void _prob_block(const real *x, const real *target, const real *weight, double smoothing,
                      double scale, const double *row_scale, Py_ssize_t rows, Py_ssize_t n,
                      double *row_loss, real *grad) noexcept nogil:
    """cross_entropy_prob on one block; grad (NULL: loss only) may be x itself."""
    cdef Scratch sc = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> sc.e
    cdef real *m = <real *> sc.m
    cdef double *total_wt = sc.a
    cdef double *shifted_wt = sc.b
    cdef real keep = <real>(1.0 - smoothing), eps_c = <real>(smoothing / n), wt, k, f
    cdef double s
    cdef Py_ssize_t r, j
    _columns(x, rows, n, e, m)
    for r in range(rows):
        total_wt[r] = 0
        shifted_wt[r] = 0
    for j in range(n):
        for r in range(rows):
            wt = weight[j] * (target[r * n + j] * keep + eps_c)
            total_wt[r] += wt
            shifted_wt[r] += wt * e[j * rows + r]
    _exp_columns(e, rows, n, sc.sums)
    for r in range(rows):
        row_loss[r] = total_wt[r] * log(sc.sums[r]) - shifted_wt[r]
        if grad != NULL:
            s = scale * row_scale[r] if row_scale != NULL else scale
            k = <real>(s * total_wt[r] / sc.sums[r])
            f = <real>s
            for j in range(n):
                grad[r * n + j] = e[j * rows + r] * k - f * weight[j] * (target[r * n + j] * keep + eps_c)
    _release(sc)


def softmax(const real[:, ::1] x, real[:, ::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef real m
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0, 0], 0, n)
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_threads):
        m = _max(&x[i, 0], n)
        _rescale(&out[i, 0], <real>(1.0 / _sumexp(&x[i, 0], n, m, &out[i, 0])), 0, NULL, n)


def log_softmax(const real[:, ::1] x, real[:, ::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef real m, log_sum
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0, 0], 1, n)
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_threads):
        m = _max(&x[i, 0], n)
        log_sum = <real>log(_sumexp(&x[i, 0], n, m, NULL))
        if real is float:
            fs_shift_f(&x[i, 0], m, log_sum, &out[i, 0], n)
        else:
            fs_shift_d(&x[i, 0], m, log_sum, &out[i, 0], n)


def logsumexp(const real[:, ::1] x, real[::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef real m
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0], 2, 1)
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_threads):
        m = _max(&x[i, 0], n)
        # as torch.logsumexp: a NaN, +inf or all -inf row gives its max (NaN, +inf, -inf)
        out[i] = <real>(m + log(_sumexp(&x[i, 0], n, m, NULL))) if isfinite(m) else m


def softmax_backward(const real[:, ::1] y, const real[:, ::1] dy, real[:, ::1] out):
    cdef Py_ssize_t i, n = y.shape[1]
    cdef real dot
    for i in prange(y.shape[0], nogil=True, num_threads=_threads):
        dot = <real>_dot(&y[i, 0], &dy[i, 0], n)
        if real is float:
            fs_softmax_bwd_f(&y[i, 0], &dy[i, 0], dot, &out[i, 0], n)
        else:
            fs_softmax_bwd_d(&y[i, 0], &dy[i, 0], dot, &out[i, 0], n)


def log_softmax_backward(const real[:, ::1] logp, const real[:, ::1] dy, real[:, ::1] out):
    cdef Py_ssize_t i, n = logp.shape[1]
    cdef real total
    for i in prange(logp.shape[0], nogil=True, num_threads=_threads):
        total = <real>_dot(&dy[i, 0], NULL, n)
        if real is float:
            fs_log_softmax_bwd_f(&logp[i, 0], &dy[i, 0], total, &out[i, 0], n)
        else:
            fs_log_softmax_bwd_d(&logp[i, 0], &dy[i, 0], total, &out[i, 0], n)


def cross_entropy_index(const real[:, ::1] x, const int64_t[::1] target,
                        const real[::1] weight, double weight_sum, int64_t ignore_index,
                        double smoothing, double scale, const double[::1] row_scale,
                        double[::1] row_loss, real[:, ::1] grad):
    """Per-row loss and (when grad is not None) the gradient; formulas in _numba."""
    cdef Py_ssize_t i, j, n = x.shape[1]
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef double eps_c = smoothing / n, sum_exp, log_sum, w_y, s, onehot_coef, shifted_y, shifted_w
    cdef int64_t y
    cdef real m
    cdef Py_ssize_t b, lo, rows = _block_rows(n)
    if n < SMALL_C:
        for b in prange((x.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _index_block(&x[lo, 0], &target[lo], &weight[0], weight_sum, ignore_index,
                         smoothing, scale, &row_scale[lo] if per_row else NULL,
                         min(rows, x.shape[0] - lo), n, &row_loss[lo],
                         &grad[lo, 0] if want_grad else NULL)
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_threads):
        y = target[i]
        if y == ignore_index:
            row_loss[i] = 0
            if want_grad:
                for j in range(n):
                    grad[i, j] = 0
            continue
        m = _max(&x[i, 0], n)
        # Both read the row before the exp pass overwrites it (inplace=True).
        shifted_y = x[i, y] - m
        shifted_w = _shifted_dot(&weight[0], &x[i, 0], n, m) if smoothing != 0 else 0
        sum_exp = _sumexp(&x[i, 0], n, m, &grad[i, 0] if want_grad else NULL)
        log_sum = log(sum_exp)
        w_y = weight[y]
        row_loss[i] = ((1.0 - smoothing) * w_y * (log_sum - shifted_y)
                       + eps_c * (weight_sum * log_sum - shifted_w))
        if want_grad:
            s = scale * row_scale[i] if per_row else scale
            onehot_coef = (1.0 - smoothing) * w_y
            _rescale(&grad[i, 0], <real>(s * (onehot_coef + eps_c * weight_sum) / sum_exp),
                     <real>(s * eps_c), &weight[0] if smoothing != 0 else NULL, n)
            grad[i, y] -= <real>(s * onehot_coef)


def cross_entropy_prob(const real[:, ::1] x, const real[:, ::1] target, const real[::1] weight,
                       double smoothing, double scale, const double[::1] row_scale,
                       double[::1] row_loss, real[:, ::1] grad):
    """Per-row loss and (when grad is not None) the gradient for probability targets."""
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef real keep = <real>(1.0 - smoothing), eps_c = <real>(smoothing / n), m
    cdef real *out
    cdef double sum_exp, total_wt, shifted_wt, s
    cdef Py_ssize_t b, lo, rows = _block_rows(n)
    if n < SMALL_C:
        for b in prange((x.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _prob_block(&x[lo, 0], &target[lo, 0], &weight[0], smoothing, scale,
                        &row_scale[lo] if per_row else NULL, min(rows, x.shape[0] - lo), n,
                        &row_loss[lo], &grad[lo, 0] if want_grad else NULL)
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_threads):
        m = _max(&x[i, 0], n)
        total_wt = 0  # assigned here so that prange makes them thread-private
        shifted_wt = 0
        out = &grad[i, 0] if want_grad else NULL
        if real is float:
            sum_exp = fs_prob_sums_f(&x[i, 0], &target[i, 0], &weight[0], n, m, keep, eps_c,
                                     out, &total_wt, &shifted_wt)
        else:
            sum_exp = fs_prob_sums_d(&x[i, 0], &target[i, 0], &weight[0], n, m, keep, eps_c,
                                     out, &total_wt, &shifted_wt)
        row_loss[i] = total_wt * log(sum_exp) - shifted_wt
        if want_grad:
            s = scale * row_scale[i] if per_row else scale
            if real is float:
                fs_prob_rescale_f(out, &target[i, 0], &weight[0], <float>(s * total_wt / sum_exp),
                                  <float>s, keep, eps_c, n)
            else:
                fs_prob_rescale_d(out, &target[i, 0], &weight[0], s * total_wt / sum_exp, s,
                                  keep, eps_c, n)
