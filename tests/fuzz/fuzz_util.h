// fuzz_util.h — what the fuzz targets (tests/fuzz/fuzz_*.c) share: finding
// the repository's fixtures, a scratch directory, failing loudly.
//
//     static char root[4096];
//     fuzz_find_root(*argv[0], root, sizeof root);      // in LLVMFuzzerInitialize
//     char path[4200]; snprintf(path, sizeof path, "%s/" FUZZ_TINY, root);
//     FUZZ_CHECK(n >= 0);                                // an invariant: abort()
//
// A target is run by libFuzzer (make fuzz) or by tests/fuzz/replay.c over
// its corpus (make test-fuzz-replay), from the repository root or not.
#ifndef MOA_FUZZ_UTIL_H
#define MOA_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>

#define FUZZ_TINY "tests/fixtures/models/tiny-trained"

// A broken invariant is a finding like a crash: libFuzzer saves the input.
#define FUZZ_CHECK(c)                                                       \
    do {                                                                    \
        if (!(c)) {                                                         \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, \
                    __LINE__, #c);                                          \
            abort();                                                        \
        }                                                                   \
    } while (0)

// The repository root: the working directory when it holds the fixtures,
// else three levels above the binary (build/<mode>/fuzz/fuzz_x).
static inline void fuzz_find_root(const char *argv0, char *out, size_t n) {
    if (access(FUZZ_TINY "/config.json", R_OK) == 0) {
        snprintf(out, n, ".");
        return;
    }
    snprintf(out, n, "%s", argv0 ? argv0 : ".");
    for (int up = 0; up < 4; up++) {
        char *slash = strrchr(out, '/');
        if (!slash) {
            snprintf(out, n, ".");
            return;
        }
        *slash = 0;
    }
}

// A private scratch directory (RAM-backed /dev/shm when there is one):
// the file-based targets rewrite their files in it for every input.
static inline void fuzz_scratch_dir(const char *tag, char *out, size_t n) {
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(out, n, "%s/moa-fuzz-%s-XXXXXX", base, tag);
    if (!mkdtemp(out)) {
        perror("mkdtemp");
        abort();
    }
}

// Writes n bytes to path (created or truncated); aborts on an I/O error,
// which is the harness's, not a finding.
static inline void fuzz_write_file(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

// Finds the first NUL in [p, end): the parts of a fuzz input. Returns the
// part's end; *next is past the NUL (or end when there is none).
static inline const uint8_t *fuzz_part(const uint8_t *p, const uint8_t *end,
                                       const uint8_t **next) {
    const uint8_t *z = memchr(p, 0, (size_t)(end - p));
    if (!z) {
        *next = end;
        return end;
    }
    *next = z + 1;
    return z;
}

#endif
