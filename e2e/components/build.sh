#!/usr/bin/env bash
# Builds the real upstream components the e2e harness runs, from their published Go modules,
# with this machine's Go toolchain. Binaries are cached under $CAPOW_CACHE/bin/<name>-<version>
# together with a .recipe file saying how they were built; a cached build with the same recipe
# is reused. Usage: build.sh kubernetes | cluster-api | kwok | grpcprobe | helm | crane | cluster-autoscaler | all |
# cluster-api-dir | kwok-dir   (`all` builds what the environment runs; crane is built by e2e/image.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=build
export GOWORK=off

GOBUILD=(env GOMAXPROCS=2 go build -p 2 -trimpath)

# True when dir holds the binaries built with exactly this recipe.
cached() { # dir recipe binary...
  local dir=$1 recipe=$2; shift 2
  [[ -f $dir/.recipe && "$(cat "$dir/.recipe")" == "$recipe" ]] || return 1
  local b; for b; do [[ -x $dir/$b ]] || return 1; done
}

# Runs a build and logs its wall time and the peak RSS of its largest process (go/compile/link).
measured() { # label command...
  local label=$1; shift
  local t0=$SECONDS stats; stats=$(mktemp)
  if [[ -x /usr/bin/time ]]; then /usr/bin/time -f '%M' -o "$stats" "$@"; else "$@"; fi
  log "$label: built in $(( SECONDS - t0 )) s$( [[ -s $stats ]] && echo ", peak RSS of one build process $(( $(tail -1 "$stats") / 1024 )) MiB")"
  rm -f "$stats"
}

# The source directory of module@version as the component module resolves it (downloads it).
module_dir() { # component module-path version
  local comp="$E2E_DIR/components/$1" got
  got=$(cd "$comp" && go list -m -f '{{.Version}}' "$2")
  [[ $got == "$3" ]] || die "components/$1/go.mod requires $2 $got, versions.env pins $3"
  (cd "$comp" && go mod download "$2@$3" && go list -m -f '{{.Dir}}' "$2")
}

# Version stamping as the upstream release builds do, so that /version reports the real version
# (the CAPI manager refuses a management cluster whose version does not parse as >= v1.20).
version_ldflags() { # package... (each with gitVersion/gitMajor/gitMinor/gitTreeState vars) ; $VER
  local major=${VER#v}; major=${major%%.*}
  local minor=${VER#v*.}; minor=${minor%%.*}
  local p; for p; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
      "$p" "$VER" "$p" "$major" "$p" "$minor" "$p"
  done
}

build_kubernetes() {
  local out recipe="kube-apiserver kube-controller-manager kube-scheduler kubectl; version-stamped"
  out=$(bin_dir kubernetes "$K8S_VERSION")
  if cached "$out" "$recipe" kube-apiserver kube-controller-manager kube-scheduler kubectl; then
    log "kubernetes $K8S_VERSION: cached in $out"; return
  fi
  module_dir kubernetes k8s.io/kubernetes "$K8S_VERSION" > /dev/null
  log "kubernetes $K8S_VERSION: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (cold: about 6 minutes on 2 cores)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$E2E_DIR/components/kubernetes"; measured "kubernetes $K8S_VERSION" "${GOBUILD[@]}" \
      -ldflags "-s -w $(VER=$K8S_VERSION version_ldflags k8s.io/component-base/version k8s.io/client-go/pkg/version)" \
      -o "$out.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  [[ "$("$out.tmp/kube-apiserver" --version)" == "Kubernetes $K8S_VERSION" ]] || die "kube-apiserver does not report $K8S_VERSION"
  echo "$recipe" > "$out.tmp/.recipe"
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

# The CAPI core manager (sigs.k8s.io/cluster-api/core) and clusterctl. CAPI v1.14 has no flag for
# the host of its webhook server, and controller-runtime then listens on every interface; the
# harness only runs loopback listeners, so the manager is built from a copy of the module source
# in which core/main.go sets the webhook server's Host to 127.0.0.1 (the one change; checked
# below). The go command refuses -overlay for files in GOMODCACHE, hence the copy and a
# directory replace in a scratch copy of components/cluster-api/go.mod.
build_cluster_api() {
  local out recipe="manager (webhook server host 127.0.0.1) clusterctl; version-stamped"
  out=$(bin_dir cluster-api "$CAPI_VERSION")
  if cached "$out" "$recipe" manager clusterctl; then log "cluster-api $CAPI_VERSION: cached in $out"; return; fi
  local src work="$out.tmp"
  src=$(module_dir cluster-api sigs.k8s.io/cluster-api "$CAPI_VERSION")
  module_dir cluster-api sigs.k8s.io/cluster-api/api "$CAPI_VERSION" > /dev/null
  log "cluster-api $CAPI_VERSION: building the core manager and clusterctl"
  rm -rf "$work" && mkdir -p "$work/bin"
  cp -r "$src" "$work/cluster-api" && chmod -R u+w "$work/cluster-api"
  local main="$work/cluster-api/core/main.go"
  [[ $(grep -c $'^\t*webhook\\.Options{$' "$main") == 1 ]] || die "core/main.go: webhook.Options{ not found exactly once"
  grep -q 'Host:' "$main" && die "core/main.go already sets a Host; revisit the loopback patch"
  sed -i $'s/^\\(\t*\\)webhook\\.Options{$/&\\n\\1\tHost:     "127.0.0.1",/' "$main"
  [[ $(grep -c $'^\t*Host:     "127.0.0.1",$' "$main") == 1 ]] || die "core/main.go: the loopback patch did not apply"
  cp "$E2E_DIR/components/cluster-api/go.mod" "$E2E_DIR/components/cluster-api/go.sum" "$work/"
  (cd "$work"; go mod edit -replace sigs.k8s.io/cluster-api=./cluster-api
    measured "cluster-api $CAPI_VERSION" "${GOBUILD[@]}" \
      -ldflags "-s -w $(VER=$CAPI_VERSION version_ldflags sigs.k8s.io/cluster-api/version)" \
      -o "$work/bin/" sigs.k8s.io/cluster-api/core sigs.k8s.io/cluster-api/cmd/clusterctl)
  mv "$work/bin/core" "$work/bin/manager"
  echo "$recipe" > "$work/bin/.recipe"
  rm -rf "$out" && mv "$work/bin" "$out" && rm -rf "$work"
  log "cluster-api $CAPI_VERSION: built into $out"
}

build_kwok() {
  local out recipe="kwok"
  out=$(bin_dir kwok "$KWOK_VERSION")
  if cached "$out" "$recipe" kwok; then log "kwok $KWOK_VERSION: cached in $out"; return; fi
  module_dir kwok sigs.k8s.io/kwok "$KWOK_VERSION" > /dev/null
  log "kwok $KWOK_VERSION: building kwok"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$E2E_DIR/components/kwok"; measured "kwok $KWOK_VERSION" "${GOBUILD[@]}" -ldflags '-s -w' -o "$out.tmp/" sigs.k8s.io/kwok/cmd/kwok)
  echo "$recipe" > "$out.tmp/.recipe"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "kwok $KWOK_VERSION: built into $out"
}

# helm, to lint, render and install the chart in charts/capow. Version-stamped as its release
# build does (helm.sh/helm/v3/internal/version.version), so `helm version` reports it.
build_helm() {
  local out recipe="helm; version-stamped"
  out=$(bin_dir helm "$HELM_VERSION")
  if cached "$out" "$recipe" helm; then log "helm $HELM_VERSION: cached in $out"; return; fi
  module_dir helm helm.sh/helm/v3 "$HELM_VERSION" > /dev/null
  log "helm $HELM_VERSION: building helm"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$E2E_DIR/components/helm"; measured "helm $HELM_VERSION" "${GOBUILD[@]}" \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$out.tmp/" helm.sh/helm/v3/cmd/helm)
  "$out.tmp/helm" version --short | grep -q "^$HELM_VERSION" || die "helm does not report $HELM_VERSION"
  echo "$recipe" > "$out.tmp/.recipe"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "helm $HELM_VERSION: built into $out"
}

# crane, which packs the static capow binary into an OCI image without a container engine
# (e2e/image.sh). Version-stamped as its release build does
# (github.com/google/go-containerregistry/cmd/crane/cmd.Version), so `crane version` reports it.
build_crane() {
  local out recipe="crane; version-stamped"
  out=$(bin_dir crane "$CRANE_VERSION")
  if cached "$out" "$recipe" crane; then log "crane $CRANE_VERSION: cached in $out"; return; fi
  module_dir crane github.com/google/go-containerregistry "$CRANE_VERSION" > /dev/null
  log "crane $CRANE_VERSION: building crane"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$E2E_DIR/components/crane"; measured "crane $CRANE_VERSION" "${GOBUILD[@]}" \
      -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION" \
      -o "$out.tmp/" github.com/google/go-containerregistry/cmd/crane)
  [[ "$("$out.tmp/crane" version)" == "$CRANE_VERSION" ]] || die "crane does not report $CRANE_VERSION"
  echo "$recipe" > "$out.tmp/.recipe"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "crane $CRANE_VERSION: built into $out"
}

# The real cluster-autoscaler, both externalgrpc wire generations, from the source kept beside the
# repository in ../shared/upstream (the Go module proxy refuses its module), with that folder's
# build.sh (-tags externalgrpc). Cached by version and the upstream commit. Without the folder
# (someone's own clone) nothing is built: the tests then use CAPOW_E2E_CLUSTER_AUTOSCALER when
# set, and otherwise say which tests they skip.
UPSTREAM_DIR="${CAPOW_UPSTREAM_DIR:-$REPO_DIR/../shared/upstream}"
build_cluster_autoscaler() {
  local v out recipe
  if [[ ! -x $UPSTREAM_DIR/build.sh ]]; then
    log "cluster-autoscaler: $UPSTREAM_DIR/build.sh not found; not building it (the real-autoscaler tests use CAPOW_E2E_CLUSTER_AUTOSCALER or skip)"
    return
  fi
  for v in $CA_VERSIONS; do
    out=$(bin_dir cluster-autoscaler "$v")
    recipe="cluster-autoscaler -tags externalgrpc; $(cat "$UPSTREAM_DIR/cluster-autoscaler-$v/SOURCE.txt" 2>/dev/null)"
    if cached "$out" "$recipe" cluster-autoscaler; then log "cluster-autoscaler $v: cached in $out"; continue; fi
    log "cluster-autoscaler $v: building from $UPSTREAM_DIR (about 4 minutes on 2 cores with warm Go caches)"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    measured "cluster-autoscaler $v" env GOMAXPROCS=2 GOFLAGS="$GOFLAGS -p=2" \
      "$UPSTREAM_DIR/build.sh" "cluster-autoscaler-$v" "$out.tmp/cluster-autoscaler"
    echo "$recipe" > "$out.tmp/.recipe"
    rm -rf "$out" && mv "$out.tmp" "$out"
    log "cluster-autoscaler $v: built into $out"
  done
}

# CAPO (cluster-api-provider-openstack), the provider the benchmark (e2e/bench.sh) measures capow
# against, from the source kept beside the repository in ../shared/upstream (the Go module proxy
# refuses its module). Like the CAPI core, CAPO v0.15 has no flag for its webhook server's host
# (main.go builds webhook.Options with a port only) and controller-runtime then listens on every
# interface; the harness runs loopback listeners only, so the manager is built from a scratch copy
# of the tree in which main.go sets Host to 127.0.0.1 (the one change; checked below). Metrics
# (--diagnostics-address) and health (--health-addr) take a host by flag. Cached by version and
# the upstream commit; not part of `all` (only the benchmark needs it).
build_capo() {
  local out src recipe work
  src="$UPSTREAM_DIR/cluster-api-provider-openstack-$CAPO_VERSION"
  [[ -f $src/go.mod ]] || die "CAPO $CAPO_VERSION: $src not found (the benchmark needs ../shared/upstream)"
  out=$(bin_dir capo "$CAPO_VERSION")
  recipe="manager (webhook server host 127.0.0.1); $(cat "$src/SOURCE.txt" 2>/dev/null)"
  if cached "$out" "$recipe" manager; then log "capo $CAPO_VERSION: cached in $out"; return; fi
  work="$out.tmp"
  log "capo $CAPO_VERSION: building the manager from $src (about 2 minutes on 2 cores with warm Go caches)"
  rm -rf "$work" && mkdir -p "$work/bin"
  cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
  local main="$work/src/main.go"
  [[ $(grep -c $'^\t*webhook\\.Options{$' "$main") == 1 ]] || die "CAPO main.go: webhook.Options{ not found exactly once"
  grep -q 'Host:' "$main" && die "CAPO main.go already sets a Host; revisit the loopback patch"
  sed -i $'s/^\\(\t*\\)webhook\\.Options{$/&\\n\\1\tHost:    "127.0.0.1",/' "$main"
  [[ $(grep -c $'^\t*Host:    "127.0.0.1",$' "$main") == 1 ]] || die "CAPO main.go: the loopback patch did not apply"
  (cd "$work/src"; measured "capo $CAPO_VERSION" "${GOBUILD[@]}" -mod=readonly \
      -ldflags "-s -w -X sigs.k8s.io/cluster-api-provider-openstack/version.gitVersion=$CAPO_VERSION" -o "$work/bin/manager" .)
  echo "$recipe" > "$work/bin/.recipe"
  rm -rf "$out" && mv "$work/bin" "$out" && rm -rf "$work"
  log "capo $CAPO_VERSION: built into $out"
}

case "${1:-}" in
  kubernetes) build_kubernetes ;;
  cluster-autoscaler) build_cluster_autoscaler ;;
  capo) build_capo ;;
  cluster-api) build_cluster_api ;;
  kwok) build_kwok ;;
  grpcprobe) build_grpcprobe ;;
  helm) build_helm ;;
  crane) build_crane ;;
  all) build_kubernetes; build_cluster_api; build_kwok; build_grpcprobe; build_helm; build_cluster_autoscaler ;;
  # Source trees of the published modules (CRDs, webhook manifests, kwok stages).
  cluster-api-dir) module_dir cluster-api sigs.k8s.io/cluster-api "$CAPI_VERSION" ;;
  kwok-dir) module_dir kwok sigs.k8s.io/kwok "$KWOK_VERSION" ;;
  orc-dir) module_dir orc github.com/k-orc/openstack-resource-controller/v2 "$ORC_VERSION" ;;
  capo-dir) echo "$UPSTREAM_DIR/cluster-api-provider-openstack-$CAPO_VERSION" ;;
  *) die "usage: build.sh kubernetes|cluster-api|kwok|grpcprobe|helm|crane|cluster-autoscaler|capo|all|cluster-api-dir|kwok-dir|orc-dir|capo-dir" ;;
esac
