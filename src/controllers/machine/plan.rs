//! Pure decisions of the machine controller: a server's ownership tags and metadata (the keys
//! are in [`crate::api::ownership`]), the server create request, port names, providerID claims,
//! addresses, and what a server's state means for the
//! `Ready` condition. No I/O; table-tested below.

use std::collections::BTreeMap;

use base64::Engine;

use crate::api::common::{PortOpts, ResolvedPortSpec};
use crate::api::conditions::reasons;
use crate::api::machine::MachineAddress;
use crate::api::ownership::{
    CLUSTER_UID_TAG_PREFIX, MACHINE_UID_TAG_PREFIX, MANAGED_TAG, METADATA_CLUSTER,
    METADATA_CLUSTER_UID, METADATA_MACHINE_UID, METADATA_NODE_GROUP, is_reserved_tag,
    machine_uid_of_tags, machine_uid_tag,
};
use crate::controllers::PortCreation;
use crate::openstack::compute::{CreateServer, NetworkAttachment, SecurityGroupRef, Server};

/// Nova's limit on base64-encoded user data, in bytes (`user_data` in the compute API).
pub const MAX_USER_DATA_BASE64: usize = 65_535;

/// Who a server belongs to; becomes its tags and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// UID of the `OpenStackWorkerMachine`.
    pub machine_uid: String,
    /// UID of the CAPI `Cluster`.
    pub cluster_uid: String,
    /// `<namespace>/<cluster name>`.
    pub cluster: String,
    /// `MachineDeployment/<ns>/<name>` or `MachineSet/<ns>/<name>`, if any.
    pub node_group: Option<String>,
}

impl Ownership {
    /// Tags capow sets on servers and ports, followed by the user's extra tags (deduplicated,
    /// order kept).
    pub fn tags(&self, extra: &[String]) -> Vec<String> {
        let mut tags = vec![
            MANAGED_TAG.to_owned(),
            machine_uid_tag(&self.machine_uid),
            format!("{CLUSTER_UID_TAG_PREFIX}{}", self.cluster_uid),
        ];
        for t in extra {
            if !tags.contains(t) && !is_reserved_tag(t) {
                tags.push(t.clone());
            }
        }
        tags
    }

    /// Server metadata: the user's pairs plus capow's reserved keys.
    pub fn metadata(
        &self,
        extra: &[crate::api::common::ServerMetadata],
    ) -> BTreeMap<String, String> {
        let mut md: BTreeMap<String, String> = extra
            .iter()
            .map(|m| (m.key.clone(), m.value.clone()))
            .collect();
        md.insert(METADATA_MACHINE_UID.into(), self.machine_uid.clone());
        md.insert(METADATA_CLUSTER.into(), self.cluster.clone());
        md.insert(METADATA_CLUSTER_UID.into(), self.cluster_uid.clone());
        md.insert(
            METADATA_NODE_GROUP.into(),
            self.node_group.clone().unwrap_or_default(),
        );
        md
    }
}

/// Name of the port at `index` of `machine`: `<machine>-<nameSuffix>` or `<machine>-<index>`.
pub fn port_name(machine: &str, index: usize, opts: &PortOpts) -> String {
    match opts.name_suffix.as_deref().filter(|s| !s.is_empty()) {
        Some(suffix) => format!("{machine}-{suffix}"),
        None => format!("{machine}-{index}"),
    }
}

/// The ports a machine gets: the spec's, or one default port (on the cluster's network) when
/// the spec lists none (CAPO: "empty means one port on the cluster network").
pub fn effective_ports(ports: &[PortOpts]) -> Vec<PortOpts> {
    if ports.is_empty() {
        vec![PortOpts::default()]
    } else {
        ports.to_vec()
    }
}

/// A Cinder volume capow creates for a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePlan {
    /// `root` or the block device name; the volume is named `<machine>-<name>`.
    pub name: String,
    /// Size in GiB.
    pub size_gib: i32,
    /// Volume type.
    pub volume_type: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Image to copy (root volume only).
    pub image_id: Option<String>,
}

fn volume_az(
    az: Option<&crate::api::common::VolumeAvailabilityZone>,
    machine_az: Option<&str>,
    field: &str,
) -> Result<Option<String>, (String, String)> {
    use crate::api::common::VolumeAzSource;
    match az {
        None => Ok(None),
        Some(z) => match z.from.unwrap_or_default() {
            VolumeAzSource::Name => z
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .map(Some)
                .ok_or_else(|| {
                    (
                        format!("{field}.availabilityZone.name"),
                        "is required when from is Name".to_owned(),
                    )
                }),
            VolumeAzSource::Machine => Ok(machine_az.map(str::to_owned)),
        },
    }
}

/// The volumes (root first) and local disks of `spec`, with availability zones resolved from
/// the Machine's failure domain where asked (CAPO `VolumeAvailabilityZone`).
///
/// # Errors
/// `(field, message)` for a device named `root`, duplicate names or a missing zone name (the
/// CRD's CEL rules reject these too; this keeps objects that predate the rules safe).
#[allow(clippy::type_complexity)]
pub fn volume_plans(
    spec: &crate::api::machine::OpenStackWorkerMachineSpec,
    image_id: &str,
    machine_az: Option<&str>,
) -> Result<(Vec<VolumePlan>, Vec<(String, i32)>), (String, String)> {
    use crate::api::common::BlockDeviceType;
    let mut volumes = Vec::new();
    let mut local = Vec::new();
    if let Some(root) = &spec.root_volume {
        volumes.push(VolumePlan {
            name: "root".into(),
            size_gib: root.size_gib,
            volume_type: root.type_.clone(),
            availability_zone: volume_az(
                root.availability_zone.as_ref(),
                machine_az,
                "spec.rootVolume",
            )?,
            image_id: Some(image_id.to_owned()),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, d) in spec.additional_block_devices.iter().enumerate() {
        let field = format!("spec.additionalBlockDevices[{i}]");
        if d.name == "root" {
            return Err((
                format!("{field}.name"),
                "the name 'root' is reserved".into(),
            ));
        }
        if !seen.insert(d.name.clone()) {
            return Err((
                format!("{field}.name"),
                format!("{:?} is used twice", d.name),
            ));
        }
        match d.storage.type_ {
            BlockDeviceType::Local => local.push((d.name.clone(), d.size_gib)),
            BlockDeviceType::Volume => {
                let v = d.storage.volume.as_ref();
                volumes.push(VolumePlan {
                    name: d.name.clone(),
                    size_gib: d.size_gib,
                    volume_type: v.and_then(|v| v.type_.clone()),
                    availability_zone: volume_az(
                        v.and_then(|v| v.availability_zone.as_ref()),
                        machine_az,
                        &format!("{field}.storage.volume"),
                    )?,
                    image_id: None,
                });
            }
        }
    }
    Ok((volumes, local))
}

/// Nova carves local block devices out of the flavor's ephemeral disk and refuses a server
/// whose local devices add up to more (compute API: "Ephemeral disks requested are larger than
/// the instance type allows").
///
/// # Errors
/// `(field, message)` naming the flavor's ephemeral size and the total asked for.
pub fn check_local_disks(
    flavor: &crate::openstack::compute::Flavor,
    local_disks: &[(String, i32)],
) -> Result<(), (String, String)> {
    let total: i64 = local_disks.iter().map(|(_, s)| i64::from(*s)).sum();
    if total > flavor.ephemeral as i64 {
        return Err((
            "spec.additionalBlockDevices".into(),
            format!(
                "local block devices need {total} GiB of ephemeral disk but flavor {} has {} GiB; use storage type Volume or a flavor with ephemeral disk",
                flavor.name, flavor.ephemeral
            ),
        ));
    }
    Ok(())
}

/// `block_device_mapping_v2` for the created volumes (`(name, id)`, root first when present)
/// and local disks; every device is deleted with the server. Without a root volume but with
/// other devices, the image is mapped as the local boot disk (`boot_index` 0): Nova refuses a
/// mapping list without a boot device ("Boot sequence for the instance and image/block device
/// mapping combination is not valid", compute API "Create Server", `block_device_mapping_v2`;
/// CAPO v0.15 maps the image the same way).
pub fn block_devices(
    image_id: &str,
    volumes: &[(String, String)],
    local_disks: &[(String, i32)],
) -> Vec<crate::openstack::compute::BlockDeviceMapping> {
    use crate::openstack::compute::BlockDeviceMapping;
    let mut out = Vec::new();
    let boots_from_volume = volumes.iter().any(|(name, _)| name == "root");
    if !boots_from_volume && (!volumes.is_empty() || !local_disks.is_empty()) {
        out.push(BlockDeviceMapping {
            source_type: "image".into(),
            destination_type: "local".into(),
            uuid: Some(image_id.to_owned()),
            boot_index: Some(0),
            volume_size: None,
            delete_on_termination: true,
            tag: None,
        });
    }
    for (name, id) in volumes {
        let root = name == "root";
        out.push(BlockDeviceMapping {
            source_type: "volume".into(),
            destination_type: "volume".into(),
            uuid: Some(id.clone()),
            boot_index: Some(if root { 0 } else { -1 }),
            volume_size: None,
            delete_on_termination: true,
            tag: (!root).then(|| name.clone()),
        });
    }
    for (name, size) in local_disks {
        out.push(BlockDeviceMapping {
            source_type: "blank".into(),
            destination_type: "local".into(),
            uuid: None,
            boot_index: Some(-1),
            volume_size: Some(*size),
            delete_on_termination: true,
            tag: Some(name.clone()),
        });
    }
    out
}

/// `os:scheduler_hints`: the server group plus the spec's additional properties.
pub fn scheduler_hints(
    server_group: Option<&str>,
    extra: &[crate::api::common::SchedulerHintAdditionalProperty],
) -> serde_json::Map<String, serde_json::Value> {
    use crate::api::common::SchedulerHintType;
    let mut hints = serde_json::Map::new();
    for p in extra {
        let v = match p.value.type_ {
            SchedulerHintType::Bool => serde_json::Value::Bool(p.value.bool.unwrap_or(false)),
            SchedulerHintType::Number => serde_json::Value::from(p.value.number.unwrap_or(0)),
            SchedulerHintType::String => {
                serde_json::Value::String(p.value.string.clone().unwrap_or_default())
            }
        };
        hints.insert(p.name.clone(), v);
    }
    if let Some(group) = server_group {
        hints.insert("group".into(), serde_json::Value::String(group.to_owned()));
    }
    hints
}

/// Base64 of the bootstrap data for Nova's `user_data`.
///
/// # Errors
/// A message naming Nova's limit when the encoded data exceeds [`MAX_USER_DATA_BASE64`].
pub fn encode_user_data(data: &[u8]) -> Result<String, String> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    if encoded.len() > MAX_USER_DATA_BASE64 {
        return Err(format!(
            "bootstrap data is {} bytes ({} base64-encoded); Nova accepts at most {MAX_USER_DATA_BASE64} bytes of encoded user data",
            data.len(),
            encoded.len()
        ));
    }
    Ok(encoded)
}

/// How a new server gets its ports.
#[derive(Clone, Copy, Debug)]
pub enum ServerPorts<'a> {
    /// Ports capow created, by UUID, in `spec.ports` order (`networks[].port`).
    Created(&'a [String]),
    /// Nova creates the one port on the resolved network with its security groups
    /// (`networks[].uuid` and `security_groups`), and deletes it with the server.
    ByNova(&'a ResolvedPortSpec),
}

/// Whether Nova may create the machine's port (`--port-creation auto`, ADR 0008): the mode is
/// [`PortCreation::Auto`], the machine has exactly one port (`ports`, as
/// [`effective_ports`] gives them, resolved in `resolved`), no trunk (`spec.trunk`,
/// `machine_trunk`, or the port's own), and the port asks for nothing `POST /servers` cannot
/// say: no fixed IPs, name suffix, description, tags, MAC address, address pairs, binding
/// options, value specs, non-normal VNIC type, disabled admin state or disabled port
/// security. Any of those makes capow create the port in Neutron as CAPO does.
pub fn nova_creates_port(
    mode: PortCreation,
    ports: &[PortOpts],
    machine_trunk: Option<bool>,
    resolved: &[ResolvedPortSpec],
) -> bool {
    let [opts] = ports else { return false };
    let [want] = resolved else { return false };
    mode == PortCreation::Auto
        && want.fixed_ips.is_empty()
        && opts.fixed_ips.is_empty()
        && opts.trunk.or(machine_trunk) != Some(true)
        && opts.name_suffix.is_none()
        && opts.description.is_none()
        && opts.tags.is_empty()
        && opts.admin_state_up != Some(false)
        && opts.enable_port_security != Some(false)
        && opts.vnic_type.as_deref().is_none_or(|v| v == "normal")
        && opts.mac_address.is_none()
        && opts.allowed_address_pairs.is_empty()
        && opts.host_id.is_none()
        && opts.profile.is_none()
        && opts.propagate_uplink_status.is_none()
        && opts.value_specs.is_empty()
}

/// Everything the server create request is built from.
#[derive(Clone, Debug)]
pub struct ServerPlan<'a> {
    /// Server name (the object's name).
    pub name: &'a str,
    /// Resolved flavor ID.
    pub flavor_id: &'a str,
    /// Resolved image ID.
    pub image_id: &'a str,
    /// The server's ports.
    pub ports: ServerPorts<'a>,
    /// Keypair.
    pub key_name: Option<&'a str>,
    /// Base64 user data.
    pub user_data: &'a str,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Config drive.
    pub config_drive: Option<bool>,
    /// Availability zone (`Machine.spec.failureDomain`).
    pub availability_zone: Option<&'a str>,
    /// Block devices; the root volume (boot index 0) replaces the image.
    pub block_devices: Vec<crate::openstack::compute::BlockDeviceMapping>,
}

/// The `POST /servers` body for `plan`.
pub fn create_server_request(plan: ServerPlan<'_>) -> CreateServer {
    let boots_from_volume = plan
        .block_devices
        .iter()
        .any(|b| b.boot_index == Some(0) && b.destination_type == "volume");
    CreateServer {
        name: plan.name.to_owned(),
        flavor_ref: plan.flavor_id.to_owned(),
        image_ref: (!boots_from_volume).then(|| plan.image_id.to_owned()),
        block_device_mapping_v2: plan.block_devices,
        networks: match plan.ports {
            ServerPorts::Created(ids) => ids
                .iter()
                .map(|p| NetworkAttachment::Port { port: p.clone() })
                .collect(),
            ServerPorts::ByNova(want) => vec![NetworkAttachment::Network {
                uuid: want.network_id.clone(),
            }],
        },
        security_groups: match plan.ports {
            ServerPorts::Created(_) => Vec::new(),
            ServerPorts::ByNova(want) => want
                .security_groups
                .iter()
                .map(|g| SecurityGroupRef { name: g.clone() })
                .collect(),
        },
        key_name: plan.key_name.map(str::to_owned),
        user_data: Some(plan.user_data.to_owned()),
        metadata: plan.metadata,
        tags: plan.tags,
        config_drive: plan.config_drive,
        availability_zone: plan.availability_zone.map(str::to_owned),
    }
}

/// The machine whose `spec.providerID` names a server, as [`provider_id_claim`] compares it.
#[derive(Clone, Copy, Debug)]
pub struct Claimant<'a> {
    /// The `OpenStackWorkerMachine`'s UID.
    pub machine_uid: &'a str,
    /// Its name (capow names the server after it).
    pub machine_name: &'a str,
    /// Its Cluster as `<namespace>/<name>` (the server's `capow-cluster` metadata).
    pub cluster: &'a str,
}

/// What a server named by `spec.providerID` is to a machine whose status does not name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderIdClaim {
    /// The server carries this object's UID: only the status was lost.
    Own,
    /// capow made the server for this machine under an earlier UID: the object was re-created
    /// with the same name (clusterctl move, a restore from a backup). The server and what
    /// capow made with it are retagged with the new UIDs.
    Adopt {
        /// The machine UID the server and its ports, trunks and volumes carry.
        previous_uid: String,
    },
    /// Not a server capow made for this machine: why, as a clause ("server X does not exist
    /// in Nova"). Never adopted, never deleted, and no other server is made.
    NotOwned(String),
}

/// Decides what `server` (the one `spec.providerID` names, `None` when Nova does not know it)
/// is to `claimant`. capow's marks are the tag `capow` and a machine UID (the
/// `capow-machine-uid=` tag, else the metadata key of that name). A server with another machine UID is adopted
/// only when it is the same machine re-created: its `capow-cluster` metadata names the same
/// `<namespace>/<cluster>` and its name is the object's name (object names are unique in a
/// namespace, so a providerID copied from another machine never matches).
pub fn provider_id_claim(server: Option<&Server>, claimant: &Claimant<'_>) -> ProviderIdClaim {
    let Some(server) = server else {
        return ProviderIdClaim::NotOwned("that server does not exist in Nova".into());
    };
    let tagged_uid = machine_uid_of_tags(&server.tags);
    let metadata_uid = server
        .metadata
        .get(METADATA_MACHINE_UID)
        .map(String::as_str);
    let managed = server.tags.iter().any(|t| t == MANAGED_TAG);
    let Some(uid) = tagged_uid.or(metadata_uid).filter(|_| managed) else {
        return ProviderIdClaim::NotOwned(format!(
            "server {} ({}) does not carry capow's ownership marks (the tag {MANAGED_TAG} and a \
             {MACHINE_UID_TAG_PREFIX}<uid> tag), so capow did not create it",
            server.id, server.name
        ));
    };
    // The tag decides over the metadata: adoption retags the server last, so a server whose
    // tag still names the earlier UID has not been adopted completely.
    if uid == claimant.machine_uid {
        return ProviderIdClaim::Own;
    }
    let cluster = server.metadata.get(METADATA_CLUSTER).map(String::as_str);
    if cluster == Some(claimant.cluster) && server.name == claimant.machine_name {
        return ProviderIdClaim::Adopt {
            previous_uid: uid.to_owned(),
        };
    }
    ProviderIdClaim::NotOwned(format!(
        "server {} ({}) was created by capow for another machine (Cluster {}, \
         OpenStackWorkerMachine UID {uid})",
        server.id,
        server.name,
        cluster.unwrap_or("unknown")
    ))
}

/// Server addresses as `NodeAddress`es: fixed IPs are `InternalIP`, floating IPs
/// `ExternalIP`; IPv4 before IPv6, then by network name, without duplicates.
pub fn addresses(server: &Server) -> Vec<MachineAddress> {
    let mut out: Vec<(u8, MachineAddress)> = Vec::new();
    for addrs in server.addresses.values() {
        for a in addrs {
            let type_ = if a.kind.as_deref() == Some("floating") {
                "ExternalIP"
            } else {
                "InternalIP"
            };
            let entry = MachineAddress {
                type_: type_.into(),
                address: a.addr.clone(),
            };
            if !out.iter().any(|(_, e)| e == &entry) {
                out.push((a.version, entry));
            }
        }
    }
    out.sort_by_key(|(v, _)| if *v == 6 { 1 } else { 0 });
    out.into_iter().map(|(_, a)| a).collect()
}

/// What the observed state of a server means for the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// ACTIVE: provisioned.
    Active,
    /// Still being built.
    Building,
    /// ERROR, with Nova's fault message. `None` right after the transition: Nova writes the
    /// fault record just after setting the state, so it can be missing for a moment.
    Error(Option<String>),
    /// Deleted or being deleted behind capow's back.
    Gone,
    /// Any other state (SHUTOFF, PAUSED, SUSPENDED, RESCUE, ...): exists but not serving.
    NotActive(String),
}

/// Classifies `server`.
pub fn server_state(server: &Server) -> ServerState {
    if server.is_gone() {
        return ServerState::Gone;
    }
    match server.status.as_str() {
        "ACTIVE" => ServerState::Active,
        "BUILD" => ServerState::Building,
        "ERROR" => ServerState::Error(
            server
                .fault
                .as_ref()
                .filter(|f| !f.message.trim().is_empty())
                .map(|f| format!("{} (code {})", f.message.trim(), f.code)),
        ),
        other => ServerState::NotActive(other.to_owned()),
    }
}

/// The `Ready` condition reason for `state`.
pub fn ready_reason(state: &ServerState) -> &'static str {
    match state {
        ServerState::Active => reasons::INSTANCE_READY,
        ServerState::Building | ServerState::NotActive(_) => reasons::INSTANCE_NOT_READY,
        ServerState::Error(_) => reasons::INSTANCE_STATE_ERROR,
        ServerState::Gone => reasons::INSTANCE_NOT_FOUND,
    }
}

/// True when an existing port matches what the spec asks for (network and, when given, the
/// requested fixed IPs), so that it can be reused after a crash instead of making another.
pub fn port_matches(port: &crate::openstack::network::Port, want: &ResolvedPortSpec) -> bool {
    if port.network_id != want.network_id {
        return false;
    }
    want.fixed_ips.iter().all(|f| {
        port.fixed_ips.iter().any(|p| {
            f.subnet_id
                .as_ref()
                .is_none_or(|s| p.subnet_id.as_ref() == Some(s))
                && f.ip_address
                    .as_ref()
                    .is_none_or(|ip| p.ip_address.as_ref() == Some(ip))
        })
    })
}

/// Splits the servers found for one machine into the one to keep and the duplicates to
/// delete: the server in `status.instanceID` when it is among them, else the oldest (by Nova's
/// `created`, then by UUID so the choice is stable). Servers Nova is already deleting are
/// neither kept as duplicates nor returned for deletion.
pub fn split_duplicates(
    mut found: Vec<Server>,
    instance_id: Option<&str>,
) -> (Option<Server>, Vec<Server>) {
    let keep_at = instance_id
        .and_then(|id| found.iter().position(|s| s.id == id))
        .or_else(|| {
            found
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_gone())
                .min_by(|(_, a), (_, b)| {
                    (a.created.as_deref().unwrap_or(""), a.id.as_str())
                        .cmp(&(b.created.as_deref().unwrap_or(""), b.id.as_str()))
                })
                .map(|(i, _)| i)
        });
    let keep = keep_at.map(|i| found.swap_remove(i));
    found.retain(|s| !s.is_gone());
    (keep, found)
}

/// How long to wait before creating a server again after a create sent at `requested_at`
/// whose answer was never seen: `None` once `settle` has passed since then (a lookup now is
/// made after the longest time such a request may still be processed), or when no create is
/// outstanding.
pub fn create_settle_wait(
    requested_at: Option<k8s_openapi::jiff::Timestamp>,
    now: k8s_openapi::jiff::Timestamp,
    settle: std::time::Duration,
) -> Option<std::time::Duration> {
    let at = requested_at?;
    let elapsed = now.duration_since(at);
    let elapsed = std::time::Duration::try_from(elapsed).unwrap_or_default();
    settle.checked_sub(elapsed).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{ResolvedFixedIp, ServerMetadata};
    use crate::openstack::compute::{Fault, ServerAddress};
    use crate::openstack::network::{Port, PortFixedIp};

    fn owner() -> Ownership {
        Ownership {
            machine_uid: "11111111-2222-3333-4444-555555555555".into(),
            cluster_uid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            cluster: "ns/c1".into(),
            node_group: Some("MachineDeployment/ns/md-0".into()),
        }
    }

    #[test]
    fn tags_put_ownership_first_and_fit_novas_limits() {
        let tags = owner().tags(&["team-a".into(), "capow".into()]);
        assert_eq!(
            tags,
            [
                "capow",
                "capow-machine-uid=11111111-2222-3333-4444-555555555555",
                "capow-cluster-uid=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                "team-a"
            ]
        );
        // A user's tag naming another machine or cluster is dropped (the CRD rejects it too).
        let hostile = owner().tags(&[
            "capow-machine-uid=someone-else".into(),
            "capow-cluster-uid=another".into(),
            "ok".into(),
        ]);
        assert_eq!(hostile.len(), 4, "{hostile:?}");
        assert_eq!(hostile[3], "ok");
        assert!(
            is_reserved_tag("capow") && is_reserved_tag("capow-x") && !is_reserved_tag("capowx")
        );
        // Nova: at most 60 characters, no ',' or '/'.
        assert!(
            tags.iter()
                .all(|t| t.len() <= 60 && !t.contains(',') && !t.contains('/'))
        );
    }

    #[test]
    fn metadata_reserved_keys_win_over_user_keys() {
        let md = owner().metadata(&[
            ServerMetadata {
                key: "role".into(),
                value: "worker".into(),
            },
            ServerMetadata {
                key: METADATA_CLUSTER.into(),
                value: "spoofed".into(),
            },
        ]);
        assert_eq!(md["role"], "worker");
        assert_eq!(md[METADATA_CLUSTER], "ns/c1");
        assert_eq!(md[METADATA_NODE_GROUP], "MachineDeployment/ns/md-0");
        assert_eq!(
            md[METADATA_MACHINE_UID],
            "11111111-2222-3333-4444-555555555555"
        );
    }

    #[test]
    fn port_names_use_suffix_or_index() {
        let mut opts = PortOpts::default();
        assert_eq!(port_name("m1", 0, &opts), "m1-0");
        opts.name_suffix = Some("storage".into());
        assert_eq!(port_name("m1", 1, &opts), "m1-storage");
        opts.name_suffix = Some(String::new());
        assert_eq!(port_name("m1", 2, &opts), "m1-2");
    }

    #[test]
    fn local_disks_must_fit_the_flavors_ephemeral_disk() {
        let mut flavor = crate::openstack::compute::Flavor {
            name: "m1.small".into(),
            ..Default::default()
        };
        let disks = vec![("scratch".to_owned(), 10), ("cache".to_owned(), 5)];
        let err = check_local_disks(&flavor, &disks).unwrap_err();
        assert_eq!(err.0, "spec.additionalBlockDevices");
        assert!(
            err.1.contains("need 15 GiB") && err.1.contains("m1.small has 0 GiB"),
            "{}",
            err.1
        );
        flavor.ephemeral = 15;
        assert!(check_local_disks(&flavor, &disks).is_ok());
        assert!(check_local_disks(&flavor, &[]).is_ok());
    }

    #[test]
    fn volumes_and_local_disks_from_the_spec() {
        use crate::api::common::*;
        let spec = crate::api::machine::OpenStackWorkerMachineSpec {
            root_volume: Some(RootVolume {
                size_gib: 30,
                type_: Some("ssd".into()),
                availability_zone: Some(VolumeAvailabilityZone {
                    from: Some(VolumeAzSource::Machine),
                    name: None,
                }),
            }),
            additional_block_devices: vec![
                AdditionalBlockDevice {
                    name: "data".into(),
                    size_gib: 100,
                    storage: BlockDeviceStorage {
                        type_: BlockDeviceType::Volume,
                        volume: Some(BlockDeviceVolume {
                            type_: None,
                            availability_zone: Some(VolumeAvailabilityZone {
                                from: Some(VolumeAzSource::Name),
                                name: Some("vol-az".into()),
                            }),
                        }),
                    },
                },
                AdditionalBlockDevice {
                    name: "scratch".into(),
                    size_gib: 5,
                    storage: BlockDeviceStorage::default(),
                },
            ],
            ..Default::default()
        };
        let (volumes, local) = volume_plans(&spec, "img", Some("az1")).unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(
            volumes[0],
            VolumePlan {
                name: "root".into(),
                size_gib: 30,
                volume_type: Some("ssd".into()),
                availability_zone: Some("az1".into()),
                image_id: Some("img".into())
            }
        );
        assert_eq!(volumes[1].availability_zone.as_deref(), Some("vol-az"));
        assert_eq!(volumes[1].image_id, None);
        assert_eq!(local, [("scratch".to_owned(), 5)]);

        let image_only = block_devices("img", &[("data".into(), "v-data".into())], &[]);
        let json = serde_json::to_value(&image_only).unwrap();
        assert_eq!(json[0]["source_type"], "image", "the image boots: {json}");
        assert_eq!(json[0]["uuid"], "img");
        assert_eq!(json[0]["boot_index"], 0);
        assert_eq!(json[1]["boot_index"], -1);
        assert!(
            block_devices("img", &[], &[]).is_empty(),
            "no devices, no mapping"
        );
        let req = create_server_request(bare_plan(ServerPorts::Created(&[]), image_only));
        assert_eq!(
            req.image_ref.as_deref(),
            Some("img"),
            "booting from the image keeps imageRef"
        );

        let bdm = block_devices(
            "img",
            &[
                ("root".into(), "v-root".into()),
                ("data".into(), "v-data".into()),
            ],
            &local,
        );
        let json = serde_json::to_value(&bdm).unwrap();
        assert_eq!(json[0]["boot_index"], 0);
        assert_eq!(json[0]["uuid"], "v-root");
        assert!(json[0].get("tag").is_none());
        assert_eq!(json[1]["boot_index"], -1);
        assert_eq!(json[1]["tag"], "data");
        assert_eq!(json[2]["source_type"], "blank");
        assert_eq!(json[2]["destination_type"], "local");
        assert_eq!(json[2]["volume_size"], 5);
        assert!(bdm.iter().all(|b| b.delete_on_termination));
        // Booting from a volume drops imageRef from the request.
        let req = create_server_request(bare_plan(ServerPorts::Created(&[]), bdm));
        assert!(req.image_ref.is_none());

        let mut dup = spec.clone();
        dup.additional_block_devices[1].name = "data".into();
        assert_eq!(
            volume_plans(&dup, "img", None).unwrap_err().0,
            "spec.additionalBlockDevices[1].name"
        );
    }

    #[test]
    fn scheduler_hints_typed_values_and_server_group() {
        use crate::api::common::{
            SchedulerHintAdditionalProperty as P, SchedulerHintType as T, SchedulerHintValue as V,
        };
        let hints = scheduler_hints(
            Some("sg-1"),
            &[
                P {
                    name: "different_host".into(),
                    value: V {
                        type_: T::String,
                        string: Some("x".into()),
                        ..Default::default()
                    },
                },
                P {
                    name: "n".into(),
                    value: V {
                        type_: T::Number,
                        number: Some(3),
                        ..Default::default()
                    },
                },
                P {
                    name: "b".into(),
                    value: V {
                        type_: T::Bool,
                        bool: Some(true),
                        ..Default::default()
                    },
                },
            ],
        );
        assert_eq!(
            serde_json::Value::Object(hints),
            serde_json::json!({"group": "sg-1", "different_host": "x", "n": 3, "b": true})
        );
    }

    #[test]
    fn user_data_is_base64_and_bounded() {
        assert_eq!(
            encode_user_data(b"#cloud-config\n").unwrap(),
            "I2Nsb3VkLWNvbmZpZwo="
        );
        let err = encode_user_data(&vec![b'a'; 50_000]).unwrap_err();
        assert!(err.contains("at most 65535 bytes"), "{err}");
    }

    #[test]
    fn create_request_carries_everything() {
        let ports = vec!["p0".to_owned(), "p1".to_owned()];
        let req = create_server_request(ServerPlan {
            name: "m1",
            flavor_id: "f",
            image_id: "i",
            ports: ServerPorts::Created(&ports),
            key_name: Some("k"),
            user_data: "dXNlcg==",
            tags: owner().tags(&[]),
            metadata: owner().metadata(&[]),
            config_drive: Some(true),
            availability_zone: Some("az1"),
            block_devices: vec![],
        });
        let body = serde_json::to_value(&req).unwrap();
        assert_eq!(body["flavorRef"], "f");
        assert_eq!(body["imageRef"], "i");
        assert_eq!(
            body["networks"],
            serde_json::json!([{"port": "p0"}, {"port": "p1"}])
        );
        assert_eq!(body["user_data"], "dXNlcg==");
        assert_eq!(body["key_name"], "k");
        assert_eq!(body["config_drive"], true);
        assert_eq!(body["availability_zone"], "az1");
        assert_eq!(body["tags"][0], "capow");
    }

    #[test]
    fn nova_creates_only_a_single_plain_port_in_auto_mode() {
        let resolved = |n: usize| -> Vec<ResolvedPortSpec> {
            (0..n)
                .map(|i| ResolvedPortSpec {
                    name: format!("m-{i}"),
                    network_id: "net".into(),
                    security_groups: vec!["sg".into()],
                    ..Default::default()
                })
                .collect()
        };
        let plain = effective_ports(&[]);
        assert!(nova_creates_port(
            PortCreation::Auto,
            &plain,
            None,
            &resolved(1)
        ));
        assert!(
            !nova_creates_port(PortCreation::Neutron, &plain, None, &resolved(1)),
            "--port-creation neutron: capow makes every port"
        );
        assert!(
            !nova_creates_port(PortCreation::Auto, &plain, Some(true), &resolved(1)),
            "a trunk needs capow's port"
        );
        let two = vec![PortOpts::default(), PortOpts::default()];
        assert!(!nova_creates_port(
            PortCreation::Auto,
            &two,
            None,
            &resolved(2)
        ));
        let asks = [
            PortOpts {
                name_suffix: Some("x".into()),
                ..Default::default()
            },
            PortOpts {
                tags: vec!["t".into()],
                ..Default::default()
            },
            PortOpts {
                enable_port_security: Some(false),
                ..Default::default()
            },
            PortOpts {
                vnic_type: Some("direct".into()),
                ..Default::default()
            },
            PortOpts {
                fixed_ips: vec![crate::api::common::FixedIp {
                    subnet: None,
                    ip_address: Some("10.0.0.5".into()),
                }],
                ..Default::default()
            },
            PortOpts {
                trunk: Some(true),
                ..Default::default()
            },
        ];
        for opts in asks {
            assert!(
                !nova_creates_port(
                    PortCreation::Auto,
                    std::slice::from_ref(&opts),
                    None,
                    &resolved(1)
                ),
                "{opts:?} needs a port made in Neutron"
            );
        }
        let normal = PortOpts {
            vnic_type: Some("normal".into()),
            enable_port_security: Some(true),
            ..Default::default()
        };
        assert!(nova_creates_port(
            PortCreation::Auto,
            &[normal],
            None,
            &resolved(1)
        ));
    }

    /// A plan with only ports and block devices set (name `m`, flavor `f`, image `img`).
    fn bare_plan<'a>(
        ports: ServerPorts<'a>,
        block_devices: Vec<crate::openstack::compute::BlockDeviceMapping>,
    ) -> ServerPlan<'a> {
        ServerPlan {
            name: "m",
            flavor_id: "f",
            image_id: "img",
            ports,
            key_name: None,
            user_data: "",
            tags: vec![],
            metadata: Default::default(),
            config_drive: None,
            availability_zone: None,
            block_devices,
        }
    }

    #[test]
    fn a_port_made_by_nova_is_a_network_and_security_groups_in_the_request() {
        let want = ResolvedPortSpec {
            name: "m1-0".into(),
            network_id: "net-1".into(),
            security_groups: vec!["sg-a".into(), "sg-b".into()],
            ..Default::default()
        };
        let by_nova = bare_plan(ServerPorts::ByNova(&want), vec![]);
        let req = create_server_request(by_nova.clone());
        let body = serde_json::to_value(&req).unwrap();
        assert_eq!(body["networks"], serde_json::json!([{"uuid": "net-1"}]));
        assert_eq!(
            body["security_groups"],
            serde_json::json!([{"name": "sg-a"}, {"name": "sg-b"}])
        );
        let created = create_server_request(ServerPlan {
            ports: ServerPorts::Created(&["p0".to_owned()]),
            ..by_nova
        });
        let body = serde_json::to_value(&created).unwrap();
        assert!(
            body.get("security_groups").is_none(),
            "groups of a port capow made are on the port: {body}"
        );
    }

    fn server(status: &str) -> Server {
        Server {
            id: "s".into(),
            status: status.into(),
            ..Server::default()
        }
    }

    #[test]
    fn server_states() {
        let cases = [
            (
                server("ACTIVE"),
                ServerState::Active,
                reasons::INSTANCE_READY,
            ),
            (
                server("BUILD"),
                ServerState::Building,
                reasons::INSTANCE_NOT_READY,
            ),
            (
                server("SHUTOFF"),
                ServerState::NotActive("SHUTOFF".into()),
                reasons::INSTANCE_NOT_READY,
            ),
            (
                server("SOFT_DELETED"),
                ServerState::Gone,
                reasons::INSTANCE_NOT_FOUND,
            ),
            (
                Server {
                    task_state: Some("deleting".into()),
                    ..server("ACTIVE")
                },
                ServerState::Gone,
                reasons::INSTANCE_NOT_FOUND,
            ),
            (
                Server {
                    fault: Some(Fault {
                        code: 500,
                        message: "No valid host was found. ".into(),
                    }),
                    ..server("ERROR")
                },
                ServerState::Error(Some("No valid host was found. (code 500)".into())),
                reasons::INSTANCE_STATE_ERROR,
            ),
            (
                server("ERROR"),
                ServerState::Error(None),
                reasons::INSTANCE_STATE_ERROR,
            ),
        ];
        for (s, state, reason) in cases {
            let got = server_state(&s);
            assert_eq!(got, state, "{s:?}");
            assert_eq!(ready_reason(&got), reason);
        }
    }

    #[test]
    fn addresses_fixed_internal_floating_external_ipv4_first() {
        let mut s = server("ACTIVE");
        s.addresses.insert(
            "net-b".into(),
            vec![
                ServerAddress {
                    addr: "fd00::5".into(),
                    version: 6,
                    kind: Some("fixed".into()),
                },
                ServerAddress {
                    addr: "10.0.0.5".into(),
                    version: 4,
                    kind: Some("fixed".into()),
                },
                ServerAddress {
                    addr: "203.0.113.9".into(),
                    version: 4,
                    kind: Some("floating".into()),
                },
            ],
        );
        s.addresses.insert(
            "net-a".into(),
            vec![ServerAddress {
                addr: "10.0.0.5".into(),
                version: 4,
                kind: None,
            }],
        );
        let got: Vec<(String, String)> = addresses(&s)
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            got,
            [
                ("InternalIP".into(), "10.0.0.5".into()),
                ("ExternalIP".into(), "203.0.113.9".into()),
                ("InternalIP".into(), "fd00::5".into()),
            ]
        );
    }

    #[test]
    fn ports_match_on_network_and_requested_ips() {
        let port = Port {
            id: "p".into(),
            network_id: "n1".into(),
            fixed_ips: vec![PortFixedIp {
                subnet_id: Some("s1".into()),
                ip_address: Some("10.0.0.7".into()),
            }],
            ..Port::default()
        };
        let mut want = ResolvedPortSpec {
            name: "m-0".into(),
            network_id: "n1".into(),
            ..Default::default()
        };
        assert!(port_matches(&port, &want));
        want.fixed_ips = vec![ResolvedFixedIp {
            subnet_id: Some("s1".into()),
            ip_address: None,
        }];
        assert!(port_matches(&port, &want));
        want.fixed_ips = vec![ResolvedFixedIp {
            subnet_id: None,
            ip_address: Some("10.0.0.8".into()),
        }];
        assert!(!port_matches(&port, &want));
        want.fixed_ips.clear();
        want.network_id = "n2".into();
        assert!(!port_matches(&port, &want));
    }

    fn created_server(id: &str, created: &str, status: &str) -> Server {
        Server {
            id: id.into(),
            status: status.into(),
            created: Some(created.into()),
            ..Server::default()
        }
    }

    #[test]
    fn duplicates_keep_the_server_in_status_else_the_oldest() {
        let a = created_server("a", "2026-11-30T10:00:01Z", "ACTIVE");
        let b = created_server("b", "2026-11-30T10:00:00Z", "BUILD");
        let (keep, extra) = split_duplicates(vec![a.clone(), b.clone()], Some("a"));
        assert_eq!(keep.map(|s| s.id), Some("a".into()));
        assert_eq!(
            extra.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );

        let (keep, extra) = split_duplicates(vec![a.clone(), b.clone()], None);
        assert_eq!(keep.map(|s| s.id), Some("b".into()), "oldest wins");
        assert_eq!(
            extra.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );

        let mut gone = created_server("c", "2026-11-30T09:00:00Z", "ACTIVE");
        gone.task_state = Some("deleting".into());
        let (keep, extra) = split_duplicates(vec![gone, a.clone()], None);
        assert_eq!(
            keep.map(|s| s.id),
            Some("a".into()),
            "a server being deleted is never kept"
        );
        assert!(extra.is_empty(), "nor deleted again");

        let (keep, extra) = split_duplicates(vec![a], None);
        assert_eq!(keep.map(|s| s.id), Some("a".into()));
        assert!(extra.is_empty());
        assert_eq!(split_duplicates(Vec::new(), Some("x")).0, None);
    }

    fn marked(uid: &str, cluster: &str, name: &str) -> Server {
        let mut s = Server {
            id: "s1".into(),
            name: name.into(),
            status: "ACTIVE".into(),
            tags: vec![
                MANAGED_TAG.into(),
                machine_uid_tag(uid),
                format!("{CLUSTER_UID_TAG_PREFIX}c-old"),
                "team-a".into(),
            ],
            ..Server::default()
        };
        s.metadata.insert(METADATA_MACHINE_UID.into(), uid.into());
        s.metadata.insert(METADATA_CLUSTER.into(), cluster.into());
        s
    }

    #[test]
    fn a_provider_id_server_is_own_adopted_or_not_owned() {
        let me = Claimant {
            machine_uid: "new",
            machine_name: "md-0-abc",
            cluster: "ns/c1",
        };
        let own = marked("new", "ns/c1", "md-0-abc");
        let moved = marked("old", "ns/c1", "md-0-abc");
        let other_machine = marked("old", "ns/c1", "md-0-xyz");
        let other_cluster = marked("old", "other/c1", "md-0-abc");
        let mut unmarked = moved.clone();
        unmarked.tags.retain(|t| t != MANAGED_TAG);
        let mut no_uid = moved.clone();
        no_uid
            .tags
            .retain(|t| !t.starts_with(MACHINE_UID_TAG_PREFIX));
        no_uid.metadata.remove(METADATA_MACHINE_UID);
        let mut half_adopted = moved.clone();
        half_adopted
            .metadata
            .insert(METADATA_MACHINE_UID.into(), "new".into());
        let mut metadata_only = moved.clone();
        metadata_only
            .tags
            .retain(|t| !t.starts_with(MACHINE_UID_TAG_PREFIX));
        let user_server = Server {
            id: "s1".into(),
            name: "md-0-abc".into(),
            ..Server::default()
        };
        let cases: [(Option<&Server>, &str); 10] = [
            (Some(&own), "own"),
            (Some(&moved), "adopt old"),
            (Some(&half_adopted), "adopt old"),
            (Some(&metadata_only), "adopt old"),
            (Some(&other_machine), "not owned: another machine"),
            (Some(&other_cluster), "not owned: another machine"),
            (Some(&unmarked), "not owned: no marks"),
            (Some(&no_uid), "not owned: no marks"),
            (Some(&user_server), "not owned: no marks"),
            (None, "not owned: missing"),
        ];
        for (server, want) in cases {
            let got = provider_id_claim(server, &me);
            let summary = match &got {
                ProviderIdClaim::Own => "own".to_owned(),
                ProviderIdClaim::Adopt { previous_uid } => format!("adopt {previous_uid}"),
                ProviderIdClaim::NotOwned(why) if why.contains("does not exist") => {
                    "not owned: missing".to_owned()
                }
                ProviderIdClaim::NotOwned(why) if why.contains("another machine") => {
                    "not owned: another machine".to_owned()
                }
                ProviderIdClaim::NotOwned(why) if why.contains("ownership marks") => {
                    "not owned: no marks".to_owned()
                }
                ProviderIdClaim::NotOwned(why) => why.clone(),
            };
            assert_eq!(summary, want, "{server:?}");
        }
        let ProviderIdClaim::NotOwned(why) = provider_id_claim(Some(&other_cluster), &me) else {
            unreachable!()
        };
        assert_eq!(
            why,
            "server s1 (md-0-abc) was created by capow for another machine (Cluster other/c1, \
             OpenStackWorkerMachine UID old)"
        );
    }

    #[test]
    fn retagging_replaces_only_capows_tags() {
        use crate::api::ownership::retagged;
        let new = owner().tags(&[]);
        let old = marked("old", "ns/c1", "m").tags;
        assert_eq!(
            retagged(&old, &new),
            [
                "capow",
                "capow-machine-uid=11111111-2222-3333-4444-555555555555",
                "capow-cluster-uid=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                "team-a"
            ]
        );
        assert_eq!(retagged(&new, &new), new, "retagging twice changes nothing");
        assert_eq!(retagged(&[], &new), new);
    }

    #[test]
    fn a_lost_create_is_repeated_only_after_the_settle_time() {
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        use std::time::Duration;
        let sent: Timestamp = "2026-11-30T10:00:00Z".parse().unwrap();
        let settle = Duration::from_secs(60);
        assert_eq!(create_settle_wait(None, sent, settle), None);
        assert_eq!(
            create_settle_wait(Some(sent), sent + SignedDuration::from_secs(10), settle),
            Some(Duration::from_secs(50))
        );
        assert_eq!(
            create_settle_wait(Some(sent), sent + SignedDuration::from_secs(60), settle),
            None
        );
        assert_eq!(
            create_settle_wait(Some(sent), sent + SignedDuration::from_secs(600), settle),
            None
        );
        // A clock behind the recorded time waits the full settle time, never less.
        assert_eq!(
            create_settle_wait(Some(sent), sent - SignedDuration::from_secs(5), settle),
            Some(settle)
        );
    }
}
