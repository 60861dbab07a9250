// fuzz_conf.c — moa-server's settings (server/moa_conf.h): the config file,
// command-line flags and MOA_* variables, all three fuzzed at once.
//
// Input: three parts separated by NUL bytes:
//   1. the config file's content (written to a scratch file, always passed
//      as --config, so the repository's conf/moa-server.conf is never read);
//   2. command-line arguments, one a line;
//   3. variables, one "NAME=VALUE" a line, set as MOA_NAME.
// Whatever names a config file (--config X, --config=X, MOA_CONFIG) is
// pointed at the scratch file: a fuzzed path could name a FIFO or a device
// and hang the run. Every MOA_* variable is cleared after each input.
//
// Checked: the return value is 1, 0 or -1, and with 0 every setting is in
// its documented range (moa_conf.c's table and moa_conf_load's rules).
#include <fcntl.h>

#include "fuzz_util.h"
#include "moa_conf.h"

extern char **environ;

static char conf_path[4200];
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char dir[4096];
    fuzz_scratch_dir("conf", dir, sizeof dir);
    snprintf(conf_path, sizeof conf_path, "%s/moa-server.conf", dir);
    devnull = fopen("/dev/null", "w");
    if (!devnull) abort();
    return 0;
}

// Unsets every MOA_* variable (the harness's and any left by an input).
static void clear_env(void) {
    for (;;) {
        char name[256];
        int found = 0;
        for (char **e = environ; *e; e++)
            if (!strncmp(*e, "MOA_", 4)) {
                const char *eq = strchr(*e, '=');
                size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
                if (n >= sizeof name) n = sizeof name - 1;
                memcpy(name, *e, n);
                name[n] = 0;
                found = 1;
                break;
            }
        if (!found) return;
        if (unsetenv(name) != 0) abort();
    }
}

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *end = data + size, *next;
    const uint8_t *file_end = fuzz_part(data, end, &next);
    fuzz_write_file(conf_path, data, (size_t)(file_end - data));

    // arguments: a copy of part 2, cut at its line breaks
    const uint8_t *args = next, *args_end = fuzz_part(args, end, &next);
    size_t an = (size_t)(args_end - args);
    char *abuf = malloc(an + 1);
    if (!abuf) return 0;
    memcpy(abuf, args, an);
    abuf[an] = 0;
    char *argv[MAX_ARGS + 4];
    int argc = 0;
    argv[argc++] = "moa-server";
    argv[argc++] = "--config";
    argv[argc++] = conf_path;
    for (char *line = abuf; argc < MAX_ARGS + 3;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (*line || nl) argv[argc++] = line;
        if (!nl) break;
        line = nl + 1;
    }
    char *redirect = NULL;  // "--config=<scratch>" for a fuzzed --config=X
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            argv[++i] = conf_path;
        } else if (!strncmp(argv[i], "--config=", 9)) {
            if (!redirect && asprintf(&redirect, "--config=%s", conf_path) < 0) abort();
            argv[i] = redirect;
        }
    }
    argv[argc] = NULL;

    // variables: MOA_<name>=<value>
    const uint8_t *env = next, *env_end = fuzz_part(env, end, &next);
    size_t en = (size_t)(env_end - env);
    char *ebuf = malloc(en + 1);
    if (!ebuf) abort();
    memcpy(ebuf, env, en);
    ebuf[en] = 0;
    for (char *line = ebuf; *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        char *eq = strchr(line, '=');
        if (eq && eq > line) {
            *eq = 0;
            char name[300];
            snprintf(name, sizeof name, "MOA_%.250s", line);
            if (!strcmp(name, "MOA_CONFIG")) setenv(name, conf_path, 1);
            else setenv(name, eq + 1, 1);  // EINVAL for odd names: just not set
        }
        if (!nl) break;
        line = nl + 1;
    }

    // --help, --version and --print-config write to stdout
    fflush(stdout);
    int saved = dup(1);
    dup2(fileno(devnull), 1);
    moa_conf c;
    int rc = moa_conf_load(&c, argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);

    FUZZ_CHECK(rc == 0 || rc == 1 || rc == -1);
    if (rc == 0) {
        FUZZ_CHECK(c.port >= 1 && c.port <= 65535);
        FUZZ_CHECK(c.http_threads >= 1 && c.http_threads <= 64);
        FUZZ_CHECK(c.max_inflight >= 1 && c.max_inflight <= 4096);
        int workers = moa_conf_compute_workers(&c);
        FUZZ_CHECK(workers >= 1);
        FUZZ_CHECK(c.max_batch_rows / workers >= 16 && c.max_batch_rows <= 65536);
        FUZZ_CHECK(workers == 1 || c.compute_threads <= 1);
        FUZZ_CHECK(moa_conf_blas_threads(&c) >= 1);
        FUZZ_CHECK(c.max_body >= 1024 && c.timeout >= 0.01 && c.timeout <= 86400);
        FUZZ_CHECK(c.split_tokens >= 8 && c.cache_size >= 0 && c.log_level >= 0 &&
                   c.log_level <= 3);
        FUZZ_CHECK(memchr(c.listen, 0, sizeof c.listen) && memchr(c.model, 0, sizeof c.model));
        FUZZ_CHECK(memchr(c.api_keys_file, 0, sizeof c.api_keys_file));
        moa_conf_print(&c, devnull);  // every value printable
    }
    clear_env();
    free(redirect);
    free(ebuf);
    free(abuf);
    return 0;
}
