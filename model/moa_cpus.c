// moa_cpus.c — usable CPUs: online cores, affinity mask, cgroup CPU quota.
#include "moa_cpus.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_BUF 4096

// --- small file helpers ---------------------------------------------------------

// Reads the first line of a small file into buf. 0, or -1 (missing/unreadable).
static int read_line(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *ok = fgets(buf, (int)n, f);
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\r\n")] = 0;
    return 0;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// --- quotas ------------------------------------------------------------------------

// cgroup v2 cpu.max: "QUOTA PERIOD" or "max PERIOD". CPUs, or 0 for none.
static double quota_v2(const char *dir) {
    char path[PATH_BUF], line[128];
    if (snprintf(path, sizeof path, "%s/cpu.max", dir) >= (int)sizeof path) return 0;
    if (read_line(path, line, sizeof line)) return 0;
    char *end;
    errno = 0;
    long long quota = strtoll(line, &end, 10);
    if (end == line || errno) return 0;    // "max" (or garbage): no limit
    long long period = strtoll(end, &end, 10);
    if (quota <= 0 || period <= 0) return 0;
    return (double)quota / (double)period;
}

// cgroup v1 cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. CPUs, or 0.
static double quota_v1(const char *dir) {
    char path[PATH_BUF], line[128];
    if (snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir) >= (int)sizeof path) return 0;
    if (read_line(path, line, sizeof line)) return 0;
    long long quota = strtoll(line, NULL, 10);
    if (snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir) >= (int)sizeof path) return 0;
    if (read_line(path, line, sizeof line)) return 0;
    long long period = strtoll(line, NULL, 10);
    if (quota <= 0 || period <= 0) return 0;
    return (double)quota / (double)period;
}

// The smallest quota of the cgroup at base+cg and of each cgroup above it,
// up to base itself (inside a container the membership path may name a
// cgroup of the host while base is already the container's own: then only
// base's file exists). 0 when none has a quota.
static double min_quota(const char *base, const char *cg, double (*quota)(const char *)) {
    char rel[PATH_BUF], dir[PATH_BUF];
    snprintf(rel, sizeof rel, "%s", cg);
    double best = 0;
    for (;;) {
        size_t n = strlen(rel);
        while (n > 0 && rel[n - 1] == '/') rel[--n] = 0;   // "/a/b/" -> "/a/b"
        if (snprintf(dir, sizeof dir, "%s%s", base, rel) < (int)sizeof dir) {
            double q = quota(dir);
            if (q > 0 && (best == 0 || q < best)) best = q;
        }
        if (n == 0) break;
        char *slash = strrchr(rel, '/');
        if (!slash) break;
        *slash = 0;
    }
    return best;
}

// Whether the comma-separated controller list names "cpu".
static int has_cpu_controller(const char *list) {
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 3 && !strncmp(p, "cpu", 3)) return 1;
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

// Reads the membership file: the v1 cpu controller's mount name and path,
// and the v2 path. Each is "" when absent.
static void read_membership(const char *proc_cgroup, char *v1_ctl, char *v1_path,
                            char *v2_path, size_t n) {
    v1_ctl[0] = v1_path[0] = v2_path[0] = 0;
    FILE *f = fopen(proc_cgroup, "r");
    if (!f) return;
    char line[PATH_BUF];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *c1 = strchr(line, ':');
        if (!c1) continue;
        char *c2 = strchr(c1 + 1, ':');
        if (!c2) continue;
        *c1 = *c2 = 0;
        const char *id = line, *ctl = c1 + 1, *path = c2 + 1;
        if (!strcmp(id, "0") && !*ctl) {
            snprintf(v2_path, n, "%s", path);
        } else if (has_cpu_controller(ctl) && !v1_ctl[0]) {
            snprintf(v1_ctl, n, "%s", ctl);
            snprintf(v1_path, n, "%s", path);
        }
    }
    fclose(f);
}

// --- public ------------------------------------------------------------------------

int moa_cpus_probe(const char *cgroup_root, const char *proc_cgroup, moa_cpu_info *out) {
    memset(out, 0, sizeof *out);
    const char *root = cgroup_root ? cgroup_root : "/sys/fs/cgroup";
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    out->online = online > 0 ? (int)online : 1;

    // Affinity: a set big enough for any online CPU number.
    int max_cpus = out->online > 1024 ? out->online * 2 : 1024;
    cpu_set_t *set = CPU_ALLOC(max_cpus);
    if (set) {
        size_t sz = CPU_ALLOC_SIZE(max_cpus);
        CPU_ZERO_S(sz, set);
        if (sched_getaffinity(0, sz, set) == 0) out->affinity = CPU_COUNT_S(sz, set);
        CPU_FREE(set);
    }

    char v1_ctl[PATH_BUF], v1_path[PATH_BUF], v2_path[PATH_BUF];
    read_membership(proc_cgroup ? proc_cgroup : "/proc/self/cgroup", v1_ctl, v1_path, v2_path,
                    PATH_BUF);
    if (v1_ctl[0]) {
        // The cpu controller is mounted as "cpu,cpuacct" (the membership
        // file's name) on most systems, with "cpu" as a link to it.
        const char *names[] = {v1_ctl, "cpu", "cpu,cpuacct", "cpuacct,cpu"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            char base[PATH_BUF];
            if (snprintf(base, sizeof base, "%s/%s", root, names[i]) >= (int)sizeof base ||
                !is_dir(base))
                continue;
            out->quota_cpus = min_quota(base, v1_path, quota_v1);
            if (out->quota_cpus > 0) out->cgroup_version = 1;
            break;
        }
    }
    if (out->quota_cpus == 0 && v2_path[0]) {
        // Unified hierarchy at the root, or beside v1 controllers at unified/.
        char base[PATH_BUF], probe[PATH_BUF];
        snprintf(base, sizeof base, "%s", root);
        snprintf(probe, sizeof probe, "%s/cgroup.controllers", root);
        if (!is_file(probe)) {
            snprintf(probe, sizeof probe, "%s/unified/cgroup.controllers", root);
            if (is_file(probe)) snprintf(base, sizeof base, "%s/unified", root);
        }
        out->quota_cpus = min_quota(base, v2_path, quota_v2);
        if (out->quota_cpus > 0) out->cgroup_version = 2;
    }

    int usable = out->online;
    if (out->affinity > 0 && out->affinity < usable) usable = out->affinity;
    if (out->quota_cpus > 0) {
        // Rounded up, as the JVM and Go do: 1.5 CPUs of quota keep 2 threads busy
        // part of the time rather than leaving half a CPU unused.
        double q = ceil(out->quota_cpus - 1e-9);
        if (q < usable) usable = (int)q;
    }
    out->usable = usable < 1 ? 1 : usable;
    return out->usable;
}
