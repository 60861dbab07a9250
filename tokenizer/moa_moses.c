// moa_moses.c — Moses tokenisation rules on arrays of code points (moa_moses.h).
//
// Each rule of the Perl scripts is one pass over the text that builds a new
// array, with the semantics of Perl's s///g: the leftmost match wins, the
// next match starts where the last one ended (what it consumed cannot start
// another), and lookaheads consume nothing. Those details decide outputs such
// as "1 2 3" -> "1,2 3", so each pass spells out what its pattern consumes.
#include "moa_moses.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moa_unitab.h"
#include "moa_utf8.h"

// --- code point buffers -------------------------------------------------------

typedef struct ubuf {
    uint32_t *v;
    size_t n, cap;
    int oom;        // an append failed: the buffer is incomplete
} ubuf;

static void ub_reserve(ubuf *b, size_t extra) {
    if (b->oom || b->n + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) cap *= 2;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) {
        b->oom = 1;
        return;
    }
    b->v = v;
    b->cap = cap;
}

static void ub_put(ubuf *b, uint32_t c) {
    ub_reserve(b, 1);
    if (!b->oom) b->v[b->n++] = c;
}

static void ub_putn(ubuf *b, const uint32_t *s, size_t n) {
    if (n == 0) return;   // s may be NULL then (an empty buffer)
    ub_reserve(b, n);
    if (b->oom) return;
    memcpy(b->v + b->n, s, n * sizeof *s);
    b->n += n;
}

// Appends ASCII text.
static void ub_puts(ubuf *b, const char *s) {
    while (*s) ub_put(b, (unsigned char)*s++);
}

static void ub_free(ubuf *b) {
    free(b->v);
    memset(b, 0, sizeof *b);
}

// UTF-8 (well-formed, checked by the caller) -> code points, appended.
static void ub_put_utf8(ubuf *b, const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    ub_reserve(b, len);
    for (size_t i = 0; i < len && !b->oom;) {
        uint32_t c = p[i];
        int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (n == 2) c &= 0x1F;
        else if (n == 3) c &= 0x0F;
        else if (n == 4) c &= 0x07;
        for (int k = 1; k < n && i + k < len; k++) c = (c << 6) | (p[i + k] & 0x3F);
        b->v[b->n++] = c;
        i += (size_t)n;
    }
}

// Code points -> malloc'ed UTF-8 with a NUL. Returns 0 or MOA_ENOMEM.
static int to_utf8(const ubuf *b, char **out, size_t *out_len) {
    char *s = malloc(b->n * 4 + 1);
    if (!s) return MOA_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < b->n; i++) {
        uint32_t c = b->v[i];
        if (c < 0x80) {
            s[o++] = (char)c;
        } else if (c < 0x800) {
            s[o++] = (char)(0xC0 | (c >> 6));
            s[o++] = (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            s[o++] = (char)(0xE0 | (c >> 12));
            s[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
            s[o++] = (char)(0x80 | (c & 0x3F));
        } else {
            s[o++] = (char)(0xF0 | (c >> 18));
            s[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
            s[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
            s[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    s[o] = '\0';
    *out = s;
    if (out_len) *out_len = o;
    return 0;
}

// One pass: reads s[0..n), appends the result to out.
typedef void (*pass_fn)(const uint32_t *s, size_t n, ubuf *out, const void *arg);

// Replaces *cur with f's output. Returns 0 or MOA_ENOMEM.
static int run(ubuf *cur, pass_fn f, const void *arg) {
    ubuf out = {0};
    ub_reserve(&out, cur->n + cur->n / 4 + 16);
    f(cur->v, cur->n, &out, arg);
    if (out.oom) {
        ub_free(&out);
        return MOA_ENOMEM;
    }
    ub_free(cur);
    *cur = out;
    return 0;
}

// --- character classes --------------------------------------------------------

static int is_alpha(uint32_t c) { return (moa_unitab_class(c) & MOA_UNI_ALPHA) != 0; }
static int is_alnum(uint32_t c) {
    return (moa_unitab_class(c) & (MOA_UNI_ALPHA | MOA_UNI_DIGIT)) != 0;
}
static int is_num(uint32_t c) { return (moa_unitab_class(c) & MOA_UNI_NUM) != 0; }
static int is_lower(uint32_t c) { return (moa_unitab_class(c) & MOA_UNI_LOWER) != 0; }
static int is_currency(uint32_t c) { return (moa_unitab_class(c) & MOA_UNI_SC) != 0; }
static int is_uspace(uint32_t c) { return (moa_unitab_class(c) & MOA_UNI_SPACE) != 0; }
static int is_other(uint32_t c) { return (moa_unitab_class(c) & MOA_UNI_OTHER) != 0; }
static int is_adigit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_aletter(uint32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
// \s of normalize-punctuation.perl, which reads bytes: ASCII whitespace only.
static int is_aspace(uint32_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static int in_set(uint32_t c, const char *ascii) {
    return c != 0 && c < 0x80 && strchr(ascii, (int)c) != NULL;
}

// --- generic passes -----------------------------------------------------------

typedef struct lit {
    const char *from, *to;  // UTF-8
} lit;

// s/FROM/TO/g for a literal FROM.
static void pass_replace(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    const lit *l = arg;
    ubuf from = {0}, to = {0};
    ub_put_utf8(&from, l->from, strlen(l->from));
    ub_put_utf8(&to, l->to, strlen(l->to));
    if (from.oom || to.oom || from.n == 0) {
        out->oom = 1;
        goto done;
    }
    for (size_t i = 0; i < n;) {
        if (i + from.n <= n && memcmp(s + i, from.v, from.n * sizeof *s) == 0) {
            ub_putn(out, to.v, to.n);
            i += from.n;
        } else {
            ub_put(out, s[i++]);
        }
    }
done:
    ub_free(&from);
    ub_free(&to);
}

// s/ +/ /g
static void pass_squeeze(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == ' ' && i > 0 && s[i - 1] == ' ')) ub_put(out, s[i]);
}

// s/ +/ /g; s/^ //; s/ $//
static void pass_trim(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    size_t b = 0, e = n;
    while (b < e && s[b] == ' ') b++;
    while (e > b && s[e - 1] == ' ') e--;
    pass_squeeze(s + b, e - b, out, NULL);
}

static int replace(ubuf *b, const char *from, const char *to) {
    lit l = {from, to};
    return run(b, pass_replace, &l);
}

// --- normalize-punctuation.perl -----------------------------------------------

// s/\) ([\.\!\:\?\;\,])/\)$1/g
static void pass_paren_punct(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        if (s[i] == ')' && i + 2 < n && s[i + 1] == ' ' && in_set(s[i + 2], ".!:?;,")) {
            ub_put(out, ')');
            ub_put(out, s[i + 2]);
            i += 3;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// s/(\d) \%/$1\%/g
static void pass_digit_percent(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        if (is_adigit(s[i]) && i + 2 < n && s[i + 1] == ' ' && s[i + 2] == '%') {
            ub_put(out, s[i]);
            ub_put(out, '%');
            i += 3;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// s/([a-z])Q([a-z])/$1\'$2/gi for the quote mark Q in arg.
static void pass_letter_quote_letter(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    uint32_t q = *(const uint32_t *)arg;
    for (size_t i = 0; i < n;) {
        if (is_aletter(s[i]) && i + 2 < n && s[i + 1] == q && is_aletter(s[i + 2])) {
            ub_put(out, s[i]);
            ub_put(out, '\'');
            ub_put(out, s[i + 2]);
            i += 3;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// English: s/\"([,\.]+)/$1\"/g
static void pass_quote_after_punct(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (s[i] == '"' && j < n && (s[j] == ',' || s[j] == '.')) j++;
        if (s[i] == '"' && j > i + 1) {
            ub_putn(out, s + i + 1, j - i - 1);
            ub_put(out, '"');
            i = j;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// German: s/(\.+)\"(\s*[^<])/\"$1$2/g. After the quote \s* is greedy and
// [^<] takes one more character; when that one is '<' (or the text ends),
// \s* gives its last space back to [^<]. So the quote moves when anything
// but '<' follows it, and the match ends after the spaces and one character.
static void pass_quote_before_dots(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        if (s[i] != '.') {
            ub_put(out, s[i++]);
            continue;
        }
        size_t q = i;
        while (q < n && s[q] == '.') q++;
        size_t end = 0;
        if (q < n && s[q] == '"') {
            size_t w = q + 1;
            while (w < n && is_aspace(s[w])) w++;
            if (w < n && s[w] != '<') end = w + 1;
            else if (w > q + 1) end = w;
        }
        if (!end) {  // no match at any dot of this run: the same character follows them all
            ub_putn(out, s + i, q - i);
            i = q;
            continue;
        }
        ub_put(out, '"');
        ub_putn(out, s + i, q - i);
        ub_putn(out, s + q + 1, end - q - 1);
        i = end;
    }
}

// s/(\d) (\d)/$1.$2/g (English) or $1,$2 (German).
static void pass_digit_groups(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    uint32_t sep = *(const uint32_t *)arg;
    for (size_t i = 0; i < n;) {
        if (is_adigit(s[i]) && i + 2 < n && s[i + 1] == ' ' && is_adigit(s[i + 2])) {
            ub_put(out, s[i]);
            ub_put(out, sep);
            ub_put(out, s[i + 2]);
            i += 3;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

static int normalize(ubuf *b, int lang) {
    // The script reads lines with their newline, which the German quote rule
    // can see; give it one, and take it away at the end.
    ub_put(b, '\n');
    if (b->oom) return MOA_ENOMEM;
    static const lit early[] = {
        {"\r", ""}, {"(", " ("}, {")", ") "}, {NULL, NULL},
    };
    int rc = 0;
    for (const lit *l = early; l->from && !rc; l++) rc = run(b, pass_replace, l);
    if (rc || (rc = run(b, pass_squeeze, NULL)) || (rc = run(b, pass_paren_punct, NULL)) ||
        (rc = replace(b, "( ", "(")) || (rc = replace(b, " )", ")")) ||
        (rc = run(b, pass_digit_percent, NULL)))
        return rc;
    static const lit quotes[] = {
        {" :", ":"}, {" ;", ";"}, {"`", "'"}, {"''", " \" "},
        {"\xE2\x80\x9E", "\""},   // „
        {"\xE2\x80\x9C", "\""},   // “
        {"\xE2\x80\x9D", "\""},   // ”
        {"\xE2\x80\x93", "-"},    // – en dash
        {"\xE2\x80\x94", " - "},  // — em dash
        {NULL, NULL},
    };
    for (const lit *l = quotes; l->from && !rc; l++) rc = run(b, pass_replace, l);
    if (rc || (rc = run(b, pass_squeeze, NULL)) || (rc = replace(b, "\xC2\xB4", "'")))
        return rc;
    static const uint32_t lsquo = 0x2018, rsquo = 0x2019;
    if ((rc = run(b, pass_letter_quote_letter, &lsquo)) ||
        (rc = run(b, pass_letter_quote_letter, &rsquo)))
        return rc;
    static const lit more[] = {
        {"\xE2\x80\x98", "\""},       // ‘
        {"\xE2\x80\x9A", "\""},       // ‚
        {"\xE2\x80\x99", "\""},       // ’
        {"''", "\""},
        {"\xC2\xB4\xC2\xB4", "\""},   // ´´
        {"\xE2\x80\xA6", "..."},      // …
        // French quotes
        {" \xC2\xAB ", " \""}, {"\xC2\xAB ", "\""}, {"\xC2\xAB", "\""},
        {" \xC2\xBB ", "\" "}, {" \xC2\xBB", "\""}, {"\xC2\xBB", "\""},
        // no-break spaces (U+00A0) around punctuation and units
        {"\xC2\xA0%", "%"}, {"n\xC2\xBA\xC2\xA0", "n\xC2\xBA "}, {"\xC2\xA0:", ":"},
        {"\xC2\xA0\xC2\xBA" "C", " \xC2\xBA" "C"}, {"\xC2\xA0" "cm", " cm"},
        {"\xC2\xA0?", "?"}, {"\xC2\xA0!", "!"}, {"\xC2\xA0;", ";"}, {",\xC2\xA0", ", "},
        {NULL, NULL},
    };
    for (const lit *l = more; l->from && !rc; l++) rc = run(b, pass_replace, l);
    if (rc || (rc = run(b, pass_squeeze, NULL))) return rc;
    if (lang == MOA_MOSES_EN) {
        rc = run(b, pass_quote_after_punct, NULL);
    } else {
        if (!(rc = replace(b, ",\"", "\","))) rc = run(b, pass_quote_before_dots, NULL);
    }
    static const uint32_t point = '.', comma = ',';
    if (rc || (rc = run(b, pass_digit_groups, lang == MOA_MOSES_EN ? &point : &comma)))
        return rc;
    if (b->n && b->v[b->n - 1] == '\n') b->n--;
    return 0;
}

// --- remove-non-printing-char.perl --------------------------------------------

static void pass_nonprinting(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n; i++) ub_put(out, is_other(s[i]) ? ' ' : s[i]);
}

// --- non-breaking prefixes ----------------------------------------------------

// Words that a period does not end a sentence after (tokenizer.perl's
// nonbreaking_prefix.LANG): 1 always, 2 only before a number. Single letters,
// Roman numerals and German ordinals are tested by rule, not listed.
typedef struct prefix {
    const char *word;
    int kind;
} prefix;

static const char *const TITLES[] = {
    "Adj", "Adm", "Adv", "Asst", "Bart", "Bldg", "Brig", "Bros", "Capt", "Cmdr", "Col",
    "Comdr", "Con", "Corp", "Cpl", "DR", "Dr", "Ens", "Gen", "Gov", "Hon", "Hosp", "Insp",
    "Lt", "MM", "MR", "MRS", "MS", "Maj", "Messrs", "Mlle", "Mme", "Mr", "Mrs", "Ms", "Msgr",
    "Op", "Ord", "Pfc", "Ph", "Prof", "Pvt", "Rep", "Reps", "Res", "Rev", "Rt", "Sen", "Sens",
    "Sfc", "Sgt", "Sr", "St", "Supt", "Surg", NULL,
};

static const prefix EN_PREFIXES[] = {
    {"Drs", 1}, {"Hr", 1},
    {"v", 1}, {"vs", 1}, {"i.e", 1}, {"rev", 1}, {"e.g", 1}, {"Rs", 1},
    {"No", 2}, {"Nos", 1}, {"Art", 2}, {"Nr", 1}, {"pp", 2},
    {"Jan", 1}, {"Feb", 1}, {"Mar", 1}, {"Apr", 1}, {"Jun", 1}, {"Jul", 1}, {"Aug", 1},
    {"Sep", 1}, {"Oct", 1}, {"Nov", 1}, {"Dec", 1},
    {NULL, 0},
};

static const prefix DE_PREFIXES[] = {
    {"Mio", 1}, {"Mrd", 1}, {"bzw", 1}, {"v", 1}, {"vs", 1}, {"usw", 1}, {"d.h", 1},
    {"z.B", 1}, {"u.a", 1}, {"etc", 1}, {"MwSt", 1}, {"ggf", 1}, {"d.J", 1}, {"D.h", 1},
    {"m.E", 1}, {"vgl", 1}, {"I.F", 1}, {"z.T", 1}, {"sogen", 1}, {"ff", 1}, {"u.E", 1},
    {"g.U", 1}, {"g.g.A", 1}, {"c.-\xC3\xA0-d", 1}, {"Buchst", 1}, {"u.s.w", 1}, {"sog", 1},
    {"u.\xC3\xA4", 1}, {"Std", 1}, {"evtl", 1}, {"Zt", 1}, {"Chr", 1}, {"u.U", 1},
    {"o.\xC3\xA4", 1}, {"Ltd", 1}, {"b.A", 1}, {"z.Zt", 1}, {"spp", 1}, {"sen", 1},
    {"SA", 1}, {"k.o", 1}, {"jun", 1}, {"i.H.v", 1}, {"dgl", 1}, {"dergl", 1}, {"Co", 1},
    {"zzt", 1}, {"usf", 1}, {"s.p.a", 1}, {"Dkr", 1}, {"bzgl", 1}, {"BSE", 1},
    {"No", 1}, {"Nos", 1}, {"Art", 1}, {"Nr", 1}, {"pp", 1}, {"ca", 1}, {"Ca", 1},
    {NULL, 0},
};

// I..XX in upper or lower case (the German list's Roman numerals).
static int is_roman_1_20(const char *w) {
    static const char *const R[] = {
        "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII",
        "XIV", "XV", "XVI", "XVII", "XVIII", "XIX", "XX", NULL,
    };
    char up[8];
    size_t n = strlen(w);
    if (n == 0 || n >= sizeof up) return 0;
    int lower = w[0] >= 'a';
    for (size_t i = 0; i < n; i++) {
        char c = w[i];
        if (lower ? !(c >= 'a' && c <= 'z') : !(c >= 'A' && c <= 'Z')) return 0;
        up[i] = lower ? (char)(c - 32) : c;
    }
    up[n] = '\0';
    for (int i = 0; R[i]; i++)
        if (strcmp(up, R[i]) == 0) return 1;
    return 0;
}

// The kind of word w (UTF-8) as a non-breaking prefix: 0, 1 or 2.
static int prefix_kind(int lang, const char *w) {
    size_t n = strlen(w);
    if (n == 1 && w[0] >= 'A' && w[0] <= 'Z') return 1;
    for (int i = 0; TITLES[i]; i++)
        if (strcmp(w, TITLES[i]) == 0) return 1;
    const prefix *list = lang == MOA_MOSES_EN ? EN_PREFIXES : DE_PREFIXES;
    for (int i = 0; list[i].word; i++)
        if (strcmp(w, list[i].word) == 0) return list[i].kind;
    if (lang == MOA_MOSES_DE) {
        if (n == 1 && w[0] >= 'a' && w[0] <= 'z') return 1;
        if (is_roman_1_20(w)) return 1;
        // ordinals 1..99 as written, without a leading zero
        if ((n == 1 && w[0] >= '1' && w[0] <= '9') ||
            (n == 2 && w[0] >= '1' && w[0] <= '9' && w[1] >= '0' && w[1] <= '9'))
            return 1;
    }
    return 0;
}

// --- tokenizer.perl -----------------------------------------------------------

// s/\s+/ /g, then s/[\000-\037]//g
static void pass_spaces_controls(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    ubuf tmp = {0};
    for (size_t i = 0; i < n; i++) {
        if (is_uspace(s[i])) {
            if (!(tmp.n && tmp.v[tmp.n - 1] == ' ' && i > 0 && is_uspace(s[i - 1])))
                ub_put(&tmp, ' ');
        } else {
            ub_put(&tmp, s[i]);
        }
    }
    for (size_t i = 0; i < tmp.n; i++)
        if (tmp.v[i] > 037) ub_put(out, tmp.v[i]);
    if (tmp.oom) out->oom = 1;
    ub_free(&tmp);
}

// s/([^\p{IsAlnum}\s\.\'\`\,\-])/ $1 /g
static void pass_split_symbols(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (is_alnum(c) || is_uspace(c) || in_set(c, ".'`,-")) {
            ub_put(out, c);
        } else {
            ub_put(out, ' ');
            ub_put(out, c);
            ub_put(out, ' ');
        }
    }
}

// -a: s/([\p{IsAlnum}])\-(?=[\p{IsAlnum}])/$1 \@-\@ /g. The lookahead leaves
// the next letter free to start the next match, so every hyphen between two
// alphanumerics splits.
static void pass_aggressive(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '-' && i > 0 && i + 1 < n && is_alnum(s[i - 1]) && is_alnum(s[i + 1]))
            ub_puts(out, " @-@ ");
        else
            ub_put(out, s[i]);
    }
}

// A run of two or more periods stands alone: the script swaps it for a
// DOTMULTI placeholder with a space before it and one after it (when
// something follows), which keeps the run out of the rules below, and
// restores it at the end. Here the run keeps its periods, gets the same
// spaces, and the word rule skips words that are only periods.
static void pass_multidots(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && s[j] == '.') j++;
        if (j - i >= 2) {
            ub_put(out, ' ');
            ub_putn(out, s + i, j - i);
            if (j < n) ub_put(out, ' ');
            i = j;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// s/([^\p{IsN}])[,]/$1 , /g
static void pass_comma_after(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        if (i + 1 < n && s[i + 1] == ',' && !is_num(s[i])) {
            ub_put(out, s[i]);
            ub_puts(out, " , ");
            i += 2;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// s/[,]([^\p{IsN}])/ , $1/g
static void pass_comma_before(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n;) {
        if (s[i] == ',' && i + 1 < n && !is_num(s[i + 1])) {
            ub_puts(out, " , ");
            ub_put(out, s[i + 1]);
            i += 2;
        } else {
            ub_put(out, s[i++]);
        }
    }
}

// s/([\p{IsN}])[,]$/$1 ,/g
static void pass_comma_final(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    if (n >= 2 && s[n - 1] == ',' && is_num(s[n - 2])) {
        ub_putn(out, s, n - 1);
        ub_puts(out, " ,");
    } else {
        ub_putn(out, s, n);
    }
}

// The English apostrophe rules, in order; each matches X ' Y and consumes
// all three.
enum { APOS_NA_NA, APOS_NAN_A, APOS_A_NA, APOS_A_A, APOS_N_S };

static void pass_apostrophe_en(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    int rule = *(const int *)arg;
    for (size_t i = 0; i < n;) {
        int hit = 0;
        if (i + 2 < n && s[i + 1] == '\'') {
            uint32_t a = s[i], b = s[i + 2];
            switch (rule) {
            case APOS_NA_NA: hit = !is_alpha(a) && !is_alpha(b); break;
            case APOS_NAN_A: hit = !is_alpha(a) && !is_num(a) && is_alpha(b); break;
            case APOS_A_NA: hit = is_alpha(a) && !is_alpha(b); break;
            case APOS_A_A: hit = is_alpha(a) && is_alpha(b); break;
            case APOS_N_S: hit = is_num(a) && b == 's'; break;
            }
        }
        if (!hit) {
            ub_put(out, s[i++]);
            continue;
        }
        ub_put(out, s[i]);
        // "X ' Y", except that a contraction keeps its apostrophe: "X 'Y"
        ub_puts(out, rule == APOS_A_A || rule == APOS_N_S ? " '" : " ' ");
        ub_put(out, s[i + 2]);
        i += 3;
    }
}

// Appends w[0..n) as UTF-8 to buf (cap bytes, NUL-terminated); 0 when it
// does not fit.
static int word_utf8(const uint32_t *w, size_t n, char *buf, size_t cap) {
    ubuf tmp = {(uint32_t *)w, n, n, 0};
    char *s;
    size_t len;
    if (n > cap / 4 || to_utf8(&tmp, &s, &len) != 0) return 0;
    memcpy(buf, s, len + 1);
    free(s);
    return 1;
}

typedef struct span {
    size_t b, e;
} span;

// The word rule: a word "PRE." keeps its period unless it ends the text, or
// PRE is not an abbreviation (a non-breaking prefix, or letters with
// periods inside) and the next word does not start with a lowercase letter
// (or a digit after a prefix of kind 2).
static void pass_words(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    int lang = *(const int *)arg;
    // split(/\s/): fields between single spaces; trailing empty fields dropped
    size_t nw = 0, cap = 16;
    span *w = malloc(cap * sizeof *w);
    if (!w) {
        out->oom = 1;
        return;
    }
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ' ') continue;
        if (nw == cap) {
            span *nwp = realloc(w, 2 * cap * sizeof *w);
            if (!nwp) {
                free(w);
                out->oom = 1;
                return;
            }
            w = nwp;
            cap *= 2;
        }
        w[nw++] = (span){start, i};
        start = i + 1;
    }
    while (nw > 0 && w[nw - 1].b == w[nw - 1].e) nw--;
    for (size_t k = 0; k < nw; k++) {
        const uint32_t *p = s + w[k].b;
        size_t len = w[k].e - w[k].b;
        int split = 0;
        size_t dots = 0;
        while (dots < len && p[dots] == '.') dots++;
        if (len >= 2 && p[len - 1] == '.' && dots < len) {
            const uint32_t *pre = p;
            size_t plen = len - 1;
            int has_dot = 0, has_alpha = 0;
            for (size_t i = 0; i < plen; i++) {
                has_dot |= pre[i] == '.';
                has_alpha |= is_alpha(pre[i]);
            }
            char word[256];
            int kind = word_utf8(pre, plen, word, sizeof word) ? prefix_kind(lang, word) : 0;
            const uint32_t *next = k + 1 < nw ? s + w[k + 1].b : NULL;
            size_t next_len = k + 1 < nw ? w[k + 1].e - w[k + 1].b : 0;
            if (k + 1 == nw) split = 1;
            else if ((has_dot && has_alpha) || kind == 1 || (next_len && is_lower(next[0])))
                split = 0;
            else if (kind == 2 && next_len && is_adigit(next[0]))
                split = 0;
            else
                split = 1;
        }
        if (split) {
            ub_putn(out, p, len - 1);
            ub_puts(out, " .");
        } else {
            ub_putn(out, p, len);
        }
        ub_put(out, ' ');
    }
    free(w);
}

// s/\.\' ?$/ . ' /
static void pass_final_period_quote(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    size_t end = n;
    if (end && s[end - 1] == ' ') end--;
    if (end >= 2 && s[end - 1] == '\'' && s[end - 2] == '.') {
        ub_putn(out, s, end - 2);
        ub_puts(out, " . ' ");
    } else {
        ub_putn(out, s, n);
    }
}

static void pass_escape(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': ub_puts(out, "&amp;"); break;
        case '|': ub_puts(out, "&#124;"); break;
        case '<': ub_puts(out, "&lt;"); break;
        case '>': ub_puts(out, "&gt;"); break;
        case '\'': ub_puts(out, "&apos;"); break;
        case '"': ub_puts(out, "&quot;"); break;
        case '[': ub_puts(out, "&#91;"); break;
        case ']': ub_puts(out, "&#93;"); break;
        default: ub_put(out, s[i]);
        }
    }
}

static int tokenize(ubuf *b, const moa_moses_opts *o) {
    int rc = 0;
    if (o->normalize && (rc = normalize(b, o->lang))) return rc;
    if (o->remove_non_printing && (rc = run(b, pass_nonprinting, NULL))) return rc;
    if ((rc = run(b, pass_spaces_controls, NULL)) || (rc = run(b, pass_trim, NULL)) ||
        (rc = run(b, pass_split_symbols, NULL)))
        return rc;
    if (o->aggressive && (rc = run(b, pass_aggressive, NULL))) return rc;
    if ((rc = run(b, pass_multidots, NULL)) || (rc = run(b, pass_comma_after, NULL)) ||
        (rc = run(b, pass_comma_before, NULL)) || (rc = run(b, pass_comma_final, NULL)))
        return rc;
    if (o->lang == MOA_MOSES_EN) {
        for (int r = APOS_NA_NA; r <= APOS_N_S && !rc; r++) rc = run(b, pass_apostrophe_en, &r);
    } else {
        rc = replace(b, "'", " ' ");
    }
    if (rc || (rc = run(b, pass_words, &o->lang)) || (rc = run(b, pass_trim, NULL)) ||
        (rc = run(b, pass_final_period_quote, NULL)))
        return rc;
    if (o->escape && (rc = run(b, pass_escape, NULL))) return rc;
    return run(b, pass_trim, NULL);  // the script's output may end in a space
}

// --- detokenizer.perl ---------------------------------------------------------

static int is_cjk(uint32_t c) {
    return (c >= 0x1100 && c <= 0x11FF) || (c >= 0x2E80 && c <= 0xA4CF) ||
           (c >= 0xA840 && c <= 0xA87F) || (c >= 0xAC00 && c <= 0xD7AF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFE30 && c <= 0xFE4F) ||
           (c >= 0xFF65 && c <= 0xFFDC) || (c >= 0x20000 && c <= 0x2FFFF);
}

static int all_of(const uint32_t *w, size_t n, int (*ok)(uint32_t)) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (!ok(w[i])) return 0;
    return 1;
}

static int opens(uint32_t c) {  // currency, ( [ { ¿ ¡: glued to the next word
    return is_currency(c) || in_set(c, "([{") || c == 0xBF || c == 0xA1;
}
static int closes(uint32_t c) { return in_set(c, ",.?!:;\\%}])"); }
static int quote_char(uint32_t c) {
    return in_set(c, "'\"`") || c == 0x201E || c == 0x201C;   // „ “
}
static int double_quote_char(uint32_t c) {
    return c == 0x201E || c == 0x201C || c == 0x201D;   // „ “ ”
}

// Open/close counts of each quote word ("'", "\"", "``", ...).
typedef struct qcount {
    const uint32_t *w;
    size_t n;
    int count;
} qcount;

static void pass_detok(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    int lang = *(const int *)arg;
    // split(/ /): fields between single spaces, trailing empty fields dropped
    size_t nw = 0;
    for (size_t i = 0; i <= n; i++)
        if (i == n || s[i] == ' ') nw++;
    span *w = malloc(nw * sizeof *w);
    qcount *q = malloc(nw * sizeof *q);
    if (!w || !q) {
        out->oom = 1;
        goto done;
    }
    nw = 0;
    for (size_t i = 0, start = 0; i <= n; i++) {
        if (i < n && s[i] != ' ') continue;
        w[nw++] = (span){start, i};
        start = i + 1;
    }
    while (nw > 0 && w[nw - 1].b == w[nw - 1].e) nw--;
    size_t nq = 0;
    const char *prepend = " ";
    for (size_t k = 0; k < nw; k++) {
        const uint32_t *p = s + w[k].b, *prev = k ? s + w[k - 1].b : NULL;
        size_t len = w[k].e - w[k].b, prev_len = k ? w[k - 1].e - w[k - 1].b : 0;
        if (len && is_cjk(p[0])) {
            if (!(prev_len && is_cjk(prev[prev_len - 1]))) ub_puts(out, prepend);
            ub_putn(out, p, len);
            prepend = " ";
        } else if (all_of(p, len, opens)) {
            ub_puts(out, prepend);
            ub_putn(out, p, len);
            prepend = "";
        } else if (all_of(p, len, closes)) {
            ub_putn(out, p, len);
            prepend = " ";
        } else if (lang == MOA_MOSES_EN && k > 0 && len >= 2 && p[0] == '\'' &&
                   is_alpha(p[1]) && prev_len && is_alnum(prev[prev_len - 1])) {
            ub_putn(out, p, len);  // a contraction: "don" "'t"
            prepend = " ";
        } else if (all_of(p, len, quote_char)) {
            static const uint32_t dq = '"';
            const uint32_t *key = all_of(p, len, double_quote_char) ? &dq : p;
            size_t key_len = key == &dq ? 1 : len;
            size_t j = 0;
            while (j < nq && !(q[j].n == key_len && memcmp(q[j].w, key, key_len * 4) == 0)) j++;
            if (j == nq) q[nq++] = (qcount){key, key_len, 0};
            if (q[j].count % 2 == 0) {
                if (lang == MOA_MOSES_EN && len == 1 && p[0] == '\'' && prev_len &&
                    prev[prev_len - 1] == 's') {
                    ub_putn(out, p, len);   // "the Jones' house"
                    prepend = " ";
                } else {
                    ub_puts(out, prepend);  // an opening quote
                    ub_putn(out, p, len);
                    prepend = "";
                    q[j].count++;
                }
            } else {
                ub_putn(out, p, len);       // a closing quote
                prepend = " ";
                q[j].count++;
            }
        } else {
            ub_puts(out, prepend);
            ub_putn(out, p, len);
            prepend = " ";
        }
    }
done:
    free(w);
    free(q);
}

// s/ +/ /g; s/\n /\n/g; s/ \n/\n/g; s/^ //g; s/ $//g
static void pass_detok_spaces(const uint32_t *s, size_t n, ubuf *out, const void *arg) {
    (void)arg;
    ubuf a = {0};
    pass_squeeze(s, n, &a, NULL);
    for (size_t i = 0; i < a.n; i++) {
        if (a.v[i] == ' ' && ((i > 0 && a.v[i - 1] == '\n') || (i + 1 < a.n && a.v[i + 1] == '\n')))
            continue;
        if (a.v[i] == ' ' && (i == 0 || i + 1 == a.n)) continue;
        ub_put(out, a.v[i]);
    }
    if (a.oom) out->oom = 1;
    ub_free(&a);
}

static int detokenize(ubuf *b, int lang) {
    int rc = 0;
    ubuf t = {0};
    ub_put(&t, ' ');
    ub_putn(&t, b->v, b->n);
    ub_put(&t, ' ');
    if (t.oom) {
        ub_free(&t);
        return MOA_ENOMEM;
    }
    ub_free(b);
    *b = t;
    static const lit unescape[] = {
        {" @-@ ", "-"}, {"&bar;", "|"}, {"&#124;", "|"}, {"&lt;", "<"}, {"&gt;", ">"},
        {"&bra;", "["}, {"&ket;", "]"}, {"&quot;", "\""}, {"&apos;", "'"}, {"&#91;", "["},
        {"&#93;", "]"}, {"&amp;", "&"}, {NULL, NULL},
    };
    for (const lit *l = unescape; l->from && !rc; l++) rc = run(b, pass_replace, l);
    if (rc || (rc = run(b, pass_detok, &lang))) return rc;
    return run(b, pass_detok_spaces, NULL);
}

// --- API ------------------------------------------------------------------------

int moa_moses_lang(const char *code) {
    if (!code) return -1;
    char l[3] = {0};
    for (int i = 0; i < 2 && code[i]; i++) l[i] = (char)(code[i] | 0x20);
    if (code[0] == '\0' || code[1] == '\0') return -1;
    if (code[2] != '\0' && code[2] != '-' && code[2] != '_') return -1;
    if (strcmp(l, "en") == 0) return MOA_MOSES_EN;
    if (strcmp(l, "de") == 0) return MOA_MOSES_DE;
    return -1;
}

typedef int (*job_fn)(ubuf *b, const void *arg);

static int job(const char *text, size_t len, job_fn f, const void *arg, char **out,
               size_t *out_len) {
    if (!out) return MOA_EINVAL;
    *out = NULL;
    if (out_len) *out_len = 0;
    if ((!text && len) || moa_utf8_check(text ? text : "", len, NULL, NULL) != 0)
        return MOA_EINVAL;
    ubuf b = {0};
    ub_reserve(&b, len + 16);   // never NULL, even for empty text: passes offset into it
    ub_put_utf8(&b, text, len);
    int rc = b.oom ? MOA_ENOMEM : f(&b, arg);
    if (!rc) rc = to_utf8(&b, out, out_len);
    ub_free(&b);
    return rc;
}

static int job_tokenize(ubuf *b, const void *arg) { return tokenize(b, arg); }
static int job_detokenize(ubuf *b, const void *arg) { return detokenize(b, *(const int *)arg); }
static int job_normalize(ubuf *b, const void *arg) { return normalize(b, *(const int *)arg); }
static int job_nonprinting(ubuf *b, const void *arg) {
    (void)arg;
    return run(b, pass_nonprinting, NULL);
}

static int lang_ok(int lang) { return lang == MOA_MOSES_EN || lang == MOA_MOSES_DE; }

int moa_moses_tokenize(const moa_moses_opts *o, const char *text, size_t len, char **out,
                       size_t *out_len) {
    if (!o || !lang_ok(o->lang)) return MOA_EINVAL;
    return job(text, len, job_tokenize, o, out, out_len);
}

int moa_moses_detokenize(int lang, const char *text, size_t len, char **out,
                         size_t *out_len) {
    if (!lang_ok(lang)) return MOA_EINVAL;
    return job(text, len, job_detokenize, &lang, out, out_len);
}

int moa_moses_normalize(int lang, const char *text, size_t len, char **out, size_t *out_len) {
    if (!lang_ok(lang)) return MOA_EINVAL;
    return job(text, len, job_normalize, &lang, out, out_len);
}

int moa_moses_remove_non_printing(const char *text, size_t len, char **out, size_t *out_len) {
    return job(text, len, job_nonprinting, NULL, out, out_len);
}
