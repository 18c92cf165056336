//! `OpenStackWorkerMachine`: one worker VM (a Nova server) of a CAPI `Machine`.
//!
//! Fulfils the CAPI v1beta2 InfraMachine contract
//! (cluster-api `docs/book/src/developer/providers/contracts/infra-machine.md`):
//! `spec.providerID`, `status.initialization.provisioned`, `status.addresses` and a `Ready`
//! condition that CAPI mirrors to the Machine's `InfrastructureReady` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    AdditionalBlockDevice, FlavorParam, ImageParam, OpenStackIdentityReference, PortOpts,
    ResolvedPortSpec, RootVolume, SchedulerHintAdditionalProperty, SecurityGroupParam,
    ServerGroupParam, ServerMetadata,
};

/// Desired state of a worker server (CAPO v1beta2 `OpenStackMachineSpec`, the subset capow
/// supports; field names and shapes are CAPO's).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "OpenStackWorkerMachine",
    plural = "openstackworkermachines",
    shortname = "oswm",
    namespaced,
    doc = "A worker machine of a CAPI Machine: one Nova server booted with the Machine's bootstrap data.",
    status = "OpenStackWorkerMachineStatus",
    category = "cluster-api",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']","description":"Cluster this machine belongs to"}"#,
    printcolumn = r#"{"name":"InstanceState","type":"string","jsonPath":".status.instanceState","description":"Nova server status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status","description":"Ready condition"}"#,
    printcolumn = r#"{"name":"ProviderID","type":"string","jsonPath":".spec.providerID","description":"Provider ID of the server"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.providerID) || has(self.providerID) && self.providerID == oldSelf.providerID").message("providerID is immutable once set"))]
pub struct OpenStackWorkerMachineSpec {
    /// Provider ID of the server, `openstack:///<server-uuid>` or
    /// `openstack://<region>/<server-uuid>` when `identityRef.region` is set (the form the
    /// OpenStack cloud controller manager gives Nodes). Set by capow once the server is ACTIVE;
    /// immutable afterwards.
    #[serde(
        default,
        rename = "providerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,

    /// Nova flavor of the server.
    pub flavor: FlavorParam,

    /// Glance image the server boots from.
    pub image: ImageParam,

    /// Name of a Nova keypair to inject into the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_name: Option<String>,

    /// Ports to create and attach, in order. When empty, one port on the cluster's network
    /// (`OpenStackWorkerCluster.status.network`) with its managed worker security group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<PortOpts>,

    /// Security groups applied to every port that does not list its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroupParam>,

    /// Extra Nova server metadata. capow also sets `capow-machine-uid`, `capow-cluster` and
    /// `capow-node-group`; those keys are reserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.all(m, !m.key.startsWith('capow-'))").message("keys starting with 'capow-' are reserved"))]
    pub server_metadata: Vec<ServerMetadata>,

    /// Extra Nova server tags (also applied to the ports capow creates). capow adds its own
    /// ownership tags; tags must not contain `,` or `/` (Nova rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 40),
        inner(length(min = 1, max = 60), regex(pattern = r"^[^,/]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(t, t != 'capow' && !t.startsWith('capow-'))").message("the tag 'capow' and tags starting with 'capow-' are reserved for capow's ownership tags"))]
    pub tags: Vec<String>,

    /// Whether to attach a config drive to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<bool>,

    /// Boot from a new Cinder volume of this size instead of the flavor's local disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolume>,

    /// Extra disks: local ephemeral disks or Cinder volumes, created with the server and
    /// deleted with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(d, d.name != 'root')").message("the name 'root' is reserved for the root volume"))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a.name == b.name))").message("block device names must be unique"))]
    pub additional_block_devices: Vec<AdditionalBlockDevice>,

    /// Nova server group to put the server into (affinity, anti-affinity, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_group: Option<ServerGroupParam>,

    /// Create a Neutron trunk for every port that does not say otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<bool>,

    /// Extra Nova scheduler hints (`os:scheduler_hints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub scheduler_hint_additional_properties: Vec<SchedulerHintAdditionalProperty>,

    /// OpenStack credentials to use; defaults to the `OpenStackWorkerCluster`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ref: Option<OpenStackIdentityReference>,
}

/// Observed state of a worker server (CAPO v1beta2 `OpenStackMachineStatus` shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerMachineStatus {
    /// Provisioning milestones of the CAPI v1beta2 contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<MachineInitialization>,

    /// UUID of the Nova server.
    #[serde(
        default,
        rename = "instanceID",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_id: Option<String>,

    /// Nova server status as last observed (`BUILD`, `ACTIVE`, `ERROR`, `SHUTOFF`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_state: Option<String>,

    /// Addresses of the server, in the `corev1.NodeAddress` shape (`InternalIP`,
    /// `ExternalIP`, `InternalDNS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,

    /// Availability zone the server runs in, reported as its CAPI failure domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,

    /// Spec references resolved to OpenStack IDs at creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedMachineSpec>,

    /// OpenStack resources capow created for this machine besides the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<MachineResources>,

    /// When capow sent `POST /servers` for this machine without having recorded Nova's answer
    /// yet (RFC 3339). Written right before the request, cleared together with the
    /// `instanceID` the answer carries, or when Nova refused. While it is set the create's
    /// outcome is unknown (the manager crashed, the request timed out or got a 5xx): Nova has
    /// no idempotency key, so capow looks the server up by the machine's UID tag and creates
    /// again only once that lookup, made `--server-create-settle` after this time, still finds
    /// nothing; deletion waits as long before it declares that no server exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_create_requested_at: Option<Time>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions, `Ready` first. `Ready` is mirrored by CAPI to the Machine's
    /// `InfrastructureReady` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// `status.initialization` of the CAPI v1beta2 InfraMachine contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineInitialization {
    /// True once the server is ACTIVE and `spec.providerID` is set. Never reset to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// A machine address (`corev1.NodeAddress`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineAddress {
    /// `InternalIP`, `ExternalIP`, `InternalDNS`, `ExternalDNS` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub address: String,
}

/// Spec references resolved to OpenStack IDs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMachineSpec {
    /// Nova flavor ID.
    #[serde(default, rename = "flavorID", skip_serializing_if = "Option::is_none")]
    pub flavor_id: Option<String>,
    /// Glance image ID.
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Ports with resolved network, subnet and security group IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ResolvedPortSpec>,
    /// Nova server group ID.
    #[serde(
        default,
        rename = "serverGroupID",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_group_id: Option<String>,
    /// Availability zone the server was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// `true` when Nova creates (and deletes) the machine's one port with the server rather
    /// than capow in Neutron (`--port-creation auto`; `docs/adr/0008-nova-creates-plain-ports.md`).
    /// Decided when the spec is first resolved, before any create call, and kept for the
    /// machine's life: deletion then has no port of capow's to look for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ports_created_by_nova: bool,
}

/// OpenStack resources created by capow for a machine (deleted with it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineResources {
    /// Neutron ports created for the server, in `spec.ports` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStatus>,
    /// Cinder volumes created for the server (root volume and volume block devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStatus>,
    /// Neutron trunks created for trunk ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<PortStatus>,
}

/// A volume created by capow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// Cinder volume UUID.
    pub id: String,
    /// `root` or the block device name.
    pub name: String,
}

/// A port created by capow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortStatus {
    /// Neutron port UUID.
    pub id: String,
}

impl OpenStackWorkerMachine {
    /// The `Ready` condition, if set.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == super::conditions::READY)
        })
    }
}
