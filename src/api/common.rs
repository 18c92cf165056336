//! Shared spec fragments of the capow CRDs.
//!
//! Every type here mirrors the shape of its CAPO v1beta2 counterpart
//! (`sigs.k8s.io/cluster-api-provider-openstack/api/v1beta2/types.go`) so that a CAPO
//! `OpenStackMachineSpec` can be carried over field by field. Where capow supports only part of
//! the CAPO type, the doc comment says so.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Reference to the OpenStack credentials an object uses.
///
/// Same shape as CAPO's `OpenStackIdentityReference`: a Secret in the object's namespace with
/// the key `clouds.yaml` (a standard OpenStack clouds.yaml) and an optional key `cacert` (PEM
/// bundle used to verify the OpenStack endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackIdentityReference {
    /// Kind of the referenced object. Only `Secret` is supported.
    #[serde(default, rename = "type")]
    pub type_: IdentityRefType,
    /// Name of the Secret (in the same namespace) holding `clouds.yaml` and optionally `cacert`.
    #[x_kube(validation = Rule::new("self != ''").message("name must not be empty"))]
    pub name: String,
    /// Name of the cloud in `clouds.yaml` to use.
    #[x_kube(validation = Rule::new("self != ''").message("cloudName must not be empty"))]
    pub cloud_name: String,
    /// OpenStack region to use. Overrides `region_name` of the cloud. When set, it is also
    /// embedded in the providerID (`openstack://<region>/<server-uuid>`), as CAPO and OCCM do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Kind of object an identityRef points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IdentityRefType {
    /// A Secret in the same namespace.
    #[default]
    Secret,
}

/// Selects a Nova flavor by ID or by name (CAPO v1beta2 `FlavorParam`). Exactly one of `id`
/// and `filter` must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct FlavorParam {
    /// Nova flavor ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the flavor by name; exactly one flavor must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FlavorFilter>,
}

/// Flavor filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlavorFilter {
    /// Flavor name, matched exactly.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Selects a Glance image by ID or by filter (CAPO v1beta2 `ImageParam`, without `imageRef`:
/// capow does not depend on ORC). Exactly one of `id` and `filter` must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct ImageParam {
    /// Glance image UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the image by name and/or tags; exactly one active image must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ImageFilter>,
}

/// Image filter. At least one of `name` and `tags` must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) || (has(self.tags) && size(self.tags) > 0)").message("at least one of name or tags must be set"))]
pub struct ImageFilter {
    /// Image name, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image tags; an image must carry all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tags: Vec<String>,
}

/// Neutron tag filters shared by network, subnet and security group filters (CAPO
/// `FilterByNeutronTags`). Each list is a set of tags; see the Neutron API "filtering by tags".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NeutronTagFilter {
    /// Resources must carry all of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Resources must carry at least one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_any: Vec<String>,
    /// Resources must not carry all of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_tags: Vec<String>,
    /// Resources must not carry any of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_tags_any: Vec<String>,
}

/// Selects a Neutron network by ID or filter (CAPO v1beta2 `NetworkParam`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct NetworkParam {
    /// Neutron network UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the network by attributes; exactly one network must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<NetworkFilter>,
}

/// Network filter (CAPO `NetworkFilter`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFilter {
    /// Network name, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Network description, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Project (tenant) ID owning the network.
    #[serde(default, rename = "projectID", skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Tag filters.
    #[serde(flatten)]
    pub tags: NeutronTagFilter,
}

/// Selects a Neutron subnet by ID or filter (CAPO v1beta2 `SubnetParam`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct SubnetParam {
    /// Neutron subnet UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the subnet by attributes; exactly one subnet must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<SubnetFilter>,
}

/// Subnet filter (CAPO `SubnetFilter`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetFilter {
    /// Subnet name, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Subnet description, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Project (tenant) ID owning the subnet.
    #[serde(default, rename = "projectID", skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// IP version, 4 or 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 6))]
    pub ip_version: Option<i32>,
    /// Subnet CIDR, e.g. `10.0.0.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Gateway IP address.
    #[serde(default, rename = "gatewayIP", skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<String>,
    /// Tag filters.
    #[serde(flatten)]
    pub tags: NeutronTagFilter,
}

/// Selects a Neutron security group by ID or filter (CAPO v1beta2 `SecurityGroupParam`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct SecurityGroupParam {
    /// Neutron security group UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the security group by attributes; exactly one must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<SecurityGroupFilter>,
}

/// Security group filter (CAPO `SecurityGroupFilter`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupFilter {
    /// Security group name, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Security group description, matched exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Project (tenant) ID owning the security group.
    #[serde(default, rename = "projectID", skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Tag filters.
    #[serde(flatten)]
    pub tags: NeutronTagFilter,
}

/// A fixed IP requested on a port (CAPO `FixedIP`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixedIp {
    /// Subnet the address is allocated from. When unset, Neutron picks a subnet of the port's
    /// network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<SubnetParam>,
    /// Specific IP address to request. When unset, Neutron allocates one.
    #[serde(default, rename = "ipAddress", skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

/// One Neutron port to create and attach to the server (CAPO v1beta2 `PortOpts`, common
/// subset). capow creates the port, tags it with the owning object's UID and deletes it with
/// the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortOpts {
    /// Network of the port. Required until the cluster provides a default network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkParam>,
    /// Port description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Suffix appended to the port name (`<machine>-<nameSuffix>`); defaults to the port's
    /// index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_suffix: Option<String>,
    /// Fixed IPs to request. Empty means one address from any subnet of the network.
    #[serde(default, rename = "fixedIPs", skip_serializing_if = "Vec::is_empty")]
    pub fixed_ips: Vec<FixedIp>,
    /// Security groups of this port. When empty, the machine's `securityGroups` apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroupParam>,
    /// Extra Neutron tags for the port (capow always adds its own ownership tags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 40))]
    #[x_kube(validation = Rule::new("self.all(t, t != 'capow' && !t.startsWith('capow-'))").message("the tag 'capow' and tags starting with 'capow-' are reserved for capow's ownership tags"))]
    pub tags: Vec<String>,
    /// Administrative state of the port; defaults to up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    /// Enables port security; when false, no security groups may be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_port_security: Option<bool>,
    /// vNIC type (`normal`, `direct`, `macvtap`, `direct-physical`, `baremetal`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnic_type: Option<String>,
    /// Create a Neutron trunk with this port as parent (needs the `trunk` extension).
    /// Defaults to the machine's `trunk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<bool>,
    /// MAC address to assign to the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Extra address pairs allowed through port security (e.g. a VIP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub allowed_address_pairs: Vec<AddressPair>,
    /// Host to bind the port to (`binding:host_id`; admin only).
    #[serde(default, rename = "hostID", skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// Binding profile (`binding:profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<BindingProfile>,
    /// Propagate the uplink status of the physical port to the VF (SR-IOV).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate_uplink_status: Option<bool>,
    /// Extra port attributes passed as they are to Neutron (`{name, key, value}`; `value`
    /// `true`/`false` are sent as booleans).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub value_specs: Vec<ValueSpec>,
}

/// An allowed address pair of a port (Neutron `allowed_address_pairs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressPair {
    /// IP address or CIDR.
    #[serde(rename = "ipAddress")]
    pub ip_address: String,
    /// MAC address; defaults to the port's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// Neutron `binding:profile` flags capow supports (CAPO `BindingProfile`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingProfile {
    /// Enable OVS hardware offload (`capabilities: ["switchdev"]`).
    #[serde(
        default,
        rename = "ovsHWOffload",
        skip_serializing_if = "Option::is_none"
    )]
    pub ovs_hw_offload: Option<bool>,
    /// Trust the VF (`trusted: true`).
    #[serde(default, rename = "trustedVF", skip_serializing_if = "Option::is_none")]
    pub trusted_vf: Option<bool>,
}

/// One extra port attribute (CAPO `ValueSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueSpec {
    /// Unique name of the entry.
    pub name: String,
    /// Neutron attribute name.
    pub key: String,
    /// Value; `true`/`false` become JSON booleans.
    pub value: String,
}

/// Selects a Nova server group by ID or by name (CAPO v1beta2 `ServerGroupParam`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct ServerGroupParam {
    /// Server group UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the server group by name; exactly one must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ServerGroupFilter>,
}

/// Server group filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupFilter {
    /// Server group name, matched exactly.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The root volume to boot from instead of the flavor's local disk (CAPO `RootVolume`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootVolume {
    /// Size in GiB, at least 1.
    #[serde(rename = "sizeGiB")]
    #[schemars(range(min = 1))]
    pub size_gib: i32,
    /// Cinder volume type; the cloud's default when unset.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Availability zone of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<VolumeAvailabilityZone>,
}

/// Where a volume's availability zone comes from (CAPO `VolumeAvailabilityZone`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.from) || self.from != 'Name' || has(self.name)").message("name is required when from is Name"))]
pub struct VolumeAvailabilityZone {
    /// `Name` (use `name`) or `Machine` (the Machine's failure domain). Default `Name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<VolumeAzSource>,
    /// Availability zone name when `from` is `Name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Source of a volume's availability zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VolumeAzSource {
    /// The zone named in `name`.
    #[default]
    Name,
    /// The Machine's `spec.failureDomain`.
    Machine,
}

/// An extra disk of the server (CAPO `AdditionalBlockDevice`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalBlockDevice {
    /// Name, unique per machine and not `root`; also the device tag seen by the guest.
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// Size in GiB, at least 1.
    #[serde(rename = "sizeGiB")]
    #[schemars(range(min = 1))]
    pub size_gib: i32,
    /// Local ephemeral disk of the hypervisor, or a Cinder volume.
    pub storage: BlockDeviceStorage,
}

/// Storage of an additional block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Volume' || !has(self.volume)").message("volume may only be set when type is Volume"))]
pub struct BlockDeviceStorage {
    /// `Local` or `Volume`.
    #[serde(rename = "type")]
    pub type_: BlockDeviceType,
    /// Volume options when `type` is `Volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<BlockDeviceVolume>,
}

/// Kind of additional block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BlockDeviceType {
    /// Ephemeral disk on the hypervisor (`destination_type: local`).
    #[default]
    Local,
    /// Cinder volume created by capow and deleted with the server.
    Volume,
}

/// Options of a volume block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceVolume {
    /// Cinder volume type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Availability zone of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<VolumeAvailabilityZone>,
}

/// An extra Nova scheduler hint (CAPO `SchedulerHintAdditionalProperty`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerHintAdditionalProperty {
    /// Hint name, e.g. `different_host`.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Hint value.
    pub value: SchedulerHintValue,
}

/// Typed value of a scheduler hint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'Bool') == has(self.bool) && (self.type == 'Number') == has(self.number) && (self.type == 'String') == has(self.string)").message("set exactly the field matching type"))]
pub struct SchedulerHintValue {
    /// `Bool`, `Number` or `String`.
    #[serde(rename = "type")]
    pub type_: SchedulerHintType,
    /// Value when `type` is `Bool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool: Option<bool>,
    /// Value when `type` is `Number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// Value when `type` is `String`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub string: Option<String>,
}

/// Type of a scheduler hint value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SchedulerHintType {
    /// A boolean.
    Bool,
    /// An integer.
    Number,
    /// A string.
    #[default]
    String,
}

/// One key/value pair of Nova server metadata (CAPO `ServerMetadata`). Nova limits keys and
/// values to 255 characters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerMetadata {
    /// Metadata key, 1 to 255 characters.
    #[schemars(length(min = 1, max = 255))]
    pub key: String,
    /// Metadata value, at most 255 characters.
    #[schemars(length(max = 255))]
    pub value: String,
}

/// Ports as resolved to OpenStack IDs (CAPO `ResolvedPortSpec`, subset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedPortSpec {
    /// Name the port is created with.
    pub name: String,
    /// Neutron network UUID.
    #[serde(rename = "networkID")]
    pub network_id: String,
    /// Fixed IPs with resolved subnet UUIDs.
    #[serde(default, rename = "fixedIPs", skip_serializing_if = "Vec::is_empty")]
    pub fixed_ips: Vec<ResolvedFixedIp>,
    /// Resolved security group UUIDs.
    #[serde(
        default,
        rename = "securityGroups",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub security_groups: Vec<String>,
}

/// A fixed IP with its subnet resolved to an ID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedFixedIp {
    /// Neutron subnet UUID, when the spec named a subnet.
    #[serde(default, rename = "subnetID", skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// Requested IP address.
    #[serde(default, rename = "ipAddress", skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}
