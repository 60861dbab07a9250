// test_utf8.c — common/moa_utf8.h: the UTF-8 checks the tokenizer, the CLI
// and the server share.
#include <string.h>

#include "moa_test.h"
#include "moa_utf8.h"

// moa_utf8_len, the one UTF-8 walker the CLI and the server share.
static void test_utf8_len(void) {
    ASSERT_EQ_INT(moa_utf8_len("a", 1), 1);
    ASSERT_EQ_INT(moa_utf8_len("", 1), 1);                  // NUL: one byte
    ASSERT_EQ_INT(moa_utf8_len("\xc3\xa4x", 3), 2);          // ä
    ASSERT_EQ_INT(moa_utf8_len("\xe2\x82\xac", 3), 3);      // €
    ASSERT_EQ_INT(moa_utf8_len("\xf0\x9f\x98\x80", 4), 4);  // U+1F600
    ASSERT_EQ_INT(moa_utf8_len("\xe2\x82\xac", 2), 0);      // truncated
    ASSERT_EQ_INT(moa_utf8_len("\x80", 1), 0);              // lone continuation
    ASSERT_EQ_INT(moa_utf8_len("\xc0\xaf", 2), 0);          // overlong
    ASSERT_EQ_INT(moa_utf8_len("\xe0\x80\xaf", 3), 0);      // overlong
    ASSERT_EQ_INT(moa_utf8_len("\xed\xa0\x80", 3), 0);      // surrogate
    ASSERT_EQ_INT(moa_utf8_len("\xf4\x90\x80\x80", 4), 0);  // above U+10FFFF
    ASSERT_EQ_INT(moa_utf8_len("\xc3x", 2), 0);             // bad continuation
}

static void expect_bad(const char *s, size_t n, size_t at, const char *why) {
    size_t bad = 12345;
    const char *w = NULL;
    ASSERT_EQ_INT(moa_utf8_check(s, n, &bad, &w), -1);
    ASSERT_EQ_INT((long)bad, (long)at);
    ASSERT_STR_CONTAINS(w, why);
    bad = 12345;
    ASSERT_EQ_INT(moa_utf8_count(s, n, &bad), -1);
    ASSERT_EQ_INT((long)bad, (long)at);
}

static void test_utf8_check_reasons(void) {
    ASSERT_EQ_INT(moa_utf8_check("", 0, NULL, NULL), 0);
    const char *ok = "Gr\xc3\xbc\xc3\x9f" "e \xe2\x82\xac \xf0\x9f\x98\x80";
    ASSERT_EQ_INT(moa_utf8_check(ok, strlen(ok), NULL, NULL), 0);
    ASSERT_EQ_INT(moa_utf8_check(ok, strlen(ok) - 1, NULL, NULL), -1);  // cut in the emoji
    expect_bad("ab\0c", 4, 2, "NUL byte");
    expect_bad("\x80", 1, 0, "unexpected continuation byte");
    expect_bad("ab\xe2\x82", 4, 2, "truncated sequence");
    expect_bad("ab\xe2\x82z", 5, 2, "truncated sequence");
    expect_bad("x\xc0\xaf", 3, 1, "overlong encoding");
    expect_bad("\xf0\x8f\xbf\xbf", 4, 0, "overlong encoding");
    expect_bad("abc\xed\xa0\x80", 6, 3, "UTF-16 surrogate");
    expect_bad("\xf4\x90\x80\x80", 4, 0, "code point above U+10FFFF");
    expect_bad("ok \xff", 4, 3, "byte that never occurs in UTF-8");
    expect_bad("\xc3\xa9\xc3", 3, 2, "truncated sequence");  // after a valid 'é'
}

static void test_utf8_count(void) {
    ASSERT_EQ_INT(moa_utf8_count("", 0, NULL), 0);
    ASSERT_EQ_INT(moa_utf8_count("abc", 3, NULL), 3);
    ASSERT_EQ_INT(moa_utf8_count("a\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80", 10, NULL), 4);
    ASSERT_EQ_INT(moa_utf8_count("a\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80", 9, NULL), -1);
}

// The three functions decide alike on every string of 1-3 bytes (all 2^24 of
// the 3-byte ones) and on 4-byte strings led by each lead byte: the check
// and the count agree on validity and on the offset, and a string that is
// one valid sequence is exactly what moa_utf8_len accepts.
static void test_utf8_functions_agree(void) {
    unsigned char b[4];
    long checked = 0;
    for (int n = 1; n <= 4; n++) {
        unsigned long total = n < 4 ? 1ul << (8 * n) : 256ul * 64 * 4 * 4;
        for (unsigned long x = 0; x < total; x++) {
            if (n < 4) {
                for (int i = 0; i < n; i++) b[i] = (unsigned char)(x >> (8 * i));
            } else {  // lead byte, then continuation-ish bytes that matter
                static const unsigned char tail[4] = {0x80, 0x8f, 0xbf, 0x41};
                b[0] = (unsigned char)(x & 0xff);
                b[1] = (unsigned char)(0x80 | ((x >> 8) & 0x3f));
                b[2] = tail[(x >> 14) & 3];
                b[3] = tail[(x >> 16) & 3];
            }
            size_t bad1 = 0, bad2 = 0;
            int ok = moa_utf8_check((const char *)b, (size_t)n, &bad1, NULL) == 0;
            long cnt = moa_utf8_count((const char *)b, (size_t)n, &bad2);
            if (ok != (cnt >= 0) || (!ok && bad1 != bad2))
                MOA_TEST_FAIL("%d bytes %02x %02x %02x %02x: check %d at %zu, count %ld at %zu",
                              n, b[0], b[1], b[2], b[3], ok, bad1, cnt, bad2);
            if (b[0] != 0) {
                int one = moa_utf8_len((const char *)b, (size_t)n) == n;
                if (one && !(ok && cnt == 1))
                    MOA_TEST_FAIL("%d bytes %02x %02x %02x %02x: one sequence, but check %d "
                                  "count %ld", n, b[0], b[1], b[2], b[3], ok, cnt);
                if (ok && cnt == 1 && !one)
                    MOA_TEST_FAIL("%d bytes %02x...: valid single character, len says no",
                                  n, b[0]);
            }
            checked++;
        }
    }
    ASSERT_TRUE(checked > (1l << 24));
}

const moa_test_case moa_tests_utf8[] = {
    {"utf8_len", test_utf8_len},
    {"check_reasons", test_utf8_check_reasons},
    {"count", test_utf8_count},
    {"functions_agree", test_utf8_functions_agree},
    {NULL, NULL},
};
