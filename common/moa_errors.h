// moa_errors.h — the error codes every moa-serve library returns.
//
// Usage:
//
//     int rc = moa_tokenizer_encode(tok, text, len, 1, &ids, &n, err, sizeof err);
//     if (rc == MOA_ETOOLONG) ...;                         // one code, one meaning
//     if (rc < 0) fprintf(stderr, "%s: %s\n", moa_strerror(rc), err);
//
// Functions return 0 on success or one of these negative codes, and write the
// details (file, position, value) into a caller-supplied buffer. The engine
// (model/moa_model.h) and the tokenizer (tokenizer/moa_tokenizer.h) share
// the table, so a caller tells their failures apart the same way.
#ifndef MOA_ERRORS_H
#define MOA_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

#define MOA_ERRNO_MAP(XX)                                                    \
    XX(OK, 0, "success")                                                     \
    XX(EINVAL, -1, "invalid argument")                                       \
    XX(ENOMEM, -2, "out of memory")                                          \
    XX(EIO, -3, "cannot read file")                                          \
    XX(EFORMAT, -4, "malformed model")                                       \
    XX(ETOOLONG, -5, "sequence longer than the model allows")                \
    XX(EFULL, -6, "session is full")                                         \
    XX(ENOTFOUND, -7, "no such entry")

typedef enum {
#define MOA_ERRNO_ENUM(name, code, msg) MOA_##name = (code),
    MOA_ERRNO_MAP(MOA_ERRNO_ENUM)
#undef MOA_ERRNO_ENUM
} moa_errno;

// Returns a static string for an error code (never NULL; "unknown error"
// for a code not in the table). Thread-safe.
const char *moa_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif
