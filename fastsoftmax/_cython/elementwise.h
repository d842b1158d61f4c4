/* Elementwise losses of the Cython backend: KL divergence, binary cross-entropy with
 * logits, sigmoid and log-sigmoid, on flat arrays (any shape, no rows).
 *
 * The same formulas as fastsoftmax/_numba/_elementwise.py. Each element is computed in
 * double whatever its storage type: one body serves float and double (the `single`
 * flag, a literal in every caller, is folded away by the always_inline), the per-element
 * losses are summed in double, and float32 results are rounded once. exp and log are
 * the vectorisable ones of rows.h.
 *
 * A "stream" is a small array read periodically: element i of the flat input uses
 * stream[i % period]. Weights that broadcast over the last axis, a scalar grad_output
 * and a full-size one are all streams (the caller tiles short ones to >= FS_EW_PERIOD
 * elements so that a segment of constant offset is long).
 */
#ifndef FASTSOFTMAX_ELEMENTWISE_H
#define FASTSOFTMAX_ELEMENTWISE_H

#include "rows.h"

/* rows.h's exp and log, inlined into every loop here: in the whole extension GCC's
 * inlining budget left them as scalar calls, which kept the loops scalar (kl_div + grad
 * 9.7 -> 1.3 ns/elem, BCE 26 -> 2.2, one thread, float32). */
static inline double fs_exp_core_d(double x) __attribute__((always_inline));
static inline double fs_exp_d(double x) __attribute__((always_inline));
static inline double fs_log_d(double x) __attribute__((always_inline));

/* Elements per parallel task; chunk partial sums are added in chunk order, so a loss
 * does not depend on the thread count. */
#define FS_EW_CHUNK 16384

#define FS_EW_INLINE static inline __attribute__((always_inline))

FS_EW_INLINE double fs_ew_load(const void *p, Py_ssize_t i, int single) {
    return single ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

FS_EW_INLINE void fs_ew_store(void *p, Py_ssize_t i, int single, double v) {
    if (single) ((float *)p)[i] = (float)v;
    else ((double *)p)[i] = v;
}

/* log(x) for every double: rows.h's fs_log_d takes normal numbers, so a subnormal x is
 * scaled by 2^54 first. */
FS_EW_INLINE double fs_ew_log(double x) {
    int tiny = x < 2.2250738585072014e-308;
    double y = fs_log_d(tiny ? x * 18014398509481984.0 : x);
    return tiny ? y - 54.0 * 0.6931471805599453 : y;
}

/* log(1 + z) for z in [0, 1] or NaN: log(u) z / (u - 1) with u = 1 + z rounded, which
 * cancels the rounding of u (z itself when u rounds to 1). */
FS_EW_INLINE double fs_ew_log1p(double z) {
    double u = 1.0 + z;
    return u == 1.0 ? z : fs_log_d(u) * (z / (u - 1.0));
}

/* a * v with a = 0 giving 0 even for an infinite v (the limit of the loss terms below) */
FS_EW_INLINE double fs_ew_times(double a, double v) {
    return a == 0.0 ? 0.0 : a * v;
}

/* ---- KL divergence, torch.nn.functional.kl_div's pointwise term ----
 * log_target=0: xlogy(t, t) - t x, gradient -t;  log_target=1: exp(t) (t - x), -exp(t). */
FS_EW_INLINE double fs_kl_div_body(const void *x, const void *t, const double *g,
                                   double scale, void *loss, void *grad, Py_ssize_t n,
                                   int single, int log_target) {
    double total = 0.0;
    #pragma omp simd reduction(+:total)
    for (Py_ssize_t i = 0; i < n; i++) {
        double xi = fs_ew_load(x, i, single), ti = fs_ew_load(t, i, single);
        double l, d;
        if (log_target) {
            double e = fs_exp_d(ti);
            l = e * (ti - xi);
            d = -e;
        } else {
            l = (ti == 0.0 ? 0.0 : ti * fs_ew_log(ti)) - ti * xi;
            d = -ti;
        }
        total += l;
        if (loss) fs_ew_store(loss, i, single, l);
        if (grad) fs_ew_store(grad, i, single, d * (scale * g[i]));
    }
    return total;
}

/* ---- binary cross-entropy with logits ----
 * (1 - y) softplus(x) + pw y softplus(-x), times w: torch's (1 - y) x + (1 + (pw - 1) y)
 * softplus(-x) rearranged so that every term is >= 0 for y in [0, 1], and a term with a
 * zero factor is 0 at x = +-inf (where torch's form gives inf - inf = NaN). Gradient
 * w ((1 - y) sigmoid(x) - pw y sigmoid(-x)), finite for every x. One exp, one log. */
FS_EW_INLINE double fs_bce_body(const void *x, const void *t, const void *w, const void *pw,
                                const double *g, double scale, void *loss, void *grad,
                                Py_ssize_t n, int single) {
    double total = 0.0;
    #pragma omp simd reduction(+:total)
    for (Py_ssize_t i = 0; i < n; i++) {
        double xi = fs_ew_load(x, i, single), yi = fs_ew_load(t, i, single);
        double wi = fs_ew_load(w, i, single), pwi = fs_ew_load(pw, i, single);
        double z = fs_exp_core_d(-fabs(xi));           /* exp(-|x|), NaN for NaN */
        double soft = fs_ew_log1p(z);                  /* softplus(-|x|) */
        double sp_pos = (xi > 0.0 ? xi : 0.0) + soft;  /* softplus(x) */
        double sp_neg = (xi < 0.0 ? -xi : 0.0) + soft; /* softplus(-x) */
        double neg = 1.0 - yi, pos = pwi * yi;
        double l = wi * (fs_ew_times(neg, sp_pos) + fs_ew_times(pos, sp_neg));
        total += l;
        if (loss) fs_ew_store(loss, i, single, l);
        if (grad) {
            double r = 1.0 / (1.0 + z);
            double sig = xi >= 0.0 ? r : z * r;        /* sigmoid(x) */
            double sig_neg = xi >= 0.0 ? z * r : r;    /* sigmoid(-x) */
            fs_ew_store(grad, i, single, wi * (neg * sig - pos * sig_neg) * (scale * g[i]));
        }
    }
    return total;
}

/* ---- sigmoid and log-sigmoid (log_sigmoid=1) ---- */
FS_EW_INLINE void fs_sigmoid_body(const void *x, void *out, Py_ssize_t n, int single,
                                  int log_sigmoid) {
    #pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) {
        double xi = fs_ew_load(x, i, single);
        double z = fs_exp_core_d(-fabs(xi));
        double v;
        if (log_sigmoid) {
            v = (xi < 0.0 ? xi : 0.0) - fs_ew_log1p(z);
        } else {
            double r = 1.0 / (1.0 + z);
            v = xi >= 0.0 ? r : z * r;
        }
        fs_ew_store(out, i, single, v);
    }
}

/* ---- the instances the Cython kernels call: the flags as literals, and the optional
 * outputs (loss, grad: NULL or not) as literal NULLs where absent, so that each inlined
 * copy is a plain vector loop. */
#define FS_EW_SEGMENT static inline
#define FS_EW_OUTPUTS(call_with)                                                     \
    (loss && grad ? call_with(loss, grad) : loss ? call_with(loss, NULL)             \
     : grad ? call_with(NULL, grad) : call_with(NULL, NULL))

FS_EW_SEGMENT double fs_kl_div_segment(const void *x, const void *t, const double *g,
                                       double scale, void *loss, void *grad, Py_ssize_t n,
                                       int single, int log_target) {
#define FS_KL(L, G) (single ? (log_target ? fs_kl_div_body(x, t, g, scale, L, G, n, 1, 1)    \
                                          : fs_kl_div_body(x, t, g, scale, L, G, n, 1, 0))   \
                            : (log_target ? fs_kl_div_body(x, t, g, scale, L, G, n, 0, 1)    \
                                          : fs_kl_div_body(x, t, g, scale, L, G, n, 0, 0)))
    return FS_EW_OUTPUTS(FS_KL);
#undef FS_KL
}

FS_EW_SEGMENT double fs_bce_segment(const void *x, const void *t, const void *w,
                                    const void *pw, const double *g, double scale, void *loss,
                                    void *grad, Py_ssize_t n, int single) {
#define FS_BCE(L, G) (single ? fs_bce_body(x, t, w, pw, g, scale, L, G, n, 1)  \
                             : fs_bce_body(x, t, w, pw, g, scale, L, G, n, 0))
    return FS_EW_OUTPUTS(FS_BCE);
#undef FS_BCE
}

FS_EW_SEGMENT void fs_sigmoid_segment(const void *x, void *out, Py_ssize_t n, int single,
                                      int log_sigmoid) {
    if (single) {
        if (log_sigmoid) fs_sigmoid_body(x, out, n, 1, 1); else fs_sigmoid_body(x, out, n, 1, 0);
    } else {
        if (log_sigmoid) fs_sigmoid_body(x, out, n, 0, 1); else fs_sigmoid_body(x, out, n, 0, 0);
    }
}

#endif
