// moa_errors.c — moa_strerror over the one error table (moa_errors.h).
#include "moa_errors.h"

const char *moa_strerror(int err) {
    switch (err) {
#define MOA_ERRNO_CASE(name, code, msg) \
    case code:                          \
        return msg;
        MOA_ERRNO_MAP(MOA_ERRNO_CASE)
#undef MOA_ERRNO_CASE
    }
    return "unknown error";
}
