// test_oom.c — allocation failures injected into translate calls (make
// test-oom). failalloc (tests/oom/failalloc.h) fails the Nth heap
// allocation; each sweep runs a call with N = 1, 2, ... until a run no
// longer reaches N, and for every N:
//   - nothing crashes (ASan/UBSan build), the call fails cleanly or succeeds
//     with the right output;
//   - nothing leaks: LeakSanitizer checks the heap after every N;
//   - the SAME session (scheduler, server context) then translates
//     correctly again, with the reference's exact tokens.
// Sweeps: moa_translate / moa_score on a fresh session and on a warm one;
// moa_session_step driven by hand, where a failed step must lose nothing
// (the sentences carry on and finish as without the failure); and the
// server's whole /translate path without HTTP: parsing, the scheduler in
// manual mode with the engine, the JSON answer.
//
// The real tiny trained model and its SentencePiece; nothing is mocked.
// Runs from the repository root.
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "failalloc.h"
#include "moa_api.h"
#include "moa_log.h"
#include "moa_model.h"
#include "moa_sched.h"
#include "moa_test.h"
#include "moa_tokenizer.h"

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

#define TINY "tests/fixtures/models/tiny-trained"
#define SAMPLE "tests/fixtures/sample.en-de.tsv"
#define NS 3          // sentences per engine call
#define MAX_N 100000  // a sweep that never ends is a failure

static moa_model *model;
static moa_tokenizer *tok;
static int *src[NS], src_len[NS];

// 1 when LeakSanitizer finds unreachable blocks now (reported on stderr).
static int leaks_now(void) {
#ifdef __SANITIZE_ADDRESS__
    return __lsan_do_recoverable_leak_check();
#else
    return 0;
#endif
}

static void setup(void) {
    char err[512];
    moa_set_num_threads(1);
    if (!(model = moa_model_load(TINY, err, sizeof err))) MOA_TEST_FAIL("%s", err);
    if (!(tok = moa_tokenizer_load(TINY, err, sizeof err))) MOA_TEST_FAIL("%s", err);
    FILE *f = fopen(SAMPLE, "r");
    if (!f) MOA_TEST_FAIL("cannot open %s", SAMPLE);
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < NS; i++) {
        if (getline(&line, &cap, f) <= 0) MOA_TEST_FAIL("%s: too short", SAMPLE);
        char *tab = strchr(line, '\t');
        if (tab) *tab = 0;
        if (moa_tokenizer_encode(tok, line, strlen(line), 0, &src[i], &src_len[i], err,
                                 sizeof err))
            MOA_TEST_FAIL("%s", err);
    }
    free(line);
    fclose(f);
}

static void teardown(void) {
    for (int i = 0; i < NS; i++) free(src[i]);
    moa_tokenizer_free(tok);
    moa_model_free(model);
}

static void same_result(const moa_result *a, const moa_result *b, const char *what, long n) {
    if (a->n_hyps != b->n_hyps)
        MOA_TEST_FAIL("%s, failing allocation %ld: %d hypotheses, expected %d", what, n,
                      a->n_hyps, b->n_hyps);
    for (int h = 0; h < a->n_hyps; h++) {
        const moa_hypothesis *x = &a->hyps[h], *y = &b->hyps[h];
        int same = x->n_tokens == y->n_tokens;
        for (int t = 0; same && t < x->n_tokens; t++) same = x->tokens[t] == y->tokens[t];
        if (!same)
            MOA_TEST_FAIL("%s, failing allocation %ld: hypothesis %d differs from the "
                          "reference", what, n, h);
        if ((x->trace != NULL) != (y->trace != NULL) ||
            (x->token_logprobs != NULL) != (y->token_logprobs != NULL))
            MOA_TEST_FAIL("%s, failing allocation %ld: trace/log-probs missing", what, n);
        // rows batched differently round differently: 1e-4 (test_engine.c)
        if (fabs(x->log_prob - y->log_prob) > 1e-4)
            MOA_TEST_FAIL("%s, failing allocation %ld: log-prob %g, expected %g", what, n,
                          x->log_prob, y->log_prob);
        for (int t = 0; x->token_logprobs && t < x->n_tokens; t++)
            if (!(fabs(x->token_logprobs[t] - y->token_logprobs[t]) <= 1e-4))
                MOA_TEST_FAIL("%s, failing allocation %ld: token %d log-prob %g, expected %g",
                              what, n, t, x->token_logprobs[t], y->token_logprobs[t]);
    }
}

// --- moa_translate / moa_score -------------------------------------------------------------

typedef struct call {
    const char *what;
    moa_search_opts o;
    int score;                  // moa_score (forced decoding of tgt) instead
    const int *tgt[NS];
    int tgt_len[NS];
} call;

static int run_call(moa_session *s, const call *c, moa_result *out) {
    char err[256];
    if (c->score)
        return moa_score(s, (const int *const *)src, src_len, c->tgt, c->tgt_len, NS, c->o.trace,
                         out, err, sizeof err);
    return moa_translate(s, (const int *const *)src, src_len, NS, &c->o, out, err, sizeof err);
}

static void clear_all(moa_result *r) {
    for (int i = 0; i < NS; i++) moa_result_clear(&r[i]);
}

// Sweeps N over one call: on a fresh session for every N (warm = 0: the
// session's first allocations, arena growth, new blocks), or on one session
// kept for the whole sweep (warm = 1: the steady state, recycled blocks).
static long sweep_call(const call *c, const moa_result *want, int warm) {
    char what[160];
    snprintf(what, sizeof what, "%s (%s session)", c->what, warm ? "warm" : "fresh");
    moa_session *s = warm ? moa_session_create(model, 8, NULL, 0) : NULL;
    moa_result out[NS];
    if (warm) {  // warm it up
        ASSERT_EQ_INT(run_call(s, c, out), 0);
        clear_all(out);
    }
    long n;
    for (n = 1; n < MAX_N; n++) {
        if (!warm) s = moa_session_create(model, 8, NULL, 0);
        ASSERT_TRUE(s != NULL);
        failalloc_arm(n);
        int rc = run_call(s, c, out);
        int fired = failalloc_fired();
        failalloc_disarm();
        if (rc == 0) {
            for (int i = 0; i < NS; i++) same_result(&out[i], &want[i], what, n);
            clear_all(out);
        } else {
            if (rc != MOA_ENOMEM)
                MOA_TEST_FAIL("%s, failing allocation %ld: %s, expected out of memory", what, n,
                              moa_strerror(rc));
            if (!fired) MOA_TEST_FAIL("%s: failed with no allocation failing", what);
            // moa_translate's contract: out[] all zero, the session empty
            for (int i = 0; i < NS; i++) ASSERT_TRUE(out[i].hyps == NULL && out[i].mem == NULL);
            ASSERT_EQ_INT(moa_session_live(s), 0);
            ASSERT_EQ_INT(moa_session_rows(s), 0);
        }
        // the same session again, with memory back
        ASSERT_EQ_INT(run_call(s, c, out), 0);
        for (int i = 0; i < NS; i++) same_result(&out[i], &want[i], what, n);
        clear_all(out);
        if (!warm) {
            moa_session_free(s);
            s = NULL;
        }
        if (leaks_now()) MOA_TEST_FAIL("%s: leak after failing allocation %ld", what, n);
        if (!fired) break;  // the call made fewer than n allocations: all swept
    }
    moa_session_free(s);
    if (n >= MAX_N) MOA_TEST_FAIL("%s: no end to the sweep", what);
    printf("  %s: %ld allocations swept\n", what, n - 1);
    return n - 1;
}

static void sweep_both(call *c) {
    moa_session *ref = moa_session_create(model, 8, NULL, 0);
    moa_result want[NS];
    ASSERT_EQ_INT(run_call(ref, c, want), 0);
    ASSERT_TRUE(sweep_call(c, want, 0) > 0);
    ASSERT_TRUE(sweep_call(c, want, 1) > 0);
    clear_all(want);
    moa_session_free(ref);
}

static void test_translate_beam_trace(void) {
    call c = {.what = "moa_translate beam 4, 2 hypotheses, traces, log-probs"};
    moa_search_opts_default(&c.o);
    c.o.beam_size = 4;
    c.o.num_hypotheses = 2;
    c.o.trace = 1;
    c.o.token_logprobs = 1;
    sweep_both(&c);
}

static void test_translate_sampling(void) {
    call c = {.what = "moa_translate sampling top-k 5"};
    moa_search_opts_default(&c.o);
    c.o.sampling_topk = 5;
    c.o.seed = 7;
    moa_search_opts_normalise(&c.o, MOA_OPT_GIVEN_SEED, moa_model_config(model));
    sweep_both(&c);
}

static void test_score_trace(void) {
    // forced decoding of the greedy translations
    moa_session *s = moa_session_create(model, 8, NULL, 0);
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.beam_size = 1;
    moa_result greedy[NS];
    char err[256];
    ASSERT_EQ_INT(moa_translate(s, (const int *const *)src, src_len, NS, &o, greedy, err,
                                sizeof err), 0);
    call c = {.what = "moa_score with traces", .score = 1};
    moa_search_opts_default(&c.o);
    c.o.trace = 1;
    for (int i = 0; i < NS; i++) {
        c.tgt[i] = greedy[i].hyps[0].tokens;
        c.tgt_len[i] = greedy[i].hyps[0].n_tokens - 1;  // without eos
    }
    sweep_both(&c);
    clear_all(greedy);
    moa_session_free(s);
}

// --- moa_session_step by hand: a failed step loses nothing ------------------------------------

// Three sentences with different searches in a session of 4 rows, so the
// third is admitted only when a row frees (admission mid-run).
static void add_three(moa_session *s) {
    moa_search_opts beam, samp, greedy;
    moa_search_opts_default(&beam);
    beam.beam_size = 3;
    beam.trace = 1;
    moa_search_opts_default(&samp);
    samp.sampling_topk = 4;
    samp.seed = 11;
    samp.token_logprobs = 1;
    moa_search_opts_normalise(&samp, MOA_OPT_GIVEN_SEED, moa_model_config(model));
    moa_search_opts_default(&greedy);
    greedy.beam_size = 1;
    greedy.token_logprobs = 1;
    const moa_search_opts *o[NS] = {&beam, &samp, &greedy};
    char err[256];
    for (int i = 0; i < NS; i++)
        ASSERT_TRUE(moa_session_add(s, src[i], src_len[i], o[i], (void *)(intptr_t)i, err,
                                    sizeof err) >= 0);
}

// Steps until the session is empty; results by sentence. Returns the
// number of steps that failed.
static int step_all(moa_session *s, moa_result *out) {
    int errors = 0;
    for (int steps = 0; moa_session_live(s) > 0; steps++) {
        if (steps > 10000) MOA_TEST_FAIL("the session never empties");
        int rc = moa_session_step(s);
        if (rc < 0) {
            if (rc != MOA_ENOMEM) MOA_TEST_FAIL("moa_session_step: %s", moa_strerror(rc));
            errors++;
        }
        moa_result r;
        while (moa_session_take(s, &r) == 1) out[(intptr_t)r.user] = r;
    }
    return errors;
}

static void test_session_step_failures(void) {
    moa_session *ref = moa_session_create(model, 4, NULL, 0);
    moa_result want[NS];
    add_three(ref);
    ASSERT_EQ_INT(step_all(ref, want), 0);
    long n;
    for (n = 1; n < MAX_N; n++) {
        moa_session *s = moa_session_create(model, 4, NULL, 0);
        add_three(s);
        moa_result out[NS];
        memset(out, 0, sizeof out);
        failalloc_arm(n);
        int errors = step_all(s, out);
        int fired = failalloc_fired();
        failalloc_disarm();
        // one allocation failed: exactly one step said so, and every
        // sentence still finished as it does without the failure
        ASSERT_EQ_INT(errors, fired);
        for (int i = 0; i < NS; i++) same_result(&out[i], &want[i], "moa_session_step", n);
        clear_all(out);
        // and the session goes on: the three again
        add_three(s);
        ASSERT_EQ_INT(step_all(s, out), 0);
        for (int i = 0; i < NS; i++) same_result(&out[i], &want[i], "moa_session_step again", n);
        clear_all(out);
        moa_session_free(s);
        if (leaks_now()) MOA_TEST_FAIL("moa_session_step: leak after failing allocation %ld", n);
        if (!fired) break;
    }
    if (n >= MAX_N) MOA_TEST_FAIL("moa_session_step: no end to the sweep");
    printf("  moa_session_step: %ld allocations swept\n", n - 1);
    clear_all(want);
    moa_session_free(ref);
}

// --- the server's /translate path without HTTP ----------------------------------------------------

typedef struct done_flag {
    int calls;
    moa_sched_reason why;
} done_flag;

static void on_done(moa_job *j, moa_sched_reason why) {
    done_flag *d = j->owner;
    d->calls++;
    d->why = why;
}

static moa_server srv;
static double fake_clock = 1000.0;
static double fake_now(void *ctx) { return *(double *)ctx; }

static void server_start(void) {
    char err[512];
    srv.conf.compute_workers = 1;
    srv.conf.compute_threads = 1;
    srv.conf.max_inflight = 8;
    srv.conf.max_batch_rows = 16;
    srv.conf.max_queue = 100;
    srv.conf.max_texts = 8;
    srv.conf.max_chars = 2000;
    srv.conf.split_tokens = 200;
    srv.conf.split_sentences = 1;
    srv.conf.protect_placeholders = 1;
    srv.conf.timeout = 60;
    srv.models[0].model = model;
    srv.models[0].cfg = moa_model_config(model);
    srv.models[0].tok = tok;
    if (!(srv.models[0].pv = moa_protect_vocab_create(tok))) MOA_TEST_FAIL("out of memory");
    snprintf(srv.models[0].name, sizeof srv.models[0].name, "%s", srv.models[0].cfg->name);
    snprintf(srv.models[0].key, sizeof srv.models[0].key, "%s|oom", srv.models[0].cfg->name);
    srv.n_models = 1;
    pthread_rwlock_init(&srv.keys_lock, NULL);
    if (!(srv.metrics = moa_metrics_create()) ||
        !(srv.models[0].heads = moa_heads_create(srv.models[0].cfg)))
        MOA_TEST_FAIL("out of memory");
    moa_sched_opts so = {.manual = 1, .now = fake_now, .now_ctx = &fake_clock};
    if (!(srv.sched = moa_sched_create(model, &srv.conf, srv.metrics, srv.models[0].heads, &so, err,
                                       sizeof err)))
        MOA_TEST_FAIL("moa_sched_create: %s", err);
}

static void server_stop(void) {
    moa_sched_free(srv.sched);
    moa_heads_free(srv.models[0].heads);
    moa_metrics_free(srv.metrics);
    moa_protect_vocab_free(srv.models[0].pv);
    pthread_rwlock_destroy(&srv.keys_lock);
}

// One request as moa_http.c runs it: parse, the scheduler, the answer.
// Returns the HTTP status; with 200, *answer is the response body.
static int serve(const char *ctype, const char *body, cJSON **answer) {
    *answer = NULL;
    moa_tr *tr = NULL;
    char err[512] = "";
    int st = moa_api_translate_parse(&srv, ctype, NULL, body, strlen(body), &tr, err, sizeof err);
    if (st) {
        ASSERT_TRUE(tr == NULL && err[0]);
        return st;
    }
    done_flag d = {0, MOA_SCHED_DONE};
    if (moa_tr_waiting(tr)) {
        moa_job *j = moa_tr_job(tr);
        j->owner = &d;
        j->on_done = on_done;
        j->deadline = INFINITY;
        ASSERT_EQ_INT(moa_sched_submit(srv.sched, j), 0);
        for (int rounds = 0; !d.calls; rounds++) {
            if (rounds > 100000) MOA_TEST_FAIL("the job never comes back");
            moa_sched_poll(srv.sched);
            if (!d.calls) moa_sched_step_worker(srv.sched, 0);
        }
        ASSERT_EQ_INT(d.calls, 1);
    }
    if (d.why != MOA_SCHED_DONE) {
        ASSERT_EQ_INT(d.why, MOA_SCHED_FAILED);
        moa_tr_free(tr);
        return 500;
    }
    *answer = moa_api_translate_answer(&srv, tr, moa_sched_now(), err, sizeof err);
    moa_tr_free(tr);
    if (!*answer) {
        ASSERT_TRUE(err[0]);
        return 500;
    }
    return 200;
}

// What must not change: the translations and alternatives (timings do).
static char *answer_text(cJSON *a) {
    cJSON *keep = cJSON_CreateObject();
    cJSON_AddItemReferenceToObject(keep, "t", cJSON_GetObjectItemCaseSensitive(a, "translatedText"));
    cJSON_AddItemReferenceToObject(keep, "a", cJSON_GetObjectItemCaseSensitive(a, "alternatives"));
    cJSON_AddItemReferenceToObject(keep, "x", cJSON_GetObjectItemCaseSensitive(a, "translations"));
    char *s = cJSON_PrintUnformatted(keep);
    cJSON_Delete(keep);
    ASSERT_TRUE(s != NULL);
    return s;
}

// The scheduler holds nothing: every job back, every session empty.
static void sched_idle(const char *what, long n) {
    moa_sched_stats st;
    moa_sched_get_stats(srv.sched, &st);
    moa_sched_worker_stats ws;
    moa_sched_get_worker_stats(srv.sched, 0, &ws);
    if (st.queued_units || st.live_units || st.rows || st.jobs || ws.units || ws.rows ||
        ws.session_live)
        MOA_TEST_FAIL("%s, failing allocation %ld: the scheduler still holds queued %d live %d "
                      "rows %d jobs %d; worker units %d rows %d session %d", what, n,
                      st.queued_units, st.live_units, st.rows, st.jobs, ws.units, ws.rows,
                      ws.session_live);
}

static void sweep_serve(const char *what, const char *ctype, const char *body) {
    cJSON *a;
    ASSERT_EQ_INT(serve(ctype, body, &a), 200);
    char *want = answer_text(a);
    cJSON_Delete(a);
    long n;
    int failures = 0;
    for (n = 1; n < MAX_N; n++) {
        failalloc_arm(n);
        int st = serve(ctype, body, &a);
        int fired = failalloc_fired();
        failalloc_disarm();
        if (st == 200) {
            char *got = answer_text(a);
            if (strcmp(got, want))
                MOA_TEST_FAIL("%s, failing allocation %ld: answer %s, expected %s", what, n,
                              got, want);
            free(got);
            cJSON_Delete(a);
        } else {
            if (st != 500) MOA_TEST_FAIL("%s, failing allocation %ld: status %d", what, n, st);
            if (!fired) MOA_TEST_FAIL("%s: status 500 with no allocation failing", what);
            failures++;
        }
        sched_idle(what, n);
        // the same server again, with memory back
        ASSERT_EQ_INT(serve(ctype, body, &a), 200);
        char *again = answer_text(a);
        if (strcmp(again, want))
            MOA_TEST_FAIL("%s, after failing allocation %ld: answer %s, expected %s", what, n,
                          again, want);
        free(again);
        cJSON_Delete(a);
        sched_idle(what, n);
        if (leaks_now()) MOA_TEST_FAIL("%s: leak after failing allocation %ld", what, n);
        if (!fired) break;
    }
    if (n >= MAX_N) MOA_TEST_FAIL("%s: no end to the sweep", what);
    printf("  %s: %ld allocations swept, %d answered 500\n", what, n - 1, failures);
    ASSERT_TRUE(failures > 0);
    free(want);
}

static void test_server_translate(void) {
    server_start();
    sweep_serve("/translate JSON, html, two texts, beam 2, alternatives", "application/json",
                "{\"q\": [\"Delete unused files. Show %s hidden ones!\","
                " \"<p><b>Open</b> the file &amp; save it.</p><p title=\\\"Close\\\">Close {0}</p>\"],"
                " \"format\": \"html\", \"beam_size\": 2, \"alternatives\": 1,"
                " \"return_scores\": true}");
    sweep_serve("/translate form, sampling", "application/x-www-form-urlencoded",
                "q=Show+hidden+files&q=%26Save+%25d+items.+Quit+now%3F&sampling_topk=3&seed=5"
                "&source=auto");
    // a trace is a few hundred small JSON objects: one short text
    sweep_serve("/translate trace", "application/json", "{\"text\": \"Quit\", \"trace\": true}");
    server_stop();
}

// --- main ------------------------------------------------------------------------------------------

static const moa_test_case cases[] = {
    {"translate_beam_trace", test_translate_beam_trace},
    {"translate_sampling", test_translate_sampling},
    {"score_trace", test_score_trace},
    {"session_step_failures", test_session_step_failures},
    {"server_translate", test_server_translate},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    // The scheduler logs every failure it handles; here they are the point.
    moa_log_init((moa_log_level)-1, 0);
    // cJSON's allocations through moa_api.c, as moa-server's main sets
    // them up: counted (and failed) there like every other allocation.
    moa_api_init();
    setup();
    int ran = 0;
    for (const moa_test_case *c = cases; c->name; c++) {
        if (filter && !strstr(c->name, filter)) continue;
        printf("oom/%s\n", c->name);
        fflush(stdout);
        c->fn();  // a failure exits 1 with the message
        printf("ok     oom/%s\n", c->name);
        ran++;
    }
    teardown();
    printf("%d passed\n", ran);
    return 0;
}
