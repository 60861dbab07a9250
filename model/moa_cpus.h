// moa_cpus.h — how many CPUs this process may really use.
//
//     moa_cpu_info ci;
//     moa_cpus_probe(NULL, NULL, &ci);     // the real /sys/fs/cgroup, /proc/self/cgroup
//     int workers = ci.usable;             // e.g. 2 in a container limited to 2 CPUs
//
// The number of online cores (sysconf) is what the host has, not what the
// process gets: a container limited to 2 CPUs on a 64-core host still sees
// 64. Like the JVM and the Go runtime, the answer here is the smallest of
//   - the online cores,
//   - the CPUs in the affinity mask (sched_getaffinity: taskset, cpusets,
//     Kubernetes' static CPU manager),
//   - the CPU quota of the process' cgroup and of each cgroup above it,
//     rounded up: cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max"), or cgroup v1
//     `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1: none),
// and at least 1. Docker's `--cpus 2`, Kubernetes' CPU limit and systemd's
// CPUQuota= all set that quota.
//
// Reads a few small files; no global state, thread-safe.
#ifndef MOA_CPUS_H
#define MOA_CPUS_H

typedef struct moa_cpu_info {
    int online;          // sysconf(_SC_NPROCESSORS_ONLN), at least 1
    int affinity;        // CPUs in the affinity mask; 0 if it could not be read
    double quota_cpus;   // cgroup quota / period in CPUs; 0: no quota found
    int cgroup_version;  // 1 or 2 where a quota was read, else 0
    int usable;          // min(online, affinity, ceil(quota)), at least 1
} moa_cpu_info;

// Fills *out. cgroup_root: where the cgroup filesystem is mounted (NULL:
// "/sys/fs/cgroup"); proc_cgroup: the process' cgroup membership file (NULL:
// "/proc/self/cgroup"). Tests point both at files of their own. A file that
// is missing or unreadable means "no limit from it", never an error.
// Returns out->usable.
int moa_cpus_probe(const char *cgroup_root, const char *proc_cgroup, moa_cpu_info *out);

#endif
