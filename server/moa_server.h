// moa_server.h — the process-wide context every server module is handed.
//
// main (moa_server.c) fills it: settings, then the HTTP front end (so
// /health answers at once), then model, tokenizer, cache, statistics and
// scheduler, then `ready`. After that only the atomics and the key list
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

typedef struct moa_server {
    moa_conf conf;
    moa_model *model;           // NULL until loaded
    const moa_config *cfg;
    moa_tokenizer *tok;
    moa_protect_vocab *pv;      // the tokenizer's sentinel pieces
    moa_sched *sched;
    moa_cache *cache;           // NULL when cache_size is 0
    moa_heads *heads;           // NULL when heads is off
    moa_metrics *metrics;
    char model_name[160];       // config.json's name, else the directory's
    char model_key[512];        // what identifies the model in cache keys

    atomic_int ready;           // model loaded and serving
    atomic_int draining;        // SIGTERM seen: new /translate get 503
    atomic_long inflight;       // /translate requests accepted, not yet answered
    atomic_long next_id;        // for request ids

    // API keys (api_keys_file), replaced as a whole on SIGHUP
    pthread_rwlock_t keys_lock;
    char **keys;
    int n_keys;
} moa_server;

#endif
