# Exports what the e2e tests read, for an environment already started with `e2e/env.sh up`
# (or kept by CAPOW_E2E_KEEP=1). Source it, then run single tests, e.g.
#   source e2e/dev-env.sh && cargo test -p capow-e2e --test machine -- --include-ignored
# CAPOW_BIN defaults to this checkout's debug build (CARGO_TARGET_DIR is honoured).
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export CAPOW_E2E_KUBECONFIG="$KUBECONFIG_E2E"
export CAPOW_E2E_CLOUDS_YAML="$OSDEV_STATE/clouds.yaml"
export CAPOW_E2E_CLOUD=osdev-demo CAPOW_E2E_ADMIN_CLOUD=osdev-admin
export CAPOW_BIN="${CAPOW_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/capow}" CAPOW_E2E_STATE
CAPOW_GRPCPROBE=$(cat "$CAPOW_CACHE/bin/grpcprobe.path" 2>/dev/null || true)
export CAPOW_GRPCPROBE
export CAPOW_E2E_DIR="$E2E_DIR"
CAPOW_E2E_KUBECTL="$(bin_dir kubernetes "$K8S_VERSION")/kubectl"
CAPOW_E2E_CLUSTERCTL="$(bin_dir cluster-api "$CAPI_VERSION")/clusterctl"
CAPOW_E2E_HELM="$(bin_dir helm "$HELM_VERSION")/helm"
export CAPOW_E2E_KUBECTL CAPOW_E2E_CLUSTERCTL CAPOW_E2E_HELM
# The real cluster-autoscaler (components/build.sh cluster-autoscaler builds it from the
# upstream source kept beside the repository); an already set CAPOW_E2E_CLUSTER_AUTOSCALER
# (1.36.1, new wire) or CAPOW_E2E_CLUSTER_AUTOSCALER_OLD_WIRE (1.34.1) wins, e.g. in a clone
# without that source.
for _v in $CA_VERSIONS; do
  _bin="$(bin_dir cluster-autoscaler "$_v")/cluster-autoscaler"
  [[ -x $_bin ]] || continue
  case $_v in
    1.34.*) export CAPOW_E2E_CLUSTER_AUTOSCALER_OLD_WIRE="${CAPOW_E2E_CLUSTER_AUTOSCALER_OLD_WIRE:-$_bin}" ;;
    *) export CAPOW_E2E_CLUSTER_AUTOSCALER="${CAPOW_E2E_CLUSTER_AUTOSCALER:-$_bin}" ;;
  esac
done
unset _v _bin
