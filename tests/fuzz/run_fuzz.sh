#!/bin/sh
# run_fuzz.sh — runs the libFuzzer targets one after another (make fuzz).
#
#   tests/fuzz/run_fuzz.sh [--merge] TARGET...
#
# Each target runs FUZZ_SECONDS (default 60; FUZZ_RUNS=N stops after N
# inputs instead) under nice -n 10, one process, from the repository root,
# over its corpus tests/fuzz/corpus/TARGET; what it finds goes to
# build/fuzz/work/TARGET, crashes to build/fuzz/artifacts/TARGET/. The last
# status line (executions, cov, ft) is printed; a crash stops the script
# with the sanitizer's report. --merge instead minimises corpus + work into
# tests/fuzz/corpus/TARGET (libFuzzer -merge=1).
set -u
BIN=build/fuzz/fuzz
OUT=build/fuzz
MERGE=0
if [ "${1:-}" = "--merge" ]; then MERGE=1; shift; fi
SECONDS_EACH=${FUZZ_SECONDS:-60}
RUNS=${FUZZ_RUNS:--1}

for t in "$@"; do
  bin=$BIN/fuzz_$t
  corpus=tests/fuzz/corpus/$t
  work=$OUT/work/$t
  art=$OUT/artifacts/$t/
  [ -x "$bin" ] || { echo "run_fuzz: $bin missing (make MODE=fuzz fuzz-build)"; exit 2; }
  mkdir -p "$corpus" "$work" "$art"
  # Inputs big enough for the formats (a complete tiny model is ~3 KB),
  # small enough to keep executions fast.
  case $t in
    model_load) maxlen=16384 ;;
    conf) maxlen=4096 ;;
    translate_parse) maxlen=2048 ;;
    *) maxlen=1024 ;;
  esac
  dict=
  [ -f tests/fuzz/dict/$t.dict ] && dict=-dict=tests/fuzz/dict/$t.dict
  if [ $MERGE = 1 ]; then
    tmp=$OUT/merge-$t
    rm -rf "$tmp" && mkdir -p "$tmp"
    nice -n 10 "$bin" -merge=1 -max_len=$maxlen $dict "$tmp" "$corpus" "$work" \
      >"$OUT/$t.merge.log" 2>&1 || { tail -20 "$OUT/$t.merge.log"; exit 1; }
    # the merged set replaces the corpus; its files are named by content hash
    # except the regression inputs (regress-*), which always stay
    find "$corpus" -maxdepth 1 -type f ! -name 'regress-*' -delete
    cp "$tmp"/* "$corpus"/ 2>/dev/null
    echo "$t: $(ls "$corpus" | wc -l) corpus files after merge"
    continue
  fi
  mkdir -p "$OUT/logs"
  log=$OUT/logs/$t-$(date +%Y%m%d-%H%M%S).log
  # -close_fd_mask=3: the targets' own stdout/stderr chatter is dropped;
  # libFuzzer keeps a copy of stderr for its status and the sanitizer report.
  nice -n 10 "$bin" -max_total_time="$SECONDS_EACH" -runs="$RUNS" -max_len=$maxlen $dict \
    -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=2048 -close_fd_mask=3 \
    -print_final_stats=1 -artifact_prefix="$art" "$work" "$corpus" >"$log" 2>&1
  rc=$?
  cp "$log" "$OUT/$t.log"
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "$t: ${execs:-?} executions; $last"
  if [ $rc -ne 0 ]; then
    echo "$t: FAILED (exit $rc); artifacts in $art:"
    ls -l "$art"
    grep -E 'ERROR|SUMMARY|runtime error|invariant' "$log" | head -20
    for a in "$art"*; do  # the report in full, with stacks
      [ -f "$a" ] && "$bin" "$a" 2>&1 | grep -v '^INFO' | head -60
    done
    exit 1
  fi
done
