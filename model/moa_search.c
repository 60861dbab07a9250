// moa_search.c — decoding rules of spec §4 and §6 that do not touch the
// network: options (defaults, normalisation, rows, checks), masking, beam
// candidates, sampling, the PRNG, results and their JSON traces.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "moa_impl.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

// --- options -----------------------------------------------------------------

void moa_search_opts_default(moa_search_opts *o) {
    memset(o, 0, sizeof *o);
    o->beam_size = 4;
    o->num_hypotheses = 1;
    o->length_penalty = 1.0f;
    o->max_length = 0;
    o->min_length = 1;
    o->sampling_topk = 0;
    o->sampling_topp = 1.0f;
    o->sampling_temperature = 1.0f;
}

int moa_search_opts_sampling(const moa_search_opts *o) {
    if (o->sampling_topk == 1) return 0;
    return o->sampling_topk > 1 || o->sampling_topp < 1.0f ||
           o->sampling_temperature != 1.0f;
}

int moa_search_opts_rows(const moa_search_opts *o) {
    return moa_search_opts_sampling(o) ? 1 : o->beam_size;
}

// A seed for a request that gave none: from the kernel, or, where getrandom
// fails (a seccomp filter, an old kernel), from the clock and the pid.
static uint64_t random_seed(void) {
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec * UINT64_C(0x9E3779B97F4A7C15) ^ (uint64_t)ts.tv_sec ^
               ((uint64_t)getpid() << 32);
    }
    return seed & ((UINT64_C(1) << 63) - 1);
}

void moa_search_opts_normalise(moa_search_opts *o, unsigned given, const moa_config *cfg) {
    if (o->sampling_topp < 1.0f && o->sampling_topk == 0) o->sampling_topk = cfg->vocab_size;
    // Top-k 1 asks for sampling too, though it decodes greedily: a request
    // that names only it gets beam 1 (spec §6: "1 = greedy"), not beam search.
    int asks = o->sampling_topk > 0 || o->sampling_topp < 1.0f ||
               o->sampling_temperature != 1.0f;
    if (asks && !(given & MOA_OPT_GIVEN_BEAM)) o->beam_size = 1;
    if (moa_search_opts_sampling(o) && !(given & MOA_OPT_GIVEN_SEED)) o->seed = random_seed();
}

#define OPT_FAIL(...)                                  \
    do {                                               \
        if (err) snprintf(err, errlen, __VA_ARGS__);   \
        return MOA_EINVAL;                             \
    } while (0)

int moa_search_opts_check(const moa_search_opts *o, const moa_config *cfg,
                          char *err, size_t errlen) {
    int max_len_limit = cfg->max_positions - 2;
    if (o->beam_size < 1 || o->beam_size > MOA_MAX_BEAM)
        OPT_FAIL("beam_size must be 1-%d, got %d", MOA_MAX_BEAM, o->beam_size);
    if (o->num_hypotheses < 1 || o->num_hypotheses > o->beam_size)
        OPT_FAIL("num_hypotheses must be 1-beam_size (%d), got %d",
                 o->beam_size, o->num_hypotheses);
    if (!(o->length_penalty >= 0 && o->length_penalty <= 10))
        OPT_FAIL("length_penalty must be 0-10, got %g", o->length_penalty);
    if (o->max_length != 0 && (o->max_length < 1 || o->max_length > max_len_limit))
        OPT_FAIL("max_length must be 1-%d (max_positions - 2), got %d",
                 max_len_limit, o->max_length);
    if (o->min_length < 0 || o->min_length > max_len_limit ||
        (o->max_length != 0 && o->min_length > o->max_length))
        OPT_FAIL("min_length must be 0-max_length, got %d", o->min_length);
    if (o->sampling_topk < 0 || o->sampling_topk > cfg->vocab_size)
        OPT_FAIL("sampling_topk must be 0-%d, got %d", cfg->vocab_size,
                 o->sampling_topk);
    if (!(o->sampling_topp > 0 && o->sampling_topp <= 1))
        OPT_FAIL("sampling_topp must be in (0, 1], got %g", o->sampling_topp);
    if (!(o->sampling_temperature > 0 && o->sampling_temperature <= 100))
        OPT_FAIL("sampling_temperature must be in (0, 100], got %g",
                 o->sampling_temperature);
    if (moa_search_opts_sampling(o) && o->beam_size != 1)
        OPT_FAIL("sampling needs beam_size 1, got %d", o->beam_size);
    if (moa_search_opts_sampling(o) && o->num_hypotheses != 1)
        OPT_FAIL("sampling returns one hypothesis: num_hypotheses must be 1");
    if (o->seed > (1ull << 63))
        OPT_FAIL("seed must be 0-2^63");
    return 0;
}

// --- masking -----------------------------------------------------------------

void moa_mask_row(float *lp, int v, const moa_config *cfg, const moa_search_opts *o,
                  int n_tokens, int max_len) {
    if (n_tokens >= max_len) {
        float eos = lp[cfg->eos_id];
        for (int j = 0; j < v; j++) lp[j] = -INFINITY;
        lp[cfg->eos_id] = eos;
        return;
    }
    lp[cfg->pad_id] = -INFINITY;
    lp[cfg->bos_id] = -INFINITY;
    if (o->no_unk) lp[cfg->unk_id] = -INFINITY;
    if (n_tokens < o->min_length) lp[cfg->eos_id] = -INFINITY;
}

// --- beam candidates -------------------------------------------------------------

// a ranks before b?
static int cand_before(const moa_cand *a, const moa_cand *b) {
    if (a->score != b->score) return a->score > b->score;
    if (a->hyp != b->hyp) return a->hyp < b->hyp;
    return a->token < b->token;
}

// Inserts c into the sorted list top[0..*n) capped at want.
static void cand_insert(moa_cand *top, int *n, int want, const moa_cand *c) {
    if (*n == want && !cand_before(c, &top[want - 1])) return;
    int i = *n < want ? (*n)++ : want - 1;
    while (i > 0 && cand_before(c, &top[i - 1])) {
        top[i] = top[i - 1];
        i--;
    }
    top[i] = *c;
}

// A float at or below x, so that `lp < bound` implies hyp + lp < worst.
static float lower_bound(double x) { return nextafterf((float)x, -INFINITY); }

// Whether any of x[0..16) is >= bound.
static int any_at_least(const float *x, float bound) {
#if defined(__AVX2__)
    __m256 b = _mm256_set1_ps(bound);
    __m256 a0 = _mm256_cmp_ps(_mm256_loadu_ps(x), b, _CMP_GE_OQ);
    __m256 a1 = _mm256_cmp_ps(_mm256_loadu_ps(x + 8), b, _CMP_GE_OQ);
    return _mm256_movemask_ps(_mm256_or_ps(a0, a1)) != 0;
#else
    for (int j = 0; j < 16; j++)
        if (x[j] >= bound) return 1;
    return 0;
#endif
}

// The logit bound for a log-prob bound: a little lower than floor + lse, so
// that rounding of logit - lse can never hide a token that qualifies.
static float logit_bound(float floor_lp, float lse) {
    if (floor_lp == -INFINITY) return -INFINITY;
    float b = floor_lp + lse;
    return b - 1e-5f * (fabsf(floor_lp) + fabsf(lse) + 1.0f);
}

int moa_beam_candidates(const float *logits, int n_hyp, int v, const float *lse,
                        const double *hyp_score, int want, moa_cand *out) {
    int n = 0;
    for (int h = 0; h < n_hyp; h++) {
        const float *row = logits + (size_t)h * v;
        float off = lse ? lse[h] : 0.0f;
        // Once the list is full only a token beating the current worst can
        // enter. `floor` is a float bound at or below (worst - hyp score), so
        // the scan is one float comparison per token; the exact test in
        // double follows for the few that pass.
        // Blocks of 16 tokens none of which reaches the bound are skipped
        // with one vector comparison.
        float floor = n == want
            ? logit_bound(lower_bound(out[want - 1].score - hyp_score[h]), off) : -INFINITY;
        for (int t0 = 0; t0 < v; t0 += 16) {
            int end = t0 + 16 < v ? t0 + 16 : v;
            if (end - t0 == 16 && !any_at_least(row + t0, floor)) continue;
            for (int t = t0; t < end; t++) {
                // NaN never passes (a model whose numbers overflowed): no
                // candidate is better than nothing (moa_model.h, n_hyps)
                if (!(row[t] >= floor)) continue;
                float lp = row[t] - off;
                if (!(lp > -INFINITY)) continue;
                double s = hyp_score[h] + (double)lp;
                if (n == want && s < out[want - 1].score) continue;
                moa_cand c = {s, h, t, lp};
                cand_insert(out, &n, want, &c);
                if (n == want)
                    floor = logit_bound(lower_bound(out[want - 1].score - hyp_score[h]), off);
            }
        }
    }
    return n;
}

// --- PRNG: splitmix64 seeding xoshiro256** ---------------------------------------

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void moa_rng_seed(moa_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t moa_rng_next(moa_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double moa_rng_uniform(moa_rng *r) {
    return (double)(moa_rng_next(r) >> 11) * 0x1.0p-53;
}

// --- sampling ----------------------------------------------------------------------

// Orders token ids by their key, descending; ties to the lower id.
static int by_key_desc(const void *a, const void *b, void *ctx) {
    const float *key = ctx;
    int ia = *(const int *)a, ib = *(const int *)b;
    if (key[ia] != key[ib]) return key[ia] > key[ib] ? -1 : 1;
    return (ia > ib) - (ia < ib);
}

int moa_sample_token(const float *lp, int v, const moa_search_opts *o,
                     moa_rng *rng, float *scratch, int *idx) {
    float *p = scratch;
    int n = 0;
    float inv_t = 1.0f / o->sampling_temperature;
    for (int j = 0; j < v; j++) {
        if (!(lp[j] > -INFINITY)) continue;  // masked, or NaN
        p[j] = lp[j] * inv_t;
        idx[n++] = j;
    }
    if (n == 0) return -1;
    // Rank allowed tokens by tempered logit, ties to the lower id (qsort_r:
    // glibc, reentrant).
    qsort_r(idx, (size_t)n, sizeof *idx, by_key_desc, p);
    if (o->sampling_topk > 0 && o->sampling_topk < n) n = o->sampling_topk;
    // softmax over the kept tokens
    float mx = p[idx[0]];
    double sum = 0;
    float *q = scratch + v;
    for (int i = 0; i < n; i++) {
        q[i] = expf(p[idx[i]] - mx);
        sum += q[i];
    }
    // smallest prefix whose probability reaches top-p
    if (o->sampling_topp < 1.0f) {
        double acc = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += q[i] / sum;
            if (acc >= o->sampling_topp) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (int i = 0; i < n; i++) sum += q[i];
    }
    double u = moa_rng_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += q[i];
        if (u < acc) return idx[i];
    }
    return idx[n - 1];
}

// --- results -------------------------------------------------------------------

void moa_trace_free(moa_trace *t) {
    if (!t) return;
    free(t->enc_experts);
    free(t->enc_gates);
    free(t->enc_margin);
    free(t->dself_experts);
    free(t->dself_gates);
    free(t->dself_margin);
    free(t->dcross_experts);
    free(t->dcross_gates);
    free(t->dcross_margin);
    free(t);
}

// JSON has no infinity: a margin of +INFINITY (k == E) is written null.
static cJSON *json_num(double v) {
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

// Adds item (NULL: its creation failed) to the object obj under key, or to
// the array obj when key is NULL; 1, or 0 with item freed (cJSON leaves an
// item it could not attach to the caller: adding a key allocates).
static int attach(cJSON *obj, const char *key, cJSON *item) {
    if (item && (key ? cJSON_AddItemToObject(obj, key, item) : cJSON_AddItemToArray(obj, item)))
        return 1;
    cJSON_Delete(item);
    return 0;
}

// {"experts": [k], "gates": [k], "margin": m}, or NULL (nothing left over).
static cJSON *trace_entry(int k, const int *experts, const float *gates, float margin) {
    cJSON *e = cJSON_CreateObject();
    if (!e || !attach(e, "experts", cJSON_CreateIntArray(experts, k))) goto fail;
    cJSON *g = cJSON_AddArrayToObject(e, "gates");
    if (!g) goto fail;
    for (int j = 0; j < k; j++)
        if (!attach(g, NULL, json_num(gates[j]))) goto fail;
    if (!attach(e, "margin", json_num(margin))) goto fail;
    return e;
fail:
    cJSON_Delete(e);
    return NULL;
}

static cJSON *trace_part(int layers, int n_pos, int k, const int *experts, const float *gates,
                         const float *margin) {
    cJSON *arr = cJSON_CreateArray();
    for (int l = 0; arr && l < layers; l++) {
        cJSON *la = cJSON_CreateArray();
        if (!cJSON_AddItemToArray(arr, la)) goto fail;  // false for NULL too
        for (int p = 0; p < n_pos; p++) {
            size_t row = (size_t)l * (size_t)n_pos + (size_t)p;
            cJSON *e = trace_entry(k, experts + row * (size_t)k, gates + row * (size_t)k,
                                   margin[row]);
            if (!cJSON_AddItemToArray(la, e)) goto fail;
        }
    }
    return arr;
fail:
    cJSON_Delete(arr);
    return NULL;
}

int moa_trace_json(const moa_trace *t, cJSON *obj) {
    cJSON *enc = trace_part(t->layers_enc, t->src_len, t->k, t->enc_experts, t->enc_gates,
                            t->enc_margin);
    if (!enc || !cJSON_AddItemToObject(obj, "encoder", enc)) goto fail_enc;
    cJSON *ds = trace_part(t->layers_dec, t->tgt_len, t->k, t->dself_experts, t->dself_gates,
                           t->dself_margin);
    if (!ds || !cJSON_AddItemToObject(obj, "decoder_self", ds)) goto fail_ds;
    cJSON *dc = trace_part(t->layers_dec, t->tgt_len, t->k, t->dcross_experts,
                           t->dcross_gates, t->dcross_margin);
    if (!dc || !cJSON_AddItemToObject(obj, "decoder_cross", dc)) goto fail_dc;
    return 0;
fail_dc:
    cJSON_Delete(dc);
    return MOA_ENOMEM;
fail_ds:
    cJSON_Delete(ds);
    return MOA_ENOMEM;
fail_enc:
    cJSON_Delete(enc);
    return MOA_ENOMEM;
}

int moa_result_copy(moa_result *dst, const moa_result *src, unsigned keep) {
    memset(dst, 0, sizeof *dst);
    // one block: the hypotheses, then each one's arrays (8-byte aligned)
    size_t bytes = (size_t)src->n_hyps * sizeof(moa_hypothesis);
    for (int i = 0; i < src->n_hyps; i++) {
        const moa_hypothesis *h = &src->hyps[i];
        bytes += ((size_t)h->n_tokens * sizeof(int) + 7) / 8 * 8;
        if ((keep & MOA_RESULT_LOGPROBS) && h->token_logprobs)
            bytes += ((size_t)h->n_tokens * sizeof(float) + 7) / 8 * 8;
        if ((keep & MOA_RESULT_ATTENTION) && h->attention)
            bytes += ((size_t)h->attention_layers * (size_t)h->n_tokens *
                      (size_t)h->attention_cols * sizeof(float) + 7) / 8 * 8;
    }
    char *mem = malloc(bytes ? bytes : 1);
    if (!mem) return MOA_ENOMEM;
    moa_hypothesis *hyps = (moa_hypothesis *)mem;
    char *at = mem + (size_t)src->n_hyps * sizeof(moa_hypothesis);
    for (int i = 0; i < src->n_hyps; i++) {
        const moa_hypothesis *h = &src->hyps[i];
        moa_hypothesis *d = &hyps[i];
        memset(d, 0, sizeof *d);
        d->n_tokens = h->n_tokens;
        d->log_prob = h->log_prob;
        d->score = h->score;
        size_t n = (size_t)h->n_tokens;
        d->tokens = (int *)at;
        if (n) memcpy(d->tokens, h->tokens, n * sizeof(int));
        at += (n * sizeof(int) + 7) / 8 * 8;
        if ((keep & MOA_RESULT_LOGPROBS) && h->token_logprobs) {
            d->token_logprobs = (float *)at;
            if (n) memcpy(d->token_logprobs, h->token_logprobs, n * sizeof(float));
            at += (n * sizeof(float) + 7) / 8 * 8;
        }
        if ((keep & MOA_RESULT_ATTENTION) && h->attention) {
            size_t na = (size_t)h->attention_layers * n * (size_t)h->attention_cols;
            d->attention = (float *)at;
            if (na) memcpy(d->attention, h->attention, na * sizeof(float));
            d->attention_layers = h->attention_layers;
            d->attention_cols = h->attention_cols;
            at += (na * sizeof(float) + 7) / 8 * 8;
        }
    }
    dst->id = src->id;
    dst->user = src->user;
    dst->n_hyps = src->n_hyps;
    dst->hyps = src->n_hyps ? hyps : NULL;
    dst->mem = mem;
    return 0;
}

void moa_result_clear(moa_result *r) {
    if (!r) return;
    if (r->mem) {  // a session's result: everything in one block
        free(r->mem);
        memset(r, 0, sizeof *r);
        return;
    }
    for (int i = 0; i < r->n_hyps; i++) {
        free(r->hyps[i].tokens);
        free(r->hyps[i].token_logprobs);
        moa_trace_free(r->hyps[i].trace);
        free(r->hyps[i].attention);
    }
    free(r->hyps);
    memset(r, 0, sizeof *r);
}
