// moa_model.h — the MoA translation engine: load a model directory, translate, score.
//
// Usage:
//
//     char err[512];
//     moa_model *m = moa_model_load("weights/moa-en-de", err, sizeof err);
//     if (!m) { fprintf(stderr, "%s\n", err); return 1; }
//     moa_session *s = moa_session_create(m, 64, err, sizeof err);
//     moa_search_opts o;
//     moa_search_opts_default(&o);
//     o.beam_size = 8;                               // what the user asked for
//     moa_search_opts_normalise(&o, MOA_OPT_GIVEN_BEAM, moa_model_config(m));
//     int id = moa_session_add(s, src_ids, src_len, &o, NULL, err, sizeof err);
//     while (moa_session_live(s) > 0) {
//         moa_session_step(s);                       // one decoder step for all
//         moa_result r;
//         while (moa_session_take(s, &r) == 1) {     // finished sentences
//             ... r.hyps[0].tokens ...
//             moa_result_clear(&r);
//         }
//     }
//     moa_session_free(s);
//     moa_model_free(m);
//
// Threading: a moa_model is read-only after load and may be shared by any
// number of threads. A moa_session (scratch buffers, KV caches, live
// sentences) belongs to one thread at a time.
//
// Model format, maths and decoding rules: docs/moa-spec.md ("spec §N" in
// the engine's comments is a section of that page).
#ifndef MOA_MODEL_H
#define MOA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "moa_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

// --- errors ---------------------------------------------------------------

// 0 or a negative moa_errno (MOA_EINVAL, MOA_ENOMEM, ...), and moa_strerror:
// common/moa_errors.h, shared with the tokenizer.

// --- model ----------------------------------------------------------------

typedef enum { MOA_ACT_RELU = 0, MOA_ACT_GELU = 1 } moa_activation;

typedef struct moa_config {
    int d_model;
    int encoder_layers;
    int decoder_layers;
    int ffn_dim;
    moa_activation activation;
    int normalize_before;   // 0 post-norm, 1 pre-norm
    int num_experts;        // E
    int top_k;              // k
    int head_dim;           // h
    int attention_bias;
    int vocab_size;
    int share_embeddings;
    int scale_embedding;
    int max_positions;
    float layernorm_eps;
    int bos_id, pad_id, eos_id, unk_id;
    int decoder_start_id;
    char source_lang[32];
    char target_lang[32];
    char name[128];
} moa_config;

typedef struct moa_model moa_model;

// Arithmetic of the products with fixed weights (FFN, K/V, each expert's Q
// and O, the output projection), chosen at load; the model directory stays
// float32 and the weights are converted once (docs/moa-spec.md §9).
typedef enum {
    MOA_PREC_F32 = 0,       // float32 (the reference)
    MOA_PREC_BF16 = 1,      // bfloat16 weights and inputs, float32 sums
    MOA_PREC_INT8 = 2,      // int8 weights (scale per output row), int8 inputs
} moa_precision;

// Loads a model directory (config.json, model.safetensors; vocab.txt and
// sentencepiece.model are the tokenizer's). Returns NULL on failure and writes
// a message naming the file and the problem into err (may be NULL).
// Thread-safe; the returned model is read-only and shareable.
// moa_model_load uses the defaults of moa_load_opts_default (float32).
moa_model *moa_model_load(const char *dir, char *err, size_t errlen);
void moa_model_free(moa_model *m);  // NULL is a no-op

// How to load: what is chosen once per process, not per sentence.
typedef struct moa_load_opts {
    moa_precision precision;    // default MOA_PREC_F32; bf16 and int8 need AVX2
    // 1: read DIR/shortlist.tsv (a missing file is an error) and run each
    // sentence's output projection and softmax over its candidate set
    // (spec §9): scores are then normalised over that set. Default 0.
    int shortlist;
} moa_load_opts;
void moa_load_opts_default(moa_load_opts *o);
moa_model *moa_model_load_opts(const char *dir, const moa_load_opts *o, char *err,
                               size_t errlen);

// "f32", "bf16", "int8"; and back (0, or MOA_EINVAL for anything else).
const char *moa_precision_name(moa_precision p);
int moa_precision_parse(const char *s, moa_precision *out);

const moa_config *moa_model_config(const moa_model *m);
const char *moa_model_dir(const moa_model *m);
// Bytes the weights take as float32 (what a fully widened model occupies).
size_t moa_model_f32_bytes(const moa_model *m);
moa_precision moa_model_precision(const moa_model *m);
// 1 when the model decodes over per-sentence candidate sets (and then the
// number of source pieces the file lists and of its always-candidates, when
// the pointers are not NULL), else 0.
int moa_model_shortlist(const moa_model *m, int *n_sources, int *n_always);
// Bytes of the converted weights of the products moa_load_opts.precision
// applies to (float32: their float32 size).
size_t moa_model_weight_bytes(const moa_model *m);
// What the products with fixed weights run on, in words, for logs: the
// precision and the kernel this CPU gets (after moa_set_num_threads).
const char *moa_model_kernels(const moa_model *m);

// --- threads ----------------------------------------------------------------

// Sets the number of BLAS threads for the whole process (call once, early).
void moa_set_num_threads(int n);
int moa_get_num_threads(void);
const char *moa_blas_corename(void);
// Which matrix-product path runs: "OpenBLAS", or the engine's own AVX-512
// kernel on weights packed at load (chosen at run time from the CPU; the
// environment variable MOA_AVX512=0 turns it off) plus OpenBLAS for the rest.
// With more than one OpenBLAS thread the packed kernel stands aside.
const char *moa_gemm_path(void);
// Floating-point operations the engine has done in this process (matrix
// products and attention; 2 per multiply-add), for benchmarks. Thread-safe.
uint64_t moa_flop_count(void);

// --- search options ---------------------------------------------------------

typedef struct moa_search_opts {
    int beam_size;          // 1..16, default 4 (1 = greedy)
    int num_hypotheses;     // 1..beam_size, default 1
    float length_penalty;   // 0..10, default 1.0
    int max_length;         // 0 = spec default per sentence; else 1..max_positions-2
    int min_length;         // default 1
    int no_unk;             // forbid <unk>
    int sampling_topk;      // 0 = no sampling; 0..V
    float sampling_topp;    // (0,1], default 1
    float sampling_temperature;  // (0,100], default 1
    uint64_t seed;          // PRNG seed (sampling), default 0; moa_session_add uses it
                            // as is, so the caller adds the sentence index
    int trace;              // record routing traces for the returned hypotheses
    int token_logprobs;     // record per-token log-probs of the returned hypotheses
    int attention;          // record the cross-attention of the returned hypotheses
} moa_search_opts;

void moa_search_opts_default(moa_search_opts *o);

// Bits of moa_search_opts_normalise's `given`: the fields the caller set
// explicitly (a request field, a command-line flag).
#define MOA_OPT_GIVEN_BEAM 1u   // beam_size
#define MOA_OPT_GIVEN_SEED 2u   // seed

// Completes options the way the CLI and the server read them (spec §6), the
// one place those defaults live. Start from moa_search_opts_default, set what
// the user gave, then call this:
// - top-p below 1 without top-k samples from the whole vocabulary: top-k = V;
// - options that ask for sampling (top-k > 0, top-p < 1, temperature != 1)
//   make beam_size 1 unless it was given (so top-k 1 alone is greedy);
// - options that sample (moa_search_opts_sampling) get a random seed in
//   0..2^63-1 unless it was given.
// Checks nothing: moa_search_opts_check (or moa_session_add) does that after
// the caller's own adjustments. Thread-safe.
void moa_search_opts_normalise(moa_search_opts *o, unsigned given,
                               const moa_config *cfg);

// Whether these options sample (spec §6): top-k other than 1, and top-k > 1,
// top-p < 1 or a temperature other than 1. Top-k 1 is greedy: with beam_size
// above 1 it is beam search. The one rule the engine, the CLI and the server
// follow.
int moa_search_opts_sampling(const moa_search_opts *o);

// Beam rows a sentence with these options takes in a session: 1 when it
// samples, else beam_size. moa_session_add reserves exactly this many (and
// 1 for forced decoding); a caller that books a session's rows (the
// server's scheduler, the CLI) uses it too.
int moa_search_opts_rows(const moa_search_opts *o);

// Checks options against spec §6 for a model; 0 or MOA_EINVAL with a message.
int moa_search_opts_check(const moa_search_opts *o, const moa_config *cfg,
                          char *err, size_t errlen);

// --- results ----------------------------------------------------------------

// Routing trace of one hypothesis (spec §7). Arrays are row-major:
// enc_*[layer][src_pos][k], dec_self_*/dec_cross_*[layer][t][k] with
// t = 0..n_tokens-1 (decoder input position t produced output token t).
// Margins are per [layer][pos]: k-th minus (k+1)-th router logit
// (+INFINITY when k == E).
typedef struct moa_trace {
    int layers_enc, layers_dec, k;
    int src_len, tgt_len;
    int *enc_experts;   float *enc_gates;   float *enc_margin;
    int *dself_experts; float *dself_gates; float *dself_margin;
    int *dcross_experts; float *dcross_gates; float *dcross_margin;
} moa_trace;

typedef struct moa_hypothesis {
    int *tokens;            // output ids, eos included when finished (owned)
    int n_tokens;
    float *token_logprobs;  // n_tokens values, or NULL if not asked for
    double log_prob;        // raw sum, eos included
    double score;           // log_prob / n_tokens^length_penalty
    moa_trace *trace;       // NULL unless asked for
    // Cross-attention (word alignment), NULL unless asked for (opts.attention):
    // [decoder layer][t][attention_cols] floats, row t = where output token t
    // looked in the source (attention_cols = source ids + eos, eos last), the
    // k routed heads of the layer averaged with their gates. Each row sums to 1.
    float *attention;
    int attention_layers, attention_cols;
} moa_hypothesis;

typedef struct moa_result {
    int id;                 // what moa_session_add returned
    void *user;             // what the caller passed to moa_session_add
    // 0 when the model gave no usable log-prob at some step: every token
    // allowed there scored NaN or -inf (weights whose numbers overflow). No
    // hypothesis is made up then, and every one returned has a finite score;
    // callers report that sentence as failed.
    int n_hyps;
    moa_hypothesis *hyps;   // best first
    // A result from a session lives in ONE block: mem, which the hypotheses,
    // their tokens, log-probs and traces point into. NULL for a result built
    // field by field with malloc (a copy, say): then each array is freed.
    void *mem;
} moa_result;

// Frees what r owns (mem, or else every array) and zeroes it; safe on an
// all-zero result.
void moa_result_clear(moa_result *r);
// What moa_result_copy keeps besides every hypothesis' tokens and scores.
#define MOA_RESULT_LOGPROBS 1u      // token_logprobs
#define MOA_RESULT_ATTENTION 2u     // attention
// Copies src into dst as one block (dst->mem): id, user, and for every
// hypothesis its tokens, log_prob and score, plus the parts `keep` names.
// Traces are never copied (they are for reading as the result comes out:
// the server's /heads counts them then). 0, or MOA_ENOMEM with dst all zero.
// dst must not be src.
int moa_result_copy(moa_result *dst, const moa_result *src, unsigned keep);
// Frees a trace built with malloc, array by array; the traces of a session's
// results belong to the result's block (moa_result_clear).
void moa_trace_free(moa_trace *t);

struct cJSON;
// Adds a trace's three parts to the cJSON object obj (spec §7): "encoder"
// [layer][source position], "decoder_self" and "decoder_cross" [layer][t],
// each entry {"experts": [k ints], "gates": [k numbers], "margin": number,
// null when infinite}. The CLI (--trace) and the server ("trace": true) both
// write traces with it. 0, or MOA_ENOMEM (obj may then hold a part).
int moa_trace_json(const moa_trace *t, struct cJSON *obj);

// --- sessions: continuous batching -----------------------------------------

typedef struct moa_session moa_session;

// A session decodes up to max_rows beam rows at once (sum of
// moa_search_opts_rows of live sentences). Its scratch, one arena, is sized
// here for max_rows rows (moa_session_allocs). Returns NULL with a message
// on failure.
moa_session *moa_session_create(const moa_model *m, int max_rows,
                                char *err, size_t errlen);
void moa_session_free(moa_session *s);  // NULL is a no-op

// Queues a sentence (src: token ids WITHOUT the trailing eos; the engine
// appends it; src is copied). Returns a sentence id >= 0, or a negative moa_errno with a
// message (bad options, too long, session full). Ids count up and wrap from
// INT_MAX to 0, skipping any still held by a sentence or an untaken result. The sentence is encoded at
// the next moa_session_step together with the other newcomers.
int moa_session_add(moa_session *s, const int *src, int src_len,
                    const moa_search_opts *opts, void *user,
                    char *err, size_t errlen);
// Number of sentences queued or decoding.
int moa_session_live(const moa_session *s);
// Rows (beam hypotheses) the sentences admitted so far occupy.
int moa_session_rows(const moa_session *s);
// Runs one iteration: encodes newcomers, one decoder step for every live
// hypothesis of every sentence, retires finished sentences. Returns the
// number of rows decoded, or a negative error (MOA_ENOMEM). After an error
// the session is still whole and the next call carries on: newcomers that
// could not be admitted stay queued (all of that step's or none), a
// finished sentence whose result could not be allocated keeps its place
// (moa_session_live counts it) and retires at a later step, the others
// went on decoding. Or the caller cancels what it no longer wants.
int moa_session_step(moa_session *s);
// Takes one finished sentence: 1 and fills r (caller clears it), 0 if none.
int moa_session_take(moa_session *s, moa_result *r);
// Drops a queued or live sentence; 0 or MOA_ENOTFOUND.
int moa_session_cancel(moa_session *s, int id);
// Heap allocations the session has made since moa_session_create (creation
// included). The session's scratch is one arena, sized at creation and
// grown only when a step admits sentences that need more; sentences live in
// blocks the session recycles; a result is one block. So a step that admits
// and retires nothing allocates nothing, and in a steady flow of sentences
// only the results do (once the pools hold blocks of the right sizes). For
// tests and monitoring; call from the session's thread.
uint64_t moa_session_allocs(const moa_session *s);

// What a session holds on the heap, in bytes: its scratch arena; the blocks
// of the sentences queued and live (headers and bodies); the blocks kept
// for reuse. Call from the session's thread.
typedef struct moa_session_mem {
    size_t arena_bytes, blocks_in_use_bytes, blocks_free_bytes;
} moa_session_mem;
void moa_session_memory(const moa_session *s, moa_session_mem *m);

// --- convenience ----------------------------------------------------------

// Translates n sentences (ids without eos) with the same options, keeping
// the session's rows full; out[i] receives sentence i, and sentence i samples
// with seed opts->seed + i. 0, or a negative error with a message: then out[]
// is all zero (nothing to clear) and the session is empty again.
int moa_translate(moa_session *s, const int *const *src, const int *src_len,
                  int n, const moa_search_opts *opts, moa_result *out,
                  char *err, size_t errlen);

// Forced decoding: per-token log-probs of tgt (ids WITHOUT eos; the engine
// appends it) given src. out[i].hyps[0] holds tokens (tgt + eos),
// token_logprobs, log_prob, score (length_penalty 1) and, if trace, the
// routing trace. 0 or a negative error.
int moa_score(moa_session *s, const int *const *src, const int *src_len,
              const int *const *tgt, const int *tgt_len, int n, int trace,
              moa_result *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
