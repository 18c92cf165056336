//! The `OpenStackWorkerMachineTemplate` controller: fills `status.capacity` and
//! `status.nodeInfo` from the flavor and image (the CAPI opt-in "InfraMachineTemplate: support
//! cluster autoscaling from zero" contract, cluster-api v1.14.2
//! `docs/book/src/developer/providers/contracts/infra-machine.md`), so both capow's
//! externalgrpc server and cluster-autoscaler's clusterapi provider can scale a node group from
//! zero without hand-written capacity annotations. Refreshed on every change and every resync
//! interval (a flavor's extra specs can change under the same name).

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::{Resource, ResourceExt};

use crate::api::common::OpenStackIdentityReference;
use crate::api::conditions::{self, reasons};
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::machine_template::{
    OpenStackWorkerMachineTemplate, OpenStackWorkerMachineTemplateStatus, TemplateResolved,
};
use crate::capi;
use crate::controllers::{Context, Error, identity, resolve, run, status};

const CONTROLLER: &str = "openstackworkermachinetemplate";

/// The identity of a template: its own `identityRef`, else the `OpenStackWorkerCluster` of the
/// Cluster named by the `cluster.x-k8s.io/cluster-name` label or an owning Cluster.
async fn identity(
    ctx: &Context,
    t: &OpenStackWorkerMachineTemplate,
) -> Result<Option<OpenStackIdentityReference>, Error> {
    if let Some(i) = &t.spec.template.spec.identity_ref {
        return Ok(Some(i.clone()));
    }
    let ns = t.namespace().unwrap_or_default();
    let cluster = t
        .labels()
        .get(capi::CLUSTER_NAME_LABEL)
        .cloned()
        .or_else(|| {
            t.owner_references()
                .iter()
                .find(|o| o.kind == "Cluster" && o.api_version.starts_with(capi::GROUP))
                .map(|o| o.name.clone())
        });
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    identity::identity_of_cluster(ctx, &ns, &cluster).await
}

async fn compute_status(
    ctx: &Context,
    t: &OpenStackWorkerMachineTemplate,
    status: &mut OpenStackWorkerMachineTemplateStatus,
) -> Result<Option<String>, Error> {
    let Some(identity) = identity(ctx, t).await? else {
        return Ok(Some(
            "waiting for an identity: set spec.template.spec.identityRef, or the cluster.x-k8s.io/cluster-name label of a Cluster with an OpenStackWorkerCluster".into(),
        ));
    };
    let ns = t.namespace().unwrap_or_default();
    let session = identity::session(ctx, &ns, Some(&identity))
        .await?
        .with_lookup_cache();
    // The template's spec is resolved the way a machine's would be (same `*Param` rules).
    let probe = OpenStackWorkerMachine::new(&t.name_any(), t.spec.template.spec.clone());
    let flavor = resolve::resolve_flavor(&session, &probe.spec.flavor).await?;
    let image = resolve::resolve_image_full(&session, &probe.spec.image).await?;
    let root = t
        .spec
        .template
        .spec
        .root_volume
        .as_ref()
        .map(|r| r.size_gib);
    status.capacity = plan::capacity(&flavor, root);
    status.node_info = Some(plan::node_info(&image));
    status.resolved = Some(TemplateResolved {
        flavor_id: Some(flavor.id.clone()),
        flavor_name: Some(flavor.name.clone()),
        image_id: Some(image.id.clone()),
        price_per_hour: plan::price(&flavor, t.annotations()),
        gpu_type: plan::gpu_type(&flavor),
    });
    Ok(None)
}

async fn reconcile(
    t: Arc<OpenStackWorkerMachineTemplate>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    run::bounded(ctx.config.reconcile_timeout, reconcile_bounded(t, ctx)).await
}

async fn reconcile_bounded(
    t: Arc<OpenStackWorkerMachineTemplate>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let before = t.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let result = compute_status(&ctx, &t, &mut status).await;
    let generation = t.meta().generation;
    let condition = match &result {
        Ok(None) => conditions::condition(
            conditions::READY,
            true,
            reasons::READY,
            "capacity computed from the flavor and image",
            generation,
        ),
        Ok(Some(waiting)) => conditions::condition(
            conditions::READY,
            false,
            reasons::INVALID_IDENTITY,
            waiting.clone(),
            generation,
        ),
        Err(e) => conditions::condition(
            conditions::READY,
            false,
            e.reason(),
            e.to_string(),
            generation,
        ),
    };
    conditions::set_condition(&mut status.conditions, condition);
    status.observed_generation = generation;
    status::write(&ctx, &*t, &before, &status).await?;
    match result {
        Ok(None) => Ok(Action::requeue(ctx.config.resync)),
        Ok(Some(_)) => Ok(Action::requeue(ctx.config.input_retry)),
        Err(e) => Err(e),
    }
}

fn error_policy(
    t: Arc<OpenStackWorkerMachineTemplate>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let retry = match error {
        Error::InvalidSpec { .. } | Error::InvalidIdentity { .. } => ctx.config.input_retry,
        _ => Duration::from_secs(30),
    };
    run::requeue(&ctx.metrics, CONTROLLER, &*t, error, retry)
}

/// Runs the controller until `shutdown` resolves, on the templates of the manager's shared
/// `caches` (changes of its own status trigger nothing).
pub async fn run_controller(
    ctx: Arc<Context>,
    caches: &crate::caches::Caches,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let templates = caches.templates.subscribe_changes(super::own_changes).await;
    let results = Controller::for_shared_stream(templates, caches.templates.store())
        .with_config(ControllerRunConfig::default().concurrency(4))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx);
    run::drain(CONTROLLER, results).await;
}
