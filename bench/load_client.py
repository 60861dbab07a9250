#!/usr/bin/python3
"""Load client for bench/load.sh: C concurrent keep-alive connections, each
sending one-sentence POST /translate requests, until N requests are done.

    load_client.py --port 8080 --concurrency 32 --requests 500 --sentences FILE

Prints one JSON line: requests, failed, seconds, sentences/s, latency
mean/p50/p95/p99 in ms. Loopback only. Python threads: at most a few thousand
requests per second, far above what the model serves, so the client is not
the bottleneck for this model; the numbers are those of the server.
"""
import argparse
import http.client
import json
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--sentences", required=True, help="one sentence a line")
    p.add_argument("--offset", type=int, default=0, help="first sentence to use")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    sents = [l.rstrip("\n") for l in open(a.sentences, encoding="utf-8") if l.strip()]
    lock = threading.Lock()
    state = {"next": 0, "failed": 0}
    lat = []

    def worker() -> None:
        conn = None
        while True:
            with lock:
                i = state["next"]
                if i >= a.requests:
                    break
                state["next"] += 1
            body = json.dumps({"text": sents[(a.offset + i) % len(sents)],
                               "beam_size": a.beam}).encode()
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=a.timeout)
                conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except OSError:
                ok = False
                conn = None
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    state["failed"] += 1
        if conn:
            conn.close()

    t0 = time.perf_counter()
    th = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    secs = time.perf_counter() - t0
    lat.sort()

    def pct(q: float) -> float:
        return 1e3 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    print(json.dumps({"concurrency": a.concurrency, "requests": a.requests,
                      "failed": state["failed"], "seconds": secs,
                      "sentences_per_s": len(lat) / secs if secs > 0 else 0,
                      "mean_ms": 1e3 * sum(lat) / len(lat) if lat else float("nan"),
                      "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}))


if __name__ == "__main__":
    main()
