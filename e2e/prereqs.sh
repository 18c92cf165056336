#!/usr/bin/env bash
# Installs the Debian packages the e2e environment needs beyond what openstack/up.sh installs
# itself, and checks the toolchains. Idempotent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=prereqs

need=()
# iproute2: ss (port checks); time: peak RSS of the Go builds in the build log; etcd-client:
# etcdctl (the fault tests compact etcd to force 410 Gone on watches).
for p in etcd-server etcd-client openssl curl jq iproute2 time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if (( ${#need[@]} )); then
  log "installing ${need[*]}"
  [[ $(id -u) -eq 0 ]] || die "run as root to install packages"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the etcd package from starting a system etcd.
  [[ -e /usr/sbin/policy-rc.d ]] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || die "Go is required to build the upstream components"
command -v cargo >/dev/null || die "Rust (cargo) is required"
