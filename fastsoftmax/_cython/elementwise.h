/* Elementwise losses of the Cython backend: KL divergence, binary cross-entropy with
 * logits, sigmoid and log-sigmoid, on flat arrays (any shape, no rows).
 *
 * The same formulas as fastsoftmax/_numba/_elementwise.py. Each loop is written once, in
 * elementwise_typed.h, which this header includes twice: for float (suffix f) and double
 * (suffix d). An element is computed in its storage type, so that float32 runs at twice
 * the vector lanes of double (float32, two threads, bench.ab: kl_div + grad 2.60 -> 1.26
 * ns/elem at 16777x1000, BCE + grad 4.50 -> 1.92), and the losses are summed in that type
 * over blocks of FS_BLOCK elements, the block sums in double. exp is rows.h's; log is rows.h's for
 * double and fs_log_normal_f for float.
 *
 * A "stream" is a small array read periodically: element i of the flat input uses
 * stream[i % period]. Weights that broadcast over the last axis, a scalar grad_output
 * and a full-size one are all streams (the caller tiles short ones to >= 4096 elements so
 * that a segment of constant offset is long). grad_output is double in both instances.
 */
#ifndef FASTSOFTMAX_ELEMENTWISE_H
#define FASTSOFTMAX_ELEMENTWISE_H

#include "rows.h"

/* Elements per parallel task; chunk partial sums are added in chunk order, so a loss
 * does not depend on the thread count. */
#define FS_EW_CHUNK 16384

#define FS_EW_INLINE static inline __attribute__((always_inline))

/* call_with(loss, grad) with each optional output as a literal NULL where it is absent:
 * every inlined copy of a body is then a loop without a per-element test. */
#define FS_EW_OUTPUTS(call_with)                                                     \
    (loss && grad ? call_with(loss, grad) : loss ? call_with(loss, NULL)             \
     : grad ? call_with(NULL, grad) : call_with(NULL, NULL))

#define FS_T float
#define FS_S f
#define FS_EW_LOG_NORMAL fs_log_normal_f
#define FS_EW_MIN_NORMAL 1.17549435e-38f
#define FS_EW_SUBNORMAL_BITS 24
#define FS_EW_SERIES_END 9
#include "elementwise_typed.h"
#undef FS_T
#undef FS_S
#undef FS_EW_LOG_NORMAL
#undef FS_EW_MIN_NORMAL
#undef FS_EW_SUBNORMAL_BITS
#undef FS_EW_SERIES_END

#define FS_T double
#define FS_S d
#define FS_EW_LOG_NORMAL fs_log_d
#define FS_EW_MIN_NORMAL 2.2250738585072014e-308
#define FS_EW_SUBNORMAL_BITS 54
#define FS_EW_SERIES_END 23
#include "elementwise_typed.h"
#undef FS_T
#undef FS_S
#undef FS_EW_LOG_NORMAL
#undef FS_EW_MIN_NORMAL
#undef FS_EW_SUBNORMAL_BITS
#undef FS_EW_SERIES_END

/* The entry points of elementwise.pxi, for either type: `single` (a literal in each
 * fused-type specialisation there) picks the float or double instance. */
static inline double fs_kl_div_segment(const void *x, const void *t, const double *g,
                                       double scale, void *loss, void *grad, Py_ssize_t n,
                                       int single, int log_target) {
    return single ? fs_kl_div_segment_f(x, t, g, scale, loss, grad, n, log_target)
                  : fs_kl_div_segment_d(x, t, g, scale, loss, grad, n, log_target);
}

static inline double fs_bce_segment(const void *x, const void *t, const void *w,
                                    const void *pw, const double *g, double scale, void *loss,
                                    void *grad, Py_ssize_t n, int single) {
    return single ? fs_bce_segment_f(x, t, w, pw, g, scale, loss, grad, n)
                  : fs_bce_segment_d(x, t, w, pw, g, scale, loss, grad, n);
}

static inline void fs_sigmoid_segment(const void *x, void *out, Py_ssize_t n, int single,
                                      int log_sigmoid) {
    if (single) fs_sigmoid_segment_f(x, out, n, log_sigmoid);
    else fs_sigmoid_segment_d(x, out, n, log_sigmoid);
}

#endif
