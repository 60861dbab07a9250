// moa_kernels.c — the numeric building blocks: the one BLAS entry point,
// its naive twin for tests, layer norm, softmax, activations, threads.
#include <cblas.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "moa_impl.h"

// --- matrix products -----------------------------------------------------------

// Each thread counts locally and adds to the shared total every ~16 MFLOP:
// an atomic add per product made two workers fight over one cache line.
// moa_flop_count() therefore lags by < 16 MFLOP per other thread.
static _Atomic uint64_t flops;
static _Thread_local uint64_t local_flops;

void moa_count_flops(uint64_t n) {
    local_flops += n;
    if (local_flops >= (1u << 24)) {
        atomic_fetch_add_explicit(&flops, local_flops, memory_order_relaxed);
        local_flops = 0;
    }
}

uint64_t moa_flop_count(void) {
    return atomic_load_explicit(&flops, memory_order_relaxed) + local_flops;
}

// C (m×n) = alpha · op(A) (m×k) · op(B) (k×n) + beta · C, row-major.
void moa_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta,
              float *c, int ldc) {
    if (m == 0 || n == 0) return;
    moa_count_flops(2ull * m * n * k);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda,
                b, ldb, beta, c, ldc);
}

void moa_gemm_naive(int trans_a, int trans_b, int m, int n, int k,
                    float alpha, const float *a, int lda, const float *b,
                    int ldb, float beta, float *c, int ldc) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                float bv = trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                acc += (double)av * bv;
            }
            float *cv = &c[(size_t)i * ldc + j];
            *cv = (float)(alpha * acc + (beta == 0 ? 0 : beta * *cv));
        }
    }
}

// out (n×E) = x (n×d) · w (d×E), each value four FMA chains over d (j mod 4,
// eight experts at a time in a vector's lanes) added as (0+1)+(2+3): a row's
// result depends on nothing but that row, whatever n is, unlike OpenBLAS,
// whose blocking can round a row differently in another batch. (Four chains:
// one would wait on the FMA latency.)
void moa_gemm_rowwise(int n, int E, int d, const float *x, const float *w, float *out) {
    moa_count_flops(2ull * n * E * d);
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        float *o = out + (size_t)r * E;
        int e = 0;
#if defined(__AVX2__) && defined(__FMA__)
        for (; e + 8 <= E; e += 8) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const float *wj = w + e;
            int j = 0;
            for (; j + 4 <= d; j += 4, wj += 4 * (size_t)E) {
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(xr[j]), _mm256_loadu_ps(wj), a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(xr[j + 1]), _mm256_loadu_ps(wj + E), a1);
                a2 = _mm256_fmadd_ps(_mm256_set1_ps(xr[j + 2]), _mm256_loadu_ps(wj + 2 * E), a2);
                a3 = _mm256_fmadd_ps(_mm256_set1_ps(xr[j + 3]), _mm256_loadu_ps(wj + 3 * E), a3);
            }
            __m256 *tail[3] = {&a0, &a1, &a2};
            for (int t = 0; j < d; j++, t++, wj += E)
                *tail[t] = _mm256_fmadd_ps(_mm256_set1_ps(xr[j]), _mm256_loadu_ps(wj), *tail[t]);
            _mm256_storeu_ps(o + e, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        }
#endif
        for (; e < E; e++) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int j = 0; j < d; j++) acc[j & 3] = fmaf(xr[j], w[(size_t)j * E + e], acc[j & 3]);
            o[e] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
}

// --- threads ---------------------------------------------------------------

void moa_set_num_threads(int n) {
    if (n < 1) n = 1;
    openblas_set_num_threads(n);
}

int moa_get_num_threads(void) { return openblas_get_num_threads(); }

const char *moa_blas_corename(void) {
    const char *s = openblas_get_corename();
    return s ? s : "unknown";
}

// --- row operations ------------------------------------------------------------

// Eight partial sums: a plain reduction loop is not vectorised without
// -ffast-math (it would reorder the sum); these lanes reorder it explicitly.
// The result differs from a sequential sum by float rounding only.
float moa_dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

static float sum8(const float *x, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j];
    float s = 0;
    for (; i < n; i++) s += x[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

void moa_layernorm(float *y, const float *x, int n, int d, const float *w,
                   const float *b, float eps) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + (size_t)i * d;
        float *yr = y + (size_t)i * d;
        float mean = sum8(xr, d) / (float)d;
        float acc[8] = {0}, var = 0;
        int j = 0;
        for (; j + 8 <= d; j += 8)
            for (int l = 0; l < 8; l++) {
                float t = xr[j + l] - mean;
                acc[l] += t * t;
            }
        for (; j < d; j++) var += (xr[j] - mean) * (xr[j] - mean);
        for (int l = 0; l < 8; l++) var += acc[l];
        var /= (float)d;
        float inv = 1.0f / sqrtf(var + eps);
        for (j = 0; j < d; j++) yr[j] = (xr[j] - mean) * inv * w[j] + b[j];
    }
}

void moa_softmax(float *x, int v) {
    float mx = -INFINITY;
    for (int j = 0; j < v; j++)
        if (x[j] > mx) mx = x[j];
    if (mx == -INFINITY) {  // every entry masked: no distribution
        for (int j = 0; j < v; j++) x[j] = 0;
        return;
    }
    float sum = 0;
    for (int j = 0; j < v; j++) {
        x[j] = expf(x[j] - mx);
        sum += x[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < v; j++) x[j] *= inv;
}

// --- log-softmax over the vocabulary ------------------------------------------------
//
// The output log-softmax touches V floats per row and step: with V = 8000 it
// was a fifth of the decoder's time with libm's scalar expf. The AVX2 path
// evaluates exp(x - max) eight lanes at a time: Cody-Waite range reduction
// and a degree-6 polynomial, max relative error 2.3e-7 over [-87, 0] (terms
// below e^-87 are clamped; they cannot move a sum whose largest term is 1),
// summed in double. The log-sum-exp differs from the scalar path by ~1e-8
// relative, far inside the golden tests' 1e-4.

static float row_max(const float *x, int v) {
    float m[8];
    for (int j = 0; j < 8; j++) m[j] = -INFINITY;
    int i = 0;
    for (; i + 8 <= v; i += 8)
        for (int j = 0; j < 8; j++) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    float mx = -INFINITY;
    for (; i < v; i++) mx = x[i] > mx ? x[i] : mx;
    for (int j = 0; j < 8; j++) mx = m[j] > mx ? m[j] : mx;
    return mx;
}

#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 exp_neg8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n·ln2, ln2 split in two so that n·ln2_hi is exact
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.3888889e-3f);  // Taylor: 1/720 ... 1/1
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3333333e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1666667e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666667e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// Σ exp(x[i] - mx), accumulated in double.
static double sum_exp(const float *x, int v, float mx) {
    __m256 m = _mm256_set1_ps(mx);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= v; i += 8) {
        __m256 e = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
    double s = t[0] + t[1] + t[2] + t[3];
    for (; i < v; i++) s += (double)expf(x[i] - mx);
    return s;
}
#else
static double sum_exp(const float *x, int v, float mx) {
    double s = 0;
    for (int i = 0; i < v; i++) s += (double)expf(x[i] - mx);
    return s;
}
#endif

void moa_logsumexp_rows(const float *x, int n, int v, float *lse) {
    for (int i = 0; i < n; i++) {
        const float *r = x + (size_t)i * v;
        float mx = row_max(r, v);
        lse[i] = mx == -INFINITY ? -INFINITY : mx + (float)log(sum_exp(r, v, mx));
    }
}

void moa_lse_add(moa_lse_acc *a, const float *x, int n) {
    if (n <= 0) return;
    float mx = row_max(x, n);
    if (mx == -INFINITY) return;
    if (mx > a->mx) {
        // what was summed against the old maximum, against the new one
        if (a->mx != -INFINITY) a->sum *= exp((double)a->mx - (double)mx);
        a->mx = mx;
    }
    a->sum += sum_exp(x, n, a->mx);
}

float moa_lse_value(const moa_lse_acc *a) {
    return a->mx == -INFINITY ? -INFINITY : a->mx + (float)log(a->sum);
}

void moa_log_softmax(float *x, int n, int v) {
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * v;
        float mx = row_max(r, v);
        if (mx == -INFINITY) continue;  // nothing to normalise
        // A float sum of V exponentials drifts low by ~1e-6 relative (a
        // bias, not noise): the sum is accumulated in double, rounded once.
        float lse = mx + (float)log(sum_exp(r, v, mx));
        for (int j = 0; j < v; j++) r[j] -= lse;
    }
}

// --- attention of one decoder row -------------------------------------------------

#if defined(__AVX2__) && defined(__FMA__)
// The eight lane sums of a, b, ..., h in one vector, each summed in the same
// order: (l0+l1)+(l2+l3), then + ((l4+l5)+(l6+l7)).
static inline __m256 hsum8x8(__m256 a, __m256 b, __m256 c, __m256 d, __m256 e, __m256 f,
                             __m256 g, __m256 h) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 ef = _mm256_hadd_ps(e, f), gh = _mm256_hadd_ps(g, h);
    __m256 abcd = _mm256_hadd_ps(ab, cd), efgh = _mm256_hadd_ps(ef, gh);
    return _mm256_add_ps(_mm256_permute2f128_ps(abcd, efgh, 0x20),
                         _mm256_permute2f128_ps(abcd, efgh, 0x31));
}

static inline float hsum8(__m256 a) {
    float t[8];
    _mm256_storeu_ps(t, hsum8x8(a, a, a, a, a, a, a, a));
    return t[0];
}

// scores[p] (and scores2[p] when q2) = q · K[p] for p < m; h % 8 == 0.
// Four positions at a time, both queries sharing each load of K.
static void attn_scores(const float *q1, const float *q2, const float *K, int m, int h,
                        float *s1, float *s2) {
    const float *qb = q2 ? q2 : q1;
    int p = 0;
    for (; p + 4 <= m; p += 4) {
        __m256 a[4], b[4];  // position p + i, queries 1 and 2
        for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
        for (int c = 0; c < h; c += 8) {
            __m256 x = _mm256_loadu_ps(q1 + c), y = _mm256_loadu_ps(qb + c);
            for (int i = 0; i < 4; i++) {
                __m256 kv = _mm256_loadu_ps(K + (size_t)(p + i) * h + c);
                a[i] = _mm256_fmadd_ps(x, kv, a[i]);
                b[i] = _mm256_fmadd_ps(y, kv, b[i]);
            }
        }
        float t[8];
        _mm256_storeu_ps(t, hsum8x8(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]));
        memcpy(s1 + p, t, 4 * sizeof(float));
        if (q2) memcpy(s2 + p, t + 4, 4 * sizeof(float));
    }
    for (; p < m; p++) {
        const float *kp = K + (size_t)p * h;
        __m256 a = _mm256_setzero_ps(), b = a;
        for (int c = 0; c < h; c += 8) {
            __m256 kv = _mm256_loadu_ps(kp + c);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + c), kv, a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(qb + c), kv, b);
        }
        s1[p] = hsum8(a);
        if (q2) s2[p] = hsum8(b);
    }
}

// Columns [c, c + 8·nv) of o1 (and o2 when w2) = Σ_p w[p] · V[p], both
// outputs sharing each load of V; nv is a constant at each call, so the
// accumulators stay in registers.
static inline __attribute__((always_inline)) void mix_block(int nv, const float *w1,
                                                            const float *w2, const float *V,
                                                            int m, int h, int c, float *o1,
                                                            float *o2) {
    const float *wb = w2 ? w2 : w1;
    __m256 a[4], b[4];
    for (int i = 0; i < nv; i++) a[i] = b[i] = _mm256_setzero_ps();
    for (int p = 0; p < m; p++) {
        const float *v = V + (size_t)p * h + c;
        __m256 x = _mm256_broadcast_ss(w1 + p), y = _mm256_broadcast_ss(wb + p);
        for (int i = 0; i < nv; i++) {
            __m256 vv = _mm256_loadu_ps(v + 8 * i);
            a[i] = _mm256_fmadd_ps(x, vv, a[i]);
            b[i] = _mm256_fmadd_ps(y, vv, b[i]);
        }
    }
    for (int i = 0; i < nv; i++) {
        _mm256_storeu_ps(o1 + c + 8 * i, a[i]);
        if (w2) _mm256_storeu_ps(o2 + c + 8 * i, b[i]);
    }
}

// o1 (and o2 when w2) = Σ_p w[p] · V[p]; h % 8 == 0: 32 columns at a time,
// then 8.
static void attn_mix(const float *w1, const float *w2, const float *V, int m, int h,
                     float *o1, float *o2) {
    int c = 0;
    for (; c + 32 <= h; c += 32) mix_block(4, w1, w2, V, m, h, c, o1, o2);
    for (; c < h; c += 8) mix_block(1, w1, w2, V, m, h, c, o1, o2);
}
#endif

void moa_attend(const float *q, int nq, const float *K, const float *V, int m, int h,
                float *scores, float *out) {
    moa_count_flops(4ull * nq * m * h);
#if defined(__AVX2__) && defined(__FMA__)
    if (h % 8 == 0) {
        for (int j = 0; j < nq; j += 2) {
            int two = j + 1 < nq;
            float *s1 = scores + (size_t)j * m, *s2 = two ? s1 + m : NULL;
            attn_scores(q + (size_t)j * h, two ? q + (size_t)(j + 1) * h : NULL, K, m, h, s1, s2);
            moa_softmax(s1, m);
            if (two) moa_softmax(s2, m);
            attn_mix(s1, s2, V, m, h, out + (size_t)j * h, two ? out + (size_t)(j + 1) * h : NULL);
        }
        return;
    }
#endif
    for (int j = 0; j < nq; j++) {
        float *sc = scores + (size_t)j * m, *o = out + (size_t)j * h;
        for (int p = 0; p < m; p++) sc[p] = moa_dot(q + (size_t)j * h, K + (size_t)p * h, h);
        moa_softmax(sc, m);
        memset(o, 0, (size_t)h * sizeof(float));
        for (int p = 0; p < m; p++) moa_axpy(o, sc[p], V + (size_t)p * h, h);
    }
}

void moa_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void moa_relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
}

void moa_gelu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}
