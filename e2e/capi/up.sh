#!/usr/bin/env bash
# Adds the real Cluster API core to the management cluster started by kube/up.sh:
#   - kube-controller-manager (garbage collection, namespace deletion, service accounts),
#   - the CAPI core manager (sigs.k8s.io/cluster-api/core, built by components/build.sh) as a
#     process with every listener on 127.0.0.1, its webhooks served with a CA made here, the
#     webhook configurations of the module (core/config/webhook) installed with url: clientConfigs,
#     and the CAPI CRDs switched to Webhook conversion (core/config/crd/patches) on the same URL.
# Idempotent; stop with capi/down.sh (which removes the webhook configurations again).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=capi

KBIN=$(bin_dir kubernetes "$K8S_VERSION")
CBIN=$(bin_dir cluster-api "$CAPI_VERSION")
[[ -x $CBIN/manager ]] || die "CAPI $CAPI_VERSION is not built (run e2e/components/build.sh cluster-api)"
KPKI="$KUBE_STATE/pki"
PKI="$CAPI_STATE/pki"
CERTS="$CAPI_STATE/webhook-certs"
WEBHOOK_URL="https://127.0.0.1:$CAPI_WEBHOOK_PORT"
FIELD_MANAGER=capow-e2e-capi
kubectl_m() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" "$@"; }

kubectl_m get --raw /readyz >/dev/null 2>&1 || die "the management kube-apiserver is not ready (run e2e/kube/up.sh)"
# The CAPI manager exits unless the server version parses as >= v1.20.
server_version=$(kubectl_m get --raw /version | jq -r .gitVersion)
[[ $server_version =~ ^v1\.[0-9]+\.[0-9]+ ]] || die "kube-apiserver reports version '$server_version', \
which the CAPI manager rejects: it runs a binary built without version stamping; restart it with the \
current build (e2e/env.sh down && e2e/env.sh up)"
mkdir -p "$PKI" "$CERTS"

# --- certificates --------------------------------------------------------------------------
# kube-controller-manager's client certificate comes from the management cluster's CA; it is
# re-issued when that CA changes (kube/down.sh --purge).
kube_ca_fp=$(openssl x509 -noout -fingerprint -sha256 -in "$KPKI/ca.crt")
if [[ ! -f $PKI/kube-controller-manager.crt || "$(cat "$PKI/kube-ca.fingerprint" 2>/dev/null)" != "$kube_ca_fp" ]]; then
  log "issuing the kube-controller-manager client certificate"
  issue_cert "$KPKI/ca" "$PKI/kube-controller-manager" "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  echo "$kube_ca_fp" > "$PKI/kube-ca.fingerprint"
fi
write_kubeconfig_embedded "$CAPI_STATE/kube-controller-manager.kubeconfig" "https://127.0.0.1:$APISERVER_PORT" \
  "$KPKI/ca.crt" "$PKI/kube-controller-manager" capow-e2e
# The webhook server's own CA and serving certificate (the caBundle of every CAPI webhook).
if [[ ! -f $CERTS/tls.crt ]]; then
  log "creating the CAPI webhook CA and serving certificate"
  new_ca "$PKI/webhook-ca" capow-e2e-capi-webhook-ca
  issue_cert "$PKI/webhook-ca" "$CERTS/tls" "/CN=capi-webhook-service" \
    "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth')"
fi
CA_BUNDLE=$(base64 -w0 "$PKI/webhook-ca.crt")

# --- kube-controller-manager ---------------------------------------------------------------
# The garbage collector watches the metadata of every resource through the controller manager's
# shared informers, which use the controller manager's own user; Kubernetes 1.36's bootstrap
# role system:kube-controller-manager no longer lists and watches every resource, so without
# this the collector never sees custom resources go (Secrets owned by a CAPI Cluster would
# outlive it).
kubectl_m apply --server-side --force-conflicts --field-manager=capow-e2e -f - >/dev/null <<'RBAC'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "capow-e2e:kube-controller-manager:watch-all"}
rules: [{apiGroups: ["*"], resources: ["*"], verbs: ["get", "list", "watch"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "capow-e2e:kube-controller-manager:watch-all"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "capow-e2e:kube-controller-manager:watch-all"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-controller-manager"}]
RBAC
if ! daemon_running kube-controller-manager "$CAPI_STATE"; then
  need_free_port "$KCM_PORT" kube-controller-manager
  t0=$(date +%s.%N)
  start_daemon kube-controller-manager "$CAPI_STATE" "$KBIN/kube-controller-manager" \
    --kubeconfig="$CAPI_STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CAPI_STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CAPI_STATE/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$CAPI_STATE/kcm-serving" \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file="$KPKI/sa.key" --root-ca-file="$KPKI/ca.crt" \
    --controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller \
    --profiling=false
  wait_daemon kube-controller-manager "$CAPI_STATE" 60 "kube-controller-manager /healthz" curl -skf "https://127.0.0.1:$KCM_PORT/healthz"
  log "kube-controller-manager ready in $(elapsed_since "$t0") s, RSS $(daemon_rss_mib kube-controller-manager "$CAPI_STATE") MiB"
fi

# --- CAPI core manager ---------------------------------------------------------------------
if ! daemon_running capi-manager "$CAPI_STATE"; then
  for p in "$CAPI_HEALTH_PORT" "$CAPI_METRICS_PORT" "$CAPI_WEBHOOK_PORT"; do need_free_port "$p" "the CAPI manager"; done
  t0=$(date +%s.%N)
  # Feature gates: the defaults of v1.14 (MachinePool on) plus ClusterTopology (ClusterClass),
  # as `clusterctl init` with CLUSTER_TOPOLOGY=true would set them.
  start_daemon capi-manager "$CAPI_STATE" "$CBIN/manager" \
    --kubeconfig="$KUBECONFIG_E2E" --leader-elect=false \
    --health-addr="127.0.0.1:$CAPI_HEALTH_PORT" \
    --diagnostics-address="127.0.0.1:$CAPI_METRICS_PORT" --insecure-diagnostics=true \
    --webhook-port="$CAPI_WEBHOOK_PORT" --webhook-cert-dir="$CERTS" \
    --feature-gates=MachinePool=true,ClusterTopology=true
  wait_daemon capi-manager "$CAPI_STATE" 120 "CAPI manager /readyz" curl -sf "http://127.0.0.1:$CAPI_HEALTH_PORT/readyz"
  log "CAPI manager $CAPI_VERSION ready in $(elapsed_since "$t0") s, RSS $(daemon_rss_mib capi-manager "$CAPI_STATE") MiB"
fi

# --- webhooks -------------------------------------------------------------------------------
CAPI_DIR=$("$E2E_DIR/components/build.sh" cluster-api-dir)
# Admission webhooks of the module, service references rewritten to the loopback URL.
kubectl_m create --dry-run=client --validate=false -o json -f "$CAPI_DIR/core/config/webhook/manifests.yaml" |
  jq -s --arg url "$WEBHOOK_URL" --arg ca "$CA_BUNDLE" '{apiVersion: "v1", kind: "List", items: [
    .[] | (.items? // [.])[]
    | .metadata.name = "capi-" + .metadata.name
    | .metadata.labels["cluster.x-k8s.io/provider"] = "cluster-api"
    | .webhooks |= map(.clientConfig = {url: ($url + .clientConfig.service.path), caBundle: $ca})]}' |
  kubectl_m apply --server-side --force-conflicts --field-manager="$FIELD_MANAGER" -f - >/dev/null
# Conversion webhook on every CRD the module's crd/patches enable it for (as envtest does).
kubectl_m create --dry-run=client --validate=false -o json -f "$CAPI_DIR/core/config/crd/patches/" |
  jq -c --arg url "$WEBHOOK_URL/convert" --arg ca "$CA_BUNDLE" '
    (.items? // [.])[] | {name: .metadata.name, patch: {spec: {conversion: (.spec.conversion
      | .webhook.clientConfig = {url: $url, caBundle: $ca})}}}' |
  while read -r item; do
    kubectl_m patch crd "$(jq -r .name <<<"$item")" --type=merge --field-manager="$FIELD_MANAGER" \
      -p "$(jq -c .patch <<<"$item")" >/dev/null
  done
# The webhooks answer: a server-side dry run of a v1beta1 Cluster goes through the conversion
# webhook (v1beta1 -> v1beta2 and back) and the defaulting and validating webhooks. (CAPI v1.14
# rejects a Cluster without controlPlaneRef, infrastructureRef or topology; the referenced object
# need not exist for a dry run.)
probe='{"apiVersion":"cluster.x-k8s.io/v1beta1","kind":"Cluster","metadata":{"name":"capow-e2e-webhook-probe","namespace":"default"},
  "spec":{"infrastructureRef":{"apiVersion":"infrastructure.cluster.x-k8s.io/v1alpha1","kind":"OpenStackWorkerMachineTemplate","name":"probe"}}}'
wait_for "the CAPI webhooks (conversion, defaulting, validation)" 60 \
  bash -c "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' create --dry-run=server -o name -f - <<<'$probe' 2>/dev/null"
log "CAPI $CAPI_VERSION webhooks answer at $WEBHOOK_URL (health http://127.0.0.1:$CAPI_HEALTH_PORT, metrics http://127.0.0.1:$CAPI_METRICS_PORT/metrics)"
