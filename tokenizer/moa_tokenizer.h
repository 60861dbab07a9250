// moa_tokenizer.h — text ⇄ model ids: a C API over the SentencePiece library,
// or over Moses tokenisation and subword-nmt BPE (models trained with
// fairseq's recipes).
//
// Usage:
//
//     char err[512];
//     moa_tokenizer *tok = moa_tokenizer_load("weights/moa-en-de", err, sizeof err);
//     int *ids; int n;
//     if (moa_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, err, sizeof err) == 0) {
//         ... ids[0..n-1], the last one eos ...
//         free(ids);
//     }
//     char *out;
//     moa_tokenizer_decode(tok, ids, n, &out, err, sizeof err);  // free(out)
//     moa_tokenizer_free(tok);
//
// A model directory holds vocab.txt (spec §3, §7): line i is model id i, ids
// 0-3 are <s> <pad> </s> <unk>. Its config.json says which tokenizer cuts
// text into pieces:
//   - "tokenizer": "sentencepiece" (the default, also without config.json):
//     sentencepiece.model;
//   - "tokenizer": "subword-nmt": the Moses rules of source_lang/target_lang
//     (moa_moses.h; options in "moses"), then the merges of bpecodes
//     (moa_bpe.h); pieces other than a word's last end in "@@". Decoding joins
//     them and runs the Moses detokenizer of target_lang.
// Each piece maps to its vocab.txt id (first occurrence wins), a piece not in
// vocab.txt becomes <unk>.
//
// Thread-safety: a loaded tokenizer is read-only; encode/decode may be called
// from any number of threads at once. Return values: 0 or a negative
// moa_errno code (common/moa_errors.h, the engine's table) with a message in
// err (may be NULL). UTF-8 helpers for callers that walk text themselves:
// common/moa_utf8.h.
#ifndef MOA_TOKENIZER_H
#define MOA_TOKENIZER_H

#include <stddef.h>

#include "moa_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moa_tokenizer moa_tokenizer;

// Loads DIR/vocab.txt and DIR/sentencepiece.model, or DIR/bpecodes when
// DIR/config.json says "tokenizer": "subword-nmt". NULL on failure with a
// message naming the file and the problem.
moa_tokenizer *moa_tokenizer_load(const char *dir, char *err, size_t errlen);
void moa_tokenizer_free(moa_tokenizer *t);  // NULL is a no-op

// "sentencepiece" or "subword-nmt" (static; NULL for a NULL tokenizer).
const char *moa_tokenizer_kind(const moa_tokenizer *t);

// Lines of vocab.txt.
int moa_tokenizer_vocab_size(const moa_tokenizer *t);
// vocab.txt line `id`, or NULL when out of range. Owned by the tokenizer.
const char *moa_tokenizer_piece(const moa_tokenizer *t, int id);

// Encodes UTF-8 text of `len` bytes into model ids, eos appended when
// add_eos. *ids is malloc'ed (caller frees), *n its length. Empty or
// whitespace-only text gives no pieces (just eos when add_eos). Invalid
// UTF-8 and NUL bytes are refused with MOA_EINVAL and the byte offset in
// err; text over 4 MiB with MOA_ETOOLONG (SentencePiece needs ~115 bytes of
// memory per input byte). On success *ids is never NULL.
int moa_tokenizer_encode(const moa_tokenizer *t, const char *text, size_t len,
                         int add_eos, int **ids, int *n,
                         char *err, size_t errlen);

// Which side of a translation a text is: moa_tokenizer_encode takes source
// text; a reference translation to score is target text. SentencePiece cuts
// both alike, the Moses rules follow each side's language.
enum { MOA_TOK_SOURCE = 0, MOA_TOK_TARGET = 1 };

// moa_tokenizer_encode for text of either side (MOA_EINVAL for another value).
int moa_tokenizer_encode_side(const moa_tokenizer *t, int side, const char *text,
                              size_t len, int add_eos, int **ids, int *n,
                              char *err, size_t errlen);

// Encodes like moa_tokenizer_encode but returns the pieces as strings
// (vocab.txt spelling; <unk> for unknown pieces), eos as "</s>" when add_eos.
// *pieces is one malloc'ed array of n pointers into the same block: free(*pieces).
int moa_tokenizer_encode_pieces(const moa_tokenizer *t, const char *text,
                                size_t len, int add_eos, char ***pieces,
                                int *n, char *err, size_t errlen);

// Decodes ids to UTF-8 text: <s> <pad> </s> are dropped, the rest go through
// vocab.txt to pieces and SentencePiece's decoder (<unk> renders as " ⁇ "),
// or, for subword-nmt, are joined, "@@ " removed, and detokenized by the
// Moses rules of target_lang (<unk> renders as the word "⁇").
// Ids out of range are refused with MOA_EINVAL. *text is malloc'ed.
int moa_tokenizer_decode(const moa_tokenizer *t, const int *ids, int n,
                         char **text, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
