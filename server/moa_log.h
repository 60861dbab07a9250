// moa_log.h — the server's log: leveled lines on stderr, text or JSON lines.
//
//     moa_log_init(MOA_LOG_INFO, 1);          // JSON lines
//     moa_log(MOA_LOG_WARN, "api keys: %s", msg);
//     moa_log_access(&rec);                   // one line per HTTP request
//
// Thread-safe: every line is written with one fwrite under a mutex, so lines
// from the HTTP threads, the scheduler and main never interleave. User text
// never reaches the log unless the caller puts it there (log_text option).
#ifndef MOA_LOG_H
#define MOA_LOG_H

#include <stdarg.h>

typedef enum {
    MOA_LOG_ERROR = 0,
    MOA_LOG_WARN = 1,
    MOA_LOG_INFO = 2,
    MOA_LOG_DEBUG = 3,
} moa_log_level;

// level: lines above it are dropped; json: 1 for JSON lines. Call once
// before threads start.
void moa_log_init(moa_log_level level, int json);
// Parses "error|warn|info|debug"; -1 when unknown.
int moa_log_parse_level(const char *s);
int moa_log_enabled(moa_log_level level);

__attribute__((format(printf, 2, 3)))
void moa_log(moa_log_level level, const char *fmt, ...);

// One access-log record (strings borrowed for the call).
typedef struct moa_access_rec {
    const char *request_id;
    const char *method;
    const char *path;
    int status;             // 499: the client went away before the answer
    int texts, sentences;   // sentences: units translated or found in the cache
    long src_tokens, tgt_tokens;
    double ms;
    const char *error;      // NULL, or the error message sent
    const char *text;       // NULL, or the user's first text (log_text only)
} moa_access_rec;

void moa_log_access(const moa_access_rec *r);

#endif
