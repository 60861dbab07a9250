// fuzz_translate_parse.c — POST /translate bodies (server/moa_api.h) against
// a real server context: the tiny trained model, its tokenizer, a cache.
//
// Input: one selector byte, then the body.
//   bits 0-2  Content-Type: JSON, form, none, "+json", JSON with a charset,
//             form with a charset, text/plain (415), empty string
//   bit 3     Authorization: Bearer with the configured key; bit 4: a wrong one
//   bit 5     an API key is configured (else none is needed)
//   bit 6     routing statistics on (every unit asks for a trace)
//   bit 7     split_sentences and protect_placeholders off by default (the
//             request's fields may still turn them on)
//
// A body that parses is then answered as if the model had translated each
// unit into its own source ids (the answer builder, detokenizer and cache
// run for real; the model does not, which would cost milliseconds an input),
// parsed a second time (its units now come from the cache where the
// options allow) and answered again: both answers must say the same.
#include <cjson/cJSON.h>
#include <pthread.h>

#include "fuzz_util.h"
#include "moa_api.h"
#include "moa_log.h"

static moa_server srv;
static moa_heads *heads;
static char *keys[1] = {"fuzz-key-1"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char root[4096], dir[4200], err[512];
    fuzz_find_root(*argv ? (*argv)[0] : NULL, root, sizeof root);
    snprintf(dir, sizeof dir, "%s/" FUZZ_TINY, root);
    moa_log_init(MOA_LOG_ERROR, 0);
    moa_set_num_threads(1);
    moa_api_init();  // as moa-server's main
    // Small limits, so that inputs of a few hundred bytes reach them.
    srv.conf.max_texts = 6;
    srv.conf.max_chars = 600;
    srv.conf.split_tokens = 12;
    if (!(srv.models[0].model = moa_model_load(dir, err, sizeof err)) ||
        !(srv.models[0].tok = moa_tokenizer_load(dir, err, sizeof err))) {
        fprintf(stderr, "fuzz_translate_parse: %s\n", err);
        abort();
    }
    srv.models[0].cfg = moa_model_config(srv.models[0].model);
    if (!(srv.models[0].pv = moa_protect_vocab_create(srv.models[0].tok))) abort();
    snprintf(srv.models[0].name, sizeof srv.models[0].name, "%s", srv.models[0].cfg->name);
    snprintf(srv.models[0].key, sizeof srv.models[0].key, "%s|fuzz", srv.models[0].cfg->name);
    srv.n_models = 1;
    srv.metrics = moa_metrics_create();
    heads = moa_heads_create(srv.models[0].cfg);
    if (!srv.metrics || !heads) abort();
    pthread_rwlock_init(&srv.keys_lock, NULL);
    srv.keys = keys;
    return 0;
}

static const char *const ctypes[8] = {
    "application/json",
    "application/x-www-form-urlencoded",
    NULL,
    "application/vnd.api+json",
    "application/json; charset=utf-8",
    " application/x-www-form-urlencoded ;charset=UTF-8",
    "text/plain",
    "",
};

// Gives every waiting unit a result: num_hypotheses hypotheses, each its
// source ids and eos (real ids: the detokenizer must take them).
static void fake_compute(moa_tr *tr) {
    moa_job *j = moa_tr_job(tr);
    for (int i = 0; i < j->n_units; i++) {
        moa_unit *u = &j->units[i];
        if (u->state == MOA_UNIT_DONE) continue;
        FUZZ_CHECK(u->state == MOA_UNIT_WAITING);
        int nh = u->opts.num_hypotheses;
        moa_result *r = &u->res;
        memset(r, 0, sizeof *r);
        r->hyps = calloc((size_t)nh, sizeof *r->hyps);
        FUZZ_CHECK(r->hyps);
        r->n_hyps = nh;
        for (int h = 0; h < nh; h++) {
            moa_hypothesis *hy = &r->hyps[h];
            hy->n_tokens = u->src_len + 1;
            hy->tokens = malloc((size_t)hy->n_tokens * sizeof(int));
            FUZZ_CHECK(hy->tokens);
            memcpy(hy->tokens, u->src, (size_t)u->src_len * sizeof(int));
            hy->tokens[u->src_len] = srv.models[0].cfg->eos_id;
            hy->log_prob = -0.5 * hy->n_tokens - h;
            hy->score = hy->log_prob / hy->n_tokens;
        }
        u->state = MOA_UNIT_DONE;
    }
}

// What a parsed request must satisfy before it goes to the scheduler.
static void check_units(moa_tr *tr) {
    const moa_job *j = moa_tr_job(tr);
    int waiting = 0;
    for (int i = 0; i < j->n_units; i++) {
        const moa_unit *u = &j->units[i];
        FUZZ_CHECK(u->src_len >= 1 && u->src_len + 1 <= srv.models[0].cfg->max_positions);
        for (int t = 0; t < u->src_len; t++)
            FUZZ_CHECK(u->src[t] >= 0 && u->src[t] < srv.models[0].cfg->vocab_size);
        char err[256];
        FUZZ_CHECK(moa_search_opts_check(&u->opts, srv.models[0].cfg, err, sizeof err) == 0);
        FUZZ_CHECK(u->state == MOA_UNIT_WAITING || u->state == MOA_UNIT_DONE);
        waiting += u->state == MOA_UNIT_WAITING;
    }
    FUZZ_CHECK(moa_tr_waiting(tr) == waiting);
}

// Parses, answers; returns the answer's translatedText printed (malloc'ed),
// or NULL when the body was refused.
static char *round_trip(int sel, const char *body, size_t n) {
    const char *auth = sel & 8 ? "Bearer fuzz-key-1" : sel & 16 ? "Bearer nope" : NULL;
    moa_tr *tr = NULL;
    char err[512] = "";
    int st = moa_api_translate_parse(&srv, ctypes[sel & 7], auth, body, n, &tr, err, sizeof err);
    if (st != 0) {
        FUZZ_CHECK(!tr);
        FUZZ_CHECK(st == 400 || st == 403 || st == 415 || st == 500);
        FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err));
        return NULL;
    }
    FUZZ_CHECK(tr);
    check_units(tr);
    fake_compute(tr);
    cJSON *ans = moa_api_translate_answer(&srv, tr, moa_sched_now(), err, sizeof err);
    FUZZ_CHECK(ans);
    char *text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(ans, "translatedText"));
    FUZZ_CHECK(text);
    cJSON_Delete(ans);
    moa_tr_free(tr);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int sel = data[0];
    // An exact copy: the parser must not read past n (no NUL follows).
    size_t n = size - 1;
    char *body = malloc(n ? n : 1);
    if (!body) return 0;
    memcpy(body, data + 1, n);
    srv.n_keys = sel & 32 ? 1 : 0;
    srv.models[0].heads = sel & 64 ? heads : NULL;
    srv.conf.split_sentences = srv.conf.protect_placeholders = !(sel & 128);
    srv.cache = moa_cache_create(64);  // fresh: one input never sees another's
    char *a = round_trip(sel, body, n);
    if (a) {
        char *b = round_trip(sel, body, n);
        FUZZ_CHECK(b && !strcmp(a, b));
        free(b);
    }
    free(a);
    moa_cache_free(srv.cache);
    srv.cache = NULL;
    free(body);
    return 0;
}
