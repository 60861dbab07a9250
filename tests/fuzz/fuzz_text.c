// fuzz_text.c — the text layer: cutting a text into verbatim and
// translatable segments (server/moa_text.h, plain and HTML), finding the
// placeholders and markup (moa_protect.h), cutting stretches into sentences
// and pieces that fit (moa_split.h), masking a sentence for the model and
// putting the items back into a "translation" (moa_protect.h), with the
// tiny trained model's SentencePiece for the sentinels.
//
// Input: two selector bytes, then the text.
//   byte 0  bit 0 format html; bit 1 look for a keyboard accelerator (plain
//           text); bit 2 cut every sentence (else only what does not fit);
//           bit 3 restore with a made-up cross-attention (else none);
//           bits 4-7 the fits() limit: 4 + 8·n bytes
//   byte 1  the "translation" restored: the masked sentence's own ids with
//           every (b & 15)-th dropped (0: none) and, with bit 4, the first
//           one repeated; bit 5 reverses them
//
// Checked: segments and pieces cover their range exactly and none is empty;
// in plain text a translatable segment holds no line break nor edge
// whitespace; items are in order, inside their stretch and apart; no cut
// falls inside an item, nor (valid UTF-8) inside a character; trimming
// stays inside the piece; restoring succeeds and gives every item back at
// least as many times as the sentence holds it, whatever the model did.
#include "fuzz_util.h"
#include "moa_protect.h"
#include "moa_split.h"
#include "moa_text.h"
#include "moa_tokenizer.h"
#include "moa_utf8.h"

static moa_tokenizer *tok;
static moa_protect_vocab *pv;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char root[4096], dir[4200], err[512];
    fuzz_find_root(*argv ? (*argv)[0] : NULL, root, sizeof root);
    snprintf(dir, sizeof dir, "%s/" FUZZ_TINY, root);
    if (!(tok = moa_tokenizer_load(dir, err, sizeof err)) ||
        !(pv = moa_protect_vocab_create(tok))) {
        fprintf(stderr, "fuzz_text: %s\n", err);
        abort();
    }
    return 0;
}

typedef struct limit_ctx {
    size_t max;
} limit_ctx;

static int fits_bytes(void *p, const char *s, size_t n) {
    (void)s;
    return n <= ((limit_ctx *)p)->max;
}

// segs[from..) cover [off, off + len) exactly, in order, none empty.
static void check_cover(const moa_segs *segs, int from, size_t off, size_t len) {
    size_t at = off;
    for (int i = from; i < segs->n; i++) {
        FUZZ_CHECK(segs->v[i].off == at && segs->v[i].len > 0);
        at += segs->v[i].len;
    }
    FUZZ_CHECK(at == off + len);
}

static int inside_span(const moa_span *sp, int n, size_t at) {
    for (int i = 0; i < n; i++)
        if (at > sp[i].off && at < sp[i].off + sp[i].len) return 1;
    return 0;
}

static size_t count(const char *hay, size_t n, const char *needle, size_t m) {
    size_t c = 0;
    for (size_t i = 0; m && i + m <= n; i++)
        if (!memcmp(hay + i, needle, m)) c++;
    return c;
}

// Masks one sentence, "translates" it by editing its own ids, restores.
static void protect_sentence(const char *t, size_t off, size_t len, const moa_phs *ph, int html,
                             char attr, int sel, int edit) {
    moa_protect_trim(t, &off, &len, ph);
    moa_prot p;
    FUZZ_CHECK(moa_protect_unit(pv, t, off, len, ph, html, attr, &p) == 0);
    FUZZ_CHECK(p.masked && p.masked[p.masked_len] == 0);
    for (int i = 0; i < p.n_items; i++)
        FUZZ_CHECK(p.items[i].off >= off && p.items[i].off + p.items[i].len <= off + len);
    (void)moa_protect_has_words(&p);
    int *ids = NULL, n = 0;
    if (moa_tokenizer_encode(tok, p.masked, p.masked_len, 0, &ids, &n, NULL, 0) != 0) {
        moa_prot_free(&p);  // NUL or bad UTF-8: the server refused the text before
        return;
    }
    FUZZ_CHECK(moa_protect_locate(&p, tok, ids, n) == 0);
    // the "translation": ids edited as byte 1 says, then eos
    int *hyp = malloc((size_t)(2 * n + 2) * sizeof(int)), h = 0;
    FUZZ_CHECK(hyp);
    int stride = edit & 15;
    if ((edit & 16) && n) hyp[h++] = ids[0];
    for (int i = 0; i < n; i++)
        if (!stride || (i + 1) % stride) hyp[h++] = ids[i];
    if (edit & 32)
        for (int i = 0, j = h - 1; i < j; i++, j--) {
            int x = hyp[i];
            hyp[i] = hyp[j];
            hyp[j] = x;
        }
    hyp[h++] = 2;  // eos
    float *attn = NULL;
    int cols = n + 1;
    if (sel & 8) {  // each target token attends to "its" source token and the next
        attn = calloc((size_t)h * (size_t)cols, sizeof *attn);
        FUZZ_CHECK(attn);
        for (int r = 0; r < h; r++) {
            attn[(size_t)r * cols + r % cols] += 0.75f;
            attn[(size_t)r * cols + (r + 1) % cols] += 0.25f;
        }
    }
    moa_buf out = {0}, warn = {0};
    FUZZ_CHECK(moa_protect_restore(&p, pv, tok, hyp, h, attn, cols, NULL, NULL, &out, &warn) == 0);
    FUZZ_CHECK(!out.oom && !warn.oom);
    // every item back, at least as often as the sentence holds it
    for (int i = 0; i < p.n_items; i++) {
        const moa_prot_item *a = &p.items[i];
        size_t want = 0;
        for (int j = 0; j < p.n_items; j++)
            want += p.items[j].len == a->len && !memcmp(t + p.items[j].off, t + a->off, a->len);
        FUZZ_CHECK(count(out.s ? out.s : "", out.n, t + a->off, a->len) >= want);
    }
    free(out.s);
    free(warn.s);
    free(attn);
    free(hyp);
    free(ids);
    moa_prot_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int sel = data[0], edit = data[1];
    int html = sel & 1, accel = (sel >> 1) & 1, sentences = (sel >> 2) & 1;
    limit_ctx lim = {4 + 8 * (size_t)(sel >> 4)};
    size_t len = size - 2;
    char *t = malloc(len ? len : 1);  // an exact copy: nothing may read past len
    if (!t) return 0;
    memcpy(t, data + 2, len);
    int valid = moa_utf8_check(t, len, NULL, NULL) == 0;

    moa_segs segs = {0};
    FUZZ_CHECK(moa_text_segment(t, len, html, &segs) == 0);
    check_cover(&segs, 0, 0, len);
    for (int i = 0; i < segs.n; i++) {
        const moa_seg g = segs.v[i];
        if (!g.translate) continue;
        if (!html) {
            FUZZ_CHECK(!memchr(t + g.off, '\n', g.len));
            FUZZ_CHECK(!moa_text_is_ws(t[g.off]) && !moa_text_is_ws(t[g.off + g.len - 1]));
        }
        moa_phs ph = {0};
        FUZZ_CHECK(moa_protect_scan(t, g.off, g.len, html, accel && !html && !g.attr, &ph) == 0);
        for (int k = 0; k < ph.n; k++) {
            FUZZ_CHECK(ph.v[k].off >= g.off && ph.v[k].len > 0 &&
                       ph.v[k].off + ph.v[k].len <= g.off + g.len);
            if (k) FUZZ_CHECK(ph.v[k - 1].off + ph.v[k - 1].len <= ph.v[k].off);
        }
        moa_span *spans = NULL;
        int ns = moa_phs_spans(&ph, &spans);
        FUZZ_CHECK(ns >= 0);
        moa_segs sub = {0};
        FUZZ_CHECK(moa_split(t, g.off, g.len, spans, ns, sentences, fits_bytes, &lim, &sub) == 0);
        check_cover(&sub, 0, g.off, g.len);
        for (int k = 0; k < sub.n; k++) {
            const moa_seg *s = &sub.v[k];
            FUZZ_CHECK(!inside_span(spans, ns, s->off));
            if (valid) FUZZ_CHECK(s->off == 0 || ((unsigned char)t[s->off] & 0xC0) != 0x80);
            if (s->translate) protect_sentence(t, s->off, s->len, &ph, html, g.attr, sel, edit);
        }
        moa_segs_free(&sub);
        free(spans);
        moa_phs_free(&ph);
    }
    moa_segs_free(&segs);
    free(t);
    return 0;
}
