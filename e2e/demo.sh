#!/usr/bin/env bash
# capow's main job as a demo (README "Set up"). On a fresh machine it brings up a real OpenStack,
# a real management kube-apiserver with the real Cluster API core, and a workload cluster
# (kube-apiserver, kube-scheduler, kwok) on 127.0.0.1; runs the capow manager with its
# externalgrpc server; creates a hosted-control-plane Cluster whose workers are an autoscaled
# MachineDeployment; and runs the real cluster-autoscaler against it, as an operator would:
# with the workload cluster's kubeconfig and the cloud-config Secret capow published for the
# cluster. Pending pods bring Machines (Nova servers, Nodes) up; removing the pods brings them
# down again. Then it deletes the Cluster and shows that nothing is left in OpenStack.
#
# The cluster-autoscaler binary is the one e2e/components/build.sh builds from the upstream
# source kept beside the repository, or CAPOW_E2E_CLUSTER_AUTOSCALER. Without
# either, the demo says so and makes the autoscaler's calls itself with `xgrpc`
# (e2e/src/bin/xgrpc.rs, also a debugging tool): IncreaseSize, NodeGroupNodes, DeleteNodes over
# the same mTLS credentials.
# Stand-ins, as in the e2e tests: the hosted control plane (a HostedControlPlane CRD whose
# status the demo writes) and the kubelet (the demo registers a Node per ACTIVE server, with
# the capacity capow derived from the flavor).
# CAPOW_E2E_KEEP=1 leaves everything running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=demo
cd "$REPO_DIR"
mkdir -p "$CAPOW_E2E_STATE"
NS=capow-demo
WORKLOAD=demo
GRPC=127.0.0.1:18086
ADMIN=127.0.0.1:18080
CA_ADDRESS=127.0.0.1:18087  # the cluster-autoscaler's /metrics and /health-check
CA_BIN=${CAPOW_E2E_CLUSTER_AUTOSCALER:-$(bin_dir cluster-autoscaler "${CA_VERSIONS%% *}")/cluster-autoscaler}

pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ ${CAPOW_E2E_KEEP:-0} != 1 ]]; then
    "$E2E_DIR/workload/down.sh" "$WORKLOAD" --purge >/dev/null 2>&1 || true
    "$E2E_DIR/env.sh" down || true
  fi
  (( rc == 0 )) || log "demo failed (exit $rc); manager log: $CAPOW_E2E_STATE/demo-manager.log"
}
trap cleanup EXIT

log "bringing up OpenStack, kube-apiserver and the Cluster API core (log: $CAPOW_E2E_STATE/env-up.log)"
"$E2E_DIR/env.sh" up > "$CAPOW_E2E_STATE/env-up.log" 2>&1 &
env_pid=$!
log "building capow and xgrpc"
cargo build --locked --bin capow -p capow --bin xgrpc -p capow-e2e
wait "$env_pid" || { tail -30 "$CAPOW_E2E_STATE/env-up.log"; die "environment did not come up"; }
# Start from a clean cloud even if an earlier test or demo run was interrupted.
OSDEV_STATE="$OSDEV_STATE" "$E2E_DIR/openstack/sweep.sh" | while read -r line; do log "$line"; done

KBIN=$(bin_dir kubernetes "$K8S_VERSION")
k() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" "$@"; }
os() { OS_CLIENT_CONFIG_FILE="$OSDEV_STATE/clouds.yaml" openstack --os-cloud osdev-admin --os-compute-api-version 2.61 "$@"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }

log "starting workload cluster $WORKLOAD (kube-apiserver, kube-scheduler, kwok)"
WKUBECONFIG=$("$E2E_DIR/workload/up.sh" "$WORKLOAD" 2>>"$CAPOW_E2E_STATE/env-up.log" | tail -1)
kw() { "$KBIN/kubectl" --kubeconfig "$WKUBECONFIG" "$@"; }
WPORT=$(sed -n 's/.*server: https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WKUBECONFIG" | head -1)

log "starting the capow manager (admin $ADMIN, externalgrpc $GRPC)"
k apply --server-side -f "$E2E_DIR/manifests/hostedcontrolplane-standin.yaml" >/dev/null
# A fresh namespace each run. An interrupted run leaves capow's objects with their finalizers
# and no manager to release them; sweep.sh already removed their OpenStack resources, so drop
# the finalizers and let the namespace go.
if k get namespace "$NS" >/dev/null 2>&1; then
  for kind in openstackworkermachines openstackworkerclusters; do
    for obj in $(k -n "$NS" get "$kind" -o name 2>/dev/null); do
      k -n "$NS" patch "$obj" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null
    done
  done
fi
k delete namespace "$NS" --ignore-not-found --timeout=120s >/dev/null
k create namespace "$NS" >/dev/null
mkdir -p "$CAPOW_E2E_STATE/demo-ca"
KUBECONFIG="$KUBECONFIG_E2E" target/debug/capow manager --namespace "$NS" --admin-address "$ADMIN" \
  --build-poll-interval 1s --autoscaler-address "$GRPC" --autoscaler-ip-san 127.0.0.1 \
  --system-namespace "$NS" --autoscaler-published-address "$GRPC" \
  --autoscaler-mount-dir "$CAPOW_E2E_STATE/demo-ca" > "$CAPOW_E2E_STATE/demo-manager.log" 2>&1 &
pids+=($!)
wait_for "capow /ready" 60 curl -sf "http://$ADMIN/ready"

log "creating Cluster c1: HostedControlPlane (stand-in), OpenStackWorkerCluster, MachineDeployment 'workers' (min 0, max 5)"
k -n "$NS" create secret generic cloud-config --from-file=clouds.yaml="$OSDEV_STATE/clouds.yaml" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
k -n "$NS" create secret generic c1-kubeconfig --from-file=value="$WKUBECONFIG" --dry-run=client -o yaml \
  | k label --local -f - cluster.x-k8s.io/cluster-name=c1 -o yaml | k apply -f - >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Secret
metadata: {name: workers-bootstrap, namespace: $NS}
stringData: {format: cloud-config, value: "#cloud-config\n"}
---
apiVersion: controlplane.cluster.x-k8s.io/v1alpha1
kind: HostedControlPlane
metadata: {name: c1, namespace: $NS}
spec: {version: v1.36.3, replicas: 2, gateway: {name: demo, namespace: demo}}
---
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: OpenStackWorkerCluster
metadata: {name: c1, namespace: $NS}
spec:
  identityRef: {name: cloud-config, cloudName: osdev-demo}
  managedSubnets: [{cidr: 10.66.0.0/24}]
  managedSecurityGroups:
    workerNodesSecurityGroupRules:
    - {name: cilium-vxlan, direction: ingress, protocol: udp, portRangeMin: 8472, portRangeMax: 8472, remoteManagedGroups: [worker]}
---
apiVersion: cluster.x-k8s.io/v1beta2
kind: Cluster
metadata: {name: c1, namespace: $NS}
spec:
  controlPlaneRef: {apiGroup: controlplane.cluster.x-k8s.io, kind: HostedControlPlane, name: c1}
  infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: OpenStackWorkerCluster, name: c1}
---
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: OpenStackWorkerMachineTemplate
metadata: {name: workers, namespace: $NS, labels: {cluster.x-k8s.io/cluster-name: c1}}
spec:
  template:
    spec:
      flavor: {filter: {name: m1.tiny}}
      image: {filter: {name: osdev-tiny}}
---
apiVersion: cluster.x-k8s.io/v1beta2
kind: MachineDeployment
metadata:
  name: workers
  namespace: $NS
  annotations:
    cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size: "0"
    cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size: "5"
spec:
  clusterName: c1
  replicas: 0
  selector: {matchLabels: {pool: workers}}
  template:
    metadata: {labels: {pool: workers}}
    spec:
      clusterName: c1
      bootstrap: {dataSecretName: workers-bootstrap}
      infrastructureRef: {apiGroup: infrastructure.cluster.x-k8s.io, kind: OpenStackWorkerMachineTemplate, name: workers}
YAML
# The hosted control plane's part (stand-in): initialized, and its endpoint on the infra cluster.
k -n "$NS" patch hostedcontrolplane c1 --subresource=status --type=merge \
  -p '{"status":{"initialization":{"controlPlaneInitialized":true},"initialized":true,"ready":true,"version":"v1.36.3","externalManagedControlPlane":true}}' >/dev/null
k -n "$NS" patch openstackworkercluster c1 --type=merge \
  -p "{\"spec\":{\"controlPlaneEndpoint\":{\"host\":\"127.0.0.1\",\"port\":$WPORT}}}" >/dev/null
infra_ready() { [[ $(k -n "$NS" get cluster c1 -o jsonpath='{.status.initialization.infrastructureProvisioned}') == true ]]; }
wait_for "the Cluster's infrastructure" 120 infra_ready
k -n "$NS" get openstackworkerclusters
echo

# The kubelet's part (stand-in): once Nova says ACTIVE, a Node with the server's providerID and
# the capacity capow derived from the flavor (the template's status.capacity, plus 110 pods).
(
  while true; do
    "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" -n "$NS" get openstackworkermachines -o json 2>/dev/null |
      jq -c '.items[] | select(.status.instanceState == "ACTIVE" and .spec.providerID != null and .metadata.deletionTimestamp == null)
             | {name: .metadata.name, pid: .spec.providerID, template: .metadata.annotations["cluster.x-k8s.io/cloned-from-name"]}' |
    while read -r m; do
      name=$(jq -r .name <<<"$m")
      "$KBIN/kubectl" --kubeconfig "$WKUBECONFIG" get node "$name" >/dev/null 2>&1 && continue
      capacity=$("$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" -n "$NS" get openstackworkermachinetemplate \
        "$(jq -r .template <<<"$m")" -o json 2>/dev/null | jq -c '(.status.capacity // {}) + {pods: "110"}') || continue
      jq -n --argjson m "$m" --argjson c "$capacity" '{apiVersion: "v1", kind: "Node",
          metadata: {name: $m.name, labels: {"kubernetes.io/hostname": $m.name, "kubernetes.io/os": "linux", type: "kwok"},
                     annotations: {"kwok.x-k8s.io/node": "fake"}},
          spec: {providerID: $m.pid}, status: {capacity: $c, allocatable: $c}}' |
        "$KBIN/kubectl" --kubeconfig "$WKUBECONFIG" create -f - >/dev/null 2>&1 || true
    done
    sleep 1
  done
) &
pids+=($!)

wait_for "the cluster-autoscaler credentials capow publishes" 60 k -n "$NS" get secret c1-capow-autoscaler
for key in tls.crt tls.key ca.crt cloud-config; do
  k -n "$NS" get secret c1-capow-autoscaler -o "jsonpath={.data.${key//./\\.}}" | base64 -d > "$CAPOW_E2E_STATE/demo-ca/$key"
done
CC="$CAPOW_E2E_STATE/demo-ca/cloud-config"
x() { target/debug/xgrpc --cloud-config "$CC" "$@"; }
GROUP="MachineDeployment/$NS/workers"
running() { k -n "$NS" get machines -l cluster.x-k8s.io/deployment-name=workers -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' | grep -c . || true; }
machines() { k -n "$NS" get machines -l cluster.x-k8s.io/deployment-name=workers --no-headers 2>/dev/null | grep -c . || true; }
running_is() { [[ $(running) == "$1" && $(machines) == "$1" ]]; }

log "externalgrpc (mTLS, client certificate of cluster $NS/c1): node groups, and the template for scale-from-zero"
x groups
x template "$GROUP"
echo

if [[ -x $CA_BIN ]]; then
  log "starting the cluster-autoscaler $CA_BIN (log: $CAPOW_E2E_STATE/demo-cluster-autoscaler.log)"
  log "  --cloud-provider=externalgrpc --cloud-config=$CC (from Secret c1-capow-autoscaler) --kubeconfig=<workload cluster>"
  "$CA_BIN" --cloud-provider=externalgrpc --cloud-config="$CC" --kubeconfig="$WKUBECONFIG" \
    --namespace=kube-system --leader-elect=false --address="$CA_ADDRESS" --v=1 \
    --scan-interval=5s --scale-down-unneeded-time=10s --scale-down-delay-after-add=10s \
    --scale-down-delay-after-delete=5s --max-node-provision-time=2m \
    --skip-nodes-with-system-pods=false --skip-nodes-with-local-storage=false \
    > "$CAPOW_E2E_STATE/demo-cluster-autoscaler.log" 2>&1 &
  pids+=($!)
  wait_for "cluster-autoscaler /health-check" 60 curl -sf "http://$CA_ADDRESS/health-check"
  ca_log() { grep -E "$1" "$CAPOW_E2E_STATE/demo-cluster-autoscaler.log" | sed 's/^/  cluster-autoscaler: /' || true; }
  ca_log 'Cluster Autoscaler [0-9]'
  replicas() { k -n "$NS" get machinedeployment workers -o jsonpath='{.spec.replicas}'; }
  scaled_up() { [[ $(replicas) -gt 0 ]]; }
  pods_running() { [[ $(kw -n default get pods -l app=demo-app --field-selector=status.phase=Running --no-headers 2>/dev/null | grep -c .) == "$1" ]]; }
  pods_unschedulable() { [[ $(kw -n default get pods -l app=demo-app -o json | jq '[.items[].status.conditions[]? | select(.type == "PodScheduled" and .reason == "Unschedulable")] | length') == "$1" ]]; }
  pods_gone() { [[ $(kw -n default get pods -l app=demo-app --no-headers 2>/dev/null | grep -c .) == 0 ]]; }
  wait_for "the workload's default ServiceAccount" 60 kw -n default get serviceaccount default

  log "a Deployment of 3 pods (600m CPU each: one per m1.tiny node) that no Node can take yet"
  start=$(ms)
  kw apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo-app, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: demo-app}}
  template:
    metadata: {labels: {app: demo-app}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - {name: app, image: capow-e2e-pause, resources: {requests: {cpu: 600m, memory: 64Mi}}}
YAML
  wait_for "the scheduler to mark the pods Unschedulable" 60 pods_unschedulable 3
  kw -n default get pods -o wide
  wait_for "the cluster-autoscaler's scale-up" 120 scaled_up
  log "cluster-autoscaler sized the group from capow's template node: replicas $(replicas), $(( $(ms) - start )) ms after the pods were created"
  ca_log '\] (Scale-up: setting group|Best option to resize|Final scale-up plan)'
  wait_for "3 Machines Running" 240 running_is 3
  log "3 Machines Running (server ACTIVE, Node registered, nodeRef set) $(( $(ms) - start )) ms after the pods were created"
  wait_for "the pods Running" 120 pods_running 3
  log "3 pods Running $(( $(ms) - start )) ms after they were created"
  k -n "$NS" get machines,openstackworkermachines -o wide
  echo
  kw get nodes -o wide
  echo
  kw -n default get pods -o wide
  echo
  os server list --all-projects --tags capow -c ID -c Name -c Status -c Networks
  echo

  log "deleting the Deployment: the Nodes are empty, the cluster-autoscaler removes them"
  start=$(ms)
  kw -n default delete deployment demo-app >/dev/null
  wait_for "the pods gone" 60 pods_gone
  wait_for "the Machines gone" 240 running_is 0
  log "Machines gone $(( $(ms) - start )) ms after the Deployment was deleted"
  ca_log '\] Scale-down: removing empty node'
  x nodes "$GROUP"
  os server list --all-projects --tags capow -c ID -c Name -c Status
  echo
else
  log "no cluster-autoscaler binary ($CA_BIN): build it with e2e/components/build.sh cluster-autoscaler"
  log "(needs the upstream source in ../shared/upstream) or set CAPOW_E2E_CLUSTER_AUTOSCALER;"
  log "making its calls with xgrpc instead"
  log "IncreaseSize +3, as the cluster-autoscaler does for pending pods"
  start=$(ms)
  x increase "$GROUP" 3
  wait_for "3 Machines Running" 240 running_is 3
  log "3 Machines Running (server ACTIVE, Node registered, nodeRef set) $(( $(ms) - start )) ms after IncreaseSize"
  k -n "$NS" get machines,openstackworkermachines -o wide
  echo
  kw get nodes -o wide
  echo
  os server list --all-projects --tags capow -c ID -c Name -c Status -c Networks
  x nodes "$GROUP"
  echo

  victim=$(x nodes "$GROUP" | head -1 | cut -d' ' -f1)
  log "DeleteNodes $victim, as the cluster-autoscaler does for an unneeded node"
  x delete "$GROUP" "$victim"
  wait_for "2 Machines Running" 180 running_is 2
  x nodes "$GROUP"
  os server list --all-projects --tags capow -c ID -c Name -c Status
  echo
fi

log "deleting Cluster c1 (CAPI deletes its Machines, capow their servers, then the network, router and security group)"
start=$(ms)
k -n "$NS" delete cluster c1 --timeout=300s >/dev/null
log "Cluster deleted in $(( $(ms) - start )) ms; OpenStack resources left with capow's tag:"
echo "  servers: $(os server list --all-projects --tags capow -f value -c ID | grep -c . || true)"
for kind in port network router "security group"; do
  # shellcheck disable=SC2086
  echo "  ${kind}s: $(os $kind list --tags capow -f value -c ID | grep -c . || true)"
done
log "OpenStack API calls made by capow: $(curl -s "http://$ADMIN/metrics" | awk '/^capow_openstack_requests_total/ {s+=$NF} END {print s}')"
log "demo complete"
