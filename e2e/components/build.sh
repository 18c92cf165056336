#!/usr/bin/env bash
# Builds the real upstream components the e2e harness runs, from their published Go modules,
# with this machine's Go toolchain. Binaries are cached under $CAPOW_CACHE/bin/<name>-<version>;
# a cached build is reused. Usage: build.sh kubernetes
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=build

build_kubernetes() {
  local out; out=$(bin_dir kubernetes "$K8S_VERSION")
  if [[ -x $out/kube-apiserver && -x $out/kubectl && -x $out/kube-controller-manager && -x $out/kube-scheduler ]]; then
    log "kubernetes $K8S_VERSION: cached in $out"; return
  fi
  log "kubernetes $K8S_VERSION: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (cold: about 6 minutes on 2 cores)"
  mkdir -p "$out.tmp"
  (cd "$E2E_DIR/components/kubernetes" && GOMAXPROCS=2 go build -p 2 -trimpath -ldflags='-s -w' -o "$out.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "kubernetes $K8S_VERSION: built into $out"
}

# The e2e suite's grpc-go client of capow's externalgrpc server (dials like cluster-autoscaler
# does, decodes v1.Node with k8s.io/api). Cached by the hash of its sources.
build_grpcprobe() {
  local src="$E2E_DIR/components/grpcprobe" hash out
  hash=$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-12)
  out=$(bin_dir grpcprobe "$hash")
  if [[ -x $out/grpcprobe ]]; then log "grpcprobe $hash: cached"; echo "$out/grpcprobe" > "$CAPOW_CACHE/bin/grpcprobe.path"; return; fi
  mkdir -p "$out"
  (cd "$src" && GOMAXPROCS=2 go build -p 2 -trimpath -ldflags='-s -w' -o "$out/grpcprobe" .)
  echo "$out/grpcprobe" > "$CAPOW_CACHE/bin/grpcprobe.path"
  log "grpcprobe $hash: built into $out"
}

# The CAPI CRDs come from the published module's source tree (core/config/crd/bases).
fetch_cluster_api() {
  local dir
  dir=$(cd "$E2E_DIR/components/kubernetes" && go mod download -json "sigs.k8s.io/cluster-api@$CAPI_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [[ -d $dir/core/config/crd/bases ]] || die "sigs.k8s.io/cluster-api@$CAPI_VERSION has no core/config/crd/bases"
  echo "$dir"
}

case "${1:-}" in
  kubernetes) build_kubernetes ;;
  grpcprobe) build_grpcprobe ;;
  cluster-api-dir) fetch_cluster_api ;;
  *) die "usage: build.sh kubernetes|grpcprobe|cluster-api-dir" ;;
esac
