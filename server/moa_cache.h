// moa_cache.h — an LRU cache of translated sentences.
//
//     moa_cache *c = moa_cache_create(10000);     // NULL when size is 0
//     moa_result r;
//     if (moa_cache_get(c, key, klen, &r)) { ... r.hyps ...; moa_result_clear(&r); }
//     moa_cache_put(c, key, klen, &result);       // copies what it keeps
//
// The key is built by the caller from everything that decides the output
// (model, options, the sentence's text), so equal keys mean equal results.
// Values keep hypotheses' tokens and scores, never traces. Thread-safe (one
// mutex; lookups and inserts are short).
#ifndef MOA_CACHE_H
#define MOA_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "moa_model.h"

typedef struct moa_cache moa_cache;

// capacity: entries kept; 0 gives NULL (every call below accepts NULL and
// then does nothing, so callers need no "cache on?" checks).
moa_cache *moa_cache_create(int capacity);
void moa_cache_free(moa_cache *c);

// 1 and a fresh copy in *out (caller clears it with moa_result_clear), or 0.
// Counts a hit or a miss.
int moa_cache_get(moa_cache *c, const char *key, size_t klen, moa_result *out);
// Stores a copy of r's hypotheses (tokens, log_prob, score), evicting the
// least recently used entry when full. Out of memory: silently not cached.
void moa_cache_put(moa_cache *c, const char *key, size_t klen, const moa_result *r);

typedef struct moa_cache_stats {
    uint64_t hits, misses, evictions;
    int entries, capacity;
} moa_cache_stats;
void moa_cache_get_stats(moa_cache *c, moa_cache_stats *st);

#endif
