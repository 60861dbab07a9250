// moa_sched.c — the scheduler (see moa_sched.h for the contract).
#include "moa_sched.h"

#include <pthread.h>
#include <stdio.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "moa_log.h"

// How often deadlines are looked at while work is held: often enough that a
// job comes back within 20 ms of its deadline, rarely enough to cost nothing
// next to a decoder step.
#define CHECK_INTERVAL_MS 20

// Freed memory goes back to the system (malloc_trim) when the scheduler has
// given back every job it took since the last time, and at most this often
// while it holds work: the workers' arenas keep what sentences of all
// lengths freed in the middle of their heaps, which glibc's own trimming
// (top of the heap only) never returns. See server/README.md, "Memory".
#define TRIM_INTERVAL_S 10.0

// A programmer's mistake (manual-mode calls on a threaded scheduler, a
// worker out of range): abort with the place, as MOA_ASSERT does.
#define SCHED_ASSERT(c)                                                             \
    do {                                                                            \
        if (!(c)) {                                                                 \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                \
        }                                                                           \
    } while (0)

// A unit released while its worker was stepping: its session still holds
// it, and its result may come out of that step; the worker drops it (by
// engine id: the unit's memory may be gone) when it next holds the lock.
typedef struct moa_cancel {
    int model;                  // the session it is in (moa_unit.model)
    int id;                     // moa_session_add's id
    int rows;
} moa_cancel;

// One engine session per model and the thread that steps them. Its units
// and rows are counted over all its sessions, so the per-worker limits and
// the balance between workers hold across models.
typedef struct moa_worker {
    moa_sched *s;
    int index;
    moa_session **sess;         // [n_models]
    int *m_units;               // [n_models] units in each session (lock)
    pthread_t thread;
    int started;
    pthread_cond_t cv;          // it sleeps on this while its session is empty
    // under s->lock:
    int busy;                   // inside moa_session_step: nobody else touches sess
    int units, rows;            // units in its session and their beam rows
    moa_cancel *cancels;        // released while busy (room for inflight_per)
    int n_cancels;
    long steps, dropped;        // for moa_sched_get_worker_stats
    moa_session_mem mem;        // its sessions' heap after its last round
} moa_worker;

struct moa_sched {
    const moa_model **models;   // [n_models]
    int n_models;
    const moa_conf *conf;
    moa_metrics *metrics;
    moa_heads **heads;          // [n_models], entries may be NULL
    moa_sched_opts opts;        // now is never NULL

    // Everything below that the submitting threads do not touch: the held
    // jobs, the workers' bookkeeping, fairness, results. Taken by the loop
    // thread, by each worker between its steps (never during one), and by
    // moa_sched_cancel.
    pthread_mutex_t lock;

    // compute workers (conf's compute_workers); the limits are per worker
    moa_worker *workers;
    int n_workers;
    int inflight_per, rows_per;
    int wstop;                  // workers leave (lock)

    uv_loop_t loop;             // threaded mode only
    uv_async_t wake;
    uv_timer_t timer;           // deadline checks while jobs are held
    uv_thread_t thread;
    int started, stopped;

    // submitted, not yet taken by the scheduler (mu; lock order: lock, then mu)
    pthread_mutex_t mu;
    moa_job *in_head, *in_tail;
    int stopping;               // no more submissions (mu)
    int queued_units;           // waiting units of submitted jobs (mu)

    // gauges for other threads (mu)
    int live_units, rows, jobs;
    long trims;                 // trims so far
    long request_trims;         // moa_sched_release_memory's
    double rate;                // sentences/s, exponential average

    // under lock
    moa_job **held;             // jobs held, in arrival order
    int n_held, cap_held;
    int rows_used;              // beam rows of live units
    int units_live;
    long seq;
    long admissions;            // units admitted so far (moa_unit.admitted)
    int took;                   // a job was taken since the last trim
    double trim_t;              // the last trim, or when work came after idle
    double rate_t0;
    long rate_done;
};

double moa_sched_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double real_clock(void *ctx) {
    (void)ctx;
    return moa_sched_now();
}

static double now(const moa_sched *s) { return s->opts.now(s->opts.now_ctx); }

const char *moa_sched_reason_name(moa_sched_reason r) {
    switch (r) {
    case MOA_SCHED_DONE: return "done";
    case MOA_SCHED_FAILED: return "failed";
    case MOA_SCHED_DEADLINE: return "deadline";
    case MOA_SCHED_CANCELLED: return "cancelled";
    case MOA_SCHED_STOPPED: return "stopped";
    case MOA_SCHED_QUEUE_FULL: return "queue full";
    }
    return "unknown";
}

// A result kept until its whole job is done (a 5000-line request holds
// thousands) need not keep the traces only /heads wanted: they are most of
// its bytes. Out of memory: it keeps them (harmless).
static void drop_traces(moa_result *r) {
    moa_result lean;
    if (moa_result_copy(&lean, r, MOA_RESULT_LOGPROBS | MOA_RESULT_ATTENTION) != 0) return;
    moa_result_clear(r);
    *r = lean;
}

// Beam rows a unit takes in the session: what the engine reserves for it.
static int unit_rows(const moa_unit *u) { return moa_search_opts_rows(&u->opts); }

// --- giving jobs back ----------------------------------------------------------------

// Counts a job given back or refused (moa_scheduler_jobs_total{reason}).
static void count_job(moa_sched *s, moa_sched_reason why) {
    moa_metrics_job(s->metrics, why == MOA_SCHED_QUEUE_FULL ? "queue_full"
                                                            : moa_sched_reason_name(why));
}

// A unit left worker w's session of model mi (finished, or cancelled there).
static void unit_gone(moa_sched *s, moa_worker *w, int mi, int rows) {
    w->m_units[mi]--;
    w->units--;
    w->rows -= rows;
    s->rows_used -= rows;
    s->units_live--;
}

// Removes the job's units from the sessions and the queue. A unit in a
// session that is stepping right now is left to its worker (moa_cancel).
static void job_cancel_units(moa_sched *s, moa_job *j) {
    int waiting = 0;
    for (int i = 0; i < j->n_units; i++) {
        moa_unit *u = &j->units[i];
        if (u->state == MOA_UNIT_LIVE) {
            moa_worker *w = &s->workers[u->worker];
            if (w->busy) {
                // room for every unit it can hold: never fails
                w->cancels[w->n_cancels++] = (moa_cancel){u->model, u->eng_id, unit_rows(u)};
            } else {
                moa_session_cancel(w->sess[u->model], u->eng_id);
                unit_gone(s, w, u->model, unit_rows(u));
            }
            u->state = MOA_UNIT_CANCELLED;
        } else if (u->state == MOA_UNIT_WAITING) {
            u->state = MOA_UNIT_CANCELLED;
            waiting++;
        }
    }
    j->n_live = 0;
    j->n_waiting = 0;
    pthread_mutex_lock(&s->mu);
    s->queued_units -= waiting;
    pthread_mutex_unlock(&s->mu);
}

// Gives the job back: after on_done it is the submitter's again.
static void job_release(moa_sched *s, int idx, moa_sched_reason why, const char *msg) {
    moa_job *j = s->held[idx];
    if (why != MOA_SCHED_DONE) job_cancel_units(s, j);
    if (msg) snprintf(j->err, sizeof j->err, "%s", msg);
    j->t_done = now(s);
    if (!j->t_first_admit) j->t_first_admit = j->t_done;
    memmove(s->held + idx, s->held + idx + 1, (size_t)(s->n_held - idx - 1) * sizeof *s->held);
    s->n_held--;
    count_job(s, why);
    j->on_done(j, why);
}

static int find_held(moa_sched *s, const moa_job *j) {
    for (int i = 0; i < s->n_held; i++)
        if (s->held[i] == j) return i;
    return -1;
}

// --- one round ---------------------------------------------------------------------

// Moves submitted jobs to the held list.
static void take_incoming(moa_sched *s) {
    pthread_mutex_lock(&s->mu);
    moa_job *j = s->in_head;
    s->in_head = s->in_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (j) {
        moa_job *next = j->next;
        j->next = NULL;
        if (s->n_held == s->cap_held) {
            int nc = s->cap_held ? 2 * s->cap_held : 64;
            moa_job **h = realloc(s->held, (size_t)nc * sizeof *h);
            if (!h) {  // cannot hold it: give it back at once rather than lose it
                moa_log(MOA_LOG_ERROR, "scheduler: out of memory holding a job");
                pthread_mutex_lock(&s->mu);
                s->queued_units -= j->n_waiting;
                pthread_mutex_unlock(&s->mu);
                snprintf(j->err, sizeof j->err, "out of memory");
                count_job(s, MOA_SCHED_FAILED);
                j->on_done(j, MOA_SCHED_FAILED);
                j = next;
                continue;
            }
            s->held = h;
            s->cap_held = nc;
        }
        j->seq = s->seq++;
        if (s->n_held == 0) s->trim_t = now(s);  // busy from now: 10 s from here
        s->held[s->n_held++] = j;
        s->took = 1;
        j = next;
    }
}

// Jobs past their deadline go back.
static void check_deadlines(moa_sched *s, double t) {
    // walk backwards: releasing shifts the later entries
    for (int i = s->n_held - 1; i >= 0; i--)
        if (t >= s->held[i]->deadline) job_release(s, i, MOA_SCHED_DEADLINE, NULL);
}

// Picks the job that should get the next slot: fewest units in the batch,
// then the oldest. -1 when no job waits.
static int pick_job(moa_sched *s) {
    int best = -1;
    for (int i = 0; i < s->n_held; i++) {
        moa_job *j = s->held[i];
        if (j->n_waiting == 0) continue;
        if (best < 0 || j->n_live < s->held[best]->n_live) best = i;
    }
    return best;
}

// The worker that should take a unit of `rows` rows: of the workers not
// stepping, below their share of max_inflight and with room for the rows,
// the one with the fewest rows — provided no stepping worker that could
// also take it has fewer (then the unit waits for that step to end, a
// millisecond or so), so the workers' steps stay about as long. -1 when the
// unit goes nowhere now.
static int pick_worker(moa_sched *s, int rows) {
    int best = -1, fewest_busy = -1;
    for (int i = 0; i < s->n_workers; i++) {
        const moa_worker *w = &s->workers[i];
        if (w->units >= s->inflight_per || w->rows + rows > s->rows_per) continue;
        if (w->busy) {
            if (fewest_busy < 0 || w->rows < fewest_busy) fewest_busy = w->rows;
        } else if (best < 0 || w->rows < s->workers[best].rows) {
            best = i;
        }
    }
    if (best >= 0 && fewest_busy >= 0 && s->workers[best].rows > fewest_busy) return -1;
    return best;
}

static void admit(moa_sched *s) {
    const moa_conf *c = s->conf;
    double t = now(s);
    while (s->units_live < c->max_inflight) {
        int ji = pick_job(s);
        if (ji < 0) return;
        moa_job *j = s->held[ji];
        // Past its deadline (it may have waited here, or arrived late): back
        // now, not after it took room in a session until the next deadline
        // round; so a job that missed its deadline is never decoded.
        if (t >= j->deadline) {
            job_release(s, ji, MOA_SCHED_DEADLINE, NULL);
            continue;
        }
        while (j->next_waiting < j->n_units && j->units[j->next_waiting].state != MOA_UNIT_WAITING)
            j->next_waiting++;
        if (j->next_waiting >= j->n_units) {  // bookkeeping disagrees: repair, never spin
            j->n_waiting = 0;
            continue;
        }
        moa_unit *u = &j->units[j->next_waiting];
        int rows = unit_rows(u);
        int wi = pick_worker(s, rows);
        if (wi < 0) return;
        moa_worker *w = &s->workers[wi];
        char err[256];
        static const int empty_src = 0;
        int id;
        if (u->model < 0 || u->model >= s->n_models) {
            snprintf(err, sizeof err, "model %d of %d", u->model, s->n_models);
            id = MOA_EINVAL;
        } else {
            // /heads counts the routing of every sentence computed: traced
            // whether or not the submitter asked for the trace
            moa_search_opts o = u->opts;
            if (s->heads[u->model]) o.trace = 1;
            id = moa_session_add(w->sess[u->model], u->src ? u->src : &empty_src, u->src_len,
                                 &o, u, err, sizeof err);
        }
        j->next_waiting++;
        j->n_waiting--;
        pthread_mutex_lock(&s->mu);
        s->queued_units--;
        pthread_mutex_unlock(&s->mu);
        if (id < 0) {
            // The submitter validated everything the engine checks, so this
            // is a bug or out of memory: the job fails, logged.
            u->state = MOA_UNIT_CANCELLED;
            moa_log(MOA_LOG_ERROR, "scheduler: moa_session_add: %s (%s)", err, moa_strerror(id));
            char msg[300];
            snprintf(msg, sizeof msg, "engine refused a sentence: %s", err);
            job_release(s, ji, MOA_SCHED_FAILED, msg);
            continue;
        }
        u->eng_id = id;
        u->worker = wi;
        u->state = MOA_UNIT_LIVE;
        u->admitted = ++s->admissions;
        j->n_live++;
        if (!j->t_first_admit) j->t_first_admit = now(s);
        w->units++;
        w->m_units[u->model]++;
        w->rows += rows;
        s->rows_used += rows;
        s->units_live++;
        if (w->units == 1) pthread_cond_signal(&w->cv);  // it may sleep
    }
}

// --- after a step ------------------------------------------------------------------------

static int find_cancel(const moa_worker *w, int mi, int id) {
    for (int i = 0; i < w->n_cancels; i++)
        if (w->cancels[i].model == mi && w->cancels[i].id == id) return i;
    return -1;
}

// A worker's finished units, right after its step (so no result waits in a
// session that is not stepping: job_cancel_units relies on it).
static void take_finished(moa_sched *s, moa_worker *w, int mi) {
    moa_result r;
    while (moa_session_take(w->sess[mi], &r) == 1) {
        int ci = find_cancel(w, mi, r.id);
        if (ci >= 0) {  // released during the step: its unit may be freed
            unit_gone(s, w, mi, w->cancels[ci].rows);
            w->cancels[ci] = w->cancels[--w->n_cancels];
            w->dropped++;
            moa_result_clear(&r);
            continue;
        }
        moa_unit *u = r.user;
        moa_job *j = u ? u->job : NULL;
        if (!u || u->state != MOA_UNIT_LIVE) {  // cannot happen; never touch it
            moa_log(MOA_LOG_ERROR, "scheduler: a result for a unit not live (worker %d)",
                    w->index);
            moa_result_clear(&r);
            continue;
        }
        u->res = r;
        u->state = MOA_UNIT_DONE;
        unit_gone(s, w, mi, unit_rows(u));
        j->n_live--;
        s->rate_done++;
        if (s->heads[mi]) {
            moa_heads_add(s->heads[mi], u->src, u->src_len, &u->res);
            if (!u->opts.trace) drop_traces(&u->res);
        }
        if (j->n_live == 0 && j->n_waiting == 0) {
            int idx = find_held(s, j);
            if (idx >= 0) job_release(s, idx, MOA_SCHED_DONE, NULL);
        }
    }
}

// Units released while the worker stepped and still in its session leave it.
static void apply_cancels(moa_sched *s, moa_worker *w) {
    for (int i = 0; i < w->n_cancels; i++) {
        moa_session_cancel(w->sess[w->cancels[i].model], w->cancels[i].id);
        unit_gone(s, w, w->cancels[i].model, w->cancels[i].rows);
    }
    w->n_cancels = 0;
}

static int job_live_in(const moa_job *j, int wi) {
    for (int i = 0; i < j->n_units; i++)
        if (j->units[i].state == MOA_UNIT_LIVE && j->units[i].worker == wi) return 1;
    return 0;
}

// A failed step fails the jobs with a unit in that session (their units in
// other sessions leave those too); the session's results are thrown away
// unread.
static void fail_worker(moa_sched *s, moa_worker *w, int rc) {
    int n = 0;
    for (int i = s->n_held - 1; i >= 0; i--)
        if (job_live_in(s->held[i], w->index)) {
            job_release(s, i, MOA_SCHED_FAILED, "the engine failed");
            n++;
        }
    moa_log(MOA_LOG_ERROR, "scheduler: moa_session_step failed: %s (worker %d); failed the %d "
            "request(s) in its batch", moa_strerror(rc), w->index, n);
    moa_result r;
    for (int mi = 0; mi < s->n_models; mi++)
        while (moa_session_take(w->sess[mi], &r) == 1) moa_result_clear(&r);
}

static void publish_gauges(moa_sched *s, double t) {
    pthread_mutex_lock(&s->mu);
    s->live_units = s->units_live;
    s->rows = s->rows_used;
    s->jobs = s->n_held;
    if (t - s->rate_t0 >= 1.0) {
        double r = (double)s->rate_done / (t - s->rate_t0);
        s->rate = s->rate > 0 ? 0.7 * s->rate + 0.3 * r : r;
        s->rate_t0 = t;
        s->rate_done = 0;
    }
    pthread_mutex_unlock(&s->mu);
}

// Takes new jobs, admits waiting units to the workers not stepping, gives
// back the jobs with nothing left to compute (e.g. all from the cache).
// Under lock, from the loop thread, a worker between its steps, or
// moa_sched_cancel.
static void schedule(moa_sched *s) {
    take_incoming(s);
    admit(s);
    for (int i = s->n_held - 1; i >= 0; i--)
        if (s->held[i]->n_live == 0 && s->held[i]->n_waiting == 0)
            job_release(s, i, MOA_SCHED_DONE, NULL);
    publish_gauges(s, now(s));
}

// One round of the loop thread (deadlines only on its timer). Under lock.
static void loop_round(moa_sched *s, int deadlines) {
    if (deadlines) check_deadlines(s, now(s));
    schedule(s);
}

// Whether to give freed memory back now (see TRIM_INTERVAL_S): once idle
// after work, or every TRIM_INTERVAL_S while holding jobs. Counts the trim;
// the caller trims after releasing the lock. Under lock.
static int trim_due(moa_sched *s) {
    double t = now(s);
    if (!(s->n_held == 0 ? s->took : t - s->trim_t >= TRIM_INTERVAL_S)) return 0;
    s->took = 0;
    s->trim_t = t;
    pthread_mutex_lock(&s->mu);
    s->trims++;
    pthread_mutex_unlock(&s->mu);
    return 1;
}

static void release_memory(void) {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

void moa_sched_release_memory(moa_sched *s) {
    release_memory();
    pthread_mutex_lock(&s->mu);
    s->request_trims++;
    pthread_mutex_unlock(&s->mu);
}

// Gives back everything held or submitted: the scheduler stops. Under lock;
// s->stopping is set.
static void stop_round(moa_sched *s) {
    take_incoming(s);
    for (int i = s->n_held - 1; i >= 0; i--) job_release(s, i, MOA_SCHED_STOPPED, NULL);
    publish_gauges(s, now(s));
}

// Rows held by all of a worker's sessions.
static int worker_session_rows(const moa_sched *s, const moa_worker *w) {
    int n = 0;
    for (int mi = 0; mi < s->n_models; mi++) n += moa_session_rows(w->sess[mi]);
    return n;
}

// What the worker's sessions hold, summed (the lock held, the worker not
// stepping: nobody else touches its sessions then).
static void note_memory(moa_sched *s, moa_worker *w) {
    memset(&w->mem, 0, sizeof w->mem);
    for (int mi = 0; mi < s->n_models; mi++) {
        moa_session_mem m;
        moa_session_memory(w->sess[mi], &m);
        w->mem.arena_bytes += m.arena_bytes;
        w->mem.blocks_in_use_bytes += m.blocks_in_use_bytes;
        w->mem.blocks_free_bytes += m.blocks_free_bytes;
    }
}

// One iteration of a worker that holds units: ONE engine step of each of
// its sessions that holds units (models in turn, so no model waits for
// another's sentences to finish) with the lock released, then the
// scheduler's work for itself (results, released units, admissions), so it
// never waits for another worker or thread. Under lock on entry and on
// return.
static int worker_round(moa_sched *s, moa_worker *w) {
    // which sessions to step: decided under the lock, as nothing is
    // admitted to a busy worker
    unsigned char todo[MOA_SCHED_MAX_MODELS];
    for (int mi = 0; mi < s->n_models; mi++) todo[mi] = w->m_units[mi] > 0;
    w->busy = 1;
    int mu[MOA_SCHED_MAX_MODELS];  // the sentences each session's step decodes
    for (int mi = 0; mi < s->n_models; mi++) mu[mi] = w->m_units[mi];
    pthread_mutex_unlock(&s->lock);
    if (s->opts.during_step) s->opts.during_step(s->opts.step_ctx, w->index);
    int rc = 0, stepped[MOA_SCHED_MAX_MODELS] = {0};
    for (int mi = 0; mi < s->n_models && rc >= 0; mi++) {
        if (!todo[mi]) continue;
        int r = moa_session_step(w->sess[mi]);
        rc = r < 0 ? r : rc + r;
        if (r > 0) stepped[mi] = r;
    }
    pthread_mutex_lock(&s->lock);
    w->busy = 0;
    w->steps++;
    if (rc < 0) {
        fail_worker(s, w, rc);
    } else {
        for (int mi = 0; mi < s->n_models; mi++)  // one observation per session step
            if (stepped[mi] > 0) moa_metrics_step(s->metrics, stepped[mi], mu[mi]);
        for (int mi = 0; mi < s->n_models; mi++) take_finished(s, w, mi);
    }
    apply_cancels(s, w);
    note_memory(s, w);
    // Every unit booked here is in the sessions, live or about to be; the
    // sessions holding more rows than booked means the two disagree on a
    // sentence's rows (the e2e suite looks for this line).
    if (rc >= 0 && worker_session_rows(s, w) > w->rows)
        moa_log(MOA_LOG_ERROR, "scheduler: worker %d booked %d rows, its session holds %d",
                w->index, w->rows, worker_session_rows(s, w));
    schedule(s);
    return rc;
}

// A compute worker thread: steps its session while it holds units, sleeps
// while it holds none.
static void *worker_main(void *arg) {
    moa_worker *w = arg;
    moa_sched *s = w->s;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->wstop && w->units == 0) pthread_cond_wait(&w->cv, &s->lock);
        if (s->wstop) break;
        worker_round(s, w);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

// --- libuv callbacks (threaded mode) -------------------------------------------------------

// Every CHECK_INTERVAL_MS while jobs are held: deadlines.
static void on_timer(uv_timer_t *t) {
    moa_sched *s = t->data;
    pthread_mutex_lock(&s->lock);
    loop_round(s, 1);
    int idle = s->n_held == 0, trim = trim_due(s);
    pthread_mutex_unlock(&s->lock);
    if (trim) release_memory();
    if (idle) uv_timer_stop(&s->timer);
}

static void close_cb(uv_handle_t *h) { (void)h; }

// A submission (or the stop).
static void on_wake(uv_async_t *a) {
    moa_sched *s = a->data;
    pthread_mutex_lock(&s->mu);
    int stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->lock);
    if (stopping) {
        stop_round(s);
        pthread_mutex_unlock(&s->lock);
        uv_timer_stop(&s->timer);
        uv_close((uv_handle_t *)&s->timer, close_cb);
        uv_close((uv_handle_t *)&s->wake, close_cb);
        return;
    }
    loop_round(s, 0);
    int held = s->n_held > 0, trim = trim_due(s);
    pthread_mutex_unlock(&s->lock);
    if (trim) release_memory();
    if (held && !uv_is_active((uv_handle_t *)&s->timer))
        uv_timer_start(&s->timer, on_timer, CHECK_INTERVAL_MS, CHECK_INTERVAL_MS);
}

static void thread_main(void *arg) {
    moa_sched *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

// --- public ----------------------------------------------------------------------------

// Stops and joins the worker threads, frees the sessions (any prefix of the
// workers may have been set up).
static void workers_free(moa_sched *s) {
    if (!s->workers) return;
    pthread_mutex_lock(&s->lock);
    s->wstop = 1;
    for (int i = 0; i < s->n_workers; i++) pthread_cond_signal(&s->workers[i].cv);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->n_workers; i++) {
        moa_worker *w = &s->workers[i];
        if (w->started) pthread_join(w->thread, NULL);
        for (int mi = 0; w->sess && mi < s->n_models; mi++) moa_session_free(w->sess[mi]);
        free(w->sess);
        free(w->m_units);
        free(w->cancels);
        pthread_cond_destroy(&w->cv);
    }
    free(s->workers);
    s->workers = NULL;
}

moa_sched *moa_sched_create(const moa_model *m, const moa_conf *conf, moa_metrics *metrics,
                            moa_heads *heads, const moa_sched_opts *opts, char *err,
                            size_t errlen) {
    return moa_sched_create_models(&m, 1, conf, metrics, &heads, opts, err, errlen);
}

moa_sched *moa_sched_create_models(const moa_model *const *models, int n_models,
                                   const moa_conf *conf, moa_metrics *metrics,
                                   moa_heads *const *heads, const moa_sched_opts *opts,
                                   char *err, size_t errlen) {
    if (n_models < 1 || n_models > MOA_SCHED_MAX_MODELS) {
        snprintf(err, errlen, "%d models: between 1 and %d are served", n_models,
                 MOA_SCHED_MAX_MODELS);
        return NULL;
    }
    moa_sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->n_models = n_models;
    s->models = calloc((size_t)n_models, sizeof *s->models);
    s->heads = calloc((size_t)n_models, sizeof *s->heads);
    if (!s->models || !s->heads) {
        free(s->models);
        free(s->heads);
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int mi = 0; mi < n_models; mi++) {
        s->models[mi] = models[mi];
        s->heads[mi] = heads ? heads[mi] : NULL;
    }
    s->conf = conf;
    s->metrics = metrics;
    if (opts) s->opts = *opts;
    if (!s->opts.now) s->opts.now = real_clock;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->lock, NULL);
    // moa_conf_load checked that every share holds at least the largest beam.
    s->n_workers = moa_conf_compute_workers(conf);
    s->inflight_per = (conf->max_inflight + s->n_workers - 1) / s->n_workers;
    s->rows_per = conf->max_batch_rows / s->n_workers;
    s->workers = calloc((size_t)s->n_workers, sizeof *s->workers);
    if (!s->workers) {
        snprintf(err, errlen, "out of memory");
        goto fail_workers;
    }
    for (int i = 0; i < s->n_workers; i++) pthread_cond_init(&s->workers[i].cv, NULL);
    for (int i = 0; i < s->n_workers; i++) {
        moa_worker *w = &s->workers[i];
        w->s = s;
        w->index = i;
        w->cancels = malloc((size_t)s->inflight_per * sizeof *w->cancels);
        w->sess = calloc((size_t)n_models, sizeof *w->sess);
        w->m_units = calloc((size_t)n_models, sizeof *w->m_units);
        if (!w->cancels || !w->sess || !w->m_units) {
            snprintf(err, errlen, "out of memory");
            goto fail_session;
        }
        // Each session may hold the worker's whole share of rows: the share
        // is booked across the worker's sessions together.
        for (int mi = 0; mi < n_models; mi++)
            if (!(w->sess[mi] = moa_session_create(models[mi], s->rows_per, err, errlen)))
                goto fail_session;
        note_memory(s, w);
        if (s->opts.manual) continue;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start compute worker thread %d", i);
            goto fail_session;
        }
        w->started = 1;
    }
    s->rate_t0 = now(s);
    s->trim_t = s->rate_t0;
    if (s->opts.manual) return s;
    if (uv_loop_init(&s->loop) != 0) {
        snprintf(err, errlen, "uv_loop_init failed");
        goto fail_loop;
    }
    uv_async_init(&s->loop, &s->wake, on_wake);
    uv_timer_init(&s->loop, &s->timer);
    s->wake.data = s->timer.data = s;
    if (uv_thread_create(&s->thread, thread_main, s) != 0) {
        snprintf(err, errlen, "cannot start the scheduler thread");
        goto fail_thread;
    }
    s->started = 1;
    return s;
fail_thread:
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_close((uv_handle_t *)&s->timer, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
fail_loop:
fail_session:
    workers_free(s);
fail_workers:
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->mu);
    free(s->models);
    free(s->heads);
    free(s);
    return NULL;
}

int moa_sched_submit(moa_sched *s, moa_job *j) {
    int waiting = 0;
    for (int i = 0; i < j->n_units; i++) {
        j->units[i].job = j;
        if (j->units[i].state == MOA_UNIT_WAITING) waiting++;
    }
    j->n_waiting = waiting;
    j->n_live = 0;
    j->next_waiting = 0;
    j->next = NULL;
    j->t_submit = now(s);
    j->t_first_admit = j->t_done = 0;
    j->err[0] = 0;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        count_job(s, MOA_SCHED_STOPPED);
        return MOA_SCHED_STOPPED;
    }
    if (s->queued_units > 0 && s->queued_units + waiting > s->conf->max_queue) {
        pthread_mutex_unlock(&s->mu);
        count_job(s, MOA_SCHED_QUEUE_FULL);
        return MOA_SCHED_QUEUE_FULL;
    }
    s->queued_units += waiting;
    if (s->in_tail) s->in_tail->next = j;
    else s->in_head = j;
    s->in_tail = j;
    pthread_mutex_unlock(&s->mu);
    if (!s->opts.manual) uv_async_send(&s->wake);
    return 0;
}

void moa_sched_cancel(moa_sched *s, moa_job *j) {
    pthread_mutex_lock(&s->lock);
    take_incoming(s);  // it may be submitted and not yet taken
    int i = find_held(s, j);
    if (i >= 0) {
        job_release(s, i, MOA_SCHED_CANCELLED, NULL);
        schedule(s);  // its room goes to the next units now, not at the next round
    }
    pthread_mutex_unlock(&s->lock);
}

void moa_sched_poll(moa_sched *s) {
    SCHED_ASSERT(s->opts.manual);
    pthread_mutex_lock(&s->lock);
    loop_round(s, 1);
    int trim = trim_due(s);
    pthread_mutex_unlock(&s->lock);
    if (trim) release_memory();
}

int moa_sched_step_worker(moa_sched *s, int wi) {
    SCHED_ASSERT(s->opts.manual && wi >= 0 && wi < s->n_workers);
    moa_worker *w = &s->workers[wi];
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    if (w->units > 0) rc = worker_round(s, w);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void moa_sched_get_stats(moa_sched *s, moa_sched_stats *st) {
    memset(st, 0, sizeof *st);
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    st->queued_units = s->queued_units;
    st->live_units = s->live_units;
    st->rows = s->rows;
    st->jobs = s->jobs;
    st->sentences_per_s = s->rate;
    st->trims = s->trims;
    st->request_trims = s->request_trims;
    pthread_mutex_unlock(&s->mu);
}

int moa_sched_workers(const moa_sched *s) { return s->n_workers; }

void moa_sched_get_worker_stats(moa_sched *s, int wi, moa_sched_worker_stats *st) {
    SCHED_ASSERT(wi >= 0 && wi < s->n_workers);
    moa_worker *w = &s->workers[wi];
    pthread_mutex_lock(&s->lock);
    st->units = w->units;
    st->rows = w->rows;
    st->busy = w->busy;
    st->session_live = 0;
    for (int mi = 0; mi < s->n_models; mi++) st->session_live += moa_session_live(w->sess[mi]);
    if (w->busy) st->session_live = -1;
    st->steps = w->steps;
    st->dropped = w->dropped;
    st->mem = w->mem;
    pthread_mutex_unlock(&s->lock);
}

void moa_sched_stop(moa_sched *s) {
    if (!s || s->stopped) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_mutex_unlock(&s->mu);
    if (s->opts.manual) {
        pthread_mutex_lock(&s->lock);
        stop_round(s);
        pthread_mutex_unlock(&s->lock);
    } else {
        uv_async_send(&s->wake);
        uv_thread_join(&s->thread);
        uv_loop_close(&s->loop);
    }
    s->stopped = 1;
}

void moa_sched_free(moa_sched *s) {
    if (!s) return;
    moa_sched_stop(s);
    workers_free(s);
    free(s->held);
    free(s->models);
    free(s->heads);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
