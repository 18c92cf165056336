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
# Loopback ports of what capi/up.sh adds to the management cluster.
KCM_PORT="${KCM_PORT:-16457}"                    # kube-controller-manager (secure serving: /healthz)
CAPI_HEALTH_PORT="${CAPI_HEALTH_PORT:-16940}"    # CAPI manager /healthz, /readyz
CAPI_METRICS_PORT="${CAPI_METRICS_PORT:-16941}"  # CAPI manager /metrics (plain HTTP)
CAPI_WEBHOOK_PORT="${CAPI_WEBHOOK_PORT:-16943}"  # CAPI manager webhooks (HTTPS, conversion + admission)
# The second management plane of the clusterctl move test (mgmt2/up.sh): the same parts on
# these ports, state under $CAPOW_E2E_STATE/mgmt2.
MGMT2_ETCD_PORT="${MGMT2_ETCD_PORT:-23792}"
MGMT2_ETCD_PEER_PORT="${MGMT2_ETCD_PEER_PORT:-23802}"
MGMT2_APISERVER_PORT="${MGMT2_APISERVER_PORT:-16445}"
MGMT2_KCM_PORT="${MGMT2_KCM_PORT:-16459}"
MGMT2_CAPI_HEALTH_PORT="${MGMT2_CAPI_HEALTH_PORT:-16960}"
MGMT2_CAPI_METRICS_PORT="${MGMT2_CAPI_METRICS_PORT:-16961}"
MGMT2_CAPI_WEBHOOK_PORT="${MGMT2_CAPI_WEBHOOK_PORT:-16963}"
# Workload clusters (workload/up.sh): slot n (0-9) uses WORKLOAD_PORT_BASE + 10n + offset,
# offsets 0 kube-apiserver, 1 kube-scheduler, 2 kube-controller-manager, 3 kwok.
WORKLOAD_PORT_BASE="${WORKLOAD_PORT_BASE:-17400}"

KUBE_STATE="$CAPOW_E2E_STATE/kube"
KUBECONFIG_E2E="$KUBE_STATE/admin.kubeconfig"
CAPI_STATE="$CAPOW_E2E_STATE/capi"
WORKLOAD_STATE="$CAPOW_E2E_STATE/workload"
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

# Resident memory of a daemon started by start_daemon, in MiB (empty when it is not running).
daemon_rss_mib() { # name dir
  local pid start; daemon_running "$1" "$2" || return 0
  read -r pid start < "$2/run/$1.pid"
  awk '/^VmRSS:/ {printf "%d", $2/1024}' "/proc/$pid/status" 2>/dev/null
}

# Seconds since $1 (a `date +%s.%N` value), one decimal.
elapsed_since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}'; }

# A self-signed CA: new_ca <prefix> <common name> writes <prefix>.crt and <prefix>.key.
new_ca() {
  (umask 077; openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.crt" 2>/dev/null)
}

# A certificate signed by a CA: issue_cert <ca prefix> <out prefix> <subject> <x509v3 extension lines>.
# Serials are random, so nothing is written next to the CA (it may belong to another script).
issue_cert() {
  local ca=$1 out=$2 subj=$3 ext=$4
  (umask 077
   openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$out.key" -out "$out.csr" 2>/dev/null
   openssl x509 -req -in "$out.csr" -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
     -days 3650 -extfile <(printf '%s\n' "$ext") -out "$out.crt" 2>/dev/null)
  rm -f "$out.csr"
}

# A kubeconfig with the certificates embedded, so it also works as a CAPI "<cluster>-kubeconfig"
# Secret: write_kubeconfig_embedded <file> <server url> <ca.crt> <client prefix> <cluster name>.
write_kubeconfig_embedded() {
  local file=$1 server=$2 ca=$3 client=$4 name=$5
  (umask 077; cat > "$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$ca")
users:
- name: $name-user
  user:
    client-certificate-data: $(base64 -w0 "$client.crt")
    client-key-data: $(base64 -w0 "$client.key")
contexts:
- name: $name
  context: {cluster: $name, user: $name-user}
current-context: $name
KC
  )
}

# Fails when something already listens on a loopback port we are about to use.
need_free_port() { # port what
  if ss -Htln "sport = :$1" 2>/dev/null | grep -q .; then
    die "port $1 (for $2) is already in use: $(ss -Htlnp "sport = :$1" | head -1)"
  fi
}

# Like wait_for, for a daemon just started by start_daemon: fails at once, showing the end of
# its log, when the daemon exits instead of becoming ready.
wait_daemon() { # name dir timeout-seconds description command...
  local name=$1 dir=$2 timeout=$3 what=$4; shift 4
  local deadline=$(( $(date +%s) + timeout )) pid start
  read -r pid start < "$dir/run/$name.pid"
  until "$@" >/dev/null 2>&1; do
    if ! daemon_running "$name" "$dir" || [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
      tail -5 "$dir/log/$name.log" >&2
      die "$name exited instead of becoming ready (log: $dir/log/$name.log)"
    fi
    (( $(date +%s) < deadline )) || die "timed out after ${timeout}s waiting for $what (log: $dir/log/$name.log)"
    sleep 0.2
  done
}
