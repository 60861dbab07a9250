// moa_utf8.c — UTF-8 checks (moa_utf8.h).
#include "moa_utf8.h"

int moa_utf8_len(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    unsigned c = s[0], min;
    int len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
    else return 0;
    if ((size_t)len > n) return 0;
    unsigned cp = c & (0x3F >> (len - 1));
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

// The same decisions as moa_utf8_len, but naming what is wrong: the
// tokenizer's messages (and so the server's 400s) quote the reason.
int moa_utf8_check(const char *text, size_t len, size_t *bad, const char **why_out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        const char *why = NULL;
        size_t need = 0;
        unsigned cp = 0, min = 0;
        if (c == 0) why = "NUL byte";
        else if (c < 0x80) { i++; continue; }
        else if (c < 0xC0) why = "unexpected continuation byte";
        else if (c < 0xE0) { need = 1; cp = c & 0x1F; min = 0x80; }
        else if (c < 0xF0) { need = 2; cp = c & 0x0F; min = 0x800; }
        else if (c < 0xF8) { need = 3; cp = c & 0x07; min = 0x10000; }
        else why = "byte that never occurs in UTF-8";
        for (size_t k = 1; !why && k <= need; k++) {
            if (i + k >= len || (s[i + k] & 0xC0) != 0x80)
                why = "truncated sequence";
            else
                cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (!why && cp < min) why = "overlong encoding";
        if (!why && cp >= 0xD800 && cp <= 0xDFFF) why = "UTF-16 surrogate";
        if (!why && cp > 0x10FFFF) why = "code point above U+10FFFF";
        if (why) {
            if (bad) *bad = i;
            if (why_out) *why_out = why;
            return -1;
        }
        i += need + 1;
    }
    return 0;
}

long moa_utf8_count(const char *str, size_t n, size_t *bad) {
    long chars = 0;
    for (size_t i = 0; i < n; chars++) {
        int l = str[i] ? moa_utf8_len(str + i, n - i) : 0;  // NUL: invalid here
        if (l == 0) {
            if (bad) *bad = i;
            return -1;
        }
        i += (size_t)l;
    }
    return chars;
}
