/* The typed elementwise loops of elementwise.h, written once and included there three
 * times, with
 *   FS_T                  the storage type of x, t, grad and out (float, double, uint16_t
 *                         for bfloat16)
 *   FS_C                  the compute type (float, double), in which every element is
 *                         computed; also the type of the losses and of the weight streams
 *   FS_S, FS_CS           their name suffixes (f, d, b; f, d): FS_FN(fs_kl_div_segment)
 *                         is fs_kl_div_segment_b in the bfloat16 instance
 *   FS_LOAD, FS_STORE     FS_T -> FS_C and back, rounded to nearest even (rows.h)
 *   FS_EW_LOWP            1 for bfloat16 storage: the scalar math below is the float
 *                         instance's (FS_CFN), not defined again
 * and for float and double (FS_EW_LOWP 0):
 *   FS_EW_LOG_NORMAL      log of a normal number of type FS_C
 *   FS_EW_MIN_NORMAL      the smallest normal FS_C
 *   FS_EW_SUBNORMAL_BITS  log2 of the scale that makes a subnormal FS_C normal (24, 54)
 *   FS_EW_SERIES_END      the last odd power of log1p's atanh series (13, 31: the terms
 *                         left out sum to < 2^-25 (2^-54) of the first at t = 1/3)
 * rows.h's FS_FN, FS_CFN and FS_BLOCK, and its exp (fs_exp_f / fs_exp_d, fs_exp_core_*).
 * No include guard: each inclusion is one instance. Not to be included elsewhere. */
#ifndef FASTSOFTMAX_ELEMENTWISE_H
#error "elementwise_typed.h is included by elementwise.h only"
#endif
#if !defined(FS_T) || !defined(FS_C) || !defined(FS_S) || !defined(FS_CS) \
    || !defined(FS_LOAD) || !defined(FS_STORE) || !defined(FS_EW_LOWP)
#error "elementwise_typed.h needs FS_T, FS_C, FS_S, FS_CS, FS_LOAD, FS_STORE and FS_EW_LOWP"
#endif
#if !FS_EW_LOWP && (!defined(FS_EW_LOG_NORMAL) || !defined(FS_EW_MIN_NORMAL) \
                    || !defined(FS_EW_SUBNORMAL_BITS) || !defined(FS_EW_SERIES_END))
#error "elementwise_typed.h's float and double instances need FS_EW_LOG_NORMAL, FS_EW_MIN_NORMAL, FS_EW_SUBNORMAL_BITS and FS_EW_SERIES_END"
#endif

#if !FS_EW_LOWP

/* log(x) for every FS_C: a subnormal x is scaled by 2^FS_EW_SUBNORMAL_BITS first. */
FS_EW_INLINE FS_C FS_CFN(fs_ew_log)(FS_C x) {
    int tiny = x < FS_EW_MIN_NORMAL;
    FS_C y = FS_EW_LOG_NORMAL(tiny ? x * (FS_C)(1ULL << FS_EW_SUBNORMAL_BITS) : x);
    return tiny ? y - (FS_C)(FS_EW_SUBNORMAL_BITS * 0.6931471805599453) : y;
}

/* log(1 + z) for z in [0, 1] or NaN, without forming 1 + z: 2 atanh(t), t = z / (2 + z)
 * <= 1/3, the series to t^FS_EW_SERIES_END. One division and no exponent bits or special
 * cases, where log(1 + z) z / ((1 + z) - 1) took three divisions (BCE + grad float32
 * 1.23 -> 0.87 ns/elem, one thread, in cache). One range, not two halves around
 * sqrt(2) - 1 with a shorter series: GCC 12 computed both halves' quotients and series
 * and selected (3 divisions in BCE + grad). With `reciprocal`, 1 / (1 + z) comes from the
 * same division: 1 / ((1 + z)(2 + z)) times 2 + z, and times z (1 + z) for t (both: BCE +
 * grad 0.87x the time, float32 AVX-512, 0.80x AVX2, bench.ab 2 threads). The loop over the
 * constant powers unrolls at compile time. */
FS_EW_INLINE FS_C FS_CFN(fs_ew_log1p_reciprocal)(FS_C z, FS_C *reciprocal) {
    FS_C two_plus_z = (FS_C)2 + z, t;
    if (reciprocal) {
        FS_C one_plus_z = (FS_C)1 + z;
        FS_C inverse = (FS_C)1 / (one_plus_z * two_plus_z);
        *reciprocal = two_plus_z * inverse;
        t = z * one_plus_z * inverse;
    } else {
        t = z / two_plus_z;
    }
    FS_C t2 = t * t, p = (FS_C)1 / FS_EW_SERIES_END;
    for (int c = FS_EW_SERIES_END - 2; c >= 3; c -= 2) p = p * t2 + (FS_C)1 / c;
    return (FS_C)2 * t + (FS_C)2 * t * t2 * p;
}

FS_EW_INLINE FS_C FS_CFN(fs_ew_log1p)(FS_C z) {
    return FS_CFN(fs_ew_log1p_reciprocal)(z, NULL);
}

/* a * v with a = 0 giving 0 even for an infinite v (the limit of the loss terms below) */
FS_EW_INLINE FS_C FS_CFN(fs_ew_times)(FS_C a, FS_C v) {
    return a == (FS_C)0 ? (FS_C)0 : a * v;
}

/* The gradient factor of element i: scale * grad_output in double (the API's type),
 * rounded once to FS_C. */
FS_EW_INLINE FS_C FS_CFN(fs_ew_grad_scale)(const double *g, Py_ssize_t i, double scale) {
    return (FS_C)(scale * g[i]);
}
#endif  /* !FS_EW_LOWP */

/* ---- KL divergence, torch.nn.functional.kl_div's pointwise term ----
 * log_target=0: xlogy(t, t) - t x, gradient -t;  log_target=1: exp(t) (t - x), -exp(t).
 * Always inlined, with the flag and the optional outputs (loss, grad: NULL or not) as
 * literals, so that each copy is a plain vector loop (see fs_kl_div_segment). The losses
 * are summed in FS_C over blocks of FS_BLOCK and the blocks in double, as rows_typed.h's
 * sums: a double accumulator fed by float terms halves the vector lanes. */
FS_EW_INLINE double FS_FN(fs_kl_div_body)(const FS_T *x, const FS_T *t, const double *g,
                                          double scale, FS_C *loss, FS_T *grad, Py_ssize_t n,
                                          int log_target) {
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t i = start; i < stop; i++) {
            FS_C xi = FS_LOAD(x[i]), ti = FS_LOAD(t[i]), l, d;
            if (log_target) {
                FS_C e = FS_CFN(fs_exp)(ti);
                l = e * (ti - xi);
                d = -e;
            } else {
                l = (ti == (FS_C)0 ? (FS_C)0 : ti * FS_CFN(fs_ew_log)(ti)) - ti * xi;
                d = -ti;
            }
            acc += l;
            if (loss) loss[i] = l;
            if (grad) grad[i] = FS_STORE(d * FS_CFN(fs_ew_grad_scale)(g, i, scale));
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
FS_EW_INLINE double FS_FN(fs_bce_body)(const FS_T *x, const FS_T *t, const FS_C *w,
                                       const FS_C *pw, const double *g, double scale,
                                       FS_C *loss, FS_T *grad, Py_ssize_t n) {
    const FS_C zero = 0, one = 1;
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t i = start; i < stop; i++) {
            FS_C xi = FS_LOAD(x[i]), yi = FS_LOAD(t[i]), wi = w[i];
            FS_C z = FS_CFN(fs_exp_core)(xi < zero ? xi : -xi);  /* exp(-|x|), NaN for NaN */
            FS_C r;                                           /* 1 / (1 + z) */
            FS_C soft = FS_CFN(fs_ew_log1p_reciprocal)(z, grad ? &r : NULL);  /* softplus(-|x|) */
            FS_C sp_pos = (xi > zero ? xi : zero) + soft;     /* softplus(x) */
            FS_C sp_neg = (xi < zero ? -xi : zero) + soft;    /* softplus(-x) */
            FS_C neg = one - yi, pos = pw[i] * yi;
            FS_C l = wi * (FS_CFN(fs_ew_times)(neg, sp_pos) + FS_CFN(fs_ew_times)(pos, sp_neg));
            acc += l;
            if (loss) loss[i] = l;
            if (grad) {
                FS_C sig = xi >= zero ? r : z * r;        /* sigmoid(x) */
                FS_C sig_neg = xi >= zero ? z * r : r;    /* sigmoid(-x) */
                grad[i] = FS_STORE(wi * (neg * sig - pos * sig_neg)
                                   * FS_CFN(fs_ew_grad_scale)(g, i, scale));
            }
        }
        total += acc;
    }
    return total;
}

/* ---- sigmoid and log-sigmoid (log_sigmoid=1) ---- */
FS_EW_INLINE void FS_FN(fs_sigmoid_body)(const FS_T *x, FS_T *out, Py_ssize_t n,
                                         int log_sigmoid) {
    const FS_C zero = 0, one = 1;
    #pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) {
        FS_C xi = FS_LOAD(x[i]);
        FS_C z = FS_CFN(fs_exp_core)(xi < zero ? xi : -xi);
        FS_C v;
        if (log_sigmoid) {
            v = (xi < zero ? xi : zero) - FS_CFN(fs_ew_log1p)(z);
        } else {
            FS_C r = one / (one + z);
            v = xi >= zero ? r : z * r;
        }
        out[i] = FS_STORE(v);
    }
}

/* ---- the segments the Cython kernels call: each body inlined with its flag and its
 * optional outputs as literals (FS_EW_OUTPUTS), one plain vector loop per copy. */
static inline double FS_FN(fs_kl_div_segment)(const FS_T *x, const FS_T *t, const double *g,
                                              double scale, FS_C *loss, FS_T *grad,
                                              Py_ssize_t n, int log_target) {
#define FS_KL(L, G) (log_target ? FS_FN(fs_kl_div_body)(x, t, g, scale, L, G, n, 1)  \
                                : FS_FN(fs_kl_div_body)(x, t, g, scale, L, G, n, 0))
    return FS_EW_OUTPUTS(FS_KL);
#undef FS_KL
}

static inline double FS_FN(fs_bce_segment)(const FS_T *x, const FS_T *t, const FS_C *w,
                                           const FS_C *pw, const double *g, double scale,
                                           FS_C *loss, FS_T *grad, Py_ssize_t n) {
#define FS_BCE(L, G) FS_FN(fs_bce_body)(x, t, w, pw, g, scale, L, G, n)
    return FS_EW_OUTPUTS(FS_BCE);
#undef FS_BCE
}

static inline void FS_FN(fs_sigmoid_segment)(const FS_T *x, FS_T *out, Py_ssize_t n,
                                             int log_sigmoid) {
    if (log_sigmoid) FS_FN(fs_sigmoid_body)(x, out, n, 1);
    else FS_FN(fs_sigmoid_body)(x, out, n, 0);
}

/* ---- the entry points of elementwise.h's dispatch: untyped pointers to whole arrays,
 * elements [i, i + n) (the weight streams from w_at and pw_at; g already offset) */
#define FS_EW_AT(T, p, i) ((p) ? (T *)(p) + (i) : NULL)

static inline double FS_FN(fs_kl_div_at)(const void *x, const void *t, const double *g,
                                         double scale, void *loss, void *grad, Py_ssize_t i,
                                         Py_ssize_t n, int log_target) {
    return FS_FN(fs_kl_div_segment)((const FS_T *)x + i, (const FS_T *)t + i, g, scale,
                                    FS_EW_AT(FS_C, loss, i), FS_EW_AT(FS_T, grad, i), n,
                                    log_target);
}

static inline double FS_FN(fs_bce_at)(const void *x, const void *t, const void *w,
                                      Py_ssize_t w_at, const void *pw, Py_ssize_t pw_at,
                                      const double *g, double scale, void *loss, void *grad,
                                      Py_ssize_t i, Py_ssize_t n) {
    return FS_FN(fs_bce_segment)((const FS_T *)x + i, (const FS_T *)t + i,
                                 (const FS_C *)w + w_at, (const FS_C *)pw + pw_at, g, scale,
                                 FS_EW_AT(FS_C, loss, i), FS_EW_AT(FS_T, grad, i), n);
}

static inline void FS_FN(fs_sigmoid_at)(const void *x, void *out, Py_ssize_t i, Py_ssize_t n,
                                        int log_sigmoid) {
    FS_FN(fs_sigmoid_segment)((const FS_T *)x + i, (FS_T *)out + i, n, log_sigmoid);
}

#undef FS_EW_AT
