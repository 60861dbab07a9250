// moa_metrics.h — counters and histograms for GET /metrics (Prometheus text).
//
//     moa_metrics *m = moa_metrics_create();
//     moa_metrics_request(m, "/translate", 200, 0.012);       // HTTP threads
//     moa_metrics_step(m, rows, sentences);                     // scheduler
//     moa_metrics_job(m, "deadline");                           // scheduler
//     moa_buf b = {0}; moa_metrics_render(m, &b);               // GET /metrics
//
// Gauges that live elsewhere (queue length, live sentences, cache entries,
// expert load) are appended by the /metrics handler from their owners.
// Thread-safe: one mutex, held for a few additions.
#ifndef MOA_METRICS_H
#define MOA_METRICS_H

#include "moa_buf.h"

typedef struct moa_metrics moa_metrics;

moa_metrics *moa_metrics_create(void);
void moa_metrics_free(moa_metrics *m);

// One answered HTTP request. endpoint: a known path or anything (counted as
// "other"); seconds: from the first byte to the answer.
void moa_metrics_request(moa_metrics *m, const char *endpoint, int status, double seconds);
// One answered /translate request with its phases, units and tokens.
void moa_metrics_translate(moa_metrics *m, double queue_s, double compute_s,
                           long sentences, long src_tokens, long tgt_tokens);
// One engine step of `rows` beam rows for `sentences` sentences.
void moa_metrics_step(moa_metrics *m, int rows, int sentences);
// One job given back by the scheduler, or refused by it: reason is "done",
// "failed", "deadline", "cancelled", "stopped" or "queue_full" (anything
// else is counted as "other").
void moa_metrics_job(moa_metrics *m, const char *reason);

// Appends every series to b (HELP and TYPE lines included).
void moa_metrics_render(moa_metrics *m, moa_buf *b);

#endif
