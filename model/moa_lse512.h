// moa_lse512.h — the output product's log-sum-exp, folded into the AVX-512
// micro-tiles' epilogues (model/moa_packed.c, model/moa_quant.c) while each
// row's 32 new values are still in registers. Internal to model/.
//
// Why: a decoder step needs, per row, only lse = log Σ_j exp(logit_j) and a
// few logits (spec §4). A separate pass re-read all R × V logits from L2/L3
// twice (maximum, then exponentials): ~7% of decode time at V = 8000.
//
// How: per row, the largest value so far (mx) and, lane by lane, Σ exp(x -
// mx) in double. A tile's 32 values raise mx when they hold a larger one
// (the sums are rescaled by exp(old - new), in double: rare after the first
// panels); their exponentials are added to the lanes. lse16_value adds the
// lanes once at the end. exp as moa_kernels.c's exp_neg8 (degree-6
// polynomial after Cody-Waite reduction, max relative error 2.3e-7; terms
// below e^-87 clamped). Against the two-pass moa_logsumexp_rows: ~1e-7
// relative (unit-tested to 1e-6).
#ifndef MOA_LSE512_H
#define MOA_LSE512_H

#include <immintrin.h>
#include <math.h>

#define LSE512 __attribute__((target("avx512f")))
#define LSE512_INLINE static inline __attribute__((always_inline)) LSE512

typedef struct moa_lse16 {
    __m512d s0, s1;     // Σ exp(x - mx) of lanes 0-7 and 8-15, in double
    float mx;           // the largest value folded in so far
} moa_lse16;

LSE512_INLINE void lse16_start(moa_lse16 *a) {
    a->s0 = a->s1 = _mm512_setzero_pd();
    a->mx = -INFINITY;
}

// exp(x) for x <= 0.
LSE512_INLINE __m512 lse16_exp(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.3888889e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3333333e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1666667e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666667e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// Folds in one row's 32 values f0 (columns 0-15) and f1 (16-31); the masks
// say which columns exist.
LSE512_INLINE void lse16_add(moa_lse16 *a, __m512 f0, __m512 f1, __mmask16 m0, __mmask16 m1) {
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    float tm = _mm512_reduce_max_ps(
        _mm512_max_ps(_mm512_mask_mov_ps(ninf, m0, f0), _mm512_mask_mov_ps(ninf, m1, f1)));
    if (tm > a->mx) {
        if (a->mx != -INFINITY) {
            __m512d sc = _mm512_set1_pd(exp((double)a->mx - (double)tm));
            a->s0 = _mm512_mul_pd(a->s0, sc);
            a->s1 = _mm512_mul_pd(a->s1, sc);
        }
        a->mx = tm;
    }
    if (a->mx == -INFINITY) return;  // nothing but -inf so far
    __m512 mx = _mm512_set1_ps(a->mx);
    __m512 e = _mm512_add_ps(_mm512_maskz_mov_ps(m0, lse16_exp(_mm512_sub_ps(f0, mx))),
                             _mm512_maskz_mov_ps(m1, lse16_exp(_mm512_sub_ps(f1, mx))));
    a->s0 = _mm512_add_pd(a->s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    a->s1 = _mm512_add_pd(a->s1, _mm512_cvtps_pd(_mm256_castpd_ps(
                                     _mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
}

LSE512_INLINE float lse16_value(const moa_lse16 *a) {
    if (a->mx == -INFINITY) return -INFINITY;
    return a->mx + (float)log(_mm512_reduce_add_pd(_mm512_add_pd(a->s0, a->s1)));
}

#endif
