// moa_impl.h — engine internals shared by model/*.c (not a public header).
#ifndef MOA_IMPL_H
#define MOA_IMPL_H

#include <stdio.h>
#include <stdlib.h>

#include "moa_model.h"

#define MOA_ASSERT(c)                                                       \
    do {                                                                    \
        if (!(c)) {                                                         \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__,      \
                    __LINE__, #c);                                          \
            abort();                                                        \
        }                                                                   \
    } while (0)

// Limits that protect the loader from absurd configs (spec §3 "out of range").
#define MOA_MAX_DIM 16384
#define MOA_MAX_LAYERS 64
#define MOA_MAX_EXPERTS 256
#define MOA_MAX_VOCAB 1048576
#define MOA_MAX_POSITIONS 65536
#define MOA_MAX_BEAM 16

// --- weights: const views into the mmap (or into widened copies) ---------

typedef struct moa_ln_w {
    const float *w, *b;             // d
} moa_ln_w;

typedef struct moa_attn_w {
    const float *k_w, *k_b;         // h×d, h (bias NULL unless attention_bias)
    const float *v_w, *v_b;         // h×d, h
    const float *w_gate;            // d×E   router
    const float *q_experts;         // E×d×h per-expert query projection
    const float *o_experts;         // E×h×d per-expert output projection
} moa_attn_w;

typedef struct moa_ffn_w {
    const float *fc1_w, *fc1_b;     // ffn×d, ffn
    const float *fc2_w, *fc2_b;     // d×ffn, d
} moa_ffn_w;

typedef struct moa_enc_layer {
    moa_attn_w self_attn;
    moa_ln_w self_attn_ln;
    moa_ffn_w ffn;
    moa_ln_w final_ln;
} moa_enc_layer;

typedef struct moa_dec_layer {
    moa_attn_w self_attn;
    moa_ln_w self_attn_ln;
    moa_attn_w cross_attn;          // "encoder_attn" in the file
    moa_ln_w cross_attn_ln;
    moa_ffn_w ffn;
    moa_ln_w final_ln;
} moa_dec_layer;

struct moa_model {
    moa_config cfg;
    char dir[4096];

    void *map;                      // mmap of model.safetensors
    size_t map_len;
    float **owned;                  // widened / realigned copies, freed on close
    int n_owned, cap_owned;

    const float *enc_embed;         // V×d
    const float *dec_embed;         // V×d (== enc_embed when shared)
    const float *out_proj;          // V×d (== dec_embed when shared)
    moa_enc_layer *enc;             // encoder_layers
    moa_dec_layer *dec;             // decoder_layers
    moa_ln_w enc_final_ln;          // pre-norm only, else NULLs
    moa_ln_w dec_final_ln;

    float *positions;               // (max_positions + pad_id + 2) × d sinusoids
    int n_positions;                // rows in positions
    size_t f32_bytes;               // float32 size of all weights used
};

// --- loader pieces (model/moa_load.c), exposed for tests ---------------

// Parses config.json text into cfg with defaults and range checks.
// 0, or MOA_EFORMAT with a message naming `path` and the problem.
int moa_config_parse(const char *json, size_t len, const char *path,
                     moa_config *cfg, char *err, size_t errlen);

// Fills m->positions (spec §2, §5: computed in double, rounded once).
int moa_positions_init(moa_model *m);

// IEEE half / bfloat16 → float32.
float moa_f16_to_f32(uint16_t h);
float moa_bf16_to_f32(uint16_t h);

// --- kernels (model/moa_kernels.c) --------------------------------------

// C (m×n) = alpha * op(A) (m×k) · op(B) (k×n) + beta * C, row-major.
// The only entry to BLAS: every matrix product goes through here.
void moa_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta,
              float *c, int ldc);
// The same product as three plain loops, for tests.
void moa_gemm_naive(int trans_a, int trans_b, int m, int n, int k,
                    float alpha, const float *a, int lda, const float *b,
                    int ldb, float beta, float *c, int ldc);

#endif
