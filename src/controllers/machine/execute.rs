//! Execute step of the machine controller: the OpenStack calls that change something. Each one
//! is safe to repeat: ports and servers are found again by their UID tag before anything new
//! is made, and deletes treat "already gone" as done.

use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::Error;
use super::observe::{self, Resolved};
use super::plan::{self, Ownership, ServerPlan};
use crate::api::machine::{MachineResources, OpenStackWorkerMachine, PortStatus};
use crate::controllers::Context;
use crate::openstack::Session;
use crate::openstack::network::{CreatePort, PortFixedIp};

/// Makes sure every port of `resolved` exists, reusing ports made before a crash. Returns the
/// port IDs in spec order; `resources` gets every port as soon as it exists, so the caller can
/// persist it even when a later step fails.
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
    let mut ids = Vec::with_capacity(resolved.ports.len());
    for (i, want) in resolved.ports.iter().enumerate() {
        let opts = &m.spec.ports[i];
        let reuse = existing
            .iter()
            .position(|p| p.name == want.name && plan::port_matches(p, want))
            .map(|pos| existing.remove(pos));
        let port = match reuse {
            Some(p) => p,
            None => {
                let mut extra_tags = tags.clone();
                for t in &opts.tags {
                    if !extra_tags.contains(t) {
                        extra_tags.push(t.clone());
                    }
                }
                let create = CreatePort {
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
                    security_groups: (!want.security_groups.is_empty())
                        .then(|| want.security_groups.clone()),
                    admin_state_up: opts.admin_state_up,
                    port_security_enabled: opts.enable_port_security,
                    vnic_type: opts.vnic_type.clone(),
                };
                let port = net
                    .create_port(&create)
                    .await
                    .map_err(Error::openstack("create a port"))?;
                ctx.config
                    .maybe_crash(crate::controllers::FaultPoint::ExitAfterPortCreate);
                record_port(resources, &port.id);
                net.set_port_tags(&port.id, &extra_tags)
                    .await
                    .map_err(Error::openstack("tag a port"))?;
                tracing::info!(port = %port.id, name = %port.name, "Created port");
                port
            }
        };
        if port.tags.is_empty() {
            // Adopted after a crash between create and tag.
            net.set_port_tags(&port.id, &tags)
                .await
                .map_err(Error::openstack("tag a port"))?;
        }
        record_port(resources, &port.id);
        ids.push(port.id);
    }
    Ok(ids)
}

fn record_port(resources: &mut MachineResources, id: &str) {
    if !resources.ports.iter().any(|p| p.id == id) {
        resources.ports.push(PortStatus { id: id.to_owned() });
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
) -> Result<String, Error> {
    let compute = session.compute();
    let request = plan::create_server_request(plan);
    let id = compute
        .create_server(&request)
        .await
        .map_err(Error::openstack("create the server"))?;
    ctx.config
        .maybe_crash(crate::controllers::FaultPoint::ExitAfterServerCreate);
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

/// One step of deleting everything capow made for `m`. Returns `Ok(true)` when nothing is
/// left, `Ok(false)` while Nova is still deleting the server (call again later).
///
/// # Errors
/// [`Error::OpenStack`] when a call fails.
pub async fn delete_resources(
    ctx: &Context,
    session: &Session,
    m: &OpenStackWorkerMachine,
) -> Result<bool, Error> {
    let compute = session.compute();
    if let Some(server) = observe::server(ctx, session, m).await? {
        if server.is_gone() {
            // Nova is deleting it; look again directly so the listing cache cannot hide the 404.
            if compute
                .get_server(&server.id)
                .await
                .map_err(Error::openstack("get the server"))?
                .is_some()
            {
                return Ok(false);
            }
        } else {
            compute
                .delete_server(&server.id)
                .await
                .map_err(Error::openstack("delete the server"))?;
            compute.invalidate_server_cache().await;
            tracing::info!(server = %server.id, "Deleting server");
            ctx.event(
                &m.object_ref(&()),
                EventType::Normal,
                "ServerDeleting",
                "Delete",
                format!("Deleting server {}", server.id),
            )
            .await;
            return Ok(false);
        }
    }
    // The server is gone: Nova releases the ports it used only after that, so delete them now.
    let net = session.network();
    let mut port_ids: Vec<String> = observe::owned_ports(session, m)
        .await?
        .into_iter()
        .map(|p| p.id)
        .collect();
    for p in m
        .status
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .map(|r| r.ports.as_slice())
        .unwrap_or_default()
    {
        if !port_ids.contains(&p.id) {
            port_ids.push(p.id.clone());
        }
    }
    for id in &port_ids {
        net.delete_port(id)
            .await
            .map_err(Error::openstack("delete a port"))?;
        tracing::info!(port = %id, "Deleted port");
    }
    Ok(true)
}
