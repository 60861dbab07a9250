// moa_cache.c — hash table + doubly linked LRU list under one mutex.
#include "moa_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *hnext;            // hash chain
    struct entry *prev, *next;      // LRU list, most recent at head
    uint64_t hash;
    size_t klen;
    char *key;
    moa_result val;                 // hyps with tokens and attention; no traces
} entry;

struct moa_cache {
    pthread_mutex_t mu;
    entry **table;
    size_t nbuckets;
    entry *head, *tail;
    int entries, capacity;
    uint64_t hits, misses, evictions;
};

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

moa_cache *moa_cache_create(int capacity) {
    if (capacity <= 0) return NULL;
    moa_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->nbuckets = 16;
    while (c->nbuckets < (size_t)capacity) c->nbuckets <<= 1;
    c->table = calloc(c->nbuckets, sizeof *c->table);
    if (!c->table) {
        free(c);
        return NULL;
    }
    c->capacity = capacity;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void entry_free(entry *e) {
    free(e->key);
    moa_result_clear(&e->val);
    free(e);
}

void moa_cache_free(moa_cache *c) {
    if (!c) return;
    for (entry *e = c->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    free(c->table);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

// Copies hypotheses' tokens, scores and cross-attention (placeholders are put
// back with it), not traces or per-token log-probs. 0 or -1; on failure dst
// is left clear.
static int copy_result(moa_result *dst, const moa_result *src) {
    if (moa_result_copy(dst, src, MOA_RESULT_ATTENTION) != 0) return -1;
    dst->user = NULL;   // the caller's pointer, never kept nor handed to another
    return 0;
}

static void lru_unlink(moa_cache *c, entry *e) {
    if (e->prev) e->prev->next = e->next;
    else c->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(moa_cache *c, entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static entry **find_slot(moa_cache *c, uint64_t h, const char *key, size_t klen) {
    entry **p = &c->table[h & (c->nbuckets - 1)];
    for (; *p; p = &(*p)->hnext)
        if ((*p)->hash == h && (*p)->klen == klen && !memcmp((*p)->key, key, klen)) break;
    return p;
}

int moa_cache_get(moa_cache *c, const char *key, size_t klen, moa_result *out) {
    if (!c) return 0;
    uint64_t h = fnv1a(key, klen);
    int hit = 0;
    pthread_mutex_lock(&c->mu);
    entry *e = *find_slot(c, h, key, klen);
    if (e && copy_result(out, &e->val) == 0) {
        lru_unlink(c, e);
        lru_push_front(c, e);
        hit = 1;
        c->hits++;
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void moa_cache_put(moa_cache *c, const char *key, size_t klen, const moa_result *r) {
    if (!c || !r || r->n_hyps < 1) return;
    entry *n = calloc(1, sizeof *n);
    if (!n) return;
    n->key = malloc(klen ? klen : 1);
    if (!n->key || copy_result(&n->val, r) != 0) {
        free(n->key);
        free(n);
        return;
    }
    memcpy(n->key, key, klen);
    n->klen = klen;
    n->hash = fnv1a(key, klen);
    pthread_mutex_lock(&c->mu);
    entry **slot = find_slot(c, n->hash, key, klen);
    if (*slot) {  // raced with another request for the same sentence
        pthread_mutex_unlock(&c->mu);
        entry_free(n);
        return;
    }
    *slot = n;
    lru_push_front(c, n);
    c->entries++;
    entry *victim = NULL;
    if (c->entries > c->capacity) {
        victim = c->tail;
        lru_unlink(c, victim);
        entry **p = find_slot(c, victim->hash, victim->key, victim->klen);
        *p = victim->hnext;
        c->entries--;
        c->evictions++;
    }
    pthread_mutex_unlock(&c->mu);
    if (victim) entry_free(victim);
}

void moa_cache_get_stats(moa_cache *c, moa_cache_stats *st) {
    memset(st, 0, sizeof *st);
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    st->hits = c->hits;
    st->misses = c->misses;
    st->evictions = c->evictions;
    st->entries = c->entries;
    st->capacity = c->capacity;
    pthread_mutex_unlock(&c->mu);
}
