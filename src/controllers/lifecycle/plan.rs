//! Pure decisions of the lifecycle controller, from views of what observe read:
//!
//! - [`max_age`]: which Machines of a MachineDeployment to replace now, or why none;
//! - [`startup_taints`]: which Nodes lose their startup taint now;
//! - [`headroom`]: how many placeholder pods of which size hold the headroom;
//! - [`warmup_images`]: the images the warm-up DaemonSet pulls;
//! - the workload objects capow applies ([`placeholder_deployment`], [`warmup_daemonset`],
//!   [`priority_class`]).
//!
//! Nothing here does I/O; every function is table-tested below.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::settings::{MaxAge, Taint, format_duration};
use crate::api::lifecycle::WarmupMethod;
use crate::autoscaler::quantity::{self, Milli};
use crate::capi::MachineDeploymentStatus;

/// Annotation capow puts on a Machine it replaces for age, right before deleting it: the time
/// of the decision (RFC 3339). A Machine that carries it but is not being deleted (the delete
/// was lost to a crash) is deleted on the next reconcile, whatever else holds replacements
/// back.
pub const REPLACE_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/replaced-for-age";
/// Namespace of capow's objects in the workload cluster.
pub const WORKLOAD_NAMESPACE: &str = "capow-system";
/// Name of the placeholder Deployment and of its PriorityClass.
pub const HEADROOM_NAME: &str = "capow-headroom";
/// Name of the warm-up DaemonSet.
pub const WARMUP_NAME: &str = "capow-image-warmup";
/// Pod template annotation of the warm-up DaemonSet: a hash of its image list, so that only
/// pods with the current list count as warmed up.
pub const WARMUP_HASH_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/warmup-images";
/// Label on every object capow makes in a workload cluster; capow deletes only objects that
/// carry it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "capow");
/// A placeholder pod requests at most this share of the largest node of the cluster's node
/// groups (1/2), so it fits next to the node's DaemonSets and reservations.
pub const PLACEHOLDER_SHARE_OF_NODE: i128 = 2;

// ---------------------------------------------------------------------------------------------
// Max age

/// A Machine of a MachineDeployment, as far as [`max_age`] needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineView {
    /// Name.
    pub name: String,
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `cluster.x-k8s.io/delete-machine` is set (by capow's autoscaler, CA, a user).
    pub delete_marked: bool,
    /// [`REPLACE_ANNOTATION`] is set.
    pub replacing: bool,
}

/// A MachineDeployment with its MachineSets and Machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentView {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.replicas` (0 when unset).
    pub replicas: i32,
    /// `spec.paused` or the `cluster.x-k8s.io/paused` annotation.
    pub paused: bool,
    /// `status`.
    pub status: MachineDeploymentStatus,
    /// The node-group min size (`cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size`,
    /// 0 when not autoscaled); `None` when the annotation is invalid.
    pub min_size: Option<i32>,
    /// `(name, spec.replicas, Machines)` of each MachineSet of the MachineDeployment.
    pub machine_sets: Vec<(String, i32, usize)>,
    /// Its Machines.
    pub machines: Vec<MachineView>,
}

/// Why no Machine is replaced although some are over age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The MachineDeployment is paused.
    Paused,
    /// Its spec changed and the MachineDeployment controller has not caught up.
    SpecNotObserved,
    /// A Machine is being deleted (a replacement or a scale-down in flight).
    Deleting(String),
    /// A Machine is marked `delete-machine`: a scale-down is pending.
    ScaleDownPending(String),
    /// More than one MachineSet has Machines, or not all are up to date.
    RollingOut,
    /// Not every Machine is available.
    NotFullyAvailable {
        /// `status.availableReplicas`.
        available: i32,
        /// `spec.replicas`.
        replicas: i32,
    },
    /// Replacing one more would drop below the min size.
    AtMinSize {
        /// Min size.
        min: i32,
        /// `spec.replicas`.
        replicas: i32,
    },
    /// The min-size annotation is invalid (the autoscaler freezes the group).
    InvalidMinSize,
}

impl Wait {
    /// The reason as a sentence part (`waiting: ...`).
    pub fn describe(&self) -> String {
        match self {
            Wait::Paused => "the MachineDeployment is paused".into(),
            Wait::SpecNotObserved => {
                "its spec changed (status.observedGeneration < metadata.generation)".into()
            }
            Wait::Deleting(m) => format!("Machine {m} is being deleted"),
            Wait::ScaleDownPending(m) => {
                format!(
                    "Machine {m} is marked cluster.x-k8s.io/delete-machine (a scale-down is pending)"
                )
            }
            Wait::RollingOut => "a rollout is in progress".into(),
            Wait::NotFullyAvailable {
                available,
                replicas,
            } => format!("{available} of {replicas} Machines are available"),
            Wait::AtMinSize { min, replicas } => format!(
                "replicas ({replicas}) minus one replacement would be below the min size ({min})"
            ),
            Wait::InvalidMinSize => {
                "its min-size annotation is invalid (the node group is frozen)".into()
            }
        }
    }
}

/// What [`max_age`] decided for one MachineDeployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgeDecision {
    /// No Machine is over age; the next one will be at `next_due` (if any Machine exists).
    Young {
        /// When the oldest live Machine turns over age.
        next_due: Option<Timestamp>,
    },
    /// Mark and delete these Machines (oldest first). `resume` entries were marked before but
    /// their deletion was lost.
    Replace(Vec<Replacement>),
    /// Machines are over age but none may go now.
    Wait {
        /// Over-age Machines.
        over_age: usize,
        /// Why.
        why: Wait,
    },
}

/// One Machine to replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// Machine name.
    pub machine: String,
    /// Its age.
    pub age: Duration,
    /// It already carries [`REPLACE_ANNOTATION`] (a lost delete is repeated).
    pub resume: bool,
}

fn age(now: Timestamp, created: Timestamp) -> Duration {
    now.duration_since(created)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Decides the max-age replacements of one MachineDeployment at `now`.
///
/// Order of the checks (ADR 0007): a lost delete of a capow replacement is resumed first; then
/// nothing happens while the MachineDeployment is paused, its spec is not observed, a Machine
/// is being deleted or marked for deletion (a replacement or a scale-down in flight), a
/// rollout runs, or not every Machine is available; then at most `budget` of the oldest
/// over-age Machines go, and never so many that `replicas - replaced < min size`.
pub fn max_age(d: &DeploymentView, settings: &MaxAge, now: Timestamp) -> AgeDecision {
    let live: Vec<&MachineView> = d.machines.iter().filter(|m| !m.deleting).collect();
    let resume: Vec<Replacement> = live
        .iter()
        .filter(|m| m.replacing)
        .map(|m| Replacement {
            machine: m.name.clone(),
            age: age(now, m.created),
            resume: true,
        })
        .collect();
    if !resume.is_empty() {
        return AgeDecision::Replace(resume);
    }
    let mut over: Vec<&MachineView> = live
        .iter()
        .copied()
        .filter(|m| age(now, m.created) >= settings.limit)
        .collect();
    if over.is_empty() {
        let limit = SignedDuration::try_from(settings.limit).unwrap_or(SignedDuration::MAX);
        let next_due = live
            .iter()
            .map(|m| m.created)
            .min()
            .and_then(|c| c.checked_add(limit).ok());
        return AgeDecision::Young { next_due };
    }
    over.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let wait = |why| AgeDecision::Wait {
        over_age: over.len(),
        why,
    };
    if d.paused {
        return wait(Wait::Paused);
    }
    if d.generation.is_some() && d.status.observed_generation != d.generation {
        return wait(Wait::SpecNotObserved);
    }
    if let Some(m) = d.machines.iter().find(|m| m.deleting) {
        return wait(Wait::Deleting(m.name.clone()));
    }
    if let Some(m) = live.iter().find(|m| m.delete_marked) {
        return wait(Wait::ScaleDownPending(m.name.clone()));
    }
    let active_sets = d
        .machine_sets
        .iter()
        .filter(|(_, replicas, machines)| *replicas > 0 || *machines > 0)
        .count();
    let up_to_date = d.status.up_to_date_replicas.unwrap_or(0);
    if active_sets > 1 || up_to_date < d.replicas {
        return wait(Wait::RollingOut);
    }
    let available = d.status.available_replicas.unwrap_or(0);
    let fully = d.status.replicas == Some(d.replicas)
        && d.status.ready_replicas == Some(d.replicas)
        && available == d.replicas
        && i32::try_from(live.len()).ok() == Some(d.replicas);
    if !fully {
        return wait(Wait::NotFullyAvailable {
            available,
            replicas: d.replicas,
        });
    }
    let Some(min) = d.min_size else {
        return wait(Wait::InvalidMinSize);
    };
    let room = usize::try_from(d.replicas.saturating_sub(min)).unwrap_or(0);
    let n = over
        .len()
        .min(room)
        .min(usize::try_from(settings.budget).unwrap_or(1));
    if n == 0 {
        return wait(Wait::AtMinSize {
            min,
            replicas: d.replicas,
        });
    }
    AgeDecision::Replace(
        over.into_iter()
            .take(n)
            .map(|m| Replacement {
                machine: m.name.clone(),
                age: age(now, m.created),
                resume: false,
            })
            .collect(),
    )
}

/// The note of the event capow records for a replacement.
pub fn replacement_note(r: &Replacement, limit: Duration) -> String {
    format!(
        "Replacing Machine {} (age {}, over maxNodeAge {}): marked cluster.x-k8s.io/delete-machine and deleted; CAPI drains its Node and the MachineSet creates its successor",
        r.machine,
        format_duration(Duration::from_secs(r.age.as_secs())),
        format_duration(limit)
    )
}

// ---------------------------------------------------------------------------------------------
// Startup taint

/// A Node of the workload cluster, as far as [`startup_taints`] needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// `metadata.creationTimestamp` (when it registered).
    pub created: Timestamp,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.taints` as `(key, value, effect)`.
    pub taints: Vec<Taint>,
    /// The startup taint of the Node's group (its MachineDeployment's, else the cluster's).
    pub startup_taint: Option<Taint>,
    /// The warm-up pod on the Node is ready and has the current image list.
    pub warmed_up: bool,
}

/// Why a taint goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// The Node is Ready (no warm-up configured).
    Ready,
    /// The Node is Ready and its images are pulled.
    WarmedUp,
    /// The Node is Ready and the warm-up did not finish within the timeout.
    WarmupTimedOut,
}

/// Why a taint stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The Node is not Ready.
    NotReady,
    /// The images are being pulled (until at most `deadline`).
    WarmingUp {
        /// When the taint goes anyway.
        deadline: Timestamp,
    },
}

/// The startup-taint decision of one Node that carries its startup taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintDecision {
    /// Node name.
    pub node: String,
    /// The taint (exactly as on the Node).
    pub taint: Taint,
    /// Remove it (why), or keep it (why).
    pub outcome: Result<Release, Hold>,
}

/// Decides, for every Node that carries its startup taint, whether the taint goes now:
/// once the Node is Ready; with a warm-up (`warmup_timeout` set), only once its warm-up pod is
/// ready, or once `warmup_timeout` passed since the Node registered.
pub fn startup_taints(
    nodes: &[NodeView],
    warmup_timeout: Option<Duration>,
    now: Timestamp,
) -> Vec<TaintDecision> {
    let mut out = Vec::new();
    for n in nodes {
        let Some(want) = &n.startup_taint else {
            continue;
        };
        let Some(taint) = n
            .taints
            .iter()
            .find(|t| t.key == want.key && t.effect == want.effect)
        else {
            continue;
        };
        let outcome = if !n.ready {
            Err(Hold::NotReady)
        } else if let Some(timeout) = warmup_timeout {
            let deadline = n
                .created
                .checked_add(SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX);
            if n.warmed_up {
                Ok(Release::WarmedUp)
            } else if now >= deadline {
                Ok(Release::WarmupTimedOut)
            } else {
                Err(Hold::WarmingUp { deadline })
            }
        } else {
            Ok(Release::Ready)
        };
        out.push(TaintDecision {
            node: n.name.clone(),
            taint: taint.clone(),
            outcome,
        });
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

// ---------------------------------------------------------------------------------------------
// Headroom

/// What one node of an autoscaled group offers, and how many there may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCapacity {
    /// MachineDeployment `<namespace>/<name>`.
    pub group: String,
    /// CPU of one node.
    pub cpu: Milli,
    /// Memory of one node.
    pub memory: Milli,
    /// Max size.
    pub max_size: i32,
}

/// The placeholder pods that hold the headroom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadroomPlan {
    /// Pods.
    pub replicas: i32,
    /// CPU each requests (`None`: none).
    pub cpu_per_pod: Option<Milli>,
    /// Memory each requests (`None`: none).
    pub memory_per_pod: Option<Milli>,
}

/// Why no headroom can be held.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadroomError {
    /// No MachineDeployment of the cluster is autoscaled with a known node capacity.
    #[error(
        "no MachineDeployment of the cluster is an autoscaled node group with a known capacity (max-size annotation and an OpenStackWorkerMachineTemplate with status.capacity), so no node could hold spec.nodeLifecycle.headroom"
    )]
    NoNodeGroup,
    /// The headroom exceeds what the groups hold at their max sizes.
    #[error(
        "spec.nodeLifecycle.headroom.{resource} ({wanted}) is more than all node groups hold at their max size ({most}); lower it or raise a max-size annotation"
    )]
    ExceedsMaximum {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// The headroom.
        wanted: String,
        /// Σ max size × node capacity.
        most: String,
    },
}

fn div_ceil(a: i128, b: i128) -> i128 {
    if b <= 0 { a } else { (a + b - 1) / b }
}

/// Sizes the placeholders for a headroom of `cpu` and `memory` in a cluster with `groups`:
/// each pod requests at most 1/[`PLACEHOLDER_SHARE_OF_NODE`] of the largest group's node in
/// each resource, and together they request the headroom (rounded up).
///
/// # Errors
/// [`HeadroomError`] when no group can hold placeholders or the headroom exceeds all groups at
/// their max size.
pub fn headroom(
    cpu: Option<Milli>,
    memory: Option<Milli>,
    groups: &[GroupCapacity],
) -> Result<HeadroomPlan, HeadroomError> {
    let usable: Vec<&GroupCapacity> = groups
        .iter()
        .filter(|g| g.max_size > 0 && g.cpu.0 > 0 && g.memory.0 > 0)
        .collect();
    if usable.is_empty() {
        return Err(HeadroomError::NoNodeGroup);
    }
    let total = |f: fn(&GroupCapacity) -> Milli| -> i128 {
        usable
            .iter()
            .map(|g| f(g).0.saturating_mul(i128::from(g.max_size)))
            .sum()
    };
    for (resource, wanted, most, format) in [
        (
            "cpu",
            cpu,
            total(|g| g.cpu),
            quantity::format_cpu as fn(Milli) -> String,
        ),
        (
            "memory",
            memory,
            total(|g| g.memory),
            quantity::format_bytes as fn(Milli) -> String,
        ),
    ] {
        if let Some(w) = wanted
            && w.0 > most
        {
            return Err(HeadroomError::ExceedsMaximum {
                resource,
                wanted: format(w),
                most: format(Milli(most)),
            });
        }
    }
    let largest = usable
        .iter()
        .max_by_key(|g| (g.cpu, g.memory))
        .map(|g| (g.cpu.0, g.memory.0))
        .unwrap_or((1, 1));
    let chunk_cpu = (largest.0 / PLACEHOLDER_SHARE_OF_NODE).max(1);
    let chunk_mem = (largest.1 / PLACEHOLDER_SHARE_OF_NODE).max(1);
    let pods = [
        cpu.map_or(0, |c| div_ceil(c.0, chunk_cpu)),
        memory.map_or(0, |m| div_ceil(m.0, chunk_mem)),
        1,
    ]
    .into_iter()
    .max()
    .unwrap_or(1);
    // CPU per pod in whole millicores, memory in whole bytes (rounded up).
    let per = |v: i128, unit: i128| div_ceil(div_ceil(v, pods), unit) * unit;
    Ok(HeadroomPlan {
        replicas: i32::try_from(pods).unwrap_or(i32::MAX),
        cpu_per_pod: cpu.map(|c| Milli(per(c.0, 1))),
        memory_per_pod: memory.map(|m| Milli(per(m.0, 1000))),
    })
}

// ---------------------------------------------------------------------------------------------
// Image warm-up

/// The images to pull: `images` in order, without duplicates and without those starting with
/// an `ignore` prefix.
pub fn warmup_images(images: &[String], ignore: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in images {
        let i = i.trim();
        if i.is_empty() || ignore.iter().any(|p| i.starts_with(p.trim())) {
            continue;
        }
        if !out.iter().any(|o| o == i) {
            out.push(i.to_owned());
        }
    }
    out
}

/// A stable hash of an image list (FNV-1a, 64 bit, hex), for [`WARMUP_HASH_ANNOTATION`].
pub fn images_hash(images: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in images {
        for b in i.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

// ---------------------------------------------------------------------------------------------
// Workload objects

fn labels(name: &str) -> Value {
    json!({ MANAGED_BY.0: MANAGED_BY.1, "app.kubernetes.io/name": name })
}

/// The namespace of capow's workload objects.
pub fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": WORKLOAD_NAMESPACE, "labels": labels(WORKLOAD_NAMESPACE)}})
}

/// The PriorityClass of the placeholders. `preemptionPolicy: Never`: a placeholder never
/// evicts another pod to make room for itself (not even a lower-priority one); whether real
/// pods evict placeholders depends on the real pods' own policy (default
/// `PreemptLowerPriority`) and the placeholders' lower priority only ("Non-preempting pods may
/// still be preempted by other, high-priority pods",
/// <https://kubernetes.io/docs/concepts/scheduling-eviction/pod-priority-preemption/#non-preempting-priority-class>).
pub fn priority_class(value: i32) -> Value {
    json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
           "metadata": {"name": HEADROOM_NAME, "labels": labels(HEADROOM_NAME)},
           "value": value,
           "preemptionPolicy": "Never",
           "globalDefault": false,
           "description": "capow headroom placeholders: keep spare capacity; every real pod preempts them"})
}

fn requests(cpu: Option<Milli>, memory: Option<Milli>) -> Value {
    let mut r = serde_json::Map::new();
    if let Some(c) = cpu {
        r.insert("cpu".into(), json!(quantity::format_cpu(c)));
    }
    if let Some(m) = memory {
        r.insert("memory".into(), json!(quantity::format_bytes(m)));
    }
    Value::Object(r)
}

fn restricted_security_context() -> Value {
    json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
           "runAsNonRoot": true, "runAsUser": 65535, "capabilities": {"drop": ["ALL"]}})
}

/// The Deployment of placeholder pods (`image` runs and does nothing, e.g. a pause image):
/// no grace period, so a preempted placeholder frees its node at once.
pub fn placeholder_deployment(plan: &HeadroomPlan, image: &str) -> Value {
    let r = requests(plan.cpu_per_pod, plan.memory_per_pod);
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": HEADROOM_NAME, "namespace": WORKLOAD_NAMESPACE, "labels": labels(HEADROOM_NAME)},
    "spec": {
        "replicas": plan.replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": HEADROOM_NAME}},
        "template": {
            "metadata": {"labels": labels(HEADROOM_NAME)},
            "spec": {
                "priorityClassName": HEADROOM_NAME,
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "containers": [{"name": "placeholder", "image": image,
                                "resources": {"requests": r, "limits": r},
                                "securityContext": restricted_security_context()}],
            },
        },
    }})
}

/// The warm-up DaemonSet: on every Linux node, tolerating `startup` (the cluster's startup
/// taint), a pod that pulls `images` with `method` (module docs of `crate::api::lifecycle`)
/// and then runs `image` (the placeholder image) doing nothing.
pub fn warmup_daemonset(
    images: &[String],
    method: WarmupMethod,
    command: &[String],
    image: &str,
    startup: &[Taint],
) -> Value {
    let small = json!({"cpu": "1m", "memory": "8Mi"});
    let mut tolerations: Vec<Value> = startup
        .iter()
        .map(|t| json!({"key": t.key, "operator": "Exists", "effect": t.effect}))
        .collect();
    tolerations.dedup();
    let mut spec = json!({
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 0,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": tolerations,
        "containers": [{"name": "warm", "image": image,
                        "resources": {"requests": small, "limits": small},
                        "securityContext": restricted_security_context()}],
    });
    match method {
        WarmupMethod::ImageVolume => {
            spec["volumes"] = images
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"name": format!("image-{i}"), "image": {"reference": r, "pullPolicy": "IfNotPresent"}}))
                .collect();
            spec["containers"][0]["volumeMounts"] = images
                .iter()
                .enumerate()
                .map(|(i, _)| json!({"name": format!("image-{i}"), "mountPath": format!("/warmup/{i}"), "readOnly": true}))
                .collect();
        }
        WarmupMethod::InitContainers => {
            spec["initContainers"] = images
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"name": format!("pull-{i}"), "image": r, "imagePullPolicy": "IfNotPresent",
                                     "command": command, "resources": {"requests": small, "limits": small}}))
                .collect();
        }
    }
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
    "metadata": {"name": WARMUP_NAME, "namespace": WORKLOAD_NAMESPACE, "labels": labels(WARMUP_NAME)},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": WARMUP_NAME}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
        "template": {
            "metadata": {"labels": labels(WARMUP_NAME),
                         "annotations": {WARMUP_HASH_ANNOTATION: images_hash(images)}},
            "spec": spec,
        },
    }})
}

/// The Nodes whose warm-up pod is ready with the image list of `hash`; `pods` are
/// `(node name, ready, template hash)`.
pub fn warmed_nodes(pods: &[(String, bool, Option<String>)], hash: &str) -> BTreeSet<String> {
    pods.iter()
        .filter(|(_, ready, h)| *ready && h.as_deref() == Some(hash))
        .map(|(n, _, _)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-12-01T00:00:00Z";
    const H: Duration = Duration::from_secs(3600);

    fn t(hours_after_t0: i64) -> Timestamp {
        T0.parse::<Timestamp>().unwrap() + SignedDuration::from_hours(hours_after_t0)
    }

    fn m(name: &str, created_h: i64) -> MachineView {
        MachineView {
            name: name.into(),
            created: t(created_h),
            deleting: false,
            delete_marked: false,
            replacing: false,
        }
    }

    fn status(replicas: i32) -> MachineDeploymentStatus {
        MachineDeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(replicas),
            ready_replicas: Some(replicas),
            available_replicas: Some(replicas),
            up_to_date_replicas: Some(replicas),
        }
    }

    /// A steady MachineDeployment of 3 Machines aged 200h, 100h and 10h at t(200).
    fn steady() -> DeploymentView {
        DeploymentView {
            generation: Some(3),
            replicas: 3,
            paused: false,
            status: status(3),
            min_size: Some(0),
            machine_sets: vec![("ms-1".into(), 3, 3)],
            machines: vec![m("m-new", 190), m("m-old", 0), m("m-mid", 100)],
        }
    }

    const WEEK: MaxAge = MaxAge {
        limit: Duration::from_secs(168 * 3600),
        budget: 1,
    };

    fn replaced(d: &AgeDecision) -> Vec<String> {
        match d {
            AgeDecision::Replace(r) => r.iter().map(|r| r.machine.clone()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn the_oldest_over_age_machine_goes_when_all_is_steady() {
        let d = max_age(&steady(), &WEEK, t(200));
        assert_eq!(replaced(&d), ["m-old"]);
        let AgeDecision::Replace(r) = d else {
            unreachable!()
        };
        assert_eq!(r[0].age, 200 * H);
        assert!(!r[0].resume);
        let note = replacement_note(&r[0], WEEK.limit);
        assert!(note.contains("age 200h, over maxNodeAge 168h"), "{note}");
    }

    #[test]
    fn young_machines_say_when_the_next_is_due() {
        let d = max_age(&steady(), &WEEK, t(100));
        assert_eq!(
            d,
            AgeDecision::Young {
                next_due: Some(t(168))
            }
        );
    }

    #[test]
    fn the_budget_and_the_min_size_bound_each_round() {
        let budget3 = MaxAge {
            limit: 50 * H,
            budget: 3,
        };
        // Over 50h at t(200): m-old (200h) and m-mid (100h); m-new (10h) is young.
        let d = max_age(&steady(), &budget3, t(200));
        assert_eq!(replaced(&d), ["m-old", "m-mid"]);
        let mut at_two = steady();
        at_two.min_size = Some(2);
        assert_eq!(replaced(&max_age(&at_two, &budget3, t(200))), ["m-old"]);
        let mut at_min = steady();
        at_min.min_size = Some(3);
        assert_eq!(
            max_age(&at_min, &budget3, t(200)),
            AgeDecision::Wait {
                over_age: 2,
                why: Wait::AtMinSize {
                    min: 3,
                    replicas: 3
                }
            }
        );
    }

    #[test]
    fn nothing_goes_while_the_group_moves() {
        type Edit = fn(&mut DeploymentView);
        let cases: &[(&str, Edit, Wait)] = &[
            ("paused", |d| d.paused = true, Wait::Paused),
            (
                "replicas changed, not yet observed",
                |d| d.generation = Some(4),
                Wait::SpecNotObserved,
            ),
            (
                "a Machine is being deleted",
                |d| d.machines[0].deleting = true,
                Wait::Deleting("m-new".into()),
            ),
            (
                "a scale-down marked a Machine",
                |d| d.machines[2].delete_marked = true,
                Wait::ScaleDownPending("m-mid".into()),
            ),
            (
                "two MachineSets (rollout)",
                |d| d.machine_sets.push(("ms-2".into(), 1, 0)),
                Wait::RollingOut,
            ),
            (
                "not all up to date",
                |d| d.status.up_to_date_replicas = Some(2),
                Wait::RollingOut,
            ),
            (
                "a scale-up in flight",
                |d| {
                    d.replicas = 4;
                    d.status.up_to_date_replicas = Some(4);
                },
                Wait::NotFullyAvailable {
                    available: 3,
                    replicas: 4,
                },
            ),
            (
                "a Machine not available",
                |d| d.status.available_replicas = Some(2),
                Wait::NotFullyAvailable {
                    available: 2,
                    replicas: 3,
                },
            ),
            (
                "not ready",
                |d| d.status.ready_replicas = Some(2),
                Wait::NotFullyAvailable {
                    available: 3,
                    replicas: 3,
                },
            ),
            (
                "invalid min size",
                |d| d.min_size = None,
                Wait::InvalidMinSize,
            ),
        ];
        for (what, edit, why) in cases {
            let mut d = steady();
            edit(&mut d);
            assert_eq!(
                max_age(&d, &WEEK, t(200)),
                AgeDecision::Wait {
                    over_age: 1,
                    why: why.clone()
                },
                "{what}"
            );
            assert!(!why.describe().is_empty());
        }
    }

    #[test]
    fn a_lost_delete_is_resumed_first() {
        let mut d = steady();
        d.machines[2].replacing = true;
        d.status.available_replicas = Some(2);
        d.paused = false;
        let r = max_age(&d, &WEEK, t(200));
        assert_eq!(replaced(&r), ["m-mid"]);
        let AgeDecision::Replace(r) = r else {
            unreachable!()
        };
        assert!(r[0].resume);
    }

    #[test]
    fn an_empty_group_has_nothing_due() {
        let mut d = steady();
        d.machines.clear();
        assert_eq!(
            max_age(&d, &WEEK, t(200)),
            AgeDecision::Young { next_due: None }
        );
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        }
    }

    fn node(name: &str, ready: bool, warmed_up: bool, keys: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            created: t(0),
            ready,
            taints: keys.iter().map(|k| taint(k)).collect(),
            startup_taint: Some(taint("s/t")),
            warmed_up,
        }
    }

    #[test]
    fn the_startup_taint_stays_until_ready_and_warmed_up() {
        let nodes = [
            node(
                "a-not-ready",
                false,
                false,
                &["s/t", "node.kubernetes.io/not-ready"],
            ),
            node("b-ready", true, false, &["s/t"]),
            node("c-untainted", true, false, &[]),
            node("d-other-taint", true, false, &["dedicated"]),
        ];
        let d = startup_taints(&nodes, None, t(0));
        assert_eq!(
            d.iter()
                .map(|d| (d.node.as_str(), d.outcome.clone()))
                .collect::<Vec<_>>(),
            [
                ("a-not-ready", Err(Hold::NotReady)),
                ("b-ready", Ok(Release::Ready))
            ]
        );
        assert_eq!(d[1].taint, taint("s/t"));
        // With a warm-up of 10 minutes.
        let ten = Some(Duration::from_secs(600));
        let warm = [
            node("a", true, true, &["s/t"]),
            node("b", true, false, &["s/t"]),
            node("c", false, true, &["s/t"]),
        ];
        let deadline = t(0) + SignedDuration::from_mins(10);
        let d = startup_taints(&warm, ten, t(0));
        assert_eq!(
            d.iter().map(|d| d.outcome.clone()).collect::<Vec<_>>(),
            [
                Ok(Release::WarmedUp),
                Err(Hold::WarmingUp { deadline }),
                Err(Hold::NotReady)
            ]
        );
        let d = startup_taints(&warm, ten, deadline);
        assert_eq!(d[1].outcome, Ok(Release::WarmupTimedOut));
        // A node of a group without a startup taint is left alone.
        let mut off = node("x", true, false, &["s/t"]);
        off.startup_taint = None;
        assert!(startup_taints(&[off], None, t(0)).is_empty());
    }

    fn gib(n: i128) -> Milli {
        Milli((n << 30) * 1000)
    }

    fn cores(n: i128) -> Milli {
        Milli(n * 1000)
    }

    fn group(cpu: i128, mem_gib: i128, max: i32) -> GroupCapacity {
        GroupCapacity {
            group: "ns/md".into(),
            cpu: cores(cpu),
            memory: gib(mem_gib),
            max_size: max,
        }
    }

    #[test]
    fn headroom_is_split_into_pods_of_at_most_half_a_node() {
        let groups = [group(4, 8, 3), group(2, 4, 5)];
        // 1 CPU / 1Gi: one pod.
        assert_eq!(
            headroom(Some(cores(1)), Some(gib(1)), &groups),
            Ok(HeadroomPlan {
                replicas: 1,
                cpu_per_pod: Some(cores(1)),
                memory_per_pod: Some(gib(1))
            })
        );
        // 5 CPU on 4-CPU nodes: chunks of 2 CPU → 3 pods of 1667m.
        assert_eq!(
            headroom(Some(cores(5)), None, &groups),
            Ok(HeadroomPlan {
                replicas: 3,
                cpu_per_pod: Some(Milli(1667)),
                memory_per_pod: None
            })
        );
        // Memory decides: 10Gi in chunks of 4Gi → 3 pods.
        let p = headroom(Some(cores(1)), Some(gib(10)), &groups).unwrap();
        assert_eq!(p.replicas, 3);
        assert_eq!(p.cpu_per_pod, Some(Milli(334)));
        assert!(p.memory_per_pod.unwrap().0 * 3 >= gib(10).0);
    }

    #[test]
    fn headroom_beyond_every_group_at_max_is_refused() {
        let groups = [group(4, 8, 3), group(2, 4, 5)];
        // 3×4 + 5×2 = 22 CPU, 3×8 + 5×4 = 44Gi at most.
        assert!(headroom(Some(cores(22)), Some(gib(44)), &groups).is_ok());
        let e = headroom(Some(cores(23)), None, &groups).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.nodeLifecycle.headroom.cpu (23) is more than all node groups hold at their max size (22); lower it or raise a max-size annotation"
        );
        let e = headroom(None, Some(gib(45)), &groups).unwrap_err();
        assert!(e.to_string().contains("headroom.memory (45Gi)"), "{e}");
        assert_eq!(
            headroom(Some(cores(1)), None, &[group(4, 8, 0)]),
            Err(HeadroomError::NoNodeGroup)
        );
        assert_eq!(
            headroom(Some(cores(1)), None, &[]),
            Err(HeadroomError::NoNodeGroup)
        );
    }

    #[test]
    fn warmup_images_skip_ignored_and_duplicate_references() {
        let images: Vec<String> = [
            "registry.invalid/app:1",
            "registry.invalid/app:1",
            "mirror.invalid:5000/team/tool@sha256:0123456789abcdef0123456789abcdef",
            "private.invalid/secret:2",
        ]
        .map(str::to_owned)
        .to_vec();
        let out = warmup_images(&images, &["private.invalid/".to_owned()]);
        assert_eq!(out, images[..3].iter().skip(1).cloned().collect::<Vec<_>>());
        assert_eq!(images_hash(&out), images_hash(&out.clone()));
        assert_ne!(images_hash(&out), images_hash(&out[..1]));
    }

    #[test]
    fn workload_objects_have_the_documented_shape() {
        let pc = priority_class(-10);
        assert_eq!(pc["value"], -10);
        assert_eq!(pc["preemptionPolicy"], "Never");
        let d = placeholder_deployment(
            &HeadroomPlan {
                replicas: 2,
                cpu_per_pod: Some(Milli(500)),
                memory_per_pod: Some(gib(1)),
            },
            "pause-image",
        );
        assert_eq!(d["spec"]["replicas"], 2);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], HEADROOM_NAME);
        assert_eq!(pod["terminationGracePeriodSeconds"], 0);
        assert_eq!(
            pod["containers"][0]["resources"]["requests"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert!(
            pod.get("tolerations").is_none(),
            "placeholders wait for released nodes"
        );
        let images = vec!["a.invalid/x:1".to_owned(), "b.invalid/y:2".to_owned()];
        let startup = [taint("s/t")];
        let ds = warmup_daemonset(
            &images,
            WarmupMethod::ImageVolume,
            &[],
            "pause-image",
            &startup,
        );
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][1]["image"]["reference"], "b.invalid/y:2");
        assert_eq!(
            pod["containers"][0]["volumeMounts"][1]["mountPath"],
            "/warmup/1"
        );
        assert_eq!(
            pod["tolerations"],
            json!([{"key": "s/t", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert!(pod.get("initContainers").is_none());
        assert_eq!(
            ds["spec"]["template"]["metadata"]["annotations"][WARMUP_HASH_ANNOTATION],
            images_hash(&images)
        );
        let command: Vec<String> = ["sh", "-c", "exit 0"].map(str::to_owned).to_vec();
        let ds = warmup_daemonset(
            &images,
            WarmupMethod::InitContainers,
            &command,
            "pause-image",
            &startup,
        );
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["initContainers"][0]["image"], "a.invalid/x:1");
        assert_eq!(
            pod["initContainers"][0]["command"],
            json!(["sh", "-c", "exit 0"])
        );
        assert!(pod.get("volumes").is_none());
        let h = images_hash(&images);
        let warmed = warmed_nodes(
            &[
                ("n1".into(), true, Some(h.clone())),
                ("n2".into(), true, Some("old".into())),
                ("n3".into(), false, Some(h.clone())),
            ],
            &h,
        );
        assert_eq!(warmed.into_iter().collect::<Vec<_>>(), ["n1"]);
    }
}
