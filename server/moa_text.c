// moa_text.c — lines, sentences, whitespace and HTML markup (see moa_text.h).
#include "moa_text.h"

#include <ctype.h>
#include <locale.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wctype.h>

#include "moa_utf8.h"


// --- segments ---------------------------------------------------------------------

void moa_segs_free(moa_segs *s) {
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

int moa_segs_push(moa_segs *s, size_t off, size_t len, int translate) {
    if (len == 0) return 0;
    if (!translate && s->n > 0) {
        moa_seg *last = &s->v[s->n - 1];
        if (!last->translate && last->off + last->len == off) {
            last->len += len;
            return 0;
        }
    }
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 16;
        moa_seg *v = realloc(s->v, (size_t)nc * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = nc;
    }
    s->v[s->n++] = (moa_seg){off, len, translate, 0};
    return 0;
}

// --- characters -------------------------------------------------------------------

uint32_t moa_text_cp(const char *t, size_t i, size_t end, int *n) {
    const unsigned char *s = (const unsigned char *)t + i;
    int l = moa_utf8_len(t + i, end - i);
    if (l <= 0) {
        *n = 1;
        return 0xFFFD;
    }
    *n = l;
    if (l == 1) return s[0];
    if (l == 2) return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    if (l == 3) return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
           (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

// Letter classes for every script from glibc's built-in C.UTF-8 tables
// (glibc >= 2.35 has them without locale files), read through a locale
// object of our own: the process locale stays "C".
static locale_t utf8_loc;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;
static void utf8_init(void) { utf8_loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0); }

int moa_text_cp_alpha(uint32_t c) {
    if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    pthread_once(&utf8_once, utf8_init);
    if (utf8_loc) return iswalpha_l((wint_t)c, utf8_loc) != 0;
    return c >= 0xC0 && c != 0xD7 && c != 0xF7;  // no C.UTF-8: anything past Latin-1 letters
}

int moa_text_cp_lower(uint32_t c) {
    if (c < 0x80) return c >= 'a' && c <= 'z';
    pthread_once(&utf8_once, utf8_init);
    if (utf8_loc) return iswlower_l((wint_t)c, utf8_loc) != 0;
    return c >= 0xDF && c <= 0xFF && c != 0xF7;
}

uint32_t moa_text_cp_tolower(uint32_t c) {
    if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
    pthread_once(&utf8_once, utf8_init);
    if (utf8_loc) return (uint32_t)towlower_l((wint_t)c, utf8_loc);
    return c >= 0xC0 && c <= 0xDE && c != 0xD7 ? c + 32 : c;
}

// --- plain text: lines and their whitespace -----------------------------------------

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

int moa_text_is_ws(char c) { return is_ws(c) || c == '\n'; }

// One stretch of plain text: every line's leading/trailing whitespace and
// the line breaks stay verbatim, the rest of each line is a unit.
static int segment_plain(const char *t, size_t off, size_t len, moa_segs *out) {
    size_t end = off + len, i = off;
    while (i < end) {
        size_t nl = i;
        while (nl < end && t[nl] != '\n') nl++;
        size_t a = i, b = nl;
        while (a < b && is_ws(t[a])) a++;
        while (b > a && is_ws(t[b - 1])) b--;
        if (moa_segs_push(out, i, a - i, 0) || moa_segs_push(out, a, b - a, 1) ||
            moa_segs_push(out, b, nl - b, 0))
            return -1;
        if (nl < end && moa_segs_push(out, nl, 1, 0)) return -1;
        i = nl + 1;
    }
    return 0;
}

// --- HTML -------------------------------------------------------------------------

size_t moa_html_entity_end(const char *t, size_t i, size_t end) {
    size_t j = i + 1;
    if (j < end && t[j] == '#') {
        j++;
        int hex = j < end && (t[j] == 'x' || t[j] == 'X');
        if (hex) j++;
        size_t d0 = j;
        while (j < end && (hex ? isxdigit((unsigned char)t[j]) : isdigit((unsigned char)t[j])))
            j++;
        if (j == d0 || j - d0 > 8) return 0;
    } else {
        size_t d0 = j;
        while (j < end && isalnum((unsigned char)t[j])) j++;
        if (j == d0 || j - d0 > 32 || !isalpha((unsigned char)t[d0])) return 0;
    }
    return j < end && t[j] == ';' ? j + 1 : 0;
}

size_t moa_html_tag_end(const char *t, size_t i, size_t end) {
    if (i + 1 >= end) return 0;
    char c = t[i + 1];
    if (!(isalpha((unsigned char)c) || c == '/' || c == '!' || c == '?')) return 0;
    if (c == '/' && !(i + 2 < end && isalpha((unsigned char)t[i + 2]))) return 0;
    if (end - i >= 4 && !memcmp(t + i, "<!--", 4)) {
        const char *e = memmem(t + i + 4, end - i - 4, "-->", 3);
        return e ? (size_t)(e - t) + 3 : end;
    }
    if (end - i >= 9 && !memcmp(t + i, "<![CDATA[", 9)) {
        const char *e = memmem(t + i + 9, end - i - 9, "]]>", 3);
        return e ? (size_t)(e - t) + 3 : end;
    }
    char q = 0;
    for (size_t j = i + 1; j < end; j++) {
        if (q) {
            if (t[j] == q) q = 0;
        } else if (t[j] == '"' || t[j] == '\'') {
            // a quote opens a value only after '=' (an apostrophe in a stray
            // attribute-less word does not swallow the rest of the text)
            size_t k = j;
            while (k > i + 1 && is_ws(t[k - 1])) k--;
            if (t[k - 1] == '=') q = t[j];
        } else if (t[j] == '>') {
            return j + 1;
        } else if (t[j] == '<') {
            return 0;  // "a <b c" then "<d>": the first '<' was text
        }
    }
    return end;  // an unclosed tag: keep the rest verbatim rather than translate markup
}

int moa_html_tag_kind(const char *t, size_t i, size_t e, char *name, size_t cap) {
    if (cap) name[0] = 0;
    if (t[i + 1] == '!' || t[i + 1] == '?')
        return e - i >= 4 && !memcmp(t + i, "<!--", 4) ? MOA_TAG_COMMENT : MOA_TAG_DECL;
    int close = t[i + 1] == '/';
    size_t j = i + 1 + (size_t)close, n = 0;
    while (j < e && (isalnum((unsigned char)t[j]) || t[j] == '-' || t[j] == ':' || t[j] == '_' ||
                     t[j] == '.')) {
        if (n + 1 < cap) name[n++] = (char)tolower((unsigned char)t[j]);
        j++;
    }
    if (cap) name[n < cap ? n : cap - 1] = 0;
    if (close) return MOA_TAG_CLOSE;
    if (e >= i + 2 && t[e - 1] == '>' && t[e - 2] == '/') return MOA_TAG_EMPTY;
    return cap && moa_html_is_void(name) ? MOA_TAG_EMPTY : MOA_TAG_OPEN;
}

static int in_names(const char *name, const char *const *list, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (!strcmp(name, list[k])) return 1;
    return 0;
}

int moa_html_is_block(const char *name) {
    static const char *const b[] = {
        "address", "article", "aside", "audio", "base", "blockquote", "body", "br", "canvas",
        "caption", "center", "col", "colgroup", "dd", "details", "dialog", "dir", "div", "dl",
        "dt", "embed", "fieldset", "figcaption", "figure", "footer", "form", "frame",
        "frameset", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header", "hgroup", "hr",
        "html", "iframe", "legend", "li", "link", "main", "menu", "meta", "nav", "noscript",
        "object", "ol", "optgroup", "option", "p", "para", "qt", "section", "select", "source",
        "summary", "table", "tbody", "td", "template", "tfoot", "th", "thead", "title", "tr",
        "track", "ul", "video",
    };
    return in_names(name, b, sizeof b / sizeof b[0]);
}

int moa_html_is_opaque(const char *name) {
    static const char *const o[] = {"script", "style", "pre", "textarea", "svg", "math", "code"};
    return in_names(name, o, sizeof o / sizeof o[0]);
}

int moa_html_is_void(const char *name) {
    static const char *const v[] = {"area", "base", "br", "col", "embed", "hr", "img", "input",
                                    "link", "meta", "param", "source", "track", "wbr"};
    return in_names(name, v, sizeof v / sizeof v[0]);
}

size_t moa_html_opaque_end(const char *t, size_t e, size_t end, const char *name) {
    size_t n = strlen(name);
    for (size_t j = e; j + n + 2 <= end; j++)
        if (t[j] == '<' && t[j + 1] == '/' && !strncasecmp(t + j + 2, name, n) &&
            (j + n + 2 == end || !isalnum((unsigned char)t[j + n + 2]))) {
            size_t te = moa_html_tag_end(t, j, end);
            return te ? te : end;
        }
    return end;
}

int moa_html_attr_values(const char *t, size_t i, size_t e, moa_seg *v, int max) {
    int n = 0;
    size_t j = i + 1;
    while (j < e && !is_ws(t[j]) && t[j] != '\n' && t[j] != '>' && t[j] != '/') j++;  // the name
    while (j < e && n < max) {
        while (j < e && (moa_text_is_ws(t[j]) || t[j] == '/')) j++;
        size_t a0 = j;
        while (j < e && !moa_text_is_ws(t[j]) && t[j] != '=' && t[j] != '>' && t[j] != '/') j++;
        size_t a1 = j;
        if (a1 == a0) break;
        size_t k = j;
        while (k < e && moa_text_is_ws(t[k])) k++;
        if (k >= e || t[k] != '=') continue;  // an attribute without a value
        k++;
        while (k < e && moa_text_is_ws(t[k])) k++;
        size_t v0, v1;
        char q = ' ';
        if (k < e && (t[k] == '"' || t[k] == '\'')) {
            q = t[k];
            v0 = k + 1;
            v1 = v0;
            while (v1 < e && t[v1] != q) v1++;
            j = v1 < e ? v1 + 1 : e;
        } else {
            v0 = v1 = k;
            while (v1 < e && !moa_text_is_ws(t[v1]) && t[v1] != '>') v1++;
            j = v1;
        }
        size_t an = a1 - a0;
        if (((an == 5 && !strncasecmp(t + a0, "title", 5)) ||
             (an == 3 && !strncasecmp(t + a0, "alt", 3))) && v1 > v0) {
            v[n].off = v0;
            v[n].len = v1 - v0;
            v[n].translate = 1;
            v[n].attr = q;
            n++;
        }
    }
    return n;
}

// A verbatim tag, with its title/alt values as translatable segments.
static int push_tag(const char *t, size_t i, size_t e, moa_segs *out) {
    moa_seg av[4];
    int na = moa_html_attr_values(t, i, e, av, 4);
    size_t at = i;
    for (int k = 0; k < na; k++) {
        if (moa_segs_push(out, at, av[k].off - at, 0) ||
            moa_segs_push(out, av[k].off, av[k].len, 1))
            return -1;
        out->v[out->n - 1].attr = av[k].attr;
        at = av[k].off + av[k].len;
    }
    return moa_segs_push(out, at, e - at, 0);
}

// The text of a block, inline markup included, as one translatable
// segment (whitespace-only: verbatim).
static int push_run(const char *t, size_t a, size_t b, moa_segs *out) {
    size_t k = a;
    while (k < b && moa_text_is_ws(t[k])) k++;
    return moa_segs_push(out, a, b - a, k < b);
}

static int segment_html(const char *t, size_t len, moa_segs *out) {
    size_t i = 0, run = 0;  // run: start of the current block text
    while (i < len) {
        size_t e = t[i] == '<' ? moa_html_tag_end(t, i, len) : 0;
        if (!e) {
            i++;
            continue;
        }
        char name[16];
        int kind = moa_html_tag_kind(t, i, e, name, sizeof name);
        if (kind == MOA_TAG_OPEN && moa_html_is_opaque(name)) {
            size_t ce = moa_html_opaque_end(t, e, len, name);
            if (!strcmp(name, "code")) {  // inline: one protected item of the sentence
                i = ce;
                continue;
            }
            if (push_run(t, run, i, out) || push_tag(t, i, e, out) ||
                moa_segs_push(out, e, ce - e, 0))
                return -1;
            i = run = ce;
            continue;
        }
        if (kind == MOA_TAG_DECL || ((kind == MOA_TAG_OPEN || kind == MOA_TAG_CLOSE ||
                                      kind == MOA_TAG_EMPTY) && moa_html_is_block(name))) {
            if (push_run(t, run, i, out) || push_tag(t, i, e, out)) return -1;
            i = run = e;
            continue;
        }
        i = e;  // inline tag or comment: part of the sentence
    }
    return push_run(t, run, len, out);
}

int moa_text_segment(const char *text, size_t len, int html, moa_segs *out) {
    return html ? segment_html(text, len, out) : segment_plain(text, 0, len, out);
}
