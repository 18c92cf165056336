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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
