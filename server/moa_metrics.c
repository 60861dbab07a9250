// moa_metrics.c — fixed-bucket histograms and labelled counters.
#include "moa_metrics.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const endpoints[] = {"/translate", "/languages", "/heads", "/heads/reset",
                                        "/health", "/ready", "/metrics", "/", "/static/",
                                        "other"};
#define N_EP (sizeof endpoints / sizeof endpoints[0])
static const int statuses[] = {200, 304, 400, 403, 404, 405, 413, 415, 429, 499, 500, 503, 504};
#define N_ST (sizeof statuses / sizeof statuses[0])

// Seconds: from 1 ms to 2 min, roughly ×2.5 apart.
static const double sec_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                    0.5, 1, 2.5, 5, 10, 30, 60, 120};
#define N_SEC (sizeof sec_bounds / sizeof sec_bounds[0])
static const double row_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
#define N_ROW (sizeof row_bounds / sizeof row_bounds[0])
// Sentences per step: 1 is its own bucket, so "shared with another
// sentence" reads as count - bucket{le="1"}.
static const double sent_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define N_SENT (sizeof sent_bounds / sizeof sent_bounds[0])
// The label of each way a job comes back from the scheduler (moa_metrics_job).
static const char *const job_reasons[] = {"done", "failed", "deadline", "cancelled", "stopped",
                                          "queue_full"};
#define N_REASON (sizeof job_reasons / sizeof job_reasons[0])

typedef struct hist {
    uint64_t b[20];             // per bucket (not cumulative); last is +Inf
    double sum;
    uint64_t count;
} hist;

struct moa_metrics {
    pthread_mutex_t mu;
    uint64_t requests[N_EP][N_ST + 1];  // last column: any other status
    int other_status[N_EP];             // the last "other" status seen, for the label
    hist req_dur, queue_dur, compute_dur, rows, step_sents;
    uint64_t sentences, src_tokens, tgt_tokens, steps, translate_requests;
    uint64_t jobs[N_REASON + 1];        // last: a reason this file does not know
};

static void hist_add(hist *h, const double *bounds, size_t nb, double v) {
    size_t i = 0;
    while (i < nb && v > bounds[i]) i++;
    h->b[i]++;
    h->sum += v;
    h->count++;
}

static void hist_render(moa_buf *o, const char *name, const char *help, const hist *h,
                        const double *bounds, size_t nb) {
    moa_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i < nb; i++) {
        cum += h->b[i];
        moa_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += h->b[nb];
    moa_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                   (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

moa_metrics *moa_metrics_create(void) {
    moa_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void moa_metrics_free(moa_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void moa_metrics_request(moa_metrics *m, const char *endpoint, int status, double seconds) {
    size_t e = N_EP - 1, s = N_ST;
    for (size_t i = 0; i + 1 < N_EP; i++)
        if (endpoint && !strcmp(endpoint, endpoints[i])) e = i;
    for (size_t i = 0; i < N_ST; i++)
        if (statuses[i] == status) s = i;
    pthread_mutex_lock(&m->mu);
    m->requests[e][s]++;
    if (s == N_ST) m->other_status[e] = status;
    if (e == 0) hist_add(&m->req_dur, sec_bounds, N_SEC, seconds);
    pthread_mutex_unlock(&m->mu);
}

void moa_metrics_translate(moa_metrics *m, double queue_s, double compute_s, long sentences,
                           long src_tokens, long tgt_tokens) {
    pthread_mutex_lock(&m->mu);
    hist_add(&m->queue_dur, sec_bounds, N_SEC, queue_s);
    hist_add(&m->compute_dur, sec_bounds, N_SEC, compute_s);
    m->sentences += (uint64_t)sentences;
    m->src_tokens += (uint64_t)src_tokens;
    m->tgt_tokens += (uint64_t)tgt_tokens;
    m->translate_requests++;
    pthread_mutex_unlock(&m->mu);
}

void moa_metrics_step(moa_metrics *m, int rows, int sentences) {
    pthread_mutex_lock(&m->mu);
    hist_add(&m->rows, row_bounds, N_ROW, rows);
    hist_add(&m->step_sents, sent_bounds, N_SENT, sentences);
    m->steps++;
    pthread_mutex_unlock(&m->mu);
}

void moa_metrics_job(moa_metrics *m, const char *reason) {
    size_t i = 0;
    while (i < N_REASON && strcmp(reason, job_reasons[i])) i++;
    pthread_mutex_lock(&m->mu);
    m->jobs[i]++;
    pthread_mutex_unlock(&m->mu);
}

void moa_metrics_render(moa_metrics *m, moa_buf *o) {
    pthread_mutex_lock(&m->mu);
    moa_buf_puts(o, "# HELP moa_http_requests_total HTTP requests answered, by endpoint "
                    "and status (499: the client left first).\n"
                    "# TYPE moa_http_requests_total counter\n");
    for (size_t e = 0; e < N_EP; e++)
        for (size_t s = 0; s <= N_ST; s++) {
            if (!m->requests[e][s] && !(s == 0 && e == 0)) continue;
            int st = s < N_ST ? statuses[s] : m->other_status[e];
            moa_buf_printf(o, "moa_http_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
                           endpoints[e], st, (unsigned long long)m->requests[e][s]);
        }
    hist_render(o, "moa_request_duration_seconds",
                "Time from the request's arrival to its answer (/translate).",
                &m->req_dur, sec_bounds, N_SEC);
    hist_render(o, "moa_queue_duration_seconds",
                "Time a /translate request waited before its first sentence joined the batch.",
                &m->queue_dur, sec_bounds, N_SEC);
    hist_render(o, "moa_compute_duration_seconds",
                "Time from a /translate request's first sentence joining the batch to its "
                "last leaving it.", &m->compute_dur, sec_bounds, N_SEC);
    hist_render(o, "moa_batch_rows", "Beam rows decoded per engine step (all requests).",
                &m->rows, row_bounds, N_ROW);
    hist_render(o, "moa_batch_sentences", "Sentences decoded together in each engine step "
                "(all requests): above 1, sentences shared a step.", &m->step_sents,
                sent_bounds, N_SENT);
    // every reason, also at 0: a rate() over a series that appears late misses its start
    moa_buf_puts(o, "# HELP moa_scheduler_jobs_total /translate requests that reached the "
                    "scheduler, by how they came back: done, failed, deadline (504), "
                    "cancelled (the client hung up: 499), stopped (503), queue_full (refused: "
                    "429).\n# TYPE moa_scheduler_jobs_total counter\n");
    for (size_t i = 0; i < N_REASON; i++)
        moa_buf_printf(o, "moa_scheduler_jobs_total{reason=\"%s\"} %llu\n", job_reasons[i],
                       (unsigned long long)m->jobs[i]);
    if (m->jobs[N_REASON])
        moa_buf_printf(o, "moa_scheduler_jobs_total{reason=\"other\"} %llu\n",
                       (unsigned long long)m->jobs[N_REASON]);
    moa_buf_printf(o,
                   "# HELP moa_sentences_translated_total Sentences (translation units) "
                   "answered, cache hits included.\n"
                   "# TYPE moa_sentences_translated_total counter\n"
                   "moa_sentences_translated_total %llu\n"
                   "# HELP moa_source_tokens_total Source tokens (eos included) of answered "
                   "sentences.\n# TYPE moa_source_tokens_total counter\n"
                   "moa_source_tokens_total %llu\n"
                   "# HELP moa_target_tokens_total Target tokens (eos included) of the best "
                   "hypotheses answered.\n# TYPE moa_target_tokens_total counter\n"
                   "moa_target_tokens_total %llu\n"
                   "# HELP moa_engine_steps_total Engine steps (one decoder step for every "
                   "live hypothesis).\n# TYPE moa_engine_steps_total counter\n"
                   "moa_engine_steps_total %llu\n",
                   (unsigned long long)m->sentences, (unsigned long long)m->src_tokens,
                   (unsigned long long)m->tgt_tokens, (unsigned long long)m->steps);
    pthread_mutex_unlock(&m->mu);
}
