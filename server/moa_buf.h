// moa_buf.h — a growable byte buffer for response bodies and metric pages.
//
//     moa_buf b = {0};
//     moa_buf_printf(&b, "%d\n", 42);
//     ... b.s (NUL-terminated), b.n ...   free(b.s) or hand it to MHD
//
// Out of memory sticks: b.oom becomes 1, later writes do nothing, and the
// caller checks once at the end. Header-only (static inline); not
// thread-safe (a buffer belongs to one thread).
#ifndef MOA_BUF_H
#define MOA_BUF_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct moa_buf {
    char *s;
    size_t n, cap;
    int oom;
} moa_buf;

static inline int moa_buf_reserve(moa_buf *b, size_t extra) {
    if (b->oom) return -1;
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + extra + 1) nc *= 2;
    char *s = realloc(b->s, nc);
    if (!s) {
        b->oom = 1;
        return -1;
    }
    b->s = s;
    b->cap = nc;
    return 0;
}

static inline void moa_buf_put(moa_buf *b, const char *s, size_t n) {
    if (moa_buf_reserve(b, n)) return;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static inline void moa_buf_puts(moa_buf *b, const char *s) { moa_buf_put(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static inline void moa_buf_printf(moa_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (w < 0 || moa_buf_reserve(b, (size_t)w)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)w + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)w;
}

#endif
