# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython + OpenMP kernels: the same interface and algorithms as fastsoftmax._numba.

Every kernel takes C-contiguous (rows, classes) arrays and a caller-allocated output
and runs one ``prange`` over rows without the GIL, on ``set_num_threads`` threads.
float32 and float64 share each body through the fused type ``real``; the vector
loops live in ``rows.h`` (instantiated per type).
"""
import os

from libc.math cimport log, isfinite, INFINITY, NAN
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport int16_t, int64_t, uint16_t
from cython.parallel cimport prange

cdef extern from "rows.h" nogil:
    void fs_log_array(const double *x, double *out, Py_ssize_t n)
    int fs_split_rows(Py_ssize_t rows, Py_ssize_t n)
    Py_ssize_t fs_chunk_length(Py_ssize_t n)
    void fs_softmax_row_f(const float *x, float *out, Py_ssize_t n, int threads)
    void fs_softmax_row_d(const double *x, double *out, Py_ssize_t n, int threads)
    void fs_log_softmax_row_f(const float *x, float *out, Py_ssize_t n, int threads)
    void fs_log_softmax_row_d(const double *x, double *out, Py_ssize_t n, int threads)
    float fs_logsumexp_row_f(const float *x, Py_ssize_t n, int threads)
    double fs_logsumexp_row_d(const double *x, Py_ssize_t n, int threads)
    void fs_softmax_backward_row_f(const float *y, const float *dy, float *out, Py_ssize_t n,
                                   int threads)
    void fs_softmax_backward_row_d(const double *y, const double *dy, double *out,
                                   Py_ssize_t n, int threads)
    void fs_log_softmax_backward_row_f(const float *logp, const float *dy, float *out,
                                       Py_ssize_t n, int threads)
    void fs_log_softmax_backward_row_d(const double *logp, const double *dy, double *out,
                                       Py_ssize_t n, int threads)
    double fs_cross_entropy_row_f(const float *x, const int64_t *y, const float *t,
                                  const float *w, double weight_sum, double smoothing,
                                  double z_loss, double softcap, double s, double s_z,
                                  Py_ssize_t n, float *grad, double *z_term, int threads)
    double fs_cross_entropy_row_d(const double *x, const int64_t *y, const double *t,
                                  const double *w, double weight_sum, double smoothing,
                                  double z_loss, double softcap, double s, double s_z,
                                  Py_ssize_t n, double *grad, double *z_term, int threads)
    # 16-bit storage, float math: bfloat16 bits (b, uint16_t), float16 bits (h, int16_t)
    float fs_load_b(uint16_t bits)
    uint16_t fs_store_b(float x)
    float fs_load_h(int16_t bits)
    int16_t fs_store_h(float x)
    void fs_softmax_row_b(const uint16_t *x, uint16_t *out, Py_ssize_t n, int threads)
    void fs_softmax_row_h(const int16_t *x, int16_t *out, Py_ssize_t n, int threads)
    void fs_log_softmax_row_b(const uint16_t *x, uint16_t *out, Py_ssize_t n, int threads)
    void fs_log_softmax_row_h(const int16_t *x, int16_t *out, Py_ssize_t n, int threads)
    float fs_logsumexp_row_b(const uint16_t *x, Py_ssize_t n, int threads)
    float fs_logsumexp_row_h(const int16_t *x, Py_ssize_t n, int threads)
    void fs_softmax_backward_row_b(const uint16_t *y, const uint16_t *dy, uint16_t *out,
                                   Py_ssize_t n, int threads)
    void fs_softmax_backward_row_h(const int16_t *y, const int16_t *dy, int16_t *out,
                                   Py_ssize_t n, int threads)
    void fs_log_softmax_backward_row_b(const uint16_t *logp, const uint16_t *dy, uint16_t *out,
                                       Py_ssize_t n, int threads)
    void fs_log_softmax_backward_row_h(const int16_t *logp, const int16_t *dy, int16_t *out,
                                       Py_ssize_t n, int threads)
    double fs_cross_entropy_row_b(const uint16_t *x, const int64_t *y, const uint16_t *t,
                                  const float *w, double weight_sum, double smoothing,
                                  double z_loss, double softcap, double s, double s_z,
                                  Py_ssize_t n, uint16_t *grad, double *z_term, int threads)
    double fs_cross_entropy_row_h(const int16_t *x, const int64_t *y, const int16_t *t,
                                  const float *w, double weight_sum, double smoothing,
                                  double z_loss, double softcap, double s, double s_z,
                                  Py_ssize_t n, int16_t *grad, double *z_term, int threads)
    void fs_load_array_b(const uint16_t *x, float *out, Py_ssize_t n)
    void fs_store_array_b(const float *x, uint16_t *out, Py_ssize_t n)
    void fs_load_array_h(const int16_t *x, float *out, Py_ssize_t n)
    void fs_store_array_h(const float *x, int16_t *out, Py_ssize_t n)
    double fs_entropy_row_f(const float *x, double s, Py_ssize_t n, float *grad, int threads)
    double fs_entropy_row_d(const double *x, double s, Py_ssize_t n, double *grad,
                            int threads)
    double fs_entropy_row_b(const uint16_t *x, double s, Py_ssize_t n, uint16_t *grad,
                            int threads)
    double fs_entropy_row_h(const int16_t *x, double s, Py_ssize_t n, int16_t *grad,
                            int threads)
    double fs_jsd_row_f(const float *s, const float *t, double beta, double inv_t, double scale,
                        Py_ssize_t n, float *grad, int threads)
    double fs_jsd_row_d(const double *s, const double *t, double beta, double inv_t,
                        double scale, Py_ssize_t n, double *grad, int threads)
    double fs_jsd_row_b(const uint16_t *s, const uint16_t *t, double beta, double inv_t,
                        double scale, Py_ssize_t n, uint16_t *grad, int threads)
    double fs_jsd_row_h(const int16_t *s, const int16_t *t, double beta, double inv_t,
                        double scale, Py_ssize_t n, int16_t *grad, int threads)

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
    void fs_narrow_entropy_rows_f(const float *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                                  const double *row_scale, double *row_loss, float *h,
                                  float *grad)
    void fs_narrow_entropy_rows_d(const double *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                                  const double *row_scale, double *row_loss, double *h,
                                  double *grad)
    void fs_narrow_entropy_rows_b(const uint16_t *x, Py_ssize_t rows, Py_ssize_t n,
                                  double scale, const double *row_scale, double *row_loss,
                                  uint16_t *h, uint16_t *grad)
    void fs_narrow_entropy_rows_h(const int16_t *x, Py_ssize_t rows, Py_ssize_t n,
                                  double scale, const double *row_scale, double *row_loss,
                                  int16_t *h, int16_t *grad)
    void fs_narrow_softmax_rows_f(const float *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                  float *out)
    void fs_narrow_softmax_rows_d(const double *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                  double *out)
    void fs_narrow_jsd_rows_f(const float *s, const float *t, Py_ssize_t rows, Py_ssize_t n,
                              double beta, double inv_t, double scale,
                              const double *row_scale, double *row_loss, float *grad)
    void fs_narrow_jsd_rows_d(const double *s, const double *t, Py_ssize_t rows, Py_ssize_t n,
                              double beta, double inv_t, double scale,
                              const double *row_scale, double *row_loss, double *grad)
    void fs_narrow_jsd_rows_b(const uint16_t *s, const uint16_t *t, Py_ssize_t rows, Py_ssize_t n,
                              double beta, double inv_t, double scale,
                              const double *row_scale, double *row_loss, uint16_t *grad)
    void fs_narrow_jsd_rows_h(const int16_t *s, const int16_t *t, Py_ssize_t rows, Py_ssize_t n,
                              double beta, double inv_t, double scale,
                              const double *row_scale, double *row_loss, int16_t *grad)
    void fs_narrow_softmax_rows_b(const uint16_t *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                  uint16_t *out)
    void fs_narrow_softmax_rows_h(const int16_t *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                  int16_t *out)
    void fs_short_backward_rows_f(const float *y, const float *dy, Py_ssize_t rows,
                                  Py_ssize_t n, int log, float *out)
    void fs_short_backward_rows_d(const double *y, const double *dy, Py_ssize_t rows,
                                  Py_ssize_t n, int log, double *out)
    void fs_short_backward_rows_b(const uint16_t *y, const uint16_t *dy, Py_ssize_t rows,
                                  Py_ssize_t n, int log, uint16_t *out)
    void fs_short_backward_rows_h(const int16_t *y, const int16_t *dy, Py_ssize_t rows,
                                  Py_ssize_t n, int log, int16_t *out)
    float fs_nonfinite_logsumexp_f(const float *row, Py_ssize_t n, float m)
    double fs_nonfinite_logsumexp_d(const double *row, Py_ssize_t n, double m)
    ctypedef struct fs_ce_scalars:
        double weight_sum, smoothing, z_loss, scale, z_scale
        int64_t ignore_index
    void fs_narrow_cross_entropy_rows_f(const float *x, const int64_t *y, const float *t,
                                        const float *w, const fs_ce_scalars *o,
                                        const double *row_scale,
                                        Py_ssize_t rows, Py_ssize_t n, double *row_loss,
                                        double *row_z_loss, float *grad)
    void fs_narrow_cross_entropy_rows_d(const double *x, const int64_t *y, const double *t,
                                        const double *w, const fs_ce_scalars *o,
                                        const double *row_scale,
                                        Py_ssize_t rows, Py_ssize_t n, double *row_loss,
                                        double *row_z_loss, double *grad)
    void fs_narrow_cross_entropy_rows_b(const uint16_t *x, const int64_t *y,
                                        const uint16_t *t, const float *w,
                                        const fs_ce_scalars *o, const double *row_scale,
                                        Py_ssize_t rows, Py_ssize_t n, double *row_loss,
                                        double *row_z_loss, uint16_t *grad)
    void fs_narrow_cross_entropy_rows_h(const int16_t *x, const int64_t *y,
                                        const int16_t *t, const float *w,
                                        const fs_ce_scalars *o, const double *row_scale,
                                        Py_ssize_t rows, Py_ssize_t n, double *row_loss,
                                        double *row_z_loss, int16_t *grad)
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
    void fs_short_pad_f(const float *x, Py_ssize_t n, float fill, float *out, Py_ssize_t width)
    void fs_short_pad_d(const double *x, Py_ssize_t n, double fill, double *out,
                        Py_ssize_t width)
    void fs_short_unpad_f(const float *x, Py_ssize_t n, float *out)
    void fs_short_unpad_d(const double *x, Py_ssize_t n, double *out)
    double fs_short_entropy_dot_f(const float *e, const float *row, float m, Py_ssize_t n)
    double fs_short_entropy_dot_d(const double *e, const double *row, double m, Py_ssize_t n)
    void fs_short_entropy_grad_f(const float *e, const float *row, float m, float k,
                                 float mean_d, float *out, Py_ssize_t n)
    void fs_short_entropy_grad_d(const double *e, const double *row, double m, double k,
                                 double mean_d, double *out, Py_ssize_t n)

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FS_OPENMP 1
    #else
    #define FS_OPENMP 0
    #endif
    """
    int FS_OPENMP

cdef extern from "rows.h":
    int FS_VEC_BYTES
    int FS_NARROW_BYTES
    int fs_fail_scratch  # tests: every scratch allocation fails
    void fs_flag_scratch_failure() nogil
    int fs_take_scratch_failure() nogil
    void *fs_scratch_malloc(size_t size) nogil

# Built without OpenMP (FASTSOFTMAX_NO_OPENMP=1) the prange loops run serially.
def _usable_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


max_threads = _usable_cores() if FS_OPENMP else 1
openmp = bool(FS_OPENMP)
VECTOR_BYTES = FS_VEC_BYTES  # the short-row vector width this build was compiled for

# What setup.py compiled this module for and with (its -D macros), for fs.show_config().
cdef extern from *:
    const char *FS_ISA_LEVEL
    const char *FS_BUILD_FLAGS
    const char *FS_CYTHON_VERSION
    const char *FS_COMPILER_VERSION "__VERSION__"

BUILD = {"isa": FS_ISA_LEVEL.decode(), "flags": FS_BUILD_FLAGS.decode(),
         "cython": FS_CYTHON_VERSION.decode(), "compiler": FS_COMPILER_VERSION.decode()}

ctypedef fused real:
    float
    double

# The kernels of issue 18 also take 16-bit arrays, as the bits: bfloat16 as uint16,
# float16 as int16 (fastsoftmax/_dtypes.py); they compute in float32. Their class weights
# are float32. Short rows (n < SMALL_C) of a 16-bit array: narrow ones in columns
# (_narrow), the backward passes' widened per vector (_short_backward), the others on a
# float copy (_lowp_scratch).
ctypedef fused anyreal:
    float
    double
    uint16_t
    int16_t

cdef int _threads = max_threads

# Below SMALL_C classes a task takes a block of rows (BLOCK_ELEMENTS elements, so that
# the block stays in L1) and handles each row as a few masked vectors (rows.h). With
# AVX-512, blocks vs rows at C = 100 (float32, 2 threads, python -m bench.ab): logsumexp
# 0.58 vs 0.92 ns/elem, cross_entropy 0.61 vs 0.93, but softmax and CE + grad about
# 1.1x slower; at C = 127 CE + grad 1.01 vs 1.23. With AVX2 the row kernels are faster
# from C = 64 (C = 100 CE + grad 1.1 rows vs 2.1 blocks, a -march=haswell build).
SMALL_C = 128 if FS_VEC_BYTES == 64 else 64
cdef Py_ssize_t BLOCK_ELEMENTS = 4096


def _row_chunks(Py_ssize_t rows, Py_ssize_t n):
    """For tests: the chunks each row is split into (1: whole rows), as in
    fastsoftmax._numba._split.row_chunks."""
    cdef Py_ssize_t size = fs_chunk_length(n)
    return (n + size - 1) // size if fs_split_rows(rows, n) else 1


def set_num_threads(int n):
    """Threads for the next kernel calls (validated by fastsoftmax.set_num_threads)."""
    global _threads
    _threads = max(1, min(n, max_threads))


# ---- row functions (row_functions_typed.h): the float or double instance ----
# `threads` 0: the whole row on the calling thread (the kernel's prange runs the rows in
# parallel); > 0: the row split over that many threads, for a few long rows.

cdef inline int _split_threads(Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """Threads that split each row: 0 unless the rows are few and long (rows.h)."""
    return _threads if fs_split_rows(rows, n) else 0


cdef inline int _row_threads(int split_threads) noexcept nogil:
    """Threads of the prange over rows. With split rows it has one thread: a team of one
    is not an active OpenMP region, so the row driver's parallel loop gets every thread."""
    return 1 if split_threads else _threads


cdef inline double _weight(const real *w, int64_t j) noexcept nogil:
    """Class weight j of a weight vector that may be NULL (weight=None: all ones)."""
    return w[j] if w != NULL else 1


cdef inline void _softmax_row(const anyreal *x, anyreal *out, Py_ssize_t n,
                              int threads) noexcept nogil:
    if anyreal is float:
        fs_softmax_row_f(x, out, n, threads)
    elif anyreal is double:
        fs_softmax_row_d(x, out, n, threads)
    elif anyreal is uint16_t:
        fs_softmax_row_b(x, out, n, threads)
    else:
        fs_softmax_row_h(x, out, n, threads)


cdef inline void _log_softmax_row(const anyreal *x, anyreal *out, Py_ssize_t n,
                                  int threads) noexcept nogil:
    if anyreal is float:
        fs_log_softmax_row_f(x, out, n, threads)
    elif anyreal is double:
        fs_log_softmax_row_d(x, out, n, threads)
    elif anyreal is uint16_t:
        fs_log_softmax_row_b(x, out, n, threads)
    else:
        fs_log_softmax_row_h(x, out, n, threads)


cdef inline void _logsumexp_row(const anyreal *x, Py_ssize_t n, int threads,
                                anyreal *out) noexcept nogil:
    """*out = the row's logsumexp (16-bit: computed in float, rounded once)"""
    if anyreal is float:
        out[0] = fs_logsumexp_row_f(x, n, threads)
    elif anyreal is double:
        out[0] = fs_logsumexp_row_d(x, n, threads)
    elif anyreal is uint16_t:
        _store_value(fs_logsumexp_row_b(x, n, threads), out)
    else:
        _store_value(fs_logsumexp_row_h(x, n, threads), out)


cdef inline void _softmax_backward_row(const anyreal *y, const anyreal *dy, anyreal *out,
                                       Py_ssize_t n, int threads) noexcept nogil:
    if anyreal is float:
        fs_softmax_backward_row_f(y, dy, out, n, threads)
    elif anyreal is double:
        fs_softmax_backward_row_d(y, dy, out, n, threads)
    elif anyreal is uint16_t:
        fs_softmax_backward_row_b(y, dy, out, n, threads)
    else:
        fs_softmax_backward_row_h(y, dy, out, n, threads)


cdef inline void _log_softmax_backward_row(const anyreal *logp, const anyreal *dy,
                                           anyreal *out, Py_ssize_t n,
                                           int threads) noexcept nogil:
    if anyreal is float:
        fs_log_softmax_backward_row_f(logp, dy, out, n, threads)
    elif anyreal is double:
        fs_log_softmax_backward_row_d(logp, dy, out, n, threads)
    elif anyreal is uint16_t:
        fs_log_softmax_backward_row_b(logp, dy, out, n, threads)
    else:
        fs_log_softmax_backward_row_h(logp, dy, out, n, threads)


cdef inline double _cross_entropy_row(const anyreal *x, const int64_t *y, const anyreal *t,
                                      const void *w, double weight_sum, double smoothing,
                                      double z_loss, double softcap, double s, double s_z,
                                      Py_ssize_t n, anyreal *grad, double *z_term,
                                      int threads) noexcept nogil:
    """w: the class weights (NULL: ones), double for a double x, float32 otherwise"""
    if anyreal is float:
        return fs_cross_entropy_row_f(x, y, t, <const float *>w, weight_sum, smoothing,
                                      z_loss, softcap, s, s_z, n, grad, z_term, threads)
    elif anyreal is double:
        return fs_cross_entropy_row_d(x, y, t, <const double *>w, weight_sum, smoothing,
                                      z_loss, softcap, s, s_z, n, grad, z_term, threads)
    elif anyreal is uint16_t:
        return fs_cross_entropy_row_b(x, y, t, <const float *>w, weight_sum, smoothing,
                                      z_loss, softcap, s, s_z, n, grad, z_term, threads)
    else:
        return fs_cross_entropy_row_h(x, y, t, <const float *>w, weight_sum, smoothing,
                                      z_loss, softcap, s, s_z, n, grad, z_term, threads)


cdef inline double _entropy_row(const anyreal *x, double s, Py_ssize_t n, anyreal *grad,
                                int threads) noexcept nogil:
    if anyreal is float:
        return fs_entropy_row_f(x, s, n, grad, threads)
    elif anyreal is double:
        return fs_entropy_row_d(x, s, n, grad, threads)
    elif anyreal is uint16_t:
        return fs_entropy_row_b(x, s, n, grad, threads)
    else:
        return fs_entropy_row_h(x, s, n, grad, threads)


cdef inline void _store_value(double value, anyreal *out) noexcept nogil:
    """*out = value in out's type (16-bit: through float, rounded to nearest even)"""
    if anyreal is float or anyreal is double:
        out[0] = <anyreal>value
    elif anyreal is uint16_t:
        out[0] = fs_store_b(<float>value)
    else:
        out[0] = fs_store_h(<float>value)


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


# ---- narrow rows (narrow_typed.h): at most FS_NARROW_BYTES of the compute type (float
# for 16-bit rows), L rows at a time in columns, without scratch. 16-bit rows are widened
# as they are loaded and rounded as they are stored; they ran the float kernel on a float
# copy of the block before. bench.ab, 1677721 x 10, 2 threads, avx512, time new / old:
# bfloat16 softmax 0.82, CE + grad 0.84 (in place 0.93), probability targets 0.73,
# entropy + grad 0.81; float16 0.73-0.82 (in place 1.00); float16 at C = 24 0.65-0.70.
# Forced avx2 mixed (bfloat16 CE + grad 0.80, softmax 1.07, logsumexp 1.23): kept for
# the one code path; both stay 1.1-1.4x the float32 time there.

cdef inline bint _narrow(const anyreal *like, Py_ssize_t n) noexcept nogil:
    """whether rows of n classes of like's type run in columns"""
    if anyreal is double:
        return n <= <Py_ssize_t>(FS_NARROW_BYTES // sizeof(double))
    else:
        return n <= <Py_ssize_t>(FS_NARROW_BYTES // sizeof(float))


cdef void _narrow_softmax_rows(const anyreal *x, Py_ssize_t rows, Py_ssize_t n, int op,
                               anyreal *out) noexcept nogil:
    """_softmax_family_block's op of narrow rows"""
    if anyreal is float:
        fs_narrow_softmax_rows_f(x, rows, n, op, out)
    elif anyreal is double:
        fs_narrow_softmax_rows_d(x, rows, n, op, out)
    elif anyreal is uint16_t:
        fs_narrow_softmax_rows_b(x, rows, n, op, out)
    else:
        fs_narrow_softmax_rows_h(x, rows, n, op, out)


cdef void _narrow_jsd_rows(const anyreal *s, const anyreal *t, Py_ssize_t rows, Py_ssize_t n,
                           double beta, double inv_t, double scale, const double *row_scale,
                           double *row_loss, anyreal *grad) noexcept nogil:
    """jsd_logits of narrow rows (beta 0 and 1: the forward and reverse KL). Against the
    padded rows (_jsd_padded_rows), bench.ab, 2 threads, avx512, time new / old: float32
    C = 10 0.14 (with grad 0.18, beta = 0 0.17), C = 20 0.25-0.29; bfloat16 C = 10
    0.11-0.13."""
    if anyreal is float:
        fs_narrow_jsd_rows_f(s, t, rows, n, beta, inv_t, scale, row_scale, row_loss, grad)
    elif anyreal is double:
        fs_narrow_jsd_rows_d(s, t, rows, n, beta, inv_t, scale, row_scale, row_loss, grad)
    elif anyreal is uint16_t:
        fs_narrow_jsd_rows_b(s, t, rows, n, beta, inv_t, scale, row_scale, row_loss, grad)
    else:
        fs_narrow_jsd_rows_h(s, t, rows, n, beta, inv_t, scale, row_scale, row_loss, grad)


cdef void _narrow_cross_entropy_rows(const anyreal *x, const int64_t *y, const anyreal *t,
                                     const void *weight, const fs_ce_scalars *o,
                                     const double *row_scale, Py_ssize_t rows, Py_ssize_t n,
                                     double *row_loss, double *row_z_loss,
                                     anyreal *grad) noexcept nogil:
    """_cross_entropy_block of narrow rows (weight: _weights)"""
    if anyreal is float:
        fs_narrow_cross_entropy_rows_f(x, y, t, <const float *>weight, o, row_scale, rows, n,
                                       row_loss, row_z_loss, grad)
    elif anyreal is double:
        fs_narrow_cross_entropy_rows_d(x, y, t, <const double *>weight, o, row_scale, rows, n,
                                       row_loss, row_z_loss, grad)
    elif anyreal is uint16_t:
        fs_narrow_cross_entropy_rows_b(x, y, t, <const float *>weight, o, row_scale, rows, n,
                                       row_loss, row_z_loss, grad)
    else:
        fs_narrow_cross_entropy_rows_h(x, y, t, <const float *>weight, o, row_scale, rows, n,
                                       row_loss, row_z_loss, grad)


cdef void _narrow_entropy_rows(const anyreal *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                               const double *row_scale, double *row_loss, anyreal *h,
                               anyreal *grad) noexcept nogil:
    """_entropy_block of narrow rows"""
    if anyreal is float:
        fs_narrow_entropy_rows_f(x, rows, n, scale, row_scale, row_loss, h, grad)
    elif anyreal is double:
        fs_narrow_entropy_rows_d(x, rows, n, scale, row_scale, row_loss, h, grad)
    elif anyreal is uint16_t:
        fs_narrow_entropy_rows_b(x, rows, n, scale, row_scale, row_loss, h, grad)
    else:
        fs_narrow_entropy_rows_h(x, rows, n, scale, row_scale, row_loss, h, grad)


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


def _test_fail_scratch_allocations(bint fail):
    """For tests only: make every block's scratch allocation fail (True) or not."""
    global fs_fail_scratch
    fs_fail_scratch = fail


cdef Scratch _scratch(Py_ssize_t rows, Py_ssize_t n, size_t item) noexcept nogil:
    cdef Scratch s
    s.e = malloc(rows * n * item) if not fs_fail_scratch else NULL
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
    """op 0: softmax, 1: log_softmax (out rows x n), 2: logsumexp (out rows), of rows wider
    than narrow ones (_narrow_softmax_rows)"""
    cdef Scratch s = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> s.e  # exp(x - m); a softmax row is then written once
    cdef real *m = <real *> s.m
    cdef Py_ssize_t r
    if e == NULL:  # no scratch: flagged, raised after the parallel loop
        return
    _exp_rows(x, rows, n, NULL, NULL, e, m, s.log_sums, s.inv_sums)
    for r in range(rows):
        if op == 0:
            _short_rescale(e + r * n, <real>s.inv_sums[r], 0, NULL, 0, 0, out + r * n, n)
        elif op == 1:
            _short_shift(x + r * n, m[r], <real>s.log_sums[r], out + r * n, n)
        elif isfinite(m[r]):
            out[r] = <real>(m[r] + s.log_sums[r])
        elif real is float:
            out[r] = fs_nonfinite_logsumexp_f(x + r * n, n, m[r])
        else:
            out[r] = fs_nonfinite_logsumexp_d(x + r * n, n, m[r])
    _release(s)


# ---- short rows of a 16-bit array wider than narrow: the float block kernels on a float
# copy ----
# A block of 16-bit rows is converted to float32 scratch, run through the float block
# kernel, and its output converted back (rounded once). Against the row functions
# (each short row a row of its own; 16777 x 10, kernel, 1 thread, avx512, load 3-4):
# softmax bf16 8.5 -> 0.72 ns/elem, CE + grad bf16 35 -> 0.91 (float32 0.64, 0.85).

cdef inline void _load_rows(const anyreal *x, float *out, Py_ssize_t n) noexcept nogil:
    if anyreal is uint16_t:
        fs_load_array_b(x, out, n)
    elif anyreal is int16_t:
        fs_load_array_h(x, out, n)


cdef inline void _store_rows(const float *x, anyreal *out, Py_ssize_t n) noexcept nogil:
    if anyreal is uint16_t:
        fs_store_array_b(x, out, n)
    elif anyreal is int16_t:
        fs_store_array_h(x, out, n)


def _float16_to_float32(const int16_t[::1] x, float[::1] out):
    """For tests only: out = the float16 bits x as float32, by this ISA level's code."""
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements, x {x.shape[0]}; give them one length")
    if x.shape[0]:
        fs_load_array_h(&x[0], &out[0], x.shape[0])


def _float32_to_float16(const float[::1] x, int16_t[::1] out):
    """For tests only: out = the float16 bits of x, by this ISA level's code."""
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements, x {x.shape[0]}; give them one length")
    if x.shape[0]:
        fs_store_array_h(&x[0], &out[0], x.shape[0])


cdef float *_lowp_scratch(Py_ssize_t count) noexcept nogil:
    """count floats, or NULL (flagged: raised after the parallel loop)"""
    return <float *> fs_scratch_malloc(count * sizeof(float))


cdef void _lowp_softmax_family_block(const anyreal *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                     anyreal *out) noexcept nogil:
    """_softmax_family_block of 16-bit rows. softmax in place on the float copy (bench.ab,
    bfloat16, C = 10, 2 threads: 0.95 of the time into a second buffer); log_softmax not
    (1.48: its shift reads each row just after the masked store of the row before)."""
    cdef Py_ssize_t size = rows * n, out_size = rows if op == 2 else size
    cdef float *xf = _lowp_scratch(size if op == 0 else size + out_size)
    cdef float *out_f = xf if op == 0 else xf + size
    if xf == NULL:
        return
    _load_rows(x, xf, size)
    _softmax_family_block(<const float *>xf, rows, n, op, out_f)
    _store_rows(out_f, out, out_size)
    free(xf)


cdef void _softmax_family_small(const anyreal[:, ::1] x, anyreal *out, int op,
                                Py_ssize_t out_row) noexcept nogil:
    cdef Py_ssize_t b, lo, n = x.shape[1], rows = _block_rows(n)
    cdef Py_ssize_t n_blocks = (x.shape[0] + rows - 1) // rows
    for b in prange(n_blocks, num_threads=_threads):
        lo = b * rows
        if _narrow(&x[0, 0], n):
            _narrow_softmax_rows(&x[lo, 0], min(rows, x.shape[0] - lo), n, op,
                                 out + lo * out_row)
        elif anyreal is float or anyreal is double:
            _softmax_family_block(&x[lo, 0], min(rows, x.shape[0] - lo), n, op,
                                  out + lo * out_row)
        else:
            _lowp_softmax_family_block(&x[lo, 0], min(rows, x.shape[0] - lo), n, op,
                                       out + lo * out_row)


cdef void _cross_entropy_block(const real *x, const int64_t *y, const real *t,
                               const real *weight, double weight_sum, int64_t ignore_index,
                               double smoothing, double z_loss, double scale, double z_scale,
                               const double *row_scale, Py_ssize_t rows, Py_ssize_t n,
                               double *row_loss, double *row_z_loss,
                               real *grad) noexcept nogil:
    """Cross-entropy of the rows of one block against the index targets y or, with y
    NULL, the probability rows t: the formulas of fs_cross_entropy_row, whose target
    terms T (total_wt) and sum(w t' (x - m)) (shifted_wt) an index target gets by
    lookup. row_z_loss (if not NULL) gets each row's z-loss. grad (NULL: loss only) may
    be x itself. Rows wider than narrow ones (narrow: _narrow_cross_entropy_rows)."""
    cdef Scratch sc = _scratch(rows, n, sizeof(real))
    cdef real *e = <real *> sc.e  # exp(x - m); the gradient row is then written once
    cdef real *m = <real *> sc.m
    cdef double *total_wt = sc.a
    cdef double *shifted_wt = sc.b  # an index target: first sum(w (x - m)), if smoothing
    cdef double keep = 1.0 - smoothing, eps_c = smoothing / n, w_y, s, lse, exp_scale
    cdef int64_t y_r
    cdef Py_ssize_t r
    if e == NULL:  # no scratch: flagged, raised after the parallel loop
        return
    if y != NULL:
        _exp_rows(x, rows, n, weight, shifted_wt if smoothing != 0 else NULL, e, m,
                  sc.log_sums, sc.inv_sums)
        # All target logits are read before the first gradient row is written: with
        # grad = x, a load after the masked store of the row before it (same cache line)
        # waited for that store (30% of the C = 10 CE + grad loop in perf). An ignored row
        # reads its first logit (no branch in the loop); its loss is set to 0 below.
        for r in range(rows):
            y_r = y[r] if y[r] != ignore_index else 0
            w_y = _weight(weight, y_r)
            total_wt[r] = keep * w_y + eps_c * weight_sum
            shifted_wt[r] = (keep * w_y * (x[r * n + y_r] - m[r])
                             + (eps_c * shifted_wt[r] if smoothing != 0 else 0))
    else:
        _exp_rows(x, rows, n, NULL, NULL, e, m, sc.log_sums, sc.inv_sums)
        for r in range(rows):
            _short_prob_sums(x + r * n, m[r], t + r * n, weight, n, <real>keep, <real>eps_c,
                             &total_wt[r], &shifted_wt[r])
    for r in range(rows):
        if y != NULL and y[r] == ignore_index:
            row_loss[r] = 0
            if row_z_loss != NULL:
                row_z_loss[r] = 0
            if grad != NULL:
                memset(grad + r * n, 0, n * sizeof(real))
            continue
        row_loss[r] = total_wt[r] * sc.log_sums[r] - shifted_wt[r]
        lse = m[r] + sc.log_sums[r]
        if row_z_loss != NULL:
            row_z_loss[r] = z_loss * lse * lse
        if grad == NULL:
            continue
        s = scale * row_scale[r] if row_scale != NULL else scale
        exp_scale = s * total_wt[r]
        if z_loss != 0:  # d(lse**2)/dx = 2 lse p
            exp_scale += 2 * z_loss * lse * (z_scale * row_scale[r] if row_scale != NULL
                                             else z_scale)
        if y != NULL:
            # without smoothing f = s * eps_c = 0: the weights are not read (NULL)
            _short_rescale(e + r * n, <real>(exp_scale * sc.inv_sums[r]),
                           <real>(s * eps_c), weight if smoothing != 0 else NULL, y[r],
                           <real>(s * keep * _weight(weight, y[r])), grad + r * n, n)
        else:
            _short_prob_rescale(e + r * n, t + r * n, weight,
                                <real>(exp_scale * sc.inv_sums[r]), <real>s,
                                <real>keep, <real>eps_c, grad + r * n, n)
    _release(sc)


def softmax(const anyreal[:, ::1] x, anyreal[:, ::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef int split = _split_threads(x.shape[0], n)
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0, 0], 0, n)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        _softmax_row(&x[i, 0], &out[i, 0], n, split)
    _raise_if_scratch_failed()  # a 16-bit row's kept exponentials (fs_kept_row)


def log_softmax(const anyreal[:, ::1] x, anyreal[:, ::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef int split = _split_threads(x.shape[0], n)
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0, 0], 1, n)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        _log_softmax_row(&x[i, 0], &out[i, 0], n, split)


def logsumexp(const anyreal[:, ::1] x, anyreal[::1] out):
    cdef Py_ssize_t i, n = x.shape[1]
    cdef int split = _split_threads(x.shape[0], n)
    if n < SMALL_C:
        if x.shape[0]:
            with nogil:
                _softmax_family_small(x, &out[0], 2, 1)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        _logsumexp_row(&x[i, 0], n, split, &out[i])


# Below SMALL_C classes the backward kernels take short rows as masked vectors too, a
# block of rows per task (fs_short_backward_rows); the row helpers ran them in their
# scalar epilogues (C = 10, float32, 2 threads, kernel: softmax_backward 3.21 -> 1.04
# ns/elem, log_softmax_backward 4.79 -> 1.66).

cdef void _short_backward_rows(const anyreal *y, const anyreal *dy, Py_ssize_t rows,
                               Py_ssize_t n, int log, anyreal *out) noexcept nogil:
    if anyreal is float:
        fs_short_backward_rows_f(y, dy, rows, n, log, out)
    elif anyreal is double:
        fs_short_backward_rows_d(y, dy, rows, n, log, out)
    elif anyreal is uint16_t:
        fs_short_backward_rows_b(y, dy, rows, n, log, out)
    else:
        fs_short_backward_rows_h(y, dy, rows, n, log, out)


cdef void _short_backward(const anyreal[:, ::1] y, const anyreal[:, ::1] dy,
                          anyreal[:, ::1] out, int log) noexcept:
    """softmax (log 0) or log_softmax (log 1, y is logp) backward of rows of fewer than
    SMALL_C classes"""
    cdef Py_ssize_t b, lo, n = y.shape[1], rows = _block_rows(n)
    for b in prange((y.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
        lo = b * rows
        _short_backward_rows(&y[lo, 0], &dy[lo, 0], min(rows, y.shape[0] - lo), n, log,
                             &out[lo, 0])


def softmax_backward(const anyreal[:, ::1] y, const anyreal[:, ::1] dy, anyreal[:, ::1] out):
    cdef Py_ssize_t i, n = y.shape[1]
    cdef int split = _split_threads(y.shape[0], n)
    if n < SMALL_C:
        _short_backward(y, dy, out, 0)
        return
    for i in prange(y.shape[0], nogil=True, num_threads=_row_threads(split)):
        _softmax_backward_row(&y[i, 0], &dy[i, 0], &out[i, 0], n, split)


def log_softmax_backward(const anyreal[:, ::1] logp, const anyreal[:, ::1] dy,
                         anyreal[:, ::1] out):
    cdef Py_ssize_t i, n = logp.shape[1]
    cdef int split = _split_threads(logp.shape[0], n)
    if n < SMALL_C:
        _short_backward(logp, dy, out, 1)
        return
    for i in prange(logp.shape[0], nogil=True, num_threads=_row_threads(split)):
        _log_softmax_backward_row(&logp[i, 0], &dy[i, 0], &out[i, 0], n, split)


cdef void _any_cross_entropy_block(const anyreal *x, const int64_t *y, const anyreal *t,
                                   const void *weight, double weight_sum,
                                   int64_t ignore_index, double smoothing, double z_loss,
                                   double scale, double z_scale, const double *row_scale,
                                   Py_ssize_t rows, Py_ssize_t n, double *row_loss,
                                   double *row_z_loss, anyreal *grad) noexcept nogil:
    """_cross_entropy_block, of narrow rows (in columns) and of 16-bit rows too (wider ones
    on a float copy; weight: _weights)"""
    cdef float *xf
    cdef Py_ssize_t size = rows * n
    cdef fs_ce_scalars scalars
    if _narrow(x, n):
        scalars.weight_sum = weight_sum
        scalars.smoothing = smoothing
        scalars.z_loss = z_loss
        scalars.scale = scale
        scalars.z_scale = z_scale
        scalars.ignore_index = ignore_index
        _narrow_cross_entropy_rows(x, y, t, weight, &scalars, row_scale, rows, n, row_loss,
                                   row_z_loss, grad)
    elif anyreal is float or anyreal is double:
        _cross_entropy_block(x, y, t, <const anyreal *>weight, weight_sum, ignore_index,
                             smoothing, z_loss, scale, z_scale, row_scale, rows, n, row_loss,
                             row_z_loss, grad)
    else:
        # x[, t]; the gradient in place on the copy of x (bench.ab, bfloat16, 2 threads:
        # CE + grad 0.97 at C = 10, 0.94 at C = 100 of the time into a second buffer)
        xf = _lowp_scratch(size * (2 if t != NULL else 1))
        if xf == NULL:
            return
        _load_rows(x, xf, size)
        if t != NULL:
            _load_rows(t, xf + size, size)
        _cross_entropy_block(<const float *>xf, y, <const float *>xf + size if t != NULL else NULL,
                             <const float *>weight, weight_sum, ignore_index, smoothing, z_loss,
                             scale, z_scale, row_scale, rows, n, row_loss, row_z_loss,
                             xf if grad != NULL else NULL)
        if grad != NULL:
            _store_rows(xf, grad, size)
        free(xf)


cdef const void *_weights(anyreal *like, weight) except? NULL:
    """The class weights' data (NULL for None): double for a double x, float32 for the
    others (the caller's `weight` keeps the data alive); a weight array of another type
    raises ValueError (from the memoryview)."""
    cdef const float[::1] wf
    cdef const double[::1] wd
    if weight is None:
        return NULL
    if anyreal is double:
        wd = weight
        return &wd[0]
    else:
        wf = weight
        return &wf[0]


def cross_entropy_index(const anyreal[:, ::1] x, const int64_t[::1] target,
                        weight, double weight_sum, int64_t ignore_index,
                        double smoothing, double z_loss, softcap, double scale,
                        double z_scale, const double[::1] row_scale, double[::1] row_loss,
                        double[::1] row_z_loss, anyreal[:, ::1] grad):
    """Per-row loss, z-loss (when row_z_loss is not empty) and, when grad is not None, the
    gradient; formulas in _numba. weight=None: every class weighs 1 (a weight array: x's
    type, float32 for a 16-bit x); softcap=None: no capping."""
    cdef const void *w = _weights(<anyreal *>NULL, weight)
    cdef double cap = 0 if softcap is None else softcap
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef bint want_z = row_z_loss.shape[0] > 0
    cdef int split = _split_threads(x.shape[0], n)
    cdef Py_ssize_t b, lo, rows = _block_rows(n)
    # The block functions have no soft-capping: capped short rows run the row functions.
    if n < SMALL_C and cap == 0:
        for b in prange((x.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _any_cross_entropy_block(&x[lo, 0], &target[lo], NULL, w, weight_sum,
                                     ignore_index, smoothing, z_loss, scale, z_scale,
                                     &row_scale[lo] if per_row else NULL,
                                     min(rows, x.shape[0] - lo), n, &row_loss[lo],
                                     &row_z_loss[lo] if want_z else NULL,
                                     &grad[lo, 0] if want_grad else NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        if target[i] == ignore_index:
            row_loss[i] = 0
            if want_z:
                row_z_loss[i] = 0
            if want_grad:
                memset(&grad[i, 0], 0, n * sizeof(anyreal))
        else:
            row_loss[i] = _cross_entropy_row(&x[i, 0], &target[i], NULL, w, weight_sum,
                                             smoothing, z_loss, cap,
                                             scale * row_scale[i] if per_row else scale,
                                             z_scale * row_scale[i] if per_row else z_scale, n,
                                             &grad[i, 0] if want_grad else NULL,
                                             &row_z_loss[i] if want_z else NULL, split)
    _raise_if_scratch_failed()  # a 16-bit row's kept exponentials (fs_kept_row)


def cross_entropy_prob(const anyreal[:, ::1] x, const anyreal[:, ::1] target, weight,
                       double smoothing, double z_loss, softcap, double scale, double z_scale,
                       const double[::1] row_scale, double[::1] row_loss,
                       double[::1] row_z_loss, anyreal[:, ::1] grad):
    """cross_entropy_index for probability targets (of x's type)."""
    cdef const void *w = _weights(<anyreal *>NULL, weight)
    cdef double cap = 0 if softcap is None else softcap
    cdef Py_ssize_t i, n = x.shape[1]
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef bint want_z = row_z_loss.shape[0] > 0
    cdef int split = _split_threads(x.shape[0], n)
    cdef Py_ssize_t b, lo, rows = _block_rows(n)
    if n < SMALL_C and cap == 0:
        for b in prange((x.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _any_cross_entropy_block(&x[lo, 0], NULL, &target[lo, 0], w, 0, 0, smoothing,
                                     z_loss, scale, z_scale,
                                     &row_scale[lo] if per_row else NULL,
                                     min(rows, x.shape[0] - lo), n, &row_loss[lo],
                                     &row_z_loss[lo] if want_z else NULL,
                                     &grad[lo, 0] if want_grad else NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(x.shape[0], nogil=True, num_threads=_row_threads(split)):
        row_loss[i] = _cross_entropy_row(&x[i, 0], NULL, &target[i, 0], w, 0, smoothing, z_loss,
                                         cap,
                                         scale * row_scale[i] if per_row else scale,
                                         z_scale * row_scale[i] if per_row else z_scale, n,
                                         &grad[i, 0] if want_grad else NULL,
                                         &row_z_loss[i] if want_z else NULL, split)
    _raise_if_scratch_failed()  # a 16-bit row's kept exponentials (fs_kept_row)


# ---- entropy: formulas in fastsoftmax/_numba/_entropy.py ----

cdef void _entropy_block(const real *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                         const double *row_scale, double *row_loss, real *h,
                         real *grad) noexcept nogil:
    """Entropy (into row_loss and/or h, either may be NULL) and, with grad (not NULL), the
    scaled gradient of the rows of one block; grad may be x itself. Rows wider than narrow
    ones (narrow: _narrow_entropy_rows)."""
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


cdef void _any_entropy_block(const anyreal *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                             const double *row_scale, double *row_loss, anyreal *h,
                             anyreal *grad) noexcept nogil:
    """_entropy_block, of narrow rows (in columns) and of 16-bit rows too (wider ones on a
    float copy)"""
    cdef float *xf
    cdef Py_ssize_t size = rows * n
    if _narrow(x, n):
        _narrow_entropy_rows(x, rows, n, scale, row_scale, row_loss, h, grad)
    elif anyreal is float or anyreal is double:
        _entropy_block(x, rows, n, scale, row_scale, row_loss, h, grad)
    else:
        xf = _lowp_scratch(size * (2 if grad != NULL else 1) + (rows if h != NULL else 0))
        if xf == NULL:
            return
        _load_rows(x, xf, size)
        _entropy_block(<const float *>xf, rows, n, scale, row_scale, row_loss,
                       xf + size if h != NULL else NULL, xf + size if grad != NULL else NULL)
        _store_rows(xf + size, grad if grad != NULL else h, size if grad != NULL else rows)
        free(xf)


def entropy(const anyreal[:, ::1] logits, anyreal[::1] out):
    cdef Py_ssize_t i, b, lo, n = logits.shape[1], rows = _block_rows(n)
    cdef int split = _split_threads(logits.shape[0], n)
    if n < SMALL_C:
        for b in prange((logits.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _any_entropy_block(&logits[lo, 0], min(rows, logits.shape[0] - lo), n, 1.0, NULL,
                               NULL, &out[lo], NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(logits.shape[0], nogil=True, num_threads=_row_threads(split)):
        _store_value(_entropy_row(&logits[i, 0], 1.0, n, <anyreal *>NULL, split), &out[i])


def entropy_with_grad(const anyreal[:, ::1] logits, double scale, const double[::1] row_scale,
                      double[::1] row_loss, anyreal[:, ::1] grad):
    cdef Py_ssize_t i, b, lo, n = logits.shape[1], rows = _block_rows(n)
    cdef bint per_row = row_scale.shape[0] > 0
    cdef int split = _split_threads(logits.shape[0], n)
    if n < SMALL_C:
        for b in prange((logits.shape[0] + rows - 1) // rows, nogil=True, num_threads=_threads):
            lo = b * rows
            _any_entropy_block(&logits[lo, 0], min(rows, logits.shape[0] - lo), n, scale,
                               &row_scale[lo] if per_row else NULL, &row_loss[lo], NULL,
                               &grad[lo, 0])
        _raise_if_scratch_failed()
        return
    for i in prange(logits.shape[0], nogil=True, num_threads=_row_threads(split)):
        row_loss[i] = _entropy_row(&logits[i, 0], scale * row_scale[i] if per_row else scale,
                                   n, &grad[i, 0], split)
    _raise_if_scratch_failed()  # a 16-bit row's kept exponentials (fs_kept_row)


# ---- KL and JSD between two sets of logits: formulas in fastsoftmax/_numba/_jsd.py ----

cdef inline double _jsd_row(const anyreal *s, const anyreal *t, double beta, double inv_t,
                            double scale, Py_ssize_t n, anyreal *grad,
                            int threads) noexcept nogil:
    if anyreal is float:
        return fs_jsd_row_f(s, t, beta, inv_t, scale, n, grad, threads)
    elif anyreal is double:
        return fs_jsd_row_d(s, t, beta, inv_t, scale, n, grad, threads)
    elif anyreal is uint16_t:
        return fs_jsd_row_b(s, t, beta, inv_t, scale, n, grad, threads)
    else:
        return fs_jsd_row_h(s, t, beta, inv_t, scale, n, grad, threads)


cdef Py_ssize_t _padded_width(Py_ssize_t n, size_t item) noexcept nogil:
    """n rounded up to a whole number of vectors of `item`-byte elements"""
    cdef Py_ssize_t lanes = FS_VEC_BYTES // item
    return (n + lanes - 1) // lanes * lanes


cdef inline void _pad_row(const anyreal *x, Py_ssize_t n, Py_ssize_t width,
                          void *out) noexcept nogil:
    """x into out (double for a double row, else float) and -inf after it up to width"""
    cdef Py_ssize_t j
    if anyreal is double:
        fs_short_pad_d(x, n, -INFINITY, <double *>out, width)
    elif anyreal is float:
        fs_short_pad_f(x, n, -INFINITY, <float *>out, width)
    else:
        _load_rows(x, <float *>out, n)
        for j in range(n, width):
            (<float *>out)[j] = -INFINITY


cdef void _jsd_padded_rows(const anyreal *s, const anyreal *t, Py_ssize_t rows,
                           Py_ssize_t n, double beta, double inv_t, double scale,
                           const double *row_scale, double *row_loss,
                           anyreal *grad) noexcept nogil:
    """The JSD of short rows wider than narrow (narrow: _narrow_jsd_rows), each run by the
    row function on a copy padded with -inf to a whole number of vectors (a float copy
    for 16-bit): its vector loops then have no
    scalar remainder loop, where a row of 10 ran entirely in it. A padded element adds 0
    to every sum and term (its exp is 0) and gets gradient 0, so the padding changes
    nothing but the order of the sums. float32, 2 threads, kernel, time against the row
    function on the rows themselves (bench.ab): C = 10 jsd_logits 0.28, with grad 0.55
    (beta = 0: 0.60); C = 100 0.75, 0.88 (1.02)."""
    cdef size_t item = sizeof(double) if anyreal is double else sizeof(float)
    cdef Py_ssize_t r, width = _padded_width(n, item)
    cdef char *copy = <char *> fs_scratch_malloc(3 * width * item)  # s, t, the gradient
    cdef char *copy_t = copy + width * item
    cdef char *copy_grad = copy + 2 * width * item
    cdef double row_scaled
    if copy == NULL:  # flagged: raised after the parallel loop
        return
    for r in range(rows):
        _pad_row(s + r * n, n, width, copy)
        _pad_row(t + r * n, n, width, copy_t)
        row_scaled = scale * row_scale[r] if row_scale != NULL else scale
        if anyreal is double:
            row_loss[r] = fs_jsd_row_d(<double *>copy, <double *>copy_t, beta, inv_t,
                                       row_scaled, width,
                                       <double *>copy_grad if grad != NULL else NULL, 0)
        else:
            row_loss[r] = fs_jsd_row_f(<float *>copy, <float *>copy_t, beta, inv_t,
                                       row_scaled, width,
                                       <float *>copy_grad if grad != NULL else NULL, 0)
        if grad == NULL:
            continue
        if anyreal is double:
            fs_short_unpad_d(<double *>copy_grad, n, grad + r * n)
        elif anyreal is float:
            fs_short_unpad_f(<float *>copy_grad, n, grad + r * n)
        else:
            _store_rows(<float *>copy_grad, grad + r * n, n)
    free(copy)


def jsd_logits(const anyreal[:, ::1] student, const anyreal[:, ::1] teacher, double beta,
               double inv_temperature, double scale, const double[::1] row_scale,
               double[::1] row_loss, anyreal[:, ::1] grad):
    """Per-row generalised JSD (beta 0 and 1: the forward and reverse KL) and, when grad is
    not None (and neither input), the scaled gradient for the student."""
    cdef Py_ssize_t i, b, lo, n = student.shape[1], rows = _block_rows(n)
    cdef bint want_grad = grad is not None, per_row = row_scale.shape[0] > 0
    cdef int split = _split_threads(student.shape[0], n)
    if n < SMALL_C:
        for b in prange((student.shape[0] + rows - 1) // rows, nogil=True,
                        num_threads=_threads):
            lo = b * rows
            if _narrow(<const anyreal *>NULL, n):
                _narrow_jsd_rows(&student[lo, 0], &teacher[lo, 0],
                                 min(rows, student.shape[0] - lo), n, beta, inv_temperature,
                                 scale, &row_scale[lo] if per_row else NULL, &row_loss[lo],
                                 &grad[lo, 0] if want_grad else NULL)
            else:
                _jsd_padded_rows(&student[lo, 0], &teacher[lo, 0],
                                 min(rows, student.shape[0] - lo), n, beta, inv_temperature,
                                 scale, &row_scale[lo] if per_row else NULL, &row_loss[lo],
                                 &grad[lo, 0] if want_grad else NULL)
        _raise_if_scratch_failed()
        return
    for i in prange(student.shape[0], nogil=True, num_threads=_row_threads(split)):
        row_loss[i] = _jsd_row(&student[i, 0], &teacher[i, 0], beta, inv_temperature,
                               scale * row_scale[i] if per_row else scale, n,
                               &grad[i, 0] if want_grad else NULL, split)
    _raise_if_scratch_failed()  # a 16-bit row's kept values (fs_kept_row)


include "elementwise.pxi"
