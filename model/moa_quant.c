// moa_quant.c — bfloat16 and int8 weights: conversion at load, the products
// (AVX512_BF16 / AVX512_VNNI kernels chosen at run time, AVX2 kernels
// otherwise), and products over chosen weight rows for the vocabulary
// shortlist (moa_gemm_rows).
//
// Why: the float32 kernel (moa_packed.c) already runs the model's products
// near what the FMA units can do, so going faster means cheaper arithmetic.
// VDPBF16PS does 32 multiply-adds per instruction where an FMA does 16, and
// VPDPBUSD 64; the weights take a half or a quarter of the memory and cache.
//
// Numerics (docs/moa-spec.md §9):
// - bf16: weights rounded to bfloat16 once at load, a product's activations
//   when it runs (nearest, ties to even). Each output is one float32 chain
//   over k in pairs, the odd element of each pair added first: what
//   VDPBF16PS does (it also flushes denormals), so the AVX2 kernel, which
//   does the same with FMAs, gives the same bits (unit-tested).
// - int8: row j of W is scaled by sw_j = max_k |w_jk| / 127 and rounded,
//   each activation row i by sa_i at run time, the same way. Σ_k qa·qw is
//   exact in int32 (|qa|, |qw| <= 127 and k <= 16384), so VPDPBUSD and AVX2
//   agree bit for bit; then float(Σ) · sw_j · (sa_i · alpha), plus C's old
//   value when beta is 1. VPDPBUSD multiplies unsigned by signed bytes: the
//   activations go in as qa + 128 and 128 · Σ_k qw_jk (qsum, made at load)
//   is taken off again.
// - A row's result depends only on that row's inputs (no sum across rows),
//   so batching cannot change a translation.
//
// The AVX2 functions carry their target: the file builds for any ARCH, and
// the loader refuses bf16/int8 on a CPU without AVX2 (moa_q_available).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moa_impl.h"
#include "moa_lse512.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vnni")))
#define BF16 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 12")
#endif

#define NR 32               // output columns per panel (as moa_packed.c)
#define MR 12               // rows per AVX-512 micro-tile: 24 accumulators
#define QBUF (96 * 1024)    // bytes of converted activations per chunk (on the stack)
#define QROWS 256           // activation rows per chunk at most
#ifndef QL1
#define QL1 (12 * 1024)     // bytes of activations a chunk aims at (chunk_rows)
#endif
#define GROUP 8             // moa_gemm_rows: chosen rows per pass
#define BLOCK 256           // moa_gemm_rows: ids per log-sum-exp update

static int pad_to(int k, int g) { return (k + g - 1) / g * g; }
static int min_i(int a, int b) { return a < b ? a : b; }

// --- which kernel ---------------------------------------------------------------------

static _Atomic int q_state = -1;  // bit 0: AVX2+FMA, 1: AVX512_VNNI, 2: AVX512_BF16, 3: AVX-512F+BW

static int q_isa(void) {
    int s = q_state;
    if (s < 0) {
        const char *env = getenv("MOA_AVX512");
        int off = env && (!strcmp(env, "0") || !strcmp(env, "off") || !strcmp(env, "no"));
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        int z = avx2 && !off && __builtin_cpu_supports("avx512f") &&
                __builtin_cpu_supports("avx512bw");
        s = avx2 | (z && __builtin_cpu_supports("avx512vnni")) << 1 |
            (z && __builtin_cpu_supports("avx512bf16")) << 2 | z << 3;
        q_state = s;
    }
    return s;
}

int moa_q_available(void) { return q_isa() & 1; }

int moa_q_avx512(moa_precision prec) {
    if (prec == MOA_PREC_INT8) return (q_isa() >> 1) & 1;
    if (prec == MOA_PREC_BF16) return (q_isa() >> 2) & 1;
    return 0;
}

int moa_q_bf16_fma512(void) { return (q_isa() >> 3) & 1; }

static int use_avx512(int kernel, moa_precision prec) {
    if (kernel == MOA_QK_AVX2) return 0;
    if (kernel == MOA_QK_AVX512) {
        MOA_ASSERT(moa_q_avx512(prec));
        return 1;
    }
    return moa_q_avx512(prec);
}

// bf16 has three kernels that give the same bits: VDPBF16PS (AVX512_BF16),
// FMAs on the weights widened to float32 in AVX-512 registers, and the same
// in AVX2. Where VDPBF16PS exists it is not always the faster: on this
// project's machine it ran at 0.6x the AVX-512 FMA kernel (bench/RESULTS.md).
// So the first bf16 product measures both on a small panel (a fraction of a
// millisecond, once per process) and keeps the faster; MOA_BF16_KERNEL=
// vdpbf16ps or fma decides instead. Only speed depends on the choice.
static _Atomic int bf16_pick = -1;       // MOA_QK_AVX512 or MOA_QK_AVX512F
static _Atomic int bf16_ratio_pct = 0;   // VDPBF16PS time / FMA kernel time, in %

static int bf16_calibrate(void);

static int bf16_kernel(int kernel) {
    if (kernel != MOA_QK_AUTO) {
        MOA_ASSERT(kernel == MOA_QK_AVX2 || (kernel == MOA_QK_AVX512 && moa_q_avx512(MOA_PREC_BF16)) ||
                   (kernel == MOA_QK_AVX512F && moa_q_bf16_fma512()));
        return kernel;
    }
    if (!moa_q_bf16_fma512()) return MOA_QK_AVX2;
    if (!moa_q_avx512(MOA_PREC_BF16)) return MOA_QK_AVX512F;
    int pick = bf16_pick;
    if (pick < 0) {
        const char *env = getenv("MOA_BF16_KERNEL");
        if (env && !strcmp(env, "vdpbf16ps")) pick = MOA_QK_AVX512;
        else if (env && !strcmp(env, "fma")) pick = MOA_QK_AVX512F;
        else pick = bf16_calibrate();
        bf16_pick = pick;
    }
    return pick;
}

const char *moa_q_kernel_name(moa_precision prec) {
    if (prec == MOA_PREC_INT8)
        return moa_q_avx512(prec) ? "int8 weights, AVX512_VNNI kernel" : "int8 weights, AVX2 kernel";
    if (prec == MOA_PREC_BF16) {
        static _Thread_local char buf[160];
        switch (bf16_kernel(MOA_QK_AUTO)) {
        case MOA_QK_AVX512:
            if (bf16_ratio_pct)
                snprintf(buf, sizeof buf, "bf16 weights, AVX512_BF16 kernel (VDPBF16PS; it took "
                         "%d%% of the AVX-512 FMA kernel's time here)", bf16_ratio_pct);
            else snprintf(buf, sizeof buf, "bf16 weights, AVX512_BF16 kernel (VDPBF16PS)");
            return buf;
        case MOA_QK_AVX512F:
            if (bf16_ratio_pct)
                snprintf(buf, sizeof buf, "bf16 weights, AVX-512 FMA kernel on widened weights "
                         "(VDPBF16PS took %d%% of its time here: not used)", bf16_ratio_pct);
            else snprintf(buf, sizeof buf, "bf16 weights, AVX-512 FMA kernel on widened weights");
            return buf;
        default:
            return "bf16 weights, AVX2 kernel (widened to float32)";
        }
    }
    return "float32";
}

// --- conversion of weights (at load) ------------------------------------------------------

uint16_t moa_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// Element kk of output row j of a weight stored n×k, or k×n when kn.
static float w_at(const float *w, int n, int k, int kn, int j, int kk) {
    return kn ? w[(size_t)kk * n + j] : w[(size_t)j * k + kk];
}

// Row j as int8: q[kk] for kk < k; returns the scale and Σ q in *sum.
static float quant_w_row(const float *w, int n, int k, int kn, int j, int8_t *q, int32_t *sum) {
    float mx = 0.0f;
    for (int kk = 0; kk < k; kk++) {
        float v = fabsf(w_at(w, n, k, kn, j, kk));
        mx = v > mx ? v : mx;
    }
    float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    int32_t s = 0;
    for (int kk = 0; kk < k; kk++) {
        long v = lrintf(w_at(w, n, k, kn, j, kk) * inv);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[kk] = (int8_t)v;
        s += (int32_t)v;
    }
    *sum = s;
    return mx / 127.0f;
}

size_t moa_pack_bf16_bytes(int n, int k) {
    return (size_t)((n + NR - 1) / NR) * NR * (size_t)pad_to(k, 2) * sizeof(uint16_t);
}

// Panel p, pair kk/2: the 32 columns' (kk, kk+1) pairs, 128 bytes.
void moa_pack_bf16(uint16_t *dst, const float *w, int n, int k, int kn) {
    int kp = pad_to(k, 2);
    memset(dst, 0, moa_pack_bf16_bytes(n, k));
    for (int j = 0; j < n; j++) {
        uint16_t *panel = dst + (size_t)(j / NR) * NR * kp;
        for (int kk = 0; kk < k; kk++)
            panel[(size_t)(kk / 2) * NR * 2 + (j % NR) * 2 + kk % 2] =
                moa_f32_to_bf16(w_at(w, n, k, kn, j, kk));
    }
}

size_t moa_pack_i8_bytes(int n, int k) {
    return (size_t)((n + NR - 1) / NR) * NR * (size_t)pad_to(k, 4);
}

size_t moa_pack_i8_cols(int n) { return (size_t)((n + NR - 1) / NR) * NR; }

// Panel p, group kk/4: the 32 columns' four int8s, 128 bytes. qs and qsum
// hold moa_pack_i8_cols(n) values (zero past n, so that whole panels load).
void moa_pack_i8(int8_t *dst, float *qs, int32_t *qsum, const float *w, int n, int k, int kn) {
    int kp = pad_to(k, 4);
    size_t cols = moa_pack_i8_cols(n);
    memset(dst, 0, moa_pack_i8_bytes(n, k));
    memset(qs, 0, cols * sizeof *qs);
    memset(qsum, 0, cols * sizeof *qsum);
    int8_t *row = malloc(k > 0 ? (size_t)k : 1);
    MOA_ASSERT(row);  // load-time scratch of one row
    for (int j = 0; j < n; j++) {
        int32_t s;
        qs[j] = quant_w_row(w, n, k, kn, j, row, &s);
        qsum[j] = 128 * s;
        int8_t *panel = dst + (size_t)(j / NR) * NR * kp;
        for (int kk = 0; kk < k; kk++)
            panel[(size_t)(kk / 4) * NR * 4 + (j % NR) * 4 + kk % 4] = row[kk];
    }
    free(row);
}

int moa_rows_ld(moa_precision prec, int k) {
    return prec == MOA_PREC_INT8 ? pad_to(k, 64) : prec == MOA_PREC_BF16 ? pad_to(k, 16) : k;
}

void moa_rows_bf16(uint16_t *dst, const float *w, int n, int k) {
    int ld = moa_rows_ld(MOA_PREC_BF16, k);
    for (int j = 0; j < n; j++) {
        uint16_t *d = dst + (size_t)j * ld;
        for (int kk = 0; kk < ld; kk++) d[kk] = kk < k ? moa_f32_to_bf16(w[(size_t)j * k + kk]) : 0;
    }
}

void moa_rows_i8(int8_t *dst, float *qs, int32_t *qsum, const float *w, int n, int k) {
    int ld = moa_rows_ld(MOA_PREC_INT8, k);
    for (int j = 0; j < n; j++) {
        int8_t *d = dst + (size_t)j * ld;
        int32_t s;
        memset(d, 0, (size_t)ld);
        qs[j] = quant_w_row(w, n, k, 0, j, d, &s);
        qsum[j] = 128 * s;
    }
}

// --- conversion of activations (each product) ---------------------------------------------

AVX2 static float max_abs(const float *x, int k) {
    __m256 sign = _mm256_set1_ps(-0.0f), m = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= k; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    float t[8], mx = 0.0f;
    _mm256_storeu_ps(t, m);
    for (int j = 0; j < 8; j++) mx = t[j] > mx ? t[j] : mx;
    for (; i < k; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
    return mx;
}

// Row x (k floats) as int8 in q (kp bytes, zero past k): qa = round(x·127/max),
// stored as qa + 128 when offset (VPDPBUSD's unsigned operand). Returns the
// scale max / 127. The vector and scalar roundings agree (both to nearest
// even, on the same float products).
AVX2 static float quant_act(const float *x, int k, int kp, int offset, uint8_t *q) {
    float mx = max_abs(x, k);
    float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    __m256 iv = _mm256_set1_ps(inv);
    __m256i flip = _mm256_set1_epi8((char)(offset ? 0x80 : 0));
    __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int i = 0;
    for (; i + 32 <= k; i += 32) {
        __m256i v0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), iv));
        __m256i v1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), iv));
        __m256i v2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), iv));
        __m256i v3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), iv));
        // packs work within 128-bit lanes: the permute puts the groups of
        // four back in order
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v0, v1), _mm256_packs_epi32(v2, v3));
        b = _mm256_permutevar8x32_epi32(b, order);
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_xor_si256(b, flip));
    }
    for (; i < k; i++) {
        long v = lrintf(x[i] * inv);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[i] = (uint8_t)((int)v + (offset ? 128 : 0));
    }
    for (; i < kp; i++) q[i] = offset ? 128 : 0;
    return mx / 127.0f;
}

// Row x as bfloat16 in q (kp values, zero past k).
AVX2 static void bf16_act(const float *x, int k, int kp, uint16_t *q) {
    __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    int i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256i u0 = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        __m256i u1 = _mm256_castps_si256(_mm256_loadu_ps(x + i + 8));
        u0 = _mm256_srli_epi32(_mm256_add_epi32(u0, _mm256_add_epi32(bias, _mm256_and_si256(
                                                        _mm256_srli_epi32(u0, 16), one))), 16);
        u1 = _mm256_srli_epi32(_mm256_add_epi32(u1, _mm256_add_epi32(bias, _mm256_and_si256(
                                                        _mm256_srli_epi32(u1, 16), one))), 16);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(u0, u1), 0xD8);
        _mm256_storeu_si256((__m256i *)(q + i), p);
    }
    for (; i < k; i++) q[i] = moa_f32_to_bf16(x[i]);
    for (; i < kp; i++) q[i] = 0;
}

// Row x rounded to bfloat16 but kept as floats (kp values, zero past k):
// the AVX-512 FMA kernel broadcasts them.
AVX2 static void bf16_act_f32(const float *x, int k, int kp, float *q) {
    __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    int i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        u = _mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        _mm256_storeu_ps(q + i, _mm256_castsi256_ps(_mm256_and_si256(u, hi)));
    }
    for (; i < k; i++) {
        uint32_t u = (uint32_t)moa_f32_to_bf16(x[i]) << 16;
        memcpy(&q[i], &u, sizeof u);
    }
    for (; i < kp; i++) q[i] = 0.0f;
}

static float bf16_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// Lanes of an AVX2 mask for columns [8t, 8t+8) of a panel with `cols` columns.
AVX2 static __m256i col_mask(int t, int cols) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cols),
                              _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                               _mm256_set1_epi32(8 * t)));
}

// --- int8 products -----------------------------------------------------------------------

// One micro-tile: rows [0, mr) of the chunk's activations (a, kp bytes a
// row, + 128) times one panel (b) into C. ra: sa·alpha per row.
INLINE VNNI void i8_tile512(int mr, int kq, const uint8_t *a, int kp, const int8_t *b,
                            const int8_t *pf, float *c, int ldc, const float *ra, __m512 sw0,
                            __m512 sw1, __m512i qs0, __m512i qs1, int load_c, __mmask16 m0,
                            __mmask16 m1, moa_lse16 *ls) {
    __m512i c0[MR], c1[MR];
UNROLL
    for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm512_setzero_si512();
    for (int q = 0; q < kq; q++) {
        __m512i b0 = _mm512_load_si512(b + (size_t)q * 128);
        __m512i b1 = _mm512_load_si512(b + (size_t)q * 128 + 64);
        if (pf) {
            _mm_prefetch((const char *)(pf + (size_t)q * 128), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + (size_t)q * 128 + 64), _MM_HINT_T0);
        }
        const uint8_t *aq = a + (size_t)q * 4;
UNROLL
        for (int r = 0; r < mr; r++) {
            int32_t v;
            memcpy(&v, aq + (size_t)r * kp, sizeof v);
            __m512i av = _mm512_set1_epi32(v);
            c0[r] = _mm512_dpbusd_epi32(c0[r], av, b0);
            c1[r] = _mm512_dpbusd_epi32(c1[r], av, b1);
        }
    }
UNROLL
    for (int r = 0; r < mr; r++) {
        __m512 s = _mm512_set1_ps(ra[r]);
        __m512 f0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c0[r], qs0)), sw0), s);
        __m512 f1 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c1[r], qs1)), sw1), s);
        if (load_c) {
            f0 = _mm512_add_ps(f0, _mm512_maskz_loadu_ps(m0, c + (size_t)r * ldc));
            f1 = _mm512_add_ps(f1, _mm512_maskz_loadu_ps(m1, c + (size_t)r * ldc + 16));
        }
        _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, f0);
        _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, f1);
        if (ls) lse16_add(&ls[r], f0, f1, m0, m1);
    }
}

static VNNI void i8_chunk_avx512(int m, const uint8_t *a, int kp, const float *ra,
                                 const moa_packed *w, int load_c, float *c, int ldc,
                                 moa_lse16 *ls) {
    int n = w->n, np = (n + NR - 1) / NR, kq = kp / 4;
    for (int p = 0; p < np; p++) {
        const int8_t *b = w->pq + (size_t)p * NR * kp;
        int cols = min_i(NR, n - p * NR);
        __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
        __mmask16 m1 = (__mmask16)(cols <= 16 ? 0 : cols >= 32 ? 0xFFFF : (1u << (cols - 16)) - 1);
        __m512 sw0 = _mm512_loadu_ps(w->qs + p * NR), sw1 = _mm512_loadu_ps(w->qs + p * NR + 16);
        __m512i qs0 = _mm512_loadu_si512(w->qsum + p * NR);
        __m512i qs1 = _mm512_loadu_si512(w->qsum + p * NR + 16);
        // the next panel streams in during this one's first row tile
        const int8_t *next = p + 1 < np ? b + (size_t)NR * kp : NULL;
        for (int i0 = 0; i0 < m; i0 += MR) {
            int mr = min_i(MR, m - i0);
            float *ct = c + (size_t)i0 * ldc + p * NR;
            const uint8_t *at = a + (size_t)i0 * kp;
            const int8_t *pf = i0 == 0 ? next : NULL;
            switch (mr) {
#define T(N) case N: i8_tile512(N, kq, at, kp, b, pf, ct, ldc, ra + i0, sw0, sw1, qs0, qs1, load_c, m0, m1, ls ? ls + i0 : NULL); break;
                T(1) T(2) T(3) T(4) T(5) T(6) T(7) T(8) T(9) T(10) T(11) T(12)
#undef T
            }
        }
    }
}

// qa · qw for 32 bytes of each: |qa| · (qw with qa's sign), pairs summed in
// int16 (at most 2·127·127: no saturation), then in int32.
INLINE AVX2 __m256i dot_i8(__m256i acc, __m256i qa, __m256i qa_abs, __m256i qw, __m256i ones) {
    __m256i p = _mm256_maddubs_epi16(qa_abs, _mm256_sign_epi8(qw, qa));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
}

// The same product as i8_chunk_avx512 with signed activations (no + 128),
// two rows by 32 columns at a time.
static AVX2 void i8_chunk_avx2(int m, const uint8_t *a, int kp, const float *ra,
                               const moa_packed *w, int load_c, float *c, int ldc,
                               moa_lse_acc *ls) {
    int n = w->n, np = (n + NR - 1) / NR, kq = kp / 4;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int p = 0; p < np; p++) {
        const int8_t *b = w->pq + (size_t)p * NR * kp;
        int cols = min_i(NR, n - p * NR);
        __m256i mk[4];
        __m256 sw[4];
        for (int t = 0; t < 4; t++) {
            mk[t] = col_mask(t, cols);
            sw[t] = _mm256_loadu_ps(w->qs + p * NR + 8 * t);
        }
        for (int i0 = 0; i0 < m; i0 += 2) {
            int nr = min_i(2, m - i0);
            const uint8_t *a0 = a + (size_t)i0 * kp, *a1 = nr > 1 ? a0 + kp : a0;
            __m256i acc[2][4];
            for (int t = 0; t < 4; t++) acc[0][t] = acc[1][t] = _mm256_setzero_si256();
            for (int q = 0; q < kq; q++) {
                const int8_t *bq = b + (size_t)q * 128;
                int32_t v0, v1;
                memcpy(&v0, a0 + 4 * q, sizeof v0);
                memcpy(&v1, a1 + 4 * q, sizeof v1);
                __m256i x0 = _mm256_set1_epi32(v0), x1 = _mm256_set1_epi32(v1);
                __m256i y0 = _mm256_abs_epi8(x0), y1 = _mm256_abs_epi8(x1);
                for (int t = 0; t < 4; t++) {
                    __m256i bv = _mm256_load_si256((const __m256i *)(bq + 32 * t));
                    acc[0][t] = dot_i8(acc[0][t], x0, y0, bv, ones);
                    acc[1][t] = dot_i8(acc[1][t], x1, y1, bv, ones);
                }
            }
            for (int r = 0; r < nr; r++) {
                float *cr = c + (size_t)(i0 + r) * ldc + p * NR;
                __m256 s = _mm256_set1_ps(ra[i0 + r]);
                for (int t = 0; t < 4; t++) {
                    __m256 f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][t]), sw[t]), s);
                    if (load_c) f = _mm256_add_ps(f, _mm256_maskload_ps(cr + 8 * t, mk[t]));
                    _mm256_maskstore_ps(cr + 8 * t, mk[t], f);
                }
                if (ls) moa_lse_add(&ls[i0 + r], cr, cols);
            }
        }
    }
}

// Empty k: C = beta·C, and the log-sum-exp of what is there.
static void empty_k(int m, int n, float beta, float *c, int ldc, float *lse) {
    for (int i = 0; i < m; i++) {
        float *cr = c + (size_t)i * ldc;
        if (beta == 0.0f) memset(cr, 0, (size_t)n * sizeof *cr);
        if (lse) {
            moa_lse_acc acc = moa_lse_start();
            moa_lse_add(&acc, cr, n);
            lse[i] = moa_lse_value(&acc);
        }
    }
}

// Running log-sum-exps of a chunk's rows: in registers' layout for the
// AVX-512 tiles (moa_lse512.h), as moa_lse_acc for the AVX2 ones.
typedef union lse_rows {
    moa_lse16 v[QROWS];
    moa_lse_acc s[QROWS];
} lse_rows;

static LSE512 void lse_rows_start16(lse_rows *l, int n) {
    for (int i = 0; i < n; i++) lse16_start(&l->v[i]);
}

static LSE512 void lse_rows_value16(const lse_rows *l, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = lse16_value(&l->v[i]);
}

// (the AVX-512 functions run only where the CPU has AVX-512)
static void lse_rows_start(lse_rows *l, int n, int avx512) {
    if (avx512) lse_rows_start16(l, n);
    else
        for (int i = 0; i < n; i++) l->s[i] = moa_lse_start();
}

static void lse_rows_value(const lse_rows *l, int n, int avx512, float *out) {
    if (avx512) lse_rows_value16(l, n, out);
    else
        for (int i = 0; i < n; i++) out[i] = moa_lse_value(&l->s[i]);
}

// Rows per chunk of converted activations: about QL1 bytes of them, which
// stay in L1 next to the panel being streamed (measured: 48 rows at k = 256
// run the int8 kernel at 1.5x the speed of 256 rows), in whole micro-tiles.
static int chunk_rows(size_t row_bytes) {
    int rows = (int)(QL1 / row_bytes);
    if (rows > QROWS) rows = QROWS;
    if (rows >= MR) rows -= rows % MR;
    return rows < 1 ? 1 : rows;
}

void moa_gemm_i8(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                 float *c, int ldc, float *lse, int kernel) {
    MOA_ASSERT(w->pq && (beta == 0.0f || beta == 1.0f) && moa_q_available());
    if (m <= 0 || w->n <= 0) return;
    if (w->k == 0) {
        empty_k(m, w->n, beta, c, ldc, lse);
        return;
    }
    moa_count_flops(2ull * m * w->n * w->k);
    int fast = use_avx512(kernel, MOA_PREC_INT8);
    int kp = pad_to(w->k, 4), rows = chunk_rows((size_t)kp);
    uint8_t qa[QBUF] __attribute__((aligned(64)));
    float ra[QROWS];
    lse_rows ls;
    for (int i0 = 0; i0 < m; i0 += rows) {
        int mc = min_i(rows, m - i0);
        for (int i = 0; i < mc; i++)
            ra[i] = quant_act(a + (size_t)(i0 + i) * lda, w->k, kp, fast, qa + (size_t)i * kp) * alpha;
        if (lse) lse_rows_start(&ls, mc, fast);
        float *cc = c + (size_t)i0 * ldc;
        if (fast) i8_chunk_avx512(mc, qa, kp, ra, w, beta != 0.0f, cc, ldc, lse ? ls.v : NULL);
        else i8_chunk_avx2(mc, qa, kp, ra, w, beta != 0.0f, cc, ldc, lse ? ls.s : NULL);
        if (lse) lse_rows_value(&ls, mc, fast, lse + i0);
    }
}

// --- activations converted once, several products -----------------------------------------

size_t moa_qin_bytes(moa_precision p, int n, int k) {
    if (p == MOA_PREC_INT8) return (size_t)n * pad_to(pad_to(k, 4), 64) + (size_t)n * sizeof(float) + 64;
    if (p == MOA_PREC_BF16) return (size_t)n * pad_to(pad_to(k, 2), 32) * sizeof(uint16_t);
    return 0;
}

void moa_qin_make(moa_qin *in, moa_precision p, int n, const float *x, int ldx, int k,
                  void *buf) {
    MOA_ASSERT(p != MOA_PREC_F32 && moa_q_available());
    memset(in, 0, sizeof *in);
    in->n = n;
    in->k = k;
    in->prec = p;
    in->q = buf;
    if (p == MOA_PREC_INT8) {
        // rows 64 bytes apart at least (whole cache lines); the kernels read kp = pad_to(k, 4)
        in->kp = pad_to(pad_to(k, 4), 64);
        in->avx512 = use_avx512(MOA_QK_AUTO, p);
        in->scale = (float *)((char *)buf + pad_to((int)((size_t)n * in->kp), 64));
        for (int i = 0; i < n; i++)
            in->scale[i] = quant_act(x + (size_t)i * ldx, k, in->kp, in->avx512,
                                     (uint8_t *)buf + (size_t)i * in->kp);
    } else {
        in->kp = pad_to(pad_to(k, 2), 32);
        for (int i = 0; i < n; i++)
            bf16_act(x + (size_t)i * ldx, k, in->kp, (uint16_t *)buf + (size_t)i * in->kp);
    }
}

// --- bf16 products -------------------------------------------------------------------------

INLINE BF16 void bf_tile512(int mr, int kq, const uint16_t *a, int kp, const uint16_t *b,
                            const uint16_t *pf, float *c, int ldc, float alpha, int load_c,
                            __mmask16 m0, __mmask16 m1, moa_lse16 *ls) {
    __m512 c0[MR], c1[MR];
UNROLL
    for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    for (int q = 0; q < kq; q++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b + (size_t)q * 64);
        __m512bh b1 = (__m512bh)_mm512_load_si512(b + (size_t)q * 64 + 32);
        if (pf) {
            _mm_prefetch((const char *)(pf + (size_t)q * 64), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + (size_t)q * 64 + 32), _MM_HINT_T0);
        }
        const uint16_t *aq = a + (size_t)q * 2;
UNROLL
        for (int r = 0; r < mr; r++) {
            int32_t v;
            memcpy(&v, aq + (size_t)r * kp, sizeof v);
            __m512bh av = (__m512bh)_mm512_set1_epi32(v);
            c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
            c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
        }
    }
    __m512 al = _mm512_set1_ps(alpha);
UNROLL
    for (int r = 0; r < mr; r++) {
        __m512 f0 = c0[r], f1 = c1[r];
        if (alpha != 1.0f) {
            f0 = _mm512_mul_ps(f0, al);
            f1 = _mm512_mul_ps(f1, al);
        }
        if (load_c) {
            f0 = _mm512_add_ps(f0, _mm512_maskz_loadu_ps(m0, c + (size_t)r * ldc));
            f1 = _mm512_add_ps(f1, _mm512_maskz_loadu_ps(m1, c + (size_t)r * ldc + 16));
        }
        _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, f0);
        _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, f1);
        if (ls) lse16_add(&ls[r], f0, f1, m0, m1);
    }
}

static BF16 void bf_chunk_avx512(int m, const uint16_t *a, int kp, float alpha,
                                 const moa_packed *w, int load_c, float *c, int ldc,
                                 moa_lse16 *ls) {
    int n = w->n, np = (n + NR - 1) / NR, kq = kp / 2;
    for (int p = 0; p < np; p++) {
        const uint16_t *b = w->pb + (size_t)p * NR * kp;
        int cols = min_i(NR, n - p * NR);
        __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
        __mmask16 m1 = (__mmask16)(cols <= 16 ? 0 : cols >= 32 ? 0xFFFF : (1u << (cols - 16)) - 1);
        const uint16_t *next = p + 1 < np ? b + (size_t)NR * kp : NULL;
        for (int i0 = 0; i0 < m; i0 += MR) {
            int mr = min_i(MR, m - i0);
            float *ct = c + (size_t)i0 * ldc + p * NR;
            const uint16_t *at = a + (size_t)i0 * kp;
            const uint16_t *pf = i0 == 0 ? next : NULL;
            switch (mr) {
#define T(N) case N: bf_tile512(N, kq, at, kp, b, pf, ct, ldc, alpha, load_c, m0, m1, ls ? ls + i0 : NULL); break;
                T(1) T(2) T(3) T(4) T(5) T(6) T(7) T(8) T(9) T(10) T(11) T(12)
#undef T
            }
        }
    }
}

#define Z512 __attribute__((target("avx2,fma,avx512f,avx512bw")))

// The AVX-512 FMA kernel: each panel pair widened to float32 in registers
// (even element: shifted up; odd: the high half kept), then added as
// VDPBF16PS adds it (odd element first), with the activations already
// rounded to bfloat16 and held as floats (a, kp floats a row).
INLINE Z512 void bff_tile512(int mr, int kq, const float *a, int kp, const uint16_t *b,
                             const uint16_t *pf, float *c, int ldc, float alpha, int load_c,
                             __mmask16 m0, __mmask16 m1, moa_lse16 *ls) {
    __m512 c0[MR], c1[MR];
UNROLL
    for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int q = 0; q < kq; q++) {
        __m512i x0 = _mm512_load_si512(b + (size_t)q * 64);
        __m512i x1 = _mm512_load_si512(b + (size_t)q * 64 + 32);
        if (pf) {
            _mm_prefetch((const char *)(pf + (size_t)q * 64), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + (size_t)q * 64 + 32), _MM_HINT_T0);
        }
        __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(x0, 16));
        __m512 o0 = _mm512_castsi512_ps(_mm512_and_si512(x0, hi));
        __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(x1, 16));
        __m512 o1 = _mm512_castsi512_ps(_mm512_and_si512(x1, hi));
        const float *aq = a + (size_t)q * 2;
UNROLL
        for (int r = 0; r < mr; r++) {
            __m512 ae = _mm512_set1_ps(aq[(size_t)r * kp]), ao = _mm512_set1_ps(aq[(size_t)r * kp + 1]);
            c0[r] = _mm512_fmadd_ps(ae, e0, _mm512_fmadd_ps(ao, o0, c0[r]));
            c1[r] = _mm512_fmadd_ps(ae, e1, _mm512_fmadd_ps(ao, o1, c1[r]));
        }
    }
    __m512 al = _mm512_set1_ps(alpha);
UNROLL
    for (int r = 0; r < mr; r++) {
        __m512 f0 = c0[r], f1 = c1[r];
        if (alpha != 1.0f) {
            f0 = _mm512_mul_ps(f0, al);
            f1 = _mm512_mul_ps(f1, al);
        }
        if (load_c) {
            f0 = _mm512_add_ps(f0, _mm512_maskz_loadu_ps(m0, c + (size_t)r * ldc));
            f1 = _mm512_add_ps(f1, _mm512_maskz_loadu_ps(m1, c + (size_t)r * ldc + 16));
        }
        _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, f0);
        _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, f1);
        if (ls) lse16_add(&ls[r], f0, f1, m0, m1);
    }
}

static Z512 void bff_chunk_avx512(int m, const float *a, int kp, float alpha,
                                  const moa_packed *w, int load_c, float *c, int ldc,
                                  moa_lse16 *ls) {
    int n = w->n, np = (n + NR - 1) / NR, kq = kp / 2;
    for (int p = 0; p < np; p++) {
        const uint16_t *b = w->pb + (size_t)p * NR * kp;
        int cols = min_i(NR, n - p * NR);
        __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
        __mmask16 m1 = (__mmask16)(cols <= 16 ? 0 : cols >= 32 ? 0xFFFF : (1u << (cols - 16)) - 1);
        const uint16_t *next = p + 1 < np ? b + (size_t)NR * kp : NULL;
        for (int i0 = 0; i0 < m; i0 += MR) {
            int mr = min_i(MR, m - i0);
            float *ct = c + (size_t)i0 * ldc + p * NR;
            const float *at = a + (size_t)i0 * kp;
            const uint16_t *pf = i0 == 0 ? next : NULL;
            switch (mr) {
#define T(N) case N: bff_tile512(N, kq, at, kp, b, pf, ct, ldc, alpha, load_c, m0, m1, ls ? ls + i0 : NULL); break;
                T(1) T(2) T(3) T(4) T(5) T(6) T(7) T(8) T(9) T(10) T(11) T(12)
#undef T
            }
        }
    }
}

// A vector of bf16 pairs as two float vectors: the even (low) and the odd
// (high) element of each pair.
INLINE AVX2 __m256 bf_even(__m256i x) { return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)); }
INLINE AVX2 __m256 bf_odd(__m256i x) {
    return _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
}

// The same product as bf_chunk_avx512 with FMAs in VDPBF16PS's order (odd,
// then even element of each pair): two rows by 32 columns at a time.
static AVX2 void bf_chunk_avx2(int m, const uint16_t *a, int kp, float alpha,
                               const moa_packed *w, int load_c, float *c, int ldc,
                               moa_lse_acc *ls) {
    int n = w->n, np = (n + NR - 1) / NR, kq = kp / 2;
    __m256 al = _mm256_set1_ps(alpha);
    for (int p = 0; p < np; p++) {
        const uint16_t *b = w->pb + (size_t)p * NR * kp;
        int cols = min_i(NR, n - p * NR);
        __m256i mk[4];
        for (int t = 0; t < 4; t++) mk[t] = col_mask(t, cols);
        for (int i0 = 0; i0 < m; i0 += 2) {
            int nr = min_i(2, m - i0);
            const uint16_t *a0 = a + (size_t)i0 * kp, *a1 = nr > 1 ? a0 + kp : a0;
            __m256 acc[2][4];
            for (int t = 0; t < 4; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
            for (int q = 0; q < kq; q++) {
                const uint16_t *bq = b + (size_t)q * 64;
                __m256 e0 = _mm256_set1_ps(bf16_f32(a0[2 * q])), o0 = _mm256_set1_ps(bf16_f32(a0[2 * q + 1]));
                __m256 e1 = _mm256_set1_ps(bf16_f32(a1[2 * q])), o1 = _mm256_set1_ps(bf16_f32(a1[2 * q + 1]));
                for (int t = 0; t < 4; t++) {
                    __m256i bv = _mm256_load_si256((const __m256i *)(bq + 16 * t));
                    __m256 be = bf_even(bv), bo = bf_odd(bv);
                    acc[0][t] = _mm256_fmadd_ps(e0, be, _mm256_fmadd_ps(o0, bo, acc[0][t]));
                    acc[1][t] = _mm256_fmadd_ps(e1, be, _mm256_fmadd_ps(o1, bo, acc[1][t]));
                }
            }
            for (int r = 0; r < nr; r++) {
                float *cr = c + (size_t)(i0 + r) * ldc + p * NR;
                for (int t = 0; t < 4; t++) {
                    __m256 f = acc[r][t];
                    if (alpha != 1.0f) f = _mm256_mul_ps(f, al);
                    if (load_c) f = _mm256_add_ps(f, _mm256_maskload_ps(cr + 8 * t, mk[t]));
                    _mm256_maskstore_ps(cr + 8 * t, mk[t], f);
                }
                if (ls) moa_lse_add(&ls[i0 + r], cr, cols);
            }
        }
    }
}

void moa_gemm_bf16(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                   float *c, int ldc, float *lse, int kernel) {
    MOA_ASSERT(w->pb && (beta == 0.0f || beta == 1.0f) && moa_q_available());
    if (m <= 0 || w->n <= 0) return;
    if (w->k == 0) {
        empty_k(m, w->n, beta, c, ldc, lse);
        return;
    }
    moa_count_flops(2ull * m * w->n * w->k);
    int kr = bf16_kernel(kernel), fast = kr != MOA_QK_AVX2, wide = kr == MOA_QK_AVX512F;
    int kp = pad_to(w->k, 2);
    int rows = chunk_rows((size_t)kp * (wide ? sizeof(float) : sizeof(uint16_t)));
    _Alignas(64) unsigned char buf[QBUF];
    uint16_t *qa = (uint16_t *)buf;
    float *fa = (float *)buf;
    lse_rows ls;
    for (int i0 = 0; i0 < m; i0 += rows) {
        int mc = min_i(rows, m - i0);
        for (int i = 0; i < mc; i++) {
            const float *x = a + (size_t)(i0 + i) * lda;
            if (wide) bf16_act_f32(x, w->k, kp, fa + (size_t)i * kp);
            else bf16_act(x, w->k, kp, qa + (size_t)i * kp);
        }
        if (lse) lse_rows_start(&ls, mc, fast);
        float *cc = c + (size_t)i0 * ldc;
        moa_lse16 *l16 = lse ? ls.v : NULL;
        if (wide) bff_chunk_avx512(mc, fa, kp, alpha, w, beta != 0.0f, cc, ldc, l16);
        else if (fast) bf_chunk_avx512(mc, qa, kp, alpha, w, beta != 0.0f, cc, ldc, l16);
        else bf_chunk_avx2(mc, qa, kp, alpha, w, beta != 0.0f, cc, ldc, lse ? ls.s : NULL);
        if (lse) lse_rows_value(&ls, mc, fast, lse + i0);
    }
}

// Times VDPBF16PS against the AVX-512 FMA kernel on one panel of 64 outputs,
// k 256, 24 rows (minimum of 7 interleaved rounds each); returns the faster.
static int bf16_calibrate(void) {
    enum { N = 64, K = 256, M = 24, ROUNDS = 7 };
    uint16_t *pb = aligned_alloc(64, moa_pack_bf16_bytes(N, K));
    float *w = malloc(sizeof(float) * N * K), *a = malloc(sizeof(float) * M * K);
    float *c = malloc(sizeof(float) * M * N);
    if (!pb || !w || !a || !c) {
        free(pb); free(w); free(a); free(c);
        return MOA_QK_AVX512;
    }
    uint32_t st = 1;
    for (int i = 0; i < N * K; i++) w[i] = (float)((st = st * 1103515245u + 12345u) >> 16) / 65536.0f - 0.5f;
    for (int i = 0; i < M * K; i++) a[i] = (float)((st = st * 1103515245u + 12345u) >> 16) / 65536.0f - 0.5f;
    moa_pack_bf16(pb, w, N, K, 0);
    moa_packed pw = {.w = w, .n = N, .k = K, .pb = pb};
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < 2; v++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (int rep = 0; rep < 4; rep++)
                moa_gemm_bf16(M, a, K, &pw, 1.0f, 0.0f, c, N, NULL, v ? MOA_QK_AVX512F : MOA_QK_AVX512);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double t = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            if (t < best[v]) best[v] = t;
        }
    free(pb); free(w); free(a); free(c);
    bf16_ratio_pct = best[1] > 0 ? (int)(100.0 * best[0] / best[1] + 0.5) : 0;
    return best[1] < best[0] ? MOA_QK_AVX512F : MOA_QK_AVX512;
}

// --- products over chosen rows (the shortlist's output projection) ------------------------

// The eight lane sums of a..h in one vector, each in the same fixed tree.
INLINE AVX2 __m256 hsum8x8(__m256 a, __m256 b, __m256 c, __m256 d, __m256 e, __m256 f, __m256 g,
                           __m256 h) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 ef = _mm256_hadd_ps(e, f), gh = _mm256_hadd_ps(g, h);
    __m256 abcd = _mm256_hadd_ps(ab, cd), efgh = _mm256_hadd_ps(ef, gh);
    return _mm256_add_ps(_mm256_permute2f128_ps(abcd, efgh, 0x20),
                         _mm256_permute2f128_ps(abcd, efgh, 0x31));
}

INLINE AVX2 __m256i hsum8x8_i32(const __m256i *v) {
    __m256i ab = _mm256_hadd_epi32(v[0], v[1]), cd = _mm256_hadd_epi32(v[2], v[3]);
    __m256i ef = _mm256_hadd_epi32(v[4], v[5]), gh = _mm256_hadd_epi32(v[6], v[7]);
    __m256i abcd = _mm256_hadd_epi32(ab, cd), efgh = _mm256_hadd_epi32(ef, gh);
    return _mm256_add_epi32(_mm256_permute2x128_si256(abcd, efgh, 0x20),
                            _mm256_permute2x128_si256(abcd, efgh, 0x31));
}

// out[t] = x · W[ids[t]] for t < GROUP (f32 rows; a k % 8 tail in order).
static AVX2 void group_f32(const float *x, const moa_rows *w, const int *ids, float *out) {
    int k = w->k, k8 = k & ~7;
    const float *wr[GROUP];
    for (int t = 0; t < GROUP; t++) wr[t] = w->f + (size_t)ids[t] * w->ld;
    __m256 acc[GROUP];
    for (int t = 0; t < GROUP; t++) acc[t] = _mm256_setzero_ps();
    for (int kk = 0; kk < k8; kk += 8) {
        __m256 xv = _mm256_loadu_ps(x + kk);
        for (int t = 0; t < GROUP; t++)
            acc[t] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wr[t] + kk), acc[t]);
    }
    _mm256_storeu_ps(out, hsum8x8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]));
    for (int kk = k8; kk < k; kk++)
        for (int t = 0; t < GROUP; t++) out[t] += x[kk] * wr[t][kk];
}

// The same over bf16 rows, x already bf16 (ld values); each lane pair as
// VDPBF16PS adds it.
static AVX2 void group_bf16(const uint16_t *x, const moa_rows *w, const int *ids, float *out) {
    const uint16_t *wr[GROUP];
    for (int t = 0; t < GROUP; t++) wr[t] = w->b + (size_t)ids[t] * w->ld;
    __m256 acc[GROUP];
    for (int t = 0; t < GROUP; t++) acc[t] = _mm256_setzero_ps();
    for (int kk = 0; kk < w->ld; kk += 16) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + kk));
        __m256 xe = bf_even(xv), xo = bf_odd(xv);
        for (int t = 0; t < GROUP; t++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(wr[t] + kk));
            acc[t] = _mm256_fmadd_ps(xe, bf_even(wv), _mm256_fmadd_ps(xo, bf_odd(wv), acc[t]));
        }
    }
    _mm256_storeu_ps(out, hsum8x8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]));
}

// The same over int8 rows, x already int8 (signed, ld bytes, scale sa):
// exact integer sums, then float(Σ) · sw · sa.
static AVX2 void group_i8(const int8_t *x, float sa, const moa_rows *w, const int *ids,
                          float *out) {
    const int8_t *wr[GROUP];
    for (int t = 0; t < GROUP; t++) wr[t] = w->q + (size_t)ids[t] * w->ld;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[GROUP];
    for (int t = 0; t < GROUP; t++) acc[t] = _mm256_setzero_si256();
    for (int kk = 0; kk < w->ld; kk += 32) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + kk)), xa = _mm256_abs_epi8(xv);
        for (int t = 0; t < GROUP; t++)
            acc[t] = dot_i8(acc[t], xv, xa, _mm256_loadu_si256((const __m256i *)(wr[t] + kk)), ones);
    }
    int32_t s[GROUP];
    _mm256_storeu_si256((__m256i *)s, hsum8x8_i32(acc));
    for (int t = 0; t < GROUP; t++) out[t] = (float)s[t] * w->qs[ids[t]] * sa;
}

// Sixteen vectors' lane sums in one vector: lane j = Σ of v[j]'s lanes.
// Integer adds: the order cannot matter.
INLINE VNNI __m512i hsum16x16_i32(const __m512i *v) {
    __m512i u[8], w[4];
    for (int i = 0; i < 8; i++)
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        w[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * i], u[2 * i + 1]),
                                _mm512_unpackhi_epi64(u[2 * i], u[2 * i + 1]));
    // each 128-bit lane L of w[i] holds lane L's sums of v[4i..4i+3]
    __m512i y01 = _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], 0x88),
                                   _mm512_shuffle_i32x4(w[0], w[1], 0xDD));
    __m512i y23 = _mm512_add_epi32(_mm512_shuffle_i32x4(w[2], w[3], 0x88),
                                   _mm512_shuffle_i32x4(w[2], w[3], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(y01, y23, 0x88),
                            _mm512_shuffle_i32x4(y01, y23, 0xDD));
}

// The int8 rows product on AVX512_VNNI: sixteen chosen rows at a time,
// each row of A (+ 128, mc rows of ld bytes) against them, the sixteen
// sums in one vector; then as group_i8 (the same integers, the same
// float steps) and the log-sum-exp folded in registers.
static VNNI void rows_i8_avx512(int mc, const uint8_t *xa, const float *sa, const moa_rows *w,
                                const int *ids, int nid, float *c, int ldc, moa_lse16 *ls) {
    int ld = w->ld;
    for (int g = 0; g < nid; g += 16) {
        int ng = min_i(16, nid - g);
        __mmask16 mk = (__mmask16)(ng >= 16 ? 0xFFFF : (1u << ng) - 1);
        const int8_t *wr[16];
        int gi[16];
        for (int t = 0; t < 16; t++) {
            gi[t] = ids[g + min_i(t, ng - 1)];
            wr[t] = w->q + (size_t)gi[t] * ld;
        }
        __m512i idv = _mm512_loadu_si512(gi);
        __m512i qsum = _mm512_i32gather_epi32(idv, w->qsum, 4);
        __m512 qs = _mm512_i32gather_ps(idv, w->qs, 4);
        for (int i = 0; i < mc; i++) {
            const uint8_t *x = xa + (size_t)i * ld;
            __m512i acc[16];
            for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_si512();
            for (int kk = 0; kk < ld; kk += 64) {
                __m512i xv = _mm512_loadu_si512(x + kk);
                for (int t = 0; t < 16; t++)
                    acc[t] = _mm512_dpbusd_epi32(acc[t], xv, _mm512_loadu_si512(wr[t] + kk));
            }
            __m512i s = _mm512_sub_epi32(hsum16x16_i32(acc), qsum);
            __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), qs), _mm512_set1_ps(sa[i]));
            _mm512_mask_storeu_ps(c + (size_t)i * ldc + g, mk, f);
            if (ls) lse16_add(&ls[i], f, f, mk, 0);
        }
    }
}

static AVX2 void gemm_rows(int m, const float *a, int lda, const moa_rows *w, const int *ids,
                          int nid, float *c, int ldc, float *lse) {
    moa_count_flops(2ull * m * nid * w->k);
    size_t elem = w->q ? 1 : w->b ? 2 : 0;
    int rows = elem ? min_i(16, (int)(QBUF / ((size_t)w->ld * elem))) : 16;
    if (rows < 1) rows = 1;
    _Alignas(64) unsigned char xb[QBUF];
    float sa[16];
    moa_lse_acc ls[16];
    int vnni = w->q && moa_q_avx512(MOA_PREC_INT8);
    lse_rows l16;
    for (int i0 = 0; i0 < m; i0 += rows) {
        int mc = min_i(rows, m - i0);
        for (int i = 0; i < mc; i++) {
            const float *x = a + (size_t)(i0 + i) * lda;
            if (w->q) sa[i] = quant_act(x, w->k, w->ld, vnni, xb + (size_t)i * w->ld);
            else if (w->b) bf16_act(x, w->k, w->ld, (uint16_t *)xb + (size_t)i * w->ld);
            ls[i] = moa_lse_start();
        }
        if (vnni) {
            if (lse) lse_rows_start(&l16, mc, 1);
            rows_i8_avx512(mc, xb, sa, w, ids, nid, c + (size_t)i0 * ldc, ldc, lse ? l16.v : NULL);
            if (lse) lse_rows_value(&l16, mc, 1, lse + i0);
            continue;
        }
        for (int j0 = 0; j0 < nid; j0 += BLOCK) {
            int jn = min_i(BLOCK, nid - j0);
            for (int g = 0; g < jn; g += GROUP) {
                // a short last group repeats its last id and keeps what it needs
                int gi[GROUP], ng = min_i(GROUP, jn - g);
                for (int t = 0; t < GROUP; t++) gi[t] = ids[j0 + g + min_i(t, ng - 1)];
                for (int i = 0; i < mc; i++) {
                    float out[GROUP];
                    if (w->q) group_i8((const int8_t *)xb + (size_t)i * w->ld, sa[i], w, gi, out);
                    else if (w->b) group_bf16((const uint16_t *)xb + (size_t)i * w->ld, w, gi, out);
                    else group_f32(a + (size_t)(i0 + i) * lda, w, gi, out);
                    memcpy(c + (size_t)(i0 + i) * ldc + j0 + g, out, (size_t)ng * sizeof *out);
                }
            }
            if (lse)
                for (int i = 0; i < mc; i++)
                    moa_lse_add(&ls[i], c + (size_t)(i0 + i) * ldc + j0, jn);
        }
        if (lse)
            for (int i = 0; i < mc; i++) lse[i0 + i] = moa_lse_value(&ls[i]);
    }
}

void moa_gemm_rows(int m, const float *a, int lda, const moa_rows *w, const int *ids, int nid,
                   float *c, int ldc, float *lse) {
    MOA_ASSERT(moa_q_available() && (w->f || w->b || w->q));
    if (m > 0) gemm_rows(m, a, lda, w, ids, nid, c, ldc, lse);
}

void moa_gemm_qin(const moa_qin *in, const int *rows, int m, const moa_packed *w, float alpha,
                  float beta, float *c, int ldc) {
    MOA_ASSERT((beta == 0.0f || beta == 1.0f) && w->k == in->k &&
               (in->prec == MOA_PREC_INT8 ? w->pq != NULL : w->pb != NULL));
    if (m <= 0 || w->n <= 0) return;
    if (w->k == 0) {
        empty_k(m, w->n, beta, c, ldc, NULL);
        return;
    }
    moa_count_flops(2ull * m * w->n * w->k);
    int load_c = beta != 0.0f;
    if (in->prec == MOA_PREC_INT8) {
        // the chunk kernels read rows kp apart: gather (or point at) them
        int kp = pad_to(w->k, 4), rows_n = chunk_rows((size_t)kp);
        uint8_t qa[QBUF] __attribute__((aligned(64)));
        float ra[QROWS];
        for (int i0 = 0; i0 < m; i0 += rows_n) {
            int mc = min_i(rows_n, m - i0);
            for (int i = 0; i < mc; i++) {
                int r = rows ? rows[i0 + i] : i0 + i;
                memcpy(qa + (size_t)i * kp, (const uint8_t *)in->q + (size_t)r * in->kp, (size_t)kp);
                ra[i] = in->scale[r] * alpha;
            }
            float *cc = c + (size_t)i0 * ldc;
            if (in->avx512) i8_chunk_avx512(mc, qa, kp, ra, w, load_c, cc, ldc, NULL);
            else i8_chunk_avx2(mc, qa, kp, ra, w, load_c, cc, ldc, NULL);
        }
    } else {
        int kr = bf16_kernel(MOA_QK_AUTO), wide = kr == MOA_QK_AVX512F;
        int kp = pad_to(w->k, 2);
        int rows_n = chunk_rows((size_t)kp * (wide ? sizeof(float) : sizeof(uint16_t)));
        _Alignas(64) unsigned char buf[QBUF];
        uint16_t *qa = (uint16_t *)buf;
        float *fa = (float *)buf;
        for (int i0 = 0; i0 < m; i0 += rows_n) {
            int mc = min_i(rows_n, m - i0);
            for (int i = 0; i < mc; i++) {
                int r = rows ? rows[i0 + i] : i0 + i;
                const uint16_t *src = (const uint16_t *)in->q + (size_t)r * in->kp;
                if (wide)
                    for (int j = 0; j < kp; j++) fa[(size_t)i * kp + j] = bf16_f32(src[j]);
                else memcpy(qa + (size_t)i * kp, src, (size_t)kp * sizeof(uint16_t));
            }
            float *cc = c + (size_t)i0 * ldc;
            if (wide) bff_chunk_avx512(mc, fa, kp, alpha, w, load_c, cc, ldc, NULL);
            else if (kr == MOA_QK_AVX512) bf_chunk_avx512(mc, qa, kp, alpha, w, load_c, cc, ldc, NULL);
            else bf_chunk_avx2(mc, qa, kp, alpha, w, load_c, cc, ldc, NULL);
        }
    }
}
