// moa_bpe.c — subword-nmt merges (moa_bpe.h).
//
// Every string of the codes file (left, right and their concatenation) is
// interned once, so a word's symbols are small integers and a merge is a
// lookup of the pair (left id, right id) in one hash table. A symbol of a
// word is a span of the word's bytes plus an end-of-word flag: the "</w>"
// mark is never copied into the output, it only changes which id the last
// symbol has.
#include "moa_bpe.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa_utf8.h"

#define END_MARK "</w>"
#define SEPARATOR "@@"

struct moa_bpe {
    int version;        // 1 or 2 (0.1, 0.2)
    int merges;         // distinct pairs
    // interned strings: id -> string; a hash of string -> id
    char **sym;
    int n_sym, cap_sym;
    int *sym_slot;      // -1 empty, else id
    size_t sym_mask;
    // pairs: (left id, right id) -> rank and the id of their concatenation
    struct pair {
        uint64_t key;   // UINT64_MAX: empty
        int rank, merged;
    } *pair;
    size_t pair_mask;
};

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

// --- hash tables -----------------------------------------------------------------

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;   // FNV-1a
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

// The id of s[0..n), or -1.
static int sym_find(const moa_bpe *b, const char *s, size_t n) {
    if (!b->sym_slot) return -1;
    for (size_t i = hash_bytes(s, n) & b->sym_mask;; i = (i + 1) & b->sym_mask) {
        int id = b->sym_slot[i];
        if (id < 0) return -1;
        if (strlen(b->sym[id]) == n && memcmp(b->sym[id], s, n) == 0) return id;
    }
}

static int sym_rehash(moa_bpe *b, size_t slots) {
    int *t = malloc(slots * sizeof *t);
    if (!t) return MOA_ENOMEM;
    memset(t, 0xff, slots * sizeof *t);
    for (int id = 0; id < b->n_sym; id++) {
        size_t i = hash_bytes(b->sym[id], strlen(b->sym[id])) & (slots - 1);
        while (t[i] >= 0) i = (i + 1) & (slots - 1);
        t[i] = id;
    }
    free(b->sym_slot);
    b->sym_slot = t;
    b->sym_mask = slots - 1;
    return 0;
}

// The id of s[0..n), added when new. Returns the id or MOA_ENOMEM.
static int sym_intern(moa_bpe *b, const char *s, size_t n) {
    int id = sym_find(b, s, n);
    if (id >= 0) return id;
    if (b->n_sym == INT_MAX) return MOA_ENOMEM;
    if ((size_t)(b->n_sym + 1) * 2 > b->sym_mask + 1 || !b->sym_slot) {
        if (sym_rehash(b, b->sym_slot ? 2 * (b->sym_mask + 1) : 1024)) return MOA_ENOMEM;
    }
    if (b->n_sym == b->cap_sym) {
        int cap = b->cap_sym ? 2 * b->cap_sym : 1024;
        char **v = realloc(b->sym, (size_t)cap * sizeof *v);
        if (!v) return MOA_ENOMEM;
        b->sym = v;
        b->cap_sym = cap;
    }
    char *copy = malloc(n + 1);
    if (!copy) return MOA_ENOMEM;
    memcpy(copy, s, n);
    copy[n] = '\0';
    id = b->n_sym++;
    b->sym[id] = copy;
    size_t i = hash_bytes(s, n) & b->sym_mask;
    while (b->sym_slot[i] >= 0) i = (i + 1) & b->sym_mask;
    b->sym_slot[i] = id;
    return id;
}

static uint64_t pair_key(int l, int r) { return ((uint64_t)(uint32_t)l << 32) | (uint32_t)r; }

static const struct pair *pair_find(const moa_bpe *b, int l, int r) {
    if (!b->pair) return NULL;
    uint64_t k = pair_key(l, r);
    for (size_t i = hash_u64(k) & b->pair_mask;; i = (i + 1) & b->pair_mask) {
        if (b->pair[i].key == k) return &b->pair[i];
        if (b->pair[i].key == UINT64_MAX) return NULL;
    }
}

// Adds a pair unless it is there (the first line wins). Returns 0 or MOA_ENOMEM.
static int pair_add(moa_bpe *b, int l, int r, int rank, int merged) {
    if (pair_find(b, l, r)) return 0;
    if (!b->pair || (size_t)(b->merges + 1) * 2 > b->pair_mask + 1) {
        size_t slots = b->pair ? 2 * (b->pair_mask + 1) : 1024;
        struct pair *t = malloc(slots * sizeof *t);
        if (!t) return MOA_ENOMEM;
        for (size_t i = 0; i < slots; i++) t[i].key = UINT64_MAX;
        for (size_t j = 0; b->pair && j <= b->pair_mask; j++) {
            if (b->pair[j].key == UINT64_MAX) continue;
            size_t i = hash_u64(b->pair[j].key) & (slots - 1);
            while (t[i].key != UINT64_MAX) i = (i + 1) & (slots - 1);
            t[i] = b->pair[j];
        }
        free(b->pair);
        b->pair = t;
        b->pair_mask = slots - 1;
    }
    uint64_t k = pair_key(l, r);
    size_t i = hash_u64(k) & b->pair_mask;
    while (b->pair[i].key != UINT64_MAX) i = (i + 1) & b->pair_mask;
    b->pair[i] = (struct pair){k, rank, merged};
    b->merges++;
    return 0;
}

// --- load ------------------------------------------------------------------------

static int read_all(const char *path, char **data, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return MOA_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f), e = errno;
    fclose(f);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", path);
        return MOA_ENOMEM;
    }
    if (bad) {
        free(buf);
        set_err(err, errlen, "%s: %s", path, strerror(e));
        return MOA_EIO;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

// "0.1" -> 1, "0.2" -> 2 (also written "0.2.0"); 0 for any other version.
static int version_of(const char *v, size_t n) {
    if (n < 3 || v[0] != '0' || v[1] != '.' || (v[2] != '1' && v[2] != '2')) return 0;
    for (size_t i = 3; i < n;) {   // trailing ".0", ".00", ...: the same version
        if (v[i] != '.' || i + 1 >= n || v[i + 1] != '0') return 0;
        i++;
        while (i < n && v[i] == '0') i++;
    }
    return v[2] - '0';
}

static int is_strip(char c) { return c == ' ' || c == '\r' || c == '\n'; }

static int parse(moa_bpe *b, const char *path, char *data, size_t len, char *err,
                 size_t errlen) {
    if (moa_utf8_check(data, len, NULL, NULL) != 0) {
        set_err(err, errlen, "%s: not UTF-8 text (or holds a NUL byte)", path);
        return MOA_EFORMAT;
    }
    while (len > 0 && data[len - 1] == '\n') len--;   // trailing newlines
    data[len] = '\0';
    size_t pos = 0, lineno = 0;
    int rank = 0;
    b->version = 1;
    char *cat = NULL;
    size_t cat_cap = 0;
    int rc = 0;
    while (pos < len) {
        char *line = data + pos;
        char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        lineno++;
        while (n > 0 && is_strip(line[n - 1])) n--;
        while (n > 0 && is_strip(line[0])) {
            line++;
            n--;
        }
        if (lineno == 1 && n >= 9 && memcmp(line, "#version:", 9) == 0) {
            const char *v = line + 9;
            size_t vn = n - 9;
            while (vn > 0 && (*v == ' ' || *v == '\t')) {
                v++;
                vn--;
            }
            int ver = version_of(v, vn);
            if (ver) {
                b->version = ver;
            } else {
                set_err(err, errlen, "%s: line 1: BPE codes version '%.*s' is not supported "
                        "(0.1 or 0.2)", path, (int)vn, v);
                rc = MOA_EFORMAT;
                goto done;
            }
            continue;
        }
        char *sp = memchr(line, ' ', n);
        if (!sp || sp == line || memchr(sp + 1, ' ', n - (size_t)(sp - line) - 1) ||
            sp + 1 == line + n) {
            set_err(err, errlen, "%s: line %zu: expected two symbols separated by one space, "
                    "got '%.*s'", path, lineno, n > 60 ? 60 : (int)n, line);
            rc = MOA_EFORMAT;
            goto done;
        }
        size_t ln = (size_t)(sp - line), rn = n - ln - 1;
        if (ln + rn > cat_cap) {
            cat_cap = 2 * (ln + rn);
            char *c = realloc(cat, cat_cap);
            if (!c) {
                rc = MOA_ENOMEM;
                goto done;
            }
            cat = c;
        }
        memcpy(cat, line, ln);
        memcpy(cat + ln, sp + 1, rn);
        int l = sym_intern(b, line, ln), r = l < 0 ? l : sym_intern(b, sp + 1, rn);
        int m = r < 0 ? r : sym_intern(b, cat, ln + rn);
        if (m < 0 || pair_add(b, l, r, rank, m)) {
            rc = MOA_ENOMEM;
            goto done;
        }
        if (rank == INT_MAX) {
            set_err(err, errlen, "%s: too many merges", path);
            rc = MOA_EFORMAT;
            goto done;
        }
        rank++;
    }
done:
    if (rc == MOA_ENOMEM) set_err(err, errlen, "%s: out of memory", path);
    free(cat);
    return rc;
}

moa_bpe *moa_bpe_load(const char *path, char *err, size_t errlen) {
    set_err(err, errlen, "%s", "");
    if (!path) {
        set_err(err, errlen, "moa_bpe_load: path is NULL");
        return NULL;
    }
    moa_bpe *b = calloc(1, sizeof *b);
    char *data = NULL;
    size_t len = 0;
    if (!b) {
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    if (read_all(path, &data, &len, err, errlen) || parse(b, path, data, len, err, errlen))
        goto fail;
    free(data);
    return b;
fail:
    free(data);
    moa_bpe_free(b);
    return NULL;
}

void moa_bpe_free(moa_bpe *b) {
    if (!b) return;
    for (int i = 0; i < b->n_sym; i++) free(b->sym[i]);
    free(b->sym);
    free(b->sym_slot);
    free(b->pair);
    free(b);
}

int moa_bpe_merges(const moa_bpe *b) { return b ? b->merges : 0; }
int moa_bpe_version(const moa_bpe *b) { return b ? b->version : 0; }

// --- apply -----------------------------------------------------------------------

typedef struct symbol {
    size_t b, e;    // bytes of the word
    int end;        // carries the end-of-word mark
    int id;         // interned id of the symbol's string, -1 when unknown
} symbol;

typedef struct out_buf {
    char *p;
    size_t n, cap;
    int oom;
} out_buf;

static void ob_put(out_buf *o, const char *s, size_t n) {
    if (o->oom) return;
    if (o->n + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->n + n + 1) cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = 1;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
    o->p[o->n] = '\0';
}

// The id of the word's bytes [b, e) with the end mark when `end`.
static int symbol_id(const moa_bpe *bpe, const char *w, size_t b, size_t e, int end,
                     char *tmp) {
    if (!end) return sym_find(bpe, w + b, e - b);
    memcpy(tmp, w + b, e - b);
    memcpy(tmp + (e - b), END_MARK, sizeof END_MARK - 1);
    return sym_find(bpe, tmp, e - b + sizeof END_MARK - 1);
}

// Segments one word w[0..n) and appends its pieces. sy has room for n + 1 symbols.
static void segment(const moa_bpe *bpe, const char *w, size_t n, symbol *sy, char *tmp,
                    out_buf *o) {
    int ns = 0;
    for (size_t i = 0; i < n;) {
        size_t k = (size_t)moa_utf8_len(w + i, n - i);
        sy[ns++] = (symbol){i, i + k, 0, -1};
        i += k;
    }
    if (ns == 1) {          // subword-nmt leaves one-character words alone
        ob_put(o, w, n);
        return;
    }
    if (bpe->version == 2) {
        sy[ns - 1].end = 1;
    } else {
        sy[ns++] = (symbol){n, n, 1, -1};
    }
    for (int i = 0; i < ns; i++)
        sy[i].id = sy[i].b == sy[i].e ? sym_find(bpe, END_MARK, sizeof END_MARK - 1)
                                      : symbol_id(bpe, w, sy[i].b, sy[i].e, sy[i].end, tmp);
    while (ns > 1) {
        const struct pair *best = NULL;
        for (int i = 0; i + 1 < ns; i++) {
            if (sy[i].id < 0 || sy[i + 1].id < 0) continue;
            const struct pair *p = pair_find(bpe, sy[i].id, sy[i + 1].id);
            if (p && (!best || p->rank < best->rank)) best = p;
        }
        if (!best) break;
        int l = (int)(best->key >> 32), r = (int)(uint32_t)best->key, out = 0;
        for (int i = 0; i < ns;) {
            if (i + 1 < ns && sy[i].id == l && sy[i + 1].id == r) {
                sy[out++] = (symbol){sy[i].b, sy[i + 1].e, sy[i + 1].end, best->merged};
                i += 2;
            } else {
                sy[out++] = sy[i++];
            }
        }
        ns = out;
    }
    if (ns > 1 && sy[ns - 1].b == sy[ns - 1].e) ns--;   // a lone "</w>" (0.1) is dropped
    for (int i = 0; i < ns; i++) {
        ob_put(o, w + sy[i].b, sy[i].e - sy[i].b);
        if (i + 1 < ns) ob_put(o, SEPARATOR " ", sizeof SEPARATOR);
    }
}

int moa_bpe_apply(const moa_bpe *b, const char *text, size_t len, char **out,
                  size_t *out_len) {
    if (!out) return MOA_EINVAL;
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!b || (!text && len) || moa_utf8_check(text ? text : "", len, NULL, NULL) != 0)
        return MOA_EINVAL;
    out_buf o = {0};
    symbol *sy = NULL;
    char *tmp = NULL;
    size_t cap = 0;
    ob_put(&o, "", 0);
    for (size_t i = 0; i < len && !o.oom;) {
        const char *sp = memchr(text + i, ' ', len - i);
        size_t n = sp ? (size_t)(sp - (text + i)) : len - i;
        if (n > 0) {
            if (n + 2 > cap) {
                cap = 2 * n + 2;
                symbol *s2 = realloc(sy, cap * sizeof *sy);
                char *t2 = s2 ? realloc(tmp, cap + sizeof END_MARK) : NULL;
                if (s2) sy = s2;
                if (t2) tmp = t2;
                if (!s2 || !t2) {
                    o.oom = 1;
                    break;
                }
            }
            if (o.n) ob_put(&o, " ", 1);
            segment(b, text + i, n, sy, tmp, &o);
        }
        i += n + 1;
    }
    free(sy);
    free(tmp);
    if (o.oom) {
        free(o.p);
        return MOA_ENOMEM;
    }
    *out = o.p;
    if (out_len) *out_len = o.n;
    return 0;
}
