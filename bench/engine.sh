#!/usr/bin/env bash
# bench/engine.sh — the C engine against the PyTorch reference, same model,
# same sentences, same thread counts, in one run. Not a test: it prints numbers.
#
#   bench/engine.sh [MODEL_DIR]
#
# MODEL_DIR defaults to weights/moa-en-de when it exists, else a random-weight
# model of the default model's shape is made in build/bench/. Sentences: the
# 2000 sources of valid.en-de.tsv (MOA_CORPUS, default ../shared/corpus).
# Env: BEAM (4), BATCH (32), THREADS ("1 2"), N (2000 sentences).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
CLI=build/release/moa-translate
CORPUS=${MOA_CORPUS:-../shared/corpus}
BEAM=${BEAM:-4}
BATCH=${BATCH:-32}
THREADS=${THREADS:-"1 2"}
N=${N:-2000}
OUT=build/bench
mkdir -p "$OUT"

make -s all >/dev/null
gcc -O2 $(pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread) \
    bench/sgemm_peak.c -lopenblas -o "$OUT/sgemm_peak"

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
[ -f "$CORPUS/valid.en-de.tsv" ] || { echo "need $CORPUS/valid.en-de.tsv (set MOA_CORPUS)"; exit 1; }
head -n "$N" "$CORPUS/valid.en-de.tsv" | cut -f1 > "$OUT/src.txt"
n_sent=$(wc -l < "$OUT/src.txt")

name=$($PY -c "import json; print(json.load(open('$MODEL/config.json')).get('name', '?'))")
echo "model: $MODEL ($name); $n_sent sentences; beam $BEAM; batch $BATCH"
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}"
echo

# run NAME CMD... : wall seconds and peak RSS (MB) of CMD, output in $OUT/NAME.txt
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/$name.time" "$@" < "$OUT/src.txt" > "$OUT/$name.txt" 2> "$OUT/$name.err" \
    || { echo "$name failed:"; tail -5 "$OUT/$name.err"; exit 1; }
  read -r secs rss_kb < "$OUT/$name.time"
  echo "$secs $((rss_kb / 1024))"
}
# startup cost (load model, import torch) measured on an empty input
startup() {
  /usr/bin/time -f "%e" -o "$OUT/startup.time" "$@" < /dev/null > /dev/null 2>&1
  cat "$OUT/startup.time"
}

# target tokens of the C output (eos included), from --verbose
tgt_tokens() { grep -o '[0-9]* target tokens,' "$OUT/$1.err" | awk '{print $1}'; }
gflops() { grep -o '[0-9.]* GFLOP/s' "$OUT/$1.err" | awk '{print $1}'; }

printf "%-34s %8s %8s %9s %10s %8s %8s %s\n" engine threads "wall s" "net s" "sent/s" "tok/s" "RSS MB" "vs torch"
for t in $THREADS; do
  peak=$("$OUT/sgemm_peak" "$t")
  s0=$(startup $PY train/moa_reference.py --model "$MODEL" --threads "$t")
  read -r rs rm < <(run "torch_t$t" env OMP_WAIT_POLICY=PASSIVE $PY train/moa_reference.py \
      --model "$MODEL" --beam "$BEAM" --batch "$BATCH" --threads "$t")
  rnet=$($PY -c "print(max(1e-9, $rs - $s0))")
  c0=$(startup $CLI --model "$MODEL" --threads "$t")
  # MOA_AVX512=0: the engine without its packed AVX-512 kernel (OpenBLAS
  # for every product), to show what each part brings
  variants=("--threads $t" "MOA_AVX512=0 --threads $t")
  [ "$t" -gt 1 ] && variants+=("--threads 1 --blas-threads $t")
  for v in "${variants[@]}"; do
    name="c_t${t}_$(echo "$v" | tr -d ' =-')"
    envs=(); opts=$v
    case $v in MOA_AVX512=0*) envs=(MOA_AVX512=0); opts=${v#MOA_AVX512=0 } ;; esac
    # shellcheck disable=SC2086
    read -r cs cm < <(run "$name" env "${envs[@]}" $CLI --model "$MODEL" --beam "$BEAM" \
                      --batch "$BATCH" $opts --verbose)
    cnet=$($PY -c "print(max(1e-9, $cs - $c0))")
    tok=$(tgt_tokens "$name")
    same=$(cmp -s "$OUT/$name.txt" "$OUT/torch_t$t.txt" && echo identical || \
           echo "$(diff "$OUT/$name.txt" "$OUT/torch_t$t.txt" | grep -c '^<') lines differ")
    printf "%-34s %8s %8.2f %9.2f %10.1f %8.0f %8s %.2fx (%s)\n" "C: $v" "$t" "$cs" "$cnet" \
      "$($PY -c "print($n_sent/$cnet)")" "$($PY -c "print($tok/$cnet)")" "$cm" \
      "$($PY -c "print($rnet/$cnet)")" "$same"
    echo "    engine $(gflops "$name") GFLOP/s over its run; plain sgemm peak at $t thread(s): $peak GFLOP/s"
  done
  printf "%-34s %8s %8.2f %9.2f %10.1f %8.0f %8s\n" "PyTorch reference" "$t" "$rs" "$rnet" \
    "$($PY -c "print($n_sent/$rnet)")" "$($PY -c "print($tok/$rnet)")" "$rm"
done
f32=$($PY - "$MODEL" <<'EOF'
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
echo
echo "float32 weights: $f32 MB (RSS budget: weights + 100 MB = $($PY -c "print($f32+100)") MB)"
