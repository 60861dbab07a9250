// moa_packed.c — C = A·Wᵀ (+ C) for weight matrices packed once at load,
// with an AVX-512 kernel chosen at run time.
//
// Why: the decoder's big products (output projection, FFN, K/V) multiply a
// few hundred activation rows by a fixed weight matrix. OpenBLAS repacks the
// weights on every call (~12% of decode time), and with the AVX2 kernels it
// is told to use on CPUs it misdetects (OPENBLAS_CORETYPE=Haswell) it leaves
// half of an AVX-512 core idle. Here the weights are laid out once in panels
// of 32 output columns, k-major (panel p, step kk: the 32 floats
// W[32p .. 32p+31][kk], zero past n), so the kernel streams each panel
// straight from memory (prefetching the next while it starts on one) and
// keeps it in L1 while every row block uses it.
//
// Numerics: every element of C is one FMA chain over each block of 256 k in
// increasing order, added to C's old value (beta = 1) or the previous
// blocks' sum at the block's end, so a row's result does not depend on how
// many rows share the call or where the row sits in it — the batch never
// changes a result. The order differs from OpenBLAS's, so the
// two paths agree to float rounding (tests: within 1e-5 relative).
//
// The path is used only when the CPU and OS support AVX-512F and the
// environment does not say MOA_AVX512=0; otherwise moa_pack_available()
// is 0, nothing is packed and every product goes to OpenBLAS as before.
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "moa_impl.h"
#include "moa_lse512.h"

// The AVX-512 functions carry the target themselves: the rest of the build
// stays x86-64-v3 (or whatever ARCH says), and they run only after cpuid.
#define AVX512 __attribute__((target("avx512f")))
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 12")
#endif

#define NR 32   // output columns per panel: two 16-float vectors
#define MR 12   // rows per micro-tile: 24 accumulators + 2 panel vectors
#define KC 256  // k per block: a panel block (32 KB) stays in L1
#define MC 192  // rows per chunk: its packed block (192 KB) stays in L2

static _Atomic int pack_state = -1;  // -1 unknown, 0 off, 1 on (set once, idempotent)

int moa_pack_available(void) {
    if (pack_state < 0) {
        const char *env = getenv("MOA_AVX512");
        int off = env && (!strcmp(env, "0") || !strcmp(env, "off") || !strcmp(env, "no"));
        __builtin_cpu_init();
        pack_state = !off && __builtin_cpu_supports("avx512f");
    }
    return pack_state;
}

const char *moa_gemm_path(void) {
    return moa_pack_available() ? "own AVX-512 kernel on weights packed at load (all but the router)"
                                : "OpenBLAS";
}

void moa_gemm_w(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                float *c, int ldc) {
    if (w->pq) moa_gemm_i8(m, a, lda, w, alpha, beta, c, ldc, NULL, MOA_QK_AUTO);
    else if (w->pb) moa_gemm_bf16(m, a, lda, w, alpha, beta, c, ldc, NULL, MOA_QK_AUTO);
    else if (w->p && moa_get_num_threads() == 1) moa_gemm_packed(m, a, lda, w, alpha, beta, c, ldc);
    else if (w->kn) moa_gemm(0, 0, m, w->n, w->k, alpha, a, lda, w->w, w->n, beta, c, ldc);
    else moa_gemm(0, 1, m, w->n, w->k, alpha, a, lda, w->w, w->k, beta, c, ldc);
}

void moa_gemm_w_lse(int m, const float *a, int lda, const moa_packed *w, float *c, int ldc,
                    float *lse) {
    if (w->pq) {
        moa_gemm_i8(m, a, lda, w, 1.0f, 0.0f, c, ldc, lse, MOA_QK_AUTO);
    } else if (w->pb) {
        moa_gemm_bf16(m, a, lda, w, 1.0f, 0.0f, c, ldc, lse, MOA_QK_AUTO);
    } else if (w->p && moa_get_num_threads() == 1) {
        moa_gemm_packed_lse(m, a, lda, w, c, ldc, lse);
    } else {
        moa_gemm_w(m, a, lda, w, 1.0f, 0.0f, c, ldc);
        for (int i = 0; i < m; i++) moa_logsumexp_rows(c + (size_t)i * ldc, 1, w->n, lse + i);
    }
}

size_t moa_pack_floats(int n, int k) { return (size_t)((n + NR - 1) / NR) * NR * (size_t)k; }

void moa_pack_weights(float *dst, const float *w, int n, int k) {
    int np = (n + NR - 1) / NR;
    for (int p = 0; p < np; p++) {
        float *panel = dst + (size_t)p * NR * k;
        for (int j = 0; j < NR; j++) {
            int row = p * NR + j;
            const float *src = row < n ? w + (size_t)row * k : NULL;
            for (int kk = 0; kk < k; kk++) panel[(size_t)kk * NR + j] = src ? src[kk] : 0.0f;
        }
    }
}

void moa_pack_weights_kn(float *dst, const float *b, int k, int n) {
    int np = (n + NR - 1) / NR;
    for (int p = 0; p < np; p++) {
        float *panel = dst + (size_t)p * NR * k;
        int cols = n - p * NR < NR ? n - p * NR : NR;
        for (int kk = 0; kk < k; kk++) {
            memcpy(panel + (size_t)kk * NR, b + (size_t)kk * n + p * NR, (size_t)cols * sizeof *b);
            memset(panel + (size_t)kk * NR + cols, 0, (size_t)(NR - cols) * sizeof *b);
        }
    }
}

// One micro-tile: rows [0, mr) of the packed A block (a[kk·MR + r]) times
// one panel block (b[kk·NR + j]) into C, columns masked by m0/m1.
static inline __attribute__((always_inline)) AVX512 void tile(int mr, int kc, const float *a,
                                                       const float *b, float *c, int ldc,
                                                       float alpha, int load_c, __mmask16 m0,
                                                       __mmask16 m1, const float *pf,
                                                       moa_lse16 *ls) {
    __m512 c0[MR], c1[MR];
UNROLL
    for (int r = 0; r < mr; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
    }
    for (int kk = 0; kk < kc; kk++) {
        __m512 b0 = _mm512_load_ps(b + (size_t)kk * NR);
        __m512 b1 = _mm512_load_ps(b + (size_t)kk * NR + 16);
        const float *ak = a + (size_t)kk * MR;
        if (pf) {
            _mm_prefetch((const char *)(pf + (size_t)kk * NR), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + (size_t)kk * NR + 16), _MM_HINT_T0);
        }
UNROLL
        for (int r = 0; r < mr; r++) {
            __m512 av = _mm512_set1_ps(ak[r]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    if (alpha != 1.0f) {
        __m512 al = _mm512_set1_ps(alpha);
UNROLL
        for (int r = 0; r < mr; r++) {
            c0[r] = _mm512_mul_ps(c0[r], al);
            c1[r] = _mm512_mul_ps(c1[r], al);
        }
    }
    // C's old value is added once at the end (as BLAS does), not used as
    // the start of the chain: a large residual would round every step.
    if (load_c) {
UNROLL
        for (int r = 0; r < mr; r++) {
            c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, c + (size_t)r * ldc));
            c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, c + (size_t)r * ldc + 16));
        }
    }
UNROLL
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, c0[r]);
        _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, c1[r]);
    }
    if (ls)
UNROLL
        for (int r = 0; r < mr; r++) lse16_add(&ls[r], c0[r], c1[r], m0, m1);
}

// mr as a constant in each case, so the tile's loops unroll into registers.
static AVX512 void tile_any(int mr, int kc, const float *a, const float *b, float *c, int ldc,
                     float alpha, int load_c, __mmask16 m0, __mmask16 m1, const float *pf,
                     moa_lse16 *ls) {
    switch (mr) {
#define T(n) case n: tile(n, kc, a, b, c, ldc, alpha, load_c, m0, m1, pf, ls); break;
        T(1) T(2) T(3) T(4) T(5) T(6) T(7) T(8) T(9) T(10) T(11) T(12)
#undef T
    }
}

// ls (NULL: none): each row's log-sum-exp, folded in panel by panel as the
// last k block writes its values.
static AVX512 void gemm_chunk(int m, const float *a, int lda, const moa_packed *w, float alpha,
                       int beta1, float *c, int ldc, float *abuf, moa_lse16 *ls) {
    int n = w->n, k = w->k, np = (n + NR - 1) / NR;
    for (int k0 = 0; k0 < k; k0 += KC) {
        int kc = k - k0 < KC ? k - k0 : KC;
        // A's rows for this k block, in MR-row blocks, k-major, zero-padded
        for (int i0 = 0; i0 < m; i0 += MR) {
            float *dst = abuf + (size_t)(i0 / MR) * MR * kc;
            int mr = m - i0 < MR ? m - i0 : MR;
            for (int kk = 0; kk < kc; kk++)
                for (int r = 0; r < MR; r++)
                    dst[kk * MR + r] = r < mr ? a[(size_t)(i0 + r) * lda + k0 + kk] : 0.0f;
        }
        int load_c = beta1 || k0 > 0;
        for (int p = 0; p < np; p++) {
            const float *b = w->p + (size_t)p * NR * k + (size_t)k0 * NR;
            int cols = n - p * NR < NR ? n - p * NR : NR;
            __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
            __mmask16 m1 = (__mmask16)(cols <= 16 ? 0 : cols >= 32 ? 0xFFFF : (1u << (cols - 16)) - 1);
            // The next panel block (or the first of the next k block) is
            // prefetched during this panel's first row tile: at a few dozen
            // rows the kernel otherwise waits on L3 at the start of each
            // panel (+10-13% at 64 rows; a few % at 4).
            const float *next = p + 1 < np ? b + (size_t)NR * k
                                : k0 + KC < k ? w->p + (size_t)(k0 + KC) * NR : NULL;
            for (int i0 = 0; i0 < m; i0 += MR) {
                int mr = m - i0 < MR ? m - i0 : MR;
                tile_any(mr, kc, abuf + (size_t)(i0 / MR) * MR * kc, b,
                         c + (size_t)i0 * ldc + p * NR, ldc, alpha, load_c, m0, m1,
                         i0 == 0 ? next : NULL, ls && k0 + KC >= k ? ls + i0 : NULL);
            }
        }
    }
}

static AVX512 void gemm_packed(int m, const float *a, int lda, const moa_packed *w, float alpha,
                               float beta, float *c, int ldc, float *lse) {
    MOA_ASSERT(w->p && (beta == 0.0f || beta == 1.0f));
    if (m <= 0 || w->n <= 0) return;
    if (w->k == 0) {
        for (int i = 0; i < m; i++) {
            if (beta == 0.0f) memset(c + (size_t)i * ldc, 0, (size_t)w->n * sizeof *c);
            if (lse) moa_logsumexp_rows(c + (size_t)i * ldc, 1, w->n, lse + i);
        }
        return;
    }
    moa_count_flops(2ull * m * w->n * w->k);
    float abuf[MC * KC] __attribute__((aligned(64)));
    moa_lse16 ls[MC];
    for (int i0 = 0; i0 < m; i0 += MC) {
        int mc = m - i0 < MC ? m - i0 : MC;
        for (int i = 0; lse && i < mc; i++) lse16_start(&ls[i]);
        gemm_chunk(mc, a + (size_t)i0 * lda, lda, w, alpha, beta != 0.0f, c + (size_t)i0 * ldc,
                   ldc, abuf, lse ? ls : NULL);
        for (int i = 0; lse && i < mc; i++) lse[i0 + i] = lse16_value(&ls[i]);
    }
}

void moa_gemm_packed(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                     float *c, int ldc) {
    gemm_packed(m, a, lda, w, alpha, beta, c, ldc, NULL);
}

void moa_gemm_packed_lse(int m, const float *a, int lda, const moa_packed *w, float *c, int ldc,
                         float *lse) {
    gemm_packed(m, a, lda, w, 1.0f, 0.0f, c, ldc, lse);
}
