#!/usr/bin/env bash
# A Docker engine for the container tests: `ensure` one answers, `stop` the one `ensure` started.
#
#   hack/docker-engine.sh ensure   exit 0: an engine answers (started here if none ran: then
#                                  .susy/dockerd.pid exists); exit 3: none can run, and why
#   hack/docker-engine.sh stop     stops the engine `ensure` started (no-op otherwise)
#
# When no engine answers and we are root: installs Debian's docker.io (and debootstrap, for
# hack/base-image.sh) if missing, then starts dockerd with no bridge and no iptables rules:
# containers run with host networking only, so no container traffic leaves loopback, and the
# host's firewall is left alone.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SUSY_STATE_DIR:-$ROOT/.susy}
PIDFILE=$STATE/dockerd.pid
DOCKER=${DOCKER:-docker}
log() { printf 'docker-engine: %s\n' "$*" >&2; }
answers() { timeout 20 "$DOCKER" info >/dev/null 2>&1; }

ensure() {
  if answers; then
    log "an engine answers ($("$DOCKER" info --format '{{.ServerVersion}}' 2>/dev/null))"
    return 0
  fi
  if [[ $(id -u) != 0 ]]; then
    log "no engine answers 'docker info', and starting one needs root"
    return 3
  fi
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || { log "no dockerd and no apt-get to install ${missing[*]}"; return 3; }
    log "apt-get install ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >"$STATE/apt-docker.log" 2>&1 || { mkdir -p "$STATE"; log "apt-get failed (see $STATE/apt-docker.log)"; return 3; }
  fi
  mkdir -p "$STATE"
  log "starting dockerd --bridge=none --iptables=false (log: $STATE/dockerd.log)"
  dockerd --bridge=none --iptables=false --ip6tables=false --pidfile "$STATE/dockerd.daemon.pid" \
    >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 60); do
    if answers; then log "dockerd $("$DOCKER" info --format '{{.ServerVersion}}') started"; return 0; fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 0.5
  done
  log "dockerd did not start: $(tail -3 "$STATE/dockerd.log" | tr '\n' ' ')"
  rm -f "$PIDFILE"
  return 3
}

stop() {
  [[ -f $PIDFILE ]] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  log "stopping the dockerd started here (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f "$PIDFILE"
}

case ${1:-} in
  ensure) ensure ;;
  stop) stop ;;
  *) echo "usage: $0 ensure|stop" >&2; exit 2 ;;
esac
