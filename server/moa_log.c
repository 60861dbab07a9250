// moa_log.c — leveled log lines and the access log (see moa_log.h).
#include "moa_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static moa_log_level g_level = MOA_LOG_INFO;
static int g_json;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void moa_log_init(moa_log_level level, int json) {
    g_level = level;
    g_json = json;
}

int moa_log_parse_level(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0) return i;
    if (strcmp(s, "warning") == 0) return MOA_LOG_WARN;
    return -1;
}

int moa_log_enabled(moa_log_level level) { return level <= g_level; }

// --- a small growable line buffer ------------------------------------------------

// Log lines are bounded so a pathological message cannot exhaust memory;
// a line that does not fit is cut and ends with "...".
#define LOG_LINE_MAX 4096

typedef struct line_buf {
    char s[LOG_LINE_MAX + 8];
    size_t n;
} line_buf;

static void lb_putc(line_buf *b, char c) {
    if (b->n < LOG_LINE_MAX) b->s[b->n++] = c;
}

static void lb_puts(line_buf *b, const char *s) {
    while (*s) lb_putc(b, *s++);
}

__attribute__((format(printf, 2, 0)))
static void lb_vprintf(line_buf *b, const char *fmt, va_list ap) {
    size_t room = LOG_LINE_MAX - b->n;
    int w = vsnprintf(b->s + b->n, room + 1, fmt, ap);
    if (w < 0) return;
    b->n += (size_t)w < room ? (size_t)w : room;
}

__attribute__((format(printf, 2, 3)))
static void lb_printf(line_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lb_vprintf(b, fmt, ap);
    va_end(ap);
}

// A JSON string body (no quotes); control bytes escaped, other bytes as is
// (the callers pass valid UTF-8 or ASCII).
static void lb_json_str(line_buf *b, const char *s) {
    lb_putc(b, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            lb_putc(b, '\\');
            lb_putc(b, (char)c);
        } else if (c < 0x20) {
            char tmp[8];
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            lb_puts(b, tmp);
        } else {
            lb_putc(b, (char)c);
        }
    }
    lb_putc(b, '"');
}

static void lb_time(line_buf *b) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    lb_printf(b, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
              tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
              ts.tv_nsec / 1000000);
}

static void lb_emit(line_buf *b) {
    if (b->n >= LOG_LINE_MAX) {
        b->n = LOG_LINE_MAX;
        memcpy(b->s + b->n, "...", 3);
        b->n += 3;
        if (g_json) b->s[b->n++] = '"';  // keep JSON lines parseable-ish
    }
    b->s[b->n++] = '\n';
    pthread_mutex_lock(&g_mu);
    fwrite(b->s, 1, b->n, stderr);
    fflush(stderr);
    pthread_mutex_unlock(&g_mu);
}

// --- public ------------------------------------------------------------------------

void moa_log(moa_log_level level, const char *fmt, ...) {
    if (level > g_level) return;
    line_buf *b = malloc(sizeof *b);
    if (!b) return;
    b->n = 0;
    char msg[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_json) {
        lb_puts(b, "{\"time\":\"");
        lb_time(b);
        lb_printf(b, "\",\"level\":\"%s\",\"msg\":", level_names[level]);
        lb_json_str(b, msg);
        lb_putc(b, '}');
    } else {
        lb_time(b);
        lb_printf(b, " %-5s %s", level_names[level], msg);
    }
    lb_emit(b);
    free(b);
}

void moa_log_access(const moa_access_rec *r) {
    if (MOA_LOG_INFO > g_level) return;
    line_buf *b = malloc(sizeof *b);
    if (!b) return;
    b->n = 0;
    if (g_json) {
        lb_puts(b, "{\"time\":\"");
        lb_time(b);
        lb_puts(b, "\",\"level\":\"info\",\"type\":\"access\",\"request_id\":");
        lb_json_str(b, r->request_id ? r->request_id : "");
        lb_puts(b, ",\"method\":");
        lb_json_str(b, r->method ? r->method : "");
        lb_puts(b, ",\"path\":");
        lb_json_str(b, r->path ? r->path : "");
        lb_printf(b, ",\"status\":%d,\"texts\":%d,\"sentences\":%d,"
                  "\"src_tokens\":%ld,\"tgt_tokens\":%ld,\"ms\":%.1f",
                  r->status, r->texts, r->sentences, r->src_tokens,
                  r->tgt_tokens, r->ms);
        if (r->error) {
            lb_puts(b, ",\"error\":");
            lb_json_str(b, r->error);
        }
        if (r->text) {
            lb_puts(b, ",\"text\":");
            lb_json_str(b, r->text);
        }
        lb_putc(b, '}');
    } else {
        lb_time(b);
        lb_printf(b, " access %s %s %s %d texts=%d sentences=%d tokens=%ld/%ld "
                  "ms=%.1f", r->request_id ? r->request_id : "-",
                  r->method ? r->method : "-", r->path ? r->path : "-",
                  r->status, r->texts, r->sentences, r->src_tokens,
                  r->tgt_tokens, r->ms);
        if (r->error) {
            lb_puts(b, " error=");
            lb_json_str(b, r->error);
        }
        if (r->text) {
            lb_puts(b, " text=");
            lb_json_str(b, r->text);
        }
    }
    lb_emit(b);
    free(b);
}
