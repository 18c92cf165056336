#!/usr/bin/env bash
# Proves the CAPI additions of the e2e environment work; exits non-zero at the first check that
# does not hold. Needs env.sh up (or kube/up.sh + capi/up.sh); starts and purges its own
# workload cluster "smoke" (SMOKE_WORKLOAD=<name> to use another name).
#   management: namespace, v1beta2 Cluster, MachineDeployment (capow's template kind as the
#     infrastructure template); CAPI defaulting and validating webhooks; v1beta1 reads through
#     the conversion webhook; the MachineDeployment's scale subresource (read, update, and the
#     MachineSet/Machines CAPI makes of it); namespace deletion removing everything.
#   workload: a Node with spec.providerID made Ready by kwok; a Pod bound to it by kube-scheduler
#     and Running by kwok.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=smoke

KBIN=$(bin_dir kubernetes "$K8S_VERSION")
WNAME=${SMOKE_WORKLOAD:-smoke}
NS="capow-smoke-$(date +%s)-$RANDOM"
km() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" --request-timeout=30s "$@"; }
ok() { log "ok: $*"; }
fail() { die "FAILED: $*"; }
# eventually <timeout-s> <description> <command...>: polls until the command succeeds.
eventually() {
  local timeout=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || fail "$what (not within ${timeout}s)"
    sleep 0.5
  done
}
jq_true() { jq -e "$1" >/dev/null; }

cleanup() {
  local rc=$?
  km delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  "$E2E_DIR/workload/down.sh" "$WNAME" --purge >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------------ management cluster ---------
daemon_running capi-manager "$CAPI_STATE" || fail "the CAPI manager is not running (run e2e/capi/up.sh)"
km create namespace "$NS" >/dev/null
# CAPI v1.14's Cluster webhook requires one of controlPlaneRef, infrastructureRef or topology.
# capow has no InfraCluster kind (yet), so the smoke's Cluster points at an object that exists
# and carries the contract label: a second OpenStackWorkerMachineTemplate. CAPI only owns it,
# reads its (absent) status.initialization.provisioned, and deletes it with the Cluster.
km apply -n "$NS" -f - >/dev/null <<EOF2
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: OpenStackWorkerMachineTemplate
metadata: {name: workers}
spec:
  template:
    spec: {flavor: {filter: {name: m1.small}}, image: {filter: {name: cirros}}}
---
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: OpenStackWorkerMachineTemplate
metadata: {name: c1-infra-placeholder}
spec:
  template:
    spec: {flavor: {filter: {name: m1.small}}, image: {filter: {name: cirros}}}
---
apiVersion: cluster.x-k8s.io/v1beta2
kind: Cluster
metadata: {name: c1}
spec:
  infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: OpenStackWorkerMachineTemplate, name: c1-infra-placeholder}
EOF2
ok "namespace $NS with a v1beta2 Cluster and OpenStackWorkerMachineTemplates"
eventually 60 "CAPI's Cluster controller took ownership of the infrastructure object" bash -c \
  "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' get -n '$NS' openstackworkermachinetemplates c1-infra-placeholder -o json |
   jq -e '.metadata.ownerReferences[]? | select(.kind == \"Cluster\" and .name == \"c1\")'"
ok "CAPI's Cluster controller reconciles c1 (owner reference on its infrastructureRef)"

# A MachineDeployment without replicas, labels or selector, with autoscaler min/max annotations:
# CAPI's defaulting webhook fills them in (replicas from the min-size annotation).
km apply -n "$NS" -f - >/dev/null <<EOF2
apiVersion: cluster.x-k8s.io/v1beta2
kind: MachineDeployment
metadata:
  name: md1
  annotations:
    cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size: "0"
    cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size: "3"
spec:
  clusterName: c1
  selector: {}
  template:
    spec:
      clusterName: c1
      bootstrap: {dataSecretName: md1-bootstrap}
      infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: OpenStackWorkerMachineTemplate, name: workers}
EOF2
md=$(km get -n "$NS" machinedeployments.v1beta2.cluster.x-k8s.io md1 -o json)
jq_true '.metadata.labels["cluster.x-k8s.io/cluster-name"] == "c1"
  and .spec.selector.matchLabels["cluster.x-k8s.io/deployment-name"] == "md1"
  and .spec.template.metadata.labels["cluster.x-k8s.io/cluster-name"] == "c1"
  and .spec.replicas == 0 and .spec.rollout.strategy.type == "RollingUpdate"' <<<"$md" \
  || fail "the MachineDeployment was not defaulted by CAPI's webhook: $(jq -c '{labels: .metadata.labels, spec: .spec}' <<<"$md")"
ok "CAPI's defaulting webhook set the MachineDeployment's labels, selector, strategy and replicas=0 (min-size)"

# An invalid MachineDeployment is rejected by CAPI's validating webhook with CAPI's message
# (posted with curl: kubectl rewrites "Invalid" errors and drops the webhook's name).
invalid='{"apiVersion":"cluster.x-k8s.io/v1beta2","kind":"MachineDeployment","metadata":{"name":"md-invalid"},
  "spec":{"clusterName":"c1","selector":{},"template":{"spec":{"clusterName":"c1","version":"v1.36",
  "bootstrap":{"dataSecretName":"x"},
  "infrastructureRef":{"apiGroup":"infrastructure.cluster.x-k8s.io","kind":"OpenStackWorkerMachineTemplate","name":"workers"}}}}}'
out=$(curl -s --max-time 30 --cacert "$KUBE_STATE/pki/ca.crt" --cert "$KUBE_STATE/pki/admin.crt" --key "$KUBE_STATE/pki/admin.key" \
  -H 'Content-Type: application/json' -d "$invalid" \
  "https://127.0.0.1:$APISERVER_PORT/apis/cluster.x-k8s.io/v1beta2/namespaces/$NS/machinedeployments")
jq_true '.kind == "Status" and .code == 422
  and (.message | contains("admission webhook \"validation.machinedeployment.cluster.x-k8s.io\" denied the request"))
  and (.message | contains("must be a valid semantic version"))' <<<"$out" \
  || fail "an invalid MachineDeployment (version v1.36) was not rejected by CAPI's webhook: $out"
ok "CAPI's validating webhook rejected version v1.36: $(jq -r .message <<<"$out")"

# Reads as v1beta1 go through CAPI's conversion webhook (v1beta2 apiGroup -> v1beta1 apiVersion).
# (stderr: kubectl prints the v1beta1 deprecation warnings there)
v1=$(km get -n "$NS" clusters.v1beta1.cluster.x-k8s.io c1 -o json 2>/dev/null)
jq_true '.apiVersion == "cluster.x-k8s.io/v1beta1" and .metadata.name == "c1"' <<<"$v1" || fail "v1beta1 Cluster read: $v1"
km get -A clusters.v1beta1.cluster.x-k8s.io >/dev/null 2>&1 || fail "listing clusters.v1beta1.cluster.x-k8s.io"
v1=$(km get -n "$NS" machinedeployments.v1beta1.cluster.x-k8s.io md1 -o json 2>/dev/null)
ref=$(jq -c .spec.template.spec.infrastructureRef <<<"$v1")
jq_true '.apiVersion == "cluster.x-k8s.io/v1beta1"
  and .spec.template.spec.infrastructureRef.apiVersion == "infrastructure.cluster.x-k8s.io/v1alpha1"' <<<"$v1" \
  || fail "v1beta1 MachineDeployment read through the conversion webhook: infrastructureRef $ref"
ok "kubectl get clusters.v1beta1.cluster.x-k8s.io works; v1beta1 MachineDeployment infrastructureRef $ref"

# The scale subresource, as cluster-autoscaler uses it.
scale_path="/apis/cluster.x-k8s.io/v1beta2/namespaces/$NS/machinedeployments/md1/scale"
scale=$(km get --raw "$scale_path")
# (autoscaling/v1 omits replicas: 0)
jq_true '.kind == "Scale" and (.spec.replicas // 0) == 0 and (.status.replicas // 0) == 0' <<<"$scale" || fail "GET $scale_path: $scale"
km patch -n "$NS" machinedeployments.v1beta2.cluster.x-k8s.io md1 --subresource=scale --type=merge \
  -p '{"spec":{"replicas":2}}' >/dev/null
jq_true '.spec.replicas == 2' <<<"$(km get --raw "$scale_path")" || fail "scale patch to 2 not visible"
jq_true '.spec.replicas == 2' <<<"$(km get -n "$NS" machinedeployments.v1beta2.cluster.x-k8s.io md1 -o json)" \
  || fail "spec.replicas of the MachineDeployment is not 2 after the scale patch"
# CAPI's MachineDeployment and MachineSet controllers act on it: two Machines, each with an
# OpenStackWorkerMachine cloned from the template, and the Scale status follows.
eventually 60 "a MachineSet with 2 replicas owned by md1" bash -c \
  "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' get -n '$NS' machinesets.v1beta2.cluster.x-k8s.io -o json |
   jq -e '[.items[] | select(.metadata.ownerReferences[]?.name == \"md1\" and .spec.replicas == 2)] | length == 1'"
eventually 60 "2 Machines with OpenStackWorkerMachines" bash -c \
  "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' get -n '$NS' machines.v1beta2.cluster.x-k8s.io,openstackworkermachines -o json |
   jq -e '[.items[].kind] | (map(select(. == \"Machine\")) | length) == 2 and (map(select(. == \"OpenStackWorkerMachine\")) | length) == 2'"
eventually 60 "Scale status.replicas == 2" bash -c \
  "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' get --raw '$scale_path' | jq -e '.status.replicas == 2'"
ok "scale subresource read (0), patched (2); CAPI made a MachineSet, 2 Machines and 2 OpenStackWorkerMachines; Scale status.replicas 2"

# Deleting the namespace removes everything in it (namespace controller, CAPI finalizers, GC).
t0=$(date +%s.%N)
km delete namespace "$NS" --wait=false >/dev/null
eventually 180 "namespace $NS deleted" bash -c "! '$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' get namespace '$NS'"
ok "namespace $NS and its Cluster, MachineDeployment, MachineSet, Machines and templates are gone in $(elapsed_since "$t0") s"

# ------------------------------------------------------------------ workload cluster -----------
t0=$(date +%s.%N)
WKC=$("$E2E_DIR/workload/up.sh" "$WNAME")
ok "workload cluster $WNAME up in $(elapsed_since "$t0") s (kubeconfig $WKC)"
kw() { "$KBIN/kubectl" --kubeconfig "$WKC" --request-timeout=30s "$@"; }
# smoke-node-1 has no labels at all (kwok's label-selector mode would never manage it);
# smoke-node-off opts out of kwok and must stay NotReady.
kw apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Node
metadata: {name: smoke-node-1}
spec:
  providerID: openstack:///00000000-0000-4000-8000-00000000abcd
---
apiVersion: v1
kind: Node
metadata:
  name: smoke-node-off
  labels: {e2e.capow.dev/kwok: disabled}
spec:
  providerID: openstack:///00000000-0000-4000-8000-0000000000ff
  taints: [{key: e2e.capow.dev/smoke, effect: NoSchedule}]
EOF2
eventually 20 "Node smoke-node-1 Ready" bash -c \
  "'$KBIN/kubectl' --kubeconfig '$WKC' get node smoke-node-1 -o json |
   jq -e '.status.conditions[] | select(.type == \"Ready\") | .status == \"True\"'"
ok "kwok made Node smoke-node-1 (providerID $(kw get node smoke-node-1 -o jsonpath='{.spec.providerID}')) Ready"
# The namespace's "default" ServiceAccount comes from the workload kube-controller-manager.
eventually 60 "ServiceAccount default/default" kw get serviceaccount default -n default
kw apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Pod
metadata: {name: smoke-pod, namespace: default}
spec:
  containers: [{name: app, image: registry.invalid/app:1, resources: {requests: {cpu: 100m, memory: 64Mi}}}]
EOF2
eventually 30 "Pod smoke-pod bound to smoke-node-1 and Running" bash -c \
  "'$KBIN/kubectl' --kubeconfig '$WKC' get pod smoke-pod -n default -o json |
   jq -e '.spec.nodeName == \"smoke-node-1\" and .status.phase == \"Running\"'"
kw get events -n default --field-selector involvedObject.name=smoke-pod,reason=Scheduled -o json |
  jq_true '[.items[] | select((.reportingComponent // .source.component) == "default-scheduler")] | length > 0' \
  || fail "no Scheduled event of default-scheduler for smoke-pod"
ok "kube-scheduler bound smoke-pod to smoke-node-1 and kwok runs it (podIP $(kw get pod smoke-pod -n default -o jsonpath='{.status.podIP}'))"
kw get node smoke-node-off -o json |
  jq_true '[.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length == 0' \
  || fail "kwok made Node smoke-node-off Ready although it is labelled e2e.capow.dev/kwok=disabled"
ok "kwok left Node smoke-node-off (e2e.capow.dev/kwok=disabled) NotReady"
# kwok only sees changes through its watches; if they keep ending (e.g. the API server turning
# them into streaming lists the etcd cannot serve) it falls back to rare relists.
if grep -q 'watch ended with error' "$WORKLOAD_STATE/$WNAME/log/kwok.log"; then
  fail "kwok's watches end with errors: $(grep -m1 -o 'err=.*' "$WORKLOAD_STATE/$WNAME/log/kwok.log")"
fi
ok "kwok's watches stay open"
log "smoke passed"
