//! `OpenStackWorkerMachineTemplate`: the infrastructure template a MachineDeployment or
//! MachineSet clones one `OpenStackWorkerMachine` from per Machine (CAPI InfraMachineTemplate
//! contract, `docs/book/src/developer/providers/contracts/infra-machine.md`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::machine::OpenStackWorkerMachineSpec;

/// Desired state of the template.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "OpenStackWorkerMachineTemplate",
    plural = "openstackworkermachinetemplates",
    shortname = "oswmt",
    namespaced,
    doc = "Template from which CAPI creates one OpenStackWorkerMachine per Machine of a MachineDeployment or MachineSet.",
    status = "OpenStackWorkerMachineTemplateStatus",
    category = "cluster-api",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerMachineTemplateSpec {
    /// The machine every Machine of the owning MachineDeployment/MachineSet gets.
    pub template: OpenStackWorkerMachineTemplateResource,
}

/// The `template` of an `OpenStackWorkerMachineTemplate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerMachineTemplateResource {
    /// Labels and annotations copied to each `OpenStackWorkerMachine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// Spec of each `OpenStackWorkerMachine`; `providerID` must stay unset.
    pub spec: OpenStackWorkerMachineSpec,
}

/// The labels and annotations part of an object's metadata (CAPI `ObjectMeta`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMetaTemplate {
    /// Labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Observed state of the template: what a machine made from it will offer, for
/// scale-from-zero (CAPI opt-in autoscaling-from-zero contract,
/// `docs/proposals/20210310-opt-in-autoscaling-from-zero.md`; read by cluster-autoscaler's
/// clusterapi provider and by capow's externalgrpc server).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerMachineTemplateStatus {
    /// Resources of one machine: `cpu` (vCPUs), `memory` (flavor RAM, e.g. `4096Mi`),
    /// `ephemeral-storage` (root disk: `rootVolume.sizeGiB` or the flavor's disk, in `Gi`) and
    /// GPUs (e.g. `nvidia.com/gpu`) from the flavor's extra specs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub capacity:
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// Architecture and operating system of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeInfo>,
    /// Resolved flavor and image this was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<TemplateResolved>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, `Ready` first (False with the reason when flavor or image cannot be resolved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::conditions_schema")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// `status.nodeInfo` of the autoscale-from-zero contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// `amd64`, `arm64`, `s390x` or `ppc64le` (from the image's `hw_architecture` or
    /// `architecture` property).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Operating system (the image's `os_type`, e.g. `linux`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<String>,
}

/// What the template's capacity was computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateResolved {
    /// Flavor ID.
    #[serde(default, rename = "flavorID", skip_serializing_if = "Option::is_none")]
    pub flavor_id: Option<String>,
    /// Flavor name (the node's `node.kubernetes.io/instance-type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor_name: Option<String>,
    /// Image ID.
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Price per hour of one machine from the flavor's `capow:price-per-hour` extra spec or the
    /// template's `capow.infrastructure.cluster.x-k8s.io/price-per-hour` annotation, as a
    /// decimal string in the cloud's currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<String>,
    /// GPU model of the flavor (extra spec `capow:gpu-type`, else the first
    /// `pci_passthrough:alias` name, else `vgpu`/`pgpu`), when it has GPUs. Used as the value of
    /// the GPU label on nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
}
