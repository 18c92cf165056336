# Shared by workload/up.sh and workload/down.sh: the state directory and ports of one workload
# cluster. Source it after ../lib.sh with NAME set.
# shellcheck shell=bash

[[ $NAME =~ ^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$ ]] || die "workload cluster name '$NAME': use 1-40 of [a-z0-9-]"
WDIR="$WORKLOAD_STATE/$NAME"
WPKI="$WDIR/pki"
WKUBECONFIG="$WDIR/admin.kubeconfig"
ETCD_PREFIX="/workload-$NAME"

# The slot (0-9) picks the ports; it is kept in the state directory so that a restarted
# cluster keeps its ports. Tests start workload clusters in parallel, so the choice is made
# under an exclusive lock on the state directory (flock(1)): without it two clusters could
# take the same free slot and the second kube-apiserver would find its port in use.
workload_slot() {
  if [[ -f $WDIR/slot ]]; then cat "$WDIR/slot"; return; fi
  mkdir -p "$WORKLOAD_STATE"
  local n f used lock
  exec {lock}>"$WORKLOAD_STATE/.slot.lock"
  flock "$lock"
  if [[ -f $WDIR/slot ]]; then cat "$WDIR/slot"; exec {lock}>&-; return; fi
  for n in 0 1 2 3 4 5 6 7 8 9; do
    used=0
    for f in "$WORKLOAD_STATE"/*/slot; do [[ -f $f && $(cat "$f") == "$n" ]] && used=1; done
    if (( !used )); then mkdir -p "$WDIR"; echo "$n" > "$WDIR/slot"; exec {lock}>&-; echo "$n"; return; fi
  done
  exec {lock}>&-
  die "all 10 workload cluster slots are taken (see $WORKLOAD_STATE)"
}
