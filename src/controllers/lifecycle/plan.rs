//! Pure decisions of the lifecycle controller, from views of what observe read:
//!
//! - [`max_age`]: which Machines of a MachineDeployment to replace now, or why none;
//! - [`startup_taints`]: which Nodes lose their startup taint now;
//! - [`headroom`], [`headroom_fits`], [`headroom_objects`]: the placeholder pods of the
//!   headroom, whether the cluster's node groups can hold them, and the objects that run them.
//!
//! Nothing here does I/O; every function is table-tested below.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use serde_json::json;

use crate::api::lifecycle::settings::{MaxAge, Taint, format_duration};
use crate::api::lifecycle::{HEADROOM_PRIORITY, Headroom};
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
    /// `spec.taints` as `(key, value, effect)`.
    pub taints: Vec<Taint>,
    /// The startup taint of the Node's group (its MachineDeployment's, else the cluster's).
    pub startup_taint: Option<Taint>,
}

/// Why a taint goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// The Node is Ready.
    Ready,
}

/// Why a taint stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The Node is not Ready.
    NotReady,
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

/// Decides, for every Node that carries its startup taint, whether the taint goes now: once
/// the Node is Ready.
pub fn startup_taints(nodes: &[NodeView]) -> Vec<TaintDecision> {
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
        let outcome = if n.ready {
            Ok(Release::Ready)
        } else {
            Err(Hold::NotReady)
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
            taints: keys.iter().map(|k| taint(k)).collect(),
            startup_taint: Some(taint("s/t")),
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
        let d = startup_taints(&nodes);
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
        assert!(startup_taints(&[off]).is_empty());
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
}
