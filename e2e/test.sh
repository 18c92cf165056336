#!/usr/bin/env bash
# capow's test command (README "Set up", CI's .ci/run): on a fresh machine it installs what is
# missing, builds and caches the upstream components, starts a real OpenStack and a real
# kube-apiserver on 127.0.0.1, runs the lints, the unit tests and the e2e tests, and stops the
# environment again (CAPOW_E2E_KEEP=1 leaves it running).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=test
cd "$REPO_DIR"
mkdir -p "$CAPOW_E2E_STATE"

cleanup() {
  local rc=$?
  if [[ ${CAPOW_E2E_KEEP:-0} != 1 ]]; then "$E2E_DIR/env.sh" down || true; fi
  log "finished with exit code $rc"
}
trap cleanup EXIT

# The environment comes up in the background while Rust compiles (apt and the OpenStack
# services mostly wait on I/O; the Go and Rust builds use both cores).
log "starting the e2e environment in the background (log: $CAPOW_E2E_STATE/env-up.log)"
"$E2E_DIR/env.sh" up > "$CAPOW_E2E_STATE/env-up.log" 2>&1 &
env_pid=$!

log "lint: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
log "build: capow and the test binaries"
cargo build --locked --workspace --all-targets
log "unit tests"
cargo test --locked --workspace --lib --bins
log "image: the static release binary packed by crane (e2e/image.sh; e2e/tests/image.rs checks it)"
"$E2E_DIR/image.sh"

if ! wait "$env_pid"; then
  tail -40 "$CAPOW_E2E_STATE/env-up.log"
  die "the e2e environment did not come up"
fi
log "e2e environment is up"

export CAPOW_BIN="$REPO_DIR/target/debug/capow"
# shellcheck source=dev-env.sh
source "$E2E_DIR/dev-env.sh"
# CI never skips the real cluster-autoscaler: where its source is beside the repository, the
# binaries must have been built (components/build.sh cluster-autoscaler, part of env.sh up).
if [[ -x "$REPO_DIR/../shared/upstream/build.sh" ]]; then
  [[ -n ${CAPOW_E2E_CLUSTER_AUTOSCALER:-} && -n ${CAPOW_E2E_CLUSTER_AUTOSCALER_OLD_WIRE:-} ]] \
    || die "../shared/upstream is present but the cluster-autoscaler binaries were not built"
fi
# Start from a clean cloud even if an earlier run was interrupted.
OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/sweep.sh"
: > "$CAPOW_E2E_STATE/measurements.txt"
log "the environment's own smoke test: CAPI webhooks, conversion, scale, GC; workload cluster with kwok"
"$E2E_DIR/capi/smoke.sh"
log "all tests, including the e2e tests"
cargo test --locked --workspace --no-fail-fast -- --include-ignored
log "measurements:"
cat "$CAPOW_E2E_STATE/measurements.txt" >&2
