// moa_text.h — cutting request texts into translation units and back.
//
//     moa_segs s = {0};
//     if (moa_text_segment(text, len, is_html, &s) == 0)
//         for (int i = 0; i < s.n; i++)
//             if (s.v[i].translate) ... text + s.v[i].off, s.v[i].len ...
//     moa_segs_free(&s);
//
// A text becomes a sequence of segments that, concatenated, give the text
// back byte for byte: verbatim ones (line breaks, each line's leading and
// trailing whitespace, blank lines and, for HTML, tags, comments, entities
// and script/style bodies) and translatable ones (the rest). The response
// puts every verbatim segment back as it was and every translatable one
// translated, so N lines in give N lines out and markup survives.
//
// Pure functions over bytes, no global state: thread-safe.
#ifndef MOA_TEXT_H
#define MOA_TEXT_H

#include <stddef.h>

typedef struct moa_seg {
    size_t off, len;        // bytes of the original text
    int translate;          // 1: send to the model; 0: copy as is
} moa_seg;

typedef struct moa_segs {
    moa_seg *v;
    int n, cap;
} moa_segs;

void moa_segs_free(moa_segs *s);
// Appends a segment, merging neighbouring verbatim ones. 0 or -1 (no memory).
int moa_segs_push(moa_segs *s, size_t off, size_t len, int translate);

// Cuts text (len bytes) into segments; html: 1 for format "html".
// 0 or -1 (out of memory).
int moa_text_segment(const char *text, size_t len, int html, moa_segs *out);

// Returns 1 if the text [s, s+n) is short enough to be one unit.
typedef int (*moa_fits_fn)(void *ctx, const char *s, size_t n);

// Appends [off, off+len) of text to out as translatable segments that each
// fit: whole if it fits, else cut after sentence ends (. ! ? … 。 ！ ？ and
// closing quotes/brackets, before whitespace), and a sentence that still
// does not fit halved at the whitespace nearest its middle (failing that at
// a character boundary) until it fits; the whitespace between pieces stays
// verbatim. 0 or -1 (out of memory).
int moa_text_split_long(const char *text, size_t off, size_t len,
                        moa_fits_fn fits, void *ctx, moa_segs *out);

#endif
