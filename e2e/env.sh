#!/usr/bin/env bash
# The e2e environment, all on 127.0.0.1: a real OpenStack (Debian packages), a real Kubernetes
# management cluster (etcd, kube-apiserver, kube-controller-manager) with the real Cluster API
# core manager and its webhooks, and on demand workload clusters (workload/up.sh <name>).
# Usage: env.sh up | down [--purge] | status
#   up    installs what is missing, builds/caches the upstream binaries, starts everything
#         (CAPOW_E2E_CAPI=0: everything but the CAPI core, which is stopped if it runs)
#   down  stops everything, workload clusters included (state kept; --purge deletes it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=env

case "${1:-}" in
  up)
    "$E2E_DIR/prereqs.sh"
    mkdir -p "$CAPOW_E2E_STATE"
    # OpenStack's install mostly waits on apt and disk: the Go builds run meanwhile.
    OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/up.sh" > "$CAPOW_E2E_STATE/openstack-up.log" 2>&1 &
    os_pid=$!
    if ! "$E2E_DIR/components/build.sh" all; then
      wait "$os_pid" || true
      die "building the upstream components failed"
    fi
    wait "$os_pid" \
      || { tail -30 "$CAPOW_E2E_STATE/openstack-up.log"; die "OpenStack did not come up (log: $CAPOW_E2E_STATE/openstack-up.log)"; }
    log "OpenStack is up (clouds.yaml: $OSDEV_STATE/clouds.yaml)"
    "$E2E_DIR/kube/up.sh"
    if [[ ${CAPOW_E2E_CAPI:-1} == 1 ]]; then
      "$E2E_DIR/capi/up.sh"
    else
      "$E2E_DIR/capi/down.sh"
      log "CAPOW_E2E_CAPI=0: the CAPI core is not running (e2e/capi/up.sh starts it)"
    fi
    ;;
  down)
    "$E2E_DIR/workload/down.sh" --all "${2:-}" || true
    # The move test's second management plane, in case a killed test left it running.
    "$E2E_DIR/mgmt2/down.sh" "${2:-}" > /dev/null 2>&1 || true
    "$E2E_DIR/capi/down.sh" "${2:-}" || true
    "$E2E_DIR/kube/down.sh" "${2:-}" || true
    OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/down.sh" "${2:-}" > /dev/null 2>&1 || true
    log "environment stopped"
    ;;
  status)
    status_of() { # dir daemon...
      local dir=$1 d; shift
      for d; do
        if daemon_running "$d" "$dir"; then echo "$d: running, RSS $(daemon_rss_mib "$d" "$dir") MiB"; else echo "$d: stopped"; fi
      done
    }
    status_of "$KUBE_STATE" etcd kube-apiserver
    status_of "$CAPI_STATE" kube-controller-manager capi-manager
    if [[ -d $CAPOW_E2E_STATE/mgmt2 ]]; then
      echo "second management plane of the move test ($CAPOW_E2E_STATE/mgmt2):"
      { status_of "$CAPOW_E2E_STATE/mgmt2/kube" etcd kube-apiserver
        status_of "$CAPOW_E2E_STATE/mgmt2/capi" kube-controller-manager capi-manager; } | sed 's/^/  /'
    fi
    for dir in "$WORKLOAD_STATE"/*/; do
      [[ -d $dir ]] || continue
      echo "workload cluster $(basename "$dir") (kubeconfig ${dir}admin.kubeconfig):"
      status_of "$dir" kube-apiserver kube-scheduler kube-controller-manager kwok | sed 's/^/  /'
    done
    OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/status.sh" || true
    ;;
  *) die "usage: env.sh up | down [--purge] | status" ;;
esac
