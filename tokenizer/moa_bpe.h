// moa_bpe.h — subword-nmt's byte-pair encoding: split words into the pieces
// of a merge list (a "codes" file of learn_bpe.py / train/learn_bpe.py).
//
// Usage:
//
//     char err[256];
//     moa_bpe *b = moa_bpe_load("model/bpecodes", err, sizeof err);
//     char *out; size_t n;
//     moa_bpe_apply(b, "a lower word", 12, &out, &n);  // "a low@@ er word"
//     free(out);
//     moa_bpe_free(b);
//
// The codes file: an optional first line "#version: 0.2" (or 0.1; none means
// 0.1), then one merge a line, "LEFT RIGHT" with one space, earliest first.
// With version 0.2 the last character of a word carries the end-of-word
// mark "</w>" from the start; with 0.1 the mark is a symbol of its own. A
// word is split into characters, then the merge with the lowest line number
// among its adjacent pairs is applied at every place it occurs (left to
// right, not overlapping), again and again until none applies; every piece
// but a word's last gets the separator "@@". Merges listed twice count at
// their first line. Glossaries, vocabulary filters and BPE dropout of
// subword-nmt are not supported.
//
// A loaded moa_bpe is read-only: moa_bpe_apply may run in any number of
// threads at once. Returns 0 or a negative moa_errno code (moa_errors.h).
#ifndef MOA_BPE_H
#define MOA_BPE_H

#include <stddef.h>

#include "moa_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moa_bpe moa_bpe;

// Reads a codes file. NULL on failure with "path: line N: problem" in err.
moa_bpe *moa_bpe_load(const char *path, char *err, size_t errlen);
void moa_bpe_free(moa_bpe *b);  // NULL is a no-op

// Number of merges (distinct pairs) and the file's version (1 or 2 for 0.1, 0.2).
int moa_bpe_merges(const moa_bpe *b);
int moa_bpe_version(const moa_bpe *b);

// Segments text: words separated by single spaces (UTF-8, len bytes; empty
// words between double spaces are skipped). *out is malloc'ed: the pieces
// separated by single spaces, each non-final piece of a word ending in "@@".
// MOA_EINVAL for invalid UTF-8, MOA_ENOMEM.
int moa_bpe_apply(const moa_bpe *b, const char *text, size_t len, char **out,
                  size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif
