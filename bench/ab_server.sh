#!/usr/bin/env bash
# bench/ab_server.sh — two moa-server binaries (before and after a change)
# under the same fixed load, interleaved A B A B ...: N one-sentence requests
# at concurrency C (Python threads, keep-alive), cache off. Prints per run
# the wall seconds and the server's CPU seconds (utime + stime of its
# process, from /proc), medians and the ratio B/A, and whether every answer
# is the same. CPU seconds per served request are what a change to the
# server's work shows; they barely move when other jobs share the machine.
# Not a test: it prints numbers.
#
#   bench/ab_server.sh OLD_SERVER NEW_SERVER [MODEL_DIR]
#
# Env: N (800 requests), C (32), WORKERS (2 compute workers), BEAM (4),
# ROUNDS (3), MOA_CORPUS (../shared/corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: bench/ab_server.sh OLD_SERVER NEW_SERVER [MODEL_DIR]}
B=${2:?usage: bench/ab_server.sh OLD_SERVER NEW_SERVER [MODEL_DIR]}
MODEL=${3:-weights/moa-en-de}
export AB_N=${N:-800} AB_C=${C:-32} AB_BEAM=${BEAM:-4} AB_ROUNDS=${ROUNDS:-3}
export AB_WORKERS=${WORKERS:-2} AB_MODEL=$MODEL AB_CORPUS=${MOA_CORPUS:-../shared/corpus}
exec /usr/bin/python3 - "$A" "$B" <<'EOF'
import concurrent.futures as cf, http.client, json, os, socket, statistics, subprocess, sys, time

A, B = sys.argv[1], sys.argv[2]
N, C, BEAM = int(os.environ["AB_N"]), int(os.environ["AB_C"]), int(os.environ["AB_BEAM"])
ROUNDS, WORKERS = int(os.environ["AB_ROUNDS"]), os.environ["AB_WORKERS"]
MODEL, CORPUS = os.environ["AB_MODEL"], os.environ["AB_CORPUS"]
src = [l.split("\t")[0] for l in open(os.path.join(CORPUS, "valid.en-de.tsv"), encoding="utf-8")]
texts = [src[i % len(src)] for i in range(N)]
tick = os.sysconf("SC_CLK_TCK")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def run(binary):
    port = free_port()
    p = subprocess.Popen([binary, "--config", os.devnull, "--model", MODEL, "--port", str(port),
                          "--listen", "127.0.0.1", "--cache-size", "0", "--timeout", "600"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, MOA_COMPUTE_WORKERS=WORKERS))
    try:
        for _ in range(6000):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/ready"); ok = c.getresponse().status == 200; c.close()
                if ok: break
            except OSError:
                pass
            time.sleep(0.01)
        cpu0 = cpu_seconds(p.pid)
        def worker(idx):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            out = []
            for i in idx:
                c.request("POST", "/translate", json.dumps({"text": texts[i], "beam_size": BEAM}),
                          {"Content-Type": "application/json"})
                r = c.getresponse(); body = r.read()
                out.append((i, r.status, json.loads(body).get("translatedText")))
            c.close()
            return out
        t0 = time.time()
        with cf.ThreadPoolExecutor(C) as ex:
            res = [x for part in ex.map(worker, [range(k, N, C) for k in range(C)]) for x in part]
        wall = time.time() - t0
        cpu = cpu_seconds(p.pid) - cpu0
    finally:
        p.terminate(); p.wait(60)
    bad = sum(1 for _, st, _ in res if st != 200)
    return wall, cpu, bad, dict((i, t) for i, _, t in res)

print(f"A = {A}\nB = {B}\nmodel {MODEL}, {N} requests of one sentence, concurrency {C}, beam {BEAM}, "
      f"{WORKERS} workers, {ROUNDS} rounds; load {open('/proc/loadavg').read().split()[:3]}")
times = {"A": [], "B": []}
answers = {}
for r in range(ROUNDS):
    for tag, b in (("A", A), ("B", B)):
        wall, cpu, bad, ans = run(b)
        times[tag].append((wall, cpu))
        answers[tag] = ans
        print(f"  round {r + 1} {tag}: wall {wall:.2f} s ({N / wall:.0f} req/s), server cpu {cpu:.2f} s"
              f" ({1000 * cpu / N:.2f} ms/request), non-200: {bad}", flush=True)
mw = {t: statistics.median(w for w, _ in v) for t, v in times.items()}
mc = {t: statistics.median(c for _, c in v) for t, v in times.items()}
print(f"median wall: A {mw['A']:.2f} s, B {mw['B']:.2f} s, B/A {mw['B'] / mw['A']:.3f}")
print(f"median server cpu: A {mc['A']:.2f} s, B {mc['B']:.2f} s, B/A {mc['B'] / mc['A']:.3f}")
print("answers:", "identical" if answers["A"] == answers["B"] else "DIFFERENT")
EOF
