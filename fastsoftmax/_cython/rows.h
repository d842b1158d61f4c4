/* Row helpers of the Cython backend: a vectorisable exp and the per-row loops.
 *
 * The same algorithms as fastsoftmax/_numba/_math.py. Each helper is written once
 * as a macro and instantiated for float (suffix f) and double (suffix d).
 * Reductions use `#pragma omp simd reduction`, which lets GCC split them into vector
 * lanes under -fopenmp-simd without -ffast-math (which would break NaN/inf
 * semantics and re-round the two-step ln2 reduction in exp).
 */
#ifndef FASTSOFTMAX_ROWS_H
#define FASTSOFTMAX_ROWS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Partial sums run in the row's type over blocks, added into a double total. */
#define FS_BLOCK 1024
/* Entropy: x - max is clamped to this, where exp is 0, so that a -inf logit adds 0 (not
 * 0 * -inf = NaN) to the entropy and gets a 0 gradient. */
#define FS_ENTROPY_FLOOR (-1e30)

/* exp(x) = 2^k * P(r), r = x - k ln2 (Cody-Waite split of ln2), |r| <= ln2/2.
 * float: degree-6 minimax polynomial (Cephes expf coefficients), ~1 ulp.
 * double: Taylor series to degree 12, truncation < 2e-16. 2^k is built in the
 * exponent bits from the float value (k + bias) * 2^mantissa, exact in the type.
 *
 * fs_exp_core_* takes x in [-inf, hi] or NaN (NaN out; +inf gives NaN too): no overflow
 * handling. The loops call it on x - max, which is <= 0 once the row max is finite, or
 * NaN or +inf only in a row holding a NaN (which the max may miss), whose sum is then
 * NaN as it should; dropping the checks made the exp-sum loop 0.90 -> 0.65 ns/elem on
 * one core (measured). fs_exp_* handles every input. */
static inline float fs_exp_core_f(float x) {
    const float lo = -126.0f * 0.69314718f;
    float xc = x < lo ? lo : x;  /* a NaN stays NaN (x > lo ? x : lo would clamp it) */
    float k = floorf(xc * 1.44269504f + 0.5f);
    float r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (int32_t)(k * 8388608.0f + 127.0f * 8388608.0f);  /* one FMA, exact */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < lo ? 0.0f : p * scale;  /* -inf and results below the normal range: 0 */
}

static inline double fs_exp_core_d(double x) {
    const double lo = -1022.0 * 0.6931471805599453;
    double xc = x < lo ? lo : x;
    double k = floor(xc * 1.4426950408889634 + 0.5);
    double r = (xc - k * 0.693359375) - k * -2.12194440054690583e-4;
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits = (int64_t)(k * 4503599627370496.0 + 1023.0 * 4503599627370496.0);
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < lo ? 0.0 : p * scale;
}

#define FS_DEFINE_EXP(T, S, HI)                                                       \
static inline T fs_exp_##S(T x) { return x > (HI) ? (T)INFINITY : fs_exp_core_##S(x); }
FS_DEFINE_EXP(float, f, 127.0f * 0.69314718f)
FS_DEFINE_EXP(double, d, 1023.0 * 0.6931471805599453)

/* log(x) for the exp sums of the block kernels, where libm's scalar log was 17% of the
 * C = 10 cross-entropy time; this one vectorises over a block's rows. x = 2^k f with
 * f in [sqrt(1/2), sqrt(2)), log f = 2 atanh(t) = 2 (t + t^3/3 + ... + t^23/23) with
 * t = (f - 1) / (f + 1), |t| <= 0.172 (truncation < 1e-18); k ln2 in two parts.
 * Normal x, 0 (-inf), +inf and NaN; subnormal x is not expected (sums are >= 1). */
static inline double fs_log_d(double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    double k = (double)(int64_t)(bits >> 52) - 1023.0;
    uint64_t mantissa_bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    double f;
    memcpy(&f, &mantissa_bits, sizeof f);  /* f in [1, 2) */
    int high = f > 1.4142135623730951;
    f = high ? 0.5 * f : f;
    k = high ? k + 1.0 : k;
    double t = (f - 1.0) / (f + 1.0), t2 = t * t;
    double p = 1.0 / 23;
    p = p * t2 + 1.0 / 21;
    p = p * t2 + 1.0 / 19;
    p = p * t2 + 1.0 / 17;
    p = p * t2 + 1.0 / 15;
    p = p * t2 + 1.0 / 13;
    p = p * t2 + 1.0 / 11;
    p = p * t2 + 1.0 / 9;
    p = p * t2 + 1.0 / 7;
    p = p * t2 + 1.0 / 5;
    p = p * t2 + 1.0 / 3;
    double y = k * 6.93147180369123816490e-01 + (2.0 * t + (2.0 * t * t2 * p
               + k * 1.90821492927058770002e-10));
    y = x > 0 ? y : (x == 0 ? -INFINITY : NAN);
    return x == INFINITY ? x : y;  /* NaN stays NaN through the compare-selects */
}

/* out[r] = log(x[r]) */
static inline void fs_log_array(const double *x, double *out, Py_ssize_t n) {
    _Pragma("omp simd")
    for (Py_ssize_t r = 0; r < n; r++) out[r] = fs_log_d(x[r]);
}

#define FS_MIN(a, b) ((a) < (b) ? (a) : (b))

#define FS_DEFINE_ROWS(T, S)                                                          \
/* Largest element; NaN if the row holds a NaN. */                                    \
static inline T fs_row_max_##S(const T *row, Py_ssize_t n) {                          \
    T m = row[0];                                                                     \
    int nan = 0;                                                                      \
    _Pragma("omp simd reduction(max:m) reduction(|:nan)")                            \
    for (Py_ssize_t j = 0; j < n; j++) {                                              \
        m = row[j] > m ? row[j] : m;                                                  \
        nan |= row[j] != row[j];                                                      \
    }                                                                                 \
    return nan ? (T)NAN : m;                                                          \
}                                                                                     \
/* A row whose max is NaN or +-inf: its exponentials (out, if given) are NaN. */      \
static inline double fs_nan_row_##S(T *out, Py_ssize_t n) {                           \
    if (out) for (Py_ssize_t j = 0; j < n; j++) out[j] = (T)NAN;                      \
    return NAN;                                                                       \
}                                                                                     \
/* sum(exp(row - m)), NaN when m is not finite; with out, also out = exp(row - m)  \
 * (out may be row). Storing the exponentials lets the write pass rescale them       \
 * instead of computing exp again: CE + grad 0.96 -> 0.81 ns/elem at 512 x 32768.   */\
static inline double fs_row_sumexp_##S(const T *row, Py_ssize_t n, T m, T *out) {     \
    if (!isfinite(m)) return fs_nan_row_##S(out, n);                                  \
    double total = 0.0;                                                               \
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {                        \
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);                                \
        T acc = 0;                                                                    \
        if (out) {                                                                    \
            _Pragma("omp simd reduction(+:acc)")                                      \
            for (Py_ssize_t j = start; j < stop; j++) {                               \
                T e = fs_exp_core_##S(row[j] - m);                                    \
                out[j] = e;                                                           \
                acc += e;                                                             \
            }                                                                         \
        } else {                                                                      \
            _Pragma("omp simd reduction(+:acc)")                                      \
            for (Py_ssize_t j = start; j < stop; j++) acc += fs_exp_core_##S(row[j] - m); \
        }                                                                             \
        total += acc;                                                                 \
    }                                                                                 \
    return total;                                                                     \
}                                                                                     \
/* sum(a * b), or sum(a) when b is NULL */                                            \
static inline double fs_row_dot_##S(const T *a, const T *b, Py_ssize_t n) {           \
    double total = 0.0;                                                               \
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {                        \
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);                                \
        T acc = 0;                                                                    \
        if (b) {                                                                      \
            _Pragma("omp simd reduction(+:acc)")                                      \
            for (Py_ssize_t j = start; j < stop; j++) acc += a[j] * b[j];             \
        } else {                                                                      \
            _Pragma("omp simd reduction(+:acc)")                                      \
            for (Py_ssize_t j = start; j < stop; j++) acc += a[j];                    \
        }                                                                             \
        total += acc;                                                                 \
    }                                                                                 \
    return total;                                                                     \
}                                                                                     \
/* sum(w * (row - m)) */                                                              \
static inline double fs_row_shifted_dot_##S(const T *w, const T *row, Py_ssize_t n,   \
                                            T m) {                                    \
    double total = 0.0;                                                               \
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {                        \
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);                                \
        T acc = 0;                                                                    \
        _Pragma("omp simd reduction(+:acc)")                                          \
        for (Py_ssize_t j = start; j < stop; j++) acc += w[j] * (row[j] - m);         \
        total += acc;                                                                 \
    }                                                                                 \
    return total;                                                                     \
}                                                                                     \
/* One pass for probability targets t' = keep * t + eps: returns sum(exp(row - m)),  \
 * sets *total_wt = sum(w t') and *shifted_wt = sum(w t' (row - m)); with out, also   \
 * out = exp(row - m) (out may be row). All three are NaN when m is not finite.      */\
static inline double fs_prob_sums_##S(const T *row, const T *t, const T *w,           \
                                      Py_ssize_t n, T m, T keep, T eps, T *out,       \
                                      double *total_wt, double *shifted_wt) {         \
    if (!isfinite(m)) {                                                               \
        *total_wt = *shifted_wt = NAN;                                                \
        return fs_nan_row_##S(out, n);                                                \
    }                                                                                 \
    double sum_exp = 0.0, twt = 0.0, swt = 0.0;                                       \
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {                        \
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);                                \
        T acc_exp = 0, acc_wt = 0, acc_shifted = 0;                                   \
        _Pragma("omp simd reduction(+:acc_exp,acc_wt,acc_shifted)")                   \
        for (Py_ssize_t j = start; j < stop; j++) {                                   \
            T z = row[j] - m;                                                         \
            T wt = w[j] * (t[j] * keep + eps);                                        \
            T e = fs_exp_core_##S(z);                                                 \
            if (out) out[j] = e;                                                      \
            acc_exp += e;                                                             \
            acc_wt += wt;                                                             \
            acc_shifted += wt * z;                                                    \
        }                                                                             \
        sum_exp += acc_exp; twt += acc_wt; swt += acc_shifted;                        \
    }                                                                                 \
    *total_wt = twt; *shifted_wt = swt;                                               \
    return sum_exp;                                                                   \
}                                                                                     \
/* out = out * k - f * w (w may be NULL: no weight term) */                           \
static inline void fs_rescale_##S(T *out, T k, T f, const T *w, Py_ssize_t n) {       \
    if (w) {                                                                          \
        _Pragma("omp simd")                                                           \
        for (Py_ssize_t j = 0; j < n; j++) out[j] = out[j] * k - f * w[j];            \
    } else {                                                                          \
        _Pragma("omp simd")                                                           \
        for (Py_ssize_t j = 0; j < n; j++) out[j] = out[j] * k;                       \
    }                                                                                 \
}                                                                                     \
/* out = out * k - f * w * (t * keep + eps) */                                        \
static inline void fs_prob_rescale_##S(T *out, const T *t, const T *w, T k, T f,      \
                                       T keep, T eps, Py_ssize_t n) {                 \
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t j = 0; j < n; j++)                                                \
        out[j] = out[j] * k - f * w[j] * (t[j] * keep + eps);                         \
}                                                                                     \
/* out = (row - m) - log_sum */                                                       \
static inline void fs_shift_##S(const T *row, T m, T log_sum, T *out, Py_ssize_t n) { \
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t j = 0; j < n; j++) out[j] = (row[j] - m) - log_sum;               \
}                                                                                     \
/* out = y * (dy - dot) */                                                            \
static inline void fs_softmax_bwd_##S(const T *y, const T *dy, T dot, T *out,         \
                                      Py_ssize_t n) {                                 \
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t j = 0; j < n; j++) out[j] = y[j] * (dy[j] - dot);                 \
}                                                                                     \
/* out = dy - exp(logp) * total */                                                    \
static inline void fs_log_softmax_bwd_##S(const T *logp, const T *dy, T total,        \
                                          T *out, Py_ssize_t n) {                     \
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t j = 0; j < n; j++) out[j] = dy[j] - fs_exp_##S(logp[j]) * total;  \
}                                                                                     \
/* Entropy, with d = max(row - m, FS_ENTROPY_FLOOR) and e = exp(d) (formulas in       \
 * fastsoftmax/_numba/_entropy.py): returns sum(e), sets *sum_ed = sum(e d); with out, \
 * also out = d (out may be row). m is the row's finite max. */                       \
static inline double fs_entropy_sums_##S(const T *row, Py_ssize_t n, T m, T *out,     \
                                         double *sum_ed) {                            \
    double sum_e = 0.0, total_ed = 0.0;                                               \
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {                        \
        Py_ssize_t stop = FS_MIN(n, start + FS_BLOCK);                                \
        T acc_e = 0, acc_ed = 0;                                                      \
        _Pragma("omp simd reduction(+:acc_e,acc_ed)")                                 \
        for (Py_ssize_t j = start; j < stop; j++) {                                   \
            T d = row[j] - m;                                                         \
            d = d > (T)FS_ENTROPY_FLOOR ? d : (T)FS_ENTROPY_FLOOR;                    \
            T e = fs_exp_core_##S(d);                                                 \
            if (out) out[j] = d;                                                      \
            acc_e += e;                                                               \
            acc_ed += e * d;                                                          \
        }                                                                             \
        sum_e += acc_e; total_ed += acc_ed;                                           \
    }                                                                                 \
    *sum_ed = total_ed;                                                               \
    return sum_e;                                                                     \
}                                                                                     \
/* out = k * exp(out) * (mean_d - out), out holding d: the entropy gradient */        \
static inline void fs_entropy_grad_##S(T *out, Py_ssize_t n, T k, T mean_d) {         \
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t j = 0; j < n; j++) out[j] = k * fs_exp_core_##S(out[j]) * (mean_d - out[j]); \
}

FS_DEFINE_ROWS(float, f)
FS_DEFINE_ROWS(double, d)

/* ---- short rows (the block kernels, C < 128): a row is a few vectors ----
 * With one row of 10 classes per task, an omp simd loop runs entirely in its scalar
 * epilogue; transposing blocks of rows (the Numba backend's way) cost two strided
 * scalar copies. Here each row is loaded as whole vectors with a masked tail, reduced
 * across lanes, and stored with a masked tail (kernel, 2 threads, float32, CE + grad:
 * C = 10 2.07 -> 1.74 ns/elem, C = 50 1.47 -> 0.98; measured side by side with the
 * transposed build; the threshold between blocks and rows is in _kernels.pyx).
 * The helpers are written once on GCC vector types; the vector width and the masked
 * loads and stores come from the instruction set: AVX-512 (64 bytes, mask registers),
 * AVX2 (32 bytes, vmaskmov), otherwise 16 bytes filled by memcpy. */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__BMI2__)
#define FS_VEC_BYTES 64
#elif defined(__AVX2__)
#define FS_VEC_BYTES 32
#else
#define FS_VEC_BYTES 16
#endif
typedef float fs_vec_f __attribute__((vector_size(FS_VEC_BYTES)));
typedef double fs_vec_d __attribute__((vector_size(FS_VEC_BYTES)));
typedef int32_t fs_index_vec_f __attribute__((vector_size(FS_VEC_BYTES)));
typedef int64_t fs_index_vec_d __attribute__((vector_size(FS_VEC_BYTES)));
#define FS_LANES_f ((Py_ssize_t)(FS_VEC_BYTES / sizeof(float)))
#define FS_LANES_d ((Py_ssize_t)(FS_VEC_BYTES / sizeof(double)))

#define FS_DEFINE_LANE_INDEX(T, S, I)                                                 \
/* {0, 1, ..., L - 1}: a constant. Built as first + lane instead, GCC filled the       \
 * vector lane by lane (16 masked broadcasts per vector; 25% of C = 100 CE + grad).   */\
static inline fs_index_vec_##S fs_lane_numbers_##S(void) {                            \
    fs_index_vec_##S v;                                                               \
    for (Py_ssize_t l = 0; l < FS_LANES_##S; l++) v[l] = (I)l;                        \
    return v;                                                                         \
}                                                                                     \
/* -1 in the lanes whose element index (first + lane) is below count, 0 elsewhere */  \
static inline fs_index_vec_##S fs_lanes_below_##S(Py_ssize_t first, Py_ssize_t count) { \
    return fs_lane_numbers_##S() < (I)(count - first);                                \
}                                                                                     \
/* -1 in the lane whose element index (first + lane) is i, 0 elsewhere */             \
static inline fs_index_vec_##S fs_lane_at_##S(Py_ssize_t first, int64_t i) {          \
    return fs_lane_numbers_##S() == (I)(i - first);                                   \
}
FS_DEFINE_LANE_INDEX(float, f, int32_t)
FS_DEFINE_LANE_INDEX(double, d, int64_t)

#if FS_VEC_BYTES == 64
#include <immintrin.h>
/* Lanes [0, count) of a vector as a bit mask; count may exceed the lane count but must
 * be < 256 (bzhi reads 8 bits of it; rows here are < 128). One bzhi instead of a compare
 * and a select: C = 10 CE + grad 0.79 -> 0.71 of the time of the same code without it. */
#define FS_LANE_MASK(S, count) _bzhi_u32((1u << FS_LANES_##S) - 1, (unsigned)(count))
#define FS_DEFINE_LANES(T, S, P)                                                      \
/* p[0 : count] into the low lanes, fill in the others; never reads past p[count-1] */\
static inline fs_vec_##S fs_vload_##S(const T *p, Py_ssize_t count, T fill) {         \
    return (fs_vec_##S)_mm512_mask_loadu_##P(_mm512_set1_##P(fill),                   \
                                              FS_LANE_MASK(S, count), p);             \
}                                                                                     \
static inline void fs_vstore_##S(T *p, Py_ssize_t count, fs_vec_##S v) {              \
    _mm512_mask_storeu_##P(p, FS_LANE_MASK(S, count), v);                             \
}                                                                                     \
static inline fs_vec_##S fs_vmax_##S(fs_vec_##S a, fs_vec_##S b) {                    \
    return (fs_vec_##S)_mm512_max_##P(a, b);                                          \
}                                                                                     \
static inline T fs_vreduce_max_##S(fs_vec_##S v) { return _mm512_reduce_max_##P(v); } \
static inline T fs_vreduce_add_##S(fs_vec_##S v) { return _mm512_reduce_add_##P(v); }
#else
#if FS_VEC_BYTES == 32
#include <immintrin.h>
#define FS_DEFINE_LOAD_STORE(T, S, P)                                                 \
/* p[0 : count] into the low lanes, fill in the others; never reads past p[count-1] */\
static inline fs_vec_##S fs_vload_##S(const T *p, Py_ssize_t count, T fill) {         \
    fs_index_vec_##S in_row = fs_lanes_below_##S(0, count);                           \
    return (fs_vec_##S)_mm256_blendv_##P(_mm256_set1_##P(fill),                       \
                                         _mm256_maskload_##P(p, (__m256i)in_row),     \
                                         (fs_vec_##S)in_row);                         \
}                                                                                     \
static inline void fs_vstore_##S(T *p, Py_ssize_t count, fs_vec_##S v) {              \
    _mm256_maskstore_##P(p, (__m256i)fs_lanes_below_##S(0, count), v);               \
}
#else
#define FS_DEFINE_LOAD_STORE(T, S, P)                                                 \
/* memcpy of a variable length: libc's copy, faster here than a loop over the lanes */ \
static inline fs_vec_##S fs_vload_##S(const T *p, Py_ssize_t count, T fill) {         \
    fs_vec_##S v = (fs_vec_##S){0} + fill;                                            \
    memcpy(&v, p, (size_t)FS_MIN(count, FS_LANES_##S) * sizeof(T));                   \
    return v;                                                                         \
}                                                                                     \
static inline void fs_vstore_##S(T *p, Py_ssize_t count, fs_vec_##S v) {              \
    memcpy(p, &v, (size_t)FS_MIN(count, FS_LANES_##S) * sizeof(T));                   \
}
#endif
#define FS_DEFINE_LANES(T, S, P)                                                      \
FS_DEFINE_LOAD_STORE(T, S, P)                                                         \
static inline fs_vec_##S fs_vmax_##S(fs_vec_##S a, fs_vec_##S b) {                    \
    for (Py_ssize_t l = 0; l < FS_LANES_##S; l++) a[l] = b[l] > a[l] ? b[l] : a[l];   \
    return a;                                                                         \
}                                                                                     \
/* Lane reductions as a tree of halves (GCC turns the half loops into shuffles); a   \
 * loop over the lanes was one dependent add per lane.                               */\
static inline T fs_vreduce_max_##S(fs_vec_##S v) {                                    \
    for (Py_ssize_t half = FS_LANES_##S / 2; half > 0; half /= 2)                     \
        for (Py_ssize_t l = 0; l < half; l++) v[l] = v[l + half] > v[l] ? v[l + half] : v[l]; \
    return v[0];                                                                      \
}                                                                                     \
static inline T fs_vreduce_add_##S(fs_vec_##S v) {                                    \
    for (Py_ssize_t half = FS_LANES_##S / 2; half > 0; half /= 2)                     \
        for (Py_ssize_t l = 0; l < half; l++) v[l] += v[l + half];                    \
    return v[0];                                                                      \
}
#endif
FS_DEFINE_LANES(float, f, ps)
FS_DEFINE_LANES(double, d, pd)

/* Runs the statement for j = 0, L, 2L, ... < n (L lanes). A row of one vector gets the
 * statement once, without the loop: GCC's unrolled loop (-funroll-loops) put a dispatch
 * on the trip count in front of every short row (C = 10, float32, 2 threads, kernel:
 * CE + grad 3.36 -> 2.46 ns/elem, softmax 2.53 -> 1.98; measured side by side). */
#define FS_FOR_EACH_VECTOR(S, n, ...)                                                 \
    if ((n) <= FS_LANES_##S) {                                                        \
        const Py_ssize_t j = 0;                                                       \
        __VA_ARGS__;                                                                  \
    } else {                                                                          \
        for (Py_ssize_t j = 0; j < (n); j += FS_LANES_##S) { __VA_ARGS__; }           \
    }

#define FS_DEFINE_LANE_MAP(S, NAME, FUNC)                                             \
static inline fs_vec_##S NAME(fs_vec_##S v) {                                         \
    fs_vec_##S out = v;  /* every lane is overwritten; silences -Wmaybe-uninitialized */\
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t l = 0; l < FS_LANES_##S; l++) out[l] = FUNC(v[l]);                \
    return out;                                                                       \
}

#define FS_DEFINE_SHORT_ROWS(T, S)                                                    \
/* out = row - max(row) (out may be row); returns the max. A NaN may or may not be    \
 * the max; either way the row's exp sum, and so every result of the row, is NaN.    */\
static inline T fs_short_shift_max_##S(const T *row, Py_ssize_t n, T *out) {          \
    fs_vec_##S acc = fs_vload_##S(row, n, -INFINITY);                                 \
    for (Py_ssize_t j = FS_LANES_##S; j < n; j += FS_LANES_##S)                       \
        acc = fs_vmax_##S(acc, fs_vload_##S(row + j, n - j, -INFINITY));              \
    T m = fs_vreduce_max_##S(acc);                                                    \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vstore_##S(out + j, n - j, fs_vload_##S(row + j, n - j, 0) - m))           \
    return m;                                                                         \
}                                                                                     \
/* x = exp(x) over a whole block of shifted rows x - max. Kept apart from the per-row reductions: fused into  \
 * them, the exp of each row waited on its max and the sum on the exp (C = 10         \
 * logsumexp, one thread: 2.9 ns/elem fused, 1.7-2.6 in passes).                     */\
static inline void fs_exp_array_##S(T *x, Py_ssize_t n) {                             \
    _Pragma("omp simd")                                                               \
    for (Py_ssize_t i = 0; i < n; i++) x[i] = fs_exp_core_##S(x[i]);                  \
}                                                                                     \
/* sum(a * b), or sum(a) when b is NULL */                                            \
static inline double fs_short_dot_##S(const T *a, const T *b, Py_ssize_t n) {         \
    fs_vec_##S acc = {0};                                                             \
    if (b) {                                                                          \
        FS_FOR_EACH_VECTOR(S, n,                                                      \
            acc += fs_vload_##S(a + j, n - j, 0) * fs_vload_##S(b + j, n - j, 0))     \
    } else {                                                                          \
        FS_FOR_EACH_VECTOR(S, n, acc += fs_vload_##S(a + j, n - j, 0))                \
    }                                                                                 \
    return fs_vreduce_add_##S(acc);                                                   \
}                                                                                     \
/* For probability targets t' = keep * t + eps, with z = row - m: sets               \
 * *total_wt = sum(w t') and *shifted_wt = sum(w t' z).                              */\
static inline void fs_short_prob_sums_##S(const T *row, T m, const T *t, const T *w,  \
                                          Py_ssize_t n, T keep, T eps,                \
                                          double *total_wt, double *shifted_wt) {     \
    fs_vec_##S total = {0}, shifted = {0};                                            \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vec_##S wt = fs_vload_##S(w + j, n - j, 0)                                 \
                        * (fs_vload_##S(t + j, n - j, 0) * keep + eps);               \
        total += wt;                                                                  \
        shifted += wt * (fs_vload_##S(row + j, n - j, 0) - m))                        \
    *total_wt = fs_vreduce_add_##S(total);                                            \
    *shifted_wt = fs_vreduce_add_##S(shifted);                                        \
}                                                                                     \
/* out = e * k - f * w (no w term when w is NULL), then out[y] -= c if 0 <= y < n.   \
 * The one-hot term is a lane compare (-1 or 0 per lane): a scalar read-modify-write  \
 * of the stored row stalls on store forwarding (prototype, C = 10 CE + grad, one     \
 * thread: 3.5 -> 2.6 ns/elem).                                                      */\
static inline void fs_short_rescale_##S(const T *e, T k, T f, const T *w, int64_t y,  \
                                        T c, T *out, Py_ssize_t n) {                  \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vec_##S v = fs_vload_##S(e + j, n - j, 0) * k;                             \
        if (w) v -= f * fs_vload_##S(w + j, n - j, 0);                                \
        v += c * __builtin_convertvector(fs_lane_at_##S(j, y), fs_vec_##S);           \
        fs_vstore_##S(out + j, n - j, v))                                             \
}                                                                                     \
/* out = (row - m) - c */                                                             \
static inline void fs_short_shift_##S(const T *row, T m, T c, T *out, Py_ssize_t n) { \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vstore_##S(out + j, n - j, (fs_vload_##S(row + j, n - j, 0) - m) - c))     \
}                                                                                     \
/* out = e * k - f * w * (t * keep + eps) */                                          \
static inline void fs_short_prob_rescale_##S(const T *e, const T *t, const T *w, T k, \
                                             T f, T keep, T eps, T *out,              \
                                             Py_ssize_t n) {                          \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vstore_##S(out + j, n - j, fs_vload_##S(e + j, n - j, 0) * k - f           \
                      * fs_vload_##S(w + j, n - j, 0)                                 \
                      * (fs_vload_##S(t + j, n - j, 0) * keep + eps)))                \
}                                                                                     \
/* softmax backward of one short row: out = y * (dy - sum(y * dy)) */                 \
static inline void fs_short_softmax_bwd_##S(const T *y, const T *dy, T *out,          \
                                            Py_ssize_t n) {                           \
    T dot = (T)fs_short_dot_##S(y, dy, n);                                            \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vstore_##S(out + j, n - j, fs_vload_##S(y + j, n - j, 0)                   \
                      * (fs_vload_##S(dy + j, n - j, 0) - dot)))                      \
}                                                                                     \
/* exp of every lane (fs_exp_##S, fs_exp_core_##S): GCC turns the loop into the   \
 * vector code of the scalar function alone, registers in, registers out (checked in  \
 * the assembly).                                                                    */\
FS_DEFINE_LANE_MAP(S, fs_vexp_##S, fs_exp_##S)                                        \
FS_DEFINE_LANE_MAP(S, fs_vexp_core_##S, fs_exp_core_##S)                           \
/* log_softmax backward of one short row: out = dy - exp(logp) * sum(dy) */          \
static inline void fs_short_log_softmax_bwd_##S(const T *logp, const T *dy, T *out,   \
                                                Py_ssize_t n) {                       \
    T total = (T)fs_short_dot_##S(dy, NULL, n);                                       \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vstore_##S(out + j, n - j, fs_vload_##S(dy + j, n - j, 0)                  \
                      - fs_vexp_##S(fs_vload_##S(logp + j, n - j, 0)) * total))       \
}                                                                                     \
/* Entropy of a short row, with e = exp(row - m) and d = max(row - m, floor): sum(e d) */ \
static inline double fs_short_entropy_dot_##S(const T *e, const T *row, T m, Py_ssize_t n) { \
    fs_vec_##S acc = {0};                                                             \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vec_##S d = fs_vmax_##S(fs_vload_##S(row + j, n - j, 0) - m,               \
                                   (fs_vec_##S){0} + (T)FS_ENTROPY_FLOOR);            \
        acc += fs_vload_##S(e + j, n - j, 0) * d)                                     \
    return fs_vreduce_add_##S(acc);                                                   \
}                                                                                     \
/* out = k * e * (mean_d - d): the entropy gradient of a short row (out may be row) */ \
static inline void fs_short_entropy_grad_##S(const T *e, const T *row, T m, T k, T mean_d, \
                                             T *out, Py_ssize_t n) {                  \
    FS_FOR_EACH_VECTOR(S, n,                                                          \
        fs_vec_##S d = fs_vmax_##S(fs_vload_##S(row + j, n - j, 0) - m,               \
                                   (fs_vec_##S){0} + (T)FS_ENTROPY_FLOOR);            \
        fs_vstore_##S(out + j, n - j, k * fs_vload_##S(e + j, n - j, 0) * (mean_d - d))) \
}

FS_DEFINE_SHORT_ROWS(float, f)
FS_DEFINE_SHORT_ROWS(double, d)

/* ---- narrow rows (at most one vector, C <= L): L rows at a time, transposed ----
 * Loaded as L row vectors and transposed in registers, a group's column j is one
 * vector (lane i: row i), so the max, the exp and the sum run across vectors with every
 * lane busy and no lane reductions; the exponentials are transposed back and stored
 * as rows (C = 10, float32, 2 threads, kernels side by side with the masked-vector
 * rows: CE + grad 0.87, cross_entropy 0.85, softmax 0.97 of the time). Tried and
 * dropped: the gradient pass in columns too (e kept by columns, one transpose into
 * the output): no faster (CE + grad 0.99, softmax 1.08), 64 more shuffles per group
 * on the one shuffle port; folding the per-row lane reductions of 16 rows into one
 * vector (a shuffle tree) in the masked-vector path: no faster either. */
#if defined(__GNUC__) && !defined(__clang__)
/* log2(L) rounds of two-source shuffles; round w swaps the off-diagonal blocks of
 * width w of each pair of vectors (i, i + w). */
#define FS_DEFINE_TRANSPOSE(T, S)                                                     \
static inline void fs_transpose_##S(fs_vec_##S *v) {                                  \
    _Pragma("GCC unroll 8")                                                           \
    for (int round = 1; round <= __builtin_ctz(FS_LANES_##S); round++) {              \
        const Py_ssize_t w = FS_LANES_##S >> round;                                   \
        fs_index_vec_##S low, high;                                                   \
        for (Py_ssize_t l = 0; l < FS_LANES_##S; l++) {                               \
            low[l] = (l & w) ? FS_LANES_##S + l - w : l;                              \
            high[l] = (l & w) ? FS_LANES_##S + l : l + w;                             \
        }                                                                             \
        _Pragma("GCC unroll 16")                                                      \
        for (Py_ssize_t i = 0; i < FS_LANES_##S; i++) {                               \
            if (i & w) continue;                                                      \
            fs_vec_##S a = v[i], b = v[i + w];                                        \
            v[i] = __builtin_shuffle(a, b, low);                                      \
            v[i + w] = __builtin_shuffle(a, b, high);                                 \
        }                                                                             \
    }                                                                                 \
}
#else  /* compilers without GCC's __builtin_shuffle: lane by lane */
#define FS_DEFINE_TRANSPOSE(T, S)                                                     \
static inline void fs_transpose_##S(fs_vec_##S *v) {                                  \
    fs_vec_##S t[FS_LANES_##S];                                                       \
    for (Py_ssize_t i = 0; i < FS_LANES_##S; i++)                                     \
        for (Py_ssize_t j = 0; j < FS_LANES_##S; j++) t[j][i] = v[i][j];              \
    memcpy(v, t, sizeof t);                                                           \
}
#endif

#define FS_DEFINE_NARROW_ROWS(T, S)                                                   \
FS_DEFINE_TRANSPOSE(T, S)                                                             \
/* For the rows x[r n : (r + 1) n], r < rows, n <= L: m[r] = the row max, e = exp(x - m) \
 * (rows of n), sums[r] = sum of row r of e and, with w, shifted_w[r] = sum(w (x - m)). \
 * As in the wider rows, a NaN may or may not be the max and makes the row's sum NaN. */\
static inline void fs_narrow_exp_rows_##S(const T *x, Py_ssize_t rows, Py_ssize_t n,  \
                                          const T *w, T *e, T *m, double *sums,       \
                                          double *shifted_w) {                        \
    for (Py_ssize_t first = 0; first < rows; first += FS_LANES_##S) {                 \
        Py_ssize_t count = FS_MIN(FS_LANES_##S, rows - first);                        \
        fs_vec_##S v[FS_LANES_##S];                                                   \
        for (Py_ssize_t i = 0; i < FS_LANES_##S; i++)  /* rows past count: zeros */   \
            v[i] = fs_vload_##S(x + (first + FS_MIN(i, count - 1)) * n,               \
                                i < count ? n : 0, 0);                                \
        fs_transpose_##S(v);                                                          \
        fs_vec_##S max = v[0], sum = {0}, dot = {0};                                  \
        for (Py_ssize_t j = 1; j < n; j++) max = fs_vmax_##S(max, v[j]);              \
        for (Py_ssize_t j = 0; j < n; j++) {                                          \
            if (w) dot += w[j] * (v[j] - max);                                        \
            v[j] = fs_vexp_core_##S(v[j] - max);                                      \
            sum += v[j];                                                              \
        }                                                                             \
        fs_transpose_##S(v);                                                          \
        for (Py_ssize_t i = 0; i < count; i++) {                                      \
            fs_vstore_##S(e + (first + i) * n, n, v[i]);                              \
            sums[first + i] = sum[i];                                                 \
            if (w) shifted_w[first + i] = dot[i];                                     \
        }                                                                             \
        fs_vstore_##S(m + first, count, max);                                         \
    }                                                                                 \
}

FS_DEFINE_NARROW_ROWS(float, f)
FS_DEFINE_NARROW_ROWS(double, d)

#endif
