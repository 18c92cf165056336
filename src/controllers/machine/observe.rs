//! Observe step of the machine controller (I/O only): the owner Machine and its Cluster, the
//! bootstrap data, the identity, the spec resolved against OpenStack (with the resolvers of
//! [`crate::controllers::resolve`]), and the server and ports
//! that already exist for this object.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::plan;
use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::common::{
    FixedIp, OpenStackIdentityReference, PortOpts, ResolvedFixedIp, ResolvedPortSpec,
};
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::ownership;
use crate::capi::{self, Cluster, Machine};
use crate::controllers::resolve::{
    resolve_flavor, resolve_image, resolve_network, resolve_security_group, resolve_server_group,
    resolve_subnet,
};
use crate::controllers::{Context, Error, identity, invalid};
use crate::openstack::Session;
use crate::openstack::compute::{Flavor, Server};
use crate::openstack::network::{ListFilter, Port};

/// The CAPI objects a machine belongs to.
pub struct Owners {
    /// The owner `Machine`.
    pub machine: Machine,
    /// The Machine's `Cluster`.
    pub cluster: Cluster,
    /// The Cluster's `OpenStackWorkerCluster`, when its infrastructureRef names one.
    pub infra: Option<OpenStackWorkerCluster>,
}

/// Result of looking up the owners.
pub enum OwnerLookup {
    /// Both found.
    Found(Box<Owners>),
    /// No owner Machine yet (CAPI sets the ownerReference after creating the object).
    NoMachine(String),
    /// The Machine's Cluster does not exist.
    NoCluster(String),
}

/// Finds the owner Machine and its Cluster. The owner is the Machine named by an
/// ownerReference of kind `Machine` in group `cluster.x-k8s.io`; before CAPI's Machine
/// controller has written that reference, it is the Machine of the same name whose
/// `spec.infrastructureRef` names this object ([`claims`]): CAPI's MachineSet creates the
/// infrastructure machine and the Machine under one name, and the Machine controller adds the
/// ownerReference only on its first reconcile of the Machine, about a second later on a busy
/// management cluster (measured in docs/benchmarks.md, "IncreaseSize → first POST"). capow
/// starts on the Machine's claim instead of waiting for that reference.
///
/// # Errors
/// [`Error::Kube`] when the API server fails (404s are [`OwnerLookup`] states).
pub async fn owners(ctx: &Context, m: &OpenStackWorkerMachine) -> Result<OwnerLookup, Error> {
    let ns = m.namespace().unwrap_or_default();
    let machines: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = m
        .owner_references()
        .iter()
        .find(|o| o.kind == "Machine" && o.api_version.split('/').next() == Some(capi::GROUP));
    let machine = match owner {
        Some(owner) => {
            let Some(machine) = machines
                .get_opt(&owner.name)
                .await
                .map_err(Error::kube("get the owner Machine"))?
            else {
                return Ok(OwnerLookup::NoMachine(format!(
                    "owner Machine {ns}/{} does not exist",
                    owner.name
                )));
            };
            machine
        }
        None => {
            let claimant = machines
                .get_opt(&m.name_any())
                .await
                .map_err(Error::kube("get the Machine of the same name"))?
                .filter(|machine| claims(machine, m));
            let Some(machine) = claimant else {
                return Ok(OwnerLookup::NoMachine(
                    "waiting for a Machine to own this object".into(),
                ));
            };
            machine
        }
    };
    let cluster_name = if machine.spec.cluster_name.is_empty() {
        machine
            .labels()
            .get(capi::CLUSTER_NAME_LABEL)
            .cloned()
            .unwrap_or_default()
    } else {
        machine.spec.cluster_name.clone()
    };
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cluster) = clusters
        .get_opt(&cluster_name)
        .await
        .map_err(Error::kube("get the Cluster"))?
    else {
        return Ok(OwnerLookup::NoCluster(format!(
            "Cluster {ns}/{cluster_name} does not exist"
        )));
    };
    let infra = match cluster.spec.infrastructure_ref.as_ref() {
        Some(r) if r.kind == "OpenStackWorkerCluster" && !r.name.is_empty() => {
            let api: Api<OpenStackWorkerCluster> = Api::namespaced(ctx.client.clone(), &ns);
            api.get_opt(&r.name)
                .await
                .map_err(Error::kube("get the OpenStackWorkerCluster"))?
        }
        _ => None,
    };
    Ok(OwnerLookup::Found(Box::new(Owners {
        machine,
        cluster,
        infra,
    })))
}

/// True when `machine` claims `m` as its infrastructure machine: same namespace, its
/// `spec.infrastructureRef` names `m` (kind `OpenStackWorkerMachine`, capow's API group), and
/// `m` has no ownerReference to another Machine.
pub fn claims(machine: &Machine, m: &OpenStackWorkerMachine) -> bool {
    let r = &machine.spec.infrastructure_ref;
    let owned_by_another = m.owner_references().iter().any(|o| {
        o.kind == "Machine"
            && o.api_version.split('/').next() == Some(capi::GROUP)
            && o.name != machine.name_any()
    });
    r.kind == OpenStackWorkerMachine::kind(&())
        && r.api_group == OpenStackWorkerMachine::group(&())
        && r.name == m.name_any()
        && machine.namespace() == m.namespace()
        && !owned_by_another
}

/// The identityRef of the `OpenStackWorkerCluster` of `m`'s Cluster (found through the
/// `cluster.x-k8s.io/cluster-name` label CAPI puts on infrastructure machines), for when the
/// Machine itself may already be gone (deletion).
///
/// # Errors
/// [`Error::Kube`] when the API server fails.
pub async fn cluster_identity(
    ctx: &Context,
    m: &OpenStackWorkerMachine,
) -> Result<Option<OpenStackIdentityReference>, Error> {
    let ns = m.namespace().unwrap_or_default();
    let Some(cluster_name) = m.labels().get(capi::CLUSTER_NAME_LABEL) else {
        return Ok(None);
    };
    identity::identity_of_cluster(ctx, &ns, cluster_name).await
}

/// The bootstrap data of `machine`: key `value` of the Secret named by
/// `spec.bootstrap.dataSecretName`. `Ok(Err(message))` while it is not available yet.
///
/// # Errors
/// [`Error::Kube`] when the API server fails.
pub async fn bootstrap_data(
    ctx: &Context,
    machine: &Machine,
) -> Result<Result<Vec<u8>, String>, Error> {
    let ns = machine.namespace().unwrap_or_default();
    let Some(name) = machine
        .spec
        .bootstrap
        .data_secret_name
        .as_deref()
        .filter(|n| !n.is_empty())
    else {
        return Ok(Err(format!(
            "waiting for Machine {ns}/{}: spec.bootstrap.dataSecretName is not set",
            machine.name_any()
        )));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(Error::kube("get the bootstrap data Secret"))?
    else {
        return Ok(Err(format!(
            "bootstrap data Secret {ns}/{name} does not exist"
        )));
    };
    match secret.data.as_ref().and_then(|d| d.get("value")) {
        Some(v) if !v.0.is_empty() => Ok(Ok(v.0.clone())),
        _ => Ok(Err(format!(
            "bootstrap data Secret {ns}/{name} has no key \"value\""
        ))),
    }
}

/// The spec resolved to OpenStack IDs.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The flavor.
    pub flavor: Flavor,
    /// Image UUID.
    pub image_id: String,
    /// Ports with IDs, in order (the cluster's default port when the spec has none).
    pub ports: Vec<ResolvedPortSpec>,
    /// Whether each port of `ports` gets a trunk.
    pub trunks: Vec<bool>,
    /// Server group UUID.
    pub server_group_id: Option<String>,
    /// Availability zone of the server (`Machine.spec.failureDomain`).
    pub availability_zone: Option<String>,
    /// Volumes to create: the root volume first (if any), then volume block devices.
    pub volumes: Vec<plan::VolumePlan>,
    /// Local (ephemeral) block devices: `(name, size GiB)`.
    pub local_disks: Vec<(String, i32)>,
}

/// Resolves flavor, image, ports, keypair, server group and volumes of `m` (CAPO's `*Param`
/// semantics: by ID, or by a filter that must match exactly one). Ports without a network use
/// the cluster's network; the cluster's managed worker security group is added to every port
/// with port security.
///
/// # Errors
/// [`Error::InvalidSpec`] naming the field when something does not exist, is ambiguous, or
/// the cluster provides no default the spec relies on; [`Error::OpenStack`] when a call fails
/// otherwise.
pub async fn resolve(
    session: &Session,
    m: &OpenStackWorkerMachine,
    owners: &Owners,
) -> Result<Resolved, Error> {
    // Only lookups below: machines of one MachineDeployment share their answers.
    let session = &session.with_lookup_cache();
    let spec = &m.spec;
    let infra = owners.infra.as_ref();
    let flavor = resolve_flavor(session, &spec.flavor).await?;
    let image_id = resolve_image(session, &spec.image).await?;
    if let Some(key) = spec.ssh_key_name.as_deref().filter(|k| !k.is_empty())
        && !session
            .compute()
            .keypair_exists(key)
            .await
            .map_err(Error::openstack("look up the keypair"))?
    {
        return Err(invalid(
            "spec.sshKeyName",
            format!("keypair {key:?} does not exist"),
        ));
    }
    let cluster_network = infra
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.network.as_ref())
        .map(|n| n.id.clone());
    let cluster_group = infra
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.worker_security_group.as_ref())
        .map(|g| g.id.clone());
    let port_opts = plan::effective_ports(&spec.ports);
    let mut ports = Vec::with_capacity(port_opts.len());
    let mut trunks = Vec::with_capacity(port_opts.len());
    for (i, opts) in port_opts.iter().enumerate() {
        let mut port = resolve_port(session, m, i, opts, cluster_network.as_deref()).await?;
        if let Some(group) = &cluster_group
            && opts.enable_port_security != Some(false)
            && !port.security_groups.contains(group)
        {
            port.security_groups.push(group.clone());
        }
        ports.push(port);
        trunks.push(opts.trunk.or(spec.trunk).unwrap_or(false));
    }
    if trunks.iter().any(|t| *t)
        && !session
            .network()
            .has_extension("trunk")
            .await
            .map_err(Error::openstack("look up the trunk extension"))?
    {
        return Err(invalid(
            "spec.trunk",
            "trunk ports are requested but the cloud's Neutron has no trunk extension",
        ));
    }
    let server_group_id = match &spec.server_group {
        Some(p) => Some(resolve_server_group(session, p).await?),
        None => None,
    };
    let availability_zone = owners
        .machine
        .spec
        .failure_domain
        .clone()
        .filter(|z| !z.is_empty());
    let (volumes, local_disks) = plan::volume_plans(spec, &image_id, availability_zone.as_deref())
        .map_err(|(field, message)| invalid(field, message))?;
    plan::check_local_disks(&flavor, &local_disks)
        .map_err(|(field, message)| invalid(field, message))?;
    Ok(Resolved {
        flavor,
        image_id,
        ports,
        trunks,
        server_group_id,
        availability_zone,
        volumes,
        local_disks,
    })
}

async fn resolve_port(
    session: &Session,
    m: &OpenStackWorkerMachine,
    index: usize,
    opts: &PortOpts,
    cluster_network: Option<&str>,
) -> Result<ResolvedPortSpec, Error> {
    let field = format!("spec.ports[{index}]");
    let network_id = match (&opts.network, cluster_network) {
        (Some(network), _) => {
            resolve_network(session, network, &format!("{field}.network"))
                .await?
                .id
        }
        (None, Some(id)) => id.to_owned(),
        (None, None) => {
            return Err(invalid(
                if m.spec.ports.is_empty() {
                    "spec.ports".to_owned()
                } else {
                    format!("{field}.network")
                },
                "no network given and the cluster's OpenStackWorkerCluster reports none in status.network",
            ));
        }
    };
    let mut fixed_ips = Vec::with_capacity(opts.fixed_ips.len());
    for (j, FixedIp { subnet, ip_address }) in opts.fixed_ips.iter().enumerate() {
        let subnet_id = match subnet {
            Some(s) => Some(
                resolve_subnet(
                    session,
                    s,
                    &network_id,
                    &format!("{field}.fixedIPs[{j}].subnet"),
                )
                .await?
                .id,
            ),
            None => None,
        };
        fixed_ips.push(ResolvedFixedIp {
            subnet_id,
            ip_address: ip_address.clone(),
        });
    }
    let (groups, groups_field) = if opts.security_groups.is_empty() {
        (&m.spec.security_groups, "spec.securityGroups".to_owned())
    } else {
        (&opts.security_groups, format!("{field}.securityGroups"))
    };
    let mut security_groups = Vec::with_capacity(groups.len());
    for (j, g) in groups.iter().enumerate() {
        security_groups
            .push(resolve_security_group(session, g, &format!("{groups_field}[{j}]")).await?);
    }
    if opts.enable_port_security == Some(false) && !security_groups.is_empty() {
        return Err(invalid(
            format!("{field}.enablePortSecurity"),
            "security groups cannot be applied to a port with port security disabled",
        ));
    }
    Ok(ResolvedPortSpec {
        name: plan::port_name(&m.name_any(), index, opts),
        network_id,
        fixed_ips,
        security_groups,
    })
}

/// The Cluster of `m`, found by the `cluster.x-k8s.io/cluster-name` label CAPI puts on
/// infrastructure machines (the owner Machine may be gone while `m` is deleted); `None` without
/// the label or when the Cluster does not exist.
///
/// # Errors
/// [`Error::Kube`] when the API server fails.
pub async fn cluster_of(
    ctx: &Context,
    m: &OpenStackWorkerMachine,
) -> Result<Option<Cluster>, Error> {
    let Some(name) = m.labels().get(capi::CLUSTER_NAME_LABEL) else {
        return Ok(None);
    };
    let clusters: Api<Cluster> =
        Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    clusters
        .get_opt(name)
        .await
        .map_err(Error::kube("get the Cluster"))
}

/// The servers of `m`: the one `instance_id` names (`status.instanceID`, or the server
/// `spec.providerID` names) and any other server carrying the machine's UID tag, from the
/// batched listing of the cloud's capow servers (one list call per cloud and poll interval);
/// without an instance ID, from a fresh listing by the UID tag (adoption after a crash between
/// create and status write). More than one means a create was repeated after its answer was
/// lost; the caller keeps one (see `plan::split_duplicates`).
///
/// # Errors
/// [`Error::OpenStack`] when listing or getting fails.
pub async fn servers(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    instance_id: Option<&str>,
) -> Result<Vec<Server>, Error> {
    let compute = session.compute();
    let uid_tag = ownership::machine_uid_tag(&m.uid().unwrap_or_default());
    let poll = ctx.config.build_poll;
    if let Some(id) = instance_id {
        let mut found: Vec<Server> = compute
            .cached_server(id, ownership::MANAGED_TAG, poll)
            .await
            .map_err(Error::openstack("get the server"))?
            .into_iter()
            .collect();
        let others = compute
            .cached_servers_with_tag(ownership::MANAGED_TAG, &uid_tag, poll)
            .await
            .map_err(Error::openstack("look up servers by tag"))?;
        found.extend(others.into_iter().filter(|s| s.id != id && !s.is_gone()));
        return Ok(found);
    }
    let mut found = compute
        .list_servers_by_tags(&[&uid_tag])
        .await
        .map_err(Error::openstack("look up servers by tag"))?;
    found.retain(|s| !s.is_gone());
    Ok(found)
}

/// Ports capow made for `m`: tagged with its UID, or (crash between port create and tag)
/// untagged, unbound, named as capow names them and created after `m`.
///
/// # Errors
/// [`Error::OpenStack`] when listing fails.
pub async fn owned_ports(
    session: &Session,
    m: &OpenStackWorkerMachine,
) -> Result<Vec<Port>, Error> {
    let net = session.network();
    let uid_tag = ownership::machine_uid_tag(&m.uid().unwrap_or_default());
    // One listing by tag and one per port name, sent together: on a fresh machine these are
    // the requests between the reconcile's start and the first port POST.
    let tag_filter = ListFilter {
        tags: vec![uid_tag],
        ..ListFilter::default()
    };
    let name_filters: Vec<ListFilter> = plan::effective_ports(&m.spec.ports)
        .iter()
        .enumerate()
        .map(|(i, opts)| ListFilter::attribute("name", plan::port_name(&m.name_any(), i, opts)))
        .collect();
    let by_tag = net.list_ports(&tag_filter);
    let by_name = futures::future::try_join_all(name_filters.iter().map(|f| net.list_ports(f)));
    let (tagged, named) = futures::future::join(by_tag, by_name).await;
    let mut ports = tagged.map_err(Error::openstack("look up ports by tag"))?;
    let named = named.map_err(Error::openstack("look up ports by name"))?;
    let created = m.meta().creation_timestamp.as_ref().map(|t| t.0);
    for p in named.into_iter().flatten() {
        let untagged_orphan = p.tags.is_empty()
            && p.device_id.is_empty()
            && match (created, p.created_at.as_deref()) {
                (Some(c), Some(at)) => at
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .is_ok_and(|at| at >= c),
                _ => false,
            };
        if untagged_orphan && !ports.iter().any(|q| q.id == p.id) {
            ports.push(p);
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    use super::*;

    fn infra(owner: Option<&str>) -> OpenStackWorkerMachine {
        let mut m: OpenStackWorkerMachine = serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "OpenStackWorkerMachine",
            "metadata": {"name": "md-abc-x1", "namespace": "ns"},
            "spec": {"flavor": {"filter": {"name": "m1.small"}}, "image": {"filter": {"name": "img"}}}
        }))
        .expect("machine");
        if let Some(name) = owner {
            m.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "cluster.x-k8s.io/v1beta2".into(),
                kind: "Machine".into(),
                name: name.into(),
                uid: "u".into(),
                ..OwnerReference::default()
            }]);
        }
        m
    }

    fn machine(ns: &str, kind: &str, group: &str, name: &str) -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "md-abc-x1", "namespace": ns},
            "spec": {"clusterName": "c1", "infrastructureRef": {"kind": kind, "apiGroup": group, "name": name}}
        }))
        .expect("Machine")
    }

    #[test]
    fn a_machine_claims_its_infrastructure_machine_only_by_an_exact_reference() {
        let group = "infrastructure.cluster.x-k8s.io";
        let m = infra(None);
        assert!(claims(
            &machine("ns", "OpenStackWorkerMachine", group, "md-abc-x1"),
            &m
        ));
        assert!(claims(
            &machine("ns", "OpenStackWorkerMachine", group, "md-abc-x1"),
            &infra(Some("md-abc-x1"))
        ));
        for (why, other) in [
            (
                "another name",
                machine("ns", "OpenStackWorkerMachine", group, "other"),
            ),
            (
                "another kind",
                machine("ns", "OpenStackMachine", group, "md-abc-x1"),
            ),
            (
                "another group",
                machine("ns", "OpenStackWorkerMachine", "example.com", "md-abc-x1"),
            ),
            (
                "another namespace",
                machine("ns2", "OpenStackWorkerMachine", group, "md-abc-x1"),
            ),
        ] {
            assert!(!claims(&other, &m), "{why}");
        }
        assert!(
            !claims(
                &machine("ns", "OpenStackWorkerMachine", group, "md-abc-x1"),
                &infra(Some("someone-else"))
            ),
            "owned by another Machine"
        );
    }
}
