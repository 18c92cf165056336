#!/usr/bin/env bash
# Deletes every server and port tagged `capow` in the local test cloud (all projects), so a
# test run starts clean after an earlier run was interrupted. Only for the throwaway cloud that
# up.sh creates: it refuses any other auth URL.
set -euo pipefail
OSDEV="${OSDEV_STATE:-/var/tmp/osdev}"
export OS_CLIENT_CONFIG_FILE="$OSDEV/clouds.yaml"
grep -q '"auth_url": "http://127.0.0.1:5000/v3"' "$OS_CLIENT_CONFIG_FILE" || { echo "sweep.sh: not the loopback test cloud" >&2; exit 1; }
os() { openstack --os-cloud osdev-admin --os-compute-api-version 2.61 "$@"; }
servers=$(os server list --all-projects --tags capow -f value -c ID)
[[ -n $servers ]] && os server delete --wait $servers
ports=$(os port list --tags capow -f value -c ID)
# Ports a crashed run created before tagging them: unbound, named, untagged.
ports+=" $(os port list --long -f json | python3 -c 'import json,sys; print(" ".join(p["ID"] for p in json.load(sys.stdin) if not p.get("Device Owner") and p["Name"] and not p.get("Tags")))' 2>/dev/null || true)"
for p in $ports; do os port delete "$p" 2>/dev/null || true; done
echo "sweep.sh: removed $(wc -w <<<"$servers") servers, $(wc -w <<<"$ports") ports"
