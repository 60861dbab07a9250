// moa_api.c — POST /translate and GET /languages (see moa_api.h).
#include "moa_api.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "moa_buf.h"
#include "moa_log.h"
#include "moa_protect.h"
#include "moa_split.h"
#include "moa_text.h"
#include "moa_utf8.h"

#define SEED_MAX (UINT64_C(1) << 63)

// A title/alt value inside a protected tag, translated as a unit of its own.
typedef struct attr_ref {
    int item;                   // the tag's item in the sentence's protection
    size_t off, len;            // the value in the text
    int unit;
} attr_ref;

// What a unit needs besides the engine's moa_unit (parallel to units).
typedef struct unit_x {
    int text;
    moa_prot prot;              // prot.masked NULL: the unit is not protected
    attr_ref *attrs;            // HTML: values to translate inside its inline tags
    int n_attrs;
} unit_x;

// An attribute unit still to make (they follow every text's own units).
typedef struct pending_attr {
    int parent, item, text;
    size_t off, len;
    char quote;
} pending_attr;

struct moa_tr {
    moa_server *srv;
    const moa_srv_model *m;     // the model the request goes to
    int mi;                     // its index (moa_unit.model)
    int n_texts, is_array, html;
    int split, protect;         // split_sentences, protect_placeholders in effect
    unit_x *ux;                 // per unit (the texts' own, then attribute values)
    pending_attr *pend;
    int n_pend, cap_pend;
    char **texts;               // copies of the request's texts
    size_t *lens;
    moa_segs *segs;             // per text
    int *first_unit;            // per text: index of its first unit
    moa_job job;
    moa_unit *units;
    int n_units, n_waiting;
    moa_search_opts opts;       // as requested (seed: the request's base seed)
    int want_scores, want_trace, alternatives, auto_source, sampling, use_cache;
    double confidence;          // detectedLanguage's, with source "auto"
    char optkey[160];           // the options part of cache keys
    moa_tr_counts counts;
};

moa_job *moa_tr_job(moa_tr *tr) { return &tr->job; }
int moa_tr_waiting(const moa_tr *tr) { return tr->n_waiting; }
int moa_tr_units(const moa_tr *tr) { return tr ? tr->n_units : 0; }
void moa_tr_get_counts(const moa_tr *tr, moa_tr_counts *c) { *c = tr->counts; }
const char *moa_tr_first_text(const moa_tr *tr) {
    return tr && tr->n_texts > 0 ? tr->texts[0] : NULL;
}

void moa_tr_free(moa_tr *tr) {
    if (!tr) return;
    // n_texts may be set before (or without) the arrays: a refused request
    for (int i = 0; i < tr->n_texts; i++) {
        if (tr->texts) free(tr->texts[i]);
        if (tr->segs) moa_segs_free(&tr->segs[i]);
    }
    free(tr->texts);
    free(tr->lens);
    free(tr->segs);
    free(tr->first_unit);
    for (int i = 0; i < tr->n_units; i++) {
        free(tr->units[i].src);
        moa_result_clear(&tr->units[i].res);
        if (tr->ux) {
            moa_prot_free(&tr->ux[i].prot);
            free(tr->ux[i].attrs);
        }
    }
    free(tr->units);
    free(tr->ux);
    free(tr->pend);
    free(tr);
}

// --- cJSON's allocations --------------------------------------------------------------------

// cJSON returns NULL alike for malformed JSON and for a failed allocation;
// with moa_api_init its allocations come through here, so that a parse
// can tell the two apart (500, not a 400 blaming the client's JSON).
static _Thread_local int cjson_oom;

static void *cjson_alloc(size_t n) {
    void *p = malloc(n);
    if (!p) cjson_oom = 1;
    return p;
}

void moa_api_init(void) {
    cJSON_Hooks h = {cjson_alloc, free};
    cJSON_InitHooks(&h);
}

// Attaches item (NULL: its creation failed) to the object obj under key,
// or to the array obj when key is NULL. 0, or -1 with item freed: out of
// memory (cJSON's adders leave an item they could not attach to the caller).
static int put(cJSON *obj, const char *key, cJSON *item) {
    if (obj && item &&
        (key ? cJSON_AddItemToObject(obj, key, item) : cJSON_AddItemToArray(obj, item)))
        return 0;
    cJSON_Delete(item);
    return -1;
}

// Moves *item into obj (put) and forgets it: it is obj's or freed.
static int put_own(cJSON *obj, const char *key, cJSON **item) {
    cJSON *it = *item;
    *item = NULL;
    return put(obj, key, it);
}

// --- API keys ----------------------------------------------------------------------------

// Compares without an early exit, so timing does not reveal a key's prefix.
static int key_eq(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    unsigned char d = na != nb;
    for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
    return d == 0;
}

int moa_api_key_ok(moa_server *srv, const char *key) {
    pthread_rwlock_rdlock(&srv->keys_lock);
    int ok = srv->n_keys == 0;
    for (int i = 0; !ok && key && i < srv->n_keys; i++) ok = key_eq(key, srv->keys[i]);
    pthread_rwlock_unlock(&srv->keys_lock);
    return ok;
}

int moa_api_keys_load(moa_server *srv) {
    const char *path = srv->conf.api_keys_file;
    char **keys = NULL;
    int n = 0, cap = 0;
    if (path[0]) {
        FILE *f = fopen(path, "r");
        if (!f) {
            moa_log(MOA_LOG_ERROR, "api keys: %s: %s (keeping the previous list)", path,
                    strerror(errno));
            return -1;
        }
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            char *s = line, *hash = strchr(s, '#');
            if (hash) *hash = 0;
            while (isspace((unsigned char)*s)) s++;
            size_t len = strlen(s);
            while (len && isspace((unsigned char)s[len - 1])) s[--len] = 0;
            if (!len) continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **k = realloc(keys, (size_t)cap * sizeof *k);
                if (!k) break;
                keys = k;
            }
            if (!(keys[n] = strdup(s))) break;
            n++;
        }
        fclose(f);
    }
    pthread_rwlock_wrlock(&srv->keys_lock);
    char **old = srv->keys;
    int n_old = srv->n_keys;
    srv->keys = keys;
    srv->n_keys = n;
    pthread_rwlock_unlock(&srv->keys_lock);
    for (int i = 0; i < n_old; i++) free(old[i]);
    free(old);
    if (path[0]) moa_log(MOA_LOG_INFO, "api keys: %d key(s) from %s", n, path);
    return 0;
}

// --- form bodies ---------------------------------------------------------------------------

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// Decodes %XX and '+' into a malloc'ed string; NULL on a bad escape or OOM
// (*bad set for the former).
static char *url_decode(const char *s, size_t n, int *bad) {
    char *o = malloc(n + 1), *p = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') *p++ = ' ';
        else if (s[i] == '%') {
            int h, l;
            if (i + 2 >= n || (h = hexval(s[i + 1])) < 0 || (l = hexval(s[i + 2])) < 0 ||
                (h == 0 && l == 0)) {
                *bad = 1;
                free(o);
                return NULL;
            }
            *p++ = (char)(h * 16 + l);
            i += 2;
        } else *p++ = s[i];
    }
    *p = 0;
    return o;
}

// A form body as a JSON object of strings; repeated q/text make an array.
static cJSON *parse_form(const char *body, size_t n, char *err, size_t errlen) {
    cJSON *o = cJSON_CreateObject();
    if (!o) goto fail_oom;
    size_t i = 0;
    while (i < n) {
        size_t amp = i;
        while (amp < n && body[amp] != '&') amp++;
        size_t eq = i;
        while (eq < amp && body[eq] != '=') eq++;
        if (amp > i) {
            int bad = 0;
            char *k = url_decode(body + i, eq - i, &bad);
            char *v = k ? url_decode(body + (eq < amp ? eq + 1 : amp),
                                     eq < amp ? amp - eq - 1 : 0, &bad) : NULL;
            if (!k || !v) {
                free(k);
                free(v);
                cJSON_Delete(o);
                if (bad) {
                    snprintf(err, errlen, "malformed form body: bad %%-escape");
                    return NULL;
                }
                goto fail_oom;
            }
            cJSON *old = cJSON_GetObjectItemCaseSensitive(o, k);
            cJSON *sv = cJSON_CreateString(v);
            if (!sv) {
                free(k);
                free(v);
                cJSON_Delete(o);
                goto fail_oom;
            }
            // Repeated q/text make an array of their values, in order; any
            // other repeated field: the last value wins. Old items are
            // detached and their successors added by key (cJSON's
            // ReplaceItemViaPointer leaves the replacement without a name:
            // the field was lost).
            int lost;
            if (old && (!strcmp(k, "q") || !strcmp(k, "text"))) {
                if (!cJSON_IsArray(old)) {
                    cJSON *first = cJSON_DetachItemViaPointer(o, old);
                    old = cJSON_CreateArray();
                    if (put(old, NULL, first) || put(o, k, old)) {
                        free(k);
                        free(v);
                        cJSON_Delete(sv);
                        cJSON_Delete(o);
                        goto fail_oom;
                    }
                }
                lost = put(old, NULL, sv);
            } else {
                if (old) cJSON_Delete(cJSON_DetachItemViaPointer(o, old));
                lost = put(o, k, sv);
            }
            free(k);
            free(v);
            if (lost) {  // sv went with it
                cJSON_Delete(o);
                goto fail_oom;
            }
        }
        i = amp + 1;
    }
    return o;
fail_oom:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

// --- typed fields ----------------------------------------------------------------------------

typedef struct fields {
    cJSON *root;
    int form;                   // values are strings to convert
    char *err;
    size_t errlen;
} fields;

static cJSON *field(fields *f, const char *name) {
    cJSON *it = cJSON_GetObjectItemCaseSensitive(f->root, name);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

// 0 (absent: *given = 0), 1 (set), -1 (wrong type, err set).
static int get_long(fields *f, const char *name, long lo, long hi, long *out) {
    cJSON *it = field(f, name);
    if (!it) return 0;
    if (cJSON_IsNumber(it)) {
        double v = it->valuedouble;
        if (v == floor(v) && v >= (double)lo && v <= (double)hi) {
            *out = (long)v;
            return 1;
        }
    } else if (cJSON_IsString(it) && f->form) {
        char *end;
        errno = 0;
        long v = strtol(it->valuestring, &end, 10);
        if (!errno && end != it->valuestring && !*end && v >= lo && v <= hi) {
            *out = v;
            return 1;
        }
    }
    snprintf(f->err, f->errlen, "%s must be an integer in %ld..%ld", name, lo, hi);
    return -1;
}

static int get_int(fields *f, const char *name, int lo, int hi, int *out) {
    long v;
    int r = get_long(f, name, lo, hi, &v);
    if (r == 1) *out = (int)v;
    return r;
}

static int get_float(fields *f, const char *name, float *out) {
    cJSON *it = field(f, name);
    if (!it) return 0;
    if (cJSON_IsNumber(it) && isfinite(it->valuedouble)) {
        *out = (float)it->valuedouble;
        return 1;
    }
    if (cJSON_IsString(it) && f->form) {
        char *end;
        double v = strtod(it->valuestring, &end);
        if (end != it->valuestring && !*end && isfinite(v)) {
            *out = (float)v;
            return 1;
        }
    }
    snprintf(f->err, f->errlen, "%s must be a number", name);
    return -1;
}

static int get_bool(fields *f, const char *name, int *out) {
    cJSON *it = field(f, name);
    if (!it) return 0;
    if (cJSON_IsBool(it)) {
        *out = cJSON_IsTrue(it);
        return 1;
    }
    if (cJSON_IsNumber(it) && (it->valuedouble == 0 || it->valuedouble == 1)) {
        *out = it->valuedouble == 1;
        return 1;
    }
    if (cJSON_IsString(it) && f->form) {
        const char *s = it->valuestring;
        if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes") ||
            !strcasecmp(s, "on")) {
            *out = 1;
            return 1;
        }
        if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no") ||
            !strcasecmp(s, "off") || !*s) {
            *out = 0;
            return 1;
        }
    }
    snprintf(f->err, f->errlen, "%s must be true or false", name);
    return -1;
}

static int get_seed(fields *f, uint64_t *out) {
    cJSON *it = field(f, "seed");
    if (!it) return 0;
    if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble <= 9.2233720368547758e18 &&
        it->valuedouble == floor(it->valuedouble)) {
        *out = (uint64_t)it->valuedouble;
        return 1;
    }
    if (cJSON_IsString(it) && isdigit((unsigned char)it->valuestring[0])) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(it->valuestring, &end, 10);
        if (!errno && !*end && v <= SEED_MAX) {
            *out = v;
            return 1;
        }
    }
    snprintf(f->err, f->errlen, "seed must be an integer in 0..2^63");
    return -1;
}

static int get_string(fields *f, const char *name, const char **out) {
    cJSON *it = field(f, name);
    if (!it) return 0;
    if (cJSON_IsString(it)) {
        *out = it->valuestring;
        return 1;
    }
    snprintf(f->err, f->errlen, "%s must be a string", name);
    return -1;
}

// --- languages -------------------------------------------------------------------------------

static const char *lang_name(const char *code) {
    static const char *const names[][2] = {
        {"en", "English"}, {"de", "German"}, {"fr", "French"}, {"es", "Spanish"},
        {"it", "Italian"}, {"pt", "Portuguese"}, {"nl", "Dutch"}, {"ru", "Russian"},
        {"zh", "Chinese"}, {"ja", "Japanese"}, {"ko", "Korean"}, {"ar", "Arabic"},
        {"pl", "Polish"}, {"cs", "Czech"}, {"ro", "Romanian"}, {"tr", "Turkish"},
        {"sv", "Swedish"}, {"fi", "Finnish"}, {"da", "Danish"}, {"uk", "Ukrainian"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(code, names[i][0])) return names[i][1];
    return code;
}

// "EN", "en-US", "en_GB" all match "en".
static int lang_match(const char *given, const char *model_lang) {
    size_t n = strlen(model_lang), g = strcspn(given, "-_");
    if (!strcasecmp(given, model_lang)) return 1;
    return g == n && !strncasecmp(given, model_lang, n);
}

// Adds code to arr (an array of language objects) unless it is there;
// returns its object.
static cJSON *lang_entry(cJSON *arr, const char *code) {
    cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "code");
        if (cJSON_IsString(c) && !strcasecmp(c->valuestring, code)) return it;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToArray(arr, o);
    cJSON_AddStringToObject(o, "code", code);
    cJSON_AddStringToObject(o, "name", lang_name(code));
    cJSON_AddArrayToObject(o, "targets");
    return o;
}

// Every language of every model, in the models' order (each model's source,
// then its target), each with the targets it translates into.
cJSON *moa_api_languages(moa_server *srv) {
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return arr;
    for (int i = 0; i < srv->n_models; i++) {
        const moa_config *g = srv->models[i].cfg;
        cJSON *a = lang_entry(arr, g->source_lang);
        lang_entry(arr, g->target_lang);
        cJSON *t = cJSON_GetObjectItemCaseSensitive(a, "targets");
        if (t) cJSON_AddItemToArray(t, cJSON_CreateString(g->target_lang));
    }
    return arr;
}

// "en to de, de to en": the pairs served, for error messages.
static void pairs_text(const moa_server *srv, char *buf, size_t cap) {
    size_t at = 0;
    buf[0] = 0;
    for (int i = 0; i < srv->n_models && at < cap; i++) {
        const moa_config *g = srv->models[i].cfg;
        int w = snprintf(buf + at, cap - at, "%s%s to %s", i ? ", " : "", g->source_lang,
                         g->target_lang);
        if (w < 0) break;
        at += (size_t)w;
    }
}

// Source pieces of the request's texts in model m's tokenizer (the first
// 4 KiB of each): with source "auto" and several candidate models, the one
// that cuts the text into the fewest pieces is taken to know its language.
static long count_pieces(const moa_tr *tr, const moa_srv_model *m) {
    long total = 0;
    for (int t = 0; t < tr->n_texts; t++) {
        size_t n = tr->lens[t] < 4096 ? tr->lens[t] : 4096;
        while (n > 0 && n < tr->lens[t] && ((unsigned char)tr->texts[t][n] & 0xC0) == 0x80) n--;
        int *ids = NULL, len = 0;
        if (moa_tokenizer_encode(m->tok, tr->texts[t], n, 0, &ids, &len, NULL, 0) == 0)
            total += len;
        free(ids);
    }
    return total;
}

// Picks the model for source src (NULL: any, or "auto") and target tgt
// (NULL: any): the first declared that matches both; with "auto" and
// several candidates, the one whose tokenizer fits the text best. 0, or
// 400 with the pairs served in err.
static int route(moa_tr *tr, const char *src, const char *tgt, char *err, size_t errlen) {
    const moa_server *srv = tr->srv;
    int n_src = 0, n_tgt = 0, cand[MOA_SCHED_MAX_MODELS], n_cand = 0;
    for (int i = 0; i < srv->n_models; i++) {
        const moa_config *g = srv->models[i].cfg;
        int s_ok = !src || lang_match(src, g->source_lang);
        int t_ok = !tgt || lang_match(tgt, g->target_lang);
        n_src += s_ok;
        n_tgt += t_ok;
        if (s_ok && t_ok) cand[n_cand++] = i;
    }
    if (srv->n_models == 0) {
        snprintf(err, errlen, "no model is loaded");
        return 503;
    }
    if (n_cand == 0) {
        char pairs[600];
        pairs_text(srv, pairs, sizeof pairs);
        const char *what = srv->n_models == 1 ? "this model translates" : "this server translates";
        if (!n_src && src)
            snprintf(err, errlen, "unsupported source language '%.40s': %s %s", src, what, pairs);
        else if (!n_tgt && tgt)
            snprintf(err, errlen, "unsupported target language '%.40s': %s %s", tgt, what, pairs);
        else
            snprintf(err, errlen, "unsupported language pair '%.40s' to '%.40s': %s %s",
                     src ? src : "auto", tgt ? tgt : "any", what, pairs);
        return 400;
    }
    int best = cand[0];
    tr->confidence = 100.0;
    if (tr->auto_source && n_cand > 1) {
        long fewest = count_pieces(tr, &srv->models[best]);
        for (int c = 1; c < n_cand; c++) {
            long p = count_pieces(tr, &srv->models[cand[c]]);
            if (p < fewest) {
                fewest = p;
                best = cand[c];
            }
        }
        tr->confidence = round(1000.0 / n_cand) / 10;
    }
    tr->mi = best;
    tr->m = &srv->models[best];
    return 0;
}

// --- building units --------------------------------------------------------------------------

typedef struct fits_ctx {
    const moa_tokenizer *tok;
    int limit;                  // source tokens (eos excluded) a unit may have
} fits_ctx;

static int fits(void *p, const char *s, size_t n) {
    fits_ctx *c = p;
    int *ids = NULL, len = 0;
    if (moa_tokenizer_encode(c->tok, s, n, 0, &ids, &len, NULL, 0) != 0) return 1;
    free(ids);
    return len <= c->limit;
}

// Cache key: model, options, the text settings (sentence splitting and
// protection change what a unit is; protected units carry attention), then
// the source ids (a function of the text).
static size_t cache_key(const moa_tr *tr, const moa_unit *u, char *buf, size_t cap,
                        char **heap) {
    size_t head = strlen(tr->m->key) + 1 + strlen(tr->optkey) + 1 + 8 + 24;
    size_t need = head + (size_t)u->src_len * sizeof(int);
    char *k = need <= cap ? buf : (*heap = malloc(need));
    if (!k) return 0;
    int w = snprintf(k, head, "%s\x1f%s\x1fs%dp%da%d\x1f%llu", tr->m->key, tr->optkey,
                     tr->split, tr->protect, u->opts.attention,
                     tr->sampling ? (unsigned long long)u->opts.seed : 0ull);
    size_t off = (size_t)w + 1;
    k[off - 1] = '\x1f';
    if (u->src_len) memcpy(k + off, u->src, (size_t)u->src_len * sizeof(int));
    return off + (size_t)u->src_len * sizeof(int);
}

static int add_unit(moa_tr *tr, int *cap) {
    if (tr->n_units == *cap) {
        int nc = *cap ? 2 * *cap : 8;
        moa_unit *u = realloc(tr->units, (size_t)nc * sizeof *u);
        if (!u) return -1;
        tr->units = u;
        unit_x *x = realloc(tr->ux, (size_t)nc * sizeof *x);
        if (!x) return -1;
        tr->ux = x;
        *cap = nc;
    }
    memset(&tr->units[tr->n_units], 0, sizeof tr->units[0]);
    memset(&tr->ux[tr->n_units], 0, sizeof tr->ux[0]);
    tr->ux[tr->n_units].prot.accel = SIZE_MAX;
    tr->n_units++;
    return 0;
}

// Attention is asked for only up to this many source tokens (split_tokens'
// default): its memory grows with source × target tokens × layers × beam,
// ~4 MB at 200 tokens and beam 4. Longer sentences put dropped items back
// by their relative position.
#define ATTN_MAX_TOKENS 200

// One sentence [off, off+len) of text t becomes a unit: protected (ph: the
// items of its stretch; NULL: not protected), tokenized. Returns 1 (a unit),
// 0 (nothing the model would see or could change: keep it verbatim), -1
// (out of memory) or -2 (a client error in err).
static int make_unit(moa_tr *tr, int t, size_t off, size_t len, char attr, const moa_phs *ph,
                     int *cap, char *err, size_t errlen) {
    const moa_srv_model *md = tr->m;
    const moa_config *cfg = md->cfg;
    const char *text = tr->texts[t];
    moa_prot prot;
    memset(&prot, 0, sizeof prot);
    const char *src = text + off;
    size_t sn = len;
    if (ph) {
        if (moa_protect_unit(md->pv, text, off, len, ph, tr->html, attr, &prot)) return -1;
        if (!moa_protect_has_words(&prot)) {  // "%s: %d", "&#169;": nothing to translate
            moa_prot_free(&prot);
            return 0;
        }
        src = prot.masked;
        sn = prot.masked_len;
    }
    int *ids = NULL, n = 0;
    char terr[256];
    int rc = moa_tokenizer_encode(md->tok, src, sn, 0, &ids, &n, terr, sizeof terr);
    if (rc != 0 || n == 0 || n + 1 > cfg->max_positions) {
        free(ids);
        moa_prot_free(&prot);
        if (rc == MOA_ENOMEM) return -1;
        if (rc != 0) {
            snprintf(err, errlen, "text %d: %s", t, terr);
            return -2;
        }
        if (n == 0) return 0;  // nothing the model would see: keep it as it is
        snprintf(err, errlen, "text %d: a piece of %d tokens could not be split below the "
                 "model's limit of %d", t, n + 1, cfg->max_positions);
        return -2;
    }
    if (add_unit(tr, cap)) {
        free(ids);
        moa_prot_free(&prot);
        return -1;
    }
    moa_unit *u = &tr->units[tr->n_units - 1];
    unit_x *x = &tr->ux[tr->n_units - 1];
    u->src = ids;
    u->src_len = n;
    u->opts = tr->opts;
    // spec §6: sentence i of a request samples with seed + i
    if (tr->sampling) u->opts.seed = tr->opts.seed + (uint64_t)(tr->n_units - 1);
    u->opts.trace = tr->want_trace;   // the scheduler traces for /heads itself
    u->model = tr->mi;
    u->state = MOA_UNIT_WAITING;
    x->text = t;
    if (ph) {
        if (moa_protect_locate(&prot, md->tok, ids, n)) {  // ids are the unit's now
            moa_prot_free(&prot);
            return -1;
        }
        u->opts.attention = moa_protect_wants_alignment(&prot) && n <= ATTN_MAX_TOKENS;
        x->prot = prot;
    }
    return 1;
}

// HTML: the title/alt values of the unit's inline tags become units of
// their own once every text's units are made.
static int queue_attrs(moa_tr *tr, int ui) {
    const moa_prot *p = &tr->ux[ui].prot;
    for (int i = 0; i < p->n_items; i++) {
        const moa_prot_item *it = &p->items[i];
        for (int h = it->ph0; h < it->ph0 + it->n_ph; h++) {
            const moa_ph *ph = &p->ph[h];
            if (ph->kind != MOA_PH_TAG || (ph->tag != MOA_TAG_OPEN && ph->tag != MOA_TAG_EMPTY))
                continue;
            moa_seg av[4];
            int na = moa_html_attr_values(p->text, ph->off, ph->off + ph->len, av, 4);
            for (int k = 0; k < na; k++) {
                if (tr->n_pend == tr->cap_pend) {
                    int nc = tr->cap_pend ? 2 * tr->cap_pend : 8;
                    pending_attr *q = realloc(tr->pend, (size_t)nc * sizeof *q);
                    if (!q) return -1;
                    tr->pend = q;
                    tr->cap_pend = nc;
                }
                tr->pend[tr->n_pend++] = (pending_attr){ui, i, tr->ux[ui].text, av[k].off,
                                                        av[k].len, av[k].attr};
            }
        }
    }
    return 0;
}

// A translatable stretch of text t (a line, a block's text, an attribute
// value): its items found, cut into sentences, each sentence a unit (or
// verbatim when there is nothing to translate). Appends to segs.
static int stretch_units(moa_tr *tr, int t, const moa_seg *g, fits_ctx *fc, int *cap,
                         moa_segs *segs, char *err, size_t errlen) {
    const char *text = tr->texts[t];
    moa_phs ph = {0};
    moa_segs sub = {0};
    moa_span *spans = NULL;
    int status = 500;
    // Items are found even without protection: no sentence is cut inside a
    // placeholder. HTML markup is always protected (format html means it).
    int protect = tr->protect || tr->html;
    if (moa_protect_scan(text, g->off, g->len, tr->html, tr->protect && !tr->html && !g->attr,
                         &ph))
        goto done;
    if (!tr->protect && tr->html) {
        int w = 0;
        for (int i = 0; i < ph.n; i++)
            if (ph.v[i].kind == MOA_PH_TAG || ph.v[i].kind == MOA_PH_ENTITY) ph.v[w++] = ph.v[i];
        ph.n = w;
    }
    int ns = moa_phs_spans(&ph, &spans);
    if (ns < 0 || moa_split(text, g->off, g->len, spans, ns, tr->split, fits, fc, &sub)) goto done;
    for (int i = 0; i < sub.n; i++) {
        const moa_seg *s = &sub.v[i];
        size_t off = s->off, len = s->len, end = s->off + s->len;
        if (s->translate && protect) moa_protect_trim(text, &off, &len, &ph);
        if (!s->translate) len = 0;
        if (moa_segs_push(segs, s->off, (len ? off : end) - s->off, 0)) goto done;
        if (!len) continue;
        int r = make_unit(tr, t, off, len, g->attr, protect ? &ph : NULL, cap, err, errlen);
        if (r == -2) {
            status = 400;
            goto done;
        }
        if (r < 0 || moa_segs_push(segs, off, len, r == 1)) goto done;
        if (r == 1) {
            segs->v[segs->n - 1].attr = g->attr;
            if (tr->html && queue_attrs(tr, tr->n_units - 1)) goto done;
        }
        if (moa_segs_push(segs, off + len, end - off - len, 0)) goto done;
    }
    status = 0;
done:
    if (status == 500) snprintf(err, errlen, "out of memory");
    free(spans);
    moa_segs_free(&sub);
    moa_phs_free(&ph);
    return status;
}

// Segments every text, cuts it into sentences, protects and tokenizes them,
// looks units up in the cache. Returns 0 or an HTTP status with err.
static int build_units(moa_tr *tr, char *err, size_t errlen) {
    moa_server *srv = tr->srv;
    const moa_srv_model *md = tr->m;
    const moa_config *cfg = md->cfg;
    fits_ctx fc = {md->tok, srv->conf.split_tokens};
    if (fc.limit > cfg->max_positions - 1) fc.limit = cfg->max_positions - 1;
    int cap = 0, status;
    for (int t = 0; t < tr->n_texts; t++) {
        const char *text = tr->texts[t];
        moa_segs raw = {0};
        if (moa_text_segment(text, tr->lens[t], tr->html, &raw) != 0) goto fail_oom;
        moa_segs *segs = &tr->segs[t];
        tr->first_unit[t] = tr->n_units;
        for (int i = 0; i < raw.n; i++) {
            const moa_seg *g = &raw.v[i];
            status = g->translate ? stretch_units(tr, t, g, &fc, &cap, segs, err, errlen)
                                  : moa_segs_push(segs, g->off, g->len, 0) ? 500 : 0;
            if (status) {
                moa_segs_free(&raw);
                if (status == 500) goto fail_oom;
                return status;
            }
        }
        moa_segs_free(&raw);
    }
    // title/alt values inside inline tags: units of their own, after every
    // text's own units (the answer walks those in segment order)
    for (int k = 0; k < tr->n_pend; k++) {
        pending_attr pa = tr->pend[k];
        moa_phs ph = {0};
        if (moa_protect_scan(tr->texts[pa.text], pa.off, pa.len, 1, 0, &ph)) goto fail_oom;
        int r = make_unit(tr, pa.text, pa.off, pa.len, pa.quote, &ph, &cap, err, errlen);
        moa_phs_free(&ph);
        if (r == -2) return 400;
        if (r < 0) goto fail_oom;
        if (r == 0) continue;  // nothing to translate: the value stays
        unit_x *x = &tr->ux[pa.parent];
        attr_ref *a = realloc(x->attrs, (size_t)(x->n_attrs + 1) * sizeof *a);
        if (!a) goto fail_oom;
        x->attrs = a;
        x->attrs[x->n_attrs++] = (attr_ref){pa.item, pa.off, pa.len, tr->n_units - 1};
    }
    // Cache look-ups (after the units array stopped moving).
    for (int i = 0; i < tr->n_units; i++) {
        moa_unit *u = &tr->units[i];
        char kb[1024], *heap = NULL;
        size_t kn = tr->use_cache ? cache_key(tr, u, kb, sizeof kb, &heap) : 0;
        if (kn && moa_cache_get(srv->cache, heap ? heap : kb, kn, &u->res)) {
            u->state = MOA_UNIT_DONE;
            u->from_cache = 1;
        } else {
            tr->n_waiting++;
        }
        free(heap);
    }
    tr->job.units = tr->units;
    tr->job.n_units = tr->n_units;
    return 0;
fail_oom:
    snprintf(err, errlen, "out of memory");
    return 500;
}

// --- parsing --------------------------------------------------------------------------------

static int ctype_is(const char *ct, const char *want) {
    size_t n = strlen(want);
    while (ct && isspace((unsigned char)*ct)) ct++;
    return ct && !strncasecmp(ct, want, n) &&
           (ct[n] == 0 || ct[n] == ';' || isspace((unsigned char)ct[n]));
}

// Options of spec §6 and LibreTranslate's, checked against the model.
static int parse_options(moa_tr *tr, fields *f, char *err, size_t errlen) {
    moa_server *srv = tr->srv;
    const moa_srv_model *md = tr->m;
    const moa_config *cfg = md->cfg;
    moa_search_opts *o = &tr->opts;
    moa_search_opts_default(o);
    int beam_given, nhyp_given, seed_given, r;
    if ((beam_given = get_int(f, "beam_size", 1, 16, &o->beam_size)) < 0) return 400;
    if ((nhyp_given = get_int(f, "num_hypotheses", 1, 16, &o->num_hypotheses)) < 0) return 400;
    if (get_float(f, "length_penalty", &o->length_penalty) < 0) return 400;
    if (get_int(f, "max_length", 0, 1 << 30, &o->max_length) < 0) return 400;
    if (get_int(f, "min_length", 0, 1 << 30, &o->min_length) < 0) return 400;
    if (get_bool(f, "no_unk", &o->no_unk) < 0) return 400;
    if (get_int(f, "sampling_topk", 0, 1 << 30, &o->sampling_topk) < 0) return 400;
    if (get_float(f, "sampling_topp", &o->sampling_topp) < 0) return 400;
    if (get_float(f, "sampling_temperature", &o->sampling_temperature) < 0) return 400;
    if ((seed_given = get_seed(f, &o->seed)) < 0) return 400;
    if (get_bool(f, "return_scores", &tr->want_scores) < 0) return 400;
    if (get_bool(f, "trace", &tr->want_trace) < 0) return 400;
    if ((r = get_int(f, "alternatives", 0, 15, &tr->alternatives)) < 0) return 400;

    // The engine's defaults, as the CLI applies them: top-p alone samples from
    // the whole vocabulary, beam 1 when sampling, a random seed.
    moa_search_opts_normalise(o, (beam_given ? MOA_OPT_GIVEN_BEAM : 0) |
                                     (seed_given ? MOA_OPT_GIVEN_SEED : 0), cfg);
    tr->sampling = moa_search_opts_sampling(o);
    if (tr->alternatives > 0) {
        int want = tr->alternatives + 1;
        if (!nhyp_given || o->num_hypotheses < want) o->num_hypotheses = want;
        if (!beam_given && o->beam_size < want) o->beam_size = want;
        if (o->num_hypotheses > o->beam_size) {
            snprintf(err, errlen, "alternatives %d needs beam_size >= %d, got %d",
                     tr->alternatives, want, o->beam_size);
            return 400;
        }
    }
    if (o->max_length > 0 && o->min_length > o->max_length) {
        snprintf(err, errlen, "min_length %d must not exceed max_length %d", o->min_length,
                 o->max_length);
        return 400;
    }
    char eerr[256];
    if (moa_search_opts_check(o, cfg, eerr, sizeof eerr) != 0) {
        snprintf(err, errlen, "%s", eerr);
        return 400;
    }
    // Traces and unseeded samples are never served from the cache.
    tr->use_cache = srv->cache && !tr->want_trace && !(tr->sampling && !seed_given);
    snprintf(tr->optkey, sizeof tr->optkey, "%d,%d,%.9g,%d,%d,%d,%d,%.9g,%.9g", o->beam_size,
             o->num_hypotheses, (double)o->length_penalty, o->max_length, o->min_length,
             o->no_unk, o->sampling_topk, (double)o->sampling_topp,
             (double)o->sampling_temperature);
    return 0;
}

int moa_api_translate_parse(moa_server *srv, const char *ctype, const char *auth,
                            const char *body, size_t n, moa_tr **out, char *err,
                            size_t errlen) {
    *out = NULL;
    int form = ctype_is(ctype, "application/x-www-form-urlencoded");
    int json = !ctype || !*ctype || ctype_is(ctype, "application/json") ||
               (ctype && strstr(ctype, "+json"));
    if (!form && !json) {
        snprintf(err, errlen, "unsupported Content-Type '%.100s': send application/json or "
                 "application/x-www-form-urlencoded", ctype);
        return 415;
    }
    cJSON *root = NULL;
    if (form) {
        root = parse_form(body, n, err, errlen);
        if (!root) return strcmp(err, "out of memory") ? 400 : 500;
    } else {
        const char *end = NULL;
        cjson_oom = 0;
        root = cJSON_ParseWithLengthOpts(body, n, &end, 0);
        if (!root && cjson_oom) {
            snprintf(err, errlen, "out of memory");
            return 500;
        }
        if (!root) {
            snprintf(err, errlen, "malformed JSON near byte %ld",
                     end ? (long)(end - body) : 0L);
            return 400;
        }
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            snprintf(err, errlen, "the body must be a JSON object");
            return 400;
        }
    }
    int status = 400;
    moa_tr *tr = calloc(1, sizeof *tr);
    if (!tr) {
        snprintf(err, errlen, "out of memory");
        status = 500;
        goto done;
    }
    tr->srv = srv;
    fields f = {root, form, err, errlen};

    // API key: header or field
    const char *key = NULL;
    if (get_string(&f, "api_key", &key) < 0) goto done;
    if (!key && auth && !strncasecmp(auth, "Bearer ", 7)) key = auth + 7;
    if (!moa_api_key_ok(srv, key)) {
        snprintf(err, errlen, key && *key ? "invalid API key" : "an API key is required "
                 "(api_key field or Authorization: Bearer)");
        status = 403;
        goto done;
    }

    // texts
    cJSON *txt = field(&f, "text");
    if (!txt) txt = field(&f, "q");
    if (!txt) {
        snprintf(err, errlen, "missing text (or q): a string or an array of strings");
        goto done;
    }
    if (cJSON_IsString(txt)) {
        tr->n_texts = 1;
    } else if (cJSON_IsArray(txt)) {
        tr->is_array = 1;
        tr->n_texts = cJSON_GetArraySize(txt);
        if (tr->n_texts == 0) {
            snprintf(err, errlen, "text is an empty array");
            goto done;
        }
    } else {
        snprintf(err, errlen, "text must be a string or an array of strings");
        goto done;
    }
    if (tr->n_texts > srv->conf.max_texts) {
        snprintf(err, errlen, "too many texts: %d (max_texts is %d)", tr->n_texts,
                 srv->conf.max_texts);
        goto done;
    }
    tr->texts = calloc((size_t)tr->n_texts, sizeof *tr->texts);
    tr->lens = calloc((size_t)tr->n_texts, sizeof *tr->lens);
    tr->segs = calloc((size_t)tr->n_texts, sizeof *tr->segs);
    tr->first_unit = calloc((size_t)tr->n_texts, sizeof *tr->first_unit);
    if (!tr->texts || !tr->lens || !tr->segs || !tr->first_unit) {
        snprintf(err, errlen, "out of memory");
        status = 500;
        goto done;
    }
    for (int i = 0; i < tr->n_texts; i++) {
        cJSON *it = tr->is_array ? cJSON_GetArrayItem(txt, i) : txt;
        if (!cJSON_IsString(it)) {
            snprintf(err, errlen, "text[%d] must be a string", i);
            goto done;
        }
        size_t len = strlen(it->valuestring), bad = 0;
        if (len == 0) {
            snprintf(err, errlen, tr->is_array ? "text[%d] is empty" : "text is empty", i);
            goto done;
        }
        long chars = moa_utf8_count(it->valuestring, len, &bad);
        if (chars < 0) {
            if (tr->is_array) snprintf(err, errlen, "text[%d] is not valid UTF-8 (byte %zu)", i, bad);
            else snprintf(err, errlen, "text is not valid UTF-8 (byte %zu)", bad);
            goto done;
        }
        if (chars > srv->conf.max_chars) {
            if (tr->is_array)
                snprintf(err, errlen, "text[%d] has %ld characters (max_chars is %d)", i,
                         chars, srv->conf.max_chars);
            else
                snprintf(err, errlen, "text has %ld characters (max_chars is %d)", chars,
                         srv->conf.max_chars);
            goto done;
        }
        if (!(tr->texts[i] = strdup(it->valuestring))) {
            snprintf(err, errlen, "out of memory");
            status = 500;
            goto done;
        }
        tr->lens[i] = len;
    }

    // languages and format
    const char *src = NULL, *tgt = NULL, *fmt = NULL;
    if (get_string(&f, "source", &src) < 0 || get_string(&f, "target", &tgt) < 0 ||
        get_string(&f, "format", &fmt) < 0)
        goto done;
    if (src && !strcasecmp(src, "auto")) tr->auto_source = 1;
    if ((status = route(tr, tr->auto_source ? NULL : src, tgt, err, errlen)) != 0) goto done;
    status = 400;
    if (fmt && !strcmp(fmt, "html")) tr->html = 1;
    else if (fmt && strcmp(fmt, "text")) {
        snprintf(err, errlen, "format must be \"text\" or \"html\"");
        goto done;
    }
    tr->split = srv->conf.split_sentences;
    tr->protect = srv->conf.protect_placeholders;
    if (get_bool(&f, "split_sentences", &tr->split) < 0 ||
        get_bool(&f, "protect_placeholders", &tr->protect) < 0)
        goto done;
    if ((status = parse_options(tr, &f, err, errlen)) != 0) goto done;
    status = build_units(tr, err, errlen);
done:
    cJSON_Delete(root);
    if (status) moa_tr_free(tr);
    else *out = tr;
    return status;
}

// --- the answer -------------------------------------------------------------------------------

static cJSON *num_or_null(double v) {
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static cJSON *pieces(const moa_tokenizer *tok, const int *ids, int n, int eos) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < n; i++) {
        const char *p = moa_tokenizer_piece(tok, ids[i]);
        if (put(arr, NULL, cJSON_CreateString(p ? p : "?"))) goto fail;
    }
    if (arr && eos >= 0) {
        const char *p = moa_tokenizer_piece(tok, eos);
        if (put(arr, NULL, cJSON_CreateString(p ? p : "</s>"))) goto fail;
    }
    return arr;
fail:
    cJSON_Delete(arr);
    return NULL;
}

// NULL: out of memory.
static cJSON *unit_trace(const moa_srv_model *md, const moa_unit *u) {
    const moa_hypothesis *h = &u->res.hyps[0];
    const moa_trace *t = h->trace;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (put(o, "source_pieces", pieces(md->tok, u->src, u->src_len, md->cfg->eos_id)) ||
        put(o, "target_pieces", pieces(md->tok, h->tokens, h->n_tokens, -1)))
        goto fail;
    if (!t) return o;
    // the expert count, which the picks alone do not tell (an expert may go unpicked)
    if (!cJSON_AddNumberToObject(o, "num_experts", md->cfg->num_experts)) goto fail;
    if (moa_trace_json(t, o)) goto fail;  // the engine's layout, as the CLI's --trace
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static int decode_into(const moa_srv_model *md, const moa_hypothesis *h, moa_buf *b, char *err,
                       size_t errlen) {
    char *s = NULL;
    if (moa_tokenizer_decode(md->tok, h->tokens, h->n_tokens, &s, err, errlen) != 0) return -1;
    moa_buf_puts(b, s);
    free(s);
    return 0;
}

// A hypothesis's cross-attention as one n_tokens × cols alignment matrix
// (malloc'ed; NULL when there is none): the mean of the decoder layers above
// the first. The first layer's attention is a poor alignment: put back by it,
// a placeholder deleted from the default model's output returns to its place
// 32% of the time (no better than by relative position, 33%), against 78%
// with the layers above it and 77% with all three (bench/align_eval.c,
// bench/RESULTS.md).
static float *alignment(const moa_hypothesis *h) {
    if (!h->attention || h->attention_layers < 1) return NULL;
    size_t n = (size_t)h->n_tokens * (size_t)h->attention_cols;
    float *a = calloc(n ? n : 1, sizeof *a);
    if (!a) return NULL;
    int l0 = h->attention_layers > 1 ? 1 : 0;
    float w = 1.0f / (float)(h->attention_layers - l0);
    for (int l = l0; l < h->attention_layers; l++)
        for (size_t i = 0; i < n; i++) a[i] += h->attention[(size_t)l * n + i] * w;
    return a;
}

// Appends unit ui's translation (hypothesis hi, else its best) to out: the
// decoded ids, or for a protected unit the restored text, with its inline
// tags' title/alt values translated. Repairs go to warn (may be NULL).
static int unit_output(moa_server *srv, const moa_tr *tr, int ui, int hi, moa_buf *out,
                       moa_buf *warn, char *err, size_t errlen) {
    const moa_unit *un = &tr->units[ui];
    const unit_x *x = &tr->ux[ui];
    const moa_hypothesis *h = &un->res.hyps[hi < un->res.n_hyps ? hi : 0];
    const moa_srv_model *md = tr->m;
    if (!x->prot.masked) return decode_into(md, h, out, err, errlen);
    int rc = -1, ni = x->prot.n_items;
    const char **itext = NULL;
    size_t *ilen = NULL;
    moa_buf *ib = NULL;
    if (x->n_attrs) {
        itext = calloc((size_t)ni, sizeof *itext);
        ilen = calloc((size_t)ni, sizeof *ilen);
        ib = calloc((size_t)ni, sizeof *ib);
        if (!itext || !ilen || !ib) goto done;
        for (int i = 0; i < ni; i++) {
            const moa_prot_item *it = &x->prot.items[i];
            size_t at = it->off;
            int any = 0;
            for (int k = 0; k < x->n_attrs; k++) {  // attrs are in text order
                const attr_ref *a = &x->attrs[k];
                if (a->item != i) continue;
                moa_buf_put(&ib[i], tr->texts[x->text] + at, a->off - at);
                if (unit_output(srv, tr, a->unit, 0, &ib[i], NULL, err, errlen)) goto done;
                at = a->off + a->len;
                any = 1;
            }
            if (!any) continue;
            moa_buf_put(&ib[i], tr->texts[x->text] + at, it->off + it->len - at);
            if (ib[i].oom) goto done;
            itext[i] = ib[i].s;
            ilen[i] = ib[i].n;
        }
    }
    float *attn = alignment(h);
    if (!attn && h->attention && h->attention_layers >= 1) {  // out of memory: not a
        snprintf(err, errlen, "out of memory");                // worse answer, none
        goto done;
    }
    rc = moa_protect_restore(&x->prot, md->pv, md->tok, h->tokens, h->n_tokens, attn,
                             h->attention_cols, itext, ilen, out, warn);
    free(attn);
    if (rc) snprintf(err, errlen, "out of memory putting placeholders back");
done:
    for (int i = 0; ib && i < ni; i++) free(ib[i].s);
    free(ib);
    free(itext);
    free(ilen);
    return rc;
}

// {"warnings": [...]} lines of buf on o, when there are any. 0, or -1: out
// of memory.
static int add_warnings(cJSON *o, const moa_buf *w) {
    if (!w->n) return 0;
    cJSON *arr = cJSON_AddArrayToObject(o, "warnings");
    if (!arr) return -1;
    for (const char *s = w->s; *s;) {
        const char *nl = strchr(s, '\n');
        size_t n = nl ? (size_t)(nl - s) : strlen(s);
        char *line = strndup(s, n);
        int lost = !line || put(arr, NULL, cJSON_CreateString(line));
        free(line);
        if (lost) return -1;
        s += n + (nl != NULL);
    }
    return 0;
}

// Every cJSON call is checked: out of memory gives NULL (500), never an
// answer with a field missing.
cJSON *moa_api_translate_answer(moa_server *srv, moa_tr *tr, double t_start, char *err,
                                size_t errlen) {
    const moa_srv_model *md = tr->m;
    int n_alt = tr->opts.num_hypotheses - 1;
    cJSON *root = cJSON_CreateObject();
    moa_buf *alts = calloc((size_t)(n_alt > 0 ? n_alt : 1), sizeof *alts);
    moa_buf out = {0}, warn = {0};
    // An array request's lists, built aside and attached to root at the end
    // (cJSON keeps the order of insertion); a failure frees what is left.
    cJSON *tt = NULL, *top_alts = NULL, *detected = NULL, *traces = NULL;
    if (!root || !alts) goto fail_oom;
    cJSON *trs = cJSON_AddArrayToObject(root, "translations");
    if (!trs) goto fail_oom;
    if (tr->is_array && !(tt = cJSON_CreateArray())) goto fail_oom;
    if (tr->alternatives > 0 && tr->is_array && !(top_alts = cJSON_CreateArray())) goto fail_oom;
    if (tr->auto_source && tr->is_array && !(detected = cJSON_CreateArray())) goto fail_oom;
    memset(&tr->counts, 0, sizeof tr->counts);
    tr->counts.texts = tr->n_texts;
    for (int i = 0; i < tr->n_units; i++) {
        moa_unit *un = &tr->units[i];
        if (un->state != MOA_UNIT_DONE) {
            snprintf(err, errlen, "a sentence came back without a translation");
            goto fail;
        }
        if (un->res.n_hyps < 1) {  // moa_model.h: the model's numbers overflowed
            snprintf(err, errlen, "the model gave no usable scores for sentence %d "
                     "(NaN or infinite values: its weights overflow)", i + 1);
            goto fail;
        }
        tr->counts.sentences++;
        tr->counts.src_tokens += un->src_len + 1;
        tr->counts.tgt_tokens += un->res.hyps[0].n_tokens;
        if (!un->from_cache && tr->use_cache) {
            char kb[1024], *heap = NULL;
            size_t kn = cache_key(tr, un, kb, sizeof kb, &heap);
            if (kn) moa_cache_put(srv->cache, heap ? heap : kb, kn, &un->res);
            free(heap);
        }
    }
    for (int t = 0; t < tr->n_texts; t++) {
        const char *text = tr->texts[t];
        const moa_segs *segs = &tr->segs[t];
        out.n = 0;
        moa_buf_puts(&out, "");
        warn.n = 0;
        moa_buf_puts(&warn, "");
        for (int a = 0; a < n_alt; a++) {
            alts[a].n = 0;
            moa_buf_puts(&alts[a], "");
        }
        double lp = 0;
        long ntok = 0;
        if (tr->want_trace && !(traces = cJSON_CreateArray())) goto fail_oom;
        int u = tr->first_unit[t];
        for (int i = 0; i < segs->n; i++) {
            const moa_seg *g = &segs->v[i];
            if (!g->translate) {
                moa_buf_put(&out, text + g->off, g->len);
                for (int a = 0; a < n_alt; a++) moa_buf_put(&alts[a], text + g->off, g->len);
                continue;
            }
            int ui = u++;
            moa_unit *un = &tr->units[ui];
            const moa_hypothesis *h = &un->res.hyps[0];
            if (unit_output(srv, tr, ui, 0, &out, &warn, err, errlen)) goto fail;
            for (int a = 0; a < n_alt; a++)
                if (unit_output(srv, tr, ui, a + 1, &alts[a], NULL, err, errlen)) goto fail;
            lp += h->log_prob;
            ntok += h->n_tokens;
            if (traces && put(traces, NULL, unit_trace(tr->m, un))) goto fail_oom;
        }
        if (out.oom || warn.oom) goto fail_oom;
        cJSON *o = cJSON_CreateObject();
        if (put(trs, NULL, o) || !cJSON_AddStringToObject(o, "text", out.s)) goto fail_oom;
        if (tr->want_scores &&
            put(o, "score", num_or_null(ntok ? lp / pow((double)ntok, tr->opts.length_penalty)
                                             : 0.0)))
            goto fail_oom;
        cJSON *ta = NULL;
        if (n_alt > 0) {
            if (!(ta = cJSON_AddArrayToObject(o, "alternatives"))) goto fail_oom;
            for (int a = 0; a < n_alt; a++)
                if (alts[a].oom || put(ta, NULL, cJSON_CreateString(alts[a].s))) goto fail_oom;
        }
        if ((traces && put_own(o, "trace", &traces)) || add_warnings(o, &warn)) goto fail_oom;
        if (tt ? put(tt, NULL, cJSON_CreateString(out.s))
               : !cJSON_AddStringToObject(root, "translatedText", out.s))
            goto fail_oom;
        if (tr->alternatives > 0) {
            cJSON *copy = ta ? cJSON_Duplicate(ta, 1) : cJSON_CreateArray();
            if (top_alts ? put(top_alts, NULL, copy) : put(root, "alternatives", copy))
                goto fail_oom;
        }
        if (tr->auto_source) {
            cJSON *d = cJSON_CreateObject();
            if (!d || !cJSON_AddNumberToObject(d, "confidence", tr->confidence) ||
                !cJSON_AddStringToObject(d, "language", md->cfg->source_lang)) {
                cJSON_Delete(d);
                goto fail_oom;
            }
            if (detected ? put(detected, NULL, d) : put(root, "detectedLanguage", d))
                goto fail_oom;
        }
    }
    if ((tt && put_own(root, "translatedText", &tt)) ||
        (top_alts && put_own(root, "alternatives", &top_alts)) ||
        (detected && put_own(root, "detectedLanguage", &detected)))
        goto fail_oom;
    if (!cJSON_AddStringToObject(root, "model", md->name)) goto fail_oom;
    if (tr->sampling && !cJSON_AddNumberToObject(root, "seed", (double)tr->opts.seed))
        goto fail_oom;
    cJSON *tm = cJSON_AddObjectToObject(root, "timing");
    const moa_job *j = &tr->job;
    double q = j->t_first_admit > j->t_submit ? j->t_first_admit - j->t_submit : 0;
    double c = j->t_done > j->t_first_admit ? j->t_done - j->t_first_admit : 0;
    if (!tm || !cJSON_AddNumberToObject(tm, "queue_ms", round(q * 1e4) / 10) ||
        !cJSON_AddNumberToObject(tm, "compute_ms", round(c * 1e4) / 10) ||
        !cJSON_AddNumberToObject(tm, "total_ms", round((moa_sched_now() - t_start) * 1e4) / 10))
        goto fail_oom;
    moa_metrics_translate(srv->metrics, q, c, tr->counts.sentences, tr->counts.src_tokens,
                          tr->counts.tgt_tokens);
    atomic_fetch_add(&srv->models[tr->mi].requests, 1);
    atomic_fetch_add(&srv->models[tr->mi].sentences, tr->counts.sentences);
    for (int a = 0; a < n_alt; a++) free(alts[a].s);
    free(alts);
    free(out.s);
    free(warn.s);
    return root;
fail_oom:
    snprintf(err, errlen, "out of memory");
fail:
    cJSON_Delete(traces);
    cJSON_Delete(tt);
    cJSON_Delete(top_alts);
    cJSON_Delete(detected);
    for (int a = 0; alts && a < n_alt; a++) free(alts[a].s);
    free(alts);
    free(out.s);
    free(warn.s);
    cJSON_Delete(root);
    return NULL;
}
