// test_quant.c — the bf16 and int8 kernels, the log-sum-exp folded into the
// products, and the products over chosen rows (model/moa_quant.c), against
// the float32 double loop and against the arithmetic docs/moa-spec.md §9
// states, computed here independently.
//
// Bounds, per output element c = Σ_k a_k·w_k:
// - int8: every a_k and w_k is off by at most half its row's step (sa/2,
//   sw/2), so |c - ref| <= Σ_k (|a_k|·sw/2 + |w_k|·sa/2 + sa·sw/4), plus
//   float rounding (1e-5 of Σ|a_k·w_k|);
// - bf16: a_k and w_k are each off by at most 2^-8 relative (half an ulp of
//   8 significant bits), the float32 chain adds k roundings: |c - ref| <=
//   (2^-7 + (k + 2)·2^-24)·Σ_k |a_k·w_k|.
// Both kernels of a precision (AVX-512 where the CPU has it, AVX2) must give
// the same bits, which is also the formula recomputed here.
#include <stdint.h>

#include "moa_impl.h"
#include "moa_test.h"

static unsigned rng_state = 777;
static float frand(void) {
    rng_state = rng_state * 1103515245u + 12345u;
    return ((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}
// Values with a spread of magnitudes (what scales must cope with).
static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = frand();
        x[i] = (i % 7 == 0) ? 4 * v : (i % 5 == 0) ? 0.01f * v : v;
    }
}

static float bf16_to_f32(uint16_t h) { return moa_bf16_to_f32(h); }

// Element kk of output row j of a weight stored n×k (or k×n when kn).
static float wat(const float *w, int n, int k, int kn, int j, int kk) {
    return kn ? w[(size_t)kk * n + j] : w[(size_t)j * k + kk];
}

// The quantisation the spec states: scale = max|x| / 127, q = round(x / scale)
// computed as x · (127 / max), nearest even.
static float quant(const float *x, size_t stride, int k, int *q) {
    float mx = 0;
    for (int i = 0; i < k; i++) mx = fmaxf(mx, fabsf(x[(size_t)i * stride]));
    float inv = mx > 0 ? 127.0f / mx : 0.0f;
    for (int i = 0; i < k; i++) q[i] = (int)nearbyintf(x[(size_t)i * stride] * inv);
    return mx / 127.0f;
}

// Kernels to run here: AVX2 always, AVX-512 where the CPU has it.
// Kernels of a precision to run here: AVX2 always; VNNI / VDPBF16PS where
// the CPU has it; for bf16 the AVX-512 FMA kernel where AVX-512F runs.
static int kernels_of(moa_precision p, int *out) {
    int n = 0;
    out[n++] = MOA_QK_AVX2;
    if (moa_q_avx512(p)) out[n++] = MOA_QK_AVX512;
    if (p == MOA_PREC_BF16 && moa_q_bf16_fma512()) out[n++] = MOA_QK_AVX512F;
    return n;
}
static int kernel_list[3];
static int n_kernels(moa_precision p) { return kernels_of(p, kernel_list); }
static int kernel_at(int i) { return kernel_list[i]; }

typedef struct q8 {
    moa_packed pw;
    int8_t *pq;
    float *qs;
    int32_t *qsum;
} q8;

static void q8_make(q8 *q, const float *w, int n, int k, int kn) {
    memset(q, 0, sizeof *q);
    q->pq = aligned_alloc(64, moa_pack_i8_bytes(n, k) + 64);
    q->qs = malloc(moa_pack_i8_cols(n) * sizeof(float));
    q->qsum = malloc(moa_pack_i8_cols(n) * sizeof(int32_t));
    ASSERT_TRUE(q->pq && q->qs && q->qsum);
    moa_pack_i8(q->pq, q->qs, q->qsum, w, n, k, kn);
    q->pw = (moa_packed){.w = w, .n = n, .k = k, .kn = kn, .pq = q->pq, .qs = q->qs, .qsum = q->qsum};
}

static void q8_free(q8 *q) {
    free(q->pq);
    free(q->qs);
    free(q->qsum);
}

// int8: each kernel gives exactly float(Σ qa·qw) · sw · (sa · alpha) (+ C),
// and stays within the quantisation bound of the float32 product: odd sizes
// around the panel (32), micro-tile (12) and group-of-four (k) edges, both
// weight layouts, beta 0 over NaN and beta 1, alpha other than 1.
static void test_int8_gemm_exact_and_within_bound(void) {
    if (!moa_q_available()) return;
    static const int ms[] = {1, 2, 5, 12, 13, 29}, ns[] = {1, 17, 32, 45, 97},
                     ks[] = {1, 3, 31, 256, 300};
    double worst = 0;  // largest error / bound seen: the bound is not vacuous
    for (size_t ki = 0; ki < 5; ki++)
        for (size_t ni = 0; ni < 5; ni++)
            for (size_t mi = 0; mi < 6; mi++)
                for (int kn = 0; kn < 2; kn++) {
                    int m = ms[mi], n = ns[ni], k = ks[ki], lda = k + 3, ldc = n + 5;
                    int beta = (int)((mi + ni + ki + kn) % 2);
                    float alpha = beta ? 0.5f : 1.0f;
                    float *a = malloc(sizeof(float) * m * lda), *w = malloc(sizeof(float) * n * k);
                    float *c0 = malloc(sizeof(float) * m * ldc), *c = malloc(sizeof(float) * m * ldc);
                    int *qa = malloc(sizeof(int) * k), *qw = malloc(sizeof(int) * k);
                    ASSERT_TRUE(a && w && c0 && c && qa && qw);
                    fill(a, (size_t)m * lda);
                    fill(w, (size_t)n * k);
                    fill(c0, (size_t)m * ldc);
                    q8 q;
                    q8_make(&q, w, n, k, kn);
                    for (int kr = 0; kr < n_kernels(MOA_PREC_INT8); kr++) {
                        memcpy(c, c0, sizeof(float) * m * ldc);
                        if (!beta)
                            for (int i = 0; i < m; i++)
                                for (int j = 0; j < n; j++) c[i * ldc + j] = NAN;
                        moa_gemm_i8(m, a, lda, &q.pw, alpha, (float)beta, c, ldc, NULL, kernel_at(kr));
                        for (int i = 0; i < m; i++) {
                            float sa = quant(a + (size_t)i * lda, 1, k, qa);
                            for (int j = 0; j < ldc; j++) {
                                float got = c[i * ldc + j];
                                if (j >= n) {  // past n: untouched
                                    ASSERT_TRUE(got == c0[i * ldc + j]);
                                    continue;
                                }
                                float sw = quant(kn ? w + j : w + (size_t)j * k, kn ? (size_t)n : 1, k, qw);
                                ASSERT_TRUE(sw == q.qs[j]);
                                long long s = 0;
                                double ref = 0, absum = 0, bound = 0;
                                for (int kk = 0; kk < k; kk++) {
                                    float av = a[(size_t)i * lda + kk], wv = wat(w, n, k, kn, j, kk);
                                    s += (long long)qa[kk] * qw[kk];
                                    ref += (double)av * wv;
                                    absum += fabs((double)av * wv);
                                    bound += fabs(av) * sw / 2 + fabs(wv) * sa / 2 + sa * sw / 4;
                                }
                                float want = (float)s * sw * (sa * alpha);
                                if (beta) want += c0[i * ldc + j];
                                ASSERT_TRUE(got == want);
                                bound = fabs(alpha) * (bound + 1e-5 * absum) + 1e-30;
                                double err = fabs(got - (alpha * ref + (beta ? c0[i * ldc + j] : 0)));
                                if (err > bound + 1e-6 * fabs(c0[i * ldc + j]))
                                    MOA_TEST_FAIL("m %d n %d k %d kn %d: error %g above bound %g",
                                                  m, n, k, kn, err, bound);
                                if (!beta && err / bound > worst) worst = err / bound;
                            }
                        }
                    }
                    q8_free(&q);
                    free(a); free(w); free(c0); free(c); free(qa); free(qw);
                }
    printf("  int8: largest error %.2f of the bound\n", worst);
    ASSERT_TRUE(worst > 0.01);  // the products are really quantised
}

// bf16: each kernel gives exactly the chain VDPBF16PS computes (odd element
// of each pair first) and stays within the bf16 bound of float32.
static void test_bf16_gemm_exact_and_within_bound(void) {
    if (!moa_q_available()) return;
    static const int ms[] = {1, 3, 12, 13, 25}, ns[] = {1, 17, 32, 45, 97},
                     ks[] = {1, 2, 31, 256, 301};
    for (size_t ki = 0; ki < 5; ki++)
        for (size_t ni = 0; ni < 5; ni++)
            for (size_t mi = 0; mi < 5; mi++)
                for (int kn = 0; kn < 2; kn++) {
                    int m = ms[mi], n = ns[ni], k = ks[ki], lda = k + 1, ldc = n + 2;
                    int beta = (int)((mi + ni + kn) % 2);
                    float alpha = beta ? 1.0f : 0.25f;
                    float *a = malloc(sizeof(float) * m * lda), *w = malloc(sizeof(float) * n * k);
                    float *c0 = malloc(sizeof(float) * m * ldc), *c = malloc(sizeof(float) * m * ldc);
                    uint16_t *pb = aligned_alloc(64, moa_pack_bf16_bytes(n, k) + 64);
                    ASSERT_TRUE(a && w && c0 && c && pb);
                    fill(a, (size_t)m * lda);
                    fill(w, (size_t)n * k);
                    fill(c0, (size_t)m * ldc);
                    moa_pack_bf16(pb, w, n, k, kn);
                    moa_packed pw = {.w = w, .n = n, .k = k, .kn = kn, .pb = pb};
                    for (int kr = 0; kr < n_kernels(MOA_PREC_BF16); kr++) {
                        memcpy(c, c0, sizeof(float) * m * ldc);
                        moa_gemm_bf16(m, a, lda, &pw, alpha, (float)beta, c, ldc, NULL, kernel_at(kr));
                        for (int i = 0; i < m; i++)
                            for (int j = 0; j < n; j++) {
                                float acc = 0;
                                double ref = 0, absum = 0;
                                for (int kk = 0; kk < k; kk += 2) {
                                    float ae = bf16_to_f32(moa_f32_to_bf16(a[(size_t)i * lda + kk]));
                                    float we = bf16_to_f32(moa_f32_to_bf16(wat(w, n, k, kn, j, kk)));
                                    float ao = 0, wo = 0;
                                    if (kk + 1 < k) {
                                        ao = bf16_to_f32(moa_f32_to_bf16(a[(size_t)i * lda + kk + 1]));
                                        wo = bf16_to_f32(moa_f32_to_bf16(wat(w, n, k, kn, j, kk + 1)));
                                    }
                                    acc = fmaf(ao, wo, acc);
                                    acc = fmaf(ae, we, acc);
                                }
                                for (int kk = 0; kk < k; kk++) {
                                    double p = (double)a[(size_t)i * lda + kk] * wat(w, n, k, kn, j, kk);
                                    ref += p;
                                    absum += fabs(p);
                                }
                                float want = alpha != 1.0f ? acc * alpha : acc;
                                if (beta) want += c0[i * ldc + j];
                                float got = c[i * ldc + j];
                                ASSERT_TRUE(got == want);
                                double bound = alpha * (ldexp(1, -7) + (k + 2) * ldexp(1, -24)) * absum;
                                ASSERT_NEAR(got, alpha * ref + (beta ? c0[i * ldc + j] : 0),
                                            bound + 1e-6 * (1 + fabs(c0[i * ldc + j])));
                            }
                    }
                    free(a); free(w); free(c0); free(c); free(pb);
                }
}

// A row's result does not depend on the other rows of the call, bit for
// bit, for both precisions and every kernel.
static void test_quant_rows_independent(void) {
    if (!moa_q_available()) return;
    int m = 40, n = 70, k = 300;
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    float *all = malloc(sizeof(float) * m * n), *one = malloc(sizeof(float) * n);
    uint16_t *pb = aligned_alloc(64, moa_pack_bf16_bytes(n, k));
    ASSERT_TRUE(a && w && all && one && pb);
    fill(a, (size_t)m * k);
    fill(w, (size_t)n * k);
    q8 q;
    q8_make(&q, w, n, k, 0);
    moa_pack_bf16(pb, w, n, k, 0);
    moa_packed pwb = {.w = w, .n = n, .k = k, .pb = pb};
    for (int prec = 0; prec < 2; prec++) {
        moa_precision p = prec ? MOA_PREC_INT8 : MOA_PREC_BF16;
        for (int kr = 0; kr < n_kernels(p); kr++) {
            if (prec) moa_gemm_i8(m, a, k, &q.pw, 1.0f, 0.0f, all, n, NULL, kernel_at(kr));
            else moa_gemm_bf16(m, a, k, &pwb, 1.0f, 0.0f, all, n, NULL, kernel_at(kr));
            for (int i = 0; i < m; i++) {
                if (prec) moa_gemm_i8(1, a + (size_t)i * k, k, &q.pw, 1.0f, 0.0f, one, n, NULL, kernel_at(kr));
                else moa_gemm_bf16(1, a + (size_t)i * k, k, &pwb, 1.0f, 0.0f, one, n, NULL, kernel_at(kr));
                ASSERT_TRUE(memcmp(one, all + (size_t)i * n, sizeof(float) * n) == 0);
            }
        }
    }
    q8_free(&q);
    free(a); free(w); free(all); free(one); free(pb);
}

// Rows wider than one chunk of converted activations (k = 5000: 19 rows per
// chunk) and more rows than a chunk holds: the same as one row at a time.
static void test_quant_long_rows_chunked(void) {
    if (!moa_q_available()) return;
    int m = 45, n = 33, k = 5000;
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    float *all = malloc(sizeof(float) * m * n), *one = malloc(sizeof(float) * n);
    ASSERT_TRUE(a && w && all && one);
    fill(a, (size_t)m * k);
    fill(w, (size_t)n * k);
    q8 q;
    q8_make(&q, w, n, k, 0);
    for (int kr = 0; kr < n_kernels(MOA_PREC_INT8); kr++) {
        moa_gemm_i8(m, a, k, &q.pw, 1.0f, 0.0f, all, n, NULL, kernel_at(kr));
        for (int i = 0; i < m; i += 11) {
            moa_gemm_i8(1, a + (size_t)i * k, k, &q.pw, 1.0f, 0.0f, one, n, NULL, MOA_QK_AVX2);
            ASSERT_TRUE(memcmp(one, all + (size_t)i * n, sizeof(float) * n) == 0);
        }
    }
    q8_free(&q);
    free(a); free(w); free(all); free(one);
}

// The running log-sum-exp against the double formula: pieces of any size,
// a maximum that moves late, -inf entries, and a row of nothing but -inf.
static void test_lse_accumulator(void) {
    float x[300];
    for (int i = 0; i < 300; i++) x[i] = 20 * frand() - 5;
    x[7] = -INFINITY;
    x[250] = 40;  // the maximum arrives in the last pieces
    static const int piece[] = {1, 7, 32, 300};
    for (int pi = 0; pi < 4; pi++) {
        moa_lse_acc acc = moa_lse_start();
        for (int i = 0; i < 300; i += piece[pi])
            moa_lse_add(&acc, x + i, 300 - i < piece[pi] ? 300 - i : piece[pi]);
        double mx = 40, s = 0;
        for (int i = 0; i < 300; i++) s += exp((double)x[i] - mx);
        double want = mx + log(s);
        ASSERT_NEAR(moa_lse_value(&acc), want, 2e-6 * fabs(want));
    }
    float ninf[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    moa_lse_acc acc = moa_lse_start();
    moa_lse_add(&acc, ninf, 5);
    ASSERT_TRUE(isinf(moa_lse_value(&acc)) && moa_lse_value(&acc) < 0);
}

// The log-sum-exp each product folds in equals the separate pass over the
// rows it wrote (f32 packed where AVX-512 runs, bf16, int8; every kernel),
// with logits of the output projection's size (n = 8000 > one panel row).
static void test_lse_fused_matches_separate_pass(void) {
    if (!moa_q_available()) return;
    int m = 14, n = 8000, k = 64;
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    float *c = malloc(sizeof(float) * m * n), lse[14], ref[14];
    uint16_t *pb = aligned_alloc(64, moa_pack_bf16_bytes(n, k));
    float *pf = moa_pack_available() ? aligned_alloc(64, sizeof(float) * moa_pack_floats(n, k)) : NULL;
    ASSERT_TRUE(a && w && c && pb);
    fill(a, (size_t)m * k);
    for (int i = 0; i < n * k; i++) w[i] = 3 * frand();
    q8 q;
    q8_make(&q, w, n, k, 0);
    moa_pack_bf16(pb, w, n, k, 0);
    moa_packed pwb = {.w = w, .n = n, .k = k, .pb = pb};
    int runs = 0;
    for (int prec = 0; prec < 3; prec++) {
        int nk = prec == 0 ? (pf ? 1 : 0) : n_kernels(prec == 1 ? MOA_PREC_BF16 : MOA_PREC_INT8);
        for (int kr = 0; kr < nk; kr++) {
            if (prec == 0) {
                moa_pack_weights(pf, w, n, k);
                moa_packed pw = {.w = w, .p = pf, .n = n, .k = k};
                moa_gemm_packed_lse(m, a, k, &pw, c, n, lse);
            } else if (prec == 1) {
                moa_gemm_bf16(m, a, k, &pwb, 1.0f, 0.0f, c, n, lse, kernel_at(kr));
            } else {
                moa_gemm_i8(m, a, k, &q.pw, 1.0f, 0.0f, c, n, lse, kernel_at(kr));
            }
            moa_logsumexp_rows(c, m, n, ref);
            for (int i = 0; i < m; i++) ASSERT_NEAR(lse[i], ref[i], 1e-6 * (1 + fabs(ref[i])));
            runs++;
        }
    }
    ASSERT_TRUE(runs >= 2);
    q8_free(&q);
    free(a); free(w); free(c); free(pb); free(pf);
}

// Products over chosen rows: f32 rows within float rounding of the double
// loop; bf16 rows within the bf16 bound; int8 rows bit-identical to the int8
// panel kernel on the same rows (the same exact integer sums, same scaling);
// each value independent of which other ids and rows share the call; the
// log-sum-exp as the separate pass over what was written.
static void test_gemm_rows(void) {
    if (!moa_q_available()) return;
    int n = 300, k = 70, m = 5;
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    ASSERT_TRUE(a && w);
    fill(a, (size_t)m * k);
    fill(w, (size_t)n * k);
    int ldb = moa_rows_ld(MOA_PREC_BF16, k), ldq = moa_rows_ld(MOA_PREC_INT8, k);
    ASSERT_TRUE(ldb % 16 == 0 && ldb >= k && ldq % 64 == 0 && ldq >= k);
    uint16_t *rb = malloc(sizeof(uint16_t) * n * ldb);
    int8_t *rq = malloc((size_t)n * ldq);
    float *qs = malloc(sizeof(float) * n);
    int32_t *qsum = malloc(sizeof(int32_t) * n);
    ASSERT_TRUE(rb && rq && qs && qsum);
    moa_rows_bf16(rb, w, n, k);
    moa_rows_i8(rq, qs, qsum, w, n, k);
    moa_rows rows[3] = {{.n = n, .k = k, .ld = k, .f = w},
                        {.n = n, .k = k, .ld = ldb, .b = rb},
                        {.n = n, .k = k, .ld = ldq, .q = rq, .qs = qs, .qsum = qsum}};
    int ids[37];
    for (int j = 0; j < 37; j++) ids[j] = (j * 53 + 11) % n;  // unsorted, 37: a short last group
    float c[5 * 37], one[37], lse[5], ref[5];
    q8 q;
    q8_make(&q, w, n, k, 0);
    float *full = malloc(sizeof(float) * m * n);
    ASSERT_TRUE(full);
    moa_gemm_i8(m, a, k, &q.pw, 1.0f, 0.0f, full, n, NULL, MOA_QK_AUTO);
    for (int p = 0; p < 3; p++) {
        moa_gemm_rows(m, a, k, &rows[p], ids, 37, c, 37, lse);
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < 37; j++) {
                double ref_v = 0, absum = 0;
                for (int kk = 0; kk < k; kk++) {
                    double pr = (double)a[i * k + kk] * w[(size_t)ids[j] * k + kk];
                    ref_v += pr;
                    absum += fabs(pr);
                }
                float got = c[i * 37 + j];
                if (p == 0) ASSERT_NEAR(got, ref_v, 1e-5 * (1 + absum));
                if (p == 1) ASSERT_NEAR(got, ref_v, (ldexp(1, -7) + (k + 2) * ldexp(1, -24)) * absum);
                if (p == 2) ASSERT_TRUE(got == full[(size_t)i * n + ids[j]]);
            }
            // alone, and with the ids in another grouping: the same bits
            moa_gemm_rows(1, a + i * k, k, &rows[p], ids + 3, 34, one, 34, NULL);
            ASSERT_TRUE(memcmp(one, c + i * 37 + 3, sizeof(float) * 34) == 0);
        }
        moa_logsumexp_rows(c, m, 37, ref);
        for (int i = 0; i < m; i++) ASSERT_NEAR(lse[i], ref[i], 1e-6 * (1 + fabs(ref[i])));
    }
    q8_free(&q);
    free(a); free(w); free(rb); free(rq); free(qs); free(qsum); free(full);
}

// Activations converted once (moa_qin) and read through row indices give
// the same bits as converting them in each product, for both precisions,
// alpha and beta 1 included.
static void test_qin_matches_direct(void) {
    if (!moa_q_available()) return;
    int n_rows = 30, k = 70, n = 45, m = 17;
    float *x = malloc(sizeof(float) * n_rows * k), *w = malloc(sizeof(float) * n * k);
    float *a = malloc(sizeof(float) * m * k), *c1 = malloc(sizeof(float) * m * n);
    float *c2 = malloc(sizeof(float) * m * n);
    uint16_t *pb = aligned_alloc(64, moa_pack_bf16_bytes(n, k) + 64);
    ASSERT_TRUE(x && w && a && c1 && c2 && pb);
    fill(x, (size_t)n_rows * k);
    fill(w, (size_t)n * k);
    q8 q;
    q8_make(&q, w, n, k, 0);
    moa_pack_bf16(pb, w, n, k, 0);
    moa_packed pwb = {.w = w, .n = n, .k = k, .pb = pb};
    int rows[17];
    for (int i = 0; i < m; i++) rows[i] = (i * 7 + 3) % n_rows;  // gathered, repeated
    for (int i = 0; i < m; i++) memcpy(a + (size_t)i * k, x + (size_t)rows[i] * k, sizeof(float) * k);
    for (int p = MOA_PREC_BF16; p <= MOA_PREC_INT8; p++) {
        void *buf = aligned_alloc(64, (moa_qin_bytes((moa_precision)p, n_rows, k) + 63) / 64 * 64);
        ASSERT_TRUE(buf);
        moa_qin in;
        moa_qin_make(&in, (moa_precision)p, n_rows, x, k, k, buf);
        for (int beta = 0; beta < 2; beta++) {
            fill(c1, (size_t)m * n);
            memcpy(c2, c1, sizeof(float) * m * n);
            const moa_packed *pw = p == MOA_PREC_INT8 ? &q.pw : &pwb;
            moa_gemm_qin(&in, rows, m, pw, 0.125f, (float)beta, c1, n);
            if (p == MOA_PREC_INT8) moa_gemm_i8(m, a, k, pw, 0.125f, (float)beta, c2, n, NULL, MOA_QK_AUTO);
            else moa_gemm_bf16(m, a, k, pw, 0.125f, (float)beta, c2, n, NULL, MOA_QK_AUTO);
            ASSERT_TRUE(memcmp(c1, c2, sizeof(float) * m * n) == 0);
        }
        if (p == MOA_PREC_INT8) {  // without indices: row i is prepared row i
            moa_gemm_qin(&in, NULL, m, &q.pw, 1.0f, 0.0f, c1, n);
            moa_gemm_i8(m, x, k, &q.pw, 1.0f, 0.0f, c2, n, NULL, MOA_QK_AUTO);
            ASSERT_TRUE(memcmp(c1, c2, sizeof(float) * m * n) == 0);
        }
        free(buf);
    }
    q8_free(&q);
    free(x); free(w); free(a); free(c1); free(c2); free(pb);
}

// bfloat16 rounding: nearest, ties to even, exact values kept.
static void test_bf16_rounding(void) {
    ASSERT_EQ_INT(moa_f32_to_bf16(1.0f), 0x3f80);
    ASSERT_EQ_INT(moa_f32_to_bf16(-2.0f), 0xc000);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1)
    ASSERT_EQ_INT(moa_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6)
    ASSERT_EQ_INT(moa_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    ASSERT_EQ_INT(moa_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above half: up
    ASSERT_TRUE(bf16_to_f32(moa_f32_to_bf16(3.140625f)) == 3.140625f);
}

const moa_test_case moa_tests_quant[] = {
    {"int8_gemm_exact_and_within_bound", test_int8_gemm_exact_and_within_bound},
    {"bf16_gemm_exact_and_within_bound", test_bf16_gemm_exact_and_within_bound},
    {"quant_rows_independent", test_quant_rows_independent},
    {"quant_long_rows_chunked", test_quant_long_rows_chunked},
    {"lse_accumulator", test_lse_accumulator},
    {"lse_fused_matches_separate_pass", test_lse_fused_matches_separate_pass},
    {"gemm_rows", test_gemm_rows},
    {"qin_matches_direct", test_qin_matches_direct},
    {"bf16_rounding", test_bf16_rounding},
    {NULL, NULL},
};
