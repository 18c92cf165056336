#!/usr/bin/env bash
# Stops the second management plane started by mgmt2/up.sh (only its own processes, by their
# pid files under $CAPOW_E2E_STATE/mgmt2). --purge also deletes its state.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
LOG_TAG=mgmt2
"$E2E_DIR/capi/down.sh" "${1:-}" || true
"$E2E_DIR/kube/down.sh" "${1:-}" || true
if [[ ${1:-} == --purge ]]; then rm -rf "$MGMT2_STATE"; fi
log "second management plane stopped"
