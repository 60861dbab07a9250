// moa_heads.c — routing counters and their reports (see moa_heads.h).
#include "moa_heads.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MOD_ENC = 0, MOD_DSELF = 1, MOD_DCROSS = 2, N_MOD = 3 };
static const char *const mod_names[N_MOD] = {"encoder", "decoder_self", "decoder_cross"};

struct moa_heads {
    pthread_mutex_t mu;
    int layers[N_MOD];
    int E, k, V;
    int eos_id;                 // the source's last piece (appended by the engine)
    size_t n_cells;             // sum over modules of layers × E
    size_t cell0[N_MOD];        // first cell of each module
    uint64_t *tokens;           // per cell: positions routed to the expert
    double *gate_sum;           // per cell
    uint32_t *pieces;           // per cell × V: piece counts (saturating)
    uint64_t sentences, src_tokens, tgt_tokens, hyps;
    time_t since;
};

static size_t cell(const moa_heads *h, int m, int l, int e) {
    return h->cell0[m] + (size_t)l * (size_t)h->E + (size_t)e;
}

moa_heads *moa_heads_create(const moa_config *cfg) {
    moa_heads *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->layers[MOD_ENC] = cfg->encoder_layers;
    h->layers[MOD_DSELF] = h->layers[MOD_DCROSS] = cfg->decoder_layers;
    h->E = cfg->num_experts;
    h->k = cfg->top_k;
    h->V = cfg->vocab_size;
    h->eos_id = cfg->eos_id;
    for (int m = 0; m < N_MOD; m++) {
        h->cell0[m] = h->n_cells;
        h->n_cells += (size_t)h->layers[m] * (size_t)h->E;
    }
    h->tokens = calloc(h->n_cells, sizeof *h->tokens);
    h->gate_sum = calloc(h->n_cells, sizeof *h->gate_sum);
    h->pieces = calloc(h->n_cells * (size_t)h->V, sizeof *h->pieces);
    if (!h->tokens || !h->gate_sum || !h->pieces) {
        moa_heads_free(h);
        return NULL;
    }
    h->since = time(NULL);
    pthread_mutex_init(&h->mu, NULL);
    return h;
}

void moa_heads_free(moa_heads *h) {
    if (!h) return;
    free(h->tokens);
    free(h->gate_sum);
    free(h->pieces);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

void moa_heads_reset(moa_heads *h) {
    if (!h) return;
    pthread_mutex_lock(&h->mu);
    memset(h->tokens, 0, h->n_cells * sizeof *h->tokens);
    memset(h->gate_sum, 0, h->n_cells * sizeof *h->gate_sum);
    memset(h->pieces, 0, h->n_cells * (size_t)h->V * sizeof *h->pieces);
    h->sentences = h->src_tokens = h->tgt_tokens = h->hyps = 0;
    h->since = time(NULL);
    pthread_mutex_unlock(&h->mu);
}

// One module's [layer][pos][k] block; piece_of(pos) is the piece counted.
static void add_part(moa_heads *h, int m, int n_pos, const int *experts,
                     const float *gates, const int *piece_ids) {
    int L = h->layers[m], k = h->k;
    for (int l = 0; l < L; l++)
        for (int p = 0; p < n_pos; p++) {
            size_t row = ((size_t)l * (size_t)n_pos + (size_t)p) * (size_t)k;
            int pid = piece_ids[p];
            for (int j = 0; j < k; j++) {
                int e = experts[row + (size_t)j];
                if (e < 0 || e >= h->E) continue;  // never expected; do not trust blindly
                size_t c = cell(h, m, l, e);
                h->tokens[c]++;
                h->gate_sum[c] += gates[row + (size_t)j];
                if (pid >= 0 && pid < h->V) {
                    uint32_t *pc = &h->pieces[c * (size_t)h->V + (size_t)pid];
                    if (*pc != UINT32_MAX) (*pc)++;
                }
            }
        }
}

void moa_heads_add(moa_heads *h, const int *src, int src_len, const moa_result *r) {
    if (!h || !r || r->n_hyps < 1 || !r->hyps[0].trace) return;
    const moa_trace *t0 = r->hyps[0].trace;
    if (t0->k != h->k || t0->layers_enc != h->layers[MOD_ENC] ||
        t0->layers_dec != h->layers[MOD_DSELF] || t0->src_len != src_len + 1)
        return;
    // source ids with the eos the engine appended
    int stack[256], *ids = src_len + 1 <= 256 ? stack : malloc(((size_t)src_len + 1) * sizeof(int));
    if (!ids) return;
    for (int i = 0; i < src_len; i++) ids[i] = src[i];
    ids[src_len] = h->eos_id;
    pthread_mutex_lock(&h->mu);
    h->sentences++;
    h->src_tokens += (uint64_t)t0->src_len;
    add_part(h, MOD_ENC, t0->src_len, t0->enc_experts, t0->enc_gates, ids);
    for (int i = 0; i < r->n_hyps; i++) {
        const moa_hypothesis *hy = &r->hyps[i];
        const moa_trace *t = hy->trace;
        if (!t || t->tgt_len != hy->n_tokens) continue;
        h->hyps++;
        h->tgt_tokens += (uint64_t)t->tgt_len;
        add_part(h, MOD_DSELF, t->tgt_len, t->dself_experts, t->dself_gates, hy->tokens);
        add_part(h, MOD_DCROSS, t->tgt_len, t->dcross_experts, t->dcross_gates, hy->tokens);
    }
    pthread_mutex_unlock(&h->mu);
    if (ids != stack) free(ids);
}

// --- reports -----------------------------------------------------------------------

typedef struct layer_stats {
    uint64_t total;
    double cv, entropy;         // entropy normalised to [0, 1] by log(E)
} layer_stats;

static layer_stats layer_of(const moa_heads *h, int m, int l) {
    layer_stats s = {0, 0, 0};
    int E = h->E;
    for (int e = 0; e < E; e++) s.total += h->tokens[cell(h, m, l, e)];
    if (!s.total) return s;
    double mean = (double)s.total / E, var = 0, ent = 0;
    for (int e = 0; e < E; e++) {
        double c = (double)h->tokens[cell(h, m, l, e)];
        var += (c - mean) * (c - mean);
        double p = c / (double)s.total;
        if (p > 0) ent -= p * log(p);
    }
    s.cv = sqrt(var / E) / mean;
    s.entropy = E > 1 ? ent / log((double)E) : 1.0;
    return s;
}

typedef struct piece_count {
    int id;
    uint32_t n;
} piece_count;

// The top pieces of one cell, most frequent first (ties: lower id). n found.
static int top_pieces(const moa_heads *h, size_t c, int top, piece_count *out) {
    if (top <= 0) return 0;  // (the test below would read out[-1])
    const uint32_t *pc = &h->pieces[c * (size_t)h->V];
    int n = 0;
    for (int id = 0; id < h->V; id++) {
        uint32_t v = pc[id];
        if (!v) continue;
        if (n == top && v <= out[n - 1].n) continue;
        int j = n < top ? n++ : n - 1;
        while (j > 0 && out[j - 1].n < v) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = (piece_count){id, v};
    }
    return n;
}

cJSON *moa_heads_json(moa_heads *h, const moa_tokenizer *tok, int top) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    piece_count *pcs = malloc((size_t)(top > 0 ? top : 1) * sizeof *pcs);
    if (!pcs) {
        cJSON_Delete(root);
        return NULL;
    }
    pthread_mutex_lock(&h->mu);
    char since[32];
    struct tm tm;
    gmtime_r(&h->since, &tm);
    strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON_AddStringToObject(root, "since", since);
    cJSON_AddNumberToObject(root, "num_experts", h->E);
    cJSON_AddNumberToObject(root, "top_k", h->k);
    cJSON_AddNumberToObject(root, "sentences", (double)h->sentences);
    cJSON_AddNumberToObject(root, "hypotheses", (double)h->hyps);
    cJSON_AddNumberToObject(root, "source_tokens", (double)h->src_tokens);
    cJSON_AddNumberToObject(root, "target_tokens", (double)h->tgt_tokens);
    cJSON *mods = cJSON_AddObjectToObject(root, "modules");
    for (int m = 0; mods && m < N_MOD; m++) {
        cJSON *layers = cJSON_AddArrayToObject(cJSON_AddObjectToObject(mods, mod_names[m]), "layers");
        for (int l = 0; layers && l < h->layers[m]; l++) {
            layer_stats ls = layer_of(h, m, l);
            cJSON *lj = cJSON_CreateObject();
            cJSON_AddItemToArray(layers, lj);
            cJSON_AddNumberToObject(lj, "layer", l);
            cJSON_AddNumberToObject(lj, "tokens", (double)ls.total);
            cJSON_AddNumberToObject(lj, "cv", ls.cv);
            cJSON_AddNumberToObject(lj, "entropy", ls.entropy);
            cJSON *ex = cJSON_AddArrayToObject(lj, "experts");
            for (int e = 0; ex && e < h->E; e++) {
                size_t c = cell(h, m, l, e);
                cJSON *ej = cJSON_CreateObject();
                cJSON_AddItemToArray(ex, ej);
                cJSON_AddNumberToObject(ej, "expert", e);
                cJSON_AddNumberToObject(ej, "tokens", (double)h->tokens[c]);
                cJSON_AddNumberToObject(ej, "share", ls.total ? (double)h->tokens[c] / (double)ls.total : 0.0);
                cJSON_AddNumberToObject(ej, "mean_gate", h->tokens[c] ? h->gate_sum[c] / (double)h->tokens[c] : 0.0);
                cJSON *tp = cJSON_AddArrayToObject(ej, "top_pieces");
                int n = top_pieces(h, c, top, pcs);
                for (int i = 0; tp && i < n; i++) {
                    cJSON *pj = cJSON_CreateObject();
                    const char *p = moa_tokenizer_piece(tok, pcs[i].id);
                    cJSON_AddStringToObject(pj, "piece", p ? p : "?");
                    cJSON_AddNumberToObject(pj, "id", pcs[i].id);
                    cJSON_AddNumberToObject(pj, "count", pcs[i].n);
                    cJSON_AddItemToArray(tp, pj);
                }
            }
        }
    }
    pthread_mutex_unlock(&h->mu);
    free(pcs);
    return root;
}

void moa_heads_text(moa_heads *h, const moa_tokenizer *tok, int top, moa_buf *b) {
    piece_count *pcs = malloc((size_t)(top > 0 ? top : 1) * sizeof *pcs);
    if (!pcs) {
        b->oom = 1;
        return;
    }
    pthread_mutex_lock(&h->mu);
    moa_buf_printf(b, "# routing statistics: %llu sentences, %llu source tokens, "
                   "%llu target tokens (returned hypotheses), E=%d, k=%d\n",
                   (unsigned long long)h->sentences, (unsigned long long)h->src_tokens,
                   (unsigned long long)h->tgt_tokens, h->E, h->k);
    for (int m = 0; m < N_MOD; m++)
        for (int l = 0; l < h->layers[m]; l++) {
            layer_stats ls = layer_of(h, m, l);
            moa_buf_printf(b, "\n%s layer %d: %llu routed positions, cv %.3f, "
                           "entropy %.3f\n", mod_names[m], l,
                           (unsigned long long)ls.total, ls.cv, ls.entropy);
            moa_buf_puts(b, "  expert      tokens   share  mean_gate  top pieces\n");
            for (int e = 0; e < h->E; e++) {
                size_t c = cell(h, m, l, e);
                moa_buf_printf(b, "  %6d %11llu  %6.3f  %9.3f ", e,
                               (unsigned long long)h->tokens[c],
                               ls.total ? (double)h->tokens[c] / (double)ls.total : 0.0,
                               h->tokens[c] ? h->gate_sum[c] / (double)h->tokens[c] : 0.0);
                int n = top_pieces(h, c, top, pcs);
                for (int i = 0; i < n; i++) {
                    const char *p = moa_tokenizer_piece(tok, pcs[i].id);
                    moa_buf_printf(b, " %s(%u)", p ? p : "?", pcs[i].n);
                }
                moa_buf_puts(b, "\n");
            }
        }
    pthread_mutex_unlock(&h->mu);
    free(pcs);
}

void moa_heads_metrics(moa_heads *h, const char *model, int header, moa_buf *b) {
    if (!h) return;
    pthread_mutex_lock(&h->mu);
    if (header)
        moa_buf_puts(b, "# HELP moa_expert_tokens_total Positions routed to each attention "
                        "expert (returned hypotheses; spec section 7).\n"
                        "# TYPE moa_expert_tokens_total counter\n");
    for (int m = 0; m < N_MOD; m++)
        for (int l = 0; l < h->layers[m]; l++)
            for (int e = 0; e < h->E; e++)
                moa_buf_printf(b, "moa_expert_tokens_total{model=\"%s\",module=\"%s\","
                               "layer=\"%d\",expert=\"%d\"} %llu\n", model, mod_names[m], l,
                               e, (unsigned long long)h->tokens[cell(h, m, l, e)]);
    pthread_mutex_unlock(&h->mu);
}

void moa_heads_metrics_cv(moa_heads *h, const char *model, int header, moa_buf *b) {
    if (!h) return;
    pthread_mutex_lock(&h->mu);
    if (header)
        moa_buf_puts(b, "# HELP moa_expert_load_cv Coefficient of variation of the expert "
                        "load per layer (0 = perfectly balanced).\n"
                        "# TYPE moa_expert_load_cv gauge\n");
    for (int m = 0; m < N_MOD; m++)
        for (int l = 0; l < h->layers[m]; l++)
            moa_buf_printf(b, "moa_expert_load_cv{model=\"%s\",module=\"%s\",layer=\"%d\"} "
                           "%.6f\n", model, mod_names[m], l, layer_of(h, m, l).cv);
    pthread_mutex_unlock(&h->mu);
}
