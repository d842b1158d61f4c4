/* The kernels under test (kernels.h): fastsoftmax/_cython/elementwise.h and rows.h as
 * shipped, compiled with setup.py's flags (run.sh), each entry point wrapped once. */
#include "kernels.h"
#include "elementwise.h"  /* includes rows.h */

#define ROW_KERNELS(S, T, C, KIND, TABLE)                                                  \
    static void softmax_##S(const void *x, void *out, Py_ssize_t n, int threads) {        \
        fs_softmax_row_##S((const T *)x, (T *)out, n, threads);                            \
    }                                                                                      \
    static void log_softmax_##S(const void *x, void *out, Py_ssize_t n, int threads) {    \
        fs_log_softmax_row_##S((const T *)x, (T *)out, n, threads);                        \
    }                                                                                      \
    static double logsumexp_##S(const void *x, Py_ssize_t n, int threads) {               \
        return fs_logsumexp_row_##S((const T *)x, n, threads);                             \
    }                                                                                      \
    static void softmax_backward_##S(const void *y, const void *dy, void *out,            \
                                     Py_ssize_t n, int threads) {                          \
        fs_softmax_backward_row_##S((const T *)y, (const T *)dy, (T *)out, n, threads);    \
    }                                                                                      \
    static void log_softmax_backward_##S(const void *logp, const void *dy, void *out,     \
                                         Py_ssize_t n, int threads) {                      \
        fs_log_softmax_backward_row_##S((const T *)logp, (const T *)dy, (T *)out, n,       \
                                        threads);                                          \
    }                                                                                      \
    static double cross_entropy_##S(const void *x, const int64_t *y, const void *t,       \
                                    const void *w, double weight_sum, double smoothing,    \
                                    double z_loss, double softcap, double s, double s_z,   \
                                    Py_ssize_t n, void *grad, double *z_term, int threads) { \
        return fs_cross_entropy_row_##S((const T *)x, y, (const T *)t, (const C *)w,       \
                                        weight_sum, smoothing, z_loss, softcap, s, s_z, n, \
                                        (T *)grad, z_term, threads);                       \
    }                                                                                      \
    static double entropy_##S(const void *x, double s, Py_ssize_t n, void *grad,          \
                              int threads) {                                               \
        return fs_entropy_row_##S((const T *)x, s, n, (T *)grad, threads);                 \
    }                                                                                      \
    static double jsd_##S(const void *s, const void *t, double beta, double inv_t,        \
                          double scale, Py_ssize_t n, void *grad, int threads) {           \
        return fs_jsd_row_##S((const T *)s, (const T *)t, beta, inv_t, scale, n, (T *)grad, \
                              threads);                                                    \
    }                                                                                      \
    static double kl_div_segment_##S(const void *x, const void *t, const double *g,       \
                                     double scale, void *loss, void *grad, Py_ssize_t i,   \
                                     Py_ssize_t n, int log_target) {                       \
        return fs_kl_div_segment(x, t, g, scale, loss, grad, i, n, KIND, log_target);      \
    }                                                                                      \
    static double bce_segment_##S(const void *x, const void *t, const void *w,            \
                                  Py_ssize_t w_at, const void *pw, Py_ssize_t pw_at,       \
                                  const double *g, double scale, void *loss, void *grad,   \
                                  Py_ssize_t i, Py_ssize_t n) {                            \
        return fs_bce_segment(x, t, w, w_at, pw, pw_at, g, scale, loss, grad, i, n, KIND); \
    }                                                                                      \
    static void sigmoid_segment_##S(const void *x, void *out, Py_ssize_t i, Py_ssize_t n, \
                                    int log_sigmoid) {                                     \
        fs_sigmoid_segment(x, out, i, n, KIND, log_sigmoid);                               \
    }                                                                                      \
    static void narrow_entropy_rows_##S(const void *x, Py_ssize_t rows, Py_ssize_t n,     \
                                        double scale, const double *row_scale,             \
                                        double *row_loss, void *h, void *grad) {           \
        fs_narrow_entropy_rows_##S((const T *)x, rows, n, scale, row_scale, row_loss,      \
                                   (T *)h, (T *)grad);                                     \
    }                                                                                      \
    static void narrow_softmax_rows_##S(const void *x, Py_ssize_t rows, Py_ssize_t n,     \
                                        int op, void *out) {                               \
        fs_narrow_softmax_rows_##S((const T *)x, rows, n, op, (T *)out);                   \
    }                                                                                      \
    static void short_backward_rows_##S(const void *y, const void *dy, Py_ssize_t rows,   \
                                        Py_ssize_t n, int log, void *out) {                \
        fs_short_backward_rows_##S((const T *)y, (const T *)dy, rows, n, log, (T *)out);   \
    }                                                                                      \
    static void narrow_jsd_rows_##S(const void *s, const void *t, Py_ssize_t rows,       \
                                    Py_ssize_t n, double beta, double inv_t, double scale, \
                                    const double *row_scale, double *row_loss,             \
                                    void *grad) {                                          \
        fs_narrow_jsd_rows_##S((const T *)s, (const T *)t, rows, n, beta, inv_t,           \
                               scale, row_scale, row_loss, (T *)grad);                     \
    }                                                                                      \
    static void narrow_cross_entropy_rows_##S(                                             \
            const void *x, const int64_t *y, const void *t, const void *w,                 \
            const double o[5], int64_t ignore_index, const double *row_scale,              \
            Py_ssize_t rows, Py_ssize_t n,                                                 \
            double *row_loss, double *row_z_loss, void *grad) {                            \
        const fs_ce_scalars scalars = {o[0], o[1], o[2], o[3], o[4], ignore_index};        \
        fs_narrow_cross_entropy_rows_##S((const T *)x, y, (const T *)t, (const C *)w,      \
                                         &scalars, row_scale, rows, n, row_loss,           \
                                         row_z_loss, (T *)grad);                           \
    }                                                                                      \
    const row_kernels TABLE = {                                                            \
        softmax_##S, log_softmax_##S, logsumexp_##S, softmax_backward_##S,                 \
        log_softmax_backward_##S, cross_entropy_##S, entropy_##S, jsd_##S,                 \
        kl_div_segment_##S, bce_segment_##S, sigmoid_segment_##S, short_backward_rows_##S,  \
        narrow_entropy_rows_##S, narrow_softmax_rows_##S, narrow_jsd_rows_##S,             \
        narrow_cross_entropy_rows_##S};
ROW_KERNELS(f, float, float, FS_EW_FLOAT, ROWS_FLOAT)
ROW_KERNELS(d, double, double, FS_EW_DOUBLE, ROWS_DOUBLE)
ROW_KERNELS(b, uint16_t, float, FS_EW_BFLOAT16, ROWS_BFLOAT16)
ROW_KERNELS(h, int16_t, float, FS_EW_FLOAT16, ROWS_FLOAT16)
#undef ROW_KERNELS

#define SHORT_KERNELS(S, T, TABLE)                                                         \
    static double shift_max_##S(const void *row, Py_ssize_t n, void *out) {               \
        return fs_short_shift_max_##S((const T *)row, n, (T *)out);                        \
    }                                                                                      \
    static double dot_##S(const void *a, const void *b, Py_ssize_t n) {                   \
        return fs_short_dot_##S((const T *)a, (const T *)b, n);                            \
    }                                                                                      \
    static void prob_sums_##S(const void *row, double m, const void *t, const void *w,    \
                              Py_ssize_t n, double keep, double eps, double *total_wt,     \
                              double *shifted_wt) {                                        \
        fs_short_prob_sums_##S((const T *)row, (T)m, (const T *)t, (const T *)w, n,        \
                               (T)keep, (T)eps, total_wt, shifted_wt);                     \
    }                                                                                      \
    static void rescale_##S(const void *e, double k, double f, const void *w, int64_t y,  \
                            double c, void *out, Py_ssize_t n) {                           \
        fs_short_rescale_##S((const T *)e, (T)k, (T)f, (const T *)w, y, (T)c, (T *)out, n); \
    }                                                                                      \
    static void shift_##S(const void *row, double m, double c, void *out, Py_ssize_t n) { \
        fs_short_shift_##S((const T *)row, (T)m, (T)c, (T *)out, n);                       \
    }                                                                                      \
    static void prob_rescale_##S(const void *e, const void *t, const void *w, double k,   \
                                 double f, double keep, double eps, void *out,             \
                                 Py_ssize_t n) {                                           \
        fs_short_prob_rescale_##S((const T *)e, (const T *)t, (const T *)w, (T)k, (T)f,    \
                                  (T)keep, (T)eps, (T *)out, n);                           \
    }                                                                                      \
    static double entropy_dot_##S(const void *e, const void *row, double m, Py_ssize_t n) { \
        return fs_short_entropy_dot_##S((const T *)e, (const T *)row, (T)m, n);            \
    }                                                                                      \
    static void entropy_grad_##S(const void *e, const void *row, double m, double k,      \
                                 double mean_d, void *out, Py_ssize_t n) {                 \
        fs_short_entropy_grad_##S((const T *)e, (const T *)row, (T)m, (T)k, (T)mean_d,     \
                                  (T *)out, n);                                            \
    }                                                                                      \
    const short_kernels TABLE = {                                                          \
        shift_max_##S, dot_##S, prob_sums_##S, rescale_##S, shift_##S, prob_rescale_##S,   \
        entropy_dot_##S, entropy_grad_##S};
SHORT_KERNELS(f, float, SHORT_FLOAT)
SHORT_KERNELS(d, double, SHORT_DOUBLE)
#undef SHORT_KERNELS

float kernel_exp_f(float x) { return fs_exp_f(x); }
double kernel_exp_d(double x) { return fs_exp_d(x); }
void kernel_exp_array_f(float *x, Py_ssize_t n) { fs_exp_array_f(x, n); }
void kernel_exp_array_d(double *x, Py_ssize_t n) { fs_exp_array_d(x, n); }
void kernel_log_array(const double *x, double *out, Py_ssize_t n) { fs_log_array(x, out, n); }
float kernel_log_normal_f(float x) { return fs_log_normal_f(x); }

float kernel_load_b(uint16_t bits) { return fs_load_b(bits); }
uint16_t kernel_store_b(float x) { return fs_store_b(x); }
float kernel_load_h(int16_t bits) { return fs_load_h(bits); }
int16_t kernel_store_h(float x) { return fs_store_h(x); }
void kernel_load_array_b(const uint16_t *x, float *out, Py_ssize_t n) {
    fs_load_array_b(x, out, n);
}
void kernel_store_array_b(const float *x, uint16_t *out, Py_ssize_t n) {
    fs_store_array_b(x, out, n);
}
void kernel_load_array_h(const int16_t *x, float *out, Py_ssize_t n) {
    fs_load_array_h(x, out, n);
}
void kernel_store_array_h(const float *x, int16_t *out, Py_ssize_t n) {
    fs_store_array_h(x, out, n);
}

/* The whole-vector conversions of the narrow rows (rows.h fs_half_vload + fs_vwiden_*,
 * fs_vround_* + fs_half_vstore), over an array a vector at a time (the last one partial) */
#define VECTOR_CONVERSIONS(S, T)                                                           \
    void kernel_vload_array_##S(const T *x, float *out, Py_ssize_t n) {                    \
        for (Py_ssize_t i = 0; i < n; i += FS_HALF_LANES) {                                \
            fs_vec_f v = fs_vwiden_##S(fs_half_vload((const uint16_t *)x + i,              \
                                                      FS_MIN(n - i, FS_HALF_LANES))); \
            memcpy(out + i, &v, (size_t)FS_MIN(n - i, FS_HALF_LANES) * sizeof(float));     \
        }                                                                                  \
    }                                                                                      \
    void kernel_vstore_array_##S(const float *x, T *out, Py_ssize_t n) {                   \
        for (Py_ssize_t i = 0; i < n; i += FS_HALF_LANES) {                                \
            fs_vec_f v = {0};                                                              \
            memcpy(&v, x + i, (size_t)FS_MIN(n - i, FS_HALF_LANES) * sizeof(float));       \
            fs_half_vstore((uint16_t *)out + i, n - i, fs_vround_##S(v));                  \
        }                                                                                  \
    }
VECTOR_CONVERSIONS(b, uint16_t)
VECTOR_CONVERSIONS(h, int16_t)
#undef VECTOR_CONVERSIONS

const int kernel_vec_bytes = FS_VEC_BYTES;
const int kernel_narrow_bytes = FS_NARROW_BYTES;
const Py_ssize_t kernel_split_min_chunk = FS_SPLIT_MIN_CHUNK;
const Py_ssize_t kernel_block = FS_BLOCK;
const double kernel_entropy_floor = FS_ENTROPY_FLOOR;

#if defined(_OPENMP)
#define OPENMP_NOTE "OpenMP"
#else
#define OPENMP_NOTE "no OpenMP"
#endif
#if defined(__F16C__)
#define F16C_NOTE ", F16C"
#else
#define F16C_NOTE ""
#endif
const char kernel_target[] =
#if defined(__aarch64__) && defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    "aarch64, NEON with fp16 arithmetic"
#elif defined(__aarch64__) && defined(__ARM_NEON)
    "aarch64, NEON"
#elif defined(__AVX512F__)
    "x86-64, AVX-512"
#elif defined(__AVX2__)
    "x86-64, AVX2"
#elif defined(__x86_64__)
    "x86-64, SSE2"
#else
    "another target"
#endif
    F16C_NOTE ", " OPENMP_NOTE;

const unsigned kernel_cpu_needs = 0
#ifdef __AVX2__
    | NEEDS_AVX2
#endif
#ifdef __FMA__
    | NEEDS_FMA
#endif
#ifdef __BMI2__
    | NEEDS_BMI2
#endif
#if defined(__AVX512F__) || defined(__AVX512BW__) || defined(__AVX512DQ__) || defined(__AVX512VL__)
    | NEEDS_AVX512
#endif
#ifdef __F16C__
    | NEEDS_F16C
#endif
    ;
