//! The node-group index (pure): built from snapshots of the watched MachineDeployments,
//! MachineSets, Machines, OpenStackWorkerMachines, OpenStackWorkerMachineTemplates and
//! OpenStackWorkerClusters, it answers every read RPC without calling the API server or
//! OpenStack.
//!
//! Semantics follow the in-tree cluster-autoscaler clusterapi provider (cluster-autoscaler-1.36.1
//! `cloudprovider/clusterapi/`: `README.md`, `clusterapi_controller.go`,
//! `clusterapi_nodegroup.go`, `clusterapi_unstructured.go`): a node group is a
//! MachineDeployment (or a MachineSet no MachineDeployment owns) whose infrastructure template
//! is an `OpenStackWorkerMachineTemplate` and whose max-size annotation is > 0; its id is
//! `<Kind>/<namespace>/<name>` (`unstructuredScalableResource.ID`); instance ids are
//! providerIDs. Unlike the in-tree provider, capow reads the server's state, so Nova ERROR,
//! quota and NoValidHost failures reach CA as `instanceCreating` with an error class at once.
//! The in-tree provider sees a failed Machine only through a top-level `status.failureMessage`
//! (`findScalableResourceProviderIDs`), which a CAPI v1beta2 Machine keeps only under
//! `status.deprecated.v1beta1` (cluster-api v1.14.2 `api/core/v1beta2/machine_types.go`), so
//! there such a Machine counts as pending until CA's `--max-node-provision-time` runs out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use kube::ResourceExt;

use super::options;
use super::pricing::Rates;
pub use crate::api::autoscaling::{
    FROZEN_CONSEQUENCE, SIZE_RULE, SizeLimits, TEMPLATE_ANNOTATION_PREFIXES, effective_annotations,
    size_limits,
};
use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::conditions::{READY, reasons};
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::machine_template::OpenStackWorkerMachineTemplate;
use crate::capi::{self, Machine, MachineDeployment, MachineSet, MachineTemplateSpec};

/// `InstanceErrorClass` values of cluster-autoscaler (`pkg/cloudprovider/cloud_provider.go`).
pub mod error_class {
    /// Stockout or quota: CA backs the group off and tries another one.
    pub const OUT_OF_RESOURCES: i32 = 1;
    /// Anything else.
    pub const OTHER: i32 = 99;
}

/// A cluster, as `<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// Namespace.
    pub namespace: String,
    /// Cluster name.
    pub name: String,
}

/// Everything the index is built from (cheap clones of reflector store contents).
#[derive(Clone, Default)]
pub struct Snapshot {
    /// MachineDeployments.
    pub machine_deployments: Vec<Arc<MachineDeployment>>,
    /// MachineSets.
    pub machine_sets: Vec<Arc<MachineSet>>,
    /// Machines.
    pub machines: Vec<Arc<Machine>>,
    /// OpenStackWorkerMachines.
    pub infra_machines: Vec<Arc<OpenStackWorkerMachine>>,
    /// OpenStackWorkerMachineTemplates.
    pub templates: Vec<Arc<OpenStackWorkerMachineTemplate>>,
    /// OpenStackWorkerClusters.
    pub infra_clusters: Vec<Arc<OpenStackWorkerCluster>>,
}

impl Snapshot {
    /// Whether `other` holds the very same objects in the same order (pointer equality of
    /// every `Arc`). A reflector store hands out the same `Arc` for an object until a watch
    /// event replaces it, so two snapshots of unchanged stores compare equal in time linear in
    /// the number of objects, without looking into them.
    pub fn same_objects(&self, other: &Snapshot) -> bool {
        fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        }
        same(&self.machine_deployments, &other.machine_deployments)
            && same(&self.machine_sets, &other.machine_sets)
            && same(&self.machines, &other.machines)
            && same(&self.infra_machines, &other.infra_machines)
            && same(&self.templates, &other.templates)
            && same(&self.infra_clusters, &other.infra_clusters)
    }
}

/// State of one instance as CA sees it (`InstanceStatus.InstanceState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// The server runs (ACTIVE) or the Machine has a Node.
    Running,
    /// Not there yet, or failed to come up (then with an error).
    Creating,
    /// Being deleted.
    Deleting,
}

/// Why an instance failed to come up (`InstanceErrorInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceError {
    /// Short machine-readable code, e.g. `QuotaExceeded`.
    pub code: String,
    /// Human-readable message (Nova's fault or OpenStack's answer).
    pub message: String,
    /// [`error_class`].
    pub class: i32,
}

/// One instance of a node group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// providerID (`openstack:///<uuid>`), or `capow://pending/<ns>/<machine>` while no
    /// server exists.
    pub id: String,
    /// Machine name.
    pub machine: String,
    /// State.
    pub state: InstanceState,
    /// Error, for failed creations.
    pub error: Option<InstanceError>,
    /// True when a server exists (the instance is "real" for DecreaseTargetSize).
    pub has_server: bool,
}

/// Scalable resource kind of a node group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// A MachineDeployment.
    MachineDeployment,
    /// A MachineSet no MachineDeployment owns.
    MachineSet,
}

impl GroupKind {
    /// Kind name as in the node group id.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::MachineDeployment => "MachineDeployment",
            GroupKind::MachineSet => "MachineSet",
        }
    }
}

/// A node group.
#[derive(Clone, Debug)]
pub struct NodeGroup {
    /// `<Kind>/<namespace>/<name>`.
    pub id: String,
    /// Kind.
    pub kind: GroupKind,
    /// Namespace.
    pub namespace: String,
    /// Name of the MachineDeployment or MachineSet.
    pub name: String,
    /// Cluster it belongs to.
    pub cluster: ClusterKey,
    /// Minimum size (annotation, default 0).
    pub min_size: i32,
    /// Maximum size (annotation).
    pub max_size: i32,
    /// `spec.replicas`.
    pub target_size: i32,
    /// Annotations of the MachineDeployment/MachineSet (capacity and options overrides).
    pub annotations: BTreeMap<String, String>,
    /// The Machines' template (labels, taints, failure domain).
    pub machine_template: MachineTemplateSpec,
    /// The infrastructure template, if it exists.
    pub template: Option<Arc<OpenStackWorkerMachineTemplate>>,
    /// OpenStack region of the cluster's identity (for the region label).
    pub region: Option<String>,
    /// Instances, sorted by id.
    pub instances: Vec<Instance>,
    /// Why the group is frozen (its size annotations are invalid, see [`size_limits`]): then
    /// `min_size == max_size == target_size` and every write is refused. `None` normally.
    pub frozen: Option<String>,
    /// The startup taint the group's Nodes register with (the cluster's
    /// `spec.nodeLifecycle.startupTaint`, or the MachineDeployment's annotation;
    /// `crate::api::lifecycle::settings::startup_taint`), `None` when off.
    pub startup_taint: Option<crate::api::lifecycle::settings::Taint>,
}

impl NodeGroup {
    /// Debug string CA logs (`NodeGroup.debug`).
    pub fn debug(&self) -> String {
        let frozen = match &self.frozen {
            Some(why) => format!(", frozen: {why}"),
            None => String::new(),
        };
        format!(
            "{} (min: {}, max: {}, target: {}, instances: {}{frozen})",
            self.id,
            self.min_size,
            self.max_size,
            self.target_size,
            self.instances.len()
        )
    }
}

/// An autoscaling annotation whose value capow cannot use, found while building the index.
/// Reported to people as a Warning event on the group's MachineDeployment/MachineSet and as a
/// metric ([`super::report`]); the index itself only lists them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnnotationProblem {
    /// Node group id (`<Kind>/<namespace>/<name>`).
    pub group: String,
    /// Kind of the object the group is (the event's subject).
    pub kind: GroupKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID, when known.
    pub uid: Option<String>,
    /// The cluster the group belongs to.
    pub cluster: ClusterKey,
    /// Where the value was read: `MachineDeployment ns/name` or
    /// `OpenStackWorkerMachineTemplate ns/name`.
    pub source: String,
    /// The annotation key.
    pub annotation: String,
    /// The value as written.
    pub value: String,
    /// The rule it breaks, as a sentence part (`it must be a whole number ≥ 0`).
    pub rule: String,
    /// What capow does instead, as a sentence part.
    pub consequence: String,
}

impl AnnotationProblem {
    /// The message for people: annotation, value, rule, consequence, e.g. `annotation
    /// cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size is "1.0" on MachineDeployment
    /// ns/md-0; it must be a whole number ≥ 0; the node group is served with min = max = its
    /// current replicas until it is fixed`.
    pub fn message(&self) -> String {
        format!(
            "annotation {} is {:?} on {}; {}; {}",
            self.annotation, self.value, self.source, self.rule, self.consequence
        )
    }
}

/// Node groups of one view (a cluster, or all clusters when unscoped).
#[derive(Clone, Debug, Default)]
pub struct Index {
    groups: BTreeMap<String, NodeGroup>,
    by_instance: HashMap<String, String>,
    problems: Vec<AnnotationProblem>,
    /// The cheapest per-vCPU and per-GiB rates of the groups, computed on first use: CA asks
    /// `PricingPodPrice` for every pending pod of every expansion option.
    pod_rates: OnceLock<Option<Rates>>,
}

fn cluster_of(
    namespace: &str,
    cluster_name: &str,
    labels: &BTreeMap<String, String>,
) -> ClusterKey {
    let name = if cluster_name.is_empty() {
        labels
            .get(capi::CLUSTER_NAME_LABEL)
            .cloned()
            .unwrap_or_default()
    } else {
        cluster_name.to_owned()
    };
    ClusterKey {
        namespace: namespace.to_owned(),
        name,
    }
}

/// The `(code, class)` of an OpenStackWorkerMachine whose server did not come up, from its
/// `Ready` condition: quota (Nova 403/413 "Quota exceeded", Neutron `OverQuota`) and "No valid
/// host" are out of resources; a refused create, a bad spec or a server in ERROR otherwise are
/// other errors.
pub fn creation_error(m: &OpenStackWorkerMachine) -> Option<InstanceError> {
    let c = m
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == "False")?;
    let failure = matches!(
        c.reason.as_str(),
        reasons::INSTANCE_STATE_ERROR
            | reasons::INSTANCE_CREATE_FAILED
            | reasons::PORT_CREATE_FAILED
            | reasons::VOLUME_CREATE_FAILED
            | reasons::INVALID_MACHINE_SPEC
            | reasons::INVALID_IDENTITY
            | reasons::OPENSTACK_AUTHENTICATION_FAILED
    );
    if !failure {
        return None;
    }
    let msg = c.message.to_ascii_lowercase();
    let (code, class) = if msg.contains("quota exceeded")
        || msg.contains("overquota")
        || msg.contains("http 413")
    {
        ("QuotaExceeded", error_class::OUT_OF_RESOURCES)
    } else if msg.contains("no valid host") {
        ("NoValidHost", error_class::OUT_OF_RESOURCES)
    } else {
        (c.reason.as_str(), error_class::OTHER)
    };
    Some(InstanceError {
        code: code.to_owned(),
        message: c.message.clone(),
        class,
    })
}

/// Instance id of a Machine: its providerID, else its server's, else a pending placeholder.
fn instance_id(
    machine: &Machine,
    infra: Option<&OpenStackWorkerMachine>,
    region: Option<&str>,
) -> (String, bool) {
    if let Some(p) = machine.spec.provider_id.as_ref().filter(|p| !p.is_empty()) {
        return (p.clone(), true);
    }
    if let Some(m) = infra {
        if let Some(p) = m.spec.provider_id.as_ref().filter(|p| !p.is_empty()) {
            return (p.clone(), true);
        }
        if let Some(id) = m.status.as_ref().and_then(|s| s.instance_id.as_ref()) {
            return (crate::api::ownership::provider_id(region, id), true);
        }
    }
    (
        pending_id(
            &machine.namespace().unwrap_or_default(),
            &machine.name_any(),
        ),
        false,
    )
}

/// Placeholder instance id of a Machine without a server.
pub fn pending_id(namespace: &str, machine: &str) -> String {
    format!("capow://pending/{namespace}/{machine}")
}

fn instance_of(
    machine: &Machine,
    infra: Option<&OpenStackWorkerMachine>,
    region: Option<&str>,
) -> Instance {
    let (id, has_server) = instance_id(machine, infra, region);
    let deleting = machine.metadata.deletion_timestamp.is_some()
        || infra.is_some_and(|m| m.metadata.deletion_timestamp.is_some());
    let running = machine
        .status
        .as_ref()
        .and_then(|s| s.node_ref.as_ref())
        .is_some_and(|n| !n.name.is_empty())
        || infra
            .and_then(|m| m.status.as_ref())
            .and_then(|s| s.instance_state.as_deref())
            .is_some_and(|s| s == "ACTIVE");
    let (state, error) = if deleting {
        (InstanceState::Deleting, None)
    } else if running {
        (InstanceState::Running, None)
    } else {
        (InstanceState::Creating, infra.and_then(creation_error))
    };
    Instance {
        id,
        machine: machine.name_any(),
        state,
        error,
        has_server,
    }
}

/// The objects [`Index::build`] looks up by namespace and name.
struct Lookups<'a> {
    templates: HashMap<(String, String), &'a Arc<OpenStackWorkerMachineTemplate>>,
    infra_machines: HashMap<(String, String), &'a Arc<OpenStackWorkerMachine>>,
    /// By namespace and the name of the CAPI Cluster (its `cluster.x-k8s.io/cluster-name`
    /// label, else its own name).
    infra_clusters: HashMap<(String, String), &'a Arc<OpenStackWorkerCluster>>,
}

impl<'a> Lookups<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        Self {
            templates: snapshot.templates.iter().map(|t| (key(&**t), t)).collect(),
            infra_machines: snapshot
                .infra_machines
                .iter()
                .map(|m| (key(&**m), m))
                .collect(),
            infra_clusters: snapshot
                .infra_clusters
                .iter()
                .map(|c| {
                    let cluster = c
                        .labels()
                        .get(capi::CLUSTER_NAME_LABEL)
                        .cloned()
                        .unwrap_or_else(|| c.name_any());
                    ((c.namespace().unwrap_or_default(), cluster), c)
                })
                .collect(),
        }
    }
}

/// The namespace and name of an object, the key of [`Lookups`].
fn key<K: kube::Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// A MachineDeployment or MachineSet that may be a node group.
struct Owner<'a> {
    kind: GroupKind,
    ns: String,
    name: String,
    uid: Option<String>,
    cluster: ClusterKey,
    replicas: Option<i32>,
    annotations: &'a BTreeMap<String, String>,
    template: &'a MachineTemplateSpec,
}

/// The state of [`Index::build`]: the groups and annotation problems found so far.
struct Builder<'a> {
    lookups: Lookups<'a>,
    scope: Option<&'a ClusterKey>,
    groups: BTreeMap<String, NodeGroup>,
    problems: Vec<AnnotationProblem>,
}

impl Builder<'_> {
    /// Adds `owner` as a node group when it is in scope, not paused, uses an
    /// OpenStackWorkerMachineTemplate and carries size annotations (its own or its
    /// template's); records its unusable annotations.
    fn add(&mut self, owner: Owner<'_>) {
        let Owner {
            kind,
            ns,
            name,
            uid,
            cluster,
            replicas,
            annotations: own,
            template,
        } = owner;
        let r = &template.spec.infrastructure_ref;
        let in_scope = self
            .scope
            .is_none_or(|s| s.namespace == ns && s.name == cluster.name);
        if r.kind != "OpenStackWorkerMachineTemplate" || !in_scope {
            return;
        }
        if capi::has_paused_annotation(own) {
            return;
        }
        let infra_template = self.lookups.templates.get(&(ns.clone(), r.name.clone()));
        let annotations = effective_annotations(own, infra_template.map(|t| t.as_ref()));
        let limits = size_limits(&annotations);
        let id = format!("{}/{ns}/{name}", kind.as_str());
        let problem = |annotation: String, value: String, rule: String, consequence: &str| {
            let source = if own.contains_key(&annotation) {
                format!("{} {ns}/{name}", kind.as_str())
            } else {
                format!("OpenStackWorkerMachineTemplate {ns}/{}", r.name)
            };
            AnnotationProblem {
                group: id.clone(),
                kind,
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.clone(),
                cluster: cluster.clone(),
                source,
                annotation,
                value,
                rule,
                consequence: consequence.to_owned(),
            }
        };
        let target = replicas.unwrap_or(0);
        let (min, max, frozen) = match limits {
            SizeLimits::Valid { min, max } => (min, max, None),
            SizeLimits::Invalid(bad) => {
                let why = bad
                    .iter()
                    .map(|(a, v, _)| format!("{a}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                for (annotation, value, rule) in bad {
                    self.problems
                        .push(problem(annotation, value, rule, FROZEN_CONSEQUENCE));
                }
                (target, target, Some(format!("invalid {why}")))
            }
            SizeLimits::NotAutoscaled => return,
        };
        for e in options::validate(&annotations) {
            self.problems.push(problem(
                e.annotation,
                e.value,
                e.rule,
                options::INVALID_CONSEQUENCE,
            ));
        }
        let infra_cluster = self
            .lookups
            .infra_clusters
            .get(&(ns.clone(), cluster.name.clone()));
        let region = infra_cluster.and_then(|c| c.spec.identity_ref.region.clone());
        // An unusable annotation falls back to the cluster's taint, as the lifecycle
        // controller does (which also reports it).
        let lifecycle = infra_cluster.and_then(|c| c.spec.node_lifecycle.as_ref());
        let startup_taint = crate::api::lifecycle::settings::startup_taint(lifecycle, &annotations)
            .unwrap_or_else(|e| e.1);
        self.groups.insert(
            id.clone(),
            NodeGroup {
                id,
                kind,
                template: infra_template.map(|t| Arc::clone(t)),
                namespace: ns,
                name,
                cluster,
                min_size: min,
                max_size: max,
                target_size: target,
                annotations,
                machine_template: template.clone(),
                region,
                instances: Vec::new(),
                frozen,
                startup_taint,
            },
        );
    }

    /// Adds the MachineSets no MachineDeployment owns as groups of their own; returns the
    /// group id of every MachineSet by namespace and name (its MachineDeployment's, else its
    /// own).
    fn add_machine_sets(&mut self, sets: &[Arc<MachineSet>]) -> HashMap<(String, String), String> {
        let mut set_owner = HashMap::new();
        for ms in sets {
            let ns = ms.namespace().unwrap_or_default();
            let owner_md = ms
                .owner_references()
                .iter()
                .find(|o| o.kind == "MachineDeployment")
                .map(|o| o.name.clone())
                .or_else(|| ms.labels().get(capi::DEPLOYMENT_NAME_LABEL).cloned());
            if let Some(md) = owner_md {
                let id = format!("MachineDeployment/{ns}/{md}");
                set_owner.insert((ns, ms.name_any()), id);
                continue;
            }
            let cluster = cluster_of(&ns, &ms.spec.cluster_name, ms.labels());
            let id = format!("MachineSet/{ns}/{}", ms.name_any());
            set_owner.insert((ns.clone(), ms.name_any()), id);
            self.add(Owner {
                kind: GroupKind::MachineSet,
                ns,
                name: ms.name_any(),
                uid: ms.uid(),
                cluster,
                replicas: ms.spec.replicas,
                annotations: ms.annotations(),
                template: &ms.spec.template,
            });
        }
        set_owner
    }

    /// Adds every Machine of a group as its instance (by its MachineSet's group, else its
    /// MachineDeployment label); returns the group id of every instance id.
    fn add_machines(
        &mut self,
        machines: &[Arc<Machine>],
        set_owner: &HashMap<(String, String), String>,
    ) -> HashMap<String, String> {
        let mut by_instance = HashMap::new();
        for machine in machines {
            let ns = machine.namespace().unwrap_or_default();
            let labels = machine.labels();
            // CAPI labels every Machine with its MachineSet and MachineDeployment.
            let group_id = labels
                .get(capi::SET_NAME_LABEL)
                .and_then(|set| set_owner.get(&(ns.clone(), set.clone())).cloned())
                .or_else(|| {
                    labels
                        .get(capi::DEPLOYMENT_NAME_LABEL)
                        .map(|md| format!("MachineDeployment/{ns}/{md}"))
                });
            let Some(group) = group_id.and_then(|id| self.groups.get_mut(&id)) else {
                continue;
            };
            let infra = (machine.spec.infrastructure_ref.kind == "OpenStackWorkerMachine")
                .then(|| {
                    self.lookups
                        .infra_machines
                        .get(&(ns.clone(), machine.spec.infrastructure_ref.name.clone()))
                })
                .flatten()
                .map(|m| m.as_ref());
            let instance = instance_of(machine, infra, group.region.as_deref());
            by_instance.insert(instance.id.clone(), group.id.clone());
            group.instances.push(instance);
        }
        by_instance
    }
}

impl Index {
    /// Builds the node groups of the clusters `scope` admits (`None`: all clusters).
    pub fn build(snapshot: &Snapshot, scope: Option<&ClusterKey>) -> Index {
        let mut builder = Builder {
            lookups: Lookups::new(snapshot),
            scope,
            groups: BTreeMap::new(),
            problems: Vec::new(),
        };
        for md in &snapshot.machine_deployments {
            let ns = md.namespace().unwrap_or_default();
            let cluster = cluster_of(&ns, &md.spec.cluster_name, md.labels());
            builder.add(Owner {
                kind: GroupKind::MachineDeployment,
                ns,
                name: md.name_any(),
                uid: md.uid(),
                cluster,
                replicas: md.spec.replicas,
                annotations: md.annotations(),
                template: &md.spec.template,
            });
        }
        let set_owner = builder.add_machine_sets(&snapshot.machine_sets);
        let by_instance = builder.add_machines(&snapshot.machines, &set_owner);
        let Builder {
            mut groups,
            mut problems,
            ..
        } = builder;
        for g in groups.values_mut() {
            g.instances.sort_by(|a, b| a.id.cmp(&b.id));
        }
        problems.sort_by(|a, b| (&a.group, &a.annotation).cmp(&(&b.group, &b.annotation)));
        Index {
            groups,
            by_instance,
            problems,
            pod_rates: OnceLock::new(),
        }
    }

    /// The cheapest pod-pricing rates of these groups ([`Rates::cheapest`]), computed once per
    /// index; `None` when no group has a price.
    pub fn pod_rates(&self) -> Option<&Rates> {
        self.pod_rates
            .get_or_init(|| Rates::cheapest(self.groups()))
            .as_ref()
    }

    /// The unusable autoscaling annotations of the groups in this view, sorted by group and
    /// annotation.
    pub fn problems(&self) -> &[AnnotationProblem] {
        &self.problems
    }

    /// All node groups, sorted by id.
    pub fn groups(&self) -> impl Iterator<Item = &NodeGroup> {
        self.groups.values()
    }

    /// The node group `id`.
    pub fn group(&self, id: &str) -> Option<&NodeGroup> {
        self.groups.get(id)
    }

    /// Sets the target size of node group `id` (a size capow wrote that the stores do not show
    /// yet, see [`super::written`]); no-op for an unknown group.
    pub fn set_target_size(&mut self, id: &str, size: i32) {
        if let Some(g) = self.groups.get_mut(id) {
            g.target_size = size;
            if g.frozen.is_some() {
                g.min_size = size;
                g.max_size = size;
            }
        }
    }

    /// The node group of the instance with providerID (or placeholder id) `id`. providerIDs
    /// match exactly; as CA's clusterapi provider normalises providerIDs to their last path
    /// segment (cluster-autoscaler-1.36.1 `cloudprovider/clusterapi/clusterapi_utils.go`,
    /// `normalizedProviderString`), a bare server UUID also matches.
    pub fn group_of_instance(&self, id: &str) -> Option<&NodeGroup> {
        if id.is_empty() {
            return None;
        }
        if let Some(g) = self.by_instance.get(id) {
            return self.groups.get(g);
        }
        let uuid = id.rsplit('/').next().unwrap_or(id);
        self.by_instance
            .iter()
            .find(|(k, _)| k.starts_with("openstack://") && k.rsplit('/').next() == Some(uuid))
            .and_then(|(_, g)| self.groups.get(g))
    }

    /// Number of node groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when there is no node group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
#[allow(
    clippy::field_reassign_with_default,
    reason = "fixtures fill a snapshot field by field"
)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    pub(crate) fn md(
        ns: &str,
        name: &str,
        replicas: i32,
        annotations: serde_json::Value,
    ) -> Arc<MachineDeployment> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
                "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                "spec": {"clusterName": "c1", "replicas": replicas, "template": {
                    "metadata": {"labels": {"node-role.kubernetes.io/worker": "", "team": "a"}},
                    "spec": {"clusterName": "c1", "bootstrap": {}, "failureDomain": "az1",
                             "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachineTemplate", "name": format!("{name}-t")}}}}
            }))
            .unwrap(),
        )
    }

    pub(crate) fn machine(
        ns: &str,
        name: &str,
        md: &str,
        provider_id: Option<&str>,
        node: bool,
    ) -> Arc<Machine> {
        let mut v = json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": name, "namespace": ns, "labels": {"cluster.x-k8s.io/deployment-name": md, "cluster.x-k8s.io/cluster-name": "c1"}},
            "spec": {"clusterName": "c1", "bootstrap": {}, "infrastructureRef": {"kind": "OpenStackWorkerMachine", "name": name}}
        });
        if let Some(p) = provider_id {
            v["spec"]["providerID"] = json!(p);
        }
        if node {
            v["status"] = json!({"nodeRef": {"name": name}});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    pub(crate) fn infra(
        ns: &str,
        name: &str,
        instance: Option<&str>,
        state: Option<&str>,
        ready: Option<(&str, &str)>,
    ) -> Arc<OpenStackWorkerMachine> {
        let mut v = json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"flavor": {"id": "1"}, "image": {"id": "i"}},
            "status": {}
        });
        if let Some(i) = instance {
            v["status"]["instanceID"] = json!(i);
        }
        if let Some(s) = state {
            v["status"]["instanceState"] = json!(s);
        }
        if let Some((reason, message)) = ready {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": reason, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn scaling(min: i32, max: i32) -> serde_json::Value {
        json!({
            "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": min.to_string(),
            "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": max.to_string(),
        })
    }

    #[test]
    fn a_group_carries_the_cluster_startup_taint() {
        let mut s = snapshot();
        s.infra_clusters = vec![Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerCluster",
                "metadata": {"name": "c1", "namespace": "ns", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
                "spec": {"identityRef": {"name": "x", "cloudName": "y"}, "nodeLifecycle": {"startupTaint": {}}}
            }))
            .unwrap(),
        )];
        let index = Index::build(&s, None);
        let g = index.group("MachineDeployment/ns/md-0").unwrap();
        assert_eq!(
            g.startup_taint.as_ref().map(|t| t.key.as_str()),
            Some(crate::api::lifecycle::DEFAULT_STARTUP_TAINT_KEY)
        );
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.machine_deployments = vec![
            md("ns", "md-0", 3, scaling(1, 5)),
            md("ns", "not-autoscaled", 1, json!({})),
            md("other", "md-0", 1, scaling(0, 2)),
        ];
        s.machines = vec![
            machine("ns", "m-running", "md-0", Some("openstack:///u-1"), true),
            machine("ns", "m-building", "md-0", None, false),
            machine("ns", "m-quota", "md-0", None, false),
            machine("ns", "m-nothing", "md-0", None, false),
            machine("ns", "x", "not-autoscaled", Some("openstack:///u-9"), true),
        ];
        s.infra_machines = vec![
            infra("ns", "m-running", Some("u-1"), Some("ACTIVE"), None),
            infra("ns", "m-building", Some("u-2"), Some("BUILD"), None),
            infra(
                "ns",
                "m-quota",
                None,
                None,
                Some((
                    "InstanceCreateFailed",
                    "failed to create the server: compute server_create failed with HTTP 403 Forbidden: Quota exceeded for cores",
                )),
            ),
        ];
        s
    }

    #[test]
    fn groups_need_the_template_kind_and_a_max_size() {
        let index = Index::build(&snapshot(), None);
        let ids: Vec<_> = index.groups().map(|g| g.id.as_str()).collect();
        assert_eq!(
            ids,
            ["MachineDeployment/ns/md-0", "MachineDeployment/other/md-0"]
        );
        let g = index.group("MachineDeployment/ns/md-0").unwrap();
        assert_eq!((g.min_size, g.max_size, g.target_size), (1, 5, 3));
    }

    /// A template with `annotations` in `spec.template.metadata` (where ClusterClass patches
    /// put them) and `outer` in `metadata`.
    fn template(
        ns: &str,
        name: &str,
        annotations: serde_json::Value,
        outer: serde_json::Value,
    ) -> Arc<OpenStackWorkerMachineTemplate> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
                "metadata": {"name": name, "namespace": ns, "annotations": outer},
                "spec": {"template": {"metadata": {"annotations": annotations},
                                      "spec": {"flavor": {"id": "1"}, "image": {"id": "i"}}}}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn limits_and_options_come_from_the_template_where_the_machine_deployment_is_silent() {
        let mut s = snapshot();
        // ClusterClass variables patched onto the template (the MD has no annotations).
        let mut from_template = scaling(0, 7);
        from_template["cluster.x-k8s.io/autoscaling-options-scaledownunneededtime"] = json!("5m");
        from_template["unrelated.example.com/x"] = json!("y");
        s.templates = vec![
            // spec.template.metadata wins over the template's own metadata.
            template("ns", "not-autoscaled-t", from_template, scaling(0, 1)),
            // The MD's own annotations win over its template's.
            template("ns", "md-0-t", scaling(0, 9), scaling(0, 8)),
        ];
        let index = Index::build(&s, None);
        let g = index.group("MachineDeployment/ns/not-autoscaled").unwrap();
        assert_eq!((g.min_size, g.max_size), (0, 7));
        assert_eq!(
            g.annotations
                .get("cluster.x-k8s.io/autoscaling-options-scaledownunneededtime")
                .map(String::as_str),
            Some("5m")
        );
        assert!(!g.annotations.contains_key("unrelated.example.com/x"));
        let g = index.group("MachineDeployment/ns/md-0").unwrap();
        assert_eq!((g.min_size, g.max_size), (1, 5));
    }

    #[test]
    fn scope_limits_groups_to_one_cluster() {
        let scope = ClusterKey {
            namespace: "other".into(),
            name: "c1".into(),
        };
        let index = Index::build(&snapshot(), Some(&scope));
        let ids: Vec<_> = index.groups().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["MachineDeployment/other/md-0"]);
        assert!(
            index.group_of_instance("openstack:///u-1").is_none(),
            "another cluster's instance is invisible"
        );
    }

    #[test]
    fn instances_carry_provider_ids_states_and_errors() {
        let index = Index::build(&snapshot(), None);
        let g = index.group("MachineDeployment/ns/md-0").unwrap();
        let by_machine: HashMap<&str, &Instance> = g
            .instances
            .iter()
            .map(|i| (i.machine.as_str(), i))
            .collect();
        assert_eq!(by_machine["m-running"].id, "openstack:///u-1");
        assert_eq!(by_machine["m-running"].state, InstanceState::Running);
        assert_eq!(
            by_machine["m-building"].id, "openstack:///u-2",
            "the server's providerID before the Machine has one"
        );
        assert_eq!(by_machine["m-building"].state, InstanceState::Creating);
        assert!(by_machine["m-building"].error.is_none());
        let quota = by_machine["m-quota"];
        assert_eq!(quota.id, "capow://pending/ns/m-quota");
        assert_eq!(
            quota.error.as_ref().unwrap().class,
            error_class::OUT_OF_RESOURCES
        );
        assert_eq!(quota.error.as_ref().unwrap().code, "QuotaExceeded");
        assert!(!by_machine["m-nothing"].has_server);
        assert_eq!(
            index.group_of_instance("openstack:///u-2").unwrap().id,
            g.id
        );
        assert_eq!(
            index.group_of_instance("u-2").unwrap().id,
            g.id,
            "a bare UUID matches too"
        );
        assert_eq!(
            index
                .group_of_instance("capow://pending/ns/m-quota")
                .unwrap()
                .id,
            g.id
        );
        assert!(
            index.group_of_instance("openstack:///u-9").is_none(),
            "not in an autoscaled group"
        );
        assert!(index.group_of_instance("").is_none());
    }

    #[test]
    fn deleting_machines_are_deleting_and_error_classes_follow_the_fault() {
        let mut s = snapshot();
        let mut m = (*s.machines[0]).clone();
        m.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        s.machines[0] = Arc::new(m);
        s.infra_machines[1] = infra(
            "ns",
            "m-building",
            Some("u-2"),
            Some("ERROR"),
            Some((
                "InstanceStateError",
                "server u-2 is in ERROR: No valid host was found. (code 500)",
            )),
        );
        let index = Index::build(&s, None);
        let g = index.group("MachineDeployment/ns/md-0").unwrap();
        let running = g
            .instances
            .iter()
            .find(|i| i.machine == "m-running")
            .unwrap();
        assert_eq!(running.state, InstanceState::Deleting);
        let err = g
            .instances
            .iter()
            .find(|i| i.machine == "m-building")
            .unwrap()
            .error
            .clone()
            .unwrap();
        assert_eq!(
            (err.code.as_str(), err.class),
            ("NoValidHost", error_class::OUT_OF_RESOURCES)
        );

        s.infra_machines[1] = infra(
            "ns",
            "m-building",
            None,
            None,
            Some((
                "InvalidMachineSpec",
                "spec.flavor.filter.name: no flavor named \"x\" matches",
            )),
        );
        let index = Index::build(&s, None);
        let err = index
            .group("MachineDeployment/ns/md-0")
            .unwrap()
            .instances
            .iter()
            .find(|i| i.machine == "m-building")
            .unwrap()
            .error
            .clone()
            .unwrap();
        assert_eq!(
            (err.code.as_str(), err.class),
            ("InvalidMachineSpec", error_class::OTHER)
        );
    }

    #[test]
    fn size_limits_follow_the_in_tree_rules() {
        const MIN: &str = capi::NODE_GROUP_MIN_SIZE_ANNOTATION;
        const MAX: &str = capi::NODE_GROUP_MAX_SIZE_ANNOTATION;
        let ann = |min: Option<&str>, max: Option<&str>| -> BTreeMap<String, String> {
            [(MIN, min), (MAX, max)]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect()
        };
        let invalid = |list: &[(&str, &str)]| {
            SizeLimits::Invalid(
                list.iter()
                    .map(|(a, v)| ((*a).to_owned(), (*v).to_owned(), SIZE_RULE.to_owned()))
                    .collect(),
            )
        };
        let cases: Vec<(Option<&str>, Option<&str>, SizeLimits)> = vec![
            (None, None, SizeLimits::NotAutoscaled),
            (Some("1"), None, SizeLimits::NotAutoscaled),
            (Some("abc"), None, SizeLimits::NotAutoscaled),
            (None, Some("0"), SizeLimits::NotAutoscaled),
            (None, Some("3"), SizeLimits::Valid { min: 0, max: 3 }),
            (Some("1"), Some("3"), SizeLimits::Valid { min: 1, max: 3 }),
            (Some(" 2 "), Some("2"), SizeLimits::Valid { min: 2, max: 2 }),
            (Some("1.0"), Some("3"), invalid(&[(MIN, "1.0")])),
            (Some("-1"), Some("3"), invalid(&[(MIN, "-1")])),
            (Some("abc"), Some("3"), invalid(&[(MIN, "abc")])),
            (Some(""), Some("3"), invalid(&[(MIN, "")])),
            (Some("1"), Some("-1"), invalid(&[(MAX, "-1")])),
            (Some("1"), Some("5.5"), invalid(&[(MAX, "5.5")])),
            (Some("x"), Some("y"), invalid(&[(MAX, "y"), (MIN, "x")])),
            (
                Some("5"),
                Some("2"),
                SizeLimits::Invalid(vec![(
                    MAX.to_owned(),
                    "2".to_owned(),
                    format!("it must not be below {MIN} (5)"),
                )]),
            ),
        ];
        for (min, max, want) in cases {
            assert_eq!(
                size_limits(&ann(min, max)),
                want,
                "min {min:?}, max {max:?}"
            );
        }
    }

    #[test]
    fn invalid_limits_freeze_the_group_and_are_reported() {
        let mut s = Snapshot::default();
        let limits = |min: &str, max: &str| {
            json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": min,
                   "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": max})
        };
        s.machine_deployments = vec![
            md("ns", "min-float", 1, limits("1.0", "5")),
            md("ns", "min-over-max", 3, limits("5", "2")),
            md("ns", "negative-max", 2, limits("0", "-1")),
            md(
                "ns",
                "paused",
                1,
                json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "x", "cluster.x-k8s.io/paused": ""}),
            ),
            md(
                "ns",
                "ok",
                0,
                json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "3",
                       "cluster.x-k8s.io/autoscaling-options-scaledownunneededtime": "soon"}),
            ),
        ];
        let index = Index::build(&s, None);
        let sizes: Vec<_> = index
            .groups()
            .map(|g| (g.name.as_str(), g.min_size, g.max_size, g.frozen.is_some()))
            .collect();
        // Before: "1.0" was served as min 0 (CA could delete the last node), the others vanished.
        assert_eq!(
            sizes,
            [
                ("min-float", 1, 1, true),
                ("min-over-max", 3, 3, true),
                ("negative-max", 2, 2, true),
                ("ok", 0, 3, false),
            ]
        );
        assert!(
            index
                .group("MachineDeployment/ns/min-float")
                .unwrap()
                .debug()
                .contains("frozen: invalid cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size=\"1.0\"")
        );
        let reported: Vec<_> = index
            .problems()
            .iter()
            .map(|p| (p.name.as_str(), p.annotation.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            reported,
            [
                ("min-float", capi::NODE_GROUP_MIN_SIZE_ANNOTATION, "1.0"),
                ("min-over-max", capi::NODE_GROUP_MAX_SIZE_ANNOTATION, "2"),
                ("negative-max", capi::NODE_GROUP_MAX_SIZE_ANNOTATION, "-1"),
                (
                    "ok",
                    "cluster.x-k8s.io/autoscaling-options-scaledownunneededtime",
                    "soon"
                ),
            ]
        );
        assert_eq!(
            index.problems()[0].message(),
            "annotation cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size is \"1.0\" on \
             MachineDeployment ns/min-float; it must be a whole number ≥ 0; the node group is served \
             with min = max = its current replicas, so the cluster-autoscaler neither scales it up \
             nor down, until the value is fixed"
        );
        assert!(
            index.problems()[3]
                .message()
                .contains("default is used for this option")
        );
    }

    #[test]
    fn problems_name_the_template_when_the_value_comes_from_it() {
        let mut s = Snapshot::default();
        s.machine_deployments = vec![md("ns", "md-0", 1, json!({}))];
        s.templates = vec![template(
            "ns",
            "md-0-t",
            json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "one",
                   "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "3"}),
            json!({}),
        )];
        let index = Index::build(&s, None);
        assert_eq!(
            index.problems()[0].source,
            "OpenStackWorkerMachineTemplate ns/md-0-t"
        );
        let g = index.group("MachineDeployment/ns/md-0").unwrap();
        assert_eq!((g.min_size, g.max_size), (1, 1));
    }
}
