// test_sched.c — the scheduler (server/moa_sched.c) driven step by step in
// manual mode: no thread, an injected clock, the real engine on the tiny
// trained model. Fairness, cancellation (queued, and while its session
// steps), deadlines, stop, worker balance, max_queue, engine refusals; and
// the threaded mode against the same results. Nothing here sleeps or
// depends on timing: every check is on states and counters.
#include <math.h>
#include <pthread.h>

#include "moa_conf.h"
#include "moa_heads.h"
#include "moa_metrics.h"
#include "moa_model.h"
#include "moa_sched.h"
#include "moa_test.h"
#include "moa_tokenizer.h"

#define TINY "tests/fixtures/models/tiny-trained"
#define SAMPLE "tests/fixtures/sample.en-de.tsv"
#define N_SENTS 300

// --- fixture: model, sentences, a scheduler ------------------------------------------

typedef struct fixture {
    moa_model *model;
    int *len;                   // N_SENTS source sentences, ids without eos
    int **ids;
    moa_conf conf;
    moa_metrics *metrics;
    moa_sched *s;
    moa_heads *heads;           // NULL, or /heads statistics for fixture_start
    double clock;               // the injected clock (manual mode)
} fixture;

static double fake_now(void *ctx) { return *(double *)ctx; }

static void fixture_load(fixture *f) {
    char err[512];
    memset(f, 0, sizeof *f);
    moa_set_num_threads(1);
    if (!(f->model = moa_model_load(TINY, err, sizeof err))) MOA_TEST_FAIL("%s", err);
    moa_tokenizer *tok = moa_tokenizer_load(TINY, err, sizeof err);
    if (!tok) MOA_TEST_FAIL("%s", err);
    FILE *fp = fopen(SAMPLE, "r");
    if (!fp) MOA_TEST_FAIL("cannot open %s", SAMPLE);
    f->len = calloc(N_SENTS, sizeof *f->len);
    f->ids = calloc(N_SENTS, sizeof *f->ids);
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (n < N_SENTS && getline(&line, &cap, fp) > 0) {
        char *tab = strchr(line, '\t');
        if (tab) *tab = 0;
        if (moa_tokenizer_encode(tok, line, strlen(line), 0, &f->ids[n], &f->len[n], err,
                                 sizeof err))
            MOA_TEST_FAIL("%s", err);
        n++;
    }
    if (n != N_SENTS) MOA_TEST_FAIL("%s: %d sentences, expected %d", SAMPLE, n, N_SENTS);
    free(line);
    fclose(fp);
    moa_tokenizer_free(tok);
    if (!(f->metrics = moa_metrics_create())) MOA_TEST_FAIL("out of memory");
    f->clock = 100.0;
}

// workers engine sessions, max_inflight sentences and max_batch_rows rows in
// all; max_queue waiting sentences.
static void fixture_start(fixture *f, int workers, int inflight, int rows, int queue,
                          const moa_sched_opts *o) {
    memset(&f->conf, 0, sizeof f->conf);
    f->conf.compute_workers = workers;
    f->conf.max_inflight = inflight;
    f->conf.max_batch_rows = rows;
    f->conf.max_queue = queue;
    f->conf.timeout = 60;
    moa_sched_opts opts = {.manual = 1, .now = fake_now, .now_ctx = &f->clock};
    if (o) opts = *o;
    char err[512];
    if (!(f->s = moa_sched_create(f->model, &f->conf, f->metrics, f->heads, &opts, err,
                                  sizeof err)))
        MOA_TEST_FAIL("moa_sched_create: %s", err);
}

static void fixture_free(fixture *f) {
    moa_sched_free(f->s);
    moa_metrics_free(f->metrics);
    for (int i = 0; i < N_SENTS; i++) free(f->ids[i]);
    free(f->ids);
    free(f->len);
    moa_model_free(f->model);
}

// --- jobs ----------------------------------------------------------------------------------

typedef struct tjob {
    moa_job job;
    int calls;                  // on_done calls
    moa_sched_reason why;
    pthread_mutex_t *mu;        // threaded tests: signalled on completion
    pthread_cond_t *cv;
    int *pending;
} tjob;

static void on_done(moa_job *j, moa_sched_reason why) {
    tjob *t = j->owner;
    if (t->mu) pthread_mutex_lock(t->mu);
    t->calls++;
    t->why = why;
    if (t->mu) {
        (*t->pending)--;
        pthread_cond_signal(t->cv);
        pthread_mutex_unlock(t->mu);
    }
}

// n units: sentences first, first+1, ... (mod N_SENTS), beam search with
// `beam` rows and at most max_length target tokens (0: the spec's default);
// no deadline.
static tjob *job_new(const fixture *f, int first, int n, int beam, int max_length) {
    tjob *t = calloc(1, sizeof *t);
    t->job.units = calloc((size_t)n, sizeof(moa_unit));
    t->job.n_units = n;
    t->job.deadline = INFINITY;
    t->job.owner = t;
    t->job.on_done = on_done;
    t->why = (moa_sched_reason)-1;
    for (int i = 0; i < n; i++) {
        moa_unit *u = &t->job.units[i];
        int k = (first + i) % N_SENTS;
        u->src_len = f->len[k];
        u->src = malloc((size_t)(u->src_len ? u->src_len : 1) * sizeof(int));
        memcpy(u->src, f->ids[k], (size_t)u->src_len * sizeof(int));
        moa_search_opts_default(&u->opts);
        u->opts.beam_size = beam;
        u->opts.max_length = max_length;
        u->state = MOA_UNIT_WAITING;
    }
    return t;
}

static void job_free(tjob *t) {
    for (int i = 0; i < t->job.n_units; i++) {
        free(t->job.units[i].src);
        moa_result_clear(&t->job.units[i].res);
    }
    free(t->job.units);
    free(t);
}

static void submit_ok(fixture *f, tjob *t) {
    int rc = moa_sched_submit(f->s, &t->job);
    if (rc) MOA_TEST_FAIL("moa_sched_submit: %s", moa_sched_reason_name((moa_sched_reason)rc));
}

static int count_state(const tjob *t, int state) {
    int n = 0;
    for (int i = 0; i < t->job.n_units; i++) n += t->job.units[i].state == state;
    return n;
}

static moa_sched_worker_stats wstats(fixture *f, int w) {
    moa_sched_worker_stats st;
    moa_sched_get_worker_stats(f->s, w, &st);
    return st;
}

// Steps worker w until t comes back; fails after max_steps steps. Returns
// the steps taken.
static int step_until_back(fixture *f, int w, tjob *t, int max_steps) {
    int n = 0;
    while (t->calls == 0) {
        if (n == max_steps) MOA_TEST_FAIL("the job was not back after %d steps", max_steps);
        int rc = moa_sched_step_worker(f->s, w);
        if (rc < 0) MOA_TEST_FAIL("moa_sched_step_worker: %s", moa_strerror(rc));
        if (rc == 0) MOA_TEST_FAIL("worker %d had nothing to step", w);
        n++;
    }
    return n;
}

// Sentence k translated alone, as moa-translate would.
static moa_result translate_alone(const fixture *f, int k, int beam, int max_length) {
    char err[512];
    moa_session *sess = moa_session_create(f->model, 16, err, sizeof err);
    if (!sess) MOA_TEST_FAIL("%s", err);
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.beam_size = beam;
    o.max_length = max_length;
    moa_result r;
    const int *src = f->ids[k];
    if (moa_translate(sess, &src, &f->len[k], 1, &o, &r, err, sizeof err))
        MOA_TEST_FAIL("moa_translate: %s", err);
    moa_session_free(sess);
    return r;
}

static void assert_same_tokens(const moa_result *a, const moa_result *b) {
    ASSERT_TRUE(a->n_hyps >= 1 && b->n_hyps >= 1);
    ASSERT_EQ_INT(a->hyps[0].n_tokens, b->hyps[0].n_tokens);
    for (int i = 0; i < a->hyps[0].n_tokens; i++)
        ASSERT_EQ_INT(a->hyps[0].tokens[i], b->hyps[0].tokens[i]);
}

// The scheduler and the sessions hold nothing.
static void assert_idle(fixture *f) {
    moa_sched_stats st;
    moa_sched_get_stats(f->s, &st);
    ASSERT_EQ_INT(st.queued_units, 0);
    ASSERT_EQ_INT(st.live_units, 0);
    ASSERT_EQ_INT(st.rows, 0);
    ASSERT_EQ_INT(st.jobs, 0);
    for (int w = 0; w < moa_sched_workers(f->s); w++) {
        moa_sched_worker_stats ws = wstats(f, w);
        ASSERT_EQ_INT(ws.units, 0);
        ASSERT_EQ_INT(ws.rows, 0);
        ASSERT_EQ_INT(ws.session_live, 0);
    }
}

// Target tokens at most (eos aside): every unit is done within MAX_STEPS
// steps of its session (the first step encodes it and decodes one token).
#define MAXLEN 12
#define MAX_STEPS (MAXLEN + 1)

// --- fairness ---------------------------------------------------------------------------------

// A 1-unit job submitted right after a 300-unit one gets the second slot of
// the first admission round, not the 301st, and is done within MAX_STEPS.
static void test_fair_short_job_first_round(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 4096, NULL);
    tjob *big = job_new(&f, 0, 300, 4, MAXLEN), *small = job_new(&f, 7, 1, 4, MAXLEN);
    submit_ok(&f, big);
    submit_ok(&f, small);
    moa_sched_poll(f.s);
    // big's first unit, then small's (fewest in the batch), then big fills up
    ASSERT_EQ_INT(big->job.units[0].admitted, 1);
    ASSERT_EQ_INT(small->job.units[0].state, MOA_UNIT_LIVE);
    ASSERT_EQ_INT(small->job.units[0].admitted, 2);
    ASSERT_EQ_INT(big->job.n_live, 3);
    ASSERT_EQ_INT(big->job.n_waiting, 297);
    ASSERT_EQ_INT(small->job.n_live, 1);
    moa_sched_stats st;
    moa_sched_get_stats(f.s, &st);
    ASSERT_EQ_INT(st.live_units, 4);
    ASSERT_EQ_INT(st.queued_units, 297);
    int steps = step_until_back(&f, 0, small, MAX_STEPS);
    ASSERT_EQ_INT(small->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(small->calls, 1);
    ASSERT_EQ_INT(big->calls, 0);
    ASSERT_TRUE(count_state(big, MOA_UNIT_DONE) < 300);
    // it decoded as if alone
    moa_result alone = translate_alone(&f, 7, 4, MAXLEN);
    assert_same_tokens(&small->job.units[0].res, &alone);
    moa_result_clear(&alone);
    printf("    1-unit job done after %d steps; 300-unit job: %d units done\n", steps,
           count_state(big, MOA_UNIT_DONE));
    moa_sched_stop(f.s);
    ASSERT_EQ_INT(big->calls, 1);
    ASSERT_EQ_INT(big->why, MOA_SCHED_STOPPED);
    assert_idle(&f);
    job_free(big);
    job_free(small);
    fixture_free(&f);
}

// A 1-unit job arriving while a 300-unit job fills the batch takes the first
// slot that frees up, ahead of the big job's 290-odd waiting units.
static void test_fair_short_job_next_free_slot(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 4096, NULL);
    tjob *big = job_new(&f, 0, 300, 4, MAXLEN);
    submit_ok(&f, big);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(big->job.n_live, 4);
    for (int i = 0; i < 5; i++) moa_sched_step_worker(f.s, 0);  // a few steps in
    long admitted_before = 0;
    for (int i = 0; i < 300; i++)
        if (big->job.units[i].admitted > admitted_before) admitted_before = big->job.units[i].admitted;
    tjob *small = job_new(&f, 9, 1, 4, MAXLEN);
    submit_ok(&f, small);
    moa_sched_poll(f.s);  // the batch is full: it waits
    ASSERT_EQ_INT(small->job.units[0].state, MOA_UNIT_WAITING);
    int steps = 0;
    while (small->job.units[0].state == MOA_UNIT_WAITING) {
        ASSERT_TRUE(steps < MAX_STEPS);  // a big unit finishes within MAX_STEPS
        moa_sched_step_worker(f.s, 0);
        steps++;
    }
    ASSERT_EQ_INT(small->job.units[0].admitted, admitted_before + 1);
    steps += step_until_back(&f, 0, small, MAX_STEPS);
    ASSERT_EQ_INT(small->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(big->calls, 0);
    ASSERT_TRUE(steps <= 2 * MAX_STEPS);
    moa_sched_stop(f.s);
    ASSERT_EQ_INT(big->why, MOA_SCHED_STOPPED);
    assert_idle(&f);
    job_free(big);
    job_free(small);
    fixture_free(&f);
}

// --- cancellation ----------------------------------------------------------------------------

// A queued job (and one not even taken yet) cancelled: back at once with
// CANCELLED, its units never enter a session; a second cancel does nothing.
static void test_cancel_queued_job(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 1, 64, 4096, NULL);
    tjob *a = job_new(&f, 0, 1, 4, MAXLEN), *b = job_new(&f, 1, 2, 4, MAXLEN);
    tjob *c = job_new(&f, 3, 2, 4, MAXLEN);
    submit_ok(&f, a);
    submit_ok(&f, b);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(a->job.units[0].state, MOA_UNIT_LIVE);
    ASSERT_EQ_INT(b->job.n_waiting, 2);
    submit_ok(&f, c);  // submitted, not yet taken by a poll
    moa_sched_stats st;
    moa_sched_get_stats(f.s, &st);
    ASSERT_EQ_INT(st.queued_units, 4);
    moa_sched_cancel(f.s, &b->job);
    ASSERT_EQ_INT(b->calls, 1);
    ASSERT_EQ_INT(b->why, MOA_SCHED_CANCELLED);
    ASSERT_EQ_INT(count_state(b, MOA_UNIT_CANCELLED), 2);
    moa_sched_cancel(f.s, &c->job);
    ASSERT_EQ_INT(c->calls, 1);
    ASSERT_EQ_INT(c->why, MOA_SCHED_CANCELLED);
    moa_sched_get_stats(f.s, &st);
    ASSERT_EQ_INT(st.queued_units, 0);
    moa_sched_cancel(f.s, &b->job);  // already back: nothing happens
    ASSERT_EQ_INT(b->calls, 1);
    step_until_back(&f, 0, a, MAX_STEPS);
    ASSERT_EQ_INT(a->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(a->calls, 1);
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ_INT(b->job.units[i].admitted, 0);
        ASSERT_EQ_INT(c->job.units[i].admitted, 0);
    }
    assert_idle(&f);
    moa_sched_cancel(f.s, &a->job);  // done already: nothing happens
    ASSERT_EQ_INT(a->calls, 1);
    ASSERT_EQ_INT(a->why, MOA_SCHED_DONE);
    job_free(a);
    job_free(b);
    job_free(c);
    fixture_free(&f);
}

// While worker 0 takes its second step: cancel x (max_length 1: a token,
// then eos, so finished by that very step) and y (still decoding after it). Both come back CANCELLED at once;
// when the step ends the worker throws x's result away and takes y out of
// its session; z, in the same session, is untouched; the session serves
// the next job as if nothing happened.
typedef struct cancel_ctx {
    fixture *f;
    tjob *x, *y;
    int calls;
    int busy_seen, back_during_step;
} cancel_ctx;

static void cancel_during_step(void *ctx, int worker) {
    cancel_ctx *c = ctx;
    if (++c->calls != 2) return;
    c->busy_seen = wstats(c->f, worker).busy;
    moa_sched_cancel(c->f->s, &c->x->job);
    moa_sched_cancel(c->f->s, &c->y->job);
    c->back_during_step = c->x->calls == 1 && c->y->calls == 1;
}

static void test_cancel_stepping_units(void) {
    fixture f;
    fixture_load(&f);
    cancel_ctx c = {.f = &f};
    moa_sched_opts o = {.manual = 1, .now = fake_now, .now_ctx = &f.clock,
                        .during_step = cancel_during_step, .step_ctx = &c};
    fixture_start(&f, 1, 4, 64, 4096, &o);
    c.x = job_new(&f, 0, 1, 4, 1);
    c.y = job_new(&f, 2, 1, 4, MAXLEN);
    c.y->job.units[0].opts.min_length = MAXLEN;  // certainly still decoding after one step
    tjob *z = job_new(&f, 5, 1, 4, MAXLEN);
    submit_ok(&f, c.x);
    submit_ok(&f, c.y);
    submit_ok(&f, z);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(wstats(&f, 0).units, 3);
    ASSERT_TRUE(moa_sched_step_worker(f.s, 0) > 0);
    ASSERT_EQ_INT(c.x->calls, 0);
    ASSERT_EQ_INT(wstats(&f, 0).units, 3);
    ASSERT_TRUE(moa_sched_step_worker(f.s, 0) > 0);
    ASSERT_EQ_INT(c.busy_seen, 1);
    ASSERT_TRUE(c.back_during_step);
    ASSERT_EQ_INT(c.x->why, MOA_SCHED_CANCELLED);
    ASSERT_EQ_INT(c.y->why, MOA_SCHED_CANCELLED);
    moa_sched_worker_stats ws = wstats(&f, 0);
    ASSERT_EQ_INT(ws.dropped, 1);        // x's result, produced by the step
    ASSERT_EQ_INT(ws.units, 1);          // z
    ASSERT_EQ_INT(ws.rows, 4);
    ASSERT_EQ_INT(ws.session_live, 1);   // y left the session too
    ASSERT_EQ_INT(c.x->calls, 1);
    ASSERT_EQ_INT(c.y->calls, 1);
    step_until_back(&f, 0, z, MAX_STEPS);
    ASSERT_EQ_INT(z->why, MOA_SCHED_DONE);
    moa_result alone = translate_alone(&f, 5, 4, MAXLEN);
    assert_same_tokens(&z->job.units[0].res, &alone);
    moa_result_clear(&alone);
    // the session serves x's sentence again, right
    tjob *x2 = job_new(&f, 0, 1, 4, MAXLEN);
    submit_ok(&f, x2);
    moa_sched_poll(f.s);
    step_until_back(&f, 0, x2, MAX_STEPS);
    ASSERT_EQ_INT(x2->why, MOA_SCHED_DONE);
    alone = translate_alone(&f, 0, 4, MAXLEN);
    assert_same_tokens(&x2->job.units[0].res, &alone);
    moa_result_clear(&alone);
    assert_idle(&f);
    job_free(c.x);
    job_free(c.y);
    job_free(z);
    job_free(x2);
    fixture_free(&f);
}

// --- deadlines ---------------------------------------------------------------------------------

typedef struct deadline_ctx {
    fixture *f;
    double at;                  // the clock moves there during the next step
} deadline_ctx;

static void deadline_during_step(void *ctx, int worker) {
    (void)worker;
    deadline_ctx *d = ctx;
    if (d->at <= 0) return;
    d->f->clock = d->at;
    d->at = 0;
    moa_sched_poll(d->f->s);  // the loop thread's round, while the worker steps
}

// On the injected clock: a queued job and a live one expire exactly at
// their deadlines (not before), a third expires while its unit steps; each
// comes back DEADLINE once, its units leave, the job without a deadline
// completes.
static void test_deadline_expires(void) {
    fixture f;
    fixture_load(&f);
    deadline_ctx d = {.f = &f};
    moa_sched_opts o = {.manual = 1, .now = fake_now, .now_ctx = &f.clock,
                        .during_step = deadline_during_step, .step_ctx = &d};
    fixture_start(&f, 1, 1, 64, 4096, &o);
    tjob *a = job_new(&f, 0, 1, 4, MAXLEN), *b = job_new(&f, 1, 1, 4, MAXLEN);
    tjob *c = job_new(&f, 2, 1, 4, MAXLEN);
    a->job.units[0].opts.min_length = MAXLEN;  // still decoding at its deadline
    a->job.deadline = 105;
    b->job.deadline = 103;
    c->job.deadline = 110;
    submit_ok(&f, a);
    submit_ok(&f, b);
    submit_ok(&f, c);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(a->job.units[0].state, MOA_UNIT_LIVE);
    ASSERT_EQ_INT(a->job.t_submit, 100);
    moa_sched_step_worker(f.s, 0);
    f.clock = 102.999;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(b->calls, 0);
    f.clock = 103;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(b->calls, 1);
    ASSERT_EQ_INT(b->why, MOA_SCHED_DEADLINE);
    ASSERT_EQ_INT(b->job.units[0].admitted, 0);  // never in the session
    ASSERT_TRUE(b->job.t_done == 103);
    ASSERT_EQ_INT(a->calls, 0);
    moa_sched_step_worker(f.s, 0);
    f.clock = 105;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(a->calls, 1);
    ASSERT_EQ_INT(a->why, MOA_SCHED_DEADLINE);
    ASSERT_TRUE(a->job.t_done == 105);
    // a's slot went to c at once
    ASSERT_EQ_INT(c->job.units[0].state, MOA_UNIT_LIVE);
    ASSERT_EQ_INT(wstats(&f, 0).session_live, 1);
    // c's deadline passes while its unit steps
    d.at = 111;
    moa_sched_step_worker(f.s, 0);
    ASSERT_EQ_INT(c->calls, 1);
    ASSERT_EQ_INT(c->why, MOA_SCHED_DEADLINE);
    assert_idle(&f);
    job_free(a);
    job_free(b);
    job_free(c);
    fixture_free(&f);
}

// The value of one sample line ("name{labels} value") of the metrics page.
static double metric_value(fixture *f, const char *series) {
    moa_buf b = {0};
    moa_metrics_render(f->metrics, &b);
    if (b.oom) MOA_TEST_FAIL("out of memory");
    char key[256];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(b.s, key);
    if (!p) MOA_TEST_FAIL("no sample %s in the metrics", series);
    double v = strtod(p + strlen(key), NULL);
    free(b.s);
    return v;
}

// A job whose deadline passed while it waited, or that was submitted past
// it, is never admitted — also when the slot frees up in a worker's round
// (no loop-thread deadline round in between): it comes back DEADLINE with
// no unit ever in a session, and is counted so.
static void test_deadline_never_admitted(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 1, 64, 4096, NULL);
    tjob *a = job_new(&f, 0, 1, 4, MAXLEN), *b = job_new(&f, 1, 1, 4, MAXLEN);
    tjob *c = job_new(&f, 2, 1, 4, MAXLEN);
    b->job.deadline = 103;
    submit_ok(&f, a);
    submit_ok(&f, b);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(a->job.units[0].state, MOA_UNIT_LIVE);
    ASSERT_EQ_INT(b->job.units[0].state, MOA_UNIT_WAITING);
    f.clock = 104;          // b's deadline passes while it waits; no poll
    c->job.deadline = 101;  // and c arrives past its own
    submit_ok(&f, c);
    step_until_back(&f, 0, a, MAX_STEPS);  // a's slot frees in the worker's round
    ASSERT_EQ_INT(a->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(b->calls, 1);
    ASSERT_EQ_INT(b->why, MOA_SCHED_DEADLINE);
    ASSERT_EQ_INT(b->job.units[0].admitted, 0);
    ASSERT_EQ_INT(c->calls, 1);
    ASSERT_EQ_INT(c->why, MOA_SCHED_DEADLINE);
    ASSERT_EQ_INT(c->job.units[0].admitted, 0);
    assert_idle(&f);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"deadline\"}"), 2);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"done\"}"), 1);
    job_free(a);
    job_free(b);
    job_free(c);
    fixture_free(&f);
}

// moa_batch_sentences counts the sentences of every step: two one-unit jobs
// admitted together share their first steps (above the le="1" bucket), the
// one left alone steps alone; moa_scheduler_jobs_total counts how jobs came
// back or were refused.
static void test_metrics_steps_and_jobs(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 2, NULL);
    tjob *a = job_new(&f, 0, 1, 4, MAXLEN), *b = job_new(&f, 1, 1, 4, 4);
    tjob *q = job_new(&f, 2, 3, 4, MAXLEN), *c = job_new(&f, 3, 1, 4, MAXLEN);
    a->job.units[0].opts.min_length = MAXLEN;  // outlives b
    submit_ok(&f, a);
    submit_ok(&f, b);
    ASSERT_EQ_INT(moa_sched_submit(f.s, &q->job), MOA_SCHED_QUEUE_FULL);  // 2 + 3 > 2
    moa_sched_poll(f.s);
    int shared = 0, alone = 0;
    while (a->calls == 0) {
        int n = wstats(&f, 0).units;
        if (moa_sched_step_worker(f.s, 0) <= 0) MOA_TEST_FAIL("nothing stepped");
        if (n == 2) shared++;
        else alone++;
    }
    ASSERT_EQ_INT(b->why, MOA_SCHED_DONE);
    ASSERT_TRUE(shared >= 1 && alone >= 1);
    ASSERT_EQ_INT(metric_value(&f, "moa_batch_sentences_count"), shared + alone);
    ASSERT_EQ_INT(metric_value(&f, "moa_batch_sentences_bucket{le=\"1\"}"), alone);
    ASSERT_EQ_INT(metric_value(&f, "moa_batch_sentences_bucket{le=\"2\"}"), shared + alone);
    submit_ok(&f, c);
    moa_sched_cancel(f.s, &c->job);
    ASSERT_EQ_INT(c->why, MOA_SCHED_CANCELLED);
    moa_sched_stop(f.s);
    ASSERT_EQ_INT(moa_sched_submit(f.s, &q->job), MOA_SCHED_STOPPED);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"done\"}"), 2);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"queue_full\"}"), 1);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"cancelled\"}"), 1);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"stopped\"}"), 1);
    ASSERT_EQ_INT(metric_value(&f, "moa_scheduler_jobs_total{reason=\"deadline\"}"), 0);
    ASSERT_EQ_INT(q->calls, 0);
    job_free(a);
    job_free(b);
    job_free(q);
    job_free(c);
    fixture_free(&f);
}

// --- stop ----------------------------------------------------------------------------------------

// moa_sched_stop gives back everything — a live job, a queued one, one not
// yet taken — with STOPPED, once each; the sessions empty; later
// submissions are refused without a callback.
static void test_stop_gives_everything_back(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 2, 64, 4096, NULL);
    tjob *a = job_new(&f, 0, 2, 4, MAXLEN), *b = job_new(&f, 2, 3, 4, MAXLEN);
    tjob *c = job_new(&f, 5, 1, 4, MAXLEN), *d = job_new(&f, 6, 1, 4, MAXLEN);
    a->job.units[0].opts.min_length = b->job.units[0].opts.min_length = MAXLEN;
    submit_ok(&f, a);
    submit_ok(&f, b);
    moa_sched_poll(f.s);
    moa_sched_step_worker(f.s, 0);
    ASSERT_EQ_INT(a->job.n_live, 1);  // one slot each (fair)
    ASSERT_EQ_INT(b->job.n_live, 1);
    ASSERT_EQ_INT(b->job.n_waiting, 2);
    submit_ok(&f, c);
    moa_sched_stop(f.s);
    tjob *all[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ_INT(all[i]->calls, 1);
        ASSERT_EQ_INT(all[i]->why, MOA_SCHED_STOPPED);
        ASSERT_EQ_INT(count_state(all[i], MOA_UNIT_CANCELLED), all[i]->job.n_units);
    }
    assert_idle(&f);
    ASSERT_EQ_INT(moa_sched_submit(f.s, &d->job), MOA_SCHED_STOPPED);
    moa_sched_stop(f.s);  // again: nothing
    ASSERT_EQ_INT(d->calls, 0);
    ASSERT_EQ_INT(a->calls, 1);
    for (int i = 0; i < 3; i++) job_free(all[i]);
    job_free(d);
    fixture_free(&f);
}

typedef struct stop_ctx {
    fixture *f;
    int calls;
} stop_ctx;

static void stop_during_step(void *ctx, int worker) {
    (void)worker;
    stop_ctx *c = ctx;
    if (++c->calls == 2) moa_sched_stop(c->f->s);
}

// Stopped during a worker's second step: the job comes back STOPPED during
// the step; when it ends the worker drops the result it produced (a unit
// with max_length 1) and takes the other units out of its session.
static void test_stop_while_stepping(void) {
    fixture f;
    fixture_load(&f);
    stop_ctx c = {.f = &f};
    moa_sched_opts o = {.manual = 1, .now = fake_now, .now_ctx = &f.clock,
                        .during_step = stop_during_step, .step_ctx = &c};
    fixture_start(&f, 1, 4, 64, 4096, &o);
    tjob *a = job_new(&f, 0, 3, 4, MAXLEN);
    a->job.units[0].opts.min_length = MAXLEN;
    a->job.units[2].opts.max_length = 1;  // its result comes out of step 2
    submit_ok(&f, a);
    moa_sched_poll(f.s);
    moa_sched_step_worker(f.s, 0);
    ASSERT_EQ_INT(a->calls, 0);
    moa_sched_step_worker(f.s, 0);
    ASSERT_EQ_INT(a->calls, 1);
    ASSERT_EQ_INT(a->why, MOA_SCHED_STOPPED);
    ASSERT_EQ_INT(wstats(&f, 0).dropped, 1);
    assert_idle(&f);
    ASSERT_EQ_INT(moa_sched_step_worker(f.s, 0), 0);  // nothing left to step
    job_free(a);
    fixture_free(&f);
}

// --- workers -------------------------------------------------------------------------------------

// Each unit goes to the worker with the fewest rows, within each worker's
// share of max_inflight (8 / 2 workers = 4 units).
static void test_workers_balanced_by_rows(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 2, 8, 64, 4096, NULL);
    ASSERT_EQ_INT(moa_sched_workers(f.s), 2);
    tjob *t = job_new(&f, 0, 8, 4, MAXLEN);
    static const int beams[8] = {8, 1, 1, 1, 4, 2, 1, 1};
    // worker rows after each:   w0 8 | w1 1, 2, 3, 7 (w1 then holds 4 units)
    // | w0 10, 11, 12
    static const int want[8] = {0, 1, 1, 1, 1, 0, 0, 0};
    for (int i = 0; i < 8; i++) t->job.units[i].opts.beam_size = beams[i];
    submit_ok(&f, t);
    moa_sched_poll(f.s);
    for (int i = 0; i < 8; i++) {
        ASSERT_EQ_INT(t->job.units[i].state, MOA_UNIT_LIVE);
        ASSERT_EQ_INT(t->job.units[i].worker, want[i]);
    }
    moa_sched_worker_stats w0 = wstats(&f, 0), w1 = wstats(&f, 1);
    ASSERT_EQ_INT(w0.units, 4);
    ASSERT_EQ_INT(w0.rows, 12);
    ASSERT_EQ_INT(w1.units, 4);
    ASSERT_EQ_INT(w1.rows, 7);
    ASSERT_EQ_INT(w0.session_live, 4);
    ASSERT_EQ_INT(w1.session_live, 4);
    // both step on their own until the job is done
    int steps = 0;
    while (t->calls == 0) {
        ASSERT_TRUE(steps++ < 2 * MAX_STEPS);
        moa_sched_step_worker(f.s, 0);
        moa_sched_step_worker(f.s, 1);
    }
    ASSERT_EQ_INT(t->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(count_state(t, MOA_UNIT_DONE), 8);
    ASSERT_TRUE(wstats(&f, 0).steps > 0 && wstats(&f, 1).steps > 0);
    assert_idle(&f);
    job_free(t);
    fixture_free(&f);
}

typedef struct busy_ctx {
    fixture *f;
    tjob *r;
    int state_during, admitted;
} busy_ctx;

static void submit_during_step(void *ctx, int worker) {
    busy_ctx *b = ctx;
    if (worker != 1 || b->admitted) return;
    b->admitted = 1;
    submit_ok(b->f, b->r);
    moa_sched_poll(b->f->s);
    b->state_during = b->r->job.units[0].state;
}

// A unit arriving while the worker with the fewest rows steps waits for
// that step to end rather than go to the fuller idle worker.
static void test_workers_wait_for_fewer_rows(void) {
    fixture f;
    fixture_load(&f);
    busy_ctx b = {.f = &f};
    moa_sched_opts o = {.manual = 1, .now = fake_now, .now_ctx = &f.clock,
                        .during_step = submit_during_step, .step_ctx = &b};
    fixture_start(&f, 2, 8, 64, 4096, &o);
    tjob *p = job_new(&f, 0, 1, 8, MAXLEN), *q = job_new(&f, 1, 1, 1, MAXLEN);
    p->job.units[0].opts.min_length = q->job.units[0].opts.min_length = MAXLEN;
    b.r = job_new(&f, 2, 1, 1, MAXLEN);
    submit_ok(&f, p);
    submit_ok(&f, q);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(p->job.units[0].worker, 0);  // 8 rows
    ASSERT_EQ_INT(q->job.units[0].worker, 1);  // 1 row
    moa_sched_step_worker(f.s, 1);             // r arrives during this step
    ASSERT_EQ_INT(b.state_during, MOA_UNIT_WAITING);
    ASSERT_EQ_INT(b.r->job.units[0].state, MOA_UNIT_LIVE);
    ASSERT_EQ_INT(b.r->job.units[0].worker, 1);
    ASSERT_EQ_INT(wstats(&f, 1).rows, 2);
    ASSERT_EQ_INT(wstats(&f, 0).rows, 8);
    moa_sched_stop(f.s);
    assert_idle(&f);
    job_free(p);
    job_free(q);
    job_free(b.r);
    fixture_free(&f);
}

// --- submission ----------------------------------------------------------------------------------

// max_queue counts waiting units; a job arriving at an empty queue is taken
// whatever its size; a refused job never gets a callback.
static void test_queue_full(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 1, 64, 5, NULL);
    tjob *a = job_new(&f, 0, 3, 4, MAXLEN), *b = job_new(&f, 3, 3, 4, MAXLEN);
    tjob *c = job_new(&f, 6, 2, 4, MAXLEN);
    submit_ok(&f, a);
    ASSERT_EQ_INT(moa_sched_submit(f.s, &b->job), MOA_SCHED_QUEUE_FULL);  // 3 + 3 > 5
    submit_ok(&f, c);                                                        // 3 + 2
    moa_sched_stats st;
    moa_sched_get_stats(f.s, &st);
    ASSERT_EQ_INT(st.queued_units, 5);
    moa_sched_stop(f.s);
    ASSERT_EQ_INT(b->calls, 0);
    ASSERT_EQ_INT(a->why, MOA_SCHED_STOPPED);
    ASSERT_EQ_INT(c->why, MOA_SCHED_STOPPED);
    moa_sched_free(f.s);

    fixture_start(&f, 1, 1, 64, 5, NULL);
    tjob *big = job_new(&f, 10, 10, 4, MAXLEN), *d = job_new(&f, 20, 1, 4, MAXLEN);
    submit_ok(&f, big);  // 10 > 5, but the queue was empty
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(moa_sched_submit(f.s, &d->job), MOA_SCHED_QUEUE_FULL);  // 9 + 1 > 5
    moa_sched_stop(f.s);
    ASSERT_EQ_INT(d->calls, 0);
    ASSERT_EQ_INT(big->calls, 1);
    job_free(a);
    job_free(b);
    job_free(c);
    job_free(big);
    job_free(d);
    fixture_free(&f);
}

// With /heads on, every computed sentence is traced and counted, and a unit
// keeps its trace only when its submitter asked for it (opts.trace): a
// result held until its whole job is done (thousands, for a 5000-line
// request) does not carry the bytes only /heads wanted.
static void test_heads_count_all_keep_asked_traces(void) {
    fixture f;
    fixture_load(&f);
    moa_heads *heads = f.heads = moa_heads_create(moa_model_config(f.model));
    if (!heads) MOA_TEST_FAIL("out of memory");
    fixture_start(&f, 1, 8, 64, 4096, NULL);
    tjob *t = job_new(&f, 3, 4, 2, MAXLEN);
    t->job.units[0].opts.trace = t->job.units[1].opts.trace = 1;
    submit_ok(&f, t);
    moa_sched_poll(f.s);
    step_until_back(&f, 0, t, MAX_STEPS);
    ASSERT_EQ_INT(t->why, MOA_SCHED_DONE);
    long src_tokens = 0, tgt_tokens = 0;
    for (int i = 0; i < 4; i++) {
        const moa_unit *u = &t->job.units[i];
        ASSERT_EQ_INT(u->res.n_hyps, 1);
        src_tokens += u->src_len + 1;
        tgt_tokens += u->res.hyps[0].n_tokens;
        if (i < 2) {
            ASSERT_TRUE(u->res.hyps[0].trace != NULL);
            ASSERT_EQ_INT(u->res.hyps[0].trace->tgt_len, u->res.hyps[0].n_tokens);
        } else {
            ASSERT_TRUE(u->res.hyps[0].trace == NULL);
        }
        moa_result alone = translate_alone(&f, 3 + i, 2, MAXLEN);
        assert_same_tokens(&u->res, &alone);
        ASSERT_NEAR(u->res.hyps[0].score, alone.hyps[0].score, 1e-6);
        moa_result_clear(&alone);
    }
    cJSON *j = moa_heads_json(heads, NULL, 0);
    if (!j) MOA_TEST_FAIL("out of memory");
    ASSERT_EQ_INT((int)cJSON_GetObjectItem(j, "sentences")->valuedouble, 4);
    ASSERT_EQ_INT((int)cJSON_GetObjectItem(j, "hypotheses")->valuedouble, 4);
    ASSERT_EQ_INT((long)cJSON_GetObjectItem(j, "source_tokens")->valuedouble, src_tokens);
    ASSERT_EQ_INT((long)cJSON_GetObjectItem(j, "target_tokens")->valuedouble, tgt_tokens);
    cJSON_Delete(j);
    assert_idle(&f);
    job_free(t);
    fixture_free(&f);
    moa_heads_free(heads);
}

// Each worker publishes what its sessions hold after every round: the
// arena from creation on, the sentences' blocks while they decode, then
// the same blocks kept for reuse.
static void test_session_memory_published(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 8, 64, 4096, NULL);
    moa_sched_worker_stats ws = wstats(&f, 0);
    ASSERT_TRUE(ws.mem.arena_bytes > 0);
    ASSERT_EQ_INT(ws.mem.blocks_in_use_bytes, 0);
    ASSERT_EQ_INT(ws.mem.blocks_free_bytes, 0);
    tjob *t = job_new(&f, 0, 4, 4, MAXLEN);
    submit_ok(&f, t);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(moa_sched_step_worker(f.s, 0) > 0, 1);
    ws = wstats(&f, 0);
    ASSERT_TRUE(ws.mem.blocks_in_use_bytes > 0);
    size_t in_use = ws.mem.blocks_in_use_bytes;
    step_until_back(&f, 0, t, MAX_STEPS);
    ASSERT_EQ_INT(t->why, MOA_SCHED_DONE);
    ws = wstats(&f, 0);
    ASSERT_EQ_INT(ws.mem.blocks_in_use_bytes, 0);
    ASSERT_TRUE(ws.mem.blocks_free_bytes >= in_use);
    assert_idle(&f);
    job_free(t);
    fixture_free(&f);
}

// A job whose units all came from the cache is given back DONE by the next
// round, without a session.
static void test_all_cached_job_done(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 4096, NULL);
    tjob *t = job_new(&f, 0, 2, 4, MAXLEN);
    for (int i = 0; i < 2; i++) {
        t->job.units[i].state = MOA_UNIT_DONE;
        t->job.units[i].from_cache = 1;
    }
    submit_ok(&f, t);
    ASSERT_EQ_INT(t->calls, 0);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(t->calls, 1);
    ASSERT_EQ_INT(t->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(wstats(&f, 0).steps, 0);
    assert_idle(&f);
    job_free(t);
    fixture_free(&f);
}

// A unit the engine refuses (here: a source token outside the vocabulary,
// which the tokenizer never produces) fails its job with the engine's
// message; the job's other units leave, other jobs go on.
static void test_engine_refusal_fails_job(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 4096, NULL);
    tjob *bad = job_new(&f, 0, 3, 4, MAXLEN), *good = job_new(&f, 3, 1, 4, MAXLEN);
    bad->job.units[1].src[0] = 99999;
    submit_ok(&f, bad);
    submit_ok(&f, good);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(bad->calls, 1);
    ASSERT_EQ_INT(bad->why, MOA_SCHED_FAILED);
    ASSERT_STR_CONTAINS(bad->job.err, "engine refused a sentence");
    ASSERT_STR_CONTAINS(bad->job.err, "out of range");
    ASSERT_EQ_INT(count_state(bad, MOA_UNIT_CANCELLED), 3);
    step_until_back(&f, 0, good, MAX_STEPS);
    ASSERT_EQ_INT(good->why, MOA_SCHED_DONE);
    assert_idle(&f);
    job_free(bad);
    job_free(good);
    fixture_free(&f);
}

// --- several models ----------------------------------------------------------------------------

#define RANDOM "tests/fixtures/models/tiny-random"

// Sentence k as a source for tiny-random (a 1000-piece vocabulary): any
// in-vocabulary ids are a valid source.
static void ids_for_random(moa_unit *u) {
    for (int i = 0; i < u->src_len; i++) u->src[i] %= 1000;
}

// Two models in one scheduler with one worker: units of both are admitted to
// the same worker (its sessions, one per model), max_inflight is shared
// (fewest units first, whatever the model), both jobs complete, and every
// unit equals its sentence translated alone by ITS model (the two models
// differ, so a unit run by the wrong one would not match).
static void test_two_models_share_worker(void) {
    fixture f;
    fixture_load(&f);
    char err[512];
    moa_model *rnd = moa_model_load(RANDOM, err, sizeof err);
    if (!rnd) MOA_TEST_FAIL("%s", err);
    memset(&f.conf, 0, sizeof f.conf);
    f.conf.compute_workers = 1;
    f.conf.max_inflight = 4;
    f.conf.max_batch_rows = 64;
    f.conf.max_queue = 4096;
    f.conf.timeout = 60;
    moa_sched_opts opts = {.manual = 1, .now = fake_now, .now_ctx = &f.clock};
    const moa_model *models[2] = {f.model, rnd};
    if (!(f.s = moa_sched_create_models(models, 2, &f.conf, f.metrics, NULL, &opts, err,
                                        sizeof err)))
        MOA_TEST_FAIL("moa_sched_create_models: %s", err);
    tjob *a = job_new(&f, 0, 6, 4, MAXLEN), *b = job_new(&f, 10, 2, 2, MAXLEN);
    for (int i = 0; i < 2; i++) {
        b->job.units[i].model = 1;
        ids_for_random(&b->job.units[i]);
    }
    submit_ok(&f, a);
    submit_ok(&f, b);
    moa_sched_poll(f.s);
    // 4 in flight in all, not per model: two of each (fewest units first)
    ASSERT_EQ_INT(count_state(a, MOA_UNIT_LIVE), 2);
    ASSERT_EQ_INT(count_state(b, MOA_UNIT_LIVE), 2);
    ASSERT_EQ_INT(wstats(&f, 0).units, 4);
    ASSERT_EQ_INT(wstats(&f, 0).rows, 2 * 4 + 2 * 2);
    ASSERT_EQ_INT(wstats(&f, 0).session_live, 4);
    int steps = 0;
    while (a->calls == 0 || b->calls == 0) {
        if (steps == 4 * MAX_STEPS) MOA_TEST_FAIL("jobs not back after %d steps", steps);
        int rc = moa_sched_step_worker(f.s, 0);
        if (rc <= 0) MOA_TEST_FAIL("moa_sched_step_worker: %d", rc);
        steps++;
    }
    ASSERT_EQ_INT(a->why, MOA_SCHED_DONE);
    ASSERT_EQ_INT(b->why, MOA_SCHED_DONE);
    for (int u = 0; u < 6; u++) {
        moa_result alone = translate_alone(&f, u, 4, MAXLEN);
        assert_same_tokens(&a->job.units[u].res, &alone);
        moa_result_clear(&alone);
    }
    for (int u = 0; u < 2; u++) {
        moa_session *sess = moa_session_create(rnd, 16, err, sizeof err);
        if (!sess) MOA_TEST_FAIL("%s", err);
        moa_search_opts o;
        moa_search_opts_default(&o);
        o.beam_size = 2;
        o.max_length = MAXLEN;
        moa_result r;
        const int *src = b->job.units[u].src;
        if (moa_translate(sess, &src, &b->job.units[u].src_len, 1, &o, &r, err, sizeof err))
            MOA_TEST_FAIL("moa_translate: %s", err);
        assert_same_tokens(&b->job.units[u].res, &r);
        moa_result_clear(&r);
        moa_session_free(sess);
    }
    assert_idle(&f);
    job_free(a);
    job_free(b);
    fixture_free(&f);
    moa_model_free(rnd);
}

// A unit naming a model the scheduler does not have fails its job.
static void test_unknown_model_fails_job(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 4096, NULL);
    tjob *t = job_new(&f, 0, 1, 4, MAXLEN);
    t->job.units[0].model = 1;
    submit_ok(&f, t);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(t->calls, 1);
    ASSERT_EQ_INT(t->why, MOA_SCHED_FAILED);
    assert_idle(&f);
    job_free(t);
    fixture_free(&f);
}

// --- threaded mode -----------------------------------------------------------------------------

// The threads run the same rounds: jobs submitted to a threaded scheduler
// (2 workers, real clock) come back DONE once each, every unit translated
// as it is alone. Waits on a condition variable for the callbacks, with no
// time limit of its own.
static void test_threaded_same_results(void) {
    fixture f;
    fixture_load(&f);
    moa_sched_opts o = {0};
    fixture_start(&f, 2, 6, 64, 4096, &o);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int pending = 3;
    static const int first[3] = {0, 40, 80}, n[3] = {5, 1, 12}, beam[3] = {4, 1, 2};
    tjob *t[3];
    for (int i = 0; i < 3; i++) {
        t[i] = job_new(&f, first[i], n[i], beam[i], MAXLEN);
        t[i]->mu = &mu;
        t[i]->cv = &cv;
        t[i]->pending = &pending;
    }
    for (int i = 0; i < 3; i++) submit_ok(&f, t[i]);
    pthread_mutex_lock(&mu);
    while (pending > 0) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ_INT(t[i]->calls, 1);
        ASSERT_EQ_INT(t[i]->why, MOA_SCHED_DONE);
        for (int u = 0; u < n[i]; u++) {
            moa_result alone = translate_alone(&f, first[i] + u, beam[i], MAXLEN);
            assert_same_tokens(&t[i]->job.units[u].res, &alone);
            moa_result_clear(&alone);
        }
    }
    moa_sched_stop(f.s);
    for (int i = 0; i < 3; i++) job_free(t[i]);
    fixture_free(&f);
}

static long trims(fixture *f) {
    moa_sched_stats st;
    moa_sched_get_stats(f->s, &st);
    return st.trims;
}

// Freed memory goes back to the system once the scheduler is idle after
// work, and every 10 s (its clock) while it holds jobs — never while idle
// without work since, nor more often while busy.
static void test_trims_when_idle_and_every_10s(void) {
    fixture f;
    fixture_load(&f);
    fixture_start(&f, 1, 4, 64, 4096, NULL);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 0);  // nothing taken yet
    tjob *small = job_new(&f, 3, 1, 4, MAXLEN);
    submit_ok(&f, small);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 0);  // busy, and not 10 s yet
    step_until_back(&f, 0, small, MAX_STEPS);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 1);  // idle after work
    f.clock += 100;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 1);  // idle, no work since
    tjob *big = job_new(&f, 0, 300, 4, MAXLEN);
    submit_ok(&f, big);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 1);  // 0 s since the last trim
    moa_sched_step_worker(f.s, 0);
    f.clock += 9.5;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 1);
    f.clock += 0.5;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 2);  // 10 s while busy
    moa_sched_step_worker(f.s, 0);
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 2);
    f.clock += 10;
    moa_sched_poll(f.s);
    ASSERT_EQ_INT(trims(&f), 3);
    ASSERT_EQ_INT(big->calls, 0);
    moa_sched_stop(f.s);
    job_free(big);
    job_free(small);
    fixture_free(&f);
}

const moa_test_case moa_tests_sched[] = {
    {"fair_short_job_first_round", test_fair_short_job_first_round},
    {"fair_short_job_next_free_slot", test_fair_short_job_next_free_slot},
    {"cancel_queued_job", test_cancel_queued_job},
    {"cancel_stepping_units", test_cancel_stepping_units},
    {"deadline_expires", test_deadline_expires},
    {"deadline_never_admitted", test_deadline_never_admitted},
    {"metrics_steps_and_jobs", test_metrics_steps_and_jobs},
    {"stop_gives_everything_back", test_stop_gives_everything_back},
    {"stop_while_stepping", test_stop_while_stepping},
    {"workers_balanced_by_rows", test_workers_balanced_by_rows},
    {"workers_wait_for_fewer_rows", test_workers_wait_for_fewer_rows},
    {"queue_full", test_queue_full},
    {"heads_count_all_keep_asked_traces", test_heads_count_all_keep_asked_traces},
    {"session_memory_published", test_session_memory_published},
    {"all_cached_job_done", test_all_cached_job_done},
    {"engine_refusal_fails_job", test_engine_refusal_fails_job},
    {"two_models_share_worker", test_two_models_share_worker},
    {"unknown_model_fails_job", test_unknown_model_fails_job},
    {"threaded_same_results", test_threaded_same_results},
    {"trims_when_idle_and_every_10s", test_trims_when_idle_and_every_10s},
    {NULL, NULL},
};
