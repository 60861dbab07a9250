// moa_split.c — sentences and over-long pieces (see moa_split.h).
#include "moa_split.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

// --- characters ------------------------------------------------------------------

static int is_ws(char c) { return moa_text_is_ws(c); }

// . ! ? … and the CJK/full-width marks; *cjk set for the latter.
static size_t mark_len(const char *t, size_t i, size_t end, int *cjk) {
    unsigned char c = (unsigned char)t[i];
    *cjk = 0;
    if (c == '.' || c == '!' || c == '?') return 1;
    if (end - i < 3) return 0;
    if (!memcmp(t + i, "\xE2\x80\xA6", 3)) return 3;  // …
    static const char *const cjk_marks[] = {"\xE3\x80\x82", "\xEF\xBC\x81", "\xEF\xBC\x9F",
                                            "\xEF\xBC\x8E"};  // 。！？．
    for (int m = 0; m < 4; m++)
        if (!memcmp(t + i, cjk_marks[m], 3)) {
            *cjk = 1;
            return 3;
        }
    return 0;
}

static size_t match_any(const char *t, size_t i, size_t end, const char *const *set, int n) {
    for (int k = 0; k < n; k++) {
        size_t l = strlen(set[k]);
        if (end - i >= l && !memcmp(t + i, set[k], l)) return l;
    }
    return 0;
}

// Closing quotes and brackets after a sentence mark.
static size_t closer_len(const char *t, size_t i, size_t end) {
    static const char *const set[] = {"\"", "'", ")", "]", "}", "\xE2\x80\x9D", "\xE2\x80\x99",
                                      "\xC2\xBB", "\xE2\x80\xBA", "\xE3\x80\x8D", "\xE3\x80\x8F",
                                      "\xEF\xBC\x89", "\xE3\x80\x91"};
    return match_any(t, i, end, set, (int)(sizeof set / sizeof set[0]));
}

// Opening quotes and brackets (and Spanish ¿ ¡) that may start a sentence.
static size_t opener_len(const char *t, size_t i, size_t end) {
    static const char *const set[] = {"\"", "'", "(", "[", "\xE2\x80\x9C", "\xE2\x80\x98",
                                      "\xE2\x80\x9E", "\xC2\xAB", "\xE2\x80\xB9", "\xC2\xBF",
                                      "\xC2\xA1", "\xE3\x80\x8C", "\xE3\x80\x8E", "\xEF\xBC\x88"};
    return match_any(t, i, end, set, (int)(sizeof set / sizeof set[0]));
}

// --- kept spans --------------------------------------------------------------------

// Index of the kept span holding byte pos, or -1 (spans sorted by offset).
static int span_at(const moa_span *k, int n, size_t pos) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (pos < k[mid].off) hi = mid - 1;
        else if (pos >= k[mid].off + k[mid].len) lo = mid + 1;
        else return mid;
    }
    return -1;
}

// --- sentence ends -----------------------------------------------------------------

// Abbreviations a period does not end (compared without case). The second
// list only before a number ("No. 5", "Fig. 3", "p. 12").
static const char *const abbrev_always[] = {
    "e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr",
    "cf", "approx", "ca", "incl", "esp", "viz", "al", "resp", "dept", "eg", "ie",
};
static const char *const abbrev_number[] = {
    "no", "nr", "nos", "vol", "fig", "figs", "pp", "ch", "sec", "art", "ver", "op", "ed", "pt",
};

static int in_list(const char *w, size_t n, const char *const *list, size_t count) {
    for (size_t k = 0; k < count; k++)
        if (strlen(list[k]) == n && !strncasecmp(w, list[k], n)) return 1;
    return 0;
}

// "U.S", "a.m", "e.g": single letters joined by dots.
static int dotted_letters(const char *w, size_t n) {
    if (n < 3) return 0;
    for (size_t i = 0; i < n; i++) {
        int letter = ((unsigned char)w[i] | 0x20) >= 'a' && ((unsigned char)w[i] | 0x20) <= 'z';
        if (i % 2 == 0 ? !letter : w[i] != '.') return 0;
    }
    return n % 2 == 1;
}

// Whether the word before the period at t[i] makes it no sentence end.
static int period_is_abbrev(const char *t, size_t start, size_t i, int next_is_digit) {
    size_t a = i;
    while (a > start && !is_ws(t[a - 1])) a--;
    // an opening bracket or quote is not part of the word: "(e.g."
    while (a < i) {
        size_t o = opener_len(t, a, i);
        if (!o) break;
        a += o;
    }
    const char *w = t + a;
    size_t n = i - a;
    if (n == 0) return 0;
    if (in_list(w, n, abbrev_always, sizeof abbrev_always / sizeof abbrev_always[0])) return 1;
    if (next_is_digit &&
        in_list(w, n, abbrev_number, sizeof abbrev_number / sizeof abbrev_number[0]))
        return 1;
    if (dotted_letters(w, n)) return 1;
    int l;
    uint32_t c = moa_text_cp(t, a, i, &l);
    return (size_t)l == n && moa_text_cp_alpha(c);  // an initial: "J. Smith"
}

// A letter, or a kept span (a placeholder), somewhere in [a, b).
static int holds_word(const char *t, size_t a, size_t b, const moa_span *keep, int nk) {
    for (size_t i = a; i < b;) {
        if (span_at(keep, nk, i) >= 0) return 1;
        int l;
        if (moa_text_cp_alpha(moa_text_cp(t, i, b, &l))) return 1;
        i += (size_t)l;
    }
    return 0;
}

// May a sentence start at t[k]?
static int opens_sentence(const char *t, size_t k, size_t end, const moa_span *keep, int nk) {
    if (span_at(keep, nk, k) >= 0) return 1;
    if (opener_len(t, k, end)) return 1;
    int l;
    uint32_t c = moa_text_cp(t, k, end, &l);
    if (c >= '0' && c <= '9') return 1;
    return moa_text_cp_alpha(c) && !moa_text_cp_lower(c);
}

size_t moa_split_sentence_end(const char *t, size_t start, size_t i, size_t end,
                              const moa_span *keep, int nk) {
    int cjk, cjk2;
    size_t m = mark_len(t, i, end, &cjk);
    if (!m) return 0;
    int lone_period = t[i] == '.';
    size_t j = i + m;
    while (j < end && span_at(keep, nk, j) < 0) {  // "?!", "...", closing quotes
        size_t m2 = mark_len(t, j, end, &cjk2), c;
        if (m2) {
            j += m2;
            cjk |= cjk2;
            lone_period = 0;
        } else if ((c = closer_len(t, j, end))) {
            j += c;
        } else {
            break;
        }
    }
    if (j >= end) return 0;  // the end of the range is a sentence end anyway
    if (cjk) return holds_word(t, start, i, keep, nk) ? j : 0;
    // the cheap tests first: holds_word walks back to the sentence's start
    if (!is_ws(t[j])) return 0;
    size_t k = j;
    while (k < end && is_ws(t[k])) k++;
    if (k >= end || !opens_sentence(t, k, end, keep, nk)) return 0;
    if (lone_period && period_is_abbrev(t, start, i, t[k] >= '0' && t[k] <= '9')) return 0;
    return holds_word(t, start, i, keep, nk) ? j : 0;
}

// --- cutting -----------------------------------------------------------------------

// Halves [a, b) until each piece fits; pieces are separated by the
// whitespace they were cut at (verbatim). Never cuts inside a kept span.
static int split_halves(const char *t, size_t a, size_t b, const moa_span *keep, int nk,
                        moa_fits_fn fits, void *ctx, moa_segs *out, int depth) {
    if (b <= a) return 0;
    if (depth > 40 || !fits || fits(ctx, t + a, b - a)) return moa_segs_push(out, a, b - a, 1);
    size_t mid = a + (b - a) / 2, cut = 0, best = (size_t)-1;
    for (size_t j = a + 1; j + 1 < b; j++)
        if (is_ws(t[j]) && span_at(keep, nk, j) < 0) {
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
        // no whitespace: cut at a character boundary outside kept spans
        size_t m = mid;
        int s = span_at(keep, nk, m);
        if (s >= 0) m = keep[s].off;
        // (a stray continuation byte right after a span must not walk into it)
        while (m > a && ((unsigned char)t[m] & 0xC0) == 0x80 && span_at(keep, nk, m - 1) < 0)
            m--;
        if (m == a) {
            m = s >= 0 ? keep[s].off + keep[s].len : mid;
            while (m < b && ((unsigned char)t[m] & 0xC0) == 0x80) m++;
            if (m >= b) return moa_segs_push(out, a, b - a, 1);
        }
        l_end = r_start = m;
    }
    if (split_halves(t, a, l_end, keep, nk, fits, ctx, out, depth + 1)) return -1;
    if (moa_segs_push(out, l_end, r_start - l_end, 0)) return -1;
    return split_halves(t, r_start, b, keep, nk, fits, ctx, out, depth + 1);
}

// An end of trimmed text moved out of the kept span it falls inside: a
// span's own whitespace is not trimmed (an unclosed tag runs to the end of
// the text, trailing blanks included, and must not be cut).
static size_t past_span(const moa_span *keep, int nk, size_t e) {
    for (int s = 0; s < nk; s++)
        if (e > keep[s].off && e < keep[s].off + keep[s].len) return keep[s].off + keep[s].len;
    return e;
}

// A sentence [a, b): whole when it fits, else halved.
static int push_sentence(const char *t, size_t a, size_t b, const moa_span *keep, int nk,
                         moa_fits_fn fits, void *ctx, moa_segs *out) {
    while (a < b && is_ws(t[a])) a++;
    size_t e = b;
    while (e > a && is_ws(t[e - 1])) e--;
    e = past_span(keep, nk, e);
    if (e <= a) return moa_segs_push(out, a, b - a, 0);
    return split_halves(t, a, e, keep, nk, fits, ctx, out, 0) || moa_segs_push(out, e, b - e, 0);
}

int moa_split(const char *t, size_t off, size_t len, const moa_span *keep, int nk,
              int sentences, moa_fits_fn fits, void *ctx, moa_segs *out) {
    size_t a = off, b = off + len;
    while (a < b && is_ws(t[a])) a++;
    while (b > a && is_ws(t[b - 1])) b--;
    b = past_span(keep, nk, b);
    if (moa_segs_push(out, off, a - off, 0)) return -1;
    if (b > a && !sentences && (!fits || fits(ctx, t + a, b - a))) {
        if (moa_segs_push(out, a, b - a, 1)) return -1;
        return moa_segs_push(out, b, off + len - b, 0);
    }
    size_t start = a, i = a;
    while (i < b) {
        int s = span_at(keep, nk, i);
        if (s >= 0) {
            size_t se = keep[s].off + keep[s].len;
            if (se > b) se = b;
            if (keep[s].brk) {
                // a break tag: the sentence before ends here, the tag and the
                // whitespace around it stay verbatim
                size_t k = se;
                while (k < b && is_ws(t[k])) k++;
                if (push_sentence(t, start, keep[s].off, keep, nk, fits, ctx, out) ||
                    moa_segs_push(out, keep[s].off, k - keep[s].off, 0))
                    return -1;
                start = i = k;
            } else {
                i = se;
            }
            continue;
        }
        size_t j = moa_split_sentence_end(t, start, i, b, keep, nk);
        if (j) {
            size_t k = j;
            while (k < b && is_ws(t[k])) k++;
            if (push_sentence(t, start, j, keep, nk, fits, ctx, out) ||
                moa_segs_push(out, j, k - j, 0))
                return -1;
            start = i = k;
            continue;
        }
        int l;
        moa_text_cp(t, i, b, &l);
        i += (size_t)l;
    }
    if (push_sentence(t, start, b, keep, nk, fits, ctx, out)) return -1;
    return moa_segs_push(out, b, off + len - b, 0);
}
