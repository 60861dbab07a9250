// moa_tokenizer.cc — the C API of moa_tokenizer.h over libsentencepiece, or
// over Moses rules and subword-nmt merges (moa_moses.h, moa_bpe.h).
//
// SentencePiece cuts text into pieces; the model ids come from vocab.txt, not
// from SentencePiece's own ids, so a vocab.txt that differs from the
// SentencePiece model (reordered, truncated, extended) still gives the ids the
// trained model expects (spec §3, §7). A model trained with fairseq's WMT
// recipes says "tokenizer": "subword-nmt" in config.json: its text goes
// through the Moses scripts' rules for its language, then the merges of
// bpecodes, and its pieces (with "@@" on all but a word's last) through
// vocab.txt the same way.
//
// This is the only C++ in the project. Nothing C++ crosses the API: every
// entry point catches all exceptions and turns them into moa_errno codes, and
// what the caller receives is malloc'ed so that C's free() releases it.
#include "moa_tokenizer.h"

#include <cjson/cJSON.h>
#include <sentencepiece_processor.h>

#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "moa_bpe.h"
#include "moa_errors.h"
#include "moa_moses.h"
#include "moa_utf8.h"

// Ids fixed by the spec (§3): the first four lines of vocab.txt.
enum { BOS_ID = 0, PAD_ID = 1, EOS_ID = 2, UNK_ID = 3, NUM_SPECIALS = 4 };
static const char *const SPECIALS[NUM_SPECIALS] = {"<s>", "<pad>", "</s>", "<unk>"};

// SentencePiece's unigram lattice costs about 120 bytes of memory per input
// byte, so one call on a huge text could take the server's memory. A sentence
// to translate is far below this; a caller with more text splits it.
static const size_t MAX_TEXT_BYTES = (size_t)4 << 20;

// How <unk> reads in subword-nmt output: as SentencePiece renders it (spec §7).
static const char BPE_UNK_TEXT[] = "\xE2\x81\x87";   // ⁇

enum kind { KIND_SPM, KIND_BPE };

struct moa_tokenizer {
    kind k = KIND_SPM;
    sentencepiece::SentencePieceProcessor sp;        // KIND_SPM
    std::string sp_unk;                              // SentencePiece's spelling of <unk>
    moa_bpe *bpe = nullptr;                          // KIND_BPE
    bool moses = true;                               // Moses rules around the merges
    moa_moses_opts side[2] = {};                     // source, target (MOA_TOK_*)
    std::vector<std::string> vocab;                  // line i = id i
    std::unordered_map<std::string_view, int> ids;   // piece -> first line; keys view vocab
    ~moa_tokenizer() { moa_bpe_free(bpe); }
};

// --- errors ----------------------------------------------------------------

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

// --- UTF-8 -------------------------------------------------------------------

// Checks that s[0..len) is well-formed UTF-8 without NUL bytes
// (common/moa_utf8.h). Returns 0, or MOA_EINVAL with the offset of the first
// byte of the bad sequence in err.
static int check_text(const char *text, size_t len, char *err, size_t errlen) {
    size_t bad = 0;
    const char *why = "";
    if (moa_utf8_check(text, len, &bad, &why) == 0) return 0;
    if (text[bad] == 0) set_err(err, errlen, "NUL byte at byte %zu", bad);
    else set_err(err, errlen, "invalid UTF-8 at byte %zu: %s", bad, why);
    return MOA_EINVAL;
}

static bool all_ascii_space(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        switch (s[i]) {
        case ' ': case '\t': case '\n': case '\r': case '\v': case '\f': break;
        default: return false;
        }
    }
    return true;
}

// --- load --------------------------------------------------------------------

// Reads a whole file. Returns 0 or MOA_EIO with "path: reason" in err.
static int read_file(const std::string &path, std::string *out, char *err,
                     size_t errlen) {
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path.c_str(), strerror(errno));
        return MOA_EIO;
    }
    char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, got);
    int bad = ferror(f), e = errno;
    fclose(f);
    if (bad) {
        set_err(err, errlen, "%s: %s", path.c_str(), strerror(e));
        return MOA_EIO;
    }
    return 0;
}

// Parses vocab.txt: one piece a line, "\n" or "\r\n", the last newline
// optional. Every line must be a non-empty UTF-8 piece (an empty line is a
// broken file, not a piece), and lines 0-3 the specials.
static int load_vocab(moa_tokenizer *t, const std::string &path, char *err,
                      size_t errlen) {
    std::string data;
    int rc = read_file(path, &data, err, errlen);
    if (rc) return rc;
    if (data.empty()) {
        set_err(err, errlen, "%s: empty file (expected one token a line, "
                "starting <s> <pad> </s> <unk>)", path.c_str());
        return MOA_EFORMAT;
    }
    size_t pos = 0;
    while (pos < data.size()) {
        size_t end = data.find('\n', pos);
        if (end == std::string::npos) end = data.size();
        size_t stop = end;
        if (stop > pos && data[stop - 1] == '\r') stop--;
        std::string_view line(data.data() + pos, stop - pos);
        size_t lineno = t->vocab.size() + 1;
        if (lineno > (size_t)INT_MAX) {
            set_err(err, errlen, "%s: more than %d lines", path.c_str(), INT_MAX);
            return MOA_EFORMAT;
        }
        if (line.empty()) {
            set_err(err, errlen, "%s: line %zu is empty", path.c_str(), lineno);
            return MOA_EFORMAT;
        }
        char why[128];
        if (check_text(line.data(), line.size(), why, sizeof why)) {
            set_err(err, errlen, "%s: line %zu: %s", path.c_str(), lineno, why);
            return MOA_EFORMAT;
        }
        t->vocab.emplace_back(line);
        pos = end + 1;
    }
    for (int i = 0; i < NUM_SPECIALS; i++) {
        const char *got = i < (int)t->vocab.size() ? t->vocab[i].c_str() : NULL;
        if (!got || strcmp(got, SPECIALS[i]) != 0) {
            set_err(err, errlen, "%s: line %d is %s%s%s, expected \"%s\" (ids 0-3 "
                    "must be <s> <pad> </s> <unk>)", path.c_str(), i + 1,
                    got ? "\"" : "", got ? got : "missing", got ? "\"" : "",
                    SPECIALS[i]);
            return MOA_EFORMAT;
        }
    }
    // Keys view the strings in t->vocab, which no longer changes.
    t->ids.reserve(t->vocab.size());
    for (size_t i = 0; i < t->vocab.size(); i++)
        t->ids.emplace(t->vocab[i], (int)i);  // emplace keeps the first occurrence
    return 0;
}

// --- config.json: which tokenizer ---------------------------------------------------

// Reads the tokenizer keys of DIR/config.json (spec §3): "tokenizer" and,
// for subword-nmt, "moses" and the two languages. A directory without
// config.json (or without the key) is SentencePiece's. Returns 0 or a
// moa_errno code with "path: problem" in err.
static int read_config(moa_tokenizer *t, const std::string &path, char *err, size_t errlen) {
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) {
        if (errno == ENOENT) return 0;
        set_err(err, errlen, "%s: %s", path.c_str(), strerror(errno));
        return MOA_EIO;
    }
    fclose(f);
    std::string text;
    int rc = read_file(path, &text, err, errlen);
    if (rc) return rc;
    std::unique_ptr<cJSON, void (*)(cJSON *)> root(cJSON_ParseWithLength(text.data(), text.size()),
                                                   cJSON_Delete);
    if (!root || !cJSON_IsObject(root.get())) {
        set_err(err, errlen, "%s: not a JSON object", path.c_str());
        return MOA_EFORMAT;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root.get(), "tokenizer");
    if (!kind || (cJSON_IsString(kind) && strcmp(kind->valuestring, "sentencepiece") == 0))
        return 0;
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "subword-nmt") != 0) {
        char *shown = cJSON_PrintUnformatted(kind);
        set_err(err, errlen, "%s: tokenizer is %.60s; expected \"sentencepiece\" or "
                "\"subword-nmt\"", path.c_str(), shown ? shown : "?");
        cJSON_free(shown);
        return MOA_EFORMAT;
    }
    t->k = KIND_BPE;
    for (int s = 0; s < 2; s++)
        t->side[s] = moa_moses_opts{0, 1, 1, 1, 1};   // fairseq's WMT recipe
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root.get(), "moses");
    if (m && cJSON_IsFalse(m)) {
        t->moses = false;
    } else if (m && !cJSON_IsObject(m)) {
        set_err(err, errlen, "%s: moses must be an object or false", path.c_str());
        return MOA_EFORMAT;
    }
    static const char *const FLAGS[] = {"tokenize", "aggressive_dash_splits", "escape",
                                        "normalize_punctuation", "remove_non_printing"};
    for (const cJSON *it = m && cJSON_IsObject(m) ? m->child : NULL; it; it = it->next) {
        int which = -1;
        for (int i = 0; i < 5; i++)
            if (it->string && strcmp(it->string, FLAGS[i]) == 0) which = i;
        if (which < 0 || !cJSON_IsBool(it)) {
            set_err(err, errlen, "%s: moses.%s %s", path.c_str(), it->string ? it->string : "?",
                    which < 0 ? "is not a Moses option (tokenize, aggressive_dash_splits, "
                                "escape, normalize_punctuation, remove_non_printing)"
                              : "must be true or false");
            return MOA_EFORMAT;
        }
        int on = cJSON_IsTrue(it);
        for (int s = 0; s < 2; s++) {
            moa_moses_opts *o = &t->side[s];
            if (which == 0) t->moses = on;
            else if (which == 1) o->aggressive = on;
            else if (which == 2) o->escape = on;
            else if (which == 3) o->normalize = on;
            else o->remove_non_printing = on;
        }
    }
    if (!t->moses) return 0;
    static const char *const LANG_KEYS[2] = {"source_lang", "target_lang"};
    for (int s = 0; s < 2; s++) {
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(root.get(), LANG_KEYS[s]);
        const char *code = cJSON_IsString(l) ? l->valuestring : NULL;
        t->side[s].lang = moa_moses_lang(code);
        if (t->side[s].lang < 0) {
            set_err(err, errlen, "%s: %s %s%s%s: the Moses rules here are those of en and de "
                    "(\"moses\": {\"tokenize\": false} takes text that is already "
                    "tokenized)", path.c_str(), LANG_KEYS[s], code ? "\"" : "",
                    code ? code : "missing", code ? "\"" : "");
            return MOA_EFORMAT;
        }
    }
    return 0;
}

// May throw; the unique_ptr frees a half-built tokenizer on every exit.
static moa_tokenizer *load(const char *dir, char *err, size_t errlen) {
    const std::string base(dir);
    const std::string spm_path = base + "/sentencepiece.model";
    const std::string vocab_path = base + "/vocab.txt";

    std::unique_ptr<moa_tokenizer> t(new moa_tokenizer());
    if (read_config(t.get(), base + "/config.json", err, errlen)) return NULL;
    if (t->k == KIND_BPE) {
        t->bpe = moa_bpe_load((base + "/bpecodes").c_str(), err, errlen);
        if (!t->bpe || load_vocab(t.get(), vocab_path, err, errlen)) return NULL;
        return t.release();
    }
    // SentencePiece's own message for a missing file is obscure; check first.
    FILE *f = fopen(spm_path.c_str(), "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", spm_path.c_str(), strerror(errno));
        return NULL;
    }
    fclose(f);
    // Load() reports most problems in its status but throws on some read
    // errors (a directory, say); name the file either way.
    try {
        const auto st = t->sp.Load(spm_path);
        if (!st.ok()) {
            set_err(err, errlen, "%s: not a SentencePiece model (%s)",
                    spm_path.c_str(), st.ToString().c_str());
            return NULL;
        }
    } catch (const std::bad_alloc &) {
        throw;
    } catch (const std::exception &e) {
        set_err(err, errlen, "%s: cannot read: %s", spm_path.c_str(), e.what());
        return NULL;
    }
    t->sp_unk = t->sp.IdToPiece(t->sp.unk_id());
    if (load_vocab(t.get(), vocab_path, err, errlen)) return NULL;
    return t.release();
}

moa_tokenizer *moa_tokenizer_load(const char *dir, char *err, size_t errlen) {
    set_err(err, errlen, "%s", "");
    if (!dir) {
        set_err(err, errlen, "moa_tokenizer_load: dir is NULL");
        return NULL;
    }
    try {
        return load(dir, err, errlen);
    } catch (const std::bad_alloc &) {
        set_err(err, errlen, "%s: out of memory loading the tokenizer", dir);
    } catch (const std::exception &e) {
        set_err(err, errlen, "%s: cannot load the tokenizer: %s", dir, e.what());
    } catch (...) {
        set_err(err, errlen, "%s: cannot load the tokenizer", dir);
    }
    return NULL;
}

void moa_tokenizer_free(moa_tokenizer *t) {
    delete t;
}

const char *moa_tokenizer_kind(const moa_tokenizer *t) {
    return !t ? NULL : t->k == KIND_BPE ? "subword-nmt" : "sentencepiece";
}

int moa_tokenizer_vocab_size(const moa_tokenizer *t) {
    return t ? (int)t->vocab.size() : 0;
}

const char *moa_tokenizer_piece(const moa_tokenizer *t, int id) {
    if (!t || id < 0 || id >= (int)t->vocab.size()) return NULL;
    return t->vocab[id].c_str();
}

// --- encode ------------------------------------------------------------------

// Owns a malloc'ed string of the C modules.
struct c_str {
    char *p = nullptr;
    size_t n = 0;
    ~c_str() { free(p); }
};

// Moses rules (or plain whitespace), then the merges: the pieces' ids.
static int encode_bpe(const moa_tokenizer *t, int side, const char *text, size_t len,
                      std::vector<int> *out, char *err, size_t errlen) {
    c_str words, pieces;
    int rc;
    if (t->moses) {
        rc = moa_moses_tokenize(&t->side[side], text, len, &words.p, &words.n);
    } else {   // already tokenized: any ASCII whitespace separates words
        words.p = (char *)malloc(len + 1);
        rc = words.p ? 0 : MOA_ENOMEM;
        for (size_t i = 0; words.p && i < len; i++)
            words.p[i] = strchr(" \t\n\r\v\f", text[i]) ? ' ' : text[i];
        if (words.p) words.p[words.n = len] = '\0';
    }
    if (!rc) rc = moa_bpe_apply(t->bpe, words.p, words.n, &pieces.p, &pieces.n);
    if (rc == MOA_ENOMEM) throw std::bad_alloc();
    if (rc) {
        set_err(err, errlen, "cannot tokenize the text (%s)", moa_strerror(rc));
        return rc;
    }
    for (size_t i = 0; i < pieces.n;) {
        const char *sp = (const char *)memchr(pieces.p + i, ' ', pieces.n - i);
        size_t n = sp ? (size_t)(sp - (pieces.p + i)) : pieces.n - i;
        if (n) {
            auto it = t->ids.find(std::string_view(pieces.p + i, n));
            out->push_back(it == t->ids.end() ? UNK_ID : it->second);
        }
        i += n + 1;
    }
    return 0;
}

// Text -> vocab.txt ids (eos appended when add_eos). May throw.
static int encode(const moa_tokenizer *t, int side, const char *text, size_t len,
                  int add_eos, std::vector<int> *out, char *err, size_t errlen) {
    if (!t || (!text && len > 0)) {
        set_err(err, errlen, "moa_tokenizer_encode: %s is NULL", t ? "text" : "tokenizer");
        return MOA_EINVAL;
    }
    if (len > MAX_TEXT_BYTES) {
        set_err(err, errlen, "text of %zu bytes is longer than the tokenizer's "
                "limit of %zu bytes", len, MAX_TEXT_BYTES);
        return MOA_ETOOLONG;
    }
    int rc = check_text(text, len, err, errlen);
    if (rc) return rc;
    if (side != MOA_TOK_SOURCE && side != MOA_TOK_TARGET) {
        set_err(err, errlen, "moa_tokenizer_encode_side: side %d is neither source nor target",
                side);
        return MOA_EINVAL;
    }
    if (t->k == KIND_BPE) {
        if (!all_ascii_space(text, len)) rc = encode_bpe(t, side, text, len, out, err, errlen);
        if (rc) return rc;
    } else if (!all_ascii_space(text, len)) {
        std::vector<std::string> pieces;
        const auto st = t->sp.Encode(std::string_view(text, len), &pieces);
        if (!st.ok()) {
            set_err(err, errlen, "SentencePiece cannot encode the text: %s",
                    st.ToString().c_str());
            return MOA_EINVAL;
        }
        out->reserve(pieces.size() + 1);
        for (const std::string &p : pieces) {
            auto it = t->ids.find(p);
            out->push_back(it == t->ids.end() ? UNK_ID : it->second);
        }
    }
    if (add_eos) out->push_back(EOS_ID);
    return 0;
}

int moa_tokenizer_encode(const moa_tokenizer *t, const char *text, size_t len,
                         int add_eos, int **ids, int *n, char *err,
                         size_t errlen) {
    return moa_tokenizer_encode_side(t, MOA_TOK_SOURCE, text, len, add_eos, ids, n, err,
                                     errlen);
}

int moa_tokenizer_encode_side(const moa_tokenizer *t, int side, const char *text,
                              size_t len, int add_eos, int **ids, int *n, char *err,
                              size_t errlen) {
    if (!ids || !n) {
        set_err(err, errlen, "moa_tokenizer_encode: ids or n is NULL");
        return MOA_EINVAL;
    }
    *ids = NULL;
    *n = 0;
    try {
        std::vector<int> v;
        int rc = encode(t, side, text, len, add_eos, &v, err, errlen);
        if (rc) return rc;
        // Never NULL, even for zero ids, so that NULL always means failure.
        int *buf = (int *)malloc((v.size() + 1) * sizeof(int));
        if (!buf) throw std::bad_alloc();
        if (!v.empty()) memcpy(buf, v.data(), v.size() * sizeof(int));
        *ids = buf;
        *n = (int)v.size();
        return 0;
    } catch (const std::bad_alloc &) {
        set_err(err, errlen, "out of memory encoding %zu bytes of text", len);
        return MOA_ENOMEM;
    } catch (const std::exception &e) {
        set_err(err, errlen, "cannot encode the text: %s", e.what());
        return MOA_EINVAL;
    } catch (...) {
        set_err(err, errlen, "cannot encode the text");
        return MOA_EINVAL;
    }
}

int moa_tokenizer_encode_pieces(const moa_tokenizer *t, const char *text,
                                size_t len, int add_eos, char ***pieces,
                                int *n, char *err, size_t errlen) {
    if (!pieces || !n) {
        set_err(err, errlen, "moa_tokenizer_encode_pieces: pieces or n is NULL");
        return MOA_EINVAL;
    }
    *pieces = NULL;
    *n = 0;
    try {
        std::vector<int> v;
        int rc = encode(t, MOA_TOK_SOURCE, text, len, add_eos, &v, err, errlen);
        if (rc) return rc;
        // One block: n pointers, then the NUL-terminated strings.
        size_t head = (v.size() + 1) * sizeof(char *), bytes = head;
        for (int id : v) bytes += t->vocab[id].size() + 1;
        char **buf = (char **)malloc(bytes);
        if (!buf) throw std::bad_alloc();
        char *s = (char *)buf + head;
        for (size_t i = 0; i < v.size(); i++) {
            const std::string &p = t->vocab[v[i]];
            memcpy(s, p.c_str(), p.size() + 1);
            buf[i] = s;
            s += p.size() + 1;
        }
        buf[v.size()] = NULL;
        *pieces = buf;
        *n = (int)v.size();
        return 0;
    } catch (const std::bad_alloc &) {
        set_err(err, errlen, "out of memory encoding %zu bytes of text", len);
        return MOA_ENOMEM;
    } catch (const std::exception &e) {
        set_err(err, errlen, "cannot encode the text: %s", e.what());
        return MOA_EINVAL;
    } catch (...) {
        set_err(err, errlen, "cannot encode the text");
        return MOA_EINVAL;
    }
}

// --- decode ------------------------------------------------------------------

// fairseq's output of a subword-nmt model: the pieces joined by spaces, "@@ "
// removed, then the Moses detokenizer of the target language.
static int decode_bpe(const moa_tokenizer *t, const int *ids, int n, std::string *out,
                      char *err, size_t errlen) {
    std::string joined;
    for (int i = 0; i < n; i++) {
        const int id = ids[i];
        if (id < 0 || id >= (int)t->vocab.size()) {
            set_err(err, errlen, "id %d at position %d is out of range "
                    "(vocabulary of %d)", id, i, (int)t->vocab.size());
            return MOA_EINVAL;
        }
        if (id == BOS_ID || id == PAD_ID || id == EOS_ID) continue;
        joined += id == UNK_ID ? BPE_UNK_TEXT : t->vocab[id];
        joined += ' ';
    }
    std::string words;
    words.reserve(joined.size());
    for (size_t i = 0; i < joined.size(); i++) {
        if (joined.compare(i, 3, "@@ ") == 0) i += 2;
        else words += joined[i];
    }
    while (!words.empty() && words.back() == ' ') words.pop_back();
    if (!t->moses) {
        *out = words;
        return 0;
    }
    c_str text;
    int rc = moa_moses_detokenize(t->side[MOA_TOK_TARGET].lang, words.data(), words.size(),
                                  &text.p, &text.n);
    if (rc == MOA_ENOMEM) throw std::bad_alloc();
    if (rc) {
        set_err(err, errlen, "cannot detokenize the output (%s)", moa_strerror(rc));
        return rc;
    }
    out->assign(text.p, text.n);
    return 0;
}

static int decode(const moa_tokenizer *t, const int *ids, int n,
                  std::string *out, char *err, size_t errlen) {
    if (!t || n < 0 || (!ids && n > 0)) {
        set_err(err, errlen, "moa_tokenizer_decode: %s", !t ? "tokenizer is NULL"
                : n < 0 ? "negative length" : "ids is NULL");
        return MOA_EINVAL;
    }
    const int size = (int)t->vocab.size();
    if (t->k == KIND_BPE) return decode_bpe(t, ids, n, out, err, errlen);
    std::vector<std::string_view> pieces;
    pieces.reserve(n);
    for (int i = 0; i < n; i++) {
        const int id = ids[i];
        if (id < 0 || id >= size) {
            set_err(err, errlen, "id %d at position %d is out of range "
                    "(vocabulary of %d)", id, i, size);
            return MOA_EINVAL;
        }
        if (id == BOS_ID || id == PAD_ID || id == EOS_ID) continue;
        // Hand SentencePiece its own spelling of <unk> so it renders " ⁇ "
        // whatever the model calls it; every other piece goes as vocab.txt
        // spells it, and SentencePiece keeps pieces it does not know verbatim.
        pieces.push_back(id == UNK_ID ? std::string_view(t->sp_unk)
                                      : std::string_view(t->vocab[id]));
    }
    const auto st = t->sp.Decode(pieces, out);
    if (!st.ok()) {
        set_err(err, errlen, "SentencePiece cannot decode: %s", st.ToString().c_str());
        return MOA_EINVAL;
    }
    return 0;
}

int moa_tokenizer_decode(const moa_tokenizer *t, const int *ids, int n,
                         char **text, char *err, size_t errlen) {
    if (!text) {
        set_err(err, errlen, "moa_tokenizer_decode: text is NULL");
        return MOA_EINVAL;
    }
    *text = NULL;
    try {
        std::string s;
        int rc = decode(t, ids, n, &s, err, errlen);
        if (rc) return rc;
        char *buf = (char *)malloc(s.size() + 1);
        if (!buf) throw std::bad_alloc();
        memcpy(buf, s.c_str(), s.size() + 1);
        *text = buf;
        return 0;
    } catch (const std::bad_alloc &) {
        set_err(err, errlen, "out of memory decoding %d ids", n);
        return MOA_ENOMEM;
    } catch (const std::exception &e) {
        set_err(err, errlen, "cannot decode: %s", e.what());
        return MOA_EINVAL;
    } catch (...) {
        set_err(err, errlen, "cannot decode");
        return MOA_EINVAL;
    }
}
