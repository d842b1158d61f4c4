/* The kernels under test as row_kernels_check.c sees them: the entry points that
 * _kernels.pyx and elementwise.pxi call, behind untyped pointers, one table per element
 * type. kernels.c defines them by including fastsoftmax/_cython/elementwise.h and is
 * built with setup.py's compiler flags; the checks are built apart, without them, so that
 * only the code under test takes the optimiser's time. */
#ifndef ROW_KERNELS_CHECK_KERNELS_H
#define ROW_KERNELS_CHECK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef ptrdiff_t Py_ssize_t;  /* the one Python name the headers use */

/* The row functions (fs_*_row_<type>) and elementwise segments (fs_*_segment with the
 * type's kind) of one element type; class weights and elementwise losses are of its
 * compute type (double for double, float otherwise). */
typedef struct {
    void (*softmax)(const void *x, void *out, Py_ssize_t n, int threads);
    void (*log_softmax)(const void *x, void *out, Py_ssize_t n, int threads);
    double (*logsumexp)(const void *x, Py_ssize_t n, int threads);
    void (*softmax_backward)(const void *y, const void *dy, void *out, Py_ssize_t n,
                             int threads);
    void (*log_softmax_backward)(const void *logp, const void *dy, void *out, Py_ssize_t n,
                                 int threads);
    double (*cross_entropy)(const void *x, const int64_t *y, const void *t, const void *w,
                            double weight_sum, double smoothing, double z_loss,
                            double softcap, double s, double s_z, Py_ssize_t n, void *grad,
                            double *z_term, int threads);
    double (*entropy)(const void *x, double s, Py_ssize_t n, void *grad, int threads);
    double (*jsd)(const void *s, const void *t, double beta, double inv_t, double scale,
                  Py_ssize_t n, void *grad, int threads);
    double (*kl_div_segment)(const void *x, const void *t, const double *g, double scale,
                             void *loss, void *grad, Py_ssize_t i, Py_ssize_t n,
                             int log_target);
    double (*bce_segment)(const void *x, const void *t, const void *w, Py_ssize_t w_at,
                          const void *pw, Py_ssize_t pw_at, const double *g, double scale,
                          void *loss, void *grad, Py_ssize_t i, Py_ssize_t n);
    void (*sigmoid_segment)(const void *x, void *out, Py_ssize_t i, Py_ssize_t n,
                            int log_sigmoid);
    /* narrow_typed.h: the short rows' backward and the narrow rows (fs_narrow_*_rows) */
    void (*short_backward_rows)(const void *y, const void *dy, Py_ssize_t rows,
                                Py_ssize_t n, int log, void *out);
    void (*narrow_entropy_rows)(const void *x, Py_ssize_t rows, Py_ssize_t n, double scale,
                                const double *row_scale, double *row_loss, void *h,
                                void *grad);
    void (*narrow_softmax_rows)(const void *x, Py_ssize_t rows, Py_ssize_t n, int op,
                                void *out);
    void (*narrow_jsd_rows)(const void *s, const void *t, Py_ssize_t rows, Py_ssize_t n,
                            double beta, double inv_t, double scale, const double *row_scale,
                            double *row_loss, void *grad);
    /* o: weight_sum, smoothing, z_loss, scale, z_scale (rows.h fs_ce_scalars) */
    void (*narrow_cross_entropy_rows)(const void *x, const int64_t *y, const void *t,
                                      const void *w, const double o[5], int64_t ignore_index,
                                      const double *row_scale, Py_ssize_t rows, Py_ssize_t n,
                                      double *row_loss, double *row_z_loss, void *grad);
} row_kernels;

/* The short-row helpers of the block kernels (float and double only); scalars passed as
 * double are cast to the row type, as the Cython caller's are. */
typedef struct {
    double (*shift_max)(const void *row, Py_ssize_t n, void *out);
    double (*dot)(const void *a, const void *b, Py_ssize_t n);
    void (*prob_sums)(const void *row, double m, const void *t, const void *w, Py_ssize_t n,
                      double keep, double eps, double *total_wt, double *shifted_wt);
    void (*rescale)(const void *e, double k, double f, const void *w, int64_t y, double c,
                    void *out, Py_ssize_t n);
    void (*shift)(const void *row, double m, double c, void *out, Py_ssize_t n);
    void (*prob_rescale)(const void *e, const void *t, const void *w, double k, double f,
                         double keep, double eps, void *out, Py_ssize_t n);
    double (*entropy_dot)(const void *e, const void *row, double m, Py_ssize_t n);
    void (*entropy_grad)(const void *e, const void *row, double m, double k, double mean_d,
                         void *out, Py_ssize_t n);
} short_kernels;

extern const row_kernels ROWS_FLOAT, ROWS_DOUBLE, ROWS_BFLOAT16, ROWS_FLOAT16;
extern const short_kernels SHORT_FLOAT, SHORT_DOUBLE;

/* exp and log (rows.h) */
float kernel_exp_f(float x);
double kernel_exp_d(double x);
void kernel_exp_array_f(float *x, Py_ssize_t n);
void kernel_exp_array_d(double *x, Py_ssize_t n);
void kernel_log_array(const double *x, double *out, Py_ssize_t n);
float kernel_log_normal_f(float x);

/* the 16-bit conversions (rows.h): bfloat16 bits (b), float16 bits (h) */
float kernel_load_b(uint16_t bits);
uint16_t kernel_store_b(float x);
float kernel_load_h(int16_t bits);
int16_t kernel_store_h(float x);
void kernel_load_array_b(const uint16_t *x, float *out, Py_ssize_t n);
void kernel_store_array_b(const float *x, uint16_t *out, Py_ssize_t n);
void kernel_vload_array_b(const uint16_t *x, float *out, Py_ssize_t n);
void kernel_vstore_array_b(const float *x, uint16_t *out, Py_ssize_t n);
void kernel_vload_array_h(const int16_t *x, float *out, Py_ssize_t n);
void kernel_vstore_array_h(const float *x, int16_t *out, Py_ssize_t n);
void kernel_load_array_h(const int16_t *x, float *out, Py_ssize_t n);
void kernel_store_array_h(const float *x, int16_t *out, Py_ssize_t n);

/* rows.h's constants as built */
extern const int kernel_vec_bytes;          /* FS_VEC_BYTES: the short-row vector width */
extern const int kernel_narrow_bytes;       /* FS_NARROW_BYTES: the widest narrow row */
extern const Py_ssize_t kernel_split_min_chunk;  /* FS_SPLIT_MIN_CHUNK */
extern const Py_ssize_t kernel_block;       /* FS_BLOCK: the partial-sum block */
extern const double kernel_entropy_floor;   /* FS_ENTROPY_FLOOR */

/* What kernels.c was built for: a description, and the x86 features its flags assume
 * (the checks are built for the baseline target and test them before any kernel runs) */
extern const char kernel_target[];
enum { NEEDS_AVX2 = 1, NEEDS_FMA = 2, NEEDS_BMI2 = 4, NEEDS_AVX512 = 8, NEEDS_F16C = 16 };
extern const unsigned kernel_cpu_needs;

#endif
