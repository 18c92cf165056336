#!/usr/bin/env bash
# Starts a real Kubernetes API server on loopback: etcd (Debian package) and kube-apiserver
# (built from k8s.io/kubernetes by components/build.sh), with certificates made here, an admin
# kubeconfig, and the CAPI + capow CRDs installed. Idempotent; stop with down.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=kube

command -v etcd >/dev/null || die "etcd is not installed (apt-get install etcd-server)"
KBIN=$(bin_dir kubernetes "$K8S_VERSION")
[[ -x $KBIN/kube-apiserver ]] || die "kube-apiserver $K8S_VERSION is not built (run e2e/components/build.sh kubernetes)"
PKI="$KUBE_STATE/pki"
mkdir -p "$PKI" "$KUBE_STATE/etcd"

# --- certificates (once) ---------------------------------------------------------------
if [[ ! -f $PKI/ca.crt ]]; then
  log "creating certificates in $PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=capow-e2e-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    cat > apiserver.ext <<EXT
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
EXT
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # Admin (system:masters) and an unprivileged user for RBAC checks.
    for who in "admin:/O=system:masters/CN=capow-e2e-admin" "user:/CN=capow-e2e-user"; do
      name=${who%%:*} subj=${who#*:}
      printf 'extendedKeyUsage=clientAuth\n' > "$name.ext"
      openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$name.key" -out "$name.csr" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    done
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext
  )
fi

write_kubeconfig() { # user file
  cat > "$2" <<KC
apiVersion: v1
kind: Config
clusters:
- name: capow-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: capow-e2e
  context: {cluster: capow-e2e, user: $1}
current-context: capow-e2e
KC
}
write_kubeconfig admin "$KUBECONFIG_E2E"
write_kubeconfig user "$KUBE_STATE/user.kubeconfig"

# --- etcd -------------------------------------------------------------------------------
if ! daemon_running etcd "$KUBE_STATE"; then
  start_daemon etcd "$KUBE_STATE" etcd --name capow-e2e --data-dir "$KUBE_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "capow-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
    --quota-backend-bytes 4294967296 --log-level warn
fi
wait_for "etcd" 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver ----------------------------------------------------------------------
if ! daemon_running kube-apiserver "$KUBE_STATE"; then
  start_daemon kube-apiserver "$KUBE_STATE" "$KBIN/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC --anonymous-auth=false \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --enable-priority-and-fairness=false --profiling=false
fi
wait_for "kube-apiserver /readyz" 90 "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" get --raw /readyz
log "kube-apiserver $K8S_VERSION ready at https://127.0.0.1:$APISERVER_PORT (kubeconfig $KUBECONFIG_E2E)"

# --- CRDs ---------------------------------------------------------------------------------
CAPI_DIR=$("$E2E_DIR/components/build.sh" cluster-api-dir)
kubectl_e2e() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" "$@"; }
# Server-side apply: the ClusterClass CRD exceeds client-side apply's annotation limit.
kubectl_e2e apply --server-side --force-conflicts --field-manager=capow-e2e \
  -f "$CAPI_DIR/core/config/crd/bases/" >/dev/null
# The kubeadm bootstrap CRDs: capow's cluster templates use KubeadmConfigTemplate for workers
# (the kubeadm bootstrap controller itself is not needed by the tests).
kubectl_e2e apply --server-side --force-conflicts --field-manager=capow-e2e \
  -f "$CAPI_DIR/bootstrap/kubeadm/config/crd/bases/" >/dev/null
# The release manifests carry the contract label (kustomize adds it); the source CRDs do not.
kubectl_e2e label --overwrite crd kubeadmconfigs.bootstrap.cluster.x-k8s.io \
  kubeadmconfigtemplates.bootstrap.cluster.x-k8s.io cluster.x-k8s.io/v1beta2=v1beta2 >/dev/null
kubectl_e2e apply --server-side --force-conflicts --field-manager=capow-e2e -f "$REPO_DIR/config/crd/bases/" >/dev/null
# Poll Established instead of `kubectl wait` (http2 stream resets on the large CRDs).
for crd in clusters.cluster.x-k8s.io machines.cluster.x-k8s.io machinedeployments.cluster.x-k8s.io \
           openstackworkermachines.infrastructure.cluster.x-k8s.io; do
  wait_for "CRD $crd" 60 bash -c "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' get crd $crd -o jsonpath='{.status.conditions[?(@.type==\"Established\")].status}' | grep -q True"
done
log "CRDs installed: CAPI $CAPI_VERSION and capow"
