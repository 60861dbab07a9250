// moa_web.h — the browser pages (server/web/) built into the binary.
//
//     const moa_web_asset *a = moa_web_find(path);        // "/" or "/static/NAME"
//     if (!a && wants the dashboard) a = moa_web_heads_page();
//     int status;
//     struct MHD_Response *resp = moa_web_response(a, if_none_match, &status);
//     ... add X-Request-Id, queue with status (200, or 304 when the ETag matched) ...
//
// The files of server/web/ are turned into a C array at build time
// (server/web/embed.sh, run by the Makefile), each with its content type and
// an ETag (a hash of its bytes): nothing is read from disk at run time, and
// a new build changes exactly the ETags of the files that changed. The pages
// only call the public endpoints (/translate, /languages, /heads, ...), so
// they go through the same limits and keys as any other client.
// Everything here is read-only after start: thread-safe.
#ifndef MOA_WEB_H
#define MOA_WEB_H

#include <stddef.h>

struct MHD_Response;

typedef struct moa_web_asset {
    const char *name;           // file name in server/web/
    const char *ctype;          // Content-Type
    const unsigned char *data;
    size_t len;
    const char *etag;           // quoted strong ETag
} moa_web_asset;

// Defined by the generated file (build/MODE/server/moa_web_assets.c).
extern const moa_web_asset moa_web_assets[];
extern const int moa_web_n_assets;

// The asset a path names: "/" is the translate page, "/static/NAME" a
// non-HTML file of server/web/. NULL for anything else.
const moa_web_asset *moa_web_find(const char *path);

// The /heads dashboard (GET /heads when a browser asks for HTML).
const moa_web_asset *moa_web_heads_page(void);

// 1 when the Accept header prefers HTML: it names text/html and not
// application/json (a browser navigating; API clients keep getting JSON).
int moa_web_accepts_html(const char *accept);

// 1 when an If-None-Match header (a list of ETags, W/ ones included, or *)
// matches etag.
int moa_web_etag_match(const char *if_none_match, const char *etag);

// The response for a (non-NULL) asset: 304 with no body when if_none_match
// (may be NULL) matches its ETag, else 200 with the bytes. Headers: Content-
// Type, ETag, Cache-Control (revalidate every time: the names do not change
// between builds), nosniff, and for HTML a Content-Security-Policy that
// allows only this server's own scripts, styles and requests. *status is set.
// NULL on out of memory; the caller queues and destroys it.
struct MHD_Response *moa_web_response(const moa_web_asset *a, const char *if_none_match,
                                      int *status);

#endif
