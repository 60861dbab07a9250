// moa_test.h — the one C test runner's macros.
//
// A test file defines its cases and one table:
//
//     static void test_foo(void) { ASSERT_EQ_INT(1 + 1, 2); }
//     const moa_test_case moa_tests_loader[] = {
//         {"foo", test_foo},
//         {NULL, NULL},
//     };
//
// tests/run_tests.c runs every case of every table in its own process (fork),
// so a crash fails one case, not the run. Tests run from the repository root;
// MOA_TEST_TMP names a scratch directory that exists.
#ifndef MOA_TEST_H
#define MOA_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct moa_test_case {
    const char *name;
    void (*fn)(void);
} moa_test_case;

#define MOA_TEST_FAIL(...)                                                  \
    do {                                                                    \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                   \
        fprintf(stderr, __VA_ARGS__);                                       \
        fprintf(stderr, "\n");                                              \
        exit(1);                                                            \
    } while (0)

#define ASSERT_TRUE(c)                                                      \
    do { if (!(c)) MOA_TEST_FAIL("expected true: %s", #c); } while (0)
#define ASSERT_EQ_INT(a, b)                                                 \
    do {                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ != b_) MOA_TEST_FAIL("%s == %lld, expected %s == %lld", #a,  \
                                    a_, #b, b_);                            \
    } while (0)
#define ASSERT_NEAR(a, b, tol)                                              \
    do {                                                                    \
        double a_ = (double)(a), b_ = (double)(b);                          \
        if (!(fabs(a_ - b_) <= (tol)))                                      \
            MOA_TEST_FAIL("%s = %.9g, expected %.9g (tol %g)", #a, a_, b_,  \
                          (double)(tol));                                   \
    } while (0)
#define ASSERT_STR_EQ(a, b)                                                 \
    do {                                                                    \
        const char *a_ = (a), *b_ = (b);                                    \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                              \
            MOA_TEST_FAIL("%s = \"%s\", expected \"%s\"", #a,               \
                          a_ ? a_ : "(null)", b_ ? b_ : "(null)");          \
    } while (0)
#define ASSERT_STR_CONTAINS(hay, needle)                                    \
    do {                                                                    \
        const char *h_ = (hay), *n_ = (needle);                             \
        if (!h_ || !strstr(h_, n_))                                         \
            MOA_TEST_FAIL("\"%s\" does not contain \"%s\"",                 \
                          h_ ? h_ : "(null)", n_);                          \
    } while (0)

#endif
