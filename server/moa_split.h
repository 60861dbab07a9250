// moa_split.h — cutting a line (or an HTML block's text) into sentences, and
// sentences that are still too long for the model into pieces.
//
//     moa_span keep[] = {{12, 2, 0}};          // "%s" at byte 12: never cut inside
//     moa_segs out = {0};
//     moa_split(text, off, len, keep, 1, 1, fits, ctx, &out);
//     for (int i = 0; i < out.n; i++)
//         if (out.v[i].translate) ... one sentence: text + out.v[i].off ...
//     moa_segs_free(&out);
//
// The segments concatenate to the input byte for byte: translatable ones
// (sentences, or pieces of a sentence too long for the model) and verbatim
// ones (the source's own whitespace between sentences, and break tags such
// as <br> that the keep list marks as breaks). The caller puts every
// verbatim segment back as it was, so sentences are joined with exactly the
// whitespace they had.
//
// Sentence ends (moa_split_sentence_end): . ! ? … (and runs of them, then
// closing quotes and brackets) followed by whitespace and a character that
// may open a sentence: a letter that is not lower-case (capitals; scripts
// without case), a digit, an opening quote or bracket, or a kept span
// (a placeholder). Not after common abbreviations (e.g. i.e. etc. Mr. Dr.
// vs. ...; No. Fig. p. only before a number), single-letter initials, nor
// when the sentence so far holds no letter ("1." of a numbered list); never
// inside a kept span (placeholders, tags, whose text is opaque). Numbers and
// versions (3.14), URLs, e-mail addresses, file names and paths never have
// whitespace after their inner dots, so they are never cut. CJK marks 。！？
// end a sentence whatever follows.
//
// Pure functions over bytes; thread-safe.
#ifndef MOA_SPLIT_H
#define MOA_SPLIT_H

#include <stddef.h>

#include "moa_text.h"

// Cuts [off, off+len) of text (no line breaks inside) and appends the
// segments to out. keep: n_keep spans sorted by offset, inside
// [off, off+len): never cut inside; those with brk set are cut AROUND
// (verbatim between two sentences). sentences: 0 cuts only what does not
// fit (as if every sentence end were a candidate only then). fits: 1 when a
// piece is short enough for the model (NULL: everything fits). A piece that
// does not fit is cut at its sentence ends, then halved at the whitespace
// nearest its middle (outside kept spans), failing that at a character
// boundary, until it fits. Leading/trailing whitespace of the range is kept
// verbatim. Returns 0 or -1 (out of memory).
int moa_split(const char *text, size_t off, size_t len, const moa_span *keep, int n_keep,
              int sentences, moa_fits_fn fits, void *ctx, moa_segs *out);

// If a sentence ends at the mark at text[i] (inside [start, end)), returns
// the offset just after the mark run and its closing quotes (where the
// whitespace begins), else 0. start: where the current sentence began.
size_t moa_split_sentence_end(const char *text, size_t start, size_t i, size_t end,
                              const moa_span *keep, int n_keep);

#endif
