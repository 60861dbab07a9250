// moa_http.h — the HTTP front end (libmicrohttpd): routing, request ids,
// limits checked from the headers, suspended /translate requests, the
// small endpoints, the access log and request metrics.
//
//     moa_http *h = moa_http_start(srv, err, sizeof err);   // listens at once
//     ...                                                   // srv->ready = 1 later
//     moa_http_stop(h);
//
// Threads: libmicrohttpd's own polling thread(s), http_threads of them.
// They parse, validate, tokenize and build answers; the model runs only on
// the scheduler thread. A /translate request is suspended
// (MHD_suspend_connection) while its job is with the scheduler, and the
// scheduler resumes it when the job is done, timed out or abandoned.
// Every answer carries X-Request-Id; every error body is {"error": "..."}.
#ifndef MOA_HTTP_H
#define MOA_HTTP_H

#include <stddef.h>

#include "moa_server.h"

typedef struct moa_http moa_http;

// Binds conf.listen:conf.port and starts serving. NULL with a message.
moa_http *moa_http_start(moa_server *srv, char *err, size_t errlen);
// Stops listening and closes every connection; call after the scheduler
// has handed back its jobs (moa_sched_stop). NULL is a no-op.
void moa_http_stop(moa_http *h);

#endif
