// moa_moses.h — Moses-style tokenisation and detokenisation (English and
// German), and the two clean-ups that fairseq's WMT recipes run first.
//
// Usage:
//
//     moa_moses_opts o = {.lang = moa_moses_lang("en"), .aggressive = 1, .escape = 1,
//                         .normalize = 1, .remove_non_printing = 1};
//     char *tok; size_t n;
//     if (moa_moses_tokenize(&o, "Don't stop-loss.", 16, &tok, &n) == 0) {
//         ... tok = "Don &apos;t stop @-@ loss ." ...
//         free(tok);
//     }
//     moa_moses_detokenize(MOA_MOSES_EN, tok, n, &text, &n);  // "Don't stop-loss."
//
// The rules are those of the Moses scripts as fairseq's
// prepare-wmt14en2de.sh runs them (normalize-punctuation.perl LANG |
// remove-non-printing-char.perl | tokenizer.perl -a -l LANG, and
// detokenizer.perl -l LANG): punctuation split off, ",", "'" and final "."
// by their own rules, the non-breaking prefixes (abbreviations) of each
// language, "@-@" for hyphens inside words (-a), and & | < > ' " [ ] written
// as HTML entities. They were written from the scripts' rules, not their
// code; docs/moa-spec.md §7 lists what is left out. Character classes are
// Perl's (moa_unitab.h).
//
// Text in and out is UTF-8 with a length (it must be well-formed, without
// NUL: MOA_EINVAL otherwise). Outputs are malloc'ed and NUL-terminated; the
// caller frees them. Returns 0, MOA_EINVAL or MOA_ENOMEM. No state:
// thread-safe.
#ifndef MOA_MOSES_H
#define MOA_MOSES_H

#include <stddef.h>

#include "moa_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MOA_MOSES_EN = 0, MOA_MOSES_DE = 1 };

// The rules for a language code: "en", "EN", "en-GB", "en_US" give
// MOA_MOSES_EN, "de..." MOA_MOSES_DE; anything else -1 (no rules here).
int moa_moses_lang(const char *code);

typedef struct moa_moses_opts {
    int lang;                 // MOA_MOSES_EN or MOA_MOSES_DE
    int aggressive;           // -a: "stop-loss" -> "stop @-@ loss"
    int escape;               // entities for & | < > ' " [ ] (tokenizer.perl's default)
    int normalize;            // normalize-punctuation.perl LANG first
    int remove_non_printing;  // remove-non-printing-char.perl first
} moa_moses_opts;

// Tokenizes one line: tokens separated by single spaces, no space at either
// end (an empty string when nothing is left). Line breaks count as spaces.
int moa_moses_tokenize(const moa_moses_opts *o, const char *text, size_t len,
                       char **out, size_t *out_len);

// detokenizer.perl -l LANG: "@-@" joined, entities decoded, punctuation and
// quotes attached to their words.
int moa_moses_detokenize(int lang, const char *text, size_t len, char **out,
                         size_t *out_len);

// normalize-punctuation.perl LANG alone: unicode quotes and dashes to ASCII,
// spaces around brackets and before : ; % ? !, quote/comma order, digit
// groups ("1 000" -> "1,000" in German, "1.000" in English).
int moa_moses_normalize(int lang, const char *text, size_t len, char **out,
                        size_t *out_len);

// remove-non-printing-char.perl alone: every \p{C} character (controls,
// format characters, private use, unassigned) becomes a space.
int moa_moses_remove_non_printing(const char *text, size_t len, char **out,
                                  size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif
