#!/usr/bin/env bash
# A private, throw-away Kubernetes API server for the benchmark's memory and CPU part (e2e/bench.sh
# scale): its own etcd and kube-apiserver on the given loopback ports, state under DIR, so that
# tens of thousands of benchmark objects never touch the shared e2e management cluster or its etcd.
# No controllers run against it (the managers under test read objects that the benchmark writes).
# Usage: apiserver.sh up DIR ETCD_PORT ETCD_PEER_PORT APISERVER_PORT   (prints the admin kubeconfig)
#        apiserver.sh down DIR                                        (stops both, deletes DIR)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=bench-apiserver
cmd=${1:-}; DIR=${2:?usage: apiserver.sh up|down DIR ...}
case $cmd in
  up)
    ETCD=${3:?etcd port} PEER=${4:?etcd peer port} API=${5:?apiserver port}
    KBIN=$(bin_dir kubernetes "$K8S_VERSION")
    [[ -x $KBIN/kube-apiserver ]] || die "kube-apiserver $K8S_VERSION is not built"
    for p in "$ETCD" "$PEER" "$API"; do need_free_port "$p" "the benchmark's private API server"; done
    mkdir -p "$DIR/pki" "$DIR/etcd"
    PKI=$DIR/pki
    new_ca "$PKI/ca" capow-bench-private-ca
    issue_cert "$PKI/ca" "$PKI/apiserver" "/CN=kube-apiserver" "$(printf '%s\n' \
      'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc' 'extendedKeyUsage=serverAuth')"
    issue_cert "$PKI/ca" "$PKI/admin" "/O=system:masters/CN=capow-bench-admin" "extendedKeyUsage=clientAuth"
    (umask 077; openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null)
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    write_kubeconfig_embedded "$DIR/admin.kubeconfig" "https://127.0.0.1:$API" "$PKI/ca.crt" "$PKI/admin" capow-bench
    start_daemon etcd "$DIR" etcd --name capow-bench --data-dir "$DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD" --advertise-client-urls "http://127.0.0.1:$ETCD" \
      --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
      --initial-cluster "capow-bench=http://127.0.0.1:$PEER" --listen-metrics-urls "" \
      --quota-backend-bytes 4294967296 --log-level warn
    wait_daemon etcd "$DIR" 30 "etcd" curl -sf "http://127.0.0.1:$ETCD/health"
    # As the workload clusters' API servers (workload/up.sh): WatchList off for Debian's etcd.
    start_daemon kube-apiserver "$DIR" "$KBIN/kube-apiserver" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API" \
      --etcd-servers="http://127.0.0.1:$ETCD" \
      --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
      --client-ca-file="$PKI/ca.crt" --authorization-mode=RBAC --anonymous-auth=false \
      --service-account-issuer="https://capow-bench.invalid" \
      --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
      --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
      --enable-priority-and-fairness=false --profiling=false --feature-gates=WatchList=false
    wait_daemon kube-apiserver "$DIR" 90 "the private kube-apiserver" \
      "$KBIN/kubectl" --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz
    echo "$DIR/admin.kubeconfig"
    ;;
  down)
    stop_daemon kube-apiserver "$DIR"
    stop_daemon etcd "$DIR"
    rm -rf "$DIR"
    ;;
  *) die "usage: apiserver.sh up DIR ETCD_PORT ETCD_PEER_PORT APISERVER_PORT | down DIR" ;;
esac
