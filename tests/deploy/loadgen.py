#!/usr/bin/python3
"""Steady, bounded load on POST /translate, with one action in the middle.

A few worker threads (stdlib http.client, keep-alive, reconnect on error) send
POST /translate back to back, each request with fresh texts (so no cache
answers it). The --action shell command (e.g. stop or kill one replica) runs
at --action-at seconds at the earliest, and only once the load has reached the
state the assertions need before it (--expect-servers-before replicas have
answered); the load then goes on for --duration seconds at least and until the
states needed after it are there too (--min-ok answers; --min-after answers to
requests started --settle s after the action ended). So a slow machine makes
the run longer, never fail; --max-wait (generous) ends a run whose state
never comes, as a failure. Every request is recorded: start, end, HTTP status
or exception, and the replica that answered (the balancer's X-Served-By
header: HAProxy's server name, or nginx's $upstream_addr, where "a, b" means
nginx tried a and then b).

Prints the counts, writes them as JSON (--json), and exits 1 when an
assertion fails:
  --max-failures N           client-visible failures (non-200, exceptions) at most N
  --min-ok N                 at least N successful requests
  --expect-servers-before N  at least N distinct replicas answered before the action
  --expect-servers-after N   exactly N distinct replicas answered the requests
                             started more than --settle s after the action ended
                             (at least --min-after of them)
  --expect-action-rc N       the action command's exit status
"""
import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.parse

WORDS = ("open save close delete rename copy move print export import file "
         "folder document image project settings account password user list "
         "selected all unused recent new old default current remote local "
         "server connection network message window tab view page item").split()


def make_text(rng, n):
    # sentences of 4-9 words; a counter keeps every text unique
    out = []
    for _ in range(n):
        k = rng.randint(4, 9)
        s = " ".join(rng.choice(WORDS) for _ in range(k))
        out.append(s[0].upper() + s[1:] + " " + str(rng.randint(0, 10**6)))
    return out


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.records = []  # (t0, t1, status:int|None, error:str|None, served_by)

    def add(self, rec):
        with self.lock:
            self.records.append(rec)


def worker(idx, args, host, port, path, stop, stats, t_zero):
    rng = random.Random(1000 + idx)
    conn = None
    while not stop.is_set():
        body = json.dumps({"text": make_text(rng, args.texts), "beam_size": args.beam}).encode()
        t0 = time.monotonic() - t_zero
        status, err, served = None, None, ""
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            served = resp.getheader("X-Served-By", "") or ""
            if status == 200:
                doc = json.loads(data)
                if len(doc.get("translations", [])) != args.texts:
                    status, err = -1, "wrong number of translations"
            else:
                err = data[:200].decode("utf-8", "replace")
            if resp.getheader("Connection", "").lower() == "close":
                conn.close(); conn = None
        except Exception as e:  # connection refused/reset, timeout, bad JSON
            err = "%s: %s" % (type(e).__name__, e)
            if conn is not None:
                conn.close()
            conn = None
        t1 = time.monotonic() - t_zero
        stats.add((t0, t1, status, err, served))
        if status != 200:
            time.sleep(0.05)  # a failing target should not be hammered
    if conn is not None:
        conn.close()


def final_server(served):
    # nginx: "127.0.0.1:1, 127.0.0.1:2" = tried 1, answered by 2
    return served.split(",")[-1].strip() if served else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="http://HOST:PORT/translate")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--texts", type=int, default=3, help="texts per request")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="per request: a bound for a broken balancer, not a latency limit")
    ap.add_argument("--action", default="", help="shell command run at --action-at at the earliest")
    ap.add_argument("--action-at", type=float, default=4.0)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--min-after", type=int, default=4,
                    help="with --expect-servers-after: answers to requests started after the settle")
    ap.add_argument("--max-wait", type=float, default=600.0,
                    help="the most seconds a wait for a state (before or after the action) may take")
    ap.add_argument("--label", default="load")
    ap.add_argument("--json", default="")
    ap.add_argument("--max-failures", type=int, default=0)
    ap.add_argument("--min-ok", type=int, default=1)
    ap.add_argument("--expect-servers-before", type=int, default=0)
    ap.add_argument("--expect-servers-after", type=int, default=0)
    ap.add_argument("--expect-action-rc", type=int, default=None)
    args = ap.parse_args()

    u = urllib.parse.urlsplit(args.url)
    host, port, path = u.hostname, u.port or 80, u.path or "/translate"
    stats, stop = Stats(), threading.Event()
    t_zero = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i, args, host, port, path, stop, stats, t_zero), daemon=True)
               for i in range(args.workers)]
    for t in threads:
        t.start()

    now = lambda: time.monotonic() - t_zero
    def snapshot():
        with stats.lock:
            return list(stats.records)
    def served_by(recs):
        return {final_server(r[4]) for r in recs if r[2] == 200}
    waits = []  # the states a run gave up waiting for

    action_t0 = action_t1 = None
    action_rc, action_out = None, ""
    if args.action:
        # the state the checks before the action need: the replicas answering
        limit = args.action_at + args.max_wait
        while now() < args.action_at or (
                args.expect_servers_before and
                len(served_by(snapshot())) < args.expect_servers_before):
            if now() >= limit:
                waits.append("%d replica(s) answering before the action" % args.expect_servers_before)
                break
            time.sleep(0.05)
        action_t0 = now()
        proc = subprocess.Popen(args.action, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    def enough():
        recs = snapshot()
        if now() < args.duration or sum(1 for r in recs if r[2] == 200) < args.min_ok:
            return False
        if not args.action:
            return True
        if action_rc is None:
            return False
        if args.expect_servers_after:
            settle_t = action_t1 + args.settle
            return sum(1 for r in recs if r[0] >= settle_t and r[2] == 200) >= args.min_after
        return True
    limit = None
    while not enough():
        time.sleep(0.05)
        if args.action and action_rc is None and proc.poll() is not None:
            action_rc, action_t1 = proc.returncode, now()
        if limit is None and (not args.action or action_rc is not None):
            limit = max(now(), args.duration) + args.max_wait
        if limit is not None and now() >= limit:
            waits.append("%d answers, and %d after the settle" % (args.min_ok, args.min_after))
            break
    stop.set()
    for t in threads:
        t.join(args.timeout + 5)
    if args.action and action_rc is None:
        try:
            proc.wait(timeout=args.max_wait)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
        action_rc, action_t1 = proc.returncode, time.monotonic() - t_zero
    if args.action:
        action_out = (proc.stdout.read() or "").strip()[-500:]

    recs = sorted(stats.records)
    ok = [r for r in recs if r[2] == 200]
    failed = [r for r in recs if r[2] != 200]
    lat = sorted(r[1] - r[0] for r in ok)
    pct = lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None
    errors = {}
    for r in failed:
        key = ("HTTP %d" % r[2]) if r[2] is not None and r[2] > 0 else (r[3] or "?").split(":")[0]
        errors[key] = errors.get(key, 0) + 1

    def servers(rs):
        c = {}
        for r in rs:
            if r[2] == 200:
                s = final_server(r[4])
                c[s] = c.get(s, 0) + 1
        return c

    summary = {
        "label": args.label, "workers": args.workers, "duration_s": args.duration,
        "requests": len(recs), "ok": len(ok), "failed": len(failed), "errors": errors,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        # nginx names every backend it tried ("a, b"); HAProxy only the last
        "retried_by_balancer": sum(1 for r in ok if "," in r[4]),
    }
    if args.action:
        inflight = [r for r in recs if r[0] < action_t0 < r[1]]
        settle_t = (action_t1 if action_t1 is not None else action_t0) + args.settle
        summary.update({
            "action": args.action, "action_at_s": round(action_t0, 2),
            "action_done_s": round(action_t1, 2) if action_t1 is not None else None,
            "action_rc": action_rc, "action_output": action_out,
            "in_flight_at_action": len(inflight),
            "in_flight_at_action_failed": sum(1 for r in inflight if r[2] != 200),
            "servers_before": servers([r for r in recs if r[1] < action_t0]),
            "servers_during": servers([r for r in recs if action_t0 <= r[0] < settle_t]),
            "servers_after": servers([r for r in recs if r[0] >= settle_t]),
        })
    else:
        summary["servers"] = servers(recs)

    problems = ["gave up after --max-wait %g s waiting for: %s" % (args.max_wait, w) for w in waits]
    if len(failed) > args.max_failures:
        problems.append("%d failed requests (at most %d allowed): %s; first: %s"
                        % (len(failed), args.max_failures, errors, failed[0][3]))
    if len(ok) < args.min_ok:
        problems.append("only %d successful requests (at least %d expected)" % (len(ok), args.min_ok))
    before = summary.get("servers_before", summary.get("servers", {}))
    if args.expect_servers_before and len(before) < args.expect_servers_before:
        problems.append("%d replica(s) answered before the action (%s), expected %d"
                        % (len(before), before, args.expect_servers_before))
    if args.expect_servers_after:
        after = summary.get("servers_after", {})
        if len(after) != args.expect_servers_after:
            problems.append("%d replica(s) answered after the action (%s), expected %d"
                            % (len(after), after, args.expect_servers_after))
    if args.expect_action_rc is not None and action_rc != args.expect_action_rc:
        problems.append("action exited %s (expected %d): %s" % (action_rc, args.expect_action_rc, action_out))
    summary["problems"] = problems

    summary["duration_s"] = round(now(), 1)
    line = ("[%s] %d requests in %.0f s (%d workers): %d ok, %d failed%s; latency p50 %s ms, p99 %s ms, max %s ms"
            % (args.label, len(recs), summary["duration_s"], args.workers, len(ok), len(failed),
               " %s" % errors if errors else "", summary["latency_ms"]["p50"], summary["latency_ms"]["p99"],
               summary["latency_ms"]["max"]))
    if summary["retried_by_balancer"]:
        line += "; answered after a retry (X-Served-By 'a, b'): %d" % summary["retried_by_balancer"]
    print(line)
    if args.action:
        print("[%s]   action at %.1f s (done at %s s, exit %s): %s"
              % (args.label, action_t0, summary["action_done_s"], action_rc, args.action))
        print("[%s]   in flight at the action: %d (failed: %d); replicas before %s, during %s, after %s"
              % (args.label, summary["in_flight_at_action"], summary["in_flight_at_action_failed"],
                 summary["servers_before"], summary["servers_during"], summary["servers_after"]))
    else:
        print("[%s]   replicas: %s" % (args.label, summary["servers"]))
    for p in problems:
        print("[%s] FAIL: %s" % (args.label, p))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
