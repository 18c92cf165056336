#!/usr/bin/env bash
# Restarts the management kube-apiserver (for fault tests): stops it, optionally compacts etcd
# to its current revision first (--compact: every watch that resumes from an older
# resourceVersion then gets 410 Gone, as after a long outage), waits --down seconds, and
# starts it again with kube/up.sh. Usage: restart-apiserver.sh [--compact] [--down SECONDS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOG_TAG=kube-restart
compact=0 down=0
while (($#)); do
  case $1 in
    --compact) compact=1 ;;
    --down) down=$2; shift ;;
    *) die "usage: restart-apiserver.sh [--compact] [--down SECONDS]" ;;
  esac
  shift
done
stop_daemon kube-apiserver "$KUBE_STATE"
if ((compact)); then
  command -v etcdctl >/dev/null || die "etcdctl is not installed (apt-get install etcd-client)"
  rev=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint status -w json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" compact "$rev" >/dev/null
  log "compacted etcd at revision $rev"
fi
sleep "$down"
"$E2E_DIR/kube/up.sh"
