// moa_sched.c — the scheduler thread (see moa_sched.h for the contract).
#include "moa_sched.h"

#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "moa_log.h"

// How often deadlines and client sockets are looked at while work is held:
// often enough that a 504 comes within 20 ms of its deadline, rarely enough
// to cost nothing next to a decoder step.
#define CHECK_INTERVAL_S 0.02
#define CHECK_INTERVAL_MS 20

// One engine session and what the loop knows of it. Worker 0's session is
// stepped by the scheduler thread itself (it would only wait otherwise);
// each other worker has a thread that steps its session when told to.
typedef struct moa_worker {
    moa_sched *s;
    moa_session *sess;
    pthread_t thread;
    int started;
    int units, rows;            // live units and their beam rows (loop thread only)
    int todo;                   // a step is asked for this round (s->wmu)
    int rc;                     // what its last moa_session_step returned
} moa_worker;

struct moa_sched {
    const moa_model *model;
    const moa_conf *conf;
    moa_metrics *metrics;
    moa_heads *heads;

    // compute workers (conf's compute_workers); the limits are per worker
    moa_worker *workers;
    int n_workers;
    int inflight_per, rows_per;
    // one round of parallel steps: the loop sets todo and pending, bumps
    // round and broadcasts go; each worker steps, and the last one to finish
    // signals done (wmu)
    pthread_mutex_t wmu;
    pthread_cond_t go, done;
    long round;
    int pending;
    int wstop;

    uv_loop_t loop;
    uv_async_t wake;
    uv_idle_t idle;             // runs an iteration whenever there is work
    uv_timer_t timer;           // deadline/hang-up checks while the loop would sleep
    uv_thread_t thread;
    int started, stopped;

    // submitted, not yet taken by the loop (mu)
    pthread_mutex_t mu;
    moa_job *in_head, *in_tail;
    int stopping;               // no more submissions (mu)
    int queued_units;           // waiting units of submitted jobs (mu)

    // gauges for other threads (mu)
    int live_units, rows, jobs;
    double rate;                // sentences/s, exponential average

    // loop thread only
    moa_job **held;             // jobs held, in arrival order
    int n_held, cap_held;
    int rows_used;              // beam rows of live units
    int units_live;
    long seq;
    double last_check, rate_t0;
    long rate_done;
    struct pollfd *pfds;
    int cap_pfds;
};

double moa_sched_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Beam rows a unit takes in the session (sampling decodes one row).
static int unit_rows(const moa_unit *u) {
    int sampling = u->opts.sampling_topk > 0;
    return sampling ? 1 : u->opts.beam_size;
}

// --- giving jobs back ----------------------------------------------------------------

// Removes the job's units from the session and queue.
static void job_cancel_units(moa_sched *s, moa_job *j) {
    int waiting = 0;
    for (int i = 0; i < j->n_units; i++) {
        moa_unit *u = &j->units[i];
        if (u->state == MOA_UNIT_LIVE) {
            moa_worker *w = &s->workers[u->worker];
            moa_session_cancel(w->sess, u->eng_id);
            w->units--;
            w->rows -= unit_rows(u);
            s->rows_used -= unit_rows(u);
            s->units_live--;
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

// Hands the job back to the HTTP side: after the resume the job is theirs.
static void job_release(moa_sched *s, int idx, int status, const char *msg) {
    moa_job *j = s->held[idx];
    if (status != 200) job_cancel_units(s, j);
    if (msg) snprintf(j->err, sizeof j->err, "%s", msg);
    j->t_done = moa_sched_now();
    if (!j->t_first_admit) j->t_first_admit = j->t_done;
    memmove(s->held + idx, s->held + idx + 1, (size_t)(s->n_held - idx - 1) * sizeof *s->held);
    s->n_held--;
    struct MHD_Connection *conn = j->conn;
    atomic_store(&j->status, status);
    if (conn) MHD_resume_connection(conn);
}

static int find_held(moa_sched *s, const moa_job *j) {
    for (int i = 0; i < s->n_held; i++)
        if (s->held[i] == j) return i;
    return -1;
}

// --- one iteration -----------------------------------------------------------------

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
            if (!h) {  // cannot hold it: answer at once rather than lose it
                moa_log(MOA_LOG_ERROR, "scheduler: out of memory holding a job");
                pthread_mutex_lock(&s->mu);
                s->queued_units -= j->n_waiting;
                pthread_mutex_unlock(&s->mu);
                snprintf(j->err, sizeof j->err, "out of memory");
                struct MHD_Connection *conn = j->conn;
                atomic_store(&j->status, 500);
                if (conn) MHD_resume_connection(conn);
                j = next;
                continue;
            }
            s->held = h;
            s->cap_held = nc;
        }
        j->seq = s->seq++;
        s->held[s->n_held++] = j;
        j = next;
    }
}

// Deadlines (504) and clients that hung up (499).
static void check_jobs(moa_sched *s, double now) {
    if (s->n_held == 0) return;
    if (s->cap_pfds < s->n_held) {
        struct pollfd *p = realloc(s->pfds, (size_t)s->n_held * sizeof *p);
        if (!p) return;  // checked again next time
        s->pfds = p;
        s->cap_pfds = s->n_held;
    }
    int n = s->n_held;
    for (int i = 0; i < n; i++) {
        s->pfds[i].fd = s->held[i]->fd;  // negative fds are skipped by poll
        s->pfds[i].events = POLLRDHUP;
        s->pfds[i].revents = 0;
    }
    if (poll(s->pfds, (nfds_t)n, 0) < 0) n = 0;
    // walk backwards: releasing shifts the later entries
    for (int i = s->n_held - 1; i >= 0; i--) {
        moa_job *j = s->held[i];
        short re = i < n ? s->pfds[i].revents : 0;
        if (re & (POLLRDHUP | POLLHUP | POLLERR)) {
            job_release(s, i, 499, "the client closed the connection");
        } else if (now >= j->deadline) {
            char msg[128];
            snprintf(msg, sizeof msg, "timed out after %g s (the server's timeout)",
                     s->conf->timeout);
            job_release(s, i, 504, msg);
        }
    }
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

// The worker that should take a unit of `rows` rows: the one with the
// fewest rows among those below their share of max_inflight, so the
// workers' steps take about as long; -1 when the unit fits nowhere now.
static int pick_worker(moa_sched *s, int rows) {
    int best = -1;
    for (int i = 0; i < s->n_workers; i++) {
        const moa_worker *w = &s->workers[i];
        if (w->units >= s->inflight_per) continue;
        if (best < 0 || w->rows < s->workers[best].rows) best = i;
    }
    if (best >= 0 && s->workers[best].rows + rows > s->rows_per) return -1;
    return best;
}

static void admit(moa_sched *s) {
    const moa_conf *c = s->conf;
    while (s->units_live < c->max_inflight) {
        int ji = pick_job(s);
        if (ji < 0) return;
        moa_job *j = s->held[ji];
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
        int id = moa_session_add(w->sess, u->src ? u->src : &empty_src, u->src_len, &u->opts,
                                 u, err, sizeof err);
        j->next_waiting++;
        j->n_waiting--;
        pthread_mutex_lock(&s->mu);
        s->queued_units--;
        pthread_mutex_unlock(&s->mu);
        if (id < 0) {
            // The HTTP side validated everything the engine checks, so this
            // is a bug or out of memory: a 500, logged.
            u->state = MOA_UNIT_CANCELLED;
            moa_log(MOA_LOG_ERROR, "scheduler: moa_session_add: %s (%s)", err, moa_strerror(id));
            char msg[300];
            snprintf(msg, sizeof msg, "engine refused a sentence: %s", err);
            job_release(s, ji, 500, msg);
            continue;
        }
        u->eng_id = id;
        u->worker = wi;
        u->state = MOA_UNIT_LIVE;
        j->n_live++;
        if (!j->t_first_admit) j->t_first_admit = moa_sched_now();
        w->units++;
        w->rows += rows;
        s->rows_used += rows;
        s->units_live++;
    }
}

// --- parallel steps ---------------------------------------------------------------------

static void *worker_main(void *arg) {
    moa_worker *w = arg;
    moa_sched *s = w->s;
    long seen = 0;
    pthread_mutex_lock(&s->wmu);
    for (;;) {
        while (!s->wstop && s->round == seen) pthread_cond_wait(&s->go, &s->wmu);
        if (s->wstop) break;
        seen = s->round;
        if (!w->todo) continue;  // nothing live in its session this round
        w->todo = 0;
        pthread_mutex_unlock(&s->wmu);
        int rc = moa_session_step(w->sess);
        pthread_mutex_lock(&s->wmu);
        w->rc = rc;
        if (--s->pending == 0) pthread_cond_signal(&s->done);
    }
    pthread_mutex_unlock(&s->wmu);
    return NULL;
}

// ONE moa_session_step in every session that holds units, all at once, and
// back when the slowest is done. One worker: a plain call, as without workers.
static void step_all(moa_sched *s) {
    moa_worker *w0 = &s->workers[0];
    if (s->n_workers == 1) {
        w0->rc = moa_session_step(w0->sess);
        return;
    }
    pthread_mutex_lock(&s->wmu);
    for (int i = 1; i < s->n_workers; i++) {
        moa_worker *w = &s->workers[i];
        w->todo = w->units > 0;
        s->pending += w->todo;
    }
    if (s->pending) {
        s->round++;
        pthread_cond_broadcast(&s->go);
    }
    pthread_mutex_unlock(&s->wmu);
    if (w0->units > 0) w0->rc = moa_session_step(w0->sess);
    pthread_mutex_lock(&s->wmu);
    while (s->pending > 0) pthread_cond_wait(&s->done, &s->wmu);
    pthread_mutex_unlock(&s->wmu);
}

// A worker's finished units. Only 200s are released here, so no unit of
// another session is cancelled while its result may still wait to be taken.
static void take_finished(moa_sched *s, moa_worker *w) {
    moa_result r;
    while (moa_session_take(w->sess, &r) == 1) {
        moa_unit *u = r.user;
        moa_job *j = u ? u->job : NULL;
        if (!u || u->state != MOA_UNIT_LIVE) {  // cancelled in between: drop
            moa_result_clear(&r);
            continue;
        }
        u->res = r;
        u->state = MOA_UNIT_DONE;
        w->units--;
        w->rows -= unit_rows(u);
        s->rows_used -= unit_rows(u);
        s->units_live--;
        j->n_live--;
        s->rate_done++;
        if (s->heads) moa_heads_add(s->heads, u->src, u->src_len, &u->res);
        if (j->n_live == 0 && j->n_waiting == 0) {
            int idx = find_held(s, j);
            if (idx >= 0) job_release(s, idx, 200, NULL);
        }
    }
}

static int job_live_in(const moa_job *j, int wi) {
    for (int i = 0; i < j->n_units; i++)
        if (j->units[i].state == MOA_UNIT_LIVE && j->units[i].worker == wi) return 1;
    return 0;
}

// A failed step fails the jobs with a unit in that session (their units in
// other sessions leave those too); the session's results are thrown away.
static void fail_worker(moa_sched *s, int wi) {
    moa_worker *w = &s->workers[wi];
    int n = 0;
    for (int i = s->n_held - 1; i >= 0; i--)
        if (job_live_in(s->held[i], wi)) {
            job_release(s, i, 500, "the engine failed");
            n++;
        }
    moa_log(MOA_LOG_ERROR, "scheduler: moa_session_step failed: %s (worker %d); failed the %d "
            "request(s) in its batch", moa_strerror(w->rc), wi, n);
    moa_result r;
    while (moa_session_take(w->sess, &r) == 1) moa_result_clear(&r);
}

// One step of every worker and their finished units.
static void step(moa_sched *s) {
    for (int i = 0; i < s->n_workers; i++) s->workers[i].rc = 0;
    step_all(s);
    int failed = 0;
    for (int i = 0; i < s->n_workers; i++) {
        moa_worker *w = &s->workers[i];
        if (w->rc < 0) {
            failed = 1;
            continue;
        }
        if (w->rc > 0) moa_metrics_step(s->metrics, w->rc);
        take_finished(s, w);
    }
    // After every healthy session's results were taken (see take_finished).
    for (int i = 0; failed && i < s->n_workers; i++)
        if (s->workers[i].rc < 0) fail_worker(s, i);
}

static void publish_gauges(moa_sched *s, double now) {
    pthread_mutex_lock(&s->mu);
    s->live_units = s->units_live;
    s->rows = s->rows_used;
    s->jobs = s->n_held;
    if (now - s->rate_t0 >= 1.0) {
        double r = (double)s->rate_done / (now - s->rate_t0);
        s->rate = s->rate > 0 ? 0.7 * s->rate + 0.3 * r : r;
        s->rate_t0 = now;
        s->rate_done = 0;
    }
    pthread_mutex_unlock(&s->mu);
}

static void iterate(moa_sched *s) {
    take_incoming(s);
    double now = moa_sched_now();
    if (now - s->last_check >= CHECK_INTERVAL_S) {
        s->last_check = now;
        check_jobs(s, now);
    }
    admit(s);
    if (s->units_live > 0) step(s);
    // Jobs with nothing to compute (e.g. all units cancelled) are answered too.
    for (int i = s->n_held - 1; i >= 0; i--)
        if (s->held[i]->n_live == 0 && s->held[i]->n_waiting == 0) job_release(s, i, 200, NULL);
    publish_gauges(s, now);
}

// --- libuv callbacks ---------------------------------------------------------------------

static void on_idle(uv_idle_t *h) {
    moa_sched *s = h->data;
    iterate(s);
    if (s->n_held == 0) {
        pthread_mutex_lock(&s->mu);
        int more = s->in_head != NULL;
        pthread_mutex_unlock(&s->mu);
        if (!more) {
            uv_idle_stop(&s->idle);
            uv_timer_stop(&s->timer);
        }
    } else if (s->units_live == 0) {
        // Everything held waits on something other than compute (cannot
        // happen with the limits validated at start, but never spin): let
        // the timer drive the checks.
        uv_idle_stop(&s->idle);
    }
}

static void on_timer(uv_timer_t *t) {
    moa_sched *s = t->data;
    if (!uv_is_active((uv_handle_t *)&s->idle)) uv_idle_start(&s->idle, on_idle);
}

static void close_cb(uv_handle_t *h) { (void)h; }

static void on_wake(uv_async_t *a) {
    moa_sched *s = a->data;
    pthread_mutex_lock(&s->mu);
    int stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stopping) {
        take_incoming(s);
        for (int i = s->n_held - 1; i >= 0; i--)
            job_release(s, i, 503, "the server is shutting down");
        uv_idle_stop(&s->idle);
        uv_timer_stop(&s->timer);
        uv_close((uv_handle_t *)&s->idle, close_cb);
        uv_close((uv_handle_t *)&s->timer, close_cb);
        uv_close((uv_handle_t *)&s->wake, close_cb);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&s->idle)) uv_idle_start(&s->idle, on_idle);
    if (!uv_is_active((uv_handle_t *)&s->timer))
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
    pthread_mutex_lock(&s->wmu);
    s->wstop = 1;
    pthread_cond_broadcast(&s->go);
    pthread_mutex_unlock(&s->wmu);
    for (int i = 0; i < s->n_workers; i++) {
        moa_worker *w = &s->workers[i];
        if (w->started) pthread_join(w->thread, NULL);
        moa_session_free(w->sess);
    }
    free(s->workers);
    s->workers = NULL;
}

moa_sched *moa_sched_create(const moa_model *m, const moa_conf *conf, moa_metrics *metrics,
                            moa_heads *heads, char *err, size_t errlen) {
    moa_sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->model = m;
    s->conf = conf;
    s->metrics = metrics;
    s->heads = heads;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->wmu, NULL);
    pthread_cond_init(&s->go, NULL);
    pthread_cond_init(&s->done, NULL);
    // moa_conf_load checked that every share holds at least the largest beam.
    s->n_workers = moa_conf_compute_workers(conf);
    s->inflight_per = (conf->max_inflight + s->n_workers - 1) / s->n_workers;
    s->rows_per = conf->max_batch_rows / s->n_workers;
    s->workers = calloc((size_t)s->n_workers, sizeof *s->workers);
    if (!s->workers) {
        snprintf(err, errlen, "out of memory");
        goto fail_workers;
    }
    for (int i = 0; i < s->n_workers; i++) {
        moa_worker *w = &s->workers[i];
        w->s = s;
        if (!(w->sess = moa_session_create(m, s->rows_per, err, errlen))) goto fail_session;
        if (i > 0 && pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start compute worker thread %d", i);
            goto fail_session;
        }
        w->started = i > 0;
    }
    if (uv_loop_init(&s->loop) != 0) {
        snprintf(err, errlen, "uv_loop_init failed");
        goto fail_loop;
    }
    uv_async_init(&s->loop, &s->wake, on_wake);
    uv_idle_init(&s->loop, &s->idle);
    uv_timer_init(&s->loop, &s->timer);
    s->wake.data = s->idle.data = s->timer.data = s;
    s->rate_t0 = moa_sched_now();
    if (uv_thread_create(&s->thread, thread_main, s) != 0) {
        snprintf(err, errlen, "cannot start the scheduler thread");
        goto fail_thread;
    }
    s->started = 1;
    return s;
fail_thread:
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_close((uv_handle_t *)&s->idle, NULL);
    uv_close((uv_handle_t *)&s->timer, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
fail_loop:
fail_session:
    workers_free(s);
fail_workers:
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->go);
    pthread_mutex_destroy(&s->wmu);
    pthread_mutex_destroy(&s->mu);
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
    j->t_submit = moa_sched_now();
    j->t_first_admit = j->t_done = 0;
    atomic_store(&j->status, 0);
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return 503;
    }
    if (s->queued_units > 0 && s->queued_units + waiting > s->conf->max_queue) {
        pthread_mutex_unlock(&s->mu);
        return 429;
    }
    s->queued_units += waiting;
    if (s->in_tail) s->in_tail->next = j;
    else s->in_head = j;
    s->in_tail = j;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
    return 0;
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
    pthread_mutex_unlock(&s->mu);
}

void moa_sched_stop(moa_sched *s) {
    if (!s || s->stopped) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
    uv_thread_join(&s->thread);
    uv_loop_close(&s->loop);
    s->stopped = 1;
}

void moa_sched_free(moa_sched *s) {
    if (!s) return;
    moa_sched_stop(s);
    workers_free(s);
    free(s->held);
    free(s->pfds);
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->go);
    pthread_mutex_destroy(&s->wmu);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
