//! The `OpenStackWorkerMachine` controller: turns each object into one Nova server booted with
//! its Machine's bootstrap data, reports the server in status, and deletes the server and its
//! ports before releasing the finalizer (the CAPI v1beta2 InfraMachine contract, cluster-api
//! v1.14.2 `docs/book/src/developer/providers/contracts/infra-machine.md`).
//!
//! One reconcile runs: pause check → owner Machine and Cluster → identity → find the server
//! (by `status.instanceID`, else by `spec.providerID`, else by UID tag) → if none: bootstrap
//! data, resolve the spec, ports, create → else report its state. Every outcome ends in one
//! status write with the `Ready` condition; failures also raise an event.
//!
//! An object whose status is empty but whose `spec.providerID` is set (after `clusterctl move`,
//! a restore from a backup, or a lost status) never gets a second server: the server the
//! providerID names is this machine's when it carries the object's UID, is adopted (retagged
//! with the new UIDs, see [`execute::adopt`]) when capow made it for the same machine under an
//! earlier UID, and is otherwise reported with the `ProviderIDNotOwned` reason and left alone
//! (docs/adr/0004-adoption-after-move.md).

pub mod execute;
pub mod observe;
pub mod plan;
pub mod refusals;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{self, reasons};
use crate::api::machine::{
    MachineInitialization, OpenStackWorkerMachine, OpenStackWorkerMachineStatus,
};
use crate::api::ownership;
use crate::capi::{self, Cluster, Machine};
use crate::controllers::{Context, Error, identity, run, status};
use crate::openstack;

/// Finalizer capow puts on every `OpenStackWorkerMachine`.
pub const FINALIZER: &str = "openstackworkermachine.infrastructure.cluster.x-k8s.io";
const CONTROLLER: &str = "openstackworkermachine";

/// A non-error outcome of a reconcile: the `Ready` condition it implies and when to look again.
struct Outcome {
    ready: bool,
    reason: &'static str,
    message: String,
    requeue: Option<Duration>,
    /// Raise a warning event with the message.
    warn: bool,
}

impl Outcome {
    fn waiting(
        reason: &'static str,
        message: impl Into<String>,
        requeue: Option<Duration>,
    ) -> Self {
        Self {
            ready: false,
            reason,
            message: message.into(),
            requeue,
            warn: false,
        }
    }
}

/// Reconciles one object: the finalizer wraps [`apply`] and [`cleanup`].
async fn reconcile(m: Arc<OpenStackWorkerMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    run::finalized(
        &ctx,
        CONTROLLER,
        FINALIZER,
        m,
        |m| apply(m, &ctx),
        |m| cleanup(m, &ctx),
    )
    .await
}

/// Sets `spec.providerID` (immutable once set; the CRD's CEL rule enforces it). Returns the
/// object's new resourceVersion.
///
/// # Errors
/// [`Error::Kube`] when the API server refuses the patch.
async fn write_provider_id(
    ctx: &Context,
    m: &OpenStackWorkerMachine,
    provider_id: &str,
) -> Result<Option<String>, Error> {
    let patch = serde_json::json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "OpenStackWorkerMachine",
        "spec": { "providerID": provider_id },
    });
    let written = Api::<OpenStackWorkerMachine>::namespaced(
        ctx.client.clone(),
        &m.namespace().unwrap_or_default(),
    )
    .patch(
        &m.name_any(),
        &kube::api::PatchParams::apply(crate::controllers::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("write spec.providerID"))?;
    Ok(written.meta().resource_version.clone())
}

fn error_policy(m: Arc<OpenStackWorkerMachine>, error: &Error, ctx: Arc<Context>) -> Action {
    let retry = error.retry_after(&ctx.config);
    run::requeue(&ctx.metrics, CONTROLLER, &*m, error, retry)
}

fn paused(m: &OpenStackWorkerMachine, cluster: Option<&Cluster>) -> bool {
    capi::has_paused_annotation(m.annotations()) || cluster.is_some_and(Cluster::is_paused)
}

async fn apply(m: Arc<OpenStackWorkerMachine>, ctx: &Context) -> Result<Action, Error> {
    let before = m.status.clone().unwrap_or_default();
    if before.instance_id.is_none()
        && let Some(wait) = ctx.refused_creates.remaining(&m.uid().unwrap_or_default())
    {
        // Nova refused this machine's last create less than an error interval ago; a watch
        // event does not shorten that. The refusal stays on the Ready condition meanwhile.
        return Ok(Action::requeue(wait));
    }
    let mut status = before.clone();
    let mut written = Written {
        resource_version: m.resource_version(),
        status: before.clone(),
    };
    let result = match run(&m, ctx, &mut status, &mut written).await {
        // This reconcile started from an object older than the API server's: a newer reconcile
        // follows at once; writing the condition would only conflict again.
        Err(e) if e.is_conflict() => return Err(e),
        r => r,
    };

    let generation = m.meta().generation;
    let (ready, reason, message, warn) = match &result {
        Ok(o) => (o.ready, o.reason, o.message.clone(), o.warn),
        Err(e) => (false, e.reason(), e.to_string(), true),
    };
    let previous_reason = m.ready_condition().map(|c| c.reason.clone());
    let is_paused = reason == reasons::PAUSED;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::PAUSED,
            is_paused,
            if is_paused {
                reasons::PAUSED
            } else {
                reasons::NOT_PAUSED
            },
            "",
            generation,
        ),
    );
    if !is_paused {
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(
                conditions::READY,
                ready,
                reason,
                message.clone(),
                generation,
            ),
        );
    }
    status.observed_generation = generation;
    status::write_at(
        ctx,
        &*m,
        written.resource_version.as_deref(),
        &written.status,
        &status,
    )
    .await?;
    if written.status.instance_id.is_none() && status.instance_id.is_some() {
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterInstanceIdWrite);
    }

    // An event for every change of the Ready reason, and for every failure (the recorder
    // folds repeats into one event series).
    if previous_reason.as_deref() != Some(reason) || warn {
        let type_ = if warn {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = if message.is_empty() {
            reason.to_owned()
        } else {
            message
        };
        ctx.event(&m.object_ref(&()), type_, reason, "Reconcile", note)
            .await;
    }
    result.map(|o| match o.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// What the reconcile last wrote of the object: its resourceVersion (the precondition of the
/// next write, so a reconcile that started from a stale cache never overwrites newer state)
/// and the status it holds.
struct Written {
    resource_version: Option<String>,
    status: OpenStackWorkerMachineStatus,
}

impl Written {
    /// Writes `status` now (when it differs from what the object holds), preconditioned on the
    /// last resourceVersion.
    ///
    /// A 409 whose cause is only a change of metadata is not a stale cache: CAPI's Machine
    /// controller adds its ownerReference (and labels) to a new object about when capow starts
    /// on the Machine's claim (`observe::owners`), and retrying the whole reconcile for it cost
    /// a second per new machine. On a 409 the object is read again; when its spec, status and
    /// deletion state are still what this reconcile started from ([`metadata_only_change`]),
    /// the write is repeated once on the new resourceVersion. Any other difference (another
    /// reconcile wrote status, the spec changed, deletion began) keeps the conflict.
    ///
    /// # Errors
    /// [`Error::Kube`] when the API server refuses the write, including the 409 of a real
    /// conflict.
    async fn status(
        &mut self,
        ctx: &Context,
        m: &OpenStackWorkerMachine,
        status: &OpenStackWorkerMachineStatus,
    ) -> Result<(), Error> {
        let first = status::write_at(
            ctx,
            m,
            self.resource_version.as_deref(),
            &self.status,
            status,
        )
        .await;
        let written = match first {
            Err(e) if e.is_conflict() => {
                let api: Api<OpenStackWorkerMachine> =
                    Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
                let fresh = api
                    .get_opt(&m.name_any())
                    .await
                    .map_err(Error::kube("read the object after a conflict"))?;
                match fresh {
                    Some(fresh) if metadata_only_change(m, &self.status, &fresh) => {
                        status::write_at(
                            ctx,
                            &fresh,
                            fresh.resource_version().as_deref(),
                            &self.status,
                            status,
                        )
                        .await?
                    }
                    _ => return Err(e),
                }
            }
            other => other?,
        };
        if let Some(rv) = written {
            self.resource_version = Some(rv);
            self.status = status.clone();
        }
        Ok(())
    }
}

/// True when `fresh` differs from `started` (the object a reconcile started from) in metadata
/// only: the same spec, the status `last_written` (what this reconcile last wrote or read), and
/// no deletion that `started` did not have.
fn metadata_only_change(
    started: &OpenStackWorkerMachine,
    last_written: &OpenStackWorkerMachineStatus,
    fresh: &OpenStackWorkerMachine,
) -> bool {
    let same = |a: serde_json::Result<serde_json::Value>,
                b: serde_json::Result<serde_json::Value>| {
        matches!((a, b), (Ok(a), Ok(b)) if a == b)
    };
    started.meta().deletion_timestamp == fresh.meta().deletion_timestamp
        && same(
            serde_json::to_value(&started.spec),
            serde_json::to_value(&fresh.spec),
        )
        && same(
            serde_json::to_value(last_written),
            serde_json::to_value(fresh.status.clone().unwrap_or_default()),
        )
}

/// The reconcile proper. Mutates `status` (instanceID, ports, addresses, provisioned) so the
/// caller can write it whatever the result; `written` tracks the writes made on the way.
async fn run(
    m: &OpenStackWorkerMachine,
    ctx: &Context,
    status: &mut OpenStackWorkerMachineStatus,
    written: &mut Written,
) -> Result<Outcome, Error> {
    let cfg = &ctx.config;
    if capi::has_paused_annotation(m.annotations()) {
        return Ok(Outcome::waiting(reasons::PAUSED, "paused", None));
    }
    let owners = match observe::owners(ctx, m).await? {
        observe::OwnerLookup::Found(o) => o,
        observe::OwnerLookup::NoMachine(msg) => {
            return Ok(Outcome::waiting(reasons::WAITING_FOR_OWNER, msg, None));
        }
        observe::OwnerLookup::NoCluster(msg) => {
            return Ok(Outcome::waiting(
                reasons::WAITING_FOR_CLUSTER_INFRASTRUCTURE,
                msg,
                Some(cfg.input_retry),
            ));
        }
    };
    if paused(m, Some(&owners.cluster)) {
        return Ok(Outcome::waiting(
            reasons::PAUSED,
            "the Cluster is paused",
            None,
        ));
    }
    if owners.machine.meta().deletion_timestamp.is_some() && status.instance_id.is_none() {
        // CAPI is deleting the Machine: a server made now would only be deleted again.
        return Ok(Outcome::waiting(
            reasons::DELETING,
            format!(
                "Machine {} is being deleted; no server is created for it",
                owners.machine.name_any()
            ),
            None,
        ));
    }
    if !owners.cluster.infrastructure_provisioned() {
        return Ok(Outcome::waiting(
            reasons::WAITING_FOR_CLUSTER_INFRASTRUCTURE,
            format!(
                "waiting for Cluster {} to report status.initialization.infrastructureProvisioned",
                owners.cluster.name_any()
            ),
            None,
        ));
    }

    let ns = m.namespace().unwrap_or_default();
    let identity = m
        .spec
        .identity_ref
        .as_ref()
        .or(owners.infra.as_ref().map(|c| &c.spec.identity_ref));
    let session = identity::session(ctx, &ns, identity).await?;
    session
        .authenticate()
        .await
        .map_err(Error::openstack("authenticate with Keystone"))?;
    let region = identity.and_then(|i| i.region.as_deref());

    // A status that names no server, on an object whose spec.providerID names one: after
    // clusterctl move, a restore from a backup, or a lost status. That server is looked at
    // first; nothing is created for such an object.
    let mut instance_id = status.instance_id.clone();
    if instance_id.is_none()
        && let Some(provider_id) = m.spec.provider_id.as_deref()
    {
        match claim_provider_id(ctx, &session, m, &owners, region, provider_id, status).await? {
            Ok(id) => instance_id = Some(id),
            Err(not_owned) => return Ok(not_owned),
        }
    }
    let found = observe::servers(ctx, &session, m, instance_id.as_deref()).await?;
    let server = remove_duplicates(ctx, &session, m, instance_id.as_deref(), found).await?;
    let Some(server) = server else {
        if let Some(id) = instance_id {
            // The server was deleted behind capow's back. A Machine is immutable: capow never
            // makes a replacement (that is MachineHealthCheck's job) and never reuses the name.
            status.instance_state = Some("DELETED".into());
            return Ok(Outcome {
                ready: false,
                reason: reasons::INSTANCE_NOT_FOUND,
                message: format!("server {id} no longer exists in Nova"),
                requeue: None,
                warn: true,
            });
        }
        if let Some(wait) = plan::create_settle_wait(
            status.server_create_requested_at.as_ref().map(|t| t.0),
            k8s_openapi::jiff::Timestamp::now(),
            cfg.server_create_settle,
        ) {
            // An earlier create's answer was never seen: Nova may still be making that server.
            return Ok(Outcome::waiting(
                reasons::INSTANCE_NOT_READY,
                format!(
                    "a server create sent at {} has no answer; looking for the server by its \
                     tag until {} s have passed before creating it again",
                    status
                        .server_create_requested_at
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default(),
                    cfg.server_create_settle.as_secs()
                ),
                Some(wait.min(cfg.build_poll * 2)),
            ));
        }
        return create(ctx, &session, m, &owners, status, written).await;
    };
    if status.server_create_requested_at.take().is_some() {
        tracing::info!(server = %server.id, "Adopted the server of a create whose answer was lost");
    }

    status.instance_id = Some(server.id.clone());
    status.instance_state = Some(server.status.clone());
    let addresses = plan::addresses(&server);
    if !addresses.is_empty() {
        status.addresses = addresses;
    }
    if let Some(az) = server.availability_zone.clone().filter(|z| !z.is_empty()) {
        status.failure_domain = Some(az);
    }
    let state = plan::server_state(&server);
    let reason = plan::ready_reason(&state);
    Ok(match state {
        plan::ServerState::Active => {
            let provider_id = ownership::provider_id(region, &server.id);
            if m.spec.provider_id.as_deref() != Some(provider_id.as_str()) {
                written.resource_version = write_provider_id(ctx, m, &provider_id).await?;
                ctx.config
                    .maybe_crash(crate::controllers::FaultPoint::MachineAfterProviderIdWrite);
            }
            status.initialization = Some(MachineInitialization {
                provisioned: Some(true),
            });
            Outcome {
                ready: true,
                reason,
                message: format!("server {} is ACTIVE", server.id),
                requeue: Some(cfg.resync),
                warn: false,
            }
        }
        plan::ServerState::Building => Outcome::waiting(
            reason,
            format!("server {} is {}", server.id, server.status),
            Some(cfg.build_poll),
        ),
        plan::ServerState::Error(Some(fault)) => Outcome {
            ready: false,
            reason,
            message: format!("server {} is in ERROR: {fault}", server.id),
            requeue: Some(cfg.input_retry),
            warn: true,
        },
        plan::ServerState::Error(None) => Outcome {
            ready: false,
            reason,
            message: format!(
                "server {} is in ERROR; Nova has not recorded the fault yet",
                server.id
            ),
            requeue: Some(cfg.build_poll),
            warn: false,
        },
        plan::ServerState::Gone => Outcome {
            ready: false,
            reason,
            message: format!("server {} is being deleted in Nova", server.id),
            requeue: Some(cfg.input_retry),
            warn: true,
        },
        plan::ServerState::NotActive(s) => Outcome::waiting(
            reason,
            format!("server {} is {s}", server.id),
            Some(cfg.input_retry),
        ),
    })
}

async fn create(
    ctx: &Context,
    session: &openstack::Session,
    m: &OpenStackWorkerMachine,
    owners: &observe::Owners,
    status: &mut OpenStackWorkerMachineStatus,
    written: &mut Written,
) -> Result<Outcome, Error> {
    let user_data = match observe::bootstrap_data(ctx, &owners.machine).await? {
        Ok(data) => data,
        Err(msg) => {
            return Ok(Outcome::waiting(
                reasons::WAITING_FOR_BOOTSTRAP_DATA,
                msg,
                None,
            ));
        }
    };
    let user_data = plan::encode_user_data(&user_data).map_err(|message| Error::InvalidSpec {
        field: "Machine spec.bootstrap.dataSecretName".into(),
        message,
    })?;
    let resolved = observe::resolve(session, m, owners).await?;
    // Who makes the port is decided once: a machine resolved before (perhaps with a port
    // capow created and a crash before it was recorded) keeps its way.
    let ports_created_by_nova = match &status.resolved {
        Some(earlier) => earlier.ports_created_by_nova,
        None => plan::nova_creates_port(
            ctx.config.port_creation,
            &plan::effective_ports(&m.spec.ports),
            m.spec.trunk,
            &resolved.ports,
        ),
    };
    let resolved_status = Some(crate::api::machine::ResolvedMachineSpec {
        flavor_id: Some(resolved.flavor.id.clone()),
        image_id: Some(resolved.image_id.clone()),
        ports: resolved.ports.clone(),
        server_group_id: resolved.server_group_id.clone(),
        availability_zone: resolved.availability_zone.clone(),
        ports_created_by_nova,
    });
    if status.resolved != resolved_status {
        // Persisted before the first create call: cleanup trusts "never resolved" to mean
        // "nothing was ever created in OpenStack".
        status.resolved = resolved_status;
        written.status(ctx, m, status).await?;
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterResolvedWrite);
    }

    let owner = ownership(m, owners);
    let mut resources = status.resources.take().unwrap_or_default();
    let volumes =
        execute::ensure_volumes(ctx, session, m, &resolved.volumes, &owner, &mut resources).await;
    let volumes = match volumes {
        Ok(execute::Volumes::Ready(v)) => v,
        Ok(execute::Volumes::Pending(msg)) => {
            status.resources = Some(resources);
            return Ok(Outcome::waiting(
                reasons::INSTANCE_NOT_READY,
                format!("waiting for volumes: {msg}"),
                Some(ctx.config.build_poll),
            ));
        }
        Err(e) => {
            status.resources = Some(resources);
            return Err(e);
        }
    };
    let nova_port = match resolved.ports.as_slice() {
        [port] if ports_created_by_nova => Some(port),
        _ => None,
    };
    let created_ports = match nova_port {
        Some(_) => Ok(Vec::new()),
        None => execute::ensure_ports(ctx, session, m, &resolved, &owner, &mut resources).await,
    };
    status.resources = Some(resources);
    let created_ports = created_ports?;
    let ports = match nova_port {
        Some(port) => plan::ServerPorts::ByNova(port),
        None => plan::ServerPorts::Created(&created_ports),
    };

    let hints = plan::scheduler_hints(
        resolved.server_group_id.as_deref(),
        &m.spec.scheduler_hint_additional_properties,
    );
    // The intent, durable before the request: if the answer is lost, the next reconcile knows
    // a server may exist that no lookup shows yet. The write is preconditioned on the
    // resourceVersion this reconcile started from, so a reconcile working from a stale cache
    // (one that missed a server written by the previous reconcile) stops here with a conflict.
    status.server_create_requested_at = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    written.status(ctx, m, status).await?;
    ctx.config
        .maybe_crash(crate::controllers::FaultPoint::MachineAfterCreateIntentWrite);
    let created = execute::create_server(
        ctx,
        session,
        m,
        plan::ServerPlan {
            name: &m.name_any(),
            flavor_id: &resolved.flavor.id,
            image_id: &resolved.image_id,
            ports,
            key_name: m.spec.ssh_key_name.as_deref().filter(|k| !k.is_empty()),
            user_data: &user_data,
            tags: owner.tags(&m.spec.tags),
            metadata: owner.metadata(&m.spec.server_metadata),
            config_drive: m.spec.config_drive,
            availability_zone: resolved.availability_zone.as_deref(),
            block_devices: plan::block_devices(&resolved.image_id, &volumes, &resolved.local_disks),
        },
        &hints,
    )
    .await;
    let id = match created {
        Ok(id) => id,
        Err(e) => {
            if let Error::OpenStack { source, .. } = &e
                && !source.is_outcome_unknown()
                && source.status().is_some_and(|s| s.is_client_error())
            {
                // Nova answered 4xx: it made nothing. Say so at once and without the
                // resourceVersion precondition: a deletion that started meanwhile (the
                // autoscaler removing a refused instance) must not find the intent and wait
                // out the settle time for a server that cannot exist.
                // The write moves the object to a new resourceVersion: the reconcile's last
                // status write (the refusal as the Ready condition) must be preconditioned on
                // that one, or it conflicts with this write on every attempt and the refusal
                // never reaches the object.
                status.server_create_requested_at = None;
                match status::write_at(ctx, m, None, &written.status, status).await {
                    Ok(Some(rv)) => {
                        written.resource_version = Some(rv);
                        written.status = status.clone();
                    }
                    Ok(None) => {}
                    Err(write) => {
                        tracing::warn!(error = %write, "Failed to clear the create intent after Nova refused");
                    }
                }
            }
            if let Error::OpenStack { source, .. } = &e
                && !source.is_outcome_unknown()
                && (source.is_client_error() || source.is_quota_exceeded())
            {
                ctx.refused_creates
                    .hold(&m.uid().unwrap_or_default(), e.retry_after(&ctx.config));
            }
            // Nova refused for good (bad input or quota): give the volumes back instead of
            // holding quota for a server that will not come; retries create them again.
            if let Error::OpenStack { source, .. } = &e
                && (source.is_client_error() || source.is_quota_exceeded())
                && !volumes.is_empty()
            {
                if let Err(cleanup) = execute::delete_volumes(ctx, session, m).await {
                    tracing::warn!(error = %cleanup, "Failed to delete volumes after a refused server create");
                } else if let Some(r) = status.resources.as_mut() {
                    r.volumes.clear();
                }
            }
            return Err(e);
        }
    };
    ctx.refused_creates.clear(&m.uid().unwrap_or_default());
    status.instance_id = Some(id.clone());
    status.instance_state = Some("BUILD".into());
    status.server_create_requested_at = None;
    Ok(Outcome::waiting(
        reasons::INSTANCE_NOT_READY,
        format!("server {id} is BUILD"),
        Some(ctx.config.build_poll),
    ))
}

/// Who the OpenStack resources of `m` belong to: its tags and metadata.
fn ownership(m: &OpenStackWorkerMachine, owners: &observe::Owners) -> plan::Ownership {
    plan::Ownership {
        machine_uid: m.uid().unwrap_or_default(),
        cluster_uid: owners.cluster.uid().unwrap_or_default(),
        cluster: format!(
            "{}/{}",
            m.namespace().unwrap_or_default(),
            owners.cluster.name_any()
        ),
        node_group: node_group(&owners.machine),
    }
}

/// The server `provider_id` (the object's `spec.providerID`) names, for an object whose status
/// names none. `Ok(Ok(uuid))` when it is this machine's: the status was lost, or the object was
/// re-created under a new UID (clusterctl move, a restore) and the server is adopted first
/// ([`execute::adopt`], which records what it retagged in `status.resources`).
/// `Ok(Err(outcome))` when capow did not make it for this machine: the `ProviderIDNotOwned`
/// outcome, and nothing is adopted, deleted or created.
///
/// # Errors
/// [`Error::OpenStack`] when getting the server or adopting fails.
async fn claim_provider_id(
    ctx: &Context,
    session: &openstack::Session,
    m: &OpenStackWorkerMachine,
    owners: &observe::Owners,
    region: Option<&str>,
    provider_id: &str,
    status: &mut OpenStackWorkerMachineStatus,
) -> Result<Result<String, Outcome>, Error> {
    let not_owned = |why: String| Outcome {
        ready: false,
        reason: reasons::PROVIDER_ID_NOT_OWNED,
        message: format!(
            "spec.providerID is {provider_id}, but {why}; capow neither adopts nor deletes that \
             server and creates no other server for this machine (delete its Machine to replace it)"
        ),
        requeue: Some(ctx.config.input_retry),
        warn: true,
    };
    let Some(server_id) = ownership::server_id_of_provider_id(provider_id, region) else {
        return Ok(Err(not_owned(format!(
            "that is not the form capow writes for this identity ({})",
            ownership::provider_id(region, "<server-uuid>")
        ))));
    };
    let server = session
        .compute()
        .get_server(server_id)
        .await
        .map_err(Error::openstack("get the server named by spec.providerID"))?;
    let uid = m.uid().unwrap_or_default();
    let name = m.name_any();
    let cluster = format!(
        "{}/{}",
        m.namespace().unwrap_or_default(),
        owners.cluster.name_any()
    );
    let claimant = plan::Claimant {
        machine_uid: &uid,
        machine_name: &name,
        cluster: &cluster,
    };
    match (plan::provider_id_claim(server.as_ref(), &claimant), server) {
        (plan::ProviderIdClaim::Own, Some(server)) => {
            tracing::info!(server = %server.id, "Found the server named by spec.providerID; the status had lost it");
            Ok(Ok(server.id))
        }
        (plan::ProviderIdClaim::Adopt { previous_uid }, Some(server)) => {
            let resources = execute::adopt(
                ctx,
                session,
                m,
                &server,
                &previous_uid,
                &ownership(m, owners),
            )
            .await?;
            status.resources = Some(resources);
            Ok(Ok(server.id))
        }
        (plan::ProviderIdClaim::NotOwned(why), _) => Ok(Err(not_owned(why))),
        (_, None) => Ok(Err(not_owned("that server does not exist in Nova".into()))),
    }
}

/// Keeps one server of `found` and deletes the others, with a Warning event each: two servers
/// with one machine's UID tag exist only when a create's answer was lost and the create was
/// sent again (Nova has no idempotency key). The server `instance_id` names (the status's, or
/// the one `spec.providerID` names) is kept, else the oldest.
///
/// # Errors
/// [`Error::OpenStack`] when a delete fails.
async fn remove_duplicates(
    ctx: &Context,
    session: &openstack::Session,
    m: &OpenStackWorkerMachine,
    instance_id: Option<&str>,
    found: Vec<openstack::compute::Server>,
) -> Result<Option<openstack::compute::Server>, Error> {
    let (keep, extra) = plan::split_duplicates(found, instance_id);
    for dup in extra {
        let compute = session.compute();
        compute
            .delete_server(&dup.id)
            .await
            .map_err(Error::openstack("delete a duplicate server"))?;
        compute.invalidate_server_cache().await;
        let kept = keep.as_ref().map(|k| k.id.as_str()).unwrap_or("none");
        tracing::warn!(server = %dup.id, kept, "Deleted a duplicate server");
        ctx.metrics.duplicate_deleted(CONTROLLER);
        ctx.event_about(
            &m.object_ref(&()),
            crate::controllers::openstack_ref("Server", &dup.id),
            EventType::Warning,
            "DuplicateServerDeleted",
            "Reconcile",
            format!(
                "Deleted server {} because server {kept} already carries this machine's UID tag; \
                 a create whose answer was lost had been sent again",
                dup.id
            ),
        )
        .await;
    }
    Ok(keep)
}

/// The node group of a Machine, from the labels CAPI sets.
fn node_group(machine: &Machine) -> Option<String> {
    node_group_of(&machine.namespace().unwrap_or_default(), machine.labels())
}

/// The node group named by CAPI's deployment-name or set-name label in `labels`.
fn node_group_of(ns: &str, labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
    labels
        .get(capi::DEPLOYMENT_NAME_LABEL)
        .map(|n| format!("MachineDeployment/{ns}/{n}"))
        .or_else(|| {
            labels
                .get(capi::SET_NAME_LABEL)
                .map(|n| format!("MachineSet/{ns}/{n}"))
        })
}

async fn cleanup(m: Arc<OpenStackWorkerMachine>, ctx: &Context) -> Result<Action, Error> {
    if capi::has_paused_annotation(m.annotations()) {
        return Err(Error::DeletionBlocked(Box::new(Error::InvalidSpec {
            field: "metadata.annotations".into(),
            message: format!(
                "{} is set; deletion waits until it is removed",
                capi::PAUSED_ANNOTATION
            ),
        })));
    }
    if m.annotations()
        .contains_key(capi::DELETE_FOR_MOVE_ANNOTATION)
    {
        // clusterctl move deletes the source's copy once the target management cluster has
        // its own; the OpenStack resources now belong to the target.
        tracing::info!(
            "Releasing the finalizer without touching OpenStack: clusterctl move deletes this copy of the object"
        );
        return Ok(Action::await_change());
    }
    let before = m.status.clone().unwrap_or_default();
    let ns = m.namespace().unwrap_or_default();
    // `status.resolved` is written before the first create call, so without it (and without a
    // providerID, which a moved or restored object carries with an empty status) neither a
    // server nor a port can exist: release at once without asking OpenStack (a broken identity
    // or spec must not keep the object forever).
    let created_anything = before.resolved.is_some()
        || before.instance_id.is_some()
        || before.server_create_requested_at.is_some()
        || m.spec.provider_id.is_some();
    if !created_anything {
        tracing::info!("Releasing the finalizer: nothing was created in OpenStack");
        return Ok(Action::await_change());
    }
    let cluster = observe::cluster_of(ctx, &m).await?;
    if cluster.as_ref().is_some_and(Cluster::is_paused) {
        // CAPI's contract: nothing reconciles a paused Cluster's objects, their deletion
        // included (clusterctl move pauses the source's Cluster before it deletes anything).
        return Err(Error::DeletionBlocked(Box::new(Error::InvalidSpec {
            field: "Cluster spec.paused".into(),
            message: "is true; deletion waits until the Cluster is resumed".into(),
        })));
    }
    let identity = match m.spec.identity_ref.clone() {
        Some(i) => Some(i),
        None => observe::cluster_identity(ctx, &m).await?,
    };
    let session = match identity::session(ctx, &ns, identity.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            return Err(report_delete(ctx, &m, &before, Error::DeletionBlocked(Box::new(e))).await);
        }
    };
    let instance_id = match (&before.instance_id, m.spec.provider_id.as_deref()) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(provider_id)) => {
            let region = identity.as_ref().and_then(|i| i.region.as_deref());
            match claim_for_delete(ctx, &session, &m, cluster.as_ref(), region, provider_id).await {
                Ok(id) => id,
                Err(e) => return Err(report_delete(ctx, &m, &before, e).await),
            }
        }
        (None, None) => None,
    };
    match execute::delete_resources(ctx, &session, &m, instance_id.as_deref()).await {
        Ok(true) => {
            ctx.event(
                &m.object_ref(&()),
                EventType::Normal,
                "Deleted",
                "Delete",
                "Deleted the server and its ports",
            )
            .await;
            Ok(Action::await_change())
        }
        Ok(false) => Err(report_delete(ctx, &m, &before, Error::DeletionInProgress).await),
        Err(e) => Err(report_delete(ctx, &m, &before, e).await),
    }
}

/// The server `spec.providerID` names, for deleting an object whose status names none: the
/// UUID when it is this machine's (adopted first when it carries an earlier UID, so that the
/// deletion finds its ports, trunks and volumes by the object's own UID), `None` when capow did
/// not make it for this machine (it is left alone; only what carries the object's own UID is
/// deleted).
///
/// # Errors
/// [`Error::OpenStack`] when getting the server or adopting fails.
async fn claim_for_delete(
    ctx: &Context,
    session: &openstack::Session,
    m: &OpenStackWorkerMachine,
    cluster: Option<&Cluster>,
    region: Option<&str>,
    provider_id: &str,
) -> Result<Option<String>, Error> {
    let Some(server_id) = ownership::server_id_of_provider_id(provider_id, region) else {
        return Ok(None);
    };
    let Some(server) = session
        .compute()
        .get_server(server_id)
        .await
        .map_err(Error::openstack("get the server named by spec.providerID"))?
    else {
        return Ok(None);
    };
    let ns = m.namespace().unwrap_or_default();
    let cluster_name = m
        .labels()
        .get(capi::CLUSTER_NAME_LABEL)
        .cloned()
        .unwrap_or_default();
    let uid = m.uid().unwrap_or_default();
    let name = m.name_any();
    let cluster_ref = format!("{ns}/{cluster_name}");
    let claimant = plan::Claimant {
        machine_uid: &uid,
        machine_name: &name,
        cluster: &cluster_ref,
    };
    match plan::provider_id_claim(Some(&server), &claimant) {
        plan::ProviderIdClaim::Own => Ok(Some(server.id)),
        plan::ProviderIdClaim::Adopt { previous_uid } => {
            // The Cluster may be gone already; then the server keeps the Cluster UID it has.
            let cluster_uid = cluster
                .and_then(|c| c.uid())
                .or_else(|| {
                    server
                        .tags
                        .iter()
                        .find_map(|t| t.strip_prefix(ownership::CLUSTER_UID_TAG_PREFIX))
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let owner = plan::Ownership {
                machine_uid: uid.clone(),
                cluster_uid,
                cluster: cluster_ref.clone(),
                node_group: node_group_of(&ns, m.labels()),
            };
            execute::adopt(ctx, session, m, &server, &previous_uid, &owner).await?;
            Ok(Some(server.id))
        }
        plan::ProviderIdClaim::NotOwned(why) => {
            tracing::warn!(%provider_id, %why, "Deleting without touching the server spec.providerID names: capow did not make it for this machine");
            Ok(None)
        }
    }
}

/// Writes the `Ready=False` condition of a deletion step and passes the error through.
async fn report_delete(
    ctx: &Context,
    m: &OpenStackWorkerMachine,
    before: &OpenStackWorkerMachineStatus,
    e: Error,
) -> Error {
    let mut status = before.clone();
    let message = match &e {
        Error::DeletionInProgress => "deleting the server and its ports".to_owned(),
        other => other.to_string(),
    };
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::READY,
            false,
            e.reason(),
            message.clone(),
            m.meta().generation,
        ),
    );
    if let Err(write) = status::write(ctx, m, before, &status).await {
        tracing::warn!(error = %write, "Failed to write status while deleting");
    }
    if !matches!(e, Error::DeletionInProgress) {
        ctx.event(
            &m.object_ref(&()),
            EventType::Warning,
            e.reason(),
            "Delete",
            message,
        )
        .await;
    }
    e
}

/// What of a CAPI Machine the machine controller reads: a change of anything else (its status
/// above all, which CAPI updates whenever capow's status changes) triggers no reconcile.
fn machine_changes(m: &Machine) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.spec.bootstrap.data_secret_name.hash(&mut h);
    m.spec.failure_domain.hash(&mut h);
    m.spec.infrastructure_ref.name.hash(&mut h);
    m.spec.cluster_name.hash(&mut h);
    m.labels().hash(&mut h);
    m.annotations().hash(&mut h);
    m.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut h);
    Some(h.finish())
}

/// Runs the controller until `shutdown` resolves, on the manager's shared `caches`:
/// `OpenStackWorkerMachine`s, and Machines and Clusters so that bootstrap data, ownership,
/// pause and infrastructure readiness trigger a reconcile at once.
pub async fn run_controller(
    ctx: Arc<Context>,
    caches: &crate::caches::Caches,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Only changes capow acts on trigger a reconcile: its own status writes (and CAPI's
    // Machine status updates that mirror them) would otherwise re-run a failing create at once,
    // and every write of a reconcile would queue the next one.
    let store = caches.infra_machines.store();
    let machines = caches
        .infra_machines
        .subscribe_changes(super::own_changes)
        .await;
    let capi_machines = caches.machines.subscribe_changes(machine_changes).await;
    let clusters = caches.clusters.subscribe().await;
    let filter = capi::ClusterEventFilter::default();
    let infra_machines = store.clone();
    let results = Controller::for_shared_stream(machines, store)
        .with_config(ControllerRunConfig::default().concurrency(ctx.config.concurrency))
        .watches_shared_stream(capi_machines, |machine: Arc<Machine>| {
            let r = &machine.spec.infrastructure_ref;
            (r.kind == "OpenStackWorkerMachine" && !r.name.is_empty())
                .then(|| ObjectRef::new(&r.name).within(&machine.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(clusters, move |cluster: Arc<Cluster>| {
            if !filter.relevant(&cluster) {
                return Vec::new();
            }
            let ns = cluster.namespace().unwrap_or_default();
            let name = cluster.name_any();
            infra_machines
                .state()
                .into_iter()
                .filter(|m| {
                    m.namespace().as_deref() == Some(ns.as_str())
                        && m.labels().get(capi::CLUSTER_NAME_LABEL) == Some(&name)
                })
                .map(|m| ObjectRef::from(&*m))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx);
    run::drain(CONTROLLER, results).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::ControllerConfig;

    fn object(status: serde_json::Value) -> OpenStackWorkerMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "OpenStackWorkerMachine",
            "metadata": {"name": "m", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"flavor": {"filter": {"name": "m1.small"}}, "image": {"filter": {"name": "img"}}},
            "status": status
        }))
        .expect("object")
    }

    #[test]
    fn a_conflict_is_retried_only_when_nothing_but_metadata_changed() {
        let started = object(serde_json::json!({"instanceState": "BUILD"}));
        let last = started.status.clone().unwrap_or_default();
        let mut owner_added = started.clone();
        owner_added.metadata.resource_version = Some("2".into());
        owner_added.metadata.owner_references = Some(vec![Default::default()]);
        assert!(metadata_only_change(&started, &last, &owner_added));

        let mut other_status = owner_added.clone();
        other_status.status =
            Some(serde_json::from_value(serde_json::json!({"instanceID": "s-1"})).expect("status"));
        assert!(
            !metadata_only_change(&started, &last, &other_status),
            "another reconcile wrote status"
        );
        let mut other_spec = owner_added.clone();
        other_spec.spec.ssh_key_name = Some("k".into());
        assert!(
            !metadata_only_change(&started, &last, &other_spec),
            "spec changed"
        );
        let mut deleting = owner_added.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(
            !metadata_only_change(&started, &last, &deleting),
            "deletion began"
        );
    }

    #[test]
    fn retry_delay_follows_the_kind_of_error() {
        let config = ControllerConfig::default();
        assert_eq!(
            Error::DeletionInProgress.retry_after(&config),
            config.build_poll
        );
        let bad = Error::InvalidSpec {
            field: "spec.flavor".into(),
            message: "no such flavor".into(),
        };
        assert_eq!(bad.retry_after(&config), config.input_retry);
        assert_eq!(
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(bad)))
                .retry_after(&config),
            config.input_retry,
            "the error inside the finalizer decides"
        );
        let api = |code: u16, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure("the server rejected our request", reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let stale = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(
            api(422, "Invalid"),
        )));
        assert!(stale.is_stale_finalizer_add());
        assert_eq!(stale.retry_after(&config), Duration::from_secs(1));
        let forbidden = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(
            api(403, "Forbidden"),
        )));
        assert!(!forbidden.is_stale_finalizer_add());
        assert_eq!(forbidden.retry_after(&config), Duration::from_secs(10));
    }
}
