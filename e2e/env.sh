#!/usr/bin/env bash
# The e2e environment: a real OpenStack (Debian packages) and a real Kubernetes API server,
# both on 127.0.0.1. Usage: env.sh up | down [--purge] | status
#   up    installs what is missing, builds/caches the upstream binaries, starts everything
#   down  stops everything (state kept; --purge deletes it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=env

case "${1:-}" in
  up)
    "$E2E_DIR/prereqs.sh"
    "$E2E_DIR/components/build.sh" kubernetes
    "$E2E_DIR/components/build.sh" grpcprobe
    OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/up.sh" > "$CAPOW_E2E_STATE/openstack-up.log" 2>&1 \
      || { tail -30 "$CAPOW_E2E_STATE/openstack-up.log"; die "OpenStack did not come up (log: $CAPOW_E2E_STATE/openstack-up.log)"; }
    log "OpenStack is up (clouds.yaml: $OSDEV_STATE/clouds.yaml)"
    "$E2E_DIR/kube/up.sh"
    ;;
  down)
    "$E2E_DIR/kube/down.sh" "${2:-}" || true
    OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/down.sh" "${2:-}" > /dev/null 2>&1 || true
    log "environment stopped"
    ;;
  status)
    for d in etcd kube-apiserver; do
      if daemon_running "$d" "$KUBE_STATE"; then echo "$d: running"; else echo "$d: stopped"; fi
    done
    OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/status.sh" || true
    ;;
  *) die "usage: env.sh up | down [--purge] | status" ;;
esac
