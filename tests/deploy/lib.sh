# Helpers shared by the deployment tests (sourced, not run).
#
#   need_packages PKG...   apt-get installs the missing ones (idempotent, quiet)
#   dockerd_start          starts a private dockerd (own socket, data-root,
#                          exec-root under $DEPLOY_STATE / $DEPLOY_RUN)
#   dockerd_stop           stops it (and the containerd it started)
#   base_image             makes localhost/debian:bookworm from a cached
#                          debootstrap tarball (debootstrap once)
#
# Nothing here touches a dockerd the machine may already run: the private
# daemon listens on $DOCKER_HOST only, has no default bridge (--bridge=none:
# builds use --network host, compose makes its own network), and keeps its
# images under $DEPLOY_STATE/docker so the layers are reused by the next run.

DEPLOY_STATE=${DEPLOY_STATE:-/var/lib/moa-serve-deploy}
DEPLOY_RUN=${DEPLOY_RUN:-/run/moa-serve-deploy}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DOCKER_HOST="unix://$DEPLOY_RUN/docker.sock"
# Debian's client (docker.io), the same version as its daemon.
DOCKER=${DOCKER:-/usr/bin/docker}
COMPOSE=${COMPOSE:-/usr/bin/docker-compose}

log() { printf '%s [deploy] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# The most seconds a wait for a state (a server ready, a container healthy,
# a backend taken back) may take: it ends a run whose state never comes and
# is never what a test measures, so a loaded machine makes a run slower, not
# fail. WAIT_LIMIT in the environment overrides it.
WAIT_LIMIT=${WAIT_LIMIT:-300}

# wait_until WHAT CMD...: runs CMD every 0.2 s until it succeeds; dies after
# $WAIT_LIMIT s naming WHAT.
wait_until() {
  local what=$1 t0=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < WAIT_LIMIT )) || die "$what: not within $WAIT_LIMIT s (WAIT_LIMIT)"
    sleep 0.2
  done
}

need_packages() {
  local missing=() p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

dockerd_start() {
  [ "$(id -u)" -eq 0 ] || die "the container test starts its own dockerd: run it as root"
  mkdir -p "$DEPLOY_STATE/docker" "$DEPLOY_RUN"
  if [ -S "$DEPLOY_RUN/docker.sock" ] && $DOCKER info >/dev/null 2>&1; then
    die "a dockerd already answers on $DOCKER_HOST (a previous run still going?)"
  fi
  log "starting dockerd (vfs, data-root $DEPLOY_STATE/docker, $DOCKER_HOST)"
  dockerd --storage-driver vfs --data-root "$DEPLOY_STATE/docker" \
    --exec-root "$DEPLOY_RUN/exec" --pidfile "$DEPLOY_RUN/dockerd.pid" \
    -H "$DOCKER_HOST" --bridge=none --log-level warn \
    >"$DEPLOY_RUN/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local t0=$SECONDS
  while (( SECONDS - t0 < WAIT_LIMIT )); do
    $DOCKER info >/dev/null 2>&1 && { log "dockerd up (pid $DOCKERD_PID)"; return 0; }
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$DEPLOY_RUN/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  tail -20 "$DEPLOY_RUN/dockerd.log" >&2
  die "dockerd did not answer within $WAIT_LIMIT s"
}

dockerd_stop() {
  [ -n "${DOCKERD_PID:-}" ] || return 0
  if kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    local i
    for i in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && { log "dockerd still up after 30 s: SIGKILL"; kill -KILL "$DOCKERD_PID" 2>/dev/null; }
    wait "$DOCKERD_PID" 2>/dev/null
    log "dockerd stopped"
  fi
  DOCKERD_PID=
}

# localhost/debian:bookworm: debootstrap --variant=minbase, trimmed like
# Docker's debian:bookworm-slim (no docs but copyright files, no man pages or
# locales, apt lists and archives emptied, bookworm-updates and -security in
# the sources). The tarball is kept in $DEPLOY_STATE for the next run.
base_image() {
  if $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"; return 0
  fi
  local tarball="$DEPLOY_STATE/debian-bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    need_packages debootstrap
    local root="$DEPLOY_STATE/rootfs.tmp"
    rm -rf "$root"
    log "debootstrap --variant=minbase bookworm (once; the tarball is cached in $DEPLOY_STATE)"
    debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$DEPLOY_STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$DEPLOY_STATE/debootstrap.log" >&2; die "debootstrap failed"; }
    slim_rootfs "$root"
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  log "docker import $tarball -> $BASE_IMAGE ($(du -h "$tarball" | cut -f1))"
  $DOCKER import -c 'CMD ["bash"]' "$tarball" "$BASE_IMAGE" >/dev/null || die "docker import failed"
}

slim_rootfs() {
  local root=$1
  cat >"$root/etc/apt/sources.list" <<SRC
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
  printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/debootstrap
  : >"$root/etc/machine-id" 2>/dev/null || true
}

# Threads of process PID that would take a SIGTERM with its default action
# (kill the process without draining): SIGTERM neither blocked nor caught. The
# main thread is left out: it waits for the signal in sigtimedwait, which shows
# as unblocked while it waits. Prints "tid,tid..." or nothing.
sigterm_unsafe_threads() {
  local pid=$1 t blk cgt out=
  for t in /proc/"$pid"/task/*; do
    [ "${t##*/}" = "$pid" ] && continue
    blk=$(awk '/^SigBlk:/ {print $2}' "$t/status" 2>/dev/null) || continue
    cgt=$(awk '/^SigCgt:/ {print $2}' "$t/status" 2>/dev/null)
    [ -n "$blk" ] || continue
    (( (0x$blk & 0x4000) || (0x$cgt & 0x4000) )) || out="$out${out:+,}${t##*/}"
  done
  echo "$out"
}
