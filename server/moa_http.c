// moa_http.c — libmicrohttpd callbacks, the endpoints other than
// /translate's body work (moa_api.c), and the HTTP side of the scheduler:
// suspending and resuming /translate requests, statuses for the reasons a
// job comes back, and watching the clients of held requests for hang-ups.
#include "moa_http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <malloc.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "moa_api.h"
#include "moa_buf.h"
#include "moa_log.h"
#include "moa_web.h"

// How often the sockets of held requests are looked at for a hang-up:
// often enough that a gone client's sentences leave the batch within 20 ms,
// rarely enough to cost nothing next to a decoder step.
#define WATCH_INTERVAL_MS 20

// A /translate request of at least this many units hands the memory it
// freed back to the system at once (moa_sched_release_memory).
#define TRIM_AFTER_UNITS 1000

typedef struct req req;

struct moa_http {
    moa_server *srv;
    struct MHD_Daemon *d;
    uint64_t id_prefix;         // random per process: ids differ across restarts

    // The hang-up watcher: a thread that polls the clients of the requests
    // whose job the scheduler holds, every WATCH_INTERVAL_MS while there
    // are any, and cancels the jobs of those that left. Lock order: never
    // the scheduler's lock (nor libmicrohttpd's) while holding wmu.
    pthread_mutex_t wmu;
    pthread_cond_t wcv;         // a first request to watch, or the stop
    pthread_t watcher;
    int watcher_started, wstop;
    req *watched;               // doubly linked through wprev/wnext (wmu)
    int n_watched;
    struct pollfd *pfds;        // watcher only
    req **preqs;
    int cap_pfds;
};

typedef enum {
    EP_TRANSLATE, EP_LANGUAGES, EP_HEADS, EP_HEADS_RESET, EP_HEALTH, EP_READY, EP_METRICS,
    EP_PAGE, EP_STATIC, EP_OTHER,
} endpoint;

static const struct {
    const char *path;
    const char *methods;        // for 405's Allow
} routes[] = {
    [EP_TRANSLATE] = {"/translate", "POST, OPTIONS"},
    [EP_LANGUAGES] = {"/languages", "GET, HEAD, OPTIONS"},
    [EP_HEADS] = {"/heads", "GET, HEAD, OPTIONS"},
    [EP_HEADS_RESET] = {"/heads/reset", "POST, OPTIONS"},
    [EP_HEALTH] = {"/health", "GET, HEAD, OPTIONS"},
    [EP_READY] = {"/ready", "GET, HEAD, OPTIONS"},
    [EP_METRICS] = {"/metrics", "GET, HEAD, OPTIONS"},
    [EP_PAGE] = {"/", "GET, HEAD, OPTIONS"},
    [EP_STATIC] = {"/static/", "GET, HEAD, OPTIONS"},  // a prefix (route())
    [EP_OTHER] = {"other", ""},
};

// One HTTP request from its first byte to the access-log line.
struct req {
    moa_http *http;
    char id[136];
    char method[16];
    char path[256];
    endpoint ep;
    double t0;
    int started;                // first handler call done
    int counted;                // counted in srv->inflight
    moa_buf body;
    size_t body_seen;           // bytes received (also beyond the limit)
    int too_large;
    moa_tr *tr;
    int submitted;              // tr's job went to the scheduler (maybe refused)
    // 0 while the scheduler holds the job, then 1 + the moa_sched_reason it
    // came back with (or that refused it); set before the resume
    atomic_int back;
    struct MHD_Connection *conn;  // while submitted
    int fd;                     // client socket, polled for a hang-up; -1: unknown
    // hang-up watch (http->wmu)
    int watching;               // in http->watched
    int pins;                   // the watcher is cancelling its job: do not free
    int orphan;                 // on_completed ran while pinned: the watcher frees it
    req *wprev, *wnext;
    int status;                 // sent, 0 if none yet
    char err[512];
};

// --- answers ------------------------------------------------------------------------------

static enum MHD_Result send_body(req *r, struct MHD_Connection *c, int status, const char *ctype,
                                 char *body, size_t n, const char *h1, const char *v1) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
    if (h1) MHD_add_response_header(resp, h1, v1);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    return ret;
}

static enum MHD_Result send_json(req *r, struct MHD_Connection *c, int status, cJSON *j,
                                 const char *h1, const char *v1) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        char *b = strdup(oom);
        if (!b) return MHD_NO;
        snprintf(r->err, sizeof r->err, "out of memory");
        return send_body(r, c, 500, "application/json", b, strlen(b), NULL, NULL);
    }
    size_t n = strlen(s);
    // a newline, as curl users expect
    char *t = realloc(s, n + 2);
    if (t) {
        t[n++] = '\n';
        t[n] = 0;
        s = t;
    }
    return send_body(r, c, status, "application/json", s, n, h1, v1);
}

__attribute__((format(printf, 6, 7)))
static enum MHD_Result send_error(req *r, struct MHD_Connection *c, int status, const char *h1,
                                  const char *v1, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    if (status == 500)
        moa_log(MOA_LOG_ERROR, "request %s %s %s: 500: %s", r->id, r->method, r->path, r->err);
    cJSON *j = cJSON_CreateObject();
    if (j) cJSON_AddStringToObject(j, "error", r->err);
    return send_json(r, c, status, j, h1, v1);
}

static enum MHD_Result send_text(req *r, struct MHD_Connection *c, int status, const char *ctype,
                                 moa_buf *b, const char *h1, const char *v1) {
    if (b->oom) {
        free(b->s);
        return send_error(r, c, 500, NULL, NULL, "out of memory");
    }
    if (!b->s) moa_buf_puts(b, "");
    return send_body(r, c, status, ctype, b->s, b->n, h1, v1);
}

// --- request ids and keys ---------------------------------------------------------------------

static int valid_request_id(const char *s) {
    size_t n = 0;
    for (; s[n]; n++)
        if (!(isalnum((unsigned char)s[n]) || strchr("-_.:/+=@", s[n]))) return 0;
    return n >= 1 && n <= 128;
}

static void set_request_id(req *r, struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (h && valid_request_id(h)) {
        snprintf(r->id, sizeof r->id, "%s", h);
        return;
    }
    long n = atomic_fetch_add(&r->http->srv->next_id, 1);
    snprintf(r->id, sizeof r->id, "%08llx%08lx",
             (unsigned long long)(r->http->id_prefix & 0xffffffffu), (unsigned long)n);
}

// For endpoints without a body: Authorization: Bearer or ?api_key=.
static int header_key_ok(moa_server *srv, struct MHD_Connection *c) {
    const char *key = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "api_key");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!key && auth && !strncasecmp(auth, "Bearer ", 7)) key = auth + 7;
    return moa_api_key_ok(srv, key);
}

// --- small endpoints ------------------------------------------------------------------------------

// The models served, as [{"name", "source", "target"}] (once ready: they
// are being loaded before).
static void add_models(moa_server *srv, cJSON *j) {
    if (!atomic_load(&srv->ready)) return;
    cJSON *a = cJSON_AddArrayToObject(j, "models");
    for (int i = 0; a && i < srv->n_models; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(a, o);
        cJSON_AddStringToObject(o, "name", srv->models[i].name);
        cJSON_AddStringToObject(o, "source", srv->models[i].cfg->source_lang);
        cJSON_AddStringToObject(o, "target", srv->models[i].cfg->target_lang);
    }
}

static enum MHD_Result do_health(req *r, struct MHD_Connection *c) {
    const moa_conf *cf = &r->http->srv->conf;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", "ok");
    cJSON_AddStringToObject(j, "precision", moa_precision_name((moa_precision)cf->precision));
    cJSON_AddBoolToObject(j, "shortlist", cf->shortlist);
    add_models(r->http->srv, j);
    return send_json(r, c, 200, j, NULL, NULL);
}

static enum MHD_Result do_ready(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    if (atomic_load(&srv->draining))
        return send_error(r, c, 503, NULL, NULL, "draining: the server is shutting down");
    if (!atomic_load(&srv->ready))
        return send_error(r, c, 503, NULL, NULL, "not ready: the model is loading");
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "ready", 1);
    cJSON_AddStringToObject(j, "model", srv->models[0].name);
    add_models(srv, j);
    return send_json(r, c, 200, j, NULL, NULL);
}

static enum MHD_Result do_languages(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    if (!atomic_load(&srv->ready))
        return send_error(r, c, 503, NULL, NULL, "not ready: the model is loading");
    return send_json(r, c, 200, moa_api_languages(srv), NULL, NULL);
}

typedef enum { FMT_JSON, FMT_TEXT, FMT_HTML, FMT_BAD } heads_format;

// ?format= wins; else a browser (Accept names text/html, not JSON) gets the
// dashboard, Accept: text/plain the tables, everyone else JSON.
static heads_format heads_format_of(struct MHD_Connection *c) {
    const char *f = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "format");
    if (f) {
        if (!strcmp(f, "text")) return FMT_TEXT;
        if (!strcmp(f, "json")) return FMT_JSON;
        if (!strcmp(f, "html")) return FMT_HTML;
        return FMT_BAD;
    }
    const char *acc = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
    if (moa_web_accepts_html(acc)) return FMT_HTML;
    return acc && strstr(acc, "text/plain") && !strstr(acc, "application/json") ? FMT_TEXT
                                                                                 : FMT_JSON;
}

// A built-in page or file (moa_web.h); vary: the request header the choice
// of this answer depended on, or NULL.
static enum MHD_Result send_web(req *r, struct MHD_Connection *c, const moa_web_asset *a,
                                const char *vary) {
    const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-None-Match");
    int status = 200;
    struct MHD_Response *resp = moa_web_response(a, inm, &status);
    if (!resp) return send_error(r, c, 500, NULL, NULL, "out of memory");
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    if (vary) MHD_add_response_header(resp, "Vary", vary);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    return ret;
}

static enum MHD_Result do_web(req *r, struct MHD_Connection *c) {
    const moa_web_asset *a = moa_web_find(r->path);
    if (!a) return send_error(r, c, 404, NULL, NULL, "no such file: %.200s", r->path);
    return send_web(r, c, a, NULL);
}

// ?model=NAME (default: the first model); NULL after answering 400 for a
// name not served.
static moa_srv_model *model_arg(req *r, struct MHD_Connection *c, enum MHD_Result *ret) {
    moa_server *srv = r->http->srv;
    const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "model");
    if (!name) return &srv->models[0];
    for (int i = 0; i < srv->n_models; i++)
        if (!strcmp(srv->models[i].name, name)) return &srv->models[i];
    char names[600];
    size_t at = 0;
    names[0] = 0;
    for (int i = 0; i < srv->n_models && at < sizeof names; i++) {
        int w = snprintf(names + at, sizeof names - at, "%s%s", i ? ", " : "",
                         srv->models[i].name);
        if (w < 0) break;
        at += (size_t)w;
    }
    *ret = send_error(r, c, 400, NULL, NULL, "unknown model '%.100s': the models are %s", name,
                      names);
    return NULL;
}

static enum MHD_Result do_heads(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    heads_format fmt = heads_format_of(c);
    // the page shows the server's answers to its own /heads requests, so it
    // is served also while loading or with heads = false
    if (fmt == FMT_HTML && moa_web_heads_page())
        return send_web(r, c, moa_web_heads_page(), "Accept");
    if (!atomic_load(&srv->ready))
        return send_error(r, c, 503, NULL, NULL, "not ready: the model is loading");
    if (!srv->conf.heads)
        return send_error(r, c, 404, NULL, NULL, "routing statistics are off (heads = false)");
    enum MHD_Result ret = MHD_NO;
    moa_srv_model *m = model_arg(r, c, &ret);
    if (!m) return ret;
    if (fmt == FMT_BAD)
        return send_error(r, c, 400, NULL, NULL, "format must be json, text or html");
    int top = srv->conf.heads_top;
    const char *ts = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "top");
    if (ts) {
        char *end;
        long v = strtol(ts, &end, 10);
        if (end == ts || *end || v < 0 || v > 1000)
            return send_error(r, c, 400, NULL, NULL, "top must be an integer in 0..1000");
        top = (int)v;
    }
    if (fmt == FMT_TEXT) {
        moa_buf b = {0};
        moa_buf_printf(&b, "model %s (%s -> %s)\n\n", m->name, m->cfg->source_lang,
                       m->cfg->target_lang);
        moa_heads_text(m->heads, m->tok, top, &b);
        return send_text(r, c, 200, "text/plain; charset=utf-8", &b, "Vary", "Accept");
    }
    cJSON *j = moa_heads_json(m->heads, m->tok, top);
    if (!j) return send_error(r, c, 500, NULL, NULL, "out of memory");
    cJSON_AddStringToObject(j, "model", m->name);
    return send_json(r, c, 200, j, "Vary", "Accept");
}

static enum MHD_Result do_heads_reset(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    if (!header_key_ok(srv, c))
        return send_error(r, c, 403, NULL, NULL, "an API key is required (Authorization: "
                          "Bearer or ?api_key=)");
    if (!atomic_load(&srv->ready))
        return send_error(r, c, 503, NULL, NULL, "not ready: the model is loading");
    if (!srv->conf.heads)
        return send_error(r, c, 404, NULL, NULL, "routing statistics are off (heads = false)");
    // ?model=NAME resets that model's; without it, every model's
    enum MHD_Result ret = MHD_NO;
    moa_srv_model *m = NULL;
    if (MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "model") &&
        !(m = model_arg(r, c, &ret)))
        return ret;
    for (int i = 0; i < srv->n_models; i++)
        if (!m || m == &srv->models[i]) moa_heads_reset(srv->models[i].heads);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "reset", 1);
    return send_json(r, c, 200, j, NULL, NULL);
}

static enum MHD_Result do_metrics(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    moa_buf b = {0};
    moa_metrics_render(srv->metrics, &b);
    moa_sched_stats st;
    moa_sched_get_stats(srv->sched, &st);
    moa_cache_stats cs;
    moa_cache_get_stats(srv->cache, &cs);
    moa_buf_printf(&b,
                   "# HELP moa_queue_sentences Sentences waiting to join the batch.\n"
                   "# TYPE moa_queue_sentences gauge\nmoa_queue_sentences %d\n"
                   "# HELP moa_live_sentences Sentences in the batch.\n"
                   "# TYPE moa_live_sentences gauge\nmoa_live_sentences %d\n"
                   "# HELP moa_live_rows Beam rows the live sentences hold.\n"
                   "# TYPE moa_live_rows gauge\nmoa_live_rows %d\n"
                   "# HELP moa_requests_in_flight /translate requests accepted and not yet "
                   "answered.\n# TYPE moa_requests_in_flight gauge\nmoa_requests_in_flight %ld\n"
                   "# HELP moa_cache_hits_total Sentences answered from the translation cache.\n"
                   "# TYPE moa_cache_hits_total counter\nmoa_cache_hits_total %llu\n"
                   "# HELP moa_cache_misses_total Cache look-ups that missed.\n"
                   "# TYPE moa_cache_misses_total counter\nmoa_cache_misses_total %llu\n"
                   "# HELP moa_cache_entries Sentences in the cache.\n"
                   "# TYPE moa_cache_entries gauge\nmoa_cache_entries %d\n"
                   "# HELP moa_ready 1 when the model is loaded and the server is not draining.\n"
                   "# TYPE moa_ready gauge\nmoa_ready %d\n"
                   "# HELP moa_draining 1 after SIGTERM/SIGINT.\n"
                   "# TYPE moa_draining gauge\nmoa_draining %d\n"
                   "# HELP moa_late_bodies_total /translate requests whose body was complete "
                   "only after the timeout (504, never parsed).\n"
                   "# TYPE moa_late_bodies_total counter\nmoa_late_bodies_total %ld\n"
                   "# HELP moa_heap_trims_total Times the scheduler gave freed heap memory "
                   "back to the system (malloc_trim: idle after work, every 10 s while busy).\n"
                   "# TYPE moa_heap_trims_total counter\nmoa_heap_trims_total %ld\n"
                   "# HELP moa_heap_request_trims_total Times freed heap memory went back to "
                   "the system right after a request of 1000 or more units (sentences) ended.\n"
                   "# TYPE moa_heap_request_trims_total counter\nmoa_heap_request_trims_total %ld\n"
                   "# HELP moa_info The models served (one series each), their precision and shortlist, and the BLAS core.\n"
                   "# TYPE moa_info gauge\n",
                   st.queued_units, st.live_units, st.rows, atomic_load(&srv->inflight),
                   (unsigned long long)cs.hits, (unsigned long long)cs.misses, cs.entries,
                   atomic_load(&srv->ready) && !atomic_load(&srv->draining),
                   atomic_load(&srv->draining), atomic_load(&srv->late_bodies), st.trims,
                   st.request_trims);
    int n = atomic_load(&srv->ready) ? srv->n_models : 0;
    for (int i = 0; i < n; i++) {
        const moa_srv_model *m = &srv->models[i];
        moa_buf_printf(&b, "moa_info{model=\"%s\",source=\"%s\",target=\"%s\",precision=\"%s\","
                       "shortlist=\"%s\",blas=\"%s\",compute_workers=\"%d\",compute_threads=\"%d\","
                       "http_threads=\"%d\"} 1\n",
                       m->name, m->cfg->source_lang, m->cfg->target_lang,
                       moa_precision_name(moa_model_precision(m->model)),
                       moa_model_shortlist(m->model, NULL, NULL) ? "on" : "off", moa_blas_corename(),
                       moa_conf_compute_workers(&srv->conf), moa_get_num_threads(),
                       srv->conf.http_threads);
    }
    moa_buf_puts(&b, "# HELP moa_model_requests_total /translate requests answered, by model.\n"
                     "# TYPE moa_model_requests_total counter\n");
    for (int i = 0; i < n; i++)
        moa_buf_printf(&b, "moa_model_requests_total{model=\"%s\"} %ld\n", srv->models[i].name,
                       atomic_load(&srv->models[i].requests));
    moa_buf_puts(&b, "# HELP moa_model_sentences_total Sentences answered (computed or from the "
                     "cache), by model.\n# TYPE moa_model_sentences_total counter\n");
    for (int i = 0; i < n; i++)
        moa_buf_printf(&b, "moa_model_sentences_total{model=\"%s\"} %ld\n", srv->models[i].name,
                       atomic_load(&srv->models[i].sentences));
    // The engine sessions' share of the heap, every worker's summed.
    moa_session_mem sm = {0};
    for (int w = 0; srv->sched && w < moa_sched_workers(srv->sched); w++) {
        moa_sched_worker_stats ws;
        moa_sched_get_worker_stats(srv->sched, w, &ws);
        sm.arena_bytes += ws.mem.arena_bytes;
        sm.blocks_in_use_bytes += ws.mem.blocks_in_use_bytes;
        sm.blocks_free_bytes += ws.mem.blocks_free_bytes;
    }
    moa_buf_printf(&b, "# HELP moa_session_bytes Heap the engine sessions hold, all workers: "
                       "scratch arenas, blocks of the sentences queued and decoding, blocks "
                       "kept for reuse (as of each worker's last step).\n"
                       "# TYPE moa_session_bytes gauge\n"
                       "moa_session_bytes{part=\"arena\"} %zu\n"
                       "moa_session_bytes{part=\"blocks_in_use\"} %zu\n"
                       "moa_session_bytes{part=\"blocks_free\"} %zu\n",
                   sm.arena_bytes, sm.blocks_in_use_bytes, sm.blocks_free_bytes);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    // The C heap as glibc's allocator sees it: what the server holds (arena
    // chunks and mmapped ones) and what it freed but the allocator keeps.
    // Beside the process RSS this tells a leak (in_use grows) from
    // fragmentation (free grows).
    struct mallinfo2 mi = mallinfo2();
    moa_buf_printf(&b, "# HELP moa_heap_bytes The C heap (glibc malloc): bytes in use, and bytes "
                       "freed but kept by the allocator.\n# TYPE moa_heap_bytes gauge\n"
                       "moa_heap_bytes{state=\"in_use\"} %zu\nmoa_heap_bytes{state=\"free\"} %zu\n",
                   mi.uordblks + mi.hblkhd, mi.fordblks);
#endif
    for (int i = 0; i < n; i++)
        moa_heads_metrics(srv->models[i].heads, srv->models[i].name, i == 0, &b);
    for (int i = 0; i < n; i++)
        moa_heads_metrics_cv(srv->models[i].heads, srv->models[i].name, i == 0, &b);
    return send_text(r, c, 200, "text/plain; version=0.0.4; charset=utf-8", &b, NULL,
                     NULL);
}

// --- held requests: the scheduler's reasons, hang-ups ------------------------------------------

// The job's completion callback (any thread, the scheduler's lock held):
// record why, then wake the suspended connection; its handler answers.
static void on_job_done(moa_job *j, moa_sched_reason why) {
    req *r = j->owner;
    struct MHD_Connection *c = r->conn;  // r may be gone once resumed
    atomic_store(&r->back, 1 + (int)why);
    MHD_resume_connection(c);
}

// Whether the client of a held request has gone, from its socket polled for
// GONE_EVENTS: the connection was reset or broke (POLLERR), or is shut in
// both directions (POLLHUP; poll reports both whatever it is asked for).
// The one place that decides it. A read-side EOF (POLLRDHUP) is NOT a
// hang-up: the request is complete, and a client that shut down its sending
// side after it (shutdown(SHUT_WR), nc -N, some HTTP/1.0 clients) still
// reads the answer. The price: a client that closed its socket sends the
// same FIN, so it is not noticed here; its work runs to the end (or the
// deadline) and the answer's write finds it gone.
#define GONE_EVENTS 0
static int client_gone(const struct pollfd *p) {
    return (p->revents & (POLLHUP | POLLERR)) != 0;
}

static void watch_add(moa_http *h, req *r) {
    if (r->fd < 0) return;
    pthread_mutex_lock(&h->wmu);
    r->wprev = NULL;
    r->wnext = h->watched;
    if (h->watched) h->watched->wprev = r;
    h->watched = r;
    r->watching = 1;
    if (h->n_watched++ == 0) pthread_cond_signal(&h->wcv);
    pthread_mutex_unlock(&h->wmu);
}

// Takes r off the watch; 0 when the watcher holds it (pinned): then the
// watcher frees it when done with it. Under wmu.
static int watch_remove(moa_http *h, req *r) {
    if (!r->watching) return 1;
    if (r->wprev) r->wprev->wnext = r->wnext;
    else h->watched = r->wnext;
    if (r->wnext) r->wnext->wprev = r->wprev;
    r->watching = 0;
    h->n_watched--;
    if (r->pins) {
        r->orphan = 1;
        return 0;
    }
    return 1;
}

static void req_free(moa_server *srv, req *r);

// One look at the clients of the held requests: the jobs of those gone are
// cancelled (the scheduler resumes them with MOA_SCHED_CANCELLED: 499).
// Under wmu on entry and return; released while cancelling, the requests
// being pinned so their memory stays.
static void watch_round(moa_http *h) {
    if (h->cap_pfds < h->n_watched) {
        struct pollfd *p = realloc(h->pfds, (size_t)h->n_watched * sizeof *p);
        if (p) h->pfds = p;
        req **q = realloc(h->preqs, (size_t)h->n_watched * sizeof *q);
        if (q) h->preqs = q;
        if (!p || !q) return;  // looked at again next time
        h->cap_pfds = h->n_watched;
    }
    int n = 0;
    for (req *r = h->watched; r; r = r->wnext) {
        if (atomic_load(&r->back)) continue;  // back already: being answered
        h->pfds[n] = (struct pollfd){.fd = r->fd, .events = GONE_EVENTS};
        h->preqs[n++] = r;
    }
    if (n == 0 || poll(h->pfds, (nfds_t)n, 0) <= 0) return;
    int gone = 0;
    for (int i = 0; i < n; i++) {
        if (!client_gone(&h->pfds[i])) continue;
        req *r = h->preqs[i];
        r->pins++;
        h->preqs[gone++] = r;
    }
    if (gone == 0) return;
    pthread_mutex_unlock(&h->wmu);
    for (int i = 0; i < gone; i++) moa_sched_cancel(h->srv->sched, moa_tr_job(h->preqs[i]->tr));
    pthread_mutex_lock(&h->wmu);
    for (int i = 0; i < gone; i++) {
        req *r = h->preqs[i];
        if (--r->pins == 0 && r->orphan) {
            pthread_mutex_unlock(&h->wmu);
            req_free(h->srv, r);
            pthread_mutex_lock(&h->wmu);
        }
    }
}

static void *watch_main(void *arg) {
    moa_http *h = arg;
    pthread_mutex_lock(&h->wmu);
    while (!h->wstop) {
        if (h->n_watched == 0) {
            pthread_cond_wait(&h->wcv, &h->wmu);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += WATCH_INTERVAL_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->wcv, &h->wmu, &ts);
        if (!h->wstop) watch_round(h);
    }
    pthread_mutex_unlock(&h->wmu);
    return NULL;
}

// --- /translate -----------------------------------------------------------------------------------

static enum MHD_Result translate_answer(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    char err[512];
    cJSON *j = moa_api_translate_answer(srv, r->tr, r->t0, err, sizeof err);
    if (!j) return send_error(r, c, 500, NULL, NULL, "%s", err);
    return send_json(r, c, 200, j, NULL, NULL);
}

static enum MHD_Result retry_429(req *r, struct MHD_Connection *c) {
    moa_sched_stats st;
    moa_sched_get_stats(r->http->srv->sched, &st);
    // Seconds until the queue ahead should have drained, 1..60.
    double s = st.sentences_per_s > 0 ? st.queued_units / st.sentences_per_s : 1;
    int secs = s < 1 ? 1 : s > 60 ? 60 : (int)ceil(s);
    char v[16];
    snprintf(v, sizeof v, "%d", secs);
    return send_error(r, c, 429, "Retry-After", v, "too many sentences queued (max_queue is "
                      "%d); retry in %d s", r->http->srv->conf.max_queue, secs);
}

// The answer to a job the scheduler gave back (or refused): the one place
// that maps the scheduler's reasons to HTTP statuses.
static enum MHD_Result translate_back(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    moa_job *j = moa_tr_job(r->tr);
    int back = atomic_load(&r->back);
    switch (back ? (moa_sched_reason)(back - 1) : MOA_SCHED_FAILED) {
    case MOA_SCHED_DONE:
        return translate_answer(r, c);
    case MOA_SCHED_CANCELLED:
        r->status = 499;  // the client left: nobody to answer, close
        return MHD_NO;
    case MOA_SCHED_DEADLINE:
        return send_error(r, c, 504, NULL, NULL, "timed out after %g s (the server's timeout)",
                          srv->conf.timeout);
    case MOA_SCHED_STOPPED:
        return send_error(r, c, 503, NULL, NULL, "the server is shutting down");
    case MOA_SCHED_QUEUE_FULL:
        return retry_429(r, c);
    case MOA_SCHED_FAILED:
        break;
    }
    return send_error(r, c, 500, NULL, NULL, "%s", back && j->err[0] ? j->err : "failed");
}

// The last handler call of a /translate request: body complete, or the
// scheduler gave the job back.
static enum MHD_Result translate_final(req *r, struct MHD_Connection *c) {
    moa_server *srv = r->http->srv;
    if (r->submitted) return translate_back(r, c);
    if (r->too_large)
        return send_error(r, c, 413, NULL, NULL, "request body larger than %ld bytes "
                          "(max_body)", srv->conf.max_body);
    // The deadline counts from the request line: a request whose body came in
    // after it gets 504 whatever it holds, also when nothing in it needs the
    // model (blank lines, every sentence in the cache), which would otherwise
    // be answered at once.
    if (moa_sched_now() >= r->t0 + srv->conf.timeout) {
        free(r->body.s);
        memset(&r->body, 0, sizeof r->body);
        atomic_fetch_add(&srv->late_bodies, 1);
        return send_error(r, c, 504, NULL, NULL, "timed out after %g s (the server's timeout; "
                          "the request's body arrived after it)", srv->conf.timeout);
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    char err[512];
    int st = moa_api_translate_parse(srv, ct, auth, r->body.s ? r->body.s : "", r->body.n,
                                     &r->tr, err, sizeof err);
    free(r->body.s);
    memset(&r->body, 0, sizeof r->body);
    if (st) return send_error(r, c, st, NULL, NULL, "%s", err);
    if (moa_tr_waiting(r->tr) == 0) return translate_answer(r, c);

    moa_job *j = moa_tr_job(r->tr);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    r->conn = c;
    j->owner = r;
    j->on_done = on_job_done;
    j->deadline = r->t0 + srv->conf.timeout;
    // Suspend BEFORE the scheduler can see the job, so its resume can never
    // come first. A refused submit resumes at once and answers on re-entry.
    r->submitted = 1;
    watch_add(r->http, r);
    MHD_suspend_connection(c);
    int rc = moa_sched_submit(srv->sched, j);
    if (rc) {
        atomic_store(&r->back, 1 + rc);
        MHD_resume_connection(c);
    }
    return MHD_YES;
}

// --- libmicrohttpd callbacks ----------------------------------------------------------------------

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
    (void)c;
    moa_http *h = cls;
    req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->http = h;
    r->t0 = moa_sched_now();
    size_t n = strcspn(uri, "?");
    if (n >= sizeof r->path) n = sizeof r->path - 1;
    memcpy(r->path, uri, n);
    r->path[n] = 0;
    return r;
}

static endpoint route(const char *path) {
    for (int e = 0; e < EP_OTHER; e++)
        if (e != EP_STATIC && !strcmp(path, routes[e].path)) return (endpoint)e;
    if (!strncmp(path, routes[EP_STATIC].path, strlen(routes[EP_STATIC].path))) return EP_STATIC;
    return EP_OTHER;
}

static int method_ok(endpoint ep, const char *m) {
    if (ep == EP_TRANSLATE || ep == EP_HEADS_RESET) return !strcmp(m, "POST");
    return !strcmp(m, "GET") || !strcmp(m, "HEAD");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    moa_http *h = cls;
    moa_server *srv = h->srv;
    req *r = *con_cls;
    if (!r) {  // the URI callback could not allocate
        if (!(r = on_uri(h, url, c))) return MHD_NO;
        *con_cls = r;
    }
    if (!r->started) {
        r->started = 1;
        snprintf(r->method, sizeof r->method, "%s", method);
        set_request_id(r, c);
        r->ep = route(r->path);
        if (!strcmp(method, "OPTIONS")) {
            char *b = strdup("");
            struct MHD_Response *resp = b ? MHD_create_response_from_buffer(0, b, MHD_RESPMEM_MUST_FREE) : NULL;
            if (!resp) {
                free(b);
                return MHD_NO;
            }
            MHD_add_response_header(resp, "X-Request-Id", r->id);
            MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
            MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                    "Content-Type, Authorization, X-Request-Id");
            MHD_add_response_header(resp, "Access-Control-Max-Age", "86400");
            enum MHD_Result ret = MHD_queue_response(c, 204, resp);
            MHD_destroy_response(resp);
            r->status = 204;
            return ret;
        }
        if (r->ep == EP_OTHER)
            return send_error(r, c, 404, NULL, NULL, "no such endpoint: %s %.200s", method,
                              r->path);
        if (!method_ok(r->ep, method))
            return send_error(r, c, 405, "Allow", routes[r->ep].methods,
                              "method %s not allowed on %s (allowed: %s)", method, r->path,
                              routes[r->ep].methods);
        switch (r->ep) {
        case EP_HEALTH: return do_health(r, c);
        case EP_READY: return do_ready(r, c);
        case EP_LANGUAGES: return do_languages(r, c);
        case EP_HEADS: return do_heads(r, c);
        case EP_HEADS_RESET: return do_heads_reset(r, c);
        case EP_METRICS: return do_metrics(r, c);
        case EP_PAGE:
        case EP_STATIC: return do_web(r, c);
        default: break;
        }
        // POST /translate: what the headers alone decide
        if (atomic_load(&srv->draining))
            return send_error(r, c, 503, NULL, NULL, "draining: the server is shutting down");
        if (!atomic_load(&srv->ready))
            return send_error(r, c, 503, NULL, NULL, "not ready: the model is loading");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            unsigned long long v = strtoull(cl, &end, 10);
            if (end != cl && !*end && v > (unsigned long long)srv->conf.max_body)
                return send_error(r, c, 413, NULL, NULL, "request body of %llu bytes is larger "
                                  "than %ld (max_body)", v, srv->conf.max_body);
        }
        atomic_fetch_add(&srv->inflight, 1);
        r->counted = 1;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        r->body_seen += n;
        if (r->body_seen > (size_t)srv->conf.max_body) {
            // chunked bodies have no Content-Length: stop buffering, and stop
            // reading altogether when the client keeps sending far beyond
            r->too_large = 1;
            free(r->body.s);
            memset(&r->body, 0, sizeof r->body);
            return r->body_seen > 4 * (size_t)srv->conf.max_body ? MHD_NO : MHD_YES;
        }
        moa_buf_put(&r->body, upload_data, n);
        if (r->body.oom) return MHD_NO;
        return MHD_YES;
    }
    if (r->status) return MHD_YES;  // answered already
    return translate_final(r, c);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    moa_http *h = cls;
    moa_server *srv = h->srv;
    req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (!r->started) {  // a malformed request MHD answered itself
        free(r->body.s);
        free(r);
        return;
    }
    int status = r->status;
    if (!status || (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && status == 499)) status = 499;
    else if (toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT || toe == MHD_REQUEST_TERMINATED_READ_ERROR)
        status = 499;
    double secs = moa_sched_now() - r->t0;
    moa_metrics_request(srv->metrics, routes[r->ep].path, status, secs);
    moa_tr_counts cnt = {0, 0, 0, 0};
    if (r->tr) moa_tr_get_counts(r->tr, &cnt);
    moa_access_rec rec = {
        .request_id = r->id, .method = r->method, .path = r->path, .status = status,
        .texts = cnt.texts, .sentences = cnt.sentences, .src_tokens = cnt.src_tokens,
        .tgt_tokens = cnt.tgt_tokens, .ms = secs * 1e3,
        .error = status >= 400 && r->err[0] ? r->err : NULL,
        .text = srv->conf.log_text && r->tr ? moa_tr_first_text(r->tr) : NULL,
    };
    moa_log_access(&rec);
    if (r->counted) atomic_fetch_sub(&srv->inflight, 1);
    int mine = 1;
    if (r->watching) {  // set and cleared on this connection's thread only
        pthread_mutex_lock(&h->wmu);
        mine = watch_remove(h, r);
        pthread_mutex_unlock(&h->wmu);
    }
    if (mine) req_free(srv, r);
}

static void req_free(moa_server *srv, req *r) {
    // A job the scheduler still holds (only when MHD closes a suspended
    // connection at stop) must outlive this request: leak it rather than
    // free memory another thread uses.
    int held = r->submitted && atomic_load(&r->back) == 0;
    int units = moa_tr_units(r->tr);
    if (!held) moa_tr_free(r->tr);
    free(r->body.s);
    free(r);
    // A request of many sentences freed megabytes of small blocks in this
    // thread's heap: hand them back now rather than at the next periodic
    // trim (server/README.md, "Memory").
    if (!held && units >= TRIM_AFTER_UNITS && srv->sched) moa_sched_release_memory(srv->sched);
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    moa_log(MOA_LOG_WARN, "libmicrohttpd: %s", msg);
}

// --- start / stop -----------------------------------------------------------------------------------

moa_http *moa_http_start(moa_server *srv, char *err, size_t errlen) {
    const moa_conf *cf = &srv->conf;
    moa_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->srv = srv;
    pthread_mutex_init(&h->wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->wcv, &ca);
    pthread_condattr_destroy(&ca);
    if (getrandom(&h->id_prefix, sizeof h->id_prefix, 0) != (ssize_t)sizeof h->id_prefix)
        h->id_prefix = (uint64_t)(moa_sched_now() * 1e6);

    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_AUTO;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, cf->listen, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)cf->port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, cf->listen, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)cf->port);
        sa = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
        if (IN6_IS_ADDR_UNSPECIFIED(&a6.sin6_addr)) flags |= MHD_USE_DUAL_STACK;
    } else {
        snprintf(err, errlen, "listen '%s': not an IPv4 or IPv6 address", cf->listen);
        goto fail;
    }
    struct MHD_OptionItem pool[] = {
        {cf->http_threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
         cf->http_threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    h->d = MHD_start_daemon(flags, (uint16_t)cf->port, NULL, NULL, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
                            MHD_OPTION_SOCK_ADDR, sa,
                            MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cf->max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ceil(cf->idle_timeout),
                            MHD_OPTION_ARRAY, pool,
                            MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot listen on %s port %d (in use, or not allowed?)",
                 cf->listen, cf->port);
        goto fail;
    }
    if (pthread_create(&h->watcher, NULL, watch_main, h) != 0) {
        snprintf(err, errlen, "cannot start the hang-up watcher thread");
        MHD_stop_daemon(h->d);
        goto fail;
    }
    h->watcher_started = 1;
    return h;
fail:
    pthread_cond_destroy(&h->wcv);
    pthread_mutex_destroy(&h->wmu);
    free(h);
    return NULL;
}

void moa_http_stop(moa_http *h) {
    if (!h) return;
    // The watcher first: once it is gone, nothing is pinned and every
    // request MHD closes below is freed by on_completed.
    pthread_mutex_lock(&h->wmu);
    h->wstop = 1;
    pthread_cond_signal(&h->wcv);
    pthread_mutex_unlock(&h->wmu);
    if (h->watcher_started) pthread_join(h->watcher, NULL);
    MHD_stop_daemon(h->d);
    free(h->pfds);
    free(h->preqs);
    pthread_cond_destroy(&h->wcv);
    pthread_mutex_destroy(&h->wmu);
    free(h);
}
