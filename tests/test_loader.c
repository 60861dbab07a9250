// test_loader.c — model/moa_load.c: config.json and model.safetensors checks,
// dtype widening, in-place views, positions, error strings.
//
// A small model writer below builds tiny models (d 8, 1+1 layers, E 4, k 2,
// h 4, ffn 16, vocab 12) in a fresh directory under $MOA_TEST_TMP, with knobs
// to corrupt them; each rejection test checks that the error names the file
// and the problem.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moa_impl.h"
#include "moa_test.h"

// --- model writer --------------------------------------------------------------

typedef struct tt_cfg {
    int d, enc_layers, dec_layers, ffn, E, k, h, V;
    int normalize_before, attention_bias, share;
    int max_positions;
} tt_cfg;

static tt_cfg tt_tiny(void) {
    tt_cfg c = {8, 1, 1, 16, 4, 2, 4, 12, 0, 0, 1, 1024};
    return c;
}

#define TT_MAX_TENSORS 256

typedef struct tt_tensor {
    char name[160];
    char dtype[16];     // F32, F16, BF16, or anything else (written as 1 byte each)
    int ndim;
    uint64_t shape[4];  // written to the header as is
    uint64_t n;         // elements written to the data area
    float *val;         // n values; for F16/BF16 exactly representable
    int64_t shift;      // added to both data offsets in the header
    int alias;          // >= 0: header offsets are those of tensor `alias` + shift
} tt_tensor;

typedef struct tt_model {
    tt_tensor t[TT_MAX_TENSORS];
    int n;
    int misalign;          // data area starts at an odd file offset
    const char *header;    // raw header text instead of the generated one
    int64_t header_len;    // >= 0: header length field written instead
    int64_t truncate;      // >= 0: file cut to this many bytes
    int duplicate_first;   // header names the first tensor twice
} tt_model;

// Deterministic values k/64, k in [-64, 64]: exact in F32, F16 and BF16.
static float tt_value(uint32_t seed, uint64_t i) {
    uint32_t x = seed * 2654435761u + (uint32_t)i * 40503u + 12345u;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return (float)((int)(x % 129u) - 64) / 64.0f;
}

static tt_tensor *tt_find(tt_model *tm, const char *name) {
    for (int i = 0; i < tm->n; i++)
        if (strcmp(tm->t[i].name, name) == 0) return &tm->t[i];
    return NULL;
}

// Adds (or replaces) a tensor with fresh values.
static tt_tensor *tt_add(tt_model *tm, const char *name, const char *dtype,
                         int ndim, uint64_t d0, uint64_t d1, uint64_t d2) {
    tt_tensor *t = tt_find(tm, name);
    if (!t) {
        if (tm->n == TT_MAX_TENSORS) MOA_TEST_FAIL("too many tensors");
        t = &tm->t[tm->n++];
    } else {
        free(t->val);
    }
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->ndim = ndim;
    uint64_t dims[3] = {d0, d1, d2};
    t->n = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = dims[i];
        t->n *= dims[i];
    }
    t->alias = -1;
    t->val = malloc((t->n ? t->n : 1) * sizeof(float));
    ASSERT_TRUE(t->val != NULL);
    uint32_t seed = 0;
    for (const char *p = name; *p; p++) seed = seed * 31u + (unsigned char)*p;
    for (uint64_t i = 0; i < t->n; i++) t->val[i] = tt_value(seed, i);
    return t;
}

static void tt_remove(tt_model *tm, const char *name) {
    tt_tensor *t = tt_find(tm, name);
    ASSERT_TRUE(t != NULL);
    free(t->val);
    int i = (int)(t - tm->t);
    memmove(&tm->t[i], &tm->t[i + 1], (size_t)(tm->n - i - 1) * sizeof *t);
    tm->n--;
}

static void tt_add_ln(tt_model *tm, const char *dt, const char *prefix, int d) {
    char n[160];
    snprintf(n, sizeof n, "%s.weight", prefix);
    tt_add(tm, n, dt, 1, (uint64_t)d, 0, 0);
    snprintf(n, sizeof n, "%s.bias", prefix);
    tt_add(tm, n, dt, 1, (uint64_t)d, 0, 0);
}

static void tt_add_attn(tt_model *tm, const char *dt, const tt_cfg *c,
                        const char *prefix) {
    char n[160];
    uint64_t d = (uint64_t)c->d, h = (uint64_t)c->h, E = (uint64_t)c->E;
    snprintf(n, sizeof n, "%s.k_proj.weight", prefix);
    tt_add(tm, n, dt, 2, h, d, 0);
    snprintf(n, sizeof n, "%s.v_proj.weight", prefix);
    tt_add(tm, n, dt, 2, h, d, 0);
    if (c->attention_bias) {
        snprintf(n, sizeof n, "%s.k_proj.bias", prefix);
        tt_add(tm, n, dt, 1, h, 0, 0);
        snprintf(n, sizeof n, "%s.v_proj.bias", prefix);
        tt_add(tm, n, dt, 1, h, 0, 0);
    }
    snprintf(n, sizeof n, "%s.q_proj.w_gate", prefix);
    tt_add(tm, n, dt, 2, d, E, 0);
    snprintf(n, sizeof n, "%s.q_proj.experts.w", prefix);
    tt_add(tm, n, dt, 3, E, d, h);
    snprintf(n, sizeof n, "%s.q_proj.output_experts.w", prefix);
    tt_add(tm, n, dt, 3, E, h, d);
}

static void tt_add_ffn(tt_model *tm, const char *dt, const tt_cfg *c,
                       const char *prefix) {
    char n[160];
    uint64_t d = (uint64_t)c->d, f = (uint64_t)c->ffn;
    snprintf(n, sizeof n, "%s.fc1.weight", prefix);
    tt_add(tm, n, dt, 2, f, d, 0);
    snprintf(n, sizeof n, "%s.fc1.bias", prefix);
    tt_add(tm, n, dt, 1, f, 0, 0);
    snprintf(n, sizeof n, "%s.fc2.weight", prefix);
    tt_add(tm, n, dt, 2, d, f, 0);
    snprintf(n, sizeof n, "%s.fc2.bias", prefix);
    tt_add(tm, n, dt, 1, d, 0, 0);
}

// Every tensor config c calls for (spec §3), all of dtype dt.
static tt_model *tt_new(const tt_cfg *c, const char *dt) {
    tt_model *tm = calloc(1, sizeof *tm);
    ASSERT_TRUE(tm != NULL);
    tm->header_len = -1;
    tm->truncate = -1;
    char p[128];
    uint64_t V = (uint64_t)c->V, d = (uint64_t)c->d;
    tt_add(tm, "encoder.embed_tokens.weight", dt, 2, V, d, 0);
    for (int i = 0; i < c->enc_layers; i++) {
        snprintf(p, sizeof p, "encoder.layers.%d.self_attn", i);
        tt_add_attn(tm, dt, c, p);
        snprintf(p, sizeof p, "encoder.layers.%d.self_attn_layer_norm", i);
        tt_add_ln(tm, dt, p, c->d);
        snprintf(p, sizeof p, "encoder.layers.%d", i);
        tt_add_ffn(tm, dt, c, p);
        snprintf(p, sizeof p, "encoder.layers.%d.final_layer_norm", i);
        tt_add_ln(tm, dt, p, c->d);
    }
    if (c->normalize_before) tt_add_ln(tm, dt, "encoder.layer_norm", c->d);
    if (!c->share) tt_add(tm, "decoder.embed_tokens.weight", dt, 2, V, d, 0);
    for (int i = 0; i < c->dec_layers; i++) {
        snprintf(p, sizeof p, "decoder.layers.%d.self_attn", i);
        tt_add_attn(tm, dt, c, p);
        snprintf(p, sizeof p, "decoder.layers.%d.self_attn_layer_norm", i);
        tt_add_ln(tm, dt, p, c->d);
        snprintf(p, sizeof p, "decoder.layers.%d.encoder_attn", i);
        tt_add_attn(tm, dt, c, p);
        snprintf(p, sizeof p, "decoder.layers.%d.encoder_attn_layer_norm", i);
        tt_add_ln(tm, dt, p, c->d);
        snprintf(p, sizeof p, "decoder.layers.%d", i);
        tt_add_ffn(tm, dt, c, p);
        snprintf(p, sizeof p, "decoder.layers.%d.final_layer_norm", i);
        tt_add_ln(tm, dt, p, c->d);
    }
    if (c->normalize_before) tt_add_ln(tm, dt, "decoder.layer_norm", c->d);
    if (!c->share)
        tt_add(tm, "decoder.output_projection.weight", dt, 2, V, d, 0);
    return tm;
}

static void tt_free(tt_model *tm) {
    for (int i = 0; i < tm->n; i++) free(tm->t[i].val);
    free(tm);
}

// Test-side float32 -> half, for values that are exact in half (and inf/NaN).
static uint16_t tt_f16(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    if (isnan(v)) return (uint16_t)(sign | 0x7e00u);
    if (isinf(v)) return (uint16_t)(sign | 0x7c00u);
    float a = fabsf(v);
    if (a == 0.0f) return sign;
    if (a < ldexpf(1.0f, -14))  // subnormal half: a = mant · 2^-24
        return (uint16_t)(sign | (uint16_t)ldexpf(a, 24));
    int e = (int)((b >> 23) & 0xffu) - 127 + 15;
    return (uint16_t)(sign | (uint16_t)(e << 10) | (uint16_t)((b >> 13) & 0x3ffu));
}

static uint16_t tt_bf16(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return (uint16_t)(b >> 16);
}

static size_t tt_dtsize(const char *dt) {
    if (strcmp(dt, "F32") == 0) return 4;
    if (strcmp(dt, "F16") == 0 || strcmp(dt, "BF16") == 0) return 2;
    return 1;
}

typedef struct tt_buf {
    char *p;
    size_t len, cap;
} tt_buf;

__attribute__((format(printf, 2, 3)))
static void tt_printf(tt_buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        ASSERT_TRUE(k >= 0);
        if ((size_t)k < b->cap - b->len) {
            b->len += (size_t)k;
            return;
        }
        b->cap = 2 * b->cap + (size_t)k + 64;
        b->p = realloc(b->p, b->cap);
        ASSERT_TRUE(b->p != NULL);
    }
}

static void tt_write_file(const char *dir, const char *file, const void *data,
                          size_t len) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    if (!f) MOA_TEST_FAIL("cannot write %s: %s", path, strerror(errno));
    ASSERT_EQ_INT(fwrite(data, 1, len, f), len);
    ASSERT_EQ_INT(fclose(f), 0);
}

// Writes model.safetensors for tm into dir.
static void tt_write(const tt_model *tm, const char *dir) {
    uint64_t *begin = calloc((size_t)tm->n + 1, sizeof *begin);
    uint64_t *end = calloc((size_t)tm->n + 1, sizeof *end);
    ASSERT_TRUE(begin && end);
    uint64_t off = 0;
    for (int i = 0; i < tm->n; i++) {
        off = (off + 7) / 8 * 8;
        begin[i] = off;
        end[i] = off + tm->t[i].n * tt_dtsize(tm->t[i].dtype);
        off = end[i];
    }
    uint64_t data_len = off;

    tt_buf h = {0};
    if (tm->header) {
        tt_printf(&h, "%s", tm->header);
    } else {
        tt_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
        for (int j = 0; j < tm->n + (tm->duplicate_first ? 1 : 0); j++) {
            int i = j < tm->n ? j : 0;
            const tt_tensor *t = &tm->t[i];
            int a = t->alias >= 0 ? t->alias : i;
            tt_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
                      t->dtype);
            for (int k = 0; k < t->ndim; k++)
                tt_printf(&h, "%s%llu", k ? "," : "",
                          (unsigned long long)t->shape[k]);
            tt_printf(&h, "],\"data_offsets\":[%lld,%lld]}",
                      (long long)begin[a] + (long long)t->shift,
                      (long long)end[a] + (long long)t->shift);
        }
        tt_printf(&h, "}");
        // Pad with spaces (as safetensors writers do) so the data area starts
        // 8-aligned, or at an odd offset when asked to misalign.
        while ((8 + h.len) % 8 != (tm->misalign ? 1u : 0u)) tt_printf(&h, " ");
    }

    size_t total = 8 + h.len + (size_t)data_len;
    unsigned char *file = calloc(total, 1);
    ASSERT_TRUE(file != NULL);
    uint64_t hl = tm->header_len >= 0 ? (uint64_t)tm->header_len : h.len;
    for (int i = 0; i < 8; i++) file[i] = (unsigned char)(hl >> (8 * i));
    memcpy(file + 8, h.p, h.len);
    unsigned char *data = file + 8 + h.len;
    for (int i = 0; i < tm->n; i++) {
        const tt_tensor *t = &tm->t[i];
        unsigned char *q = data + begin[i];
        size_t es = tt_dtsize(t->dtype);
        for (uint64_t k = 0; k < t->n; k++) {
            if (strcmp(t->dtype, "F32") == 0) {
                memcpy(q + 4 * k, &t->val[k], 4);
            } else if (strcmp(t->dtype, "F16") == 0) {
                uint16_t v = tt_f16(t->val[k]);
                memcpy(q + 2 * k, &v, 2);
            } else if (strcmp(t->dtype, "BF16") == 0) {
                uint16_t v = tt_bf16(t->val[k]);
                memcpy(q + 2 * k, &v, 2);
            } else {
                q[es * k] = 1;
            }
        }
    }
    size_t len = tm->truncate >= 0 && (size_t)tm->truncate < total
                     ? (size_t)tm->truncate
                     : total;
    tt_write_file(dir, "model.safetensors", file, len);
    free(file);
    free(h.p);
    free(begin);
    free(end);
}

// Writes config.json for c; `omit` drops a key, set_key/set_val replace (or
// add) one key's JSON value.
static void tt_write_config(const char *dir, const tt_cfg *c, const char *omit,
                            const char *set_key, const char *set_val) {
    struct {
        const char *k;
        char v[64];
    } kv[] = {
        {"format", "\"moa-translation\""},
        {"format_version", "1"},
        {"name", "\"tiny test model\""},
        {"description", "\"written by tests/test_loader.c\""},
        {"d_model", ""},
        {"encoder_layers", ""},
        {"decoder_layers", ""},
        {"ffn_dim", ""},
        {"activation", "\"relu\""},
        {"normalize_before", ""},
        {"num_experts", ""},
        {"top_k", ""},
        {"head_dim", ""},
        {"attention_bias", ""},
        {"vocab_size", ""},
        {"share_embeddings", ""},
        {"scale_embedding", "true"},
        {"max_positions", ""},
        {"layernorm_eps", "1e-05"},
        {"bos_id", "0"},
        {"pad_id", "1"},
        {"eos_id", "2"},
        {"unk_id", "3"},
        {"decoder_start_id", "2"},
        {"source_lang", "\"en\""},
        {"target_lang", "\"de\""},
        {"metrics", "{\"bleu\": 12.5, \"chrf\": [1, 2]}"},
        {"some_future_key", "[1, {\"x\": null}]"},
    };
    size_t nkv = sizeof kv / sizeof kv[0];
    for (size_t i = 0; i < nkv; i++) {
        const char *k = kv[i].k;
        char *v = kv[i].v;
        size_t n = sizeof kv[i].v;
        if (!strcmp(k, "d_model")) snprintf(v, n, "%d", c->d);
        if (!strcmp(k, "encoder_layers")) snprintf(v, n, "%d", c->enc_layers);
        if (!strcmp(k, "decoder_layers")) snprintf(v, n, "%d", c->dec_layers);
        if (!strcmp(k, "ffn_dim")) snprintf(v, n, "%d", c->ffn);
        if (!strcmp(k, "num_experts")) snprintf(v, n, "%d", c->E);
        if (!strcmp(k, "top_k")) snprintf(v, n, "%d", c->k);
        if (!strcmp(k, "head_dim")) snprintf(v, n, "%d", c->h);
        if (!strcmp(k, "vocab_size")) snprintf(v, n, "%d", c->V);
        if (!strcmp(k, "max_positions")) snprintf(v, n, "%d", c->max_positions);
        if (!strcmp(k, "normalize_before"))
            snprintf(v, n, "%s", c->normalize_before ? "true" : "false");
        if (!strcmp(k, "attention_bias"))
            snprintf(v, n, "%s", c->attention_bias ? "true" : "false");
        if (!strcmp(k, "share_embeddings"))
            snprintf(v, n, "%s", c->share ? "true" : "false");
    }
    tt_buf b = {0};
    tt_printf(&b, "{\n");
    int first = 1, set_done = 0;
    for (size_t i = 0; i < nkv; i++) {
        if (omit && !strcmp(omit, kv[i].k)) continue;
        const char *v = kv[i].v;
        if (set_key && !strcmp(set_key, kv[i].k)) {
            v = set_val;
            set_done = 1;
        }
        tt_printf(&b, "%s  \"%s\": %s", first ? "" : ",\n", kv[i].k, v);
        first = 0;
    }
    if (set_key && !set_done)
        tt_printf(&b, ",\n  \"%s\": %s", set_key, set_val);
    tt_printf(&b, "\n}\n");
    tt_write_file(dir, "config.json", b.p, b.len);
    free(b.p);
}

// A fresh directory under $MOA_TEST_TMP.
static void tt_mkdir(char *dir, size_t n) {
    const char *tmp = getenv("MOA_TEST_TMP");
    snprintf(dir, n, "%s/loader-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) MOA_TEST_FAIL("mkdtemp %s: %s", dir, strerror(errno));
}

static void tt_rmdir(const char *dir) {
    static const char *const files[] = {"config.json", "model.safetensors",
                                        "stderr.txt"};
    char p[600];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

// Writes c and tm into a fresh directory.
static void tt_save(char *dir, size_t n, const tt_cfg *c, const tt_model *tm) {
    tt_mkdir(dir, n);
    tt_write_config(dir, c, NULL, NULL, NULL);
    tt_write(tm, dir);
}

// Loads dir, expects failure naming dir/file and containing phrase.
static void expect_reject(int line, const char *dir, const char *file,
                          const char *phrase) {
    char err[1024];
    strcpy(err, "(unset)");
    moa_model *m = moa_model_load(dir, err, sizeof err);
    if (m) {
        moa_model_free(m);
        MOA_TEST_FAIL("line %d: loading %s succeeded, expected \"%s\"", line,
                      dir, phrase);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/%s: ", dir, file);
    if (!strstr(err, path) || !strstr(err, phrase))
        MOA_TEST_FAIL("line %d: error \"%s\" lacks \"%s\" or \"%s\"", line, err,
                      path, phrase);
}
#define EXPECT_REJECT(dir, file, phrase) \
    expect_reject(__LINE__, dir, file, phrase)

// Writes the tiny F32 model with one config key changed (or dropped) and
// expects config.json to be refused with phrase.
static void reject_config(int line, const char *omit, const char *key,
                          const char *val, const char *phrase) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_mkdir(dir, sizeof dir);
    tt_write_config(dir, &c, omit, key, val);
    tt_write(tm, dir);
    expect_reject(line, dir, "config.json", phrase);
    tt_free(tm);
    tt_rmdir(dir);
}
#define REJECT_CONFIG(omit, key, val, phrase) \
    reject_config(__LINE__, omit, key, val, phrase)

static moa_model *load_ok(const char *dir) {
    char err[1024];
    strcpy(err, "(unset)");
    moa_model *m = moa_model_load(dir, err, sizeof err);
    if (!m) MOA_TEST_FAIL("loading %s failed: %s", dir, err);
    return m;
}

// --- checking a loaded model against what was written ---------------------------

typedef struct tt_seen {
    int n;         // views checked
    size_t bytes;  // their float32 bytes
} tt_seen;

static void check_view(const moa_model *m, const tt_model *tm,
                       const char *name, const float *view, tt_seen *seen) {
    tt_tensor *t = tt_find((tt_model *)tm, name);
    if (!t) MOA_TEST_FAIL("writer lacks %s", name);
    if (!view) MOA_TEST_FAIL("view for %s is NULL", name);
    if ((uintptr_t)view % 4 != 0) MOA_TEST_FAIL("view for %s misaligned", name);
    const char *lo = m->map, *hi = lo + m->map_len;
    int in_map = (const char *)view >= lo && (const char *)view < hi;
    // Aligned F32 is used in place; everything else is an owned copy.
    if (strcmp(t->dtype, "F32") != 0 && in_map)
        MOA_TEST_FAIL("%s (%s) is a view into the file", name, t->dtype);
    if (!in_map && (uintptr_t)view % 64 != 0)
        MOA_TEST_FAIL("owned copy of %s not 64-byte aligned", name);
    for (uint64_t i = 0; i < t->n; i++)
        if (memcmp(&view[i], &t->val[i], sizeof(float)) != 0)
            MOA_TEST_FAIL("%s[%llu] = %.9g, wrote %.9g", name,
                          (unsigned long long)i, view[i], t->val[i]);
    seen->n++;
    seen->bytes += (size_t)t->n * sizeof(float);
}

static void check_attn(const moa_model *m, const tt_model *tm,
                       const moa_attn_w *w, const char *p, tt_seen *nc) {
    char n[160];
#define CV(field, suffix)                                  \
    do {                                                   \
        snprintf(n, sizeof n, "%s.%s", p, suffix);         \
        check_view(m, tm, n, w->field, nc);                \
    } while (0)
    CV(k_w, "k_proj.weight");
    CV(v_w, "v_proj.weight");
    if (m->cfg.attention_bias) {
        CV(k_b, "k_proj.bias");
        CV(v_b, "v_proj.bias");
    } else {
        ASSERT_TRUE(w->k_b == NULL && w->v_b == NULL);
    }
    CV(w_gate, "q_proj.w_gate");
    CV(q_experts, "q_proj.experts.w");
    CV(o_experts, "q_proj.output_experts.w");
}

static void check_ln(const moa_model *m, const tt_model *tm, const moa_ln_w *w,
                     const char *p, tt_seen *nc) {
    char n[160];
    CV(w, "weight");
    CV(b, "bias");
}

static void check_ffn(const moa_model *m, const tt_model *tm,
                      const moa_ffn_w *w, const char *p, tt_seen *nc) {
    char n[160];
    CV(fc1_w, "fc1.weight");
    CV(fc1_b, "fc1.bias");
    CV(fc2_w, "fc2.weight");
    CV(fc2_b, "fc2.bias");
#undef CV
}

// Every view the model holds equals what was written; returns the count.
static int check_model(const moa_model *m, const tt_model *tm) {
    const moa_config *c = &m->cfg;
    tt_seen nc = {0, 0};
    char p[128];
    check_view(m, tm, "encoder.embed_tokens.weight", m->enc_embed, &nc);
    for (int i = 0; i < c->encoder_layers; i++) {
        snprintf(p, sizeof p, "encoder.layers.%d.self_attn", i);
        check_attn(m, tm, &m->enc[i].self_attn, p, &nc);
        snprintf(p, sizeof p, "encoder.layers.%d.self_attn_layer_norm", i);
        check_ln(m, tm, &m->enc[i].self_attn_ln, p, &nc);
        snprintf(p, sizeof p, "encoder.layers.%d", i);
        check_ffn(m, tm, &m->enc[i].ffn, p, &nc);
        snprintf(p, sizeof p, "encoder.layers.%d.final_layer_norm", i);
        check_ln(m, tm, &m->enc[i].final_ln, p, &nc);
    }
    for (int i = 0; i < c->decoder_layers; i++) {
        snprintf(p, sizeof p, "decoder.layers.%d.self_attn", i);
        check_attn(m, tm, &m->dec[i].self_attn, p, &nc);
        snprintf(p, sizeof p, "decoder.layers.%d.self_attn_layer_norm", i);
        check_ln(m, tm, &m->dec[i].self_attn_ln, p, &nc);
        snprintf(p, sizeof p, "decoder.layers.%d.encoder_attn", i);
        check_attn(m, tm, &m->dec[i].cross_attn, p, &nc);
        snprintf(p, sizeof p, "decoder.layers.%d.encoder_attn_layer_norm", i);
        check_ln(m, tm, &m->dec[i].cross_attn_ln, p, &nc);
        snprintf(p, sizeof p, "decoder.layers.%d", i);
        check_ffn(m, tm, &m->dec[i].ffn, p, &nc);
        snprintf(p, sizeof p, "decoder.layers.%d.final_layer_norm", i);
        check_ln(m, tm, &m->dec[i].final_ln, p, &nc);
    }
    if (c->normalize_before) {
        check_ln(m, tm, &m->enc_final_ln, "encoder.layer_norm", &nc);
        check_ln(m, tm, &m->dec_final_ln, "decoder.layer_norm", &nc);
    } else {
        ASSERT_TRUE(m->enc_final_ln.w == NULL && m->dec_final_ln.w == NULL);
    }
    if (c->share_embeddings) {
        ASSERT_TRUE(m->dec_embed == m->enc_embed);
        ASSERT_TRUE(m->out_proj == m->enc_embed);
    } else {
        check_view(m, tm, "decoder.embed_tokens.weight", m->dec_embed, &nc);
        check_view(m, tm, "decoder.output_projection.weight", m->out_proj,
                   &nc);
    }
    // f32_bytes: the float32 size of exactly the bound tensors.
    ASSERT_EQ_INT(moa_model_f32_bytes(m), nc.bytes);
    return nc.n;
}

// Number of tensors in tm that a loader binds.
static int count_bound(const tt_cfg *c) {
    int attn = 5 + (c->attention_bias ? 2 : 0);
    int enc = 1 + c->enc_layers * (attn + 2 + 4 + 2);
    int dec = c->dec_layers * (2 * attn + 2 + 2 + 4 + 2);
    int extra = (c->normalize_before ? 4 : 0) + (c->share ? 0 : 2);
    return enc + dec + extra;
}

// --- rejections: directory and config.json ------------------------------------

static void test_reject_missing_dir(void) {
    char dir[512];
    tt_mkdir(dir, sizeof dir);
    tt_rmdir(dir);
    char err[1024];
    ASSERT_TRUE(moa_model_load(dir, err, sizeof err) == NULL);
    char want[700];
    snprintf(want, sizeof want,
             "%s/config.json: cannot open: No such file or directory", dir);
    ASSERT_STR_EQ(err, want);
    // A NULL err buffer is fine too.
    ASSERT_TRUE(moa_model_load(dir, NULL, 0) == NULL);
    ASSERT_TRUE(moa_model_load(NULL, err, sizeof err) == NULL);
    ASSERT_TRUE(err[0] != '\0');
}

static void test_reject_missing_config(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_mkdir(dir, sizeof dir);
    tt_write(tm, dir);
    EXPECT_REJECT(dir, "config.json", "cannot open: No such file or directory");
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_reject_missing_safetensors(void) {
    tt_cfg c = tt_tiny();
    char dir[512];
    tt_mkdir(dir, sizeof dir);
    tt_write_config(dir, &c, NULL, NULL, NULL);
    EXPECT_REJECT(dir, "model.safetensors",
                  "cannot open: No such file or directory");
    tt_rmdir(dir);
}

static void test_reject_config_bad_json(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    const char *bad = "{\n  \"d_model\": 8,\n  \"top_k\": ,\n}\n";
    tt_write_file(dir, "config.json", bad, strlen(bad));
    EXPECT_REJECT(dir, "config.json", "not valid JSON (line 3");
    const char *trailing = "{\"d_model\": 8} x";
    tt_write_file(dir, "config.json", trailing, strlen(trailing));
    EXPECT_REJECT(dir, "config.json", "not valid JSON");
    tt_write_file(dir, "config.json", "[1, 2]", 6);
    EXPECT_REJECT(dir, "config.json", "not a JSON object");
    tt_write_file(dir, "config.json", "", 0);
    EXPECT_REJECT(dir, "config.json", "not valid JSON");
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_reject_config_missing_key(void) {
    REJECT_CONFIG("head_dim", NULL, NULL, "missing key \"head_dim\"");
    REJECT_CONFIG("pad_id", NULL, NULL, "missing key \"pad_id\"");
    REJECT_CONFIG("source_lang", NULL, NULL, "missing key \"source_lang\"");
    REJECT_CONFIG("decoder_start_id", NULL, NULL,
                  "missing key \"decoder_start_id\"");
}

static void test_reject_config_wrong_type(void) {
    REJECT_CONFIG(NULL, "d_model", "\"8\"", "\"d_model\" must be an integer");
    REJECT_CONFIG(NULL, "ffn_dim", "16.5", "\"ffn_dim\" must be an integer");
    REJECT_CONFIG(NULL, "vocab_size", "1e300", "\"vocab_size\" must be an integer");
    REJECT_CONFIG(NULL, "normalize_before", "1",
                  "\"normalize_before\" must be true or false");
    REJECT_CONFIG(NULL, "source_lang", "7", "\"source_lang\" must be a string");
    REJECT_CONFIG(NULL, "name", "null", "\"name\" must be a string");
    REJECT_CONFIG(NULL, "layernorm_eps", "\"small\"",
                  "\"layernorm_eps\" must be a number");
}

static void test_reject_config_k_gt_e(void) {
    REJECT_CONFIG(NULL, "top_k", "5", "top_k = 5 is out of range [1, num_experts = 4]");
    REJECT_CONFIG(NULL, "top_k", "0", "top_k = 0 is out of range");
}

static void test_reject_config_d_odd(void) {
    REJECT_CONFIG(NULL, "d_model", "7", "d_model = 7 must be even");
    REJECT_CONFIG(NULL, "d_model", "0", "d_model = 0 is out of range");
    REJECT_CONFIG(NULL, "d_model", "-8", "d_model = -8 is out of range");
}

static void test_reject_config_ranges(void) {
    REJECT_CONFIG(NULL, "head_dim", "0", "head_dim = 0 is out of range");
    REJECT_CONFIG(NULL, "encoder_layers", "0", "encoder_layers = 0 is out of range");
    REJECT_CONFIG(NULL, "decoder_layers", "65", "decoder_layers = 65 is out of range");
    REJECT_CONFIG(NULL, "num_experts", "0", "num_experts = 0 is out of range");
    REJECT_CONFIG(NULL, "vocab_size", "3", "vocab_size = 3 is out of range");
    REJECT_CONFIG(NULL, "max_positions", "2", "max_positions = 2 is out of range");
    REJECT_CONFIG(NULL, "layernorm_eps", "0", "layernorm_eps = 0 must be a positive");
    REJECT_CONFIG(NULL, "layernorm_eps", "1e-60", "must be a positive float32");
    REJECT_CONFIG(NULL, "activation", "\"tanh\"", "activation \"tanh\" is not");
    REJECT_CONFIG(NULL, "decoder_start_id", "12",
                  "decoder_start_id = 12 is out of range [0, vocab_size = 12)");
    REJECT_CONFIG(NULL, "format", "\"other\"", "format \"other\" is not \"moa-translation\"");
}

static void test_reject_config_special_ids(void) {
    REJECT_CONFIG(NULL, "pad_id", "0", "pad_id = 0, but special ids are fixed");
    REJECT_CONFIG(NULL, "bos_id", "1", "bos_id = 1, but special ids are fixed");
    REJECT_CONFIG(NULL, "eos_id", "3", "eos_id = 3");
    REJECT_CONFIG(NULL, "unk_id", "4", "unk_id = 4");
}

static void test_reject_config_format_version(void) {
    REJECT_CONFIG(NULL, "format_version", "2", "format_version 2 is not supported");
    REJECT_CONFIG(NULL, "format_version", "\"1\"",
                  "\"format_version\" must be an integer");
}

// --- rejections: model.safetensors ---------------------------------------------

// Saves the tiny model with tm already corrupted and expects phrase.
static void reject_st(int line, tt_model *tm, const char *phrase) {
    tt_cfg c = tt_tiny();
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    expect_reject(line, dir, "model.safetensors", phrase);
    tt_rmdir(dir);
}
#define REJECT_ST(tm, phrase) reject_st(__LINE__, tm, phrase)

static void test_reject_st_short(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    for (int cut = 0; cut < 8; cut++) {
        tm->truncate = cut;
        REJECT_ST(tm, "is too short");
    }
    tt_free(tm);
}

static void test_reject_st_header_past_end(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tm->header_len = 1000000;
    REJECT_ST(tm, "header length 1000000 runs past the end of the file");
    tm->header_len = INT64_MAX;
    REJECT_ST(tm, "runs past the end of the file");
    // The file ends inside the header.
    tm->header_len = -1;
    tm->truncate = 100;
    REJECT_ST(tm, "runs past the end of the file");
    tt_free(tm);
}

static void test_reject_st_header_not_json(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tm->header = "{\"encoder.embed_tokens.weight\": {\"dtype\": \"F32\", ";
    REJECT_ST(tm, "header is not valid JSON");
    tm->header = "not json at all";
    REJECT_ST(tm, "header is not valid JSON (line 1, column 1)");
    tm->header = "";
    REJECT_ST(tm, "header is not valid JSON");
    tm->header = "[1,2,3]";
    REJECT_ST(tm, "header is not a JSON object");
    tm->header = "{\"a\": 5}";
    REJECT_ST(tm, "tensor a: entry is not a JSON object");
    tm->header = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}";
    REJECT_ST(tm, "tensor a: \"data_offsets\" must be [begin, end]");
    tm->header = "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}";
    REJECT_ST(tm, "tensor a: \"shape\" must be an array");
    tm->header = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], "
                 "\"data_offsets\": [0, 4]}}";
    REJECT_ST(tm, "tensor a: \"shape\" must be an array of at most 8");
    tm->header = "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}";
    REJECT_ST(tm, "tensor a: \"dtype\" missing or not a string");
    tm->header = "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
                 "\"data_offsets\": [0, 4]}}";
    REJECT_ST(tm, "tensor a: shape is too large");
    tm->header = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}";
    REJECT_ST(tm, "tensor a: data_offsets [8, 4] end before they begin");
    tt_free(tm);
}

static void test_reject_st_range_past_end(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tt_find(tm, "decoder.layers.0.fc2.bias")->shift = 1 << 20;
    REJECT_ST(tm, "tensor decoder.layers.0.fc2.bias: data_offsets [");
    REJECT_ST(tm, "run past the end of the file");
    tt_free(tm);
}

static void test_reject_st_overlap(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tt_tensor *v = tt_find(tm, "encoder.layers.0.self_attn.v_proj.weight");
    v->alias = (int)(tt_find(tm, "encoder.layers.0.self_attn.k_proj.weight") - tm->t);
    v->shift = 4;
    REJECT_ST(tm, "tensors encoder.layers.0.self_attn.k_proj.weight [");
    REJECT_ST(tm, "and encoder.layers.0.self_attn.v_proj.weight [");
    REJECT_ST(tm, "overlap");
    // Exactly the same range overlaps too.
    v->shift = 0;
    REJECT_ST(tm, "overlap");
    tt_free(tm);
}

static void test_reject_st_duplicate(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tm->duplicate_first = 1;
    REJECT_ST(tm, "duplicate tensor encoder.embed_tokens.weight");
    tt_free(tm);
}

static void test_reject_st_byte_size(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    // The header claims 12×9 floats; the range holds 12×8.
    tt_find(tm, "encoder.embed_tokens.weight")->shape[1] = 9;
    REJECT_ST(tm, "tensor encoder.embed_tokens.weight: data_offsets [0, 384] "
                  "hold 384 bytes, but F32 [12,9] takes 432 bytes");
    tt_free(tm);
}

static void test_reject_st_unknown_dtype(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    snprintf(tt_find(tm, "decoder.layers.0.fc1.bias")->dtype, 16, "I8");
    REJECT_ST(tm, "tensor decoder.layers.0.fc1.bias has unknown dtype \"I8\"");
    // Even on a tensor the config does not call for.
    tt_free(tm);
    tm = tt_new(&c, "F32");
    tt_add(tm, "encoder.version", "I64", 1, 1, 0, 0);
    REJECT_ST(tm, "tensor encoder.version has unknown dtype \"I64\"");
    tt_free(tm);
}

static void test_reject_st_missing_tensor(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tt_remove(tm, "decoder.layers.0.encoder_attn.q_proj.w_gate");
    REJECT_ST(tm, "missing tensor decoder.layers.0.encoder_attn.q_proj.w_gate");
    tt_free(tm);
}

static void test_reject_st_wrong_shape(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    // experts.w is E×d×h = [4,8,4]; transposed it is [4,4,8].
    tt_add(tm, "encoder.layers.0.self_attn.q_proj.experts.w", "F32", 3, 4, 4, 8);
    REJECT_ST(tm, "tensor encoder.layers.0.self_attn.q_proj.experts.w has shape "
                  "[4,4,8], config.json implies [4,8,4]");
    tt_free(tm);
    tm = tt_new(&c, "F32");
    tt_add(tm, "decoder.layers.0.final_layer_norm.bias", "F32", 2, 1, 8, 0);
    REJECT_ST(tm, "tensor decoder.layers.0.final_layer_norm.bias has shape "
                  "[1,8], config.json implies [8]");
    tt_free(tm);
}

static void test_reject_st_nan(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tt_find(tm, "decoder.layers.0.fc2.weight")->val[17] = NAN;
    REJECT_ST(tm, "tensor decoder.layers.0.fc2.weight holds NaN or infinity");
    tt_free(tm);
    // Infinity in a widened F16 tensor, and in a misaligned F32 copy.
    tm = tt_new(&c, "F16");
    tt_find(tm, "encoder.layers.0.self_attn_layer_norm.bias")->val[3] = -INFINITY;
    REJECT_ST(tm, "tensor encoder.layers.0.self_attn_layer_norm.bias holds NaN "
                  "or infinity (element 3)");
    tt_free(tm);
    tm = tt_new(&c, "F32");
    tm->misalign = 1;
    tt_find(tm, "encoder.embed_tokens.weight")->val[95] = INFINITY;
    REJECT_ST(tm, "tensor encoder.embed_tokens.weight holds NaN or infinity");
    tt_free(tm);
}

// Hypotheses of sentences 0-1 translated (greedy, beam 4 with two, seeded
// sampling) and scored against a fixed target: how many came back, each
// with a finite score (fails the test otherwise).
static int usable_hypotheses(moa_model *m) {
    char err[512];
    moa_session *s = moa_session_create(m, 8, err, sizeof err);
    if (!s) MOA_TEST_FAIL("session: %s", err);
    int a[3] = {5, 11, 4}, b[1] = {7}, t[2] = {6, 9};
    const int *src[2] = {a, b}, *tgt[2] = {t, t};
    int len[2] = {3, 1}, tlen[2] = {2, 2}, total = 0;
    for (int mode = 0; mode < 4; mode++) {
        moa_search_opts o;
        moa_search_opts_default(&o);
        o.beam_size = mode == 1 ? 4 : 1;
        o.num_hypotheses = mode == 1 ? 2 : 1;
        if (mode == 2) {
            o.sampling_topk = 5;
            o.seed = 3;
        }
        moa_result r[2];
        int rc = mode == 3 ? moa_score(s, src, len, tgt, tlen, 2, 0, r, err, sizeof err)
                           : moa_translate(s, src, len, 2, &o, r, err, sizeof err);
        if (rc != 0) MOA_TEST_FAIL("mode %d: rc %d: %s", mode, rc, err);
        for (int i = 0; i < 2; i++) {
            ASSERT_TRUE(r[i].n_hyps >= 0 && r[i].n_hyps <= 2);
            for (int h = 0; h < r[i].n_hyps; h++)
                if (!isfinite(r[i].hyps[h].score) || !isfinite(r[i].hyps[h].log_prob))
                    MOA_TEST_FAIL("mode %d sentence %d hypothesis %d: score %g", mode, i, h,
                                  r[i].hyps[h].score);
            total += r[i].n_hyps;
            moa_result_clear(&r[i]);
        }
        ASSERT_EQ_INT(moa_session_live(s), 0);
    }
    moa_session_free(s);
    return total;
}

// Finite weights whose numbers overflow (found by fuzz_model_load): the
// model loads, every log-prob is NaN, and each sentence comes back with no
// hypothesis rather than one made of NaN-scored tokens; the session stays
// usable. The same model with sane weights gives every hypothesis asked for.
static void test_overflowing_model_gives_no_hypothesis(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    moa_model *m = load_ok(dir);
    ASSERT_EQ_INT(usable_hypotheses(m), 2 * (1 + 2 + 1 + 1));
    moa_model_free(m);
    tt_rmdir(dir);
    tt_tensor *e = tt_find(tm, "encoder.embed_tokens.weight");
    for (uint64_t i = 0; i < e->n; i++) e->val[i] = i % 2 ? 3e38f : -3e38f;
    tt_save(dir, sizeof dir, &c, tm);
    m = load_ok(dir);
    ASSERT_EQ_INT(usable_hypotheses(m), 0);
    moa_model_free(m);
    tt_rmdir(dir);
    tt_free(tm);
}

static void test_reject_shared_embed_differs(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tt_tensor *e = tt_find(tm, "encoder.embed_tokens.weight");
    tt_tensor *d = tt_add(tm, "decoder.embed_tokens.weight", "F32", 2, 12, 8, 0);
    e = tt_find(tm, "encoder.embed_tokens.weight");
    memcpy(d->val, e->val, 96 * sizeof(float));
    d->val[40] += 0.5f;
    REJECT_ST(tm, "tensor decoder.embed_tokens.weight differs from "
                  "encoder.embed_tokens.weight (element 40");
    tt_free(tm);
    // Also output_projection, and a wrong shape there.
    tm = tt_new(&c, "F32");
    e = tt_find(tm, "encoder.embed_tokens.weight");
    d = tt_add(tm, "decoder.output_projection.weight", "F32", 2, 12, 8, 0);
    e = tt_find(tm, "encoder.embed_tokens.weight");
    memcpy(d->val, e->val, 96 * sizeof(float));
    d->val[0] = -d->val[0] + 0.25f;
    REJECT_ST(tm, "tensor decoder.output_projection.weight differs");
    tt_add(tm, "decoder.output_projection.weight", "F32", 2, 8, 12, 0);
    REJECT_ST(tm, "tensor decoder.output_projection.weight has shape [8,12], "
                  "config.json implies [12,8]");
    tt_free(tm);
}

static void test_reject_unshared_missing_projection(void) {
    tt_cfg c = tt_tiny();
    c.share = 0;
    tt_model *tm = tt_new(&c, "F32");
    tt_remove(tm, "decoder.output_projection.weight");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    EXPECT_REJECT(dir, "model.safetensors",
                  "missing tensor decoder.output_projection.weight");
    tt_free(tm);
    tt_rmdir(dir);
}

// Truncations and byte flips anywhere in the file: refused or loaded, never a
// crash (the runner reports a signal; ASan builds catch bad reads).
static void test_reject_never_crashes(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    ASSERT_TRUE(f != NULL);
    unsigned char *orig = malloc(1 << 16);
    size_t len = fread(orig, 1, 1 << 16, f);
    fclose(f);
    ASSERT_TRUE(len > 1000 && len < (1 << 16));
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | orig[i];
    int loaded = 0, refused = 0;
    char err[1024];
    for (size_t cut = 0; cut < len; cut += cut < 8 + hl + 16 ? 7 : 61) {
        tt_write_file(dir, "model.safetensors", orig, cut);
        moa_model *m = moa_model_load(dir, err, sizeof err);
        if (m) loaded++, moa_model_free(m);
        else refused++;
    }
    ASSERT_EQ_INT(loaded, 0);
    static const char pick[] = "\"{}[],:0123456789-.eE x\\";
    unsigned char *mut = malloc(len);
    uint32_t s = 1;
    for (int round = 0; round < 400; round++) {
        memcpy(mut, orig, len);
        for (int k = 0; k < 1 + round % 3; k++) {
            s = s * 1103515245u + 12345u;
            size_t at = (s >> 8) % (8 + hl);
            s = s * 1103515245u + 12345u;
            mut[at] = (unsigned char)pick[(s >> 8) % (sizeof pick - 1)];
        }
        tt_write_file(dir, "model.safetensors", mut, len);
        moa_model *m = moa_model_load(dir, err, sizeof err);
        if (m) loaded++, moa_model_free(m);
        else refused++;
    }
    ASSERT_TRUE(refused > 0);
    free(mut);
    free(orig);
    tt_free(tm);
    tt_rmdir(dir);
}

// --- loads ---------------------------------------------------------------------

static void load_and_check(const tt_cfg *c, tt_model *tm, int expect_in_place) {
    char dir[512];
    tt_save(dir, sizeof dir, c, tm);
    moa_model *m = load_ok(dir);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(c));
    ASSERT_STR_EQ(moa_model_dir(m), dir);
    // In place means every F32 view points into the map, i.e. nothing owned.
    if (expect_in_place) ASSERT_EQ_INT(m->n_owned, 0);
    else ASSERT_TRUE(m->n_owned > 0);
    moa_model_free(m);
    tt_rmdir(dir);
}

static void test_load_f32(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    moa_model *m = load_ok(dir);
    const moa_config *g = moa_model_config(m);
    ASSERT_EQ_INT(g->d_model, 8);
    ASSERT_EQ_INT(g->encoder_layers, 1);
    ASSERT_EQ_INT(g->decoder_layers, 1);
    ASSERT_EQ_INT(g->ffn_dim, 16);
    ASSERT_EQ_INT(g->num_experts, 4);
    ASSERT_EQ_INT(g->top_k, 2);
    ASSERT_EQ_INT(g->head_dim, 4);
    ASSERT_EQ_INT(g->vocab_size, 12);
    ASSERT_EQ_INT(g->activation, MOA_ACT_RELU);
    ASSERT_EQ_INT(g->normalize_before, 0);
    ASSERT_EQ_INT(g->attention_bias, 0);
    ASSERT_EQ_INT(g->share_embeddings, 1);
    ASSERT_EQ_INT(g->scale_embedding, 1);
    ASSERT_EQ_INT(g->max_positions, 1024);
    ASSERT_NEAR(g->layernorm_eps, 1e-5, 1e-12);
    ASSERT_EQ_INT(g->bos_id, 0);
    ASSERT_EQ_INT(g->pad_id, 1);
    ASSERT_EQ_INT(g->eos_id, 2);
    ASSERT_EQ_INT(g->unk_id, 3);
    ASSERT_EQ_INT(g->decoder_start_id, 2);
    ASSERT_STR_EQ(g->source_lang, "en");
    ASSERT_STR_EQ(g->target_lang, "de");
    ASSERT_STR_EQ(g->name, "tiny test model");
    ASSERT_STR_EQ(moa_model_dir(m), dir);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));
    ASSERT_EQ_INT(m->n_owned - m->n_packed, 0);  // all F32 aligned: used in place
    // packed copies (AVX-512 path): K, V and each expert's Q and O of every
    // attention module, both FFN products of every layer, the output projection
    ASSERT_EQ_INT(m->n_packed, moa_pack_available()
                                   ? (2 + 2 * g->num_experts) *
                                             (g->encoder_layers + 2 * g->decoder_layers) +
                                         2 * (g->encoder_layers + g->decoder_layers) + 1
                                   : 0);
    ASSERT_EQ_INT(m->n_positions, 1024 + 1 + 2);
    moa_model_free(m);
    // A trailing slash names the same directory.
    char slash[600];
    snprintf(slash, sizeof slash, "%s/", dir);
    m = load_ok(slash);
    ASSERT_STR_EQ(moa_model_dir(m), dir);
    moa_model_free(m);
    moa_model_free(NULL);
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_load_f16(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F16");
    // Half subnormals and the largest half.
    tt_tensor *b = tt_find(tm, "encoder.layers.0.fc1.bias");
    b->val[0] = 5.960464477539063e-8f;   // 0x0001
    b->val[1] = -6.097555160522461e-5f;  // 0x83FF
    b->val[2] = 65504.0f;                // 0x7BFF
    b->val[3] = -0.0f;
    load_and_check(&c, tm, 0);
    tt_free(tm);
}

static void test_load_bf16(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "BF16");
    tt_tensor *b = tt_find(tm, "decoder.layers.0.fc2.bias");
    b->val[0] = ldexpf(1.0f, -133);  // bf16 0x0001, a float32 subnormal
    b->val[1] = 3.3895313892515355e38f;  // 0x7F7F, largest bf16
    load_and_check(&c, tm, 0);
    tt_free(tm);
}

static void test_load_misaligned_f32(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tm->misalign = 1;
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    // The data area really starts at an odd offset.
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    unsigned char hdr[8];
    ASSERT_EQ_INT(fread(hdr, 1, 8, f), 8);
    fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | hdr[i];
    ASSERT_EQ_INT((8 + hl) % 2, 1);
    moa_model *m = load_ok(dir);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));
    ASSERT_EQ_INT(m->n_owned - m->n_packed, count_bound(&c));  // every tensor copied
    moa_model_free(m);
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_load_mixed_dtypes(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    static const char *const dts[] = {"F32", "F16", "BF16"};
    for (int i = 0; i < tm->n; i++)
        snprintf(tm->t[i].dtype, sizeof tm->t[i].dtype, "%s", dts[i % 3]);
    // Shared embeddings given explicitly, identical values in other dtypes.
    tt_tensor *e = tt_find(tm, "encoder.embed_tokens.weight");
    snprintf(e->dtype, sizeof e->dtype, "F32");
    tt_tensor *d = tt_add(tm, "decoder.embed_tokens.weight", "F16", 2, 12, 8, 0);
    tt_tensor *o = tt_add(tm, "decoder.output_projection.weight", "BF16", 2, 12, 8, 0);
    e = tt_find(tm, "encoder.embed_tokens.weight");
    memcpy(d->val, e->val, 96 * sizeof(float));
    memcpy(o->val, e->val, 96 * sizeof(float));
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    // No warning for the identical copies.
    char errpath[600];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", dir);
    fflush(stderr);
    int saved = dup(2);
    int fd = open(errpath, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    ASSERT_TRUE(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    moa_model *m = moa_model_load(dir, NULL, 0);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ASSERT_TRUE(m != NULL);
    struct stat st;
    ASSERT_EQ_INT(stat(errpath, &st), 0);
    ASSERT_EQ_INT(st.st_size, 0);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));
    ASSERT_TRUE(m->n_owned - m->n_packed > 0 && m->n_owned - m->n_packed < count_bound(&c));
    moa_model_free(m);
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_load_prenorm_bias(void) {
    tt_cfg c = tt_tiny();
    c.normalize_before = 1;
    c.attention_bias = 1;
    c.enc_layers = 2;
    c.max_positions = 64;
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    moa_model *m = load_ok(dir);
    ASSERT_EQ_INT(m->cfg.normalize_before, 1);
    ASSERT_EQ_INT(m->cfg.attention_bias, 1);
    ASSERT_EQ_INT(m->cfg.encoder_layers, 2);
    ASSERT_TRUE(m->enc_final_ln.w && m->enc_final_ln.b);
    ASSERT_TRUE(m->dec_final_ln.w && m->dec_final_ln.b);
    ASSERT_TRUE(m->dec[0].cross_attn.k_b && m->dec[0].cross_attn.v_b);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));
    ASSERT_EQ_INT(m->n_positions, 64 + 3);
    moa_model_free(m);
    tt_rmdir(dir);
    // Without the extra tensors the same config is refused.
    tt_remove(tm, "decoder.layer_norm.bias");
    tt_mkdir(dir, sizeof dir);
    tt_write_config(dir, &c, NULL, NULL, NULL);
    tt_write(tm, dir);
    EXPECT_REJECT(dir, "model.safetensors", "missing tensor decoder.layer_norm.bias");
    tt_rmdir(dir);
    tt_free(tm);
}

static void test_load_unshared(void) {
    tt_cfg c = tt_tiny();
    c.share = 0;
    tt_model *tm = tt_new(&c, "BF16");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    moa_model *m = load_ok(dir);
    ASSERT_EQ_INT(m->cfg.share_embeddings, 0);
    ASSERT_TRUE(m->dec_embed != m->enc_embed && m->out_proj != m->dec_embed);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));
    moa_model_free(m);
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_load_unknown_tensor_warns(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    tt_add(tm, "encoder.extra.weight", "F32", 2, 3, 5, 0);
    tt_add(tm, "decoder.layers.0.self_attn.k_proj.bias", "F16", 1, 4, 0, 0);
    // Training-only names are dropped silently.
    tt_add(tm, "encoder.layers.0.self_attn.q_proj.w_noise", "F32", 2, 8, 4, 0);
    tt_add(tm, "encoder.embed_positions._float_tensor", "F32", 1, 1, 0, 0);
    tt_add(tm, "encoder.layers.0.ffd.0.weight", "F32", 2, 16, 8, 0);
    tt_add(tm, "decoder.layers.0.ffd.1.bias", "F32", 1, 8, 0, 0);
    tt_find(tm, "encoder.embed_positions._float_tensor")->val[0] = NAN;  // unused: not checked
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    char errpath[600];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", dir);
    fflush(stderr);
    int saved = dup(2);
    int fd = open(errpath, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    ASSERT_TRUE(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    char err[1024];
    moa_model *m = moa_model_load(dir, err, sizeof err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    if (!m) MOA_TEST_FAIL("load failed: %s", err);
    ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));
    moa_model_free(m);

    char text[4096];
    FILE *f = fopen(errpath, "r");
    ASSERT_TRUE(f != NULL);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char want[1024];
    snprintf(want, sizeof want,
             "warning: %s/model.safetensors: ignoring tensor encoder.extra.weight\n",
             dir);
    ASSERT_STR_CONTAINS(text, want);
    snprintf(want, sizeof want,
             "warning: %s/model.safetensors: ignoring tensor "
             "decoder.layers.0.self_attn.k_proj.bias\n",
             dir);
    ASSERT_STR_CONTAINS(text, want);
    // Exactly those two lines.
    int lines = 0;
    for (const char *p = text; *p; p++) lines += *p == '\n';
    ASSERT_EQ_INT(lines, 2);
    ASSERT_TRUE(strstr(text, "w_noise") == NULL);
    ASSERT_TRUE(strstr(text, "ffd") == NULL);
    ASSERT_TRUE(strstr(text, "_float_tensor") == NULL);
    tt_free(tm);
    tt_rmdir(dir);
}

// --- config parsing directly -------------------------------------------------------

static void test_config_defaults(void) {
    const char *j =
        "{\"d_model\": 16, \"encoder_layers\": 2, \"decoder_layers\": 3,"
        " \"ffn_dim\": 32, \"num_experts\": 8, \"top_k\": 8, \"head_dim\": 2,"
        " \"vocab_size\": 4, \"bos_id\": 0, \"pad_id\": 1, \"eos_id\": 2,"
        " \"unk_id\": 3, \"decoder_start_id\": 3, \"source_lang\": \"fr\","
        " \"target_lang\": \"en\", \"metrics\": 17, \"description\": [] }";
    moa_config cfg;
    char err[512] = "";
    int rc = moa_config_parse(j, strlen(j), "x/config.json", &cfg, err, sizeof err);
    if (rc) MOA_TEST_FAIL("parse failed: %s", err);
    ASSERT_EQ_INT(cfg.activation, MOA_ACT_RELU);
    ASSERT_EQ_INT(cfg.normalize_before, 0);
    ASSERT_EQ_INT(cfg.attention_bias, 0);
    ASSERT_EQ_INT(cfg.share_embeddings, 1);
    ASSERT_EQ_INT(cfg.scale_embedding, 1);
    ASSERT_EQ_INT(cfg.max_positions, 1024);
    ASSERT_TRUE(cfg.layernorm_eps == 1e-5f);
    ASSERT_EQ_INT(cfg.top_k, 8);
    ASSERT_EQ_INT(cfg.decoder_start_id, 3);
    ASSERT_STR_EQ(cfg.name, "");
    ASSERT_STR_EQ(cfg.source_lang, "fr");

    // Explicit values; gelu; the text need not be NUL-terminated.
    const char *k =
        "{\"format\": \"moa-translation\", \"format_version\": 1.0,"
        " \"d_model\": 2, \"encoder_layers\": 1, \"decoder_layers\": 1,"
        " \"ffn_dim\": 1, \"num_experts\": 1, \"top_k\": 1, \"head_dim\": 1,"
        " \"vocab_size\": 5, \"bos_id\": 0, \"pad_id\": 1, \"eos_id\": 2,"
        " \"unk_id\": 3, \"decoder_start_id\": 4, \"source_lang\": \"fr\","
        " \"target_lang\": \"en\", \"activation\": \"gelu\","
        " \"normalize_before\": true, \"attention_bias\": true,"
        " \"share_embeddings\": false, \"scale_embedding\": false,"
        " \"max_positions\": 3, \"layernorm_eps\": 1e-6}XXXX";
    rc = moa_config_parse(k, strlen(k) - 4, "x/config.json", &cfg, err, sizeof err);
    if (rc) MOA_TEST_FAIL("parse failed: %s", err);
    ASSERT_EQ_INT(cfg.activation, MOA_ACT_GELU);
    ASSERT_EQ_INT(cfg.normalize_before, 1);
    ASSERT_EQ_INT(cfg.attention_bias, 1);
    ASSERT_EQ_INT(cfg.share_embeddings, 0);
    ASSERT_EQ_INT(cfg.scale_embedding, 0);
    ASSERT_EQ_INT(cfg.max_positions, 3);
    ASSERT_TRUE(cfg.layernorm_eps == 1e-6f);

    // A failed parse leaves cfg alone and names the path.
    moa_config before = cfg;
    rc = moa_config_parse("{}", 2, "y/config.json", &cfg, err, sizeof err);
    ASSERT_EQ_INT(rc, MOA_EFORMAT);
    ASSERT_STR_CONTAINS(err, "y/config.json: missing key \"d_model\"");
    ASSERT_TRUE(memcmp(&before, &cfg, sizeof cfg) == 0);
    // err may be NULL.
    ASSERT_EQ_INT(moa_config_parse("{", 1, NULL, &cfg, NULL, 0), MOA_EFORMAT);
}

static void test_config_truncates_strings(void) {
    char j[2048];
    // 40 × "é" (2 bytes each) does not fit in 32 bytes; the cut must not
    // split a character.
    char lang[128] = "";
    for (int i = 0; i < 40; i++) strcat(lang, "\xc3\xa9");
    char name[400] = "";
    for (int i = 0; i < 30; i++) strcat(name, "abcdefghi");
    snprintf(j, sizeof j,
             "{\"d_model\": 8, \"encoder_layers\": 1, \"decoder_layers\": 1,"
             " \"ffn_dim\": 16, \"num_experts\": 4, \"top_k\": 2, \"head_dim\": 4,"
             " \"vocab_size\": 12, \"bos_id\": 0, \"pad_id\": 1, \"eos_id\": 2,"
             " \"unk_id\": 3, \"decoder_start_id\": 2, \"source_lang\": \"%s\","
             " \"target_lang\": \"x\", \"name\": \"%s\"}",
             lang, name);
    moa_config cfg;
    char err[512] = "";
    int rc = moa_config_parse(j, strlen(j), "config.json", &cfg, err, sizeof err);
    if (rc) MOA_TEST_FAIL("parse failed: %s", err);
    ASSERT_EQ_INT(strlen(cfg.source_lang), 30);  // 15 whole characters
    ASSERT_TRUE(strncmp(cfg.source_lang, lang, 30) == 0);
    ASSERT_EQ_INT(strlen(cfg.name), 127);
    ASSERT_TRUE(strncmp(cfg.name, name, 127) == 0);
    ASSERT_STR_EQ(cfg.target_lang, "x");
}

// --- conversions ---------------------------------------------------------------------

static float bits_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void test_f16_known(void) {
    ASSERT_TRUE(moa_f16_to_f32(0x3C00) == 1.0f);
    ASSERT_TRUE(moa_f16_to_f32(0xC000) == -2.0f);
    ASSERT_TRUE(moa_f16_to_f32(0x0001) == 5.960464477539063e-8f);
    ASSERT_TRUE(moa_f16_to_f32(0x03FF) == 6.097555160522461e-5f);
    ASSERT_TRUE(moa_f16_to_f32(0x0400) == 6.103515625e-5f);
    ASSERT_TRUE(moa_f16_to_f32(0x7BFF) == 65504.0f);
    ASSERT_TRUE(moa_f16_to_f32(0x3555) == 0.333251953125f);
    ASSERT_TRUE(moa_f16_to_f32(0x7C00) == INFINITY);
    ASSERT_TRUE(moa_f16_to_f32(0xFC00) == -INFINITY);
    ASSERT_TRUE(isnan(moa_f16_to_f32(0x7E00)));
    ASSERT_TRUE(isnan(moa_f16_to_f32(0xFC01)));
    float z = moa_f16_to_f32(0x8000);
    ASSERT_TRUE(z == 0.0f && signbit(z));
    // Every half: sign · (exp ? 1 + m/1024 : m/1024) · 2^(max(exp,1) - 15).
    for (uint32_t h = 0; h < 0x10000u; h++) {
        uint32_t e = (h >> 10) & 0x1f, mant = h & 0x3ff;
        float got = moa_f16_to_f32((uint16_t)h);
        if (e == 0x1f) {
            if (mant ? !isnan(got) : !isinf(got))
                MOA_TEST_FAIL("half 0x%04x -> %g", h, got);
            continue;
        }
        double v = e ? ldexp(1.0 + mant / 1024.0, (int)e - 15)
                     : ldexp(mant / 1024.0, -14);
        if (h & 0x8000) v = -v;
        if (got != (float)v || (float)v != v || !signbit(got) != !signbit(v))
            MOA_TEST_FAIL("half 0x%04x -> %.10g, expected %.10g", h, got, v);
    }
}

static void test_bf16_known(void) {
    ASSERT_TRUE(moa_bf16_to_f32(0x3F80) == 1.0f);
    ASSERT_TRUE(moa_bf16_to_f32(0xC000) == -2.0f);
    ASSERT_TRUE(moa_bf16_to_f32(0x4049) == 3.140625f);
    ASSERT_TRUE(moa_bf16_to_f32(0x0001) == bits_f32(0x00010000u));
    ASSERT_TRUE(moa_bf16_to_f32(0x0001) == (float)ldexp(1.0, -133));
    ASSERT_TRUE(moa_bf16_to_f32(0x7F80) == INFINITY);
    ASSERT_TRUE(moa_bf16_to_f32(0xFF80) == -INFINITY);
    ASSERT_TRUE(isnan(moa_bf16_to_f32(0x7FC0)));
    // Every bfloat16: sign · (exp ? 1 + m/128 : m/128) · 2^(max(exp,1) - 127).
    for (uint32_t h = 0; h < 0x10000u; h++) {
        uint32_t e = (h >> 7) & 0xff, mant = h & 0x7f;
        float got = moa_bf16_to_f32((uint16_t)h);
        if (e == 0xff) {
            if (mant ? !isnan(got) : !isinf(got))
                MOA_TEST_FAIL("bf16 0x%04x -> %g", h, got);
            continue;
        }
        double v = e ? ldexp(1.0 + mant / 128.0, (int)e - 127)
                     : ldexp(mant / 128.0, -126);
        if (h & 0x8000) v = -v;
        if (got != (float)v || (float)v != v || !signbit(got) != !signbit(v))
            MOA_TEST_FAIL("bf16 0x%04x -> %.10g, expected %.10g", h, got, v);
    }
}

// --- positions -----------------------------------------------------------------------

static double pos_expected(int pos, int i, int d) {
    int half = d / 2;
    int j = i < half ? i : i - half;
    double f = exp(-(double)j * (log(10000.0) / (half - 1)));
    return i < half ? sin(pos * f) : cos(pos * f);
}

static void test_positions(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512];
    tt_save(dir, sizeof dir, &c, tm);
    moa_model *m = load_ok(dir);
    int d = 8;
    ASSERT_EQ_INT(m->n_positions, 1024 + 1 + 2);
    ASSERT_TRUE(m->positions != NULL);
    // The pad row (pos 1) is all zeros.
    for (int i = 0; i < d; i++) ASSERT_TRUE(m->positions[1 * d + i] == 0.0f);
    static const int rows[] = {0, 2, 3, 7, 100, 513, 1025, 1026};
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
        for (int i = 0; i < d; i++) {
            float got = m->positions[(size_t)rows[r] * d + i];
            float want = (float)pos_expected(rows[r], i, d);
            if (got != want)
                MOA_TEST_FAIL("positions[%d][%d] = %.9g, expected %.9g",
                              rows[r], i, got, want);
        }
    // Spot values: pos 2, i 0: sin(2); i 4: cos(2); i 3: sin(2·10^-4).
    ASSERT_TRUE(m->positions[2 * d + 0] == (float)sin(2.0));
    ASSERT_TRUE(m->positions[2 * d + 4] == (float)cos(2.0));
    ASSERT_NEAR(m->positions[2 * d + 3], sin(2e-4), 1e-10);
    // Row 0 is an ordinary position (sin 0, cos 0).
    ASSERT_TRUE(m->positions[0] == 0.0f && m->positions[4] == 1.0f);
    moa_model_free(m);
    tt_free(tm);
    tt_rmdir(dir);
}

static void test_positions_d2(void) {
    // half == 1: only f_0 = 1 exists (fairseq would divide by zero).
    moa_model *m = calloc(1, sizeof *m);
    ASSERT_TRUE(m != NULL);
    m->cfg.d_model = 2;
    m->cfg.max_positions = 5;
    m->cfg.pad_id = 1;
    ASSERT_EQ_INT(moa_positions_init(m), 0);
    ASSERT_EQ_INT(m->n_positions, 8);
    for (int pos = 0; pos < 8; pos++) {
        float s = pos == 1 ? 0.0f : (float)sin((double)pos);
        float co = pos == 1 ? 0.0f : (float)cos((double)pos);
        ASSERT_TRUE(m->positions[2 * pos] == s);
        ASSERT_TRUE(m->positions[2 * pos + 1] == co);
    }
    // Calling again replaces the table without leaking.
    ASSERT_EQ_INT(moa_positions_init(m), 0);
    free(m->positions);
    free(m);
}

// --- errors ----------------------------------------------------------------------------

static void test_strerror(void) {
    int n = 0;
#define CHECK_CODE(name, code, msg)                         \
    ASSERT_STR_EQ(moa_strerror(MOA_##name), msg);           \
    ASSERT_EQ_INT(MOA_##name, code);                        \
    n++;
    MOA_ERRNO_MAP(CHECK_CODE)
#undef CHECK_CODE
    ASSERT_EQ_INT(n, 8);
    ASSERT_STR_EQ(moa_strerror(MOA_OK), "success");
    ASSERT_STR_EQ(moa_strerror(MOA_EFORMAT), "malformed model");
    ASSERT_STR_EQ(moa_strerror(-100), "unknown error");
    ASSERT_STR_EQ(moa_strerror(1), "unknown error");
}

// --- precision and the vocabulary shortlist (spec §9) --------------------------------------

static moa_model *load_opts(const char *dir, moa_precision p, int shortlist, char *err,
                            size_t errlen) {
    moa_load_opts o;
    moa_load_opts_default(&o);
    o.precision = p;
    o.shortlist = shortlist;
    return moa_model_load_opts(dir, &o, err, errlen);
}

// bf16 and int8 convert every product with a fixed weight (whatever the
// CPU: the kernels pick their path at run time), one block each, and the
// converted weights take a half / about a quarter of float32's bytes.
static void test_load_precisions(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512], err[1024];
    tt_save(dir, sizeof dir, &c, tm);
    int products = (2 + 2 * c.E) * (c.enc_layers + 2 * c.dec_layers) +
                   2 * (c.enc_layers + c.dec_layers) + 1;
    moa_model *f = load_opts(dir, MOA_PREC_F32, 0, err, sizeof err);
    ASSERT_TRUE(f != NULL);
    size_t f32 = moa_model_weight_bytes(f);
    ASSERT_TRUE(f32 > 0 && moa_model_precision(f) == MOA_PREC_F32);
    for (int p = MOA_PREC_BF16; p <= MOA_PREC_INT8; p++) {
        moa_model *m = load_opts(dir, (moa_precision)p, 0, err, sizeof err);
        if (!m) MOA_TEST_FAIL("%s", err);
        ASSERT_EQ_INT(moa_model_precision(m), p);
        ASSERT_EQ_INT(m->n_packed, products);
        ASSERT_EQ_INT(check_model(m, tm), count_bound(&c));  // the float32 views stay
        ASSERT_TRUE(m->out_p.p == NULL && (p == MOA_PREC_BF16 ? m->out_p.pb != NULL
                                                              : m->out_p.pq != NULL));
        // two bytes a weight in panels of 32 output columns (zero-padded)
        if (p == MOA_PREC_BF16) {
            int na = c.enc_layers + 2 * c.dec_layers, nf = c.enc_layers + c.dec_layers;
            size_t want = na * (2 * moa_pack_bf16_bytes(c.h, c.d) +
                                c.E * (moa_pack_bf16_bytes(c.h, c.d) + moa_pack_bf16_bytes(c.d, c.h))) +
                          nf * (moa_pack_bf16_bytes(c.ffn, c.d) + moa_pack_bf16_bytes(c.d, c.ffn)) +
                          moa_pack_bf16_bytes(c.V, c.d);
            ASSERT_EQ_INT(moa_model_weight_bytes(m), want);
            ASSERT_EQ_INT(moa_pack_bf16_bytes(64, 256), 64 * 256 * 2);
        }
        ASSERT_TRUE(strstr(moa_model_kernels(m), moa_precision_name((moa_precision)p)) != NULL);
        moa_model_free(m);
    }
    moa_model_free(f);
    moa_precision pr;
    ASSERT_EQ_INT(moa_precision_parse("int8", &pr), 0);
    ASSERT_EQ_INT(pr, MOA_PREC_INT8);
    ASSERT_EQ_INT(moa_precision_parse("fp16", &pr), MOA_EINVAL);
    ASSERT_EQ_INT(moa_precision_parse("", &pr), MOA_EINVAL);
    tt_rmdir(dir);
    tt_free(tm);
}

// shortlist = on without DIR/shortlist.tsv: a clear refusal naming the file.
static void test_shortlist_missing_file(void) {
    tt_cfg c = tt_tiny();
    tt_model *tm = tt_new(&c, "F32");
    char dir[512], err[1024];
    tt_save(dir, sizeof dir, &c, tm);
    ASSERT_TRUE(load_opts(dir, MOA_PREC_INT8, 1, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "shortlist.tsv");
    ASSERT_STR_CONTAINS(err, "cannot open");
    ASSERT_STR_CONTAINS(err, "make_shortlist");
    // with the file: loaded, and the output projection only as rows
    const char *txt = "# a comment\nformat\tmoa-shortlist\t1\nvocab_size\t12\nalways\t4 5\n7\t8 9\n";
    tt_write_file(dir, "shortlist.tsv", txt, strlen(txt));
    for (int p = 0; p <= MOA_PREC_INT8; p++) {
        moa_model *m = load_opts(dir, (moa_precision)p, 1, err, sizeof err);
        if (!m) MOA_TEST_FAIL("%s", err);
        int ns = 0, na = 0;
        ASSERT_EQ_INT(moa_model_shortlist(m, &ns, &na), 1);
        ASSERT_EQ_INT(ns, 1);
        ASSERT_EQ_INT(na, 2);
        ASSERT_TRUE(m->out_p.p == NULL && m->out_p.pb == NULL && m->out_p.pq == NULL);
        ASSERT_TRUE(m->out_rows.f || m->out_rows.b || m->out_rows.q);
        moa_model_free(m);
    }
    moa_model *m = load_opts(dir, MOA_PREC_F32, 0, err, sizeof err);
    ASSERT_TRUE(m && moa_model_shortlist(m, NULL, NULL) == 0);  // off: the file is not read
    moa_model_free(m);
    char p[600];
    snprintf(p, sizeof p, "%s/shortlist.tsv", dir);
    unlink(p);
    tt_rmdir(dir);
    tt_free(tm);
}

// The file's rules (spec §9): what is accepted and what each refusal says.
static void test_shortlist_parse(void) {
    char err[512];
    const char *good = "# made by hand\r\nformat\tmoa-shortlist\t1\r\nvocab_size\t10\n\n"
                       "always\t4  5 9\n6\t7 8\n2\t\n4\t9 9\n";
    moa_shortlist *sl = moa_shortlist_parse(good, strlen(good), 10, "x.tsv", err, sizeof err);
    if (!sl) MOA_TEST_FAIL("%s", err);
    ASSERT_EQ_INT(sl->n_always, 3);
    ASSERT_EQ_INT(sl->always[2], 9);
    ASSERT_EQ_INT(sl->n_sources, 3);
    ASSERT_EQ_INT(sl->off[7] - sl->off[6], 2);
    ASSERT_EQ_INT(sl->ids[sl->off[6]], 7);
    ASSERT_EQ_INT(sl->off[3] - sl->off[2], 0);  // an empty list is allowed
    ASSERT_EQ_INT(sl->off[5] - sl->off[4], 2);
    ASSERT_EQ_INT(sl->off[10], 4);
    moa_shortlist_free(sl);
    static const struct {
        const char *text, *phrase;
    } bad[] = {
        {"vocab_size\t10\n", "x.tsv:1: expected the first line 'format"},
        {"format\tmoa-shortlist\t2\nvocab_size\t10\n", "format version 1"},
        {"format\tmoa-shortlist\t1\n", "no vocab_size line"},
        {"", "no format line"},
        {"format\tmoa-shortlist\t1\nvocab_size\t11\n", "x.tsv:2: vocab_size must"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\n4\t1 10\n", "x.tsv:3: expected piece ids 0-9"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\n4\t1,2\n", "found '1,2'"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\n4\t-1\n", "expected piece ids"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\n10\t1\n", "x.tsv:3: expected a source piece id 0-9"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\nfoo\t1\n", "found 'foo'"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\n4 5\n", "x.tsv:3: expected KEY<TAB>VALUES"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\n4\t5\n4\t6\n", "x.tsv:4: source piece 4 listed twice"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\nalways\t4\nalways\t5\n", "a second 'always'"},
        {"format\tmoa-shortlist\t1\nvocab_size\t10\nvocab_size\t10\n", "given once"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strcpy(err, "(unset)");
        sl = moa_shortlist_parse(bad[i].text, strlen(bad[i].text), 10, "x.tsv", err, sizeof err);
        if (sl) MOA_TEST_FAIL("case %zu accepted", i);
        if (!strstr(err, bad[i].phrase))
            MOA_TEST_FAIL("case %zu: \"%s\" lacks \"%s\"", i, err, bad[i].phrase);
    }
    // NUL bytes are refused, not read past
    const char nul[] = "format\tmoa-shortlist\t1\nvocab_size\t10\n4\t5\0 6\n";
    ASSERT_TRUE(moa_shortlist_parse(nul, sizeof nul - 1, 10, "x.tsv", err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "NUL");
}

const moa_test_case moa_tests_loader[] = {
    {"load_precisions", test_load_precisions},
    {"shortlist_missing_file", test_shortlist_missing_file},
    {"shortlist_parse", test_shortlist_parse},
    {"reject_missing_dir", test_reject_missing_dir},
    {"reject_missing_config", test_reject_missing_config},
    {"reject_missing_safetensors", test_reject_missing_safetensors},
    {"reject_config_bad_json", test_reject_config_bad_json},
    {"reject_config_missing_key", test_reject_config_missing_key},
    {"reject_config_wrong_type", test_reject_config_wrong_type},
    {"reject_config_k_gt_e", test_reject_config_k_gt_e},
    {"reject_config_d_odd", test_reject_config_d_odd},
    {"reject_config_ranges", test_reject_config_ranges},
    {"reject_config_special_ids", test_reject_config_special_ids},
    {"reject_config_format_version", test_reject_config_format_version},
    {"reject_st_short", test_reject_st_short},
    {"reject_st_header_past_end", test_reject_st_header_past_end},
    {"reject_st_header_not_json", test_reject_st_header_not_json},
    {"reject_st_range_past_end", test_reject_st_range_past_end},
    {"reject_st_overlap", test_reject_st_overlap},
    {"reject_st_duplicate", test_reject_st_duplicate},
    {"reject_st_byte_size", test_reject_st_byte_size},
    {"reject_st_unknown_dtype", test_reject_st_unknown_dtype},
    {"reject_st_missing_tensor", test_reject_st_missing_tensor},
    {"reject_st_wrong_shape", test_reject_st_wrong_shape},
    {"reject_st_nan", test_reject_st_nan},
    {"reject_shared_embed_differs", test_reject_shared_embed_differs},
    {"overflowing_model_gives_no_hypothesis", test_overflowing_model_gives_no_hypothesis},
    {"reject_unshared_missing_projection", test_reject_unshared_missing_projection},
    {"reject_never_crashes", test_reject_never_crashes},
    {"load_f32", test_load_f32},
    {"load_f16", test_load_f16},
    {"load_bf16", test_load_bf16},
    {"load_misaligned_f32", test_load_misaligned_f32},
    {"load_mixed_dtypes", test_load_mixed_dtypes},
    {"load_prenorm_bias", test_load_prenorm_bias},
    {"load_unshared", test_load_unshared},
    {"load_unknown_tensor_warns", test_load_unknown_tensor_warns},
    {"config_defaults", test_config_defaults},
    {"config_truncates_strings", test_config_truncates_strings},
    {"f16_known", test_f16_known},
    {"bf16_known", test_bf16_known},
    {"positions", test_positions},
    {"positions_d2", test_positions_d2},
    {"strerror", test_strerror},
    {NULL, NULL},
};
