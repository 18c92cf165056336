#!/usr/bin/env bash
# Starts a workload cluster <name> on loopback: its own kube-apiserver sharing the management
# cluster's etcd under --etcd-prefix=/workload-<name> with its own CA and certificates, a real
# kube-scheduler and kube-controller-manager for it, and kwok, which keeps its Nodes Ready
# (Node leases) and runs the Pods bound to them. kwok manages every Node; it leaves the status of
# Nodes labelled e2e.capow.dev/kwok=disabled alone. Prints the path of the admin kubeconfig (certificates
# embedded, usable as a CAPI "<cluster>-kubeconfig" Secret). Idempotent; stop with down.sh <name>.
# Usage: workload/up.sh <name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
NAME=${1:-}; [[ -n $NAME ]] || die "usage: workload/up.sh <name>"
LOG_TAG="workload-$NAME"
source "$E2E_DIR/workload/lib.sh"

KBIN=$(bin_dir kubernetes "$K8S_VERSION")
KWOK=$(bin_dir kwok "$KWOK_VERSION")/kwok
[[ -x $KBIN/kube-apiserver ]] || die "kubernetes $K8S_VERSION is not built (run e2e/components/build.sh kubernetes)"
[[ -x $KWOK ]] || die "kwok $KWOK_VERSION is not built (run e2e/components/build.sh kwok)"
curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null || die "etcd is not running on 127.0.0.1:$ETCD_PORT (run e2e/kube/up.sh)"

SLOT=$(workload_slot)
APISERVER=$(( WORKLOAD_PORT_BASE + 10 * SLOT ))
SCHEDULER_PORT=$(( APISERVER + 1 )) KCM=$(( APISERVER + 2 )) KWOK_PORT=$(( APISERVER + 3 ))
SERVER="https://127.0.0.1:$APISERVER"
mkdir -p "$WPKI"

# --- certificates (once per cluster) ---------------------------------------------------------
if [[ ! -f $WPKI/ca.crt ]]; then
  log "creating certificates in $WPKI"
  new_ca "$WPKI/ca" "capow-e2e-workload-$NAME-ca"
  issue_cert "$WPKI/ca" "$WPKI/apiserver" "/CN=kube-apiserver" "$(printf '%s\n' \
    'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc' \
    'extendedKeyUsage=serverAuth')"
  issue_cert "$WPKI/ca" "$WPKI/admin" "/O=system:masters/CN=capow-e2e-workload-admin" "extendedKeyUsage=clientAuth"
  issue_cert "$WPKI/ca" "$WPKI/kube-scheduler" "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  issue_cert "$WPKI/ca" "$WPKI/kube-controller-manager" "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  (umask 077; openssl genrsa -out "$WPKI/sa.key" 2048 2>/dev/null)
  openssl rsa -in "$WPKI/sa.key" -pubout -out "$WPKI/sa.pub" 2>/dev/null
fi
write_kubeconfig_embedded "$WKUBECONFIG" "$SERVER" "$WPKI/ca.crt" "$WPKI/admin" "workload-$NAME"
write_kubeconfig_embedded "$WDIR/kube-scheduler.kubeconfig" "$SERVER" "$WPKI/ca.crt" "$WPKI/kube-scheduler" "workload-$NAME"
write_kubeconfig_embedded "$WDIR/kube-controller-manager.kubeconfig" "$SERVER" "$WPKI/ca.crt" "$WPKI/kube-controller-manager" "workload-$NAME"
kubectl_w() { "$KBIN/kubectl" --kubeconfig "$WKUBECONFIG" "$@"; }

# --- kube-apiserver ---------------------------------------------------------------------------
# WatchList=false: with it (Beta, on by default in 1.36) the API server turns every watch from
# resourceVersion ""/"0" into a streaming list, which needs etcd's RequestWatchProgress; Debian's
# etcd 3.4.23 lacks it, so such watches end at once with "a watch stream was requested by the
# client but the required storage feature RequestWatchProgress is disabled". kwok watches from
# "0" and then only saw Nodes and Pods on its backed-off relists.
if ! daemon_running kube-apiserver "$WDIR"; then
  need_free_port "$APISERVER" "the kube-apiserver of workload cluster $NAME"
  t0=$(date +%s.%N)
  start_daemon kube-apiserver "$WDIR" "$KBIN/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --etcd-prefix="$ETCD_PREFIX" \
    --tls-cert-file="$WPKI/apiserver.crt" --tls-private-key-file="$WPKI/apiserver.key" \
    --client-ca-file="$WPKI/ca.crt" --authorization-mode=Node,RBAC --anonymous-auth=false \
    --service-account-issuer="https://workload-$NAME.capow-e2e.invalid" \
    --service-account-key-file="$WPKI/sa.pub" --service-account-signing-key-file="$WPKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --enable-priority-and-fairness=false --profiling=false --feature-gates=WatchList=false
  wait_daemon kube-apiserver "$WDIR" 90 "workload kube-apiserver /readyz" "$KBIN/kubectl" --kubeconfig "$WKUBECONFIG" get --raw /readyz
  log "kube-apiserver ready in $(elapsed_since "$t0") s at $SERVER, RSS $(daemon_rss_mib kube-apiserver "$WDIR") MiB"
fi

# --- kube-scheduler ---------------------------------------------------------------------------
if ! daemon_running kube-scheduler "$WDIR"; then
  need_free_port "$SCHEDULER_PORT" "the kube-scheduler of workload cluster $NAME"
  t0=$(date +%s.%N)
  start_daemon kube-scheduler "$WDIR" "$KBIN/kube-scheduler" \
    --kubeconfig="$WDIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$WDIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$WDIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --leader-elect=false --profiling=false
  wait_daemon kube-scheduler "$WDIR" 60 "workload kube-scheduler /healthz" curl -skf "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  log "kube-scheduler ready in $(elapsed_since "$t0") s, RSS $(daemon_rss_mib kube-scheduler "$WDIR") MiB"
fi

# --- kube-controller-manager --------------------------------------------------------------------
# Not optional: without its serviceaccount controller no "default" ServiceAccount exists and the
# ServiceAccount admission plugin rejects every Pod; it also runs Deployments/ReplicaSets, GC,
# namespace deletion and node lifecycle (NotReady taints for Nodes kwok does not manage).
if ! daemon_running kube-controller-manager "$WDIR"; then
  need_free_port "$KCM" "the kube-controller-manager of workload cluster $NAME"
  t0=$(date +%s.%N)
  start_daemon kube-controller-manager "$WDIR" "$KBIN/kube-controller-manager" \
    --kubeconfig="$WDIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$WDIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$WDIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM" --cert-dir="$WDIR/kcm-serving" \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file="$WPKI/sa.key" --root-ca-file="$WPKI/ca.crt" \
    --cluster-signing-cert-file="$WPKI/ca.crt" --cluster-signing-key-file="$WPKI/ca.key" \
    --controllers='*' --profiling=false
  wait_daemon kube-controller-manager "$WDIR" 60 "workload kube-controller-manager /healthz" curl -skf "https://127.0.0.1:$KCM/healthz"
  log "kube-controller-manager ready in $(elapsed_since "$t0") s, RSS $(daemon_rss_mib kube-controller-manager "$WDIR") MiB"
fi

# --- kwok ---------------------------------------------------------------------------------------
# Its configuration: the "fast" Node and Pod stages with lease-based Node heartbeats, taken from
# the kwok module's own stage manifests (kustomize/stage/...) at this version, as kwokctl does.
# (Only Stage documents: a KwokConfiguration document would replace kwok's defaults wholesale.)
if ! daemon_running kwok "$WDIR"; then
  need_free_port "$KWOK_PORT" "kwok of workload cluster $NAME"
  KWOK_DIR=$("$E2E_DIR/components/build.sh" kwok-dir)
  {
    for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
                 pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
      [[ -f $KWOK_DIR/kustomize/stage/$stage.yaml ]] || die "kwok $KWOK_VERSION has no stage $stage"
      printf -- '---\n'; cat "$KWOK_DIR/kustomize/stage/$stage.yaml"; echo
    done
  } > "$WDIR/kwok.yaml"
  t0=$(date +%s.%N)
  # --node-ip/--node-port: Nodes without addresses get 127.0.0.1 and kwok's own port as kubelet
  # endpoint, so nothing the API server does for them leaves loopback.
  # Every Node is managed; kwok leaves the status of Nodes labelled e2e.capow.dev/kwok=disabled
  # alone (they stay NotReady). Not --manage-nodes-with-label-selector: kwok's client-side filter
  # drops every Node that has no labels at all, whatever the selector says.
  start_daemon kwok "$WDIR" "$KWOK" --kubeconfig="$WKUBECONFIG" --config="$WDIR/kwok.yaml" \
    --server-address="127.0.0.1:$KWOK_PORT" --node-ip=127.0.0.1 --node-port="$KWOK_PORT" \
    --cidr=10.244.0.1/16 --node-lease-duration-seconds=40 \
    --manage-all-nodes=true --disregard-status-with-label-selector=e2e.capow.dev/kwok=disabled
  wait_daemon kwok "$WDIR" 60 "kwok /healthz" curl -sf "http://127.0.0.1:$KWOK_PORT/healthz"
  log "kwok ready in $(elapsed_since "$t0") s, RSS $(daemon_rss_mib kwok "$WDIR") MiB"
fi

log "workload cluster $NAME is up: $SERVER (etcd prefix $ETCD_PREFIX), kubeconfig $WKUBECONFIG"
echo "$WKUBECONFIG"
