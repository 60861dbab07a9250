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
    {"layernorm", test_layernorm},
    {"log_softmax", test_log_softmax},
    {"softmax_all_masked", test_softmax_all_masked},
    {"gelu_relu", test_gelu_relu},
    {"threads_setting", test_threads_setting},
    {NULL, NULL},
};
