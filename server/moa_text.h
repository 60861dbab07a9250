// moa_text.h — cutting request texts into translation units and back.
//
//     moa_segs s = {0};
//     if (moa_text_segment(text, len, is_html, &s) == 0)
//         for (int i = 0; i < s.n; i++)
//             if (s.v[i].translate) ... text + s.v[i].off, s.v[i].len ...
//     moa_segs_free(&s);
//
// A text becomes a sequence of segments that, concatenated, give the text
// back byte for byte: verbatim ones and translatable ones. The response puts
// every verbatim segment back as it was and every translatable one
// translated (moa_split.h cuts the translatable ones into sentences).
//
// Plain text: line breaks, each line's leading and trailing whitespace and
// blank lines are verbatim, the rest of each line is translatable, so N
// lines in give N lines out.
//
// HTML: the text of each block is one translatable segment, with its inline
// markup inside it (b i em strong a span kbd ..., comments, entities, and
// code elements, which moa_protect.h keeps out of the model's reach);
// block-level tags (p div li td h1 ... br), declarations and the bodies of
// script, style, pre, textarea, svg and math are verbatim — except the
// values of title and alt attributes, which are translatable segments of
// their own (attr set to their quote). Line breaks inside a block's text
// are whitespace, as HTML reads them, so a sentence broken over two lines is
// translated whole (and comes back on one line).
//
// Also here: UTF-8 walking and letter classes, and the HTML tag reader the
// other text modules share. Pure functions over bytes: thread-safe.
#ifndef MOA_TEXT_H
#define MOA_TEXT_H

#include <stddef.h>
#include <stdint.h>

typedef struct moa_seg {
    size_t off, len;        // bytes of the original text
    int translate;          // 1: send to the model; 0: copy as is
    char attr;              // translatable attribute value: its quote ('"', '\'', or ' ' if
                            // unquoted); 0 for text
} moa_seg;

typedef struct moa_segs {
    moa_seg *v;
    int n, cap;
} moa_segs;

// A span of the text that splitting must not cut (a placeholder or a tag);
// brk: a tag that ends a sentence (<br>, <p>, </li>, ...), kept verbatim
// between two sentences.
typedef struct moa_span {
    size_t off, len;
    int brk;
} moa_span;

void moa_segs_free(moa_segs *s);
// Appends a segment, merging neighbouring verbatim ones. 0 or -1 (no memory).
int moa_segs_push(moa_segs *s, size_t off, size_t len, int translate);

// Cuts text (len bytes) into segments; html: 1 for format "html".
// 0 or -1 (out of memory).
int moa_text_segment(const char *text, size_t len, int html, moa_segs *out);

// Returns 1 if the text [s, s+n) is short enough to be one unit.
typedef int (*moa_fits_fn)(void *ctx, const char *s, size_t n);

// --- characters -----------------------------------------------------------------

// The code point at t[i] (< end) and its length in *n (U+FFFD, 1 byte, for a
// malformed sequence).
uint32_t moa_text_cp(const char *t, size_t i, size_t end, int *n);
// Letter classes for every script (glibc's C.UTF-8 tables through a locale
// object of their own: the process locale is not touched).
int moa_text_cp_alpha(uint32_t c);
int moa_text_cp_lower(uint32_t c);
uint32_t moa_text_cp_tolower(uint32_t c);
// ' ', \t, \r, \n, \v, \f
int moa_text_is_ws(char c);

// --- HTML -----------------------------------------------------------------------

typedef enum {
    MOA_TAG_OPEN = 1,       // <b>, <a href=...>
    MOA_TAG_CLOSE = 2,      // </b>
    MOA_TAG_EMPTY = 3,      // <br/>, <img ...> and the other void elements
    MOA_TAG_COMMENT = 4,    // <!-- ... -->
    MOA_TAG_DECL = 5,       // <!DOCTYPE ...>, <?xml ...?>, <![CDATA[...]]>
} moa_tag_kind;

// End (exclusive) of the tag starting at t[i] == '<' (quoted attribute
// values may hold '>'), or 0 when '<' opens no tag (then it is text, as
// browsers read it). An unclosed tag runs to end.
size_t moa_html_tag_end(const char *t, size_t i, size_t end);
// End of the entity at t[i] == '&' (&name; &#123; &#x1F;), or 0.
size_t moa_html_entity_end(const char *t, size_t i, size_t end);
// Kind of the tag [i, e) and its name, lower-cased, in name (truncated to
// cap-1 bytes; "" for comments and declarations).
int moa_html_tag_kind(const char *t, size_t i, size_t e, char *name, size_t cap);
// Element classes by lower-cased name: block-level (a sentence ends at its
// tags; br counts), opaque (its content is never translated: script style
// pre textarea svg math code), void (no closing tag).
int moa_html_is_block(const char *name);
int moa_html_is_opaque(const char *name);
int moa_html_is_void(const char *name);
// For an opaque element opened by the tag ending at e: the end of its
// closing tag (end when there is none).
size_t moa_html_opaque_end(const char *t, size_t e, size_t end, const char *name);
// The values of the title and alt attributes of the tag [i, e): up to max
// spans (offset, length, quote char) written to v; returns how many.
int moa_html_attr_values(const char *t, size_t i, size_t e, moa_seg *v, int max);

#endif
