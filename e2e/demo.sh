#!/usr/bin/env bash
# capow's main job as a demo (README "Set up"): on a fresh machine it brings up a real
# OpenStack and a real kube-apiserver on 127.0.0.1, runs the capow manager, creates a Cluster,
# a Machine and its OpenStackWorkerMachine, shows the Nova server capow made for it, deletes
# the machine again and shows that the server is gone. CAPOW_E2E_KEEP=1 leaves it all running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=demo
cd "$REPO_DIR"
mkdir -p "$CAPOW_E2E_STATE"
NS=capow-demo

manager_pid=
cleanup() {
  local rc=$?
  [[ -n $manager_pid ]] && kill "$manager_pid" 2>/dev/null && wait "$manager_pid" 2>/dev/null
  if [[ ${CAPOW_E2E_KEEP:-0} != 1 ]]; then "$E2E_DIR/env.sh" down || true; fi
  (( rc == 0 )) || log "demo failed (exit $rc); manager log: $CAPOW_E2E_STATE/demo-manager.log"
}
trap cleanup EXIT

log "bringing up OpenStack and kube-apiserver (log: $CAPOW_E2E_STATE/env-up.log)"
# Without the CAPI core: the demo stands in for CAPI's Cluster controller (below), and CAPI's
# webhook would reject its Cluster (no controlPlaneRef, infrastructureRef or topology).
CAPOW_E2E_CAPI=0 "$E2E_DIR/env.sh" up > "$CAPOW_E2E_STATE/env-up.log" 2>&1 &
env_pid=$!
log "building capow"
cargo build --locked --bin capow
wait "$env_pid" || { tail -30 "$CAPOW_E2E_STATE/env-up.log"; die "environment did not come up"; }

KBIN=$(bin_dir kubernetes "$K8S_VERSION")
k() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" "$@"; }
os() { OS_CLIENT_CONFIG_FILE="$OSDEV_STATE/clouds.yaml" openstack --os-cloud osdev-admin --os-compute-api-version 2.61 "$@"; }

log "starting capow manager (admin server on 127.0.0.1:18080)"
KUBECONFIG="$KUBECONFIG_E2E" target/debug/capow manager --admin-address 127.0.0.1:18080 \
  --namespace "$NS" --build-poll-interval 1s > "$CAPOW_E2E_STATE/demo-manager.log" 2>&1 &
manager_pid=$!
wait_for "capow /ready" 30 curl -sf http://127.0.0.1:18080/ready

log "creating namespace $NS, the OpenStack identity Secret, Cluster c1 and Machine worker-0"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
k -n "$NS" create secret generic cloud-config --from-file=clouds.yaml="$OSDEV_STATE/clouds.yaml" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: cluster.x-k8s.io/v1beta2
kind: Cluster
metadata: {name: c1, namespace: $NS}
spec: {paused: false}
---
apiVersion: v1
kind: Secret
metadata: {name: worker-0-bootstrap, namespace: $NS}
stringData:
  format: cloud-config
  value: |
    #cloud-config
    runcmd: [[echo, "hello from capow's demo"]]
---
apiVersion: cluster.x-k8s.io/v1beta2
kind: Machine
metadata: {name: worker-0, namespace: $NS, labels: {cluster.x-k8s.io/cluster-name: c1}}
spec:
  clusterName: c1
  bootstrap: {dataSecretName: worker-0-bootstrap}
  infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: OpenStackWorkerMachine, name: worker-0}
YAML
# Without the CAPI controllers (they join in the next milestone) the demo reports the
# cluster's infrastructure as provisioned itself.
k -n "$NS" patch cluster c1 --subresource=status --type=merge \
  -p '{"status":{"initialization":{"infrastructureProvisioned":true}}}' >/dev/null
machine_uid=$(k -n "$NS" get machine worker-0 -o jsonpath='{.metadata.uid}')
start_ms=$(( $(date +%s%N) / 1000000 ))
k apply -f - >/dev/null <<YAML
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: OpenStackWorkerMachine
metadata:
  name: worker-0
  namespace: $NS
  labels: {cluster.x-k8s.io/cluster-name: c1}
  ownerReferences: [{apiVersion: cluster.x-k8s.io/v1beta2, kind: Machine, name: worker-0, uid: $machine_uid}]
spec:
  flavor: {filter: {name: m1.tiny}}
  image: {filter: {name: osdev-tiny}}
  ports: [{network: {filter: {name: osdev-net}}}]
  identityRef: {name: cloud-config, cloudName: osdev-demo}
YAML
wait_for "worker-0 to be provisioned" 120 bash -c \
  "'$KBIN/kubectl' --kubeconfig '$KUBECONFIG_E2E' -n $NS get oswm worker-0 -o jsonpath='{.status.initialization.provisioned}' | grep -q true"
log "worker-0 provisioned after $(( $(date +%s%N) / 1000000 - start_ms )) ms"
echo
k -n "$NS" get openstackworkermachines -o wide
echo
server=$(k -n "$NS" get oswm worker-0 -o jsonpath='{.status.instanceID}')
os server show "$server" -c id -c name -c status -c flavor -c image -c addresses -c tags -c properties
echo
k -n "$NS" get events --field-selector involvedObject.name=worker-0
echo
log "OpenStack API calls so far: $(curl -s http://127.0.0.1:18080/metrics | awk '/^capow_openstack_requests_total/ {s+=$NF} END {print s}')"

log "deleting worker-0"
k -n "$NS" delete oswm worker-0 --timeout=120s >/dev/null
if os server show "$server" >/dev/null 2>&1; then die "server $server still exists"; fi
log "server $server is gone; demo complete"
