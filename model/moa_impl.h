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

// A weight matrix W (n×k, row-major, as stored) and, when the packed AVX-512
// path runs (moa_pack_available), a copy packed once at load for
// moa_gemm_packed (model/moa_packed.c); p is NULL otherwise.
//
// With precision bf16 or int8 (moa_load_opts) the copy is made in that type
// instead, whatever the CPU (model/moa_quant.c picks the kernel at run time):
// pb or pq is set and p stays NULL. Products with such a weight never go to
// OpenBLAS.
typedef struct moa_packed {
    const float *w;                 // the stored tensor: n×k, or k×n when kn
    const float *p;                 // moa_pack_floats(n, k), 64-byte aligned
    int n, k;
    int kn;                         // w is stored k×n (per-expert Q and O)
    const uint16_t *pb;             // bf16 panels (moa_pack_bf16), or NULL
    const int8_t *pq;               // int8 panels (moa_pack_i8), or NULL
    const float *qs;                // int8: n scales, max |row| / 127
    const int32_t *qsum;            // int8: n values, 128 · Σ_k of the row's int8s
} moa_packed;

// A weight matrix W (n×k) as rows, for products over chosen rows (the
// vocabulary shortlist's output projection: moa_gemm_rows). One of f, b, q
// is set, by precision; rows are ld elements apart (zero-padded past k).
typedef struct moa_rows {
    int n, k, ld;
    const float *f;                 // f32 rows (the stored tensor: ld == k)
    const uint16_t *b;              // bf16 rows, ld a multiple of 16
    const int8_t *q;                // int8 rows, ld a multiple of 64
    const float *qs;                // int8: n scales, max |row| / 127
    const int32_t *qsum;            // int8: n values, 128 · Σ_k of the row's int8s
} moa_rows;

typedef struct moa_ln_w {
    const float *w, *b;             // d
} moa_ln_w;

typedef struct moa_attn_w {
    const float *k_w, *k_b;         // h×d, h (bias NULL unless attention_bias)
    const float *v_w, *v_b;         // h×d, h
    const float *w_gate;            // d×E   router
    const float *q_experts;         // E×d×h per-expert query projection
    const float *o_experts;         // E×h×d per-expert output projection
    moa_packed k_p, v_p;            // k_w, v_w for the K/V products
    moa_packed *q_p, *o_p;          // E each: q_experts[e] (d×h), o_experts[e] (h×d)
} moa_attn_w;

typedef struct moa_ffn_w {
    const float *fc1_w, *fc1_b;     // ffn×d, ffn
    const float *fc2_w, *fc2_b;     // d×ffn, d
    moa_packed fc1_p, fc2_p;
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

// The vocabulary shortlist (DIR/shortlist.tsv, spec §9): the pieces always
// among a sentence's candidates (beside the specials 0-3, always added), and
// each source piece's target pieces.
typedef struct moa_shortlist {
    int *always;                    // n_always ids
    int n_always;
    int *off;                       // vocab_size + 1: piece s lists ids[off[s] .. off[s+1])
    int *ids;
    int n_sources;                  // source pieces with a line in the file
} moa_shortlist;

struct moa_model {
    moa_config cfg;
    char dir[4096];

    void *map;                      // mmap of model.safetensors
    size_t map_len;
    float **owned;                  // widened / realigned copies, freed on close
    int n_owned, cap_owned;
    int n_packed;                   // of the owned: packed weight copies
    moa_packed *expert_p;           // the arrays q_p / o_p point into

    const float *enc_embed;         // V×d
    const float *dec_embed;         // V×d (== enc_embed when shared)
    const float *out_proj;          // V×d (== dec_embed when shared)
    moa_packed out_p;               // out_proj for the logits product
    moa_enc_layer *enc;             // encoder_layers
    moa_dec_layer *dec;             // decoder_layers
    moa_ln_w enc_final_ln;          // pre-norm only, else NULLs
    moa_ln_w dec_final_ln;

    float *positions;               // (max_positions + pad_id + 2) × d sinusoids
    int n_positions;                // rows in positions
    size_t f32_bytes;               // float32 size of all weights used
    moa_precision precision;        // of the packed products (moa_load_opts)
    size_t weight_bytes;            // the packed products' weights in that precision
    moa_shortlist *shortlist;       // NULL: every step over the whole vocabulary
    moa_rows out_rows;              // with a shortlist: out_proj as rows, in the precision
};

// Max bytes of a shortlist file.
#define MOA_SHORTLIST_MAX_BYTES ((size_t)256 << 20)
// Parses shortlist text (spec §9) for a vocabulary of V pieces; path names
// the file in messages. NULL with a message on failure. Exposed for tests.
moa_shortlist *moa_shortlist_parse(const char *text, size_t len, int V, const char *path,
                                   char *err, size_t errlen);
void moa_shortlist_free(moa_shortlist *s);

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
// out (n×E) = x (n×d) · w (d×E) with each value summed in a fixed order
// (row-wise FMA chains): the same bits for a row in any batch.
void moa_gemm_rowwise(int n, int E, int d, const float *x, const float *w, float *out);
// Adds n to the process-wide FLOP counter (moa_flop_count).
void moa_count_flops(uint64_t n);
// The same product as three plain loops, for tests.
void moa_gemm_naive(int trans_a, int trans_b, int m, int n, int k,
                    float alpha, const float *a, int lda, const float *b,
                    int ldb, float beta, float *c, int ldc);

// Log-sum-exp of a row whose values arrive in pieces (a product's column
// tiles, folded in while they are still in L1): the largest value so far and
// Σ exp(x - mx) in double, rescaled when mx grows. Start from
// moa_lse_start(); moa_lse_value gives mx + log(sum), -inf when every value
// was -inf. Against the two-pass moa_logsumexp_rows: ~1e-7 relative.
typedef struct moa_lse_acc {
    float mx;
    double sum;
} moa_lse_acc;
static inline moa_lse_acc moa_lse_start(void) {
    moa_lse_acc a = {-__builtin_inff(), 0.0};
    return a;
}
void moa_lse_add(moa_lse_acc *a, const float *x, int n);
float moa_lse_value(const moa_lse_acc *a);

// 1 when the packed AVX-512 path runs on this CPU (and MOA_AVX512 is not 0).
int moa_pack_available(void);
size_t moa_pack_floats(int n, int k);
void moa_pack_weights(float *dst, const float *w, int n, int k);     // W n×k
void moa_pack_weights_kn(float *dst, const float *b, int k, int n);  // B = Wᵀ, k×n
// C (m×n) = alpha · A (m×k) · Wᵀ + beta · C, beta 0 or 1, one thread. Each
// element is one FMA chain per 256-k block: rows do not depend on m.
void moa_gemm_packed(int m, const float *a, int lda, const moa_packed *w, float alpha,
                     float beta, float *c, int ldc);
// The same with lse[i] = log-sum-exp of row i of C (alpha 1, beta 0), folded
// in tile by tile as the last k block of each panel is written.
void moa_gemm_packed_lse(int m, const float *a, int lda, const moa_packed *w, float *c,
                         int ldc, float *lse);
// The same product through whichever path serves: the bf16 or int8 kernel
// when w->pb or w->pq is set; packed f32 when w->p is set and OpenBLAS runs
// one thread (the packed kernel is single-threaded); else OpenBLAS with w->w.
void moa_gemm_w(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                float *c, int ldc);
// C = A·Wᵀ (alpha 1, beta 0) through moa_gemm_w's path, and lse[i] = the
// log-sum-exp of row i: in the kernels' epilogues, or after OpenBLAS in a
// separate pass (moa_logsumexp_rows).
void moa_gemm_w_lse(int m, const float *a, int lda, const moa_packed *w, float *c, int ldc,
                    float *lse);

// --- bf16 and int8 weights (model/moa_quant.c) ------------------------------
//
// Converted once at load from the F32 weights. bf16: weights and the
// activations of each product rounded to bfloat16 (nearest, ties to even),
// products summed in float32: AVX512_BF16's VDPBF16PS where the CPU has it,
// else AVX2 (each pair added as VDPBF16PS does, odd element first: the same
// bits). int8: each output row of W gets its own scale (max |w| / 127,
// symmetric), each row of activations too, at run time; the integer dot
// products are exact (AVX512_VNNI, or AVX2 without it: the same bits), then
// scaled back to float32. Panels as moa_pack_weights: 32 output columns,
// k-major, k grouped in pairs (bf16) or fours (int8) for the dot-product
// instructions.

// Which kernel a bf16/int8 product runs: MOA_QK_AUTO (int8: AVX512_VNNI
// when the CPU has it and MOA_AVX512 is not 0, else AVX2; bf16: the faster
// of AVX512_BF16 and the AVX-512 FMA kernel, measured once, or AVX2), or one
// of them (tests): MOA_QK_AVX512 only where moa_q_avx512(prec) says 1,
// MOA_QK_AVX512F (bf16 only) where moa_q_bf16_fma512() does. Every kernel of
// a precision gives the same bits.
enum { MOA_QK_AUTO = 0, MOA_QK_AVX2 = 1, MOA_QK_AVX512 = 2, MOA_QK_AVX512F = 3 };
int moa_q_bf16_fma512(void);
// 1 when the AVX-512 kernel of a precision (MOA_PREC_BF16: AVX512_BF16,
// MOA_PREC_INT8: AVX512_VNNI) runs here.
int moa_q_avx512(moa_precision prec);
// 1 when the CPU has AVX2 and FMA, which every bf16/int8 kernel and
// moa_gemm_rows need (the loader refuses those settings otherwise).
int moa_q_available(void);
// What the products of a precision run on here, for logs.
const char *moa_q_kernel_name(moa_precision prec);
uint16_t moa_f32_to_bf16(float x);  // nearest, ties to even (finite x)

size_t moa_pack_bf16_bytes(int n, int k);
void moa_pack_bf16(uint16_t *dst, const float *w, int n, int k, int kn);
size_t moa_pack_i8_bytes(int n, int k);
size_t moa_pack_i8_cols(int n);  // n rounded up to whole panels
// qs, qsum: moa_pack_i8_cols(n) values each (zero past n). w is n×k, or k×n when kn.
void moa_pack_i8(int8_t *dst, float *qs, int32_t *qsum, const float *w, int n, int k, int kn);
// Row layouts for moa_gemm_rows: n rows of moa_rows_ld(prec, k) elements.
int moa_rows_ld(moa_precision prec, int k);
void moa_rows_bf16(uint16_t *dst, const float *w, int n, int k);
void moa_rows_i8(int8_t *dst, float *qs, int32_t *qsum, const float *w, int n, int k);

// C (m×n) = alpha · A (m×k) · Wᵀ + beta · C (beta 0 or 1) with w->pb / w->pq,
// one thread; lse (NULL: not wanted) as moa_gemm_w_lse. A row's result does
// not depend on the other rows of the call.
void moa_gemm_bf16(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                   float *c, int ldc, float *lse, int kernel);
void moa_gemm_i8(int m, const float *a, int lda, const moa_packed *w, float alpha, float beta,
                 float *c, int ldc, float *lse, int kernel);
// Activations converted once for several bf16/int8 products over the same
// rows (an attention block's K, V and experts' Q all read the same
// normalised rows; the cross-attention K/V of every decoder layer the
// encoder's output): each row exactly as moa_gemm_bf16 / moa_gemm_i8 would
// convert it (MOA_QK_AUTO's kernel), so results are the same bits.
typedef struct moa_qin {
    int n, k, kp;                   // rows, values per row, stride of q
    moa_precision prec;
    int avx512;                     // int8: stored + 128 (VPDPBUSD's unsigned operand)
    void *q;                        // n × kp int8 (or uint8) / bf16 values
    float *scale;                   // int8: n scales
} moa_qin;
// Bytes of moa_qin_make's buffer for n rows of k (0 for MOA_PREC_F32).
size_t moa_qin_bytes(moa_precision p, int n, int k);
void moa_qin_make(moa_qin *in, moa_precision p, int n, const float *x, int ldx, int k,
                  void *buf);
// C (m×n) = alpha · A · Wᵀ + beta · C where row i of A is prepared row
// rows[i] (rows NULL: row i); w->pb or w->pq as in->prec.
void moa_gemm_qin(const moa_qin *in, const int *rows, int m, const moa_packed *w, float alpha,
                  float beta, float *c, int ldc);

// The product over chosen rows of W: C[i][j] = A_i · W[ids[j]] for i < m,
// j < nid, and lse[i] over those nid values (NULL: not wanted). Each value is
// summed in a fixed order of its own (eight lanes, then a fixed tree), so it
// depends on neither m nor the other ids. int8 rows run on AVX512_VNNI
// where the CPU has it (the same bits as AVX2: exact integer sums).
void moa_gemm_rows(int m, const float *a, int lda, const moa_rows *w, const int *ids, int nid,
                   float *c, int ldc, float *lse);

// y = LayerNorm(x) * w + b over rows of width d (y may equal x).
void moa_layernorm(float *y, const float *x, int n, int d, const float *w,
                   const float *b, float eps);
// In place: row := row - logsumexp(row), for n rows of width v.
void moa_log_softmax(float *x, int n, int v);
// lse[i] = logsumexp(row i) for n rows of width v; rows left as they are
// (the decoder never needs the normalised row, only lse and a few entries).
void moa_logsumexp_rows(const float *x, int n, int v, float *lse);
// In place softmax of one row of width v.
void moa_softmax(float *x, int v);
float moa_dot(const float *a, const float *b, int n);
// y += a * x
void moa_axpy(float *y, float a, const float *x, int n);
// Attention of nq queries (q: nq × h, e.g. one row's k experts) over the
// same m cached positions: out_j = softmax(q_j · Kᵀ) · V (q already
// scaled). scores: nq × m scratch. With AVX2 and h % 8 == 0 two queries
// share each pass over K and V, four positions at a time; each score is
// eight lane sums added in a fixed tree, so it depends on nothing but q_j
// and K (not on nq, m or the batch). Against the double loop: float
// rounding (tests: 1e-5 relative).
void moa_attend(const float *q, int nq, const float *K, const float *V, int m, int h,
                float *scores, float *out);
void moa_relu(float *x, size_t n);
void moa_gelu(float *x, size_t n);  // exact erf form (spec §5)

// --- search pieces (model/moa_search.c) -------------------------------------

// One candidate continuation: hypothesis `hyp` (its rank among the live ones)
// extended by `token`; score = hyp score (double) + lp.
typedef struct moa_cand {
    double score;
    int hyp;
    int token;
    float lp;
} moa_cand;

// Sets the tokens that may not be produced at this step to -inf (spec §4):
// pad and bos always, unk with no_unk, eos while n_tokens < min_length,
// everything but eos once n_tokens == max_len. The row holds v values whose
// first four are the specials (the whole vocabulary, or a shortlist's
// candidates).
void moa_mask_row(float *lp, int v, const moa_config *cfg, const moa_search_opts *o,
                  int n_tokens, int max_len);

// The best `want` candidates over n_hyp rows of v logits, ranked by score
// (ties: lower hyp rank, then lower token id). A token's log-prob is
// logit - lse[row] computed in float (lse NULL: the rows are log-probs
// already). Candidates with score -inf are left out. Returns how many were
// written to out (<= want).
int moa_beam_candidates(const float *logits, int n_hyp, int v, const float *lse,
                        const double *hyp_score, int want, moa_cand *out);

// xoshiro256** seeded through splitmix64 (spec §6 names
// it: the sampling rule depends on it).
typedef struct moa_rng {
    uint64_t s[4];
} moa_rng;
void moa_rng_seed(moa_rng *r, uint64_t seed);
uint64_t moa_rng_next(moa_rng *r);
double moa_rng_uniform(moa_rng *r);  // [0, 1), 53 bits

// Draws a token from one row of (masked) logits or log-probs (the same
// distribution) per spec §6: divide by the temperature, keep top-k, then the smallest most-probable set reaching top-p
// (ties lower id first), renormalise, draw. scratch: 2·v floats + v ints.
int moa_sample_token(const float *lp, int v, const moa_search_opts *o,
                     moa_rng *rng, float *scratch, int *scratch_idx);

#endif
