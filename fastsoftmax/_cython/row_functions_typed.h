/* The row driver and the row functions of the Cython backend, written once and included
 * by rows.h once per element type, after rows_typed.h, with the same FS_T / FS_C / FS_S
 * names (see there).
 *
 * A row function computes one op on one row from the helpers of rows_typed.h. It calls
 * each helper through the row driver, fs_over_chunks: on the whole row in the calling
 * thread (threads == 0: the kernel runs rows in parallel around it), or, for the few
 * long rows that fs_split_rows picks, over chunks of the row on `threads` threads, the
 * chunks' results merged in chunk order so that a result does not depend on the thread
 * count. The chunk lengths and the rule are the Numba backend's (_numba/_split.py).
 * A helper joins the driver through a chunk function (fs_..._chunk below): it calls the
 * helper on the chunk [lo, lo + n) of the row arguments and stores its results.
 * A float16 row function (FS_WIDEN) has no helpers or chunk functions of its own: it
 * runs the float ones on blocks of the row widened to float, its output rounded back
 * once (fs_call_chunk). GCC vectorises no per-element float16 conversion, and a block is
 * converted by whole-vector F16C / AVX-512 instructions (rows.h fs_load_array_h). */
#ifndef FASTSOFTMAX_ROWS_H
#error "row_functions_typed.h is included by rows.h only"
#endif
#if !defined(FS_WIDEN)
#error "row_functions_typed.h needs FS_WIDEN (and rows_typed.h's names)"
#endif

/* The chunk functions a row function calls: its own, or the float ones on widened blocks */
#if FS_WIDEN
#define FS_CHUNK(name) FS_CFN(name)
#else
#define FS_CHUNK(name) FS_FN(name)
#endif

#define FS_ARGS FS_FN(fs_row_args)

/* The arguments of the helpers of one row: pointers to whole rows (a chunk function
 * offsets them), NULL where unused; and scalars, whose meaning each chunk function
 * states. */
typedef struct {
    const FS_T *x;    /* the row: logits, or softmax / log_softmax output */
    const FS_T *t;    /* a second row: probability targets, or the upstream gradient */
    const FS_C *w;    /* class weights (NULL: all ones) */
    FS_T *out;        /* the output row, or NULL */
    FS_C *kept;       /* what the exp pass keeps for the write pass (fs_kept_row) */
    FS_C *kept_t;     /* JSD with a gradient: t's exponentials, then Q (fs_jsd_row) */
    FS_C m, k, f, keep, eps;
    FS_C cap;         /* logit soft-capping (cross-entropy; fs_softcap): 0 for none */
    /* JSD (fs_jsd_row): t's max, 1 / temperature, the logs of both rows' exp sums, 1 / each,
     * beta, KL(Q || M) */
    FS_C m_t, inv_t, log_sum, log_sum_t, inv_sum, inv_sum_t, beta, kl;
} FS_ARGS;

#if !FS_WIDEN
typedef void (*FS_FN(fs_chunk_fn))(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                    double *results);

/* p + lo, or NULL for NULL (an absent row, or weights that are all ones) */
static inline const FS_C *FS_FN(fs_from)(const FS_C *p, Py_ssize_t lo) {
    return p ? p + lo : NULL;
}

static inline FS_T *FS_FN(fs_out_from)(FS_T *p, Py_ssize_t lo) {
    return p ? p + lo : NULL;
}

static inline FS_C *FS_FN(fs_kept_from)(FS_C *p, Py_ssize_t lo) {
    return p ? p + lo : NULL;
}
#endif

/* A row whose max is NaN or +-inf: its exponentials (out, if given) are NaN. */
static inline double FS_FN(fs_nan_row)(FS_T *out, Py_ssize_t n) {
    if (out) for (Py_ssize_t j = 0; j < n; j++) out[j] = FS_STORE((FS_C)NAN);
    return NAN;
}

#if FS_WIDEN
/* results[0..merge) of the blocks of a chunk so far (first: none yet) merged with part,
 * the next block's, as fs_over_chunks merges chunks */
static inline void FS_FN(fs_merge_block)(double *results, const double *part, int merge,
                                         int first) {
    if (merge == FS_MERGE_MAX)  /* NaN stays */
        results[0] = first || part[0] != part[0] || part[0] > results[0] ? part[0] : results[0];
    for (int r = 0; r < merge; r++) results[r] = first ? part[r] : results[r] + part[r];
}
#endif

/* fn, a chunk function (FS_CHUNK), on [lo, lo + n) of the row arguments a. FS_WIDEN:
 * block by block of FS_BLOCK elements, the rows fn reads (`rows`, FS_READS_*) widened
 * into float buffers and the out row it writes rounded back from one. The helpers sum in
 * blocks of FS_BLOCK added into a double, so the merged results are the ones helpers
 * reading the 16-bit row would give. */
static inline __attribute__((always_inline)) void FS_FN(fs_call_chunk)(
        FS_CHUNK(fs_chunk_fn) fn, int rows, int merge, const FS_ARGS *a, Py_ssize_t lo,
        Py_ssize_t n, double *results) {
#if FS_WIDEN
    _Static_assert(sizeof(FS_ARGS) == sizeof(FS_CFN(fs_row_args))
                   && offsetof(FS_ARGS, m) == offsetof(FS_CFN(fs_row_args), m),
                   "the 16-bit and float row arguments differ in their rows' types only");
    float x[FS_BLOCK], t[FS_BLOCK], out[FS_BLOCK];
    FS_CFN(fs_row_args) block;
    memcpy(&block, a, sizeof block);  /* the scalars; the rows are set below */
    block.x = a->x ? x : NULL;
    block.t = a->t ? t : NULL;
    block.out = a->out ? out : NULL;
    for (Py_ssize_t start = 0; start < n; start += FS_BLOCK) {
        Py_ssize_t j = lo + start, len = FS_MIN(FS_BLOCK, n - start);
        if (rows & FS_READS_X) FS_FN(fs_load_array)(a->x + j, x, len);
        if (rows & FS_READS_T) FS_FN(fs_load_array)(a->t + j, t, len);
        block.w = a->w ? a->w + j : NULL;
        block.kept = a->kept ? a->kept + j : NULL;
        block.kept_t = a->kept_t ? a->kept_t + j : NULL;
        double part[FS_MAX_RESULTS];
        fn(&block, 0, len, part);
        if ((rows & FS_WRITES_OUT) && a->out) FS_FN(fs_store_array)(out, a->out + j, len);
        FS_FN(fs_merge_block)(results, part, merge, start == 0);
    }
#else
    (void)rows;
    (void)merge;
    fn(a, lo, n, results);
#endif
}

/* Where the exp pass of a row function keeps exp(z - m) (or z, capped) for its write
 * pass into out: out itself for float and double; for a 16-bit out, which would round
 * them (and the write pass round twice), a float row of scratch: `local` (the row
 * function's FS_KEPT_LOCAL) for rows up to FS_BLOCK, else malloc'd (fs_release_kept
 * frees it). NULL when out is NULL, or when the allocation failed (flagged: the kernel
 * raises MemoryError). Before, the 16-bit write pass computed exp again from x: bfloat16
 * CE + grad in place, 2 threads, kernel (bench.ab, idle): 0.28 -> 0.18 ns/elem at
 * 128 x 131072 (float32 0.21), 0.40 -> 0.29 at 16777 x 1000. The stack row for short
 * rows, against a malloc and free per row (bench.ab, 16777 x 1000, 2 threads): bfloat16
 * CE + grad 0.77x the time, in place 0.91x, softmax 0.92x; float16 0.86-0.89x. */
#if FS_LOWP
#define FS_KEPT_LOCAL(name) FS_C name[FS_BLOCK]
#else
#define FS_KEPT_LOCAL(name) FS_C *name = NULL
#endif

static inline FS_C *FS_FN(fs_kept_row)(FS_T *out, Py_ssize_t n, FS_C *local) {
#if FS_LOWP
    if (!out) return NULL;
    return n <= FS_BLOCK ? local : (FS_C *)fs_scratch_malloc((size_t)n * sizeof(FS_C));
#else
    (void)n;
    (void)local;
    return out;
#endif
}

static inline void FS_FN(fs_release_kept)(FS_C *kept, const FS_C *local) {
#if FS_LOWP
    if (kept != local) free(kept);
#else
    (void)kept;
    (void)local;
#endif
}

/* fn over the row (see the top of this file). `merge`: FS_MERGE_MAX (one result, the
 * largest, NaN if any is NaN), or the number of results, each summed over the chunks
 * (0: fn only writes). Returns the first result; `more` (if not NULL) gets the others. */
static inline __attribute__((always_inline)) double FS_FN(fs_over_chunks)(
        FS_CHUNK(fs_chunk_fn) fn, int rows, const FS_ARGS *a, Py_ssize_t n, int threads,
        int merge, double *more) {
    double results[FS_MAX_RESULTS] = {0};
    if (threads == 0) {
        FS_FN(fs_call_chunk)(fn, rows, merge, a, 0, n, results);
    } else {
        Py_ssize_t size = fs_chunk_length(n), count = (n + size - 1) / size;
        double part[FS_SPLIT_MAX_CHUNKS][FS_MAX_RESULTS];
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (Py_ssize_t c = 0; c < count; c++)
            FS_FN(fs_call_chunk)(fn, rows, merge, a, c * size, FS_MIN(size, n - c * size),
                                 part[c]);
        if (merge == FS_MERGE_MAX) {
            FS_C maxima[FS_SPLIT_MAX_CHUNKS] = {0};  /* (GCC cannot see that count >= 1) */
            for (Py_ssize_t c = 0; c < count; c++) maxima[c] = (FS_C)part[c][0];
            results[0] = FS_CFN(fs_row_max)(maxima, count);
        } else {
            for (Py_ssize_t c = 0; c < count; c++)
                for (int r = 0; r < merge; r++) results[r] += part[c][r];
        }
    }
    for (int r = 1; more && r < merge; r++) more[r - 1] = results[r];
    return results[0];
}

/* The rows each chunk function reads and writes (FS_READS_X, ..., rows.h) */
#define FS_ROWS_fs_max_chunk FS_READS_X
#define FS_ROWS_fs_sumexp_chunk FS_READS_X
#define FS_ROWS_fs_sumexp_copy_chunk (FS_READS_X | FS_WRITES_OUT)
#define FS_ROWS_fs_sum_chunk FS_READS_T
#define FS_ROWS_fs_dot_chunk (FS_READS_X | FS_READS_T)
#define FS_ROWS_fs_shifted_dot_chunk FS_READS_X
#define FS_ROWS_fs_prob_sums_chunk (FS_READS_X | FS_READS_T)
#define FS_ROWS_fs_rescale_chunk FS_WRITES_OUT
#define FS_ROWS_fs_prob_rescale_chunk (FS_READS_T | FS_WRITES_OUT)
#define FS_ROWS_fs_shift_chunk (FS_READS_X | FS_WRITES_OUT)
#define FS_ROWS_fs_softmax_bwd_chunk (FS_READS_X | FS_READS_T | FS_WRITES_OUT)
#define FS_ROWS_fs_log_softmax_bwd_chunk (FS_READS_X | FS_READS_T | FS_WRITES_OUT)
#define FS_ROWS_fs_entropy_sums_chunk FS_READS_X
#define FS_ROWS_fs_entropy_grad_chunk (FS_READS_X | FS_WRITES_OUT)
#define FS_ROWS_fs_max_t_chunk FS_READS_T
#define FS_ROWS_fs_jsd_sums_chunk (FS_READS_X | FS_READS_T)
#define FS_ROWS_fs_jsd_forward_chunk (FS_READS_X | FS_READS_T | FS_WRITES_OUT)
#define FS_ROWS_fs_jsd_reverse_chunk (FS_READS_X | FS_READS_T)
#define FS_ROWS_fs_jsd_mixture_chunk (FS_READS_X | FS_READS_T)
#define FS_ROWS_fs_jsd_grad_chunk FS_WRITES_OUT

#if !FS_WIDEN
/* ---- chunk functions: one per helper of rows_typed.h that a row function calls ---- */

static inline void FS_FN(fs_max_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n, double *r) {
    r[0] = FS_FN(fs_row_max)(a->x + lo, n);
}

/* sum(exp(x - m)); exp(x - m) into kept, if given */
static inline void FS_FN(fs_sumexp_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                   double *r) {
    r[0] = FS_FN(fs_row_sumexp)(a->x + lo, n, a->m, a->cap, FS_FN(fs_kept_from)(a->kept, lo),
                                NULL);
}

/* sum(exp(x - m)); x copied into out */
static inline void FS_FN(fs_sumexp_copy_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                               double *r) {
    r[0] = FS_FN(fs_row_sumexp)(a->x + lo, n, a->m, a->cap, NULL, a->out + lo);
}

/* sum(t) */
static inline void FS_FN(fs_sum_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n, double *r) {
    r[0] = FS_FN(fs_row_dot)(a->t + lo, NULL, n);  /* NULL: ones */
}

/* sum(x * t) */
static inline void FS_FN(fs_dot_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n, double *r) {
    r[0] = FS_FN(fs_row_dot)(a->x + lo, a->t + lo, n);
}

/* sum(w * (z - m)), z the capped x */
static inline void FS_FN(fs_shifted_dot_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                        double *r) {
    r[0] = FS_FN(fs_row_shifted_dot)(FS_FN(fs_from)(a->w, lo), a->x + lo, n, a->m, a->cap);
}

/* sum(exp(z - m)), T and sum(w t' (z - m)) for t' = keep * t + eps, z the capped x;
 * exp (capped: z) into kept */
static inline void FS_FN(fs_prob_sums_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                      double *r) {
    r[0] = FS_FN(fs_prob_sums)(a->x + lo, a->t + lo, FS_FN(fs_from)(a->w, lo), n, a->m,
                               a->keep, a->eps, a->cap, FS_FN(fs_kept_from)(a->kept, lo), &r[1],
                               &r[2]);
}

/* out = e * k - f * w, e = kept (capped: exp(kept - m), and times the slope) */
static inline void FS_FN(fs_rescale_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                    double *r) {
    (void)r;
    FS_FN(fs_rescale)(a->kept + lo, a->out + lo, a->k, a->f, FS_FN(fs_from)(a->w, lo), n, a->m, a->cap);
}

/* out = e * k - f * w * (keep * t + eps), e as for fs_rescale_chunk */
static inline void FS_FN(fs_prob_rescale_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                         double *r) {
    (void)r;
    FS_FN(fs_prob_rescale)(a->kept + lo, a->out + lo, a->t + lo, FS_FN(fs_from)(a->w, lo), a->k, a->f,
                           a->keep, a->eps, n, a->m, a->cap);
}

/* out = (x - m) - k, k the log of the exp sum */
static inline void FS_FN(fs_shift_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n, double *r) {
    (void)r;
    FS_FN(fs_shift)(a->x + lo, a->m, a->k, a->out + lo, n);
}

/* out = x * (t - k): softmax output x, upstream gradient t, k = sum(x * t) */
static inline void FS_FN(fs_softmax_bwd_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                        double *r) {
    (void)r;
    FS_FN(fs_softmax_bwd)(a->x + lo, a->t + lo, a->k, a->out + lo, n);
}

/* out = t - exp(x) * k: log_softmax output x, upstream gradient t, k = sum(t) */
static inline void FS_FN(fs_log_softmax_bwd_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                            double *r) {
    (void)r;
    FS_FN(fs_log_softmax_bwd)(a->x + lo, a->t + lo, a->k, a->out + lo, n);
}

/* sum(e), sum(e d) of the entropy (fs_entropy_sums); e, or d in place, into kept */
static inline void FS_FN(fs_entropy_sums_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                         double *r) {
    r[0] = FS_FN(fs_entropy_sums)(a->x + lo, n, a->m, FS_FN(fs_kept_from)(a->kept, lo), &r[1]);
}

/* the entropy gradient k * e * (f - d), f the mean of d (fs_entropy_grad) */
static inline void FS_FN(fs_entropy_grad_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                         double *r) {
    (void)r;
    FS_FN(fs_entropy_grad)(a->x + lo, a->m, a->kept + lo, a->out + lo, n, a->k, a->f);
}

/* max of the second row t */
static inline void FS_FN(fs_max_t_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n, double *r) {
    r[0] = FS_FN(fs_row_max)(a->t + lo, n);
}

/* the JSD's exp sums of x and t (fs_jsd_sums); their exps into kept and kept_t */
static inline void FS_FN(fs_jsd_sums_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                            double *r) {
    r[0] = FS_FN(fs_jsd_sums)(a->x + lo, a->t + lo, n, a->m, a->m_t, a->inv_t,
                              FS_FN(fs_kept_from)(a->kept, lo),
                              FS_FN(fs_kept_from)(a->kept_t, lo), &r[1]);
}

/* the JSD's loss and KL(Q || M) (fs_jsd_terms), one function per mode */
static inline void FS_FN(fs_jsd_terms_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                             double *r, int mode) {
    r[0] = FS_FN(fs_jsd_terms)(a->x + lo, a->t + lo, n, a->m, a->m_t, a->inv_t, a->log_sum,
                               a->log_sum_t, a->inv_sum, a->inv_sum_t, a->beta, a->k,
                               FS_FN(fs_kept_from)(a->kept, lo),
                               FS_FN(fs_kept_from)(a->kept_t, lo),
                               FS_FN(fs_out_from)(a->out, lo), mode, &r[1]);
}

static inline void FS_FN(fs_jsd_forward_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                               double *r) {
    FS_FN(fs_jsd_terms_chunk)(a, lo, n, r, FS_JSD_FORWARD);
}

static inline void FS_FN(fs_jsd_reverse_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                               double *r) {
    FS_FN(fs_jsd_terms_chunk)(a, lo, n, r, FS_JSD_REVERSE);
}

static inline void FS_FN(fs_jsd_mixture_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                               double *r) {
    FS_FN(fs_jsd_terms_chunk)(a, lo, n, r, FS_JSD_MIXTURE);
}

/* the JSD gradient k Q (r - kl) (fs_jsd_grad) */
static inline void FS_FN(fs_jsd_grad_chunk)(const FS_ARGS *a, Py_ssize_t lo, Py_ssize_t n,
                                            double *r) {
    (void)r;
    FS_FN(fs_jsd_grad)(n, a->k, a->kl, a->kept + lo, a->kept_t + lo, a->out + lo);
}

#endif  /* !FS_WIDEN */

/* ---- row functions: `threads` as for fs_over_chunks ---- */

/* A helper of the row function's arguments `a` over its row (n, threads). */
#define FS_OVER(chunk, merge, more) \
    FS_FN(fs_over_chunks)(FS_CHUNK(chunk), FS_ROWS_##chunk, &a, n, threads, merge, more)

static inline __attribute__((always_inline)) void FS_FN(fs_softmax_row)(const FS_T *x, FS_T *out, Py_ssize_t n, int threads) {
    FS_KEPT_LOCAL(local);
    FS_ARGS a = {.x = x, .out = out, .kept = FS_FN(fs_kept_row)(out, n, local)};
    if (!a.kept) return;
    a.m = (FS_C)FS_OVER(fs_max_chunk, FS_MERGE_MAX, NULL);
    a.k = (FS_C)(1.0 / FS_OVER(fs_sumexp_chunk, 1, NULL));
    FS_OVER(fs_rescale_chunk, 0, NULL);  /* f = 0: out = exp(x - m) * k */
    FS_FN(fs_release_kept)(a.kept, local);
}

/* The exp pass copies the row into out, and the write pass reads it from there: out is
 * then written first where the exps keep the core busy, and the write pass finds it in
 * the cache. Written only by the write pass, out's cache lines were fetched there, with
 * nothing to overlap (perf: 60% of the time on that pass's stores; softmax, whose exp
 * pass keeps its exps in out, had no such stall). 512 x 32768 float32, one thread: 0.89
 * -> 0.59 ns/elem; 2 threads, bench.ab: 0.79x the time (128 x 131072 0.81x, float64
 * 0.83x, forced avx2 0.81x; 16-bit 0.97-1.02x). */
static inline __attribute__((always_inline)) void FS_FN(fs_log_softmax_row)(const FS_T *x, FS_T *out, Py_ssize_t n, int threads) {
    FS_ARGS a = {.x = x, .out = out};
    a.m = (FS_C)FS_OVER(fs_max_chunk, FS_MERGE_MAX, NULL);
    a.k = (FS_C)log(FS_OVER(fs_sumexp_copy_chunk, 1, NULL));
    a.x = out;
    FS_OVER(fs_shift_chunk, 0, NULL);
}

static inline __attribute__((always_inline)) FS_C FS_FN(fs_logsumexp_row)(const FS_T *x, Py_ssize_t n, int threads) {
    FS_ARGS a = {.x = x};
    a.m = (FS_C)FS_OVER(fs_max_chunk, FS_MERGE_MAX, NULL);
    /* as torch.logsumexp: a NaN, +inf or all -inf row gives its max (NaN, +inf, -inf) */
    return isfinite(a.m) ? (FS_C)(a.m + log(FS_OVER(fs_sumexp_chunk, 1, NULL))) : a.m;
}

static inline __attribute__((always_inline)) void FS_FN(fs_softmax_backward_row)(const FS_T *y, const FS_T *dy, FS_T *out,
                                           Py_ssize_t n, int threads) {
    FS_ARGS a = {.x = y, .t = dy, .out = out};
    a.k = (FS_C)FS_OVER(fs_dot_chunk, 1, NULL);
    FS_OVER(fs_softmax_bwd_chunk, 0, NULL);
}

static inline __attribute__((always_inline)) void FS_FN(fs_log_softmax_backward_row)(const FS_T *logp, const FS_T *dy, FS_T *out,
                                               Py_ssize_t n, int threads) {
    FS_ARGS a = {.x = logp, .t = dy, .out = out};
    a.k = (FS_C)FS_OVER(fs_sum_chunk, 1, NULL);
    FS_OVER(fs_log_softmax_bwd_chunk, 0, NULL);
}

/* Cross-entropy of one row (formulas in fastsoftmax/_numba/_cross_entropy.py) against
 * the index target *y, or, with y NULL, the probability row t; w the class weights
 * (NULL: ones), W their sum; every logit capped first by softcap (0: none; fs_softcap).
 * With z_term (not NULL), the row's z-loss z_loss * lse**2 into *z_term. With grad (not
 * NULL), also d(s * loss + s_z * z_loss * lse**2)/dx into grad, which may be x. An index
 * target is the probability row onehot(*y): its target terms T and sum(w t' (z - m)) are
 * lookups, where a probability row is summed in the exp pass. The max of the capped row
 * is the cap of the max (tanh is increasing). */
static inline __attribute__((always_inline)) double FS_FN(fs_cross_entropy_row)(const FS_T *x, const int64_t *y, const FS_T *t,
                                          const FS_C *w, double weight_sum, double smoothing,
                                          double z_loss, double softcap, double s, double s_z,
                                          Py_ssize_t n, FS_T *grad, double *z_term, int threads) {
    double keep = 1.0 - smoothing, eps_c = smoothing / n, sum_exp, total_wt, shifted_wt;
    FS_KEPT_LOCAL(local);
    FS_ARGS a = {.x = x, .t = t, .w = w, .out = grad, .kept = FS_FN(fs_kept_row)(grad, n, local),
                 .keep = (FS_C)keep, .eps = (FS_C)eps_c, .cap = (FS_C)softcap};
    if (grad && !a.kept) return NAN;
    a.m = FS_CFN(fs_softcap)((FS_C)FS_OVER(fs_max_chunk, FS_MERGE_MAX, NULL), a.cap);
    FS_C slope_y = 1, z_y = 0;
    if (y) {
        double w_y = FS_CFN(fs_weight)(w, *y);
        /* read x before the exp pass writes grad */
        z_y = FS_CFN(fs_softcap)(FS_LOAD(x[*y]), a.cap);
        double shifted_y = z_y - a.m;
        slope_y = FS_CFN(fs_softcap_slope)(z_y, a.cap);
        double shifted_w = smoothing != 0 ? FS_OVER(fs_shifted_dot_chunk, 1, NULL) : 0;
        sum_exp = FS_OVER(fs_sumexp_chunk, 1, NULL);
        total_wt = keep * w_y + eps_c * weight_sum;
        shifted_wt = keep * w_y * shifted_y + eps_c * shifted_w;
    } else {
        double more[2];
        sum_exp = FS_OVER(fs_prob_sums_chunk, 3, more);
        total_wt = more[0];
        shifted_wt = more[1];
    }
    double log_sum = log(sum_exp), lse = a.m + log_sum;
    if (z_term) *z_term = z_loss * lse * lse;
    if (grad) {
        double exp_scale = s * total_wt;
        if (z_loss != 0) exp_scale += 2.0 * z_loss * s_z * lse;  /* d(lse**2)/dx = 2 lse p */
        a.k = (FS_C)(exp_scale / sum_exp);
        if (y) {
            a.f = (FS_C)(s * eps_c);
            a.w = smoothing != 0 ? w : NULL;  /* f = 0: the weights need not be read */
            FS_OVER(fs_rescale_chunk, 0, NULL);
            FS_C c = (FS_C)(s * keep * FS_CFN(fs_weight)(w, *y)) * slope_y;
            if (FS_LOWP)  /* the target's value from z_y, not from its rounded write */
                grad[*y] = FS_STORE((FS_CFN(fs_exp_core)(z_y - a.m) * a.k
                                     - a.f * FS_CFN(fs_weight)(a.w, *y)) * slope_y - c);
            else
                grad[*y] -= c;
        } else {
            a.f = (FS_C)s;
            FS_OVER(fs_prob_rescale_chunk, 0, NULL);
        }
    }
    FS_FN(fs_release_kept)(a.kept, local);
    return total_wt * log_sum - shifted_wt;
}

/* Entropy of one row (formulas in fastsoftmax/_numba/_entropy.py); with grad (not NULL),
 * also s * dH/dx into grad, which may be x. */
static inline __attribute__((always_inline)) double FS_FN(fs_entropy_row)(const FS_T *x, double s, Py_ssize_t n, FS_T *grad,
                                    int threads) {
    FS_ARGS a = {.x = x, .out = grad};
    a.m = (FS_C)FS_OVER(fs_max_chunk, FS_MERGE_MAX, NULL);
    if (!isfinite(a.m))  /* a NaN, +inf or all -inf row: NaN, as torch */
        return FS_FN(fs_nan_row)(grad, n);
    FS_KEPT_LOCAL(local);
    a.kept = FS_FN(fs_kept_row)(grad, n, local);
    if (grad && !a.kept) return NAN;
    double sum_ed;
    double sum_e = FS_OVER(fs_entropy_sums_chunk, 2, &sum_ed);
    double mean_d = sum_ed / sum_e;
    if (grad) {
        a.k = (FS_C)(s / sum_e);
        a.f = (FS_C)mean_d;
        FS_OVER(fs_entropy_grad_chunk, 0, NULL);
    }
    FS_FN(fs_release_kept)(a.kept, local);
    return log(sum_e) - mean_d;
}

/* The generalised JSD of one pair of rows, student s and teacher t (formulas and passes
 * in fastsoftmax/_numba/_jsd.py; beta 0 and 1: the forward and reverse KL); with grad
 * (not NULL, neither s nor t), also scale * d loss / d s into grad. */
static inline __attribute__((always_inline)) double FS_FN(fs_jsd_row)(const FS_T *s, const FS_T *t, double beta, double inv_t,
                                                                     double scale, Py_ssize_t n, FS_T *grad, int threads) {
    FS_ARGS a = {.x = s, .t = t, .out = grad, .inv_t = (FS_C)inv_t, .beta = (FS_C)beta};
    a.m = (FS_C)FS_OVER(fs_max_chunk, FS_MERGE_MAX, NULL);
    a.m_t = (FS_C)FS_OVER(fs_max_t_chunk, FS_MERGE_MAX, NULL);
    if (!isfinite(a.m) || !isfinite(a.m_t))  /* NaN, +inf or all -inf in a row: NaN */
        return FS_FN(fs_nan_row)(grad, n);
    int mode = fs_jsd_mode(beta);
    /* With a gradient, the exp pass keeps t's exponentials (kept_t) for P, where the loss
     * pass then writes Q for the gradient pass: 2 exps and a log per element instead of 4
     * and a log (beta = 0.5, 2 threads, bench.ab: 0.75x the time at 16777 x 1000, 0.89x
     * at 128 x 131072). A row of up to FS_BLOCK keeps them on the stack (no malloc per
     * short row). The forward KL, which saves one exp by it, keeps them for such rows
     * only: 0.88x at 16777 x 1000, but 1.08x at 128 x 131072 (a fourth row in cache). */
    FS_C local_s[FS_BLOCK], local_t[FS_BLOCK];  /* (local_s: also fs_kept_row's stack row) */
    if (grad) {
        a.kept = FS_FN(fs_kept_row)(grad, n, local_s);
        a.kept_t = n <= FS_BLOCK ? local_t : mode == FS_JSD_FORWARD ? NULL
                   : (FS_C *)fs_scratch_malloc((size_t)n * sizeof(FS_C));
        if (!a.kept || (!a.kept_t && mode != FS_JSD_FORWARD)) {
            FS_FN(fs_release_kept)(a.kept, local_s);
            if (a.kept_t != local_t) free(a.kept_t);
            return NAN;
        }
    } else if (n <= FS_BLOCK) {  /* the loss alone, a short row: both rows' exps kept on
                                  * the stack for the loss pass (0.74x the time at
                                  * 16777 x 1000, 0.81x at 1677721 x 10) */
        a.kept = local_s;
        a.kept_t = local_t;
    }
    double sum_t, sum_s = FS_OVER(fs_jsd_sums_chunk, 2, &sum_t);
    a.k = (FS_C)(scale * inv_t * (mode == FS_JSD_MIXTURE ? 1.0 - beta : 1.0));
    a.log_sum = (FS_C)log(sum_s);
    a.log_sum_t = (FS_C)log(sum_t);
    a.inv_sum = (FS_C)(1.0 / sum_s);
    a.inv_sum_t = (FS_C)(1.0 / sum_t);
    double kl_q, loss = mode == FS_JSD_FORWARD ? FS_OVER(fs_jsd_forward_chunk, 2, &kl_q)
                      : mode == FS_JSD_REVERSE ? FS_OVER(fs_jsd_reverse_chunk, 2, &kl_q)
                      : FS_OVER(fs_jsd_mixture_chunk, 2, &kl_q);
    if (grad && mode != FS_JSD_FORWARD) {
        if (isfinite(kl_q)) {
            a.kl = (FS_C)kl_q;
            FS_OVER(fs_jsd_grad_chunk, 0, NULL);
        } else {  /* an infinite reverse KL (Q > 0 = P somewhere) has no gradient */
            FS_FN(fs_nan_row)(grad, n);
        }
    }
    if (grad) {
        FS_FN(fs_release_kept)(a.kept, local_s);
        if (a.kept_t != local_t) free(a.kept_t);
    }
    return loss;
}

#undef FS_OVER
#undef FS_KEPT_LOCAL
#undef FS_ARGS
#undef FS_CHUNK
