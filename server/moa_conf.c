// moa_conf.c — option table, config file parser, flags and MOA_* variables.
#include "moa_conf.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moa_cpus.h"
#include "moa_log.h"
#include "moa_model.h"

#define DEFAULT_CONFIG "conf/moa-server.conf"

typedef enum { T_STR, T_INT, T_LONG, T_DBL, T_BOOL, T_LEVEL, T_FORMAT, T_PREC } opt_type;

typedef struct opt_def {
    const char *key;        // file key; flag is --key with '-' for '_'
    opt_type type;
    size_t off;
    size_t size;            // T_STR: buffer size
    double lo, hi;          // numeric range
    const char *dflt;
    const char *help;
} opt_def;

#define F(field) offsetof(moa_conf, field), sizeof(((moa_conf *)0)->field)

static const opt_def opts[] = {
    {"listen", T_STR, F(listen), 0, 0, "0.0.0.0",
     "address to listen on (IPv4 or IPv6, e.g. 127.0.0.1, ::)"},
    {"port", T_INT, F(port), 1, 65535, "8080", "TCP port"},
    {"model", T_STR, F(model), 0, 0, "weights/moa-en-de",
     "model directory (config.json, model.safetensors, vocab.txt, sentencepiece.model or "
     "bpecodes); "
     "several: comma-separated, or --model repeated (each serves its config.json's "
     "source_lang -> target_lang; the first is the default)"},
    {"compute_workers", T_INT, F(compute_workers), 0, 256, "0",
     "engine sessions stepped in parallel, each by its own thread with "
     "single-threaded OpenBLAS (0 = one per usable CPU: the online cores, fewer "
     "when the affinity mask or the cgroup CPU quota of a container allows "
     "fewer); the scheduler spreads "
     "sentences over them and max_inflight and max_batch_rows are split evenly "
     "between them. 1 = one session (compute_threads then sets its OpenBLAS "
     "threads)"},
    {"compute_threads", T_INT, F(compute_threads), 0, 256, "0",
     "OpenBLAS threads inside each product: 0 = one per usable CPU when "
     "compute_workers is 1, else 1; above 1 only with compute_workers = 1 "
     "(several workers each own one core; refused otherwise)"},
    {"http_threads", T_INT, F(http_threads), 1, 64, "2",
     "libmicrohttpd threads: parse requests, tokenize, build responses; they "
     "never run the model"},
    {"max_connections", T_INT, F(max_connections), 1, 100000, "1024",
     "open client connections at most; more are refused by the kernel queue"},
    {"idle_timeout", T_DBL, F(idle_timeout), 1, 3600, "30",
     "seconds an idle keep-alive connection is kept open"},
    {"max_inflight", T_INT, F(max_inflight), 0, 4096, "0",
     "sentences decoded at once (in the batch, all workers together); 1 turns "
     "batching off; 0 = 32 per compute worker, at least 64"},
    {"max_batch_rows", T_INT, F(max_batch_rows), 0, 65536, "0",
     "beam rows one decoder step may hold, all workers together (a sentence "
     "takes beam_size rows); at least 16 per worker so any beam fits; 0 = 128 "
     "per compute worker, at least 256"},
    {"max_queue", T_INT, F(max_queue), 1, 10000000, "4096",
     "sentences waiting for the batch; a request that would exceed it gets 429 "
     "(a request arriving at an empty queue is always taken)"},
    {"max_body", T_LONG, F(max_body), 1024, 1073741824, "1048576",
     "bytes of request body at most (413 beyond, refused from Content-Length)"},
    {"max_texts", T_INT, F(max_texts), 1, 100000, "128",
     "texts per /translate request (400 beyond)"},
    {"max_chars", T_INT, F(max_chars), 1, 10000000, "20000",
     "characters (Unicode code points) per text (400 beyond)"},
    {"split_tokens", T_INT, F(split_tokens), 8, 1000000, "200",
     "a line with more source tokens than this (or than the model allows) is "
     "split at sentence ends, failing that at whitespace, and joined back"},
    {"split_sentences", T_BOOL, F(split_sentences), 0, 0, "true",
     "translate every sentence of a text as its own unit (ends: . ! ? ... and "
     "CJK marks before a capital, digit or quote; not after abbreviations, in "
     "numbers, URLs, paths or placeholders), joined back with the source's "
     "whitespace; a request's split_sentences field overrides it"},
    {"protect_placeholders", T_BOOL, F(protect_placeholders), 0, 0, "true",
     "keep printf/Qt/ICU/brace placeholders, markup tags, entities and keyboard "
     "accelerators out of the model's reach and put each back exactly as often "
     "as the source has it; a request's protect_placeholders field overrides it"},
    {"timeout", T_DBL, F(timeout), 0.01, 86400, "60",
     "seconds a /translate request may take; then 504 and its sentences leave "
     "the batch"},
    {"drain_timeout", T_DBL, F(drain_timeout), 0, 86400, "30",
     "on SIGTERM/SIGINT, seconds to finish the requests in flight before exiting"},
    {"precision", T_PREC, F(precision), 0, 0, "f32",
     "arithmetic of the products with fixed weights (feed-forward, K/V, the "
     "experts' Q and O, output projection): f32, bf16 or int8; the weights are "
     "converted once at load (routers, layer norms, softmax and attention stay "
     "float32; bf16 and int8 need AVX2). Answers follow it: f32 is the reference"},
    {"shortlist", T_BOOL, F(shortlist), 0, 0, "false",
     "vocabulary shortlist: each sentence's output projection and softmax run over its "
     "candidate pieces only (MODEL/shortlist.tsv: what its source pieces translate to, "
     "the frequent pieces, the specials), so scores are normalised over that set; the "
     "server refuses to start when the file is missing"},
    {"cache_size", T_INT, F(cache_size), 0, 100000000, "10000",
     "translated sentences kept in the LRU cache (key: text + options + model); "
     "0 turns it off"},
    {"heads", T_BOOL, F(heads), 0, 0, "true",
     "collect routing statistics for /heads and the expert-load metrics (asks "
     "the engine for a routing trace of every sentence)"},
    {"heads_top", T_INT, F(heads_top), 0, 1000, "10",
     "pieces listed per expert in /heads (overridable with ?top=N)"},
    {"api_keys_file", T_STR, F(api_keys_file), 0, 0, "",
     "file of API keys, one a line (# comments); when it names keys, "
     "/translate and POST /heads/reset need one (api_key field or "
     "Authorization: Bearer); SIGHUP re-reads it. Empty: no keys"},
    {"log_level", T_LEVEL, F(log_level), 0, 0, "info",
     "error, warn, info (access log) or debug"},
    {"log_format", T_FORMAT, F(log_json), 0, 0, "text",
     "text, or json (one JSON object a line)"},
    {"log_text", T_BOOL, F(log_text), 0, 0, "false",
     "put the first text of each /translate request into the access log "
     "(user data: off by default)"},
};
#define N_OPTS (sizeof opts / sizeof opts[0])

// --- values -----------------------------------------------------------------------

static int parse_bool(const char *s, int *out) {
    if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on") ||
        !strcmp(s, "1")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off") ||
        !strcmp(s, "0")) {
        *out = 0;
        return 0;
    }
    return -1;
}

// Sets one option from a string; where names the source for messages.
static int set_opt(moa_conf *c, const opt_def *d, const char *val, const char *where) {
    char *p = (char *)c + d->off;
    char *end;
    errno = 0;
    switch (d->type) {
    case T_STR:
        if (strlen(val) >= d->size) {
            fprintf(stderr, "moa-server: %s: %s is too long\n", where, d->key);
            return -1;
        }
        strcpy(p, val);
        return 0;
    case T_INT:
    case T_LONG: {
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < (long)d->lo || v > (long)d->hi) {
            fprintf(stderr, "moa-server: %s: %s '%s': expected an integer in "
                    "%.0f..%.0f\n", where, d->key, val, d->lo, d->hi);
            return -1;
        }
        if (d->type == T_INT) *(int *)p = (int)v;
        else *(long *)p = v;
        return 0;
    }
    case T_DBL: {
        double v = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(v) || v < d->lo || v > d->hi) {
            fprintf(stderr, "moa-server: %s: %s '%s': expected a number in "
                    "%g..%g\n", where, d->key, val, d->lo, d->hi);
            return -1;
        }
        *(double *)p = v;
        return 0;
    }
    case T_BOOL:
        if (parse_bool(val, (int *)p)) {
            fprintf(stderr, "moa-server: %s: %s '%s': expected true or false\n",
                    where, d->key, val);
            return -1;
        }
        return 0;
    case T_LEVEL: {
        int l = moa_log_parse_level(val);
        if (l < 0) {
            fprintf(stderr, "moa-server: %s: %s '%s': expected error, warn, "
                    "info or debug\n", where, d->key, val);
            return -1;
        }
        *(int *)p = l;
        return 0;
    }
    case T_PREC: {
        moa_precision pr;
        if (moa_precision_parse(val, &pr) != 0) {
            fprintf(stderr, "moa-server: %s: %s '%s': expected f32, bf16 or int8\n", where,
                    d->key, val);
            return -1;
        }
        *(int *)p = (int)pr;
        return 0;
    }
    case T_FORMAT:
        if (!strcmp(val, "text")) *(int *)p = 0;
        else if (!strcmp(val, "json")) *(int *)p = 1;
        else {
            fprintf(stderr, "moa-server: %s: %s '%s': expected text or json\n",
                    where, d->key, val);
            return -1;
        }
        return 0;
    }
    return -1;
}

// Finds an option by file key, flag name (dashes) or env suffix (upper case).
static const opt_def *find_opt(const char *name, size_t len) {
    for (size_t i = 0; i < N_OPTS; i++) {
        const char *k = opts[i].key;
        if (strlen(k) != len) continue;
        size_t j = 0;
        for (; j < len; j++) {
            char a = (char)tolower((unsigned char)name[j]);
            if (a == '-') a = '_';
            if (a != k[j]) break;
        }
        if (j == len) return &opts[i];
    }
    return NULL;
}

// --- config file ------------------------------------------------------------------

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

static int load_file(moa_conf *c, const char *path, int must_exist) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!must_exist && errno == ENOENT) return 0;
        fprintf(stderr, "moa-server: config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    snprintf(c->config_file, sizeof c->config_file, "%s", path);
    char line[4096], where[MOA_CONF_PATH_MAX + 32];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        char *hash = strchr(line, '#');  // values never contain '#'
        if (hash) *hash = 0;
        char *s = trim(line);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            fprintf(stderr, "moa-server: %s: expected key = value\n", where);
            rc = -1;
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        size_t vn = strlen(val);
        if (vn >= 2 && val[0] == '"' && val[vn - 1] == '"') {
            val[vn - 1] = 0;
            val++;
        }
        const opt_def *d = find_opt(key, strlen(key));
        if (!d) {
            fprintf(stderr, "moa-server: %s: unknown option '%s'\n", where, key);
            rc = -1;
            break;
        }
        if ((rc = set_opt(c, d, val, where)) != 0) break;
    }
    fclose(f);
    return rc;
}

// --- public -----------------------------------------------------------------------

// The CPUs this process may use (moa_cpus.h), probed once by moa_conf_load.
static int usable_cpus(const moa_conf *c) {
    if (c->cpus.usable > 0) return c->cpus.usable;
    moa_cpu_info ci;
    return moa_cpus_probe(NULL, NULL, &ci);
}

int moa_conf_compute_workers(const moa_conf *c) {
    return c->compute_workers > 0 ? c->compute_workers : usable_cpus(c);
}

int moa_conf_blas_threads(const moa_conf *c) {
    if (moa_conf_compute_workers(c) > 1) return 1;
    return c->compute_threads > 0 ? c->compute_threads : usable_cpus(c);
}

int moa_conf_models(const moa_conf *c, char (*dirs)[MOA_CONF_PATH_MAX], int max, char *err,
                    size_t errlen) {
    int n = 0;
    const char *p = c->model;
    for (;;) {
        size_t len = strcspn(p, ",");
        const char *b = p, *e = p + len;
        while (b < e && isspace((unsigned char)*b)) b++;
        while (e > b && isspace((unsigned char)e[-1])) e--;
        if (e > b) {
            if (n == max) {
                snprintf(err, errlen, "model: more than %d directories", max);
                return -1;
            }
            if ((size_t)(e - b) >= MOA_CONF_PATH_MAX) {
                snprintf(err, errlen, "model: directory %d is too long", n + 1);
                return -1;
            }
            memcpy(dirs[n], b, (size_t)(e - b));
            dirs[n][e - b] = 0;
            n++;
        }
        if (!p[len]) break;
        p += len + 1;
    }
    if (n == 0) snprintf(err, errlen, "model: no directory given");
    return n ? n : -1;
}

void moa_conf_help(FILE *f) {
    fputs("Usage: moa-server [--config FILE] [--OPTION VALUE ...]\n"
          "       moa-server --probe PATH [--port N]   (GET http://127.0.0.1:PORT/PATH,\n"
          "                                          exit 0 on 2xx: a healthcheck)\n"
          "\n"
          "Serves a Mixture-of-Attention-heads translation model over HTTP\n"
          "(POST /translate, GET /languages /heads /health /ready /metrics; see\n"
          "server/README.md). Settings come from, in increasing priority: the\n"
          "defaults below, the config file, command-line flags, MOA_* variables.\n"
          "\n"
          "  --config FILE        config file of `key = value` lines, # comments\n"
          "                       (default " DEFAULT_CONFIG " when it exists;\n"
          "                       MOA_CONFIG)\n"
          "  --print-config       print the settings in effect and exit\n"
          "  --probe PATH         healthcheck mode (see above)\n"
          "  --help, --version\n"
          "\n"
          "Options (flag, file key, variable):\n", f);
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &opts[i];
        char flag[64], env[64];
        size_t j;
        for (j = 0; d->key[j] && j < sizeof flag - 1; j++) {
            flag[j] = d->key[j] == '_' ? '-' : d->key[j];
            env[j] = (char)toupper((unsigned char)d->key[j]);
        }
        flag[j] = env[j] = 0;
        fprintf(f, "  --%s  (%s, MOA_%s)  default: %s\n", flag, d->key, env,
                d->dflt[0] ? d->dflt : "\"\"");
        // wrap the help at ~72 columns, indented
        const char *h = d->help;
        while (*h) {
            int w = 0, last_space = -1;
            for (; h[w] && w < 70; w++)
                if (h[w] == ' ') last_space = w;
            int cut = h[w] && last_space > 0 ? last_space : w;
            fprintf(f, "        %.*s\n", cut, h);
            h += cut;
            while (*h == ' ') h++;
        }
    }
}

void moa_conf_print(const moa_conf *c, FILE *f) {
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &opts[i];
        const char *p = (const char *)c + d->off;
        fprintf(f, "%s = ", d->key);
        switch (d->type) {
        case T_STR: fprintf(f, "%s\n", p); break;
        case T_INT: fprintf(f, "%d\n", *(const int *)p); break;
        case T_LONG: fprintf(f, "%ld\n", *(const long *)p); break;
        case T_DBL: fprintf(f, "%g\n", *(const double *)p); break;
        case T_BOOL: fprintf(f, "%s\n", *(const int *)p ? "true" : "false"); break;
        case T_LEVEL: {
            static const char *const lv[] = {"error", "warn", "info", "debug"};
            fprintf(f, "%s\n", lv[*(const int *)p & 3]);
            break;
        }
        case T_FORMAT: fprintf(f, "%s\n", *(const int *)p ? "json" : "text"); break;
        case T_PREC: fprintf(f, "%s\n", moa_precision_name((moa_precision) * (const int *)p)); break;
        }
    }
}

int moa_conf_load(moa_conf *c, int argc, char **argv) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_OPTS; i++)
        if (set_opt(c, &opts[i], opts[i].dflt, "default") != 0) return -1;

    // The config file comes first, whatever the flags' order.
    const char *file = getenv("MOA_CONFIG");
    int print = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            moa_conf_help(stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("moa-server " MOA_SERVER_VERSION "\n");
            return 1;
        }
        if (!strcmp(a, "--config") && i + 1 < argc) file = argv[i + 1];
        else if (!strncmp(a, "--config=", 9)) file = a + 9;
    }
    if (file ? load_file(c, file, 1) : load_file(c, DEFAULT_CONFIG, 0)) return -1;

    int models_flagged = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "moa-server: unexpected argument '%s'\nTry 'moa-server --help'.\n", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (nlen == 12 && !strncmp(name, "print-config", 12)) {
            print = 1;
            continue;
        }
        const char *val = NULL;
        if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        if (nlen == 6 && !strncmp(name, "config", 6)) continue;
        if (nlen == 5 && !strncmp(name, "probe", 5)) {
            if (!val) goto missing;
            snprintf(c->probe, sizeof c->probe, "%s", val);
            continue;
        }
        const opt_def *d = find_opt(name, nlen);
        if (!d) {
            fprintf(stderr, "moa-server: unknown option '%.*s'\nTry 'moa-server --help'.\n",
                    (int)nlen + 2, a);
            return -1;
        }
        if (!val) goto missing;
        char where[96];
        snprintf(where, sizeof where, "--%.*s", (int)(nlen < 60 ? nlen : 60), name);
        if (d->off == offsetof(moa_conf, model) && models_flagged++) {
            // a repeated --model adds a model (the first replaces the file's)
            size_t have = strlen(c->model);
            if (have + 1 + strlen(val) >= sizeof c->model) {
                fprintf(stderr, "moa-server: %s: model is too long\n", where);
                return -1;
            }
            c->model[have] = ',';
            strcpy(c->model + have + 1, val);
            continue;
        }
        if (set_opt(c, d, val, where)) return -1;
        continue;
    missing:
        fprintf(stderr, "moa-server: %s needs a value\n", a);
        return -1;
    }

    for (size_t i = 0; i < N_OPTS; i++) {
        char env[80] = "MOA_";
        size_t j = 4;
        for (const char *k = opts[i].key; *k && j < sizeof env - 1; k++)
            env[j++] = (char)toupper((unsigned char)*k);
        env[j] = 0;
        const char *v = getenv(env);
        if (v && set_opt(c, &opts[i], v, env)) return -1;
    }
    moa_cpus_probe(NULL, NULL, &c->cpus);
    int workers = moa_conf_compute_workers(c);
    // Limits left at 0 follow the workers, so the defaults hold on any host
    // (a fixed 256 rows refused to start with more than 16 workers); an
    // explicit value is checked as it is.
    if (c->max_inflight == 0) c->max_inflight = workers * 32 > 64 ? workers * 32 : 64;
    if (c->max_inflight > 4096) c->max_inflight = 4096;
    if (c->max_batch_rows == 0) c->max_batch_rows = workers * 128 > 256 ? workers * 128 : 256;
    if (c->max_batch_rows > 65536) c->max_batch_rows = 65536;
    if (c->max_batch_rows < 16) {
        fprintf(stderr, "moa-server: max_batch_rows %d: must be at least 16 "
                "(the largest beam)\n", c->max_batch_rows);
        return -1;
    }
    if (workers > 1 && c->compute_threads > 1) {
        fprintf(stderr, "moa-server: compute_threads %d: must be 1 (or 0) when "
                "compute_workers is above 1 (%d workers: each owns a core and runs "
                "single-threaded OpenBLAS); set compute_workers = 1 for %d OpenBLAS "
                "threads in one session\n", c->compute_threads, workers, c->compute_threads);
        return -1;
    }
    // Each session gets an even share of the rows and must still fit the
    // largest beam.
    if (c->max_batch_rows / workers < 16) {
        fprintf(stderr, "moa-server: max_batch_rows %d: must be at least 16 per compute "
                "worker (%d workers: at least %d), or lower compute_workers\n",
                c->max_batch_rows, workers, 16 * workers);
        return -1;
    }
    if (print) {
        moa_conf_print(c, stdout);
        return 1;
    }
    return 0;
}
