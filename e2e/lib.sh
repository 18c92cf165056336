# Shared settings of capow's e2e scripts. Source it; it sets paths and helpers only.
# shellcheck shell=bash

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
# shellcheck source=versions.env
source "$E2E_DIR/versions.env"

# Runtime state of the environment (certificates, etcd data, logs, pids, kubeconfig).
CAPOW_E2E_STATE="${CAPOW_E2E_STATE:-/var/tmp/capow-e2e}"
# Built upstream binaries, keyed by version; survives between runs.
CAPOW_CACHE="${CAPOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capow}"
# One Go build cache and module cache for every component.
export GOCACHE="${GOCACHE:-$CAPOW_CACHE/go-build}"
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE 2>/dev/null || echo "$HOME/go/pkg/mod")}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# Loopback ports of the Kubernetes control plane.
ETCD_PORT="${ETCD_PORT:-23790}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${APISERVER_PORT:-16443}"

KUBE_STATE="$CAPOW_E2E_STATE/kube"
KUBECONFIG_E2E="$KUBE_STATE/admin.kubeconfig"
OSDEV_STATE="${OSDEV_STATE:-$CAPOW_E2E_STATE/openstack}"
export OSDEV_STATE

_t0=${_t0:-$(date +%s)}
log() { printf '[%s +%3ss] %s\n' "${LOG_TAG:-e2e}" "$(( $(date +%s) - _t0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bin_dir() { echo "$CAPOW_CACHE/bin/$1-$2"; }

# Starts "$@" in its own session with output to $1.log under $2; records "PID STARTTIME".
start_daemon() { # name dir cmd...
  local name=$1 dir=$2; shift 2
  mkdir -p "$dir/log" "$dir/run"
  setsid "$@" >"$dir/log/$name.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid $(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" > "$dir/run/$name.pid"
  log "started $name (pid $pid)"
}

# Stops a daemon started by start_daemon, only while its pid still names the same process.
stop_daemon() { # name dir
  local f="$2/run/$1.pid" pid start now
  [[ -f $f ]] || return 0
  read -r pid start < "$f"
  now=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null || true)
  if [[ -n $now && $now == "$start" ]]; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    [[ -e /proc/$pid ]] && kill -KILL -- "-$pid" 2>/dev/null
    log "stopped $1"
  fi
  rm -f "$f"
}

daemon_running() { # name dir
  local f="$2/run/$1.pid" pid start
  [[ -f $f ]] || return 1
  read -r pid start < "$f"
  [[ "$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" == "$start" ]]
}

wait_for() { # description timeout-seconds command...
  local what=$1 timeout=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || die "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}
