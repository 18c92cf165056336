#!/usr/bin/env bash
# Records in a management cluster what `clusterctl init` would have recorded there, for the
# providers the e2e environment runs as processes instead of Deployments, so that the real
# `clusterctl move` accepts it as a source or a target:
#   - the inventory CRD (cmd/clusterctl/config/manifest/clusterctl-api.yaml of the CAPI module),
#   - one Provider object each for the CAPI core (cluster-api, $CAPI_VERSION) and capow
#     (infrastructure-openstack-workers, the workspace version of Cargo.toml); move refuses a
#     target without the source's providers at the same or a newer version
#     (cmd/clusterctl/client/cluster/mover.go, checkTargetProviders),
#   - the label clusterctl.cluster.x-k8s.io on every *.cluster.x-k8s.io CRD (CAPI, kubeadm
#     bootstrap, capow, the control-plane stand-in): move finds the kinds it moves by that label
#     (cmd/clusterctl/client/cluster/objectgraph.go, getCRDList).
# Idempotent (server-side apply, field manager capow-e2e-clusterctl).
# Usage: inventory.sh <admin kubeconfig>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=inventory
kubeconfig=${1:?usage: inventory.sh <admin kubeconfig>}
KBIN=$(bin_dir kubernetes "$K8S_VERSION")
k() { "$KBIN/kubectl" --kubeconfig "$kubeconfig" --request-timeout=30s "$@"; }
CAPI_DIR=$("$E2E_DIR/components/build.sh" cluster-api-dir)
CAPOW_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml" | head -1)
[[ -n $CAPOW_VERSION ]] || die "no version in $REPO_DIR/Cargo.toml"

k apply --server-side --force-conflicts --field-manager=capow-e2e-clusterctl \
  -f "$CAPI_DIR/cmd/clusterctl/config/manifest/clusterctl-api.yaml" >/dev/null
wait_for "the clusterctl inventory CRD" 60 bash -c "'$KBIN/kubectl' --kubeconfig '$kubeconfig' get crd providers.clusterctl.cluster.x-k8s.io -o jsonpath='{.status.conditions[?(@.type==\"Established\")].status}' | grep -q True"
crds=$(k get crd -o name | grep -E '\.cluster\.x-k8s\.io$' | grep -v '/providers\.clusterctl\.' || true)
[[ -n $crds ]] || die "no Cluster API CRDs installed at $kubeconfig"
# shellcheck disable=SC2086
k label --overwrite $crds clusterctl.cluster.x-k8s.io= >/dev/null
k apply --server-side --force-conflicts --field-manager=capow-e2e-clusterctl -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: capi-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: capow-system}
---
apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3
kind: Provider
metadata:
  name: cluster-api
  namespace: capi-system
  labels: {clusterctl.cluster.x-k8s.io: "", cluster.x-k8s.io/provider: cluster-api}
providerName: cluster-api
type: CoreProvider
version: $CAPI_VERSION
---
apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3
kind: Provider
metadata:
  name: infrastructure-openstack-workers
  namespace: capow-system
  labels: {clusterctl.cluster.x-k8s.io: "", cluster.x-k8s.io/provider: infrastructure-openstack-workers}
providerName: openstack-workers
type: InfrastructureProvider
version: v$CAPOW_VERSION
YAML
log "clusterctl inventory recorded at $kubeconfig (cluster-api $CAPI_VERSION, openstack-workers v$CAPOW_VERSION, $(wc -w <<<"$crds") CRDs labelled)"
