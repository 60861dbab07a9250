// moa_protect.h — placeholders, markup and keyboard accelerators taken out
// of the text before the model sees it, and put back into its translation.
//
//     moa_protect_vocab *pv = moa_protect_vocab_create(tok);    // once per model
//     moa_phs ph = {0};
//     moa_protect_scan(text, off, len, html, 1, &ph);           // a line / a block
//     ... moa_split() with moa_phs_spans(&ph) as the spans it must not cut ...
//     moa_prot p;                                               // one sentence of it
//     moa_protect_trim(text, &uoff, &ulen, &ph);                // edge tags stay verbatim
//     moa_protect_unit(pv, text, uoff, ulen, &ph, html, 0, &p);
//     encode p.masked -> ids; moa_protect_locate(&p, tok, ids, n);
//     ... translate ids (with the cross-attention: moa_search_opts.attention) ...
//     moa_protect_restore(&p, pv, tok, hyp_ids, hyp_n, attn, cols, NULL, &out, &warn);
//     moa_prot_free(&p); moa_phs_free(&ph);
//
// What is protected (the same items train/evaluate.py counts as
// placeholders): printf conversions (%s %1$s %-10.2f %ld %qE), Python
// %(name)s, %%, Qt %1 %L2, brace {0} {name} {0,number} {} {0:.2f}, {{var}},
// ${var}, markup tags (HTML, Pango, DocBook; in plain text a <word> counts
// only with attributes, as a known HTML tag, closed or self-closing — a
// "<file>" in a usage line is text to translate) and entities (&amp; &#8217;).
// In plain text also one keyboard accelerator (&Save, Sa&ve, _File): the
// marker is removed, so the model sees the word, and set again on the
// translated word the attention aligns with the marked one.
//
// How: every item (a run of adjacent items counts as one) is replaced by a
// sentinel, a piece the model's SentencePiece vocabulary holds whole and
// that the model learnt to copy: an item that is such a piece itself (%s,
// %d, %1, {0}) stays; another printf conversion becomes the plain one of
// its type (%02d -> %d, %qE -> %s); everything else gets a distinct one of
// {0}..{4}, %1..%5, %1$s..%4$s, %1$d..%3$d, %1$u, %2$u not used otherwise in
// the sentence (then {} for the rest). Tags that only wrap the sentence
// (<p>...</p>, <b>...</b> around all of it) and stray tags at its edges are
// not sent at all (moa_protect_trim).
//
// Putting back (moa_protect_restore): each sentinel of the output gets its
// item back — items sharing one sentinel in source order, so printf
// arguments keep their order. A sentinel the model repeated keeps the copy
// whose token attends most to the item's source position; one it invented
// is removed. One it dropped is put back at the word boundary of the
// output that the cross-attention of the other target tokens puts on the
// item's side (fewest target tokens aligned across it; ties: where the
// attention to the item itself is highest); without attention, at its
// relative position. Printf conversions without an argument number stay in
// source order among themselves, and tags whose order the model broke
// (a close before its open, crossed pairs) go back into source order, so
// well-formed markup stays well-formed. So every source item comes back
// exactly as many times as it was there; each repair is reported as a
// warning line.
//
// Scan, trim, unit and restore are pure functions of their inputs
// (thread-safe); a vocab is read-only after creation.
#ifndef MOA_PROTECT_H
#define MOA_PROTECT_H

#include <stddef.h>
#include <stdint.h>

#include "moa_buf.h"
#include "moa_text.h"
#include "moa_tokenizer.h"

typedef enum {
    MOA_PH_PERCENT = 1,     // %%
    MOA_PH_PRINTF,          // %s %-10.2f %ld: takes the next argument
    MOA_PH_PRINTF_POS,      // %1$s
    MOA_PH_PYFMT,           // %(name)s
    MOA_PH_QT,              // %1 %L2
    MOA_PH_BRACE,           // {0} {name} {0,number} {} {0:.2f}
    MOA_PH_DBRACE,          // {{var}}
    MOA_PH_SHELL,           // ${var}
    MOA_PH_TAG,             // <b> </b> <br/> <a href=...>, comments and <code>...</code> in HTML
    MOA_PH_ENTITY,          // &amp; &#8217;
} moa_ph_kind;

typedef struct moa_ph {
    size_t off, len;        // bytes of the text
    int kind;               // moa_ph_kind
    int tag;                // moa_tag_kind of a MOA_PH_TAG
    int brk;                // a tag of a block element or br: a sentence ends there
    char name[16];          // tag name, lower case
} moa_ph;

typedef struct moa_phs {
    moa_ph *v;              // by offset
    int n, cap;
    size_t accel;           // offset of the accelerator marker (& or _), or SIZE_MAX
} moa_phs;

// Finds the items of text[off, off+len) and appends them to out (which
// must be empty; out->accel is set). html: every tag counts, and code
// elements are one item; accel: look for a keyboard accelerator (plain
// text; exactly one candidate, else none). 0 or -1 (out of memory).
int moa_protect_scan(const char *text, size_t off, size_t len, int html, int accel,
                     moa_phs *out);
void moa_phs_free(moa_phs *p);
// The items as spans splitting must not cut (*spans malloc'ed, may be NULL
// when there are none). Returns the count, or -1 (out of memory).
int moa_phs_spans(const moa_phs *p, moa_span **spans);

// Sentinel pieces of one model's vocabulary.
typedef struct moa_protect_vocab moa_protect_vocab;
moa_protect_vocab *moa_protect_vocab_create(const moa_tokenizer *tok);  // NULL: no memory
void moa_protect_vocab_free(moa_protect_vocab *pv);                     // NULL is a no-op

// Narrows [*off, *off+*len) past whitespace and the tags at its edges that
// wrap the whole of it or pair with nothing inside it.
void moa_protect_trim(const char *text, size_t *off, size_t *len, const moa_phs *ph);

typedef struct moa_prot_item {
    size_t off, len;        // in the text: one item or a run of adjacent ones
    const char *sentinel;   // what the model sees instead; NULL: the item itself (no
                            // sentinel was left, or the model has none)
    int ph0, n_ph;          // its items in moa_prot.ph
    int ordered;            // holds a printf conversion that takes the next argument
    int left, right;        // what touches it in the source: 0 whitespace or the
                            // sentence's edge, 1 a letter or digit, 2 another character
    int src_tok;            // index of its sentinel in the source ids, -1 unknown
    int proj;               // a tag of an inline pair around words: not shown to the
                            // model, projected by alignment
    int partner;            // the other tag of a projected pair, -1
    size_t mpos;            // where it is (or was taken out) in the masked text
    int tok_lo, tok_hi;     // opening tag of a projected pair: the source ids it wraps
} moa_prot_item;

typedef struct moa_prot {
    const char *text;       // the request text (not owned)
    size_t off, len;        // the sentence in it
    int html;               // escape the output as HTML text
    char attr;              // ... as an attribute value with this quote (0: text)
    moa_ph *ph;             // the sentence's items (copies)
    int n_ph;
    moa_prot_item *items;   // what gets a sentinel, by offset
    int n_items;
    char *masked;           // the sentence as the model sees it (NUL-terminated)
    size_t masked_len;
    size_t accel;           // accelerator marker's offset in text, SIZE_MAX: none
    size_t accel_lo, accel_hi;  // the word holding the marked letter, in masked
    uint32_t accel_letter;  // the marked letter, lower case
    int accel_tok_lo, accel_tok_hi;  // its source tokens (moa_protect_locate)
} moa_prot;

// Builds the masked sentence for text[off, off+len) from the items of ph
// inside it (pv NULL: no sentinels, items left as they are but still
// counted back). attr: the quote of an attribute value being translated
// (its output is escaped for it), 0 for text. 0 or -1 (out of memory; p is
// then clear).
int moa_protect_unit(const moa_protect_vocab *pv, const char *text, size_t off, size_t len,
                     const moa_phs *ph, int html, char attr, moa_prot *p);
// 1 when the sentence has a letter outside its items (else there is nothing
// to translate: "%s: %d", "&#169;").
int moa_protect_has_words(const moa_prot *p);
// 1 when alignment would help putting it back (it has items or an accelerator).
int moa_protect_wants_alignment(const moa_prot *p);
// Finds the sentinels (and the accelerator's word) among the ids of
// p->masked (eos not included).
// 0, or -1: out of memory (then the pairs' and the accelerator's source
// tokens may be unknown; the caller gives up rather than restore worse).
int moa_protect_locate(moa_prot *p, const moa_tokenizer *tok, const int *ids, int n);

// Writes the translation hyp[0..n) (eos allowed) of p->masked to out, with
// every item put back (item_text[i]/item_len[i]: what to put for item i,
// NULL for its own source bytes). attn: n rows of cols floats, the
// cross-attention of each target token over the source ids (cols = source
// ids + 1 for eos), NULL when there is none. warn (may be NULL) gets one
// line per repair. 0, or -1 (out of memory, or the ids do not decode).
int moa_protect_restore(const moa_prot *p, const moa_protect_vocab *pv,
                        const moa_tokenizer *tok, const int *hyp, int n, const float *attn,
                        int cols, const char *const *item_text, const size_t *item_len,
                        moa_buf *out, moa_buf *warn);

void moa_prot_free(moa_prot *p);  // zeroes it; safe on a zeroed one

#endif
