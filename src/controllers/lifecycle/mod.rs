//! The node lifecycle controller (ADR `docs/adr/0007-node-lifecycle.md`): for each
//! `OpenStackWorkerCluster` whose Cluster is not paused, it
//!
//! 1. replaces Machines older than their MachineDeployment's max node age through CAPI
//!    ([`plan::max_age`]: mark `cluster.x-k8s.io/delete-machine`, delete the Machine; CAPI
//!    drains the Node and the MachineSet creates the successor);
//! 2. removes the startup taint from Nodes of the workload cluster (reached through the
//!    `<cluster>-kubeconfig` Secret, [`workload`]) once they are Ready, and with image
//!    warm-up on once their warm-up pod is Ready (or the warm-up timed out);
//! 3. keeps the headroom placeholders and the image warm-up DaemonSet in the workload cluster
//!    (server-side apply), and deletes them when their field goes;
//!
//! and reports each configured feature as a condition in `status.nodeLifecycle`, written
//! with its own field manager [`FIELD_MANAGER`]. Steps: observe (reflector stores and the
//! workload caches) → plan ([`plan`], pure) → execute (Kubernetes writes) → status.
//!
//! It runs on the leader only, next to the other controllers, and is woken by changes of the
//! OpenStackWorkerCluster, its Cluster, MachineDeployments and Machines, and of the workload
//! cluster's Nodes; otherwise every `--resync-interval`.

pub mod plan;
pub mod workload;

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use self::plan::{
    AgeDecision, DeploymentView, Hold, MachineView, NodeView, Release, WarmupGate, WarmupPod,
};
use self::workload::{Workload, Workloads};
use crate::api::autoscaling::{SizeLimits, effective_annotations, size_limits};
use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::conditions;
use crate::api::lifecycle::settings::{self, GroupSettings, Taint};
use crate::api::lifecycle::{
    AUTOSCALER_STARTUP_TAINT_PREFIXES, NodeLifecycle, NodeLifecycleStatus,
};
use crate::api::machine_template::OpenStackWorkerMachineTemplate;
use crate::api::quantity;
use crate::capi::{self, Cluster, Machine, MachineDeployment, MachineSet};
use crate::controllers::run;
use crate::controllers::{Context, describe_kube_error};

/// Controller name (metrics, logs).
pub const CONTROLLER: &str = "lifecycle";
/// Field manager of every write of this controller (status, Machines, workload objects).
pub const FIELD_MANAGER: &str = "capow-lifecycle";

/// Condition types of `status.nodeLifecycle.conditions`, one per configured feature.
pub mod condition_types {
    /// `spec.nodeLifecycle.maxNodeAge` or a max-node-age annotation is in force.
    pub const MAX_NODE_AGE: &str = "MaxNodeAge";
    /// A startup taint is in force.
    pub const STARTUP_TAINT: &str = "StartupTaint";
    /// `spec.nodeLifecycle.headroom` is set.
    pub const HEADROOM: &str = "Headroom";
    /// `spec.nodeLifecycle.imageWarmup` is set.
    pub const IMAGE_WARMUP: &str = "ImageWarmup";
}

/// Reasons of the lifecycle conditions.
pub mod reasons {
    /// No Machine is over age.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Machines were marked and deleted now.
    pub const REPLACING: &str = "Replacing";
    /// Machines are over age but their MachineDeployment is not steady (message says why).
    pub const WAITING: &str = "Waiting";
    /// A capow annotation on a MachineDeployment does not parse (message names it).
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// A Kubernetes write of this controller failed.
    pub const WRITE_FAILED: &str = "WriteFailed";
    /// The feature works.
    pub const PROVISIONED: &str = "Provisioned";
    /// The startup taint works; its key needs the cluster-autoscaler flag `--startup-taint`.
    pub const AUTOSCALER_FLAG_NEEDED: &str = "AutoscalerFlagNeeded";
    /// The workload cluster cannot be reached (message says why).
    pub const WORKLOAD_CLUSTER_UNREACHABLE: &str = "WorkloadClusterUnreachable";
    /// The headroom's placeholders cannot fit the cluster's autoscaled node groups, or its
    /// quantities are unusable (message names the field and the sizes).
    pub const HEADROOM_DOES_NOT_FIT: &str = "HeadroomDoesNotFit";
    /// The placeholders are applied; the message counts the Ready ones.
    pub const HEADROOM_KEPT: &str = "HeadroomKept";
    /// The warm-up DaemonSet is applied and every Node it runs on has pulled the images.
    pub const WARMED_UP: &str = "WarmedUp";
    /// The warm-up DaemonSet is applied and some Nodes are still pulling (message names them).
    pub const WARMING_UP: &str = "WarmingUp";
    /// A warm-up pod cannot pull or run an image (message names the Node, the image and the
    /// kubelet's reason).
    pub const IMAGE_WARMUP_FAILED: &str = "ImageWarmupFailed";
    /// `imageWarmup.ignore` leaves nothing to pull, or its timeout does not parse.
    pub const INVALID_IMAGE_WARMUP: &str = "InvalidImageWarmup";
}

/// Reasons of the events of this controller.
pub mod event_reasons {
    /// Normal, on the MachineDeployment: a Machine was marked and deleted for age.
    pub const MACHINE_REPLACED: &str = "MachineReplacedForAge";
    /// Warning, on the MachineDeployment: marking or deleting a Machine failed.
    pub const MACHINE_REPLACE_FAILED: &str = "MachineReplaceFailed";
    /// Warning, on the MachineDeployment: an annotation of capow's does not parse.
    pub const INVALID_ANNOTATION: &str = "InvalidLifecycleAnnotation";
    /// Normal, on the OpenStackWorkerCluster (related: the Node): the startup taint was removed.
    pub const STARTUP_TAINT_REMOVED: &str = "StartupTaintRemoved";
    /// Warning, on the OpenStackWorkerCluster: a feature cannot work (message says why).
    pub const LIFECYCLE_PROBLEM: &str = "NodeLifecycleProblem";
    /// Warning, on the OpenStackWorkerCluster (related: the Node): the startup taint was
    /// removed without a finished image warm-up, after `imageWarmup.timeout`.
    pub const IMAGE_WARMUP_TIMED_OUT: &str = "ImageWarmupTimedOut";
}

/// Settings of the controller (manager flags).
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// Smallest max node age accepted from the MachineDeployment annotation.
    pub max_node_age_floor: Duration,
    /// Pause image of the headroom placeholders and the warm-up pods (`--pause-image`, alias
    /// `--headroom-image`).
    pub pause_image: String,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            max_node_age_floor: settings::DEFAULT_MAX_NODE_AGE_FLOOR,
            pause_image: "pause:3.10".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    after: &'static str,
}

/// Metrics of the lifecycle controller (`capow_lifecycle_*`).
#[derive(Clone, Debug)]
pub struct LifecycleMetrics {
    replacements: Counter,
    taints_removed: Family<ReleaseLabels, Counter>,
    taint_seconds: Histogram,
    workload_clusters: Gauge,
}

impl Default for LifecycleMetrics {
    fn default() -> Self {
        LifecycleMetrics {
            replacements: Counter::default(),
            taints_removed: Family::default(),
            // 5 s .. ~2.8 h
            taint_seconds: Histogram::new(exponential_buckets(5.0, 2.0, 12)),
            workload_clusters: Gauge::default(),
        }
    }
}

impl LifecycleMetrics {
    /// Registers the metrics in `registry` (give it the prefix `lifecycle`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "replacements",
            "Machines marked and deleted because they were older than their max node age",
            self.replacements.clone(),
        );
        registry.register(
            "startup_taints_removed",
            "Startup taints removed, by what released the Node (ready, warmed_up, warmup_timeout)",
            self.taints_removed.clone(),
        );
        registry.register(
            "startup_taint_seconds",
            "Seconds from a Node's registration to the removal of its startup taint",
            self.taint_seconds.clone(),
        );
        registry.register(
            "workload_clusters",
            "Workload clusters the lifecycle controller keeps a client and caches for",
            self.workload_clusters.clone(),
        );
    }
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reflector stores have not listed yet.
    #[error("the lifecycle controller's caches have not synced yet")]
    NotSynced,
    /// A Kubernetes call failed.
    #[error("failed to {action}: {message}")]
    Kube {
        /// What capow was doing.
        action: &'static str,
        /// [`describe_kube_error`] of the failure.
        message: String,
    },
    /// The reconcile ran longer than `--reconcile-timeout`.
    #[error("the reconcile did not finish within {} s", .0.as_secs())]
    TimedOut(Duration),
}

struct Shared {
    ctx: Arc<Context>,
    config: LifecycleConfig,
    metrics: LifecycleMetrics,
    workloads: Workloads,
    oswcs: Store<OpenStackWorkerCluster>,
    clusters: Store<Cluster>,
    mds: Store<MachineDeployment>,
    machine_sets: Store<MachineSet>,
    machines: Store<Machine>,
    templates: Store<OpenStackWorkerMachineTemplate>,
}

/// One MachineDeployment of the cluster with what is in force for it.
struct Group {
    md: Arc<MachineDeployment>,
    capacity: plan::GroupCapacity,
    settings: GroupSettings,
    machines: Vec<Arc<Machine>>,
    view: DeploymentView,
}

fn md_ref(md: &MachineDeployment) -> ObjectReference {
    md.object_ref(&())
}

fn machine_ref(m: &Machine) -> ObjectReference {
    m.object_ref(&())
}

fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}

/// The Cluster an OpenStackWorkerCluster belongs to: its owner, its
/// `cluster.x-k8s.io/cluster-name` label, or the Cluster of the same name; only when that
/// Cluster's `spec.infrastructureRef` names it.
fn cluster_of(s: &Shared, oswc: &OpenStackWorkerCluster) -> Option<Arc<Cluster>> {
    let ns = oswc.namespace().unwrap_or_default();
    let name = oswc
        .owner_references()
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.starts_with(capi::GROUP))
        .map(|o| o.name.clone())
        .or_else(|| oswc.labels().get(capi::CLUSTER_NAME_LABEL).cloned())
        .unwrap_or_else(|| oswc.name_any());
    let c = s.clusters.get(&ObjectRef::new(&name).within(&ns))?;
    let r = c.spec.infrastructure_ref.as_ref()?;
    (r.kind == "OpenStackWorkerCluster" && r.name == oswc.name_any()).then_some(c)
}

fn infra_of(
    clusters: &Store<Cluster>,
    ns: &str,
    cluster: &str,
) -> Option<ObjectRef<OpenStackWorkerCluster>> {
    let c = clusters.get(&ObjectRef::new(cluster).within(ns))?;
    let r = c.spec.infrastructure_ref.as_ref()?;
    (r.kind == "OpenStackWorkerCluster" && !r.name.is_empty())
        .then(|| ObjectRef::new(&r.name).within(ns))
}

/// [`infra_of`] the Cluster a MachineDeployment or Machine belongs to: `spec_cluster` (its
/// `spec.clusterName`), else its `cluster.x-k8s.io/cluster-name` label.
fn infra_of_member<K: Resource>(
    clusters: &Store<Cluster>,
    member: &K,
    spec_cluster: &str,
) -> Option<ObjectRef<OpenStackWorkerCluster>> {
    let cluster = if spec_cluster.is_empty() {
        member
            .labels()
            .get(capi::CLUSTER_NAME_LABEL)
            .map_or("", String::as_str)
    } else {
        spec_cluster
    };
    infra_of(clusters, &member.namespace().unwrap_or_default(), cluster)
}

fn created(meta: &kube::api::ObjectMeta) -> Timestamp {
    meta.creation_timestamp
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0)
}

/// The MachineDeployments of `ns/cluster` whose Machines are OpenStackWorkerMachines.
fn groups(s: &Shared, spec: Option<&NodeLifecycle>, ns: &str, cluster: &str) -> Vec<Group> {
    let machines: Vec<Arc<Machine>> = s
        .machines
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns))
        .collect();
    let sets: Vec<Arc<MachineSet>> = s
        .machine_sets
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns))
        .collect();
    let mut out = Vec::new();
    let mut mds: Vec<Arc<MachineDeployment>> = s
        .mds
        .state()
        .into_iter()
        .filter(|md| {
            md.namespace().as_deref() == Some(ns)
                && (md.spec.cluster_name == cluster
                    || md
                        .labels()
                        .get(capi::CLUSTER_NAME_LABEL)
                        .map(String::as_str)
                        == Some(cluster))
                && md.spec.template.spec.infrastructure_ref.kind == "OpenStackWorkerMachineTemplate"
        })
        .collect();
    mds.sort_by_key(|md| md.name_any());
    for md in mds {
        let name = md.name_any();
        let template = s
            .templates
            .get(&ObjectRef::new(&md.spec.template.spec.infrastructure_ref.name).within(ns));
        let annotations = effective_annotations(md.annotations(), template.as_deref());
        let limits = size_limits(&annotations);
        let settings =
            settings::group_settings(spec, md.annotations(), s.config.max_node_age_floor);
        let own: Vec<Arc<Machine>> = machines
            .iter()
            .filter(|m| m.labels().get(capi::DEPLOYMENT_NAME_LABEL) == Some(&name))
            .cloned()
            .collect();
        let machine_sets = sets
            .iter()
            .filter(|ms| ms.labels().get(capi::DEPLOYMENT_NAME_LABEL) == Some(&name))
            .map(|ms| {
                let ms_name = ms.name_any();
                let count = own
                    .iter()
                    .filter(|m| m.labels().get(capi::SET_NAME_LABEL) == Some(&ms_name))
                    .count();
                (ms_name, ms.spec.replicas.unwrap_or(0), count)
            })
            .collect();
        let view = DeploymentView {
            generation: md.metadata.generation,
            replicas: md.spec.replicas.unwrap_or(0),
            paused: md.spec.paused.unwrap_or(false)
                || capi::has_paused_annotation(md.annotations()),
            status: md.status.clone().unwrap_or_default(),
            min_size: match &limits {
                SizeLimits::Valid { min, .. } => Some(*min),
                SizeLimits::NotAutoscaled => Some(0),
                SizeLimits::Invalid(_) => None,
            },
            machine_sets,
            machines: own
                .iter()
                .map(|m| MachineView {
                    name: m.name_any(),
                    created: created(&m.metadata),
                    deleting: m.metadata.deletion_timestamp.is_some(),
                    delete_marked: m
                        .annotations()
                        .contains_key(capi::DELETE_MACHINE_ANNOTATION),
                    replacing: m.annotations().contains_key(plan::REPLACE_ANNOTATION),
                })
                .collect(),
        };
        let node = template.as_ref().and_then(|t| {
            let capacity = &t.status.as_ref()?.capacity;
            let parse = |k: &str| quantity::parse(&capacity.get(k)?.0).ok();
            Some((parse("cpu")?, parse("memory")?))
        });
        out.push(Group {
            capacity: plan::GroupCapacity {
                name: name.clone(),
                node,
                max_size: match &limits {
                    SizeLimits::Valid { max, .. } => Some(*max),
                    _ => None,
                },
            },
            md,
            settings,
            machines: own,
            view,
        });
    }
    out
}

/// What the reconcile found, for the status.
#[derive(Default)]
struct Report {
    conditions: Vec<Condition>,
    /// Earliest time something is due (a Machine turning over age).
    due: Option<Timestamp>,
}

impl Report {
    fn set(
        &mut self,
        type_: &str,
        ok: bool,
        reason: &str,
        message: String,
        generation: Option<i64>,
    ) {
        self.conditions.push(conditions::condition(
            type_, ok, reason, message, generation,
        ));
    }

    fn due_at(&mut self, t: Timestamp) {
        self.due = Some(self.due.map_or(t, |d| d.min(t)));
    }
}

async fn reconcile(oswc: Arc<OpenStackWorkerCluster>, s: Arc<Shared>) -> Result<Action, Error> {
    let _timer = s.ctx.metrics.start(CONTROLLER);
    let bound = s.ctx.config.reconcile_timeout;
    let ns = oswc.namespace().unwrap_or_default();
    let span = tracing::info_span!("lifecycle", OpenStackWorkerCluster = %format!("{ns}/{}", oswc.name_any()));
    let reconcile = tracing::Instrument::instrument(reconcile_bounded(oswc, s.clone()), span);
    let result = run::bounded(bound, reconcile).await;
    s.metrics
        .workload_clusters
        .set(i64::try_from(s.workloads.len()).unwrap_or(i64::MAX));
    result
}

async fn synced(s: &Shared) -> bool {
    let wait = Duration::from_secs(10);
    let ready = async {
        s.oswcs.wait_until_ready().await.is_ok()
            && s.clusters.wait_until_ready().await.is_ok()
            && s.mds.wait_until_ready().await.is_ok()
            && s.machine_sets.wait_until_ready().await.is_ok()
            && s.machines.wait_until_ready().await.is_ok()
            && s.templates.wait_until_ready().await.is_ok()
    };
    tokio::time::timeout(wait, ready).await.unwrap_or(false)
}

async fn reconcile_bounded(
    oswc: Arc<OpenStackWorkerCluster>,
    s: Arc<Shared>,
) -> Result<Action, Error> {
    if !synced(&s).await {
        return Err(Error::NotSynced);
    }
    let ns = oswc.namespace().unwrap_or_default();
    // Workload caches of clusters whose infrastructure object is gone are dropped.
    {
        let live: BTreeSet<(String, String)> = s
            .oswcs
            .state()
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .filter_map(|o| {
                cluster_of(&s, o).map(|c| (c.namespace().unwrap_or_default(), c.name_any()))
            })
            .collect();
        s.workloads
            .retain(|n, c| live.contains(&(n.to_owned(), c.to_owned())));
    }
    let resync = s.ctx.config.resync;
    let Some(cluster) = cluster_of(&s, &oswc) else {
        return Ok(Action::requeue(resync));
    };
    let cluster_name = cluster.name_any();
    if oswc.metadata.deletion_timestamp.is_some() || cluster.metadata.deletion_timestamp.is_some() {
        s.workloads.forget(&ns, &cluster_name);
        return Ok(Action::await_change());
    }
    if cluster.is_paused() || capi::has_paused_annotation(oswc.annotations()) {
        return Ok(Action::requeue(resync));
    }
    let spec = oswc.spec.node_lifecycle.as_ref();
    let before = oswc
        .status
        .as_ref()
        .and_then(|st| st.node_lifecycle.clone())
        .unwrap_or_default();
    let generation = oswc.meta().generation;
    let now = Timestamp::now();
    let groups = groups(&s, spec, &ns, &cluster_name);
    let mut report = Report::default();

    max_age_step(&s, &oswc, &groups, &before, now, &mut report).await;

    let cluster_taint = spec
        .and_then(|l| l.startup_taint.as_ref())
        .map(settings::taint_of);
    let taints_on =
        cluster_taint.is_some() || groups.iter().any(|g| g.settings.startup_taint.is_some());
    let headroom = spec.and_then(|l| l.headroom.as_ref());
    let warmup = spec.and_then(|l| l.image_warmup.as_ref());
    // Objects applied earlier are removed once their field is gone.
    let was_on = |type_: &str| before.conditions.iter().any(|c| c.type_ == type_);
    let headroom_was_on = was_on(condition_types::HEADROOM);
    let warmup_was_on = was_on(condition_types::IMAGE_WARMUP);
    if taints_on || headroom.is_some() || headroom_was_on || warmup.is_some() || warmup_was_on {
        let owner = ObjectRef::from_obj(&*oswc);
        let w = match s
            .workloads
            .get(&s.ctx.client, &ns, &cluster_name, owner)
            .await
        {
            Err(e) => Err(e.to_string()),
            Ok(w) if !w_synced(&w).await => {
                s.workloads.recheck(&ns, &cluster_name);
                Err(workload::WorkloadError::NotSynced.to_string())
            }
            Ok(w) => Ok(w),
        };
        match w {
            Err(message) => {
                for (on, type_) in [
                    (taints_on, condition_types::STARTUP_TAINT),
                    // A removed feature keeps its condition, so its objects are deleted once
                    // the workload cluster answers again.
                    (
                        headroom.is_some() || headroom_was_on,
                        condition_types::HEADROOM,
                    ),
                    (
                        warmup.is_some() || warmup_was_on,
                        condition_types::IMAGE_WARMUP,
                    ),
                ] {
                    if on {
                        report.set(
                            type_,
                            false,
                            reasons::WORKLOAD_CLUSTER_UNREACHABLE,
                            message.clone(),
                            generation,
                        );
                    }
                }
            }
            Ok(w) => {
                let mut gate = None;
                if let Some(iw) = warmup {
                    let taints: Vec<Taint> = cluster_taint
                        .iter()
                        .chain(
                            groups
                                .iter()
                                .filter_map(|g| g.settings.startup_taint.as_ref()),
                        )
                        .cloned()
                        .collect();
                    gate = warmup_step(&s, &oswc, &w, iw, &taints, &before, &mut report).await;
                } else if warmup_was_on && let Err(e) = remove_warmup(&w).await {
                    // Keep the condition, so the next reconcile tries again.
                    report.set(
                        condition_types::IMAGE_WARMUP,
                        false,
                        reasons::WRITE_FAILED,
                        format!(
                            "spec.nodeLifecycle.imageWarmup was removed, but deleting DaemonSet {}/{} of the workload cluster failed: {}",
                            plan::WARMUP_NAMESPACE,
                            plan::WARMUP_NAME,
                            describe_kube_error(&e)
                        ),
                        generation,
                    );
                }
                if taints_on {
                    taint_step(
                        &s,
                        &oswc,
                        &w,
                        &groups,
                        cluster_taint.as_ref(),
                        gate.as_ref(),
                        &mut report,
                    )
                    .await;
                }
                if let Some(h) = headroom {
                    headroom_step(&s, &oswc, &w, h, &groups, &before, &mut report).await;
                } else if headroom_was_on && let Err(e) = remove_headroom(&w).await {
                    // Keep the condition, so the next reconcile tries again.
                    report.set(
                        condition_types::HEADROOM,
                        false,
                        reasons::WRITE_FAILED,
                        format!(
                            "spec.nodeLifecycle.headroom was removed, but deleting the placeholders (namespace {} of the workload cluster) failed: {}",
                            plan::HEADROOM_NAMESPACE,
                            describe_kube_error(&e)
                        ),
                        generation,
                    );
                }
            }
        }
    } else {
        s.workloads.forget(&ns, &cluster_name);
    }

    write_status(&s, &oswc, &before, report.conditions, generation).await?;
    let mut after = resync;
    if let Some(due) = report.due {
        let wait: Duration = due
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        after = after.min(wait.max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(after))
}

async fn w_synced(w: &Workload) -> bool {
    let ready = async {
        w.nodes.wait_until_ready().await.is_ok() && w.warmup_pods.wait_until_ready().await.is_ok()
    };
    tokio::time::timeout(workload::FIRST_LIST_WAIT, ready)
        .await
        .unwrap_or(false)
}

/// Publishes `problems` as Warning events on their MachineDeployment when the condition's
/// message changed (so a standing problem is not repeated on every reconcile).
async fn report_problems(
    s: &Shared,
    groups: &[Group],
    changed: bool,
    pick: fn(&settings::Problem) -> bool,
) {
    if !changed {
        return;
    }
    for g in groups {
        let md = format!(
            "{}/{}",
            g.md.namespace().unwrap_or_default(),
            g.md.name_any()
        );
        for p in g.settings.problems.iter().filter(|p| pick(p)) {
            s.ctx
                .event(
                    &md_ref(&g.md),
                    EventType::Warning,
                    event_reasons::INVALID_ANNOTATION,
                    "Validate",
                    p.message(&md),
                )
                .await;
        }
    }
}

fn message_changed(before: &NodeLifecycleStatus, type_: &str, message: &str) -> bool {
    before
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .is_none_or(|c| c.message != message)
}

/// A Warning event `NodeLifecycleProblem` on `oswc` for `action` (e.g. `Headroom`) with
/// `message`, only when the condition `type_` did not say the same already (one event per
/// problem, not one per reconcile).
async fn warn_on_new_problem(
    s: &Shared,
    oswc: &OpenStackWorkerCluster,
    before: &NodeLifecycleStatus,
    type_: &str,
    action: &str,
    message: &str,
) {
    if message_changed(before, type_, message) {
        s.ctx
            .event(
                &oswc.object_ref(&()),
                EventType::Warning,
                event_reasons::LIFECYCLE_PROBLEM,
                action,
                message.to_owned(),
            )
            .await;
    }
}

async fn max_age_step(
    s: &Shared,
    oswc: &OpenStackWorkerCluster,
    groups: &[Group],
    before: &NodeLifecycleStatus,
    now: Timestamp,
    report: &mut Report,
) {
    let is_age_problem = |p: &settings::Problem| p.annotation != settings::STARTUP_TAINT_ANNOTATION;
    let problems: Vec<String> = groups
        .iter()
        .flat_map(|g| {
            let md = format!(
                "{}/{}",
                g.md.namespace().unwrap_or_default(),
                g.md.name_any()
            );
            g.settings
                .problems
                .iter()
                .filter(|p| is_age_problem(p))
                .map(move |p| p.message(&md))
        })
        .collect();
    let enforced: Vec<&Group> = groups
        .iter()
        .filter(|g| g.settings.max_age.is_some())
        .collect();
    if enforced.is_empty() && problems.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    let (mut replaced, mut waiting, mut failed) = (0usize, 0usize, Vec::new());
    for g in enforced {
        let Some(ma) = &g.settings.max_age else {
            continue;
        };
        let md = g.md.name_any();
        let limit = settings::format_duration(ma.limit);
        match plan::max_age(&g.view, ma, now) {
            AgeDecision::Young { next_due } => {
                if let Some(due) = next_due {
                    report.due_at(due);
                }
                lines.push(format!(
                    "MachineDeployment {md}: no Machine is older than {limit}"
                ));
            }
            AgeDecision::Wait { over_age, why } => {
                waiting += 1;
                lines.push(format!(
                    "MachineDeployment {md}: {over_age} Machine(s) older than {limit} wait because {}",
                    why.describe()
                ));
            }
            AgeDecision::Replace(list) => {
                for r in list {
                    let Some(machine) = g.machines.iter().find(|m| m.name_any() == r.machine)
                    else {
                        continue;
                    };
                    match replace(s, machine, r.resume).await {
                        Ok(()) => {
                            replaced += 1;
                            s.metrics.replacements.inc();
                            tracing::info!(machine = %r.machine, age_s = r.age.as_secs(), "Replacing a Machine over its max node age");
                            s.ctx
                                .event_about(
                                    &md_ref(&g.md),
                                    machine_ref(machine),
                                    EventType::Normal,
                                    event_reasons::MACHINE_REPLACED,
                                    "Replace",
                                    plan::replacement_note(&r, ma.limit),
                                )
                                .await;
                            lines.push(format!(
                                "MachineDeployment {md}: replacing Machine {} (older than {limit})",
                                r.machine
                            ));
                        }
                        Err(e) => {
                            let message = format!(
                                "failed to replace Machine {} of MachineDeployment {md}: {}",
                                r.machine,
                                describe_kube_error(&e)
                            );
                            s.ctx
                                .event_about(
                                    &md_ref(&g.md),
                                    machine_ref(machine),
                                    EventType::Warning,
                                    event_reasons::MACHINE_REPLACE_FAILED,
                                    "Replace",
                                    message.clone(),
                                )
                                .await;
                            failed.push(message);
                        }
                    }
                }
            }
        }
    }
    let generation = oswc.meta().generation;
    let (ok, reason, message) = if !problems.is_empty() {
        (false, reasons::INVALID_ANNOTATION, problems.join("; "))
    } else if !failed.is_empty() {
        (false, reasons::WRITE_FAILED, failed.join("; "))
    } else if replaced > 0 {
        (true, reasons::REPLACING, lines.join("; "))
    } else if waiting > 0 {
        (true, reasons::WAITING, lines.join("; "))
    } else {
        (true, reasons::UP_TO_DATE, lines.join("; "))
    };
    let changed = message_changed(before, condition_types::MAX_NODE_AGE, &message);
    report_problems(
        s,
        groups,
        changed && !ok && reason == reasons::INVALID_ANNOTATION,
        |p| p.annotation != settings::STARTUP_TAINT_ANNOTATION,
    )
    .await;
    report.set(
        condition_types::MAX_NODE_AGE,
        ok,
        reason,
        message,
        generation,
    );
}

/// Marks `machine` (unless `resume`: it is marked already) and deletes it.
async fn replace(s: &Shared, machine: &Machine, resume: bool) -> Result<(), kube::Error> {
    let ns = machine.namespace().unwrap_or_default();
    let api: Api<Machine> = Api::namespaced(s.ctx.client.clone(), &ns);
    let name = machine.name_any();
    if !resume {
        let at = Timestamp::now().to_string();
        // The resourceVersion makes this fail (409) when the Machine changed since it was
        // read, e.g. a scale-down marked it meanwhile; the next reconcile decides again.
        let patch = json!({"metadata": {
            "resourceVersion": machine.resource_version(),
            "annotations": { capi::DELETE_MACHINE_ANNOTATION: at, plan::REPLACE_ANNOTATION: at },
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: machine.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(st)) if st.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The name of the CAPI Cluster `oswc` belongs to (its `cluster.x-k8s.io/cluster-name`
/// label, else its own name).
fn cluster_name_of(oswc: &OpenStackWorkerCluster) -> String {
    oswc.labels()
        .get(capi::CLUSTER_NAME_LABEL)
        .cloned()
        .unwrap_or_else(|| oswc.name_any())
}

/// Removes the startup taint from the Nodes that are Ready (with image warm-up on: whose
/// warm-up pod is Ready, or that have been Ready for the warm-up timeout) and reports the
/// `StartupTaint` condition.
async fn taint_step(
    s: &Shared,
    oswc: &OpenStackWorkerCluster,
    w: &Workload,
    groups: &[Group],
    cluster_taint: Option<&Taint>,
    warmup: Option<&Warmup>,
    report: &mut Report,
) {
    let now = Timestamp::now();
    let generation = oswc.meta().generation;
    let t = condition_types::STARTUP_TAINT;
    // Node → its group's startup taint, by providerID or nodeRef of the group's Machines.
    let mut by_provider: HashMap<String, Option<Taint>> = HashMap::new();
    let mut by_node: HashMap<String, Option<Taint>> = HashMap::new();
    for g in groups {
        for m in &g.machines {
            if let Some(p) = m.spec.provider_id.as_ref().filter(|p| !p.is_empty()) {
                by_provider.insert(p.clone(), g.settings.startup_taint.clone());
            }
            if let Some(n) = m.status.as_ref().and_then(|st| st.node_ref.as_ref()) {
                by_node.insert(n.name.clone(), g.settings.startup_taint.clone());
            }
        }
    }
    let nodes: Vec<Arc<Node>> = w.nodes.state();
    let views: Vec<NodeView> = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            let provider = n
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.clone())
                .unwrap_or_default();
            let startup_taint = by_provider
                .get(&provider)
                .or_else(|| by_node.get(&name))
                .cloned()
                .unwrap_or_else(|| cluster_taint.cloned());
            NodeView {
                warmup: warmup.and_then(|x| x.pods.get(&name).cloned()),
                name,
                created: created(&n.metadata),
                ready: workload::node_ready(n),
                ready_since: workload::node_ready_since(n),
                taints: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|t| Taint {
                        key: t.key.clone(),
                        value: t.value.clone().unwrap_or_default(),
                        effect: t.effect.clone(),
                    })
                    .collect(),
                startup_taint,
            }
        })
        .collect();
    let decisions = plan::startup_taints(&views, warmup.map(|x| &x.gate), now);
    let (mut released, mut holding, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for d in decisions {
        let release = match d.outcome {
            Err(Hold::NotReady) => {
                holding.push(format!("{} (not Ready)", d.node));
                continue;
            }
            Err(Hold::WarmingUp { wait, deadline }) => {
                report.due_at(deadline);
                holding.push(format!(
                    "{} (image warm-up: {}; the taint goes at {deadline} at the latest)",
                    d.node,
                    wait.describe()
                ));
                continue;
            }
            Ok(r) => r,
        };
        let Some(node) = nodes.iter().find(|n| n.name_any() == d.node) else {
            continue;
        };
        let timeout =
            warmup.map_or_else(String::new, |x| settings::format_duration(x.gate.timeout));
        match remove_taint(w, node, &d.taint).await {
            Ok(true) => {
                let (label, note) = match &release {
                    Release::Ready => (
                        "ready",
                        format!(
                            "Removed the startup taint {} from Node {}: it is Ready",
                            d.taint.describe(),
                            d.node
                        ),
                    ),
                    Release::WarmedUp => (
                        "warmed_up",
                        format!(
                            "Removed the startup taint {} from Node {}: it is Ready and its image warm-up finished",
                            d.taint.describe(),
                            d.node
                        ),
                    ),
                    Release::WarmupTimedOut(wait) => (
                        "warmup_timeout",
                        format!(
                            "Removed the startup taint {} from Node {} without a finished image warm-up: it has been Ready for {timeout} (spec.nodeLifecycle.imageWarmup.timeout) and its warm-up is not done ({})",
                            d.taint.describe(),
                            d.node,
                            wait.describe()
                        ),
                    ),
                };
                if matches!(release, Release::WarmupTimedOut(_)) {
                    s.ctx
                        .event_about(
                            &oswc.object_ref(&()),
                            node_ref(&d.node),
                            EventType::Warning,
                            event_reasons::IMAGE_WARMUP_TIMED_OUT,
                            "RemoveTaint",
                            note.clone(),
                        )
                        .await;
                }
                s.metrics
                    .taints_removed
                    .get_or_create(&ReleaseLabels { after: label })
                    .inc();
                let registered = created(&node.metadata);
                let seconds = now.duration_since(registered).as_secs_f64().max(0.0);
                s.metrics.taint_seconds.observe(seconds);
                tracing::info!(node = %d.node, after = label, seconds, "Removed the startup taint");
                s.ctx
                    .event_about(
                        &oswc.object_ref(&()),
                        node_ref(&d.node),
                        EventType::Normal,
                        event_reasons::STARTUP_TAINT_REMOVED,
                        "RemoveTaint",
                        note,
                    )
                    .await;
                released.push(match release {
                    Release::WarmupTimedOut(_) => {
                        format!("{} (image warm-up not finished within {timeout})", d.node)
                    }
                    _ => d.node,
                });
            }
            Ok(false) => holding.push(format!("{} (changed meanwhile; trying again)", d.node)),
            Err(e) => failed.push(format!(
                "failed to remove the startup taint from Node {}: {}",
                d.node,
                describe_kube_error(&e)
            )),
        }
    }
    let problems: Vec<String> = groups
        .iter()
        .flat_map(|g| {
            let md = format!(
                "{}/{}",
                g.md.namespace().unwrap_or_default(),
                g.md.name_any()
            );
            g.settings
                .problems
                .iter()
                .filter(|p| p.annotation == settings::STARTUP_TAINT_ANNOTATION)
                .map(move |p| p.message(&md))
        })
        .collect();
    let foreign: BTreeSet<String> = cluster_taint
        .into_iter()
        .chain(
            groups
                .iter()
                .filter_map(|g| g.settings.startup_taint.as_ref()),
        )
        .filter(|t| {
            !AUTOSCALER_STARTUP_TAINT_PREFIXES
                .iter()
                .any(|p| t.key.starts_with(p))
        })
        .map(|t| t.key.clone())
        .collect();
    let mut parts = Vec::new();
    if !released.is_empty() {
        parts.push(format!("removed from {}", released.join(", ")));
    }
    if holding.is_empty() {
        parts.push("no Node waits for its startup taint to go".to_owned());
    } else {
        parts.push(format!("kept on {}", holding.join(", ")));
    }
    let (ok, reason, message) = if !problems.is_empty() {
        (false, reasons::INVALID_ANNOTATION, problems.join("; "))
    } else if !failed.is_empty() {
        s.workloads.recheck(
            &oswc.namespace().unwrap_or_default(),
            &cluster_name_of(oswc),
        );
        (false, reasons::WRITE_FAILED, failed.join("; "))
    } else if !foreign.is_empty() {
        (
            true,
            reasons::AUTOSCALER_FLAG_NEEDED,
            format!(
                "{}; the cluster-autoscaler must run with {} (keys outside startup-taint.cluster-autoscaler.kubernetes.io/ are not startup taints to it otherwise)",
                parts.join("; "),
                foreign
                    .iter()
                    .map(|k| format!("--startup-taint={k}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )
    } else {
        (true, reasons::PROVISIONED, parts.join("; "))
    };
    let before_changed = oswc
        .status
        .as_ref()
        .and_then(|st| st.node_lifecycle.as_ref())
        .is_none_or(|b| message_changed(b, t, &message));
    report_problems(
        s,
        groups,
        before_changed && reason == reasons::INVALID_ANNOTATION,
        |p| p.annotation == settings::STARTUP_TAINT_ANNOTATION,
    )
    .await;
    report.set(t, ok, reason, message, generation);
}

/// Keeps the headroom's placeholders in the workload cluster (`spec.nodeLifecycle.headroom`):
/// checks that the autoscaled groups can hold them ([`plan::headroom_fits`]), applies the
/// Namespace, PriorityClass and Deployment ([`plan::headroom_objects`]) with server-side apply,
/// and reports the `Headroom` condition. When they do not fit, nothing is applied (placeholders
/// already running stay) and a `NodeLifecycleProblem` Warning names the sizes.
async fn headroom_step(
    s: &Shared,
    oswc: &OpenStackWorkerCluster,
    w: &Workload,
    headroom: &crate::api::lifecycle::Headroom,
    groups: &[Group],
    before: &NodeLifecycleStatus,
    report: &mut Report,
) {
    let generation = oswc.meta().generation;
    let capacities: Vec<plan::GroupCapacity> = groups.iter().map(|g| g.capacity.clone()).collect();
    let checked = plan::headroom(headroom)
        .map_err(|(field, message)| format!("{field}: {message}"))
        .and_then(|p| plan::headroom_fits(&p, &capacities).map(|()| p));
    let p = match checked {
        Ok(p) => p,
        Err(message) => {
            warn_on_new_problem(
                s,
                oswc,
                before,
                condition_types::HEADROOM,
                "Headroom",
                &message,
            )
            .await;
            report.set(
                condition_types::HEADROOM,
                false,
                reasons::HEADROOM_DOES_NOT_FIT,
                message,
                generation,
            );
            return;
        }
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut ready = 0;
    for object in plan::headroom_objects(&p, &s.config.pause_image) {
        let applied = apply_workload_object(&w.client, &object, &params).await;
        match applied {
            Ok(status) => {
                if let Some(n) = status {
                    ready = n;
                }
            }
            Err(e) => {
                report.set(
                    condition_types::HEADROOM,
                    false,
                    reasons::WRITE_FAILED,
                    format!(
                        "applying the headroom's {} in the workload cluster failed: {}",
                        object["kind"].as_str().unwrap_or("object"),
                        describe_kube_error(&e)
                    ),
                    generation,
                );
                s.workloads.recheck(
                    &oswc.namespace().unwrap_or_default(),
                    &cluster_name_of(oswc),
                );
                return;
            }
        }
    }
    report.set(
        condition_types::HEADROOM,
        true,
        reasons::HEADROOM_KEPT,
        format!(
            "{ready} of {} placeholder pods of {} CPU and {} memory are Ready (Deployment {}/{} in the workload cluster, priority {})",
            p.replicas,
            quantity::format_cpu(p.cpu),
            quantity::format_bytes(p.memory),
            plan::HEADROOM_NAMESPACE,
            plan::HEADROOM_NAME,
            crate::api::lifecycle::HEADROOM_PRIORITY,
        ),
        generation,
    );
}

/// Image warm-up of a cluster as the startup-taint step needs it.
struct Warmup {
    /// How long a Ready Node waits for its warm-up pod.
    gate: WarmupGate,
    /// The warm-up pod of the current image list on each Node, by Node name.
    pods: HashMap<String, WarmupPod>,
}

/// Keeps the image warm-up DaemonSet in the workload cluster (`spec.nodeLifecycle.imageWarmup`):
/// resolves the image list ([`plan::warmup`]), applies the Namespace and DaemonSet
/// ([`plan::warmup_objects`], tolerating every startup taint in `taints`) with server-side apply,
/// reads the warm-up pods from the workload cache and reports the `ImageWarmup` condition. Returns
/// what the startup-taint step waits for; `None` when the list leaves nothing to pull (then no
/// taint waits, and a DaemonSet applied before stays: bad input deletes nothing).
async fn warmup_step(
    s: &Shared,
    oswc: &OpenStackWorkerCluster,
    w: &Workload,
    iw: &crate::api::lifecycle::ImageWarmup,
    taints: &[Taint],
    before: &NodeLifecycleStatus,
    report: &mut Report,
) -> Option<Warmup> {
    let generation = oswc.meta().generation;
    let t = condition_types::IMAGE_WARMUP;
    let p = match plan::warmup(iw) {
        Ok(p) => p,
        Err((field, message)) => {
            let message = format!("{field}: {message}");
            warn_on_new_problem(s, oswc, before, t, "ImageWarmup", &message).await;
            report.set(t, false, reasons::INVALID_IMAGE_WARMUP, message, generation);
            return None;
        }
    };
    let pods: HashMap<String, WarmupPod> = w
        .warmup_pods
        .state()
        .iter()
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.clone()?;
            Some((node, plan::warmup_pod(pod, &p.hash)?))
        })
        .collect();
    let warmup = Warmup {
        gate: WarmupGate { timeout: p.timeout },
        pods,
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for object in plan::warmup_objects(&p, &s.config.pause_image, taints) {
        if let Err(e) = apply_workload_object(&w.client, &object, &params).await {
            report.set(
                t,
                false,
                reasons::WRITE_FAILED,
                format!(
                    "applying the image warm-up's {} in the workload cluster failed: {}",
                    object["kind"].as_str().unwrap_or("object"),
                    describe_kube_error(&e)
                ),
                generation,
            );
            s.workloads.recheck(
                &oswc.namespace().unwrap_or_default(),
                &cluster_name_of(oswc),
            );
            return Some(warmup);
        }
    }
    let timeout = settings::format_duration(p.timeout);
    let mut what = format!(
        "DaemonSet {}/{} of the workload cluster pre-pulls {} image(s) ({})",
        plan::WARMUP_NAMESPACE,
        plan::WARMUP_NAME,
        p.images.len(),
        p.images.join(", ")
    );
    if !p.ignored.is_empty() {
        what.push_str(&format!(
            "; ignored by spec.nodeLifecycle.imageWarmup.ignore: {}",
            p.ignored.join(", ")
        ));
    }
    let mut names: Vec<String> = w.nodes.state().iter().map(|n| n.name_any()).collect();
    names.sort();
    let (mut done, mut pending, mut failing) = (0usize, Vec::new(), Vec::new());
    for name in &names {
        match warmup.pods.get(name) {
            Some(pod) if pod.ready => done += 1,
            Some(pod) if !pod.problems.is_empty() => failing.push(format!(
                "Node {name}: {}",
                plan::WarmupWait::Failing(pod.problems.clone()).describe()
            )),
            Some(pod) => pending.push(format!(
                "{name} ({} of {} images pulled)",
                pod.pulled, pod.total
            )),
            None => pending.push(format!("{name} (no warm-up pod yet)")),
        }
    }
    let progress = format!("pulled on {done} of {} Node(s)", names.len());
    let (pending, failing) = (first_of(&pending, ", "), first_of(&failing, "; "));
    let (ok, reason, message) = if !failing.is_empty() {
        (
            false,
            reasons::IMAGE_WARMUP_FAILED,
            format!(
                "{what}; {progress}; {failing}. A Node with a startup taint keeps it for at most {timeout} (spec.nodeLifecycle.imageWarmup.timeout) after it turned Ready, then capow removes it anyway; fix the image reference or the registry access, or add the image to spec.nodeLifecycle.imageWarmup.ignore"
            ),
        )
    } else if pending.is_empty() {
        (true, reasons::WARMED_UP, format!("{what}; {progress}"))
    } else {
        (
            true,
            reasons::WARMING_UP,
            format!("{what}; {progress}; warming up: {pending}"),
        )
    };
    if !ok {
        warn_on_new_problem(s, oswc, before, t, "ImageWarmup", &message).await;
    }
    report.set(t, ok, reason, message, generation);
    Some(warmup)
}

/// The first [`LISTED_NODES`] of `items` joined by `sep`, and how many more there are: keeps a
/// condition message of a large cluster far below the 32768 characters `metav1.Condition`
/// allows (Kubernetes v1.36 API reference, Condition).
fn first_of(items: &[String], sep: &str) -> String {
    let mut out = items
        .iter()
        .take(LISTED_NODES)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > LISTED_NODES {
        out.push_str(&format!(" and {} more", items.len() - LISTED_NODES));
    }
    out
}

/// Nodes a warm-up condition message names at most.
const LISTED_NODES: usize = 10;

/// Deletes the image warm-up DaemonSet and its Namespace from the workload cluster; "not found"
/// counts as done.
async fn remove_warmup(w: &Workload) -> Result<(), kube::Error> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Namespace;
    let gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    };
    gone(
        Api::<DaemonSet>::namespaced(w.client.clone(), plan::WARMUP_NAMESPACE)
            .delete(plan::WARMUP_NAME, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<Namespace>::all(w.client.clone())
            .delete(plan::WARMUP_NAMESPACE, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}

/// Server-side applies `object` (a Namespace, PriorityClass, Deployment or DaemonSet as JSON)
/// in the workload cluster; for the Deployment returns its `status.readyReplicas`.
async fn apply_workload_object(
    client: &kube::Client,
    object: &serde_json::Value,
    params: &PatchParams,
) -> Result<Option<i32>, kube::Error> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["kind"].as_str() {
        Some("Namespace") => {
            Api::<Namespace>::all(client.clone())
                .patch(name, params, &Patch::Apply(object))
                .await?;
            Ok(None)
        }
        Some("PriorityClass") => {
            Api::<PriorityClass>::all(client.clone())
                .patch(name, params, &Patch::Apply(object))
                .await?;
            Ok(None)
        }
        Some("DaemonSet") => {
            Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(
                client.clone(),
                plan::WARMUP_NAMESPACE,
            )
            .patch(name, params, &Patch::Apply(object))
            .await?;
            Ok(None)
        }
        _ => {
            let d = Api::<Deployment>::namespaced(client.clone(), plan::HEADROOM_NAMESPACE)
                .patch(name, params, &Patch::Apply(object))
                .await?;
            Ok(Some(d.status.and_then(|st| st.ready_replicas).unwrap_or(0)))
        }
    }
}

/// Deletes the headroom's namespace (and with it the placeholders) and PriorityClass from the
/// workload cluster; "not found" counts as done.
async fn remove_headroom(w: &Workload) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let gone = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    };
    gone(
        Api::<Namespace>::all(w.client.clone())
            .delete(plan::HEADROOM_NAMESPACE, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<PriorityClass>::all(w.client.clone())
            .delete(plan::HEADROOM_NAME, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}

/// Removes `taint` from `node` with a JSON patch that first tests the taints are still those
/// of the cached Node (taints are an atomic list): `Ok(false)` when they changed meanwhile.
async fn remove_taint(w: &Workload, node: &Node, taint: &Taint) -> Result<bool, kube::Error> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let remaining: Vec<_> = current
        .iter()
        .filter(|t| !(t.key == taint.key && t.effect == taint.effect))
        .cloned()
        .collect();
    let ops = json!([
        {"op": "test", "path": "/spec/taints", "value": current},
        {"op": "replace", "path": "/spec/taints", "value": remaining},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    let api: Api<Node> = Api::all(w.client.clone());
    match api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        // A failed test is 422; a Node gone is 404.
        Err(kube::Error::Api(st)) if st.code == 422 || st.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies `status.nodeLifecycle` (only when it changed), with [`FIELD_MANAGER`]; the
/// conditions keep their `lastTransitionTime` while their status does not change.
async fn write_status(
    s: &Shared,
    oswc: &OpenStackWorkerCluster,
    before: &NodeLifecycleStatus,
    fresh: Vec<Condition>,
    generation: Option<i64>,
) -> Result<(), Error> {
    let mut list: Vec<Condition> = before
        .conditions
        .iter()
        .filter(|c| fresh.iter().any(|f| f.type_ == c.type_))
        .cloned()
        .collect();
    for c in fresh {
        conditions::set_condition(&mut list, c);
    }
    let after = NodeLifecycleStatus {
        observed_generation: if list.is_empty() { None } else { generation },
        conditions: list,
    };
    let had_status = oswc
        .status
        .as_ref()
        .is_some_and(|st| st.node_lifecycle.is_some());
    if conditions::same_conditions(&before.conditions, &after.conditions)
        && before.observed_generation == after.observed_generation
        && (had_status || after.conditions.is_empty())
    {
        return Ok(());
    }
    let status = if after == NodeLifecycleStatus::default() {
        json!({})
    } else {
        json!({ "nodeLifecycle": after })
    };
    let patch = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "OpenStackWorkerCluster",
        "metadata": { "name": oswc.name_any() },
        "status": status,
    });
    Api::<OpenStackWorkerCluster>::namespaced(
        s.ctx.client.clone(),
        &oswc.namespace().unwrap_or_default(),
    )
    .patch_status(
        &oswc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::Kube {
        action: "write status.nodeLifecycle",
        message: describe_kube_error(&e),
    })?;
    Ok(())
}

impl run::Failure for Error {
    fn timed_out(bound: Duration) -> Self {
        Error::TimedOut(bound)
    }

    fn category(&self) -> &'static str {
        match self {
            Error::NotSynced => "not_synced",
            Error::Kube { .. } => "kube",
            Error::TimedOut(_) => "timeout",
        }
    }
}

fn error_policy(oswc: Arc<OpenStackWorkerCluster>, error: &Error, s: Arc<Shared>) -> Action {
    let retry = Duration::from_secs(if matches!(error, Error::NotSynced) {
        5
    } else {
        30
    });
    run::requeue(&s.ctx.metrics, CONTROLLER, &*oswc, error, retry)
}

/// What of a Machine the controller reacts to: deletion, annotations, node and providerID.
fn machine_fingerprint(m: &Machine) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.metadata.deletion_timestamp.is_some().hash(&mut h);
    m.metadata.annotations.hash(&mut h);
    m.metadata.labels.hash(&mut h);
    m.spec.provider_id.hash(&mut h);
    m.status
        .as_ref()
        .and_then(|s| s.node_ref.as_ref())
        .map(|n| n.name.clone())
        .hash(&mut h);
    Some(h.finish())
}

/// Runs the controller until `shutdown`, on the manager's shared `caches`.
pub async fn run_controller(
    ctx: Arc<Context>,
    caches: &crate::caches::Caches,
    config: LifecycleConfig,
    metrics: LifecycleMetrics,
    shutdown: CancellationToken,
) {
    let oswcs = caches.infra_clusters.store();
    let oswc_stream = caches
        .infra_clusters
        .subscribe_changes(crate::controllers::own_changes)
        .await;
    let clusters = caches.clusters.store();
    let cluster_filter = capi::ClusterEventFilter::default();
    let cluster_stream = caches.clusters.subscribe().await;
    let md_stream = caches.machine_deployments.subscribe().await;
    let machine_stream = caches.machines.subscribe_changes(machine_fingerprint).await;
    let (mds, machine_sets, machines, templates) = (
        caches.machine_deployments.store(),
        caches.machine_sets.store(),
        caches.machines.store(),
        caches.templates.store(),
    );
    let (trigger, triggered) = tokio::sync::mpsc::channel(256);
    let shared = Arc::new(Shared {
        workloads: Workloads::new(trigger, ctx.config.kube),
        ctx: ctx.clone(),
        config,
        metrics,
        oswcs: oswcs.clone(),
        clusters: clusters.clone(),
        mds,
        machine_sets,
        machines,
        templates,
    });
    let (c1, c2, c3) = (clusters.clone(), clusters.clone(), clusters);
    let results = Controller::for_shared_stream(oswc_stream, oswcs)
        .with_config(ControllerRunConfig::default().concurrency(4))
        .watches_shared_stream(cluster_stream, move |c: Arc<Cluster>| {
            if !cluster_filter.relevant(&c) {
                return None;
            }
            infra_of(&c1, &c.namespace().unwrap_or_default(), &c.name_any())
        })
        .watches_shared_stream(md_stream, move |md: Arc<MachineDeployment>| {
            infra_of_member(&c2, &*md, &md.spec.cluster_name)
        })
        .watches_shared_stream(machine_stream, move |m: Arc<Machine>| {
            infra_of_member(&c3, &*m, &m.spec.cluster_name)
        })
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(triggered))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, shared);
    run::drain(CONTROLLER, results).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_messages_name_at_most_ten_nodes() {
        let few: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
        assert_eq!(first_of(&few, ", "), "n0, n1, n2");
        let many: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
        let text = first_of(&many, ", ");
        assert!(
            text.starts_with("n0, n1,") && text.ends_with("n9 and 15 more"),
            "{text}"
        );
    }
}
