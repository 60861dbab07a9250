#!/usr/bin/env bash
# bench/soak.sh — moa-server under mixed traffic for a long time (30 min by
# default): normal, 5000-line, timing-out, hanging-up and malformed requests,
# /heads and /metrics polling, 32 clients; RSS and open file descriptors
# sampled every 10 s. Pass/fail as bench/soak.py's header says (RSS growth
# after the first window < 5%, descriptors flat, only expected statuses, no
# server error, p99 of normal requests at the end within 1.5x the start).
# Not part of make test: run it on a quiet machine.
#
#   bench/soak.sh [--minutes 30] [--model weights/moa-en-de] [--out bench/soak] [...]
#
# Every option goes to bench/soak.py (--help lists them). Results:
# bench/soak/{samples.tsv,summary.json,summary.md,soak.png}; the server log:
# build/bench/soak/server.log. Exit status 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if ! $PY -c 'import matplotlib' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing python3-matplotlib (Debian) for the plot"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
  else
    echo "bench/soak.sh needs python3-matplotlib: apt-get install python3-matplotlib"; exit 1
  fi
fi
make -s all >/dev/null
[ -f weights/moa-en-de/config.json ] || case " $* " in *" --model "*) ;; *)
  echo "no weights/moa-en-de (make model), and no --model given"; exit 1;; esac
exec env OMP_WAIT_POLICY=PASSIVE $PY bench/soak.py "$@"
