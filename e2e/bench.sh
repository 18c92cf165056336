#!/usr/bin/env bash
# The benchmark of docs/benchmarks.md ("capow beside CAPO and the Nova floor"), all of it, on an
# e2e environment that is already up (e2e/env.sh up, or CAPOW_E2E_KEEP=1 e2e/test.sh). It builds
# what it needs (capow in release mode, the bench program, CAPO from the upstream source folder
# $CAPOW_UPSTREAM_DIR), then runs:
#   side      floor, capow and CAPO, MachineDeployment 0 -> N -> 0 for N = 10, 30, 50, alternating
#             order, OpenStack calls counted per system at a proxy, a steady window at N = 50
#   increase  capow's NodeGroupIncreaseSize -> first POST /servers, 100 scale-ups
#   scale     manager memory and CPU at 1k and 10k machines (private API server, fake Nova)
#   ca-loop   the cluster-autoscaler loop at 1k, 10k and 50k machines beside an empty RPC
# Usage: e2e/bench.sh [all|side|increase|scale|ca-loop] [extra flags for that part]
# Results: $CAPOW_E2E_STATE/bench/results-<time>.jsonl (JSON lines) and the log on stderr.
# Bounded: every wait in the program has a timeout; the whole run takes about 70 minutes on the
# 2-core development machine (side ~40, increase ~8, scale ~15, ca-loop ~5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=bench
part=${1:-all}; shift || true
cd "$REPO_DIR"

# What the e2e tests read (kubeconfig, clouds.yaml, state) and the built capow.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}
# CAPOW_BENCH_PROFILE=debug uses debug builds (quicker to build; capow's CPU figures are then
# those of an unoptimized binary, which docs/benchmarks.md says where it applies).
profile=${CAPOW_BENCH_PROFILE:-release}
case $profile in
  release) profile_flag=(--release) ;;
  debug) profile_flag=() ;;
  *) die "CAPOW_BENCH_PROFILE must be release or debug" ;;
esac
log "building capow ($profile) and the bench program"
cargo build --locked "${profile_flag[@]}" --bin capow -p capow
cargo build --locked "${profile_flag[@]}" -p capow-e2e --bin bench
# The capow build under test is copied out of the target directory, so that another build in
# the same directory (another checkout, an A/B) cannot replace it during a run of many minutes.
bin_dir=$(mktemp -d /var/tmp/capow-bench-bin.XXXXXX)
trap 'rm -rf "$bin_dir"' EXIT
cp "$CARGO_TARGET_DIR/$profile/capow" "$bin_dir/capow"
export CAPOW_BIN="$bin_dir/capow"
# shellcheck source=dev-env.sh
source "$E2E_DIR/dev-env.sh"
curl -sf "http://127.0.0.1:5000/v3" >/dev/null || die "the e2e OpenStack is not up (e2e/env.sh up)"

need_capo() {
  UPSTREAM_DIR="${CAPOW_UPSTREAM_DIR:-$REPO_DIR/../shared/upstream}"
  export CAPOW_UPSTREAM_DIR=$UPSTREAM_DIR
  "$E2E_DIR/components/build.sh" capo
  CAPOW_BENCH_CAPO_BIN="$(bin_dir capo "$CAPO_VERSION")/manager"
  CAPOW_BENCH_CAPO_DIR=$("$E2E_DIR/components/build.sh" capo-dir)
  CAPOW_BENCH_ORC_DIR=$("$E2E_DIR/components/build.sh" orc-dir)
  CAPOW_BENCH_CAPO_VERSION=$CAPO_VERSION
  # CAPO's webhook serving certificate (127.0.0.1) and its CA, made once.
  CAPOW_BENCH_CAPO_CERTS="$CAPOW_E2E_STATE/bench/capo-webhook"
  if [[ ! -f $CAPOW_BENCH_CAPO_CERTS/tls.crt ]]; then
    mkdir -p "$CAPOW_BENCH_CAPO_CERTS"
    new_ca "$CAPOW_BENCH_CAPO_CERTS/ca" capow-bench-capo-webhook-ca
    issue_cert "$CAPOW_BENCH_CAPO_CERTS/ca" "$CAPOW_BENCH_CAPO_CERTS/tls" "/CN=capo-webhook-service" \
      "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth')"
  fi
  export CAPOW_BENCH_CAPO_BIN CAPOW_BENCH_CAPO_DIR CAPOW_BENCH_ORC_DIR CAPOW_BENCH_CAPO_CERTS CAPOW_BENCH_CAPO_VERSION
}

# The CAPI CRDs for the private API server of the scale part.
need_capi() {
  CAPOW_BENCH_CAPI_DIR=$("$E2E_DIR/components/build.sh" cluster-api-dir)
  export CAPOW_BENCH_CAPI_DIR
}

bench() { "$CARGO_TARGET_DIR/$profile/bench" "$@"; }

log "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "versions: capow $(git rev-parse --short HEAD), CAPO $CAPO_VERSION, CAPI $CAPI_VERSION, Kubernetes $K8S_VERSION, $(rustc --version)"
case $part in
  side) need_capo; bench side "$@" ;;
  increase) bench increase "$@" ;;
  scale) need_capo; need_capi; bench scale "$@" ;;
  ca-loop) cargo bench --locked --bench ca_loop -- "$@" ;;
  all)
    need_capo
    bench side
    bench increase
    need_capi
    bench scale
    cargo bench --locked --bench ca_loop
    ;;
  *) die "usage: e2e/bench.sh [all|side|increase|scale|ca-loop] [flags]" ;;
esac
log "done (results in $CAPOW_E2E_STATE/bench/)"
