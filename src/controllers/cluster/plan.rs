//! Pure decisions of the cluster controller: names and tags of what capow creates, the worker
//! security group's desired rules and the difference to what Neutron has, and failure domains.

use crate::api::cluster::{
    EtherType, FailureDomain, ManagedSecurityGroups, OpenStackWorkerClusterSpec, RuleDirection,
};
use crate::api::ownership::{CLUSTER_UID_TAG_PREFIX, MANAGED_TAG};
use crate::openstack::compute::AvailabilityZone;
use crate::openstack::network::{CreateSecurityGroupRule, SecurityGroupRule};

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

    #[test]
    fn a_recorded_uid_other_than_the_clusters_means_adoption() {
        assert_eq!(recorded(None, "new"), Recorded::Missing);
        assert_eq!(recorded(Some(""), "new"), Recorded::Missing);
        assert_eq!(recorded(Some("new"), "new"), Recorded::Current);
        assert_eq!(recorded(Some("old"), "new"), Recorded::Previous("old"));
    }
}
