// moa_engine.c — sessions: the encoder, one decoder step for every live
// hypothesis of every sentence, and the search bookkeeping around it.
//
// MoA attention (spec §1) is done the efficient way: K and V come from one
// shared projection per layer; the router picks k experts per row; the
// (row, pick) pairs of the whole batch are grouped by expert so that each
// expert's Q projection and O projection is ONE matrix product over its rows;
// gates are applied on the scatter back. The decoder self-attention cache
// holds 2·h floats per token per layer (K and V of the shared projections),
// independent of E and k.
//
// Memory: nothing is allocated per step in the steady state. A session's
// scratch (every batched pass's arrays, logits, attention scores, reorder
// staging) is ONE arena, sized at creation for max_rows rows and grown only
// when a step admits a batch that needs more (longer sources, more newcomer
// tokens). Each sentence lives in two blocks, one taken when it is added
// (its header and source) and one when it is admitted (search state, KV
// caches, traces, finished hypotheses), both from pools of blocks the
// session recycles: a finished sentence's blocks serve the next one. A
// result is one block, handed to the caller. moa_session_allocs counts it all.
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moa_impl.h"

// --- sentences in flight ---------------------------------------------------------

// FINISHED: its search is over but its result could not be allocated yet
// (out of memory); it keeps its rows and body and retires at a later step.
enum { SENT_QUEUED = 0, SENT_LIVE = 1, SENT_FINISHED = 2 };

typedef struct sent {
    int id;
    void *user;
    moa_search_opts o;
    int sampling;           // draws tokens instead of beam search
    int forced;             // scoring: follows tgt
    int *src;               // source ids, eos included
    int src_len;
    int *tgt;               // forced target, eos included
    int tgt_len;
    // With a shortlist (spec §9): the candidate pieces, ascending (the
    // specials 0-3 first, so a row's positions 0-3 are those ids); the
    // sentence's logit rows hold n_cand values, position j being piece
    // cand[j]. NULL: rows over the whole vocabulary.
    int *cand;
    int n_cand;
    int max_len;            // most real tokens a hypothesis may hold
    int beam;               // rows reserved
    int cap;                // decoder positions per slot (max_len + 1)
    int state;
    int step;               // tokens each live hypothesis holds
    int n_live;

    // Per slot (live hypothesis, in rank order) histories: [beam][cap].
    int *tokens;
    float *lps;
    double *scores;         // [beam]
    // Decoder self-attention cache: [beam][Ldec][cap][h], K and V.
    float *kc, *vc;
    // Cross-attention K/V, computed once: [Ldec][src_len][h].
    float *xk, *xv;
    // Traces, only when o.trace: encoder [Lenc][src_len][k] (+ margins
    // [Lenc][src_len]); decoder per slot [beam][Ldec][cap][k].
    int *enc_e;  float *enc_g, *enc_m;
    int *ds_e;   float *ds_g, *ds_m;
    int *dc_e;   float *dc_g, *dc_m;

    // Finished hypotheses, in finishing order, until the sentence retires:
    // [beam][cap] tokens and log-probs, and with traces their decoder rows
    // [beam][Ldec][cap][k] (margins [beam][Ldec][cap]).
    int n_fin;
    struct {
        int n_tokens;
        double log_prob, score;
    } fin[MOA_MAX_BEAM];
    int *fin_tok;
    float *fin_lp;
    int *fds_e;  float *fds_g, *fds_m;
    int *fdc_e;  float *fdc_g, *fdc_m;
    // Cross-attention, only when o.attention: [beam][Ldec][cap][src_len] for
    // the live slots, and the same for the finished hypotheses.
    float *xa, *fxa;

    void *body;             // the block of everything from tokens on (NULL while queued)
    moa_rng rng;
} sent;

// Scratch for one batched pass over n rows (encoder tokens or decoder rows).
typedef struct work {
    int cap;                // rows it holds
    float *x, *xn, *y;      // n × d
    float *h1;              // n × ffn
    float *kb, *vb;         // n × h
    float *router;          // n × E
    int *pick_e;            // n × k
    float *pick_g;          // n × k
    float *margin;          // n
    float *q, *a;           // n × k × h
    float *gin;             // n·k × max(d, h)  gathered inputs per expert
    float *gout;            // n·k × max(d, h)  products per expert
    int *grp;               // n·k  (row·k + pick) grouped by expert
    int *grp_off;           // E + 1
    int *tok, *pos;         // n    token ids and positions to embed
    // bf16/int8: an attention block's input converted once for its K, V and
    // Q products (moa_qin): qbuf holds it, gidx the rows an expert reads
    void *qbuf;             // moa_qin_bytes(precision, n, d)
    int *gidx;              // n·k
    moa_qin qin;
} work;

// Blocks a session recycles (sentence headers, sentence bodies). Each block
// starts with this header; the memory handed out follows it, 64-byte aligned.
typedef struct pool_blk {
    size_t size;                // usable bytes
    struct pool_blk *next;      // next free block
    char pad[64 - sizeof(size_t) - sizeof(void *)];
} pool_blk;

typedef struct pool {
    pool_blk *free;             // blocks given back, ready for reuse
    size_t free_bytes;          // their usable bytes
    size_t used_bytes;          // usable bytes of the blocks handed out
} pool;

struct moa_session {
    const moa_model *m;
    const moa_config *c;
    int max_rows;
    int rows_used;
    int next_id;            // the id the next sentence gets, 0..INT_MAX
    int ids_wrapped;        // next_id went past INT_MAX: ids may be in use

    sent **sents;           // queued and live, in arrival order
    int n_sents, cap_sents;

    moa_result *done;       // finished, waiting for moa_session_take
    int done_head, n_done, cap_done;

    // The arena: one block holding w's arrays (w.cap rows) and the ones
    // below, carved by arena_reserve.
    void *arena;
    size_t arena_bytes;
    work w;                 // grows to the largest batch seen
    float *logits;          // max_rows × V, raw (unnormalised) after a step
    float *lse;             // max_rows: log-sum-exp of each logits row
    float *att;             // attention scores: att_cap floats
    size_t att_cap;
    int *row_sent;          // row → index into sents
    int *row_slot;          // row → slot of that sentence
    moa_cand cand[2 * MOA_MAX_BEAM];
    float *sample_f;        // 2·V
    int *sample_i;          // V
    float *reorder;         // staging for cache reorders: reorder_cap floats
    size_t reorder_cap;
    uint64_t *vmark;        // a bit per vocabulary piece (shortlist candidate sets)

    pool heads, bodies;     // sentence blocks for reuse
    uint64_t n_allocs;      // heap allocations so far (moa_session_allocs)
};

// --- memory: the arena, the block pools, counted allocations -----------------------

#define ALIGN 64

// Lays arrays out in one block, each 64-byte aligned. A first pass with
// base NULL measures (the TAKEs then assign nothing); a second one over the
// block assigns the addresses.
typedef struct carve {
    char *base;
    size_t off;
} carve;

static void *carve_take(carve *cv, size_t bytes) {
    size_t at = (cv->off + ALIGN - 1) / ALIGN * ALIGN;
    cv->off = at + bytes;
    return cv->base ? cv->base + at : NULL;
}

#define TAKE(cv, ptr, bytes)                                                 \
    do {                                                                     \
        void *p_ = carve_take((cv), (bytes));                                \
        if ((cv)->base) (ptr) = p_;                                          \
    } while (0)

// Every heap allocation of a session goes through here or sess_realloc, so
// moa_session_allocs counts them all. 64-byte aligned; free() releases it.
static void *sess_alloc(moa_session *s, size_t bytes) {
    size_t n = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    void *p = aligned_alloc(ALIGN, n ? n : ALIGN);
    if (p) s->n_allocs++;
    return p;
}

static void *sess_realloc(moa_session *s, void *old, size_t bytes) {
    void *p = realloc(old, bytes ? bytes : 1);
    if (p) s->n_allocs++;
    return p;
}

// A capacity of at least need: cap, or doubled from it (64 to start).
static size_t grown(size_t cap, size_t need) {
    if (need <= cap) return cap;
    size_t n = cap ? cap : 64;
    while (n < need) n *= 2;
    return n;
}

// Rounds a block size up to a quarter power of two (at most 25% more), so
// that sentences of about the same length fit each other's blocks.
static size_t size_class(size_t n) {
    if (n <= 256) return 256;
    int e = 63 - __builtin_clzll((unsigned long long)n);  // 2^e <= n
    size_t g = (size_t)1 << (e - 2);
    return (n + g - 1) / g * g;
}

// A block of at least `bytes`: the smallest free one that fits and is at
// most twice the size a new one would have, else a new one. On a miss the
// largest free block (too small, or oversized for this request) is
// released, so a pool never holds more blocks than were ever in use at once,
// and their sizes follow the sentences of late rather than the longest ever
// seen: handing every short sentence the block of a long one would let each
// block grow to the largest size over time, and the session's memory with
// it. NULL: out of memory. The content is whatever its last user left.
static void *pool_get(moa_session *s, pool *p, size_t bytes) {
    size_t size = size_class(bytes);
    pool_blk **best = NULL, **largest = NULL;
    for (pool_blk **b = &p->free; *b; b = &(*b)->next) {
        size_t z = (*b)->size;
        if (z >= bytes && z <= 2 * size && (!best || z < (*best)->size)) best = b;
        if (!largest || z > (*largest)->size) largest = b;
    }
    if (best) {
        pool_blk *k = *best;
        *best = k->next;
        p->free_bytes -= k->size;
        p->used_bytes += k->size;
        return k + 1;
    }
    if (largest) {
        pool_blk *k = *largest;
        *largest = k->next;
        p->free_bytes -= k->size;
        free(k);
    }
    pool_blk *k = sess_alloc(s, sizeof *k + size);
    if (!k) return NULL;
    k->size = size;
    p->used_bytes += size;
    return k + 1;
}

static void pool_put(pool *p, void *mem) {
    if (!mem) return;
    pool_blk *k = (pool_blk *)mem - 1;
    k->next = p->free;
    p->free = k;
    p->used_bytes -= k->size;
    p->free_bytes += k->size;
}

static void pool_close(pool *p) {
    while (p->free) {
        pool_blk *k = p->free;
        p->free = k->next;
        free(k);
    }
    p->free_bytes = 0;
}

// The arena's layout for `rows` rows of batched passes, att floats of
// attention scores and reorder floats of staging; base NULL only measures.
// Returns its size in bytes.
static size_t arena_layout(moa_session *s, char *base, int rows, size_t att, size_t reorder) {
    const moa_config *c = s->c;
    size_t d = c->d_model, h = c->head_dim, k = c->top_k, E = c->num_experts;
    size_t V = c->vocab_size, F = c->ffn_dim, wide = d > h ? d : h;
    size_t N = (size_t)rows, R = (size_t)s->max_rows;
    carve cv = {base, 0};
    work *w = &s->w;
    TAKE(&cv, w->x, N * d * sizeof(float));
    TAKE(&cv, w->xn, N * d * sizeof(float));
    TAKE(&cv, w->y, N * d * sizeof(float));
    TAKE(&cv, w->h1, N * F * sizeof(float));
    TAKE(&cv, w->kb, N * h * sizeof(float));
    TAKE(&cv, w->vb, N * h * sizeof(float));
    TAKE(&cv, w->router, N * E * sizeof(float));
    TAKE(&cv, w->pick_e, N * k * sizeof(int));
    TAKE(&cv, w->pick_g, N * k * sizeof(float));
    TAKE(&cv, w->margin, N * sizeof(float));
    TAKE(&cv, w->q, N * k * h * sizeof(float));
    TAKE(&cv, w->a, N * k * h * sizeof(float));
    TAKE(&cv, w->gin, N * k * wide * sizeof(float));
    TAKE(&cv, w->gout, N * k * wide * sizeof(float));
    TAKE(&cv, w->grp, N * k * sizeof(int));
    TAKE(&cv, w->grp_off, (E + 1) * sizeof(int));
    TAKE(&cv, w->tok, N * sizeof(int));
    TAKE(&cv, w->pos, N * sizeof(int));
    moa_precision prec = s->m ? s->m->precision : MOA_PREC_F32;
    TAKE(&cv, w->qbuf, moa_qin_bytes(prec, (int)N, (int)d));
    TAKE(&cv, w->gidx, N * k * sizeof(int));
    TAKE(&cv, s->logits, R * V * sizeof(float));
    TAKE(&cv, s->lse, R * sizeof(float));
    TAKE(&cv, s->row_sent, R * sizeof(int));
    TAKE(&cv, s->row_slot, R * sizeof(int));
    TAKE(&cv, s->sample_f, 2 * V * sizeof(float));
    TAKE(&cv, s->sample_i, V * sizeof(int));
    TAKE(&cv, s->att, att * sizeof(float));
    TAKE(&cv, s->reorder, reorder * sizeof(float));
    TAKE(&cv, s->vmark, (V + 63) / 64 * sizeof(uint64_t));
    return cv.off;
}

// Makes the arena hold at least `rows` rows, att attention floats and
// reorder staging floats. Only at the start of a step (or at creation): a
// new arena keeps nothing of the old one's content.
static int arena_reserve(moa_session *s, int rows, size_t att, size_t reorder) {
    if (s->arena && rows <= s->w.cap && att <= s->att_cap && reorder <= s->reorder_cap)
        return 0;
    if (rows < s->w.cap) rows = s->w.cap;
    att = grown(s->att_cap, att);
    reorder = grown(s->reorder_cap, reorder);
    size_t bytes = arena_layout(s, NULL, rows, att, reorder);
    char *a = sess_alloc(s, bytes);
    if (!a) return MOA_ENOMEM;
    free(s->arena);
    s->arena = a;
    s->arena_bytes = bytes;
    arena_layout(s, a, rows, att, reorder);
    s->w.cap = rows;
    s->att_cap = att;
    s->reorder_cap = reorder;
    return 0;
}

// Floats per position of the widest array reorder() stages: KV rows (h),
// trace rows (k) or cross-attention rows (the source length).
static size_t reorder_width(const moa_config *c, const sent *st) {
    size_t w = c->head_dim > c->top_k ? (size_t)c->head_dim : (size_t)c->top_k;
    if (st->o.attention && (size_t)st->src_len > w) w = (size_t)st->src_len;
    return w;
}

// Floats reorder() stages for a sentence at most: its beam's widest rows of
// every layer at full length, and their tokens.
static size_t reorder_need(const moa_config *c, const sent *st) {
    return (size_t)st->beam * c->decoder_layers * st->cap * reorder_width(c, st) +
           (size_t)st->beam * st->cap;
}

// The body of a sentence (everything its search needs once admitted), laid
// out as arena_layout does. Returns its size in bytes.
static size_t body_layout(const moa_config *c, sent *st, char *base) {
    size_t Ld = c->decoder_layers, Le = c->encoder_layers, h = c->head_dim, k = c->top_k;
    size_t B = (size_t)st->beam, cap = (size_t)st->cap, n = (size_t)st->src_len;
    carve cv = {base, 0};
    TAKE(&cv, st->tokens, B * cap * sizeof(int));
    TAKE(&cv, st->lps, B * cap * sizeof(float));
    TAKE(&cv, st->scores, B * sizeof(double));
    TAKE(&cv, st->kc, B * Ld * cap * h * sizeof(float));
    TAKE(&cv, st->vc, B * Ld * cap * h * sizeof(float));
    TAKE(&cv, st->xk, Ld * n * h * sizeof(float));
    TAKE(&cv, st->xv, Ld * n * h * sizeof(float));
    TAKE(&cv, st->fin_tok, B * cap * sizeof(int));
    TAKE(&cv, st->fin_lp, B * cap * sizeof(float));
    if (st->o.trace) {
        TAKE(&cv, st->enc_e, Le * n * k * sizeof(int));
        TAKE(&cv, st->enc_g, Le * n * k * sizeof(float));
        TAKE(&cv, st->enc_m, Le * n * sizeof(float));
        int **e[4] = {&st->ds_e, &st->dc_e, &st->fds_e, &st->fdc_e};
        float **g[4] = {&st->ds_g, &st->dc_g, &st->fds_g, &st->fdc_g};
        float **m[4] = {&st->ds_m, &st->dc_m, &st->fds_m, &st->fdc_m};
        for (int i = 0; i < 4; i++) {
            TAKE(&cv, *e[i], B * Ld * cap * k * sizeof(int));
            TAKE(&cv, *g[i], B * Ld * cap * k * sizeof(float));
            TAKE(&cv, *m[i], B * Ld * cap * sizeof(float));
        }
    }
    if (st->o.attention) {
        TAKE(&cv, st->xa, B * Ld * cap * n * sizeof(float));
        TAKE(&cv, st->fxa, B * Ld * cap * n * sizeof(float));
    }
    return cv.off;
}

// Gives an admitted sentence its body. The block may hold an earlier
// sentence's data: every array is written before it is read (the KV caches
// and traces position by position, tokens as they are chosen), except the
// scores, which start at 0.
static int sent_alloc(moa_session *s, sent *st) {
    size_t bytes = body_layout(s->c, st, NULL);
    st->body = pool_get(s, &s->bodies, bytes);
    if (!st->body) return MOA_ENOMEM;
    body_layout(s->c, st, st->body);
    memset(st->scores, 0, (size_t)st->beam * sizeof(double));
    return 0;
}

// Gives a sentence's blocks back to the pools (the header block is st).
static void sent_release(moa_session *s, sent *st) {
    if (!st) return;
    pool_put(&s->bodies, st->body);
    pool_put(&s->heads, st);
}

// --- the vocabulary shortlist (spec §9) -------------------------------------------

// Marks a sentence's candidate pieces in s->vmark: the specials 0-3, the
// file's always-candidates, the lists of the source's pieces (eos
// included), and a forced target's own pieces (scoring must be able to
// score every one of them). Returns how many are marked. The ids were
// checked before.
static int mark_candidates(moa_session *s, const int *src, int src_len, const int *tgt,
                           int tgt_len) {
    const moa_shortlist *sl = s->m->shortlist;
    int V = s->c->vocab_size;
    uint64_t *mk = s->vmark;
    memset(mk, 0, (size_t)(V + 63) / 64 * sizeof *mk);
#define MARK(id) (mk[(id) >> 6] |= (uint64_t)1 << ((id) & 63))
    for (int i = 0; i < 4 && i < V; i++) MARK(i);
    for (int i = 0; i < sl->n_always; i++) MARK(sl->always[i]);
    for (int i = 0; i <= src_len; i++) {
        int p = i < src_len ? src[i] : s->c->eos_id;
        for (int j = sl->off[p]; j < sl->off[p + 1]; j++) MARK(sl->ids[j]);
    }
    for (int i = 0; tgt && i < tgt_len; i++) MARK(tgt[i]);
#undef MARK
    int n = 0;
    for (int w = 0; w < (V + 63) / 64; w++) n += __builtin_popcountll(mk[w]);
    return n;
}

// Writes the marked pieces in ascending order; returns how many.
static int candidates_from_marks(const moa_session *s, int *out) {
    int n = 0, V = s->c->vocab_size;
    for (int w = 0; w < (V + 63) / 64; w++)
        for (uint64_t b = s->vmark[w]; b; b &= b - 1) out[n++] = w * 64 + __builtin_ctzll(b);
    return n;
}

// Position of piece `id` among a sentence's candidates (it is one).
static int cand_pos(const sent *st, int id) {
    if (!st->cand) return id;
    int lo = 0, hi = st->n_cand - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (st->cand[mid] < id) lo = mid + 1;
        else hi = mid;
    }
    MOA_ASSERT(st->cand[lo] == id);
    return lo;
}

// --- the MoA attention pieces ------------------------------------------------------

// Router for n rows of xn: picks k experts per row by float32 softmax
// probability (ties: lower index), gate = that probability, margin = k-th
// minus (k+1)-th logit. Then groups (row, pick) pairs by expert.
static void route(const moa_model *m, work *w, const moa_attn_w *aw, const float *xn, int n) {
    const moa_config *c = &m->cfg;
    int E = c->num_experts, k = c->top_k, d = c->d_model;
    // router (n×E) = xn (n×d) @ w_gate (d×E). With bf16/int8 in a fixed
    // order per row: OpenBLAS may round a row differently in another batch
    // (1e-7), and the next products' int8 rounding can amplify that into a
    // different translation (spec §9); float32 keeps OpenBLAS (the golden
    // tests' numbers).
    if (m->precision != MOA_PREC_F32) moa_gemm_rowwise(n, E, d, xn, aw->w_gate, w->router);
    else moa_gemm(0, 0, n, E, d, 1.0f, xn, d, aw->w_gate, E, 0.0f, w->router, E);
    int *cnt = w->grp_off;
    memset(cnt, 0, (size_t)(E + 1) * sizeof(int));
    float p[MOA_MAX_EXPERTS];
    int order[MOA_MAX_EXPERTS];
    for (int r = 0; r < n; r++) {
        const float *lg = w->router + (size_t)r * E;
        memcpy(p, lg, (size_t)E * sizeof(float));
        moa_softmax(p, E);
        // partial selection sort: k+1 best by p, ties to the lower index
        for (int e = 0; e < E; e++) order[e] = e;
        int want = k < E ? k + 1 : k;
        for (int i = 0; i < want; i++) {
            int best = i;
            for (int j = i + 1; j < E; j++) {
                int a = order[j], b = order[best];
                if (p[a] > p[b] || (p[a] == p[b] && a < b)) best = j;
            }
            int t = order[i];
            order[i] = order[best];
            order[best] = t;
        }
        for (int j = 0; j < k; j++) {
            w->pick_e[r * k + j] = order[j];
            w->pick_g[r * k + j] = p[order[j]];
            cnt[order[j] + 1]++;
        }
        w->margin[r] = k < E ? lg[order[k - 1]] - lg[order[k]] : INFINITY;
    }
    for (int e = 0; e < E; e++) cnt[e + 1] += cnt[e];
    // fill groups in row order (stable), using a moving cursor per expert
    int cur[MOA_MAX_EXPERTS];
    memcpy(cur, cnt, (size_t)E * sizeof(int));
    for (int r = 0; r < n; r++)
        for (int j = 0; j < k; j++) w->grp[cur[w->pick_e[r * k + j]]++] = r * k + j;
}

// Converts an attention block's input once for its bf16/int8 products
// (w->qin); NULL for float32, whose products read xn itself.
static const moa_qin *prepare_input(const moa_model *m, work *w, const float *xn, int n) {
    if (m->precision == MOA_PREC_F32) return NULL;
    moa_qin_make(&w->qin, m->precision, n, xn, m->cfg.d_model, m->cfg.d_model, w->qbuf);
    return &w->qin;
}

// q[row][pick] (h) = xn[row] · experts.w[e] · h^-1/2, one product per expert
// (from qi's rows when given: xn converted once).
static void project_q(const moa_config *c, work *w, const moa_attn_w *aw,
                      const float *xn, const moa_qin *qi) {
    int E = c->num_experts, k = c->top_k, d = c->d_model, h = c->head_dim;
    float scale = 1.0f / sqrtf((float)h);
    for (int e = 0; e < E; e++) {
        int lo = w->grp_off[e], m = w->grp_off[e + 1] - lo;
        if (m == 0) continue;
        if (qi) {
            for (int i = 0; i < m; i++) w->gidx[i] = w->grp[lo + i] / k;
            moa_gemm_qin(qi, w->gidx, m, &aw->q_p[e], scale, 0.0f, w->gout, h);
        } else {
            for (int i = 0; i < m; i++)
                memcpy(w->gin + (size_t)i * d, xn + (size_t)(w->grp[lo + i] / k) * d,
                       (size_t)d * sizeof(float));
            // (m×d) @ (d×h) -> (m×h)
            moa_gemm_w(m, w->gin, d, &aw->q_p[e], scale, 0.0f, w->gout, h);
        }
        for (int i = 0; i < m; i++)
            memcpy(w->q + (size_t)w->grp[lo + i] * h, w->gout + (size_t)i * h,
                   (size_t)h * sizeof(float));
    }
}

// y[row] = Σ_pick gate · a[row][pick] · output_experts.w[e], one product per expert.
static void project_o(const moa_config *c, work *w, const moa_attn_w *aw,
                      int n, float *y) {
    int E = c->num_experts, k = c->top_k, d = c->d_model, h = c->head_dim;
    memset(y, 0, (size_t)n * d * sizeof(float));
    for (int e = 0; e < E; e++) {
        int lo = w->grp_off[e], m = w->grp_off[e + 1] - lo;
        if (m == 0) continue;
        for (int i = 0; i < m; i++)
            memcpy(w->gin + (size_t)i * h, w->a + (size_t)w->grp[lo + i] * h,
                   (size_t)h * sizeof(float));
        // (m×h) @ (h×d) -> (m×d)
        moa_gemm_w(m, w->gin, h, &aw->o_p[e], 1.0f, 0.0f, w->gout, d);
        for (int i = 0; i < m; i++) {
            int rp = w->grp[lo + i];
            moa_axpy(y + (size_t)(rp / k) * d, w->pick_g[rp], w->gout + (size_t)i * d, d);
        }
    }
}

// K, V (n×h) = xn (n×d) @ W^T (+ b) (from qi's rows when given)
static void project_kv(const moa_config *c, const moa_attn_w *aw, const float *xn,
                       const moa_qin *qi, int n, float *kout, float *vout) {
    int d = c->d_model, h = c->head_dim;
    if (qi) {
        moa_gemm_qin(qi, NULL, n, &aw->k_p, 1.0f, 0.0f, kout, h);
        moa_gemm_qin(qi, NULL, n, &aw->v_p, 1.0f, 0.0f, vout, h);
    } else {
        moa_gemm_w(n, xn, d, &aw->k_p, 1.0f, 0.0f, kout, h);
        moa_gemm_w(n, xn, d, &aw->v_p, 1.0f, 0.0f, vout, h);
    }
    if (aw->k_b)
        for (int r = 0; r < n; r++) {
            moa_axpy(kout + (size_t)r * h, 1.0f, aw->k_b, h);
            moa_axpy(vout + (size_t)r * h, 1.0f, aw->v_b, h);
        }
}

// One query against m keys: out (h) = softmax(q·Kᵀ) · V. scores: m floats.
static void record_picks(const moa_config *c, const work *w, int r, int *e_out,
                         float *g_out, float *m_out) {
    int k = c->top_k;
    memcpy(e_out, w->pick_e + (size_t)r * k, (size_t)k * sizeof(int));
    memcpy(g_out, w->pick_g + (size_t)r * k, (size_t)k * sizeof(float));
    *m_out = w->margin[r];
}

// x = x + FFN(x) with the layer's norms; xn and h1 are scratch.
static void ffn_block(const moa_config *c, work *w, const moa_ffn_w *f,
                      const moa_ln_w *ln, int n) {
    int d = c->d_model, F = c->ffn_dim;
    const float *in = w->x;
    if (c->normalize_before) {
        moa_layernorm(w->xn, w->x, n, d, ln->w, ln->b, c->layernorm_eps);
        in = w->xn;
    }
    // h1 (n×F) = in @ fc1ᵀ + b
    for (int r = 0; r < n; r++)
        memcpy(w->h1 + (size_t)r * F, f->fc1_b, (size_t)F * sizeof(float));
    moa_gemm_w(n, in, d, &f->fc1_p, 1.0f, 1.0f, w->h1, F);
    if (c->activation == MOA_ACT_GELU) moa_gelu(w->h1, (size_t)n * F);
    else moa_relu(w->h1, (size_t)n * F);
    // x += h1 @ fc2ᵀ + b
    for (int r = 0; r < n; r++) moa_axpy(w->x + (size_t)r * d, 1.0f, f->fc2_b, d);
    moa_gemm_w(n, w->h1, F, &f->fc2_p, 1.0f, 1.0f, w->x, d);
    if (!c->normalize_before)
        moa_layernorm(w->x, w->x, n, d, ln->w, ln->b, c->layernorm_eps);
}

// Input of an attention block: LN(x) when pre-norm, else x itself.
static const float *block_input(const moa_config *c, work *w, const moa_ln_w *ln, int n) {
    if (!c->normalize_before) return w->x;
    moa_layernorm(w->xn, w->x, n, c->d_model, ln->w, ln->b, c->layernorm_eps);
    return w->xn;
}

// x = x + y, then LN when post-norm.
static void block_output(const moa_config *c, work *w, const moa_ln_w *ln, int n) {
    size_t nd = (size_t)n * c->d_model;
    for (size_t i = 0; i < nd; i++) w->x[i] += w->y[i];
    if (!c->normalize_before)
        moa_layernorm(w->x, w->x, n, c->d_model, ln->w, ln->b, c->layernorm_eps);
}

static void embed(const moa_model *m, const int *tok, const int *pos, int n,
                  const float *table, float *x) {
    const moa_config *c = &m->cfg;
    int d = c->d_model;
    float scale = c->scale_embedding ? sqrtf((float)d) : 1.0f;
    for (int r = 0; r < n; r++) {
        const float *e = table + (size_t)tok[r] * d;
        const float *p = m->positions + (size_t)pos[r] * d;
        float *xr = x + (size_t)r * d;
        for (int j = 0; j < d; j++) xr[j] = e[j] * scale + p[j];
    }
}

// --- encoder ------------------------------------------------------------------------

// Encodes sentences list[0..nl) in one batch (no padding: their tokens are
// concatenated), then computes each one's cross-attention K/V. The arena
// holds their tokens and the longest one's attention (moa_session_step).
static void encode(moa_session *s, sent **list, int nl) {
    const moa_model *m = s->m;
    const moa_config *c = s->c;
    int d = c->d_model, h = c->head_dim, k = c->top_k;
    int N = 0;
    for (int i = 0; i < nl; i++) N += list[i]->src_len;
    work *w = &s->w;
    MOA_ASSERT(N <= w->cap);

    for (int i = 0, r = 0; i < nl; i++)
        for (int t = 0; t < list[i]->src_len; t++, r++) {
            w->tok[r] = list[i]->src[t];
            w->pos[r] = c->pad_id + 1 + t;
        }
    embed(m, w->tok, w->pos, N, m->enc_embed, w->x);

    for (int l = 0; l < c->encoder_layers; l++) {
        const moa_enc_layer *L = &m->enc[l];
        const float *in = block_input(c, w, &L->self_attn_ln, N);
        const moa_qin *qi = prepare_input(m, w, in, N);
        project_kv(c, &L->self_attn, in, qi, N, w->kb, w->vb);
        route(m, w, &L->self_attn, in, N);
        project_q(c, w, &L->self_attn, in, qi);
        // per sentence: S (n·k × n) = Q (n·k × h) @ Kᵀ; softmax; A = S @ V
        for (int i = 0, r0 = 0; i < nl; r0 += list[i]->src_len, i++) {
            int n = list[i]->src_len;
            moa_gemm(0, 1, n * k, n, h, 1.0f, w->q + (size_t)r0 * k * h, h,
                     w->kb + (size_t)r0 * h, h, 0.0f, s->att, n);
            for (int q = 0; q < n * k; q++) moa_softmax(s->att + (size_t)q * n, n);
            moa_gemm(0, 0, n * k, h, n, 1.0f, s->att, n, w->vb + (size_t)r0 * h, h,
                     0.0f, w->a + (size_t)r0 * k * h, h);
            sent *st = list[i];
            if (st->o.trace)
                for (int t = 0; t < n; t++) {
                    size_t at = (size_t)l * n + t;
                    record_picks(c, w, r0 + t, st->enc_e + at * k, st->enc_g + at * k,
                                 st->enc_m + at);
                }
        }
        project_o(c, w, &L->self_attn, N, w->y);
        block_output(c, w, &L->self_attn_ln, N);
        ffn_block(c, w, &L->ffn, &L->final_ln, N);
    }
    if (c->normalize_before)
        moa_layernorm(w->x, w->x, N, d, m->enc_final_ln.w, m->enc_final_ln.b,
                      c->layernorm_eps);

    // cross-attention K/V of every decoder layer, once per sentence (all
    // from the encoder's output: converted once)
    const moa_qin *qx = prepare_input(m, w, w->x, N);
    for (int l = 0; l < c->decoder_layers; l++) {
        project_kv(c, &m->dec[l].cross_attn, w->x, qx, N, w->kb, w->vb);
        for (int i = 0, r0 = 0; i < nl; r0 += list[i]->src_len, i++) {
            size_t n = (size_t)list[i]->src_len;
            memcpy(list[i]->xk + (size_t)l * n * h, w->kb + (size_t)r0 * h, n * h * sizeof(float));
            memcpy(list[i]->xv + (size_t)l * n * h, w->vb + (size_t)r0 * h, n * h * sizeof(float));
        }
    }
}

// --- decoder step --------------------------------------------------------------------

// Runs the decoder for R rows (described by s->row_sent / row_slot) at each
// sentence's current step and leaves logits in s->logits (R × V) and their
// log-sum-exp in s->lse.
static int decode_rows(moa_session *s, int R) {
    const moa_model *m = s->m;
    const moa_config *c = s->c;
    int d = c->d_model, h = c->head_dim, k = c->top_k, V = c->vocab_size;
    int Ld = c->decoder_layers;
    work *w = &s->w;
    int *tok = w->tok, *pos = w->pos;
    for (int r = 0; r < R; r++) {
        sent *st = s->sents[s->row_sent[r]];
        int b = s->row_slot[r];
        tok[r] = st->step == 0 ? c->decoder_start_id
                               : st->tokens[(size_t)b * st->cap + st->step - 1];
        pos[r] = c->pad_id + 1 + st->step;
    }
    embed(m, tok, pos, R, m->dec_embed, w->x);

    for (int l = 0; l < Ld; l++) {
        const moa_dec_layer *L = &m->dec[l];
        // self-attention over the cache
        const float *in = block_input(c, w, &L->self_attn_ln, R);
        const moa_qin *qi = prepare_input(m, w, in, R);
        project_kv(c, &L->self_attn, in, qi, R, w->kb, w->vb);
        route(m, w, &L->self_attn, in, R);
        project_q(c, w, &L->self_attn, in, qi);
        for (int r = 0; r < R; r++) {
            sent *st = s->sents[s->row_sent[r]];
            int b = s->row_slot[r], t = st->step;
            size_t base = (((size_t)b * Ld + l) * st->cap) * h;
            float *K = st->kc + base, *Vc = st->vc + base;
            memcpy(K + (size_t)t * h, w->kb + (size_t)r * h, (size_t)h * sizeof(float));
            memcpy(Vc + (size_t)t * h, w->vb + (size_t)r * h, (size_t)h * sizeof(float));
            moa_attend(w->q + (size_t)r * k * h, k, K, Vc, t + 1, h, s->att,
                       w->a + (size_t)r * k * h);
            if (st->o.trace) {
                size_t at = ((size_t)b * Ld + l) * st->cap + t;
                record_picks(c, w, r, st->ds_e + at * k, st->ds_g + at * k, st->ds_m + at);
            }
        }
        project_o(c, w, &L->self_attn, R, w->y);
        block_output(c, w, &L->self_attn_ln, R);

        // cross-attention over the sentence's encoder output
        in = block_input(c, w, &L->cross_attn_ln, R);
        route(m, w, &L->cross_attn, in, R);
        project_q(c, w, &L->cross_attn, in, prepare_input(m, w, in, R));
        for (int r = 0; r < R; r++) {
            sent *st = s->sents[s->row_sent[r]];
            int b = s->row_slot[r], n = st->src_len;
            const float *K = st->xk + (size_t)l * n * h, *Vx = st->xv + (size_t)l * n * h;
            moa_attend(w->q + (size_t)r * k * h, k, K, Vx, n, h, s->att, w->a + (size_t)r * k * h);
            if (st->o.attention) {
                // s->att holds the k heads' softmax rows: their gate-weighted mean
                float *dst = st->xa + (((size_t)b * Ld + l) * st->cap + st->step) * n, gs = 0;
                const float *g = w->pick_g + (size_t)r * k;
                for (int j = 0; j < k; j++) gs += g[j];
                memset(dst, 0, (size_t)n * sizeof(float));
                for (int j = 0; j < k; j++)
                    moa_axpy(dst, gs > 0 ? g[j] / gs : 1.0f / k, s->att + (size_t)j * n, n);
            }
            if (st->o.trace) {
                size_t at = ((size_t)b * Ld + l) * st->cap + st->step;
                record_picks(c, w, r, st->dc_e + at * k, st->dc_g + at * k, st->dc_m + at);
            }
        }
        project_o(c, w, &L->cross_attn, R, w->y);
        block_output(c, w, &L->cross_attn_ln, R);

        ffn_block(c, w, &L->ffn, &L->final_ln, R);
    }
    if (c->normalize_before)
        moa_layernorm(w->x, w->x, R, d, m->dec_final_ln.w, m->dec_final_ln.b,
                      c->layernorm_eps);
    // logits (R×V) = x (R×d) @ out_projᵀ, each row's log-sum-exp folded in
    // by the product as its tiles come out (no second pass over R×V)
    if (!m->shortlist) {
        moa_gemm_w_lse(R, w->x, d, &m->out_p, s->logits, V, s->lse);
        return 0;
    }
    // With a shortlist, each sentence's rows against its candidates' rows of
    // out_proj: the sentence's n_live rows of n_cand logits lie one after
    // the other from its first row's place in s->logits.
    for (int r0 = 0; r0 < R;) {
        int r1 = r0 + 1;
        while (r1 < R && s->row_sent[r1] == s->row_sent[r0]) r1++;
        const sent *st = s->sents[s->row_sent[r0]];
        moa_gemm_rows(r1 - r0, w->x + (size_t)r0 * d, d, &m->out_rows, st->cand, st->n_cand,
                      s->logits + (size_t)r0 * V, st->n_cand, s->lse + r0);
        r0 = r1;
    }
    return 0;
}

// --- search bookkeeping ---------------------------------------------------------------

// Finishes the hypothesis in `slot` extended by `token` (eos, or the last
// forced token) with log-prob lp and total score `total`: copies its tokens,
// log-probs and trace rows into the sentence's finished storage (the slot
// itself goes on being reused by the search).
static void finish(const moa_config *c, sent *st, int slot, int token, float lp,
                   double total) {
    int n = st->step + 1, f = st->n_fin;
    size_t cap = (size_t)st->cap;
    int *tk = st->fin_tok + (size_t)f * cap;
    float *lq = st->fin_lp + (size_t)f * cap;
    memcpy(tk, st->tokens + (size_t)slot * cap, (size_t)st->step * sizeof(int));
    memcpy(lq, st->lps + (size_t)slot * cap, (size_t)st->step * sizeof(float));
    tk[st->step] = token;
    lq[st->step] = lp;
    st->fin[f].n_tokens = n;
    st->fin[f].log_prob = total;
    float lpen = st->forced ? 1.0f : st->o.length_penalty;
    st->fin[f].score = total / pow((double)n, (double)lpen);
    if (st->o.trace) {
        int Ld = c->decoder_layers, k = c->top_k;
        for (int l = 0; l < Ld; l++) {
            size_t src = ((size_t)slot * Ld + l) * cap, dst = ((size_t)f * Ld + l) * cap;
            size_t nk = (size_t)n * k;
            memcpy(st->fds_e + dst * k, st->ds_e + src * k, nk * sizeof(int));
            memcpy(st->fds_g + dst * k, st->ds_g + src * k, nk * sizeof(float));
            memcpy(st->fds_m + dst, st->ds_m + src, (size_t)n * sizeof(float));
            memcpy(st->fdc_e + dst * k, st->dc_e + src * k, nk * sizeof(int));
            memcpy(st->fdc_g + dst * k, st->dc_g + src * k, nk * sizeof(float));
            memcpy(st->fdc_m + dst, st->dc_m + src, (size_t)n * sizeof(float));
        }
    }
    if (st->o.attention) {
        size_t row = (size_t)st->src_len;
        for (int l = 0; l < c->decoder_layers; l++) {
            size_t src = ((size_t)slot * c->decoder_layers + l) * cap;
            size_t dst = ((size_t)f * c->decoder_layers + l) * cap;
            memcpy(st->fxa + dst * row, st->xa + src * row, (size_t)n * row * sizeof(float));
        }
    }
    st->n_fin++;
}

// For every slot j with parent[j] != j, copies the first `used` elements of
// each of its `groups` runs (runs `run` elements apart, slots `slot_stride`
// apart) from slot parent[j]. Staged through scratch: a parent may itself be
// overwritten. Only the positions filled so far move, not the capacity.
static void reorder_array(void *base, size_t elem, size_t slot_stride, int groups,
                          size_t run, size_t used, const int *parent, int n,
                          char *scratch) {
    char *b = base;
    size_t bytes = used * elem;
    for (int j = 0; j < n; j++) {
        if (parent[j] == j) continue;
        for (int g = 0; g < groups; g++)
            memcpy(scratch + ((size_t)j * groups + g) * bytes,
                   b + ((size_t)parent[j] * slot_stride + g * run) * elem, bytes);
    }
    for (int j = 0; j < n; j++) {
        if (parent[j] == j) continue;
        for (int g = 0; g < groups; g++)
            memcpy(b + ((size_t)j * slot_stride + g * run) * elem,
                   scratch + ((size_t)j * groups + g) * bytes, bytes);
    }
}

// Makes new slot j continue old slot parent[j]: its tokens, log-probs,
// score, KV cache and traces.
static int reorder(moa_session *s, sent *st, const int *parent, int n) {
    const moa_config *c = s->c;
    int identity = 1;
    for (int j = 0; j < n; j++) identity &= parent[j] == j;
    if (identity) return 0;
    int Ld = c->decoder_layers, h = c->head_dim, k = c->top_k;
    size_t cap = (size_t)st->cap, pos = (size_t)st->step + 1, toks = (size_t)st->step;
    // the largest array staged: KV, n slots × Ld layers × pos × h floats;
    // the arena was sized for the whole sentence at its admission
    MOA_ASSERT((size_t)n * Ld * pos * reorder_width(c, st) + (size_t)n * pos <= s->reorder_cap);
    char *scr = (char *)s->reorder;
    size_t kv_slot = (size_t)Ld * cap * h;
    reorder_array(st->kc, sizeof(float), kv_slot, Ld, cap * h, pos * h, parent, n, scr);
    reorder_array(st->vc, sizeof(float), kv_slot, Ld, cap * h, pos * h, parent, n, scr);
    reorder_array(st->tokens, sizeof(int), cap, 1, cap, toks, parent, n, scr);
    reorder_array(st->lps, sizeof(float), cap, 1, cap, toks, parent, n, scr);
    if (st->o.trace) {
        size_t tr_slot = (size_t)Ld * cap * k, trm_slot = (size_t)Ld * cap;
        reorder_array(st->ds_e, sizeof(int), tr_slot, Ld, cap * k, pos * k, parent, n, scr);
        reorder_array(st->ds_g, sizeof(float), tr_slot, Ld, cap * k, pos * k, parent, n, scr);
        reorder_array(st->dc_e, sizeof(int), tr_slot, Ld, cap * k, pos * k, parent, n, scr);
        reorder_array(st->dc_g, sizeof(float), tr_slot, Ld, cap * k, pos * k, parent, n, scr);
        reorder_array(st->ds_m, sizeof(float), trm_slot, Ld, cap, pos, parent, n, scr);
        reorder_array(st->dc_m, sizeof(float), trm_slot, Ld, cap, pos, parent, n, scr);
    }
    if (st->o.attention) {
        size_t row = (size_t)st->src_len;
        reorder_array(st->xa, sizeof(float), (size_t)Ld * cap * row, Ld, cap * row, pos * row,
                      parent, n, scr);
    }
    double sc[MOA_MAX_BEAM];
    for (int j = 0; j < n; j++) sc[j] = st->scores[parent[j]];
    memcpy(st->scores, sc, (size_t)n * sizeof(double));
    return 0;
}

// Extends the single hypothesis of a forced or sampled sentence by `tok`
// (log-prob logit - lse, the logit at position pos of the row); `last`
// finishes it. 1 when finished, 0, or <0.
static int extend_single(const moa_config *c, sent *st, int tok, int pos, const float *logits,
                         float lse, int last) {
    int t = st->step;
    float l = logits[pos] - lse;
    if (!(l > -INFINITY)) return 1;  // NaN: finished without a hypothesis (n_hyps 0)
    double total = st->scores[0] + (double)l;
    if (last) {
        finish(c, st, 0, tok, l, total);
        return 1;
    }
    st->tokens[t] = tok;
    st->lps[t] = l;
    st->scores[0] = total;
    st->step++;
    return 0;
}

// Advances one sentence given its rows' logits (n_live rows of V, or of
// n_cand with a shortlist, position j then being piece cand[j]) and their
// log-sum-exp: a token's log-prob is logit - lse, in float.
// Returns 1 when the sentence is finished, 0 if it goes on, <0 on error.
static int advance(moa_session *s, sent *st, float *lp, const float *lse) {
    const moa_config *c = s->c;
    int V = st->cand ? st->n_cand : c->vocab_size, t = st->step, rc;
    size_t cap = (size_t)st->cap;

    if (st->forced) {
        int tok = st->tgt[t];
        return extend_single(c, st, tok, cand_pos(st, tok), lp, lse[0], t == st->tgt_len - 1);
    }

    // (positions 0-3 are the specials in both layouts)
    for (int i = 0; i < st->n_live; i++)
        moa_mask_row(lp + (size_t)i * V, V, c, &st->o, t, st->max_len);

    if (st->sampling) {
        int pos = moa_sample_token(lp, V, &st->o, &st->rng, s->sample_f, s->sample_i);
        if (pos < 0) return 1;  // nothing allowed: only a model's NaN does that
        int tok = st->cand ? st->cand[pos] : pos;
        return extend_single(c, st, tok, pos, lp, lse[0], tok == c->eos_id);
    }

    int B = st->beam;
    int nc = moa_beam_candidates(lp, st->n_live, V, lse, st->scores, 2 * B, s->cand);
    if (st->cand)
        for (int i = 0; i < nc; i++) s->cand[i].token = st->cand[s->cand[i].token];
    int parent[MOA_MAX_BEAM], ntok[MOA_MAX_BEAM];
    float nlp[MOA_MAX_BEAM];
    double nscore[MOA_MAX_BEAM];
    int n_new = 0;
    for (int i = 0; i < nc; i++) {
        const moa_cand *cd = &s->cand[i];
        if (cd->token == c->eos_id) {
            if (i < B && st->n_fin < B) finish(c, st, cd->hyp, cd->token, cd->lp, cd->score);
        } else if (n_new < B) {
            parent[n_new] = cd->hyp;
            ntok[n_new] = cd->token;
            nlp[n_new] = cd->lp;
            nscore[n_new] = cd->score;
            n_new++;
        }
    }
    if (st->n_fin >= B || n_new == 0) return 1;
    if ((rc = reorder(s, st, parent, n_new))) return rc;
    for (int j = 0; j < n_new; j++) {
        st->tokens[j * cap + t] = ntok[j];
        st->lps[j * cap + t] = nlp[j];
        st->scores[j] = nscore[j];
    }
    st->n_live = n_new;
    st->step++;
    return 0;
}

// --- results -------------------------------------------------------------------

// The caller's copy of finished hypotheses ord[0..want) of a sentence, laid
// out in ONE block (moa_result.mem): the hypotheses, then each one's tokens,
// log-probs (lps) and trace. base NULL only measures; returns the size.
static size_t result_layout(const moa_config *c, const sent *st, const int *ord, int want,
                            int lps, char *base, moa_result *r) {
    size_t Le = c->encoder_layers, Ld = c->decoder_layers, k = c->top_k;
    size_t cap = (size_t)st->cap, ne = Le * st->src_len;
    carve cv = {base, 0};
    moa_hypothesis *hy = NULL;
    TAKE(&cv, hy, (size_t)(want ? want : 1) * sizeof *hy);
    if (base) {
        memset(hy, 0, (size_t)(want ? want : 1) * sizeof *hy);
        r->hyps = hy;
    }
    for (int i = 0; i < want; i++) {
        int f = ord[i], n = st->fin[f].n_tokens;
        size_t nd = Ld * n;
        // no &hy[i] while measuring: arithmetic on a null pointer is undefined
        moa_hypothesis *h = base ? &hy[i] : NULL;
        TAKE(&cv, h->tokens, (size_t)n * sizeof(int));
        if (lps) TAKE(&cv, h->token_logprobs, (size_t)n * sizeof(float));
        moa_trace *t = NULL;
        if (st->o.trace) {
            TAKE(&cv, t, sizeof *t);
            TAKE(&cv, t->enc_experts, ne * k * sizeof(int));
            TAKE(&cv, t->enc_gates, ne * k * sizeof(float));
            TAKE(&cv, t->enc_margin, ne * sizeof(float));
            TAKE(&cv, t->dself_experts, nd * k * sizeof(int));
            TAKE(&cv, t->dself_gates, nd * k * sizeof(float));
            TAKE(&cv, t->dself_margin, nd * sizeof(float));
            TAKE(&cv, t->dcross_experts, nd * k * sizeof(int));
            TAKE(&cv, t->dcross_gates, nd * k * sizeof(float));
            TAKE(&cv, t->dcross_margin, nd * sizeof(float));
        }
        size_t row = (size_t)st->src_len;
        if (st->o.attention) TAKE(&cv, h->attention, nd * row * sizeof(float));
        if (!base) continue;
        if (st->o.attention) {
            for (size_t l = 0; l < Ld; l++)
                memcpy(h->attention + l * n * row, st->fxa + ((size_t)f * Ld + l) * cap * row,
                       (size_t)n * row * sizeof(float));
            h->attention_layers = (int)Ld;
            h->attention_cols = st->src_len;
        }
        memcpy(h->tokens, st->fin_tok + (size_t)f * cap, (size_t)n * sizeof(int));
        if (lps) memcpy(h->token_logprobs, st->fin_lp + (size_t)f * cap, (size_t)n * sizeof(float));
        h->n_tokens = n;
        h->log_prob = st->fin[f].log_prob;
        h->score = st->fin[f].score;
        if (!t) continue;
        h->trace = t;
        t->layers_enc = (int)Le;
        t->layers_dec = (int)Ld;
        t->k = (int)k;
        t->src_len = st->src_len;
        t->tgt_len = n;
        memcpy(t->enc_experts, st->enc_e, ne * k * sizeof(int));
        memcpy(t->enc_gates, st->enc_g, ne * k * sizeof(float));
        memcpy(t->enc_margin, st->enc_m, ne * sizeof(float));
        for (size_t l = 0; l < Ld; l++) {
            size_t src = ((size_t)f * Ld + l) * cap, dst = l * n, nk = (size_t)n * k;
            memcpy(t->dself_experts + dst * k, st->fds_e + src * k, nk * sizeof(int));
            memcpy(t->dself_gates + dst * k, st->fds_g + src * k, nk * sizeof(float));
            memcpy(t->dself_margin + dst, st->fds_m + src, (size_t)n * sizeof(float));
            memcpy(t->dcross_experts + dst * k, st->fdc_e + src * k, nk * sizeof(int));
            memcpy(t->dcross_gates + dst * k, st->fdc_g + src * k, nk * sizeof(float));
            memcpy(t->dcross_margin + dst, st->fdc_m + src, (size_t)n * sizeof(float));
        }
    }
    return cv.off;
}

// Queues a finished sentence's best hypotheses for moa_session_take, as one
// block the caller owns.
static int retire(moa_session *s, sent *st) {
    int want = st->forced || st->sampling ? 1 : st->o.num_hypotheses;
    // by score, best first; a stable insertion sort, so finishing order
    // breaks ties
    int ord[MOA_MAX_BEAM];
    for (int i = 0; i < st->n_fin; i++) {
        int j = i;
        while (j > 0 && st->fin[i].score > st->fin[ord[j - 1]].score) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = i;
    }
    if (want > st->n_fin) want = st->n_fin;
    if (s->done_head + s->n_done == s->cap_done) {
        if (s->done_head > 0) {
            memmove(s->done, s->done + s->done_head, (size_t)s->n_done * sizeof *s->done);
            s->done_head = 0;
        } else {
            int nc = s->cap_done ? 2 * s->cap_done : 16;
            moa_result *q = sess_realloc(s, s->done, (size_t)nc * sizeof *q);
            if (!q) return MOA_ENOMEM;
            s->done = q;
            s->cap_done = nc;
        }
    }
    int lps = st->o.token_logprobs || st->forced;
    char *mem = sess_alloc(s, result_layout(s->c, st, ord, want, lps, NULL, NULL));
    if (!mem) return MOA_ENOMEM;
    moa_result *r = &s->done[s->done_head + s->n_done];
    memset(r, 0, sizeof *r);
    r->id = st->id;
    r->user = st->user;
    r->mem = mem;
    r->n_hyps = want;
    result_layout(s->c, st, ord, want, lps, mem, r);
    s->n_done++;
    return 0;
}

// --- session lifecycle -------------------------------------------------------------

moa_session *moa_session_create(const moa_model *m, int max_rows, char *err,
                                size_t errlen) {
    if (!m || max_rows < 1) {
        if (err) snprintf(err, errlen, "moa_session_create: need a model and max_rows >= 1");
        return NULL;
    }
    moa_session *s = calloc(1, sizeof *s);
    if (!s) goto fail_alloc;
    s->n_allocs = 1;
    s->m = m;
    s->c = &m->cfg;
    s->max_rows = max_rows;
    const moa_config *c = s->c;
    // Room for every row decoding, and for the decoder's attention over the
    // longest sequence; the encoder's needs and the reorder staging come
    // with the sentences.
    if (arena_reserve(s, max_rows, (size_t)c->top_k * (c->max_positions + 1), 0))
        goto fail_alloc;
    return s;
fail_alloc:
    if (err) snprintf(err, errlen, "moa_session_create: out of memory for %d rows", max_rows);
    moa_session_free(s);
    return NULL;
}

void moa_session_free(moa_session *s) {
    if (!s) return;
    for (int i = 0; i < s->n_sents; i++) sent_release(s, s->sents[i]);
    free(s->sents);
    for (int i = 0; i < s->n_done; i++) moa_result_clear(&s->done[s->done_head + i]);
    free(s->done);
    free(s->arena);
    pool_close(&s->heads);
    pool_close(&s->bodies);
    free(s);
}

void moa_session_memory(const moa_session *s, moa_session_mem *m) {
    m->arena_bytes = s->arena ? s->arena_bytes : 0;
    m->blocks_in_use_bytes = s->heads.used_bytes + s->bodies.used_bytes;
    m->blocks_free_bytes = s->heads.free_bytes + s->bodies.free_bytes;
}

uint64_t moa_session_allocs(const moa_session *s) { return s->n_allocs; }

int moa_session_live(const moa_session *s) { return s->n_sents; }
int moa_session_rows(const moa_session *s) { return s->rows_used; }

static int id_in_use(const moa_session *s, int id) {
    for (int i = 0; i < s->n_sents; i++)
        if (s->sents[i]->id == id) return 1;
    for (int i = 0; i < s->n_done; i++)
        if (s->done[s->done_head + i].id == id) return 1;
    return 0;
}

// Ids count up from 0 and wrap from INT_MAX back to 0 (a long-lived
// server's session sees more than 2^31 sentences). After the wrap an id
// still held by a sentence or an untaken result is skipped, so ids stay
// unique within the session (callers cancel and match results by id).
static int new_id(moa_session *s) {
    for (;;) {
        int id = s->next_id;
        if (id == INT_MAX) {
            s->next_id = 0;
            s->ids_wrapped = 1;
        } else {
            s->next_id = id + 1;
        }
        if (!s->ids_wrapped || !id_in_use(s, id)) return id;
    }
}

static int session_push(moa_session *s, const int *src, int src_len, const int *tgt,
                        int tgt_len, const moa_search_opts *opts, void *user,
                        char *err, size_t errlen) {
    const moa_config *c = s->c;
    int rc = moa_search_opts_check(opts, c, err, errlen);
    if (rc) return rc;
    if (src_len < 0 || (src_len > 0 && !src)) {
        if (err) snprintf(err, errlen, "invalid source");
        return MOA_EINVAL;
    }
    if (src_len + 1 > c->max_positions) {
        if (err) snprintf(err, errlen, "source has %d tokens with eos; the model allows %d",
                          src_len + 1, c->max_positions);
        return MOA_ETOOLONG;
    }
    if (tgt && tgt_len + 1 > c->max_positions) {
        if (err) snprintf(err, errlen, "target has %d tokens with eos; the model allows %d",
                          tgt_len + 1, c->max_positions);
        return MOA_ETOOLONG;
    }
    for (int i = 0; i < src_len; i++)
        if (src[i] < 0 || src[i] >= c->vocab_size) {
            if (err) snprintf(err, errlen, "source token %d out of range: %d", i, src[i]);
            return MOA_EINVAL;
        }
    for (int i = 0; tgt && i < tgt_len; i++)
        if (tgt[i] < 0 || tgt[i] >= c->vocab_size) {
            if (err) snprintf(err, errlen, "target token %d out of range: %d", i, tgt[i]);
            return MOA_EINVAL;
        }
    int sampling = !tgt && moa_search_opts_sampling(opts);
    int beam = tgt ? 1 : moa_search_opts_rows(opts);
    if (beam > s->max_rows) {
        if (err) snprintf(err, errlen, "beam_size %d exceeds the session's %d rows", beam, s->max_rows);
        return MOA_EFULL;
    }
    if (s->n_sents == s->cap_sents) {
        int nc = s->cap_sents ? 2 * s->cap_sents : 16;
        sent **q = sess_realloc(s, s->sents, (size_t)nc * sizeof *q);
        if (!q) goto fail_nomem;
        s->sents = q;
        s->cap_sents = nc;
    }
    // With a shortlist, the sentence's candidate pieces (marked in vmark).
    int n_cand = s->m->shortlist ? mark_candidates(s, src, src_len, tgt, tgt_len) : 0;
    // The header block: the sentence, its source (and target), candidates.
    carve cv = {NULL, 0};
    carve_take(&cv, sizeof(sent));
    carve_take(&cv, (size_t)(src_len + 1) * sizeof(int));
    if (tgt) carve_take(&cv, (size_t)(tgt_len + 1) * sizeof(int));
    if (n_cand) carve_take(&cv, (size_t)n_cand * sizeof(int));
    cv.base = pool_get(s, &s->heads, cv.off);
    if (!cv.base) goto fail_nomem;
    cv.off = 0;
    sent *st = carve_take(&cv, sizeof *st);
    memset(st, 0, sizeof *st);
    st->o = *opts;
    st->user = user;
    st->sampling = sampling;
    st->forced = tgt != NULL;
    st->beam = beam;
    st->src_len = src_len + 1;
    st->src = carve_take(&cv, (size_t)st->src_len * sizeof(int));
    if (src_len) memcpy(st->src, src, (size_t)src_len * sizeof(int));
    st->src[src_len] = c->eos_id;
    if (tgt) {
        st->tgt_len = tgt_len + 1;
        st->tgt = carve_take(&cv, (size_t)st->tgt_len * sizeof(int));
        if (tgt_len) memcpy(st->tgt, tgt, (size_t)tgt_len * sizeof(int));
        st->tgt[tgt_len] = c->eos_id;
        st->max_len = st->tgt_len;
        st->cap = st->tgt_len;
    } else {
        int dflt = 2 * st->src_len + 10;
        if (dflt > c->max_positions - 2) dflt = c->max_positions - 2;
        st->max_len = opts->max_length ? opts->max_length : dflt;
        st->cap = st->max_len + 1;
    }
    if (n_cand) {
        st->cand = carve_take(&cv, (size_t)n_cand * sizeof(int));
        st->n_cand = candidates_from_marks(s, st->cand);
        MOA_ASSERT(st->n_cand == n_cand && st->cand[0] == 0 && st->cand[3] == 3);
    }
    if (sampling) moa_rng_seed(&st->rng, opts->seed);
    st->id = new_id(s);
    st->state = SENT_QUEUED;
    s->sents[s->n_sents++] = st;
    return st->id;
fail_nomem:
    if (err) snprintf(err, errlen, "out of memory");
    return MOA_ENOMEM;
}

int moa_session_add(moa_session *s, const int *src, int src_len,
                    const moa_search_opts *opts, void *user, char *err, size_t errlen) {
    return session_push(s, src, src_len, NULL, 0, opts, user, err, errlen);
}

static void remove_sent(moa_session *s, int idx) {
    sent *st = s->sents[idx];
    if (st->state != SENT_QUEUED) s->rows_used -= st->beam;
    sent_release(s, st);
    memmove(s->sents + idx, s->sents + idx + 1, (size_t)(s->n_sents - idx - 1) * sizeof *s->sents);
    s->n_sents--;
}

int moa_session_cancel(moa_session *s, int id) {
    for (int i = 0; i < s->n_sents; i++)
        if (s->sents[i]->id == id) {
            remove_sent(s, i);
            return 0;
        }
    return MOA_ENOTFOUND;
}

int moa_session_step(moa_session *s) {
    const moa_config *c = s->c;
    int rc, err = 0;
    // Sentences whose result could not be allocated at an earlier step
    // retire first (their search is over; they only wait for memory).
    for (int i = 0; i < s->n_sents;) {
        sent *st = s->sents[i];
        if (st->state != SENT_FINISHED) {
            i++;
        } else if ((rc = retire(s, st)) == 0) {
            remove_sent(s, i);
        } else {
            err = rc;
            i++;
        }
    }

    // admit newcomers while rows remain, in arrival order
    sent *fresh[256];
    int nf = 0, rows = s->rows_used, N = 0;
    size_t longest = 0, staging = 0;
    for (int i = 0; i < s->n_sents && nf < 256; i++) {
        sent *st = s->sents[i];
        if (st->state != SENT_QUEUED) continue;
        if (rows + st->beam > s->max_rows) break;
        rows += st->beam;
        N += st->src_len;
        if ((size_t)st->src_len > longest) longest = (size_t)st->src_len;
        if (reorder_need(c, st) > staging) staging = reorder_need(c, st);
        fresh[nf++] = st;
    }
    if (nf) {
        // The arena grows now if it must, never later in the step: the
        // newcomers' tokens, the longest one's attention, its reorders.
        rc = arena_reserve(s, N > s->max_rows ? N : s->max_rows,
                           longest * longest * (size_t)c->top_k, staging);
        for (int i = 0; i < nf && !rc; i++) rc = sent_alloc(s, fresh[i]);
        if (rc) {
            // All or none: a sentence admitted without the batch's encoder
            // pass would decode against cross-attention K/V never written.
            // They stay queued, without bodies, for the next step; the live
            // ones decode now all the same.
            for (int i = 0; i < nf; i++) {
                pool_put(&s->bodies, fresh[i]->body);
                fresh[i]->body = NULL;
            }
            err = rc;
        } else {
            for (int i = 0; i < nf; i++) {
                fresh[i]->state = SENT_LIVE;
                fresh[i]->n_live = 1;
                s->rows_used += fresh[i]->beam;
            }
            encode(s, fresh, nf);
        }
    }

    // rows: every live hypothesis of every live sentence, grouped by sentence
    int R = 0;
    for (int i = 0; i < s->n_sents; i++) {
        sent *st = s->sents[i];
        if (st->state != SENT_LIVE) continue;
        for (int b = 0; b < st->n_live; b++) {
            s->row_sent[R] = i;
            s->row_slot[R] = b;
            R++;
        }
    }
    if (R == 0) return err;
    MOA_ASSERT(R <= s->w.cap);  // R <= rows_used <= max_rows <= w.cap
    if ((rc = decode_rows(s, R))) return rc;

    // search bookkeeping, sentence by sentence; finished ones retire
    int r = 0;
    for (int i = 0; i < s->n_sents;) {
        sent *st = s->sents[i];
        if (st->state != SENT_LIVE) { i++; continue; }
        int nl = st->n_live;
        int fin = advance(s, st, s->logits + (size_t)r * c->vocab_size, s->lse + r);
        r += nl;
        if (fin < 0) return fin;
        if (!fin) {
            i++;
            continue;
        }
        // Finished: its search must not run again (a forced or sampled
        // sentence would finish a second time), so without memory for its
        // result it waits, FINISHED, for a later step.
        st->state = SENT_FINISHED;
        if ((rc = retire(s, st)) == 0) {
            remove_sent(s, i);
        } else {
            err = rc;
            i++;
        }
    }
    return err ? err : R;
}

int moa_session_take(moa_session *s, moa_result *r) {
    if (s->n_done == 0) return 0;
    *r = s->done[s->done_head];
    s->done_head++;
    s->n_done--;
    if (s->n_done == 0) s->done_head = 0;
    return 1;
}

// --- convenience: whole batches -----------------------------------------------------

static int run_batch(moa_session *s, const int *const *src, const int *src_len,
                     const int *const *tgt, const int *tgt_len, int n,
                     const moa_search_opts *opts, moa_result *out, char *err,
                     size_t errlen) {
    int rc = 0, next = 0, pending = 0;
    for (int i = 0; i < n; i++) memset(&out[i], 0, sizeof out[i]);  // zero on every error
    int *ids = malloc((size_t)(n ? n : 1) * sizeof(int));
    if (!ids) {
        if (err) snprintf(err, errlen, "out of memory");
        return MOA_ENOMEM;
    }
    int beam = tgt ? 1 : moa_search_opts_rows(opts);
    while (next < n || pending > 0) {
        // keep the session full: add while rows would remain free
        while (next < n && (pending + 1) * beam <= s->max_rows) {
            moa_search_opts o = *opts;
            o.seed = opts->seed + (uint64_t)next;
            int id = session_push(s, src[next], src_len[next], tgt ? tgt[next] : NULL,
                                  tgt ? tgt_len[next] : 0, &o, (void *)(intptr_t)next,
                                  err, errlen);
            if (id < 0) { rc = id; goto done; }
            ids[next++] = id;
            pending++;
        }
        if ((rc = moa_session_step(s)) < 0) {
            if (err) snprintf(err, errlen, "%s", moa_strerror(rc));
            goto done;
        }
        rc = 0;
        moa_result r;
        while (moa_session_take(s, &r) == 1) {
            out[(intptr_t)r.user] = r;
            pending--;
        }
    }
done:
    if (rc < 0) {
        for (int i = 0; i < next; i++) {
            moa_session_cancel(s, ids[i]);
            moa_result_clear(&out[i]);
        }
        moa_result r;
        while (moa_session_take(s, &r) == 1) moa_result_clear(&r);
    }
    free(ids);
    return rc;
}

int moa_translate(moa_session *s, const int *const *src, const int *src_len, int n,
                  const moa_search_opts *opts, moa_result *out, char *err, size_t errlen) {
    return run_batch(s, src, src_len, NULL, NULL, n, opts, out, err, errlen);
}

int moa_score(moa_session *s, const int *const *src, const int *src_len,
              const int *const *tgt, const int *tgt_len, int n, int trace,
              moa_result *out, char *err, size_t errlen) {
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.beam_size = 1;
    o.trace = trace;
    o.token_logprobs = 1;
    return run_batch(s, src, src_len, tgt, tgt_len, n, &o, out, err, errlen);
}
