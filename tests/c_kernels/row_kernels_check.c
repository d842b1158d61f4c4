/* Checks the C kernels of the Cython backend (fastsoftmax/_cython/rows.h and
 * elementwise.h) without Python, so that the same source can be built with the host gcc
 * at each x86-64 level and cross-built for aarch64 and run under qemu (run.sh; issue 16).
 *
 * It calls the entry points that _kernels.pyx and elementwise.pxi call (through
 * kernels.c, which is built with setup.py's flags), with the same arguments, for float,
 * double, bfloat16 (uint16_t bits) and float16 (int16_t bits), and compares every result
 * with a double-precision reference computed here from libm's exp and log on the inputs
 * as the kernel sees them (16-bit inputs decoded). The 16-bit
 * conversions are checked against a reference rounding written here with ldexp and
 * nearbyint, not with the bit tricks of rows.h.
 *
 * Tolerance of a stored result, given its reference value ref and the magnitude mag of
 * the terms it is computed from (for cancellation; 0 where there is none):
 *     rtol_store |ref| + atol_store + rtol_compute (|ref| + mag)
 *   float, bfloat16, float16 compute: rtol_compute 1e-5    double: 1e-12
 *   bfloat16 storage: rtol_store 2^-8 (half an ulp)
 *   float16 storage:  rtol_store 2^-11, atol_store 2^-25 (half a subnormal ulp)
 * Results not stored in the row type (losses, logsumexp) get the compute term alone.
 * A log of a sum counts 1 in mag: the sum's relative error becomes an absolute one.
 * exp: 3e-7 (float) and 5e-16 (double) relative; the conversions: bit for bit.
 *
 * Exit status: 0 all passed, 1 a mismatch (each named with its function, case and
 * values), 77 this CPU cannot run the instruction set kernels.c was built for. */
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"

/* ---- reporting ---- */

static long failures = 0;
static const char *current_check = "start-up";  /* named by the SIGSEGV handler */

/* Worst error / tolerance per check (function and type), printed at the end to show
 * the margins. Found by the pointers of the names first (checks pass literals), then by
 * their text. */
enum { MAX_STATS = 256 };
static struct { const char *fn, *dtype; long values; double worst; } stats[MAX_STATS];
static int stat_count = 0;

static int find_stat(const char *fn, const char *dtype) {
    for (int i = 0; i < stat_count; i++)
        if (stats[i].fn == fn && stats[i].dtype == dtype) return i;
    for (int i = 0; i < stat_count; i++)
        if (strcmp(stats[i].fn, fn) == 0 && strcmp(stats[i].dtype, dtype) == 0) return i;
    return -1;
}

static void record(const char *fn, const char *dtype, double ratio) {
    int i = find_stat(fn, dtype);
    if (i < 0) {
        if (stat_count == MAX_STATS) return;
        i = stat_count++;
        stats[i].fn = fn;
        stats[i].dtype = dtype;
    }
    stats[i].values++;
    if (ratio > stats[i].worst) stats[i].worst = ratio;
}

static void fail(const char *fn, const char *dtype, const char *detail, Py_ssize_t index,
                 double got, double ref, double tol) {
    if (failures++ < 40)
        fprintf(stderr, "FAIL %s [%s] %s index %td: got %.17g, expected %.17g (tolerance %.3g)\n",
                fn, dtype, detail, index, got, ref, tol);
}

/* got against ref: NaN only for NaN, an infinity exactly, otherwise within tol */
static void expect(const char *fn, const char *dtype, const char *detail, Py_ssize_t index,
                   double got, double ref, double tol) {
    int ok;
    if (isnan(ref)) ok = isnan(got);
    else if (isinf(ref)) ok = got == ref;
    else ok = fabs(got - ref) <= tol;  /* false for a NaN got */
    record(fn, dtype, isfinite(ref) && tol > 0 ? fabs(got - ref) / tol : 0);
    if (!ok) fail(fn, dtype, detail, index, got, ref, tol);
}

static void expect_bits(const char *fn, const char *detail, uint32_t input, unsigned got,
                        unsigned ref) {
    record(fn, "", 0);
    if (got != ref && failures++ < 40)
        fprintf(stderr, "FAIL %s %s input 0x%08x: got 0x%04x, expected 0x%04x\n", fn, detail,
                input, got, ref);
}

static void on_segfault(int sig) {
    static const char prefix[] = "FAIL out-of-bounds access (SIGSEGV) in ";
    (void)sig;
    (void)!write(2, prefix, sizeof prefix - 1);
    (void)!write(2, current_check, strlen(current_check));
    (void)!write(2, "\n", 1);
    _exit(1);
}

/* ---- deterministic random numbers (splitmix64) ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t next_random(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double uniform(double lo, double hi) {
    return lo + (hi - lo) * (double)(next_random() >> 11) * 0x1p-53;
}

/* ---- reference 16-bit conversions: exact arithmetic on doubles, no bit tricks ---- */

/* A 16-bit IEEE-style float with `mantissa_bits` stored mantissa bits (bfloat16 7,
 * float16 10) and the other 15 - mantissa_bits bits of exponent. */
static double decode_16(uint16_t bits, int mantissa_bits) {
    int exponent_max = (1 << (15 - mantissa_bits)) - 1, bias = exponent_max >> 1;
    int exponent = (bits >> mantissa_bits) & exponent_max;
    int mantissa = bits & ((1 << mantissa_bits) - 1);
    double magnitude = exponent == 0 ? ldexp(mantissa, 1 - bias - mantissa_bits)
                       : exponent == exponent_max ? (mantissa ? NAN : INFINITY)
                       : ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits);
    return bits & 0x8000 ? -magnitude : magnitude;
}

static double decode_bfloat16(uint16_t bits) { return decode_16(bits, 7); }

static double decode_float16(uint16_t bits) { return decode_16(bits, 10); }

/* |v| rounded to nearest even with `digits` significant bits and a smallest step of
 * 2^min_exponent (the subnormal step); nearbyint rounds ties to even. */
static double round_magnitude(double v, int digits, int min_exponent) {
    int exponent;
    frexp(fabs(v), &exponent);  /* |v| in [2^(exponent-1), 2^exponent) */
    int step = exponent - digits > min_exponent ? exponent - digits : min_exponent;
    return ldexp(nearbyint(ldexp(fabs(v), -step)), step);
}

/* v rounded to bfloat16; above the midpoint between its max and 2^128, inf; NaN: a
 * quiet NaN */
static uint16_t encode_bfloat16(double v) {
    uint16_t sign = signbit(v) ? 0x8000 : 0;
    if (isnan(v)) return sign | 0x7fc0;
    double a = round_magnitude(v, 8, -133);
    if (a >= 0x1p128) return sign | 0x7f80;
    float f = (float)a;  /* exact: a is a bfloat16 value */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return sign | (uint16_t)(bits >> 16);
}

static uint16_t encode_float16(double v) {
    uint16_t sign = signbit(v) ? 0x8000 : 0;
    if (isnan(v)) return sign | 0x7e00;
    double a = round_magnitude(v, 11, -24);
    if (a >= 65536.0) return sign | 0x7c00;
    if (a < 0x1p-14) return sign | (uint16_t)ldexp(a, 24);  /* 1024 steps: the min normal */
    int exponent;
    double fraction = frexp(a, &exponent);  /* [0.5, 1) */
    return sign | (uint16_t)((exponent + 14) << 10) | (uint16_t)ldexp(fraction * 2 - 1, 10);
}

/* ---- the element types ---- */

/* One element type: how to make its rows, its tolerances and its kernels. */
typedef struct {
    const char *name;
    size_t size;          /* bytes of a stored element */
    size_t compute_size;  /* bytes of the compute type: class weights, elementwise losses */
    double rtol_store, atol_store, rtol_compute;
    uint16_t (*encode16)(double);   /* 16-bit types: the reference rounding */
    double (*decode16)(uint16_t);
    const row_kernels *k;
} dtype;

static const double RTOL_FLOAT = 1e-5, RTOL_DOUBLE = 1e-12;
static const dtype FLOAT32 = {"float", 4, 4, 0, 0, RTOL_FLOAT, NULL, NULL, &ROWS_FLOAT};
static const dtype FLOAT64 = {"double", 8, 8, 0, 0, RTOL_DOUBLE, NULL, NULL, &ROWS_DOUBLE};
static const dtype BFLOAT16 = {"bfloat16", 2, 4, 0x1p-8, 0, RTOL_FLOAT, encode_bfloat16,
                               decode_bfloat16, &ROWS_BFLOAT16};
static const dtype FLOAT16 = {"float16", 2, 4, 0x1p-11, 0x1p-25, RTOL_FLOAT, encode_float16,
                              decode_float16, &ROWS_FLOAT16};
static const dtype *const DTYPES[] = {&FLOAT32, &FLOAT64, &BFLOAT16, &FLOAT16};

/* element i of a row of dt, as a double */
static double get(const dtype *dt, const void *p, Py_ssize_t i) {
    if (dt->size == 8) return ((const double *)p)[i];
    if (dt->size == 4) return ((const float *)p)[i];
    return dt->decode16(((const uint16_t *)p)[i]);
}

/* p[i] = v rounded to dt; returns the stored value */
static double put(const dtype *dt, void *p, Py_ssize_t i, double v) {
    if (dt->size == 8) ((double *)p)[i] = v;
    else if (dt->size == 4) ((float *)p)[i] = (float)v;
    else ((uint16_t *)p)[i] = dt->encode16(v);
    return get(dt, p, i);
}

/* the same for an array of the compute type (weights, elementwise losses) */
static double get_compute(const dtype *dt, const void *p, Py_ssize_t i) {
    return dt->compute_size == 8 ? ((const double *)p)[i] : ((const float *)p)[i];
}

static double put_compute(const dtype *dt, void *p, Py_ssize_t i, double v) {
    if (dt->compute_size == 8) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
    return get_compute(dt, p, i);
}

static double stored_tol(const dtype *dt, double ref, double mag) {
    return dt->rtol_store * fabs(ref) + dt->atol_store + dt->rtol_compute * (fabs(ref) + mag);
}

static double compute_tol(const dtype *dt, double ref, double mag) {
    return dt->rtol_compute * (fabs(ref) + mag);
}

/* A row of n random values in [lo, hi], stored in dt; values[] gets what was stored. */
static void *random_row(const dtype *dt, Py_ssize_t n, double lo, double hi, double *values) {
    void *row = malloc((size_t)n * dt->size);
    for (Py_ssize_t j = 0; j < n; j++) values[j] = put(dt, row, j, uniform(lo, hi));
    return row;
}

/* ---- double references of the row ops ---- */

static double ref_max(const double *x, Py_ssize_t n) {
    double m = -INFINITY;
    for (Py_ssize_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* log(sum(exp(x - m))) for the finite max m of x */
static double ref_log_sum(const double *x, Py_ssize_t n, double m) {
    double sum = 0;
    for (Py_ssize_t j = 0; j < n; j++) sum += exp(x[j] - m);
    return log(sum);
}

/* ---- the checks ---- */

static char detail[160];  /* the case being checked, for the messages */

static void check_softmax_family(const dtype *dt, Py_ssize_t n, int threads) {
    snprintf(detail, sizeof detail, "n=%td threads=%d", n, threads);
    double *x = malloc(n * sizeof *x), *dy = malloc(n * sizeof *dy);
    double *y = malloc(n * sizeof *y);
    void *row = random_row(dt, n, -8, 8, x), *dy_row = random_row(dt, n, -2, 2, dy);
    void *out = malloc((size_t)n * dt->size);
    double m = ref_max(x, n), log_sum = ref_log_sum(x, n, m);

    current_check = "softmax_row";
    dt->k->softmax(row, out, n, threads);
    for (Py_ssize_t j = 0; j < n; j++) {
        double ref = exp(x[j] - m - log_sum);
        expect("softmax_row", dt->name, detail, j, get(dt, out, j), ref, stored_tol(dt, ref, 0));
        y[j] = get(dt, out, j);  /* the backward pass takes the stored softmax */
    }

    current_check = "log_softmax_row";
    dt->k->log_softmax(row, out, n, threads);
    for (Py_ssize_t j = 0; j < n; j++) {
        double ref = x[j] - m - log_sum;
        expect("log_softmax_row", dt->name, detail, j, get(dt, out, j), ref,
               stored_tol(dt, ref, fabs(x[j] - m) + log_sum + 1));
    }

    current_check = "logsumexp_row";
    double lse = m + log_sum;
    expect("logsumexp_row", dt->name, detail, 0, dt->k->logsumexp(row, n, threads), lse,
           compute_tol(dt, lse, fabs(m) + log_sum + 1));

    /* backward passes: y = the softmax above, and the log_softmax of the same row */
    void *y_row = malloc((size_t)n * dt->size);
    dt->k->softmax(row, y_row, n, threads);
    current_check = "softmax_backward_row";
    dt->k->softmax_backward(y_row, dy_row, out, n, threads);
    double dot = 0, dot_mag = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        dot += y[j] * dy[j];
        dot_mag += fabs(y[j] * dy[j]);
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        double ref = y[j] * (dy[j] - dot);
        expect("softmax_backward_row", dt->name, detail, j, get(dt, out, j), ref,
               stored_tol(dt, ref, fabs(y[j]) * (fabs(dy[j]) + dot_mag)));
    }

    dt->k->log_softmax(row, y_row, n, threads);
    current_check = "log_softmax_backward_row";
    dt->k->log_softmax_backward(y_row, dy_row, out, n, threads);
    double total = 0, total_mag = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        total += dy[j];
        total_mag += fabs(dy[j]);
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        double p = exp(get(dt, y_row, j)), ref = dy[j] - p * total;
        expect("log_softmax_backward_row", dt->name, detail, j, get(dt, out, j), ref,
               stored_tol(dt, ref, fabs(dy[j]) + p * total_mag));
    }
    free(x); free(dy); free(y); free(row); free(dy_row); free(out); free(y_row);
}

/* One cross-entropy case: index target (prob_target 0) or probability row, optional
 * class weights, smoothing, z-loss and soft-capping; with and without the gradient, and
 * (index target) with the gradient written over the logits, as the in-place kernels. */
static void check_cross_entropy(const dtype *dt, Py_ssize_t n, int threads, int prob_target,
                                int weighted, double smoothing, double z_loss, double softcap) {
    snprintf(detail, sizeof detail,
             "n=%td threads=%d target=%s weights=%d smoothing=%g z_loss=%g softcap=%g", n,
             threads, prob_target ? "probabilities" : "index", weighted, smoothing, z_loss,
             softcap);
    const double s = 0.75, s_z = 1.25;
    double *x = malloc(n * sizeof *x), *t = malloc(n * sizeof *t), *w = malloc(n * sizeof *w);
    double *z = malloc(n * sizeof *z), *p = malloc(n * sizeof *p);
    void *row = random_row(dt, n, -6, 6, x), *t_row = malloc((size_t)n * dt->size);
    void *w_row = weighted ? malloc((size_t)n * dt->compute_size) : NULL;
    void *grad = malloc((size_t)n * dt->size);
    int64_t target = (int64_t)(next_random() % (uint64_t)n);
    double t_sum = 0, weight_sum = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        w[j] = weighted ? put_compute(dt, w_row, j, uniform(0.25, 2)) : 1;
        weight_sum += w[j];
        t_sum += t[j] = uniform(0, 1);
    }
    for (Py_ssize_t j = 0; j < n; j++)
        t[j] = prob_target ? put(dt, t_row, j, t[j] / t_sum) : j == target;

    /* reference, every term as written in row_functions_typed.h's comment */
    for (Py_ssize_t j = 0; j < n; j++) z[j] = softcap != 0 ? softcap * tanh(x[j] / softcap) : x[j];
    double m = ref_max(z, n), log_sum = ref_log_sum(z, n, m), lse = m + log_sum;
    double keep = 1 - smoothing, eps = smoothing / n, total_wt = 0, shifted_wt = 0, mag = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        double wt = w[j] * (keep * t[j] + eps);
        total_wt += wt;
        shifted_wt += wt * (z[j] - m);
        mag += fabs(wt * (z[j] - m));
        p[j] = exp(z[j] - lse);
    }
    double loss = total_wt * log_sum - shifted_wt;
    double exp_scale = s * total_wt + 2 * z_loss * s_z * lse;
    mag += total_wt * (log_sum + 1);
    const int64_t *y = prob_target ? NULL : &target;
    const void *t_arg = prob_target ? t_row : NULL;

    for (int variant = 0; variant < (prob_target ? 2 : 3); variant++) {
        /* 0: loss alone; 1: with the gradient; 2: the gradient over the logits */
        void *grad_arg = variant == 0 ? NULL : variant == 1 ? grad : row;
        const char *fn = variant == 0 ? "cross_entropy_row (loss)"
                         : variant == 1 ? "cross_entropy_row (loss+grad)"
                                        : "cross_entropy_row (in place)";
        void *x_copy = malloc((size_t)n * dt->size);
        memcpy(x_copy, row, (size_t)n * dt->size);
        double z_term = NAN;
        current_check = fn;
        double got = dt->k->cross_entropy(row, y, t_arg, w_row, weight_sum, smoothing, z_loss,
                                       softcap, s, s_z, n, grad_arg, &z_term, threads);
        expect(fn, dt->name, detail, 0, got, loss, compute_tol(dt, loss, mag));
        expect("cross_entropy_row (z term)", dt->name, detail, 0, z_term, z_loss * lse * lse,
               compute_tol(dt, z_loss * lse * lse, z_loss * fabs(lse) * (fabs(m) + log_sum)));
        for (Py_ssize_t j = 0; grad_arg && j < n; j++) {
            double slope = softcap != 0 ? 1 - (z[j] / softcap) * (z[j] / softcap) : 1;
            double target_term = s * w[j] * (keep * t[j] + eps);
            double ref = slope * (exp_scale * p[j] - target_term);
            expect(fn, dt->name, detail, j, get(dt, grad_arg, j), ref,
                   stored_tol(dt, ref, slope * (fabs(exp_scale) * p[j] + target_term)));
        }
        memcpy(row, x_copy, (size_t)n * dt->size);
        free(x_copy);
    }
    free(x); free(t); free(w); free(z); free(p); free(row); free(t_row); free(w_row); free(grad);
}

static void check_entropy(const dtype *dt, Py_ssize_t n, int threads) {
    snprintf(detail, sizeof detail, "n=%td threads=%d", n, threads);
    const double s = 1.5;
    double *x = malloc(n * sizeof *x);
    void *row = random_row(dt, n, -5, 5, x), *grad = malloc((size_t)n * dt->size);
    if (n > 2) x[1] = put(dt, row, 1, -INFINITY);  /* a -inf logit adds 0, gets grad 0 */
    double m = ref_max(x, n), log_sum = ref_log_sum(x, n, m), mean_d = 0, mean_mag = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        double p = exp(x[j] - m - log_sum);
        mean_d += p == 0 ? 0 : p * (x[j] - m);
        mean_mag += p == 0 ? 0 : p * fabs(x[j] - m);
    }
    double ref = log_sum - mean_d;
    current_check = "entropy_row";
    expect("entropy_row (loss)", dt->name, detail, 0, dt->k->entropy(row, s, n, NULL, threads),
           ref, compute_tol(dt, ref, log_sum + 1 + mean_mag));
    expect("entropy_row (loss+grad)", dt->name, detail, 0, dt->k->entropy(row, s, n, grad, threads),
           ref, compute_tol(dt, ref, log_sum + 1 + mean_mag));
    for (Py_ssize_t j = 0; j < n; j++) {
        double p = exp(x[j] - m - log_sum), d = p == 0 ? 0 : x[j] - m;
        double g = s * p * (mean_d - d);
        expect("entropy_row (grad)", dt->name, detail, j, get(dt, grad, j), g,
               stored_tol(dt, g, s * p * (mean_mag + fabs(d))));
    }
    free(x); free(row); free(grad);
}

/* The generalised JSD of one pair of rows in double (beta 0: KL(P || Q), 1: KL(Q || P),
 * else beta KL(P || M) + (1 - beta) KL(Q || M)): returns the loss and sets *loss_mag; per
 * class, grad = scale * d loss / d s and grad_mag its magnitude (for the tolerance). */
static double ref_jsd(const double *s, const double *t, Py_ssize_t n, double beta,
                      double inv_t, double scale, double *loss_mag, double *grad,
                      double *grad_mag) {
    double *log_q = malloc(n * sizeof *log_q), *log_p = malloc(n * sizeof *log_p);
    double *r = malloc(n * sizeof *r);
    double m_s = ref_max(s, n), m_t = ref_max(t, n);
    for (Py_ssize_t j = 0; j < n; j++) {
        log_q[j] = (s[j] - m_s) * inv_t;
        log_p[j] = (t[j] - m_t) * inv_t;
    }
    double ls_q = ref_log_sum(log_q, n, 0), ls_p = ref_log_sum(log_p, n, 0);
    double loss = 0, kl_q = 0, kl_mag = 0;
    *loss_mag = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        log_q[j] -= ls_q;
        log_p[j] -= ls_p;
        double q = exp(log_q[j]), p = exp(log_p[j]);
        double log_m = beta == 0 ? log_q[j] : beta == 1 ? log_p[j]
                       : log(beta * p + (1 - beta) * q);
        double term_q = q * (log_q[j] - log_m), term_p = p * (log_p[j] - log_m);
        double term = beta == 0 ? term_p : beta == 1 ? term_q : beta * term_p + (1 - beta) * term_q;
        loss += term;
        *loss_mag += fabs(term) + (p + q) * (fabs(log_q[j]) + fabs(log_p[j]));
        r[j] = log_q[j] - log_m;
        kl_q += term_q;
        kl_mag += fabs(term_q);
    }
    double k = scale * inv_t * (beta == 0 || beta == 1 ? 1 : 1 - beta);
    for (Py_ssize_t j = 0; j < n; j++) {
        double q = exp(log_q[j]), p = exp(log_p[j]);
        grad[j] = beta == 0 ? k * (q - p) : k * q * (r[j] - kl_q);
        grad_mag[j] = beta == 0 ? k * (q + p) : k * q * (fabs(r[j]) + kl_mag + fabs(log_q[j]));
    }
    free(log_q); free(log_p); free(r);
    return loss;
}

static void check_jsd(const dtype *dt, Py_ssize_t n, int threads, double beta, double inv_t) {
    snprintf(detail, sizeof detail, "n=%td threads=%d beta=%g inv_t=%g", n, threads, beta,
             inv_t);
    const double scale = 0.7;
    double *s = malloc(n * sizeof *s), *t = malloc(n * sizeof *t);
    double *ref_grad = malloc(n * sizeof *ref_grad), *grad_mag = malloc(n * sizeof *grad_mag);
    void *s_row = random_row(dt, n, -4, 4, s), *t_row = random_row(dt, n, -4, 4, t);
    void *grad = malloc((size_t)n * dt->size);
    double loss_mag, loss = ref_jsd(s, t, n, beta, inv_t, scale, &loss_mag, ref_grad, grad_mag);
    current_check = "jsd_row";
    expect("jsd_row (loss)", dt->name, detail, 0,
           dt->k->jsd(s_row, t_row, beta, inv_t, scale, n, NULL, threads), loss,
           compute_tol(dt, loss, loss_mag));
    expect("jsd_row (loss+grad)", dt->name, detail, 0,
           dt->k->jsd(s_row, t_row, beta, inv_t, scale, n, grad, threads), loss,
           compute_tol(dt, loss, loss_mag));
    for (Py_ssize_t j = 0; j < n; j++)
        expect("jsd_row (grad)", dt->name, detail, j, get(dt, grad, j), ref_grad[j],
               stored_tol(dt, ref_grad[j], grad_mag[j]));
    free(s); free(t); free(ref_grad); free(grad_mag); free(s_row); free(t_row); free(grad);
}

/* Rows holding NaN or infinities: the results torch gives, which the kernels document. */
static void check_special_rows(const dtype *dt) {
    enum { N = 6 };
    double x[N];
    void *row = malloc(N * dt->size), *out = malloc(N * dt->size);
    int64_t target = 2;
    struct { const char *name; double value; int where; double lse; } cases[] = {
        {"a NaN", NAN, 3, NAN},
        {"a +inf", INFINITY, 4, INFINITY},
        {"all -inf", -INFINITY, -1, -INFINITY},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        snprintf(detail, sizeof detail, "row with %s", cases[c].name);
        for (Py_ssize_t j = 0; j < N; j++)
            x[j] = put(dt, row, j, cases[c].where < 0 || j == cases[c].where ? cases[c].value
                                                                             : 0.25 * j);
        current_check = "special rows";
        expect("logsumexp_row", dt->name, detail, 0, dt->k->logsumexp(row, N, 0), cases[c].lse, 0);
        dt->k->softmax(row, out, N, 0);  /* a row whose max is not finite: NaN */
        for (Py_ssize_t j = 0; j < N; j++)
            expect("softmax_row", dt->name, detail, j, get(dt, out, j), NAN, 0);
        expect("entropy_row (loss+grad)", dt->name, detail, 0,
               dt->k->entropy(row, 1, N, out, 0), NAN, 0);
        for (Py_ssize_t j = 0; j < N; j++)
            expect("entropy_row (grad)", dt->name, detail, j, get(dt, out, j), NAN, 0);
        if (cases[c].where >= 0 && isnan(cases[c].value))
            expect("cross_entropy_row (loss+grad)", dt->name, detail, 0,
                   dt->k->cross_entropy(row, &target, NULL, NULL, N, 0, 0, 0, 1, 1, N, out, NULL,
                                        0),
                   NAN, 0);
    }
    /* a -inf logit apart from the target: probability 0, a finite loss */
    snprintf(detail, sizeof detail, "row with one -inf");
    for (Py_ssize_t j = 0; j < N; j++) x[j] = put(dt, row, j, j == 0 ? -INFINITY : 0.5 * j);
    double m = ref_max(x, N), log_sum = ref_log_sum(x, N, m);
    double loss = dt->k->cross_entropy(row, &target, NULL, NULL, N, 0, 0, 0, 1, 1, N, out, NULL, 0);
    expect("cross_entropy_row (loss+grad)", dt->name, detail, 0, loss, m + log_sum - x[2],
           compute_tol(dt, loss, m + log_sum));
    expect("cross_entropy_row (loss+grad)", dt->name, detail, 0, get(dt, out, 0), 0, 0);
    free(row); free(out);
}

/* Split rows (fs_split_rows: fewer than 4 rows of >= 65536 classes) run chunks on
 * `threads` threads; their results must not depend on the thread count. */
static void check_thread_count_independence(const dtype *dt, Py_ssize_t n) {
    snprintf(detail, sizeof detail, "n=%td threads 1 vs 2", n);
    double *x = malloc(n * sizeof *x);
    void *row = random_row(dt, n, -8, 8, x);
    void *one = malloc((size_t)n * dt->size), *two = malloc((size_t)n * dt->size);
    int64_t target = n / 3;
    current_check = "thread count independence";
    dt->k->softmax(row, one, n, 1);
    dt->k->softmax(row, two, n, 2);
    int same = memcmp(one, two, (size_t)n * dt->size) == 0;
    double loss_one = dt->k->cross_entropy(row, &target, NULL, NULL, n, 0.1, 0, 0, 1, 1, n, one,
                                           NULL, 1);
    double loss_two = dt->k->cross_entropy(row, &target, NULL, NULL, n, 0.1, 0, 0, 1, 1, n, two,
                                           NULL, 2);
    same = same && loss_one == loss_two && memcmp(one, two, (size_t)n * dt->size) == 0;
    expect("split row: same bits on 1 and 2 threads", dt->name, detail, 0, same, 1, 0);
    free(x); free(row); free(one); free(two);
}

/* ---- exp, log and the 16-bit conversions ---- */

static void check_exp_and_log(void) {
    /* rows.h's bounds (fs_exp_core_*, FS_EXP_HI): below lo the result is 0, above hi
     * (fs_exp) +inf */
    const float lo_f = -126.0f * 0.69314718f, hi_f = 127.0f * 0.69314718f;
    const double lo_d = -1022.0 * 0.6931471805599453, hi_d = 1023.0 * 0.6931471805599453;
    enum { COUNT = 20000 };
    static float xf[COUNT], ef[COUNT];
    static double xd[COUNT], ed[COUNT];
    current_check = "exp";
    for (int i = 0; i < COUNT; i++) {
        xf[i] = (float)(i < COUNT / 2 ? uniform(-90, 90) : uniform(-20, 0));
        xd[i] = i < COUNT / 2 ? uniform(-710, 712) : uniform(-40, 0);
    }
    const float specials_f[] = {0, -0.0f, NAN, INFINITY, -INFINITY, lo_f, nextafterf(lo_f, 0),
                                hi_f, nextafterf(hi_f, INFINITY), 88.5f, -87.0f};
    const double specials_d[] = {0, NAN, INFINITY, -INFINITY, lo_d, nextafter(lo_d, 0), hi_d,
                                 nextafter(hi_d, INFINITY), 709.5, -708.0, 1e-300};
    memcpy(xf, specials_f, sizeof specials_f);
    memcpy(xd, specials_d, sizeof specials_d);
    /* the documented contract: 0 below the normal range (x < lo), +inf above hi */
    for (int i = 0; i < COUNT; i++) {
        double ref_f = xf[i] < lo_f ? 0 : xf[i] > hi_f ? INFINITY : exp(xf[i]);
        expect("fs_exp_f", "float", "scalar", i, kernel_exp_f(xf[i]), ref_f,
               3e-7 * fabs(ref_f) + FLT_TRUE_MIN);
        double ref_d = xd[i] < lo_d ? 0 : xd[i] > hi_d ? INFINITY : exp(xd[i]);
        expect("fs_exp_d", "double", "scalar", i, kernel_exp_d(xd[i]), ref_d,
               5e-16 * fabs(ref_d) + DBL_TRUE_MIN);
    }
    /* the vector loop of the block kernels (fs_exp_core: inputs x - max <= 0, NaN, -inf) */
    int kept = 0;
    for (int i = 0; i < COUNT; i++)
        if (!(xf[i] > 0) && !(xd[i] > 0)) { xf[kept] = xf[i]; xd[kept] = xd[i]; kept++; }
    memcpy(ef, xf, sizeof ef);
    memcpy(ed, xd, sizeof ed);
    kernel_exp_array_f(ef, kept);
    kernel_exp_array_d(ed, kept);
    for (int i = 0; i < kept; i++) {
        double ref_f = xf[i] < lo_f ? 0 : exp(xf[i]), ref_d = xd[i] < lo_d ? 0 : exp(xd[i]);
        expect("fs_exp_array_f", "float", "vector", i, ef[i], ref_f,
               3e-7 * fabs(ref_f) + FLT_TRUE_MIN);
        expect("fs_exp_array_d", "double", "vector", i, ed[i], ref_d,
               5e-16 * fabs(ref_d) + DBL_TRUE_MIN);
    }

    /* fs_log_array (the block kernels' log of the exp sums, >= 1) and the float log of
     * the JSD */
    current_check = "log";
    for (int i = 0; i < COUNT; i++) xd[i] = i < 100 ? 1 + i * 0x1p-40 : exp(uniform(0, 40));
    xd[0] = 0; xd[1] = INFINITY; xd[2] = NAN;
    kernel_log_array(xd, ed, COUNT);
    for (int i = 0; i < COUNT; i++)
        expect("fs_log_array", "double", "vector", i, ed[i], log(xd[i]),
               5e-16 * fabs(log(xd[i])) + DBL_TRUE_MIN);
    for (int i = 0; i < COUNT; i++) {
        float v = (float)exp(uniform(-87, 88));
        expect("fs_log_normal_f", "float", "scalar", i, kernel_log_normal_f(v), log(v),
               3e-7 * fabs(log(v)) + 1e-7);
    }
}

/* float inputs of the stores: every 16-bit value of both formats, the midpoints between
 * neighbours (ties) and one float ulp either side, edge values, random bit patterns */
static float *store_inputs(Py_ssize_t *count) {
    Py_ssize_t cap = 65536 * 8 + 200000 + 16, n = 0;
    float *v = malloc(cap * sizeof *v);
    for (uint32_t bits = 0; bits < 65536; bits++) {
        for (int format = 0; format < 2; format++) {
            double a = format ? decode_float16((uint16_t)bits) : decode_bfloat16((uint16_t)bits);
            double b = format ? decode_float16((uint16_t)(bits + 1))
                              : decode_bfloat16((uint16_t)(bits + 1));
            v[n++] = (float)a;
            if (isfinite(a) && isfinite(b) && (bits & 0x7fff) != 0x7fff) {
                float mid = (float)((a + b) / 2);  /* exact in float */
                v[n++] = mid;
                v[n++] = nextafterf(mid, INFINITY);
                v[n++] = nextafterf(mid, -INFINITY);
            }
        }
    }
    const float edges[] = {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e6f, FLT_MAX, -FLT_MAX,
                           INFINITY, -INFINITY, NAN, -NAN, 0x1p-25f, 0x1p-26f, FLT_TRUE_MIN,
                           -0.0f, 3.3961776e38f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) v[n++] = edges[i];
    while (n < cap) {
        uint32_t bits = (uint32_t)next_random();
        memcpy(&v[n++], &bits, sizeof bits);
    }
    *count = n;
    return v;
}

static void check_conversions(void) {
    current_check = "16-bit loads";
    static uint16_t all_b[65536];
    static int16_t all_h[65536];
    static float loaded_b[65536], loaded_h[65536], vloaded_b[65536], vloaded_h[65536];
    for (uint32_t bits = 0; bits < 65536; bits++) {
        all_b[bits] = (uint16_t)bits;
        all_h[bits] = (int16_t)(uint16_t)bits;
    }
    kernel_load_array_b(all_b, loaded_b, 65536);
    kernel_load_array_h(all_h, loaded_h, 65536);
    kernel_vload_array_b(all_b, vloaded_b, 65535);  /* 65535: a partial last vector */
    kernel_vload_array_h(all_h, vloaded_h, 65535);
    vloaded_b[65535] = loaded_b[65535];
    vloaded_h[65535] = loaded_h[65535];
    for (uint32_t bits = 0; bits < 65536; bits++) {
        /* exact, sign included: compared as bits, NaN as NaN */
        double rb = decode_bfloat16((uint16_t)bits), rh = decode_float16((uint16_t)bits);
        float got[6] = {kernel_load_b(all_b[bits]), loaded_b[bits], vloaded_b[bits],
                        kernel_load_h(all_h[bits]), loaded_h[bits], vloaded_h[bits]};
        const char *names[6] = {"fs_load_b", "fs_load_array_b", "fs_vwiden_b", "fs_load_h",
                                "fs_load_array_h", "fs_vwiden_h"};
        for (int k = 0; k < 6; k++) {
            double ref = k < 3 ? rb : rh;
            float ref_f = (float)ref;
            uint32_t got_bits, ref_bits;
            memcpy(&got_bits, &got[k], sizeof got_bits);
            memcpy(&ref_bits, &ref_f, sizeof ref_bits);
            int ok = isnan(ref) ? isnan(got[k]) && !signbit(got[k]) == !signbit(ref)
                                : got_bits == ref_bits;
            record(names[k], "", 0);
            if (!ok && failures++ < 40)
                fprintf(stderr, "FAIL %s bits 0x%04x: got %.9g, expected %.9g\n", names[k], bits,
                        got[k], ref);
        }
    }

    current_check = "16-bit stores";
    Py_ssize_t n;
    float *v = store_inputs(&n);
    uint16_t *stored_b = malloc(n * sizeof *stored_b), *vstored_b = malloc(n * sizeof *vstored_b);
    int16_t *stored_h = malloc(n * sizeof *stored_h), *vstored_h = malloc(n * sizeof *vstored_h);
    kernel_store_array_b(v, stored_b, n);
    kernel_store_array_h(v, stored_h, n);
    kernel_vstore_array_b(v, vstored_b, n);
    kernel_vstore_array_h(v, vstored_h, n);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t input;
        memcpy(&input, &v[i], sizeof input);
        unsigned got[6] = {kernel_store_b(v[i]), stored_b[i], vstored_b[i],
                           (uint16_t)kernel_store_h(v[i]), (uint16_t)stored_h[i],
                           (uint16_t)vstored_h[i]};
        const char *names[6] = {"fs_store_b", "fs_store_array_b", "fs_vround_b", "fs_store_h",
                                "fs_store_array_h", "fs_vround_h"};
        for (int k = 0; k < 6; k++) {
            if (isnan(v[i])) {  /* a NaN stays a NaN, with its sign */
                double back = k < 3 ? decode_bfloat16((uint16_t)got[k])
                                    : decode_float16((uint16_t)got[k]);
                expect_bits(names[k], "NaN stays NaN with its sign", input,
                            isnan(back) && !!(got[k] & 0x8000) == !!signbit(v[i]), 1);
            } else {
                unsigned ref = k < 3 ? encode_bfloat16(v[i]) : encode_float16(v[i]);
                expect_bits(names[k], "round to nearest even", input, got[k], ref);
            }
        }
    }
    free(v); free(stored_b); free(stored_h); free(vstored_b); free(vstored_h);
}

/* ---- the short-row helpers of the block kernels (float and double only) ----
 * Their vector loads and stores are the code that differs by instruction set (AVX-512
 * masks, AVX2 vmaskmov, 16-byte memcpy elsewhere, e.g. NEON). Every input row ends at
 * an unreadable page and every output row too, so that a read or write past the row
 * stops the harness (SIGSEGV, reported with the check's name). */

typedef struct { void *map; size_t length; } guarded;

/* `bytes` of fresh memory that end where an inaccessible page begins */
static void *guarded_alloc(size_t bytes, guarded *g) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = (bytes + page - 1) / page + 1;
    g->length = pages * page;
    g->map = mmap(NULL, g->length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    char *guard = (char *)g->map + (pages - 1) * page;
    mprotect(guard, page, PROT_NONE);
    return guard - bytes;
}

static void guarded_free(guarded *g) { munmap(g->map, g->length); }

/* A guarded row of n random values in [lo, hi] of dt; values[] gets them. */
static void *guarded_row(const dtype *dt, Py_ssize_t n, double lo, double hi, double *values,
                         guarded *g) {
    void *row = guarded_alloc((size_t)n * dt->size, g);
    for (Py_ssize_t j = 0; j < n; j++) values[j] = put(dt, row, j, uniform(lo, hi));
    return row;
}

/* a scalar as the helper receives it (cast to the row type) */
static double as_row_type(const dtype *dt, double v) {
    return dt->size == 4 ? (double)(float)v : v;
}

static void check_short_rows(const dtype *dt, const short_kernels *h, Py_ssize_t n) {
    snprintf(detail, sizeof detail, "n=%td (%d-byte vectors)", n, kernel_vec_bytes);
    double *x = malloc(n * sizeof *x), *e = malloc(n * sizeof *e), *t = malloc(n * sizeof *t);
    double *w = malloc(n * sizeof *w);
    guarded gx, ge, gt, gw, gout;
    void *x_row = guarded_row(dt, n, -6, 6, x, &gx), *e_row = guarded_row(dt, n, 0, 1, e, &ge);
    void *t_row = guarded_row(dt, n, 0, 1, t, &gt), *w_row = guarded_row(dt, n, 0.5, 2, w, &gw);
    void *out = guarded_alloc((size_t)n * dt->size, &gout);
    double m = ref_max(x, n);

    current_check = "fs_short_shift_max";
    expect("fs_short_shift_max (max)", dt->name, detail, 0, h->shift_max(x_row, n, out), m, 0);
    for (Py_ssize_t j = 0; j < n; j++)
        expect("fs_short_shift_max", dt->name, detail, j, get(dt, out, j), x[j] - m,
               stored_tol(dt, x[j] - m, 0));

    current_check = "fs_short_dot";
    for (int weighted = 0; weighted < 2; weighted++) {
        double ref = 0, mag = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            ref += x[j] * (weighted ? w[j] : 1);
            mag += fabs(x[j] * (weighted ? w[j] : 1));
        }
        expect(weighted ? "fs_short_dot (a, b)" : "fs_short_dot (a, NULL)", dt->name, detail, 0,
               h->dot(x_row, weighted ? w_row : NULL, n), ref, compute_tol(dt, ref, mag));
    }

    const double keep = as_row_type(dt, 0.9), eps = as_row_type(dt, 0.1 / n);
    const double k = as_row_type(dt, 0.8), f = as_row_type(dt, 0.3), c = as_row_type(dt, 0.6);
    current_check = "fs_short_prob_sums / fs_short_prob_rescale";
    for (int weighted = 0; weighted < 2; weighted++) {
        const void *w_arg = weighted ? w_row : NULL;
        double total = 0, shifted = 0, mag = 0, got_total, got_shifted;
        for (Py_ssize_t j = 0; j < n; j++) {
            double wt = (weighted ? w[j] : 1) * (t[j] * keep + eps);
            total += wt;
            shifted += wt * (x[j] - m);
            mag += fabs(wt * (x[j] - m));
        }
        h->prob_sums(x_row, m, t_row, w_arg, n, keep, eps, &got_total, &got_shifted);
        expect("fs_short_prob_sums (total)", dt->name, detail, weighted, got_total, total,
               compute_tol(dt, total, 0));
        expect("fs_short_prob_sums (shifted)", dt->name, detail, weighted, got_shifted, shifted,
               compute_tol(dt, shifted, mag));
        h->prob_rescale(e_row, t_row, w_arg, k, f, keep, eps, out, n);
        for (Py_ssize_t j = 0; j < n; j++) {
            double wt = (weighted ? w[j] : 1) * (t[j] * keep + eps), ref = e[j] * k - f * wt;
            expect("fs_short_prob_rescale", dt->name, detail, j, get(dt, out, j), ref,
                   stored_tol(dt, ref, e[j] * k + f * wt));
        }
    }

    current_check = "fs_short_rescale";
    int64_t target = (int64_t)(next_random() % (uint64_t)n);
    for (int weighted = 0; weighted < 2; weighted++) {
        h->rescale(e_row, k, f, weighted ? w_row : NULL, target, c, out, n);
        for (Py_ssize_t j = 0; j < n; j++) {
            double wj = weighted ? w[j] : 1, ref = e[j] * k - f * wj - (j == target ? c : 0);
            expect("fs_short_rescale", dt->name, detail, j, get(dt, out, j), ref,
                   stored_tol(dt, ref, e[j] * k + f * wj + c));
        }
    }

    current_check = "fs_short_shift";
    h->shift(x_row, m, c, out, n);
    for (Py_ssize_t j = 0; j < n; j++)
        expect("fs_short_shift", dt->name, detail, j, get(dt, out, j), (x[j] - m) - c,
               stored_tol(dt, (x[j] - m) - c, fabs(x[j] - m) + c));

    current_check = "fs_short_entropy_dot / fs_short_entropy_grad";
    if (n > 1) x[0] = put(dt, x_row, 0, -INFINITY);  /* its d is the floor, -1e30 */
    double ed = 0, ed_mag = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        double d = fmax(x[j] - m, kernel_entropy_floor);
        ed += e[j] * d;
        ed_mag += fabs(e[j] * d);
    }
    expect("fs_short_entropy_dot", dt->name, detail, 0, h->entropy_dot(e_row, x_row, m, n), ed,
           compute_tol(dt, ed, ed_mag));
    const double mean_d = as_row_type(dt, -1.5);
    h->entropy_grad(e_row, x_row, m, k, mean_d, out, n);
    for (Py_ssize_t j = 0; j < n; j++) {
        double d = fmax(x[j] - m, kernel_entropy_floor), ref = k * e[j] * (mean_d - d);
        expect("fs_short_entropy_grad", dt->name, detail, j, get(dt, out, j), ref,
               stored_tol(dt, ref, k * e[j] * (fabs(mean_d) + fabs(d))));
    }
    guarded *all[] = {&gx, &ge, &gt, &gw, &gout};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) guarded_free(all[i]);
    free(x); free(e); free(t); free(w);
}

/* fs_short_backward_rows (narrow_typed.h): softmax and log_softmax backward of `rows`
 * rows of n classes, each a few masked vectors, in place on y */
static void check_short_backward_rows(const dtype *dt, Py_ssize_t rows, Py_ssize_t n) {
    snprintf(detail, sizeof detail, "rows=%td n=%td (%d-byte vectors)", rows, n, kernel_vec_bytes);
    Py_ssize_t count = rows * n;
    double *x = malloc(count * sizeof *x), *t = malloc(count * sizeof *t);
    double *lse = malloc(rows * sizeof *lse);
    guarded gx, gt, gout;
    guarded_row(dt, count, -6, 6, x, &gx);
    void *t_rows = guarded_row(dt, count, -1, 1, t, &gt);
    void *out = guarded_alloc((size_t)count * dt->size, &gout);
    for (Py_ssize_t r = 0; r < rows; r++) {
        double m = ref_max(x + r * n, n);
        lse[r] = m + ref_log_sum(x + r * n, n, m);
    }
    current_check = "fs_short_backward_rows";
    double *y_back = malloc(count * sizeof *y_back);  /* y as stored */
    for (int log = 0; log < 2; log++) {  /* y: the softmax (log 0) or log_softmax rows */
        for (Py_ssize_t i = 0; i < count; i++) {
            double v = x[i] - lse[i / n];
            y_back[i] = put(dt, out, i, log ? v : exp(v));
        }
        dt->k->short_backward_rows(out, t_rows, rows, n, log, out);  /* dy: t, into y */
        for (Py_ssize_t r = 0; r < rows; r++) {
            double total = 0, mag = 0;  /* sum(y dy) or sum(dy) */
            for (Py_ssize_t j = 0; j < n; j++) {
                double y_j = y_back[r * n + j], dy = t[r * n + j];
                total += log ? dy : y_j * dy;
                mag += log ? fabs(dy) : y_j * fabs(dy);
            }
            for (Py_ssize_t j = 0; j < n; j++) {
                double y_j = y_back[r * n + j], dy = t[r * n + j];
                double p = log ? exp(y_j) : y_j;
                double ref = log ? dy - p * total : p * (dy - total);
                expect(log ? "fs_short_backward_rows (log_softmax)"
                           : "fs_short_backward_rows (softmax)",
                       dt->name, detail, r * n + j, get(dt, out, r * n + j), ref,
                       stored_tol(dt, ref, fabs(dy) + p * mag + (log ? p * mag : 0)));
            }
        }
    }
    free(y_back);
    guarded *all[] = {&gx, &gt, &gout};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) guarded_free(all[i]);
    free(x); free(t); free(lse);
}

/* The narrow rows (narrow_typed.h fs_narrow_*): `rows` rows of n <= FS_NARROW_BYTES /
 * compute size classes, transposed in registers (16-bit rows widened and rounded on the
 * way): fs_narrow_entropy_rows, fs_narrow_softmax_rows (softmax, log_softmax, logsumexp),
 * fs_narrow_jsd_rows (forward and reverse KL, JSD; temperatures, per-row scales, loss
 * only) and fs_narrow_cross_entropy_rows (weights, smoothing, z-loss, per-row scales; index
 * targets with every third row ignored, into out, loss only and in place; probability
 * targets) */
static void check_narrow_rows(const dtype *dt, Py_ssize_t rows, Py_ssize_t n) {
    const row_kernels *h = dt->k;
    snprintf(detail, sizeof detail, "rows=%td n=%td (%d-byte vectors)", rows, n, kernel_vec_bytes);
    Py_ssize_t count = rows * n;
    double *x = malloc(count * sizeof *x), *w = malloc(n * sizeof *w);
    double *lse = malloc(rows * sizeof *lse), *scales = malloc(rows * sizeof *scales);
    int64_t *y = malloc(rows * sizeof *y);
    double *t = malloc(count * sizeof *t);
    guarded gx, gw, gh, gout, gl, gz, gt;
    void *x_rows = guarded_row(dt, count, -6, 6, x, &gx);
    void *t_rows = guarded_row(dt, count, 0, 1, t, &gt);  /* not normalised: sum(t) != 1 too */
    void *w_row = guarded_alloc((size_t)n * dt->compute_size, &gw);  /* class weights */
    for (Py_ssize_t j = 0; j < n; j++) w[j] = put_compute(dt, w_row, j, uniform(0.5, 2));
    void *h_rows = guarded_alloc(rows * dt->size, &gh);
    void *out = guarded_alloc((size_t)count * dt->size, &gout);
    double *loss = guarded_alloc(rows * sizeof(double), &gl);
    double *z = guarded_alloc(rows * sizeof(double), &gz);
    double weight_sum = 0;
    for (Py_ssize_t j = 0; j < n; j++) weight_sum += w[j];
    for (Py_ssize_t r = 0; r < rows; r++) {
        const double *xr = x + r * n;
        double mr = ref_max(xr, n), sum = 0;
        for (Py_ssize_t j = 0; j < n; j++) sum += exp(xr[j] - mr);
        lse[r] = mr + log(sum);
        y[r] = r % 3 == 1 ? -100 : (r * 7) % n;
        scales[r] = 0.5 + 0.25 * (double)(r % 5);
    }
    current_check = "fs_narrow_entropy_rows";
    h->narrow_entropy_rows(x_rows, rows, n, 0.75, scales, loss, h_rows, out);
    for (Py_ssize_t r = 0; r < rows; r++) {
        const double *xr = x + r * n;
        double entropy = 0, mag = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            double p = exp(xr[j] - lse[r]);
            entropy -= p * (xr[j] - lse[r]);
            mag += p * fabs(xr[j] - lse[r]);
        }
        expect("fs_narrow_entropy_rows (entropy)", dt->name, detail, r, loss[r], entropy,
               compute_tol(dt, entropy, mag + fabs(lse[r])));
        expect("fs_narrow_entropy_rows (h)", dt->name, detail, r, get(dt, h_rows, r), entropy,
               stored_tol(dt, entropy, mag + fabs(lse[r])));
        for (Py_ssize_t j = 0; j < n; j++) {  /* dH/dx_j = -p_j (log p_j + H) */
            double p = exp(xr[j] - lse[r]), log_p = xr[j] - lse[r];
            double ref = -0.75 * scales[r] * p * (log_p + entropy);
            expect("fs_narrow_entropy_rows (grad)", dt->name, detail, r * n + j,
                   get(dt, out, r * n + j), ref,
                   stored_tol(dt, ref, 0.75 * scales[r] * p * (fabs(log_p) + mag + fabs(lse[r]))));
        }
    }
    current_check = "fs_narrow_softmax_rows";
    for (int op = 0; op < 3; op++) {
        h->narrow_softmax_rows(x_rows, rows, n, op, out);
        for (Py_ssize_t r = 0; r < rows; r++) {
            if (op == 2) {
                expect("fs_narrow_softmax_rows (logsumexp)", dt->name, detail, r,
                       get(dt, out, r), lse[r], stored_tol(dt, lse[r], fabs(lse[r]) + 1));
                continue;
            }
            for (Py_ssize_t j = 0; j < n; j++) {
                double v = x[r * n + j] - lse[r], ref = op == 0 ? exp(v) : v;
                expect(op == 0 ? "fs_narrow_softmax_rows (softmax)"
                               : "fs_narrow_softmax_rows (log_softmax)",
                       dt->name, detail, r * n + j, get(dt, out, r * n + j), ref,
                       stored_tol(dt, ref, op == 0 ? 0 : fabs(x[r * n + j]) + fabs(lse[r])));
            }
        }
    }
    current_check = "fs_narrow_jsd_rows";  /* student x, teacher t (not normalised) */
    double *ref_grad = malloc(n * sizeof *ref_grad), *grad_mag = malloc(n * sizeof *grad_mag);
    const double betas[] = {0, 1, 0.5, 0.2}, inv_ts[] = {1, 0.5, 1, 2};
    for (int c = 0; c < 4; c++) {
        h->narrow_jsd_rows(x_rows, t_rows, rows, n, betas[c], inv_ts[c], 0.7,
                           c % 2 ? scales : NULL, loss, c == 3 ? NULL : out);
        for (Py_ssize_t r = 0; r < rows; r++) {
            double scale = c % 2 ? 0.7 * scales[r] : 0.7, loss_mag;
            double ref = ref_jsd(x + r * n, t + r * n, n, betas[c], inv_ts[c], scale,
                                 &loss_mag, ref_grad, grad_mag);
            expect("fs_narrow_jsd_rows (loss)", dt->name, detail, r, loss[r], ref,
                   compute_tol(dt, ref, loss_mag));
            for (Py_ssize_t j = 0; c != 3 && j < n; j++)
                expect("fs_narrow_jsd_rows (grad)", dt->name, detail, r * n + j,
                       get(dt, out, r * n + j), ref_grad[j], stored_tol(dt, ref_grad[j],
                                                                        grad_mag[j]));
        }
    }
    free(ref_grad); free(grad_mag);
    current_check = "fs_narrow_cross_entropy_rows";
    const double smoothing = 0.1, z_loss = 1e-2, scale = 0.75, z_scale = 0.5;
    const double o[5] = {weight_sum, smoothing, z_loss, scale, z_scale};
    const double keep = 1 - smoothing, eps = smoothing / (double)n;
    /* index targets into out; loss only; probability targets into out; index targets in
     * place (last: x is overwritten) */
    for (int variant = 0; variant < 4; variant++) {
        const int prob = variant == 2;
        void *grad = variant == 1 ? NULL : variant == 3 ? x_rows : out;
        h->narrow_cross_entropy_rows(x_rows, prob ? NULL : y, prob ? t_rows : NULL, w_row, o,
                                     -100, scales, rows, n, loss, z, grad);
        for (Py_ssize_t r = 0; r < rows; r++) {
            const double *xr = x + r * n, log_sum = lse[r] - ref_max(xr, n);
            int live = prob || y[r] >= 0;
            double total = 0, shifted = 0, mag = 0, w_y = 0;
            for (Py_ssize_t j = 0; j < n; j++) {  /* t' = keep t + eps */
                double t_j = prob ? t[r * n + j] : j == y[r], wt = w[j] * (keep * t_j + eps);
                double d = xr[j] - lse[r] + log_sum;  /* x - m */
                total += wt;
                shifted += wt * d;
                mag += wt * fabs(d);
                if (t_j != 0 && !prob) w_y = w[j];
            }
            double ref_loss = live ? total * log_sum - shifted : 0;
            expect("fs_narrow_cross_entropy_rows (loss)", dt->name, detail, r, loss[r],
                   ref_loss, compute_tol(dt, ref_loss, total * log_sum + mag));
            double ref_z = live ? z_loss * lse[r] * lse[r] : 0;  /* lse = m + log_sum */
            double z_mag = 2 * z_loss * fabs(lse[r]) * (fabs(lse[r]) + 2 * log_sum);
            expect("fs_narrow_cross_entropy_rows (z-loss)", dt->name, detail, r, z[r], ref_z,
                   compute_tol(dt, ref_z, z_mag));
            if (!grad) continue;
            double s = scale * scales[r];
            double exp_scale = s * total + 2 * z_loss * lse[r] * z_scale * scales[r];
            for (Py_ssize_t j = 0; j < n; j++) {
                double p = exp(xr[j] - lse[r]);
                double t_j = prob ? t[r * n + j] : j == y[r];
                double ref = live ? exp_scale * p - s * w[j] * (keep * t_j + eps) : 0;
                expect("fs_narrow_cross_entropy_rows (grad)", dt->name, detail, r * n + j,
                       get(dt, grad, r * n + j), ref,
                       stored_tol(dt, ref, fabs(exp_scale) * p + s * w[j] + s * w_y));
            }
        }
    }
    guarded *all[] = {&gx, &gw, &gh, &gout, &gl, &gz, &gt};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) guarded_free(all[i]);
    free(x); free(w); free(lse); free(scales); free(y); free(t);
}

/* ---- elementwise.h: KL divergence, BCE with logits, sigmoid, log-sigmoid ---- */

static double softplus(double v) { return fmax(v, 0) + log1p(exp(-fabs(v))); }

static double sigmoid(double v) { return v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v)); }

static void check_elementwise(const dtype *dt, Py_ssize_t n) {
    snprintf(detail, sizeof detail, "n=%td (a segment at offset 5)", n);
    const Py_ssize_t at = 5, total_n = at + n;  /* a segment [at, at + n) of the arrays */
    const double scale = 0.5;
    double *x = malloc(total_n * sizeof *x), *t = malloc(total_n * sizeof *t);
    double *g = malloc(n * sizeof *g), *w = malloc(n * sizeof *w), *pw = malloc(n * sizeof *pw);
    void *x_arr = malloc(total_n * dt->size), *t_arr = malloc(total_n * dt->size);
    void *grad = malloc(total_n * dt->size), *loss = malloc(total_n * dt->compute_size);
    void *w_arr = malloc(n * dt->compute_size), *pw_arr = malloc(n * dt->compute_size);
    for (Py_ssize_t i = 0; i < n; i++) {
        g[i] = uniform(0.5, 2);
        w[i] = put_compute(dt, w_arr, i, uniform(0.5, 2));
        pw[i] = put_compute(dt, pw_arr, i, uniform(0.5, 3));
    }

    for (int log_target = 0; log_target < 2; log_target++) {
        current_check = "fs_kl_div_segment";
        for (Py_ssize_t i = 0; i < total_n; i++) {
            x[i] = put(dt, x_arr, i, uniform(-8, 0));
            /* probabilities with exact zeros (xlogy(0, 0) = 0), or log probabilities */
            t[i] = put(dt, t_arr, i, log_target ? uniform(-6, 0) : i % 7 == 0 ? 0 : uniform(0, 1));
        }
        double sum = dt->k->kl_div_segment(x_arr, t_arr, g, scale, loss, grad, at, n, log_target);
        double ref_sum = 0, sum_mag = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_ssize_t i = at + j;
            double e = exp(t[i]);
            double l = log_target ? e * (t[i] - x[i])
                                  : (t[i] == 0 ? 0 : t[i] * log(t[i])) - t[i] * x[i];
            double mag = log_target ? e * (fabs(t[i]) + fabs(x[i]))
                                    : (t[i] == 0 ? 0 : fabs(t[i] * log(t[i]))) + fabs(t[i] * x[i]);
            double d = (log_target ? -e : -t[i]) * scale * g[j];
            ref_sum += l;
            sum_mag += mag;
            const char *fn = log_target ? "fs_kl_div_segment (log_target)" : "fs_kl_div_segment";
            expect(fn, dt->name, detail, i, get_compute(dt, loss, i), l, compute_tol(dt, l, mag));
            expect(fn, dt->name, detail, i, get(dt, grad, i), d, stored_tol(dt, d, 0));
        }
        expect(log_target ? "fs_kl_div_segment (log_target, sum)" : "fs_kl_div_segment (sum)",
               dt->name, detail, 0, sum, ref_sum, compute_tol(dt, ref_sum, sum_mag));
        expect("fs_kl_div_segment (sum, no outputs)", dt->name, detail, 0,
               dt->k->kl_div_segment(x_arr, t_arr, g, scale, NULL, NULL, at, n, log_target),
               ref_sum, compute_tol(dt, ref_sum, sum_mag));
    }

    current_check = "fs_bce_segment";
    for (Py_ssize_t i = 0; i < total_n; i++) {
        x[i] = put(dt, x_arr, i, uniform(-12, 12));
        t[i] = put(dt, t_arr, i, i % 5 == 0 ? 1 : i % 5 == 1 ? 0 : uniform(0, 1));
    }
    double sum = dt->k->bce_segment(x_arr, t_arr, w_arr, 0, pw_arr, 0, g, scale, loss, grad, at, n);
    double ref_sum = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_ssize_t i = at + j;
        double l = w[j] * ((1 - t[i]) * softplus(x[i]) + pw[j] * t[i] * softplus(-x[i]));
        double pos = pw[j] * t[i] * sigmoid(-x[i]), neg = (1 - t[i]) * sigmoid(x[i]);
        double d = w[j] * (neg - pos) * scale * g[j];
        ref_sum += l;
        expect("fs_bce_segment", dt->name, detail, i, get_compute(dt, loss, i), l,
               compute_tol(dt, l, 0));
        expect("fs_bce_segment", dt->name, detail, i, get(dt, grad, i), d,
               stored_tol(dt, d, w[j] * (neg + pos) * scale * g[j]));
    }
    expect("fs_bce_segment (sum)", dt->name, detail, 0, sum, ref_sum, compute_tol(dt, ref_sum, 0));

    for (int log_sigmoid = 0; log_sigmoid < 2; log_sigmoid++) {
        const char *fn = log_sigmoid ? "fs_sigmoid_segment (log)" : "fs_sigmoid_segment";
        current_check = fn;
        dt->k->sigmoid_segment(x_arr, grad, at, n, log_sigmoid);
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_ssize_t i = at + j;
            double ref = log_sigmoid ? -softplus(-x[i]) : sigmoid(x[i]);
            expect(fn, dt->name, detail, i, get(dt, grad, i), ref,
                   stored_tol(dt, ref, log_sigmoid ? fabs(x[i]) * (x[i] < 0) : 0));
        }
    }
    free(x); free(t); free(g); free(w); free(pw);
    free(x_arr); free(t_arr); free(grad); free(loss); free(w_arr); free(pw_arr);
}

/* ---- the instruction set kernels.c was built for ---- */

/* An x86 feature that kernels.c assumes and this CPU lacks, or NULL */
static const char *missing_cpu_feature(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* __builtin_cpu_supports takes string literals only */
#define REQUIRE(need, feature) \
    if ((kernel_cpu_needs & need) && !__builtin_cpu_supports(feature)) return feature
    REQUIRE(NEEDS_AVX2, "avx2");
    REQUIRE(NEEDS_FMA, "fma");
    REQUIRE(NEEDS_BMI2, "bmi2");
    REQUIRE(NEEDS_AVX512, "avx512f");
    REQUIRE(NEEDS_AVX512, "avx512bw");
    REQUIRE(NEEDS_AVX512, "avx512dq");
    REQUIRE(NEEDS_AVX512, "avx512vl");
    REQUIRE(NEEDS_F16C, "f16c");
#undef REQUIRE
#endif
    return NULL;
}

int main(void) {
    const char *missing = missing_cpu_feature();
    if (missing) {
        printf("SKIP: the kernels were built for %s; this CPU lacks %s\n", kernel_target,
               missing);
        return 77;
    }
    signal(SIGSEGV, on_segfault);
    printf("row kernel check: %s, FS_VEC_BYTES %d\n", kernel_target, kernel_vec_bytes);

    check_exp_and_log();
    check_conversions();
    const Py_ssize_t lengths[] = {1, 2, 3, 7, 16, 33, 100, 257, 1000, 2500};
    const Py_ssize_t split_length = 4 * kernel_split_min_chunk + 4465;  /* 5 chunks */
    for (size_t d = 0; d < sizeof DTYPES / sizeof DTYPES[0]; d++) {
        const dtype *dt = DTYPES[d];
        for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
            Py_ssize_t n = lengths[i];
            check_softmax_family(dt, n, 0);
            check_cross_entropy(dt, n, 0, 0, 0, 0, 0, 0);
            check_cross_entropy(dt, n, 0, 0, 1, 0.1, 0, 0);
            check_cross_entropy(dt, n, 0, 0, 1, 0.1, 1e-3, 20);
            check_cross_entropy(dt, n, 0, 1, 1, 0.05, 0, 0);
            check_cross_entropy(dt, n, 0, 1, 0, 0, 1e-3, 15);
            check_entropy(dt, n, 0);
            const double betas[] = {0, 1, 0.5, 0.25};
            for (size_t b = 0; b < sizeof betas / sizeof betas[0]; b++)
                check_jsd(dt, n, 0, betas[b], b % 2 ? 0.5 : 1);
        }
        /* one split row, its chunks on two threads */
        check_softmax_family(dt, split_length, 2);
        check_cross_entropy(dt, split_length, 2, 0, 1, 0.1, 1e-3, 0);
        check_cross_entropy(dt, split_length, 2, 1, 0, 0.05, 0, 20);
        check_entropy(dt, split_length, 2);
        check_jsd(dt, split_length, 2, 0.5, 0.5);
        check_thread_count_independence(dt, split_length);
        check_special_rows(dt);
        check_elementwise(dt, 100);
        check_elementwise(dt, 2 * kernel_block + 37);  /* sums over several blocks */
    }
    const short_kernels *helpers[] = {&SHORT_FLOAT, &SHORT_DOUBLE};
    for (int d = 0; d < 2; d++)
        for (Py_ssize_t n = 1; n < 128; n++) check_short_rows(DTYPES[d], helpers[d], n);
    for (size_t d = 0; d < sizeof DTYPES / sizeof DTYPES[0]; d++) {
        const dtype *dt = DTYPES[d];
        Py_ssize_t lanes = kernel_vec_bytes / (Py_ssize_t)dt->compute_size;
        for (Py_ssize_t n = 1; n < 128; n++) {
            check_short_backward_rows(dt, 1, n);
            check_short_backward_rows(dt, 5, n);
        }
        for (Py_ssize_t n = 1; n <= kernel_narrow_bytes / (Py_ssize_t)dt->compute_size; n++) {
            const Py_ssize_t row_counts[] = {1, lanes - 1, lanes, 2 * lanes + 3};
            for (size_t r = 0; r < sizeof row_counts / sizeof row_counts[0]; r++)
                if (row_counts[r] > 0) check_narrow_rows(dt, row_counts[r], n);
        }
    }

    long values = 0;
    printf("%-56s %10s  %s\n", "check [type]", "values", "worst |error| / tolerance");
    for (int i = 0; i < stat_count; i++) {
        char name[96];
        snprintf(name, sizeof name, *stats[i].dtype ? "%s [%s]" : "%s", stats[i].fn,
                 stats[i].dtype);
        printf("%-56s %10ld  %.3g\n", name, stats[i].values, stats[i].worst);
        values += stats[i].values;
    }
    if (failures) {
        printf("FAILED: %ld of %ld values (the first are listed above on stderr)\n", failures,
               values);
        return 1;
    }
    printf("PASSED: %ld values\n", values);
    return 0;
}
