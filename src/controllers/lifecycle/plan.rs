//! Pure decisions of the lifecycle controller, from views of what observe read:
//!
//! - [`max_age`]: which Machines of a MachineDeployment to replace now, or why none;
//! - [`startup_taints`]: which Nodes lose their startup taint now (with image warm-up on, once
//!   their warm-up pod is Ready or the warm-up timed out);
//! - [`headroom`], [`headroom_fits`], [`headroom_objects`]: the placeholder pods of the
//!   headroom, whether the cluster's node groups can hold them, and the objects that run them;
//! - [`warmup`], [`warmup_objects`], [`warmup_pod`]: the images the warm-up DaemonSet pulls,
//!   the objects that run it, and what a Node's warm-up pod reports (which
//!   [`startup_taints`] waits for).
//!
//! Nothing here does I/O; every function is table-tested below.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use serde_json::json;

use k8s_openapi::api::core::v1::Pod;

use crate::api::lifecycle::settings::{MaxAge, Taint, format_duration, parse_duration};
use crate::api::lifecycle::{DEFAULT_WARMUP_TIMEOUT, HEADROOM_PRIORITY, Headroom, ImageWarmup};
use crate::api::quantity::{self, Milli};
use crate::capi::MachineDeploymentStatus;

/// Annotation capow puts on a Machine it replaces for age, right before deleting it: the time
/// of the decision (RFC 3339). A Machine that carries it but is not being deleted (the delete
/// was lost to a crash) is deleted on the next reconcile, whatever else holds replacements
/// back.
pub const REPLACE_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/replaced-for-age";

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
    /// More than one MachineSet has Machines (a rollout).
    RollingOut,
    /// Fewer Machines than `spec.replicas` are up to date (`status.upToDateReplicas`): CAPI
    /// counts a Machine up to date when its MachineSet matches the MachineDeployment's template
    /// and its Node's kubelet version equals the Machine's `spec.version`
    /// (`setUpToDateCondition`, cluster-api v1.14.2
    /// `core/reconcilers/machine/machine_controller_status.go`).
    NotUpToDate {
        /// `status.upToDateReplicas`.
        up_to_date: i32,
        /// `spec.replicas`.
        replicas: i32,
    },
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
            Wait::NotUpToDate {
                up_to_date,
                replicas,
            } => format!(
                "{up_to_date} of {replicas} Machines are up to date (see each Machine's UpToDate \
                 condition: a rollout, or a Node whose kubelet version differs from the \
                 Machine's spec.version)"
            ),
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
    if active_sets > 1 {
        return wait(Wait::RollingOut);
    }
    let up_to_date = d.status.up_to_date_replicas.unwrap_or(0);
    if up_to_date < d.replicas {
        return wait(Wait::NotUpToDate {
            up_to_date,
            replicas: d.replicas,
        });
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
    /// `lastTransitionTime` of the `Ready` condition when it is `True` (when the Node turned
    /// Ready); `None` when not Ready or not recorded.
    pub ready_since: Option<Timestamp>,
    /// `spec.taints` as `(key, value, effect)`.
    pub taints: Vec<Taint>,
    /// The startup taint of the Node's group (its MachineDeployment's, else the cluster's).
    pub startup_taint: Option<Taint>,
    /// The Node's warm-up pod of the current image list ([`warmup_pod`]); `None` when there is
    /// none (yet).
    pub warmup: Option<WarmupPod>,
}

/// Why a taint goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// The Node is Ready (image warm-up is off).
    Ready,
    /// The Node is Ready and its warm-up pod is Ready: every image is pulled.
    WarmedUp,
    /// The Node has been Ready for the warm-up timeout without a Ready warm-up pod: the taint
    /// goes anyway (docs/node-lifecycle.md, "Image warm-up").
    WarmupTimedOut(WarmupWait),
}

/// Why a taint stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The Node is not Ready.
    NotReady,
    /// The Node is Ready but its warm-up is not finished; the taint goes at `deadline` at the
    /// latest.
    WarmingUp {
        /// What the warm-up waits for.
        wait: WarmupWait,
        /// When the timeout releases the taint.
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

/// Image warm-up as the startup-taint decision sees it: it is on, and how long a Ready Node
/// waits for its warm-up pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmupGate {
    /// `spec.nodeLifecycle.imageWarmup.timeout`.
    pub timeout: Duration,
}

/// Decides, for every Node that carries its startup taint, whether the taint goes now: once
/// the Node is Ready, and with image warm-up on (`gate`) once its warm-up pod is Ready too, or
/// once it has been Ready for the warm-up timeout (at `now`), whatever its warm-up pod does.
pub fn startup_taints(
    nodes: &[NodeView],
    gate: Option<&WarmupGate>,
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
        let outcome = match gate {
            _ if !n.ready => Err(Hold::NotReady),
            None => Ok(Release::Ready),
            Some(g) => warmup_decision(n, g, now),
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

fn warmup_decision(n: &NodeView, gate: &WarmupGate, now: Timestamp) -> Result<Release, Hold> {
    let wait = match &n.warmup {
        Some(p) if p.ready => return Ok(Release::WarmedUp),
        Some(p) if !p.problems.is_empty() => WarmupWait::Failing(p.problems.clone()),
        Some(p) => WarmupWait::Pulling {
            pulled: p.pulled,
            total: p.total,
        },
        None => WarmupWait::NoPod,
    };
    // A Ready Node without a recorded transition time counts from its registration.
    let since = n.ready_since.unwrap_or(n.created);
    let timeout = SignedDuration::try_from(gate.timeout).unwrap_or(SignedDuration::MAX);
    let deadline = since.checked_add(timeout).unwrap_or(Timestamp::MAX);
    if now >= deadline {
        Ok(Release::WarmupTimedOut(wait))
    } else {
        Err(Hold::WarmingUp { wait, deadline })
    }
}

// ---------------------------------------------------------------------------------------------
// Headroom

/// Namespace of the headroom placeholders in the workload cluster.
pub const HEADROOM_NAMESPACE: &str = "capow-headroom";
/// Name of their Deployment and of their PriorityClass.
pub const HEADROOM_NAME: &str = "capow-headroom";

/// The placeholder pods that keep `spec.nodeLifecycle.headroom` free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadroomPlan {
    /// Placeholder pods.
    pub replicas: i32,
    /// CPU request of each, in millicores (rounded up).
    pub cpu: Milli,
    /// Memory request of each, in milli-bytes (rounded up to whole bytes).
    pub memory: Milli,
}

/// Splits the headroom into its placeholder pods.
///
/// # Errors
/// `(field path, sentence)` when a quantity does not parse or is not positive (the CRD's rules
/// refuse both; this guards objects written before them).
pub fn headroom(h: &Headroom) -> Result<HeadroomPlan, (String, String)> {
    let replicas = h.replicas.unwrap_or(1).max(1);
    let per_pod = |field: &str, value: &str, unit: i128| {
        let q = quantity::parse(value).map_err(|e| {
            (
                format!("spec.nodeLifecycle.headroom.{field}"),
                format!("{e}; use e.g. 2 or 500m for cpu, 4Gi for memory"),
            )
        })?;
        if q.0 <= 0 {
            return Err((
                format!("spec.nodeLifecycle.headroom.{field}"),
                format!("{value:?} keeps nothing free; give a quantity greater than 0"),
            ));
        }
        let share = (q.0 + i128::from(replicas) - 1) / i128::from(replicas);
        Ok(Milli((share + unit - 1) / unit * unit))
    };
    Ok(HeadroomPlan {
        replicas,
        cpu: per_pod("cpu", &h.cpu, 1)?,
        memory: per_pod("memory", &h.memory, 1000)?,
    })
}

/// An autoscaled node group as [`headroom_fits`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCapacity {
    /// MachineDeployment name.
    pub name: String,
    /// CPU and memory of one node (the template's `status.capacity`); `None` when unknown.
    pub node: Option<(Milli, Milli)>,
    /// The group's max size (autoscaling annotations); `None` when not autoscaled.
    pub max_size: Option<i32>,
}

/// Whether the autoscaler can make room for the placeholders: each must fit one node of some
/// autoscaled group, and all of them the groups at their max sizes.
///
/// # Errors
/// A sentence naming the field, the sizes and what to change.
pub fn headroom_fits(plan: &HeadroomPlan, groups: &[GroupCapacity]) -> Result<(), String> {
    let usable: Vec<(&str, Milli, Milli, i128)> = groups
        .iter()
        .filter_map(|g| {
            let (cpu, memory) = g.node?;
            let max = g.max_size.filter(|m| *m > 0)?;
            Some((g.name.as_str(), cpu, memory, i128::from(max)))
        })
        .collect();
    let pod = format!(
        "{} CPU and {} memory",
        quantity::format_cpu(plan.cpu),
        quantity::format_bytes(plan.memory)
    );
    if usable.is_empty() {
        return Err(format!(
            "spec.nodeLifecycle.headroom: no MachineDeployment of the cluster is autoscaled with a known node size (autoscaling min/max annotations and a template with status.capacity), so nothing can make room for the placeholders of {pod}"
        ));
    }
    if !usable
        .iter()
        .any(|(_, cpu, memory, _)| plan.cpu <= *cpu && plan.memory <= *memory)
    {
        let largest = usable
            .iter()
            .map(|(name, cpu, memory, _)| {
                format!(
                    "{name}: {} CPU, {}",
                    quantity::format_cpu(*cpu),
                    quantity::format_bytes(*memory)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "spec.nodeLifecycle.headroom: each placeholder pod asks for {pod}, more than one node of any autoscaled MachineDeployment offers ({largest}); raise spec.nodeLifecycle.headroom.replicas or lower cpu and memory"
        ));
    }
    let n = i128::from(plan.replicas);
    let (want_cpu, want_memory) = (plan.cpu.0 * n, plan.memory.0 * n);
    let (max_cpu, max_memory) = usable
        .iter()
        .fold((0i128, 0i128), |(c, m), (_, cpu, memory, max)| {
            (c + cpu.0 * max, m + memory.0 * max)
        });
    if want_cpu > max_cpu || want_memory > max_memory {
        return Err(format!(
            "spec.nodeLifecycle.headroom: {} placeholder pods of {pod} need more than the autoscaled MachineDeployments hold at their max sizes ({} CPU, {} memory); raise their max-size annotations or lower the headroom",
            plan.replicas,
            quantity::format_cpu(Milli(max_cpu)),
            quantity::format_bytes(Milli(max_memory))
        ));
    }
    Ok(())
}

/// The workload-cluster objects that run the placeholders, in apply order: the Namespace
/// [`HEADROOM_NAMESPACE`], the PriorityClass [`HEADROOM_NAME`] (value [`HEADROOM_PRIORITY`],
/// `preemptionPolicy: Never`: placeholders never preempt anything) and the Deployment
/// [`HEADROOM_NAME`] of `plan.replicas` pods running `image` (a pause image) with requests
/// equal to limits, no service account token, and zero termination grace, so a preempted
/// placeholder frees its node at once.
pub fn headroom_objects(plan: &HeadroomPlan, image: &str) -> [serde_json::Value; 3] {
    let labels =
        json!({"app.kubernetes.io/name": HEADROOM_NAME, "app.kubernetes.io/managed-by": "capow"});
    let resources = json!({
        "cpu": quantity::format_cpu(plan.cpu),
        "memory": quantity::format_bytes(plan.memory),
    });
    [
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": HEADROOM_NAMESPACE, "labels": labels}}),
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
               "metadata": {"name": HEADROOM_NAME, "labels": labels},
               "value": HEADROOM_PRIORITY, "preemptionPolicy": "Never", "globalDefault": false,
               "description": "Placeholder pods capow runs to keep spare capacity (OpenStackWorkerCluster spec.nodeLifecycle.headroom); every workload preempts them."}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": HEADROOM_NAME, "namespace": HEADROOM_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": HEADROOM_NAME}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": HEADROOM_NAME,
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65535, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "placeholder",
                        "image": image,
                        "resources": {"requests": resources, "limits": resources},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        }}),
    ]
}

// ---------------------------------------------------------------------------------------------
// Image warm-up

/// Namespace of the image warm-up DaemonSet in the workload cluster.
pub const WARMUP_NAMESPACE: &str = "capow-image-warmup";
/// Name of the image warm-up DaemonSet (and the `app.kubernetes.io/name` label of its pods).
pub const WARMUP_NAME: &str = "capow-image-warmup";
/// Pod-template annotation of the warm-up DaemonSet: a hash of the images its pods pull, so a
/// pod of an older list (not yet rolled) does not count as warmed up.
pub const WARMUP_IMAGES_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/warmup-images";
/// Command of every pull init container: the image must contain `/bin/sh`.
pub const WARMUP_COMMAND: [&str; 3] = ["/bin/sh", "-c", "true"];

/// What the warm-up DaemonSet pulls (`spec.nodeLifecycle.imageWarmup` resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupPlan {
    /// Images to pull, in the order of `images`, without the ignored ones and duplicates.
    pub images: Vec<String>,
    /// Images of `images` that `ignore` removed.
    pub ignored: Vec<String>,
    /// How long a Ready Node waits for its warm-up pod.
    pub timeout: Duration,
    /// [`WARMUP_IMAGES_ANNOTATION`] of the pods: 16 hex digits of the FNV-1a 64 hash of the
    /// images joined by newlines (stable across builds, unlike `std`'s hasher).
    pub hash: String,
}

/// True when `ignore` entry `rule` (an exact reference, or a prefix ending in `*`) matches
/// `image`.
pub fn ignores(rule: &str, image: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => rule == image,
    }
}

fn fnv1a64(text: &str) -> u64 {
    // FNV-1a, 64 bit (offset basis and prime of the FNV specification, draft-eastlake-fnv).
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Resolves `spec.nodeLifecycle.imageWarmup`.
///
/// # Errors
/// `(field path, sentence)` when `timeout` does not parse (the CRD refuses it; this guards
/// objects written before the rule) or when `ignore` leaves nothing to pull.
pub fn warmup(w: &ImageWarmup) -> Result<WarmupPlan, (String, String)> {
    let timeout_text = w.timeout.as_deref().unwrap_or(DEFAULT_WARMUP_TIMEOUT);
    let timeout = parse_duration(timeout_text).map_err(|e| {
        (
            "spec.nodeLifecycle.imageWarmup.timeout".to_owned(),
            format!("{e}; use a duration between 30s and 24h such as 10m"),
        )
    })?;
    let (mut images, mut ignored) = (Vec::new(), Vec::new());
    for image in &w.images {
        if w.ignore.iter().any(|rule| ignores(rule, image)) {
            ignored.push(image.clone());
        } else if !images.contains(image) {
            images.push(image.clone());
        }
    }
    if images.is_empty() {
        return Err((
            "spec.nodeLifecycle.imageWarmup.ignore".to_owned(),
            format!(
                "every image of spec.nodeLifecycle.imageWarmup.images ({}) is ignored, so there is nothing to pre-pull; remove the entries of ignore that match them or remove imageWarmup",
                w.images.join(", ")
            ),
        ));
    }
    let hash = format!("{:016x}", fnv1a64(&images.join("\n")));
    Ok(WarmupPlan {
        images,
        ignored,
        timeout,
        hash,
    })
}

/// The workload-cluster objects of the warm-up, in apply order: the Namespace
/// [`WARMUP_NAMESPACE`] and the DaemonSet [`WARMUP_NAME`].
///
/// Its pods have one init container `pull-<i>` per image of `plan` (`imagePullPolicy:
/// IfNotPresent`, command [`WARMUP_COMMAND`], 1m CPU and 8Mi memory requested, 32Mi memory
/// limit) and one container running `pause_image`; init containers run in order and the pod
/// turns Ready once all of them succeeded (Kubernetes v1.36 "Init Containers" concept page),
/// so a Ready pod means every image is on its Node. The pods tolerate `startup_taints` (every
/// startup taint in force, key with `operator: Exists` and its effect), so they run on a new
/// Node before its taint goes; the DaemonSet controller adds the tolerations of
/// `node.kubernetes.io/not-ready` and `unreachable` (`NoExecute`) and of the node pressure and
/// `unschedulable` taints itself (Kubernetes v1.36 "DaemonSet" concept page, "Taints and
/// tolerations"). Pods run as user 65535 without privileges or a service-account token, with
/// termination grace 0; the rolling update replaces all pods at once (`maxUnavailable: 100%`).
pub fn warmup_objects(
    plan: &WarmupPlan,
    pause_image: &str,
    startup_taints: &[Taint],
) -> [serde_json::Value; 2] {
    let labels =
        json!({"app.kubernetes.io/name": WARMUP_NAME, "app.kubernetes.io/managed-by": "capow"});
    let container_security = json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}});
    let resources =
        json!({"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}});
    let init: Vec<serde_json::Value> = plan
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            json!({"name": format!("pull-{i}"), "image": image, "imagePullPolicy": "IfNotPresent",
                   "command": WARMUP_COMMAND, "resources": resources,
                   "securityContext": container_security})
        })
        .collect();
    let mut tolerations: Vec<serde_json::Value> = Vec::new();
    for t in startup_taints {
        let toleration = json!({"key": t.key, "operator": "Exists", "effect": t.effect});
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
    [
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": WARMUP_NAMESPACE, "labels": labels}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": WARMUP_NAME, "namespace": WARMUP_NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": WARMUP_NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": labels, "annotations": {WARMUP_IMAGES_ANNOTATION: plan.hash}},
                "spec": {
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65535, "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": init,
                    "containers": [{
                        "name": "pause",
                        "image": pause_image,
                        "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "8Mi"}},
                        "securityContext": container_security,
                    }],
                },
            },
        }}),
    ]
}

/// An image a warm-up pod could not pull or run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageProblem {
    /// The image reference.
    pub image: String,
    /// The kubelet's reason (`ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`,
    /// `CrashLoopBackOff`, `Error`, ...).
    pub reason: String,
    /// The kubelet's message (may be empty).
    pub message: String,
}

impl ImageProblem {
    /// `image (Reason: message)`.
    pub fn describe(&self) -> String {
        if self.message.is_empty() {
            format!("{} ({})", self.image, self.reason)
        } else {
            format!("{} ({}: {})", self.image, self.reason, self.message)
        }
    }
}

/// A Node's warm-up pod, as far as the decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupPod {
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    /// Init containers that finished (their image is on the Node).
    pub pulled: usize,
    /// Images the pod pulls.
    pub total: usize,
    /// Images it could not pull or run.
    pub problems: Vec<ImageProblem>,
}

/// What a Node's warm-up waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WarmupWait {
    /// The DaemonSet has no pod of the current image list on the Node (yet).
    NoPod,
    /// The pod is pulling.
    Pulling {
        /// Images done.
        pulled: usize,
        /// Images in all.
        total: usize,
    },
    /// Images cannot be pulled or run.
    Failing(Vec<ImageProblem>),
}

impl WarmupWait {
    /// The state as a sentence part.
    pub fn describe(&self) -> String {
        match self {
            WarmupWait::NoPod => format!(
                "no warm-up pod of DaemonSet {WARMUP_NAMESPACE}/{WARMUP_NAME} runs on it (yet); if it never comes, the Node has a taint the DaemonSet does not tolerate"
            ),
            WarmupWait::Pulling { pulled, total } => {
                format!("{pulled} of {total} images pulled")
            }
            WarmupWait::Failing(problems) => format!(
                "failed to pull or run {}",
                problems
                    .iter()
                    .map(ImageProblem::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Waiting reasons of an init container that mean its image cannot be pulled or run (kubelet
/// `pkg/kubelet/images/types.go` and `pkg/kubelet/container/sync_result.go`, Kubernetes v1.36).
const PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "SignatureValidationFailed",
    "CrashLoopBackOff",
    "RunContainerError",
    "CreateContainerError",
    "CreateContainerConfigError",
    "StartError",
];

/// The warm-up view of `pod`, a pod of the warm-up DaemonSet; `None` when it is being deleted
/// or belongs to another image list than `hash` (an older one, not rolled yet).
pub fn warmup_pod(pod: &Pod, hash: &str) -> Option<WarmupPod> {
    if pod.metadata.deletion_timestamp.is_some()
        || pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(WARMUP_IMAGES_ANNOTATION))
            .map(String::as_str)
            != Some(hash)
    {
        return None;
    }
    let spec_images: Vec<(String, String)> = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let (mut pulled, mut problems) = (0, Vec::new());
    for cs in status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        let image = spec_images
            .iter()
            .find(|(name, _)| *name == cs.name)
            .map_or_else(|| cs.image.clone(), |(_, image)| image.clone());
        let state = cs.state.as_ref();
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            if t.exit_code == 0 {
                pulled += 1;
            } else {
                problems.push(ImageProblem {
                    image,
                    reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
                    message: format!(
                        "exited with {}{}",
                        t.exit_code,
                        t.message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                });
            }
        } else if let Some(w) = state.and_then(|s| s.waiting.as_ref())
            && let Some(reason) = w.reason.as_deref()
            && PULL_FAILURES.contains(&reason)
        {
            problems.push(ImageProblem {
                image,
                reason: reason.to_owned(),
                message: w.message.clone().unwrap_or_default(),
            });
        }
    }
    Some(WarmupPod {
        ready,
        pulled: if ready { spec_images.len() } else { pulled },
        total: spec_images.len(),
        problems: if ready { Vec::new() } else { problems },
    })
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
                Wait::NotUpToDate {
                    up_to_date: 2,
                    replicas: 3,
                },
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

    fn node(name: &str, ready: bool, keys: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            created: t(0),
            ready,
            ready_since: ready.then(|| t(1)),
            taints: keys.iter().map(|k| taint(k)).collect(),
            startup_taint: Some(taint("s/t")),
            warmup: None,
        }
    }

    #[test]
    fn the_startup_taint_stays_until_ready() {
        let nodes = [
            node(
                "a-not-ready",
                false,
                &["s/t", "node.kubernetes.io/not-ready"],
            ),
            node("b-ready", true, &["s/t"]),
            node("c-untainted", true, &[]),
            node("d-other-taint", true, &["dedicated"]),
        ];
        let d = startup_taints(&nodes, None, t(2));
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
        // A node of a group without a startup taint is left alone.
        let mut off = node("x", true, &["s/t"]);
        off.startup_taint = None;
        assert!(startup_taints(&[off], None, t(2)).is_empty());
    }

    fn headroom_of(cpu: &str, memory: &str, replicas: Option<i32>) -> Headroom {
        Headroom {
            cpu: cpu.into(),
            memory: memory.into(),
            replicas,
        }
    }

    fn group(name: &str, cpu: &str, memory: &str, max: Option<i32>) -> GroupCapacity {
        GroupCapacity {
            name: name.into(),
            node: Some((
                quantity::parse(cpu).unwrap(),
                quantity::parse(memory).unwrap(),
            )),
            max_size: max,
        }
    }

    #[test]
    fn headroom_is_split_into_placeholders_rounded_up() {
        let p = headroom(&headroom_of("1", "1Gi", Some(3))).unwrap();
        assert_eq!(p.replicas, 3);
        assert_eq!(quantity::format_cpu(p.cpu), "334m");
        assert_eq!(p.memory.0 % 1000, 0, "whole bytes");
        assert!(p.memory.0 * 3 >= (1i128 << 30) * 1000);
        let one = headroom(&headroom_of("500m", "256Mi", None)).unwrap();
        assert_eq!(
            (
                one.replicas,
                quantity::format_cpu(one.cpu),
                quantity::format_bytes(one.memory)
            ),
            (1, "500m".to_owned(), "256Mi".to_owned())
        );
        let (field, message) = headroom(&headroom_of("two", "1Gi", None)).unwrap_err();
        assert_eq!(field, "spec.nodeLifecycle.headroom.cpu");
        assert!(message.contains("not a Kubernetes quantity"), "{message}");
        let (field, _) = headroom(&headroom_of("1", "0", None)).unwrap_err();
        assert_eq!(field, "spec.nodeLifecycle.headroom.memory");
    }

    #[test]
    fn headroom_must_fit_one_node_and_the_groups_at_their_max() {
        let p = headroom(&headroom_of("2", "4Gi", Some(2))).unwrap();
        let small = group("small", "1", "2Gi", Some(10));
        let big = group("big", "2", "8Gi", Some(1));
        assert!(headroom_fits(&p, &[small.clone(), big.clone()]).is_ok());
        let err = headroom_fits(&p, &[group("tiny", "500m", "2Gi", Some(10))]).unwrap_err();
        assert!(
            err.contains("more than one node") && err.contains("tiny: 500m CPU, 2Gi"),
            "{err}"
        );
        let p4 = headroom(&headroom_of("4", "4Gi", Some(4))).unwrap();
        let err = headroom_fits(&p4, &[group("small", "1", "2Gi", Some(3))]).unwrap_err();
        assert!(
            err.contains("4 placeholder pods") && err.contains("3 CPU, 6Gi memory"),
            "{err}"
        );
        let unknown = GroupCapacity {
            node: None,
            ..small.clone()
        };
        let not_autoscaled = GroupCapacity {
            max_size: None,
            ..big
        };
        let err = headroom_fits(&p, &[unknown, not_autoscaled]).unwrap_err();
        assert!(err.contains("no MachineDeployment"), "{err}");
    }

    #[test]
    fn headroom_objects_run_preemptible_placeholders_that_never_preempt() {
        let p = headroom(&headroom_of("1", "1Gi", Some(2))).unwrap();
        let [ns, pc, deployment] = headroom_objects(&p, "mirror.example/pause:3.10");
        assert_eq!(ns["metadata"]["name"], HEADROOM_NAMESPACE);
        assert_eq!(pc["value"], HEADROOM_PRIORITY);
        const { assert!(HEADROOM_PRIORITY < 0 && HEADROOM_PRIORITY >= -10) };
        assert_eq!(pc["preemptionPolicy"], "Never");
        assert_eq!(deployment["spec"]["replicas"], 2);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], HEADROOM_NAME);
        assert_eq!(pod["terminationGracePeriodSeconds"], 0);
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "mirror.example/pause:3.10");
        assert_eq!(c["resources"]["requests"], c["resources"]["limits"]);
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(c["resources"]["requests"]["memory"], "512Mi");
    }

    fn warmup_of(images: &[&str], ignore: &[&str], timeout: Option<&str>) -> ImageWarmup {
        ImageWarmup {
            images: images.iter().map(|s| (*s).to_owned()).collect(),
            ignore: ignore.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout.map(str::to_owned),
        }
    }

    #[test]
    fn warmup_pulls_the_images_minus_the_ignored_ones_in_order() {
        let p = warmup(&warmup_of(
            &[
                "mirror.example:5000/team/app:1.2",
                "busybox:1.36",
                "pause:3.10",
                "mirror.example/big/model@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "pause:3.10",
            ],
            &["busybox:*", "mirror.example/big/*"],
            None,
        ))
        .unwrap();
        assert_eq!(p.images, ["mirror.example:5000/team/app:1.2", "pause:3.10"]);
        assert_eq!(p.ignored.len(), 2);
        assert_eq!(p.timeout, Duration::from_secs(600), "default 10m");
        assert_eq!(p.hash.len(), 16);
        // The hash follows the list, not the ignored entries or the order of evaluation.
        let same = warmup(&warmup_of(
            &["mirror.example:5000/team/app:1.2", "pause:3.10"],
            &[],
            Some("45s"),
        ))
        .unwrap();
        assert_eq!(same.hash, p.hash);
        assert_eq!(same.timeout, Duration::from_secs(45));
        let other = warmup(&warmup_of(&["pause:3.10"], &[], None)).unwrap();
        assert_ne!(other.hash, p.hash);
        // An exact ignore entry matches only itself.
        assert!(ignores("pause:3.10", "pause:3.10"));
        assert!(!ignores("pause", "pause:3.10"));
        assert!(ignores("pause*", "pause:3.10"));
    }

    #[test]
    fn warmup_that_ignores_everything_or_has_a_bad_timeout_is_reported() {
        let (field, message) =
            warmup(&warmup_of(&["busybox:1.36"], &["busybox:*"], None)).unwrap_err();
        assert_eq!(field, "spec.nodeLifecycle.imageWarmup.ignore");
        assert!(message.contains("nothing to pre-pull"), "{message}");
        let (field, _) = warmup(&warmup_of(&["pause:3.10"], &[], Some("ten"))).unwrap_err();
        assert_eq!(field, "spec.nodeLifecycle.imageWarmup.timeout");
    }

    #[test]
    fn the_warmup_daemonset_pulls_each_image_in_an_init_container_and_tolerates_startup_taints() {
        let p = warmup(&warmup_of(&["app:1", "tools:2"], &[], None)).unwrap();
        let no_execute = Taint {
            effect: "NoExecute".into(),
            ..taint("other/t")
        };
        let [ns, ds] = warmup_objects(
            &p,
            "mirror.example/pause:3.10",
            &[taint("s/t"), taint("s/t"), no_execute],
        );
        assert_eq!(ns["metadata"]["name"], WARMUP_NAMESPACE);
        assert_eq!(ds["kind"], "DaemonSet");
        assert_eq!(ds["metadata"]["namespace"], WARMUP_NAMESPACE);
        let template = &ds["spec"]["template"];
        assert_eq!(
            template["metadata"]["annotations"][WARMUP_IMAGES_ANNOTATION],
            p.hash.as_str()
        );
        assert_eq!(
            ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            template["metadata"]["labels"]["app.kubernetes.io/name"]
        );
        let pod = &template["spec"];
        let init = pod["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 2);
        for (i, (c, image)) in init.iter().zip(["app:1", "tools:2"]).enumerate() {
            assert_eq!(c["name"], format!("pull-{i}"));
            assert_eq!(c["image"], image);
            assert_eq!(c["imagePullPolicy"], "IfNotPresent");
            assert_eq!(c["command"], json!(["/bin/sh", "-c", "true"]));
        }
        assert_eq!(pod["containers"][0]["image"], "mirror.example/pause:3.10");
        assert_eq!(
            pod["tolerations"],
            json!([
                {"key": "s/t", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "other/t", "operator": "Exists", "effect": "NoExecute"},
            ]),
            "one toleration per distinct startup taint"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        // The manifest is a valid DaemonSet.
        let typed: k8s_openapi::api::apps::v1::DaemonSet =
            serde_json::from_value(ds.clone()).unwrap();
        assert!(typed.spec.is_some());
    }

    /// A warm-up pod of `hash` with init containers `pull-<i>` for `images`, in `states`
    /// (`"done"`, `"waiting:<Reason>"`, `"failed"`, `"none"`), Ready when `ready`.
    fn pod(hash: &str, images: &[&str], states: &[&str], ready: bool) -> Pod {
        let statuses: Vec<serde_json::Value> = images
            .iter()
            .zip(states)
            .enumerate()
            .filter(|(_, (_, st))| **st != "none")
            .map(|(i, (image, st))| {
                let state = match *st {
                    "done" => json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                    "failed" => json!({"terminated": {"exitCode": 127, "reason": "Error", "message": "sh: not found"}}),
                    w => json!({"waiting": {"reason": w.trim_start_matches("waiting:"), "message": "pull access denied"}}),
                };
                json!({"name": format!("pull-{i}"), "image": format!("normalized/{image}"), "imageID": "", "ready": false, "restartCount": 0, "state": state})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "w", "annotations": {WARMUP_IMAGES_ANNOTATION: hash}},
            "spec": {"nodeName": "n", "containers": [{"name": "pause", "image": "pause:3.10"}],
                     "initContainers": images.iter().enumerate().map(|(i, image)| json!({"name": format!("pull-{i}"), "image": image})).collect::<Vec<_>>()},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                       "initContainerStatuses": statuses},
        }))
        .unwrap()
    }

    #[test]
    fn a_warmup_pod_reports_progress_and_names_the_images_it_cannot_pull() {
        let images = ["app:1", "tools:2", "gone:3"];
        let p = warmup_pod(&pod("h", &images, &["done", "done", "done"], true), "h").unwrap();
        assert_eq!((p.ready, p.pulled, p.total), (true, 3, 3));
        let p = warmup_pod(&pod("h", &images, &["done", "none", "none"], false), "h").unwrap();
        assert_eq!((p.ready, p.pulled, p.total), (false, 1, 3));
        assert!(p.problems.is_empty());
        let p = warmup_pod(
            &pod(
                "h",
                &images,
                &["done", "waiting:ImagePullBackOff", "none"],
                false,
            ),
            "h",
        )
        .unwrap();
        assert_eq!(
            p.problems,
            [ImageProblem {
                image: "tools:2".into(),
                reason: "ImagePullBackOff".into(),
                message: "pull access denied".into()
            }],
            "the image as the spec names it, not as the runtime normalized it"
        );
        let p = warmup_pod(&pod("h", &images, &["failed", "none", "none"], false), "h").unwrap();
        assert_eq!(p.problems[0].image, "app:1");
        assert!(p.problems[0].describe().contains("exited with 127"));
        // A still-creating container is no problem.
        let p = warmup_pod(
            &pod(
                "h",
                &images,
                &["done", "waiting:PodInitializing", "none"],
                false,
            ),
            "h",
        )
        .unwrap();
        assert!(p.problems.is_empty());
        // A pod of an older image list does not count.
        assert!(warmup_pod(&pod("old", &images, &["done"; 3], true), "h").is_none());
    }

    #[test]
    fn with_warmup_the_taint_waits_for_the_warmup_pod_or_the_timeout() {
        let gate = WarmupGate {
            timeout: Duration::from_secs(600),
        };
        // Ready at t(1); the deadline is 10 minutes later.
        let deadline = t(1) + SignedDuration::from_mins(10);
        let before = t(1) + SignedDuration::from_mins(5);
        let after = t(1) + SignedDuration::from_mins(10);
        let pulling = WarmupPod {
            ready: false,
            pulled: 1,
            total: 2,
            problems: Vec::new(),
        };
        let failing = WarmupPod {
            problems: vec![ImageProblem {
                image: "gone:3".into(),
                reason: "ErrImagePull".into(),
                message: String::new(),
            }],
            ..pulling.clone()
        };
        let ready = WarmupPod {
            ready: true,
            pulled: 2,
            ..pulling.clone()
        };
        let with = |name: &str, pod: Option<WarmupPod>| NodeView {
            warmup: pod,
            ..node(name, true, &["s/t"])
        };
        let nodes = [
            with("a-no-pod", None),
            with("b-pulling", Some(pulling.clone())),
            with("c-failing", Some(failing.clone())),
            with("d-warm", Some(ready)),
            node("e-not-ready", false, &["s/t"]),
        ];
        let outcomes = |now| {
            startup_taints(&nodes, Some(&gate), now)
                .into_iter()
                .map(|d| d.outcome)
                .collect::<Vec<_>>()
        };
        let hold = |wait| Err(Hold::WarmingUp { wait, deadline });
        let failing_wait = WarmupWait::Failing(failing.problems.clone());
        let pulling_wait = WarmupWait::Pulling {
            pulled: 1,
            total: 2,
        };
        assert_eq!(
            outcomes(before),
            [
                hold(WarmupWait::NoPod),
                hold(pulling_wait.clone()),
                hold(failing_wait.clone()),
                Ok(Release::WarmedUp),
                Err(Hold::NotReady),
            ]
        );
        assert_eq!(
            outcomes(after),
            [
                Ok(Release::WarmupTimedOut(WarmupWait::NoPod)),
                Ok(Release::WarmupTimedOut(pulling_wait)),
                Ok(Release::WarmupTimedOut(failing_wait.clone())),
                Ok(Release::WarmedUp),
                Err(Hold::NotReady),
            ],
            "after the timeout the taint goes whatever the pod does, never from a NotReady Node"
        );
        assert!(failing_wait.describe().contains("gone:3 (ErrImagePull)"));
        // Without warm-up, Ready is enough.
        assert_eq!(
            startup_taints(&nodes[..1], None, before)[0].outcome,
            Ok(Release::Ready)
        );
    }
}
