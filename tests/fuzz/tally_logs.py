#!/usr/bin/python3
"""Adds up the libFuzzer runs of tests/fuzz/run_fuzz.sh: one row per target
with the number of runs, executions (libFuzzer's own count), fuzzing time,
executions per second and the last coverage (cov: edges, ft: features)
each run reported, from the logs it kept (build/fuzz/logs/<target>-*.log).

    /usr/bin/python3 tests/fuzz/tally_logs.py [LOG_DIR ...]   # default build/fuzz/logs

A run that stopped on a crash is counted up to the crash and marked.
Prints a Markdown table (tests/fuzz/README.md, "Results").
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict, List

STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
UNITS = re.compile(r"^stat::number_of_executed_units:\s*(\d+)")
TIME = re.compile(r"^Done \d+ runs in (\d+) second")
CRASH = re.compile(r"^==\d+==ERROR|^SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|libFuzzer)")


def tally(dirs: List[str]) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if not name.endswith(".log") or "-" not in name:
                continue
            target = name.split("-", 1)[0]
            execs = secs = 0
            cov = ft = None
            crashed = False
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = STATUS.match(line)
                    if m:
                        execs = max(execs, int(m.group(1)))
                        cov, ft = int(m.group(2)), int(m.group(3))
                    m = UNITS.match(line)
                    if m:
                        execs = max(execs, int(m.group(1)))
                    m = TIME.match(line)
                    if m:
                        secs = int(m.group(1))
                    if CRASH.match(line):
                        crashed = True
            t = out.setdefault(target, {"runs": 0, "execs": 0, "secs": 0, "timed": 0,
                                        "cov": 0, "ft": 0, "crashes": 0})
            t["runs"] += 1
            t["execs"] += execs
            if secs:
                t["secs"] += secs
                t["timed"] += execs
            t["crashes"] += crashed
            if cov is not None:  # the newest log's coverage (names sort by time)
                t["cov"], t["ft"] = cov, ft
    return out


def main() -> int:
    dirs = sys.argv[1:] or ["build/fuzz/logs"]
    rows = tally([d for d in dirs if os.path.isdir(d)])
    print("| target | runs | executions | seconds (runs that ended) | exec/s | cov | ft | runs stopped by a crash |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for target, t in sorted(rows.items()):
        rate = f"{t['timed'] / t['secs']:,.0f}" if t["secs"] else "—"
        print(f"| `{target}` | {t['runs']} | {t['execs']:,} | {t['secs']:,} | {rate} | "
              f"{t['cov']} | {t['ft']} | {t['crashes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
