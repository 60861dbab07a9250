// moa_server.h — the process-wide context every server module is handed.
//
// main (moa_server.c) fills it: settings, then the HTTP front end (so
// /health answers at once), then the models (each with its tokenizer and
// statistics), cache and scheduler, then `ready`. After that only the atomics and the key list
// change; everything else is read-only and shared by all threads.
#ifndef MOA_SERVER_H
#define MOA_SERVER_H

#include <pthread.h>
#include <stdatomic.h>

#include "moa_cache.h"
#include "moa_conf.h"
#include "moa_heads.h"
#include "moa_metrics.h"
#include "moa_model.h"
#include "moa_protect.h"
#include "moa_sched.h"
#include "moa_tokenizer.h"

// One model served: its directory, weights, tokenizer and statistics.
// Read-only once loaded, except the counters.
typedef struct moa_srv_model {
    char dir[MOA_CONF_PATH_MAX];
    moa_model *model;
    const moa_config *cfg;      // its config.json: the pair is source_lang -> target_lang
    moa_tokenizer *tok;
    moa_protect_vocab *pv;      // the tokenizer's sentinel pieces
    moa_heads *heads;           // NULL when heads is off
    char name[160];             // config.json's name, else the directory's
    char key[512];              // what identifies the model in cache keys
    atomic_long requests;       // /translate answers it gave (moa_model_requests_total)
    atomic_long sentences;      // units it translated or took from the cache
} moa_srv_model;

typedef struct moa_server {
    moa_conf conf;
    // the `model` option's directories, in the order given; models[0] is the
    // default (no source/target, /heads without ?model=)
    moa_srv_model models[MOA_SCHED_MAX_MODELS];
    int n_models;               // 0 until loaded
    moa_sched *sched;           // one for all the models: limits and workers shared
    moa_cache *cache;           // NULL when cache_size is 0; keys include the model
    moa_metrics *metrics;

    atomic_int ready;           // model loaded and serving
    atomic_int draining;        // SIGTERM seen: new /translate get 503
    atomic_long inflight;       // /translate requests accepted, not yet answered
    atomic_long late_bodies;    // /translate bodies complete only after the timeout (504)
    atomic_long next_id;        // for request ids

    // API keys (api_keys_file), replaced as a whole on SIGHUP
    pthread_rwlock_t keys_lock;
    char **keys;
    int n_keys;
} moa_server;

#endif
