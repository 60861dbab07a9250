// moa_sched.h — the batching scheduler: a libuv thread that takes requests
// and compute_workers engine sessions, each stepped by its own thread; every
// request's sentences decoded together, step by step.
//
//     moa_sched *s = moa_sched_create(model, &conf, metrics, heads, err, sizeof err);
//     // HTTP thread, per request: fill a job, suspend the connection, submit
//     MHD_suspend_connection(conn);
//     moa_sched_submit(s, job);      // later: job->status != 0, conn resumed
//     ...
//     moa_sched_stop(s);             // answers what is left with 503
//     moa_sched_free(s);
//
// The loop thread (libuv, woken by uv_async_send on each submission, and by
// a 20 ms timer while it holds jobs) takes newly submitted jobs, answers
// those past their deadline (504) or whose client has gone (socket closed:
// 499), and admits waiting units to the workers that sleep for lack of work.
// Each compute worker runs ONE moa_session_step at a time on its session
// (newcomers encoded together, one decoder step for every live hypothesis;
// the engine groups rows by routed expert), and between two steps does the
// scheduler's work itself: takes its finished units, resumes the connection
// of every job whose units are all done, and admits waiting units. So no
// worker waits for another, and the loop thread sleeps while the model runs.
// Admission is FAIR — always to the job with the fewest units in the batch,
// oldest first, so a one-line request is not stuck behind a 500-line one —
// within max_inflight and max_batch_rows (split evenly between the workers),
// and balanced: a unit goes to the worker with the fewest rows, waiting for
// a stepping worker's step to end when that one has fewer. All of this
// state is under one lock, taken between steps only, never during one; a
// session is touched only by its worker while it steps. A job released
// while one of its units is in a stepping session (timeout, hang-up,
// failure elsewhere, stop) leaves that unit to the worker, which drops it
// and any result it produced when its step ends.
//
// Ownership: a submitted job belongs to the scheduler until it sets
// job->status and calls MHD_resume_connection(job->conn); after that the
// scheduler never touches it again and the HTTP side reads the results.
#ifndef MOA_SCHED_H
#define MOA_SCHED_H

#include <stdatomic.h>
#include <stddef.h>

#include "moa_conf.h"
#include "moa_heads.h"
#include "moa_metrics.h"
#include "moa_model.h"

struct MHD_Connection;
typedef struct moa_job moa_job;

typedef enum {
    MOA_UNIT_WAITING = 0,   // not yet in the session
    MOA_UNIT_LIVE = 1,      // in the session
    MOA_UNIT_DONE = 2,      // res is filled (computed or from the cache)
    MOA_UNIT_CANCELLED = 3,
} moa_unit_state;

// One translation unit: a line, or a piece of a long line.
typedef struct moa_unit {
    moa_job *job;
    int *src;               // ids without eos (malloc'ed; may be NULL if src_len 0)
    int src_len;
    moa_search_opts opts;   // per unit: seed already offset by the unit's index
    int state;              // moa_unit_state
    int from_cache;
    int eng_id;             // moa_session_add's id while LIVE
    int worker;             // the compute worker whose session holds it while LIVE
    moa_result res;         // when DONE
} moa_unit;

struct moa_job {
    // filled by the submitter
    moa_unit *units;
    int n_units;
    double deadline;        // monotonic seconds (moa_sched_now)
    int fd;                 // client socket, polled for a hang-up; -1: unknown
    struct MHD_Connection *conn;
    // the outcome: 0 while the scheduler owns the job, then an HTTP status
    // (200, 499 client gone, 500 engine failure, 503 shutting down, 504)
    atomic_int status;
    char err[256];          // message for statuses other than 200
    double t_submit, t_first_admit, t_done;  // monotonic seconds
    // scheduler-private
    int n_waiting, n_live, next_waiting;
    long seq;
    moa_job *next;
};

typedef struct moa_sched moa_sched;

// Creates the compute workers' sessions (max_batch_rows / workers rows each;
// moa_conf_compute_workers), starts the worker threads and the scheduler
// thread.
// heads may be NULL (no statistics, no traces forced). NULL on failure with
// a message.
moa_sched *moa_sched_create(const moa_model *m, const moa_conf *conf, moa_metrics *metrics,
                            moa_heads *heads, char *err, size_t errlen);
// Answers every job still held with 503, stops and joins the scheduler thread
// (the worker threads are joined by moa_sched_free).
void moa_sched_stop(moa_sched *s);
void moa_sched_free(moa_sched *s);  // stops first if needed; NULL is a no-op

// Hands a job over (units WAITING or already DONE). Thread-safe; never
// blocks on the model. Returns 0, or 429 when the waiting sentences would
// exceed max_queue (a job arriving at an empty queue is always taken), or
// 503 once stopping; then the job was not taken.
int moa_sched_submit(moa_sched *s, moa_job *job);

// Snapshot of the scheduler's gauges; thread-safe.
typedef struct moa_sched_stats {
    int queued_units;       // waiting for admission
    int live_units;         // in the session
    int rows;               // beam rows they hold
    int jobs;               // jobs held
    double sentences_per_s; // recent completion rate (for Retry-After)
} moa_sched_stats;
void moa_sched_get_stats(moa_sched *s, moa_sched_stats *st);

// CLOCK_MONOTONIC in seconds.
double moa_sched_now(void);

#endif
