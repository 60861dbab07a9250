// failalloc.h — fails the Nth heap allocation, for the allocation-failure
// tests (tests/oom/test_oom.c).
//
//     failalloc_arm(7);          // the 7th allocation from now returns NULL
//     ... the call under test ...
//     int hit = failalloc_fired(); long seen = failalloc_seen();
//     failalloc_disarm();        // everything allocates again
//
// A binary gets it by linking failalloc.c with
//     -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,
//         --wrap=posix_memalign,--wrap=strdup,--wrap=strndup
// (make test-oom): every call to those from the objects linked in (libmoa,
// the server's modules, the test) then goes through the counter. Calls
// inside shared libraries (libc itself, OpenBLAS, SentencePiece's operator
// new) are not counted; cJSON's are once its hooks call malloc from an
// object linked in (moa_api_init does).
// FAILALLOC_TRACE=1 in the environment prints the stack of each failing
// allocation (ASan builds). One failure per arming: after it, allocations succeed again, as they
// would once memory is back. Counters are atomic; arming is not meant to
// race with other threads allocating.
#ifndef MOA_FAILALLOC_H
#define MOA_FAILALLOC_H

void failalloc_arm(long nth);
void failalloc_disarm(void);
int failalloc_fired(void);      // the armed allocation was reached (and failed)
long failalloc_seen(void);      // allocations counted since arming

#endif
