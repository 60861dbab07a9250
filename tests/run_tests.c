// run_tests.c — the one C test runner: every case in its own process.
//
//     tests/run_tests            run all
//     tests/run_tests loader     run the cases whose "table/name" contains "loader"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moa_test.h"

extern const moa_test_case moa_tests_kernels[];
extern const moa_test_case moa_tests_quant[];
extern const moa_test_case moa_tests_loader[];
extern const moa_test_case moa_tests_tokenizer[];
extern const moa_test_case moa_tests_engine[];
extern const moa_test_case moa_tests_search[];
extern const moa_test_case moa_tests_cpus[];
extern const moa_test_case moa_tests_sched[];
extern const moa_test_case moa_tests_utf8[];
extern const moa_test_case moa_tests_split[];
extern const moa_test_case moa_tests_protect[];
extern const moa_test_case moa_tests_moses[];
extern const moa_test_case moa_tests_bpe[];
extern const moa_test_case moa_tests_api[];

static const struct {
    const char *name;
    const moa_test_case *cases;
} tables[] = {
    {"kernels", moa_tests_kernels},   {"quant", moa_tests_quant},
    {"loader", moa_tests_loader},
    {"tokenizer", moa_tests_tokenizer}, {"engine", moa_tests_engine},
    {"search", moa_tests_search},     {"cpus", moa_tests_cpus},
    {"sched", moa_tests_sched},
    {"utf8", moa_tests_utf8},
    {"split", moa_tests_split},       {"protect", moa_tests_protect},
    {"moses", moa_tests_moses},
    {"bpe", moa_tests_bpe},
    {"api", moa_tests_api},
};

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    char tmpl[] = "/tmp/moa-test-XXXXXX";
    const char *tmp = getenv("MOA_TEST_TMP");
    if (!tmp) {
        tmp = mkdtemp(tmpl);
        if (!tmp) { perror("mkdtemp"); return 2; }
        setenv("MOA_TEST_TMP", tmp, 1);
    }
    int passed = 0, failed = 0;
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
        for (const moa_test_case *c = tables[t].cases; c->name; c++) {
            char full[256];
            snprintf(full, sizeof full, "%s/%s", tables[t].name, c->name);
            if (filter && !strstr(full, filter)) continue;
            fflush(stdout);
            pid_t pid = fork();
            if (pid < 0) { perror("fork"); return 2; }
            if (pid == 0) {
                c->fn();
                fflush(stdout);
                exit(0);  // not _exit: LeakSanitizer checks at exit
            }
            int st = 0;
            waitpid(pid, &st, 0);
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
                passed++;
                printf("ok     %s\n", full);
            } else {
                failed++;
                if (WIFSIGNALED(st))
                    printf("FAILED %s (signal %d)\n", full, WTERMSIG(st));
                else
                    printf("FAILED %s\n", full);
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
