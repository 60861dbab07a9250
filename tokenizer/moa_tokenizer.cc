// moa_tokenizer.cc — the C API of moa_tokenizer.h over libsentencepiece.
//
// SentencePiece cuts text into pieces; the model ids come from vocab.txt, not
// from SentencePiece's own ids, so a vocab.txt that differs from the
// SentencePiece model (reordered, truncated, extended) still gives the ids the
// trained model expects (spec §3, §7).
//
// This is the only C++ in the project. Nothing C++ crosses the API: every
// entry point catches all exceptions and turns them into moa_errno codes, and
// what the caller receives is malloc'ed so that C's free() releases it.
#include "moa_tokenizer.h"

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

#include "moa_errors.h"
#include "moa_utf8.h"

// Ids fixed by the spec (§3): the first four lines of vocab.txt.
enum { BOS_ID = 0, PAD_ID = 1, EOS_ID = 2, UNK_ID = 3, NUM_SPECIALS = 4 };
static const char *const SPECIALS[NUM_SPECIALS] = {"<s>", "<pad>", "</s>", "<unk>"};

// SentencePiece's unigram lattice costs about 120 bytes of memory per input
// byte, so one call on a huge text could take the server's memory. A sentence
// to translate is far below this; a caller with more text splits it.
static const size_t MAX_TEXT_BYTES = (size_t)4 << 20;

struct moa_tokenizer {
    sentencepiece::SentencePieceProcessor sp;
    std::vector<std::string> vocab;                  // line i = id i
    std::unordered_map<std::string_view, int> ids;   // piece -> first line; keys view vocab
    std::string sp_unk;                              // SentencePiece's spelling of <unk>
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

// May throw; the unique_ptr frees a half-built tokenizer on every exit.
static moa_tokenizer *load(const char *dir, char *err, size_t errlen) {
    const std::string base(dir);
    const std::string spm_path = base + "/sentencepiece.model";
    const std::string vocab_path = base + "/vocab.txt";

    std::unique_ptr<moa_tokenizer> t(new moa_tokenizer());
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

int moa_tokenizer_vocab_size(const moa_tokenizer *t) {
    return t ? (int)t->vocab.size() : 0;
}

const char *moa_tokenizer_piece(const moa_tokenizer *t, int id) {
    if (!t || id < 0 || id >= (int)t->vocab.size()) return NULL;
    return t->vocab[id].c_str();
}

// --- encode ------------------------------------------------------------------

// Text -> vocab.txt ids (eos appended when add_eos). May throw.
static int encode(const moa_tokenizer *t, const char *text, size_t len,
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
    if (!all_ascii_space(text, len)) {
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
    if (!ids || !n) {
        set_err(err, errlen, "moa_tokenizer_encode: ids or n is NULL");
        return MOA_EINVAL;
    }
    *ids = NULL;
    *n = 0;
    try {
        std::vector<int> v;
        int rc = encode(t, text, len, add_eos, &v, err, errlen);
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
        int rc = encode(t, text, len, add_eos, &v, err, errlen);
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

static int decode(const moa_tokenizer *t, const int *ids, int n,
                  std::string *out, char *err, size_t errlen) {
    if (!t || n < 0 || (!ids && n > 0)) {
        set_err(err, errlen, "moa_tokenizer_decode: %s", !t ? "tokenizer is NULL"
                : n < 0 ? "negative length" : "ids is NULL");
        return MOA_EINVAL;
    }
    const int size = (int)t->vocab.size();
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
