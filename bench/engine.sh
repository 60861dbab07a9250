#!/usr/bin/env bash
# bench/engine.sh — the C engine's settings side by side, in one run: float32
# against bf16, int8, the vocabulary shortlist, and (PARTS=torch) against the
# PyTorch reference. Not a test: it prints numbers (bench/RESULTS.md).
#
#   bench/engine.sh [MODEL_DIR]
#
# MODEL_DIR defaults to weights/moa-en-de when it exists, else a random-weight
# model of the default model's shape is made in build/bench/ (no shortlist:
# its settings are then skipped). Env:
#   PARTS     what to run (default "precision latency"; add "torch" for the
#             PyTorch comparison on the valid set)
#   SETTINGS  the engine settings compared (default: "f32 bf16 int8
#             int8+shortlist f32+shortlist"; f32 is the baseline, always run)
#   THREADS   worker threads of the throughput runs (default "2 1")
#   BEAM (4), BATCH (32), N (3000 test sentences), LAT_N (300 sentences
#   translated one at a time for the latency rows), REPEAT (1: runs of each
#   setting, interleaved; the best is reported: on a shared machine use 3)
#   MOA_CORPUS (default ../shared/corpus)
#
# Per setting: wall seconds; "net s", without start-up (the same command on
# an empty input: model load and weight conversion); CPU seconds (user+sys,
# start-up left out the same way) — on a machine shared with other jobs
# the CPU time is the steadier figure; sentences/s and target tokens/s (eos
# included) over net s; both ratios to float32 measured in the same run;
# the engine's GFLOP/s (2 per multiply-add of its products and attention; an
# int8 or bf16 multiply-add counts as one float32 one; with the shortlist
# only the candidates' logits are counted); peak RSS; BLEU and chrF of the
# test references (train/evaluate.py); output lines identical to float32's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
CLI=build/release/moa-translate
CORPUS=${MOA_CORPUS:-../shared/corpus}
PARTS=${PARTS:-"precision latency"}
SETTINGS=${SETTINGS:-"f32 bf16 int8 int8+shortlist f32+shortlist"}
THREADS=${THREADS:-"2 1"}
BEAM=${BEAM:-4}
BATCH=${BATCH:-32}
N=${N:-3000}
LAT_N=${LAT_N:-300}
REPEAT=${REPEAT:-1}
OUT=build/bench
mkdir -p "$OUT"

make -s all >/dev/null

MODEL=${1:-}
if [ -z "$MODEL" ]; then
  if [ -f weights/moa-en-de/config.json ]; then
    MODEL=weights/moa-en-de
  else
    MODEL=$OUT/random-default-shape
    if [ ! -f "$MODEL/config.json" ]; then
      # the default model's shape: d 256, 3+3 layers, E 8, k 2, h 64, ffn 1024
      $PY train/make_random_model.py --out "$MODEL" --d-model 256 --encoder-layers 3 \
        --decoder-layers 3 --ffn-dim 1024 --experts 8 --top-k 2 --head-dim 64 --seed 3 >/dev/null
    fi
  fi
fi
name=$($PY -c "import json; print(json.load(open('$MODEL/config.json')).get('name', '?'))")
if [ ! -f "$MODEL/shortlist.tsv" ]; then
  SETTINGS=$(echo "$SETTINGS" | tr ' ' '\n' | grep -v shortlist | tr '\n' ' ')
fi
case " $SETTINGS " in *" f32 "*) ;; *) SETTINGS="f32 $SETTINGS" ;; esac

echo "model: $MODEL ($name); beam $BEAM; batch $BATCH; parts: $PARTS"
echo "settings: $SETTINGS; repeat $REPEAT (interleaved, best reported)"
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}" \
     "MOA_AVX512=${MOA_AVX512:-unset}; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*: /CPU: /'
echo "CPU flags: $(grep -m1 -o -w -E 'avx512f|avx512_vnni|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo

# The flags of a setting.
flags() {
  case $1 in
    f32) echo "--precision f32" ;;
    bf16) echo "--precision bf16" ;;
    int8) echo "--precision int8" ;;
    int8+shortlist) echo "--precision int8 --shortlist" ;;
    bf16+shortlist) echo "--precision bf16 --shortlist" ;;
    f32+shortlist) echo "--precision f32 --shortlist" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}

# timed TAG INPUT CMD...: runs CMD < INPUT, output in $OUT/TAG.{txt,err};
# prints "wall cpu rss_mb"
timed() {
  local tag=$1 input=$2; shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$OUT/$tag.time" "$@" < "$input" > "$OUT/$tag.txt" \
    2> "$OUT/$tag.err" || { echo "$tag failed:" >&2; tail -5 "$OUT/$tag.err" >&2; exit 1; }
  read -r wall u s rss < "$OUT/$tag.time"
  echo "$wall $($PY -c "print(round($u + $s, 2))") $((rss / 1024))"
}

tokens() { grep -o '[0-9]* target tokens,' "$OUT/$1.err" | awk '{print $1}'; }
gflops() { grep -o '[0-9.]* GFLOP/s' "$OUT/$1.err" | awk '{print $1}'; }
calc() { $PY -c "print($1)"; }

# run_settings PART INPUT THREADS BATCH REF: every setting REPEAT times,
# interleaved; one table row each.
run_settings() {
  local part=$1 input=$2 t=$3 b=$4 ref=$5
  local n_sent
  n_sent=$(wc -l < "$input")
  declare -A wall cpu rss s_wall s_cpu
  for set in $SETTINGS; do
    # start-up: the same command on an empty input (load, weight conversion)
    read -r s_wall[$set] s_cpu[$set] _ < <(timed "${part}_startup" /dev/null $CLI --model "$MODEL" \
        --threads "$t" $(flags "$set"))
  done
  for ((r = 1; r <= REPEAT; r++)); do
    for set in $SETTINGS; do
      local tag="${part}_t${t}_b${b}_${set}"
      read -r w c m < <(timed "$tag.r$r" "$input" $CLI --model "$MODEL" --threads "$t" \
          --batch "$b" --beam "$BEAM" --verbose $(flags "$set"))
      if [ -z "${wall[$set]:-}" ] || [ "$(calc "$w < ${wall[$set]}")" = True ]; then
        wall[$set]=$w; rss[$set]=$m
        cp "$OUT/$tag.r$r.txt" "$OUT/$tag.txt"; cp "$OUT/$tag.r$r.err" "$OUT/$tag.err"
      fi
      if [ -z "${cpu[$set]:-}" ] || [ "$(calc "$c < ${cpu[$set]}")" = True ]; then cpu[$set]=$c; fi
    done
  done
  local base="${part}_t${t}_b${b}_f32"
  local f32net f32cpu
  f32net=$(calc "max(1e-9, ${wall[f32]} - ${s_wall[f32]})")
  f32cpu=$(calc "max(1e-9, ${cpu[f32]} - ${s_cpu[f32]})")
  for set in $SETTINGS; do
    local tag="${part}_t${t}_b${b}_${set}" net cnet tok same q
    net=$(calc "max(1e-9, ${wall[$set]} - ${s_wall[$set]})")
    cnet=$(calc "max(1e-9, ${cpu[$set]} - ${s_cpu[$set]})")
    tok=$(tokens "$tag")
    same=$(paste -d '\t' "$OUT/$base.txt" "$OUT/$tag.txt" | awk -F'\t' '$1 == $2' | wc -l)
    q="-"
    if [ -n "$ref" ]; then
      q=$($PY train/evaluate.py --hyp "$OUT/$tag.txt" --ref "$ref" 2>/dev/null | tail -1 |
          awk '{printf "%s %s", $2, $3}')
    fi
    printf "%-15s %3s %5s %7.2f %7.2f %7.2f %8.1f %8.0f %8.0f %6.2fx %6.2fx %7s %6s %-12s %5.1f%%\n" \
      "$set" "$t" "$b" "${wall[$set]}" "$net" "$cnet" "$(calc "$n_sent / $net")" \
      "$(calc "$tok / $net")" "$(calc "1000 * $net / $n_sent")" \
      "$(calc "$f32net / $net")" "$(calc "$f32cpu / $cnet")" "$(gflops "$tag")" "${rss[$set]}" "$q" \
      "$(calc "100 * $same / $n_sent")"
  done
}

header() {
  printf "%-15s %3s %5s %7s %7s %7s %8s %8s %8s %7s %7s %7s %6s %-12s %6s\n" setting thr batch \
    "wall s" "net s" "cpu s" "sent/s" "tok/s" "ms/sent" "xf32" "xf32cpu" "GFLOP/s" "RSS MB" \
    "BLEU chrF" "=f32"
}

if [[ " $PARTS " == *" precision "* ]] || [[ " $PARTS " == *" latency "* ]]; then
  [ -f "$CORPUS/test.en-de.tsv" ] || { echo "need $CORPUS/test.en-de.tsv (set MOA_CORPUS)"; exit 1; }
  head -n "$N" "$CORPUS/test.en-de.tsv" | cut -f1 > "$OUT/test.src"
  head -n "$N" "$CORPUS/test.en-de.tsv" | cut -f2 > "$OUT/test.ref"
  head -n "$LAT_N" "$OUT/test.src" > "$OUT/test.lat.src"
  head -n "$LAT_N" "$OUT/test.ref" > "$OUT/test.lat.ref"
fi

if [[ " $PARTS " == *" precision "* ]]; then
  echo "== throughput: $(wc -l < "$OUT/test.src") test sentences, beam $BEAM, batch $BATCH" \
       "(ms/sent: net s per sentence; x f32: net wall and net CPU against f32 in this run)"
  header
  for t in $THREADS; do run_settings thr "$OUT/test.src" "$t" "$BATCH" "$OUT/test.ref"; done
  echo
fi

if [[ " $PARTS " == *" latency "* ]]; then
  echo "== latency: $(wc -l < "$OUT/test.lat.src") test sentences one at a time (--batch 1" \
       "--threads 1), beam $BEAM: ms/sent is the time of one sentence"
  header
  run_settings lat "$OUT/test.lat.src" 1 1 "$OUT/test.lat.ref"
  echo
fi

f32mb=$($PY - "$MODEL" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
d, f, V, E, h = c["d_model"], c["ffn_dim"], c["vocab_size"], c["num_experts"], c["head_dim"]
att = 2 * h * d + d * E + 2 * E * d * h + (2 * h if c.get("attention_bias") else 0)
ffn = 2 * d * f + f + d
enc = c["encoder_layers"] * (att + ffn + 4 * d)
dec = c["decoder_layers"] * (2 * att + ffn + 6 * d)
emb = V * d * (1 if c.get("share_embeddings", True) else 3)
print(round(4 * (enc + dec + emb) / 2**20, 1))
EOF
)
echo "float32 weights: $f32mb MB; converted weights per setting: the 'precision' line of"
echo "  $OUT/*_f32.err, *_int8.err, ... (moa-translate --verbose)"

# --- the C engine against the PyTorch reference (the valid set) ---------------
if [[ " $PARTS " == *" torch "* ]]; then
  [ -f "$CORPUS/valid.en-de.tsv" ] || { echo "need $CORPUS/valid.en-de.tsv (set MOA_CORPUS)"; exit 1; }
  head -n 2000 "$CORPUS/valid.en-de.tsv" | cut -f1 > "$OUT/src.txt"
  n_sent=$(wc -l < "$OUT/src.txt")
  gcc -O2 $(pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread) \
      bench/sgemm_peak.c -lopenblas -o "$OUT/sgemm_peak"
  echo
  echo "== C (f32) vs PyTorch: $n_sent valid sentences, beam $BEAM, batch $BATCH"
  printf "%-34s %8s %8s %9s %10s %8s %8s %s\n" engine threads "wall s" "net s" "sent/s" "tok/s" "RSS MB" "vs torch"
  for t in 1 2; do
    peak=$("$OUT/sgemm_peak" "$t")
    read -r s0 _ _ < <(timed torch_startup /dev/null $PY train/moa_reference.py --model "$MODEL" --threads "$t")
    read -r rs _ rm < <(timed "torch_t$t" "$OUT/src.txt" env OMP_WAIT_POLICY=PASSIVE $PY \
        train/moa_reference.py --model "$MODEL" --beam "$BEAM" --batch "$BATCH" --threads "$t")
    rnet=$(calc "max(1e-9, $rs - $s0)")
    read -r c0 _ _ < <(timed c_startup /dev/null $CLI --model "$MODEL" --threads "$t")
    variants=("--threads $t" "MOA_AVX512=0 --threads $t")
    [ "$t" -gt 1 ] && variants+=("--threads 1 --blas-threads $t")
    for v in "${variants[@]}"; do
      tag="c_t${t}_$(echo "$v" | tr -d ' =-')"
      envs=(); opts=$v
      case $v in MOA_AVX512=0*) envs=(MOA_AVX512=0); opts=${v#MOA_AVX512=0 } ;; esac
      # shellcheck disable=SC2086
      read -r cs _ cm < <(timed "$tag" "$OUT/src.txt" env "${envs[@]}" $CLI --model "$MODEL" \
          --beam "$BEAM" --batch "$BATCH" $opts --verbose)
      cnet=$(calc "max(1e-9, $cs - $c0)")
      tok=$(tokens "$tag")
      same=$(cmp -s "$OUT/$tag.txt" "$OUT/torch_t$t.txt" && echo identical || \
             echo "$(diff "$OUT/$tag.txt" "$OUT/torch_t$t.txt" | grep -c '^<') lines differ")
      printf "%-34s %8s %8.2f %9.2f %10.1f %8.0f %8s %.2fx (%s)\n" "C: $v" "$t" "$cs" "$cnet" \
        "$(calc "$n_sent / $cnet")" "$(calc "$tok / $cnet")" "$cm" "$(calc "$rnet / $cnet")" "$same"
      echo "    engine $(gflops "$tag") GFLOP/s over its run; plain sgemm peak at $t thread(s): $peak GFLOP/s"
    done
    printf "%-34s %8s %8.2f %9.2f %10.1f %8.0f %8s\n" "PyTorch reference" "$t" "$rs" "$rnet" \
      "$(calc "$n_sent / $rnet")" "$(calc "$tok / $rnet")" "$rm"
  done
fi
