// moa_api.h — POST /translate: request parsing and validation, cutting texts
// into units, cache look-ups, and the JSON answer.
//
//     moa_tr *tr; int status; char err[512];
//     status = moa_api_translate_parse(srv, ctype, auth, body, n, &tr, err, sizeof err);
//     if (status) -> answer {"error": err} with that status (tr is NULL)
//     if (moa_tr_waiting(tr)) -> set the job's owner, on_done and deadline,
//                                suspend, moa_sched_submit (moa_http.c)
//     ... when the job is back (or had nothing to compute):
//     cJSON *out = moa_api_translate_answer(srv, tr, err, sizeof err);
//     moa_tr_free(tr);
//
// Runs on the HTTP threads: it tokenizes and detokenizes (the tokenizer is
// thread-safe) but never runs the model. The field list, defaults and limits
// are in server/README.md and spec §6.
#ifndef MOA_API_H
#define MOA_API_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "moa_sched.h"
#include "moa_server.h"

typedef struct moa_tr moa_tr;

// Routes cJSON's allocations through this module (cJSON_InitHooks), so that
// a body refused for want of memory answers 500 "out of memory" rather
// than 400 "malformed JSON". Once, at start-up, before any thread.
void moa_api_init(void);

// Parses a /translate body. ctype: the Content-Type header (may be NULL);
// auth: the Authorization header (may be NULL). Returns 0 and *out, or an
// HTTP status (400, 403, 415, 500; 503 with no model loaded) with the message in err.
int moa_api_translate_parse(moa_server *srv, const char *ctype, const char *auth,
                            const char *body, size_t n, moa_tr **out, char *err,
                            size_t errlen);

// The scheduler job of the request (units from the cache are already DONE).
moa_job *moa_tr_job(moa_tr *tr);
// Units still to compute (0: answer at once).
int moa_tr_waiting(const moa_tr *tr);

// Builds the answer once every unit is DONE (caller deletes), caching what
// was computed. NULL with err on failure (out of memory, detokenizer error).
cJSON *moa_api_translate_answer(moa_server *srv, moa_tr *tr, double t_start, char *err,
                                size_t errlen);

// Figures for the access log.
typedef struct moa_tr_counts {
    int texts, sentences;
    long src_tokens, tgt_tokens;
} moa_tr_counts;
void moa_tr_get_counts(const moa_tr *tr, moa_tr_counts *c);
// Units (sentences and pieces) the request was cut into.
int moa_tr_units(const moa_tr *tr);
// The first text (for log_text), or NULL.
const char *moa_tr_first_text(const moa_tr *tr);

void moa_tr_free(moa_tr *tr);  // NULL is a no-op

// Body of GET /languages (LibreTranslate's shape).
cJSON *moa_api_languages(moa_server *srv);

// 1 when the key is configured (or no keys are); thread-safe.
int moa_api_key_ok(moa_server *srv, const char *key);
// (Re)reads api_keys_file; 0 or -1 with a message logged (keeps the old list).
int moa_api_keys_load(moa_server *srv);

#endif
