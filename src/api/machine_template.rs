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
