// test_cpus.c — usable CPUs from the affinity mask and fake cgroup trees
// (model/moa_cpus.h). Each case runs in its own process, so changing the
// affinity mask here touches nothing else.
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moa_cpus.h"
#include "moa_test.h"

// --- a fake cgroup filesystem under MOA_TEST_TMP ----------------------------------

static char root[512];

static void mkdirs(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(buf, 0755);
        *p = '/';
    }
    mkdir(buf, 0755);
}

static void put(const char *rel, const char *text) {
    char path[1024], dir[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    mkdirs(dir);
    FILE *f = fopen(path, "w");
    ASSERT_TRUE(f != NULL);
    fputs(text, f);
    fclose(f);
}

static const char *fresh_root(const char *name) {
    const char *tmp = getenv("MOA_TEST_TMP");
    snprintf(root, sizeof root, "%s/cpus-%s-%d", tmp ? tmp : "/tmp", name, (int)getpid());
    mkdirs(root);
    return root;
}

// Two calls may share one expression: each gets its own buffer.
static const char *at(const char *rel) {
    static char bufs[2][1024];
    static int next;
    char *b = bufs[next++ & 1];
    snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
    return b;
}

static int online(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

// --- cases -----------------------------------------------------------------------------

// No cgroup files at all: the affinity mask (all online CPUs here) decides.
static void test_no_cgroup_files(void) {
    fresh_root("none");
    moa_cpu_info ci;
    int n = moa_cpus_probe(at("fs"), at("missing-proc-cgroup"), &ci);
    ASSERT_EQ_INT(ci.online, online());
    ASSERT_TRUE(ci.affinity >= 1);
    ASSERT_EQ_INT(ci.quota_cpus, 0);
    ASSERT_EQ_INT(ci.cgroup_version, 0);
    ASSERT_EQ_INT(n, ci.affinity < ci.online ? ci.affinity : ci.online);
    ASSERT_EQ_INT(ci.usable, n);
}

// cgroup v2: a container limited to 1.5 CPUs (docker --cpus 1.5) gets 2; a
// parent's tighter quota wins over the child's; "max" is no limit.
static void test_cgroup_v2_quota(void) {
    fresh_root("v2");
    put("fs/cgroup.controllers", "cpu io memory pids\n");
    put("proc", "0::/kubepods/pod1/ctr\n");
    put("fs/kubepods/pod1/ctr/cpu.max", "max 100000\n");
    put("fs/kubepods/pod1/cpu.max", "150000 100000\n");
    put("fs/kubepods/cpu.max", "max 100000\n");
    moa_cpu_info ci;
    int n = moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_EQ_INT(ci.cgroup_version, 2);
    ASSERT_NEAR(ci.quota_cpus, 1.5, 1e-12);
    int want = 2 < ci.online ? 2 : ci.online;
    if (ci.affinity > 0 && ci.affinity < want) want = ci.affinity;
    ASSERT_EQ_INT(n, want);

    // A tighter limit further down the tree.
    put("fs/kubepods/pod1/ctr/cpu.max", "100000 100000\n");
    n = moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_NEAR(ci.quota_cpus, 1.0, 1e-12);
    ASSERT_EQ_INT(n, 1);

    // Every level "max": no quota.
    put("fs/kubepods/pod1/ctr/cpu.max", "max 100000\n");
    put("fs/kubepods/pod1/cpu.max", "max 100000\n");
    moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_EQ_INT(ci.quota_cpus, 0);
    ASSERT_EQ_INT(ci.cgroup_version, 0);
}

// cgroup v2 inside a container's own namespace: the membership is "/" and the
// limit sits at the root of the mount.
static void test_cgroup_v2_namespace_root(void) {
    fresh_root("v2ns");
    put("fs/cgroup.controllers", "cpu\n");
    put("fs/cpu.max", "200000 100000\n");
    put("proc", "0::/\n");
    moa_cpu_info ci;
    moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_NEAR(ci.quota_cpus, 2.0, 1e-12);
    ASSERT_TRUE(ci.usable <= 2);
}

// cgroup v1 (Docker on older hosts): cpu,cpuacct mount, quota -1 = none at
// the host's level, 250000/100000 = 2.5 -> 3 in the container; the membership
// names a host path that does not exist inside the container's mount.
static void test_cgroup_v1_quota(void) {
    fresh_root("v1");
    put("proc", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/system.slice\n");
    put("fs/cpu,cpuacct/cpu.cfs_quota_us", "250000\n");
    put("fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    moa_cpu_info ci;
    int n = moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_EQ_INT(ci.cgroup_version, 1);
    ASSERT_NEAR(ci.quota_cpus, 2.5, 1e-12);
    int want = ci.online < 3 ? ci.online : 3;
    if (ci.affinity > 0 && ci.affinity < want) want = ci.affinity;
    ASSERT_EQ_INT(n, want);

    // No quota (-1): nothing limits.
    put("fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_EQ_INT(ci.quota_cpus, 0);
    // The container's own cgroup directory when it exists (cgroupns=host with
    // the host's tree mounted): its quota counts too.
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n");
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    n = moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_NEAR(ci.quota_cpus, 0.5, 1e-12);
    ASSERT_EQ_INT(n, 1);   // at least 1
}

// Garbage in the files is no limit, never a crash or a zero.
static void test_cgroup_garbage(void) {
    fresh_root("junk");
    put("fs/cgroup.controllers", "cpu\n");
    put("fs/cpu.max", "lots of cpus\n");
    put("proc", "garbage line\n::\n0::/\n");
    moa_cpu_info ci;
    int n = moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_EQ_INT(ci.quota_cpus, 0);
    ASSERT_TRUE(n >= 1);
    put("fs/cpu.max", "0 100000\n");
    moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_EQ_INT(ci.quota_cpus, 0);
}

// The affinity mask: pinned to one CPU, one is usable whatever the host has.
static void test_affinity_mask(void) {
    fresh_root("aff");
    cpu_set_t set;
    CPU_ZERO(&set);
    ASSERT_EQ_INT(sched_getaffinity(0, sizeof set, &set), 0);
    int first = -1;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set)) { first = i; break; }
    ASSERT_TRUE(first >= 0);
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    ASSERT_EQ_INT(sched_setaffinity(0, sizeof set, &set), 0);
    moa_cpu_info ci;
    int n = moa_cpus_probe(at("fs"), at("missing"), &ci);
    ASSERT_EQ_INT(ci.affinity, 1);
    ASSERT_EQ_INT(n, 1);
    // Mask and quota together: the smaller wins (here the mask).
    put("fs/cgroup.controllers", "cpu\n");
    put("fs/cpu.max", "400000 100000\n");
    put("proc", "0::/\n");
    n = moa_cpus_probe(at("fs"), at("proc"), &ci);
    ASSERT_NEAR(ci.quota_cpus, 4.0, 1e-12);
    ASSERT_EQ_INT(n, 1);
}

const moa_test_case moa_tests_cpus[] = {
    {"no_cgroup_files", test_no_cgroup_files},
    {"cgroup_v2_quota", test_cgroup_v2_quota},
    {"cgroup_v2_namespace_root", test_cgroup_v2_namespace_root},
    {"cgroup_v1_quota", test_cgroup_v1_quota},
    {"cgroup_garbage", test_cgroup_garbage},
    {"affinity_mask", test_affinity_mask},
    {NULL, NULL},
};
