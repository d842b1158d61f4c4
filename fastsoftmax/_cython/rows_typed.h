/* The typed row helpers of rows.h, written once and included there once per element type,
 * with
 *   FS_T       the storage type of a row (float, double; uint16_t for bfloat16 bits)
 *   FS_C       the compute type (FS_T, or float for bfloat16)
 *   FS_S, FS_CS  the name suffixes of FS_T and FS_C (f, d, b, h): FS_FN(fs_row_max) is
 *              fs_row_max_f, ..., FS_CFN(fs_exp_core) is the compute type's exp
 *   FS_LOWP    1 for bfloat16: its instance has the long-row helpers only
 *   FS_LOAD(v), FS_STORE(v)  a stored element to FS_C and back (rounded to nearest
 *              even); the identity for float and double
 *   FS_P       the x86 intrinsic suffix (ps, pd): FS_MM(_mm512_max_) is _mm512_max_ps
 *   FS_I       the integer type of a lane index (int32_t, int64_t)
 *   FS_EXP_HI  fs_exp's bound: above it exp(x) is +inf
 *   FS_LOG_NORMAL, FS_MIN_NORMAL  log of a normal FS_T, and the smallest normal FS_T
 * Class weights are FS_C (float32 for a 16-bit row). Every read of a row goes through
 * FS_LOAD and every write through FS_STORE, so that a helper is written once for the
 * three types. float16 has no instance: its row functions run the float helpers on
 * blocks widened to float (fs_call_chunk, row_functions_typed.h).
 * No include guard: each inclusion is one instance. Not to be included elsewhere. */
#ifndef FASTSOFTMAX_ROWS_H
#error "rows_typed.h is included by rows.h only"
#endif
#if !defined(FS_T) || !defined(FS_C) || !defined(FS_S) || !defined(FS_CS) || !defined(FS_LOWP) \
    || !defined(FS_LOAD) || !defined(FS_STORE) || !defined(FS_P) || !defined(FS_I) \
    || !defined(FS_EXP_HI) || !defined(FS_LOG_NORMAL) || !defined(FS_MIN_NORMAL)
#error "rows_typed.h needs FS_T, FS_C, FS_S, FS_CS, FS_LOWP, FS_LOAD, FS_STORE, FS_P, FS_I, FS_EXP_HI, FS_LOG_NORMAL and FS_MIN_NORMAL"
#endif

/* Names local to this file (#undef at its end). */
#define FS_VEC FS_FN(fs_vec)                                 /* fs_vec_f, fs_vec_d */
#define FS_INDEX_VEC FS_FN(fs_index_vec)                     /* fs_index_vec_f, ... */
#define FS_LANES ((Py_ssize_t)(FS_VEC_BYTES / sizeof(FS_T)))  /* lanes of a vector */

/* The scalar math runs in the compute type FS_C and is defined by the float and double
 * instances only; a 16-bit instance calls the float one (FS_CFN). */
#if !FS_LOWP
FS_MATH FS_T FS_FN(fs_exp)(FS_T x) {
    return x > FS_EXP_HI ? (FS_T)INFINITY : FS_FN(fs_exp_core)(x);
}

/* tanh(u), vectorisable: the series of rows.h below |u| = 1/4, (1 - e) / (1 + e) with
 * e = exp(-2|u|) above (cancellation costs at most a bit there). NaN gives NaN (e is
 * NaN), +-inf gives +-1 (e = 0). Max error over [-20, 20]: float 4.2 ulp, double 2.7 ulp
 * (measured against tanh in a wider type, with the Numba twin). */
FS_MATH FS_T FS_FN(fs_tanh)(FS_T u) {
    FS_T a = u < 0 ? -u : u;
    FS_T e = FS_FN(fs_exp_core)(-2 * a);
    FS_T big = (1 - e) / (1 + e);
    return a < (FS_T)0.25 ? u * FS_FN(fs_tanh_series)(u * u) : (u < 0 ? -big : big);
}

/* Logit soft-capping (Gemma 2): z = cap * tanh(x / cap); cap = 0 leaves x. A loop helper
 * takes cap as an argument and is inlined twice by its caller, once with a literal 0,
 * so that the uncapped loop compiles as before (the selects on cap fold away). A capped
 * cross-entropy keeps z, not exp(z - m), from its exp pass: the write pass then has z
 * for the slope dz/dx = 1 - (z / cap)^2 and computes exp(z - m) again. */
FS_MATH FS_T FS_FN(fs_softcap)(FS_T x, FS_T cap) {
    return cap != 0 ? cap * FS_FN(fs_tanh)(x / cap) : x;
}

/* dz/dx of z = fs_softcap(x, cap), from z; 1 for cap = 0 */
FS_MATH FS_T FS_FN(fs_softcap_slope)(FS_T z, FS_T cap) {
    FS_T u = z / cap;
    return cap != 0 ? (1 - u) * (1 + u) : 1;  /* 1 - u^2 without its cancellation */
}

/* Class weight j; a NULL weight vector is all ones (weight=None: no C-sized array of
 * ones is built). A weighted row loop is written once, as an always-inline
 * FS_FN(..._loop) helper, and called twice by its public helper: with a literal NULL
 * and with w. Each inlined copy is then a plain vector loop. Left to GCC's own
 * unswitching, the exp loops kept the test inside (prob-target CE + grad at
 * 16777 x 1000 ran 8.5x slower, with smoothing 1.8x; bench.ab). */
static inline FS_T FS_FN(fs_weight)(const FS_T *w, Py_ssize_t j) {
    return w ? w[j] : (FS_T)1;
}

/* The exponential of an element v kept by the exp pass: v, or exp(v - m) when capped
 * (v is then the capped logit z, whose slope is fs_softcap_slope(v, cap)) */
FS_MATH FS_T FS_FN(fs_kept_exp)(FS_T v, FS_T m, FS_T cap) {
    return cap != 0 ? FS_FN(fs_exp_core)(v - m) : v;
}
#endif

/* Largest element; NaN if the row holds a NaN. */
static inline FS_C FS_FN(fs_row_max)(const FS_T *row, Py_ssize_t n) {
    FS_C m = FS_LOAD(row[0]);
    int nan = 0;
    #pragma omp simd reduction(max:m) reduction(|:nan)
    for (Py_ssize_t j = 0; j < n; j++) {
        FS_C v = FS_LOAD(row[j]);
        m = v > m ? v : m;
        nan |= v != v;
    }
    return nan ? (FS_C)NAN : m;
}

static inline __attribute__((always_inline)) double FS_FN(fs_row_sumexp_loop)(
        const FS_T *row, Py_ssize_t n, FS_C m, FS_C cap, FS_C *kept, FS_T *copy) {
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t j = start; j < stop; j++) {
            FS_C z = FS_CFN(fs_softcap)(FS_LOAD(row[j]), cap);
            FS_C e = FS_CFN(fs_exp_core)(z - m);
            if (kept) kept[j] = cap != 0 ? z : e;
            if (copy) copy[j] = row[j];
            acc += e;
        }
        total += acc;
    }
    return total;
}

/* kept (if not NULL) = NaN, copy (if not NULL) = row; returns NaN */
static inline double FS_FN(fs_nan_kept)(const FS_T *row, Py_ssize_t n, FS_C *kept, FS_T *copy) {
    for (Py_ssize_t j = 0; kept && j < n; j++) kept[j] = (FS_C)NAN;
    for (Py_ssize_t j = 0; copy && j < n; j++) copy[j] = row[j];
    return NAN;
}

/* sum(exp(z - m)), z = fs_softcap(row, cap), NaN when m is not finite; with kept (the
 * row function's FS_ARGS.kept), also kept = exp(z - m), or z when capped (kept may be
 * row). Keeping the exponentials lets the write pass rescale them instead of computing
 * exp again: CE + grad 0.96 -> 0.81 ns/elem at 512 x 32768 float32. With copy (not
 * with kept), also copy = row, as stored (see fs_log_softmax_row). Each case is a loop of
 * its own (the helper inlined with literal NULLs). */
static inline double FS_FN(fs_row_sumexp)(const FS_T *row, Py_ssize_t n, FS_C m, FS_C cap,
                                          FS_C *kept, FS_T *copy) {
    if (!isfinite(m)) return FS_FN(fs_nan_kept)(row, n, kept, copy);
    if (cap != 0) return FS_FN(fs_row_sumexp_loop)(row, n, m, cap, kept, NULL);
    return kept ? FS_FN(fs_row_sumexp_loop)(row, n, m, 0, kept, NULL)
           : copy ? FS_FN(fs_row_sumexp_loop)(row, n, m, 0, NULL, copy)
                  : FS_FN(fs_row_sumexp_loop)(row, n, m, 0, NULL, NULL);
}

static inline __attribute__((always_inline)) double FS_FN(fs_row_dot_loop)(
        const FS_T *a, const FS_T *b, Py_ssize_t n) {
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t j = start; j < stop; j++)
            acc += FS_LOAD(a[j]) * (b ? FS_LOAD(b[j]) : (FS_C)1);
        total += acc;
    }
    return total;
}

/* sum(a * b); b NULL stands for ones (sum(a)), as for class weights */
static inline double FS_FN(fs_row_dot)(const FS_T *a, const FS_T *b, Py_ssize_t n) {
    return b ? FS_FN(fs_row_dot_loop)(a, b, n) : FS_FN(fs_row_dot_loop)(a, NULL, n);
}

static inline __attribute__((always_inline)) double FS_FN(fs_row_shifted_dot_loop)(
        const FS_C *w, const FS_T *row, Py_ssize_t n, FS_C m, FS_C cap) {
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc = 0;
        #pragma omp simd reduction(+:acc)
        for (Py_ssize_t j = start; j < stop; j++)
            acc += FS_CFN(fs_weight)(w, j) * (FS_CFN(fs_softcap)(FS_LOAD(row[j]), cap) - m);
        total += acc;
    }
    return total;
}

/* sum(w * (fs_softcap(row, cap) - m)) (w NULL: ones) */
static inline double FS_FN(fs_row_shifted_dot)(const FS_C *w, const FS_T *row, Py_ssize_t n,
                                               FS_C m, FS_C cap) {
    if (cap != 0)
        return w ? FS_FN(fs_row_shifted_dot_loop)(w, row, n, m, cap)
                 : FS_FN(fs_row_shifted_dot_loop)(NULL, row, n, m, cap);
    return w ? FS_FN(fs_row_shifted_dot_loop)(w, row, n, m, 0)
             : FS_FN(fs_row_shifted_dot_loop)(NULL, row, n, m, 0);
}

static inline __attribute__((always_inline)) double FS_FN(fs_prob_sums_loop)(
        const FS_T *row, const FS_T *t, const FS_C *w, Py_ssize_t n, FS_C m, FS_C keep,
        FS_C eps, FS_C cap, FS_C *kept, double *total_wt, double *shifted_wt) {
    double sum_exp = 0.0, twt = 0.0, swt = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc_exp = 0, acc_wt = 0, acc_shifted = 0;
        #pragma omp simd reduction(+:acc_exp,acc_wt,acc_shifted)
        for (Py_ssize_t j = start; j < stop; j++) {
            FS_C capped = FS_CFN(fs_softcap)(FS_LOAD(row[j]), cap), z = capped - m;
            FS_C wt = FS_CFN(fs_weight)(w, j) * (FS_LOAD(t[j]) * keep + eps);
            FS_C e = FS_CFN(fs_exp_core)(z);
            if (kept) kept[j] = cap != 0 ? capped : e;
            acc_exp += e;
            acc_wt += wt;
            acc_shifted += wt * z;
        }
        sum_exp += acc_exp; twt += acc_wt; swt += acc_shifted;
    }
    *total_wt = twt; *shifted_wt = swt;
    return sum_exp;
}

/* One pass for probability targets t' = keep * t + eps (w NULL: ones), with
 * z = fs_softcap(row, cap): returns sum(exp(z - m)), sets *total_wt = sum(w t') and
 * *shifted_wt = sum(w t' (z - m)); with kept, also kept = exp(z - m), or z when capped
 * (as fs_row_sumexp). All three are NaN when m is not finite. */
static inline double FS_FN(fs_prob_sums)(const FS_T *row, const FS_T *t, const FS_C *w,
                                         Py_ssize_t n, FS_C m, FS_C keep, FS_C eps, FS_C cap,
                                         FS_C *kept, double *total_wt, double *shifted_wt) {
    if (!isfinite(m)) {
        *total_wt = *shifted_wt = NAN;
        return FS_FN(fs_nan_kept)(row, n, kept, NULL);
    }
    if (cap != 0)
        return FS_FN(fs_prob_sums_loop)(row, t, w, n, m, keep, eps, cap, kept, total_wt,
                                        shifted_wt);
    return w ? FS_FN(fs_prob_sums_loop)(row, t, w, n, m, keep, eps, 0, kept, total_wt,
                                        shifted_wt)
             : FS_FN(fs_prob_sums_loop)(row, t, NULL, n, m, keep, eps, 0, kept, total_wt,
                                        shifted_wt);
}

static inline __attribute__((always_inline)) void FS_FN(fs_rescale_loop)(
        const FS_C *kept, FS_T *out, FS_C k, FS_C f, const FS_C *w, Py_ssize_t n, FS_C m,
        FS_C cap) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) {
        FS_C v = kept[j], e = FS_CFN(fs_kept_exp)(v, m, cap);
        out[j] = FS_STORE((e * k - f * FS_CFN(fs_weight)(w, j))
                          * FS_CFN(fs_softcap_slope)(v, cap));
    }
}

/* out = e * k - f * w (w NULL: ones; f = 0 leaves e * k, bit for bit), e = exp(z - m)
 * from what the exp pass kept (fs_kept_exp); with cap (not 0), the result is multiplied
 * by dz/dx. out may be kept. */
static inline void FS_FN(fs_rescale)(const FS_C *kept, FS_T *out, FS_C k, FS_C f,
                                     const FS_C *w, Py_ssize_t n, FS_C m, FS_C cap) {
    if (cap != 0) FS_FN(fs_rescale_loop)(kept, out, k, f, w, n, m, cap);
    else if (w) FS_FN(fs_rescale_loop)(kept, out, k, f, w, n, m, 0);
    else FS_FN(fs_rescale_loop)(kept, out, k, f, NULL, n, m, 0);
}

static inline __attribute__((always_inline)) void FS_FN(fs_prob_rescale_loop)(
        const FS_C *kept, FS_T *out, const FS_T *t, const FS_C *w, FS_C k, FS_C f, FS_C keep,
        FS_C eps, Py_ssize_t n, FS_C m, FS_C cap) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) {
        FS_C v = kept[j], e = FS_CFN(fs_kept_exp)(v, m, cap);
        out[j] = FS_STORE((e * k - f * FS_CFN(fs_weight)(w, j) * (FS_LOAD(t[j]) * keep + eps))
                          * FS_CFN(fs_softcap_slope)(v, cap));
    }
}

/* out = e * k - f * w * (t * keep + eps) (w NULL: ones), e and cap as in fs_rescale */
static inline void FS_FN(fs_prob_rescale)(const FS_C *kept, FS_T *out, const FS_T *t,
                                          const FS_C *w, FS_C k, FS_C f, FS_C keep, FS_C eps,
                                          Py_ssize_t n, FS_C m, FS_C cap) {
    if (cap != 0) FS_FN(fs_prob_rescale_loop)(kept, out, t, w, k, f, keep, eps, n, m, cap);
    else if (w) FS_FN(fs_prob_rescale_loop)(kept, out, t, w, k, f, keep, eps, n, m, 0);
    else FS_FN(fs_prob_rescale_loop)(kept, out, t, NULL, k, f, keep, eps, n, m, 0);
}

/* out = (row - m) - log_sum */
static inline void FS_FN(fs_shift)(const FS_T *row, FS_C m, FS_C log_sum, FS_T *out,
                                   Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) out[j] = FS_STORE((FS_LOAD(row[j]) - m) - log_sum);
}

/* out = y * (dy - dot) */
static inline void FS_FN(fs_softmax_bwd)(const FS_T *y, const FS_T *dy, FS_C dot, FS_T *out,
                                         Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++)
        out[j] = FS_STORE(FS_LOAD(y[j]) * (FS_LOAD(dy[j]) - dot));
}

/* out = dy - exp(logp) * total */
static inline void FS_FN(fs_log_softmax_bwd)(const FS_T *logp, const FS_T *dy, FS_C total,
                                             FS_T *out, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++)
        out[j] = FS_STORE(FS_LOAD(dy[j]) - FS_CFN(fs_exp)(FS_LOAD(logp[j])) * total);
}

/* The shifted logit d = max(x - m, FS_ENTROPY_FLOOR) of the entropy */
FS_MATH FS_C FS_FN(fs_entropy_d)(FS_C x, FS_C m) {
    FS_C d = x - m;
    return d > (FS_C)FS_ENTROPY_FLOOR ? d : (FS_C)FS_ENTROPY_FLOOR;
}

static inline __attribute__((always_inline)) double FS_FN(fs_entropy_sums_loop)(
        const FS_T *row, Py_ssize_t n, FS_C m, FS_C *kept, double *sum_ed, int keep_d) {
    double sum_e = 0.0, total_ed = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc_e = 0, acc_ed = 0;
        #pragma omp simd reduction(+:acc_e,acc_ed)
        for (Py_ssize_t j = start; j < stop; j++) {
            FS_C d = FS_FN(fs_entropy_d)(FS_LOAD(row[j]), m);
            FS_C e = FS_CFN(fs_exp_core)(d);
            if (kept) kept[j] = keep_d ? d : e;
            acc_e += e;
            acc_ed += e * d;
        }
        sum_e += acc_e;
        total_ed += acc_ed;
    }
    *sum_ed = total_ed;
    return sum_e;
}

/* Entropy, with d = fs_entropy_d(row, m) and e = exp(d) (formulas in
 * fastsoftmax/_numba/_entropy.py): returns sum(e), sets *sum_ed = sum(e d); with kept
 * (the row function's FS_ARGS.kept), also kept = e, or kept = d when kept is row (float
 * in place: the gradient pass then cannot read row). m is the row's finite max. */
static inline double FS_FN(fs_entropy_sums)(const FS_T *row, Py_ssize_t n, FS_C m, FS_C *kept,
                                            double *sum_ed) {
    /* Each case a loop of its own: with the NULL test left inside, the entropy (no out)
     * ran as scalar code, 1.2 ns/elem against 0.2 with out (float32, 2 threads). */
    if (!kept) return FS_FN(fs_entropy_sums_loop)(row, n, m, NULL, sum_ed, 0);
    return (const void *)kept == (const void *)row
               ? FS_FN(fs_entropy_sums_loop)(row, n, m, kept, sum_ed, 1)
               : FS_FN(fs_entropy_sums_loop)(row, n, m, kept, sum_ed, 0);
}

/* The entropy gradient out = k * e * (mean_d - d) after fs_entropy_sums. Out of place,
 * or 16-bit, kept holds e and d is recomputed from row (a 16-bit out may be row: each
 * element is read before it is written); float in place, kept (= out = row) holds d and
 * e is computed again. Keeping e saves the second exp: the time of entropy_with_grad
 * over that of cross_entropy_with_grad at 128 x 131072 float32, 2 threads, calls
 * interleaved in one process on a loaded machine: Cython 1.40 -> 0.80-1.21, Numba
 * 1.34 -> 1.02-1.07 (two runs each). */
static inline void FS_FN(fs_entropy_grad)(const FS_T *row, FS_C m, const FS_C *kept, FS_T *out,
                                          Py_ssize_t n, FS_C k, FS_C mean_d) {
    if ((const void *)kept == (const void *)row) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++)
            out[j] = FS_STORE(k * FS_CFN(fs_exp_core)(kept[j]) * (mean_d - kept[j]));
    } else {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++)
            out[j] = FS_STORE(k * kept[j] * (mean_d - FS_FN(fs_entropy_d)(FS_LOAD(row[j]), m)));
    }
}

/* ---- JSD and KL between two logit rows (formulas and passes in
 * fastsoftmax/_numba/_jsd.py): student s, teacher t, inv_t = 1 / temperature; what a
 * pass keeps for the next (exp((s - m_s) inv_t), then r) is in kept, the row function's
 * FS_ARGS.kept (the gradient row itself for float and double) ---- */

static inline __attribute__((always_inline)) double FS_FN(fs_jsd_sums_loop)(
        const FS_T *s, const FS_T *t, Py_ssize_t n, FS_C m_s, FS_C m_t, FS_C inv_t, FS_C *kept,
        FS_C *kept_t, double *sum_t) {
    double total_s = 0.0, total_t = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc_s = 0, acc_t = 0;
        #pragma omp simd reduction(+:acc_s,acc_t)
        for (Py_ssize_t j = start; j < stop; j++) {
            FS_C e = FS_CFN(fs_exp_core)((FS_LOAD(s[j]) - m_s) * inv_t);
            FS_C e_t = FS_CFN(fs_exp_core)((FS_LOAD(t[j]) - m_t) * inv_t);
            if (kept) kept[j] = e;
            if (kept_t) kept_t[j] = e_t;
            acc_s += e;
            acc_t += e_t;
        }
        total_s += acc_s;
        total_t += acc_t;
    }
    *sum_t = total_t;
    return total_s;
}

/* sum(exp((s - m_s) inv_t)); sets *sum_t = sum(exp((t - m_t) inv_t)); with kept, also
 * kept = exp((s - m_s) inv_t), and with kept_t (only with kept) kept_t =
 * exp((t - m_t) inv_t). m_s, m_t: the rows' finite maxima. */
static inline double FS_FN(fs_jsd_sums)(const FS_T *s, const FS_T *t, Py_ssize_t n, FS_C m_s,
                                        FS_C m_t, FS_C inv_t, FS_C *kept, FS_C *kept_t,
                                        double *sum_t) {
    /* a loop per case, in a branch that tests each pointer it gets (a pointer not known
     * to be set made the loop test it per element) */
#define FS_JSD_SUMS(o, o_t) FS_FN(fs_jsd_sums_loop)(s, t, n, m_s, m_t, inv_t, o, o_t, sum_t)
    if (kept && kept_t) return FS_JSD_SUMS(kept, kept_t);
    return kept ? FS_JSD_SUMS(kept, NULL) : FS_JSD_SUMS(NULL, NULL);
#undef FS_JSD_SUMS
}

static inline __attribute__((always_inline)) double FS_FN(fs_jsd_terms_loop)(
        const FS_T *s, const FS_T *t, Py_ssize_t n, FS_C m_s, FS_C m_t, FS_C inv_t,
        FS_C log_sum_s, FS_C log_sum_t, FS_C inv_sum_s, FS_C inv_sum_t, FS_C beta, FS_C k,
        FS_C *kept, FS_C *kept_t, FS_T *out, int mode, double *kl_q) {
    const FS_C keep = 1 - beta, tiny = FS_MIN_NORMAL, zero = 0;
    double loss = 0.0, total_kl_q = 0.0;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);
        FS_C acc_loss = 0, acc_kl_q = 0;
        #pragma omp simd reduction(+:acc_loss,acc_kl_q)
        for (Py_ssize_t j = start; j < stop; j++) {
            FS_C log_q = (FS_LOAD(s[j]) - m_s) * inv_t - log_sum_s;
            FS_C log_p = (FS_LOAD(t[j]) - m_t) * inv_t - log_sum_t;
            FS_C q = kept ? kept[j] * inv_sum_s : FS_CFN(fs_exp_core)(log_q);
            FS_C p = kept_t ? kept_t[j] * inv_sum_t : FS_CFN(fs_exp_core)(log_p);
            if (mode == FS_JSD_FORWARD) {
                acc_loss += p > zero ? p * (log_p - log_q) : zero;
                if (out) out[j] = FS_STORE(k * (q - p));
            } else if (mode == FS_JSD_REVERSE) {
                acc_loss += q > zero ? q * (log_q - log_p) : zero;
                if (out) {
                    kept[j] = log_q - log_p;
                    kept_t[j] = q;
                }
            } else {
                FS_C mix = beta * p + keep * q;
                FS_C log_m = FS_LOG_NORMAL(mix > tiny ? mix : tiny);
                FS_C term_q = q > zero ? q * (log_q - log_m) : zero;
                FS_C term_p = p > zero ? p * (log_p - log_m) : zero;
                acc_loss += beta * term_p + keep * term_q;
                acc_kl_q += term_q;
                if (out) {
                    kept[j] = log_q - log_m;
                    kept_t[j] = q;
                }
            }
        }
        loss += acc_loss;
        total_kl_q += acc_kl_q;
    }
    *kl_q = mode == FS_JSD_REVERSE ? loss : total_kl_q;
    return loss;
}

/* The loss of the row (mode FS_JSD_*), after fs_jsd_sums (log_sum_* the logs of its sums,
 * inv_sum_* 1 / them); sets *kl_q = KL(Q || M). With kept and kept_t (holding the exps
 * of s and t), Q and P come from them; with out too, kept = r = log Q - log M and
 * kept_t = Q, or at beta = 0 the gradient k (Q - P) goes into out (there kept_t may be
 * NULL: P from its exp). Each (mode, kept, kept_t, out) case is a loop of its own (a
 * constant mode and NULLs), in a branch that tests the pointers it passes: a pointer not
 * known to be set was tested per element (JSD + grad 0.90 instead of 0.74x the time). */
static inline double FS_FN(fs_jsd_terms)(const FS_T *s, const FS_T *t, Py_ssize_t n, FS_C m_s,
                                         FS_C m_t, FS_C inv_t, FS_C log_sum_s, FS_C log_sum_t,
                                         FS_C inv_sum_s, FS_C inv_sum_t, FS_C beta, FS_C k,
                                         FS_C *kept, FS_C *kept_t, FS_T *out, int mode,
                                         double *kl_q) {
#define FS_JSD_TERMS(o, o_t, g, m) \
    FS_FN(fs_jsd_terms_loop)(s, t, n, m_s, m_t, inv_t, log_sum_s, log_sum_t, inv_sum_s, \
                             inv_sum_t, beta, k, o, o_t, g, m, kl_q)
#define FS_JSD_MODES(o, o_t, g) \
    (mode == FS_JSD_FORWARD ? FS_JSD_TERMS(o, o_t, g, FS_JSD_FORWARD) \
     : mode == FS_JSD_REVERSE ? FS_JSD_TERMS(o, o_t, g, FS_JSD_REVERSE) \
     : FS_JSD_TERMS(o, o_t, g, FS_JSD_MIXTURE))
    if (!kept || !kept_t) {
        if (!kept || !out) return FS_JSD_MODES(NULL, NULL, NULL);
        return FS_JSD_TERMS(kept, NULL, out, FS_JSD_FORWARD);  /* (forward only) */
    }
    if (!out) return FS_JSD_MODES(kept, kept_t, NULL);
    return FS_JSD_MODES(kept, kept_t, out);
#undef FS_JSD_MODES
#undef FS_JSD_TERMS
}

/* The JSD gradient out = k Q (r - kl_q) after fs_jsd_terms, kept holding r and kept_t Q
 * (out may be kept itself). */
static inline void FS_FN(fs_jsd_grad)(Py_ssize_t n, FS_C k, FS_C kl_q, const FS_C *kept,
                                      const FS_C *kept_t, FS_T *out) {
    const FS_C zero = 0;
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) {
        FS_C q = kept_t[j];
        out[j] = FS_STORE(q > zero ? k * q * (kept[j] - kl_q) : zero);
    }
}

/* The short rows: float and double only (a 16-bit array's narrow rows are widened as
 * they are loaded, narrow_typed.h; its wider short rows run the float block kernels on a
 * float copy, _kernels.pyx). */
#if !FS_LOWP

/* ---- short rows (the block kernels, C < 128): a row is a few vectors ----
 * With one row of 10 classes per task, an omp simd loop runs entirely in its scalar
 * epilogue; transposing blocks of rows (the Numba backend's way) cost two strided
 * scalar copies. Here each row is loaded as whole vectors with a masked tail, reduced
 * across lanes, and stored with a masked tail (kernel, 2 threads, float32, CE + grad:
 * C = 10 2.07 -> 1.74 ns/elem, C = 50 1.47 -> 0.98; measured side by side with the
 * transposed build; the threshold between blocks and rows is in _kernels.pyx).
 * The helpers are written once on GCC vector types; the vector width (FS_VEC_BYTES)
 * and the masked loads and stores come from the instruction set: AVX-512 (64 bytes,
 * mask registers), AVX2 (32 bytes, vmaskmov), otherwise 16 bytes filled by memcpy. */

/* {0, 1, ..., L - 1}: a constant. Built as first + lane instead, GCC filled the
 * vector lane by lane (16 masked broadcasts per vector; 25% of C = 100 CE + grad). */
static inline FS_INDEX_VEC FS_FN(fs_lane_numbers)(void) {
    FS_INDEX_VEC v;
    for (Py_ssize_t l = 0; l < FS_LANES; l++) v[l] = (FS_I)l;
    return v;
}

/* -1 in the lane whose element index (first + lane) is i, 0 elsewhere */
static inline FS_INDEX_VEC FS_FN(fs_lane_at)(Py_ssize_t first, int64_t i) {
    return FS_FN(fs_lane_numbers)() == (FS_I)(i - first);
}

#if FS_VEC_BYTES == 64
/* Lanes [0, count) of a vector as a bit mask; count may exceed the lane count but must
 * be < 256 (bzhi reads 8 bits of it; rows here are < 128). One bzhi instead of a compare
 * and a select: C = 10 CE + grad 0.79 -> 0.71 of the time of the same code without it. */
static inline unsigned FS_FN(fs_lane_mask)(Py_ssize_t count) {
    return _bzhi_u32((1u << FS_LANES) - 1, (unsigned)count);
}

/* p[0 : count] into the low lanes, fill in the others; never reads past p[count-1] */
static inline FS_VEC FS_FN(fs_vload)(const FS_T *p, Py_ssize_t count, FS_T fill) {
    return (FS_VEC)FS_MM(_mm512_mask_loadu_)(FS_MM(_mm512_set1_)(fill),
                                             FS_FN(fs_lane_mask)(count), p);
}

static inline void FS_FN(fs_vstore)(FS_T *p, Py_ssize_t count, FS_VEC v) {
    FS_MM(_mm512_mask_storeu_)(p, FS_FN(fs_lane_mask)(count), v);
}

static inline FS_VEC FS_FN(fs_vmax)(FS_VEC a, FS_VEC b) {
    return (FS_VEC)FS_MM(_mm512_max_)(a, b);
}

static inline FS_T FS_FN(fs_vreduce_max)(FS_VEC v) { return FS_MM(_mm512_reduce_max_)(v); }

static inline FS_T FS_FN(fs_vreduce_add)(FS_VEC v) { return FS_MM(_mm512_reduce_add_)(v); }

#else  /* AVX2 or 16-byte vectors: load and store by the instruction set, the rest generic */
/* -1 in the lanes below count, 0 elsewhere */
static inline FS_INDEX_VEC FS_FN(fs_lanes_below)(Py_ssize_t count) {
    return FS_FN(fs_lane_numbers)() < (FS_I)count;
}

/* Whether a whole vector at p ends in p's 4 KiB page, where reading it cannot fault
 * even past the end of p's array (pages are the unit of protection, 4 KiB or more). */
static inline int FS_FN(fs_vector_in_page)(const FS_T *p) {
    return ((uintptr_t)p & 4095) <= 4096 - sizeof(FS_VEC);
}

#if FS_VEC_BYTES == 32

/* p[0 : count] into the low lanes, fill in the others. A whole vector is a plain load:
 * vmaskmov loads were half the time of the C = 10 row max on a Zen 5 EPYC (perf),
 * logsumexp C = 10 float32, one thread 5.6 -> 3.8 ns/elem. So is a tail whose vector
 * ends in p's 4 KiB page, where no read can fault (the lanes past count are dropped by
 * the blend); only a tail at a page end is a vmaskmov load. That load was 52% of the
 * C = 10 row max on a Xeon (perf, CE + grad, one thread). A tail built from plain loads
 * of L/2, L/4, ... lanes was slower (11 ns/elem: the vector is then read back from the
 * stack, a failed store forwarding). */
static inline FS_VEC FS_FN(fs_vload)(const FS_T *p, Py_ssize_t count, FS_T fill) {
    if (count >= FS_LANES)
        return (FS_VEC)FS_MM(_mm256_loadu_)(p);
    FS_INDEX_VEC in_row = FS_FN(fs_lanes_below)(count);
    FS_VEC v = FS_FN(fs_vector_in_page)(p) ? (FS_VEC)FS_MM(_mm256_loadu_)(p)
                                            : (FS_VEC)FS_MM(_mm256_maskload_)(p, (__m256i)in_row);
    return (FS_VEC)FS_MM(_mm256_blendv_)(FS_MM(_mm256_set1_)(fill), v, (FS_VEC)in_row);
}

static inline void FS_FN(fs_vstore)(FS_T *p, Py_ssize_t count, FS_VEC v) {
    FS_MM(_mm256_maskstore_)(p, (__m256i)FS_FN(fs_lanes_below)(count), v);
}

#else
/* A whole vector, or a tail in the page (as with AVX2), is one plain load with the lanes
 * past count set to fill; a tail at a page end a memcpy of a variable length (libc's
 * copy, faster here than a loop over the lanes). */
static inline FS_VEC FS_FN(fs_vload)(const FS_T *p, Py_ssize_t count, FS_T fill) {
    FS_VEC v = (FS_VEC){0} + fill;
    if (count < FS_LANES && !FS_FN(fs_vector_in_page)(p)) {
        memcpy(&v, p, (size_t)count * sizeof(FS_T));
        return v;
    }
    FS_VEC loaded;
    memcpy(&loaded, p, sizeof loaded);
    FS_INDEX_VEC in_row = FS_FN(fs_lanes_below)(count);
    return (FS_VEC)(((FS_INDEX_VEC)loaded & in_row) | ((FS_INDEX_VEC)v & ~in_row));
}

static inline void FS_FN(fs_vstore)(FS_T *p, Py_ssize_t count, FS_VEC v) {
    memcpy(p, &v, (size_t)FS_MIN(count, FS_LANES) * sizeof(FS_T));
}

#endif

/* b > a ? b : a, lane by lane, as a compare and a bitwise select: GCC made a loop over
 * the lanes a scalar max per lane (C = 50, 2 threads, bench.ab: forced baseline 0.87-0.93
 * of the time; avx2 as fast as vmaxps). */
static inline FS_VEC FS_FN(fs_vmax)(FS_VEC a, FS_VEC b) {
    FS_INDEX_VEC b_greater = b > a;
    return (FS_VEC)(((FS_INDEX_VEC)b & b_greater) | ((FS_INDEX_VEC)a & ~b_greater));
}

/* Lane reductions as a tree of halves (GCC turns the half loops into shuffles); a
 * loop over the lanes was one dependent add per lane. */
static inline FS_T FS_FN(fs_vreduce_max)(FS_VEC v) {
    for (Py_ssize_t half = FS_LANES / 2; half > 0; half /= 2)
        for (Py_ssize_t l = 0; l < half; l++) v[l] = v[l + half] > v[l] ? v[l + half] : v[l];
    return v[0];
}

static inline FS_T FS_FN(fs_vreduce_add)(FS_VEC v) {
    for (Py_ssize_t half = FS_LANES / 2; half > 0; half /= 2)
        for (Py_ssize_t l = 0; l < half; l++) v[l] += v[l + half];
    return v[0];
}
#endif

/* exp of every lane (fs_exp, fs_exp_core): GCC turns the loop into the vector code of
 * the scalar function alone, registers in, registers out (checked in the assembly). */
static inline FS_VEC FS_FN(fs_vexp)(FS_VEC v) {
    FS_VEC out = v;  /* every lane is overwritten; silences -Wmaybe-uninitialized */
    #pragma omp simd
    for (Py_ssize_t l = 0; l < FS_LANES; l++) out[l] = FS_FN(fs_exp)(v[l]);
    return out;
}

static inline FS_VEC FS_FN(fs_vexp_core)(FS_VEC v) {
    FS_VEC out = v;  /* as in fs_vexp */
    #pragma omp simd
    for (Py_ssize_t l = 0; l < FS_LANES; l++) out[l] = FS_FN(fs_exp_core)(v[l]);
    return out;
}

/* Weights j .. j + count - 1 of a short row as a vector (w NULL: ones, as fs_weight).
 * The lanes past the row hold 0 with w and 1 without: a caller multiplies them by a
 * value that is 0 there (a zero-filled load) or stores them masked. */
static inline FS_VEC FS_FN(fs_vweight)(const FS_T *w, Py_ssize_t j, Py_ssize_t count) {
    return w ? FS_FN(fs_vload)(w + j, count, 0) : (FS_VEC){0} + (FS_T)1;
}

/* 1 in the lanes below count, 0 in the others */
static inline FS_VEC FS_FN(fs_vin_row)(Py_ssize_t count) {
    return -__builtin_convertvector(FS_FN(fs_lane_numbers)() < (FS_I)count, FS_VEC);
}

/* Runs the statement for j = 0, L, 2L, ... < n (L lanes). A row of one vector gets the
 * statement once, without the loop: GCC's unrolled loop (-funroll-loops) put a dispatch
 * on the trip count in front of every short row (C = 10, float32, 2 threads, kernel:
 * CE + grad 3.36 -> 2.46 ns/elem, softmax 2.53 -> 1.98; measured side by side). */
#define FS_FOR_EACH_VECTOR(n, ...)                                                    \
    if ((n) <= FS_LANES) { const Py_ssize_t j = 0; __VA_ARGS__; }                     \
    else for (Py_ssize_t j = 0; j < (n); j += FS_LANES) { __VA_ARGS__; }

/* out = row - max(row) (out may be row); returns the max. A NaN may or may not be
 * the max; either way the row's exp sum, and so every result of the row, is NaN. */
static inline FS_T FS_FN(fs_short_shift_max)(const FS_T *row, Py_ssize_t n, FS_T *out) {
    FS_VEC acc = FS_FN(fs_vload)(row, n, -INFINITY);
    for (Py_ssize_t j = FS_LANES; j < n; j += FS_LANES)
        acc = FS_FN(fs_vmax)(acc, FS_FN(fs_vload)(row + j, n - j, -INFINITY));
    FS_T m = FS_FN(fs_vreduce_max)(acc);
    FS_FOR_EACH_VECTOR(n,
        FS_FN(fs_vstore)(out + j, n - j, FS_FN(fs_vload)(row + j, n - j, 0) - m));
    return m;
}

/* x = exp(x) over a whole block of shifted rows x - max. Kept apart from the per-row
 * reductions: fused into them, the exp of each row waited on its max and the sum on the
 * exp (C = 10 logsumexp, one thread: 2.9 ns/elem fused, 1.7-2.6 in passes). */
static inline void FS_FN(fs_exp_array)(FS_T *x, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) x[i] = FS_FN(fs_exp_core)(x[i]);
}

/* sum(a * b); b NULL stands for ones (sum(a)), as for class weights */
static inline double FS_FN(fs_short_dot)(const FS_T *a, const FS_T *b, Py_ssize_t n) {
    FS_VEC acc = {0};
    FS_FOR_EACH_VECTOR(n, acc += FS_FN(fs_vload)(a + j, n - j, 0)
                                 * FS_FN(fs_vweight)(b, j, n - j));
    return FS_FN(fs_vreduce_add)(acc);
}

/* For probability targets t' = keep * t + eps, with z = row - m (w NULL: ones): sets
 * *total_wt = sum(w t') and *shifted_wt = sum(w t' z). */
static inline void FS_FN(fs_short_prob_sums)(const FS_T *row, FS_T m, const FS_T *t,
                                             const FS_T *w, Py_ssize_t n, FS_T keep, FS_T eps,
                                             double *total_wt, double *shifted_wt) {
    FS_VEC total = {0}, shifted = {0};
    FS_FOR_EACH_VECTOR(n,
        FS_VEC wt = FS_FN(fs_vweight)(w, j, n - j)  /* t' = 0 past the row */
                    * (FS_FN(fs_vload)(t + j, n - j, 0) * keep + eps * FS_FN(fs_vin_row)(n - j));
        total += wt;
        shifted += wt * (FS_FN(fs_vload)(row + j, n - j, 0) - m));
    *total_wt = FS_FN(fs_vreduce_add)(total);
    *shifted_wt = FS_FN(fs_vreduce_add)(shifted);
}

/* out = e * k - f * w (w NULL: ones; f = 0 leaves e * k), then out[y] -= c (c = 0: none).
 * The one-hot term is a lane compare (-1 or 0 per lane): a scalar read-modify-write
 * of the stored row stalls on store forwarding (prototype, C = 10 CE + grad, one
 * thread: 3.5 -> 2.6 ns/elem). */
static inline void FS_FN(fs_short_rescale)(const FS_T *e, FS_T k, FS_T f, const FS_T *w,
                                           int64_t y, FS_T c, FS_T *out, Py_ssize_t n) {
    FS_FOR_EACH_VECTOR(n,
        FS_VEC v = FS_FN(fs_vload)(e + j, n - j, 0) * k;
        v -= f * FS_FN(fs_vweight)(w, j, n - j);
        v += c * __builtin_convertvector(FS_FN(fs_lane_at)(j, y), FS_VEC);
        FS_FN(fs_vstore)(out + j, n - j, v));
}

/* out = (row - m) - c */
static inline void FS_FN(fs_short_shift)(const FS_T *row, FS_T m, FS_T c, FS_T *out,
                                         Py_ssize_t n) {
    FS_FOR_EACH_VECTOR(n,
        FS_FN(fs_vstore)(out + j, n - j, (FS_FN(fs_vload)(row + j, n - j, 0) - m) - c));
}

/* out = e * k - f * w * (t * keep + eps) (w NULL: ones) */
static inline void FS_FN(fs_short_prob_rescale)(const FS_T *e, const FS_T *t, const FS_T *w,
                                                FS_T k, FS_T f, FS_T keep, FS_T eps, FS_T *out,
                                                Py_ssize_t n) {
    FS_FOR_EACH_VECTOR(n,
        FS_FN(fs_vstore)(out + j, n - j, FS_FN(fs_vload)(e + j, n - j, 0) * k - f
                         * FS_FN(fs_vweight)(w, j, n - j)
                         * (FS_FN(fs_vload)(t + j, n - j, 0) * keep + eps)));
}

/* x[0 : n] into out[0 : width], width a whole number of vectors (width - n < FS_LANES),
 * and fill after n: a short row padded for the long-row loops (_kernels.pyx's
 * _jsd_padded_rows). Masked vectors, where memcpy and a fill loop cost a libc call and a
 * scalar loop per row. */
static inline void FS_FN(fs_short_pad)(const FS_T *x, Py_ssize_t n, FS_T fill, FS_T *out,
                                       Py_ssize_t width) {
    for (Py_ssize_t j = 0; j < width; j += FS_LANES)
        FS_FN(fs_vstore)(out + j, FS_LANES, FS_FN(fs_vload)(x + j, n - j, fill));
}

/* out[0 : n] = x[0 : n], x padded as by fs_short_pad */
static inline void FS_FN(fs_short_unpad)(const FS_T *x, Py_ssize_t n, FS_T *out) {
    FS_FOR_EACH_VECTOR(n, FS_FN(fs_vstore)(out + j, n - j, FS_FN(fs_vload)(x + j, FS_LANES, 0)));
}

/* Entropy of a short row, with e = exp(row - m) and d = max(row - m, floor): sum(e d) */
static inline double FS_FN(fs_short_entropy_dot)(const FS_T *e, const FS_T *row, FS_T m,
                                                 Py_ssize_t n) {
    const FS_VEC floor = (FS_VEC){0} + (FS_T)FS_ENTROPY_FLOOR;
    FS_VEC acc = {0};
    FS_FOR_EACH_VECTOR(n,
        FS_VEC d = FS_FN(fs_vmax)(FS_FN(fs_vload)(row + j, n - j, 0) - m, floor);
        acc += FS_FN(fs_vload)(e + j, n - j, 0) * d);
    return FS_FN(fs_vreduce_add)(acc);
}

/* out = k * e * (mean_d - d): the entropy gradient of a short row (out may be row) */
static inline void FS_FN(fs_short_entropy_grad)(const FS_T *e, const FS_T *row, FS_T m, FS_T k,
                                                FS_T mean_d, FS_T *out, Py_ssize_t n) {
    const FS_VEC floor = (FS_VEC){0} + (FS_T)FS_ENTROPY_FLOOR;
    FS_FOR_EACH_VECTOR(n,
        FS_VEC d = FS_FN(fs_vmax)(FS_FN(fs_vload)(row + j, n - j, 0) - m, floor);
        FS_FN(fs_vstore)(out + j, n - j, k * FS_FN(fs_vload)(e + j, n - j, 0) * (mean_d - d)));
}

/* ---- the vector helpers of the narrow rows (narrow_typed.h), per compute type ---- */
#if defined(__GNUC__) && !defined(__clang__)
/* log2(L) rounds of two-source shuffles; round w swaps the off-diagonal blocks of
 * width w of each pair of vectors (i, i + w). */
static inline void FS_FN(fs_transpose)(FS_VEC *v) {
    #pragma GCC unroll 8
    for (int round = 1; round <= __builtin_ctz(FS_LANES); round++) {
        const Py_ssize_t w = FS_LANES >> round;
        FS_INDEX_VEC low, high;
        for (Py_ssize_t l = 0; l < FS_LANES; l++) {
            low[l] = (l & w) ? FS_LANES + l - w : l;
            high[l] = (l & w) ? FS_LANES + l : l + w;
        }
        #pragma GCC unroll 16
        for (Py_ssize_t i = 0; i < FS_LANES; i++) {
            if (i & w) continue;
            FS_VEC a = v[i], b = v[i + w];
            v[i] = __builtin_shuffle(a, b, low);
            v[i + w] = __builtin_shuffle(a, b, high);
        }
    }
}
#else  /* compilers without GCC's __builtin_shuffle: lane by lane */
static inline void FS_FN(fs_transpose)(FS_VEC *v) {
    FS_VEC t[FS_LANES];
    for (Py_ssize_t i = 0; i < FS_LANES; i++)
        for (Py_ssize_t j = 0; j < FS_LANES; j++) t[j][i] = v[i][j];
    memcpy(v, t, sizeof t);
}
#endif

/* mask ? a : b, lane by lane (mask lanes -1 or 0) */
static inline FS_VEC FS_FN(fs_vselect)(FS_INDEX_VEC mask, FS_VEC a, FS_VEC b) {
    return (FS_VEC)(((FS_INDEX_VEC)a & mask) | ((FS_INDEX_VEC)b & ~mask));
}

/* log of each lane (a positive normal value, +inf or NaN: a row sum, a JSD mixture) */
static inline FS_VEC FS_FN(fs_narrow_log)(FS_VEC sum) {
    FS_VEC out = sum;  /* every lane is overwritten */
    #pragma omp simd
    for (Py_ssize_t i = 0; i < FS_LANES; i++) out[i] = FS_LOG_NORMAL(sum[i]);
    return out;
}

/* out[0 : count] = lanes 0 .. count - 1 of v, widened to double */
static inline void FS_FN(fs_store_lanes)(double *out, Py_ssize_t count, FS_VEC v) {
    if (count == FS_LANES) {  /* whole vectors */
        for (Py_ssize_t i = 0; i < FS_LANES; i++) out[i] = v[i];
    } else {
        for (Py_ssize_t i = 0; i < count; i++) out[i] = v[i];
    }
}

#endif  /* !FS_LOWP */

#undef FS_FOR_EACH_VECTOR
#undef FS_LANES
#undef FS_INDEX_VEC
#undef FS_VEC
