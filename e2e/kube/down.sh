#!/usr/bin/env bash
# Stops what up.sh started. --purge also deletes the state (etcd data, certificates).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=kube
stop_daemon kube-apiserver "$KUBE_STATE"
stop_daemon etcd "$KUBE_STATE"
if [[ ${1:-} == --purge ]]; then rm -rf "$KUBE_STATE"; log "purged $KUBE_STATE"; fi
