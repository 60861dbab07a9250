// moa_text.c — lines, sentences, whitespace and HTML markup (see moa_text.h).
#include "moa_text.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>


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
    s->v[s->n++] = (moa_seg){off, len, translate};
    return 0;
}

// --- plain text: lines and their whitespace -----------------------------------------

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

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

// End (exclusive) of an entity starting at t[i] == '&', or 0 if it is none:
// &name; &#123; &#x1F;
static size_t entity_end(const char *t, size_t i, size_t end) {
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

// End of a tag starting at t[i] == '<' (quotes in attributes respected), or
// 0 when '<' does not open a tag (then it is text, as browsers read it).
static size_t tag_end(const char *t, size_t i, size_t end) {
    if (i + 1 >= end) return 0;
    char c = t[i + 1];
    if (!(isalpha((unsigned char)c) || c == '/' || c == '!' || c == '?')) return 0;
    if (end - i >= 4 && !memcmp(t + i, "<!--", 4)) {
        const char *e = memmem(t + i + 4, end - i - 4, "-->", 3);
        return e ? (size_t)(e - t) + 3 : end;
    }
    char q = 0;
    for (size_t j = i + 1; j < end; j++) {
        if (q) {
            if (t[j] == q) q = 0;
        } else if (t[j] == '"' || t[j] == '\'') {
            q = t[j];
        } else if (t[j] == '>') {
            return j + 1;
        }
    }
    return end;  // an unclosed tag: keep the rest verbatim rather than translate markup
}

// Element whose content is not text to translate.
static int raw_element(const char *t, size_t i, size_t tend, const char **name) {
    static const char *const raw[] = {"script", "style", "code", "pre", "textarea"};
    for (size_t r = 0; r < sizeof raw / sizeof raw[0]; r++) {
        size_t n = strlen(raw[r]);
        if (tend - i > n + 1 && !strncasecmp(t + i + 1, raw[r], n) &&
            !isalnum((unsigned char)t[i + 1 + n]) && t[tend - 2] != '/') {
            *name = raw[r];
            return 1;
        }
    }
    return 0;
}

static int segment_html(const char *t, size_t len, moa_segs *out) {
    size_t i = 0, run = 0;  // run: start of the current text stretch
    while (i < len) {
        size_t e = 0;
        if (t[i] == '<') e = tag_end(t, i, len);
        else if (t[i] == '&') e = entity_end(t, i, len);
        if (!e) {
            i++;
            continue;
        }
        if (segment_plain(t, run, i - run, out)) return -1;
        const char *raw;
        if (t[i] == '<' && raw_element(t, i, e, &raw)) {
            // verbatim up to and including the closing tag
            size_t n = strlen(raw), j = e;
            for (; j + n + 2 <= len; j++)
                if (t[j] == '<' && t[j + 1] == '/' && !strncasecmp(t + j + 2, raw, n)) break;
            if (j + n + 2 > len) j = len;
            else j = tag_end(t, j, len);
            e = j;
        }
        if (moa_segs_push(out, i, e - i, 0)) return -1;
        i = run = e;
    }
    return segment_plain(t, run, len - run, out);
}

int moa_text_segment(const char *text, size_t len, int html, moa_segs *out) {
    return html ? segment_html(text, len, out) : segment_plain(text, 0, len, out);
}

// --- long lines ---------------------------------------------------------------------

// Bytes of a sentence-ending mark at t[i], 0 if none.
static size_t sentence_end_mark(const char *t, size_t i, size_t end) {
    unsigned char c = (unsigned char)t[i];
    if (c == '.' || c == '!' || c == '?') return 1;
    static const char *const marks[] = {"\xE2\x80\xA6", "\xE3\x80\x82", "\xEF\xBC\x81",
                                        "\xEF\xBC\x9F"};  // … 。 ！ ？
    for (int m = 0; m < 4; m++)
        if (end - i >= 3 && !memcmp(t + i, marks[m], 3)) return 3;
    return 0;
}

static int is_closer(char c) {
    return c == '"' || c == '\'' || c == ')' || c == ']' || c == '}';
}

// Halves [a, b) until each piece fits; pieces are separated by the
// whitespace they were cut at (verbatim).
static int split_halves(const char *t, size_t a, size_t b, moa_fits_fn fits,
                        void *ctx, moa_segs *out, int depth) {
    if (b <= a) return 0;
    if (depth > 40 || fits(ctx, t + a, b - a)) return moa_segs_push(out, a, b - a, 1);
    size_t mid = a + (b - a) / 2, cut = 0, best = (size_t)-1;
    for (size_t j = a + 1; j + 1 < b; j++)
        if (is_ws(t[j])) {
            size_t d = j > mid ? j - mid : mid - j;
            if (d < best) best = d, cut = j;
        }
    size_t l_end, r_start;
    if (cut) {
        l_end = cut;
        while (l_end > a && is_ws(t[l_end - 1])) l_end--;
        r_start = cut;
        while (r_start < b && is_ws(t[r_start])) r_start++;
    } else {
        // no whitespace: cut at a UTF-8 character boundary
        size_t m = mid;
        while (m > a && ((unsigned char)t[m] & 0xC0) == 0x80) m--;
        if (m == a) return moa_segs_push(out, a, b - a, 1);
        l_end = r_start = m;
    }
    if (split_halves(t, a, l_end, fits, ctx, out, depth + 1)) return -1;
    if (moa_segs_push(out, l_end, r_start - l_end, 0)) return -1;
    return split_halves(t, r_start, b, fits, ctx, out, depth + 1);
}

int moa_text_split_long(const char *t, size_t off, size_t len, moa_fits_fn fits,
                        void *ctx, moa_segs *out) {
    if (fits(ctx, t + off, len)) return moa_segs_push(out, off, len, 1);
    size_t end = off + len, start = off, i = off;
    while (i < end) {
        size_t m = sentence_end_mark(t, i, end);
        if (!m) {
            i++;
            continue;
        }
        size_t j = i + m;
        while (j < end) {  // runs of marks ("?!", "...") and closing quotes
            size_t m2 = sentence_end_mark(t, j, end);
            if (m2) j += m2;
            else if (is_closer(t[j])) j++;
            else break;
        }
        if (j < end && is_ws(t[j])) {
            size_t k = j;
            while (k < end && is_ws(t[k])) k++;
            if (split_halves(t, start, j, fits, ctx, out, 0)) return -1;
            if (moa_segs_push(out, j, k - j, 0)) return -1;
            start = i = k;
        } else {
            i = j;
        }
    }
    return split_halves(t, start, end, fits, ctx, out, 0);
}
