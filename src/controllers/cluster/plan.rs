//! Pure decisions of the cluster controller: names, tags and descriptions of what capow creates
//! (the [`Owner`]), which network and router the spec asks for ([`network_plan`],
//! [`router_plan`]), the Neutron create requests, which subnets exist and which to create,
//! which of several resources found for one purpose to keep, the worker security group's
//! desired rules and the difference to what Neutron has, failure domains, and whether a deletion
//! may touch OpenStack ([`deletion`]). No I/O; tested below.
//!
//! Input errors are returned as `(field, message)`, which the caller turns into
//! [`crate::controllers::Error::InvalidSpec`].

use kube::ResourceExt;

use crate::api::cluster::{
    EtherType, FailureDomain, ManagedSecurityGroups, ManagedSubnet, NetworkStatus,
    OpenStackWorkerCluster, OpenStackWorkerClusterSpec, OpenStackWorkerClusterStatus, RouterStatus,
    RuleDirection, SubnetStatus,
};
use crate::api::common::NetworkParam;
use crate::api::ownership::{CLUSTER_UID_TAG_PREFIX, MANAGED_TAG};
use crate::capi;
use crate::openstack::compute::AvailabilityZone;
use crate::openstack::network::{
    AllocationPool, CreateNetwork, CreateRouter, CreateSecurityGroup, CreateSecurityGroupRule,
    CreateSubnet, ExternalGatewayInfo, ListFilter, Network, PortFixedIp, Router, SecurityGroupRule,
    Subnet,
};

/// An input error: the field path (e.g. `spec.router.filter.name`) and what is wrong with it.
pub type Invalid = (String, String);

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    (field.to_owned(), message.into())
}

/// The ownership tag of everything capow creates for the cluster with `uid`.
pub fn cluster_uid_tag(uid: &str) -> String {
    format!("{CLUSTER_UID_TAG_PREFIX}{uid}")
}

/// Tags of cluster resources: capow's marker, the cluster UID, then the spec's extra tags
/// without the reserved ones (the CRD rejects those; an object stored before that rule must
/// still never claim another owner's tag).
pub fn tags(cluster_uid: &str, extra: &[String]) -> Vec<String> {
    let mut tags = vec![MANAGED_TAG.to_owned(), cluster_uid_tag(cluster_uid)];
    for t in extra {
        if !tags.contains(t) && !crate::api::ownership::is_reserved_tag(t) {
            tags.push(t.clone());
        }
    }
    tags
}

/// The description of every Neutron resource capow creates for a cluster: it names the
/// Cluster for people and carries the Cluster's UID tag, so a resource whose tags were never
/// set (a crash between create and tag) is still found by an exact description filter.
pub fn ownership_description(namespace: &str, cluster: &str, uid: &str) -> String {
    format!(
        "Created by capow for Cluster {namespace}/{cluster} ({})",
        cluster_uid_tag(uid)
    )
}

/// Annotation on an `OpenStackWorkerCluster`: the UID of the Cluster whose
/// `capow-cluster-uid=<uid>` tag (and ownership description) the cluster's network, subnets,
/// router and security group carry. Written before capow creates anything for the cluster.
/// `clusterctl move` and restores re-create the Cluster with a new UID but keep annotations
/// (status is never restored: cluster-api v1.14.2
/// `docs/book/src/developer/providers/contracts/clusterctl.md`, "Move"), so a recorded UID
/// other than the owner Cluster's tells capow to adopt what it created under the earlier one.
pub const CLUSTER_UID_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/cluster-uid";

/// What the UID recorded in [`CLUSTER_UID_ANNOTATION`] means for the Cluster with `uid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded<'a> {
    /// Nothing recorded: record `uid` before creating anything.
    Missing,
    /// `uid` is recorded: the resources carry it.
    Current,
    /// Another UID is recorded: the Cluster was re-created (clusterctl move, a restore); adopt
    /// what carries that UID, then record `uid`.
    Previous(&'a str),
}

/// Compares the recorded UID (`annotation`) with the owner Cluster's `uid`.
pub fn recorded<'a>(annotation: Option<&'a str>, uid: &str) -> Recorded<'a> {
    match annotation.filter(|a| !a.is_empty()) {
        None => Recorded::Missing,
        Some(a) if a == uid => Recorded::Current,
        Some(a) => Recorded::Previous(a),
    }
}

/// Base name of the cluster's resources: `capow-<namespace>-<cluster>`.
pub fn base_name(namespace: &str, cluster: &str) -> String {
    format!("capow-{namespace}-{cluster}")
}

/// A rule in a form that compares equal to the same rule as Neutron reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleKey {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// Protocol, lower-case, `None` for any.
    pub protocol: Option<String>,
    /// First port.
    pub port_range_min: Option<i32>,
    /// Last port.
    pub port_range_max: Option<i32>,
    /// Remote group (the worker group's own ID for `remoteManagedGroups: [worker]`).
    pub remote_group_id: Option<String>,
    /// Remote CIDR.
    pub remote_ip_prefix: Option<String>,
}

impl RuleKey {
    /// The key of a rule Neutron returned.
    pub fn of(rule: &SecurityGroupRule) -> RuleKey {
        RuleKey {
            direction: rule.direction.clone(),
            ethertype: rule.ethertype.clone(),
            protocol: rule.protocol.as_ref().map(|p| p.to_lowercase()),
            port_range_min: rule.port_range_min,
            port_range_max: rule.port_range_max,
            remote_group_id: rule.remote_group_id.clone(),
            remote_ip_prefix: rule.remote_ip_prefix.clone(),
        }
    }

    /// Neutron creates "allow all egress" for IPv4 and IPv6 in every new group; capow keeps
    /// them.
    pub fn is_default_egress(&self) -> bool {
        self.direction == "egress"
            && self.protocol.is_none()
            && self.port_range_min.is_none()
            && self.port_range_max.is_none()
            && self.remote_group_id.is_none()
            && self.remote_ip_prefix.is_none()
    }

    /// The create request of this rule in `group`.
    pub fn create(&self, group: &str, description: Option<String>) -> CreateSecurityGroupRule {
        CreateSecurityGroupRule {
            security_group_id: group.to_owned(),
            direction: self.direction.clone(),
            ethertype: self.ethertype.clone(),
            protocol: self.protocol.clone(),
            port_range_min: self.port_range_min,
            port_range_max: self.port_range_max,
            remote_group_id: self.remote_group_id.clone(),
            remote_ip_prefix: self.remote_ip_prefix.clone(),
            description,
        }
    }
}

/// The rules the worker group `group` must have: all traffic between workers (unless
/// `allowAllInClusterTraffic` is false) plus the spec's rules, with `remoteManagedGroups:
/// [worker]` turned into the group's own ID. Returned with descriptions, sorted, deduplicated.
pub fn desired_rules(spec: &ManagedSecurityGroups, group: &str) -> Vec<(RuleKey, Option<String>)> {
    let mut out: Vec<(RuleKey, Option<String>)> = Vec::new();
    if spec.allow_all_in_cluster_traffic.unwrap_or(true) {
        for ethertype in ["IPv4", "IPv6"] {
            out.push((
                RuleKey {
                    direction: "ingress".into(),
                    ethertype: ethertype.into(),
                    protocol: None,
                    port_range_min: None,
                    port_range_max: None,
                    remote_group_id: Some(group.to_owned()),
                    remote_ip_prefix: None,
                },
                Some("capow: all traffic between workers".into()),
            ));
        }
    }
    for r in &spec.worker_nodes_security_group_rules {
        let remote_group_id = if r.remote_managed_groups.is_empty() {
            r.remote_group_id.clone()
        } else {
            Some(group.to_owned())
        };
        out.push((
            RuleKey {
                direction: match r.direction {
                    RuleDirection::Ingress => "ingress".into(),
                    RuleDirection::Egress => "egress".into(),
                },
                ethertype: match r.ether_type.unwrap_or_default() {
                    EtherType::IPv4 => "IPv4".into(),
                    EtherType::IPv6 => "IPv6".into(),
                },
                protocol: r.protocol.as_ref().map(|p| p.to_lowercase()),
                port_range_min: r.port_range_min,
                port_range_max: r.port_range_max,
                remote_group_id,
                remote_ip_prefix: r.remote_ip_prefix.clone(),
            },
            Some(format!(
                "capow: {}",
                r.description.clone().unwrap_or_else(|| r.name.clone())
            )),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// What to change in a group: rules to create and rule IDs to delete. Neutron's default
/// egress rules are never deleted.
pub fn rule_changes(
    desired: &[(RuleKey, Option<String>)],
    existing: &[SecurityGroupRule],
) -> (Vec<(RuleKey, Option<String>)>, Vec<String>) {
    let have: Vec<RuleKey> = existing.iter().map(RuleKey::of).collect();
    let create = desired
        .iter()
        .filter(|(k, _)| !have.contains(k))
        .cloned()
        .collect();
    let delete = existing
        .iter()
        .filter(|r| {
            let k = RuleKey::of(r);
            !k.is_default_egress() && !desired.iter().any(|(d, _)| *d == k)
        })
        .map(|r| r.id.clone())
        .collect();
    (create, delete)
}

/// Failure domains from Nova's availability zones: every available zone, sorted; none is for
/// control-plane machines (the control plane is hosted).
pub fn failure_domains(zones: &[AvailabilityZone]) -> Vec<FailureDomain> {
    let mut names: Vec<&str> = zones
        .iter()
        .filter(|z| z.state.available && z.name != "internal")
        .map(|z| z.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| FailureDomain {
            name: n.to_owned(),
            control_plane: false,
            attributes: Default::default(),
        })
        .collect()
}

/// Whether capow creates the network (managed subnets and no existing network).
pub fn manages_network(spec: &OpenStackWorkerClusterSpec) -> bool {
    spec.network.is_none() && !spec.managed_subnets.is_empty()
}

/// The owner Cluster's `(name, UID)`: the owner reference of kind `Cluster` in the CAPI
/// group (CAPI sets it on the infrastructure cluster, cluster-api v1.14.2
/// `docs/book/src/developer/providers/contracts/infra-cluster.md`); `None` until then.
pub fn owner_cluster(c: &OpenStackWorkerCluster) -> Option<(String, String)> {
    c.owner_references()
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.split('/').next() == Some(capi::GROUP))
        .map(|o| (o.name.clone(), o.uid.clone()))
}

/// How capow marks what it creates for one cluster, so that it finds it again after a crash.
///
/// Neutron accepts tags in a create request only with the `tag-creation` extension (2023.1 and
/// later, <https://docs.openstack.org/api-ref/network/v2/#tag-extension-tags>); older clouds need
/// a second call to tag the resource, and a crash between the two would leave an untagged
/// resource that no tag lookup finds. The description, which every Neutron create accepts and
/// every listing can filter on, therefore carries the cluster's UID as well
/// ([`ownership_description`]), and lookups try the tags first, then the description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// capow's tags, the cluster UID tag, then the spec's extra tags.
    pub tags: Vec<String>,
    /// The description every created resource gets.
    pub description: String,
    /// Whether the cloud takes `tags` in create requests.
    pub tag_on_create: bool,
}

impl Owner {
    /// The owner of what capow creates for Cluster `namespace/cluster` with `uid`, with the
    /// spec's `extra_tags`, on a cloud that does (`tag_on_create`) or does not take tags in
    /// create requests.
    pub fn new(
        namespace: &str,
        cluster: &str,
        uid: &str,
        extra_tags: &[String],
        tag_on_create: bool,
    ) -> Owner {
        Owner {
            tags: tags(uid, extra_tags),
            description: ownership_description(namespace, cluster, uid),
            tag_on_create,
        }
    }

    /// The tags to send in a create request, when the cloud takes them there.
    pub fn create_tags(&self) -> Option<Vec<String>> {
        self.tag_on_create.then(|| self.tags.clone())
    }

    /// The filter that finds resources created before a crash left them untagged.
    pub fn description_filter(&self) -> ListFilter {
        ListFilter::attribute("description", self.description.clone())
    }

    /// Whether `tags` already hold every tag of this owner (then no tag call is needed).
    pub fn tagged(&self, tags: &[String]) -> bool {
        self.tags.iter().all(|t| tags.contains(t))
    }

    /// The cluster UID tag (`capow-cluster-uid=<uid>`).
    pub fn uid_tag(&self) -> &str {
        self.tags.get(1).map(String::as_str).unwrap_or_default()
    }
}

/// The filter on a cluster's ownership tags (`tags` from [`tags`]): capow's marker and the UID
/// tag; the UID tag alone identifies the cluster, the extra tags are not part of the lookup.
pub fn tag_filter(tags: &[String]) -> ListFilter {
    ListFilter {
        tags: tags.iter().take(2).cloned().collect(),
        ..ListFilter::default()
    }
}

/// Keeps the oldest of several resources capow created for the same purpose (by Neutron's
/// `created_at`, then ID) and returns it with the others, which a create repeated after a lost
/// answer left behind.
pub fn oldest<T>(
    mut found: Vec<T>,
    key: impl Fn(&T) -> (Option<String>, String),
) -> (Option<T>, Vec<T>) {
    found.sort_by_key(|t| key(t));
    if found.is_empty() {
        return (None, found);
    }
    let first = found.remove(0);
    (Some(first), found)
}

/// `ids` without repeats, in first-seen order.
pub fn unique_ids(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Where the workers' network comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkPlan<'a> {
    /// An existing network (`spec.network`), with `spec.subnets` or all its subnets.
    Existing(&'a NetworkParam),
    /// capow creates (or finds again) the network and `spec.managedSubnets`.
    Managed,
}

/// Which network the spec asks for.
///
/// # Errors
/// `spec` when neither `network` nor `managedSubnets` is set.
pub fn network_plan(spec: &OpenStackWorkerClusterSpec) -> Result<NetworkPlan<'_>, Invalid> {
    if let Some(p) = &spec.network {
        return Ok(NetworkPlan::Existing(p));
    }
    if !manages_network(spec) {
        return Err(invalid(
            "spec",
            "set network (an existing network) or managedSubnets (capow creates the network)",
        ));
    }
    Ok(NetworkPlan::Managed)
}

/// The create request of the cluster's network, named `base`, with the MTU and port security
/// of `spec.managedNetwork` when set.
pub fn network_request(
    spec: &OpenStackWorkerClusterSpec,
    owner: &Owner,
    base: &str,
) -> CreateNetwork {
    let managed = spec.managed_network.as_ref();
    CreateNetwork {
        name: base.to_owned(),
        admin_state_up: true,
        description: owner.description.clone(),
        tags: owner.create_tags(),
        mtu: managed.and_then(|m| m.mtu),
        port_security_enabled: managed.and_then(|m| m.port_security_enabled),
    }
}

/// The create request of `spec.managedSubnets[index]` (`want`) in `network_id`: named
/// `<base>-<index>`, IPv6 when the CIDR holds a `:`.
pub fn subnet_request(
    network_id: &str,
    index: usize,
    want: &ManagedSubnet,
    owner: &Owner,
    base: &str,
) -> CreateSubnet {
    CreateSubnet {
        network_id: network_id.to_owned(),
        name: format!("{base}-{index}"),
        cidr: want.cidr.clone(),
        ip_version: if want.cidr.contains(':') { 6 } else { 4 },
        description: owner.description.clone(),
        tags: owner.create_tags(),
        dns_nameservers: want.dns_nameservers.clone(),
        allocation_pools: want
            .allocation_pools
            .iter()
            .map(|p| AllocationPool {
                start: p.start.clone(),
                end: p.end.clone(),
            })
            .collect(),
    }
}

/// What to do for one entry of `spec.managedSubnets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubnetStep {
    /// The network already has a subnet with this CIDR.
    Keep(Subnet),
    /// Create it (`index` is the entry's position, for the field path of a refusal).
    Create {
        /// Position in `spec.managedSubnets`.
        index: usize,
        /// The create request.
        request: CreateSubnet,
    },
}

/// One step per entry of `spec.managedSubnets`, in order: keep the `existing` subnet of the
/// network `network_id` with the same CIDR, or create it.
pub fn subnet_steps(
    wants: &[ManagedSubnet],
    existing: &[Subnet],
    network_id: &str,
    owner: &Owner,
    base: &str,
) -> Vec<SubnetStep> {
    wants
        .iter()
        .enumerate()
        .map(
            |(i, want)| match existing.iter().find(|s| s.cidr == want.cidr) {
                Some(s) => SubnetStep::Keep(s.clone()),
                None => SubnetStep::Create {
                    index: i,
                    request: subnet_request(network_id, i, want, owner, base),
                },
            },
        )
        .collect()
}

/// A subnet as `status.network.subnets` reports it.
pub fn subnet_status(s: Subnet) -> SubnetStatus {
    SubnetStatus {
        id: s.id,
        name: s.name,
        cidr: s.cidr,
    }
}

/// How an existing router (`spec.router`) is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterLookup<'a> {
    /// By UUID (`spec.router.id`; wins when both are set).
    Id(&'a str),
    /// By name (`spec.router.filter.name`): exactly one router must have it.
    Name(&'a str),
}

/// Which router the cluster gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterPlan<'a> {
    /// An existing router (`spec.router`); capow attaches its managed subnets to it and never
    /// deletes it.
    Existing(RouterLookup<'a>),
    /// A router capow creates on the external network, when it manages the network and
    /// `enableExternalNetwork` is not false; none when the cloud has no external network.
    Managed,
    /// No router.
    None,
}

/// Which router the spec asks for, given whether capow manages the network
/// (`network_managed`).
///
/// # Errors
/// `spec.router` when it has neither `id` nor `filter`.
pub fn router_plan(
    spec: &OpenStackWorkerClusterSpec,
    network_managed: bool,
) -> Result<RouterPlan<'_>, Invalid> {
    if let Some(p) = &spec.router {
        return match (&p.id, &p.filter) {
            (Some(id), _) => Ok(RouterPlan::Existing(RouterLookup::Id(id))),
            (None, Some(f)) => Ok(RouterPlan::Existing(RouterLookup::Name(&f.name))),
            (None, None) => Err(invalid("spec.router", "one of id or filter is required")),
        };
    }
    if !network_managed || spec.enable_external_network == Some(false) {
        return Ok(RouterPlan::None);
    }
    Ok(RouterPlan::Managed)
}

/// The one router of `found` (the routers named `name`).
///
/// # Errors
/// `spec.router.filter.name` when none or several have the name.
pub fn named_router(mut found: Vec<Router>, name: &str) -> Result<Router, Invalid> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(invalid(
            "spec.router.filter.name",
            format!("no router named {name:?}"),
        )),
        n => Err(invalid(
            "spec.router.filter.name",
            format!("{n} routers named {name:?}"),
        )),
    }
}

/// The external network when `spec.externalNetwork` is unset: the cloud's only one (`found`,
/// the networks with `router:external=true`), `None` when it has none.
///
/// # Errors
/// `spec.externalNetwork` when the cloud has several.
pub fn sole_external_network(mut found: Vec<Network>) -> Result<Option<NetworkStatus>, Invalid> {
    match found.len() {
        0 => Ok(None),
        1 => {
            let n = found.remove(0);
            Ok(Some(NetworkStatus {
                id: n.id,
                name: n.name,
            }))
        }
        n => Err(invalid(
            "spec.externalNetwork",
            format!(
                "the cloud has {n} external networks; name one (or set enableExternalNetwork: false)"
            ),
        )),
    }
}

/// The create request of the cluster's router, named `base`, with its gateway on
/// `external_network` at `spec.managedRouter.externalIPs` when set.
pub fn router_request(
    spec: &OpenStackWorkerClusterSpec,
    owner: &Owner,
    base: &str,
    external_network: &str,
) -> CreateRouter {
    let ips = spec
        .managed_router
        .as_ref()
        .map(|r| r.external_ips.clone())
        .unwrap_or_default();
    CreateRouter {
        name: base.to_owned(),
        external_gateway_info: ExternalGatewayInfo {
            network_id: external_network.to_owned(),
            external_fixed_ips: ips
                .into_iter()
                .map(|ip| PortFixedIp {
                    subnet_id: None,
                    ip_address: Some(ip),
                })
                .collect(),
        },
        description: owner.description.clone(),
        tags: owner.create_tags(),
    }
}

/// A router as `status.router` reports it: its gateway addresses, and whether capow created it
/// (`managed`).
pub fn router_status(router: Router, managed: bool) -> RouterStatus {
    let ips = router
        .external_gateway_info
        .as_ref()
        .map(|g| {
            g.external_fixed_ips
                .iter()
                .filter_map(|f| f.ip_address.clone())
                .collect()
        })
        .unwrap_or_default();
    RouterStatus {
        id: router.id,
        name: router.name,
        managed,
        ips,
    }
}

/// The create request of the worker security group `name`.
pub fn security_group_request(name: &str, owner: &Owner) -> CreateSecurityGroup {
    CreateSecurityGroup {
        name: name.to_owned(),
        description: owner.description.clone(),
        tags: owner.create_tags(),
    }
}

/// Whether a resource found by the previous UID's tag or description is adopted: only when its
/// `description` is the previous ownership description (`old`) or already the new one
/// (`new`, a crash between retag and describe), so an annotation copied to another cluster
/// adopts nothing.
pub fn adoptable(description: &str, old: &str, new: &str) -> bool {
    description == old || description == new
}

/// The routers whose interfaces on the managed subnets go before the subnets: those capow
/// created (`managed`) and an existing router (`spec.router`) the status names.
pub fn routers_to_detach(managed: &[String], status_router: Option<&RouterStatus>) -> Vec<String> {
    let mut all = managed.to_vec();
    if let Some(r) = status_router.filter(|r| !r.managed) {
        all.push(r.id.clone());
    }
    all
}

/// What a deletion of the object may do, from the object alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// `clusterctl move` deletes the source's copy (`clusterctl.cluster.x-k8s.io/delete-for-move`):
    /// the OpenStack resources belong to the target; release the finalizer.
    ReleaseForMove,
    /// The object carries `cluster.x-k8s.io/paused`: wait until it is removed.
    Paused,
    /// Never owned by a Cluster: nothing was ever created (creation waits for the owner);
    /// release the finalizer.
    NeverOwned,
    /// Delete what capow created for the owner Cluster `(name, uid)`.
    Proceed {
        /// The owner Cluster's name.
        cluster_name: String,
        /// The owner Cluster's UID.
        cluster_uid: String,
    },
}

/// What a deletion of `c` may do (checked in this order).
pub fn deletion(c: &OpenStackWorkerCluster) -> Deletion {
    if c.annotations()
        .contains_key(capi::DELETE_FOR_MOVE_ANNOTATION)
    {
        return Deletion::ReleaseForMove;
    }
    if capi::has_paused_annotation(c.annotations()) {
        return Deletion::Paused;
    }
    match owner_cluster(c) {
        None => Deletion::NeverOwned,
        Some((cluster_name, cluster_uid)) => Deletion::Proceed {
            cluster_name,
            cluster_uid,
        },
    }
}

/// Whether the status shows that capow never created anything (no initialization, no
/// network): then a deletion whose identity cannot be loaded releases the finalizer.
pub fn nothing_created(status: &OpenStackWorkerClusterStatus) -> bool {
    status.initialization.is_none() && status.network.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cluster::{ManagedGroup, SecurityGroupRule as SpecRule};
    use crate::openstack::compute::ZoneState;

    fn neutron_rule(id: &str, key: &RuleKey) -> SecurityGroupRule {
        SecurityGroupRule {
            id: id.into(),
            direction: key.direction.clone(),
            ethertype: key.ethertype.clone(),
            protocol: key.protocol.clone(),
            port_range_min: key.port_range_min,
            port_range_max: key.port_range_max,
            remote_group_id: key.remote_group_id.clone(),
            remote_ip_prefix: key.remote_ip_prefix.clone(),
            description: None,
        }
    }

    fn cilium() -> ManagedSecurityGroups {
        ManagedSecurityGroups {
            allow_all_in_cluster_traffic: Some(false),
            worker_nodes_security_group_rules: vec![
                SpecRule {
                    name: "cilium-vxlan".into(),
                    direction: RuleDirection::Ingress,
                    protocol: Some("UDP".into()),
                    port_range_min: Some(8472),
                    port_range_max: Some(8472),
                    remote_managed_groups: vec![ManagedGroup::Worker],
                    ..SpecRule::default()
                },
                SpecRule {
                    name: "cilium-health".into(),
                    direction: RuleDirection::Ingress,
                    protocol: Some("tcp".into()),
                    port_range_min: Some(4240),
                    port_range_max: Some(4240),
                    remote_managed_groups: vec![ManagedGroup::Worker],
                    ..SpecRule::default()
                },
                SpecRule {
                    name: "nodeports".into(),
                    direction: RuleDirection::Ingress,
                    protocol: Some("tcp".into()),
                    port_range_min: Some(30000),
                    port_range_max: Some(32767),
                    remote_ip_prefix: Some("0.0.0.0/0".into()),
                    ..SpecRule::default()
                },
            ],
        }
    }

    #[test]
    fn cni_rules_point_at_the_worker_group_itself() {
        let rules = desired_rules(&cilium(), "sg-1");
        assert_eq!(rules.len(), 3);
        let vxlan = rules
            .iter()
            .find(|(k, _)| k.port_range_min == Some(8472))
            .unwrap();
        assert_eq!(vxlan.0.protocol.as_deref(), Some("udp"));
        assert_eq!(vxlan.0.remote_group_id.as_deref(), Some("sg-1"));
        assert_eq!(vxlan.0.ethertype, "IPv4");
        let nodeports = rules
            .iter()
            .find(|(k, _)| k.port_range_min == Some(30000))
            .unwrap();
        assert_eq!(nodeports.0.remote_group_id, None);
        assert_eq!(nodeports.0.remote_ip_prefix.as_deref(), Some("0.0.0.0/0"));
    }

    #[test]
    fn allow_all_in_cluster_traffic_is_the_default() {
        let rules = desired_rules(&ManagedSecurityGroups::default(), "sg-1");
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|(k, _)| k.direction == "ingress"
            && k.protocol.is_none()
            && k.remote_group_id.as_deref() == Some("sg-1")));
    }

    #[test]
    fn rule_changes_add_missing_delete_foreign_keep_default_egress() {
        let desired = desired_rules(&cilium(), "sg-1");
        let default_egress = RuleKey {
            direction: "egress".into(),
            ethertype: "IPv4".into(),
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote_group_id: None,
            remote_ip_prefix: None,
        };
        let foreign = RuleKey {
            direction: "ingress".into(),
            protocol: Some("tcp".into()),
            port_range_min: Some(22),
            port_range_max: Some(22),
            remote_ip_prefix: Some("0.0.0.0/0".into()),
            ..default_egress.clone()
        };
        let existing = vec![
            neutron_rule("r-egress", &default_egress),
            neutron_rule("r-vxlan", &desired[0].0),
            neutron_rule("r-ssh", &foreign),
        ];
        let (create, delete) = rule_changes(&desired, &existing);
        assert_eq!(create.len(), 2);
        assert!(!create.iter().any(|(k, _)| *k == desired[0].0));
        assert_eq!(delete, ["r-ssh"]);
        // Converged: nothing to do.
        let all: Vec<_> = std::iter::once(neutron_rule("e", &default_egress))
            .chain(
                desired
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| neutron_rule(&i.to_string(), k)),
            )
            .collect();
        let (create, delete) = rule_changes(&desired, &all);
        assert!(create.is_empty() && delete.is_empty());
    }

    #[test]
    fn failure_domains_are_available_zones_sorted() {
        let z = |n: &str, a: bool| AvailabilityZone {
            name: n.into(),
            state: ZoneState { available: a },
        };
        let fds = failure_domains(&[
            z("az-b", true),
            z("internal", true),
            z("az-a", true),
            z("az-c", false),
            z("az-a", true),
        ]);
        let names: Vec<_> = fds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["az-a", "az-b"]);
        assert!(fds.iter().all(|f| !f.control_plane));
    }

    #[test]
    fn tags_and_names() {
        assert_eq!(
            tags("u1", &["x".into(), "capow".into()]),
            ["capow", "capow-cluster-uid=u1", "x"]
        );
        assert_eq!(base_name("ns", "c1"), "capow-ns-c1");
    }

    fn owner(tag_on_create: bool) -> Owner {
        Owner::new("ns", "c1", "u1", &["team=a".into()], tag_on_create)
    }

    fn managed_spec() -> OpenStackWorkerClusterSpec {
        OpenStackWorkerClusterSpec {
            managed_subnets: vec![
                ManagedSubnet {
                    cidr: "10.6.0.0/24".into(),
                    ..ManagedSubnet::default()
                },
                ManagedSubnet {
                    cidr: "fd00:6::/64".into(),
                    dns_nameservers: vec!["fd00::53".into()],
                    ..ManagedSubnet::default()
                },
            ],
            ..OpenStackWorkerClusterSpec::default()
        }
    }

    fn subnet(id: &str, cidr: &str) -> Subnet {
        Subnet {
            id: id.into(),
            cidr: cidr.into(),
            ..Subnet::default()
        }
    }

    fn with_owner(
        c: &mut OpenStackWorkerCluster,
        kind: &str,
        api_version: &str,
        name: &str,
        uid: &str,
    ) {
        c.metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    ..Default::default()
                },
            );
    }

    #[test]
    fn the_owner_sends_tags_in_a_create_only_where_the_cloud_takes_them() {
        let o = owner(true);
        assert_eq!(o.tags, ["capow", "capow-cluster-uid=u1", "team=a"]);
        assert_eq!(o.uid_tag(), "capow-cluster-uid=u1");
        assert_eq!(o.create_tags().as_deref(), Some(o.tags.as_slice()));
        assert_eq!(owner(false).create_tags(), None);
        assert_eq!(
            o.description,
            "Created by capow for Cluster ns/c1 (capow-cluster-uid=u1)"
        );
        assert_eq!(
            o.description_filter().to_string(),
            format!("description={}", o.description)
        );
        assert!(o.tagged(&[
            "x".into(),
            "team=a".into(),
            "capow".into(),
            "capow-cluster-uid=u1".into()
        ]));
        assert!(!o.tagged(&["capow".into(), "capow-cluster-uid=u1".into()]));
        // The lookup filter leaves out the extra tags.
        assert_eq!(tag_filter(&o.tags).tags, ["capow", "capow-cluster-uid=u1"]);
    }

    #[test]
    fn an_existing_network_wins_and_a_spec_without_network_or_subnets_is_refused() {
        let mut spec = managed_spec();
        assert_eq!(network_plan(&spec), Ok(NetworkPlan::Managed));
        spec.network = Some(NetworkParam {
            id: Some("net-x".into()),
            ..NetworkParam::default()
        });
        assert!(matches!(
            network_plan(&spec),
            Ok(NetworkPlan::Existing(p)) if p.id.as_deref() == Some("net-x")
        ));
        let empty = OpenStackWorkerClusterSpec::default();
        let (field, message) = network_plan(&empty).unwrap_err();
        assert_eq!(field, "spec");
        assert!(message.contains("managedSubnets"), "{message}");
    }

    #[test]
    fn the_network_request_carries_the_managed_network_options() {
        let mut spec = managed_spec();
        let body = network_request(&spec, &owner(false), "capow-ns-c1");
        assert_eq!(
            body,
            CreateNetwork {
                name: "capow-ns-c1".into(),
                admin_state_up: true,
                description: owner(false).description,
                tags: None,
                mtu: None,
                port_security_enabled: None,
            }
        );
        spec.managed_network = Some(crate::api::cluster::ManagedNetwork {
            mtu: Some(1400),
            port_security_enabled: Some(false),
        });
        let body = network_request(&spec, &owner(true), "capow-ns-c1");
        assert_eq!(
            (body.mtu, body.port_security_enabled),
            (Some(1400), Some(false))
        );
        assert_eq!(body.tags, Some(owner(true).tags));
    }

    #[test]
    fn subnets_with_an_existing_cidr_are_kept_and_the_others_created_in_spec_order() {
        let spec = managed_spec();
        let existing = [
            subnet("s-v6", "fd00:6::/64"),
            subnet("s-other", "10.9.0.0/24"),
        ];
        let steps = subnet_steps(
            &spec.managed_subnets,
            &existing,
            "net-1",
            &owner(false),
            "b",
        );
        assert_eq!(steps.len(), 2);
        match &steps[0] {
            SubnetStep::Create { index, request } => {
                assert_eq!(*index, 0);
                assert_eq!(request.name, "b-0");
                assert_eq!(request.network_id, "net-1");
                assert_eq!(request.cidr, "10.6.0.0/24");
                assert_eq!(request.ip_version, 4);
                assert!(request.dns_nameservers.is_empty() && request.tags.is_none());
            }
            other => panic!("expected a create, got {other:?}"),
        }
        assert_eq!(steps[1], SubnetStep::Keep(existing[0].clone()));
        // Nothing existing: both are created; the IPv6 one as version 6 with its DNS servers.
        let steps = subnet_steps(&spec.managed_subnets, &[], "net-1", &owner(false), "b");
        match &steps[1] {
            SubnetStep::Create { index, request } => {
                assert_eq!((*index, request.ip_version), (1, 6));
                assert_eq!(request.name, "b-1");
                assert_eq!(request.dns_nameservers, ["fd00::53"]);
            }
            other => panic!("expected a create, got {other:?}"),
        }
        // Converged: nothing to create.
        let all = [subnet("a", "10.6.0.0/24"), subnet("b", "fd00:6::/64")];
        assert!(
            subnet_steps(&spec.managed_subnets, &all, "net-1", &owner(false), "b")
                .iter()
                .all(|s| matches!(s, SubnetStep::Keep(_)))
        );
    }

    #[test]
    fn the_router_follows_the_spec_and_whether_capow_manages_the_network() {
        use crate::api::cluster::{RouterFilter, RouterParam};
        let mut spec = managed_spec();
        assert_eq!(router_plan(&spec, true), Ok(RouterPlan::Managed));
        // An existing network gets no router of capow's.
        assert_eq!(router_plan(&spec, false), Ok(RouterPlan::None));
        spec.enable_external_network = Some(false);
        assert_eq!(router_plan(&spec, true), Ok(RouterPlan::None));
        spec.enable_external_network = None;
        spec.router = Some(RouterParam {
            id: Some("r-1".into()),
            filter: Some(RouterFilter {
                name: "edge".into(),
            }),
        });
        // The ID wins over the filter, and an existing router is used on any network.
        assert_eq!(
            router_plan(&spec, false),
            Ok(RouterPlan::Existing(RouterLookup::Id("r-1")))
        );
        spec.router = Some(RouterParam {
            id: None,
            filter: Some(RouterFilter {
                name: "edge".into(),
            }),
        });
        assert_eq!(
            router_plan(&spec, true),
            Ok(RouterPlan::Existing(RouterLookup::Name("edge")))
        );
        spec.router = Some(RouterParam::default());
        assert_eq!(
            router_plan(&spec, true),
            Err((
                "spec.router".into(),
                "one of id or filter is required".into()
            ))
        );
    }

    #[test]
    fn a_router_name_must_match_exactly_one() {
        let r = |id: &str| Router {
            id: id.into(),
            name: "edge".into(),
            ..Router::default()
        };
        assert_eq!(named_router(vec![r("r-1")], "edge").unwrap().id, "r-1");
        assert_eq!(
            named_router(Vec::new(), "edge"),
            Err((
                "spec.router.filter.name".into(),
                "no router named \"edge\"".into()
            ))
        );
        assert_eq!(
            named_router(vec![r("r-1"), r("r-2")], "edge"),
            Err((
                "spec.router.filter.name".into(),
                "2 routers named \"edge\"".into()
            ))
        );
    }

    #[test]
    fn only_a_sole_external_network_is_picked_without_a_spec() {
        let n = |id: &str| Network {
            id: id.into(),
            name: format!("{id}-name"),
            ..Network::default()
        };
        assert_eq!(sole_external_network(Vec::new()), Ok(None));
        assert_eq!(
            sole_external_network(vec![n("ext")]),
            Ok(Some(NetworkStatus {
                id: "ext".into(),
                name: "ext-name".into()
            }))
        );
        let (field, message) = sole_external_network(vec![n("a"), n("b")]).unwrap_err();
        assert_eq!(field, "spec.externalNetwork");
        assert!(
            message.starts_with("the cloud has 2 external networks"),
            "{message}"
        );
    }

    #[test]
    fn the_router_request_asks_for_the_spec_gateway_addresses_and_status_reports_them() {
        let mut spec = managed_spec();
        let body = router_request(&spec, &owner(false), "b", "ext");
        assert_eq!(body.external_gateway_info.network_id, "ext");
        assert!(body.external_gateway_info.external_fixed_ips.is_empty());
        assert_eq!((body.name.as_str(), body.tags), ("b", None));
        spec.managed_router = Some(crate::api::cluster::ManagedRouter {
            external_ips: vec!["172.24.4.10".into()],
        });
        let body = router_request(&spec, &owner(true), "b", "ext");
        assert_eq!(
            body.external_gateway_info.external_fixed_ips,
            [PortFixedIp {
                subnet_id: None,
                ip_address: Some("172.24.4.10".into())
            }]
        );
        let router = Router {
            id: "r-1".into(),
            name: "b".into(),
            external_gateway_info: Some(body.external_gateway_info),
            ..Router::default()
        };
        let status = router_status(router, true);
        assert_eq!(status.ips, ["172.24.4.10"]);
        assert!(status.managed);
        let bare = router_status(
            Router {
                id: "r-2".into(),
                ..Router::default()
            },
            false,
        );
        assert!(bare.ips.is_empty() && !bare.managed);
    }

    #[test]
    fn duplicates_keep_the_oldest_and_ids_stay_unique() {
        let found = vec![
            (Some("2026-01-02T00:00:00Z".to_owned()), "b".to_owned()),
            (Some("2026-01-01T00:00:00Z".to_owned()), "c".to_owned()),
            (Some("2026-01-01T00:00:00Z".to_owned()), "a".to_owned()),
        ];
        let (kept, others) = oldest(found, Clone::clone);
        assert_eq!(kept.map(|k| k.1).as_deref(), Some("a"));
        let others: Vec<_> = others.into_iter().map(|o| o.1).collect();
        assert_eq!(others, ["c", "b"]);
        assert_eq!(
            oldest(Vec::<(Option<String>, String)>::new(), Clone::clone),
            (None, Vec::new())
        );
        assert_eq!(
            unique_ids(["x", "y", "x", "z", "y"].map(String::from)),
            ["x", "y", "z"]
        );
    }

    #[test]
    fn adoption_needs_this_clusters_description() {
        let old = ownership_description("ns", "c1", "old");
        let new = ownership_description("ns", "c1", "new");
        assert!(adoptable(&old, &old, &new));
        assert!(adoptable(&new, &old, &new));
        assert!(!adoptable(
            &ownership_description("ns", "other", "old"),
            &old,
            &new
        ));
    }

    #[test]
    fn an_existing_router_is_detached_too_but_never_counted_as_managed() {
        let managed = ["r-1".to_owned()];
        let existing = RouterStatus {
            id: "r-x".into(),
            managed: false,
            ..RouterStatus::default()
        };
        assert_eq!(routers_to_detach(&managed, Some(&existing)), ["r-1", "r-x"]);
        let own = RouterStatus {
            id: "r-1".into(),
            managed: true,
            ..RouterStatus::default()
        };
        assert_eq!(routers_to_detach(&managed, Some(&own)), ["r-1"]);
        assert_eq!(routers_to_detach(&[], None), Vec::<String>::new());
    }

    #[test]
    fn deletion_releases_moved_and_unowned_objects_and_waits_while_paused() {
        let mut c = OpenStackWorkerCluster::new("c1", OpenStackWorkerClusterSpec::default());
        assert_eq!(deletion(&c), Deletion::NeverOwned);
        // Only a CAPI Cluster owns it.
        with_owner(&mut c, "Cluster", "example.com/v1", "c1", "u0");
        assert_eq!(deletion(&c), Deletion::NeverOwned);
        with_owner(&mut c, "Cluster", "cluster.x-k8s.io/v1beta2", "c1", "u1");
        assert_eq!(
            deletion(&c),
            Deletion::Proceed {
                cluster_name: "c1".into(),
                cluster_uid: "u1".into()
            }
        );
        assert_eq!(owner_cluster(&c), Some(("c1".into(), "u1".into())));
        c.annotations_mut()
            .insert(capi::PAUSED_ANNOTATION.into(), String::new());
        assert_eq!(deletion(&c), Deletion::Paused);
        c.annotations_mut()
            .insert(capi::DELETE_FOR_MOVE_ANNOTATION.into(), String::new());
        assert_eq!(deletion(&c), Deletion::ReleaseForMove);
    }

    #[test]
    fn nothing_was_created_until_the_status_names_a_network_or_initialization() {
        let mut s = OpenStackWorkerClusterStatus::default();
        assert!(nothing_created(&s));
        s.network = Some(Default::default());
        assert!(!nothing_created(&s));
        s.network = None;
        s.initialization = Some(Default::default());
        assert!(!nothing_created(&s));
    }

    #[test]
    fn a_recorded_uid_other_than_the_clusters_means_adoption() {
        assert_eq!(recorded(None, "new"), Recorded::Missing);
        assert_eq!(recorded(Some(""), "new"), Recorded::Missing);
        assert_eq!(recorded(Some("new"), "new"), Recorded::Current);
        assert_eq!(recorded(Some("old"), "new"), Recorded::Previous("old"));
    }
}
