#!/usr/bin/env bash
# bench/load.sh — moa-server under load: continuous batching on vs off, and
# the offline CLI on the same sentences, in one run. Not a test: it prints
# numbers (record them in bench/RESULTS.md). Loopback only; bounded time per
# level; the translation cache is off so every request reaches the model.
# The load comes from wrk (C, one event-loop thread, bench/load.lua), so the
# client takes little of the cores the server is measured on.
#
#   bench/load.sh [MODEL_DIR]
#
# MODEL_DIR: weights/moa-en-de when present, else the tiny test model.
# Sentences: the sources of valid.en-de.tsv (MOA_CORPUS, default
# ../shared/corpus; falls back to tests/fixtures/sample.en-de.tsv).
# Env: N (sentences, 400: the requests cycle through them), DURATION (s per
#      level, 10), CONC ("1 8 32 64"),
#      WORKERS (cores to use, default all: the batching server runs that many
#      compute workers with one OpenBLAS thread each, the no-batching server
#      one session with that many OpenBLAS threads, the offline CLI that many
#      workers), BEAM (4), MAX_INFLIGHT (batching mode, 64).
# Example of a quick check: N=20 DURATION=2 CONC="1 8" bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
SERVER=build/release/moa-server
CLI=build/release/moa-translate
CORPUS=${MOA_CORPUS:-../shared/corpus}
N=${N:-400}
DURATION=${DURATION:-10}
CONC=${CONC:-"1 8 32 64"}
WORKERS=${WORKERS:-$(nproc)}
BEAM=${BEAM:-4}
MAX_INFLIGHT=${MAX_INFLIGHT:-64}
OUT=build/bench/load
mkdir -p "$OUT"
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "bench/load.sh needs wrk: apt-get install wrk"; exit 1
  fi
fi
make -s all >/dev/null

MODEL=${1:-}
if [ -z "$MODEL" ]; then
  if [ -f weights/moa-en-de/config.json ]; then MODEL=weights/moa-en-de
  else MODEL=tests/fixtures/models/tiny-trained; fi
fi
TSV=$CORPUS/valid.en-de.tsv
[ -f "$TSV" ] || TSV=tests/fixtures/sample.en-de.tsv
cut -f1 "$TSV" | grep -v '^[[:space:]]*$' > "$OUT/src.txt"
TOTAL=$(wc -l < "$OUT/src.txt")
echo "model $MODEL; the first $N sentences of $TSV; $DURATION s per level (wrk); beam $BEAM;" \
     "$WORKERS worker cores of $(nproc); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { # metric PORT NAME
  $PY - "$1" "$2" <<'PYEOF'
import sys, urllib.request
for l in urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode().splitlines():
    if l.startswith(sys.argv[2] + " "): print(int(float(l.split()[1]))); break
PYEOF
}

SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; true; }
trap cleanup EXIT

# Every level of both modes and the CLI translate the same N sentences (the
# cache is off, so repeating them costs full compute each time).
head -n "$N" "$OUT/src.txt" > "$OUT/cli.txt"
$PY - "$OUT/cli.txt" "$BEAM" > "$OUT/bodies.jsonl" <<'PYEOF'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    print(json.dumps({"text": line.rstrip("\n"), "beam_size": int(sys.argv[2])}))
PYEOF

# The offline CLI first: throughput with its best batching (WORKERS workers),
# and the single-sentence time (--batch 1) with 1 and with WORKERS OpenBLAS
# threads; the faster of the two is the latency baseline and sets the
# no-batching server's thread count (the strongest no-batching setting).
$CLI --model "$MODEL" --threads "$WORKERS" --beam "$BEAM" --verbose --input "$OUT/cli.txt" \
  > /dev/null 2> "$OUT/cli.log"
$CLI --model "$MODEL" --beam "$BEAM" --batch 1 --verbose --input "$OUT/cli.txt" \
  > /dev/null 2> "$OUT/cli1.log"
$CLI --model "$MODEL" --beam "$BEAM" --batch 1 --blas-threads "$WORKERS" --verbose \
  --input "$OUT/cli.txt" > /dev/null 2> "$OUT/cli1b.log"
secs_of() { sed -n 's/.* \([0-9.]*\) s, .*sentences\/s.*/\1/p' "$1"; }
NOBATCH_THREADS=1
if awk -v a="$(secs_of "$OUT/cli1b.log")" -v b="$(secs_of "$OUT/cli1.log")" 'BEGIN{exit !(a < b)}'; then
  NOBATCH_THREADS=$WORKERS
fi
echo "no-batching server: one session with $NOBATCH_THREADS OpenBLAS thread(s) (the faster for one sentence)"

RESULTS=$OUT/results.tsv
: > "$RESULTS"
for mode in batching nobatching; do
  # batching: one engine session per core, each single-threaded; no batching:
  # one sentence in flight (max_inflight 1)
  inflight=$MAX_INFLIGHT workers=$WORKERS cthreads=1
  [ $mode = nobatching ] && inflight=1 workers=1 cthreads=$NOBATCH_THREADS
  port=$(free_port)
  $SERVER --config /dev/null --model "$MODEL" --listen 127.0.0.1 --port "$port" \
    --compute-workers "$workers" --compute-threads "$cthreads" --http-threads 2 \
    --cache-size 0 --heads false --max-inflight "$inflight" --max-queue 100000 \
    --log-level warn 2> "$OUT/server-$mode.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do $SERVER --probe /ready --port "$port" >/dev/null 2>&1 && break; sleep 0.1; done
  for c in $CONC; do
    tok0=$(metric "$port" moa_target_tokens_total)
    line=$(wrk -t1 -c"$c" -d"${DURATION}s" --timeout 120s -s bench/load.lua \
           "http://127.0.0.1:$port" -- "$OUT/bodies.jsonl" | tail -n 1)
    tok1=$(metric "$port" moa_target_tokens_total)
    echo -e "$mode\t$c\t$(( tok1 - tok0 ))\t$line" >> "$RESULTS"
  done
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=
done

$PY - "$RESULTS" "$OUT/cli.log" "$OUT/cli1.log" "$OUT/cli1b.log" <<'PYEOF'
import json, re, sys
rows = []
for l in open(sys.argv[1]):
    mode, c, tok, js = l.rstrip("\n").split("\t", 3)
    r = json.loads(js); r.update(mode=mode, c=int(c), tokens=int(tok))
    r["tokens_per_s"] = r["tokens"] / r["seconds"] if r["seconds"] else 0
    rows.append(r)
def cli(path):
    m = re.search(r"(\d+) sentences .*?([\d.]+) s, ([\d.]+) sentences/s, ([\d.]+) target tokens/s",
                  open(path).read())
    return int(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4))
n, secs, cli_sps, cli_tps = cli(sys.argv[2])
single_ms = min(1e3 * s / n for n, s, _, _ in (cli(sys.argv[3]), cli(sys.argv[4])))
nob = {r["c"]: r for r in rows if r["mode"] == "nobatching"}
print(f"\nCLI: {cli_sps:.1f} sentences/s, {cli_tps:.0f} target tokens/s; one sentence at a "
      f"time: {single_ms:.1f} ms each\n")
print(f"{'mode':<11} {'conc':>4} {'sent/s':>8} {'tok/s':>8} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} "
      f"{'p99 ms':>8} {'failed':>6} {'x nobatch':>9} {'x CLI':>6}")
for r in rows:
    base = nob.get(r["c"])
    rb = r["sentences_per_s"] / base["sentences_per_s"] if base and base["sentences_per_s"] else 0
    print(f"{r['mode']:<11} {r['c']:>4} {r['sentences_per_s']:>8.1f} {r['tokens_per_s']:>8.0f} "
          f"{r['mean_ms']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['failed']:>6} "
          f"{rb:>9.2f} {r['sentences_per_s'] / cli_sps:>6.2f}")
b1 = [r for r in rows if r["mode"] == "batching" and r["c"] == 1]
if b1:
    print(f"\np50 at concurrency 1: {b1[0]['p50_ms']:.1f} ms = "
          f"{b1[0]['p50_ms'] / single_ms:.2f} x the CLI's mean single-sentence time "
          f"({single_ms:.1f} ms); server mean {b1[0]['mean_ms']:.1f} ms = "
          f"{b1[0]['mean_ms'] / single_ms:.2f} x")
print("targets: conc 32 >= 3x nobatching and >= 0.8x CLI; p50 at conc 1 <= 1.2x CLI; 0 failed")
PYEOF
