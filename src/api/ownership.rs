//! capow's ownership marks on OpenStack resources and the providerID of a server: the tags and
//! metadata keys that say which `OpenStackWorkerMachine` and Cluster a server, port, volume,
//! network, router or security group belongs to, shared by the controllers (which write and
//! sweep them) and the autoscaler index (which maps providerIDs to machines). No I/O.

/// Tag on every server and port capow creates; the batched server listing filters on it.
pub const MANAGED_TAG: &str = "capow";
/// Tag prefix naming the owning object's UID (`capow-machine-uid=<uid>`).
pub const MACHINE_UID_TAG_PREFIX: &str = "capow-machine-uid=";
/// Tag prefix naming the owning Cluster's UID (`capow-cluster-uid=<uid>`), for cluster sweeps.
pub const CLUSTER_UID_TAG_PREFIX: &str = "capow-cluster-uid=";
/// Server metadata key holding the owning object's UID.
pub const METADATA_MACHINE_UID: &str = "capow-machine-uid";
/// Server metadata key holding the cluster as `<namespace>/<name>`.
pub const METADATA_CLUSTER: &str = "capow-cluster";
/// Server and volume metadata key holding the Cluster's UID (the cluster sweep's filter for
/// Cinder, which has no tags).
pub const METADATA_CLUSTER_UID: &str = "capow-cluster-uid";
/// Server metadata key holding the node group (`MachineDeployment/<ns>/<name>`, or
/// `MachineSet/<ns>/<name>`), empty for Machines of neither.
pub const METADATA_NODE_GROUP: &str = "capow-node-group";
/// Prefix of every reserved tag besides [`MANAGED_TAG`] itself.
pub const RESERVED_TAG_PREFIX: &str = "capow-";

/// True for tags capow reserves for its ownership marks: `capow` and every tag starting with
/// `capow-` (`capow-machine-uid=<uid>`, `capow-cluster-uid=<uid>`). A user tag of that form could
/// make another machine adopt a server or another cluster's deletion sweep it, so the CRDs
/// reject such tags and capow drops them from what it sends.
pub fn is_reserved_tag(tag: &str) -> bool {
    tag == MANAGED_TAG || tag.starts_with(RESERVED_TAG_PREFIX)
}

/// The ownership tag of the object with `uid`.
pub fn machine_uid_tag(uid: &str) -> String {
    format!("{MACHINE_UID_TAG_PREFIX}{uid}")
}

/// providerID of a server: `openstack:///<uuid>`, or `openstack://<region>/<uuid>` when the
/// identityRef names a region (CAPO `openstackmachine_controller.go`, OCCM's node providerID).
pub fn provider_id(region: Option<&str>, server_id: &str) -> String {
    format!("openstack://{}/{server_id}", region.unwrap_or(""))
}

/// The server UUID in `provider_id` when it has the form capow writes for an identity with
/// `region` ([`provider_id`]: `openstack:///<uuid>`, or `openstack://<region>/<uuid>`); `None`
/// for any other form.
pub fn server_id_of_provider_id<'a>(provider_id: &'a str, region: Option<&str>) -> Option<&'a str> {
    let (in_region, id) = provider_id.strip_prefix("openstack://")?.split_once('/')?;
    (in_region == region.unwrap_or("") && !id.is_empty() && !id.contains('/')).then_some(id)
}

/// The machine UID in capow's `capow-machine-uid=<uid>` tag among `tags`, if any.
pub fn machine_uid_of_tags(tags: &[String]) -> Option<&str> {
    tags.iter()
        .find_map(|t| t.strip_prefix(MACHINE_UID_TAG_PREFIX))
}

/// `tags` with capow's ownership tags replaced by `owner_tags` (which come first); the other
/// tags are kept in their order. Used to move a resource to a new owner UID in one tag call.
pub fn retagged(tags: &[String], owner_tags: &[String]) -> Vec<String> {
    let mut out = owner_tags.to_vec();
    for t in tags {
        if !is_reserved_tag(t) && !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_match_occm() {
        assert_eq!(provider_id(None, "uuid"), "openstack:///uuid");
        assert_eq!(
            provider_id(Some("RegionOne"), "uuid"),
            "openstack://RegionOne/uuid"
        );
    }

    #[test]
    fn provider_ids_parse_only_in_capows_form() {
        assert_eq!(
            server_id_of_provider_id("openstack:///abc", None),
            Some("abc")
        );
        assert_eq!(
            server_id_of_provider_id("openstack://RegionOne/abc", Some("RegionOne")),
            Some("abc")
        );
        for (pid, region) in [
            ("openstack://RegionOne/abc", None),
            ("openstack:///abc", Some("RegionOne")),
            ("openstack:///", None),
            ("openstack:///a/b", None),
            ("aws:///us-east-1a/i-123", None),
            ("abc", None),
        ] {
            assert_eq!(
                server_id_of_provider_id(pid, region),
                None,
                "{pid} {region:?}"
            );
        }
    }
}
