/* The short-row functions written once for every storage type: the narrow rows (a row
 * of at most FS_NARROW_BYTES in the compute type: L rows at a time in columns, L the
 * lanes of a compute vector) and the short rows' backward passes (row by row as masked
 * vectors, fs_short_backward_rows). Written once and included by rows.h
 * once per storage type, after that type's compute instance of rows_typed.h, with the
 * macros of rows_typed.h. A 16-bit row (bfloat16, float16) is widened to float as it is
 * loaded and rounded as it is stored (rows.h fs_vwiden_*, fs_vround_*); everything
 * between runs in the float vectors of the float instance (FS_CFN). Before, a block of
 * 16-bit short rows ran the float kernel on a float copy; this saves the copy both ways
 * (measured in _kernels.pyx, at _narrow). No include guard: each inclusion is one
 * instance. Not to be included elsewhere. */
#ifndef FASTSOFTMAX_ROWS_H
#error "narrow_typed.h is included by rows.h only"
#endif

/* Names local to this file (#undef at its end): the compute type's vectors */
#define FS_VEC FS_CFN(fs_vec)
#define FS_INDEX_VEC FS_CFN(fs_index_vec)
#define FS_LANES ((Py_ssize_t)(FS_VEC_BYTES / sizeof(FS_C)))

/* ---- L rows at a time, in columns ----
 * Loaded as L row vectors (per tile) and transposed in registers, a group's column j is one
 * vector (lane i: row i), so an op's whole row math runs across vectors with every lane
 * busy: the max, exp and sum, the row's scalars (log of the sum, loss, gradient scale) as
 * lanes, and the output columns, transposed back and stored as rows. No scratch, no
 * scalar work per row. Against the previous design, where only the exp pass ran in
 * columns (its e stored as rows, then each row's loss and output by the masked-vector
 * helpers; bench.ab, float32, 2 threads, C = 10): CE + grad 0.67-0.72 of the time, in place
 * 0.61-0.63, probability targets 0.55, softmax 0.60-0.65, logsumexp 0.55, entropy 0.53,
 * entropy + grad 0.60 (in place 0.40);
 * forced avx2: CE + grad 0.78, softmax 0.66. (With that design, the gradient in columns
 * too was no faster: the scalar code per row stayed.) Tried and dropped: folding the
 * per-row lane reductions of 16 rows into one vector (a shuffle tree) in the
 * masked-vector path: no faster. */

/* count elements of a stored row at p (count < L: the other lanes 0) as a compute
 * vector, and the inverse: the first min(count, L) lanes of v stored at p */
static inline FS_VEC FS_FN(fs_narrow_vload)(const FS_T *p, Py_ssize_t count) {
#if FS_LOWP
    return FS_FN(fs_vwiden)(fs_half_vload((const uint16_t *)p, count));
#else
    return FS_FN(fs_vload)(p, count, 0);
#endif
}

static inline void FS_FN(fs_narrow_vstore)(FS_T *p, Py_ssize_t count, FS_VEC v) {
#if FS_LOWP
    fs_half_vstore((uint16_t *)p, count, FS_FN(fs_vround)(v));
#elif FS_VEC_BYTES == 64
    FS_FN(fs_vstore)(p, count, v);  /* (all lanes: a plain store; the test of count as in
                                     * AVX2 cost 1.2x the time of the C = 64 and 100
                                     * softmax backward, bench.ab) */
#else  /* a whole vector without vmaskmov (AMD Zen microcodes it) */
    if (count >= FS_LANES)
        memcpy(p, &v, sizeof v);
    else
        FS_FN(fs_vstore)(p, count, v);
#endif
}

/* logsumexp of a row whose max m is +-inf or NaN, as torch.logsumexp: m, unless the row
 * holds a NaN (then a NaN of the row) */
static inline FS_C FS_FN(fs_nonfinite_logsumexp)(const FS_T *row, Py_ssize_t n, FS_C m) {
    FS_C out = m;
    for (Py_ssize_t j = 0; j < n; j++) {
        FS_C x = FS_LOAD(row[j]);
        if (x != x) out = x;
    }
    return out;
}

/* Rows first .. first + count - 1 (count <= L) of x (rows of n <= FS_NARROW_BYTES /
 * sizeof(FS_C)) as columns: lane i of v[j] is x[(first + i) n + j] for every j < n. The
 * rows are loaded as tiles of L x L (tile t: lanes t L .. t L + L - 1 of each row), each
 * transposed; the lanes of rows past count are zeros. */
static inline void FS_FN(fs_narrow_load)(const FS_T *x, Py_ssize_t first, Py_ssize_t count,
                                         Py_ssize_t n, FS_VEC *v) {
    const Py_ssize_t tiles = (n + FS_LANES - 1) / FS_LANES;
    Py_ssize_t t = 0;
    do {  /* at least once: GCC then sees v[0] set (a for loop warned) */
        for (Py_ssize_t i = 0; i < FS_LANES; i++)
            v[t * FS_LANES + i] = FS_FN(fs_narrow_vload)(
                x + (first + FS_MIN(i, count - 1)) * n + t * FS_LANES,
                i < count ? n - t * FS_LANES : 0);
        FS_CFN(fs_transpose)(v + t * FS_LANES);
    } while (++t < tiles);
}

/* The inverse of fs_narrow_load: columns v (overwritten) stored as the rows
 * first .. first + count - 1 of out. A row's vector that ends inside the group is stored
 * whole: its lanes past the row land in the rows after it, which are stored later, so
 * only the group's last vectors are masked: AVX2's vmaskmov stores are microcoded on AMD
 * Zen, as its loads are (fs_vload). Not measured on Zen; on an Intel Xeon, no change
 * within noise (bench.ab against the old block code, forced avx2, 2 threads, CE + grad in
 * place: C = 10 0.95 -> 0.91 of its time, C = 8 0.89 -> 0.90). */
static inline void FS_FN(fs_narrow_store)(FS_VEC *v, Py_ssize_t first, Py_ssize_t count,
                                          Py_ssize_t n, FS_T *out) {
    const Py_ssize_t tiles = (n + FS_LANES - 1) / FS_LANES, end = (first + count) * n;
    for (Py_ssize_t t = 0; t < tiles; t++) FS_CFN(fs_transpose)(v + t * FS_LANES);
    for (Py_ssize_t i = 0; i < count; i++)
        for (Py_ssize_t t = 0; t < tiles; t++) {
            const Py_ssize_t at = (first + i) * n + t * FS_LANES;
            FS_FN(fs_narrow_vstore)(out + at, at + FS_LANES <= end ? FS_LANES : n - t * FS_LANES,
                                    v[t * FS_LANES + i]);
        }
}

/* softmax (op 0), log_softmax (1) or logsumexp (2: out has one element per row) of the
 * rows x[r n : (r + 1) n], r < rows, n <= FS_NARROW_BYTES / sizeof(FS_C), in columns
 * (fs_narrow_load), as _kernels.pyx's _softmax_family_block defines them; out may be x.
 * A row whose max is +-inf or NaN gets its logsumexp from fs_nonfinite_logsumexp. */
static inline void FS_FN(fs_narrow_softmax_rows)(const FS_T *x, Py_ssize_t rows, Py_ssize_t n,
                                                 int op, FS_T *out) {
    for (Py_ssize_t first = 0; first < rows; first += FS_LANES) {
        Py_ssize_t count = FS_MIN(FS_LANES, rows - first);
        FS_VEC v[FS_NARROW_TILES * FS_LANES];
        FS_FN(fs_narrow_load)(x, first, count, n, v);
        FS_VEC max = v[0], sum = {0};
        for (Py_ssize_t j = 1; j < n; j++) max = FS_CFN(fs_vmax)(max, v[j]);
        for (Py_ssize_t j = 0; j < n; j++) {
            FS_VEC shifted = v[j] - max, e = FS_CFN(fs_vexp_core)(shifted);
            sum += e;
            v[j] = op == 0 ? e : shifted;
        }
        if (op == 0) {
            const FS_VEC inv_sum = 1 / sum;
            for (Py_ssize_t j = 0; j < n; j++) v[j] *= inv_sum;
            FS_FN(fs_narrow_store)(v, first, count, n, out);
        } else if (op == 1) {
            const FS_VEC log_sum = FS_CFN(fs_narrow_log)(sum);
            for (Py_ssize_t j = 0; j < n; j++) v[j] -= log_sum;
            FS_FN(fs_narrow_store)(v, first, count, n, out);
        } else {
            FS_FN(fs_narrow_vstore)(out + first, count, max + FS_CFN(fs_narrow_log)(sum));
            for (Py_ssize_t i = 0; i < count; i++)
                if (!isfinite(max[i]))
                    out[first + i] = FS_STORE(
                        FS_FN(fs_nonfinite_logsumexp)(x + (first + i) * n, n, max[i]));
        }
    }
}

/* softmax backward (log 0: out = y (dy - sum(y dy))) or log_softmax backward (log 1:
 * y is logp, out = dy - exp(logp) sum(dy)) of `rows` short rows y[r n : (r + 1) n],
 * dy[...] (any n < 128), row by row as a few masked vectors, 16-bit ones widened and
 * rounded per vector (fs_narrow_vload; in columns, as the narrow functions below, 16-bit
 * rows took 1.2-1.3x this time and float32 rows 1.2-1.5x: the backward has one reduction
 * per row, which the transposes cost more than; bench.ab against the float copy of a
 * 16-bit block: bfloat16 C = 10 0.29-0.33 of the time, C = 100 0.50-0.62). out may be y
 * or dy. A row of one vector runs without the vector loop (as rows_typed.h's
 * FS_FOR_EACH_VECTOR). */
static inline __attribute__((always_inline)) void FS_FN(fs_short_backward_row)(
        const FS_T *y, const FS_T *dy, Py_ssize_t n, int log, int one_vector, FS_T *out) {
    const Py_ssize_t step = one_vector ? n : FS_LANES;
    FS_VEC acc = {0};
    for (Py_ssize_t j = 0; j < n; j += step) {
        FS_VEC d = FS_FN(fs_narrow_vload)(dy + j, n - j);
        acc += log ? d : FS_FN(fs_narrow_vload)(y + j, n - j) * d;
    }
    const FS_C total = FS_CFN(fs_vreduce_add)(acc);
    for (Py_ssize_t j = 0; j < n; j += step) {
        FS_VEC v = FS_FN(fs_narrow_vload)(y + j, n - j), d = FS_FN(fs_narrow_vload)(dy + j, n - j);
        FS_FN(fs_narrow_vstore)(out + j, n - j,
                                log ? d - FS_CFN(fs_vexp)(v) * total : v * (d - total));
    }
}

static inline void FS_FN(fs_short_backward_rows)(const FS_T *y, const FS_T *dy,
                                                 Py_ssize_t rows, Py_ssize_t n, int log,
                                                 FS_T *out) {
    /* log and one_vector as literals: a loop per case */
#define FS_BACKWARD_ROWS(log, one_vector)                                                \
    for (Py_ssize_t r = 0; r < rows; r++)                                                \
        FS_FN(fs_short_backward_row)(y + r * n, dy + r * n, n, log, one_vector, out + r * n)
    if (n <= FS_LANES) {
        if (log) FS_BACKWARD_ROWS(1, 1); else FS_BACKWARD_ROWS(0, 1);
    } else {
        if (log) FS_BACKWARD_ROWS(1, 0); else FS_BACKWARD_ROWS(0, 0);
    }
#undef FS_BACKWARD_ROWS
}

/* -1 in the lanes of v that are finite, 0 in the others (x - x is NaN for +-inf, NaN) */
static inline FS_INDEX_VEC FS_FN(fs_vfinite)(FS_VEC v) {
    return v - v == (FS_VEC){0};
}

/* The generalised JSD (beta) of the rows s[r n : (r + 1) n] (student) and
 * t[r n : (r + 1) n] (teacher), r < rows, n <= FS_NARROW_BYTES / sizeof(FS_C), in columns
 * (fs_narrow_load): the passes of row_functions_typed.h's fs_jsd_row with every row's
 * sums, loss and KL(Q || M) as lanes. row_loss[r] gets the loss; with grad (not NULL),
 * scale (times row_scale[r], if not NULL) * d loss / d s. A row with a max of +-inf or
 * NaN, in s or t, gets a NaN loss and gradient, as does the gradient of a row whose
 * KL(Q || M) is infinite (Q > 0 = P somewhere, reverse KL). */
static inline void FS_FN(fs_narrow_jsd_rows)(const FS_T *s, const FS_T *t, Py_ssize_t rows,
                                             Py_ssize_t n, double beta, double inv_t,
                                             double scale, const double *row_scale,
                                             double *row_loss, FS_T *grad) {
    const FS_C b = (FS_C)beta, keep = (FS_C)(1 - beta), tiny = FS_MIN_NORMAL;
    const FS_VEC zero = {0}, nan = zero + (FS_C)NAN, inv = zero + (FS_C)inv_t;
    const int mode = fs_jsd_mode(beta);
    const FS_C k_all = (FS_C)(scale * inv_t * (mode == FS_JSD_MIXTURE ? 1.0 - beta : 1.0));
    for (Py_ssize_t first = 0; first < rows; first += FS_LANES) {
        Py_ssize_t count = FS_MIN(FS_LANES, rows - first);
        /* v: s, then (s - m_s) / T, then Q; u: the same for t and P; e, e_t: the exps of
         * (s - m_s) / T and (t - m_t) / T; r: log Q - log M (over e) */
        FS_VEC v[FS_NARROW_TILES * FS_LANES], u[FS_NARROW_TILES * FS_LANES];
        FS_VEC r[FS_NARROW_TILES * FS_LANES], e_t[FS_NARROW_TILES * FS_LANES];
        FS_VEC *e = r;
        FS_FN(fs_narrow_load)(s, first, count, n, v);
        FS_FN(fs_narrow_load)(t, first, count, n, u);
        FS_VEC max_s = v[0], max_t = u[0], sum_s = zero, sum_t = zero;
        for (Py_ssize_t j = 1; j < n; j++) {
            max_s = FS_CFN(fs_vmax)(max_s, v[j]);
            max_t = FS_CFN(fs_vmax)(max_t, u[j]);
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            v[j] = (v[j] - max_s) * inv;
            u[j] = (u[j] - max_t) * inv;
            e[j] = FS_CFN(fs_vexp_core)(v[j]);
            e_t[j] = FS_CFN(fs_vexp_core)(u[j]);
            sum_s += e[j];
            sum_t += e_t[j];
        }
        /* a NaN in a row may or may not be its max (fs_vmax); the sum is NaN either way */
        const FS_INDEX_VEC live = FS_FN(fs_vfinite)(max_s) & FS_FN(fs_vfinite)(max_t)
                                  & FS_FN(fs_vfinite)(sum_s + sum_t);
        const FS_VEC log_sum_s = FS_CFN(fs_narrow_log)(sum_s);
        const FS_VEC log_sum_t = FS_CFN(fs_narrow_log)(sum_t);
        const FS_VEC inv_sum_s = 1 / sum_s, inv_sum_t = 1 / sum_t;
        FS_VEC loss = zero, kl_q = zero;
        for (Py_ssize_t j = 0; j < n; j++) {
            FS_VEC log_q = v[j] - log_sum_s, log_p = u[j] - log_sum_t;
            FS_VEC q = e[j] * inv_sum_s, p = e_t[j] * inv_sum_t;
            if (mode == FS_JSD_FORWARD) {
                loss += FS_CFN(fs_vselect)(p > zero, p * (log_p - log_q), zero);
            } else {
                FS_VEC log_m = log_p;  /* the reverse KL: M = P */
                if (mode == FS_JSD_MIXTURE) {
                    FS_VEC mix = b * p + keep * q;
                    log_m = FS_CFN(fs_narrow_log)(FS_CFN(fs_vmax)(mix, zero + tiny));
                    loss += b * FS_CFN(fs_vselect)(p > zero, p * (log_p - log_m), zero);
                }
                FS_VEC term_q = FS_CFN(fs_vselect)(q > zero, q * (log_q - log_m), zero);
                kl_q += term_q;
                r[j] = log_q - log_m;
            }
            v[j] = q;
            u[j] = p;
        }
        if (mode == FS_JSD_REVERSE) loss = kl_q;
        else if (mode == FS_JSD_MIXTURE) loss += keep * kl_q;
        FS_CFN(fs_store_lanes)(row_loss + first, count, FS_CFN(fs_vselect)(live, loss, nan));
        if (!grad) continue;
        FS_VEC k = zero + k_all;
        if (row_scale)
            for (Py_ssize_t i = 0; i < count; i++) k[i] = (FS_C)(k_all * row_scale[first + i]);
        FS_INDEX_VEC has_grad = live;
        if (mode != FS_JSD_FORWARD) has_grad &= FS_FN(fs_vfinite)(kl_q);
        for (Py_ssize_t j = 0; j < n; j++) {
            FS_VEC g = mode == FS_JSD_FORWARD
                ? k * (v[j] - u[j])
                : FS_CFN(fs_vselect)(v[j] > zero, k * v[j] * (r[j] - kl_q), zero);
            v[j] = FS_CFN(fs_vselect)(has_grad, g, nan);
        }
        FS_FN(fs_narrow_store)(v, first, count, n, grad);
    }
}

/* Cross-entropy of the rows x[r n : (r + 1) n], r < rows, n <= FS_NARROW_BYTES /
 * sizeof(FS_C), against the index targets y or, with y NULL, the probability rows t, all
 * in columns (fs_narrow_load): the loss, z-loss and gradient of each row as _kernels.pyx's
 * _cross_entropy_block defines them (o: its scalars), written as the row's lanes of whole
 * vectors, with no scalar work per row. grad (NULL: loss only) may be x; row_z_loss may
 * be NULL. */
static inline void FS_FN(fs_narrow_cross_entropy_rows)(
        const FS_T *x, const int64_t *y, const FS_T *t, const FS_C *w, const fs_ce_scalars *o,
        const double *row_scale, Py_ssize_t rows, Py_ssize_t n, double *row_loss,
        double *row_z_loss, FS_T *grad) {
    const FS_C keep = (FS_C)(1.0 - o->smoothing), eps_c = (FS_C)(o->smoothing / (double)n);
    const FS_VEC zero = {0};
    for (Py_ssize_t first = 0; first < rows; first += FS_LANES) {
        Py_ssize_t count = FS_MIN(FS_LANES, rows - first);
        FS_VEC v[FS_NARROW_TILES * FS_LANES];
        FS_VEC wt[FS_NARROW_TILES * FS_LANES];  /* probability targets: w t', t' = keep t + eps */
        FS_FN(fs_narrow_load)(x, first, count, n, v);
        FS_I target_lanes[FS_LANES] = {0};  /* index targets; -1: an ignored row */
        if (y) {
            #pragma omp simd
            for (Py_ssize_t i = 0; i < FS_LANES; i++) {
                int64_t y_i = y[first + FS_MIN(i, count - 1)];
                target_lanes[i] = y_i != o->ignore_index ? (FS_I)y_i : -1;
            }
        } else {
            FS_FN(fs_narrow_load)(t, first, count, n, wt);
        }
        FS_INDEX_VEC target;
        memcpy(&target, target_lanes, sizeof target);
        /* total_wt = sum(w t'), shifted_wt = sum(w t' (x - m)); an index target's by lookup */
        FS_VEC max = v[0], sum = {0}, dot = {0}, total_wt = {0}, shifted_wt = {0};
        FS_VEC target_w = {0};
        for (Py_ssize_t j = 1; j < n; j++) max = FS_CFN(fs_vmax)(max, v[j]);
        for (Py_ssize_t j = 0; j < n; j++) {
            FS_VEC shifted = v[j] - max;
            FS_C w_j = FS_CFN(fs_weight)(w, j);
            if (y) {
                FS_INDEX_VEC is_target = target == (FS_I)j;
                shifted_wt = FS_CFN(fs_vselect)(is_target, shifted, shifted_wt);
                target_w = FS_CFN(fs_vselect)(is_target, zero + w_j, target_w);
                if (eps_c != 0) dot += w_j * shifted;
            } else {
                wt[j] = w_j * (keep * wt[j] + eps_c);
                total_wt += wt[j];
                shifted_wt += wt[j] * shifted;
            }
            v[j] = FS_CFN(fs_vexp_core)(shifted);
            sum += v[j];
        }
        if (y) {
            total_wt = keep * target_w + (FS_C)(eps_c * o->weight_sum);
            shifted_wt = keep * target_w * shifted_wt + eps_c * dot;
        }
        /* the rows' scalars as lanes: loss, z-loss, and the gradient row k e - s w t'. In
         * the row type: in double lanes, AVX2's CE + grad was no faster than the
         * row-by-row code (8 rows a group; bench.ab, forced avx2). */
        const FS_VEC log_sum = FS_CFN(fs_narrow_log)(sum);
        FS_VEC row_s = zero + 1;
        if (row_scale)
            for (Py_ssize_t i = 0; i < count; i++) row_s[i] = (FS_C)row_scale[first + i];
        const FS_VEC lse = max + log_sum;
        const FS_VEC s = (FS_C)o->scale * row_s;
        const FS_INDEX_VEC live_row = target >= 0;
        FS_CFN(fs_store_lanes)(row_loss + first, count,
                              FS_CFN(fs_vselect)(live_row, total_wt * log_sum - shifted_wt, zero));
        if (row_z_loss)
            FS_CFN(fs_store_lanes)(row_z_loss + first, count,
                                  FS_CFN(fs_vselect)(live_row, (FS_C)o->z_loss * lse * lse, zero));
        if (!grad) continue;
        FS_VEC exp_scale = s * total_wt;
        if (o->z_loss != 0) exp_scale += (FS_C)(2 * o->z_loss * o->z_scale) * lse * row_s;
        const FS_VEC k = exp_scale / sum, f = s * eps_c, c = s * keep * target_w;
        for (Py_ssize_t j = 0; j < n; j++) {
            FS_VEC g = k * v[j];
            if (!y) {
                g -= s * wt[j];
            } else {
                if (eps_c != 0) g -= f * FS_CFN(fs_weight)(w, j);
                g -= FS_CFN(fs_vselect)(target == (FS_I)j, c, zero);
            }
            v[j] = FS_CFN(fs_vselect)(live_row, g, zero);  /* an ignored row: 0, even if NaN */
        }
        FS_FN(fs_narrow_store)(v, first, count, n, grad);
    }
}

/* Entropy of the rows x[r n : (r + 1) n], r < rows, n <= FS_NARROW_BYTES / sizeof(FS_C),
 * in columns (fs_narrow_load), as _kernels.pyx's _entropy_block defines it: row_loss[r]
 * (double) and h[r] (the row type) if not NULL, and the gradient scaled by scale (and
 * row_scale[r], if not NULL) into grad if not NULL (grad may be x). */
static inline void FS_FN(fs_narrow_entropy_rows)(const FS_T *x, Py_ssize_t rows, Py_ssize_t n,
                                                 double scale, const double *row_scale,
                                                 double *row_loss, FS_T *h, FS_T *grad) {
    const FS_VEC floor = (FS_VEC){0} + (FS_C)FS_ENTROPY_FLOOR;
    for (Py_ssize_t first = 0; first < rows; first += FS_LANES) {
        Py_ssize_t count = FS_MIN(FS_LANES, rows - first);
        FS_VEC v[FS_NARROW_TILES * FS_LANES], d[FS_NARROW_TILES * FS_LANES];
        FS_FN(fs_narrow_load)(x, first, count, n, v);
        FS_VEC max = v[0], sum = {0}, dot = {0};
        for (Py_ssize_t j = 1; j < n; j++) max = FS_CFN(fs_vmax)(max, v[j]);
        for (Py_ssize_t j = 0; j < n; j++) {
            d[j] = FS_CFN(fs_vmax)(v[j] - max, floor);
            v[j] = FS_CFN(fs_vexp_core)(v[j] - max);
            sum += v[j];
            dot += v[j] * d[j];
        }
        FS_VEC mean_d = dot / sum;
        for (Py_ssize_t i = 0; i < FS_LANES; i++)  /* a row with an infinite max: NaN */
            if (!isfinite(max[i])) mean_d[i] = (FS_C)NAN;
        const FS_VEC value = FS_CFN(fs_narrow_log)(sum) - mean_d;
        if (row_loss) FS_CFN(fs_store_lanes)(row_loss + first, count, value);
        if (h) FS_FN(fs_narrow_vstore)(h + first, count, value);
        if (!grad) continue;
        FS_VEC k = (FS_VEC){0} + (FS_C)scale;
        if (row_scale)
            for (Py_ssize_t i = 0; i < count; i++) k[i] = (FS_C)(scale * row_scale[first + i]);
        k /= sum;
        for (Py_ssize_t j = 0; j < n; j++) v[j] = k * v[j] * (mean_d - d[j]);
        FS_FN(fs_narrow_store)(v, first, count, n, grad);
    }
}

#undef FS_LANES
#undef FS_INDEX_VEC
#undef FS_VEC
