// test_bpe.c — tokenizer/moa_bpe.h on small codes files whose segmentations
// were worked out by hand from subword-nmt's rule, and the subword-nmt path of
// tokenizer/moa_tokenizer.h (config.json, Moses around the merges, vocab.txt
// ids, both sides, decoding, and the errors a model directory can hold).
#include <sys/stat.h>

#include "moa_bpe.h"
#include "moa_test.h"
#include "moa_tokenizer.h"

// --- helpers ----------------------------------------------------------------------

static char *scratch(const char *name) {
    const char *tmp = getenv("MOA_TEST_TMP");
    ASSERT_TRUE(tmp != NULL);
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/bpe-%s", tmp, name);
    mkdir(dir, 0755);
    return dir;
}

static void put(const char *dir, const char *file, const char *data) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    if (!f) MOA_TEST_FAIL("cannot create %s", path);
    ASSERT_EQ_INT(fwrite(data, 1, strlen(data), f), strlen(data));
    ASSERT_EQ_INT(fclose(f), 0);
}

static moa_bpe *codes(const char *name, const char *text) {
    char *dir = scratch(name), path[1200], err[256] = "";
    put(dir, "codes", text);
    snprintf(path, sizeof path, "%s/codes", dir);
    moa_bpe *b = moa_bpe_load(path, err, sizeof err);
    if (!b) MOA_TEST_FAIL("load %s: %s", path, err);
    return b;
}

static void expect(const moa_bpe *b, const char *text, const char *want) {
    char *out = NULL;
    size_t n = 0;
    ASSERT_EQ_INT(moa_bpe_apply(b, text, strlen(text), &out, &n), 0);
    ASSERT_STR_EQ(out, want);
    ASSERT_EQ_INT(n, strlen(want));
    free(out);
}

// Version 0.2: the last character carries "</w>" from the start.
//   lower:  l o w e r</w> -> lo w e r</w> -> low e r</w> -> low er</w> -> lower</w>
//   lowest: ... low e s t</w> -> low es t</w> -> low est</w>        (no "low est</w>")
//   newer:  n e w er</w> -> ne w er</w> -> new er</w>                (no "new er</w>")
//   newest: n e w es t</w> -> n e w est</w> -> ne w est</w> -> new est</w> -> newest</w>
//   low:    lo w</w>  ("lo w" is not "lo w</w>");  ll: no merge;  éer: é er</w>
static const char CODES_02[] =
    "#version: 0.2\n"
    "l o\n"
    "lo w\n"
    "e r</w>\n"
    "e s\n"
    "es t</w>\n"
    "n e\n"
    "ne w\n"
    "low er</w>\n"
    "new est</w>\n";

static void test_version_02(void) {
    moa_bpe *b = codes("v02", CODES_02);
    ASSERT_EQ_INT(moa_bpe_version(b), 2);
    ASSERT_EQ_INT(moa_bpe_merges(b), 9);
    expect(b, "lower", "lower");
    expect(b, "lowest", "low@@ est");
    expect(b, "newer", "new@@ er");
    expect(b, "newest", "newest");
    expect(b, "low", "lo@@ w");
    expect(b, "ll", "l@@ l");
    expect(b, "x", "x");
    expect(b, "\xC3\xA9" "er", "\xC3\xA9@@ er");
    expect(b, "lower lowest  newer ", "lower low@@ est new@@ er");
    expect(b, "", "");
    moa_bpe_free(b);
}

// Version 0.1 (no header): "</w>" is a symbol of its own, dropped when left alone.
//   low:   l o w </w> -> lo w </w> -> low </w> -> "low"
//   lower: low e r </w> -> low er </w> -> low er</w> -> lower</w> -> "lower"
//   wow:   w o w </w> -> w o w</w>;  ow: o w</w>
static void test_version_01(void) {
    moa_bpe *b = codes("v01", "l o\nlo w\nw </w>\ne r\ner </w>\nlow er</w>\n");
    ASSERT_EQ_INT(moa_bpe_version(b), 1);
    expect(b, "low", "low");
    expect(b, "lower", "lower");
    expect(b, "wow", "w@@ o@@ w");
    expect(b, "ow", "o@@ w");
    moa_bpe_free(b);
}

// A pair listed twice counts at its first line: with "a b" at rank 0, "abc"
// is ab c</w>; were the repeat at rank 2 to count, "b c</w>" (rank 1) would win.
static void test_first_occurrence_wins(void) {
    moa_bpe *b = codes("dup", "#version: 0.2\na b\nb c</w>\na b\n");
    ASSERT_EQ_INT(moa_bpe_merges(b), 2);
    expect(b, "abc", "ab@@ c");
    moa_bpe_free(b);
}

// Occurrences of the best pair merge left to right without overlapping:
// a a a a a </w> -> aa aa a </w>.
static void test_no_overlap(void) {
    moa_bpe *b = codes("overlap", "a a\n");
    expect(b, "aaaaa", "aa@@ aa@@ a");
    expect(b, "aaaa", "aa@@ aa");
    moa_bpe_free(b);
}

static void test_codes_errors(void) {
    static const struct {
        const char *text, *words;
    } bad[] = {
        {"#version: 0.3\na b\n", "version '0.3'"},
        {"#version: 0.2\na b c\n", "line 2"},
        {"a b\n\nc d\n", "line 2"},
        {"a b\nab\n", "line 2: expected two symbols"},
        {"a\tb\n", "line 1"},
        {"a b\n\xFF\xFE x\n", "not UTF-8"},
    };
    char *dir = scratch("errors"), path[1200], err[256];
    snprintf(path, sizeof path, "%s/codes", dir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put(dir, "codes", bad[i].text);
        err[0] = '\0';
        moa_bpe *b = moa_bpe_load(path, err, sizeof err);
        if (b) MOA_TEST_FAIL("case %zu loaded", i);
        ASSERT_STR_CONTAINS(err, bad[i].words);
        ASSERT_STR_CONTAINS(err, path);
    }
    snprintf(path, sizeof path, "%s/missing", dir);
    ASSERT_TRUE(moa_bpe_load(path, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "No such file");
    // trailing spaces and CRLF are tolerated, as subword-nmt strips them
    moa_bpe *b = codes("crlf", "#version: 0.2\r\nl o \r\nlo w</w>\r\n\n\n");
    expect(b, "low", "low");
    moa_bpe_free(b);
    b = codes("empty", "#version: 0.2\n");
    ASSERT_EQ_INT(moa_bpe_merges(b), 0);
    expect(b, "abc", "a@@ b@@ c");
    char *out = (char *)1;
    ASSERT_EQ_INT(moa_bpe_apply(b, "a\xFF", 2, &out, NULL), MOA_EINVAL);
    ASSERT_TRUE(out == NULL);
    moa_bpe_free(b);
    moa_bpe_free(NULL);
}

// --- the tokenizer's subword-nmt path ---------------------------------------------

// vocab.txt of the model directories below: ids 4.. are the pieces.
static const char VOCAB[] =
    "<s>\n<pad>\n</s>\n<unk>\n"
    "lower\n,\nlow@@\nest\n!\n"          // 4-8
    "P@@\ne@@\nt@@\ner\n'@@\ns\n'\n"     // 9-15
    "new@@\n&apos;\n.\n";                // 16-18

static char *bpe_model(const char *name, const char *config) {
    char *dir = scratch(name);
    put(dir, "config.json", config);
    put(dir, "vocab.txt", VOCAB);
    put(dir, "bpecodes", CODES_02);
    return dir;
}

static moa_tokenizer *load_ok(const char *dir) {
    char err[512] = "";
    moa_tokenizer *t = moa_tokenizer_load(dir, err, sizeof err);
    if (!t) MOA_TEST_FAIL("load %s: %s", dir, err);
    return t;
}

static void ids_eq(const moa_tokenizer *t, int side, const char *text, const int *want,
                   int n_want) {
    int *ids = NULL, n = -1;
    char err[256] = "";
    int rc = moa_tokenizer_encode_side(t, side, text, strlen(text), 1, &ids, &n, err, sizeof err);
    if (rc) MOA_TEST_FAIL("encode \"%s\": %s", text, err);
    ASSERT_EQ_INT(n, n_want + 1);
    for (int i = 0; i < n_want; i++)
        if (ids[i] != want[i]) MOA_TEST_FAIL("\"%s\": id %d is %d, expected %d", text, i, ids[i],
                                             want[i]);
    ASSERT_EQ_INT(ids[n_want], 2);   // eos
    free(ids);
}

static void text_eq(const moa_tokenizer *t, const int *ids, int n, const char *want) {
    char *s = NULL, err[256] = "";
    if (moa_tokenizer_decode(t, ids, n, &s, err, sizeof err)) MOA_TEST_FAIL("decode: %s", err);
    ASSERT_STR_EQ(s, want);
    free(s);
}

static void test_tokenizer_encode_decode(void) {
    moa_tokenizer *t = load_ok(bpe_model("model", "{\"tokenizer\": \"subword-nmt\", "
                                         "\"source_lang\": \"en\", \"target_lang\": \"de\"}"));
    ASSERT_STR_EQ(moa_tokenizer_kind(t), "subword-nmt");
    ASSERT_EQ_INT(moa_tokenizer_vocab_size(t), 19);
    // Moses: "lower , lowest !"; BPE: "lower , low@@ est !"
    static const int a[] = {4, 5, 6, 7, 8};
    ids_eq(t, MOA_TOK_SOURCE, "lower, lowest!", a, 5);
    // "newer" -> new@@ er (both in the vocabulary); "xyz" -> x@@ y@@ z: unknown
    static const int b[] = {16, 12, 3, 3, 3};
    ids_eq(t, MOA_TOK_SOURCE, "newer xyz", b, 5);
    static const int none[] = {0};
    ids_eq(t, MOA_TOK_SOURCE, " \t\n", none, 0);
    ids_eq(t, MOA_TOK_SOURCE, "", none, 0);
    // the pieces of traces are vocab.txt's
    char **pieces = NULL, err[256];
    int n = 0;
    ASSERT_EQ_INT(moa_tokenizer_encode_pieces(t, "lowest", 6, 1, &pieces, &n, err, sizeof err), 0);
    ASSERT_EQ_INT(n, 3);
    ASSERT_STR_EQ(pieces[0], "low@@");
    ASSERT_STR_EQ(pieces[1], "est");
    ASSERT_STR_EQ(pieces[2], "</s>");
    free(pieces);
    // decoding: "@@ " joined, German detokenizer, <s> <pad> </s> dropped, <unk> as ⁇
    static const int d1[] = {0, 6, 7, 5, 4, 8, 2};
    text_eq(t, d1, 7, "lowest, lower!");
    static const int d2[] = {4, 3, 18};
    text_eq(t, d2, 3, "lower \xE2\x81\x87.");
    static const int d3[] = {4, 6};   // a word cut off after "low@@"
    text_eq(t, d3, 2, "lower low");
    static const int d4[] = {17, 4, 17};   // &apos; is unescaped, a quote pair attaches
    text_eq(t, d4, 3, "'lower'");
    text_eq(t, d4, 0, "");
    static const int bad[] = {4, 19};
    char *s = (char *)1;
    ASSERT_EQ_INT(moa_tokenizer_decode(t, bad, 2, &s, err, sizeof err), MOA_EINVAL);
    ASSERT_STR_CONTAINS(err, "out of range");
    int *ids = NULL;
    ASSERT_EQ_INT(moa_tokenizer_encode(t, "a\xFF", 2, 1, &ids, &n, err, sizeof err), MOA_EINVAL);
    ASSERT_TRUE(ids == NULL);
    moa_tokenizer_free(t);
}

// Each side follows its language: English keeps "'s" whole, German splits
// every apostrophe (escaping off here, so that the pieces stay short).
static void test_tokenizer_sides(void) {
    moa_tokenizer *t = load_ok(bpe_model("sides", "{\"tokenizer\": \"subword-nmt\", "
                                         "\"source_lang\": \"en\", \"target_lang\": \"de\", "
                                         "\"moses\": {\"escape\": false}}"));
    // Peter -> P e t er</w> -> P@@ e@@ t@@ er; 's -> '@@ s
    static const int en[] = {9, 10, 11, 12, 13, 14};
    ids_eq(t, MOA_TOK_SOURCE, "Peter's", en, 6);
    static const int de[] = {9, 10, 11, 12, 15, 14};
    ids_eq(t, MOA_TOK_TARGET, "Peter's", de, 6);
    int *ids = NULL, n;
    char err[256];
    ASSERT_EQ_INT(moa_tokenizer_encode_side(t, 2, "a", 1, 1, &ids, &n, err, sizeof err),
                  MOA_EINVAL);
    moa_tokenizer_free(t);
}

// "moses": {"tokenize": false}: text already tokenized, split at whitespace;
// any language then, and no detokenizer.
static void test_tokenizer_pretokenized(void) {
    moa_tokenizer *t = load_ok(bpe_model("pretok", "{\"tokenizer\": \"subword-nmt\", "
                                         "\"source_lang\": \"fr\", \"target_lang\": \"xx\", "
                                         "\"moses\": {\"tokenize\": false}}"));
    // "lowest!" stays one word: low es t !</w> ("es t</w>" needs the end) ->
    // low@@ es@@ t@@ !, and es@@ is not in the vocabulary
    static const int a[] = {4, 6, 3, 11, 8};
    ids_eq(t, MOA_TOK_SOURCE, "lower\tlowest!\n", a, 5);
    static const int d[] = {6, 7, 5, 4};
    text_eq(t, d, 4, "lowest , lower");
    moa_tokenizer_free(t);
}

static void test_tokenizer_config_errors(void) {
    static const struct {
        const char *config, *words;
    } bad[] = {
        {"{\"tokenizer\": \"wordpiece\"}", "\"wordpiece\""},
        {"{\"tokenizer\": 3}", "sentencepiece"},
        {"[1, 2]", "not a JSON object"},
        {"{\"tokenizer\": \"subword-nmt\", \"source_lang\": \"fr\", \"target_lang\": \"de\"}",
         "source_lang \"fr\""},
        {"{\"tokenizer\": \"subword-nmt\", \"source_lang\": \"en\"}", "target_lang missing"},
        {"{\"tokenizer\": \"subword-nmt\", \"source_lang\": \"en\", \"target_lang\": \"de\", "
         "\"moses\": {\"agressive\": true}}", "moses.agressive is not a Moses option"},
        {"{\"tokenizer\": \"subword-nmt\", \"source_lang\": \"en\", \"target_lang\": \"de\", "
         "\"moses\": {\"escape\": 1}}", "moses.escape must be true or false"},
        {"{\"tokenizer\": \"subword-nmt\", \"source_lang\": \"en\", \"target_lang\": \"de\", "
         "\"moses\": \"yes\"}", "moses must be an object or false"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *dir = bpe_model("cfgerr", bad[i].config);
        err[0] = '\0';
        moa_tokenizer *t = moa_tokenizer_load(dir, err, sizeof err);
        if (t) MOA_TEST_FAIL("case %zu loaded", i);
        ASSERT_STR_CONTAINS(err, bad[i].words);
        ASSERT_STR_CONTAINS(err, "config.json");
    }
    // a subword-nmt model without bpecodes names the file
    char *dir = scratch("nocodes"), path[1200];
    put(dir, "config.json", "{\"tokenizer\": \"subword-nmt\", \"source_lang\": \"en\", "
        "\"target_lang\": \"de\"}");
    put(dir, "vocab.txt", VOCAB);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    snprintf(path, sizeof path, "%s/bpecodes", dir);
    ASSERT_STR_CONTAINS(err, path);
    // "moses": false is the same as {"tokenize": false}
    put(dir, "config.json", "{\"tokenizer\": \"subword-nmt\", \"moses\": false}");
    put(dir, "bpecodes", "a b\n");
    moa_tokenizer *t = load_ok(dir);
    moa_tokenizer_free(t);
}

const moa_test_case moa_tests_bpe[] = {
    {"version_02", test_version_02},
    {"version_01", test_version_01},
    {"first_occurrence_wins", test_first_occurrence_wins},
    {"no_overlap", test_no_overlap},
    {"codes_errors", test_codes_errors},
    {"tokenizer_encode_decode", test_tokenizer_encode_decode},
    {"tokenizer_sides", test_tokenizer_sides},
    {"tokenizer_pretokenized", test_tokenizer_pretokenized},
    {"tokenizer_config_errors", test_tokenizer_config_errors},
    {NULL, NULL},
};
