// moa_protect.c — placeholders and markup out of the model's reach, and back
// into its translation (see moa_protect.h).
#include "moa_protect.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

// --- items ------------------------------------------------------------------------

static int push_ph(moa_phs *p, size_t off, size_t len, int kind) {
    if (p->n == p->cap) {
        int nc = p->cap ? 2 * p->cap : 16;
        moa_ph *v = realloc(p->v, (size_t)nc * sizeof *v);
        if (!v) return -1;
        p->v = v;
        p->cap = nc;
    }
    moa_ph *h = &p->v[p->n++];
    memset(h, 0, sizeof *h);
    h->off = off;
    h->len = len;
    h->kind = kind;
    return 0;
}

void moa_phs_free(moa_phs *p) {
    free(p->v);
    memset(p, 0, sizeof *p);
    p->accel = SIZE_MAX;
}

int moa_phs_spans(const moa_phs *p, moa_span **spans) {
    *spans = NULL;
    if (p->n == 0) return 0;
    moa_span *s = malloc((size_t)p->n * sizeof *s);
    if (!s) return -1;
    for (int i = 0; i < p->n; i++) s[i] = (moa_span){p->v[i].off, p->v[i].len, p->v[i].brk};
    *spans = s;
    return p->n;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

// What touches an item on one side: 0 whitespace or nothing, 1 a letter or
// digit, 2 any other character (a quote, a bracket, a colon).
static int char_class(uint32_t cp) {
    if (cp == 0 || cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return 0;
    return (cp >= '0' && cp <= '9') || moa_text_cp_alpha(cp) ? 1 : 2;
}

static int class_before(const char *t, size_t lo, size_t i) {
    if (i <= lo) return 0;
    size_t k = i - 1;
    while (k > lo && ((unsigned char)t[k] & 0xC0) == 0x80) k--;
    int l;
    return char_class(moa_text_cp(t, k, i, &l));
}

static int class_at(const char *t, size_t i, size_t end) {
    int l;
    return i < end ? char_class(moa_text_cp(t, i, end, &l)) : 0;
}

static size_t digits(const char *t, size_t j, size_t end) {
    while (j < end && is_digit(t[j])) j++;
    return j;
}

// A printf-family item at t[i] == '%' (the alternatives of evaluate.py's
// pattern, in its order): its end, or 0; *kind set.
static size_t printf_end(const char *t, size_t i, size_t end, int *kind) {
    size_t j = i + 1;
    if (j >= end) return 0;
    if (t[j] == '%') {
        *kind = MOA_PH_PERCENT;
        return j + 1;
    }
    if (t[j] == '(') {  // %(name)s
        size_t k = j + 1;
        while (k < end && t[k] != ')' && t[k] != '(' && !moa_text_is_ws(t[k])) k++;
        if (k > j + 1 && k < end && t[k] == ')') {
            k++;
            while (k < end && strchr("-+0#", t[k])) k++;
            k = digits(t, k, end);
            if (k + 1 < end && t[k] == '.' && is_digit(t[k + 1])) k = digits(t, k + 1, end);
            if (k < end && strchr("diouxXeEfFgGcrsa", t[k])) {
                *kind = MOA_PH_PYFMT;
                return k + 1;
            }
        }
        return 0;
    }
    // % [n$] [flags] [width] [.precision] [length] conversion
    size_t k = j, d = digits(t, j, end);
    int pos = 0;
    if (d > j && d < end && t[d] == '$') {
        k = d + 1;
        pos = 1;
    }
    while (k < end && strchr("-+0#'", t[k])) k++;
    if (k < end && t[k] == '*') k++;
    else k = digits(t, k, end);
    if (k + 1 < end && t[k] == '.' && (t[k + 1] == '*' || is_digit(t[k + 1])))
        k = t[k + 1] == '*' ? k + 2 : digits(t, k + 1, end);
    static const char *const lengths[] = {"hh", "h", "ll", "l", "L", "q", "j", "z", "t",
                                          "I64", "I32"};
    const char *conv = "diouxXeEfFgGaAcspn";
    for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
        size_t n = strlen(lengths[l]);
        if (end - k > n && !memcmp(t + k, lengths[l], n) && strchr(conv, t[k + n])) {
            *kind = pos ? MOA_PH_PRINTF_POS : MOA_PH_PRINTF;
            return k + n + 1;
        }
    }
    if (k < end && t[k] && strchr(conv, t[k])) {
        *kind = pos ? MOA_PH_PRINTF_POS : MOA_PH_PRINTF;
        return k + 1;
    }
    // Qt: %1 %L2
    k = j;
    if (k < end && t[k] == 'L') k++;
    d = digits(t, k, end);
    if (d > k) {
        *kind = MOA_PH_QT;
        return d;
    }
    return 0;
}

// {{var}}, ${var}, {0} {name} {} {0:.2f}, {0, number}: end or 0.
static size_t brace_end(const char *t, size_t i, size_t end, int *kind) {
    if (t[i] == '$') {
        size_t k = i + 2;
        if (i + 1 >= end || t[i + 1] != '{') return 0;
        while (k < end && t[k] != '{' && t[k] != '}' && !moa_text_is_ws(t[k])) k++;
        if (k > i + 2 && k < end && t[k] == '}') {
            *kind = MOA_PH_SHELL;
            return k + 1;
        }
        return 0;
    }
    if (i + 1 < end && t[i + 1] == '{') {
        size_t k = i + 2;
        while (k < end && t[k] != '{' && t[k] != '}') k++;
        if (k > i + 2 && k + 1 < end && t[k] == '}' && t[k + 1] == '}') {
            *kind = MOA_PH_DBRACE;
            return k + 2;
        }
        return 0;
    }
    size_t k = i + 1;
    while (k < end && t[k] != '{' && t[k] != '}' && !moa_text_is_ws(t[k])) k++;
    if (k < end && t[k] == '}') {
        *kind = MOA_PH_BRACE;
        return k + 1;
    }
    // ICU with spaces: {0, number} {count, plural, ...} without nested braces
    k = i + 1;
    while (k < end && t[k] == ' ') k++;
    size_t w = k;
    while (k < end && (isalnum((unsigned char)t[k]) || t[k] == '_')) k++;
    if (k == w) return 0;
    while (k < end && t[k] == ' ') k++;
    if (k >= end || t[k] != ',') return 0;
    while (k < end && t[k] != '{' && t[k] != '}') k++;
    if (k < end && t[k] == '}') {
        *kind = MOA_PH_BRACE;
        return k + 1;
    }
    return 0;
}

// Tag names that are markup in plain text even without attributes (as
// train/evaluate.py's MARKUP_TAGS: HTML, Pango, Qt rich text).
static int markup_name(const char *n) {
    static const char *const m[] = {
        "a", "abbr", "b", "big", "blockquote", "body", "br", "center", "cite", "code", "dd",
        "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "head", "hr",
        "html", "i", "img", "kbd", "li", "link", "nobr", "ol", "p", "pre", "q", "qt", "s",
        "samp", "small", "span", "strike", "strong", "style", "sub", "sup", "table", "td",
        "th", "title", "tr", "tt", "u", "ul", "var",
    };
    for (size_t k = 0; k < sizeof m / sizeof m[0]; k++)
        if (!strcmp(n, m[k])) return 1;
    return 0;
}

// A tag as evaluate.py reads plain text: <name>, </name>, <name attrs>,
// <name/>; its end or 0. *attr_eq: the attributes hold '='.
static size_t plain_tag_end(const char *t, size_t i, size_t end, char *name, size_t cap,
                            int *kind, int *attr_eq) {
    size_t j = i + 1;
    int close = j < end && t[j] == '/';
    j += (size_t)close;
    if (j >= end || !isalpha((unsigned char)t[j])) return 0;
    size_t n0 = j;
    while (j < end && (isalnum((unsigned char)t[j]) || strchr(":_.-", t[j]))) j++;
    size_t nl = j - n0 < cap - 1 ? j - n0 : cap - 1;
    for (size_t k = 0; k < nl; k++) name[k] = (char)tolower((unsigned char)t[n0 + k]);
    name[nl] = 0;
    *attr_eq = 0;
    if (j < end && moa_text_is_ws(t[j])) {
        size_t k = j;
        while (k < end && t[k] != '>' && t[k] != '<') {
            if (t[k] == '=') *attr_eq = 1;
            k++;
        }
        if (k >= end || t[k] != '>') return 0;
        j = k;
    }
    int self = 0;
    if (j < end && t[j] == '/' ) {
        self = 1;
        j++;
    } else if (j > n0 && t[j - 1] == '/') {
        self = 1;
    }
    if (j >= end || t[j] != '>') return 0;
    *kind = close ? MOA_TAG_CLOSE : self ? MOA_TAG_EMPTY : MOA_TAG_OPEN;
    return j + 1;
}

// Keyboard accelerator candidates: &X (not &&, not an entity) and _X at a
// word start, outside items, in a word that is no URL, path or query.
static void find_accel(const char *t, size_t off, size_t end, moa_phs *out) {
    size_t found = SIZE_MAX;
    int count = 0, pi = 0;
    for (size_t i = off; i < end; i++) {
        while (pi < out->n && out->v[pi].off + out->v[pi].len <= i) pi++;
        if (pi < out->n && out->v[pi].off <= i) {
            i = out->v[pi].off + out->v[pi].len - 1;
            continue;
        }
        char c = t[i];
        if (c != '&' && c != '_') continue;
        if (c == '&' && i + 1 < end && t[i + 1] == '&') {
            i++;  // && is a literal ampersand
            continue;
        }
        if (i + 1 >= end) continue;
        int l;
        uint32_t next = moa_text_cp(t, i + 1, end, &l);
        if (!(moa_text_cp_alpha(next) || (next >= '0' && next <= '9'))) continue;
        if (c == '_' && i > off && (isalnum((unsigned char)t[i - 1]) || t[i - 1] == '_' ||
                                    ((unsigned char)t[i - 1] & 0x80)))
            continue;
        size_t a = i, b = i;
        while (a > off && !moa_text_is_ws(t[a - 1])) a--;
        while (b < end && !moa_text_is_ws(t[b])) b++;
        int urlish = 0;
        for (size_t k = a; k < b; k++)
            if (strchr(c == '&' ? ":/=?@;" : ":/=?@.\\", t[k])) urlish = 1;
        if (urlish) continue;
        count++;
        found = i;
    }
    out->accel = count == 1 ? found : SIZE_MAX;
}

int moa_protect_scan(const char *t, size_t off, size_t len, int html, int accel,
                     moa_phs *out) {
    size_t end = off + len;
    out->accel = SIZE_MAX;
    for (size_t i = off; i < end;) {
        char c = t[i];
        size_t e = 0;
        int kind = 0;
        if (c == '%') {
            e = printf_end(t, i, end, &kind);
        } else if (c == '{' || c == '$') {
            e = brace_end(t, i, end, &kind);
        } else if (c == '&') {
            e = moa_html_entity_end(t, i, end);
            kind = MOA_PH_ENTITY;
        } else if (c == '<' && html) {
            e = moa_html_tag_end(t, i, end);
            if (e) {
                if (push_ph(out, i, e - i, MOA_PH_TAG)) return -1;
                moa_ph *h = &out->v[out->n - 1];
                h->tag = moa_html_tag_kind(t, i, e, h->name, sizeof h->name);
                if (h->tag == MOA_TAG_OPEN && moa_html_is_opaque(h->name)) {
                    e = moa_html_opaque_end(t, e, end, h->name);
                    h->len = e - i;
                    h->tag = MOA_TAG_EMPTY;  // the element as a whole
                }
                h->brk = (h->tag == MOA_TAG_OPEN || h->tag == MOA_TAG_CLOSE ||
                          h->tag == MOA_TAG_EMPTY) && moa_html_is_block(h->name);
                i = e;
                continue;
            }
        } else if (c == '<') {
            char name[16];
            int tk, eq;
            e = plain_tag_end(t, i, end, name, sizeof name, &tk, &eq);
            if (e) {
                if (push_ph(out, i, e - i, MOA_PH_TAG)) return -1;
                moa_ph *h = &out->v[out->n - 1];
                h->tag = tk;
                memcpy(h->name, name, sizeof name);
                h->brk = eq;  // holds "has attributes" for the markup test below, which resets it
                i = e;
                continue;
            }
        }
        if (e) {
            if (push_ph(out, i, e - i, kind)) return -1;
            i = e;
        } else {
            i++;
        }
    }
    if (!html) {
        // Plain text: a tag is markup when closed or self-closing, with
        // attributes (holding '='), of a known tag name, or when its name is
        // closed somewhere in the text; others are words ("<file>").
        int w = 0;
        for (int r = 0; r < out->n; r++) {
            moa_ph h = out->v[r];
            if (h.kind == MOA_PH_TAG) {
                int markup = h.tag != MOA_TAG_OPEN || h.brk || markup_name(h.name);
                for (int q = 0; !markup && q < out->n; q++)
                    markup = out->v[q].kind == MOA_PH_TAG && out->v[q].tag == MOA_TAG_CLOSE &&
                             !strcmp(out->v[q].name, h.name);
                if (!markup) continue;
                h.brk = moa_html_is_block(h.name);
            }
            out->v[w++] = h;
        }
        out->n = w;
        if (accel) find_accel(t, off, end, out);
    }
    return 0;
}

// --- sentinels --------------------------------------------------------------------

// Every piece that may serve as a sentinel (train/make_model.sh makes them
// user-defined pieces of the default model). DISTINCT: the ones handed out
// one per item, in this order.
static const char *const cands[] = {
    "{0}", "{1}", "{2}", "{3}", "{4}", "%1", "%2", "%3", "%4", "%5",
    "%1$s", "%2$s", "%3$s", "%4$s", "%1$d", "%2$d", "%3$d", "%1$u", "%2$u",
    "{}", "%s", "%d", "%u", "%i", "%c", "%f", "%g", "%x", "%X", "%ld", "%lu", "%li",
    "%lld", "%llu", "%zu", "%zd", "%ls", "%%",
};
#define N_CANDS ((int)(sizeof cands / sizeof cands[0]))
#define N_DISTINCT 19
#define CAND_ANY 19  // "{}"

struct moa_protect_vocab {
    unsigned char whole[N_CANDS];  // the piece exists
};

moa_protect_vocab *moa_protect_vocab_create(const moa_tokenizer *tok) {
    moa_protect_vocab *pv = calloc(1, sizeof *pv);
    if (!pv) return NULL;
    int n = moa_tokenizer_vocab_size(tok);
    for (int id = 0; id < n; id++) {
        const char *p = moa_tokenizer_piece(tok, id);
        if (!p || (p[0] != '%' && p[0] != '{')) continue;
        for (int c = 0; c < N_CANDS; c++)
            if (!strcmp(p, cands[c])) pv->whole[c] = 1;
    }
    return pv;
}

void moa_protect_vocab_free(moa_protect_vocab *pv) { free(pv); }

static int cand_index(const char *s, size_t n) {
    for (int c = 0; c < N_CANDS; c++)
        if (strlen(cands[c]) == n && !memcmp(cands[c], s, n)) return c;
    return -1;
}

// The plain conversion of the same type as a printf item (%02d -> %d).
static int printf_class(const char *s, size_t n) {
    switch (s[n - 1]) {
    case 'd': case 'i': return cand_index("%d", 2);
    case 'u': return cand_index("%u", 2);
    case 'c': return cand_index("%c", 2);
    case 'f': case 'F': case 'e': case 'E': case 'a': case 'A': return cand_index("%f", 2);
    case 'g': case 'G': return cand_index("%g", 2);
    case 'x': case 'o': return cand_index("%x", 2);
    case 'X': return cand_index("%X", 2);
    default: return cand_index("%s", 2);
    }
}

// --- sentences -------------------------------------------------------------------

static int ph_in(const moa_ph *h, size_t a, size_t b) { return h->off >= a && h->off + h->len <= b; }

// Does the tag h (of ph) have its partner inside [a, b) (same name, nesting
// counted)?
static int partner_inside(const moa_phs *ph, size_t a, size_t b, const moa_ph *h) {
    int k = (int)(h - ph->v), step = h->tag == MOA_TAG_OPEN ? 1 : -1, depth = 0;
    for (int i = k; i >= 0 && i < ph->n; i += step) {
        const moa_ph *q = &ph->v[i];
        if (q->kind != MOA_PH_TAG || !ph_in(q, a, b) || strcmp(q->name, h->name)) continue;
        if (q->tag == h->tag) depth++;
        else if ((q->tag == MOA_TAG_OPEN || q->tag == MOA_TAG_CLOSE) && --depth == 0) return 1;
    }
    return 0;
}

void moa_protect_trim(const char *t, size_t *off, size_t *len, const moa_phs *ph) {
    size_t a = *off, b = *off + *len;
    for (int changed = 1; changed;) {
        changed = 0;
        while (a < b && moa_text_is_ws(t[a])) a++, changed = 1;
        while (b > a && moa_text_is_ws(t[b - 1])) b--, changed = 1;
        const moa_ph *first = NULL, *last = NULL;
        for (int i = 0; i < ph->n; i++) {
            const moa_ph *h = &ph->v[i];
            if (h->kind != MOA_PH_TAG || !ph_in(h, a, b)) continue;
            if (h->off == a) first = h;
            if (h->off + h->len == b) last = h;
        }
        // a close tag first, an open tag last, an empty element at either end
        // wrap nothing of the sentence; nor does a comment. An open tag first
        // (close tag last) whose partner is in another sentence wraps all of
        // this one: it stays outside too (<b>One. Two.</b>)
        if (first && first != last &&
            (first->tag != MOA_TAG_OPEN || !partner_inside(ph, a, b, first))) {
            a = first->off + first->len;
            changed = 1;
            continue;
        }
        if (last && (last->tag == MOA_TAG_OPEN || last->tag == MOA_TAG_COMMENT ||
                     (last->tag == MOA_TAG_EMPTY && last != first) ||
                     (last->tag == MOA_TAG_CLOSE && !partner_inside(ph, a, b, last)))) {
            b = last->off;
            changed = 1;
            continue;
        }
        if (first && first == last && first->tag != MOA_TAG_OPEN) {
            a = b;  // the sentence is one tag
            break;
        }
        if (first && last && first != last && first->tag == MOA_TAG_OPEN &&
            last->tag == MOA_TAG_CLOSE && !strcmp(first->name, last->name)) {
            // <b>...</b>: only when that close pairs with that open
            int depth = 0, pairs = 1;
            for (int i = 0; i < ph->n && pairs; i++) {
                const moa_ph *h = &ph->v[i];
                if (h->kind != MOA_PH_TAG || !ph_in(h, a, b) || strcmp(h->name, first->name))
                    continue;
                if (h->tag == MOA_TAG_OPEN) depth++;
                else if (h->tag == MOA_TAG_CLOSE && --depth == 0 && h != last) pairs = 0;
            }
            if (pairs && depth == 0) {
                a = first->off + first->len;
                b = last->off;
                changed = 1;
            }
        }
    }
    *off = a;
    *len = b > a ? b - a : 0;
}

void moa_prot_free(moa_prot *p) {
    free(p->ph);
    free(p->items);
    free(p->masked);
    memset(p, 0, sizeof *p);
    p->accel = SIZE_MAX;
}

// Whether [a, b) of t holds a letter outside the items ph[i0..i1).
static int letters_between(const char *t, size_t a, size_t b, const moa_ph *ph, int i0, int i1) {
    for (size_t i = a; i < b;) {
        int inside = 0;
        for (int k = i0; k < i1; k++)
            if (i >= ph[k].off && i < ph[k].off + ph[k].len) {
                i = ph[k].off + ph[k].len;
                inside = 1;
                break;
            }
        if (inside) continue;
        int l;
        if (moa_text_cp_alpha(moa_text_cp(t, i, b, &l))) return 1;
        i += (size_t)l;
    }
    return 0;
}

int moa_protect_unit(const moa_protect_vocab *pv, const char *t, size_t off, size_t len,
                     const moa_phs *ph, int html, char attr, moa_prot *p) {
    memset(p, 0, sizeof *p);
    p->text = t;
    p->off = off;
    p->len = len;
    p->html = html;
    p->attr = attr;
    p->accel = SIZE_MAX;
    p->accel_tok_lo = p->accel_tok_hi = -1;
    size_t end = off + len;
    int n = 0, *proj = NULL, *stack = NULL;
    for (int i = 0; i < ph->n; i++) n += ph_in(&ph->v[i], off, end);
    p->ph = malloc((size_t)(n ? n : 1) * sizeof *p->ph);
    p->items = malloc((size_t)(n ? n : 1) * sizeof *p->items);
    proj = calloc((size_t)(n ? n : 1), sizeof *proj);  // ph index + 1 of the partner
    stack = malloc((size_t)(n ? n : 1) * sizeof *stack);
    if (!p->ph || !p->items || !proj || !stack) goto fail;
    for (int i = 0; i < ph->n; i++)
        if (ph_in(&ph->v[i], off, end)) p->ph[p->n_ph++] = ph->v[i];
    // Inline pairs around words (<b>Open</b>) are not shown to the model at
    // all: it translates the plain sentence and the pair is put back around
    // the words aligned with the ones it wrapped.
    for (int i = 0, top = 0; i < p->n_ph; i++) {
        const moa_ph *h = &p->ph[i];
        if (h->kind != MOA_PH_TAG) continue;
        if (h->tag == MOA_TAG_OPEN) {
            stack[top++] = i;
        } else if (h->tag == MOA_TAG_CLOSE && top > 0 && !strcmp(p->ph[stack[top - 1]].name, h->name)) {
            int o = stack[--top];
            if (letters_between(t, p->ph[o].off + p->ph[o].len, h->off, p->ph, o + 1, i)) {
                proj[o] = i + 1;
                proj[i] = o + 1;
            }
        }
    }
    // runs of adjacent items become one (projected tags stay apart)
    for (int i = 0; i < p->n_ph; i++) {
        const moa_ph *h = &p->ph[i];
        moa_prot_item *it = p->n_items ? &p->items[p->n_items - 1] : NULL;
        if (it && !it->proj && !proj[i] && it->off + it->len == h->off) {
            it->len = h->off + h->len - it->off;
            it->n_ph++;
        } else {
            it = &p->items[p->n_items++];
            memset(it, 0, sizeof *it);
            it->off = h->off;
            it->len = h->len;
            it->ph0 = i;
            it->n_ph = 1;
            it->proj = proj[i] != 0;
            it->partner = -1;
        }
        it->ordered |= h->kind == MOA_PH_PRINTF;
    }
    for (int i = 0; i < p->n_items; i++) {  // partners by item index
        moa_prot_item *it = &p->items[i];
        if (!it->proj) continue;
        for (int k = 0; k < p->n_items; k++)
            if (p->items[k].ph0 == proj[it->ph0] - 1) it->partner = k;
    }
    // sentinels: items that are pieces themselves first (they reserve theirs)
    unsigned char used[N_CANDS] = {0};
    for (int i = 0; i < p->n_items; i++) {
        moa_prot_item *it = &p->items[i];
        it->src_tok = it->tok_lo = it->tok_hi = -1;
        it->left = class_before(t, off, it->off);
        it->right = class_at(t, it->off + it->len, end);
        int c = cand_index(t + it->off, it->len);
        if (pv && !it->proj && c >= 0 && pv->whole[c]) {
            it->sentinel = cands[c];
            used[c] = 1;
        }
    }
    for (int i = 0; pv && i < p->n_items; i++) {
        moa_prot_item *it = &p->items[i];
        if (it->sentinel || it->proj) continue;
        const moa_ph *h = &p->ph[it->ph0];
        if (it->n_ph == 1 && h->kind == MOA_PH_PRINTF) {
            int c = printf_class(t + it->off, it->len);
            if (c >= 0 && pv->whole[c]) {
                it->sentinel = cands[c];
                continue;
            }
        }
        for (int c = 0; c < N_DISTINCT && !it->sentinel; c++)
            if (pv->whole[c] && !used[c]) {
                it->sentinel = cands[c];
                used[c] = 1;
            }
        if (!it->sentinel && pv->whole[CAND_ANY]) it->sentinel = cands[CAND_ANY];
    }
    // the masked text (a sentinel may be longer than its item: %6 -> {0})
    size_t cap = len + 1, w = 0, at = off, accel_m = 0;
    for (int i = 0; i < p->n_items; i++) cap += p->items[i].sentinel ? strlen(p->items[i].sentinel) : 0;
    p->masked = malloc(cap);
    if (!p->masked) goto fail;
    for (int i = 0; i <= p->n_items; i++) {
        size_t upto = i < p->n_items ? p->items[i].off : end;
        for (; at < upto; at++) {
            if (at == ph->accel) {  // the marker goes; the letter after it stays
                p->accel = at;
                accel_m = w;
                continue;
            }
            p->masked[w++] = t[at];
        }
        if (i == p->n_items) break;
        moa_prot_item *it = &p->items[i];
        it->mpos = w;
        if (!it->proj) {
            const char *sh = it->sentinel ? it->sentinel : t + it->off;
            size_t sl = it->sentinel ? strlen(it->sentinel) : it->len;
            memcpy(p->masked + w, sh, sl);
            w += sl;
        }
        at = it->off + it->len;
    }
    p->masked[w] = 0;
    p->masked_len = w;
    if (p->accel != SIZE_MAX) {
        size_t lo = accel_m, hi = accel_m;
        while (lo > 0 && !moa_text_is_ws(p->masked[lo - 1])) lo--;
        while (hi < w && !moa_text_is_ws(p->masked[hi])) hi++;
        p->accel_lo = lo;
        p->accel_hi = hi;
        int l;
        p->accel_letter = accel_m < w ? moa_text_cp_tolower(moa_text_cp(p->masked, accel_m, w, &l)) : 0;
    }
    free(proj);
    free(stack);
    return 0;
fail:
    free(proj);
    free(stack);
    moa_prot_free(p);
    return -1;
}

int moa_protect_has_words(const moa_prot *p) {
    size_t end = p->off + p->len;
    int it = 0;
    for (size_t i = p->off; i < end;) {
        while (it < p->n_items && p->items[it].off + p->items[it].len <= i) it++;
        if (it < p->n_items && p->items[it].off <= i) {
            i = p->items[it].off + p->items[it].len;
            continue;
        }
        int l;
        if (moa_text_cp_alpha(moa_text_cp(p->text, i, end, &l))) return 1;
        i += (size_t)l;
    }
    return 0;
}

int moa_protect_wants_alignment(const moa_prot *p) {
    return p->n_items > 0 || p->accel != SIZE_MAX;
}

// A piece without SentencePiece's word-start mark.
static const char *bare_piece(const moa_tokenizer *tok, int id) {
    const char *s = moa_tokenizer_piece(tok, id);
    if (!s) return "";
    while (!strncmp(s, "\xE2\x96\x81", 3)) s += 3;
    return s;
}

// Pieces of s[0, n): >= 0, -1 when it does not encode, -2 out of memory.
static int count_tokens(const moa_tokenizer *tok, const char *s, size_t n) {
    int *ids = NULL, k = 0;
    if (n == 0) return 0;
    int rc = moa_tokenizer_encode(tok, s, n, 0, &ids, &k, NULL, 0);
    if (rc) return rc == MOA_ENOMEM ? -2 : -1;
    free(ids);
    return k;
}

int moa_protect_locate(moa_prot *p, const moa_tokenizer *tok, const int *ids, int n) {
    int t = 0;
    for (int i = 0; i < p->n_items; i++) {
        moa_prot_item *it = &p->items[i];
        it->src_tok = -1;
        if (!it->sentinel) continue;
        for (int k = t; k < n; k++)
            if (!strcmp(bare_piece(tok, ids[k]), it->sentinel)) {
                it->src_tok = k;
                t = k + 1;
                break;
            }
    }
    // SentencePiece never joins pieces across whitespace, so the pieces of a
    // prefix that ends at a word boundary are a prefix of the pieces
    for (int i = 0; i < p->n_items; i++) {
        moa_prot_item *it = &p->items[i];
        if (!it->proj || it->partner <= i) continue;  // open tags of pairs
        int lo = count_tokens(tok, p->masked, it->mpos);
        int hi = count_tokens(tok, p->masked, p->items[it->partner].mpos);
        if (lo == -2 || hi == -2) return -1;
        if (lo >= 0 && hi > lo && hi <= n) {
            it->tok_lo = lo;
            it->tok_hi = hi;
        }
    }
    if (p->accel != SIZE_MAX) {
        int lo = count_tokens(tok, p->masked, p->accel_lo);
        int hi = count_tokens(tok, p->masked, p->accel_hi);
        if (lo == -2 || hi == -2) return -1;
        if (lo >= 0 && hi > lo && hi <= n) {
            p->accel_tok_lo = lo;
            p->accel_tok_hi = hi;
        }
    }
    return 0;
}

// --- putting back -----------------------------------------------------------------

typedef struct occ {
    size_t pos, len;        // in the decoded output
    int tok;                // target token holding it, -1
    int item;               // item it stands for; -1: to delete
} occ;

enum { PL_CLOSE, PL_ITEM, PL_OPEN, PL_ACCEL };  // order of things put at one offset

typedef struct place {
    size_t pos;             // in the decoded output
    int kind;               // PL_*
    int insert;             // PL_ITEM: 1 inserted before pos, 0 replaces occurrence `occ`
    int occ;
    int item;               // the item put there (reassigned by the order checks)
    int order;              // tie-break at one offset
} place;

typedef struct rctx {
    const moa_prot *p;
    const moa_tokenizer *tok;
    const char *d;          // decoded output
    size_t dn;
    const int *hyp;
    int n;                  // target tokens without a final eos
    const float *attn;
    int cols;
    size_t *toff;           // byte offset of each target token in d (NULL: unknown)
    int *align;             // source position each target token attends most, -1 none
    moa_buf *warn;
} rctx;

static const char *item_show(const moa_prot *p, int i, size_t *len) {
    const moa_prot_item *it = &p->items[i];
    if (it->sentinel) {
        *len = strlen(it->sentinel);
        return it->sentinel;
    }
    *len = it->len;
    return p->text + it->off;
}

// An item's text for a warning: at most 40 bytes, cut at a character.
static void warn_item(rctx *c, const char *what, int i) {
    if (!c->warn) return;
    const moa_prot_item *it = &c->p->items[i];
    const char *s = c->p->text + it->off;
    size_t n = it->len;
    if (n > 40) {
        n = 40;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    }
    int tag = c->p->ph[it->ph0].kind == MOA_PH_TAG;
    moa_buf_printf(c->warn, "%s '%.*s'%s %s\n", tag ? "markup" : "placeholder", (int)n, s,
                   n < it->len ? "..." : "", what);
}

static float att(const rctx *c, int t, int s) {
    if (!c->attn || t < 0 || t >= c->n || s < 0 || s >= c->cols) return 0;
    return c->attn[(size_t)t * (size_t)c->cols + (size_t)s];
}

static int starts_word(const rctx *c, int t) {
    const char *pc = moa_tokenizer_piece(c->tok, c->hyp[t]);
    return pc && !strncmp(pc, "\xE2\x96\x81", 3);
}

// Offsets of the target tokens in the decoded text: the pieces put
// together as SentencePiece's decoder does (▁ is a space, the first one
// dropped). When that does not give the decoded text, there are none.
// 0, or -1: out of memory.
static int token_offsets(rctx *c) {
    moa_buf b = {0};
    size_t *off = malloc((size_t)(c->n + 1) * sizeof *off);
    if (!off) return -1;
    for (int t = 0; t < c->n; t++) {
        off[t] = b.n;
        int id = c->hyp[t];
        const char *s = moa_tokenizer_piece(c->tok, id);
        if (!s || id < 3) continue;  // <s> <pad> </s> decode to nothing
        if (!strcmp(s, "<unk>")) {
            moa_buf_puts(&b, " \xE2\x81\x87 ");
            continue;
        }
        for (; *s; s++) {
            if (!strncmp(s, "\xE2\x96\x81", 3)) {
                moa_buf_put(&b, " ", 1);
                s += 2;
            } else {
                moa_buf_put(&b, s, 1);
            }
        }
    }
    off[c->n] = b.n;
    if (b.oom) {  // out of memory: no restoring without offsets
        free(b.s);
        free(off);
        return -1;
    }
    int ok = 1;
    size_t shift = 0;
    if (b.n == c->dn + 1 && b.s[0] == ' ') shift = 1;
    ok = ok && b.n == c->dn + shift && (c->dn == 0 || !memcmp(b.s + shift, c->d, c->dn));
    free(b.s);
    if (!ok) {
        free(off);
        return 0;
    }
    for (int t = 0; t <= c->n; t++) off[t] = off[t] >= shift ? off[t] - shift : 0;
    c->toff = off;
    return 0;
}

static int token_at(const rctx *c, size_t pos) {
    if (!c->toff) return -1;
    for (int t = 0; t < c->n; t++)
        if (pos >= c->toff[t] && pos < c->toff[t + 1]) return t;
    return -1;
}

static void compute_align(rctx *c) {
    for (int t = 0; t < c->n; t++) {
        c->align[t] = -1;
        if (!c->attn || !*bare_piece(c->tok, c->hyp[t])) continue;  // a bare ▁ says nothing
        float best = -1;
        for (int s = 0; s + 1 < c->cols; s++) {  // not eos
            float a = att(c, t, s);
            if (a > best) best = a, c->align[t] = s;
        }
    }
}

static int punct_only(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (isalnum((unsigned char)*s) || ((unsigned char)*s & 0x80)) return 0;
    return 1;
}

// The byte offset where an item the model dropped goes: the word boundary
// with the fewest target tokens aligned to the wrong side of the item's
// source position p (ties: the most attention to p next to it).
static size_t boundary_for(const rctx *c, int p, double rel, int *by_alignment) {
    *by_alignment = 0;
    if (c->attn && c->toff && p >= 0) {
        int best_b = -1, best_cost = 0;
        float best_aff = 0;
        for (int b = 0; b <= c->n; b++) {
            if (b > 0 && b < c->n && !starts_word(c, b) && !punct_only(bare_piece(c->tok, c->hyp[b])))
                continue;
            int cost = 0;
            for (int t = 0; t < c->n; t++) {
                int a = c->align[t];
                if (a >= 0) cost += t < b ? a > p : a < p;
            }
            float aff = att(c, b - 1, p) > att(c, b, p) ? att(c, b - 1, p) : att(c, b, p);
            if (best_b < 0 || cost < best_cost || (cost == best_cost && aff > best_aff)) {
                best_b = b;
                best_cost = cost;
                best_aff = aff;
            }
        }
        *by_alignment = 1;
        return c->toff[best_b];
    }
    // no alignment: the word boundary nearest its relative position
    size_t want = (size_t)(rel * (double)c->dn), best = 0, bd = SIZE_MAX;
    for (size_t j = 0; j <= c->dn; j++) {
        if (j != 0 && j != c->dn && c->d[j] != ' ') continue;
        size_t dist = j > want ? j - want : want - j;
        if (dist < bd) bd = dist, best = j;
    }
    return best;
}

static double rel_pos(const moa_prot *p, size_t masked_at) {
    return p->masked_len ? (double)masked_at / (double)p->masked_len : 0;
}

// Matches the items that share one show string (source order) to its
// occurrences (output order), order kept, every one of the smaller side
// matched, maximising the attention of each occurrence's token to its
// item's source position.
static int match_class(rctx *c, const int *items, int ni, occ *o, const int *occs, int no) {
    if (ni == 0 || no == 0) return 0;
    double *f = malloc((size_t)(ni + 1) * (size_t)(no + 1) * sizeof *f);
    if (!f) return -1;
    int few_items = ni <= no;
#define F(a, b) f[(size_t)(a) * (size_t)(no + 1) + (size_t)(b)]
#define SCORE(a, b) (att(c, o[occs[(b) - 1]].tok, c->p->items[items[(a) - 1]].src_tok) + \
                     1e-9 * (double)(no - (b)))
    for (int a = 0; a <= ni; a++)
        for (int b = 0; b <= no; b++) {
            if (few_items ? a == 0 : b == 0) F(a, b) = 0;
            else if (few_items ? b < a : a < b) F(a, b) = -1e30;
            else {
                double take = F(a - 1, b - 1) + SCORE(a, b);
                double skip = few_items ? F(a, b - 1) : F(a - 1, b);
                F(a, b) = take >= skip ? take : skip;
            }
        }
    for (int a = ni, b = no; a > 0 && b > 0;) {
        double take = F(a - 1, b - 1) + SCORE(a, b);
        double skip = few_items ? F(a, b - 1) : F(a - 1, b);
        if (take >= skip) {
            o[occs[b - 1]].item = items[a - 1];
            a--, b--;
        } else if (few_items) {
            b--;
        } else {
            a--;
        }
    }
#undef SCORE
#undef F
    free(f);
    return 0;
}

static int by_place(const void *x, const void *y) {
    const place *a = x, *b = y;
    if (a->pos != b->pos) return a->pos < b->pos ? -1 : 1;
    if (a->kind != b->kind) return a->kind - b->kind;
    if (a->kind == PL_ITEM && a->insert != b->insert) return a->insert ? -1 : 1;
    return a->order - b->order;
}

static int item_place(const place *x) { return x->kind == PL_ITEM; }

// In the order of the item places, are their tags well nested (as far as
// the source pairs them)?
static int tags_ok(const moa_prot *p, const place *pl, int np, const int *partner) {
    int *stack = malloc((size_t)(p->n_ph ? p->n_ph : 1) * sizeof *stack), top = 0, ok = 1;
    if (!stack) return 1;
    for (int k = 0; k < np && ok; k++) {
        if (!item_place(&pl[k])) continue;
        const moa_prot_item *it = &p->items[pl[k].item];
        for (int h = it->ph0; h < it->ph0 + it->n_ph && ok; h++) {
            if (p->ph[h].kind != MOA_PH_TAG || partner[h] < 0) continue;
            if (p->ph[h].tag == MOA_TAG_OPEN) stack[top++] = h;
            else if (top > 0 && stack[top - 1] == partner[h]) top--;
            else ok = 0;
        }
    }
    free(stack);
    return ok && top == 0;
}

// The items of item places that satisfy `want`, put back in source order
// over the same places. Returns 1 when something moved.
static int reassign_in_order(const moa_prot *p, place *pl, int np,
                             int (*want)(const moa_prot *, int)) {
    int moved = 0, prev = -1, ni = 0, k2 = 0;
    int *items = malloc((size_t)(np ? np : 1) * sizeof *items);
    if (!items) return 0;
    for (int k = 0; k < np; k++)
        if (item_place(&pl[k]) && want(p, pl[k].item)) {
            if (pl[k].item < prev) moved = 1;
            prev = pl[k].item;
            items[ni++] = pl[k].item;
        }
    if (moved) {
        for (int a = 1; a < ni; a++)  // item indices follow source order
            for (int b = a; b > 0 && items[b] < items[b - 1]; b--) {
                int t = items[b];
                items[b] = items[b - 1];
                items[b - 1] = t;
            }
        for (int k = 0; k < np; k++)
            if (item_place(&pl[k]) && want(p, pl[k].item)) pl[k].item = items[k2++];
    }
    free(items);
    return moved;
}

static int want_ordered(const moa_prot *p, int i) { return p->items[i].ordered; }
static int want_tag(const moa_prot *p, int i) {
    const moa_prot_item *it = &p->items[i];
    for (int h = it->ph0; h < it->ph0 + it->n_ph; h++)
        if (p->ph[h].kind == MOA_PH_TAG) return 1;
    return 0;
}

// Output text with escaping for HTML text or an attribute value; line
// breaks become spaces (one line in, one line out).
static void put_text(const rctx *c, moa_buf *out, size_t a, size_t b) {
    const char *d = c->d;
    for (size_t i = a; i < b; i++) {
        char ch = d[i];
        if (ch == '\n' || ch == '\r') {
            moa_buf_put(out, " ", 1);
        } else if (c->p->html && ch == '<') {
            moa_buf_puts(out, "&lt;");
        } else if (c->p->html && ch == '>') {
            moa_buf_puts(out, "&gt;");
        } else if (c->p->html && ch == '&' && !moa_html_entity_end(d, i, b)) {
            moa_buf_puts(out, "&amp;");
        } else if (c->p->attr == '"' && ch == '"') {
            moa_buf_puts(out, "&quot;");
        } else if ((c->p->attr == '\'' || c->p->attr == ' ') && ch == '\'') {
            moa_buf_puts(out, "&#39;");
        } else if (c->p->attr == ' ' && (ch == ' ' || ch == '"' || ch == '=' || ch == '`')) {
            moa_buf_printf(out, "&#%d;", ch);
        } else {
            moa_buf_put(out, &ch, 1);
        }
    }
}

static int inside_occ(const occ *o, int no, size_t i) {
    for (int k = 0; k < no; k++)
        if (i >= o[k].pos && i < o[k].pos + o[k].len) return 1;
    return 0;
}

// Where the accelerator goes: before the marked letter in the output word
// the marked word's tokens align with, else before that word's first
// letter, else before the output's first letter. SIZE_MAX: no letter at all.
static size_t accel_point(const rctx *c, const occ *o, int no) {
    const moa_prot *p = c->p;
    size_t wa = 0, wb = c->dn;
    int aligned = 0;
    if (c->attn && c->toff && p->accel_tok_lo >= 0) {
        int best = -1;
        float bs = -1;
        for (int t = 0; t < c->n; t++) {
            const char *bp = bare_piece(c->tok, c->hyp[t]);
            int letter = 0;
            for (const char *q = bp; *q && !letter; q++)
                letter = isalpha((unsigned char)*q) || ((unsigned char)*q & 0x80);
            if (!letter) continue;
            float sum = 0;
            for (int k = p->accel_tok_lo; k < p->accel_tok_hi; k++) sum += att(c, t, k);
            if (sum > bs) bs = sum, best = t;
        }
        if (best >= 0) {
            wa = c->toff[best];
            while (wa < c->dn && c->d[wa] == ' ') wa++;
            while (wa > 0 && c->d[wa - 1] != ' ') wa--;
            wb = wa;
            while (wb < c->dn && c->d[wb] != ' ') wb++;
            aligned = 1;
        }
    }
    for (int pass = aligned ? 0 : 2; pass < 3; pass++) {
        size_t a = pass < 2 ? wa : 0, b = pass < 2 ? wb : c->dn;
        for (size_t i = a; i < b;) {
            if (inside_occ(o, no, i)) {
                i++;
                continue;
            }
            int l;
            uint32_t cp = moa_text_cp(c->d, i, c->dn, &l);
            if (moa_text_cp_alpha(cp) && (pass > 0 || moa_text_cp_tolower(cp) == p->accel_letter))
                return i;
            i += (size_t)l;
        }
    }
    return SIZE_MAX;
}

// Token t continues the word of token t-1 (no ▁, letters on both sides).
static int glued(const rctx *c, int t) {
    return t > 0 && t < c->n && !starts_word(c, t) && !punct_only(bare_piece(c->tok, c->hyp[t])) &&
           !punct_only(bare_piece(c->tok, c->hyp[t - 1]));
}

// A projected pair (open item i): the output bytes [*a, *b) it wraps — the
// whole words holding the densest run of target tokens aligned into the
// source ids it wrapped (runs: aligned tokens at most two tokens apart; the
// run with the most of them, then the most attention). 0, or -1 when no
// target token aligns there.
static int pair_span(const rctx *c, int i, size_t *a, size_t *b) {
    const moa_prot_item *it = &c->p->items[i];
    if (!c->attn || !c->toff || it->tok_lo < 0) return -1;
    int best0 = -1, best1 = -1, bestn = 0, r0 = -1, r1 = -1, rn = 0;
    float bestm = 0, rm = 0;
    for (int t = 0; t <= c->n; t++) {
        int s = t < c->n ? c->align[t] : -1;
        int in = s >= it->tok_lo && s < it->tok_hi;
        if (in && r0 >= 0 && t - r1 > 3) {  // a gap: this run ends
            if (rn > bestn || (rn == bestn && rm > bestm))
                best0 = r0, best1 = r1, bestn = rn, bestm = rm;
            r0 = -1;
        }
        if (in) {
            if (r0 < 0) r0 = t, rn = 0, rm = 0;
            r1 = t;
            rn++;
            for (int k = it->tok_lo; k < it->tok_hi; k++) rm += att(c, t, k);
        }
        if (t == c->n && r0 >= 0 && (rn > bestn || (rn == bestn && rm > bestm)))
            best0 = r0, best1 = r1, bestn = rn, bestm = rm;
    }
    if (best0 < 0) return -1;
    int t0 = best0, t1 = best1;
    while (glued(c, t0)) t0--;  // whole words
    while (glued(c, t1 + 1)) t1++;
    *a = c->toff[t0];
    if (*a < c->dn && c->d[*a] == ' ') (*a)++;
    *b = c->toff[t1 + 1];
    if (*b < *a) *b = *a;
    return 0;
}

// Spans of projected pairs made to nest as in the source: a pair inside
// another stays inside it, pairs side by side do not overlap.
static void nest_spans(const moa_prot *p, const int *open, int npair, size_t *sa, size_t *sb) {
    for (int k = 0; k < npair; k++)
        for (int j = 0; j < k; j++) {
            const moa_prot_item *ij = &p->items[open[j]], *ik = &p->items[open[k]];
            int inside = ik->off > ij->off && ik->off < p->items[ij->partner].off;
            if (inside) {
                if (sa[k] < sa[j]) sa[k] = sa[j];
                if (sb[k] > sb[j]) sb[k] = sb[j];
            } else if (sa[k] < sb[j] && sb[k] > sa[j]) {
                if (sa[k] >= sa[j]) sa[k] = sb[j];
                else sb[k] = sa[j];
            }
            if (sb[k] < sa[k]) sb[k] = sa[k];
        }
}

int moa_protect_restore(const moa_prot *p, const moa_protect_vocab *pv,
                        const moa_tokenizer *tok, const int *hyp, int n, const float *attn,
                        int cols, const char *const *item_text, const size_t *item_len,
                        moa_buf *out, moa_buf *warn) {
    int rc = -1, no = 0, np = 0, npair = 0;
    char *d = NULL;
    occ *o = NULL;
    place *pl = NULL;
    int *cls = NULL, *occs = NULL, *partner = NULL, *open = NULL;
    size_t *sa = NULL, *sb = NULL;
    rctx c = {p, tok, NULL, 0, hyp, n, attn, cols, NULL, NULL, warn};
    size_t base = out->n;  // this sentence's output starts here
    if (n > 0 && hyp[n - 1] == 2) c.n = n - 1;  // eos (spec §3: id 2)
    if (moa_tokenizer_decode(tok, hyp, c.n, &d, NULL, 0) != 0) goto done;
    c.d = d;
    c.dn = strlen(d);
    c.align = malloc((size_t)(c.n + 1) * sizeof *c.align);
    if (!c.align || token_offsets(&c)) goto done;
    compute_align(&c);

    // occurrences: the items' show strings, and stray sentinels
    int cap_o = 8;
    o = malloc((size_t)cap_o * sizeof *o);
    if (!o) goto done;
    for (size_t i = 0; i < c.dn;) {
        size_t bl = 0;
        for (int k = 0; k < p->n_items; k++) {
            size_t l;
            const char *sh = item_show(p, k, &l);
            if (!p->items[k].proj && l > bl && l <= c.dn - i && !memcmp(d + i, sh, l)) bl = l;
        }
        for (int k = 0; pv && k < N_CANDS; k++) {
            size_t l = strlen(cands[k]);
            if (pv->whole[k] && l > bl && l <= c.dn - i && !memcmp(d + i, cands[k], l)) bl = l;
        }
        if (!bl) {
            i++;
            continue;
        }
        if (no == cap_o) {
            occ *g = realloc(o, (size_t)(cap_o *= 2) * sizeof *o);
            if (!g) goto done;
            o = g;
        }
        o[no++] = (occ){i, bl, token_at(&c, i), -1};
        i += bl;
    }

    // match each show string's items to its occurrences
    cls = malloc((size_t)(p->n_items + 1) * sizeof *cls);
    occs = malloc((size_t)(no + 1) * sizeof *occs);
    if (!cls || !occs) goto done;
    for (int k = 0; k < p->n_items; k++) {
        size_t l;
        const char *sh = item_show(p, k, &l);
        int first = !p->items[k].proj;
        for (int q = 0; q < k && first; q++) {
            size_t l2;
            const char *s2 = item_show(p, q, &l2);
            if (!p->items[q].proj && l2 == l && !memcmp(sh, s2, l)) first = 0;
        }
        if (!first) continue;
        int ni = 0, nq = 0;
        for (int q = k; q < p->n_items; q++) {
            size_t l2;
            const char *s2 = item_show(p, q, &l2);
            if (!p->items[q].proj && l2 == l && !memcmp(sh, s2, l)) cls[ni++] = q;
        }
        for (int q = 0; q < no; q++)
            if (o[q].len == l && !memcmp(d + o[q].pos, sh, l)) occs[nq++] = q;
        if (match_class(&c, cls, ni, o, occs, nq)) goto done;
    }

    // places: matched occurrences, the items the model dropped, the
    // projected pairs and the accelerator
    pl = malloc((size_t)(no + p->n_items + 2) * sizeof *pl);
    open = malloc((size_t)(p->n_items + 1) * sizeof *open);
    sa = malloc((size_t)(p->n_items + 1) * sizeof *sa);
    sb = malloc((size_t)(p->n_items + 1) * sizeof *sb);
    if (!pl || !open || !sa || !sb) goto done;
    for (int q = 0; q < no; q++) {
        if (o[q].item >= 0) {
            pl[np++] = (place){o[q].pos, PL_ITEM, 0, q, o[q].item, 0};
            continue;
        }
        int is_item = 0;
        for (int k = 0; k < p->n_items && !is_item; k++) {
            size_t l;
            const char *sh = item_show(p, k, &l);
            if (!p->items[k].proj && l == o[q].len && !memcmp(sh, d + o[q].pos, l)) {
                is_item = 1;
                warn_item(&c, "repeated by the model; the extra copy was removed", k);
            }
        }
        if (!is_item && warn)
            moa_buf_printf(warn, "'%.*s' made up by the model (no such placeholder in the "
                           "source); removed\n", (int)o[q].len, d + o[q].pos);
    }
    for (int k = 0; k < p->n_items; k++) {
        const moa_prot_item *it = &p->items[k];
        if (it->proj) {
            if (it->partner > k) open[npair++] = k;
            continue;
        }
        int found = 0;
        for (int q = 0; q < no && !found; q++) found = o[q].item == k;
        if (found) continue;
        int by_al;
        size_t at = boundary_for(&c, it->src_tok, rel_pos(p, it->mpos), &by_al);
        pl[np++] = (place){at, PL_ITEM, 1, -1, k, k};
        warn_item(&c, by_al ? "dropped by the model; put back where the attention points"
                            : "dropped by the model; put back at its relative position "
                              "(no alignment)", k);
    }
    for (int k = 0; k < npair; k++) {
        const moa_prot_item *it = &p->items[open[k]];
        if (pair_span(&c, open[k], &sa[k], &sb[k]) == 0) continue;
        // nothing aligned: around the word where its start would go
        int by_al;
        sa[k] = sb[k] = boundary_for(&c, it->tok_lo, rel_pos(p, it->mpos), &by_al);
        if (sa[k] < c.dn && d[sa[k]] == ' ') sa[k]++;
        sb[k] = sa[k];
        while (sb[k] < c.dn && d[sb[k]] != ' ') sb[k]++;
        while (sb[k] > sa[k] && ispunct((unsigned char)d[sb[k] - 1])) sb[k]--;
        warn_item(&c, "wraps no word the model's attention could find; put around the "
                      "word nearest its place", open[k]);
    }
    nest_spans(p, open, npair, sa, sb);
    qsort(pl, (size_t)np, sizeof *pl, by_place);

    // printf arguments keep their order; markup stays well nested
    if (reassign_in_order(p, pl, np, want_ordered) && warn)
        moa_buf_printf(warn, "printf conversions reordered by the model; put back in source "
                       "order\n");
    partner = malloc((size_t)(p->n_ph ? p->n_ph : 1) * sizeof *partner);
    if (!partner) goto done;
    {
        int *st = malloc((size_t)(p->n_ph ? p->n_ph : 1) * sizeof *st), top = 0;
        if (!st) goto done;
        for (int h = 0; h < p->n_ph; h++) {
            partner[h] = -1;
            if (p->ph[h].kind != MOA_PH_TAG) continue;
            if (p->ph[h].tag == MOA_TAG_OPEN) {
                st[top++] = h;
            } else if (p->ph[h].tag == MOA_TAG_CLOSE) {
                for (int k = top - 1; k >= 0; k--)
                    if (!strcmp(p->ph[st[k]].name, p->ph[h].name)) {
                        partner[h] = st[k];
                        partner[st[k]] = h;
                        top = k;
                        break;
                    }
            }
        }
        free(st);
        for (int k = 0; k < p->n_items; k++)  // projected pairs are nested by nest_spans
            if (p->items[k].proj) partner[p->items[k].ph0] = -1;
    }
    if (!tags_ok(p, pl, np, partner) && reassign_in_order(p, pl, np, want_tag) && warn)
        moa_buf_printf(warn, "markup reordered by the model; put back in source order to stay "
                       "well-formed\n");
    for (int k = 0; k < npair; k++) {
        // at one offset: closes (inner first), opens (outer first), and an
        // empty pair's close right after its open
        pl[np++] = (place){sa[k], PL_OPEN, 0, -1, open[k], 2 * k};
        pl[np++] = sb[k] > sa[k]
                       ? (place){sb[k], PL_CLOSE, 0, -1, p->items[open[k]].partner, npair - k}
                       : (place){sb[k], PL_OPEN, 0, -1, p->items[open[k]].partner, 2 * k + 1};
    }
    if (p->accel != SIZE_MAX) {
        size_t acc = accel_point(&c, o, no);
        if (acc == SIZE_MAX) {
            acc = 0;
            if (warn)
                moa_buf_printf(warn, "accelerator '%c' found no letter in the translation; put "
                               "at its start\n", p->text[p->accel]);
        }
        pl[np++] = (place){acc, PL_ACCEL, 0, -1, -1, 0};
    }
    qsort(pl, (size_t)np, sizeof *pl, by_place);

    // write it out
    size_t cur = 0;
    for (int k = 0; k <= np; k++) {
        size_t next = k < np ? pl[k].pos : c.dn;
        for (int q = 0; q < no; q++) {  // occurrences to delete before next
            if (o[q].item >= 0 || o[q].pos < cur || o[q].pos >= next) continue;
            size_t e = o[q].pos + o[q].len;
            put_text(&c, out, cur, o[q].pos);
            // one neighbouring space goes with it
            if ((o[q].pos == 0 || d[o[q].pos - 1] == ' ') && e < c.dn && d[e] == ' ') e++;
            else if (e == c.dn && out->n > base && out->s[out->n - 1] == ' ') out->s[--out->n] = 0;
            cur = e;
        }
        if (next > cur) {
            put_text(&c, out, cur, next);
            cur = next;
        }
        if (k == np) break;
        const place *x = &pl[k];
        if (x->kind == PL_ACCEL) {
            moa_buf_put(out, p->text + p->accel, 1);
            continue;
        }
        const moa_prot_item *it = &p->items[x->item];
        const char *sh = item_text && item_text[x->item] ? item_text[x->item] : p->text + it->off;
        size_t sl = item_text && item_text[x->item] ? item_len[x->item] : it->len;
        if (x->kind != PL_ITEM) {
            moa_buf_put(out, sh, sl);
            continue;
        }
        if (!x->insert) {
            moa_buf_put(out, sh, sl);
            if (cur < o[x->occ].pos + o[x->occ].len) cur = o[x->occ].pos + o[x->occ].len;
            continue;
        }
        // joined to a neighbour only where the source joins it to the same
        // kind of character ("%sWarning", "'%s'"); else spaced
        if (out->n > base) {
            int lc = class_before(out->s, base, out->n);
            if (lc && lc != it->left) moa_buf_put(out, " ", 1);
        }
        moa_buf_put(out, sh, sl);
        if (cur < c.dn && d[cur] == ' ') {
            int rc2 = class_at(d, cur + 1, c.dn);
            if (rc2 && rc2 == it->right) cur++;
        } else if (cur < c.dn) {
            int rc2 = class_at(d, cur, c.dn);
            if (rc2 && rc2 != it->right) moa_buf_put(out, " ", 1);
        }
    }
    rc = out->oom ? -1 : 0;
done:
    free(d);
    free(o);
    free(pl);
    free(cls);
    free(occs);
    free(partner);
    free(open);
    free(sa);
    free(sb);
    free(c.toff);
    free(c.align);
    return rc;
}
