// fuzz_tokenizer.c — tokenizer/moa_tokenizer.h with the tiny trained
// model's SentencePiece model and vocabulary: encode, encode to pieces,
// decode, and decode of arbitrary id arrays.
//
// Input: one selector byte, then the payload.
//   bit 0     add eos when encoding
// The payload is encoded as text (and as pieces), the ids that come out are
// decoded; then the payload read as int32s is decoded twice: as it is
// (mostly out of range) and folded into -4..V+3 (mostly in range).
//
// Checked: encoding succeeds exactly when the payload is well-formed UTF-8
// without NUL bytes; ids are in range, eos last when asked for; pieces and
// ids agree in number; decoding succeeds exactly when every id is in range.
#include "fuzz_util.h"
#include "moa_tokenizer.h"
#include "moa_utf8.h"

static moa_tokenizer *tok;
static int V;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char root[4096], dir[4200], err[512];
    fuzz_find_root(*argv ? (*argv)[0] : NULL, root, sizeof root);
    snprintf(dir, sizeof dir, "%s/" FUZZ_TINY, root);
    if (!(tok = moa_tokenizer_load(dir, err, sizeof err))) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        abort();
    }
    V = moa_tokenizer_vocab_size(tok);
    return 0;
}

static void decode_ids(const int *ids, int n) {
    int in_range = 1;
    for (int i = 0; i < n; i++) in_range &= ids[i] >= 0 && ids[i] < V;
    char *text = NULL, err[256] = "";
    int rc = moa_tokenizer_decode(tok, ids, n, &text, err, sizeof err);
    if (in_range) {
        FUZZ_CHECK(rc == 0 && text);
    } else {
        FUZZ_CHECK(rc == MOA_EINVAL && err[0]);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int add_eos = data[0] & 1;
    size_t len = size - 1;
    char *text = malloc(len ? len : 1);  // exact: nothing may read past len
    if (!text) return 0;
    memcpy(text, data + 1, len);
    int valid = moa_utf8_check(text, len, NULL, NULL) == 0;

    int *ids = NULL, n = -1;
    char err[256] = "";
    int rc = moa_tokenizer_encode(tok, text, len, add_eos, &ids, &n, err, sizeof err);
    if (valid) {
        FUZZ_CHECK(rc == 0 && ids && n >= add_eos);
        for (int i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < V);
        if (add_eos) FUZZ_CHECK(ids[n - 1] == 2);
        decode_ids(ids, n);
    } else {
        FUZZ_CHECK(rc == MOA_EINVAL && err[0]);
    }
    char **pieces = NULL;
    int np = -1;
    int prc = moa_tokenizer_encode_pieces(tok, text, len, add_eos, &pieces, &np, err, sizeof err);
    FUZZ_CHECK(prc == rc);
    if (prc == 0) {
        FUZZ_CHECK(np == n);
        for (int i = 0; i < np; i++) FUZZ_CHECK(pieces[i] != NULL);
        free(pieces);
    }
    free(ids);

    int m = (int)(len / sizeof(int));
    int *raw = malloc((size_t)(m ? m : 1) * sizeof(int));
    if (!raw) abort();
    memcpy(raw, text, (size_t)m * sizeof(int));
    decode_ids(raw, m);
    for (int i = 0; i < m; i++) {
        unsigned u = (unsigned)raw[i];
        raw[i] = (int)(u % (unsigned)(V + 8)) - 4;
    }
    decode_ids(raw, m);
    free(raw);
    free(text);
    return 0;
}
