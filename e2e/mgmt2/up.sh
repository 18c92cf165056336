#!/usr/bin/env bash
# Starts the second management plane of the clusterctl move test (e2e/tests/move.rs): its own
# etcd, kube-apiserver (with the CAPI, kubeadm-bootstrap and capow CRDs),
# kube-controller-manager and CAPI core manager with its webhooks, all on 127.0.0.1 at the
# MGMT2_* ports of lib.sh, by the same kube/up.sh and capi/up.sh as the main plane (see
# mgmt2/env.sh). Prints the admin kubeconfig of the second plane on stdout. Idempotent; stop
# with mgmt2/down.sh.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
LOG_TAG=mgmt2
t0=$(date +%s.%N)
# kube/up.sh waits for etcd and the apiserver by their ports: make sure nobody else answers there.
daemon_running etcd "$KUBE_STATE" || need_free_port "$ETCD_PORT" "the second etcd"
daemon_running etcd "$KUBE_STATE" || need_free_port "$ETCD_PEER_PORT" "the second etcd (peer)"
daemon_running kube-apiserver "$KUBE_STATE" || need_free_port "$APISERVER_PORT" "the second kube-apiserver"
"$E2E_DIR/kube/up.sh" >&2
"$E2E_DIR/capi/up.sh" >&2
log "second management plane ready in $(elapsed_since "$t0") s at https://127.0.0.1:$APISERVER_PORT"
echo "$KUBECONFIG_E2E"
