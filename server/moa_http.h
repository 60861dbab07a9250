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
// the scheduler's compute workers. A /translate request is suspended
// (MHD_suspend_connection) while its job is with the scheduler; the job's
// completion callback (moa_sched.h) resumes it, and its handler maps the
// reason the job came back to the status: done 200, failed 500, deadline
// 504, stopped 503, cancelled 499 (closed without an answer); a refused
// submission: queue full 429 (with Retry-After), stopping 503. One more
// thread, the hang-up watcher, polls the sockets of the held requests every
// 20 ms and cancels (moa_sched_cancel) the jobs of clients that left.
// Every answer carries X-Request-Id; every error body is {"error": "..."}.
#ifndef MOA_HTTP_H
#define MOA_HTTP_H

#include <stddef.h>

#include "moa_server.h"

typedef struct moa_http moa_http;

// Binds conf.listen:conf.port and starts serving. NULL with a message.
moa_http *moa_http_start(moa_server *srv, char *err, size_t errlen);
// Stops the hang-up watcher, stops listening and closes every connection;
// call after the scheduler has handed back its jobs (moa_sched_stop) and
// before moa_sched_free. NULL is a no-op.
void moa_http_stop(moa_http *h);

#endif
