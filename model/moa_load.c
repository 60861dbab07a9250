// moa_load.c — loads a model directory (spec §3): config.json, model.safetensors,
// the sinusoidal position table (spec §2, §5), f16/bf16 widening.
//
// model.safetensors is mapped once, read-only. F32 tensors that sit 4-byte
// aligned in the map are used in place as const views; misaligned F32 and all
// F16/BF16 tensors are copied or widened once into owned 64-byte aligned
// buffers (m->owned). Every check reports the file and the problem; a failed
// load frees everything it built (moa_model_free copes with a half-built model).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moa_impl.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moa_load.c uses little-endian safetensors data in place"
#endif

#define CONFIG_MAX_BYTES ((size_t)16 << 20)    // config.json is a few hundred bytes
#define HEADER_MAX_BYTES ((uint64_t)100 << 20)  // safetensors header
#define TENSOR_MAX_DIMS 8
#define OWNED_ALIGN 64
#define EXACT_INT_MAX 9007199254740992.0  // 2^53: JSON numbers are doubles

// --- errors ------------------------------------------------------------------

__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

// strerror is not thread-safe; the loader is.
static const char *errno_str(int e, char *buf, size_t n) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(e, buf, n);
#else
    if (strerror_r(e, buf, n) != 0) snprintf(buf, n, "error %d", e);
    return buf;
#endif
}

// --- f16 / bf16 ----------------------------------------------------------------

float moa_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        // Zero or subnormal: mant · 2^-24, exact in float32 (a normal there).
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf, NaN keeps its payload
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float moa_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;  // bfloat16 is the top half of a float32
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// --- config.json ---------------------------------------------------------------

typedef struct cfg_ctx {
    const cJSON *root;
    const char *path;
    char *err;
    size_t errlen;
} cfg_ctx;

// Each getter: 0 (value or default in *out) or MOA_EFORMAT with a message.
static int cfg_int(const cfg_ctx *c, const char *key, int required, int def,
                   int *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!it) {
        if (required)
            return fail(c->err, c->errlen, MOA_EFORMAT,
                        "%s: missing key \"%s\"", c->path, key);
        *out = def;
        return 0;
    }
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || !(v >= INT_MIN && v <= INT_MAX) ||
        v != (double)(long long)v)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: key \"%s\" must be an integer", c->path, key);
    *out = (int)v;
    return 0;
}

static int cfg_bool(const cfg_ctx *c, const char *key, int def, int *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!it) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: key \"%s\" must be true or false", c->path, key);
    *out = cJSON_IsTrue(it) ? 1 : 0;
    return 0;
}

// *out points into the cJSON tree (or is def).
static int cfg_str(const cfg_ctx *c, const char *key, int required,
                   const char *def, const char **out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!it) {
        if (required)
            return fail(c->err, c->errlen, MOA_EFORMAT,
                        "%s: missing key \"%s\"", c->path, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsString(it) || !it->valuestring)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: key \"%s\" must be a string", c->path, key);
    *out = it->valuestring;
    return 0;
}

static int cfg_range(const cfg_ctx *c, const char *key, int v, int lo, int hi) {
    if (v < lo || v > hi)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: %s = %d is out of range [%d, %d]", c->path, key, v,
                    lo, hi);
    return 0;
}

// Copies s into dst (size n), cutting at a UTF-8 character boundary.
static void copy_trunc(char *dst, size_t n, const char *s) {
    size_t len = strlen(s);
    if (len >= n) {
        len = n - 1;
        // Back off over continuation bytes so no character is cut in half.
        size_t k = len;
        while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80) k--;
        len = k;
    }
    memcpy(dst, s, len);
    dst[len] = '\0';
}

static int json_error_pos(const char *buf, size_t len, const char *at,
                          int *line, int *col) {
    *line = 1;
    *col = 1;
    if (!at || at < buf || at > buf + len) return 0;
    for (const char *p = buf; p < at; p++) {
        if (*p == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
    return 1;
}

// Parses a JSON text of len bytes (need not be NUL-terminated) that must be
// one value followed only by whitespace. Returns NULL with a message.
static cJSON *parse_json(const char *text, size_t len, const char *path,
                         const char *what, char *err, size_t errlen) {
    // cJSON gets its own NUL-terminated copy: it never reads past the end.
    char *buf = malloc(len + 1);
    if (!buf) {
        fail(err, errlen, MOA_ENOMEM, "%s: out of memory reading the %s", path,
             what);
        return NULL;
    }
    memcpy(buf, text, len);
    buf[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (root) {
        const char *p = end ? end : buf + len;
        while (p < buf + len && (*p == ' ' || *p == '\t' || *p == '\n' ||
                                 *p == '\r'))
            p++;
        if (p < buf + len) {
            cJSON_Delete(root);
            root = NULL;
            end = p;
        }
    }
    if (!root) {
        int line, col;
        if (json_error_pos(buf, len, end, &line, &col))
            fail(err, errlen, MOA_EFORMAT,
                 "%s: %s is not valid JSON (line %d, column %d)", path, what,
                 line, col);
        else
            fail(err, errlen, MOA_EFORMAT, "%s: %s is not valid JSON", path,
                 what);
    }
    free(buf);
    return root;
}

static int config_fill(const cfg_ctx *c, moa_config *cfg) {
    int rc, v = 0;
    const char *s = NULL;

    // Writers always set these; readers accept them missing (spec §5).
    if ((rc = cfg_str(c, "format", 0, NULL, &s))) return rc;
    if (s && strcmp(s, "moa-translation") != 0)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: format \"%.64s\" is not \"moa-translation\"", c->path,
                    s);
    if ((rc = cfg_int(c, "format_version", 0, 1, &v))) return rc;
    if (v != 1)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: format_version %d is not supported (this engine reads "
                    "version 1)",
                    c->path, v);

    if ((rc = cfg_int(c, "d_model", 1, 0, &cfg->d_model))) return rc;
    if ((rc = cfg_range(c, "d_model", cfg->d_model, 2, MOA_MAX_DIM))) return rc;
    if (cfg->d_model % 2)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: d_model = %d must be even (sinusoidal positions)",
                    c->path, cfg->d_model);
    if ((rc = cfg_int(c, "encoder_layers", 1, 0, &cfg->encoder_layers)) ||
        (rc = cfg_range(c, "encoder_layers", cfg->encoder_layers, 1,
                        MOA_MAX_LAYERS)))
        return rc;
    if ((rc = cfg_int(c, "decoder_layers", 1, 0, &cfg->decoder_layers)) ||
        (rc = cfg_range(c, "decoder_layers", cfg->decoder_layers, 1,
                        MOA_MAX_LAYERS)))
        return rc;
    // The FFN is commonly 4·d wide.
    if ((rc = cfg_int(c, "ffn_dim", 1, 0, &cfg->ffn_dim)) ||
        (rc = cfg_range(c, "ffn_dim", cfg->ffn_dim, 1, 4 * MOA_MAX_DIM)))
        return rc;

    if ((rc = cfg_str(c, "activation", 0, "relu", &s))) return rc;
    if (strcmp(s, "relu") == 0)
        cfg->activation = MOA_ACT_RELU;
    else if (strcmp(s, "gelu") == 0)
        cfg->activation = MOA_ACT_GELU;
    else
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: activation \"%.64s\" is not \"relu\" or \"gelu\"",
                    c->path, s);
    if ((rc = cfg_bool(c, "normalize_before", 0, &cfg->normalize_before)))
        return rc;

    if ((rc = cfg_int(c, "num_experts", 1, 0, &cfg->num_experts)) ||
        (rc = cfg_range(c, "num_experts", cfg->num_experts, 1,
                        MOA_MAX_EXPERTS)))
        return rc;
    if ((rc = cfg_int(c, "top_k", 1, 0, &cfg->top_k))) return rc;
    if (cfg->top_k < 1 || cfg->top_k > cfg->num_experts)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: top_k = %d is out of range [1, num_experts = %d]",
                    c->path, cfg->top_k, cfg->num_experts);
    if ((rc = cfg_int(c, "head_dim", 1, 0, &cfg->head_dim)) ||
        (rc = cfg_range(c, "head_dim", cfg->head_dim, 1, MOA_MAX_DIM)))
        return rc;
    if ((rc = cfg_bool(c, "attention_bias", 0, &cfg->attention_bias)))
        return rc;

    if ((rc = cfg_int(c, "vocab_size", 1, 0, &cfg->vocab_size)) ||
        (rc = cfg_range(c, "vocab_size", cfg->vocab_size, 4, MOA_MAX_VOCAB)))
        return rc;
    if ((rc = cfg_bool(c, "share_embeddings", 1, &cfg->share_embeddings)) ||
        (rc = cfg_bool(c, "scale_embedding", 1, &cfg->scale_embedding)))
        return rc;
    if ((rc = cfg_int(c, "max_positions", 0, 1024, &cfg->max_positions)) ||
        (rc = cfg_range(c, "max_positions", cfg->max_positions, 3,
                        MOA_MAX_POSITIONS)))
        return rc;

    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(c->root, "layernorm_eps");
    cfg->layernorm_eps = 1e-5f;
    if (eps) {
        if (!cJSON_IsNumber(eps))
            return fail(c->err, c->errlen, MOA_EFORMAT,
                        "%s: key \"layernorm_eps\" must be a number", c->path);
        // Checked after rounding: 1e-50 is positive but becomes 0 as float.
        float e = (float)eps->valuedouble;
        if (!(e > 0.0f) || !isfinite(e))
            return fail(c->err, c->errlen, MOA_EFORMAT,
                        "%s: layernorm_eps = %g must be a positive float32",
                        c->path, eps->valuedouble);
        cfg->layernorm_eps = e;
    }

    // Spec §2: the fairseq dictionary's special ids are fixed.
    static const struct {
        const char *key;
        int want;
        size_t off;
    } specials[] = {
        {"bos_id", 0, offsetof(moa_config, bos_id)},
        {"pad_id", 1, offsetof(moa_config, pad_id)},
        {"eos_id", 2, offsetof(moa_config, eos_id)},
        {"unk_id", 3, offsetof(moa_config, unk_id)},
    };
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        if ((rc = cfg_int(c, specials[i].key, 1, 0, &v))) return rc;
        if (v != specials[i].want)
            return fail(c->err, c->errlen, MOA_EFORMAT,
                        "%s: %s = %d, but special ids are fixed (bos_id 0, "
                        "pad_id 1, eos_id 2, unk_id 3)",
                        c->path, specials[i].key, v);
        memcpy((char *)cfg + specials[i].off, &v, sizeof v);
    }
    if ((rc = cfg_int(c, "decoder_start_id", 1, 0, &cfg->decoder_start_id)))
        return rc;
    if (cfg->decoder_start_id < 0 || cfg->decoder_start_id >= cfg->vocab_size)
        return fail(c->err, c->errlen, MOA_EFORMAT,
                    "%s: decoder_start_id = %d is out of range [0, vocab_size "
                    "= %d)",
                    c->path, cfg->decoder_start_id, cfg->vocab_size);

    if ((rc = cfg_str(c, "source_lang", 1, NULL, &s))) return rc;
    copy_trunc(cfg->source_lang, sizeof cfg->source_lang, s);
    if ((rc = cfg_str(c, "target_lang", 1, NULL, &s))) return rc;
    copy_trunc(cfg->target_lang, sizeof cfg->target_lang, s);
    if ((rc = cfg_str(c, "name", 0, "", &s))) return rc;
    copy_trunc(cfg->name, sizeof cfg->name, s);
    // "description", "metrics" and unknown keys are not read.
    return 0;
}

int moa_config_parse(const char *json, size_t len, const char *path,
                     moa_config *cfg, char *err, size_t errlen) {
    if (!path) path = "config.json";
    if (!json || !cfg)
        return fail(err, errlen, MOA_EINVAL, "%s: no config text", path);
    cJSON *root = parse_json(json, len, path, "config", err, errlen);
    if (!root) return MOA_EFORMAT;
    int rc;
    moa_config tmp;
    memset(&tmp, 0, sizeof tmp);
    if (!cJSON_IsObject(root)) {
        rc = fail(err, errlen, MOA_EFORMAT, "%s: config is not a JSON object",
                  path);
    } else {
        cfg_ctx c = {root, path, err, errlen};
        rc = config_fill(&c, &tmp);
    }
    cJSON_Delete(root);
    if (rc == 0) *cfg = tmp;
    return rc;
}

// --- files -------------------------------------------------------------------

// Opens path read-only and checks it is a regular file; returns the fd
// (>= 0) and its size, or a negative error with the message written.
static int open_regular(const char *path, uint64_t *size, char *err, size_t errlen) {
    char eb[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, MOA_EIO, "%s: cannot open: %s", path,
                    errno_str(errno, eb, sizeof eb));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = fail(err, errlen, MOA_EIO, "%s: cannot stat: %s", path,
                  errno_str(errno, eb, sizeof eb));
    else if (!S_ISREG(st.st_mode))
        rc = fail(err, errlen, MOA_EIO, "%s: not a regular file", path);
    if (rc) {
        close(fd);
        return rc;
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

// Reads a whole regular file of at most max bytes into *out (malloc'd).
static int read_file(const char *path, size_t max, char **out, size_t *len,
                     char *err, size_t errlen) {
    char eb[128];
    uint64_t fsize;
    int fd = open_regular(path, &fsize, err, errlen);
    if (fd < 0) return fd;
    int rc;
    char *buf = NULL;
    if (fsize > max) {
        rc = fail(err, errlen, MOA_EFORMAT,
                  "%s: file is %llu bytes, more than the %zu allowed", path,
                  (unsigned long long)fsize, max);
        goto fail_fd;
    }
    size_t n = (size_t)fsize, got = 0;
    buf = malloc(n + 1);
    if (!buf) {
        rc = fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
        goto fail_fd;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = fail(err, errlen, MOA_EIO, "%s: cannot read: %s", path,
                      errno_str(errno, eb, sizeof eb));
            goto fail_buf;
        }
        if (r == 0) break;  // shrank meanwhile: use what is there
        got += (size_t)r;
    }
    buf[got] = '\0';
    close(fd);
    *out = buf;
    *len = got;
    return 0;

fail_buf:
    free(buf);
fail_fd:
    close(fd);
    return rc;
}

// --- safetensors -------------------------------------------------------------

enum { DT_F32, DT_F16, DT_BF16 };
static const char *const dt_name[] = {"F32", "F16", "BF16"};
static const uint64_t dt_size[] = {4, 2, 2};

enum { T_UNUSED = 0, T_USED, T_CHECKED };  // checked: shared-embedding copy

typedef struct st_tensor {
    const char *name;  // points into the header's cJSON tree
    int dtype;
    int ndim;
    uint64_t shape[TENSOR_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end;  // relative to the data area
    int state;
} st_tensor;

typedef struct loader {
    moa_model *m;
    const char *path;  // model.safetensors
    char *err;
    size_t errlen;
    cJSON *header;
    st_tensor *t;  // sorted by name once parsed
    size_t n;
    const unsigned char *data;  // data area inside the map
    uint64_t data_len;
} loader;

static int json_u64(const cJSON *it, uint64_t *out) {
    if (!cJSON_IsNumber(it)) return 0;
    double v = it->valuedouble;
    if (!(v >= 0.0 && v <= EXACT_INT_MAX)) return 0;
    uint64_t u = (uint64_t)v;
    if ((double)u != v) return 0;
    *out = u;
    return 1;
}

static void shape_str(char *buf, size_t n, const uint64_t *dims, int nd) {
    size_t at = 0;
    at += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && at < n; i++)
        at += (size_t)snprintf(buf + at, n - at, "%s%llu", i ? "," : "",
                               (unsigned long long)dims[i]);
    if (at < n) snprintf(buf + at, n - at, "]");
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_range(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a;
    const st_tensor *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

// Reads one header entry into t; name is e->string.
static int parse_entry(loader *L, const cJSON *e, st_tensor *t) {
    const char *name = e->string;
    t->name = name;
    if (!cJSON_IsObject(e))
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: entry is not a JSON object", L->path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt) || !dt->valuestring)
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: \"dtype\" missing or not a string", L->path,
                    name);
    t->dtype = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(dt->valuestring, dt_name[i]) == 0) t->dtype = i;
    if (t->dtype < 0)
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s has unknown dtype \"%.32s\" (F32, F16 and "
                    "BF16 are supported)",
                    L->path, name, dt->valuestring);

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    int nd = cJSON_IsArray(sh) ? cJSON_GetArraySize(sh) : -1;
    if (nd < 0 || nd > TENSOR_MAX_DIMS)
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: \"shape\" must be an array of at most %d "
                    "non-negative integers",
                    L->path, name, TENSOR_MAX_DIMS);
    t->ndim = nd;
    t->numel = 1;
    int i = 0, overflow = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        if (!json_u64(d, &t->shape[i]))
            return fail(L->err, L->errlen, MOA_EFORMAT,
                        "%s: tensor %s: \"shape\" must be an array of at most "
                        "%d non-negative integers",
                        L->path, name, TENSOR_MAX_DIMS);
        if (__builtin_mul_overflow(t->numel, t->shape[i], &t->numel))
            overflow = 1;
    }
    uint64_t nbytes = 0;
    if (overflow || __builtin_mul_overflow(t->numel, dt_size[t->dtype], &nbytes))
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: shape is too large", L->path, name);

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        !json_u64(off->child, &t->begin) ||
        !json_u64(off->child->next, &t->end))
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: \"data_offsets\" must be [begin, end]",
                    L->path, name);
    if (t->begin > t->end)
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: data_offsets [%llu, %llu] end before they "
                    "begin",
                    L->path, name, (unsigned long long)t->begin,
                    (unsigned long long)t->end);
    if (t->end > L->data_len)
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: data_offsets [%llu, %llu] run past the end "
                    "of the file (the data area holds %llu bytes)",
                    L->path, name, (unsigned long long)t->begin,
                    (unsigned long long)t->end,
                    (unsigned long long)L->data_len);
    if (t->end - t->begin != nbytes) {
        char s[160];
        shape_str(s, sizeof s, t->shape, t->ndim);
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s: data_offsets [%llu, %llu] hold %llu bytes, "
                    "but %s %s takes %llu bytes",
                    L->path, name, (unsigned long long)t->begin,
                    (unsigned long long)t->end,
                    (unsigned long long)(t->end - t->begin),
                    dt_name[t->dtype], s, (unsigned long long)nbytes);
    }
    return 0;
}

// Reads every header entry into L->t (sorted by name), checks duplicates and
// overlapping byte ranges.
static int parse_entries(loader *L) {
    size_t count = 0;
    for (const cJSON *e = L->header->child; e; e = e->next) count++;
    L->t = calloc(count ? count : 1, sizeof *L->t);
    if (!L->t)
        return fail(L->err, L->errlen, MOA_ENOMEM,
                    "%s: out of memory for %zu tensors", L->path, count);
    int rc;
    for (const cJSON *e = L->header->child; e; e = e->next) {
        if (!e->string)
            return fail(L->err, L->errlen, MOA_EFORMAT,
                        "%s: header entry without a name", L->path);
        if (strcmp(e->string, "__metadata__") == 0) continue;
        if ((rc = parse_entry(L, e, &L->t[L->n]))) return rc;
        L->n++;
    }

    qsort(L->t, L->n, sizeof *L->t, cmp_name);
    for (size_t i = 1; i < L->n; i++)
        if (strcmp(L->t[i - 1].name, L->t[i].name) == 0)
            return fail(L->err, L->errlen, MOA_EFORMAT,
                        "%s: duplicate tensor %s", L->path, L->t[i].name);

    // Sorted by begin, a range overlaps an earlier one iff it starts before
    // the furthest end seen so far. Empty tensors occupy no bytes.
    st_tensor **by = malloc((L->n ? L->n : 1) * sizeof *by);
    if (!by)
        return fail(L->err, L->errlen, MOA_ENOMEM, "%s: out of memory",
                    L->path);
    size_t nb = 0;
    for (size_t i = 0; i < L->n; i++)
        if (L->t[i].end > L->t[i].begin) by[nb++] = &L->t[i];
    qsort(by, nb, sizeof *by, cmp_range);
    rc = 0;
    const st_tensor *far = NULL;
    for (size_t i = 0; i < nb; i++) {
        if (far && by[i]->begin < far->end) {
            rc = fail(L->err, L->errlen, MOA_EFORMAT,
                      "%s: tensors %s [%llu, %llu] and %s [%llu, %llu] "
                      "overlap",
                      L->path, far->name, (unsigned long long)far->begin,
                      (unsigned long long)far->end, by[i]->name,
                      (unsigned long long)by[i]->begin,
                      (unsigned long long)by[i]->end);
            break;
        }
        if (!far || by[i]->end > far->end) far = by[i];
    }
    free(by);
    return rc;
}

static st_tensor *find_tensor(const loader *L, const char *name) {
    st_tensor key;
    key.name = name;
    return bsearch(&key, L->t, L->n, sizeof *L->t, cmp_name);
}

// A 64-byte aligned float buffer that the model owns from now on.
static float *owned_alloc(moa_model *m, uint64_t numel) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        float **p = realloc(m->owned, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        m->owned = p;
        m->cap_owned = cap;
    }
    if (numel > (SIZE_MAX - OWNED_ALIGN) / sizeof(float)) return NULL;
    size_t bytes = (size_t)numel * sizeof(float);
    bytes = (bytes + OWNED_ALIGN - 1) / OWNED_ALIGN * OWNED_ALIGN;
    float *buf = aligned_alloc(OWNED_ALIGN, bytes ? bytes : OWNED_ALIGN);
    if (buf) m->owned[m->n_owned++] = buf;
    return buf;
}

static float tensor_elem(const loader *L, const st_tensor *t, uint64_t i) {
    const unsigned char *p = L->data + t->begin + i * dt_size[t->dtype];
    if (t->dtype == DT_F32) {
        float f;
        memcpy(&f, p, sizeof f);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return t->dtype == DT_F16 ? moa_f16_to_f32(h) : moa_bf16_to_f32(h);
}

// Looks up a tensor the config calls for and checks its shape.
static int expect_tensor(loader *L, const char *name, int nd,
                         const uint64_t *dims, st_tensor **out) {
    st_tensor *t = find_tensor(L, name);
    if (!t)
        return fail(L->err, L->errlen, MOA_EFORMAT, "%s: missing tensor %s",
                    L->path, name);
    int same = t->ndim == nd;
    for (int i = 0; same && i < nd; i++) same = t->shape[i] == dims[i];
    if (!same) {
        char have[160], want[160];
        shape_str(have, sizeof have, t->shape, t->ndim);
        shape_str(want, sizeof want, dims, nd);
        return fail(L->err, L->errlen, MOA_EFORMAT,
                    "%s: tensor %s has shape %s, config.json implies %s",
                    L->path, name, have, want);
    }
    *out = t;
    return 0;
}

// Binds a tensor the config calls for to *out: in place, copied or widened.
static int bind_tensor(loader *L, const float **out, const char *name, int nd,
                       uint64_t d0, uint64_t d1, uint64_t d2) {
    const uint64_t dims[3] = {d0, d1, d2};
    st_tensor *t;
    int rc = expect_tensor(L, name, nd, dims, &t);
    if (rc) return rc;
    MOA_ASSERT(t->state == T_UNUSED);  // each name is bound once
    const unsigned char *src = L->data + t->begin;
    const float *view;
    if (t->dtype == DT_F32 && (uintptr_t)src % _Alignof(float) == 0) {
        view = (const float *)src;
    } else {
        float *buf = owned_alloc(L->m, t->numel);
        if (!buf)
            return fail(L->err, L->errlen, MOA_ENOMEM,
                        "%s: out of memory for tensor %s", L->path, name);
        if (t->dtype == DT_F32) {
            memcpy(buf, src, (size_t)t->numel * sizeof(float));
        } else {
            for (uint64_t i = 0; i < t->numel; i++)
                buf[i] = tensor_elem(L, t, i);
        }
        view = buf;
    }
    for (uint64_t i = 0; i < t->numel; i++)
        if (!isfinite(view[i]))
            return fail(L->err, L->errlen, MOA_EFORMAT,
                        "%s: tensor %s holds NaN or infinity (element %llu)",
                        L->path, name, (unsigned long long)i);
    t->state = T_USED;
    L->m->f32_bytes += (size_t)t->numel * sizeof(float);
    *out = view;
    return 0;
}

// With share_embeddings, a decoder copy of the embeddings may be present but
// must equal the encoder's table (spec §5); it is then not used.
static int check_shared_copy(loader *L, const char *name) {
    const moa_config *c = &L->m->cfg;
    if (!find_tensor(L, name)) return 0;
    const uint64_t dims[2] = {(uint64_t)c->vocab_size, (uint64_t)c->d_model};
    st_tensor *t;
    int rc = expect_tensor(L, name, 2, dims, &t);
    if (rc) return rc;
    for (uint64_t i = 0; i < t->numel; i++) {
        float v = tensor_elem(L, t, i);
        if (!(v == L->m->enc_embed[i]))
            return fail(L->err, L->errlen, MOA_EFORMAT,
                        "%s: tensor %s differs from encoder.embed_tokens.weight "
                        "(element %llu: %g vs %g) although share_embeddings is "
                        "true",
                        L->path, name, (unsigned long long)i, (double)v,
                        (double)L->m->enc_embed[i]);
    }
    t->state = T_CHECKED;
    return 0;
}

#define BIND(out, nd, d0, d1, d2, ...)                                      \
    do {                                                                    \
        snprintf(name, sizeof name, __VA_ARGS__);                           \
        int rc_ = bind_tensor(L, (out), name, (nd), (d0), (d1), (d2));      \
        if (rc_) return rc_;                                                \
    } while (0)

static int bind_ln(loader *L, moa_ln_w *w, const char *prefix) {
    char name[256];
    uint64_t d = (uint64_t)L->m->cfg.d_model;
    BIND(&w->w, 1, d, 0, 0, "%s.weight", prefix);
    BIND(&w->b, 1, d, 0, 0, "%s.bias", prefix);
    return 0;
}

static int bind_attn(loader *L, moa_attn_w *w, const char *prefix) {
    char name[256];
    const moa_config *c = &L->m->cfg;
    uint64_t d = (uint64_t)c->d_model, h = (uint64_t)c->head_dim,
             E = (uint64_t)c->num_experts;
    BIND(&w->k_w, 2, h, d, 0, "%s.k_proj.weight", prefix);
    if (c->attention_bias) BIND(&w->k_b, 1, h, 0, 0, "%s.k_proj.bias", prefix);
    BIND(&w->v_w, 2, h, d, 0, "%s.v_proj.weight", prefix);
    if (c->attention_bias) BIND(&w->v_b, 1, h, 0, 0, "%s.v_proj.bias", prefix);
    BIND(&w->w_gate, 2, d, E, 0, "%s.q_proj.w_gate", prefix);
    BIND(&w->q_experts, 3, E, d, h, "%s.q_proj.experts.w", prefix);
    BIND(&w->o_experts, 3, E, h, d, "%s.q_proj.output_experts.w", prefix);
    return 0;
}

static int bind_ffn(loader *L, moa_ffn_w *w, const char *prefix) {
    char name[256];
    const moa_config *c = &L->m->cfg;
    uint64_t d = (uint64_t)c->d_model, f = (uint64_t)c->ffn_dim;
    BIND(&w->fc1_w, 2, f, d, 0, "%s.fc1.weight", prefix);
    BIND(&w->fc1_b, 1, f, 0, 0, "%s.fc1.bias", prefix);
    BIND(&w->fc2_w, 2, d, f, 0, "%s.fc2.weight", prefix);
    BIND(&w->fc2_b, 1, d, 0, 0, "%s.fc2.bias", prefix);
    return 0;
}

#define SUB(fn, w, ...)                                                     \
    do {                                                                    \
        snprintf(prefix, sizeof prefix, __VA_ARGS__);                       \
        int rc_ = fn(L, (w), prefix);                                       \
        if (rc_) return rc_;                                                \
    } while (0)

// Binds every tensor config.json calls for, in spec §3 order.
static int bind_model(loader *L) {
    moa_model *m = L->m;
    const moa_config *c = &m->cfg;
    uint64_t V = (uint64_t)c->vocab_size, d = (uint64_t)c->d_model;
    char name[256], prefix[128];

    m->enc = calloc((size_t)c->encoder_layers, sizeof *m->enc);
    m->dec = calloc((size_t)c->decoder_layers, sizeof *m->dec);
    if (!m->enc || !m->dec)
        return fail(L->err, L->errlen, MOA_ENOMEM, "%s: out of memory",
                    L->path);

    BIND(&m->enc_embed, 2, V, d, 0, "encoder.embed_tokens.weight");
    for (int i = 0; i < c->encoder_layers; i++) {
        moa_enc_layer *l = &m->enc[i];
        SUB(bind_attn, &l->self_attn, "encoder.layers.%d.self_attn", i);
        SUB(bind_ln, &l->self_attn_ln, "encoder.layers.%d.self_attn_layer_norm", i);
        SUB(bind_ffn, &l->ffn, "encoder.layers.%d", i);
        SUB(bind_ln, &l->final_ln, "encoder.layers.%d.final_layer_norm", i);
    }
    if (c->normalize_before) SUB(bind_ln, &m->enc_final_ln, "encoder.layer_norm");

    if (c->share_embeddings) {
        m->dec_embed = m->enc_embed;
        m->out_proj = m->enc_embed;
        int rc = check_shared_copy(L, "decoder.embed_tokens.weight");
        if (rc) return rc;
    } else {
        BIND(&m->dec_embed, 2, V, d, 0, "decoder.embed_tokens.weight");
    }
    for (int i = 0; i < c->decoder_layers; i++) {
        moa_dec_layer *l = &m->dec[i];
        SUB(bind_attn, &l->self_attn, "decoder.layers.%d.self_attn", i);
        SUB(bind_ln, &l->self_attn_ln, "decoder.layers.%d.self_attn_layer_norm", i);
        SUB(bind_attn, &l->cross_attn, "decoder.layers.%d.encoder_attn", i);
        SUB(bind_ln, &l->cross_attn_ln,
            "decoder.layers.%d.encoder_attn_layer_norm", i);
        SUB(bind_ffn, &l->ffn, "decoder.layers.%d", i);
        SUB(bind_ln, &l->final_ln, "decoder.layers.%d.final_layer_norm", i);
    }
    if (c->normalize_before) SUB(bind_ln, &m->dec_final_ln, "decoder.layer_norm");
    if (c->share_embeddings) {
        int rc = check_shared_copy(L, "decoder.output_projection.weight");
        if (rc) return rc;
    } else {
        BIND(&m->out_proj, 2, V, d, 0, "decoder.output_projection.weight");
    }
    return 0;
}

#undef BIND
#undef SUB

// --- packed copies of the big weight matrices (model/moa_packed.c) -------

// Converting a tensor read all of it into this process's memory. Where it
// lies in the read-only mapping, give those pages back: the converted copy
// serves from now on, and the few other readers (OpenBLAS with several
// threads, embedding rows of a shared output projection) fault in only what
// they touch, from the page cache.
static void drop_pages(moa_model *m, const float *w, size_t bytes) {
    const char *lo = m->map, *hi = lo + m->map_len, *t = (const char *)w;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (m->map && t >= lo && t + bytes <= hi) {
        uintptr_t a = ((uintptr_t)t + page - 1) / page * page,
                  b = ((uintptr_t)t + bytes) / page * page;
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
    }
}

// Bytes rounded up to whole floats of an owned block.
static uint64_t floats_for(size_t bytes) { return (bytes + sizeof(float) - 1) / sizeof(float); }
static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

// w is n×k, or k×n when kn. The copy is in the model's precision: float32
// panels where the AVX-512 path runs (else none: OpenBLAS reads w), bf16 or
// int8 panels always (model/moa_quant.c). One owned block each.
static int pack_one(moa_model *m, moa_packed *pk, const float *w, int n, int k, int kn) {
    memset(pk, 0, sizeof *pk);
    pk->w = w;
    pk->n = n;
    pk->k = k;
    pk->kn = kn;
    if (m->precision == MOA_PREC_INT8) {
        size_t q = align64(moa_pack_i8_bytes(n, k)), cols = moa_pack_i8_cols(n);
        char *dst = (char *)owned_alloc(m, floats_for(q + 2 * cols * sizeof(float)));
        if (!dst) return MOA_ENOMEM;
        float *qs = (float *)(dst + q);
        int32_t *qsum = (int32_t *)(qs + cols);
        moa_pack_i8((int8_t *)dst, qs, qsum, w, n, k, kn);
        pk->pq = (const int8_t *)dst;
        pk->qs = qs;
        pk->qsum = qsum;
        m->weight_bytes += q + 2 * cols * sizeof(float);
    } else if (m->precision == MOA_PREC_BF16) {
        size_t b = moa_pack_bf16_bytes(n, k);
        uint16_t *dst = (uint16_t *)owned_alloc(m, floats_for(b));
        if (!dst) return MOA_ENOMEM;
        moa_pack_bf16(dst, w, n, k, kn);
        pk->pb = dst;
        m->weight_bytes += b;
    } else {
        m->weight_bytes += (size_t)n * k * sizeof(float);
        if (!moa_pack_available()) return 0;
        float *dst = owned_alloc(m, moa_pack_floats(n, k));
        if (!dst) return MOA_ENOMEM;
        if (kn) moa_pack_weights_kn(dst, w, k, n);
        else moa_pack_weights(dst, w, n, k);
        pk->p = dst;
    }
    m->n_packed++;
    drop_pages(m, w, (size_t)n * k * sizeof *w);
    return 0;
}

// Every product with a fixed weight matrix: K/V and each expert's Q and O
// of each attention module, both FFN products, the output projection (the
// router's d×E is too narrow to gain, and stays float32 in every precision:
// its top-k is a discontinuous choice, spec §9).
static int pack_model(moa_model *m, int want_shortlist) {
    const moa_config *c = &m->cfg;
    int d = c->d_model, h = c->head_dim, F = c->ffn_dim, E = c->num_experts, rc = 0;
    moa_attn_w *attn[2 * MOA_MAX_LAYERS + MOA_MAX_LAYERS];
    moa_ffn_w *ffn[2 * MOA_MAX_LAYERS];
    int na = 0, nf = 0;
    for (int i = 0; i < c->encoder_layers; i++) {
        attn[na++] = &m->enc[i].self_attn;
        ffn[nf++] = &m->enc[i].ffn;
    }
    for (int i = 0; i < c->decoder_layers; i++) {
        attn[na++] = &m->dec[i].self_attn;
        attn[na++] = &m->dec[i].cross_attn;
        ffn[nf++] = &m->dec[i].ffn;
    }
    m->expert_p = calloc((size_t)na * 2 * E, sizeof *m->expert_p);
    if (!m->expert_p) return MOA_ENOMEM;
    for (int i = 0; i < na && !rc; i++) {
        moa_attn_w *a = attn[i];
        rc = pack_one(m, &a->k_p, a->k_w, h, d, 0);
        if (!rc) rc = pack_one(m, &a->v_p, a->v_w, h, d, 0);
        a->q_p = m->expert_p + (size_t)i * 2 * E;
        a->o_p = a->q_p + E;
        for (int e = 0; e < E && !rc; e++) {
            rc = pack_one(m, &a->q_p[e], a->q_experts + (size_t)e * d * h, h, d, 1);
            if (!rc) rc = pack_one(m, &a->o_p[e], a->o_experts + (size_t)e * h * d, d, h, 1);
        }
    }
    for (int i = 0; i < nf && !rc; i++) {
        rc = pack_one(m, &ffn[i]->fc1_p, ffn[i]->fc1_w, F, d, 0);
        if (!rc) rc = pack_one(m, &ffn[i]->fc2_p, ffn[i]->fc2_w, d, F, 0);
    }
    // With a shortlist the output projection is only ever used as rows
    // (load_shortlist), never as a whole product.
    if (!rc && !want_shortlist) rc = pack_one(m, &m->out_p, m->out_proj, c->vocab_size, d, 0);
    return rc;
}

// Training-only leftovers of the paper's checkpoints (spec §3), dropped
// without a word: q_proj.w_noise, embed_positions._float_tensor, ffd.N.*.
static int silently_ignored(const char *name) {
    const char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    if (strcmp(last, "w_noise") == 0 || strcmp(last, "_float_tensor") == 0)
        return 1;
    return strncmp(name, "ffd.", 4) == 0 || strstr(name, ".ffd.") != NULL;
}

// Maps model.safetensors into m and binds the weights.
static int load_safetensors(moa_model *m, const char *path, int want_shortlist, char *err,
                            size_t errlen) {
    char eb[128];
    loader L;
    memset(&L, 0, sizeof L);
    L.m = m;
    L.path = path;
    L.err = err;
    L.errlen = errlen;

    uint64_t size;
    int fd = open_regular(path, &size, err, errlen);
    if (fd < 0) return fd;
    int rc;
    if (size < 8) {
        rc = fail(err, errlen, MOA_EFORMAT,
                  "%s: file is too short (%llu bytes) to hold a safetensors "
                  "header",
                  path, (unsigned long long)size);
        goto fail_fd;
    }
    if (size > SIZE_MAX) {
        rc = fail(err, errlen, MOA_EFORMAT, "%s: file too large to map", path);
        goto fail_fd;
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = fail(err, errlen, MOA_EIO, "%s: cannot map: %s", path,
                  errno_str(errno, eb, sizeof eb));
        goto fail_fd;
    }
    close(fd);
    m->map = map;  // unmapped by moa_model_free from here on
    m->map_len = (size_t)size;

    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > size - 8)
        return fail(err, errlen, MOA_EFORMAT,
                    "%s: header length %llu runs past the end of the file "
                    "(%llu bytes)",
                    path, (unsigned long long)hlen, (unsigned long long)size);
    if (hlen > HEADER_MAX_BYTES)
        return fail(err, errlen, MOA_EFORMAT,
                    "%s: header length %llu is over the %llu-byte limit", path,
                    (unsigned long long)hlen,
                    (unsigned long long)HEADER_MAX_BYTES);
    L.data = p + 8 + hlen;
    L.data_len = size - 8 - hlen;

    L.header = parse_json((const char *)p + 8, (size_t)hlen, path, "header",
                          err, errlen);
    if (!L.header) return MOA_EFORMAT;
    if (!cJSON_IsObject(L.header)) {
        rc = fail(err, errlen, MOA_EFORMAT, "%s: header is not a JSON object",
                  path);
        goto fail_header;
    }
    if ((rc = parse_entries(&L))) goto fail_tensors;
    if ((rc = bind_model(&L))) goto fail_tensors;
    if ((rc = pack_model(m, want_shortlist))) {
        rc = fail(err, errlen, rc, "%s: out of memory converting the weights to %s", path,
                  moa_precision_name(m->precision));
        goto fail_tensors;
    }

    for (size_t i = 0; i < L.n; i++)
        if (L.t[i].state == T_UNUSED && !silently_ignored(L.t[i].name))
            fprintf(stderr, "warning: %s: ignoring tensor %s\n", path,
                    L.t[i].name);
    rc = 0;

fail_tensors:
    free(L.t);
fail_header:
    cJSON_Delete(L.header);
    return rc;

fail_fd:
    close(fd);
    return rc;
}

// --- positions ---------------------------------------------------------------

// fairseq's sinusoids (spec §2), computed in double and rounded once (§5).
// fairseq divides by half-1 and so cannot build d_model = 2; there only
// f_0 = exp(0) = 1 exists, whatever the divisor, and that is what we use.
int moa_positions_init(moa_model *m) {
    const moa_config *c = &m->cfg;
    MOA_ASSERT(c->d_model > 0 && c->d_model % 2 == 0);
    MOA_ASSERT(c->max_positions >= 0 && c->pad_id >= 0);
    int d = c->d_model, half = d / 2;
    int rows = c->max_positions + c->pad_id + 2;
    size_t bytes = (size_t)rows * (size_t)d * sizeof(float);
    bytes = (bytes + OWNED_ALIGN - 1) / OWNED_ALIGN * OWNED_ALIGN;
    float *p = aligned_alloc(OWNED_ALIGN, bytes);
    if (!p) return MOA_ENOMEM;
    double step = half > 1 ? log(10000.0) / (half - 1) : 0.0;
    for (int pos = 0; pos < rows; pos++) {
        float *row = p + (size_t)pos * (size_t)d;
        if (pos == c->pad_id) {
            memset(row, 0, (size_t)d * sizeof(float));
            continue;
        }
        for (int i = 0; i < half; i++) {
            double a = (double)pos * exp(-(double)i * step);
            row[i] = (float)sin(a);
            row[half + i] = (float)cos(a);
        }
    }
    free(m->positions);
    m->positions = p;
    m->n_positions = rows;
    return 0;
}

// --- model -------------------------------------------------------------------

// --- the vocabulary shortlist (spec §9) ------------------------------------------

void moa_shortlist_free(moa_shortlist *s) {
    if (!s) return;
    free(s->always);
    free(s->off);
    free(s->ids);
    free(s);
}

// Appends the ids of "id id ..." in [p, end) to *buf (grown as needed).
// Returns how many, or -1 with the message written.
static int parse_id_list(const char *p, const char *end, int V, int **buf, size_t *n,
                         size_t *cap, const char *path, int lineno, char *err, size_t errlen) {
    int count = 0;
    while (p < end) {
        if (*p == ' ') {
            p++;
            continue;
        }
        long v = 0;
        const char *q = p;
        while (q < end && *q >= '0' && *q <= '9' && v < V) v = v * 10 + (*q++ - '0');
        if (q == p || (q < end && *q != ' ') || v >= V) {
            fail(err, errlen, MOA_EFORMAT, "%s:%d: expected piece ids 0-%d separated by spaces, "
                 "found '%.*s'", path, lineno, V - 1, (int)(end - p > 20 ? 20 : end - p), p);
            return -1;
        }
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 1024;
            int *b = realloc(*buf, nc * sizeof *b);
            if (!b) {
                fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
                return -1;
            }
            *buf = b;
            *cap = nc;
        }
        (*buf)[(*n)++] = (int)v;
        count++;
        p = q;
    }
    return count;
}

#define SL_FAIL(...)                                            \
    do {                                                        \
        fail(err, errlen, MOA_EFORMAT, __VA_ARGS__);            \
        goto fail;                                              \
    } while (0)

moa_shortlist *moa_shortlist_parse(const char *text, size_t len, int V, const char *path,
                                   char *err, size_t errlen) {
    moa_shortlist *sl = calloc(1, sizeof *sl);
    int *start = malloc((size_t)V * sizeof *start), *cnt = calloc((size_t)V, sizeof *cnt);
    int *buf = NULL;
    size_t nbuf = 0, cap = 0;
    int have_format = 0, have_vocab = 0, have_always = 0, lineno = 0;
    if (!sl || !start || !cnt) {
        fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (int i = 0; i < V; i++) start[i] = -1;
    for (size_t pos = 0; pos < len;) {
        const char *ln = text + pos, *nl = memchr(ln, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - ln) : len - pos;
        pos += n + (nl ? 1 : 0);
        lineno++;
        if (n && ln[n - 1] == '\r') n--;
        if (n == 0 || ln[0] == '#') continue;
        if (memchr(ln, '\0', n)) SL_FAIL("%s:%d: NUL byte", path, lineno);
        const char *tab = memchr(ln, '\t', n), *end = ln + n;
        if (!tab) SL_FAIL("%s:%d: expected KEY<TAB>VALUES", path, lineno);
        size_t kl = (size_t)(tab - ln);
        const char *v = tab + 1;
        if (!have_format) {
            if (kl != 6 || memcmp(ln, "format", 6) != 0 || end - v != 15 ||
                memcmp(v, "moa-shortlist\t1", 15) != 0)
                SL_FAIL("%s:%d: expected the first line 'format<TAB>moa-shortlist<TAB>1' "
                        "(a shortlist of format version 1)", path, lineno);
            have_format = 1;
        } else if (kl == 10 && memcmp(ln, "vocab_size", 10) == 0) {
            char *e;
            long vs = strtol(v, &e, 10);
            if (have_vocab || e != end || vs != V)
                SL_FAIL("%s:%d: vocab_size must be given once and match config.json's %d",
                        path, lineno, V);
            have_vocab = 1;
        } else if (kl == 6 && memcmp(ln, "always", 6) == 0) {
            if (have_always) SL_FAIL("%s:%d: a second 'always' line", path, lineno);
            size_t at = nbuf;
            int c = parse_id_list(v, end, V, &buf, &nbuf, &cap, path, lineno, err, errlen);
            if (c < 0) goto fail;
            sl->always = malloc((size_t)(c ? c : 1) * sizeof *sl->always);
            if (!sl->always) {
                fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
                goto fail;
            }
            memcpy(sl->always, buf + at, (size_t)c * sizeof *buf);
            sl->n_always = c;
            nbuf = at;
            have_always = 1;
        } else {
            long src = 0;
            const char *q = ln;
            while (q < tab && *q >= '0' && *q <= '9' && src < V) src = src * 10 + (*q++ - '0');
            if (q != tab || kl == 0 || src >= V)
                SL_FAIL("%s:%d: expected a source piece id 0-%d, or format, vocab_size, always; "
                        "found '%.*s'", path, lineno, V - 1, (int)(kl > 20 ? 20 : kl), ln);
            if (start[src] >= 0) SL_FAIL("%s:%d: source piece %ld listed twice", path, lineno, src);
            size_t at = nbuf;
            int c = parse_id_list(v, end, V, &buf, &nbuf, &cap, path, lineno, err, errlen);
            if (c < 0) goto fail;
            start[src] = (int)at;
            cnt[src] = c;
            sl->n_sources++;
        }
    }
    if (!have_format || !have_vocab)
        SL_FAIL("%s: no %s line", path, have_format ? "vocab_size" : "format");
    sl->off = malloc(((size_t)V + 1) * sizeof *sl->off);
    sl->ids = malloc((nbuf ? nbuf : 1) * sizeof *sl->ids);
    if (!sl->off || !sl->ids) {
        fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    sl->off[0] = 0;
    for (int i = 0; i < V; i++) {
        if (cnt[i]) memcpy(sl->ids + sl->off[i], buf + start[i], (size_t)cnt[i] * sizeof *buf);
        sl->off[i + 1] = sl->off[i] + cnt[i];
    }
    free(start);
    free(cnt);
    free(buf);
    return sl;
fail:
    free(start);
    free(cnt);
    free(buf);
    moa_shortlist_free(sl);
    return NULL;
}

#undef SL_FAIL

// Reads DIR/shortlist.tsv into m->shortlist and lays out the output
// projection as rows in the model's precision (moa_gemm_rows).
static int load_shortlist(moa_model *m, const char *path, char *err, size_t errlen) {
    if (!moa_q_available())
        return fail(err, errlen, MOA_EINVAL, "the shortlist needs a CPU with AVX2 and FMA");
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, MOA_SHORTLIST_MAX_BYTES, &text, &len, err, errlen);
    if (rc) {
        if (rc == MOA_EIO) {  // say what needs it and how to make it
            size_t at = strlen(err);
            snprintf(err + at, errlen > at ? errlen - at : 0,
                     " (the vocabulary shortlist needs it: train/make_shortlist.py, "
                     "make shortlist for the default model)");
        }
        return rc;
    }
    m->shortlist = moa_shortlist_parse(text, len, m->cfg.vocab_size, path, err, errlen);
    free(text);
    if (!m->shortlist) return MOA_EFORMAT;
    int V = m->cfg.vocab_size, d = m->cfg.d_model;
    moa_rows *r = &m->out_rows;
    memset(r, 0, sizeof *r);
    r->n = V;
    r->k = d;
    r->ld = moa_rows_ld(m->precision, d);
    if (m->precision == MOA_PREC_F32) {
        r->f = m->out_proj;
        m->weight_bytes += (size_t)V * d * sizeof(float);
    } else if (m->precision == MOA_PREC_BF16) {
        size_t b = (size_t)V * r->ld * sizeof(uint16_t);
        uint16_t *dst = (uint16_t *)owned_alloc(m, floats_for(b));
        if (!dst) return fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
        moa_rows_bf16(dst, m->out_proj, V, d);
        r->b = dst;
        m->weight_bytes += b;
    } else {
        size_t b = align64((size_t)V * r->ld);
        char *dst = (char *)owned_alloc(m, floats_for(b + 2 * (size_t)V * sizeof(float)));
        if (!dst) return fail(err, errlen, MOA_ENOMEM, "%s: out of memory", path);
        float *qs = (float *)(dst + b);
        int32_t *qsum = (int32_t *)(qs + V);
        moa_rows_i8((int8_t *)dst, qs, qsum, m->out_proj, V, d);
        r->q = (const int8_t *)dst;
        r->qs = qs;
        r->qsum = qsum;
        m->weight_bytes += b + 2 * (size_t)V * sizeof(float);
    }
    if (m->precision != MOA_PREC_F32) drop_pages(m, m->out_proj, (size_t)V * d * sizeof(float));
    return 0;
}

int moa_model_shortlist(const moa_model *m, int *n_sources, int *n_always) {
    if (!m->shortlist) return 0;
    if (n_sources) *n_sources = m->shortlist->n_sources;
    if (n_always) *n_always = m->shortlist->n_always;
    return 1;
}

// --- precision -----------------------------------------------------------------

static const char *const prec_names[] = {"f32", "bf16", "int8"};

const char *moa_precision_name(moa_precision p) {
    return (unsigned)p < 3 ? prec_names[p] : "?";
}

int moa_precision_parse(const char *s, moa_precision *out) {
    for (int i = 0; s && i < 3; i++)
        if (strcmp(s, prec_names[i]) == 0) {
            *out = (moa_precision)i;
            return 0;
        }
    return MOA_EINVAL;
}

void moa_load_opts_default(moa_load_opts *o) {
    memset(o, 0, sizeof *o);
    o->precision = MOA_PREC_F32;
}

moa_model *moa_model_load(const char *dir, char *err, size_t errlen) {
    moa_load_opts o;
    moa_load_opts_default(&o);
    return moa_model_load_opts(dir, &o, err, errlen);
}

moa_model *moa_model_load_opts(const char *dir, const moa_load_opts *opts, char *err,
                               size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!dir || !*dir) {
        fail(err, errlen, MOA_EINVAL, "moa_model_load: no model directory");
        return NULL;
    }
    if (!opts || (unsigned)opts->precision > MOA_PREC_INT8) {
        fail(err, errlen, MOA_EINVAL, "moa_model_load: unknown precision");
        return NULL;
    }
    if (opts->precision != MOA_PREC_F32 && !moa_q_available()) {
        fail(err, errlen, MOA_EINVAL, "precision %s needs a CPU with AVX2 and FMA",
             moa_precision_name(opts->precision));
        return NULL;
    }
    moa_model *m = calloc(1, sizeof *m);
    if (!m) {
        fail(err, errlen, MOA_ENOMEM, "%s: out of memory", dir);
        return NULL;
    }
    m->precision = opts->precision;
    // bf16 picks its kernel now (a short measurement), not in a worker's
    // first step; the name is what the logs print
    if (m->precision == MOA_PREC_BF16) (void)moa_q_kernel_name(MOA_PREC_BF16);
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;  // "dir/" names "dir"
    if (dl >= sizeof m->dir) {
        fail(err, errlen, MOA_EINVAL, "%.64s...: directory name too long", dir);
        goto fail_model;
    }
    memcpy(m->dir, dir, dl);
    m->dir[dl] = '\0';
    const char *sep = strcmp(m->dir, "/") == 0 ? "" : "/";

    char path[sizeof m->dir + 32];
    snprintf(path, sizeof path, "%s%sconfig.json", m->dir, sep);
    char *text = NULL;
    size_t len = 0;
    if (read_file(path, CONFIG_MAX_BYTES, &text, &len, err, errlen))
        goto fail_model;
    int rc = moa_config_parse(text, len, path, &m->cfg, err, errlen);
    free(text);
    if (rc) goto fail_model;

    snprintf(path, sizeof path, "%s%smodel.safetensors", m->dir, sep);
    if (load_safetensors(m, path, opts->shortlist, err, errlen)) goto fail_model;
    if (opts->shortlist) {
        snprintf(path, sizeof path, "%s%sshortlist.tsv", m->dir, sep);
        if (load_shortlist(m, path, err, errlen)) goto fail_model;
    }
    if (moa_positions_init(m)) {
        fail(err, errlen, MOA_ENOMEM,
             "%s: out of memory for the position table", path);
        goto fail_model;
    }
    return m;

fail_model:
    moa_model_free(m);  // copes with whatever was built
    return NULL;
}

void moa_model_free(moa_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    if (m->map) munmap(m->map, m->map_len);
    free(m->enc);
    free(m->dec);
    free(m->positions);
    free(m->expert_p);
    moa_shortlist_free(m->shortlist);
    free(m);
}

const moa_config *moa_model_config(const moa_model *m) { return &m->cfg; }

const char *moa_model_dir(const moa_model *m) { return m->dir; }

size_t moa_model_f32_bytes(const moa_model *m) { return m->f32_bytes; }

moa_precision moa_model_precision(const moa_model *m) { return m->precision; }

size_t moa_model_weight_bytes(const moa_model *m) { return m->weight_bytes; }

const char *moa_model_kernels(const moa_model *m) {
    if (m->precision != MOA_PREC_F32) return moa_q_kernel_name(m->precision);
    return moa_get_num_threads() == 1 ? moa_gemm_path() : "OpenBLAS (several threads)";
}
