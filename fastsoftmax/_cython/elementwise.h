/* Elementwise losses of the Cython backend: KL divergence, binary cross-entropy with
 * logits, sigmoid and log-sigmoid, on flat arrays (any shape, no rows).
 *
 * The same formulas as fastsoftmax/_numba/_elementwise.py. Each loop is written once, in
 * elementwise_typed.h, which this header includes three times: for float (suffix f),
 * double (d), and bfloat16 storage (b), computed in float (issue 18: losses and weights
 * float, every output element rounded once, as in rows.h's 16-bit instances); float16
 * (h) runs the float loops on widened blocks (below). An element is computed in its compute type, so that float32 runs at
 * twice the vector lanes of double (float32, two threads, bench.ab: kl_div + grad 2.60 -> 1.26
 * ns/elem at 16777x1000, BCE + grad 4.50 -> 1.92), and the losses are summed in that type
 * over blocks of FS_BLOCK elements, the block sums in double. exp is rows.h's; log is rows.h's for
 * double and fs_log_normal_f for float.
 *
 * A "stream" is a small array read periodically: element i of the flat input uses
 * stream[i % period]. Weights that broadcast over the last axis, a scalar grad_output
 * and a full-size one are all streams (the caller tiles short ones to >= 4096 elements so
 * that a segment of constant offset is long). grad_output is double in every instance.
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

/* The instances: FS_T the storage type, FS_C the compute type (and the type of the
 * losses and of the weight streams), FS_S and FS_CS their name suffixes, FS_LOAD /
 * FS_STORE the conversions between them (rows.h's); FS_EW_LOWP 1 for bfloat16 storage,
 * whose instance uses the float instance's scalar math. */
#define FS_C float
#define FS_CS f
#define FS_EW_LOWP 0
#define FS_LOAD FS_IDENTITY
#define FS_STORE FS_IDENTITY
#define FS_EW_LOG_NORMAL fs_log_normal_f
#define FS_EW_MIN_NORMAL 1.17549435e-38f
#define FS_EW_SUBNORMAL_BITS 24
#define FS_EW_SERIES_END 13
#define FS_T float
#define FS_S f
#include "elementwise_typed.h"
#undef FS_T
#undef FS_S
#undef FS_C
#undef FS_CS
#undef FS_EW_LOG_NORMAL
#undef FS_EW_MIN_NORMAL
#undef FS_EW_SUBNORMAL_BITS
#undef FS_EW_SERIES_END

#define FS_C double
#define FS_CS d
#define FS_EW_LOG_NORMAL fs_log_d
#define FS_EW_MIN_NORMAL 2.2250738585072014e-308
#define FS_EW_SUBNORMAL_BITS 54
#define FS_EW_SERIES_END 31
#define FS_T double
#define FS_S d
#include "elementwise_typed.h"
#undef FS_T
#undef FS_S
#undef FS_C
#undef FS_CS
#undef FS_EW_LOWP
#undef FS_LOAD
#undef FS_STORE
#undef FS_EW_LOG_NORMAL
#undef FS_EW_MIN_NORMAL
#undef FS_EW_SUBNORMAL_BITS
#undef FS_EW_SERIES_END

#define FS_C float
#define FS_CS f
#define FS_EW_LOWP 1
#define FS_T uint16_t
#define FS_S b
#define FS_LOAD fs_load_b
#define FS_STORE fs_store_b
#include "elementwise_typed.h"
#undef FS_T
#undef FS_S
#undef FS_LOAD
#undef FS_STORE

#undef FS_C
#undef FS_CS
#undef FS_EW_LOWP

/* float16 (suffix h): the float instance's segments on blocks of FS_BLOCK elements
 * widened to float by rows.h's fs_load_array_h (F16C / AVX-512 vector conversions, where
 * an element converted inline costs about 10 integer operations each way), each gradient
 * or output block rounded back once, as the float16 row functions do
 * (row_functions_typed.h). A loss is the blocks' sums added in double, the sum the
 * segment forms over its own blocks. FS_EW_WIDENED_LOSS is the body of a loss's entry
 * point: x and t widened block by block into xb and tb, `segment` (the float segment on
 * the block [at, at + len), its gradient into grad_b) summed, the gradient block rounded
 * back. */
#define FS_EW_WIDENED_LOSS(segment)                                                  \
    float xb[FS_BLOCK], tb[FS_BLOCK], grad_b[FS_BLOCK];                              \
    double total = 0.0;                                                              \
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {                       \
        Py_ssize_t at = i + start, len = FS_MIN(FS_BLOCK, n - start);                \
        fs_load_array_h((const int16_t *)x + at, xb, len);                           \
        fs_load_array_h((const int16_t *)t + at, tb, len);                           \
        total += (segment);                                                          \
        if (grad) fs_store_array_h(grad_b, (int16_t *)grad + at, len);               \
    }                                                                                \
    return total

static inline double fs_kl_div_at_h(const void *x, const void *t, const double *g,
                                    double scale, void *loss, void *grad, Py_ssize_t i,
                                    Py_ssize_t n, int log_target) {
    FS_EW_WIDENED_LOSS(fs_kl_div_segment_f(xb, tb, g ? g + start : NULL, scale,
                                           loss ? (float *)loss + at : NULL,
                                           grad ? grad_b : NULL, len, log_target));
}

static inline double fs_bce_at_h(const void *x, const void *t, const void *w,
                                 Py_ssize_t w_at, const void *pw, Py_ssize_t pw_at,
                                 const double *g, double scale, void *loss, void *grad,
                                 Py_ssize_t i, Py_ssize_t n) {
    FS_EW_WIDENED_LOSS(fs_bce_segment_f(xb, tb, (const float *)w + w_at + start,
                                        (const float *)pw + pw_at + start,
                                        g ? g + start : NULL, scale,
                                        loss ? (float *)loss + at : NULL,
                                        grad ? grad_b : NULL, len));
}
#undef FS_EW_WIDENED_LOSS

static inline void fs_sigmoid_at_h(const void *x, void *out, Py_ssize_t i, Py_ssize_t n,
                                   int log_sigmoid) {
    float xb[FS_BLOCK], out_b[FS_BLOCK];
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t at = i + start, len = FS_MIN(FS_BLOCK, n - start);
        fs_load_array_h((const int16_t *)x + at, xb, len);
        fs_sigmoid_segment_f(xb, out_b, len, log_sigmoid);
        fs_store_array_h(out_b, (int16_t *)out + at, len);
    }
}

/* The storage type of a kernel's arrays (the instance to call), passed by
 * elementwise.pxi. */
enum { FS_EW_FLOAT = 0, FS_EW_DOUBLE = 1, FS_EW_BFLOAT16 = 2, FS_EW_FLOAT16 = 3 };

#define FS_EW_DISPATCH(kind, name, ...)                                              \
    ((kind) == FS_EW_FLOAT ? name##_f(__VA_ARGS__)                                   \
     : (kind) == FS_EW_DOUBLE ? name##_d(__VA_ARGS__)                                \
     : (kind) == FS_EW_BFLOAT16 ? name##_b(__VA_ARGS__) : name##_h(__VA_ARGS__))

/* The entry points of elementwise.pxi: elements [i, i + n) of the flat arrays x, t, loss,
 * grad and out, the weight streams from w_at and pw_at, g already at its offset. */
static inline double fs_kl_div_segment(const void *x, const void *t, const double *g,
                                       double scale, void *loss, void *grad, Py_ssize_t i,
                                       Py_ssize_t n, int kind, int log_target) {
    return FS_EW_DISPATCH(kind, fs_kl_div_at, x, t, g, scale, loss, grad, i, n, log_target);
}

static inline double fs_bce_segment(const void *x, const void *t, const void *w,
                                    Py_ssize_t w_at, const void *pw, Py_ssize_t pw_at,
                                    const double *g, double scale, void *loss, void *grad,
                                    Py_ssize_t i, Py_ssize_t n, int kind) {
    return FS_EW_DISPATCH(kind, fs_bce_at, x, t, w, w_at, pw, pw_at, g, scale, loss, grad, i,
                          n);
}

static inline void fs_sigmoid_segment(const void *x, void *out, Py_ssize_t i, Py_ssize_t n,
                                      int kind, int log_sigmoid) {
    FS_EW_DISPATCH(kind, fs_sigmoid_at, x, out, i, n, log_sigmoid);
}

#endif
