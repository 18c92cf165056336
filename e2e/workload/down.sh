#!/usr/bin/env bash
# Stops workload cluster <name> started by workload/up.sh. --purge also deletes its objects from
# the shared etcd (only the keys under /workload-<name>/) and its state directory.
# Usage: workload/down.sh <name> [--purge]     workload/down.sh --all [--purge]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

down_one() { # name purge
  local NAME=$1
  LOG_TAG="workload-$NAME"
  source "$E2E_DIR/workload/lib.sh"
  local d; for d in kwok kube-controller-manager kube-scheduler kube-apiserver; do stop_daemon "$d" "$WDIR"; done
  if [[ $2 == --purge ]]; then
    local key end
    key=$(printf '%s/' "$ETCD_PREFIX" | base64 -w0) end=$(printf '%s0' "$ETCD_PREFIX" | base64 -w0)
    if curl -sf -X POST "http://127.0.0.1:$ETCD_PORT/v3/kv/deleterange" \
         -d "{\"key\":\"$key\",\"range_end\":\"$end\"}" >/dev/null; then
      log "deleted the etcd keys under $ETCD_PREFIX/"
    else
      log "WARNING: etcd is not reachable; the keys under $ETCD_PREFIX/ remain"
    fi
    rm -rf "$WDIR"; log "purged $WDIR"
  fi
}

case "${1:-}" in
  "") die "usage: workload/down.sh <name> [--purge] | --all [--purge]" ;;
  --all) for dir in "$WORKLOAD_STATE"/*/; do if [[ -d $dir ]]; then down_one "$(basename "$dir")" "${2:-}"; fi; done ;;
  *) down_one "$1" "${2:-}" ;;
esac
