#!/usr/bin/env bash
# bench/ab_engine.sh — two moa-translate binaries (e.g. before and after a
# change) on the same sentences, interleaved A B A B ..., one thread each.
# Prints wall and CPU (user+sys) seconds per run, their medians and the
# ratio B/A, and whether the outputs are identical. CPU seconds of a
# single-threaded run barely move when other jobs share the machine, so the
# ratio holds on a busy machine too; wall seconds are shown for reference.
# Not a test: it prints numbers.
#
#   bench/ab_engine.sh OLD_CLI NEW_CLI [MODEL_DIR]
#
# Env: N (500 valid sentences), BEAM (4), BATCH (32), ROUNDS (5),
# MOA_CORPUS (../shared/corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: bench/ab_engine.sh OLD_CLI NEW_CLI [MODEL_DIR]}
B=${2:?usage: bench/ab_engine.sh OLD_CLI NEW_CLI [MODEL_DIR]}
MODEL=${3:-weights/moa-en-de}
CORPUS=${MOA_CORPUS:-../shared/corpus}
N=${N:-500}
BEAM=${BEAM:-4}
BATCH=${BATCH:-32}
ROUNDS=${ROUNDS:-5}
OUT=build/bench/ab
mkdir -p "$OUT"
head -n "$N" "$CORPUS/valid.en-de.tsv" | cut -f1 > "$OUT/src.en"

run() {  # run BIN TAG ROUND -> appends "TAG wall cpu" to $OUT/times
  local t0 t1 cpu
  t0=$(date +%s.%N)
  cpu=$( { /usr/bin/time -f "%U %S" "$1" --model "$MODEL" --input "$OUT/src.en" --beam "$BEAM" \
           --batch "$BATCH" --threads 1 > "$OUT/$2.out"; } 2>&1 | tail -1 | awk '{print $1 + $2}')
  t1=$(date +%s.%N)
  echo "$2 $(echo "$t1 - $t0" | bc) $cpu" >> "$OUT/times"
  printf '  round %d %s: wall %.2f s, cpu %.2f s\n' "$3" "$2" "$(echo "$t1 - $t0" | bc)" "$cpu"
}

rm -f "$OUT/times"
echo "A = $A"
echo "B = $B"
echo "model $MODEL, $N sentences, beam $BEAM, batch $BATCH, 1 thread, $ROUNDS rounds; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  run "$A" A "$r"
  run "$B" B "$r"
done
if cmp -s "$OUT/A.out" "$OUT/B.out"; then same="identical"; else same="DIFFERENT"; fi
/usr/bin/python3 - "$OUT/times" "$same" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for tag in ("A", "B"):
    med[tag] = (statistics.median(float(r[1]) for r in rows if r[0] == tag),
                statistics.median(float(r[2]) for r in rows if r[0] == tag))
print(f"median wall: A {med['A'][0]:.2f} s, B {med['B'][0]:.2f} s, B/A {med['B'][0] / med['A'][0]:.3f}")
print(f"median cpu:  A {med['A'][1]:.2f} s, B {med['B'][1]:.2f} s, B/A {med['B'][1] / med['A'][1]:.3f}")
print(f"outputs: {sys.argv[2]}")
EOF
