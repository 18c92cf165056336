//! The `OpenStackWorkerMachine` controller: turns each object into one Nova server booted with
//! its Machine's bootstrap data, reports the server in status, and deletes the server and its
//! ports before releasing the finalizer (design §4 "Machine").
//!
//! One reconcile runs: pause check → owner Machine and Cluster → identity → find the server
//! (by `status.instanceID`, else by UID tag) → if none: bootstrap data, resolve the spec,
//! ports, create → else report its state. Every outcome ends in one status write with the
//! `Ready` condition; failures also raise an event.

pub mod execute;
pub mod observe;
pub mod plan;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::watcher;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{self, reasons};
use crate::api::machine::{
    MachineInitialization, OpenStackWorkerMachine, OpenStackWorkerMachineStatus,
};
use crate::capi::{self, Cluster, Machine};
use crate::controllers::Context;
use crate::openstack;

/// Finalizer capow puts on every `OpenStackWorkerMachine`.
pub const FINALIZER: &str = "openstackworkermachine.infrastructure.cluster.x-k8s.io";
const CONTROLLER: &str = "openstackworkermachine";

/// Errors of a machine reconcile. Each maps to a `Ready` condition reason via
/// [`Error::reason`] and to a metrics label via [`Error::category`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec names something that does not exist or is ambiguous.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// Field path, e.g. `spec.flavor.filter.name`.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// The identityRef or its Secret is unusable.
    #[error("{field}: {message}")]
    InvalidIdentity {
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// An OpenStack call failed.
    #[error("failed to {action}: {source}")]
    OpenStack {
        /// What capow was doing.
        action: &'static str,
        /// The OpenStack error (service, status, request id, message).
        #[source]
        source: openstack::Error,
    },

    /// A Kubernetes API call failed.
    #[error("failed to {action}: {}", crate::controllers::describe_kube_error(.source))]
    Kube {
        /// What capow was doing.
        action: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// More than one server carries this object's UID tag.
    #[error("{0}")]
    Duplicate(String),

    /// A volume capow created went to `error` in Cinder.
    #[error("{0}")]
    VolumeFailed(String),

    /// The reconcile ran longer than its bound and was dropped.
    #[error("the reconcile did not finish within {} s and was stopped; it is retried", .0.as_secs())]
    TimedOut(Duration),

    /// Deletion is under way; keeps the finalizer until the next check (not a failure).
    #[error("waiting for OpenStack to delete the server")]
    DeletionInProgress,

    /// Deleting is blocked by a problem that needs an operator.
    #[error("cannot delete the OpenStack resources: {0}")]
    DeletionBlocked(Box<Error>),

    /// Adding or removing the finalizer failed, or the reconcile inside failed.
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub(crate) fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    pub(crate) fn openstack(action: &'static str) -> impl FnOnce(openstack::Error) -> Error {
        move |source| Error::OpenStack { action, source }
    }

    /// Metrics label (the variant name).
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::InvalidIdentity { .. } => "InvalidIdentity",
            Error::OpenStack { .. } => "OpenStack",
            Error::Kube { .. } => "Kube",
            Error::Duplicate(_) => "Duplicate",
            Error::VolumeFailed(_) => "VolumeFailed",
            Error::DeletionInProgress => "DeletionInProgress",
            Error::TimedOut(_) => "TimedOut",
            Error::DeletionBlocked(_) => "DeletionBlocked",
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "Finalizer",
            },
        }
    }

    /// `Ready` condition reason for this error (CAPO v1beta2 reasons where they exist).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => reasons::INVALID_MACHINE_SPEC,
            Error::InvalidIdentity { .. } => reasons::INVALID_IDENTITY,
            Error::OpenStack { action, source } => {
                if source.is_unauthorized() {
                    reasons::OPENSTACK_AUTHENTICATION_FAILED
                } else if *action == "create the server" {
                    reasons::INSTANCE_CREATE_FAILED
                } else if *action == "create a port" {
                    reasons::PORT_CREATE_FAILED
                } else if *action == "create a volume" {
                    reasons::VOLUME_CREATE_FAILED
                } else {
                    reasons::OPENSTACK_ERROR
                }
            }
            Error::DeletionInProgress => reasons::DELETING,
            Error::DeletionBlocked(_) => reasons::INSTANCE_DELETE_FAILED,
            Error::VolumeFailed(_) => reasons::VOLUME_CREATE_FAILED,
            Error::Kube { .. } | Error::Duplicate(_) | Error::Finalizer(_) | Error::TimedOut(_) => {
                reasons::OPENSTACK_ERROR
            }
        }
    }

    /// The apply/cleanup error inside a [`Error::Finalizer`]; `self` for any other error or
    /// for a finalizer error of its own (adding or removing the finalizer failed).
    pub(crate) fn unwrap_finalizer(&self) -> &Error {
        match self {
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
                _ => self,
            },
            e => e,
        }
    }

    /// When to retry after this reconcile error, for the machine and the cluster controllers:
    /// a deletion in progress at the build poll interval, input errors at `input_retry`, an
    /// OpenStack answer with `Retry-After` after that delay (at least 1 s), anything else after
    /// 10 s (the controller's own backoff would need per-object state; the OpenStack client's
    /// rate limit protects the cloud).
    pub(crate) fn retry_after(&self, config: &crate::controllers::ControllerConfig) -> Duration {
        let inner = self.unwrap_finalizer();
        if matches!(inner, Error::DeletionInProgress) {
            return config.build_poll;
        }
        if self.is_conflict() {
            return Duration::from_millis(200);
        }
        if inner.needs_input_change() {
            return config.input_retry;
        }
        if let Error::OpenStack { source, .. } = inner
            && let Some(after) = source.retry_after()
        {
            return after.max(Duration::from_secs(1));
        }
        Duration::from_secs(10)
    }

    /// True when a write was refused because the object changed since this reconcile read it
    /// (409 Conflict): the reconcile started from a stale cache and a fresh one follows.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self.unwrap_finalizer(), Error::Kube { source, .. } if crate::controllers::is_conflict(source))
    }

    /// True for errors that only a change of input fixes (retried slowly, not with backoff).
    pub(crate) fn needs_input_change(&self) -> bool {
        match self {
            Error::InvalidSpec { .. } | Error::InvalidIdentity { .. } | Error::Duplicate(_) => true,
            Error::OpenStack { source, .. } => source.is_unauthorized() || source.is_client_error(),
            Error::DeletionBlocked(inner) => inner.needs_input_change(),
            _ => false,
        }
    }
}

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
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = m.namespace().unwrap_or_default();
    let api: Api<OpenStackWorkerMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", OpenStackWorkerMachine = %format!("{ns}/{}", m.name_any()));
    let bound = ctx.config.reconcile_timeout;
    let run = finalizer(&api, FINALIZER, m, |event| async {
        match event {
            FinalizerEvent::Apply(m) => apply(m, &ctx).await,
            FinalizerEvent::Cleanup(m) => cleanup(m, &ctx).await,
        }
    })
    .instrument(span);
    match tokio::time::timeout(bound, run).await {
        Ok(result) => result.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(_) => Err(Error::TimedOut(bound)),
    }
}

fn error_policy(m: Arc<OpenStackWorkerMachine>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        tracing::debug!(error = %error, "Reconcile started from a stale object; retrying");
    } else if !matches!(error.unwrap_finalizer(), Error::DeletionInProgress) {
        ctx.metrics.failure(CONTROLLER, error.category());
        tracing::warn!(OpenStackWorkerMachine = %format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()), error = %error, "Reconcile failed");
    }
    Action::requeue(error.retry_after(&ctx.config))
}

fn paused(m: &OpenStackWorkerMachine, cluster: Option<&Cluster>) -> bool {
    capi::has_paused_annotation(m.annotations()) || cluster.is_some_and(Cluster::is_paused)
}

async fn apply(m: Arc<OpenStackWorkerMachine>, ctx: &Context) -> Result<Action, Error> {
    let before = m.status.clone().unwrap_or_default();
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
    async fn status(
        &mut self,
        ctx: &Context,
        m: &OpenStackWorkerMachine,
        status: &OpenStackWorkerMachineStatus,
    ) -> Result<(), Error> {
        if let Some(rv) = status::write_at(
            ctx,
            m,
            self.resource_version.as_deref(),
            &self.status,
            status,
        )
        .await?
        {
            self.resource_version = Some(rv);
            self.status = status.clone();
        }
        Ok(())
    }
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
    let session = observe::session(ctx, &ns, identity).await?;
    session
        .authenticate()
        .await
        .map_err(Error::openstack("authenticate with Keystone"))?;
    let region = identity.and_then(|i| i.region.as_deref());

    let found = observe::servers(ctx, &session, m).await?;
    let server = remove_duplicates(ctx, &session, m, found).await?;
    let Some(server) = server else {
        if let Some(id) = status.instance_id.clone() {
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
            let provider_id = plan::provider_id(region, &server.id);
            if m.spec.provider_id.as_deref() != Some(provider_id.as_str()) {
                written.resource_version = status::write_provider_id(ctx, m, &provider_id).await?;
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
    let resolved_status = Some(crate::api::machine::ResolvedMachineSpec {
        flavor_id: Some(resolved.flavor.id.clone()),
        image_id: Some(resolved.image_id.clone()),
        ports: resolved.ports.clone(),
        server_group_id: resolved.server_group_id.clone(),
        availability_zone: resolved.availability_zone.clone(),
    });
    if status.resolved != resolved_status {
        // Persisted before the first create call: cleanup trusts "never resolved" to mean
        // "nothing was ever created in OpenStack".
        status.resolved = resolved_status;
        written.status(ctx, m, status).await?;
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::MachineAfterResolvedWrite);
    }

    let ns = m.namespace().unwrap_or_default();
    let owner = plan::Ownership {
        machine_uid: m.uid().unwrap_or_default(),
        cluster_uid: owners.cluster.uid().unwrap_or_default(),
        cluster: format!("{ns}/{}", owners.cluster.name_any()),
        node_group: node_group(&owners.machine),
    };
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
    let ports = execute::ensure_ports(ctx, session, m, &resolved, &owner, &mut resources).await;
    status.resources = Some(resources);
    let ports = ports?;

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
            port_ids: &ports,
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
                // Nova answered 4xx: it made nothing.
                status.server_create_requested_at = None;
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
    status.instance_id = Some(id.clone());
    status.instance_state = Some("BUILD".into());
    status.server_create_requested_at = None;
    Ok(Outcome::waiting(
        reasons::INSTANCE_NOT_READY,
        format!("server {id} is BUILD"),
        Some(ctx.config.build_poll),
    ))
}

/// Keeps one server of `found` and deletes the others, with a Warning event each: two servers
/// with one machine's UID tag exist only when a create's answer was lost and the create was
/// sent again (Nova has no idempotency key). The server in `status.instanceID` is kept, else the
/// oldest.
///
/// # Errors
/// [`Error::OpenStack`] when a delete fails.
async fn remove_duplicates(
    ctx: &Context,
    session: &openstack::Session,
    m: &OpenStackWorkerMachine,
    found: Vec<openstack::compute::Server>,
) -> Result<Option<openstack::compute::Server>, Error> {
    let instance_id = m.status.as_ref().and_then(|s| s.instance_id.as_deref());
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
    let ns = machine.namespace().unwrap_or_default();
    let labels = machine.labels();
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
    let before = m.status.clone().unwrap_or_default();
    let ns = m.namespace().unwrap_or_default();
    // `status.resolved` is written before the first create call, so without it neither a
    // server nor a port can exist: release at once without asking OpenStack (a broken identity
    // or spec must not keep the object forever).
    let created_anything = before.resolved.is_some()
        || before.instance_id.is_some()
        || before.server_create_requested_at.is_some();
    if !created_anything {
        tracing::info!("Releasing the finalizer: nothing was created in OpenStack");
        return Ok(Action::await_change());
    }
    let identity = match m.spec.identity_ref.clone() {
        Some(i) => Some(i),
        None => observe::cluster_identity(ctx, &m).await?,
    };
    let session = match observe::session(ctx, &ns, identity.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            return Err(report_delete(ctx, &m, &before, Error::DeletionBlocked(Box::new(e))).await);
        }
    };
    match execute::delete_resources(ctx, &session, &m).await {
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

/// Runs the controller until `shutdown` resolves. Watches `OpenStackWorkerMachine`s (in
/// `namespace` if given), and Machines and Clusters so that bootstrap data, ownership, pause
/// and infrastructure readiness trigger a reconcile at once.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (machines_api, capi_machines, clusters): (
        Api<OpenStackWorkerMachine>,
        Api<Machine>,
        Api<Cluster>,
    ) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    // Only changes capow acts on trigger a reconcile: its own status writes (and CAPI's
    // Machine status updates that mirror them) would otherwise re-run a failing create at once,
    // and every write of a reconcile would queue the next one.
    let (store, writer) = kube::runtime::reflector::store();
    let watch = ctx.config.kube.watcher_config();
    let machines = watcher(machines_api, watch.clone())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(crate::controllers::own_changes, Default::default());
    let capi_machines = watcher(capi_machines, watch.clone())
        .default_backoff()
        .applied_objects()
        .predicate_filter(machine_changes, Default::default());
    let filter = capi::ClusterEventFilter::default();
    Controller::for_stream(machines, store.clone())
        .with_config(ControllerRunConfig::default().concurrency(ctx.config.concurrency))
        .watches_stream(capi_machines, |machine: Machine| {
            let r = &machine.spec.infrastructure_ref;
            (r.kind == "OpenStackWorkerMachine" && !r.name.is_empty())
                .then(|| ObjectRef::new(&r.name).within(&machine.namespace().unwrap_or_default()))
        })
        .watches(clusters, watch, move |cluster: Cluster| {
            if !filter.relevant(&cluster) {
                return Vec::new();
            }
            let ns = cluster.namespace().unwrap_or_default();
            let name = cluster.name_any();
            store
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
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::ControllerConfig;

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
    }
}
