// test_protect.c — placeholder, markup and accelerator protection.
#include "moa_protect.h"
#include "moa_test.h"
const moa_test_case moa_tests_protect[] = {
    {NULL, NULL},
};
