// test_protect.c — placeholders, markup and accelerators (server/moa_protect.c):
// what counts as an item, what the model sees, and how the translation gets
// them back — with real SentencePiece pieces (the tiny trained model's
// vocabulary, which has the sentinel pieces) and hand-made alignments.
#include <stdint.h>

#include "moa_protect.h"
#include "moa_test.h"

#define TOKDIR "tests/fixtures/models/tiny-trained"

static moa_tokenizer *tok_load(void) {
    char err[512];
    moa_tokenizer *t = moa_tokenizer_load(TOKDIR, err, sizeof err);
    if (!t) MOA_TEST_FAIL("%s", err);
    return t;
}

// The items of text as "a|b|c".
static char *items_of(const char *text, int html) {
    moa_phs ph = {0};
    if (moa_protect_scan(text, 0, strlen(text), html, 0, &ph)) MOA_TEST_FAIL("out of memory");
    moa_buf b = {0};
    moa_buf_puts(&b, "");
    for (int i = 0; i < ph.n; i++) {
        if (i) moa_buf_puts(&b, "|");
        moa_buf_put(&b, text + ph.v[i].off, ph.v[i].len);
    }
    moa_phs_free(&ph);
    return b.s;
}

static const struct {
    const char *in, *want;
    int html;
} scan_cases[] = {
    {"Delete %s files", "%s", 0},
    {"%1$s of %2$s", "%1$s|%2$s", 0},
    {"Width %-10.2f mm", "%-10.2f", 0},
    {"%(name)s and %(count)d", "%(name)s|%(count)d", 0},
    {"Qt %1 and %L2", "%1|%L2", 0},
    {"{0} {name} {0,number} {} {0:.2f}", "{0}|{name}|{0,number}|{}|{0:.2f}", 0},
    {"{0, number, integer} items", "{0, number, integer}", 0},
    {"Hello ${USER} and {{ user }}", "${USER}|{{ user }}", 0},
    {"100%% sure, 50% off", "%%", 0},
    {"%qE changed, %'d items, %lld bytes, %zu, %I64d", "%qE|%'d|%lld|%zu|%I64d", 0},
    {"<b>Bold</b> and <br/> and <a href=\"x\">link</a>", "<b>|</b>|<br/>|<a href=\"x\">|</a>", 0},
    {"Usage: cmd <file>", "", 0},                       // a word, not markup
    {"Use <para>text</para>", "<para>|</para>", 0},     // closed: markup
    {"Tom &amp; Jerry &#8217; &#x1F;", "&amp;|&#8217;|&#x1F;", 0},
    {"R&D costs", "", 0},
    {"See <code>a < b</code> now &nbsp;", "<code>a < b</code>|&nbsp;", 1},
    {"<p class=\"x\">Hi <!-- note --> there</p>", "<p class=\"x\">|<!-- note -->|</p>", 1},
};

static void test_scan_items(void) {
    int bad = 0;
    for (size_t i = 0; i < sizeof scan_cases / sizeof scan_cases[0]; i++) {
        char *got = items_of(scan_cases[i].in, scan_cases[i].html);
        if (strcmp(got, scan_cases[i].want)) {
            fprintf(stderr, "  %s\n    got  %s\n    want %s\n", scan_cases[i].in, got,
                    scan_cases[i].want);
            bad++;
        }
        free(got);
    }
    ASSERT_EQ_INT(bad, 0);
}

static void test_accelerators_found(void) {
    static const struct {
        const char *in;
        long at;  // -1: none
    } c[] = {
        {"&Save", 0}, {"Sa&ve", 2}, {"_File", 0}, {"Open _recent", 5}, {"Save && &Quit", 8},
        {"Tom & Jerry", -1}, {"&&Save", -1}, {"file_name", -1}, {"&File &Edit", -1},
        {"http://a/?x=1&y=2", -1}, {"&amp; more", -1}, {"__init__", -1},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        moa_phs ph = {0};
        ASSERT_EQ_INT(moa_protect_scan(c[i].in, 0, strlen(c[i].in), 0, 1, &ph), 0);
        long got = ph.accel == SIZE_MAX ? -1 : (long)ph.accel;
        if (got != c[i].at) {
            fprintf(stderr, "  %s: accelerator at %ld, want %ld\n", c[i].in, got, c[i].at);
            bad++;
        }
        moa_phs_free(&ph);
    }
    ASSERT_EQ_INT(bad, 0);
}

static char *trimmed(const char *text) {
    moa_phs ph = {0};
    size_t off = 0, len = strlen(text);
    if (moa_protect_scan(text, 0, len, 1, 0, &ph)) MOA_TEST_FAIL("out of memory");
    moa_protect_trim(text, &off, &len, &ph);
    moa_phs_free(&ph);
    return strndup(text + off, len);
}

static void test_trim_wrapping_tags(void) {
    static const char *const c[][2] = {
        {"<p>Hello</p>", "Hello"},
        {"<b>Open</b> the file", "<b>Open</b> the file"},  // wraps part of it: stays
        {"</b>Hi<b>", "Hi"},                               // pair with nothing inside
        {"<b>a</b> and <b>b</b>", "<b>a</b> and <b>b</b>"},  // first <b> is not the last's
        {"<br/>Text<img src=x>", "Text"},
        {"  <i> x y </i>  ", "x y"},
        {"<span><b>No Results</b></span>", "No Results"},
        {"<!-- c -->", ""},
        {"<b>One sentence.", "One sentence."},     // its </b> is in the next sentence
        {"Two sentences.</b>", "Two sentences."},
        {"<b>Open</b> it.</i>", "<b>Open</b> it."},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char *got = trimmed(c[i][0]);
        ASSERT_STR_EQ(got, c[i][1]);
        free(got);
    }
}

// The masked sentence for text (one sentence, plain text unless html).
static char *masked(const moa_protect_vocab *pv, const char *text, int html) {
    moa_phs ph = {0};
    moa_prot p;
    size_t n = strlen(text);
    if (moa_protect_scan(text, 0, n, html, !html, &ph) ||
        moa_protect_unit(pv, text, 0, n, &ph, html, 0, &p))
        MOA_TEST_FAIL("out of memory");
    char *s = strdup(p.masked);
    moa_prot_free(&p);
    moa_phs_free(&ph);
    return s;
}

static void test_what_the_model_sees(void) {
    moa_tokenizer *tok = tok_load();
    moa_protect_vocab *pv = moa_protect_vocab_create(tok);
    static const char *const c[][2] = {
        {"Delete %s files", "Delete %s files"},            // a piece itself: kept
        {"Copy %02d of %.3e or %-5s", "Copy %d of %f or %s"},  // the plain one of its type
        {"Qt %6 and %1", "Qt {0} and %1"},                 // a distinct unused sentinel
        {"{0} and <i></i> x", "{0} and {1} x"},            // {0} taken: the next one
        {"%s%s done", "{0} done"},                         // a run is one item
        {"Tom &amp; Jerry", "Tom {0} Jerry"},
        {"<b>Open</b> the %s file", "Open the %s file"},   // a pair around words: out
        {"Press <br/> now", "Press {0} now"},
        {"Sa&ve file", "Save file"},                       // the accelerator marker goes
        {"Use <b> %s </b> here", "Use {0} %s {1} here"},   // no word inside: sentinels
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char *got = masked(pv, c[i][0], 0);
        ASSERT_STR_EQ(got, c[i][1]);
        free(got);
    }
    // without sentinel pieces (pv NULL) items stay as they are, pairs still go
    moa_phs ph = {0};
    moa_prot p;
    const char *t = "<b>Open</b> %qE";
    ASSERT_EQ_INT(moa_protect_scan(t, 0, strlen(t), 0, 0, &ph), 0);
    ASSERT_EQ_INT(moa_protect_unit(NULL, t, 0, strlen(t), &ph, 0, 0, &p), 0);
    ASSERT_STR_EQ(p.masked, "Open %qE");
    ASSERT_TRUE(moa_protect_has_words(&p));
    moa_prot_free(&p);
    moa_phs_free(&ph);
    moa_protect_vocab_free(pv);
    moa_tokenizer_free(tok);
}

// --- putting back ---------------------------------------------------------------

typedef struct fixture {
    moa_tokenizer *tok;
    moa_protect_vocab *pv;
} fixture;

static fixture fx_open(void) {
    fixture f = {tok_load(), NULL};
    f.pv = moa_protect_vocab_create(f.tok);
    return f;
}

static void fx_close(fixture *f) {
    moa_protect_vocab_free(f->pv);
    moa_tokenizer_free(f->tok);
}

static int tokens_before(const moa_tokenizer *tok, const char *s, size_t n) {
    int *ids = NULL, k = 0;
    if (n && moa_tokenizer_encode(tok, s, n, 0, &ids, &k, NULL, 0)) MOA_TEST_FAIL("encode");
    free(ids);
    return k;
}

// Byte offset of word w (0-based, split at spaces) of s.
static size_t word_off(const char *s, int w) {
    size_t i = 0;
    for (int k = 0; k < w; k++) {
        while (s[i] && s[i] != ' ') i++;
        while (s[i] == ' ') i++;
    }
    return i;
}

// Translates `text` (one plain-text sentence unless html) into `target`
// (the model's output with sentinels) and puts the items back. align:
// for each word of target, the word of the masked source whose first piece
// it aligns with (100 + w: the last piece of word w; -1: none); NULL: no
// attention at all. Returns the result; *warn the warning lines.
static char *restore(fixture *f, const char *text, int html, const char *target,
                     const int *align, char **warn) {
    moa_phs ph = {0};
    moa_prot p;
    size_t n = strlen(text);
    if (moa_protect_scan(text, 0, n, html, !html, &ph) ||
        moa_protect_unit(f->pv, text, 0, n, &ph, html, 0, &p))
        MOA_TEST_FAIL("out of memory");
    int *src = NULL, ns = 0, *hyp = NULL, nh = 0;
    if (moa_tokenizer_encode(f->tok, p.masked, p.masked_len, 0, &src, &ns, NULL, 0) ||
        moa_tokenizer_encode(f->tok, target, strlen(target), 1, &hyp, &nh, NULL, 0))
        MOA_TEST_FAIL("encode");
    moa_protect_locate(&p, f->tok, src, ns);
    float *attn = NULL;
    int cols = ns + 1;
    if (align) {
        attn = calloc((size_t)nh * cols, sizeof *attn);
        for (int t = 0; t < nh; t++) attn[(size_t)t * cols + ns] = 1;  // eos by default
        for (int w = 0;; w++) {
            size_t a = word_off(target, w);
            if (!target[a]) break;
            size_t b = a;
            while (target[b] && target[b] != ' ') b++;
            int t0 = tokens_before(f->tok, target, a), t1 = tokens_before(f->tok, target, b);
            if (align[w] < 0) continue;
            int last = align[w] >= 100, sw = align[w] % 100;
            size_t sa = word_off(p.masked, sw), sb = sa;
            while (p.masked[sb] && p.masked[sb] != ' ') sb++;
            int s = last ? tokens_before(f->tok, p.masked, sb) - 1
                         : tokens_before(f->tok, p.masked, sa);
            // the word's first piece, past a lone ▁ before a sentinel
            const char *pc = moa_tokenizer_piece(f->tok, src[s]);
            if (!last && pc && !strcmp(pc, "\xE2\x96\x81") && s + 1 < ns) s++;
            for (int t = t0; t < t1; t++) {
                attn[(size_t)t * cols + ns] = 0;
                attn[(size_t)t * cols + s] = 1;
            }
        }
    }
    moa_buf out = {0}, w = {0};
    moa_buf_puts(&out, "");
    moa_buf_puts(&w, "");
    ASSERT_EQ_INT(moa_protect_restore(&p, f->pv, f->tok, hyp, nh, attn, cols, NULL, NULL, &out, &w), 0);
    free(attn);
    free(src);
    free(hyp);
    moa_prot_free(&p);
    moa_phs_free(&ph);
    *warn = w.s;
    return out.s;
}

static void test_restore_kept_and_projected(void) {
    fixture f = fx_open();
    char *w;
    // masked "Open the %s file": Die→the, %s→%s, Datei→file, öffnen→Open
    int al[] = {1, 2, 3, 0};
    char *got = restore(&f, "<b>Open</b> the %s file", 0, "Die %s Datei öffnen", al, &w);
    ASSERT_STR_EQ(got, "Die %s Datei <b>öffnen</b>");
    ASSERT_STR_EQ(w, "");
    free(got);
    free(w);
    // nested pairs stay nested
    int al2[] = {0, 1, 2};
    got = restore(&f, "<b>very <i>big</i> files</b>", 0, "sehr große Dateien", al2, &w);
    ASSERT_STR_EQ(got, "<b>sehr <i>große</i> Dateien</b>");
    free(got);
    free(w);
    fx_close(&f);
}

static void test_restore_dropped_by_alignment(void) {
    fixture f = fx_open();
    char *w;
    // "Delete %s files now" -> "Dateien jetzt löschen": the fewest aligned
    // tokens cross %s (source word 1) at the start
    int al[] = {2, 3, 0};
    char *got = restore(&f, "Delete %s files now", 0, "Dateien jetzt löschen", al, &w);
    ASSERT_STR_EQ(got, "%s Dateien jetzt löschen");
    ASSERT_STR_CONTAINS(w, "'%s' dropped by the model; put back where the attention points");
    free(got);
    free(w);
    // between the word aligned before it and the ones aligned after it
    int al2[] = {0, 2, 3, 4};
    got = restore(&f, "Copy %s to the folder", 0, "Kopieren in den Ordner", al2, &w);
    ASSERT_STR_EQ(got, "Kopieren %s in den Ordner");
    free(got);
    free(w);
    // joined as in the source: '%s' between quotes
    int al3[] = {0, 1, 101, 2};
    got = restore(&f, "File '%s' missing", 0, "Datei ' ' fehlt", al3, &w);
    ASSERT_STR_EQ(got, "Datei '%s' fehlt");
    free(got);
    free(w);
    // no attention: its relative position, said so
    got = restore(&f, "Delete all the %s files", 0, "Alle Dateien löschen", NULL, &w);
    ASSERT_STR_EQ(got, "Alle Dateien %s löschen");
    ASSERT_STR_CONTAINS(w, "relative position (no alignment)");
    free(got);
    free(w);
    fx_close(&f);
}

static void test_restore_repeated_and_made_up(void) {
    fixture f = fx_open();
    char *w;
    // two %s for one: the copy whose token attends to the source %s stays
    int al[] = {-1, 2, 1, 0};
    char *got = restore(&f, "Delete %s files", 0, "%s Dateien %s löschen", al, &w);
    ASSERT_STR_EQ(got, "Dateien %s löschen");
    ASSERT_STR_CONTAINS(w, "'%s' repeated by the model; the extra copy was removed");
    free(got);
    free(w);
    got = restore(&f, "Open the file", 0, "Datei %d öffnen", NULL, &w);
    ASSERT_STR_EQ(got, "Datei öffnen");
    ASSERT_STR_CONTAINS(w, "'%d' made up by the model");
    free(got);
    free(w);
    // sentinel that is no placeholder of the sentence: removed too
    got = restore(&f, "Tom &amp; Jerry", 0, "Tom {0} {1} Jerry", NULL, &w);
    ASSERT_STR_EQ(got, "Tom &amp; Jerry");
    free(got);
    free(w);
    fx_close(&f);
}

static void test_restore_order_rules(void) {
    fixture f = fx_open();
    char *w;
    // printf conversions without argument numbers keep the source order
    char *got = restore(&f, "%s of %d", 0, "%d von %s", NULL, &w);
    ASSERT_STR_EQ(got, "%s von %d");
    ASSERT_STR_CONTAINS(w, "printf conversions reordered");
    free(got);
    free(w);
    // numbered ones may move
    got = restore(&f, "%1$s of %2$s", 0, "%2$s von %1$s", NULL, &w);
    ASSERT_STR_EQ(got, "%2$s von %1$s");
    ASSERT_STR_EQ(w, "");
    free(got);
    free(w);
    // tags sent as sentinels come back well nested
    got = restore(&f, "Use <b> %s </b> here", 0, "{1} %s {0} hier", NULL, &w);
    ASSERT_STR_EQ(got, "<b> %s </b> hier");
    ASSERT_STR_CONTAINS(w, "markup reordered by the model");
    free(got);
    free(w);
    fx_close(&f);
}

static void test_restore_accelerator(void) {
    fixture f = fx_open();
    char *w;
    // on the marked letter of the aligned word when it has one ...
    int al[] = {1, 0};
    char *got = restore(&f, "Op&en file", 0, "Datei öffnen", al, &w);
    ASSERT_STR_EQ(got, "Datei öffn&en");
    free(got);
    free(w);
    // ... else on its first letter; never dropped, never doubled
    int al2[] = {2, 0};
    got = restore(&f, "_Print the page", 0, "Seite drucken", al2, &w);
    ASSERT_STR_EQ(got, "Seite _drucken");
    free(got);
    free(w);
    // no alignment: the first letter
    got = restore(&f, "E&xit", 0, "Beenden", NULL, &w);
    ASSERT_STR_EQ(got, "&Beenden");
    free(got);
    free(w);
    fx_close(&f);
}

static void test_restore_html_escapes(void) {
    fixture f = fx_open();
    char *w;
    // text the model writes is escaped; entities and tags come back as they were
    char *got = restore(&f, "a &amp; b", 1, "a < b & c {0}", NULL, &w);
    ASSERT_STR_EQ(got, "a &lt; b &amp; c &amp;");
    free(got);
    free(w);
    fx_close(&f);
}

const moa_test_case moa_tests_protect[] = {
    {"scan_items", test_scan_items},
    {"accelerators_found", test_accelerators_found},
    {"trim_wrapping_tags", test_trim_wrapping_tags},
    {"what_the_model_sees", test_what_the_model_sees},
    {"restore_kept_and_projected", test_restore_kept_and_projected},
    {"restore_dropped_by_alignment", test_restore_dropped_by_alignment},
    {"restore_repeated_and_made_up", test_restore_repeated_and_made_up},
    {"restore_order_rules", test_restore_order_rules},
    {"restore_accelerator", test_restore_accelerator},
    {"restore_html_escapes", test_restore_html_escapes},
    {NULL, NULL},
};
