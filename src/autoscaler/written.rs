//! Read-your-writes for node-group sizes.
//!
//! The index is built from reflector stores, which learn of capow's own `scale` writes only
//! when the watch event arrives (usually milliseconds later). Without this, a
//! `NodeGroupTargetSize` right after `NodeGroupIncreaseSize` or `NodeGroupDeleteNodes` answers
//! the old size; the in-tree clusterapi provider avoids the same gap by updating its cached
//! object after `SetSize` (cluster-autoscaler `cloudprovider/clusterapi`,
//! `unstructuredScalableResource.SetSize`).
//!
//! Before a write, the writer takes the stores' state; after it, [`WrittenSizes::record`]
//! remembers the replicas written and the resourceVersion the store held for the
//! MachineDeployment/MachineSet *before the write*. While the store still holds exactly that
//! version, [`WrittenSizes::apply`] puts the written size into the index; as soon as the store
//! has any other version (the write's own event or a later one) the store is authoritative
//! again and the entry is dropped. Entries also expire after [`MAX_AGE`], so a broken watch
//! cannot pin a size.
//!
//! The version must be the one from before the write: taken after it, the store may already
//! have moved past capow's write to a later one (someone scaling the group right after capow),
//! and that later version would be remembered as "stale", hiding the newer size behind
//! capow's older one until the next change or [`MAX_AGE`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::index::{GroupKind, Index, NodeGroup, Snapshot};

/// How long a written size may stand in for the store (seconds: 30).
pub const MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct Entry {
    kind: GroupKind,
    namespace: String,
    name: String,
    replicas: i32,
    stale_version: String,
    at: Instant,
}

/// Sizes capow wrote that the stores may not show yet, by node group id.
#[derive(Debug, Default)]
pub struct WrittenSizes {
    entries: Mutex<HashMap<String, Entry>>,
}

/// resourceVersion of the group's MachineDeployment/MachineSet in `snapshot`, if it is there.
fn stored_version(
    snapshot: &Snapshot,
    kind: GroupKind,
    namespace: &str,
    name: &str,
) -> Option<String> {
    let matches = |ns: Option<String>, n: String| ns.as_deref() == Some(namespace) && n == name;
    match kind {
        GroupKind::MachineDeployment => snapshot
            .machine_deployments
            .iter()
            .find(|o| matches(o.namespace(), o.name_any()))
            .and_then(|o| o.resource_version()),
        GroupKind::MachineSet => snapshot
            .machine_sets
            .iter()
            .find(|o| matches(o.namespace(), o.name_any()))
            .and_then(|o| o.resource_version()),
    }
}

impl WrittenSizes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Remembers that `group` was scaled to `replicas` by a write that produced
    /// `written_version` (the resourceVersion the `scale` response carried); `before` is the
    /// stores' state taken *before* the write was sent. Nothing is remembered when `before`
    /// does not have the object, or already has the written version.
    pub fn record(
        &self,
        group: &NodeGroup,
        replicas: i32,
        written_version: Option<&str>,
        before: &Snapshot,
    ) {
        let mut entries = self.lock();
        entries.remove(&group.id);
        let Some(stale) = stored_version(before, group.kind, &group.namespace, &group.name) else {
            return;
        };
        if written_version == Some(stale.as_str()) {
            return;
        }
        entries.insert(
            group.id.clone(),
            Entry {
                kind: group.kind,
                namespace: group.namespace.clone(),
                name: group.name.clone(),
                replicas,
                stale_version: stale,
                at: Instant::now(),
            },
        );
    }

    /// Puts remembered sizes into `index` (built from `snapshot`) where the store still holds
    /// the version from before the write; forgets the others.
    pub fn apply(&self, snapshot: &Snapshot, index: &mut Index) {
        self.lock().retain(|id, e| {
            let still_stale = e.at.elapsed() < MAX_AGE
                && stored_version(snapshot, e.kind, &e.namespace, &e.name).as_deref()
                    == Some(e.stale_version.as_str());
            if still_stale {
                index.set_target_size(id, e.replicas);
            }
            still_stale
        });
    }

    /// Number of remembered writes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no write is remembered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::autoscaler::index::tests::md;
    use crate::capi::MachineDeployment;

    fn with_version(md: Arc<MachineDeployment>, rv: &str) -> Arc<MachineDeployment> {
        let mut m = (*md).clone();
        m.metadata.resource_version = Some(rv.to_owned());
        Arc::new(m)
    }

    fn snapshot(replicas: i32, rv: &str) -> Snapshot {
        let annotations =
            serde_json::json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "5"});
        Snapshot {
            machine_deployments: vec![with_version(md("ns", "md-0", replicas, annotations), rv)],
            ..Snapshot::default()
        }
    }

    const ID: &str = "MachineDeployment/ns/md-0";

    fn target(index: &Index) -> i32 {
        index.group(ID).unwrap().target_size
    }

    #[test]
    fn the_written_size_stands_until_the_store_moves_on() {
        let written = WrittenSizes::default();
        let before = snapshot(1, "10");
        let index = Index::build(&before, None);
        // IncreaseSize 1 -> 3 produced version 11; the store still has 10.
        written.record(index.group(ID).unwrap(), 3, Some("11"), &before);
        let mut stale = Index::build(&before, None);
        assert_eq!(target(&stale), 1, "the store alone answers the old size");
        written.apply(&before, &mut stale);
        assert_eq!(target(&stale), 3);
        assert_eq!(written.len(), 1);

        // The watch delivers the write: the store answers, the entry goes.
        let caught_up = snapshot(3, "11");
        let mut fresh = Index::build(&caught_up, None);
        written.apply(&caught_up, &mut fresh);
        assert_eq!(target(&fresh), 3);
        assert!(written.is_empty());
    }

    #[test]
    fn a_later_write_by_someone_else_wins_over_the_remembered_size() {
        let written = WrittenSizes::default();
        let before = snapshot(1, "10");
        let index = Index::build(&before, None);
        written.record(index.group(ID).unwrap(), 3, Some("11"), &before);
        // The store jumped past capow's write to a user's scale to 2 (e.g. after a relist).
        let later = snapshot(2, "12");
        let mut fresh = Index::build(&later, None);
        written.apply(&later, &mut fresh);
        assert_eq!(target(&fresh), 2);
        assert!(written.is_empty());
    }

    #[test]
    fn a_write_after_capows_that_the_store_shows_first_is_not_masked() {
        let written = WrittenSizes::default();
        let before = snapshot(1, "10");
        let index = Index::build(&before, None);
        // capow wrote 3 (version 11); by the time the write returned, the store had seen it and
        // a user's scale to 5 (version 12).
        written.record(index.group(ID).unwrap(), 3, Some("11"), &before);
        let now = snapshot(5, "12");
        let mut fresh = Index::build(&now, None);
        written.apply(&now, &mut fresh);
        assert_eq!(target(&fresh), 5, "the user's later size, not capow's");
    }

    #[test]
    fn nothing_is_remembered_when_the_store_already_has_the_write() {
        let written = WrittenSizes::default();
        let after = snapshot(3, "11");
        let index = Index::build(&after, None);
        written.record(index.group(ID).unwrap(), 3, Some("11"), &after);
        assert!(written.is_empty());
    }
}
