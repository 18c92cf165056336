//! Execute step of the machine controller: the OpenStack calls that change something. Each one
//! is safe to repeat: ports, trunks and volumes are found again by their UID tag (metadata for
//! Cinder) before anything new is made, and deletes treat "already gone" as done.

use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::observe::{self, Resolved};
use super::plan::{self, Ownership, ServerPlan, VolumePlan};
use crate::api::machine::{MachineResources, OpenStackWorkerMachine, PortStatus, VolumeStatus};
use crate::api::ownership;
use crate::controllers::{Context, Error, Reason};
use crate::openstack::Session;
use crate::openstack::network::{CreatePort, ListFilter, PortFixedIp, TaggedResource};
use crate::openstack::volume::CreateVolume;

fn record(list: &mut Vec<PortStatus>, id: &str) {
    if !list.iter().any(|p| p.id == id) {
        list.push(PortStatus { id: id.to_owned() });
    }
}

/// The Neutron body of port `index` of `m`.
fn port_request(
    m: &OpenStackWorkerMachine,
    index: usize,
    want: &crate::api::common::ResolvedPortSpec,
) -> CreatePort {
    let opts = plan::effective_ports(&m.spec.ports).swap_remove(index);
    let mut profile = serde_json::Map::new();
    if let Some(p) = &opts.profile {
        if p.ovs_hw_offload == Some(true) {
            profile.insert("capabilities".into(), serde_json::json!(["switchdev"]));
        }
        if p.trusted_vf == Some(true) {
            profile.insert("trusted".into(), serde_json::Value::Bool(true));
        }
    }
    let extra = opts
        .value_specs
        .iter()
        .map(|v| {
            let value = match v.value.as_str() {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                other => serde_json::Value::String(other.to_owned()),
            };
            (v.key.clone(), value)
        })
        .collect();
    CreatePort {
        name: want.name.clone(),
        network_id: want.network_id.clone(),
        description: opts.description.clone().unwrap_or_else(|| {
            format!(
                "Created by capow for OpenStackWorkerMachine {}/{}",
                m.namespace().unwrap_or_default(),
                m.name_any()
            )
        }),
        fixed_ips: want
            .fixed_ips
            .iter()
            .map(|f| PortFixedIp {
                subnet_id: f.subnet_id.clone(),
                ip_address: f.ip_address.clone(),
            })
            .collect(),
        security_groups: (!want.security_groups.is_empty()).then(|| want.security_groups.clone()),
        admin_state_up: opts.admin_state_up,
        port_security_enabled: opts.enable_port_security,
        vnic_type: opts.vnic_type.clone(),
        mac_address: opts.mac_address.clone(),
        allowed_address_pairs: opts
            .allowed_address_pairs
            .iter()
            .map(|p| match &p.mac_address {
                Some(mac) => serde_json::json!({ "ip_address": p.ip_address, "mac_address": mac }),
                None => serde_json::json!({ "ip_address": p.ip_address }),
            })
            .collect(),
        host_id: opts.host_id.clone(),
        profile,
        propagate_uplink_status: opts.propagate_uplink_status,
        extra,
    }
}

/// Makes sure every port of `resolved` exists, reusing ports made before a crash, and creates
/// a trunk for each port that asks for one. Returns the port IDs in order; `resources` gets
/// every port and trunk as soon as it exists, so the caller can persist it even when a later
/// step fails.
///
/// # Errors
/// [`Error::OpenStack`] when listing, creating or tagging fails.
pub async fn ensure_ports(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    resolved: &Resolved,
    owner: &Ownership,
    resources: &mut MachineResources,
) -> Result<Vec<String>, Error> {
    let net = session.network();
    let mut existing = observe::owned_ports(session, m).await?;
    let tags = owner.tags(&m.spec.tags);
    let port_opts = plan::effective_ports(&m.spec.ports);
    let mut ids = Vec::with_capacity(resolved.ports.len());
    for (i, want) in resolved.ports.iter().enumerate() {
        let mut port_tags = tags.clone();
        for t in &port_opts[i].tags {
            if !port_tags.contains(t) && !ownership::is_reserved_tag(t) {
                port_tags.push(t.clone());
            }
        }
        let reuse = existing
            .iter()
            .position(|p| p.name == want.name && plan::port_matches(p, want))
            .map(|pos| existing.remove(pos));
        let port = match reuse {
            Some(p) => p,
            None => {
                let port = net.create_port(&port_request(m, i, want)).await.map_err(
                    Error::openstack_as(Reason::PortCreateFailed, "create a port"),
                )?;
                ctx.config
                    .maybe_crash(crate::controllers::FaultPoint::MachineAfterPortCreate);
                record(&mut resources.ports, &port.id);
                tracing::info!(port = %port.id, name = %port.name, "Created port");
                port
            }
        };
        if port.tags.is_empty() {
            // Neutron before 2023.1 ignores tags in the create body; a crash may also have
            // left an adopted port untagged.
            net.set_tags(TaggedResource::Port, &port.id, &port_tags)
                .await
                .map_err(Error::openstack("tag a port"))?;
            ctx.config
                .maybe_crash(crate::controllers::FaultPoint::MachineAfterPortTag);
        }
        record(&mut resources.ports, &port.id);
        if resolved.trunks.get(i).copied().unwrap_or(false) {
            let found = net
                .list_trunks(&ListFilter::attribute("port_id", port.id.clone()))
                .await
                .map_err(Error::openstack("look up trunks"))?;
            let trunk = match found.into_iter().next() {
                Some(t) => t,
                None => {
                    let t = net
                        .create_trunk(&want.name, &port.id)
                        .await
                        .map_err(Error::openstack("create a trunk"))?;
                    tracing::info!(trunk = %t.id, port = %port.id, "Created trunk");
                    ctx.config
                        .maybe_crash(crate::controllers::FaultPoint::MachineAfterTrunkCreate);
                    t
                }
            };
            record(&mut resources.trunks, &trunk.id);
            net.set_tags(TaggedResource::Trunk, &trunk.id, &tags)
                .await
                .map_err(Error::openstack("tag a trunk"))?;
        }
        ids.push(port.id);
    }
    Ok(ids)
}

/// State of the machine's volumes.
pub enum Volumes {
    /// Every volume is `available`: `(name, id)`, root first.
    Ready(Vec<(String, String)>),
    /// Still being created (Cinder copies the image for a root volume).
    Pending(String),
}

/// Makes sure every planned volume exists and is available. Volumes carry the metadata
/// `capow-machine-uid` so a crash never leaves one behind or makes a second. A volume that
/// went to `error` is deleted and reported; the next reconcile creates it again.
///
/// # Errors
/// [`Error::OpenStack`] when Cinder refuses (e.g. quota) or a volume failed to build.
pub async fn ensure_volumes(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    plans: &[VolumePlan],
    owner: &Ownership,
    resources: &mut MachineResources,
) -> Result<Volumes, Error> {
    if plans.is_empty() {
        return Ok(Volumes::Ready(Vec::new()));
    }
    let api = session.volume();
    let existing = api
        .list_volumes_by_metadata(ownership::METADATA_MACHINE_UID, &owner.machine_uid)
        .await
        .map_err(Error::openstack("look up volumes"))?;
    let mut ready = Vec::with_capacity(plans.len());
    let mut pending = Vec::new();
    for p in plans {
        let name = format!("{}-{}", m.name_any(), p.name);
        let volume = match existing
            .iter()
            .find(|v| v.name.as_deref() == Some(name.as_str()))
        {
            Some(v) => v.clone(),
            None => {
                let mut metadata = owner.metadata(&[]);
                metadata.insert("capow-volume".into(), p.name.clone());
                let v = api
                    .create_volume(&CreateVolume {
                        name: name.clone(),
                        size: p.size_gib,
                        volume_type: p.volume_type.clone(),
                        availability_zone: p.availability_zone.clone(),
                        image_ref: p.image_id.clone(),
                        description: format!(
                            "Created by capow for OpenStackWorkerMachine {}/{}",
                            m.namespace().unwrap_or_default(),
                            m.name_any()
                        ),
                        metadata,
                    })
                    .await
                    .map_err(Error::openstack_as(
                        Reason::VolumeCreateFailed,
                        "create a volume",
                    ))?;
                tracing::info!(volume = %v.id, name = %name, "Created volume");
                ctx.config
                    .maybe_crash(crate::controllers::FaultPoint::MachineAfterVolumeCreate);
                v
            }
        };
        if !resources.volumes.iter().any(|r| r.id == volume.id) {
            resources.volumes.push(VolumeStatus {
                id: volume.id.clone(),
                name: p.name.clone(),
            });
        }
        match volume.status.as_str() {
            "available" => ready.push((p.name.clone(), volume.id.clone())),
            "error" => {
                api.delete_volume(&volume.id)
                    .await
                    .map_err(Error::openstack("delete a failed volume"))?;
                resources.volumes.retain(|r| r.id != volume.id);
                return Err(Error::VolumeFailed(format!(
                    "volume {name} ({}) went to error in Cinder; deleted it to try again",
                    volume.id
                )));
            }
            "reserved" => {
                // ensure_volumes runs only while the machine has no server: a reservation is
                // what a refused server create left behind (Nova Zed). Free the volume.
                for a in api
                    .list_attachments(&volume.id)
                    .await
                    .map_err(Error::openstack("list volume attachments"))?
                {
                    api.delete_attachment(&a.id)
                        .await
                        .map_err(Error::openstack("delete a stale volume attachment"))?;
                }
                pending.push(format!("{name} is being released from a failed attach"));
            }
            other => pending.push(format!("{name} is {other}")),
        }
    }
    if pending.is_empty() {
        Ok(Volumes::Ready(ready))
    } else {
        Ok(Volumes::Pending(pending.join(", ")))
    }
}

/// Creates the server and returns its UUID. The caller writes it to `status.instanceID` at
/// once; until then the UID tag lets the next reconcile find it.
///
/// # Errors
/// [`Error::OpenStack`] when Nova refuses (the message carries Nova's reason, e.g. quota).
pub async fn create_server(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    plan: ServerPlan<'_>,
    hints: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, Error> {
    let compute = session.compute();
    let request = plan::create_server_request(plan);
    if ctx
        .config
        .fault
        .as_ref()
        .is_some_and(|f| f.point == crate::controllers::FaultPoint::MachineDuringServerCreate)
    {
        // Test only: crash while the request is on its way, as a kill -9 would.
        let (session, request, hints) = (session.clone(), request.clone(), hints.clone());
        tokio::spawn(async move { session.compute().create_server(&request, &hints).await });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineDuringServerCreate);
    }
    let id = compute
        .create_server(&request, hints)
        .await
        .map_err(Error::openstack_as(
            Reason::InstanceCreateFailed,
            "create the server",
        ))?;
    ctx.config
        .maybe_crash(crate::controllers::FaultPoint::MachineAfterServerCreate);
    compute.invalidate_server_cache().await;
    tracing::info!(server = %id, "Created server");
    ctx.event(
        &m.object_ref(&()),
        EventType::Normal,
        "ServerCreated",
        "Create",
        format!("Created server {id} ({})", request.name),
    )
    .await;
    Ok(id)
}

/// Deletes the volumes capow made for `m` that are not attached (after a failed server
/// create, or left behind once the server is gone).
///
/// # Errors
/// [`Error::OpenStack`] when listing or deleting fails.
pub async fn delete_volumes(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
) -> Result<(), Error> {
    let api = session.volume();
    let uid = m.uid().unwrap_or_default();
    let volumes = api
        .list_volumes_by_metadata(ownership::METADATA_MACHINE_UID, &uid)
        .await
        .map_err(Error::openstack("look up volumes"))?;
    // Only called when no server of this machine exists: any attachment left is stale (a
    // refused server create leaves its volumes `reserved`).
    for v in volumes
        .iter()
        .filter(|v| matches!(v.status.as_str(), "reserved" | "in-use" | "attaching"))
    {
        for a in api
            .list_attachments(&v.id)
            .await
            .map_err(Error::openstack("list volume attachments"))?
        {
            api.delete_attachment(&a.id)
                .await
                .map_err(Error::openstack("delete a stale volume attachment"))?;
        }
    }
    let mut ids: Vec<String> = volumes
        .into_iter()
        .filter(|v| v.status != "deleting")
        .map(|v| v.id)
        .collect();
    for v in m
        .status
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .map(|r| r.volumes.as_slice())
        .unwrap_or_default()
    {
        if !ids.contains(&v.id) {
            ids.push(v.id.clone());
        }
    }
    for id in ids {
        api.delete_volume(&id)
            .await
            .map_err(Error::openstack("delete a volume"))?;
        tracing::info!(volume = %id, "Deleted volume");
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterVolumeDelete);
    }
    Ok(())
}

/// One step of deleting everything capow made for `m`. Returns `Ok(true)` when nothing is
/// left, `Ok(false)` while Nova is still deleting a server or a create whose answer was lost
/// may still be in flight (call again later).
///
/// Every server carrying the machine's UID tag goes, not only the one `instance_id` names
/// (`status.instanceID`, or the server `spec.providerID` names once it is this machine's; a
/// repeated create can leave two). "Nothing left" is decided by a fresh listing made
/// [`crate::controllers::ControllerConfig::server_create_settle`] after the last create whose
/// answer was never seen, so a request still in flight in Nova cannot leave a server behind.
/// Trunks are found by the UID tag, by each port and from status (a crash between create and
/// tag leaves a trunk untagged); ports by tag, by name and from status; volumes by metadata.
///
/// # Errors
/// [`Error::OpenStack`] when a call fails (the finalizer stays; the next reconcile retries).
pub async fn delete_resources(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    instance_id: Option<&str>,
) -> Result<bool, Error> {
    let compute = session.compute();
    let status = m.status.clone().unwrap_or_default();
    let uid_tag = ownership::machine_uid_tag(&m.uid().unwrap_or_default());
    if plan::create_settle_wait(
        status.server_create_requested_at.as_ref().map(|t| t.0),
        k8s_openapi::jiff::Timestamp::now(),
        ctx.config.server_create_settle,
    )
    .is_some()
    {
        // A server create may still be in flight: a server could appear after a lookup now.
        // Delete what exists already and look again once the settle time has passed.
        let found = compute
            .list_servers_by_tags(&[&uid_tag])
            .await
            .map_err(Error::openstack("look up servers by tag"))?;
        delete_servers(ctx, session, m, &found).await?;
        return Ok(false);
    }
    // The batched listing first (one call per cloud and interval for all machines), then a
    // fresh listing before deciding that no server is left.
    let mut found = observe::servers(ctx, session, m, instance_id).await?;
    if found.is_empty() {
        found = compute
            .list_servers_by_tags(&[&uid_tag])
            .await
            .map_err(Error::openstack("look up servers by tag"))?;
    }
    if !found.is_empty() {
        delete_servers(ctx, session, m, &found).await?;
        return Ok(false);
    }
    // The servers are gone. Nova releases ports and detaches volumes only after that: delete
    // trunks (a parent port cannot go while its trunk exists), ports, then volumes.
    let resources = status.resources.clone().unwrap_or_default();
    let nova_made_the_port = status
        .resolved
        .as_ref()
        .is_some_and(|r| r.ports_created_by_nova)
        && resources.ports.is_empty()
        && resources.trunks.is_empty();
    // Without a port or trunk of capow's (decided before the machine's first create call),
    // Nova deleted the port with the server.
    if !nova_made_the_port {
        delete_ports_and_trunks(ctx, session, m, &resources, uid_tag).await?;
    }
    if m.spec.root_volume.is_some()
        || !resources.volumes.is_empty()
        || !m.spec.additional_block_devices.is_empty()
    {
        delete_volumes(ctx, session, m).await?;
    }
    Ok(true)
}

/// Deletes the trunks and then the ports capow made for `m`, found by tag, by name and from
/// `resources` (its `status.resources`).
async fn delete_ports_and_trunks(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    resources: &MachineResources,
    uid_tag: String,
) -> Result<(), Error> {
    let net = session.network();
    let ports = observe::owned_ports(session, m).await?;
    let mut port_ids: Vec<String> = ports.into_iter().map(|p| p.id).collect();
    for p in &resources.ports {
        if !port_ids.contains(&p.id) {
            port_ids.push(p.id.clone());
        }
    }
    let mut trunk_ids: Vec<String> = net
        .list_trunks(&ListFilter {
            tags: vec![uid_tag],
            ..ListFilter::default()
        })
        .await
        .map_err(Error::openstack("look up trunks"))?
        .into_iter()
        .map(|t| t.id)
        .collect();
    if m.spec.trunk == Some(true)
        || m.spec.ports.iter().any(|p| p.trunk == Some(true))
        || !resources.trunks.is_empty()
    {
        for port in &port_ids {
            for t in net
                .list_trunks(&ListFilter::attribute("port_id", port.clone()))
                .await
                .map_err(Error::openstack("look up trunks"))?
            {
                if !trunk_ids.contains(&t.id) {
                    trunk_ids.push(t.id);
                }
            }
        }
    }
    for t in &resources.trunks {
        if !trunk_ids.contains(&t.id) {
            trunk_ids.push(t.id.clone());
        }
    }
    for id in &trunk_ids {
        net.delete(TaggedResource::Trunk, id)
            .await
            .map_err(Error::openstack("delete a trunk"))?;
        tracing::info!(trunk = %id, "Deleted trunk");
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterTrunkDelete);
    }
    for id in &port_ids {
        net.delete(TaggedResource::Port, id)
            .await
            .map_err(Error::openstack("delete a port"))?;
        tracing::info!(port = %id, "Deleted port");
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterPortDelete);
    }
    Ok(())
}

/// Sends a delete for every server of `found` that Nova is not deleting yet, with an event.
async fn delete_servers(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    found: &[crate::openstack::compute::Server],
) -> Result<(), Error> {
    let compute = session.compute();
    for server in found.iter().filter(|s| !s.is_gone()) {
        compute
            .delete_server(&server.id)
            .await
            .map_err(Error::openstack("delete the server"))?;
        compute.invalidate_server_cache().await;
        tracing::info!(server = %server.id, "Deleting server");
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterServerDelete);
        ctx.event(
            &m.object_ref(&()),
            EventType::Normal,
            "ServerDeleting",
            "Delete",
            format!("Deleting server {}", server.id),
        )
        .await;
    }
    Ok(())
}

/// Moves the server of `m` and everything capow made with it from the machine UID
/// `previous_uid` to `owner` (the object's current UIDs): `clusterctl move` and restores
/// re-create objects with new UIDs (cluster-api v1.14.2
/// `cmd/clusterctl/client/cluster/mover.go`, `createTargetObject`), while capow finds and
/// deletes what a machine owns by its UID tag. Ports and trunks carrying the previous UID tag
/// (trunks also by their parent port, as a crash between create and tag leaves them untagged)
/// get the new ownership tags in one replace-all call each, the other tags kept; volumes with
/// the previous UID metadata get the new metadata; then the server its metadata and, last, its
/// tags. Until that last call the server names `previous_uid`, so a crash anywhere makes the
/// next reconcile adopt again, and every step is safe to repeat. Each resource changes owner
/// in one call, and always to a machine that exists, so no orphan sweep sees it without an
/// owner. Returns the ports, trunks and volumes that now carry the new UID, for
/// `status.resources`, and raises an `Adopted` event.
///
/// # Errors
/// [`Error::OpenStack`] when a listing or an update fails.
pub async fn adopt(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
    server: &crate::openstack::compute::Server,
    previous_uid: &str,
    owner: &Ownership,
) -> Result<MachineResources, Error> {
    let net = session.network();
    let old_tag = ownership::machine_uid_tag(previous_uid);
    let new_tag = ownership::machine_uid_tag(&owner.machine_uid);
    let owner_tags = owner.tags(&[]);
    let by_tag = |tag: &str| ListFilter {
        tags: vec![tag.to_owned()],
        ..ListFilter::default()
    };
    let ports = net
        .list_ports(&by_tag(&old_tag))
        .await
        .map_err(Error::openstack("look up ports by tag"))?;
    let mut trunks = net
        .list_trunks(&by_tag(&old_tag))
        .await
        .map_err(Error::openstack("look up trunks"))?;
    for p in &ports {
        for t in net
            .list_trunks(&ListFilter::attribute("port_id", p.id.clone()))
            .await
            .map_err(Error::openstack("look up trunks"))?
        {
            if !trunks.iter().any(|x| x.id == t.id) {
                trunks.push(t);
            }
        }
    }
    for t in &trunks {
        net.set_tags(
            TaggedResource::Trunk,
            &t.id,
            &ownership::retagged(&t.tags, &owner_tags),
        )
        .await
        .map_err(Error::openstack("retag a trunk"))?;
    }
    for p in &ports {
        net.set_tags(
            TaggedResource::Port,
            &p.id,
            &ownership::retagged(&p.tags, &owner_tags),
        )
        .await
        .map_err(Error::openstack("retag a port"))?;
    }
    let volume_api = session.volume();
    let volumes = volume_api
        .list_volumes_by_metadata(ownership::METADATA_MACHINE_UID, previous_uid)
        .await
        .map_err(Error::openstack("look up volumes"))?;
    let owner_metadata = owner.metadata(&[]);
    for v in &volumes {
        volume_api
            .update_volume_metadata(&v.id, &owner_metadata)
            .await
            .map_err(Error::openstack("update volume metadata"))?;
    }
    let compute = session.compute();
    compute
        .update_server_metadata(&server.id, &owner_metadata)
        .await
        .map_err(Error::openstack("update server metadata"))?;
    compute
        .set_server_tags(&server.id, &ownership::retagged(&server.tags, &owner_tags))
        .await
        .map_err(Error::openstack("retag the server"))?;
    compute.invalidate_server_cache().await;

    // What carries the new UID now, including what an adoption interrupted by a crash
    // retagged before.
    let mut resources = MachineResources::default();
    for p in net
        .list_ports(&by_tag(&new_tag))
        .await
        .map_err(Error::openstack("look up ports by tag"))?
    {
        record(&mut resources.ports, &p.id);
    }
    for t in net
        .list_trunks(&by_tag(&new_tag))
        .await
        .map_err(Error::openstack("look up trunks"))?
    {
        record(&mut resources.trunks, &t.id);
    }
    for v in volume_api
        .list_volumes_by_metadata(ownership::METADATA_MACHINE_UID, &owner.machine_uid)
        .await
        .map_err(Error::openstack("look up volumes"))?
    {
        resources.volumes.push(VolumeStatus {
            id: v.id.clone(),
            name: v.metadata.get("capow-volume").cloned().unwrap_or_default(),
        });
    }
    tracing::info!(server = %server.id, previous_uid, ports = resources.ports.len(), trunks = resources.trunks.len(), volumes = resources.volumes.len(), "Adopted the server named by spec.providerID");
    ctx.event_about(
        &m.object_ref(&()),
        crate::controllers::openstack_ref("Server", &server.id),
        EventType::Normal,
        "Adopted",
        "Adopt",
        format!(
            "Adopted server {} named by spec.providerID with {} port(s), {} trunk(s) and {} \
             volume(s): capow made them for this machine under OpenStackWorkerMachine UID \
             {previous_uid} (the object was re-created with a new UID, as clusterctl move and \
             restores do) and now tags them with UID {}",
            server.id,
            resources.ports.len(),
            resources.trunks.len(),
            resources.volumes.len(),
            owner.machine_uid
        ),
    )
    .await;
    Ok(resources)
}
