# Shared by workload/up.sh and workload/down.sh: the state directory and ports of one workload
# cluster. Source it after ../lib.sh with NAME set.
# shellcheck shell=bash

[[ $NAME =~ ^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$ ]] || die "workload cluster name '$NAME': use 1-40 of [a-z0-9-]"
WDIR="$WORKLOAD_STATE/$NAME"
WPKI="$WDIR/pki"
WKUBECONFIG="$WDIR/admin.kubeconfig"
ETCD_PREFIX="/workload-$NAME"

# The slot (0-9) picks the ports; it is kept in the state directory so that a restarted
# cluster keeps its ports.
workload_slot() {
  if [[ -f $WDIR/slot ]]; then cat "$WDIR/slot"; return; fi
  local n f used
  for n in 0 1 2 3 4 5 6 7 8 9; do
    used=0
    for f in "$WORKLOAD_STATE"/*/slot; do [[ -f $f && $(cat "$f") == "$n" ]] && used=1; done
    if (( !used )); then mkdir -p "$WDIR"; echo "$n" > "$WDIR/slot"; echo "$n"; return; fi
  done
  die "all 10 workload cluster slots are taken (see $WORKLOAD_STATE)"
}
