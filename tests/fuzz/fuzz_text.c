// fuzz_text.c — the text layer (server/moa_text.h): cutting a text into
// verbatim and translatable segments (plain and HTML), and splitting long
// translatable stretches so each piece fits.
//
// Input: one selector byte, then the text.
//   bit 0     format html
//   bits 1-7  the fits() limit for moa_text_split_long: 1..128 bytes
//
// Checked: the segments cover the text exactly, in order, none empty; in
// plain text a translatable segment holds no line break and starts and ends
// with something other than whitespace; the split pieces of a translatable
// segment cover it exactly, translatable pieces are never empty, and in
// valid UTF-8 no cut falls inside a character.
#include "fuzz_util.h"
#include "moa_text.h"
#include "moa_utf8.h"

typedef struct limit_ctx {
    size_t max;
    long calls;
} limit_ctx;

static int fits_bytes(void *p, const char *s, size_t n) {
    limit_ctx *c = p;
    c->calls++;
    (void)s;
    return n <= c->max;
}

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

// segs cover [off, off + len) of t exactly.
static void check_cover(const moa_segs *segs, int from, size_t off, size_t len) {
    size_t at = off;
    for (int i = from; i < segs->n; i++) {
        const moa_seg *g = &segs->v[i];
        FUZZ_CHECK(g->off == at);
        FUZZ_CHECK(g->len > 0);
        at += g->len;
    }
    FUZZ_CHECK(at == off + len);
}

static int utf8_boundary(const char *t, size_t len, size_t at) {
    return at == 0 || at >= len || ((unsigned char)t[at] & 0xC0) != 0x80;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int html = data[0] & 1;
    limit_ctx lim = {(size_t)(data[0] >> 1) + 1, 0};
    size_t len = size - 1;
    // An exact copy: nothing may read past len.
    char *t = malloc(len ? len : 1);
    if (!t) return 0;
    memcpy(t, data + 1, len);
    int valid = moa_utf8_check(t, len, NULL, NULL) == 0;

    moa_segs segs = {0};
    FUZZ_CHECK(moa_text_segment(t, len, html, &segs) == 0);
    check_cover(&segs, 0, 0, len);
    for (int i = 0; i < segs.n; i++) {
        const moa_seg *g = &segs.v[i];
        if (!g->translate) continue;
        if (!html) {
            FUZZ_CHECK(!memchr(t + g->off, '\n', g->len));
            FUZZ_CHECK(!is_ws(t[g->off]) && !is_ws(t[g->off + g->len - 1]));
        }
        moa_segs pieces = {0};
        FUZZ_CHECK(moa_text_split_long(t, g->off, g->len, fits_bytes, &lim, &pieces) == 0);
        check_cover(&pieces, 0, g->off, g->len);
        for (int k = 0; k < pieces.n; k++) {
            const moa_seg *p = &pieces.v[k];
            if (valid) FUZZ_CHECK(utf8_boundary(t, len, p->off));
            if (p->translate) FUZZ_CHECK(p->len > 0);
        }
        moa_segs_free(&pieces);
    }
    moa_segs_free(&segs);

    // --- text branch: sentence splitting (server/moa_split.h) and placeholder
    // protection (server/moa_protect.h) are checked here once that branch is
    // merged into main (see tests/fuzz/README.md).

    free(t);
    return 0;
}
