// moa_utf8.h — UTF-8 checks shared by the tokenizer, the CLI and the server.
//
// Usage:
//
//     size_t bad; const char *why;
//     if (moa_utf8_check(text, len, &bad, &why) != 0)
//         printf("invalid UTF-8 at byte %zu: %s\n", bad, why);
//     long chars = moa_utf8_count(text, len, &bad);       // -1: invalid at bad
//     for (size_t i = 0; i < len;) {                      // walking a text
//         int n = moa_utf8_len(text + i, len - i);        // 0: not UTF-8 here
//         i += n ? (size_t)n : 1;
//     }
//
// Well-formed means RFC 3629: shortest form only, no UTF-16 surrogates
// (U+D800-U+DFFF), nothing above U+10FFFF. Pure functions over bytes, no
// state: thread-safe.
#ifndef MOA_UTF8_H
#define MOA_UTF8_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Length in bytes (1-4) of the well-formed UTF-8 sequence at s, n >= 1
// bytes available, or 0 if it is not one. A NUL byte counts as a sequence
// of 1: callers that refuse NUL check for it themselves.
int moa_utf8_len(const char *s, size_t n);

// Checks that s[0..n) is well-formed UTF-8 without NUL bytes. Returns 0, or
// -1 with the offset of the first byte of the first bad sequence in *bad and
// a static reason in *why ("NUL byte", "truncated sequence", "overlong
// encoding", ...). bad and why may be NULL.
int moa_utf8_check(const char *s, size_t n, size_t *bad, const char **why);

// Number of code points of s[0..n), or -1 when it is not well-formed UTF-8
// without NUL bytes (as moa_utf8_check), with the offset in *bad (may be NULL).
long moa_utf8_count(const char *s, size_t n, size_t *bad);

#ifdef __cplusplus
}
#endif
#endif
