// moa_sched.h — the batching scheduler: compute_workers engine sessions, each
// stepped by its own thread, and a libuv thread that takes jobs; every job's
// sentences decoded together, step by step. It knows nothing of HTTP: a job
// comes back through its completion callback with a reason, and the HTTP
// layer (moa_http.c) turns reasons into statuses.
//
//     moa_sched *s = moa_sched_create(model, &conf, metrics, heads, NULL, err, sizeof err);
//     job->units = units; job->n_units = n; job->deadline = moa_sched_now() + 60;
//     job->owner = me; job->on_done = done;     // done(job, MOA_SCHED_DONE, ...) later,
//     int rc = moa_sched_submit(s, job);        // exactly once, from any thread
//     if (rc) -> not taken (MOA_SCHED_QUEUE_FULL or MOA_SCHED_STOPPED), no callback
//     moa_sched_cancel(s, job);                 // e.g. the client left: done(CANCELLED)
//     ...
//     moa_sched_stop(s);                        // what is still held: done(STOPPED)
//     moa_sched_free(s);
//
// Threads (the default): the loop thread (libuv, woken by uv_async_send on
// each submission, and by a 20 ms timer while it holds jobs) takes newly
// submitted jobs, gives back those past their deadline, and admits waiting
// units to the workers that sleep for lack of work. Each compute worker runs
// ONE moa_session_step at a time on its session (newcomers encoded
// together, one decoder step for every live hypothesis; the engine groups
// rows by routed expert), and between two steps does the scheduler's work
// itself: takes its finished units, gives back every job whose units are
// all done, and admits waiting units. So no worker waits for another, and
// the loop thread sleeps while the model runs.
//
// Admission is FAIR — always to the job with the fewest units in the batch,
// oldest first, so a one-line request is not stuck behind a 500-line one —
// within max_inflight and max_batch_rows (split evenly between the workers),
// and balanced: a unit goes to the worker with the fewest rows, waiting for
// a stepping worker's step to end when that one has fewer. A job whose
// deadline has passed is never admitted: when its turn comes it goes back
// (DEADLINE), whatever the loop thread's deadline rounds. All of this
// state is under one lock, taken between steps only, never during one; a
// session is touched only by its worker while it steps. A job given back
// while one of its units is in a stepping session (deadline, cancel,
// failure elsewhere, stop) leaves that unit to the worker, which drops it
// and any result it produced when its step ends.
//
// Several models (moa_sched_create_models): every compute worker holds one
// session per model, and a unit names its model (moa_unit.model, an index
// into the array). A worker's round steps each of its sessions that holds
// units once, models in turn; its units and rows are counted over all its
// sessions, so max_inflight, max_batch_rows, max_queue, fairness (fewest
// units in the batch first, whatever the model) and the balance between
// workers are shared by the models. Each session is sized for the worker's
// whole share of rows: memory for sessions grows with the number of models.
//
// Manual mode (opts.manual, for tests): no thread is started; the caller
// drives the very functions the threads run — moa_sched_poll is one round
// of the loop thread (its timer's), moa_sched_step_worker one iteration of
// a worker — and may inject the clock (opts.now), so fairness, deadlines,
// cancellation and balance are tested step by step, without sleeping.
//
// Ownership: a submitted job belongs to the scheduler until its on_done
// runs; from the call on, the scheduler never touches it again and the
// submitter reads the results (units[i].res of DONE units) and frees it.
#ifndef MOA_SCHED_H
#define MOA_SCHED_H

#include <stddef.h>

#include "moa_conf.h"
#include "moa_heads.h"
#include "moa_metrics.h"
#include "moa_model.h"

typedef struct moa_job moa_job;

// Why a job came back (the on_done argument), or why moa_sched_submit did
// not take it.
typedef enum moa_sched_reason {
    MOA_SCHED_DONE = 0,         // every unit DONE (its result in res)
    MOA_SCHED_FAILED = 1,       // engine failure or out of memory; job->err says what
    MOA_SCHED_DEADLINE = 2,     // job->deadline passed first
    MOA_SCHED_CANCELLED = 3,    // moa_sched_cancel (the client left)
    MOA_SCHED_STOPPED = 4,      // held at moa_sched_stop; submit: stopping
    MOA_SCHED_QUEUE_FULL = 5,   // submit only: the waiting units would exceed max_queue
} moa_sched_reason;

// "done", "failed", ... (for logs and tests).
const char *moa_sched_reason_name(moa_sched_reason r);

typedef enum {
    MOA_UNIT_WAITING = 0,   // not yet in a session
    MOA_UNIT_LIVE = 1,      // in a session
    MOA_UNIT_DONE = 2,      // res is filled (computed or from the cache)
    MOA_UNIT_CANCELLED = 3,
} moa_unit_state;

// One translation unit: a line, or a piece of a long line.
typedef struct moa_unit {
    moa_job *job;
    int *src;               // ids without eos (malloc'ed; may be NULL if src_len 0)
    int src_len;
    int model;              // index of its model (moa_sched_create_models); 0 with one
    moa_search_opts opts;   // per unit: seed already offset by the unit's index;
                            // trace: the submitter reads res's traces (with
                            // /heads on every unit is traced for it, and the
                            // trace dropped from res unless asked for)
    int state;              // moa_unit_state
    int from_cache;
    int eng_id;             // moa_session_add's id while LIVE
    int worker;             // the compute worker whose session holds it while LIVE
    long admitted;          // its place in the order of admissions (1, 2, ...); 0: never
    moa_result res;         // when DONE
} moa_unit;

struct moa_job {
    // filled by the submitter
    moa_unit *units;
    int n_units;
    double deadline;        // in the scheduler's clock (moa_sched_now); INFINITY: none
    void *owner;            // the submitter's; the scheduler never looks at it
    // Called exactly once for every job moa_sched_submit took, from whichever
    // thread gives it back (a worker, the loop thread, moa_sched_cancel's or
    // moa_sched_stop's caller), with the scheduler's lock held: it must be
    // quick (a wake-up: MHD_resume_connection) and must not call moa_sched_*.
    void (*on_done)(moa_job *job, moa_sched_reason reason);
    // the outcome, for the submitter once on_done ran
    char err[256];          // with MOA_SCHED_FAILED: what failed
    double t_submit, t_first_admit, t_done;  // scheduler clock
    // scheduler-private (readable between calls in manual mode)
    int n_waiting, n_live, next_waiting;
    long seq;
    moa_job *next;
};

typedef struct moa_sched moa_sched;

// Creation options; NULL or all zero: threads and the monotonic clock.
typedef struct moa_sched_opts {
    int manual;                             // start no thread (see above)
    double (*now)(void *ctx);               // the clock, seconds; NULL: moa_sched_now
    void *now_ctx;
    // Called by a worker right before each moa_session_step, with the lock
    // released and the worker marked busy — for tests that act while a
    // session steps (cancel, stop, submit). NULL: nothing.
    void (*during_step)(void *ctx, int worker);
    void *step_ctx;
} moa_sched_opts;

// Creates the compute workers' sessions (max_batch_rows / workers rows each;
// moa_conf_compute_workers) and, unless opts->manual, starts the worker
// threads and the loop thread. heads may be NULL (no statistics, no traces
// forced); conf, metrics and heads must outlive the scheduler. NULL on
// failure with a message.
moa_sched *moa_sched_create(const moa_model *m, const moa_conf *conf, moa_metrics *metrics,
                            moa_heads *heads, const moa_sched_opts *opts, char *err,
                            size_t errlen);
// The same for several models (at most MOA_SCHED_MAX_MODELS): one session
// per model in every worker; heads NULL, or one per model (entries may be
// NULL). moa_sched_create is this with one model.
#define MOA_SCHED_MAX_MODELS 16
moa_sched *moa_sched_create_models(const moa_model *const *models, int n_models,
                                   const moa_conf *conf, moa_metrics *metrics,
                                   moa_heads *const *heads, const moa_sched_opts *opts,
                                   char *err, size_t errlen);
// Refuses further submissions and gives back every job still held (and
// submitted) with MOA_SCHED_STOPPED; then stops and joins the loop thread
// (the worker threads are joined by moa_sched_free). Idempotent.
void moa_sched_stop(moa_sched *s);
void moa_sched_free(moa_sched *s);  // stops first if needed; NULL is a no-op

// Hands a job over (units WAITING or already DONE). Thread-safe; never
// blocks on the model. Returns 0 (taken: on_done will run), or
// MOA_SCHED_QUEUE_FULL when the waiting units would exceed max_queue (a
// job arriving at an empty queue is always taken), or MOA_SCHED_STOPPED
// once stopping; then the job was not taken and on_done never runs.
int moa_sched_submit(moa_sched *s, moa_job *job);

// Gives the job back with MOA_SCHED_CANCELLED (on_done runs before this
// returns) and admits what the room it leaves allows; its units leave the
// queue and the sessions (one in a stepping session: when its step ends).
// A job already given back is left alone, so the caller may race the
// scheduler — but the job's memory must still be valid. Thread-safe; never
// call it from on_done.
void moa_sched_cancel(moa_sched *s, moa_job *job);

// Manual mode only (opts->manual), from one thread at a time:
// One round of the loop thread: takes submitted jobs, gives back those past
// their deadline, admits waiting units, gives back jobs with nothing left.
void moa_sched_poll(moa_sched *s);
// One iteration of worker w (0..moa_sched_workers-1): when its session holds
// units, one moa_session_step, then its bookkeeping (results, released
// units, admissions). Returns the rows decoded, 0 when it held nothing, or
// a negative moa_errno when the step failed (its jobs came back FAILED).
int moa_sched_step_worker(moa_sched *s, int w);

// Snapshot of the scheduler's gauges; thread-safe.
typedef struct moa_sched_stats {
    int queued_units;       // waiting for admission
    int live_units;         // in the sessions
    int rows;               // beam rows they hold
    int jobs;               // jobs held
    double sentences_per_s; // recent completion rate (for Retry-After)
    long trims;             // times freed memory went back to the system: when
                            // idle after work, every 10 s while holding jobs
    long request_trims;     // ... and moa_sched_release_memory's (large requests)
} moa_sched_stats;
void moa_sched_get_stats(moa_sched *s, moa_sched_stats *st);
// Gives freed heap memory back to the system now (malloc_trim), on the
// caller's thread, counted in request_trims: the server calls it after
// freeing a request of many sentences, whose memory would otherwise stay
// resident until the next periodic trim. Thread-safe; takes no lock while
// it trims.
void moa_sched_release_memory(moa_sched *s);

// One worker's state; thread-safe.
typedef struct moa_sched_worker_stats {
    int units, rows;        // in its session, as the scheduler counts them
    int session_live;       // moa_session_live of its sessions (summed); -1 while it steps
    int busy;               // stepping now
    long steps;             // moa_session_step calls
    long dropped;           // results thrown away: their job went back during the step
    moa_session_mem mem;    // its sessions' heap (moa_session_memory, summed) as
                            // of its last round (creation: the arenas alone)
} moa_sched_worker_stats;
int moa_sched_workers(const moa_sched *s);
void moa_sched_get_worker_stats(moa_sched *s, int w, moa_sched_worker_stats *st);

// CLOCK_MONOTONIC in seconds.
double moa_sched_now(void);

#endif
