#!/usr/bin/python3
"""Soak test of moa-server: mixed traffic at a fixed concurrency for a long
time, sampling the server's memory and file descriptors (run by
bench/soak.sh; see bench/RESULTS.md, "Soak").

    /usr/bin/python3 bench/soak.py --server build/release/moa-server \
        --model weights/moa-en-de --minutes 30 --out bench/soak

The server runs with conf/moa-server.conf (heads on, timeout 60 s, ...),
max_queue raised so that a 5000-line request is taken while others wait, and
a cache of 1000 sentences (every text here is new: the cache fills within
the first window, then evicts; at the default 10000 it would still be filling
after it, and that growth would read as a leak). 32 client threads, each with one kind of traffic:

  24  normal: 1-6 fresh lines (cache misses), beam 4, back to back -> 200
   2  big: 5000 lines (50 texts of 100), back to back              -> 200 or 504
   2  slow: a small request whose body trickles in (a byte every
      2 s, keeping the connection active) until past the timeout   -> 504
   2  hang-up: 20-200 lines, then gone after 0.05-2 s, half of
      them with a reset, half with a plain close                   -> (no answer read)
   1  malformed: bad JSON, wrong types, wrong method, unknown
      path, wrong Content-Type, too large, bad UTF-8, beam 0,
      not HTTP                                                     -> its 4xx each
   1  poller: /heads, /metrics, /health, every 0.5 s              -> 200

Every 10 s: the server's RSS (VmRSS), its open file descriptors (sockets and
the rest), and the p99 latency of the normal requests that ended in those
10 s. Windows: the first and the last `--window` minutes (default: 5, or a
sixth of the run when shorter). Pass:
  - RSS: the largest RSS after the first window is less than 5% above the
    largest RSS in it (the server has seen every kind of request by then);
  - file descriptors: the non-socket descriptors never change, and the
    sockets in the last window stay within those of the first (+10%, +8);
  - statuses: every answer is one its kind expects;
  - server errors: no 500, no failed job, no error line in the log, exit 0
    on SIGTERM;
  - latency: p99 of the normal requests in the last window at most 1.5x
    that of the first.
Writes OUT/samples.tsv, OUT/summary.json, OUT/soak.png (python3-matplotlib),
OUT/summary.md (a section for bench/RESULTS.md); the server's log goes to
build/bench/soak/server.log.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The statuses each kind of traffic may get; anything else is a failure.
EXPECTED = {
    "normal": {200},
    "big": {200, 504},
    "slow": {504},
    "poll": {200},
}


def load_sentences() -> List[str]:
    for path in (os.path.join(REPO, "..", "shared", "corpus", "valid.en-de.tsv"),
                 "/work/shared/corpus/valid.en-de.tsv",
                 os.path.join(REPO, "tests", "fixtures", "sample.en-de.tsv")):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                out = [l.split("\t")[0].strip() for l in f]
            out = [s for s in out if s]
            if out:
                return out
    raise SystemExit("no sentences found")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sents = load_sentences()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = 0.0
        self.counter = 0
        # (t_end, kind, status or None, latency s, detail)
        self.records: List[Tuple[float, str, Optional[int], float, str]] = []
        self.bad: List[str] = []        # unexpected outcomes, with what happened
        self.samples: List[Dict[str, Any]] = []
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    # --- helpers ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def fresh(self, n: int, rng: random.Random) -> str:
        """n lines no cache has seen: a running number in each, spelled in
        letters (digits would be protected as a placeholder, so the cache
        key would not change with them)."""
        with self.lock:
            self.counter += 1
            k = self.counter
        return "\n".join(f"{rng.choice(self.sents)} ({letters(k * 1000 + i)})" for i in range(n))

    def record(self, kind: str, status: Optional[int], t_start: float, detail: str = "") -> None:
        t = self.now()
        with self.lock:
            self.records.append((t, kind, status, t - t_start, detail))
            if kind in EXPECTED and status not in EXPECTED[kind]:
                self.bad.append(f"{kind}: {status} {detail[:200]}")

    def post(self, body: Any, timeout: float = 600) -> Tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/translate", json.dumps(body).encode(),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def get(self, path: str) -> Tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    # --- the kinds of traffic ------------------------------------------------------------------

    def normal(self, i: int) -> None:
        rng = random.Random(i)
        while not self.stop.is_set():
            n = rng.randint(1, 6)
            text = self.fresh(n, rng)
            t = self.now()
            try:
                st, b = self.post({"text": text, "beam_size": 4})
                detail = "" if st == 200 else b.decode(errors="replace")
                if st == 200 and len(json.loads(b)["translatedText"].split("\n")) != n:
                    st, detail = -1, "wrong number of lines"
            except Exception as e:  # refused, reset, timeout: all failures
                st, detail = None, f"{type(e).__name__}: {e}"
            self.record("normal", st, t, detail)

    def big(self, i: int) -> None:
        rng = random.Random(100 + i)
        while not self.stop.is_set():
            texts = [self.fresh(100, rng) for _ in range(50)]
            t = self.now()
            try:
                st, b = self.post({"text": texts, "beam_size": 4})
                detail = "" if st == 200 else b.decode(errors="replace")
                if st == 200 and len(json.loads(b)["translatedText"]) != 50:
                    st, detail = -1, "wrong number of texts"
            except Exception as e:
                st, detail = None, f"{type(e).__name__}: {e}"
            self.record("big", st, t, detail)

    def slow(self, i: int) -> None:
        # The body trickles in, a byte every 2 s (the connection stays active
        # for the server's idle_timeout), until the server's timeout has
        # passed since the headers: the request is past its deadline when it
        # is complete, whatever the machine.
        rng = random.Random(200 + i)
        # after its headers, on this client's clock; the margin covers a server that
        # reads the request line late because a saturated CPU starves its HTTP
        # threads (seen: >5 s on one core shared by 32 clients and the server)
        wait = self.args.timeout * 1.5 + 5
        while not self.stop.is_set():
            # long enough to trickle for `wait` s (an unknown field is ignored)
            body = json.dumps({"text": self.fresh(2, rng), "pad": "." * int(wait / 2 + 10)}).encode()
            t = self.now()
            st, detail = None, ""
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=600)
                sock.sendall(b"POST /translate HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
                sent = 0
                while self.now() - t < wait and sent < len(body) - 1:
                    sock.sendall(body[sent:sent + 1])
                    sent += 1
                    time.sleep(2)
                sock.sendall(body[sent:])
                r = http.client.HTTPResponse(sock)
                r.begin()
                st, b = r.status, r.read()
                detail = b.decode(errors="replace")
                sock.close()
            except Exception as e:
                detail = f"{type(e).__name__}: {e}"
            self.record("slow", st, t, detail)

    def hangup(self, i: int) -> None:
        rng = random.Random(300 + i)
        while not self.stop.is_set():
            body = json.dumps({"text": self.fresh(rng.randint(20, 200), rng),
                               "beam_size": 4}).encode()
            t = self.now()
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=600)
                sock.sendall(b"POST /translate HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                time.sleep(rng.uniform(0.05, 2))
                how = "reset" if rng.random() < 0.5 else "close"
                if how == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                self.record("hangup", None, t, how)
            except Exception as e:
                self.record("hangup-error", None, t, f"{type(e).__name__}: {e}")
                with self.lock:
                    self.bad.append(f"hang-up client: {type(e).__name__}: {e}")
            self.stop.wait(rng.uniform(0.5, 2))

    @staticmethod
    def raw(method: str, path: str, body: bytes = b"", ctype: str = "application/json",
            length: Optional[int] = None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n"
        if method == "POST":
            head += (f"Content-Type: {ctype}\r\n"
                     f"Content-Length: {len(body) if length is None else length}\r\n")
        return head.encode() + b"\r\n" + body

    # (name, raw request, the statuses it may get; None: the server may also just close)
    MALFORMED = [
        ("bad JSON", raw.__func__("POST", "/translate", b'{"text": "a'), {400}),
        ("text not a string", raw.__func__("POST", "/translate", b'{"text": 5}'), {400}),
        ("wrong method", raw.__func__("GET", "/translate"), {405}),
        ("unknown path", raw.__func__("GET", "/nope"), {404}),
        ("wrong type", raw.__func__("POST", "/translate", b"text=hi", ctype="text/plain"), {415}),
        ("too large", raw.__func__("POST", "/translate", length=5000000), {413}),
        ("bad UTF-8", raw.__func__("POST", "/translate", b'{"text": "caf\xff"}'), {400}),
        ("beam 0", raw.__func__("POST", "/translate", b'{"text": "a", "beam_size": 0}'), {400}),
        ("not HTTP", b"HELLO THERE\r\n\r\n", {400, None}),
    ]

    def malformed(self, i: int) -> None:
        k = 0
        while not self.stop.is_set():
            name, raw, want = self.MALFORMED[k % len(self.MALFORMED)]
            k += 1
            t = self.now()
            st: Optional[int] = None
            detail = ""
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=600)
                sock.sendall(raw)
                r = http.client.HTTPResponse(sock)
                try:
                    r.begin()
                    st = r.status
                    b = r.read()
                    # every error but MHD's own (not HTTP at all) is a JSON {"error"}
                    if name != "not HTTP" and "error" not in json.loads(b):
                        st, detail = -1, "no JSON error body"
                except (http.client.RemoteDisconnected, ConnectionResetError) as e:
                    detail = f"closed: {e}"
                sock.close()
            except Exception as e:
                st, detail = -2, f"{type(e).__name__}: {e}"
            self.record("malformed", st, t, f"{name}: {detail}")
            if st not in want:
                with self.lock:
                    self.bad.append(f"malformed ({name}): {st} {detail[:200]}")
            self.stop.wait(0.2)

    def poll(self, i: int) -> None:
        paths = ["/heads", "/metrics", "/health", "/heads?format=text"]
        k = 0
        while not self.stop.is_set():
            t = self.now()
            path = paths[k % len(paths)]
            k += 1
            try:
                st, _ = self.get(path)
            except Exception as e:
                st = None
            self.record("poll", st, t, path)
            self.stop.wait(0.5)

    # --- the server and the samples ------------------------------------------------------------

    def start_server(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        os.makedirs(os.path.dirname(self.args.log), exist_ok=True)
        self.log = open(self.args.log, "wb")
        cmd = [self.args.server, "--config", os.path.join(REPO, "conf", "moa-server.conf"),
               "--model", self.args.model, "--listen", "127.0.0.1", "--port", str(self.port),
               "--timeout", str(self.args.timeout), "--max-queue", "100000",
               "--cache-size", str(self.args.cache_size)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                if self.get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("server not ready in 300 s")

    def sample(self) -> None:
        pid = self.proc.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])  # kB
        sockets = other = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:"):
                sockets += 1
            else:
                other += 1
        heap_in_use = heap_free = None
        sess: Dict[str, Optional[float]] = {k: None for k in SESSION_PARTS}
        try:
            m = self.get("/metrics")[1].decode()
            v = dict(re.findall(r'^moa_heap_bytes\{state="(\w+)"\} (\d+)$', m, re.M))
            if v:
                heap_in_use = round(int(v["in_use"]) / 2**20, 1)
                heap_free = round(int(v["free"]) / 2**20, 1)
            for part, val in re.findall(r'^moa_session_bytes\{part="(\w+)"\} (\d+)$', m, re.M):
                if part in sess:
                    sess[part] = round(int(val) / 2**20, 1)
        except (OSError, KeyError, ValueError):
            pass
        t = self.now()
        prev = self.samples[-1]["t"] if self.samples else 0.0
        with self.lock:
            lat = sorted(r[3] for r in self.records
                         if r[1] == "normal" and r[2] == 200 and prev <= r[0] < t)
        self.samples.append({"t": round(t, 1), "rss_mb": round(rss / 1024, 1),
                             "fds": sockets + other, "sockets": sockets, "other_fds": other,
                             "heap_in_use_mb": heap_in_use, "heap_free_mb": heap_free,
                             **{f"session_{k}_mb": v for k, v in sess.items()},
                             "normal_done": len(lat),
                             "p99_ms": round(1e3 * pct(lat, 0.99), 1) if lat else None})
        s = self.samples[-1]
        print(f"  {t / 60:5.1f} min  RSS {s['rss_mb']:7.1f} MB  heap {heap_in_use} MB in use, "
              f"{heap_free} MB free (sessions {sess['blocks_in_use']} + {sess['blocks_free']} MB blocks)  "
              f"fds {s['fds']:3d} "
              f"(sockets {sockets})  normal {len(lat):4d}  p99 {s['p99_ms']} ms", flush=True)

    def run(self) -> int:
        a = self.args
        self.start_server()
        self.t0 = time.monotonic()
        kinds = ([(self.normal, a.concurrency - 8), (self.big, 2), (self.slow, 2),
                  (self.hangup, 2), (self.malformed, 1), (self.poll, 1)])
        threads = [threading.Thread(target=fn, args=(i,), daemon=True)
                   for fn, n in kinds for i in range(n)]
        print(f"soak: {a.minutes:g} min, {len(threads)} clients, server {a.server} on port "
              f"{self.port}, model {a.model}, timeout {a.timeout:g} s", flush=True)
        self.sample()
        for t in threads:
            t.start()
        end = a.minutes * 60
        while self.now() < end:
            time.sleep(min(10.0, max(0.0, 10.0 - (self.now() % 10.0))))
            if self.proc.poll() is not None:
                with self.lock:
                    self.bad.append(f"the server exited with {self.proc.returncode}")
                break
            self.sample()
        self.stop.set()
        # the clients finish what they started (bounded: a big request, a slow one)
        for t in threads:
            t.join(a.timeout + 120)
        metrics = ""
        try:
            metrics = self.get("/metrics")[1].decode()
        except OSError as e:
            self.bad.append(f"/metrics at the end: {e}")
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        else:
            rc = self.proc.returncode
        self.log.close()
        return self.report(metrics, rc)

    # --- the verdict -------------------------------------------------------------------------

    def report(self, metrics: str, rc: Optional[int]) -> int:
        a = self.args
        W = a.window * 60
        end = self.samples[-1]["t"]
        first = [s for s in self.samples if s["t"] <= W]
        later = [s for s in self.samples if s["t"] > W]
        last = [s for s in self.samples if s["t"] >= end - W]
        def lat(t_from: float, t_to: float) -> List[float]:
            return sorted(r[3] for r in self.records
                          if r[1] == "normal" and r[2] == 200 and t_from <= r[0] <= t_to)
        p99_first = pct(lat(0, W), 0.99)
        p99_last = pct(lat(end - W, end), 0.99)
        rss_first = max(s["rss_mb"] for s in first)
        rss_later = max((s["rss_mb"] for s in later), default=rss_first)
        growth = rss_later / rss_first - 1
        others = {s["other_fds"] for s in self.samples}
        sock_first = max(s["sockets"] for s in first)
        sock_last = max(s["sockets"] for s in last)
        counts: Dict[str, Dict[str, int]] = {}
        for r in self.records:
            c = counts.setdefault(r[1], {})
            key = str(r[2]) if r[1] not in ("hangup",) else r[4]
            c[key] = c.get(key, 0) + 1
        m500 = sum(float(v) for k, v in re.findall(
            r'^moa_http_requests_total\{[^}]*status="500"\} (\S+)$', metrics, re.M))
        failed = sum(float(v) for v in re.findall(
            r'^moa_scheduler_jobs_total\{reason="failed"\} (\S+)$', metrics, re.M))
        jobs = {k: int(float(v)) for k, v in re.findall(
            r'^moa_scheduler_jobs_total\{reason="([^"]+)"\} (\S+)$', metrics, re.M)}
        with open(a.log, errors="replace") as f:
            error_lines = [l.rstrip() for l in f if re.match(r"^\S+ error ", l)]
        checks = [
            ("RSS after the first window", growth < 0.05,
             f"largest {rss_later:.1f} MB after it vs {rss_first:.1f} MB in it: "
             f"{100 * growth:+.1f}% (limit +5%)"),
            ("file descriptors flat", len(others) == 1 and
             sock_last <= max(sock_first * 1.1, sock_first + 8),
             f"non-socket fds {sorted(others)}; sockets at most {sock_first} in the first "
             f"window, {sock_last} in the last"),
            ("statuses as expected", not self.bad,
             f"{len(self.bad)} unexpected" + (f": {self.bad[:5]}" if self.bad else "")),
            ("no server errors", m500 == 0 and failed == 0 and not error_lines and rc == 0,
             f"500s {m500:.0f}, failed jobs {failed:.0f}, error log lines {len(error_lines)}"
             f"{': ' + error_lines[0] if error_lines else ''}, exit status {rc}"),
            ("p99 of normal requests", p99_last <= 1.5 * p99_first,
             f"last window {1e3 * p99_last:.0f} ms vs first {1e3 * p99_first:.0f} ms: "
             f"{p99_last / p99_first if p99_first else 0:.2f}x (limit 1.5x)"),
        ]
        ok = all(c[1] for c in checks)
        summary = {
            "minutes": a.minutes, "window_minutes": a.window, "concurrency": a.concurrency,
            "model": a.model, "timeout_s": a.timeout, "pass": ok,
            "checks": [{"name": n, "pass": p, "detail": d} for n, p, d in checks],
            "counts": counts, "scheduler_jobs": jobs,
            "normal_latency_ms": {"p50_first": round(1e3 * pct(lat(0, W), 0.5), 1),
                                  "p99_first": round(1e3 * p99_first, 1),
                                  "p50_last": round(1e3 * pct(lat(end - W, end), 0.5), 1),
                                  "p99_last": round(1e3 * p99_last, 1)},
            "rss_mb": {"start": self.samples[0]["rss_mb"], "first_window_max": rss_first,
                       "after_max": rss_later, "end": self.samples[-1]["rss_mb"]},
        }
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(a.out, "samples.tsv"), "w") as f:
            cols = ["t", "rss_mb", "heap_in_use_mb", "heap_free_mb",
                    *[f"session_{k}_mb" for k in SESSION_PARTS], "fds", "sockets",
                    "other_fds", "normal_done", "p99_ms"]
            f.write("\t".join(cols) + "\n")
            for s in self.samples:
                f.write("\t".join("" if s[c] is None else str(s[c]) for c in cols) + "\n")
        plot(self.samples, W, os.path.join(a.out, "soak.png"), a)
        md = markdown(summary, checks, a)
        with open(os.path.join(a.out, "summary.md"), "w") as f:
            f.write(md)
        print(md)
        return 0 if ok else 1


# moa_session_bytes{part=...} (the engine sessions' heap), sampled with the rest
SESSION_PARTS = ("arena", "blocks_in_use", "blocks_free")


def letters(k: int) -> str:
    """k in base 26, a-z: a word that is new for every k."""
    out = ""
    while True:
        out = chr(ord("a") + k % 26) + out
        k //= 26
        if k == 0:
            return "x" + out


def pct(xs: List[float], p: float) -> float:
    if not xs:
        return 0.0
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def plot(samples: List[Dict[str, Any]], W: float, path: str, a: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t"] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    ax1.plot(t, [s["rss_mb"] for s in samples], color="tab:blue", label="RSS")
    for key, color, label in (("heap_in_use_mb", "tab:green", "heap in use"),
                              ("heap_free_mb", "tab:orange", "heap freed, kept by malloc"),
                              ("session_blocks_in_use_mb", "tab:purple",
                               "sessions: sentence blocks in use"),
                              ("session_blocks_free_mb", "tab:gray",
                               "sessions: blocks kept for reuse")):
        pts = [(x, s[key]) for x, s in zip(t, samples) if s.get(key) is not None]
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], color=color, label=label)
    ax1.legend(loc="lower right", fontsize="small")
    ax1.set_ylabel("MB")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    pts = [(x, s["p99_ms"]) for x, s in zip(t, samples) if s["p99_ms"] is not None]
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red", marker=".")
    ax2.set_ylabel("p99, normal requests (ms)")
    ax2.set_xlabel("minutes")
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.axvspan(0, W / 60, color="0.9")
        ax.axvspan(t[-1] - W / 60, t[-1], color="0.9")
    fig.suptitle(f"moa-server soak: {a.minutes:g} min, {a.concurrency} clients "
                 f"(shaded: the windows compared), sampled every 10 s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def markdown(summary: Dict[str, Any], checks: List[Tuple[str, bool, str]],
             a: argparse.Namespace) -> str:
    out = [f"Soak: {a.minutes:g} minutes, {a.concurrency} clients, windows of "
           f"{a.window:g} min; model `{a.model}`; **{'PASS' if summary['pass'] else 'FAIL'}**", "",
           "| check | result | detail |", "| --- | --- | --- |"]
    for n, p, d in checks:
        out.append(f"| {n} | {'pass' if p else 'FAIL'} | {d} |")
    out.append("")
    c = summary["counts"]
    def fmt(k: str) -> str:
        return ", ".join(f"{s}: {n}" for s, n in sorted(c.get(k, {}).items()))
    out.append("Requests: " + "; ".join(f"{k} ({fmt(k)})" for k in
                                       ("normal", "big", "slow", "hangup", "malformed", "poll")
                                       if k in c))
    out.append("")
    out.append(f"Scheduler: {summary['scheduler_jobs']}; normal-request latency "
               f"{summary['normal_latency_ms']}; RSS {summary['rss_mb']} MB")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.path.join(REPO, "build", "release", "moa-server"))
    p.add_argument("--model", default=os.path.join(REPO, "weights", "moa-en-de"))
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--window", type=float, default=0,
                   help="minutes compared at the start and the end (0: min(5, minutes/6))")
    p.add_argument("--timeout", type=float, default=60, help="the server's timeout, s")
    p.add_argument("--cache-size", type=int, default=1000,
                   help="the server's cache: every text here is new, so the cache only fills "
                        "and evicts; small enough to be full within the first window, so its "
                        "filling is not taken for growth")
    p.add_argument("--concurrency", type=int, default=32,
                   help="clients in all: 8 of the other kinds, the rest normal")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "soak"))
    p.add_argument("--log", default=os.path.join(REPO, "build", "bench", "soak", "server.log"))
    a = p.parse_args()
    if os.path.abspath(a.model).startswith(REPO + os.sep):
        a.model = os.path.relpath(os.path.abspath(a.model), REPO)  # as the results name it
    if not a.window:
        a.window = min(5.0, a.minutes / 6)
    return Soak(a).run()


if __name__ == "__main__":
    sys.exit(main())
