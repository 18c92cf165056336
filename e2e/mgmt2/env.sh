# Settings of the second management plane (source it): the variables kube/up.sh, capi/up.sh and
# their down.sh read, pointed at the MGMT2_* ports of lib.sh and at $CAPOW_E2E_STATE/mgmt2, so
# the same scripts start a second etcd, kube-apiserver, kube-controller-manager and CAPI core
# manager beside the main ones. Only for scripts run as child processes (they source lib.sh
# again and keep these exported values).
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
MGMT2_STATE="$CAPOW_E2E_STATE/mgmt2"
export CAPOW_E2E_STATE="$MGMT2_STATE"
export ETCD_PORT="$MGMT2_ETCD_PORT" ETCD_PEER_PORT="$MGMT2_ETCD_PEER_PORT"
export APISERVER_PORT="$MGMT2_APISERVER_PORT" KCM_PORT="$MGMT2_KCM_PORT"
export CAPI_HEALTH_PORT="$MGMT2_CAPI_HEALTH_PORT" CAPI_METRICS_PORT="$MGMT2_CAPI_METRICS_PORT"
export CAPI_WEBHOOK_PORT="$MGMT2_CAPI_WEBHOOK_PORT"
# Derive the state paths (KUBE_STATE, KUBECONFIG_E2E, CAPI_STATE, ...) again from the new root.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
