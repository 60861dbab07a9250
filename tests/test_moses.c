// test_moses.c — tokenizer/moa_moses.h against the tables of expected
// outputs in tests/fixtures/moses/ (written from the Moses scripts' rules;
// tests/python/test_bpe.py checks train/moses.py against the same tables).
#include <stdint.h>

#include "moa_moses.h"
#include "moa_test.h"
#include "moa_unitab.h"

#define TOK_TABLE "tests/fixtures/moses/tokenize.tsv"
#define DETOK_TABLE "tests/fixtures/moses/detokenize.tsv"

// --- reading the tables ---------------------------------------------------------

// Decodes the table's escapes (\t, \\, \uXXXX) of s in place.
static void unescape(char *s) {
    char *o = s;
    for (char *p = s; *p;) {
        if (p[0] == '\\' && p[1] == 't') {
            *o++ = '\t';
            p += 2;
        } else if (p[0] == '\\' && p[1] == '\\') {
            *o++ = '\\';
            p += 2;
        } else if (p[0] == '\\' && p[1] == 'u') {
            char hex[5] = {p[2], p[3], p[4], p[5], 0};
            unsigned c = (unsigned)strtoul(hex, NULL, 16);
            if (c < 0x80) {
                *o++ = (char)c;
            } else if (c < 0x800) {
                *o++ = (char)(0xC0 | (c >> 6));
                *o++ = (char)(0x80 | (c & 0x3F));
            } else {
                *o++ = (char)(0xE0 | (c >> 12));
                *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
            p += 6;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
}

// Splits the table's non-comment lines into up to `want` tab-separated
// fields each; calls fn for every row. Returns the number of rows.
typedef void (*row_fn)(char **f, int lineno, int *bad);

static int each_row(const char *path, int want, row_fn fn, int *bad) {
    FILE *f = fopen(path, "rb");
    if (!f) MOA_TEST_FAIL("cannot open %s", path);
    char line[4096];
    int lineno = 0, rows = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n') line[--n] = '\0';
        if (n == 0 || line[0] == '#') continue;
        char *fields[8] = {0};
        int k = 0;
        for (char *p = line; k < want;) {
            fields[k++] = p;
            char *tab = strchr(p, '\t');
            if (!tab) break;
            *tab = '\0';
            p = tab + 1;
        }
        if (k != want) MOA_TEST_FAIL("%s:%d: %d fields, expected %d", path, lineno, k, want);
        for (int i = 0; i < k; i++) unescape(fields[i]);
        fn(fields, lineno, bad);
        rows++;
    }
    fclose(f);
    return rows;
}

static int lang(const char *code) {
    int l = moa_moses_lang(code);
    if (l < 0) MOA_TEST_FAIL("table language %s", code);
    return l;
}

// --- the tables -----------------------------------------------------------------

static int roundtrips;

static void tok_row(char **f, int lineno, int *bad) {
    moa_moses_opts o = {lang(f[0]), strchr(f[1], 'a') != NULL, strchr(f[1], 'x') == NULL,
                        strchr(f[1], 'n') != NULL, strchr(f[1], 'n') != NULL};
    char *out = NULL;
    size_t n = 0;
    int rc = moa_moses_tokenize(&o, f[2], strlen(f[2]), &out, &n);
    if (rc || strcmp(out, f[3]) != 0 || n != strlen(out)) {
        fprintf(stderr, "  %s:%d: %s [%s] \"%s\": got \"%s\" (rc %d), expected \"%s\"\n",
                TOK_TABLE, lineno, f[0], f[1], f[2], out ? out : "", rc, f[3]);
        (*bad)++;
    } else if (strcmp(f[4], "1") == 0) {
        char *back = NULL;
        rc = moa_moses_detokenize(o.lang, out, n, &back, NULL);
        if (rc || strcmp(back, f[2]) != 0) {
            fprintf(stderr, "  %s:%d: round trip of \"%s\" gave \"%s\"\n", TOK_TABLE, lineno,
                    f[2], back ? back : "");
            (*bad)++;
        }
        roundtrips++;
        free(back);
    }
    free(out);
}

static void test_tokenize_table(void) {
    int bad = 0;
    int rows = each_row(TOK_TABLE, 5, tok_row, &bad);
    printf("  %d tokenisation cases, %d round trips\n", rows, roundtrips);
    ASSERT_TRUE(rows >= 60);
    ASSERT_TRUE(roundtrips >= 40);
    ASSERT_EQ_INT(bad, 0);
}

static void detok_row(char **f, int lineno, int *bad) {
    char *out = NULL;
    int rc = moa_moses_detokenize(lang(f[0]), f[1], strlen(f[1]), &out, NULL);
    if (rc || strcmp(out, f[2]) != 0) {
        fprintf(stderr, "  %s:%d: %s \"%s\": got \"%s\" (rc %d), expected \"%s\"\n",
                DETOK_TABLE, lineno, f[0], f[1], out ? out : "", rc, f[2]);
        (*bad)++;
    }
    free(out);
}

static void test_detokenize_table(void) {
    int bad = 0;
    int rows = each_row(DETOK_TABLE, 3, detok_row, &bad);
    printf("  %d detokenisation cases\n", rows);
    ASSERT_TRUE(rows >= 60);
    ASSERT_EQ_INT(bad, 0);
}

// --- single functions -------------------------------------------------------------

static char *tok(const char *code, int aggressive, const char *text) {
    moa_moses_opts o = {lang(code), aggressive, 1, 0, 0};
    char *out = NULL;
    ASSERT_EQ_INT(moa_moses_tokenize(&o, text, strlen(text), &out, NULL), 0);
    return out;
}

static void test_languages(void) {
    ASSERT_EQ_INT(moa_moses_lang("en"), MOA_MOSES_EN);
    ASSERT_EQ_INT(moa_moses_lang("EN"), MOA_MOSES_EN);
    ASSERT_EQ_INT(moa_moses_lang("en-GB"), MOA_MOSES_EN);
    ASSERT_EQ_INT(moa_moses_lang("de_AT"), MOA_MOSES_DE);
    ASSERT_EQ_INT(moa_moses_lang("fr"), -1);
    ASSERT_EQ_INT(moa_moses_lang("eng"), -1);
    ASSERT_EQ_INT(moa_moses_lang("e"), -1);
    ASSERT_EQ_INT(moa_moses_lang(""), -1);
    ASSERT_EQ_INT(moa_moses_lang(NULL), -1);
    // the same text, each language's apostrophe and prefix rules
    char *en = tok("en", 1, "Peter's car, Nr. 5 usw. Ende.");
    char *de = tok("de", 1, "Peter's car, Nr. 5 usw. Ende.");
    ASSERT_STR_EQ(en, "Peter &apos;s car , Nr. 5 usw . Ende .");
    ASSERT_STR_EQ(de, "Peter &apos; s car , Nr. 5 usw. Ende .");
    free(en);
    free(de);
}

static void test_normalize_and_nonprinting(void) {
    char *out = NULL;
    const char *t = "\xE2\x80\x9E" "Preis\xE2\x80\x9C: 1 000 \xE2\x82\xAC";   // „Preis“: 1 000 €
    ASSERT_EQ_INT(moa_moses_normalize(MOA_MOSES_DE, t, strlen(t), &out, NULL), 0);
    ASSERT_STR_EQ(out, "\"Preis\": 1,000 \xE2\x82\xAC");
    free(out);
    ASSERT_EQ_INT(moa_moses_normalize(MOA_MOSES_EN, "1 000", 5, &out, NULL), 0);
    ASSERT_STR_EQ(out, "1.000");
    free(out);
    // a soft hyphen (Cf), a private-use character (Co), a C1 control (Cc)
    const char *np = "a\xC2\xAD" "b\xEE\x80\x80" "c\xC2\x85" "d";
    ASSERT_EQ_INT(moa_moses_remove_non_printing(np, strlen(np), &out, NULL), 0);
    ASSERT_STR_EQ(out, "a b c d");
    free(out);
}

static void test_invalid_input(void) {
    moa_moses_opts o = {MOA_MOSES_EN, 1, 1, 1, 1};
    char *out = (char *)1;
    ASSERT_EQ_INT(moa_moses_tokenize(&o, "a\xFF", 2, &out, NULL), MOA_EINVAL);
    ASSERT_TRUE(out == NULL);
    ASSERT_EQ_INT(moa_moses_tokenize(&o, "a\0b", 3, &out, NULL), MOA_EINVAL);
    ASSERT_EQ_INT(moa_moses_detokenize(7, "a", 1, &out, NULL), MOA_EINVAL);
    o.lang = 9;
    ASSERT_EQ_INT(moa_moses_tokenize(&o, "a", 1, &out, NULL), MOA_EINVAL);
    ASSERT_EQ_INT(moa_moses_tokenize(NULL, "a", 1, &out, NULL), MOA_EINVAL);
    o.lang = MOA_MOSES_EN;
    ASSERT_EQ_INT(moa_moses_tokenize(&o, NULL, 0, &out, NULL), 0);   // empty text
    ASSERT_STR_EQ(out, "");
    free(out);
}

// A long line of every kind of token: the output stays consistent with the
// input (no token is lost) and takes no quadratic time or memory.
static void test_long_line(void) {
    size_t reps = 20000, n = 0;
    const char *unit = "Don't stop-loss... (50%), \"x\" e.g. Nr. 5! ";
    size_t ul = strlen(unit);
    char *text = malloc(reps * ul + 1);
    ASSERT_TRUE(text != NULL);
    for (size_t i = 0; i < reps; i++, n += ul) memcpy(text + n, unit, ul);
    text[n] = '\0';
    moa_moses_opts o = {MOA_MOSES_EN, 1, 1, 1, 1};
    char *out = NULL, *back = NULL;
    size_t m = 0;
    ASSERT_EQ_INT(moa_moses_tokenize(&o, text, n, &out, &m), 0);
    size_t words = 0;
    for (size_t i = 0; i < m; i++) words += out[i] == ' ';
    ASSERT_EQ_INT(words + 1, reps * 18);   // Don 't stop @-@ loss ... ( 50 % ) , " x " e.g. Nr. 5 !
    ASSERT_EQ_INT(moa_moses_detokenize(MOA_MOSES_EN, out, m, &back, NULL), 0);
    const char *head = "Don't stop-loss... (50%), \"x\" e.g. Nr. 5! Don't";
    ASSERT_TRUE(strncmp(back, head, strlen(head)) == 0);
    free(out);
    free(back);
    free(text);
}

// The generated class table: a few code points whose Perl classes are known.
static void test_unicode_classes(void) {
    ASSERT_EQ_INT(moa_unitab_class('A'), MOA_UNI_ALPHA);
    ASSERT_EQ_INT(moa_unitab_class('a'), MOA_UNI_ALPHA | MOA_UNI_LOWER);
    ASSERT_EQ_INT(moa_unitab_class('7'), MOA_UNI_DIGIT | MOA_UNI_NUM);
    ASSERT_EQ_INT(moa_unitab_class(0xB2), MOA_UNI_NUM);                    // ² (No)
    ASSERT_EQ_INT(moa_unitab_class(0x2160), MOA_UNI_ALPHA | MOA_UNI_NUM);  // Ⅰ (Nl)
    ASSERT_EQ_INT(moa_unitab_class(0x20AC), MOA_UNI_SC);                   // €
    ASSERT_EQ_INT(moa_unitab_class(0xA0), MOA_UNI_SPACE);                  // no-break space
    ASSERT_EQ_INT(moa_unitab_class('\t'), MOA_UNI_SPACE | MOA_UNI_OTHER);
    ASSERT_EQ_INT(moa_unitab_class(0x200B), MOA_UNI_OTHER);                // zero-width space
    ASSERT_EQ_INT(moa_unitab_class(0xE9), MOA_UNI_ALPHA | MOA_UNI_LOWER);  // é
    ASSERT_EQ_INT(moa_unitab_class(0x4E2D), MOA_UNI_ALPHA);                // 中
    ASSERT_EQ_INT(moa_unitab_class(0x10FFFF), MOA_UNI_OTHER);
    ASSERT_EQ_INT(moa_unitab_class(0x110000), 0);
    ASSERT_TRUE(strlen(moa_unitab_unicode) >= 4);
}

const moa_test_case moa_tests_moses[] = {
    {"tokenize_table", test_tokenize_table},
    {"detokenize_table", test_detokenize_table},
    {"languages", test_languages},
    {"normalize_and_nonprinting", test_normalize_and_nonprinting},
    {"invalid_input", test_invalid_input},
    {"long_line", test_long_line},
    {"unicode_classes", test_unicode_classes},
    {NULL, NULL},
};
