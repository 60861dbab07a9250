// test_split.c — sentence splitting (server/moa_split.c): a table of tricky
// cases, each with its expected cut, and the cutting of over-long pieces.
#include <stdint.h>

#include "moa_protect.h"
#include "moa_split.h"
#include "moa_test.h"

// The segments of text as one string: translatable ones in [brackets],
// verbatim ones as they are. Placeholders and tags (moa_protect_scan) are
// the spans never to cut.
static char *render(const char *text, int sentences, moa_fits_fn fits, void *ctx) {
    size_t n = strlen(text);
    moa_phs ph = {0};
    moa_span *sp = NULL;
    moa_segs segs = {0};
    if (moa_protect_scan(text, 0, n, 0, 0, &ph)) MOA_TEST_FAIL("scan: out of memory");
    int ns = moa_phs_spans(&ph, &sp);
    if (ns < 0 || moa_split(text, 0, n, sp, ns, sentences, fits, ctx, &segs))
        MOA_TEST_FAIL("split: out of memory");
    char *out = malloc(3 * n + 2 * (size_t)segs.n + 1), *w = out;
    size_t at = 0;
    for (int i = 0; i < segs.n; i++) {
        const moa_seg *g = &segs.v[i];
        if (g->off != at) MOA_TEST_FAIL("segments do not tile the text at byte %zu", at);
        if (g->translate) *w++ = '[';
        memcpy(w, text + g->off, g->len);
        w += g->len;
        if (g->translate) *w++ = ']';
        at = g->off + g->len;
    }
    if (at != n) MOA_TEST_FAIL("segments end at %zu of %zu", at, n);
    *w = 0;
    moa_segs_free(&segs);
    free(sp);
    moa_phs_free(&ph);
    return out;
}

static const struct {
    const char *in, *want;
} cases[] = {
    // the example
    {"The file could not be opened. Check the permissions and try again. Do you want to continue?",
     "[The file could not be opened.] [Check the permissions and try again.] [Do you want to continue?]"},
    // the source's own whitespace between sentences is kept
    {"Saved.  Next file?", "[Saved.]  [Next file?]"},
    {"Line one.\tLine two.", "[Line one.]\t[Line two.]"},
    {"  Leading and trailing.  ", "  [Leading and trailing.]  "},
    // ! ? … and runs of marks
    {"Are you sure?! This cannot be undone.", "[Are you sure?!] [This cannot be undone.]"},
    {"Really quit? Unsaved changes will be lost.", "[Really quit?] [Unsaved changes will be lost.]"},
    {"Wait\xE2\x80\xA6 Done.", "[Wait\xE2\x80\xA6] [Done.]"},
    {"Loading... Please wait.", "[Loading...] [Please wait.]"},
    // an ellipsis that continues the sentence, a lower-case word after a mark
    {"Loading... please wait", "[Loading... please wait]"},
    {"Error! error details follow", "[Error! error details follow]"},
    {"Done. \xC3\xA9" "clair is ready", "[Done. \xC3\xA9" "clair is ready]"},
    // abbreviations
    {"Use e.g. the default value.", "[Use e.g. the default value.]"},
    {"Use a value, i.e. the default. Then press OK.", "[Use a value, i.e. the default.] [Then press OK.]"},
    {"Copy images, fonts etc. Then restart.", "[Copy images, fonts etc. Then restart.]"},
    {"Mr. Smith is here. Dr. Jones too.", "[Mr. Smith is here.] [Dr. Jones too.]"},
    {"Apples vs. Oranges", "[Apples vs. Oranges]"},
    {"See No. 5 for details.", "[See No. 5 for details.]"},
    {"The answer is no. Try again.", "[The answer is no.] [Try again.]"},
    {"See Fig. 3 and p. 12.", "[See Fig. 3 and p. 12.]"},
    {"Approx. 5 minutes remain. Please wait.", "[Approx. 5 minutes remain.] [Please wait.]"},
    {"The U.S. Army. Next.", "[The U.S. Army.] [Next.]"},
    {"J. R. R. Tolkien wrote it.", "[J. R. R. Tolkien wrote it.]"},
    {"(e.g. Fonts) are kept.", "[(e.g. Fonts) are kept.]"},
    // numbers, versions, URLs, e-mail, files and paths
    {"Version 3.14 is out. Update now!", "[Version 3.14 is out.] [Update now!]"},
    {"Requires 1.2.3 or later. Upgrade first.", "[Requires 1.2.3 or later.] [Upgrade first.]"},
    {"Visit http://example.com/a.b?x=1. Then log in.", "[Visit http://example.com/a.b?x=1.] [Then log in.]"},
    {"Write to info@example.com for help. Thanks!", "[Write to info@example.com for help.] [Thanks!]"},
    {"Edit config.ini and restart.", "[Edit config.ini and restart.]"},
    {"Files are in ~/.local/share. Remove them.", "[Files are in ~/.local/share.] [Remove them.]"},
    {"It costs $5.00. Pay now.", "[It costs $5.00.] [Pay now.]"},
    {"Value: 3.5. Range: 1-10.", "[Value: 3.5.] [Range: 1-10.]"},
    {"Open the file.Then close it.", "[Open the file.Then close it.]"},
    // digits, quotes and brackets open a sentence; closers stay with it
    {"Done. 5 files copied.", "[Done.] [5 files copied.]"},
    {"He said \"Stop.\" Then he left.", "[He said \"Stop.\"] [Then he left.]"},
    {"He asked \xE2\x80\x9CWhy?\xE2\x80\x9D Nobody knew.", "[He asked \xE2\x80\x9CWhy?\xE2\x80\x9D] [Nobody knew.]"},
    {"(Optional.) Enter a name.", "[(Optional.)] [Enter a name.]"},
    {"Click \xE2\x80\x9CSave\xE2\x80\x9D. Then exit.", "[Click \xE2\x80\x9CSave\xE2\x80\x9D.] [Then exit.]"},
    {"It is done. \"Next\" starts now.", "[It is done.] [\"Next\" starts now.]"},
    {"\xC2\xBFQu\xC3\xA9? \xC2\xA1S\xC3\xAD!", "[\xC2\xBFQu\xC3\xA9?] [\xC2\xA1S\xC3\xAD!]"},
    {"\xC3\x9C" "ber. \xC3\x84rger.", "[\xC3\x9C" "ber.] [\xC3\x84rger.]"},
    // a sentence needs a word: numbered lists, initials
    {"Step 1. Open the file.", "[Step 1.] [Open the file.]"},
    {"1. Open the file.", "[1. Open the file.]"},
    // placeholders: never cut inside, and one may start a sentence
    {"Saved %d files. %s remaining.", "[Saved %d files.] [%s remaining.]"},
    {"File {file.name} saved. Continue?", "[File {file.name} saved.] [Continue?]"},
    {"Open %(file.path)s now. Then close it.", "[Open %(file.path)s now.] [Then close it.]"},
    {"Error: %s. Retry?", "[Error: %s.] [Retry?]"},
    {"<a title=\"Hi. There\">Link</a> text. More text.",
     "[<a title=\"Hi. There\">Link</a> text.] [More text.]"},
    {"Set {{ user. Name }} now. Done.", "[Set {{ user. Name }} now.] [Done.]"},
    // break tags end a sentence and stay verbatim between the two
    {"Text<br>More text", "[Text]<br>[More text]"},
    {"First line.<br/> Second line.", "[First line.]<br/> [Second line.]"},
    {"<p>Paragraph one.</p><p>Paragraph two.</p>", "<p>[Paragraph one.]</p><p>[Paragraph two.]</p>"},
    {"Use <b>bold</b> here. Done.", "[Use <b>bold</b> here.] [Done.]"},
    // CJK marks end a sentence without a space after them
    {"\xE6\x96\x87\xE4\xBB\xB6\xE5\xB7\xB2\xE4\xBF\x9D\xE5\xAD\x98\xE3\x80\x82\xE8\xAF\xB7\xE9\x87\x8D\xE8\xAF\x95\xE3\x80\x82",
     "[\xE6\x96\x87\xE4\xBB\xB6\xE5\xB7\xB2\xE4\xBF\x9D\xE5\xAD\x98\xE3\x80\x82][\xE8\xAF\xB7\xE9\x87\x8D\xE8\xAF\x95\xE3\x80\x82]"},
    // nothing to cut
    {"Open file", "[Open file]"},
    {"Send to Mr. X.", "[Send to Mr. X.]"},
};

static void test_sentence_table(void) {
    int n = (int)(sizeof cases / sizeof cases[0]), bad = 0;
    ASSERT_TRUE(n >= 40);
    for (int i = 0; i < n; i++) {
        char *got = render(cases[i].in, 1, NULL, NULL);
        if (strcmp(got, cases[i].want)) {
            fprintf(stderr, "  case %d: %s\n    got  %s\n    want %s\n", i, cases[i].in, got,
                    cases[i].want);
            bad++;
        }
        free(got);
    }
    ASSERT_EQ_INT(bad, 0);
}

// Splitting off: a line stays whole while it fits, break tags included.
static void test_off_keeps_line(void) {
    char *got = render("Saved. Next file?<br>More", 0, NULL, NULL);
    ASSERT_STR_EQ(got, "[Saved. Next file?<br>More]");
    free(got);
}

// fits: at most *(size_t *)ctx bytes.
static int fits_bytes(void *ctx, const char *s, size_t n) {
    (void)s;
    return n <= *(size_t *)ctx;
}

static void test_long_pieces_halved_outside_spans(void) {
    size_t lim = 24;
    // off: too long, so cut at its sentence end, then a sentence still too
    // long halved at the space nearest its middle
    char *got = render("Short one. This sentence is far too long for it.", 0, fits_bytes, &lim);
    ASSERT_STR_EQ(got, "[Short one.] [This sentence is] [far too long for it.]");
    free(got);
    // the only spaces near the middle are inside a tag: cut beside it
    lim = 28;
    got = render("aaaa <a title=\"x y z w\">bbbb</a> cccc", 1, fits_bytes, &lim);
    ASSERT_STR_EQ(got, "[aaaa] [<a title=\"x y z w\">bbbb</a>] [cccc]");
    free(got);
    // no whitespace at all: a cut at a character boundary, never in a UTF-8 sequence
    lim = 5;
    got = render("\xC3\xA4\xC3\xA4\xC3\xA4\xC3\xA4", 1, fits_bytes, &lim);
    ASSERT_STR_EQ(got, "[\xC3\xA4\xC3\xA4][\xC3\xA4\xC3\xA4]");
    free(got);
}

const moa_test_case moa_tests_split[] = {
    {"sentence_table", test_sentence_table},
    {"off_keeps_line", test_off_keeps_line},
    {"long_pieces_halved_outside_spans", test_long_pieces_halved_outside_spans},
    {NULL, NULL},
};
