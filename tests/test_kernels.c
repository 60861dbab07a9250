// test_kernels.c — the numeric building blocks against plain double loops.
#include "moa_impl.h"
#include "moa_test.h"

static unsigned rng_state = 12345;
static float frand(void) {
    rng_state = rng_state * 1103515245u + 12345u;
    return ((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}
static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = frand();
}

// moa_gemm (OpenBLAS) equals the naive triple loop for every transpose
// combination, odd sizes, alpha/beta.
static void test_gemm_matches_naive(void) {
    int m = 7, n = 13, k = 29;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            float a[7 * 29], b[29 * 13], c1[7 * 13], c2[7 * 13];
            fill(a, sizeof a / sizeof *a);
            fill(b, sizeof b / sizeof *b);
            fill(c1, sizeof c1 / sizeof *c1);
            memcpy(c2, c1, sizeof c1);
            int lda = ta ? m : k, ldb = tb ? k : n;
            moa_gemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c1, n);
            moa_gemm_naive(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c2, n);
            for (int i = 0; i < m * n; i++) ASSERT_NEAR(c1[i], c2[i], 1e-5);
        }
}

static void test_gemm_beta_zero_ignores_garbage(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4];
    for (int i = 0; i < 4; i++) c[i] = NAN;
    moa_gemm(0, 0, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
    ASSERT_NEAR(c[0], 1, 0); ASSERT_NEAR(c[1], 2, 0);
    ASSERT_NEAR(c[2], 3, 0); ASSERT_NEAR(c[3], 4, 0);
}

// C = A·Wᵀ + beta·C with W packed (the engine's AVX-512 path) equals the
// naive loop: rows 1..29 (every micro-tile remainder, more than one tile),
// columns not a multiple of the 32-wide panel, k across the 256 block, row
// strides wider than the matrix, beta 0 over NaN garbage and beta 1. Skipped
// (passes trivially, with a note) where the CPU has no AVX-512.
static void test_gemm_packed_matches_naive(void) {
    if (!moa_pack_available()) {
        printf("  (no AVX-512 here or MOA_AVX512=0: the packed path is not used)\n");
        return;
    }
    static const int ms[] = {1, 5, 12, 13, 29}, ns[] = {1, 17, 32, 45, 64, 97},
                     ks[] = {1, 31, 256, 300, 600};
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++)
                for (int beta = 0; beta < 2; beta++) {
                    int m = ms[mi], n = ns[ni], k = ks[ki], lda = k + 3, ldc = n + 5;
                    float *a = malloc(sizeof(float) * m * lda);
                    float *w = malloc(sizeof(float) * n * k);
                    float *p = aligned_alloc(64, sizeof(float) * moa_pack_floats(n, k));
                    float *c1 = malloc(sizeof(float) * m * ldc);
                    float *c2 = malloc(sizeof(float) * m * ldc);
                    ASSERT_TRUE(a && w && p && c1 && c2);
                    fill(a, (size_t)m * lda);
                    fill(w, (size_t)n * k);
                    fill(c2, (size_t)m * ldc);
                    memcpy(c1, c2, sizeof(float) * m * ldc);
                    if (!beta)
                        for (int i = 0; i < m; i++)
                            for (int j = 0; j < n; j++) c1[i * ldc + j] = NAN;
                    moa_pack_weights(p, w, n, k);
                    moa_packed pw = {.w = w, .p = p, .n = n, .k = k};
                    moa_gemm_packed(m, a, lda, &pw, 1.0f, (float)beta, c1, ldc);
                    moa_gemm_naive(0, 1, m, n, k, 1.0f, a, lda, w, k, (float)beta, c2, ldc);
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < ldc; j++) {
                            float ref = c2[i * ldc + j];  // past n: untouched
                            ASSERT_NEAR(c1[i * ldc + j], ref, 1e-5 * (1 + sqrt((double)k)));
                        }
                    free(a); free(w); free(p); free(c1); free(c2);
                }
}

// A row's packed product does not depend on the other rows of the call
// (bit for bit): what makes batching unable to change a translation.
static void test_gemm_packed_rows_independent(void) {
    if (!moa_pack_available()) return;
    int m = 40, n = 70, k = 300;
    float *a = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    float *p = aligned_alloc(64, sizeof(float) * moa_pack_floats(n, k));
    float *all = malloc(sizeof(float) * m * n), *one = malloc(sizeof(float) * n);
    ASSERT_TRUE(a && w && p && all && one);
    fill(a, (size_t)m * k);
    fill(w, (size_t)n * k);
    moa_pack_weights(p, w, n, k);
    moa_packed pw = {.w = w, .p = p, .n = n, .k = k};
    moa_gemm_packed(m, a, k, &pw, 1.0f, 0.0f, all, n);
    for (int i = 0; i < m; i++) {
        moa_gemm_packed(1, a + (size_t)i * k, k, &pw, 1.0f, 0.0f, one, n);
        ASSERT_TRUE(memcmp(one, all + (size_t)i * n, sizeof(float) * n) == 0);
    }
    free(a); free(w); free(p); free(all); free(one);
}

// moa_attend against the double loop, for 1-3 queries, cache lengths
// around the 4-position blocks, and head sizes through every path (h a
// multiple of 32, of 8 only, neither); a query's result is bit-identical
// whether it is attended alone or with others.
static void test_attend_matches_naive(void) {
    const int hs[] = {8, 12, 40, 64};
    for (int hi = 0; hi < 4; hi++)
        for (int nq = 1; nq <= 3; nq++)
            for (int m = 1; m <= 11; m++) {
                int h = hs[hi];
                float q[3 * 64], K[11 * 64], V[11 * 64], sc[3 * 11], out[3 * 64];
                float sc1[11], out1[64];
                fill(q, (size_t)nq * h);
                fill(K, (size_t)m * h);
                fill(V, (size_t)m * h);
                moa_attend(q, nq, K, V, m, h, sc, out);
                for (int j = 0; j < nq; j++) {
                    double s[11], mx = -INFINITY, z = 0;
                    for (int p = 0; p < m; p++) {
                        s[p] = 0;
                        for (int c = 0; c < h; c++) s[p] += (double)q[j * h + c] * K[p * h + c];
                        if (s[p] > mx) mx = s[p];
                    }
                    for (int p = 0; p < m; p++) z += exp(s[p] - mx);
                    for (int c = 0; c < h; c++) {
                        double o = 0;
                        for (int p = 0; p < m; p++) o += exp(s[p] - mx) / z * V[p * h + c];
                        ASSERT_NEAR(out[j * h + c], o, 1e-5 * (1 + fabs(o)));
                    }
                    moa_attend(q + j * h, 1, K, V, m, h, sc1, out1);
                    ASSERT_TRUE(memcmp(out1, out + j * h, sizeof(float) * h) == 0);
                }
            }
}

static void test_layernorm(void) {
    int n = 3, d = 16;
    float x[48], y[48], w[16], b[16];
    fill(x, 48); fill(w, 16); fill(b, 16);
    moa_layernorm(y, x, n, d, w, b, 1e-5f);
    for (int i = 0; i < n; i++) {
        double mean = 0, var = 0;
        for (int j = 0; j < d; j++) mean += x[i * d + j];
        mean /= d;
        for (int j = 0; j < d; j++) var += (x[i * d + j] - mean) * (x[i * d + j] - mean);
        var /= d;
        for (int j = 0; j < d; j++) {
            double ref = (x[i * d + j] - mean) / sqrt(var + 1e-5) * w[j] + b[j];
            ASSERT_NEAR(y[i * d + j], ref, 1e-5);
        }
    }
    // in place gives the same
    moa_layernorm(x, x, n, d, w, b, 1e-5f);
    for (int i = 0; i < 48; i++) ASSERT_NEAR(x[i], y[i], 0);
}

static void test_log_softmax(void) {
    float x[2 * 5] = {1, 2, 3, 4, 5, -1000, 0, 0, -INFINITY, 1000};
    float ref[10];
    for (int i = 0; i < 2; i++) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < 5; j++) if (x[i * 5 + j] > mx) mx = x[i * 5 + j];
        for (int j = 0; j < 5; j++) s += exp(x[i * 5 + j] - mx);
        for (int j = 0; j < 5; j++) ref[i * 5 + j] = (float)(x[i * 5 + j] - mx - log(s));
    }
    moa_log_softmax(x, 2, 5);
    for (int i = 0; i < 10; i++) {
        if (isinf(ref[i])) ASSERT_TRUE(isinf(x[i]) && x[i] < 0);
        else ASSERT_NEAR(x[i], ref[i], 1e-5);
    }
}

static void test_softmax_all_masked(void) {
    float x[3] = {-INFINITY, -INFINITY, -INFINITY};
    moa_softmax(x, 3);
    for (int i = 0; i < 3; i++) ASSERT_NEAR(x[i], 0, 0);
    float y[3] = {0, 0, 0};
    moa_softmax(y, 3);
    for (int i = 0; i < 3; i++) ASSERT_NEAR(y[i], 1.0 / 3, 1e-7);
}

static void test_gelu_relu(void) {
    float x[4] = {-2, -0.5f, 1, 3};
    float g[4];
    memcpy(g, x, sizeof x);
    moa_gelu(g, 4);
    for (int i = 0; i < 4; i++)
        ASSERT_NEAR(g[i], 0.5 * x[i] * (1 + erf(x[i] / sqrt(2.0))), 1e-6);
    ASSERT_NEAR(g[2], 0.8413447460685429, 1e-6);  // GELU(1), exact erf form
    moa_relu(x, 4);
    ASSERT_NEAR(x[0], 0, 0); ASSERT_NEAR(x[1], 0, 0);
    ASSERT_NEAR(x[2], 1, 0); ASSERT_NEAR(x[3], 3, 0);
}

static void test_threads_setting(void) {
    moa_set_num_threads(1);
    ASSERT_EQ_INT(moa_get_num_threads(), 1);
    moa_set_num_threads(2);
    ASSERT_EQ_INT(moa_get_num_threads(), 2);
    ASSERT_TRUE(strlen(moa_blas_corename()) > 0);
}

const moa_test_case moa_tests_kernels[] = {
    {"gemm_matches_naive", test_gemm_matches_naive},
    {"gemm_beta_zero_ignores_garbage", test_gemm_beta_zero_ignores_garbage},
    {"gemm_packed_matches_naive", test_gemm_packed_matches_naive},
    {"gemm_packed_rows_independent", test_gemm_packed_rows_independent},
    {"layernorm", test_layernorm},
    {"log_softmax", test_log_softmax},
    {"softmax_all_masked", test_softmax_all_masked},
    {"attend_matches_naive", test_attend_matches_naive},
    {"gelu_relu", test_gelu_relu},
    {"threads_setting", test_threads_setting},
    {NULL, NULL},
};
