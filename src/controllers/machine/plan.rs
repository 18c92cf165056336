//! Pure decisions of the machine controller: ownership tags and metadata, the server create
//! request, port names, providerIDs, addresses, and what a server's state means for the
//! `Ready` condition. No I/O; table-tested below.

use std::collections::BTreeMap;

use base64::Engine;

use crate::api::common::{PortOpts, ResolvedPortSpec};
use crate::api::conditions::reasons;
use crate::api::machine::MachineAddress;
use crate::openstack::compute::{CreateServer, NetworkAttachment, Server};

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
/// Server metadata key holding the node group (`MachineDeployment/<ns>/<name>`, or
/// `MachineSet/<ns>/<name>`), empty for Machines of neither.
pub const METADATA_NODE_GROUP: &str = "capow-node-group";
/// Nova's limit on base64-encoded user data, in bytes (`user_data` in the compute API).
pub const MAX_USER_DATA_BASE64: usize = 65_535;

/// The ownership tag of the object with `uid`.
pub fn machine_uid_tag(uid: &str) -> String {
    format!("{MACHINE_UID_TAG_PREFIX}{uid}")
}

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
            if !tags.contains(t) {
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

/// Everything the server create request is built from.
#[derive(Clone, Debug)]
pub struct ServerPlan<'a> {
    /// Server name (the object's name).
    pub name: &'a str,
    /// Resolved flavor ID.
    pub flavor_id: &'a str,
    /// Resolved image ID.
    pub image_id: &'a str,
    /// Port IDs in spec order.
    pub port_ids: &'a [String],
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
}

/// The `POST /servers` body for `plan`.
pub fn create_server_request(plan: ServerPlan<'_>) -> CreateServer {
    CreateServer {
        name: plan.name.to_owned(),
        flavor_ref: plan.flavor_id.to_owned(),
        image_ref: Some(plan.image_id.to_owned()),
        networks: plan
            .port_ids
            .iter()
            .map(|p| NetworkAttachment { port: p.clone() })
            .collect(),
        key_name: plan.key_name.map(str::to_owned),
        user_data: Some(plan.user_data.to_owned()),
        metadata: plan.metadata,
        tags: plan.tags,
        config_drive: plan.config_drive,
        availability_zone: plan.availability_zone.map(str::to_owned),
    }
}

/// providerID of a server: `openstack:///<uuid>`, or `openstack://<region>/<uuid>` when the
/// identityRef names a region (CAPO `openstackmachine_controller.go`, OCCM's node providerID).
pub fn provider_id(region: Option<&str>, server_id: &str) -> String {
    format!("openstack://{}/{server_id}", region.unwrap_or(""))
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
    fn user_data_is_base64_and_bounded() {
        assert_eq!(
            encode_user_data(b"#cloud-config\n").unwrap(),
            "I2Nsb3VkLWNvbmZpZwo="
        );
        let err = encode_user_data(&vec![b'a'; 50_000]).unwrap_err();
        assert!(err.contains("at most 65535 bytes"), "{err}");
    }

    #[test]
    fn provider_ids_match_occm() {
        assert_eq!(provider_id(None, "uuid"), "openstack:///uuid");
        assert_eq!(
            provider_id(Some("RegionOne"), "uuid"),
            "openstack://RegionOne/uuid"
        );
    }

    #[test]
    fn create_request_carries_everything() {
        let ports = vec!["p0".to_owned(), "p1".to_owned()];
        let req = create_server_request(ServerPlan {
            name: "m1",
            flavor_id: "f",
            image_id: "i",
            port_ids: &ports,
            key_name: Some("k"),
            user_data: "dXNlcg==",
            tags: owner().tags(&[]),
            metadata: owner().metadata(&[]),
            config_drive: Some(true),
            availability_zone: Some("az1"),
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
}
