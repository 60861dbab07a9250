// moa_conf.h — moa-server's settings: defaults, config file, flags, MOA_* env.
//
//     moa_conf c;
//     int rc = moa_conf_load(&c, argc, argv);   // file < flags < environment
//     if (rc) return rc > 0 ? 0 : 2;            // --help / bad option
//
// Every option has one entry in a table (moa_conf.c) that gives its file key
// (`max_queue`), its flag (`--max-queue`), its variable (`MOA_MAX_QUEUE`),
// its range and its help text, so the three sources cannot drift apart.
// Not thread-safe; main loads it once before any thread starts and the
// struct is read-only afterwards.
#ifndef MOA_CONF_H
#define MOA_CONF_H

#include <stdio.h>

#include "moa_cpus.h"

#define MOA_CONF_PATH_MAX 1024
#define MOA_SERVER_VERSION "0.1.0"

typedef struct moa_conf {
    char listen[128];           // IPv4/IPv6 address to bind
    int port;
    // model directories, comma-separated (repeated --model flags are joined
    // with commas); moa_conf_models splits them
    char model[4 * MOA_CONF_PATH_MAX];
    int compute_workers;        // engine sessions stepped in parallel; 0 = one per usable CPU
    int compute_threads;        // OpenBLAS threads; 0 = one per core (1 with workers > 1)
    int http_threads;           // libmicrohttpd polling threads
    int max_connections;
    double idle_timeout;        // s an idle keep-alive connection stays open
    int max_inflight;           // sentences in the session at once (0 in the
                                // table: resolved by moa_conf_load from the workers)
    int max_batch_rows;         // beam rows one decoder step may hold (idem)
    int max_queue;              // sentences waiting for admission (429 beyond)
    long max_body;              // bytes (413 beyond)
    int max_texts;              // texts per request (400 beyond)
    int max_chars;              // characters per text (400 beyond)
    int split_tokens;           // a line with more source tokens is split
    int split_sentences;        // every sentence its own unit (request may override)
    int protect_placeholders;   // placeholders/markup/accelerators protected (ditto)
    double timeout;             // s per request (504 beyond)
    double drain_timeout;       // s to finish in-flight requests on SIGTERM
    int precision;              // moa_precision of the products with fixed weights
    int shortlist;              // decode over per-sentence candidate sets (MODEL/shortlist.tsv)
    int cache_size;             // cached sentences; 0 = off
    int heads;                  // routing statistics (/heads) on
    int heads_top;              // pieces listed per expert in /heads
    char api_keys_file[MOA_CONF_PATH_MAX];
    int log_level;              // moa_log_level
    int log_json;
    int log_text;               // user text in the access log
    char config_file[MOA_CONF_PATH_MAX];  // the file read, "" if none
    char probe[512];            // --probe PATH: GET it and exit
    moa_cpu_info cpus;          // what moa_conf_load found (moa_cpus.h)
} moa_conf;

// Fills c from defaults, then the config file (--config FILE, else
// $MOA_CONFIG, else conf/moa-server.conf when it exists), then argv flags,
// then MOA_* variables. Returns 0, 1 when --help/--version was handled (exit
// 0), or -1 after printing the problem to stderr (exit 2).
int moa_conf_load(moa_conf *c, int argc, char **argv);

// The compute workers in effect (compute_workers, 0 resolved to the usable
// CPUs: online cores, affinity mask, cgroup CPU quota; moa_cpus.h), and the
// OpenBLAS threads each uses: 1 when there are several workers
// (moa_conf_load refused compute_threads > 1 then), else compute_threads (0
// resolved to the usable CPUs). Thread-safe.
int moa_conf_compute_workers(const moa_conf *c);
int moa_conf_blas_threads(const moa_conf *c);

// Splits c->model at commas (blanks around each name trimmed, empty names
// skipped) into dirs[0..max-1]. Returns the number of directories, or -1
// with a message in err when there are more than max or one is too long.
int moa_conf_models(const moa_conf *c, char (*dirs)[MOA_CONF_PATH_MAX], int max, char *err,
                    size_t errlen);

// Writes the --help text (every option with its default, flag and variable).
void moa_conf_help(FILE *f);

// Writes the settings in effect as `key = value` lines (the --print-config
// output; also a valid config file).
void moa_conf_print(const moa_conf *c, FILE *f);

#endif
