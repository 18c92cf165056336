//! capow's `cluster.x-k8s.io/delete-machine` marks: setting them for `NodeGroupDeleteNodes`,
//! taking them back, and sweeping the ones a lost write left behind.
//!
//! CAPI's MachineSet controller deletes Machines carrying `cluster.x-k8s.io/delete-machine` first
//! whenever it removes Machines, whatever the annotation's value and under every deletion order
//! (cluster-api v1.14.2 `core/reconcilers/machineset/machineset_deletion_order.go`: such a Machine
//! ranks `shouldDeleteFirst`, right after Machines already being deleted). A mark without the
//! matching replicas decrease is therefore a loaded gun: the next scale-down, by CA or a user,
//! deletes that Machine instead of the one chosen. capow records every mark it sets with a
//! companion annotation [`MARK_ANNOTATION`] holding the same value (an RFC 3339 time), so that it
//! only ever removes its own marks: a `delete-machine` a user or another controller set (no
//! companion, or a different value) is never touched.
//!
//! A mark is *stray* ([`stray_marks`]) when capow set it, its Machine is not being deleted, it
//! is older than [`MARK_GRACE`], and no scale-down is pending that could still delete it (its
//! MachineSet and MachineDeployment have no more live Machines than replicas). The sweeper
//! ([`run_sweeper`]) removes stray marks every [`SWEEP_INTERVAL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::index::Snapshot;
use super::service::Snapshots;
use crate::capi::{self, Machine};

/// Companion of `cluster.x-k8s.io/delete-machine` on Machines capow marked for the
/// cluster-autoscaler: the same value (the time of marking, RFC 3339).
pub const MARK_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/delete-machine-mark";
/// Age after which a mark without a pending scale-down is stray (3 min: longer than a
/// `NodeGroupDeleteNodes` write may take, which is bounded by
/// [`super::scale::WRITE_DEADLINE`]).
pub const MARK_GRACE: Duration = Duration::from_secs(180);
/// Period of the sweeper (30 s).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often a mark is retried after a conflicting Machine update.
const MARK_ATTEMPTS: usize = 5;

/// Result of [`mark`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// capow set its mark now, with this value.
    Set(String),
    /// An earlier capow write had marked the Machine already, with this value.
    AlreadyOurs(String),
    /// Someone else's `delete-machine` was already there; capow left it as it was.
    Foreign,
}

/// capow's mark value on `annotations`, if the `delete-machine` there is capow's.
pub fn own_mark(annotations: &std::collections::BTreeMap<String, String>) -> Option<&String> {
    let value = annotations.get(capi::DELETE_MACHINE_ANNOTATION)?;
    (annotations.get(MARK_ANNOTATION) == Some(value)).then_some(value)
}

/// Marks Machine `namespace/name` for deletion, unless it already carries a `delete-machine`
/// annotation: written with the resourceVersion of `stored` (the watched copy) or of a fresh
/// read, so a `delete-machine` someone sets concurrently is never overwritten (and then never
/// removed by capow either).
///
/// # Errors
/// The API error of the read or the patch; `Conflict` after [`MARK_ATTEMPTS`] conflicting
/// updates.
pub async fn mark(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    stored: Option<&Machine>,
) -> Result<Mark, kube::Error> {
    let api = Api::<Machine>::namespaced(client.clone(), namespace);
    let mut current: Option<Machine> = stored.cloned();
    let mut last = None;
    for _ in 0..MARK_ATTEMPTS {
        let machine = match current.take() {
            Some(m) => m,
            None => api.get(name).await?,
        };
        let annotations = machine.annotations();
        if let Some(v) = own_mark(annotations) {
            return Ok(Mark::AlreadyOurs(v.clone()));
        }
        if annotations.contains_key(capi::DELETE_MACHINE_ANNOTATION) {
            return Ok(Mark::Foreign);
        }
        let value = Timestamp::now().to_string();
        let patch = Patch::Merge(json!({ "metadata": {
            "resourceVersion": machine.resource_version(),
            "annotations": { capi::DELETE_MACHINE_ANNOTATION: value, MARK_ANNOTATION: value },
        }}));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(Mark::Set(value)),
            Err(kube::Error::Api(s)) if s.is_conflict() => last = Some(kube::Error::Api(s)),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        kube::Error::Service("marking the Machine kept conflicting".to_owned().into())
    }))
}

/// What [`unmark`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmarked {
    /// Both annotations removed.
    Removed,
    /// `delete-machine` had changed (someone else's now): only the companion was removed.
    CompanionOnly,
    /// Nothing of capow's was there (or the Machine is gone).
    NotOurs,
}

fn pointer(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

/// Removes capow's mark `value` from Machine `namespace/name`: `delete-machine` only while it
/// still holds `value` (a JSON patch `test`, atomic on the API server), the companion
/// annotation while it holds `value`.
///
/// # Errors
/// API errors other than a failed test or a missing Machine.
pub async fn unmark(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    value: &str,
) -> Result<Unmarked, kube::Error> {
    let api = Api::<Machine>::namespaced(client.clone(), namespace);
    let ops = |with_delete: bool| {
        let mut ops = vec![json!({"op": "test", "path": pointer(MARK_ANNOTATION), "value": value})];
        if with_delete {
            ops.push(json!({"op": "test", "path": pointer(capi::DELETE_MACHINE_ANNOTATION), "value": value}));
            ops.push(json!({"op": "remove", "path": pointer(capi::DELETE_MACHINE_ANNOTATION)}));
        }
        ops.push(json!({"op": "remove", "path": pointer(MARK_ANNOTATION)}));
        serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
    };
    let pp = PatchParams::default();
    // A failed `test` is 422 (k8s.io/apiserver v0.36 `pkg/endpoints/handlers/patch.go`).
    let test_failed = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 422);
    let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.is_not_found());
    let full = ops(true).map_err(kube::Error::SerdeError)?;
    match api.patch(name, &pp, &Patch::Json::<()>(full)).await {
        Ok(_) => return Ok(Unmarked::Removed),
        Err(e) if gone(&e) => return Ok(Unmarked::NotOurs),
        Err(e) if test_failed(&e) => {}
        Err(e) => return Err(e),
    }
    let companion = ops(false).map_err(kube::Error::SerdeError)?;
    match api.patch(name, &pp, &Patch::Json::<()>(companion)).await {
        Ok(_) => Ok(Unmarked::CompanionOnly),
        Err(e) if gone(&e) || test_failed(&e) => Ok(Unmarked::NotOurs),
        Err(e) => Err(e),
    }
}

/// A mark of capow's that should go ([`stray_marks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrayMark {
    /// Machine namespace.
    pub namespace: String,
    /// Machine name.
    pub machine: String,
    /// The mark's value (for [`unmark`]).
    pub value: String,
}

/// capow's marks in `snapshot` that no pending scale-down explains, as of `now` (module docs):
/// the Machine carries [`MARK_ANNOTATION`]; it is not being deleted; and either its
/// `delete-machine` no longer holds capow's value (the companion alone is left over), or the
/// mark is older than `grace` while neither its MachineSet nor its MachineDeployment has more
/// live (not deleting) Machines than `spec.replicas`. Machines whose owners are not in the
/// snapshot are left alone.
pub fn stray_marks(snapshot: &Snapshot, now: Timestamp, grace: Duration) -> Vec<StrayMark> {
    let mut live_by_set: HashMap<(String, String), i64> = HashMap::new();
    let mut live_by_deployment: HashMap<(String, String), i64> = HashMap::new();
    for m in &snapshot.machines {
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = m.namespace().unwrap_or_default();
        if let Some(s) = m.labels().get(capi::SET_NAME_LABEL) {
            *live_by_set.entry((ns.clone(), s.clone())).or_default() += 1;
        }
        if let Some(d) = m.labels().get(capi::DEPLOYMENT_NAME_LABEL) {
            *live_by_deployment.entry((ns, d.clone())).or_default() += 1;
        }
    }
    let set_replicas: HashMap<(String, String), i64> = snapshot
        .machine_sets
        .iter()
        .map(|s| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            (key, i64::from(s.spec.replicas.unwrap_or(0)))
        })
        .collect();
    let deployment_replicas: HashMap<(String, String), i64> = snapshot
        .machine_deployments
        .iter()
        .map(|d| {
            let key = (d.namespace().unwrap_or_default(), d.name_any());
            (key, i64::from(d.spec.replicas.unwrap_or(0)))
        })
        .collect();

    let mut out = Vec::new();
    for m in &snapshot.machines {
        let annotations = m.annotations();
        let Some(value) = annotations.get(MARK_ANNOTATION) else {
            continue;
        };
        if m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = m.namespace().unwrap_or_default();
        let stray = StrayMark {
            namespace: ns.clone(),
            machine: m.name_any(),
            value: value.clone(),
        };
        if own_mark(annotations).is_none() {
            out.push(stray);
            continue;
        }
        // A value that is no time, or a time `grace` or more ago (not one in the future).
        let old = value.parse::<Timestamp>().map_or(true, |at| {
            let age = now.duration_since(at);
            age.is_positive() && age.unsigned_abs() >= grace
        });
        if !old {
            continue;
        }
        // (live machines, replicas) of an owner, if the owner is known.
        let owner = |label: &str,
                     live: &HashMap<(String, String), i64>,
                     replicas: &HashMap<(String, String), i64>| {
            let key = (ns.clone(), m.labels().get(label)?.clone());
            Some((live.get(&key).copied().unwrap_or(0), *replicas.get(&key)?))
        };
        let owners = [
            owner(capi::SET_NAME_LABEL, &live_by_set, &set_replicas),
            owner(
                capi::DEPLOYMENT_NAME_LABEL,
                &live_by_deployment,
                &deployment_replicas,
            ),
        ];
        if owners.iter().all(Option::is_none) {
            continue;
        }
        let pending = owners
            .iter()
            .flatten()
            .any(|(live, replicas)| live > replicas);
        if !pending {
            out.push(stray);
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.machine).cmp(&(&b.namespace, &b.machine)));
    out
}

/// Removes stray marks every `interval` until `shutdown`; failures are logged and retried on
/// the next round.
pub async fn run_sweeper(
    client: kube::Client,
    sources: Arc<dyn Snapshots>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        for s in stray_marks(&sources.snapshot(), Timestamp::now(), MARK_GRACE) {
            match unmark(&client, &s.namespace, &s.machine, &s.value).await {
                Ok(Unmarked::NotOurs) => {}
                Ok(done) => tracing::info!(
                    machine = %format!("{}/{}", s.namespace, s.machine),
                    mark = %s.value,
                    ?done,
                    "Removed a stray delete-machine mark no scale-down followed"
                ),
                Err(e) => tracing::warn!(
                    machine = %format!("{}/{}", s.namespace, s.machine),
                    error = %e,
                    "Failed to remove a stray delete-machine mark"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::index::tests::md;
    use crate::capi::MachineSet;
    use serde_json::json;

    const T0: &str = "2026-11-30T12:00:00Z";

    fn machine(name: &str, annotations: serde_json::Value, deleting: bool) -> Arc<Machine> {
        let mut v = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": name, "namespace": "ns", "annotations": annotations,
                         "labels": {"cluster.x-k8s.io/deployment-name": "md-0", "cluster.x-k8s.io/set-name": "ms-0"}},
            "spec": {"clusterName": "c1", "bootstrap": {}, "infrastructureRef": {"kind": "OpenStackWorkerMachine", "name": name}}
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!(T0);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn ours(at: &str) -> serde_json::Value {
        json!({capi::DELETE_MACHINE_ANNOTATION: at, MARK_ANNOTATION: at})
    }

    fn machine_set(replicas: i32) -> Arc<MachineSet> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineSet",
                "metadata": {"name": "ms-0", "namespace": "ns"},
                "spec": {"clusterName": "c1", "replicas": replicas, "template": {"spec": {"clusterName": "c1", "bootstrap": {}, "infrastructureRef": {}}}}
            }))
            .unwrap(),
        )
    }

    fn snapshot(md_replicas: i32, ms_replicas: i32, machines: Vec<Arc<Machine>>) -> Snapshot {
        Snapshot {
            machine_deployments: vec![md("ns", "md-0", md_replicas, json!({}))],
            machine_sets: vec![machine_set(ms_replicas)],
            machines,
            ..Snapshot::default()
        }
    }

    fn names(v: Vec<StrayMark>) -> Vec<String> {
        v.into_iter().map(|s| s.machine).collect()
    }

    fn at(offset_secs: i64) -> Timestamp {
        T0.parse::<Timestamp>().unwrap() + k8s_openapi::jiff::SignedDuration::from_secs(offset_secs)
    }

    #[test]
    fn a_mark_no_scale_down_followed_is_stray_after_the_grace() {
        // DeleteNodes marked m-1, then lost its replicas write: 3 live Machines, 3 replicas.
        let s = snapshot(
            3,
            3,
            vec![
                machine("m-1", ours(T0), false),
                machine("m-2", json!({}), false),
                machine("m-3", json!({}), false),
            ],
        );
        assert!(
            stray_marks(&s, at(60), MARK_GRACE).is_empty(),
            "within the grace"
        );
        assert!(
            stray_marks(&s, at(-3600), MARK_GRACE).is_empty(),
            "a mark from the future (clock skew) is not old"
        );
        assert_eq!(names(stray_marks(&s, at(180), MARK_GRACE)), ["m-1"]);
    }

    #[test]
    fn marks_of_pending_or_running_deletions_stay() {
        let t = at(3600);
        // Replicas lowered on the MachineDeployment, not yet on the MachineSet.
        let s = snapshot(
            2,
            3,
            vec![
                machine("m-1", ours(T0), false),
                machine("m-2", json!({}), false),
                machine("m-3", json!({}), false),
            ],
        );
        assert!(stray_marks(&s, t, MARK_GRACE).is_empty());
        // Lowered on the MachineSet too.
        let s = snapshot(2, 2, s.machines.clone());
        assert!(stray_marks(&s, t, MARK_GRACE).is_empty());
        // CAPI is deleting the Machine.
        let s = snapshot(
            2,
            2,
            vec![
                machine("m-1", ours(T0), true),
                machine("m-2", json!({}), false),
                machine("m-3", json!({}), false),
            ],
        );
        assert!(stray_marks(&s, t, MARK_GRACE).is_empty());
    }

    #[test]
    fn marks_capow_did_not_set_are_never_stray() {
        let t = at(3600);
        let s = snapshot(
            2,
            2,
            vec![
                // A user's mark.
                machine(
                    "m-user",
                    json!({capi::DELETE_MACHINE_ANNOTATION: "yes"}),
                    false,
                ),
                // A user re-set delete-machine over capow's mark: only the companion goes.
                machine(
                    "m-reset",
                    json!({capi::DELETE_MACHINE_ANNOTATION: "yes", MARK_ANNOTATION: T0}),
                    false,
                ),
            ],
        );
        let stray = stray_marks(&s, t, MARK_GRACE);
        assert_eq!(names(stray.clone()), ["m-reset"]);
        assert_eq!(stray[0].value, T0);
        assert_eq!(
            own_mark(s.machines[1].annotations()),
            None,
            "the delete-machine there is not capow's"
        );
    }

    #[test]
    fn machines_without_known_owners_are_left_alone() {
        let s = Snapshot {
            machines: vec![machine("m-1", ours(T0), false)],
            ..Snapshot::default()
        };
        assert!(stray_marks(&s, at(3600), MARK_GRACE).is_empty());
    }

    #[test]
    fn json_pointers_escape_the_annotation_keys() {
        assert_eq!(
            pointer(capi::DELETE_MACHINE_ANNOTATION),
            "/metadata/annotations/cluster.x-k8s.io~1delete-machine"
        );
    }
}
