// moa_server.c — main: settings, start-up, signals, drain, shut-down; and
// the --probe healthcheck client.
//
// Start-up order: HTTP first (so /health answers and /ready says 503 while
// the model loads), then model (mmap), tokenizer, cache, routing statistics
// and the scheduler thread, then ready. Signals are blocked in every thread
// and taken here with sigtimedwait, so no handler runs in a random thread —
// except threads that exist before main (OpenBLAS starts its pool when the
// library loads) never had them blocked: there a handler only counts the
// signal for the loop below, instead of the default action killing the
// process mid-request:
// SIGHUP re-reads the API keys; SIGTERM/SIGINT drain (keep listening, 503
// on /ready and new /translate, finish what is in flight for up to
// drain_timeout s) and exit 0; a second SIGTERM/SIGINT stops at once.
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "moa_api.h"
#include "moa_http.h"
#include "moa_log.h"
#include "moa_server.h"

// --- --probe ---------------------------------------------------------------------------------

// GET http://127.0.0.1:PORT/PATH (the configured address when it is a
// specific one); 0 on a 2xx answer. For container healthchecks: the slim
// image has no curl.
static int probe(const moa_conf *c) {
    const char *host = c->listen;
    int v6 = strchr(host, ':') != NULL;
    if (!strcmp(host, "0.0.0.0")) host = "127.0.0.1";
    if (!strcmp(host, "::")) host = "::1";
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int ok = 0;
    if (v6) {
        struct sockaddr_in6 a = {0};
        a.sin6_family = AF_INET6;
        a.sin6_port = htons((uint16_t)c->port);
        ok = inet_pton(AF_INET6, host, &a.sin6_addr) == 1 &&
             connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    } else {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)c->port);
        ok = inet_pton(AF_INET, host, &a.sin_addr) == 1 &&
             connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    }
    if (!ok) {
        fprintf(stderr, "moa-server: probe: cannot connect to %s port %d: %s\n", host, c->port,
                strerror(errno));
        close(fd);
        return 1;
    }
    char reqbuf[700], resp[256];
    int n = snprintf(reqbuf, sizeof reqbuf, "GET %s%s HTTP/1.0\r\nHost: localhost\r\n"
                     "User-Agent: moa-server-probe\r\n\r\n", c->probe[0] == '/' ? "" : "/",
                     c->probe);
    if (write(fd, reqbuf, (size_t)n) != n) {
        close(fd);
        return 1;
    }
    ssize_t got = read(fd, resp, sizeof resp - 1);
    close(fd);
    if (got < 12) {
        fprintf(stderr, "moa-server: probe: no answer\n");
        return 1;
    }
    resp[got] = 0;
    int status = atoi(resp + 9);
    printf("%d\n", status);
    return status >= 200 && status < 300 ? 0 : 1;
}

// --- model --------------------------------------------------------------------------------------

// One model directory into m; its name and cache key.
static int load_one(moa_srv_model *m, const moa_conf *c, char *err, size_t errlen) {
    const char *dir = m->dir;
    moa_load_opts lo;
    moa_load_opts_default(&lo);
    lo.precision = (moa_precision)c->precision;
    lo.shortlist = c->shortlist;
    m->model = moa_model_load_opts(dir, &lo, err, errlen);
    if (!m->model) return -1;
    m->cfg = moa_model_config(m->model);
    m->tok = moa_tokenizer_load(dir, err, errlen);
    if (!m->tok) return -1;
    if (moa_tokenizer_vocab_size(m->tok) != m->cfg->vocab_size) {
        snprintf(err, errlen, "%.500s: vocab.txt has %d lines, config.json says vocab_size %d",
                 dir, moa_tokenizer_vocab_size(m->tok), m->cfg->vocab_size);
        return -1;
    }
    if (!(m->pv = moa_protect_vocab_create(m->tok))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (m->cfg->name[0]) snprintf(m->name, sizeof m->name, "%s", m->cfg->name);
    else {
        const char *b = strrchr(dir, '/');
        snprintf(m->name, sizeof m->name, "%.150s", b && b[1] ? b + 1 : dir);
    }
    // The cache lives as long as the process and is shared by the models:
    // name + directory + size of the weights + precision and shortlist tell
    // them (and their answers) apart.
    char key[sizeof m->key];  // built apart: m->name and dir live in the same struct
    snprintf(key, sizeof key, "%.150s|%.300s|%zu|%s|%d", m->name, dir,
             moa_model_f32_bytes(m->model), moa_precision_name(moa_model_precision(m->model)),
             moa_model_shortlist(m->model, NULL, NULL));
    memcpy(m->key, key, sizeof key);
    if (c->heads && !(m->heads = moa_heads_create(m->cfg))) {
        snprintf(err, errlen, "out of memory for routing statistics");
        return -1;
    }
    return 0;
}

// Every directory of the model option; one scheduler for them all. Two
// models with one name (their label in /metrics, /heads?model=) or one pair
// (requests could not be routed) are refused.
static int load_models(moa_server *srv, char *err, size_t errlen) {
    const moa_conf *c = &srv->conf;
    static char dirs[MOA_SCHED_MAX_MODELS][MOA_CONF_PATH_MAX];
    int n = moa_conf_models(c, dirs, MOA_SCHED_MAX_MODELS, err, errlen);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
        moa_srv_model *m = &srv->models[i];
        memcpy(m->dir, dirs[i], sizeof m->dir);
        srv->n_models = i + 1;  // freed at exit even when it fails half-way
        if (load_one(m, c, err, errlen) != 0) return -1;
        for (int k = 0; k < i; k++) {
            const moa_srv_model *o = &srv->models[k];
            if (!strcmp(o->name, m->name)) {
                snprintf(err, errlen, "models %.300s and %.300s have the same name '%s': "
                         "set a different \"name\" in one config.json", o->dir, m->dir, m->name);
                return -1;
            }
            if (!strcasecmp(o->cfg->source_lang, m->cfg->source_lang) &&
                !strcasecmp(o->cfg->target_lang, m->cfg->target_lang)) {
                snprintf(err, errlen, "models %s and %s both translate %s to %s: one model per "
                         "language pair", o->name, m->name, m->cfg->source_lang,
                         m->cfg->target_lang);
                return -1;
            }
        }
    }
    if (c->cache_size > 0 && !(srv->cache = moa_cache_create(c->cache_size))) {
        snprintf(err, errlen, "out of memory for the cache");
        return -1;
    }
    const moa_model *models[MOA_SCHED_MAX_MODELS];
    moa_heads *heads[MOA_SCHED_MAX_MODELS];
    for (int i = 0; i < n; i++) {
        models[i] = srv->models[i].model;
        heads[i] = srv->models[i].heads;
    }
    srv->sched = moa_sched_create_models(models, n, c, srv->metrics, heads, NULL, err, errlen);
    return srv->sched ? 0 : -1;
}

static void log_start(const moa_server *srv, double load_s) {
    const moa_conf *c = &srv->conf;
    for (int i = 0; i < srv->n_models; i++) {
        const moa_srv_model *m = &srv->models[i];
        const moa_config *g = m->cfg;
        moa_log(MOA_LOG_INFO, "model %s (%s): %s -> %s, d_model %d, layers %d+%d, experts %d "
                "(top %d), vocab %d, max_positions %d%s", m->name, m->dir, g->source_lang,
                g->target_lang, g->d_model, g->encoder_layers, g->decoder_layers,
                g->num_experts, g->top_k, g->vocab_size, g->max_positions,
                srv->n_models > 1 && i == 0 ? "; the default model" : "");
    }
    moa_log(MOA_LOG_INFO, "%d model(s) loaded in %.3f s", srv->n_models, load_s);
    int workers = moa_conf_compute_workers(c);
    char quota[64] = "none";
    if (c->cpus.quota_cpus > 0)
        snprintf(quota, sizeof quota, "%.2f (cgroup v%d)", c->cpus.quota_cpus,
                 c->cpus.cgroup_version);
    moa_log(MOA_LOG_INFO, "cpus: %d usable (online %d, affinity mask %d, CPU quota %s)%s",
            c->cpus.usable, c->cpus.online, c->cpus.affinity, quota,
            c->compute_workers > 0 ? "; compute_workers set explicitly"
                                   : "; compute workers follow the usable CPUs");
    moa_log(MOA_LOG_INFO, "threads: compute workers %d (a thread and an engine session per "
            "model each: %d session(s) each), OpenBLAS (%s) %d per worker, http %d, scheduler 1, "
            "hang-up watch 1, libuv pool unused (UV_THREADPOOL_SIZE=%s)", workers, srv->n_models,
            moa_blas_corename(), moa_get_num_threads(), c->http_threads,
            getenv("UV_THREADPOOL_SIZE"));
    for (int i = 0; i < srv->n_models; i++) {
        const moa_model *m = srv->models[i].model;
        const char *who = srv->models[i].name;
        moa_log(MOA_LOG_INFO, "%s: precision %s: matrix products: %s; their weights %.1f MB "
                "(%.1f MB as float32)", who, moa_precision_name(moa_model_precision(m)),
                moa_model_kernels(m), (double)moa_model_weight_bytes(m) / 1e6,
                (double)moa_model_f32_bytes(m) / 1e6);
        int n_src = 0, n_always = 0;
        if (moa_model_shortlist(m, &n_src, &n_always))
            moa_log(MOA_LOG_INFO, "%s: vocabulary shortlist on: %d source pieces listed, %d "
                    "always candidates; scores are normalised over each sentence's candidates",
                    who, n_src, n_always);
        else
            moa_log(MOA_LOG_INFO, "%s: vocabulary shortlist off: every step over the whole "
                    "vocabulary", who);
    }
    moa_log(MOA_LOG_INFO, "limits: max_inflight %d sentences, max_batch_rows %d (per worker: "
            "%d sentences, %d rows), max_queue %d, max_body %ld, max_texts %d, max_chars %d, timeout %g s, "
            "cache %d, heads %s", c->max_inflight, c->max_batch_rows,
            (c->max_inflight + workers - 1) / workers, c->max_batch_rows / workers, c->max_queue,
            c->max_body, c->max_texts, c->max_chars, c->timeout, c->cache_size,
            c->heads ? "on" : "off");
}

// --- main -----------------------------------------------------------------------------------------

// Signals that reached a thread without the blocked set (see the top of the
// file), for the main loop. Lock-free atomics: safe in a handler.
static _Atomic int caught_term, caught_int, caught_hup;

static void on_signal(int sig) {
    if (sig == SIGTERM) atomic_fetch_add(&caught_term, 1);
    else if (sig == SIGINT) atomic_fetch_add(&caught_int, 1);
    else if (sig == SIGHUP) atomic_fetch_add(&caught_hup, 1);
}

// One caught signal (SIGTERM before SIGINT before SIGHUP), or -1.
static int take_caught(void) {
    _Atomic int *c[] = {&caught_term, &caught_int, &caught_hup};
    static const int sig[] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        int n = atomic_load(c[i]);
        while (n > 0 && !atomic_compare_exchange_weak(c[i], &n, n - 1)) {
        }
        if (n > 0) return sig[i];
    }
    return -1;
}

int main(int argc, char **argv) {
    static moa_server srv;  // static: zeroed, and outlives every thread
    int rc = moa_conf_load(&srv.conf, argc, argv);
    if (rc) return rc > 0 ? 0 : 2;
    if (srv.conf.probe[0]) return probe(&srv.conf);
    moa_log_init((moa_log_level)srv.conf.log_level, srv.conf.log_json);
#ifdef M_MMAP_THRESHOLD
    // Request bodies and answers of 5000-line requests are megabytes, made
    // and freed by whichever HTTP thread serves them. glibc's default raises
    // its mmap threshold after the first such buffer is freed, so later ones
    // come from the threads' arenas and leave them fragmented: in a 30-minute
    // soak the memory freed but kept grew by 20 MB (bench/RESULTS.md, Soak).
    // Fixed thresholds keep big buffers in their own mappings, returned at
    // free. The MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ variables
    // still win when set.
    if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    if (!getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
#endif

    // Every thread created from here on inherits the blocked set; threads
    // made before main (OpenBLAS's pool) get the counting handler instead.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    // libuv's thread pool serves file and DNS work we never ask for: keep it minimal.
    setenv("UV_THREADPOOL_SIZE", "1", 0);
    // Before anything touches BLAS. Several workers each run single-threaded
    // OpenBLAS (concurrent calls are safe since OpenBLAS 0.3.7); one worker
    // may use compute_threads (bench/RESULTS.md: workers are faster).
    moa_set_num_threads(moa_conf_blas_threads(&srv.conf));
    moa_api_init();  // cJSON's allocations, before any thread

    int status = 1;
    char err[1024];
    moa_http *http = NULL;
    pthread_rwlock_init(&srv.keys_lock, NULL);
    if (!(srv.metrics = moa_metrics_create())) {
        moa_log(MOA_LOG_ERROR, "out of memory");
        goto done;
    }
    if (moa_api_keys_load(&srv) != 0) goto done;
    if (!(http = moa_http_start(&srv, err, sizeof err))) {
        moa_log(MOA_LOG_ERROR, "%s", err);
        goto done;
    }
    moa_log(MOA_LOG_INFO, "moa-server %s listening on %s port %d%s%s", MOA_SERVER_VERSION,
            srv.conf.listen, srv.conf.port, srv.conf.config_file[0] ? "; config " : "",
            srv.conf.config_file);
    double t0 = moa_sched_now();
    if (load_models(&srv, err, sizeof err) != 0) {
        moa_log(MOA_LOG_ERROR, "%s", err);
        goto done;
    }
    log_start(&srv, moa_sched_now() - t0);
    atomic_store(&srv.ready, 1);
    moa_log(MOA_LOG_INFO, "ready");

    double drain_until = 0;
    for (;;) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig < 0) sig = take_caught();
        if (sig == SIGHUP) {
            moa_log(MOA_LOG_INFO, "SIGHUP: re-reading the API keys");
            moa_api_keys_load(&srv);
        } else if (sig == SIGTERM || sig == SIGINT) {
            if (atomic_load(&srv.draining)) {
                moa_log(MOA_LOG_WARN, "second %s: stopping now", sig == SIGTERM ? "SIGTERM" : "SIGINT");
                break;
            }
            atomic_store(&srv.draining, 1);
            drain_until = moa_sched_now() + srv.conf.drain_timeout;
            moa_log(MOA_LOG_INFO, "%s: draining %ld request(s) in flight (up to %g s)",
                    sig == SIGTERM ? "SIGTERM" : "SIGINT", atomic_load(&srv.inflight),
                    srv.conf.drain_timeout);
        }
        if (atomic_load(&srv.draining)) {
            if (atomic_load(&srv.inflight) == 0) break;
            if (moa_sched_now() >= drain_until) {
                moa_log(MOA_LOG_WARN, "drain deadline: %ld request(s) still in flight get 503",
                        atomic_load(&srv.inflight));
                break;
            }
        }
    }
    status = 0;
done:
    atomic_store(&srv.ready, 0);
    // Hand every held job back (503), let those answers go out, then close.
    moa_sched_stop(srv.sched);
    for (int i = 0; i < 100 && atomic_load(&srv.inflight) > 0; i++) usleep(10000);
    moa_http_stop(http);
    moa_sched_free(srv.sched);
    moa_cache_free(srv.cache);
    for (int i = 0; i < srv.n_models; i++) {
        moa_heads_free(srv.models[i].heads);
        moa_protect_vocab_free(srv.models[i].pv);
        moa_tokenizer_free(srv.models[i].tok);
        moa_model_free(srv.models[i].model);
    }
    moa_metrics_free(srv.metrics);
    for (int i = 0; i < srv.n_keys; i++) free(srv.keys[i]);
    free(srv.keys);
    pthread_rwlock_destroy(&srv.keys_lock);
    if (status == 0) moa_log(MOA_LOG_INFO, "stopped");
    return status;
}
