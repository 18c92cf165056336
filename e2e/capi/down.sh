#!/usr/bin/env bash
# Stops what capi/up.sh started. While the management kube-apiserver still answers it first
# removes the CAPI webhook configurations and switches the CRDs it patched back to conversion
# strategy None, so that nothing points at a webhook that is gone. --purge also deletes the
# state (certificates, logs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=capi

KBIN=$(bin_dir kubernetes "$K8S_VERSION")
kubectl_m() { "$KBIN/kubectl" --kubeconfig "$KUBECONFIG_E2E" --request-timeout=20s "$@"; }
if [[ -x $KBIN/kubectl ]] && kubectl_m get --raw /readyz >/dev/null 2>&1; then
  removed=$(kubectl_m delete mutatingwebhookconfiguration capi-mutating-webhook-configuration --ignore-not-found -o name
            kubectl_m delete validatingwebhookconfiguration capi-validating-webhook-configuration --ignore-not-found -o name)
  for crd in $(kubectl_m get crd -o json | jq -r --arg url "https://127.0.0.1:$CAPI_WEBHOOK_PORT/convert" \
                 '.items[] | select(.spec.conversion.webhook.clientConfig.url == $url) | .metadata.name'); do
    kubectl_m patch crd "$crd" --type=merge --field-manager=capow-e2e-capi \
      -p '{"spec":{"conversion":{"strategy":"None","webhook":null}}}' >/dev/null
    removed+=" $crd"
  done
  [[ -z ${removed// /} ]] || log "CAPI webhook configurations removed, CRD conversion back to None"
fi
stop_daemon capi-manager "$CAPI_STATE"
stop_daemon kube-controller-manager "$CAPI_STATE"
if [[ ${1:-} == --purge ]]; then rm -rf "$CAPI_STATE"; log "purged $CAPI_STATE"; fi
