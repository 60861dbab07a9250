// test_tokenizer.c — tokenizer/moa_tokenizer.h against the fixture model in
// tests/fixtures/spm (1000 pieces, SentencePiece ids equal vocab.txt ids).
//
// Golden ids below were computed once with the Python sentencepiece module
// (the same libsentencepiece 0.1.97) on tests/fixtures/spm/sentencepiece.model:
//     p.encode('Open file...')  ->  [634, 148, 209]
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include "moa_model.h"
#include "moa_test.h"
#include "moa_tokenizer.h"

#define SPM_DIR "tests/fixtures/spm"
#define SAMPLE "tests/fixtures/sample.en-de.tsv"

// --- helpers -------------------------------------------------------------------

static moa_tokenizer *load_fixture(void) {
    char err[512] = "";
    moa_tokenizer *t = moa_tokenizer_load(SPM_DIR, err, sizeof err);
    if (!t) MOA_TEST_FAIL("load %s: %s", SPM_DIR, err);
    return t;
}

// Reads a whole file; *len its size. Fails the test when it cannot.
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) MOA_TEST_FAIL("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    ASSERT_TRUE(buf != NULL);
    ASSERT_EQ_INT(fread(buf, 1, (size_t)size, f), size);
    fclose(f);
    buf[size] = '\0';
    *len = (size_t)size;
    return buf;
}

static void spill(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) MOA_TEST_FAIL("cannot create %s", path);
    ASSERT_EQ_INT(fwrite(data, 1, len, f), len);
    ASSERT_EQ_INT(fclose(f), 0);
}

// Makes $MOA_TEST_TMP/name holding a copy of the fixture's
// sentencepiece.model (unless with_model is 0); returns the directory.
static char *scratch_dir(const char *name, int with_model) {
    const char *tmp = getenv("MOA_TEST_TMP");
    ASSERT_TRUE(tmp != NULL);
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/tok-%s", tmp, name);
    mkdir(dir, 0755);
    if (with_model) {
        size_t len;
        char *model = slurp(SPM_DIR "/sentencepiece.model", &len);
        char path[1100];
        snprintf(path, sizeof path, "%s/sentencepiece.model", dir);
        spill(path, model, len);
        free(model);
    }
    return dir;
}

static void write_vocab(const char *dir, const char *data, size_t len) {
    char path[1100];
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    spill(path, data, len);
}

// The fixture's vocab.txt with line `line` (0-based) replaced by `repl`
// and "\n" replaced by `eol`. Returns a malloc'ed string, *len its size.
static char *edited_vocab(int line, const char *repl, const char *eol, size_t *len) {
    size_t in_len;
    char *in = slurp(SPM_DIR "/vocab.txt", &in_len);
    char *out = malloc(in_len * 2 + strlen(repl) + 16);
    ASSERT_TRUE(out != NULL);
    size_t o = 0;
    int i = 0;
    for (char *p = in; *p; i++) {
        char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        const char *src = i == line ? repl : p;
        size_t src_n = i == line ? strlen(repl) : n;
        memcpy(out + o, src, src_n);
        o += src_n;
        if (nl) {
            memcpy(out + o, eol, strlen(eol));
            o += strlen(eol);
        }
        p += n + (nl ? 1 : 0);
    }
    free(in);
    *len = o;
    return out;
}

static int encode(const moa_tokenizer *t, const char *s, int add_eos, int **ids,
                  int *n, char *err) {
    return moa_tokenizer_encode(t, s, strlen(s), add_eos, ids, n, err, 512);
}

static void assert_ids(const int *got, int n, const int *want, int want_n) {
    ASSERT_EQ_INT(n, want_n);
    for (int i = 0; i < n; i++)
        if (got[i] != want[i])
            MOA_TEST_FAIL("id %d is %d, expected %d", i, got[i], want[i]);
}

static void assert_encodes(const moa_tokenizer *t, const char *s, const int *want,
                           int want_n) {
    char err[512] = "";
    int *ids = NULL, n = -1;
    int rc = encode(t, s, 1, &ids, &n, err);
    if (rc != 0) MOA_TEST_FAIL("encode \"%s\": %d %s", s, rc, err);
    assert_ids(ids, n, want, want_n);
    free(ids);
}

static void assert_bad_utf8(const moa_tokenizer *t, const char *s, size_t len,
                            int at) {
    char err[512] = "", want[64];
    int *ids = (int *)1, n = -1;
    ASSERT_EQ_INT(moa_tokenizer_encode(t, s, len, 1, &ids, &n, err, sizeof err),
                  MOA_EINVAL);
    ASSERT_TRUE(ids == NULL);
    ASSERT_EQ_INT(n, 0);
    snprintf(want, sizeof want, "invalid UTF-8 at byte %d", at);
    ASSERT_STR_CONTAINS(err, want);
}

static char *decode(const moa_tokenizer *t, const int *ids, int n) {
    char err[512] = "", *text = NULL;
    int rc = moa_tokenizer_decode(t, ids, n, &text, err, sizeof err);
    if (rc != 0) MOA_TEST_FAIL("decode: %d %s", rc, err);
    ASSERT_TRUE(text != NULL);
    return text;
}

// Up to max tab-separated fields of the first `lines` lines of SAMPLE, as
// NUL-terminated strings inside *buf (caller frees *buf).
static int sample_strings(int lines, char **out, int max, char **buf) {
    size_t len;
    char *s = slurp(SAMPLE, &len);
    int n = 0, line = 0;
    for (char *p = s; *p && line < lines && n < max;) {
        char *end = p + strcspn(p, "\t\n");
        char sep = *end;
        *end = '\0';
        out[n++] = p;
        if (sep == '\n') line++;
        p = sep ? end + 1 : end;
    }
    *buf = s;
    return n;
}

// --- load ----------------------------------------------------------------------

static void test_load(void) {
    moa_tokenizer *t = load_fixture();
    ASSERT_EQ_INT(moa_tokenizer_vocab_size(t), 1000);
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 0), "<s>");
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 1), "<pad>");
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 2), "</s>");
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 3), "<unk>");
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 5), "\xe2\x96\x81");  // "▁"
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 148), "\xe2\x96\x81" "file");
    ASSERT_TRUE(moa_tokenizer_piece(t, 1000) == NULL);
    ASSERT_TRUE(moa_tokenizer_piece(t, -1) == NULL);
    ASSERT_TRUE(moa_tokenizer_piece(NULL, 0) == NULL);
    ASSERT_EQ_INT(moa_tokenizer_vocab_size(NULL), 0);
    moa_tokenizer_free(t);
    moa_tokenizer_free(NULL);
}

static void test_load_missing_dir(void) {
    char err[512] = "";
    ASSERT_TRUE(moa_tokenizer_load("/nonexistent/moa-model", err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "/nonexistent/moa-model/sentencepiece.model");
    ASSERT_STR_CONTAINS(err, "No such file");
    ASSERT_TRUE(moa_tokenizer_load(NULL, err, sizeof err) == NULL);
    ASSERT_TRUE(moa_tokenizer_load("/nonexistent", NULL, 0) == NULL);  // err optional
}

static void test_load_missing_vocab(void) {
    char err[512] = "";
    char *dir = scratch_dir("novocab", 1);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "vocab.txt");
    ASSERT_STR_CONTAINS(err, "No such file");
}

static void test_load_empty_vocab(void) {
    char err[512] = "";
    char *dir = scratch_dir("emptyvocab", 1);
    write_vocab(dir, "", 0);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "vocab.txt");
    ASSERT_STR_CONTAINS(err, "empty file");
}

static void test_load_wrong_specials(void) {
    char err[512] = "";
    char *dir = scratch_dir("specials", 1);
    size_t len;
    char *v = edited_vocab(1, "<PAD>", "\n", &len);
    write_vocab(dir, v, len);
    free(v);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "vocab.txt");
    ASSERT_STR_CONTAINS(err, "line 2 is \"<PAD>\", expected \"<pad>\"");

    const char short_vocab[] = "<s>\n<pad>\n";  // lines 2-3 missing
    write_vocab(dir, short_vocab, strlen(short_vocab));
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "vocab.txt: line 3 is missing");
}

// An empty line is not a token: refused with its line number.
static void test_load_empty_line(void) {
    char err[512] = "";
    char *dir = scratch_dir("emptyline", 1);
    size_t len;
    char *v = edited_vocab(500, "", "\n", &len);
    write_vocab(dir, v, len);
    free(v);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "vocab.txt: line 501 is empty");
}

static void test_load_bad_utf8_vocab(void) {
    char err[512] = "";
    char *dir = scratch_dir("badvocab", 1);
    size_t len;
    char *v = edited_vocab(10, "ab\xc3", "\n", &len);
    write_vocab(dir, v, len);
    free(v);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "vocab.txt: line 11: invalid UTF-8 at byte 2");
}

static void test_load_corrupt_model(void) {
    char err[512] = "", path[1100];
    char *dir = scratch_dir("badmodel", 0);
    snprintf(path, sizeof path, "%s/sentencepiece.model", dir);
    const char junk[] = "this is not a protobuf \xff\xff\xff\xff";
    spill(path, junk, sizeof junk);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "sentencepiece.model");
}

// libsentencepiece throws when the model path is a directory: the exception
// must become an error naming the file, not escape into C.
static void test_load_model_is_dir(void) {
    char err[512] = "", path[1100];
    char *dir = scratch_dir("modeldir", 0);
    snprintf(path, sizeof path, "%s/sentencepiece.model", dir);
    ASSERT_EQ_INT(mkdir(path, 0755), 0);
    ASSERT_TRUE(moa_tokenizer_load(dir, err, sizeof err) == NULL);
    ASSERT_STR_CONTAINS(err, "sentencepiece.model");
}

static void test_load_crlf(void) {
    char err[512] = "";
    char *dir = scratch_dir("crlf", 1);
    size_t len;
    char *v = edited_vocab(-1, "", "\r\n", &len);
    ASSERT_TRUE(strstr(v, "<s>\r\n<pad>\r\n") == v);
    write_vocab(dir, v, len);
    free(v);
    moa_tokenizer *t = moa_tokenizer_load(dir, err, sizeof err);
    if (!t) MOA_TEST_FAIL("load: %s", err);
    ASSERT_EQ_INT(moa_tokenizer_vocab_size(t), 1000);
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 3), "<unk>");
    ASSERT_STR_EQ(moa_tokenizer_piece(t, 999), "\xc5\x84");  // "ń", last line
    const int want[] = {634, 148, 209, 2};
    assert_encodes(t, "Open file...", want, 4);
    moa_tokenizer_free(t);
}

// A piece SentencePiece produces but vocab.txt lacks becomes <unk> (3); the
// replacement line decodes verbatim, as SentencePiece keeps pieces it does
// not know.
static void test_vocab_missing_piece(void) {
    char err[512] = "";
    char *dir = scratch_dir("missing", 1);
    size_t len;
    char *v = edited_vocab(148, "junk_token", "\n", &len);  // was "▁file"
    write_vocab(dir, v, len);
    free(v);
    moa_tokenizer *t = moa_tokenizer_load(dir, err, sizeof err);
    if (!t) MOA_TEST_FAIL("load: %s", err);
    const int want[] = {634, 3, 209, 2};
    assert_encodes(t, "Open file...", want, 4);

    char **pieces;
    int n;
    ASSERT_EQ_INT(moa_tokenizer_encode_pieces(t, "Open file...", 12, 0, &pieces, &n,
                                              err, sizeof err), 0);
    ASSERT_EQ_INT(n, 3);
    ASSERT_STR_EQ(pieces[1], "<unk>");
    free(pieces);

    const int ids[] = {634, 148, 209};
    char *text = decode(t, ids, 3);
    ASSERT_STR_EQ(text, "Openjunk_token...");
    free(text);
    moa_tokenizer_free(t);
}

static void test_vocab_first_occurrence_wins(void) {
    char err[512] = "";
    char *dir = scratch_dir("dup", 1);
    size_t len;
    // "▁file" (line 148) also on line 999: 148 stays its id.
    char *v = edited_vocab(999, "\xe2\x96\x81" "file", "\n", &len);
    write_vocab(dir, v, len);
    free(v);
    moa_tokenizer *t = moa_tokenizer_load(dir, err, sizeof err);
    if (!t) MOA_TEST_FAIL("load: %s", err);
    const int want[] = {634, 148, 209, 2};
    assert_encodes(t, "Open file...", want, 4);
    ASSERT_EQ_INT(moa_tokenizer_vocab_size(t), 1000);
    moa_tokenizer_free(t);

    // "▁file" also on line 100 (was "▁zu"): the earlier line, 100, wins.
    v = edited_vocab(100, "\xe2\x96\x81" "file", "\n", &len);
    write_vocab(dir, v, len);
    free(v);
    t = moa_tokenizer_load(dir, err, sizeof err);
    if (!t) MOA_TEST_FAIL("load: %s", err);
    const int want100[] = {634, 100, 209, 2};
    assert_encodes(t, "Open file...", want100, 4);
    moa_tokenizer_free(t);
}

// --- encode --------------------------------------------------------------------

static void test_encode_golden(void) {
    moa_tokenizer *t = load_fixture();
    // All from the Python sentencepiece module, eos (2) appended here.
    const int a[] = {634, 148, 209, 2};
    assert_encodes(t, "Open file...", a, 4);
    const int b[] = {328, 206, 458, 49, 667, 2};
    assert_encodes(t, "Ungenutzte l\xc3\xb6schen", b, 6);
    const int c[] = {468, 55, 9, 127, 67, 5, 33, 36, 35, 352, 267, 29, 10, 40, 26,
                     109, 113, 144, 132, 172, 660, 6, 70, 4, 69, 13, 212, 9, 2};
    assert_encodes(t, "Setzen Sie die kleinste Magnitude f\xc3\xbcr gezeichnete Asteroiden",
                   c, 29);
    // "żółw 漢字": SentencePiece's unknown pieces "ż" and "漢字" map to 3.
    const int d[] = {5, 3, 874, 987, 44, 5, 3, 2};
    assert_encodes(t, "\xc5\xbc\xc3\xb3\xc5\x82w \xe6\xbc\xa2\xe5\xad\x97", d, 8);
    moa_tokenizer_free(t);
}

static void test_encode_eos(void) {
    moa_tokenizer *t = load_fixture();
    char err[512];
    int *ids, n;
    ASSERT_EQ_INT(encode(t, "Open file...", 0, &ids, &n, err), 0);
    const int want[] = {634, 148, 209};
    assert_ids(ids, n, want, 3);
    free(ids);
    ASSERT_EQ_INT(encode(t, "Open file...", 1, &ids, &n, err), 0);
    ASSERT_EQ_INT(n, 4);
    ASSERT_EQ_INT(ids[3], 2);
    free(ids);
    moa_tokenizer_free(t);
}

static void test_encode_empty_and_whitespace(void) {
    moa_tokenizer *t = load_fixture();
    const int eos[] = {2};
    assert_encodes(t, "", eos, 1);
    assert_encodes(t, " ", eos, 1);
    assert_encodes(t, "  \t\r\n \v\f ", eos, 1);
    assert_encodes(t, "\xe3\x80\x80 \xc2\xa0", eos, 1);  // U+3000, U+00A0
    char err[512];
    int *ids = NULL, n = -1;
    // No pieces, no eos: zero ids, and still a buffer to free.
    ASSERT_EQ_INT(encode(t, "   ", 0, &ids, &n, err), 0);
    ASSERT_EQ_INT(n, 0);
    ASSERT_TRUE(ids != NULL);
    free(ids);
    ASSERT_EQ_INT(moa_tokenizer_encode(t, NULL, 0, 1, &ids, &n, err, sizeof err), 0);
    assert_ids(ids, n, eos, 1);
    free(ids);
    moa_tokenizer_free(t);
}

static void test_encode_invalid_utf8(void) {
    moa_tokenizer *t = load_fixture();
    assert_bad_utf8(t, "\x80", 1, 0);                       // lone continuation
    assert_bad_utf8(t, "ab\xbf" "cd", 5, 2);
    assert_bad_utf8(t, "ab\xe2\x82", 4, 2);                 // truncated at the end
    assert_bad_utf8(t, "ab\xe2\x82z", 5, 2);                // truncated mid-text
    assert_bad_utf8(t, "\xf0\x9f\x98", 3, 0);               // truncated 4-byte
    assert_bad_utf8(t, "x\xc0\xaf", 3, 1);                  // overlong '/'
    assert_bad_utf8(t, "\xc1\xbf", 2, 0);                   // overlong U+7F
    assert_bad_utf8(t, "\xe0\x80\xaf", 3, 0);               // overlong 3-byte
    assert_bad_utf8(t, "\xf0\x8f\xbf\xbf", 4, 0);           // overlong U+FFFF
    assert_bad_utf8(t, "abc\xed\xa0\x80", 6, 3);            // surrogate U+D800
    assert_bad_utf8(t, "\xed\xbf\xbf", 3, 0);               // surrogate U+DFFF
    assert_bad_utf8(t, "\xf4\x90\x80\x80", 4, 0);           // U+110000
    assert_bad_utf8(t, "\xf8\x88\x80\x80\x80", 5, 0);       // 5-byte form
    assert_bad_utf8(t, "ok \xff", 4, 3);
    assert_bad_utf8(t, "\xc3\xa9\xc3", 3, 2);               // after a valid 'é'

    // The edges that are valid.
    char err[512];
    int *ids, n;
    const char *ok[] = {"\xed\x9f\xbf", "\xee\x80\x80", "\xf4\x8f\xbf\xbf",
                        "\xf0\x9f\x98\x80", "\xc2\x80", "\xef\xbf\xbf"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int rc = encode(t, ok[i], 1, &ids, &n, err);
        if (rc != 0) MOA_TEST_FAIL("valid UTF-8 case %zu refused: %s", i, err);
        ASSERT_TRUE(n >= 1);
        free(ids);
    }
    moa_tokenizer_free(t);
}

// A NUL inside the buffer is refused, not passed on to SentencePiece (which
// would make it a piece of its own) nor read as the end of the text.
static void test_encode_nul_byte(void) {
    moa_tokenizer *t = load_fixture();
    char err[512] = "";
    int *ids = (int *)1, n = -1;
    ASSERT_EQ_INT(moa_tokenizer_encode(t, "ab\0cd", 5, 1, &ids, &n, err, sizeof err),
                  MOA_EINVAL);
    ASSERT_TRUE(ids == NULL);
    ASSERT_STR_CONTAINS(err, "NUL byte at byte 2");
    char **pieces = (char **)1;
    ASSERT_EQ_INT(moa_tokenizer_encode_pieces(t, "\0", 1, 1, &pieces, &n, err,
                                              sizeof err), MOA_EINVAL);
    ASSERT_TRUE(pieces == NULL);
    ASSERT_STR_CONTAINS(err, "NUL byte at byte 0");
    moa_tokenizer_free(t);
}

static void test_encode_bad_args(void) {
    moa_tokenizer *t = load_fixture();
    char err[512] = "";
    int *ids, n;
    ASSERT_EQ_INT(moa_tokenizer_encode(NULL, "a", 1, 1, &ids, &n, err, sizeof err),
                  MOA_EINVAL);
    ASSERT_EQ_INT(moa_tokenizer_encode(t, NULL, 3, 1, &ids, &n, err, sizeof err),
                  MOA_EINVAL);
    ASSERT_EQ_INT(moa_tokenizer_encode(t, "a", 1, 1, NULL, &n, err, sizeof err),
                  MOA_EINVAL);
    ASSERT_EQ_INT(moa_tokenizer_encode(t, "\x80", 1, 1, &ids, &n, NULL, 0),
                  MOA_EINVAL);  // err is optional
    moa_tokenizer_free(t);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// 1 MiB of real text encodes (SentencePiece's lattice takes ~120 MB for it);
// far more is refused before any work with MOA_ETOOLONG.
static void test_encode_1mb(void) {
    moa_tokenizer *t = load_fixture();
    size_t sample_len;
    char *sample = slurp(SAMPLE, &sample_len);
    const size_t big = (size_t)1 << 20;
    char *text = malloc(big + 1);
    ASSERT_TRUE(text != NULL);
    for (size_t i = 0; i < big; i += sample_len)
        memcpy(text + i, sample, big - i < sample_len ? big - i : sample_len);
    // Do not cut a multi-byte character at the end.
    size_t len = big;
    while (len > 0 && ((unsigned char)text[len - 1] & 0x80)) len--;

    char err[512] = "";
    int *ids, n;
    double t0 = now_s();
    int rc = moa_tokenizer_encode(t, text, len, 1, &ids, &n, err, sizeof err);
    double dt = now_s() - t0;
    if (rc != 0) MOA_TEST_FAIL("encode 1 MiB: %d %s", rc, err);
    ASSERT_TRUE(n > (int)(len / 10));
    ASSERT_EQ_INT(ids[n - 1], 2);
    for (int i = 0; i < n; i++) ASSERT_TRUE(ids[i] >= 0 && ids[i] < 1000);
    free(ids);
    if (dt > 20.0) MOA_TEST_FAIL("encoding 1 MiB took %.1f s", dt);

    // 64 MiB: refused up front (the buffer is never read, so it need not be set).
    const size_t huge = (size_t)64 << 20;
    char *h = malloc(huge);
    ASSERT_TRUE(h != NULL);
    ASSERT_EQ_INT(moa_tokenizer_encode(t, h, huge, 1, &ids, &n, err, sizeof err),
                  MOA_ETOOLONG);
    ASSERT_STR_CONTAINS(err, "limit");
    free(h);
    free(text);
    free(sample);
    moa_tokenizer_free(t);
}

static void test_encode_pieces(void) {
    moa_tokenizer *t = load_fixture();
    char err[512] = "";
    const char *s = "Setzen Sie die kleinste Magnitude f\xc3\xbcr \xe6\xbc\xa2 Asteroiden";
    char **pieces;
    int *ids, n, m;
    ASSERT_EQ_INT(moa_tokenizer_encode_pieces(t, s, strlen(s), 1, &pieces, &n, err,
                                              sizeof err), 0);
    ASSERT_EQ_INT(encode(t, s, 1, &ids, &m, err), 0);
    ASSERT_EQ_INT(n, m);
    for (int i = 0; i < n; i++) ASSERT_STR_EQ(pieces[i], moa_tokenizer_piece(t, ids[i]));
    ASSERT_STR_EQ(pieces[0], "\xe2\x96\x81Set");
    ASSERT_STR_EQ(pieces[n - 1], "</s>");
    int unk = 0;
    for (int i = 0; i < n; i++) unk += strcmp(pieces[i], "<unk>") == 0;
    ASSERT_EQ_INT(unk, 1);  // "漢"
    free(pieces);
    free(ids);

    ASSERT_EQ_INT(moa_tokenizer_encode_pieces(t, " ", 1, 0, &pieces, &n, err,
                                              sizeof err), 0);
    ASSERT_EQ_INT(n, 0);
    free(pieces);
    moa_tokenizer_free(t);
}

// --- decode --------------------------------------------------------------------

// decode(encode(x)) == x for the first 20 lines, both sides. The Python
// module gives back each of these 40 strings unchanged too (no NFKC or
// whitespace change applies to them).
static void test_round_trip(void) {
    moa_tokenizer *t = load_fixture();
    char *strs[40], *buf;
    int count = sample_strings(20, strs, 40, &buf);
    ASSERT_EQ_INT(count, 40);
    for (int i = 0; i < count; i++) {
        char err[512] = "";
        int *ids, n;
        int rc = encode(t, strs[i], 1, &ids, &n, err);
        if (rc != 0) MOA_TEST_FAIL("encode \"%s\": %s", strs[i], err);
        char *text = decode(t, ids, n);
        ASSERT_STR_EQ(text, strs[i]);
        free(text);
        free(ids);
    }
    free(buf);
    moa_tokenizer_free(t);
}

// SentencePiece normalises (NFKC, collapsed whitespace); decoding gives the
// normalised text, as the Python module's decode(encode(x)) does.
static void test_round_trip_normalises(void) {
    moa_tokenizer *t = load_fixture();
    char err[512];
    int *ids, n;
    ASSERT_EQ_INT(encode(t, "  Open \t  file...  ", 1, &ids, &n, err), 0);
    char *text = decode(t, ids, n);
    ASSERT_STR_EQ(text, "Open file...");
    free(text);
    free(ids);
    ASSERT_EQ_INT(encode(t, "\xef\xac\x81le", 1, &ids, &n, err), 0);  // "ﬁle"
    text = decode(t, ids, n);
    ASSERT_STR_EQ(text, "file");
    free(text);
    free(ids);
    moa_tokenizer_free(t);
}

static void test_decode_skips_specials(void) {
    moa_tokenizer *t = load_fixture();
    const int ids[] = {0, 634, 1, 148, 2, 209, 2, 1, 1};
    char *text = decode(t, ids, 9);
    ASSERT_STR_EQ(text, "Open file...");
    free(text);
    const int only[] = {0, 2, 1};
    text = decode(t, only, 3);
    ASSERT_STR_EQ(text, "");
    free(text);
    text = decode(t, NULL, 0);
    ASSERT_STR_EQ(text, "");
    free(text);
    moa_tokenizer_free(t);
}

static void test_decode_unk(void) {
    moa_tokenizer *t = load_fixture();
    const int unk[] = {3};
    char *text = decode(t, unk, 1);
    ASSERT_STR_EQ(text, " \xe2\x81\x87 ");  // " ⁇ "
    free(text);
    const int mid[] = {634, 3, 148, 2};
    text = decode(t, mid, 4);
    ASSERT_STR_EQ(text, "Open \xe2\x81\x87  file");  // as the Python module renders it
    free(text);
    moa_tokenizer_free(t);
}

static void test_decode_out_of_range(void) {
    moa_tokenizer *t = load_fixture();
    char err[512] = "", *text = (char *)1;
    const int big[] = {634, 1000};
    ASSERT_EQ_INT(moa_tokenizer_decode(t, big, 2, &text, err, sizeof err), MOA_EINVAL);
    ASSERT_TRUE(text == NULL);
    ASSERT_STR_CONTAINS(err, "id 1000 at position 1 is out of range");
    const int neg[] = {-1};
    ASSERT_EQ_INT(moa_tokenizer_decode(t, neg, 1, &text, err, sizeof err), MOA_EINVAL);
    ASSERT_STR_CONTAINS(err, "id -1");
    ASSERT_EQ_INT(moa_tokenizer_decode(t, neg, -1, &text, err, sizeof err), MOA_EINVAL);
    ASSERT_EQ_INT(moa_tokenizer_decode(t, NULL, 2, &text, err, sizeof err), MOA_EINVAL);
    ASSERT_EQ_INT(moa_tokenizer_decode(NULL, neg, 0, &text, err, sizeof err), MOA_EINVAL);
    ASSERT_EQ_INT(moa_tokenizer_decode(t, big, 2, NULL, err, sizeof err), MOA_EINVAL);
    moa_tokenizer_free(t);
}

// --- threads -------------------------------------------------------------------

typedef struct {
    const moa_tokenizer *t;
    char **strs;
    int count;
    int failures;
} tok_job;

static void *tok_worker(void *arg) {
    tok_job *j = arg;
    for (int rep = 0; rep < 20; rep++) {
        for (int i = 0; i < j->count; i++) {
            char err[512], *text;
            int *ids, n;
            if (encode(j->t, j->strs[i], 1, &ids, &n, err) != 0) { j->failures++; continue; }
            if (moa_tokenizer_decode(j->t, ids, n, &text, err, sizeof err) != 0) {
                j->failures++;
            } else {
                j->failures += strcmp(text, j->strs[i]) != 0;
                free(text);
            }
            free(ids);
        }
    }
    return NULL;
}

// One tokenizer shared by several threads at once (header: read-only after load).
static void test_threads(void) {
    moa_tokenizer *t = load_fixture();
    char *strs[40], *buf;
    int count = sample_strings(20, strs, 40, &buf);
    tok_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (tok_job){t, strs, count, 0};
        ASSERT_EQ_INT(pthread_create(&th[i], NULL, tok_worker, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ_INT(jobs[i].failures, 0);
    }
    free(buf);
    moa_tokenizer_free(t);
}

const moa_test_case moa_tests_tokenizer[] = {
    {"load", test_load},
    {"load_missing_dir", test_load_missing_dir},
    {"load_missing_vocab", test_load_missing_vocab},
    {"load_empty_vocab", test_load_empty_vocab},
    {"load_wrong_specials", test_load_wrong_specials},
    {"load_empty_line", test_load_empty_line},
    {"load_bad_utf8_vocab", test_load_bad_utf8_vocab},
    {"load_corrupt_model", test_load_corrupt_model},
    {"load_model_is_dir", test_load_model_is_dir},
    {"load_crlf", test_load_crlf},
    {"vocab_missing_piece", test_vocab_missing_piece},
    {"vocab_first_occurrence_wins", test_vocab_first_occurrence_wins},
    {"encode_golden", test_encode_golden},
    {"encode_eos", test_encode_eos},
    {"encode_empty_and_whitespace", test_encode_empty_and_whitespace},
    {"encode_invalid_utf8", test_encode_invalid_utf8},
    {"encode_nul_byte", test_encode_nul_byte},
    {"encode_bad_args", test_encode_bad_args},
    {"encode_1mb", test_encode_1mb},
    {"encode_pieces", test_encode_pieces},
    {"round_trip", test_round_trip},
    {"round_trip_normalises", test_round_trip_normalises},
    {"decode_skips_specials", test_decode_skips_specials},
    {"decode_unk", test_decode_unk},
    {"decode_out_of_range", test_decode_out_of_range},
    {"threads", test_threads},
    {NULL, NULL},
};
