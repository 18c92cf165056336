//! Read-only views of the CAPI v1beta2 kinds capow reads (`cluster.x-k8s.io/v1beta2`).
//!
//! Only the fields capow uses are declared; unknown fields are ignored when reading. These
//! types are never written back whole (that would drop the fields they omit): capow only reads
//! them, or patches single fields. Field names follow cluster-api `api/core/v1beta2`.

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// CAPI core API group.
pub const GROUP: &str = "cluster.x-k8s.io";
/// CAPI core API version capow reads (contract v1beta2, CAPI ≥ 1.11).
pub const VERSION: &str = "v1beta2";

/// Label CAPI sets on every object of a cluster (`cluster.x-k8s.io/cluster-name`).
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Annotation pausing reconciliation of a single object (CAPI `PausedAnnotation`).
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// Annotation `clusterctl move` puts on each source object right before deleting it, once the
/// target management cluster has its copy (cluster-api v1.14.2
/// `cmd/clusterctl/api/v1alpha3/annotations.go`, `DeleteForMoveAnnotation`; set in
/// `cmd/clusterctl/client/cluster/mover.go`, `deleteSourceObject`). Its OpenStack resources
/// belong to the copy: the source's deletion must not touch them.
pub const DELETE_FOR_MOVE_ANNOTATION: &str = "clusterctl.cluster.x-k8s.io/delete-for-move";
/// Label CAPI sets on Machines of a MachineDeployment (`cluster.x-k8s.io/deployment-name`).
pub const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// Label CAPI sets on Machines of a MachineSet (`cluster.x-k8s.io/set-name`).
pub const SET_NAME_LABEL: &str = "cluster.x-k8s.io/set-name";

/// A reference to an object in the same namespace (CAPI v1beta2 `ContractVersionedObjectReference`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContractVersionedObjectReference {
    /// Kind of the referenced object.
    #[serde(default)]
    pub kind: String,
    /// Name of the referenced object.
    #[serde(default)]
    pub name: String,
    /// API group of the referenced object.
    #[serde(default)]
    pub api_group: String,
}

/// `Cluster.spec` (fields capow reads).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Pauses reconciliation of the cluster and every object belonging to it.
    #[serde(default)]
    pub paused: Option<bool>,
    /// The cluster's infrastructure object (an `OpenStackWorkerCluster` for capow clusters).
    #[serde(default)]
    pub infrastructure_ref: Option<ContractVersionedObjectReference>,
    /// The cluster's control-plane object (e.g. a `HostedControlPlane`); capow reads its
    /// `spec.version` when the Cluster has no topology.
    #[serde(default)]
    pub control_plane_ref: Option<ContractVersionedObjectReference>,
    /// The ClusterClass topology, when the Cluster has one.
    #[serde(default)]
    pub topology: Option<Topology>,
}

/// `Cluster.spec.topology` (fields capow reads).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// The Kubernetes version of the cluster, e.g. `v1.36.3`.
    #[serde(default)]
    pub version: Option<String>,
}

/// `Cluster.status` (fields capow reads).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Provisioning milestones.
    #[serde(default)]
    pub initialization: Option<ClusterInitialization>,
}

/// `Cluster.status.initialization`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInitialization {
    /// True once the infrastructure cluster reported `status.initialization.provisioned`.
    #[serde(default)]
    pub infrastructure_provisioned: Option<bool>,
    /// True once the control plane is initialized.
    #[serde(default)]
    pub control_plane_initialized: Option<bool>,
}

impl Cluster {
    /// True when the cluster is paused (`spec.paused`).
    pub fn is_paused(&self) -> bool {
        self.spec.paused.unwrap_or(false)
    }

    /// True once CAPI reports the cluster's infrastructure as provisioned.
    pub fn infrastructure_provisioned(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .and_then(|i| i.infrastructure_provisioned)
            .unwrap_or(false)
    }
}

/// Decides which watch events of a `Cluster` should wake capow's controllers.
///
/// CAPI rewrites `Cluster.status` on nearly every Machine change (replica counts, conditions),
/// and each such event would re-reconcile the `OpenStackWorkerCluster` and every
/// `OpenStackWorkerMachine` of the cluster, each with OpenStack API calls. capow only reacts to
/// the fields [`Cluster`] declares (`spec.paused`, `spec.infrastructureRef`,
/// `status.initialization`) and to deletion, so an event is passed
/// on only when one of those differs from the last event seen for the same UID (the first event
/// of a UID, e.g. after a restart, always passes). Periodic resyncs still reconcile everything.
///
/// Memory: one entry per Cluster UID seen by this process (its declared fields, a few hundred
/// bytes); entries stay for the process lifetime, since a watch's final delete event cannot
/// be told apart from the update before it.
#[derive(Debug, Default)]
pub struct ClusterEventFilter {
    seen: std::sync::Mutex<std::collections::HashMap<String, ClusterView>>,
}

#[derive(Debug, PartialEq)]
struct ClusterView {
    deleting: bool,
    spec: ClusterSpec,
    status: Option<ClusterStatus>,
}

impl ClusterEventFilter {
    /// True when `cluster` differs from the last version seen in a field capow reacts to.
    pub fn relevant(&self, cluster: &Cluster) -> bool {
        let Some(uid) = cluster.metadata.uid.clone() else {
            return true;
        };
        let view = ClusterView {
            deleting: cluster.metadata.deletion_timestamp.is_some(),
            spec: cluster.spec.clone(),
            status: cluster.status.clone(),
        };
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.get(&uid) == Some(&view) {
            return false;
        }
        seen.insert(uid, view);
        true
    }
}

/// `Machine.spec` (fields capow reads).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Machine",
    namespaced,
    status = "MachineStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// Name of the Cluster the Machine belongs to.
    #[serde(default)]
    pub cluster_name: String,
    /// Bootstrap configuration.
    #[serde(default)]
    pub bootstrap: MachineBootstrap,
    /// The Machine's infrastructure object.
    #[serde(default)]
    pub infrastructure_ref: ContractVersionedObjectReference,
    /// Provider ID copied from the infrastructure machine by CAPI.
    #[serde(default, rename = "providerID")]
    pub provider_id: Option<String>,
    /// Failure domain (OpenStack availability zone) the Machine should run in.
    #[serde(default)]
    pub failure_domain: Option<String>,
    /// Taints CAPI keeps on the Machine's Node (CAPI ≥ 1.12).
    #[serde(default)]
    pub taints: Vec<MachineTaint>,
    /// Kubernetes version of the Machine's kubelet, e.g. `v1.34.2`.
    #[serde(default)]
    pub version: Option<String>,
}

/// A taint of a Machine's Node (`MachineTaint`, CAPI v1beta2 common_types.go).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineTaint {
    /// Key.
    #[serde(default)]
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default)]
    pub effect: String,
}

/// The `metadata` of a Machine template (CAPI `ObjectMeta`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `spec.template` of a MachineDeployment or MachineSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateSpec {
    /// Labels and annotations of the Machines.
    #[serde(default)]
    pub metadata: TemplateMeta,
    /// Spec of the Machines.
    #[serde(default)]
    pub spec: MachineSpec,
}

/// `MachineDeployment.spec` (fields capow reads).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "MachineDeployment",
    namespaced,
    status = "MachineDeploymentStatus",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas"}"#,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentSpec {
    /// Cluster name.
    #[serde(default)]
    pub cluster_name: String,
    /// Desired number of Machines.
    #[serde(default)]
    pub replicas: Option<i32>,
    /// The Machines' template.
    #[serde(default)]
    pub template: MachineTemplateSpec,
    /// Pauses reconciliation of this MachineDeployment.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// `MachineDeployment.status` (fields capow reads; cluster-api v1.14.2
/// `api/core/v1beta2/machinedeployment_types.go`, `MachineDeploymentStatus`). The counts are
/// pointers upstream: `None` until the MachineDeployment controller first wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Machines of the MachineDeployment (deleting ones included).
    #[serde(default)]
    pub replicas: Option<i32>,
    /// Machines whose `Ready` condition is true.
    #[serde(default)]
    pub ready_replicas: Option<i32>,
    /// Machines whose `Available` condition is true (ready for `minReadySeconds`).
    #[serde(default)]
    pub available_replicas: Option<i32>,
    /// Machines whose spec matches the MachineDeployment's template.
    #[serde(default)]
    pub up_to_date_replicas: Option<i32>,
}

/// `MachineSet.spec` (fields capow reads).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "MachineSet",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetSpec {
    /// Cluster name.
    #[serde(default)]
    pub cluster_name: String,
    /// Desired number of Machines.
    #[serde(default)]
    pub replicas: Option<i32>,
    /// The Machines' template.
    #[serde(default)]
    pub template: MachineTemplateSpec,
}

/// `Machine.spec.bootstrap`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineBootstrap {
    /// Name of the Secret holding the bootstrap data (key `value`, format in key `format`).
    #[serde(default)]
    pub data_secret_name: Option<String>,
}

/// `Machine.status` (fields capow reads).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// The Node this Machine became.
    #[serde(default)]
    pub node_ref: Option<MachineNodeReference>,
    /// Machine phase (`Pending`, `Provisioning`, `Provisioned`, `Running`, `Deleting`, ...).
    #[serde(default)]
    pub phase: Option<String>,
}

/// `Machine.status.nodeRef` (v1beta2 `MachineNodeReference`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineNodeReference {
    /// Node name.
    #[serde(default)]
    pub name: String,
}

/// Annotation CA puts on a Machine before lowering replicas, so CAPI deletes that Machine
/// first (`cluster.x-k8s.io/delete-machine`, CAPI `DeleteMachineAnnotation`).
pub const DELETE_MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/delete-machine";
/// Minimum size of a node group (`cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size`).
pub const NODE_GROUP_MIN_SIZE_ANNOTATION: &str =
    "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size";
/// Maximum size of a node group; a group without it is not autoscaled.
pub const NODE_GROUP_MAX_SIZE_ANNOTATION: &str =
    "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size";

/// True when `annotations` carry the CAPI paused annotation.
pub fn has_paused_annotation(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(PAUSED_ANNOTATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(uid: &str, paused: bool, provisioned: Option<bool>) -> Cluster {
        let mut c = Cluster::new(
            "c1",
            ClusterSpec {
                paused: Some(paused),
                ..ClusterSpec::default()
            },
        );
        c.metadata.uid = Some(uid.into());
        c.status = Some(ClusterStatus {
            initialization: Some(ClusterInitialization {
                infrastructure_provisioned: provisioned,
                control_plane_initialized: None,
            }),
        });
        c
    }

    #[test]
    fn cluster_event_filter_passes_only_changes_capow_reacts_to() {
        let f = ClusterEventFilter::default();
        let c = cluster("u1", false, None);
        assert!(f.relevant(&c), "first event of a UID");
        // A status rewrite that only touches fields capow does not declare arrives as an equal view.
        let mut again = c.clone();
        again.metadata.resource_version = Some("2".into());
        assert!(!f.relevant(&again));
        assert!(
            f.relevant(&cluster("u1", false, Some(true))),
            "infrastructure provisioned"
        );
        assert!(f.relevant(&cluster("u1", true, Some(true))), "paused");
        assert!(!f.relevant(&cluster("u1", true, Some(true))));
        let mut deleting = cluster("u1", true, Some(true));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert!(f.relevant(&deleting), "deletion");
        assert!(f.relevant(&cluster("u2", true, Some(true))), "another UID");
        let mut no_uid = c.clone();
        no_uid.metadata.uid = None;
        assert!(f.relevant(&no_uid));
        assert!(f.relevant(&no_uid), "objects without a UID always pass");
    }
}
