#!/usr/bin/env bash
# make test-deploy: the image, the compose stack (HAProxy + 2 replicas), and
# failover under load, for real, on this machine; then the container-free
# failover test (run_local.sh).
#
#  1. installs what it needs (docker.io, docker-compose, debootstrap, nginx, curl)
#  2. starts a private dockerd (tests/deploy/lib.sh), makes the base image
#     localhost/debian:bookworm by debootstrap (cached), builds docker/Dockerfile
#     and docker/haproxy.Dockerfile from it (docker build --network host), then
#     the same with docker-compose build (the images the stack runs)
#  3. one container: non-root, NOTICE in the image, HEALTHCHECK turns healthy,
#     a translation on the published port, another model mounted (MOA_MODEL),
#     docker stop -> exit 0 (tini passes SIGTERM on, the server drains)
#  4. docker-compose: 2 replicas + HAProxy; translate, /heads, /metrics through
#     HAProxy; both replicas answer; then under a steady load:
#       a. docker stop (SIGTERM) one replica: zero failed requests, exit 0
#       b. scale back to 2, SIGKILL one replica's server process (a crash):
#          zero failed requests (HAProxy resends the lost ones), the restart
#          policy brings it back and HAProxy puts it back in rotation
#  5. tests/deploy/run_local.sh (nginx + 2 processes)
# Everything it starts (containers, networks, dockerd, nginx, servers) is
# stopped on exit. Results: build/deploy/ (JSON per failover test, summary.txt).
#
# Environment: DEPLOY_STATE (/var/lib/moa-serve-deploy: the dockerd data-root
# and the base tarball, kept between runs as a cache), LOAD_WORKERS (4),
# LOAD_SECONDS (12), SERVER (build/release/moa-server, for run_local.sh),
# DEPLOY_SKIP_LOCAL=1 to leave out step 5.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/deploy/lib.sh

PY=/usr/bin/python3
LOAD_WORKERS=${LOAD_WORKERS:-4}
LOAD_SECONDS=${LOAD_SECONDS:-12}
SERVER=${SERVER:-build/release/moa-server}
[ "${1:-}" = "--server" ] && SERVER=$2
OUT=${DEPLOY_OUT:-build/deploy}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/compose-*.json "$OUT/summary.txt"
export DEPLOY_OUT=$OUT
IMAGE=moa-serve:test
LB_IMAGE=moa-serve-haproxy:test
PROJECT=moadeploy
T_START=$(date +%s)

summary() { echo "$*" | tee -a "$OUT/summary.txt" >&2; }

need_packages docker.io docker-compose debootstrap nginx curl python3-yaml

COMPOSE_IMAGE=moa-serve:compose
COMPOSE_LB_IMAGE=moa-serve-haproxy:compose
compose() {
  MOA_IMAGE=$COMPOSE_IMAGE MOA_LB_IMAGE=$COMPOSE_LB_IMAGE BASE_IMAGE=$BASE_IMAGE \
  MOA_LB_PORT=$LB_PORT MOA_LB_STATS_PORT=$STATS_PORT \
  MOA_COMPUTE_WORKERS=1 MOA_CACHE_SIZE=0 OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell} \
    $COMPOSE -p "$PROJECT" -f docker/compose.yaml "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${DOCKERD_PID:-}" ]; then
    if [ $rc -ne 0 ]; then
      log "failed: last lines of the containers' logs (all in $OUT/logs)"
      mkdir -p "$OUT/logs"
      for c in $($DOCKER ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null) \
               $($DOCKER ps -aq --filter name=moa-single 2>/dev/null); do
        n=$($DOCKER inspect -f '{{.Name}}' "$c" | tr -d /)
        $DOCKER logs "$c" >"$OUT/logs/$n.log" 2>&1
        tail -5 "$OUT/logs/$n.log" | sed "s/^/  $n: /" >&2
      done
    fi
    compose down -v --remove-orphans >/dev/null 2>&1
    $DOCKER rm -f moa-single moa-single-model >/dev/null 2>&1
    $DOCKER network rm moa-single >/dev/null 2>&1
    $DOCKER image prune -f >/dev/null 2>&1
    dockerd_stop
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() { $PY -c '
import socket; ss=[socket.socket() for _ in range(3)]
[s.bind(("127.0.0.1", 0)) for s in ss]; print(*[s.getsockname()[1] for s in ss]); [s.close() for s in ss]'; }
read -r LB_PORT STATS_PORT SINGLE_PORT < <(free_ports)

# --- 1-2. daemon, base image, images ------------------------------------------------
dockerd_start
base_image
t0=$(date +%s)
log "docker build docker/Dockerfile (base $BASE_IMAGE)"
# the build stage first, tagged, so that it stays as a cache for the next run
# (the image prune at the end removes only older, untagged layers)
$DOCKER build --network host --force-rm --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/Dockerfile --target build \
  -t "$IMAGE-build-stage" . >"$OUT/build-image.log" 2>&1 \
  || { tail -30 "$OUT/build-image.log" >&2; die "docker build of the build stage failed"; }
$DOCKER build --network host --force-rm --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/Dockerfile -t "$IMAGE" . \
  >>"$OUT/build-image.log" 2>&1 || { tail -30 "$OUT/build-image.log" >&2; die "docker build of the server image failed"; }
build_s=$(( $(date +%s) - t0 ))
$DOCKER build --network host --force-rm --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/haproxy.Dockerfile -t "$LB_IMAGE" docker \
  >"$OUT/build-haproxy.log" 2>&1 || { tail -30 "$OUT/build-haproxy.log" >&2; die "docker build of the HAProxy image failed"; }
# docker/compose.yaml's build sections (context, Dockerfile, BASE_IMAGE): the
# stack below runs the images docker-compose builds (tagged :compose; the RUN
# apt-get steps come from the cache of the builds above, the build needs no
# network of its own)
compose build >"$OUT/compose-build.log" 2>&1 || { tail -20 "$OUT/compose-build.log" >&2; die "docker-compose build failed"; }
log "docker-compose build: $COMPOSE_IMAGE, $COMPOSE_LB_IMAGE"
size=$($DOCKER image inspect -f '{{.Size}}' "$IMAGE")
base_size=$($DOCKER image inspect -f '{{.Size}}' "$BASE_IMAGE")
summary "image $IMAGE: $((size / 1000000)) MB ($size bytes; base $((base_size / 1000000)) MB), built in ${build_s} s"

# --- 3. one container ---------------------------------------------------------------
$DOCKER network create moa-single >/dev/null || die "docker network create failed"
$DOCKER run -d --name moa-single --network moa-single -p "127.0.0.1:$SINGLE_PORT:8080" "$IMAGE" >/dev/null \
  || die "docker run failed"
uid=$($DOCKER exec moa-single id -u)
[ -n "$uid" ] && [ "$uid" != 0 ] || die "the server runs as uid '$uid' (expected non-root)"
$DOCKER exec moa-single test -s /opt/moa-serve/weights/moa-en-de/NOTICE || die "no NOTICE in the image"
tini_pid=$($DOCKER inspect -f '{{.State.Pid}}' moa-single)
[ "$(cat /proc/$tini_pid/comm)" = tini ] || die "pid 1 of the container is $(cat /proc/$tini_pid/comm), not tini"
wait_until "a moa-server process under tini" pgrep -P "$tini_pid" -x moa-server
server_pid=$(pgrep -P "$tini_pid" -x moa-server)
[ -n "$server_pid" ] || die "no moa-server under tini"
bad=$(sigterm_unsafe_threads "$server_pid")
[ -z "$bad" ] || die "server threads $bad take SIGTERM with its default action: a docker stop could kill it without draining"
[ "$($DOCKER inspect -f '{{.Config.StopSignal}}' "$IMAGE")" = SIGTERM ] || die "STOPSIGNAL is not SIGTERM"
wait_until "one container ready" curl -sf "http://127.0.0.1:$SINGLE_PORT/ready"
out=$(curl -s "http://127.0.0.1:$SINGLE_PORT/translate" -H 'Content-Type: application/json' -d '{"text": "Open file"}')
grep -q '"translatedText"' <<<"$out" || die "one container: /translate said: $out"
log "one container: uid $uid, NOTICE present, /translate on the published port: $(echo "$out" | $PY -c 'import json,sys; print(json.load(sys.stdin)["translatedText"])')"
# The Kubernetes setting, for real: the ConfigMap's config file mounted at
# /opt/moa-serve/conf, read-only root filesystem, no capabilities, no privilege
# escalation, uid/gid 10001 (docker/k8s/deployment.yaml); plus another model
# mounted read-only and chosen by MOA_MODEL, on another port (MOA_PORT).
mkdir -p "$OUT/k8s-conf"
$PY -c 'import sys, yaml; print(yaml.safe_load(open("docker/k8s/configmap.yaml"))["data"]["moa-server.conf"], end="")' \
  >"$OUT/k8s-conf/moa-server.conf" || die "cannot read docker/k8s/configmap.yaml"
$DOCKER run -d --name moa-single-model --network moa-single --read-only --cap-drop ALL \
  --security-opt no-new-privileges --user 10001:10001 \
  -v "$OUT/k8s-conf:/opt/moa-serve/conf:ro" \
  -v "$PWD/tests/fixtures/models/tiny-trained:/models/tiny:ro" \
  -e MOA_MODEL=/models/tiny -e MOA_PORT=9000 "$IMAGE" >/dev/null || die "docker run (Kubernetes settings) failed"
wait_until "Kubernetes settings: ready" $DOCKER exec moa-single-model moa-server --probe /ready
$DOCKER exec moa-single-model moa-server --probe /ready >/dev/null 2>&1 || die "Kubernetes settings: --probe /ready (MOA_PORT=9000) fails: $($DOCKER logs moa-single-model 2>&1 | tail -3)"
# (logs to a file first: `docker logs | grep -q` fails under pipefail when grep quits early)
$DOCKER logs moa-single-model >"$OUT/k8s-settings.log" 2>&1
grep -q '"msg":.*moa-en-de-tiny (/models/tiny)' "$OUT/k8s-settings.log" \
  || die "Kubernetes settings: expected JSON logs (the ConfigMap's log_format) naming /models/tiny: $($DOCKER logs moa-single-model 2>&1 | tail -3)"
grep -q 'compute workers 2' "$OUT/k8s-settings.log" || die "Kubernetes settings: the ConfigMap's compute_workers = 2 not in effect"
$DOCKER rm -f moa-single-model >/dev/null
log "Kubernetes settings (ConfigMap config, read-only root, no capabilities, uid 10001) + mounted model via MOA_MODEL, MOA_PORT=9000: ready"
# the image's HEALTHCHECK (moa-server --probe /ready; first run after 10 s)
healthy() { [ "$($DOCKER inspect -f '{{.State.Health.Status}}' moa-single)" = healthy ]; }
wait_until "HEALTHCHECK: status healthy" healthy
t0=$(date +%s.%N)
$DOCKER stop -t 40 moa-single >/dev/null
rc=$($DOCKER inspect -f '{{.State.ExitCode}}' moa-single)
stop_s=$($PY -c "import time; print(round(time.time()-$t0, 1))")
[ "$rc" = 0 ] || die "docker stop: exit status $rc (expected 0: tini forwards SIGTERM, the server drains)"
$DOCKER logs moa-single >"$OUT/single.log" 2>&1
grep -q 'SIGTERM: draining' "$OUT/single.log" || die "no drain in the log after docker stop"
$DOCKER rm moa-single >/dev/null; $DOCKER network rm moa-single >/dev/null
log "one container: HEALTHCHECK healthy; docker stop -> SIGTERM, drained, exit 0 in ${stop_s} s"

# --- 4. compose: HAProxy + 2 replicas ------------------------------------------------
STATS="http://127.0.0.1:$STATS_PORT/stats;csv"
LB="http://127.0.0.1:$LB_PORT"
# servers of backend moa that HAProxy has UP (and their names), retries, redispatches
haproxy_state() { curl -s "$STATS" | $PY -c '
import csv, sys
rows = list(csv.DictReader(l.lstrip("# ") for l in sys.stdin))
up = [r["svname"] for r in rows if r["pxname"] == "moa" and r["svname"] not in ("BACKEND", "FRONTEND") and r["status"].startswith("UP")]
be = [r for r in rows if r["pxname"] == "moa" and r["svname"] == "BACKEND"]
print(len(up), ",".join(up) or "-", be[0]["wretr"] if be else "?", be[0]["wredis"] if be else "?")'; }
wait_up() {  # N: waits until HAProxy has N replicas UP (at most WAIT_LIMIT s)
  local n names t0=$SECONDS
  while :; do
    read -r n names _ _ < <(haproxy_state 2>/dev/null || echo "0 - ? ?")
    [ "$n" = "$1" ] && { log "HAProxy: $n replica(s) UP ($names)"; return 0; }
    (( SECONDS - t0 < WAIT_LIMIT )) || die "HAProxy has ${n:-0} replica(s) UP (${names:-}), expected $1 within $WAIT_LIMIT s"
    sleep 0.5
  done
}

log "docker-compose up --scale moa=2 (project $PROJECT, balancer on 127.0.0.1:$LB_PORT)"
compose up -d --no-build --scale moa=2 >"$OUT/compose-up.log" 2>&1 || { cat "$OUT/compose-up.log" >&2; die "docker-compose up failed"; }
wait_up 2
[ "$(compose ps -q moa | wc -l)" = 2 ] || die "expected 2 moa containers"

code=$(curl -s -o "$OUT/compose-translate.json" -w '%{http_code}' "$LB/translate" -H 'Content-Type: application/json' \
  -d '{"text": ["Open file", "Delete unused files"]}')
[ "$code" = 200 ] || die "POST /translate through HAProxy: HTTP $code"
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); t=d["translatedText"]; assert len(t)==2 and all(x.strip() for x in t), d; print("  ", t)' \
  "$OUT/compose-translate.json" || die "bad /translate answer through HAProxy"
code=$(curl -s -o "$OUT/compose-heads.json" -w '%{http_code}' "$LB/heads")
[ "$code" = 200 ] && grep -q '"modules"' "$OUT/compose-heads.json" || die "GET /heads through HAProxy: HTTP $code"
code=$(curl -s -o "$OUT/compose-metrics.txt" -w '%{http_code}' "$LB/metrics")
[ "$code" = 200 ] && grep -q '^moa_ready 1' "$OUT/compose-metrics.txt" && grep -q '^moa_http_requests_total' "$OUT/compose-metrics.txt" \
  || die "GET /metrics through HAProxy: HTTP $code"
curl -s "http://127.0.0.1:$STATS_PORT/metrics" >"$OUT/compose-haproxy-metrics.txt"
grep -q '^haproxy_backend_active_servers{proxy="moa"} 2$' "$OUT/compose-haproxy-metrics.txt" \
  || die "HAProxy's /metrics (port 8404) does not show 2 active servers"
log "translate, /heads, /metrics through HAProxy: 200; HAProxy's own /metrics: 2 active servers"

# a. SIGTERM (docker stop) one replica under load
victim=$(compose ps -q moa | head -1)
log "failover a: docker stop (SIGTERM) ${victim:0:12} under load ($LOAD_WORKERS workers, $LOAD_SECONDS s)"
$PY tests/deploy/loadgen.py --url "$LB/translate" --label "compose SIGTERM" --workers "$LOAD_WORKERS" \
  --duration "$LOAD_SECONDS" --action-at 3 --action "$DOCKER stop -t 40 $victim" --settle 3 \
  --max-failures 0 --min-ok 20 --expect-servers-before 2 --expect-servers-after 1 --expect-action-rc 0 \
  --json "$OUT/compose-sigterm.json"
rc_load=$?
rc=$($DOCKER inspect -f '{{.State.ExitCode}}' "$victim")
drained=$($DOCKER logs "$victim" 2>&1 | grep -o 'SIGTERM: draining [0-9]* request(s)' | tail -1)
read -r _ _ retr_a redis_a < <(haproxy_state)
summary "compose SIGTERM: $($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%d requests, %d failed, %d in flight at the signal" % (d["requests"], d["failed"], d["in_flight_at_action"]))' "$OUT/compose-sigterm.json"); replica exit $rc ($drained); HAProxy retries so far $retr_a, redispatches $redis_a"
[ "$rc" = 0 ] || die "the stopped replica exited $rc (expected 0)"
[ "$rc_load" = 0 ] || die "SIGTERM failover: see the FAIL lines above"

# back to 2 replicas
compose up -d --no-build --scale moa=2 >>"$OUT/compose-up.log" 2>&1 || die "docker-compose up (scale back to 2) failed"
wait_up 2

# b. SIGKILL one replica's server process under load (as the OOM killer would)
victim=$(compose ps -q moa | head -1)
tini_pid=$($DOCKER inspect -f '{{.State.Pid}}' "$victim")
server_pid=$(pgrep -P "$tini_pid" -x moa-server)
[ -n "$server_pid" ] || die "no moa-server process under tini (pid $tini_pid)"
restarts0=$($DOCKER inspect -f '{{.RestartCount}}' "$victim")
log "failover b: SIGKILL moa-server (host pid $server_pid) in ${victim:0:12} under load"
$PY tests/deploy/loadgen.py --url "$LB/translate" --label "compose SIGKILL" --workers "$LOAD_WORKERS" \
  --duration "$LOAD_SECONDS" --action-at 3 --action "kill -KILL $server_pid" --settle 1 \
  --max-failures 0 --min-ok 20 --expect-servers-before 2 \
  --json "$OUT/compose-sigkill.json"
rc_load=$?
read -r _ _ retr_b redis_b < <(haproxy_state)
summary "compose SIGKILL: $($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%d requests, %d failed%s, %d in flight at the kill" % (d["requests"], d["failed"], (" " + str(d["errors"])) if d["errors"] else "", d["in_flight_at_action"]))' "$OUT/compose-sigkill.json"); HAProxy retries in this test $((retr_b - retr_a)), redispatches $((redis_b - redis_a))"
[ "$rc_load" = 0 ] || die "SIGKILL failover: see the FAIL lines above"
# the restart policy (unless-stopped) restarts the crashed replica; HAProxy takes it back
restarted() {
  [ "$($DOCKER inspect -f '{{.RestartCount}}' "$victim")" -gt "$restarts0" ] && [ "$($DOCKER inspect -f '{{.State.Running}}' "$victim")" = true ]
}
wait_until "the killed replica restarted (restart: unless-stopped)" restarted
wait_up 2
code=$(curl -s -o /dev/null -w '%{http_code}' "$LB/translate" -H 'Content-Type: application/json' -d '{"text": "Close window"}')
[ "$code" = 200 ] || die "after the restart: HTTP $code"
summary "compose SIGKILL: the replica was restarted by Docker (restart count $($DOCKER inspect -f '{{.RestartCount}}' "$victim")) and is back in HAProxy's rotation"

compose logs --no-color >"$OUT/compose.log" 2>&1
compose down -v --remove-orphans >/dev/null 2>&1 || die "docker-compose down failed"
$DOCKER image prune -f >/dev/null 2>&1
dockerd_stop
log "containers: PASS ($(( $(date +%s) - T_START )) s so far)"

# --- 5. without containers --------------------------------------------------------------
if [ "${DEPLOY_SKIP_LOCAL:-0}" != 1 ]; then
  tests/deploy/run_local.sh --server "$SERVER" || die "run_local.sh failed"
fi
summary "test-deploy: PASS in $(( $(date +%s) - T_START )) s"
