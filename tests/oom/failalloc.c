// failalloc.c — see failalloc.h.
#include "failalloc.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/common_interface_defs.h>
#endif

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

static atomic_long target;  // 0: disarmed
static atomic_long seen;
static atomic_int fired;

void failalloc_arm(long nth) {
    atomic_store(&seen, 0);
    atomic_store(&fired, 0);
    atomic_store(&target, nth);
}

void failalloc_disarm(void) { atomic_store(&target, 0); }
int failalloc_fired(void) { return atomic_load(&fired); }
long failalloc_seen(void) { return atomic_load(&seen); }

// 1 when this allocation is the one to fail.
static int fail_now(void) {
    long t = atomic_load(&target);
    if (t <= 0) return 0;
    if (atomic_fetch_add(&seen, 1) + 1 != t) return 0;
    atomic_store(&fired, 1);
    atomic_store(&target, 0);
#ifdef __SANITIZE_ADDRESS__
    // FAILALLOC_TRACE=1: where the failing allocation is (debugging a sweep)
    if (getenv("FAILALLOC_TRACE")) __sanitizer_print_stack_trace();
#endif
    return 1;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return fail_now() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t align, size_t n) {
    return fail_now() ? NULL : __real_aligned_alloc(align, n);
}
int __wrap_posix_memalign(void **p, size_t align, size_t n) {
    return fail_now() ? 12 /* ENOMEM */ : __real_posix_memalign(p, align, n);
}
char *__wrap_strdup(const char *s) { return fail_now() ? NULL : __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { return fail_now() ? NULL : __real_strndup(s, n); }
