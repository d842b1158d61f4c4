# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython + OpenMP kernels: the same interface and algorithms as fastsoftmax._numba.

Every kernel takes C-contiguous (rows, classes) arrays and a caller-allocated output
and runs one ``prange`` over rows without the GIL, on ``set_num_threads`` threads.
float32 and float64 share each body through the fused type ``real``; the vector
loops live in ``rows.h`` (instantiated per type).
"""
import os

from libc.math cimport log, isfinite, NAN
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t
from cython.parallel cimport prange

cdef extern from "rows.h" nogil:
    void fs_log_array(const double *x, double *out, Py_ssize_t n)
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

    float fs_short_shift_max_f(const float *row, Py_ssize_t n, float *out)
    double fs_short_shift_max_d(const double *row, Py_ssize_t n, double *out)
    void fs_exp_array_f(float *x, Py_ssize_t n)
    void fs_exp_array_d(double *x, Py_ssize_t n)
    double fs_short_dot_f(const float *a, const float *b, Py_ssize_t n)
    double fs_short_dot_d(const double *a, const double *b, Py_ssize_t n)
    void fs_short_prob_sums_f(const float *row, float m, const float *t, const float *w,
                              Py_ssize_t n, float keep, float eps, double *total_wt,
                              double *shifted_wt)
    void fs_short_prob_sums_d(const double *row, double m, const double *t, const double *w,
                              Py_ssize_t n, double keep, double eps, double *total_wt,
                              double *shifted_wt)
    void fs_narrow_exp_rows_f(const float *x, Py_ssize_t rows, Py_ssize_t n, const float *w,
                              float *e, float *m, double *sums, double *shifted_w)
    void fs_narrow_exp_rows_d(const double *x, Py_ssize_t rows, Py_ssize_t n, const double *w,
                              double *e, double *m, double *sums, double *shifted_w)
    void fs_short_rescale_f(const float *e, float k, float f, const float *w, int64_t y,
                            float c, float *out, Py_ssize_t n)
    void fs_short_rescale_d(const double *e, double k, double f, const double *w, int64_t y,
                            double c, double *out, Py_ssize_t n)
    void fs_short_shift_f(const float *row, float m, float c, float *out, Py_ssize_t n)
    void fs_short_shift_d(const double *row, double m, double c, double *out, Py_ssize_t n)
    void fs_short_prob_rescale_f(const float *e, const float *t, const float *w, float k,
                                 float f, float keep, float eps, float *out, Py_ssize_t n)
    void fs_short_prob_rescale_d(const double *e, const double *t, const double *w, double k,
                                 double f, double keep, double eps, double *out, Py_ssize_t n)
    void fs_short_softmax_bwd_f(const float *y, const float *dy, float *out, Py_ssize_t n)
    void fs_short_softmax_bwd_d(const double *y, const double *dy, double *out, Py_ssize_t n)
    void fs_short_log_softmax_bwd_f(const float *logp, const float *dy, float *out, Py_ssize_t n)
    void fs_short_log_softmax_bwd_d(const double *logp, const double *dy, double *out,
                                    Py_ssize_t n)
    double fs_entropy_sums_f(const float *row, Py_ssize_t n, float m, float *out,
                             double *sum_ed)
    double fs_entropy_sums_d(const double *row, Py_ssize_t n, double m, double *out,
                             double *sum_ed)
    void fs_entropy_grad_f(const float *row, float m, float *out, Py_ssize_t n, float k,
                           float mean_d)
    void fs_entropy_grad_d(const double *row, double m, double *out, Py_ssize_t n, double k,
                           double mean_d)
    double fs_short_entropy_dot_f(const float *e, const float *row, float m, Py_ssize_t n)
    double fs_short_entropy_dot_d(const double *e, const double *row, double m, Py_ssize_t n)
    void fs_short_entropy_grad_f(const float *e, const float *row, float m, float k,
                                 float mean_d, float *out, Py_ssize_t n)
    void fs_short_entropy_grad_d(const double *e, const double *row, double m, double k,
                                 double mean_d, double *out, Py_ssize_t n)

cdef extern from *:
    """
    /* Set by a block whose scratch allocation failed (any thread); read and cleared by
     * the kernel's Python function after its parallel loop, which then raises MemoryError. */
    static int fs_scratch_failed = 0;
    static void fs_flag_scratch_failure(void) { __atomic_store_n(&fs_scratch_failed, 1, __ATOMIC_RELAXED); }
    static int fs_take_scratch_failure(void) { return __atomic_exchange_n(&fs_scratch_failed, 0, __ATOMIC_RELAXED); }
    #ifdef _OPENMP
    #define FS_OPENMP 1
    #else
    #define FS_OPENMP 0
    #endif
    """
    int FS_OPENMP
    void fs_flag_scratch_failure() nogil
    int fs_take_scratch_failure() nogil

cdef extern from "rows.h":
    int FS_VEC_BYTES

# Built without OpenMP (FASTSOFTMAX_NO_OPENMP=1) the prange loops run serially.
def _usable_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


max_threads = _usable_cores() if FS_OPENMP else 1
openmp = bool(FS_OPENMP)
VECTOR_BYTES = FS_VEC_BYTES  # the short-row vector width this build was compiled for

ctypedef fused real:
    float
    double

cdef int _threads = max_threads

# Below SMALL_C classes a task takes a block of rows (BLOCK_ELEMENTS elements, so that
# the block stays in L1) and handles each row as a few masked vectors (rows.h). With
# AVX-512, blocks vs rows at C = 100 (float32, 2 threads, python -m bench.ab): logsumexp
# 0.58 vs 0.92 ns/elem, cross_entropy 0.61 vs 0.93, but softmax and CE + grad about
# 1.1x slower; at C = 127 CE + grad 1.01 vs 1.23. With AVX2 the row kernels are faster
# from C = 64 (C = 100 CE + grad 1.1 rows vs 2.1 blocks, a -march=haswell build).
SMALL_C = 128 if FS_VEC_BYTES == 64 else 64
cdef Py_ssize_t BLOCK_ELEMENTS = 4096


def set_num_threads(int n):
    """Threads for the next kernel calls (validated by fastsoftmax.set_num_threads)."""
    global _threads
    _threads = max(1, min(n, max_threads))


# ---- row helpers: the float or double instance of a rows.h helper ----
# split=True runs the helper on all threads over fixed chunks of the row: the kernels
# do so for a few long rows (_split_rows), where one thread per row left cores idle
# (CE + grad kernel at 1 x 2**20, 2 threads: 1.13 -> 0.59 ns/elem; softmax 1.13 -> 0.59,
# logsumexp 0.86 -> 0.42). Partial results merge in chunk order.

cdef enum:
    SPLIT_ROWS = 4           # split the rows of an array with fewer rows than this ...
    SPLIT_MIN_CHUNK = 16384  # ... and at least 4 chunks of this many classes
    SPLIT_MAX_CHUNKS = 64


cdef inline bint _split_rows(Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """Split each row over the threads? Decided by the shape alone, not by the thread
    count, so that results do not change with set_num_threads."""
    return rows < SPLIT_ROWS and n >= 4 * SPLIT_MIN_CHUNK


cdef inline int _row_threads(bint split) noexcept nogil:
    """Threads of the prange over rows. With split rows it has one thread: a team of one
    is not an active OpenMP region, so the helpers' own prange gets every thread."""
    return 1 if split else _threads


cdef inline Py_ssize_t _chunk(Py_ssize_t n) noexcept nogil:
    """Chunk length for a split row: a multiple of SPLIT_MIN_CHUNK, <= SPLIT_MAX_CHUNKS chunks."""
    cdef Py_ssize_t span = SPLIT_MAX_CHUNKS * SPLIT_MIN_CHUNK
    return (n + span - 1) // span * SPLIT_MIN_CHUNK


cdef inline Py_ssize_t _chunks(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t size = _chunk(n)
    return (n + size - 1) // size


cdef inline double _weight(const real *w, int64_t j) noexcept nogil:
    """Class weight j of a weight vector that may be NULL (weight=None: all ones)."""
    return w[j] if w != NULL else 1


cdef inline const real *_weights_from(const real *w, Py_ssize_t lo) noexcept nogil:
    """w + lo, for a weight vector that may be NULL (all ones)."""
    return w + lo if w != NULL else NULL


cdef inline double _total(const double *part, Py_ssize_t count) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t c
    for c in range(count):
        total += part[c]
    return total


cdef real _max(const real *row, Py_ssize_t n, bint split) noexcept nogil:
    cdef real part[SPLIT_MAX_CHUNKS]
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            part[c] = _max(row + c * size, min(size, n - c * size), False)
        return _max(part, _chunks(n), False)
    if real is float:
        return fs_row_max_f(row, n)
    else:
        return fs_row_max_d(row, n)


cdef double _sumexp(const real *row, Py_ssize_t n, real m, real *out, bint split) noexcept nogil:
    cdef double part[SPLIT_MAX_CHUNKS]
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            part[c] = _sumexp(row + c * size, min(size, n - c * size), m,
                              out + c * size if out != NULL else NULL, False)
        return _total(part, _chunks(n))
    if real is float:
        return fs_row_sumexp_f(row, n, m, out)
    else:
        return fs_row_sumexp_d(row, n, m, out)


cdef double _dot(const real *a, const real *b, Py_ssize_t n, bint split) noexcept nogil:
    """sum(a * b); b NULL stands for ones (sum(a)), as for class weights"""
    cdef double part[SPLIT_MAX_CHUNKS]
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            part[c] = _dot(a + c * size, _weights_from(b, c * size),
                           min(size, n - c * size), False)
        return _total(part, _chunks(n))
    if real is float:
        return fs_row_dot_f(a, b, n)
    else:
        return fs_row_dot_d(a, b, n)


cdef double _shifted_dot(const real *w, const real *row, Py_ssize_t n, real m,
                         bint split) noexcept nogil:
    cdef double part[SPLIT_MAX_CHUNKS]
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            part[c] = _shifted_dot(_weights_from(w, c * size), row + c * size,
                                   min(size, n - c * size), m,
                                   False)
        return _total(part, _chunks(n))
    if real is float:
        return fs_row_shifted_dot_f(w, row, n, m)
    else:
        return fs_row_shifted_dot_d(w, row, n, m)


cdef double _prob_sums(const real *row, const real *t, const real *w, Py_ssize_t n, real m,
                       real keep, real eps, real *out, double *total_wt, double *shifted_wt,
                       bint split) noexcept nogil:
    cdef double part[3][SPLIT_MAX_CHUNKS]
    cdef Py_ssize_t c, lo, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            lo = c * size
            part[0][c] = _prob_sums(row + lo, t + lo, _weights_from(w, lo), min(size, n - lo), m,
                                    keep, eps,
                                    out + lo if out != NULL else NULL, &part[1][c],
                                    &part[2][c], False)
        total_wt[0] = _total(part[1], _chunks(n))
        shifted_wt[0] = _total(part[2], _chunks(n))
        return _total(part[0], _chunks(n))
    if real is float:
        return fs_prob_sums_f(row, t, w, n, m, keep, eps, out, total_wt, shifted_wt)
    else:
        return fs_prob_sums_d(row, t, w, n, m, keep, eps, out, total_wt, shifted_wt)


cdef void _rescale(real *out, real k, real f, const real *w, Py_ssize_t n,
                   bint split) noexcept nogil:
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            _rescale(out + c * size, k, f, _weights_from(w, c * size),
                     min(size, n - c * size), False)
    elif real is float:
        fs_rescale_f(out, k, f, w, n)
    else:
        fs_rescale_d(out, k, f, w, n)


cdef void _prob_rescale(real *out, const real *t, const real *w, real k, real f, real keep,
                        real eps, Py_ssize_t n, bint split) noexcept nogil:
    cdef Py_ssize_t c, lo, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            lo = c * size
            _prob_rescale(out + lo, t + lo, _weights_from(w, lo), k, f, keep, eps,
                          min(size, n - lo), False)
    elif real is float:
        fs_prob_rescale_f(out, t, w, k, f, keep, eps, n)
    else:
        fs_prob_rescale_d(out, t, w, k, f, keep, eps, n)


cdef void _shift(const real *row, real m, real log_sum, real *out, Py_ssize_t n,
                 bint split) noexcept nogil:
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            _shift(row + c * size, m, log_sum, out + c * size, min(size, n - c * size), False)
    elif real is float:
        fs_shift_f(row, m, log_sum, out, n)
    else:
        fs_shift_d(row, m, log_sum, out, n)


cdef void _softmax_bwd(const real *y, const real *dy, real dot, real *out, Py_ssize_t n,
                       bint split) noexcept nogil:
    cdef Py_ssize_t c, lo, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            lo = c * size
            _softmax_bwd(y + lo, dy + lo, dot, out + lo, min(size, n - lo), False)
    elif real is float:
        fs_softmax_bwd_f(y, dy, dot, out, n)
    else:
        fs_softmax_bwd_d(y, dy, dot, out, n)


cdef void _log_softmax_bwd(const real *logp, const real *dy, real total, real *out,
                           Py_ssize_t n, bint split) noexcept nogil:
    cdef Py_ssize_t c, lo, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            lo = c * size
            _log_softmax_bwd(logp + lo, dy + lo, total, out + lo, min(size, n - lo), False)
    elif real is float:
        fs_log_softmax_bwd_f(logp, dy, total, out, n)
    else:
        fs_log_softmax_bwd_d(logp, dy, total, out, n)


# ---- few classes: a task takes a block of rows, each row a few vectors (rows.h) ----

cdef Py_ssize_t _block_rows(Py_ssize_t n_classes) noexcept nogil:
    return max(1, BLOCK_ELEMENTS // n_classes)


cdef double _short_dot(const real *a, const real *b, Py_ssize_t n) noexcept nogil:
    """sum(a * b); b NULL stands for ones (sum(a)), as for class weights"""
    if real is float:
        return fs_short_dot_f(a, b, n)
    else:
        return fs_short_dot_d(a, b, n)


cdef void _short_prob_sums(const real *row, real m, const real *t, const real *w, Py_ssize_t n,
                           real keep, real eps, double *total_wt,
                           double *shifted_wt) noexcept nogil:
    if real is float:
        fs_short_prob_sums_f(row, m, t, w, n, keep, eps, total_wt, shifted_wt)
    else:
        fs_short_prob_sums_d(row, m, t, w, n, keep, eps, total_wt, shifted_wt)


cdef void _short_rescale(const real *e, real k, real f, const real *w, int64_t y, real c,
                         real *out, Py_ssize_t n) noexcept nogil:
    if real is float:
        fs_short_rescale_f(e, k, f, w, y, c, out, n)
    else:
        fs_short_rescale_d(e, k, f, w, y, c, out, n)


cdef void _short_shift(const real *row, real m, real c, real *out, Py_ssize_t n) noexcept nogil:
    if real is float:
        fs_short_shift_f(row, m, c, out, n)
    else:
        fs_short_shift_d(row, m, c, out, n)


cdef void _short_prob_rescale(const real *e, const real *t, const real *w, real k, real f,
                              real keep, real eps, real *out, Py_ssize_t n) noexcept nogil:
    if real is float:
        fs_short_prob_rescale_f(e, t, w, k, f, keep, eps, out, n)
    else:
        fs_short_prob_rescale_d(e, t, w, k, f, keep, eps, out, n)


cdef void _shifted_rows(const real *x, Py_ssize_t rows, Py_ssize_t n, real *z,
                        real *m) noexcept nogil:
    """z = x - m row by row (z may be x), m[r] = the max of row r."""
    cdef Py_ssize_t r
    for r in range(rows):
        if real is float:
            m[r] = fs_short_shift_max_f(x + r * n, n, z + r * n)
        else:
            m[r] = fs_short_shift_max_d(x + r * n, n, z + r * n)


cdef void _exp_rows(const real *x, Py_ssize_t rows, Py_ssize_t n, const real *w,
                    double *shifted_w, real *e, real *m, double *log_sums,
                    double *inv_sums) noexcept nogil:
    """For the rows of a block: e = exp(x - m) with m[r] the max of row r; for the sum of
    each row, log_sums[r] gets its log and inv_sums[r] its reciprocal, each in one vector
    loop over the block's rows (libm's log per row: C = 10 cross-entropy loss 2.66 -> 2.08
    ns/elem, 2 threads; a division per row where the gradient is written was 20% of the
    C = 10 CE + grad time in perf). When shifted_w is not NULL, shifted_w[r] = sum(w * (x - m))
    of row r (w NULL: ones)."""
    cdef Py_ssize_t r
    if n <= <Py_ssize_t>(FS_VEC_BYTES // sizeof(real)):
        if real is float:
            fs_narrow_exp_rows_f(x, rows, n, w, e, m, inv_sums, shifted_w)
        else:
            fs_narrow_exp_rows_d(x, rows, n, w, e, m, inv_sums, shifted_w)
    else:
        _shifted_rows(x, rows, n, e, m)
        if shifted_w != NULL:
            for r in range(rows):
                shifted_w[r] = _short_dot(e + r * n, w, n)
        if real is float:
            fs_exp_array_f(e, rows * n)
        else:
            fs_exp_array_d(e, rows * n)
        for r in range(rows):
            inv_sums[r] = _short_dot(e + r * n, <const real *> NULL, n)
    fs_log_array(inv_sums, log_sums, rows)
    for r in range(rows):
        inv_sums[r] = 1.0 / inv_sums[r]


cdef struct Scratch:
    void *e
    void *m
    double *log_sums
    double *inv_sums
    double *a
    double *b


cdef bint _fail_scratch = False  # tests: every scratch allocation fails


def _test_fail_scratch_allocations(bint fail):
    """For tests only: make every block's scratch allocation fail (True) or not."""
    global _fail_scratch
    _fail_scratch = fail


cdef Scratch _scratch(Py_ssize_t rows, Py_ssize_t n, size_t item) noexcept nogil:
    cdef Scratch s
    s.e = malloc(rows * n * item) if not _fail_scratch else NULL
    s.m = malloc(rows * item)
    s.log_sums = <double *> malloc(rows * sizeof(double))
    s.inv_sums = <double *> malloc(rows * sizeof(double))
    s.a = <double *> malloc(rows * sizeof(double))
    s.b = <double *> malloc(rows * sizeof(double))
    if not (s.e and s.m and s.log_sums and s.inv_sums and s.a and s.b):
        _release(s)  # free(NULL) is a no-op
        s.e = NULL   # the block sees this and returns without touching its rows
        fs_flag_scratch_failure()
    return s


cdef void _raise_if_scratch_failed() except *:
    if fs_take_scratch_failure():
        raise MemoryError("fastsoftmax: a kernel could not allocate its per-block scratch "
                          "memory; the results are incomplete")


cdef void _release(Scratch s) noexcept nogil:
    free(s.e)
    free(s.m)
    free(s.log_sums)
    free(s.inv_sums)
    free(s.a)
    free(s.b)


cdef void _softmax_family_block(const real *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                real *out) noexcept nogil:
    """op 0: softmax, 1: log_softmax (out rows x n), 2: logsumexp (out rows)."""
    cdef Scratch s = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> s.e  # exp(x - m); a softmax row is then written once
    cdef real *m = <real *> s.m
    cdef Py_ssize_t r, j
    if e == NULL:  # no scratch: flagged, raised after the parallel loop
        return
    _exp_rows(x, rows, n, NULL, NULL, e, m, s.log_sums, s.inv_sums)
    for r in range(rows):
        if op == 0:
            _short_rescale(e + r * n, <real>s.inv_sums[r], 0, NULL, -1, 0, out + r * n, n)
        elif op == 1:
            _short_shift(x + r * n, m[r], <real>s.log_sums[r], out + r * n, n)
        elif isfinite(m[r]):
            out[r] = <real>(m[r] + s.log_sums[r])
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
    cdef real *e = <real *> sc.e  # exp(x - m); the gradient row is then written once
    cdef double *shifted_w = sc.b
    cdef double *shifted_y = sc.a
    cdef double eps_c = smoothing / n, log_sum, w_y, s, onehot_coef
    cdef Py_ssize_t r, j
    cdef int64_t y
    cdef real *m = <real *> sc.m
    if e == NULL:  # no scratch: flagged, raised after the parallel loop
        return
    _exp_rows(x, rows, n, weight, shifted_w if smoothing != 0 else NULL, e, m, sc.log_sums,
              sc.inv_sums)
    # All target logits are read before the first gradient row is written: with grad = x,
    # a load after the masked store of the row before it (same cache line) waited for that
    # store (30% of the C = 10 CE + grad loop in perf).
    for r in range(rows):  # (an ignored row reads its first logit: no branch in the loop)
        shifted_y[r] = x[r * n + (target[r] if target[r] != ignore_index else 0)] - m[r]
    for r in range(rows):
        y = target[r]
        if y == ignore_index:
            row_loss[r] = 0
            if grad != NULL:
                for j in range(n):
                    grad[r * n + j] = 0
            continue
        log_sum = sc.log_sums[r]
        w_y = _weight(weight, y)
        row_loss[r] = (1.0 - smoothing) * w_y * (log_sum - shifted_y[r])
        if smoothing != 0:
            row_loss[r] += eps_c * (weight_sum * log_sum - shifted_w[r])
        if grad != NULL:
            s = scale * row_scale[r] if row_scale != NULL else scale
            onehot_coef = (1.0 - smoothing) * w_y
            # without smoothing f = s * eps_c = 0: the weights are not read (NULL)
            _short_rescale(e + r * n,
                           <real>(s * (onehot_coef + eps_c * weight_sum) * sc.inv_sums[r]),
                           <real>(s * eps_c), weight if smoothing != 0 else NULL, y,
                           <real>(s * onehot_coef), grad + r * n, n)
    _release(sc)


cdef void _prob_block(const real *x, const real *target, const real *weight, double smoothing,
                      double scale, const double *row_scale, Py_ssize_t rows, Py_ssize_t n,
                      double *row_loss, real *grad) noexcept nogil:
    """cross_entropy_prob on one block; grad (NULL: loss only) may be x itself."""
    cdef Scratch sc = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> sc.e  # exp(x - m); the gradient row is then written once
    cdef double *total_wt = sc.a
    cdef double *shifted_wt = sc.b
    cdef real *m = <real *> sc.m
    cdef real keep = <real>(1.0 - smoothing), eps_c = <real>(smoothing / n)
    cdef double s
    cdef Py_ssize_t r
    if e == NULL:  # no scratch: flagged, raised after the parallel loop
        return
    _exp_rows(x, rows, n, NULL, NULL, e, m, sc.log_sums, sc.inv_sums)
    for r in range(rows):
        _short_prob_sums(x + r * n, m[r], target + r * n, weight, n, keep, eps_c, &total_wt[r],
                         &shifted_wt[r])
    for r in range(rows):
        row_loss[r] = total_wt[r] * sc.log_sums[r] - shifted_wt[r]
        if grad != NULL:
            s = scale * row_scale[r] if row_scale != NULL else scale
            _short_prob_rescale(e + r * n, target + r * n, weight,
                                <real>(s * total_wt[r] * sc.inv_sums[r]),
                                <real>s, keep, eps_c, grad + r * n, n)
    _release(sc)


cdef void _softmax_row(const real *x, real *out, Py_ssize_t n, bint split) noexcept nogil:
    cdef real m = _max(x, n, split)
    _rescale(out, <real>(1.0 / _sumexp(x, n, m, out, split)), 0, NULL, n, split)


cdef void _log_softmax_row(const real *x, real *out, Py_ssize_t n, bint split) noexcept nogil:
    cdef real m = _max(x, n, split)
    _shift(x, m, <real>log(_sumexp(x, n, m, NULL, split)), out, n, split)


cdef real _logsumexp_row(const real *x, Py_ssize_t n, bint split) noexcept nogil:
    cdef real m = _max(x, n, split)
    # as torch.logsumexp: a NaN, +inf or all -inf row gives its max (NaN, +inf, -inf)
    return <real>(m + log(_sumexp(x, n, m, NULL, split))) if isfinite(m) else m


def softmax(const real[:, ::1] x, real[:, ::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint split = _split_rows(x.shape[0], n)
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0, 0], 0, n)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        _softmax_row(&x[i, 0], &out[i, 0], n, split)


def log_softmax(const real[:, ::1] x, real[:, ::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint split = _split_rows(x.shape[0], n)
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0, 0], 1, n)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        _log_softmax_row(&x[i, 0], &out[i, 0], n, split)


def logsumexp(const real[:, ::1] x, real[::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint split = _split_rows(x.shape[0], n)
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0], 2, 1)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        out[i] = _logsumexp_row(&x[i, 0], n, split)


cdef void _short_softmax_bwd(const real *y, const real *dy, real *out,
                             Py_ssize_t n) noexcept nogil:
    if real is float:
        fs_short_softmax_bwd_f(y, dy, out, n)
    else:
        fs_short_softmax_bwd_d(y, dy, out, n)


cdef void _short_log_softmax_bwd(const real *logp, const real *dy, real *out,
                                 Py_ssize_t n) noexcept nogil:
    if real is float:
        fs_short_log_softmax_bwd_f(logp, dy, out, n)
    else:
        fs_short_log_softmax_bwd_d(logp, dy, out, n)


# Below SMALL_C classes the backward kernels take short rows as masked vectors too; the
# row helpers ran them in their scalar epilogues (C = 10, float32, 2 threads, kernel:
# softmax_backward 3.21 -> 1.04 ns/elem, log_softmax_backward 4.79 -> 1.66).

def softmax_backward(const real[:, ::1] y, const real[:, ::1] dy, real[:, ::1] out):
    cdef Py_ssize_t i, n = y.shape[1]
    cdef bint split = _split_rows(y.shape[0], n)
    if n < SMALL_C:
        for i in prange(y.shape[0], nogil=True, num_threads=_threads):
            _short_softmax_bwd(&y[i, 0], &dy[i, 0], &out[i, 0], n)
        return
    for i in prange(y.shape[0], nogil=True, num_threads=_row_threads(split)):
        _softmax_bwd(&y[i, 0], &dy[i, 0], <real>_dot(&y[i, 0], &dy[i, 0], n, split),
                     &out[i, 0], n, split)


def log_softmax_backward(const real[:, ::1] logp, const real[:, ::1] dy, real[:, ::1] out):
    cdef Py_ssize_t i, n = logp.shape[1]
    cdef bint split = _split_rows(logp.shape[0], n)
    if n < SMALL_C:
        for i in prange(logp.shape[0], nogil=True, num_threads=_threads):
            _short_log_softmax_bwd(&logp[i, 0], &dy[i, 0], &out[i, 0], n)
        return
    for i in prange(logp.shape[0], nogil=True, num_threads=_row_threads(split)):
        _log_softmax_bwd(&logp[i, 0], &dy[i, 0], <real>_dot(&dy[i, 0], NULL, n, split),
                         &out[i, 0], n, split)


cdef double _index_row(const real *x, int64_t y, const real *weight, double weight_sum,
                       int64_t ignore_index, double smoothing, double s, Py_ssize_t n,
                       real *grad, bint split) noexcept nogil:
    """Loss of one row; with grad (not NULL), also d(s * loss)/dx into grad (may be x)."""
    cdef double eps_c = smoothing / n, sum_exp, log_sum, w_y, onehot_coef, shifted_y, shifted_w
    cdef Py_ssize_t j
    cdef real m
    if y == ignore_index:
        if grad != NULL:
            for j in range(n):
                grad[j] = 0
        return 0
    m = _max(x, n, split)
    # Both read the row before the exp pass overwrites it (inplace=True).
    shifted_y = x[y] - m
    shifted_w = _shifted_dot(weight, x, n, m, split) if smoothing != 0 else 0
    sum_exp = _sumexp(x, n, m, grad, split)
    log_sum = log(sum_exp)
    w_y = _weight(weight, y)
    if grad != NULL:
        onehot_coef = (1.0 - smoothing) * w_y
        # without smoothing f = s * eps_c = 0: the weights are not read (NULL)
        _rescale(grad, <real>(s * (onehot_coef + eps_c * weight_sum) / sum_exp),
                 <real>(s * eps_c), weight if smoothing != 0 else NULL, n, split)
        grad[y] -= <real>(s * onehot_coef)
    return ((1.0 - smoothing) * w_y * (log_sum - shifted_y)
            + eps_c * (weight_sum * log_sum - shifted_w))


def cross_entropy_index(const real[:, ::1] x, const int64_t[::1] target,
                        const real[::1] weight, double weight_sum, int64_t ignore_index,
                        double smoothing, double scale, const double[::1] row_scale,
                        double[::1] row_loss, real[:, ::1] grad):
    """Per-row loss and (when grad is not None) the gradient; formulas in _numba.
    weight=None: every class weighs 1."""
    cdef const real *w = &weight[0] if weight is not None else NULL
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef bint split = _split_rows(x.shape[0], n)
    cdef Py_ssize_t b, lo, rows = _block_rows(n)
    if n < SMALL_C:
        for b in prange((x.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _index_block(&x[lo, 0], &target[lo], w, weight_sum, ignore_index,
                         smoothing, scale, &row_scale[lo] if per_row else NULL,
                         min(rows, x.shape[0] - lo), n, &row_loss[lo],
                         &grad[lo, 0] if want_grad else NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        row_loss[i] = _index_row(&x[i, 0], target[i], w, weight_sum, ignore_index,
                                 smoothing, scale * row_scale[i] if per_row else scale, n,
                                 &grad[i, 0] if want_grad else NULL, split)


cdef double _prob_row(const real *x, const real *t, const real *weight, double smoothing,
                      double s, Py_ssize_t n, real *grad, bint split) noexcept nogil:
    """Loss of one row; with grad (not NULL), also d(s * loss)/dx into grad (may be x)."""
    cdef real keep = <real>(1.0 - smoothing), eps_c = <real>(smoothing / n)
    cdef real m = _max(x, n, split)
    cdef double total_wt, shifted_wt
    cdef double sum_exp = _prob_sums(x, t, weight, n, m, keep, eps_c, grad, &total_wt,
                                     &shifted_wt, split)
    if grad != NULL:
        _prob_rescale(grad, t, weight, <real>(s * total_wt / sum_exp), <real>s, keep, eps_c,
                      n, split)
    return total_wt * log(sum_exp) - shifted_wt


def cross_entropy_prob(const real[:, ::1] x, const real[:, ::1] target, const real[::1] weight,
                       double smoothing, double scale, const double[::1] row_scale,
                       double[::1] row_loss, real[:, ::1] grad):
    """Per-row loss and (when grad is not None) the gradient for probability targets.
    weight=None: every class weighs 1."""
    cdef const real *w = &weight[0] if weight is not None else NULL
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef bint split = _split_rows(x.shape[0], n)
    cdef Py_ssize_t b, lo, rows = _block_rows(n)
    if n < SMALL_C:
        for b in prange((x.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _prob_block(&x[lo, 0], &target[lo, 0], w, smoothing, scale,
                        &row_scale[lo] if per_row else NULL, min(rows, x.shape[0] - lo), n,
                        &row_loss[lo], &grad[lo, 0] if want_grad else NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        row_loss[i] = _prob_row(&x[i, 0], &target[i, 0], w, smoothing,
                                scale * row_scale[i] if per_row else scale, n,
                                &grad[i, 0] if want_grad else NULL, split)


# ---- entropy: formulas in fastsoftmax/_numba/_entropy.py ----

cdef double _entropy_sums(const real *row, Py_ssize_t n, real m, real *out, double *sum_ed,
                          bint split) noexcept nogil:
    """sum(e) and *sum_ed = sum(e d), d = max(row - m, floor), e = exp(d); with out, out = e
    (out = d when out is row)."""
    cdef double part[2][SPLIT_MAX_CHUNKS]
    cdef Py_ssize_t c, lo, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            lo = c * size
            part[0][c] = _entropy_sums(row + lo, min(size, n - lo), m,
                                       out + lo if out != NULL else NULL, &part[1][c], False)
        sum_ed[0] = _total(part[1], _chunks(n))
        return _total(part[0], _chunks(n))
    if real is float:
        return fs_entropy_sums_f(row, n, m, out, sum_ed)
    else:
        return fs_entropy_sums_d(row, n, m, out, sum_ed)


cdef void _entropy_grad(const real *row, real m, real *out, Py_ssize_t n, real k, real mean_d,
                        bint split) noexcept nogil:
    """out = k * e * (mean_d - d), out holding what _entropy_sums left there"""
    cdef Py_ssize_t c, size
    if split:
        size = _chunk(n)
        for c in prange(_chunks(n), num_threads=_threads):
            _entropy_grad(row + c * size, m, out + c * size, min(size, n - c * size), k, mean_d,
                          False)
    elif real is float:
        fs_entropy_grad_f(row, m, out, n, k, mean_d)
    else:
        fs_entropy_grad_d(row, m, out, n, k, mean_d)


cdef double _entropy_row(const real *x, Py_ssize_t n, double s, real *grad,
                         bint split) noexcept nogil:
    """H of one row; with grad (not NULL), also s * dH/dx into grad (may be x)."""
    cdef real m = _max(x, n, split)
    cdef double sum_e, sum_ed, mean_d
    cdef Py_ssize_t j
    if not isfinite(m):  # a NaN, +inf or all -inf row: NaN, as torch
        if grad != NULL:
            for j in range(n):
                grad[j] = NAN
        return NAN
    sum_e = _entropy_sums(x, n, m, grad, &sum_ed, split)
    mean_d = sum_ed / sum_e
    if grad != NULL:
        _entropy_grad(x, m, grad, n, <real>(s / sum_e), <real>mean_d, split)
    return log(sum_e) - mean_d


cdef void _entropy_block(const real *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                         const double *row_scale, double *row_loss, real *h,
                         real *grad) noexcept nogil:
    """Entropy (into row_loss and/or h, either may be NULL) and, with grad (not NULL), the
    scaled gradient of the rows of one block; grad may be x itself."""
    cdef Scratch sc = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> sc.e  # exp(x - m)
    cdef real *m = <real *> sc.m
    cdef double mean_d, value, s
    cdef Py_ssize_t r
    if e == NULL:  # no scratch: flagged, raised after the parallel loop
        return
    _exp_rows(x, rows, n, NULL, NULL, e, m, sc.log_sums, sc.inv_sums)
    for r in range(rows):  # every row is read before the first gradient row is written
        if real is float:
            sc.a[r] = fs_short_entropy_dot_f(e + r * n, x + r * n, m[r], n) * sc.inv_sums[r]
        else:
            sc.a[r] = fs_short_entropy_dot_d(e + r * n, x + r * n, m[r], n) * sc.inv_sums[r]
    for r in range(rows):
        mean_d = sc.a[r] if isfinite(m[r]) else NAN
        value = sc.log_sums[r] - mean_d
        if row_loss != NULL:
            row_loss[r] = value
        if h != NULL:
            h[r] = <real>value
        if grad != NULL:
            s = scale * row_scale[r] if row_scale != NULL else scale
            if real is float:
                fs_short_entropy_grad_f(e + r * n, x + r * n, m[r], <real>(s * sc.inv_sums[r]),
                                        <real>mean_d, grad + r * n, n)
            else:
                fs_short_entropy_grad_d(e + r * n, x + r * n, m[r], <real>(s * sc.inv_sums[r]),
                                        <real>mean_d, grad + r * n, n)
    _release(sc)


def entropy(const real[:, ::1] logits, real[::1] out):
    cdef Py_ssize_t i, b, lo, n = logits.shape[1], rows = _block_rows(n)
    cdef bint split = _split_rows(logits.shape[0], n)
    if n < SMALL_C:
        for b in prange((logits.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _entropy_block(&logits[lo, 0], min(rows, logits.shape[0] - lo), n, 1.0, NULL, NULL,
                           &out[lo], NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(logits.shape[0], nogil=True, num_threads=_row_threads(split)):
        out[i] = <real>_entropy_row(&logits[i, 0], n, 1.0, NULL, split)


def entropy_with_grad(const real[:, ::1] logits, double scale, const double[::1] row_scale,
                      double[::1] row_loss, real[:, ::1] grad):
    cdef Py_ssize_t i, b, lo, n = logits.shape[1], rows = _block_rows(n)
    cdef bint per_row = row_scale.shape[0] > 0
    cdef bint split = _split_rows(logits.shape[0], n)
    if n < SMALL_C:
        for b in prange((logits.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _entropy_block(&logits[lo, 0], min(rows, logits.shape[0] - lo), n, scale,
                           &row_scale[lo] if per_row else NULL, &row_loss[lo], NULL,
                           &grad[lo, 0])
        _raise_if_scratch_failed()
        return
    for i in prange(logits.shape[0], nogil=True, num_threads=_row_threads(split)):
        row_loss[i] = _entropy_row(&logits[i, 0], n, scale * row_scale[i] if per_row else scale,
                                   &grad[i, 0], split)


include "elementwise.pxi"
