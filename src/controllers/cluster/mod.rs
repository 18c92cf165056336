//! The `OpenStackWorkerCluster` controller: the workers' network, subnets, router and managed
//! security group, and the failure domains (the CAPI v1beta2 InfraCluster contract, cluster-api
//! v1.14.2 `docs/book/src/developer/providers/contracts/infra-cluster.md`). No load balancer and
//! no floating IP: the control plane is hosted and its provider writes
//! `spec.controlPlaneEndpoint` (see [`crate::api::cluster`]).
//!
//! One reconcile runs: pause check → owner Cluster → identity → recorded Cluster UID (adopt
//! what an earlier UID owns) → network and subnets → router → worker security group → failure
//! domains, in the steps [`observe`] (reads), [`plan`] (pure decisions), [`execute`] (changes)
//! and [`status`] (conditions and event). Every outcome ends in one status write with the
//! `Ready` condition; failures also raise an event.
//!
//! Everything capow creates carries the tags `capow` and `capow-cluster-uid=<Cluster UID>`, is
//! found again by them (never duplicated after a crash), and is deleted in reverse order on
//! deletion, after capow has swept any server, port or volume still tagged with the cluster.
//! The UID those tags carry is recorded on the object ([`plan::CLUSTER_UID_ANNOTATION`]), so a
//! Cluster re-created under a new UID (`clusterctl move`, a restore) adopts what it had
//! instead of creating it again (docs/adr/0004-adoption-after-move.md). A paused Cluster's
//! object is neither reconciled nor deleted, and the copy `clusterctl move` deletes from the
//! source releases its finalizer without touching OpenStack.

pub mod autoscaler;
pub mod execute;
pub mod observe;
pub mod plan;
pub mod status;

use std::sync::Arc;

use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::api::cluster::{
    ClusterInitialization, NetworkStatus, NetworkStatusWithSubnets, OpenStackWorkerCluster,
    OpenStackWorkerClusterStatus, RouterStatus,
};
use crate::api::conditions::{self, reasons};
use crate::capi::{self, Cluster};
use crate::controllers::{Context, Error, FaultPoint, identity, invalid, run};
use crate::openstack::Session;
use plan::{NetworkPlan, Owner, RouterPlan};
use status::{Outcome, report_delete};

/// Finalizer capow puts on every `OpenStackWorkerCluster`.
pub const FINALIZER: &str = "openstackworkercluster.infrastructure.cluster.x-k8s.io";
const CONTROLLER: &str = "openstackworkercluster";

async fn reconcile(c: Arc<OpenStackWorkerCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = &*ctx;
    run::finalized(
        ctx,
        CONTROLLER,
        FINALIZER,
        c,
        |c| apply(c, ctx),
        |c| async move {
            match cleanup(c.clone(), ctx).await {
                Err(e) if !matches!(e, Error::DeletionInProgress) => {
                    Err(report_delete(ctx, &c, e).await)
                }
                other => other,
            }
        },
    )
    .await
}

fn error_policy(c: Arc<OpenStackWorkerCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let retry = error.retry_after(&ctx.config);
    run::requeue(&ctx.metrics, CONTROLLER, &*c, error, retry)
}

/// The finalizer's apply: [`run`] and the managed cluster-autoscaler
/// ([`autoscaler::reconcile`]), then the status step (conditions, one status write, an event
/// when the `Ready` reason changed or on failure).
async fn apply(c: Arc<OpenStackWorkerCluster>, ctx: &Context) -> Result<Action, Error> {
    let before = c.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let result = run(&c, ctx, &mut status).await;
    let autoscaler_requeue = autoscaler::reconcile(&c, ctx, &mut status).await;
    let (ready, reason, message) = match &result {
        Ok(o) => (o.ready, o.reason, o.message.clone()),
        Err(e) => (false, e.reason(), e.to_string()),
    };
    status::set_conditions(&mut status, ready, reason, &message, c.meta().generation);
    crate::controllers::status::write(ctx, &*c, &before, &status).await?;
    let previous = before
        .conditions
        .iter()
        .find(|x| x.type_ == conditions::READY)
        .map(|x| x.reason.clone());
    if let Some(type_) = status::event_type(previous.as_deref(), reason, result.is_err()) {
        let note = if message.is_empty() {
            reason.to_owned()
        } else {
            message
        };
        ctx.event(&c.object_ref(&()), type_, reason, "Reconcile", note)
            .await;
    }
    result.map(|o| {
        status::earliest(o.requeue, autoscaler_requeue)
            .map_or_else(Action::await_change, Action::requeue)
    })
}

/// One reconcile of the cluster's OpenStack resources, writing what it finds and makes into
/// `status`.
async fn run(
    c: &OpenStackWorkerCluster,
    ctx: &Context,
    status: &mut OpenStackWorkerClusterStatus,
) -> Result<Outcome, Error> {
    if capi::has_paused_annotation(c.annotations()) {
        return Ok(Outcome::waiting(reasons::PAUSED, "paused"));
    }
    let ns = c.namespace().unwrap_or_default();
    let Some((cluster_name, cluster_uid)) = plan::owner_cluster(c) else {
        return Ok(Outcome::waiting(
            reasons::WAITING_FOR_OWNER,
            "waiting for a Cluster to own this object",
        ));
    };
    if observe::cluster(ctx, &ns, &cluster_name)
        .await?
        .is_some_and(|cluster| cluster.is_paused())
    {
        return Ok(Outcome::waiting(reasons::PAUSED, "the Cluster is paused"));
    }
    let session = identity::session(ctx, &ns, Some(&c.spec.identity_ref)).await?;
    session
        .authenticate()
        .await
        .map_err(Error::openstack("authenticate with Keystone"))?;

    let owner = observe::owner(&session, &ns, &cluster_name, &cluster_uid, &c.spec.tags).await?;
    let annotation = c.annotations().get(plan::CLUSTER_UID_ANNOTATION);
    match plan::recorded(annotation.map(String::as_str), &cluster_uid) {
        plan::Recorded::Current => {}
        plan::Recorded::Missing => execute::record_uid(ctx, c, &cluster_uid).await?,
        plan::Recorded::Previous(previous) => {
            execute::adopt(ctx, &session, c, &owner, (&ns, &cluster_name), previous).await?;
            execute::record_uid(ctx, c, &cluster_uid).await?;
        }
    }
    let base = plan::base_name(&ns, &cluster_name);
    let network = network(ctx, &session, c, &owner, &base).await?;
    status.network = Some(network.clone());
    let (router, external) = router(ctx, &session, c, &network, &owner, &base).await?;
    status.router = router;
    status.external_network = external;
    status.worker_security_group = match &c.spec.managed_security_groups {
        Some(spec) => Some(
            execute::ensure_security_group(ctx, &session, spec, &owner, &format!("{base}-worker"))
                .await?,
        ),
        None => None,
    };
    let zones = session
        .compute()
        .list_availability_zones()
        .await
        .map_err(Error::openstack("list availability zones"))?;
    status.failure_domains = plan::failure_domains(&zones);
    status.initialization = Some(ClusterInitialization {
        provisioned: Some(true),
    });
    Ok(Outcome {
        ready: true,
        reason: reasons::READY,
        message: status::ready_message(&network, &c.spec),
        requeue: Some(ctx.config.resync),
    })
}

/// The workers' network and subnets ([`plan::network_plan`]): the existing network the spec
/// names, or the one capow manages (named `base`) with `spec.managedSubnets`.
async fn network(
    ctx: &Context,
    session: &Session,
    c: &OpenStackWorkerCluster,
    owner: &Owner,
    base: &str,
) -> Result<NetworkStatusWithSubnets, Error> {
    let spec = &c.spec;
    match plan::network_plan(spec).map_err(|(field, message)| invalid(field, message))? {
        NetworkPlan::Existing(p) => observe::existing_network(session, spec, p).await,
        NetworkPlan::Managed => {
            let network = execute::ensure_network(ctx, session, spec, owner, base).await?;
            let subnets =
                execute::ensure_subnets(ctx, session, spec, &network.id, owner, base).await?;
            Ok(NetworkStatusWithSubnets {
                id: network.id,
                name: network.name,
                managed: true,
                subnets,
            })
        }
    }
}

/// The cluster's router and its external network ([`plan::router_plan`]): an existing router
/// (`spec.router`), which gets the managed subnets as interfaces; or the router capow manages
/// (named `base`) on the external network, with every subnet of `network` attached; or none.
async fn router(
    ctx: &Context,
    session: &Session,
    c: &OpenStackWorkerCluster,
    network: &NetworkStatusWithSubnets,
    owner: &Owner,
    base: &str,
) -> Result<(Option<RouterStatus>, Option<NetworkStatus>), Error> {
    let spec = &c.spec;
    match plan::router_plan(spec, network.managed)
        .map_err(|(field, message)| invalid(field, message))?
    {
        RouterPlan::None => Ok((None, None)),
        RouterPlan::Existing(lookup) => {
            let router = observe::existing_router(session, lookup).await?;
            if network.managed {
                execute::attach_subnets(ctx, session, &router.id, &network.subnets, None).await?;
            }
            Ok((Some(plan::router_status(router, false)), None))
        }
        RouterPlan::Managed => {
            let Some(external) = observe::external_network(session, spec).await? else {
                return Ok((None, None));
            };
            let router =
                execute::ensure_router(ctx, session, spec, owner, base, &external.id).await?;
            execute::attach_subnets(
                ctx,
                session,
                &router.id,
                &network.subnets,
                Some(FaultPoint::ClusterAfterRouterInterfaceAdd),
            )
            .await?;
            Ok((Some(plan::router_status(router, true)), Some(external)))
        }
    }
}

/// The finalizer's cleanup: nothing while the object or its Cluster is paused
/// ([`plan::deletion`]); then the managed cluster-autoscaler, a wait for the cluster's machines,
/// adoption of what an earlier Cluster UID owns, the sweep of servers, ports, trunks and volumes
/// still tagged with the cluster, and the cluster's own resources
/// ([`execute::delete_cluster_resources`]).
async fn cleanup(c: Arc<OpenStackWorkerCluster>, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let (cluster_name, cluster_uid) = match plan::deletion(&c) {
        plan::Deletion::ReleaseForMove => {
            // clusterctl move deletes the source's copy once the target management cluster has
            // its own; the OpenStack resources now belong to the target.
            tracing::info!(
                "Releasing the finalizer without touching OpenStack: clusterctl move deletes this copy of the object"
            );
            return Ok(Action::await_change());
        }
        plan::Deletion::Paused => {
            return Err(Error::DeletionBlocked(Box::new(invalid(
                "metadata.annotations",
                format!(
                    "{} is set; deletion waits until it is removed",
                    capi::PAUSED_ANNOTATION
                ),
            ))));
        }
        plan::Deletion::NeverOwned => return Ok(Action::await_change()),
        plan::Deletion::Proceed {
            cluster_name,
            cluster_uid,
        } => (cluster_name, cluster_uid),
    };
    if observe::cluster(ctx, &ns, &cluster_name)
        .await?
        .is_some_and(|cluster| cluster.is_paused())
    {
        // CAPI's contract: nothing reconciles a paused Cluster's objects, their deletion
        // included (clusterctl move pauses the source's Cluster before it deletes anything).
        return Err(Error::DeletionBlocked(Box::new(invalid(
            "Cluster spec.paused",
            "is true; deletion waits until the Cluster is resumed",
        ))));
    }
    // The cluster-autoscaler first, so that it stops scaling while the cluster goes.
    autoscaler::cleanup(&c, ctx).await?;
    let status = c.status.clone().unwrap_or_default();
    // Machines first: CAPI deletes them before the infrastructure cluster, but an
    // OpenStackWorkerMachine still finishing its own cleanup must not lose its network.
    let left = observe::machines_left(ctx, &ns, &cluster_name).await?;
    if left > 0 {
        tracing::info!(
            machines = left,
            "Waiting for the cluster's machines to be deleted"
        );
        return Err(Error::DeletionInProgress);
    }
    let session = match identity::session(ctx, &ns, Some(&c.spec.identity_ref)).await {
        Ok(s) => s,
        Err(e) if plan::nothing_created(&status) => {
            tracing::info!(error = %e, "Releasing the finalizer: nothing was created in OpenStack");
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::DeletionBlocked(Box::new(e))),
    };
    // A Cluster re-created under a new UID and deleted before its resources were adopted:
    // adopt them first, so that the deletion below finds them.
    if let plan::Recorded::Previous(previous) = plan::recorded(
        c.annotations()
            .get(plan::CLUSTER_UID_ANNOTATION)
            .map(String::as_str),
        &cluster_uid,
    ) {
        let owner =
            observe::owner(&session, &ns, &cluster_name, &cluster_uid, &c.spec.tags).await?;
        execute::adopt(ctx, &session, &c, &owner, (&ns, &cluster_name), previous).await?;
    }
    let tags = plan::tags(&cluster_uid, &[]);
    if !execute::sweep(&session, &tags, &cluster_uid).await? {
        return Err(Error::DeletionInProgress);
    }
    let description = plan::ownership_description(&ns, &cluster_name, &cluster_uid);
    execute::delete_cluster_resources(ctx, &session, &tags, &description, status.router.as_ref())
        .await?;
    ctx.event(
        &c.object_ref(&()),
        EventType::Normal,
        "Deleted",
        "Delete",
        "Deleted the cluster's OpenStack resources",
    )
    .await;
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown` resolves, on the manager's shared `caches`:
/// `OpenStackWorkerCluster`s and the Clusters that own them (pause, ownership); the
/// cluster-autoscaler Deployments it manages (in `namespace` if given) have a watch of their own.
pub async fn run_controller(
    ctx: Arc<Context>,
    caches: &crate::caches::Caches,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let deployments = run::api::<k8s_openapi::api::apps::v1::Deployment>(&ctx.client, namespace);
    let filter = capi::ClusterEventFilter::default();
    let watch = ctx.config.kube.watcher_config();
    let objects = caches
        .infra_clusters
        .subscribe_changes(super::own_changes)
        .await;
    let clusters = caches.clusters.subscribe().await;
    let results = Controller::for_shared_stream(objects, caches.infra_clusters.store())
        .with_config(ControllerRunConfig::default().concurrency(ctx.config.concurrency))
        .owns(deployments, autoscaler::owned_watch(watch))
        .watches_shared_stream(clusters, move |cluster: Arc<Cluster>| {
            if !filter.relevant(&cluster) {
                return None;
            }
            cluster
                .spec
                .infrastructure_ref
                .as_ref()
                .filter(|r| r.kind == "OpenStackWorkerCluster" && !r.name.is_empty())
                .map(|r| ObjectRef::new(&r.name).within(&cluster.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx);
    run::drain(CONTROLLER, results).await;
}
