/* Row helpers of the Cython backend: a vectorisable exp and the per-row loops.
 *
 * The same algorithms as fastsoftmax/_numba/_math.py. Each helper is written once, as
 * plain C in rows_typed.h, and each row function (one op on one row, over the row
 * driver) in row_functions_typed.h; the end of this header includes both for float
 * (suffix f), double (d), and the 16-bit storage types bfloat16 (b) and float16 (h),
 * computed in float; FS_FN(fs_row_max) is fs_row_max_f in the float instance. This
 * header holds what does not depend on the type.
 * Reductions use `#pragma omp simd reduction`, which lets GCC split them into vector
 * lanes under -fopenmp-simd without -ffast-math (which would break NaN/inf
 * semantics and re-round the two-step ln2 reduction in exp).
 */
#ifndef FASTSOFTMAX_ROWS_H
#define FASTSOFTMAX_ROWS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Scratch memory of the kernels. fs_scratch_malloc returns NULL when the allocation
 * fails (or when tests make every allocation fail: fs_fail_scratch) and flags it; the
 * kernel's Python function reads and clears the flag after its parallel loop
 * (fs_take_scratch_failure) and raises MemoryError. A block or row without its scratch
 * returns without finishing its rows. */
static int fs_fail_scratch = 0;
static int fs_scratch_failed = 0;

static inline void fs_flag_scratch_failure(void) {
    __atomic_store_n(&fs_scratch_failed, 1, __ATOMIC_RELAXED);
}

static inline int fs_take_scratch_failure(void) {
    return __atomic_exchange_n(&fs_scratch_failed, 0, __ATOMIC_RELAXED);
}

static inline void *fs_scratch_malloc(size_t size) {
    void *p = fs_fail_scratch ? NULL : malloc(size);
    if (!p) fs_flag_scratch_failure();
    return p;
}

/* The scalars of a short-row cross-entropy (_kernels.pyx's _cross_entropy_block, which
 * defines them; fs_narrow_cross_entropy_rows) */
typedef struct {
    double weight_sum, smoothing, z_loss, scale, z_scale;
    int64_t ignore_index;
} fs_ce_scalars;

/* Partial sums run in the row's type over blocks, added into a double total. */
#define FS_BLOCK 1024
/* Entropy: x - max is clamped to this, where exp is 0, so that a -inf logit adds 0 (not
 * 0 * -inf = NaN) to the entropy and gets a 0 gradient. */
#define FS_ENTROPY_FLOOR (-1e30)

/* exp(x) = 2^k * P(r), r = x - k ln2 (Cody-Waite split of ln2), |r| <= ln2/2.
 * float: degree-6 minimax polynomial (Cephes expf coefficients), ~1 ulp.
 * double: Taylor series to degree 12, truncation < 2e-16. k is x log2(e) rounded to
 * the nearest integer by the addition x log2(e) + (2^m + bias) itself, m the mantissa
 * width (the sum lies in [2^m, 2^(m+1)), where the floats are the integers), and k =
 * that sum - (2^m + bias), exact. floor() had no SSE2 instruction and was a libm call
 * per element at the baseline level (exp-sum kernels 2.7 ns/elem against AVX2's 0.4).
 * 2^k is built in the exponent bits without a float-to-int conversion: the sum's low
 * mantissa bits hold k + bias (k is in [-126, 127] or [-1022, 1023] for x in
 * [lo, hi]), which a left shift by m moves into the exponent field of an otherwise zero
 * word. Converting k * 2^m + bias * 2^m
 * to an int instead (one FMA and a convert, as this code did) is undefined behaviour
 * in C when k is NaN (x NaN), infinite (x = +inf) or out of the int's range; the bit
 * casts and the unsigned shift are defined for every value, in as many instructions
 * (an add and a shift). NaN still gives NaN: for a NaN x, r is NaN (it is computed
 * from xc, which stays NaN), so p * scale is NaN whatever bits the shift leaves in
 * scale; for x = +inf, r = inf - inf = NaN.
 *
 * fs_exp_core_* takes x in [-inf, hi] or NaN (NaN out; +inf gives NaN too): no overflow
 * handling. The loops call it on x - max, which is <= 0 once the row max is finite, or
 * NaN or +inf only in a row holding a NaN (which the max may miss), whose sum is then
 * NaN as it should; dropping the checks made the exp-sum loop 0.90 -> 0.65 ns/elem on
 * one core (measured). fs_exp_* handles every input. */
/* The scalar math functions here and in rows_typed.h are always inlined: left to GCC's
 * inlining budget in the whole extension, they stayed scalar calls in some loops, which
 * kept those loops scalar (kl_div + grad 9.7 -> 1.3 ns/elem, BCE 26 -> 2.2, one thread,
 * float32). */
#define FS_MATH static inline __attribute__((always_inline))

FS_MATH float fs_exp_core_f(float x) {
    const float lo = -126.0f * 0.69314718f;
    float xc = x < lo ? lo : x;  /* a NaN stays NaN (x > lo ? x : lo would clamp it) */
    float biased = xc * 1.44269504f + (8388608.0f + 127.0f);  /* 2^23 + 127 + k */
    float k = biased - (8388608.0f + 127.0f);
    float r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &biased, sizeof bits);
    bits <<= 23;  /* mantissa bits 0-8 (k + 127) into the exponent field */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < lo ? 0.0f : p * scale;  /* -inf and results below the normal range: 0 */
}

FS_MATH double fs_exp_core_d(double x) {
    const double lo = -1022.0 * 0.6931471805599453;
    double xc = x < lo ? lo : x;
    double biased = xc * 1.4426950408889634 + (4503599627370496.0 + 1023.0);  /* 2^52 + 1023 + k */
    double k = biased - (4503599627370496.0 + 1023.0);
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
    uint64_t bits;
    memcpy(&bits, &biased, sizeof bits);
    bits <<= 52;  /* mantissa bits 0-11 (k + 1023) into the exponent field */
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < lo ? 0.0 : p * scale;
}

/* tanh(u) / u for |u| < 1/4 (fs_tanh_*): its Taylor series in u^2, with the
 * coefficients 2^2n (2^2n - 1) B_2n / (2n)! (B the Bernoulli numbers), as many as the
 * type needs there (float 5, double 10; as fastsoftmax/_numba/_math.py). */
FS_MATH float fs_tanh_series_f(float u2) {
    float p = 62.0f / 2835;
    p = p * u2 + -17.0f / 315;
    p = p * u2 + 2.0f / 15;
    p = p * u2 + -1.0f / 3;
    return p * u2 + 1.0f;
}

FS_MATH double fs_tanh_series_d(double u2) {
    double p = -443861162.0 / 1856156927625;
    p = p * u2 + 6404582.0 / 10854718875;
    p = p * u2 + -929569.0 / 638512875;
    p = p * u2 + 21844.0 / 6081075;
    p = p * u2 + -1382.0 / 155925;
    p = p * u2 + 62.0 / 2835;
    p = p * u2 + -17.0 / 315;
    p = p * u2 + 2.0 / 15;
    p = p * u2 + -1.0 / 3;
    return p * u2 + 1.0;
}

/* log(x) for the exp sums of the block kernels, where libm's scalar log was 17% of the
 * C = 10 cross-entropy time; this one vectorises over a block's rows. x = 2^k f with
 * f in [sqrt(1/2), sqrt(2)), log f = 2 atanh(t) = 2 (t + t^3/3 + ... + t^23/23) with
 * t = (f - 1) / (f + 1), |t| <= 0.172 (truncation < 1e-18); k ln2 in two parts.
 * Normal x, 0 (-inf), +inf and NaN; subnormal x is not expected (sums are >= 1). */
FS_MATH double fs_log_d(double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    /* k = the exponent field - 1023, converted by building the double 2^52 + field and
     * subtracting 2^52 (exact): AVX2 has no int64 -> double conversion, so a cast made
     * the whole log scalar there (forced avx2, 2 threads, bench.ab against the build
     * before: C = 10 CE + grad 0.74 -> 0.61 of its time, logsumexp 0.67 -> 0.53). */
    uint64_t field_bits = (bits >> 52) | 0x4330000000000000ULL;
    double k;
    memcpy(&k, &field_bits, sizeof k);
    k -= 4503599627370496.0 + 1023.0;
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

/* log(x) for a normal float x, 0 (-inf), +inf and NaN: fs_log_d's method in float.
 * x = 2^k f with f in [sqrt(1/2), sqrt(2)), log f = 2 atanh(t) = 2 (t + t^3/3 + ... +
 * t^9/9), t = (f - 1) / (f + 1), |t| <= 0.172: truncation < 2e-9 relative (float's
 * half ulp is 6e-8); k ln2 in two parts (k * 0.693359375 is exact). */
FS_MATH float fs_log_normal_f(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float k = (float)(int32_t)(bits >> 23) - 127.0f;
    uint32_t mantissa_bits = (bits & 0x007fffffU) | 0x3f800000U;
    float f;
    memcpy(&f, &mantissa_bits, sizeof f);  /* f in [1, 2) */
    int high = f > 1.41421356f;
    f = high ? 0.5f * f : f;
    k = high ? k + 1.0f : k;
    float t = (f - 1.0f) / (f + 1.0f), t2 = t * t;
    float p = 1.0f / 9;
    p = p * t2 + 1.0f / 7;
    p = p * t2 + 1.0f / 5;
    p = p * t2 + 1.0f / 3;
    float y = k * 0.693359375f + (2.0f * t + (2.0f * t * t2 * p + k * -2.12194440e-4f));
    y = x > 0.0f ? y : (x == 0.0f ? -INFINITY : NAN);
    return x == INFINITY ? x : y;  /* NaN stays NaN through the compare-selects */
}

/* out[r] = log(x[r]) */
static inline void fs_log_array(const double *x, double *out, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t r = 0; r < n; r++) out[r] = fs_log_d(x[r]);
}

#define FS_MIN(a, b) ((a) < (b) ? (a) : (b))

/* Vector width of the short-row helpers (rows_typed.h), from the instruction set:
 * AVX-512 (64 bytes, mask registers), AVX2 (32 bytes, vmaskmov), otherwise 16 bytes. */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__BMI2__)
#define FS_VEC_BYTES 64
#elif defined(__AVX2__)
#define FS_VEC_BYTES 32
#else
#define FS_VEC_BYTES 16
#endif
#if FS_VEC_BYTES >= 32
#include <immintrin.h>
#endif
/* Rows of at most FS_NARROW_BYTES run in columns (rows_typed.h fs_narrow_*_rows), as up
 * to FS_NARROW_TILES vectors. bench.ab, 2 threads, against the limit one tile lower:
 * AVX2 two vectors (C = 10 float32 0.86-0.99 of the time, CE + grad 0.93, logsumexp
 * 0.90; C = 16 0.98-1.06; C = 8 float64 0.79-0.98; measured when only the exp pass ran
 * in columns). AVX-512 one and a half (24 floats, 12 doubles): float32 C = 20 0.61-0.87,
 * C = 24 0.67-0.92; at C = 28 and 32 mixed (0.84-1.09, CE + grad in place 1.03-1.16);
 * float64 C = 10 0.58-0.86, at C = 16 mixed (forward ops 1.08-1.22, in place 1.14). */
#if FS_VEC_BYTES == 64
#define FS_NARROW_BYTES 96
#elif FS_VEC_BYTES == 32
#define FS_NARROW_BYTES 64
#else
#define FS_NARROW_BYTES 16
#endif
#define FS_NARROW_TILES ((FS_NARROW_BYTES + FS_VEC_BYTES - 1) / FS_VEC_BYTES)
typedef float fs_vec_f __attribute__((vector_size(FS_VEC_BYTES)));
typedef double fs_vec_d __attribute__((vector_size(FS_VEC_BYTES)));
typedef int32_t fs_index_vec_f __attribute__((vector_size(FS_VEC_BYTES)));
typedef int64_t fs_index_vec_d __attribute__((vector_size(FS_VEC_BYTES)));

/* Long rows split over the threads (the row driver, row_functions_typed.h): an array of
 * fewer than FS_SPLIT_ROWS rows of at least 4 * FS_SPLIT_MIN_CHUNK classes, where one
 * thread per row left cores idle (CE + grad kernel at 1 x 2**20, 2 threads: 1.13 -> 0.59
 * ns/elem; softmax 1.13 -> 0.59, logsumexp 0.86 -> 0.42). Decided by the shape alone,
 * not the thread count, so that results do not change with set_num_threads. */
enum {
    FS_SPLIT_ROWS = 4,
    FS_SPLIT_MIN_CHUNK = 16384,
    FS_SPLIT_MAX_CHUNKS = 64,
    FS_MAX_RESULTS = 3,  /* results of one chunk function */
    FS_MERGE_MAX = -1,   /* fs_over_chunks: the result is the largest of the chunks' */
};

/* The rows of its arguments that a chunk function reads and writes (FS_ROWS_* in
 * row_functions_typed.h): a float16 row function widens and rounds back only those. */
enum { FS_READS_X = 1, FS_READS_T = 2, FS_WRITES_OUT = 4 };

/* The three cases of the JSD row function (fs_jsd_row): beta = 0 (the forward KL),
 * beta = 1 (the reverse KL), 0 < beta < 1. */
enum { FS_JSD_FORWARD = 0, FS_JSD_REVERSE = 1, FS_JSD_MIXTURE = 2 };

static inline int fs_jsd_mode(double beta) {
    return beta == 0 ? FS_JSD_FORWARD : beta == 1 ? FS_JSD_REVERSE : FS_JSD_MIXTURE;
}

static inline int fs_split_rows(Py_ssize_t rows, Py_ssize_t n) {
    return rows < FS_SPLIT_ROWS && n >= 4 * FS_SPLIT_MIN_CHUNK;
}

/* Chunk length of a split row: a multiple of FS_SPLIT_MIN_CHUNK, at most
 * FS_SPLIT_MAX_CHUNKS chunks. */
static inline Py_ssize_t fs_chunk_length(Py_ssize_t n) {
    Py_ssize_t span = (Py_ssize_t)FS_SPLIT_MAX_CHUNKS * FS_SPLIT_MIN_CHUNK;
    return (n + span - 1) / span * FS_SPLIT_MIN_CHUNK;
}

/* The names of an instance: FS_FN(fs_row_max) is fs_row_max_f where FS_S is f, and
 * FS_MM(_mm512_max_) is _mm512_max_ps where FS_P is ps (FS_CAT pastes through a second
 * macro, so that FS_S and FS_P are expanded before they are pasted). */
#define FS_CAT_(a, b) a##b
#define FS_CAT(a, b) FS_CAT_(a, b)
#define FS_FN(name) FS_CAT(FS_CAT(name, _), FS_S)
#define FS_CFN(name) FS_CAT(FS_CAT(name, _), FS_CS)  /* the compute type's function */
#define FS_MM(name) FS_CAT(name, FS_P)

/* 16-bit storage (issue 18, fastsoftmax/_dtypes.py): a row of bfloat16 or float16
 * arrives as the bits (uint16_t, int16_t) and is computed in float.
 * bfloat16 -> float: the bits shifted up 16 (exact). float -> bfloat16: round to
 * nearest even on the float bits (adding 0x7fff plus the lowest kept bit carries
 * into the kept bits exactly when the dropped half is above a half, or a half with an
 * odd kept part; values above the bfloat16 max carry into the exponent and give inf);
 * a NaN keeps its sign and top mantissa bits and is made quiet. Written as selects, so
 * that the loops that call them vectorise. */
FS_MATH float fs_load_b(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float x;
    memcpy(&x, &wide, sizeof x);
    return x;
}

FS_MATH uint16_t fs_store_b(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return (uint16_t)(x != x ? (bits >> 16) | 0x40u : rounded);
}

/* float16 <-> float in integer and float operations, as selects. GCC 12 does not
 * vectorise _Float16 conversions without AVX512-FP16 (a loop of (float)h stays scalar
 * vcvtph2ps on x86-64-v3 and v4: "no vectype", -fopt-info-vec), so the bits are
 * converted by hand, the same code at every level: whole arrays at the baseline level,
 * single elements and the tails of fs_load_array_h / fs_store_array_h (below, which
 * convert whole vectors with F16C / AVX-512) at the others.
 * Decode: a normal half is its 15 bits moved to float's place (shifted up 13) plus
 * the exponent bias difference, a subnormal half its mantissa times 2^-24; inf / NaN
 * (exponent 31) get float's all-ones exponent. Encode (round to nearest even): a value >= 65536 (or
 * inf) gives inf, a NaN a quiet NaN with its top payload bits; a normal half rebias
 * the exponent and round by adding 0xfff plus the lowest kept bit (a carry out of the
 * mantissa bumps the exponent; 65520 and up give inf); below 2^-14 (half subnormals,
 * zero) adding 0.5 leaves the rounded half mantissa in float's low bits, rounded by
 * the float addition itself. The sign is put back. */
FS_MATH float fs_load_h(int16_t bits) {
    uint32_t h = (uint16_t)bits, magnitude = h & 0x7fffu, moved = magnitude << 13;
    /* no float subnormal on the way (a thread flushing denormals, e.g. after
     * torch.set_flush_denormal(True), would read it as 0): a subnormal half is its
     * mantissa times 2^-24, a normal one its bits rebiased by 112 << 23 */
    float sub = (float)(int32_t)magnitude * 0x1p-24f;
    uint32_t out;
    memcpy(&out, &sub, sizeof out);
    out = magnitude < 0x400u ? out : magnitude >= 0x7c00u ? moved | 0x7f800000u
                                                           : moved + (112u << 23);
    out |= (h & 0x8000u) << 16;
    float x;
    memcpy(&x, &out, sizeof x);
    return x;
}

FS_MATH int16_t fs_store_h(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    uint32_t sign = bits & 0x80000000u, a = bits ^ sign;
    uint32_t special = a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x3ffu) : 0x7c00u;
    uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;  /* -112 << 23 + 0xfff */
    float absx, half = 0.5f;
    memcpy(&absx, &a, sizeof absx);
    float shifted = absx + half;
    uint32_t small;
    memcpy(&small, &shifted, sizeof small);
    small -= 0x3f000000u;
    uint32_t h = a >= 0x47800000u ? special : a < 0x38800000u ? small : normal;
    return (int16_t)(uint16_t)(h | (sign >> 16));
}

/* ---- 16-bit rows as float vectors: the narrow rows of a 16-bit array ----
 * (narrow_typed.h). L 16-bit elements, L the lanes of a float vector, are a half-width
 * vector: loaded (count < L: the other lanes 0) and widened to float, or rounded as
 * fs_store_b / fs_store_h and stored (count < L: the first count only), without the
 * float copy of a block that the wider short rows convert to and from. */
typedef uint16_t fs_half_vec __attribute__((vector_size(FS_VEC_BYTES / 2)));
#define FS_HALF_LANES ((Py_ssize_t)(FS_VEC_BYTES / 4))
#if FS_VEC_BYTES == 64 && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FS_HALF_MASKED 1  /* 16-bit masked loads and stores */
#else
#define FS_HALF_MASKED 0
#endif

/* p[0 : count] into the low lanes, 0 in the others (count < 256, as fs_lane_mask's);
 * never reads past p[count - 1] across a 4 KiB page (a tail whose vector ends in p's
 * page is one plain load, as fs_vload's; at a page end, a copy of count elements) */
static inline fs_half_vec fs_half_vload(const uint16_t *p, Py_ssize_t count) {
#if FS_HALF_MASKED
    return (fs_half_vec)_mm256_maskz_loadu_epi16(_bzhi_u32(0xffffu, (unsigned)count), p);
#else
    fs_half_vec h = {0}, lanes;
    if (count < FS_HALF_LANES && ((uintptr_t)p & 4095) > 4096 - sizeof h) {
        memcpy(&h, p, (size_t)count * sizeof *p);
        return h;
    }
    memcpy(&h, p, sizeof h);
    for (Py_ssize_t l = 0; l < FS_HALF_LANES; l++) lanes[l] = (uint16_t)l;
    return h & (fs_half_vec)(lanes < (uint16_t)FS_MIN(count, FS_HALF_LANES));
#endif
}

/* p[0 : min(count, L)] = the low lanes of h */
static inline void fs_half_vstore(uint16_t *p, Py_ssize_t count, fs_half_vec h) {
    if (count >= FS_HALF_LANES)
        memcpy(p, &h, sizeof h);
    else
#if FS_HALF_MASKED
        _mm256_mask_storeu_epi16(p, _bzhi_u32(0xffffu, (unsigned)count), (__m256i)h);
#else
        memcpy(p, &h, (size_t)count * sizeof *p);
#endif
}

/* bfloat16: fs_load_b / fs_store_b on whole vectors. (Their lane loops vectorised at
 * half width and went through the stack: bench.ab, C = 10, 1.2-1.9x the time of the
 * float copy they replace.) With AVX-512 in intrinsics, the NaN case one masked or
 * (GCC's vector code of the same: a compare, a mask to vector, two ternary logic ops
 * and a two-source permute; bench.dtypes, C = 10, bfloat16 / float32 time of the
 * softmax backward 1.41 -> 0.94, softmax 1.05 -> 1.03). */
typedef uint32_t fs_bits_vec __attribute__((vector_size(FS_VEC_BYTES)));

static inline fs_vec_f fs_vwiden_b(fs_half_vec h) {
#if FS_VEC_BYTES == 64  /* GCC's convertvector: two half-width widenings and an insert */
    return (fs_vec_f)_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16);
#elif FS_VEC_BYTES == 32
    return (fs_vec_f)_mm256_slli_epi32(_mm256_cvtepu16_epi32((__m128i)h), 16);
#else
    return (fs_vec_f)(__builtin_convertvector(h, fs_bits_vec) << 16);
#endif
}

static inline fs_half_vec fs_vround_b(fs_vec_f v) {
#if FS_VEC_BYTES == 64
    __m512i bits = (__m512i)v, one = _mm512_set1_epi32(1);
    __m512i rounded = _mm512_add_epi32(
        bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                               _mm512_and_si512(_mm512_srli_epi32(bits, 16), one)));
    rounded = _mm512_mask_or_epi32(rounded, _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q),
                                   bits, _mm512_set1_epi32(0x400000));  /* NaN: quiet, cut */
    return (fs_half_vec)_mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
#else
    fs_bits_vec bits = (fs_bits_vec)v, nan = (fs_bits_vec)(v != v);
    fs_bits_vec rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return __builtin_convertvector((rounded & ~nan) | (((bits >> 16) | 0x40u) & nan),
                                   fs_half_vec);
#endif
}

/* float16: one F16C / AVX-512 conversion where the level has it (as fs_load_array_h) */
static inline fs_vec_f fs_vwiden_h(fs_half_vec h) {
#if FS_VEC_BYTES == 64
    return (fs_vec_f)_mm512_cvtph_ps((__m256i)h);
#elif FS_VEC_BYTES == 32 && defined(__F16C__)
    return (fs_vec_f)_mm256_cvtph_ps((__m128i)h);
#else
    fs_vec_f v = {0};
    #pragma omp simd
    for (Py_ssize_t l = 0; l < FS_HALF_LANES; l++) v[l] = fs_load_h((int16_t)h[l]);
    return v;
#endif
}

static inline fs_half_vec fs_vround_h(fs_vec_f v) {
#if FS_VEC_BYTES == 64
    return (fs_half_vec)_mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#elif FS_VEC_BYTES == 32 && defined(__F16C__)
    return (fs_half_vec)_mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    fs_half_vec h = {0};
    #pragma omp simd
    for (Py_ssize_t l = 0; l < FS_HALF_LANES; l++) h[l] = (uint16_t)fs_store_h(v[l]);
    return h;
#endif
}

/* Blocks of 16-bit elements to float and back, whole vectors at a time (fs_vwiden_*,
 * fs_vround_*; the tail element by element): the float16 row functions run the float
 * helpers on blocks widened this way (fs_call_chunk, row_functions_typed.h), and short
 * rows of a 16-bit array the float block kernels on a float copy (_kernels.pyx).
 * float16 at the x86-64-v3 and v4 levels is one F16C / AVX-512 conversion a vector,
 * where the integer conversion cost about 10 operations per element each way (and stayed
 * inline in every loop): float16 CE + grad in place, Cython, 2 threads, time ratio
 * new / old side by side (bench.ab, one run): 0.51 at 128 x 131072, 0.53 at 512 x 32768,
 * 0.55 at 16777 x 1000. bfloat16 as a loop of fs_load_b / fs_store_b vectorised by GCC
 * took 1.03-1.05x this time (bench.ab, 167772 x 100, 2 threads, CE + grad in place,
 * softmax; avx512 and avx2). float16: is_float16 (a literal at each call). Where float16
 * has no vector conversion (the baseline level), its whole array is one loop of the
 * integer conversion, which GCC vectorises (per vector, lane by lane: 1.8-2.1x the time). */
#if FS_VEC_BYTES == 64 || (FS_VEC_BYTES == 32 && defined(__F16C__))
#define FS_F16C_VECTORS 1
#else
#define FS_F16C_VECTORS 0
#endif
static inline __attribute__((always_inline)) void fs_widen_array(
        const uint16_t *x, float *out, Py_ssize_t n, int is_float16) {
    Py_ssize_t done = 0;
    for (; (!is_float16 || FS_F16C_VECTORS) && done + FS_HALF_LANES <= n; done += FS_HALF_LANES) {
        fs_half_vec h;
        memcpy(&h, x + done, sizeof h);
        fs_vec_f v = is_float16 ? fs_vwiden_h(h) : fs_vwiden_b(h);
        memcpy(out + done, &v, sizeof v);
    }
    #pragma omp simd
    for (Py_ssize_t i = done; i < n; i++)
        out[i] = is_float16 ? fs_load_h((int16_t)x[i]) : fs_load_b(x[i]);
}

static inline __attribute__((always_inline)) void fs_round_array(
        const float *x, uint16_t *out, Py_ssize_t n, int is_float16) {
    Py_ssize_t done = 0;
    for (; (!is_float16 || FS_F16C_VECTORS) && done + FS_HALF_LANES <= n; done += FS_HALF_LANES) {
        fs_vec_f v;
        memcpy(&v, x + done, sizeof v);
        fs_half_vec h = is_float16 ? fs_vround_h(v) : fs_vround_b(v);
        memcpy(out + done, &h, sizeof h);
    }
    #pragma omp simd
    for (Py_ssize_t i = done; i < n; i++)
        out[i] = is_float16 ? (uint16_t)fs_store_h(x[i]) : fs_store_b(x[i]);
}

static inline void fs_load_array_b(const uint16_t *x, float *out, Py_ssize_t n) {
    fs_widen_array(x, out, n, 0);
}

static inline void fs_store_array_b(const float *x, uint16_t *out, Py_ssize_t n) {
    fs_round_array(x, out, n, 0);
}

static inline void fs_load_array_h(const int16_t *x, float *out, Py_ssize_t n) {
    fs_widen_array((const uint16_t *)x, out, n, 1);
}

static inline void fs_store_array_h(const float *x, int16_t *out, Py_ssize_t n) {
    fs_round_array(x, (uint16_t *)out, n, 1);
}

/* The instances: FS_T the storage type, FS_C the compute type, FS_S and FS_CS their
 * name suffixes, FS_LOWP 1 for 16-bit storage, FS_LOAD / FS_STORE the conversions
 * between them, FS_P the suffix of the x86 intrinsics, FS_I the lane index type (the
 * element width), FS_EXP_HI the bound above which fs_exp_* gives +inf (127 ln2,
 * 1023 ln2: 2^k stays normal). bfloat16 (b) has the long-row helpers (rows_typed.h), each
 * element converted inline (a shift each way); float16 (h) has row functions only
 * (FS_WIDEN 1), which run the float helpers on blocks widened to float
 * (row_functions_typed.h's fs_call_chunk): its per-element conversion does not vectorise
 * to one instruction as fs_load_array_h's blocks do. bfloat16 went the same way first:
 * slower, with nothing to gain (time ratio widened / inline, bench.ab, 2 threads:
 * softmax_backward 1.13-1.39, CE + grad in place 1.04-1.14). */
#define FS_IDENTITY(v) (v)
#define FS_WIDEN 0
#define FS_C float
#define FS_CS f
#define FS_LOWP 0
#define FS_LOAD FS_IDENTITY
#define FS_STORE FS_IDENTITY
#define FS_T float
#define FS_S f
#define FS_P ps
#define FS_I int32_t
#define FS_EXP_HI (127.0f * 0.69314718f)
#define FS_LOG_NORMAL fs_log_normal_f
#define FS_MIN_NORMAL 1.17549435e-38f
#include "rows_typed.h"
#include "row_functions_typed.h"
#include "narrow_typed.h"
#undef FS_T
#undef FS_S
#undef FS_C
#undef FS_CS

#define FS_C double
#define FS_CS d
#undef FS_P
#undef FS_I
#undef FS_EXP_HI
#undef FS_LOG_NORMAL
#undef FS_MIN_NORMAL

#define FS_T double
#define FS_S d
#define FS_P pd
#define FS_I int64_t
#define FS_EXP_HI (1023.0 * 0.6931471805599453)
#define FS_LOG_NORMAL fs_log_d
#define FS_MIN_NORMAL 2.2250738585072014e-308
#include "rows_typed.h"
#include "row_functions_typed.h"
#include "narrow_typed.h"
#undef FS_T
#undef FS_S
#undef FS_C
#undef FS_CS
#undef FS_LOWP
#undef FS_LOAD
#undef FS_STORE
#undef FS_P
#undef FS_I
#undef FS_EXP_HI
#undef FS_LOG_NORMAL
#undef FS_MIN_NORMAL

#define FS_C float
#define FS_CS f
#define FS_LOWP 1
#define FS_P ps
#define FS_I int32_t
#define FS_EXP_HI (127.0f * 0.69314718f)
#define FS_LOG_NORMAL fs_log_normal_f
#define FS_MIN_NORMAL 1.17549435e-38f

#define FS_T uint16_t
#define FS_S b
#define FS_LOAD fs_load_b
#define FS_STORE fs_store_b
#include "rows_typed.h"
#include "row_functions_typed.h"
#include "narrow_typed.h"
#undef FS_T
#undef FS_S
#undef FS_LOAD
#undef FS_STORE
#undef FS_WIDEN

#define FS_WIDEN 1
#define FS_T int16_t
#define FS_S h
#define FS_LOAD fs_load_h
#define FS_STORE fs_store_h
#include "row_functions_typed.h"
#include "narrow_typed.h"
#undef FS_T
#undef FS_S
#undef FS_LOAD
#undef FS_STORE
#undef FS_WIDEN

#undef FS_C
#undef FS_CS
#undef FS_LOWP
#undef FS_P
#undef FS_I
#undef FS_EXP_HI
#undef FS_LOG_NORMAL
#undef FS_MIN_NORMAL

#endif
