//! `OpenStackWorkerCluster` (+ Template): the OpenStack side of a hosted-control-plane cluster:
//! the workers' network, subnets, router and security groups, and the failure domains (Nova
//! availability zones). There is no API load balancer and no floating IP for the API server:
//! the control plane runs in the management cluster and its provider writes
//! `spec.controlPlaneEndpoint` here (teutonet HostedControlPlane:
//! teutonet/cluster-api-provider-hosted-control-plane
//! `pkg/reconcilers/infrastructure_cluster/reconciler.go`, `SyncControlPlaneEndpoint`, patches
//! it onto whatever infrastructure cluster the Cluster references).
//!
//! Fulfils the CAPI v1beta2 InfraCluster contract (cluster-api
//! `docs/book/src/developer/providers/contracts/infra-cluster.md`): `spec.controlPlaneEndpoint`,
//! `status.initialization.provisioned`, `status.failureDomains` (list) and conditions. Network
//! field names and shapes follow CAPO v1beta2 `OpenStackClusterSpec`
//! (cluster-api-provider-openstack v0.15.0-beta.0 `api/v1beta2/openstackcluster_types.go`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{NetworkParam, OpenStackIdentityReference, SubnetParam};
use super::lifecycle::{NodeLifecycle, NodeLifecycleStatus};
use super::machine_template::ObjectMetaTemplate;

/// Desired state of the cluster's OpenStack infrastructure.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "OpenStackWorkerCluster",
    plural = "openstackworkerclusters",
    shortname = "oswc",
    namespaced,
    doc = "The OpenStack infrastructure of a hosted-control-plane cluster: worker network, router, security groups and failure domains.",
    status = "OpenStackWorkerClusterStatus",
    category = "cluster-api",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']","description":"Cluster this infrastructure belongs to"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status","description":"Ready condition"}"#,
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".status.network.id","description":"Worker network"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.controlPlaneEndpoint.host","description":"Control plane endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.network) && has(self.managedSubnets) && size(self.managedSubnets) > 0)").message("set either network (an existing network) or managedSubnets (a network capow creates), not both"))]
#[x_kube(validation = Rule::new("!has(self.router) || !has(self.managedRouter)").message("set either router (an existing router) or managedRouter, not both"))]
pub struct OpenStackWorkerClusterSpec {
    /// OpenStack credentials (a Secret with `clouds.yaml`); machines use them unless they name
    /// their own.
    pub identity_ref: OpenStackIdentityReference,

    /// An existing network for the workers. Mutually exclusive with `managedSubnets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkParam>,

    /// Existing subnets of `network` to use (the first is the primary subnet); all subnets of
    /// the network when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub subnets: Vec<SubnetParam>,

    /// Subnets capow creates, on a network it creates, when `network` is not set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub managed_subnets: Vec<ManagedSubnet>,

    /// Options of the network capow creates for `managedSubnets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_network: Option<ManagedNetwork>,

    /// An existing router to attach the managed subnets to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterParam>,

    /// A router capow creates between the managed subnets and `externalNetwork`. Created by
    /// default when capow creates the network and an external network is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_router: Option<ManagedRouter>,

    /// The external (provider) network the managed router uses as its gateway. When unset and
    /// `enableExternalNetwork` is not false, the only external network of the cloud is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_network: Option<NetworkParam>,

    /// Whether the workers reach an external network through a router. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_external_network: Option<bool>,

    /// Security groups capow creates and applies to every worker port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_security_groups: Option<ManagedSecurityGroups>,

    /// Extra Neutron tags on everything capow creates for the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        inner(length(min = 1, max = 60), regex(pattern = r"^[^,/]+$"))
    )]
    #[x_kube(validation = Rule::new("self.all(t, t != 'capow' && !t.startsWith('capow-'))").message("the tag 'capow' and tags starting with 'capow-' are reserved for capow's ownership tags"))]
    pub tags: Vec<String>,

    /// Where the (hosted) control plane is reached. Written by the control-plane provider;
    /// capow never allocates a load balancer or floating IP for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<ApiEndpoint>,

    /// A cluster-autoscaler for this cluster, run by capow in the management cluster next to
    /// the hosted control plane. Absent: capow runs none (run your own against capow's
    /// externalgrpc server with the `<cluster>-capow-autoscaler` Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<super::autoscaler::ManagedAutoscaler>,
    /// Node lifecycle: maximum node age and startup taint (all off by default;
    /// `crate::api::lifecycle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lifecycle: Option<NodeLifecycle>,
}

/// A subnet capow creates (CAPO `SubnetSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedSubnet {
    /// CIDR, e.g. `10.6.0.0/24`.
    #[schemars(length(min = 1))]
    pub cidr: String,
    /// DNS servers handed out by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub dns_nameservers: Vec<String>,
    /// Allocation pools; Neutron's default (the whole CIDR minus the gateway) when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub allocation_pools: Vec<AllocationPool>,
}

/// An IP range of a subnet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationPool {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// Options of the network capow creates (CAPO `ManagedNetwork`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedNetwork {
    /// MTU in bytes; the cloud's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68))]
    pub mtu: Option<i32>,
    /// Port security on the network; the cloud's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security_enabled: Option<bool>,
}

/// Selects an existing router by ID or filter (CAPO v1beta2 `RouterParam`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filter)").message("exactly one of id or filter must be set"))]
pub struct RouterParam {
    /// Router UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub id: Option<String>,
    /// Selects the router by name; exactly one must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<RouterFilter>,
}

/// Router filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterFilter {
    /// Router name, matched exactly.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The router capow creates (CAPO `managedRouter`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRouter {
    /// Fixed IPs to request on the external gateway.
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub external_ips: Vec<String>,
}

/// Security groups capow manages for the workers (CAPO `ManagedSecurityGroups`, worker part).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedSecurityGroups {
    /// Rules of the worker security group, in addition to "all egress" (Neutron's default
    /// egress rules of a new group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub worker_nodes_security_group_rules: Vec<SecurityGroupRule>,
    /// Allow all traffic between workers (a rule per ether type with the group itself as
    /// remote). Default true: CNIs such as Cilium need their overlay and health ports open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_all_in_cluster_traffic: Option<bool>,
}

/// A security group rule (CAPO `SecurityGroupRuleSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.remoteGroupID), has(self.remoteIPPrefix), has(self.remoteManagedGroups)].filter(x, x).size() <= 1").message("set at most one of remoteGroupID, remoteIPPrefix and remoteManagedGroups"))]
pub struct SecurityGroupRule {
    /// Unique name of the rule within the list.
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ingress` or `egress`.
    pub direction: RuleDirection,
    /// `IPv4` or `IPv6`; IPv4 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ether_type: Option<EtherType>,
    /// First port (TCP/UDP/SCTP), or ICMP type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub port_range_min: Option<i32>,
    /// Last port, or ICMP code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub port_range_max: Option<i32>,
    /// Protocol name (`tcp`, `udp`, `icmp`, `sctp`, ...) or number; any when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Remote security group UUID.
    #[serde(
        default,
        rename = "remoteGroupID",
        skip_serializing_if = "Option::is_none"
    )]
    pub remote_group_id: Option<String>,
    /// Remote CIDR.
    #[serde(
        default,
        rename = "remoteIPPrefix",
        skip_serializing_if = "Option::is_none"
    )]
    pub remote_ip_prefix: Option<String>,
    /// Managed groups as remote; only `worker` exists for hosted control planes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub remote_managed_groups: Vec<ManagedGroup>,
}

/// Rule direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleDirection {
    /// Incoming traffic.
    #[default]
    Ingress,
    /// Outgoing traffic.
    Egress,
}

/// Ether type of a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EtherType {
    /// IPv4.
    #[default]
    IPv4,
    /// IPv6.
    IPv6,
}

/// A security group capow manages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ManagedGroup {
    /// The worker security group.
    #[default]
    Worker,
}

/// Host and port of an API endpoint (CAPI `APIEndpoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiEndpoint {
    /// Host name or IP address.
    #[serde(default)]
    pub host: String,
    /// Port.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65535))]
    pub port: i32,
}

/// Observed state of the cluster's OpenStack infrastructure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerClusterStatus {
    /// `provisioned` is true once network, router and security groups are in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ClusterInitialization>,
    /// The workers' network and its subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatusWithSubnets>,
    /// The external network of the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_network: Option<NetworkStatus>,
    /// The router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterStatus>,
    /// The managed worker security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_security_group: Option<SecurityGroupStatus>,
    /// Failure domains (available Nova availability zones), CAPI v1beta2 list shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_domains: Vec<FailureDomain>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, `Ready` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// State of the node lifecycle features, written only by the lifecycle controller (field
    /// manager `capow-lifecycle`). Read here, never serialized with the rest of the status:
    /// the cluster controller applies the status it read back as a whole, and would otherwise
    /// take over (and could roll back) what the lifecycle controller wrote.
    #[serde(default, skip_serializing)]
    pub node_lifecycle: Option<NodeLifecycleStatus>,
}

/// `status.initialization` of the CAPI v1beta2 InfraCluster contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInitialization {
    /// True once the infrastructure is ready; never reset to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// A network as resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// A network with its subnets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatusWithSubnets {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// True when capow created it (and deletes it with the cluster).
    #[serde(default)]
    pub managed: bool,
    /// Subnets, the primary first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<SubnetStatus>,
}

/// A subnet as resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetStatus {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// CIDR.
    #[serde(default)]
    pub cidr: String,
}

/// A router as resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// True when capow created it.
    #[serde(default)]
    pub managed: bool,
    /// External gateway addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

/// A security group as resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupStatus {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// A CAPI v1beta2 failure domain (`FailureDomain` list item).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureDomain {
    /// Name: the Nova availability zone.
    pub name: String,
    /// Whether control-plane machines may use it; always false (the control plane is hosted).
    #[serde(default)]
    pub control_plane: bool,
    /// Free-form attributes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// `OpenStackWorkerClusterTemplate`: what ClusterClass clones an `OpenStackWorkerCluster` from.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "OpenStackWorkerClusterTemplate",
    plural = "openstackworkerclustertemplates",
    shortname = "oswct",
    namespaced,
    doc = "Template from which CAPI (ClusterClass) creates an OpenStackWorkerCluster.",
    category = "cluster-api",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerClusterTemplateSpec {
    /// The cluster infrastructure each Cluster of the class gets.
    pub template: OpenStackWorkerClusterTemplateResource,
}

/// The `template` of an `OpenStackWorkerClusterTemplate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackWorkerClusterTemplateResource {
    /// Labels and annotations copied to the `OpenStackWorkerCluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// Spec of the `OpenStackWorkerCluster`.
    pub spec: OpenStackWorkerClusterSpec,
}

impl OpenStackWorkerCluster {
    /// True once `status.initialization.provisioned` is true.
    pub fn provisioned(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .and_then(|i| i.provisioned)
            .unwrap_or(false)
    }
}
