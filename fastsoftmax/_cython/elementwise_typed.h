/* The typed elementwise loops of elementwise.h, written once and included there twice, with
 *   FS_T                  the element type (float, double), in which every element is computed
 *   FS_S                  the name suffix (f, d): FS_FN(fs_kl_div_segment) is fs_kl_div_segment_f
 *   FS_EW_LOG_NORMAL      log of a normal number of type FS_T
 *   FS_EW_MIN_NORMAL      the smallest normal FS_T
 *   FS_EW_SUBNORMAL_BITS  log2 of the scale that makes a subnormal FS_T normal (24, 54)
 *   FS_EW_SERIES_END      the last odd power of log1p's atanh series (9, 23: as the logs)
 * rows.h's FS_FN and FS_BLOCK, and its exp (fs_exp_f / fs_exp_d, fs_exp_core_*).
 * No include guard: each inclusion is one instance. Not to be included elsewhere. */
#ifndef FASTSOFTMAX_ELEMENTWISE_H
#error "elementwise_typed.h is included by elementwise.h only"
#endif
#if !defined(FS_T) || !defined(FS_S) || !defined(FS_EW_LOG_NORMAL) \
    || !defined(FS_EW_MIN_NORMAL) || !defined(FS_EW_SUBNORMAL_BITS) || !defined(FS_EW_SERIES_END)
#error "elementwise_typed.h needs FS_T, FS_S, FS_EW_LOG_NORMAL, FS_EW_MIN_NORMAL, FS_EW_SUBNORMAL_BITS and FS_EW_SERIES_END"
#endif

/* log(x) for every FS_T: a subnormal x is scaled by 2^FS_EW_SUBNORMAL_BITS first. */
FS_EW_INLINE FS_T FS_FN(fs_ew_log)(FS_T x) {
    int tiny = x < FS_EW_MIN_NORMAL;
    FS_T y = FS_EW_LOG_NORMAL(tiny ? x * (FS_T)(1ULL << FS_EW_SUBNORMAL_BITS) : x);
    return tiny ? y - (FS_T)(FS_EW_SUBNORMAL_BITS * 0.6931471805599453) : y;
}

/* log(1 + z) for z in [0, 1] or NaN, without forming 1 + z: 2 atanh(z / (2 + z)), or
 * above sqrt(2) - 1, ln2 + 2 atanh((z - 1) / (z + 3)), |t| <= 0.172 either way (the
 * logs' series). One division and no exponent bits or special cases, where log(1 + z)
 * z / ((1 + z) - 1) took three divisions (BCE + grad float32 1.23 -> 0.87 ns/elem, one
 * thread, in cache). The loop over the constant powers unrolls at compile time. */
FS_EW_INLINE FS_T FS_FN(fs_ew_log1p)(FS_T z) {
    int high = z > (FS_T)0.41421356237309503;
    FS_T t = (high ? z - (FS_T)1 : z) / (z + (high ? (FS_T)3 : (FS_T)2)), t2 = t * t;
    FS_T p = (FS_T)1 / FS_EW_SERIES_END;
    for (int c = FS_EW_SERIES_END - 2; c >= 3; c -= 2) p = p * t2 + (FS_T)1 / c;
    FS_T y = (FS_T)2 * t + (FS_T)2 * t * t2 * p;
    return high ? y + (FS_T)0.6931471805599453 : y;
}

/* a * v with a = 0 giving 0 even for an infinite v (the limit of the loss terms below) */
FS_EW_INLINE FS_T FS_FN(fs_ew_times)(FS_T a, FS_T v) {
    return a == (FS_T)0 ? (FS_T)0 : a * v;
}

/* The gradient factor of element i: scale * grad_output in double (the API's type),
 * rounded once to FS_T. */
FS_EW_INLINE FS_T FS_FN(fs_ew_grad_scale)(const double *g, Py_ssize_t i, double scale) {
    return (FS_T)(scale * g[i]);
}

/* ---- KL divergence, torch.nn.functional.kl_div's pointwise term ----
 * log_target=0: xlogy(t, t) - t x, gradient -t;  log_target=1: exp(t) (t - x), -exp(t).
 * Always inlined, with the flag and the optional outputs (loss, grad: NULL or not) as
 * literals, so that each copy is a plain vector loop (see fs_kl_div_segment). The losses
 * are summed in FS_T over blocks of FS_BLOCK and the blocks in double, as rows_typed.h's
 * sums: a double accumulator fed by float terms halves the vector lanes. */
FS_EW_INLINE double FS_FN(fs_kl_div_body)(const FS_T *x, const FS_T *t, const double *g,
                                          double scale, FS_T *loss, FS_T *grad, Py_ssize_t n,
                                          int log_target) {
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_T acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t i = start; i < stop; i++) {
            FS_T xi = x[i], ti = t[i], l, d;
            if (log_target) {
                FS_T e = FS_FN(fs_exp)(ti);
                l = e * (ti - xi);
                d = -e;
            } else {
                l = (ti == (FS_T)0 ? (FS_T)0 : ti * FS_FN(fs_ew_log)(ti)) - ti * xi;
                d = -ti;
            }
            acc += l;
            if (loss) loss[i] = l;
            if (grad) grad[i] = d * FS_FN(fs_ew_grad_scale)(g, i, scale);
        }
        total += acc;
    }
    return total;
}

/* ---- binary cross-entropy with logits ----
 * (1 - y) softplus(x) + pw y softplus(-x), times w: torch's (1 - y) x + (1 + (pw - 1) y)
 * softplus(-x) rearranged so that every term is >= 0 for y in [0, 1], and a term with a
 * zero factor is 0 at x = +-inf (where torch's form gives inf - inf = NaN). Gradient
 * w ((1 - y) sigmoid(x) - pw y sigmoid(-x)), finite for every x. One exp, one log.
 * Inlined and summed as fs_kl_div_body. */
FS_EW_INLINE double FS_FN(fs_bce_body)(const FS_T *x, const FS_T *t, const FS_T *w,
                                       const FS_T *pw, const double *g, double scale,
                                       FS_T *loss, FS_T *grad, Py_ssize_t n) {
    const FS_T zero = 0, one = 1;
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_T acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t i = start; i < stop; i++) {
            FS_T xi = x[i], yi = t[i], wi = w[i];
            FS_T z = FS_FN(fs_exp_core)(xi < zero ? xi : -xi);  /* exp(-|x|), NaN for NaN */
            FS_T soft = FS_FN(fs_ew_log1p)(z);               /* softplus(-|x|) */
            FS_T sp_pos = (xi > zero ? xi : zero) + soft;    /* softplus(x) */
            FS_T sp_neg = (xi < zero ? -xi : zero) + soft;   /* softplus(-x) */
            FS_T neg = one - yi, pos = pw[i] * yi;
            FS_T l = wi * (FS_FN(fs_ew_times)(neg, sp_pos) + FS_FN(fs_ew_times)(pos, sp_neg));
            acc += l;
            if (loss) loss[i] = l;
            if (grad) {
                FS_T r = one / (one + z);
                FS_T sig = xi >= zero ? r : z * r;        /* sigmoid(x) */
                FS_T sig_neg = xi >= zero ? z * r : r;    /* sigmoid(-x) */
                grad[i] = wi * (neg * sig - pos * sig_neg) * FS_FN(fs_ew_grad_scale)(g, i, scale);
            }
        }
        total += acc;
    }
    return total;
}

/* ---- sigmoid and log-sigmoid (log_sigmoid=1) ---- */
FS_EW_INLINE void FS_FN(fs_sigmoid_body)(const FS_T *x, FS_T *out, Py_ssize_t n,
                                         int log_sigmoid) {
    const FS_T zero = 0, one = 1;
    #pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) {
        FS_T xi = x[i];
        FS_T z = FS_FN(fs_exp_core)(xi < zero ? xi : -xi);
        FS_T v;
        if (log_sigmoid) {
            v = (xi < zero ? xi : zero) - FS_FN(fs_ew_log1p)(z);
        } else {
            FS_T r = one / (one + z);
            v = xi >= zero ? r : z * r;
        }
        out[i] = v;
    }
}

/* ---- the segments the Cython kernels call: each body inlined with its flag and its
 * optional outputs as literals (FS_EW_OUTPUTS), one plain vector loop per copy. */
static inline double FS_FN(fs_kl_div_segment)(const FS_T *x, const FS_T *t, const double *g,
                                              double scale, FS_T *loss, FS_T *grad,
                                              Py_ssize_t n, int log_target) {
#define FS_KL(L, G) (log_target ? FS_FN(fs_kl_div_body)(x, t, g, scale, L, G, n, 1)  \
                                : FS_FN(fs_kl_div_body)(x, t, g, scale, L, G, n, 0))
    return FS_EW_OUTPUTS(FS_KL);
#undef FS_KL
}

static inline double FS_FN(fs_bce_segment)(const FS_T *x, const FS_T *t, const FS_T *w,
                                           const FS_T *pw, const double *g, double scale,
                                           FS_T *loss, FS_T *grad, Py_ssize_t n) {
#define FS_BCE(L, G) FS_FN(fs_bce_body)(x, t, w, pw, g, scale, L, G, n)
    return FS_EW_OUTPUTS(FS_BCE);
#undef FS_BCE
}

static inline void FS_FN(fs_sigmoid_segment)(const FS_T *x, FS_T *out, Py_ssize_t n,
                                             int log_sigmoid) {
    if (log_sigmoid) FS_FN(fs_sigmoid_body)(x, out, n, 1);
    else FS_FN(fs_sigmoid_body)(x, out, n, 0);
}
