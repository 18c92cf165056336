#!/usr/bin/env bash
# Deletes everything capow tagged `capow` in the local test cloud (all projects): servers,
# trunks, ports, volumes (metadata capow-machine-uid), routers (interfaces and gateway first),
# subnets' networks and security groups, so a run starts clean after an earlier one was
# interrupted or a test left a cluster behind. Only for the throwaway cloud that up.sh creates:
# it refuses any other auth URL.
set -euo pipefail
OSDEV="${OSDEV_STATE:-/var/tmp/osdev}"
export OS_CLIENT_CONFIG_FILE="$OSDEV/clouds.yaml"
grep -q '"auth_url": "http://127.0.0.1:5000/v3"' "$OS_CLIENT_CONFIG_FILE" || { echo "sweep.sh: not the loopback test cloud" >&2; exit 1; }
os() { openstack --os-cloud osdev-admin --os-compute-api-version 2.61 "$@"; }
ids() { os "$@" -f value -c ID; }
servers=$(ids server list --all-projects --tags capow)
[[ -n $servers ]] && os server delete --wait $servers
trunks=$(ids network trunk list --tags capow 2>/dev/null || true)
for t in $trunks; do os network trunk delete "$t" 2>/dev/null || true; done
ports=$(ids port list --tags capow)
# Ports a crashed run created before tagging them: unbound, named, untagged.
ports+=" $(os port list --long -f json | python3 -c 'import json,sys; print(" ".join(p["ID"] for p in json.load(sys.stdin) if not p.get("Device Owner") and p["Name"] and not p.get("Tags")))' 2>/dev/null || true)"
for p in $ports; do os port delete "$p" 2>/dev/null || true; done
volumes=$(os volume list --all-projects --long -f json | python3 -c 'import json,sys; print(" ".join(v["ID"] for v in json.load(sys.stdin) if "capow-machine-uid" in (v.get("Properties") or {})))' 2>/dev/null || true)
for v in $volumes; do os volume delete --force "$v" 2>/dev/null || true; done
routers=$(ids router list --tags capow)
for r in $routers; do
  for p in $(ids port list --router "$r" --device-owner network:router_interface); do
    os router remove port "$r" "$p" 2>/dev/null || true
  done
  os router unset --external-gateway "$r" 2>/dev/null || true
  os router delete "$r" 2>/dev/null || true
done
networks=$(ids network list --tags capow)
for n in $networks; do os network delete "$n" 2>/dev/null || true; done
groups=$(ids security group list --all-projects --tags capow 2>/dev/null || ids security group list --tags capow)
for g in $groups; do os security group delete "$g" 2>/dev/null || true; done
echo "sweep.sh: removed $(wc -w <<<"$servers") servers, $(wc -w <<<"$trunks") trunks, $(wc -w <<<"$ports") ports, $(wc -w <<<"$volumes") volumes, $(wc -w <<<"$routers") routers, $(wc -w <<<"$networks") networks, $(wc -w <<<"$groups") security groups"
