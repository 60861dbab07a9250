// moa_web.c — serving the built-in pages (see moa_web.h).
#include "moa_web.h"

#include <ctype.h>
#include <microhttpd.h>
#include <string.h>
#include <strings.h>

#define STATIC_PREFIX "/static/"

// The pages load only their own files and talk only to this server; inline
// scripts and style attributes are refused, so injected markup cannot run.
static const char csp[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

static const moa_web_asset *by_name(const char *name) {
    for (int i = 0; i < moa_web_n_assets; i++)
        if (!strcmp(moa_web_assets[i].name, name)) return &moa_web_assets[i];
    return NULL;
}

static int is_html(const moa_web_asset *a) { return !strncmp(a->ctype, "text/html", 9); }

const moa_web_asset *moa_web_find(const char *path) {
    if (!strcmp(path, "/")) return by_name("index.html");
    if (strncmp(path, STATIC_PREFIX, strlen(STATIC_PREFIX))) return NULL;
    const moa_web_asset *a = by_name(path + strlen(STATIC_PREFIX));
    // the pages have their own paths; one URL per document
    return a && !is_html(a) ? a : NULL;
}

const moa_web_asset *moa_web_heads_page(void) { return by_name("heads.html"); }

// The n bytes at s without spaces and tabs at either end: the new start,
// *n the new length.
static const char *trim(const char *s, size_t *n) {
    while (*n && (*s == ' ' || *s == '\t')) s++, (*n)--;
    while (*n && (s[*n - 1] == ' ' || s[*n - 1] == '\t')) (*n)--;
    return s;
}

// 1 when the Accept list names type: a media range equal to it (case
// aside) whose q is not 0 ("q=0" means "not this one").
static int names_type(const char *s, const char *type) {
    size_t tn = strlen(type);
    while (*s) {
        size_t item = strcspn(s, ",");  // one entry: "text/html;q=0.9"
        size_t rn = strcspn(s, ";,"), n = rn;
        const char *range = trim(s, &n);
        int match = n == tn && !strncasecmp(range, type, tn);
        for (size_t i = rn; match && i < item;) {  // at a ';': its parameters
            i++;
            size_t pn = strcspn(s + i, ";,"), m = pn;  // ends within the entry
            const char *par = trim(s + i, &m);
            if (m > 2 && (par[0] == 'q' || par[0] == 'Q') && par[1] == '=' &&
                strspn(par + 2, "0.") >= m - 2)
                match = 0;
            i += pn;
        }
        if (match) return 1;
        s += item;
        if (*s == ',') s++;
    }
    return 0;
}

int moa_web_accepts_html(const char *accept) {
    return accept && names_type(accept, "text/html") && !names_type(accept, "application/json");
}

int moa_web_etag_match(const char *inm, const char *etag) {
    size_t n = strlen(etag);
    while (inm && *inm) {
        while (*inm == ' ' || *inm == '\t' || *inm == ',') inm++;
        if (!*inm) break;
        if (*inm == '*') return 1;
        if (!strncmp(inm, "W/", 2)) inm += 2;  // weak comparison, as for GET
        size_t len = strcspn(inm, ",");
        while (len && isspace((unsigned char)inm[len - 1])) len--;
        if (len == n && !memcmp(inm, etag, n)) return 1;
        inm += strcspn(inm, ",");
    }
    return 0;
}

struct MHD_Response *moa_web_response(const moa_web_asset *a, const char *if_none_match,
                                      int *status) {
    int fresh = moa_web_etag_match(if_none_match, a->etag);
    struct MHD_Response *resp =
        fresh ? MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT)
              : MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (!resp) return NULL;
    *status = fresh ? 304 : 200;
    MHD_add_response_header(resp, "ETag", a->etag);
    // may be stored, but must be revalidated (If-None-Match: cheap 304s)
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    if (fresh) return resp;
    MHD_add_response_header(resp, "Content-Type", a->ctype);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (is_html(a)) {
        MHD_add_response_header(resp, "Content-Security-Policy", csp);
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    }
    return resp;
}
